//! HTTP/2 transports with real `gost` processes: the `http2` CONNECT proxy and the `h2`/`h2c`
//! tunnels, as in the seed page's examples, plus multiplexing, reconnection, bulk data, an
//! independent HTTP/2 client and chains.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gost_e2e::*;

/// Concurrent tunnels that must share one HTTP/2 connection.
const CONCURRENT_TUNNELS: usize = 100;

/// Bytes echoed per concurrent tunnel: several DATA frames each, so streams interleave.
const BYTES_PER_TUNNEL: usize = 200 * 1024;

/// The bulk transfer that must arrive byte for byte.
const BULK_BYTES: usize = 16 * 1024 * 1024;

/// How long a client may take to use a restarted server: covers the reconnect backoff cap
/// (2 s) with room to spare.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(20);

fn get_via(proxy: &str, target: &Target, path: &str) -> Output {
    curl(&["-x", proxy, &format!("http://{}{path}", target.addr)])
}

fn assert_get_works(proxy: &str, target: &Target) {
    let out = get_via(proxy, target, "/h2");
    assert_eq!(out.code, 0, "{proxy}: {}", out.stderr);
    assert!(
        out.text().starts_with("hello from target"),
        "{proxy}: {}",
        out.text()
    );
}

fn client(scheme: &str, server: SocketAddr) -> Gost {
    Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("{scheme}://user:pass@{server}"),
        ],
        1,
    )
}

/// Established TCP connections whose local port is `port` (the server side of them).
fn established_to(port: u16) -> usize {
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[test]
fn http2_seed_example_command_line() {
    let target = Target::http();
    let server = Gost::start(&["-L", "http2://user:pass@127.0.0.1:0"], 1);
    let client = client("http2", server.addr());
    assert_get_works(&format!("http://{}", client.addr()), &target);
    // A CONNECT through the client rides the same HTTP/2 connection.
    let tunnel = http_connect(client.addr(), &target.addr.to_string(), None).expect("CONNECT");
    drop(tunnel);
    let log = server.log();
    assert!(log.contains("\"protocol\":\"http2\""), "{log}");
}

#[test]
fn http2_seed_example_yaml() {
    let target = Target::http();
    let server = Gost::start_config(
        "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: http2\n    auth:\n      username: user\n      password: pass\n  listener:\n    type: http2\n",
        1,
    );
    let client = Gost::start_config(
        &format!(
            "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: http\n    chain: chain-0\n  listener:\n    type: tcp\nchains:\n- name: chain-0\n  hops:\n  - name: hop-0\n    nodes:\n    - name: node-0\n      addr: {}\n      connector:\n        type: http2\n        auth:\n          username: user\n          password: pass\n      dialer:\n        type: http2\n",
            server.addr()
        ),
        1,
    );
    assert_get_works(&format!("http://{}", client.addr()), &target);
}

#[test]
fn socks5_over_h2_and_h2c_seed_examples() {
    let target = Target::http();
    for scheme in ["socks5+h2", "socks5+h2c"] {
        let server = Gost::start(&["-L", &format!("{scheme}://user:pass@127.0.0.1:0")], 1);
        let client = client(scheme, server.addr());
        assert_get_works(&format!("http://{}", client.addr()), &target);
    }
}

#[test]
fn socks5_over_h2_yaml() {
    let target = Target::http();
    let server = Gost::start_config(
        "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: socks5\n    auth:\n      username: user\n      password: pass\n  listener:\n    type: h2\n",
        1,
    );
    let client = Gost::start_config(
        &format!(
            "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: http\n    chain: chain-0\n  listener:\n    type: tcp\nchains:\n- name: chain-0\n  hops:\n  - name: hop-0\n    nodes:\n    - name: node-0\n      addr: {}\n      connector:\n        type: socks5\n        auth:\n          username: user\n          password: pass\n      dialer:\n        type: h2\n",
            server.addr()
        ),
        1,
    );
    assert_get_works(&format!("http://{}", client.addr()), &target);
}

#[test]
fn wrong_password_fails_on_every_transport() {
    let target = Target::http();
    for scheme in ["http2", "socks5+h2", "socks5+h2c"] {
        let server = Gost::start(&["-L", &format!("{scheme}://user:pass@127.0.0.1:0")], 1);
        let client = Gost::start(
            &[
                "-L",
                "http://127.0.0.1:0",
                "-F",
                &format!("{scheme}://user:wrong@{}", server.addr()),
            ],
            1,
        );
        let out = curl(&[
            "-i",
            "-x",
            &format!("http://{}", client.addr()),
            &format!("http://{}/", target.addr),
        ]);
        let text = out.text();
        assert!(!text.contains("hello from target"), "{scheme}: {text}");
        assert!(
            text.starts_with("HTTP/1.1 5"),
            "{scheme}: the client must report an upstream failure: {text}"
        );
    }
}

#[test]
fn h2c_path_must_match() {
    let target = Target::http();
    let server = Gost::start(&["-L", "socks5+h2c://user:pass@127.0.0.1:0?path=/tun"], 1);
    let right = client_with(&format!(
        "socks5+h2c://user:pass@{}?path=/tun",
        server.addr()
    ));
    assert_get_works(&format!("http://{}", right.addr()), &target);
    let wrong = client_with(&format!(
        "socks5+h2c://user:pass@{}?path=/other",
        server.addr()
    ));
    let out = get_via(&format!("http://{}", wrong.addr()), &target, "/");
    assert!(!out.text().contains("hello from target"), "{}", out.text());
    // Without a path the client sends CONNECT, which a path-mode server refuses too.
    let connect = client("socks5+h2c", server.addr());
    let out = get_via(&format!("http://{}", connect.addr()), &target, "/");
    assert!(!out.text().contains("hello from target"), "{}", out.text());
}

fn client_with(node: &str) -> Gost {
    Gost::start(&["-L", "http://127.0.0.1:0", "-F", node], 1)
}

#[test]
fn hundred_concurrent_tunnels_share_one_connection() {
    let echo = Target::echo();
    for scheme in ["socks5+h2c", "http2"] {
        let server = Gost::start(&["-L", &format!("{scheme}://user:pass@127.0.0.1:0")], 1);
        let client = client(scheme, server.addr());
        let proxy = client.addr();
        let echo_addr = echo.addr.to_string();
        let workers: Vec<_> = (0..CONCURRENT_TUNNELS)
            .map(|_| {
                let echo_addr = echo_addr.clone();
                thread::spawn(move || {
                    let stream = http_connect(proxy, &echo_addr, None).expect("CONNECT");
                    echo_round_trip(stream, BYTES_PER_TUNNEL);
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("tunnel echoed correctly");
        }
        assert_eq!(
            established_to(server.addr().port()),
            1,
            "{scheme}: the server must see exactly one TCP connection"
        );
        let dials = client
            .log()
            .matches("HTTP/2 connection established")
            .count();
        assert_eq!(dials, 1, "{scheme}: one HTTP/2 connection expected");
        let tunnels = server.log().matches("\"msg\":\"tunnel\"").count();
        assert_eq!(tunnels, CONCURRENT_TUNNELS, "{scheme}");
    }
}

#[test]
fn client_reconnects_after_server_restart() {
    let target = Target::http();
    for scheme in ["socks5+h2c", "http2"] {
        let server = Gost::start(&["-L", &format!("{scheme}://user:pass@127.0.0.1:0")], 1);
        let addr = server.addr();
        let client = client(scheme, addr);
        let proxy = format!("http://{}", client.addr());
        assert_get_works(&proxy, &target);
        drop(server);
        let restarted = Gost::start(&["-L", &format!("{scheme}://user:pass@{addr}")], 1);
        let deadline = Instant::now() + RECONNECT_DEADLINE;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let out = get_via(&proxy, &target, "/again");
            if out.code == 0 && out.text().starts_with("hello from target") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{scheme}: no success within {RECONNECT_DEADLINE:?} ({attempts} attempts); client log:\n{}",
                client.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
        restarted.wait_for_log("\"msg\":\"tunnel\"");
    }
}

#[test]
fn sixteen_mib_arrive_byte_identical() {
    let echo = Target::echo();
    for scheme in ["socks5+h2", "socks5+h2c", "http2"] {
        let server = Gost::start(&["-L", &format!("{scheme}://user:pass@127.0.0.1:0")], 1);
        let client = client(scheme, server.addr());
        let stream = http_connect(client.addr(), &echo.addr.to_string(), None).expect("CONNECT");
        echo_round_trip(stream, BULK_BYTES);
    }
}

#[test]
fn independent_http2_client_python_h2() {
    let target = Target::http();
    let server = Gost::start(&["-L", "http2://user:pass@127.0.0.1:0"], 1);
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    python_checks(
        "h2_connect.py",
        &[
            server.addr().to_string(),
            target.addr.to_string(),
            dead.to_string(),
        ],
        &[
            "alpn h2 ok",
            "connect tunnel ok",
            "cancelled tunnel ok",
            "407 ok",
            "no credentials ok",
            "503 ok",
            "forward ok",
        ],
    );
    // The cancelled tunnel is a reset, not an error; the other one closed cleanly.
    server.wait_for_log("\"outcome\":\"reset\"");
    server.wait_for_log("\"outcome\":\"closed\"");
    assert!(
        !server.log().contains("\"outcome\":\"error\""),
        "{}",
        server.log()
    );
}

#[test]
fn http1_clients_of_the_http2_listener_get_an_https_proxy() {
    let target = Target::http();
    let server = Gost::start(&["-L", "http2://user:pass@127.0.0.1:0"], 1);
    let out = curl(&[
        "--proxy-insecure",
        "--proxy-http2",
        "-x",
        &format!("https://user:pass@{}", server.addr()),
        &format!("http://{}/", target.addr),
    ]);
    // curl may or may not speak HTTP/2 to a proxy; without --proxy-http2 support it uses
    // HTTP/1.1 over TLS. Either way the request must get through.
    if out.code == 2 {
        // This curl does not know --proxy-http2: plain HTTPS proxy it is.
        let out = curl(&[
            "--proxy-insecure",
            "-x",
            &format!("https://user:pass@{}", server.addr()),
            &format!("http://{}/", target.addr),
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.text().starts_with("hello from target"));
    } else {
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.text().starts_with("hello from target"));
    }
    let out = curl(&[
        "--proxy-insecure",
        "--http1.1",
        "-x",
        &format!("https://user:pass@{}", server.addr()),
        &format!("http://{}/", target.addr),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.text().starts_with("hello from target"));
}

#[test]
fn chain_h2c_then_http() {
    let target = Target::http();
    let a = Gost::start(&["-L", "socks5+h2c://user:pass@127.0.0.1:0"], 1);
    let b = Gost::start(&["-L", "http://u2:p2@127.0.0.1:0"], 1);
    let front = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5+h2c://user:pass@{}", a.addr()),
            "-F",
            &format!("http://u2:p2@{}", b.addr()),
        ],
        1,
    );
    assert_get_works(&format!("http://{}", front.addr()), &target);
    // And an HTTP/2 transport as the second hop, over the first hop's tunnel.
    let c = Gost::start(&["-L", "socks5+h2://user:pass@127.0.0.1:0"], 1);
    let front2 = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("http://u2:p2@{}", b.addr()),
            "-F",
            &format!("socks5+h2://user:pass@{}", c.addr()),
        ],
        1,
    );
    assert_get_works(&format!("http://{}", front2.addr()), &target);
    // The http2 dialer and connector as the second hop: a dedicated HTTP/2 connection inside
    // the first hop's tunnel.
    let d = Gost::start(&["-L", "http2://user:pass@127.0.0.1:0"], 1);
    let front3 = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("http://u2:p2@{}", b.addr()),
            "-F",
            &format!("http2://user:pass@{}", d.addr()),
        ],
        1,
    );
    assert_get_works(&format!("http://{}", front3.addr()), &target);
    // The tunnel's line is written as the tunnel is torn down, after curl has its answer.
    d.wait_for_log("\"protocol\":\"http2\"");
}

#[test]
fn http2_handler_needs_the_http2_listener() {
    let dir = tempdir();
    let yaml = dir.join("bad.yaml");
    std::fs::write(
        &yaml,
        "services:\n- name: s\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: http2\n  listener:\n    type: tcp\n",
    )
    .unwrap();
    let out = run(
        gost_bin().to_str().unwrap(),
        &["-C", yaml.to_str().unwrap()],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("works only with listener type `http2`"),
        "{}",
        out.stderr
    );
}

/// The `http2` handler decodes GOST v2's hidden targets as the `http` one does: the request
/// goes to the host in `Gost-Target` / `X-Gost-Target`, which never reaches the target.
#[test]
fn http2_handler_decodes_gost_v2_hidden_targets() {
    let echo = Target::echo();
    let web = Target::http();
    let server = Gost::start(&["-L", "http2://user:pass@127.0.0.1:0"], 1);
    let request = |method: &str, path: &str, header: String| {
        let out = python(
            "h2_request.py",
            &[
                &server.addr().to_string(),
                method,
                "nowhere.invalid:9",
                path,
                "user:pass",
                &header,
            ],
        );
        assert_eq!(out.code, 0, "{}\n{}", out.text(), out.stderr);
        serde_json::from_str::<serde_json::Value>(out.text().trim()).unwrap()
    };
    let answer = request(
        "CONNECT",
        "-",
        format!(
            "gost-target:{}",
            gost_v2_hidden_target(&echo.addr.to_string())
        ),
    );
    assert_eq!(answer["status"], "200", "{answer}");
    let answer = request(
        "GET",
        "/hidden",
        format!(
            "x-gost-target:{}",
            gost_v2_hidden_target(&web.addr.to_string())
        ),
    );
    assert_eq!(answer["status"], "200", "{answer}");
    let body = answer["body"].as_str().unwrap().to_ascii_lowercase();
    assert!(body.starts_with("hello from target"), "{body}");
    assert!(!body.contains("gost-target"), "{body}");
}

/// Idle tunnels held open on one HTTP/2 connection for the memory check.
const IDLE_TUNNELS: usize = 1000;

/// Most the server's resident memory may grow for [`IDLE_TUNNELS`] idle tunnels: a few KiB
/// each for the stream, the relay and the upstream socket. Buffering per stream (GOST's 1 MiB
/// windows, or a relay buffer per idle direction) would blow far past it.
const IDLE_TUNNELS_MAX_GROWTH_KIB: u64 = 12 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn thousand_idle_tunnels_stay_small() {
    let echo = Target::echo();
    // `notls`: GOST's TLS-inside-SOCKS5 would add a TLS session per tunnel, which is not
    // what this test measures.
    let server = Gost::start(&["-L", "socks5+h2c://user:pass@127.0.0.1:0?notls=true"], 1);
    let client = client("socks5+h2c", server.addr());
    let echo_addr = echo.addr.to_string();
    // Warm up: the connection, the runtime's threads and the allocator's first arenas.
    let mut tunnels = Vec::with_capacity(IDLE_TUNNELS);
    for _ in 0..8 {
        let mut stream = http_connect(client.addr(), &echo_addr, None).expect("CONNECT");
        echo_small(&mut stream);
        tunnels.push(stream);
    }
    let before = rss_kib(server.pid());
    while tunnels.len() < IDLE_TUNNELS {
        let mut stream = http_connect(client.addr(), &echo_addr, None).expect("CONNECT");
        echo_small(&mut stream);
        tunnels.push(stream);
    }
    thread::sleep(Duration::from_millis(300));
    let after = rss_kib(server.pid());
    let growth = after.saturating_sub(before);
    eprintln!(
        "server RSS {before} KiB -> {after} KiB for {IDLE_TUNNELS} idle tunnels; client RSS {} KiB",
        rss_kib(client.pid())
    );
    assert!(
        growth <= IDLE_TUNNELS_MAX_GROWTH_KIB,
        "server grew by {growth} KiB for {IDLE_TUNNELS} idle tunnels"
    );
    assert_eq!(established_to(server.addr().port()), 1);
    // Every tunnel still works after sitting idle.
    for stream in tunnels.iter_mut().step_by(97) {
        echo_small(stream);
    }
}

/// One small echo exchange on an open tunnel.
fn echo_small(stream: &mut std::net::TcpStream) {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

/// GOST's http2 handler reads `readTimeout` as its tunnels' idle timeout: a tunnel that
/// carries nothing for that long is closed, one that carries data is not.
#[test]
fn http2_read_timeout_closes_idle_tunnels() {
    use std::io::{Read, Write};
    let echo = Target::echo();
    let server = Gost::start(&["-L", "http2://127.0.0.1:0?readTimeout=1s"], 1);
    let client = client("http2", server.addr());
    let mut tunnel = http_connect(client.addr(), &echo.addr.to_string(), None).expect("CONNECT");
    tunnel
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Busy for longer than the timeout: it stays open.
    let mut buf = [0u8; 4];
    for _ in 0..6 {
        tunnel.write_all(b"ping").unwrap();
        tunnel.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        thread::sleep(Duration::from_millis(400));
    }
    // Idle: closed after about a second.
    let started = Instant::now();
    let n = tunnel.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the idle tunnel was closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
}

/// A stopping server sends GOAWAY on its HTTP/2 connections, so that the client's pool opens
/// its next tunnels elsewhere instead of on a connection whose streams nobody takes: here
/// the client re-dials, finds the port closed and answers 502 at once, where it used to
/// answer 200 for a stream that was then reset.
#[test]
fn a_stopping_server_sends_goaway_and_new_tunnels_go_elsewhere() {
    let echo = Target::echo();
    let target = echo.addr.to_string();
    for scheme in ["relay+h2c", "relay+h2", "relay+grpc"] {
        let server = Gost::start(&["-L", &format!("{scheme}://127.0.0.1:0")], 1);
        let client = client_with(&format!("{scheme}://{}", server.addr()));
        // A tunnel that keeps the stopping server draining (grace period 30 s).
        let mut open = http_connect(client.addr(), &target, None).expect("CONNECT");
        open.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        open.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        open.read_exact(&mut got).unwrap();
        server.signal("TERM");
        server.wait_for_log("stopped accepting");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut refused = false;
        while Instant::now() < deadline {
            if http_connect(client.addr(), &target, None).is_err() {
                refused = true;
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        assert!(
            refused,
            "{scheme}: new tunnels still went to the stopping server"
        );
        // The tunnel under way finishes undisturbed.
        open.write_all(b"pong").unwrap();
        open.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong", "{scheme}");
    }
}

/// The `http2` connector waits for the proxy's answer as long as the chain's `dialTimeout`
/// allows: it had a 15 s limit of its own, although GOST's has none unless `timeout` is set.
#[test]
fn http2_connector_waits_past_15_seconds_within_the_dial_timeout() {
    let target = Target::echo();
    // An HTTP proxy behind the http2 server that answers CONNECT after 16 s, then echoes: the
    // http2 server answers its client only then.
    let slow = Target::slow_http_proxy(Duration::from_secs(16));
    let server = Gost::start(
        &[
            "-L",
            "http2://user:pass@127.0.0.1:0?dialTimeout=40s",
            "-F",
            &format!("http://{}", slow.addr),
        ],
        1,
    );
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0?dialTimeout=40s",
            "-F",
            &format!("http2://user:pass@{}", server.addr()),
        ],
        1,
    );
    let started = Instant::now();
    let mut stream = http_connect(client.addr(), &target.addr.to_string(), None)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", client.log(), server.log()));
    assert!(started.elapsed() >= Duration::from_secs(15));
    stream.write_all(b"ping").unwrap();
    let mut pong = [0u8; 4];
    stream.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"ping");
}

/// A client whose node was down long enough to back off uses the restarted server with the
/// first tunnel asked for: the tunnel waits for the next attempt instead of failing at once
/// until the backoff ends. The HTTP/2 pool (`http2`) and the gRPC client (`relay+grpc`, a
/// relay node: `nodelay` so the tunnel is checked before curl's request).
#[test]
fn first_tunnel_after_a_restart_waits_for_the_backoff() {
    let target = Target::http();
    for (scheme, query) in [("relay+grpc", "?nodelay=true"), ("http2", "")] {
        let server = Gost::start(&["-L", &format!("{scheme}://user:pass@127.0.0.1:0")], 1);
        let addr = server.addr();
        let client = Gost::start(
            &[
                "-L",
                "http://127.0.0.1:0",
                "-F",
                &format!("{scheme}://user:pass@{addr}{query}"),
            ],
            1,
        );
        let proxy = format!("http://{}", client.addr());
        assert_get_works(&proxy, &target);
        drop(server);
        // Failed dials while the server is down: the backoff doubles from 250 ms with each.
        let down_until = Instant::now() + Duration::from_secs(3);
        let mut failures = 0;
        while Instant::now() < down_until && failures < 40 {
            let out = get_via(&proxy, &target, "/down");
            assert!(
                !out.text().starts_with("hello from target"),
                "{scheme}: server is down"
            );
            failures += 1;
            thread::sleep(Duration::from_millis(100));
        }
        let restarted = Gost::start(&["-L", &format!("{scheme}://user:pass@{addr}")], 1);
        let started = Instant::now();
        let out = get_via(&proxy, &target, "/again");
        assert!(
            out.code == 0 && out.text().starts_with("hello from target"),
            "{scheme}: the first tunnel after the restart failed after {:?} ({failures} failed \
             before): {}\nclient log:\n{}",
            started.elapsed(),
            out.stderr,
            client.log()
        );
        restarted.wait_for_log("\"msg\":\"tunnel\"");
    }
}

/// Tunnels asked for at once through a node that is down all fail within about one backoff
/// period: those that wait for the next attempt share it, rather than queueing behind each
/// other for one attempt (and one doubled backoff) each.
#[test]
fn concurrent_tunnels_to_a_dead_node_fail_together() {
    let target = Target::http();
    // A port with nothing listening: bound, then closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for scheme in ["http2", "relay+grpc"] {
        let client = Gost::start(
            &[
                "-L",
                "http://127.0.0.1:0",
                "-F",
                &format!("{scheme}://user:pass@{dead}"),
            ],
            1,
        );
        let proxy = format!("http://{}", client.addr());
        let started = Instant::now();
        let requests: Vec<_> = (0..10)
            .map(|i| {
                let proxy = proxy.clone();
                let url = format!("http://{}/dead-{i}", target.addr);
                thread::spawn(move || {
                    let out = curl(&["--max-time", "30", "-p", "-x", &proxy, &url]);
                    (out, started.elapsed())
                })
            })
            .collect();
        for request in requests {
            let (out, took) = request.join().unwrap();
            assert!(
                !out.text().starts_with("hello from target"),
                "{scheme}: the node is down"
            );
            assert!(
                took < Duration::from_secs(3),
                "{scheme}: a tunnel to the dead node took {took:?} to fail\nclient log:\n{}",
                client.log()
            );
        }
        // Those that failed on another's attempt say what that attempt ended with.
        let log = client.log();
        let shared: Vec<&str> = log.lines().filter(|l| l.contains("in a row")).collect();
        assert!(!shared.is_empty(), "{scheme}: no shared failure\n{log}");
        for line in shared {
            assert!(
                line.to_lowercase().contains("refused"),
                "{scheme}: the cause is missing: {line}"
            );
        }
    }
}

/// A server lost behind a balancer (its node lost, a partition, a pod replaced behind a
/// Service): the client's HTTP/2 connection still leads to it and nothing comes back, no FIN,
/// no RST, while a replacement takes new connections. A new tunnel finds the old connection
/// silent within a few seconds (its request and a PING unanswered) and opens on a new one,
/// instead of timing out (15 s) on the old one until keepalive ends it (45 s). The HTTP/2
/// pool's two paths: `relay+h2c` (the dialer opens the tunnel) and `http2` (the connector).
#[test]
fn a_new_tunnel_leaves_a_connection_whose_server_was_lost() {
    let target = Target::http();
    for scheme in ["relay+h2c", "http2"] {
        let old = Gost::start(&["-L", &format!("{scheme}://user:pass@127.0.0.1:0")], 1);
        let balancer = TcpBalancer::start(old.addr());
        let client = Gost::start(
            &[
                "-L",
                "http://127.0.0.1:0",
                "-F",
                &format!("{scheme}://user:pass@{}", balancer.addr),
            ],
            1,
        );
        let proxy = format!("http://{}", client.addr());
        assert_get_works(&proxy, &target);
        let new = Gost::start(&["-L", &format!("{scheme}://user:pass@127.0.0.1:0")], 1);
        balancer.switch_to(new.addr());
        balancer.lose_connections();
        // Before: curl gave up at 10 s, the client's answer (504) came at 15 s.
        let out = curl(&[
            "--max-time",
            "10",
            "-x",
            &proxy,
            &format!("http://{}/after-the-loss", target.addr),
        ]);
        assert!(
            out.code == 0 && out.text().starts_with("hello from target"),
            "{scheme}: {}\nclient log:\n{}",
            out.stderr,
            client.log()
        );
        client.wait_for_log("HTTP/2 connection silent");
        new.wait_for_log("\"msg\":\"tunnel\"");
    }
}

/// How long a [`TcpBalancer`] forwards at most: longer than any test using it runs.
const TCP_BALANCER_LIFETIME: Duration = Duration::from_secs(120);

/// How often a [`TcpBalancer`]'s threads look at their stop flag.
const TCP_BALANCER_POLL: Duration = Duration::from_millis(50);

/// Connections a [`TcpBalancer`] carries at most; further ones are closed at once.
const TCP_BALANCER_CONNECTIONS: usize = 16;

/// A TCP balancer in front of servers, as a Service is in front of pods: each connection
/// stays on the backend it was opened to, and new ones go to the backend set at that moment.
/// [`TcpBalancer::lose_connections`] makes the connections carried so far drop everything
/// both ways without closing them, as a lost node or a partition does.
struct TcpBalancer {
    addr: SocketAddr,
    backend: Arc<Mutex<SocketAddr>>,
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TcpBalancer {
    fn start(backend: SocketAddr) -> TcpBalancer {
        let front = TcpListener::bind("127.0.0.1:0").expect("balancer socket");
        front.set_nonblocking(true).unwrap();
        let addr = front.local_addr().unwrap();
        let backend = Arc::new(Mutex::new(backend));
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + TCP_BALANCER_LIFETIME;
        let thread = {
            let (backend, generation, stop) = (backend.clone(), generation.clone(), stop.clone());
            thread::spawn(move || {
                let mut carriers = Vec::new();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok((client, _)) = front.accept() else {
                        thread::sleep(TCP_BALANCER_POLL);
                        continue;
                    };
                    if carriers.len() == 2 * TCP_BALANCER_CONNECTIONS {
                        continue;
                    }
                    let to = *backend.lock().unwrap();
                    let Ok(server) = TcpStream::connect(to) else {
                        continue;
                    };
                    client.set_nonblocking(false).unwrap();
                    let born = generation.load(Ordering::Relaxed);
                    for (from, to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server.try_clone().unwrap(), client.try_clone().unwrap()),
                    ] {
                        let (generation, stop) = (generation.clone(), stop.clone());
                        carriers.push(thread::spawn(move || {
                            carry(from, to, born, &generation, &stop, deadline)
                        }));
                    }
                }
                stop.store(true, Ordering::Relaxed);
                for carrier in carriers {
                    let _ = carrier.join();
                }
            })
        };
        TcpBalancer {
            addr,
            backend,
            generation,
            stop,
            thread: Some(thread),
        }
    }

    /// New connections go to `backend` from now on; those open stay where they are.
    fn switch_to(&self, backend: SocketAddr) {
        *self.backend.lock().unwrap() = backend;
    }

    /// The connections carried so far drop everything from now on, both ways, and stay open.
    fn lose_connections(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` while the balancer's generation is `born`, then reads and drops;
/// ends at EOF, an error, the balancer's stop or its deadline.
fn carry(
    mut from: TcpStream,
    mut to: TcpStream,
    born: u64,
    generation: &AtomicU64,
    stop: &AtomicBool,
    deadline: Instant,
) {
    from.set_read_timeout(Some(TCP_BALANCER_POLL)).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if generation.load(Ordering::Relaxed) == born && to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl Drop for TcpBalancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
