//! The HTTP API's OpenAPI document: the checked-in `nats/openapi.json` is the one the code
//! generates and the service serves; every route and every error code is in it; and a
//! property-based run of schemathesis against the running service (a real SQLite file, a real
//! nats-server, the relay on) finds no 5xx and no answer that differs from the document.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use order_service::api::openapi;
use order_service::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{TestApp, User, order_body, relaying_app, spawn_app};
use crate::nats::NatsServer;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn checked_in() -> String {
    let file = root().join("nats/openapi.json");
    std::fs::read_to_string(&file).unwrap_or_else(|_| panic!("{} is missing", file.display()))
}

#[test]
fn the_checked_in_document_matches_the_code() {
    assert!(
        checked_in() == openapi::render(&openapi::document()),
        "nats/openapi.json drifted from the code; run `make openapi`"
    );
}

#[test]
fn the_openapi_command_prints_the_document() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap() == checked_in());
}

#[tokio::test]
async fn the_service_serves_its_document_without_a_token() {
    let app = spawn_app().await;
    let response = app.client.get(app.url(openapi::PATH)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served = response.text().await.unwrap();
    assert!(
        served == checked_in(),
        "the served document is not nats/openapi.json"
    );
    let document: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    app.stop().await;
}

/// `(method, path)` of every route the code registers, read from `.route("PATH", method(` in
/// src/api: the routers of `health.rs` sit at the root, the others under `/api/v1`. The
/// operations page's assets (`/ops`, its script and style) are not API and not described.
fn routes_in_the_code() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut dirs = vec![root().join("src/api")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let prefix = if path.ends_with("health.rs") {
                ""
            } else {
                "/api/v1"
            };
            let source = std::fs::read_to_string(&path).unwrap();
            for rest in source.split(".route(\"").skip(1) {
                let (route, after) = rest.split_once('"').unwrap();
                let method = after
                    .trim_start_matches([',', ' ', '\n'])
                    .split('(')
                    .next()
                    .unwrap();
                if route.starts_with("/ops") {
                    continue;
                }
                routes.insert((method.to_owned(), format!("{prefix}{route}")));
            }
        }
    }
    routes
}

#[test]
fn every_route_is_in_the_document_and_nothing_else() {
    let document = openapi::document();
    let mut described = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            described.insert((method.clone(), path.clone()));
        }
    }
    let routes = routes_in_the_code();
    assert!(
        routes.len() > 20,
        "the source scan found too little: {routes:?}"
    );
    let undescribed: Vec<_> = routes.difference(&described).collect();
    let unrouted: Vec<_> = described.difference(&routes).collect();
    assert!(
        undescribed.is_empty(),
        "routes missing from the document: {undescribed:?}"
    );
    assert!(
        unrouted.is_empty(),
        "described operations with no route: {unrouted:?}"
    );
}

/// The error codes the API's code writes: `code: "…"` of its refusals and the fixed codes of
/// `ApiError::code`.
fn codes_in_the_code() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    let mut files = vec![root().join("src/error.rs")];
    let mut dirs = vec![root().join("src/api")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for file in files {
        let mut source = std::fs::read_to_string(&file).unwrap();
        if file.ends_with("error.rs") {
            // The arms of `ApiError::code` are codes; other string arms are not.
            let body = source
                .split("fn code(")
                .nth(1)
                .unwrap()
                .split("\n    }\n")
                .next();
            source = format!("{source}{}", body.unwrap().replace("=> \"", "code: \""));
        }
        for marker in ["code: \"", "unprocessable(\""] {
            for rest in source.split(marker).skip(1) {
                let code = rest.split('"').next().unwrap();
                let is_code =
                    !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                if is_code {
                    codes.insert(code.to_owned());
                }
            }
        }
    }
    codes
}

#[test]
fn every_error_code_is_in_the_document() {
    let document = openapi::document();
    let mut described = BTreeSet::new();
    for operations in document["paths"].as_object().unwrap().values() {
        for operation in operations.as_object().unwrap().values() {
            for answer in operation["responses"].as_object().unwrap().values() {
                let schema = &answer["content"]["application/json"]["schema"];
                for code in schema["properties"]["error"]["enum"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    described.insert(code.as_str().unwrap().to_owned());
                }
            }
        }
    }
    let codes = codes_in_the_code();
    assert!(codes.contains("insufficient_stock") && codes.contains("unauthorized"));
    // A 500 is never part of the contract: it is what the property-based run must not see; 405
    // answers only methods the document does not have.
    let missing: Vec<_> = codes
        .iter()
        .filter(|c| !["internal", "method_not_allowed"].contains(&c.as_str()))
        .filter(|c| !described.contains(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "codes missing from the document: {missing:?}"
    );
}

/// The pinned schemathesis of `make schemathesis`: `SCHEMATHESIS_BIN`, else the project's venv.
/// A missing one fails the test: the run is part of `make test`, not an option.
fn schemathesis() -> PathBuf {
    let bin = std::env::var_os("SCHEMATHESIS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tools/schemathesis/bin/st"));
    assert!(
        bin.exists(),
        "{} is missing: run `make schemathesis` (make test does)",
        bin.display()
    );
    bin
}

/// Orders in several states, stock, and published events, so that the lists, the outbox and the
/// tail answer real rows for the run to check against the document.
async fn seed(app: &TestApp) {
    let admin = User::new(Role::Admin);
    let customer = User::new(Role::Customer);
    let product = Uuid::now_v7();
    app.set_stock(product, 1000).await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        let mut body = order_body(&[product]);
        body["customer_id"] = json!(customer.id);
        let order = app.create_order(admin, body).await;
        orders.push(order["order_id"].as_str().unwrap().to_owned());
    }
    let confirm = json!({ "payment_confirmed": true, "inventory_reserved": true });
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/orders/{}/confirm", orders[0]),
            confirm,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post(
            customer,
            &format!("/api/v1/orders/{}/cancel", orders[1]),
            json!({ "reason": "changed my mind" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .send(admin, Method::GET, "/api/v1/admin/outbox", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Runs schemathesis against the service as `user`, on the operations `only` selects (a
/// schemathesis filter), with at most `examples` cases per operation and phase; answers whether
/// it passed and what it printed.
async fn run_schemathesis(
    app: &TestApp,
    user: User,
    only: &[&str],
    examples: u32,
) -> (bool, String) {
    let work = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(schemathesis());
    command
        .current_dir(work.path())
        .arg("run")
        .arg(app.url(openapi::PATH))
        .args(["--url", &app.base])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", app.token(user)),
        ])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
        ])
        .args(["--max-examples", &examples.to_string()])
        // One worker: with several threads, CPython 3.11.7 (the machine's) can fail hypothesis's
        // parsing of its own source (`SystemError: AST constructor recursion depth mismatch`).
        .args(["--workers", "1"])
        .args(["--generation-database", "none", "--no-color"])
        .args(only)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("schemathesis ran for 10 minutes")
        .expect("schemathesis starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    seed(&app).await;
    // Every operation as an admin, who may call all of them; then the order operations as a
    // customer, whose orders need no customer_id and so are created, and followed through the
    // document's links (read, change, cancel, link to a chat).
    let runs = [
        (User::new(Role::Admin), vec![], 20),
        (
            User::new(Role::Customer),
            vec!["--include-tag", "orders"],
            15,
        ),
    ];
    for (user, only, examples) in runs {
        let (passed, output) = run_schemathesis(&app, user, &only, examples).await;
        println!("{output}");
        assert!(passed, "schemathesis as {:?} failed:\n{output}", user.role);
        assert!(
            output.contains(" passed"),
            "schemathesis ran no test case:\n{output}"
        );
    }
    let (status, ready) = app
        .send(User::new(Role::Admin), Method::GET, "/ready", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    app.stop().await;
}
