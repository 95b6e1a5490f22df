//! SOCKS5, `auto`, multi-hop chains, node selection and shutdown, with real `gost` processes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gost_e2e::*;

fn get_via(proxy: &str, target: &Target) -> Output {
    curl(&["-x", proxy, &format!("http://{}/chain", target.addr)])
}

#[test]
fn socks5_with_auth_and_refusal_via_curl() {
    let target = Target::http();
    let server = Gost::start(&["-L", "socks5://user:pass@127.0.0.1:0"], 1);
    let ok = get_via(&format!("socks5h://user:pass@{}", server.addr()), &target);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.text().starts_with("hello from target"));
    for proxy in [
        format!("socks5h://user:wrong@{}", server.addr()),
        format!("socks5h://{}", server.addr()),
    ] {
        let out = curl(&[
            "--socks5-hostname",
            proxy.trim_start_matches("socks5h://"),
            &format!("http://{}/", target.addr),
        ]);
        assert_ne!(out.code, 0, "{proxy} must be refused");
        assert!(out.text().is_empty());
    }
    assert!(
        !server.log().contains("wrong"),
        "a password reached the log"
    );
}

/// GOST's `ignoreChain`: a service so marked dials directly, the others through the chain (here
/// a hop where nothing listens, so their requests fail).
#[test]
fn ignore_chain_dials_directly() {
    let target = Target::http();
    let dead_hop = format!("http://127.0.0.1:{}", free_port());
    let gost = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0?ignoreChain=true",
            "-L",
            "socks5://127.0.0.1:0",
            "-F",
            &dead_hop,
        ],
        2,
    );
    let direct = gost.service_addr("service-0").unwrap();
    let chained = gost.service_addr("service-1").unwrap();
    let out = get_via(&format!("http://{direct}"), &target);
    assert!(
        out.text().starts_with("hello from target"),
        "{}",
        out.stderr
    );
    let out = get_via(&format!("socks5h://{chained}"), &target);
    assert_ne!(out.code, 0, "the other service still uses the chain");

    let yaml = format!(
        "services:\n- name: direct\n  addr: 127.0.0.1:0\n  handler: {{type: http, chain: c}}\n  metadata: {{ignoreChain: true}}\nchains:\n- name: c\n  hops:\n  - name: h\n    nodes:\n    - {{name: n, addr: '{}'}}\n",
        dead_hop.trim_start_matches("http://")
    );
    let gost = Gost::start_config(&yaml, 1);
    let out = get_via(&format!("http://{}", gost.addr()), &target);
    assert!(
        out.text().starts_with("hello from target"),
        "{}",
        out.stderr
    );
}

/// Worker processes started by a `gost -- ...` parent, killed when dropped (a failed test must
/// not leave them running).
struct Workers(Vec<u32>);

impl Workers {
    /// The `count` worker processes of the `gost -- ...` parent `gost`.
    fn of(gost: &Gost, count: usize) -> Workers {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", gost.pid()))
            .expect("the parent's children");
        let workers = Workers(
            children
                .split_whitespace()
                .map(|pid| pid.parse().unwrap())
                .collect(),
        );
        assert_eq!(workers.0.len(), count, "{children:?}");
        workers
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// GOST's `--`: each group of arguments runs as a process of its own, with its own chain; the
/// parent passes SIGTERM on and exits once the workers have drained.
#[test]
fn groups_between_double_dashes_run_as_workers() {
    let target = Target::http();
    let dead_hop = format!("http://127.0.0.1:{}", free_port());
    let mut gost = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "--",
            "-L",
            "socks5://127.0.0.1:0",
            "-F",
            &dead_hop,
        ],
        2,
    );
    let workers = Workers::of(&gost, 2);
    let http = gost
        .addrs()
        .iter()
        .copied()
        .find(|addr| {
            get_via(&format!("http://{addr}"), &target)
                .text()
                .starts_with("hello from target")
        })
        .expect("the http worker dials directly");
    let socks = gost
        .addrs()
        .iter()
        .copied()
        .find(|addr| *addr != http)
        .unwrap();
    let out = get_via(&format!("socks5h://{socks}"), &target);
    assert_ne!(out.code, 0, "the socks5 worker dials through its own chain");

    gost.signal("TERM");
    assert_eq!(
        gost.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        gost.log()
    );
    // The log is read by a thread of its own: give it the workers' last lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gost.log().matches("all connections finished").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "both workers drained: {}",
            gost.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in &workers.0 {
        assert!(ended(*pid), "worker {pid} still runs");
    }
}

/// The http connector sends its node's `header` metadata with the CONNECT (GOST's), e.g. a
/// token the upstream proxy wants.
#[test]
fn http_connector_sends_the_header_metadata() {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let upstream = {
        let heads = heads.clone();
        Target::start(move |mut stream| {
            let Ok(head) = read_head(&mut stream) else {
                return;
            };
            heads.lock().unwrap().push(head);
            let _ = stream.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
            let mut buf = [0u8; 64];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
    };
    let client = Gost::start_config(
        &format!(
            "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler: {{type: http, chain: c}}\nchains:\n- name: c\n  hops:\n  - name: h\n    nodes:\n    - name: n\n      addr: '{}'\n      connector:\n        type: http\n        metadata:\n          header: {{X-Token: abc}}\n",
            upstream.addr
        ),
        1,
    );
    let mut tunnel = http_connect(client.addr(), "example.com:443", None).unwrap();
    tunnel.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    tunnel.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    let heads = heads.lock().unwrap();
    assert!(
        heads[0].starts_with("CONNECT example.com:443 HTTP/1.1\r\n")
            && heads[0].contains("\r\nX-Token: abc\r\n"),
        "{heads:?}"
    );
}

/// `readTimeout: 0` is the default handshake time, as in GOST, not none at all: a client a
/// few milliseconds away (here, one that pauses between its messages) is served.
#[test]
fn a_zero_read_timeout_is_the_default() {
    let echo = Target::echo();
    let gost = Gost::start_config(
        "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: socks5\n    metadata: {readTimeout: 0s}\n",
        1,
    );
    let mut stream = TcpStream::connect(gost.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(&[5, 1, 0]).unwrap();
    let mut method = [0u8; 2];
    stream.read_exact(&mut method).unwrap();
    assert_eq!(method, [5, 0]);
    std::thread::sleep(Duration::from_millis(50));
    let port = echo.addr.port().to_be_bytes();
    stream
        .write_all(&[5, 1, 0, 1, 127, 0, 0, 1, port[0], port[1]])
        .unwrap();
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply).expect("a CONNECT reply");
    assert_eq!(reply[1], 0, "succeeded: {reply:?}");
    stream.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
}

/// Node metadata `backup` (GOST's): the backup node carries nothing while the other node
/// works, and takes over once it fails.
#[test]
fn a_backup_node_takes_over_when_the_other_fails() {
    let target = Target::http();
    let primary = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let backup = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let client = Gost::start_config(
        &format!(
            "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler: {{type: http, chain: c}}\nchains:\n- name: c\n  hops:\n  - name: h\n    nodes:\n    - {{name: primary, addr: '{}'}}\n    - {{name: backup, addr: '{}', metadata: {{backup: true}}}}\n",
            primary.addr(),
            backup.addr()
        ),
        1,
    );
    let proxy = format!("http://{}", client.addr());
    for _ in 0..4 {
        let out = get_via(&proxy, &target);
        assert!(
            out.text().starts_with("hello from target"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(
        backup.log().matches("\"tunnel\"").count(),
        0,
        "{}",
        backup.log()
    );
    drop(primary);
    // The first request finds the primary down; from then on the backup serves.
    let _ = get_via(&proxy, &target);
    for _ in 0..3 {
        let out = get_via(&proxy, &target);
        assert!(
            out.text().starts_with("hello from target"),
            "{}",
            out.stderr
        );
    }
}

/// Tunnels each of `nodes` has logged, once together they have logged `total` (bounded wait:
/// a node logs a tunnel when it closes, just after curl returns).
fn tunnels_per_node(nodes: &[Gost], total: usize) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts: Vec<usize> = nodes
            .iter()
            .map(|n| n.log().matches("\"tunnel\"").count())
            .collect();
        if counts.iter().sum::<usize>() >= total || Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GOST's `hash` strategy: a client keeps its node whatever it connects to, clients spread over
/// the nodes, an authenticated user keeps its node from any address, and with the handler's
/// `hash: host` a target keeps its node whoever asks.
#[test]
fn hash_selection_keys_on_the_client_the_user_or_the_target() {
    let four = [
        Target::http(),
        Target::http(),
        Target::http(),
        Target::http(),
    ];
    // Requests from 127.0.0.{source} through a gost whose chain has one `hash` hop of four
    // nodes (each a gost of its own), spread over `targets`; the tunnels each node carried.
    let run_phase = |handler: &str, user: Option<&str>, sources: &[u8], targets: &[&Target]| {
        let nodes: Vec<Gost> = (0..4)
            .map(|_| Gost::start(&["-L", "http://127.0.0.1:0"], 1))
            .collect();
        let node_list: String = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("    - {{name: n{i}, addr: '{}'}}\n", n.addr()))
            .collect();
        let client = Gost::start_config(
            &format!(
                "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler: {handler}\nchains:\n- name: c\n  hops:\n  - name: h\n    selector: {{strategy: hash}}\n    nodes:\n{node_list}"
            ),
            1,
        );
        let proxy = match user {
            Some(user) => format!("http://{user}@{}", client.addr()),
            None => format!("http://{}", client.addr()),
        };
        for (i, source) in sources.iter().enumerate() {
            let interface = format!("127.0.0.{source}");
            let url = format!("http://{}/hash", targets[i % targets.len()].addr);
            let out = curl(&["--interface", &interface, "-x", &proxy, &url]);
            assert!(
                out.text().starts_with("hello from target"),
                "from {interface}: {}",
                out.stderr
            );
        }
        let counts = tunnels_per_node(&nodes, sources.len());
        assert_eq!(counts.iter().sum::<usize>(), sources.len(), "{counts:?}");
        counts
    };
    let used = |counts: &[usize]| counts.iter().filter(|c| **c > 0).count();
    let clients: Vec<u8> = (2..14).collect();
    let plain = "{type: http, chain: c}";

    // One client, four targets: one node carries all (a key with the target in it would
    // almost surely spread them).
    let all: Vec<&Target> = four.iter().collect();
    let counts = run_phase(plain, None, &[1; 8], &all);
    assert_eq!(used(&counts), 1, "one client, one node: {counts:?}");
    // Twelve clients, one target: more than one node (keying on the target would use one).
    let counts = run_phase(plain, None, &clients, &all[..1]);
    assert!(used(&counts) >= 2, "clients spread: {counts:?}");
    // One user from twelve addresses, four targets: one node.
    let counts = run_phase(
        "{type: http, chain: c, auth: {username: alice, password: secret}}",
        Some("alice:secret"),
        &clients,
        &all,
    );
    assert_eq!(used(&counts), 1, "one user, one node: {counts:?}");
    // `hash: host`, one target, twelve clients: one node.
    let counts = run_phase(
        "{type: http, chain: c, metadata: {hash: host}}",
        None,
        &clients,
        &all[..1],
    );
    assert_eq!(used(&counts), 1, "one target, one node: {counts:?}");
}

/// Whether process `pid` has ended (gone, or a zombie waiting to be reaped).
fn ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| stat.contains(") Z "))
}

/// Workers end with their parent even when it is killed outright (SIGKILL, a crash), instead
/// of holding their ports for good.
#[test]
fn workers_end_with_a_killed_parent() {
    let mut gost = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "--",
            "-L",
            "socks5://127.0.0.1:0",
        ],
        2,
    );
    let workers = Workers::of(&gost, 2);
    gost.signal("KILL");
    assert!(gost.wait_exit(Duration::from_secs(5)).is_some());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !workers.0.iter().all(|pid| ended(*pid)) {
        assert!(
            Instant::now() < deadline,
            "workers {:?} outlived their parent",
            workers.0
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A worker that fails stops the others, and the parent exits with its code, so that whoever
/// supervises gost sees the failure.
#[test]
fn a_failing_worker_stops_the_others() {
    let gost_bin = gost_bin();
    let out = run(
        gost_bin.to_str().unwrap(),
        &[
            "-L",
            "http://127.0.0.1:0",
            "--",
            "-L",
            "socks5://127.0.0.1:0?udp=true",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("udp") && out.stderr.contains("stopping the others"),
        "{}",
        out.stderr
    );
    let out = run(gost_bin.to_str().unwrap(), &["--"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("nothing to run"), "{}", out.stderr);
}

#[test]
fn auto_handler_serves_http_socks4_and_socks5_on_one_port() {
    let target = Target::http();
    let server = Gost::start(&["-L", "127.0.0.1:0"], 1);
    for proxy in ["http", "socks5h", "socks5", "socks4", "socks4a"] {
        let out = get_via(&format!("{proxy}://{}", server.addr()), &target);
        assert_eq!(out.code, 0, "{proxy}: {}", out.stderr);
        assert!(out.text().starts_with("hello from target"), "{proxy}");
    }
}

#[test]
fn two_and_three_hop_chains_mixing_http_and_socks5() {
    let target = Target::http();
    let echo = Target::echo();
    let hop_http = Gost::start(&["-L", "http://a:1@127.0.0.1:0"], 1);
    let hop_socks = Gost::start(&["-L", "socks5://b:2@127.0.0.1:0"], 1);
    let hop_auto = Gost::start(&["-L", "127.0.0.1:0"], 1);

    // Two hops: http then socks5, entered through a socks5 front end.
    let front2 = Gost::start(
        &[
            "-L",
            "socks5://127.0.0.1:0",
            "-F",
            &format!("http://a:1@{}", hop_http.addr()),
            "-F",
            &format!("socks5://b:2@{}", hop_socks.addr()),
        ],
        1,
    );
    let out = get_via(&format!("socks5h://{}", front2.addr()), &target);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.text().starts_with("hello from target"));

    // Three hops: socks5, http, then the auto handler spoken to as SOCKS5; entered over HTTP.
    let front3 = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5://b:2@{}", hop_socks.addr()),
            "-F",
            &format!("http://a:1@{}", hop_http.addr()),
            "-F",
            &format!("socks5://{}", hop_auto.addr()),
        ],
        1,
    );
    let out = get_via(&format!("http://{}", front3.addr()), &target);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.text().starts_with("hello from target"));
    let stream = http_connect(front3.addr(), &echo.addr.to_string(), None).unwrap();
    echo_round_trip(stream, 4 * 1024 * 1024);

    // A wrong password at the second hop fails the route, and the log says which hop.
    let bad = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("socks5://b:2@{}", hop_socks.addr()),
            "-F",
            &format!("http://a:wrong@{}", hop_http.addr()),
        ],
        1,
    );
    let out = curl_status(&[
        "-x",
        &format!("http://{}", bad.addr()),
        &format!("http://{}/", target.addr),
    ]);
    assert_eq!(out.text(), "502");
    let log = bad.log();
    assert!(
        log.contains("chain-0/hop-1/node-0") && log.contains("407"),
        "{log}"
    );
    assert!(!log.contains("wrong"), "a password reached the log");
}

#[test]
fn several_nodes_per_hop_round_robin_and_skip_failed_nodes() {
    let target = Target::http();
    let a = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let b = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // One hop, three nodes on 127.0.0.1 (GOST's `host1,host2:port` form needs one port, so
    // the YAML form is used).
    let dir = tempdir();
    let yaml = dir.join("rr.yaml");
    std::fs::write(
        &yaml,
        format!(
            "services:\n- name: front\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    chain: c\nchains:\n- name: c\n  hops:\n  - name: h\n    selector:\n      strategy: round\n      maxFails: 1\n      failTimeout: 60s\n    nodes:\n    - {{name: a, addr: \"{}\"}}\n    - {{name: dead, addr: \"127.0.0.1:{dead}\"}}\n    - {{name: b, addr: \"{}\"}}\n",
            a.addr(),
            b.addr()
        ),
    )
    .unwrap();
    let front = Gost::start(&["-C", yaml.to_str().unwrap()], 1);
    let proxy = format!("http://{}", front.addr());
    let mut failures = 0;
    for _ in 0..12 {
        let out = get_via(&proxy, &target);
        if out.code != 0 || !out.text().starts_with("hello from target") {
            failures += 1;
        }
    }
    // At most the first pick of the dead node fails; then it is skipped for failTimeout.
    assert!(failures <= 1, "{failures} of 12 requests failed");
    let (log_a, log_b) = (a.log(), b.log());
    assert!(
        log_a.matches("\"forwarded\"").count() + log_a.matches("tunnel").count() > 0,
        "node a never used"
    );
    assert!(
        log_b.matches("\"forwarded\"").count() + log_b.matches("tunnel").count() > 0,
        "node b never used"
    );
}

#[test]
fn sigterm_stops_accepting_and_lets_open_tunnels_finish() {
    let echo = Target::echo();
    let mut server = Gost::start(&["-L", "http://127.0.0.1:0", "--grace-period", "20s"], 1);
    let addr = server.addr();
    let mut tunnel = http_connect(addr, &echo.addr.to_string(), None).unwrap();
    server.signal("TERM");
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The open tunnel keeps working and the process waits for it.
    tunnel.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    tunnel.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    assert!(server.is_running(), "exited with a tunnel open");
    drop(tunnel);
    assert_eq!(
        server.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        server.log()
    );
}

#[test]
fn grace_period_bounds_the_drain_and_a_second_signal_exits_at_once() {
    let echo = Target::echo();
    let mut server = Gost::start(&["-L", "http://127.0.0.1:0", "--grace-period", "1s"], 1);
    let _tunnel = http_connect(server.addr(), &echo.addr.to_string(), None).unwrap();
    server.signal("INT");
    assert_eq!(
        server.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        server.log()
    );

    let mut server = Gost::start(&["-L", "http://127.0.0.1:0", "--grace-period", "60s"], 1);
    let _tunnel = http_connect(server.addr(), &echo.addr.to_string(), None).unwrap();
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.is_running());
    server.signal("TERM");
    // 128 + the signal's number, as a shell reports a process the signal killed.
    assert_eq!(
        server.wait_exit(Duration::from_secs(10)),
        Some(143),
        "{}",
        server.log()
    );
    let mut server = Gost::start(&["-L", "http://127.0.0.1:0", "--grace-period", "60s"], 1);
    let _tunnel = http_connect(server.addr(), &echo.addr.to_string(), None).unwrap();
    server.signal("INT");
    std::thread::sleep(Duration::from_millis(300));
    server.signal("INT");
    assert_eq!(
        server.wait_exit(Duration::from_secs(10)),
        Some(130),
        "{}",
        server.log()
    );
}

/// A SOCKS5 node that takes connections and hangs up after the greeting (or never answers it)
/// counts as failed, as in GOST, and is skipped for `failTimeout` like one that refuses
/// connections: only node dials used to count, so every other request failed for ever. A node
/// that stalls is named in the one log line, not "the route".
#[test]
fn nodes_failing_or_stalling_in_their_handshake_are_skipped_and_named() {
    let target = Target::http();
    let good = Gost::start(&["-L", "socks5://127.0.0.1:0"], 1);
    // Reads the greeting and closes.
    let closing = Target::start(|mut stream| {
        let mut greeting = [0u8; 3];
        let _ = stream.read(&mut greeting);
    });
    // Reads the greeting and says nothing for longer than the dial timeout.
    let silent = Target::start(|mut stream| {
        let mut greeting = [0u8; 3];
        let _ = stream.read(&mut greeting);
        std::thread::sleep(Duration::from_secs(4));
    });
    let front = |bad: std::net::SocketAddr| {
        Gost::start_config(
            &format!(
                "services:\n- name: front\n  addr: 127.0.0.1:0\n  metadata: {{dialTimeout: 1s}}\n  handler: {{type: http, chain: c}}\nchains:\n- name: c\n  hops:\n  - name: h\n    selector: {{strategy: round, maxFails: 1, failTimeout: 60s}}\n    nodes:\n    - {{name: bad, addr: '{bad}', connector: {{type: socks5}}}}\n    - {{name: good, addr: '{}', connector: {{type: socks5}}}}\n",
                good.addr()
            ),
            1,
        )
    };
    for bad in [closing.addr, silent.addr] {
        let front = front(bad);
        let proxy = format!("http://{}", front.addr());
        let mut failures = 0;
        for _ in 0..6 {
            if !get_via(&proxy, &target)
                .text()
                .starts_with("hello from target")
            {
                failures += 1;
            }
        }
        assert!(
            failures <= 1,
            "{failures} of 6 requests failed\n{}",
            front.log()
        );
        let failed = front
            .log()
            .lines()
            .filter(|l| l.contains("upstream dial failed"))
            .map(str::to_string)
            .collect::<Vec<_>>();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].contains(&bad.to_string()), "{failed:?}");
        if bad == silent.addr {
            assert!(
                failed[0].contains("did not finish its handshake within 1s"),
                "{failed:?}"
            );
        }
    }
}

/// A `dialTimeout` above 15 s is what bounds a slow node's answer: the connectors had 15 s
/// limits of their own, although GOST's have none unless `timeout` is set.
#[test]
fn a_long_dial_timeout_waits_for_a_slow_node() {
    let target = Target::echo();
    // An HTTP proxy that answers CONNECT after 16 s, then echoes.
    let slow = Target::slow_http_proxy(Duration::from_secs(16));
    let front = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0?dialTimeout=40s",
            "-F",
            &format!("http://{}", slow.addr),
        ],
        1,
    );
    let started = Instant::now();
    let mut stream = http_connect(front.addr(), &target.addr.to_string(), None)
        .unwrap_or_else(|e| panic!("{e}\n{}", front.log()));
    assert!(started.elapsed() >= Duration::from_secs(15));
    stream.write_all(b"ping").unwrap();
    let mut pong = [0u8; 4];
    stream.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"ping");
}

/// A target refused behind a SOCKS5 node gets the same SOCKS5 reply as one gost dials itself
/// (0x05, connection refused), not a general failure.
#[test]
fn a_refused_target_behind_a_socks5_node_is_still_refused() {
    let node = Gost::start(&["-L", "socks5://127.0.0.1:0"], 1);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let direct = Gost::start(&["-L", "socks5://127.0.0.1:0"], 1);
    let chained = Gost::start(
        &[
            "-L",
            "socks5://127.0.0.1:0",
            "-F",
            &format!("socks5://{}?notls=true", node.addr()),
        ],
        1,
    );
    for gost in [&direct, &chained] {
        let (_, _, reply) = socks5_connect_raw(gost.addr(), &[0], dead);
        assert_eq!(reply, 0x05, "{}", gost.log());
    }
}

/// A lazy relay node in the middle of a chain answers its tunnel request only when the next
/// hop's handshake reads: its refusal is logged against the relay node ("to reach next hop"),
/// not as the next node's failure, and a SOCKS5 client gets a general failure for wrong
/// credentials, not "connection refused".
#[test]
fn a_lazy_relay_refusal_is_blamed_on_the_relay_node() {
    let relay = Gost::start(&["-L", "relay://ru:rp@127.0.0.1:0"], 1);
    let echo = Target::echo();
    // A next hop with a handshake of its own (socks5), and one without (http).
    for (scheme, query) in [("socks5", "?notls=true"), ("http", "")] {
        let next = Gost::start(&["-L", &format!("{scheme}://127.0.0.1:0")], 1);
        let front = Gost::start(
            &[
                "-L",
                "socks5://127.0.0.1:0",
                "-F",
                &format!("relay://ru:WRONG@{}", relay.addr()),
                "-F",
                &format!("{scheme}://{}{query}", next.addr()),
            ],
            1,
        );
        let (_, _, reply) = socks5_connect_raw(front.addr(), &[0], echo.addr);
        assert_eq!(reply, 0x01, "{scheme}: {}", front.log());
        // The line may come just after the reply.
        front.wait_for_log("relay node refused the tunnel");
        let log = front.log();
        let line = log
            .lines()
            .find(|l| l.contains("relay node refused the tunnel"))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(line.contains("hop-0/node-0"), "{scheme}: {line}");
        assert!(
            line.contains(&format!("to reach next hop {}", next.addr())),
            "{scheme}: {line}"
        );
    }
}

/// GOST's hop "Data Source: File": a top-level hop whose nodes come from a JSON file (the
/// format of its Hop page), used round-robin with any inline ones, and read again when the
/// file changes; a broken file is refused and the last good nodes serve on.
#[test]
fn a_hops_nodes_file_is_read_and_followed() {
    let dir = tempdir();
    let target = Target::http();
    let http = Gost::start(&["-L", "http://user:pass@127.0.0.1:0"], 1);
    let socks = Gost::start(&["-L", "socks5://user:pass@127.0.0.1:0"], 1);
    let nodes = dir.join("nodes.json");
    let node = |name: &str, addr: std::net::SocketAddr, connector: &str| {
        format!(
            r#"{{"name": "{name}", "addr": "{addr}", "connector": {{"type": "{connector}", "auth": {{"username": "user", "password": "pass"}}}}, "dialer": {{"type": "tcp"}}}}"#
        )
    };
    std::fs::write(
        &nodes,
        format!(
            "[{}, {}]",
            node("http", http.addr(), "http"),
            node("socks5", socks.addr(), "socks5")
        ),
    )
    .unwrap();
    let client = Gost::start_config(
        &format!(
            "services:\n- name: service-0\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    \
             chain: chain-0\nchains:\n- name: chain-0\n  hops:\n  - name: hop-0\nhops:\n- name: hop-0\n  \
             reload: 10s\n  file:\n    path: {}\n  nodes: []\n",
            nodes.display()
        ),
        1,
    );
    for _ in 0..4 {
        let out = get_via(&format!("http://{}", client.addr()), &target);
        assert!(
            out.text().starts_with("hello from target"),
            "{}\n{}",
            out.stderr,
            client.log()
        );
    }
    let servers = [http, socks];
    assert_eq!(tunnels_per_node(&servers, 4), [2, 2]);

    // A broken file is refused, and the nodes read last serve on.
    std::fs::write(&nodes, "[{\"name\": \"n\", \"addr\": \"nohost\"}]").unwrap();
    client.wait_for_log("hops[0].file[0].addr");
    for _ in 0..2 {
        let out = get_via(&format!("http://{}", client.addr()), &target);
        assert!(
            out.text().starts_with("hello from target"),
            "{}\n{}",
            out.stderr,
            client.log()
        );
    }
    assert_eq!(tunnels_per_node(&servers, 6), [3, 3]);

    // Only the SOCKS5 node, now with a wrong password: requests fail once the file is read.
    let wrong = node("socks5", servers[1].addr(), "socks5").replace("pass\"", "nope\"");
    std::fs::write(&nodes, format!("[{wrong}]")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_via(&format!("http://{}", client.addr()), &target)
        .text()
        .starts_with("hello from target")
    {
        assert!(Instant::now() < deadline, "{}", client.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GOST's `parallel` strategy (3.3): the nodes of a chain's first hop are dialled at once and
/// the first to connect carries the tunnel. One node here takes TCP connections and never
/// finishes TLS: every request goes through the other at once, where `round` would send every
/// other one to the stalled node. A later hop, reached one tunnel at a time, cannot race.
#[test]
fn the_parallel_strategy_takes_the_node_that_connects_first() {
    let target = Target::http();
    let stalled = Target::start(|stream| {
        std::thread::sleep(Duration::from_secs(5));
        drop(stream);
    });
    let server = Gost::start(&["-L", "https://127.0.0.1:0"], 1);
    let node = format!(
        "https://{},{}?strategy=parallel",
        stalled.addr,
        server.addr()
    );
    let client = Gost::start(&["-L", "http://127.0.0.1:0", "-F", &node], 1);
    for _ in 0..4 {
        let started = Instant::now();
        let out = get_via(&format!("http://{}", client.addr()), &target);
        assert!(
            out.text().starts_with("hello from target"),
            "{}\n{}",
            out.stderr,
            client.log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    let out = run(
        gost_bin().to_str().unwrap(),
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            "http://127.0.0.1:1",
            "-F",
            "http://127.0.0.1:2,127.0.0.1:3?strategy=parallel",
        ],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("hops[1].selector.strategy") && out.stderr.contains("first hop"),
        "{}",
        out.stderr
    );
}
