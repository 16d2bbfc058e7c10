//! One relay pass: read due rows into the lanes, send each lane's batches, mark the outcomes.
//!
//! A pass reads due rows in commit order from a cursor (the highest id it has read) while the
//! lanes hold fewer than [`READ_AHEAD_BATCHES`] batches' worth, hands every idle lane's next
//! batch to [`Relay::send`], and writes the outcomes in batch transactions, one in flight at a
//! time, while sending goes on. It ends when nothing is due and nothing is in flight, on
//! shutdown, after a read or a mark failed, or after [`PASS_MAX`]: rows behind the cursor that
//! came due meanwhile (a retry, a requeue) are read by the next pass, which starts from the
//! beginning. Rows still queued when a pass ends stay pending and are read again.
//!
//! All reads of a pass use one "now" (a millisecond early, as timestamps are stored in
//! milliseconds) and the requeue number at its start: a row that comes due for a retry, or is
//! requeued, during the pass keeps holding back the later rows of its key until the next pass,
//! which reads it first. A moving "now" would let those later rows be read past the cursor and
//! published ahead of it.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;

use super::lanes::Lanes;
use super::sending::Sent;
use super::{Outcome, Record, Relay};
use crate::bus::stream_name;
use crate::store::StoreError;
use crate::store::outbox::{self, DueRows};

/// The longest a pass reads on before the next one starts again from the first due row; at most
/// the polling interval. Ending a pass costs waiting for the batches in flight once.
const PASS_MAX: Duration = Duration::from_secs(5);

/// How many batches' worth of rows the lanes may hold beyond those in flight.
const READ_AHEAD_BATCHES: usize = 4;
/// How often a lane whose stream is paused (being checked or repaired) looks again.
const PAUSED_POLL: Duration = Duration::from_millis(100);

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a pass ended.
pub(super) enum PassEnd {
    /// Shutdown was asked for; the batches in flight were finished and recorded.
    Shutdown,
    /// Reading or marking failed.
    Failed(StoreError),
    /// Nothing more is due now.
    Idle(Outcome),
    /// The pass reached its age; start the next at once.
    Again(Outcome),
}

/// What a pass keeps track of besides the lanes.
#[derive(Default)]
struct Progress {
    outcome: Outcome,
    records: Vec<(i64, Record)>,
    cursor: i64,
    /// Nothing more is due past the cursor until a commit says otherwise.
    exhausted: bool,
    /// No more reads this pass.
    done_reading: bool,
    /// No more batches this pass (shutdown or the pass's age).
    done_sending: bool,
    stopping: bool,
    error: Option<StoreError>,
}

impl Relay {
    /// One pass; see the module's documentation.
    pub(super) async fn pass<S: Future<Output = ()>>(
        &self,
        lanes: &mut Lanes,
        shutdown: &mut Pin<&mut S>,
        committed: &Notify,
    ) -> PassEnd {
        let started = Instant::now();
        let max_age = PASS_MAX.min(self.config.polling_interval);
        let read_size = self.config.batch_size.max(self.config.publish_batch as u32);
        let read_ahead = self.config.publish_batch * READ_AHEAD_BATCHES;
        let now = Utc::now() - chrono::Duration::milliseconds(1);
        let epoch = match self.store.read(outbox::requeue_epoch).await {
            Ok(epoch) => epoch,
            Err(e) => return PassEnd::Failed(e),
        };

        let mut p = Progress::default();
        let mut reading: Option<Boxed<'_, Result<DueRows, StoreError>>> = None;
        let mut marking: Option<Boxed<'_, Result<(), StoreError>>> = None;
        let mut in_flight = FuturesUnordered::new();

        loop {
            if started.elapsed() >= max_age {
                p.done_reading = true;
                p.done_sending = true;
            }
            if reading.is_none() && !p.done_reading && !p.exhausted && lanes.queued() < read_ahead {
                let (store, after) = (self.store.clone(), p.cursor);
                reading = Some(Box::pin(async move {
                    store
                        .read(move |conn| outbox::due(conn, now, epoch, after, read_size))
                        .await
                }));
            }
            if !p.done_sending {
                let now = Instant::now();
                for batch in lanes.take_ready(now) {
                    // A stream being checked or repaired waits; the others go on.
                    let Some(to_stream) = self.status.publishing_to(&batch.stream) else {
                        lanes.not_sent(batch, now + PAUSED_POLL);
                        continue;
                    };
                    let tries = lanes.tries(&batch.rows, now);
                    in_flight.push(async move {
                        let _to_stream = to_stream;
                        let _publishing = self.status.publishing().await;
                        self.send_again(batch, Some(tries)).await
                    });
                }
            }
            if marking.is_none() && !p.records.is_empty() {
                let records = std::mem::take(&mut p.records);
                marking = Some(Box::pin(self.write_records(records, Utc::now())));
            }
            let next_retry = lanes.next_retry().filter(|_| !p.done_sending);
            let idle = reading.is_none() && marking.is_none() && in_flight.is_empty();
            // Rows still queued here belong to lanes that back off: wait for them, unless the pass
            // is done sending.
            if idle && (p.done_sending || lanes.queued() == 0 && (p.exhausted || p.done_reading)) {
                break;
            }

            tokio::select! {
                () = shutdown.as_mut(), if !p.stopping => {
                    p.stopping = true;
                    p.done_reading = true;
                    p.done_sending = true;
                }
                Some(sent) = in_flight.next(), if !in_flight.is_empty() => {
                    self.finished(sent, lanes, &mut p);
                }
                read = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                    reading = None;
                    match read {
                        Ok(found) => self.queue(found, read_size, lanes, &mut p),
                        Err(e) => {
                            p.error = Some(e);
                            p.done_reading = true;
                        }
                    }
                }
                marked = async { marking.as_mut().expect("guarded").await }, if marking.is_some() => {
                    marking = None;
                    if let Err(e) = marked {
                        // Those rows stay pending and go again; the broker drops the duplicates.
                        p.error = Some(e);
                        p.done_reading = true;
                        p.done_sending = true;
                    }
                }
                () = committed.notified(), if p.exhausted && !p.done_reading => {
                    p.exhausted = false;
                }
                () = sleep_until(next_retry), if next_retry.is_some() => {}
                else => break,
            }
        }
        lanes.clear();
        self.status.set_one_by_one(lanes.streams_one_by_one());

        let Progress {
            outcome,
            exhausted,
            stopping,
            error,
            ..
        } = p;
        tracing::debug!(
            took = ?started.elapsed(),
            read = outcome.read,
            published = outcome.published,
            batches = outcome.batches,
            failed = outcome.transient + outcome.permanent,
            exhausted,
            "relay pass"
        );
        if stopping {
            PassEnd::Shutdown
        } else if let Some(e) = error {
            PassEnd::Failed(e)
        } else if exhausted && outcome.transient == 0 && outcome.permanent == 0 {
            PassEnd::Idle(outcome)
        } else {
            PassEnd::Again(outcome)
        }
    }

    /// Puts what a read found into the lanes; unreadable rows are parked as dead and stop their
    /// key.
    fn queue(&self, found: DueRows, read_size: u32, lanes: &mut Lanes, p: &mut Progress) {
        p.exhausted = found.count < read_size as usize;
        p.cursor = p.cursor.max(found.last_id);
        p.outcome.read += found.count;
        for bad in found.unreadable {
            tracing::error!(id = bad.id, error = %bad.error, "outbox row cannot be read; parked as dead");
            p.outcome.unreadable += 1;
            if let Some(key) = &bad.key {
                p.outcome.held_back += lanes.stop_key(key);
            }
            p.records.push((bad.id, Record::Unreadable(bad.error)));
        }
        for row in found.rows {
            if !lanes.push(&stream_name(&row.topic), row) {
                p.outcome.held_back += 1;
            }
        }
    }

    /// Records what became of a batch and gives its lane back.
    fn finished(&self, sent: Sent, lanes: &mut Lanes, p: &mut Progress) {
        p.outcome.batches += 1;
        p.outcome.fallbacks += usize::from(sent.fell_back);
        if sent.not_atomic {
            lanes.one_by_one(&sent.stream, Instant::now());
        } else if sent.atomic {
            lanes.takes_batches(&sent.stream);
        }
        for (row, result) in sent.results {
            let permanent = result.as_ref().is_err_and(|e| !e.is_transient());
            if result.is_ok() {
                lanes.acknowledged(row.id);
            }
            let record = self.record(&row, result, &mut p.outcome, Utc::now());
            p.records.push((row.id, record));
            if permanent {
                p.outcome.held_back += lanes.stop_key(&row.key);
            }
        }
        p.outcome.held_back +=
            lanes.finish(&sent.stream, sent.unsent, sent.transient, Instant::now());
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}
