//! The `pht` and `phts` listeners (gost-wire.md §8.6): an HTTP/1.1 server (keep-alive) on TCP,
//! or on TLS for `phts`, whose requests go to a [`PhtServer`]; its sessions are this
//! listener's connections.
//!
//! `phts` offers ALPN `http/1.1` only: GOST's server offers no HTTP/2 either (A2), so GOST's
//! clients speak HTTP/1.1 to both.

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::Handshaking;
use super::tcp::TcpListenerImpl;
use crate::conn::BoxConn;
use crate::pht::server::PhtServer;
use crate::pht::{MAX_READ_BUFFER, Paths};
use crate::tls::ServerTls;

/// ALPN offered by `phts`.
pub const ALPN: &[&[u8]] = &[b"http/1.1"];

/// Time a client has to send a request head: GOST's read-header timeout. hyper also applies
/// it to a keep-alive connection waiting for its next request, which bounds idle connections.
pub const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds `addr` and serves the PHT endpoints `paths` for the service `service`, over TLS
/// when `tls` (built with [`ALPN`]) is given.
pub fn bind(
    addr: &str,
    tls: Option<ServerTls>,
    service: &str,
    paths: Paths,
    keepalive: crate::conn::KeepAlive,
) -> io::Result<Handshaking> {
    let tcp = TcpListenerImpl::bind(addr)?.with_keepalive(keepalive);
    let service = service.to_string();
    // Every connection gets a clone of the same `ready` sender; the sessions' server is made
    // with the first one.
    let server: Arc<OnceLock<Arc<PhtServer>>> = Arc::new(OnceLock::new());
    Ok(Handshaking::spawn(tcp, move |stream, client, ready| {
        let tls = tls.clone();
        let server = server
            .get_or_init(|| PhtServer::new(&service, paths.clone(), ready))
            .clone();
        async move {
            let io: BoxConn = match tls {
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => Box::new(stream),
                    Err(e) => {
                        tracing::debug!(client = %client, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => Box::new(stream),
            };
            let service = service_fn(move |req: http::Request<Incoming>| {
                let server = server.clone();
                async move {
                    let req = req.map(|body| body.map_err(io::Error::other).boxed());
                    Ok::<_, Infallible>(server.serve(req, client).await)
                }
            });
            let result = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_HEADER_TIMEOUT)
                .max_buf_size(MAX_READ_BUFFER)
                .serve_connection(TokioIo::new(io), service)
                .await;
            if let Err(e) = result {
                tracing::debug!(client = %client, error = %e, "PHT connection ended");
            }
        }
    }))
}
