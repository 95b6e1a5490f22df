//! The `pht` and `phts` listeners (gost-wire.md §8.6): an HTTP/1.1 server (keep-alive) on TCP,
//! or on TLS for `phts`, whose requests go to a [`PhtServer`]; its sessions are this
//! listener's connections.
//!
//! `phts` offers no ALPN, as GOST's server (gost-wire.md §3.3): a client offering any list
//! (`h2` alone, as `openssl s_client -alpn h2` does) or none completes the handshake and is
//! served HTTP/1.1, which is what GOST's clients speak to it.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::Handshaking;
use super::tcp::TcpListenerImpl;
use crate::conn::{BoxConn, Heard};
use crate::pht::server::{Draining, PhtServer};
use crate::pht::{MAX_READ_BUFFER, Paths};
use crate::tls::ServerTls;

/// Time a client has to send a request head once its first byte is in: GOST's read-header
/// timeout.
pub const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a keep-alive connection may wait for its next request. GOST's server sets no
/// limit; this one is above the 90 s after which GOST's client (Go's transport) closes an
/// idle connection, so that the client closes first and never sends a push into a connection
/// the server is closing (a POST is not retried).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Binds `addr` and serves the PHT endpoints `paths` for the service `service`, over TLS
/// when `tls` (built without ALPN) is given.
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
                Some(tls) => match tls.accept(stream, client).await {
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
                    let mut res = server.serve(req, client).await;
                    if res.extensions().get::<Draining>().is_some() {
                        // hyper closes the connection after this answer. Only this one:
                        // the others may carry the pushes of tunnels still draining here.
                        res.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    Ok::<_, Infallible>(res)
                }
            });
            let (builder, io) = http1_server(io, IDLE_TIMEOUT);
            let result = builder.serve_connection(io, service).await;
            if let Err(e) = result {
                tracing::debug!(client = %client, error = %e, "PHT connection ended");
            }
        }
    }))
}

/// hyper's settings for one PHT connection, and its socket as hyper is to read it: request
/// heads within [`READ_HEADER_TIMEOUT`] of their first byte, keep-alive waits of up to `idle`.
fn http1_server(io: BoxConn, idle: Duration) -> (http1::Builder, TokioIo<Heard<BoxConn>>) {
    let heard = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Heard::new(io, heard.clone()));
    let mut builder = http1::Builder::new();
    builder
        .timer(HeadTimer {
            heard,
            idle,
            first: AtomicBool::new(true),
        })
        .header_read_timeout(READ_HEADER_TIMEOUT)
        .max_buf_size(MAX_READ_BUFFER);
    (builder, io)
}

/// hyper's timer for one connection's header read timeout, which hyper starts when the
/// connection begins to wait for a request head, idle or not. Go's server starts it when the
/// connection opens for the first request, and at the first byte for the next ones: a
/// keep-alive connection may be idle in between. So a later wait lasts `idle` while nothing
/// arrives, and the header read timeout from the first bytes read (`heard`, set by the
/// connection's socket).
struct HeadTimer {
    heard: Arc<AtomicBool>,
    idle: Duration,
    // Set until the first wait, which is the header read timeout from the start.
    first: AtomicBool,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    // hyper asks for one at the start of every wait for a request head.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.heard.store(false, Ordering::Relaxed);
        let now = Instant::now();
        let first = self.first.swap(false, Ordering::Relaxed);
        let until = if first { deadline } else { now + self.idle };
        Box::pin(HeadWait {
            heard: self.heard.clone(),
            header: deadline.saturating_duration_since(now),
            started: first,
            sleep: Box::pin(tokio::time::sleep_until(until.into())),
        })
    }
}

struct HeadWait {
    heard: Arc<AtomicBool>,
    header: Duration,
    started: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this after every read that left the head incomplete, so the first poll
        // that finds bytes heard is within a read of the first byte.
        if !self.started && self.heard.load(Ordering::Relaxed) {
            self.started = true;
            let deadline = tokio::time::Instant::now() + self.header;
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl Sleep for HeadWait {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const HEADER: Duration = Duration::from_millis(300);
    const IDLE: Duration = Duration::from_millis(3000);

    /// A PHT-configured HTTP/1.1 server answering `ok` (header timeout `HEADER`, idle `IDLE`)
    /// and a client connected to it.
    async fn connected() -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut builder, io) = http1_server(Box::new(stream), IDLE);
            builder.header_read_timeout(HEADER);
            let service = service_fn(|_req: http::Request<Incoming>| async {
                Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"ok"),
                )))
            });
            let _ = builder.serve_connection(io, service).await;
        });
        TcpStream::connect(addr).await.unwrap()
    }

    /// Reads until the server closes; how long that took.
    async fn time_to_close(stream: &mut TcpStream) -> Duration {
        let started = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf));
            match read.await.expect("the server closes within 10 s") {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    }

    /// Sends a whole request and reads its `200`.
    async fn request(stream: &mut TcpStream) {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    }

    #[tokio::test]
    async fn idle_keep_alive_waits_longer_than_the_header_timeout() {
        let mut stream = connected().await;
        request(&mut stream).await;
        // Idle for longer than the header timeout: the connection still serves.
        tokio::time::sleep(HEADER * 2).await;
        request(&mut stream).await;
        // And it is closed once idle for the idle timeout.
        let closed_after = time_to_close(&mut stream).await;
        assert!(
            closed_after >= IDLE - HEADER,
            "closed after {closed_after:?}"
        );
    }

    #[tokio::test]
    async fn a_new_connection_has_the_header_timeout_for_its_first_request() {
        let mut stream = connected().await;
        let closed_after = time_to_close(&mut stream).await;
        assert!(closed_after < IDLE / 2, "closed after {closed_after:?}");
    }

    #[tokio::test]
    async fn a_slow_head_times_out_from_its_first_byte() {
        let mut stream = connected().await;
        request(&mut stream).await;
        tokio::time::sleep(HEADER * 2).await;
        stream.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let closed_after = time_to_close(&mut stream).await;
        assert!(
            closed_after >= HEADER / 2 && closed_after < IDLE / 2,
            "closed {closed_after:?} after the first byte"
        );
    }
}
