//! Test support: SQLite's own count of virtual-machine steps for each statement a connection
//! runs, taken as each statement finishes. A query whose cost grows with a table (a full scan,
//! or an index search whose prefix matches every row) shows as steps in proportion to the rows;
//! the history-cost tests compare the counts on a table and on one ten times larger.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rusqlite::trace::{TraceEvent, TraceEventCodes};
use rusqlite::{Connection, StatementStatus};

thread_local! {
    /// Each finished statement's SQL and its steps, on this thread.
    static STEPS: RefCell<Vec<(String, i32)>> = const { RefCell::new(Vec::new()) };
}

/// Records a statement as it finishes (the trace callback must be a plain function).
fn record(event: TraceEvent<'_>) {
    if let TraceEvent::Profile(stmt, _) = event {
        let steps = stmt.get_status(StatementStatus::VmStep);
        STEPS.with(|s| s.borrow_mut().push((stmt.sql().into_owned(), steps)));
    }
}

/// Counts the steps of what `conn` runs on this thread from now on, forgetting earlier counts.
/// `conn` should be new: a cached statement's count adds up over its runs.
pub fn count(conn: &Connection) {
    conn.trace_v2(TraceEventCodes::SQLITE_TRACE_PROFILE, Some(record));
    STEPS.with(|s| s.borrow_mut().clear());
}

/// The steps counted since [`count`], summed per statement (by its SQL).
pub fn taken() -> BTreeMap<String, i64> {
    let mut steps = BTreeMap::new();
    STEPS.with(|s| {
        for (sql, n) in s.borrow_mut().drain(..) {
            *steps.entry(sql).or_insert(0) += i64::from(n);
        }
    });
    steps
}

/// The statements of `before` (the steps on a table) that took more than twice as many steps,
/// and 50 more, in `after` (on a table ten times larger), each as a line saying so.
pub fn grown(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>) -> Vec<String> {
    before
        .iter()
        .filter_map(|(sql, &was)| {
            let now = after.get(sql).copied().unwrap_or_default();
            // A few steps more for a deeper index are fine; in proportion to the rows is not.
            (now > was * 2 + 50).then(|| format!("{was} -> {now} steps: {sql}"))
        })
        .collect()
}
