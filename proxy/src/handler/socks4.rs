//! The `socks4` handler: SOCKS4 and SOCKS4a CONNECT, as GOST's `auto` handler serves them.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;

use super::socks5::{HANDSHAKE_BUFFER_LEN, read_message, send};
use super::{Handler, HandlerEnv, run_tunnel, within_handshake_timeout};
use crate::auth::Verdict;
use crate::chain::DialFor;
use crate::codec::socks4;
use crate::conn::{BoxConn, Prefixed};

/// Serves SOCKS4 and SOCKS4a clients.
pub struct Socks4Handler {
    env: Arc<HandlerEnv>,
}

impl Socks4Handler {
    /// A handler for the service described by `env`.
    pub fn new(env: Arc<HandlerEnv>) -> Self {
        Socks4Handler { env }
    }

    async fn reply(&self, conn: &mut BoxConn, code: u8, client: SocketAddr) -> bool {
        match send(conn, &socks4::encode_reply(code)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(
                    service = %self.env.service, client = %client, error = %e,
                    "socks4: cannot send the reply"
                );
                false
            }
        }
    }
}

#[async_trait]
impl Handler for Socks4Handler {
    async fn handle(&self, mut conn: BoxConn, client: SocketAddr) {
        let mut buf = BytesMut::with_capacity(HANDSHAKE_BUFFER_LEN);
        let read = read_message(&mut conn, &mut buf, socks4::parse_request);
        let Some(request) = within_handshake_timeout(&self.env, "socks4", client, read).await
        else {
            return;
        };
        if let Some(auth) = &self.env.auth {
            // SOCKS4 has no password: the user id must name a user whose configured password is
            // empty, as in GOST.
            let verdict = match std::str::from_utf8(&request.user_id) {
                Ok(user) => auth.check_from(client.ip(), user, ""),
                Err(_) => Verdict::Rejected,
            };
            if !verdict.accepted() {
                let user = String::from_utf8_lossy(&request.user_id);
                super::auth_failed(
                    &self.env,
                    client,
                    "socks4",
                    "socks4: authentication failed",
                    &user,
                    verdict,
                );
                self.reply(&mut conn, socks4::REPLY_BAD_USER_ID, client)
                    .await;
                return;
            }
        }
        let target = request.target;
        if request.command != socks4::Command::Connect {
            tracing::debug!(
                service = %self.env.service, client = %client, command = ?request.command,
                target = %target, "socks4: command not supported"
            );
            self.reply(&mut conn, socks4::REPLY_FAILED, client).await;
            return;
        }
        // The user id the client authenticated with, for a `hash` hop (GOST's client ID).
        let user = (self.env.auth.is_some())
            .then(|| std::str::from_utf8(&request.user_id).ok())
            .flatten();
        let dial_for = DialFor {
            client: client.ip(),
            user,
        };
        let upstream = match self.env.router.dial(&target, dial_for).await {
            Ok(upstream) => upstream,
            Err(e) => {
                crate::metrics::handler_error(&self.env.service, client);
                tracing::warn!(
                    service = %self.env.service, client = %client, target = %target, error = %e,
                    "socks4: connect failed"
                );
                self.reply(&mut conn, socks4::REPLY_FAILED, client).await;
                return;
            }
        };
        if !self.reply(&mut conn, socks4::REPLY_GRANTED, client).await {
            return;
        }
        let conn = Prefixed::boxed(buf.freeze(), conn);
        run_tunnel(&self.env, "socks4", client, &target, conn, upstream).await;
    }
}
