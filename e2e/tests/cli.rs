//! The `gost` command line: printing the effective configuration, and clear errors.

use gost_e2e::*;
use std::path::Path;

fn gost(args: &[&str]) -> Output {
    run(gost_bin().to_str().unwrap(), args)
}

#[test]
fn o_yaml_prints_the_seed_client_config_and_it_loads_back() {
    let out = gost(&[
        "-L",
        "http://:8000",
        "-F",
        "http://user:pass@:8080",
        "-O",
        "yaml",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let yaml = out.text();
    for expected in [
        "name: service-0",
        "chain: chain-0",
        "name: hop-0",
        "name: node-0",
        "username: user",
        "type: http",
        "type: tcp",
    ] {
        assert!(yaml.contains(expected), "missing {expected:?} in\n{yaml}");
    }
    let dir = tempdir();
    let file = dir.join("printed.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let again = gost(&["-C", file.to_str().unwrap(), "-O", "yaml"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.text(), yaml, "printing is not a fixed point");

    let json = gost(&["-C", file.to_str().unwrap(), "-O", "json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let file = dir.join("printed.json");
    std::fs::write(&file, json.stdout).unwrap();
    let from_json = gost(&["-C", file.to_str().unwrap(), "-O", "yaml"]);
    assert_eq!(from_json.text(), yaml, "JSON and YAML disagree");
}

#[test]
fn bad_configs_fail_with_the_field_path() {
    let dir = tempdir();
    let cases = [
        (
            "services:\n- name: a\n  addr: :1\n  handler:\n    type: htp\n",
            "services[0].handler.type",
        ),
        (
            "services:\n- name: a\n  addr: :1\n  handler:\n    chain: missing\n",
            "services[0].handler.chain",
        ),
        (
            "services:\n- name: a\n  addr: \"localhost:http\"\n",
            "services[0].addr",
        ),
        (
            "services:\n- name: a\n  addr: :1\n  handler:\n    metadata:\n      readTimeout: soon\n",
            "services[0].handler.metadata",
        ),
        (
            "services:\n- name: a\n  addr: :1\n  metadata:\n    proxyProtocol: 1\n",
            "services[0].metadata.proxyProtocol",
        ),
    ];
    for (i, (text, path)) in cases.iter().enumerate() {
        let file = dir.join(format!("bad-{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let out = gost(&["-C", file.to_str().unwrap()]);
        assert_eq!(out.code, 2, "case {i}: {}", out.stderr);
        assert!(
            out.stderr.contains(path),
            "case {i}: expected {path} in {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(file.to_str().unwrap()) || i == 3,
            "case {i}: the file is not named: {}",
            out.stderr
        );
    }
    let missing = gost(&["-C", "/nonexistent/gost.yaml"]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("/nonexistent/gost.yaml"),
        "{}",
        missing.stderr
    );
}

/// Configurations as GOST itself prints or reads them load: its `-O json` writes nil lists as
/// `null` and durations as integer nanoseconds, its JSON may have numbers where strings are
/// expected, a YAML section whose entries are commented out has no value, a key with nothing
/// after it is the empty string, a null document is an empty configuration, and keys may be in
/// any case.
#[test]
fn configs_gost_accepts_load() {
    let dir = tempdir();
    let cases = [
        (
            "only-f.json",
            r#"{"services": null, "chains": [{"name": "chain-0", "hops": [{"name": "hop-0",
                "nodes": [{"name": "node-0", "addr": ":8080", "connector": {"type": "http"},
                "dialer": {"type": "tcp"}}]}]}]}"#,
            "name: node-0",
        ),
        (
            "durations.json",
            r#"{"chains": [{"name": "chain-0", "hops": [{"name": "hop-0",
                "selector": {"strategy": "round", "maxFails": 1, "failTimeout": 30000000000},
                "nodes": [{"name": "node-0", "addr": ":8080",
                "connector": {"type": "http", "auth": {"username": "user", "password": 123456}}}]}]}]}"#,
            "failTimeout: 30s",
        ),
        (
            "commented.yaml",
            "services:\n- name: a\n  addr: :1\n  metadata:\n  # readTimeout: 5s\nchains:\n# - name: c\n",
            "name: a",
        ),
        (
            "any-case.yaml",
            "Services:\n- Name: a\n  ADDR: :1\n  listener:\n    type: tls\n    tls: {certfile: c.pem, keyfile: k.pem}\n",
            "certFile: c.pem",
        ),
        (
            "null-password.yaml",
            "services:\n- name: a\n  addr: :1\n  handler:\n    type: http\n    auth:\n      username: u\n      password:\n",
            "password: \"\"",
        ),
        (
            "null-password.json",
            r#"{"services": [{"name": "a", "addr": ":1", "handler": {"type": "http",
                "auth": {"username": "u", "password": null}}}]}"#,
            "password: \"\"",
        ),
        ("null-document.yaml", "~\n", "{}"),
        ("null-document.json", "null", "{}"),
    ];
    for (name, text, expected) in cases {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let out = gost(&["-C", file.to_str().unwrap(), "-O", "yaml"]);
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        assert!(out.text().contains(expected), "{name}: {}", out.text());
    }
}

#[test]
fn bad_urls_fail_without_echoing_the_password() {
    let out = gost(&["-L", "http://user:s3cret@:notaport"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("notaport"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("s3cret"),
        "password echoed: {}",
        out.stderr
    );
    let out = gost(&["-L", "http://:8000", "-F", "http://10.0.0.1"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

/// A malformed `-L` is reported for what is wrong with it, quoting the offending text.
#[test]
fn misread_urls_name_the_problem() {
    for (arg, expected) in [
        ("http:/127.0.0.1:38080", r#""http:/" lacks a '/'"#),
        ("://127.0.0.1:1", r#"no scheme before "://""#),
        ("http://127.0.0.1:-1", r#"invalid port "-1""#),
        (
            "http://127.0.0.1:38080,127.0.0.1:38081",
            r#""127.0.0.1:38080,127.0.0.1:38081" is not a valid host:port"#,
        ),
    ] {
        let out = gost(&["-L", arg, "-O", "yaml"]);
        assert_eq!(out.code, 2, "{arg}: {}", out.stderr);
        assert!(out.stderr.contains(expected), "{arg}: {}", out.stderr);
        assert!(
            !out.stderr.contains("port forwarding") && !out.stderr.contains("brackets"),
            "{arg}: {}",
            out.stderr
        );
    }
}

#[test]
fn an_h2_host_that_is_no_authority_fails_at_startup() {
    let out = gost(&[
        "-L",
        "http://127.0.0.1:0",
        "-F",
        "http+h2c://127.0.0.1:1?host=a%20b",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("`host`"), "{}", out.stderr);
    // Quoted; the log line's JSON escapes the quotes.
    assert!(out.stderr.contains(r#"\"a b\""#), "{}", out.stderr);
}

#[test]
fn unimplemented_transports_are_named() {
    // On -L, http3 is GOST's HTTP/3 reverse proxy, not the h3 tunnel.
    let out = gost(&["-L", "http3://127.0.0.1:0"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not implemented"), "{}", out.stderr);
    assert!(out.stderr.contains("h3://"), "{}", out.stderr);
}

#[test]
fn schemes_gost_has_and_gost_rs_does_not_are_refused() {
    // GOST would run a Shadowsocks server here; an `auto` proxy in its place would be open to
    // anyone, with the "credentials" doing nothing.
    let out = gost(&["-L", "ss://aes-128-gcm:s3cret@127.0.0.1:0"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("GOST's `ss` handler"), "{}", out.stderr);
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);
    // And a TLS transport must not turn into plain TCP.
    let out = gost(&[
        "-L",
        "http://:8000",
        "-F",
        "mtls://10.0.0.1:443",
        "-O",
        "yaml",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("GOST's `mtls` dialer"),
        "{}",
        out.stderr
    );
    // gost-rs has SOCKS4 servers but no SOCKS4 client: refused before `-O` prints it, under
    // the name written.
    for scheme in ["socks4", "socks4a"] {
        let node = format!("{scheme}://127.0.0.1:1");
        let out = gost(&["-L", "http://:8000", "-F", &node, "-O", "yaml"]);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("GOST's `{scheme}` connector is not supported")),
            "{}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{}", out.text());
    }
}

#[test]
fn options_gost_rs_does_not_implement_are_refused() {
    // Behind a load balancer sending the PROXY protocol, every request would fail.
    let out = gost(&["-L", "http://127.0.0.1:0?proxyProtocol=1"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(r#"the "proxyProtocol" option"#),
        "{}",
        out.stderr
    );
    let out = gost(&["-L", "socks5://127.0.0.1:0?udp=true", "-O", "yaml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains(r#"the "udp" option"#), "{}", out.stderr);
    // The defaults are fine.
    let out = gost(&["-L", "socks5://:1080?udp=false&so_mark=0", "-O", "yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn log_output_to_a_file_or_nowhere() {
    let dir = tempdir();
    let log = dir.join("logs").join("gost.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "kept\n").unwrap();
    let running = Gost::start_config(
        &format!(
            "services:\n- name: a\n  addr: 127.0.0.1:0\nlog:\n  output: {}\n  level: info\n",
            log.display()
        ),
        0,
    );
    let deadline = std::time::Instant::now() + LOG_DEADLINE;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("listening") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(text.starts_with("kept\n"), "not appended:\n{text}");
    assert!(
        text.contains("listening"),
        "no log lines in the file:\n{text}"
    );
    assert!(!running.log().contains("listening"), "{}", running.log());
    drop(running);

    // `none` discards.
    let port = free_port();
    let running = Gost::start_config(
        &format!("services:\n- name: a\n  addr: 127.0.0.1:{port}\nlog:\n  output: none\n"),
        0,
    );
    let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "never listened");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(running.log(), "", "logged with output none");
    drop(running);

    // A file that cannot be opened stops the start, naming it.
    let file = dir.join("bad.yaml");
    let unwritable = dir.join("logs");
    std::fs::write(
        &file,
        format!(
            "services:\n- name: a\n  addr: 127.0.0.1:0\nlog:\n  output: {}\n",
            unwritable.display()
        ),
    )
    .unwrap();
    let out = gost(&["-C", file.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("log.output") && out.stderr.contains(unwritable.to_str().unwrap()),
        "{}",
        out.stderr
    );
}

#[test]
fn gost_log_settings_we_cannot_honour_exactly() {
    let dir = tempdir();
    let file = dir.join("fatal.yaml");
    std::fs::write(&file, "log:\n  level: fatal\n").unwrap();
    let out = gost(&["-C", file.to_str().unwrap(), "-O", "yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.text().contains("level: error"), "{}", out.text());

    let file = dir.join("rotation.yaml");
    std::fs::write(
        &file,
        "log:\n  output: /tmp/gost.log\n  rotation:\n    maxSize: 100\n",
    )
    .unwrap();
    let out = gost(&["-C", file.to_str().unwrap(), "-O", "yaml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("log.rotation") && out.stderr.contains("not supported"),
        "{}",
        out.stderr
    );
}

/// GOST's flags that gost-rs lacks are named in the error rather than misread by the parser
/// (`-api` used to be reported as an unknown `-a`); GOST's `-O yml` prints YAML.
#[test]
fn gost_flags_we_do_not_have_are_named() {
    let out = gost(&["-L", "http://:8080", "-api", ":18080"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("-api :18080") && out.stderr.contains("not supported"),
        "{}",
        out.stderr
    );
    let out = gost(&["-L", "http://:8080", "-O", "yml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.text().starts_with("services:\n"), "{}", out.text());
    let out = gost(&["-L", "http://:8080", "-R", "soon", "-O", "yaml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("soon"), "{}", out.stderr);
}

/// Go's flag package takes `--L` for `-L`, and so on for every flag, as GOST does.
#[test]
fn flags_take_two_dashes_as_in_go() {
    let out = gost(&[
        "--L",
        "http://127.0.0.1:38080",
        "--F=http://10.0.0.1:3128",
        "--O",
        "yaml",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let yaml = out.text();
    assert!(yaml.contains("addr: 127.0.0.1:38080"), "{yaml}");
    assert!(yaml.contains("addr: 10.0.0.1:3128"), "{yaml}");
    let out = gost(&["--V"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.text().starts_with("gost "), "{}", out.text());
    let out = gost(&["--L", "http://:8080", "--api", ":18080"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not supported"), "{}", out.stderr);
}

#[test]
fn version_and_nothing_to_do() {
    let out = gost(&["-V"]);
    assert_eq!(out.code, 0);
    assert!(out.text().starts_with("gost "), "{}", out.text());
    // As GOST's `gost v3.x (go1.x linux/amd64)`: the version, then the build and the system.
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let system = format!("{}/{arch})\n", std::env::consts::OS);
    assert!(out.text().ends_with(&system), "{}", out.text());
    let empty_home = tempdir();
    let out = run(
        "env",
        &[
            "-C",
            empty_home.to_str().unwrap(),
            &format!("HOME={}", empty_home.display()),
            gost_bin().to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("nothing to run"), "{}", out.stderr);
}

/// Whether this machine is one where `gost` raises glibc's `rep movsb` threshold: an AMD
/// processor with fast string moves (proxy/src/copytune.rs), read here from `/proc/cpuinfo`.
fn amd_with_erms() -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
    let amd = info
        .lines()
        .any(|l| l.starts_with("vendor_id") && l.trim_end().ends_with("AuthenticAMD"));
    let erms = info
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|flag| flag == "erms"));
    amd && erms
}

/// The environment of a running process, one entry per NUL-separated item (glibc splits
/// `GLIBC_TUNABLES` in place at its colons when it reads it).
fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    raw.split(|b| *b == 0)
        .map(|item| String::from_utf8_lossy(item).into_owned())
        .collect()
}

const RAISED: &str = "glibc.cpu.x86_rep_movsb_threshold=1099511627776";

#[test]
fn gost_restarts_itself_with_fast_copies_on_amd_and_keeps_user_tunables() {
    // The restart keeps the process: the PID the test started serves, with its arguments.
    let target = Target::http();
    let gost = Gost::start_with_env(
        &["-L", "http://127.0.0.1:0"],
        1,
        &[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")],
    );
    let env = environ(gost.pid());
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", gost.pid())).unwrap();
    assert!(
        cmdline.ends_with(b"-L\0http://127.0.0.1:0\0"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    assert!(
        env.iter().any(|e| e.contains("glibc.malloc.arena_max=2")),
        "the user's tunable is kept: {env:?}"
    );
    assert_eq!(
        env.iter().any(|e| e.contains(RAISED)),
        amd_with_erms(),
        "threshold raised exactly on AMD processors with ERMS: {env:?}"
    );
    let out = curl(&[
        "-sS",
        "-x",
        &format!("http://{}", gost.addr()),
        &format!("http://{}/", target.addr),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn a_threshold_the_user_chose_is_left_alone() {
    let gost = Gost::start_with_env(
        &["-L", "http://127.0.0.1:0"],
        1,
        &[("GLIBC_TUNABLES", "glibc.cpu.x86_rep_movsb_threshold=4096")],
    );
    let env = environ(gost.pid());
    assert!(
        env.iter()
            .any(|e| e.contains("x86_rep_movsb_threshold=4096")),
        "{env:?}"
    );
    assert!(!env.iter().any(|e| e.contains(RAISED)), "{env:?}");
}

/// Under valgrind, `/proc/self/exe` is valgrind's tool, which refuses to be started directly:
/// the restart for fast copies would end gost there (on AMD), so it does not restart.
#[test]
fn gost_runs_under_valgrind() {
    let target = Target::http();
    let gost_path = gost_bin();
    let gost = Gost::start_bin(
        Path::new("valgrind"),
        &[
            "-q",
            "--tool=none",
            gost_path.to_str().unwrap(),
            "-L",
            "http://127.0.0.1:0",
        ],
        1,
        None,
    );
    // The process serving is valgrind's tool ("none-amd64-linux"), running gost.
    let exe = std::fs::read_link(format!("/proc/{}/exe", gost.pid())).unwrap();
    assert!(
        exe.to_string_lossy().contains("none-"),
        "valgrind runs it: {exe:?}"
    );
    let out = curl(&[
        "-sS",
        "-x",
        &format!("http://{}", gost.addr()),
        &format!("http://{}/", target.addr),
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, gost.log());
}

/// `log.format: text` writes plain lines where no terminal reads them (a pipe here; files,
/// journald, `kubectl logs`): no colour escape codes.
#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let gost = Gost::start_config(
        "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\nlog:\n  format: text\n",
        1,
    );
    let log = gost.log();
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

/// A log reader that goes away (a dead `tee` or collector) leaves gost serving: the lines it
/// cannot write are dropped. Before, the logging library's `eprintln!` fallback panicked and
/// took down every task that logged before answering, so plain requests got no answer.
#[test]
fn a_broken_log_pipe_does_not_stop_the_service() {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    /// Kills the process when the test ends, also when an assertion fails.
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let target = Target::http();
    let mut gost = Killed(
        Command::new(gost_bin())
            .args(["-L", "http://127.0.0.1:0"])
            .env("GOST_LOGGER_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gost starts"),
    );
    let stderr = gost.0.stderr.take().unwrap();
    // Reads up to the listening line, then drops the pipe's only read end.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let found = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| listening_addr(&line));
        let _ = tx.send(found);
    });
    let addr = rx
        .recv_timeout(STARTUP_TIMEOUT)
        .expect("gost logs in time")
        .expect("gost reports its listener");
    reader.join().unwrap();
    let proxy = format!("http://{addr}");
    let url = format!("http://{}/", target.addr);
    for _ in 0..3 {
        let plain = curl_status(&["-x", &proxy, &url]);
        assert_eq!(plain.text(), "200", "plain request: {}", plain.stderr);
        let tunnel = curl_status(&["-p", "-x", &proxy, &url]);
        assert_eq!(tunnel.text(), "200", "CONNECT: {}", tunnel.stderr);
    }
    assert!(gost.0.try_wait().unwrap().is_none(), "gost still runs");
}

/// `gost -O yaml | head -1`: a reader that stops early ends the output quietly, without a
/// panic.
#[test]
fn printing_the_config_to_a_closed_pipe_is_quiet() {
    use std::process::{Command, Stdio};

    for format in ["yaml", "json"] {
        // The read end is closed before gost starts, so its write always finds no reader.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(gost_bin())
            .args(["-L", "http://127.0.0.1:8080", "-O", format])
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("gost runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{format}: {stderr}");
    }
}

/// `-D` shows each tunnel as it opens and each forwarded request, as GOST's debug level does
/// (the method, never the path or query, which can carry tokens).
#[test]
fn debug_logs_show_tunnels_and_requests_as_they_start() {
    let target = Target::http();
    let gost = Gost::start(&["-L", "http://127.0.0.1:0", "-D"], 1);
    let proxy = format!("http://{}", gost.addr());
    let url = format!("http://{}/secret-token?key=hidden", target.addr);
    assert_eq!(curl(&["-x", &proxy, &url]).code, 0);
    assert_eq!(curl(&["-p", "-x", &proxy, &url]).code, 0);
    // Written before the answers, but read from gost's pipe by another thread.
    gost.wait_for_log("\"forwarding\"");
    gost.wait_for_log("tunnel open");
    let log = gost.log();
    assert!(
        log.lines().any(|l| l.contains("forwarding")
            && l.contains("GET")
            && l.contains("\"level\":\"debug\"")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("tunnel open") && l.contains(&target.addr.to_string())),
        "{log}"
    );
    assert!(
        !log.contains("secret-token") && !log.contains("hidden"),
        "{log}"
    );
}

#[test]
fn a_busy_port_is_reported_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let out = gost(&["-L", &format!("http://{addr}")]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        out.stderr.matches("cannot listen").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&addr.to_string()), "{}", out.stderr);
    // With the log in a file, the file has the log line and standard error the reason.
    let dir = tempdir();
    let log = dir.join("gost.log");
    let file = dir.join("busy.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n- name: a\n  addr: {addr}\n  handler: {{type: http}}\n  listener: {{type: tcp}}\nlog:\n  output: {}\n",
            log.display()
        ),
    )
    .unwrap();
    let out = gost(&["-C", file.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("gost: services[0].addr: cannot listen"),
        "{}",
        out.stderr
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.matches("cannot listen").count(), 1, "{logged}");
    drop(busy);
}
