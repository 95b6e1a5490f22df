//! The `tcp` listener.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use async_trait::async_trait;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use super::Listener;
use crate::conn::{BoxConn, KeepAlive};

/// Pending connections the kernel queues before `accept`; GOST's `backlog` default is 128,
/// which bursts of new tunnels overflow.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Plain TCP.
pub struct TcpListenerImpl {
    inner: TcpListener,
    local: SocketAddr,
    keepalive: KeepAlive,
}

impl TcpListenerImpl {
    /// Binds `addr` (`host:port`, `[v6]:port` or `:port`). An empty host listens on every
    /// interface, IPv6 and IPv4 alike where the system has IPv6.
    pub fn bind(addr: &str) -> io::Result<Self> {
        if let Some(socket) = HANDED_OVER.with_borrow_mut(|handed| {
            handed
                .take_if(|(for_addr, _)| for_addr == addr)
                .map(|(_, socket)| socket)
        }) {
            return Self::from_std(socket);
        }
        let (host, port) = gost_api::split_host_port(addr).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid listen address {addr:?}"),
            )
        })?;
        let port: u16 = if port.is_empty() {
            0
        } else {
            gost_api::parse_port(port).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid port in {addr:?}"),
                )
            })?
        };
        let socket = if host.is_empty() {
            bind_socket(
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
                true,
            )
            .or_else(|_| {
                bind_socket(
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                    false,
                )
            })?
        } else {
            let ip: IpAddr = match host.parse() {
                Ok(ip) => ip,
                Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
                    .next()
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("{host:?} does not resolve"),
                        )
                    })?
                    .ip(),
            };
            bind_socket(SocketAddr::new(ip, port), false)?
        };
        Self::from_std(socket.into())
    }

    /// A listener on a socket that is bound and listening already (non-blocking).
    fn from_std(socket: std::net::TcpListener) -> io::Result<Self> {
        let inner = TcpListener::from_std(socket)?;
        let local = inner.local_addr()?;
        Ok(TcpListenerImpl {
            inner,
            local,
            keepalive: KeepAlive::default(),
        })
    }

    /// Another handle on the listening socket, for the listener that takes it over.
    pub(crate) fn socket(&self) -> Option<std::net::TcpListener> {
        use std::os::fd::AsFd;
        self.inner
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(std::net::TcpListener::from)
    }

    /// The same listener, giving accepted sockets `keepalive` (the service's setting).
    pub fn with_keepalive(mut self, keepalive: KeepAlive) -> Self {
        self.keepalive = keepalive;
        self
    }
}

thread_local! {
    /// The socket [`with_handover`] gives the listener it binds.
    static HANDED_OVER: std::cell::RefCell<Option<(String, std::net::TcpListener)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `bind` (a prepared listener's bind), whose [`TcpListenerImpl::bind`] of `addr` takes
/// `socket` (the listening socket of the listener it replaces) instead of binding: the
/// address is never unbound, so no connection is refused while listeners change. The
/// connections the old listener accepted but did not hand over yet are its own.
pub(crate) fn with_handover<R>(
    addr: &str,
    socket: std::net::TcpListener,
    bind: impl FnOnce() -> R,
) -> R {
    HANDED_OVER.set(Some((addr.to_string(), socket)));
    let bound = bind();
    // Not taken (a bind that failed before it): the socket closes here.
    HANDED_OVER.take();
    bound
}

fn bind_socket(addr: SocketAddr, dual_stack: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    // Restarting the proxy must not wait for old connections in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

impl TcpListenerImpl {
    /// The next connection as a TCP stream, for listeners that add a handshake.
    pub async fn accept_tcp(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.inner.accept().await?;
        crate::conn::tune_tcp(&stream, self.keepalive)?;
        Ok((stream, peer))
    }
}

#[async_trait]
impl Listener for TcpListenerImpl {
    async fn accept(&self) -> io::Result<(BoxConn, SocketAddr)> {
        let (stream, peer) = self.accept_tcp().await?;
        Ok((Box::new(stream), peer))
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn socket(&self) -> Option<std::net::TcpListener> {
        TcpListenerImpl::socket(self)
    }
}
