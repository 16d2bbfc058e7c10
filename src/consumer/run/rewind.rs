//! A stream that went back under its consumer: found before each batch, and the consumer moved
//! back to where the stream's new content begins.
//!
//! A JetStream stream can lose its last messages: a replica that lagged becomes leader after a
//! block file of the others was lost, and the others truncate to match it. The stream then
//! stores new messages (the service's repair putting the lost events back, new orders) at the
//! sequences it lost. A replicated consumer need not follow (the server's reconciliation when a
//! consumer starts is written for single-replica ones; in the fault campaign's 30-minute run
//! replicated consumers stayed past thousands of such sequences): it then never delivers what is
//! stored there now, so the group would miss every event put back below where it stood.
//!
//! Each worker therefore remembers a witness, the last message it settled (its stream sequence
//! and event id), and before handling a batch reads the stream at that sequence. The same event
//! there means the stream kept what the worker read. Another one, or nothing past the stream's
//! last sequence, means it went back: the worker finds the last of its processed events still in
//! place (a binary search over the processed-events table, read back from the stream), resets the
//! consumer there (`$JS.API.CONSUMER.RESET`, nats-server 2.14 and later), drops the batch it
//! holds and pulls again. What comes again that was processed already is acknowledged as a
//! duplicate by its event id; what the stream holds now at the lost sequences is handled in
//! stream order.
//!
//! The worker's steps come first here, then the reads and the reset they use.
//!
//! The cost is one stream read per batch. A stream that went back and now holds, at the
//! witness's sequence, the very event it held before is not noticed: what came after it in the
//! stream may have changed unseen. The repair puts events back in commit order after the
//! stream's new last message, so that needs the lost tail to be put back exactly where it was.

use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::held::Unsettled;
use super::worker::{Received, Source, Worker};
use crate::consumer::handling::handler::Handler;
use crate::consumer::observe::stats::GroupStats;
use async_nats::jetstream::consumer::PullConsumer;

/// The message a worker settled last: what the stream must still hold at its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::consumer) struct Witness {
    /// Its stream sequence.
    pub(in crate::consumer) sequence: u64,
    /// Its event id.
    pub(in crate::consumer) event_id: Uuid,
}

/// Where a consumer was moved back to, after its stream went back.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::consumer) struct Reset {
    /// The last processed event still at its sequence, if any: the new witness.
    pub(in crate::consumer) kept: Option<Witness>,
    /// The sequence the consumer delivers next.
    pub(in crate::consumer) from: u64,
}

impl<H: Handler> Worker<H> {
    /// What the stream must still hold when the worker starts: the last event its file processed
    /// from it. Replays are not checked: their stream is the group's own, written once per replay.
    pub(in crate::consumer) fn first_witness(
        &self,
        conn: &rusqlite::Connection,
    ) -> Option<Witness> {
        if matches!(self.source, Source::Replay) {
            return None;
        }
        last_processed(conn, &self.config.group, &self.stream())
            .inspect_err(|e| tracing::warn!(group = %self.config.group, error = %e, "cannot read the last event processed; the stream is checked from the next batch on"))
            .ok()
            .flatten()
    }

    /// The message of `batch` furthest in the stream, with its event id: the next witness.
    pub(in crate::consumer) fn witness_of(&self, batch: &[Received]) -> Option<Witness> {
        if matches!(self.source, Source::Replay) {
            return None;
        }
        let last = batch.iter().max_by_key(|r| r.delivery.stream_sequence)?;
        let topic = last.topic?;
        let event = self.decode(topic, &last.delivery).ok()?;
        Some(Witness {
            sequence: last.delivery.stream_sequence,
            event_id: event.event_id(),
        })
    }

    /// Whether the stream went back under the consumer since the witness was read (see
    /// [`rewind`]); when it did, the consumer is reset to where the stream's new content begins
    /// and the witness becomes the last processed event still in place. A check or a reset that
    /// fails is logged and the batch goes on (an older nats-server has no reset).
    pub(in crate::consumer) async fn stream_went_back(
        &self,
        consumer: &mut PullConsumer,
        // `&mut`: a future holding a shared reference to a connection is not `Send`.
        conn: &mut rusqlite::Connection,
        witness: &mut Option<Witness>,
    ) -> bool {
        let Some(seen) = *witness else {
            return false;
        };
        let group = &self.config.group;
        let stream = match self.js.get_stream_no_info(self.stream()).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%group, error = %e, "cannot check that the stream kept what was read");
                return false;
            }
        };
        let identify = |m: &Unsettled| self.identify(m);
        match went_back(&stream, &seen, &identify).await {
            Ok(false) => return false,
            Ok(true) => {}
            Err(why) => {
                tracing::warn!(%group, %why, "cannot check that the stream kept what was read");
                return false;
            }
        }
        let id = self.parking_id();
        match reset(&self.js, conn, group, &id, consumer, &seen, &identify).await {
            Ok(reset) => {
                GroupStats::add(&self.stats.rewinds);
                tracing::warn!(%group, consumer = %id, witness = seen.sequence, from = reset.from, kept = ?reset.kept.map(|w| w.sequence), "the stream went back under the consumer (it lost its last messages and stored others at their sequences); the consumer delivers again from where the stream's new content begins");
                *witness = reset.kept;
                true
            }
            Err(why) => {
                tracing::error!(%group, consumer = %id, witness = seen.sequence, %why, "the stream went back under the consumer, which cannot be reset: the events stored at the sequences the stream lost are not delivered");
                false
            }
        }
    }
}

/// The last event the group processed from `stream` that this file knows the sequence of.
pub(in crate::consumer) fn last_processed(
    conn: &Connection,
    group: &str,
    stream: &str,
) -> rusqlite::Result<Option<Witness>> {
    let mut statement = conn.prepare_cached(
        "SELECT stream_seq, event_id FROM processed_events INDEXED BY processed_events_by_time
         WHERE consumer_group = ?1 AND stream = ?2 AND stream_seq > 0
         ORDER BY processed_at DESC LIMIT 1",
    )?;
    let mut rows = statement.query(params![group, stream])?;
    Ok(match rows.next()? {
        Some(row) => witness(row.get(0)?, &row.get::<_, String>(1)?),
        None => None,
    })
}

fn witness(sequence: i64, event_id: &str) -> Option<Witness> {
    Some(Witness {
        sequence: u64::try_from(sequence).ok()?,
        event_id: Uuid::parse_str(event_id).ok()?,
    })
}

/// How a message read back from the stream is identified: its event id, `None` when it is not
/// an event the worker can read.
pub(in crate::consumer) type Identify<'a> = &'a (dyn Fn(&Unsettled) -> Option<Uuid> + Sync);

/// Reads the stream back at the witness's sequence. `Ok(true)` when the stream went back (another
/// event there, or nothing and the stream ends before it); `Ok(false)` when it holds the same
/// event, or the message was removed from the middle of the stream (not a rewind: its loss is the
/// service's repair's to mend, and it comes again at a new sequence).
pub(in crate::consumer) async fn went_back<I>(
    stream: &jetstream::stream::Stream<I>,
    witness: &Witness,
    identify: Identify<'_>,
) -> Result<bool, String> {
    Ok(!matches!(
        read_back(stream, witness, identify).await?,
        Place::Same | Place::Removed
    ))
}

/// What the stream holds at a witness's sequence.
enum Place {
    Same,
    Other,
    /// Nothing, and the stream ends before it.
    PastTheEnd,
    /// Nothing, inside the stream: removed or aged out.
    Removed,
}

async fn read_back<I>(
    stream: &jetstream::stream::Stream<I>,
    witness: &Witness,
    identify: Identify<'_>,
) -> Result<Place, String> {
    match stream.get_raw_message(witness.sequence).await {
        Ok(message) => {
            let read = Unsettled::read(witness.sequence, message);
            Ok(if identify(&read) == Some(witness.event_id) {
                Place::Same
            } else {
                Place::Other
            })
        }
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
            let info = stream
                .get_info()
                .await
                .map_err(|e| format!("cannot read the stream's state: {e}"))?;
            Ok(if witness.sequence > info.state.last_sequence {
                Place::PastTheEnd
            } else {
                Place::Removed
            })
        }
        Err(e) => Err(format!("cannot read sequence {}: {e}", witness.sequence)),
    }
}

/// After the stream went back under `witness`: finds the last processed event of `stream` still
/// in place, resets `consumer` to the sequence after it (or to its ack floor, when that is
/// lower: a reset forgets what was pending below it) and forgets, in this file, the sequences of
/// the events processed past it (they are no witnesses any more) and the runs counted there.
pub(in crate::consumer) async fn reset(
    js: &jetstream::Context,
    // `&mut`: a future holding a shared reference to a connection is not `Send`.
    conn: &mut Connection,
    group: &str,
    consumer_id: &str,
    consumer: &mut jetstream::consumer::PullConsumer,
    witness: &Witness,
    identify: Identify<'_>,
) -> Result<Reset, String> {
    let info = consumer
        .info()
        .await
        .map_err(|e| format!("cannot read the consumer: {e}"))?
        .clone();
    let stream = js
        .get_stream(&info.stream_name)
        .await
        .map_err(|e| format!("cannot read the stream: {e}"))?;
    let first = stream.cached_info().state.first_sequence.max(1);
    let processed = processed_up_to(conn, group, &info.stream_name, witness.sequence)
        .map_err(|e| format!("cannot read the processed events: {e}"))?;
    let kept = last_in_place(&stream, &processed, first, identify).await?;
    let after_kept = kept.map_or(first, |w| w.sequence + 1);
    let from = after_kept.min(info.ack_floor.stream_sequence + 1).max(1);
    // Through the context, so that a JetStream domain's API prefix applies.
    let answer: serde_json::Value = js
        .request(
            format!("CONSUMER.RESET.{}.{}", info.stream_name, info.name),
            &serde_json::json!({ "seq": from }),
        )
        .await
        .map_err(|e| {
            format!("cannot reset the consumer (nats-server 2.14 or later has the API): {e}")
        })?;
    if let Some(error) = answer.get("error") {
        return Err(format!("the broker refused the reset to {from}: {error}"));
    }
    forget_from(conn, group, &info.stream_name, consumer_id, after_kept)
        .map_err(|e| format!("cannot forget the sequences past {after_kept}: {e}"))?;
    Ok(Reset { kept, from })
}

/// The group's processed events of `stream` at sequences up to `last`, by sequence.
fn processed_up_to(
    conn: &Connection,
    group: &str,
    stream: &str,
    last: u64,
) -> rusqlite::Result<Vec<Witness>> {
    let mut statement = conn.prepare(
        "SELECT stream_seq, event_id FROM processed_events
         WHERE consumer_group = ?1 AND stream = ?2 AND stream_seq BETWEEN 1 AND ?3
         ORDER BY stream_seq",
    )?;
    let rows = statement.query_map(params![group, stream, last as i64], |row| {
        Ok(witness(row.get(0)?, &row.get::<_, String>(1)?))
    })?;
    rows.filter_map(Result::transpose).collect()
}

/// The last of `processed` (by sequence) that the stream still holds at its sequence: a binary
/// search, since a stream loses its tail (the events before the loss are all in place, none
/// after it). An event below the stream's `first` sequence counts as in place: it aged out.
async fn last_in_place(
    stream: &jetstream::stream::Stream,
    processed: &[Witness],
    first: u64,
    identify: Identify<'_>,
) -> Result<Option<Witness>, String> {
    // processed[..low] are in place, processed[high..] are not.
    let (mut low, mut high) = (0, processed.len());
    while low < high {
        let middle = low + (high - low) / 2;
        let witness = &processed[middle];
        let in_place = witness.sequence < first
            || matches!(
                read_back(stream, witness, identify).await?,
                Place::Same | Place::Removed
            );
        if in_place {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low.checked_sub(1).map(|i| processed[i]))
}

/// Forgets the sequences of `stream` from `from` on in this file: the processed events' (set to
/// 0, unknown: they stay processed, by event id, but are no witnesses) and the handler runs
/// counted at them.
fn forget_from(
    conn: &Connection,
    group: &str,
    stream: &str,
    consumer_id: &str,
    from: u64,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE processed_events SET stream_seq = 0
         WHERE consumer_group = ?1 AND stream = ?2 AND stream_seq >= ?3",
        params![group, stream, from as i64],
    )?;
    conn.execute(
        "DELETE FROM handler_runs WHERE consumer = ?1 AND stream_seq >= ?2",
        params![consumer_id, from as i64],
    )?;
    conn.execute(
        "DELETE FROM waiting_orders WHERE consumer = ?1",
        params![consumer_id],
    )?;
    Ok(())
}
