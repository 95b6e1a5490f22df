//! The plain HTTP tunnel (gost-wire.md §8.6), shared by `pht`/`phts` (HTTP/1.1 or HTTP/2 over
//! TCP or TLS) and `h3` (HTTP/3 over QUIC, §8.7).
//!
//! The protocol is independent of the HTTP version, so it lives here once:
//! - [`server`]: the sessions behind the authorize, push and pull endpoints, served to any
//!   HTTP server as `http::Request` → `http::Response`;
//! - [`client`]: one tunnel as a byte stream, made of HTTP requests sent through a
//!   [`RoundTrip`] that each transport provides.

pub mod client;
pub mod server;

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use gost_api::Metadata;
use http_body_util::combinators::BoxBody;

/// A streaming HTTP body, in both directions (pull responses stream for the whole tunnel).
pub type Body = BoxBody<Bytes, io::Error>;

/// Most an HTTP/1.1 connection's read buffer may hold (hyper's `max_buf_size`), on both
/// sides. It bounds a request or response head: PHT messages carry a path, a token and a few
/// headers, and 64 KiB leaves room for long custom headers (hyper's minimum is 8 KiB). It also
/// bounds what a connection keeps after traffic: hyper's buffer grows while reads fill it (to
/// about 400 KiB by default) and keeps its size for the connection's life, and a pull
/// connection lives as long as its tunnel. 64 KiB still takes a relay buffer's worth per read.
pub const MAX_READ_BUFFER: usize = 64 * 1024;

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

/// A request extension: the request must go on a connection opened at or after this instant,
/// never on an older kept-alive one. A tunnel whose session was refused by a stopping server
/// on a kept-alive connection sets it ([`client`]): connections opened before then may lead
/// to that server, which takes no new session, while a new connection reaches whatever
/// listens on the address now. `h3`, whose requests share one QUIC connection, dials a new one
/// from a new UDP port (a new flow for a balancer in front) and leaves the old one to the
/// tunnels already on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenedAfter(pub tokio::time::Instant);

/// A response extension set by transports whose requests share one connection that no header
/// can close (HTTP/3, where `Connection` is not allowed): there a `503` to authorize is taken
/// as a stopping server's refusal, as `503` with `Connection: close` is over HTTP/1.1, and asked
/// again on a new connection ([`OpenedAfter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shared;

/// A new session token in GOST's format: 20 characters of `[0-9a-v]` (an xid: 12 bytes in
/// base32hex). The first four bytes are the time, as in an xid; the other eight come from the
/// standard library's randomly keyed hasher over a counter, so that tokens cannot be guessed
/// from one another (a token is all a push needs to inject data into a tunnel).
pub fn new_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let mut raw = [0u8; 12];
    raw[..4].copy_from_slice(&(secs as u32).to_be_bytes());
    raw[4..].copy_from_slice(&hasher.finish().to_be_bytes());
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    // 96 bits as 20 five-bit digits, the last one padded with zero bits.
    let bits = u128::from_be_bytes({
        let mut wide = [0u8; 16];
        wide[..12].copy_from_slice(&raw);
        wide
    });
    (0..20)
        .map(|i| ALPHABET[((bits >> (123 - 5 * i)) & 31) as usize] as char)
        .collect()
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

    #[test]
    fn tokens_look_like_xids_and_differ() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 20);
        assert!(
            a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'v')),
            "{a}"
        );
        assert_ne!(a, b);
    }
}
