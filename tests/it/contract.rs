//! The contract: for each of the ten topics, the payload in the outbox has every field path of the
//! spec's example payload, with the same JSON type.
//!
//! `tests/contract/<topic>.json` are the spec's examples (`spec/order-service-events.md`), copied
//! with their `//` comments removed and `[...]` / `{...}` written as empty arrays and objects:
//! for those only the container's type is checked.

use std::collections::BTreeMap;
use std::path::Path;

use order_service::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{User, chat_order, order_body, spawn_app};

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every path in `v` with its JSON type; array elements are `[]`.
fn paths(v: &Value, prefix: &str, out: &mut BTreeMap<String, &'static str>) {
    out.insert(prefix.to_owned(), kind(v));
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                paths(child, &format!("{prefix}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for child in items {
                paths(child, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn example(topic: &str) -> Value {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/contract")
        .join(format!("{topic}.json"));
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

#[tokio::test]
async fn every_topic_matches_the_spec_example_field_for_field() {
    let app = spawn_app().await;
    let admin = User::new(Role::Admin);
    let ai = User::new(Role::Ai);
    let customer = User::new(Role::Customer);
    let (a, b, short) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());

    // order.created, order.audit, order.stock_override_applied
    app.set_stock(short, 1).await;
    let mut body = order_body(&[a, b, short]);
    body["customer_id"] = json!(customer.id);
    body["stock_override"] = json!({"reason": "VIP customer special request", "expected_restock_date": "2030-07-01T00:00:00Z"});
    let order = app.create_order(admin, body).await;
    let id = order["order_id"].as_str().unwrap().to_owned();

    // order.updated (every part of `changes` filled)
    let (status, body) = app
        .send(
            customer,
            Method::PATCH,
            &format!("/api/v1/orders/{id}"),
            Some(json!({
                "items": {
                    "add": [{"product_id": Uuid::now_v7(), "quantity": 1, "unit_price": 50.00}],
                    "remove": [b],
                    "modify": [{"product_id": a, "quantity": 3}]
                },
                "shipping_address": {"street": "1 Soi 2", "city": "Bangkok", "postal_code": "10110", "country": "Thailand"},
                "reason": "Customer requested item addition"
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // order.status_changed, order.confirmed, order.statistics_updated
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/orders/{id}/confirm"),
            json!({"payment_confirmed": true, "inventory_reserved": true, "estimated_fulfillment_date": "2030-06-30T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // order.chat_linked
    let (status, body) = app
        .post(
            ai,
            &format!("/api/v1/orders/{id}/chat-links"),
            json!({"chat_id": Uuid::now_v7(), "link_type": "support", "context": "Customer inquiry about delivery status"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // order.cancelled
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/orders/{id}/cancel"),
            json!({"reason": "Customer request", "refund_required": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // order.chat_created
    let chat = chat_order(customer.id, Uuid::now_v7());
    let (status, body) = app.post(ai, "/api/v1/chat/orders", chat).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let rows = app.outbox();
    let expected = [
        "order.created",
        "order.updated",
        "order.status_changed",
        "order.confirmed",
        "order.cancelled",
        "order.stock_override_applied",
        "order.chat_created",
        "order.chat_linked",
        "order.audit",
        "order.statistics_updated",
    ];
    for topic in expected {
        let spec = example(topic);
        let mut want = BTreeMap::new();
        paths(&spec, "", &mut want);
        let of_topic: Vec<_> = rows.iter().filter(|r| r.topic == topic).collect();
        assert!(!of_topic.is_empty(), "no {topic} event was written");
        for row in of_topic {
            let mut got = BTreeMap::new();
            paths(&row.payload, "", &mut got);
            for (path, kind) in &want {
                assert_eq!(
                    got.get(path),
                    Some(kind),
                    "{topic}: `{path}` should be a {kind} as in the spec; payload: {}",
                    row.payload
                );
            }
            // Nothing outside the contract, except what the spec leaves open ([...] and {...}).
            for path in got.keys() {
                let open = [".data.changes.items.", ".data.changes.shipping_address."]
                    .iter()
                    .any(|p| path.starts_with(p));
                assert!(
                    want.contains_key(path) || open,
                    "{topic}: `{path}` is not in the spec"
                );
            }
            assert_eq!(row.payload["event_type"], topic);
            assert_eq!(row.headers["Event-Type"], topic);
        }
    }
}
