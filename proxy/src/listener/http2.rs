//! The `http2` listener (gost-wire.md §8.3): TLS with ALPN `h2` and `http/1.1`.
//!
//! Over HTTP/2 every request is one proxy request, handed with its stream straight to the
//! service's [`Http2Handler`] (it needs the request itself, not a byte stream). A client that
//! chose HTTP/1.1 gets its TLS stream passed through `accept()` like any listener's
//! connection; the `http2` handler serves it as a plain HTTPS proxy, as GOST does.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use super::tcp::TcpListenerImpl;
use super::{Handshaking, Ready};
use crate::conn::BoxConn;
use crate::h2pool::accept_connection;
use crate::handler::http2::Http2Handler;
use crate::tls::ServerTls;

/// ALPN offered by the `http2` listener, HTTP/2 preferred (§3.3).
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Binds `addr`, serving TLS with `tls` (built with [`ALPN`]) and HTTP/2 requests with
/// `handler`.
pub fn bind(
    addr: &str,
    tls: ServerTls,
    handler: Arc<Http2Handler>,
    keepalive: crate::conn::KeepAlive,
) -> io::Result<Handshaking> {
    let tcp = TcpListenerImpl::bind(addr)?.with_keepalive(keepalive);
    Ok(Handshaking::spawn(tcp, move |stream, client, ready| {
        let tls = tls.clone();
        let handler = handler.clone();
        async move {
            let stream = match tls.accept(stream).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(client = %client, error = %e, "TLS handshake failed");
                    return;
                }
            };
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve(Box::new(stream), client, handler).await;
            } else {
                http1(Box::new(stream), client, ready).await;
            }
        }
    }))
}

async fn http1(conn: BoxConn, client: SocketAddr, ready: Ready) {
    let _ = ready.send((conn, client)).await;
}

async fn serve(io: BoxConn, client: SocketAddr, handler: Arc<Http2Handler>) {
    let Some(mut connection) = accept_connection(io, client).await else {
        return;
    };
    // Accepting also drives the connection, so this loop runs until the client is gone.
    while let Some(accepted) = connection.accept().await {
        match accepted {
            Ok((req, respond)) => handler.spawn_request(req, respond, client),
            Err(e) => {
                tracing::debug!(client = %client, error = %e, "HTTP/2 connection ended");
                return;
            }
        }
    }
}
