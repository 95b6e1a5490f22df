//! The `http2` handler (gost-wire.md §8.3): an HTTP proxy whose requests arrive as HTTP/2
//! streams from the `http2` listener.
//!
//! A `CONNECT host[:port]` (port 443 when absent, as in GOST) is authenticated with Basic
//! `Proxy-Authorization`, dialled through the router and answered `:status 200` (no
//! `Proxy-Agent`, as GOST); the stream is then the tunnel. A dial failure answers `503`, as
//! GOST does for every failure here (the HTTP/1 handler distinguishes 502 and 504, but this
//! handler keeps GOST's single status). Requests other than CONNECT are not forwarded in this
//! build: they get `501` and a log line.
//!
//! With probe resistance (`probeResist`, [`super::probe`]) a request that fails authentication
//! gets a decoy instead of the 407; for a `host:` decoy the request is forwarded there as a plain
//! request would be to its target (an HTTP/2 stream cannot be handed over as raw bytes).
//!
//! Clients that chose HTTP/1.1 in ALPN reach [`Handler::handle`] with their TLS stream and are
//! served by the ordinary `http` handler.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame};
use hyper_util::rt::TokioIo;

use super::http::{DEFAULT_REALM, HttpHandler};
use super::probe::Answer;
use super::{Handler, HandlerEnv, run_tunnel};
use crate::addr::Address;
use crate::auth::Verdict;
use crate::chain::DialFor;
use crate::codec::http::{hidden_target, with_default_port};
use crate::conn::{BoxConn, Conn};
use crate::dialer::h2::header_map;
use crate::h2pool::{Drive, H2Stream};
use crate::listener::http2::Http2Exchange;

/// The port a CONNECT without one means: GOST appends 443 because requests on this listener
/// always came over TLS.
pub const DEFAULT_PORT: u16 = 443;

/// Serves HTTP/2 proxy requests, and HTTP/1.1 clients of the same listener.
pub struct Http2Handler {
    env: Arc<HandlerEnv>,
    http1: HttpHandler,
    challenge: HeaderValue,
    headers: HeaderMap,
}

impl Http2Handler {
    /// A handler with the environment's auth, router and metadata (`authBasicRealm`,
    /// `header`, `probeResist`, `knock`).
    pub fn new(env: Arc<HandlerEnv>) -> Result<Self, String> {
        let md = &env.metadata;
        let realm = md
            .string(&["authBasicRealm"])
            .unwrap_or_else(|| DEFAULT_REALM.to_string());
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .map_err(|_| format!("metadata `authBasicRealm`: {realm:?} is not a valid realm"))?;
        Ok(Http2Handler {
            http1: HttpHandler::new(env.clone())?,
            headers: header_map(md)?,
            env,
            challenge,
        })
    }

    async fn serve(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        driver: Arc<dyn Drive>,
        client: SocketAddr,
    ) {
        let env = &self.env;
        if super::http::head_size(req.method(), req.uri(), req.headers()) > env.max_header_size {
            tracing::debug!(service = %env.service, client = %client, limit = env.max_header_size, "request head too large");
            let _ =
                respond.send_response(status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE), true);
            return;
        }
        let verdict = super::proxy_auth(env, req.headers(), client, "http2");
        if !verdict.accepted() {
            return self.refuse(req, respond, client, verdict, &*driver).await;
        }
        if req.method() != Method::CONNECT {
            return self.forward(req, respond, client, &*driver).await;
        }
        let target = match target(&req, DEFAULT_PORT) {
            Ok(target) => target,
            Err(e) => {
                tracing::debug!(service = %env.service, client = %client, error = %e, "bad CONNECT request");
                let _ = respond.send_response(status(StatusCode::BAD_REQUEST), true);
                return;
            }
        };
        let Some(upstream) = self
            .dial(req.headers(), &target, client, &mut respond)
            .await
        else {
            return;
        };
        let send = match respond.send_response(self.with_headers(StatusCode::OK), false) {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(service = %env.service, client = %client, error = %e, "CONNECT client went away");
                return;
            }
        };
        let stream: BoxConn = Box::new(H2Stream::new(send, req.into_body()).driven_by(driver));
        run_tunnel(env, "http2", client, &target, stream, upstream).await;
    }

    /// Dials `target` for a request that authenticated with `headers`; when that fails,
    /// answers 503 and logs why.
    async fn dial(
        &self,
        headers: &HeaderMap,
        target: &Address,
        client: SocketAddr,
        respond: &mut SendResponse<Bytes>,
    ) -> Option<BoxConn> {
        let env = &self.env;
        let user = super::proxy_user(env, headers);
        let dial_for = DialFor {
            client: client.ip(),
            user: user.as_deref(),
        };
        match env.router.dial(target, dial_for).await {
            Ok(upstream) => Some(upstream),
            Err(e) => {
                crate::metrics::handler_error(&env.service, client);
                tracing::warn!(service = %env.service, protocol = "http2", client = %client, error = %e, "upstream dial failed");
                let _ =
                    respond.send_response(self.with_headers(StatusCode::SERVICE_UNAVAILABLE), true);
                None
            }
        }
    }

    /// Sends a plain request on to its target in HTTP/1.1 origin form over a connection
    /// dialled through the router, and streams the answer back.
    async fn forward(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        client: SocketAddr,
        driver: &dyn Drive,
    ) {
        let env = &self.env;
        // GOST appends 443 to every portless authority on this listener, even for http://
        // URLs, which would send plain HTTP to the TLS port; the URL's scheme decides here.
        let default_port = match req.uri().scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => 80,
            _ => DEFAULT_PORT,
        };
        let target = match target(&req, default_port) {
            Ok(target) => target,
            Err(e) => {
                crate::metrics::handler_error(&env.service, client);
                tracing::debug!(service = %env.service, client = %client, error = %e, "bad proxy request");
                let _ = respond.send_response(status(StatusCode::BAD_REQUEST), true);
                return;
            }
        };
        let Some(upstream) = self
            .dial(req.headers(), &target, client, &mut respond)
            .await
        else {
            return;
        };
        self.relay_answer(req, respond, upstream, &target, client, driver)
            .await;
    }

    /// Answers a request that failed authentication: with the 407, or with probe resistance's
    /// decoy unless the request knocks (every refused request, also those of a client over the
    /// failure limit, for which a 407 would give the proxy away).
    async fn refuse(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        client: SocketAddr,
        verdict: Verdict,
        driver: &dyn Drive,
    ) {
        let env = &self.env;
        let decoy = match self.http1.probe() {
            Some(probe) => probe.decoy(req.uri(), verdict, &env.service).await,
            None => None,
        };
        let Some(answer) = decoy else {
            let mut response = status(StatusCode::PROXY_AUTHENTICATION_REQUIRED);
            response
                .headers_mut()
                .insert(header::PROXY_AUTHENTICATE, self.challenge.clone());
            let _ = respond.send_response(response, true);
            return;
        };
        match answer {
            // Without GOST's `Connection: keep-alive` on a 200: HTTP/2 has no such header.
            Answer::Respond(decoy) => {
                let (parts, page) = decoy.into_parts();
                let end = page.is_empty();
                match respond.send_response(Response::from_parts(parts, ()), end) {
                    Ok(mut send) if !end => {
                        if send_all(&mut send, page, driver).await.is_ok() {
                            let _ = send.send_data(Bytes::new(), true);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(service = %env.service, client = %client, error = %e, "client went away");
                    }
                }
            }
            Answer::Pipe(decoy, addr) => {
                self.relay_answer(req, respond, Box::new(decoy), &addr, client, driver)
                    .await;
            }
        }
    }

    /// Sends `req` on in HTTP/1.1 origin form over `upstream`, a connection to `target`, and
    /// streams the answer back.
    async fn relay_answer(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        upstream: BoxConn,
        target: &Address,
        client: SocketAddr,
        driver: &dyn Drive,
    ) {
        let env = &self.env;
        let response = match send_upstream(req, upstream, target, env, client).await {
            Ok(response) => response,
            Err(e) => {
                crate::metrics::handler_error(&env.service, client);
                tracing::warn!(service = %env.service, protocol = "http2", client = %client, target = %target, error = %e, "forwarding failed");
                let _ =
                    respond.send_response(self.with_headers(StatusCode::SERVICE_UNAVAILABLE), true);
                return;
            }
        };
        tracing::info!(
            service = %env.service, protocol = "http2", client = %client, target = %target,
            status = response.status().as_u16(), "forwarded"
        );
        let (mut parts, mut body) = response.into_parts();
        strip_connection_headers(&mut parts.headers);
        let end = body.is_end_stream();
        let mut send = match respond.send_response(Response::from_parts(parts, ()), end) {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(service = %env.service, client = %client, error = %e, "client went away");
                return;
            }
        };
        if end {
            return;
        }
        while let Some(frame) = body.frame().await {
            let data = match frame.map(|f| f.into_data()) {
                Ok(Ok(data)) => data,
                Ok(Err(_trailers)) => continue,
                Err(e) => {
                    tracing::debug!(service = %env.service, target = %target, error = %e, "upstream body failed");
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                    return;
                }
            };
            if let Err(e) = send_all(&mut send, data, driver).await {
                tracing::debug!(service = %env.service, client = %client, error = %e, "client went away");
                return;
            }
        }
        let _ = send.send_data(Bytes::new(), true);
    }

    fn with_headers(&self, code: StatusCode) -> Response<()> {
        let mut response = status(code);
        response.headers_mut().extend(self.headers.clone());
        response
    }
}

fn status(code: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = code;
    response
}

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2) or that describe one hop only, plus the
/// proxy's own credentials and GOST's target headers.
const CONNECTION_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "gost-target",
    "x-gost-target",
];

fn strip_connection_headers(headers: &mut HeaderMap) {
    for name in CONNECTION_HEADERS {
        headers.remove(*name);
    }
}

/// The request body of an HTTP/2 stream as a hyper body, giving flow-control credit back as
/// hyper takes each chunk.
struct RecvBody(RecvStream);

impl hyper::body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        match ready!(self.0.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = self.0.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

async fn send_upstream(
    req: Request<RecvStream>,
    upstream: BoxConn,
    target: &Address,
    env: &HandlerEnv,
    client: SocketAddr,
) -> Result<Response<hyper::body::Incoming>, hyper::Error> {
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .max_headers(super::http::MAX_HEADER_FIELDS)
        .handshake::<_, RecvBody>(TokioIo::new(super::Metered::boxed(env, client, upstream)))
        .await?;
    let service = env.service.clone();
    super::spawn_tunnel(&env.tunnels, async move {
        if let Err(e) = connection.await {
            tracing::debug!(service = %service, error = %e, "upstream HTTP connection ended");
        }
    });
    let (mut parts, body) = req.into_parts();
    let host = parts
        .uri
        .authority()
        .map_or_else(|| target.to_string(), |a| a.as_str().to_string());
    if !parts.headers.contains_key(header::HOST)
        && let Ok(value) = HeaderValue::from_str(&host)
    {
        parts.headers.insert(header::HOST, value);
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    strip_connection_headers(&mut parts.headers);
    sender
        .send_request(Request::from_parts(parts, RecvBody(body)))
        .await
}

/// Sends `data` on `send`, waiting for flow-control credit rather than queueing it all.
async fn send_all(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    driver: &dyn Drive,
) -> Result<(), h2::Error> {
    while !data.is_empty() {
        // No bigger frames than the connection's tunnels write (see `tcpinfo::Pace`).
        let frame = data.len().min(driver.chunk());
        send.reserve_capacity(frame);
        let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .transpose()?
            .ok_or_else(|| h2::Error::from(h2::Reason::CANCEL))?;
        if granted > 0 {
            send.send_data(data.split_to(granted.min(frame)), false)?;
        }
    }
    Ok(())
}

/// The request's target: a hidden `Gost-Target`, else `:authority` (else `Host`), with
/// `default_port` when it has none.
fn target(req: &Request<RecvStream>, default_port: u16) -> Result<Address, String> {
    // A target hidden in `Gost-Target` replaces the authority, as in §4.1.
    let authority = hidden_target(req.headers())
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .filter(|a| !a.is_empty())
        .ok_or("CONNECT without :authority")?;
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, h)| h);
    with_default_port(host_port, default_port).map_err(|e| e.to_string())
}

#[async_trait]
impl Handler for Http2Handler {
    async fn handle(&self, mut conn: BoxConn, client: SocketAddr) {
        let exchange = conn
            .as_any_mut()
            .and_then(|any| any.downcast_mut::<Http2Exchange>());
        match exchange {
            // An HTTP/2 request; `conn` (with the request's place under the connection limit)
            // lives until it is served, its tunnel included.
            Some(exchange) => {
                if let (Some(request), Some(respond)) =
                    (exchange.request.take(), exchange.respond.take())
                {
                    self.serve(request, respond, exchange.driver.clone(), client)
                        .await;
                }
            }
            // An HTTP/1.1 client of the `http2` listener.
            None => self.http1.handle(conn, client).await,
        }
    }
}
