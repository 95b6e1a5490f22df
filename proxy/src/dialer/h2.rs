//! The `h2` and `h2c` dialers (gost-wire.md §8.4): every tunnel is one HTTP/2 stream, and the
//! tunnels to a node share one connection (more once one is at the server's stream limit).
//!
//! A tunnel is a `CONNECT` whose authority is the node (metadata `host`, else the node
//! address), or with metadata `path` a `GET` of that path carrying a streaming request body,
//! as GOST's client sends. Any answer but `200` fails the tunnel.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gost_api::Metadata;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request};

use super::Dialer;
use crate::addr::Address;
use crate::conn::BoxConn;
use crate::h2pool::{H2Client, Transport, hand_off};
use crate::tls::ClientTls;

/// Time allowed for the server's answer to a tunnel request. The connection itself is dialled
/// within the router's dial timeout.
pub const TUNNEL_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The `h2` (TLS) and `h2c` (cleartext) dialers.
pub struct H2Dialer {
    client: Arc<H2Client>,
    tls: bool,
    host: Option<String>,
    path: Option<String>,
    headers: HeaderMap,
}

impl H2Dialer {
    /// `tls` is the node's TLS for `h2`, `None` for `h2c`; `metadata` gives `host`, `path` and
    /// `header`.
    pub fn new(tls: Option<ClientTls>, metadata: &Metadata) -> Result<Self, String> {
        let is_tls = tls.is_some();
        let transport = match tls {
            Some(tls) => Transport::Tls(tls),
            None => Transport::Plain,
        };
        let path = metadata.string(&["path"]).filter(|p| !p.is_empty());
        if let Some(path) = &path {
            if !path.starts_with('/') {
                return Err(format!("metadata `path`: {path:?} must start with `/`"));
            }
            if PathAndQuery::try_from(path.as_str()).is_err() {
                return Err(format!(
                    "metadata `path`: {path:?} is not a valid request path (percent-encode spaces and the like)"
                ));
            }
        }
        // Every tunnel request carries it as `:authority`, which RFC 9113 §8.5 requires of a
        // CONNECT, so a value that cannot be one is a configuration error, not a request
        // without it.
        let host = metadata.string(&["host"]).filter(|h| !h.is_empty());
        if let Some(host) = &host
            && Authority::try_from(host.as_str())
                .map_or(true, |authority| authority.as_str().contains('@'))
        {
            return Err(format!(
                "metadata `host`: {host:?} is not a valid HTTP/2 authority (host or host:port)"
            ));
        }
        Ok(H2Dialer {
            client: H2Client::new(transport),
            tls: is_tls,
            host,
            path,
            headers: header_map(metadata)?,
        })
    }

    fn request(&self, addr: &Address) -> Request<()> {
        let host = self.host.clone().unwrap_or_else(|| addr.to_string());
        let uri = match &self.path {
            None => host,
            Some(path) => {
                let scheme = if self.tls { "https" } else { "http" };
                format!("{scheme}://{host}{path}")
            }
        };
        let method = if self.path.is_some() {
            Method::GET
        } else {
            Method::CONNECT
        };
        let mut req =
            Request::builder().method(method).uri(uri).body(()).expect(
                "`host` and `path` were checked in `new`, and node addresses are authorities",
            );
        req.headers_mut().extend(self.headers.clone());
        req
    }
}

#[async_trait]
impl Dialer for H2Dialer {
    async fn dial(&self, addr: &Address, timeout: Duration) -> io::Result<BoxConn> {
        let stream = self
            .client
            .open(addr, timeout, || self.request(addr))
            .await
            .map_err(|e| io::Error::from(e).with_context(addr))?;
        Ok(Box::new(stream))
    }

    async fn handshake(&self, conn: BoxConn, addr: &Address) -> io::Result<BoxConn> {
        let session = self.client.over(conn, addr, false).await?;
        let stream = session
            .open(self.request(addr), Some(TUNNEL_REQUEST_TIMEOUT))
            .await
            .map_err(|(e, _)| io::Error::from(e).with_context(addr))?;
        Ok(Box::new(stream))
    }
}

/// The `http2` dialer (gost-wire.md §8.3): a pooled TLS HTTP/2 connection to the node,
/// handed to the `http2` connector, which opens each tunnel on it with `CONNECT target`.
pub struct Http2Dialer {
    client: Arc<H2Client>,
}

impl Http2Dialer {
    /// A dialer with the node's TLS settings (ALPN `h2`).
    pub fn new(tls: ClientTls) -> Self {
        Http2Dialer {
            client: H2Client::new(Transport::Tls(tls)),
        }
    }
}

#[async_trait]
impl Dialer for Http2Dialer {
    async fn dial(&self, addr: &Address, timeout: Duration) -> io::Result<BoxConn> {
        let lease = self.client.lease(addr, timeout).await?;
        let (client, addr) = (self.client.clone(), addr.clone());
        Ok(hand_off(lease.with_again(Box::new(move || {
            Box::pin(async move { client.lease(&addr, timeout).await })
        }))))
    }

    async fn handshake(&self, conn: BoxConn, addr: &Address) -> io::Result<BoxConn> {
        let session = self.client.over(conn, addr, false).await?;
        Ok(hand_off(session.lease()))
    }
}

trait WithContext {
    fn with_context(self, addr: &Address) -> io::Error;
}

impl WithContext for io::Error {
    fn with_context(self, addr: &Address) -> io::Error {
        io::Error::new(self.kind(), format!("h2 tunnel via {addr}: {self}"))
    }
}

/// The `header` metadata map as HTTP headers; a name or value HTTP cannot carry is an error
/// naming it.
pub fn header_map(metadata: &Metadata) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    let Some((key, value)) = metadata.get_any(&["header", "http.header"]) else {
        return Ok(headers);
    };
    let serde_json::Value::Object(map) = value else {
        return Err(format!(
            "metadata `{key}` must be a map of header names to values"
        ));
    };
    for (name, value) in map {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("metadata `{key}`: {name:?} is not a valid header name"))?;
        let value = HeaderValue::from_str(&text)
            .map_err(|_| format!("metadata `{key}`: {text:?} is not a valid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(md: &[(&str, &str)], tls: bool) -> H2Dialer {
        let mut metadata = Metadata::default();
        for (k, v) in md {
            metadata.insert_str(k, v);
        }
        let tls = tls.then(|| ClientTls::new(None, &[b"h2"]).unwrap());
        H2Dialer::new(tls, &metadata).unwrap()
    }

    #[test]
    fn connect_names_the_node() {
        let d = dialer(&[], false);
        let req = d.request(&Address::parse("10.0.0.1:8443").unwrap());
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(req.uri().authority().unwrap().as_str(), "10.0.0.1:8443");
        assert!(
            req.uri()
                .path_and_query()
                .is_none_or(|p| p.as_str().is_empty() || p == "/")
        );
    }

    #[test]
    fn path_mode_is_a_get_with_scheme() {
        let d = dialer(&[("path", "/tun?x=1"), ("host", "example.com")], true);
        let req = d.request(&Address::parse("10.0.0.1:8443").unwrap());
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().to_string(), "https://example.com/tun?x=1");
    }

    #[test]
    fn a_host_or_path_that_cannot_be_sent_fails_when_built() {
        // RFC 9113 §8.5: a CONNECT carries the `:authority`; there is no sending one without.
        for (key, value) in [
            ("host", "a b"),
            ("host", "a/b"),
            ("host", "user@a.example"),
            ("path", "/a b"),
        ] {
            let mut metadata = Metadata::default();
            metadata.insert_str(key, value);
            let Err(e) = H2Dialer::new(None, &metadata) else {
                panic!("metadata {key}={value:?} was accepted");
            };
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(value),
                "{key}={value:?}: {e}"
            );
        }
    }

    #[test]
    fn header_map_must_be_a_map() {
        let mut md = Metadata::default();
        md.insert_str("header", "x");
        assert!(header_map(&md).unwrap_err().contains("must be a map"));
    }
}
