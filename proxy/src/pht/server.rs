//! The server side of the plain HTTP tunnel (gost-wire.md §8.6): sessions behind the
//! authorize, push and pull endpoints, served as `http::Request` → `http::Response` so that
//! any HTTP server (HTTP/1.1, HTTP/2, HTTP/3) can host them.
//!
//! A session is one tunnel. Its service side is a [`BoxConn`](crate::conn::BoxConn) handed to the service through
//! the listener's `ready` queue; its client side is a series of requests carrying the
//! session's token:
//! - a push (`POST`) carries one base64 line; the bytes go to the service, and the reply is
//!   sent only once the service has read them (back-pressure towards the client);
//! - a pull (`GET`) streams what the service writes, one base64 line per chunk, with an empty
//!   line as a heartbeat while the service is silent.
//!
//! Both GOST generations are served (spec top table): `authorize` hands out a token, and a
//! push or pull with a token the server has not seen creates the session. Stable GOST servers
//! answer 403 to an unknown token instead (shared/golden/pht-server.txt); we deliberately
//! create the session, since development-line GOST clients never call `authorize`. Creation is
//! lazy for issued tokens too, so a client that authorizes and goes away leaves nothing behind.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_channel::mpsc as queue;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{Body, Paths};
use crate::codec::pht::{self, encode_line};
use crate::conn::Conn;
use crate::listener::Ready;

/// Largest chunk of service output put on one pull line: GOST's pull read buffer. Its base64
/// line (43,692 bytes) stays well under the 64 KiB line limit of GOST's client.
pub const PULL_CHUNK: usize = 32 * 1024;

/// Silence on a pull after which an empty line is sent: GOST's value. It keeps proxies and
/// load balancers in front of the server from timing out the long-lived response, and lets
/// us notice a client that went away while the service is quiet.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// How long pushed bytes may wait for the service to read them before the push fails with
/// 410 and the session is closed: GOST's push write timeout.
pub const PUSH_CONSUME_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest push line (base64 text, without its `\n`) accepted; longer ones get 413. GOST's
/// server reads the line without a limit, and GOST's client sends one push per write call:
/// Go's copy loops write 32 KiB at a time, but a writer above them (smux with large frames,
/// GOST's 64 KiB `Transport` buffer) may write more. 128 KiB of base64 is 96 KiB of data, and
/// holds such a 64 KiB write (87,384 bytes) with room; our client sends at most 64 KiB.
pub const MAX_PUSH_LINE: usize = 128 * 1024;

/// A session with no pull attached and no push for this long is taken as abandoned (its
/// client crashed or lost its network between two pulls) and closed. A live client always has
/// a pull open (it re-pulls at once when one ends), so this only has to outlast a re-pull and
/// a slow push: 60 s is twice the push timeout and six heartbeats.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a session whose client finished sending waits for its first pull: a client's
/// close can overtake its first pull (GOST's client sends both at once), and the service's
/// answer must still reach that pull. A pull sent before the close arrives well within this;
/// a client that cancelled its pull leaves the session to be closed after it.
pub const FIRST_PULL_GRACE: Duration = Duration::from_secs(10);

/// How long a closed token is remembered, so that the client's pull gets an empty answer (EOF
/// for GOST's client) instead of creating a fresh session. A client re-pulls immediately, so
/// a minute is plenty.
pub const CLOSED_TOKEN_TTL: Duration = Duration::from_secs(60);

/// Most closed tokens remembered at once, whatever their age: bounds the memory a client
/// opening and closing sessions in a loop can hold.
pub const CLOSED_TOKENS_MAX: usize = 4096;

/// Longest token accepted. GOST's are 20 characters; this leaves room for other clients while
/// bounding what a session key costs.
pub const MAX_TOKEN_LEN: usize = 128;

/// Service output chunks queued for the pull per session (each ≤ [`PULL_CHUNK`]): enough to
/// keep the pull busy while the service writes the next one, bounded at 128 KiB per session.
/// (The queues are futures' channels, which allocate per queued item: an idle session holds
/// none of this room. Such a channel also gives each sender one slot beyond its buffer, so
/// the buffer is one less than this.)
const DOWN_QUEUE: usize = 4;

/// Pushes whose bytes wait for the service per session, beyond the one slot each push
/// request has of its own (its clone of the sender); a further push waits for room, which is
/// the back-pressure a client sees. None is needed: a client pushes sequentially.
const UP_BUFFER: usize = 0;

/// A push's bytes and the signal that the service has read all of them.
type Push = (Bytes, oneshot::Sender<()>);

/// The plain-HTTP-tunnel sessions of one service.
pub struct PhtServer {
    service: String,
    paths: Paths,
    ready: Ready,
    gauge: IntGauge,
    state: Mutex<State>,
    me: Weak<PhtServer>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<Arc<str>, Arc<Session>>,
    closed: HashMap<Arc<str>, Instant>,
    // Closed tokens, oldest first, to expire them and to cap their number.
    closed_order: VecDeque<Arc<str>>,
}

struct Session {
    token: Arc<str>,
    // Taken (dropped) on close, which ends the service's reads once the pushes under way
    // let go of their clones.
    up: Mutex<Option<queue::Sender<Push>>>,
    // The service's output, taken by the pull (one at a time), dropped on close.
    down: Mutex<Option<queue::Receiver<Bytes>>>,
    closed: CancellationToken,
    pulling: AtomicBool,
    // The session waits for its first pull to carry the service's output, and is closed
    // after [`FIRST_PULL_GRACE`] if none comes.
    awaiting_pull: AtomicBool,
    last_active: Mutex<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    fn touch(&self) {
        *lock(&self.last_active) = Instant::now();
    }
}

/// Why a session could not be looked up or created.
enum Lookup {
    Closed,
    Refused(StatusCode),
    /// The service stopped accepting: see [`Draining`].
    Draining,
}

/// Marks a response (in its extensions) as a refusal because the service stopped accepting
/// (removed, replaced, or the process draining after SIGTERM): `503` to a request that would
/// open a session, which a stopping service no longer takes. Its tunnels already open go on.
/// A client that sent it on a kept-alive connection reached this server only through that
/// connection; a new one may reach its replacement (a new process on the same port, another
/// pod behind the same address). So an HTTP/1.1 server answers it with `Connection: close`,
/// which makes clients drop that connection (ours then asks again on a new one); HTTP/3 has
/// no such header, and its connections must stay up for the sessions that drain on them (no
/// GOAWAY either): our h3 client asks again on a new connection for a `503` alone.
#[derive(Clone, Copy, Debug)]
pub struct Draining;

impl PhtServer {
    /// `service`: service name for the session gauge `gost_pht_sessions{host, service}`.
    /// Sessions are delivered to the service through `ready` (crate::listener::Ready).
    pub fn new(service: &str, paths: Paths, ready: Ready) -> Arc<Self> {
        Arc::new_cyclic(|me| PhtServer {
            service: service.to_string(),
            paths,
            ready,
            gauge: crate::metrics::pht_sessions(service),
            state: Mutex::new(State::default()),
            me: me.clone(),
        })
    }

    /// Serves one request of any HTTP version (authorize, push, pull, else 404).
    pub async fn serve(
        self: &Arc<Self>,
        req: http::Request<Body>,
        client: SocketAddr,
    ) -> http::Response<Body> {
        let path = req.uri().path();
        if path == self.paths.authorize {
            return self.authorize();
        }
        let is_push = path == self.paths.push;
        if !is_push && path != self.paths.pull {
            return status(StatusCode::NOT_FOUND);
        }
        let expected = if is_push { Method::POST } else { Method::GET };
        if req.method() != expected {
            return text(
                StatusCode::BAD_REQUEST,
                format!("{} takes {expected} requests\n", req.uri().path()),
            );
        }
        let token = match pht::token(req.uri().query().unwrap_or(""), MAX_TOKEN_LEN) {
            Ok(token) => Arc::from(token),
            Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
        };
        if is_push {
            // Boxed: hyper keeps a connection's request future in an allocation of its size
            // for the connection's life, and a pull connection lives as long as its tunnel.
            Box::pin(self.push(token, req.into_body(), client)).await
        } else {
            self.pull(token, client)
        }
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        lock(&self.state).sessions.len()
    }

    fn authorize(&self) -> Response<Body> {
        // The session itself is created by the first push or pull; only the service's room
        // for it is checked here, as GOST answers 429 when its accept queue is full. A token
        // from a stopping service would only be refused by its first push or pull.
        if self.ready.is_closed() {
            return draining();
        }
        if self.ready.capacity() == 0 {
            return status(StatusCode::TOO_MANY_REQUESTS);
        }
        let mut res = text(StatusCode::OK, format!("token={}", super::new_token()));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res
    }

    async fn push(&self, token: Arc<str>, body: Body, client: SocketAddr) -> Response<Body> {
        let line = read_line(body, MAX_PUSH_LINE).await;
        if self.is_closed(&token) {
            return status(StatusCode::GONE);
        }
        let line = match line {
            Ok(Some(line)) if !line.is_empty() => line,
            // An empty body, an empty line or a body ending before its newline: the client
            // closes the tunnel.
            Ok(_) => {
                self.client_done(&token);
                return status(StatusCode::OK);
            }
            Err(LineError::TooLong) => {
                self.close_token(&token, "push line too long");
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("push line longer than {MAX_PUSH_LINE} bytes\n"),
                );
            }
            Err(LineError::Io(e)) => {
                tracing::debug!(token = %token, error = %e, "pht push body failed");
                self.close_token(&token, "push body failed");
                return status(StatusCode::PARTIAL_CONTENT);
            }
        };
        let data = match pht::decode_line(&line) {
            Ok(data) => Bytes::from(data),
            Err(e) => {
                self.close_token(&token, "bad base64 in a push");
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("push body is not one line of base64: {e}\n"),
                );
            }
        };
        let session = match self.session(token, client) {
            Ok(session) => session,
            Err(Lookup::Closed) => return status(StatusCode::GONE),
            Err(Lookup::Refused(code)) => return status(code),
            Err(Lookup::Draining) => return draining(),
        };
        session.touch();
        let up = lock(&session.up).clone();
        let Some(mut up) = up else {
            return status(StatusCode::GONE);
        };
        let (ack, mut consumed) = oneshot::channel();
        let delivered = async {
            up.send((data, ack)).await.ok()?;
            (&mut consumed).await.ok()
        };
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(PUSH_CONSUME_TIMEOUT, delivered) => outcome,
            () = session.closed.cancelled() => Ok(None),
        };
        // The service's acknowledgement decides, whichever branch won: a service that reads
        // the bytes, answers and hangs up (a proxied HTTP/1.0 request) may close the session
        // before this task runs again, and `select!` then picks either ready branch at
        // random. A 410 for bytes the service read fails the client's write although they
        // arrived (and a client must not resend a push that may have been delivered).
        let outcome = match outcome {
            Ok(None) | Err(_) if consumed.try_recv().is_ok() => Ok(Some(())),
            other => other,
        };
        drop(up);
        session.touch();
        match outcome {
            Ok(Some(())) => status(StatusCode::OK),
            Ok(None) if session.closed.is_cancelled() => status(StatusCode::GONE),
            Ok(None) => {
                // The service let go of its side. What it wrote before is still for the
                // pull: one attached ends after it; a session not pulled yet keeps it for
                // its first pull (a relay's error reply written before the pull arrived).
                tracing::debug!(service = %self.service, token = %session.token, "pht session: service stopped reading");
                self.end_input(&session);
                status(StatusCode::GONE)
            }
            Err(_) => {
                self.close(&session, "service did not read a push in time");
                status(StatusCode::GONE)
            }
        }
    }

    fn pull(&self, token: Arc<str>, client: SocketAddr) -> Response<Body> {
        let session = match self.session(token, client) {
            Ok(session) => session,
            // No line at all: GOST's client takes that as the end of the tunnel.
            Err(Lookup::Closed) => return status(StatusCode::OK),
            Err(Lookup::Refused(code)) => return status(code),
            Err(Lookup::Draining) => return draining(),
        };
        let Some(rx) = lock(&session.down).take() else {
            return text(
                StatusCode::CONFLICT,
                "another pull is already streaming this session\n".to_string(),
            );
        };
        session.pulling.store(true, Ordering::Relaxed);
        let body = PullBody {
            server: self.me.clone(),
            closed: Box::pin(session.closed.clone().cancelled_owned()),
            session,
            rx,
            heartbeat: Box::pin(tokio::time::sleep(HEARTBEAT_INTERVAL)),
            draining: false,
            done: false,
        };
        Response::builder()
            .status(StatusCode::OK)
            .header("X-Accel-Buffering", "no")
            .body(body.boxed())
            .expect("static response parts are valid")
    }

    fn is_closed(&self, token: &str) -> bool {
        let mut state = lock(&self.state);
        state.expire_closed();
        state.closed.contains_key(token)
    }

    /// The session of `token`, created (and handed to the service) if the token is new.
    fn session(&self, token: Arc<str>, client: SocketAddr) -> Result<Arc<Session>, Lookup> {
        let mut state = lock(&self.state);
        if let Some(session) = state.sessions.get(&token) {
            return Ok(session.clone());
        }
        state.expire_closed();
        if state.closed.contains_key(&token) {
            return Err(Lookup::Closed);
        }
        let (up_tx, up_rx) = queue::channel(UP_BUFFER);
        let (down_tx, down_rx) = queue::channel(DOWN_QUEUE - 1);
        let session = Arc::new(Session {
            token: token.clone(),
            up: Mutex::new(Some(up_tx)),
            down: Mutex::new(Some(down_rx)),
            closed: CancellationToken::new(),
            pulling: AtomicBool::new(false),
            awaiting_pull: AtomicBool::new(false),
            last_active: Mutex::new(Instant::now()),
        });
        let conn = PhtConn {
            read: Mutex::new(ReadSide {
                up: up_rx,
                current: None,
            }),
            down: down_tx,
            closed: session.closed.clone(),
        };
        match self.ready.try_send((Box::new(conn), client)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(Lookup::Refused(StatusCode::TOO_MANY_REQUESTS));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Lookup::Draining);
            }
        }
        state.sessions.insert(token.clone(), session.clone());
        let open = state.sessions.len();
        drop(state);
        self.gauge.inc();
        tracing::debug!(service = %self.service, token = %token, client = %client, open, "pht session opened");
        tokio::spawn(watch_idle(self.me.clone(), session.clone()));
        Ok(session)
    }

    /// The client's close (an empty push), a half-close: the service reads EOF, and the pull
    /// streams what the service still writes; the session ends with it (GOST's client cancels
    /// its pull right after the close, which ends the session at once; ours keeps reading).
    /// A session never pulled yet waits [`FIRST_PULL_GRACE`] for its pull: a close that
    /// overtook the client's first pull must not throw away the service's answer to it.
    fn client_done(&self, token: &str) {
        let session = lock(&self.state).sessions.get(token).cloned();
        let Some(session) = session else {
            return;
        };
        tracing::debug!(service = %self.service, token = %token, "pht session: client finished sending");
        self.end_input(&session);
    }

    /// No more pushes reach the service. A pull attached (or ended, which closed the
    /// session) carries the service's output to its end; a session never pulled keeps that
    /// output for a pull that comes within [`FIRST_PULL_GRACE`], and is closed after it.
    fn end_input(&self, session: &Arc<Session>) {
        lock(&session.up).take();
        // The pull takes `down` when it attaches: while it is here, none has.
        let never_pulled = lock(&session.down).is_some();
        if never_pulled && !session.awaiting_pull.swap(true, Ordering::Relaxed) {
            tokio::spawn(await_first_pull(self.me.clone(), session.clone()));
        }
    }

    fn close_token(&self, token: &str, why: &str) {
        let session = lock(&self.state).sessions.get(token).cloned();
        if let Some(session) = session {
            self.close(&session, why);
        }
    }

    /// Forgets the session and remembers its token as closed; the service sees EOF on its
    /// reads and errors on its writes, a pull ends after what is queued for it.
    fn close(&self, session: &Arc<Session>, why: &str) {
        let mut state = lock(&self.state);
        match state.sessions.get(&session.token) {
            Some(current) if Arc::ptr_eq(current, session) => {}
            _ => return,
        }
        state.sessions.remove(&session.token);
        state.expire_closed();
        if state.closed_order.len() >= CLOSED_TOKENS_MAX
            && let Some(oldest) = state.closed_order.pop_front()
        {
            state.closed.remove(&oldest);
        }
        state.closed.insert(session.token.clone(), Instant::now());
        state.closed_order.push_back(session.token.clone());
        let open = state.sessions.len();
        drop(state);
        self.gauge.dec();
        session.closed.cancel();
        lock(&session.up).take();
        lock(&session.down).take();
        tracing::debug!(service = %self.service, token = %session.token, why, open, "pht session closed");
    }
}

impl State {
    fn expire_closed(&mut self) {
        let now = Instant::now();
        while let Some(oldest) = self.closed_order.front() {
            match self.closed.get(oldest) {
                Some(at) if now.duration_since(*at) < CLOSED_TOKEN_TTL => break,
                _ => {
                    let oldest = self.closed_order.pop_front().expect("front exists");
                    self.closed.remove(&oldest);
                }
            }
        }
    }
}

/// Closes the session once it has had no pull and no push for [`SESSION_IDLE_TIMEOUT`].
async fn watch_idle(server: Weak<PhtServer>, session: Arc<Session>) {
    loop {
        let deadline = *lock(&session.last_active) + SESSION_IDLE_TIMEOUT;
        tokio::select! {
            () = session.closed.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {}
        }
        if session.pulling.load(Ordering::Relaxed) {
            // A pull's own failure closes the session; count idleness from its end.
            session.touch();
            continue;
        }
        if *lock(&session.last_active) + SESSION_IDLE_TIMEOUT <= Instant::now() {
            if let Some(server) = server.upgrade() {
                server.close(&session, "client vanished (no pull, no push)");
            }
            return;
        }
    }
}

/// Closes `session` if no pull has attached to it within [`FIRST_PULL_GRACE`].
async fn await_first_pull(server: Weak<PhtServer>, session: Arc<Session>) {
    tokio::select! {
        () = session.closed.cancelled() => return,
        () = tokio::time::sleep(FIRST_PULL_GRACE) => {}
    }
    if lock(&session.down).is_some()
        && let Some(server) = server.upgrade()
    {
        server.close(&session, "no pull came after the client's close");
    }
}

enum LineError {
    TooLong,
    Io(io::Error),
}

/// The first line of `body` (see [`pht::Lines`]); `None` when the body ends before a newline
/// (which, like an empty line, is the client's close). The rest of the body is not read.
async fn read_line(mut body: Body, limit: usize) -> Result<Option<Bytes>, LineError> {
    let mut lines = pht::Lines::new(limit);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(LineError::Io)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        lines.extend(&data);
        if let Some(line) = lines.next_line().map_err(|_| LineError::TooLong)? {
            return Ok(Some(line));
        }
    }
    Ok(None)
}

/// The `503` of a stopping service; see [`Draining`].
fn draining() -> Response<Body> {
    let mut res = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "this PHT service is stopping and opens no new sessions\n".to_string(),
    );
    res.extensions_mut().insert(Draining);
    res
}

fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(empty());
    *res.status_mut() = code;
    res
}

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *res.status_mut() = code;
    res
}

fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The streaming body of a pull: the service's output as base64 lines, heartbeats between.
struct PullBody {
    server: Weak<PhtServer>,
    session: Arc<Session>,
    rx: queue::Receiver<Bytes>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    heartbeat: Pin<Box<Sleep>>,
    // The session was closed: send what is queued, then end.
    draining: bool,
    done: bool,
}

impl PullBody {
    fn finish(&mut self, why: &str) {
        self.done = true;
        if let Some(server) = self.server.upgrade() {
            server.close(&self.session, why);
        }
    }
}

impl HttpBody for PullBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.draining && this.closed.as_mut().poll(cx).is_ready() {
            this.draining = true;
        }
        if this.draining {
            return match this.rx.try_recv() {
                Ok(chunk) => Poll::Ready(Some(Ok(Frame::data(encode_line(&chunk))))),
                Err(_) => {
                    this.done = true;
                    Poll::Ready(None)
                }
            };
        }
        match this.rx.poll_next_unpin(cx) {
            Poll::Ready(Some(chunk)) => {
                this.heartbeat
                    .as_mut()
                    .reset(Instant::now() + HEARTBEAT_INTERVAL);
                return Poll::Ready(Some(Ok(Frame::data(encode_line(&chunk)))));
            }
            Poll::Ready(None) => {
                this.finish("service closed the tunnel");
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        ready!(this.heartbeat.as_mut().poll(cx));
        this.heartbeat
            .as_mut()
            .reset(Instant::now() + HEARTBEAT_INTERVAL);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"\n")))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for PullBody {
    fn drop(&mut self) {
        self.session.pulling.store(false, Ordering::Relaxed);
        if !self.done {
            // The client went away mid-stream: what was sent may be lost, so the tunnel
            // cannot go on with another pull.
            self.finish("pull broken");
        }
    }
}

/// The service's side of a session.
struct PhtConn {
    // Behind a lock so that `poll_read_ready` (which takes `&self`) can wait for a push
    // without a read buffer: idle tunnels then cost the relay nothing.
    read: Mutex<ReadSide>,
    down: queue::Sender<Bytes>,
    closed: CancellationToken,
}

struct ReadSide {
    up: queue::Receiver<Push>,
    // The push being read, and the signal to send once all of it was read.
    current: Option<Push>,
}

impl ReadSide {
    /// Ready when there are bytes to read, or at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.current.is_none() {
            self.current = ready!(self.up.poll_next_unpin(cx));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for PhtConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut read = lock(&self.read);
        loop {
            ready!(read.poll_fill(cx))?;
            let Some((data, _)) = &mut read.current else {
                return Poll::Ready(Ok(()));
            };
            if data.is_empty() {
                // Never queued by a push, but harmless: acknowledge and wait for more.
                let (_, ack) = read.current.take().expect("checked above");
                let _ = ack.send(());
                continue;
            }
            let n = data.len().min(buf.remaining());
            buf.put_slice(&data[..n]);
            data.advance(n);
            if data.is_empty() {
                let (_, ack) = read.current.take().expect("checked above");
                let _ = ack.send(());
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for PhtConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let broken = || io::Error::new(io::ErrorKind::BrokenPipe, "pht session closed");
        if self.closed.is_cancelled() {
            return Poll::Ready(Err(broken()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.down.poll_ready(cx)).map_err(|_| broken())?;
        let n = buf.len().min(PULL_CHUNK);
        self.down
            .start_send(Bytes::copy_from_slice(&buf[..n]))
            .map_err(|_| broken())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued chunks go out as the pull streams; there is nothing to push here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The pull sends what is queued, then ends, which is the client's EOF.
        self.down.close_channel();
        Poll::Ready(Ok(()))
    }
}

impl Conn for PhtConn {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.read).poll_fill(cx)
    }

    fn has_read_readiness(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::BoxConn;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Accepted = mpsc::Receiver<(BoxConn, SocketAddr)>;

    fn client() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn new_server(name: &str, backlog: usize) -> (Arc<PhtServer>, Accepted) {
        let (tx, rx) = mpsc::channel(backlog);
        let paths = Paths {
            authorize: "/a".into(),
            push: "/p".into(),
            pull: "/q".into(),
        };
        (PhtServer::new(name, paths, tx), rx)
    }

    fn req(method: Method, uri: &str, body: &'static [u8]) -> http::Request<Body> {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(
                http_body_util::Full::new(Bytes::from_static(body))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap()
    }

    async fn body(res: Response<Body>) -> Bytes {
        res.into_body().collect().await.unwrap().to_bytes()
    }

    async fn next_frame(body: &mut Body) -> Option<Bytes> {
        body.frame().await.map(|f| f.unwrap().into_data().unwrap())
    }

    fn gauge(name: &str) -> i64 {
        crate::metrics::pht_sessions(name).get()
    }

    #[tokio::test]
    async fn authorize_hands_out_tokens_with_any_method() {
        let (server, _rx) = new_server("pht-authorize", 8);
        for method in [Method::GET, Method::POST] {
            let res = server.serve(req(method, "/a", b""), client()).await;
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(
                res.headers()[header::CONTENT_TYPE],
                "text/plain; charset=utf-8"
            );
            let body = body(res).await;
            assert_eq!(body.len(), 26, "{body:?}");
            assert!(body.starts_with(b"token="));
        }
        // Issued tokens cost nothing until used.
        assert_eq!(server.sessions(), 0);
    }

    #[tokio::test]
    async fn wrong_method_path_or_token_is_refused() {
        let (server, _rx) = new_server("pht-refused", 8);
        let cases = [
            (Method::GET, "/p?token=t", StatusCode::BAD_REQUEST),
            (Method::POST, "/q?token=t", StatusCode::BAD_REQUEST),
            (Method::GET, "/other?token=t", StatusCode::NOT_FOUND),
            (Method::GET, "/q", StatusCode::BAD_REQUEST),
            (Method::GET, "/q?token=", StatusCode::BAD_REQUEST),
        ];
        for (method, uri, expected) in cases {
            let res = server
                .serve(req(method.clone(), uri, b"AA==\n"), client())
                .await;
            assert_eq!(res.status(), expected, "{method} {uri}");
        }
        assert_eq!(server.sessions(), 0);
    }

    #[tokio::test]
    async fn push_answers_only_after_the_service_read_the_bytes() {
        let (server, mut rx) = new_server("pht-push", 8);
        let push = {
            let server = server.clone();
            tokio::spawn(async move {
                server
                    .serve(
                        req(Method::POST, "/p?token=abc", b"aGVsbG8=\nignored"),
                        client(),
                    )
                    .await
            })
        };
        let (mut conn, from) = rx.recv().await.unwrap();
        assert_eq!(from, client());
        assert_eq!(server.sessions(), 1);
        assert_eq!(gauge("pht-push"), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !push.is_finished(),
            "push answered before the data was read"
        );
        let mut got = [0u8; 5];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        let res = push.await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(body(res).await.is_empty());
    }

    /// A service that reads a push, answers and hangs up (a proxied HTTP/1.0 request) can
    /// close the session before the push's task runs again. The push was delivered: it must
    /// be answered 200, not 410, or the client fails a write whose bytes arrived (a 502 from
    /// an HTTP proxy over the tunnel). The answer was picked at random between the two ready
    /// outcomes, so one run in two failed; 64 runs miss that with odds of 2^-64.
    #[tokio::test]
    async fn a_push_read_before_the_session_closed_is_answered_ok() {
        let (server, mut rx) = new_server("pht-push-then-close", 8);
        for i in 0..64 {
            let pull = server
                .serve(req(Method::GET, &format!("/q?token=t{i}"), b""), client())
                .await;
            let (mut conn, _) = rx.recv().await.unwrap();
            let push = server.serve(
                req(Method::POST, &format!("/p?token=t{i}"), b"aGVsbG8=\n"),
                client(),
            );
            let mut push = std::pin::pin!(push);
            // Polled until it waits for the service: its bytes are queued for it.
            assert!(futures_util::poll!(push.as_mut()).is_pending());
            let mut got = [0u8; 5];
            conn.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            // The service answers and hangs up; the pull ends, which closes the session,
            // all before the push is polled again.
            conn.write_all(b"bye").await.unwrap();
            drop(conn);
            assert!(!body(pull).await.is_empty());
            assert_eq!(server.sessions(), 0);
            let res = push.await;
            assert_eq!(res.status(), StatusCode::OK, "push {i}");
        }
    }

    #[tokio::test]
    async fn pull_streams_lines_and_ends_at_service_eof() {
        let (server, mut rx) = new_server("pht-pull", 8);
        let res = server
            .serve(req(Method::GET, "/q?token=xyz", b""), client())
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-accel-buffering"], "no");
        let mut pull = res.into_body();
        let (mut conn, _) = rx.recv().await.unwrap();
        // Larger than one pull chunk: split into lines of at most 32 KiB.
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        conn.write_all(b"hello").await.unwrap();
        assert_eq!(next_frame(&mut pull).await.unwrap(), "aGVsbG8=\n");
        let writer = tokio::spawn({
            let data = data.clone();
            async move {
                conn.write_all(&data).await.unwrap();
                conn.shutdown().await.unwrap();
                conn
            }
        });
        let mut got = Vec::new();
        while let Some(line) = next_frame(&mut pull).await {
            assert_eq!(line.last(), Some(&b'\n'));
            let chunk = BASE64.decode(&line[..line.len() - 1]).unwrap();
            assert!(chunk.len() <= PULL_CHUNK);
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, data);
        let mut conn = writer.await.unwrap();
        assert_eq!(server.sessions(), 0);
        assert_eq!(gauge("pht-pull"), 0);
        // The service sees the session closed.
        assert_eq!(conn.read(&mut [0u8; 8]).await.unwrap(), 0);
        // Closed token: a pull gets an empty 200 (EOF for GOST's client), a push fails.
        let res = server
            .serve(req(Method::GET, "/q?token=xyz", b""), client())
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(body(res).await.is_empty());
        let res = server
            .serve(req(Method::POST, "/p?token=xyz", b"AA==\n"), client())
            .await;
        assert_eq!(res.status(), StatusCode::GONE);
        assert_eq!(server.sessions(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_pull_sends_heartbeats() {
        let (server, _rx) = new_server("pht-heartbeat", 8);
        let res = server
            .serve(req(Method::GET, "/q?token=hb", b""), client())
            .await;
        let mut pull = res.into_body();
        let start = Instant::now();
        assert_eq!(next_frame(&mut pull).await.unwrap(), "\n");
        assert_eq!(start.elapsed(), HEARTBEAT_INTERVAL);
        assert_eq!(next_frame(&mut pull).await.unwrap(), "\n");
        assert_eq!(start.elapsed(), 2 * HEARTBEAT_INTERVAL);
        assert_eq!(server.sessions(), 1);
    }

    /// Pushes `hello` on a new session `token` and lets the service read it.
    async fn pushed_hello(server: &Arc<PhtServer>, rx: &mut Accepted, token: &str) -> BoxConn {
        let push = tokio::spawn({
            let server = server.clone();
            let uri = format!("/p?token={token}");
            async move {
                server
                    .serve(req(Method::POST, &uri, b"aGVsbG8=\n"), client())
                    .await
            }
        });
        let (mut conn, _) = rx.recv().await.unwrap();
        let mut got = [0u8; 5];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(push.await.unwrap().status(), StatusCode::OK);
        conn
    }

    /// The client's close can overtake its first pull (it sends both at once): the close is
    /// a half-close all the same, and the pull that comes next gets all the service wrote.
    #[tokio::test]
    async fn empty_push_before_the_first_pull_keeps_the_output_for_it() {
        for close_body in [&b""[..], b"\n", b"aGVsbG8="] {
            let (server, mut rx) = new_server("pht-close", 8);
            let mut conn = pushed_hello(&server, &mut rx, "c").await;
            conn.write_all(b"early").await.unwrap();
            let res = server
                .serve(req(Method::POST, "/p?token=c", close_body), client())
                .await;
            assert_eq!(res.status(), StatusCode::OK, "{close_body:?}");
            assert_eq!(conn.read(&mut [0u8; 8]).await.unwrap(), 0);
            assert_eq!(server.sessions(), 1, "{close_body:?}");
            // Pushes are over.
            let res = server
                .serve(req(Method::POST, "/p?token=c", b"AA==\n"), client())
                .await;
            assert_ne!(res.status(), StatusCode::OK);
            conn.write_all(b"late").await.unwrap();
            conn.shutdown().await.unwrap();
            let res = server
                .serve(req(Method::GET, "/q?token=c", b""), client())
                .await;
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(body(res).await, "ZWFybHk=\nbGF0ZQ==\n", "{close_body:?}");
            assert_eq!(server.sessions(), 0);
        }
        assert_eq!(gauge("pht-close"), 0);
    }

    /// A closed session that no pull comes for is not kept beyond [`FIRST_PULL_GRACE`].
    #[tokio::test(start_paused = true)]
    async fn empty_push_without_a_pull_closes_after_the_grace() {
        let (server, mut rx) = new_server("pht-close-grace", 8);
        let mut conn = pushed_hello(&server, &mut rx, "g").await;
        let res = server
            .serve(req(Method::POST, "/p?token=g", b""), client())
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(conn.read(&mut [0u8; 8]).await.unwrap(), 0);
        tokio::time::sleep(FIRST_PULL_GRACE - Duration::from_secs(1)).await;
        assert_eq!(server.sessions(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(server.sessions(), 0);
        assert_eq!(gauge("pht-close-grace"), 0);
        assert!(conn.write_all(b"late").await.is_err());
        // A pull after that gets the end of the tunnel.
        let res = server
            .serve(req(Method::GET, "/q?token=g", b""), client())
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(body(res).await.is_empty());
    }

    /// A service that answers and hangs up before the first pull (a relay's error reply):
    /// a push that then finds it gone fails, but the pull still gets the answer, then the end.
    #[tokio::test]
    async fn output_of_a_service_gone_before_the_first_pull_reaches_the_pull() {
        let (server, mut rx) = new_server("pht-gone-early", 8);
        let mut conn = pushed_hello(&server, &mut rx, "e").await;
        conn.write_all(b"error reply").await.unwrap();
        drop(conn);
        let res = server
            .serve(req(Method::POST, "/p?token=e", b"AA==\n"), client())
            .await;
        assert_eq!(res.status(), StatusCode::GONE);
        let res = server
            .serve(req(Method::GET, "/q?token=e", b""), client())
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body(res).await, encode_line(b"error reply"));
        assert_eq!(server.sessions(), 0);
        assert_eq!(gauge("pht-gone-early"), 0);
    }

    #[tokio::test]
    async fn empty_push_with_a_pull_is_a_half_close() {
        let (server, mut rx) = new_server("pht-half", 8);
        let res = server
            .serve(req(Method::GET, "/q?token=h", b""), client())
            .await;
        let mut pull = res.into_body();
        let (mut conn, _) = rx.recv().await.unwrap();
        let res = server
            .serve(req(Method::POST, "/p?token=h", b""), client())
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(conn.read(&mut [0u8; 8]).await.unwrap(), 0);
        // Pushes are over, the pull still carries the service's last words.
        let res = server
            .serve(req(Method::POST, "/p?token=h", b"AA==\n"), client())
            .await;
        assert_ne!(res.status(), StatusCode::OK);
        conn.write_all(b"bye").await.unwrap();
        assert_eq!(next_frame(&mut pull).await.unwrap(), "Ynll\n");
        assert_eq!(server.sessions(), 1);
        conn.shutdown().await.unwrap();
        assert_eq!(next_frame(&mut pull).await, None);
        assert_eq!(server.sessions(), 0);
        assert_eq!(gauge("pht-half"), 0);
    }

    #[tokio::test]
    async fn bad_base64_is_refused_and_closes() {
        let (server, mut rx) = new_server("pht-bad", 8);
        let _pull = server
            .serve(req(Method::GET, "/q?token=b", b""), client())
            .await;
        let (mut conn, _) = rx.recv().await.unwrap();
        let res = server
            .serve(req(Method::POST, "/p?token=b", b"not base64!\n"), client())
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&body(res).await).contains("base64"));
        assert_eq!(server.sessions(), 0);
        assert_eq!(conn.read(&mut [0u8; 8]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn overlong_push_line_is_refused() {
        let (server, _rx) = new_server("pht-long", 8);
        let long: &'static [u8] = Box::leak(vec![b'A'; MAX_PUSH_LINE + 4].into_boxed_slice());
        let res = server
            .serve(req(Method::POST, "/p?token=l", long), client())
            .await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(server.sessions(), 0);
        // The longest accepted line: 96 KiB of data, more than a GOST client writing 64 KiB
        // at once sends.
        let mut line = BASE64.encode(vec![7u8; 96 * 1024]).into_bytes();
        assert_eq!(line.len(), MAX_PUSH_LINE);
        line.push(b'\n');
        let line: &'static [u8] = Box::leak(line.into_boxed_slice());
        let (server, mut rx) = new_server("pht-long", 8);
        let push = tokio::spawn({
            let server = server.clone();
            async move {
                server
                    .serve(req(Method::POST, "/p?token=m", line), client())
                    .await
            }
        });
        let (mut conn, _) = rx.recv().await.unwrap();
        let mut got = vec![0u8; 96 * 1024];
        conn.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7));
        assert_eq!(push.await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn unread_push_times_out_with_410() {
        let (server, mut rx) = new_server("pht-slow", 8);
        let start = Instant::now();
        let res = server
            .serve(req(Method::POST, "/p?token=s", b"aGVsbG8=\n"), client())
            .await;
        assert_eq!(res.status(), StatusCode::GONE);
        assert_eq!(start.elapsed(), PUSH_CONSUME_TIMEOUT);
        assert_eq!(server.sessions(), 0);
        let (mut conn, _) = rx.recv().await.unwrap();
        // Whatever was queued may still be read; then EOF.
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.unwrap();
        assert!(rest.len() <= 5);
    }

    #[tokio::test(start_paused = true)]
    async fn vanished_client_is_reclaimed() {
        let (server, mut rx) = new_server("pht-reclaim", 8);
        let push = tokio::spawn({
            let server = server.clone();
            async move {
                server
                    .serve(req(Method::POST, "/p?token=v", b"aGVsbG8=\n"), client())
                    .await
            }
        });
        let (mut conn, _) = rx.recv().await.unwrap();
        conn.read_exact(&mut [0u8; 5]).await.unwrap();
        assert_eq!(push.await.unwrap().status(), StatusCode::OK);
        assert_eq!(gauge("pht-reclaim"), 1);
        tokio::time::sleep(SESSION_IDLE_TIMEOUT - Duration::from_secs(1)).await;
        assert_eq!(server.sessions(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(server.sessions(), 0);
        assert_eq!(gauge("pht-reclaim"), 0);
        assert_eq!(conn.read(&mut [0u8; 8]).await.unwrap(), 0);

        // A session with a pull attached is live, however long it is quiet.
        let res = server
            .serve(req(Method::GET, "/q?token=w", b""), client())
            .await;
        let mut pull = res.into_body();
        for _ in 0..30 {
            assert_eq!(next_frame(&mut pull).await.unwrap(), "\n");
        }
        assert_eq!(server.sessions(), 1);
        // A broken pull (the client dropped the response) closes it.
        drop(pull);
        assert_eq!(server.sessions(), 0);
        assert_eq!(gauge("pht-reclaim"), 0);
    }

    #[tokio::test]
    async fn full_service_queue_gives_429() {
        let (server, _rx) = new_server("pht-full", 1);
        let res = server
            .serve(req(Method::GET, "/q?token=one", b""), client())
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let res = server
            .serve(req(Method::GET, "/q?token=two", b""), client())
            .await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let res = server.serve(req(Method::GET, "/a", b""), client()).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(server.sessions(), 1);
    }

    /// A stopping service (its queue closed) refuses new sessions, authorize included, with a
    /// 503 marked as a stopping server's; its open sessions go on.
    #[tokio::test]
    async fn a_stopping_service_refuses_new_sessions_and_keeps_open_ones() {
        let (server, mut rx) = new_server("pht-stopping", 8);
        let mut conn = pushed_hello(&server, &mut rx, "open").await;
        drop(rx);
        for res in [
            server.serve(req(Method::GET, "/a", b""), client()).await,
            server
                .serve(req(Method::GET, "/q?token=new", b""), client())
                .await,
            server
                .serve(req(Method::POST, "/p?token=new2", b"aGVsbG8=\n"), client())
                .await,
        ] {
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(res.extensions().get::<Draining>().is_some());
        }
        assert_eq!(server.sessions(), 1);
        let push = tokio::spawn({
            let server = server.clone();
            async move {
                server
                    .serve(req(Method::POST, "/p?token=open", b"aGVsbG8=\n"), client())
                    .await
            }
        });
        let mut got = [0u8; 5];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        let res = push.await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.extensions().get::<Draining>().is_none());
    }

    #[tokio::test]
    async fn second_pull_on_a_session_conflicts() {
        let (server, _rx) = new_server("pht-conflict", 8);
        let _first = server
            .serve(req(Method::GET, "/q?token=d", b""), client())
            .await;
        let res = server
            .serve(req(Method::GET, "/q?token=d", b""), client())
            .await;
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(server.sessions(), 1);
    }
}
