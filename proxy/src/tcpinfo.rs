//! What the kernel counts of a TCP socket's traffic (`TCP_INFO`), for telling a live peer from a
//! silent one when the protocol above hears nothing: bytes that arrived but were not read yet,
//! and bytes we sent that the peer acknowledged.
//!
//! The socket is asked through its descriptor number, which is only valid while the socket is
//! open: [`Watched`] owns the stream over the socket and, before the stream (and the socket)
//! goes, marks the number gone under the lock that [`TcpWatch::counts`] holds while it asks.

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A socket's traffic, as counted by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpCounts {
    /// Bytes sent and acknowledged by the peer, since the connection began.
    pub acked: u64,
    /// Bytes received from the peer, since the connection began.
    pub received: u64,
    /// Whether some of what we sent is not acknowledged yet (in flight or not sent at all).
    pub backlog: bool,
    /// Retransmission timeouts (or probes of the peer's closed window) in a row that no
    /// acknowledgement answered; 0 once one came.
    pub unanswered: u8,
}

impl TcpCounts {
    /// Whether `self`, counted later than `before`, shows that the peer sent bytes: proof
    /// that the far end lives, since a TCP proxy on the way sends only what it was given.
    pub fn received_since(&self, before: &TcpCounts) -> bool {
        self.received > before.received
    }

    /// Whether the peer's TCP takes our bytes: with some of ours still on their way, it
    /// acknowledged more since `before` was counted, or answered the kernel's last
    /// retransmission or probe of its closed window. A live peer behind a slow uplink does;
    /// so does a TCP proxy on the way whose server vanished, for as long as it buffers, so
    /// this is weaker evidence than [`TcpCounts::received_since`].
    pub fn takes_our_bytes_since(&self, before: &TcpCounts) -> bool {
        self.backlog && (self.acked > before.acked || self.unanswered == 0)
    }

    /// Whether bytes of ours wait for an acknowledgement that `retries` retransmissions in
    /// a row (or probes of a closed window) did not bring: a live peer acknowledges within a
    /// round trip, a vanished one never. The kernel waits at least 200 ms before the first
    /// and twice as long before each next, longer on paths with longer round trips.
    pub fn stalled(&self, retries: u8) -> bool {
        self.backlog && self.unanswered >= retries
    }
}

/// Asks the kernel about one socket for as long as it is open.
#[derive(Clone)]
pub struct TcpWatch {
    // The socket's descriptor; `None` once the stream that owns it is dropped.
    fd: Arc<Mutex<Option<RawFd>>>,
}

impl TcpWatch {
    /// The socket's counts now; `None` once it is closed, or where the kernel does not count
    /// them (Linux before 4.6).
    pub fn counts(&self) -> Option<TcpCounts> {
        let fd = self.fd.lock().unwrap_or_else(|e| e.into_inner());
        tcp_info(fd.as_ref().copied()?)
    }
}

/// A stream over the TCP socket `fd`, which [`TcpWatch`] may ask about until it is dropped.
pub struct Watched<T> {
    io: T,
    fd: Arc<Mutex<Option<RawFd>>>,
}

/// `io`, which carries its bytes over the TCP socket `fd` (and owns it), with a watch on that
/// socket; without `fd`, a watch that never counts anything.
pub(crate) fn watched<T>(io: T, fd: Option<RawFd>) -> (Watched<T>, TcpWatch) {
    let fd = Arc::new(Mutex::new(fd));
    (Watched { io, fd: fd.clone() }, TcpWatch { fd })
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        // Runs before `io` (and the socket) is dropped: no question is asked after this.
        *self.fd.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    crate::conn::write_through!(io);
}

/// Elsewhere the kernel's counts are not asked for: the checks that use them fall back on what
/// the protocol above hears.
#[cfg(not(target_os = "linux"))]
fn tcp_info(_fd: RawFd) -> Option<TcpCounts> {
    None
}

/// `getsockopt(TCP_INFO)` on `fd`, which the caller keeps open.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // a system call that fills a plain C struct
fn tcp_info(fd: RawFd) -> Option<TcpCounts> {
    // SAFETY: `tcp_info` is a C struct of integers, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable `tcp_info` and `len` its size, as getsockopt(2) requires;
    // the kernel writes at most `len` bytes and sets `len` to what it wrote. `fd` is open (the
    // caller's lock keeps it so); a descriptor that is not a TCP socket gets an error.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast::<libc::c_void>(),
            &mut len,
        )
    };
    // Older kernels fill less of the struct; the fields used here came last, with Linux 4.6.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_notsent_bytes) + 4;
    if rc != 0 || (len as usize) < needed {
        return None;
    }
    Some(TcpCounts {
        acked: info.tcpi_bytes_acked,
        received: info.tcpi_bytes_received,
        backlog: info.tcpi_unacked > 0 || info.tcpi_notsent_bytes > 0,
        unanswered: info.tcpi_retransmits.max(info.tcpi_probes),
    })
}

#[cfg(test)]
mod predicates {
    use super::*;

    const BASE: TcpCounts = TcpCounts {
        acked: 1000,
        received: 500,
        backlog: false,
        unanswered: 0,
    };

    #[test]
    fn what_counts_as_the_peer_taking_our_bytes() {
        let waiting = TcpCounts {
            backlog: true,
            ..BASE
        };
        // Acknowledgements still coming for what we send.
        let acked_more = TcpCounts {
            acked: 2000,
            ..waiting
        };
        assert!(acked_more.takes_our_bytes_since(&BASE));
        // Nothing acknowledged since, but the last retransmission or window probe answered.
        assert!(waiting.takes_our_bytes_since(&BASE));
        // Retransmissions unanswered: the peer's TCP is gone.
        let unanswered = TcpCounts {
            unanswered: 2,
            ..waiting
        };
        assert!(!unanswered.takes_our_bytes_since(&BASE));
        // Nothing of ours waits: nothing to tell.
        let idle = TcpCounts {
            acked: 2000,
            ..BASE
        };
        assert!(!idle.takes_our_bytes_since(&BASE));
        // Only bytes from the peer prove the far end.
        assert!(!acked_more.received_since(&BASE));
        let sent = TcpCounts {
            received: 501,
            ..BASE
        };
        assert!(sent.received_since(&BASE));
    }

    #[test]
    fn stalled_takes_retransmissions_unanswered_with_bytes_waiting() {
        let stuck = TcpCounts {
            backlog: true,
            unanswered: 3,
            ..BASE
        };
        assert!(stuck.stalled(3));
        assert!(!stuck.stalled(4));
        assert!(
            !TcpCounts {
                backlog: false,
                ..stuck
            }
            .stalled(3)
        );
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_follow_the_traffic_and_stop_with_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let fd = client.as_raw_fd();
        let (mut client, watch) = watched(client, Some(fd));
        let start = watch.counts().expect("TCP_INFO on Linux");

        client.write_all(b"hello").await.unwrap();
        server.write_all(b"answer!").await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        // Loopback acknowledges at once; a bounded wait for the counts to show it.
        let mut now = start;
        for _ in 0..100 {
            now = watch.counts().unwrap();
            if now.acked == start.acked + 5 && now.received == start.received + 7 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            (now.acked - start.acked, now.received - start.received),
            (5, 7),
            "{start:?} {now:?}"
        );
        assert!(!now.backlog, "{now:?}");
        assert!(now.received_since(&start));
        // Acknowledged bytes with nothing left to send are no sign of the peer.
        let acked_only = TcpCounts {
            received: start.received,
            ..now
        };
        assert!(!acked_only.received_since(&start));
        assert!(!acked_only.takes_our_bytes_since(&start));

        assert!(!now.stalled(1), "{now:?}");

        drop(client);
        assert_eq!(watch.counts(), None);
    }
}
