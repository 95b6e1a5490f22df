//! The `auto` handler: HTTP, SOCKS4/4a and SOCKS5 on one port (gost-wire.md §7), told apart by
//! the client's first byte. Like GOST's, it does not recognise the relay protocol.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::http::HttpHandler;
use super::socks4::Socks4Handler;
use super::socks5::Socks5Handler;
use super::{Handler, HandlerEnv};
use crate::conn::{BoxConn, Prefixed};

/// Dispatches each connection to the HTTP, SOCKS4 or SOCKS5 handler, all sharing one
/// environment (auth, chain, metadata).
pub struct AutoHandler {
    env: Arc<HandlerEnv>,
    http: HttpHandler,
    socks4: Socks4Handler,
    socks5: Socks5Handler,
}

impl AutoHandler {
    /// The three handlers over one environment.
    pub fn new(env: Arc<HandlerEnv>) -> Result<Self, String> {
        Ok(AutoHandler {
            http: HttpHandler::new(env.clone())?,
            socks4: Socks4Handler::new(env.clone()),
            socks5: Socks5Handler::new(env.clone()),
            env,
        })
    }
}

#[async_trait]
impl Handler for AutoHandler {
    async fn handle(&self, mut conn: BoxConn, client: SocketAddr) {
        let mut first = [0u8; 1];
        let read = tokio::time::timeout(self.env.handshake_timeout, conn.read(&mut first)).await;
        match read {
            Ok(Ok(1)) => {}
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::debug!(service = %self.env.service, client = %client, error = %e, "read failed");
                return;
            }
            Err(_) => {
                tracing::debug!(service = %self.env.service, client = %client, "client sent nothing in time");
                return;
            }
        }
        let conn = Prefixed::boxed(Bytes::copy_from_slice(&first), conn);
        match first[0] {
            0x05 => self.socks5.handle(conn, client).await,
            0x04 => self.socks4.handle(conn, client).await,
            _ => self.http.handle(conn, client).await,
        }
    }
}
