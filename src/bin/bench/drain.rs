//! Phase 6: how fast the relay drains a backlog of pending outbox rows.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use order_service::progress::Progress;
use rusqlite::Connection;

use crate::outbox::count_pending;
use crate::processes::stream_messages;
use crate::report::Drain;
use crate::{DRAIN_CAP, Res};

/// Times the relay from its first message stored in JetStream to an empty outbox. Progress is
/// watched on the broker (one stream listing every few milliseconds) rather than by counting
/// rows in SQLite, which would take CPU from the service being measured.
///
/// `base` is the streams' message count before the service started, `total` the pending rows.
/// The rows already stored when the first is seen are left out of the rate. The events stored
/// are counted in `stored_events` as they are seen.
pub async fn drain(
    js: &jetstream::Context,
    db: &Path,
    base: u64,
    total: u64,
    stored_events: &Progress,
) -> Res<Drain> {
    let start_wait = Instant::now() + Duration::from_secs(30);
    let (began, first) = loop {
        let stored = stream_messages(js).await? - base;
        if stored > 0 {
            break (Instant::now(), stored.min(total));
        }
        if Instant::now() > start_wait {
            return Err("the relay published nothing within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let cap = began + DRAIN_CAP;
    let conn = Connection::open(db)?;
    let mut polls = 0_u32;
    loop {
        let stored = stream_messages(js).await? - base;
        stored_events.set_done(stored.min(total));
        if stored >= total || Instant::now() >= cap {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        polls += 1;
        // The broker's count alone would miss a drain that published some rows twice.
        if polls.is_multiple_of(10) && count_pending(&conn)? == 0 {
            break;
        }
    }
    let stored_at = began.elapsed();
    let stored = stream_messages(js).await? - base;
    stored_events.set_done(stored.min(total));
    // Every event is stored; the outbox is drained once the last marks are committed.
    while count_pending(&conn)? > 0 && Instant::now() < cap {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = began.elapsed().as_secs_f64();
    let left = count_pending(&conn)?;
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!(
            "bench: drain: {stored} of {total} stored after {stored_at:?}, {left} left after {seconds:.1} s"
        );
    }
    if left > 0 {
        eprintln!("bench: drain cut short after {DRAIN_CAP:?}, {left} rows left");
    }
    let rows = (total - left) as usize;
    Ok(Drain {
        rows,
        events_per_s: (rows as u64).saturating_sub(first) as f64 / seconds,
        seconds,
    })
}
