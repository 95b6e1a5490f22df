//! The `http` handler: an HTTP/1 proxy serving CONNECT tunnels and forwarding plain HTTP
//! requests, with Basic authentication (gost-wire.md §4).
//!
//! hyper parses and frames the client's requests; this module decides what to do with each
//! one. A CONNECT that succeeds answers exactly `HTTP/1.1 200 Connection established` with
//! GOST's `Proxy-Agent`, then hands the raw client stream (with anything the client already
//! pipelined) to the tunnel relay. Other requests are sent on in origin form over a fresh
//! upstream connection dialled through the router, so through a chain they become CONNECTs to
//! the target, as in GOST. An upgrade request (WebSocket) keeps its `Connection: Upgrade` and
//! `Upgrade`; when the target switches protocols the `101` is relayed and the two connections
//! become a tunnel.
//!
//! With probe resistance (`probeResist`, [`super::probe`]) a request that fails authentication
//! gets a decoy instead of the 407. hyper hands the connection back for it: decoys are written
//! byte for byte as GOST writes them (a 200 to a CONNECT with a page as body, which hyper would
//! take for a tunnel), and a `host:` decoy gets the request and the rest of the connection.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::probe::{self, Answer, ProbeResistance};
use super::{Handler, HandlerEnv, OwnForward, run_tunnel, run_uncounted_tunnel};
use crate::addr::Address;
use crate::auth::Verdict;
use crate::chain::{DialError, DialErrorKind, DialFor};
use crate::codec::http::{hidden_target, proxy_target};
use crate::conn::{BoxConn, Conn, Prefixed};

/// Largest request head accepted unless the handler's `maxHeaderSize` says otherwise. Real
/// proxy requests are a few KiB; a larger head is answered with 431 rather than buffered.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Smallest `maxHeaderSize` accepted: a CONNECT line with a long host name plus
/// `Proxy-Authorization` and a `User-Agent` already take several hundred bytes, so a limit
/// under 1 KiB would refuse ordinary clients.
pub const MIN_HEADER_SIZE_LIMIT: usize = 1024;

/// Largest `maxHeaderSize` accepted: each connection may buffer this much before its head is
/// complete, so 10,000 connections at 1 MiB already reach 10 GiB; nothing a proxy client
/// sends needs more.
pub const MAX_HEADER_SIZE_LIMIT: usize = 1024 * 1024;

/// Most header fields hyper parses in one request or response head (its own default is 100).
/// GOST (Go's parser) counts none, only bytes; a request is bounded by `maxHeaderSize`, and a
/// target's answer with more than 100 fields (many `Set-Cookie`, say) must still reach the
/// client rather than become a 502. hyper takes room for this many fields for every head it
/// parses (64 bytes each), so it is not unbounded either: with a limit set it allocates them
/// on the heap for each parse (64 KiB, freed at once) instead of on the stack, a few
/// microseconds per head.
pub(crate) const MAX_HEADER_FIELDS: usize = 1024;

/// hyper's smallest read buffer (it panics below this). Limits under it are enforced on the
/// parsed head instead, see [`head_size`].
const HYPER_MIN_BUF_SIZE: usize = 8192;

/// The size of a request head as sent on HTTP/1: the request line and each header line with
/// their line ends, and the blank line. HTTP/2 heads are measured the same way.
pub(crate) fn head_size(method: &Method, uri: &Uri, headers: &HeaderMap) -> usize {
    let request_line = method.as_str().len() + 1 + uri.to_string().len() + " HTTP/1.1\r\n".len();
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
        .sum();
    request_line + fields + "\r\n".len()
}

/// How long a connection that has sent no request yet is kept, once its service stops or its
/// handler is replaced, for a first request that may be on its way.
pub const FIRST_REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// GOST's `Proxy-Agent` value, overridable with `proxyAgent` metadata.
pub const DEFAULT_PROXY_AGENT: &str = "gost/3.0";

/// GOST's authentication realm, overridable with `authBasicRealm` metadata.
pub const DEFAULT_REALM: &str = "gost";

type Body = BoxBody<Bytes, hyper::Error>;

/// Serves HTTP proxy clients.
pub struct HttpHandler {
    shared: Arc<Shared>,
}

struct Shared {
    env: Arc<HandlerEnv>,
    proxy_agent: HeaderValue,
    // `header` metadata: added to every answer of the proxy's own, as GOST does.
    headers: HeaderMap,
    challenge: HeaderValue,
    probe: Option<ProbeResistance>,
}

/// Lets answering a request take the connection from hyper (see [`Shared::refuse`]).
#[derive(Default)]
struct ConnControl {
    takeover: Mutex<Option<Takeover>>,
    signal: Notify,
    /// Whether a request has reached the handler on this connection.
    served: std::sync::atomic::AtomicBool,
}

/// What is done with a connection taken from hyper.
enum Takeover {
    /// Write this answer and close.
    Answer(Bytes),
    /// Relay the client's request head, re-written, then its stream to the `host:` decoy.
    Pipe {
        head: Bytes,
        decoy: TcpStream,
        addr: Address,
    },
}

impl ConnControl {
    fn take_over(&self, takeover: Takeover) {
        *self.takeover.lock().unwrap_or_else(|e| e.into_inner()) = Some(takeover);
        self.signal.notify_one();
    }

    fn takeover(&self) -> Option<Takeover> {
        self.takeover
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl HttpHandler {
    /// The handler's probe resistance, which the `http2` handler shares for its own requests.
    pub(super) fn probe(&self) -> Option<&ProbeResistance> {
        self.shared.probe.as_ref()
    }

    /// A handler with the environment's auth, router and metadata (`proxyAgent`, `header`,
    /// `authBasicRealm`, `probeResist`, `knock`).
    pub fn new(env: Arc<HandlerEnv>) -> Result<Self, String> {
        let md = &env.metadata;
        let agent = md
            .string(&["proxyAgent", "http.proxyAgent"])
            .unwrap_or_else(|| DEFAULT_PROXY_AGENT.to_string());
        let realm = md
            .string(&["authBasicRealm"])
            .unwrap_or_else(|| DEFAULT_REALM.to_string());
        let proxy_agent = HeaderValue::from_str(&agent)
            .map_err(|_| format!("metadata `proxyAgent`: {agent:?} is not a valid header value"))?;
        let headers = crate::dialer::h2::header_map(md)?;
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .map_err(|_| format!("metadata `authBasicRealm`: {realm:?} is not a valid realm"))?;
        Ok(HttpHandler {
            shared: Arc::new(Shared {
                probe: ProbeResistance::from_metadata(md)?,
                env,
                proxy_agent,
                headers,
                challenge,
            }),
        })
    }
}

#[async_trait]
impl Handler for HttpHandler {
    async fn handle(&self, conn: BoxConn, client: SocketAddr) {
        let shared = self.shared.clone();
        let control = Arc::new(ConnControl::default());
        // Where the connection was accepted: a request on it may be one of this process's
        // forwarded requests come back (checked per request, as the request is written only
        // once its forwarding socket is noted).
        let served_at = conn.tcp_local_addr();
        let service = {
            let control = control.clone();
            let super::ConnSignals {
                retired, stopping, ..
            } = super::signals();
            service_fn(move |req| {
                let shared = shared.clone();
                let control = control.clone();
                let retired = retired.clone();
                let stopping = stopping.clone();
                control
                    .served
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let connect = req.method() == Method::CONNECT;
                async move {
                    let mut response = shared.serve(req, client, served_at, &control).await;
                    // Served by a handler a reload has replaced, or by a service that
                    // stops: the connection ends after this answer, so that the next
                    // request meets the new handler, or none. A tunnel's answer is left
                    // alone.
                    let tunnel = response.status() == StatusCode::SWITCHING_PROTOCOLS
                        || (connect && response.status().is_success());
                    if (retired.is_cancelled() || stopping.is_cancelled()) && !tunnel {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let mut connection = http1::Builder::new()
            .timer(TokioTimer::new())
            // A client may end its side once its request is sent (`nc -N`, HTTP/1.0 tools);
            // its answer still goes out, as from GOST (Go's server).
            .half_close(true)
            .header_read_timeout(self.shared.env.handshake_timeout)
            .max_buf_size(self.shared.env.max_header_size.max(HYPER_MIN_BUF_SIZE))
            .max_headers(MAX_HEADER_FIELDS)
            .title_case_headers(true)
            .auto_date_header(false)
            .serve_connection(TokioIo::new(conn), service)
            .with_upgrades();
        // When the service stops, or a reload replaces the handler, a connection that has
        // served requests ends: at once when it waits for the next one, after the answer
        // (with `Connection: close`) when one is being served. One that has not, accepted
        // just before, has its first request answered (by the handler it was accepted for,
        // with `Connection: close`) and then ends, as its request may be on its way and a
        // client that gets nothing on a fresh connection does not ask again. It waits
        // [`FIRST_REQUEST_WAIT`] for it to begin (no longer than the handshake timeout nor,
        // when the service stops, its grace period): a request on its way arrives within a
        // round trip, and a longer wait would let a connection opened in advance (as browsers
        // keep them) hold a stop, or be served by credentials a reload revoked.
        let super::ConnSignals {
            retired, stopping, ..
        } = super::signals();
        let mut retiring = std::pin::pin!(async {
            tokio::select! {
                () = stopping.cancelled() => {}
                () = retired.cancelled() => {}
            }
            if !control.served.load(std::sync::atomic::Ordering::Relaxed) {
                // A request begun by then is answered before the connection closes.
                tokio::time::sleep(FIRST_REQUEST_WAIT).await;
            }
        });
        let mut shutting_down = false;
        let result = loop {
            tokio::select! {
                // Retiring first: when a reload's swap and a client's next request are both
                // in by the time this task runs, the request must not be read by the handler
                // the reload replaced (an old password would work once more).
                biased;
                () = &mut retiring, if !shutting_down => {
                    shutting_down = true;
                    std::pin::Pin::new(&mut connection).graceful_shutdown();
                }
                result = &mut connection => break result,
                () = control.signal.notified() => {
                    // The request is never answered through hyper, which has so written
                    // nothing for it; hyper gives back the stream and what it read past the
                    // request head.
                    if let (Some(takeover), Some(parts)) = (control.takeover(), connection.into_parts()) {
                        self.shared
                            .take_over(parts.io.into_inner(), parts.read_buf, takeover, client)
                            .await;
                    }
                    return;
                }
            }
        };
        if let Err(e) = result {
            // An HTTP/2 client that skipped the upgrade (prior knowledge): hyper closes
            // without a word; it is answered as GOST answers its `PRI * HTTP/2.0`. hyper
            // tells the preface only once its first 24 bytes are in; one split earlier (no
            // HTTP/2 client does that) gets hyper's own 400, with or without credentials.
            if e.is_parse_version_h2() {
                if let Some(parts) = connection.into_parts() {
                    self.shared
                        .http2_preface(parts.io.into_inner(), parts.read_buf, client)
                        .await;
                }
                return;
            }
            // Garbage or an oversized head, which hyper answered (400, 431).
            if e.is_parse() || e.is_parse_too_large() {
                crate::metrics::handler_error(&self.shared.env.service, client);
            }
            tracing::debug!(service = %self.shared.env.service, client = %client, error = %e, "http connection ended");
        }
    }
}

impl Shared {
    async fn serve(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
        served_at: Option<SocketAddr>,
        control: &ConnControl,
    ) -> Response<Body> {
        let env = &self.env;
        if head_size(req.method(), req.uri(), req.headers()) > env.max_header_size {
            tracing::debug!(service = %env.service, client = %client, limit = env.max_header_size, "request head too large");
            return self.error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        let verdict = super::proxy_auth(env, req.headers(), client, "http");
        if !verdict.accepted() {
            return self.refuse(&req, verdict, control).await;
        }
        if OwnForward::is_own(client, served_at) {
            // A request this process forwarded came back to it: its `Host` leads to this
            // service. Passing it on again would repeat until no socket is left.
            crate::metrics::handler_error(&env.service, client);
            tracing::warn!(service = %env.service, client = %client, host = ?req.headers().get(header::HOST), "forwarded request came back to this service; refused");
            return self.error(StatusCode::LOOP_DETECTED);
        }
        if is_udp_request(req.headers()) {
            // GOST's UDP relay over HTTP (`X-Gost-Protocol: udp`), which gost-rs does not
            // implement: refused as GOST refuses it when `udp` is off, never taken for a TCP
            // tunnel.
            tracing::warn!(service = %env.service, client = %client, "UDP relay over HTTP (X-Gost-Protocol: udp) is not supported; refused with 403");
            let mut response = self.error(StatusCode::FORBIDDEN);
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            return response;
        }
        let uri = req.uri();
        let host_header = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        // A GOST v2 client may hide the real target in `Gost-Target` (§4.1); it replaces the
        // request's own host, as in GOST.
        let hidden = hidden_target(req.headers());
        let target = match proxy_target(
            req.method().as_str(),
            uri.scheme_str(),
            match hidden {
                Some(_) => None,
                None => uri.authority().map(|a| a.as_str()),
            },
            hidden.as_deref().or(host_header),
        ) {
            Ok(target) => target,
            Err(e) => {
                crate::metrics::handler_error(&env.service, client);
                tracing::debug!(service = %env.service, client = %client, error = %e, "bad proxy request");
                return self.error(StatusCode::BAD_REQUEST);
            }
        };
        let user = super::proxy_user(env, req.headers());
        let dial_for = DialFor {
            client: client.ip(),
            user: user.as_deref(),
        };
        let dialed = self.env.router.dial(&target, dial_for).await;
        // Not kept while a forwarded request runs.
        drop(user);
        let upstream = match dialed {
            Ok(upstream) => upstream,
            Err(e) => return self.dial_failed(&e, client),
        };
        if req.method() == Method::CONNECT {
            self.connect(req, target, upstream, client)
        } else {
            self.forward(req, target, upstream, client).await
        }
    }

    /// Answers `200 Connection established` and relays the client's stream, once hyper hands
    /// it over, to `upstream`.
    fn connect(
        &self,
        req: Request<Incoming>,
        target: Address,
        upstream: BoxConn,
        client: SocketAddr,
    ) -> Response<Body> {
        let env = self.env.clone();
        super::spawn_tunnel(&self.env.tunnels, async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let conn = into_conn(upgraded);
                    run_tunnel(&env, "http", client, &target, conn, upstream).await;
                }
                Err(e) => {
                    tracing::debug!(service = %env.service, client = %client, error = %e, "CONNECT client went away")
                }
            }
        });
        let mut response = Response::new(empty());
        response
            .extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(
                b"Connection established",
            ));
        // GOST's exact answer: `Proxy-Agent` and nothing else, not the `header` map.
        response.headers_mut().insert(
            HeaderName::from_static("proxy-agent"),
            self.proxy_agent.clone(),
        );
        response
    }

    /// Sends the request on in origin form over `upstream` and returns the target's response;
    /// a `101 Switching Protocols` to an upgrade request turns both connections into a tunnel.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        target: Address,
        upstream: BoxConn,
        client: SocketAddr,
    ) -> Response<Body> {
        // Kept with the upstream connection's task, so for as long as the socket is open.
        let own = OwnForward::note(&upstream);
        // The target's answer is timed from when the request, body included, is in the socket.
        let sending = Arc::new(Sending::default());
        let upstream = SendWatch::boxed(
            super::Metered::boxed(&self.env, client, upstream),
            sending.clone(),
        );
        let handshake = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .max_headers(MAX_HEADER_FIELDS)
            .handshake::<_, SentBody>(TokioIo::new(upstream))
            .await;
        let (mut sender, connection) = match handshake {
            Ok(parts) => parts,
            Err(e) => {
                crate::metrics::handler_error(&self.env.service, client);
                tracing::warn!(service = %self.env.service, client = %client, target = %target, error = %e, "upstream HTTP handshake failed");
                return self.error(StatusCode::BAD_GATEWAY);
            }
        };
        let service = self.env.service.clone();
        // Cancelled when the target is given up on, which closes the connection to it.
        let abandon = tokio_util::sync::CancellationToken::new();
        let abandoned = abandon.clone();
        super::spawn_tunnel(&self.env.tunnels, async move {
            let _own = own;
            tokio::select! {
                ended = connection.with_upgrades() => {
                    if let Err(e) = ended {
                        let error = crate::error_chain(&e);
                        tracing::debug!(service = %service, error = %error, "upstream HTTP connection ended");
                    }
                }
                () = abandoned.cancelled() => {}
            }
        });
        // hyper offers the client's stream for an HTTP/1.1 request with `Upgrade`, once the
        // response is a 101.
        let upgrade =
            upgrade_protocol(req.headers()).zip(req.extensions_mut().remove::<OnUpgrade>());
        prepare_forwarded(&mut req, &target);
        if let Some((protocol, _)) = &upgrade {
            let headers = req.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        tracing::debug!(
            service = %self.env.service, protocol = "http", client = %client, target = %target,
            method = %req.method(), "forwarding"
        );
        let req = req.map(|body| SentBody::new(body, sending.clone()));
        let answer = sender.send_request(req);
        let answer = match self.env.response_timeout {
            None => answer.await,
            Some(limit) => {
                let waited = async {
                    sending.sent.notified().await;
                    tokio::time::sleep(limit).await;
                };
                tokio::select! {
                    answer = answer => answer,
                    () = waited => {
                        abandon.cancel();
                        crate::metrics::handler_error(&self.env.service, client);
                        tracing::warn!(
                            service = %self.env.service, client = %client, target = %target,
                            timeout = ?limit, "target did not answer in time"
                        );
                        return self.error(StatusCode::GATEWAY_TIMEOUT);
                    }
                }
            }
        };
        match answer {
            Ok(response) => {
                tracing::info!(
                    service = %self.env.service, protocol = "http", client = %client, target = %target,
                    status = response.status().as_u16(), "forwarded"
                );
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    return self.switch_protocols(response, upgrade, target, client);
                }
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                if parts.headers.contains_key(header::TRANSFER_ENCODING) {
                    // Both framings (RFC 9112 §6.3: Transfer-Encoding wins), which hyper's
                    // server refuses to send on; the body is re-framed anyway.
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => {
                crate::metrics::handler_error(&self.env.service, client);
                // hyper's own text ("error writing a body to connection") hides the cause,
                // such as the tunnel's write failing; its sources name it.
                let error = crate::error_chain(&e);
                tracing::warn!(service = %self.env.service, client = %client, target = %target, error = %error, "forwarding failed");
                self.error(StatusCode::BAD_GATEWAY)
            }
        }
    }

    /// Relays the target's `101` to the client and then bytes both ways, as a tunnel, once hyper
    /// hands over both streams. Refused (502) when the request asked for no upgrade or for
    /// another protocol than the target switched to, as GOST does.
    fn switch_protocols(
        &self,
        mut response: Response<Incoming>,
        upgrade: Option<(HeaderValue, OnUpgrade)>,
        target: Address,
        client: SocketAddr,
    ) -> Response<Body> {
        let switched = upgrade_protocol(response.headers());
        let client_upgrade = match (upgrade, &switched) {
            (Some((requested, client_upgrade)), Some(switched))
                if requested
                    .as_bytes()
                    .eq_ignore_ascii_case(switched.as_bytes()) =>
            {
                client_upgrade
            }
            (requested, _) => {
                crate::metrics::handler_error(&self.env.service, client);
                tracing::warn!(
                    service = %self.env.service, client = %client, target = %target,
                    requested = ?requested.map(|(protocol, _)| protocol), switched = ?switched,
                    "target switched to a protocol the client did not ask for"
                );
                return self.error(StatusCode::BAD_GATEWAY);
            }
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let env = self.env.clone();
        super::spawn_tunnel(&self.env.tunnels, async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                // The upstream stream is the metered one of `forward`, which counts the bytes.
                Ok((client_io, upstream_io)) => {
                    run_uncounted_tunnel(
                        &env,
                        "http",
                        client,
                        &target,
                        into_conn(client_io),
                        into_conn(upstream_io),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::debug!(service = %env.service, client = %client, error = %e, "upgrade abandoned")
                }
            }
        });
        let (mut parts, _) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = switched {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            parts.headers.insert(header::UPGRADE, protocol);
        }
        Response::from_parts(parts, empty())
    }

    fn dial_failed(&self, e: &DialError, client: SocketAddr) -> Response<Body> {
        crate::metrics::handler_error(&self.env.service, client);
        tracing::warn!(service = %self.env.service, client = %client, error = %e, "upstream dial failed");
        self.error(match e.kind {
            DialErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        })
    }

    /// Answers a request that failed authentication: with the 407, or with probe resistance's
    /// decoy unless the request knocks. Every refused request gets the decoy, also those of a
    /// client over the failure limit: a 407 then would give the proxy away. A decoy is never
    /// answered through hyper: the connection is taken from it instead (`handle`).
    async fn refuse(
        &self,
        req: &Request<Incoming>,
        verdict: Verdict,
        control: &ConnControl,
    ) -> Response<Body> {
        let decoy = match &self.probe {
            Some(probe) => probe.decoy(req.uri(), verdict, &self.env.service).await,
            None => None,
        };
        let Some(answer) = decoy else {
            return self.auth_required(req.headers());
        };
        let takeover = match answer {
            Answer::Respond(decoy) => Takeover::Answer(probe::http1_answer(&decoy)),
            Answer::Pipe(decoy, addr) => Takeover::Pipe {
                head: probe::request_head(req.method(), req.uri(), req.version(), req.headers()),
                decoy,
                addr,
            },
        };
        control.take_over(takeover);
        std::future::pending().await
    }

    /// Serves a connection taken from hyper after a refused request: writes the decoy and
    /// closes, or relays the client's stream to the `host:` decoy as a tunnel (`read_buf` is
    /// what hyper had read past the request head).
    async fn take_over(
        &self,
        mut conn: BoxConn,
        read_buf: Bytes,
        takeover: Takeover,
        client: SocketAddr,
    ) {
        let env = &self.env;
        match takeover {
            Takeover::Answer(answer) => {
                // Within the time a client has for its request: a prober that stops reading
                // holds the connection no longer than one that stops writing.
                let written = tokio::time::timeout(env.handshake_timeout, async {
                    conn.write_all(&answer).await?;
                    conn.shutdown().await
                })
                .await;
                if !matches!(written, Ok(Ok(()))) {
                    tracing::debug!(service = %env.service, client = %client, "probe resistance: decoy not delivered");
                }
            }
            Takeover::Pipe { head, decoy, addr } => {
                tracing::debug!(service = %env.service, client = %client, decoy = %addr, "probe resistance: connection handed to the decoy host");
                let mut sent = BytesMut::with_capacity(head.len() + read_buf.len());
                sent.put(head);
                sent.put(read_buf);
                let conn = Prefixed::boxed(sent.freeze(), conn);
                run_tunnel(env, "http", client, &addr, conn, Box::new(decoy)).await;
            }
        }
    }

    /// Answers an HTTP/2 connection preface as GOST does: credentials are checked first (it
    /// has none, so with auth it gets the 407, or probe resistance's decoy), then the request
    /// is refused with 400. `read_buf` holds the preface, which a `host:` decoy gets.
    async fn http2_preface(&self, conn: BoxConn, read_buf: Bytes, client: SocketAddr) {
        let env = &self.env;
        let verdict = super::proxy_auth(env, &HeaderMap::new(), client, "http");
        let takeover = if verdict.accepted() {
            crate::metrics::handler_error(&env.service, client);
            tracing::debug!(service = %env.service, client = %client, "HTTP/2 connection preface on an HTTP/1 proxy; refused with 400");
            Takeover::Answer(answer_bytes(self.error(StatusCode::BAD_REQUEST)))
        } else {
            let decoy = match &self.probe {
                Some(probe) => {
                    probe
                        .decoy(&Uri::from_static("*"), verdict, &env.service)
                        .await
                }
                None => None,
            };
            match decoy {
                None => Takeover::Answer(answer_bytes(self.auth_required(&HeaderMap::new()))),
                Some(Answer::Respond(decoy)) => Takeover::Answer(probe::http1_answer(&decoy)),
                Some(Answer::Pipe(decoy, addr)) => Takeover::Pipe {
                    head: Bytes::new(),
                    decoy,
                    addr,
                },
            }
        };
        self.take_over(conn, read_buf, takeover, client).await;
    }

    fn auth_required(&self, request_headers: &HeaderMap) -> Response<Body> {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::PROXY_AUTHENTICATION_REQUIRED;
        // As GOST's: neither the `header` map nor `Proxy-Agent`, which would tell a prober
        // more than that credentials are wanted.
        let headers = response.headers_mut();
        headers.insert(header::PROXY_AUTHENTICATE, self.challenge.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let keep_alive = request_headers
            .get("proxy-connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive"));
        if keep_alive {
            headers.insert("proxy-connection", HeaderValue::from_static("close"));
        }
        response
    }

    fn error(&self, status: StatusCode) -> Response<Body> {
        let mut response = Response::new(empty());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        self.own_headers(headers);
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }

    /// The headers of every answer of the proxy's own: the `header` map, and `Proxy-Agent`
    /// unless the map has one (GOST's precedence).
    fn own_headers(&self, headers: &mut HeaderMap) {
        headers.extend(self.headers.clone());
        if !headers.contains_key("proxy-agent") {
            headers.insert(
                HeaderName::from_static("proxy-agent"),
                self.proxy_agent.clone(),
            );
        }
    }
}

/// An answer of the proxy's own (no body) as bytes, for a connection hyper no longer serves.
fn answer_bytes(response: Response<Body>) -> Bytes {
    let (parts, _) = response.into_parts();
    probe::http1_answer(&Response::from_parts(parts, Bytes::new()))
}

/// Shared by a forwarded request's body and its connection to the target, so that the
/// target's answer is timed from when the request is sent in full, as Go's
/// `ResponseHeaderTimeout` is: the body notes when the client's last byte is read; the
/// connection, when what hyper wrote after that has been written and flushed to the socket.
#[derive(Default)]
struct Sending {
    body_read: std::sync::atomic::AtomicBool,
    sent: Notify,
}

/// A forwarded request's body, noting in [`Sending`] when it has been read in full from the
/// client (at once when it has none).
struct SentBody {
    body: Incoming,
    sending: Option<Arc<Sending>>,
}

impl SentBody {
    fn new(body: Incoming, sending: Arc<Sending>) -> Self {
        let mut body = SentBody {
            body,
            sending: Some(sending),
        };
        if hyper::body::Body::is_end_stream(&body.body) {
            body.finished();
        }
        body
    }

    fn finished(&mut self) {
        if let Some(sending) = self.sending.take() {
            sending
                .body_read
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

impl hyper::body::Body for SentBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => hyper::body::Body::is_end_stream(&self.body),
            _ => false,
        };
        if done {
            self.finished();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.body)
    }
}

/// The connection to the target of a forwarded request: signals [`Sending::sent`] at the
/// first flush after a write that followed the body's end. hyper writes everything it holds
/// before it flushes, so by then the whole request is in the socket.
struct SendWatch {
    inner: BoxConn,
    sending: Arc<Sending>,
    wrote_after_body: bool,
    signalled: bool,
}

impl SendWatch {
    fn boxed(inner: BoxConn, sending: Arc<Sending>) -> BoxConn {
        Box::new(SendWatch {
            inner,
            sending,
            wrote_after_body: false,
            signalled: false,
        })
    }

    fn wrote(&mut self, result: &Poll<io::Result<usize>>) {
        if !self.wrote_after_body
            && matches!(result, Poll::Ready(Ok(n)) if *n > 0)
            && self
                .sending
                .body_read
                .load(std::sync::atomic::Ordering::Acquire)
        {
            self.wrote_after_body = true;
        }
    }
}

impl tokio::io::AsyncRead for SendWatch {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SendWatch {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(result, Poll::Ready(Ok(()))) && self.wrote_after_body && !self.signalled {
            self.signalled = true;
            self.sending.sent.notify_one();
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Conn for SendWatch {}

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

impl Conn for TokioIo<Upgraded> {}

/// The stream behind an upgraded connection (the client's, or the target's after a 101): the
/// original stream when hyper gives it back (so the relay can wait on socket readiness),
/// otherwise hyper's wrapper.
fn into_conn(upgraded: Upgraded) -> BoxConn {
    match upgraded.downcast::<TokioIo<BoxConn>>() {
        Ok(parts) => Prefixed::boxed(parts.read_buf, parts.io.into_inner()),
        Err(upgraded) => Box::new(TokioIo::new(upgraded)),
    }
}

/// The protocol an upgrade request asks for, or a 101 switches to: `Upgrade`, when `Connection`
/// lists `upgrade` (RFC 9110 §7.8), as Go's proxy reads it for GOST.
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let listed = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    listed
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Headers that describe one connection, not the message, and so must not be passed on
/// (RFC 9110 §7.6.1), plus the proxy's own credentials. An upgrade gets `Connection: Upgrade`
/// and its `Upgrade` back after stripping.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    for name in ["gost-target", "x-gost-target"] {
        headers.remove(name);
    }
}

/// Turns a proxy request into the request the target expects: origin-form URI, a `Host`
/// header, no hop-by-hop headers and never the proxy credentials.
fn prepare_forwarded(req: &mut Request<Incoming>, target: &Address) {
    // An absolute-form request names its host in the URI, which wins over a `Host` header
    // (RFC 9112 §3.2.2; Go, so GOST, sends the URI's): the request goes where it is dialled.
    // Any `user:password@` of the URI stays behind.
    // A target hidden in `Gost-Target` was dialled instead, and is the host the target sees
    // (Go writes `Request.Host`, which GOST set to it).
    let host = hidden_target(req.headers()).or_else(|| match req.uri().authority() {
        Some(authority) => Some(host_of(authority.as_str()).to_string()),
        None if req.headers().get(header::HOST).is_none() => Some(target.to_string()),
        None => None,
    });
    if let Some(value) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        req.headers_mut().insert(header::HOST, value);
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *req.uri_mut() = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    strip_hop_by_hop(req.headers_mut());
}

/// An authority without its userinfo: `host[:port]`.
fn host_of(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// Whether a request asks for GOST's UDP relay over HTTP.
fn is_udp_request(headers: &HeaderMap) -> bool {
    headers
        .get("x-gost-protocol")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"udp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer's clock starts at the first flush after a write that followed the body's
    /// end: not at a write or flush before it, not at a flush with nothing written after it.
    #[tokio::test]
    async fn a_request_counts_as_sent_once_written_after_its_body_and_flushed() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let sending = Arc::new(Sending::default());
        let mut upstream = SendWatch::boxed(Box::new(ours), sending.clone());
        let sent = || {
            let notified = sending.sent.notified();
            futures_util::FutureExt::now_or_never(notified).is_some()
        };
        upstream
            .write_all(b"POST / HTTP/1.1\r\n\r\nbo")
            .await
            .unwrap();
        upstream.flush().await.unwrap();
        assert!(!sent(), "the body is still being read");
        sending
            .body_read
            .store(true, std::sync::atomic::Ordering::Release);
        upstream.flush().await.unwrap();
        assert!(!sent(), "the body's last bytes are not written yet");
        upstream.write_all(b"dy").await.unwrap();
        assert!(!sent(), "written, not flushed");
        upstream.flush().await.unwrap();
        assert!(sent(), "written after the body's end and flushed");
        let mut got = vec![0u8; 23];
        tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut got)
            .await
            .unwrap();
        assert_eq!(&got[..], b"POST / HTTP/1.1\r\n\r\nbody");
    }

    #[test]
    fn the_host_of_an_authority_leaves_userinfo_behind() {
        assert_eq!(host_of("user:pw@127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(host_of("a@b@example.com"), "example.com");
        assert_eq!(host_of("[::1]:80"), "[::1]:80");
        assert_eq!(host_of("example.com"), "example.com");
    }

    #[test]
    fn head_size_counts_the_request_as_sent() {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri("example.com:443")
            .header("host", "example.com:443")
            .body(())
            .unwrap();
        let sent = "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n";
        assert_eq!(
            head_size(req.method(), req.uri(), req.headers()),
            sent.len()
        );
    }
}
