//! NATS messages as the consumer side reads and writes them: headers as ordered pairs, broker
//! timestamps as UTC, bodies as text.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};

/// Headers as name-value pairs, in the order the map keeps them, without the broker's
/// `Nats-Batch-*` headers: they belong to how the relay published the event (an atomic batch),
/// not to the event, and a dead letter or replay carrying them would be taken for part of a batch.
pub(crate) fn headers_of(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    headers
        .map(|map| {
            map.iter()
                .filter(|(name, _)| !is_batch_header(name.as_ref()))
                .flat_map(|(name, values)| {
                    values
                        .iter()
                        .map(move |value| (name.to_string(), value.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn is_batch_header(name: &str) -> bool {
    name.get(..11)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("Nats-Batch-"))
}

/// A header map of pairs; pairs the protocol cannot carry are left out.
pub(crate) fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(name), HeaderValue::from_str(value)) {
            map.append(name, value);
        }
    }
    map
}

/// A broker timestamp (nanoseconds since the epoch) as UTC.
pub(crate) fn nats_time(nanos: i128) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// The body of a message as text, for logs and the terminal.
pub(crate) fn body_text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}
