//! One NATS identity per consumer group (`order-service identities add-group`, rendered into
//! `nats/users.conf`) on a real server: each group runs, dead-letters and has its letters
//! replayed with its own user and no violation, and is refused every resource of another group;
//! so is `subscriber`, the identity of `tail`, which used to serve every group.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use order_service::auth::Role;
use order_service::bus::NatsSettings;
use order_service::consumer::{
    Delivery, Event as OrderEvent, Failure, Group, GroupConfig, Handled, Handler, HandlerTx, dlq,
};
use order_service::domain::Topic;
use order_service::shutdown::Shutdown;
use serde_json::Value;
use tempfile::TempDir;
use uuid::Uuid;

use super::{cli, connect_recording, refused, service, violations_in_log};
use crate::app::{TestApp, User, metric, simple_order, until};
use crate::nats::{NatsServer, SERVICE_USER};
use crate::relay::drained;

/// A group's user and password, as `identities add-group` printed them.
pub(crate) struct GroupUser {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl GroupUser {
    /// Settings connecting to `nats` as this group.
    fn of(&self, nats: &NatsServer) -> NatsSettings {
        NatsSettings::new(nats.url()).with_user(&self.user, &self.password)
    }
}

/// A copy of the shipped identities with `groups` (name, topics) added by the command line, and
/// each group's user.
fn with_groups(groups: &[(&str, &[&str])]) -> (TempDir, HashMap<String, GroupUser>) {
    let groups: Vec<(&str, &[&str], &[&str])> =
        groups.iter().map(|(g, t)| (*g, *t, &[][..])).collect();
    with_emitting_groups(&groups)
}

/// [`with_groups`], each group with the topics it emits.
pub(crate) fn with_emitting_groups(
    groups: &[(&str, &[&str], &[&str])],
) -> (TempDir, HashMap<String, GroupUser>) {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "identities.conf",
        "users.conf",
        "permissions.conf",
        "groups.json",
    ] {
        std::fs::copy(NatsServer::shipped(file), dir.path().join(file)).unwrap();
    }
    let mut users = HashMap::new();
    for (group, topics, emits) in groups {
        let mut args = vec!["identities", "add-group", group];
        for topic in *topics {
            args.extend(["--topic", topic]);
        }
        for topic in *emits {
            args.extend(["--emits", topic]);
        }
        let output = Command::new(env!("CARGO_BIN_EXE_order-service"))
            .args(&args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let printed = String::from_utf8(output.stdout).unwrap();
        let value = |name: &str| {
            printed
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {printed}"))
                .to_owned()
        };
        users.insert(
            (*group).to_owned(),
            GroupUser {
                user: value("NATS_USER"),
                password: value("NATS_PASSWORD"),
            },
        );
    }
    assert!(
        !std::fs::read_to_string(dir.path().join("users.conf"))
            .unwrap()
            .contains(
                &users
                    .values()
                    .next()
                    .map_or(String::new(), |u| u.password.clone())
            ),
        "the password itself is kept nowhere"
    );
    (dir, users)
}

/// A handler that processes every event except the ones of one order, which it can never
/// process; it counts the deliveries it saw.
struct Picky {
    refused_order: Uuid,
    seen: Arc<Mutex<Vec<Uuid>>>,
}

impl Handler for Picky {
    type Prepared = ();

    async fn handle(
        &self,
        event: &OrderEvent,
        _delivery: &Delivery,
        _tx: &mut HandlerTx<'_>,
    ) -> Handled {
        self.seen.lock().unwrap().push(event.event_id());
        if event.order_id() == Some(self.refused_order) {
            return Err(Failure::permanent("refused by the test"));
        }
        Ok(())
    }
}

/// A handler that never answers: its messages use up `max_deliver` unacknowledged, and the
/// broker's advisory is what dead-letters them.
struct Hung;

impl Handler for Hung {
    type Prepared = ();

    async fn handle(&self, _: &OrderEvent, _: &Delivery, _: &mut HandlerTx<'_>) -> Handled {
        std::future::pending().await
    }
}

#[tokio::test]
async fn each_group_runs_dead_letters_and_replays_with_its_own_identity() {
    let (dir, users) = with_groups(&[
        ("billing", &["order.created"]),
        ("stuck", &["order.created"]),
    ]);
    let nats = NatsServer::start_with_identities_in(dir.path()).await;
    let (app, service_js) = service(&nats).await;
    let kept = app
        .create_order(User::new(Role::Customer), simple_order())
        .await;
    let refused = app
        .create_order(User::new(Role::Customer), simple_order())
        .await;
    let refused_order: Uuid = refused["order_id"].as_str().unwrap().parse().unwrap();
    drained(&app).await;

    let (client, errors) = connect_recording(&users["billing"].of(&nats)).await;
    let files = tempfile::tempdir().unwrap();
    let mut config = GroupConfig::new(
        "billing",
        &[Topic::Created],
        files.path().join("billing.db"),
    );
    config.backoff = vec![Duration::from_millis(20)];
    config.synchronous_full = false;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = Picky {
        refused_order,
        seen: seen.clone(),
    };
    let group = Group::new(jetstream::new(client), config, handler).unwrap();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(group.run(shutdown.signal()));

    until(
        "the group never dead-lettered the refused order",
        async || dlq::list(&service_js, "billing", None).await.unwrap().len() == 1,
    )
    .await;
    until("both orders' events came", async || {
        seen.lock().unwrap().len() == 2
    })
    .await;
    let letters = dlq::list(&service_js, "billing", None).await.unwrap();
    assert_eq!(letters[0].reason, "permanent");
    assert_eq!(
        letters[0].header("Dlq-Original-Msg-Id"),
        Some(created_event(&app, &refused_order.to_string()).as_str())
    );

    // The service sends it back (as /ops and `dlq replay` do); the group reads its replay stream.
    assert_eq!(
        dlq::replay(&service_js, "billing", None)
            .await
            .unwrap()
            .sent,
        1
    );
    until("the replayed letter never came back", async || {
        seen.lock().unwrap().len() == 3
    })
    .await;
    until("the replay never became a dead letter again", async || {
        dlq::list(&service_js, "billing", None)
            .await
            .unwrap()
            .iter()
            .any(|l| l.header("Dlq-Replayed") == Some("true"))
    })
    .await;

    // The service reads the group's consumers for /metrics with its own identity.
    until(
        "the service never sampled the group's consumer",
        async || {
            let metrics = app.metrics().await;
            metric(
                &metrics,
                r#"consumer_dead_letters{group="billing",topic="order.created",consumer="billing"}"#,
            ) == Some(1.0)
        },
    )
    .await;
    let out = cli(
        &nats.subscriber(),
        &["tail", "order.created", "--all", "--json", "--limit", "2"],
    );
    let tailed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kept_event = created_event(&app, kept["order_id"].as_str().unwrap());
    assert!(
        tailed
            .iter()
            .any(|l| l["message"]["event_id"] == kept_event.as_str()),
        "{out}"
    );

    // A group whose handler hangs: the broker's MAX_DELIVERIES advisory and the message read
    // back from its stream make the dead letter (the handler's timeout is past `ack_wait`, as
    // in consumer::a_message_never_answered_becomes_a_dead_letter_when_max_deliver_runs_out).
    let mut config = GroupConfig::new("stuck", &[Topic::Created], files.path().join("stuck.db"));
    config.max_deliver = 2;
    config.ack_wait = Duration::from_secs(1);
    config.handler_timeout = Duration::from_secs(2);
    config.synchronous_full = false;
    let (stuck_client, stuck_errors) = connect_recording(&users["stuck"].of(&nats)).await;
    let stuck = Group::new(jetstream::new(stuck_client), config, Hung).unwrap();
    let stuck = tokio::spawn(stuck.run(std::future::pending()));
    until("the hung messages never became dead letters", async || {
        dlq::list(&service_js, "stuck", None)
            .await
            .unwrap()
            .iter()
            .any(|l| l.reason == "max_deliver")
    })
    .await;
    stuck.abort();
    assert_eq!(*stuck_errors.lock().unwrap(), [] as [String; 0]);

    shutdown.trigger();
    running.await.unwrap().unwrap();
    assert_eq!(*errors.lock().unwrap(), [] as [String; 0]);
    for user in ["group-billing", "group-stuck", "subscriber"] {
        assert_eq!(
            violations_in_log(&nats, user).await,
            [] as [String; 0],
            "{user}"
        );
    }
    assert_eq!(
        violations_in_log(&nats, SERVICE_USER).await,
        [] as [String; 0]
    );
}

/// The event id of the order's `order.created` event.
fn created_event(app: &TestApp, order_id: &str) -> String {
    app.events_of(order_id)
        .into_iter()
        .find(|r| r.topic == "order.created")
        .expect("an order.created event")
        .event_id
}

/// What `settings`' user may not do to group `other` (consuming order.created) nor to streams
/// outside `own` (the topic streams its user may read): every attempt is a violation.
async fn refused_everything_of(settings: &NatsSettings, other: &str, own: &[&str]) {
    let (client, errors) = connect_recording(settings).await;
    // Requests nobody may answer: the violation is what tells.
    let request = |subject: String| {
        let client = client.clone();
        async move {
            let _ = tokio::time::timeout(
                Duration::from_millis(300),
                client.request(subject, "{}".into()),
            )
            .await;
        }
    };
    let mut publishes = vec![
        // Fetch from, create (or overwrite) and read its durable consumer; acknowledge for it.
        format!("$JS.API.CONSUMER.MSG.NEXT.ORDER_CREATED.{other}"),
        format!("$JS.API.CONSUMER.CREATE.ORDER_CREATED.{other}.order.created.>"),
        format!("$JS.API.CONSUMER.INFO.ORDER_CREATED.{other}"),
        format!("$JS.ACK.ORDER_CREATED.{other}.1.1.1.1.0"),
        format!("$JS.API.CONSUMER.MSG.NEXT.ORDER_DLQ_REPLAY.{other}"),
        // Take or read its lease.
        format!("$KV.ORDER_CONSUMER_OWNERS.{other}"),
        format!("$JS.API.DIRECT.GET.KV_ORDER_CONSUMER_OWNERS.$KV.ORDER_CONSUMER_OWNERS.{other}"),
        // Write its dead letters, read everyone's.
        format!("dlq.{other}.order.created"),
        "$JS.API.STREAM.MSG.GET.ORDER_DLQ".to_owned(),
        "$JS.API.CONSUMER.CREATE.ORDER_DLQ".to_owned(),
    ];
    // Streams of topics it does not consume.
    for stream in ["ORDER_CANCELLED", "ORDER_AUDIT"] {
        if !own.contains(&stream) {
            publishes.push(format!("$JS.API.STREAM.MSG.GET.{stream}"));
            publishes.push(format!("$JS.API.CONSUMER.CREATE.{stream}"));
        }
    }
    for subject in &publishes {
        request(subject.clone()).await;
        refused(&errors, "Publish to", subject).await;
    }
    // Other clients' replies, the other group's among them, and its advisories.
    for subject in [
        "_INBOX.>".to_owned(),
        format!("_INBOX_group-{other}.>"),
        format!("_INBOX_{SERVICE_USER}.>"),
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDER_CREATED.{other}"),
    ] {
        let _ = client.subscribe(subject.clone()).await;
        refused(&errors, "Subscription to", &subject).await;
    }
}

#[tokio::test]
async fn a_group_and_tail_are_refused_every_resource_of_another_group() {
    let (dir, users) = with_groups(&[
        ("billing", &["order.created"]),
        ("shipping", &["order.created", "order.cancelled"]),
    ]);
    let nats = NatsServer::start_with_identities_in(dir.path()).await;
    let (_app, _js) = service(&nats).await;
    refused_everything_of(&users["billing"].of(&nats), "shipping", &["ORDER_CREATED"]).await;
    // `tail`'s identity reads the topic streams and nothing of any group: before, the one
    // `subscriber` identity served every group and was allowed all of the above.
    refused_everything_of(
        &nats.subscriber(),
        "shipping",
        &["ORDER_CANCELLED", "ORDER_AUDIT"],
    )
    .await;
    // And `tail` still works with it.
    let out = cli(
        &nats.subscriber(),
        &["tail", "order.created", "--all", "--json", "--limit", "0"],
    );
    assert!(
        out.is_empty()
            || out
                .lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{out}"
    );
}

#[test]
fn the_shipped_users_are_what_groups_json_renders() {
    let output = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["identities", "render", "--check", "--dir"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("nats"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_group_that_emits_publishes_and_keeps_its_stream_with_its_own_identity() {
    use crate::consumer::emit::{
        GROUP, Picking, TOPIC, all_published, emits, order, start, stored,
    };
    let (dir, users) = with_emitting_groups(&[(GROUP, &["order.created"], &[TOPIC])]);
    let nats = NatsServer::start_with_identities_in(dir.path()).await;
    let (app, service_js) = service(&nats).await;
    let (client, errors) = connect_recording(&users[GROUP].of(&nats)).await;
    let files = tempfile::tempdir().unwrap();
    let db = files.path().join("picking.db");
    // Its relay creates the emitted topic's stream and publishes to it.
    let running = start(&jetstream::new(client), &db, Picking::new(), emits());
    for _ in 0..3 {
        order(&app, 2).await;
    }
    all_published(&db, 6).await;
    assert_eq!(stored(&service_js).await.len(), 6);
    running.stop().await;
    assert_eq!(*errors.lock().unwrap(), [] as [String; 0]);
    assert_eq!(
        violations_in_log(&nats, &format!("group-{GROUP}")).await,
        [] as [String; 0]
    );
}
