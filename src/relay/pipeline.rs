//! The relay's pipelined pass: a window of publishes in flight across batches.
//!
//! A pass reads due rows in commit order from a cursor (the highest id it has read), publishes
//! them with up to `window` PubAcks outstanding, reads the next batch while acks arrive, and
//! marks what was acknowledged in batch transactions, one in flight at a time, while publishing
//! goes on. It ends when nothing is due and nothing is in flight, at its first failure, on
//! shutdown, or after [`PASS_MAX`] (so that rows behind the cursor, requeued or come due for a
//! retry, are read by the next pass, which starts from the beginning).
//!
//! # Why the window keeps per-key order
//!
//! The window is across keys, never within one: a key has at most one row in flight. A row read
//! while an earlier row of its key is in flight waits in that key's queue and is published only
//! after the earlier row's PubAck, so per key the broker stores rows in commit order, as the
//! one-at-a-time relay did. When a row fails, its key's queued rows are dropped (not published,
//! not marked) and any later row of that key read during the rest of the pass is skipped, so
//! nothing of the key overtakes the failed row; the next pass reads them again after it, in
//! order (`outbox::due` holds a key back while its earliest row waits for a retry or is dead).
//! A row is marked published only with its own PubAck; if marking fails, the rows go again and
//! the broker drops them as duplicates by `Nats-Msg-Id`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;

use super::{Outcome, Relay};
use crate::bus::{PublishError, Published};
use crate::store::StoreError;
use crate::store::outbox::{self, Due};

/// The longest a pass reads on before it lets the next one start again from the first due row
/// (rows behind its cursor that came due for a retry meanwhile wait for that); at most the
/// polling interval. Ending a pass costs draining the window once: about one PubAck's latency.
const PASS_MAX: Duration = Duration::from_secs(5);

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a pass ended.
pub(super) enum PassEnd {
    /// Shutdown was asked for; everything in flight was finished and recorded.
    Shutdown,
    /// Reading or marking failed.
    Failed(StoreError),
    /// Nothing more is due now.
    Idle,
    /// The pass ended early (a failure or its age); start the next at once, or after the
    /// broker back-off when `outcome.transient > 0`.
    Again(Outcome),
}

impl Relay {
    /// One pipelined pass; see the module's documentation.
    pub(super) async fn pass<S: Future<Output = ()>>(
        &self,
        shutdown: &mut Pin<&mut S>,
        committed: &Notify,
    ) -> PassEnd {
        let started = Instant::now();
        let max_age = PASS_MAX.min(self.config.polling_interval);
        let window = self.config.window.max(1);
        let batch = self.config.batch_size;
        // One "now" for every read of the pass, a millisecond early (timestamps are stored in
        // milliseconds): a row behind the cursor that comes due for a retry, or is requeued,
        // during the pass keeps holding back the later rows of its key until the next pass,
        // which reads it first. A moving "now" would let those later rows be read past the
        // cursor and published ahead of it.
        let now = Utc::now() - chrono::Duration::milliseconds(1);

        let mut outcome = Outcome::default();
        let mut cursor = 0_i64;
        // Nothing more is due past the cursor until a commit says otherwise.
        let mut exhausted = false;
        // No more reads this pass (a failure, shutdown or the pass's age).
        let mut done_reading = false;
        let mut stopping = false;
        let mut error = None;

        let mut reading: Option<Boxed<'_, Result<Vec<Due>, StoreError>>> = None;
        let mut marking: Option<Boxed<'_, Result<(), StoreError>>> = None;
        let mut in_flight = FuturesUnordered::new();
        // A key is here while one of its rows is in flight; its later rows wait in the queue.
        let mut waiting: HashMap<String, VecDeque<Due>> = HashMap::new();
        let mut queued = 0_usize;
        // Keys whose row failed this pass: their later rows are not published in this pass.
        let mut stopped: HashSet<String> = HashSet::new();
        let mut records = Vec::new();

        loop {
            if started.elapsed() >= max_age {
                done_reading = true;
            }
            if reading.is_none()
                && !done_reading
                && !exhausted
                && in_flight.len() < window
                && queued < window
            {
                let (store, after) = (self.store.clone(), cursor);
                reading = Some(Box::pin(async move {
                    store
                        .read(move |conn| outbox::due(conn, now, after, batch))
                        .await
                }));
            }
            if marking.is_none() && !records.is_empty() {
                marking = Some(Box::pin(
                    self.write_records(std::mem::take(&mut records), Utc::now()),
                ));
            }
            if reading.is_none() && marking.is_none() && in_flight.is_empty() {
                break;
            }

            tokio::select! {
                () = shutdown.as_mut(), if !stopping => {
                    stopping = true;
                    done_reading = true;
                }
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    let (row, result): (Due, Result<Published, PublishError>) = done;
                    let failed = result.is_err();
                    let key = row.key.clone();
                    records.push((row.id, self.record(&row, result, &mut outcome, Utc::now())));
                    if failed {
                        let dropped = waiting.remove(&key).map_or(0, |q| q.len());
                        queued -= dropped;
                        outcome.held_back += dropped;
                        stopped.insert(key);
                        done_reading = true;
                    } else if let Some(next) = waiting.get_mut(&key).and_then(VecDeque::pop_front) {
                        queued -= 1;
                        in_flight.push(self.publish_row(next));
                    } else {
                        waiting.remove(&key);
                    }
                }
                read = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                    reading = None;
                    match read {
                        Ok(rows) => {
                            exhausted = rows.len() < batch as usize;
                            outcome.read += rows.len();
                            for row in rows {
                                cursor = cursor.max(row.id);
                                if stopped.contains(&row.key) {
                                    outcome.held_back += 1;
                                } else if let Some(queue) = waiting.get_mut(&row.key) {
                                    queue.push_back(row);
                                    queued += 1;
                                } else {
                                    waiting.insert(row.key.clone(), VecDeque::new());
                                    in_flight.push(self.publish_row(row));
                                }
                            }
                        }
                        Err(e) => {
                            error = Some(e);
                            done_reading = true;
                        }
                    }
                }
                marked = async { marking.as_mut().expect("guarded").await }, if marking.is_some() => {
                    marking = None;
                    if let Err(e) = marked {
                        // Those rows stay pending and go again; the broker drops the duplicates.
                        error = Some(e);
                        done_reading = true;
                    }
                }
                () = committed.notified(), if exhausted && !done_reading => {
                    exhausted = false;
                }
            }
        }

        tracing::debug!(
            took = ?started.elapsed(),
            read = outcome.read,
            published = outcome.published,
            failed = outcome.transient + outcome.permanent,
            exhausted,
            "relay pass"
        );
        if stopping {
            PassEnd::Shutdown
        } else if let Some(e) = error {
            PassEnd::Failed(e)
        } else if exhausted && outcome.transient == 0 && outcome.permanent == 0 {
            PassEnd::Idle
        } else {
            PassEnd::Again(outcome)
        }
    }
}
