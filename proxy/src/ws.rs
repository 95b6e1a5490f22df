//! A byte stream over a WebSocket, as GOST's `ws`/`wss` transports carry tunnels
//! (gost-wire.md §8.2).
//!
//! Each write goes out as one binary message; reads hand over the payloads of text and binary
//! messages in order, message boundaries meaning nothing. GOST peers end a direction with a
//! TCP half-close (or TLS close_notify) rather than a Close frame, so end of stream without a
//! Close frame is a normal end here, and shutting down the write side shuts down the
//! transport's write side the same way. A received Close frame ends the read side too.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, Stream};
use gost_api::Metadata;
use http::{HeaderName, HeaderValue};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::ProtocolError};

use crate::conn::{BoxConn, Conn};

/// Path the upgrade happens on unless `path` says otherwise: GOST's default.
pub const DEFAULT_PATH: &str = "/ws";

/// Upgrade handshake limit unless `handshakeTimeout` says otherwise. GOST leaves it to the
/// HTTP library's default (45 s for its client); a shorter bound frees a silent client's task
/// sooner and is still far above a loopback or WAN round trip.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Keepalive ping interval unless `ttl`/`keepalive.interval` says otherwise: GOST's default.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Largest message accepted from a peer. GOST writes one message per write of its relay (32 KiB
/// buffers, TLS records of at most 16 KiB), so 4 MiB leaves room for odd peers while bounding
/// what one tunnel can make us buffer.
pub const MAX_MESSAGE_SIZE: usize = 4 << 20;

/// Largest single frame accepted; a message may be one frame, so the same bound.
pub const MAX_FRAME_SIZE: usize = MAX_MESSAGE_SIZE;

/// Largest message we send for one write: the relay's buffer size, so that a write is one
/// message as in GOST, while a caller with a bigger buffer is split rather than copied whole.
pub const MAX_WRITE_MESSAGE: usize = 32 * 1024;

/// Read buffer of the frame decoder, allocated per WebSocket. The library default (128 KiB) is
/// a lot per idle tunnel; 16 KiB holds a full TLS record, the common payload.
pub const READ_BUFFER_SIZE: usize = 16 * 1024;

/// Bound on queued outgoing bytes: one message in flight plus control frames (pongs, pings,
/// close). Writes wait once it is reached.
pub const MAX_WRITE_BUFFER: usize = 2 * MAX_WRITE_MESSAGE + 4 * 1024;

/// The framing settings both sides use.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        // Write each frame through at once; the relay flushes after each chunk anyway.
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_FRAME_SIZE))
}

/// Client-side liveness checks (GOST's `keepalive` dialer option).
struct Keepalive {
    interval: Duration,
    next_ping: Pin<Box<Sleep>>,
    dead_at: Pin<Box<Sleep>>,
}

impl Keepalive {
    fn new(interval: Duration) -> Self {
        let now = Instant::now();
        Keepalive {
            interval,
            next_ping: Box::pin(tokio::time::sleep_until(now + interval)),
            dead_at: Box::pin(tokio::time::sleep_until(now + 2 * interval)),
        }
    }

    fn heard_from_peer(&mut self) {
        self.dead_at
            .as_mut()
            .reset(Instant::now() + 2 * self.interval);
    }
}

/// The transport under a WebSocket, hiding its end of stream from the WebSocket library.
///
/// The library takes EOF without a Close frame as the end of the whole WebSocket and refuses
/// to write afterwards, which would cut the other direction of a half-closed tunnel (GOST's
/// normal way to end a direction). Here EOF is noted and the library sees a read that is not
/// ready yet; [`WsStream`] then ends its read side and writing goes on.
///
/// After the write side has been shut down, the library may still want to answer a ping while
/// reading; those control frames are dropped instead of failing the read side.
pub struct Transport {
    inner: BoxConn,
    eof: bool,
    write_shut: bool,
    /// Whether the WebSocket is established. Before (during a client's upgrade) EOF reads as
    /// EOF, so that a server that closes instead of answering fails the upgrade at once
    /// rather than at its timeout.
    open: bool,
}

impl Transport {
    /// Wraps the stream an established WebSocket runs on (TCP, TLS, or a previous hop's
    /// tunnel).
    pub fn new(inner: BoxConn) -> Self {
        Transport {
            inner,
            eof: false,
            write_shut: false,
            open: true,
        }
    }

    /// Wraps the stream a client's upgrade runs on; [`WsStream::new`] marks it established.
    pub fn for_upgrade(inner: BoxConn) -> Self {
        Transport {
            open: false,
            ..Transport::new(inner)
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.eof {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.open && buf.filled().len() == before && buf.remaining() > 0 {
            // No waker is needed: WsStream checks `eof` as soon as the library returns.
            this.eof = true;
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_shut {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_shut {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_shut {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.write_shut = true;
        }
        Poll::Ready(Ok(()))
    }
}

/// A WebSocket seen as a byte stream; see the module documentation.
pub struct WsStream {
    ws: WebSocketStream<Transport>,
    /// What is left of the last message read: never more than one message.
    leftover: Bytes,
    read_done: bool,
    keepalive: Option<Keepalive>,
}

impl WsStream {
    /// Wraps an established WebSocket; `keepalive` is the ping interval, if any.
    pub fn new(mut ws: WebSocketStream<Transport>, keepalive: Option<Duration>) -> Self {
        ws.get_mut().open = true;
        WsStream {
            ws,
            leftover: Bytes::new(),
            read_done: false,
            keepalive: keepalive.map(Keepalive::new),
        }
    }

    /// The server side of a WebSocket whose upgrade has been answered already.
    pub async fn server(conn: BoxConn) -> Self {
        let ws =
            WebSocketStream::from_raw_socket(Transport::new(conn), Role::Server, Some(config()))
                .await;
        WsStream::new(ws, None)
    }

    /// Sends a ping when one is due; fails when the peer has been silent too long.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(keepalive) = self.keepalive.as_mut() else {
            return Ok(());
        };
        if keepalive.dead_at.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "WebSocket peer silent for {:?} (no data, no pong)",
                    2 * keepalive.interval
                ),
            ));
        }
        if keepalive.next_ping.as_mut().poll(cx).is_ready() {
            let interval = keepalive.interval;
            keepalive
                .next_ping
                .as_mut()
                .reset(Instant::now() + interval);
            // Re-arm the timer's waker at its new deadline.
            let _ = keepalive.next_ping.as_mut().poll(cx);
            // A writer that is blocked skips this ping: the data it waits to send proves
            // nothing about the peer, and the dead-peer timer still runs.
            let mut ws = Pin::new(&mut self.ws);
            if let Poll::Ready(Ok(())) = ws.as_mut().poll_ready(cx) {
                ws.as_mut()
                    .start_send(Message::Ping(Bytes::new()))
                    .map_err(into_io)?;
                if let Poll::Ready(Err(e)) = ws.poll_flush(cx) {
                    return Err(into_io(e));
                }
            }
        }
        Ok(())
    }
}

impl WsStream {
    /// Waits until part of a message is left to hand out or the stream has ended.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self;
        loop {
            if !this.leftover.is_empty() || this.read_done {
                return Poll::Ready(Ok(()));
            }
            this.poll_keepalive(cx)?;
            let next = match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Pending if this.ws.get_ref().eof => None,
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            };
            if let (Some(Ok(_)), Some(keepalive)) = (&next, this.keepalive.as_mut()) {
                keepalive.heard_from_peer();
            }
            match next {
                Some(Ok(Message::Binary(data))) => this.leftover = data,
                Some(Ok(Message::Text(text))) => this.leftover = Bytes::from(text),
                // A Close frame ends the stream for good (the library echoes it and refuses
                // further writes, as GOST's does); end of transport only ends reading.
                Some(Ok(Message::Close(_))) | None => this.read_done = true,
                // Pings are answered by the library; pongs only feed the keepalive.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) if is_end_of_stream(&e) => this.read_done = true,
                Some(Err(e)) => return Poll::Ready(Err(into_io(e))),
            }
        }
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_fill(cx))?;
        let n = this.leftover.len().min(buf.remaining());
        buf.put_slice(&this.leftover.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut ws = Pin::new(&mut self.get_mut().ws);
        ready!(ws.as_mut().poll_ready(cx)).map_err(into_io)?;
        let n = buf.len().min(MAX_WRITE_MESSAGE);
        ws.start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(into_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(into_io)
    }

    /// Half-closes like GOST: the transport's write side ends (TCP FIN, or TLS close_notify
    /// then FIN), no Close frame is sent, and the read side stays open for the peer's data.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.ws).poll_flush(cx)) {
            Ok(()) => {}
            // The peer's Close already ended the WebSocket; the transport still gets its FIN.
            Err(e) if is_end_of_stream(&e) => {}
            Err(e) => return Poll::Ready(Err(into_io(e))),
        }
        Pin::new(this.ws.get_mut()).poll_shutdown(cx)
    }
}

// Messages are owned buffers both ways: the relay hands them over instead of copying them.
impl Conn for WsStream {
    fn reads_chunks(&self) -> bool {
        true
    }

    fn poll_read_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let this = self.get_mut();
        ready!(this.poll_fill(cx))?;
        let chunk = std::mem::take(&mut this.leftover);
        Poll::Ready(Ok((!chunk.is_empty()).then_some(chunk)))
    }

    fn takes_chunks(&self) -> bool {
        true
    }

    fn poll_write_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        if chunk.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut ws = Pin::new(&mut self.get_mut().ws);
        ready!(ws.as_mut().poll_ready(cx)).map_err(into_io)?;
        let message = chunk.split_to(chunk.len().min(MAX_WRITE_MESSAGE));
        ws.start_send(Message::Binary(message)).map_err(into_io)?;
        Poll::Ready(Ok(()))
    }
}

/// Errors that mean the peer ended the stream, not that something broke.
fn is_end_of_stream(e: &WsError) -> bool {
    matches!(
        e,
        WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
            | WsError::Protocol(ProtocolError::SendAfterClosing)
    )
}

fn into_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        // Writing after the peer's Close frame.
        e if is_end_of_stream(&e) => io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("WebSocket closed by the peer: {e}"),
        ),
        e => io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {e}")),
    }
}

/// The `header` metadata map (or `ws.header`) as header names and values.
pub fn headers(md: &Metadata) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let Some((key, value)) = md.get_any(&["header", "ws.header"]) else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = value else {
        return Err(format!(
            "metadata `{key}` must be a map of header names to values"
        ));
    };
    map.iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(format!("metadata `{key}.{name}` must be a string")),
            };
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("metadata `{key}`: {name:?} is not a header name"))?;
            let value = HeaderValue::from_str(&text)
                .map_err(|_| format!("metadata `{key}.{name}`: {text:?} is not a header value"))?;
            Ok((name, value))
        })
        .collect()
}

/// The `path` setting: `/ws` unless given; a leading `/` is added if missing.
pub fn path(md: &Metadata) -> String {
    match md.string(&["path", "ws.path"]).filter(|p| !p.is_empty()) {
        Some(p) if p.starts_with('/') => p,
        Some(p) => format!("/{p}"),
        None => DEFAULT_PATH.to_string(),
    }
}

/// The `handshakeTimeout` setting.
pub fn handshake_timeout(md: &Metadata) -> Result<Duration, String> {
    Ok(md
        .duration(&["handshakeTimeout", "ws.handshakeTimeout"])
        .map_err(|e| e.to_string())?
        .flatten()
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    async fn pair() -> (WsStream, WebSocketStream<BoxConn>) {
        let (a, b) = duplex(64 * 1024);
        let ours = WsStream::server(Box::new(a)).await;
        let theirs =
            WebSocketStream::from_raw_socket(Box::new(b) as BoxConn, Role::Client, None).await;
        (ours, theirs)
    }

    #[tokio::test]
    async fn each_write_is_one_binary_message_and_reads_join_messages() {
        let (mut ours, mut theirs) = pair().await;
        ours.write_all(b"hello").await.unwrap();
        ours.flush().await.unwrap();
        assert_eq!(
            theirs.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"hello"))
        );
        theirs.send(Message::text("ab")).await.unwrap();
        theirs.send(Message::binary(&b"cd"[..])).await.unwrap();
        theirs.send(Message::Ping(Bytes::new())).await.unwrap();
        theirs.send(Message::binary(&b"ef"[..])).await.unwrap();
        let mut got = [0u8; 6];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcdef");
    }

    #[tokio::test]
    async fn large_writes_are_split_into_bounded_messages() {
        let (mut ours, mut theirs) = pair().await;
        let data = vec![7u8; MAX_WRITE_MESSAGE + 10];
        let writer = tokio::spawn(async move {
            ours.write_all(&data).await.unwrap();
            ours.flush().await.unwrap();
            ours
        });
        let first = theirs.next().await.unwrap().unwrap();
        let second = theirs.next().await.unwrap().unwrap();
        assert_eq!(first.len(), MAX_WRITE_MESSAGE);
        assert_eq!(second.len(), 10);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn eof_without_close_frame_ends_the_stream_normally() {
        let (mut ours, mut theirs) = pair().await;
        theirs.send(Message::binary(&b"last"[..])).await.unwrap();
        drop(theirs);
        let mut got = Vec::new();
        ours.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last");
    }

    #[tokio::test]
    async fn close_frame_ends_the_stream() {
        let (mut ours, mut theirs) = pair().await;
        theirs.send(Message::binary(&b"x"[..])).await.unwrap();
        theirs.close(None).await.unwrap();
        let mut got = Vec::new();
        ours.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"x");
    }

    #[tokio::test]
    async fn shutdown_half_closes_and_keeps_reading() {
        let (mut ours, mut theirs) = pair().await;
        ours.write_all(b"bye").await.unwrap();
        ours.shutdown().await.unwrap();
        assert_eq!(
            theirs.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"bye"))
        );
        // The peer can still send its remaining data, which we read to the end, even with a
        // ping that cannot be answered any more in between...
        theirs.send(Message::Ping(Bytes::new())).await.unwrap();
        theirs.send(Message::binary(&b"reply"[..])).await.unwrap();
        // ...and it sees end of stream without a Close frame, as from GOST.
        match theirs.next().await {
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) | None => {}
            other => panic!("expected end of stream, got {other:?}"),
        }
        drop(theirs);
        let mut got = Vec::new();
        ours.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"reply");
    }

    #[tokio::test]
    async fn writing_goes_on_after_the_peer_half_closed() {
        let (a, b) = duplex(64 * 1024);
        let mut ours = WsStream::server(Box::new(a)).await;
        let theirs = WsStream::new(
            WebSocketStream::from_raw_socket(
                Transport::new(Box::new(b)),
                Role::Client,
                Some(config()),
            )
            .await,
            None,
        );
        let (mut their_read, mut their_write) = tokio::io::split(theirs);
        their_write.write_all(b"request").await.unwrap();
        their_write.shutdown().await.unwrap();
        let mut got = Vec::new();
        ours.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        ours.write_all(b"response").await.unwrap();
        ours.shutdown().await.unwrap();
        let mut got = Vec::new();
        their_read.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_and_gives_up_on_a_silent_peer() {
        let (a, b) = duplex(64 * 1024);
        let ws =
            WebSocketStream::from_raw_socket(Transport::new(Box::new(a)), Role::Client, None).await;
        let mut ours = WsStream::new(ws, Some(Duration::from_secs(1)));
        // A peer that reads raw bytes and never answers.
        let (mut peer_read, _peer_write) = tokio::io::split(b);
        let mut got = [0u8; 2];
        let mut buf = [0u8; 16];
        let read = tokio::spawn(async move {
            let r = ours.read(&mut buf).await;
            (r.map(|_| ()), ours)
        });
        peer_read.read_exact(&mut got).await.unwrap();
        // FIN + ping opcode, masked, empty payload.
        assert_eq!(got, [0x89, 0x80]);
        let (result, _ours) = read.await.unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn header_map_and_path_settings() {
        let md: Metadata = serde_json::from_value(serde_json::json!({
            "header": {"X-Token": "abc", "X-N": 3},
            "path": "tunnel"
        }))
        .unwrap();
        let headers = headers(&md).unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!(path(&md), "/tunnel");
        assert_eq!(path(&Metadata::default()), DEFAULT_PATH);
        let bad: Metadata = serde_json::from_value(serde_json::json!({"header": "x"})).unwrap();
        assert!(headers_err(&bad).contains("map"));
    }

    fn headers_err(md: &Metadata) -> String {
        headers(md).unwrap_err()
    }
}
