//! The `http2` connector (gost-wire.md §8.3): one `CONNECT target` per tunnel on the HTTP/2
//! connection the `http2` dialer set up, with `Proxy-Authorization` and the `header` map.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gost_api::{AuthConfig, Metadata};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request};

use super::{ConnectError, Connector};
use crate::addr::Address;
use crate::conn::BoxConn;
use crate::dialer::h2::header_map;
use crate::h2pool::{RequestError, take_handed_off};

/// Asks an HTTP/2 proxy for tunnels.
pub struct Http2Connector {
    authorization: Option<HeaderValue>,
    headers: HeaderMap,
    /// Metadata `timeout`; by default none of its own, as GOST: the chain's `dialTimeout`
    /// bounds the whole route, this answer included.
    timeout: Option<Duration>,
}

impl Http2Connector {
    /// A connector sending `auth` (if any) and metadata `header`; metadata `timeout` bounds
    /// the exchange.
    pub fn new(auth: Option<AuthConfig>, metadata: &Metadata) -> Result<Self, String> {
        let timeout = metadata
            .duration(&["timeout"])
            .map_err(|e| e.to_string())?
            .flatten();
        let authorization = auth
            .map(|a| {
                let token = STANDARD.encode(format!("{}:{}", a.username, a.password));
                HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| "auth: credentials cannot be sent as a header".to_string())
            })
            .transpose()?;
        Ok(Http2Connector {
            authorization,
            headers: header_map(metadata)?,
            timeout,
        })
    }
}

#[async_trait]
impl Connector for Http2Connector {
    async fn connect(&self, mut conn: BoxConn, target: &Address) -> Result<BoxConn, ConnectError> {
        let lease = take_handed_off(&mut conn).await?;
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .body(())
            .map_err(|e| ConnectError::Protocol(format!("CONNECT {target}: {e}")))?;
        let headers = req.headers_mut();
        headers.extend(self.headers.clone());
        if let Some(value) = &self.authorization {
            headers.insert(header::PROXY_AUTHORIZATION, value.clone());
        }
        let make = || {
            let mut copy = Request::new(());
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.headers_mut() = req.headers().clone();
            copy
        };
        match lease.open_or_again(make, self.timeout).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(RequestError::Status(status)) => Err(ConnectError::Refused(format!(
                "http2 proxy answered CONNECT {target} with {status}"
            ))),
            Err(RequestError::Io(e)) => Err(ConnectError::Io(e)),
        }
    }
}
