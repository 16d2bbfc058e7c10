//! Whose fault a failure is: a busy or locked error a handler meets on a connection of its own is
//! that event's failure (retried and counted, in the end a dead letter), not the group's; taken
//! as the group's, one event halted every topic of the group for good.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use order_service::consumer::{Delivery, Event, Failure, Handler, HandlerTx, dlq};
use order_service::domain::Topic;

use crate::app::PATIENCE;
use crate::consumer::{
    Recorder, Running, create_orders, exactly_once, expected_events, group_config, processed_all,
    setup,
};

/// A [`Recorder`] that also writes one order's events into a side file through a connection of
/// its own, which the test keeps locked.
struct SideFile {
    order: String,
    side: PathBuf,
    inner: Recorder,
}

impl Handler for SideFile {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        self.inner.migrate(conn)
    }

    async fn handle(
        &self,
        event: &Event,
        delivery: &Delivery,
        tx: &mut HandlerTx<'_>,
    ) -> Result<(), Failure> {
        if event.order_id().map(|id| id.to_string()) == Some(self.order.clone()) {
            let side = rusqlite::Connection::open(&self.side)?;
            side.busy_timeout(Duration::from_millis(20))?;
            side.execute(
                "INSERT INTO notes VALUES (?1)",
                [event.event_id().to_string()],
            )?;
        }
        self.inner.handle(event, delivery, tx).await
    }
}

#[tokio::test]
async fn a_busy_error_on_a_handlers_own_connection_is_the_events_failure_not_the_groups() {
    let (_started, _nats, app, js, dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let side = dir.path().join("side.db");
    let locker = rusqlite::Connection::open(&side).unwrap();
    locker
        .execute_batch("CREATE TABLE notes (event_id TEXT); BEGIN EXCLUSIVE;")
        .unwrap();
    let stuck = create_orders(&app, 1, 1).await;
    let order = stuck.iter().next().unwrap().clone();
    let mut config = group_config("blame", &topics, &db);
    config.max_deliver = 3;
    let handler = SideFile {
        order: order.clone(),
        side,
        inner: Recorder::new("blame"),
    };
    let running = Running::start(&js, config, handler);
    // The group's other orders go on while that one event fails.
    let others = create_orders(&app, 5, 1).await;
    let expected = expected_events(&app, &others, &topics);
    processed_all(&db, "blame", &expected).await;
    // Its deliveries are counted, and when they are used up it is a dead letter.
    let start = Instant::now();
    let letters = loop {
        let letters = dlq::list(&js, "blame", None).await.unwrap();
        if !letters.is_empty() {
            break letters;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the event was never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let faults = running.stats.infrastructure_faults.load(Ordering::Relaxed);
    let stats = running.stop().await;
    locker.execute_batch("ROLLBACK").unwrap();
    exactly_once(&db, "blame", &expected);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (letters[0].reason.as_str(), letters[0].delivered),
        ("max_deliver", 3)
    );
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(faults, 0, "taken as the group's fault");
}
