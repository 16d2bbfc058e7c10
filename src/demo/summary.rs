//! What the demo prints at the end: each consumer's own state and each group's counts.

use std::sync::Arc;

use super::consumers::{FINANCE, INVENTORY, NOTIFICATION, money};
use crate::consumer::GroupStats;

pub(super) fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

pub(super) fn summary_of(dir: &std::path::Path, stats: &[(&str, Arc<GroupStats>); 3]) {
    let open = |file: &str| rusqlite::Connection::open(dir.join(file)).ok();
    if let Some(db) = open("inventory.db") {
        let mut lines = Vec::new();
        if let Ok(mut stmt) = db.prepare(
            "SELECT state, count(*), sum(quantity) FROM reservations GROUP BY state ORDER BY state",
        ) {
            let rows = stmt.query_map([], |r| {
                Ok(format!(
                    "{} {} line(s), {} unit(s)",
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?
                ))
            });
            if let Ok(rows) = rows {
                lines.extend(rows.flatten());
            }
        }
        println!("  {:<21} reservations: {}", INVENTORY, lines.join("; "));
        if let Ok(emitted) = crate::store::outbox::stats(&db).and_then(|counts| {
            let total: i64 =
                db.query_row("SELECT count(*) FROM order_events_outbox", [], |r| r.get(0))?;
            Ok((total, counts.pending, counts.dead))
        }) {
            let (total, pending, dead) = emitted;
            println!(
                "  {:<21} emitted: {total} event(s), {pending} pending, {dead} dead",
                ""
            );
        }
    }
    if let Some(db) = open("notification.db") {
        let n: i64 = db
            .query_row("SELECT count(*) FROM notifications", [], |r| r.get(0))
            .unwrap_or(0);
        println!("  {:<21} {n} notification(s) sent", NOTIFICATION);
    }
    summary_of_finance(dir);
    println!();
    println!(
        "  {:<21} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "group", "delivered", "processed", "duplicate", "retried", "dead letters"
    );
    for (name, stats) in stats {
        let s = stats.snapshot();
        println!(
            "  {:<21} {:>10} {:>10} {:>10} {:>10} {:>12}",
            name, s.deliveries, s.processed, s.duplicates, s.retried, s.dead_lettered
        );
    }
}

pub(super) fn summary_of_finance(dir: &std::path::Path) {
    let Ok(db) = rusqlite::Connection::open(dir.join("finance.db")) else {
        return;
    };
    let (orders, revenue): (i64, i64) = db
        .query_row(
            "SELECT count(*), coalesce(sum(amount_minor), 0) FROM revenue",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or((0, 0));
    let (refunds, refunded): (i64, i64) = db
        .query_row(
            "SELECT count(*), coalesce(sum(amount_minor), 0) FROM refunds",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or((0, 0));
    println!(
        "  {:<21} revenue {} THB from {orders} order(s), {refunds} refund(s) of {} THB, net {} THB",
        FINANCE,
        money(revenue),
        money(refunded),
        money(revenue - refunded)
    );
}
