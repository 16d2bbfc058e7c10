//! Each endpoint's success path, and the events it writes, in order, in the outbox.

use order_service::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::app::{User, chat_order, order_body, simple_order, spawn_app, spawn_app_with, topics};

#[tokio::test]
async fn customer_creates_an_order_and_its_events_are_in_the_outbox() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let correlation = Uuid::now_v7();
    let product = Uuid::now_v7();
    let response = app
        .request(customer, Method::POST, "/api/v1/orders")
        .header("X-Correlation-ID", correlation.to_string())
        .header("User-Agent", "shop-web/1.0")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&order_body(&[product]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["x-correlation-id"].to_str().unwrap(),
        correlation.to_string()
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#""total_amount":200.00"#),
        "money has two decimals: {text}"
    );
    let order: serde_json::Value = serde_json::from_str(&text).unwrap();

    let id = order["order_id"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/orders/{id}"));
    assert_eq!(order["customer_id"], customer.id.to_string());
    assert_eq!(order["status"], "pending");
    assert_eq!(order["currency"], "THB");
    assert_eq!(order["source_channel"], "web");
    assert_eq!(order["total_amount"], 200.0);
    assert_eq!(order["items"][0]["total_price"], 200.0);
    let number = order["order_number"].as_str().unwrap();
    let year = chrono::Utc::now().format("%Y").to_string();
    assert_eq!(number, format!("ORD-{year}-000001"));

    let rows = app.events_of(id);
    assert_eq!(topics(&rows), ["order.created", "order.audit"]);
    let created = &rows[0].payload;
    assert_eq!(created["event_id"], rows[0].event_id.as_str());
    assert_eq!(created["source"], "order-service");
    assert_eq!(created["version"], "1.0");
    assert_eq!(created["data"]["order_number"], number);
    assert_eq!(created["data"]["created_by"], customer.id.to_string());
    assert_eq!(
        created["metadata"]["correlation_id"],
        correlation.to_string()
    );
    assert_eq!(created["metadata"]["causation_id"], request_id);
    assert_eq!(created["metadata"]["user_id"], customer.id.to_string());
    let audit = &rows[1].payload;
    assert_eq!(audit["metadata"]["causation_id"], rows[0].event_id.as_str());
    assert_eq!(audit["data"]["action"], "create");
    assert_eq!(audit["data"]["actor"]["user_type"], "customer");
    assert_eq!(audit["data"]["actor"]["ip_address"], "127.0.0.1");
    assert_eq!(audit["data"]["actor"]["user_agent"], "shop-web/1.0");
    assert!(rows.iter().all(|r| r.key == id && r.status == "pending"));
    let headers = &rows[0].headers;
    assert_eq!(headers["Nats-Msg-Id"], rows[0].event_id.as_str());
    assert_eq!(headers["Event-Type"], "order.created");
    assert_eq!(headers["Event-Version"], "1.0");
    assert_eq!(headers["Content-Type"], "application/json");
    assert_eq!(headers["Correlation-Id"], correlation.to_string());
    assert_eq!(
        headers["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
}

#[tokio::test]
async fn forwarded_for_names_the_client_behind_a_trusted_proxy() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let response = app
        .request(customer, Method::POST, "/api/v1/orders")
        .header("X-Forwarded-For", "198.51.100.7")
        .json(&simple_order())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let rows = app.outbox();
    assert_eq!(
        rows[1].payload["data"]["actor"]["ip_address"],
        "198.51.100.7"
    );
}

#[tokio::test]
async fn reads_and_lists_with_filters_and_cursor() {
    let app = spawn_app().await;
    let alice = User::new(Role::Customer);
    let bob = User::new(Role::Customer);
    let admin = User::new(Role::Admin);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let order = app.create_order(alice, simple_order()).await;
        ids.push(order["order_id"].as_str().unwrap().to_owned());
    }
    app.create_order(bob, simple_order()).await;

    let (status, one) = app.get(alice, &format!("/api/v1/orders/{}", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["order_id"], ids[0].as_str());

    // Newest first, two per page, three pages.
    let mut seen = Vec::new();
    let mut path = "/api/v1/orders?limit=2".to_owned();
    loop {
        let (status, page) = app.get(alice, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for o in page["orders"].as_array().unwrap() {
            seen.push(o["order_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/orders?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "a customer sees exactly its own orders");

    let (_, all) = app.get(admin, "/api/v1/orders?limit=100").await;
    assert_eq!(all["orders"].as_array().unwrap().len(), 6);
    let (_, bobs) = app
        .get(admin, &format!("/api/v1/orders?customer_id={}", bob.id))
        .await;
    assert_eq!(bobs["orders"].as_array().unwrap().len(), 1);
    let (_, pending) = app.get(admin, "/api/v1/orders?status=confirmed").await;
    assert_eq!(pending["orders"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn update_changes_items_and_address_while_pending() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let (keep, drop, added) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let order = app.create_order(customer, order_body(&[keep, drop])).await;
    let id = order["order_id"].as_str().unwrap();
    let (status, updated) = app
        .send(
            customer,
            Method::PATCH,
            &format!("/api/v1/orders/{id}"),
            Some(json!({
                "items": {
                    "add": [{"product_id": added, "quantity": 1, "unit_price": 50.00}],
                    "remove": [drop],
                    "modify": [{"product_id": keep, "quantity": 3}]
                },
                "shipping_address": {
                    "street": "9 River Rd", "city": "Chiang Mai", "postal_code": "50000", "country": "Thailand"
                },
                "reason": "Customer requested item addition"
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["total_amount"], 350.0);
    assert_eq!(updated["shipping_address"]["city"], "Chiang Mai");

    let rows = app.events_of(id);
    assert_eq!(
        topics(&rows),
        [
            "order.created",
            "order.audit",
            "order.updated",
            "order.audit"
        ]
    );
    let changes = &rows[2].payload["data"]["changes"];
    assert_eq!(
        changes["items"]["added"][0]["product_id"],
        added.to_string()
    );
    assert_eq!(
        changes["items"]["removed"][0]["product_id"],
        drop.to_string()
    );
    assert_eq!(changes["items"]["modified"][0]["quantity"], 3);
    assert_eq!(changes["items"]["modified"][0]["previous_quantity"], 2);
    assert_eq!(changes["total_amount"]["old"], 400.0);
    assert_eq!(changes["total_amount"]["new"], 350.0);
    assert!(
        rows[2]
            .raw
            .contains(r#""total_amount":{"old":400.00,"new":350.00}"#),
        "{}",
        rows[2].raw
    );
    assert_eq!(changes["shipping_address"]["city"], "Chiang Mai");
    assert_eq!(
        rows[2].payload["data"]["reason"],
        "Customer requested item addition"
    );
    assert_eq!(rows[3].payload["data"]["action"], "update");
}

#[tokio::test]
async fn status_walks_the_life_cycle_and_refuses_skips() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let admin = User::new(Role::Admin);
    let system = User::new(Role::System);
    let order = app.create_order(customer, simple_order()).await;
    let id = order["order_id"].as_str().unwrap();

    let (status, body) = app
        .post(
            system,
            &format!("/api/v1/orders/{id}/status"),
            json!({"status": "shipped", "reason": "skip"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["details"]["current_status"], "pending");

    let (status, confirmed) = app
        .post(
            system,
            &format!("/api/v1/orders/{id}/confirm"),
            json!({"payment_confirmed": true, "inventory_reserved": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    assert_eq!(confirmed["status"], "confirmed");
    for next in ["processing", "shipped", "delivered"] {
        let (status, body) = app
            .post(
                admin,
                &format!("/api/v1/orders/{id}/status"),
                json!({"status": next, "reason": format!("moved to {next}"), "automatic": false}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], next);
    }
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/orders/{id}/cancel"),
            json!({"reason": "too late"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["details"]["current_status"], "delivered");

    let rows = app.events_of(id);
    assert_eq!(
        topics(&rows),
        [
            "order.created",
            "order.audit",
            "order.status_changed",
            "order.confirmed",
            "order.audit",
            "order.status_changed",
            "order.audit",
            "order.status_changed",
            "order.audit",
            "order.status_changed",
            "order.audit",
        ]
    );
    let stats: Vec<_> = app
        .outbox()
        .into_iter()
        .filter(|r| r.topic == "order.statistics_updated")
        .collect();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        stats[0].key,
        customer.id.to_string(),
        "statistics are keyed by customer"
    );
    assert_eq!(stats[0].payload["data"]["trigger_event"], "order.confirmed");
    assert!(stats[0].payload["metadata"].get("user_id").is_none());
    let confirmed = &rows[3].payload["data"];
    assert_eq!(confirmed["payment_confirmed"], true);
    assert_eq!(confirmed["total_amount"], 200.0);
    assert!(
        rows[3].raw.contains(r#""total_amount":200.00"#),
        "money has two decimals: {}",
        rows[3].raw
    );
    assert_eq!(
        rows[2].payload["data"]["automatic"], true,
        "a system confirmation is automatic"
    );
    assert_eq!(rows[2].payload["data"]["status_change"]["from"], "pending");
}

#[tokio::test]
async fn cancel_restocks_and_writes_four_events() {
    let app = spawn_app().await;
    let _admin = User::new(Role::Admin);
    let customer = User::new(Role::Customer);
    let product = Uuid::now_v7();
    app.set_stock(product, 5).await;
    let order = app.create_order(customer, order_body(&[product])).await;
    let id = order["order_id"].as_str().unwrap();
    let available = |app: &crate::app::TestApp| -> i64 {
        app.db()
            .query_row(
                "SELECT available FROM product_stock WHERE product_id = ?1",
                [product.to_string()],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(available(&app), 3, "an accepted order takes its quantity");
    let (status, body) = app
        .post(
            customer,
            &format!("/api/v1/orders/{id}/cancel"),
            json!({"reason": "Customer request"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(available(&app), 5, "a cancellation gives it back");
    let rows = app.events_of(id);
    assert_eq!(
        topics(&rows)[2..],
        ["order.status_changed", "order.cancelled", "order.audit"]
    );
    let cancelled = &rows[3].payload["data"];
    assert_eq!(
        cancelled["items_to_restock"],
        json!([{"product_id": product, "quantity": 2}])
    );
    assert_eq!(cancelled["refund_required"], false, "nothing was paid");
    assert_eq!(cancelled["cancelled_by"], customer.id.to_string());
    let last = app.outbox().pop().unwrap();
    assert_eq!(last.topic, "order.statistics_updated");
    assert_eq!(last.payload["data"]["trigger_event"], "order.cancelled");
}

#[tokio::test]
async fn short_stock_is_refused_unless_an_admin_overrides_it() {
    let app = spawn_app().await;
    let admin = User::new(Role::Admin);
    let customer = User::new(Role::Customer);
    let (short, plenty, untracked) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for (p, n) in [(short, 1), (plenty, 10)] {
        app.set_stock(p, n).await;
    }
    let before = app.footprint();
    let (status, body) = app
        .post(
            customer,
            "/api/v1/orders",
            order_body(&[short, plenty, untracked]),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "insufficient_stock");
    assert_eq!(
        body["details"]["items"],
        json!([{"product_id": short, "requested": 2, "available": 1}])
    );
    assert_eq!(
        app.footprint(),
        before,
        "a refused order leaves nothing behind"
    );

    let mut with_override = order_body(&[short, plenty, untracked]);
    with_override["customer_id"] = json!(customer.id);
    with_override["stock_override"] = json!({"reason": "VIP customer special request", "expected_restock_date": "2030-07-01T00:00:00Z"});
    let order = app.create_order(admin, with_override).await;
    let rows = app.events_of(order["order_id"].as_str().unwrap());
    assert_eq!(
        topics(&rows),
        [
            "order.created",
            "order.audit",
            "order.stock_override_applied"
        ]
    );
    let data = &rows[2].payload["data"];
    assert_eq!(
        data["items_overridden"],
        json!([{"product_id": short, "requested_quantity": 2, "available_quantity": 1, "override_quantity": 1}])
    );
    assert_eq!(
        data["override_details"]["approved_by"],
        admin.id.to_string()
    );
    assert_eq!(app.count("stock_overrides"), 1);
}

#[tokio::test]
async fn stock_override_endpoint_records_an_override_on_an_order() {
    let app = spawn_app().await;
    let admin = User::new(Role::Admin);
    let customer = User::new(Role::Customer);
    let product = Uuid::now_v7();
    let order = app.create_order(customer, order_body(&[product])).await;
    let id = order["order_id"].as_str().unwrap();
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/orders/{id}/stock-override"),
            json!({
                "reason": "Supplier delay",
                "expected_restock_date": "2030-07-01T00:00:00Z",
                "items": [{"product_id": product, "override_quantity": 2}]
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows = app.events_of(id);
    assert_eq!(
        topics(&rows)[2..],
        ["order.stock_override_applied", "order.audit"]
    );
    assert_eq!(
        rows[2].payload["data"]["items_overridden"][0]["requested_quantity"],
        2
    );
    assert_eq!(rows[3].payload["data"]["action"], "stock_override");

    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/orders/{id}/stock-override"),
            json!({
                "reason": "Too many",
                "expected_restock_date": "2030-07-01T00:00:00Z",
                "items": [{"product_id": product, "override_quantity": 3}]
            }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn chat_orders_and_chat_links() {
    let app = spawn_app().await;
    let ai = User::new(Role::Ai);
    let customer = User::new(Role::Customer);
    let chat_id = Uuid::now_v7();
    let body = chat_order(customer.id, chat_id);
    let (status, order) = app.post(ai, "/api/v1/chat/orders", body).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["source_channel"], "chat");
    let id = order["order_id"].as_str().unwrap();
    let rows = app.events_of(id);
    assert_eq!(
        topics(&rows),
        ["order.created", "order.chat_created", "order.audit"]
    );
    assert_eq!(rows[0].payload["data"]["source_channel"], "chat");
    assert_eq!(rows[1].payload["data"]["chat_id"], chat_id.to_string());
    assert_eq!(rows[1].payload["data"]["ai_confidence"], 0.95);
    assert_eq!(rows[2].payload["data"]["actor"]["user_type"], "ai");

    let (status, link) = app
        .post(
            customer,
            &format!("/api/v1/orders/{id}/chat-links"),
            json!({"chat_id": chat_id, "link_type": "support", "context": "Customer inquiry about delivery status"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    assert_eq!(link["link_type"], "support");
    let rows = app.events_of(id);
    assert_eq!(topics(&rows)[3..], ["order.chat_linked", "order.audit"]);
    assert_eq!(
        rows[3].payload["data"]["linked_by"],
        customer.id.to_string()
    );
    assert_eq!(app.count("order_chat_links"), 1);
}

#[tokio::test]
async fn health_and_ready_answer_without_a_token_and_only_an_admin_sees_the_checks() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = |token: Option<String>| {
        let mut request = app.client.get(app.url("/ready"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    // A probe, a customer and a bad token learn the status and nothing else (group names,
    // filters, error texts).
    for token in [
        None,
        Some(app.token(User::new(Role::Customer))),
        Some("not-a-token".to_owned()),
    ] {
        assert_eq!(ready(token).await, json!({"status": "ready"}));
    }
    let detailed = ready(Some(app.token(User::new(Role::Admin)))).await;
    assert_eq!(detailed["status"], "ready");
    assert_eq!(detailed["checks"]["database"]["status"], "ok");
    assert!(detailed["warnings"].is_array(), "{detailed}");
}

#[tokio::test]
async fn an_order_takes_a_bounded_number_of_chat_links() {
    let app = spawn_app_with(|c| c.write_rate_limit = 0).await;
    let customer = User::new(Role::Customer);
    let mut body = simple_order();
    body["customer_id"] = json!(customer.id);
    let order = app.create_order(customer, body).await;
    let id = order["order_id"].as_str().unwrap();
    let link = |n: usize| json!({"chat_id": Uuid::now_v7(), "link_type": "support", "context": format!("question {n}")});
    let limit = order_service::commands::MAX_CHAT_LINKS_PER_ORDER;
    for n in 0..limit {
        let (status, answer) = app
            .post(
                customer,
                &format!("/api/v1/orders/{id}/chat-links"),
                link(n),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "link {n}: {answer}");
    }
    let before = app.footprint();
    let (status, answer) = app
        .post(
            customer,
            &format!("/api/v1/orders/{id}/chat-links"),
            link(limit),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"], "too_many_chat_links", "{answer}");
    assert_eq!(answer["details"]["limit"], limit, "{answer}");
    assert_eq!(app.footprint(), before, "nothing written");
}
