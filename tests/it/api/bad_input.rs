//! Every class of bad input gets its 4xx and a JSON error naming the problem, and stores nothing.

use order_service::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{TestApp, User, into_json, simple_order, spawn_app};

/// Sends `body` (raw bytes) with `content_type` and checks the answer and that nothing changed.
async fn refused(
    app: &TestApp,
    user: User,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    (status, code): (StatusCode, &str),
) -> Value {
    let before = app.footprint();
    let mut req = app.request(user, method, path).body(body);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    let (got, body) = into_json(req.send().await.unwrap()).await;
    assert_eq!(got, status, "{path}: {body}");
    assert_eq!(body["error"], code, "{path}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body.get("details").is_some(), "{body}");
    assert_eq!(
        app.footprint(),
        before,
        "{code}: a refused request left rows behind"
    );
    body
}

async fn refused_json(
    app: &TestApp,
    user: User,
    body: Value,
    (status, code): (StatusCode, &str),
) -> Value {
    refused(
        app,
        user,
        Method::POST,
        "/api/v1/orders",
        Some("application/json"),
        body.to_string().into_bytes(),
        (status, code),
    )
    .await
}

fn with(mut body: Value, pointer: &str, value: Value) -> Value {
    *body.pointer_mut(pointer).unwrap() = value;
    body
}

fn with_extra(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

#[tokio::test]
async fn malformed_bodies_and_wrong_content_types() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let path = "/api/v1/orders";
    refused(
        &app,
        customer,
        Method::POST,
        path,
        Some("application/json"),
        b"{\"items\": [".to_vec(),
        (StatusCode::BAD_REQUEST, "malformed_json"),
    )
    .await;
    refused(
        &app,
        customer,
        Method::POST,
        path,
        Some("application/json"),
        Vec::new(),
        (StatusCode::BAD_REQUEST, "malformed_json"),
    )
    .await;
    let valid = simple_order().to_string().into_bytes();
    refused(
        &app,
        customer,
        Method::POST,
        path,
        Some("text/plain"),
        valid.clone(),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
    )
    .await;
    refused(
        &app,
        customer,
        Method::POST,
        path,
        None,
        valid,
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
    )
    .await;
    let mut huge = simple_order();
    huge["shipping_address"]["street"] = json!("x".repeat(70 * 1024));
    refused(
        &app,
        customer,
        Method::POST,
        path,
        Some("application/json"),
        huge.to_string().into_bytes(),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
    )
    .await;
}

#[tokio::test]
async fn unknown_and_read_only_fields() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let admin = User::new(Role::Admin);
    let body = refused_json(
        &app,
        customer,
        with_extra(simple_order(), "colour", json!("red")),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_field"),
    )
    .await;
    assert_eq!(body["details"]["field"], "colour");
    for field in [
        "status",
        "total_amount",
        "order_number",
        "order_id",
        "created_at",
    ] {
        let mut order = simple_order();
        order[field] = json!("confirmed");
        let body = refused_json(
            &app,
            customer,
            order,
            (StatusCode::UNPROCESSABLE_ENTITY, "read_only_field"),
        )
        .await;
        assert_eq!(body["details"]["field"], field);
    }
    let mut item_total = simple_order();
    item_total["items"][0]["total_price"] = json!(1.00);
    let body = refused_json(
        &app,
        customer,
        item_total,
        (StatusCode::UNPROCESSABLE_ENTITY, "read_only_field"),
    )
    .await;
    assert_eq!(body["details"]["field"], "items[0].total_price");

    let mut for_someone_else = simple_order();
    for_someone_else["customer_id"] = json!(Uuid::now_v7());
    refused_json(
        &app,
        customer,
        for_someone_else,
        (StatusCode::FORBIDDEN, "forbidden"),
    )
    .await;
    let mut override_by_customer = simple_order();
    override_by_customer["stock_override"] =
        json!({"reason": "please", "expected_restock_date": "2030-01-01T00:00:00Z"});
    refused_json(
        &app,
        customer,
        override_by_customer,
        (StatusCode::FORBIDDEN, "forbidden"),
    )
    .await;
    // Staff must say whose order it is.
    let body = refused_json(
        &app,
        admin,
        simple_order(),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
    )
    .await;
    assert_eq!(body["details"]["field"], "customer_id");
}

#[tokio::test]
async fn quantities_prices_and_item_counts() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    for quantity in [json!(0), json!(-1), json!(1.5), json!("2"), json!(100_001)] {
        let body = refused_json(
            &app,
            customer,
            with(simple_order(), "/items/0/quantity", quantity),
            (unprocessable, "invalid_field"),
        )
        .await;
        assert_eq!(body["details"]["field"], "items[0].quantity");
    }
    for price in [json!(10.005), json!(-1.00), json!("10.00"), json!(null)] {
        let body = refused_json(
            &app,
            customer,
            with(simple_order(), "/items/0/unit_price", price),
            (unprocessable, "invalid_field"),
        )
        .await;
        assert_eq!(body["details"]["field"], "items[0].unit_price");
    }
    let item = |_| json!({"product_id": Uuid::now_v7(), "quantity": 1, "unit_price": 1.00});
    let many: Vec<Value> = (0..101).map(item).collect();
    refused_json(
        &app,
        customer,
        with(simple_order(), "/items", json!(many)),
        (unprocessable, "too_many_items"),
    )
    .await;
    refused_json(
        &app,
        customer,
        with(simple_order(), "/items", json!([])),
        (unprocessable, "no_items"),
    )
    .await;
    let same = Uuid::now_v7();
    let twice = json!([{"product_id": same, "quantity": 1, "unit_price": 1.00}, {"product_id": same, "quantity": 2, "unit_price": 1.00}]);
    refused_json(
        &app,
        customer,
        with(simple_order(), "/items", twice),
        (unprocessable, "duplicate_product"),
    )
    .await;
    let hundred: Vec<Value> = (0..100).map(item).collect();
    app.create_order(customer, with(simple_order(), "/items", json!(hundred)))
        .await;
}

#[tokio::test]
async fn addresses_currencies_and_channels() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    for part in ["street", "city", "postal_code", "country"] {
        let mut order = simple_order();
        order["shipping_address"]
            .as_object_mut()
            .unwrap()
            .remove(part);
        let body = refused_json(&app, customer, order, (unprocessable, "invalid_field")).await;
        assert!(body["message"].as_str().unwrap().contains(part), "{body}");
        let body = refused_json(
            &app,
            customer,
            with(
                simple_order(),
                &format!("/shipping_address/{part}"),
                json!("  "),
            ),
            (unprocessable, "invalid_field"),
        )
        .await;
        assert_eq!(body["details"]["field"], format!("shipping_address.{part}"));
    }
    let mut no_address = simple_order();
    no_address
        .as_object_mut()
        .unwrap()
        .remove("shipping_address");
    refused_json(&app, customer, no_address, (unprocessable, "invalid_field")).await;
    refused_json(
        &app,
        customer,
        with(simple_order(), "/currency", json!("baht")),
        (unprocessable, "invalid_field"),
    )
    .await;
    refused_json(
        &app,
        customer,
        with(simple_order(), "/source_channel", json!("fax")),
        (unprocessable, "invalid_field"),
    )
    .await;
    refused_json(
        &app,
        customer,
        with(simple_order(), "/source_channel", json!("chat")),
        (unprocessable, "invalid_field"),
    )
    .await;
}

#[tokio::test]
async fn ids_that_are_not_uuids() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let admin = User::new(Role::Admin);
    let body = refused_json(
        &app,
        customer,
        with(simple_order(), "/items/0/product_id", json!("sku-1")),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
    )
    .await;
    assert_eq!(body["details"]["field"], "items[0].product_id");
    let (status, body) = app.get(customer, "/api/v1/orders/not-a-uuid").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_id"))
    );
    refused(
        &app,
        admin,
        Method::POST,
        "/api/v1/orders/42/cancel",
        Some("application/json"),
        br#"{"reason":"x"}"#.to_vec(),
        (StatusCode::BAD_REQUEST, "invalid_id"),
    )
    .await;
    refused(
        &app,
        admin,
        Method::PUT,
        "/api/v1/products/abc/stock",
        Some("application/json"),
        br#"{"available":1}"#.to_vec(),
        (StatusCode::BAD_REQUEST, "invalid_id"),
    )
    .await;
    let (status, body) = app.get(admin, "/api/v1/orders?customer_id=bob").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
    let (status, _) = app.get(admin, "/api/v1/orders?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app.get(admin, "/api/v1/orders?status=lost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let response = app
        .request(customer, Method::POST, "/api/v1/orders")
        .header("X-Correlation-ID", "not-a-uuid")
        .json(&simple_order())
        .send()
        .await
        .unwrap();
    let (status, body) = into_json(response).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_correlation_id"))
    );
    assert_eq!(app.count("orders"), 0);
}

#[tokio::test]
async fn changes_that_the_order_cannot_take() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let admin = User::new(Role::Admin);
    let order = app.create_order(customer, simple_order()).await;
    let id = order["order_id"].as_str().unwrap();
    let product = order["items"][0]["product_id"].clone();
    let path = format!("/api/v1/orders/{id}");
    let cases = [
        (json!({}), "nothing_to_change"),
        (
            json!({"shipping_address": order["shipping_address"]}),
            "nothing_to_change",
        ),
        (json!({"items": {"remove": [product]}}), "no_items"),
        (
            json!({"items": {"remove": [Uuid::now_v7()]}}),
            "unknown_product",
        ),
        (
            json!({"items": {"add": [{"product_id": product, "quantity": 1, "unit_price": 1.00}]}}),
            "product_already_in_order",
        ),
        (
            json!({"items": {"modify": [{"product_id": product, "quantity": 0}]}}),
            "invalid_field",
        ),
        (json!({"status": "confirmed"}), "read_only_field"),
    ];
    for (body, code) in cases {
        refused(
            &app,
            customer,
            Method::PATCH,
            &path,
            Some("application/json"),
            body.to_string().into_bytes(),
            (StatusCode::UNPROCESSABLE_ENTITY, code),
        )
        .await;
    }
    let status_path = format!("/api/v1/orders/{id}/status");
    for (body, code) in [
        (
            json!({"status": "confirmed", "reason": "paid"}),
            "use_confirm",
        ),
        (json!({"status": "cancelled", "reason": "x"}), "use_cancel"),
        (json!({"status": "lost", "reason": "x"}), "invalid_field"),
        (json!({"status": "processing"}), "invalid_field"),
    ] {
        refused(
            &app,
            admin,
            Method::POST,
            &status_path,
            Some("application/json"),
            body.to_string().into_bytes(),
            (StatusCode::UNPROCESSABLE_ENTITY, code),
        )
        .await;
    }
    refused(
        &app,
        admin,
        Method::POST,
        &status_path,
        Some("application/json"),
        json!({"status": "processing", "reason": "x"})
            .to_string()
            .into_bytes(),
        (StatusCode::CONFLICT, "invalid_status_transition"),
    )
    .await;
    refused(&app, admin, Method::POST, &format!("/api/v1/orders/{id}/confirm"), Some("application/json"), json!({"payment_confirmed": true, "inventory_reserved": true, "estimated_fulfillment_date": "2001-01-01T00:00:00Z"}).to_string().into_bytes(), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field")).await;
    let missing = format!("/api/v1/orders/{}/confirm", Uuid::now_v7());
    refused(
        &app,
        admin,
        Method::POST,
        &missing,
        Some("application/json"),
        json!({"payment_confirmed": true, "inventory_reserved": true})
            .to_string()
            .into_bytes(),
        (StatusCode::NOT_FOUND, "not_found"),
    )
    .await;
    refused(
        &app,
        admin,
        Method::PUT,
        &format!("/api/v1/products/{}/stock", Uuid::now_v7()),
        Some("application/json"),
        json!({"available": -1}).to_string().into_bytes(),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
    )
    .await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let admin = User::new(Role::Admin);
    let (status, body) = app.get(admin, "/api/v1/nothing-here").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = app
        .send(admin, Method::DELETE, "/api/v1/orders", None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
}
