//! The `grpc` listener (gost-wire.md §8.5): every call of GOST's streaming `Tunnel` method (or
//! the method that metadata `path` names) is one tunnel for the service's handler.
//!
//! TLS (ALPN `h2`) by default, cleartext HTTP/2 with prior knowledge when `grpcInsecure`. A
//! call of any other path is answered `UNIMPLEMENTED`; a request that is not gRPC at all gets
//! `415`, as from GOST's gRPC library.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gost_api::Metadata;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::Status;
use tonic::body::Body;

use super::tcp::TcpListenerImpl;
use super::{Handshaking, Listener, Ready};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::conn::{BoxConn, Prefixed};
use crate::grpc::{ChunkCodec, GrpcConn, MAX_RECEIVE, ServerOutbound, method_path};
use crate::h2pool::{
    CONNECTION_WINDOW, H2_HANDSHAKE_TIMEOUT, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, MAX_SEND_BUFFER,
    STREAM_WINDOW,
};
use crate::supervisor::DEFAULT_MAX_CONNECTIONS;
use crate::tcpinfo::Pace;
use crate::tls::ServerTls;

/// Calls (tunnels) one client connection may have open at once. GOST's gRPC client carries
/// every tunnel to a node over one connection and, past the server's limit, queues new calls
/// on it instead of opening another connection, so a lower limit here stalls its tunnels
/// (GOST's own server sets none). Each call is still one of the service's connections, held
/// to `maxConnections` like any other, so this only has to be as high as that default.
pub const MAX_CONCURRENT_CALLS: u32 = DEFAULT_MAX_CONNECTIONS as u32;

/// GOST's server PING interval with `keepalive=true` (`keepalive.time`).
pub const DEFAULT_KEEPALIVE_TIME: Duration = Duration::from_secs(60);

/// GOST's wait for a PING answer with `keepalive=true` (`keepalive.timeout`).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The listener's settings from its metadata.
#[derive(Clone, Debug)]
pub struct GrpcOptions {
    /// Cleartext HTTP/2 instead of TLS (`grpcInsecure`).
    pub insecure: bool,
    /// The one method path served.
    pub path: PathAndQuery,
    /// Server PINGs (interval, answer timeout), with `keepalive=true`.
    pub keepalive: Option<(Duration, Duration)>,
}

impl GrpcOptions {
    /// Reads `grpcInsecure`/`grpc.insecure`/`insecure`, `path`/`grpc.path` and the keepalive
    /// settings; errors name the key.
    pub fn from_metadata(md: &Metadata) -> Result<Self, String> {
        let insecure = md
            .bool(&["grpcInsecure", "grpc.insecure", "insecure"])
            .map_err(|e| e.to_string())?
            .unwrap_or(false);
        let path = method_path(md.string(&["path", "grpc.path"]).as_deref())?;
        let keepalive = md
            .bool(&["keepalive", "grpc.keepalive", "keepAlive"])
            .map_err(|e| e.to_string())?
            .unwrap_or(false);
        let keepalive = if keepalive {
            let time = md
                .duration(&["keepalive.time", "grpc.keepalive.time"])
                .map_err(|e| e.to_string())?
                .flatten()
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_KEEPALIVE_TIME);
            let timeout = md
                .duration(&["keepalive.timeout", "grpc.keepalive.timeout"])
                .map_err(|e| e.to_string())?
                .flatten()
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT);
            Some((time, timeout))
        } else {
            None
        };
        Ok(GrpcOptions {
            insecure,
            path,
            keepalive,
        })
    }
}

/// Binds `addr` and serves gRPC tunnels, over TLS when `tls` is given.
pub fn bind(
    addr: &str,
    tls: Option<ServerTls>,
    options: GrpcOptions,
    keepalive: crate::conn::KeepAlive,
) -> io::Result<Handshaking> {
    let tcp = TcpListenerImpl::bind(addr)?.with_keepalive(keepalive);
    let local = tcp.local_addr();
    let options = Arc::new(options);
    Ok(Handshaking::spawn(tcp, move |stream, client, ready| {
        let tls = tls.clone();
        let options = options.clone();
        async move {
            // Tunnels share this connection: see `tcpinfo::Watched`.
            let stream = crate::tcpinfo::shared_socket(stream);
            let pace = stream.pace();
            let io: BoxConn = match tls {
                Some(tls) => match tls.accept(stream, client).await {
                    Ok(stream) => Box::new(crate::tls::Paced::new(stream, pace.clone())),
                    Err(e) if crate::tls::peer_not_speaking_tls(&e) => {
                        tracing::info!(
                            listener = %local, client = %client, error = %e,
                            "grpc: TLS handshake failed (a client without TLS needs grpcInsecure=true on both ends)"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(
                            listener = %local, client = %client, error = %e,
                            "grpc: TLS handshake failed"
                        );
                        return;
                    }
                },
                None => Box::new(stream),
            };
            let io = match expect_preface(io).await {
                Ok(io) => io,
                Err(why) => {
                    tracing::info!(
                        listener = %local, client = %client, error = %why,
                        "grpc: the client does not speak HTTP/2 (not a gRPC client, or a TLS/grpcInsecure mismatch)"
                    );
                    return;
                }
            };
            serve(io, client, local, options, ready, pace).await;
        }
    }))
}

/// Serves the gRPC calls of one HTTP/2 connection over `io`, whose writes keep to `pace`.
pub(crate) async fn serve(
    io: BoxConn,
    client: SocketAddr,
    local: SocketAddr,
    options: Arc<GrpcOptions>,
    ready: Ready,
    pace: Pace,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buf_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_CONCURRENT_CALLS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE);
    if let Some((interval, timeout)) = options.keepalive {
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(interval)
            .keep_alive_timeout(timeout);
    }
    let peer: Arc<str> = Arc::from(client.to_string());
    let stopped = ready.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let options = options.clone();
        let ready = ready.clone();
        let peer = peer.clone();
        let pace = pace.clone();
        async move { Ok::<_, Infallible>(call(req, &options, ready, peer, client, local, pace).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // The service stopped accepting (removed, replaced, or the process is stopping):
        // GOAWAY, so that the client sends its next calls elsewhere; calls under way finish.
        () = stopped.closed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(
            listener = %local, client = %client, error = %crate::error_chain(&e),
            "grpc connection ended"
        );
    }
}

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the client's first bytes, within [`H2_HANDSHAKE_TIMEOUT`], and puts them back in
/// front of the stream if they are the HTTP/2 preface. Otherwise says what came instead, so
/// that an HTTP/1 client or a TLS/`grpcInsecure` mismatch gets one clear log line (and a
/// client that sends nothing does not hold a task forever).
async fn expect_preface(mut io: BoxConn) -> Result<BoxConn, String> {
    let mut first = [0u8; PREFACE.len()];
    let mut got = 0;
    let read = async {
        while got < first.len() {
            let n = io
                .read(&mut first[got..])
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("the client closed after {got} bytes"));
            }
            got += n;
            if first[..got] != PREFACE[..got] {
                break;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(H2_HANDSHAKE_TIMEOUT, read).await {
        Err(_) => Err(format!("no HTTP/2 preface within {H2_HANDSHAKE_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) if first[..got] == PREFACE[..] => {
            Ok(Prefixed::boxed(Bytes::copy_from_slice(&first), io))
        }
        Ok(Ok(())) => {
            let what = if first[0] == 0x16 {
                "a TLS handshake: the client uses TLS, this listener has grpcInsecure=true"
                    .to_string()
            } else {
                format!(
                    "{:?} instead of the HTTP/2 preface",
                    String::from_utf8_lossy(&first[..got])
                )
            };
            Err(what)
        }
    }
}

async fn call(
    req: Request<Incoming>,
    options: &GrpcOptions,
    ready: Ready,
    peer: Arc<str>,
    client: SocketAddr,
    local: SocketAddr,
    pace: Pace,
) -> Response<Body> {
    let is_grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        tracing::info!(
            listener = %local, client = %client, method = %req.method(), path = req.uri().path(),
            "grpc: not a gRPC request (no application/grpc content type), answered 415"
        );
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return response;
    }
    if req.uri().path() != options.path.path() {
        tracing::info!(
            listener = %local, client = %client, path = req.uri().path(), serves = options.path.path(),
            "grpc: call of an unknown method, answered UNIMPLEMENTED (check `path` on both ends)"
        );
        return Status::unimplemented(format!("unknown method {}", req.uri().path())).into_http();
    }
    let codec = ChunkCodec::paced(pace.clone());
    let service = tower_service_fn(move |request: tonic::Request<tonic::Streaming<_>>| {
        let ready = ready.clone();
        let peer = peer.clone();
        let pace = pace.clone();
        async move {
            let (conn, outbound) = GrpcConn::server(request.into_inner(), peer, pace);
            ready
                .send((Box::new(conn), client))
                .await
                .map_err(|_| Status::unavailable("service stopped"))?;
            Ok(tonic::Response::new(ServerOutbound(outbound)))
        }
    });
    tonic::server::Grpc::new(codec)
        .max_decoding_message_size(MAX_RECEIVE)
        .streaming(service, req)
        .await
}

/// A `tower_service::Service` from an async function, as tonic's server wants its method.
fn tower_service_fn<F, Fut, Req, Res>(f: F) -> ServiceFn<F>
where
    F: FnMut(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Res, Status>>,
{
    ServiceFn(f)
}

struct ServiceFn<F>(F);

impl<F, Fut, Req, Res> tower_service::Service<Req> for ServiceFn<F>
where
    F: FnMut(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Res, Status>>,
{
    type Response = Res;
    type Error = Status;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Fut {
        (self.0)(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn first_bytes(bytes: &'static [u8]) -> Result<Vec<u8>, String> {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(bytes).await.unwrap();
        drop(a);
        let mut io = expect_preface(Box::new(b)).await?;
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        Ok(all)
    }

    #[tokio::test]
    async fn preface_is_put_back_and_strangers_are_named() {
        let mut h2 = PREFACE.to_vec();
        h2.extend_from_slice(b"frames");
        let h2: &'static [u8] = h2.leak();
        assert_eq!(first_bytes(h2).await.unwrap(), h2);
        let http1 = first_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_err();
        assert!(http1.contains("GET / HTTP/1.1"), "{http1}");
        let tls = first_bytes(b"\x16\x03\x01\x02\x00\x01").await.unwrap_err();
        assert!(tls.contains("grpcInsecure"), "{tls}");
        let short = first_bytes(b"PRI * HTTP/2.0").await.unwrap_err();
        assert!(short.contains("closed after 14 bytes"), "{short}");
    }

    #[tokio::test]
    async fn one_connection_may_carry_as_many_calls_as_the_service_takes() {
        let listener = bind(
            "127.0.0.1:0",
            None,
            options(&[("grpcInsecure", "true")]).unwrap(),
            crate::conn::KeepAlive::default(),
        )
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr())
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        // The server's SETTINGS arrive after the handshake; the client starts from no limit
        // known (h2 assumes 100 until then).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while client.current_max_send_streams() != MAX_CONCURRENT_CALLS as usize
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
            client = client.ready().await.unwrap();
        }
        assert_eq!(
            client.current_max_send_streams(),
            DEFAULT_MAX_CONNECTIONS,
            "the server's SETTINGS_MAX_CONCURRENT_STREAMS"
        );
    }

    fn options(md: &[(&str, &str)]) -> Result<GrpcOptions, String> {
        let mut metadata = Metadata::default();
        for (k, v) in md {
            metadata.insert_str(k, v);
        }
        GrpcOptions::from_metadata(&metadata)
    }

    #[test]
    fn defaults_are_gosts() {
        let o = options(&[]).unwrap();
        assert!(!o.insecure);
        assert_eq!(o.path.as_str(), "/GostTunel/Tunnel");
        assert!(o.keepalive.is_none());
    }

    #[test]
    fn aliases_and_keepalive() {
        for key in ["grpcInsecure", "grpc.insecure", "insecure"] {
            assert!(options(&[(key, "true")]).unwrap().insecure, "{key}");
        }
        let o = options(&[("grpc.path", "x/y/z"), ("keepalive", "true")]).unwrap();
        assert_eq!(o.path.as_str(), "/x/y-z");
        assert_eq!(
            o.keepalive,
            Some((DEFAULT_KEEPALIVE_TIME, DEFAULT_KEEPALIVE_TIMEOUT))
        );
        let o = options(&[("keepalive", "true"), ("keepalive.time", "5s")]).unwrap();
        assert_eq!(o.keepalive.unwrap().0, Duration::from_secs(5));
        assert!(
            options(&[("grpcInsecure", "maybe")])
                .unwrap_err()
                .contains("grpcInsecure")
        );
    }
}
