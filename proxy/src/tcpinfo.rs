//! What the kernel counts of a TCP socket's traffic (`TCP_INFO`), for telling a live peer from a
//! silent one when the protocol above hears nothing: bytes that arrived but were not read yet,
//! and bytes we sent that the peer acknowledged.
//!
//! The same counts size the socket's backlog of bytes not sent yet ([`Watched`]): a connection
//! that carries many tunnels (HTTP/2, gRPC) should keep its queue above the socket, where a new
//! tunnel's request or a small write can pass the bulk, not in the kernel, where it waits behind
//! everything written before it.
//!
//! The socket is asked through its descriptor number, which is only valid while the socket is
//! open: [`Watched`] owns the stream over the socket and, before the stream (and the socket)
//! goes, marks the number gone under the lock that [`TcpWatch::counts`] holds while it asks.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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
    /// Bytes written to the socket that it has not sent yet.
    pub unsent: u32,
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
    /// A watch on no socket (a stream over earlier hops): it never counts anything.
    pub fn none() -> TcpWatch {
        TcpWatch {
            fd: Arc::new(Mutex::new(None)),
        }
    }

    /// The socket's counts now; `None` once it is closed, or where the kernel does not count
    /// them (Linux before 4.6).
    pub fn counts(&self) -> Option<TcpCounts> {
        let fd = self.fd.lock().unwrap_or_else(|e| e.into_inner());
        tcp_info(fd.as_ref().copied()?)
    }
}

/// A TCP socket's stream, which [`TcpWatch`] may ask about until it is dropped.
///
/// It also keeps the socket's unsent bytes to about what the link sends in [`UNSENT_TIME`]
/// (`TCP_NOTSENT_LOWAT`, at least [`MIN_UNSENT`]), fitted at most every [`REFIT_EVERY`] while
/// we write to how fast the peer acknowledged our bytes since the last fit. Without a limit
/// the kernel's send buffer grows to megabytes, and on a slow uplink everything a connection's
/// other tunnels write (a new tunnel's request, a keystroke) waits behind seconds of one
/// upload. On fast links (loopback, a data centre's network) the limit rises to the host's
/// largest send buffer ([`Bounds`]), so bulk transfers pay no extra wake-ups.
pub struct Watched {
    io: TcpStream,
    /// `io`'s descriptor, for the [`TcpWatch`]es; `None` once `io` is dropped.
    fd: Arc<Mutex<Option<RawFd>>>,
    /// The limit set on the socket, which the writers above keep to too (see [`Pace`]):
    /// `u32::MAX` where the socket has none, the host's where the host limits every socket.
    pace: Pace,
    /// The kernel's counts at the last fit.
    reading: Option<Reading>,
}

/// How much one writer on a connection that many tunnels share should hand it at a time: the
/// unsent limit of its socket ([`Watched`]), what the link sends in a moment. An HTTP/2 stream
/// writes no bigger DATA frames, so on a slow link a new tunnel's request or a keystroke
/// waits behind that much of each other busy stream (HTTP/2 sends the streams' frames in
/// turn), not behind 64 KiB of each. Unbounded where no limit is set, and on fast links,
/// where the limit rises out of the way.
#[derive(Clone, Debug)]
pub struct Pace(Arc<AtomicU32>);

impl Pace {
    /// No bound: a connection whose socket has no limit (none of its own, or not Linux).
    pub fn unbounded() -> Pace {
        Pace(Arc::new(AtomicU32::new(u32::MAX)))
    }

    /// The most bytes to hand the connection in one write: the limit, but never below
    /// [`MIN_CHUNK`].
    pub fn chunk(&self) -> usize {
        (self.limit() as usize).max(MIN_CHUNK)
    }

    fn limit(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// A pace that stays at `limit` (tests of the writers above).
    #[cfg(test)]
    pub(crate) fn fixed(limit: u32) -> Pace {
        let pace = Pace::unbounded();
        pace.set(limit);
        pace
    }

    pub(crate) fn set(&self, limit: u32) {
        self.0.store(limit.max(1), Ordering::Relaxed);
    }
}

/// The smallest write a [`Pace`] asks for. A host-wide `tcp_notsent_lowat` may be tiny (even 1
/// byte); writes cut that small would cost more in framing (HTTP/2, gRPC, TLS: 9 to 30 bytes
/// each) than they carry, while the kernel holds what the limit leaves over anyway.
pub const MIN_CHUNK: usize = 4 * 1024;

impl Default for Pace {
    fn default() -> Pace {
        Pace::unbounded()
    }
}

/// What a fit reads of the socket.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    acked: u64,
    /// Whether bytes waited unsent: the link, not the writer, set the pace.
    waiting: bool,
}

/// How long the bytes a connection's socket holds unsent may take to leave at the link's rate
/// (above [`MIN_UNSENT`]). A new tunnel's request waits about this long behind uploads in the
/// kernel, plus what the layers above hold: the frame the HTTP/2 layer is writing and, with
/// TLS, the records rustls encrypted.
pub const UNSENT_TIME: Duration = Duration::from_millis(20);

/// The smallest limit on unsent bytes, and the first: the kernel wakes the writer when half of
/// it is left, so below this the writer wakes for every few packets.
pub const MIN_UNSENT: u32 = 16 * 1024;

/// The largest limit on unsent bytes where the host's largest send buffer cannot be read:
/// Linux's default one (`net.ipv4.tcp_wmem`), so no limit in effect. The writer still wakes
/// when half of it is left, so a link that turns slow is seen.
pub const MAX_UNSENT: u32 = 4 * 1024 * 1024;

/// How this host wants the unsent bytes of a socket limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsent {
    /// Fitted to the link, within these bounds.
    Fitted(Bounds),
    /// The host's own limit for every socket (`net.ipv4.tcp_notsent_lowat`), already below
    /// any fit: the sockets are left to it, and the writers above keep to it too.
    Host(u32),
}

/// What a socket's limit on unsent bytes is fitted within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub floor: u32,
    pub ceiling: u32,
}

impl Bounds {
    /// The bounds on a host with Linux's defaults.
    pub const DEFAULT: Bounds = Bounds {
        floor: MIN_UNSENT,
        ceiling: MAX_UNSENT,
    };
}

impl Unsent {
    /// How a host whose `net.ipv4.tcp_wmem` and `net.ipv4.tcp_notsent_lowat` read
    /// as given (`None`: not readable) limits unsent bytes. The ceiling is the largest send buffer, at or above
    /// which a limit has no effect: a host that raised it gets the room it made for fast
    /// links. A host-wide `tcp_notsent_lowat` (Linux's default: none) is what its owner asked
    /// of every socket, and lowers the ceiling to itself; one at or below [`MIN_UNSENT`]
    /// already keeps less unsent than a fit would, and the sockets are left to it.
    pub fn of_host(tcp_wmem: Option<&str>, notsent_lowat: Option<&str>) -> Unsent {
        let largest = tcp_wmem
            .and_then(|text| text.split_whitespace().nth(2)?.parse::<u64>().ok())
            .map_or(MAX_UNSENT, |bytes| {
                bytes.clamp(u64::from(MIN_UNSENT), u64::from(u32::MAX)) as u32
            });
        let host = notsent_lowat
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map_or(u32::MAX, |bytes| bytes.min(u64::from(u32::MAX)) as u32);
        if host <= MIN_UNSENT {
            // 0 asks the kernel for the host's value: 1 byte is as good as none left.
            return Unsent::Host(host.max(1));
        }
        Unsent::Fitted(Bounds {
            floor: MIN_UNSENT,
            ceiling: largest.min(host),
        })
    }

    /// How this host limits unsent bytes, read once (per network namespace, as a container
    /// sees it).
    pub fn host() -> Unsent {
        static HOST: std::sync::OnceLock<Unsent> = std::sync::OnceLock::new();
        *HOST.get_or_init(|| {
            let read = |name: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"));
            Unsent::of_host(
                read("tcp_wmem").ok().as_deref(),
                read("tcp_notsent_lowat").ok().as_deref(),
            )
        })
    }
}

/// How often a busy socket's limit is fitted again to its rate. A limit at most doubles in
/// one step (so a fast link reaches the ceiling within a second), and falls only on a rate
/// measured while bytes waited unsent.
pub const REFIT_EVERY: Duration = Duration::from_millis(100);

/// `stream` with a watch on its socket. The socket gets a fitted limit only where the kernel
/// counts what a fit needs (Linux 4.6 and later): a limit that could never rise would hold
/// fast links back.
pub(crate) fn watched(stream: TcpStream) -> (Watched, TcpWatch) {
    let fd = stream.as_raw_fd();
    let shared = Arc::new(Mutex::new(Some(fd)));
    let pace = Pace::unbounded();
    if tcp_info(fd).is_some() {
        match Unsent::host() {
            Unsent::Fitted(bounds) => {
                if set_unsent_limit(fd, bounds.floor).is_ok() {
                    pace.set(bounds.floor);
                }
            }
            Unsent::Host(limit) => pace.set(limit),
        }
    }
    let io = Watched {
        io: stream,
        fd: shared.clone(),
        pace,
        reading: None,
    };
    (io, TcpWatch { fd: shared })
}

/// An accepted socket that will carry many tunnels (an HTTP/2 or gRPC listener's), with its
/// unsent bytes fitted to its link.
pub(crate) fn shared_socket(stream: TcpStream) -> Watched {
    watched(stream).0
}

/// The limit on unsent bytes for a socket whose peer takes `rate` bytes a second: what leaves
/// in [`UNSENT_TIME`], within `bounds`.
pub fn unsent_limit(rate: u64, bounds: Bounds) -> u32 {
    let bytes = rate.saturating_mul(UNSENT_TIME.as_millis() as u64) / 1000;
    bytes.clamp(u64::from(bounds.floor), u64::from(bounds.ceiling)) as u32
}

/// The next limit after `current`, for a peer that acknowledged `rate` bytes a second since
/// the last fit. A rising limit at most doubles. A falling one falls only when `link_bound`
/// (bytes waited unsent at both fits): otherwise the writer, not the link, set the rate.
pub fn next_limit(current: u32, rate: u64, link_bound: bool, bounds: Bounds) -> u32 {
    let target = unsent_limit(rate, bounds);
    if target > current {
        target.min(current.saturating_mul(2))
    } else if link_bound {
        target
    } else {
        current
    }
}

impl Watched {
    /// The socket's limit, as the writers above should see it.
    pub fn pace(&self) -> Pace {
        self.pace.clone()
    }

    /// Fits the unsent limit to the peer's rate, at most every [`REFIT_EVERY`].
    fn refit(&mut self) {
        // Only a limit of our own is fitted (none: the kernel took none, or cannot count).
        let current = self.pace.limit();
        let Unsent::Fitted(bounds) = Unsent::host() else {
            return;
        };
        let fd = self.io.as_raw_fd();
        if current == u32::MAX {
            return;
        }
        let now = Instant::now();
        if self
            .reading
            .is_some_and(|r| now.duration_since(r.at) < REFIT_EVERY)
        {
            return;
        }
        let Some(counts) = tcp_info(fd) else { return };
        let reading = Reading {
            at: now,
            acked: counts.acked,
            waiting: counts.unsent > 0,
        };
        let Some(before) = self.reading.replace(reading) else {
            return;
        };
        // Readings may be seconds apart: a writer parked behind a high limit on a link that
        // turned slow writes again only once half of it left. A pause of the writer between
        // them makes the rate low, which costs wake-ups until the limit doubled back.
        let elapsed = now.duration_since(before.at);
        let rate =
            (reading.acked.saturating_sub(before.acked) as f64 / elapsed.as_secs_f64()) as u64;
        let limit = next_limit(current, rate, before.waiting && reading.waiting, bounds);
        if limit != current && set_unsent_limit(fd, limit).is_ok() {
            self.pace.set(limit);
        }
    }
}

/// Sets `TCP_NOTSENT_LOWAT` on `fd`, which the caller owns.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // borrowing a descriptor by number
fn set_unsent_limit(fd: RawFd, limit: u32) -> io::Result<()> {
    // SAFETY: `fd` is the open socket that the caller's stream owns, borrowed only for the
    // call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).set_tcp_notsent_lowat(limit)
}

/// Elsewhere the kernel's send buffer is left as it is (no counts to fit a limit to either).
#[cfg(not(target_os = "linux"))]
fn set_unsent_limit(_fd: RawFd, _limit: u32) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Runs before `io` (and the socket) is dropped: no question is asked after this.
        *self.fd.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.refit();
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.refit();
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// Not `as_tcp`: the relay must not move a shared connection's bytes itself.
impl crate::conn::Conn for Watched {}

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
        unsent: info.tcpi_notsent_bytes,
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
        unsent: 0,
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
    fn the_unsent_limit_is_what_the_link_sends_in_a_moment() {
        let bounds = Bounds::DEFAULT;
        // 200 KB/s: 4 KB in 20 ms, raised to the floor.
        assert_eq!(unsent_limit(200_000, bounds), MIN_UNSENT);
        // 100 Mbit/s: 250 KB.
        assert_eq!(unsent_limit(12_500_000, bounds), 250_000);
        // 10 Gbit/s and loopback: the kernel's largest send buffer.
        assert_eq!(unsent_limit(1_250_000_000, bounds), MAX_UNSENT);
        assert_eq!(unsent_limit(u64::MAX, bounds), MAX_UNSENT);
    }

    #[test]
    fn a_limit_rises_by_doubling_and_falls_only_when_the_link_set_the_pace() {
        let limit =
            |current, rate, link_bound| next_limit(current, rate, link_bound, Bounds::DEFAULT);
        // Loopback's rate, from the floor: one doubling a fit.
        assert_eq!(limit(MIN_UNSENT, u64::MAX, false), 2 * MIN_UNSENT);
        assert_eq!(limit(MAX_UNSENT / 2, u64::MAX, true), MAX_UNSENT);
        assert_eq!(limit(MAX_UNSENT, u64::MAX, true), MAX_UNSENT);
        // 200 KB/s while bytes waited: the link's pace, straight to the floor.
        assert_eq!(limit(MAX_UNSENT, 200_000, true), MIN_UNSENT);
        // 200 KB/s with nothing waiting: the writer's pace, which says nothing of the link.
        assert_eq!(limit(MAX_UNSENT, 200_000, false), MAX_UNSENT);
        // 100 Mbit/s: 250 KB, from above or (in steps) from below.
        assert_eq!(limit(MAX_UNSENT, 12_500_000, true), 250_000);
        assert_eq!(limit(200_000, 12_500_000, false), 250_000);
    }

    #[test]
    fn the_bounds_follow_the_hosts_send_buffer_and_unsent_setting() {
        // Linux's defaults, as /proc/sys shows them.
        let wmem = Some("4096\t16384\t4194304\n");
        let no_lowat = Some("4294967295\n");
        assert_eq!(
            Unsent::of_host(wmem, no_lowat),
            Unsent::Fitted(Bounds::DEFAULT)
        );
        // Nothing readable: the defaults.
        assert_eq!(Unsent::of_host(None, None), Unsent::Fitted(Bounds::DEFAULT));
        assert_eq!(
            Unsent::of_host(Some("garbage"), Some("")),
            Unsent::Fitted(Bounds::DEFAULT)
        );
        let fitted = |unsent| match unsent {
            Unsent::Fitted(bounds) => bounds,
            Unsent::Host(limit) => panic!("left to the host's {limit}"),
        };
        // A host tuned for fast links: its largest send buffer is the ceiling.
        let raised = fitted(Unsent::of_host(Some("4096 87380 67108864"), no_lowat));
        assert_eq!(raised.ceiling, 64 << 20);
        assert_eq!(unsent_limit(u64::MAX, raised), 64 << 20);
        // A host-wide unsent limit is the most a fit sets.
        let capped = fitted(Unsent::of_host(wmem, Some("131072")));
        assert_eq!(
            capped,
            Bounds {
                floor: MIN_UNSENT,
                ceiling: 131_072
            }
        );
        assert_eq!(next_limit(MIN_UNSENT * 8, u64::MAX, false, capped), 131_072);
        // One at or below the floor keeps less unsent than any fit: the sockets are left to it.
        // The writers above keep to it too (0 reads as the least there is).
        assert_eq!(Unsent::of_host(wmem, Some("16384")), Unsent::Host(16_384));
        assert_eq!(Unsent::of_host(wmem, Some("0")), Unsent::Host(1));
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Both ends of a new loopback connection: the client's, then the server's.
    async fn connected() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn counts_follow_the_traffic_and_stop_with_the_socket() {
        let (client, mut server) = connected().await;
        let (mut client, watch) = watched(client);
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

    /// A writer on a watched socket that writes as fast as the socket takes its bytes, until
    /// the test ends.
    fn flood(
        client: tokio::net::TcpStream,
    ) -> (
        TcpWatch,
        Pace,
        socket2::Socket,
        tokio_util::task::AbortOnDropHandle<()>,
    ) {
        let same_socket = socket2::SockRef::from(&client).try_clone().unwrap();
        let (mut client, watch) = watched(client);
        let pace = client.pace();
        let writing = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            while client.write_all(&chunk).await.is_ok() {}
        });
        (
            watch,
            pace,
            same_socket,
            tokio_util::task::AbortOnDropHandle::new(writing),
        )
    }

    #[tokio::test]
    async fn a_slow_peer_leaves_few_bytes_unsent_and_a_fast_one_no_limit() {
        let Unsent::Fitted(bounds) = Unsent::host() else {
            eprintln!("this host's tcp_notsent_lowat keeps sockets below any fit: nothing to test");
            return;
        };
        // A peer that reads 48 KB a second, as a slow uplink takes them.
        let (client, mut server) = connected().await;
        let reading = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let started = tokio::time::Instant::now();
            let mut taken = 0u64;
            while let Ok(n) = server.read(&mut buf).await
                && n > 0
            {
                taken += n as u64;
                tokio::time::sleep_until(started + Duration::from_secs_f64(taken as f64 / 48e3))
                    .await;
            }
        }));
        let (watch, pace, socket, writing) = flood(client);
        // The peer's receive buffer takes the first megabytes at loopback's pace; then the
        // writer's fits see the peer's.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut most = 0;
        for _ in 0..10 {
            most = most.max(watch.counts().unwrap().unsent);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Without a limit the kernel holds megabytes (a minute at this rate). With it: the
        // floor (48 KB/s sends 1 KB in 20 ms), plus what one write added past it.
        let limit = socket.tcp_notsent_lowat().unwrap();
        assert_eq!(limit, bounds.floor);
        assert!(most <= limit + 64 * 1024, "{most} bytes unsent");
        // The writers above hand the connection no more at a time.
        assert_eq!(pace.chunk(), limit as usize);
        drop((writing, reading));

        // A peer that reads as fast as loopback carries: the limit rises to the largest.
        let (client, mut server) = connected().await;
        let _draining = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = server.read(&mut buf).await
                && n > 0
            {}
        }));
        let (watch, pace, socket, _writing) = flood(client);
        // Doubling every refit, the limit reaches the largest in under a second.
        let mut limit = 0;
        // (A host that raised its largest send buffer far above Linux's 4 MiB may need more
        // than loopback's 20 ms to fill it: 4 MiB, or its ceiling if lower, is enough here.)
        let high = bounds.ceiling.min(MAX_UNSENT);
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            limit = socket.tcp_notsent_lowat().unwrap();
            if limit >= high {
                break;
            }
        }
        assert!(limit >= high, "limit {limit}, {:?}", watch.counts());
        assert_eq!(pace.chunk(), limit as usize);
    }
}
