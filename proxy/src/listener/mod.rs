//! Listeners: the transports on which services accept connections.
//!
//! A plain TCP listener hands over each connection as it is accepted. Transports with a
//! handshake of their own (TLS, WebSocket, HTTP/2) run it in a task per connection, away from
//! the accept loop, so a slow or silent client holds up nobody else; [`Handshaking`] collects
//! the streams that came through. A multiplexed transport hands over many streams per
//! connection the same way.

pub mod grpc;
pub mod h2;
pub mod h3;
pub mod http2;
pub mod pht;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::conn::BoxConn;

/// Accepts client connections.
#[async_trait]
pub trait Listener: Send + Sync {
    /// The next connection and its client's address.
    async fn accept(&self) -> io::Result<(BoxConn, SocketAddr)>;

    /// The bound address (with the port the system chose, if any).
    fn local_addr(&self) -> SocketAddr;

    /// What keeps serving the connections that outlive the listener because they share its
    /// socket (QUIC's, on its UDP socket), called once as the service stops accepting, just
    /// before the listener is dropped. It serves them while the service's tunnels drain, and
    /// once `release` is cancelled (the service stopped for good, or its address is wanted)
    /// closes them, telling their peers, and ends within [`crate::h3::CLOSE_TIMEOUT`]; the
    /// address is free when it has ended. `None` where connections are sockets of their own
    /// (TCP), which the listener's close does not touch.
    fn linger(&self, _release: CancellationToken) -> Option<Lingering> {
        None
    }

    /// Another handle on the listening TCP socket, so that a listener that replaces this one
    /// on the same address can take it over (see [`tcp::with_handover`]); `None` for UDP.
    fn socket(&self) -> Option<std::net::TcpListener> {
        None
    }

    /// Stops taking new connections on the socket, and tells whether connections taken
    /// before may still come out of [`Listener::accept`] (their handshake under way, or new
    /// streams of a multiplexed connection).
    fn stop_accepting(&self) -> bool {
        false
    }
}

/// See [`Listener::linger`].
pub type Lingering = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Streams that finished their handshake and wait for the service to take them: GOST's
/// `backlog` default. When the service is slower than the clients, handshake tasks wait here,
/// which in turn slows the accept loop.
pub const HANDSHAKED_BACKLOG: usize = 128;

/// Pause after a failed `accept` (e.g. out of file descriptors), so that the loop does not spin
/// while the condition lasts.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Where a connection's handshake task delivers its stream(s), with the client's address.
pub type Ready = mpsc::Sender<(BoxConn, SocketAddr)>;

/// Hands `conn` (one stream of a multiplexed connection) to the service: at once when its
/// queue has room, else from a task of its own, as waiting for the service must not hold up
/// the connection's other streams. A stream the service no longer takes is dropped.
pub(crate) fn hand_over(ready: &Ready, conn: BoxConn, client: SocketAddr) {
    match ready.try_send((conn, client)) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(item)) => {
            let ready = ready.clone();
            tokio::spawn(async move {
                let _ = ready.send(item).await;
            });
        }
    }
}

/// A listener whose connections go through a handshake first; see the module comment.
pub struct Handshaking {
    ready: Mutex<mpsc::Receiver<(BoxConn, SocketAddr)>>,
    local: SocketAddr,
    // Another handle on the listening socket, which the accept task owns; let go of when
    // the listener stops accepting, so that a draining listener holds no port.
    socket: std::sync::Mutex<Option<std::net::TcpListener>>,
    // Dropping the listener (the service stopped) stops accepting. Handshakes under way and
    // sessions already established run on: they carry tunnels that may still be draining.
    accept_task: AbortOnDropHandle<()>,
}

impl Handshaking {
    /// Accepts on `tcp` and runs `handshake(stream, client, ready)` in a task of its own for
    /// each connection. Must be called within a Tokio runtime.
    pub fn spawn<F, Fut>(tcp: tcp::TcpListenerImpl, handshake: F) -> Self
    where
        F: Fn(TcpStream, SocketAddr, Ready) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let local = tcp.local_addr();
        let socket = tcp.socket();
        let (tx, rx) = mpsc::channel(HANDSHAKED_BACKLOG);
        let accept = tokio::spawn(async move {
            loop {
                match tcp.accept_tcp().await {
                    Ok((stream, client)) => {
                        tokio::spawn(handshake(stream, client, tx.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(addr = %local, error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                }
            }
        });
        Handshaking {
            ready: Mutex::new(rx),
            local,
            socket: std::sync::Mutex::new(socket),
            accept_task: AbortOnDropHandle::new(accept),
        }
    }
}

#[async_trait]
impl Listener for Handshaking {
    async fn accept(&self) -> io::Result<(BoxConn, SocketAddr)> {
        self.ready
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::other("listener stopped"))
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn socket(&self) -> Option<std::net::TcpListener> {
        self.socket.lock().ok()?.as_ref()?.try_clone().ok()
    }

    fn stop_accepting(&self) -> bool {
        self.accept_task.abort();
        if let Ok(mut socket) = self.socket.lock() {
            socket.take();
        }
        true
    }
}
