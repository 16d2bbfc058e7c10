//! The catalogue's prices: admin and system set them with `PUT /products/{id}/price`, anyone
//! reads them, and customers and the chat assistant are charged them: an order line at another
//! price is refused, and so, by default, is a product without one.

use order_service::auth::Role;
use order_service::commands::CataloguePrices;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{TestApp, User, chat_order, order_body, spawn_app, spawn_app_with};

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

/// The service with the default `CATALOGUE_PRICES=required` (the test fixture's is `when-set`).
async fn required() -> TestApp {
    spawn_app_with(|config| config.catalogue_prices = CataloguePrices::Required).await
}

/// The stock view's `available` of `product`.
fn available(app: &TestApp, product: Uuid) -> i64 {
    app.db()
        .query_row(
            "SELECT available FROM product_stock WHERE product_id = ?1",
            [product.to_string()],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn a_customer_ordering_at_the_catalogue_price_is_served() {
    let app = required().await;
    let product = Uuid::now_v7();
    app.set_price(product, 100.00, "THB").await;
    let order = app
        .create_order(User::new(Role::Customer), order_body(&[product]))
        .await;
    assert_eq!(order["items"][0]["unit_price"], 100.0);
    assert_eq!(order["total_amount"], 200.0);
}

#[tokio::test]
async fn a_customer_sending_another_price_is_refused_and_nothing_is_written() {
    let app = required().await;
    let (cheap, priced) = (Uuid::now_v7(), Uuid::now_v7());
    app.set_price(cheap, 100.00, "THB").await;
    app.set_price(priced, 120.00, "THB").await;
    app.set_stock(priced, 5).await;
    let before = app.footprint();

    // order_body sends 100.00 for each: right for the first, 20.00 short for the second.
    let (status, body) = app
        .post(
            User::new(Role::Customer),
            "/api/v1/orders",
            order_body(&[cheap, priced]),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "price_mismatch", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&priced.to_string()) && message.contains("120.00"),
        "the message names the product and its price: {message}"
    );
    assert_eq!(
        body["details"]["items"],
        json!([{
            "field": "items[1].unit_price",
            "product_id": priced,
            "unit_price": 100.0,
            "currency": "THB",
            "catalogue_unit_price": 120.0,
            "catalogue_currency": "THB",
        }]),
        "{body}"
    );
    assert_eq!(app.footprint(), before, "a refused order left rows behind");
    assert_eq!(app.count("orders"), 0);
    assert_eq!(app.count("order_events_outbox"), 0);
    assert_eq!(available(&app, priced), 5, "the stock was taken");

    // The catalogue's price in another currency is not the order's price either.
    let mut body = order_body(&[cheap]);
    body["currency"] = json!("USD");
    let (status, answer) = app
        .post(User::new(Role::Customer), "/api/v1/orders", body)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"], "price_mismatch", "{answer}");
    assert_eq!(answer["details"]["items"][0]["currency"], "USD");
    assert_eq!(answer["details"]["items"][0]["catalogue_currency"], "THB");
    assert_eq!(app.footprint(), before);
}

#[tokio::test]
async fn an_unpriced_product_is_refused_unless_prices_are_checked_only_when_set() {
    let app = required().await;
    let (priced, unpriced) = (Uuid::now_v7(), Uuid::now_v7());
    app.set_price(priced, 100.00, "THB").await;
    let before = app.footprint();
    let (status, body) = app
        .post(
            User::new(Role::Customer),
            "/api/v1/orders",
            order_body(&[priced, unpriced]),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "unpriced_product", "{body}");
    assert_eq!(
        body["details"]["items"],
        json!([{"field": "items[1].product_id", "product_id": unpriced}]),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&unpriced.to_string()),
        "{body}"
    );
    assert_eq!(app.footprint(), before);

    let when_set =
        spawn_app_with(|config| config.catalogue_prices = CataloguePrices::WhenSet).await;
    when_set.set_price(priced, 100.00, "THB").await;
    when_set
        .create_order(User::new(Role::Customer), order_body(&[priced, unpriced]))
        .await;
    // A priced product is still checked.
    when_set.set_price(priced, 99.00, "THB").await;
    let (status, body) = when_set
        .post(
            User::new(Role::Customer),
            "/api/v1/orders",
            order_body(&[priced, unpriced]),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "price_mismatch", "{body}");
}

#[tokio::test]
async fn admin_and_system_callers_set_any_price() {
    let app = required().await;
    let (priced, unpriced) = (Uuid::now_v7(), Uuid::now_v7());
    app.set_price(priced, 120.00, "THB").await;
    for role in [Role::Admin, Role::System] {
        let mut body = order_body(&[priced, unpriced]);
        body["customer_id"] = json!(Uuid::now_v7());
        let order = app.create_order(User::new(role), body).await;
        assert_eq!(order["items"][0]["unit_price"], 100.0, "{role}");
    }
}

#[tokio::test]
async fn the_assistant_is_held_to_the_catalogue_price_like_a_customer() {
    let app = required().await;
    let product = Uuid::now_v7();
    app.set_price(product, 120.00, "THB").await;
    let ai = User::new(Role::Ai);
    let mut body = chat_order(Uuid::now_v7(), Uuid::now_v7());
    body["items"][0]["product_id"] = json!(product);
    let before = app.footprint();
    let (status, answer) = app.post(ai, "/api/v1/chat/orders", body.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"], "price_mismatch", "{answer}");
    assert_eq!(
        answer["details"]["items"][0]["field"],
        "items[0].unit_price"
    );
    assert_eq!(app.footprint(), before);

    let mut unpriced = body.clone();
    unpriced["items"][0]["product_id"] = json!(Uuid::now_v7());
    let (status, answer) = app.post(ai, "/api/v1/chat/orders", unpriced).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"], "unpriced_product", "{answer}");

    body["items"][0]["unit_price"] = json!(120.00);
    let (status, answer) = app.post(ai, "/api/v1/chat/orders", body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["total_amount"], 240.0);
}

#[tokio::test]
async fn a_customer_adding_an_item_at_another_price_is_refused() {
    let app = required().await;
    let customer = User::new(Role::Customer);
    let (first, added) = (Uuid::now_v7(), Uuid::now_v7());
    app.set_price(first, 100.00, "THB").await;
    app.set_price(added, 75.00, "THB").await;
    app.set_stock(added, 3).await;
    let order = app.create_order(customer, order_body(&[first])).await;
    let path = format!("/api/v1/orders/{}", order["order_id"].as_str().unwrap());
    let add = |price: f64| json!({"items": {"add": [{"product_id": added, "quantity": 1, "unit_price": price}]}});
    let before = app.footprint();
    let (status, body) = app
        .send(customer, Method::PATCH, &path, Some(add(50.00)))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "price_mismatch", "{body}");
    assert_eq!(
        body["details"]["items"][0]["field"],
        "items.add[0].unit_price"
    );
    assert_eq!(body["details"]["items"][0]["catalogue_unit_price"], 75.0);
    assert_eq!(app.footprint(), before);
    assert_eq!(available(&app, added), 3);
    let (_, unchanged) = app.get(customer, &path).await;
    assert_eq!(unchanged["total_amount"], 200.0);

    let (status, body) = app
        .send(customer, Method::PATCH, &path, Some(add(75.00)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total_amount"], 275.0);
}
