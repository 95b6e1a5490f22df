//! Dialers: the transports that reach a chain node (client side of a listener).

pub mod grpc;
pub mod h2;
pub mod h3;
pub mod pht;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::io;
use std::sync::Arc;
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

    /// [`Dialer::handshake`] for a transport that needs more streams to the node than the one
    /// it is given (pht: a pull beside each push): `reopen` opens another through the same
    /// nodes of the earlier hops.
    async fn handshake_routed(
        &self,
        conn: BoxConn,
        addr: &Address,
        _reopen: Reopen,
    ) -> io::Result<BoxConn> {
        self.handshake(conn, addr).await
    }
}

/// Opens one more stream to a later hop's node through the nodes of the hops before it.
pub type Reopen = Arc<dyn Fn() -> Reopening + Send + Sync>;

/// What a [`Reopen`] returns.
pub type Reopening =
    std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<BoxConn>> + Send>>;
