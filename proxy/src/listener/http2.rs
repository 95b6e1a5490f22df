//! The `http2` listener (gost-wire.md §8.3): TLS with ALPN `h2` and `http/1.1`.
//!
//! Over HTTP/2 every request is one proxy request, handed with its stream straight to the
//! service's [`Http2Handler`] (it needs the request itself, not a byte stream). A client that
//! chose HTTP/1.1 gets its TLS stream passed through `accept()` like any listener's
//! connection; the `http2` handler serves it as a plain HTTPS proxy, as GOST does.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::tcp::TcpListenerImpl;
use super::{Handshaking, Ready};
use crate::conn::{BoxConn, Conn};
use crate::h2pool::{Drive, accept_connection};
use crate::tls::ServerTls;

/// ALPN offered by the `http2` listener, HTTP/2 preferred (§3.3).
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Binds `addr`, serving TLS with `tls` (built with [`ALPN`]). HTTP/2 requests reach the
/// service as [`Http2Exchange`]s, HTTP/1.1 clients as their TLS stream.
pub fn bind(
    addr: &str,
    tls: ServerTls,
    keepalive: crate::conn::KeepAlive,
) -> io::Result<Handshaking> {
    let tcp = TcpListenerImpl::bind(addr)?.with_keepalive(keepalive);
    Ok(Handshaking::spawn(tcp, move |stream, client, ready| {
        let tls = tls.clone();
        async move {
            // Tunnels share this connection: see `tcpinfo::Watched`.
            let stream = crate::tcpinfo::shared_socket(stream);
            let pace = stream.pace();
            let stream = match tls.accept(stream, client).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(client = %client, error = %e, "TLS handshake failed");
                    return;
                }
            };
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                let stream = crate::tls::Paced::new(stream, pace.clone());
                serve(Box::new(stream), client, ready, pace).await;
            } else {
                http1(Box::new(stream), client, ready).await;
            }
        }
    }))
}

async fn http1(conn: BoxConn, client: SocketAddr, ready: Ready) {
    let _ = ready.send((conn, client)).await;
}

/// One HTTP/2 request and the means to answer it, passed to the service as a connection of
/// its own, so that every request goes through the service's accept loop: the handler in
/// place at that moment (a reload applies to connections already open), the connection
/// limit, and the service's closing. It is not a byte stream: reads and writes fail. A request
/// dropped unanswered (refused at the door, the service gone) is reset with `REFUSED_STREAM`,
/// which tells the client it may send it again elsewhere.
pub struct Http2Exchange {
    /// The request; taken by the handler.
    pub request: Option<Request<RecvStream>>,
    /// Its answer; taken by the handler.
    pub respond: Option<SendResponse<Bytes>>,
    /// Its connection, which the tunnel polls in its own turn ([`crate::h2pool::Driver`]).
    pub driver: Arc<dyn Drive>,
}

impl Drop for Http2Exchange {
    fn drop(&mut self) {
        if let Some(respond) = &mut self.respond {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
        }
    }
}

fn not_a_stream() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "an HTTP/2 request is served by the http2 handler, not relayed",
    )
}

impl AsyncRead for Http2Exchange {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(not_a_stream()))
    }
}

impl AsyncWrite for Http2Exchange {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(not_a_stream()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Conn for Http2Exchange {
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}

async fn serve(io: BoxConn, client: SocketAddr, ready: Ready, pace: crate::tcpinfo::Pace) {
    // The connection ends when this task does, although its tunnels share it.
    let Some((connection, _closing)) = accept_connection(io, client, pace).await else {
        return;
    };
    let mut closing = false;
    // Accepting also drives the connection, so this loop runs until the client is gone.
    loop {
        match super::h2::next_request(&connection, &ready, &mut closing).await {
            None => return,
            Some(Ok((request, respond))) => {
                let exchange = Http2Exchange {
                    request: Some(request),
                    respond: Some(respond),
                    driver: connection.clone(),
                };
                super::hand_over(&ready, Box::new(exchange), client);
            }
            Some(Err(e)) => {
                tracing::debug!(client = %client, error = %e, "HTTP/2 connection ended");
                return;
            }
        }
    }
}
