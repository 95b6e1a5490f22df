//! Probe resistance (gost-wire.md §4.3), shared by the `http` and `http2` handlers: what a
//! request that failed authentication is answered instead of the 407 that would tell an active
//! prober (a censor scanning for proxies) that the port is one.
//!
//! `probeResist` (alias `probe_resist`) is `type:value`: `code:<status>` answers that status,
//! `web:<url>` replays the page at the URL, `host:<host:port>` hands the request and the rest of
//! the connection to that address, `file:<path>` serves the file as HTML. A decoy that cannot be
//! produced (site or file unavailable, host down) answers 503. `knock` lists host names whose
//! requests still get the 407, so that a client that knows the secret name can tell the port is
//! a proxy. The handlers turn an [`Answer`] into their protocol's response.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use gost_api::{Metadata, TlsConfig};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri, Version};
use tokio::net::TcpStream;

use crate::addr::Address;
use crate::auth::Verdict;
use crate::tls::ClientTls;

/// Time for fetching a `web:` decoy page, redirects and body included: GOST's (its Go client's
/// whole-request timeout), so a slow site costs a probe no more than it does with GOST.
pub const WEB_DECOY_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest decoy page (a `web:` answer's body or a `file:`) served. Each probe holds its page
/// in memory while it is answered, and decoys are landing pages of a few KiB, so a larger page
/// is refused (503, logged) rather than buffered for every prober.
pub const MAX_DECOY_BODY: usize = 1024 * 1024;

/// Redirects a `web:` fetch follows, as Go's client does for GOST: a site that redirects
/// `http://` to `https://` still yields its page.
pub const MAX_DECOY_REDIRECTS: usize = 10;

/// Time for connecting to a `host:` decoy, the proxy's default dial timeout.
pub const HOST_DECOY_DIAL_TIMEOUT: Duration = crate::chain::DEFAULT_DIAL_TIMEOUT;

/// What a `probeResist` value may be, for configuration errors.
const ACCEPTED: &str = "expected `code:<status 200-599>`, `web:<http or https URL>`, \
                        `host:<host>:<port>` or `file:<path>`";

/// A handler's `probeResist` and `knock` settings.
pub struct ProbeResistance {
    decoy: Decoy,
    /// Host names whose requests get the 407, compared ignoring ASCII case.
    knock: Vec<String>,
}

enum Decoy {
    Code(StatusCode),
    Web { url: Uri, tls: ClientTls },
    Host(Address),
    File(PathBuf),
}

/// What a request that failed authentication gets.
pub enum Answer {
    /// This response.
    Respond(Response<Bytes>),
    /// A connection to the `host:` decoy, which is to get the request and the rest of the
    /// client's stream.
    Pipe(TcpStream, Address),
}

impl ProbeResistance {
    /// The handler metadata's `probeResist` (alias `probe_resist`) with its `knock`; `None`
    /// when unset or empty, as GOST. A malformed value is an error naming the setting.
    pub fn from_metadata(md: &Metadata) -> Result<Option<Self>, String> {
        let Some(value) = md
            .string(&["probeResist", "probe_resist"])
            .filter(|v| !v.is_empty())
        else {
            return Ok(None);
        };
        let knock = md.string(&["knock"]).unwrap_or_default();
        Self::parse(&value, &knock)
            .map(Some)
            .map_err(|e| format!("metadata `probeResist`: {e}; {ACCEPTED}"))
    }

    fn parse(value: &str, knock: &str) -> Result<Self, String> {
        let (kind, arg) = value
            .split_once(':')
            .ok_or_else(|| format!("{value:?} is not `type:value`"))?;
        let decoy = match kind {
            "code" => Decoy::Code(status(arg)?),
            "web" => Decoy::Web {
                url: web_url(arg)?,
                // Verified as GOST's Go client does it: the system's roots (or
                // `SSL_CERT_FILE`'s) and the site's name.
                tls: ClientTls::new(
                    Some(&TlsConfig {
                        secure: true,
                        ..TlsConfig::default()
                    }),
                    &[b"http/1.1"],
                )?,
            },
            "host" => Decoy::Host(Address::parse(arg).map_err(|e| format!("host: {e}"))?),
            "file" if !arg.is_empty() => Decoy::File(PathBuf::from(arg)),
            "file" => return Err("`file:` needs a path".into()),
            other => return Err(format!("unknown type {other:?}")),
        };
        let knock = knock
            .split(',')
            .map(str::trim)
            // An empty entry would match every origin-form request, whose host is empty.
            .filter(|host| !host.is_empty())
            .map(str::to_string)
            .collect();
        Ok(ProbeResistance { decoy, knock })
    }

    /// What a request to `uri` that failed authentication gets instead of the 407, or `None`
    /// when it knocks. `verdict` is the authentication's: a client refused unchecked (over its
    /// failure limit) gets the decoy too, but a decoy that fails is then logged only at debug.
    pub async fn decoy(&self, uri: &Uri, verdict: Verdict, service: &str) -> Option<Answer> {
        if !self.hides_from(uri.host().unwrap_or("")) {
            return None;
        }
        Some(self.answer(service, verdict != Verdict::Refused).await)
    }

    /// Whether a failed request whose URL names `host` (the CONNECT authority's or absolute
    /// URI's host, empty in origin form) gets the decoy: every one does unless it knocks.
    fn hides_from(&self, host: &str) -> bool {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        !self.knock.iter().any(|k| k.eq_ignore_ascii_case(host))
    }

    /// Produces the decoy. A failure answers 503 and is logged as a warning when `loud`
    /// (otherwise at debug, so that a client refused unchecked cannot fill the log).
    async fn answer(&self, service: &str, loud: bool) -> Answer {
        let produced = match &self.decoy {
            Decoy::Code(status) => Ok(empty(*status)),
            Decoy::Web { url, tls } => {
                let fetch = crate::web::Fetch {
                    tls,
                    max_body: MAX_DECOY_BODY,
                    max_redirects: MAX_DECOY_REDIRECTS,
                    connect_timeout: WEB_DECOY_TIMEOUT,
                    authorization: None,
                };
                tokio::time::timeout(WEB_DECOY_TIMEOUT, fetch.get(url))
                    .await
                    .unwrap_or_else(|_| Err(format!("{url}: no page within {WEB_DECOY_TIMEOUT:?}")))
            }
            Decoy::File(path) => read_page(path).await.map(html),
            Decoy::Host(addr) => {
                match crate::dialer::tcp::connect(addr, HOST_DECOY_DIAL_TIMEOUT).await {
                    Ok(stream) => return Answer::Pipe(stream, addr.clone()),
                    Err(e) => Err(format!("dial {addr}: {e}")),
                }
            }
        };
        Answer::Respond(produced.unwrap_or_else(|e| {
            if loud {
                tracing::warn!(service, error = %e, "probe resistance: decoy unavailable, answering 503");
            } else {
                tracing::debug!(service, error = %e, "probe resistance: decoy unavailable, answering 503");
            }
            empty(StatusCode::SERVICE_UNAVAILABLE)
        }))
    }
}

/// A decoy as GOST writes it on HTTP/1 (Go's `Response.Write`): HTTP/1.1 whatever the request's
/// version; `Connection: close` first unless the status is 200, which says `keep-alive` as a web
/// server would (the connection is closed all the same); `Content-Length` when there is a
/// page; the other headers sorted by name.
pub fn http1_answer(response: &Response<Bytes>) -> Bytes {
    let status = response.status();
    let mut out = BytesMut::with_capacity(256 + response.body().len());
    let reason = status.canonical_reason().map_or_else(
        || format!("status code {}", status.as_u16()),
        str::to_string,
    );
    out.put(format!("HTTP/1.1 {} {reason}\r\n", status.as_u16()).as_bytes());
    let mut headers = response.headers().clone();
    headers.remove(header::CONNECTION);
    if status == StatusCode::OK {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    } else {
        out.put(&b"Connection: close\r\n"[..]);
    }
    if let Some(length) = headers.remove(header::CONTENT_LENGTH) {
        put_field(&mut out, &header::CONTENT_LENGTH, &length);
    }
    let mut names: Vec<&HeaderName> = headers.keys().collect();
    names.sort_by_key(|name| name.as_str());
    for name in names {
        for value in headers.get_all(name) {
            put_field(&mut out, name, value);
        }
    }
    out.put(&b"\r\n"[..]);
    out.put(response.body().clone());
    out.freeze()
}

/// A refused request's head as GOST writes it to the `host:` decoy (Go's `Request.Write`):
/// origin form (a CONNECT keeps its authority), a `Host` header, then the client's headers.
pub fn request_head(method: &Method, uri: &Uri, version: Version, headers: &HeaderMap) -> Bytes {
    let target = match (method, uri.authority()) {
        (&Method::CONNECT, Some(authority)) => authority.as_str(),
        _ => uri.path_and_query().map_or("/", |p| p.as_str()),
    };
    let version = match version {
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let mut out = BytesMut::with_capacity(1024);
    out.put(format!("{method} {target} {version}\r\n").as_bytes());
    if let (None, Some(authority)) = (headers.get(header::HOST), uri.authority()) {
        out.put(format!("Host: {authority}\r\n").as_bytes());
    }
    for (name, value) in headers {
        put_field(&mut out, name, value);
    }
    out.put(&b"\r\n"[..]);
    out.freeze()
}

/// One header line, its name in Go's canonical form (`Content-Type`).
fn put_field(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.put(crate::codec::http::canonical(name.as_str()).as_bytes());
    out.put(&b": "[..]);
    out.put(value.as_bytes());
    out.put(&b"\r\n"[..]);
}

fn status(arg: &str) -> Result<StatusCode, String> {
    arg.parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("`code:{arg}` is not a status from 200 to 599"))
}

/// The `web:` URL, `http://` assumed when it has no scheme.
fn web_url(arg: &str) -> Result<Uri, String> {
    let url = match arg.split_once("://") {
        Some((scheme, _))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            arg.to_string()
        }
        Some((scheme, _)) => return Err(format!("`web:` takes http or https, not {scheme:?}")),
        None => format!("http://{arg}"),
    };
    url.parse::<Uri>()
        .ok()
        .filter(|uri| uri.host().is_some_and(|h| !h.is_empty()))
        .ok_or_else(|| format!("`web:{arg}` is not a URL with a host"))
}

fn empty(status: StatusCode) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = status;
    response
}

fn html(page: Bytes) -> Response<Bytes> {
    let length = HeaderValue::from(page.len());
    let mut response = Response::new(page);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    headers.insert(header::CONTENT_LENGTH, length);
    response
}

async fn read_page(path: &Path) -> Result<Bytes, String> {
    let path = path.to_path_buf();
    // std's file reading on the blocking pool: the page is small, and this is what tokio's own
    // file API would do.
    tokio::task::spawn_blocking(move || {
        let failed = |e: std::io::Error| format!("{}: {e}", path.display());
        let file = std::fs::File::open(&path).map_err(failed)?;
        let mut page = Vec::new();
        file.take(MAX_DECOY_BODY as u64 + 1)
            .read_to_end(&mut page)
            .map_err(failed)?;
        if page.len() > MAX_DECOY_BODY {
            return Err(format!(
                "{}: larger than {MAX_DECOY_BODY} bytes",
                path.display()
            ));
        }
        Ok(Bytes::from(page))
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &str, knock: &str) -> Result<ProbeResistance, String> {
        ProbeResistance::parse(value, knock)
    }

    #[test]
    fn values_parse_as_gost_writes_them() {
        assert!(matches!(
            parsed("code:404", "").unwrap().decoy,
            Decoy::Code(StatusCode::NOT_FOUND)
        ));
        match parsed("web:example.com/index.html", "").unwrap().decoy {
            Decoy::Web { url, .. } => assert_eq!(url, "http://example.com/index.html"),
            _ => panic!("not web"),
        }
        match parsed("web:HTTPS://example.com", "").unwrap().decoy {
            Decoy::Web { url, .. } => assert_eq!(url.scheme(), Some(&http::uri::Scheme::HTTPS)),
            _ => panic!("not web"),
        }
        match parsed("host:192.168.1.1:80", "").unwrap().decoy {
            Decoy::Host(addr) => assert_eq!(addr.to_string(), "192.168.1.1:80"),
            _ => panic!("not host"),
        }
        match parsed("file:/var/www/index.html", "").unwrap().decoy {
            Decoy::File(path) => assert_eq!(path, Path::new("/var/www/index.html")),
            _ => panic!("not file"),
        }
    }

    #[test]
    fn malformed_values_are_errors() {
        for value in [
            "404",
            "code:",
            "code:x",
            "code:100",
            "code:600",
            "Code:404",
            "teapot:418",
            "web:",
            "web:ftp://example.com",
            "host:example.com",
            "host:example.com:http",
            "file:",
        ] {
            assert!(parsed(value, "").is_err(), "{value} accepted");
        }
    }

    #[test]
    fn only_knock_hosts_see_the_proxy() {
        let probe = parsed("code:404", " Secret.example , ,::1").unwrap();
        assert!(!probe.hides_from("secret.example"));
        assert!(!probe.hides_from("SECRET.EXAMPLE"));
        assert!(!probe.hides_from("[::1]"));
        assert!(probe.hides_from("example.com"));
        // The blank entry does not make origin-form requests (no host) knock.
        assert!(probe.hides_from(""));
        assert!(parsed("code:404", "").unwrap().hides_from(""));
    }

    #[test]
    fn decoys_are_written_as_gost_writes_them() {
        assert_eq!(
            http1_answer(&empty(StatusCode::NOT_FOUND)),
            "HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            http1_answer(&empty(StatusCode::from_u16(599).unwrap())),
            "HTTP/1.1 599 status code 599\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            http1_answer(&html(Bytes::from_static(b"<p>hi</p>"))),
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: keep-alive\r\n\
             Content-Type: text/html\r\n\r\n<p>hi</p>"
        );
    }

    #[test]
    fn refused_requests_are_rewritten_in_origin_form() {
        let mut headers = HeaderMap::new();
        headers.insert("x-probe", HeaderValue::from_static("1"));
        let uri: Uri = "http://example.com/a?b".parse().unwrap();
        assert_eq!(
            request_head(&Method::GET, &uri, Version::HTTP_11, &headers),
            "GET /a?b HTTP/1.1\r\nHost: example.com\r\nX-Probe: 1\r\n\r\n"
        );
        headers.insert(header::HOST, HeaderValue::from_static("example.com:443"));
        let uri: Uri = "example.com:443".parse().unwrap();
        assert_eq!(
            request_head(&Method::CONNECT, &uri, Version::HTTP_10, &headers),
            "CONNECT example.com:443 HTTP/1.0\r\nX-Probe: 1\r\nHost: example.com:443\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn unavailable_decoys_answer_503() {
        let dir = std::env::temp_dir().join(format!("gost-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.html");
        std::fs::write(&big, vec![b'x'; MAX_DECOY_BODY + 1]).unwrap();
        let small = dir.join("small.html");
        std::fs::write(&small, b"<p>hi</p>").unwrap();
        for (value, status) in [
            (format!("file:{}", big.display()), 503),
            (format!("file:{}/missing.html", dir.display()), 503),
            (format!("file:{}", small.display()), 200),
        ] {
            match parsed(&value, "").unwrap().answer("test", true).await {
                Answer::Respond(response) => assert_eq!(response.status(), status, "{value}"),
                Answer::Pipe(..) => panic!("{value}: piped"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
