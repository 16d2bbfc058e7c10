//! A TCP proxy on loopback between the service and one node: the service's `NATS_URL` names the
//! proxies, so the campaign can cut the service off the brokers while the brokers, and the
//! checker's own connections to them, are untouched.
//!
//! [`Mode::Refuse`] closes every connection and closes new ones as soon as they are accepted (a
//! broker that is gone); [`Mode::Blackhole`] keeps every connection open and forwards nothing
//! either way, new ones included (a network that drops packets: the client notices only by its
//! own timeouts); [`Mode::Forward`] heals both. Bytes read while a black hole starts are held and
//! delivered after it, as TCP would retransmit them.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a proxy does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Forward,
    /// Close every connection; close new ones at once.
    Refuse,
    /// Keep connections open, forward nothing.
    Blackhole,
}

/// One proxy, forwarding `127.0.0.1:<port>` to a node's client port while it lives.
pub struct Proxy {
    /// The loopback port the service connects to.
    pub port: u16,
    mode: watch::Sender<Mode>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:upstream`, forwarding.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let port = listener.local_addr().unwrap().port();
        let (mode, _) = watch::channel(Mode::Forward);
        let modes = mode.clone();
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *modes.borrow() == Mode::Refuse {
                    continue; // dropped: closed at once
                }
                tokio::spawn(connection(client, upstream, modes.subscribe()));
            }
        });
        Proxy { port, mode, accept }
    }

    /// Switches every connection, open and new, to `mode`.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Every connection ends when it sees the proxy refuse.
        self.mode.send_replace(Mode::Refuse);
    }
}

/// One client connection: connects upstream and pumps both ways until either side closes or
/// the proxy refuses.
async fn connection(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    // A black hole holds a new connection before it reaches the node, too.
    if !forwarding(&mut mode).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return; // the node is down: the client sees its connection closed
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pump(client_read, server_write, mode.clone()) => {}
        _ = pump(server_read, client_write, mode) => {}
    }
    // Both halves of both sockets drop here: the other side sees the connection closed.
}

/// Copies `from` to `to`, holding bytes while the mode is a black hole; ends on EOF, an error
/// or [`Mode::Refuse`].
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        if !forwarding(&mut mode).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // A change of mode while waiting for bytes: look at it again.
            changed = mode.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !forwarding(&mut mode).await || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits while the proxy is a black hole; `true` once it forwards, `false` when it refuses (or
/// is gone).
async fn forwarding(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            Mode::Forward => return true,
            Mode::Refuse => return false,
            Mode::Blackhole => {}
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}
