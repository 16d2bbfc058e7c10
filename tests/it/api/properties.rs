//! Property tests of the command bodies: every order command, sent a valid body with one part
//! changed at random (a field replaced by any JSON value, removed, or a field added), answers a
//! success or a 4xx with the API's error shape and leaves nothing behind, never a 5xx or a
//! dropped connection; JSON is never called malformed for its content; and raw bytes of any kind
//! get a 4xx.
//!
//! The cases come from a seeded generator: the seed is printed, and `PROPTEST_SEED=<n>` replays
//! a run. `PROPTEST_CASES` sets how many cases each property takes (default 256).

use order_service::auth::Role;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{TestApp, User, into_json, order_body, spawn_app};

/// The library's own runner with a printed seed, shared as a file (it is not part of the
/// library's API).
#[path = "../../../src/seeded.rs"]
mod seeded;
use seeded::runner;

/// Any JSON value, nested a few levels, with the numbers and strings that break parsers:
/// extremes, fractions, negative zero, long digits, odd Unicode.
fn any_json() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            json!(0),
            json!(-0.0),
            json!(0.001),
            json!(0.005),
            json!(1e-12),
            json!(1e300),
            json!(-1e300),
            json!(u32::MAX),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(9_007_199_254_740_993u64),
            json!(99_999_999.99),
        ]),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number,
        any::<String>().prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::from),
        Just(json!(Uuid::now_v7())),
        Just(json!("2030-07-01T00:00:00Z")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,12}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// One change to a valid body.
#[derive(Debug, Clone)]
enum Change {
    /// The `n`-th member (objects and arrays, depth first, modulo their count) becomes `value`.
    Replace(usize, Value),
    /// The `n`-th member is removed.
    Remove(usize),
    /// The `n`-th object gets a member `name`.
    Add(usize, String, Value),
}

fn any_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<usize>(), any_json()).prop_map(|(n, v)| Change::Replace(n, v)),
        any::<usize>().prop_map(Change::Remove),
        (any::<usize>(), "[a-z_]{1,16}", any_json()).prop_map(|(n, k, v)| Change::Add(n, k, v)),
    ]
}

/// The members of `value`, depth first: (path of keys and indexes, is an object).
fn members(value: &Value, path: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, bool)>) {
    match value {
        Value::Object(map) => {
            out.push((path.clone(), true));
            for (key, member) in map {
                path.push(Step::Key(key.clone()));
                members(member, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            out.push((path.clone(), false));
            for (i, member) in items.iter().enumerate() {
                path.push(Step::Index(i));
                members(member, path, out);
                path.pop();
            }
        }
        _ => out.push((path.clone(), false)),
    }
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn at<'a>(value: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(value, |v, step| match step {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// `body` with `change` made.
fn changed(mut body: Value, change: &Change) -> Value {
    let mut all = Vec::new();
    members(&body, &mut Vec::new(), &mut all);
    // The root itself is only replaced whole.
    let inner: Vec<_> = all.iter().filter(|(path, _)| !path.is_empty()).collect();
    match change {
        Change::Replace(n, value) if inner.is_empty() || n % 7 == 0 => body = value.clone(),
        Change::Replace(n, value) => *at(&mut body, &inner[n % inner.len()].0) = value.clone(),
        Change::Remove(n) if !inner.is_empty() => {
            let (path, _) = inner[n % inner.len()];
            let (last, parent) = path.split_last().unwrap();
            match (at(&mut body, parent), last) {
                (Value::Object(map), Step::Key(k)) => {
                    map.remove(k);
                }
                (Value::Array(items), Step::Index(i)) => {
                    items.remove(*i);
                }
                _ => {}
            }
        }
        Change::Add(n, name, value) => {
            let objects: Vec<_> = all.iter().filter(|(_, object)| *object).collect();
            if let Some((path, _)) = objects.get(n % objects.len().max(1))
                && let Value::Object(map) = at(&mut body, path)
            {
                map.insert(name.clone(), value.clone());
            }
        }
        Change::Remove(_) => {}
    }
    body
}

/// A command: who sends it, how, where, and a valid body.
struct Command {
    user: User,
    method: Method,
    path: String,
    body: Value,
}

/// Every order command with a valid body, on orders made for them.
async fn commands(app: &TestApp) -> Vec<Command> {
    let admin = User::new(Role::Admin);
    let customer = User::new(Role::Customer);
    let product = Uuid::now_v7();
    app.set_stock(product, 1_000_000).await;
    let order = app.create_order(customer, order_body(&[product])).await;
    let id = order["order_id"].as_str().unwrap().to_owned();
    let on = |path: &str| format!("/api/v1/orders/{id}{path}");
    vec![
        Command {
            user: customer,
            method: Method::POST,
            path: "/api/v1/orders".into(),
            body: order_body(&[product]),
        },
        Command {
            user: admin,
            method: Method::POST,
            path: "/api/v1/orders".into(),
            body: {
                let mut body = order_body(&[product]);
                body["stock_override"] =
                    json!({"reason": "VIP", "expected_restock_date": "2030-07-01T00:00:00Z"});
                body
            },
        },
        Command {
            user: User::new(Role::Ai),
            method: Method::POST,
            path: "/api/v1/chat/orders".into(),
            body: crate::app::chat_order(Uuid::now_v7(), Uuid::now_v7()),
        },
        Command {
            user: admin,
            method: Method::PATCH,
            path: on(""),
            body: json!({
                "items": {"add": [{"product_id": product, "quantity": 1, "unit_price": 50.00}]},
                "shipping_address": {"street": "1 Side St", "city": "Bangkok", "postal_code": "10110", "country": "Thailand"},
                "notes": "leave at the door"
            }),
        },
        Command {
            user: admin,
            method: Method::POST,
            path: on("/status"),
            body: json!({"status": "processing", "reason": "picked", "automatic": false}),
        },
        Command {
            user: admin,
            method: Method::POST,
            path: on("/confirm"),
            body: json!({"payment_confirmed": true, "inventory_reserved": true}),
        },
        Command {
            user: admin,
            method: Method::POST,
            path: on("/cancel"),
            body: json!({"reason": "Customer request", "refund_required": true}),
        },
        Command {
            user: admin,
            method: Method::POST,
            path: on("/stock-override"),
            body: json!({
                "reason": "Supplier delay",
                "expected_restock_date": "2030-07-01T00:00:00Z",
                "items": [{"product_id": product, "override_quantity": 2}]
            }),
        },
        Command {
            user: admin,
            method: Method::POST,
            path: on("/chat-links"),
            body: json!({"chat_id": Uuid::now_v7(), "link_type": "support", "context": "a question"}),
        },
    ]
}

/// Sends `body` (bytes, as JSON) and checks the answer: a success, or a 4xx with the error shape
/// and nothing written.
async fn answered_well(
    app: &TestApp,
    command: &Command,
    body: Vec<u8>,
    answers: &Answers,
) -> Result<(), TestCaseError> {
    let before = app.footprint();
    let json = serde_json::from_slice::<Value>(&body).is_ok();
    let body_copy = body.clone();
    let sent = app
        .request(command.user, command.method.clone(), &command.path)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await;
    let response = sent.map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    let (status, answer) = into_json(response).await;
    *answers
        .lock()
        .unwrap()
        .entry(format!(
            "{status} {}",
            answer["error"].as_str().unwrap_or("")
        ))
        .or_default() += 1;
    if status.is_success() {
        return Ok(());
    }
    prop_assert!(
        status.is_client_error() && status != StatusCode::NOT_FOUND,
        "{} {}: {status} {answer}",
        command.method,
        command.path
    );
    prop_assert!(answer["error"].is_string(), "{status} {answer}");
    // JSON with the wrong content is not "malformed": the answer names the field instead.
    prop_assert!(
        !json || answer["error"] != "malformed_json",
        "valid JSON answered {status} {answer}: {}",
        String::from_utf8_lossy(&body_copy)
    );
    prop_assert!(
        answer["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{status} {answer}"
    );
    prop_assert_eq!(app.footprint(), before, "{} left rows behind", status);
    Ok(())
}

/// How many cases got each answer (status and error code), printed at the end so that a run
/// shows what it exercised.
type Answers = std::sync::Mutex<std::collections::BTreeMap<String, usize>>;

#[test]
fn every_command_answers_a_changed_body_with_success_or_a_clear_4xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(spawn_app());
    let commands = runtime.block_on(commands(&app));
    let mut runner = runner("changed bodies");
    let strategy = (0..commands.len(), prop::collection::vec(any_change(), 1..3));
    let answers = Answers::default();
    runner
        .run(&strategy, |(which, changes)| {
            let command = &commands[which];
            let body = changes.iter().fold(command.body.clone(), changed);
            let bytes = serde_json::to_vec(&body).unwrap();
            runtime.block_on(answered_well(&app, command, bytes, &answers))
        })
        .unwrap();
    eprintln!("answers: {:?}", answers.lock().unwrap());
}

#[test]
fn every_command_answers_any_bytes_with_a_clear_4xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(spawn_app());
    let commands = runtime.block_on(commands(&app));
    let mut runner = runner("raw bytes");
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        any::<String>().prop_map(String::into_bytes),
        // Valid JSON cut short or with a byte changed.
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| {
            let mut json = serde_json::to_vec(&order_body(&[Uuid::nil()])).unwrap();
            let at = at % json.len();
            if byte % 2 == 0 {
                json.truncate(at);
            } else {
                json[at] = byte;
            }
            json
        }),
    ];
    let answers = Answers::default();
    runner
        .run(&(0..commands.len(), bytes), |(which, bytes)| {
            runtime.block_on(answered_well(&app, &commands[which], bytes, &answers))
        })
        .unwrap();
    eprintln!("answers: {:?}", answers.lock().unwrap());
}
