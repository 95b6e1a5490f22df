//! HTTP/2 plumbing shared by the `h2`, `h2c` and `http2` transports (gost-wire.md §8.3, §8.4):
//! one HTTP/2 stream as a byte stream ([`H2Stream`]), the connection settings both sides use,
//! and the client side's pool of connections per node address, each carrying many tunnels: a
//! node gets a further connection only when all of its connections are at the server's stream
//! limit.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::addr::Address;
use crate::conn::{BoxConn, Conn, Heard};
use crate::dialer::tcp;
use crate::tcpinfo::{self, TcpCounts, TcpWatch};
use crate::tls::ClientTls;

/// Initial flow-control window of every stream, both directions. It bounds what one tunnel may
/// have in flight (and so buffered at the receiver): 256 KiB keeps a single tunnel near line
/// rate on low-latency links while 1,000 tunnels that stall cannot pin more than the
/// connection window below. GOST's 1 MiB per stream is what lets a few hundred stalled
/// tunnels exhaust memory.
pub const STREAM_WINDOW: u32 = 256 * 1024;

/// Flow-control window of a whole connection: the most data all its streams together can have
/// unread at the receiver, so the hard bound on a connection's receive buffers. Several times
/// the stream window so that a handful of busy tunnels do not throttle each other.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Largest DATA frame we accept. Bigger than HTTP/2's 16 KiB default to cut per-frame overhead
/// on bulk transfers; still small enough that a frame is never a noticeable buffer.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;

/// Data a stream may have queued for sending before writes wait. Writes only ever queue what
/// flow control already granted, so this just caps one stream's share of the socket buffer.
pub const MAX_SEND_BUFFER: usize = STREAM_WINDOW as usize;

/// Streams a client may have open on one server connection. A client multiplexes all its
/// tunnels to a node over one connection until the server's limit, so this is a tunnel count,
/// not a request count; idle streams cost a few hundred bytes each.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Largest request or response head. Proxy heads are small; this rejects header floods.
pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// Time allowed for the HTTP/2 preface and settings exchange (after TLS), as GOST's 10 s TLS
/// handshake timeout for `h2`.
pub const H2_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a pooled connection may receive nothing before we PING it, so that a peer that
/// vanished without closing (power loss, NAT timeout) is noticed before the next tunnel. This
/// holds whether or not tunnels are open: a quiet tunnel (an idle SSH session) over a vanished
/// peer needs noticing as much, and new tunnels would go to that connection. A connection that
/// receives anything (tunnel data, WINDOW_UPDATEs for our uploads, the peer's PINGs) is not
/// PINGed, as Go's HTTP/2 client with `ReadIdleTimeout`.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a connection may receive nothing at all while our PING is unanswered before it is
/// declared dead. Anything received proves the peer alive and restarts the wait: on a slow or
/// bufferbloated uplink the PING queues behind our DATA (up to a connection window of it), so
/// its answer comes late although the peer keeps sending. Over a TCP socket of its own, bytes
/// the kernel received count too (h2 may not be reading them); acknowledgements of ours do
/// not, since a TCP proxy on the way sends them for a server that is gone.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a new tunnel's request may wait for its answer on a pooled connection before the
/// connection is asked for a sign of life (a PING). A peer that vanished without closing (a
/// lost node, a partition, a pod replaced behind a Service) would otherwise take every new
/// tunnel until keepalive finds it dead, up to [`KEEPALIVE_INTERVAL`] plus
/// [`KEEPALIVE_TIMEOUT`] later. Most answers come well within this; a server that takes longer
/// to reach its target costs one PING.
pub const PROBE_AFTER: Duration = Duration::from_secs(1);

/// How long, plus four round trips, a connection asked for a sign of life may receive nothing
/// at all before it is found silent: no new tunnel goes to it any more, and the requests
/// waiting on it are asked again on another connection. Tunnels already on it keep running
/// (a false alarm costs one connection); keepalive ends it if it is really dead. Over a TCP
/// socket of its own, bytes the kernel received count as well (behind a slow uplink, h2 reads
/// nothing until the PING is written), and a peer whose TCP takes our bytes is waited for up
/// to [`KEEPALIVE_TIMEOUT`] (see [`crate::tcpinfo`]).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a probe looks whether anything came in.
const PROBE_POLL: Duration = Duration::from_millis(25);

/// Tunnels a new pooled connection takes before the server's SETTINGS are in. Until then its
/// stream limit is unknown (h2 assumes none), and a stream beyond the real limit would be
/// refused or wait in h2's queue instead of going to another connection. One, because every
/// server allows that; tunnels that come meanwhile wait the round trip of the first PING,
/// whose answer follows the SETTINGS.
const UNSETTLED_STREAMS: usize = 1;

/// How long an extra connection to a node (one dialled because the others were at the
/// server's stream limit) may carry no tunnel before it is closed, give or take half of it.
/// The oldest connection stays, kept alive by PING, for the next tunnel.
pub const EXTRA_CONNECTION_IDLE: Duration = Duration::from_secs(60);

/// First wait before re-dialling a node whose connection attempt failed; doubled on every
/// further failure up to [`RECONNECT_BACKOFF_MAX`], reset by a success. Keeps a down node from
/// being hammered by every client request while it restarts.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(250);

/// Longest wait between attempts to re-dial a failing node: short enough that a node that
/// comes back is used again within two seconds (a tunnel asked for meanwhile waits for the
/// attempt), as the `h3` client's; one refused connection every two seconds costs a down
/// node nothing.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A server connection, driven by its listener's task and by the tunnels on it.
pub type ServerConnection = Driver<h2::server::Connection<BoxConn, Bytes>>;

/// The guard of a [`ServerConnection`], for the task that accepts its requests.
pub type ServerClose = CloseOnDrop<h2::server::Connection<BoxConn, Bytes>>;

/// The server side of an HTTP/2 connection's preface and settings on `io`, within
/// [`H2_HANDSHAKE_TIMEOUT`]; `None` (logged at debug) when the client fails or stalls.
pub async fn accept_connection(
    io: BoxConn,
    client: std::net::SocketAddr,
    pace: tcpinfo::Pace,
) -> Option<(Arc<ServerConnection>, ServerClose)> {
    match tokio::time::timeout(
        H2_HANDSHAKE_TIMEOUT,
        server_builder().handshake::<_, Bytes>(io),
    )
    .await
    {
        Ok(Ok(connection)) => Some(Driver::new(connection, pace)),
        Ok(Err(e)) => {
            tracing::debug!(client = %client, error = %e, "HTTP/2 handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(client = %client, "HTTP/2 handshake timed out");
            None
        }
    }
}

/// Server-side settings for every HTTP/2 listener.
pub fn server_builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE);
    builder
}

/// Client-side settings for every HTTP/2 dialer.
pub fn client_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .enable_push(false);
    builder
}

fn h2_io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().expect("is_io")
    } else if e.is_remote() && e.reason() == Some(Reason::CANCEL) {
        // The peer dropped its end of the stream: what a TCP reset is to a socket. GOST's
        // HTTP/2 clients end every tunnel this way.
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    } else {
        io::Error::other(e)
    }
}

/// A connection, shared by the task that drives it and the tunnels on it.
///
/// h2 does a connection's work (reading frames into the streams' queues, writing what the
/// streams queued, WINDOW_UPDATEs) in the task that polls the connection, which a tunnel wakes
/// whenever it queued data or freed window. tokio puts a task woken that way in the waking
/// worker's LIFO slot, which no other worker may take: the connection task runs only once the
/// tunnel's task waits. So a tunnel sending a download queued a whole stream window before any
/// of it went out, its peer handed every frame of it on before its WINDOW_UPDATE went out, and
/// each side stood still while the other worked.
///
/// So a tunnel polls the connection itself right after it queued data or freed window, unless
/// another thread is polling it. It polls with the connection task's waker, so every wake-up
/// h2 registers still goes to that task, which stays the connection's driver of record; what a
/// server connection accepts meanwhile is queued for that task.
pub struct Driver<C: Drivable> {
    state: Mutex<DriverState<C>>,
    // How much a tunnel hands the connection at a time (see [`tcpinfo::Pace`]).
    pace: tcpinfo::Pace,
    // Set by the connection task when it found the state locked by a tunnel, which then wakes
    // it once done.
    contended: AtomicBool,
}

struct DriverState<C: Drivable> {
    // `None` once the connection has ended.
    connection: Option<C>,
    // The waker of the task that drives the connection (only one task ever does).
    waker: Option<std::task::Waker>,
    accepted: std::collections::VecDeque<C::Item>,
    // What the connection ended with, for the connection task.
    ended: Option<h2::Error>,
}

impl<C: Drivable> DriverState<C> {
    /// Polls the connection, keeping what it accepts, until it has nothing more to do or has
    /// ended; whether anything was kept or it ended.
    fn poll_connection(&mut self, cx: &mut Context<'_>) -> bool {
        let mut news = false;
        while let Some(connection) = self.connection.as_mut() {
            match connection.poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(item))) => self.accepted.push_back(item),
                Poll::Ready(end) => {
                    self.connection = None;
                    self.ended = end.and_then(Result::err);
                }
            }
            news = true;
        }
        news
    }
}

/// A client or server HTTP/2 connection as [`Driver`] polls it.
pub trait Drivable: Send {
    /// What the connection yields: accepted requests on a server, nothing on a client.
    type Item: Send;
    /// Does the connection's work; `Ready(None)` when it has ended cleanly.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Self::Item, h2::Error>>>;
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Drivable for h2::client::Connection<T, Bytes> {
    type Item = std::convert::Infallible;

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Self::Item, h2::Error>>> {
        Pin::new(self).poll(cx).map(Result::err).map(|e| e.map(Err))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Drivable for h2::server::Connection<T, Bytes> {
    type Item = (Request<RecvStream>, h2::server::SendResponse<Bytes>);

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Self::Item, h2::Error>>> {
        self.poll_accept(cx)
    }
}

/// What a tunnel needs of its connection's [`Driver`].
pub trait Drive: Send + Sync {
    /// Polls the connection once in the caller's thread, unless another thread is at it.
    fn drive(&self);

    /// The most bytes a tunnel hands the connection in one DATA frame: what its link sends
    /// in a moment ([`tcpinfo::Pace`]), never 0.
    fn chunk(&self) -> usize;
}

impl<C: Drivable> Driver<C> {
    /// The connection's driver, and the guard that its task holds (see
    /// [`CloseOnDrop`]); its tunnels write at most `pace` at a time.
    pub fn new(connection: C, pace: tcpinfo::Pace) -> (Arc<Self>, CloseOnDrop<C>) {
        let driver = Arc::new(Driver {
            pace,
            state: Mutex::new(DriverState {
                connection: Some(connection),
                waker: None,
                accepted: std::collections::VecDeque::new(),
                ended: None,
            }),
            contended: AtomicBool::new(false),
        });
        (driver.clone(), CloseOnDrop(driver))
    }

    /// The state, locked without waiting; `None` when a tunnel holds it. A panic inside h2
    /// while the state was locked ends the connection, as it ended the connection's task when
    /// that task alone polled it.
    fn try_state(&self) -> Option<std::sync::MutexGuard<'_, DriverState<C>>> {
        match self.state.try_lock() {
            Ok(state) => Some(state),
            Err(std::sync::TryLockError::WouldBlock) => None,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                let mut state = poisoned.into_inner();
                self.state.clear_poison();
                state.connection = None;
                if let Some(waker) = &state.waker {
                    waker.wake_by_ref();
                }
                Some(state)
            }
        }
    }

    /// The connection task's poll: the next accepted request, or the connection's end.
    /// Only one task may call it.
    pub fn poll_task(&self, cx: &mut Context<'_>) -> Poll<Option<Result<C::Item, h2::Error>>> {
        let mut state = match self.try_state() {
            Some(state) => state,
            None => {
                // A tunnel is polling the connection, with this task's waker; it wakes this
                // task once done, unless it was done before the flag was up.
                self.contended.store(true, Ordering::SeqCst);
                match self.try_state() {
                    Some(state) => {
                        self.contended.store(false, Ordering::Relaxed);
                        state
                    }
                    None => return Poll::Pending,
                }
            }
        };
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        if state.accepted.is_empty() {
            state.poll_connection(cx);
        }
        match state.accepted.pop_front() {
            Some(item) => Poll::Ready(Some(Ok(item))),
            None if state.connection.is_none() => Poll::Ready(state.ended.take().map(Err)),
            None => Poll::Pending,
        }
    }

    /// Runs `f` on the connection, unless it has ended. For the connection task, whose next
    /// poll sends what `f` queued.
    pub fn with<R>(&self, f: impl FnOnce(&mut C) -> R) -> Option<R> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.connection.as_mut().map(f)
    }
}

/// Ends the connection when dropped (its socket closes, its streams fail), as dropping the
/// connection itself did: the task that drives the connection holds it, so that the
/// connection still ends with that task although its tunnels share it.
pub struct CloseOnDrop<C: Drivable>(Arc<Driver<C>>);

impl<C: Drivable> Drop for CloseOnDrop<C> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        let connection = state.connection.take();
        let accepted = std::mem::take(&mut state.accepted);
        drop(state);
        drop((connection, accepted));
    }
}

impl<C: Drivable> Drive for Driver<C> {
    fn drive(&self) {
        let Some(mut state) = self.try_state() else {
            return;
        };
        let Some(waker) = state.waker.clone() else {
            return;
        };
        let news = state.poll_connection(&mut Context::from_waker(&waker));
        drop(state);
        if news || self.contended.swap(false, Ordering::SeqCst) {
            waker.wake();
        }
    }

    fn chunk(&self) -> usize {
        self.pace.chunk()
    }
}

/// One HTTP/2 stream as a byte stream: the request body one way, the response body the other.
///
/// Reads hand flow-control credit back as the application consumes data, so a slow reader
/// slows its peer instead of growing a buffer. Writes wait for credit and queue no more than
/// they were granted. Shutting down ends the stream (END_STREAM); the peer's END_STREAM reads
/// as EOF; a reset reads as an error (except `NO_ERROR`, which Go peers send to say "done").
pub struct H2Stream {
    send: SendStream<Bytes>,
    // Behind a lock only so that readiness can be polled through `&self`
    // (`Conn::poll_read_ready`); reads reach it without locking.
    read: Mutex<ReadHalf>,
    write_closed: bool,
    // The stream's place on a pooled connection, given back when the stream is dropped.
    _place: Option<StreamPlace>,
    // The connection, to push what this stream queued or freed at once (see [`Driver`]).
    driver: Option<Arc<dyn Drive>>,
}

struct ReadHalf {
    recv: RecvStream,
    pending: Bytes,
    eof: bool,
}

impl ReadHalf {
    /// Waits until there are bytes to hand out or the stream has ended.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() && !self.eof {
            match ready!(self.recv.poll_data(cx)) {
                None => self.eof = true,
                Some(Ok(data)) => self.pending = data,
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => self.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(h2_io_error(e))),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl H2Stream {
    /// Joins the two halves of a stream.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send,
            read: Mutex::new(ReadHalf {
                recv,
                pending: Bytes::new(),
                eof: false,
            }),
            write_closed: false,
            _place: None,
            driver: None,
        }
    }

    fn drive(&self) {
        if let Some(driver) = &self.driver {
            driver.drive();
        }
    }

    /// The stream, polling `driver` (its connection's) whenever it queued data or freed window.
    pub fn driven_by(mut self, driver: Arc<dyn Drive>) -> Self {
        self.driver = Some(driver);
        self
    }

    /// How much of `len` bytes to hand the connection in one frame (see [`Drive::chunk`]).
    fn frame(&self, len: usize) -> usize {
        self.driver
            .as_ref()
            .map_or(len, |driver| len.min(driver.chunk()))
    }

    fn read_half(&mut self) -> &mut ReadHalf {
        self.read.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = self.read_half();
        ready!(read.poll_fill(cx))?;
        let n = read.pending.len().min(buf.remaining());
        buf.put_slice(&read.pending[..n]);
        read.pending.advance(n);
        // Credit goes back only for what the application took, which is the backpressure.
        let _ = read.recv.flow_control().release_capacity(n);
        self.drive();
        Poll::Ready(Ok(()))
    }
}

impl H2Stream {
    /// Waits for flow-control credit for up to `want` bytes; returns how many may be sent.
    fn poll_credit(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "HTTP/2 stream already ended",
            )));
        }
        self.send.reserve_capacity(want);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => return Poll::Ready(Ok(granted.min(want))),
                Some(Err(e)) => return Poll::Ready(Err(h2_io_error(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "HTTP/2 stream closed by the peer",
                    )));
                }
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let want = self.frame(buf.len());
        let n = ready!(self.poll_credit(cx, want))?;
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_io_error)?;
        self.drive();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The write pushed what it handed to h2 as far as the socket took it (see [`Driver`]);
        // the rest goes with the connection task's next poll. Nothing to push here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            // A stream the peer already reset has nothing left to end.
            let _ = self.send.send_data(Bytes::new(), true);
            self.drive();
        }
        Poll::Ready(Ok(()))
    }
}

impl Conn for H2Stream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .poll_fill(cx)
    }

    // Lets the relay hold no buffer for a tunnel that is waiting for data, which is what
    // keeps 1,000 idle tunnels cheap.
    fn has_read_readiness(&self) -> bool {
        true
    }

    // DATA payloads are owned buffers both ways: the relay hands them over instead of copying.
    fn reads_chunks(&self) -> bool {
        true
    }

    fn poll_read_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let read = self.read_half();
        ready!(read.poll_fill(cx))?;
        let chunk = std::mem::take(&mut read.pending);
        // Credit goes back as the relay takes the data over, as for a read.
        let _ = read.recv.flow_control().release_capacity(chunk.len());
        if !chunk.is_empty() {
            self.drive();
        }
        Poll::Ready(Ok((!chunk.is_empty()).then_some(chunk)))
    }

    fn takes_chunks(&self) -> bool {
        true
    }

    fn poll_write_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        if chunk.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let want = self.frame(chunk.len());
        let n = ready!(self.poll_credit(cx, want))?;
        self.send
            .send_data(chunk.split_to(n), false)
            .map_err(h2_io_error)?;
        self.drive();
        Poll::Ready(Ok(()))
    }
}

/// How a client reaches the HTTP/2 server under the connection.
pub enum Transport {
    /// Prior-knowledge cleartext HTTP/2 (`h2c`).
    Plain,
    /// TLS with ALPN `h2` (`h2`, `http2`).
    Tls(ClientTls),
}

/// A client HTTP/2 connection: its request handle and whether it still lives.
#[derive(Clone)]
pub struct Session {
    send: SendRequest<Bytes>,
    // The connection, which tunnels on it poll in their own turn (see [`Driver`]).
    driver: Arc<dyn Drive>,
    // Set by the connection task when the connection ends.
    closed: CancellationToken,
    // Set when a new stream could not be opened (GOAWAY received, ...): no new tunnels go
    // here, while those already on it run to their end.
    retired: Arc<AtomicBool>,
    // Tunnels open or being opened on this connection (see `Lease`), which the pool weighs
    // against the server's stream limit.
    streams: Arc<AtomicUsize>,
    // Set (pooled connections only) once the server's SETTINGS are in, and with them its
    // stream limit.
    settled: CancellationToken,
    // Set when the pool found this connection without tunnels, cleared when it has some (see
    // `close_quiet_extras`).
    quiet: Arc<AtomicBool>,
    // Pooled connections only: the sign-of-life check for requests left unanswered.
    probe: Option<Arc<Probe>>,
    // The node, for messages.
    peer: Arc<str>,
}

/// A pooled connection's check that its peer still answers, asked for by a request left
/// unanswered for [`PROBE_AFTER`] (see [`Session::open`]).
struct Probe {
    // Wakes the keepalive task to PING at once.
    ask: tokio::sync::Notify,
    // Set by the socket whenever anything is received; cleared when a check begins.
    heard: Arc<AtomicBool>,
    // The shortest PING round trip seen, in microseconds.
    rtt_micros: AtomicU64,
    // The kernel's counts of the connection's TCP socket, when it has one of its own: they
    // show a live peer that h2 does not hear (it stops reading while a PING waits for room
    // behind our uploads).
    tcp: TcpWatch,
    // Whether a check is under way (one at a time).
    running: AtomicBool,
    // When the last check began: one a [`PROBE_AFTER`] at most, however many requests wait.
    last_check: Mutex<Option<tokio::time::Instant>>,
    // Cancelled once a check found the connection silent.
    silent: CancellationToken,
}

impl Probe {
    fn note_rtt(&self, rtt: Duration) {
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.rtt_micros.fetch_min(micros, Ordering::Relaxed);
    }

    /// How long a check waits for anything to come in.
    fn patience(&self) -> Duration {
        let rtt = match self.rtt_micros.load(Ordering::Relaxed) {
            u64::MAX => Duration::ZERO,
            micros => Duration::from_micros(micros),
        };
        PROBE_TIMEOUT + rtt.saturating_mul(4)
    }

    /// Whether the kernel received bytes from the peer since `base` was counted (h2 may not
    /// have read them: it stops reading while a PING waits for room to be written); `base`
    /// becomes the counts of now.
    fn tcp_received(&self, base: &mut Option<TcpCounts>) -> bool {
        let now = self.tcp.counts();
        let received =
            matches!((&now, &*base), (Some(now), Some(base)) if now.received_since(base));
        *base = now;
        received
    }
}

/// A tunnel's place on a connection, taken when the pool picks the connection for the tunnel
/// and given back when the tunnel's stream ends or is never opened.
struct StreamPlace(Arc<AtomicUsize>);

impl Drop for StreamPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection picked for one tunnel, with the tunnel's place on it.
pub struct Lease {
    session: Session,
    place: StreamPlace,
    // How to pick another connection when this one turns out unusable (pooled leases).
    again: Option<Again>,
}

/// Picks another connection for a tunnel whose first pick was unusable.
pub type Again =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn Future<Output = io::Result<Lease>> + Send>> + Send>;

impl Lease {
    /// This lease, which `again` replaces once if its connection turns out unusable.
    pub fn with_again(mut self, again: Again) -> Lease {
        self.again = Some(again);
        self
    }

    /// Opens the tunnel's stream as [`Lease::open`], on another connection (once) if this
    /// one turns out unusable (closed under us, GOAWAY, silent), when the lease knows how to
    /// pick one. The request is built by `make` for each attempt.
    pub async fn open_or_again(
        mut self,
        make: impl Fn() -> Request<()>,
        timeout: Option<Duration>,
    ) -> Result<H2Stream, RequestError> {
        let again = self.again.take();
        let retried = AtomicBool::new(false);
        // `timeout` bounds both attempts together, the second connection's dial included (a
        // connection is found unusable at the earliest [`PROBE_AFTER`] plus [`PROBE_TIMEOUT`]
        // in, so a shorter timeout leaves no time for a second attempt).
        let attempts = async {
            match (self.open(make(), None).await, again) {
                (Err((e, true)), Some(again)) => {
                    tracing::debug!(error = %e, "HTTP/2 connection unusable, opening the tunnel on another");
                    retried.store(true, Ordering::Relaxed);
                    let lease = again().await?;
                    lease.open(make(), None).await.map_err(|(e, _)| e)
                }
                (result, _) => result.map_err(|(e, _)| e),
            }
        };
        match timeout {
            Some(limit) => tokio::time::timeout(limit, attempts).await.unwrap_or_else(|_| {
                Err(RequestError::Io(if retried.load(Ordering::Relaxed) {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no HTTP/2 response within {limit:?} (the first connection was found \
                             silent; the second did not answer in the time left)"
                        ),
                    )
                } else {
                    no_response_within(limit)
                }))
            }),
            None => attempts.await,
        }
    }

    /// Opens the tunnel's stream as [`Session::open`]; the stream keeps the place.
    pub async fn open(
        self,
        req: Request<()>,
        timeout: Option<Duration>,
    ) -> Result<H2Stream, (RequestError, bool)> {
        let mut stream = self.session.open(req, timeout).await?;
        stream._place = Some(self.place);
        Ok(stream)
    }
}

/// Why a tunnel request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The connection or stream failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server answered, with a status other than 200.
    #[error("server answered {0}")]
    Status(StatusCode),
}

impl From<RequestError> for io::Error {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Io(e) => e,
            RequestError::Status(status) => io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("HTTP/2 server answered {status}"),
            ),
        }
    }
}

impl Session {
    /// Runs the HTTP/2 handshake over `io` and drives the connection in a task of its own,
    /// with PING keepalive when `keepalive` (pooled connections, which outlive any tunnel).
    /// `tcp` watches the TCP socket that `io` runs over and owns, when it does (see
    /// [`Probe::tcp`]), and `pace` is that socket's (see [`Driver`]).
    pub(crate) async fn handshake(
        io: BoxConn,
        peer: &Address,
        keepalive: bool,
        tcp: TcpWatch,
        pace: tcpinfo::Pace,
    ) -> io::Result<Self> {
        let heard = Arc::new(AtomicBool::new(false));
        let probe = keepalive.then(|| {
            Arc::new(Probe {
                ask: tokio::sync::Notify::new(),
                heard: Arc::new(AtomicBool::new(false)),
                rtt_micros: AtomicU64::new(u64::MAX),
                tcp,
                running: AtomicBool::new(false),
                last_check: Mutex::new(None),
                silent: CancellationToken::new(),
            })
        });
        let probe_heard = probe
            .as_ref()
            .map_or_else(Default::default, |p| p.heard.clone());
        let io = Heard::new(Heard::new(io, heard.clone()), probe_heard);
        let handshake = client_builder().handshake::<_, Bytes>(io);
        let (send, mut connection) = tokio::time::timeout(H2_HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "HTTP/2 handshake with {peer} took longer than {H2_HANDSHAKE_TIMEOUT:?}"
                    ),
                )
            })?
            .map_err(h2_io_error)?;
        let closed = CancellationToken::new();
        let settled = CancellationToken::new();
        let ping = if keepalive {
            connection.ping_pong()
        } else {
            None
        };
        let peer_name: Arc<str> = peer.to_string().into();
        let peer = peer.to_string();
        let done = closed.clone();
        let settle = settled.clone();
        let (driver, closing) = Driver::new(connection, pace);
        let driving = driver.clone();
        let asked = probe.clone();
        tokio::spawn(async move {
            let keepalive = async move {
                let (Some(mut ping), Some(asked)) = (ping, asked) else {
                    return std::future::pending().await;
                };
                // The first PING goes out at once: its answer tells that the server's SETTINGS
                // (its first frame) are in. It counts as the first keepalive PING, so it has
                // the first interval as well to be answered.
                let mut wait = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT;
                loop {
                    let sent = tokio::time::Instant::now();
                    let mut counted = asked.tcp.counts();
                    let mut answer = std::pin::pin!(ping.ping(h2::Ping::opaque()));
                    loop {
                        match tokio::time::timeout(wait, &mut answer).await {
                            Ok(Ok(_)) => {
                                asked.note_rtt(sent.elapsed());
                                break;
                            }
                            Ok(Err(e)) => return format!("PING failed: {e}"),
                            // The answer is queued behind data; the peer is alive.
                            Err(_)
                                if heard.swap(false, Ordering::Relaxed)
                                    | asked.tcp_received(&mut counted) =>
                            {
                                wait = KEEPALIVE_TIMEOUT;
                            }
                            Err(_) => {
                                return format!(
                                    "PING unanswered and nothing received for {wait:?}"
                                );
                            }
                        }
                    }
                    settle.cancel();
                    // The answer itself is no reason to skip the next PING.
                    heard.store(false, Ordering::Relaxed);
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(KEEPALIVE_INTERVAL) => {}
                            // A request waits for an answer: PING now.
                            _ = asked.ask.notified() => break,
                        }
                        if !heard.swap(false, Ordering::Relaxed) {
                            break;
                        }
                    }
                    wait = KEEPALIVE_TIMEOUT;
                }
            };
            tokio::select! {
                result = std::future::poll_fn(|cx| driving.poll_task(cx)) => match result.map_or(Ok(()), |r| r.map(drop)) {
                    Ok(()) => tracing::debug!(peer = %peer, "HTTP/2 connection closed"),
                    Err(e) => tracing::debug!(peer = %peer, error = %e, "HTTP/2 connection ended"),
                },
                reason = keepalive => tracing::warn!(peer = %peer, reason = %reason, "HTTP/2 connection dead, dropping it"),
            }
            drop(closing);
            done.cancel();
        });
        Ok(Session {
            send,
            driver,
            closed,
            retired: Arc::new(AtomicBool::new(false)),
            streams: Arc::new(AtomicUsize::new(0)),
            settled,
            quiet: Arc::new(AtomicBool::new(false)),
            probe,
            peer: peer_name,
        })
    }

    /// Asks whether the peer still sends anything, unless that is being asked already: the
    /// keepalive task PINGs at once, and a task of its own (so that a request given up
    /// meanwhile does not end the check) retires the connection when nothing at all comes in
    /// within [`Probe::patience`].
    fn check_alive(&self, peer: String) {
        let Some(probe) = self.probe.clone() else {
            return;
        };
        {
            let mut last = probe.last_check.lock().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            if last.is_some_and(|at| now < at + PROBE_AFTER)
                || probe.running.swap(true, Ordering::Relaxed)
            {
                return;
            }
            *last = Some(now);
        }
        let (retired, closed) = (self.retired.clone(), self.closed.clone());
        tokio::spawn(async move {
            probe.heard.store(false, Ordering::Relaxed);
            let counted = probe.tcp.counts();
            let mut taken = counted;
            probe.ask.notify_one();
            let patience = probe.patience();
            let started = tokio::time::Instant::now();
            let mut deadline = started + patience;
            loop {
                if probe.heard.load(Ordering::Relaxed) || closed.is_cancelled() {
                    break;
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    // h2 reads nothing while the PING waits for room to be written behind
                    // our uploads; the kernel still sees the peer. Bytes from it: alive.
                    let counts = probe.tcp.counts();
                    if let (Some(counts), Some(counted)) = (counts, counted)
                        && counts.received_since(&counted)
                    {
                        break;
                    }
                    // Its TCP taking our bytes: alive, or a proxy buffering for a vanished
                    // server. Waited for, up to keepalive's patience without a byte from it.
                    if let (Some(counts), Some(taken_before)) = (counts, taken)
                        && counts.takes_our_bytes_since(&taken_before)
                        && now < started + KEEPALIVE_TIMEOUT
                    {
                        taken = Some(counts);
                        deadline = now + patience;
                        tokio::time::sleep(PROBE_POLL).await;
                        continue;
                    }
                    tracing::warn!(
                        peer = %peer, waited = ?patience,
                        "HTTP/2 connection silent (a request and a PING unanswered, nothing received); new tunnels go to a new connection"
                    );
                    retired.store(true, Ordering::Relaxed);
                    probe.silent.cancel();
                    break;
                }
                tokio::time::sleep(PROBE_POLL).await;
            }
            probe.running.store(false, Ordering::Relaxed);
        });
    }

    /// Whether the connection has ended (closed, failed, or found dead by keepalive).
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.retired.load(Ordering::Relaxed)
    }

    /// Takes a place for one tunnel on this connection.
    pub fn lease(&self) -> Lease {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Lease {
            session: self.clone(),
            place: StreamPlace(self.streams.clone()),
            again: None,
        }
    }

    /// Whether one more tunnel fits under the server's stream limit, as far as it is known.
    fn has_room(&self) -> bool {
        let limit = if self.settled.is_cancelled() {
            self.send.current_max_send_streams()
        } else {
            UNSETTLED_STREAMS
        };
        self.streams.load(Ordering::Relaxed) < limit
    }

    /// The answer to a request on this connection, or (`Ok(Err)`) the error of a connection
    /// found silent while the request waited (see [`Session::check_alive`]): nothing of the
    /// request lives on a server that answers nothing, so it may be asked again elsewhere.
    async fn answer(
        &self,
        response: h2::client::ResponseFuture,
    ) -> Result<io::Result<http::Response<RecvStream>>, h2::Error> {
        let Some(probe) = &self.probe else {
            return response.await.map(Ok);
        };
        let mut response = std::pin::pin!(response);
        // Asked again while the answer does not come: a check that found the peer alive (it
        // may have heard bytes sent before the peer vanished) is no answer to this request.
        loop {
            tokio::select! {
                biased;
                answer = &mut response => return answer.map(Ok),
                _ = probe.silent.cancelled() => break,
                _ = tokio::time::sleep(PROBE_AFTER) => self.check_alive(self.peer.to_string()),
            }
        }
        Ok(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "HTTP/2 connection to {} silent: no answer and nothing received within {:?} of a PING",
                self.peer,
                probe.patience()
            ),
        )))
    }

    /// Opens a stream with `req` and waits, within `timeout` if one is given, for a `200`;
    /// the stream is then the tunnel.
    pub async fn open(
        &self,
        req: Request<()>,
        timeout: Option<Duration>,
    ) -> Result<H2Stream, (RequestError, bool)> {
        let exchange = async {
            let mut send = self.send.clone().ready().await.map_err(|e| {
                let fatal = !e.is_reset();
                (RequestError::Io(h2_io_error(e)), fatal)
            })?;
            let (response, stream) = send.send_request(req, false).map_err(|e| {
                let fatal = !e.is_reset();
                (RequestError::Io(h2_io_error(e)), fatal)
            })?;
            let response = self
                .answer(response)
                .await
                .map_err(|e| (RequestError::Io(h2_io_error(e)), false))?
                .map_err(|silent| (RequestError::Io(silent), true))?;
            if response.status() != StatusCode::OK {
                return Err((RequestError::Status(response.status()), false));
            }
            Ok(H2Stream::new(stream, response.into_body()).driven_by(self.driver.clone()))
        };
        let answered = match timeout {
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| limit),
            None => Ok(exchange.await),
        };
        match answered {
            Ok(result) => {
                if let Err((_, true)) = &result {
                    self.retired.store(true, Ordering::Relaxed);
                }
                result
            }
            Err(limit) => Err((RequestError::Io(no_response_within(limit)), false)),
        }
    }
}

fn no_response_within(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no HTTP/2 response within {limit:?}"),
    )
}

#[derive(Default)]
struct Node {
    // Live connections, oldest first. New tunnels go to the oldest one with room, so that
    // the newer ones empty out when the load falls.
    sessions: Vec<Session>,
    redial: Redial,
    // Whether a `close_quiet_extras` task watches the connections.
    reaping: bool,
}

/// The client side's connections: per node address, HTTP/2 connections shared by its tunnels,
/// dialled on first use and whenever all are at the server's stream limit (as Go's client, so
/// GOST's, does), and re-dialled (with backoff) once they end.
pub struct H2Client {
    transport: Transport,
    nodes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Node>>>>,
    extra_idle: Duration,
}

impl H2Client {
    /// A client whose connections use `transport`.
    pub fn new(transport: Transport) -> Arc<Self> {
        Self::with_extra_idle(transport, EXTRA_CONNECTION_IDLE)
    }

    /// [`H2Client::new`], closing extra connections after `extra_idle` without tunnels.
    fn with_extra_idle(transport: Transport, extra_idle: Duration) -> Arc<Self> {
        Arc::new(H2Client {
            transport,
            nodes: Mutex::new(HashMap::new()),
            extra_idle,
        })
    }

    /// A place for one tunnel on a live connection to `addr` with room, dialling one (within
    /// `timeout`) if there is none. Callers that arrive while a dial is under way wait for it
    /// rather than dial their own.
    pub async fn lease(&self, addr: &Address, timeout: Duration) -> io::Result<Lease> {
        let shared = self
            .nodes
            .lock()
            .expect("nodes lock")
            .entry(addr.to_string())
            .or_default()
            .clone();
        // Counted from the call: time queued behind other requests for the node is this
        // request's time too.
        let deadline = tokio::time::Instant::now() + timeout;
        let queued = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "HTTP/2 connection to {addr}: still queued behind other tunnels after {timeout:?}"
                ),
            )
        };
        let mut node = tokio::time::timeout_at(deadline, shared.lock())
            .await
            .map_err(|_| queued())?;
        // The node's attempt count when this request began waiting out a backoff.
        let mut waited_at: Option<u64> = None;
        loop {
            // Each round either ends or waits until one more connection is settled or gone.
            loop {
                node.sessions.retain(|session| !session.is_closed());
                if let Some(session) = node.sessions.iter().find(|session| session.has_room()) {
                    return Ok(session.lease());
                }
                // A connection whose limit is not known yet may have room: wait for it rather
                // than dial a connection that may not be needed.
                let Some(unsettled) = node
                    .sessions
                    .iter()
                    .find(|session| !session.settled.is_cancelled())
                    .cloned()
                else {
                    break;
                };
                tokio::select! {
                    _ = unsettled.settled.cancelled() => {}
                    _ = unsettled.closed.cancelled() => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("HTTP/2 connection to {addr}: no SETTINGS from the server within {timeout:?}"),
                        ));
                    }
                }
            }
            // The next attempt within this request's time: wait for it, without holding the
            // node, rather than fail, so that a node back from a restart is used by the first
            // request after its backoff ([`Redial::wait`]).
            let Some(at) = node.redial.wait(
                waited_at,
                deadline,
                format_args!("HTTP/2 connection to {addr} failed"),
            )?
            else {
                break;
            };
            waited_at = Some(node.redial.attempts);
            drop(node);
            tokio::time::sleep_until(at).await;
            node = tokio::time::timeout_at(deadline, shared.lock())
                .await
                .map_err(|_| queued())?;
        }
        if !node.sessions.is_empty() {
            tracing::debug!(
                peer = %addr, connections = node.sessions.len(),
                "every HTTP/2 connection is at the server's stream limit, dialling another"
            );
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("HTTP/2 connection to {addr}: no time left to dial within {timeout:?}"),
            ));
        }
        // The whole dial (TCP, TLS, HTTP/2 handshake) within what is left of the request's
        // time. The attempt is counted when it ends: one dropped half-way (its request gone)
        // leaves the node as it was, and a request that waited for it makes its own.
        let dialled = tokio::time::timeout(remaining, self.dial(addr, remaining))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("HTTP/2 connection to {addr} not set up within {remaining:?}"),
                ))
            });
        node.redial.ended(&dialled);
        let session = dialled?;
        let lease = session.lease();
        node.sessions.push(session);
        if node.sessions.len() > 1 && !node.reaping {
            node.reaping = true;
            tokio::spawn(close_quiet_extras(
                Arc::downgrade(&shared),
                self.extra_idle / 2,
                addr.to_string(),
            ));
        }
        Ok(lease)
    }

    async fn dial(&self, addr: &Address, timeout: Duration) -> io::Result<Session> {
        let tcp = tcp::connect(addr, timeout).await?;
        // Watched under TLS, where the socket's writes are.
        let (tcp, watch) = tcpinfo::watched(tcp);
        let pace = tcp.pace();
        let session = self
            .establish(Box::new(tcp), addr, true, watch, pace)
            .await?;
        tracing::debug!(peer = %addr, "HTTP/2 connection established");
        Ok(session)
    }

    /// An HTTP/2 connection of its own over `conn` (a tunnel through previous hops).
    pub async fn over(
        &self,
        conn: BoxConn,
        addr: &Address,
        keepalive: bool,
    ) -> io::Result<Session> {
        self.establish(conn, addr, keepalive, TcpWatch::none(), Default::default())
            .await
    }

    /// [`H2Client::over`], with the watch and pace of the TCP socket under `conn`, when it is
    /// one ([`tcpinfo::watched`]).
    async fn establish(
        &self,
        conn: BoxConn,
        addr: &Address,
        keepalive: bool,
        watch: TcpWatch,
        pace: tcpinfo::Pace,
    ) -> io::Result<Session> {
        let io: BoxConn = match &self.transport {
            Transport::Plain => conn,
            Transport::Tls(tls) => {
                let stream = tls.connect(conn, addr).await?;
                if stream.get_ref().1.alpn_protocol() == Some(b"http/1.1") {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{addr} chose HTTP/1.1 in TLS ALPN; this transport needs h2"),
                    ));
                }
                Box::new(crate::tls::Paced::new(stream, pace.clone()))
            }
        };
        Session::handshake(io, addr, keepalive, watch, pace).await
    }

    /// Opens a tunnel stream with the request `make` builds on a pooled connection to `addr`.
    /// A connection that turns out dead (GOAWAY, closed under us) is replaced once.
    pub async fn open(
        &self,
        addr: &Address,
        timeout: Duration,
        make: impl Fn() -> Request<()>,
    ) -> Result<H2Stream, RequestError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let lease = self.lease(addr, timeout).await?;
            match lease.open(make(), Some(timeout)).await {
                Ok(stream) => return Ok(stream),
                Err((e, true)) if tries < 2 => {
                    tracing::debug!(peer = %addr, error = %e, "HTTP/2 connection unusable, re-dialling");
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}

/// Closes a node's extra connections (all but the oldest) once they had no tunnel at two
/// checks `every` apart; ends when the node has one connection left, or is gone. Leases are
/// taken under the node's lock, so a connection without tunnels here gets none meanwhile;
/// dropping its last handle ends it with GOAWAY.
async fn close_quiet_extras(node: Weak<tokio::sync::Mutex<Node>>, every: Duration, peer: String) {
    loop {
        tokio::time::sleep(every).await;
        let Some(node) = node.upgrade() else { return };
        let mut node = node.lock().await;
        node.sessions.retain(|session| !session.is_closed());
        let mut index = 0;
        node.sessions.retain(|session| {
            index += 1;
            if index == 1 {
                return true;
            }
            if session.streams.load(Ordering::Relaxed) > 0 {
                session.quiet.store(false, Ordering::Relaxed);
                return true;
            }
            let quiet_before = session.quiet.swap(true, Ordering::Relaxed);
            if quiet_before {
                tracing::debug!(peer = %peer, "closing an extra HTTP/2 connection without tunnels");
            }
            !quiet_before
        });
        if node.sessions.len() <= 1 {
            node.reaping = false;
            return;
        }
    }
}

/// Connections (with a tunnel's place) handed from the `http2` dialer to the `http2`
/// connector, by stand-in id.
static HANDOFF: LazyLock<Mutex<HashMap<u64, Lease>>> = LazyLock::new(Default::default);
static NEXT_HANDOFF: AtomicU64 = AtomicU64::new(1);

/// Parks `lease` for the connector and returns the stand-in stream that names it.
pub fn hand_off(lease: Lease) -> BoxConn {
    let id = NEXT_HANDOFF.fetch_add(1, Ordering::Relaxed);
    HANDOFF.lock().expect("handoff lock").insert(id, lease);
    let mut token = HANDOFF_MAGIC.to_vec();
    token.extend_from_slice(&id.to_be_bytes());
    Box::new(SessionHandle {
        id,
        token: Bytes::from(token),
    })
}

/// The connection behind a stand-in stream from [`hand_off`].
pub async fn take_handed_off(conn: &mut BoxConn) -> io::Result<Lease> {
    let not_ours = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the http2 connector works only with the http2 dialer",
        )
    };
    let mut token = [0u8; HANDOFF_MAGIC.len() + 8];
    conn.read_exact(&mut token).await.map_err(|_| not_ours())?;
    if token[..HANDOFF_MAGIC.len()] != *HANDOFF_MAGIC {
        return Err(not_ours());
    }
    let id = u64::from_be_bytes(token[HANDOFF_MAGIC.len()..].try_into().expect("8 bytes"));
    HANDOFF
        .lock()
        .expect("handoff lock")
        .remove(&id)
        .ok_or_else(not_ours)
}

/// A node's record of its dials, for the reconnect backoff shared by the HTTP/2 pool and the
/// gRPC client.
#[derive(Default)]
pub(crate) struct Redial {
    /// Failed dials in a row.
    failures: u32,
    /// No dial before this, after a failure.
    retry_at: Option<Instant>,
    /// Dials that ended, successful or not: a request that waited out a backoff tells by it
    /// whether another made the attempt meanwhile. A dial dropped half-way (its request gone)
    /// is not counted, so a request that waited for it makes its own.
    pub(crate) attempts: u64,
    /// What the last failed dial ended with, for the requests that fail on it.
    last_error: String,
}

impl Redial {
    /// Whether a request may dial now (`Ok(None)`), should sleep until the returned instant
    /// and ask again (it then passes the [`Redial::attempts`] it saw as `waited_at`), or fails
    /// at once: when the next attempt comes after its `deadline`, or when it waited for an
    /// attempt that another request made and that failed. Requests that waited together so
    /// share one attempt, its connection or its failure, and a down node sees one dial per
    /// backoff period. `failed` starts the error message.
    pub(crate) fn wait(
        &self,
        waited_at: Option<u64>,
        deadline: tokio::time::Instant,
        failed: std::fmt::Arguments<'_>,
    ) -> io::Result<Option<tokio::time::Instant>> {
        let Some(at) = self.retry_at.map(tokio::time::Instant::from_std) else {
            return Ok(None);
        };
        let now = tokio::time::Instant::now();
        let shared_failure = waited_at.is_some_and(|seen| seen != self.attempts);
        if shared_failure || at > deadline {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "{failed} {} time(s) in a row ({}); next attempt in {:?}",
                    self.failures,
                    self.last_error,
                    at.saturating_duration_since(now)
                ),
            ));
        }
        Ok((at > now).then_some(at))
    }

    /// Records a dial that ended with `result`.
    pub(crate) fn ended<T>(&mut self, result: &io::Result<T>) {
        self.attempts += 1;
        match result {
            Ok(_) => {
                self.failures = 0;
                self.retry_at = None;
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.retry_at = Some(Instant::now() + backoff(self.failures));
                self.last_error = e.to_string();
            }
        }
    }
}

/// How long to wait before re-dialling a node after `failures` failed dials in a row.
pub(crate) fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    RECONNECT_BACKOFF_MIN
        .saturating_mul(factor)
        .min(RECONNECT_BACKOFF_MAX)
}

/// Marks the stand-in stream of the `http2` dialer, so that a connector that is not the
/// `http2` one fails with a clear error instead of talking to nothing.
const HANDOFF_MAGIC: &[u8] = b"gost-rs http2 session\0";

/// What the `http2` dialer hands its connector: not a byte stream but a reference to the
/// HTTP/2 connection on which the connector will open the tunnel. Reading it yields the
/// reference; writing to it is an error.
struct SessionHandle {
    id: u64,
    token: Bytes,
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        if let Ok(mut handoff) = HANDOFF.lock() {
            handoff.remove(&self.id);
        }
    }
}

impl AsyncRead for SessionHandle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.token.len().min(buf.remaining());
        buf.put_slice(&self.token[..n]);
        self.token.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SessionHandle {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the http2 dialer yields an HTTP/2 connection, usable only by the http2 connector",
        )))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Conn for SessionHandle {}

/// What a server sent first on a connection where we spoke HTTP/2 with prior knowledge (or
/// after TLS): an HTTP/2 server's first frame is its SETTINGS (RFC 9113, 3.4), so anything
/// else means the listener there is of another kind. Read by [`FirstBytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerPreface {
    /// A SETTINGS frame: HTTP/2.
    Http2,
    /// An HTTP/1.x answer; its status line.
    Http1(String),
    /// A TLS record (an alert, most likely): a listener that wants TLS.
    Tls,
    /// The connection closed (or was reset) before the server sent anything.
    Closed,
    /// Other bytes (the first few, in hex).
    Other(String),
}

impl ServerPreface {
    /// Bytes seen this far; `ended` when no more will come. `None`: too few to tell yet.
    fn of(seen: &[u8], ended: bool) -> Option<Self> {
        const FRAME_HEAD: usize = 9;
        if seen.is_empty() {
            return ended.then_some(ServerPreface::Closed);
        }
        if seen.starts_with(b"HTTP/") {
            // Its status line, once whole (or all there is).
            let line = match seen.iter().position(|&b| b == b'\r' || b == b'\n') {
                Some(end) => &seen[..end],
                None if ended => seen,
                None => return None,
            };
            return Some(ServerPreface::Http1(
                String::from_utf8_lossy(line).trim().to_string(),
            ));
        }
        if !ended && b"HTTP/".starts_with(seen) {
            return None;
        }
        if seen.len() >= 2 && (0x14..=0x17).contains(&seen[0]) && seen[1] == 0x03 {
            return Some(ServerPreface::Tls);
        }
        if seen.len() < FRAME_HEAD && !ended {
            return None;
        }
        if seen.len() >= FRAME_HEAD && seen[3] == 0x04 && seen[5..FRAME_HEAD] == [0, 0, 0, 0] {
            return Some(ServerPreface::Http2);
        }
        let hex: Vec<String> = seen.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Some(ServerPreface::Other(hex.join(" ")))
    }

    /// Why a gRPC (HTTP/2) client cannot go on, for an error message; `None` for HTTP/2.
    pub fn explain(&self) -> Option<String> {
        let not = "the server did not answer in gRPC (HTTP/2)";
        Some(match self {
            ServerPreface::Http2 => return None,
            ServerPreface::Http1(line) => {
                format!(
                    "{not} but in HTTP/1.x ({line:?}): a listener of another type (http, ws, ...)?"
                )
            }
            ServerPreface::Tls => format!(
                "{not} but in TLS: a listener with TLS, which this end does not speak (grpcInsecure=true here)?"
            ),
            ServerPreface::Closed => format!(
                "{not}: it closed the connection before sending HTTP/2 SETTINGS (a listener of another type?)"
            ),
            ServerPreface::Other(hex) => format!(
                "{not}: its first bytes ({hex}) are not HTTP/2 SETTINGS (a listener of another type?)"
            ),
        })
    }
}

/// Most bytes [`FirstBytes`] keeps to tell what the server speaks (an HTTP/1.x status line).
const FIRST_BYTES_KEPT: usize = 64;

/// A client connection that notes what the server sends first ([`ServerPreface`]), reported
/// once through the channel [`FirstBytes::new`] returns. Adds nothing after that.
pub struct FirstBytes<T> {
    inner: T,
    seen: Vec<u8>,
    report: Option<tokio::sync::oneshot::Sender<ServerPreface>>,
}

impl<T> FirstBytes<T> {
    /// `inner`, and where its server's first bytes are reported. The receiver errs if the
    /// connection is dropped before the server sent enough to tell.
    pub fn new(inner: T) -> (Self, tokio::sync::oneshot::Receiver<ServerPreface>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sniffer = FirstBytes {
            inner,
            seen: Vec::new(),
            report: Some(tx),
        };
        (sniffer, rx)
    }

    fn note(&mut self, read: &[u8], ended: bool) {
        if self.report.is_none() {
            return;
        }
        let room = FIRST_BYTES_KEPT.saturating_sub(self.seen.len());
        self.seen.extend_from_slice(&read[..read.len().min(room)]);
        let ended = ended || self.seen.len() >= FIRST_BYTES_KEPT;
        if let Some(preface) = ServerPreface::of(&self.seen, ended) {
            if let Some(report) = self.report.take() {
                let _ = report.send(preface);
            }
            self.seen = Vec::new();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstBytes<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        if self.report.is_some() {
            match &result {
                Ok(()) => {
                    let read = buf.filled()[before..].to_vec();
                    let ended = read.is_empty() && buf.remaining() > 0;
                    self.note(&read, ended);
                }
                Err(_) => self.note(&[], true),
            }
        }
        Poll::Ready(result)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstBytes<T> {
    crate::conn::write_through!(inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_servers_first_bytes_tell_what_it_speaks() {
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert_eq!(
            ServerPreface::of(&settings, false),
            Some(ServerPreface::Http2)
        );
        assert_eq!(ServerPreface::of(&settings[..5], false), None);
        assert_eq!(ServerPreface::of(b"", false), None);
        assert_eq!(ServerPreface::of(b"", true), Some(ServerPreface::Closed));
        assert_eq!(ServerPreface::of(b"HTT", false), None);
        assert_eq!(ServerPreface::of(b"HTTP/1.1 400 Bad", false), None);
        let http1 = Some(ServerPreface::Http1("HTTP/1.1 400 Bad Request".into()));
        assert_eq!(
            ServerPreface::of(b"HTTP/1.1 400 Bad Request\r\nx", false),
            http1
        );
        assert_eq!(ServerPreface::of(b"HTTP/1.1 400 Bad Request", true), http1);
        assert_eq!(
            ServerPreface::of(&[0x15, 0x03, 0x03, 0, 2], false),
            Some(ServerPreface::Tls)
        );
        assert_eq!(
            ServerPreface::of(&[5, 0xff], true),
            Some(ServerPreface::Other("05 ff".into()))
        );
        assert!(ServerPreface::Http2.explain().is_none());
        let explained = ServerPreface::Http1("HTTP/1.1 400 Bad Request".into()).explain();
        assert!(explained.unwrap().contains("HTTP/1.x"));
    }

    #[tokio::test]
    async fn first_bytes_are_reported_once_and_passed_on() {
        use tokio::io::AsyncWriteExt as _;
        let (client, mut server) = tokio::io::duplex(1024);
        let (mut sniffed, report) = FirstBytes::new(client);
        server
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        let mut got = [0u8; 28];
        sniffed.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert_eq!(
            report.await.unwrap(),
            ServerPreface::Http1("HTTP/1.1 400 Bad Request".into())
        );
        let (client, server) = tokio::io::duplex(1024);
        let (mut sniffed, report) = FirstBytes::new(client);
        drop(server);
        assert_eq!(sniffed.read(&mut [0u8; 8]).await.unwrap(), 0);
        assert_eq!(report.await.unwrap(), ServerPreface::Closed);
    }

    /// Bytes written to an in-memory connection, counted.
    struct Counted {
        io: tokio::io::DuplexStream,
        written: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
            self.written.fetch_add(n, Ordering::Relaxed);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    impl Conn for Counted {}

    /// A client connection over an in-memory one (no socket of its own).
    async fn over_duplex(io: impl Conn, peer: &Address, keepalive: bool) -> Session {
        Session::handshake(
            Box::new(io),
            peer,
            keepalive,
            TcpWatch::none(),
            Default::default(),
        )
        .await
        .unwrap()
    }

    /// A client stream and the server stream it opened, over an in-memory connection, with
    /// the bytes each side wrote to the connection (client, server).
    async fn counted_pair() -> (H2Stream, H2Stream, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        counted_pair_paced(tcpinfo::Pace::unbounded()).await
    }

    /// [`counted_pair`], the server's connection at `server_pace`.
    async fn counted_pair_paced(
        server_pace: tcpinfo::Pace,
    ) -> (H2Stream, H2Stream, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (a, b) = tokio::io::duplex(1024 * 1024);
        let (client_wrote, server_wrote) = Default::default();
        let a = Counted {
            io: a,
            written: Arc::clone(&client_wrote),
        };
        let b = Counted {
            io: b,
            written: Arc::clone(&server_wrote),
        };
        // One task accepts and drives the server connection, as a listener's does.
        let (stream_tx, server) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let client: std::net::SocketAddr = "127.0.0.1:2".parse().unwrap();
            let (connection, _closing) = accept_connection(Box::new(b), client, server_pace)
                .await
                .unwrap();
            let mut stream_tx = Some(stream_tx);
            while let Some(Ok((req, mut respond))) =
                std::future::poll_fn(|cx| connection.poll_task(cx)).await
            {
                let send = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                let stream = H2Stream::new(send, req.into_body()).driven_by(connection.clone());
                if let Some(tx) = stream_tx.take() {
                    let _ = tx.send(stream);
                }
            }
        });
        let peer = Address::parse("127.0.0.1:1").unwrap();
        let session = over_duplex(a, &peer, false).await;
        let req = Request::builder()
            .method(http::Method::CONNECT)
            .uri("127.0.0.1:1")
            .body(())
            .unwrap();
        let (client, server) =
            tokio::join!(session.open(req, Some(Duration::from_secs(5))), server);
        let client = client.map_err(|(e, _)| e).unwrap();
        (client, server.unwrap(), client_wrote, server_wrote)
    }

    /// A client stream and the server stream it opened, over an in-memory connection.
    async fn pair() -> (H2Stream, H2Stream) {
        let (client, server, _, _) = counted_pair().await;
        (client, server)
    }

    /// The sizes of the DATA frames in which `len` bytes written by the server stream of a
    /// connection at `pace` reach the client.
    async fn frames_of(pace: tcpinfo::Pace, len: usize, chunks: bool) -> Vec<usize> {
        let (mut client, mut server, _, _) = counted_pair_paced(pace).await;
        let writing = tokio::spawn(async move {
            if chunks {
                let mut data = Bytes::from(vec![3u8; len]);
                while !data.is_empty() {
                    std::future::poll_fn(|cx| {
                        Pin::new(&mut server).poll_write_chunk(cx, &mut data)
                    })
                    .await
                    .unwrap();
                }
            } else {
                server.write_all(&vec![3u8; len]).await.unwrap();
            }
            server.shutdown().await.unwrap();
            server
        });
        let mut frames = Vec::new();
        // A DATA frame reads as one chunk.
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut client).poll_read_chunk(cx))
            .await
            .unwrap()
        {
            frames.push(frame.len());
        }
        drop(writing.await.unwrap());
        assert_eq!(frames.iter().sum::<usize>(), len);
        frames
    }

    // On a slow link a stream writes frames no bigger than its connection's pace, so that the
    // other streams' frames, sent in turn with its own, wait behind that much, not 64 KiB.
    #[tokio::test]
    async fn a_stream_writes_frames_no_bigger_than_its_connections_pace() {
        let len = 512 * 1024;
        for chunks in [false, true] {
            let paced = frames_of(tcpinfo::Pace::fixed(16 * 1024), len, chunks).await;
            assert!(
                paced.iter().all(|&frame| frame <= 16 * 1024),
                "chunks: {chunks}, frames {paced:?}"
            );
            // Unbounded (a fast link's), frames go up to the size the peer takes.
            let free = frames_of(tcpinfo::Pace::unbounded(), len, chunks).await;
            assert!(
                free.iter().any(|&frame| frame > 16 * 1024),
                "chunks: {chunks}, frames {free:?}"
            );
            assert!(free.iter().all(|&frame| frame <= MAX_FRAME_SIZE as usize));
        }
    }

    // tokio runs a connection's task only once the task that woke it waits, on this
    // single-threaded runtime as in a worker's LIFO slot. A tunnel's data and the window it
    // frees must not wait for that: each goes out from the tunnel's own poll.
    #[tokio::test]
    async fn a_write_goes_out_before_the_tunnel_waits() {
        for chunks in [false, true] {
            let (mut client, _server, client_wrote, _) = counted_pair().await;
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let before = client_wrote.load(Ordering::Relaxed);
            let len = 16 * 1024;
            let written = if chunks {
                let mut chunk = Bytes::from(vec![5u8; len]);
                let polled = Pin::new(&mut client).poll_write_chunk(&mut cx, &mut chunk);
                matches!(polled, Poll::Ready(Ok(()))) && chunk.is_empty()
            } else {
                let polled = Pin::new(&mut client).poll_write(&mut cx, &vec![5u8; len]);
                matches!(polled, Poll::Ready(Ok(n)) if n == len)
            };
            assert!(
                written,
                "a fresh stream has window for 16 KiB (chunks: {chunks})"
            );
            let wrote = client_wrote.load(Ordering::Relaxed) - before;
            assert!(
                wrote > len,
                "{wrote} bytes on the wire after a {len}-byte write (chunks: {chunks})"
            );
            // So does the stream's end: an empty DATA frame with END_STREAM, 9 bytes.
            let before = client_wrote.load(Ordering::Relaxed);
            let polled = Pin::new(&mut client).poll_shutdown(&mut cx);
            assert!(matches!(polled, Poll::Ready(Ok(()))));
            let wrote = client_wrote.load(Ordering::Relaxed) - before;
            assert!(wrote >= 9, "{wrote} bytes on the wire after the shutdown");
        }
    }

    #[tokio::test]
    async fn freed_window_goes_out_before_the_tunnel_waits() {
        for chunks in [false, true] {
            let (mut client, mut server, _, server_wrote) = counted_pair().await;
            // More than half the stream window, after which h2 hands window back.
            let sent = STREAM_WINDOW as usize / 2 + 16 * 1024;
            client.write_all(&vec![9u8; sent]).await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut taken = 0;
            // What the server wrote while the test's task was reading, never waiting.
            let mut wrote = 0;
            let mut cx = Context::from_waker(std::task::Waker::noop());
            for _ in 0..100 {
                // Frames reach the server's stream when its connection task runs.
                tokio::time::sleep(Duration::from_millis(10)).await;
                let before = server_wrote.load(Ordering::Relaxed);
                loop {
                    let got = if chunks {
                        match Pin::new(&mut server).poll_read_chunk(&mut cx) {
                            Poll::Ready(Ok(Some(chunk))) => chunk.len(),
                            _ => break,
                        }
                    } else {
                        let mut read = ReadBuf::new(&mut buf);
                        match Pin::new(&mut server).poll_read(&mut cx, &mut read) {
                            Poll::Ready(Ok(())) if !read.filled().is_empty() => read.filled().len(),
                            _ => break,
                        }
                    };
                    taken += got;
                }
                wrote += server_wrote.load(Ordering::Relaxed) - before;
                if taken >= sent {
                    break;
                }
            }
            assert_eq!(taken, sent, "chunks: {chunks}");
            // A WINDOW_UPDATE frame is 13 bytes.
            assert!(
                wrote >= 13,
                "{wrote} bytes on the wire while taking {taken} (chunks: {chunks})"
            );
        }
    }

    #[tokio::test]
    async fn writes_wait_for_the_reader_instead_of_buffering() {
        let (mut client, mut server) = pair().await;
        let chunk = vec![7u8; 16 * 1024];
        let mut written = 0usize;
        // Nobody reads: writes must stall once the stream window is used up.
        while let Ok(result) =
            tokio::time::timeout(Duration::from_millis(200), client.write(&chunk)).await
        {
            written += result.unwrap();
            assert!(
                written <= 4 * STREAM_WINDOW as usize,
                "{written} bytes buffered"
            );
        }
        assert!(
            written >= STREAM_WINDOW as usize / 2,
            "stalled after {written}"
        );
        // Once the reader takes the bytes, the writer goes on, and END_STREAM reads as EOF.
        let total = written + 1024 * 1024;
        let writer = tokio::spawn(async move {
            let mut left = total - written;
            while left > 0 {
                let n = client.write(&chunk[..chunk.len().min(left)]).await.unwrap();
                left -= n;
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert_eq!(received.len(), total);
        assert!(received.iter().all(|&b| b == 7));
        let mut client = writer.await.unwrap();
        // The other direction still works after one side ended.
        server.write_all(b"back").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"back");
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_finds_a_silent_peer_dead() {
        // The peer's end stays open but nobody answers: only PING can tell.
        let (a, _silent) = tokio::io::duplex(1024 * 1024);
        let peer = Address::parse("127.0.0.1:1").unwrap();
        let session = over_duplex(a, &peer, true).await;
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        assert!(!session.is_closed(), "dead before the PING went unanswered");
        tokio::time::sleep(KEEPALIVE_TIMEOUT + Duration::from_secs(1)).await;
        assert!(
            session.is_closed(),
            "an unanswered PING must end the connection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_spares_a_peer_that_keeps_sending() {
        // The peer never answers the PING (as if it sat behind megabytes of our DATA on a slow
        // uplink) but keeps granting flow-control credit, which proves it alive.
        const PEER_FRAME_EVERY: Duration = Duration::from_secs(10);
        const PEER_SENDS_FOR: Duration = Duration::from_secs(200);
        let (a, mut peer_end) = tokio::io::duplex(1024 * 1024);
        let peer = Address::parse("127.0.0.1:1").unwrap();
        let session = over_duplex(a, &peer, true).await;
        // An empty SETTINGS (the server's preface), then a connection WINDOW_UPDATE of 1 at
        // every beat.
        const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
        const WINDOW_UPDATE: [u8; 13] = [0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        peer_end.write_all(&SETTINGS).await.unwrap();
        let beats = PEER_SENDS_FOR.as_secs() / PEER_FRAME_EVERY.as_secs();
        for _ in 0..beats {
            tokio::time::sleep(PEER_FRAME_EVERY).await;
            assert!(
                !session.is_closed(),
                "a peer that keeps sending was dropped"
            );
            peer_end.write_all(&WINDOW_UPDATE).await.unwrap();
        }
        // Once the peer falls silent, the outstanding PING's wait runs out.
        tokio::time::sleep(KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + Duration::from_secs(1)).await;
        assert!(session.is_closed(), "a silent peer must be dropped");
    }

    #[tokio::test]
    async fn a_reset_reads_as_an_error() {
        let (mut client, server) = pair().await;
        let H2Stream { mut send, .. } = server;
        send.send_reset(Reason::INTERNAL_ERROR);
        let mut buf = [0u8; 8];
        assert!(client.read(&mut buf).await.is_err());
    }

    /// An h2c server on 127.0.0.1 that answers every request with `200` and echoes its body,
    /// allowing `max_streams` streams per connection; also returns how many connections it
    /// accepted.
    async fn echo_server(max_streams: u32) -> (Address, Arc<AtomicUsize>) {
        let (addr, accepted, _) = counted_echo_server(max_streams, Duration::ZERO).await;
        (addr, accepted)
    }

    /// An HTTP/2 echo server allowing `max_streams` per connection and answering each request
    /// after `delay`; counts the connections it accepted and those that ended.
    async fn counted_echo_server(
        max_streams: u32,
        delay: Duration,
    ) -> (Address, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Address::parse(&listener.local_addr().unwrap().to_string()).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (counter, ends) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                let ends = ends.clone();
                tokio::spawn(async move {
                    let _ended = CountOnDrop(ends);
                    let mut builder = server_builder();
                    builder.max_concurrent_streams(max_streams);
                    let Ok(mut conn) = builder.handshake::<_, Bytes>(tcp).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let Ok(send) = respond.send_response(http::Response::new(()), false)
                            else {
                                return;
                            };
                            let mut stream = H2Stream::new(send, req.into_body());
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = stream.read(&mut buf).await
                                && n > 0
                                && stream.write_all(&buf[..n]).await.is_ok()
                            {
                            }
                            let _ = stream.shutdown().await;
                        });
                    }
                });
            }
        });
        (addr, accepted, ended)
    }

    /// Counts one up when dropped.
    struct CountOnDrop(Arc<AtomicUsize>);

    impl Drop for CountOnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Opens `count` CONNECT tunnels to `addr` through `client` at once, each within 2 s.
    async fn open_tunnels(client: &Arc<H2Client>, addr: &Address, count: usize) -> Vec<H2Stream> {
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..count {
            let (client, addr) = (client.clone(), addr.clone());
            opening.spawn(async move {
                let connect = || {
                    Request::builder()
                        .method(http::Method::CONNECT)
                        .uri(addr.to_string())
                        .body(())
                        .unwrap()
                };
                client.open(&addr, Duration::from_secs(2), connect).await
            });
        }
        let mut tunnels = Vec::new();
        while let Some(opened) = opening.join_next().await {
            tunnels.push(opened.unwrap().expect("every tunnel opens"));
        }
        tunnels
    }

    /// One echo exchange on each of `tunnels`, all of them open at the same time.
    async fn echo_on_each(tunnels: &mut [H2Stream]) {
        for (i, tunnel) in tunnels.iter_mut().enumerate() {
            let message = format!("tunnel {i}");
            tunnel.write_all(message.as_bytes()).await.unwrap();
            let mut echoed = vec![0u8; message.len()];
            tokio::time::timeout(Duration::from_secs(2), tunnel.read_exact(&mut echoed))
                .await
                .expect("echo in time")
                .unwrap();
            assert_eq!(echoed, message.as_bytes());
        }
    }

    /// A TCP forwarder on 127.0.0.1 to `to`. [`Forwarder::silence`] makes the connections it
    /// carries so far drop everything, both ways, without closing: what a lost node or a
    /// partition looks like. Connections accepted later are carried.
    struct Forwarder {
        addr: Address,
        generation: Arc<AtomicU64>,
    }

    impl Forwarder {
        async fn to(to: Address) -> Forwarder {
            Self::limited(to, None).await
        }

        /// A forwarder that reads from clients no faster than `uplink` bytes a second (when
        /// given): a slow uplink, whose backlog waits in the client's socket.
        async fn limited(to: Address, uplink: Option<u64>) -> Forwarder {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = Address::parse(&listener.local_addr().unwrap().to_string()).unwrap();
            let generation = Arc::new(AtomicU64::new(0));
            let current = generation.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(to.to_string()).await else {
                        continue;
                    };
                    let born = current.load(Ordering::Relaxed);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(Self::carry(cr, sw, born, current.clone(), uplink));
                    tokio::spawn(Self::carry(sr, cw, born, current.clone(), None));
                }
            });
            Forwarder { addr, generation }
        }

        /// Copies `from` to `to` while the connection's generation (`born`) is current, then
        /// reads and drops.
        async fn carry(
            mut from: tokio::net::tcp::OwnedReadHalf,
            mut to: tokio::net::tcp::OwnedWriteHalf,
            born: u64,
            current: Arc<AtomicU64>,
            rate: Option<u64>,
        ) {
            let mut buf = vec![0u8; if rate.is_some() { 8 * 1024 } else { 64 * 1024 }];
            let started = tokio::time::Instant::now();
            let mut carried = 0u64;
            while let Ok(n) = from.read(&mut buf).await
                && n > 0
            {
                if let Some(rate) = rate {
                    carried += n as u64;
                    let due = Duration::from_secs_f64(carried as f64 / rate as f64);
                    tokio::time::sleep_until(started + due).await;
                }
                if current.load(Ordering::Relaxed) == born
                    && tokio::io::AsyncWriteExt::write_all(&mut to, &buf[..n])
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }

        fn silence(&self) {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn connect_to(addr: &Address) -> impl Fn() -> Request<()> + '_ {
        move || {
            Request::builder()
                .method(http::Method::CONNECT)
                .uri(addr.to_string())
                .body(())
                .unwrap()
        }
    }

    #[tokio::test]
    async fn a_new_tunnel_leaves_a_silent_connection() {
        // Well below keepalive's 45 s, well above a check's 3 s.
        const TUNNEL_TIMEOUT: Duration = Duration::from_secs(8);
        let (server, accepted, _) = counted_echo_server(100, Duration::ZERO).await;
        let path = Forwarder::to(server).await;
        let client = H2Client::new(Transport::Plain);
        let mut first = client
            .open(&path.addr, TUNNEL_TIMEOUT, connect_to(&path.addr))
            .await
            .unwrap();
        echo_on_each(std::slice::from_mut(&mut first)).await;
        path.silence();
        // Before: the tunnel went to the silent connection and timed out.
        let mut second = client
            .open(&path.addr, TUNNEL_TIMEOUT, connect_to(&path.addr))
            .await
            .expect("a new tunnel goes to a new connection");
        echo_on_each(std::slice::from_mut(&mut second)).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        // The silent connection takes no more tunnels, and the new one is used at once.
        let mut third = tokio::time::timeout(
            PROBE_AFTER,
            client.open(&path.addr, TUNNEL_TIMEOUT, connect_to(&path.addr)),
        )
        .await
        .expect("no wait on the silent connection")
        .unwrap();
        echo_on_each(std::slice::from_mut(&mut third)).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_slow_answer_on_a_live_connection_keeps_it() {
        // A server that takes longer than a whole check to answer (its target is slow) but
        // answers the PING: the connection stays.
        let slow = PROBE_AFTER + PROBE_TIMEOUT + Duration::from_millis(500);
        let (server, accepted, _) = counted_echo_server(100, slow).await;
        let client = H2Client::new(Transport::Plain);
        let mut tunnels = Vec::new();
        for _ in 0..2 {
            let mut tunnel = client
                .open(&server, Duration::from_secs(10), connect_to(&server))
                .await
                .expect("a slow answer is waited for");
            echo_on_each(std::slice::from_mut(&mut tunnel)).await;
            tunnels.push(tunnel);
        }
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "a live connection was left"
        );
    }

    /// An HTTP/2 server that answers every request at once and drops what it receives;
    /// counts the connections it accepted.
    async fn sink_server() -> (Address, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Address::parse(&listener.local_addr().unwrap().to_string()).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let Ok(mut conn) = server_builder().handshake::<_, Bytes>(tcp).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            let Ok(send) = respond.send_response(http::Response::new(()), false)
                            else {
                                return;
                            };
                            let mut stream = H2Stream::new(send, req.into_body());
                            let mut buf = vec![0u8; 64 * 1024];
                            while let Ok(n) = stream.read(&mut buf).await
                                && n > 0
                            {}
                        });
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_connection_busy_with_uploads_on_a_slow_uplink_is_kept() {
        // An upload fills the client's socket (up to a stream window); the uplink drains it
        // at 48 KB/s, so a new tunnel's request and the check's PING wait seconds behind it.
        // The server's WINDOW_UPDATEs come more than a check apart, and h2 reads nothing
        // while the PING waits for room. The kernel sees the server take the bytes: the
        // connection is alive and stays. (Before, it was found silent and a second one was
        // dialled.)
        const UPLINK: u64 = 48 * 1024;
        let (server, accepted) = sink_server().await;
        let path = Forwarder::limited(server, Some(UPLINK)).await;
        let client = H2Client::new(Transport::Plain);
        let mut upload = client
            .open(&path.addr, Duration::from_secs(5), connect_to(&path.addr))
            .await
            .unwrap();
        // More than a stream window, written as fast as the socket and the window take it;
        // ends with the test.
        let _uploading = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..8 {
                if upload.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let opened = client
            .open(&path.addr, Duration::from_secs(15), connect_to(&path.addr))
            .await;
        assert!(opened.is_ok(), "{:?}", opened.err());
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "the busy connection was taken for silent"
        );
    }

    #[tokio::test]
    async fn a_server_vanished_behind_a_proxy_during_uploads_is_found_silent() {
        // The proxy goes on taking our uploads (its TCP acknowledges) but the server behind
        // it is gone: that is waited for up to keepalive's patience, no longer. (It was
        // waited for as long as the proxy took bytes: here four streams' windows, 1 MiB at
        // 32 KB/s, half a minute.)
        const UPLINK: u64 = 32 * 1024;
        let (server, accepted) = sink_server().await;
        let path = Forwarder::limited(server, Some(UPLINK)).await;
        let client = H2Client::new(Transport::Plain);
        let mut uploads = Vec::new();
        for _ in 0..4 {
            uploads.push(
                client
                    .open(&path.addr, Duration::from_secs(5), connect_to(&path.addr))
                    .await
                    .unwrap(),
            );
        }
        let _uploading: Vec<_> = uploads
            .into_iter()
            .map(|mut upload| {
                tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                    let chunk = vec![7u8; 64 * 1024];
                    // Until the test ends (bounded by it).
                    while upload.write_all(&chunk).await.is_ok() {}
                }))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        path.silence();
        let bound = PROBE_AFTER + KEEPALIVE_TIMEOUT + PROBE_TIMEOUT + Duration::from_secs(5);
        let opened = client.open(&path.addr, bound, connect_to(&path.addr)).await;
        assert!(opened.is_ok(), "{:?}", opened.err());
        assert_eq!(accepted.load(Ordering::Relaxed), 2, "a new connection");
    }

    // Go's HTTP/2 server (GOST's) allows 250 streams per connection; 2 stands for it.
    const SMALL_SERVER_LIMIT: u32 = 2;

    #[tokio::test]
    async fn a_full_connection_gets_a_sibling() {
        const TUNNELS: usize = 5;
        let (addr, accepted) = echo_server(SMALL_SERVER_LIMIT).await;
        let client = H2Client::new(Transport::Plain);
        // The first tunnel, so that the server's limit is known when the others come.
        let mut tunnels = open_tunnels(&client, &addr, 1).await;
        echo_on_each(&mut tunnels).await;
        tunnels.extend(open_tunnels(&client, &addr, TUNNELS - 1).await);
        echo_on_each(&mut tunnels).await;
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            TUNNELS.div_ceil(SMALL_SERVER_LIMIT as usize),
            "as many connections as the server's limit requires"
        );
    }

    #[tokio::test]
    async fn a_burst_on_a_new_connection_waits_for_the_server_limit() {
        // All at once on a cold pool: before the server's SETTINGS the limit is unknown.
        const TUNNELS: usize = 5;
        let (addr, accepted) = echo_server(SMALL_SERVER_LIMIT).await;
        let client = H2Client::new(Transport::Plain);
        let mut tunnels = open_tunnels(&client, &addr, TUNNELS).await;
        echo_on_each(&mut tunnels).await;
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            TUNNELS.div_ceil(SMALL_SERVER_LIMIT as usize)
        );
    }

    #[tokio::test]
    async fn extra_connections_close_once_without_tunnels_and_the_oldest_stays() {
        const TUNNELS: usize = 5;
        const IDLE: Duration = Duration::from_millis(400);
        let (addr, accepted, ended) = counted_echo_server(SMALL_SERVER_LIMIT, Duration::ZERO).await;
        let client = H2Client::with_extra_idle(Transport::Plain, IDLE);
        let mut tunnels = open_tunnels(&client, &addr, TUNNELS).await;
        echo_on_each(&mut tunnels).await;
        let dialled = accepted.load(Ordering::Relaxed);
        assert_eq!(dialled, TUNNELS.div_ceil(SMALL_SERVER_LIMIT as usize));
        // While they carry tunnels, none is closed.
        tokio::time::sleep(IDLE * 3).await;
        assert_eq!(ended.load(Ordering::Relaxed), 0);
        drop(tunnels);
        let deadline = tokio::time::Instant::now() + IDLE * 10;
        while ended.load(Ordering::Relaxed) < dialled - 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {} extra connections closed",
                ended.load(Ordering::Relaxed),
                dialled - 1
            );
            tokio::time::sleep(IDLE / 10).await;
        }
        tokio::time::sleep(IDLE * 2).await;
        assert_eq!(
            ended.load(Ordering::Relaxed),
            dialled - 1,
            "the oldest stays"
        );
        // The next tunnel takes the connection that stayed.
        let mut tunnels = open_tunnels(&client, &addr, 1).await;
        echo_on_each(&mut tunnels).await;
        assert_eq!(accepted.load(Ordering::Relaxed), dialled);
    }

    #[tokio::test]
    async fn tunnels_share_one_connection_below_the_limit() {
        const TUNNELS: usize = 50;
        let (addr, accepted) = echo_server(MAX_CONCURRENT_STREAMS).await;
        let client = H2Client::new(Transport::Plain);
        let mut tunnels = open_tunnels(&client, &addr, TUNNELS).await;
        echo_on_each(&mut tunnels).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    /// A dial whose request is dropped half-way (its caller's own timeout) is not an
    /// attempt that failed: a request that waited out the same backoff makes its own
    /// attempt rather than failing at once with a failure nobody saw.
    #[tokio::test]
    async fn a_dial_dropped_half_way_leaves_the_attempt_to_the_waiters() {
        // A port that refuses: the first lease fails and starts a 250 ms backoff.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = taken.local_addr().unwrap();
        drop(taken);
        let addr = Address::parse(&local.to_string()).unwrap();
        let client = H2Client::new(Transport::Plain);
        assert!(client.lease(&addr, Duration::from_secs(1)).await.is_err());
        // Then a listener whose accept queue is full: connecting to it hangs.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.bind(&local.into()).unwrap();
        socket.listen(0).unwrap();
        let _queued: Vec<_> = (0..3)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&local, Duration::from_millis(200)).ok()
            })
            .collect();
        // After the backoff, A makes the attempt and is cut by its caller half-way.
        tokio::time::sleep(RECONNECT_BACKOFF_MIN + Duration::from_millis(50)).await;
        let cut = tokio::time::timeout(
            Duration::from_millis(300),
            client.lease(&addr, Duration::from_secs(5)),
        )
        .await;
        assert!(cut.is_err(), "A was cut by its caller");
        // Not an attempt that ended: the node counts one attempt and one failure, as before A.
        let node = client
            .nodes
            .lock()
            .unwrap()
            .get(&addr.to_string())
            .cloned()
            .unwrap();
        {
            let node = node.lock().await;
            assert_eq!((node.redial.attempts, node.redial.failures), (1, 1));
        }
        // So B makes its own attempt, within its own time, rather than failing with A's.
        let started = tokio::time::Instant::now();
        let error = client
            .lease(&addr, Duration::from_secs(2))
            .await
            .err()
            .expect("the node never answers")
            .to_string();
        let took = started.elapsed();
        assert!(
            !error.contains("in a row"),
            "B failed with an attempt it did not see: {error}"
        );
        assert!(
            took >= Duration::from_millis(1500),
            "B gave up after {took:?}: {error}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), RECONNECT_BACKOFF_MIN);
        assert_eq!(backoff(2), RECONNECT_BACKOFF_MIN * 2);
        assert_eq!(backoff(100), RECONNECT_BACKOFF_MAX);
    }
}
