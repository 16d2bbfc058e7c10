//! Finding rows the stream already holds, by `Nats-Msg-Id`, before sending them again.
//!
//! The stream drops a message whose `Nats-Msg-Id` it stored within its duplicate window; a row
//! sent again later than that (its first try ended without an answer: a PubAck timed out, a
//! connection dropped, a relay died) would be stored a second time. So such rows are looked up
//! first, per key: the row's subject in the stream is `<topic>.<partition>.<key>`, and per key
//! the relay stores rows in commit order, so the key's last message (`<topic>.*.<key>`) tells at
//! once whether the key has anything newer than what is known; only when it is not one of the
//! rows looked up are the key's messages walked, oldest first, at most [`WALK_MAX`] of them.
//! Nothing here scans the stream.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode, message::StreamMessage};
use futures::{StreamExt, TryStreamExt};

use crate::bus::{MSG_ID_HEADER, PublishError, TransientCause};
use crate::store::outbox::Due;

/// The most messages of one key looked at when its last message is not one of the rows.
const WALK_MAX: usize = 256;

/// Where `stream` holds each of `rows` (all of that stream) that it holds: row id -> sequence.
/// Keys are looked up `window` at a time, each request bounded by `timeout`; a failed lookup
/// is transient (the rows go out once the broker answers).
pub(super) async fn find(
    js: &jetstream::Context,
    stream: &str,
    rows: &[&Due],
    timeout: Duration,
    window: usize,
) -> Result<HashMap<i64, u64>, PublishError> {
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| unavailable(format!("stream {stream}: {e}")))?;
    // Each key's rows by event id, keys in the order first met.
    let mut keys: Vec<(String, HashMap<String, i64>)> = Vec::new();
    let mut key_at: HashMap<String, usize> = HashMap::new();
    for row in rows {
        let filter = format!("{}.*.{}", row.topic, row.key);
        let at = *key_at.entry(filter.clone()).or_insert_with(|| {
            keys.push((filter, HashMap::new()));
            keys.len() - 1
        });
        keys[at].1.insert(row.event_id.clone(), row.id);
    }
    // Owned futures: a closure lending `handle` to each would not be `Send` for every lifetime.
    let lookups: Vec<_> = keys
        .into_iter()
        .map(|(filter, ids)| find_key(handle.clone(), filter, ids, timeout))
        .collect();
    let found: Vec<Vec<(i64, u64)>> = futures::stream::iter(lookups)
        .buffer_unordered(window.max(1))
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// One key's rows, by event id: see the module's documentation.
async fn find_key(
    stream: Stream<()>,
    filter: String,
    ids: HashMap<String, i64>,
    timeout: Duration,
) -> Result<Vec<(i64, u64)>, PublishError> {
    let filter = filter.as_str();
    let last = match bounded(timeout, stream.get_last_raw_message_by_subject(filter)).await? {
        Ok(message) => message,
        // No message of the key, or no stream at all (sending finds that out and heals it).
        Err(e) if nothing_there(&e.kind()) => return Ok(Vec::new()),
        Err(e) => return Err(unavailable(format!("last message of {filter}: {e}"))),
    };
    let last_id = msg_id(&last);
    if let Some(id) = last_id.and_then(|last_id| ids.get(last_id))
        && ids.len() == 1
    {
        return Ok(vec![(*id, last.sequence)]);
    }
    // The last message is another row's, or one of several rows looked up: walk the key.
    let mut found = Vec::new();
    let mut from = 1;
    for _ in 0..WALK_MAX {
        let next = stream.get_first_raw_message_by_subject(filter, from);
        let message = match bounded(timeout, next).await? {
            Ok(message) => message,
            Err(e) if nothing_there(&e.kind()) => return Ok(found),
            Err(e) => return Err(unavailable(format!("messages of {filter}: {e}"))),
        };
        if let Some(id) = msg_id(&message).and_then(|m| ids.get(m)) {
            found.push((*id, message.sequence));
        }
        if found.len() == ids.len() || message.sequence >= last.sequence {
            return Ok(found);
        }
        from = message.sequence + 1;
    }
    tracing::warn!(
        subject = filter,
        "more than {WALK_MAX} messages of one key: rows not found among them are sent again"
    );
    Ok(found)
}

fn nothing_there(kind: &LastRawMessageErrorKind) -> bool {
    match kind {
        LastRawMessageErrorKind::NoMessageFound => true,
        LastRawMessageErrorKind::JetStream(error) => {
            error.error_code() == ErrorCode::STREAM_NOT_FOUND
        }
        _ => false,
    }
}

fn msg_id(message: &StreamMessage) -> Option<&str> {
    message
        .headers
        .get(MSG_ID_HEADER)
        .map(|value| value.as_str())
}

async fn bounded<T>(
    timeout: Duration,
    request: impl Future<Output = T>,
) -> Result<T, PublishError> {
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| PublishError::Transient(TransientCause::TimedOut(timeout)))
}

fn unavailable(text: String) -> PublishError {
    PublishError::Transient(TransientCause::BrokerUnavailable(text))
}
