//! The `tcp` dialer.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpStream;

use super::Dialer;
use crate::addr::{Address, Host};
use crate::conn::BoxConn;

/// Plain TCP.
#[derive(Debug, Default)]
pub struct TcpDialer;

#[async_trait]
impl Dialer for TcpDialer {
    async fn dial(&self, addr: &Address, timeout: Duration) -> io::Result<BoxConn> {
        Ok(Box::new(connect(addr, timeout).await?))
    }
}

/// Connects to `addr`, resolving a domain name with the system resolver and trying each of its
/// addresses in turn, all within `timeout`. The socket gets the dialling service's keepalive
/// ([`crate::conn::dialing_keepalive`]).
pub async fn connect(addr: &Address, timeout: Duration) -> io::Result<TcpStream> {
    let attempt = async {
        let stream = match &addr.host {
            Host::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, addr.port)).await?,
            Host::Domain(name) => TcpStream::connect((name.as_str(), addr.port)).await?,
        };
        crate::conn::tune_tcp(&stream, crate::conn::dialing_keepalive())?;
        Ok(stream)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out after {timeout:?}"),
        )),
    }
}
