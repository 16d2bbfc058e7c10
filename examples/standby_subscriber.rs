//! A whole subscriber process, as the two-process standby tests (`tests/it/consumer/standby.rs`)
//! run it twice: one consumer group on one topic whose handler records each event it applies
//! with the process's label, `/health` and `/metrics` served beside it, and a graceful stop when
//! its standard input closes.
//!
//! Settings come from the environment: `NATS_URL`, `STANDBY_DATABASE` (the group's SQLite file),
//! `STANDBY_GROUP`, `STANDBY_LABEL` (what the effects rows say), and `STANDBY_ADDR_FILE`, where
//! the address of `/health` is written once it listens (on a free loopback port). Optional:
//! `STANDBY_TOPIC` (default `order.created`), `STANDBY_HANDLER_MS` (how long each handler call
//! takes, default 20) and `STANDBY_ACK_WAIT_MS` (default 3000).

use std::path::PathBuf;
use std::time::Duration;

use order_service::consumer::{Delivery, Event, Failure, Group, GroupConfig, Handler, HandlerTx};
use order_service::domain::Topic;
use order_service::shutdown::Shutdown;
use order_service::{async_nats, bus, rusqlite, tokio};

/// A handler whose effect is a row `(event_id, label)` per call in `standby_effects`: no unique
/// key, so an event applied twice shows as two rows, and the label says which process did it.
struct Effects {
    label: String,
    /// How long each call takes.
    takes: Duration,
}

impl Handler for Effects {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS standby_effects (
                 seq      INTEGER PRIMARY KEY AUTOINCREMENT,
                 event_id TEXT NOT NULL,
                 label    TEXT NOT NULL
             )",
        )
    }

    async fn handle(
        &self,
        event: &Event,
        _: &Delivery,
        tx: &mut HandlerTx<'_>,
    ) -> Result<(), Failure> {
        // Slow enough that a kill finds a batch in flight.
        tokio::time::sleep(self.takes).await;
        tx.execute(
            "INSERT INTO standby_effects (event_id, label) VALUES (?1, ?2)",
            (event.event_id().to_string(), &self.label),
        )?;
        Ok(())
    }
}

/// The environment variable `name` as a number of milliseconds, `default` when unset.
fn millis(name: &str, default: u64) -> Duration {
    let value = std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} is not a number"))
    });
    Duration::from_millis(value)
}

/// The environment variable `name`, which must be set.
fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

// Several threads, as `#[tokio::main]` gives by default: `/health` is answered while a batch runs.
#[tokio::main(crate = "order_service::tokio")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nats = bus::connect(&bus::NatsSettings::new(var("NATS_URL"))).await?;
    let topic = std::env::var("STANDBY_TOPIC").unwrap_or_else(|_| "order.created".into());
    let topic = Topic::parse(&topic).unwrap_or_else(|| panic!("no topic {topic}"));
    let mut config = GroupConfig::new(
        var("STANDBY_GROUP"),
        &[topic],
        PathBuf::from(var("STANDBY_DATABASE")),
    );
    config.backoff = vec![Duration::from_millis(20), Duration::from_millis(50)];
    config.max_deliver = 50;
    config.batch_size = 200;
    config.synchronous_full = false;
    // What a killed process held unacknowledged comes back to the standby soon.
    config.ack_wait = millis("STANDBY_ACK_WAIT_MS", 3000);
    let effects = Effects {
        label: var("STANDBY_LABEL"),
        takes: millis("STANDBY_HANDLER_MS", 20),
    };
    let group = Group::new(async_nats::jetstream::new(nats), config, effects)?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr_file = PathBuf::from(var("STANDBY_ADDR_FILE"));
    let written = addr_file.with_extension("tmp");
    std::fs::write(&written, listener.local_addr()?.to_string())?;
    std::fs::rename(&written, &addr_file)?;
    let stop = Shutdown::new();
    let health = tokio::spawn(group.health().serve(listener, stop.signal()));
    // Closing standard input stops the process gracefully (so does its parent's death).
    let stdin_closed = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        stdin_closed.trigger();
    });
    let ran = group.run(stop.signal()).await;
    stop.trigger();
    health.await?;
    Ok(ran?)
}
