//! HTTP proxy heads: what the `http` handler decides from a request head and what the `http`
//! connector writes and reads. Pure functions over bytes and header values, no I/O.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::addr::{AddrError, Address};

/// Largest proxy response head the connector accepts; a proxy's CONNECT answer is a few
/// hundred bytes, so anything bigger is not a proxy talking.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Most headers a response head may have.
const MAX_RESPONSE_HEADERS: usize = 64;

/// Why a request head cannot be proxied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `https://` in absolute form, HTTP/2's preface, or another scheme a plain proxy cannot
    /// forward.
    #[error("unsupported scheme {0:?}: only http:// can be forwarded (use CONNECT for TLS)")]
    Scheme(String),
    /// No target: CONNECT without an authority, or an origin-form request without `Host`.
    #[error("request names no target host")]
    NoTarget,
    /// The target is not a valid address.
    #[error(transparent)]
    Address(#[from] AddrError),
}

/// Where a proxied request goes.
///
/// `method` is the request method, `authority` the URI's authority (CONNECT's
/// `host:port`, or the host of an absolute-form URI), `scheme` the URI's scheme if any, and
/// `host_header` the `Host` header. Ports default to 80 as in GOST (`x/handler/http`).
pub fn proxy_target(
    method: &str,
    scheme: Option<&str>,
    authority: Option<&str>,
    host_header: Option<&str>,
) -> Result<Address, RequestError> {
    if method == "PRI" {
        return Err(RequestError::Scheme("h2 preface".into()));
    }
    if method != "CONNECT"
        && let Some(scheme) = scheme
        && !scheme.eq_ignore_ascii_case("http")
    {
        return Err(RequestError::Scheme(scheme.to_string()));
    }
    let host_port = authority
        .filter(|a| !a.is_empty())
        .or(host_header)
        .filter(|h| !h.is_empty())
        .ok_or(RequestError::NoTarget)?;
    // Userinfo in an authority is legal syntax but never meant for the target.
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    with_default_port(host_port, 80)
}

/// Parses `host[:port]`, adding `default_port` when there is none.
pub fn with_default_port(host_port: &str, default_port: u16) -> Result<Address, RequestError> {
    let has_port = match host_port.rsplit_once(':') {
        Some((host, _)) if host.starts_with('[') => host.ends_with(']'),
        Some((host, _)) => !host.contains(':'),
        None => false,
    };
    if has_port {
        Ok(Address::parse(host_port)?)
    } else {
        Ok(Address::from_host(host_port, default_port)?)
    }
}

/// The host a GOST v2 client hid in a `Gost-Target` or `X-Gost-Target` header: unpadded
/// URL-safe base64 of the name's CRC-32 (IEEE, big-endian) followed by the name, itself in
/// unpadded URL-safe base64. `None` when the value is not such an encoding or the checksum
/// does not match, and GOST then ignores the header.
pub fn decode_gost_target(value: &[u8]) -> Option<String> {
    let outer = URL_SAFE_NO_PAD.decode(value.trim_ascii()).ok()?;
    let (crc, encoded) = outer.split_first_chunk::<4>()?;
    let name = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    if crc32fast::hash(&name) != u32::from_be_bytes(*crc) {
        return None;
    }
    String::from_utf8(name).ok().filter(|name| !name.is_empty())
}

/// The target host a request hides in its headers (§4.1): `X-Gost-Target` wins over
/// `Gost-Target`, and a value that does not decode is ignored.
pub fn hidden_target(headers: &http::HeaderMap) -> Option<String> {
    ["x-gost-target", "gost-target"]
        .iter()
        .find_map(|name| decode_gost_target(headers.get(*name)?.as_bytes()))
}

/// The user name and password of a `Proxy-Authorization: Basic ...` value. As in GOST the
/// scheme is case-sensitive and the decoded text is split at the first colon; anything
/// unreadable yields `None`.
pub fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let encoded = value.strip_prefix(b"Basic ")?;
    let decoded = STANDARD.decode(encoded.trim_ascii()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// The `CONNECT` request the `http` connector sends, header for header as GOST's client does
/// (§4.8), so that servers that fingerprint clients see the same thing.
pub fn connect_request(
    target: &Address,
    credentials: Option<(&str, &str)>,
    extra: &http::HeaderMap,
) -> Vec<u8> {
    // As Go's `Request.Write`: the `Host` line (the target; a `Host` in `extra` is ignored),
    // `User-Agent` (Go's unless `extra` has one), then every other header sorted by name,
    // `Proxy-Connection` over any in `extra`, and the connector's credentials over a
    // `Proxy-Authorization` in `extra`, which is sent when it has none (a bearer token, say).
    let user_agent = extra
        .get(http::header::USER_AGENT)
        .map_or(&b"Go-http-client/1.1"[..], |v| v.as_bytes());
    let mut head =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: ").into_bytes();
    head.extend_from_slice(user_agent);
    head.extend_from_slice(b"\r\n");
    let mut fields: Vec<(String, Vec<u8>)> = extra
        .iter()
        .filter(|(name, _)| match name.as_str() {
            "host" | "user-agent" | "proxy-connection" => false,
            "proxy-authorization" => credentials.is_none(),
            _ => true,
        })
        .map(|(name, value)| (canonical(name.as_str()), value.as_bytes().to_vec()))
        .collect();
    if let Some((user, pass)) = credentials {
        let token = STANDARD.encode(format!("{user}:{pass}"));
        fields.push((
            "Proxy-Authorization".into(),
            format!("Basic {token}").into_bytes(),
        ));
    }
    fields.push(("Proxy-Connection".into(), b"keep-alive".to_vec()));
    // Stable: several values of one header keep their order.
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in fields {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(&value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A header name spelt as Go writes it (`x-served-by` ⇒ `X-Served-By`).
pub fn canonical(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let c = if upper { c.to_ascii_uppercase() } else { c };
            upper = c == '-';
            c
        })
        .collect()
}

/// A parsed response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Length of the head, including the blank line; bytes after it belong to the tunnel.
    pub len: usize,
}

/// Why a response head is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Not HTTP.
    #[error("malformed HTTP response head: {0}")]
    Malformed(String),
    /// More than [`MAX_RESPONSE_HEAD`] bytes without the end of the head.
    #[error("HTTP response head exceeds {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
}

/// Parses a response head from the start of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(ResponseHead {
            status: response.code.unwrap_or_default(),
            reason: response.reason.unwrap_or_default().to_string(),
            len,
        })),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            Err(ResponseError::TooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ResponseError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_gost_rules() {
        let t = |m, s, a, h| proxy_target(m, s, a, h).map(|a| a.to_string());
        assert_eq!(
            t("CONNECT", None, Some("example.com:443"), None),
            Ok("example.com:443".into())
        );
        assert_eq!(
            t("CONNECT", None, Some("example.com"), None),
            Ok("example.com:80".into())
        );
        assert_eq!(
            t("GET", Some("http"), Some("a.example:8080"), None),
            Ok("a.example:8080".into())
        );
        assert_eq!(
            t("GET", None, None, Some("h.example")),
            Ok("h.example:80".into())
        );
        assert_eq!(
            t("GET", None, None, Some("[::1]:81")),
            Ok("[::1]:81".into())
        );
        assert_eq!(
            t("GET", Some("http"), Some("u:p@h.example"), None),
            Ok("h.example:80".into())
        );
        assert!(matches!(
            t("GET", Some("https"), Some("x"), None),
            Err(RequestError::Scheme(_))
        ));
        assert!(matches!(
            t("PRI", None, None, None),
            Err(RequestError::Scheme(_))
        ));
        assert_eq!(t("GET", None, None, None), Err(RequestError::NoTarget));
        assert!(matches!(
            t("CONNECT", None, Some("bad host:1"), None),
            Err(RequestError::Address(_))
        ));
    }

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        let value = format!("Basic {}", STANDARD.encode("user:pa:ss"));
        assert_eq!(
            basic_credentials(value.as_bytes()),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(basic_credentials(b"basic dXNlcjpwYXNz"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        assert_eq!(basic_credentials(b"Basic dXNlcg=="), None);
    }

    #[test]
    fn connect_request_carries_the_header_metadata_as_go_writes_it() {
        let target = Address::parse("example.com:443").unwrap();
        let mut extra = http::HeaderMap::new();
        extra.insert("x-token", http::HeaderValue::from_static("abc"));
        extra.insert("accept", http::HeaderValue::from_static("*/*"));
        extra.insert("host", http::HeaderValue::from_static("elsewhere"));
        extra.insert("user-agent", http::HeaderValue::from_static("mine/1"));
        extra.insert("proxy-connection", http::HeaderValue::from_static("close"));
        let head = String::from_utf8(connect_request(&target, Some(("u", "p")), &extra)).unwrap();
        assert_eq!(
            head,
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nUser-Agent: mine/1\r\n\
             Accept: */*\r\nProxy-Authorization: Basic dTpw\r\nProxy-Connection: keep-alive\r\n\
             X-Token: abc\r\n\r\n"
        );
    }

    #[test]
    fn a_proxy_authorization_header_is_sent_when_the_connector_has_no_credentials() {
        let target = Address::parse("example.com:443").unwrap();
        let mut extra = http::HeaderMap::new();
        extra.insert(
            "proxy-authorization",
            http::HeaderValue::from_static("Bearer T"),
        );
        let without = String::from_utf8(connect_request(&target, None, &extra)).unwrap();
        assert!(
            without.contains("\r\nProxy-Authorization: Bearer T\r\n"),
            "{without}"
        );
        let with = String::from_utf8(connect_request(&target, Some(("u", "p")), &extra)).unwrap();
        assert!(!with.contains("Bearer"), "{with}");
        assert!(
            with.contains("\r\nProxy-Authorization: Basic dTpw\r\n"),
            "{with}"
        );
    }

    #[test]
    fn connect_request_matches_gost() {
        let target = Address::parse("example.com:443").unwrap();
        let head = String::from_utf8(connect_request(
            &target,
            Some(("user", "pass")),
            &http::HeaderMap::new(),
        ))
        .unwrap();
        assert_eq!(
            head,
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\
             User-Agent: Go-http-client/1.1\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\
             Proxy-Connection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn response_heads_parse_incrementally() {
        let full = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: gost/3.0\r\n\r\nDATA";
        assert_eq!(parse_response_head(&full[..20]), Ok(None));
        let head = parse_response_head(full).unwrap().unwrap();
        assert_eq!(
            (head.status, head.reason.as_str()),
            (200, "Connection established")
        );
        assert_eq!(&full[head.len..], b"DATA");
        assert!(parse_response_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        let mut endless = b"HTTP/1.1 200 OK\r\nX-Filler: ".to_vec();
        endless.resize(MAX_RESPONSE_HEAD, b'a');
        assert_eq!(parse_response_head(&endless), Err(ResponseError::TooLarge));
    }

    /// What a GOST v2 client puts in `Gost-Target` for `name`.
    fn hide(name: &str) -> String {
        let mut outer = crc32fast::hash(name.as_bytes()).to_be_bytes().to_vec();
        outer.extend_from_slice(URL_SAFE_NO_PAD.encode(name).as_bytes());
        URL_SAFE_NO_PAD.encode(outer)
    }

    #[test]
    fn hidden_targets_decode_only_with_a_matching_checksum() {
        assert_eq!(
            decode_gost_target(hide("example.com:443").as_bytes()).as_deref(),
            Some("example.com:443")
        );
        // "127.0.0.1:8080" encoded independently (Python's zlib.crc32 and base64).
        assert_eq!(
            decode_gost_target(b"CJb4KE1USTNMakF1TUM0eE9qZ3dPREE").as_deref(),
            Some("127.0.0.1:8080")
        );
        // A plain host name, as GOST's `sni` connector writes, is not an encoding.
        assert_eq!(decode_gost_target(b"example.com"), None);
        assert_eq!(decode_gost_target(b""), None);
        assert_eq!(decode_gost_target(b"AAAA"), None);
        let mut wrong = crc32fast::hash(b"a.example").to_be_bytes().to_vec();
        wrong.extend_from_slice(URL_SAFE_NO_PAD.encode("b.example").as_bytes());
        assert_eq!(
            decode_gost_target(URL_SAFE_NO_PAD.encode(wrong).as_bytes()),
            None
        );

        let mut headers = http::HeaderMap::new();
        headers.insert("gost-target", hide("a.example:1").parse().unwrap());
        assert_eq!(hidden_target(&headers).as_deref(), Some("a.example:1"));
        headers.insert("x-gost-target", hide("b.example:2").parse().unwrap());
        assert_eq!(hidden_target(&headers).as_deref(), Some("b.example:2"));
        headers.insert("x-gost-target", "garbage".parse().unwrap());
        assert_eq!(hidden_target(&headers).as_deref(), Some("a.example:1"));
    }

    proptest::proptest! {
        #[test]
        fn response_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_response_head(&bytes);
        }

        #[test]
        fn hidden_targets_round_trip(name in "\\PC{1,60}", junk in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            proptest::prop_assert_eq!(decode_gost_target(hide(&name).as_bytes()), Some(name));
            let _ = decode_gost_target(&junk);
        }

        #[test]
        fn target_parser_never_panics(m in "[A-Z]{0,8}", a in "\\PC{0,40}", h in "\\PC{0,40}") {
            let _ = proxy_target(&m, Some("http"), Some(&a), Some(&h));
            let _ = proxy_target(&m, None, None, Some(&h));
        }

        #[test]
        fn credentials_round_trip(user in "[^:\\x00]{0,20}", pass in "\\PC{0,20}") {
            let value = format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")));
            proptest::prop_assert_eq!(basic_credentials(value.as_bytes()), Some((user, pass)));
        }
    }
}
