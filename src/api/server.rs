//! The HTTP server under the API: hyper's HTTP/1 and HTTP/2 on each accepted connection, with the
//! limits a service facing untrusted clients needs and `axum::serve` does not set.
//!
//! - **Head size**: a request head larger than [`ServerLimits::max_header_bytes`] answers 431 and
//!   is not read further (hyper's own default is about 400 KB, each byte of it the client's).
//! - **Head time**: a client has [`ServerLimits::header_read_timeout`] to send a request's head,
//!   on a new connection or between two requests of a kept-alive one; then the connection is
//!   closed. Without a timer hyper waits forever, so half-sent heads held sockets for good.
//! - **Connections**: at most [`ServerLimits::max_connections`] are served. One more closes the
//!   connection that has waited longest with no request in progress (the oldest, if every one has
//!   a request in progress), so the newest client (a health probe, say) is served rather than left
//!   in the accept queue behind idle sockets.
//!
//! On shutdown the server stops accepting, lets requests in progress finish, and closes idle
//! connections.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower::ServiceExt;

/// The HTTP server's limits (`HTTP_HEADER_READ_TIMEOUT`, `HTTP_MAX_HEADER_BYTES`,
/// `HTTP_MAX_CONNECTIONS`).
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// How long a client may take to send a request's head.
    pub header_read_timeout: Duration,
    /// The most bytes a request's head may take.
    pub max_header_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
}

/// How long shutdown waits for requests in progress before it drops their connections.
const DRAIN: Duration = Duration::from_secs(30);

/// How long accepting pauses after the listener failed (out of file descriptors, say).
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` within `limits` until `shutdown` completes; see the module's
/// documentation. Each request carries the peer's address as [`ConnectInfo`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let open = Connections::default();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        if open.len() >= limits.max_connections {
            open.close_one();
        }
        let (id, active, closed) = open.add();
        let service =
            router
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let service = TowerToHyperService::new(Counted {
            inner: service,
            active,
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let open = open.clone();
        tokio::spawn(async move {
            tokio::select! {
                served = connection => {
                    if let Err(error) = served {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                }
                _ = closed => tracing::debug!(%peer, "connection closed to make room for a newer one"),
            }
            open.remove(id);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in progress after {DRAIN:?}; their connections are dropped");
    }
}

/// The connections being served, oldest first, each with its requests in progress and the
/// signal that closes it.
#[derive(Clone, Default)]
struct Connections {
    inner: Arc<Mutex<ConnectionsInner>>,
}

#[derive(Default)]
struct ConnectionsInner {
    next: u64,
    open: BTreeMap<u64, (Arc<AtomicUsize>, oneshot::Sender<()>)>,
}

impl Connections {
    fn len(&self) -> usize {
        self.inner.lock().expect("connections lock").open.len()
    }

    /// A new connection: its id, its counter of requests in progress, and what closes it.
    fn add(&self) -> (u64, Arc<AtomicUsize>, oneshot::Receiver<()>) {
        let mut inner = self.inner.lock().expect("connections lock");
        let id = inner.next;
        inner.next += 1;
        let active = Arc::new(AtomicUsize::new(0));
        let (close, closed) = oneshot::channel();
        inner.open.insert(id, (active.clone(), close));
        (id, active, closed)
    }

    fn remove(&self, id: u64) {
        self.inner
            .lock()
            .expect("connections lock")
            .open
            .remove(&id);
    }

    /// Closes the oldest connection with no request in progress, or else the oldest.
    fn close_one(&self) {
        let mut inner = self.inner.lock().expect("connections lock");
        let idle = inner
            .open
            .iter()
            .find(|(_, (active, _))| active.load(Ordering::Relaxed) == 0)
            .map(|(id, _)| *id);
        let Some(id) = idle.or_else(|| inner.open.keys().next().copied()) else {
            return;
        };
        if let Some((_, close)) = inner.open.remove(&id) {
            let _ = close.send(());
        }
    }
}

/// A connection's service, counting its requests in progress.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    active: Arc<AtomicUsize>,
}

impl<S, R> tower::Service<R> for Counted<S>
where
    S: tower::Service<R> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let active = InProgress::start(self.active.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let _active = active;
            future.await
        })
    }
}

/// One request in progress on a connection, until dropped.
struct InProgress(Arc<AtomicUsize>);

impl InProgress {
    fn start(active: Arc<AtomicUsize>) -> InProgress {
        active.fetch_add(1, Ordering::Relaxed);
        InProgress(active)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
