//! The `pht` and `phts` dialers (gost-wire.md §8.6): plain HTTP tunnels over HTTP/1.1, on TCP
//! or TLS, through a per-node pool of keep-alive connections.
//!
//! A node on a later hop of a chain is reached through the nodes before it: each of its
//! tunnels then has a pool of its own, whose connections are streams through those nodes
//! (the first the one the route opened, the others opened the same way).
//!
//! A tunnel's pull holds its connection for the tunnel's life, so every request takes a
//! connection of its own from the pool (or a new one): pushes never wait behind a pull.
//! Connections go back to the pool when their response has been read to the end, and are
//! closed once they have been idle for [`POOL_IDLE_TIMEOUT`].

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gost_api::Metadata;
use http::header::{self, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::tcp::connect;
use super::{Dialer, Reopen};
use crate::addr::Address;
use crate::conn::BoxConn;
use crate::pht::client::ClientOptions;
use crate::pht::{Body, MAX_READ_BUFFER, OpenedAfter, Paths, RoundTrip};
use crate::tls::ClientTls;

/// ALPN offered by `phts`: HTTP/1.1, the one version spoken (GOST's server offers no ALPN,
/// gost-wire.md §3.3, so nothing is chosen with it; a server that does choose gets this).
pub const ALPN: &[&[u8]] = &[b"http/1.1"];

/// Idle connections kept per node: GOST's (Go's `MaxIdleConns`) value.
pub const MAX_IDLE_CONNECTIONS: usize = 100;

/// How long an idle connection is kept for reuse; then the pool closes it. Well below the
/// 120 s after which our server drops a silent keep-alive connection
/// (`listener::pht::IDLE_TIMEOUT`), so that a push is not sent into a connection the server is
/// closing. GOST's server sets no idle timeout at all, so without this a burst of pushes would
/// leave its connections open on both sides for good.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Connect (TCP and TLS) timeout for the connections after a tunnel's first: GOST's TLS
/// handshake timeout. The first request of a tunnel runs within the dial timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a pooled connection may take to become ready for the next request before another
/// is used: it finished its last response, so it is either ready at once or broken.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Requests a connection may fail with before being sent, retried on a fresh connection:
/// a pooled connection the server closed meanwhile. Bounded so a dead server fails quickly.
const SEND_ATTEMPTS: usize = 3;

/// A `pht`/`phts` dialer for one node.
pub struct PhtDialer {
    pool: Arc<Pool>,
    opts: Arc<ClientOptions>,
}

impl PhtDialer {
    /// Reads the dialer metadata (`pushPath`, `pullPath`, `authorizePath`, `host`, `header`);
    /// `tls` makes it `phts`.
    pub fn new(md: &Metadata, node: &Address, tls: Option<ClientTls>) -> Result<Self, String> {
        // An empty node host (`-F relay+pht://:8080`) was parsed as 127.0.0.1, so the
        // authority is `127.0.0.1:8080` rather than GOST's broken `[:8080]:8080` (A7).
        let authority = match md.string(&["host", "pht.host"]).filter(|h| !h.is_empty()) {
            Some(host) => Address::from_host(&host, node.port)
                .map_err(|e| format!("metadata `host`: {e}"))?
                .to_string(),
            None => node.to_string(),
        };
        let mut headers = http::HeaderMap::new();
        for (name, value) in crate::ws::headers(md)? {
            headers.insert(name, value);
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let opts = ClientOptions {
            paths: Paths::from_metadata(md),
            scheme,
            authority,
            headers,
        };
        Ok(PhtDialer {
            pool: Pool::new(node.clone(), tls),
            opts: Arc::new(opts),
        })
    }
}

#[async_trait]
impl Dialer for PhtDialer {
    async fn dial(&self, _addr: &Address, timeout: Duration) -> io::Result<BoxConn> {
        let rt: Arc<dyn RoundTrip> = self.pool.clone();
        crate::pht::client::connect_within(rt, self.opts.clone(), timeout, "PHT").await
    }

    async fn handshake(&self, _conn: BoxConn, addr: &Address) -> io::Result<BoxConn> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "pht/phts to {addr} cannot run over a single stream: a PHT tunnel needs \
                 several HTTP connections at once (a long-lived pull beside each push)"
            ),
        ))
    }

    async fn handshake_routed(
        &self,
        conn: BoxConn,
        _addr: &Address,
        reopen: Reopen,
    ) -> io::Result<BoxConn> {
        let pool = Pool::routed(&self.pool, conn, reopen);
        crate::pht::client::connect(pool, self.opts.clone()).await
    }
}

/// How a pool reaches its node.
enum Reach {
    /// TCP connections of its own: the node is on the chain's first hop.
    Direct,
    /// Streams through the earlier hops: first the one the route opened, then new ones.
    Routed {
        first: Mutex<Option<BoxConn>>,
        reopen: Reopen,
    },
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    // When it was given back, and when it was opened.
    since: Instant,
    opened: Instant,
}

/// A connection's request handle and when it was opened (see [`OpenedAfter`]).
type Sender = (SendRequest<Full<Bytes>>, Instant);

/// The node's HTTP/1.1 connections.
pub struct Pool {
    addr: Address,
    tls: Option<Arc<ClientTls>>,
    reach: Reach,
    idle: Mutex<IdleList>,
    idle_timeout: Duration,
    me: Weak<Pool>,
}

/// The idle connections, oldest first (given back at the end, taken from the end), and
/// whether a reaper task is watching them.
#[derive(Default)]
struct IdleList {
    conns: Vec<Idle>,
    reaping: bool,
}

impl Idle {
    /// Idle for `timeout` or more, or already closed: not to be reused.
    fn expired(&self, timeout: Duration) -> bool {
        self.since.elapsed() >= timeout || self.sender.is_closed()
    }
}

impl IdleList {
    /// Closes the connections idle for `timeout` or more, and forgets those already closed.
    fn drop_expired(&mut self, timeout: Duration) {
        self.conns.retain(|c| !c.expired(timeout));
    }
}

impl Pool {
    /// A pool of connections to `addr`, over TLS when `tls` is given.
    pub fn new(addr: Address, tls: Option<ClientTls>) -> Arc<Self> {
        Self::with_idle_timeout(addr, tls, POOL_IDLE_TIMEOUT)
    }

    /// [`Pool::new`] with idle connections closed after `idle_timeout` instead of
    /// [`POOL_IDLE_TIMEOUT`].
    pub fn with_idle_timeout(
        addr: Address,
        tls: Option<ClientTls>,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Pool {
            addr,
            tls: tls.map(Arc::new),
            reach: Reach::Direct,
            idle: Mutex::new(IdleList::default()),
            idle_timeout,
            me: me.clone(),
        })
    }

    /// A pool for one tunnel to the node of `node_pool`, on a later hop: `first` reaches the
    /// node through the earlier hops, and `reopen` opens more such streams.
    fn routed(node_pool: &Pool, first: BoxConn, reopen: Reopen) -> Arc<Self> {
        Arc::new_cyclic(|me| Pool {
            addr: node_pool.addr.clone(),
            tls: node_pool.tls.clone(),
            reach: Reach::Routed {
                first: Mutex::new(Some(first)),
                reopen,
            },
            idle: Mutex::new(IdleList::default()),
            idle_timeout: node_pool.idle_timeout,
            me: me.clone(),
        })
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, IdleList> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Idle connections now open (each holds a socket and its buffers).
    pub fn idle_connections(&self) -> usize {
        self.lock_idle().conns.len()
    }

    /// An idle connection ready for a request, if the pool has one; only one opened at or
    /// after `not_before` when that is given (older ones stay for other requests).
    async fn take_idle(&self, not_before: Option<Instant>) -> Option<Sender> {
        loop {
            let (mut sender, opened) = {
                let mut idle = self.lock_idle();
                let at = idle
                    .conns
                    .iter()
                    .rposition(|c| not_before.is_none_or(|t| c.opened >= t))?;
                let conn = idle.conns.remove(at);
                if conn.expired(self.idle_timeout) {
                    continue;
                }
                (conn.sender, conn.opened)
            };
            // A connection given back at the end of a response may take a moment to be
            // ready for the next one.
            if let Ok(Ok(())) = tokio::time::timeout(READY_TIMEOUT, sender.ready()).await {
                return Some((sender, opened));
            }
        }
    }

    fn give_back(&self, (sender, opened): Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock_idle();
        let timeout = self.idle_timeout;
        idle.drop_expired(timeout);
        if idle.conns.len() >= MAX_IDLE_CONNECTIONS {
            return;
        }
        idle.conns.push(Idle {
            sender,
            since: Instant::now(),
            opened,
        });
        // A server need not close idle keep-alive connections (GOST's does not), so the pool
        // closes them itself once idle for the timeout, as Go's client does; otherwise a
        // burst of concurrent pushes would keep up to MAX_IDLE_CONNECTIONS sockets and their
        // buffers open on both sides.
        if !idle.reaping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            idle.reaping = true;
            runtime.spawn(reap_idle(self.me.clone(), timeout));
        }
    }

    async fn open(&self) -> io::Result<Sender> {
        let opened = Instant::now();
        let attempt = async {
            let stream: BoxConn = match &self.reach {
                Reach::Direct => Box::new(connect(&self.addr, CONNECT_TIMEOUT).await?),
                Reach::Routed { first, reopen } => {
                    let given = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                    match given {
                        Some(stream) => stream,
                        None => reopen().await?,
                    }
                }
            };
            let conn: BoxConn = match &self.tls {
                Some(tls) => Box::new(tls.connect(stream, &self.addr).await?),
                None => stream,
            };
            let (mut sender, connection) = http1::Builder::new()
                .title_case_headers(true)
                .max_buf_size(MAX_READ_BUFFER)
                .handshake(TokioIo::new(conn))
                .await
                .map_err(io::Error::other)?;
            let addr = self.addr.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(node = %addr, error = %e, "PHT connection ended");
                }
            });
            sender.ready().await.map_err(io::Error::other)?;
            Ok((sender, opened))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "PHT connection to {} timed out after {CONNECT_TIMEOUT:?}",
                        self.addr
                    ),
                ))
            })
    }
}

/// Closes a pool's connections as they reach the idle timeout (dropping the last handle of
/// an idle hyper connection ends it), and ends when the pool is empty or gone.
async fn reap_idle(pool: Weak<Pool>, timeout: Duration) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = pool.lock_idle();
            idle.drop_expired(timeout);
            match idle.conns.first().map(|c| c.since) {
                Some(oldest) => oldest + timeout,
                None => {
                    idle.reaping = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

#[async_trait]
impl RoundTrip for Pool {
    async fn round_trip(&self, req: http::Request<Bytes>) -> io::Result<http::Response<Body>> {
        let (mut parts, body) = req.into_parts();
        // HTTP/1.1 wants the origin form and the authority as `Host`.
        if let Some(authority) = parts.uri.authority()
            && !parts.headers.contains_key(header::HOST)
        {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            parts.headers.insert(header::HOST, host);
        }
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let not_before = parts.extensions.get::<OpenedAfter>().map(|o| o.0);
        let mut req = http::Request::from_parts(parts, Full::new(body));
        let mut last_error = None;
        for _ in 0..SEND_ATTEMPTS {
            let (mut sender, opened) = match self.take_idle(not_before).await {
                Some(sender) => sender,
                None => self.open().await?,
            };
            match sender.try_send_request(req).await {
                Ok(res) => {
                    let (parts, incoming) = res.into_parts();
                    // The server closes it after this answer: not to be reused.
                    let closing = parts
                        .headers
                        .get_all(header::CONNECTION)
                        .iter()
                        .any(crate::pht::client::says_close);
                    let mut body = Returning {
                        inner: incoming,
                        sender: (!closing).then_some((sender, opened)),
                        pool: self.me.clone(),
                    };
                    if body.inner.is_end_stream() {
                        body.give_back();
                    }
                    return Ok(http::Response::from_parts(parts, body.boxed()));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection was closing; try another.
                    Some(unsent) => {
                        req = unsent;
                        last_error = Some(e.into_error());
                    }
                    None => return Err(io::Error::other(e.into_error())),
                },
            }
        }
        Err(io::Error::other(last_error.map_or_else(
            || "PHT request not sent".to_string(),
            |e| e.to_string(),
        )))
    }
}

/// A response body that gives its connection back to the pool once read to the end.
struct Returning {
    inner: Incoming,
    sender: Option<Sender>,
    pool: Weak<Pool>,
}

impl Returning {
    fn give_back(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.give_back(sender);
        }
    }
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) => {
                self.give_back();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // The connection is broken; it must not be reused.
                self.sender = None;
                Poll::Ready(Some(Err(io::Error::other(e))))
            }
            other => other.map(|f| f.map(|f| f.map_err(io::Error::other))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(md: &[(&str, &str)], node: &str) -> PhtDialer {
        let mut metadata = Metadata::default();
        for (k, v) in md {
            metadata.insert_str(k, v);
        }
        PhtDialer::new(&metadata, &Address::parse(node).unwrap(), None).unwrap()
    }

    #[test]
    fn authority_follows_host_metadata_and_empty_host() {
        assert_eq!(dialer(&[], ":8080").opts.authority, "127.0.0.1:8080");
        assert_eq!(
            dialer(&[], "example.com:80").opts.authority,
            "example.com:80"
        );
        let d = dialer(
            &[("host", "front.example"), ("pushPath", "/p")],
            "10.0.0.1:8443",
        );
        assert_eq!(d.opts.authority, "front.example:8443");
        assert_eq!(d.opts.paths.push, "/p");
        assert_eq!(d.opts.scheme, "http");
    }

    /// A keep-alive HTTP/1.1 server that answers every request with an empty 200 and never
    /// closes a connection itself, as GOST's PHT server does; each connection's end (the
    /// client closing it) is reported on the channel.
    async fn keep_alive_server() -> (Address, tokio::sync::mpsc::UnboundedReceiver<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Address::parse(&listener.local_addr().unwrap().to_string()).unwrap();
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                            if conn.write_all(reply).await.is_err() {
                                break;
                            }
                        }
                    }
                    let _ = closed_tx.send(());
                });
            }
        });
        (addr, closed)
    }

    async fn get(pool: &Arc<Pool>, addr: &Address) {
        let req = http::Request::get(format!("http://{addr}/pull?token=t"))
            .body(Bytes::new())
            .unwrap();
        let res = pool.round_trip(req).await.unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
    }

    async fn closed_within_5s(closed: &mut tokio::sync::mpsc::UnboundedReceiver<()>, what: &str) {
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} was not closed within 5 s"))
            .expect("the server runs");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, mut closed) = keep_alive_server().await;
        let pool = Pool::with_idle_timeout(addr.clone(), None, Duration::from_millis(300));
        get(&pool, &addr).await;
        get(&pool, &addr).await;
        assert_eq!(
            pool.idle_connections(),
            1,
            "the second request reused the first's"
        );
        closed_within_5s(&mut closed, "the idle connection").await;
        assert_eq!(pool.idle_connections(), 0);
        // The pool keeps working, and reaps again.
        get(&pool, &addr).await;
        assert_eq!(pool.idle_connections(), 1);
        closed_within_5s(&mut closed, "the second idle connection").await;
    }

    #[tokio::test]
    async fn idle_connections_stay_open_within_the_idle_timeout() {
        let (addr, mut closed) = keep_alive_server().await;
        let pool = Pool::new(addr.clone(), None);
        get(&pool, &addr).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(700), closed.recv())
                .await
                .is_err(),
            "a connection idle for less than {POOL_IDLE_TIMEOUT:?} was closed"
        );
        assert_eq!(pool.idle_connections(), 1);
        // Dropping the pool (a configuration reload) closes what it holds.
        drop(pool);
        closed_within_5s(&mut closed, "the dropped pool's connection").await;
    }

    /// A request that must go on a newer connection leaves the older idle ones alone, and
    /// later ones of its kind reuse the newer connection.
    #[tokio::test]
    async fn requests_for_newer_connections_skip_older_ones() {
        let (addr, _closed) = keep_alive_server().await;
        let pool = Pool::new(addr.clone(), None);
        get(&pool, &addr).await;
        assert_eq!(pool.idle_connections(), 1);
        let after = OpenedAfter(Instant::now());
        let newer = || {
            let mut req = http::Request::get(format!("http://{addr}/pull?token=t"))
                .body(Bytes::new())
                .unwrap();
            req.extensions_mut().insert(after);
            req
        };
        for _ in 0..2 {
            let res = pool.round_trip(newer()).await.unwrap();
            res.into_body().collect().await.unwrap();
            assert_eq!(pool.idle_connections(), 2, "one older, one newer");
        }
    }

    #[tokio::test]
    async fn refuses_to_run_over_one_stream() {
        let (a, _b) = tokio::io::duplex(64);
        let err = match dialer(&[], "127.0.0.1:1")
            .handshake(Box::new(a), &Address::parse("127.0.0.1:1").unwrap())
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("pht ran over one stream"),
        };
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert!(err.to_string().contains("single stream"), "{err}");
    }
}
