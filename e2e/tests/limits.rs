//! Configurable limits: the request head size (`maxHeaderSize`), TCP keepalive on tunnel sockets
//! (`keepAlive`, `keepAlivePeriod`), the failed-authentication rate limit (`authFailureLimit`),
//! and the transfer metrics of forwarded plain-HTTP requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gost_e2e::*;

/// How long a test waits for something the proxy does after answering (a socket showing up in
/// `ss`, a counter updated when a connection closes).
const SETTLE: Duration = Duration::from_secs(5);

fn scrape(metrics: SocketAddr) -> String {
    scrape_metrics(&format!("http://{metrics}/metrics"), None)
}

/// Scrapes until `done` holds for the scrape or [`SETTLE`] has passed; returns the last one.
fn scrape_until(metrics: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let text = scrape(metrics);
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_through(proxy: SocketAddr, url: &str, extra: &[&str]) -> String {
    let proxy = format!("http://{proxy}");
    let mut args = vec!["-x", &proxy];
    args.extend_from_slice(extra);
    args.push(url);
    curl_status(&args).text()
}

#[test]
fn request_heads_over_max_header_size_get_431() {
    let target = Target::http();
    let gost = Gost::start_config(
        "services:\n\
         - name: small-heads\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    metadata:\n      maxHeaderSize: 2048\n  listener:\n    type: tcp\n",
        1,
    );
    let url = format!("http://{}/", target.addr);
    let big = format!("X-Pad: {}", "a".repeat(4096));
    assert_eq!(status_through(gost.addr(), &url, &["-H", &big]), "431");
    let small = format!("X-Pad: {}", "a".repeat(512));
    assert_eq!(status_through(gost.addr(), &url, &["-H", &small]), "200");

    // A CONNECT with an oversized head is refused the same way, before any dial.
    let mut stream = TcpStream::connect(gost.addr()).unwrap();
    stream.set_read_timeout(Some(SETTLE)).unwrap();
    write!(
        stream,
        "CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n{big}\r\n\r\n",
        target.addr
    )
    .unwrap();
    let head = read_head(&mut stream).unwrap();
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    // The default (64 KiB) still takes that head.
    let roomy = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    assert_eq!(status_through(roomy.addr(), &url, &["-H", &big]), "200");
}

#[test]
fn a_bad_max_header_size_is_refused_by_field() {
    let dir = tempdir();
    let file = dir.join("gost.yaml");
    std::fs::write(
        &file,
        "services:\n\
         - name: s\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    metadata:\n      maxHeaderSize: 100\n  listener:\n    type: tcp\n",
    )
    .unwrap();
    let out = run(
        gost_bin().to_str().unwrap(),
        &["-C", file.to_str().unwrap()],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("services[0].handler.metadata.maxHeaderSize"),
        "{}",
        out.stderr
    );
}

#[test]
fn auth_failures_over_the_limit_are_refused_unchecked_and_logged_once() {
    let echo = Target::echo();
    let gost = Gost::start_config(
        "services:\n\
         - name: guarded\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    auth:\n      username: user\n      password: pass\n  listener:\n    type: tcp\n  metadata:\n    authFailureLimit: 2\n\
         metrics:\n  addr: 127.0.0.1:0\n",
        2,
    );
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    let target = echo.addr.to_string();
    // The right password works while the address is in good standing.
    http_connect(proxy, &target, Some("user:pass")).expect("accepted before any failure");
    for attempt in 1..=3 {
        let refused = http_connect(proxy, &target, Some("user:guess")).unwrap_err();
        assert!(
            refused.starts_with("HTTP/1.1 407"),
            "attempt {attempt}: {refused}"
        );
    }
    // Over the limit, even the right password is refused, with the same answer.
    let refused = http_connect(proxy, &target, Some("user:pass")).unwrap_err();
    assert!(refused.starts_with("HTTP/1.1 407"), "{refused}");

    let text = scrape_until(metrics, |t| {
        metric_sample(t, "gost_service_auth_failures_total{").is_some()
    });
    assert_eq!(
        metric_sample(&text, "gost_service_auth_failures_total{"),
        Some(4.0),
        "every refusal is counted:\n{text}"
    );
    // Log lines reach the test through a pipe, possibly after the answers.
    let deadline = Instant::now() + SETTLE;
    let log = loop {
        let log = gost.log();
        if log.contains("refused unchecked") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"warn\"") && l.contains("authentication failed"))
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "one warning per checked failure, none for the refusals after the limit:\n{log}"
    );
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.contains("too many failed authentications"))
            .count(),
        1,
        "the limit tripping is logged once:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("\"level\":\"debug\"") && l.contains("refused unchecked")),
        "{log}"
    );
    assert!(!log.contains("guess"), "a password reached the log");
}

/// The `ss -tnoi` lines of established TCP sockets matching `filter` (e.g. `sport = :1080`).
fn sockets(filter: &str) -> Vec<String> {
    let out = run("ss", &["-H", "-tnoi", "state", "established", filter]);
    assert_eq!(out.code, 0, "ss failed: {}", out.stderr);
    // With -i, each socket's details continue on an indented line of their own.
    let mut sockets: Vec<String> = Vec::new();
    for line in out.text().lines() {
        if line.starts_with(char::is_whitespace) && !sockets.is_empty() {
            let last = sockets.last_mut().unwrap();
            last.push(' ');
            last.push_str(line.trim());
        } else if !line.trim().is_empty() {
            sockets.push(line.trim().to_string());
        }
    }
    sockets
}

/// Waits for exactly one socket matching `filter`, at rest (no retransmission or window
/// probe timer, which `ss` shows instead of the keepalive timer while data is in flight), and
/// returns its `ss` line.
fn one_idle_socket(filter: &str) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let found = sockets(filter);
        if let [line] = found.as_slice()
            && !line.contains("timer:(on,")
            && !line.contains("timer:(persist,")
        {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "expected one idle socket for {filter:?}, found {found:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `timer:(keepalive,...)` part of an `ss -o` line, if any.
fn keepalive_timer(line: &str) -> Option<&str> {
    let start = line.find("timer:(keepalive,")?;
    let end = line[start..].find(')')? + start;
    Some(&line[start..=end])
}

#[test]
fn tunnel_sockets_get_the_services_keepalive() {
    let (echo_default, echo_off, echo_long) = (Target::echo(), Target::echo(), Target::echo());
    let gost = Gost::start_config(
        "services:\n\
         - name: default\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n\
         - name: off\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n  metadata:\n    keepAlive: false\n\
         - name: long\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n  metadata:\n    keepAlivePeriod: 10m\n",
        3,
    );
    let cases = [
        ("default", &echo_default),
        ("off", &echo_off),
        ("long", &echo_long),
    ];
    let mut tunnels = Vec::new();
    let mut seen = Vec::new();
    for (name, echo) in cases {
        let proxy = gost.service_addr(name).expect("service address");
        let mut tunnel = http_connect(proxy, &echo.addr.to_string(), None).expect("tunnel");
        tunnel.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        tunnel.read_exact(&mut buf).unwrap();
        tunnels.push(tunnel);
        // The socket the proxy accepted, and the one it dialled to the target.
        let accepted = one_idle_socket(&format!("sport = :{}", proxy.port()));
        let dialled = one_idle_socket(&format!("dport = :{}", echo.addr.port()));
        seen.push((name, accepted, dialled));
    }
    for (name, accepted, dialled) in &seen {
        for (side, line) in [("accepted", accepted), ("dialled", dialled)] {
            let timer = keepalive_timer(line);
            match *name {
                "off" => assert!(timer.is_none(), "{name} {side}: {line}"),
                // The first probe is due within the default 30 s.
                "default" => {
                    let timer = timer.unwrap_or_else(|| panic!("{name} {side}: {line}"));
                    assert!(!timer.contains("min"), "{name} {side}: {timer}");
                }
                // ... and minutes away with keepAlivePeriod: 10m.
                _ => {
                    let timer = timer.unwrap_or_else(|| panic!("{name} {side}: {line}"));
                    assert!(timer.contains("min"), "{name} {side}: {timer}");
                }
            }
        }
    }
}

/// Whole minutes left on a `timer:(keepalive,4min59sec,0)`; 0 under a minute.
fn keepalive_minutes(timer: &str) -> u64 {
    let left = timer.trim_start_matches("timer:(keepalive,");
    match left.find("min") {
        Some(end) => left[..end].parse().unwrap_or_else(|_| panic!("{timer}")),
        None => 0,
    }
}

/// GOST's keepalive keys: on a listener, for the sockets it accepts; on a node's dialer, for
/// the sockets dialled to the node. Everything else keeps the service's keepalive.
#[test]
fn gost_keepalive_keys_set_the_listener_and_dialer_sockets() {
    let echo = Target::echo();
    let node = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let gost = Gost::start_config(
        &format!(
            "services:\n\
             - name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    chain: c\n  listener:\n    type: tcp\n    metadata:\n      keepalive: true\n      keepalive.idle: 5m\n      keepalive.interval: 3s\n\
             chains:\n- name: c\n  hops:\n  - name: h\n    nodes:\n    - name: n\n      addr: '{}'\n      dialer:\n        type: tcp\n        metadata:\n          keepalive: true\n          keepalive.idle: 9m\n          keepalive.count: 4\n",
            node.addr()
        ),
        1,
    );
    let proxy = gost.addr();
    let mut tunnel = http_connect(proxy, &echo.addr.to_string(), None).expect("tunnel");
    tunnel.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).unwrap();
    let accepted = one_idle_socket(&format!("sport = :{}", proxy.port()));
    let to_node = one_idle_socket(&format!("dport = :{}", node.addr().port()));
    let timer = |line: &str| {
        keepalive_timer(line)
            .unwrap_or_else(|| panic!("{line}"))
            .to_string()
    };
    let (accepted, to_node) = (timer(&accepted), timer(&to_node));
    assert!(
        (4..=5).contains(&keepalive_minutes(&accepted)),
        "listener keepalive.idle 5m: {accepted}"
    );
    assert!(
        (8..=9).contains(&keepalive_minutes(&to_node)),
        "dialer keepalive.idle 9m: {to_node}"
    );
    // The node's own sockets (another gost) keep the default: under a minute.
    let node_dialled = one_idle_socket(&format!("dport = :{}", echo.addr.port()));
    assert_eq!(
        keepalive_minutes(&timer(&node_dialled)),
        0,
        "{node_dialled}"
    );
}

#[test]
fn forwarded_plain_http_is_counted_in_the_transfer_metrics() {
    const BODY: usize = 100_000;
    let target = Target::http();
    let gost = Gost::start(&["-L", "http://127.0.0.1:0", "-metrics", "127.0.0.1:0"], 2);
    let (metrics, proxy) = (gost.addrs()[0], gost.addrs()[1]);
    // No -p: curl sends the absolute-URI request for the proxy to forward.
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        "-x",
        &format!("http://{proxy}"),
        &format!("http://{}/bytes/{BODY}", target.addr),
    ]);
    assert_eq!(out.text().trim(), format!("200 {BODY}"), "{}", out.stderr);
    let output_prefix = "gost_service_transfer_output_bytes_total{client=127.0.0.1,";
    let input_prefix = "gost_service_transfer_input_bytes_total{client=127.0.0.1,";
    let text = scrape_until(metrics, |t| {
        metric_sample(t, output_prefix).is_some_and(|v| v >= BODY as f64)
    });
    let output = metric_sample(&text, output_prefix).unwrap_or(0.0);
    assert!(output >= BODY as f64, "{text}");
    // The request line and headers sent on to the target.
    let input = metric_sample(&text, input_prefix).unwrap_or(0.0);
    assert!(input > 0.0 && input < 4096.0, "{text}");
    assert!(gost.log().contains("\"forwarded\""), "{}", gost.log());
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_one_as_go_does() {
    // A soft limit of 128 descriptors under a hard one of 4,096: Go (so GOST) raises the soft
    // limit at start; without that, gost would refuse tunnels from about the 60th on.
    // This process's hard limit bounds what prlimit may give gost.
    let own = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard: Option<u64> = own
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok());
    if hard.is_none_or(|h| h < 4096) || run("prlimit", &["--version"]).code != 0 {
        eprintln!("skipped: needs prlimit and a hard open-files limit of at least 4096 ({hard:?})");
        return;
    }
    let dir = tempdir();
    let wrapper = dir.join("gost-low-nofile");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec prlimit --nofile=128:4096 '{}' \"$@\"\n",
            gost_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let gost = Gost::start_bin(&wrapper, &["-L", "http://127.0.0.1:0"], 1, None);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gost.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>()[3..5],
        ["4096", "4096"],
        "{line}"
    );
    // 150 tunnels at once: 300 of gost's descriptors, over the soft limit it was given.
    let echo = Target::echo();
    let target = echo.addr.to_string();
    let mut tunnels = Vec::new();
    for i in 0..150 {
        let mut stream = http_connect(gost.addr(), &target, None)
            .unwrap_or_else(|e| panic!("tunnel {i}: {e}\n{}", gost.log()));
        stream.write_all(b"ping").unwrap();
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ping", "tunnel {i}");
        tunnels.push(stream);
    }
}
