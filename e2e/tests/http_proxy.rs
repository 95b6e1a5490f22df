//! The seed's first example ("HTTP CONNECT Method") and the HTTP proxy around it, with real
//! `gost` processes and real clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use gost_e2e::*;

/// The seed's server: `gost -L http://user:pass@:8080`, on an ephemeral loopback port.
fn seed_server() -> Gost {
    Gost::start(&["-L", "http://user:pass@127.0.0.1:0"], 1)
}

/// The seed's client: `gost -L http://:8000 -F http://user:pass@:8080`.
fn seed_client(server: &Gost) -> Gost {
    let node = format!("http://user:pass@{}", server.addr());
    Gost::start(&["-L", "http://127.0.0.1:0", "-F", &node], 1)
}

fn assert_plain_and_connect_work(client_proxy: &str, target: &Target) {
    let url = format!("http://{}/hello", target.addr);
    // Plain request: absolute-form through the client proxy, which turns it into a CONNECT
    // to the server proxy.
    let out = curl(&["-x", client_proxy, &url]);
    assert_eq!(out.code, 0, "curl failed: {}", out.stderr);
    assert!(
        out.text().starts_with("hello from target"),
        "{}",
        out.text()
    );
    // The proxy credentials never reach the target.
    assert!(
        !out.text()
            .to_ascii_lowercase()
            .contains("proxy-authorization"),
        "{}",
        out.text()
    );
    // CONNECT tunnel (-p).
    let out = curl(&["-p", "-x", client_proxy, &url]);
    assert_eq!(out.code, 0, "curl -p failed: {}", out.stderr);
    assert!(
        out.text().starts_with("hello from target"),
        "{}",
        out.text()
    );
}

#[test]
fn seed_example_command_line() {
    let target = Target::http();
    let server = seed_server();
    let client = seed_client(&server);
    assert_plain_and_connect_work(&format!("http://{}", client.addr()), &target);
    // The server alone, with the credentials, works as a proxy too.
    assert_plain_and_connect_work(&format!("http://user:pass@{}", server.addr()), &target);
    for log in [server.log(), client.log()] {
        assert!(
            !log.contains("pass\"") && !log.contains(":pass"),
            "credentials in log:\n{log}"
        );
    }
}

#[test]
fn seed_example_yaml() {
    let target = Target::http();
    let server = Gost::start_config(
        "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: http\n    auth:\n      username: user\n      password: pass\n  listener:\n    type: tcp\n",
        1,
    );
    let client = Gost::start_config(
        &format!(
            "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: http\n    chain: chain-0\n  listener:\n    type: tcp\nchains:\n- name: chain-0\n  hops:\n  - name: hop-0\n    nodes:\n    - name: node-0\n      addr: {}\n      connector:\n        type: http\n        auth:\n          username: user\n          password: pass\n      dialer:\n        type: tcp\n",
            server.addr()
        ),
        1,
    );
    assert_plain_and_connect_work(&format!("http://{}", client.addr()), &target);
}

#[test]
fn missing_or_wrong_credentials_get_407() {
    let target = Target::http();
    let server = seed_server();
    let url = format!("http://{}/", target.addr);
    for proxy in [
        format!("http://{}", server.addr()),
        format!("http://user:wrong@{}", server.addr()),
        format!("http://nobody:pass@{}", server.addr()),
    ] {
        let out = curl(&["-i", "-x", &proxy, &url]);
        let text = out.text();
        assert!(
            text.starts_with("HTTP/1.1 407 Proxy Authentication Required"),
            "{proxy}: {text}"
        );
        assert!(
            text.contains("Proxy-Authenticate: Basic realm=\"gost\""),
            "{text}"
        );
        assert!(!text.contains("hello from target"));
        let out = curl(&["-p", "-x", &proxy, &url]);
        assert_ne!(out.code, 0, "CONNECT without valid credentials must fail");
    }
    // A raw CONNECT with a wrong password: 407, then the connection is closed.
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let target_addr = target.addr.to_string();
    write!(stream, "CONNECT {target_addr} HTTP/1.1\r\nHost: {target_addr}\r\nProxy-Authorization: Basic {}\r\n\r\n", base64(b"user:nope")).unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 407 "), "{all}");
    assert!(server.log().contains("proxy authentication failed"));
    assert!(!server.log().contains("nope"), "a password reached the log");
}

#[test]
fn connect_answers_gosts_exact_status_line_and_keeps_pipelined_bytes() {
    let target = Target::echo();
    // The `auto` handler reads a client's first byte before the http handler reads the rest:
    // both hold bytes read ahead when the tunnel starts.
    for scheme in ["http", "auto"] {
        let server = Gost::start(&["-L", &format!("{scheme}://127.0.0.1:0")], 1);
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let t = target.addr.to_string();
        // The first tunnel bytes travel in the same packet as the CONNECT head.
        write!(
            stream,
            "CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\nearly bytes"
        )
        .unwrap();
        let head = read_head(&mut stream).unwrap();
        assert_eq!(
            head, "HTTP/1.1 200 Connection established\r\nProxy-Agent: gost/3.0\r\n\r\n",
            "{scheme}"
        );
        let mut echoed = [0u8; 11];
        stream.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"early bytes", "{scheme}");
        // The tunnel goes on behind them.
        echo_round_trip(stream, 4 << 20);
    }
}

/// The handler's `header` metadata goes on the proxy's own error answers, as GOST's: not on
/// the 407 (nor `Proxy-Agent`, which would tell a prober more than that credentials are
/// wanted), not on the CONNECT's exact 200, not on what the target answers.
#[test]
fn header_metadata_is_on_the_proxys_errors_only() {
    let target = Target::http();
    let dead = format!("127.0.0.1:{}", free_port());
    let server = Gost::start_config(
        "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    auth: {username: u, password: p}\n    metadata:\n      header: {Server: nginx, X-Test: \"1\"}\n",
        1,
    );
    let proxy = server.addr();
    let refused = curl(&[
        "-s",
        "-i",
        "-x",
        &format!("http://{proxy}"),
        &format!("http://{}/", target.addr),
    ]);
    let connected = curl(&[
        "-s",
        "-i",
        "-p",
        "-x",
        &format!("http://u:p@{proxy}"),
        &format!("http://{}/", target.addr),
    ]);
    let failed = curl(&[
        "-s",
        "-i",
        "-x",
        &format!("http://u:p@{proxy}"),
        &format!("http://{dead}/"),
    ]);
    let head = |out: &Output| out.text().split("\r\n\r\n").next().unwrap().to_string();
    let refused_head = head(&refused);
    assert!(refused_head.starts_with("HTTP/1.1 407 "), "{refused_head}");
    assert!(
        refused_head.contains("Proxy-Authenticate: Basic realm=\"gost\"\r\n"),
        "{refused_head}"
    );
    for absent in ["Server:", "X-Test:", "Proxy-Agent:"] {
        assert!(
            !refused_head.contains(absent),
            "407 with {absent}: {refused_head}"
        );
    }
    assert_eq!(
        head(&connected),
        "HTTP/1.1 200 Connection established\r\nProxy-Agent: gost/3.0"
    );
    let failed_head = head(&failed);
    assert!(failed_head.starts_with("HTTP/1.1 502 "), "{failed_head}");
    assert!(
        failed_head.contains("Server: nginx\r\n") && failed_head.contains("X-Test: 1\r\n"),
        "{failed_head}"
    );
    // The target's own answer, after the CONNECT's, has none of them.
    let target_head = connected
        .text()
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .to_string();
    assert!(target_head.starts_with("HTTP/1.1 200 OK"), "{target_head}");
    assert!(!target_head.contains("X-Test"), "{target_head}");
}

#[test]
fn refused_target_gives_502_and_one_log_line() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let server = seed_server();
    let client = seed_client(&server);
    for proxy in [
        format!("http://{}", client.addr()),
        format!("http://user:pass@{}", server.addr()),
    ] {
        let out = curl_status(&["-x", &proxy, &format!("http://{closed}/")]);
        assert_eq!(out.text(), "502", "plain request via {proxy}");
        let out = curl(&[
            "-p",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "-x",
            &proxy,
            &format!("http://{closed}/"),
        ]);
        assert_eq!(out.text(), "502", "CONNECT via {proxy}");
    }
    // The client's log names the hop and the cause.
    let log = client.log();
    let line = log
        .lines()
        .find(|l| l.contains("upstream dial failed"))
        .unwrap_or_else(|| panic!("no dial failure logged:\n{log}"));
    assert!(line.contains("chain-0/hop-0/node-0"), "{line}");
    assert!(line.contains("502"), "{line}");
}

#[test]
fn transfers_of_64_mib_are_byte_identical() {
    const SIZE: usize = 64 * 1024 * 1024;
    let target = Target::echo();
    let http = Target::http();
    let server = seed_server();
    let client = seed_client(&server);
    // Both directions at once through a two-process tunnel.
    let stream = http_connect(client.addr(), &target.addr.to_string(), None).unwrap();
    echo_round_trip(stream, SIZE);
    // A download with curl, checked byte for byte.
    let out = curl(&[
        "-x",
        &format!("http://{}", client.addr()),
        &format!("http://{}/bytes/{SIZE}", http.addr),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.len(), SIZE);
    assert!(
        out.stdout
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i)),
        "download corrupted"
    );
}

#[test]
fn malformed_requests_get_an_error_and_the_proxy_keeps_serving() {
    let target = Target::http();
    let server = Gost::start(&["-L", "http://127.0.0.1:0?readTimeout=1s"], 1);
    let addr = server.addr();

    // Garbage bytes: an error status or a closed connection, never a hang.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"\x16\x03\x01\x00\xff garbage \x00\x01\x02\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );

    // Oversized headers: 431 (or 400), not a buffer that grows without end.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let big = "a".repeat(200 * 1024);
    let _ = write!(
        stream,
        "GET http://{}/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n",
        target.addr
    );
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431") || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );

    // Slow headers: the connection is dropped after the read timeout.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET http://example.invalid/ HTTP/1.1\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "slow client was not cut off"
    );

    // HTTPS in absolute form cannot be forwarded by a plain proxy.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET https://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\n\r\n")
        .unwrap();
    let head = read_head(&mut stream).unwrap();
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    // And the proxy still serves.
    let out = curl(&[
        "-x",
        &format!("http://{addr}"),
        &format!("http://{}/", target.addr),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.text().starts_with("hello from target"));
}

#[test]
fn python_standard_library_clients() {
    let target = Target::http();
    let server = seed_server();
    let client = seed_client(&server);
    python_checks(
        "stdlib_clients.py",
        &[
            client.addr().to_string(),
            server.addr().to_string(),
            target.addr.to_string(),
        ],
        &["urllib ok", "http.client tunnel ok", "407 ok"],
    );
}

#[test]
fn python_requests_library_over_http_and_socks5() {
    let target = Target::http();
    let http = seed_server();
    let socks = Gost::start(&["-L", "socks5://user:pass@127.0.0.1:0"], 1);
    python_checks(
        "requests_clients.py",
        &[
            http.addr().to_string(),
            socks.addr().to_string(),
            target.addr.to_string(),
        ],
        &[
            "via http ok",
            "via socks5h ok",
            "via socks5 ok",
            "407 ok",
            "socks5 refusal ok",
        ],
    );
}

#[test]
fn websocket_upgrade_through_absolute_uri_forwarding() {
    let server = seed_server();
    let client = seed_client(&server);
    // Straight to the server, and through the client, whose chain carries the request in a
    // CONNECT to the server.
    for proxy in [server.addr(), client.addr()] {
        python_checks(
            "ws_forward.py",
            &[proxy.to_string(), "user:pass".to_string()],
            &["upgrade ok", "headers ok", "echo ok", "refusal ok"],
        );
    }
    // The upgraded connection is relayed as a tunnel, with its summary line.
    server.wait_for_log("\"outcome\":\"closed\"");
}

#[test]
fn a_client_that_resets_its_tunnel_is_logged_as_a_reset() {
    let echo = Target::echo();
    let server = seed_server();
    let mut stream =
        http_connect(server.addr(), &echo.addr.to_string(), Some("user:pass")).expect("CONNECT");
    stream.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // Closed with SO_LINGER 0: the kernel sends a RST instead of a FIN.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async move {
        stream.set_nonblocking(true).unwrap();
        let stream = tokio::net::TcpStream::from_std(stream).unwrap();
        stream.set_zero_linger().unwrap();
    });
    server.wait_for_log("\"outcome\":\"reset\"");
    assert!(
        !server.log().contains("\"outcome\":\"error\""),
        "{}",
        server.log()
    );
}

/// Sends `request` to `proxy`, optionally ends the sending side, and returns all it answers
/// until it closes (within the I/O timeout).
fn exchange(proxy: std::net::SocketAddr, request: &str, half_close: bool) -> String {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    if half_close {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A request whose `Host` is the proxy itself is forwarded once, comes back, and is refused
/// with 508: not passed on again until no socket is left (one request used to take the
/// process to its file limit).
#[test]
fn a_request_for_the_proxy_itself_is_refused_not_looped() {
    // `auto` too, whose HTTP clients reach the http handler behind the first byte it read.
    for scheme in ["http", "auto"] {
        request_for_itself_is_refused(scheme);
    }
}

fn request_for_itself_is_refused(scheme: &str) {
    let server = Gost::start(&["-L", &format!("{scheme}://127.0.0.1:0")], 1);
    let me = server.addr();
    let before = open_fds(server.pid());
    for request in [
        format!("GET / HTTP/1.1\r\nHost: {me}\r\nConnection: close\r\n\r\n"),
        format!("GET http://{me}/ HTTP/1.1\r\nHost: {me}\r\nConnection: close\r\n\r\n"),
    ] {
        let answer = exchange(me, &request, false);
        assert!(answer.starts_with("HTTP/1.1 508 "), "{answer}");
    }
    server.wait_for_log("came back to this service");
    assert!(
        open_fds(server.pid()) < before + 20,
        "{} fds open, {before} before",
        open_fds(server.pid())
    );
    // And the service still serves.
    let target = Target::http();
    let out = curl(&[
        "-x",
        &format!("http://{me}"),
        &format!("http://{}/", target.addr),
    ]);
    assert!(
        out.text().starts_with("hello from target"),
        "{}",
        out.stderr
    );
}

/// A client that ends its sending side once its request is out still gets the answer, for
/// a forwarded request as for a CONNECT.
#[test]
fn a_half_closed_client_still_gets_its_answer() {
    let target = Target::http();
    let server = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let t = target.addr;
    let answer = exchange(
        server.addr(),
        &format!("GET http://{t}/half HTTP/1.1\r\nHost: {t}\r\n\r\n"),
        true,
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
    assert!(answer.contains("hello from target"), "{answer}");
}

/// An absolute-form request goes to the host of its URI and says so in `Host`, whatever
/// `Host` the client sent, and the URI's `user:password@` never reaches the target.
#[test]
fn forwarded_requests_name_the_uris_host_without_userinfo() {
    let target = Target::http();
    let server = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let t = target.addr;
    for request in [
        format!("GET http://{t}/a HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
        format!("GET http://user:secret@{t}/b HTTP/1.1\r\nConnection: close\r\n\r\n"),
    ] {
        let answer = exchange(server.addr(), &request, false);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        let lower = answer.to_ascii_lowercase();
        assert!(lower.contains(&format!("\nhost: {t}\r\n")), "{answer}");
        assert!(
            !lower.contains("evil.example") && !lower.contains("secret"),
            "{answer}"
        );
    }
}

/// GOST's UDP relay over HTTP (`X-Gost-Protocol: udp`) is refused with GOST's 403 for a
/// service without UDP, never taken for a TCP tunnel.
#[test]
fn udp_over_http_is_refused_with_403() {
    let target = Target::echo();
    let server = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let t = target.addr;
    let answer = exchange(
        server.addr(),
        &format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\nX-Gost-Protocol: udp\r\n\r\n"),
        false,
    );
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-length: 0\r\n"),
        "{answer}"
    );
}

/// A target's answer with both `Content-Length` and `Transfer-Encoding` reaches the client,
/// framed by the latter (RFC 9112 §6.3), as through GOST.
#[test]
fn an_answer_with_both_framings_is_passed_on_chunked() {
    let target = Target::start(|stream| {
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
            if line == "\r\n" {
                let mut stream = stream;
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                );
                return;
            }
            line.clear();
        }
    });
    let server = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let out = curl(&[
        "-s",
        "-x",
        &format!("http://{}", server.addr()),
        &format!("http://{}/both", target.addr),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.text(), "abc");
}

/// A target hidden in `Gost-Target` or `X-Gost-Target` (GOST v2's clients) replaces the one
/// the request names, for CONNECT and for forwarded requests; a value that does not decode
/// is ignored, and neither header reaches the target.
#[test]
fn gost_v2_hidden_targets_are_decoded() {
    let echo = Target::echo();
    let web = Target::http();
    let server = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let hidden_echo = gost_v2_hidden_target(&echo.addr.to_string());
    let hidden_web = gost_v2_hidden_target(&web.addr.to_string());

    // CONNECT to a name that does not resolve, with the echo server hidden.
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        stream,
        "CONNECT nowhere.invalid:9 HTTP/1.1\r\nHost: nowhere.invalid:9\r\nGost-Target: {hidden_echo}\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut stream).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    echo_round_trip(stream, 64 * 1024);

    // `X-Gost-Target` wins over `Gost-Target`; the forwarded request names the hidden host.
    let answer = exchange(
        server.addr(),
        &format!(
            "GET http://nowhere.invalid/hidden HTTP/1.1\r\nGost-Target: {hidden_echo}\r\n\
             X-Gost-Target: {hidden_web}\r\nConnection: close\r\n\r\n"
        ),
        false,
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("\nhost: {}\r\n", web.addr)),
        "{answer}"
    );
    assert!(!lower.contains("gost-target"), "{answer}");

    // A value that is not GOST's encoding is ignored: the request goes where it says.
    let answer = exchange(
        server.addr(),
        &format!(
            "GET http://{}/plain HTTP/1.1\r\nGost-Target: {}\r\nConnection: close\r\n\r\n",
            web.addr, echo.addr
        ),
        false,
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("X-Request-Line: GET /plain"), "{answer}");
}

#[test]
fn an_http2_preface_is_answered_as_gost_answers_it() {
    // An HTTP/2 client with prior knowledge pointed at an HTTP/1 proxy: GOST checks
    // credentials first (407), then refuses `PRI * HTTP/2.0` with 400. hyper alone closes
    // without a word.
    const PREFACE: &str = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let open = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let answer = exchange(open.addr(), PREFACE, false);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Connection: close\r\n"), "{answer}");
    let server = seed_server();
    let answer = exchange(server.addr(), PREFACE, false);
    assert!(
        answer.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("Proxy-Authenticate: Basic realm=\"gost\"\r\n"),
        "{answer}"
    );
    // Both keep serving.
    let target = Target::http();
    let url = format!("http://{}/", target.addr);
    let out = curl(&["-s", "-x", &format!("http://{}", open.addr()), &url]);
    assert!(out.text().contains("hello from target"), "{}", out.text());
    let proxy = format!("http://user:pass@{}", server.addr());
    let out = curl(&["-s", "-x", &proxy, &url]);
    assert!(out.text().contains("hello from target"), "{}", out.text());
}

/// A request or an answer with more than 100 header fields (hyper's default limit) but far
/// under the head size limit passes, as through GOST, whose parser counts bytes only: a site
/// setting 150 cookies is not a 502, a client with 150 headers is not a 431.
#[test]
fn heads_with_many_fields_are_forwarded() {
    let target = Target::start(|stream| {
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        let mut fields = 0;
        while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
            if line == "\r\n" {
                let mut head = String::from("HTTP/1.1 200 OK\r\n");
                for i in 0..150 {
                    head.push_str(&format!("Set-Cookie: c{i}=v{i}\r\n"));
                }
                let body = format!("{fields} fields");
                head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
                let mut stream = stream;
                let _ = stream.write_all(head.as_bytes());
                return;
            }
            if line.starts_with("X-Field-") {
                fields += 1;
            }
            line.clear();
        }
    });
    let server = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let mut request = format!(
        "GET http://{0}/many HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n",
        target.addr
    );
    for i in 0..150 {
        request.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    let answer = exchange(server.addr(), &request, false);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(answer.matches("Set-Cookie: ").count(), 150, "{answer}");
    assert!(answer.ends_with("150 fields"), "{answer}");
}

/// A target that takes a forwarded request and never answers gets `readTimeout` (GOST's
/// response-header timeout, 15 s by default) from when the request is sent in full: the client
/// gets a 504 and the connection to the target is closed. A client slower than that to send
/// its body is not cut short by it.
#[test]
fn a_target_that_never_answers_times_out_after_the_request_is_sent() {
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
    let closed_tx = std::sync::Mutex::new(closed_tx);
    let target = Target::start(move |stream| {
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
            line.clear();
        }
        if head.starts_with("POST") {
            // Answers once the (slowly sent) body is in.
            let mut body = [0u8; 4];
            std::io::Read::read_exact(&mut reader, &mut body).unwrap();
            let mut stream = stream;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate");
            return;
        }
        // Never answers; notes when the proxy closes the connection.
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
        let _ = closed_tx.lock().unwrap().send(());
    });
    let server = Gost::start(&["-L", "http://127.0.0.1:0?readTimeout=1s"], 1);

    let started = std::time::Instant::now();
    let answer = exchange(
        server.addr(),
        &format!(
            "GET http://{0}/silent HTTP/1.1\r\nHost: {0}\r\n\r\n",
            target.addr
        ),
        false,
    );
    assert!(
        answer.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    closed_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the connection to the silent target stays open");

    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(
            format!(
                "POST http://{0}/slow HTTP/1.1\r\nHost: {0}\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
                target.addr
            )
            .as_bytes(),
        )
        .unwrap();
    for byte in b"body" {
        std::thread::sleep(Duration::from_millis(600));
        stream.write_all(&[*byte]).unwrap();
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("late"), "{answer}");
}

/// An auther's users file, GOST's "Data Source: File" example: users from the file next to the
/// inline ones (the file's replacing theirs), read again when the file changes; an unreadable
/// file stops the start, naming it.
#[test]
fn an_authers_users_file_is_read_and_followed() {
    let dir = tempdir();
    let target = Target::http();
    let users = dir.join("users.txt");
    std::fs::write(
        &users,
        "# username password\n\nadmin           #123456\ntest\\user001    123456\nshared file\n",
    )
    .unwrap();
    let yaml = |path: &str| {
        format!(
            "services:\n- name: service-0\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    \
             auther: auther-0\n    metadata:\n      authFailureLimit: 0\nauthers:\n- name: auther-0\n  reload: 10s\n  file:\n    path: {path}\n  \
             auths:\n  - username: inline\n    password: pass\n  - username: shared\n    password: inline\n"
        )
    };
    let server = Gost::start_config(&yaml(users.to_str().unwrap()), 1);
    let url = format!("http://{}/", target.addr);
    let status = |user: &str| {
        let proxy = format!("http://{}", server.addr());
        curl_status(&["-x", &proxy, "--proxy-user", user, &url]).text()
    };
    assert_eq!(status("admin:#123456"), "200", "{}", server.log());
    assert_eq!(status("test\\user001:123456"), "200");
    assert_eq!(status("inline:pass"), "200");
    assert_eq!(status("shared:file"), "200");
    assert_eq!(status("shared:inline"), "407");

    std::fs::write(&users, "admin changed\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status("admin:changed") != "200" {
        assert!(
            std::time::Instant::now() < deadline,
            "the new password was not taken within 10 s\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status("admin:#123456"), "407");
    assert_eq!(status("inline:pass"), "200");

    let missing = dir.join("missing.yaml");
    std::fs::write(&missing, yaml("/nonexistent/users.txt")).unwrap();
    let out = run(
        gost_bin().to_str().unwrap(),
        &["-C", missing.to_str().unwrap()],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("authers[0].file.path")
            && out.stderr.contains("/nonexistent/users.txt"),
        "{}",
        out.stderr
    );
}

/// A reload refused because the users file it names is missing is applied once the file is
/// created: the file is watched although the configuration that names it does not run.
#[test]
fn a_users_file_missing_at_a_reload_is_applied_when_it_appears() {
    let dir = tempdir();
    let target = Target::http();
    let yaml = |path: &Path| {
        format!(
            "services:\n- name: service-0\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    \
             auther: auther-0\n    metadata:\n      authFailureLimit: 0\nauthers:\n- name: auther-0\n  \
             file:\n    path: {}\n",
            path.display()
        )
    };
    let first = dir.join("users.txt");
    std::fs::write(&first, "old oldpass\n").unwrap();
    let config = dir.join("gost.yaml");
    std::fs::write(&config, yaml(&first)).unwrap();
    let server = Gost::start(&["-C", config.to_str().unwrap()], 1);
    let url = format!("http://{}/", target.addr);
    let status = |user: &str| {
        let proxy = format!("http://{}", server.addr());
        curl_status(&["-x", &proxy, "--proxy-user", user, &url]).text()
    };
    assert_eq!(status("old:oldpass"), "200", "{}", server.log());

    let second = dir.join("later.txt");
    std::fs::write(&config, yaml(&second)).unwrap();
    server.wait_for_log("configuration refused");
    assert!(server.log().contains("later.txt"), "{}", server.log());
    assert_eq!(
        status("old:oldpass"),
        "200",
        "the refused reload stopped the old users"
    );

    std::fs::write(&second, "new newpass\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status("new:newpass") != "200" {
        assert!(
            std::time::Instant::now() < deadline,
            "the file created after the refusal was not applied within 10 s\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status("old:oldpass"), "407");
}

/// A node's `auth.file` (GOST 3.1): the connector sends the file's first user. A server's
/// `auth` takes no file, since GOST would then ask for no password at all.
#[test]
fn a_connectors_auth_file_sends_its_first_user() {
    let dir = tempdir();
    let target = Target::http();
    let server = Gost::start(&["-L", "socks5://user1:pass1@127.0.0.1:0"], 1);
    let users = dir.join("auth.txt");
    std::fs::write(&users, "# username password\n\nuser1 pass1\nuser2 pass2\n").unwrap();
    let client = Gost::start_config(
        &format!(
            "services:\n- name: service-0\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    \
             chain: chain-0\nchains:\n- name: chain-0\n  hops:\n  - name: hop-0\n    nodes:\n    \
             - name: node-0\n      addr: {}\n      connector:\n        type: socks5\n        \
             auth:\n          file: {}\n",
            server.addr(),
            users.display()
        ),
        1,
    );
    let out = curl(&[
        "-x",
        &format!("http://{}", client.addr()),
        &format!("http://{}/", target.addr),
    ]);
    assert!(
        out.text().starts_with("hello from target"),
        "{}\n{}",
        out.stderr,
        client.log()
    );

    let file = dir.join("server.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n- name: s\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    auth:\n      \
             file: {}\n",
            users.display()
        ),
    )
    .unwrap();
    let out = run(
        gost_bin().to_str().unwrap(),
        &["-C", file.to_str().unwrap(), "-O", "yaml"],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("services[0].handler.auth.file") && out.stderr.contains("auther"),
        "{}",
        out.stderr
    );
}
