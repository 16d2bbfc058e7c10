//! The history of a campaign, as Jepsen keeps it: every command a client sent, when, and what
//! came back. An answer is a definite success (2xx), a definite failure (a 4xx the API promises
//! wrote nothing), or unknown (Jepsen's `:info`): a timeout, a connection error, 408 (the
//! command may already be with the database writer) or 5xx. Every command carries its own
//! `X-Correlation-ID`, which its events repeat in `metadata.correlation_id`: that is how the
//! checker finds what a command committed.

use std::time::Duration;

/// A command of the order API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Command {
    /// `POST /orders` as the customer.
    Create,
    /// `POST /orders` as an admin for a customer, with a stock override.
    AdminCreate,
    /// `POST /chat/orders` as the AI.
    ChatCreate,
    /// `PATCH /orders/{id}`: a new shipping address.
    Update,
    /// `POST /orders/{id}/status`: processing, shipped or delivered.
    Status,
    /// `POST /orders/{id}/confirm`.
    Confirm,
    /// `POST /orders/{id}/cancel`.
    Cancel,
    /// `POST /orders/{id}/stock-override`.
    StockOverride,
    /// `POST /orders/{id}/chat-links`.
    ChatLink,
    /// `PUT /products/{id}/stock` (writes no event).
    SetStock,
}

impl Command {
    /// The topic a success of this command must have written (none for stock).
    pub fn evidence(self) -> Option<&'static str> {
        Some(match self {
            Command::Create | Command::AdminCreate => "order.created",
            Command::ChatCreate => "order.chat_created",
            Command::Update => "order.updated",
            Command::Status => "order.status_changed",
            Command::Confirm => "order.confirmed",
            Command::Cancel => "order.cancelled",
            Command::StockOverride => "order.stock_override_applied",
            Command::ChatLink => "order.chat_linked",
            Command::SetStock => return None,
        })
    }

    /// Whether a success answers a new order (its id in the body).
    pub fn creates(self) -> bool {
        matches!(
            self,
            Command::Create | Command::AdminCreate | Command::ChatCreate
        )
    }
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx: the command committed.
    Ok(u16),
    /// A 4xx other than 408: the command wrote nothing.
    Failed(u16),
    /// No answer, or one that does not say whether it committed.
    Unknown(String),
}

/// One command and its answer.
#[derive(Debug, Clone)]
pub struct Op {
    /// The client that sent it.
    pub client: usize,
    /// What it was.
    pub command: Command,
    /// The order (or product, for stock) it was about; for a create, the answered order id.
    pub target: Option<String>,
    /// Its `X-Correlation-ID`.
    pub correlation: String,
    /// When it was sent and when the answer (or the error) came, from the start of the load.
    pub sent: Duration,
    /// See `sent`.
    pub answered: Duration,
    /// The answer.
    pub outcome: Outcome,
}

impl Op {
    /// The op in one line, for the log.
    pub fn describe(&self) -> String {
        format!(
            "client {} {:?} {} (correlation {}) sent at {:.3} s, answered {:?} at {:.3} s",
            self.client,
            self.command,
            self.target.as_deref().unwrap_or("-"),
            self.correlation,
            self.sent.as_secs_f64(),
            self.outcome,
            self.answered.as_secs_f64()
        )
    }
}

/// How an HTTP status classifies.
pub fn classify(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Ok(status),
        408 | 500..=599 => Outcome::Unknown(format!("HTTP {status}")),
        _ => Outcome::Failed(status),
    }
}

/// The longest time in `[0, end]` without a successful answer: the command stall.
pub fn longest_without_success(ops: &[Op], end: Duration) -> Duration {
    let mut times: Vec<Duration> = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Ok(_)))
        .map(|op| op.answered)
        .collect();
    times.push(end);
    times.sort();
    let mut last = Duration::ZERO;
    let mut longest = Duration::ZERO;
    for t in times {
        longest = longest.max(t.saturating_sub(last));
        last = last.max(t);
    }
    longest
}
