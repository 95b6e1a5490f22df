//! The `ws` and `wss` dialers: a WebSocket upgrade to the node (gost-wire.md §8.2), over TCP
//! or over the previous hop's tunnel; `wss` runs TLS with the node's settings first.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use gost_api::Metadata;
use http::header::{self, HeaderMap, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;

use super::Dialer;
use super::tcp::connect;
use crate::addr::Address;
use crate::conn::BoxConn;
use crate::tls::ClientTls;
use crate::ws::{self, DEFAULT_KEEPALIVE_INTERVAL, WsStream};

/// The agent GOST's Go client sends; some servers in front of GOST route on it.
pub const USER_AGENT: &str = "Go-http-client/1.1";

/// What Go escapes in a URL path: all but letters, digits, `-_.~` and `$&+,/:;=@`. `?` and
/// `%` among them, so a configured path reaches the server as written, whatever it holds.
const GO_PATH_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b',')
    .remove(b'/')
    .remove(b':')
    .remove(b';')
    .remove(b'=')
    .remove(b'@');

/// A WebSocket dialer for one node.
pub struct WsDialer {
    tls: Option<ClientTls>,
    path: String,
    headers: HeaderMap,
    handshake_timeout: Duration,
    keepalive: Option<Duration>,
}

impl WsDialer {
    /// Reads the dialer metadata; `node_addr` is the node address as configured, sent as
    /// `Host` unless `host` or a `Host` header says otherwise. `tls` makes it `wss`.
    pub fn new(md: &Metadata, node_addr: &str, tls: Option<ClientTls>) -> Result<Self, String> {
        let host = md
            .string(&["host", "ws.host"])
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| node_addr.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&host)
                .map_err(|_| format!("host {host:?} is not a header value"))?,
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        for (name, value) in ws::headers(md)? {
            headers.insert(name, value);
        }
        let keepalive = match md
            .bool(&["keepalive", "ws.keepalive"])
            .map_err(|e| e.to_string())?
        {
            Some(true) => Some(
                md.duration(&[
                    "ttl",
                    "keepalive.interval",
                    "ws.ttl",
                    "ws.keepalive.interval",
                ])
                .map_err(|e| e.to_string())?
                .flatten()
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_KEEPALIVE_INTERVAL),
            ),
            _ => None,
        };
        Ok(WsDialer {
            tls,
            path: ws::path(md),
            headers,
            handshake_timeout: ws::handshake_timeout(md)?,
            keepalive,
        })
    }

    async fn upgrade(&self, conn: BoxConn, addr: &Address) -> io::Result<BoxConn> {
        let conn: BoxConn = match &self.tls {
            Some(tls) => Box::new(tls.connect(conn, addr).await?),
            None => conn,
        };
        let request = self.request()?;
        let limit = self.handshake_timeout;
        let handshake = tokio_tungstenite::client_async_with_config(
            request,
            ws::Transport::for_upgrade(conn),
            Some(ws::config()),
        );
        let (ws, _response) = tokio::time::timeout(limit, handshake)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("WebSocket upgrade at {addr} took longer than {limit:?}"),
                )
            })?
            .map_err(|e| match e {
                WsError::Io(e) => e,
                WsError::Http(response) => io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "WebSocket upgrade at {addr}{} refused: HTTP {}",
                        self.path,
                        response.status()
                    ),
                ),
                e => io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("WebSocket upgrade at {addr} failed: {e}"),
                ),
            })?;
        Ok(Box::new(WsStream::new(ws, self.keepalive)))
    }

    fn request(&self) -> io::Result<http::Request<()>> {
        // The library wants a ws:// URI; only its path reaches the wire, Host is ours. The
        // path is escaped as Go escapes a URL path, so that a `?` in it stays part of the path
        // for GOST's server (and ours), which match the decoded path.
        let path = utf8_percent_encode(&self.path, GO_PATH_ESCAPES).to_string();
        let uri = http::Uri::builder()
            .scheme("ws")
            .authority("gost")
            .path_and_query(path.as_str())
            .build()
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("WebSocket path {:?}: {e}", self.path),
                )
            })?;
        let mut request = http::Request::get(uri)
            .body(())
            .expect("method and URI are valid");
        let headers = request.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_str(&generate_key()).expect("base64 is a header value"),
        );
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        Ok(request)
    }
}

#[async_trait]
impl Dialer for WsDialer {
    async fn dial(&self, addr: &Address, timeout: Duration) -> io::Result<BoxConn> {
        let tcp = connect(addr, timeout).await?;
        self.upgrade(Box::new(tcp), addr).await
    }

    async fn handshake(&self, conn: BoxConn, addr: &Address) -> io::Result<BoxConn> {
        self.upgrade(conn, addr).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(md: serde_json::Value, addr: &str) -> WsDialer {
        WsDialer::new(&serde_json::from_value(md).unwrap(), addr, None).unwrap()
    }

    #[test]
    fn request_carries_gosts_host_agent_path_and_headers() {
        let d = dialer(serde_json::json!({"path": "/t"}), ":1080");
        let r = d.request().unwrap();
        assert_eq!(r.uri().path(), "/t");
        assert_eq!(r.headers()["host"], ":1080");
        // Escaped as Go escapes a path: `?` and `%` stay part of it.
        let d = dialer(serde_json::json!({"path": "/ws?token=a b%"}), ":1080");
        let r = d.request().unwrap();
        assert_eq!(r.uri().path(), "/ws%3Ftoken=a%20b%25");
        assert_eq!(r.uri().query(), None);
        assert_eq!(r.headers()["user-agent"], USER_AGENT);
        assert!(d.keepalive.is_none());

        let d = dialer(
            serde_json::json!({"host": "example.com", "header": {"User-Agent": "me", "X-A": "1"},
                "keepalive": true, "ttl": "3s"}),
            "1.2.3.4:443",
        );
        let r = d.request().unwrap();
        assert_eq!(r.headers()["host"], "example.com");
        assert_eq!(r.headers()["user-agent"], "me");
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(d.keepalive, Some(Duration::from_secs(3)));

        let d = dialer(
            serde_json::json!({"header": {"Host": "h.example"}, "keepalive": "true"}),
            "a:1",
        );
        assert_eq!(d.request().unwrap().headers()["host"], "h.example");
        assert_eq!(d.keepalive, Some(DEFAULT_KEEPALIVE_INTERVAL));
    }
}
