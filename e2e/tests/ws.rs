//! The `ws` and `wss` transports with real `gost` processes: the tutorial's SOCKS5 over
//! WebSocket in CLI and YAML form, wss, refusals, custom paths, bulk transfer with half-close,
//! an independent WebSocket client, and chains mixing ws with plain hops.

use std::io::Write;
use std::net::TcpStream;

use gost_e2e::*;

/// Bytes pushed each way in the bulk test: far more than any buffer on the way, so that
/// back-pressure and message splitting are exercised.
const BULK: usize = 16 << 20;

fn get_via(proxy: std::net::SocketAddr, target: &Target, path: &str) -> Output {
    curl(&[
        "-x",
        &format!("http://{proxy}"),
        &format!("http://{}/{path}", target.addr),
    ])
}

fn assert_hello(out: &Output, what: &str) {
    assert_eq!(out.code, 0, "{what}: {}", out.stderr);
    assert!(
        out.text().starts_with("hello from target"),
        "{what}: {}",
        out.text()
    );
}

/// The node address as the tutorial writes it: only a port.
fn port_only(gost: &Gost) -> String {
    format!(":{}", gost.addr().port())
}

/// Sends a raw HTTP request head to `addr` and returns the response head.
fn raw_request(addr: std::net::SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    read_head(&mut stream).unwrap()
}

fn upgrade_head(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[test]
fn seed_socks5_over_ws_cli() {
    let target = Target::http();
    let server = Gost::start(&["-L", "socks5+ws://user:pass@127.0.0.1:0"], 1);
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5+ws://user:pass@{}", port_only(&server)),
        ],
        1,
    );
    assert_hello(&get_via(client.addr(), &target, "seed"), "socks5+ws");
    assert!(!server.log().contains("pass"), "a password reached the log");
}

#[test]
fn seed_socks5_over_ws_yaml() {
    let target = Target::http();
    let server = Gost::start_config(
        "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: socks5\n    auth:\n      username: user\n      password: pass\n  listener:\n    type: ws\n",
        1,
    );
    let client = Gost::start_config(
        &format!(
            "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: http\n    chain: chain-0\n  listener:\n    type: tcp\nchains:\n- name: chain-0\n  hops:\n  - name: hop-0\n    nodes:\n    - name: node-0\n      addr: \"{}\"\n      connector:\n        type: socks5\n        auth:\n          username: user\n          password: pass\n      dialer:\n        type: ws\n",
            port_only(&server)
        ),
        1,
    );
    assert_hello(&get_via(client.addr(), &target, "yaml"), "yaml socks5+ws");
}

#[test]
fn socks5_over_wss() {
    let target = Target::http();
    let echo = Target::echo();
    let server = Gost::start(&["-L", "socks5+wss://user:pass@127.0.0.1:0"], 1);
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5+wss://user:pass@{}", server.addr()),
        ],
        1,
    );
    assert_hello(&get_via(client.addr(), &target, "wss"), "socks5+wss");
    let tunnel = http_connect(client.addr(), &echo.addr.to_string(), None).unwrap();
    echo_round_trip(tunnel, 1 << 20);
    // A plain ws client cannot talk to the TLS listener.
    let plain = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5+ws://user:pass@{}", server.addr()),
        ],
        1,
    );
    let out = get_via(plain.addr(), &target, "plain");
    assert!(!out.text().starts_with("hello from target"));
}

#[test]
fn wrong_password_is_refused() {
    let target = Target::http();
    let server = Gost::start(&["-L", "socks5+ws://user:pass@127.0.0.1:0"], 1);
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5+ws://user:wrong@{}", server.addr()),
        ],
        1,
    );
    let out = curl(&[
        "-w",
        "%{http_code}",
        "-x",
        &format!("http://{}", client.addr()),
        &format!("http://{}/denied", target.addr),
    ]);
    assert!(
        !out.text().contains("hello from target"),
        "refused credentials got through: {}",
        out.text()
    );
    let status = &out.text()[out.text().len().saturating_sub(3)..];
    assert!(
        status.starts_with('5'),
        "expected a 5xx from the client proxy, got {status}"
    );
}

#[test]
fn custom_path_on_both_sides_and_404_elsewhere() {
    let target = Target::http();
    let server = Gost::start(&["-L", "socks5+ws://user:pass@127.0.0.1:0?path=/tunnel"], 1);
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5+ws://user:pass@{}?path=/tunnel", server.addr()),
        ],
        1,
    );
    assert_hello(&get_via(client.addr(), &target, "path"), "custom path");

    // The default path is not served any more, with any method.
    let head = raw_request(server.addr(), &upgrade_head("/ws"));
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    let head = raw_request(server.addr(), "POST /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    // On the right path: a broken upgrade is a 400, another method a 405, a proper one a 101.
    let head = raw_request(server.addr(), "GET /tunnel HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    let head = raw_request(server.addr(), "PUT /tunnel HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    let head = raw_request(server.addr(), &upgrade_head("/tunnel"));
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n")
            && head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );

    // A client on the default path is refused by the server's 404.
    let wrong = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5+ws://user:pass@{}", server.addr()),
        ],
        1,
    );
    let out = get_via(wrong.addr(), &target, "wrong-path");
    assert!(!out.text().starts_with("hello from target"));
    assert!(
        wrong.log().contains("404"),
        "the refusal is not explained in the log:\n{}",
        wrong.log()
    );
}

#[test]
fn a_path_with_a_question_mark_is_escaped_and_matched_as_gost_does() {
    let target = Target::http();
    let server = Gost::start(&["-L", "socks5+ws://127.0.0.1:0?path=/ws?token=abc"], 1);
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5+ws://{}?path=/ws?token=abc", server.addr()),
        ],
        1,
    );
    assert_hello(&get_via(client.addr(), &target, "q"), "path with a ?");
    // What a GOST client sends for that path; the unescaped form is another path (with a
    // query).
    let head = raw_request(server.addr(), &upgrade_head("/ws%3Ftoken=abc"));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let head = raw_request(server.addr(), &upgrade_head("/ws?token=abc"));
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
}

#[test]
fn response_headers_from_yaml_header_map() {
    let dir = tempdir();
    let yaml = dir.join("server.yaml");
    std::fs::write(
        &yaml,
        "services:\n- name: s\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: socks5\n  listener:\n    type: ws\n    metadata:\n      header:\n        X-Served-By: gost-rs\n",
    )
    .unwrap();
    let server = Gost::start(&["-C", yaml.to_str().unwrap()], 1);
    let head = raw_request(server.addr(), &upgrade_head("/ws"));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("X-Served-By: gost-rs\r\n"), "{head}");
}

#[test]
fn sixteen_mebibytes_both_ways_with_half_close() {
    let echo = Target::echo();
    let server = Gost::start(&["-L", "socks5+ws://user:pass@127.0.0.1:0"], 1);
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5+ws://user:pass@{}", server.addr()),
        ],
        1,
    );
    // The sender half-closes after its last byte; all of the echo must still come back and
    // then end, which needs half-close to cross the WebSocket in both directions.
    let tunnel = http_connect(client.addr(), &echo.addr.to_string(), None).unwrap();
    echo_round_trip(tunnel, BULK);
}

#[test]
fn independent_websocket_client_speaks_socks5() {
    let target = Target::http();
    let server = Gost::start(&["-L", "socks5+ws://user:pass@127.0.0.1:0"], 1);
    let url = format!("ws://{}/ws", server.addr());
    python_checks(
        "ws_socks5_client.py",
        &[
            url.clone(),
            target.addr.to_string(),
            "user".into(),
            "pass".into(),
        ],
        &["auth ok", "connect ok", "response ok"],
    );
    python_checks(
        "ws_socks5_client.py",
        &[url, target.addr.to_string(), "user".into(), "bad".into()],
        &["auth refused"],
    );
}

#[test]
fn chains_mixing_ws_and_http_hops() {
    let target = Target::http();
    let ws_hop = Gost::start(&["-L", "socks5+ws://user:pass@127.0.0.1:0"], 1);
    let http_hop = Gost::start(&["-L", "http://b:2@127.0.0.1:0"], 1);

    // ws first: the WebSocket is dialled over TCP, the http hop is reached through it.
    let front = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5+ws://user:pass@{}", ws_hop.addr()),
            "-F",
            &format!("http://b:2@{}", http_hop.addr()),
        ],
        1,
    );
    assert_hello(&get_via(front.addr(), &target, "ws-then-http"), "ws, http");

    // ws second: the WebSocket upgrade runs inside the http hop's tunnel.
    let front = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("http://b:2@{}", http_hop.addr()),
            "-F",
            &format!("socks5+ws://user:pass@{}", ws_hop.addr()),
        ],
        1,
    );
    assert_hello(&get_via(front.addr(), &target, "http-then-ws"), "http, ws");
}

#[test]
fn keepalive_pings_keep_an_idle_tunnel_open() {
    let echo = Target::echo();
    let server = Gost::start(&["-L", "socks5+ws://user:pass@127.0.0.1:0"], 1);
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!(
                "socks5+ws://user:pass@{}?keepalive=true&ttl=1s",
                server.addr()
            ),
        ],
        1,
    );
    let tunnel = http_connect(client.addr(), &echo.addr.to_string(), None).unwrap();
    // Idle for more than twice the interval: only the server's pongs keep the client from
    // declaring the WebSocket dead.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    echo_round_trip(tunnel, 64 * 1024);
}

/// A node that closes the connection instead of answering the upgrade (restarting, not a
/// WebSocket server) fails the dial at once, not at the handshake timeout, so failover and
/// the client's 502 do not wait 15 s.
#[test]
fn a_node_that_closes_during_the_upgrade_fails_the_dial_at_once() {
    let closer = Target::start(|stream| {
        let mut reader = std::io::BufReader::new(stream);
        let mut line = String::new();
        // Reads the upgrade request's head, then hangs up.
        while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
            if line == "\r\n" {
                return;
            }
            line.clear();
        }
    });
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("relay+ws://{}?handshakeTimeout=60s", closer.addr),
        ],
        1,
    );
    let started = std::time::Instant::now();
    let refused = http_connect(client.addr(), "127.0.0.1:9", None);
    assert!(refused.is_err(), "CONNECT through a dead node succeeded");
    // It used to wait for a timeout: the upgrade's, or the chain's 15 s dial timeout.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the dial waited {:?} for a timeout",
        started.elapsed()
    );
    assert!(
        !client.log().contains("took longer than"),
        "{}",
        client.log()
    );
}
