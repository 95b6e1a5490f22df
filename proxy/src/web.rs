//! Fetching one page over HTTP/1.1, or HTTPS, following redirects: the `web:` decoy of probe
//! resistance and configurations given to `-C` as a URL.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Scheme;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::addr::Address;
use crate::tls::ClientTls;

/// Headers of a fetched page that describe its connection, not the page; the answer carries
/// its own (and a `Content-Length` for the page as buffered).
const CONNECTION_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// How to fetch: limits, and what to send.
pub struct Fetch<'a> {
    /// TLS for `https` URLs.
    pub tls: &'a ClientTls,
    /// Largest body read; a larger one is an error.
    pub max_body: usize,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
    /// Time for each TCP connect.
    pub connect_timeout: Duration,
    /// Sent as `Authorization` to the first URL's origin (scheme, host and port), not to
    /// another one a redirect names.
    pub authorization: Option<HeaderValue>,
}

impl Fetch<'_> {
    /// GETs `url`, following redirects, and returns the final answer with its body.
    pub async fn get(&self, url: &Uri) -> Result<Response<Bytes>, String> {
        let mut url = url.clone();
        let first = origin(&url);
        for _ in 0..=self.max_redirects {
            let authorization = self
                .authorization
                .as_ref()
                .filter(|_| origin(&url) == first);
            let response = self.get_one(&url, authorization).await?;
            let next = response
                .status()
                .is_redirection()
                .then(|| response.headers().get(header::LOCATION))
                .flatten()
                .and_then(|location| location.to_str().ok())
                .and_then(|location| redirect_target(&url, location));
            match next {
                Some(next) => url = next,
                None => return Ok(response),
            }
        }
        Err(format!(
            "{}: more than {} redirects",
            without_userinfo(&url),
            self.max_redirects
        ))
    }

    async fn get_one(
        &self,
        url: &Uri,
        authorization: Option<&HeaderValue>,
    ) -> Result<Response<Bytes>, String> {
        let failed = |e: &dyn std::fmt::Display| format!("{}: {e}", without_userinfo(url));
        let https = url.scheme() == Some(&Scheme::HTTPS);
        let host = url.host().ok_or_else(|| failed(&"no host"))?;
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = Address::from_host(host, port).map_err(|e| failed(&e))?;
        let host_header = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let mut request = Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, host_header)
            .header(header::CONNECTION, "close");
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed(&e))?;
        let stream = crate::dialer::tcp::connect(&addr, self.connect_timeout)
            .await
            .map_err(|e| failed(&e))?;
        let response = if https {
            let stream = self
                .tls
                .connect(stream, &addr)
                .await
                .map_err(|e| failed(&e))?;
            exchange(stream, request, self.max_body).await
        } else {
            exchange(stream, request, self.max_body).await
        };
        response.map_err(|e| failed(&e))
    }
}

async fn exchange<S>(
    stream: S,
    request: Request<Empty<Bytes>>,
    max_body: usize,
) -> Result<Response<Bytes>, String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // Ends with the exchange, or with the sender when a timeout drops this future.
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (mut parts, body) = response.into_parts();
    let body = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|e| format!("body (at most {max_body} bytes): {e}"))?
        .to_bytes();
    for name in CONNECTION_HEADERS {
        parts.headers.remove(*name);
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Ok(Response::from_parts(parts, body))
}

/// Longest configuration read from a URL: GOST's limit.
pub const MAX_CONFIG_SIZE: usize = 10 << 20;

/// Time for fetching a configuration from a URL, redirects included: GOST's client timeout.
pub const CONFIG_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a configuration from an `http` or `https` URL (`-C URL`), as GOST does: the body of a
/// `200` answer, at most [`MAX_CONFIG_SIZE`]; a user name and password in the URL go as Basic
/// auth (only to that scheme, host and port); `https` is verified as a `secure` TLS node is,
/// against `SSL_CERT_FILE` / `SSL_CERT_DIR` or else the system's CA certificates (Mozilla's
/// roots built in where there are none). Returns the URL as it may be shown (without the
/// password) and the text.
pub async fn config_from_url(source: &str) -> Result<(String, String), String> {
    let url: Uri = source.parse().map_err(|e| {
        format!("-C: a URL that does not parse ({e}); it is not shown, as it may hold a password")
    })?;
    let shown = without_userinfo(&url);
    let tls = ClientTls::new(
        Some(&gost_api::TlsConfig {
            secure: true,
            ..gost_api::TlsConfig::default()
        }),
        &[b"http/1.1"],
    )
    .map_err(|e| format!("{shown}: {e}"))?;
    let fetch = Fetch {
        tls: &tls,
        max_body: MAX_CONFIG_SIZE,
        max_redirects: 10,
        connect_timeout: CONFIG_FETCH_TIMEOUT,
        authorization: basic_authorization(&url),
    };
    let response = tokio::time::timeout(CONFIG_FETCH_TIMEOUT, fetch.get(&url))
        .await
        .map_err(|_| format!("{shown}: no configuration within {CONFIG_FETCH_TIMEOUT:?}"))??;
    if response.status() != http::StatusCode::OK {
        return Err(format!(
            "{shown}: the server answered {}",
            response.status()
        ));
    }
    let text = String::from_utf8(response.into_body().to_vec())
        .map_err(|_| format!("{shown}: the configuration is not UTF-8 text"))?;
    Ok((shown, text))
}

/// `Authorization: Basic` for the user name and password of `url`, percent-decoded.
fn basic_authorization(url: &Uri) -> Option<HeaderValue> {
    use base64::Engine as _;
    let (userinfo, _) = url.authority()?.as_str().rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = format!("{}:{}", decode(user), decode(password));
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// `url` as it may be shown: without the user name and password.
pub fn without_userinfo(url: &Uri) -> String {
    match (url.scheme_str(), url.host()) {
        (Some(scheme), Some(host)) => {
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            let path = url.path_and_query().map_or("", |p| p.as_str());
            format!("{scheme}://{host}{port}{path}")
        }
        _ => "(URL)".to_string(),
    }
}

/// The scheme, host and port of `url`: where credentials may go.
fn origin(url: &Uri) -> Option<(String, String, u16)> {
    let scheme = url.scheme_str()?.to_ascii_lowercase();
    let port = url
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Some((scheme, url.host()?.to_ascii_lowercase(), port))
}

/// Where a redirect's `Location` points, resolved against `base` (without its user info, which
/// stays with the first URL); `None` for anything but an http or https URL.
fn redirect_target(base: &Uri, location: &str) -> Option<Uri> {
    let scheme = base.scheme_str()?;
    let host = base.host()?;
    let authority = match base.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let target = if location.contains("://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{scheme}://{authority}{dir}/{location}")
    };
    let uri = target.parse::<Uri>().ok()?;
    matches!(uri.scheme_str(), Some("http" | "https")).then_some(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_the_page() {
        let base: Uri = "http://example.com/a/b?q".parse().unwrap();
        for (location, expected) in [
            ("https://example.com/", "https://example.com/"),
            ("//cdn.example.com/x", "http://cdn.example.com/x"),
            ("/root", "http://example.com/root"),
            ("c", "http://example.com/a/c"),
        ] {
            assert_eq!(
                redirect_target(&base, location).unwrap(),
                expected,
                "{location}"
            );
        }
        assert!(redirect_target(&base, "ftp://example.com/").is_none());
    }

    #[test]
    fn url_credentials_become_basic_auth() {
        let url: Uri = "http://us%40er:p%3Ass@example.com/".parse().unwrap();
        let value = basic_authorization(&url).unwrap();
        // base64 of "us@er:p:ss"
        assert_eq!(value, "Basic dXNAZXI6cDpzcw==");
        assert!(value.is_sensitive());
        let url: Uri = "http://example.com/".parse().unwrap();
        assert!(basic_authorization(&url).is_none());
    }

    #[test]
    fn redirects_lose_the_user_info_and_credentials_stay_at_their_origin() {
        let base: Uri = "https://u:secret@example.com/a/gost.yaml".parse().unwrap();
        let next = redirect_target(&base, "other.yaml").unwrap();
        assert_eq!(next, "https://example.com/a/other.yaml");
        assert_eq!(origin(&next), origin(&base));
        for elsewhere in [
            "http://example.com/a",
            "https://example.com:8443/a",
            "https://cdn.example.com/a",
        ] {
            let url: Uri = elsewhere.parse().unwrap();
            assert_ne!(origin(&url), origin(&base), "{elsewhere}");
        }
    }

    #[test]
    fn shown_urls_hide_credentials() {
        let url: Uri = "https://user:secret@example.com:8443/gost.yaml?x=1"
            .parse()
            .unwrap();
        assert_eq!(
            without_userinfo(&url),
            "https://example.com:8443/gost.yaml?x=1"
        );
    }
}
