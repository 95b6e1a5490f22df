//! Zero-copy relay between two TCP sockets with Linux `splice(2)`.
//!
//! When both ends of a tunnel are plain sockets, bytes can move socket → pipe → socket inside
//! the kernel without being copied into the proxy and back, which is most of what a proxy
//! spends its CPU on. Pipes are taken from a small per-thread pool when data arrives and given
//! back as soon as the source runs dry, so an idle tunnel holds no pipe, as it holds no buffer
//! on the copying path.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes};
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, splice};
use prometheus::IntCounter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::TunnelMeter;
use crate::pipe::{HALF_CLOSED_IDLE_TIMEOUT, PipeError, Transferred};

/// Capacity asked for each pipe, and so the most bytes one `splice` call moves. Larger than
/// Linux's 64 KiB default, which halves the system calls of a bulk transfer; the pages are only
/// used while data is in flight. Where the system refuses (its `pipe-max-size`), the default
/// capacity is kept.
const PIPE_CAPACITY: usize = 256 * 1024;

/// Empty pipes kept per thread for the next burst of data; bounded so that idle file
/// descriptors stay few.
const POOLED_PIPES_PER_THREAD: usize = 8;

/// Linux's pipe capacity when none is asked for.
const DEFAULT_PIPE_CAPACITY: usize = 64 * 1024;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

thread_local! {
    static PIPE_POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

fn take_pipe() -> io::Result<Pipe> {
    if let Some(pipe) = PIPE_POOL.with(|pool| pool.borrow_mut().pop()) {
        return Ok(pipe);
    }
    let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let capacity = nix::fcntl::fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_CAPACITY as i32))
        .map_or(DEFAULT_PIPE_CAPACITY, |c| c as usize);
    Ok(Pipe {
        read,
        write,
        capacity,
    })
}

/// Returns an empty pipe to the pool (a pipe still holding bytes is closed instead).
fn release_pipe(pipe: Pipe) {
    PIPE_POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOLED_PIPES_PER_THREAD {
            pool.push(pipe);
        }
    });
}

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

#[cfg(test)]
thread_local! {
    /// Bytes this thread moved with `splice(2)`: how tests tell the spliced path ran (a
    /// current-thread runtime runs a relay on the test's thread).
    pub(crate) static SPLICED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Shared progress of the two directions, watched for the idle timeouts.
struct Progress {
    started: Instant,
    last_ms: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    half_closed: AtomicBool,
    changed: Notify,
}

impl Progress {
    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn transferred(&self) -> Transferred {
        Transferred {
            up: self.up.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
        }
    }
}

/// Relays between two sockets until both directions end; same contract as
/// [`crate::pipe::relay`].
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    early: [Bytes; 2],
    idle_timeout: Option<Duration>,
    stop: Option<CancellationToken>,
    meter: Option<&TunnelMeter>,
) -> Result<Transferred, PipeError> {
    let progress = Progress {
        started: Instant::now(),
        last_ms: AtomicU64::new(0),
        up: AtomicU64::new(0),
        down: AtomicU64::new(0),
        half_closed: AtomicBool::new(false),
        changed: Notify::new(),
    };
    let [early_up, early_down] = early;
    let transfer = async {
        tokio::try_join!(
            one_way(
                early_up,
                client,
                upstream,
                &progress.up,
                meter.map(|m| &m.input),
                &progress,
                "client",
                "upstream"
            ),
            one_way(
                early_down,
                upstream,
                client,
                &progress.down,
                meter.map(|m| &m.output),
                &progress,
                "upstream",
                "client"
            ),
        )
    };
    let watchdog = async {
        loop {
            let half_closed = progress
                .half_closed
                .load(Ordering::Relaxed)
                .then_some(HALF_CLOSED_IDLE_TIMEOUT);
            let limit = match (idle_timeout, half_closed) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(limit) = limit else {
                progress.changed.notified().await;
                continue;
            };
            let last =
                progress.started + Duration::from_millis(progress.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return limit;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = progress.changed.notified() => {}
            }
        }
    };
    let stopped = async {
        match &stop {
            Some(stop) => stop.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = transfer => result.map(|_| progress.transferred()),
        limit = watchdog => Err(PipeError::Idle(limit, progress.transferred())),
        () = stopped => Err(PipeError::Stopped(progress.transferred())),
    }
}

/// Moves `from`'s bytes to `to` until `from` ends, after `early`: bytes read from `from`
/// before the relay began.
#[allow(clippy::too_many_arguments)] // the two directions differ in all of them
async fn one_way(
    mut early: Bytes,
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    metric: Option<&IntCounter>,
    progress: &Progress,
    from_name: &'static str,
    to_name: &'static str,
) -> Result<(), PipeError> {
    let fail = |side: &'static str, source: io::Error| PipeError::Io {
        side,
        source,
        transferred: progress.transferred(),
    };
    let moved = |n: usize| {
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(metric) = metric {
            metric.inc_by(n as u64);
        }
        progress.touch();
    };
    while early.has_remaining() {
        to.writable().await.map_err(|e| fail(to_name, e))?;
        match to.try_write(&early) {
            Ok(n) => {
                early.advance(n);
                moved(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(fail(to_name, e)),
        }
    }
    // Frees the buffer it was split from (a handler's read buffer) for the tunnel's life.
    drop(early);
    loop {
        from.readable().await.map_err(|e| fail(from_name, e))?;
        let pipe = take_pipe().map_err(|e| fail(from_name, e))?;
        let read = from.try_io(Interest::READABLE, || {
            splice(from, None, &pipe.write, None, pipe.capacity, FLAGS).map_err(io::Error::from)
        });
        let mut in_pipe = match read {
            Ok(0) => {
                release_pipe(pipe);
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                release_pipe(pipe);
                continue;
            }
            Err(e) => return Err(fail(from_name, e)),
        };
        while in_pipe > 0 {
            to.writable().await.map_err(|e| fail(to_name, e))?;
            let written = to.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, to, None, in_pipe, FLAGS).map_err(io::Error::from)
            });
            match written {
                Ok(n) => {
                    in_pipe -= n;
                    moved(n);
                    #[cfg(test)]
                    SPLICED.with(|spliced| spliced.set(spliced.get() + n as u64));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(fail(to_name, e)),
            }
        }
        release_pipe(pipe);
    }
    // Pass the end of the stream on as a half-close; the other direction may go on.
    socket2::SockRef::from(to)
        .shutdown(std::net::Shutdown::Write)
        .or_else(|e| match e.kind() {
            io::ErrorKind::NotConnected => Ok(()),
            _ => Err(e),
        })
        .map_err(|e| fail(to_name, e))?;
    progress.half_closed.store(true, Ordering::Relaxed);
    progress.changed.notify_one();
    Ok(())
}
