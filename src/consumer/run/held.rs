//! What an earlier owner of a consumer left unacknowledged, found when a worker starts, so that
//! an order's events stay in stream order across a takeover.
//!
//! A process that ends without settling its batch (killed, its lease lost, stopped while the
//! breaker held the batch) leaves the messages delivered to it unacknowledged, and the broker
//! delivers them again only after `ack_wait`, while it delivers newer messages at once. A new
//! owner that handled those first would apply an order's later event before the earlier one
//! the dead process held. So a worker starts by asking the consumer where its acknowledgements
//! stand (the ack floor and the last delivered sequence), reads the messages in between that
//! its filter takes back from the stream, and makes each key with one not yet processed wait
//! for it ([`super::parking`]): the key's later messages are parked until it comes back and is
//! handled, every other key goes on at once. A message in that range acknowledged out of order
//! is in the processed-events table already (one file shared by the group's processes) and
//! holds nothing back; with a file per process it holds its key until the parking's grace.
//!
//! Where the range is too long to read at start ([`MOST_READ`]), or the consumer cannot tell
//! where it stands, the worker instead waits `ack_wait` before its first pull: the broker then
//! delivers what it redelivers before anything new.
//!
//! The same look is taken when a delivery never arrived (see `gaps`); the worker's steps for
//! both are here, after the reading of the range.

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use futures::StreamExt;

use super::parking::Parking;
use super::worker::{Received, Worker};
use crate::consumer::handling::handler::{Delivery, Handler};
use crate::consumer::handling::idempotency;
use crate::consumer::message::headers_of;
use crate::shutdown::Shutdown;

/// The most stream sequences a worker reads back at start; past it, it waits `ack_wait`.
pub(in crate::consumer) const MOST_READ: u64 = 5_000;
/// How many of them are read at once.
const READS_AT_ONCE: usize = 32;

/// What an earlier owner left unacknowledged.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::consumer) enum Held {
    /// The messages of the range the filter takes: (subject, sequence, headers, payload).
    Messages(Vec<Unsettled>),
    /// The range could not be read (too long, or the broker did not answer): why.
    Unknown(String),
}

/// A message delivered before this worker started and not acknowledged.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::consumer) struct Unsettled {
    /// Its subject.
    pub(in crate::consumer) subject: String,
    /// Its stream sequence.
    pub(in crate::consumer) sequence: u64,
    /// Its headers.
    pub(in crate::consumer) headers: Vec<(String, String)>,
    /// Its body.
    pub(in crate::consumer) payload: bytes::Bytes,
}

impl Unsettled {
    /// The message stored at `sequence`, as read back from the stream.
    pub(in crate::consumer) fn read(
        sequence: u64,
        message: async_nats::jetstream::message::StreamMessage,
    ) -> Unsettled {
        Unsettled {
            subject: message.subject.to_string(),
            sequence,
            headers: headers_of(Some(&message.headers)),
            payload: message.payload,
        }
    }
}

/// The messages of `consumer` between its ack floor and its last delivery that its filter
/// takes; nothing when no message is pending an acknowledgement.
pub(in crate::consumer) async fn unsettled(
    js: &jetstream::Context,
    consumer: &mut PullConsumer,
) -> Held {
    let info = match consumer.info().await {
        Ok(info) => info.clone(),
        Err(e) => return Held::Unknown(format!("cannot read the consumer: {e}")),
    };
    if info.num_ack_pending == 0 {
        return Held::Messages(Vec::new());
    }
    let (floor, last) = (
        info.ack_floor.stream_sequence,
        info.delivered.stream_sequence,
    );
    if last.saturating_sub(floor) > MOST_READ {
        return Held::Unknown(format!(
            "{} sequences between the ack floor {floor} and the last delivery {last}",
            last - floor
        ));
    }
    let mut filters = info.config.filter_subjects.clone();
    if !info.config.filter_subject.is_empty() {
        filters.push(info.config.filter_subject.clone());
    }
    let stream = match js.get_stream_no_info(&info.stream_name).await {
        Ok(stream) => stream,
        Err(e) => return Held::Unknown(format!("cannot read the stream: {e}")),
    };
    let reads: Vec<_> = futures::stream::iter(floor + 1..=last)
        .map(|sequence| {
            let stream = &stream;
            async move { (sequence, stream.get_raw_message(sequence).await) }
        })
        .buffered(READS_AT_ONCE)
        .collect()
        .await;
    let mut messages = Vec::new();
    for (sequence, read) in reads {
        match read {
            Ok(message) => {
                let read = Unsettled::read(sequence, message);
                if filters.is_empty() || filters.iter().any(|f| subject_matches(f, &read.subject)) {
                    messages.push(read);
                }
            }
            // Deleted (acknowledged under a work-queue or interest policy, or removed).
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Held::Unknown(format!("cannot read sequence {sequence}: {e}")),
        }
    }
    Held::Messages(messages)
}

impl<H: Handler> Worker<H> {
    /// Makes each key with a message an earlier owner of the consumer left unacknowledged, and
    /// not processed, wait for it (see `held`); where those cannot be read, waits `ack_wait`
    /// before the first pull so that the broker delivers them first. False when `stop` came
    /// first.
    pub(in crate::consumer) async fn wait_for_unsettled(
        &self,
        consumer: &mut PullConsumer,
        // `&mut`: a future holding a shared reference to a connection is not `Send`.
        conn: &mut rusqlite::Connection,
        parking: &mut Parking<Received>,
        stop: &Shutdown,
    ) -> bool {
        let group = &self.config.group;
        match self.park_unsettled(consumer, conn, parking, &[]).await {
            Ok(0) => true,
            Ok(waiting) => {
                tracing::info!(%group, consumer = %self.parking_id(), waiting, "messages an earlier owner left unacknowledged come back after ack_wait; their orders' later events wait for them");
                true
            }
            Err(why) => {
                tracing::warn!(%group, %why, ack_wait = ?self.config.ack_wait, "cannot tell what an earlier owner left unacknowledged; waiting ack_wait before pulling, so the broker delivers it first");
                tokio::select! {
                    () = stop.signal() => false,
                    () = tokio::time::sleep(self.config.ack_wait) => true,
                }
            }
        }
    }

    /// After a gap in the deliveries (see `gaps`): makes each key with a message delivered and
    /// unacknowledged, not processed and not in hand (in `batch` or parked), wait for it, so the
    /// batch's later events of its order are parked until it comes back. Where that cannot be
    /// read, the batch goes on (and says so).
    pub(in crate::consumer) async fn wait_for_missed(
        &self,
        consumer: &mut PullConsumer,
        conn: &mut rusqlite::Connection,
        parking: &mut Parking<Received>,
        batch: &[Received],
    ) {
        let in_hand: Vec<u64> = batch
            .iter()
            .chain(parking.held())
            .map(|r| r.delivery.stream_sequence)
            .collect();
        let group = &self.config.group;
        match self.park_unsettled(consumer, conn, parking, &in_hand).await {
            Ok(waiting) => {
                tracing::warn!(%group, consumer = %self.parking_id(), waiting, "a delivery never arrived; the orders of what is delivered and not in hand wait for it (it comes back after ack_wait)");
            }
            Err(why) => {
                tracing::warn!(%group, %why, "a delivery never arrived and what is unacknowledged cannot be read; its order's later events may come first");
            }
        }
    }

    /// Makes the key of each message delivered and unacknowledged (see `held`), not processed,
    /// not at one of `in_hand`'s sequences and not waited for already, wait for it `ack_wait`.
    /// How many; why not, when the messages cannot be read.
    async fn park_unsettled(
        &self,
        consumer: &mut PullConsumer,
        conn: &mut rusqlite::Connection,
        parking: &mut Parking<Received>,
        in_hand: &[u64],
    ) -> Result<usize, String> {
        let messages = match unsettled(&self.js, consumer).await {
            Held::Messages(messages) => messages,
            Held::Unknown(why) => return Err(why),
        };
        let group = &self.config.group;
        let mut waiting = 0;
        for m in messages.iter().filter(|m| !in_hand.contains(&m.sequence)) {
            let delivery = self.delivery_of(m);
            let topic = self.topic_of(&delivery.subject);
            let key = self.key(&delivery, topic);
            if parking.is_head(&key, m.sequence) {
                continue;
            }
            let event = topic.and_then(|topic| self.decode(topic, &delivery).ok());
            // An event that cannot be read, or whose record cannot, is waited for: it is
            // handled or dead-lettered when it comes back.
            let processed = event.is_some_and(|event| {
                idempotency::is_processed(conn, group, event.event_id()).unwrap_or(false)
            });
            if !processed {
                parking.wait(&key, m.sequence, self.config.ack_wait);
                waiting += 1;
            }
        }
        Ok(waiting)
    }

    /// A message read back from the stream, as if delivered.
    fn delivery_of(&self, m: &Unsettled) -> Delivery {
        Delivery {
            subject: m.subject.clone(),
            stream: self.stream(),
            stream_sequence: m.sequence,
            delivered: 0,
            published: chrono::Utc::now(),
            headers: m.headers.clone(),
            payload: m.payload.clone(),
        }
    }

    /// The event id of a message read back from the stream, when it is an event of the worker's.
    pub(in crate::consumer) fn identify(&self, m: &Unsettled) -> Option<uuid::Uuid> {
        let delivery = self.delivery_of(m);
        let topic = self.topic_of(&delivery.subject)?;
        self.decode(topic, &delivery).ok().map(|e| e.event_id())
    }
}

/// Whether `subject` matches the NATS filter `filter`: `*` is one token, a last `>` one or more.
pub(in crate::consumer) fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in filter.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (want, Some(got)) if want == got => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn filters_match_as_nats_matches_them() {
        assert!(subject_matches("order.created.>", "order.created.2.abc"));
        assert!(subject_matches("order.created.2.>", "order.created.2.abc"));
        assert!(!subject_matches("order.created.1.>", "order.created.2.abc"));
        assert!(!subject_matches("order.created.>", "order.created"));
        assert!(subject_matches("order.*.2.*", "order.updated.2.abc"));
        assert!(!subject_matches("order.*.2.*", "order.updated.2.abc.d"));
        assert!(subject_matches(
            "replay.g.order.created",
            "replay.g.order.created"
        ));
        assert!(!subject_matches("replay.g", "replay.g.order"));
    }
}
