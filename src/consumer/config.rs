//! A consumer group's settings, checked, and the JetStream consumer configs they imply: one
//! durable pull consumer per topic stream (the contract's and the foreign ones), and one on the
//! group's replayed dead letters.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};

use super::ConsumerError;
use super::foreign::ForeignTopic;
use crate::domain::Topic;

/// A consumer group's settings: [`GroupConfig::new`] with the defaults, then the `with_` methods
/// (or the fields) for what to change:
///
/// ```
/// use std::time::Duration;
/// use order_service::consumer::GroupConfig;
/// use order_service::domain::Topic;
///
/// let config = GroupConfig::new("inventory", &[Topic::Created], "inventory.db")
///     .with_partition(2)
///     .with_max_deliver(3)
///     .with_handler_timeout(Duration::from_secs(5));
/// assert_eq!(config.consumer_name(), "inventory-p2");
/// ```
///
/// Non-exhaustive, so that a setting added later breaks no user: it cannot be built with a
/// struct literal outside this crate, not even one that takes the rest from `new`:
///
/// ```compile_fail
/// use order_service::consumer::GroupConfig;
/// use order_service::domain::Topic;
///
/// let config = GroupConfig {
///     max_deliver: 3,
///     ..GroupConfig::new("inventory", &[Topic::Created], "inventory.db")
/// };
/// ```
///
/// ```
/// use order_service::consumer::GroupConfig;
/// use order_service::domain::Topic;
///
/// let mut config = GroupConfig::new("inventory", &[Topic::Created], "inventory.db");
/// config.max_deliver = 3;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupConfig {
    /// The group's name, also its consumers' durable name: letters, digits, `-` and `_`.
    pub group: String,
    /// The topics of the contract it takes.
    pub topics: Vec<Topic>,
    /// The topics of other streams it takes, which this crate does not know: their messages
    /// reach the handler as [`Event::Other`](super::Event::Other) (see [`ForeignTopic`]).
    pub foreign: Vec<ForeignTopic>,
    /// Only this partition of each topic (`<topic>.<P>.>`); `None` for every partition.
    pub partition: Option<u32>,
    /// The group's SQLite file: processed events and the handler's own state.
    pub database: PathBuf,
    /// `synchronous=FULL` for the database (an acknowledged event's effects survive power loss);
    /// `NORMAL` survives a crash of the process only.
    pub synchronous_full: bool,
    /// Runs of the handler for a message that fail transiently before it is a dead letter.
    /// Deliveries in which the handler did not run (sent back unstarted at a stop, parked behind
    /// its order, held by a process that died) do not count; the broker's own `max_deliver` is
    /// four times this, a backstop for a message whose handler takes the process down.
    pub max_deliver: i64,
    /// Waits before redelivering a transiently failed message: the n-th failure waits the n-th
    /// entry, the last entry repeating.
    pub backoff: Vec<Duration>,
    /// How long the broker waits for an ack before it delivers a message again.
    pub ack_wait: Duration,
    /// Messages delivered and not yet acknowledged, at most; 1 keeps a strict order per key
    /// across retries (see the module docs).
    pub max_ack_pending: i64,
    /// Messages pulled at once, at most. A batch is handled in rounds, one transaction each:
    /// round `r` holds the `r`-th message of each order in the batch.
    pub batch_size: usize,
    /// Events of different orders whose [`Handler::prepare`](super::Handler::prepare) runs at
    /// once, at most, within one worker.
    pub concurrency: usize,
    /// How long one call of the handler may take; past it, the call is dropped at its next
    /// `.await` and the message is a transient failure.
    pub handler_timeout: Duration,
    /// How long the group's database connections wait for another writer of the file before the
    /// group's circuit breaker opens.
    pub busy_timeout: Duration,
}

/// The broker's `max_deliver` per run of the handler the group allows (see `run::attempts`).
pub(crate) const DELIVERIES_PER_RUN: i64 = 4;

impl GroupConfig {
    /// Defaults: every partition, `max_deliver` 5, backoff 1 s, 5 s, 30 s, 2 min, `ack_wait`
    /// 30 s, up to 1,000 unacknowledged, batches of 100, 16 orders prepared at once,
    /// `synchronous=FULL`, a handler timeout of 30 s, a busy timeout of 10 s.
    pub fn new(group: impl Into<String>, topics: &[Topic], database: impl Into<PathBuf>) -> Self {
        GroupConfig {
            group: group.into(),
            topics: topics.to_vec(),
            foreign: Vec::new(),
            partition: None,
            database: database.into(),
            synchronous_full: true,
            max_deliver: 5,
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120),
            ],
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            batch_size: 100,
            concurrency: 16,
            handler_timeout: Duration::from_secs(30),
            busy_timeout: Duration::from_secs(10),
        }
    }

    /// Strict order per key across retries: `max_ack_pending = 1`.
    pub fn ordered(mut self) -> Self {
        self.max_ack_pending = 1;
        self
    }

    /// Takes a topic of another stream too (see [`GroupConfig::foreign`]).
    pub fn with_foreign(mut self, topic: ForeignTopic) -> Self {
        self.foreign.push(topic);
        self
    }

    /// Only partition `p` of each topic (see [`GroupConfig::partition`]).
    pub fn with_partition(mut self, value: u32) -> Self {
        self.partition = Some(value);
        self
    }

    /// `synchronous=FULL` or `NORMAL` (see [`GroupConfig::synchronous_full`]).
    pub fn with_synchronous_full(mut self, value: bool) -> Self {
        self.synchronous_full = value;
        self
    }

    /// Runs of the handler before a dead letter (see [`GroupConfig::max_deliver`]).
    pub fn with_max_deliver(mut self, value: i64) -> Self {
        self.max_deliver = value;
        self
    }

    /// The waits before redeliveries (see [`GroupConfig::backoff`]).
    pub fn with_backoff(mut self, value: Vec<Duration>) -> Self {
        self.backoff = value;
        self
    }

    /// The broker's wait for an ack (see [`GroupConfig::ack_wait`]).
    pub fn with_ack_wait(mut self, value: Duration) -> Self {
        self.ack_wait = value;
        self
    }

    /// Messages unacknowledged at most (see [`GroupConfig::max_ack_pending`]).
    pub fn with_max_ack_pending(mut self, value: i64) -> Self {
        self.max_ack_pending = value;
        self
    }

    /// Messages pulled at once at most (see [`GroupConfig::batch_size`]).
    pub fn with_batch_size(mut self, value: usize) -> Self {
        self.batch_size = value;
        self
    }

    /// Orders prepared at once at most (see [`GroupConfig::concurrency`]).
    pub fn with_concurrency(mut self, value: usize) -> Self {
        self.concurrency = value;
        self
    }

    /// The longest one call of the handler (see [`GroupConfig::handler_timeout`]).
    pub fn with_handler_timeout(mut self, value: Duration) -> Self {
        self.handler_timeout = value;
        self
    }

    /// The wait for another writer of the file (see [`GroupConfig::busy_timeout`]).
    pub fn with_busy_timeout(mut self, value: Duration) -> Self {
        self.busy_timeout = value;
        self
    }

    /// The durable name of the group's consumer on a topic stream.
    pub fn consumer_name(&self) -> String {
        match self.partition {
            Some(p) => format!("{}-p{p}", self.group),
            None => self.group.clone(),
        }
    }

    /// The subject filter of the group's consumer on `topic`.
    pub fn filter(&self, topic: Topic) -> String {
        match self.partition {
            Some(p) => format!("{}.{p}.>", topic.as_str()),
            None => format!("{}.>", topic.as_str()),
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConsumerError> {
        let bad = |why: String| {
            Err(ConsumerError::Config(format!(
                "group {:?}: {why}",
                self.group
            )))
        };
        if !is_valid_group(&self.group) {
            return bad("a group name is letters, digits, `-` and `_`".into());
        }
        if self.topics.is_empty() && self.foreign.is_empty() {
            return bad("no topics".into());
        }
        for (i, topic) in self.foreign.iter().enumerate() {
            if let Some(why) = topic.problem() {
                return bad(why);
            }
            // One durable per stream is named after the group: two topics of one stream would
            // be one consumer with two filters fighting over it.
            let earlier = &self.foreign[..i];
            if earlier
                .iter()
                .any(|t| t.stream == topic.stream || t.name == topic.name)
                || self
                    .topics
                    .iter()
                    .any(|t| crate::bus::stream_name(t.as_str()) == topic.stream)
                || [super::dlq::DLQ_STREAM, super::dlq::REPLAY_STREAM]
                    .contains(&topic.stream.as_str())
            {
                return bad(format!(
                    "foreign topic {:?}: stream {} is taken already (one topic per stream; widen its filter instead)",
                    topic.name, topic.stream
                ));
            }
        }
        // A partition is a token of the contract's subjects; a foreign stream has its own
        // layout, and every partition's process would take all of it.
        if self.partition.is_some() && !self.foreign.is_empty() {
            return bad(
                "foreign topics cannot be split by partition: take them in a group without one"
                    .into(),
            );
        }
        if self.max_deliver < 1 {
            return bad("max_deliver must be at least 1".into());
        }
        if self.backoff.is_empty() {
            return bad("the backoff schedule is empty".into());
        }
        if self.handler_timeout.is_zero() {
            return bad("handler_timeout must be above zero".into());
        }
        if self.batch_size == 0 || self.max_ack_pending < 1 || self.concurrency == 0 {
            return bad("batch_size, max_ack_pending and concurrency must be at least 1".into());
        }
        Ok(())
    }

    /// The wait before the handler's run `run + 1` for a message that failed on run `run`.
    pub fn delay_after(&self, run: u64) -> Duration {
        let index = (run.max(1) - 1) as usize;
        self.backoff[index.min(self.backoff.len() - 1)]
    }

    /// The consumer's `max_deliver` on the broker, [`DELIVERIES_PER_RUN`] times the group's: a
    /// backstop above the group's, which counts
    /// the handler's runs (see `attempts`), for deliveries no run records.
    fn broker_max_deliver(&self) -> i64 {
        self.max_deliver.saturating_mul(DELIVERIES_PER_RUN)
    }

    pub(super) fn consumer_config(&self, topic: Topic) -> consumer::pull::Config {
        self.topic_consumer_config(topic.as_str(), self.filter(topic))
    }

    /// The group's consumer on a foreign topic's stream: its filter, the group's settings.
    pub(super) fn foreign_consumer_config(&self, topic: &ForeignTopic) -> consumer::pull::Config {
        self.topic_consumer_config(&topic.name, topic.filter.clone())
    }

    fn topic_consumer_config(&self, topic: &str, filter_subject: String) -> consumer::pull::Config {
        let mut metadata = HashMap::from([
            ("group".to_owned(), self.group.clone()),
            ("topic".to_owned(), topic.to_owned()),
        ]);
        if let Some(p) = self.partition {
            metadata.insert("partition".to_owned(), p.to_string());
        }
        consumer::pull::Config {
            durable_name: Some(self.consumer_name()),
            description: Some(format!("consumer group {} on {topic}", self.group)),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.broker_max_deliver(),
            filter_subject,
            max_ack_pending: self.max_ack_pending,
            metadata,
            ..Default::default()
        }
    }

    /// The group's (or its partition's) consumer of its replays: its own durable, taking its
    /// partition's replays only, so that each goes to the process and file of its partition.
    pub(super) fn replay_consumer_config(&self) -> consumer::pull::Config {
        let mut metadata = HashMap::from([
            ("group".to_owned(), self.group.clone()),
            ("topic".to_owned(), "replay".to_owned()),
        ]);
        let filter_subject = match self.partition {
            // replay.<group>.<topic, two tokens>.<P>.<key>
            Some(p) => {
                metadata.insert("partition".to_owned(), p.to_string());
                format!("replay.{}.*.*.{p}.*", self.group)
            }
            None => format!("replay.{}.>", self.group),
        };
        consumer::pull::Config {
            durable_name: Some(self.consumer_name()),
            description: Some(format!("dead letters replayed to {}", self.consumer_name())),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.broker_max_deliver(),
            filter_subject,
            max_ack_pending: self.max_ack_pending,
            metadata,
            ..Default::default()
        }
    }
}

/// Whether `name` can be a group (and durable consumer) name.
pub fn is_valid_group(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
