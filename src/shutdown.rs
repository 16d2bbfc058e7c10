//! One shutdown signal for every long-running task.
//!
//! [`Shutdown`] is the trigger and the source of signals: each task gets its own
//! [`Shutdown::signal`], a future that completes once [`Shutdown::trigger`] is called (or every
//! handle is dropped, so a task never outlives whoever could stop it). Tasks take
//! `impl Future<Output = ()>`, so anything that completes, Ctrl-C included, can stop them too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// A shutdown trigger; clones trigger the same shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown {
    sender: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A shutdown not yet triggered.
    pub fn new() -> Shutdown {
        Shutdown {
            sender: Arc::new(watch::channel(false).0),
        }
    }

    /// Triggers it: every signal completes.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Whether it has been triggered.
    pub fn is_triggered(&self) -> bool {
        *self.sender.borrow()
    }

    /// A future that completes once the shutdown is triggered, at once if it already was.
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.sender.subscribe();
        async move {
            // An error means every trigger is gone: nobody can stop the task any more, so stop.
            let _ = receiver.wait_for(|triggered| *triggered).await;
        }
    }
}

/// One round of a task that works every `interval` until `shutdown`: runs `step`, then waits out
/// the interval; false (and at once) when `shutdown` completes during either.
pub async fn step_then_wait<S: Future<Output = ()>>(
    shutdown: &mut Pin<&mut S>,
    step: impl Future<Output = ()>,
    interval: Duration,
) -> bool {
    tokio::select! {
        () = shutdown.as_mut() => return false,
        () = step => {}
    }
    tokio::select! {
        () = shutdown.as_mut() => false,
        () = tokio::time::sleep(interval) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn signals_complete_once_triggered() {
        let shutdown = Shutdown::new();
        let early = shutdown.signal();
        let pending = tokio::time::timeout(Duration::from_millis(20), shutdown.signal()).await;
        assert!(pending.is_err(), "a signal completed before the trigger");
        shutdown.clone().trigger();
        assert!(shutdown.is_triggered());
        early.await;
        shutdown.signal().await;
    }

    #[tokio::test]
    async fn dropping_every_handle_stops_the_tasks() {
        let shutdown = Shutdown::new();
        let signal = shutdown.signal();
        drop(shutdown);
        signal.await;
    }
}
