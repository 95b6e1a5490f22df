//! The client side of the plain HTTP tunnel (gost-wire.md §8.6): one tunnel as a byte stream
//! made of HTTP requests sent through a [`RoundTrip`].
//!
//! - `authorize` first (stable GOST servers only know tokens they issued); a server that does
//!   not serve it (404/405) gets a token of our own, as development-line GOST clients make;
//! - a background loop streams `GET pull` and turns its base64 lines into the read side;
//! - each write is one `POST push` carrying one base64 line, sent in a task of its own so
//!   that it progresses while the caller reads; the next write or a flush waits for its
//!   answer (writes stay sequential, and a non-200 answer fails the next write);
//! - shutdown sends an empty push (GOST's close) and keeps reading: our server treats it as
//!   a half-close while the pull lasts, GOST's ends the session (and so the pull). The close
//!   waits for the first pull's answer to start (or fail): a close that overtook the pull
//!   would end the session before the pull could carry the service's answer. Once that pull
//!   ends there is no other; dropping the tunnel stops the pull (and sends the close if
//!   shutdown did not).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_channel::mpsc as queue;
use futures_channel::oneshot;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;

use super::{Body, OpenedAfter, Paths, RoundTrip, Shared};
use crate::codec::pht;
use crate::conn::{BoxConn, Conn};

/// Most data put into one push: its base64 line is exactly 64 KiB, which every gost-rs server
/// accepts (earlier ones took at most 64 KiB; now `server::MAX_PUSH_LINE`). GOST's server reads
/// the line with no limit.
pub const PUSH_CHUNK: usize = 48 * 1024;

/// A pull line (without its newline) must be shorter than this, as for GOST's client: its line
/// scanner fails when a line and its newline do not fit in 64 KiB. A server sending more is
/// broken or hostile, and the tunnel's read side fails instead of buffering. Our server's
/// lines are at most 43,693 bytes; the longest accepted carries 49,149 bytes of data.
pub const MAX_PULL_LINE: usize = 64 * 1024;

/// Longest authorize answer read (`token=` and a token); GOST's is 26 bytes.
pub const MAX_AUTHORIZE_BODY: usize = 1024;

/// Longest push answer read before the connection is reused; GOST's are empty.
const MAX_PUSH_ANSWER: usize = 4096;

/// Decoded pull chunks waiting for the reader: bounds what a tunnel buffers when its reader
/// is slower than the server (each chunk ≤ 48 KiB). The queue is a futures channel, which
/// allocates per queued chunk (an idle tunnel holds none) and gives its one sender a slot
/// beyond its buffer, so the buffer is one less than this.
const PULL_QUEUE: usize = 4;

/// Longest a shutdown waits for the first pull's answer to start before it sends the close
/// anyway: a server that has not answered the pull by then is not going to carry anything.
const PULL_HEAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The agent GOST's Go client sends.
const USER_AGENT: &str = "Go-http-client/1.1";

/// Where and how to reach a PHT server.
pub struct ClientOptions {
    /// Endpoint paths (`authorize`, `push`, `pull`).
    pub paths: Paths,
    /// `"http"` or `"https"`.
    pub scheme: &'static str,
    /// URL authority (§8.6 host rules: `host` metadata or node host, and node port).
    pub authority: String,
    /// Extra request headers (`header` metadata).
    pub headers: http::HeaderMap,
}

impl ClientOptions {
    fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> io::Result<http::Request<Bytes>> {
        let uri = match token {
            Some(token) => format!(
                "{}://{}{}?token={}",
                self.scheme,
                self.authority,
                path,
                percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC)
            ),
            None => format!("{}://{}{}", self.scheme, self.authority, path),
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(&uri)
            .body(body)
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad PHT URL {uri:?}: {e}"),
                )
            })?;
        req.headers_mut().insert(
            header::USER_AGENT,
            header::HeaderValue::from_static(USER_AGENT),
        );
        if req.method() == Method::POST && req.body().is_empty() {
            // The close push. Go's client states the empty length, and front ends that want
            // a length on every POST (some answer 411 without one) must let it through.
            req.headers_mut().insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from_static("0"),
            );
        }
        for (name, value) in &self.headers {
            req.headers_mut().insert(name, value.clone());
        }
        Ok(req)
    }
}

/// [`connect`], given up after `timeout`; `what` names the tunnel in the error.
pub async fn connect_within(
    rt: Arc<dyn RoundTrip>,
    opts: Arc<ClientOptions>,
    timeout: std::time::Duration,
    what: &str,
) -> io::Result<BoxConn> {
    let authority = opts.authority.clone();
    match tokio::time::timeout(timeout, connect(rt, opts)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} tunnel to {authority} not established within {timeout:?}"),
        )),
    }
}

/// One tunnel: authorize (fallback to a local xid-like token on 404/405), a pull loop, a POST per write.
pub async fn connect(rt: Arc<dyn RoundTrip>, opts: Arc<ClientOptions>) -> io::Result<BoxConn> {
    let (token, fresh) = authorize(&*rt, &opts).await?;
    let token: Arc<str> = Arc::from(token);
    // Authorized again on a new connection: the tunnel's pulls and pushes stay off the older
    // ones too, which may lead to the stopping server that would refuse its session.
    let rt: Arc<dyn RoundTrip> = match fresh {
        Some(after) => Arc::new(OnNewer { inner: rt, after }),
        None => rt,
    };
    let (tx, rx) = queue::channel(PULL_QUEUE - 1);
    let closing = Arc::new(AtomicBool::new(false));
    // Signalled (or dropped) once the first pull's response head arrived or the pull failed.
    let (pulled_tx, pulled_rx) = oneshot::channel();
    // The pull and the pushes run in tasks of their own: the connections they open get the
    // keepalive of the dial that opened the tunnel.
    let keepalive = crate::conn::dialing_keepalive();
    let pull = tokio::spawn(crate::conn::dialing_with(
        keepalive,
        pull_loop(
            rt.clone(),
            opts.clone(),
            token.clone(),
            tx,
            closing.clone(),
            pulled_tx,
        ),
    ));
    Ok(Box::new(PhtClientConn {
        rt,
        opts,
        token,
        keepalive,
        closing,
        pulled: Some(pulled_rx),
        read: Mutex::new(ReadSide {
            rx,
            current: Bytes::new(),
        }),
        push: None,
        shutdown: Shutdown::Open,
        _pull: AbortOnDropHandle::new(pull),
    }))
}

/// A [`RoundTrip`] whose requests go on connections opened after `after` only.
struct OnNewer {
    inner: Arc<dyn RoundTrip>,
    after: OpenedAfter,
}

#[async_trait::async_trait]
impl RoundTrip for OnNewer {
    async fn round_trip(&self, mut req: http::Request<Bytes>) -> io::Result<http::Response<Body>> {
        req.extensions_mut().insert(self.after);
        self.inner.round_trip(req).await
    }
}

/// Whether a `Connection` header value lists `close`.
pub(crate) fn says_close(value: &header::HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// A stopping server's refusal of a new session ([`super::server::Draining`]): over HTTP/1.1
/// on a connection it then closes; over a [`Shared`] connection (HTTP/3), which has no header
/// for that, any `503`: GOST's server never answers one, and asking once more costs a dial.
fn is_draining_refusal<B>(res: &http::Response<B>) -> bool {
    res.status() == StatusCode::SERVICE_UNAVAILABLE
        && (res.extensions().get::<Shared>().is_some()
            || res
                .headers()
                .get_all(header::CONNECTION)
                .iter()
                .any(says_close))
}

/// The session's token, and, when a stopping server refused it on a kept-alive connection
/// and it was asked for again on a new one, the instant the tunnel's connections must be
/// opened after. The request is sent again once only, and only this one: it opens nothing
/// on the server, while a push or pull of an open session must reach the server that holds
/// it.
async fn authorize(
    rt: &dyn RoundTrip,
    opts: &ClientOptions,
) -> io::Result<(String, Option<OpenedAfter>)> {
    let req = opts.request(Method::GET, &opts.paths.authorize, None, Bytes::new())?;
    let res = rt.round_trip(req).await?;
    if !is_draining_refusal(&res) {
        return Ok((authorized(res, opts).await?, None));
    }
    drop(res);
    tracing::debug!(
        node = %opts.authority,
        "PHT server stopping (503 to authorize); authorizing again on a new connection"
    );
    let after = OpenedAfter(tokio::time::Instant::now());
    let mut req = opts.request(Method::GET, &opts.paths.authorize, None, Bytes::new())?;
    req.extensions_mut().insert(after);
    let res = rt.round_trip(req).await?;
    Ok((authorized(res, opts).await?, Some(after)))
}

/// The token in an authorize answer.
async fn authorized(res: http::Response<Body>, opts: &ClientOptions) -> io::Result<String> {
    match res.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
            // A development-line GOST server may not serve authorize; it takes any token.
            return Ok(super::new_token());
        }
        other => {
            let why = if is_draining_refusal(&res) {
                ": the server is stopping"
            } else {
                ""
            };
            return Err(io::Error::other(format!(
                "PHT authorize at {}{} answered {other}{why}",
                opts.authority, opts.paths.authorize
            )));
        }
    }
    let body = collect_limited(res.into_body(), MAX_AUTHORIZE_BODY).await?;
    let text = String::from_utf8_lossy(&body);
    let token = text
        .trim()
        .strip_prefix("token=")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("PHT authorize answer is not `token=<id>`: {text:?}"),
            )
        })?;
    Ok(token.to_string())
}

/// The whole body, failing if it is longer than `limit`.
async fn collect_limited(mut body: super::Body, limit: usize) -> io::Result<Bytes> {
    let mut all = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if all.len() + data.len() > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("PHT answer longer than {limit} bytes"),
                ));
            }
            all.extend_from_slice(&data);
        }
    }
    Ok(all.freeze())
}

/// Streams pulls into `tx` until the tunnel ends: a pull that ends after at least one line
/// (heartbeats included) is followed by another, one with no line at all is the end.
async fn pull_loop(
    rt: Arc<dyn RoundTrip>,
    opts: Arc<ClientOptions>,
    token: Arc<str>,
    mut tx: queue::Sender<io::Result<Bytes>>,
    closing: Arc<AtomicBool>,
    pulled: oneshot::Sender<()>,
) {
    let mut first = true;
    let mut pulled = Some(pulled);
    loop {
        match pull_once(&*rt, &opts, &token, &mut tx, first, &mut pulled).await {
            Ok(0) => return,
            // After our close push a pull that ends is the tunnel's end. Pulling again would
            // ask for a session that is gone, and GOST's development line creates a new,
            // empty session for any token it does not know.
            Ok(_) if closing.load(Ordering::Acquire) => return,
            Ok(_) => first = false,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// One pull; the number of lines it carried. A closed `tx` (the tunnel was dropped) ends it
/// like an empty pull; so does a refused re-pull (not `first`). `pulled` is signalled once
/// the response head arrived (and dropped if the request failed).
async fn pull_once(
    rt: &dyn RoundTrip,
    opts: &ClientOptions,
    token: &str,
    tx: &mut queue::Sender<io::Result<Bytes>>,
    first: bool,
    pulled: &mut Option<oneshot::Sender<()>>,
) -> io::Result<usize> {
    let req = opts.request(Method::GET, &opts.paths.pull, Some(token), Bytes::new())?;
    let res = rt.round_trip(req).await;
    if let Some(pulled) = pulled.take() {
        let _ = pulled.send(());
    }
    let res = res?;
    if !first && res.status() != StatusCode::OK {
        // A stable GOST server answers a re-pull for a session it ended with 403: the
        // tunnel's data all arrived, so this is its end, not a failure.
        tracing::debug!(status = %res.status(), "PHT re-pull refused; tunnel ended");
        return Ok(0);
    }
    if res.status() != StatusCode::OK {
        return Err(io::Error::other(format!(
            "PHT pull at {}{} answered {}",
            opts.authority,
            opts.paths.pull,
            res.status()
        )));
    }
    let mut body = res.into_body();
    // A line (without its newline) must be shorter than MAX_PULL_LINE.
    let mut reader = pht::Lines::new(MAX_PULL_LINE - 1);
    let mut lines = 0;
    let mut deliver = async |line: &[u8]| -> io::Result<bool> {
        if line.is_empty() {
            return Ok(true);
        }
        let data = pht::decode_line(line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("PHT pull line is not base64: {e}"),
            )
        })?;
        Ok(tx.send(Ok(Bytes::from(data))).await.is_ok())
    };
    let too_long = |_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("PHT pull line of {MAX_PULL_LINE} bytes or more"),
        )
    };
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        reader.extend(&data);
        while let Some(line) = reader.next_line().map_err(too_long)? {
            lines += 1;
            if !deliver(&line).await? {
                return Ok(0);
            }
        }
    }
    let rest = reader.rest();
    if !rest.is_empty() {
        // A last line without its newline still counts, as for GOST's line scanner.
        lines += 1;
        if !deliver(rest.strip_suffix(b"\r").unwrap_or(&rest)).await? {
            return Ok(0);
        }
    }
    Ok(lines)
}

/// One push: the answer must be 200.
async fn push(rt: Arc<dyn RoundTrip>, req: http::Request<Bytes>) -> io::Result<()> {
    // A refcount, not a copy: named in the error only.
    let uri = req.uri().clone();
    let res = rt.round_trip(req).await?;
    let status = res.status();
    // Read the (empty) answer so that its connection can carry the next request.
    collect_limited(res.into_body(), MAX_PUSH_ANSWER).await?;
    if status != StatusCode::OK {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!(
                "PHT push at {}{} answered {status}",
                uri.authority().map_or("", |a| a.as_str()),
                uri.path()
            ),
        ));
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Shutdown {
    Open,
    Closing(JoinHandle<io::Result<()>>),
    Closed,
}

struct PhtClientConn {
    rt: Arc<dyn RoundTrip>,
    opts: Arc<ClientOptions>,
    token: Arc<str>,
    // For the connections the pushes open.
    keepalive: crate::conn::KeepAlive,
    // Behind a lock so that `poll_read_ready` (which takes `&self`) can wait for data without
    // a read buffer: idle tunnels then cost the relay nothing.
    read: Mutex<ReadSide>,
    // The push under way, whose answer the next write waits for.
    push: Option<JoinHandle<io::Result<()>>>,
    shutdown: Shutdown,
    // Set once the close push is under way: the pull loop then pulls no more.
    closing: Arc<AtomicBool>,
    // Ready once the first pull's head arrived or the pull failed (or stopped); the close
    // push waits for it. Taken by the shutdown.
    pulled: Option<oneshot::Receiver<()>>,
    // Stops the pull loop when the tunnel is dropped.
    _pull: AbortOnDropHandle<()>,
}

struct ReadSide {
    rx: queue::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ReadSide {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.current.is_empty() {
            match ready!(self.rx.poll_next_unpin(cx)) {
                Some(Ok(data)) => self.current = data,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => {}
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl PhtClientConn {
    fn push_request(&self, body: Bytes) -> io::Result<http::Request<Bytes>> {
        self.opts
            .request(Method::POST, &self.opts.paths.push, Some(&self.token), body)
    }

    /// Sends `req` in a task of its own.
    fn spawn_push(&self, req: http::Request<Bytes>) -> JoinHandle<io::Result<()>> {
        tokio::spawn(crate::conn::dialing_with(
            self.keepalive,
            push(self.rt.clone(), req),
        ))
    }

    /// Waits for the push under way.
    fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(push) = &mut self.push {
            let result = ready!(Pin::new(push).poll(cx));
            self.push = None;
            result.map_err(io::Error::other)??;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for PhtClientConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut read = lock(&self.read);
        ready!(read.poll_fill(cx))?;
        let n = read.current.len().min(buf.remaining());
        buf.put_slice(&read.current[..n]);
        read.current.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PhtClientConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pushed(cx))?;
        if !matches!(self.shutdown, Shutdown::Open) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "PHT tunnel shut down",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(PUSH_CHUNK);
        let req = self.push_request(pht::encode_line(&buf[..n]))?;
        self.push = Some(self.spawn_push(req));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_pushed(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.shutdown {
                Shutdown::Open => {
                    // A failed last push does not keep the tunnel from closing.
                    let _ = ready!(self.poll_pushed(cx));
                    let req = self.push_request(Bytes::new())?;
                    self.closing.store(true, Ordering::Release);
                    // The close must not overtake the first pull: a server that gets it for
                    // a session no pull is attached to may end the session (GOST's does, and
                    // earlier gost-rs ones did), and the pull would then find nothing.
                    let pulled = self.pulled.take();
                    let rt = self.rt.clone();
                    self.shutdown = Shutdown::Closing(tokio::spawn(crate::conn::dialing_with(
                        self.keepalive,
                        async move {
                            if let Some(pulled) = pulled {
                                let _ = tokio::time::timeout(PULL_HEAD_WAIT, pulled).await;
                            }
                            push(rt, req).await
                        },
                    )));
                }
                Shutdown::Closing(close) => {
                    // The server may already have closed the session; the close is done anyway.
                    let _ = ready!(Pin::new(close).poll(cx));
                    // The pull goes on: our server half-closes, and streams what the
                    // other side still sends until it ends too.
                    self.shutdown = Shutdown::Closed;
                }
                Shutdown::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl Drop for PhtClientConn {
    fn drop(&mut self) {
        if !matches!(self.shutdown, Shutdown::Open) {
            return;
        }
        // Dropped without a shutdown: still tell the server, after the push under way, so
        // that the session does not wait for its idle timeout.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(req) = self.push_request(Bytes::new()) else {
            return;
        };
        let rt = self.rt.clone();
        let pending = self.push.take();
        handle.spawn(crate::conn::dialing_with(self.keepalive, async move {
            if let Some(pending) = pending {
                let _ = pending.await;
            }
            let _ = push(rt, req).await;
        }));
    }
}

impl Conn for PhtClientConn {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.read).poll_fill(cx)
    }

    fn has_read_readiness(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use async_trait::async_trait;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::pht::server::PhtServer;

    /// Requests straight into a server, without a network; optionally without `authorize`
    /// (a development-line GOST server).
    struct Direct {
        server: Arc<PhtServer>,
        authorize: bool,
        pulls: std::sync::atomic::AtomicUsize,
        // Empty pushes (closes) that stated `Content-Length: 0`.
        closes_with_length: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl RoundTrip for Direct {
        async fn round_trip(
            &self,
            req: http::Request<Bytes>,
        ) -> io::Result<http::Response<super::super::Body>> {
            assert_eq!(req.uri().authority().unwrap().as_str(), "node:8080");
            assert_eq!(req.headers()["x-extra"], "1");
            if !self.authorize && req.uri().path() == "/authorize" {
                let mut res = http::Response::new(
                    Full::new(Bytes::new())
                        .map_err(|never| match never {})
                        .boxed(),
                );
                *res.status_mut() = StatusCode::NOT_FOUND;
                return Ok(res);
            }
            if req.uri().path() == "/pull" {
                self.pulls.fetch_add(1, Ordering::Relaxed);
            }
            if req.method() == Method::POST
                && req.body().is_empty()
                && req.headers().get(header::CONTENT_LENGTH) == Some(&"0".parse().unwrap())
            {
                self.closes_with_length.fetch_add(1, Ordering::Relaxed);
            }
            let client: SocketAddr = "127.0.0.1:1".parse().unwrap();
            let req = req.map(|b| Full::new(b).map_err(|never| match never {}).boxed());
            Ok(self.server.serve(req, client).await)
        }
    }

    type Setup = (
        Arc<Direct>,
        Arc<ClientOptions>,
        Arc<PhtServer>,
        tokio::sync::mpsc::Receiver<(BoxConn, SocketAddr)>,
    );

    fn setup(name: &str, authorize: bool) -> Setup {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let server = PhtServer::new(name, Paths::default(), tx);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-extra", http::HeaderValue::from_static("1"));
        let opts = Arc::new(ClientOptions {
            paths: Paths::default(),
            scheme: "http",
            authority: "node:8080".into(),
            headers,
        });
        let rt = Arc::new(Direct {
            server: server.clone(),
            authorize,
            pulls: Default::default(),
            closes_with_length: Default::default(),
        });
        (rt, opts, server, rx)
    }

    #[tokio::test]
    async fn tunnel_carries_data_both_ways_and_half_closes() {
        for authorize in [true, false] {
            let (rt, opts, server, mut rx) = setup("pht-client", authorize);
            let mut conn = connect(rt.clone(), opts).await.unwrap();
            let (mut svc, _) = rx.recv().await.unwrap();
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
            let reader = tokio::spawn({
                let len = data.len();
                async move {
                    let mut got = vec![0u8; len];
                    svc.read_exact(&mut got).await.unwrap();
                    (svc, got)
                }
            });
            conn.write_all(&data).await.unwrap();
            conn.flush().await.unwrap();
            let (mut svc, got) = reader.await.unwrap();
            assert!(got == data, "pushed bytes differ");
            svc.write_all(b"pong").await.unwrap();
            let mut pong = [0u8; 4];
            conn.read_exact(&mut pong).await.unwrap();
            assert_eq!(&pong, b"pong");
            // Half-close: the service sees EOF, and can still answer.
            conn.shutdown().await.unwrap();
            assert_eq!(svc.read(&mut [0u8; 8]).await.unwrap(), 0);
            assert_eq!(server.sessions(), 1);
            svc.write_all(b"last").await.unwrap();
            svc.shutdown().await.unwrap();
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"last");
            assert_eq!(server.sessions(), 0);
            // The pull that carried the last bytes was the last one: a pull after the close
            // would make a development-line GOST server open a new session.
            assert_eq!(rt.pulls.load(Ordering::Relaxed), 1);
            assert_eq!(rt.closes_with_length.load(Ordering::Relaxed), 1);
        }
    }

    /// Delays each pull's answer, and notes a close push sent before the first pull had its
    /// answer.
    struct SlowPull {
        inner: Arc<Direct>,
        delay: std::time::Duration,
        pull_answered: AtomicBool,
        close_overtook_pull: AtomicBool,
    }

    #[async_trait]
    impl RoundTrip for SlowPull {
        async fn round_trip(
            &self,
            req: http::Request<Bytes>,
        ) -> io::Result<http::Response<super::super::Body>> {
            if req.uri().path() == "/pull" {
                tokio::time::sleep(self.delay).await;
                let res = self.inner.round_trip(req).await;
                self.pull_answered.store(true, Ordering::SeqCst);
                return res;
            }
            if req.method() == Method::POST
                && req.body().is_empty()
                && !self.pull_answered.load(Ordering::SeqCst)
            {
                self.close_overtook_pull.store(true, Ordering::SeqCst);
            }
            self.inner.round_trip(req).await
        }
    }

    /// A client that writes its request and shuts down at once (`nc -N`, an HTTP/1.0 client)
    /// before its first pull reached the server: the close must wait for that pull, and the
    /// answer must arrive.
    #[tokio::test]
    async fn quick_close_waits_for_the_first_pull() {
        let (direct, opts, server, mut rx) = setup("pht-client-quick-close", true);
        let rt = Arc::new(SlowPull {
            inner: direct,
            delay: std::time::Duration::from_millis(200),
            pull_answered: AtomicBool::new(false),
            close_overtook_pull: AtomicBool::new(false),
        });
        // The service reads the request to its end, then answers and hangs up.
        let service = tokio::spawn(async move {
            let (mut svc, _) = rx.recv().await.unwrap();
            let mut request = Vec::new();
            svc.read_to_end(&mut request).await.unwrap();
            // Fails if the session is gone; the client then gets no answer.
            let _ = svc.write_all(b"answer").await;
            let _ = svc.shutdown().await;
            request
        });
        let within = std::time::Duration::from_secs(10);
        let mut conn = connect(rt.clone(), opts).await.unwrap();
        conn.write_all(b"request").await.unwrap();
        tokio::time::timeout(within, conn.shutdown())
            .await
            .unwrap()
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(within, conn.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let request = tokio::time::timeout(within, service)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(request, b"request");
        assert!(
            !rt.close_overtook_pull.load(Ordering::SeqCst),
            "close push sent before the first pull was answered"
        );
        assert_eq!(answer, b"answer");
        assert_eq!(server.sessions(), 0);
    }

    /// A server without `authorize` whose first pull answers `first_pull` in one piece, and
    /// whose later pulls answer nothing (the end of the tunnel).
    struct Canned {
        first_pull: Bytes,
        pulls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl RoundTrip for Canned {
        async fn round_trip(
            &self,
            req: http::Request<Bytes>,
        ) -> io::Result<http::Response<super::super::Body>> {
            let (status, body) = match req.uri().path() {
                "/authorize" => (StatusCode::NOT_FOUND, Bytes::new()),
                "/pull" if self.pulls.fetch_add(1, Ordering::Relaxed) == 0 => {
                    (StatusCode::OK, self.first_pull.clone())
                }
                _ => (StatusCode::OK, Bytes::new()),
            };
            let mut res =
                http::Response::new(Full::new(body).map_err(|never| match never {}).boxed());
            *res.status_mut() = status;
            Ok(res)
        }
    }

    /// Lines of 64 KiB or more (newline aside) fail the tunnel, as for GOST's client, even
    /// when a whole line arrives at once: 49,149 bytes of data are the most a line carries.
    /// Answers the first authorize as a stopping server does on a kept-alive connection
    /// (503, `Connection: close`); notes the requests that must go on newer connections.
    struct StoppingFirst {
        inner: Arc<Direct>,
        refused: AtomicBool,
        on_newer: std::sync::atomic::AtomicUsize,
        on_any: std::sync::atomic::AtomicUsize,
        refusal: StatusCode,
        close: bool,
        /// Marks the refusal as come over a shared (HTTP/3) connection.
        shared: bool,
    }

    #[async_trait]
    impl RoundTrip for StoppingFirst {
        async fn round_trip(
            &self,
            req: http::Request<Bytes>,
        ) -> io::Result<http::Response<super::super::Body>> {
            let counter = if req.extensions().get::<OpenedAfter>().is_some() {
                &self.on_newer
            } else {
                &self.on_any
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if req.uri().path() == "/authorize" && !self.refused.swap(true, Ordering::Relaxed) {
                let mut res = http::Response::new(
                    Full::new(Bytes::new())
                        .map_err(|never| match never {})
                        .boxed(),
                );
                *res.status_mut() = self.refusal;
                if self.close {
                    res.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("keep-alive, Close"),
                    );
                }
                if self.shared {
                    res.extensions_mut().insert(Shared);
                }
                return Ok(res);
            }
            self.inner.round_trip(req).await
        }
    }

    #[tokio::test]
    async fn a_stopping_servers_refusal_is_asked_again_on_a_new_connection_once() {
        let (direct, opts, _server, mut rx) = setup("pht-client-stopping", true);
        // Over HTTP/1.1 the refusal closes its connection; over HTTP/3 it has no header for
        // that, and the transport marks the response as come over a shared connection.
        for (close, shared) in [(true, false), (false, true)] {
            let rt = Arc::new(StoppingFirst {
                inner: direct.clone(),
                refused: AtomicBool::new(false),
                on_newer: Default::default(),
                on_any: Default::default(),
                refusal: StatusCode::SERVICE_UNAVAILABLE,
                close,
                shared,
            });
            let mut conn = connect(rt.clone(), opts.clone()).await.unwrap();
            conn.write_all(b"hi").await.unwrap();
            let (mut svc, _) = rx.recv().await.unwrap();
            let mut got = [0u8; 2];
            svc.read_exact(&mut got).await.unwrap();
            conn.flush().await.unwrap();
            svc.write_all(b"yo").await.unwrap();
            conn.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"yo");
            // Only the refused authorize went on any connection; the second one and the
            // tunnel's pull and push on newer ones.
            assert_eq!(rt.on_any.load(Ordering::Relaxed), 1);
            assert!(rt.on_newer.load(Ordering::Relaxed) >= 3);
        }

        // A 503 without the close, or another refusal, is not asked again: it fails the
        // tunnel, naming the server's state when it said it is stopping.
        for (refusal, close, shared, says) in [
            (
                StatusCode::SERVICE_UNAVAILABLE,
                false,
                false,
                "answered 503 Service Unavailable",
            ),
            (StatusCode::TOO_MANY_REQUESTS, true, false, "answered 429"),
            (StatusCode::TOO_MANY_REQUESTS, false, true, "answered 429"),
        ] {
            let rt = Arc::new(StoppingFirst {
                inner: direct.clone(),
                refused: AtomicBool::new(false),
                on_newer: Default::default(),
                on_any: Default::default(),
                refusal,
                close,
                shared,
            });
            let err = match connect(rt.clone(), opts.clone()).await {
                Err(e) => e,
                Ok(_) => panic!("{refusal} was asked again"),
            };
            assert!(err.to_string().contains(says), "{err}");
            assert!(!err.to_string().contains("stopping"), "{err}");
            assert_eq!(rt.on_newer.load(Ordering::Relaxed), 0);
        }
        // Refused again on the new connection: the error says why.
        let twice = Arc::new(StoppingFirst {
            inner: direct,
            refused: AtomicBool::new(false),
            on_newer: Default::default(),
            on_any: Default::default(),
            refusal: StatusCode::SERVICE_UNAVAILABLE,
            close: true,
            shared: false,
        });
        let err = match authorize(&*twice_refusing(twice.clone()), &opts).await {
            Err(e) => e,
            Ok(_) => panic!("a second refusal was taken"),
        };
        assert!(
            err.to_string()
                .contains("answered 503 Service Unavailable: the server is stopping"),
            "{err}"
        );
        assert_eq!(twice.on_any.load(Ordering::Relaxed), 1);
        assert_eq!(twice.on_newer.load(Ordering::Relaxed), 1);
    }

    /// `rt` refusing every authorize, the second (on a newer connection) too.
    fn twice_refusing(rt: Arc<StoppingFirst>) -> Arc<dyn RoundTrip> {
        struct Twice(Arc<StoppingFirst>);
        #[async_trait]
        impl RoundTrip for Twice {
            async fn round_trip(
                &self,
                req: http::Request<Bytes>,
            ) -> io::Result<http::Response<super::super::Body>> {
                self.0.refused.store(false, Ordering::Relaxed);
                self.0.round_trip(req).await
            }
        }
        Arc::new(Twice(rt))
    }

    #[tokio::test]
    async fn pull_lines_of_64_kib_or_more_fail_the_tunnel() {
        let (_, opts, _, _) = setup("pht-client-long-line", false);
        for (len, accepted) in [(49_149, true), (49_152, false), (70_000, false)] {
            let data: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
            let line = crate::codec::pht::encode_line(&data);
            assert_eq!(line.len() - 1 < MAX_PULL_LINE, accepted, "{len}");
            let rt = Arc::new(Canned {
                first_pull: line,
                pulls: Default::default(),
            });
            let mut conn = connect(rt, opts.clone()).await.unwrap();
            let mut got = Vec::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                conn.read_to_end(&mut got),
            )
            .await
            .unwrap();
            if accepted {
                read.unwrap();
                assert!(got == data, "{len} bytes: data differs");
            } else {
                let e = read.expect_err(&format!("a line of {len} bytes was accepted"));
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{len}: {e}");
            }
        }
    }

    #[tokio::test]
    async fn writes_fail_once_the_server_ended_the_session() {
        let (rt, opts, server, mut rx) = setup("pht-client-end", true);
        let mut conn = connect(rt, opts).await.unwrap();
        let (svc, _) = rx.recv().await.unwrap();
        drop(svc);
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(server.sessions(), 0);
        // The push fails; the failure surfaces at the latest on flush.
        let written = conn.write_all(b"x").await;
        let flushed = conn.flush().await;
        assert!(written.is_err() || flushed.is_err());
    }
}
