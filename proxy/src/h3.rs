//! HTTP/3 over QUIC for the `h3` transport (gost-wire.md §8.7): PHT's three endpoints served
//! and reached over HTTP/3 instead of HTTP/1.1.
//!
//! - [`Server`]: a QUIC endpoint that turns every HTTP/3 request into an
//!   `http::Request<Body>` for a handler and streams the handler's response back frame by
//!   frame (a PHT pull response lasts as long as its tunnel). Requests of one connection run
//!   concurrently.
//!   Once it stops accepting, its connections run on while their tunnels drain, until the
//!   service stops for good: then each gets a CONNECTION_CLOSE before the UDP socket goes, so
//!   that clients dial again at once rather than use a dead connection until it times out.
//! - [`H3RoundTrip`]: PHT's [`RoundTrip`] over one QUIC connection per node, shared by all
//!   its tunnels and dialled again, with backoff, when it dies. When a stopping server refuses
//!   a new tunnel on it (`503` to authorize), or sends GOAWAY, or the connection is closed or
//!   silent when a new tunnel begins on it, new requests go on a new connection from a new
//!   UDP socket, while each tunnel ([`H3Tunnel`]) stays on the connection it began on as long
//!   as that one takes its requests.
//!
//! Both speak QUIC version 1 only, with ALPN `h3`, and TLS from [`crate::tls`].

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::h3::error::StreamError;
use ::h3::server::RequestStream;
use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use gost_api::Metadata;
use http::{Request, Response};
use http_body_util::BodyExt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::addr::Address;
use crate::pht::{Body, OpenedAfter, RoundTrip, Shared};
use crate::tls::{ClientTls, ServerTls};

/// The ALPN protocol of HTTP/3 (RFC 9114 §3.1).
pub const ALPN: &[&[u8]] = &[b"h3"];

/// The one QUIC version spoken: GOST's listener and dialer accept version 1 only.
pub const QUIC_VERSION: u32 = 1;

/// QUIC keep-alive period when `keepalive` is on and `ttl` unset: GOST's 10 s, well inside the
/// idle timeout (and typical NAT UDP timeouts of 30 s or more).
pub const DEFAULT_KEEPALIVE_PERIOD: Duration = Duration::from_secs(10);

/// Time for a QUIC handshake (and the HTTP/3 settings after it): GOST's (quic-go's) 5 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection silent for this long is dropped: GOST's (quic-go's) 30 s, RFC 9308 §3.2's
/// recommendation. Keep-alives (10 s) keep an idle tunnel's connection alive.
pub const DEFAULT_MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Concurrent request streams a peer may open on one connection. Each PHT tunnel holds one
/// long pull stream and, while writing, one push: 1,000 idle tunnels over one connection need
/// about 1,000 streams, 2,000 while all of them write at once; 4,096 leaves room for twice
/// that. quinn keeps state only for streams actually open, so a high limit costs nothing idle.
pub const DEFAULT_MAX_STREAMS: u32 = 4096;

/// Flow-control window of one stream: far more than a loopback or LAN bandwidth-delay product,
/// and 8 Mbit/s per stream at a 1 s RTT. It bounds what one stream can buffer unread.
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// Flow-control window of a whole connection (quinn's default is unlimited): what all streams
/// of one connection together can have buffered unread, so the memory one peer can make us
/// hold however many tunnels it opens.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;

/// Data sent but not yet acknowledged, per connection: matches the peer's receive window, as
/// more could not be in flight anyway.
pub const SEND_WINDOW: u64 = 8 * 1024 * 1024;

/// Largest request header section accepted, either side: PHT's requests and responses carry a
/// handful of short headers; this keeps a hostile peer's header block bounded.
pub const MAX_FIELD_SECTION_SIZE: u64 = 64 * 1024;

/// Largest request body read for a handler: one PHT push line, as long as the PHT server
/// takes one, plus its line end.
pub const MAX_REQUEST_BODY: usize = crate::pht::server::MAX_PUSH_LINE + 2;

/// UDP socket buffers asked of the kernel (it may cap them): a burst of full-size datagrams
/// from a fast peer must not be dropped before quinn reads it. Kernel memory, not ours.
pub const UDP_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// First wait before dialling a dead node again, doubled on each failure up to
/// [`MAX_REDIAL_BACKOFF`]: short, so a restarted server is reached almost at once.
pub const REDIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait between two dials of an unreachable node: a tunnel request waits at most this
/// before it is tried again, and a dead node costs one handshake attempt per interval.
pub const MAX_REDIAL_BACKOFF: Duration = Duration::from_secs(2);

/// How long a connection may stay silent after a tunnel's first request went on it (not even
/// an acknowledgement; four round trips are added) before the request is asked again on a
/// new connection: a live peer acknowledges within a round trip and 25 ms, and retransmits
/// lost packets well within this.
pub const SILENT_AFTER: Duration = Duration::from_secs(1);

/// The application error code a stopping server closes its connections with: HTTP/3's
/// `H3_NO_ERROR` (RFC 9114 §8.1), for a connection that ends with no error to signal. Clients
/// take it as a clean end and dial again for their next request.
const STOPPED_CODE: VarInt = VarInt::from_u32(0x100);

/// The reason sent with [`STOPPED_CODE`], for the peer's logs.
const STOPPED_REASON: &[u8] = b"gost: service stopped";

/// Longest a stopping server waits, after closing its connections, for them to be gone. The
/// CONNECTION_CLOSE leaves at once, but only while quinn's tasks still run: exiting without
/// waiting would leave each client to find its connection dead by its idle timeout (30 s), and
/// to use it until then. quinn keeps a closed connection for three probe timeouts (under
/// 100 ms on a LAN, about 1 s at 200 ms of RTT), and the UDP socket until the last is gone.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long closed connections may keep the listener's socket before they are moved to one of
/// their own: time for their CONNECTION_CLOSE to go out.
const CLOSE_FLUSH: Duration = Duration::from_millis(200);

// quinn's UDP payload limit stays at its default (1,472 bytes, an Ethernet frame): its receive
// buffer is that size × 64 GRO segments × 32 datagrams per batch, so a loopback-sized payload
// would cost tens of MiB per endpoint. GSO and GRO already batch packets on loopback.

/// QUIC settings from listener or dialer metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicOptions {
    /// QUIC keep-alive period; `None`: off.
    pub keepalive: Option<Duration>,
    /// See [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// See [`DEFAULT_MAX_IDLE_TIMEOUT`].
    pub max_idle_timeout: Duration,
    /// See [`DEFAULT_MAX_STREAMS`].
    pub max_streams: u32,
}

impl QuicOptions {
    /// `keepalive` (bool, default `keepalive_default`: off on GOST's listener, on on its
    /// dialer), `ttl` (keep-alive period), `handshakeTimeout`, `maxIdleTimeout`, `maxStreams`.
    pub fn from_metadata(md: &Metadata, keepalive_default: bool) -> Result<Self, String> {
        let keepalive = md
            .bool(&["keepalive"])
            .map_err(|e| e.to_string())?
            .unwrap_or(keepalive_default);
        let duration = |key: &str| {
            md.duration(&[key])
                .map(|d| d.flatten().filter(|d| !d.is_zero()))
                .map_err(|e| e.to_string())
        };
        let ttl = duration("ttl")?.unwrap_or(DEFAULT_KEEPALIVE_PERIOD);
        let max_streams = match md.int(&["maxStreams"]).map_err(|e| e.to_string())? {
            None | Some(0) => DEFAULT_MAX_STREAMS,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("metadata `maxStreams`: {n} is not a positive count"))?,
        };
        Ok(QuicOptions {
            keepalive: keepalive.then_some(ttl),
            handshake_timeout: duration("handshakeTimeout")?.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
            max_idle_timeout: duration("maxIdleTimeout")?.unwrap_or(DEFAULT_MAX_IDLE_TIMEOUT),
            max_streams,
        })
    }

    fn transport(&self) -> Result<TransportConfig, String> {
        let mut transport = TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.max_idle_timeout)
            .map_err(|_| format!("maxIdleTimeout {:?} is too long", self.max_idle_timeout))?;
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(self.keepalive)
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_streams))
            .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
            .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
            .send_window(SEND_WINDOW);
        Ok(transport)
    }
}

impl Default for QuicOptions {
    fn default() -> Self {
        QuicOptions {
            keepalive: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_idle_timeout: DEFAULT_MAX_IDLE_TIMEOUT,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

/// QUIC v1 only; stateless resets keyed with `reset_secret` when given (a server's, from
/// [`instance_secret`]: the same server restarted can reset the connections of the one before
/// it), else with a random key (a client's).
fn endpoint_config(reset_secret: Option<[u8; 32]>) -> EndpointConfig {
    let mut config = match reset_secret {
        Some(secret) => {
            let mut config = EndpointConfig::new(Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &secret,
            )));
            // A reset is sent only for a packet whose connection ID the endpoint recognises
            // as one of its own: the IDs are keyed from the same secret, so the server
            // restarted recognises those of the one before it.
            let id_key = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
                b"gost-rs QUIC connection IDs",
            );
            let mut first = [0u8; 8];
            first.copy_from_slice(&id_key.as_ref()[..8]);
            let id_key = u64::from_le_bytes(first);
            config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(id_key))
            });
            config
        }
        None => EndpointConfig::default(),
    };
    config.supported_versions(vec![QUIC_VERSION]);
    config
}

/// The key a server's stateless resets and connection IDs derive from: the certificate's
/// private key ([`ServerTls::reset_secret`]) mixed with this host's name and the bound
/// address. The same server started again on the same host and address (a killed process,
/// a container restarted in its pod) derives the same key, so it recognises the connections
/// of the one before it and resets them. Two servers that could receive each other's
/// packets must not share it (RFC 9000 §21.11: one would hand out valid resets for the
/// other's connections): two services of a process differ by address, and replicas sharing a
/// certificate Secret by host name (a pod's).
fn instance_secret(tls: &ServerTls, local: SocketAddr) -> [u8; 32] {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &tls.reset_secret());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(b"gost-rs h3 server instance\0");
    context.update(host.trim().as_bytes());
    context.update(b"\0");
    context.update(local.to_string().as_bytes());
    let mut secret = [0u8; 32];
    secret.copy_from_slice(context.sign().as_ref());
    secret
}

/// What answers the requests: called once per request, concurrently.
pub type Handler = Arc<
    dyn Fn(Request<Body>, SocketAddr) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// An HTTP/3 server on one UDP socket; see the module comment.
pub struct Server {
    endpoint: quinn::Endpoint,
    local: SocketAddr,
    _accept: AbortOnDropHandle<()>,
}

impl Server {
    /// Binds `addr` (`host:port`, `[v6]:port` or `:port`; IPv4 literals bind IPv4 only, an
    /// empty host every interface) and serves each request with `handler`. `tls` must offer
    /// ALPN [`ALPN`]. Must be called within a Tokio runtime.
    pub fn bind(
        addr: &str,
        tls: &ServerTls,
        options: &QuicOptions,
        handler: Handler,
    ) -> io::Result<Self> {
        let crypto = QuicServerConfig::try_from(tls.config())
            .map_err(|e| io::Error::other(format!("TLS configuration unusable for QUIC: {e}")))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(options.transport().map_err(io::Error::other)?));
        let socket = bind_udp(addr)?;
        let secret = instance_secret(tls, socket.local_addr()?);
        let endpoint = quinn::Endpoint::new(
            endpoint_config(Some(secret)),
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let local = endpoint.local_addr()?;
        let handshake_timeout = options.handshake_timeout;
        let accepting = endpoint.clone();
        let tls = tls.clone();
        let accept = tokio::spawn(async move {
            // `accept` ends only when the endpoint is closed.
            while let Some(incoming) = accepting.accept().await {
                tokio::spawn(serve_connection(
                    incoming,
                    tls.clone(),
                    handshake_timeout,
                    handler.clone(),
                ));
            }
        });
        Ok(Server {
            endpoint,
            local,
            _accept: AbortOnDropHandle::new(accept),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Refuses new connections and returns what keeps serving the established ones once the
    /// server is dropped, as the tunnels they carry may still be draining. No GOAWAY is sent:
    /// a tunnel's next push is a new request, which must reach the session it drains on, and
    /// after a GOAWAY h3's client (ours) sends no new request on the connection at all, nor
    /// does h3's server take one past the GOAWAY's stream. New tunnels are refused by the PHT
    /// server instead (`503`), which our client asks again on a new connection. When
    /// `release` is cancelled it closes them all (CONNECTION_CLOSE with [`STOPPED_CODE`]) and
    /// waits up to [`CLOSE_TIMEOUT`] for them to be gone. It ends early, with nothing to close,
    /// when the last connection has gone; the UDP socket is released when it ends.
    pub fn stop_accepting(
        &self,
        release: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.endpoint.set_server_config(None);
        let endpoint = self.endpoint.clone();
        async move {
            tokio::select! {
                () = release.cancelled() => close(&endpoint).await,
                () = endpoint.wait_idle() => {}
            }
        }
    }
}

async fn close(endpoint: &quinn::Endpoint) {
    let open = endpoint.open_connections();
    endpoint.close(STOPPED_CODE, STOPPED_REASON);
    if tokio::time::timeout(CLOSE_FLUSH, endpoint.wait_idle())
        .await
        .is_ok()
    {
        return;
    }
    // Closed connections drain for three probe timeouts, which a high round-trip time makes
    // seconds, and hold the UDP socket meanwhile. Their CONNECTION_CLOSE has gone out: they
    // finish on a socket of their own, and the address is free for a listener that wants it.
    // quinn keeps the socket it moved away from (to read what is still addressed to it) until
    // a packet arrives on the new one; a second move lets go of it at once.
    let moved = endpoint.local_addr().and_then(|addr| {
        for _ in 0..2 {
            endpoint.rebind(std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0))?)?;
        }
        Ok(())
    });
    if let Err(e) = moved {
        tracing::debug!(error = %e, "HTTP/3 connections still closing keep the listener's socket");
    }
    if tokio::time::timeout(CLOSE_TIMEOUT - CLOSE_FLUSH, endpoint.wait_idle())
        .await
        .is_err()
    {
        tracing::debug!(
            connections = open,
            "HTTP/3 connections still closing after {CLOSE_TIMEOUT:?}"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Also without `stop_accepting` (a listener bound for a configuration that was then
        // refused): nothing new comes in; the socket goes with the last connection.
        self.endpoint.set_server_config(None);
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    tls: ServerTls,
    handshake_timeout: Duration,
    handler: Handler,
) {
    let client = incoming.remote_address();
    let handshake = async {
        let quic = incoming.await.map_err(|e| {
            // A TLS failure here is one this server raised, with the alert it sent as the
            // code (0x100 + alert).
            if let quinn::ConnectionError::TransportError(te) = &e
                && let Some(alert) = u64::from(te.code)
                    .checked_sub(0x100)
                    .and_then(|a| u8::try_from(a).ok())
            {
                tls.note_alert_sent(client, alert, &te.reason);
            }
            e.to_string()
        })?;
        ::h3::server::builder()
            .max_field_section_size(MAX_FIELD_SECTION_SIZE)
            .build::<_, Bytes>(h3_quinn::Connection::new(quic))
            .await
            .map_err(|e| e.to_string())
    };
    let mut connection = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            tracing::debug!(client = %client, error = %e, "HTTP/3 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %client, "HTTP/3 handshake took longer than {handshake_timeout:?}");
            return;
        }
    };
    loop {
        match connection.accept().await {
            Ok(Some(resolver)) => {
                tokio::spawn(serve_stream(Box::new(resolver), client, handler.clone()));
            }
            Ok(None) => return,
            Err(e) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(client = %client, error = %e, "HTTP/3 connection ended");
                }
                return;
            }
        }
    }
}

type Resolver = ::h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// Reads a request's head, then serves it. The resolver comes boxed, and reading the head is
/// boxed (about 3 KiB), for the reason [`Accepted`] is.
async fn serve_stream(resolver: Box<Resolver>, client: SocketAddr, handler: Handler) {
    let accepted = match Box::pin(resolver.resolve_request()).await {
        Ok(accepted) => Box::new(accepted),
        Err(e) => {
            tracing::debug!(client = %client, error = %e, "bad HTTP/3 request");
            return;
        }
    };
    serve_request(accepted, client, handler).await;
}

/// A request's head and stream, boxed: an async fn keeps its arguments for its whole life,
/// and a pull's task lives as long as its tunnel.
type Accepted = Box<(
    Request<()>,
    RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
)>;

async fn serve_request(accepted: Accepted, client: SocketAddr, handler: Handler) {
    let (req, stream) = *accepted;
    let (mut send, recv) = stream.split();
    let req = req.map(|()| request_body(recv));
    let (parts, mut body) = handler(req, client).await.into_parts();
    // Boxed, as is each frame's send below: a pull's task lives as long as its tunnel, and
    // its size is that of its largest await.
    if let Err(e) = Box::pin(send.send_response(Response::from_parts(parts, ()))).await {
        tracing::debug!(client = %client, error = %e, "HTTP/3 response not sent");
        return;
    }
    // Each frame goes out as it comes: a pull response carries a tunnel, line by line.
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                // Trailers have no use in PHT; they are dropped.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                if let Err(e) = Box::pin(send.send_data(data)).await {
                    // The client went away or reset the stream; dropping the body tells the
                    // handler.
                    tracing::debug!(client = %client, error = %e, "HTTP/3 response cut short");
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(client = %client, error = %e, "HTTP/3 response body failed");
                send.stop_stream(::h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        }
    }
    let _ = Box::pin(send.finish()).await;
}

/// The request body as it arrives, at most [`MAX_REQUEST_BODY`] bytes: past that it fails.
fn request_body(recv: RequestStream<h3_quinn::RecvStream, Bytes>) -> Body {
    DataBody::new(recv, Some(MAX_REQUEST_BODY)).boxed()
}

/// Most bytes of already-received data handed on as one chunk. quinn yields one chunk per
/// QUIC STREAM frame (about 1.2 KiB); a consumer looking for PHT's line ends does better with
/// one line's worth at a time (a line is at most 64 KiB), and one copy is cheaper than dozens
/// of wake-ups.
pub const COALESCE_LIMIT: usize = 64 * 1024;

/// The receiving half of an HTTP/3 request stream, either side.
trait PollData: Send + Unpin + 'static {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>>;
    fn stop(&mut self, code: ::h3::error::Code);
}

impl PollData for RequestStream<h3_quinn::RecvStream, Bytes> {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        self.poll_recv_data(cx)
            .map_ok(|data| data.map(|mut buf| buf.copy_to_bytes(buf.remaining())))
    }

    fn stop(&mut self, code: ::h3::error::Code) {
        self.stop_sending(code);
    }
}

impl PollData for ::h3::client::RequestStream<h3_quinn::RecvStream, Bytes> {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        self.poll_recv_data(cx)
            .map_ok(|data| data.map(|mut buf| buf.copy_to_bytes(buf.remaining())))
    }

    fn stop(&mut self, code: ::h3::error::Code) {
        self.stop_sending(code);
    }
}

/// A message body read from an HTTP/3 stream: what has arrived is handed on in chunks of up to
/// [`COALESCE_LIMIT`] bytes, a single QUIC chunk without a copy; with a `limit`, a body longer
/// than that fails.
struct DataBody<S> {
    stream: Option<S>,
    limit: Option<usize>,
    total: usize,
    // An error met after some data: reported on the next poll.
    error: Option<io::Error>,
}

impl<S: PollData> DataBody<S> {
    fn new(stream: S, limit: Option<usize>) -> Self {
        DataBody {
            stream: Some(stream),
            limit,
            total: 0,
            error: None,
        }
    }
}

impl<S: PollData> hyper::body::Body for DataBody<S> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let mut end: Option<Option<io::Error>> = None;
        loop {
            let len = match (&first, &joined) {
                (_, Some(joined)) => joined.len(),
                (Some(first), None) => first.len(),
                (None, None) => 0,
            };
            if len >= COALESCE_LIMIT {
                break;
            }
            match stream.poll_data(cx) {
                Poll::Pending if len == 0 => return Poll::Pending,
                Poll::Pending => break,
                Poll::Ready(Ok(Some(data))) => {
                    this.total += data.len();
                    if this.limit.is_some_and(|limit| this.total > limit) {
                        stream.stop(::h3::error::Code::H3_EXCESSIVE_LOAD);
                        end = Some(Some(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "HTTP/3 message body longer than {} bytes",
                                this.limit.unwrap_or_default()
                            ),
                        )));
                        break;
                    }
                    match (&mut first, &mut joined) {
                        (_, Some(joined)) => joined.extend_from_slice(&data),
                        (Some(head), None) => {
                            let mut both = BytesMut::with_capacity(head.len() + data.len());
                            both.extend_from_slice(head);
                            both.extend_from_slice(&data);
                            joined = Some(both);
                            first = None;
                        }
                        (None, None) => first = Some(data),
                    }
                }
                Poll::Ready(Ok(None)) => {
                    end = Some(None);
                    break;
                }
                Poll::Ready(Err(e)) => {
                    end = Some(Some(io::Error::other(e)));
                    break;
                }
            }
        }
        if let Some(error) = end {
            this.stream = None;
            this.error = error;
        }
        match joined.map(BytesMut::freeze).or(first) {
            Some(data) if !data.is_empty() => Poll::Ready(Some(Ok(hyper::body::Frame::data(data)))),
            _ => Poll::Ready(this.error.take().map(Err)),
        }
    }
}

/// A UDP socket on `addr` as GOST binds it (`udp4` for an IPv4 literal, both families for an
/// empty host where the system has IPv6).
fn bind_udp(addr: &str) -> io::Result<UdpSocket> {
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} in listen address {addr:?}"),
        )
    };
    let (host, port) = gost_api::split_host_port(addr).ok_or_else(|| invalid("no port"))?;
    let port: u16 = if port.is_empty() {
        0
    } else {
        gost_api::parse_port(port).ok_or_else(|| invalid("invalid port"))?
    };
    if host.is_empty() {
        return udp_socket(
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            true,
        )
        .or_else(|_| {
            udp_socket(
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                false,
            )
        });
    }
    let ip: IpAddr = match host.parse() {
        Ok(ip) => ip,
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
            .next()
            .ok_or_else(|| invalid("unresolvable host"))?
            .ip(),
    };
    udp_socket(SocketAddr::new(ip, port), false)
}

fn udp_socket(addr: SocketAddr, dual_stack: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!dual_stack)?;
    }
    // Best effort: the kernel caps these at its configured maximum.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

type SendRequest = ::h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// One HTTP/3 connection to the node: held by the client while it is the one new requests go
/// on, and by each tunnel whose requests went on it ([`H3Tunnel`]). h3 closes it (with
/// `H3_NO_ERROR`) once the last holder is gone.
/// A client request's stream.
type ClientStream = ::h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

#[derive(Clone)]
struct Session {
    quic: quinn::Connection,
    send: SendRequest,
    /// The oldest tunnel's first request on this connection that has had no answer yet:
    /// when it began, and the connection's count of received datagrams then.
    unanswered: Arc<std::sync::Mutex<Option<(Instant, u64)>>>,
}

impl Session {
    fn open(&self) -> bool {
        self.quic.close_reason().is_none()
    }

    fn id(&self) -> usize {
        self.quic.stable_id()
    }

    fn received(&self) -> u64 {
        self.quic.stats().udp_rx.datagrams
    }

    /// How long the connection may receive nothing after a request went before it is
    /// taken for dead: [`SILENT_AFTER`] and four round trips.
    fn silence_window(&self) -> Duration {
        SILENT_AFTER + self.quic.rtt().saturating_mul(4)
    }

    fn unanswered(&self) -> std::sync::MutexGuard<'_, Option<(Instant, u64)>> {
        self.unanswered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A tunnel's first request is about to go; `received` as [`Session::received`] before.
    fn first_request(&self, received: u64) {
        self.unanswered().get_or_insert((Instant::now(), received));
    }

    /// An answer came: the connection lives.
    fn answered(&self) {
        *self.unanswered() = None;
    }

    /// Whether a tunnel's first request went unanswered, with nothing at all received since,
    /// for the whole [`Session::silence_window`]. Such a request may have given up (its
    /// caller's dial timeout) before it could tell; the next tunnel finds out here.
    fn found_silent(&self) -> bool {
        let mut unanswered = self.unanswered();
        let Some((since, received)) = *unanswered else {
            return false;
        };
        if self.received() != received {
            // Something came after it: alive then.
            *unanswered = None;
            return false;
        }
        since.elapsed() >= self.silence_window()
    }
}

#[derive(Default)]
struct State {
    session: Option<Session>,
    /// The UDP socket (as a quinn endpoint) the current connection was dialled from.
    endpoint: Option<quinn::Endpoint>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl State {
    /// Stops sending new requests on the current connection while it is still open: a
    /// stopping server refused a session on it, sent GOAWAY, or it went silent. The tunnels
    /// on it keep it (h3 closes it after the last one).
    fn retire(&mut self) {
        self.session = None;
    }
}

/// PHT's [`RoundTrip`] over HTTP/3; see the module comment. Each tunnel should use its own
/// [`H3RoundTrip::tunnel`], which keeps its requests on one connection.
pub struct H3RoundTrip {
    node: Address,
    tls: ClientTls,
    crypto: Arc<QuicClientConfig>,
    transport: Arc<TransportConfig>,
    handshake_timeout: Duration,
    state: Mutex<State>,
}

impl H3RoundTrip {
    /// A client for the node at `node`; `tls` must offer ALPN [`ALPN`]. Nothing is dialled
    /// until the first request.
    pub fn new(node: Address, tls: ClientTls, options: &QuicOptions) -> Result<Self, String> {
        let crypto = QuicClientConfig::try_from(tls.config())
            .map_err(|e| format!("TLS configuration unusable for QUIC: {e}"))?;
        Ok(H3RoundTrip {
            node,
            tls,
            crypto: Arc::new(crypto),
            transport: Arc::new(options.transport()?),
            handshake_timeout: options.handshake_timeout,
            state: Mutex::new(State::default()),
        })
    }

    /// A [`RoundTrip`] for one tunnel: see [`H3Tunnel`].
    pub fn tunnel(self: &Arc<Self>) -> H3Tunnel {
        H3Tunnel {
            client: self.clone(),
            on: std::sync::Mutex::new(None),
            moved: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The local address of the UDP socket new connections are dialled from, once one was
    /// bound.
    pub async fn local_addr(&self) -> Option<SocketAddr> {
        let state = self.state.lock().await;
        state.endpoint.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// The connection new requests go on, dialling when there is none open.
    async fn session(&self) -> io::Result<Session> {
        let mut state = self.state.lock().await;
        if let Some(session) = &state.session {
            if session.open() && !session.found_silent() {
                return Ok(session.clone());
            }
            if session.open() {
                tracing::debug!(
                    node = %self.node,
                    "HTTP/3 connection silent since a new tunnel's request; new tunnels go on a new connection"
                );
            }
            state.retire();
        }
        if let Some(at) = state.retry_at {
            tokio::time::sleep_until(at).await;
        }
        match self.dial(&mut state).await {
            Ok(session) => {
                state.session = Some(session.clone());
                state.failures = 0;
                state.retry_at = None;
                Ok(session)
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                let backoff = REDIAL_BACKOFF
                    .saturating_mul(1 << state.failures.min(16).saturating_sub(1))
                    .min(MAX_REDIAL_BACKOFF);
                state.retry_at = Some(Instant::now() + backoff);
                Err(io::Error::new(
                    e.kind(),
                    format!("h3 connection to {}: {e}", self.node),
                ))
            }
        }
    }

    async fn dial(&self, state: &mut State) -> io::Result<Session> {
        let peer = tokio::net::lookup_host(self.node.to_string())
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        // Every connection from a UDP socket of its own: one from the port of the connection
        // before it would be the same flow to whatever balances UDP in front of the server (a
        // Kubernetes Service's conntrack, a reuseport group), which would send it where the
        // old one went: to a stopping server, or a dead one. A socket goes with its
        // connection.
        let unspecified = if peer.is_ipv6() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let socket = udp_socket(SocketAddr::new(unspecified, 0), false)?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config(None),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        state.endpoint = Some(endpoint.clone());
        let server_name = self.tls.server_name(&self.node)?;
        let mut config = quinn::ClientConfig::new(self.crypto.clone());
        config.transport_config(self.transport.clone());
        config.version(QUIC_VERSION);
        let connecting = endpoint
            .connect_with(config, peer, &server_name.to_str())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let handshake = async {
            let quic = connecting.await.map_err(|e| {
                if let quinn::ConnectionError::TransportError(te) = &e
                    && let Some(explained) = crate::tls::explain_untrusted_quic(&te.reason)
                {
                    return io::Error::new(io::ErrorKind::InvalidData, explained);
                }
                io::Error::other(e)
            })?;
            let (driver, send) = ::h3::client::builder()
                .max_field_section_size(MAX_FIELD_SECTION_SIZE)
                .build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone()))
                .await
                .map_err(io::Error::other)?;
            Ok::<_, io::Error>((quic, driver, send))
        };
        let (quic, mut driver, send) = tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "QUIC handshake took longer than {:?}",
                        self.handshake_timeout
                    ),
                )
            })??;
        let node = self.node.clone();
        // The driver handles the connection's control streams (a GOAWAY among them); it ends
        // with the connection.
        tokio::spawn(async move {
            let e = driver.wait_idle().await;
            if !e.is_h3_no_error() {
                tracing::debug!(node = %node, error = %e, "HTTP/3 connection ended");
            }
        });
        Ok(Session {
            quic,
            send,
            unanswered: Arc::default(),
        })
    }

    /// Sends `req` on `pinned` while it is open, else on the current connection; the
    /// response, marked [`Shared`], and the connection it came on.
    ///
    /// A tunnel's first request (`pinned` is `None`: nothing of the tunnel lives on any
    /// server yet) is asked again, once, on a new connection when the one it went on turns
    /// out dead before answering: closed (a server restarted with its key resets it), or
    /// silent, with not even an acknowledgement for [`Session::silence_window`] (a killed
    /// server, or a balancer that now sends the flow to a server that cannot reset it), the
    /// wait for a stream the server would let us open included. Without that, new tunnels
    /// would fail until the idle timeout (30 s) found the connection dead.
    async fn send(
        &self,
        pinned: Option<Session>,
        req: Request<Bytes>,
    ) -> io::Result<(Response<Body>, Session)> {
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        if pinned.is_none() {
            let session = self.session().await?;
            match self.first(&session, &head, &body).await {
                First::Answered(done) => {
                    let (answer, stream) = *done;
                    return Ok(answered(&session, answer, stream));
                }
                First::Failed(e) => return Err(e),
                First::NotOpened(e) => self.leave(&session, &e).await,
                First::Dead(how) => {
                    tracing::debug!(
                        node = %self.node,
                        "HTTP/3 connection {how} before answering a new tunnel; asking again on a new connection"
                    );
                    // Retired rather than closed: a silent connection may still carry
                    // tunnels that will find their way again.
                    self.retire(session.id()).await;
                }
            }
        }
        let (session, mut stream) = self.start(pinned, &head, &body).await?;
        let answer = stream.recv_response().await.map_err(io::Error::other)?;
        Ok(answered(&session, answer, stream))
    }

    /// A tunnel's first request on `session`, watched for the connection's death.
    async fn first(&self, session: &Session, head: &Request<()>, body: &Bytes) -> First {
        let received = session.received();
        session.first_request(received);
        let exchange = async {
            let mut stream = match request_on(session, head, body).await {
                Ok(stream) => stream,
                Err(e) => return First::NotOpened(e),
            };
            match stream.recv_response().await {
                Ok(answer) => First::Answered(Box::new((answer, stream))),
                Err(_) if !session.open() => First::Dead("closed"),
                Err(e) => First::Failed(io::Error::other(e)),
            }
        };
        let silent = async {
            tokio::time::sleep(session.silence_window()).await;
            if session.received() == received {
                return;
            }
            // Something came: the connection lives, and a slow answer is the server's.
            std::future::pending::<()>().await
        };
        tokio::select! {
            first = exchange => first,
            () = silent => First::Dead("silent"),
        }
    }

    /// Sends the request (`head` and `body`) on `pinned` while it is open, else on the
    /// current connection, and once more on a new connection when no stream opens (GOAWAY, a
    /// connection that died since it was last used); the connection and the request's
    /// stream.
    async fn start(
        &self,
        pinned: Option<Session>,
        head: &Request<()>,
        body: &Bytes,
    ) -> io::Result<(Session, ClientStream)> {
        let session = match pinned.filter(Session::open) {
            Some(session) => session,
            None => self.session().await?,
        };
        match request_on(&session, head, body).await {
            Ok(stream) => Ok((session, stream)),
            Err(e) => {
                self.leave(&session, &e).await;
                let session = self.session().await?;
                let stream = request_on(&session, head, body)
                    .await
                    .map_err(io::Error::other)?;
                Ok((session, stream))
            }
        }
    }

    /// Stops using `session` for new requests after a stream could not be opened on it
    /// (`e`).
    async fn leave(&self, session: &Session, e: &StreamError) {
        if matches!(e, StreamError::RemoteClosing { .. }) {
            // GOAWAY: the server finishes the requests it has, and takes no new ones there
            // (h3 refuses to send them).
            tracing::debug!(
                node = %self.node,
                "HTTP/3 server sent GOAWAY; new requests go on a new connection"
            );
            self.retire(session.id()).await;
        } else {
            // The connection may have died since it was last used (nothing was sent on it):
            // drop it and try once more on a new one.
            tracing::debug!(node = %self.node, error = %e, "HTTP/3 request failed, redialling");
            self.forget(session.id()).await;
        }
    }

    /// Drops the connection `id`, closing it, if it is still the current one.
    async fn forget(&self, id: usize) {
        let mut state = self.state.lock().await;
        if state.session.as_ref().is_some_and(|s| s.id() == id)
            && let Some(session) = state.session.take()
        {
            session.quic.close(VarInt::from_u32(0), b"");
        }
    }

    /// Retires the connection `id` ([`State::retire`]) if it is still the current one.
    async fn retire(&self, id: usize) {
        let mut state = self.state.lock().await;
        if state.session.as_ref().is_some_and(|s| s.id() == id) {
            state.retire();
        }
    }
}

/// How a tunnel's first request went ([`H3RoundTrip::first`]).
enum First {
    Answered(Box<(Response<()>, ClientStream)>),
    /// The stream could not be opened.
    NotOpened(StreamError),
    /// The connection is closed, or silent.
    Dead(&'static str),
    Failed(io::Error),
}

/// Opens a request stream on `session` and sends `head` and `body` on it.
async fn request_on(
    session: &Session,
    head: &Request<()>,
    body: &Bytes,
) -> Result<ClientStream, StreamError> {
    let mut stream = session.send.clone().send_request(head.clone()).await?;
    let sent = async {
        if !body.is_empty() {
            stream.send_data(body.clone()).await?;
        }
        stream.finish().await
    };
    if let Err(e) = sent.await {
        // A server that needs no (more) request body may say so with STOP_SENDING before our
        // FIN reached it (RFC 9114 §4.1; a pull's handler drops its empty body at once); its
        // answer still comes. If the connection died, the answer fails.
        tracing::trace!(error = %e, "HTTP/3 request body cut short");
    }
    Ok(stream)
}

/// The response of `answer` on `stream`, marked [`Shared`], and the connection it came on,
/// which lives.
fn answered(
    session: &Session,
    answer: Response<()>,
    stream: ClientStream,
) -> (Response<Body>, Session) {
    session.answered();
    let (_, recv) = stream.split();
    let mut res = answer.map(|()| DataBody::new(recv, None).boxed());
    res.extensions_mut().insert(Shared);
    (res, session.clone())
}

/// For tests: every request as a tunnel's first. Production goes through [`H3Tunnel`].
#[cfg(test)]
#[async_trait]
impl RoundTrip for H3RoundTrip {
    async fn round_trip(&self, req: Request<Bytes>) -> io::Result<Response<Body>> {
        Ok(self.send(None, req).await?.0)
    }
}

/// One tunnel's [`RoundTrip`] over an [`H3RoundTrip`]: its requests go on the connection its
/// last one went on while that one is open, also after the client moved on to a new one for
/// new tunnels (its server stopping): the tunnel's session lives on the server at the end of
/// that connection. It moves when that connection closed or sent GOAWAY, or when a request
/// wants a newer one ([`OpenedAfter`]).
pub struct H3Tunnel {
    client: Arc<H3RoundTrip>,
    on: std::sync::Mutex<Option<Session>>,
    /// Whether the tunnel has left the connection a stopping server refused it on.
    moved: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl RoundTrip for H3Tunnel {
    async fn round_trip(&self, mut req: Request<Bytes>) -> io::Result<Response<Body>> {
        // [`OpenedAfter`]: a stopping server refused the tunnel on the connection it is pinned
        // to. That connection is retired by identity, once, not by comparing dial times with
        // the refusal's: when a burst of new tunnels is refused, the first retires it and
        // dials one new connection, which the others then take (a refusal that came in while
        // it was being dialled is no reason to retire it too). The tunnel then stays on
        // whatever its requests go on, as any tunnel does.
        if req.extensions_mut().remove::<OpenedAfter>().is_some()
            && !self.moved.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let refused = self.pinned().take();
            if let Some(refused) = refused {
                self.client.retire(refused.id()).await;
            }
        }
        let pinned = self.pinned().clone();
        let (res, session) = self.client.send(pinned, req).await?;
        *self.pinned() = Some(session);
        Ok(res)
    }
}

impl H3Tunnel {
    fn pinned(&self) -> std::sync::MutexGuard<'_, Option<Session>> {
        self.on
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use gost_api::TlsConfig;
    use http::{Method, StatusCode};
    use std::collections::VecDeque;

    use http_body_util::{Full, StreamBody};
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::tls::TlsDefaults;

    /// Every wait in these tests ends within this.
    const TEST_TIMEOUT: Duration = Duration::from_secs(20);

    fn server_tls() -> ServerTls {
        static N: AtomicUsize = AtomicUsize::new(0);
        let generated = crate::tls::generate(None).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "gost-h3-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &generated.cert_pem).unwrap();
        std::fs::write(&key, &generated.key_pem).unwrap();
        let own = TlsConfig {
            cert_file: Some(cert.to_string_lossy().into_owned()),
            key_file: Some(key.to_string_lossy().into_owned()),
            ..TlsConfig::default()
        };
        let tls = ServerTls::new("test", Some(&own), &TlsDefaults::new(None), ALPN).unwrap();
        // Read: the server keeps that pair when the files go (tls::reload), and test runs
        // do not pile up directories.
        let _ = std::fs::remove_dir_all(&dir);
        tls
    }

    /// Two servers of one process sharing a certificate get different reset keys (one must
    /// not hand out valid resets for the other's connections); the same server again on the
    /// same address gets the same key.
    #[test]
    fn reset_keys_are_per_address_and_stable() {
        let tls = server_tls();
        let a: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:8444".parse().unwrap();
        assert_eq!(instance_secret(&tls, a), instance_secret(&tls, a));
        assert_ne!(instance_secret(&tls, a), instance_secret(&tls, b));
        assert_ne!(instance_secret(&tls, a), tls.reset_secret());
    }

    fn full(data: impl Into<Bytes>) -> Body {
        Full::new(data.into()).map_err(|e| match e {}).boxed()
    }

    /// Echoes the request body, or streams what `lines` gives for `GET /stream`.
    fn handler(lines: Option<Arc<Mutex<mpsc::Receiver<Bytes>>>>) -> Handler {
        Arc::new(move |req: Request<Body>, _client| {
            let lines = lines.clone();
            Box::pin(async move {
                if req.uri().path() == "/ignore" {
                    // Answers at once; the body is dropped unread (STOP_SENDING to the client).
                    return Response::new(full("ignored"));
                }
                if req.uri().path() == "/stream" {
                    let lines = lines.expect("stream handler");
                    let chunks = futures_util::stream::unfold(lines, |lines| async move {
                        let line = lines.lock().await.recv().await?;
                        Some((Ok(hyper::body::Frame::data(line)), lines))
                    });
                    return Response::new(StreamBody::new(chunks).boxed());
                }
                match req.into_body().collect().await {
                    Ok(body) => Response::new(full(body.to_bytes())),
                    Err(e) => Response::builder()
                        .status(StatusCode::PAYLOAD_TOO_LARGE)
                        .body(full(e.to_string()))
                        .unwrap(),
                }
            })
        })
    }

    /// A server on a loopback port that echoes ([`handler`] without lines).
    fn echo_server() -> Server {
        Server::bind(
            "127.0.0.1:0",
            &server_tls(),
            &QuicOptions::default(),
            handler(None),
        )
        .unwrap()
    }

    fn client(server: &Server) -> H3RoundTrip {
        client_to(server.local_addr())
    }

    fn client_to(addr: SocketAddr) -> H3RoundTrip {
        let tls = ClientTls::new(None, ALPN).unwrap();
        H3RoundTrip::new(Address::from_socket(addr), tls, &QuicOptions::default()).unwrap()
    }

    fn post(path: &str, body: impl Into<Bytes>) -> Request<Bytes> {
        Request::builder()
            .method(Method::POST)
            .uri(format!("https://gost.test{path}"))
            .body(body.into())
            .unwrap()
    }

    async fn body_of(resp: Response<Body>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn echo_and_body_limit() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let server = echo_server();
            let client = client(&server);
            let resp = client.round_trip(post("/echo", "hello")).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(body_of(resp).await, "hello");

            let big = vec![b'x'; MAX_REQUEST_BODY];
            let resp = client.round_trip(post("/echo", big.clone())).await.unwrap();
            assert_eq!(body_of(resp).await.len(), MAX_REQUEST_BODY);

            // A server may stop the request side before it is all sent; the answer counts.
            let resp = client
                .round_trip(post("/ignore", big.clone()))
                .await
                .unwrap();
            assert_eq!(body_of(resp).await, "ignored");

            let too_big = vec![b'x'; MAX_REQUEST_BODY + 1];
            let resp = client.round_trip(post("/echo", too_big)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn response_streams_frame_by_frame() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let (tx, rx) = mpsc::channel(1);
            let server = Server::bind(
                "127.0.0.1:0",
                &server_tls(),
                &QuicOptions::default(),
                handler(Some(Arc::new(Mutex::new(rx)))),
            )
            .unwrap();
            let client = client(&server);
            let get = Request::builder()
                .uri("https://gost.test/stream")
                .body(Bytes::new())
                .unwrap();
            tx.send(Bytes::from_static(b"first\n")).await.unwrap();
            let mut body = client.round_trip(get).await.unwrap().into_body();
            // The second line is produced only after the first arrived: nothing is held back.
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(first, "first\n");
            let (done_tx, done_rx) = oneshot::channel::<()>();
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"second\n")).await.unwrap();
                let _ = done_rx.await;
            });
            let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(second, "second\n");
            drop(done_tx);
            // The handler's stream ended: so does the response.
            assert!(body.frame().await.is_none());
        })
        .await
        .expect("test timed out");
    }

    /// A UDP forwarder in front of a server, one upstream socket per client address (a
    /// flow), as a Service's conntrack is. [`Forwarder::silence`] drops every datagram of the
    /// flows seen so far, both ways, as when their server was killed; new flows still pass.
    struct Forwarder {
        addr: SocketAddr,
        silenced: Arc<std::sync::Mutex<std::collections::HashSet<SocketAddr>>>,
        flows: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
        _task: AbortOnDropHandle<()>,
    }

    impl Forwarder {
        async fn start(server: SocketAddr) -> Forwarder {
            let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let addr = front.local_addr().unwrap();
            let silenced = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
            let flows = Arc::new(std::sync::Mutex::new(Vec::new()));
            let task = {
                let (silenced, flows) = (silenced.clone(), flows.clone());
                tokio::spawn(async move {
                    let mut upstreams = std::collections::HashMap::new();
                    let mut back = tokio::task::JoinSet::new();
                    let mut buf = vec![0u8; 65_535];
                    loop {
                        let Ok((n, client)) = front.recv_from(&mut buf).await else {
                            return;
                        };
                        if silenced.lock().unwrap().contains(&client) {
                            continue;
                        }
                        let upstream = match upstreams.get(&client) {
                            Some(upstream) => Arc::clone(upstream),
                            None => {
                                let upstream =
                                    tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                                upstream.connect(server).await.unwrap();
                                let upstream = Arc::new(upstream);
                                let (up, front, silenced) =
                                    (upstream.clone(), front.clone(), silenced.clone());
                                back.spawn(async move {
                                    let mut buf = vec![0u8; 65_535];
                                    while let Ok(n) = up.recv(&mut buf).await {
                                        if !silenced.lock().unwrap().contains(&client) {
                                            let _ = front.send_to(&buf[..n], client).await;
                                        }
                                    }
                                });
                                upstreams.insert(client, upstream.clone());
                                flows.lock().unwrap().push(client);
                                upstream
                            }
                        };
                        let _ = upstream.send(&buf[..n]).await;
                    }
                })
            };
            Forwarder {
                addr,
                silenced,
                flows,
                _task: AbortOnDropHandle::new(task),
            }
        }

        fn silence(&self) {
            let flows = self.flows.lock().unwrap().clone();
            self.silenced.lock().unwrap().extend(flows);
        }
    }

    /// The connection goes silent (its server killed, its flow blackholed): a new tunnel's
    /// first request, unacknowledged, is asked again on a new connection from a new socket
    /// within about a second, not after the 30 s idle timeout (longer than this test may
    /// run). The silent connection is retired, not closed: its tunnels keep it.
    #[tokio::test]
    async fn a_new_tunnel_leaves_a_silent_connection() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let server = echo_server();
            let forwarder = Forwarder::start(server.local_addr()).await;
            let client = Arc::new(client_to(forwarder.addr));
            let old = client.tunnel();
            let resp = old.round_trip(post("/echo", "first")).await.unwrap();
            assert_eq!(body_of(resp).await, "first");
            let silent = client.session().await.unwrap();
            let socket = client.local_addr().await.unwrap();

            forwarder.silence();
            let new = client.tunnel();
            let resp = new.round_trip(post("/echo", "second")).await.unwrap();
            assert_eq!(body_of(resp).await, "second");
            let on = new.pinned().as_ref().map(Session::id).unwrap();
            assert_ne!(on, silent.id(), "a new connection");
            assert_ne!(
                client.local_addr().await.unwrap(),
                socket,
                "a new UDP socket"
            );
            assert!(silent.open(), "retired, not closed");
            // Later tunnels take the new connection at once.
            let resp = client
                .tunnel()
                .round_trip(post("/echo", "third"))
                .await
                .unwrap();
            assert_eq!(body_of(resp).await, "third");
            assert_eq!(client.session().await.unwrap().id(), on);
        })
        .await
        .expect("test timed out");
    }

    /// A client behind a [`Forwarder`], with `options`.
    async fn forwarded(options: &QuicOptions) -> (Server, Forwarder, Arc<H3RoundTrip>) {
        let server = echo_server();
        let forwarder = Forwarder::start(server.local_addr()).await;
        let client = H3RoundTrip::new(
            Address::from_socket(forwarder.addr),
            ClientTls::new(None, ALPN).unwrap(),
            options,
        )
        .unwrap();
        (server, forwarder, Arc::new(client))
    }

    /// A tunnel whose first request gives up before the connection's silence could be told
    /// (its caller's dial timeout is shorter) leaves the mark: the next tunnel, once the
    /// silence has lasted, goes on a new connection at once.
    #[tokio::test]
    async fn a_silence_outlasting_a_given_up_request_moves_the_next_tunnel() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let (_server, forwarder, client) = forwarded(&QuicOptions::default()).await;
            let resp = client
                .tunnel()
                .round_trip(post("/echo", "first"))
                .await
                .unwrap();
            assert_eq!(body_of(resp).await, "first");
            let silent = client.session().await.unwrap();
            forwarder.silence();
            let gave_up = tokio::time::timeout(
                Duration::from_millis(300),
                client.tunnel().round_trip(post("/echo", "lost")),
            )
            .await;
            assert!(gave_up.is_err(), "answered through a silenced flow");
            tokio::time::sleep(silent.silence_window()).await;
            let next = client.tunnel();
            let resp = tokio::time::timeout(
                Duration::from_millis(900),
                next.round_trip(post("/echo", "next")),
            )
            .await
            .expect("the next tunnel waited out a silence of its own")
            .unwrap();
            assert_eq!(body_of(resp).await, "next");
            assert_ne!(next.pinned().as_ref().unwrap().id(), silent.id());
        })
        .await
        .expect("test timed out");
    }

    /// A connection found dead by its idle timeout (no new tunnel came while it was silent) is
    /// dialled again from a new UDP socket: from the old one, a flow balancer would send the
    /// new connection to the dead server too.
    #[tokio::test]
    async fn a_connection_dead_by_idle_timeout_is_replaced_from_a_new_socket() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let options = QuicOptions {
                max_idle_timeout: Duration::from_millis(600),
                keepalive: Some(Duration::from_millis(200)),
                ..QuicOptions::default()
            };
            let (_server, forwarder, client) = forwarded(&options).await;
            let resp = client
                .tunnel()
                .round_trip(post("/echo", "first"))
                .await
                .unwrap();
            assert_eq!(body_of(resp).await, "first");
            let silent = client.session().await.unwrap();
            forwarder.silence();
            silent.quic.closed().await;
            let resp = client
                .tunnel()
                .round_trip(post("/echo", "after"))
                .await
                .unwrap();
            assert_eq!(body_of(resp).await, "after");
        })
        .await
        .expect("test timed out");
    }

    /// A silent connection at its server's stream limit (its tunnels hold every stream): the
    /// new tunnel's wait for a stream is watched too, and it goes on a new connection.
    #[tokio::test]
    async fn a_silent_connection_at_its_stream_limit_is_left() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let (_lines, rx) = mpsc::channel::<Bytes>(1);
            let options = QuicOptions {
                max_streams: 2,
                ..QuicOptions::default()
            };
            let server = Server::bind(
                "127.0.0.1:0",
                &server_tls(),
                &options,
                handler(Some(Arc::new(Mutex::new(rx)))),
            )
            .unwrap();
            let forwarder = Forwarder::start(server.local_addr()).await;
            let client = Arc::new(client_to(forwarder.addr));
            let mut held = Vec::new();
            for _ in 0..2 {
                let tunnel = client.tunnel();
                let resp = tunnel.round_trip(post("/stream", "")).await.unwrap();
                held.push((tunnel, resp));
            }
            forwarder.silence();
            let resp = client
                .tunnel()
                .round_trip(post("/echo", "new"))
                .await
                .unwrap();
            assert_eq!(body_of(resp).await, "new");
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_connection_and_redial() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let tls = server_tls();
            let server =
                Server::bind("127.0.0.1:0", &tls, &QuicOptions::default(), handler(None)).unwrap();
            let addr = server.local_addr();
            let client = Arc::new(client(&server));
            let requests = (0..50).map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    let resp = client.round_trip(post("/echo", format!("r{i}"))).await?;
                    io::Result::Ok(body_of(resp).await == format!("r{i}"))
                })
            });
            for request in requests.collect::<Vec<_>>() {
                assert!(request.await.unwrap().unwrap());
            }
            let socket = client.local_addr().await.unwrap();
            // Held, not just its id: quinn's stable_id is the connection's address, which a
            // new connection may reuse once the old one is freed.
            let first = client.session().await.unwrap();

            // The server stops for good, closing its connections, and comes back on the same
            // port.
            let release = CancellationToken::new();
            release.cancel();
            server.stop_accepting(release).await;
            drop(server);
            // The port is free once quinn's driver let go of the socket.
            let mut rebound = None;
            for _ in 0..50 {
                match Server::bind(
                    &addr.to_string(),
                    &tls,
                    &QuicOptions::default(),
                    handler(None),
                ) {
                    Ok(server) => {
                        rebound = Some(server);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            let server = rebound.expect("port free again");
            // The client heard the close: its very next request dials again.
            let resp = client
                .round_trip(post("/echo", "again"))
                .await
                .expect("the first request after the restart");
            assert_eq!(body_of(resp).await, "again");
            assert_ne!(
                client.session().await.unwrap().id(),
                first.id(),
                "a new connection"
            );
            assert_ne!(
                client.local_addr().await.unwrap(),
                socket,
                "every connection has a UDP socket of its own"
            );
            drop(server);
        })
        .await
        .expect("test timed out");
    }

    /// New tunnels refused together by a stopping server (each refusal seen after the first
    /// retry had dialled its new connection, as when they arrive during its handshake) all
    /// move to that one new connection: one handshake and one UDP socket, not one each.
    #[tokio::test]
    async fn a_burst_of_refused_tunnels_moves_to_one_new_connection() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let server = echo_server();
            let client = Arc::new(client(&server));
            let tunnels: Vec<H3Tunnel> = (0..4).map(|_| client.tunnel()).collect();
            for tunnel in &tunnels {
                let resp = tunnel.round_trip(post("/echo", "first")).await.unwrap();
                assert_eq!(body_of(resp).await, "first");
            }
            // Held: a freed connection's id may be reused.
            let refused = client.session().await.unwrap();
            for tunnel in &tunnels {
                let mut again = post("/echo", "again");
                again.extensions_mut().insert(OpenedAfter(Instant::now()));
                let resp = tunnel.round_trip(again).await.unwrap();
                assert_eq!(body_of(resp).await, "again");
            }
            let on: std::collections::BTreeSet<usize> = tunnels
                .iter()
                .map(|t| t.pinned().as_ref().map(Session::id).unwrap())
                .collect();
            assert_eq!(on.len(), 1, "one new connection for all: {on:?}");
            assert!(!on.contains(&refused.id()), "off the refusing connection");
            assert_eq!(client.session().await.unwrap().id(), *on.first().unwrap());
        })
        .await
        .expect("test timed out");
    }

    /// A tunnel refused on the current connection (a stopping server; it asks again with
    /// [`OpenedAfter`]) gets a new connection, from a new UDP socket so that a flow balancer
    /// may send it elsewhere; a tunnel on the old connection stays on it, and the old
    /// connection closes once that tunnel is gone.
    #[tokio::test]
    async fn a_newer_connection_comes_from_a_new_socket_and_the_old_stays_with_its_tunnels() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let server = echo_server();
            let client = Arc::new(client(&server));
            let tunnel = client.tunnel();
            let resp = tunnel.round_trip(post("/echo", "first")).await.unwrap();
            assert_eq!(body_of(resp).await, "first");
            let old = client.session().await.unwrap();
            let socket = client.local_addr().await.unwrap();

            // Another tunnel, refused there, asks again.
            let refused = client.tunnel();
            let resp = refused.round_trip(post("/echo", "refused")).await.unwrap();
            assert_eq!(body_of(resp).await, "refused");
            let mut newer = post("/echo", "newer");
            newer.extensions_mut().insert(OpenedAfter(Instant::now()));
            let resp = refused.round_trip(newer).await.unwrap();
            assert!(resp.extensions().get::<Shared>().is_some());
            assert_eq!(body_of(resp).await, "newer");
            let new = client.session().await.unwrap();
            assert_ne!(new.id(), old.id(), "a new connection");
            assert_ne!(
                client.local_addr().await.unwrap(),
                socket,
                "a new UDP socket"
            );

            let resp = tunnel.round_trip(post("/echo", "still")).await.unwrap();
            assert_eq!(body_of(resp).await, "still");
            assert_eq!(
                tunnel.pinned().as_ref().map(Session::id),
                Some(old.id()),
                "the tunnel stays on its connection"
            );
            let quic = old.quic.clone();
            drop(old);
            assert!(quic.close_reason().is_none(), "kept for the tunnel");
            drop(tunnel);
            match quic.closed().await {
                quinn::ConnectionError::LocallyClosed
                | quinn::ConnectionError::ApplicationClosed(_) => {}
                other => panic!("the retired connection ended by {other}"),
            }
            // New requests stay on the new connection.
            let resp = client.round_trip(post("/echo", "after")).await.unwrap();
            assert_eq!(body_of(resp).await, "after");
            assert_eq!(client.session().await.unwrap().id(), new.id());
        })
        .await
        .expect("test timed out");
    }

    /// Time for a GOAWAY to cross loopback and be read by the client's driver: milliseconds.
    const GOAWAY_SETTLE: Duration = Duration::from_millis(500);

    /// A server's GOAWAY (here h3's own server, as ours sends none): the client sends its next
    /// request on a new connection, from a new UDP socket, without closing the old one, whose
    /// open response still arrives whole.
    #[tokio::test]
    async fn after_a_goaway_new_requests_go_on_a_new_connection_and_open_ones_finish() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let crypto = QuicServerConfig::try_from(server_tls().config()).unwrap();
            let endpoint = quinn::Endpoint::server(
                quinn::ServerConfig::with_crypto(Arc::new(crypto)),
                "127.0.0.1:0".parse().unwrap(),
            )
            .unwrap();
            let addr = endpoint.local_addr().unwrap();
            let (goaway_tx, goaway_rx) = oneshot::channel::<()>();
            let (finish_tx, finish_rx) = oneshot::channel::<()>();
            let server = tokio::spawn(async move {
                let h3 = |quic| async move {
                    ::h3::server::builder()
                        .build::<_, Bytes>(h3_quinn::Connection::new(quic))
                        .await
                        .unwrap()
                };
                // The first connection's one request is answered after its GOAWAY.
                let mut first = h3(endpoint.accept().await.unwrap().await.unwrap()).await;
                let resolver = first.accept().await.unwrap().unwrap();
                let (_, mut held) = resolver.resolve_request().await.unwrap();
                held.send_response(Response::new(())).await.unwrap();
                first.shutdown(0).await.unwrap();
                goaway_tx.send(()).unwrap();
                let mut second = h3(endpoint.accept().await.unwrap().await.unwrap()).await;
                let resolver = second.accept().await.unwrap().unwrap();
                let (_, mut stream) = resolver.resolve_request().await.unwrap();
                stream.send_response(Response::new(())).await.unwrap();
                stream.send_data(Bytes::from_static(b"new")).await.unwrap();
                stream.finish().await.unwrap();
                finish_rx.await.unwrap();
                held.send_data(Bytes::from_static(b"finished"))
                    .await
                    .unwrap();
                held.finish().await.unwrap();
                // Both connections stay up until the client has read everything.
                (first, second, endpoint)
            });
            let client = Arc::new(
                H3RoundTrip::new(
                    Address::from_socket(addr),
                    ClientTls::new(None, ALPN).unwrap(),
                    &QuicOptions::default(),
                )
                .unwrap(),
            );
            let get = Request::get("https://gost.test/held")
                .body(Bytes::new())
                .unwrap();
            let held = client.round_trip(get).await.unwrap();
            let old = client.session().await.unwrap();
            let socket = client.local_addr().await.unwrap();
            goaway_rx.await.unwrap();
            tokio::time::sleep(GOAWAY_SETTLE).await;

            let resp = client.round_trip(post("/new", "x")).await.unwrap();
            assert_eq!(body_of(resp).await, "new");
            assert_ne!(client.session().await.unwrap().id(), old.id());
            assert_ne!(
                client.local_addr().await.unwrap(),
                socket,
                "a new UDP socket"
            );
            assert!(old.quic.close_reason().is_none(), "the old one left open");
            finish_tx.send(()).unwrap();
            assert_eq!(body_of(held).await, "finished");
            drop(server.await.unwrap());
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn a_stopped_server_serves_its_connections_until_released_then_closes_them() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let server = echo_server();
            let client = client(&server);
            let resp = client.round_trip(post("/echo", "before")).await.unwrap();
            assert_eq!(body_of(resp).await, "before");
            let quic = client
                .state
                .lock()
                .await
                .session
                .as_ref()
                .unwrap()
                .quic
                .clone();

            let release = CancellationToken::new();
            let lingering = tokio::spawn(server.stop_accepting(release.clone()));
            drop(server);
            // Draining: the connection still carries requests (a tunnel's next push).
            let resp = client.round_trip(post("/echo", "draining")).await.unwrap();
            assert_eq!(body_of(resp).await, "draining");
            assert!(!lingering.is_finished());

            // Stopped for good: the client is told, with HTTP/3's "no error".
            release.cancel();
            lingering.await.unwrap();
            match quic.closed().await {
                quinn::ConnectionError::ApplicationClosed(close) => {
                    assert_eq!(close.error_code, STOPPED_CODE);
                    assert_eq!(&close.reason[..], STOPPED_REASON);
                }
                other => panic!("closed by {other}, not by the server's close"),
            }
        })
        .await
        .expect("test timed out");
    }

    /// Chunks that are ready one after the other, then `Pending` when none is left (or the
    /// end, once `ended`).
    struct Ready {
        chunks: VecDeque<Bytes>,
        ended: bool,
    }

    impl PollData for Ready {
        fn poll_data(&mut self, _: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
            match self.chunks.pop_front() {
                Some(chunk) => Poll::Ready(Ok(Some(chunk))),
                None if self.ended => Poll::Ready(Ok(None)),
                None => Poll::Pending,
            }
        }

        fn stop(&mut self, _: ::h3::error::Code) {}
    }

    fn poll(body: &mut DataBody<Ready>) -> Poll<Option<io::Result<Bytes>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        hyper::body::Body::poll_frame(Pin::new(body), &mut cx)
            .map(|f| f.map(|f| f.map(|f| f.into_data().unwrap())))
    }

    fn ready(sizes: &[usize], ended: bool) -> Ready {
        Ready {
            chunks: sizes
                .iter()
                .enumerate()
                .map(|(i, n)| Bytes::from(vec![i as u8; *n]))
                .collect(),
            ended,
        }
    }

    #[test]
    fn ready_chunks_are_joined_up_to_the_limit() {
        let mut body = DataBody::new(ready(&[1000, 1000, 1000], false), None);
        let Poll::Ready(Some(Ok(data))) = poll(&mut body) else {
            panic!("data expected")
        };
        assert_eq!(data.len(), 3000);
        assert_eq!((data[0], data[1000], data[2999]), (0, 1, 2));
        assert!(poll(&mut body).is_pending());

        let chunk = 40 * 1024;
        let mut body = DataBody::new(ready(&[chunk, chunk, chunk], true), None);
        let Poll::Ready(Some(Ok(data))) = poll(&mut body) else {
            panic!("data expected")
        };
        assert_eq!(data.len(), 2 * chunk, "stops once the limit is reached");
        let Poll::Ready(Some(Ok(data))) = poll(&mut body) else {
            panic!("data expected")
        };
        assert_eq!(data.len(), chunk);
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[test]
    fn a_body_over_its_limit_fails_after_the_data_before_it() {
        let mut body = DataBody::new(ready(&[6, 6], true), Some(10));
        let Poll::Ready(Some(Ok(data))) = poll(&mut body) else {
            panic!("data expected")
        };
        assert_eq!(data.len(), 6);
        let Poll::Ready(Some(Err(e))) = poll(&mut body) else {
            panic!("error expected")
        };
        assert!(e.to_string().contains("longer than 10 bytes"), "{e}");
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[test]
    fn options_from_metadata() {
        let mut md = Metadata::default();
        assert_eq!(
            QuicOptions::from_metadata(&md, true).unwrap().keepalive,
            Some(DEFAULT_KEEPALIVE_PERIOD)
        );
        assert_eq!(
            QuicOptions::from_metadata(&md, false).unwrap(),
            QuicOptions::default()
        );
        md.insert_str("keepalive", "true");
        md.insert_str("ttl", "3s");
        md.insert_str("handshakeTimeout", "2s");
        md.insert_str("maxIdleTimeout", "1m");
        md.insert_str("maxStreams", "7");
        let options = QuicOptions::from_metadata(&md, false).unwrap();
        assert_eq!(options.keepalive, Some(Duration::from_secs(3)));
        assert_eq!(options.handshake_timeout, Duration::from_secs(2));
        assert_eq!(options.max_idle_timeout, Duration::from_secs(60));
        assert_eq!(options.max_streams, 7);
        md.insert_str("keepalive", "false");
        assert_eq!(
            QuicOptions::from_metadata(&md, true).unwrap().keepalive,
            None
        );
        md.insert_str("maxStreams", "-1");
        assert!(
            QuicOptions::from_metadata(&md, true)
                .unwrap_err()
                .contains("maxStreams")
        );
    }

    #[test]
    fn ipv4_literal_binds_ipv4_only() {
        let socket = bind_udp("127.0.0.1:0").unwrap();
        assert!(socket.local_addr().unwrap().is_ipv4());
        // An empty host: every interface (both families where the system has IPv6).
        assert!(
            bind_udp(":0")
                .unwrap()
                .local_addr()
                .unwrap()
                .ip()
                .is_unspecified()
        );
        assert!(
            bind_udp("127.0.0.1:x")
                .unwrap_err()
                .to_string()
                .contains("port")
        );
    }
}
