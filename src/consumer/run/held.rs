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

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use futures::StreamExt;

use crate::consumer::message::headers_of;

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
                let subject = message.subject.to_string();
                if filters.is_empty() || filters.iter().any(|f| subject_matches(f, &subject)) {
                    messages.push(Unsettled {
                        subject,
                        sequence,
                        headers: headers_of(Some(&message.headers)),
                        payload: message.payload,
                    });
                }
            }
            // Deleted (acknowledged under a work-queue or interest policy, or removed).
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Held::Unknown(format!("cannot read sequence {sequence}: {e}")),
        }
    }
    Held::Messages(messages)
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
