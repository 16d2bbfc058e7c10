//! Publish progress over the run, sampled from the SQLite file every [`EVERY`]: how many outbox
//! rows are pending and how many published. The publish stall is the longest time during which
//! some row was pending and the published count did not grow (commit → PubAck made no
//! progress), whether the service was down, cut off, or waiting for a stream's quorum.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::watch;

/// How often the outbox is sampled.
const EVERY: Duration = Duration::from_millis(500);

/// The sampler, running until [`stop`](Monitor::stop).
pub struct Monitor {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Progress>,
}

/// What the samples showed.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// The longest time with a pending row and no new published one.
    pub longest_stall: Duration,
    /// When that stall began, from the start of the load.
    pub stall_from: Duration,
    /// The most rows pending at once.
    pub most_pending: i64,
}

impl Monitor {
    /// Starts sampling `db`; times count from `start`.
    pub fn start(db: PathBuf, start: Instant) -> Monitor {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut progress = Progress::default();
            // (published count, since when it has not grown while rows were pending)
            let mut stalled: Option<(i64, Duration)> = None;
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return progress,
                }
                let db = db.clone();
                let Ok(Some((pending, published))) =
                    tokio::task::spawn_blocking(move || sample(&db)).await
                else {
                    continue;
                };
                let now = start.elapsed();
                progress.most_pending = progress.most_pending.max(pending);
                stalled = match stalled {
                    Some((count, since)) if pending > 0 && published == count => {
                        if now - since > progress.longest_stall {
                            progress.longest_stall = now - since;
                            progress.stall_from = since;
                        }
                        Some((count, since))
                    }
                    _ if pending > 0 => Some((published, now)),
                    _ => None,
                };
            }
        });
        Monitor { stop, task }
    }

    /// Stops sampling; what it saw.
    pub async fn stop(self) -> Progress {
        let _ = self.stop.send(true);
        self.task.await.expect("the monitor ran")
    }
}

/// (pending, published) now, or `None` when the file cannot be read at this moment.
fn sample(db: &std::path::Path) -> Option<(i64, i64)> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(Duration::from_secs(1)).ok()?;
    // Each count reads an index only (`outbox_pending`, `outbox_by_status`), never the payloads.
    let count = |status: &str| -> Option<i64> {
        conn.query_row(
            "SELECT count(*) FROM order_events_outbox WHERE status = ?1",
            [status],
            |r| r.get(0),
        )
        .ok()
    };
    Some((count("pending")?, count("published")?))
}
