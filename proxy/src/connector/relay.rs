//! The `relay` connector: asks a GOST relay node for a TCP tunnel (gost-wire.md §6.5).
//!
//! Two modes, as in GOST, chosen by metadata `nodelay`:
//! - lazy (the default): `connect` sends nothing. The request is written together with the
//!   first bytes of tunnel data, in one write, and the response is read on the first read; a
//!   refusal surfaces as an error of that read. This matches GOST servers that hold their
//!   response back until the target speaks, but a server-speaks-first target then waits for a
//!   request that is never sent: GOST's documented limitation.
//! - `nodelay=true`: the request is written and the response read before `connect` returns,
//!   within `connectTimeout`. GOST servers in their default mode only answer once the target
//!   speaks, so client-speaks-first protocols stall with them; ours answer at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use gost_api::{AuthConfig, Metadata};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{ConnectError, Connector};
use crate::addr::Address;
use crate::codec::relay::{self, AddrFeature, Feature, Request};
use crate::conn::{BoxConn, Conn};

/// Bytes read per step while a response is incomplete. GOST's responses are four bytes; the
/// surplus of a larger read is tunnel data and is kept.
const RESPONSE_READ_CHUNK: usize = 1024;

/// Speaks the relay protocol to a node. (`Debug` shows no password: [`Feature`] redacts it.)
#[derive(Debug)]
pub struct RelayConnector {
    /// The UserAuth feature, built (and checked to fit) once.
    auth: Option<Feature>,
    nodelay: bool,
    /// `None`: no deadline, as a zero or negative `connectTimeout` asks.
    connect_timeout: Option<Duration>,
}

impl RelayConnector {
    /// A connector sending `auth` with every request. Reads metadata `nodelay` (bool) and
    /// `connectTimeout` (a duration; zero or negative for none).
    pub fn new(auth: Option<AuthConfig>, metadata: &Metadata) -> Result<Self, String> {
        let nodelay = metadata
            .bool(&["nodelay"])
            .map_err(|e| e.to_string())?
            .unwrap_or(false);
        let connect_timeout = match metadata
            .duration(&["connectTimeout"])
            .map_err(|e| e.to_string())?
        {
            // None unless set, as GOST: the chain's `dialTimeout` bounds the whole route.
            Some(Some(limit)) if !limit.is_zero() => Some(limit),
            _ => None,
        };
        let auth = auth.map(|a| Feature::UserAuth {
            username: a.username.into_bytes(),
            password: a.password.into_bytes(),
        });
        // Overlong credentials fail here, at configuration time, not on every connection.
        relay::encode_request(&request(auth.clone(), &sample_target()))
            .map_err(|e| format!("auth: {e}"))?;
        Ok(RelayConnector {
            auth,
            nodelay,
            connect_timeout,
        })
    }
}

fn sample_target() -> Address {
    Address::from_socket(([0, 0, 0, 0], 0).into())
}

/// A CONNECT request in GOST's feature order: UserAuth (if any), then Addr. (GOST puts a
/// Network feature first for non-TCP networks, which this connector does not open.)
fn request(auth: Option<Feature>, target: &Address) -> Request {
    let mut features: Vec<Feature> = auth.into_iter().collect();
    features.push(Feature::Addr(AddrFeature::from_address(target)));
    Request {
        flags: 0,
        cmd: relay::CMD_CONNECT,
        features,
    }
}

/// The error a refusing status becomes, naming the status as GOST's client does.
fn refused(status: u8) -> String {
    format!(
        "relay node refused the tunnel: status {status} {}",
        relay::status_text(status)
    )
}

#[async_trait]
impl Connector for RelayConnector {
    async fn connect(&self, mut conn: BoxConn, target: &Address) -> Result<BoxConn, ConnectError> {
        let header = relay::encode_request(&request(self.auth.clone(), target)).map_err(|e| {
            ConnectError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("target {target} cannot be sent over relay: {e}"),
            ))
        })?;
        if !self.nodelay {
            return Ok(Box::new(LazyConn::new(conn, header)));
        }
        let exchange = async {
            conn.write_all(&header).await?;
            conn.flush().await?;
            // Exactly the response: the bytes behind it are the target's.
            let mut response = vec![0; relay::HEADER_LEN];
            read_exact(&mut conn, &mut response).await?;
            let len = relay::message_len(&response)
                .map_err(|e| ConnectError::Protocol(format!("relay response: {e}")))?
                .expect("a whole header gives the length");
            response.resize(len, 0);
            read_exact(&mut conn, &mut response[relay::HEADER_LEN..]).await?;
            let (response, _) = relay::parse_response(&response)
                .map_err(|e| ConnectError::Protocol(format!("relay response: {e}")))?
                .expect("the whole response was read");
            if response.status != relay::STATUS_OK {
                return Err(ConnectError::Refused(refused(response.status)));
            }
            Ok(())
        };
        match self.connect_timeout {
            None => exchange.await?,
            Some(limit) => tokio::time::timeout(limit, exchange).await.map_err(|_| {
                ConnectError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("relay response not received within {limit:?}"),
                ))
            })??,
        }
        Ok(conn)
    }
}

async fn read_exact(conn: &mut BoxConn, buf: &mut [u8]) -> Result<(), ConnectError> {
    match conn.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ConnectError::Protocol(
            "relay node closed the connection instead of sending its response".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Where the lazy connection is with the node's response.
enum ResponseState {
    /// Not complete yet: the bytes so far.
    Awaiting(Vec<u8>),
    /// Read and OK: tunnel bytes read along with it, handed out before further reads.
    Done(Bytes),
    /// Broken: every read fails with this.
    Failed(io::ErrorKind, String),
    /// Refused by the node with this status: every read fails with a [`RelayRefusal`].
    Refused(u8),
}

/// A lazy relay node's refusal of the tunnel, which shows only when the tunnel is first read:
/// in a chain, while the next hop's handshake runs. The chain finds it in the I/O error (as
/// its inner error) and blames the relay node, not the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayRefusal(pub u8);

impl std::fmt::Display for RelayRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&refused(self.0))
    }
}

impl std::error::Error for RelayRefusal {}

impl RelayRefusal {
    /// The refusal an I/O error carries, if it is one.
    pub fn of(e: &io::Error) -> Option<RelayRefusal> {
        e.get_ref()?.downcast_ref::<RelayRefusal>().copied()
    }

    /// The kind of failure the status says it is, as a dial's error would be.
    pub fn kind(self) -> io::ErrorKind {
        match self.0 {
            relay::STATUS_TIMEOUT => io::ErrorKind::TimedOut,
            relay::STATUS_HOST_UNREACHABLE => io::ErrorKind::HostUnreachable,
            relay::STATUS_NETWORK_UNREACHABLE => io::ErrorKind::NetworkUnreachable,
            _ => io::ErrorKind::PermissionDenied,
        }
    }
}

/// GOST's lazy relay client connection: the request goes out with the first write, the
/// response is checked on the first read.
pub struct LazyConn<C> {
    inner: C,
    /// The request, until the first write (or shutdown) takes it.
    header: Option<Vec<u8>>,
    /// Request and first data, accepted from the caller but not all written yet.
    pending: Bytes,
    response: ResponseState,
}

impl<C: Conn> LazyConn<C> {
    /// Wraps `inner`, to which `header` is sent with the first data.
    pub fn new(inner: C, header: Vec<u8>) -> Self {
        LazyConn {
            inner,
            header: Some(header),
            pending: Bytes::new(),
            response: ResponseState::Awaiting(Vec::new()),
        }
    }

    /// Writes what is pending; ready when nothing is.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending.has_remaining() {
            let before = self.pending.len();
            ready!(Pin::new(&mut self.inner).poll_write_chunk(cx, &mut self.pending))?;
            if self.pending.len() == before {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Queues the request and the first `data` as one write, as GOST sends them, and starts
    /// writing it. The data counts as written once queued; flush (which the tunnel relay
    /// calls) and later writes push the rest out.
    fn send_with_request(
        &mut self,
        cx: &mut Context<'_>,
        mut request: Vec<u8>,
        data: &[u8],
    ) -> io::Result<()> {
        request.extend_from_slice(data);
        self.pending = Bytes::from(request);
        match self.poll_drain(cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads until the whole response is there and checks it.
    fn poll_response(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let received = match &mut self.response {
                ResponseState::Done(_) => return Poll::Ready(Ok(())),
                ResponseState::Failed(kind, message) => {
                    return Poll::Ready(Err(io::Error::new(*kind, message.clone())));
                }
                ResponseState::Refused(status) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        RelayRefusal(*status),
                    )));
                }
                ResponseState::Awaiting(received) => received,
            };
            match relay::parse_response(received) {
                Ok(Some((response, used))) => {
                    self.response = if response.status == relay::STATUS_OK {
                        ResponseState::Done(Bytes::copy_from_slice(&received[used..]))
                    } else {
                        ResponseState::Refused(response.status)
                    };
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.response = ResponseState::Failed(
                        io::ErrorKind::InvalidData,
                        format!("relay response: {e}"),
                    );
                    continue;
                }
            }
            let mut chunk = [0u8; RESPONSE_READ_CHUNK];
            let mut chunk = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                self.response = ResponseState::Failed(
                    io::ErrorKind::UnexpectedEof,
                    "relay node closed the connection before sending its response".into(),
                );
                continue;
            }
            if let ResponseState::Awaiting(received) = &mut self.response {
                received.extend_from_slice(chunk.filled());
            }
        }
    }
}

impl<C: Conn> AsyncRead for LazyConn<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_response(cx))?;
        if let ResponseState::Done(early) = &mut self.response
            && early.has_remaining()
        {
            let n = early.len().min(buf.remaining());
            buf.put_slice(&early[..n]);
            early.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<C: Conn> AsyncWrite for LazyConn<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        let Some(header) = self.header.take() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        self.send_with_request(cx, header, buf)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A client that closes without having sent anything still gets its request to the
        // node, so that the target sees the connection and its end (GOST sends nothing).
        if let Some(header) = self.header.take() {
            self.pending = Bytes::from(header);
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// Readiness passes through, so that an idle lazy tunnel holds no relay buffer: without it
// 1,000 idle relay tunnels cost a buffer each.
impl<C: Conn> Conn for LazyConn<C> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.response {
            ResponseState::Done(early) if early.has_remaining() => Poll::Ready(Ok(())),
            ResponseState::Failed(..) | ResponseState::Refused(_) => Poll::Ready(Ok(())),
            // Awaiting the response or done with it: bytes from the node are what lets a
            // read make progress.
            _ => self.inner.poll_read_ready(cx),
        }
    }

    fn has_read_readiness(&self) -> bool {
        self.inner.has_read_readiness()
    }

    fn reads_chunks(&self) -> bool {
        self.inner.reads_chunks()
    }

    fn poll_read_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>> {
        ready!(self.poll_response(cx))?;
        if let ResponseState::Done(early) = &mut self.response
            && early.has_remaining()
        {
            return Poll::Ready(Ok(Some(std::mem::take(early))));
        }
        Pin::new(&mut self.inner).poll_read_chunk(cx)
    }

    fn takes_chunks(&self) -> bool {
        self.inner.takes_chunks()
    }

    fn poll_write_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        let Some(header) = self.header.take() else {
            return Pin::new(&mut self.inner).poll_write_chunk(cx, chunk);
        };
        self.send_with_request(cx, header, chunk)?;
        chunk.clear();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::duplex;

    use super::*;

    fn metadata(pairs: &[(&str, &str)]) -> Metadata {
        let mut md = Metadata::default();
        for (key, value) in pairs {
            md.insert_str(key, value);
        }
        md
    }

    const ONE_SECOND: Duration = Duration::from_secs(1);

    fn header() -> Vec<u8> {
        relay::encode_request(&request(None, &Address::parse("127.0.0.1:80").unwrap())).unwrap()
    }

    #[tokio::test]
    async fn lazy_conn_sends_the_request_with_the_first_write() {
        let (client, mut node) = duplex(4096);
        let mut conn = LazyConn::new(client, header());
        conn.write_all(b"hello").await.unwrap();
        conn.flush().await.unwrap();
        let mut expected = header();
        expected.extend_from_slice(b"hello");
        let mut got = vec![0; expected.len()];
        node.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        // The response and the target's first bytes in one write, as a lazy GOST server sends.
        node.write_all(&[1, 0, 0, 0, b'h', b'i']).await.unwrap();
        let mut reply = [0; 2];
        conn.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"hi");
        conn.write_all(b" again").await.unwrap();
        let mut again = [0; 6];
        node.read_exact(&mut again).await.unwrap();
        assert_eq!(&again, b" again");
    }

    #[tokio::test]
    async fn lazy_conn_reports_a_refusal_on_every_read() {
        let (client, mut node) = duplex(4096);
        let mut conn = LazyConn::new(client, header());
        conn.write_all(b"x").await.unwrap();
        conn.flush().await.unwrap();
        // The response in pieces, so that the reader has to wait for the rest.
        node.write_all(&[1, 7]).await.unwrap();
        let read = tokio::spawn(async move {
            let mut buf = [0; 8];
            let first = conn.read(&mut buf).await.unwrap_err();
            let second = conn.read(&mut buf).await.unwrap_err();
            (first, second)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        node.write_all(&[0, 0]).await.unwrap();
        let (first, second) = tokio::time::timeout(ONE_SECOND, read)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.kind(), io::ErrorKind::ConnectionRefused);
        assert!(
            first.to_string().contains("7 Network Unreachable"),
            "{first}"
        );
        assert_eq!(second.to_string(), first.to_string());
    }

    #[tokio::test]
    async fn lazy_conn_names_garbage_and_early_close() {
        let (client, mut node) = duplex(4096);
        let mut conn = LazyConn::new(client, header());
        node.write_all(b"HTTP/1.1 400").await.unwrap();
        let e = conn.read(&mut [0; 8]).await.unwrap_err();
        assert!(e.to_string().contains("bad relay version"), "{e}");

        let (client, node) = duplex(4096);
        let mut conn = LazyConn::new(client, header());
        drop(node);
        let e = conn.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn shutdown_without_data_still_sends_the_request() {
        let (client, mut node) = duplex(4096);
        let mut conn = LazyConn::new(client, header());
        conn.shutdown().await.unwrap();
        let mut got = Vec::new();
        node.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, header());
    }

    #[tokio::test]
    async fn nodelay_reads_exactly_the_response() {
        let md = metadata(&[("nodelay", "true"), ("connectTimeout", "1s")]);
        let auth = AuthConfig {
            username: "user".into(),
            password: "pass".into(),
            file: None,
        };
        let connector = RelayConnector::new(Some(auth), &md).unwrap();
        let (client, mut node) = duplex(4096);
        let target = Address::parse("example.com:443").unwrap();
        let server = tokio::spawn(async move {
            let mut request = vec![0; 35];
            node.read_exact(&mut request).await.unwrap();
            node.write_all(&[1, 0, 0, 0, b'b', b'a', b'n'])
                .await
                .unwrap();
            (request, node)
        });
        let mut conn = connector.connect(Box::new(client), &target).await.unwrap();
        let (request, _node) = server.await.unwrap();
        // gost-wire.md §6.9.
        assert_eq!(
            request,
            b"\x01\x01\x00\x1f\x01\x00\x0a\x04user\x04pass\x02\x00\x0f\x03\x0bexample.com\x01\xbb"
        );
        let mut banner = [0; 3];
        conn.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"ban");
    }

    #[tokio::test]
    async fn nodelay_refusals_and_silence_are_errors() {
        let md = metadata(&[("nodelay", "true"), ("connectTimeout", "200ms")]);
        let connector = RelayConnector::new(None, &md).unwrap();
        let target = Address::parse("127.0.0.1:1").unwrap();

        let (client, mut node) = duplex(4096);
        node.write_all(&[1, 2, 0, 0]).await.unwrap();
        let Err(ConnectError::Refused(e)) = connector.connect(Box::new(client), &target).await
        else {
            panic!("an Unauthorized status must refuse");
        };
        assert!(e.contains("status 2 Unauthorized"), "{e}");

        let (client, _node) = duplex(4096);
        let Err(ConnectError::Io(e)) = connector.connect(Box::new(client), &target).await else {
            panic!("a silent node must time out");
        };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn overlong_credentials_fail_at_configuration() {
        let auth = AuthConfig {
            username: "u".repeat(256),
            password: String::new(),
            file: None,
        };
        let e = RelayConnector::new(Some(auth), &Metadata::default()).unwrap_err();
        assert!(e.contains("user name"), "{e}");
    }
}
