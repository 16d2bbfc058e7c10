//! Where and how a message reached a consumer group's handler, and what the handler answers when
//! it cannot process the event.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

/// Where and how a message arrived.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The stored subject, `<topic>.<partition>.<key>`.
    pub subject: String,
    /// The stream it came from (`ORDER_DLQ_REPLAY` for a replayed dead letter).
    pub stream: String,
    /// Its sequence in that stream.
    pub stream_sequence: u64,
    /// How many times it has been delivered to this group, this time included (1 the first time).
    pub delivered: u64,
    /// When the broker stored it.
    pub published: DateTime<Utc>,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body, byte for byte.
    pub payload: Bytes,
}

impl Delivery {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a replayed dead letter (`dlq replay`) rather than the topic's own delivery:
    /// the event may be older than what the handler has processed since.
    pub fn is_replay(&self) -> bool {
        self.stream == crate::consumer::dlq::REPLAY_STREAM
    }

    /// For a replay, the stream and sequence the event was first delivered from; a handler that
    /// keeps the last sequence it applied per order can tell a stale event by it.
    pub fn original(&self) -> Option<(&str, u64)> {
        if !self.is_replay() {
            return None;
        }
        let stream = self.header("Dlq-Source-Stream")?;
        let sequence = self.header("Dlq-Source-Sequence")?.parse().ok()?;
        Some((stream, sequence))
    }

    /// For an event the service's broker-loss repair put back (the stream had lost it), the
    /// sequence it had first: it may come after newer events of its order, so a handler that
    /// keeps per order what it applied can tell it is older. The header is
    /// `Repaired-From-Sequence`.
    pub fn repaired_from(&self) -> Option<u64> {
        self.header("Repaired-From-Sequence")?.parse().ok()
    }

    /// The partition token of the subject, when it has the stored form.
    pub fn partition(&self) -> Option<u32> {
        let mut tokens = self.subject.rsplitn(3, '.');
        let _key = tokens.next()?;
        tokens.next()?.parse().ok()
    }
}

/// The error behind a [`Failure`], shared so that a failure stays `Clone`.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a handler did not process an event: whether trying again may help, what to say, and the
/// error behind it when there is one ([`std::error::Error::source`]). The dead letter's
/// `Dlq-Error` says both ([`Failure::describe`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// Might work later (a dependency is down, a lock timed out): the event is delivered again
    /// after the group's backoff, until the handler ran `max_deliver` times; then it is a dead
    /// letter.
    #[error("transient: {why}")]
    Transient {
        /// What went wrong.
        why: String,
        /// The error behind it.
        #[source]
        cause: Option<Cause>,
    },
    /// Will never work (the event contradicts the handler's state): a dead letter at once.
    #[error("permanent: {why}")]
    Permanent {
        /// What went wrong.
        why: String,
        /// The error behind it.
        #[source]
        cause: Option<Cause>,
    },
}

impl Failure {
    /// A [`Failure::Transient`] with this text.
    pub fn transient(why: impl Into<String>) -> Failure {
        Failure::Transient {
            why: why.into(),
            cause: None,
        }
    }

    /// A [`Failure::Permanent`] with this text.
    pub fn permanent(why: impl Into<String>) -> Failure {
        Failure::Permanent {
            why: why.into(),
            cause: None,
        }
    }

    /// A [`Failure::Transient`] with this text, caused by `cause`.
    pub fn transient_because(
        why: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Failure {
        Failure::Transient {
            why: why.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// A [`Failure::Permanent`] with this text, caused by `cause`.
    pub fn permanent_because(
        why: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Failure {
        Failure::Permanent {
            why: why.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// Whether trying again may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient { .. })
    }

    /// What went wrong, without the cause.
    pub fn why(&self) -> &str {
        match self {
            Failure::Transient { why, .. } | Failure::Permanent { why, .. } => why,
        }
    }

    /// What went wrong and, after `: `, each error of the cause's chain: what a dead letter says.
    pub fn describe(&self) -> String {
        let mut text = self.why().to_owned();
        let mut next = std::error::Error::source(self);
        while let Some(error) = next {
            let said = error.to_string();
            // A text that already quotes its cause (`database: {error}`) does not repeat it.
            if !text.ends_with(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
            next = error.source();
        }
        text
    }
}

/// Two failures are equal when they are of one kind and say the same; causes are not compared.
impl PartialEq for Failure {
    fn eq(&self, other: &Failure) -> bool {
        self.is_transient() == other.is_transient() && self.why() == other.why()
    }
}

impl Eq for Failure {}

impl From<rusqlite::Error> for Failure {
    /// A database error is taken as transient (busy, full disk); a bug that repeats ends in the
    /// dead letters after `max_deliver` anyway. The error is kept as the cause.
    fn from(error: rusqlite::Error) -> Failure {
        // A full disk or a lock is the group's fault, not the event's: the worker holds the
        // message instead of retrying it (see consumer::breaker).
        crate::consumer::breaker::note_store_error(&error);
        Failure::transient_because("database", error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_its_cause_and_says_it() {
        let cause = rusqlite::Error::InvalidColumnName("qty".into());
        let failure = Failure::from(cause);
        assert!(failure.is_transient());
        assert_eq!(failure.why(), "database");
        let source = std::error::Error::source(&failure).expect("the cause is kept");
        assert!(source.to_string().contains("qty"), "{source}");
        assert_eq!(failure.describe(), format!("database: {source}"));
        let plain = Failure::permanent("refused");
        assert!(std::error::Error::source(&plain).is_none());
        assert_eq!(plain.describe(), "refused");
        assert_eq!(plain, Failure::permanent("refused"));
        assert_ne!(plain, Failure::transient("refused"));
    }

    #[test]
    fn partition_is_the_middle_token() {
        let delivery = Delivery {
            subject: "order.created.2.abc".into(),
            stream: "ORDER_CREATED".into(),
            stream_sequence: 1,
            delivered: 1,
            published: Utc::now(),
            headers: vec![("Nats-Msg-Id".into(), "x".into())],
            payload: Bytes::new(),
        };
        assert_eq!(delivery.partition(), Some(2));
        assert_eq!(delivery.header("nats-msg-id"), Some("x"));
    }
}
