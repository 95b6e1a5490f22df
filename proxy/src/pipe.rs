//! Copying bytes both ways between a client and its upstream: the steady state of every tunnel.
//!
//! Unlike `tokio::io::copy_bidirectional`, a direction holds its buffer only while data flows:
//! on streams that can report readability (sockets) an idle tunnel holds no buffer at all, so
//! thousands of idle tunnels cost little memory. When one side ends its stream, the end is
//! passed on as a half-close, and the other direction may carry on until it ends too or stays
//! silent for [`HALF_CLOSED_IDLE_TIMEOUT`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use tokio::io::ReadBuf;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::conn::Conn;
use crate::metrics::TunnelMeter;

/// Size of a direction's buffer while data flows. Large enough that a bulk transfer over
/// loopback moves in few system calls; it is released as soon as the source has nothing more.
pub const BUFFER_SIZE: usize = 64 * 1024;

/// Chunked path: the least free space a plain reader reads into; below it a fresh
/// [`BUFFER_SIZE`] is reserved, so reads stay large.
const MIN_CHUNK_SPACE: usize = 16 * 1024;

/// Released buffers kept per thread for the next burst of data, so that a busy tunnel does not
/// allocate and zero a buffer every time its source momentarily runs dry. Bounded, so idle
/// memory stays small: at most this many buffers per runtime thread.
const POOLED_BUFFERS_PER_THREAD: usize = 4;

thread_local! {
    static BUFFER_POOL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_buffer() -> Box<[u8]> {
    BUFFER_POOL
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
}

fn release_buffer(buffer: Box<[u8]>) {
    BUFFER_POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOLED_BUFFERS_PER_THREAD {
            pool.push(buffer);
        }
    });
}

/// How long a tunnel whose one direction has ended may stay silent before it is closed. GOST
/// uses 10 s; a little more leaves room for slow servers finishing a response.
pub const HALF_CLOSED_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes moved by a finished tunnel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the client to the upstream.
    pub up: u64,
    /// From the upstream to the client.
    pub down: u64,
}

/// Why a tunnel ended other than by both sides closing.
#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    /// A read or write failed.
    #[error("{side}: {source}")]
    Io {
        /// Which side failed.
        side: &'static str,
        /// The error.
        source: io::Error,
        /// What had been moved until then.
        transferred: Transferred,
    },
    /// Nothing moved for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration, Transferred),
    /// Cut because its service stopped (removed, replaced, or the process stopping) and the
    /// grace period for open tunnels is over.
    #[error(
        "cut: its service stopped and its open tunnels were closed (grace period over, or a second signal)"
    )]
    Stopped(Transferred),
}

impl PipeError {
    /// What had been moved before the tunnel failed.
    pub fn transferred(&self) -> Transferred {
        match self {
            PipeError::Io { transferred, .. }
            | PipeError::Idle(_, transferred)
            | PipeError::Stopped(transferred) => *transferred,
        }
    }
}

#[derive(Default)]
struct Direction {
    /// Moves owned chunks instead of copying through `buf`: set when the reader hands out
    /// chunks or the writer takes them (WebSocket, HTTP/2, gRPC), which saves one copy of every
    /// byte on that side.
    chunked: bool,
    /// Chunked path: what has been read and not yet taken by the writer.
    chunk: Bytes,
    /// Chunked path with a plain reader: the space the next chunk is read into. Held only
    /// while data flows, like `buf`.
    chunk_space: Option<BytesMut>,
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    read_done: bool,
    needs_flush: bool,
    done: bool,
    bytes: u64,
    /// The service's transfer counter that this direction's bytes are added to as they are
    /// written, so that a long tunnel's traffic shows while it runs.
    counter: Option<IntCounter>,
}

enum Failure {
    Read(io::Error),
    Write(io::Error),
}

impl Direction {
    /// Notes `n` bytes written to the writer.
    fn wrote(&mut self, n: usize) {
        self.bytes += n as u64;
        if let Some(counter) = &self.counter {
            counter.inc_by(n as u64);
        }
    }

    /// Advances this direction unless it has already ended; marks it ended when it does.
    fn step<R: Conn + ?Sized, W: Conn + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        progress: &mut bool,
    ) -> Result<(), Failure> {
        if !self.done
            && let Poll::Ready(result) = self.poll_copy(cx, reader, writer, progress)
        {
            result?;
            self.done = true;
        }
        Ok(())
    }

    /// Moves bytes from `reader` to `writer` until the reader ends (then shuts the writer down)
    /// or nothing more can be done now. `progress` is set when a byte moved.
    fn poll_copy<R: Conn + ?Sized, W: Conn + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        progress: &mut bool,
    ) -> Poll<Result<(), Failure>> {
        if self.chunked {
            self.poll_copy_chunks(cx, reader, writer, progress)
        } else {
            self.poll_copy_buffered(cx, reader, writer, progress)
        }
    }

    /// Once everything read has been written: flushes it, and when the reader has ended,
    /// gives back this direction's buffers and shuts the writer down. `true` when the
    /// direction is finished.
    fn poll_flush_or_finish<W: Conn + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<Result<bool, Failure>> {
        if self.needs_flush {
            ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(Failure::Write)?;
            self.needs_flush = false;
        }
        if !self.read_done {
            return Poll::Ready(Ok(false));
        }
        self.chunk_space = None;
        if let Some(buf) = self.buf.take() {
            release_buffer(buf);
        }
        ready!(Pin::new(&mut *writer).poll_shutdown(cx)).map_err(Failure::Write)?;
        Poll::Ready(Ok(true))
    }

    /// [`Direction::poll_copy`] by owned chunks: the reader's chunks go to the writer as they
    /// are, or a plain reader reads straight into the chunk the writer then takes over.
    fn poll_copy_chunks<R: Conn + ?Sized, W: Conn + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        progress: &mut bool,
    ) -> Poll<Result<(), Failure>> {
        loop {
            if !self.chunk.is_empty() {
                let before = self.chunk.len();
                ready!(Pin::new(&mut *writer).poll_write_chunk(cx, &mut self.chunk))
                    .map_err(Failure::Write)?;
                let n = before - self.chunk.len();
                if n == 0 {
                    return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
                }
                self.wrote(n);
                *progress = true;
                continue;
            }
            if ready!(self.poll_flush_or_finish(cx, writer))? {
                return Poll::Ready(Ok(()));
            }
            if reader.reads_chunks() {
                match ready!(Pin::new(&mut *reader).poll_read_chunk(cx)).map_err(Failure::Read)? {
                    None => self.read_done = true,
                    Some(chunk) => {
                        self.chunk = chunk;
                        self.needs_flush = true;
                        *progress = true;
                    }
                }
                continue;
            }
            if self.chunk_space.is_none() {
                if reader.has_read_readiness() {
                    ready!(reader.poll_read_ready(cx)).map_err(Failure::Read)?;
                }
                self.chunk_space = Some(BytesMut::new());
            }
            let space = self.chunk_space.as_mut().expect("allocated above");
            if space.capacity() - space.len() < MIN_CHUNK_SPACE {
                // Takes the whole allocation back when every chunk split from it is gone.
                space.reserve(BUFFER_SIZE);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, space) {
                Poll::Pending => {
                    if reader.has_read_readiness() {
                        self.chunk_space = None;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Read(e))),
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(_)) => {
                    self.chunk = space.split().freeze();
                    self.needs_flush = true;
                    *progress = true;
                }
            }
        }
    }

    /// [`Direction::poll_copy`] through this direction's buffer.
    fn poll_copy_buffered<R: Conn + ?Sized, W: Conn + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        progress: &mut bool,
    ) -> Poll<Result<(), Failure>> {
        loop {
            if self.start < self.end {
                let buf = self.buf.as_ref().expect("pending bytes live in the buffer");
                let n = ready!(Pin::new(&mut *writer).poll_write(cx, &buf[self.start..self.end]))
                    .map_err(Failure::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
                }
                self.start += n;
                self.wrote(n);
                *progress = true;
                continue;
            }
            if ready!(self.poll_flush_or_finish(cx, writer))? {
                return Poll::Ready(Ok(()));
            }
            if self.buf.is_none() {
                if reader.has_read_readiness() {
                    ready!(reader.poll_read_ready(cx)).map_err(Failure::Read)?;
                }
                self.buf = Some(take_buffer());
            }
            let buf = self.buf.as_mut().expect("allocated above");
            let mut read_buf = ReadBuf::new(buf);
            match Pin::new(&mut *reader).poll_read(cx, &mut read_buf) {
                Poll::Pending => {
                    if reader.has_read_readiness()
                        && let Some(buf) = self.buf.take()
                    {
                        release_buffer(buf);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Read(e))),
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        self.read_done = true;
                    } else {
                        self.start = 0;
                        self.end = n;
                        self.needs_flush = true;
                        *progress = true;
                    }
                }
            }
        }
    }
}

/// Copies both ways until both directions have ended; see the module documentation.
/// `idle_timeout` closes a tunnel on which nothing moved for that long. Bytes are added to
/// `meter`, when given, as they are written: from the client as input, to it as output.
pub async fn relay<A: Conn + ?Sized, B: Conn + ?Sized>(
    client: &mut A,
    upstream: &mut B,
    idle_timeout: Option<Duration>,
    stop: Option<CancellationToken>,
    meter: Option<&TunnelMeter>,
) -> Result<Transferred, PipeError> {
    #[cfg(target_os = "linux")]
    if client.as_tcp().is_some() && upstream.as_tcp().is_some() {
        // Bytes read past a protocol's header (data a client sent right behind its request,
        // the first byte the `auto` handler looked at, a server's first words read with its
        // proxy's answer) go on first; then the sockets themselves.
        let early = [client.take_unread(), upstream.take_unread()];
        let (Some(client), Some(upstream)) = (client.as_tcp(), upstream.as_tcp()) else {
            unreachable!("taking a stream's unread bytes leaves its socket in place");
        };
        // Boxed: its state is several times the size of the copying relay's, and every
        // other tunnel's task would keep room for it.
        return Box::pin(crate::splice::relay(
            client,
            upstream,
            early,
            idle_timeout,
            stop,
            meter,
        ))
        .await;
    }
    let up = Direction {
        chunked: client.reads_chunks() || upstream.takes_chunks(),
        counter: meter.map(|m| m.input.clone()),
        ..Direction::default()
    };
    let down = Direction {
        chunked: upstream.reads_chunks() || client.takes_chunks(),
        counter: meter.map(|m| m.output.clone()),
        ..Direction::default()
    };
    Relay {
        client,
        upstream,
        up,
        down,
        idle_timeout,
        timer: None,
        stop: stop.map(|token| Box::pin(token.cancelled_owned())),
    }
    .await
}

struct Relay<'a, A: ?Sized, B: ?Sized> {
    client: &'a mut A,
    upstream: &'a mut B,
    up: Direction,
    down: Direction,
    idle_timeout: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Ends the relay with [`PipeError::Stopped`] when it fires.
    stop: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl<A: Conn + ?Sized, B: Conn + ?Sized> Relay<'_, A, B> {
    fn transferred(&self) -> Transferred {
        Transferred {
            up: self.up.bytes,
            down: self.down.bytes,
        }
    }

    /// The idle limit in force: the configured one, tightened once a direction has ended.
    fn idle_limit(&self) -> Option<Duration> {
        let half_closed = (self.up.done || self.down.done).then_some(HALF_CLOSED_IDLE_TIMEOUT);
        match (self.idle_timeout, half_closed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<A: Conn + ?Sized, B: Conn + ?Sized> Future for Relay<'_, A, B> {
    type Output = Result<Transferred, PipeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut progress = false;
        let up = this
            .up
            .step(cx, &mut *this.client, &mut *this.upstream, &mut progress);
        if let Err(failure) = up {
            let moved = this.transferred();
            return Poll::Ready(Err(fail(failure, "client", "upstream", moved)));
        }
        let down = this
            .down
            .step(cx, &mut *this.upstream, &mut *this.client, &mut progress);
        if let Err(failure) = down {
            let moved = this.transferred();
            return Poll::Ready(Err(fail(failure, "upstream", "client", moved)));
        }
        if this.up.done && this.down.done {
            return Poll::Ready(Ok(this.transferred()));
        }
        if let Some(stop) = &mut this.stop
            && stop.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(PipeError::Stopped(this.transferred())));
        }
        let Some(limit) = this.idle_limit() else {
            return Poll::Pending;
        };
        match &mut this.timer {
            Some(timer) if progress => timer.as_mut().reset(Instant::now() + limit),
            Some(_) => {}
            None => this.timer = Some(Box::pin(tokio::time::sleep(limit))),
        }
        let timer = this.timer.as_mut().expect("set above");
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(PipeError::Idle(limit, this.transferred())));
        }
        Poll::Pending
    }
}

fn fail(
    failure: Failure,
    reader: &'static str,
    writer: &'static str,
    transferred: Transferred,
) -> PipeError {
    let (side, source) = match failure {
        Failure::Read(e) => (reader, e),
        Failure::Write(e) => (writer, e),
    };
    PipeError::Io {
        side,
        source,
        transferred,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{BoxConn, Prefixed};
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// Relays `client` and `upstream` in a task of their own, without idle timeout or stop.
    fn spawn_relay<A: Conn, B: Conn>(
        mut client: A,
        mut upstream: B,
        meter: Option<TunnelMeter>,
    ) -> tokio::task::JoinHandle<Result<Transferred, PipeError>> {
        tokio::spawn(
            async move { relay(&mut client, &mut upstream, None, None, meter.as_ref()).await },
        )
    }

    #[tokio::test]
    async fn moves_bytes_both_ways_and_passes_half_close_on() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let relay = spawn_relay(client_side, upstream_side, None);

        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        client.write_all(&payload).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);

        upstream.write_all(b"reply after half-close").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after half-close");

        let moved = relay.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                up: 300_000,
                down: 22
            }
        );
    }

    #[tokio::test]
    async fn copying_path_handles_streams_that_are_not_sockets() {
        // In-memory pipes take the copying path, a prefix first.
        let (mut client, client_side) = tokio::io::duplex(1024);
        let (upstream_side, mut upstream) = tokio::io::duplex(1024);
        let client_side = Prefixed::boxed(bytes::Bytes::from_static(b"early "), client_side);
        let upstream_side: BoxConn = Box::new(upstream_side);
        let relay = spawn_relay(client_side, upstream_side, None);
        client.write_all(b"and later").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early and later");
        let mut reply = Vec::new();
        let send = async {
            upstream.write_all(&vec![7u8; 100_000]).await.unwrap();
            upstream.shutdown().await.unwrap();
        };
        let (_, received) = tokio::join!(send, client.read_to_end(&mut reply));
        received.unwrap();
        assert_eq!(reply.len(), 100_000);
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                up: 15,
                down: 100_000
            }
        );
    }

    /// Two ends of a WebSocket over loopback TCP: our client stream and our server stream.
    async fn ws_pair() -> (crate::ws::WsStream, crate::ws::WsStream) {
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (a, b) = pair().await;
        let client = WebSocketStream::from_raw_socket(
            crate::ws::Transport::new(Box::new(a)),
            Role::Client,
            Some(crate::ws::config()),
        )
        .await;
        let server = crate::ws::WsStream::server(Box::new(b)).await;
        (crate::ws::WsStream::new(client, None), server)
    }

    /// Writes `data` into `from` and ends it, reading `to` to its end meanwhile; checks that
    /// exactly `data` arrived.
    async fn push_all<F, T>(from: &mut F, to: &mut T, data: &[u8])
    where
        F: tokio::io::AsyncWrite + Unpin,
        T: tokio::io::AsyncRead + Unpin,
    {
        let got = send_and_collect(from, to, data).await;
        assert!(got == data, "{} bytes arrived of {}", got.len(), data.len());
    }

    /// Writes `data` into `from` and ends it; what `to` read to its end meanwhile.
    async fn send_and_collect<F, T>(from: &mut F, to: &mut T, data: &[u8]) -> Vec<u8>
    where
        F: tokio::io::AsyncWrite + Unpin,
        T: tokio::io::AsyncRead + Unpin,
    {
        let send = async {
            from.write_all(data).await.unwrap();
            from.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let (_, received) = tokio::join!(send, to.read_to_end(&mut got));
        received.unwrap();
        got
    }

    #[tokio::test]
    async fn chunked_path_moves_messages_without_a_relay_buffer() {
        // A socket on one side, a WebSocket on the other: the relay reads the socket straight
        // into the messages it sends, and writes received messages straight to the socket.
        let (mut client, mut client_side) = pair().await;
        let (ws_client, mut ws_server) = ws_pair().await;
        let mut upstream: BoxConn = Prefixed::boxed(Bytes::new(), ws_client);
        assert!(upstream.reads_chunks() && upstream.takes_chunks());
        let relay =
            tokio::spawn(
                async move { relay(&mut client_side, &mut upstream, None, None, None).await },
            );

        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        push_all(&mut client, &mut ws_server, &payload).await;
        let reply: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
        push_all(&mut ws_server, &mut client, &reply).await;

        let moved = relay.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                up: 3_000_000,
                down: 1_500_000
            }
        );
    }

    #[tokio::test]
    async fn chunked_path_hands_out_a_prefix_first() {
        let (mut client, mut client_side) = pair().await;
        let (ws_client, mut ws_server) = ws_pair().await;
        let mut upstream = Prefixed::boxed(Bytes::from_static(b"early "), ws_client);
        let relay =
            tokio::spawn(
                async move { relay(&mut client_side, &mut upstream, None, None, None).await },
            );
        ws_server.write_all(b"and later").await.unwrap();
        ws_server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early and later");
        client.shutdown().await.unwrap();
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(moved, Transferred { up: 0, down: 15 });
    }

    /// The service's counters show a tunnel's bytes while it is open, on the spliced, the
    /// copying and the chunked path, and end at what the relay returns: nothing counted twice.
    #[tokio::test]
    async fn the_meter_counts_bytes_while_the_tunnel_is_open() {
        const UP: usize = 100_000;
        const DOWN: usize = 60_000;
        for path in ["spliced", "copying", "chunked"] {
            let client_addr = "192.0.2.9:4000".parse().unwrap();
            let meter = TunnelMeter::new(&format!("pipe-test-{path}"), client_addr);
            let (mut client, client_side) = pair().await;
            let client_side: BoxConn = match path {
                "copying" => Box::new(Opaque(client_side)),
                _ => Box::new(client_side),
            };
            let (upstream_side, mut upstream): (BoxConn, BoxConn) = match path {
                "chunked" => {
                    let (ws_client, ws_server) = ws_pair().await;
                    (Box::new(ws_client), Box::new(ws_server))
                }
                _ => {
                    let (a, b) = pair().await;
                    (Box::new(a), Box::new(b))
                }
            };
            #[cfg(target_os = "linux")]
            let spliced_before = crate::splice::SPLICED.get();
            let relay = spawn_relay(client_side, upstream_side, Some(meter.clone()));
            client.write_all(&vec![1u8; UP]).await.unwrap();
            let mut got = vec![0u8; UP];
            upstream.read_exact(&mut got).await.unwrap();
            upstream.write_all(&vec![2u8; DOWN]).await.unwrap();
            upstream.flush().await.unwrap();
            let mut got = vec![0u8; DOWN];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(
                (meter.input.get(), meter.output.get()),
                (UP as u64, DOWN as u64),
                "{path}: counted while open"
            );

            client.shutdown().await.unwrap();
            upstream.shutdown().await.unwrap();
            let mut rest = Vec::new();
            upstream.read_to_end(&mut rest).await.unwrap();
            client.read_to_end(&mut rest).await.unwrap();
            let moved = relay.await.unwrap().unwrap();
            assert_eq!(
                moved,
                Transferred {
                    up: UP as u64,
                    down: DOWN as u64
                },
                "{path}"
            );
            assert_eq!(
                (meter.input.get(), meter.output.get()),
                (moved.up, moved.down),
                "{path}: counted once"
            );
            #[cfg(target_os = "linux")]
            {
                let spliced = crate::splice::SPLICED.get() - spliced_before;
                let expected = if path == "spliced" { UP + DOWN } else { 0 };
                assert_eq!(spliced, expected as u64, "{path}: bytes spliced");
            }
        }
    }

    /// A socket the relay cannot see through, which it copies.
    struct Opaque(TcpStream);

    impl tokio::io::AsyncRead for Opaque {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for Opaque {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl Conn for Opaque {}

    /// Sockets behind wrappers that hold bytes already read from them (the `auto` handler's
    /// first byte, a client's data right behind its CONNECT, a server's first words read with
    /// its proxy's 200) are still spliced, once those bytes went on, in order.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn sockets_with_bytes_read_ahead_are_spliced_after_them() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        // Wrapped twice (the `auto` handler's first byte, then the http handler's read-ahead):
        // the bytes go on in the order reads would hand them out.
        let inner = Prefixed::boxed(Bytes::from_static(b"early "), client_side);
        let client_side = Prefixed::boxed(Bytes::from_static(b"GET "), inner);
        let upstream_side = Prefixed::boxed(Bytes::from_static(b"banner "), upstream_side);
        let spliced_before = crate::splice::SPLICED.get();
        let relay = spawn_relay(client_side, upstream_side, None);

        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 13) as u8).collect();
        let mut expected_up = b"GET early ".to_vec();
        expected_up.extend_from_slice(&payload);
        let got = send_and_collect(&mut client, &mut upstream, &payload).await;
        assert!(got == expected_up, "{} bytes arrived upstream", got.len());
        let got = send_and_collect(&mut upstream, &mut client, b"and the rest").await;
        assert_eq!(got, b"banner and the rest");

        let moved = relay.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                up: expected_up.len() as u64,
                down: 19
            }
        );
        // Everything but the bytes read ahead went through splice(2).
        let spliced = crate::splice::SPLICED.get() - spliced_before;
        assert_eq!(spliced, (payload.len() + "and the rest".len()) as u64);
    }

    /// Bytes read ahead that fill the peer's socket wait for it like any others, and the
    /// meter counts them once.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn bytes_read_ahead_wait_for_a_slow_peer_and_are_counted_once() {
        const EARLY: usize = 16 << 20;
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let early: Vec<u8> = (0..EARLY as u32).map(|i| (i * 5 + i / 9) as u8).collect();
        let client_side = Prefixed::boxed(Bytes::from(early.clone()), client_side);
        let upstream_side: BoxConn = Box::new(upstream_side);
        let meter = TunnelMeter::new("pipe-test-early", "192.0.2.9:4001".parse().unwrap());
        let relay = spawn_relay(client_side, upstream_side, Some(meter.clone()));
        // Far more than a socket that nobody reads buffers: the relay waits for the peer.
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert!(got == early, "{} bytes arrived of {EARLY}", got.len());
        upstream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                up: EARLY as u64,
                down: 0
            }
        );
        assert_eq!(meter.input.get(), EARLY as u64);
    }

    #[tokio::test]
    async fn default_chunk_methods_copy_through_read_and_write() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a: BoxConn = Box::new(a);
        assert!(!a.reads_chunks() && !a.takes_chunks());
        let mut chunk = Bytes::from(vec![5u8; 200]);
        std::future::poll_fn(|cx| Pin::new(&mut a).poll_write_chunk(cx, &mut chunk))
            .await
            .unwrap();
        assert_eq!(chunk.len(), 200 - 64, "a duplex of 64 bytes takes 64");
        let mut first = [0u8; 64];
        b.read_exact(&mut first).await.unwrap();
        b.write_all(b"xyz").await.unwrap();
        drop(b);
        let read = std::future::poll_fn(|cx| Pin::new(&mut a).poll_read_chunk(cx)).await;
        assert_eq!(read.unwrap().as_deref(), Some(&b"xyz"[..]));
        let end = std::future::poll_fn(|cx| Pin::new(&mut a).poll_read_chunk(cx)).await;
        assert_eq!(end.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn copying_path_times_out_idle_tunnels() {
        let (_client, client_side) = tokio::io::duplex(64);
        let (upstream_side, _upstream) = tokio::io::duplex(64);
        let mut client_side: BoxConn = Box::new(client_side);
        let mut upstream_side: BoxConn = Box::new(upstream_side);
        let result = relay(
            &mut client_side,
            &mut upstream_side,
            Some(Duration::from_secs(5)),
            None,
            None,
        )
        .await;
        assert!(matches!(result, Err(PipeError::Idle(d, _)) if d == Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_time_out() {
        let (_client, mut client_side) = pair().await;
        let (mut upstream_side, _upstream) = pair().await;
        let result = relay(
            &mut client_side,
            &mut upstream_side,
            Some(Duration::from_secs(5)),
            None,
            None,
        )
        .await;
        assert!(matches!(result, Err(PipeError::Idle(d, _)) if d == Duration::from_secs(5)));
    }

    /// A stop signal ends a tunnel on both paths with what it had moved.
    #[tokio::test]
    async fn a_stop_ends_the_relay_with_what_moved() {
        for spliced in [false, true] {
            let (mut client, mut client_side): (BoxConn, BoxConn) = if spliced {
                let (a, b) = pair().await;
                (Box::new(a), Box::new(b))
            } else {
                let (a, b) = tokio::io::duplex(64);
                (Box::new(a), Box::new(b))
            };
            let (mut upstream_side, mut upstream) = pair().await;
            let stop = CancellationToken::new();
            let relay = {
                let stop = stop.clone();
                tokio::spawn(async move {
                    relay(&mut client_side, &mut upstream_side, None, Some(stop), None).await
                })
            };
            client.write_all(b"12345").await.unwrap();
            let mut got = [0u8; 5];
            upstream.read_exact(&mut got).await.unwrap();
            stop.cancel();
            let result = tokio::time::timeout(Duration::from_secs(5), relay)
                .await
                .expect("the relay stops")
                .unwrap();
            match result {
                Err(PipeError::Stopped(moved)) => assert_eq!((moved.up, moved.down), (5, 0)),
                other => panic!("spliced {spliced}: {other:?}"),
            }
        }
    }
}
