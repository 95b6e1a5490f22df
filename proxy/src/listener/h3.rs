//! The `h3` listener (gost-wire.md §8.7): PHT's authorize, push and pull endpoints over
//! HTTP/3 on a UDP port. Every PHT session is one tunnel for the service's handler.
//!
//! QUIC connections share the listener's UDP socket: when the service stops they go on serving
//! the sessions that drain, and are closed (and the socket freed) once it stops for good.
//!
//! On `-L`, GOST's `http3://` is a different thing (an HTTP/3 reverse proxy, listener and
//! handler `http3`); it is not this listener.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use gost_api::Metadata;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::{HANDSHAKED_BACKLOG, Lingering, Listener};
use crate::conn::BoxConn;
use crate::h3::{Handler, QuicOptions, Server};
use crate::pht::Paths;
use crate::pht::server::PhtServer;
use crate::tls::ServerTls;

/// The `h3` listener.
pub struct H3Listener {
    ready: Mutex<mpsc::Receiver<(BoxConn, SocketAddr)>>,
    server: Server,
    pht: Arc<PhtServer>,
}

/// Listener settings from metadata.
#[derive(Clone)]
pub struct H3Options {
    /// PHT endpoint paths (`authorizePath`, `pushPath`, `pullPath`, also `pht.`-prefixed).
    pub paths: Paths,
    /// QUIC settings; keep-alive is off unless `keepalive` is set, as on GOST's listener.
    pub quic: QuicOptions,
    /// Sessions waiting for the service to take them (`backlog`, GOST's 128).
    pub backlog: usize,
}

impl H3Options {
    /// From the listener's metadata; errors name the key.
    pub fn from_metadata(md: &Metadata) -> Result<Self, String> {
        let backlog = match md.int(&["backlog"]).map_err(|e| e.to_string())? {
            None | Some(0) => HANDSHAKED_BACKLOG,
            Some(n) => usize::try_from(n)
                .map_err(|_| format!("metadata `backlog`: {n} is not a positive count"))?,
        };
        Ok(H3Options {
            paths: Paths::from_metadata(md),
            quic: QuicOptions::from_metadata(md, false)?,
            backlog,
        })
    }
}

/// Binds `addr` (UDP) for the service `service`; `tls` must offer ALPN `h3`
/// ([`crate::h3::ALPN`]).
pub fn bind(
    service: &str,
    addr: &str,
    tls: &ServerTls,
    options: H3Options,
) -> io::Result<H3Listener> {
    let (tx, rx) = mpsc::channel(options.backlog);
    let pht = PhtServer::new(service, options.paths, tx);
    let serving = pht.clone();
    let handler: Handler = Arc::new(move |req, client| {
        let pht = serving.clone();
        Box::pin(async move { pht.serve(req, client).await })
    });
    let server = Server::bind(addr, tls, &options.quic, handler)?;
    Ok(H3Listener {
        ready: Mutex::new(rx),
        server,
        pht,
    })
}

impl H3Listener {
    /// PHT sessions open now.
    pub fn sessions(&self) -> usize {
        self.pht.sessions()
    }
}

#[async_trait]
impl Listener for H3Listener {
    async fn accept(&self) -> io::Result<(BoxConn, SocketAddr)> {
        self.ready
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::other("listener stopped"))
    }

    fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn linger(&self, release: CancellationToken) -> Option<Lingering> {
        Some(Box::pin(self.server.stop_accepting(release)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let mut md = Metadata::default();
        let options = H3Options::from_metadata(&md).unwrap();
        assert_eq!(options.backlog, HANDSHAKED_BACKLOG);
        assert_eq!(
            options.quic.keepalive, None,
            "GOST's listener: keep-alive off"
        );
        md.insert_str("backlog", "5");
        md.insert_str("pht.authorizePath", "/auth");
        let options = H3Options::from_metadata(&md).unwrap();
        assert_eq!(options.backlog, 5);
        assert_eq!(options.paths.authorize, "/auth");
        md.insert_str("backlog", "-2");
        assert!(
            H3Options::from_metadata(&md)
                .err()
                .unwrap()
                .contains("backlog")
        );
    }
}
