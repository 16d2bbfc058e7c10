//! The connection to NATS: the server list (`NATS_URL`), the identity the client connects as and
//! its TLS settings.
//!
//! `NATS_URL` is a comma-separated list, as with every NATS client: the client connects to one
//! of the servers and, once connected, reconnects across all of them (and any the cluster
//! announces) by itself.
//!
//! The identity is a user and password (`NATS_USER`, `NATS_PASSWORD`) or a creds file
//! (`NATS_CREDS`, a user JWT and its NKey seed); the shipped server configs define the users and
//! what each may do (`nats/identities.conf`). TLS is on when a CA, a client certificate or a
//! `tls://` URL is given.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectError, ConnectErrorKind, ConnectOptions, Event, ServerAddr};
use tokio::sync::Notify;

use crate::secret::Secret;

/// The client name the server shows in its connection list.
const CLIENT_NAME: &str = "order-service";

/// Where the NATS servers are, and who connects to them.
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

    /// The NATS user to connect as (with NATS_PASSWORD); none when the server needs none.
    #[arg(
        long = "nats-user",
        env = "NATS_USER",
        requires = "password",
        conflicts_with = "creds"
    )]
    pub user: Option<String>,

    /// The NATS user's password.
    #[arg(
        long = "nats-password",
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<Secret>,

    /// A NATS creds file (user JWT and NKey seed) to connect with, instead of a user and password.
    #[arg(long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,

    /// PEM file of the CA(s) the servers' certificates must chain to; turns TLS on.
    #[arg(long = "nats-tls-ca", env = "NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate, for servers that verify clients (with NATS_TLS_KEY); turns TLS on.
    #[arg(long = "nats-tls-cert", env = "NATS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of NATS_TLS_CERT.
    #[arg(long = "nats-tls-key", env = "NATS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The subject prefix of this client's replies; `_INBOX_<NATS_USER>` with a user, `_INBOX`
    /// without. A user's permissions let it read its own replies only (`nats/identities.conf`).
    #[arg(long = "nats-inbox-prefix", env = "NATS_INBOX_PREFIX")]
    pub inbox_prefix: Option<String>,
}

/// The inbox prefix of `user`'s connections: its replies are `_INBOX_<user>.<id>`, which the
/// shipped permissions let only that user subscribe to, so no client reads another's replies
/// (fetched messages among them).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

impl NatsSettings {
    /// Settings for the servers in `url` (one URL or a comma-separated list), with no identity
    /// and no TLS settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            user: None,
            password: None,
            creds: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            inbox_prefix: None,
        }
    }

    /// These settings, connecting as `user` with `password`.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(Secret::from(password.into()));
        self
    }

    /// The client options for the identity and TLS settings: what every connection of the
    /// service starts from. Half-given settings (a user without a password, a certificate
    /// without its key, a user and a creds file) are errors naming the variables; so is a creds
    /// file that cannot be read.
    pub async fn options(&self) -> Result<ConnectOptions, ConnectError> {
        let mut options = ConnectOptions::new();
        match (&self.user, &self.password, &self.creds) {
            (Some(_), _, Some(_)) => {
                return Err(settings_error(
                    ConnectErrorKind::Authentication,
                    "NATS_USER and NATS_CREDS are two identities: give one",
                ));
            }
            (Some(user), Some(password), None) => {
                options = options.user_and_password(user.clone(), password.expose().to_owned());
            }
            (Some(_), None, None) => {
                return Err(settings_error(
                    ConnectErrorKind::Authentication,
                    "NATS_USER is set but NATS_PASSWORD is not",
                ));
            }
            (None, Some(_), _) => {
                return Err(settings_error(
                    ConnectErrorKind::Authentication,
                    "NATS_PASSWORD is set but NATS_USER is not",
                ));
            }
            (None, None, Some(creds)) => {
                options = options.credentials_file(creds).await.map_err(|e| {
                    settings_error(
                        ConnectErrorKind::Authentication,
                        format!("NATS_CREDS {}: {e}", creds.display()),
                    )
                })?;
            }
            (None, None, None) => {}
        }
        let prefix = match (&self.inbox_prefix, &self.user) {
            (Some(prefix), _) => Some(prefix.clone()),
            (None, Some(user)) => Some(inbox_prefix(user)),
            (None, None) => None,
        };
        if let Some(prefix) = prefix {
            if prefix.is_empty()
                || prefix
                    .chars()
                    .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
            {
                return Err(settings_error(
                    ConnectErrorKind::Authentication,
                    format!(
                        "NATS_INBOX_PREFIX {prefix:?} (or the one NATS_USER gives) must be one \
                         subject token: no '.', '*', '>' or spaces"
                    ),
                ));
            }
            options = options.custom_inbox_prefix(prefix);
        }
        if let Some(ca) = &self.tls_ca {
            readable("NATS_TLS_CA", ca)?;
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                readable("NATS_TLS_CERT", cert)?;
                readable("NATS_TLS_KEY", key)?;
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (Some(_), None) => {
                return Err(settings_error(
                    ConnectErrorKind::Tls,
                    "NATS_TLS_CERT is set but NATS_TLS_KEY is not",
                ));
            }
            (None, Some(_)) => {
                return Err(settings_error(
                    ConnectErrorKind::Tls,
                    "NATS_TLS_KEY is set but NATS_TLS_CERT is not",
                ));
            }
            (None, None) => {}
        }
        Ok(options)
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
                    settings_error(
                        ConnectErrorKind::ServerParse,
                        format!("NATS_URL entry {:?}: {e}", masked(s)),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(ConnectError::with_source(
                ConnectErrorKind::ServerParse,
                "NATS_URL names no server",
            ));
        }
        Ok(servers)
    }
}

impl NatsSettings {
    /// The server list as logs and errors may show it: a password or token in an entry
    /// (`nats://user:password@host`, `nats://token@host`) is masked as `***`.
    pub fn masked_url(&self) -> String {
        self.url
            .split(',')
            .map(|entry| masked(entry.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One server URL with its password (or its token, when the user part is all there is) masked.
fn masked(entry: &str) -> String {
    let start = entry.find("://").map_or(0, |i| i + 3);
    let authority_end = entry[start..]
        .find(['/', '?', '#'])
        .map_or(entry.len(), |i| start + i);
    let Some(at) = entry[start..authority_end].rfind('@').map(|i| start + i) else {
        return entry.to_owned();
    };
    let user_info = &entry[start..at];
    let shown = match user_info.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{}{shown}{}", &entry[..start], &entry[at..])
}

fn settings_error(kind: ConnectErrorKind, message: impl Into<String>) -> ConnectError {
    ConnectError::with_source(kind, message.into())
}

/// The client reads TLS files only while connecting, and says little about which one it could
/// not read: check them up front so the error names the variable.
fn readable(variable: &str, path: &std::path::Path) -> Result<(), ConnectError> {
    std::fs::File::open(path).map(drop).map_err(|e| {
        settings_error(
            ConnectErrorKind::Tls,
            format!("{variable} {}: {e}", path.display()),
        )
    })
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
    settings
        .options()
        .await?
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
    fn passwords_and_tokens_in_the_url_are_masked() {
        let s = NatsSettings::new(
            "nats://shop:pa:ss@n1:4222, tls://tok3n@n2:4223/x?y=z@w,nats://n3:4224,n4,user@n5",
        );
        assert_eq!(
            s.masked_url(),
            "nats://shop:***@n1:4222,tls://***@n2:4223/x?y=z@w,nats://n3:4224,n4,***@n5"
        );
    }

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

    /// The settings as the command line and the environment give them.
    fn parse(args: &[&str]) -> Result<NatsSettings, clap::Error> {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            nats: NatsSettings,
        }
        let args = std::iter::once("order-service").chain(args.iter().copied());
        <Command as clap::Parser>::try_parse_from(args).map(|c| c.nats)
    }

    #[test]
    fn half_given_options_are_refused_by_the_command_line() {
        for args in [
            &["--nats-user", "u"][..],
            &["--nats-password", "p"],
            &[
                "--nats-user",
                "u",
                "--nats-password",
                "p",
                "--nats-creds",
                "c",
            ],
            &["--nats-tls-cert", "c"],
            &["--nats-tls-key", "k"],
        ] {
            assert!(parse(args).is_err(), "{args:?} is accepted");
        }
        let full = parse(&[
            "--nats-user",
            "u",
            "--nats-password",
            "p",
            "--nats-tls-cert",
            "c",
            "--nats-tls-key",
            "k",
            "--nats-tls-ca",
            "a",
        ])
        .unwrap();
        assert_eq!(full.user.as_deref(), Some("u"));
        assert_eq!(full.password.as_ref().map(Secret::expose), Some("p"));
    }

    #[tokio::test]
    async fn half_given_options_are_refused_when_connecting() {
        let base = NatsSettings::new("nats://127.0.0.1:4222");
        let cases = [
            (
                NatsSettings {
                    user: Some("u".into()),
                    ..base.clone()
                },
                "NATS_PASSWORD",
            ),
            (
                NatsSettings {
                    password: Some(Secret::from("p".to_owned())),
                    ..base.clone()
                },
                "NATS_USER",
            ),
            (
                NatsSettings {
                    creds: Some("c".into()),
                    ..base.clone().with_user("u", "p")
                },
                "NATS_CREDS",
            ),
            (
                NatsSettings {
                    tls_cert: Some("c".into()),
                    ..base.clone()
                },
                "NATS_TLS_KEY",
            ),
            (
                NatsSettings {
                    creds: Some("/nonexistent/order-service.creds".into()),
                    ..base.clone()
                },
                "/nonexistent/order-service.creds",
            ),
            (
                NatsSettings {
                    tls_ca: Some("/nonexistent/ca.pem".into()),
                    ..base.clone()
                },
                "NATS_TLS_CA /nonexistent/ca.pem",
            ),
            (
                NatsSettings {
                    inbox_prefix: Some("_INBOX.mine".into()),
                    ..base.clone()
                },
                "NATS_INBOX_PREFIX",
            ),
            (base.clone().with_user("a.b", "p"), "NATS_INBOX_PREFIX"),
        ];
        for (settings, named) in cases {
            let error = settings.options().await.expect_err("refused");
            assert!(error.to_string().contains(named), "{error}");
        }
        assert!(base.with_user("u", "p").options().await.is_ok());
    }

    #[test]
    fn debug_does_not_show_the_password() {
        let settings = NatsSettings::new("nats://n1:4222").with_user("svc", "hunter2-secret");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2-secret"), "{printed}");
        assert!(printed.contains("svc"), "{printed}");
    }
}
