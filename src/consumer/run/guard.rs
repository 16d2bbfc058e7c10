//! A handler, run so that its faults stay its own: a panic becomes a permanent failure of that
//! message (a dead letter carrying the panic text), a handler past the group's
//! `handler_timeout` a transient one, and a database error that is the group's own file failing
//! (disk full, locked: see `breaker`) is told apart from a failure of the event.
//!
//! Handlers are async and run on the worker's task, inside the batch's transaction, so a timeout
//! drops the handler's future at its next `.await` and its savepoint is rolled back. A handler
//! that blocks its thread without awaiting cannot be interrupted: the worker (only that one)
//! waits for it, and the broker delivers the batch's messages again after `ack_wait`.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::consumer::breaker::STORE_FAULT;
use crate::consumer::handling::handler::{Delivery, Event, Failure, Handled, Handler, HandlerTx};
use crate::consumer::observe::metrics::{ConsumerMetrics, HandlerLabels, handler_name};
use crate::consumer::observe::stats::GroupStats;

/// A worker's handler with its guards; one per worker, used for one message at a time.
pub(in crate::consumer) struct Guarded<H> {
    inner: Arc<H>,
    timeout: Duration,
    stats: Arc<GroupStats>,
    store_fault: Arc<Mutex<Option<String>>>,
    metrics: Arc<ConsumerMetrics>,
    labels: HandlerLabels,
}

impl<H: Handler> Guarded<H> {
    pub(in crate::consumer) fn new(
        inner: Arc<H>,
        group: &str,
        timeout: Duration,
        stats: Arc<GroupStats>,
        metrics: Arc<ConsumerMetrics>,
    ) -> Guarded<H> {
        Guarded {
            inner,
            timeout,
            stats,
            store_fault: Arc::default(),
            metrics,
            labels: HandlerLabels {
                group: group.to_owned(),
                handler: handler_name::<H>(),
            },
        }
    }

    /// The process's metrics and this handler's labels in them.
    pub(in crate::consumer) fn metrics(&self) -> (&ConsumerMetrics, &HandlerLabels) {
        (&self.metrics, &self.labels)
    }

    /// The store fault behind the last message's failure, if it was one; clears it.
    pub(in crate::consumer) fn take_store_fault(&self) -> Option<String> {
        self.store_fault.lock().ok().and_then(|mut f| f.take())
    }

    fn peek_store_fault(&self) -> bool {
        self.store_fault.lock().is_ok_and(|f| f.is_some())
    }
}

impl<H: Handler> Guarded<H> {
    /// Counts and turns into a [`Failure`] what a guarded call of the handler came to: its own
    /// answer, a panic (permanent) or the timeout (transient). `store_fault` says the failure is
    /// the group's own database failing, which the worker counts once per fault.
    fn conclude<T>(
        &self,
        event: &Event,
        step: &str,
        started: Instant,
        outcome: Result<std::thread::Result<Result<T, Failure>>, tokio::time::error::Elapsed>,
        store_fault: bool,
    ) -> Result<T, Failure> {
        let kind = match &outcome {
            Ok(Ok(Ok(_))) => None,
            Ok(Ok(Err(_))) if store_fault => None,
            Ok(Ok(Err(failure))) if failure.is_transient() => Some("transient"),
            Ok(Ok(Err(_))) => Some("permanent"),
            Ok(Err(_)) => Some("panic"),
            Err(_) => Some("timeout"),
        };
        // Processed events are counted when acknowledged (a batch may still roll back).
        if let Some(kind) = kind {
            self.metrics.failed(&self.labels, kind);
        }
        let seconds = started.elapsed().as_secs_f64();
        self.metrics
            .duration(&self.labels, step == "prepare", seconds);
        match outcome {
            Ok(Ok(answer)) => answer,
            Ok(Err(panic)) => {
                GroupStats::add(&self.stats.panics);
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                tracing::error!(event_id = %event.event_id(), step, panic = %text, "the handler panicked");
                Err(Failure::permanent(format!(
                    "the handler panicked in {step}: {text}"
                )))
            }
            Err(_) => {
                GroupStats::add(&self.stats.timeouts);
                tracing::warn!(event_id = %event.event_id(), step, timeout = ?self.timeout, "the handler timed out");
                Err(Failure::transient(format!(
                    "the handler's {step} took longer than {:?}",
                    self.timeout
                )))
            }
        }
    }
}

impl<H: Handler> Handler for Guarded<H> {
    type Prepared = H::Prepared;

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        self.inner.migrate(conn)
    }

    async fn prepare(&self, event: &Event, delivery: &Delivery) -> Result<H::Prepared, Failure> {
        let started = Instant::now();
        let run = AssertUnwindSafe(self.inner.prepare(event, delivery)).catch_unwind();
        let outcome = tokio::time::timeout(self.timeout, run).await;
        self.conclude(event, "prepare", started, outcome, false)
    }

    async fn handle(
        &self,
        event: &Event,
        delivery: &Delivery,
        tx: &mut HandlerTx<'_, H::Prepared>,
    ) -> Handled {
        let started = Instant::now();
        let run = AssertUnwindSafe(self.inner.handle(event, delivery, tx)).catch_unwind();
        let scoped = STORE_FAULT.scope(self.store_fault.clone(), run);
        let outcome = tokio::time::timeout(self.timeout, scoped).await;
        let store_fault = self.peek_store_fault();
        self.conclude(event, "handle", started, outcome, store_fault)
    }
}
