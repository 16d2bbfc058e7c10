//! Fencing: a process that lost its consumer lease without knowing it (paused past the lease by
//! SIGSTOP or a VM stall, cut off from the broker) must not commit a round once another process
//! may hold the lease.
//!
//! Two checks run in each round's transaction, just before it commits:
//!
//! 1. **The lease is surely held**: its last renewal was *sent* less than [`SURELY_HELD`] ago. The
//!    key lives [`LEASE`](super::LEASE) from when the server stored the renewal, which is after it
//!    was sent, so no other process can hold it yet. A process that resumes after a pause finds its
//!    renewal too old and rolls the round back, whatever files the group's processes keep. Not
//!    final: the round is tried again (as after any fault of the group's own) once a renewal gets
//!    through, or the worker stops when the lease turns out lost.
//! 2. **No newer owner committed**: the lease's revision in the KV bucket (each take and each
//!    renewal gets a higher one, the bucket being a stream) is a fencing token. The round records
//!    it in the group's database, in `consumer_fences`, and rolls back when a higher one is
//!    recorded there. Final: another process holds the lease, the worker stops. Where the
//!    processes share one file, this closes what the first check leaves open (a pause between
//!    that check and the COMMIT).

use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, params};
use tokio::time::Instant;

use super::SURELY_HELD;

/// The table of the fencing tokens, in the group's database.
pub(in crate::consumer) const SCHEMA: &str = "
-- The highest lease revision that committed a round, per consumer (see `fence`).
CREATE TABLE IF NOT EXISTS consumer_fences (
    consumer TEXT    NOT NULL PRIMARY KEY,
    revision INTEGER NOT NULL
) WITHOUT ROWID;
";

/// This process's hold on a lease: its revision and when its last renewal was sent.
#[derive(Debug)]
pub(in crate::consumer) struct Fence {
    key: String,
    held: Mutex<(u64, Instant)>,
}

/// Why a round may not commit.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(in crate::consumer) enum Fenced {
    /// The lease was last renewed too long ago to be sure it is held.
    #[error("the consumer lease was last renewed {0:?} ago; not sure it is still held")]
    Unsure(Duration),
    /// A newer owner of the lease committed rounds in this database.
    #[error("a newer owner of the consumer lease (revision {newer}, this one {this}) committed")]
    Superseded {
        /// The revision recorded.
        newer: u64,
        /// This process's.
        this: u64,
    },
    /// Reading or writing the token failed.
    #[error("recording the fencing token: {0}")]
    Database(String),
}

impl Fence {
    /// The hold on the lease `key` taken at `revision` by a request sent at `sent`.
    pub(in crate::consumer) fn new(key: &str, revision: u64, sent: Instant) -> Fence {
        Fence {
            key: key.to_owned(),
            held: Mutex::new((revision, sent)),
        }
    }

    /// The lease was renewed to `revision` by a request sent at `sent`.
    pub(in crate::consumer) fn renewed(&self, revision: u64, sent: Instant) {
        *self.held.lock().expect("not poisoned") = (revision, sent);
    }

    /// When the last renewal was sent.
    pub(in crate::consumer) fn renewed_at(&self) -> Instant {
        self.held.lock().expect("not poisoned").1
    }

    /// Whether the lease is surely still held (the last renewal was sent less than
    /// [`SURELY_HELD`] ago). Held messages get in-progress acks only then: an owner that is not
    /// sure lets them go back to the broker by `ack_wait`, so a new owner that waits `ack_wait`
    /// after taking the lease (the key lives past the last renewal by more than this) gets them
    /// before anything newer.
    pub(in crate::consumer) fn is_sure(&self) -> bool {
        self.renewed_at().elapsed() < SURELY_HELD
    }

    /// Both checks (see the module's documentation), in `conn`'s transaction: the token is
    /// recorded when it is the highest.
    pub(in crate::consumer) fn check(&self, conn: &Connection) -> Result<(), Fenced> {
        let (revision, sent) = *self.held.lock().expect("not poisoned");
        let since = sent.elapsed();
        if since >= SURELY_HELD {
            return Err(Fenced::Unsure(since));
        }
        let changed = conn
            .execute(
                "INSERT INTO consumer_fences (consumer, revision) VALUES (?1, ?2)
                 ON CONFLICT (consumer) DO UPDATE SET revision = excluded.revision
                 WHERE excluded.revision >= consumer_fences.revision",
                params![self.key, revision as i64],
            )
            .map_err(|e| Fenced::Database(e.to_string()))?;
        if changed == 1 {
            return Ok(());
        }
        let newer: i64 = conn
            .query_row(
                "SELECT revision FROM consumer_fences WHERE consumer = ?1",
                [&self.key],
                |r| r.get(0),
            )
            .map_err(|e| Fenced::Database(e.to_string()))?;
        Err(Fenced::Superseded {
            newer: newer as u64,
            this: revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn
    }

    #[test]
    fn an_owner_is_sure_of_its_lease_only_while_its_last_renewal_is_recent() {
        let fence = Fence::new("g", 1, Instant::now());
        assert!(fence.is_sure());
        let long_ago = Instant::now()
            .checked_sub(SURELY_HELD + Duration::from_millis(1))
            .unwrap();
        fence.renewed(2, long_ago);
        assert!(
            !fence.is_sure(),
            "held messages are let go back to the broker"
        );
        fence.renewed(3, Instant::now());
        assert!(fence.is_sure());
    }

    #[test]
    fn a_round_of_an_older_owner_is_refused_once_a_newer_one_committed() {
        let conn = db();
        let old = Fence::new("g", 5, Instant::now());
        let new = Fence::new("g", 9, Instant::now());
        old.check(&conn).unwrap();
        new.check(&conn).unwrap();
        assert_eq!(
            old.check(&conn),
            Err(Fenced::Superseded { newer: 9, this: 5 })
        );
        new.renewed(12, Instant::now());
        new.check(&conn).unwrap();
        let other = Fence::new("g-p1", 3, Instant::now());
        other.check(&conn).unwrap();
    }

    #[test]
    fn a_lease_renewed_too_long_ago_is_not_trusted() {
        let conn = db();
        let long_ago = Instant::now().checked_sub(SURELY_HELD).unwrap();
        let fence = Fence::new("g", 5, long_ago);
        assert!(matches!(fence.check(&conn), Err(Fenced::Unsure(_))));
        fence.renewed(6, Instant::now());
        fence.check(&conn).unwrap();
    }
}
