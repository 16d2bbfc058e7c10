//! Topics this crate does not know: another team's stream, consumed with the group's guarantees.
//!
//! The contract's topics come from the topic table and decode into typed [`Event`]s. A
//! [`ForeignTopic`] adds a stream the table does not hold (say `PAYMENTS`, subjects
//! `payments.settled.>`) to a group without editing this crate: its messages reach the handler
//! as [`Event::Other`] with a [`RawEvent`], and go through the same machinery as the contract's
//! (a durable consumer named after the group, idempotency by event id, per-key order, parking,
//! dead letters, replay, the breaker). What the crate cannot know is said here, per topic:
//!
//! - where the ordering key is ([`OrderingKey`]): a token of the subject, or a header;
//! - where the event id is ([`EventIdFrom`]): `Nats-Msg-Id` by default, or a member of the
//!   body.
//!
//! A foreign body must be JSON, and a message without an id (or whose body is not JSON) is a
//! schema error: a dead letter at once, since without an id the group cannot tell a redelivery
//! from a new event.
//!
//! [`Event`]: super::Event
//! [`Event::Other`]: super::Event::Other
//! [`RawEvent`]: super::RawEvent

use crate::bus::MSG_ID_HEADER;

/// A topic of another stream than the contract's, for [`GroupConfig::with_foreign`].
///
/// ```
/// use order_service::consumer::{EventIdFrom, ForeignTopic, GroupConfig, OrderingKey};
///
/// // payments.settled.<region>.<payment id>: the payment id orders the events.
/// let settled = ForeignTopic::new("payments.settled", "PAYMENTS", "payments.settled.>")
///     .with_key(OrderingKey::Token(3))
///     .with_event_id(EventIdFrom::Field("/event_id".into()));
/// let config = GroupConfig::new("ledger", &[], "ledger.db").with_foreign(settled);
/// assert_eq!(config.foreign[0].stream, "PAYMENTS");
/// ```
///
/// [`GroupConfig::with_foreign`]: super::GroupConfig::with_foreign
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForeignTopic {
    /// What the group calls the topic: the dead letters' subject `dlq.<group>.<name>`, the
    /// processed-events table's `topic`, [`RawEvent::topic`](super::RawEvent::topic). One or
    /// more subject tokens (`payments.settled`), none of them a wildcard; not a contract topic.
    pub name: String,
    /// The stream that holds it; it must exist (the group does not create it) and be no other
    /// topic's of the group.
    pub stream: String,
    /// The subject filter of the group's consumer on the stream (`payments.settled.>`).
    pub filter: String,
    /// Where a message's ordering key is.
    pub key: OrderingKey,
    /// Where a message's event id is.
    pub event_id: EventIdFrom,
}

impl ForeignTopic {
    /// Topic `name` of `stream`, the messages matching `filter`; ordered by the subject's last
    /// token and identified by `Nats-Msg-Id`, as the contract's are.
    pub fn new(
        name: impl Into<String>,
        stream: impl Into<String>,
        filter: impl Into<String>,
    ) -> ForeignTopic {
        ForeignTopic {
            name: name.into(),
            stream: stream.into(),
            filter: filter.into(),
            key: OrderingKey::LastToken,
            event_id: EventIdFrom::Header(MSG_ID_HEADER.to_owned()),
        }
    }

    /// Where the ordering key is (see [`ForeignTopic::key`]).
    pub fn with_key(mut self, key: OrderingKey) -> ForeignTopic {
        self.key = key;
        self
    }

    /// Where the event id is (see [`ForeignTopic::event_id`]).
    pub fn with_event_id(mut self, event_id: EventIdFrom) -> ForeignTopic {
        self.event_id = event_id;
        self
    }

    /// Why the topic cannot be consumed as written, if it cannot.
    pub(super) fn problem(&self) -> Option<String> {
        let tokens_ok = |s: &str, wildcards: bool| {
            !s.is_empty()
                && s.split('.').all(|t| {
                    !t.is_empty()
                        && !t.chars().any(|c| c.is_whitespace())
                        && (wildcards || (t != "*" && t != ">"))
                })
        };
        if !tokens_ok(&self.name, false) {
            return Some(format!(
                "foreign topic {:?}: a name is subject tokens without wildcards",
                self.name
            ));
        }
        if crate::domain::Topic::parse(&self.name).is_some() {
            return Some(format!(
                "foreign topic {:?} is a topic of the contract: take it with the typed topics",
                self.name
            ));
        }
        if self.stream.is_empty()
            || self
                .stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
        {
            return Some(format!(
                "foreign topic {:?}: {:?} is not a stream name",
                self.name, self.stream
            ));
        }
        if !tokens_ok(&self.filter, true) {
            return Some(format!(
                "foreign topic {:?}: {:?} is not a subject filter",
                self.name, self.filter
            ));
        }
        let empty = match &self.event_id {
            EventIdFrom::Header(name) => name.is_empty(),
            EventIdFrom::Field(pointer) => !pointer.starts_with('/'),
        };
        if empty {
            return Some(format!(
                "foreign topic {:?}: an event id is a header name or a JSON pointer (`/event_id`)",
                self.name
            ));
        }
        None
    }
}

/// Where a foreign message's ordering key is: messages with one key are handled one after
/// another in stream order (and wait for each other's retries), different keys concurrently.
/// A message whose key is missing (no such token or header) has the empty key: all of them are
/// in one order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OrderingKey {
    /// The subject's last token, as the contract's `<topic>.<partition>.<key>`.
    LastToken,
    /// The subject's token at this index, from 0 (`payments.settled.eu.<id>`: 3).
    Token(usize),
    /// The value of this header (names case-insensitive).
    Header(String),
    /// None: the whole topic is one order (every message waits for the one before).
    Single,
}

impl OrderingKey {
    /// The key of a message on `subject` with `headers`.
    pub(super) fn of(&self, subject: &str, headers: &[(String, String)]) -> String {
        match self {
            OrderingKey::LastToken => subject.rsplit('.').next().unwrap_or_default().to_owned(),
            OrderingKey::Token(index) => subject
                .split('.')
                .nth(*index)
                .unwrap_or_default()
                .to_owned(),
            OrderingKey::Header(name) => headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            OrderingKey::Single => String::new(),
        }
    }
}

/// Where a foreign message's event id is: the key of idempotency, so a message published or
/// delivered twice is applied once.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventIdFrom {
    /// A header. For `Nats-Msg-Id`, a replayed dead letter's id is read from
    /// `Dlq-Original-Msg-Id`, where the dead letter moved it.
    Header(String),
    /// A member of the JSON body, by JSON pointer (`/event_id`); a string or a number.
    Field(String),
}
