//! A request's events, stamped for the outbox: ids, the envelope, the causation chain and the
//! NATS headers.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::envelope::{EVENT_SOURCE, EVENT_VERSION, Envelope, MetadataParts, Payload};
use super::payloads::Actor;
use super::topic::Topic;

/// What a request knows about itself that its events carry.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// From `X-Correlation-ID`, or generated.
    pub correlation_id: Uuid,
    /// This request's id: the causation of its first event.
    pub request_id: Uuid,
    /// Who acted and from where.
    pub actor: Actor,
    /// The W3C `traceparent` the request came with, passed on as a header.
    pub traceparent: Option<String>,
    /// When the request was taken: every event of the request carries it.
    pub now: DateTime<Utc>,
}

/// An event ready for the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// The event id, also `Nats-Msg-Id`.
    pub event_id: Uuid,
    /// The topic.
    pub topic: Topic,
    /// The subject key.
    pub key: Uuid,
    /// The JSON message.
    pub payload: String,
    /// The NATS headers, in order.
    pub headers: Vec<(String, String)>,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
}

/// A request's events, in the order they are written.
#[derive(Debug)]
pub struct Events<'a> {
    ctx: &'a EventContext,
    list: Vec<OutboxEvent>,
}

impl<'a> Events<'a> {
    /// No events yet.
    pub fn new(ctx: &'a EventContext) -> Events<'a> {
        Events {
            ctx,
            list: Vec::new(),
        }
    }

    /// Adds an event: a new id, the envelope, and the causation chain (the request for the first
    /// event, the first event for every later one).
    pub fn push<P: Payload>(&mut self, data: P) -> Uuid {
        let event_id = Uuid::now_v7();
        let causation_id = self
            .list
            .first()
            .map_or(self.ctx.request_id, |first| first.event_id);
        let key = data.key();
        let envelope = Envelope {
            event_id,
            event_type: P::TOPIC.as_str().to_owned(),
            timestamp: self.ctx.now,
            version: EVENT_VERSION.to_owned(),
            source: EVENT_SOURCE.to_owned(),
            data,
            metadata: P::Metadata::from(MetadataParts {
                correlation_id: self.ctx.correlation_id,
                causation_id,
                user_id: self.ctx.actor.user_id,
            }),
        };
        let payload = serde_json::to_string(&envelope).expect("event payloads always serialize");
        let mut headers = vec![
            ("Nats-Msg-Id".to_owned(), event_id.to_string()),
            ("Event-Type".to_owned(), P::TOPIC.as_str().to_owned()),
            ("Event-Version".to_owned(), EVENT_VERSION.to_owned()),
            ("Content-Type".to_owned(), "application/json".to_owned()),
            (
                "Correlation-Id".to_owned(),
                self.ctx.correlation_id.to_string(),
            ),
        ];
        if let Some(traceparent) = &self.ctx.traceparent {
            headers.push(("traceparent".to_owned(), traceparent.clone()));
        }
        self.list.push(OutboxEvent {
            event_id,
            topic: P::TOPIC,
            key,
            payload,
            headers,
            created_at: self.ctx.now,
        });
        event_id
    }

    /// The request's context the events are stamped with.
    pub fn context(&self) -> &EventContext {
        self.ctx
    }

    /// The events, in the order they were added.
    pub fn into_vec(self) -> Vec<OutboxEvent> {
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::OrderLinkedToChat;

    fn ctx() -> EventContext {
        EventContext {
            correlation_id: Uuid::now_v7(),
            request_id: Uuid::now_v7(),
            actor: Actor {
                user_id: Uuid::now_v7(),
                user_type: "admin".into(),
                ip_address: "127.0.0.1".into(),
                user_agent: "test".into(),
            },
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            now: "2025-06-29T10:15:00Z".parse().unwrap(),
        }
    }

    fn link(order_id: Uuid) -> OrderLinkedToChat {
        OrderLinkedToChat {
            order_id,
            order_number: "ORD-2025-000001".into(),
            chat_id: Uuid::now_v7(),
            link_type: "support".into(),
            linked_by: Uuid::now_v7(),
            context: "delivery".into(),
        }
    }

    #[test]
    fn causation_runs_from_the_request_through_the_first_event() {
        let ctx = ctx();
        let mut events = Events::new(&ctx);
        let order_id = Uuid::now_v7();
        let first = events.push(link(order_id));
        events.push(link(order_id));
        let list = events.into_vec();
        let meta = |i: usize| -> serde_json::Value {
            serde_json::from_str::<serde_json::Value>(&list[i].payload).unwrap()["metadata"].clone()
        };
        assert_eq!(meta(0)["causation_id"], ctx.request_id.to_string());
        assert_eq!(meta(1)["causation_id"], first.to_string());
        assert_eq!(meta(1)["correlation_id"], ctx.correlation_id.to_string());
        assert_eq!(list[0].key, order_id);
        assert_eq!(
            list[0].headers[0],
            ("Nats-Msg-Id".into(), first.to_string())
        );
        assert!(list[0].headers.iter().any(|(k, _)| k == "traceparent"));
    }

    #[test]
    fn envelope_is_the_contracts() {
        let ctx = ctx();
        let mut events = Events::new(&ctx);
        events.push(link(Uuid::now_v7()));
        let json: serde_json::Value = serde_json::from_str(&events.into_vec()[0].payload).unwrap();
        assert_eq!(json["event_type"], "order.chat_linked");
        assert_eq!(json["version"], "1.0");
        assert_eq!(json["source"], "order-service");
        assert_eq!(json["timestamp"], "2025-06-29T10:15:00Z");
    }
}
