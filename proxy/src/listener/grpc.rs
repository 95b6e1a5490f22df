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
use crate::conn::BoxConn;
use crate::grpc::{ChunkCodec, GrpcConn, MAX_RECEIVE, ServerOutbound, method_path};
use crate::h2pool::{
    CONNECTION_WINDOW, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE,
    MAX_SEND_BUFFER, STREAM_WINDOW,
};
use crate::tls::ServerTls;

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
pub fn bind(addr: &str, tls: Option<ServerTls>, options: GrpcOptions) -> io::Result<Handshaking> {
    let tcp = TcpListenerImpl::bind(addr)?;
    let local = tcp.local_addr();
    let options = Arc::new(options);
    Ok(Handshaking::spawn(tcp, move |stream, client, ready| {
        let tls = tls.clone();
        let options = options.clone();
        async move {
            let io: BoxConn = match tls {
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => Box::new(stream),
                    Err(e) => {
                        tracing::info!(
                            listener = %local, client = %client, error = %e,
                            "grpc: TLS handshake failed (a client without TLS needs grpcInsecure=true on both ends)"
                        );
                        return;
                    }
                },
                None => Box::new(stream),
            };
            serve(io, client, local, options, ready).await;
        }
    }))
}

async fn serve(
    io: BoxConn,
    client: SocketAddr,
    local: SocketAddr,
    options: Arc<GrpcOptions>,
    ready: Ready,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buf_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE);
    if let Some((interval, timeout)) = options.keepalive {
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(interval)
            .keep_alive_timeout(timeout);
    }
    let peer: Arc<str> = Arc::from(client.to_string());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let options = options.clone();
        let ready = ready.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(call(req, &options, ready, peer, client, local).await) }
    });
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        if is_not_http2(&e) {
            tracing::info!(
                listener = %local, client = %client, error = %crate::grpc::error_chain(&e),
                "grpc: the client does not speak HTTP/2 (not a gRPC client, or TLS/grpcInsecure mismatch)"
            );
        } else {
            tracing::debug!(listener = %local, client = %client, error = %crate::grpc::error_chain(&e), "grpc connection ended");
        }
    }
}

/// Whether a connection failed before HTTP/2 started: its first bytes were not the preface.
fn is_not_http2(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::PROTOCOL_ERROR) && h2.is_go_away();
        }
        source = err.source();
    }
    false
}

async fn call(
    req: Request<Incoming>,
    options: &GrpcOptions,
    ready: Ready,
    peer: Arc<str>,
    client: SocketAddr,
    local: SocketAddr,
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
    let service = tower_service_fn(move |request: tonic::Request<tonic::Streaming<_>>| {
        let ready = ready.clone();
        let peer = peer.clone();
        async move {
            let (conn, outbound) = GrpcConn::server(request.into_inner(), peer);
            ready
                .send((Box::new(conn), client))
                .await
                .map_err(|_| Status::unavailable("service stopped"))?;
            Ok(tonic::Response::new(ServerOutbound(outbound)))
        }
    });
    tonic::server::Grpc::new(ChunkCodec)
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
