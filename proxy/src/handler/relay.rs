//! The `relay` handler: GOST's relay protocol (gost-wire.md §6.4, §6.5), TCP CONNECT only.
//!
//! The OK response is written as soon as the target is dialled (GOST's `nodelay=true`), which
//! works with both modes of GOST's client; GOST's default of holding it back until the target's
//! first bytes would leave clients of server-speaks-first targets waiting for nothing.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Handler, HandlerEnv, run_tunnel, within_handshake_timeout};
use crate::auth::Verdict;
use crate::chain::DialFor;
use crate::codec::relay::{self, Request};
use crate::conn::{BoxConn, Prefixed};

/// Most bytes read per step while the request is incomplete: a typical request (credentials and
/// an address) fits in one, and the buffer only grows up to the request's own length.
const READ_CHUNK: usize = 1024;

/// Why no request was read.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("client closed the connection before sending a whole relay request")]
    Closed,
    #[error("{0}")]
    Malformed(relay::RelayError),
}

/// Reads one request, at most [`relay::MAX_MESSAGE_LEN`] bytes, through `buf`. It never reads
/// past the request (the header says how long it is), so tunnel data a lazy client sent in the
/// same write stays in the socket and the tunnel can still splice. Whatever `buf` holds after
/// the request is tunnel data.
async fn read_request(conn: &mut BoxConn, buf: &mut BytesMut) -> Result<Request, RequestError> {
    loop {
        if let Some((request, used)) = relay::parse_request(buf).map_err(RequestError::Malformed)? {
            let _ = buf.split_to(used);
            return Ok(request);
        }
        // Never past the longest request: FEALEN bounds it, so this always makes progress.
        let want = match relay::message_len(buf).map_err(RequestError::Malformed)? {
            Some(len) => len - buf.len(),
            None => relay::HEADER_LEN - buf.len(),
        };
        let room = want.clamp(1, READ_CHUNK);
        if conn.read_buf(&mut (&mut *buf).limit(room)).await? == 0 {
            return Err(RequestError::Closed);
        }
    }
}

/// Serves GOST relay clients.
pub struct RelayHandler {
    env: Arc<HandlerEnv>,
}

impl RelayHandler {
    /// A handler for the service described by `env`.
    pub fn new(env: Arc<HandlerEnv>) -> Self {
        RelayHandler { env }
    }

    /// Sends a status-only response; false when the client is gone.
    async fn respond(&self, conn: &mut BoxConn, status: u8, client: SocketAddr) -> bool {
        let result = async {
            conn.write_all(&relay::status_response(status)).await?;
            conn.flush().await
        }
        .await;
        if let Err(e) = &result {
            tracing::debug!(
                service = %self.env.service, client = %client, error = %e,
                "relay: cannot send the response"
            );
        }
        result.is_ok()
    }

    /// Checks the request's credentials when the service requires some.
    fn authorized(&self, request: &Request, client: SocketAddr) -> bool {
        let Some(auth) = &self.env.auth else {
            return true;
        };
        let (username, password) = request.user_auth().unwrap_or((b"", b""));
        let verdict = match (std::str::from_utf8(username), std::str::from_utf8(password)) {
            (Ok(username), Ok(password)) => auth.check_from(client.ip(), username, password),
            _ => Verdict::Rejected,
        };
        if !verdict.accepted() {
            let user = String::from_utf8_lossy(username);
            super::auth_failed(
                &self.env,
                client,
                "relay",
                "relay: authentication failed",
                &user,
                verdict,
            );
        }
        verdict.accepted()
    }

    /// Dials the target of a CONNECT and answers it: the client's and the target's
    /// connections and the target, or `None` when the tunnel ends here (answered).
    async fn connect(
        &self,
        mut conn: BoxConn,
        rest: BytesMut,
        request: Request,
        client: SocketAddr,
    ) -> Option<(BoxConn, BoxConn, crate::addr::Address)> {
        let env = &self.env;
        let network = request.network();
        // Unknown codes are TCP to GOST; the named non-TCP networks are not served here.
        if matches!(
            network,
            relay::NETWORK_UDP | relay::NETWORK_IP | relay::NETWORK_UNIX | relay::NETWORK_SERIAL
        ) {
            crate::metrics::handler_error(&env.service, client);
            tracing::warn!(
                service = %env.service, client = %client, network = relay::network_name(network),
                "relay: only TCP tunnels are supported (UDP, IP, unix and serial are not); \
                 answering Bad Request"
            );
            self.respond(&mut conn, relay::STATUS_BAD_REQUEST, client)
                .await;
            return None;
        }
        let target = match request.addr().map(relay::AddrFeature::to_address) {
            Some(Ok(target)) => target,
            Some(Err(e)) => {
                // GOST tries to dial whatever name it is given and answers a failure with
                // Network Unreachable; a name no resolver accepts fails the same way here,
                // without asking one.
                crate::metrics::handler_error(&env.service, client);
                tracing::warn!(
                    service = %env.service, client = %client, error = %e,
                    "relay: connect failed: the target is not a dialable address"
                );
                self.respond(&mut conn, relay::STATUS_NETWORK_UNREACHABLE, client)
                    .await;
                return None;
            }
            None => {
                tracing::debug!(
                    service = %env.service, client = %client,
                    "relay: CONNECT without a target address"
                );
                self.respond(&mut conn, relay::STATUS_BAD_REQUEST, client)
                    .await;
                return None;
            }
        };
        // The user the client authenticated as, for a `hash` hop (GOST's client ID).
        let user = (env.auth.is_some())
            .then(|| request.user_auth())
            .flatten()
            .and_then(|(user, _)| std::str::from_utf8(user).ok());
        let dial_for = DialFor {
            client: client.ip(),
            user,
        };
        let upstream = match env.router.dial(&target, dial_for).await {
            Ok(upstream) => upstream,
            Err(e) => {
                crate::metrics::handler_error(&env.service, client);
                tracing::warn!(
                    service = %env.service, client = %client, target = %target, error = %e,
                    "relay: connect failed"
                );
                self.respond(&mut conn, relay::STATUS_NETWORK_UNREACHABLE, client)
                    .await;
                return None;
            }
        };
        if !self.respond(&mut conn, relay::STATUS_OK, client).await {
            return None;
        }
        // A lazy GOST client sends its first data in the same write as the request; any of it
        // already read must reach the target first.
        Some((Prefixed::boxed(rest.freeze(), conn), upstream, target))
    }
}

#[async_trait]
impl Handler for RelayHandler {
    async fn handle(&self, mut conn: BoxConn, client: SocketAddr) {
        // Grown as the request arrives: a client that sends its request with its first data
        // (GOST's default) may keep the connection open a long time before it does.
        let mut buf = BytesMut::new();
        let reading = read_request(&mut conn, &mut buf);
        // A bad version or malformed request closes the connection without a response, as in
        // GOST (its parser fails before the handler could answer).
        let Some(request) = within_handshake_timeout(&self.env, "relay", client, reading).await
        else {
            return;
        };
        if !self.authorized(&request, client) {
            self.respond(&mut conn, relay::STATUS_UNAUTHORIZED, client)
                .await;
            return;
        }
        match request.cmd {
            0 | relay::CMD_CONNECT => {
                // The dial and the answer run boxed and are freed before the tunnel starts:
                // a task keeps room for its largest state for as long as it lives.
                let connected = Box::pin(self.connect(conn, buf, request, client)).await;
                if let Some((conn, upstream, target)) = connected {
                    run_tunnel(&self.env, "relay", client, &target, conn, upstream).await;
                }
            }
            relay::CMD_BIND => {
                tracing::debug!(
                    service = %self.env.service, client = %client,
                    "relay: BIND (remote port forwarding) is not supported; answering Forbidden"
                );
                self.respond(&mut conn, relay::STATUS_FORBIDDEN, client)
                    .await;
            }
            cmd => {
                tracing::debug!(
                    service = %self.env.service, client = %client, cmd,
                    "relay: unsupported command; answering Bad Request"
                );
                self.respond(&mut conn, relay::STATUS_BAD_REQUEST, client)
                    .await;
            }
        }
    }
}
