//! How many times the handler ran for a message, so that `max_deliver` counts runs, not
//! deliveries. Its table, `handler_runs`, is made with the group's others
//! ([`crate::consumer::idempotency`]).
//!
//! The broker counts every delivery, and a message is delivered again without having run: sent back
//! unstarted when the group stops or loses its lease, parked behind an earlier event of its order
//! through a restart, held by a process that died. Counted by the broker, a few rolling deploys
//! would dead-letter an event that never ran. So the rounds record each run that ended in a retry,
//! in the round's transaction (`handler_runs`), and a transient failure is a dead letter once the
//! handler ran `max_deliver` times. The broker's own `max_deliver` is a backstop
//! [`DELIVERIES_PER_RUN`](crate::consumer::config::DELIVERIES_PER_RUN) times higher, for what no
//! round records: a message whose handler takes the process down every time it runs is
//! dead-lettered from the broker's advisory after that.

use rusqlite::{Connection, OptionalExtension, params};

/// The runs recorded for the message of `consumer` at `sequence`.
pub(in crate::consumer) fn earlier(
    conn: &Connection,
    consumer: &str,
    sequence: u64,
) -> rusqlite::Result<u64> {
    let runs: Option<i64> = conn
        .query_row(
            "SELECT runs FROM handler_runs WHERE consumer = ?1 AND stream_seq = ?2",
            params![consumer, sequence as i64],
            |r| r.get(0),
        )
        .optional()?;
    Ok(runs.unwrap_or(0) as u64)
}

/// Notes one more run of the message of `consumer` at `sequence`, to be retried.
pub(in crate::consumer) fn ran(
    conn: &Connection,
    consumer: &str,
    sequence: u64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO handler_runs (consumer, stream_seq, runs) VALUES (?1, ?2, 1)
         ON CONFLICT (consumer, stream_seq) DO UPDATE SET runs = runs + 1",
        params![consumer, sequence as i64],
    )?;
    Ok(())
}

/// The message of `consumer` at `sequence` is done (processed or dead-lettered).
pub(in crate::consumer) fn done(
    conn: &Connection,
    consumer: &str,
    sequence: u64,
) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM handler_runs WHERE consumer = ?1 AND stream_seq = ?2",
        params![consumer, sequence as i64],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_counted_per_consumer_and_message_until_done() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::consumer::handling::idempotency::SCHEMA)
            .unwrap();
        assert_eq!(earlier(&conn, "g", 7).unwrap(), 0);
        ran(&conn, "g", 7).unwrap();
        ran(&conn, "g", 7).unwrap();
        ran(&conn, "other", 7).unwrap();
        assert_eq!(earlier(&conn, "g", 7).unwrap(), 2);
        done(&conn, "g", 7).unwrap();
        assert_eq!(earlier(&conn, "g", 7).unwrap(), 0);
        assert_eq!(earlier(&conn, "other", 7).unwrap(), 1);
    }
}
