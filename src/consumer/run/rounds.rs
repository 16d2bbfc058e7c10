//! A batch handled in rounds: events of different orders concurrently, one order's events one
//! after another.
//!
//! Round `r` holds, for each key (order) of the batch, its next message not yet decided. The
//! round's messages are decoded (a schema error is a dead letter), those the group processed before
//! are acknowledged without running anything, and the rest are prepared concurrently
//! ([`Handler::prepare`], up to `concurrency` at once, outside any transaction) and then handled
//! one after another in one transaction ([`Handler::handle`], see
//! [`crate::consumer::idempotency`]), which commits before the next round starts. So an order's
//! next event is prepared only once the previous one is handled, and a key whose message failed
//! sits out the remaining rounds: its later messages are parked (see `parking`) while other orders
//! go on.
//!
//! A round's verdicts are kept only once it commits, so when the group's database fails the
//! worker tries again from the first round not committed.

use std::collections::HashMap;

use futures::StreamExt;
use tracing::Instrument;

use super::attempts;
use super::parking::{self, Parking};
use super::worker::{Received, RoundError, Verdict, Worker};
use crate::consumer::dlq::Reason;
use crate::consumer::handling::handler::{Delivery, Event, Failure, Handler};
use crate::consumer::handling::idempotency::{self, Batch, Processed, Step};
use crate::consumer::ownership::fence::Fenced;
use crate::shutdown::Shutdown;

/// A message of a round, decoded and not processed before: to prepare and handle.
struct Run<'b> {
    index: usize,
    /// The topic's name (the contract's, or a foreign topic's).
    topic: &'b str,
    event: Event,
    delivery: &'b Delivery,
    span: tracing::Span,
    /// Which run of the handler for this message this is (see `attempts`).
    run: u64,
}

impl<H: Handler> Worker<H> {
    /// Decides each message of `batch` whose verdict is still open, round after round; `Err`
    /// is a fault of the group's own infrastructure (the round in progress rolled back).
    pub(in crate::consumer) async fn run_rounds(
        &self,
        conn: &mut rusqlite::Connection,
        batch: &[Received],
        verdicts: &mut [Option<Verdict>],
        parking: &Parking<Received>,
        stop: &Shutdown,
    ) -> Result<(), RoundError> {
        loop {
            let round = next_round(batch, verdicts);
            if round.is_empty() {
                return Ok(());
            }
            if stop.is_triggered() {
                for verdict in verdicts.iter_mut().filter(|v| v.is_none()) {
                    *verdict = Some(Verdict::Release);
                }
                return Ok(());
            }
            let decided = self.run_round(conn, batch, &round, parking, stop).await?;
            for (index, verdict) in decided {
                verdicts[index] = Some(verdict);
            }
        }
    }

    /// One round: decode, skip what was processed before, prepare concurrently, handle in one
    /// transaction and commit, with the orders that now wait for a retry or wait no more. The
    /// verdicts by index into `batch`.
    async fn run_round(
        &self,
        conn: &mut rusqlite::Connection,
        batch: &[Received],
        round: &[usize],
        parking: &Parking<Received>,
        stop: &Shutdown,
    ) -> Result<Vec<(usize, Verdict)>, RoundError> {
        let group = self.config.group.as_str();
        let mut decided = Vec::with_capacity(round.len());
        let mut runs = Vec::with_capacity(round.len());
        for &index in round {
            let r = &batch[index];
            let d = &r.delivery;
            let Some(topic) = r.topic else {
                let why = format!("no topic of the group for subject {}", d.subject);
                decided.push((index, Verdict::Dead(Reason::Schema, why)));
                continue;
            };
            let event = match self.decode(topic, d) {
                Ok(event) => event,
                Err(e) => {
                    decided.push((index, Verdict::Dead(Reason::Schema, e.0)));
                    continue;
                }
            };
            // Redelivered after its batch committed but before the ack: nothing to prepare.
            if idempotency::is_processed(conn, group, event.event_id())
                .map_err(|e| format!("cannot read the processed events: {e}"))?
            {
                decided.push((index, Verdict::Ack { duplicate: true }));
                continue;
            }
            // A first delivery has not run before: no look-up.
            let earlier = if d.delivered > 1 {
                attempts::earlier(conn, &self.parking_id(), d.stream_sequence)
                    .map_err(|e| format!("cannot read the handler's runs: {e}"))?
            } else {
                0
            };
            // The span both steps run in: a child of the message's traceparent.
            let topic = self.topic_name(topic);
            let span = super::trace::message_span(group, topic, &event, d);
            runs.push(Run {
                index,
                topic,
                event,
                delivery: d,
                span,
                run: earlier + 1,
            });
        }
        if runs.is_empty() {
            self.note_waiting(conn, batch, &decided, parking)
                .map_err(|e| format!("cannot note the waiting orders: {e}"))?;
            return Ok(decided);
        }
        // The futures are built first: a closure building them inside the stream would make the
        // worker's future not `Send` (the compiler cannot prove it for every lifetime).
        let mut preparing = Vec::with_capacity(runs.len());
        for run in &runs {
            preparing.push(
                self.handler
                    .prepare(&run.event, run.delivery)
                    .instrument(run.span.clone()),
            );
        }
        let prepared: Vec<Result<H::Prepared, Failure>> = futures::stream::iter(preparing)
            .buffered(self.config.concurrency)
            .collect()
            .await;
        let mut tx =
            Batch::begin(conn).map_err(|e| format!("cannot begin the round's transaction: {e}"))?;
        for (run, prepared) in runs.iter().zip(prepared) {
            if stop.is_triggered() {
                decided.push((run.index, Verdict::Release));
                continue;
            }
            let prepared = match prepared {
                Ok(prepared) => prepared,
                Err(failure) => {
                    decided.push((run.index, self.failed(run, failure)));
                    continue;
                }
            };
            let processed = Processed {
                group,
                event_id: run.event.event_id(),
                topic: run.topic,
                stream: &run.delivery.stream,
                stream_seq: run.delivery.stream_sequence,
                delivered: run.delivery.delivered,
            };
            let step = tx
                .run(
                    &processed,
                    &self.handler,
                    &run.event,
                    run.delivery,
                    &prepared,
                )
                .instrument(run.span.clone())
                .await;
            let store_fault = self.handler.take_store_fault();
            let verdict = match step {
                Ok(Step::Done) => Verdict::Ack { duplicate: false },
                Ok(Step::AlreadyProcessed) => Verdict::Ack { duplicate: true },
                Ok(Step::Failed(failure)) => {
                    if let (Some(fault), true) = (store_fault, failure.is_transient()) {
                        let _ = tx.rollback();
                        return Err(format!("the handler's writes failed: {fault}").into());
                    }
                    self.failed(run, failure)
                }
                Err(e) => {
                    let _ = tx.rollback();
                    return Err(format!("the round's transaction failed: {e}").into());
                }
            };
            decided.push((run.index, verdict));
        }
        if let Err(e) = self.note_waiting(tx.conn(), batch, &decided, parking) {
            let _ = tx.rollback();
            return Err(format!("cannot note the waiting orders: {e}").into());
        }
        // Checked last: a process paused during the round finds out now (see `fence`).
        if let Err(fenced) = self.fence.check(tx.conn()) {
            let _ = tx.rollback();
            return Err(match fenced {
                Fenced::Superseded { .. } => RoundError::Superseded(fenced.to_string()),
                _ => RoundError::Fault(fenced.to_string()),
            });
        }
        tx.commit()
            .map_err(|e| format!("cannot commit the round: {e}"))?;
        Ok(decided)
    }

    /// Writes which orders of the round now wait for a retry (a message sent back) and which
    /// wait no more (their waited-for message done), so that a restarted worker knows, and the
    /// handler's runs of each message sent back (see `attempts`).
    fn note_waiting(
        &self,
        conn: &rusqlite::Connection,
        batch: &[Received],
        decided: &[(usize, Verdict)],
        parking: &Parking<Received>,
    ) -> rusqlite::Result<()> {
        let id = self.parking_id();
        for (index, verdict) in decided {
            let r = &batch[*index];
            let sequence = r.delivery.stream_sequence;
            // A message done for good forgets its runs; only a redelivered one can have any.
            if matches!(verdict, Verdict::Ack { .. } | Verdict::Dead(..))
                && r.delivery.delivered > 1
            {
                attempts::done(conn, &id, sequence)?;
            }
            match verdict {
                Verdict::Nak(delay) => {
                    attempts::ran(conn, &id, sequence)?;
                    parking::save(conn, &id, &r.key, sequence, *delay)?
                }
                Verdict::Ack { .. } | Verdict::Dead(..) if parking.is_head(&r.key, sequence) => {
                    match parking.next_head(&r.key, sequence) {
                        Some(next) => parking::replace_head(conn, &id, &r.key, next)?,
                        None => parking::remove(conn, &id, &r.key)?,
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// What a failure of the handler makes of its message: a permanent one, or a transient one
    /// on the last allowed run (`max_deliver` runs of the handler, see `attempts`), is a dead
    /// letter; another transient one is retried after the backoff.
    fn failed(&self, run: &Run<'_>, failure: Failure) -> Verdict {
        let why = failure.describe();
        match failure {
            Failure::Permanent { .. } => Verdict::Dead(Reason::Permanent, why),
            Failure::Transient { .. } if run.run >= self.config.max_deliver as u64 => {
                Verdict::Dead(
                    Reason::MaxDeliver,
                    format!("the handler failed on all {} runs; last: {why}", run.run),
                )
            }
            Failure::Transient { .. } => {
                let delay = self.config.delay_after(run.run);
                tracing::debug!(group = %self.config.group, event_id = %run.event.event_id(), run = run.run, delivered = run.delivery.delivered, ?delay, %why, "transient failure; retrying");
                Verdict::Nak(delay)
            }
        }
    }
}

/// The next round's messages (indices into `batch`, in batch order): each key's undecided
/// message of the lowest sequence. An undecided message behind a message of its key that waits
/// for a retry (`Nak`) or is parked is parked too, without running.
fn next_round(batch: &[Received], verdicts: &mut [Option<Verdict>]) -> Vec<usize> {
    let sequence = |i: usize| batch[i].delivery.stream_sequence;
    let mut waits: HashMap<&str, u64> = HashMap::new();
    for (i, verdict) in verdicts.iter().enumerate() {
        if matches!(verdict, Some(Verdict::Nak(_) | Verdict::Park)) {
            let lowest = waits.entry(batch[i].key.as_str()).or_insert(u64::MAX);
            *lowest = (*lowest).min(sequence(i));
        }
    }
    let mut first: HashMap<&str, usize> = HashMap::new();
    for i in 0..batch.len() {
        if verdicts[i].is_some() {
            continue;
        }
        let key = batch[i].key.as_str();
        if waits.get(key).is_some_and(|&w| sequence(i) > w) {
            verdicts[i] = Some(Verdict::Park);
            continue;
        }
        first
            .entry(key)
            .and_modify(|j| {
                if sequence(i) < sequence(*j) {
                    *j = i;
                }
            })
            .or_insert(i);
    }
    let mut round: Vec<usize> = first.into_values().collect();
    round.sort_unstable();
    round
}
