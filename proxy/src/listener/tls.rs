//! The `tls` listener: TLS over TCP (gost-wire.md §8.8), also behind GOST's `https` and
//! `relay+tls` schemes.

use std::io;

use super::Handshaking;
use super::tcp::TcpListenerImpl;
use crate::tls::ServerTls;

/// Binds `addr` and serves TLS with `tls` on every connection.
pub fn bind(
    addr: &str,
    tls: ServerTls,
    keepalive: crate::conn::KeepAlive,
) -> io::Result<Handshaking> {
    let tcp = TcpListenerImpl::bind(addr)?.with_keepalive(keepalive);
    Ok(Handshaking::spawn(tcp, move |stream, client, ready| {
        let tls = tls.clone();
        async move {
            match tls.accept(stream, client).await {
                Ok(stream) => {
                    let _ = ready.send((Box::new(stream), client)).await;
                }
                Err(e) => tracing::debug!(client = %client, error = %e, "TLS handshake failed"),
            }
        }
    }))
}
