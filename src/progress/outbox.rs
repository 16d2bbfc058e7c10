//! What `outbox verify` and `outbox repair` show while they run, told by the relay as an
//! [`Observer`]. A verify counts streams checked of the streams the outbox recorded rows in, and
//! says what was found so far; a repair counts what it put right (events published again, found
//! held or given up, copies deleted) of what its checks found, a total that grows as streams are
//! checked, and says how many streams were checked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Progress, lock};
use crate::relay::repair::{Observer, StreamCheck};

/// The progress of a verify or a repair; hand it to [`crate::relay::Relay::observed_by`], and
/// [`OutboxProgress::finish`] it before printing the result.
pub struct OutboxProgress {
    progress: Progress,
    repairing: bool,
    streams: AtomicUsize,
    checked: AtomicUsize,
    missing: AtomicUsize,
    copies: AtomicUsize,
    /// Per stream being repaired: what its check found to put right, and how much of it is
    /// counted already (a count never goes back).
    work: Mutex<HashMap<String, Work>>,
}

#[derive(Debug, Clone, Copy)]
struct Work {
    found: usize,
    counted: usize,
}

impl OutboxProgress {
    /// For `outbox verify`.
    pub fn verify() -> OutboxProgress {
        OutboxProgress::new(Progress::count("outbox verify", "streams", None), false)
    }

    /// For `outbox repair`.
    pub fn repair() -> OutboxProgress {
        OutboxProgress::new(Progress::count("outbox repair", "events", Some(0)), true)
    }

    /// For a check labelled `label` (the bench's runs of verify).
    pub fn verify_labelled(label: impl Into<String>) -> OutboxProgress {
        OutboxProgress::new(Progress::count(label, "streams", None), false)
    }

    fn new(progress: Progress, repairing: bool) -> OutboxProgress {
        OutboxProgress {
            progress,
            repairing,
            streams: AtomicUsize::new(0),
            checked: AtomicUsize::new(0),
            missing: AtomicUsize::new(0),
            copies: AtomicUsize::new(0),
            work: Mutex::new(HashMap::new()),
        }
    }

    /// Shows the last state and stops; see [`Progress::finish`].
    pub fn finish(&self) {
        self.progress.finish();
    }

    fn note(&self) {
        let (checked, streams) = (
            self.checked.load(Ordering::Relaxed),
            self.streams.load(Ordering::Relaxed),
        );
        let (missing, copies) = (
            self.missing.load(Ordering::Relaxed),
            self.copies.load(Ordering::Relaxed),
        );
        let note = if self.repairing {
            format!("streams {checked}/{streams} checked")
        } else if missing + copies > 0 {
            format!("{missing} missing, {copies} stored twice")
        } else {
            String::new()
        };
        self.progress.note(note);
    }
}

impl Observer for OutboxProgress {
    fn streams(&self, count: usize) {
        self.streams.store(count, Ordering::Relaxed);
        if !self.repairing {
            self.progress.set_total(count as u64);
        }
        self.note();
    }

    fn checked(&self, check: &StreamCheck) {
        self.checked.fetch_add(1, Ordering::Relaxed);
        self.missing
            .fetch_add(check.missing.len(), Ordering::Relaxed);
        self.copies.fetch_add(check.copies.len(), Ordering::Relaxed);
        if self.repairing {
            let deletes = check.copies.iter().filter(|c| c.delete.is_some()).count();
            let found = check.missing.len() + deletes;
            lock(&self.work).insert(check.stream.clone(), Work { found, counted: 0 });
            self.progress.inc_total(found as u64);
        } else {
            self.progress.inc(1);
        }
        self.note();
    }

    fn putting_back(&self, stream: &str, done: usize) {
        let mut work = lock(&self.work);
        let Some(work) = work.get_mut(stream) else {
            return;
        };
        // Told after each batch, in order; the last word is the repair's own count.
        let done = done.min(work.found);
        if done > work.counted {
            self.progress.inc((done - work.counted) as u64);
            work.counted = done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{Shared, View};
    use crate::relay::repair::Copy;
    use crate::store::acknowledged::Acknowledged;

    fn check(stream: &str, missing: usize, copies: usize) -> StreamCheck {
        StreamCheck {
            stream: stream.to_owned(),
            acknowledged: 100,
            missing: (0..missing as i64)
                .map(|id| Acknowledged {
                    id,
                    event_id: id.to_string(),
                    sequence: id as u64 + 1,
                    published_at: chrono::Utc::now(),
                })
                .collect(),
            copies: (0..copies as i64)
                .map(|id| Copy {
                    id,
                    keep: 1,
                    delete: Some(2),
                })
                .collect(),
            stored: Vec::new(),
            foreign: 0,
            findings: Vec::new(),
            error: None,
        }
    }

    fn quiet(unit: &'static str, total: Option<u64>, repairing: bool) -> OutboxProgress {
        let shared = Shared::new("outbox".into(), unit, None, total);
        let progress = Progress::with_view(shared, View::lines(Box::new(std::io::sink())));
        OutboxProgress::new(progress, repairing)
    }

    fn state(progress: &OutboxProgress) -> (u64, Option<u64>, String) {
        let shared = &progress.progress.shared;
        (
            shared.done.load(Ordering::Relaxed),
            shared.total(),
            lock(&shared.note).clone(),
        )
    }

    #[test]
    fn a_verify_counts_streams_and_says_what_it_found() {
        let progress = quiet("streams", None, false);
        progress.streams(3);
        progress.checked(&check("A", 0, 0));
        assert_eq!(state(&progress), (1, Some(3), String::new()));
        progress.checked(&check("B", 5, 2));
        assert_eq!(
            state(&progress),
            (2, Some(3), "5 missing, 2 stored twice".into())
        );
    }

    #[test]
    fn a_repair_counts_what_it_put_right_of_what_the_checks_found() {
        let progress = quiet("events", Some(0), true);
        progress.streams(2);
        progress.checked(&check("A", 1_000, 0));
        progress.checked(&check("B", 0, 4));
        assert_eq!(
            state(&progress),
            (0, Some(1_004), "streams 2/2 checked".into())
        );
        progress.putting_back("B", 4);
        progress.putting_back("A", 400);
        progress.putting_back("A", 300);
        assert_eq!(state(&progress).0, 404, "a count never goes back");
        progress.putting_back("A", 5_000);
        assert_eq!(state(&progress).0, 1_004, "nor past what was found");
    }

    #[test]
    fn a_copy_with_nothing_to_delete_is_no_work() {
        let progress = quiet("events", Some(0), true);
        let mut found = check("A", 2, 2);
        found.copies[1].delete = None;
        progress.checked(&found);
        assert_eq!(state(&progress).1, Some(3));
    }
}
