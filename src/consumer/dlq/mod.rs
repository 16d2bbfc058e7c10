//! Dead letters: the stream `ORDER_DLQ`, what a dead letter carries, and listing, replaying and
//! purging them.
//!
//! A message a group cannot process is published on `dlq.<group>.<topic>` with its original body
//! and headers, plus `Dlq-*` headers: the reason (`schema`, `permanent` or `max_deliver`), the
//! error, the group, the source stream, sequence and subject, and the delivery count. The
//! original `Nats-Msg-Id` moves to `Dlq-Original-Msg-Id`, because the dead letter needs its own
//! id: `<group>.<stream>.<sequence>` of the delivery that failed, so a dead letter published
//! twice (a crash before the ack) is stored once, while two groups' dead letters of one event
//! are both kept.
//!
//! Replaying ([`replay`]) sends the event a dead letter points at, as its stream stored it (a
//! letter that does not match it is refused), onto `replay.<group>.<source subject>` (the
//! subject it was first delivered on, `<topic>.<partition>.<key>`) in the work-queue stream
//! `ORDER_DLQ_REPLAY`, which only that group consumes, and deletes the letter from `ORDER_DLQ`:
//! the group gets it once, other groups never see it, and the idempotency table still holds if
//! the event was in fact processed meanwhile. The partition in the subject takes a replay to the
//! process (and file) of its
//! partition when the group is split by partition (`replay.<group>.*.*.<P>.*`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use chrono::{DateTime, Utc};

mod replay;

pub use replay::{Refusal, Replayed, ReplayedOne, replay, replay_one, replay_telling};

use super::ConsumerError;
use super::message::{header_map, headers_of, nats_time};
use crate::bus::MSG_ID_HEADER;
use crate::table::{Column, Table};

/// The dead-letter stream.
pub const DLQ_STREAM: &str = "ORDER_DLQ";
/// The stream replays travel through, consumed by the group they are for.
pub const REPLAY_STREAM: &str = "ORDER_DLQ_REPLAY";
/// How long dead letters are kept.
pub const DLQ_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Dead letters published twice within this window are stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why a message became a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not JSON, an unknown major version, or an envelope or payload that does not parse.
    Schema,
    /// The handler said it can never process it.
    Permanent,
    /// It failed transiently on every one of `max_deliver` deliveries.
    MaxDeliver,
}

impl Reason {
    /// `schema`, `permanent` or `max_deliver`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Schema => "schema",
            Reason::Permanent => "permanent",
            Reason::MaxDeliver => "max_deliver",
        }
    }
}

/// A dead letter to publish.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The group that gave up.
    pub group: &'a str,
    /// The topic of the message.
    pub topic: &'a str,
    /// Why.
    pub reason: Reason,
    /// The error, as text.
    pub error: &'a str,
    /// The stream the message was delivered from (`ORDER_DLQ_REPLAY` for a replay).
    pub stream: &'a str,
    /// Its sequence there.
    pub stream_sequence: u64,
    /// Its subject there.
    pub subject: &'a str,
    /// Deliveries so far, this one included.
    pub delivered: u64,
    /// The original headers.
    pub headers: &'a [(String, String)],
    /// The original body.
    pub payload: &'a Bytes,
}

/// A dead letter as `ORDER_DLQ` stores it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its sequence in `ORDER_DLQ`.
    pub sequence: u64,
    /// `dlq.<group>.<topic>`.
    pub subject: String,
    /// When it was dead-lettered.
    pub time: DateTime<Utc>,
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// `schema`, `permanent` or `max_deliver`.
    pub reason: String,
    /// The error.
    pub error: String,
    /// The stream and sequence it was first delivered from.
    pub source: (String, u64),
    /// Deliveries when it was given up.
    pub delivered: u64,
    /// Every header, the original ones and the `Dlq-*` ones.
    pub headers: Vec<(String, String)>,
    /// The original body, or its first bytes when it was read cut ([`page`]'s `max_body`).
    pub payload: Bytes,
    /// The length of the body as stored, whether or not `payload` holds all of it.
    pub size: usize,
}

impl Stored {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The subject of a group's dead letters of a topic, or of all its topics.
pub fn subject(group: &str, topic: Option<&str>) -> String {
    match topic {
        Some(topic) => format!("dlq.{group}.{topic}"),
        None => format!("dlq.{group}.>"),
    }
}

/// The subject a replay of a group's dead letter of `topic`, first delivered on `source`, is
/// published on: `replay.<group>.<source>`, or `replay.<group>.<topic>` when the source is not
/// a subject of the topic (a letter without the header).
pub fn replay_subject(group: &str, topic: &str, source: Option<&str>) -> String {
    match source {
        Some(source)
            if source
                .strip_prefix(topic)
                .is_some_and(|rest| rest.starts_with('.')) =>
        {
            format!("replay.{group}.{source}")
        }
        _ => format!("replay.{group}.{topic}"),
    }
}

/// The topic of a replay's subject (`replay.<group>.<topic>[.<partition>.<key>]`); every topic
/// of the contract has two tokens.
pub fn replay_topic(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("replay.")?;
    let (_group, rest) = rest.split_once('.')?;
    let end = rest
        .match_indices('.')
        .nth(1)
        .map_or(rest.len(), |(at, _)| at);
    Some(&rest[..end])
}

/// Creates `ORDER_DLQ` and `ORDER_DLQ_REPLAY` when missing.
pub async fn ensure_streams(js: &jetstream::Context) -> Result<(), ConsumerError> {
    for config in [
        stream::Config {
            name: DLQ_STREAM.into(),
            description: Some("dead letters of the consumer groups: dlq.<group>.<topic>".into()),
            subjects: vec!["dlq.>".into()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            max_age: DLQ_RETENTION,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: 1,
            ..Default::default()
        },
        stream::Config {
            name: REPLAY_STREAM.into(),
            description: Some(
                "dead letters sent back to their group: replay.<group>.<topic>".into(),
            ),
            subjects: vec!["replay.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: DLQ_RETENTION,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: 1,
            ..Default::default()
        },
    ] {
        js.get_or_create_stream(config)
            .await
            .map_err(ConsumerError::nats)?;
    }
    Ok(())
}

/// Publishes a dead letter and waits for the stream to store it.
pub async fn publish(
    js: &jetstream::Context,
    letter: &DeadLetter<'_>,
) -> Result<(), ConsumerError> {
    let mut headers: Vec<(String, String)> = Vec::with_capacity(letter.headers.len() + 10);
    let replayed = letter.stream == REPLAY_STREAM;
    // A replay carries the original id in Dlq-Original-Msg-Id; its own Nats-Msg-Id is the
    // replay's.
    let original_header = if replayed {
        "Dlq-Original-Msg-Id"
    } else {
        MSG_ID_HEADER
    };
    let mut original_id = None;
    for (name, value) in letter.headers {
        if name.eq_ignore_ascii_case(original_header) {
            original_id = Some(value.clone());
        }
        if !name.eq_ignore_ascii_case(MSG_ID_HEADER)
            && !name.to_ascii_lowercase().starts_with("dlq-")
        {
            headers.push((name.clone(), value.clone()));
        }
    }
    let error: String = letter
        .error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect();
    headers.extend([
        (
            MSG_ID_HEADER.to_owned(),
            format!(
                "{}.{}.{}",
                letter.group, letter.stream, letter.stream_sequence
            ),
        ),
        ("Dlq-Reason".to_owned(), letter.reason.as_str().to_owned()),
        ("Dlq-Error".to_owned(), error),
        ("Dlq-Group".to_owned(), letter.group.to_owned()),
        ("Dlq-Topic".to_owned(), letter.topic.to_owned()),
        ("Dlq-Delivered".to_owned(), letter.delivered.to_string()),
        ("Dlq-Time".to_owned(), Utc::now().to_rfc3339()),
    ]);
    // A replayed letter keeps pointing at where the event first came from.
    let (source_stream, source_seq, source_subject) = if replayed {
        let find = |name: &str| {
            letter
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        (
            find("Dlq-Source-Stream"),
            find("Dlq-Source-Sequence"),
            find("Dlq-Source-Subject"),
        )
    } else {
        (
            letter.stream.to_owned(),
            letter.stream_sequence.to_string(),
            letter.subject.to_owned(),
        )
    };
    headers.extend([
        ("Dlq-Source-Stream".to_owned(), source_stream),
        ("Dlq-Source-Sequence".to_owned(), source_seq),
        ("Dlq-Source-Subject".to_owned(), source_subject),
    ]);
    if let Some(id) = original_id {
        headers.push(("Dlq-Original-Msg-Id".to_owned(), id));
    }
    if replayed {
        headers.push(("Dlq-Replayed".to_owned(), "true".to_owned()));
    }
    let map = header_map(&headers);
    js.publish_with_headers(
        subject(letter.group, Some(letter.topic)),
        map,
        letter.payload.clone(),
    )
    .await
    .map_err(ConsumerError::nats)?
    .await
    .map_err(ConsumerError::nats)?;
    Ok(())
}

/// The group's dead letters (of one topic, or all), oldest first, bodies whole. This holds every
/// letter in memory at once: what may hold many large letters reads them by [`page`] instead.
pub async fn list(
    js: &jetstream::Context,
    group: &str,
    topic: Option<&str>,
) -> Result<Vec<Stored>, ConsumerError> {
    let (letters, _) = page(js, group, topic, 0, usize::MAX, usize::MAX).await?;
    Ok(letters)
}

/// At most `limit` of the group's dead letters (of one topic, or all) after the `ORDER_DLQ`
/// sequence `after`, oldest first, and whether more follow. Each body is kept up to `max_body`
/// bytes (`size` tells its whole length): what a page holds in memory is bounded by `limit`
/// times `max_body`, whatever the stream holds, and only one whole body is held at a time, while
/// it is read.
pub async fn page(
    js: &jetstream::Context,
    group: &str,
    topic: Option<&str>,
    after: u64,
    limit: usize,
    max_body: usize,
) -> Result<(Vec<Stored>, bool), ConsumerError> {
    ensure_streams(js).await?;
    let stream = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(ConsumerError::nats)?;
    let filter = subject(group, topic);
    let mut letters = Vec::new();
    let mut next = after.saturating_add(1);
    while let Some(message) = next_letter(&stream, &filter, next).await? {
        if letters.len() == limit {
            return Ok((letters, true));
        }
        next = message.sequence + 1;
        letters.push(cut(stored(message), max_body));
    }
    Ok((letters, false))
}

/// The first message on `filter` at or after `sequence`, `None` when there is none.
async fn next_letter(
    stream: &stream::Stream,
    filter: &str,
    sequence: u64,
) -> Result<Option<jetstream::message::StreamMessage>, ConsumerError> {
    match stream
        .raw_message_builder()
        .sequence(sequence)
        .next_by_subject(filter.to_owned())
        .send()
        .await
    {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(ConsumerError::nats(e)),
    }
}

/// The letter with its body cut to `max_body` bytes. The cut is a copy: a slice would share, and
/// so keep alive, the whole body it was read with.
fn cut(mut letter: Stored, max_body: usize) -> Stored {
    if letter.payload.len() > max_body {
        letter.payload = Bytes::copy_from_slice(&letter.payload[..max_body]);
    }
    letter
}

/// A message of `ORDER_DLQ` as a [`Stored`] letter.
fn stored(message: jetstream::message::StreamMessage) -> Stored {
    let headers = headers_of(Some(&message.headers));
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    Stored {
        sequence: message.sequence,
        subject: message.subject.to_string(),
        time: nats_time(message.time.unix_timestamp_nanos()),
        group: get("Dlq-Group"),
        topic: get("Dlq-Topic"),
        reason: get("Dlq-Reason"),
        error: get("Dlq-Error"),
        source: (
            get("Dlq-Source-Stream"),
            get("Dlq-Source-Sequence").parse().unwrap_or(0),
        ),
        delivered: get("Dlq-Delivered").parse().unwrap_or(0),
        headers,
        size: message.payload.len(),
        payload: message.payload,
    }
}

/// Deletes the group's dead letters (of one topic, or all); returns how many.
pub async fn purge(
    js: &jetstream::Context,
    group: &str,
    topic: Option<&str>,
) -> Result<u64, ConsumerError> {
    ensure_streams(js).await?;
    let stream = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(ConsumerError::nats)?;
    let purged = stream
        .purge()
        .filter(subject(group, topic))
        .await
        .map_err(ConsumerError::nats)?;
    Ok(purged.purged)
}

/// Dead letters held per (group, topic).
pub async fn counts(
    js: &jetstream::Context,
) -> Result<BTreeMap<(String, String), u64>, ConsumerError> {
    use futures::TryStreamExt;
    let mut counts = BTreeMap::new();
    let Ok(stream) = js.get_stream(DLQ_STREAM).await else {
        return Ok(counts);
    };
    let mut subjects = stream
        .info_builder()
        .subjects("dlq.>")
        .fetch()
        .await
        .map_err(ConsumerError::nats)?;
    while let Some((subject, count)) = subjects.try_next().await.map_err(ConsumerError::nats)? {
        let mut parts = subject.splitn(3, '.');
        let (_, Some(group), Some(topic)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        counts.insert((group.to_owned(), topic.to_owned()), count as u64);
    }
    Ok(counts)
}

/// The dead letters as a table for the terminal.
pub fn format_table(letters: &[Stored]) -> String {
    let mut table = Table::new(
        " ",
        [
            Column::left("seq").width(6),
            Column::left("time").width(20),
            Column::left("topic").width(28),
            Column::left("reason").width(12),
            Column::right("dlv").width(4),
            Column::left("source").width(26),
            Column::left("event_id").width(36),
            Column::left("error"),
        ],
    );
    for l in letters {
        table.row(vec![
            l.sequence.to_string(),
            l.time.format("%Y-%m-%d %H:%M:%S").to_string(),
            l.topic.clone(),
            l.reason.clone(),
            l.delivered.to_string(),
            format!("{}#{}", l.source.0, l.source.1),
            l.header("Dlq-Original-Msg-Id").unwrap_or("-").to_owned(),
            l.error.clone(),
        ]);
    }
    let mut out = table.render();
    let _ = writeln!(out, "{} dead letter(s)", letters.len());
    out
}

#[cfg(test)]
mod tests {
    use super::{replay_subject, replay_topic};

    #[test]
    fn a_replay_keeps_its_source_subject_and_so_its_partition() {
        let source = "order.created.2.abc";
        let subject = replay_subject("g", "order.created", Some(source));
        assert_eq!(subject, "replay.g.order.created.2.abc");
        assert_eq!(replay_topic(&subject), Some("order.created"));
        // A letter without its source header, and the form before partitions.
        let old = replay_subject("g", "order.created", None);
        assert_eq!(old, "replay.g.order.created");
        assert_eq!(replay_topic(&old), Some("order.created"));
        assert_eq!(
            replay_subject("g", "order.created", Some("order.created_x.1.k")),
            "replay.g.order.created"
        );
        assert_eq!(replay_topic("replay.g"), None);
    }

    /// A replay's subject gives back the topic it was made for, whatever the source subject, and
    /// any subject at all is read without a panic.
    #[test]
    fn a_replay_subject_gives_back_its_topic() {
        use proptest::prelude::*;
        let token = "[a-z0-9_-]{1,12}";
        let strategy = (
            token,
            (token, token).prop_map(|(a, b)| format!("{a}.{b}")),
            prop::option::of(prop::collection::vec(token, 0..4)),
            any::<String>(),
        );
        crate::seeded::runner("replay subjects")
            .run(&strategy, |(group, topic, rest, anything)| {
                let _ = replay_topic(&anything);
                // The source subject is `<topic>.<partition>.<key>`, or absent, or another topic's.
                let source = rest.map(|rest| {
                    [topic.clone()]
                        .into_iter()
                        .chain(rest)
                        .collect::<Vec<_>>()
                        .join(".")
                });
                let subject = replay_subject(&group, &topic, source.as_deref());
                prop_assert_eq!(replay_topic(&subject), Some(topic.as_str()), "{}", subject);
                Ok(())
            })
            .unwrap();
    }
}
