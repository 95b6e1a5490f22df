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
//! Clients that chose HTTP/1.1 in ALPN reach [`Handler::handle`] with their TLS stream and are
//! served by the ordinary `http` handler.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::http::{DEFAULT_REALM, HttpHandler};
use super::{Handler, HandlerEnv, run_tunnel};
use crate::addr::Address;
use crate::codec::http::{basic_credentials, with_default_port};
use crate::conn::BoxConn;
use crate::dialer::h2::header_map;
use crate::h2pool::H2Stream;

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
    /// `header`).
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

    /// Serves one HTTP/2 request in a task tracked with the service's tunnels.
    pub fn spawn_request(
        self: &Arc<Self>,
        req: Request<RecvStream>,
        respond: SendResponse<Bytes>,
        client: SocketAddr,
    ) {
        let this = self.clone();
        self.env
            .tunnels
            .spawn(async move { this.serve(req, respond, client).await });
    }

    async fn serve(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        client: SocketAddr,
    ) {
        let env = &self.env;
        if let Some(auth) = &env.auth {
            let credentials = req
                .headers()
                .get(header::PROXY_AUTHORIZATION)
                .and_then(|v| basic_credentials(v.as_bytes()));
            let accepted = credentials
                .as_ref()
                .is_some_and(|(user, pass)| auth.check(user, pass));
            if !accepted {
                let user = credentials.map(|(user, _)| user);
                tracing::warn!(
                    service = %env.service, protocol = "http2", client = %client,
                    user = user.as_deref().unwrap_or(""), "proxy authentication failed"
                );
                let mut response = status(StatusCode::PROXY_AUTHENTICATION_REQUIRED);
                response
                    .headers_mut()
                    .insert(header::PROXY_AUTHENTICATE, self.challenge.clone());
                let _ = respond.send_response(response, true);
                return;
            }
        }
        if req.method() != Method::CONNECT {
            tracing::warn!(
                service = %env.service, protocol = "http2", client = %client,
                method = %req.method(), uri = %req.uri(),
                "only CONNECT is served over HTTP/2 in this build; answering 501"
            );
            let _ = respond.send_response(status(StatusCode::NOT_IMPLEMENTED), true);
            return;
        }
        let target = match target(&req) {
            Ok(target) => target,
            Err(e) => {
                tracing::debug!(service = %env.service, client = %client, error = %e, "bad CONNECT request");
                let _ = respond.send_response(status(StatusCode::BAD_REQUEST), true);
                return;
            }
        };
        let upstream = match env.router.dial(&target).await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::warn!(service = %env.service, protocol = "http2", client = %client, error = %e, "upstream dial failed");
                let _ =
                    respond.send_response(self.with_headers(StatusCode::SERVICE_UNAVAILABLE), true);
                return;
            }
        };
        let send = match respond.send_response(self.with_headers(StatusCode::OK), false) {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(service = %env.service, client = %client, error = %e, "CONNECT client went away");
                return;
            }
        };
        let stream: BoxConn = Box::new(H2Stream::new(send, req.into_body()));
        run_tunnel(env, "http2", client, &target, stream, upstream).await;
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

/// The CONNECT target: `:authority` (else `Host`), port 443 when it has none.
fn target(req: &Request<RecvStream>) -> Result<Address, String> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
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
    with_default_port(host_port, DEFAULT_PORT).map_err(|e| e.to_string())
}

#[async_trait]
impl Handler for Http2Handler {
    async fn handle(&self, conn: BoxConn, client: SocketAddr) {
        self.http1.handle(conn, client).await;
    }
}
