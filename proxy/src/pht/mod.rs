//! The plain HTTP tunnel (gost-wire.md §8.6), shared by `pht`/`phts` (HTTP/1.1 or HTTP/2 over
//! TCP or TLS) and `h3` (HTTP/3 over QUIC, §8.7).
//!
//! The protocol is independent of the HTTP version, so it lives here once:
//! - [`server`]: the sessions behind the authorize, push and pull endpoints, served to any
//!   HTTP server as `http::Request` → `http::Response`;
//! - [`client`]: one tunnel as a byte stream, made of HTTP requests sent through a
//!   [`RoundTrip`] that each transport provides.

use std::io;

use async_trait::async_trait;
use bytes::Bytes;
use gost_api::Metadata;
use http_body_util::combinators::BoxBody;

/// A streaming HTTP body, in both directions (pull responses stream for the whole tunnel).
pub type Body = BoxBody<Bytes, io::Error>;

/// GOST's endpoint paths.
pub const DEFAULT_AUTHORIZE_PATH: &str = "/authorize";
/// See [`DEFAULT_AUTHORIZE_PATH`].
pub const DEFAULT_PUSH_PATH: &str = "/push";
/// See [`DEFAULT_AUTHORIZE_PATH`].
pub const DEFAULT_PULL_PATH: &str = "/pull";

/// The three endpoint paths of one listener or node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// Where a client obtains a token.
    pub authorize: String,
    /// Where a client posts its data, one base64 line per request.
    pub push: String,
    /// Where a client streams the data for it.
    pub pull: String,
}

impl Paths {
    /// The paths from listener or dialer metadata (`authorizePath`, `pushPath`, `pullPath`,
    /// each also with a `pht.` prefix). As in GOST, a path that does not start with `/` is
    /// replaced by the default.
    pub fn from_metadata(md: &Metadata) -> Self {
        let path = |key: &str, default: &str| {
            md.string(&[key, &format!("pht.{key}")])
                .filter(|p| p.starts_with('/'))
                .unwrap_or_else(|| default.to_string())
        };
        Paths {
            authorize: path("authorizePath", DEFAULT_AUTHORIZE_PATH),
            push: path("pushPath", DEFAULT_PUSH_PATH),
            pull: path("pullPath", DEFAULT_PULL_PATH),
        }
    }
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            authorize: DEFAULT_AUTHORIZE_PATH.to_string(),
            push: DEFAULT_PUSH_PATH.to_string(),
            pull: DEFAULT_PULL_PATH.to_string(),
        }
    }
}

/// Sends one HTTP request to a node and returns the response with its body still streaming.
/// `pht`/`phts` implement it with a pooled HTTP/1.1 (or HTTP/2 over TLS) client, `h3` with
/// an HTTP/3 connection. Requests of one tunnel may run concurrently (a pull stays open while
/// pushes go out), so an implementation must not serialise them on one connection.
#[async_trait]
pub trait RoundTrip: Send + Sync + 'static {
    /// The response head arrives when this returns; its body streams afterwards.
    async fn round_trip(&self, req: http::Request<Bytes>) -> io::Result<http::Response<Body>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_gost_rules() {
        let mut md = Metadata::default();
        md.insert_str("authorizePath", "/a");
        md.insert_str("pht.pushPath", "/p");
        md.insert_str("pullPath", "relative");
        let paths = Paths::from_metadata(&md);
        assert_eq!(paths.authorize, "/a");
        assert_eq!(paths.push, "/p");
        assert_eq!(paths.pull, DEFAULT_PULL_PATH);
        assert_eq!(Paths::from_metadata(&Metadata::default()), Paths::default());
    }
}
