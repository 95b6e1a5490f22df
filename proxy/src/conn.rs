//! The byte stream every listener produces and every dialer and connector passes on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A bidirectional byte stream: a TCP socket, or a tunnel inside another transport.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Waits until a read would make progress, without needing a buffer. Streams that can tell
    /// (sockets) let idle tunnels hold no buffer at all; the default says "ready" and the
    /// caller then keeps its buffer across reads.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Whether [`Conn::poll_read_ready`] really waits for readability.
    fn has_read_readiness(&self) -> bool {
        false
    }

    /// The TCP socket under this stream when it is one, also through wrappers that only hold
    /// on to bytes already read from it ([`Prefixed`]), which lets the relay move bytes
    /// without copying them through the proxy. What such wrappers hold comes first: see
    /// [`Conn::take_unread`]. A wrapper that passes the socket on must also pass
    /// [`Conn::take_unread`] on, and must not keep bytes written to it: the relay then moves
    /// the socket's bytes without it.
    fn as_tcp(&self) -> Option<&TcpStream> {
        None
    }

    /// Takes the bytes that wrappers hold, read from the stream under them but not handed
    /// out yet (a client's data right behind its request, a byte a handler looked at), in
    /// the order they were read. A relay that moves the bytes of [`Conn::as_tcp`]'s socket
    /// itself passes these on first.
    fn take_unread(&mut self) -> Bytes {
        Bytes::new()
    }

    /// The local address of the TCP socket under this stream, when it is one.
    fn tcp_local_addr(&self) -> Option<std::net::SocketAddr> {
        self.as_tcp().and_then(|tcp| tcp.local_addr().ok())
    }

    /// What the stream is, for the one listener that hands its handler something other than a
    /// byte stream: the `http2` listener's HTTP/2 requests
    /// ([`crate::listener::http2::Http2Exchange`]).
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }

    /// Whether this stream receives its data as owned chunks (WebSocket messages, HTTP/2 DATA
    /// frames, gRPC messages) that [`Conn::poll_read_chunk`] hands out without copying them.
    fn reads_chunks(&self) -> bool {
        false
    }

    /// The next chunk of data, never empty, or `None` once the stream has ended. Streams whose
    /// [`Conn::reads_chunks`] is true hand out what they received as it is; the default
    /// copies what [`AsyncRead::poll_read`] gives into a new chunk.
    fn poll_read_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let mut space = [0u8; FALLBACK_CHUNK];
        let mut buf = ReadBuf::new(&mut space);
        std::task::ready!(self.poll_read(cx, &mut buf))?;
        let filled = buf.filled();
        Poll::Ready(Ok(
            (!filled.is_empty()).then(|| Bytes::copy_from_slice(filled))
        ))
    }

    /// Whether this stream sends its data as owned chunks that [`Conn::poll_write_chunk`] takes
    /// over without copying them: a writer that reads straight into such a chunk saves a copy.
    fn takes_chunks(&self) -> bool {
        false
    }

    /// Takes a leading part of `chunk` (at least one byte of a non-empty chunk) for sending,
    /// advancing `chunk` past it; pending while nothing can be taken. Streams whose
    /// [`Conn::takes_chunks`] is true keep the taken part as it is; the default writes it with
    /// [`AsyncWrite::poll_write`].
    fn poll_write_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        let n = std::task::ready!(self.poll_write(cx, chunk))?;
        if n == 0 && !chunk.is_empty() {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        chunk.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Largest chunk the default [`Conn::poll_read_chunk`] reads at once.
const FALLBACK_CHUNK: usize = 16 * 1024;

/// The read half of [`Conn`]'s chunk methods, passed on to the stream in field `$inner`.
macro_rules! forward_chunk_reads {
    ($inner:ident) => {
        fn reads_chunks(&self) -> bool {
            self.$inner.reads_chunks()
        }

        fn poll_read_chunk(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<io::Result<Option<Bytes>>> {
            Pin::new(&mut self.$inner).poll_read_chunk(cx)
        }
    };
}

/// The write half of [`Conn`]'s chunk methods, passed on to the stream in field `$inner`.
macro_rules! forward_chunk_writes {
    ($inner:ident) => {
        fn takes_chunks(&self) -> bool {
            self.$inner.takes_chunks()
        }

        fn poll_write_chunk(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            chunk: &mut Bytes,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.$inner).poll_write_chunk(cx, chunk)
        }
    };
}

/// An owned, type-erased [`Conn`].
pub type BoxConn = Box<dyn Conn>;

impl Conn for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn has_read_readiness(&self) -> bool {
        true
    }

    fn as_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Conn for BoxConn {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }

    fn has_read_readiness(&self) -> bool {
        (**self).has_read_readiness()
    }

    fn as_tcp(&self) -> Option<&TcpStream> {
        (**self).as_tcp()
    }
    fn take_unread(&mut self) -> Bytes {
        (**self).take_unread()
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        (**self).as_any_mut()
    }
    fn reads_chunks(&self) -> bool {
        (**self).reads_chunks()
    }

    fn poll_read_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>> {
        Pin::new(&mut **self).poll_read_chunk(cx)
    }

    fn takes_chunks(&self) -> bool {
        (**self).takes_chunks()
    }

    fn poll_write_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut **self).poll_write_chunk(cx, chunk)
    }
}

impl Conn for tokio::io::DuplexStream {}

/// A stream with bytes already read from it (e.g. past a protocol header) put back in front.
pub struct Prefixed<C> {
    prefix: Bytes,
    inner: C,
}

impl<C: Conn> Prefixed<C> {
    /// Returns `inner` itself when there is nothing to put back.
    pub fn boxed(prefix: Bytes, inner: C) -> BoxConn {
        if prefix.is_empty() {
            Box::new(inner)
        } else {
            Box::new(Prefixed { prefix, inner })
        }
    }
}

impl<C: Conn> AsyncRead for Prefixed<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The `AsyncWrite` methods of a wrapper that writes straight through to its field `$field`.
macro_rules! write_through {
    ($field:ident) => {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.$field).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.$field.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.$field).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.$field).poll_shutdown(cx)
        }
    };
}
pub(crate) use write_through;

impl<C: Conn> AsyncWrite for Prefixed<C> {
    write_through!(inner);
}

impl<C: Conn> Conn for Prefixed<C> {
    fn as_tcp(&self) -> Option<&TcpStream> {
        self.inner.as_tcp()
    }

    fn take_unread(&mut self) -> Bytes {
        // Reads hand out the prefix before what the stream under it still holds.
        let prefix = std::mem::take(&mut self.prefix);
        let beneath = self.inner.take_unread();
        if beneath.is_empty() {
            prefix
        } else {
            [prefix, beneath].concat().into()
        }
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            Poll::Ready(Ok(()))
        } else {
            self.inner.poll_read_ready(cx)
        }
    }

    fn has_read_readiness(&self) -> bool {
        self.inner.has_read_readiness()
    }

    fn reads_chunks(&self) -> bool {
        self.inner.reads_chunks()
    }

    fn poll_read_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if self.prefix.has_remaining() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.prefix))));
        }
        Pin::new(&mut self.inner).poll_read_chunk(cx)
    }

    forward_chunk_writes!(inner);
}

/// A client connection carrying something that must live exactly as long as it: the service's
/// connection-limit permit and its metrics. Handlers may hand the stream to another task
/// (the HTTP handler's CONNECT upgrade does), so the guard travels with the stream rather than
/// with the task that accepted it.
pub struct Guarded {
    inner: BoxConn,
    _guard: Box<dyn Send + Sync>,
}

impl Guarded {
    /// `inner`, holding `guard` until it is dropped.
    pub fn boxed(inner: BoxConn, guard: impl Send + Sync + 'static) -> BoxConn {
        Box::new(Guarded {
            inner,
            _guard: Box::new(guard),
        })
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    write_through!(inner);
}

impl Conn for Guarded {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }

    fn has_read_readiness(&self) -> bool {
        self.inner.has_read_readiness()
    }

    fn as_tcp(&self) -> Option<&TcpStream> {
        self.inner.as_tcp()
    }
    fn take_unread(&mut self) -> Bytes {
        self.inner.take_unread()
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        self.inner.as_any_mut()
    }
    forward_chunk_reads!(inner);
    forward_chunk_writes!(inner);
}

/// TCP keepalive on every tunnel socket: an idle tunnel whose peer vanished (a node rebooted, a
/// NAT or load balancer dropped the flow) is found and closed instead of hanging for ever.
/// First probe after this much silence, unless the service's `keepAlivePeriod` says otherwise:
/// under the idle timeouts of common cloud load balancers (about 4 minutes) and NAT tables, so
/// probes also keep live flows open.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Between unanswered probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel closes the socket: a dead peer is noticed within
/// about a minute.
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Shortest `keepAlivePeriod` accepted: the kernel counts keepalive time in whole seconds and
/// refuses zero.
pub const MIN_KEEPALIVE_IDLE: Duration = Duration::from_secs(1);
/// Longest `keepAlivePeriod` accepted: Linux's own ceiling for the idle time (`MAX_TCP_KEEPIDLE`),
/// so a value the kernel would reject is refused with the config rather than on every socket.
pub const MAX_KEEPALIVE_IDLE: Duration = Duration::from_secs(32_767);

/// TCP keepalive for a service's sockets: on (the default) with the silence before the first
/// probe, the time between probes and how many go unanswered before the kernel gives up, or
/// off (`keepAlive: false`).
///
/// Whole seconds, as the kernel counts them, in a few bytes: a copy travels with every dial
/// and with every PHT tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// No probes: a vanished peer is noticed only when the tunnel next sends.
    Off,
    /// Probes after `idle_secs` of silence, then every `interval_secs`, `retries` of them.
    On {
        /// Silence before the first probe (1 to 32,767 s).
        idle_secs: u16,
        /// Between unanswered probes (1 to 32,767 s).
        interval_secs: u16,
        /// Unanswered probes before the socket is closed (1 to 127).
        retries: u8,
    },
}

impl KeepAlive {
    /// On, with `idle` (whole seconds, rounded up, within the kernel's limits) and the
    /// default interval and retries.
    pub fn after(idle: Duration) -> Self {
        KeepAlive::on(idle, TCP_KEEPALIVE_INTERVAL, TCP_KEEPALIVE_RETRIES)
    }

    /// On, with each duration in whole seconds (rounded up) and every value brought within
    /// the kernel's limits.
    pub fn on(idle: Duration, interval: Duration, retries: u32) -> Self {
        KeepAlive::On {
            idle_secs: kernel_seconds(idle),
            interval_secs: kernel_seconds(interval),
            retries: retries.clamp(1, MAX_KEEPALIVE_COUNT as u32) as u8,
        }
    }
}

/// `d` in whole seconds, rounded up, between 1 and Linux's ceiling for keepalive times.
fn kernel_seconds(d: Duration) -> u16 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.clamp(1, MAX_KEEPALIVE_IDLE.as_secs()) as u16
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive::after(TCP_KEEPALIVE_IDLE)
    }
}

/// Go's values for a keepalive turned on without them (`net.KeepAliveConfig`), which GOST's
/// `keepalive: true` gets: first probe after 15 s, then every 15 s, 9 of them.
const GO_KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const GO_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const GO_KEEPALIVE_COUNT: u32 = 9;
/// Linux's ceiling for the probe count (`MAX_TCP_KEEPCNT`).
const MAX_KEEPALIVE_COUNT: i64 = 127;

/// GOST's TCP keepalive keys in a listener's or dialer's metadata: `{prefix}keepalive` (on
/// when true), `{prefix}keepalive.idle`, `.interval` and `.count`. `prefix` is `tcp.` where
/// GOST uses plain `keepalive` for the protocol's own (the `grpc` listener, the `ws` and
/// `grpc` dialers). `None` unless turned on: GOST's `false` does not turn keepalive off
/// either (Go keeps its own on), so the service's setting stays; on the command line, though,
/// `keepalive=false` also lands in the service's metadata as its `keepAlive` and turns
/// keepalive off. As in Go, zero or less means the default, and durations count in whole
/// seconds, rounded up. An error names the key.
pub fn gost_keepalive(
    md: &gost_api::Metadata,
    prefix: &str,
) -> Result<Option<KeepAlive>, (String, String)> {
    let key = |name: &str| format!("{prefix}{name}");
    let on = md
        .bool(&[&key("keepalive")])
        .map_err(|e| (key("keepalive"), e.to_string()))?
        .unwrap_or(false);
    if !on {
        return Ok(None);
    }
    let seconds = |name: &str, default: Duration| -> Result<Duration, (String, String)> {
        let k = key(name);
        match md.duration(&[&k]) {
            Err(e) => Err((k, e.to_string())),
            Ok(None) | Ok(Some(None)) => Ok(default),
            Ok(Some(Some(d))) if d.is_zero() => Ok(default),
            Ok(Some(Some(d))) if d > MAX_KEEPALIVE_IDLE => Err((
                k,
                format!("at most {}s (Linux's limit)", MAX_KEEPALIVE_IDLE.as_secs()),
            )),
            Ok(Some(Some(d))) => Ok(d),
        }
    };
    let idle = seconds("keepalive.idle", GO_KEEPALIVE_IDLE)?;
    let interval = seconds("keepalive.interval", GO_KEEPALIVE_INTERVAL)?;
    let count_key = key("keepalive.count");
    let retries = match md.int(&[&count_key]) {
        Err(e) => return Err((count_key, e.to_string())),
        // Zero or less: Go's default.
        Ok(None) => GO_KEEPALIVE_COUNT,
        Ok(Some(n)) if n <= 0 => GO_KEEPALIVE_COUNT,
        Ok(Some(n)) if n <= MAX_KEEPALIVE_COUNT => n as u32,
        Ok(Some(_)) => {
            return Err((
                count_key,
                format!("at most {MAX_KEEPALIVE_COUNT} (Linux's limit; 0 for Go's 9)"),
            ));
        }
    };
    Ok(Some(KeepAlive::on(idle, interval, retries)))
}

tokio::task_local! {
    /// The keepalive of the service on whose behalf a dial runs. Sockets are opened several
    /// layers below the service (router, chain, hop, node, dialer, transport), so the setting
    /// travels with the dial rather than through every dialer's signature.
    static DIALING_KEEPALIVE: KeepAlive;
}

/// Runs `dial` with `keepalive` applying to the TCP sockets it opens.
pub async fn dialing_with<F: std::future::Future>(keepalive: KeepAlive, dial: F) -> F::Output {
    DIALING_KEEPALIVE.scope(keepalive, dial).await
}

/// The keepalive for a socket being dialled now: the dialling service's, else the default
/// (dials outside any service, such as a pooled transport's background reconnect).
pub fn dialing_keepalive() -> KeepAlive {
    DIALING_KEEPALIVE.try_with(|k| *k).unwrap_or_default()
}

/// Settings for every tunnel socket, accepted or dialled: no Nagle delay (tunnels carry
/// interactive protocols, and batching small writes only adds latency) and `keepalive`.
pub fn tune_tcp(stream: &TcpStream, keepalive: KeepAlive) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = socket2::SockRef::from(stream);
    match keepalive {
        KeepAlive::Off => sock.set_keepalive(false),
        KeepAlive::On {
            idle_secs,
            interval_secs,
            retries,
        } => sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(idle_secs.into()))
                .with_interval(Duration::from_secs(interval_secs.into()))
                .with_retries(retries.into()),
        ),
    }
}

/// A socket that notes whenever anything is received, by setting a flag its owner clears:
/// the HTTP/2 keepalive takes it as a sign of life, the PHT listener as the start of a request.
pub(crate) struct Heard<T> {
    io: T,
    heard: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<T> Heard<T> {
    /// `io`, setting `heard` whenever a read returns bytes.
    pub(crate) fn new(io: T, heard: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        Heard { io, heard }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Heard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.heard.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Heard<T> {
    write_through!(io);
}

#[cfg(test)]
mod keepalive_tests {
    use super::*;

    #[tokio::test]
    async fn tunnel_sockets_get_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune_tcp(&stream, KeepAlive::default()).unwrap();
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE_IDLE);
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            TCP_KEEPALIVE_INTERVAL
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), TCP_KEEPALIVE_RETRIES);
        assert!(stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn keepalive_follows_the_service_setting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let sock = socket2::SockRef::from(&stream);
        let idle = Duration::from_secs(75);
        tune_tcp(&stream, KeepAlive::after(idle)).unwrap();
        assert_eq!(sock.tcp_keepalive_time().unwrap(), idle);
        let gost = KeepAlive::on(Duration::from_secs(20), Duration::from_secs(4), 6);
        tune_tcp(&stream, gost).unwrap();
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(20));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(4)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 6);
        tune_tcp(&stream, KeepAlive::Off).unwrap();
        assert!(!sock.keepalive().unwrap());
        assert!(stream.nodelay().unwrap());
    }

    fn md(pairs: &[(&str, &str)]) -> gost_api::Metadata {
        let mut md = gost_api::Metadata::default();
        for (k, v) in pairs {
            md.insert_str(k, v);
        }
        md
    }

    #[test]
    fn gost_keepalive_keys_follow_go() {
        assert_eq!(gost_keepalive(&md(&[]), ""), Ok(None));
        // GOST's false leaves Go's keepalive on; here, the service's.
        assert_eq!(
            gost_keepalive(&md(&[("keepalive", "false"), ("keepalive.idle", "5s")]), ""),
            Ok(None)
        );
        assert_eq!(
            gost_keepalive(&md(&[("keepalive", "true")]), ""),
            Ok(Some(KeepAlive::on(
                Duration::from_secs(15),
                Duration::from_secs(15),
                9
            )))
        );
        assert_eq!(
            gost_keepalive(
                &md(&[
                    ("keepalive", "true"),
                    ("keepalive.idle", "1m"),
                    ("keepalive.interval", "1500ms"),
                    ("keepalive.count", "4"),
                ]),
                ""
            ),
            Ok(Some(KeepAlive::On {
                idle_secs: 60,
                interval_secs: 2,
                retries: 4
            }))
        );
        assert_eq!(
            gost_keepalive(&md(&[("keepalive", "true"), ("keepalive.count", "-1")]), ""),
            Ok(Some(KeepAlive::on(
                Duration::from_secs(15),
                Duration::from_secs(15),
                9
            )))
        );
        // With a prefix, the plain keys are someone else's.
        assert_eq!(
            gost_keepalive(&md(&[("keepalive", "true")]), "tcp."),
            Ok(None)
        );
        assert_eq!(
            gost_keepalive(
                &md(&[("tcp.keepalive", "true"), ("tcp.keepalive.count", "0")]),
                "tcp."
            ),
            Ok(Some(KeepAlive::on(
                Duration::from_secs(15),
                Duration::from_secs(15),
                9
            )))
        );
        for (key, value) in [
            ("keepalive", "sometimes"),
            ("keepalive.idle", "soon"),
            ("keepalive.idle", "10h"),
            ("keepalive.interval", "-"),
            ("keepalive.count", "200"),
        ] {
            let mut pairs = vec![(key, value)];
            if key != "keepalive" {
                pairs.push(("keepalive", "true"));
            }
            let (named, _) = gost_keepalive(&md(&pairs), "").unwrap_err();
            assert_eq!(named, key, "{value}");
        }
    }

    #[tokio::test]
    async fn dials_take_the_keepalive_of_their_service() {
        assert_eq!(dialing_keepalive(), KeepAlive::default());
        let inside = dialing_with(KeepAlive::Off, async { dialing_keepalive() }).await;
        assert_eq!(inside, KeepAlive::Off);
    }
}
