//! The `pht` and `phts` transports with real `gost` processes: the tutorial's relay over PHT
//! with custom paths (CLI and YAML, pht and phts), bulk echo, the protocol driven by Python's
//! standard library, refusals, and sessions of vanished clients being reclaimed.
//!
//! The open-session count is read from the server's debug log: every open and close logs
//! `pht session opened|closed` with the count left open (`"open":N`).

use std::thread;
use std::time::{Duration, Instant};

use gost_e2e::*;

const PATHS: &str = "authorizePath=/a&pushPath=/p&pullPath=/q";

/// Bytes echoed through the tunnel in the bulk tests.
const BULK: usize = 8 << 20;

/// How long a server may take to notice a vanished client: a broken pull shows at the
/// latest when a heartbeat (every 10 s) cannot be written, twice for the kernel to report it.
const RECLAIM_WAIT: Duration = Duration::from_secs(40);

fn server(scheme: &str) -> Gost {
    Gost::start(&["-L", &format!("relay+{scheme}://127.0.0.1:0?{PATHS}")], 1)
}

/// A client whose node is written as the tutorial does: only a port (empty host, A7).
fn client(scheme: &str, server: &Gost) -> Gost {
    Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("relay+{scheme}://:{}?{PATHS}", server.addr().port()),
        ],
        1,
    )
}

fn assert_hello(proxy: std::net::SocketAddr, target: &Target, what: &str) {
    let out = curl(&[
        "-x",
        &format!("http://{proxy}"),
        &format!("http://{}/{what}", target.addr),
    ]);
    assert_eq!(out.code, 0, "{what}: {}", out.stderr);
    assert!(
        out.text().starts_with("hello from target"),
        "{what}: {}",
        out.text()
    );
}

/// Waits until the server logged a session close leaving `open` sessions.
fn wait_for_open(server: &Gost, open: usize, within: Duration) {
    let wanted = format!("\"open\":{open}");
    let deadline = Instant::now() + within;
    loop {
        let log = server.log();
        let last = log
            .lines()
            .rfind(|l| l.contains("pht session opened") || l.contains("pht session closed"))
            .map(str::to_string);
        if let Some(last) = &last
            && last.contains("pht session closed")
            && last.contains(&wanted)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no session close leaving {open} open within {within:?}; last: {last:?}\n{log}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn seed_relay_over_pht_cli() {
    let target = Target::http();
    let server = server("pht");
    let client = client("pht", &server);
    assert_hello(client.addr(), &target, "seed");
    server.wait_for_log("pht session opened");
}

#[test]
fn seed_relay_over_pht_yaml() {
    let target = Target::http();
    // Under the dialer: node-level metadata does not reach it.
    let md = "        metadata:\n          authorizePath: /a\n          pushPath: /p\n          pullPath: /q\n";
    let server = Gost::start_config(
        "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: relay\n  listener:\n    type: pht\n    metadata:\n      authorizePath: /a\n      pushPath: /p\n      pullPath: /q\n",
        1,
    );
    let client = Gost::start_config(
        &format!(
            "services:\n- name: service-0\n  addr: \"127.0.0.1:0\"\n  handler:\n    type: http\n    chain: chain-0\n  listener:\n    type: tcp\nchains:\n- name: chain-0\n  hops:\n  - name: hop-0\n    nodes:\n    - name: node-0\n      addr: \"127.0.0.1:{}\"\n      connector:\n        type: relay\n      dialer:\n        type: pht\n{md}",
            server.addr().port()
        ),
        1,
    );
    assert_hello(client.addr(), &target, "yaml");
}

#[test]
fn seed_relay_over_phts_cli() {
    let target = Target::http();
    let server = server("phts");
    let client = client("phts", &server);
    assert_hello(client.addr(), &target, "phts");
}

/// A client whose pull or push path is not the server's: the request fails, the client's log
/// names the node and the path it asked for, and the server goes on serving good clients.
#[test]
fn wrong_paths_are_named_in_the_error_and_the_server_keeps_serving() {
    let target = Target::http();
    let server = server("pht");
    let port = server.addr().port();
    for (query, named) in [
        (
            "authorizePath=/a&pushPath=/p",
            format!("PHT pull at 127.0.0.1:{port}/pull answered 404"),
        ),
        (
            "authorizePath=/a&pullPath=/q&pushPath=/x",
            format!("PHT push at 127.0.0.1:{port}/x answered 404"),
        ),
    ] {
        let bad = Gost::start(
            &[
                "-L",
                "http://127.0.0.1:0",
                "-F",
                &format!("relay+pht://127.0.0.1:{port}?{query}"),
            ],
            1,
        );
        let out = curl(&[
            "-x",
            &format!("http://{}", bad.addr()),
            &format!("http://{}/bad", target.addr),
        ]);
        assert!(!out.text().starts_with("hello from target"), "{query}");
        bad.wait_for_log(&named);
        let good = client("pht", &server);
        assert_hello(good.addr(), &target, "good");
    }
}

#[test]
fn bulk_echo_over_pht_and_phts() {
    let echo = Target::echo();
    for scheme in ["pht", "phts"] {
        let server = server(scheme);
        let client = client(scheme, &server);
        let tunnel = http_connect(client.addr(), &echo.addr.to_string(), None)
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        echo_round_trip(tunnel, BULK);
        // The echo ended both ways: the session is gone on the server.
        wait_for_open(&server, 0, RECLAIM_WAIT);
    }
}

/// pht and phts on the third hop of a chain, behind an HTTP proxy and a SOCKS5 proxy (the
/// way through a corporate proxy): the tunnel's pull and push connections are each a tunnel
/// through both, and bytes arrive intact.
#[test]
fn pht_and_phts_behind_two_hops() {
    let echo = Target::echo();
    let target = Target::http();
    let middle = Gost::start(
        &["-L", "http://127.0.0.1:0", "-L", "socks5://127.0.0.1:0"],
        2,
    );
    let http_hop = middle.service_addr("service-0").expect("http hop");
    let socks_hop = middle.service_addr("service-1").expect("socks5 hop");
    for scheme in ["pht", "phts"] {
        let server = server(scheme);
        let client = Gost::start(
            &[
                "-L",
                "http://127.0.0.1:0",
                "-F",
                &format!("http://{http_hop}"),
                "-F",
                &format!("socks5://{socks_hop}"),
                "-F",
                &format!("relay+{scheme}://{}?{PATHS}", server.addr()),
            ],
            1,
        );
        assert_hello(client.addr(), &target, scheme);
        let tunnel = http_connect(client.addr(), &echo.addr.to_string(), None)
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        echo_round_trip(tunnel, 1 << 20);
        wait_for_open(&server, 0, RECLAIM_WAIT);
        // Every connection reached the PHT server through the socks5 hop: the middle process
        // logs each when it closes, with the PHT server as its target.
        let through = format!("\"target\":\"{}\"", server.addr());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = middle.log();
            let socks_to_server = log
                .lines()
                .filter(|l| l.contains("\"tunnel\"") && l.contains(&through))
                .count();
            if socks_to_server >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{scheme}: {socks_to_server} tunnels to the PHT server through the socks5 hop:\n{log}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn endpoints_refuse_wrong_requests() {
    let server = server("pht");
    let base = format!("http://{}", server.addr());
    let status = |args: &[&str]| curl_status(args).text();
    assert_eq!(status(&[&format!("{base}/p?token=x")]), "400");
    assert_eq!(status(&["-X", "POST", &format!("{base}/q?token=x")]), "400");
    assert_eq!(status(&[&format!("{base}/push?token=x")]), "404");
    assert_eq!(
        status(&["--data-binary", "%%%\n", &format!("{base}/p?token=y")]),
        "400"
    );
    let out = curl(&["-i", &format!("{base}/a")]);
    assert!(out.text().starts_with("HTTP/1.1 200"), "{}", out.text());
    assert!(out.text().contains("token="), "{}", out.text());
}

#[test]
fn python_stdlib_client_speaks_the_protocol() {
    let echo = Target::echo();
    let server = server("pht");
    python_checks(
        "pht_client.py",
        &[
            server.addr().to_string(),
            "/a".into(),
            "/p".into(),
            "/q".into(),
            echo.addr.to_string(),
            "close".into(),
        ],
        &[
            "authorize ok",
            "pull ok",
            "push ok",
            "relay ok",
            "echo ok",
            "heartbeat ok",
            "close ok",
            "pull ended ok",
            "closed token ok",
        ],
    );
    wait_for_open(&server, 0, Duration::from_secs(5));
}

#[test]
fn vanished_python_client_leaves_no_session() {
    let echo = Target::echo();
    let server = server("pht");
    python_checks(
        "pht_client.py",
        &[
            server.addr().to_string(),
            "/a".into(),
            "/p".into(),
            "/q".into(),
            echo.addr.to_string(),
            "vanish".into(),
        ],
        &["echo ok"],
    );
    wait_for_open(&server, 0, RECLAIM_WAIT);
}

#[test]
fn killed_gost_client_leaves_no_session() {
    let echo = Target::echo();
    let server = Gost::start(
        &[
            "-L",
            &format!("relay+pht://127.0.0.1:0?{PATHS}"),
            "-metrics",
            "127.0.0.1:0",
        ],
        2,
    );
    let metrics = format!("http://{}/metrics", server.addrs()[0]);
    let pht = server.service_addr("service-0").expect("pht service");
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("relay+pht://:{}?{PATHS}", pht.port()),
        ],
        1,
    );
    let mut tunnel = http_connect(client.addr(), &echo.addr.to_string(), None).unwrap();
    {
        use std::io::{Read, Write};
        tunnel.write_all(b"ping").unwrap();
        let mut pong = [0u8; 4];
        tunnel.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"ping");
    }
    server.wait_for_log("pht session opened");
    let sessions = || {
        let out = python("scrape_metrics.py", &[&metrics]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.text()
            .lines()
            .find(|l| {
                // Labelled like every series: the host, then the service.
                l.starts_with("gost_pht_sessions{host=") && l.contains(",service=service-0}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(
        sessions(),
        Some(1.0),
        "the open session is visible in metrics"
    );
    client.signal("KILL");
    wait_for_open(&server, 0, RECLAIM_WAIT);
    assert_eq!(
        sessions(),
        Some(0.0),
        "the reclaimed session left the gauge"
    );
}

/// A rolling update on one port: the server gets SIGTERM while a tunnel is open (its listener
/// closes, the tunnel drains), and a replacement starts on the same port. The client's pooled
/// keep-alive connection still leads to the stopping server, which refuses a new session on it
/// with `503` and `Connection: close`; the client asks again on a new connection, which reaches
/// the replacement, so a new tunnel opens without an error. The old tunnel goes on moving bytes
/// on the stopping server.
#[test]
fn a_new_tunnel_during_a_rolling_update_reaches_the_replacement() {
    for scheme in ["pht", "phts"] {
        rolling_update(scheme);
    }
}

/// See [`a_new_tunnel_during_a_rolling_update_reaches_the_replacement`].
fn rolling_update(scheme: &str) {
    use std::io::{Read, Write};
    use std::sync::{Arc, Condvar, Mutex};

    // Echoes; on `wait` it writes `late` once the test says so (within 20 s).
    let go = Arc::new((Mutex::new(false), Condvar::new()));
    let target = {
        let go = go.clone();
        Target::start(move |mut stream| {
            let mut buf = [0u8; 1024];
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if &buf[..n] == b"wait" {
                    let (lock, cvar) = &*go;
                    let (guard, _) = cvar
                        .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(20), |go| {
                            !*go
                        })
                        .unwrap();
                    drop(guard);
                    let _ = stream.write_all(b"late");
                } else if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        })
    };
    let echo = |tunnel: &mut std::net::TcpStream, what: &[u8]| {
        tunnel.write_all(what).unwrap();
        let mut got = vec![0u8; what.len()];
        tunnel.read_exact(&mut got).unwrap();
        assert_eq!(got, what);
    };
    let port = free_port();
    let listen = format!("relay+{scheme}://127.0.0.1:{port}?{PATHS}");
    let mut old = Gost::start(&["-L", &listen], 1);
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("relay+{scheme}://127.0.0.1:{port}?{PATHS}"),
        ],
        1,
    );
    let mut first = http_connect(client.addr(), &target.addr.to_string(), None).unwrap();
    echo(&mut first, b"before");
    old.signal("TERM");
    old.wait_for_log("stopped accepting");
    // Draining: the open tunnel still works both ways, and its pushes leave a kept-alive
    // connection to the stopping server in the client's pool.
    echo(&mut first, b"draining");
    first.write_all(b"wait").unwrap();
    let new = Gost::start(&["-L", &listen], 1);
    assert_eq!(new.addr().port(), port);
    let second = http_connect(client.addr(), &target.addr.to_string(), None)
        .unwrap_or_else(|e| panic!("{scheme}: the new tunnel: {e}\n{}", client.log()));
    echo_round_trip_small(second);
    new.wait_for_log("pht session opened");
    // The old tunnel still carries what its target sends.
    {
        let (lock, cvar) = &*go;
        *lock.lock().unwrap() = true;
        cvar.notify_all();
    }
    let mut late = [0u8; 4];
    first.read_exact(&mut late).unwrap();
    assert_eq!(&late, b"late");
    assert!(
        old.is_running(),
        "{scheme}: the old server drains its open tunnel"
    );
    let log = client.log();
    // phts: the client does not verify the server's certificate, and says so.
    let mut failures = client.logged_at("warn");
    failures.extend(client.logged_at("error"));
    failures.retain(|l| !l.contains("TLS server certificate not verified"));
    assert!(
        failures.is_empty(),
        "{scheme}: the client logged a failure:\n{log}"
    );
    assert!(
        log.contains("authorizing again on a new connection"),
        "{scheme}: the new tunnel was not refused by the stopping server first:\n{log}"
    );
}

/// A short echo through `tunnel` (its target echoes), then its end.
fn echo_round_trip_small(tunnel: std::net::TcpStream) {
    echo_round_trip(tunnel, 64 * 1024);
}
