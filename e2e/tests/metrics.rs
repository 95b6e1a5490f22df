//! The metrics address: GOST's Prometheus series scraped and parsed with the reference parser,
//! Basic auth, `/healthz` and `/readyz` through a SIGTERM drain.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gost_e2e::*;

fn status(url: &str) -> u16 {
    curl_status(&[url]).text().parse().unwrap_or(0)
}

/// The status code of a GET of `url` through the HTTP proxy at `proxy`, as curl prints it.
fn status_via(proxy: SocketAddr, url: &str) -> String {
    curl_status(&["-x", &format!("http://{proxy}"), url]).text()
}

/// Scrapes `url` until `done` holds for the text, for `within` at most; the last text.
fn scrape_until(url: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = scrape_metrics(url, None);
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn gost_series_are_served_and_parse() {
    let target = Target::http();
    let gost = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0?path=/m",
        ],
        2,
    );
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    for _ in 0..3 {
        // Through CONNECT tunnels, whose bytes are counted as they move.
        let out = curl(&[
            "-p",
            "-x",
            &format!("http://{proxy}"),
            &format!("http://{}/", target.addr),
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    assert_eq!(status_via(proxy, "http://127.0.0.1:1/"), "502");

    // Counters are updated as connections end; allow the last one to finish.
    let url = format!("http://{metrics}/m");
    let text = scrape_until(&url, Duration::from_secs(5), |text| {
        metric_sample(text, "gost_service_requests_in_flight{client=127.0.0.1,") == Some(0.0)
    });
    assert!(text.contains("status=200"), "{text}");
    let service = "service=service-0";
    let requests = metric_sample(&text, "gost_service_requests_total{client=127.0.0.1,host=")
        .unwrap_or_else(|| panic!("requests not counted:\n{text}"));
    assert_eq!(requests, 4.0, "{text}");
    assert!(text.contains(service), "{text}");
    assert_eq!(metric_sample(&text, "gost_services{"), Some(1.0), "{text}");
    let output = metric_sample(
        &text,
        "gost_service_transfer_output_bytes_total{client=127.0.0.1,",
    )
    .unwrap_or_else(|| panic!("output bytes not counted:\n{text}"));
    assert!(output > 0.0, "{text}");
    assert!(
        metric_sample(&text, "gost_service_request_duration_seconds_count{").unwrap_or(0.0) >= 4.0,
        "{text}"
    );
    assert!(
        metric_sample(&text, "gost_service_handler_errors_total{client=127.0.0.1,").unwrap_or(0.0)
            >= 1.0,
        "the refused upstream is a handler error:\n{text}"
    );
    assert_eq!(status(&format!("http://{metrics}/metrics")), 404);
    assert_eq!(status(&format!("http://{metrics}/healthz")), 200);
}

#[test]
fn metrics_auth_from_the_config_file() {
    let gost = Gost::start_config(
        "services:\n\
         - name: front\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n\
         metrics:\n  addr: 127.0.0.1:0\n  auth:\n    username: prom\n    password: s3cret\n",
        2,
    );
    let url = format!("http://{}/metrics", gost.addrs()[0]);
    let denied = scrape_metrics(&url, None);
    assert!(denied.contains("status=401"), "{denied}");
    assert!(denied.contains("www-authenticate=Basic"), "{denied}");
    assert!(scrape_metrics(&url, Some("prom:wrong")).contains("status=401"));
    let ok = scrape_metrics(&url, Some("prom:s3cret"));
    assert!(ok.contains("status=200"), "{ok}");
    assert!(ok.contains("gost_services{host="), "{ok}");
    assert!(!gost.log().contains("s3cret"), "a password reached the log");
}

/// As GOST: a metrics `auther` replaces the section's `auth`, and its entries without a user
/// name are skipped.
#[test]
fn a_metrics_auther_replaces_auth_and_skips_entries_without_a_user_name() {
    let gost = Gost::start_config(
        "services:\n\
         - name: front\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n\
         authers:\n- name: scrapers\n  auths:\n  - {username: \"\", password: open}\n  - {username: prom, password: s3cret}\n\
         metrics:\n  addr: 127.0.0.1:0\n  auther: scrapers\n  auth: {username: old, password: gone}\n",
        2,
    );
    let url = format!("http://{}/metrics", gost.addrs()[0]);
    for wrong in [":open", "old:gone"] {
        let denied = scrape_metrics(&url, Some(wrong));
        assert!(denied.contains("status=401"), "{wrong}: {denied}");
    }
    let ok = scrape_metrics(&url, Some("prom:s3cret"));
    assert!(ok.contains("status=200"), "{ok}");
}

#[test]
fn metrics_flag_in_gosts_url_form_requires_its_basic_auth() {
    // GOST's documentation form, with a percent-encoded '@' in the password.
    let gost = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-metrics",
            "prom:s3%40cret@127.0.0.1:0?path=/metrics",
        ],
        2,
    );
    let url = format!("http://{}/metrics", gost.addrs()[0]);
    let denied = scrape_metrics(&url, None);
    assert!(denied.contains("status=401"), "{denied}");
    assert!(scrape_metrics(&url, Some("prom:s3cret")).contains("status=401"));
    let ok = scrape_metrics(&url, Some("prom:s3@cret"));
    assert!(ok.contains("status=200"), "{ok}");
    assert!(!gost.log().contains("s3"), "a password reached the log");

    let out = run(
        gost_bin().to_str().unwrap(),
        &[
            "-L",
            ":8080",
            "-metrics",
            "user:pass@:9000?path=/m",
            "-O",
            "yaml",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let yaml = out.text();
    for expected in [
        "addr: \":9000\"",
        "path: /m",
        "username: user",
        "password: pass",
    ] {
        assert!(yaml.contains(expected), "missing {expected:?} in\n{yaml}");
    }
}

#[test]
fn gost_metrics_variable_moves_the_endpoint_and_the_flag_wins() {
    let dir = tempdir();
    let file = dir.join("gost.yaml");
    std::fs::write(
        &file,
        "services:\n- name: a\n  addr: :8080\n\
         metrics:\n  addr: :9000\n  path: /m\n  auth:\n    username: prom\n    password: pw\n",
    )
    .unwrap();
    let gost = gost_bin();
    let print = |env: &str, extra: &[&str]| {
        let mut args = vec![env, gost.to_str().unwrap(), "-C", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-O", "yaml"]);
        let out = run("env", &args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.text()
    };
    // The address only: the file's path and credentials stay.
    let yaml = print("GOST_METRICS=127.0.0.1:9100", &[]);
    for expected in ["addr: 127.0.0.1:9100", "path: /m", "username: prom"] {
        assert!(yaml.contains(expected), "missing {expected:?} in\n{yaml}");
    }
    let yaml = print("GOST_METRICS=127.0.0.1:9100", &["-metrics", ":9200"]);
    assert!(yaml.contains("addr: \":9200\""), "{yaml}");
    assert!(!yaml.contains("/m") && !yaml.contains("prom"), "{yaml}");
    assert!(print("GOST_METRICS=", &[]).contains("addr: \":9000\""));
}

#[test]
fn readyz_turns_unready_while_draining() {
    let echo = Target::echo();
    let mut gost = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0",
            "--grace-period",
            "20s",
        ],
        2,
    );
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    let readyz = format!("http://{metrics}/readyz");
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&readyz) != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // An open tunnel keeps the process draining after SIGTERM.
    let mut tunnel = http_connect(proxy, &echo.addr.to_string(), None).expect("tunnel");
    gost.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&readyz) != 503 {
        assert!(Instant::now() < deadline, "still ready while draining");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(&format!("http://{metrics}/healthz")), 200);
    // The open tunnel still works while draining, then its end lets the process exit.
    tunnel.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    drop(tunnel);
    assert_eq!(gost.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn bad_metrics_flag_is_refused_by_name() {
    let out = run(
        gost_bin().to_str().unwrap(),
        &[
            "-L",
            "http://127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0?paht=/x",
        ],
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("paht"), "{}", out.stderr);
}

#[test]
fn connections_beyond_the_limit_are_refused_and_counted() {
    let echo = Target::echo();
    let gost = Gost::start_config(
        "services:\n\
         - name: small\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n  metadata:\n    maxConnections: 2\n\
         metrics:\n  addr: 127.0.0.1:0\n",
        2,
    );
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    let target = echo.addr.to_string();
    let first = http_connect(proxy, &target, None).expect("first tunnel");
    let _second = http_connect(proxy, &target, None).expect("second tunnel");
    // The third is closed at once, without an answer.
    assert!(http_connect(proxy, &target, None).is_err());
    let text = scrape_metrics(&format!("http://{metrics}/metrics"), None);
    assert_eq!(
        metric_sample(&text, "gost_service_refused_connections_total{host="),
        Some(1.0),
        "{text}"
    );
    // A freed slot is usable again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if http_connect(proxy, &target, None).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn invalid_connection_limit_names_the_field() {
    let dir = tempdir();
    let file = dir.join("gost.yaml");
    std::fs::write(
        &file,
        "services:\n- name: s\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n  metadata:\n    maxConnections: -3\n",
    )
    .unwrap();
    let out = run(
        gost_bin().to_str().unwrap(),
        &["-C", file.to_str().unwrap()],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("services[0].metadata.maxConnections"),
        "{}",
        out.stderr
    );
}

#[test]
fn repeated_wrong_passwords_get_the_address_refused_and_counted() {
    let echo = Target::echo();
    let gost = Gost::start(
        &[
            "-L",
            "http://u:right@127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0",
        ],
        2,
    );
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    let target = echo.addr.to_string();
    assert!(http_connect(proxy, &target, Some("u:right")).is_ok());
    for _ in 0..10 {
        let refused = http_connect(proxy, &target, Some("u:guess")).unwrap_err();
        assert!(refused.starts_with("HTTP/1.1 407"), "{refused}");
    }
    // Now even the right password is refused from this address, for the rest of the minute.
    let refused = http_connect(proxy, &target, Some("u:right")).unwrap_err();
    assert!(refused.starts_with("HTTP/1.1 407"), "{refused}");
    // Log lines reach the test through a pipe, possibly after the answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gost.log().contains("too many failed authentications") {
        assert!(Instant::now() < deadline, "{}", gost.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = scrape_metrics(&format!("http://{metrics}/metrics"), None);
    assert_eq!(
        metric_sample(&text, "gost_service_auth_failures_total{host="),
        Some(11.0),
        "{text}"
    );
    assert!(!gost.log().contains("guess"), "a password reached the log");
}

/// The standard `process_*` series are served, and `gost_chain_errors_total` counts nodes
/// that fail, not targets that cannot be reached through a working node (a user asking for a
/// dead host used to count against a healthy node, and fire its alerts).
#[test]
fn process_series_and_chain_errors_for_nodes_only() {
    let target = Target::http();
    let node = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gost = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("http://{}", node.addr()),
            "-metrics",
            "127.0.0.1:0",
        ],
        2,
    );
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    assert_eq!(
        status_via(proxy, &format!("http://{}/", target.addr)),
        "200"
    );
    assert_eq!(status_via(proxy, &format!("http://{dead}/")), "502");
    let text = scrape_metrics(&format!("http://{metrics}/metrics"), None);
    for series in [
        "process_resident_memory_bytes{",
        "process_open_fds{",
        "process_start_time_seconds{",
    ] {
        assert!(
            metric_sample(&text, series).is_some_and(|v| v > 0.0),
            "{series}:\n{text}"
        );
    }
    // A young process may not have used a clock tick yet.
    assert!(
        metric_sample(&text, "process_cpu_seconds_total{").is_some(),
        "{text}"
    );
    assert_eq!(
        metric_sample(&text, "gost_chain_errors_total{"),
        None,
        "the node works; only the target was dead:\n{text}"
    );
    // Both requests reached the node, the dead target's included.
    assert_eq!(
        metric_sample(&text, "gost_chain_node_connect_duration_seconds_count{"),
        Some(2.0),
        "{text}"
    );
    drop(node);
    assert_eq!(
        status_via(proxy, &format!("http://{}/", target.addr)),
        "502"
    );
    let text = scrape_metrics(&format!("http://{metrics}/metrics"), None);
    assert_eq!(
        metric_sample(&text, "gost_chain_errors_total{"),
        Some(1.0),
        "{text}"
    );
}

/// Malformed requests count as handler errors: garbage that hyper answers with 400, and a
/// request that names no target.
#[test]
fn malformed_requests_count_as_handler_errors() {
    let gost = Gost::start(&["-L", "http://127.0.0.1:0", "-metrics", "127.0.0.1:0"], 2);
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    for request in [
        "\u{1}\u{2}garbage\r\n\r\n",
        "GET /no-host HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let mut stream = std::net::TcpStream::connect(proxy).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    }
    let url = format!("http://{metrics}/metrics");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape_metrics(&url, None);
        let errors = metric_sample(&text, "gost_service_handler_errors_total{client=127.0.0.1,");
        if errors == Some(2.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{errors:?}\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bytes each way through the open tunnel of [`transfer_counted_while_open`].
const OPEN_TUNNEL_BYTES: usize = 100 * 1024;

/// Pushes [`OPEN_TUNNEL_BYTES`] each way through an HTTP CONNECT tunnel of `proxy` to an echo
/// target and checks, with the tunnel still open, that the transfer counters on `metrics`
/// already show them; then closes the tunnel and checks that the totals are exactly those bytes.
/// A tunnel open for hours must show its traffic while it runs, not in one spike at its end.
fn transfer_counted_while_open(proxy: SocketAddr, metrics: SocketAddr, echo: SocketAddr) {
    const INPUT: &str = "gost_service_transfer_input_bytes_total{client=127.0.0.1,";
    const OUTPUT: &str = "gost_service_transfer_output_bytes_total{client=127.0.0.1,";
    const IN_FLIGHT: &str = "gost_service_requests_in_flight{client=127.0.0.1,";
    const STEP: usize = 16 * 1024;
    const SCRAPES: usize = 50;
    let url = format!("http://{metrics}/metrics");
    let mut tunnel = http_connect(proxy, &echo.to_string(), None).expect("tunnel");
    // In steps, reading each echo back, so no buffer along the way has to hold it all.
    let mut sent = 0;
    let mut echoed = vec![0u8; STEP];
    while sent < OPEN_TUNNEL_BYTES {
        let len = STEP.min(OPEN_TUNNEL_BYTES - sent);
        let chunk: Vec<u8> = (sent..sent + len).map(pattern_byte).collect();
        tunnel.write_all(&chunk).unwrap();
        tunnel.read_exact(&mut echoed[..len]).unwrap();
        assert!(
            echoed[..len] == chunk[..],
            "the echo differs after {sent} bytes"
        );
        sent += len;
    }
    let expected = OPEN_TUNNEL_BYTES as f64;
    let counted = |text: &str| {
        (
            metric_sample(text, INPUT).unwrap_or(0.0),
            metric_sample(text, OUTPUT).unwrap_or(0.0),
        )
    };
    let mut text = String::new();
    for _ in 0..SCRAPES {
        text = scrape_metrics(&url, None);
        let (input, output) = counted(&text);
        if input >= expected && output >= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (input, output) = counted(&text);
    assert!(
        input >= expected && output >= expected,
        "an open tunnel's bytes are not counted (input {input}, output {output}):\n{text}"
    );
    assert_eq!(
        metric_sample(&text, IN_FLIGHT),
        Some(1.0),
        "the tunnel is still open:\n{text}"
    );

    drop(tunnel);
    for _ in 0..SCRAPES {
        text = scrape_metrics(&url, None);
        if metric_sample(&text, IN_FLIGHT) == Some(0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        metric_sample(&text, IN_FLIGHT),
        Some(0.0),
        "never closed:\n{text}"
    );
    assert_eq!(
        counted(&text),
        (expected, expected),
        "each byte once:\n{text}"
    );
}

#[test]
fn spliced_tunnel_bytes_are_counted_while_open() {
    let echo = Target::echo();
    let gost = Gost::start(&["-L", "http://127.0.0.1:0", "-metrics", "127.0.0.1:0"], 2);
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    transfer_counted_while_open(proxy, metrics, echo.addr);
}

/// Through a TLS node the upstream is no socket: the copying path.
#[test]
fn copied_tunnel_bytes_are_counted_while_open() {
    let echo = Target::echo();
    let node = Gost::start(&["-L", "relay+tls://127.0.0.1:0"], 1);
    let gost = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("relay+tls://{}", node.addr()),
            "-metrics",
            "127.0.0.1:0",
        ],
        2,
    );
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    transfer_counted_while_open(proxy, metrics, echo.addr);
}

/// Through a WebSocket node the upstream hands out and takes messages: the chunked path.
#[test]
fn chunked_tunnel_bytes_are_counted_while_open() {
    let echo = Target::echo();
    let node = Gost::start(&["-L", "relay+ws://127.0.0.1:0"], 1);
    let gost = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("relay+ws://{}", node.addr()),
            "-metrics",
            "127.0.0.1:0",
        ],
        2,
    );
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    transfer_counted_while_open(proxy, metrics, echo.addr);
}

/// A removed service's series go once it has drained, and a removed node's at once: a
/// configuration whose services and nodes come and go (an operator's) does not pile them up.
#[test]
fn removed_services_and_nodes_leave_the_scrape() {
    let target = Target::http();
    let dir = tempdir();
    let config = dir.join("gost.yaml");
    let yaml = |services: &[&str], node: &str| {
        let mut text = String::from("services:\n");
        for name in services {
            text.push_str(&format!(
                "- name: {name}\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    chain: c\n"
            ));
        }
        text.push_str(&format!(
            "chains:\n- name: c\n  hops:\n  - name: h\n    nodes:\n    - name: {node}\n      \
             addr: 127.0.0.1:1\n      connector: {{type: http}}\nmetrics:\n  addr: 127.0.0.1:0\n"
        ));
        text
    };
    std::fs::write(&config, yaml(&["keep", "gone"], "dead")).unwrap();
    let gost = Gost::start(&["-C", config.to_str().unwrap()], 3);
    let metrics = format!("http://{}/metrics", gost.addrs()[0]);
    let keep = gost.service_addr("keep").unwrap();
    let gone = gost.service_addr("gone").unwrap();
    for proxy in [keep, gone] {
        // Through the dead node: a request, a handler error and a chain error each.
        let code = status_via(proxy, &format!("http://{}/", target.addr));
        assert_eq!(code, "502", "{}", gost.log());
    }
    let text = scrape_metrics(&metrics, None);
    assert!(text.contains("service=gone"), "{text}");
    assert!(text.contains("node=dead"), "{text}");

    std::fs::write(&config, yaml(&["keep"], "other")).unwrap();
    gost.signal("HUP");
    let text = scrape_until(&metrics, Duration::from_secs(10), |text| {
        !text.contains("service=gone")
    });
    assert!(!text.contains("service=gone"), "{text}\n{}", gost.log());
    assert!(!text.contains("node=dead"), "{text}");
    assert_eq!(
        metric_sample(&text, "gost_service_requests_total{client=127.0.0.1,host="),
        Some(1.0),
        "the kept service's series stay:\n{text}"
    );
    assert!(text.contains("service=keep"), "{text}");
}

/// A dial that was under way when a reload removed its node, and fails after it, counts
/// nowhere: it does not bring the removed node's series back.
#[test]
fn a_dial_ending_after_its_node_was_removed_leaves_no_series() {
    use std::sync::mpsc;
    let target = Target::http();
    // A SOCKS5 node that reads each client's greeting and closes the connection without an
    // answer: the first at once, the second when told to.
    let node = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let node_addr = node.local_addr().unwrap();
    let (greeted, greeting) = mpsc::channel();
    let (close, closing) = mpsc::channel::<()>();
    let node_thread = std::thread::spawn(move || {
        for held in [false, true] {
            let (mut s, _) = node.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut hello = [0u8; 3];
            let _ = s.read_exact(&mut hello);
            if held {
                greeted.send(()).unwrap();
                let _ = closing.recv_timeout(Duration::from_secs(20));
            }
        }
    });
    let dir = tempdir();
    let config = dir.join("gost.yaml");
    let yaml = |node: &str, addr: &str| {
        format!(
            "services:\n- name: s\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    \
             chain: c\nchains:\n- name: c\n  hops:\n  - name: h\n    nodes:\n    - name: \
             {node}\n      addr: {addr}\n      connector: {{type: socks5}}\nmetrics:\n  \
             addr: 127.0.0.1:0\n"
        )
    };
    std::fs::write(&config, yaml("slow", &node_addr.to_string())).unwrap();
    let gost = Gost::start(&["-C", config.to_str().unwrap()], 2);
    let metrics = format!("http://{}/metrics", gost.addrs()[0]);
    let proxy = gost.service_addr("s").unwrap();
    let get = move || status_via(proxy, &format!("http://{}/", target.addr));
    // The node fails a first dial: its series is there.
    assert_eq!(get().trim(), "502", "{}", gost.log());
    let errors = "gost_chain_errors_total{chain=c,host=";
    let text = scrape_metrics(&metrics, None);
    assert_eq!(metric_sample(&text, errors), Some(1.0), "{text}");

    // A second dial waits in the node's handshake while a reload renames the node.
    let request = std::thread::spawn(get);
    greeting
        .recv_timeout(Duration::from_secs(20))
        .expect("the second dial reaches the node");
    std::fs::write(&config, yaml("other", "127.0.0.1:1")).unwrap();
    gost.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_sample(&scrape_metrics(&metrics, None), "gost_config_generation{") != Some(2.0) {
        assert!(Instant::now() < deadline, "no reload:\n{}", gost.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !scrape_metrics(&metrics, None).contains("node=slow"),
        "the reload drops the removed node's series"
    );

    // Now the dial fails, after its node was removed.
    close.send(()).unwrap();
    assert_eq!(request.join().unwrap().trim(), "502", "{}", gost.log());
    node_thread.join().unwrap();
    let text = scrape_metrics(&metrics, None);
    assert!(!text.contains("node=slow"), "{text}\n{}", gost.log());
}

/// A reload that replaces a service with one that binds its port only once the old listener
/// let go of it (`[::]` instead of `[::1]`), where that bind then fails (another program holds
/// the port on `127.0.0.1`): the service is gone, so are its series, and `/readyz` says so.
#[test]
fn a_replaced_service_whose_new_listener_cannot_bind_leaves_the_scrape() {
    // A host without an IPv6 loopback (a container started with IPv6 off) cannot serve on it.
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        eprintln!("skipped: this test needs an IPv6 loopback (::1): {e}");
        return;
    }
    let target = Target::http();
    // A port held on 127.0.0.1 for the whole test, so that no IPv4 listener of port 0 (gost's
    // metrics, another test's) is given it, and free on [::1] for the service.
    let (holder, port) = (0..20)
        .find_map(|_| {
            let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = holder.local_addr().unwrap().port();
            std::net::TcpListener::bind(("::1", port))
                .is_ok()
                .then_some((holder, port))
        })
        .expect("a port free on 127.0.0.1 and [::1]");
    let dir = tempdir();
    let config = dir.join("gost.yaml");
    let yaml = |addr: &str| {
        format!(
            "services:\n- name: moved\n  addr: \"{addr}\"\n  handler:\n    type: http\n\
             metrics:\n  addr: 127.0.0.1:0\n"
        )
    };
    std::fs::write(&config, yaml(&format!("[::1]:{port}"))).unwrap();
    let gost = Gost::start(&["-C", config.to_str().unwrap()], 2);
    let metrics = gost.addrs()[0];
    let proxy = gost.service_addr("moved").unwrap();
    let code = status_via(proxy, &format!("http://{}/", target.addr));
    assert_eq!(code, "200", "{}", gost.log());
    let url = format!("http://{metrics}/metrics");
    assert!(scrape_metrics(&url, None).contains("service=moved"));
    assert_eq!(status(&format!("http://{metrics}/readyz")), 200);

    std::fs::write(&config, yaml(&format!("[::]:{port}"))).unwrap();
    gost.signal("HUP");
    gost.wait_for_log("cannot bind the new listener");
    let text = scrape_until(&url, Duration::from_secs(10), |text| {
        !text.contains("service=moved")
    });
    assert!(!text.contains("service=moved"), "{text}\n{}", gost.log());
    assert_eq!(status(&format!("http://{metrics}/readyz")), 503);
    drop(holder);
}
