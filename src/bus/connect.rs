//! The connection to NATS: the server list (`NATS_URL`) and the client's options.
//!
//! `NATS_URL` is a comma-separated list, as with every NATS client: the client connects to one
//! of the servers and, once connected, reconnects across all of them (and any the cluster
//! announces) by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectError, ConnectOptions, Event, ServerAddr};
use tokio::sync::Notify;

/// The client name the server shows in its connection list.
const CLIENT_NAME: &str = "order-service";

/// Where the NATS servers are.
#[derive(Clone, Debug, clap::Args)]
pub struct NatsSettings {
    /// The NATS servers (the contract's KAFKA_BROKERS): one URL or a comma-separated list, e.g.
    /// `nats://n1:4222,nats://n2:4222,nats://n3:4222`.
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
}

impl NatsSettings {
    /// Settings for the servers in `url` (one URL or a comma-separated list).
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }

    /// The servers of the list, in its order; an entry that is not a NATS URL is an error naming
    /// that entry.
    pub fn servers(&self) -> Result<Vec<ServerAddr>, ConnectError> {
        let servers = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ServerAddr>().map_err(|e| {
                    ConnectError::with_source(
                        async_nats::ConnectErrorKind::ServerParse,
                        format!("NATS_URL entry {s:?}: {e}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(ConnectError::with_source(
                async_nats::ConnectErrorKind::ServerParse,
                "NATS_URL names no server",
            ));
        }
        Ok(servers)
    }
}

/// Connects to NATS at one of the servers of `settings` (e.g. `nats://127.0.0.1:4222`).
///
/// The first connection is not retried: a wrong URL or a broker that is down at startup is an
/// error the caller sees at once. Once connected, the client reconnects by itself without limit,
/// across the servers of the list, and disconnects and reconnects are logged.
pub async fn connect(settings: &NatsSettings) -> Result<Client, ConnectError> {
    connect_watched(settings, Arc::new(Notify::new())).await
}

/// [`connect`], and `reconnected` is notified each time the connection is established again
/// after a loss: the server on the other end may have come back without its streams.
pub async fn connect_watched(
    settings: &NatsSettings,
    reconnected: Arc<Notify>,
) -> Result<Client, ConnectError> {
    let servers = settings.servers()?;
    let first = Arc::new(AtomicBool::new(true));
    ConnectOptions::new()
        .name(CLIENT_NAME)
        .connection_timeout(Duration::from_secs(5))
        // The default 60 s means a silently dead connection is noticed only after minutes; in the
        // meantime every publish waits out its timeout.
        .ping_interval(Duration::from_secs(10))
        .event_callback(move |event| {
            let (first, reconnected) = (first.clone(), reconnected.clone());
            async move {
                match event {
                    Event::Connected => {
                        tracing::info!("NATS connection (re)established");
                        if !first.swap(false, Ordering::Relaxed) {
                            reconnected.notify_one();
                        }
                    }
                    Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
                    Event::Closed => tracing::info!("NATS connection closed"),
                    other => tracing::warn!(event = %other, "NATS client event"),
                }
            }
        })
        .connect(servers.as_slice())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_names_every_server_in_order() {
        let s = NatsSettings::new("nats://n1:4222, nats://n2:4223,nats://n3:4224");
        let servers = s.servers().unwrap();
        let hosts: Vec<_> = servers
            .iter()
            .map(|a| (a.host().to_string(), a.port()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("n1".into(), 4222),
                ("n2".into(), 4223),
                ("n3".into(), 4224)
            ]
        );
    }

    #[test]
    fn a_bad_entry_is_named() {
        let e = NatsSettings::new("nats://n1:4222,nats://n2:port")
            .servers()
            .unwrap_err();
        assert!(e.to_string().contains("nats://n2:port"), "{e}");
        assert!(NatsSettings::new(" , ").servers().is_err());
    }
}
