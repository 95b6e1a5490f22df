//! gRPC plumbing shared by the `grpc` listener and dialer (gost-wire.md §8.5): GOST's `Chunk`
//! message and its codec, the method path, and one bidirectional-streaming RPC as a byte
//! stream ([`GrpcConn`]).
//!
//! tonic does the gRPC framing (length prefixes, status trailers, message limits); the HTTP/2
//! connections under it are hyper's, with [`crate::h2pool`]'s window settings, and TLS is ours.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use futures_util::Stream;
use http::uri::PathAndQuery;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status, Streaming};

use crate::conn::Conn;
use crate::tcpinfo::Pace;

/// GOST's service name (sic, one "n") and method: the default path is `/GostTunel/Tunnel`.
pub const DEFAULT_SERVICE: &str = "GostTunel";
/// The method name, also used when a custom path names only a service.
pub const DEFAULT_METHOD: &str = "Tunnel";

/// Largest `data` one write sends as one message. A relay write is at most
/// [`crate::pipe::BUFFER_SIZE`] (64 KiB), so bulk transfers go out one write per message: twice
/// GOST's 32 KiB, which halves the per-message overhead, and far below the 4 MiB that GOST's
/// gRPC library accepts by default.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Largest message we accept: gRPC's default receive limit, which is also GOST's, so a GOST
/// peer can never send us something we refuse.
pub const MAX_RECEIVE: usize = 4 * 1024 * 1024;

/// What a message takes on the wire beyond its `data`: gRPC's 5-byte prefix, and the `data`
/// field's tag (1 byte) and length (3 bytes below 2 MiB).
const MESSAGE_OVERHEAD: usize = 5 + 1 + 3;

/// The most `data` one message carries on a connection at `pace`: [`MAX_MESSAGE`], and on a
/// slow link (see [`Pace`]) no more than makes a whole message the pace's size, so that
/// HTTP/2 sends each busy tunnel's messages in frames that small. A new tunnel's request on
/// the connection then waits behind that much of each other tunnel, not 64 KiB of each.
pub fn message_limit(pace: &Pace) -> usize {
    pace.chunk()
        .saturating_sub(MESSAGE_OVERHEAD)
        .min(MAX_MESSAGE)
}

/// tonic's per-RPC codec buffers start empty and grow with the first message, so that an idle
/// tunnel holds no buffer (1,000 idle tunnels must stay cheap). Encoded messages are handed to
/// HTTP/2 as soon as there is no further one ready, so the yield threshold only caps batching.
/// The encoder's is [`message_limit`] (tonic reads it before every batch): a full message ends
/// a batch by itself, and smaller ones batch up to the pace, passing it by less than one
/// message.
fn encoder_buffers(pace: &Pace) -> BufferSettings {
    BufferSettings::new(0, message_limit(pace))
}

/// GOST's message: `message Chunk { bytes data = 1; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Chunk {
    /// A piece of the byte stream; message boundaries carry no meaning.
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
}

/// Encodes and decodes [`Chunk`]s with prost, into and out of tonic's buffers directly; the
/// encoder batches messages up to the pace of the connection it writes to.
#[derive(Clone, Debug, Default)]
pub struct ChunkCodec {
    pace: Pace,
}

/// The decoding half of [`ChunkCodec`]: empty, so that tonic's box of it allocates nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkDecoder;

impl ChunkCodec {
    /// A codec for a call on a connection at `pace` ([`crate::tcpinfo::Watched::pace`]).
    pub fn paced(pace: Pace) -> ChunkCodec {
        ChunkCodec { pace }
    }
}

impl Codec for ChunkCodec {
    type Encode = Chunk;
    type Decode = Chunk;
    type Encoder = ChunkCodec;
    type Decoder = ChunkDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        self.clone()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ChunkDecoder
    }
}

impl Encoder for ChunkCodec {
    type Item = Chunk;
    type Error = Status;

    fn encode(&mut self, item: Chunk, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let len = prost::Message::encoded_len(&item);
        dst.reserve(len);
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        encoder_buffers(&self.pace)
    }
}

impl Decoder for ChunkDecoder {
    type Item = Chunk;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Chunk>, Status> {
        // Decoding `bytes` splits them off tonic's buffer rather than copying them.
        <Chunk as prost::Message>::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("malformed Chunk message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(0, MAX_MESSAGE)
    }
}

/// The HTTP/2 path of the tunnel method for metadata `path` (gost-wire.md §8.5): trimmed of
/// `/` at both ends, then `service[/method[/more]]`, further slashes in the method becoming
/// `-`; a missing method is `Tunnel`, a missing or empty path GOST's `/GostTunel/Tunnel`.
pub fn method_path(path: Option<&str>) -> Result<PathAndQuery, String> {
    let trimmed = path.unwrap_or("").trim_matches('/');
    let full = if trimmed.is_empty() {
        format!("/{DEFAULT_SERVICE}/{DEFAULT_METHOD}")
    } else {
        match trimmed.split_once('/') {
            None => format!("/{trimmed}/{DEFAULT_METHOD}"),
            Some((service, method)) => format!("/{service}/{}", method.replace('/', "-")),
        }
    };
    PathAndQuery::try_from(full.as_str())
        .ok()
        .filter(|p| p.query().is_none())
        .ok_or_else(|| {
            format!(
                "metadata `path` {:?} does not make a valid gRPC method path",
                path.unwrap_or("")
            )
        })
}

/// A [`Status`] as an I/O error naming the peer and, for the common misconfigurations, the
/// likely cause.
pub fn status_error(status: &Status, peer: &str) -> io::Error {
    let hint = match status.code() {
        Code::Unimplemented => " (the server has no such method: check `path` on both ends)",
        _ => "",
    };
    let kind = match status.code() {
        Code::Unavailable | Code::Cancelled => io::ErrorKind::ConnectionReset,
        Code::Unimplemented => io::ErrorKind::ConnectionRefused,
        _ => io::ErrorKind::Other,
    };
    let cause = std::error::Error::source(status)
        .map(|e| format!(" ({})", crate::error_chain(e)))
        .unwrap_or_default();
    io::Error::new(
        kind,
        format!(
            "grpc {peer}: {:?}: {}{cause}{hint}",
            status.code(),
            status.message()
        ),
    )
}

/// Whether `status` stands for the peer resetting the stream with `CANCEL` or `NO_ERROR`.
fn ended_by_peer(status: &Status) -> bool {
    if status.code() == Code::Cancelled {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_reset()
                && matches!(h2.reason(), Some(h2::Reason::CANCEL | h2::Reason::NO_ERROR));
        }
        source = err.source();
    }
    false
}

/// The inbound half of a call: the response while it has not come yet (client side), then its
/// messages.
pub type PendingResponse =
    Pin<Box<dyn Future<Output = Result<tonic::Response<Streaming<Chunk>>, Status>> + Send>>;

// The whole stream is boxed (`BoxConn`) and spends its life in `Open`: boxing that variant too
// would only add an allocation per tunnel.
#[allow(clippy::large_enum_variant)]
enum Inbound {
    Waiting(PendingResponse),
    Open(Streaming<Chunk>),
}

struct ReadHalf {
    inbound: Inbound,
    pending: Bytes,
    eof: bool,
}

impl ReadHalf {
    /// Waits until there are bytes to hand out or the stream has ended.
    fn poll_fill(&mut self, cx: &mut Context<'_>, peer: &str) -> Poll<io::Result<()>> {
        while self.pending.is_empty() && !self.eof {
            match &mut self.inbound {
                Inbound::Waiting(response) => match ready!(response.as_mut().poll(cx)) {
                    Ok(response) => self.inbound = Inbound::Open(response.into_inner()),
                    Err(status) => return Poll::Ready(Err(status_error(&status, peer))),
                },
                Inbound::Open(messages) => match ready!(Pin::new(messages).poll_next(cx)) {
                    None => self.eof = true,
                    Some(Ok(chunk)) => self.pending = chunk.data,
                    // The peer cancelling after its last message (GOST's client half-closes, then
                    // cancels) or resetting with NO_ERROR means "done", not "failed".
                    Some(Err(status)) if ended_by_peer(&status) => self.eof = true,
                    Some(Err(status)) => return Poll::Ready(Err(status_error(&status, peer))),
                },
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// One message waiting to go out: a one-slot channel from the writer to tonic's encoder,
/// which allocates nothing while the tunnel is idle.
#[derive(Default)]
struct Slot {
    message: Option<Bytes>,
    // The writer ended its side (shutdown or drop): the outbound stream ends.
    closed: bool,
    // The outbound stream is gone (the call ended): writes fail.
    gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

fn lock(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The messages a [`GrpcConn`] writes, as the request stream (client) or the response stream
/// (server) of its call.
pub struct Outbound {
    slot: Arc<Mutex<Slot>>,
}

impl Outbound {
    fn poll_chunk(&self, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        let mut slot = lock(&self.slot);
        if let Some(data) = slot.message.take() {
            if let Some(writer) = slot.writer.take() {
                writer.wake();
            }
            return Poll::Ready(Some(Chunk { data }));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        slot.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Stream for Outbound {
    type Item = Chunk;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        self.poll_chunk(cx)
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let mut slot = lock(&self.slot);
        slot.gone = true;
        slot.message = None;
        if let Some(writer) = slot.writer.take() {
            writer.wake();
        }
    }
}

/// [`Outbound`] as a server's response stream; ending it sends `grpc-status: 0`.
pub struct ServerOutbound(pub Outbound);

impl Stream for ServerOutbound {
    type Item = Result<Chunk, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_chunk(cx).map(|c| c.map(Ok))
    }
}

/// One gRPC call as a byte stream: reads concatenate the `data` of the peer's messages, each
/// write is one message of at most [`message_limit`] bytes ([`MAX_MESSAGE`] unless the link is
/// slow), shutdown ends our message stream (client: half-close; server: trailers with
/// `grpc-status: 0`). Dropping the client side also cancels the call.
pub struct GrpcConn {
    // Behind a lock only so that readiness can be polled through `&self`
    // (`Conn::poll_read_ready`); reads reach it without locking.
    read: Mutex<ReadHalf>,
    slot: Arc<Mutex<Slot>>,
    peer: Arc<str>,
    // Bounds each message (see [`message_limit`]).
    pace: Pace,
}

impl GrpcConn {
    /// A call whose inbound messages are `messages` (server side); the returned [`Outbound`]
    /// is the response stream.
    pub fn server(messages: Streaming<Chunk>, peer: Arc<str>, pace: Pace) -> (Self, Outbound) {
        Self::new(Inbound::Open(messages), peer, pace)
    }

    /// A call whose response `call` makes from the request stream it is given (client side).
    /// The response is awaited on the first read, not here: a GOST server answers the call
    /// only when it first writes, which, in client-speaks-first protocols, is after our first
    /// write.
    pub fn client(
        call: impl FnOnce(Outbound) -> PendingResponse,
        peer: Arc<str>,
        pace: Pace,
    ) -> Self {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let response = call(Outbound { slot: slot.clone() });
        GrpcConn {
            read: Mutex::new(ReadHalf {
                inbound: Inbound::Waiting(response),
                pending: Bytes::new(),
                eof: false,
            }),
            slot,
            peer,
            pace,
        }
    }

    fn new(inbound: Inbound, peer: Arc<str>, pace: Pace) -> (Self, Outbound) {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let conn = GrpcConn {
            read: Mutex::new(ReadHalf {
                inbound,
                pending: Bytes::new(),
                eof: false,
            }),
            slot: slot.clone(),
            peer,
            pace,
        };
        (conn, Outbound { slot })
    }

    /// Puts the message `make` returns in the slot once the previous one has been taken.
    fn offer(&self, cx: &mut Context<'_>, make: impl FnOnce() -> Bytes) -> Poll<io::Result<()>> {
        let mut slot = lock(&self.slot);
        if slot.gone || slot.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("grpc {}: the call has ended", self.peer),
            )));
        }
        if slot.message.is_some() {
            // The previous message has not been taken: HTTP/2 flow control holds it back.
            slot.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        slot.message = Some(make());
        if let Some(reader) = slot.reader.take() {
            reader.wake();
        }
        Poll::Ready(Ok(()))
    }

    fn close_write(&self) {
        let mut slot = lock(&self.slot);
        slot.closed = true;
        if let Some(reader) = slot.reader.take() {
            reader.wake();
        }
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = this.read.get_mut().unwrap_or_else(|e| e.into_inner());
        ready!(read.poll_fill(cx, &this.peer))?;
        let n = read.pending.len().min(buf.remaining());
        buf.put_slice(&read.pending[..n]);
        read.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(message_limit(&self.pace));
        ready!(self.offer(cx, || Bytes::copy_from_slice(&buf[..n])))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A written message is picked up by the HTTP/2 connection as soon as it may be sent.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close_write();
        Poll::Ready(Ok(()))
    }
}

impl Drop for GrpcConn {
    fn drop(&mut self) {
        self.close_write();
    }
}

impl Conn for GrpcConn {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .poll_fill(cx, &self.peer)
    }

    // Lets the relay hold no buffer for a tunnel that is waiting for data, which is what
    // keeps 1,000 idle tunnels cheap.
    fn has_read_readiness(&self) -> bool {
        true
    }

    // Message payloads are owned buffers both ways: the relay hands them over instead of
    // copying them.
    fn reads_chunks(&self) -> bool {
        true
    }

    fn poll_read_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let this = self.get_mut();
        let read = this.read.get_mut().unwrap_or_else(|e| e.into_inner());
        ready!(read.poll_fill(cx, &this.peer))?;
        let chunk = std::mem::take(&mut read.pending);
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
        let most = message_limit(&self.pace);
        self.offer(cx, || chunk.split_to(chunk.len().min(most)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn path_mapping_follows_gost() {
        let p = |s: Option<&str>| method_path(s).unwrap().to_string();
        assert_eq!(p(None), "/GostTunel/Tunnel");
        assert_eq!(p(Some("")), "/GostTunel/Tunnel");
        assert_eq!(p(Some("/")), "/GostTunel/Tunnel");
        assert_eq!(p(Some("a")), "/a/Tunnel");
        assert_eq!(p(Some("/a/")), "/a/Tunnel");
        assert_eq!(p(Some("a/b")), "/a/b");
        assert_eq!(p(Some("/a/b/")), "/a/b");
        assert_eq!(p(Some("a/b/c")), "/a/b-c");
        assert_eq!(p(Some("a/b/c/d")), "/a/b-c-d");
        assert!(method_path(Some("a b")).is_err());
        assert!(method_path(Some("a?x=1")).is_err());
    }

    #[test]
    fn chunk_encoding_is_field_one_bytes() {
        let chunk = Chunk {
            data: Bytes::from_static(b"hello"),
        };
        assert_eq!(chunk.encode_to_vec(), b"\x0a\x05hello");
        let big = Chunk {
            data: Bytes::from(vec![1u8; 300]),
        };
        let encoded = big.encode_to_vec();
        assert_eq!(&encoded[..3], b"\x0a\xac\x02");
        assert_eq!(encoded.len(), 303);
        // Empty data is the empty message (proto3 leaves defaults out).
        assert!(Chunk::default().encode_to_vec().is_empty());
        // Decoding skips fields it does not know, as any protobuf reader must.
        let decoded = Chunk::decode(&b"\x10\x01\x0a\x02hi"[..]).unwrap();
        assert_eq!(decoded.data, Bytes::from_static(b"hi"));
        assert!(Chunk::decode(&b"\x0a\x05hi"[..]).is_err());
    }

    /// The sizes of the buffers tonic hands HTTP/2 for `count` ready messages of `len` bytes,
    /// encoded with a codec at `pace`.
    async fn batches(pace: Pace, count: usize, len: usize) -> Vec<usize> {
        use http_body_util::BodyExt;
        let messages = futures_util::stream::iter((0..count).map(|_| {
            Ok(Chunk {
                data: vec![1u8; len].into(),
            })
        }));
        let body = tonic::codec::EncodeBody::new_client(
            ChunkCodec::paced(pace).encoder(),
            messages,
            None,
            None,
        );
        let mut body = std::pin::pin!(body);
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            sizes.push(frame.unwrap().into_data().unwrap().len());
        }
        sizes
    }

    // Messages that are ready together go out in one buffer, so one DATA frame: about the
    // pace at most (passing it by less than one message), as the messages themselves.
    #[tokio::test]
    async fn batches_of_ready_messages_keep_to_the_pace() {
        let message = 4096 + MESSAGE_OVERHEAD - 1;
        let paced = batches(Pace::fixed(16 * 1024), 16, 4096).await;
        assert_eq!(paced.iter().sum::<usize>(), 16 * message);
        assert!(
            paced.iter().all(|&batch| batch < 16 * 1024 + message),
            "{paced:?}"
        );
        let free = batches(Pace::unbounded(), 16, 4096).await;
        assert!(free.iter().any(|&batch| batch > 32 * 1024), "{free:?}");
        // A full message is a batch of its own.
        let full = message_limit(&Pace::fixed(16 * 1024));
        let paced = batches(Pace::fixed(16 * 1024), 4, full).await;
        assert_eq!(paced.len(), 4, "{paced:?}");
    }

    #[test]
    fn messages_keep_to_the_pace() {
        assert_eq!(message_limit(&Pace::unbounded()), MAX_MESSAGE);
        // A whole message, prefix and field header included, is no bigger than the pace.
        let paced = message_limit(&Pace::fixed(16 * 1024));
        assert!(paced + MESSAGE_OVERHEAD >= 16 * 1024 && paced < 16 * 1024);
        // A host's tiny limit does not cut messages to a few bytes.
        assert_eq!(
            message_limit(&Pace::fixed(1)),
            crate::tcpinfo::MIN_CHUNK - MESSAGE_OVERHEAD
        );
    }

    #[tokio::test]
    async fn writes_are_messages_of_at_most_max_message() {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let (mut conn, mut out) = GrpcConn::new(
            Inbound::Waiting(Box::pin(std::future::pending())),
            Arc::from("test"),
            Pace::unbounded(),
        );
        let big = vec![9u8; MAX_MESSAGE + 10];
        let n = conn.write(&big).await.unwrap();
        assert_eq!(n, MAX_MESSAGE);
        // The slot is full until the stream takes the message: the next write waits.
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(50), conn.write(b"x")).await;
        assert!(blocked.is_err(), "a second message was queued");
        assert_eq!(out.next().await.unwrap().data.len(), MAX_MESSAGE);
        conn.write_all(b"tail").await.unwrap();
        conn.shutdown().await.unwrap();
        assert_eq!(out.next().await.unwrap().data, Bytes::from_static(b"tail"));
        assert!(out.next().await.is_none(), "shutdown must end the stream");
        drop(out);
        assert_eq!(
            conn.write(b"late").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
