//! The byte stream every listener produces and every dialer and connector passes on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A bidirectional byte stream: a TCP socket, or a tunnel inside another transport.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Waits until a read would make progress, without needing a buffer. Streams that can tell
    /// (sockets) let idle tunnels hold no buffer at all; the default says "ready" and the
    /// caller then keeps its buffer across reads.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Whether [`Conn::poll_read_ready`] really waits for readability.
    fn has_read_readiness(&self) -> bool {
        false
    }

    /// The socket itself when this stream is a bare TCP socket, which lets the relay move
    /// bytes without copying them through the proxy.
    fn as_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

/// An owned, type-erased [`Conn`].
pub type BoxConn = Box<dyn Conn>;

impl Conn for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn has_read_readiness(&self) -> bool {
        true
    }

    fn as_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Conn for BoxConn {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }

    fn has_read_readiness(&self) -> bool {
        (**self).has_read_readiness()
    }

    fn as_tcp(&self) -> Option<&TcpStream> {
        (**self).as_tcp()
    }
}

impl Conn for tokio::io::DuplexStream {}

/// A stream with bytes already read from it (e.g. past a protocol header) put back in front.
pub struct Prefixed<C> {
    prefix: Bytes,
    inner: C,
}

impl<C: Conn> Prefixed<C> {
    /// Returns `inner` itself when there is nothing to put back.
    pub fn boxed(prefix: Bytes, inner: C) -> BoxConn {
        if prefix.is_empty() {
            Box::new(inner)
        } else {
            Box::new(Prefixed { prefix, inner })
        }
    }
}

impl<C: Conn> AsyncRead for Prefixed<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<C: Conn> AsyncWrite for Prefixed<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<C: Conn> Conn for Prefixed<C> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            Poll::Ready(Ok(()))
        } else {
            self.inner.poll_read_ready(cx)
        }
    }

    fn has_read_readiness(&self) -> bool {
        self.inner.has_read_readiness()
    }
}
