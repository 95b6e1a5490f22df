//! The `ws` and `wss` listeners: each WebSocket upgraded on the configured path is one
//! connection for the handler (gost-wire.md §8.2). `wss` runs TLS first, offering no ALPN, so
//! the HTTP/1.1 upgrade follows whatever the client offered.
//!
//! The upgrade is answered here rather than by the WebSocket library, which drops requests it
//! does not like without a response: GOST's Go HTTP server answers 404 off the path, 405 for
//! other methods and 400 for a broken upgrade, and probes see the same here.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::BytesMut;
use gost_api::Metadata;
use http::{HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::Handshaking;
use super::tcp::TcpListenerImpl;
use crate::conn::{BoxConn, Prefixed};
use crate::tls::ServerTls;
use crate::ws::{self, WsStream};

/// Longest upgrade request head read; GOST's clients send a few hundred bytes, browsers a few
/// KiB with cookies.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Most request headers parsed.
const MAX_HEADERS: usize = 64;

/// Listener settings from its metadata.
#[derive(Clone, Debug)]
pub struct WsOptions {
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    handshake_timeout: Duration,
}

impl WsOptions {
    /// Reads `path`, `header` and `handshakeTimeout` (each also with a `ws.` prefix).
    pub fn from_metadata(md: &Metadata) -> Result<Self, String> {
        Ok(WsOptions {
            path: ws::path(md),
            headers: ws::headers(md)?,
            handshake_timeout: ws::handshake_timeout(md)?,
        })
    }
}

/// Binds `addr` and upgrades connections to WebSockets, after TLS when `tls` is given.
pub fn bind(
    addr: &str,
    tls: Option<ServerTls>,
    options: WsOptions,
    keepalive: crate::conn::KeepAlive,
) -> io::Result<Handshaking> {
    let tcp = TcpListenerImpl::bind(addr)?.with_keepalive(keepalive);
    Ok(Handshaking::spawn(tcp, move |stream, client, ready| {
        let tls = tls.clone();
        let options = options.clone();
        async move {
            let limit = options.handshake_timeout;
            match tokio::time::timeout(limit, accept(stream, client, tls, &options)).await {
                Ok(Ok(Some(ws))) => {
                    let _ = ready.send((Box::new(ws), client)).await;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => log_failure(client, &e),
                Err(_) => tracing::debug!(
                    client = %client,
                    "WebSocket handshake took longer than {limit:?}"
                ),
            }
        }
    }))
}

fn log_failure(client: SocketAddr, e: &io::Error) {
    tracing::debug!(client = %client, error = %e, "WebSocket handshake failed");
}

async fn accept(
    stream: TcpStream,
    client: SocketAddr,
    tls: Option<ServerTls>,
    options: &WsOptions,
) -> io::Result<Option<WsStream>> {
    let conn: BoxConn = match tls {
        Some(tls) => Box::new(tls.accept(stream, client).await?),
        None => Box::new(stream),
    };
    upgrade(conn, options).await
}

/// What to do with a request head.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Switch protocols with this `Sec-WebSocket-Accept`.
    Upgrade(String),
    /// Refuse with this status.
    Refuse(u16),
}

/// Reads the upgrade request and answers it; `None` when it was refused.
async fn upgrade(mut conn: BoxConn, options: &WsOptions) -> io::Result<Option<WsStream>> {
    let mut buf = BytesMut::with_capacity(1024);
    let (verdict, head_len) = loop {
        if conn.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a full upgrade request",
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => break (judge(&request, &options.path), len),
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_HEAD => {}
            Ok(httparse::Status::Partial) => break (Verdict::Refuse(431), buf.len()),
            Err(_) => break (Verdict::Refuse(400), buf.len()),
        }
    };
    match verdict {
        Verdict::Refuse(status) => {
            tracing::debug!(status, "WebSocket upgrade refused");
            conn.write_all(&refusal(status)).await?;
            conn.shutdown().await?;
            Ok(None)
        }
        Verdict::Upgrade(accept) => {
            let mut response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
            )
            .into_bytes();
            for (name, value) in &options.headers {
                response.extend_from_slice(crate::codec::http::canonical(name.as_str()).as_bytes());
                response.extend_from_slice(b": ");
                response.extend_from_slice(value.as_bytes());
                response.extend_from_slice(b"\r\n");
            }
            response.extend_from_slice(b"\r\n");
            conn.write_all(&response).await?;
            conn.flush().await?;
            // Frames the client sent right behind its request are the stream's first bytes.
            let early = buf.split_off(head_len).freeze();
            Ok(Some(WsStream::server(Prefixed::boxed(early, conn)).await))
        }
    }
}

/// GOST's order of checks: the route first (any method), then the upgrade itself.
fn judge(request: &httparse::Request<'_, '_>, path: &str) -> Verdict {
    let target = request.path.unwrap_or("");
    if !route_matches(target, path) {
        return Verdict::Refuse(404);
    }
    if request.method != Some("GET") {
        return Verdict::Refuse(405);
    }
    let header = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("Connection", "upgrade")
        || !has_token("Upgrade", "websocket")
        || !has_token("Sec-WebSocket-Version", "13")
    {
        return Verdict::Refuse(400);
    }
    let Some(key) = header("Sec-WebSocket-Key").next().map(str::trim) else {
        return Verdict::Refuse(400);
    };
    // RFC 6455: the key is 16 random bytes in base64.
    match STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => Verdict::Upgrade(derive_accept_key(key.as_bytes())),
        _ => Verdict::Refuse(400),
    }
}

/// Go's router: the path without query, percent-decoded, must equal `path`, or lie under it
/// when `path` ends in `/`. An absolute-form target is judged by its path. Decoding matters
/// for a `path` with characters a URL path escapes: GOST's client (and ours) sends
/// `path=/ws?t=1` as `/ws%3Ft=1`.
fn route_matches(target: &str, path: &str) -> bool {
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let target = target.split(['?', '#']).next().unwrap_or("");
    let target = percent_encoding::percent_decode_str(target).decode_utf8_lossy();
    if path.ends_with('/') {
        target.starts_with(path)
    } else {
        target == path
    }
}

/// A plain-text error response as Go's HTTP server writes it; the connection closes after it.
fn refusal(status: u16) -> Vec<u8> {
    let (reason, body) = match status {
        404 => ("Not Found", "404 page not found\n"),
        405 => ("Method Not Allowed", "Method Not Allowed\n"),
        431 => (
            "Request Header Fields Too Large",
            "431 Request Header Fields Too Large",
        ),
        _ => ("Bad Request", "Bad Request\n"),
    };
    // Go's WebSocket library names the version it speaks on every refused upgrade.
    let version = if matches!(status, 400 | 405) {
        "Sec-Websocket-Version: 13\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         X-Content-Type-Options: nosniff\r\n{version}Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(head: &str, path: &str) -> Verdict {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        request.parse(head.as_bytes()).unwrap();
        judge(&request, path)
    }

    const GOOD: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn a_proper_upgrade_gets_the_rfc_accept_key() {
        assert_eq!(
            verdict(GOOD, "/ws"),
            Verdict::Upgrade("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into())
        );
    }

    #[test]
    fn refusals_follow_gos_order() {
        assert_eq!(verdict(GOOD, "/other"), Verdict::Refuse(404));
        assert_eq!(
            verdict(&GOOD.replace("GET /ws", "POST /ws"), "/ws"),
            Verdict::Refuse(405)
        );
        assert_eq!(
            verdict(&GOOD.replace("GET /ws", "GET /nope"), "/ws"),
            Verdict::Refuse(404)
        );
        assert_eq!(
            verdict(&GOOD.replace("Upgrade: websocket", "Upgrade: h2c"), "/ws"),
            Verdict::Refuse(400)
        );
        assert_eq!(
            verdict(&GOOD.replace("Version: 13", "Version: 8"), "/ws"),
            Verdict::Refuse(400)
        );
        assert_eq!(
            verdict(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), "/ws"),
            Verdict::Refuse(400)
        );
    }

    #[test]
    fn header_names_are_spelt_like_go() {
        assert_eq!(crate::codec::http::canonical("x-served-by"), "X-Served-By");
        assert_eq!(crate::codec::http::canonical("server"), "Server");
    }

    #[test]
    fn routes_match_exactly_or_by_subtree() {
        assert!(route_matches("/ws?x=1", "/ws"));
        assert!(route_matches("http://h:1/ws", "/ws"));
        assert!(!route_matches("/ws/", "/ws"));
        assert!(!route_matches("/wsx", "/ws"));
        assert!(route_matches("/t/a", "/t/"));
        // A path with a `?` arrives escaped, as Go's client and ours send it.
        assert!(route_matches("/ws%3Ftoken=abc", "/ws?token=abc"));
        assert!(!route_matches("/ws?token=abc", "/ws?token=abc"));
        assert!(route_matches("/a%20b", "/a b"));
    }
}
