//! The database under concurrency and restarts: group commit keeps each command whole, order
//! numbers unique and gap-free, events in commit order, and everything survives a restart.

use order_service::auth::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::app::{User, simple_order, spawn_app, spawn_app_with};

#[tokio::test]
async fn concurrent_commands_commit_whole_and_in_order() {
    let app = spawn_app().await;
    let admin = User::new(Role::Admin);
    let cancelled_id = {
        let order = app
            .create_order(User::new(Role::Customer), simple_order())
            .await;
        order["order_id"].as_str().unwrap().to_owned()
    };
    let (status, _) = app
        .post(
            admin,
            &format!("/api/v1/orders/{cancelled_id}/cancel"),
            json!({"reason": "first"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let before = app.outbox().len();

    let mut tasks = Vec::new();
    for n in 0..60 {
        let client = app.client.clone();
        let base = app.base.clone();
        let (user, path, body) = if n % 4 == 3 {
            // Fails inside the writer, in the same transaction as its neighbours.
            (
                admin,
                format!("/api/v1/orders/{cancelled_id}/cancel"),
                json!({"reason": "again"}),
            )
        } else {
            (
                User::new(Role::Customer),
                "/api/v1/orders".to_owned(),
                simple_order(),
            )
        };
        let token = app.token(user);
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            r.status()
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 45);

    let numbers: Vec<String> = {
        let db = app.db();
        let mut stmt = db
            .prepare("SELECT order_number FROM orders ORDER BY order_number")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let year = chrono::Utc::now().format("%Y").to_string();
    let expected: Vec<String> = (1..=46).map(|n| format!("ORD-{year}-{n:06}")).collect();
    assert_eq!(
        numbers, expected,
        "order numbers are unique and without gaps"
    );

    let rows = app.outbox();
    assert_eq!(
        rows.len() - before,
        90,
        "two events per created order, none for failures"
    );
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
    for pair in rows[before..].chunks(2) {
        assert_eq!(pair[0].topic, "order.created");
        assert_eq!(pair[1].topic, "order.audit");
        assert_eq!(
            pair[0].key, pair[1].key,
            "a command's events are adjacent in commit order"
        );
    }
}

#[tokio::test]
async fn orders_and_events_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kept.db");
    let customer = User::new(Role::Customer);
    let first = {
        let p = path.clone();
        spawn_app_with(move |c| c.database_path = p).await
    };
    let order = first.create_order(customer, simple_order()).await;
    first.stop().await;

    let second = spawn_app_with(move |c| c.database_path = path).await;
    let (status, again) = second
        .get(
            customer,
            &format!("/api/v1/orders/{}", order["order_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, order);
    assert_eq!(second.outbox().len(), 2);
    let next = second.create_order(customer, simple_order()).await;
    assert!(next["order_number"].as_str().unwrap().ends_with("000002"));
}

#[tokio::test]
async fn the_database_runs_in_wal_mode_with_full_sync() {
    let app = spawn_app().await;
    let mode: String = app
        .db()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = app
        .db()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        version,
        order_service::store::migration_names().count() as i64,
        "the migrations are recorded in the database"
    );
}
