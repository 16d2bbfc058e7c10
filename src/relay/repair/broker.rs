//! What verify asks the broker about one stream: its state (first and last sequence, how many
//! messages, the sequences it reports deleted), and the `Nats-Msg-Id` at a sequence. A clean
//! check makes a fixed number of these calls per stream, whatever the number of rows.

use std::ops::RangeInclusive;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode};
use chrono::{DateTime, Utc};

use super::RepairError;
use crate::bus::MSG_ID_HEADER;

/// A stream as verify sees it.
pub(super) struct StreamState {
    /// The stream, to read messages from.
    pub stream: Stream,
    /// When the server created it.
    pub created: DateTime<Utc>,
    /// The lowest sequence it still holds (its last plus one when it is empty).
    pub first: u64,
    /// The last sequence it gave.
    pub last: u64,
    /// The sequences between `first` and `last` it no longer holds, as ranges, ascending.
    pub deleted: Vec<RangeInclusive<u64>>,
    /// Messages older than this it drops by its own `max_age`; `None` without one.
    pub expires_before: Option<DateTime<Utc>>,
}

impl StreamState {
    /// How many of `from..=to` (within `first..=last`) are deleted.
    pub fn deleted_in(&self, from: u64, to: u64) -> u64 {
        self.deleted
            .iter()
            .map(|range| {
                let (start, end) = ((*range.start()).max(from), (*range.end()).min(to));
                if start > end { 0 } else { end - start + 1 }
            })
            .sum()
    }

    /// Whether the stream holds a message at `sequence`.
    pub fn holds(&self, sequence: u64) -> bool {
        sequence >= self.first
            && sequence <= self.last
            && !self.deleted.iter().any(|range| range.contains(&sequence))
    }
}

/// The stream `name` and its state, `None` when the server has no such stream. Two calls: the
/// stream's info, waited for up to `patience` (the client's request timeout when `None`), and
/// its deleted sequences only when it reports some.
pub(super) async fn state(
    js: &jetstream::Context,
    name: &str,
    patience: Option<Duration>,
) -> Result<Option<StreamState>, RepairError> {
    let broker = |error: String| RepairError::Broker {
        stream: name.to_owned(),
        error,
    };
    let info = js.get_stream(name);
    let answer = match patience {
        Some(patience) => match tokio::time::timeout(patience, info).await {
            Ok(answer) => answer,
            Err(_) => {
                return Err(broker(format!(
                    "no answer within {} s (no leader?)",
                    patience.as_secs_f32()
                )));
            }
        },
        None => info.await,
    };
    let stream = match answer {
        Ok(stream) => stream,
        Err(error) => {
            return match error.kind() {
                GetStreamErrorKind::JetStream(api)
                    if api.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(broker(error.to_string())),
            };
        }
    };
    let info = stream.cached_info().clone();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    // Holes: a span of sequences the stream does not hold. The count is free in the info; the
    // list is asked for only when there is one.
    let span = if last >= first { last - first + 1 } else { 0 };
    let holes = span.saturating_sub(info.state.messages);
    let deleted = if holes == 0 {
        Vec::new()
    } else {
        let details = stream
            .info_builder()
            .with_deleted(true)
            .fetch()
            .await
            .map_err(|e| broker(e.to_string()))?;
        let mut list = details.info.state.deleted.unwrap_or_default();
        if (list.len() as u64) < holes {
            return Err(broker(format!(
                "the stream reports {holes} missing sequences but lists {}",
                list.len()
            )));
        }
        list.sort_unstable();
        ranges(&list)
    };
    let nanos = info.created.unix_timestamp_nanos();
    let created = DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX));
    let expires_before = chrono::Duration::from_std(info.config.max_age)
        .ok()
        .filter(|age| !age.is_zero())
        .map(|age| Utc::now() - age);
    Ok(Some(StreamState {
        stream,
        created,
        first,
        last,
        deleted,
        expires_before,
    }))
}

/// Sorted sequences as ranges of consecutive ones.
fn ranges(sorted: &[u64]) -> Vec<RangeInclusive<u64>> {
    let mut out: Vec<RangeInclusive<u64>> = Vec::new();
    for &sequence in sorted {
        match out.last_mut() {
            Some(range) if *range.end() + 1 == sequence => *range = *range.start()..=sequence,
            Some(range) if *range.end() >= sequence => {}
            _ => out.push(sequence..=sequence),
        }
    }
    out
}

/// The `Nats-Msg-Id` of the message at `sequence` (empty when it has none), `None` when the
/// stream holds no message there.
pub(super) async fn message_id(
    stream: &Stream,
    sequence: u64,
) -> Result<Option<String>, RepairError> {
    match stream.get_raw_message(sequence).await {
        Ok(message) => Ok(Some(
            message
                .headers
                .get(MSG_ID_HEADER)
                .map(ToString::to_string)
                .unwrap_or_default(),
        )),
        Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(error) => Err(RepairError::Broker {
            stream: stream.cached_info().config.name.clone(),
            error: error.to_string(),
        }),
    }
}

/// Deletes the message at `sequence`: a second copy of an event the stream holds already. A
/// sequence the stream no longer holds is no copy any more (an earlier delete whose answer was
/// lost, or a leader whose history lacks it): nothing to do.
pub(super) async fn delete(stream: &Stream, sequence: u64) -> Result<(), RepairError> {
    use async_nats::jetstream::{ErrorCode, stream::DeleteMessageErrorKind};
    match stream.delete_message(sequence).await {
        Ok(_) => Ok(()),
        Err(error)
            if matches!(error.kind(), DeleteMessageErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::SEQUENCE_NOT_FOUND) =>
        {
            Ok(())
        }
        Err(error) => Err(RepairError::Broker {
            stream: stream.cached_info().config.name.clone(),
            error: format!("deleting the copy at {sequence}: {error}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_sequences_become_ranges() {
        assert_eq!(ranges(&[]), vec![]);
        assert_eq!(ranges(&[3, 4, 5, 9, 11, 12]), vec![3..=5, 9..=9, 11..=12]);
        assert_eq!(ranges(&[2, 2, 3]), vec![2..=3], "a repeated sequence");
    }
}
