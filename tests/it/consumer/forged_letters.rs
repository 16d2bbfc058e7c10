//! Replays that cannot be forged: a dead letter is only a pointer to the event its stream stored,
//! so whoever may publish on `dlq.>` cannot have a replay deliver anything else to a group.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use order_service::consumer::dlq;
use serde_json::Value;

use crate::app::{PATIENCE, stream_messages};
use crate::consumer::{create_orders, setup};

/// Publishes a letter on `dlq.<group>.<topic>` as anyone allowed on `dlq.>` could.
async fn forge(
    js: &jetstream::Context,
    topic: &str,
    source: Option<(&str, u64, &str)>,
    extra: &[(&str, &str)],
    payload: Bytes,
) {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
    headers.insert("Dlq-Group", "forge");
    headers.insert("Dlq-Topic", topic);
    headers.insert("Dlq-Reason", "permanent");
    headers.insert("Dlq-Delivered", "1");
    if let Some((stream, sequence, subject)) = source {
        headers.insert("Dlq-Source-Stream", stream);
        headers.insert("Dlq-Source-Sequence", sequence.to_string().as_str());
        headers.insert("Dlq-Source-Subject", subject);
    }
    for (name, value) in extra {
        headers.insert(*name, *value);
    }
    js.publish_with_headers(format!("dlq.forge.{topic}"), headers, payload)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Every message the replay stream holds for group `forge`, read without consuming them.
async fn replayed(js: &jetstream::Context) -> Vec<StreamMessage> {
    let stream = js.get_stream(dlq::REPLAY_STREAM).await.unwrap();
    let mut messages = Vec::new();
    let mut next = 1;
    loop {
        match stream
            .raw_message_builder()
            .sequence(next)
            .next_by_subject("replay.forge.>".to_owned())
            .send()
            .await
        {
            Ok(message) => {
                next = message.sequence + 1;
                messages.push(message);
            }
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return messages,
            Err(e) => panic!("reading {}: {e}", dlq::REPLAY_STREAM),
        }
    }
}

#[tokio::test]
async fn a_replay_sends_the_event_as_stored_and_refuses_letters_that_do_not_match_it() {
    let (_started, _nats, app, js, _dir, _db) = setup(|_| {}).await;
    create_orders(&app, 1, 1).await;
    let start = Instant::now();
    while stream_messages(&js, "ORDER_CREATED").await < 1 {
        assert!(
            start.elapsed() < PATIENCE,
            "the order's event never reached its stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = js
        .get_stream("ORDER_CREATED")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    let subject = stored.subject.to_string();
    let source = Some(("ORDER_CREATED", 1, subject.as_str()));

    // A letter whose body is not the stored event's: another amount, the same pointer.
    let mut body: Value = serde_json::from_slice(&stored.payload).unwrap();
    body["data"]["total_amount"] = Value::from(1);
    forge(&js, "order.created", source, &[], body.to_string().into()).await;
    // A letter pointing at nothing the stream holds.
    let gone = Some(("ORDER_CREATED", 999_999, subject.as_str()));
    forge(&js, "order.created", gone, &[], stored.payload.clone()).await;
    // A letter that points nowhere at all.
    forge(&js, "order.created", None, &[], stored.payload.clone()).await;
    // A letter of another topic pointing at an order.created event.
    forge(&js, "order.cancelled", source, &[], stored.payload.clone()).await;
    // The stored event's body under headers of the forger's choosing: the replay carries the
    // stored headers, not these.
    let tampered = [("Event-Type", "order.cancelled"), ("X-Forged", "yes")];
    forge(
        &js,
        "order.created",
        source,
        &tampered,
        stored.payload.clone(),
    )
    .await;

    let done = dlq::replay(&js, "forge", None).await.unwrap();
    assert_eq!(done.sent, 1, "{done:?}");
    let mut refusals: Vec<String> = done
        .refused
        .iter()
        .map(|(_, why)| why.to_string())
        .collect();
    refusals.sort();
    assert_eq!(refusals.len(), 4, "{refusals:?}");
    assert!(
        refusals[0].contains("no longer holds sequence 999999"),
        "{refusals:?}"
    );
    assert!(
        refusals[1].contains("names no source stream"),
        "{refusals:?}"
    );
    assert!(
        refusals[3].contains("not of the letter's topic order.cancelled"),
        "{refusals:?}"
    );
    assert!(refusals[2].contains("body differs"), "{refusals:?}");

    let messages = replayed(&js).await;
    assert_eq!(
        messages.len(),
        1,
        "only the letter matching its stored event is replayed: {:?}",
        messages.iter().map(|m| &m.payload).collect::<Vec<_>>()
    );
    let message = &messages[0];
    assert_eq!(message.payload, stored.payload, "the body as stored");
    assert_eq!(message.subject.as_str(), format!("replay.forge.{subject}"));
    let headers = &message.headers;
    assert_eq!(
        headers.get("Event-Type").map(|v| v.as_str()),
        stored.headers.get("Event-Type").map(|v| v.as_str()),
        "the headers as stored"
    );
    assert!(headers.get("X-Forged").is_none(), "{headers:?}");
    assert_eq!(
        headers.get("Dlq-Original-Msg-Id").map(|v| v.as_str()),
        stored.headers.get("Nats-Msg-Id").map(|v| v.as_str())
    );

    // What was refused stays listed, for an operator to read and purge; one by one, a refused
    // letter is refused again and a letter of another group is not found.
    let left = dlq::list(&js, "forge", None).await.unwrap();
    assert_eq!(left.len(), 4, "{left:?}");
    let kept: Vec<u64> = done.refused.iter().map(|(sequence, _)| *sequence).collect();
    assert_eq!(kept, {
        let mut listed: Vec<u64> = left.iter().map(|l| l.sequence).collect();
        listed.sort_by_key(|s| kept.iter().position(|k| k == s));
        listed
    });
    assert!(matches!(
        dlq::replay_one(&js, "forge", kept[0]).await.unwrap(),
        dlq::ReplayedOne::Refused(_)
    ));
    assert_eq!(
        dlq::replay_one(&js, "other", kept[0]).await.unwrap(),
        dlq::ReplayedOne::NotFound
    );
    assert_eq!(replayed(&js).await.len(), 1);
}
