//! Replaying dead letters: each letter is a pointer to the event its stream stored, and what goes
//! back to the group is that stored event, never the letter's own body or headers.
//!
//! Anyone who may publish on `dlq.>` can write a letter, and a replay is published by the service
//! into a group's replay subject, which the group trusts as its own topic's event. So a letter is
//! only replayed when the stream and sequence it names (`Dlq-Source-Stream`,
//! `Dlq-Source-Sequence`) still hold a message of the letter's topic with the letter's body byte
//! for byte; the replay then carries the stored message's body and headers. A letter that does
//! not match is refused with the reason ([`Refusal`]) and stays in `ORDER_DLQ` for an operator to
//! read and purge. A letter whose event has left its stream (the topic's retention is shorter than
//! the dead letters' 30 days) cannot be replayed either: there is nothing left to vouch for it.

use std::fmt;

use async_nats::jetstream::{self, stream};

use super::{DLQ_STREAM, REPLAY_STREAM, Stored, page, replay_subject, stored};
use crate::bus::MSG_ID_HEADER;
use crate::consumer::ConsumerError;
use crate::consumer::message::{header_map, headers_of};

/// Why a dead letter was not replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The letter names no stream and sequence of its event.
    NoSource,
    /// The letter names a dead-letter stream, not a stream of events.
    NotAnEventStream(String),
    /// The stream named no longer holds the sequence (retention, a purge, a lost message).
    Gone {
        /// The stream the letter names.
        stream: String,
        /// The sequence it names.
        sequence: u64,
    },
    /// The stored message is not of the letter's topic.
    OtherTopic {
        /// The letter's topic, from its subject.
        topic: String,
        /// The stored message's subject.
        stored: String,
    },
    /// The letter's body is not the stored message's.
    Differs {
        /// The stream the letter names.
        stream: String,
        /// The sequence it names.
        sequence: u64,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSource => f.write_str(
                "the letter names no source stream and sequence, so nothing vouches for its event",
            ),
            Refusal::NotAnEventStream(s) => {
                write!(
                    f,
                    "the letter's source {s} is a dead-letter stream, not an event stream"
                )
            }
            Refusal::Gone { stream, sequence } => write!(
                f,
                "{stream} no longer holds sequence {sequence} (past the stream's retention, \
                 purged or lost): there is no stored event to send back"
            ),
            Refusal::OtherTopic { topic, stored } => write!(
                f,
                "the stored message is on {stored}, not of the letter's topic {topic}"
            ),
            Refusal::Differs { stream, sequence } => write!(
                f,
                "the letter's body differs from the event {stream} stored at sequence {sequence}"
            ),
        }
    }
}

/// What a replay of a group's letters did.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Letters sent back to the group (and deleted from `ORDER_DLQ`).
    pub sent: usize,
    /// Letters left in `ORDER_DLQ`, by sequence, with why.
    pub refused: Vec<(u64, Refusal)>,
}

/// What a replay of one letter did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayedOne {
    /// Sent back to the group.
    Sent,
    /// The group has no letter of that sequence.
    NotFound,
    /// Left in `ORDER_DLQ`, for this reason.
    Refused(Refusal),
}

/// Sends the group's dead letters (of one topic, or all) back to the group, once each: publishes
/// the event each one points at onto `replay.<group>.<source subject>`, then deletes the letter
/// from `ORDER_DLQ`. Letters that do not match their stored event are refused and kept.
pub async fn replay(
    js: &jetstream::Context,
    group: &str,
    topic: Option<&str>,
) -> Result<Replayed, ConsumerError> {
    replay_telling(js, group, topic, |_, _| {}).await
}

/// [`replay`], telling `progress` (letters dealt with, of how many) once the letters are known
/// and after each one: sent, refused, or found replayed or purged meanwhile. The last call has
/// both equal.
pub async fn replay_telling(
    js: &jetstream::Context,
    group: &str,
    topic: Option<&str>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Replayed, ConsumerError> {
    // Which letters and in what order, one page at a time, keeping no body (each is read cut
    // to nothing): in the order the events were first stored, not the order they failed in.
    let mut order = Vec::new();
    let mut after = 0;
    loop {
        let (letters, more) = page(js, group, topic, after, REPLAY_PAGE, 0).await?;
        after = letters.last().map_or(after, |l| l.sequence);
        order.extend(letters.into_iter().map(|l| (l.source, l.sequence)));
        if !more {
            break;
        }
    }
    order.sort();
    // Then each letter read again and sent on its own: one body in memory at a time.
    let dlq = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(ConsumerError::nats)?;
    let total = order.len();
    progress(0, total);
    let mut replayed = Replayed::default();
    for (done, (_, sequence)) in order.into_iter().enumerate() {
        if let Some(letter) = letter_at(&dlq, sequence).await? {
            match resend(js, &dlq, group, &letter).await? {
                Ok(()) => replayed.sent += 1,
                Err(refusal) => replayed.refused.push((sequence, refusal)),
            }
        }
        progress(done + 1, total);
    }
    Ok(replayed)
}

/// How many letters a replay reads at once to learn their order.
const REPLAY_PAGE: usize = 100;

/// Sends one of the group's dead letters, by its `ORDER_DLQ` sequence, back to the group as
/// [`replay`] does.
pub async fn replay_one(
    js: &jetstream::Context,
    group: &str,
    sequence: u64,
) -> Result<ReplayedOne, ConsumerError> {
    super::ensure_streams(js).await?;
    let dlq = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(ConsumerError::nats)?;
    let Some(letter) = letter_at(&dlq, sequence).await? else {
        return Ok(ReplayedOne::NotFound);
    };
    if letter_topic(&letter.subject, group).is_none() {
        return Ok(ReplayedOne::NotFound);
    }
    Ok(match resend(js, &dlq, group, &letter).await? {
        Ok(()) => ReplayedOne::Sent,
        Err(refusal) => ReplayedOne::Refused(refusal),
    })
}

/// The letter at `sequence` of `ORDER_DLQ`, `None` when there is none (replayed or purged).
async fn letter_at(dlq: &stream::Stream, sequence: u64) -> Result<Option<Stored>, ConsumerError> {
    // Sequences start at 1; the broker answers 0 with an error, not "no message".
    if sequence == 0 {
        return Ok(None);
    }
    match dlq.get_raw_message(sequence).await {
        Ok(message) => Ok(Some(stored(message))),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(ConsumerError::nats(e)),
    }
}

/// The topic of a letter of `group`, from its subject `dlq.<group>.<topic>`: the subject is what
/// the letter was filed under, so a header cannot send it to another topic.
fn letter_topic<'a>(subject: &'a str, group: &str) -> Option<&'a str> {
    subject
        .strip_prefix("dlq.")?
        .strip_prefix(group)?
        .strip_prefix('.')
        .filter(|topic| !topic.is_empty())
}

/// Checks the letter against the event its stream stored and, when they match, publishes the
/// stored event onto the group's replay subject and deletes the letter. The inner error is a
/// refusal; the outer one a broker failure.
async fn resend(
    js: &jetstream::Context,
    dlq: &stream::Stream,
    group: &str,
    letter: &Stored,
) -> Result<Result<(), Refusal>, ConsumerError> {
    let original = match original_of(js, group, letter).await? {
        Ok(original) => original,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let topic = letter_topic(&letter.subject, group).unwrap_or_default();
    let mut headers: Vec<(String, String)> = headers_of(Some(&original.headers))
        .into_iter()
        .filter(|(n, _)| {
            !n.eq_ignore_ascii_case(MSG_ID_HEADER) && !n.to_ascii_lowercase().starts_with("dlq-")
        })
        .collect();
    if let Some(id) = original.headers.get(MSG_ID_HEADER) {
        headers.push(("Dlq-Original-Msg-Id".to_owned(), id.to_string()));
    }
    let subject = original.subject.to_string();
    headers.extend([
        // Replaying a letter twice within the window (a retried command) sends it once.
        (
            MSG_ID_HEADER.to_owned(),
            format!("replay.{DLQ_STREAM}.{}", letter.sequence),
        ),
        ("Dlq-Group".to_owned(), group.to_owned()),
        ("Dlq-Topic".to_owned(), topic.to_owned()),
        ("Dlq-Source-Stream".to_owned(), letter.source.0.clone()),
        (
            "Dlq-Source-Sequence".to_owned(),
            original.sequence.to_string(),
        ),
        ("Dlq-Source-Subject".to_owned(), subject.clone()),
    ]);
    js.publish_with_headers(
        replay_subject(group, topic, Some(&subject)),
        header_map(&headers),
        original.payload,
    )
    .await
    .map_err(ConsumerError::nats)?
    .await
    .map_err(ConsumerError::nats)?;
    dlq.delete_message(letter.sequence)
        .await
        .map_err(ConsumerError::nats)?;
    Ok(Ok(()))
}

/// The stored event a letter of `group` points at, when it matches the letter.
async fn original_of(
    js: &jetstream::Context,
    group: &str,
    letter: &Stored,
) -> Result<Result<jetstream::message::StreamMessage, Refusal>, ConsumerError> {
    let Some(topic) = letter_topic(&letter.subject, group) else {
        return Ok(Err(Refusal::NoSource));
    };
    let (stream_name, sequence) = (&letter.source.0, letter.source.1);
    if stream_name.is_empty() || sequence == 0 {
        return Ok(Err(Refusal::NoSource));
    }
    if stream_name == DLQ_STREAM || stream_name == REPLAY_STREAM {
        return Ok(Err(Refusal::NotAnEventStream(stream_name.clone())));
    }
    let gone = || {
        Ok(Err(Refusal::Gone {
            stream: stream_name.clone(),
            sequence,
        }))
    };
    let stream = match js.get_stream(stream_name).await {
        Ok(stream) => stream,
        Err(e) => {
            use jetstream::context::GetStreamErrorKind as Kind;
            match e.kind() {
                Kind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {
                    return gone();
                }
                // A name no stream can have was written by hand.
                Kind::InvalidStreamName | Kind::EmptyName => return gone(),
                _ => return Err(ConsumerError::nats(e)),
            }
        }
    };
    let original = match stream.get_raw_message(sequence).await {
        Ok(message) => message,
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return gone(),
        Err(e) => return Err(ConsumerError::nats(e)),
    };
    let of_topic = original
        .subject
        .strip_prefix(topic)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
    if !of_topic {
        return Ok(Err(Refusal::OtherTopic {
            topic: topic.to_owned(),
            stored: original.subject.to_string(),
        }));
    }
    if original.payload != letter.payload {
        return Ok(Err(Refusal::Differs {
            stream: stream_name.clone(),
            sequence,
        }));
    }
    Ok(Ok(original))
}

#[cfg(test)]
mod tests {
    use super::letter_topic;

    #[test]
    fn a_letters_topic_comes_from_its_subject_under_its_group() {
        assert_eq!(
            letter_topic("dlq.billing.order.created", "billing"),
            Some("order.created")
        );
        assert_eq!(letter_topic("dlq.billing2.order.created", "billing"), None);
        assert_eq!(letter_topic("dlq.billing.", "billing"), None);
        assert_eq!(
            letter_topic("replay.billing.order.created", "billing"),
            None
        );
    }
}
