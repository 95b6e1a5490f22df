//! The `grpc` dialer (gost-wire.md §8.5): every tunnel is one call of GOST's streaming `Tunnel`
//! method, and all tunnels to a node share one HTTP/2 connection.
//!
//! TLS with the node's TLS settings (ALPN `h2`) by default, cleartext HTTP/2 with prior
//! knowledge when `grpcInsecure`. `:authority` is metadata `host` or the node's host, without
//! the port, as GOST's gRPC client sends it. A connection that ends (server restart, GOAWAY,
//! failed keepalive) is replaced on the next tunnel, with backoff while dialling fails. Calls
//! beyond the server's stream limit wait for a free stream rather than open a second
//! connection, as grpc-go's client (GOST's) does; grpc-go servers set no limit.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use gost_api::Metadata;
use http::Uri;
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;

use super::{Dialer, tcp};
use crate::addr::Address;
use crate::conn::BoxConn;
use crate::grpc::{ChunkCodec, GrpcConn, MAX_RECEIVE, method_path};
use crate::h2pool::{
    CONNECTION_WINDOW, FirstBytes, H2_HANDSHAKE_TIMEOUT, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE,
    MAX_SEND_BUFFER, Redial, STREAM_WINDOW,
};
use crate::tcpinfo::{self, Pace, TcpWatch};
use crate::tls::ClientTls;

/// Retransmissions in a row that no acknowledgement answered, on a pooled connection, before
/// new tunnels go to a new connection (see [`tcpinfo::TcpCounts::stalled`]): 1.4 s at the
/// least, after the kernel's minimum waits of 200, 400 and 800 ms; a live server acknowledges
/// within a round trip, even behind a slow or congested path.
pub const STALLED_RETRIES: u8 = 3;

/// GOST's client PING interval with `keepalive=true` (`keepalive.time`).
pub const DEFAULT_KEEPALIVE_TIME: Duration = Duration::from_secs(30);

/// GOST's wait for a PING answer with `keepalive=true` (`keepalive.timeout`).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Client keepalive: PING interval, answer timeout, and whether to PING with no call open.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Keepalive {
    /// `keepalive.time`.
    pub time: Duration,
    /// `keepalive.timeout`.
    pub timeout: Duration,
    /// `keepalive.permitWithoutStream`.
    pub without_calls: bool,
}

/// The `grpc` dialer.
pub struct GrpcDialer {
    tls: Option<ClientTls>,
    authority: Option<String>,
    path: PathAndQuery,
    keepalive: Option<Keepalive>,
    slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(Default)]
struct Slot {
    connection: Option<Connection>,
    redial: Redial,
}

/// One HTTP/2 connection to a node, as the service tonic's client calls through.
#[derive(Clone)]
struct Connection {
    send: SendRequest<Body>,
    // Set by the connection task when the connection ends.
    closed: CancellationToken,
    // The kernel's view of the connection's own TCP socket (pooled connections).
    tcp: TcpWatch,
    // How much each tunnel hands the connection at a time ([`crate::grpc::message_limit`]).
    pace: Pace,
}

impl Connection {
    fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.send.is_closed()
    }

    /// Whether bytes sent on it went [`STALLED_RETRIES`] retransmissions without any
    /// acknowledgement: the server is gone (the kernel still retransmits), and a new tunnel
    /// would wait on it.
    fn is_stalled(&self) -> bool {
        self.tcp
            .counts()
            .is_some_and(|c| c.stalled(STALLED_RETRIES))
    }
}

impl tower_service::Service<http::Request<Body>> for Connection {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // Queues the request on the connection now; the future only waits for the answer.
        Box::pin(self.send.send_request(req))
    }
}

impl GrpcDialer {
    /// `tls` is the node's TLS (ALPN `h2`); `metadata` gives `grpcInsecure`, `host`, `path`
    /// and keepalive. Errors name the key.
    pub fn new(tls: ClientTls, md: &Metadata) -> Result<Self, String> {
        let insecure = md
            .bool(&["grpcInsecure", "grpc.insecure", "insecure"])
            .map_err(|e| e.to_string())?
            .unwrap_or(false);
        let authority = md
            .string(&["host", "grpc.authority", "grpc.host"])
            .filter(|h| !h.is_empty())
            .map(|h| strip_port(&h).to_string());
        if let Some(host) = &authority
            && http::uri::Authority::try_from(host.as_str()).is_err()
        {
            return Err(format!(
                "metadata `host` {host:?} is not a valid HTTP/2 authority"
            ));
        }
        let path = method_path(md.string(&["path", "grpc.path"]).as_deref())?;
        let keepalive = if md
            .bool(&["keepalive", "grpc.keepalive", "keepAlive"])
            .map_err(|e| e.to_string())?
            .unwrap_or(false)
        {
            let duration = |keys: &[&str], default| {
                md.duration(keys).map_err(|e| e.to_string()).map(|d| {
                    d.flatten()
                        .filter(|d: &Duration| !d.is_zero())
                        .unwrap_or(default)
                })
            };
            Some(Keepalive {
                time: duration(
                    &["keepalive.time", "grpc.keepalive.time"],
                    DEFAULT_KEEPALIVE_TIME,
                )?,
                timeout: duration(
                    &["keepalive.timeout", "grpc.keepalive.timeout"],
                    DEFAULT_KEEPALIVE_TIMEOUT,
                )?,
                without_calls: md
                    .bool(&[
                        "keepalive.permitWithoutStream",
                        "grpc.keepalive.permitWithoutStream",
                    ])
                    .map_err(|e| e.to_string())?
                    .unwrap_or(false),
            })
        } else {
            None
        };
        Ok(GrpcDialer {
            tls: (!insecure).then_some(tls),
            authority,
            path,
            keepalive,
            slots: Default::default(),
        })
    }

    /// The origin of every call to `addr`: scheme and `:authority`.
    fn origin(&self, addr: &Address) -> Uri {
        let host = match &self.authority {
            Some(host) => host.clone(),
            None => match &addr.host {
                crate::addr::Host::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
                _ => addr.host_str(),
            },
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Uri::try_from(format!("{scheme}://{host}"))
            .unwrap_or_else(|_| Uri::from_static("http://localhost"))
    }

    /// Starts a call on `connection`; the stream is usable at once (see [`GrpcConn::client`]).
    fn open(&self, connection: Connection, addr: &Address) -> GrpcConn {
        let origin = self.origin(addr);
        let path = self.path.clone();
        let pace = connection.pace.clone();
        let codec = ChunkCodec::paced(pace.clone());
        GrpcConn::client(
            move |outbound| {
                let mut grpc = tonic::client::Grpc::with_origin(connection, origin)
                    .max_decoding_message_size(MAX_RECEIVE);
                let mut call = Box::pin(async move {
                    grpc.streaming(tonic::Request::new(outbound), path, codec)
                        .await
                });
                // One poll sends the request headers (the connection is ready: `session`
                // checked), so the server sees the call before our first write.
                match call
                    .as_mut()
                    .poll(&mut Context::from_waker(std::task::Waker::noop()))
                {
                    Poll::Ready(result) => Box::pin(std::future::ready(result)),
                    Poll::Pending => call,
                }
            },
            Arc::from(addr.to_string()),
            pace,
        )
    }

    /// The live connection to `addr`, dialling it (within `timeout`) if there is none. Callers
    /// that arrive while a dial is under way wait for it rather than dial their own.
    async fn connection(&self, addr: &Address, timeout: Duration) -> io::Result<Connection> {
        let slot = self
            .slots
            .lock()
            .expect("slots lock")
            .entry(addr.to_string())
            .or_default()
            .clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let shared = slot;
        let queued = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("grpc {addr}: still queued behind other tunnels after {timeout:?}"),
            )
        };
        let mut slot = tokio::time::timeout_at(deadline, shared.lock())
            .await
            .map_err(|_| queued())?;
        // The slot's attempt count when this call began waiting out a backoff.
        let mut waited_at: Option<u64> = None;
        loop {
            if let Some(connection) = &slot.connection {
                if connection.is_stalled() {
                    // Its tunnels keep it (and fail by themselves if it is dead); new ones go
                    // to a new connection.
                    tracing::warn!(
                        peer = %addr, retransmissions = STALLED_RETRIES,
                        "grpc connection stalled (bytes sent and sent again, none acknowledged); new tunnels go to a new connection"
                    );
                } else if !connection.is_closed() {
                    return Ok(connection.clone());
                } else {
                    tracing::debug!(peer = %addr, "grpc connection gone, re-dialling");
                }
                slot.connection = None;
            }
            // Within this tunnel's time: wait for the next attempt, without holding the
            // slot, rather than fail ([`Redial::wait`]).
            let Some(at) = slot.redial.wait(
                waited_at,
                deadline,
                format_args!("grpc {addr}: connecting failed"),
            )?
            else {
                break;
            };
            waited_at = Some(slot.redial.attempts);
            drop(slot);
            tokio::time::sleep_until(at).await;
            slot = tokio::time::timeout_at(deadline, shared.lock())
                .await
                .map_err(|_| queued())?;
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("grpc {addr}: no time left to connect within {timeout:?}"),
            ));
        }
        // The whole dial within what is left of the call's time; the attempt is counted when
        // it ends (see `H2Client::lease`).
        let dialled = async {
            let tcp = tcp::connect(addr, remaining).await?;
            // With keepalive, as grpc-go (GOST's client) does: bytes unacknowledged for its
            // timeout end the connection. Without it, a passing outage (a failover, a
            // handover) does not cut the tunnels; new ones leave a stalled connection anyway.
            // Not fatal where the system lacks the option.
            if let Some(keepalive) = self.keepalive {
                let _ = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(keepalive.timeout));
            }
            // Watched under TLS, where the socket's writes are.
            let (tcp, watch) = tcpinfo::watched(tcp);
            let pace = tcp.pace();
            self.handshake_connection(Box::new(tcp), addr, self.keepalive, watch, pace)
                .await
        };
        let dialled = tokio::time::timeout(remaining, dialled)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("grpc {addr}: connection not set up within {remaining:?}"),
                ))
            });
        slot.redial.ended(&dialled);
        let connection = dialled?;
        tracing::debug!(peer = %addr, "grpc connection established");
        slot.connection = Some(connection.clone());
        Ok(connection)
    }

    /// TLS (unless insecure) and the HTTP/2 handshake over `conn`; the connection is driven
    /// by a task of its own until it ends. `tcp` and `pace` are those of the TCP socket under
    /// `conn` when it is one ([`tcpinfo::watched`]).
    async fn handshake_connection(
        &self,
        conn: BoxConn,
        addr: &Address,
        keepalive: Option<Keepalive>,
        tcp: TcpWatch,
        pace: Pace,
    ) -> io::Result<Connection> {
        let context = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("grpc {addr}: {what}: {e}"))
        };
        let io: BoxConn = match &self.tls {
            None => conn,
            Some(tls) => {
                let stream = tls.connect(conn, addr).await.map_err(|e| {
                    if crate::tls::peer_not_speaking_tls(&e) {
                        context(
                            "TLS handshake failed (a server with grpcInsecure=true needs it on this end too)",
                            crate::tls::unexplained(e),
                        )
                    } else {
                        context("TLS handshake failed", e)
                    }
                })?;
                if let Some(alpn) = stream.get_ref().1.alpn_protocol()
                    && alpn != b"h2"
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "grpc {addr}: the server chose {:?} in TLS ALPN; gRPC needs h2",
                            String::from_utf8_lossy(alpn)
                        ),
                    ));
                }
                Box::new(crate::tls::Paced::new(stream, pace.clone()))
            }
        };
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buf_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST_SIZE);
        if let Some(keepalive) = keepalive {
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(keepalive.time)
                .keep_alive_timeout(keepalive.timeout)
                .keep_alive_while_idle(keepalive.without_calls);
        }
        // What the server sends first tells whether it speaks HTTP/2 at all: a listener of
        // another type answers our preface in its own protocol, or hangs up.
        let (io, preface) = FirstBytes::new(io);
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("grpc {addr}: HTTP/2 handshake took longer than {H2_HANDSHAKE_TIMEOUT:?}"),
            )
        };
        let handshake = tokio::time::timeout(H2_HANDSHAKE_TIMEOUT, async {
            let (send, connection) = builder
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| context("HTTP/2 handshake failed", io::Error::other(e)))?;
            let closed = CancellationToken::new();
            let done = closed.clone();
            let peer = addr.to_string();
            // Set once the server spoke HTTP/2: the end of a connection that never did is
            // the dial's error, not a line of its own.
            let spoke_h2 = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let established = spoke_h2.clone();
            tokio::spawn(async move {
                match connection.await {
                    Ok(()) => tracing::debug!(peer = %peer, "grpc connection closed"),
                    Err(e) if established.load(std::sync::atomic::Ordering::Relaxed) => {
                        tracing::info!(
                            peer = %peer, error = %crate::error_chain(&e),
                            "grpc connection ended (not a gRPC server, a TLS/grpcInsecure mismatch, or the server went away)"
                        )
                    }
                    Err(e) => tracing::debug!(
                        peer = %peer, error = %crate::error_chain(&e),
                        "grpc connection ended before the server spoke HTTP/2"
                    ),
                }
                done.cancel();
            });
            // Ready once the server's SETTINGS came, as grpc-go's (GOST's) client is.
            let preface = preface
                .await
                .unwrap_or(crate::h2pool::ServerPreface::Closed);
            if let Some(why) = preface.explain() {
                closed.cancel();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("grpc {addr}: {why}"),
                ));
            }
            spoke_h2.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(Connection {
                send,
                closed,
                tcp,
                pace,
            })
        });
        handshake.await.map_err(|_| timed_out())?
    }

    /// [`Dialer::handshake`] over `conn`, whose writes keep to `pace`: a connection of its own
    /// over the previous hop's tunnel, which closes once its one call has ended and nothing
    /// refers to it any more.
    async fn handshake_paced(
        &self,
        conn: BoxConn,
        addr: &Address,
        pace: Pace,
    ) -> io::Result<BoxConn> {
        let mut connection = self
            .handshake_connection(conn, addr, None, TcpWatch::none(), pace)
            .await?;
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connection, cx))
            .await
            .map_err(|e| {
                io::Error::new(io::ErrorKind::ConnectionReset, format!("grpc {addr}: {e}"))
            })?;
        Ok(Box::new(self.open(connection, addr)))
    }
}

#[async_trait]
impl Dialer for GrpcDialer {
    async fn dial(&self, addr: &Address, timeout: Duration) -> io::Result<BoxConn> {
        // A connection found dead only now (its task has not noticed yet) is replaced once.
        for attempt in 0..2 {
            let mut connection = self.connection(addr, timeout).await?;
            let ready =
                std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connection, cx));
            match tokio::time::timeout(timeout, ready).await {
                Ok(Ok(())) => return Ok(Box::new(self.open(connection, addr))),
                Ok(Err(e)) if attempt == 0 => {
                    tracing::debug!(peer = %addr, error = %e, "grpc connection unusable, re-dialling");
                    connection.closed.cancel();
                }
                Ok(Err(e)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("grpc {addr}: {e}"),
                    ));
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("grpc {addr}: connection not ready within {timeout:?}"),
                    ));
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    async fn handshake(&self, conn: BoxConn, addr: &Address) -> io::Result<BoxConn> {
        // The previous hop's tunnel has no socket of our own to fit a pace to.
        self.handshake_paced(conn, addr, Pace::unbounded()).await
    }
}

/// The host of a `host[:port]` (or `[v6]:port`) value.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Conn;
    use bytes::Bytes;
    use std::sync::Mutex;

    fn dialer(md: &[(&str, &str)]) -> Result<GrpcDialer, String> {
        let mut metadata = Metadata::default();
        for (k, v) in md {
            metadata.insert_str(k, v);
        }
        GrpcDialer::new(ClientTls::new(None, &[b"h2"]).unwrap(), &metadata)
    }

    #[test]
    fn authority_is_the_host_without_port() {
        let addr = Address::parse("example.com:8443").unwrap();
        assert_eq!(
            dialer(&[]).unwrap().origin(&addr).to_string(),
            "https://example.com/"
        );
        let d = dialer(&[("grpcInsecure", "true"), ("host", "front.example:443")]).unwrap();
        assert_eq!(d.origin(&addr).to_string(), "http://front.example/");
        let d = dialer(&[("grpc.authority", "a.example")]).unwrap();
        assert_eq!(d.origin(&addr).to_string(), "https://a.example/");
        let v6 = Address::parse("[::1]:8443").unwrap();
        assert_eq!(
            dialer(&[])
                .unwrap()
                .origin(&v6)
                .authority()
                .unwrap()
                .as_str(),
            "[::1]"
        );
    }

    /// The payload sizes of the HTTP/2 DATA frames in one direction of a connection's bytes.
    #[derive(Default)]
    struct DataFrames {
        // Bytes still to pass before the next frame header: the client's preface at first,
        // then each frame's payload.
        skip: usize,
        header: Vec<u8>,
        sizes: Vec<usize>,
    }

    impl DataFrames {
        fn feed(&mut self, mut bytes: &[u8]) {
            while !bytes.is_empty() {
                if self.skip > 0 {
                    let n = self.skip.min(bytes.len());
                    self.skip -= n;
                    bytes = &bytes[n..];
                    continue;
                }
                let n = (9 - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if let [a, b, c, kind, ..] = self.header[..] {
                    if self.header.len() < 9 {
                        continue;
                    }
                    let len = u32::from_be_bytes([0, a, b, c]) as usize;
                    if kind == 0 {
                        self.sizes.push(len);
                    }
                    self.skip = len;
                    self.header.clear();
                }
            }
        }
    }

    /// A client's end of an in-memory connection that logs the DATA frames either way.
    struct Tap {
        io: tokio::io::DuplexStream,
        // What the client wrote, what it read.
        frames: Arc<Mutex<(DataFrames, DataFrames)>>,
    }

    impl tokio::io::AsyncRead for Tap {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
            let read = &buf.filled()[before..];
            self.frames.lock().unwrap().1.feed(read);
            Poll::Ready(Ok(()))
        }
    }

    impl tokio::io::AsyncWrite for Tap {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
            self.frames.lock().unwrap().0.feed(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    impl Conn for Tap {}

    /// One tunnel over a gRPC connection whose ends both keep to `pace`, `len` bytes each way
    /// (written whole, or handed over as chunks), and the DATA frames each end wrote (client,
    /// server).
    async fn grpc_frames(pace: Pace, len: usize, chunks: bool) -> (Vec<usize>, Vec<usize>) {
        use crate::listener::grpc::{GrpcOptions, serve};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client_end, server_end) = tokio::io::duplex(1024 * 1024);
        let frames = Arc::new(Mutex::new((
            DataFrames {
                skip: 24,
                ..Default::default()
            },
            DataFrames::default(),
        )));
        let tap = Tap {
            io: client_end,
            frames: frames.clone(),
        };
        let mut metadata = Metadata::default();
        metadata.insert_str("grpcInsecure", "true");
        let options = Arc::new(GrpcOptions::from_metadata(&metadata).unwrap());
        let (ready, mut accepted) = tokio::sync::mpsc::channel(1);
        let local: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let serving = tokio::spawn(serve(
            Box::new(server_end),
            "127.0.0.1:40000".parse().unwrap(),
            local,
            options,
            ready,
            pace.clone(),
        ));
        let dialer = GrpcDialer::new(ClientTls::new(None, &[b"h2"]).unwrap(), &metadata).unwrap();
        let addr = Address::parse("127.0.0.1:8443").unwrap();
        let mut tunnel = tokio::time::timeout(
            Duration::from_secs(20),
            dialer.handshake_paced(Box::new(tap), &addr, pace),
        )
        .await
        .expect("the handshake stalled")
        .unwrap();
        async fn send(conn: &mut BoxConn, len: usize, chunks: bool) {
            if chunks {
                let mut data = Bytes::from(vec![7u8; len]);
                while !data.is_empty() {
                    std::future::poll_fn(|cx| {
                        Pin::new(&mut **conn).poll_write_chunk(cx, &mut data)
                    })
                    .await
                    .unwrap();
                }
            } else {
                conn.write_all(&vec![7u8; len]).await.unwrap();
            }
            conn.shutdown().await.unwrap();
        }
        let client = async {
            send(&mut tunnel, len, chunks).await;
            let mut got = Vec::new();
            tunnel.read_to_end(&mut got).await.unwrap();
            got.len()
        };
        let server = async {
            let (mut server, _) = accepted.recv().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            send(&mut server, len, chunks).await;
            got.len()
        };
        let both = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(client, server)
        });
        assert_eq!(both.await.expect("the transfers stalled"), (len, len));
        drop((tunnel, dialer));
        serving.abort();
        let mut frames = frames.lock().unwrap();
        let (wrote, read) = &mut *frames;
        // Each end's messages add up to the data, with 9 bytes of framing each.
        for sizes in [&wrote.sizes, &read.sizes] {
            assert!(sizes.iter().sum::<usize>() > len, "{sizes:?}");
        }
        (
            std::mem::take(&mut wrote.sizes),
            std::mem::take(&mut read.sizes),
        )
    }

    // On a slow link both ends write messages, so frames, no bigger than the connection's
    // pace: the frames of other tunnels that HTTP/2 sends in turn with a new tunnel's are
    // that small, not 64 KiB.
    #[tokio::test]
    async fn both_ends_write_frames_no_bigger_than_their_connections_pace() {
        let len = 512 * 1024;
        for chunks in [false, true] {
            let (client, server) = grpc_frames(Pace::fixed(16 * 1024), len, chunks).await;
            for (end, frames) in [("client", &client), ("server", &server)] {
                assert!(
                    frames.iter().all(|&frame| frame <= 16 * 1024),
                    "{end}, chunks: {chunks}, frames {frames:?}"
                );
            }
            // Unbounded (a fast link's), frames go up to the size the peer takes (64 KiB).
            let (client, server) = grpc_frames(Pace::unbounded(), len, chunks).await;
            for (end, frames) in [("client", &client), ("server", &server)] {
                assert!(
                    frames.iter().any(|&frame| frame > 16 * 1024),
                    "{end}, chunks: {chunks}, frames {frames:?}"
                );
            }
        }
    }

    #[test]
    fn strip_port_forms() {
        assert_eq!(strip_port("a.example:443"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn options_and_errors() {
        let d = dialer(&[("path", "a/b/c"), ("keepalive", "true")]).unwrap();
        assert_eq!(d.path.as_str(), "/a/b-c");
        assert_eq!(
            d.keepalive,
            Some(Keepalive {
                time: DEFAULT_KEEPALIVE_TIME,
                timeout: DEFAULT_KEEPALIVE_TIMEOUT,
                without_calls: false,
            })
        );
        assert!(d.tls.is_some());
        assert!(dialer(&[("insecure", "1")]).unwrap().tls.is_none());
        let Err(e) = dialer(&[("host", "a b")]) else {
            panic!("an invalid host was accepted")
        };
        assert!(e.contains("host"), "{e}");
    }
}
