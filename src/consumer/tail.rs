//! `order-service tail`: a topic's events as they arrive, the spec's kafka-console-consumer for
//! this bus.
//!
//! It reads through an ordered consumer (ephemeral, no acks, recreated by the client after a
//! gap), so it never disturbs a group: from now on by default, from `--since` ago, or from the
//! start (`--all`). `--partition` and `--order` narrow the subject filter to
//! `<topic>.<P>.>`, `<topic>.*.<order_id>` or both.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

use super::ConsumerError;
use super::handling::handler::{Event, SchemaError, decode};
use super::message::{body_text, headers_of, nats_time};
use crate::bus::stream_name;
use crate::domain::Topic;

/// Arguments of `tail`.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// The topic, e.g. `order.created`.
    pub topic: String,
    /// Only this partition of the topic.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Only this order's events (the customer for `order.statistics_updated`).
    #[arg(long)]
    pub order: Option<Uuid>,
    /// Start this long ago, e.g. `10m`, `2h`; without it (and without --all) only new events.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "all")]
    pub since: Option<Duration>,
    /// Start with the oldest stored event.
    #[arg(long)]
    pub all: bool,
    /// One JSON object per line: stream, sequence, subject, time, headers and the message.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
}

impl TailArgs {
    /// The subject filter the arguments select.
    pub fn filter(&self) -> String {
        let partition = self
            .partition
            .map_or_else(|| "*".to_owned(), |p| p.to_string());
        match (self.partition, self.order) {
            (None, None) => format!("{}.>", self.topic),
            (Some(_), None) => format!("{}.{partition}.>", self.topic),
            (_, Some(order)) => format!("{}.{partition}.{order}", self.topic),
        }
    }
}

/// An event as `tail` shows it.
#[derive(Debug)]
pub struct Tailed {
    /// The stream.
    pub stream: String,
    /// Its sequence.
    pub sequence: u64,
    /// The stored subject.
    pub subject: String,
    /// When the broker stored it.
    pub time: DateTime<Utc>,
    /// The headers.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
    /// The typed event, or why it is not one.
    pub event: Result<Event, SchemaError>,
}

impl Tailed {
    /// One line for the terminal.
    pub fn text(&self) -> String {
        let partition = self.subject.split('.').rev().nth(1).unwrap_or("?");
        let time = self.time.to_rfc3339_opts(SecondsFormat::Millis, true);
        match &self.event {
            Ok(event) => format!(
                "{time} {:<28} p{partition} #{:<5} {} {}",
                event.topic_name(),
                self.sequence,
                event.order_number().unwrap_or("-"),
                summary(event)
            ),
            Err(e) => format!(
                "{time} {} #{} unreadable: {e}: {}",
                self.subject, self.sequence, self.body
            ),
        }
    }

    /// One JSON object.
    pub fn json(&self) -> Value {
        let message =
            serde_json::from_str::<Value>(&self.body).unwrap_or(Value::String(self.body.clone()));
        let headers: serde_json::Map<String, Value> = self
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "stream": self.stream,
            "sequence": self.sequence,
            "subject": self.subject,
            "time": self.time,
            "headers": headers,
            "message": message,
        })
    }
}

/// What an event says, in a few words.
pub fn summary(event: &Event) -> String {
    match event {
        Event::Created(e) => format!(
            "{} item(s), {} {}, via {}, status {}",
            e.data.items.len(),
            e.data.total_amount,
            e.data.currency,
            e.data.source_channel,
            e.data.status.as_str()
        ),
        Event::Updated(e) => format!(
            "+{} -{} ~{} item(s), total {} -> {}: {}",
            e.data.changes.items.added.len(),
            e.data.changes.items.removed.len(),
            e.data.changes.items.modified.len(),
            e.data.changes.total_amount.old,
            e.data.changes.total_amount.new,
            e.data.reason
        ),
        Event::StatusChanged(e) => format!(
            "{} -> {}: {}",
            e.data.status_change.from.as_str(),
            e.data.status_change.to.as_str(),
            e.data.reason
        ),
        Event::Confirmed(e) => format!(
            "{} confirmed, payment {}, stock {}",
            e.data.total_amount, e.data.payment_confirmed, e.data.inventory_reserved
        ),
        Event::Cancelled(e) => format!(
            "{}; refund {}, restock {} line(s)",
            e.data.cancellation_reason,
            e.data.refund_required,
            e.data.items_to_restock.len()
        ),
        Event::StockOverrideApplied(e) => format!(
            "{} line(s) beyond stock: {}",
            e.data.items_overridden.len(),
            e.data.override_details.reason
        ),
        Event::ChatCreated(e) => format!(
            "chat {} template {} confidence {:.2}",
            short(e.data.chat_id),
            e.data.template_used,
            e.data.ai_confidence
        ),
        Event::ChatLinked(e) => format!(
            "{} link to chat {}",
            e.data.link_type,
            short(e.data.chat_id)
        ),
        Event::Audit(e) => format!(
            "{} by {} {}: {} {:?} -> {:?}",
            e.data.action,
            e.data.actor.user_type,
            short(e.data.actor.user_id),
            e.data.changes.field,
            e.data.changes.old_value,
            e.data.changes.new_value
        ),
        Event::StatisticsUpdated(e) => format!(
            "after {}: {}",
            e.data.trigger_event,
            e.data.affected_metrics.join(", ")
        ),
        Event::InventoryShortage(e) => format!(
            "product {}: {} requested, {} available, {} reserved",
            short(e.data.product_id),
            e.data.requested_quantity,
            e.data.available_quantity,
            e.data.reserved_quantity
        ),
        Event::Other(raw) => format!("{} bytes on {}", raw.payload().len(), raw.subject()),
    }
}

/// The last eight hex digits of an id (the random part of a UUIDv7; its first ones are time).
pub fn short(id: Uuid) -> String {
    id.simple().to_string()[24..].to_owned()
}

/// Follows `args`' topic and filter, calling `each` per event, until `shutdown`, the limit, or
/// `each` returns false. Returns how many events it saw.
pub async fn follow(
    js: &jetstream::Context,
    args: &TailArgs,
    shutdown: impl Future<Output = ()>,
    mut each: impl FnMut(&Tailed) -> bool,
) -> Result<u64, ConsumerError> {
    let topic = Topic::parse(&args.topic).ok_or_else(|| {
        let known: Vec<&str> = Topic::ALL.iter().map(|t| t.as_str()).collect();
        ConsumerError::Config(format!(
            "unknown topic `{}`; topics: {}",
            args.topic,
            known.join(", ")
        ))
    })?;
    let deliver_policy = if args.all {
        consumer::DeliverPolicy::All
    } else if let Some(since) = args.since {
        let start = Utc::now() - chrono::Duration::from_std(since).unwrap_or(chrono::Duration::MAX);
        let start_time = async_nats::datetime::from_nanos(
            start.timestamp_nanos_opt().unwrap_or_default().into(),
        )
        .map_err(ConsumerError::nats)?;
        consumer::DeliverPolicy::ByStartTime { start_time }
    } else {
        consumer::DeliverPolicy::New
    };
    let stream = js
        .get_stream(stream_name(topic.as_str()))
        .await
        .map_err(ConsumerError::nats)?;
    // A push consumer, delivering to this client's own inbox: it needs no fetch request, so the
    // identity that tails may create a consumer without a name and read its own replies, and
    // nothing else of a stream's consumers (a pull consumer's server-chosen name would need a
    // wildcard that also matches every group's durable consumer).
    let ordered = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: args.filter(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(ConsumerError::nats)?;
    let mut messages = ordered.messages().await.map_err(ConsumerError::nats)?;
    tokio::pin!(shutdown);
    let mut seen = 0;
    while args.limit.is_none_or(|limit| seen < limit) {
        let next = tokio::select! {
            () = &mut shutdown => break,
            next = messages.next() => next,
        };
        let message = match next {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "tail: ordered consumer");
                continue;
            }
            Some(Ok(message)) => message,
        };
        let (sequence, time) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                nats_time(info.published.unix_timestamp_nanos()),
            ),
            Err(_) => (0, Utc::now()),
        };
        let tailed = Tailed {
            stream: stream_name(topic.as_str()),
            sequence,
            subject: message.subject.to_string(),
            time,
            headers: headers_of(message.headers.as_ref()),
            body: body_text(&message.payload),
            event: decode(topic, &message.payload),
        };
        seen += 1;
        if !each(&tailed) {
            break;
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(partition: Option<u32>, order: Option<Uuid>) -> TailArgs {
        TailArgs {
            topic: "order.created".into(),
            partition,
            order,
            since: None,
            all: false,
            json: false,
            limit: None,
        }
    }

    #[test]
    fn filters_follow_the_stored_subjects() {
        let id = Uuid::nil();
        assert_eq!(args(None, None).filter(), "order.created.>");
        assert_eq!(args(Some(2), None).filter(), "order.created.2.>");
        assert_eq!(
            args(None, Some(id)).filter(),
            format!("order.created.*.{id}")
        );
        assert_eq!(
            args(Some(1), Some(id)).filter(),
            format!("order.created.1.{id}")
        );
    }
}
