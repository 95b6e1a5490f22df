//! The `auto` handler: HTTP, SOCKS4/4a and SOCKS5 on one port (gost-wire.md §7), told apart by
//! the client's first byte. Like GOST's, it does not recognise the relay protocol.
//!
//! A TLS client (first byte 0x16, a handshake record) is forwarded, as by GOST's auto handler,
//! to the name its ClientHello asks for (SNI), port 443, through the chain: the handler reads
//! the ClientHello, dials, and passes it on untouched; the TLS session is the client's and the
//! server's. GOST does this without checking the service's credentials, which a TLS client
//! cannot send; here a service with credentials refuses TLS clients instead.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::http::HttpHandler;
use super::socks4::Socks4Handler;
use super::socks5::Socks5Handler;
use super::{Handler, HandlerEnv, OwnForward, run_tunnel_after, within_handshake_timeout};
use crate::addr::Address;
use crate::chain::DialFor;
use crate::conn::{BoxConn, Conn, Prefixed};

/// The port a TLS client is forwarded to, as by GOST: SNI names a host, not a port.
const TLS_PORT: u16 = 443;

/// Most bytes read while looking for the end of a ClientHello: its largest legal size
/// (a 16 MiB handshake message is legal but never sent; rustls itself stops at 64 KiB).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// A first byte that starts a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

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
        if first[0] == TLS_HANDSHAKE {
            // Boxed, so that HTTP and SOCKS connections do not carry room for its state.
            return Box::pin(self.forward_tls(conn, first[0], client)).await;
        }
        let conn = Prefixed::boxed(Bytes::copy_from_slice(&first), conn);
        match first[0] {
            0x05 => self.socks5.handle(conn, client).await,
            0x04 => self.socks4.handle(conn, client).await,
            _ => self.http.handle(conn, client).await,
        }
    }
}

impl AutoHandler {
    /// Forwards a TLS client to the host its ClientHello names, port 443.
    async fn forward_tls(&self, mut conn: BoxConn, first: u8, client: SocketAddr) {
        let env = &self.env;
        if env.auth.is_some() {
            // At debug: scanners send ClientHellos to every port.
            crate::metrics::handler_error(&env.service, client);
            tracing::debug!(
                service = %env.service, client = %client,
                "auto: a TLS client cannot send the service's credentials; refused \
                 (GOST would forward it by its SNI unchecked)"
            );
            return;
        }
        let reading = Box::pin(read_client_hello(&mut conn, first));
        let Some((hello, name)) = within_handshake_timeout(env, "auto", client, reading).await
        else {
            return;
        };
        if OwnForward::is_own(client, conn.tcp_local_addr()) {
            crate::metrics::handler_error(&env.service, client);
            tracing::warn!(
                service = %env.service, client = %client, server_name = name.as_deref().unwrap_or(""),
                "auto: a TLS client's server name leads back to this service; not forwarded"
            );
            return;
        }
        let target = match name
            .as_deref()
            .map(|name| Address::from_host(name, TLS_PORT))
        {
            Some(Ok(target)) => target,
            Some(Err(e)) => {
                tracing::debug!(service = %env.service, client = %client, error = %e, "auto: bad server name");
                return;
            }
            None => {
                tracing::debug!(service = %env.service, client = %client, "auto: TLS ClientHello without a server name; nowhere to forward it");
                return;
            }
        };
        drop(name);
        let dial_for = DialFor {
            client: client.ip(),
            user: None,
        };
        let mut upstream = match env.router.dial(&target, dial_for).await {
            Ok(upstream) => upstream,
            Err(e) => {
                crate::metrics::handler_error(&env.service, client);
                tracing::warn!(
                    service = %env.service, client = %client, target = %target, error = %e,
                    "auto: TLS forward failed"
                );
                return;
            }
        };
        // Noted before the ClientHello goes out, so that it is recognised if it comes back.
        let _own = OwnForward::note(&upstream);
        // The ClientHello goes on first, as it came; then the two sockets are joined as they
        // are (spliced, when both are TCP).
        if let Err(e) = upstream.write_all(&hello).await {
            tracing::debug!(service = %env.service, client = %client, target = %target, error = %e, "auto: TLS forward failed");
            return;
        }
        let sent_up = hello.len() as u64;
        drop(hello);
        run_tunnel_after(env, "tls", client, &target, conn, upstream, sent_up).await;
    }
}

/// Reads a TLS ClientHello that starts with `first` (already read): its bytes as received,
/// and the server name it asks for. rustls parses it; nothing is answered. A ClientHello may
/// span several TLS records; rustls is asked for it after every record it takes in, since it
/// holds at most one record's worth of bytes until then.
async fn read_client_hello(
    conn: &mut BoxConn,
    first: u8,
) -> Result<(Bytes, Option<String>), io::Error> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut raw = BytesMut::with_capacity(1024);
    raw.extend_from_slice(&[first]);
    let mut fed = 0;
    loop {
        while fed < raw.len() {
            let mut unread = &raw[fed..];
            let n = acceptor.read_tls(&mut unread)?;
            fed += n;
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let name = accepted.client_hello().server_name().map(str::to_string);
                    return Ok((raw.freeze(), name));
                }
                Ok(None) => {}
                Err((e, _alert)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("not a TLS ClientHello rustls accepts: {e}"),
                    ));
                }
            }
            if n == 0 {
                break;
            }
        }
        let room = MAX_CLIENT_HELLO.saturating_sub(raw.len());
        if room == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS ClientHello longer than {MAX_CLIENT_HELLO} bytes"),
            ));
        }
        raw.reserve(room.min(16 * 1024));
        let read = (&mut *conn).take(room as u64).read_buf(&mut raw).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// `bytes` after the first, fed as a client would send them, then the write side closed.
    async fn hello_from(bytes: &[u8]) -> io::Result<(Bytes, Option<String>)> {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        far.write_all(&bytes[1..]).await.unwrap();
        drop(far);
        let mut conn: BoxConn = Box::new(near);
        read_client_hello(&mut conn, bytes[0]).await
    }

    #[tokio::test]
    async fn a_client_hello_gives_its_server_name_and_its_bytes_as_sent() {
        // A real ClientHello, from rustls's client.
        let hello = client_hello("example.test");
        let (raw, name) = hello_from(&hello).await.unwrap();
        assert_eq!(name.as_deref(), Some("example.test"));
        assert_eq!(&raw[..], &hello[..]);
    }

    /// rustls's ClientHello for `name`, as one TLS record.
    fn client_hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        hello
    }

    /// `record` (one ClientHello record) grown by a padding extension of `padding` bytes and
    /// cut into records of at most 16 KiB, as a client with a large ClientHello sends it.
    fn padded(record: &[u8], padding: usize) -> Vec<u8> {
        let mut body = record[9..].to_vec();
        let mut at = 2 + 32;
        at += 1 + usize::from(body[at]);
        at += 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
        at += 1 + usize::from(body[at]);
        let extensions = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
        let grown = u16::try_from(extensions + 4 + padding).unwrap();
        body[at..at + 2].copy_from_slice(&grown.to_be_bytes());
        body.extend_from_slice(&[0x00, 0x15]);
        body.extend_from_slice(&u16::try_from(padding).unwrap().to_be_bytes());
        body.resize(body.len() + padding, 0);
        let mut message = vec![0x01];
        message.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        let mut wire = Vec::new();
        for chunk in message.chunks(16 * 1024) {
            wire.extend_from_slice(&[0x16, 0x03, 0x01]);
            wire.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            wire.extend_from_slice(chunk);
        }
        wire
    }

    #[tokio::test]
    async fn a_client_hello_over_several_records_is_read_whole() {
        let wire = padded(&client_hello("big.example.test"), 20 * 1024);
        assert!(wire.len() > 20 * 1024);
        let (raw, name) = hello_from(&wire).await.unwrap();
        assert_eq!(name.as_deref(), Some("big.example.test"));
        assert_eq!(&raw[..], &wire[..]);
    }

    #[tokio::test]
    async fn what_is_not_a_client_hello_is_refused() {
        // A handshake record whose message is not a ClientHello.
        let e = hello_from(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // Cut short.
        let e = hello_from(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        // A record announcing more than a ClientHello may hold, never ending.
        let mut endless = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xff, 0xff];
        endless.resize(200 * 1024, 0);
        assert!(hello_from(&endless).await.is_err());
    }
}
