//! Orders waiting for a retry, and their later events held back until it is done.
//!
//! When an event fails transiently it goes back to the broker (`-NAK` with the backoff's delay),
//! and with more than one message unacknowledged per consumer the broker meanwhile delivers the
//! same order's later events. Handling them would reorder the order's events, and sending them
//! back too would use up their deliveries. So they are parked here: held unacknowledged (the
//! worker keeps them alive with in-progress acks, which cost no delivery) until the failed event,
//! the key's head, is processed or dead-lettered. Then they are ready, in stream order, and the
//! worker handles them before it pulls anything new. Other keys go on meanwhile.
//!
//! A key may wait for several heads: the messages an earlier owner of the consumer (a killed
//! process, or this one before a restart) held unacknowledged come back only after `ack_wait`,
//! and the worker finds them when it starts (`held`): its key's later messages wait for
//! every one of them, each released in turn, in stream order.
//!
//! A head that does not come back (the broker gave up on it, or it was taken elsewhere) would
//! hold its key for ever: a key whose head is overdue by more than a grace period is released.
//!
//! The waiting keys are also rows of `waiting_orders` in the group's database, written in the
//! transaction that decides them ([`save`], [`remove`]) and read when the worker starts
//! ([`load`]), so a restarted or crashed process parks the order's later events just the same;
//! the parked messages themselves are the broker's, sent back or redelivered after `ack_wait`.
//!
//! The key is what the subject ends with: the order's id.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, params};
use tokio::time::Instant;

/// Keys waiting for a retry and the messages held back for them, of one worker.
pub(in crate::consumer) struct Parking<M> {
    waiting: HashMap<String, Wait<M>>,
    ready: VecDeque<M>,
    /// When the held messages last got an in-progress ack.
    progressed: Mutex<Instant>,
}

/// A key waiting for the retry of its heads.
struct Wait<M> {
    /// The stream sequences of the messages it waits for: one that failed, or those an earlier
    /// owner held. Never empty.
    heads: BTreeSet<u64>,
    /// When the last redelivery is due.
    due: Instant,
    /// The key's later messages, by sequence.
    parked: Vec<(u64, M)>,
}

impl<M> Default for Parking<M> {
    fn default() -> Self {
        Parking {
            waiting: HashMap::new(),
            ready: VecDeque::new(),
            progressed: Mutex::new(Instant::now()),
        }
    }
}

impl<M> Wait<M> {
    /// The first message the key waits for.
    fn first(&self) -> u64 {
        *self.heads.first().expect("a wait has a head")
    }
}

impl<M> Parking<M> {
    /// Whether the message of `key` at `sequence` must wait: an earlier message of its key
    /// waits for a retry.
    pub(in crate::consumer) fn holds(&self, key: &str, sequence: u64) -> bool {
        self.waiting.get(key).is_some_and(|w| sequence > w.first())
    }

    /// Holds `message` (of `key`, at `sequence`) until its key's head is done; ready at once
    /// when its key waits for nothing. A message parked again (delivered once more while parked)
    /// replaces the older delivery.
    pub(in crate::consumer) fn park(&mut self, key: &str, sequence: u64, message: M) {
        let Some(wait) = self.waiting.get_mut(key) else {
            self.ready.push_back(message);
            return;
        };
        match wait.parked.binary_search_by_key(&sequence, |(s, _)| *s) {
            Ok(at) => wait.parked[at].1 = message,
            Err(at) => wait.parked.insert(at, (sequence, message)),
        }
    }

    /// The message of `key` at `sequence` failed transiently and is due again after `delay`: the
    /// key's later messages wait for it.
    pub(in crate::consumer) fn wait(&mut self, key: &str, sequence: u64, delay: Duration) {
        let due = Instant::now() + delay;
        let wait = self.waiting.entry(key.to_owned()).or_insert(Wait {
            heads: BTreeSet::new(),
            due,
            parked: Vec::new(),
        });
        // An earlier message failing now (it was redelivered after a lost ack) becomes the
        // first head; the later one is still waited for.
        wait.heads.insert(sequence);
        wait.due = wait.due.max(due);
    }

    /// Whether the message of `key` at `sequence` is one its key waits for.
    pub(in crate::consumer) fn is_head(&self, key: &str, sequence: u64) -> bool {
        self.waiting
            .get(key)
            .is_some_and(|w| w.heads.contains(&sequence))
    }

    /// The head `key` waits for once the message at `sequence` is done, when it waits for
    /// another one: what the waiting row says then.
    pub(in crate::consumer) fn next_head(&self, key: &str, sequence: u64) -> Option<u64> {
        let wait = self.waiting.get(key)?;
        wait.heads.iter().copied().find(|&head| head != sequence)
    }

    /// The message of `key` at `sequence` is done for good (processed or dead-lettered): when it
    /// is one of its key's heads, the parked messages up to the next head are ready (that head
    /// itself among them when it came back meanwhile), and all of them after the last.
    pub(in crate::consumer) fn settled(&mut self, key: &str, sequence: u64) {
        let Some(wait) = self.waiting.get_mut(key) else {
            return;
        };
        if !wait.heads.remove(&sequence) {
            return;
        }
        let Some(next) = wait.heads.first().copied() else {
            self.release(key);
            return;
        };
        let upto = wait.parked.partition_point(|(s, _)| *s <= next);
        self.ready
            .extend(wait.parked.drain(..upto).map(|(_, message)| message));
    }

    /// Releases the keys whose head is more than `grace` past its due time; which.
    pub(in crate::consumer) fn release_overdue(&mut self, grace: Duration) -> Vec<String> {
        let now = Instant::now();
        let overdue: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| now > w.due + grace)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &overdue {
            self.release(key);
        }
        overdue
    }

    fn release(&mut self, key: &str) {
        if let Some(wait) = self.waiting.remove(key) {
            self.ready.extend(wait.parked.into_iter().map(|(_, m)| m));
        }
    }

    /// Up to `n` released messages, in the order they became ready.
    pub(in crate::consumer) fn take_ready(&mut self, n: usize) -> Vec<M> {
        let n = n.min(self.ready.len());
        self.ready.drain(..n).collect()
    }

    /// Every message held, parked or ready, to send back when the worker stops.
    pub(in crate::consumer) fn take_all(&mut self) -> Vec<M> {
        let mut all: Vec<M> = self.ready.drain(..).collect();
        for (_, wait) in self.waiting.drain() {
            all.extend(wait.parked.into_iter().map(|(_, m)| m));
        }
        all
    }

    /// Every message held, parked or ready.
    pub(in crate::consumer) fn held(&self) -> impl Iterator<Item = &M> {
        self.ready.iter().chain(
            self.waiting
                .values()
                .flat_map(|w| w.parked.iter().map(|(_, m)| m)),
        )
    }

    /// When the held messages need their next in-progress ack.
    pub(in crate::consumer) fn progress_due(&self, interval: Duration) -> Instant {
        *self.progressed.lock().expect("not poisoned") + interval
    }

    /// Notes that the held messages just got an in-progress ack.
    pub(in crate::consumer) fn progressed(&self) {
        *self.progressed.lock().expect("not poisoned") = Instant::now();
    }
}

/// The keys of `consumer` that waited for a retry when its worker last ran: (key, head's
/// sequence, wait left until its retry is due).
pub(in crate::consumer) fn load(
    conn: &Connection,
    consumer: &str,
) -> rusqlite::Result<Vec<(String, u64, Duration)>> {
    let now = Utc::now().timestamp_millis();
    let mut stmt = conn
        .prepare("SELECT order_key, head_seq, due_at_ms FROM waiting_orders WHERE consumer = ?1")?;
    let rows = stmt.query_map([consumer], |r| {
        let due: i64 = r.get(2)?;
        let left = Duration::from_millis(due.saturating_sub(now).max(0) as u64);
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, left))
    })?;
    rows.collect()
}

/// Notes that `key` of `consumer` waits for its message at `sequence`, due after `delay`; an
/// earlier head stays the head.
pub(in crate::consumer) fn save(
    conn: &Connection,
    consumer: &str,
    key: &str,
    sequence: u64,
    delay: Duration,
) -> rusqlite::Result<()> {
    let due = Utc::now().timestamp_millis() + delay.as_millis() as i64;
    conn.execute(
        "INSERT INTO waiting_orders (consumer, order_key, head_seq, due_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (consumer, order_key) DO UPDATE
             SET head_seq = min(head_seq, excluded.head_seq), due_at_ms = excluded.due_at_ms",
        params![consumer, key, sequence as i64, due],
    )?;
    Ok(())
}

/// Notes that `key` of `consumer` waits for its message at `sequence` now, the one before it
/// done; a key not noted as waiting (its head found at start, see `held`) stays so.
pub(in crate::consumer) fn replace_head(
    conn: &Connection,
    consumer: &str,
    key: &str,
    sequence: u64,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE waiting_orders SET head_seq = ?3 WHERE consumer = ?1 AND order_key = ?2",
        params![consumer, key, sequence as i64],
    )?;
    Ok(())
}

/// Notes that `key` of `consumer` waits no more.
pub(in crate::consumer) fn remove(
    conn: &Connection,
    consumer: &str,
    key: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM waiting_orders WHERE consumer = ?1 AND order_key = ?2",
        params![consumer, key],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::from_millis(10);

    #[test]
    fn later_messages_of_a_failed_key_wait_for_it_and_others_do_not() {
        let mut p = Parking::default();
        p.wait("a", 5, SOON);
        assert!(p.holds("a", 6));
        assert!(
            !p.holds("a", 5),
            "the head itself is processed when it comes back"
        );
        assert!(!p.holds("a", 4), "an earlier message is not held back");
        assert!(!p.holds("b", 7));
        p.park("a", 9, "a9");
        p.park("a", 7, "a7");
        p.park("a", 7, "a7 again");
        assert!(p.take_ready(10).is_empty());
        assert_eq!(p.held().count(), 2);
        p.settled("a", 7);
        assert!(
            p.take_ready(10).is_empty(),
            "only the head releases its key"
        );
        p.wait("a", 5, SOON);
        p.settled("a", 5);
        assert_eq!(p.take_ready(10), ["a7 again", "a9"]);
        assert!(!p.holds("a", 6));
    }

    #[test]
    fn a_key_waiting_for_several_heads_releases_its_messages_in_turn() {
        let mut p = Parking::default();
        // An earlier owner left 3 and 6 of key a unacknowledged.
        p.wait("a", 3, SOON);
        p.wait("a", 6, SOON);
        assert!(!p.holds("a", 3));
        assert!(p.holds("a", 6), "a later head waits for the first");
        p.park("a", 8, "a8");
        p.park("a", 6, "a6");
        p.park("a", 5, "a5");
        assert_eq!(p.next_head("a", 3), Some(6));
        p.settled("a", 3);
        assert_eq!(
            p.take_ready(10),
            ["a5", "a6"],
            "up to the next head, which came back"
        );
        assert!(p.holds("a", 8));
        assert_eq!(p.next_head("a", 6), None);
        p.settled("a", 6);
        assert_eq!(p.take_ready(10), ["a8"]);
        assert!(!p.holds("a", 9));
    }

    #[test]
    fn a_message_of_a_key_that_waits_for_nothing_is_ready_at_once() {
        let mut p = Parking::default();
        p.park("b", 3, "b3");
        assert_eq!(p.take_ready(1), ["b3"]);
    }

    #[test]
    fn an_earlier_failure_becomes_the_head() {
        let mut p = Parking::default();
        p.wait("a", 5, SOON);
        p.wait("a", 3, SOON);
        p.park("a", 4, "a4");
        p.settled("a", 5);
        assert!(p.take_ready(10).is_empty());
        p.settled("a", 3);
        assert_eq!(p.take_ready(10), ["a4"]);
    }

    #[test]
    fn a_head_that_never_comes_back_releases_its_key_after_the_grace() {
        let mut p = Parking::default();
        p.wait("a", 1, Duration::ZERO);
        p.park("a", 2, "a2");
        p.wait("b", 1, Duration::from_secs(60));
        p.park("b", 2, "b2");
        assert!(p.release_overdue(Duration::from_secs(60)).is_empty());
        std::thread::sleep(SOON);
        assert_eq!(p.release_overdue(Duration::from_millis(1)), ["a"]);
        assert_eq!(p.take_ready(10), ["a2"]);
        assert_eq!(p.take_all(), ["b2"]);
        assert!(!p.holds("b", 2));
    }

    #[test]
    fn waiting_keys_outlive_the_worker_in_the_database() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE waiting_orders (consumer TEXT, order_key TEXT, head_seq INTEGER,
                 due_at_ms INTEGER, PRIMARY KEY (consumer, order_key))",
        )
        .unwrap();
        save(&conn, "g", "a", 7, Duration::from_secs(60)).unwrap();
        save(&conn, "g", "a", 9, Duration::from_secs(60)).unwrap();
        save(&conn, "g", "b", 3, Duration::ZERO).unwrap();
        save(&conn, "other", "c", 1, Duration::ZERO).unwrap();
        remove(&conn, "g", "b").unwrap();
        let loaded = load(&conn, "g").unwrap();
        assert_eq!(loaded.len(), 1);
        let (key, head, left) = &loaded[0];
        assert_eq!((key.as_str(), *head), ("a", 7), "the earlier head stays");
        assert!(*left > Duration::from_secs(50));
    }
}
