//! The `tls` dialer: TLS over TCP (gost-wire.md §8.8), or over the tunnel of the previous
//! hop.

use std::io;
use std::time::Duration;

use async_trait::async_trait;

use super::Dialer;
use super::tcp::connect;
use crate::addr::Address;
use crate::conn::BoxConn;
use crate::tls::ClientTls;

/// TLS with the node's client settings.
pub struct TlsDialer {
    tls: ClientTls,
}

impl TlsDialer {
    /// A dialer with the node's TLS settings.
    pub fn new(tls: ClientTls) -> Self {
        TlsDialer { tls }
    }
}

#[async_trait]
impl Dialer for TlsDialer {
    async fn dial(&self, addr: &Address, timeout: Duration) -> io::Result<BoxConn> {
        let tcp = connect(addr, timeout).await?;
        Ok(Box::new(
            self.tls.connect(Box::new(tcp) as BoxConn, addr).await?,
        ))
    }

    async fn handshake(&self, conn: BoxConn, addr: &Address) -> io::Result<BoxConn> {
        Ok(Box::new(self.tls.connect(conn, addr).await?))
    }
}
