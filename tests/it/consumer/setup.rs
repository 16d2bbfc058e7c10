//! A consumer group's start: only the lease's holder opens and migrates the group's database,
//! a database that cannot be opened opens the breaker (the group waits for it) instead of ending
//! the group, and a group whose broker is away past its lease waits to take the lease again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use order_service::consumer::{
    BreakerState, Delivery, Event, Failure, GroupRole, GroupStats, Handler, HandlerTx, LEASE,
};
use order_service::domain::Topic;

use crate::app::until;
use crate::consumer::{
    Recorder, Running, create_orders, exactly_once, expected_events, group_config, processed_all,
    setup,
};

/// A [`Recorder`] whose migration notes that it ran.
struct Migrating {
    migrated: Arc<AtomicBool>,
    inner: Recorder,
}

impl Handler for Migrating {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        self.migrated.store(true, Ordering::Relaxed);
        self.inner.migrate(conn)
    }

    async fn handle(
        &self,
        event: &Event,
        delivery: &Delivery,
        tx: &mut HandlerTx<'_>,
    ) -> Result<(), Failure> {
        self.inner.handle(event, delivery, tx).await
    }
}

fn role_is(stats: &GroupStats, role: GroupRole) -> bool {
    stats.role() == role
}

#[tokio::test]
async fn a_standby_does_not_migrate_the_database_under_the_process_running() {
    let (_started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let active = Running::recording(&js, "migrating", &topics, &db);
    until("the first process is active", async || {
        role_is(&active.stats, GroupRole::Active)
    })
    .await;
    let migrated = Arc::new(AtomicBool::new(false));
    let standby = Running::start(
        &js,
        group_config("migrating", &topics, &db),
        Migrating {
            migrated: migrated.clone(),
            inner: Recorder::new("migrating"),
        },
    );
    until("the second process stands by", async || {
        role_is(&standby.stats, GroupRole::Standby)
    })
    .await;
    let orders = create_orders(&app, 3, 1).await;
    let expected = expected_events(&app, &orders, &topics);
    processed_all(&db, "migrating", &expected).await;
    assert!(
        !migrated.load(Ordering::Relaxed),
        "the standby migrated the database under the running process"
    );

    // The running process stops; the standby takes the lease, and only then migrates.
    active.stop().await;
    until("the standby takes over", async || {
        role_is(&standby.stats, GroupRole::Active)
    })
    .await;
    until("the new holder migrates", async || {
        migrated.load(Ordering::Relaxed)
    })
    .await;
    let more = create_orders(&app, 3, 1).await;
    let mut all = orders;
    all.extend(more);
    let expected = expected_events(&app, &all, &topics);
    processed_all(&db, "migrating", &expected).await;
    standby.stop().await;
    exactly_once(&db, "migrating", &expected);
}

#[tokio::test]
async fn a_database_that_cannot_be_opened_opens_the_breaker_until_it_can() {
    let (_started, _nats, app, js, dir, _db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    // The database's folder cannot be made: a file stands where it would be.
    let folder = dir.path().join("group");
    std::fs::write(&folder, b"not a folder").unwrap();
    let db = folder.join("c.db");
    let running = Running::recording(&js, "unopened", &topics, &db);
    until("the breaker opens", async || {
        running.stats.breaker.state() != BreakerState::Closed
    })
    .await;
    let orders = create_orders(&app, 3, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !role_is(&running.stats, GroupRole::Stopped),
        "the group ended on its database"
    );
    assert_eq!(running.stats.health()["status"], "degraded");

    // The folder can be made now: the group opens its database and processes what waited.
    std::fs::remove_file(&folder).unwrap();
    let expected = expected_events(&app, &orders, &topics);
    processed_all(&db, "unopened", &expected).await;
    until("the breaker closes", async || {
        running.stats.breaker.state() == BreakerState::Closed
    })
    .await;
    let stats = running.stop().await;
    exactly_once(&db, "unopened", &expected);
    assert_eq!(stats.dead_lettered, 0);
}

/// The fault campaign found it: a node killed while a group's lease was lost, and the group's
/// process exited with `JetStream error: timed out` (reading the leases' bucket to take the lease
/// again) instead of waiting for the broker.
#[tokio::test]
async fn a_group_whose_broker_is_away_past_its_lease_takes_the_lease_again_and_goes_on() {
    let (_started, mut nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let running = Running::recording(&js, "away", &topics, &db);
    let first = create_orders(&app, 5, 1).await;
    processed_all(&db, "away", &expected_events(&app, &first, &topics)).await;

    nats.stop().await;
    // Past the lease: the process takes it as lost and tries to take it again meanwhile.
    tokio::time::sleep(LEASE * 3).await;
    assert!(
        !running.ended(),
        "the group ended while its broker was away"
    );
    nats.start_again().await;
    until("the group is active again", async || {
        role_is(&running.stats, GroupRole::Active)
    })
    .await;
    let second = create_orders(&app, 5, 1).await;
    let all: std::collections::HashSet<String> = first.union(&second).cloned().collect();
    let expected = expected_events(&app, &all, &topics);
    processed_all(&db, "away", &expected).await;
    assert!(!running.ended());
    running.stop().await;
    exactly_once(&db, "away", &expected);
}
