//! Handlers: the proxy protocols a service speaks to its clients.

pub mod auto;
pub mod http;
pub mod http2;
pub mod probe;
pub mod relay;
pub mod socks4;
pub mod socks5;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use gost_api::Metadata;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, Verdict};
use crate::chain::Router;
use crate::conn::{BoxConn, Conn};
use crate::pipe::{self, PipeError};

/// How long a client may take to send its request (GOST's `readTimeout` default), so that
/// slow or silent clients cannot hold connections forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves one accepted connection.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Runs the protocol on `conn` until the client is done.
    async fn handle(&self, conn: BoxConn, client: SocketAddr);
}

/// What every handler of a service shares: who may use it, how it reaches targets, its options.
pub struct HandlerEnv {
    /// The service name, for logs.
    pub service: Arc<str>,
    /// Required credentials, if any.
    pub auth: Option<Authenticator>,
    /// How targets are dialled.
    pub router: Router,
    /// The handler's metadata.
    pub metadata: Metadata,
    /// Time allowed for the client's request.
    pub handshake_timeout: Duration,
    /// Time a target has to answer a forwarded HTTP request, counted once the request is sent
    /// in full (GOST's `readTimeout` on its `http` handler, Go's `ResponseHeaderTimeout`);
    /// `None` waits for ever.
    pub response_timeout: Option<Duration>,
    /// Largest HTTP request head accepted (`maxHeaderSize`); larger ones get `431`.
    pub max_header_size: usize,
    /// Idle timeout of established tunnels (`idleTimeout`), none by default as in GOST.
    pub idle_timeout: Option<Duration>,
    /// Tunnels of this service, so that shutdown can wait for them.
    pub tunnels: TaskTracker,
    /// The handler's own TLS, for GOST's SOCKS5 methods 0x80/0x82; `None` with `notls`.
    pub tls: Option<crate::tls::LazyServerTls>,
}

/// Whether a proxy request's `Proxy-Authorization` satisfies the service's credentials (always,
/// when it has none). A refusal is counted and logged with the user name, never the password.
pub(crate) fn proxy_auth(
    env: &HandlerEnv,
    headers: &::http::HeaderMap,
    client: SocketAddr,
    protocol: &'static str,
) -> Verdict {
    let Some(auth) = &env.auth else {
        return Verdict::Accepted;
    };
    let credentials = headers
        .get(::http::header::PROXY_AUTHORIZATION)
        .and_then(|v| crate::codec::http::basic_credentials(v.as_bytes()));
    let verdict = match &credentials {
        Some((user, pass)) => auth.check_from(client.ip(), user, pass),
        None => Verdict::Rejected,
    };
    if !verdict.accepted() {
        let user = credentials.map(|(user, _)| user);
        auth_failed(
            env,
            client,
            protocol,
            "proxy authentication failed",
            user.as_deref().unwrap_or(""),
            verdict,
        );
    }
    verdict
}

/// The user a proxy request authenticated as (its `Proxy-Authorization`), when the service
/// checks credentials: what a `hash` hop keys on first, as GOST's client ID.
pub(crate) fn proxy_user(env: &HandlerEnv, headers: &::http::HeaderMap) -> Option<String> {
    env.auth.as_ref()?;
    let value = headers.get(::http::header::PROXY_AUTHORIZATION)?;
    crate::codec::http::basic_credentials(value.as_bytes()).map(|(user, _)| user)
}

/// Counts and logs a failed authentication by `user` (never the password) as `what` (e.g.
/// `socks5: authentication failed`). Each failure is counted in the metrics; the log gets a
/// warning per failure up to the service's limit and one when the limit is reached, while the
/// attempts refused unchecked after that are logged at debug only, so that a guesser cannot
/// fill the disk.
pub(crate) fn auth_failed(
    env: &HandlerEnv,
    client: SocketAddr,
    protocol: &'static str,
    what: &'static str,
    user: &str,
    verdict: Verdict,
) {
    crate::metrics::auth_failed(&env.service);
    crate::metrics::handler_error(&env.service, client);
    match verdict {
        Verdict::Accepted => {}
        Verdict::Rejected => tracing::warn!(
            service = %env.service, protocol, client = %client, username = user, "{what}"
        ),
        Verdict::LimitReached => tracing::warn!(
            service = %env.service, protocol, client = %client, username = user,
            window_s = crate::auth::AUTH_FAILURE_WINDOW.as_secs(),
            "{what}; too many failed authentications from this address, refusing it \
             unchecked until the window ends"
        ),
        Verdict::Refused => tracing::debug!(
            service = %env.service, protocol, client = %client, username = user,
            "{what}: refused unchecked (too many failed authentications)"
        ),
    }
}

/// Runs a client's handshake within the service's handshake timeout. A failed or late
/// handshake is logged (at debug: it is the client's problem, and scanners cause many) and
/// yields `None`.
pub async fn within_handshake_timeout<T, E: std::fmt::Display>(
    env: &HandlerEnv,
    protocol: &'static str,
    client: SocketAddr,
    handshake: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(env.handshake_timeout, handshake).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            crate::metrics::handler_error(&env.service, client);
            tracing::debug!(service = %env.service, protocol, client = %client, error = %e, "handshake failed");
            None
        }
        Err(_) => {
            crate::metrics::handler_error(&env.service, client);
            tracing::debug!(
                service = %env.service, protocol, client = %client,
                timeout = ?env.handshake_timeout, "handshake timed out"
            );
            None
        }
    }
}

/// The signals a service's connection is served with, one task-local for all three.
#[derive(Clone, Default)]
pub struct ConnSignals {
    /// Fired when the service is removed or replaced and its grace period is over. Handlers
    /// that answer first and relay in a task of their own (the HTTP CONNECT, upgrades,
    /// HTTP/2 streams) outlive the connection's own task, which is what the supervisor
    /// cancels; they take this along ([`spawn_tunnel`]).
    pub closing: CancellationToken,
    /// Fired when the handler serving the connection stops being its service's (a reload
    /// swapped it, or the service stops accepting): a connection that has served requests
    /// (HTTP/1.1 keep-alive) then closes, so that no request is served by a handler the
    /// configuration no longer has (old credentials, say).
    pub retired: CancellationToken,
    /// Fired when the service stops accepting (removed, replaced, or the process stopping):
    /// a connection that has served requests closes at once when it waits for the next one;
    /// one that has not sent its first yet still gets it answered, as its client may have
    /// sent it already.
    pub stopping: CancellationToken,
}

tokio::task_local! {
    static SIGNALS: ConnSignals;
}

/// Runs `serve` (one accepted connection) with its service's `signals`.
pub async fn serving<F: std::future::Future>(signals: ConnSignals, serve: F) -> F::Output {
    SIGNALS.scope(signals, serve).await
}

/// The signals of this task's connection; ones that never fire outside a service's
/// connection (unit tests, say).
pub(crate) fn signals() -> ConnSignals {
    SIGNALS.try_with(ConnSignals::clone).unwrap_or_default()
}

/// Spawns `task` (a tunnel, or the upstream connection of a forwarded request) on the
/// service's tracker, ended when the service it was started for closes, as the connection's
/// own task is.
pub(crate) fn spawn_tunnel<F>(tracker: &TaskTracker, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match SIGNALS.try_with(ConnSignals::clone) {
        Ok(signals) => {
            let closing = signals.closing.clone();
            tracker.spawn(SIGNALS.scope(signals, async move {
                // The task first: a tunnel sees the same signal and ends itself, logging
                // what it moved; what does not (a dial, say) is dropped.
                tokio::select! {
                    biased;
                    () = task => {}
                    () = closing.cancelled() => {}
                }
            }));
        }
        Err(_) => {
            tracker.spawn(task);
        }
    }
}

/// Relays an established tunnel, counts its bytes as they move and writes its one summary log
/// line.
pub async fn run_tunnel(
    env: &HandlerEnv,
    protocol: &'static str,
    client_addr: SocketAddr,
    target: &crate::addr::Address,
    client: BoxConn,
    upstream: BoxConn,
) {
    run_tunnel_after(env, protocol, client_addr, target, client, upstream, 0).await;
}

/// As [`run_tunnel`] for a tunnel whose first `sent_up` bytes from the client were already
/// written to `upstream` (the ClientHello the `auto` handler read to find the server name).
pub async fn run_tunnel_after(
    env: &HandlerEnv,
    protocol: &'static str,
    client_addr: SocketAddr,
    target: &crate::addr::Address,
    client: BoxConn,
    upstream: BoxConn,
    sent_up: u64,
) {
    let meter = crate::metrics::TunnelMeter::new(&env.service, client_addr);
    meter.input.inc_by(sent_up);
    relay_tunnel(
        env,
        protocol,
        client_addr,
        target,
        client,
        upstream,
        sent_up,
        Some(&meter),
    )
    .await;
}

/// As [`run_tunnel`] without counting the bytes in the service's metrics, for an upstream
/// that counts its own ([`Metered`]).
pub(crate) async fn run_uncounted_tunnel(
    env: &HandlerEnv,
    protocol: &'static str,
    client_addr: SocketAddr,
    target: &crate::addr::Address,
    client: BoxConn,
    upstream: BoxConn,
) {
    relay_tunnel(
        env,
        protocol,
        client_addr,
        target,
        client,
        upstream,
        0,
        None,
    )
    .await;
}

/// Relays a tunnel, adding its bytes to `meter` as they move, and logs what it moved (with
/// the `sent_up` bytes written before the relay started).
#[allow(clippy::too_many_arguments)] // each one is a field of the tunnel's log line
async fn relay_tunnel(
    env: &HandlerEnv,
    protocol: &'static str,
    client_addr: SocketAddr,
    target: &crate::addr::Address,
    mut client: BoxConn,
    mut upstream: BoxConn,
    sent_up: u64,
    meter: Option<&crate::metrics::TunnelMeter>,
) {
    // GOST's `client >> target` debug line: the tunnel's own line comes when it ends.
    tracing::debug!(
        service = %env.service, protocol, client = %client_addr, target = %target, "tunnel open"
    );
    let started = std::time::Instant::now();
    // Cut, and logged with what it moved, when its service's grace period is over.
    let stop = SIGNALS.try_with(|s| s.closing.clone()).ok();
    let result = pipe::relay(&mut client, &mut upstream, env.idle_timeout, stop, meter).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let mut moved = match &result {
        Ok(moved) => *moved,
        Err(e) => e.transferred(),
    };
    moved.up += sent_up;
    match result {
        Ok(_) => tracing::info!(
            service = %env.service, protocol, client = %client_addr, target = %target,
            bytes_up = moved.up, bytes_down = moved.down, duration_ms = elapsed_ms,
            outcome = "closed", "tunnel"
        ),
        Err(e) => {
            let outcome = outcome_of(&e);
            tracing::info!(
                service = %env.service, protocol, client = %client_addr, target = %target,
                bytes_up = moved.up, bytes_down = moved.down, duration_ms = elapsed_ms,
                outcome, error = %e, "tunnel"
            );
        }
    }
}

/// The `outcome` of a tunnel that ended with `e`: `reset` when a side went away without a
/// clean close (a TCP reset, a write to a closed socket, an HTTP/2 stream cancelled, a
/// WebSocket dropped without its close), which is how many clients end a tunnel; `error` for
/// everything else, which is what to alert on.
fn outcome_of(e: &PipeError) -> &'static str {
    match e {
        PipeError::Idle(..) => "idle timeout",
        PipeError::Stopped(_) => "stopped",
        PipeError::Io { source, .. } => match source.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => "reset",
            _ => "error",
        },
    }
}

/// The two ends (local, peer) of the sockets this process opened to pass a client's request
/// or stream on unchanged (the `http` handler's forwarded requests, the `auto` handler's TLS
/// clients): a connection accepted with those two ends swapped is this process forwarding to
/// itself (a `Host` or server name that leads back to the service), which would repeat until
/// the connection limit. Both ends, because Linux gives the same local port to connections
/// to different peers.
type SocketPair = (SocketAddr, SocketAddr);
static OWN_FORWARDS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<SocketPair>>> =
    std::sync::LazyLock::new(Default::default);

/// How many addresses [`OWN_FORWARDS`] holds, so that the common case (none) takes no lock.
static OWN_FORWARD_COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One socket's place in [`OWN_FORWARDS`], for as long as it is open.
pub(crate) struct OwnForward(Option<SocketPair>);

impl OwnForward {
    fn forwards() -> std::sync::MutexGuard<'static, std::collections::HashSet<SocketPair>> {
        OWN_FORWARDS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes `upstream`'s two ends, when it is a TCP socket of this process.
    pub(crate) fn note(upstream: &BoxConn) -> OwnForward {
        let pair = upstream
            .as_tcp()
            .and_then(|tcp| Some((tcp.local_addr().ok()?, tcp.peer_addr().ok()?)));
        if let Some(pair) = pair
            && Self::forwards().insert(pair)
        {
            OWN_FORWARD_COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        OwnForward(pair)
    }

    /// Whether the connection from `client`, accepted at `served_at` (its socket's local
    /// address; see [`Conn::tcp_local_addr`]), is one of this process's own forwards. Only
    /// plain TCP connections can be: a forward speaks no other protocol.
    pub(crate) fn is_own(client: SocketAddr, served_at: Option<SocketAddr>) -> bool {
        OWN_FORWARD_COUNT.load(std::sync::atomic::Ordering::Relaxed) > 0
            && served_at.is_some_and(|served_at| Self::forwards().contains(&(client, served_at)))
    }
}

impl Drop for OwnForward {
    fn drop(&mut self) {
        if let Some(pair) = self.0
            && Self::forwards().remove(&pair)
        {
            OWN_FORWARD_COUNT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The upstream connection of a forwarded plain-HTTP request: the bytes it carries are counted
/// in the service's transfer metrics as they move, as a tunnel's are (`input` the client's
/// request sent on, `output` the answer brought back).
pub(crate) struct Metered {
    inner: BoxConn,
    meter: crate::metrics::TunnelMeter,
}

impl Metered {
    /// `upstream`, counted for `env`'s service and `client`.
    pub(crate) fn boxed(env: &HandlerEnv, client: SocketAddr, upstream: BoxConn) -> BoxConn {
        Box::new(Metered {
            inner: upstream,
            meter: crate::metrics::TunnelMeter::new(&env.service, client),
        })
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.meter.output.inc_by(read as u64);
        }
        result
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.meter.input.inc_by(n as u64);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            self.meter.input.inc_by(n as u64);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Conn for Metered {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Prefixed;
    use bytes::Bytes;

    /// A forwarded request's upstream counts its bytes as they pass, not when it closes.
    #[tokio::test]
    async fn metered_upstreams_count_while_open() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let meter =
            crate::metrics::TunnelMeter::new("metered-test", "192.0.2.8:1".parse().unwrap());
        let mut upstream = Metered {
            inner: Box::new(ours),
            meter: meter.clone(),
        };
        upstream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        theirs
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 27];
        upstream.read_exact(&mut answer).await.unwrap();
        assert_eq!((meter.input.get(), meter.output.get()), (18, 27));
        drop(upstream);
        assert_eq!((meter.input.get(), meter.output.get()), (18, 27));
    }

    #[tokio::test]
    async fn a_forward_is_known_while_its_socket_is_open() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let local = socket.local_addr().unwrap();
        let upstream: BoxConn = Box::new(socket);
        let (accepted, client) = listener.accept().await.unwrap();
        assert_eq!(client, local);
        let accepted: BoxConn = Box::new(accepted);
        // The same local address seen by another listener is someone else.
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere = tokio::net::TcpStream::connect(other.local_addr().unwrap())
            .await
            .unwrap();
        let (elsewhere_accepted, elsewhere_client) = other.accept().await.unwrap();
        let elsewhere_accepted: BoxConn = Box::new(elsewhere_accepted);
        let noted = OwnForward::note(&upstream);
        let own = |conn: &BoxConn, client| OwnForward::is_own(client, conn.tcp_local_addr());
        assert!(own(&accepted, local));
        // Also behind a wrapper that puts read bytes back (the auto handler's).
        let prefixed = Prefixed::boxed(Bytes::from_static(b"G"), accepted);
        assert!(own(&prefixed, local));
        assert!(!own(&elsewhere_accepted, local));
        assert!(!own(&elsewhere_accepted, elsewhere_client));
        drop(noted);
        assert!(!own(&prefixed, local));
        drop(elsewhere);
    }
}
