//! The catalogue's prices: admin and system set them with `PUT /products/{id}/price`, anyone
//! reads them.

use order_service::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{TestApp, User, spawn_app};

/// `PUT /products/{product}/price` with `body` as `user`.
async fn put_price(app: &TestApp, user: User, product: Uuid, body: Value) -> (StatusCode, Value) {
    app.send(
        user,
        Method::PUT,
        &format!("/api/v1/products/{product}/price"),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn admin_and_system_set_a_price_that_anyone_reads() {
    let app = spawn_app().await;
    let product = Uuid::now_v7();
    let (status, view) = put_price(
        &app,
        User::new(Role::Admin),
        product,
        json!({"unit_price": 100.00, "currency": "THB"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["product_id"], product.to_string());
    assert_eq!(view["unit_price"], 100.0);
    assert_eq!(view["currency"], "THB");
    assert!(view["updated_at"].is_string(), "{view}");

    // A back-office import sets it again: the new price replaces the old one.
    let (status, view) = put_price(
        &app,
        User::new(Role::System),
        product,
        json!({"unit_price": 120.50, "currency": "THB"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    for role in [Role::Customer, Role::Ai, Role::Admin, Role::System] {
        let (status, read) = app
            .get(
                User::new(role),
                &format!("/api/v1/products/{product}/price"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{role}: {read}");
        assert_eq!(read["unit_price"], 120.5, "{role}: {read}");
        assert_eq!(read, view, "{role}");
    }
    let (status, body) = app
        .get(
            User::new(Role::Customer),
            &format!("/api/v1/products/{}/price", Uuid::now_v7()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "not_found");
    assert_eq!(app.count("product_prices"), 1);
}

#[tokio::test]
async fn customers_and_the_assistant_may_not_set_prices() {
    let app = spawn_app().await;
    let product = Uuid::now_v7();
    for role in [Role::Customer, Role::Ai] {
        let (status, body) = put_price(
            &app,
            User::new(role),
            product,
            json!({"unit_price": 0.01, "currency": "THB"}),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{role}: {body}");
        assert_eq!(body["error"], "forbidden");
    }
    assert_eq!(app.count("product_prices"), 0);
}

#[tokio::test]
async fn a_price_body_that_is_not_a_price_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let admin = User::new(Role::Admin);
    let product = Uuid::now_v7();
    for (body, code, field) in [
        (
            json!({"unit_price": -1, "currency": "THB"}),
            "invalid_field",
            "unit_price",
        ),
        (
            json!({"unit_price": 1.005, "currency": "THB"}),
            "invalid_field",
            "unit_price",
        ),
        (
            json!({"unit_price": "100.00", "currency": "THB"}),
            "invalid_field",
            "unit_price",
        ),
        (
            json!({"unit_price": 100, "currency": "thb"}),
            "invalid_field",
            "currency",
        ),
        (json!({"unit_price": 100}), "invalid_field", ""),
        (json!({"currency": "THB"}), "invalid_field", ""),
        (
            json!({"unit_price": 100, "currency": "THB", "sale": true}),
            "unknown_field",
            "sale",
        ),
    ] {
        let (status, answer) = put_price(&app, admin, product, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["error"], code, "{body}: {answer}");
        if !field.is_empty() {
            assert_eq!(answer["details"]["field"], field, "{body}: {answer}");
        }
    }
    let (status, answer) = app
        .send(
            admin,
            Method::PUT,
            "/api/v1/products/abc/price",
            Some(json!({"unit_price": 1, "currency": "THB"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"], "invalid_id");
    assert_eq!(app.count("product_prices"), 0);
}
