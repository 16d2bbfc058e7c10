//! Who may do what: every endpoint's role rule, and customers kept to their own orders.

use order_service::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{TestApp, User, chat_order, simple_order, spawn_app};

const ALL: [Role; 4] = [Role::Admin, Role::System, Role::Customer, Role::Ai];

/// A pending order of `owner`, created by an admin.
async fn pending_order(app: &TestApp, owner: User) -> String {
    let mut body = simple_order();
    body["customer_id"] = json!(owner.id);
    let order = app.create_order(User::new(Role::Admin), body).await;
    order["order_id"].as_str().unwrap().to_owned()
}

async fn confirmed_order(app: &TestApp, owner: User) -> String {
    let id = pending_order(app, owner).await;
    let (status, _) = app
        .post(
            User::new(Role::System),
            &format!("/api/v1/orders/{id}/confirm"),
            json!({"payment_confirmed": true, "inventory_reserved": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    id
}

/// Checks `allowed` roles succeed and every other role gets 403 and changes nothing. `setup`
/// prepares what the attempt acts on (for a customer caller, its own order).
async fn check<S, SFut, F, Fut>(app: &TestApp, what: &str, allowed: &[Role], setup: S, attempt: F)
where
    S: Fn(User) -> SFut,
    SFut: std::future::Future<Output = String>,
    F: Fn(User, String) -> Fut,
    Fut: std::future::Future<Output = (StatusCode, Value)>,
{
    for role in ALL {
        let user = User::new(role);
        let target = setup(user).await;
        let before = app.footprint();
        let (status, body) = attempt(user, target).await;
        if allowed.contains(&role) {
            assert!(status.is_success(), "{what} as {role}: {status} {body}");
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "{what} as {role}: {body}");
            assert_eq!(body["error"], "forbidden");
            assert_eq!(app.footprint(), before, "{what} as {role} changed data");
        }
    }
}

#[tokio::test]
async fn every_endpoint_enforces_its_roles() {
    let app = spawn_app().await;
    let app = &app;

    let nothing = |_| async { String::new() };
    let pending = |user| pending_order(app, user);
    let confirmed = |user| confirmed_order(app, user);

    check(
        app,
        "create",
        &[Role::Customer, Role::Admin, Role::System],
        nothing,
        |user, _| async move {
            let mut body = simple_order();
            if user.role != Role::Customer {
                body["customer_id"] = json!(Uuid::now_v7());
            }
            app.post(user, "/api/v1/orders", body).await
        },
    )
    .await;

    check(
        app,
        "read",
        &[Role::Customer, Role::Admin, Role::System],
        pending,
        |user, id| async move { app.get(user, &format!("/api/v1/orders/{id}")).await },
    )
    .await;

    check(
        app,
        "list",
        &[Role::Customer, Role::Admin, Role::System],
        nothing,
        |user, _| async move { app.get(user, "/api/v1/orders").await },
    )
    .await;

    check(app, "update", &[Role::Customer, Role::Admin], pending, |user, id| async move {
        let body = json!({"shipping_address": {"street": "1 New Rd", "city": "Bangkok", "postal_code": "10200", "country": "Thailand"}});
        app.send(user, Method::PATCH, &format!("/api/v1/orders/{id}"), Some(body)).await
    })
    .await;

    check(
        app,
        "status",
        &[Role::Admin, Role::System],
        confirmed,
        |user, id| async move {
            app.post(
                user,
                &format!("/api/v1/orders/{id}/status"),
                json!({"status": "processing", "reason": "picking"}),
            )
            .await
        },
    )
    .await;

    check(
        app,
        "confirm",
        &[Role::Admin, Role::System],
        pending,
        |user, id| async move {
            app.post(
                user,
                &format!("/api/v1/orders/{id}/confirm"),
                json!({"payment_confirmed": true, "inventory_reserved": true}),
            )
            .await
        },
    )
    .await;

    check(
        app,
        "cancel",
        &[Role::Customer, Role::Admin, Role::System],
        pending,
        |user, id| async move {
            app.post(
                user,
                &format!("/api/v1/orders/{id}/cancel"),
                json!({"reason": "changed mind"}),
            )
            .await
        },
    )
    .await;

    check(
        app,
        "stock override",
        &[Role::Admin],
        pending,
        |user, id| async move {
            let (_, order) = app
                .get(User::new(Role::Admin), &format!("/api/v1/orders/{id}"))
                .await;
            let product = order["items"][0]["product_id"].clone();
            app.post(
                user,
                &format!("/api/v1/orders/{id}/stock-override"),
                json!({"reason": "VIP", "expected_restock_date": "2030-01-01T00:00:00Z",
                   "items": [{"product_id": product, "override_quantity": 1}]}),
            )
            .await
        },
    )
    .await;

    check(
        app,
        "set stock",
        &[Role::Admin, Role::System],
        nothing,
        |user, _| async move {
            app.send(
                user,
                Method::PUT,
                &format!("/api/v1/products/{}/stock", Uuid::now_v7()),
                Some(json!({"available": 3})),
            )
            .await
        },
    )
    .await;

    check(
        app,
        "set price",
        &[Role::Admin, Role::System],
        nothing,
        |user, _| async move {
            app.send(
                user,
                Method::PUT,
                &format!("/api/v1/products/{}/price", Uuid::now_v7()),
                Some(json!({"unit_price": 10.00, "currency": "THB"})),
            )
            .await
        },
    )
    .await;

    let priced = |_| async {
        let product = Uuid::now_v7();
        let (status, body) = app
            .send(
                User::new(Role::Admin),
                Method::PUT,
                &format!("/api/v1/products/{product}/price"),
                Some(json!({"unit_price": 10.00, "currency": "THB"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        product.to_string()
    };
    check(
        app,
        "read price",
        &ALL,
        priced,
        |user, product| async move {
            app.get(user, &format!("/api/v1/products/{product}/price"))
                .await
        },
    )
    .await;

    check(
        app,
        "chat order",
        &[Role::Ai, Role::Admin],
        nothing,
        |user, _| async move {
            let body = chat_order(Uuid::now_v7(), Uuid::now_v7());
            app.post(user, "/api/v1/chat/orders", body).await
        },
    )
    .await;

    check(
        app,
        "chat link",
        &[Role::Ai, Role::Admin, Role::Customer],
        pending,
        |user, id| async move {
            app.post(
            user,
            &format!("/api/v1/orders/{id}/chat-links"),
            json!({"chat_id": Uuid::now_v7(), "link_type": "inquiry", "context": "Where is it?"}),
        )
        .await
        },
    )
    .await;
}

#[tokio::test]
async fn another_customers_order_is_not_found_and_untouched() {
    let app = spawn_app().await;
    let owner = User::new(Role::Customer);
    let other = User::new(Role::Customer);
    let id = pending_order(&app, owner).await;
    let before = app.footprint();
    let attempts = [
        app.get(other, &format!("/api/v1/orders/{id}")).await,
        app.send(
            other,
            Method::PATCH,
            &format!("/api/v1/orders/{id}"),
            Some(json!({"shipping_address": {"street": "x", "city": "y", "postal_code": "1", "country": "z"}})),
        )
        .await,
        app.post(other, &format!("/api/v1/orders/{id}/cancel"), json!({"reason": "mine now"})).await,
        app.post(
            other,
            &format!("/api/v1/orders/{id}/chat-links"),
            json!({"chat_id": Uuid::now_v7(), "link_type": "complaint", "context": "not mine"}),
        )
        .await,
    ];
    for (status, body) in attempts {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"], "not_found");
        assert!(body.get("order_number").is_none() && !body.to_string().contains("ORD-"));
    }
    assert_eq!(app.footprint(), before);
    let (status, _) = app
        .get(other, &format!("/api/v1/orders?customer_id={}", owner.id))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_customer_cancels_only_while_pending() {
    let app = spawn_app().await;
    let owner = User::new(Role::Customer);
    let id = confirmed_order(&app, owner).await;
    let before = app.footprint();
    let (status, body) = app
        .post(
            owner,
            &format!("/api/v1/orders/{id}/cancel"),
            json!({"reason": "too slow"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["details"]["current_status"], "confirmed");
    assert_eq!(app.footprint(), before);
    cancel(
        &app,
        User::new(Role::Admin),
        &id,
        json!({"reason": "customer asked support"}),
    )
    .await;
    assert_eq!(refund_required(&app, &id), true, "a paid order is refunded");
}

#[tokio::test]
async fn only_an_admin_or_a_system_caller_decides_a_refund() {
    let app = spawn_app().await;
    let owner = User::new(Role::Customer);
    let id = pending_order(&app, owner).await;
    let before = app.footprint();
    for refund in [true, false] {
        let (status, body) = app
            .post(
                owner,
                &format!("/api/v1/orders/{id}/cancel"),
                json!({"reason": "changed my mind", "refund_required": refund}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"], "forbidden", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("refund_required"),
            "the answer names the field: {body}"
        );
        assert_eq!(app.footprint(), before, "nothing written");
    }
    // Without it the customer cancels, and the service decides: nothing was paid.
    cancel(&app, owner, &id, json!({"reason": "changed my mind"})).await;
    assert_eq!(refund_required(&app, &id), false);
    // A system caller (the payment service, say) may say a refund is due.
    let other = pending_order(&app, owner).await;
    let body = json!({"reason": "payment reversed", "refund_required": true});
    cancel(&app, User::new(Role::System), &other, body).await;
    assert_eq!(refund_required(&app, &other), true);
}

/// Cancels the order `id` as `user` with `body`, which must answer 200.
async fn cancel(app: &TestApp, user: User, id: &str, body: Value) {
    let (status, answer) = app
        .post(user, &format!("/api/v1/orders/{id}/cancel"), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// What the `order.cancelled` event of the order `id` says of a refund.
fn refund_required(app: &TestApp, id: &str) -> Value {
    let cancelled = app
        .events_of(id)
        .into_iter()
        .find(|r| r.topic == "order.cancelled")
        .unwrap();
    cancelled.payload["data"]["refund_required"].clone()
}
