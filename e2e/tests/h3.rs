//! PHT over HTTP/3 (`h3`, gost-wire.md §8.7) with real `gost` processes: the seed page's
//! HTTP/3 example (command line and YAML), bulk data, an independent HTTP/3 client (aioquic),
//! 100 concurrent tunnels on one QUIC connection, reconnection after a server restart (one
//! that closed its connections, and one killed), a listener replaced on its own port,
//! 1,000 idle tunnels at once, and a rolling update behind a UDP balancer.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gost_e2e::*;

/// PHT endpoint paths of the seed example (non-default, so both sides must agree on them).
const PATHS: &str = "authorizePath=/auth&pushPath=/in&pullPath=/out";

/// The bulk transfer that must arrive byte for byte.
const BULK_BYTES: usize = 8 * 1024 * 1024;

/// Concurrent tunnels that must share one QUIC connection.
const CONCURRENT_TUNNELS: usize = 100;

/// Bytes echoed per concurrent tunnel: several pushes and pull lines each, so they interleave.
const BYTES_PER_TUNNEL: usize = 128 * 1024;

/// Tunnels held open at once in the idle test (GOST cannot hold this many over h3).
const IDLE_TUNNELS: usize = 1000;

/// The client's QUIC idle timeout and keep-alive in the restart test. A killed server sends
/// nothing, and the restarted one, with a certificate of its own, cannot make a valid
/// stateless reset for the old connection (its reset key comes from its new key), so the
/// client learns of the death by the idle timeout, or by the silence a new tunnel meets;
/// GOST's 30 s default would make the test slow, and these are GOST's own knobs.
const RESTART_CLIENT_QUIC: &str = "maxIdleTimeout=2s&ttl=500ms";

/// How long a client may take to use a restarted server: its idle timeout (2 s) plus the
/// redial backoff cap (2 s), with room to spare.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(20);

/// How long the first request through a client may take once the server it used stopped,
/// closing its QUIC connections, and another took its port (or its listener was replaced):
/// one new QUIC handshake and a tunnel on loopback take milliseconds. Without the close the
/// client uses its dead connection until its idle timeout (30 s).
const REDIAL_DEADLINE: Duration = Duration::from_secs(5);

/// curl's own limit on that request, past [`REDIAL_DEADLINE`] so that a slow answer is
/// reported with its time rather than as curl's timeout.
const REDIAL_CURL_MAX_TIME: &str = "10";

/// How long a stopping server may take to exit once its drain is over: its QUIC connections
/// get at most 1 s to close.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

fn server() -> Gost {
    Gost::start(&["-L", &format!("h3://127.0.0.1:0?{PATHS}")], 1)
}

fn client(server: SocketAddr, extra: &str) -> Gost {
    Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("h3://{server}?{PATHS}{extra}"),
        ],
        1,
    )
}

fn assert_get_works(client: &Gost, target: &Target) {
    let out = curl(&[
        "-x",
        &format!("http://{}", client.addr()),
        &format!("http://{}/h3", target.addr),
    ]);
    assert_eq!(out.code, 0, "{}\nclient log:\n{}", out.stderr, client.log());
    assert!(
        out.text().starts_with("hello from target"),
        "{}",
        out.text()
    );
}

/// The distinct client addresses in the server's tunnel log lines.
fn tunnel_clients(server: &Gost) -> HashSet<String> {
    server
        .log()
        .lines()
        .filter(|l| l.contains("\"msg\":\"tunnel\""))
        .filter_map(|l| {
            let start = l.find("\"client\":\"")? + 10;
            let end = l[start..].find('"')?;
            Some(l[start..start + end].to_string())
        })
        .collect()
}

/// One small echo exchange on an open tunnel.
fn echo_small(stream: &mut TcpStream) -> std::io::Result<()> {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf)?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn h3_seed_example_command_line_with_bulk_echo() {
    let target = Target::http();
    let echo = Target::echo();
    let server = server();
    let client = client(server.addr(), "");
    assert_get_works(&client, &target);
    let stream = http_connect(client.addr(), &echo.addr.to_string(), None).expect("CONNECT");
    echo_round_trip(stream, BULK_BYTES);
    // The server's `auto` handler saw the HTTP CONNECT inside the tunnel.
    let log = server.log();
    assert!(log.contains("\"protocol\":\"http\""), "{log}");
}

#[test]
fn h3_seed_example_yaml() {
    let target = Target::http();
    let server = Gost::start_config(
        "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: auto\n  listener:\n    type: h3\n    metadata:\n      authorizePath: /auth\n      pushPath: /in\n      pullPath: /out\n",
        1,
    );
    // `http3` is GOST's other name for the h3 dialer.
    for dialer in ["h3", "http3"] {
        let client = Gost::start_config(
            &format!(
                "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: http\n    chain: chain-0\n  listener:\n    type: tcp\nchains:\n- name: chain-0\n  hops:\n  - name: hop-0\n    nodes:\n    - name: node-0\n      addr: {}\n      connector:\n        type: http\n      dialer:\n        type: {dialer}\n        metadata:\n          authorizePath: /auth\n          pushPath: /in\n          pullPath: /out\n",
                server.addr()
            ),
            1,
        );
        assert_get_works(&client, &target);
    }
}

#[test]
fn http3_on_listen_is_the_reverse_proxy_and_refused() {
    let out = run(gost_bin().to_str().unwrap(), &["-L", "http3://127.0.0.1:0"]);
    assert_ne!(out.code, 0, "gost must refuse -L http3://");
    assert!(
        out.stderr.contains("reverse proxy") && out.stderr.contains("`h3`"),
        "{}",
        out.stderr
    );
}

#[test]
fn independent_http3_client_aioquic() {
    let echo = Target::echo();
    let server = server();
    python_checks(
        "h3_client.py",
        &[
            server.addr().to_string(),
            echo.addr.to_string(),
            "/auth".into(),
            "/in".into(),
            "/out".into(),
        ],
        &[
            "authorize ok",
            "pull ok",
            "push connect ok",
            "round trip ok",
            "close ok",
        ],
    );
}

#[test]
fn hundred_concurrent_tunnels_share_one_quic_connection() {
    let echo = Target::echo();
    let server = server();
    let client = client(server.addr(), "");
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
    // Tunnel lines are logged as tunnels end; the last ones may lag the client's EOF.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.log().matches("\"msg\":\"tunnel\"").count() < CONCURRENT_TUNNELS
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        server.log().matches("\"msg\":\"tunnel\"").count(),
        CONCURRENT_TUNNELS
    );
    // Every tunnel came from the same UDP address: one socket, one QUIC connection.
    let clients = tunnel_clients(&server);
    assert_eq!(clients.len(), 1, "{clients:?}");
}

#[test]
fn client_reconnects_after_server_restart() {
    let target = Target::http();
    // Each server generates a certificate of its own (a HOME of its own), so the restarted
    // one cannot reset the old connection: the client finds it dead by its idle timeout.
    let home = tempdir();
    let server = Gost::start_in(
        &["-L", &format!("h3://127.0.0.1:0?{PATHS}")],
        1,
        Some(&home),
    );
    let addr = server.addr();
    let client = client(addr, &format!("&{RESTART_CLIENT_QUIC}"));
    assert_get_works(&client, &target);
    drop(server);
    let restarted_home = tempdir();
    let restarted = Gost::start_in(
        &["-L", &format!("h3://{addr}?{PATHS}")],
        1,
        Some(&restarted_home),
    );
    let deadline = Instant::now() + RECONNECT_DEADLINE;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let out = curl(&[
            "--max-time",
            "5",
            "-x",
            &format!("http://{}", client.addr()),
            &format!("http://{}/again", target.addr),
        ]);
        if out.code == 0 && out.text().starts_with("hello from target") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no success within {RECONNECT_DEADLINE:?} ({attempts} attempts); client log:\n{}",
            client.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    // The tunnel's line is logged when the tunnel's close has reached the server.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !restarted.log().contains("\"msg\":\"tunnel\"") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        restarted.log().contains("\"msg\":\"tunnel\""),
        "the restarted server served no tunnel:\n{}",
        restarted.log()
    );
}

/// The next request through `client` succeeds, and within [`REDIAL_DEADLINE`].
fn assert_next_request_is_quick(client: &Gost, target: &Target, what: &str) {
    let started = Instant::now();
    let out = curl(&[
        "--max-time",
        REDIAL_CURL_MAX_TIME,
        "-x",
        &format!("http://{}", client.addr()),
        &format!("http://{}/next", target.addr),
    ]);
    let took = started.elapsed();
    assert!(
        out.code == 0 && out.text().starts_with("hello from target"),
        "{what}: the next request failed after {took:?} (curl {}: {}{})\nclient log:\n{}",
        out.code,
        out.stderr,
        out.text(),
        client.log()
    );
    assert!(
        took < REDIAL_DEADLINE,
        "{what}: the next request took {took:?}\nclient log:\n{}",
        client.log()
    );
}

/// An open tunnel through `client` to the echo target, checked with one echo.
fn open_tunnel(client: &Gost, echo: &Target) -> TcpStream {
    let mut tunnel = http_connect(client.addr(), &echo.addr.to_string(), None).expect("CONNECT");
    echo_small(&mut tunnel).expect("the tunnel echoes");
    tunnel
}

/// However a server stops (its drain ending at once, when its last tunnel ends, at the end of
/// its grace period, or on a second signal), it closes its QUIC connections on the way out, so
/// that a client with GOST's default QUIC settings (idle timeout 30 s) uses a server restarted
/// on the same port for its very next request. While it drains, the connections still carry
/// the open tunnels.
#[test]
fn a_stopping_server_closes_its_connections_so_a_restart_is_used_at_once() {
    let target = Target::http();
    let echo = Target::echo();
    let listen = |addr: &str, grace: &str| {
        Gost::start(
            &[
                "-L",
                &format!("h3://{addr}?{PATHS}"),
                "--grace-period",
                grace,
            ],
            1,
        )
    };
    // How the server stops, its grace period, its exit code, and what it logs as it exits.
    let stops = [
        ("no tunnel open", "30s", 0, "all connections finished"),
        (
            "the last tunnel ended",
            "30s",
            0,
            "all connections finished",
        ),
        ("grace period over", "1s", 0, "grace period over"),
        ("second signal", "30s", 143, "second signal"),
    ];
    let mut server = listen("127.0.0.1:0", stops[0].1);
    let addr = server.addr();
    let client = client(addr, "");
    assert_get_works(&client, &target);
    for (i, (how, _, exit_code, exit_line)) in stops.iter().enumerate() {
        let mut tunnel = (i > 0).then(|| open_tunnel(&client, &echo));
        server.signal("TERM");
        server.wait_for_log("stopped accepting");
        if let Some(tunnel) = tunnel.as_mut() {
            // Draining: the open tunnel's pushes and pulls still reach its session.
            echo_small(tunnel).unwrap_or_else(|e| panic!("{how}: draining tunnel: {e}"));
        }
        match *how {
            "the last tunnel ended" => drop(tunnel.take()),
            "second signal" => server.signal("TERM"),
            _ => {}
        }
        assert_eq!(
            server.wait_exit(EXIT_DEADLINE),
            Some(*exit_code),
            "{how}: the server's exit"
        );
        assert!(server.log().contains(exit_line), "{how}:\n{}", server.log());
        let grace = stops.get(i + 1).map_or("30s", |next| next.1);
        server = listen(&addr.to_string(), grace);
        assert_next_request_is_quick(&client, &target, how);
    }
}

/// A reload that replaces an h3 listener on the same port (here: a changed listener setting)
/// cannot let its QUIC connections drain on a socket the new listener needs: they are closed,
/// the new listener binds the port, and the client's next request reaches it at once.
#[test]
fn an_h3_listener_replaced_on_its_port_takes_over_at_once() {
    let target = Target::http();
    let dir = tempdir();
    let file = dir.join("gost.yaml");
    let port = free_udp_port();
    let yaml = |backlog: usize| {
        format!(
            "services:\n- name: s\n  addr: \"127.0.0.1:{port}\"\n  handler:\n    type: auto\n  listener:\n    type: h3\n    metadata:\n      backlog: {backlog}\n      authorizePath: /auth\n      pushPath: /in\n      pullPath: /out\n"
        )
    };
    std::fs::write(&file, yaml(128)).unwrap();
    let server = Gost::start(&["-C", file.to_str().unwrap()], 1);
    let client = client(server.addr(), "");
    assert_get_works(&client, &target);
    // Written whole, then renamed over the file: the watcher never reads half of it.
    let next = dir.join("gost.yaml.next");
    std::fs::write(&next, yaml(64)).unwrap();
    std::fs::rename(&next, &file).unwrap();
    server.signal("HUP");
    server.wait_for_log("\"generation\":2");
    let log = server.log();
    assert!(
        log.contains("\"replaced\":\"[\\\"s\\\"]\"") && !log.contains("cannot bind"),
        "the new listener did not get the port:\n{log}"
    );
    assert_next_request_is_quick(&client, &target, "replaced listener");
}

/// A UDP port free on 127.0.0.1 just now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

#[test]
fn thousand_idle_tunnels_at_once() {
    let echo = Target::echo();
    let server = server();
    let client = client(server.addr(), "");
    let echo_addr = echo.addr.to_string();
    let mut tunnels = Vec::with_capacity(IDLE_TUNNELS);
    while tunnels.len() < IDLE_TUNNELS {
        let mut stream = http_connect(client.addr(), &echo_addr, None)
            .unwrap_or_else(|e| panic!("tunnel {}: {e}", tunnels.len()));
        echo_small(&mut stream).unwrap_or_else(|e| {
            panic!(
                "tunnel {}: {e}\nclient log:\n{}",
                tunnels.len(),
                client.log()
            )
        });
        tunnels.push(stream);
    }
    eprintln!(
        "{IDLE_TUNNELS} idle h3 tunnels: server RSS {} KiB, client RSS {} KiB",
        rss_kib(server.pid()),
        rss_kib(client.pid())
    );
    // Every tunnel still works with all of them open.
    for (i, stream) in tunnels.iter_mut().enumerate().step_by(37) {
        echo_small(stream).unwrap_or_else(|e| panic!("idle tunnel {i}: {e}"));
    }
}

/// A server killed (no close sent) and started again with the same certificate (here the one
/// it generated and kept in its HOME; in a cluster, the same Secret) resets the dead
/// connections when their next packets reach it: the client, with GOST's default 30 s idle
/// timeout, re-dials at once instead of waiting that long.
#[test]
fn a_killed_server_restarted_with_its_certificate_resets_the_old_connections() {
    let target = Target::http();
    let home = tempdir();
    let listen =
        |addr: &str| Gost::start_in(&["-L", &format!("h3://{addr}?{PATHS}")], 1, Some(&home));
    let server = listen("127.0.0.1:0");
    let addr = server.addr();
    let client = client(addr, "");
    assert_get_works(&client, &target);
    drop(server); // SIGKILL: no CONNECTION_CLOSE reaches the client.
    let _restarted = listen(&addr.to_string());
    // The very first request: it goes on the dead connection, the reset closes that, and the
    // tunnel asks again on a new connection rather than fail.
    assert_next_request_is_quick(&client, &target, "after the kill and restart");
}

/// A server killed behind a balancer (a pod deleted or its node lost, behind a Service): the
/// client's flow still leads to it and gets no answer, while a replacement with a key of its
/// own (it cannot reset the old connection) takes new flows. A new tunnel finds the old
/// connection silent within about a second and asks again on a new one, from a new socket,
/// instead of failing until the idle timeout (GOST's default 30 s, kept here).
#[test]
fn a_new_tunnel_after_a_killed_server_is_replaced_behind_a_balancer() {
    let target = Target::http();
    let (old, old_home) = server_with_own_home();
    let balancer = Balancer::start(old.addr());
    let client = client(balancer.addr, "");
    assert_get_works(&client, &target);
    drop(old); // SIGKILL
    drop(old_home);
    let (new, _new_home) = server_with_own_home();
    balancer.switch_to(new.addr());
    assert_next_request_is_quick(&client, &target, "after the server was replaced");
    new.wait_for_log("pht session opened");
}

#[test]
fn an_untrusted_server_certificate_is_explained() {
    // GOST's own self-signed certificate, and a client that verifies (`secure=true`): the
    // refusal names what is wrong and what to do, not rustls's `UnknownIssuer`.
    let server = server();
    let client = client(server.addr(), "&secure=true");
    let target = Target::http();
    let out = curl_status(&[
        "-x",
        &format!("http://{}", client.addr()),
        &format!("http://{}/h3", target.addr),
    ]);
    assert_eq!(out.text(), "502", "{}", client.log());
    client.wait_for_log("unknown authority");
    assert!(client.log().contains("caFile"), "{}", client.log());
}

/// An h3 server with a HOME of its own: a certificate (so QUIC reset keys) of its own, as
/// each pod of a Deployment has. The HOME goes with its process (a pair, dropped together).
fn server_with_own_home() -> (Gost, TempDir) {
    let home = tempdir();
    let gost = Gost::start_in(
        &["-L", &format!("h3://127.0.0.1:0?{PATHS}")],
        1,
        Some(&home),
    );
    (gost, home)
}

/// How long a [`Balancer`] forwards at most: longer than any test using it runs.
const BALANCER_LIFETIME: Duration = Duration::from_secs(120);

/// How often a [`Balancer`]'s threads look at their stop flag while no datagram comes.
const BALANCER_POLL: Duration = Duration::from_millis(50);

/// UDP flows a [`Balancer`] forwards at most (a client opens one per QUIC socket); datagrams
/// of further flows are dropped.
const BALANCER_FLOWS: usize = 16;

/// Largest datagram forwarded: more than any QUIC packet.
const DATAGRAM: usize = 65_535;

/// A UDP balancer in front of h3 servers, as a Kubernetes Service (kube-proxy's conntrack) is
/// in front of pods: each flow (client address and port) stays on the backend its first
/// datagram went to; a new flow goes to the backend set at that moment.
struct Balancer {
    addr: SocketAddr,
    backend: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Balancer {
    fn start(backend: SocketAddr) -> Balancer {
        let front = UdpSocket::bind("127.0.0.1:0").expect("balancer socket");
        front.set_read_timeout(Some(BALANCER_POLL)).unwrap();
        let addr = front.local_addr().unwrap();
        let backend = Arc::new(Mutex::new(backend));
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + BALANCER_LIFETIME;
        let forwarder = {
            let (backend, stop) = (backend.clone(), stop.clone());
            thread::spawn(move || {
                let mut flows: HashMap<SocketAddr, UdpSocket> = HashMap::new();
                let mut back = Vec::new();
                let mut buf = vec![0u8; DATAGRAM];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok((n, client)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    if !flows.contains_key(&client) {
                        if flows.len() == BALANCER_FLOWS {
                            continue;
                        }
                        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
                        upstream.connect(*backend.lock().unwrap()).unwrap();
                        upstream.set_read_timeout(Some(BALANCER_POLL)).unwrap();
                        let (up, front, stop) = (
                            upstream.try_clone().unwrap(),
                            front.try_clone().unwrap(),
                            stop.clone(),
                        );
                        back.push(thread::spawn(move || {
                            let mut buf = vec![0u8; DATAGRAM];
                            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                                if let Ok(n) = up.recv(&mut buf) {
                                    let _ = front.send_to(&buf[..n], client);
                                }
                            }
                        }));
                        flows.insert(client, upstream);
                    }
                    let _ = flows[&client].send(&buf[..n]);
                }
                stop.store(true, Ordering::Relaxed);
                for thread in back {
                    let _ = thread.join();
                }
            })
        };
        Balancer {
            addr,
            backend,
            stop,
            threads: vec![forwarder],
        }
    }

    /// New flows go to `backend` from now on; flows already seen stay where they are.
    fn switch_to(&self, backend: SocketAddr) {
        *self.backend.lock().unwrap() = backend;
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A rolling update behind a Service: the server gets SIGTERM while a tunnel is open (it
/// stops accepting, the tunnel drains on its QUIC connection), and a replacement takes the new
/// flows. The client's QUIC connection still leads to the stopping server, which refuses a new
/// session on it with `503`; the client asks again on a new QUIC connection from a new UDP
/// port (a new flow), which reaches the replacement, so a new tunnel opens without an error.
/// The old tunnel goes on moving bytes both ways on the stopping server.
#[test]
fn a_new_tunnel_during_a_rolling_update_reaches_the_replacement() {
    let echo = Target::echo();
    let (mut old, _old_home) = server_with_own_home();
    let balancer = Balancer::start(old.addr());
    let client = client(balancer.addr, "");
    let mut first = open_tunnel(&client, &echo);
    old.signal("TERM");
    old.wait_for_log("stopped accepting");
    echo_small(&mut first).expect("the draining tunnel echoes");
    let (new, _new_home) = server_with_own_home();
    balancer.switch_to(new.addr());
    let second = http_connect(client.addr(), &echo.addr.to_string(), None)
        .unwrap_or_else(|e| panic!("the new tunnel: {e}\nclient log:\n{}", client.log()));
    echo_round_trip(second, 64 * 1024);
    new.wait_for_log("pht session opened");
    // The old tunnel's pushes still reach its session on the stopping server, and its pull
    // still brings the answers.
    echo_small(&mut first).unwrap_or_else(|e| {
        panic!(
            "the draining tunnel after the new one: {e}\nclient log:\n{}",
            client.log()
        )
    });
    assert!(old.is_running(), "the old server drains its open tunnel");
    assert!(
        !old.log().contains("\"open\":2"),
        "the stopping server took a new session:\n{}",
        old.log()
    );
    let log = client.log();
    let mut failures = client.logged_at("warn");
    failures.extend(client.logged_at("error"));
    failures.retain(|l| !l.contains("TLS server certificate not verified"));
    assert!(failures.is_empty(), "the client logged a failure:\n{log}");
    assert!(
        log.contains("authorizing again on a new connection"),
        "the new tunnel was not refused by the stopping server first:\n{log}"
    );
}
