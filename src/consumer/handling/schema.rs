//! Why a message is not an event this consumer can read: the error of decoding a typed event and
//! of reading another team's, which sends the message to the dead letters at once.

/// Why a message is not an event this consumer can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);
