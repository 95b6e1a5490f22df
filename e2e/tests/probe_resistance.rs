//! Probe resistance and knock (`probeResist`, `knock`; gost-wire.md §4.3): a request that fails
//! authentication gets a decoy answer instead of the 407 that would tell a prober the port is a
//! proxy, on the `http` and `http2` handlers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gost_e2e::*;

/// How long a decoy answer may take to arrive and its connection to close: far less than a
/// kept-alive connection would stay open.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// Sends `request` as it is and returns everything the proxy writes until it closes the
/// connection; panics when it does not close within [`ANSWER_DEADLINE`].
fn exchange(proxy: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(ANSWER_DEADLINE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("connection not closed after the answer ({e}): {answer:?}"));
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(host: &str, credentials: Option<&str>) -> String {
    let auth = credentials
        .map(|c| format!("Proxy-Authorization: Basic {}\r\n", base64(c.as_bytes())))
        .unwrap_or_default();
    format!("GET http://{host}/probe HTTP/1.1\r\nHost: {host}\r\n{auth}X-Probe: yes\r\n\r\n")
}

fn connect(host: &str, credentials: Option<&str>) -> String {
    let auth = credentials
        .map(|c| format!("Proxy-Authorization: Basic {}\r\n", base64(c.as_bytes())))
        .unwrap_or_default();
    format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n")
}

fn proxy_with(query: &str) -> Gost {
    Gost::start(&["-L", &format!("http://user:pass@127.0.0.1:0?{query}")], 1)
}

#[test]
fn code_decoy_answers_instead_of_407_and_a_knock_gets_the_407() {
    let target = Target::http();
    let proxy = proxy_with("probeResist=code:404&knock=secret.example");
    let t = target.addr.to_string();
    for request in [
        get(&t, None),
        get(&t, Some("user:wrong")),
        connect(&t, Some("user:wrong")),
    ] {
        let answer = exchange(proxy.addr(), &request);
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        let lower = answer.to_ascii_lowercase();
        assert!(
            !lower.contains("proxy-authenticate") && !lower.contains("proxy-agent"),
            "{answer}"
        );
    }
    // A real client with the credentials is served as before.
    let out = curl(&[
        "-x",
        &format!("http://user:pass@{}", proxy.addr()),
        &format!("http://{t}/"),
    ]);
    assert!(out.text().starts_with("hello from target"), "{out:?}");
    // Asking for the knock host (any case, absolute URI or CONNECT) reveals the proxy.
    for request in [
        get("secret.example", None),
        get("SECRET.Example", Some("user:wrong")),
        connect("secret.example:443", None),
    ] {
        let answer = exchange(proxy.addr(), &request);
        assert!(
            answer.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("Proxy-Authenticate: Basic realm=\"gost\""),
            "{answer}"
        );
    }
    assert!(proxy.log().contains("proxy authentication failed"));
}

#[test]
fn decoys_outlast_the_failure_limit_and_every_failure_is_counted() {
    let target = Target::http();
    let gost = Gost::start(
        &[
            "-L",
            "http://user:pass@127.0.0.1:0?probeResist=code:404&authFailureLimit=3",
            "-metrics",
            "127.0.0.1:0",
        ],
        2,
    );
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    let t = target.addr.to_string();
    // Past the limit the address is refused unchecked, even with the right password, and that
    // refusal must look like every other decoy: a 407 now would give the proxy away.
    for request in (0..5)
        .map(|_| get(&t, Some("user:guess")))
        .chain([get(&t, Some("user:pass"))])
    {
        let answer = exchange(proxy, &request);
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    }
    gost.wait_for_log("too many failed authentications");
    let text = scrape_metrics(&format!("http://{metrics}/metrics"), None);
    assert_eq!(
        metric_sample(&text, "gost_service_auth_failures_total{host="),
        Some(6.0),
        "{text}"
    );
}

#[test]
fn web_decoy_replays_the_page_and_closes_the_connection() {
    let site = Target::http();
    let target = Target::http();
    // Without a scheme, as GOST's examples write it: http:// is assumed.
    let proxy = proxy_with(&format!("probeResist=web:{}/index.html", site.addr));
    let answer = exchange(proxy.addr(), &get(&target.addr.to_string(), None));
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // A 200 decoy says keep-alive, as a web server would, and is closed all the same
    // (`exchange` reads to the end).
    assert!(answer.contains("Connection: keep-alive\r\n"), "{answer}");
    assert!(
        answer.contains("X-Request-Line: GET /index.html HTTP/1.1\r\n"),
        "{answer}"
    );
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    assert!(body.starts_with("hello from target"), "{answer}");
    let length = format!("Content-Length: {}\r\n", body.len());
    assert!(answer.contains(&length), "{answer}");
    assert!(!answer.contains("Proxy-Authenticate"), "{answer}");

    // The decoy site is down: 503.
    let down = proxy_with(&format!("probeResist=web:http://{}/", local(free_port())));
    let answer = exchange(down.addr(), &get(&target.addr.to_string(), None));
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
}

#[test]
fn file_decoy_serves_the_file_as_html() {
    let page = "<html><body>It works!</body></html>\n";
    let dir = tempdir();
    let file = dir.join("index.html");
    std::fs::write(&file, page).unwrap();
    let proxy = proxy_with(&format!("probeResist=file:{}", file.display()));
    let answer = exchange(proxy.addr(), &connect("example.com:443", None));
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("Content-Type: text/html\r\n"), "{answer}");
    assert!(
        answer.contains(&format!("Content-Length: {}\r\n", page.len())),
        "{answer}"
    );
    assert!(answer.contains("Connection: keep-alive\r\n"), "{answer}");
    assert!(answer.ends_with(&format!("\r\n\r\n{page}")), "{answer}");

    // Unreadable: 503.
    let missing = proxy_with("probeResist=file:/nonexistent/index.html");
    let answer = exchange(missing.addr(), &connect("example.com:443", None));
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
}

#[test]
fn host_decoy_gets_the_request_and_the_rest_of_the_connection() {
    let site = Target::http();
    let proxy = proxy_with(&format!("probeResist=host:{}", site.addr));
    // The decoy answers the request the prober sent (in origin form, as GOST writes it), with
    // the prober's own headers; the proxy only pipes.
    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_read_timeout(Some(ANSWER_DEADLINE)).unwrap();
    stream
        .write_all(get("example.com", Some("user:wrong")).as_bytes())
        .unwrap();
    let head = read_head(&mut stream).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("X-Request-Line: GET /probe HTTP/1.1\r\n"),
        "{head}"
    );
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("X-Probe: yes"), "{body}");
    assert!(body.contains("Host: example.com"), "{body}");
    // A second request on the same connection goes to the decoy too: the connection is its.
    stream
        .write_all(b"GET /second HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("X-Request-Line: GET /second HTTP/1.1"),
        "{rest}"
    );

    // A CONNECT probe is handed over the same way.
    let answer = exchange(
        proxy.addr(),
        &connect("example.com:443", None).replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"),
    );
    assert!(
        answer.contains("X-Request-Line: CONNECT example.com:443 HTTP/1.1"),
        "{answer}"
    );

    // The decoy host is down: 503.
    let down = proxy_with(&format!("probeResist=host:{}", local(free_port())));
    let answer = exchange(down.addr(), &get("example.com", None));
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
}

#[test]
fn malformed_probe_resist_values_fail_at_start_naming_the_option() {
    for value in [
        "404",
        "code",
        "code:soon",
        "code:99",
        "code:600",
        "teapot:418",
        "web:",
        "web:ftp://example.com/",
        "host:example.com",
        "file:",
    ] {
        let url = format!("http://user:pass@127.0.0.1:0?probeResist={value}");
        let out = run(gost_bin().to_str().unwrap(), &["-L", &url]);
        assert_eq!(out.code, 2, "{value}: {}", out.stderr);
        assert!(
            out.stderr.contains("probeResist") && out.stderr.contains("code:<"),
            "{value}: the error should name the option and the accepted forms: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

/// One request over HTTP/2 with `h2_request.py`: (status, headers, body).
fn h2_request(
    proxy: SocketAddr,
    method: &str,
    authority: &str,
    path: &str,
    credentials: &str,
) -> (String, serde_json::Value, String) {
    let out = python(
        "h2_request.py",
        &[&proxy.to_string(), method, authority, path, credentials],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.text(), out.stderr);
    let answer: serde_json::Value = serde_json::from_str(out.text().trim()).unwrap();
    (
        answer["status"].as_str().unwrap().to_string(),
        answer["headers"].clone(),
        answer["body"].as_str().unwrap().to_string(),
    )
}

#[test]
fn http2_handler_answers_with_the_decoy_too() {
    let target = Target::http();
    let t = target.addr.to_string();
    let gost = Gost::start(
        &[
            "-L",
            "http2://user:pass@127.0.0.1:0?probeResist=code:404&knock=secret.example",
        ],
        1,
    );
    let (status, headers, _) = h2_request(gost.addr(), "CONNECT", &t, "-", "-");
    assert_eq!(status, "404", "{headers}");
    assert!(headers.get("proxy-authenticate").is_none(), "{headers}");
    let (status, _, body) = h2_request(gost.addr(), "GET", &t, "/", "user:wrong");
    assert_eq!(status, "404");
    assert_eq!(body, "");
    // The knock host gets the 407; the right credentials still work.
    let (status, headers, _) = h2_request(gost.addr(), "CONNECT", "secret.example:443", "-", "-");
    assert_eq!(status, "407");
    assert_eq!(headers["proxy-authenticate"], "Basic realm=\"gost\"");
    let (status, _, body) = h2_request(gost.addr(), "GET", &t, "/", "user:pass");
    assert_eq!(status, "200");
    assert!(body.starts_with("hello from target"), "{body}");

    // A host decoy answers the request in the prober's stead.
    let site = Target::http();
    let gost = Gost::start(
        &[
            "-L",
            &format!(
                "http2://user:pass@127.0.0.1:0?probeResist=host:{}",
                site.addr
            ),
        ],
        1,
    );
    let (status, headers, body) = h2_request(gost.addr(), "GET", "example.com", "/page", "-");
    assert_eq!(status, "200", "{headers}");
    assert_eq!(headers["x-request-line"], "GET /page HTTP/1.1");
    assert!(body.starts_with("hello from target"), "{body}");
    assert!(
        body.to_ascii_lowercase().contains("host: example.com"),
        "{body}"
    );
}
