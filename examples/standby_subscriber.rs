//! A whole subscriber process, as the two-process standby tests (`tests/it/consumer/standby.rs`)
//! and the fault campaign (`tests/it/cluster/chaos/subscribers.rs`) run it: one consumer group
//! whose handler records each event it applies with the process's label, `/health` and
//! `/metrics` served beside it, and a graceful stop when its standard input closes.
//!
//! Settings come from the environment: `NATS_URL`, `STANDBY_DATABASE` (the group's SQLite file),
//! `STANDBY_GROUP`, `STANDBY_LABEL` (what the effects rows say), and `STANDBY_ADDR_FILE`, where
//! the address of `/health` is written once it listens (on a free loopback port). Optional:
//! - `STANDBY_TOPIC` (default `order.created`), or `STANDBY_TOPICS`, a comma-separated list;
//! - `STANDBY_PARTITION`: only that partition of each topic;
//! - `STANDBY_EMIT`: a topic of its own (one partition, `STANDBY_EMIT_REPLICATION` replicas,
//!   default 1) to which it emits one event per event it applies, `{"source": <event id>}`;
//! - `STANDBY_HANDLER_MS` (how long each handler call takes, default 20) and
//!   `STANDBY_ACK_WAIT_MS` (default 3000);
//! - `NATS_USER` and `NATS_PASSWORD`, the identity it connects with;
//! - `STANDBY_FULL_FLAG`: while a file of that name exists, the handler's writes find the
//!   database full (SQLite's own `SQLITE_FULL`: the file is capped at its size with
//!   `PRAGMA max_page_count`), as on a full disk.
//!
//! Built with the `service` feature it logs warnings and errors to standard error (`RUST_LOG`
//! for more).

use std::path::PathBuf;
use std::time::Duration;

use order_service::bus::{NatsSettings, Topics};
use order_service::consumer::{
    Delivery, Emits, Event, Failure, Group, GroupConfig, Handler, HandlerTx,
};
use order_service::domain::Topic;
use order_service::shutdown::Shutdown;
use order_service::{async_nats, bus, rusqlite, tokio};

/// A handler whose effect is a row per call in `standby_effects`: the event, where it was
/// delivered from and how often, and the label of the process. No unique key, so an event
/// applied twice shows as two rows, and `seq` is the order in which effects were committed.
struct Effects {
    label: String,
    /// How long each call takes.
    takes: Duration,
    /// The topic it emits to, if any.
    emit: Option<String>,
    /// While this file exists, writes find the database full.
    full_flag: Option<PathBuf>,
}

impl Effects {
    /// Fails the round as a full disk would: caps the file at its size and writes past it.
    fn full_disk(&self, tx: &mut HandlerTx<'_>) -> Result<(), Failure> {
        if !self.full_flag.as_ref().is_some_and(|flag| flag.exists()) {
            return Ok(());
        }
        let conn = tx.conn();
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get::<_, i64>(0)
        })?;
        let written = conn.execute(
            "INSERT INTO standby_padding VALUES (randomblob(200000))",
            [],
        );
        conn.query_row("PRAGMA max_page_count = 1073741823", [], |r| {
            r.get::<_, i64>(0)
        })?;
        written?;
        Ok(())
    }
}

impl Handler for Effects {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS standby_effects (
                 seq        INTEGER PRIMARY KEY AUTOINCREMENT,
                 event_id   TEXT NOT NULL,
                 label      TEXT NOT NULL,
                 stream     TEXT NOT NULL DEFAULT '',
                 stream_seq INTEGER NOT NULL DEFAULT 0,
                 subject    TEXT NOT NULL DEFAULT '',
                 delivered  INTEGER NOT NULL DEFAULT 0
             );
             CREATE TABLE IF NOT EXISTS standby_padding (b BLOB);",
        )
    }

    async fn handle(
        &self,
        event: &Event,
        delivery: &Delivery,
        tx: &mut HandlerTx<'_>,
    ) -> Result<(), Failure> {
        // Slow enough that a kill finds a batch in flight.
        tokio::time::sleep(self.takes).await;
        self.full_disk(tx)?;
        let event_id = event.event_id().to_string();
        tx.execute(
            "INSERT INTO standby_effects (event_id, label, stream, stream_seq, subject, delivered)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            (
                &event_id,
                &self.label,
                &delivery.stream,
                delivery.stream_sequence as i64,
                &delivery.subject,
                delivery.delivered as i64,
            ),
        )?;
        if let Some(topic) = &self.emit {
            // The order's key: the last token of `<topic>.<partition>.<key>`.
            let key = delivery.subject.rsplit('.').next().unwrap_or_default();
            tx.emit(topic, key, &serde_json::json!({"source": event_id}), &[])?;
        }
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

/// The environment variable `name`, when set and not empty.
fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The topics to take: `STANDBY_TOPICS`, else `STANDBY_TOPIC`, else `order.created`.
fn topics() -> Vec<Topic> {
    let list = optional("STANDBY_TOPICS")
        .or_else(|| optional("STANDBY_TOPIC"))
        .unwrap_or_else(|| "order.created".into());
    list.split(',')
        .map(|t| Topic::parse(t.trim()).unwrap_or_else(|| panic!("no topic {t}")))
        .collect()
}

/// The table of the one topic `topic` it emits to.
fn emits(topic: &str) -> Result<Emits, Box<dyn std::error::Error>> {
    let replication = optional("STANDBY_EMIT_REPLICATION").unwrap_or_else(|| "1".into());
    let table = format!(
        r#"[{{"topic": "{topic}", "partitions": 1, "replication": {replication}, "retention": "1d"}}]"#
    );
    Ok(Emits::new(Topics::from_json(&table)?))
}

// Several threads, as `#[tokio::main]` gives by default: `/health` is answered while a batch runs.
#[tokio::main(crate = "order_service::tokio")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Warnings and errors on standard error (`RUST_LOG` for more): what the library says when it
    // holds, resets or takes over is what a failed campaign run is read by.
    #[cfg(feature = "service")]
    let _telemetry = order_service::telemetry::init(order_service::config::LogFormat::Text, "warn");
    let mut settings = NatsSettings::new(var("NATS_URL"));
    if let (Some(user), Some(password)) = (optional("NATS_USER"), optional("NATS_PASSWORD")) {
        settings = settings.with_user(user, password);
    }
    let nats = bus::connect(&settings).await?;
    let mut config = GroupConfig::new(
        var("STANDBY_GROUP"),
        &topics(),
        PathBuf::from(var("STANDBY_DATABASE")),
    );
    if let Some(partition) = optional("STANDBY_PARTITION") {
        config = config.with_partition(partition.parse().expect("STANDBY_PARTITION"));
    }
    config.backoff = vec![Duration::from_millis(20), Duration::from_millis(50)];
    config.max_deliver = 50;
    config.batch_size = 200;
    config.synchronous_full = false;
    // What a killed process held unacknowledged comes back to the standby soon.
    config.ack_wait = millis("STANDBY_ACK_WAIT_MS", 3000);
    let emit = optional("STANDBY_EMIT");
    let effects = Effects {
        label: var("STANDBY_LABEL"),
        takes: millis("STANDBY_HANDLER_MS", 20),
        emit: emit.clone(),
        full_flag: optional("STANDBY_FULL_FLAG").map(PathBuf::from),
    };
    let mut group = Group::new(async_nats::jetstream::new(nats), config, effects)?;
    if let Some(topic) = &emit {
        group = group.emitting(emits(topic)?);
    }

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
