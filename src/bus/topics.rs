//! The topic table: the spec's Kafka topics (name, partitions, replication, retention) as data.
//!
//! The table ships inside the binary from `nats/topics.json` and can be replaced by a file of the
//! same shape. Every table is validated when it is loaded, so the rest of the crate can take a
//! [`Topics`] as correct. The naming rules of the bus live here too: a topic's stream name and the
//! subject an event is published on.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The table from `nats/topics.json`, as built into the binary.
const EMBEDDED: &str = include_str!("../../nats/topics.json");

const SECONDS_PER_HOUR: u64 = 60 * 60;
const SECONDS_PER_DAY: u64 = 24 * SECONDS_PER_HOUR;

/// One row of the topic table: a topic and the stream settings the table gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name as the spec writes it, e.g. `order.created`; also the subject prefix.
    pub name: String,
    /// Kafka partition count; the stream spreads keys over this many subject partitions.
    pub partitions: u32,
    /// Kafka replication factor; the stream asks for this many replicas, clamped to the cluster.
    pub replication: u32,
    /// How long messages are kept; becomes the stream's `max_age`.
    pub retention: Duration,
}

impl TopicSpec {
    /// The JetStream stream that holds this topic, see [`stream_name`].
    pub fn stream_name(&self) -> String {
        stream_name(&self.name)
    }

    /// The subject an event with this key is published on, see [`subject`].
    pub fn subject(&self, key: &str) -> String {
        subject(&self.name, key)
    }
}

/// A validated topic table: at least one topic, unique names and stream names, sane numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    topics: Vec<TopicSpec>,
}

/// Why a topic table was refused.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The file could not be read.
    #[error("cannot read topic table {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The text is not a JSON array of topic rows.
    #[error("topic table is not valid JSON rows: {0}")]
    Json(#[from] serde_json::Error),
    /// A row is wrong; the message names the topic and the rule.
    #[error("topic table: {0}")]
    Invalid(String),
}

/// A row exactly as it appears in the JSON file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicRow {
    topic: String,
    partitions: u32,
    replication: u32,
    retention: String,
}

impl Topics {
    /// The table built into the binary from `nats/topics.json`.
    ///
    /// # Panics
    /// Never in a build whose unit tests pass: the embedded table is checked by them.
    pub fn embedded() -> Topics {
        Topics::from_json(EMBEDDED).expect("nats/topics.json built into the binary is valid")
    }

    /// Reads and validates a table file of the same shape as `nats/topics.json`
    /// (the `--topics-file` override).
    pub fn load(path: &Path) -> Result<Topics, TopicsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopicsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Topics::from_json(&text)
    }

    /// Parses and validates a JSON array of `{"topic","partitions","replication","retention"}`.
    pub fn from_json(text: &str) -> Result<Topics, TopicsError> {
        let rows: Vec<TopicRow> = serde_json::from_str(text)?;
        let topics = rows
            .into_iter()
            .map(|row| {
                let retention = parse_retention(&row.retention)
                    .map_err(|why| TopicsError::Invalid(format!("{}: {why}", row.topic)))?;
                Ok(TopicSpec {
                    name: row.topic,
                    partitions: row.partitions,
                    replication: row.replication,
                    retention,
                })
            })
            .collect::<Result<Vec<_>, TopicsError>>()?;
        Topics::new(topics)
    }

    /// Validates rows built in code.
    pub fn new(topics: Vec<TopicSpec>) -> Result<Topics, TopicsError> {
        if topics.is_empty() {
            return Err(TopicsError::Invalid("the table has no topics".into()));
        }
        let mut names = HashSet::new();
        let mut streams = HashSet::new();
        for topic in &topics {
            validate_topic_name(&topic.name).map_err(TopicsError::Invalid)?;
            let invalid = |why: &str| TopicsError::Invalid(format!("{}: {why}", topic.name));
            if topic.partitions < 1 {
                return Err(invalid("partitions must be at least 1"));
            }
            if topic.replication < 1 {
                return Err(invalid("replication must be at least 1"));
            }
            if topic.retention.is_zero() {
                return Err(invalid("retention must be longer than zero"));
            }
            if !names.insert(topic.name.as_str()) {
                return Err(invalid("listed twice"));
            }
            // `order.a-b` and `order.a_b` would share one stream.
            if !streams.insert(topic.stream_name()) {
                return Err(invalid(&format!(
                    "its stream name {} is taken by another topic",
                    topic.stream_name()
                )));
            }
        }
        Ok(Topics { topics })
    }

    /// The topics in table order.
    pub fn iter(&self) -> std::slice::Iter<'_, TopicSpec> {
        self.topics.iter()
    }

    /// The topic with this name, if the table has it.
    pub fn get(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|topic| topic.name == name)
    }

    /// How many topics the table has (never zero).
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Always false: a table without topics is refused. Here for API completeness.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

impl<'a> IntoIterator for &'a Topics {
    type Item = &'a TopicSpec;
    type IntoIter = std::slice::Iter<'a, TopicSpec>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The stream that holds a topic: upper case, dots and dashes as underscores
/// (`order.created` -> `ORDER_CREATED`).
pub fn stream_name(topic: &str) -> String {
    topic
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// The subject an event is published on: `<topic>.<key>`.
///
/// The key must be one subject token (no `.`, `*`, `>` or whitespace); [`is_valid_key`] tells,
/// and the publisher refuses other keys rather than letting the stream miss them.
pub fn subject(topic: &str, key: &str) -> String {
    format!("{topic}.{key}")
}

/// Whether `key` can be the last token of a publish subject: non-empty, no `.`, `*`, `>`,
/// whitespace or control characters.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
}

/// Parses a retention like `7d` or `36h`: a positive whole number of days or hours.
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_seconds) = if let Some(days) = text.strip_suffix('d') {
        (days, SECONDS_PER_DAY)
    } else if let Some(hours) = text.strip_suffix('h') {
        (hours, SECONDS_PER_HOUR)
    } else {
        return Err(format!(
            "retention {text:?} needs a unit: d (days) or h (hours), e.g. \"7d\""
        ));
    };
    let count: u64 = number
        .parse()
        .map_err(|_| format!("retention {text:?} is not a whole number of days or hours"))?;
    if count == 0 {
        return Err(format!("retention {text:?} must be longer than zero"));
    }
    count
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("retention {text:?} is too long"))
}

/// Writes a retention the way the table does: `7d` when it is whole days, `36h` when whole
/// hours, otherwise in seconds (`90s`).
pub fn format_retention(retention: Duration) -> String {
    let seconds = retention.as_secs();
    if retention.subsec_nanos() == 0 && seconds > 0 {
        if seconds.is_multiple_of(SECONDS_PER_DAY) {
            return format!("{}d", seconds / SECONDS_PER_DAY);
        }
        if seconds.is_multiple_of(SECONDS_PER_HOUR) {
            return format!("{}h", seconds / SECONDS_PER_HOUR);
        }
    }
    format!("{}s", retention.as_secs_f64())
}

/// Topic names are Kafka-style (`[A-Za-z0-9._-]`) and must also be literal NATS subjects:
/// dot-separated, no empty token.
pub(crate) fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a topic has an empty name".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name}: character {bad:?} is not allowed (letters, digits, '.', '_', '-')"
        ));
    }
    if name.split('.').any(str::is_empty) {
        return Err(format!(
            "{name}: empty subject token (leading, trailing or double dot)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions: 1,
            replication: 1,
            retention: Duration::from_secs(SECONDS_PER_DAY),
        }
    }

    #[test]
    fn embedded_table_is_the_specs_ten_topics() {
        let topics = Topics::embedded();
        assert_eq!(topics.len(), 10);
        let created = topics.get("order.created").unwrap();
        assert_eq!(created.partitions, 3);
        assert_eq!(created.replication, 2);
        assert_eq!(created.retention, Duration::from_secs(7 * SECONDS_PER_DAY));
        let audit = topics.get("order.audit").unwrap();
        assert_eq!((audit.partitions, audit.replication), (1, 3));
        assert_eq!(audit.retention, Duration::from_secs(90 * SECONDS_PER_DAY));
        let statistics = topics.get("order.statistics_updated").unwrap();
        assert_eq!(statistics.retention, Duration::from_secs(SECONDS_PER_DAY));
        let chat = topics.get("order.chat_created").unwrap();
        assert_eq!(chat.partitions, 2);
        let override_applied = topics.get("order.stock_override_applied").unwrap();
        assert_eq!(
            override_applied.retention,
            Duration::from_secs(30 * SECONDS_PER_DAY)
        );
    }

    #[test]
    fn stream_names_are_upper_case_with_underscores() {
        assert_eq!(stream_name("order.created"), "ORDER_CREATED");
        assert_eq!(stream_name("order.status_changed"), "ORDER_STATUS_CHANGED");
        assert_eq!(stream_name("order.chat-linked"), "ORDER_CHAT_LINKED");
        assert_eq!(topic("order.audit").stream_name(), "ORDER_AUDIT");
    }

    #[test]
    fn subject_is_topic_dot_key() {
        assert_eq!(
            subject("order.created", "0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f70"),
            "order.created.0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f70"
        );
        assert_eq!(topic("order.audit").subject("k"), "order.audit.k");
    }

    #[test]
    fn keys_are_single_tokens() {
        assert!(is_valid_key("0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f70"));
        assert!(is_valid_key("customer_42"));
        for bad in ["", "a.b", "*", ">", "a b", "a\tb", "a\nb"] {
            assert!(!is_valid_key(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn retention_parses_days_and_hours() {
        assert_eq!(parse_retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_retention("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_retention("36h"), Ok(Duration::from_secs(36 * 3_600)));
        assert_eq!(
            parse_retention(" 90d "),
            Ok(Duration::from_secs(90 * 86_400))
        );
        for bad in [
            "",
            "7",
            "d",
            "0d",
            "-1d",
            "1.5d",
            "7 days",
            "7w",
            "99999999999999999d",
        ] {
            assert!(parse_retention(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn retention_formats_back_to_the_tables_spelling() {
        for text in ["7d", "30d", "90d", "1d", "36h", "1h"] {
            assert_eq!(format_retention(parse_retention(text).unwrap()), text);
        }
        assert_eq!(format_retention(Duration::from_secs(90)), "90s");
        assert_eq!(format_retention(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn table_rows_are_validated() {
        let cases = [
            (r#"[]"#, "no topics"),
            (
                r#"[{"topic":"a.b","partitions":0,"replication":1,"retention":"1d"}]"#,
                "partitions",
            ),
            (
                r#"[{"topic":"a.b","partitions":1,"replication":0,"retention":"1d"}]"#,
                "replication",
            ),
            (
                r#"[{"topic":"a.b","partitions":1,"replication":1,"retention":"1x"}]"#,
                "unit",
            ),
            (
                r#"[{"topic":"a.b","partitions":1,"replication":1,"retention":"1d"},
                    {"topic":"a.b","partitions":2,"replication":1,"retention":"1d"}]"#,
                "twice",
            ),
            (
                r#"[{"topic":"a.b-c","partitions":1,"replication":1,"retention":"1d"},
                    {"topic":"a.b_c","partitions":1,"replication":1,"retention":"1d"}]"#,
                "A_B_C is taken",
            ),
            (
                r#"[{"topic":"a.*","partitions":1,"replication":1,"retention":"1d"}]"#,
                "not allowed",
            ),
            (
                r#"[{"topic":"a..b","partitions":1,"replication":1,"retention":"1d"}]"#,
                "empty subject token",
            ),
            (
                r#"[{"topic":"a.b","partitions":1,"replication":1,"retention":"1d","x":1}]"#,
                "unknown field",
            ),
        ];
        for (json, expected) in cases {
            let error = Topics::from_json(json).unwrap_err().to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn table_loads_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.json");
        std::fs::write(
            &path,
            r#"[{"topic":"order.created","partitions":2,"replication":1,"retention":"12h"}]"#,
        )
        .unwrap();
        let topics = Topics::load(&path).unwrap();
        assert_eq!(topics.len(), 1);
        assert_eq!(
            topics.get("order.created").unwrap().retention,
            Duration::from_secs(12 * 3_600)
        );
        let missing = Topics::load(&dir.path().join("missing.json")).unwrap_err();
        assert!(matches!(missing, TopicsError::Read { .. }));
    }
}
