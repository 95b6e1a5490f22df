//! The `h2` (TLS) and `h2c` (cleartext, prior knowledge) listeners (gost-wire.md §8.4): every
//! accepted HTTP/2 stream is one tunnel for the service's handler.
//!
//! Without metadata `path` a stream must be a `CONNECT` (any authority; it names the node, not
//! a target) or it gets `405`; with `path` the request's `:path` must equal it exactly (any
//! method) or it gets `400`. An accepted stream is answered `200` at once; its request body
//! then carries client→server bytes and its response body server→client bytes.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};

use super::tcp::TcpListenerImpl;
use super::{Handshaking, Ready};
use crate::conn::BoxConn;
use crate::h2pool::{H2Stream, ServerConnection, accept_connection};
use crate::tls::ServerTls;

/// Binds `addr` and serves HTTP/2 tunnels, over TLS when `tls` is given (`h2`), cleartext
/// otherwise (`h2c`). `path` is the metadata `path`, if set.
pub fn bind(
    addr: &str,
    tls: Option<ServerTls>,
    path: Option<String>,
    keepalive: crate::conn::KeepAlive,
) -> io::Result<Handshaking> {
    let tcp = TcpListenerImpl::bind(addr)?.with_keepalive(keepalive);
    Ok(Handshaking::spawn(tcp, move |stream, client, ready| {
        let tls = tls.clone();
        let path = path.clone();
        async move {
            // Tunnels share this connection: see `tcpinfo::Watched`.
            let stream = crate::tcpinfo::shared_socket(stream);
            let pace = stream.pace();
            let io: BoxConn = match tls {
                Some(tls) => match tls.accept(stream, client).await {
                    Ok(stream) => Box::new(crate::tls::Paced::new(stream, pace.clone())),
                    Err(e) => {
                        tracing::debug!(client = %client, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => Box::new(stream),
            };
            serve(io, client, path, ready, pace).await;
        }
    }))
}

async fn serve(
    io: BoxConn,
    client: SocketAddr,
    path: Option<String>,
    ready: Ready,
    pace: crate::tcpinfo::Pace,
) {
    // The connection ends when this task does, although its tunnels share it.
    let Some((connection, _closing)) = accept_connection(io, client, pace).await else {
        return;
    };
    let mut closing = false;
    // Accepting also drives the connection, so this loop runs until the client is gone.
    loop {
        let (req, mut respond) = match next_request(&connection, &ready, &mut closing).await {
            None => return,
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                tracing::debug!(client = %client, error = %e, "HTTP/2 connection ended");
                return;
            }
        };
        if ready.is_closed() {
            // Sent before the client saw the GOAWAY: refused unprocessed, safe to send again.
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        if let Some(stream) = accept_stream(req, respond, path.as_deref(), client) {
            let stream = stream.driven_by(connection.clone());
            super::hand_over(&ready, Box::new(stream), client);
        }
    }
}

/// The next request on an HTTP/2 server connection. Once the service stops taking streams
/// (removed, replaced, or the process is stopping: its queue is closed) a GOAWAY goes out
/// first, so that the client's pool opens its next tunnels elsewhere instead of on a
/// connection nobody takes streams from; the requests under way finish.
pub(super) async fn next_request(
    connection: &ServerConnection,
    ready: &Ready,
    closing: &mut bool,
) -> Option<Result<(Request<RecvStream>, SendResponse<Bytes>), h2::Error>> {
    loop {
        tokio::select! {
            accepted = std::future::poll_fn(|cx| connection.poll_task(cx)) => return accepted,
            () = ready.closed(), if !*closing => {
                *closing = true;
                connection.with(|c| c.graceful_shutdown());
            }
        }
    }
}

/// Why a stream is refused, if it is.
fn refusal(method: &Method, request_path: &str, path: Option<&str>) -> Option<StatusCode> {
    match path {
        None if method != Method::CONNECT => Some(StatusCode::METHOD_NOT_ALLOWED),
        Some(path) if request_path != path => Some(StatusCode::BAD_REQUEST),
        _ => None,
    }
}

fn accept_stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    path: Option<&str>,
    client: SocketAddr,
) -> Option<H2Stream> {
    let request_path = req.uri().path_and_query().map_or("", |p| p.as_str());
    if let Some(status) = refusal(req.method(), request_path, path) {
        tracing::debug!(
            client = %client, method = %req.method(), path = request_path,
            status = status.as_u16(), "HTTP/2 tunnel request refused"
        );
        let response = Response::builder().status(status).body(()).expect("valid");
        let _ = respond.send_response(response, true);
        return None;
    }
    let response = Response::builder()
        .status(StatusCode::OK)
        .body(())
        .expect("valid");
    match respond.send_response(response, false) {
        Ok(send) => Some(H2Stream::new(send, req.into_body())),
        Err(e) => {
            tracing::debug!(client = %client, error = %e, "HTTP/2 stream gone before its answer");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_path_only_connect() {
        assert_eq!(refusal(&Method::CONNECT, "", None), None);
        assert_eq!(
            refusal(&Method::GET, "/", None),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
    }

    #[test]
    fn with_path_exact_match_any_method() {
        assert_eq!(refusal(&Method::GET, "/tun", Some("/tun")), None);
        assert_eq!(refusal(&Method::POST, "/tun", Some("/tun")), None);
        assert_eq!(
            refusal(&Method::GET, "/tun?x", Some("/tun")),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            refusal(&Method::CONNECT, "", Some("/tun")),
            Some(StatusCode::BAD_REQUEST)
        );
    }
}
