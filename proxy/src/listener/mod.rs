//! Listeners: the transports on which services accept connections.

pub mod tcp;

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;

use crate::conn::BoxConn;

/// Accepts client connections.
#[async_trait]
pub trait Listener: Send + Sync {
    /// The next connection and its client's address.
    async fn accept(&self) -> io::Result<(BoxConn, SocketAddr)>;

    /// The bound address (with the port the system chose, if any).
    fn local_addr(&self) -> SocketAddr;
}
