//! A delivery that never arrives: the broker delivered a message (a pull answered as it expired,
//! a reply lost with a node) that the group never got. The broker delivers it again only after
//! `ack_wait` and the order's next event at once; the group must hold the next event back until
//! the first comes back. The test takes the delivery itself, with a pull of its own on the group's
//! consumer that it never answers, while the group's handler is busy with another order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use order_service::consumer::{Delivery, Event, Failure, Handler, HandlerTx};
use order_service::domain::Topic;
use tokio::sync::Notify;

use super::order::body;
use super::{Running, create_orders, group_config, publish_raw, setup};
use crate::app::until;

/// The events handled, by key and stream sequence, in the order handled; the handler takes two
/// seconds over key `slow`, and says when it starts on it.
#[derive(Default)]
struct Log {
    handled: Mutex<Vec<(String, u64)>>,
    slow_started: Notify,
}

struct Logged(Arc<Log>);

impl Handler for Logged {
    type Prepared = ();

    async fn handle(
        &self,
        _: &Event,
        delivery: &Delivery,
        _: &mut HandlerTx<'_>,
    ) -> Result<(), Failure> {
        let key = delivery.subject.rsplit('.').next().unwrap().to_owned();
        if key == "slow" {
            self.0.slow_started.notify_one();
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.0
            .handled
            .lock()
            .unwrap()
            .push((key, delivery.stream_sequence));
        Ok(())
    }
}

#[tokio::test]
async fn a_delivery_that_never_arrived_holds_its_orders_later_events_until_it_comes_back() {
    let (_, _nats, app, js, _dir, db) = setup(|_| {}).await;
    create_orders(&app, 1, 1).await;
    let template = app.outbox()[0].payload.clone();
    let event = || body(&template);
    let log = Arc::new(Log::default());
    let mut config = group_config("transit", &[Topic::Created], &db);
    config.ack_wait = Duration::from_secs(3);
    let group = Running::start(&js, config, Logged(log.clone()));
    until("the order made first is handled", async || {
        log.handled.lock().unwrap().len() == 1
    })
    .await;

    publish_raw(&js, "slow", event()).await;
    log.slow_started.notified().await;
    // While the group's handler is busy: the order's first event, delivered to a pull the group
    // does not know of and never answered, as a delivery lost on its way.
    publish_raw(&js, "x", event()).await;
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("ORDER_CREATED")
        .await
        .unwrap()
        .get_consumer("transit")
        .await
        .unwrap();
    let mut taken = consumer.fetch().max_messages(1).messages().await.unwrap();
    let lost = taken.next().await.unwrap().unwrap();
    assert!(lost.subject.ends_with(".x"), "{}", lost.subject);
    let first = lost.info().unwrap().stream_sequence;
    publish_raw(&js, "x", event()).await;

    until("both events of order x are handled", async || {
        log.handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == "x")
            .count()
            == 2
    })
    .await;
    let stats = group.stop().await;
    let x: Vec<u64> = log
        .handled
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k == "x")
        .map(|(_, s)| *s)
        .collect();
    eprintln!("in_transit: order x handled at sequences {x:?}; {stats:?}");
    assert_eq!(x, [first, first + 1], "order x's events in stream order");
}
