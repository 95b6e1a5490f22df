//! The `http` connector: HTTP CONNECT to an upstream proxy.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use gost_api::{AuthConfig, Metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ConnectError, Connector};
use crate::addr::Address;
use crate::codec::http::{MAX_RESPONSE_HEAD, connect_request, parse_response_head};
use crate::conn::{BoxConn, Prefixed};

/// Asks an HTTP proxy for a tunnel with `CONNECT`.
pub struct HttpConnector {
    auth: Option<AuthConfig>,
    /// Metadata `timeout`; by default none of its own, as GOST: the chain's `dialTimeout`
    /// bounds the whole route, this exchange included.
    timeout: Option<Duration>,
    // `header` metadata, sent with every CONNECT (GOST's).
    headers: http::HeaderMap,
}

impl HttpConnector {
    /// A connector sending `auth` (if any) and metadata `header`; metadata `timeout` bounds
    /// the exchange.
    pub fn new(auth: Option<AuthConfig>, metadata: &Metadata) -> Result<Self, String> {
        let timeout = metadata
            .duration(&["timeout"])
            .map_err(|e| e.to_string())?
            .flatten()
            .filter(|t| !t.is_zero());
        let headers = crate::dialer::h2::header_map(metadata)?;
        Ok(HttpConnector {
            auth,
            timeout,
            headers,
        })
    }
}

#[async_trait]
impl Connector for HttpConnector {
    async fn connect(&self, mut conn: BoxConn, target: &Address) -> Result<BoxConn, ConnectError> {
        let exchange = async {
            let credentials = self
                .auth
                .as_ref()
                .map(|a| (a.username.as_str(), a.password.as_str()));
            conn.write_all(&connect_request(target, credentials, &self.headers))
                .await?;
            conn.flush().await?;
            let mut buf = BytesMut::with_capacity(512);
            loop {
                if conn.read_buf(&mut buf).await? == 0 {
                    return Err(ConnectError::Protocol(
                        "proxy closed the connection before answering CONNECT".into(),
                    ));
                }
                let head =
                    parse_response_head(&buf).map_err(|e| ConnectError::Protocol(e.to_string()))?;
                if let Some(head) = head {
                    if !(200..300).contains(&head.status) {
                        return Err(ConnectError::Refused(format!(
                            "proxy answered CONNECT with {} {}",
                            head.status, head.reason
                        )));
                    }
                    // Tunnel bytes that arrived with the head are kept, unlike GOST's client.
                    let rest: Bytes = buf.split_off(head.len).freeze();
                    return Ok(rest);
                }
                if buf.len() >= MAX_RESPONSE_HEAD {
                    return Err(ConnectError::Protocol(
                        "CONNECT response head too large".into(),
                    ));
                }
            }
        };
        let Some(limit) = self.timeout else {
            return exchange.await.map(|rest| Prefixed::boxed(rest, conn));
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(rest)) => Ok(Prefixed::boxed(rest, conn)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer to CONNECT within {limit:?}"),
            ))),
        }
    }
}
