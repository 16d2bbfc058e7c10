//! SQLite: opening the database, its pragmas and migrations, the one writer, and the readers.
//!
//! - [`writer`] — the thread that owns the write connection and commits commands in groups.
//! - [`orders`] — orders and their items.
//! - [`products`] — the local stock view and the catalogue's prices.
//! - [`chat`] — chat origins of orders and chat links.
//! - [`outbox`] — the transactional outbox `order_events_outbox`.
//! - [`acknowledged`] — where the broker stored the published rows: what a repair checks.
//! - [`tail`] — the newest outbox row, where a live tail starts.
//! - [`idempotency`] — stored responses of requests sent with an `Idempotency-Key`.
//! - [`retention`] — deleting rows past their retention in small batches.
//!
//! Store functions that change data take a [`Tx`], the open write transaction, so every change a
//! command makes (order rows and outbox rows alike) commits or rolls back together.

pub mod acknowledged;
pub mod chat;
pub mod idempotency;
pub mod orders;
pub mod outbox;
pub mod products;
pub mod retention;
pub mod sent_marks;
pub mod tail;
pub mod writer;

#[cfg(test)]
mod history_costs;

use std::cell::Cell;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};
use tokio::sync::Notify;
use tracing::Instrument;

pub use writer::Writer;

/// The migrations in `migrations/`, applied in order; SQLite's `user_version` records how many ran.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_orders.sql",
        include_str!("../../migrations/0001_orders.sql"),
    ),
    (
        "0002_outbox_keys.sql",
        include_str!("../../migrations/0002_outbox_keys.sql"),
    ),
    (
        "0003_outbox_requeues.sql",
        include_str!("../../migrations/0003_outbox_requeues.sql"),
    ),
    (
        "0004_idempotency_keys.sql",
        include_str!("../../migrations/0004_idempotency_keys.sql"),
    ),
    (
        "0005_outbox_verify.sql",
        include_str!("../../migrations/0005_outbox_verify.sql"),
    ),
    (
        "0006_outbox_sent_marks.sql",
        include_str!("../../migrations/0006_outbox_sent_marks.sql"),
    ),
    (
        "0007_product_prices.sql",
        include_str!("../../migrations/0007_product_prices.sql"),
    ),
];

/// The migrations of a consumer group's database that emits events: the outbox alone, the same
/// table the service's migrations build (`migrations/subscriber/`).
const SUBSCRIBER_MIGRATIONS: &[(&str, &str)] = &[
    (
        "subscriber/0001_outbox.sql",
        include_str!("../../migrations/subscriber/0001_outbox.sql"),
    ),
    (
        "subscriber/0002_outbox_verify.sql",
        include_str!("../../migrations/subscriber/0002_outbox_verify.sql"),
    ),
    (
        "subscriber/0003_outbox_sent_marks.sql",
        include_str!("../../migrations/subscriber/0003_outbox_sent_marks.sql"),
    ),
];

/// How long a connection waits for a lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many commands may share one transaction.
const GROUP_COMMIT_MAX: usize = 64;

/// SQLite's `synchronous` setting for the write connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "UPPER")]
pub enum Synchronous {
    /// No fsync: fastest, an OS crash or power loss can lose committed orders.
    Off,
    /// fsync at checkpoints only: in WAL mode a power loss can lose the last commits.
    Normal,
    /// fsync on every commit: an answered 201 survives power loss (the default).
    Full,
    /// FULL plus an fsync of the directory after unlinking a journal.
    Extra,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

/// What went wrong in the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another request stored an answer under this Idempotency-Key first (one that outlived its
    /// in-flight mark, e.g. after a request timeout); this command is rolled back.
    #[error("the Idempotency-Key `{0}` was used by a request committed meanwhile")]
    IdempotencyKeyTaken(String),
    /// SQLite said no.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The transaction could not be committed, so nothing in it was stored.
    #[error("commit failed: {0}")]
    Commit(String),
    /// No reader connection could be had.
    #[error("reader pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// Applying the migrations failed.
    #[error("migrations: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// Creating the database's folder or the writer thread failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The writer thread is gone (the service is stopping, or the thread died).
    #[error("the database writer has stopped")]
    WriterGone,
    /// SQLite rolled back the whole write transaction (a command hit SQLITE_FULL, an I/O error,
    /// out of memory, or a savepoint could not be ended), so nothing of its batch was stored and
    /// the rest of the batch did not run.
    #[error("the write transaction was rolled back, nothing of this command was stored: {0}")]
    TransactionLost(String),
    /// A command panicked; it was rolled back.
    #[error("a write command panicked and was rolled back")]
    CommandPanicked,
    /// A blocking read task failed.
    #[error("read task: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A stored value could not be read back.
    #[error("corrupt value in column {column}: {value}")]
    Corrupt {
        /// The column.
        column: &'static str,
        /// What was found there.
        value: String,
    },
}

/// The open write transaction a command runs in.
pub struct Tx<'c> {
    conn: &'c Connection,
    /// Set by [`outbox::enqueue`], so the writer knows to wake the relay after the commit.
    wrote_outbox: Cell<bool>,
}

impl<'c> Tx<'c> {
    fn new(conn: &'c Connection) -> Tx<'c> {
        Tx {
            conn,
            wrote_outbox: Cell::new(false),
        }
    }
}

impl Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// Where and how to open the database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database file; its folder is created when missing.
    pub path: PathBuf,
    /// `synchronous` for the write connection.
    pub synchronous: Synchronous,
    /// How many reader connections to keep.
    pub readers: u32,
}

/// The database: one writer, a pool of readers, and the outbox wake-up.
#[derive(Clone)]
pub struct Store {
    writer: Writer,
    readers: r2d2::Pool<SqliteConnectionManager>,
    outbox_committed: Arc<Notify>,
}

impl Store {
    /// Opens (creating if needed) the database, applies the migrations and starts the writer.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        Store::open_with(config, migrations())
    }

    /// Opens a consumer group's database for its outbox: the outbox table alone, so that the
    /// relay publishes what the group's handlers emit (see the consumer library's `emit`).
    pub fn open_outbox(config: &StoreConfig) -> Result<Store, StoreError> {
        Store::open_with(config, subscriber_migrations())
    }

    fn open_with(
        config: &StoreConfig,
        migrations: Migrations<'static>,
    ) -> Result<Store, StoreError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = Connection::open(&config.path)?;
        write_pragmas(&conn, config.synchronous)?;
        migrations.to_latest(&mut conn)?;

        let outbox_committed = Arc::new(Notify::new());
        let writer = Writer::spawn(conn, GROUP_COMMIT_MAX, outbox_committed.clone())?;
        let readers = r2d2::Pool::builder()
            .max_size(config.readers.max(1))
            .build(SqliteConnectionManager::file(&config.path).with_init(read_pragmas))?;
        Ok(Store {
            writer,
            readers,
            outbox_committed,
        })
    }

    /// Runs `command` in a write transaction; see [`Writer::write`]. Inside a request that
    /// carries an Idempotency-Key ([`idempotency::claimed`]), the command's answer is recorded in
    /// the same transaction: both are committed, or neither.
    ///
    /// Inside a span (a request's, a consumer's `event`), the write is a `command` span of it,
    /// named for the command's function, and the wait for its commit a `commit` span below that.
    pub async fn write<T, E, F>(&self, command: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        // Background writes (the relay's marks, pruning) run in no span: they start no trace.
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!("command", command = command_name::<F>())
        };
        self.write_unnamed(command).instrument(span).await
    }

    async fn write_unnamed<T, E, F>(&self, command: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        match idempotency::current() {
            None => self.writer.write(command).await,
            Some(claim) => {
                self.writer
                    .write(move |tx| {
                        let value = command(tx)?;
                        claim.record(tx, &value)?;
                        Ok(value)
                    })
                    .await
            }
        }
    }

    /// Runs `query` on a reader connection, off the async threads.
    pub async fn read<T, E, F>(&self, query: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.get().map_err(StoreError::from)?;
            query(&conn)
        })
        .await
        .map_err(StoreError::from)?
    }

    /// False once the writer thread has ended (see [`Writer::is_running`]).
    pub fn writer_running(&self) -> bool {
        self.writer.is_running()
    }

    /// Notified after each commit that wrote outbox rows: the relay's wake-up.
    pub fn outbox_committed(&self) -> Arc<Notify> {
        self.outbox_committed.clone()
    }
}

#[cfg(all(test, feature = "service"))]
impl Store {
    /// Kills the writer thread (see [`Writer::kill_for_test`]) and waits until it is gone.
    pub(crate) async fn kill_writer_for_test(&self) {
        self.writer.kill_for_test().await;
        while self.writer.is_running() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The migrations, for the writer at start-up and for tests.
fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|(_, sql)| M::up(sql)).collect())
}

/// The migrations of a consumer group's outbox.
fn subscriber_migrations() -> Migrations<'static> {
    Migrations::new(
        SUBSCRIBER_MIGRATIONS
            .iter()
            .map(|(_, sql)| M::up(sql))
            .collect(),
    )
}

fn write_pragmas(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous.pragma())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Each command runs in a SAVEPOINT, whose statement journal (the pages it changed, for
    // ROLLBACK TO) goes to a temporary file by default: a write syscall per page per command.
    // In memory it costs a few pages of RAM per command and no IO; nothing in it needs to
    // survive a crash (the WAL does that).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

fn read_pragmas(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Readers never write: a bug that tries fails loudly instead of racing the writer.
    conn.pragma_update(None, "query_only", "ON")?;
    Ok(())
}

/// A timestamp as stored: RFC 3339 UTC with milliseconds, which sorts as text.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads back a stored timestamp.
pub fn parse_timestamp(column: &'static str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt {
            column,
            value: text.to_owned(),
        })
}

/// Reads back a stored UUID.
pub fn parse_uuid(column: &'static str, text: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::parse_str(text).map_err(|_| StoreError::Corrupt {
        column,
        value: text.to_owned(),
    })
}

/// The migration file names in application order.
pub fn migration_names() -> impl Iterator<Item = &'static str> {
    MIGRATIONS.iter().map(|(name, _)| *name)
}

/// Checks that the database answers a query: the readiness check.
pub fn ping(conn: &Connection) -> Result<(), StoreError> {
    conn.query_row("SELECT 1", [], |_| Ok(()))?;
    Ok(())
}

/// The function a command closure was written in, e.g. `commands::place::place` for a closure of
/// `order_service::commands::place::place`: what a `command` span is named for.
fn command_name<F>() -> &'static str {
    let name = std::any::type_name::<F>();
    let name = name.split("::{{closure}}").next().unwrap_or(name);
    name.strip_prefix("order_service::").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn migrations_are_valid_and_list_every_file() {
        migrations().validate().unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = migration_names().collect();
        assert_eq!(files, listed, "every migration file is listed, in order");
    }

    /// The outbox's tables and indexes as SQLite keeps them, comments and layout left out.
    fn outbox_schema(conn: &Connection) -> Vec<(String, String)> {
        let mut stmt = conn
            .prepare(
                "SELECT name, sql FROM sqlite_master
                 WHERE sql IS NOT NULL AND (tbl_name = 'order_events_outbox'
                    OR tbl_name = 'outbox_requeues' OR tbl_name = 'outbox_sent_marks')
                 ORDER BY name",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))
            .unwrap()
            .map(|row| {
                let (name, sql) = row.unwrap();
                let code: Vec<&str> = sql
                    .lines()
                    .map(|line| line.split("--").next().unwrap_or_default())
                    .collect();
                (
                    name,
                    code.join(" ")
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            })
            .collect()
    }

    #[test]
    fn a_groups_outbox_is_the_services() {
        subscriber_migrations().validate().unwrap();
        let mut service = Connection::open_in_memory().unwrap();
        migrations().to_latest(&mut service).unwrap();
        let mut group = Connection::open_in_memory().unwrap();
        subscriber_migrations().to_latest(&mut group).unwrap();
        let schema = outbox_schema(&service);
        assert_eq!(schema.len(), 10, "{schema:?}");
        assert_eq!(outbox_schema(&group), schema);
        let requeues = |c: &Connection| {
            c.query_row("SELECT last FROM outbox_requeues WHERE id = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        };
        assert_eq!(requeues(&group), requeues(&service));
    }

    #[test]
    fn a_command_is_named_for_the_function_its_closure_was_written_in() {
        fn name_of<F>(_: &F) -> &'static str {
            command_name::<F>()
        }
        let command = |_: &Tx<'_>| Ok::<_, StoreError>(());
        assert_eq!(
            name_of(&command),
            "store::tests::a_command_is_named_for_the_function_its_closure_was_written_in"
        );
    }
}
