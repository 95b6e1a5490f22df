//! Connectors: the proxy protocols spoken to a chain node (client side of a handler).

pub mod http;
pub mod http2;
pub mod relay;
pub mod socks5;

use std::io;

use async_trait::async_trait;

use crate::addr::Address;
use crate::conn::BoxConn;

/// Why a node did not open the tunnel it was asked for.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The stream to the node failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The node refused: wrong credentials, target unreachable, ... as the node said.
    #[error("{0}")]
    Refused(String),
    /// The node answered something that is not its protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Speaks a proxy protocol to a node.
#[async_trait]
pub trait Connector: Send + Sync {
    /// The protocol's opening exchange, once per stream (e.g. SOCKS5 method negotiation).
    async fn handshake(&self, conn: BoxConn) -> Result<BoxConn, ConnectError> {
        Ok(conn)
    }

    /// Asks the node to open a TCP tunnel to `target`; the returned stream carries it.
    async fn connect(&self, conn: BoxConn, target: &Address) -> Result<BoxConn, ConnectError>;
}
