//! Dialers: the transports that reach a chain node (client side of a listener).

pub mod grpc;
pub mod h2;
pub mod h3;
pub mod pht;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::io;
use std::time::Duration;

use async_trait::async_trait;

use crate::addr::Address;
use crate::conn::BoxConn;

/// Makes the transport to a node.
#[async_trait]
pub trait Dialer: Send + Sync {
    /// Opens a new transport to `addr` (the first hop of a route), within `timeout`.
    async fn dial(&self, addr: &Address, timeout: Duration) -> io::Result<BoxConn>;

    /// Runs this transport's handshake over a stream that already reaches the node (a later
    /// hop, tunnelled through the previous ones). Plain TCP has none.
    async fn handshake(&self, conn: BoxConn, _addr: &Address) -> io::Result<BoxConn> {
        Ok(conn)
    }
}
