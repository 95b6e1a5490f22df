//! Handlers: the proxy protocols a service speaks to its clients.

pub mod auto;
pub mod http;
pub mod http2;
pub mod relay;
pub mod socks4;
pub mod socks5;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gost_api::Metadata;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::chain::Router;
use crate::conn::BoxConn;
use crate::pipe::{self, PipeError};

/// How long a client may take to send its request (GOST's `readTimeout` default), so that
/// slow or silent clients cannot hold connections forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves one accepted connection.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Runs the protocol on `conn` until the client is done.
    async fn handle(&self, conn: BoxConn, client: SocketAddr);
}

/// What every handler of a service shares: who may use it, how it reaches targets, its options.
pub struct HandlerEnv {
    /// The service name, for logs.
    pub service: Arc<str>,
    /// Required credentials, if any.
    pub auth: Option<Authenticator>,
    /// How targets are dialled.
    pub router: Router,
    /// The handler's metadata.
    pub metadata: Metadata,
    /// Time allowed for the client's request.
    pub handshake_timeout: Duration,
    /// Idle timeout of established tunnels (`idleTimeout`), none by default as in GOST.
    pub idle_timeout: Option<Duration>,
    /// Tunnels of this service, so that shutdown can wait for them.
    pub tunnels: TaskTracker,
    /// The handler's own TLS, for GOST's SOCKS5 methods 0x80/0x82; `None` with `notls`.
    pub tls: Option<crate::tls::ServerTls>,
}

/// Whether a proxy request's `Proxy-Authorization` satisfies the service's credentials (always,
/// when it has none). A refusal is logged with the user name, never the password.
pub(crate) fn proxy_auth_accepted(
    env: &HandlerEnv,
    headers: &::http::HeaderMap,
    client: SocketAddr,
    protocol: &'static str,
) -> bool {
    let Some(auth) = &env.auth else {
        return true;
    };
    let credentials = headers
        .get(::http::header::PROXY_AUTHORIZATION)
        .and_then(|v| crate::codec::http::basic_credentials(v.as_bytes()));
    let accepted = credentials
        .as_ref()
        .is_some_and(|(user, pass)| auth.check_from(client.ip(), user, pass));
    if !accepted {
        let user = credentials.map(|(user, _)| user);
        crate::metrics::auth_failed(&env.service);
        crate::metrics::handler_error(&env.service, client);
        tracing::warn!(
            service = %env.service, protocol, client = %client,
            user = user.as_deref().unwrap_or(""), "proxy authentication failed"
        );
    }
    accepted
}

/// Runs a client's handshake within the service's handshake timeout. A failed or late
/// handshake is logged (at debug: it is the client's problem, and scanners cause many) and
/// yields `None`.
pub async fn within_handshake_timeout<T, E: std::fmt::Display>(
    env: &HandlerEnv,
    protocol: &'static str,
    client: SocketAddr,
    handshake: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(env.handshake_timeout, handshake).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            crate::metrics::handler_error(&env.service, client);
            tracing::debug!(service = %env.service, protocol, client = %client, error = %e, "handshake failed");
            None
        }
        Err(_) => {
            crate::metrics::handler_error(&env.service, client);
            tracing::debug!(
                service = %env.service, protocol, client = %client,
                timeout = ?env.handshake_timeout, "handshake timed out"
            );
            None
        }
    }
}

/// Relays an established tunnel and writes its one summary log line.
pub async fn run_tunnel(
    env: &HandlerEnv,
    protocol: &'static str,
    client_addr: SocketAddr,
    target: &crate::addr::Address,
    mut client: BoxConn,
    mut upstream: BoxConn,
) {
    let started = std::time::Instant::now();
    let result = pipe::relay(&mut client, &mut upstream, env.idle_timeout).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let moved = match &result {
        Ok(moved) => *moved,
        Err(e) => e.transferred(),
    };
    crate::metrics::transferred(&env.service, client_addr, moved.up, moved.down);
    match result {
        Ok(moved) => tracing::info!(
            service = %env.service, protocol, client = %client_addr, target = %target,
            bytes_up = moved.up, bytes_down = moved.down, duration_ms = elapsed_ms,
            outcome = "closed", "tunnel"
        ),
        Err(e) => {
            let moved = e.transferred();
            let outcome = match e {
                PipeError::Idle(..) => "idle timeout",
                PipeError::Io { .. } => "error",
            };
            tracing::info!(
                service = %env.service, protocol, client = %client_addr, target = %target,
                bytes_up = moved.up, bytes_down = moved.down, duration_ms = elapsed_ms,
                outcome, error = %e, "tunnel"
            );
        }
    }
}
