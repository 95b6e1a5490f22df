//! The `socks5` connector: asks a SOCKS5 node for a TCP tunnel, authenticating with RFC 1929
//! when it has credentials.

use std::future::Future;
use std::io;
use std::time::Duration;

use async_trait::async_trait;
use gost_api::{AuthConfig, Metadata, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ConnectError, Connector};
use crate::addr::Address;
use crate::codec::socks5::{self, Command};
use crate::conn::BoxConn;
use crate::tls::ClientTls;

/// Speaks SOCKS5 to a node.
pub struct Socks5Connector {
    /// The greeting, encoded once: it depends only on whether there are credentials.
    greeting: Vec<u8>,
    /// The user name, for error messages.
    username: Option<String>,
    /// The RFC 1929 request, encoded once (and checked to fit) when the connector is built.
    credentials: Option<Vec<u8>>,
    /// `None`: no deadline, as a zero or negative `timeout` asks.
    timeout: Option<Duration>,
    /// GOST's TLS methods 0x80/0x82, offered unless `notls`; the node's address names the
    /// server for TLS.
    tls: Option<(ClientTls, Address)>,
}

impl Socks5Connector {
    /// A connector sending `auth` when the node asks for credentials. Reads metadata `timeout`
    /// (a duration; zero or negative for none) and `notls`. Like GOST's, it offers the TLS
    /// methods too unless `notls` is set, using `tls` (the connector's `tls` section) with the
    /// node at `node`.
    pub fn new(
        auth: Option<AuthConfig>,
        metadata: &Metadata,
        tls: Option<&TlsConfig>,
        node: &Address,
    ) -> Result<Self, String> {
        let notls = metadata
            .bool(&["notls"])
            .map_err(|e| e.to_string())?
            .unwrap_or(false);
        let tls = if notls {
            None
        } else {
            Some((ClientTls::new(tls, &[])?, node.clone()))
        };
        let timeout = match metadata.duration(&["timeout"]).map_err(|e| e.to_string())? {
            Some(Some(limit)) if !limit.is_zero() => Some(limit),
            // GOST arms no deadline unless `timeout` is set: the chain's `dialTimeout`
            // bounds the whole route, this exchange included, and names the hop that stalls.
            _ => None,
        };
        let credentials = auth
            .as_ref()
            .map(|a| socks5::encode_user_pass(a.username.as_bytes(), a.password.as_bytes()))
            .transpose()
            .map_err(|e| format!("auth: {e}"))?;
        // GOST's order (§5.1): 00, 02 with credentials, then 80, and 82 with credentials.
        let mut methods = vec![socks5::METHOD_NO_AUTH];
        if credentials.is_some() {
            methods.push(socks5::METHOD_USER_PASS);
        }
        if tls.is_some() {
            methods.push(socks5::METHOD_TLS);
            if credentials.is_some() {
                methods.push(socks5::METHOD_TLS_USER_PASS);
            }
        }
        let greeting = socks5::encode_greeting(&methods).map_err(|e| e.to_string())?;
        Ok(Socks5Connector {
            greeting,
            username: auth.map(|a| a.username),
            credentials,
            timeout,
            tls,
        })
    }

    /// Runs one step of the exchange within the timeout; running out counts as a timeout of the
    /// dial.
    async fn bounded<T>(
        &self,
        step: &str,
        work: impl Future<Output = Result<T, ConnectError>>,
    ) -> Result<T, ConnectError> {
        let Some(limit) = self.timeout else {
            return work.await;
        };
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("SOCKS5 {step} not finished within {limit:?}"),
            ))),
        }
    }
}

/// Sends one message and pushes it out through buffering transports.
async fn send(conn: &mut BoxConn, message: &[u8]) -> Result<(), ConnectError> {
    conn.write_all(message).await?;
    conn.flush().await?;
    Ok(())
}

/// Reads exactly `buf.len()` bytes: never more, so that no tunnel byte is taken for the
/// protocol.
async fn read_exact(conn: &mut BoxConn, buf: &mut [u8], what: &str) -> Result<(), ConnectError> {
    match conn.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ConnectError::Protocol(format!(
            "SOCKS5 node closed the connection instead of sending the {what}"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Parses a message already read in full.
fn parse_complete<T>(
    bytes: &[u8],
    what: &str,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, socks5::Socks5Error>,
) -> Result<T, ConnectError> {
    match parse(bytes) {
        Ok(Some((value, _))) => Ok(value),
        Ok(None) => Err(ConnectError::Protocol(format!(
            "SOCKS5 {what} is incomplete"
        ))),
        Err(e) => Err(ConnectError::Protocol(format!("SOCKS5 {what}: {e}"))),
    }
}

#[async_trait]
impl Connector for Socks5Connector {
    async fn handshake(&self, mut conn: BoxConn) -> Result<BoxConn, ConnectError> {
        self.bounded("handshake", async {
            send(&mut conn, &self.greeting).await?;
            let mut reply = [0; 2];
            read_exact(&mut conn, &mut reply, "method selection").await?;
            let method = parse_complete(&reply, "method selection", socks5::parse_method_reply)?;
            if matches!(method, socks5::METHOD_TLS | socks5::METHOD_TLS_USER_PASS) {
                let Some((tls, node)) = &self.tls else {
                    return Err(ConnectError::Protocol(format!(
                        "SOCKS5 server chose TLS method {method:#04x}, which was not offered (notls)"
                    )));
                };
                conn = Box::new(tls.connect(conn, node).await?);
            }
            match (method, &self.credentials) {
                (socks5::METHOD_NO_AUTH | socks5::METHOD_TLS, _) => {}
                (socks5::METHOD_USER_PASS | socks5::METHOD_TLS_USER_PASS, Some(credentials)) => {
                    send(&mut conn, credentials).await?;
                    read_exact(&mut conn, &mut reply, "authentication status").await?;
                    let accepted =
                        parse_complete(&reply, "authentication status", socks5::parse_user_pass_reply)?;
                    if !accepted {
                        return Err(ConnectError::Refused(format!(
                            "SOCKS5 server rejected the credentials of user {:?}",
                            self.username.as_deref().unwrap_or_default()
                        )));
                    }
                }
                (socks5::METHOD_NO_ACCEPTABLE, _) => {
                    let offered = if self.credentials.is_some() {
                        "no authentication and username/password"
                    } else {
                        "no authentication (configure auth if the node requires credentials)"
                    };
                    return Err(ConnectError::Refused(format!(
                        "SOCKS5 server found no acceptable authentication method among those offered: {offered}"
                    )));
                }
                (other, _) => {
                    return Err(ConnectError::Protocol(format!(
                        "SOCKS5 server chose authentication method {other:#04x}, which was not offered"
                    )));
                }
            }
            Ok(conn)
        })
        .await
    }

    async fn connect(&self, mut conn: BoxConn, target: &Address) -> Result<BoxConn, ConnectError> {
        let request = socks5::encode_request(Command::Connect, target).map_err(|e| {
            ConnectError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("target {target} cannot be sent over SOCKS5: {e}"),
            ))
        })?;
        self.bounded("connect", async {
            send(&mut conn, &request).await?;
            // The reply's length depends on its address, known from its first bytes.
            let mut reply = vec![0; socks5::MESSAGE_PREFIX_LEN];
            read_exact(&mut conn, &mut reply, "reply").await?;
            let len = match socks5::message_len(&reply) {
                Ok(Some(len)) => len,
                Ok(None) => {
                    return Err(ConnectError::Protocol("SOCKS5 reply is incomplete".into()));
                }
                Err(e) => return Err(ConnectError::Protocol(format!("SOCKS5 reply: {e}"))),
            };
            reply.resize(len, 0);
            read_exact(&mut conn, &mut reply[socks5::MESSAGE_PREFIX_LEN..], "reply").await?;
            let reply = parse_complete(&reply, "reply", socks5::parse_reply)?;
            if reply.code != socks5::REPLY_SUCCEEDED {
                let text = format!(
                    "SOCKS5 reply {:#04x} ({})",
                    reply.code,
                    socks5::reply_meaning(reply.code)
                );
                // What the node says of the target reaches the client as the same kind of
                // failure as if gost had dialled it (a refused target stays "refused").
                let kind = match reply.code {
                    socks5::REPLY_CONNECTION_REFUSED => io::ErrorKind::ConnectionRefused,
                    socks5::REPLY_HOST_UNREACHABLE => io::ErrorKind::HostUnreachable,
                    socks5::REPLY_NETWORK_UNREACHABLE => io::ErrorKind::NetworkUnreachable,
                    socks5::REPLY_TTL_EXPIRED => io::ErrorKind::TimedOut,
                    _ => return Err(ConnectError::Refused(text)),
                };
                return Err(ConnectError::Io(io::Error::new(kind, text)));
            }
            Ok(conn)
        })
        .await
    }
}
