//! The `grpc` transport with real `gost` processes (gost-wire.md §8.5): the seed page's
//! `relay+grpc` example over TLS and cleartext, command line and YAML, an independent grpcio
//! client, multiplexing, bulk data, custom paths, reconnection, clear failures and a chain
//! mixing grpc with another transport.

use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use gost_e2e::*;

/// Concurrent tunnels that must share one gRPC connection.
const CONCURRENT_TUNNELS: usize = 100;

/// Bytes echoed per concurrent tunnel: several messages each, so calls interleave.
const BYTES_PER_TUNNEL: usize = 200 * 1024;

/// The bulk transfer, each way, through one tunnel.
const BULK_BYTES: usize = 8 * 1024 * 1024;

/// How long a client may take to use a restarted server: covers the reconnect backoff cap
/// (8 s) with room to spare.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(20);

fn get_via(proxy: SocketAddr, target: &Target, path: &str) -> Output {
    curl(&[
        "-x",
        &format!("http://{proxy}"),
        &format!("http://{}{path}", target.addr),
    ])
}

fn assert_get_works(proxy: SocketAddr, target: &Target, logs: &[&Gost]) {
    let out = get_via(proxy, target, "/grpc");
    let logs = || {
        logs.iter()
            .map(|g| g.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, logs());
    assert!(
        out.text().starts_with("hello from target"),
        "{}\n{}",
        out.text(),
        logs()
    );
}

/// `-L relay+grpc://user:pass@127.0.0.1:0` with `query` (e.g. `?grpcInsecure=true`).
fn grpc_server(query: &str) -> Gost {
    Gost::start(
        &["-L", &format!("relay+grpc://user:pass@127.0.0.1:0{query}")],
        1,
    )
}

/// `-L http://127.0.0.1:0 -F relay+grpc://CREDENTIALS@SERVER` with `query`.
fn client(credentials: &str, server: SocketAddr, query: &str) -> Gost {
    Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("relay+grpc://{credentials}@{server}{query}"),
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
fn seed_example_command_line_tls_and_insecure() {
    let target = Target::http();
    for query in ["", "?grpcInsecure=true"] {
        let server = grpc_server(query);
        let client = client("user:pass", server.addr(), query);
        assert_get_works(client.addr(), &target, &[&server, &client]);
        server.wait_for_log("\"protocol\":\"relay\"");
    }
}

#[test]
fn seed_example_yaml() {
    let target = Target::http();
    for insecure in [false, true] {
        let metadata = if insecure {
            "\n    metadata:\n      grpcInsecure: true"
        } else {
            ""
        };
        let server = Gost::start_config(
            &format!(
                "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: relay\n    auth:\n      username: user\n      password: pass\n  listener:\n    type: grpc{metadata}\n"
            ),
            1,
        );
        let dialer_metadata = if insecure {
            "\n        metadata:\n          grpcInsecure: true"
        } else {
            ""
        };
        let client = Gost::start_config(
            &format!(
                "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: http\n    chain: chain-0\n  listener:\n    type: tcp\nchains:\n- name: chain-0\n  hops:\n  - name: hop-0\n    nodes:\n    - name: node-0\n      addr: {}\n      connector:\n        type: relay\n        auth:\n          username: user\n          password: pass\n      dialer:\n        type: grpc{dialer_metadata}\n",
                server.addr()
            ),
            1,
        );
        assert_get_works(client.addr(), &target, &[&server, &client]);
    }
}

#[test]
fn command_line_gives_the_grpc_config() {
    let out = run(
        gost_bin().to_str().unwrap(),
        &[
            "-L",
            "relay+grpc://user:pass@:8443?grpcInsecure=true",
            "-F",
            "relay+grpc://user:pass@10.0.0.1:8443?path=a/b",
            "-O",
            "yaml",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let yaml = out.text();
    for expected in [
        "type: grpc",
        "type: relay",
        "grpcInsecure: \"true\"",
        "path: a/b",
        "addr: 10.0.0.1:8443",
        "username: user",
    ] {
        assert!(yaml.contains(expected), "missing {expected:?} in\n{yaml}");
    }
    assert_eq!(yaml.matches("type: grpc").count(), 2, "{yaml}");
}

#[test]
fn wrong_password_fails_cleanly() {
    let target = Target::http();
    for query in ["", "?grpcInsecure=true"] {
        let server = grpc_server(query);
        let client = client("user:wrong", server.addr(), query);
        let out = curl(&[
            "-i",
            "-x",
            &format!("http://{}", client.addr()),
            &format!("http://{}/", target.addr),
        ]);
        let text = out.text();
        assert!(!text.contains("hello from target"), "{query}: {text}");
        assert!(
            text.starts_with("HTTP/1.1 5"),
            "{query}: the client must report an upstream failure: {text}"
        );
        server.wait_for_log("authentication failed");
    }
}

#[test]
fn independent_grpcio_client() {
    let echo = Target::echo();
    for (mode, query) in [("insecure", "?grpcInsecure=true"), ("tls", "")] {
        let server = grpc_server(query);
        python_checks(
            "grpc_client.py",
            &[
                mode.to_string(),
                server.addr().to_string(),
                echo.addr.to_string(),
                "user".into(),
                "pass".into(),
                "/GostTunel/Tunnel".into(),
            ],
            &[
                &format!("{mode} round trip ok"),
                &format!("{mode} wrong password ok"),
                &format!("{mode} unimplemented ok"),
            ],
        );
        server.wait_for_log("UNIMPLEMENTED");
    }
    // A custom path, as GOST maps it: "x/y/z" serves /x/y-z.
    let server = grpc_server("?grpcInsecure=true&path=x/y/z");
    python_checks(
        "grpc_client.py",
        &[
            "insecure".into(),
            server.addr().to_string(),
            echo.addr.to_string(),
            "user".into(),
            "pass".into(),
            "/x/y-z".into(),
        ],
        &["insecure round trip ok"],
    );
}

#[test]
fn hundred_concurrent_tunnels_share_one_connection() {
    let echo = Target::echo();
    for query in ["?grpcInsecure=true", ""] {
        let server = grpc_server(query);
        let client = client("user:pass", server.addr(), query);
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
            "{query}: the server must see exactly one TCP connection"
        );
        let dials = client.log().matches("grpc connection established").count();
        assert_eq!(dials, 1, "{query}: one gRPC connection expected");
        let tunnels = server.log().matches("\"msg\":\"tunnel\"").count();
        assert_eq!(tunnels, CONCURRENT_TUNNELS, "{query}");
    }
}

#[test]
fn eight_mib_each_way_with_a_custom_path() {
    let echo = Target::echo();
    for query in ["?grpcInsecure=true&path=/bulk/", "?path=a/b/c"] {
        let server = grpc_server(query);
        let client = client("user:pass", server.addr(), query);
        let stream = http_connect(client.addr(), &echo.addr.to_string(), None).expect("CONNECT");
        echo_round_trip(stream, BULK_BYTES);
    }
}

/// A CONNECT through `proxy` to `target` is refused or closed without a byte.
fn assert_tunnel_fails(proxy: SocketAddr, target: &Target) {
    use std::io::{Read, Write};
    match http_connect(proxy, &target.addr.to_string(), None) {
        Err(head) => assert!(!head.starts_with("HTTP/1.1 200"), "{head}"),
        Ok(mut stream) => {
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).unwrap_or(0);
            assert_eq!(n, 0, "a broken tunnel carried {:?}", &buf[..n]);
        }
    }
}

#[test]
fn mismatches_fail_with_a_clear_error_and_the_listener_keeps_serving() {
    let target = Target::http();
    let server = grpc_server("?path=right");
    // With a wrong path the client sees either the status or, when its first write races the
    // server's trailers-only answer, the ended call; the server names the refusal either way.
    let cases: [(&str, &[&str]); 2] = [
        ("?path=wrong", &["Unimplemented", "the call has ended"]),
        (
            "?path=right&grpcInsecure=true",
            &["did not answer in gRPC (HTTP/2) but in TLS"],
        ),
    ];
    for (query, expected) in cases {
        let bad = client("user:pass", server.addr(), query);
        assert_tunnel_fails(bad.addr(), &target);
        let deadline = Instant::now() + LOG_DEADLINE;
        while !expected.iter().any(|e| bad.log().contains(e)) {
            assert!(
                Instant::now() < deadline,
                "none of {expected:?} in the log within {LOG_DEADLINE:?}:\n{}",
                bad.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        assert!(bad.log().contains(&server.addr().to_string()), "{query}");
    }
    server.wait_for_log("answered UNIMPLEMENTED");
    server.wait_for_log("grpc: TLS handshake failed");
    // A TLS client against a cleartext server fails at the TLS handshake, naming the node.
    let plain = grpc_server("?grpcInsecure=true");
    let tls_client = client("user:pass", plain.addr(), "");
    assert_tunnel_fails(tls_client.addr(), &target);
    tls_client.wait_for_log("TLS handshake failed");
    plain.wait_for_log("does not speak HTTP/2");
    // A node that is no gRPC server at all (a plain HTTP server).
    let not_grpc = client("user:pass", target.addr, "?grpcInsecure=true");
    assert_tunnel_fails(not_grpc.addr(), &target);
    not_grpc.wait_for_log("did not answer in gRPC (HTTP/2) but in HTTP/1.x");
    // The listener still serves a client that gets everything right.
    let good = client("user:pass", server.addr(), "?path=right");
    assert_get_works(good.addr(), &target, &[&server, &good]);
}

/// A cleartext gRPC client pointed at a gost listener of another type: the dial fails with
/// an error that names the node and says what the server answered instead of HTTP/2.
#[test]
fn a_grpc_client_says_when_the_node_is_a_listener_of_another_type() {
    let target = Target::http();
    let cases = [
        (
            "http://127.0.0.1:0",
            "did not answer in gRPC (HTTP/2) but in HTTP/1.x (\\\"HTTP/1.1 400 Bad Request\\\"): a listener of another type",
        ),
        (
            "ws://127.0.0.1:0",
            "did not answer in gRPC (HTTP/2) but in HTTP/1.x (\\\"HTTP/1.1 400 Bad Request\\\"): a listener of another type",
        ),
        (
            "socks5://127.0.0.1:0",
            "did not answer in gRPC (HTTP/2): it closed the connection before sending HTTP/2 SETTINGS",
        ),
    ];
    for (listener, says) in cases {
        let other = Gost::start(&["-L", listener], 1);
        let client = client("user:pass", other.addr(), "?grpcInsecure=true");
        assert_tunnel_fails(client.addr(), &target);
        let node = format!("grpc {}: ", other.addr());
        let deadline = Instant::now() + LOG_DEADLINE;
        while !client
            .log()
            .lines()
            .any(|l| l.contains("\"level\":\"warn\"") && l.contains(&node) && l.contains(says))
        {
            assert!(
                Instant::now() < deadline,
                "{listener}: no warning with {node:?} and {says:?} within {LOG_DEADLINE:?}:\n{}",
                client.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn client_reconnects_after_server_restart() {
    let target = Target::http();
    for query in ["?grpcInsecure=true", ""] {
        let server = grpc_server(query);
        let addr = server.addr();
        let client = client("user:pass", addr, query);
        assert_get_works(client.addr(), &target, &[&server, &client]);
        drop(server);
        let restarted = Gost::start(&["-L", &format!("relay+grpc://user:pass@{addr}{query}")], 1);
        let deadline = Instant::now() + RECONNECT_DEADLINE;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let out = get_via(client.addr(), &target, "/again");
            if out.code == 0 && out.text().starts_with("hello from target") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{query}: no success within {RECONNECT_DEADLINE:?} ({attempts} attempts); client log:\n{}",
                client.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
        restarted.wait_for_log("\"msg\":\"tunnel\"");
    }
}

#[test]
fn chain_relay_over_grpc_then_socks5_over_ws() {
    let target = Target::http();
    let echo = Target::echo();
    let a = grpc_server("");
    let b = Gost::start(&["-L", "socks5+ws://u2:p2@127.0.0.1:0"], 1);
    let front = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("relay+grpc://user:pass@{}", a.addr()),
            "-F",
            &format!("socks5+ws://u2:p2@{}", b.addr()),
        ],
        1,
    );
    assert_get_works(front.addr(), &target, &[&a, &b, &front]);
    let stream = http_connect(front.addr(), &echo.addr.to_string(), None).expect("CONNECT");
    echo_round_trip(stream, BULK_BYTES);
    b.wait_for_log("\"msg\":\"tunnel\"");
}

#[test]
fn chain_socks5_over_ws_then_relay_over_grpc() {
    // grpc as a later hop: its HTTP/2 connection runs inside the ws hop's tunnel.
    let target = Target::http();
    let a = Gost::start(&["-L", "socks5+ws://u1:p1@127.0.0.1:0"], 1);
    let b = grpc_server("?grpcInsecure=true");
    let front = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5+ws://u1:p1@{}", a.addr()),
            "-F",
            &format!("relay+grpc://user:pass@{}?grpcInsecure=true", b.addr()),
        ],
        1,
    );
    assert_get_works(front.addr(), &target, &[&a, &b, &front]);
    assert_get_works(front.addr(), &target, &[&a, &b, &front]);
    b.wait_for_log("\"protocol\":\"relay\"");
}

/// Idle tunnels held open on one gRPC connection for the memory check.
const IDLE_TUNNELS: usize = 1000;

/// Most the server's resident memory may grow for [`IDLE_TUNNELS`] idle tunnels: a few KiB
/// each for the call (HTTP/2 stream, tonic's codec state, the body task), the relay and the
/// upstream socket. tonic's default 8 KiB codec buffers per call and direction, or a relay
/// buffer per idle direction, would blow far past it. (The bound is 24 MiB RSS per
/// process; a release build measures about 15.5 MiB with these 1,000 tunnels.)
const IDLE_TUNNELS_MAX_GROWTH_KIB: u64 = 14 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
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

#[test]
fn thousand_idle_tunnels_stay_small() {
    let echo = Target::echo();
    let server = grpc_server("?grpcInsecure=true");
    let client = client("user:pass", server.addr(), "?grpcInsecure=true");
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

/// A grpcio server (`e2e/py/grpc_server.py`) serving `path`, stopped when dropped.
struct PyServer {
    child: std::process::Child,
    port: u16,
    stderr: thread::JoinHandle<String>,
}

impl PyServer {
    fn start(args: &[&str]) -> PyServer {
        use std::io::{BufRead, BufReader, Read};
        use std::process::Stdio;
        let script = workspace_root().join("e2e/py/grpc_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut stderr = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        // The script prints its port at once, or fails (and its output ends).
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(port) = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "grpc_server.py {args:?} did not start: {line:?}\n{}",
                stderr.join().unwrap()
            );
        };
        PyServer {
            child,
            port,
            stderr,
        }
    }

    /// Stops the server and returns what it logged.
    fn stop(mut self) -> String {
        // Closing its standard input ends it.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        self.stderr.join().unwrap()
    }
}

#[test]
fn dialer_against_an_independent_grpcio_server() {
    // TLS with gost's generated certificate: a gost TLS service in a fresh HOME writes it.
    let home = tempdir();
    let generator = Gost::start_in(&["-L", "relay+grpc://127.0.0.1:0"], 1, Some(&home));
    let cert = home.join(".gost/auto-ca-cert.pem");
    let key = home.join(".gost/auto-ca-key.pem");
    assert!(cert.exists() && key.exists(), "{}", generator.log());
    drop(generator);
    let cases: [(&[&str], &str); 3] = [
        (&["insecure", "/GostTunel/Tunnel"], "?grpcInsecure=true"),
        (&["insecure", "/x/y-z"], "?grpcInsecure=true&path=x/y/z"),
        (
            &[
                "tls",
                "/GostTunel/Tunnel",
                cert.to_str().unwrap(),
                key.to_str().unwrap(),
            ],
            "",
        ),
    ];
    for (args, query) in cases {
        let server = PyServer::start(args);
        let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
        let client = client("user:pass", addr, query);
        // The grpcio server echoes, whatever the target.
        let stream = http_connect(client.addr(), "127.0.0.1:9", None).expect("CONNECT");
        echo_round_trip(stream, 1024 * 1024);
        client.wait_for_log("\"outcome\":\"closed\"");
        drop(client);
        let log = server.stop();
        assert!(
            log.contains(&format!("call {} user=user bytes=1048576", args[1])),
            "{args:?}: {log}"
        );
    }
}
