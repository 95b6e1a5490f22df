//! The `h3` dialer, also GOST's `http3` on `-F` (gost-wire.md §8.7): plain HTTP tunnels over
//! HTTP/3. All tunnels to a node share one QUIC connection (one UDP socket), dialled again
//! when it dies, or from a new socket when its server stops taking new tunnels on it (those
//! already on it stay there).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gost_api::Metadata;

use super::Dialer;
use crate::addr::Address;
use crate::conn::BoxConn;
use crate::h3::{H3RoundTrip, QuicOptions};
use crate::pht::client::ClientOptions;
use crate::pht::{Paths, RoundTrip};
use crate::tls::ClientTls;

/// The `h3` dialer for one node.
pub struct H3Dialer {
    client: Arc<H3RoundTrip>,
    opts: Arc<ClientOptions>,
}

impl H3Dialer {
    /// Reads the dialer metadata (`pushPath`, `pullPath`, `authorizePath`, also `pht.`-prefixed;
    /// `host`; `keepalive`, `ttl`, `handshakeTimeout`, `maxIdleTimeout`, `maxStreams`). `tls`
    /// is the node's TLS with ALPN `h3` ([`crate::h3::ALPN`]). As GOST's, it sends no custom
    /// `header`s.
    pub fn new(md: &Metadata, node: &Address, tls: ClientTls) -> Result<Self, String> {
        // As for pht: an empty node host (`-F h3://:8443`) was parsed as 127.0.0.1, so the
        // authority is `127.0.0.1:8443` rather than GOST's broken `[:8443]:8443` (A7).
        let authority = match md.string(&["host"]).filter(|h| !h.is_empty()) {
            // As GOST's, a port in `host` is dropped: the node's port is the one used.
            Some(host) => Address::from_host(
                gost_api::split_host_port(&host)
                    .map(|(h, _)| h)
                    .filter(|h| !h.is_empty())
                    .unwrap_or(&host),
                node.port,
            )
            .map_err(|e| format!("metadata `host`: {e}"))?
            .to_string(),
            None => node.to_string(),
        };
        // GOST's dialer keeps QUIC keep-alive on unless `keepalive=false`.
        let quic = QuicOptions::from_metadata(md, true)?;
        Ok(H3Dialer {
            client: Arc::new(H3RoundTrip::new(node.clone(), tls, &quic)?),
            opts: Arc::new(ClientOptions {
                paths: Paths::from_metadata(md),
                scheme: "https",
                authority,
                headers: http::HeaderMap::new(),
            }),
        })
    }
}

#[async_trait]
impl Dialer for H3Dialer {
    async fn dial(&self, _addr: &Address, timeout: Duration) -> io::Result<BoxConn> {
        // Its own view of the node's connection: a tunnel stays on the connection it began on.
        let rt: Arc<dyn RoundTrip> = Arc::new(self.client.tunnel());
        crate::pht::client::connect_within(rt, self.opts.clone(), timeout, "h3").await
    }

    async fn handshake(&self, _conn: BoxConn, addr: &Address) -> io::Result<BoxConn> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "h3 to {addr} cannot run through a previous hop: HTTP/3 runs over QUIC, which \
                 needs UDP, and a hop gives a TCP-like stream; put h3 on the chain's first hop"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(md: &[(&str, &str)]) -> H3Dialer {
        let mut metadata = Metadata::default();
        for (k, v) in md {
            metadata.insert_str(k, v);
        }
        let tls = ClientTls::new(None, crate::h3::ALPN).unwrap();
        H3Dialer::new(&metadata, &Address::parse("10.0.0.1:8443").unwrap(), tls).unwrap()
    }

    #[test]
    fn authority_and_paths() {
        let d = dialer(&[]);
        assert_eq!(d.opts.authority, "10.0.0.1:8443");
        assert_eq!(d.opts.scheme, "https");
        let d = dialer(&[("host", "example.com"), ("pht.pushPath", "/in")]);
        assert_eq!(d.opts.authority, "example.com:8443");
        assert_eq!(d.opts.paths.push, "/in");
        let d = dialer(&[("host", "example.com:443")]);
        assert_eq!(d.opts.authority, "example.com:8443");
    }

    #[tokio::test]
    async fn refuses_to_run_over_a_previous_hop() {
        let d = dialer(&[]);
        let (a, _b) = tokio::io::duplex(64);
        let err = d
            .handshake(Box::new(a), &Address::parse("10.0.0.1:8443").unwrap())
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert!(err.to_string().contains("UDP"), "{err}");
    }
}
