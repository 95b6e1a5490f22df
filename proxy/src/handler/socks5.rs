//! The `socks5` handler: RFC 1928 with RFC 1929 username/password authentication.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Handler, HandlerEnv, run_tunnel, within_handshake_timeout};
use crate::addr::Address;
use crate::auth::Verdict;
use crate::chain::{DialErrorKind, DialFor};
use crate::codec::{socks4, socks5};
use crate::conn::{BoxConn, Prefixed};

/// Most handshake bytes a SOCKS handler buffers. A parser asks for more only while its message
/// is incomplete, so the buffer never has to hold more than the longest single message (an RFC
/// 1929 request, or a SOCKS4a request with both strings at their limit); a client cannot make
/// the server buffer more, whatever it sends.
pub(super) const HANDSHAKE_BUFFER_LEN: usize = 600;

const _: () = assert!(
    HANDSHAKE_BUFFER_LEN >= socks5::MAX_MESSAGE_LEN
        && HANDSHAKE_BUFFER_LEN >= socks5::MAX_GREETING_LEN
        && HANDSHAKE_BUFFER_LEN >= socks5::MAX_REQUEST_LEN
        && HANDSHAKE_BUFFER_LEN >= socks4::MAX_REQUEST_LEN
);

/// Why a SOCKS handshake ended without a request.
#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError<E> {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The client closed the connection.
    #[error("client closed the connection during the handshake")]
    Closed,
    /// A parser wanted more than [`HANDSHAKE_BUFFER_LEN`] bytes, which the codecs' bounds rule
    /// out; kept so that a codec bug cannot turn into unbounded buffering.
    #[error("handshake message longer than {HANDSHAKE_BUFFER_LEN} bytes")]
    Oversized,
    /// The client sent something that is not the protocol.
    #[error("{0}")]
    Malformed(E),
}

/// Reads from `conn` into `buf` until `parse` accepts a whole message, and removes that message
/// from `buf`; bytes after it stay in `buf`.
pub(super) async fn read_message<T, E>(
    conn: &mut BoxConn,
    buf: &mut BytesMut,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, E>,
) -> Result<T, HandshakeError<E>> {
    loop {
        if let Some((message, used)) = parse(buf).map_err(HandshakeError::Malformed)? {
            buf.advance(used);
            return Ok(message);
        }
        let room = HANDSHAKE_BUFFER_LEN.saturating_sub(buf.len());
        if room == 0 {
            return Err(HandshakeError::Oversized);
        }
        if conn.read_buf(&mut (&mut *buf).limit(room)).await? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
}

/// Writes a handshake message and pushes it out: transports such as TLS or WebSocket may
/// otherwise hold it back while the client waits for it.
pub(super) async fn send(conn: &mut BoxConn, message: &[u8]) -> io::Result<()> {
    conn.write_all(message).await?;
    conn.flush().await
}

/// Serves SOCKS5 clients.
pub struct Socks5Handler {
    env: Arc<HandlerEnv>,
}

impl Socks5Handler {
    /// A handler for the service described by `env`.
    pub fn new(env: Arc<HandlerEnv>) -> Self {
        Socks5Handler { env }
    }

    /// Method negotiation, authentication and the request, with the user the client
    /// authenticated as. `Ok(None)` when the client was turned away (and told so).
    async fn negotiate(
        &self,
        conn: &mut BoxConn,
        buf: &mut BytesMut,
        client: SocketAddr,
    ) -> Result<Option<(socks5::Request, Option<String>)>, HandshakeError<socks5::Socks5Error>>
    {
        let mut user = None;
        let methods = read_message(conn, buf, socks5::parse_greeting).await?;
        // The TLS methods are offered only with a certificate in hand: when it cannot be had
        // (its error is logged once), clients get the plain methods, which every GOST client
        // offers too, instead of a TLS method and then a reset.
        let offers_tls = methods
            .iter()
            .any(|m| matches!(*m, socks5::METHOD_TLS | socks5::METHOD_TLS_USER_PASS));
        let tls = match &self.env.tls {
            Some(lazy) if offers_tls => lazy.get().ok(),
            _ => None,
        };
        let method = socks5::select_method(&methods, self.env.auth.is_some(), tls.is_some());
        send(conn, &socks5::encode_method_reply(method)).await?;
        if let (socks5::METHOD_TLS | socks5::METHOD_TLS_USER_PASS, Some(tls)) = (method, tls) {
            // GOST's TLS methods: everything after the method reply, the handshake included,
            // runs inside TLS. Bytes the client already sent belong to the TLS stream.
            let raw = std::mem::replace(conn, Box::new(tokio::io::duplex(1).0));
            let raw = Prefixed::boxed(buf.split().freeze(), raw);
            *conn = Box::new(tls.accept(raw, client).await?);
        }
        match (method, &self.env.auth) {
            (socks5::METHOD_NO_ACCEPTABLE, _) => {
                tracing::debug!(
                    service = %self.env.service, client = %client, offered = ?methods,
                    "socks5: no acceptable authentication method"
                );
                return Ok(None);
            }
            (socks5::METHOD_USER_PASS | socks5::METHOD_TLS_USER_PASS, Some(auth)) => {
                let creds = read_message(conn, buf, socks5::parse_user_pass).await?;
                let verdict = match (
                    std::str::from_utf8(&creds.username),
                    std::str::from_utf8(&creds.password),
                ) {
                    (Ok(username), Ok(password)) => {
                        auth.check_from(client.ip(), username, password)
                    }
                    _ => Verdict::Rejected,
                };
                send(conn, &socks5::encode_user_pass_reply(verdict.accepted())).await?;
                if !verdict.accepted() {
                    let user = String::from_utf8_lossy(&creds.username);
                    super::auth_failed(
                        &self.env,
                        client,
                        "socks5",
                        "socks5: authentication failed",
                        &user,
                        verdict,
                    );
                    return Ok(None);
                }
                user = String::from_utf8(creds.username.to_vec()).ok();
            }
            _ => {}
        }
        let request = read_message(conn, buf, socks5::parse_request).await?;
        Ok(Some((request, user)))
    }

    async fn reply(&self, conn: &mut BoxConn, code: u8, client: SocketAddr) -> bool {
        match send(conn, &socks5::encode_reply(code, None)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(
                    service = %self.env.service, client = %client, error = %e,
                    "socks5: cannot send the reply"
                );
                false
            }
        }
    }

    /// Answers a CONNECT whose target `upstream` reached, and runs the tunnel. The caller
    /// dials, so that what only the dial needs (the user, a failure) takes no room in this
    /// future, which lasts as long as the tunnel (an async fn keeps its arguments to the end).
    async fn connect(
        &self,
        mut conn: BoxConn,
        buf: BytesMut,
        client: SocketAddr,
        target: Address,
        upstream: BoxConn,
    ) {
        // The upstream's local address would be a truer BND, but a tunnelled stream has none
        // to give, and clients of CONNECT ignore it.
        if !self.reply(&mut conn, socks5::REPLY_SUCCEEDED, client).await {
            return;
        }
        let conn = Prefixed::boxed(buf.freeze(), conn);
        run_tunnel(&self.env, "socks5", client, &target, conn, upstream).await;
    }

    /// Tells the client and the log that `target` could not be reached.
    async fn dial_failed(
        &self,
        conn: &mut BoxConn,
        client: SocketAddr,
        target: &Address,
        e: crate::chain::DialError,
    ) {
        crate::metrics::handler_error(&self.env.service, client);
        tracing::warn!(
            service = %self.env.service, client = %client, target = %target, error = %e,
            "socks5: connect failed"
        );
        self.reply(conn, reply_code(e.kind), client).await;
    }
}

/// The reply telling the client why its target could not be reached. GOST answers 0x03 for
/// every failure; naming the failure helps the user, and any non-zero code fails a GOST
/// connector all the same.
fn reply_code(kind: DialErrorKind) -> u8 {
    match kind {
        DialErrorKind::Refused => socks5::REPLY_CONNECTION_REFUSED,
        DialErrorKind::Unreachable | DialErrorKind::TimedOut => socks5::REPLY_HOST_UNREACHABLE,
        DialErrorKind::Rejected | DialErrorKind::Protocol => socks5::REPLY_GENERAL_FAILURE,
    }
}

/// The reply to a command other than CONNECT. BIND, UDP ASSOCIATE and GOST's extensions for
/// them (0xF2 multiplexed BIND, 0xF3 UDP over the TCP connection) are commands GOST knows and
/// refuses with "not allowed" unless its `bind`/`udp` options enable them, which gost-rs does
/// not implement; GOST's clients and others tell the two answers apart. Anything else is an
/// unknown command.
fn refusal_code(command: socks5::Command) -> u8 {
    match command {
        socks5::Command::Bind
        | socks5::Command::UdpAssociate
        | socks5::Command::Other(socks5::CMD_MUX_BIND | socks5::CMD_UDP_TUN) => {
            socks5::REPLY_NOT_ALLOWED
        }
        _ => socks5::REPLY_COMMAND_NOT_SUPPORTED,
    }
}

#[async_trait]
impl Handler for Socks5Handler {
    async fn handle(&self, mut conn: BoxConn, client: SocketAddr) {
        let mut buf = BytesMut::with_capacity(HANDSHAKE_BUFFER_LEN);
        // Boxed, so that the handshake's state (TLS included) is freed when it ends rather
        // than sized into the task for the tunnel's life.
        let negotiation = Box::pin(self.negotiate(&mut conn, &mut buf, client));
        let Some(Some((request, user))) =
            within_handshake_timeout(&self.env, "socks5", client, negotiation).await
        else {
            return;
        };
        match request.command {
            socks5::Command::Connect => {
                let dial_for = DialFor {
                    client: client.ip(),
                    user: user.as_deref(),
                };
                let dialed = self.env.router.dial(&request.target, dial_for).await;
                drop(user);
                let upstream = match dialed {
                    Ok(upstream) => upstream,
                    Err(e) => {
                        let failed = self.dial_failed(&mut conn, client, &request.target, e);
                        return Box::pin(failed).await;
                    }
                };
                self.connect(conn, buf, client, request.target, upstream)
                    .await
            }
            command => {
                let code = refusal_code(command);
                tracing::debug!(
                    service = %self.env.service, client = %client, ?command,
                    target = %request.target, reply = socks5::reply_meaning(code),
                    "socks5: command refused"
                );
                self.reply(&mut conn, code, client).await;
            }
        }
    }
}
