//! How far each stream's relay has handed outbox rows to a publish (`outbox_sent_marks`).
//!
//! A relay raises a stream's mark to at least the highest id of the rows it is about to send,
//! before sending them. So after a restart (a crash, a kill, a deploy) the rows a stream's earlier
//! relays may have sent are those at or below its mark; a row above it was never handed out,
//! cannot be stored yet, and needs no look-up before its first send, however old. The row `*`
//! holds what relays before the table may have sent: every row committed before it existed.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::StoreError;

/// The mark that covers every stream: what relays before the table may have sent.
pub const ANY_STREAM: &str = "*";

/// Every stream's mark, and [`ANY_STREAM`]'s.
pub fn read(conn: &Connection) -> Result<HashMap<String, i64>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT stream, last_id FROM outbox_sent_marks")?;
    let marks = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(marks)
}

/// Raises `stream`'s mark to `last_id` (a lower value leaves it as it is).
pub fn raise(conn: &Connection, stream: &str, last_id: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO outbox_sent_marks (stream, last_id) VALUES (?1, ?2)
         ON CONFLICT (stream) DO UPDATE SET last_id = max(last_id, excluded.last_id)",
    )?
    .execute(params![stream, last_id])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_only_rises_and_the_rows_before_the_table_are_covered() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations().to_latest(&mut conn).unwrap();
        assert_eq!(
            read(&conn).unwrap(),
            HashMap::from([(ANY_STREAM.to_owned(), 0)])
        );
        raise(&conn, "ORDER_CREATED", 40).unwrap();
        raise(&conn, "ORDER_CREATED", 12).unwrap();
        assert_eq!(read(&conn).unwrap()["ORDER_CREATED"], 40);
    }
}
