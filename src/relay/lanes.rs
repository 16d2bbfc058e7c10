//! The relay's lanes: one queue of due rows per stream, each sending one batch at a time.
//!
//! This is the relay's scheduling without any IO, so it can be tested without NATS. Rows go into
//! the lane of their stream in commit order; an idle lane hands out its next batch (up to the
//! batch size, in commit order) and is busy until that batch's outcome comes back. Because a
//! lane has one batch in flight, and a batch is stored whole and in order, each stream stores its
//! rows in commit order, so per key and stream too.
//!
//! - A lane whose batch failed transiently gets the unsent rows back at its front and waits out
//!   its own back-off, while the other lanes go on.
//! - A key whose row failed permanently (it now waits for a retry, or is dead) is stopped: its
//!   queued rows leave every lane and rows of it read later are refused, so nothing of that key
//!   overtakes the failed row in any stream. Rows of it already in flight are not recalled.
//! - A lane remembers whether its stream takes atomic batches; one that refused them is sent row
//!   by row, and tries a batch again after a back-off ([`BATCHES_AGAIN`], doubling while the
//!   stream keeps refusing): a stream whose `allow_atomic` comes back returns to batches, and one
//!   that keeps it off costs one refused batch per back-off, not one per batch.
//!
//! - Lanes remember when each row was first handed out, until it is acknowledged: a row sent
//!   again long after its first try may be stored already, beyond the stream's duplicate window
//!   (see [`Tries`]).
//!
//! Queues last for one relay pass ([`Lanes::clear`]); back-off, batch support and first tries
//! outlive it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::backoff::{Backoff, Waits};
use crate::store::outbox::Due;

/// How long a stream that refused atomic batches is sent row by row before a batch is tried
/// again: from 1 s, doubling on each refusal, up to 5 minutes.
pub const BATCHES_AGAIN: Backoff = Backoff::exponential(
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(300),
);

/// How a stream's rows are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As atomic batches.
    Batches,
    /// Row by row: the stream refused atomic batches (until a batch is tried again).
    OneByOne,
}

/// One batch handed out by [`Lanes::take_ready`].
#[derive(Debug)]
pub struct Batch {
    /// The stream.
    pub stream: String,
    /// Its rows, in commit order.
    pub rows: Vec<Due>,
    /// How to send them.
    pub mode: Mode,
}

/// What the lanes know of a batch's earlier tries ([`Lanes::tries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tries {
    /// For each row, when these lanes first handed it out, if they did before: its outcome then
    /// was not an acknowledgement, so it may be stored already.
    pub first: Vec<Option<Instant>>,
    /// When these lanes began: a row committed before may have been sent by an earlier relay.
    pub since: DateTime<Utc>,
}

#[derive(Debug)]
struct Lane {
    queue: VecDeque<Due>,
    busy: bool,
    mode: Mode,
    retry_at: Option<Instant>,
    waits: Waits,
    /// When a lane sent row by row tries a batch again.
    batches_again_at: Option<Instant>,
    refusals: Waits,
}

/// Every stream's lane; see the module's documentation.
#[derive(Debug)]
pub struct Lanes {
    lanes: BTreeMap<String, Lane>,
    stopped: HashSet<String>,
    queued: usize,
    batch_size: usize,
    backoff: Backoff,
    /// When each row handed out and not yet acknowledged was first handed out, by id.
    tried: HashMap<i64, Instant>,
    since: DateTime<Utc>,
}

impl Lanes {
    /// Lanes handing out batches of up to `batch_size` rows, backing off after transient
    /// failures by `backoff`.
    pub fn new(batch_size: usize, backoff: Backoff) -> Lanes {
        Lanes {
            lanes: BTreeMap::new(),
            stopped: HashSet::new(),
            queued: 0,
            batch_size: batch_size.max(1),
            backoff,
            tried: HashMap::new(),
            since: Utc::now(),
        }
    }

    fn lane(&mut self, stream: &str) -> &mut Lane {
        if !self.lanes.contains_key(stream) {
            let lane = Lane {
                queue: VecDeque::new(),
                busy: false,
                mode: Mode::Batches,
                retry_at: None,
                waits: self.backoff.waits(),
                batches_again_at: None,
                refusals: BATCHES_AGAIN.waits(),
            };
            self.lanes.insert(stream.to_owned(), lane);
        }
        self.lanes.get_mut(stream).expect("inserted above")
    }

    /// Queues `row` at the back of `stream`'s lane; false (and not queued) when its key is
    /// stopped.
    pub fn push(&mut self, stream: &str, row: Due) -> bool {
        if self.stopped.contains(&row.key) {
            return false;
        }
        self.lane(stream).queue.push_back(row);
        self.queued += 1;
        true
    }

    /// Rows queued in all lanes, not counting those in flight.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The next batch of every idle lane that has rows and is not backing off at `now`; those
    /// lanes are busy until [`Lanes::finish`].
    pub fn take_ready(&mut self, now: Instant) -> Vec<Batch> {
        let mut batches = Vec::new();
        for (stream, lane) in &mut self.lanes {
            if lane.busy || lane.queue.is_empty() || lane.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            let take = lane.queue.len().min(self.batch_size);
            let rows: Vec<Due> = lane.queue.drain(..take).collect();
            self.queued -= rows.len();
            lane.busy = true;
            // The try stays due until its outcome says whether the stream takes batches.
            let try_batches = lane.batches_again_at.is_some_and(|at| at <= now);
            batches.push(Batch {
                stream: stream.clone(),
                rows,
                mode: if try_batches {
                    Mode::Batches
                } else {
                    lane.mode
                },
            });
        }
        batches
    }

    /// `stream`'s batch is back. `unsent` (rows that were not stored, in commit order) goes back
    /// to the lane's front unless its key is stopped; `transient` starts (or lengthens) the lane's
    /// back-off, a clean batch ends it. Returns how many unsent rows were dropped as stopped.
    pub fn finish(
        &mut self,
        stream: &str,
        unsent: Vec<Due>,
        transient: bool,
        now: Instant,
    ) -> usize {
        let stopped = &self.stopped;
        let (keep, dropped): (Vec<Due>, Vec<Due>) = unsent
            .into_iter()
            .partition(|row| !stopped.contains(&row.key));
        let lane = self.lane(stream);
        lane.busy = false;
        for row in keep.iter().rev() {
            lane.queue.push_front(row.clone());
        }
        if transient {
            lane.retry_at = Some(now + lane.waits.next_wait());
        } else {
            lane.retry_at = None;
            lane.waits.reset();
        }
        self.queued += keep.len();
        dropped.len()
    }

    /// `batch` was not sent (its stream is paused): its rows go back to the lane's front, which
    /// hands them out again at `until`, without counting a failure.
    pub fn not_sent(&mut self, batch: Batch, until: Instant) {
        let stopped = &self.stopped;
        let keep: Vec<Due> = batch
            .rows
            .into_iter()
            .filter(|row| !stopped.contains(&row.key))
            .collect();
        let lane = self.lane(&batch.stream);
        lane.busy = false;
        lane.retry_at = Some(until);
        for row in keep.iter().rev() {
            lane.queue.push_front(row.clone());
        }
        self.queued += keep.len();
    }

    /// `stream` refused an atomic batch at `now`: its rows go one by one until a batch is tried
    /// again, after a back-off that doubles with each refusal in a row.
    pub fn one_by_one(&mut self, stream: &str, now: Instant) {
        let lane = self.lane(stream);
        lane.mode = Mode::OneByOne;
        lane.batches_again_at = Some(now + lane.refusals.next_wait());
    }

    /// `stream` took (or judged the contents of) an atomic batch: its rows go as batches again.
    pub fn takes_batches(&mut self, stream: &str) {
        let lane = self.lane(stream);
        lane.mode = Mode::Batches;
        lane.batches_again_at = None;
        lane.refusals.reset();
    }

    /// The earlier tries of `rows`, about to be sent at `now`; rows not tried before are
    /// remembered as first tried now.
    pub fn tries(&mut self, rows: &[Due], now: Instant) -> Tries {
        let first = rows
            .iter()
            .map(|row| match self.tried.get(&row.id) {
                Some(at) => Some(*at),
                None => {
                    self.tried.insert(row.id, now);
                    None
                }
            })
            .collect();
        Tries {
            first,
            since: self.since,
        }
    }

    /// Row `id` is acknowledged: its first try is forgotten.
    pub fn acknowledged(&mut self, id: i64) {
        self.tried.remove(&id);
    }

    /// The streams sent row by row.
    pub fn streams_one_by_one(&self) -> Vec<String> {
        self.lanes
            .iter()
            .filter(|(_, lane)| lane.mode == Mode::OneByOne)
            .map(|(stream, _)| stream.clone())
            .collect()
    }

    /// Stops `key` for the rest of the pass: its queued rows leave every lane; returns how many.
    pub fn stop_key(&mut self, key: &str) -> usize {
        if !self.stopped.insert(key.to_owned()) {
            return 0;
        }
        let mut dropped = 0;
        for lane in self.lanes.values_mut() {
            let before = lane.queue.len();
            lane.queue.retain(|row| row.key != key);
            dropped += before - lane.queue.len();
        }
        self.queued -= dropped;
        dropped
    }

    /// When the first lane that has rows but backs off may send again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.lanes
            .values()
            .filter(|lane| !lane.busy && !lane.queue.is_empty())
            .filter_map(|lane| lane.retry_at)
            .min()
    }

    /// Ends a pass: queues and stopped keys are dropped (those rows are still pending and are read
    /// again); back-offs and modes stay.
    pub fn clear(&mut self) {
        for lane in self.lanes.values_mut() {
            lane.queue.clear();
            lane.busy = false;
        }
        self.stopped.clear();
        self.queued = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::time::Duration;

    fn row(id: i64, key: &str) -> Due {
        Due {
            id,
            event_id: format!("e{id}"),
            topic: "order.created".into(),
            key: key.into(),
            payload: "{}".into(),
            headers: vec![],
            attempts: 0,
            created_at: Utc::now(),
        }
    }

    fn lanes(batch: usize) -> Lanes {
        Lanes::new(
            batch,
            Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2)),
        )
    }

    fn ids(rows: &[Due]) -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    }

    #[test]
    fn each_lane_hands_out_one_batch_in_commit_order_at_a_time() {
        let mut l = lanes(2);
        for (id, stream) in [(1, "A"), (2, "B"), (3, "A"), (4, "A"), (5, "B")] {
            assert!(l.push(stream, row(id, &format!("k{id}"))));
        }
        let now = Instant::now();
        let batches = l.take_ready(now);
        let got: Vec<(&str, Vec<i64>)> = batches
            .iter()
            .map(|b| (b.stream.as_str(), ids(&b.rows)))
            .collect();
        assert_eq!(got, vec![("A", vec![1, 3]), ("B", vec![2, 5])]);
        assert!(
            l.take_ready(now).is_empty(),
            "a busy lane hands out nothing"
        );
        l.finish("A", vec![], false, now);
        let next = l.take_ready(now);
        assert_eq!(ids(&next[0].rows), vec![4]);
        assert_eq!(l.queued(), 0);
    }

    #[test]
    fn a_busy_key_in_one_stream_does_not_hold_back_another_stream_or_other_keys() {
        let mut l = lanes(3);
        for id in 1..=10 {
            l.push("STATS", row(id, "customer"));
        }
        l.push("CREATED", row(11, "order"));
        l.push("STATS", row(12, "other-customer"));
        let batches = l.take_ready(Instant::now());
        assert_eq!(batches.len(), 2);
        assert_eq!(ids(&batches[0].rows), vec![11]);
        assert_eq!(
            ids(&batches[1].rows),
            vec![1, 2, 3],
            "a batch takes many rows of one key"
        );
    }

    #[test]
    fn a_transient_failure_puts_the_rows_back_in_front_and_backs_off_that_lane_alone() {
        let mut l = lanes(2);
        for id in 1..=3 {
            l.push("A", row(id, "k"));
        }
        l.push("B", row(4, "j"));
        let now = Instant::now();
        let mut batches = l.take_ready(now);
        let a = batches.remove(0);
        l.finish("A", a.rows, true, now);
        assert_eq!(l.next_retry().map(|t| t > now), Some(true));
        l.finish("B", vec![], false, now);
        l.push("B", row(5, "j"));
        let again = l.take_ready(now);
        assert_eq!(again.len(), 1, "B goes on while A backs off");
        assert_eq!(again[0].stream, "B");
        let later = now + Duration::from_secs(5);
        let retried = l.take_ready(later);
        assert_eq!(
            ids(&retried[0].rows),
            vec![1, 2],
            "the same rows again, in order"
        );
    }

    #[test]
    fn a_batch_not_sent_to_a_paused_stream_comes_back_whole_at_its_time_without_a_back_off() {
        let mut l = lanes(2);
        for id in 1..=3 {
            l.push("A", row(id, "k"));
        }
        let now = Instant::now();
        let a = l.take_ready(now).remove(0);
        let until = now + Duration::from_millis(100);
        l.not_sent(a, until);
        assert_eq!(l.queued(), 3);
        assert_eq!(l.next_retry(), Some(until));
        assert!(l.take_ready(now).is_empty(), "nothing before its time");
        let again = l.take_ready(until);
        assert_eq!(ids(&again[0].rows), vec![1, 2], "the same rows, in order");
        // No failure was counted: a clean batch after it does not start from a longer wait.
        l.finish("A", again[0].rows.clone(), true, until);
        let wait = l.next_retry().expect("backing off") - until;
        assert!(
            wait <= Duration::from_millis(100),
            "the first back-off (at most 100 ms), as if nothing had failed before: {wait:?}"
        );
    }

    #[test]
    fn a_stopped_key_leaves_every_lane_and_is_refused_later() {
        let mut l = lanes(10);
        l.push("A", row(1, "k"));
        l.push("B", row(2, "k"));
        l.push("B", row(3, "j"));
        assert_eq!(l.stop_key("k"), 2);
        assert_eq!(l.queued(), 1);
        assert!(!l.push("A", row(4, "k")));
        let batches = l.take_ready(Instant::now());
        assert_eq!(ids(&batches[0].rows), vec![3]);
        assert_eq!(
            l.finish("B", vec![row(5, "k"), row(6, "j")], false, Instant::now()),
            1,
            "unsent rows of a stopped key are dropped"
        );
        assert_eq!(l.queued(), 1);
    }

    #[test]
    fn clearing_ends_the_pass_but_keeps_back_off_and_mode() {
        let mut l = lanes(10);
        l.push("A", row(1, "k"));
        let now = Instant::now();
        l.one_by_one("A", now);
        let b = l.take_ready(now).remove(0);
        assert_eq!(b.mode, Mode::OneByOne);
        l.finish("A", b.rows, true, now);
        l.stop_key("x");
        l.clear();
        assert_eq!(l.queued(), 0);
        assert!(l.push("A", row(2, "x")), "stopped keys are forgotten");
        assert!(
            l.next_retry().is_some_and(|t| t > now),
            "the back-off stays"
        );
        assert_eq!(l.streams_one_by_one(), vec!["A".to_string()]);
    }

    #[test]
    fn a_stream_sent_one_by_one_tries_batches_again_after_a_while() {
        let mut l = lanes(10);
        let now = Instant::now();
        l.one_by_one("A", now);
        l.push("A", row(1, "k"));
        let b = l.take_ready(now).remove(0);
        assert_eq!(b.mode, Mode::OneByOne, "right after a refusal, no batch");
        l.finish("A", vec![], false, now);
        l.push("A", row(2, "k"));
        let later = now + Duration::from_secs(3600);
        let b = l.take_ready(later).remove(0);
        assert_eq!(
            b.mode,
            Mode::Batches,
            "an hour later, batches are tried again"
        );

        // Refused again: one by one, for longer than the first time (whose wait was 0.5 to 1 s,
        // jitter included; this one is 1 to 2 s).
        l.one_by_one("A", later);
        l.finish("A", b.rows, false, later);
        let b = l.take_ready(later + Duration::from_millis(900)).remove(0);
        assert_eq!(b.mode, Mode::OneByOne, "the back-off doubled");
        assert_eq!(l.streams_one_by_one(), vec!["A".to_string()]);
        l.finish("A", b.rows, false, later);
        let b = l.take_ready(later + Duration::from_secs(2)).remove(0);
        assert_eq!(b.mode, Mode::Batches);

        // Taken: batches from now on, and a later refusal starts from the shortest back-off.
        l.takes_batches("A");
        l.finish("A", b.rows, false, later);
        assert!(l.streams_one_by_one().is_empty());
        let b = l.take_ready(later).remove(0);
        assert_eq!(b.mode, Mode::Batches);
        l.one_by_one("A", later);
        l.finish("A", b.rows, false, later);
        let b = l.take_ready(later + Duration::from_millis(1001)).remove(0);
        assert_eq!(b.mode, Mode::Batches);
    }

    #[test]
    fn a_row_handed_out_again_carries_its_first_try_until_acknowledged() {
        let mut l = lanes(10);
        let first = Instant::now();
        l.push("A", row(1, "k"));
        l.push("A", row(2, "j"));
        let b = l.take_ready(first).remove(0);
        let tries = l.tries(&b.rows, first);
        assert_eq!(tries.first, vec![None, None]);
        assert!(tries.since <= Utc::now());
        l.finish("A", b.rows, true, first);
        let later = first + Duration::from_secs(10);
        let b = l.take_ready(later).remove(0);
        assert_eq!(
            l.tries(&b.rows, later).first,
            vec![Some(first), Some(first)]
        );
        l.acknowledged(1);
        l.finish("A", vec![row(2, "j")], true, later);
        l.clear();
        l.push("A", row(1, "k"));
        l.push("A", row(2, "j"));
        let even_later = later + Duration::from_secs(10);
        let b = l.take_ready(even_later).remove(0);
        assert_eq!(
            l.tries(&b.rows, even_later).first,
            vec![None, Some(first)],
            "first tries outlive a pass"
        );
    }
}
