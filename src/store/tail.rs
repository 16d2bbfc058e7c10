//! Where the outbox ends: the live tail of the operations page starts after the newest row.

use rusqlite::Connection;

use super::StoreError;

/// The id of the newest outbox row, 0 when there is none.
pub fn last_id(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT coalesce(max(id), 0) FROM order_events_outbox",
        [],
        |r| r.get(0),
    )?)
}
