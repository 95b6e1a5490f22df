//! Hot reload under load: the configuration file is rewritten 20 times through the kubelet's
//! `..data` symlink swap while long-lived tunnels stay open and new requests keep coming.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use gost_e2e::*;

/// Waits until the log holds `n` lines containing `what`.
fn wait_for_count(gost: &Gost, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gost.log().matches(what).count() < n {
        assert!(
            Instant::now() < deadline,
            "waited for {n} × {what:?}; log:\n{}",
            gost.log()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `yaml` as a new timestamped directory and swaps `..data` to it, as the kubelet does.
fn kubelet_write(dir: &Path, version: usize, yaml: &str) {
    let data = dir.join(format!("..v{version}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("gost.yaml"), yaml).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..v{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

fn config(
    upstream: SocketAddr,
    changing_password: &str,
    with_removable: bool,
    extra: usize,
) -> String {
    let mut yaml = format!(
        "services:\n\
         - name: stable\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n\
         - name: changing\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    auth:\n      username: u\n      password: {changing_password}\n  listener:\n    type: tcp\n\
         - name: chained\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    chain: up\n  listener:\n    type: tcp\n"
    );
    if with_removable {
        yaml.push_str(
            "- name: removable\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n",
        );
    }
    for i in 0..extra {
        yaml.push_str(&format!(
            "- name: extra-{i}\n  addr: 127.0.0.1:0\n  handler:\n    type: socks5\n  listener:\n    type: tcp\n"
        ));
    }
    yaml.push_str(&format!(
        "chains:\n- name: up\n  hops:\n  - name: hop-0\n    nodes:\n    - name: node-0\n      addr: {upstream}\n      connector:\n        type: http\n      dialer:\n        type: tcp\n"
    ));
    yaml
}

fn ping(stream: &mut TcpStream, round: u8) {
    let msg = [round; 16];
    stream.write_all(&msg).expect("long-lived tunnel writes");
    let mut back = [0u8; 16];
    stream
        .read_exact(&mut back)
        .expect("long-lived tunnel reads");
    assert_eq!(back, msg);
}

#[test]
fn twenty_reloads_under_load_drop_nothing_that_did_not_change() {
    let echo = Target::echo();
    let up_a = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let up_b = Gost::start(&["-L", "http://127.0.0.1:0"], 1);
    let dir = tempdir();
    kubelet_write(&dir, 0, &config(up_a.addr(), "p0", true, 0));
    std::os::unix::fs::symlink("..data/gost.yaml", dir.join("gost.yaml")).unwrap();
    let file = dir.join("gost.yaml");
    let gost = Gost::start(
        &[
            "-C",
            file.to_str().unwrap(),
            "-metrics",
            "127.0.0.1:0",
            "--grace-period",
            "1s",
        ],
        5,
    );
    let metrics = gost.addrs()[0];
    let stable = gost.service_addr("stable").unwrap();
    let changing = gost.service_addr("changing").unwrap();
    let chained = gost.service_addr("chained").unwrap();
    let removable = gost.service_addr("removable").unwrap();
    let target = echo.addr.to_string();

    // Long-lived tunnels on every service that stays, and one on the service that goes.
    let mut long_lived: Vec<TcpStream> = (0..4)
        .map(|_| http_connect(stable, &target, None).unwrap())
        .collect();
    long_lived.push(http_connect(changing, &target, Some("u:p0")).unwrap());
    long_lived.push(http_connect(chained, &target, None).unwrap());
    let mut on_removed = http_connect(removable, &target, None).unwrap();
    for t in &mut long_lived {
        ping(t, 0);
    }

    // A steady stream of new requests on the unchanged service.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, done, failed, target) =
            (stop.clone(), done.clone(), failed.clone(), target.clone());
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let ok = http_connect(stable, &target, None)
                    .map(|mut t| {
                        t.write_all(b"x").is_ok() && {
                            let mut b = [0u8; 1];
                            t.read_exact(&mut b).is_ok()
                        }
                    })
                    .unwrap_or(false);
                if ok { &done } else { &failed }.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // 20 rewrites: services added and removed, a password changed, the chain moved to another
    // upstream, and invalid configurations in between.
    let mut applied = 0;
    let mut refused = 0;
    for round in 1..=20usize {
        let upstream = if round % 2 == 0 {
            up_b.addr()
        } else {
            up_a.addr()
        };
        let yaml = if round % 5 == 3 {
            "services:\n- name: stable\n  addr: 127.0.0.1:0\n  handler:\n    type: nonsense\n"
                .to_string()
        } else {
            config(upstream, &format!("p{round}"), round < 4, round % 4)
        };
        kubelet_write(&dir, round, &yaml);
        if round % 5 == 3 {
            refused += 1;
            wait_for_count(&gost, "configuration refused", refused);
        } else {
            applied += 1;
            wait_for_count(&gost, "configuration applied", applied);
        }
        for t in &mut long_lived {
            ping(t, round as u8);
        }
        if round == 4 {
            // `removable` left in this round: its port closes at once, its tunnel after the
            // 1 s grace period.
            assert!(
                TcpStream::connect(removable).is_err(),
                "removed port still open"
            );
            ping(&mut on_removed, 4);
            thread::sleep(Duration::from_millis(1500));
            // Closed: an echo no longer comes back (a read alone would also time out on a
            // tunnel that is still open).
            on_removed
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut b = [0u8; 16];
            let echoed =
                on_removed.write_all(&[5; 16]).is_ok() && on_removed.read_exact(&mut b).is_ok();
            assert!(
                !echoed,
                "the removed service's tunnel outlived its grace period"
            );
        }
        // The new password and the new chain apply to new tunnels at once.
        if round % 5 != 3 {
            assert!(http_connect(changing, &target, Some(&format!("u:p{round}"))).is_ok());
            // Not every round: ten failures a minute from one address get it refused.
            if round % 4 == 1 {
                assert!(http_connect(changing, &target, Some("u:p0")).is_err());
            }
            let before = if round % 2 == 0 { &up_b } else { &up_a }
                .log()
                .matches("\"tunnel\"")
                .count();
            drop(http_connect(chained, &target, None).unwrap());
            let via = if round % 2 == 0 { &up_b } else { &up_a };
            let deadline = Instant::now() + Duration::from_secs(5);
            while via.log().matches("\"tunnel\"").count() <= before {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: chain change not applied"
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed on the unchanged service"
    );
    assert!(done.load(Ordering::SeqCst) > 20, "the load did not run");
    // Unchanged services kept their addresses (never rebound).
    let log = gost.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"listening\"") && l.contains("\"service\":\"stable\""))
            .count(),
        1,
        "the unchanged service was rebound"
    );
    for t in &mut long_lived {
        ping(t, 99);
    }

    // The counters agree.
    let out = python("scrape_metrics.py", &[&format!("http://{metrics}/metrics")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.text();
    let value = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(
        value("gost_config_generation{"),
        Some(1.0 + applied as f64),
        "{text}"
    );
    assert_eq!(
        value("gost_config_reload_errors_total{"),
        Some(refused as f64),
        "{text}"
    );
    let readyz = curl(&[&format!("http://{metrics}/readyz")]);
    assert!(readyz.text().starts_with("ready"), "{}", readyz.text());
}

#[test]
fn sighup_reloads_and_an_invalid_file_is_shown_by_readyz() {
    let dir = tempdir();
    let file = dir.join("gost.yaml");
    let one = "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n";
    std::fs::write(&file, one).unwrap();
    let gost = Gost::start(
        &["-C", file.to_str().unwrap(), "-metrics", "127.0.0.1:0"],
        2,
    );
    let metrics = gost.addrs()[0];
    std::fs::write(&file, "services:\n- name: a\n  addr: [oops\n").unwrap();
    wait_for_count(&gost, "configuration refused", 1);
    let readyz = curl(&[&format!("http://{metrics}/readyz")]);
    assert!(readyz.text().starts_with("ready"), "{}", readyz.text());
    assert!(
        readyz.text().contains("gost.yaml"),
        "names the file: {}",
        readyz.text()
    );
    // The fixed file is picked up by the watcher, then SIGHUP re-reads it on demand and finds
    // it applied already.
    std::fs::write(
        &file,
        format!(
            "{one}- name: b\n  addr: 127.0.0.1:0\n  handler:\n    type: socks5\n  listener:\n    type: tcp\n"
        ),
    )
    .unwrap();
    wait_for_count(&gost, "configuration applied", 1);
    gost.signal("HUP");
    wait_for_count(&gost, r#""cause":"SIGHUP""#, 1);
    assert!(
        gost.log()
            .lines()
            .any(|l| l.contains("configuration unchanged") && l.contains("SIGHUP")),
        "{}",
        gost.log()
    );
    let b = gost.service_addr("b").expect("service b started");
    assert!(TcpStream::connect(b).is_ok());
    let readyz = curl(&[&format!("http://{metrics}/readyz")]);
    assert_eq!(readyz.text().trim(), "ready", "{}", readyz.text());
}

/// `-C -` is read once: SIGHUP and `-R` reads used to find standard input at its end and stop
/// every service. Reads that find nothing changed leave everything (and the log) alone.
#[test]
fn a_config_from_standard_input_survives_sighup_and_periodic_reads() {
    let target = Target::http();
    let yaml = "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n";
    let gost = Gost::start_with_stdin(&["-C", "-", "-R", "200ms"], 1, yaml);
    wait_for_count(&gost, "configuration unchanged", 2);
    gost.signal("HUP");
    wait_for_count(&gost, r#""cause":"SIGHUP""#, 1);
    wait_for_count(&gost, "configuration unchanged", 4);
    let log = gost.log();
    assert!(!log.contains("service removed"), "{log}");
    assert!(
        !log.contains("configuration applied"),
        "an unchanged read applies nothing: {log}"
    );
    let out = curl(&[
        "-sS",
        "-x",
        &format!("http://{}", gost.addr()),
        &format!("http://{}/after-reloads", target.addr),
    ]);
    assert!(
        out.text().starts_with("hello from target"),
        "{} {}",
        out.text(),
        out.stderr
    );
}

/// A `-C` pipe (a shell's `-C <(...)`) is read once and not watched: re-reading it found it
/// empty and stopped every service.
#[test]
fn a_config_from_a_pipe_survives_sighup() {
    let dir = tempdir();
    let fifo = dir.join("config.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let writer = {
        let fifo = fifo.clone();
        thread::spawn(move || {
            let yaml = "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n";
            // Blocks until gost opens the pipe.
            std::fs::write(fifo, yaml).unwrap();
        })
    };
    let gost = Gost::start(&["-C", fifo.to_str().unwrap()], 1);
    writer.join().unwrap();
    gost.signal("HUP");
    wait_for_count(&gost, r#""cause":"SIGHUP""#, 1);
    let log = gost.log();
    assert!(!log.contains("service removed"), "{log}");
    assert!(TcpStream::connect(gost.addr()).is_ok());
}

/// `-C` takes an http URL, as GOST does: the user info goes as Basic auth and is never shown,
/// and `-R` reads it again, which is how a change there is picked up.
#[test]
fn a_config_url_is_fetched_and_read_again_every_period() {
    let one = "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tcp\n";
    let served = Arc::new(std::sync::Mutex::new(one.to_string()));
    let config_server = {
        let served = served.clone();
        Target::start(move |stream| {
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            // Basic base64("u:s3cret").
            let answer = if !head.starts_with("GET /gost.yaml ") {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
            } else if !head.lines().any(|l| {
                l.to_ascii_lowercase().starts_with("authorization:")
                    && l.ends_with(" Basic dTpzM2NyZXQ=")
            }) {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_string()
            } else {
                let body = served.lock().unwrap().clone();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            };
            let mut stream = stream;
            let _ = stream.write_all(answer.as_bytes());
        })
    };
    let base = config_server.addr;
    let gost_bin = gost_bin();
    let gost_bin = gost_bin.to_str().unwrap();
    let out = run(
        gost_bin,
        &["-C", &format!("http://{base}/missing.yaml"), "-O", "yaml"],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains(&format!("http://{base}/missing.yaml")) && out.stderr.contains("404"),
        "{}",
        out.stderr
    );
    let out = run(
        gost_bin,
        &[
            "-C",
            &format!("http://u:wrong@{base}/gost.yaml"),
            "-O",
            "yaml",
        ],
    );
    assert!(
        out.stderr.contains("401") && !out.stderr.contains("wrong"),
        "{}",
        out.stderr
    );

    let url = format!("http://u:s3cret@{base}/gost.yaml");
    let gost = Gost::start(&["-C", &url, "-R", "300ms"], 1);
    *served.lock().unwrap() = format!(
        "{one}- name: b\n  addr: 127.0.0.1:0\n  handler:\n    type: socks5\n  listener:\n    type: tcp\n"
    );
    wait_for_count(&gost, "configuration applied", 1);
    let b = gost.service_addr("b").expect("service b started");
    assert!(TcpStream::connect(b).is_ok());
    let log = gost.log();
    assert!(
        log.lines()
            .any(|l| l.contains("configuration applied") && l.contains("period")),
        "{log}"
    );
    assert!(
        !log.contains("s3cret"),
        "the password is never logged: {log}"
    );
}

/// A stop signal does not wait for a configuration read in progress: here a URL whose server
/// stops answering after the first read, read again every 200 ms.
#[test]
fn a_slow_config_url_does_not_delay_a_stop() {
    let answered = Arc::new(AtomicUsize::new(0));
    let config_server = {
        let answered = answered.clone();
        Target::start(move |mut stream| {
            let _ = read_head(&mut stream);
            if answered.fetch_add(1, Ordering::SeqCst) > 0 {
                // Hangs (bounded, so the server's thread ends).
                thread::sleep(Duration::from_secs(20));
                return;
            }
            let body = "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        })
    };
    let url = format!("http://{}/gost.yaml", config_server.addr);
    let mut gost = Gost::start(&["-C", &url, "-R", "200ms"], 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no second read");
        thread::sleep(Duration::from_millis(20));
    }
    gost.signal("TERM");
    assert_eq!(
        gost.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        gost.log()
    );
}

/// A sidecar whose pod nothing selects yet gets a config without services: it keeps running,
/// answers its probes, and starts the services when they arrive.
#[test]
fn a_config_without_services_waits_for_them() {
    let dir = tempdir();
    let file = dir.join("gost.yaml");
    std::fs::write(&file, "metrics:\n  addr: 127.0.0.1:0\n").unwrap();
    let gost = Gost::start(&["-C", file.to_str().unwrap()], 1);
    let admin = gost.addrs()[0];
    wait_for_count(&gost, "no services yet", 1);
    let readyz = curl(&[&format!("http://{admin}/readyz")]);
    assert_eq!(readyz.text().trim(), "ready", "{}", readyz.text());
    std::fs::write(
        &file,
        "metrics:\n  addr: 127.0.0.1:0\nservices:\n- name: late\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n",
    )
    .unwrap();
    wait_for_count(&gost, "configuration applied", 1);
    let late = gost.service_addr("late").expect("service late started");
    assert!(TcpStream::connect(late).is_ok());
}

/// Starts gost on a kubelet-style config directory holding `yaml`, with a 1 s grace period.
/// The directory comes first: bound as `let (dir, gost)`, gost is stopped before it goes.
fn reloadable(yaml: &str, services: usize) -> (TempDir, Gost) {
    let dir = tempdir();
    kubelet_write(&dir, 0, yaml);
    std::os::unix::fs::symlink("..data/gost.yaml", dir.join("gost.yaml")).unwrap();
    let file = dir.join("gost.yaml");
    let gost = Gost::start(
        &["-C", file.to_str().unwrap(), "--grace-period", "1s"],
        services,
    );
    (dir, gost)
}

/// Whether a tunnel still carries an echo.
fn echoes(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 16];
    stream.write_all(&[7; 16]).is_ok() && stream.read_exact(&mut b).is_ok() && b == [7; 16]
}

/// `maxConnections` holds across a reload that only swaps the handler: the connections
/// already open still count, the limit is not granted again on top of them.
#[test]
fn the_connection_limit_counts_what_is_open_across_a_reload() {
    let echo = Target::echo();
    let target = echo.addr.to_string();
    let yaml = |realm: &str| {
        format!(
            "services:\n- name: s\n  addr: 127.0.0.1:0\n  metadata: {{maxConnections: 1}}\n  handler:\n    type: http\n    metadata: {{authBasicRealm: {realm}}}\n"
        )
    };
    let (dir, gost) = reloadable(&yaml("a"), 1);
    let addr = gost.service_addr("s").unwrap();
    let mut first = http_connect(addr, &target, None).unwrap();
    assert!(echoes(&mut first));
    assert!(http_connect(addr, &target, None).is_err(), "over the limit");
    kubelet_write(&dir, 1, &yaml("b"));
    wait_for_count(&gost, r#""updated":"[\"s\"]""#, 1);
    assert!(
        http_connect(addr, &target, None).is_err(),
        "the reload granted the limit again"
    );
    assert!(echoes(&mut first), "the open tunnel survives the swap");
    drop(first);
    // Its place comes free once it has closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_connect(addr, &target, None).is_err() {
        assert!(
            Instant::now() < deadline,
            "the closed tunnel's place never came free"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A change of the top-level `tls` section leaves services that serve no TLS alone, with
/// their listeners and tunnels, and replaces those that do.
#[test]
fn a_tls_change_leaves_services_without_tls_alone() {
    let echo = Target::echo();
    let target = echo.addr.to_string();
    // A service with a certificate of its own takes nothing from the section either.
    let certs = tempdir();
    let (cert, key) = (certs.join("own.crt"), certs.join("own.key"));
    let own_cert = rcgen::generate_simple_self_signed(["own.example".to_string()]).unwrap();
    std::fs::write(&cert, own_cert.cert.pem()).unwrap();
    std::fs::write(&key, own_cert.signing_key.serialize_pem()).unwrap();
    let yaml = |name: &str| {
        format!(
            "services:\n\
             - name: plain\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n\
             - name: tls\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tls\n\
             - name: own\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: tls\n    tls:\n      certFile: {}\n      keyFile: {}\n\
             tls:\n  commonName: {name}\n",
            cert.display(),
            key.display()
        )
    };
    let (dir, gost) = reloadable(&yaml("one.example"), 3);
    let own = gost.service_addr("own").unwrap();
    let plain = gost.service_addr("plain").unwrap();
    let mut tunnel = http_connect(plain, &target, None).unwrap();
    assert!(echoes(&mut tunnel));
    kubelet_write(&dir, 1, &yaml("two.example"));
    wait_for_count(&gost, "configuration applied", 1);
    let log = gost.log();
    let applied = log
        .lines()
        .find(|l| l.contains("configuration applied"))
        .unwrap();
    assert!(applied.contains(r#""replaced":"[\"tls\"]""#), "{applied}");
    assert!(!applied.contains("plain"), "{applied}");
    assert!(!applied.contains("own"), "{applied}");
    thread::sleep(Duration::from_millis(1500));
    assert!(echoes(&mut tunnel), "the plain service's tunnel was closed");
    assert_eq!(gost.service_addr("plain"), Some(plain));
    assert_eq!(gost.service_addr("own"), Some(own));
}

/// A service's address written another way for the same socket (`:P` to `127.0.0.1:P`, then
/// `localhost:P`) replaces the service on that port: the new listener binds once the old one
/// let go, as for an unchanged address. It used to bind at once, beside the old one, and the
/// reload was refused ("Address already in use"), as was every later one.
#[test]
fn an_address_respelt_for_the_same_port_replaces_the_service() {
    let target = Target::http();
    let port = free_port();
    let yaml = |host: &str| {
        format!("services:\n- name: s\n  addr: \"{host}:{port}\"\n  handler:\n    type: http\n")
    };
    let (dir, gost) = reloadable(&yaml(""), 1);
    let get = || {
        curl(&[
            "-x",
            &format!("http://127.0.0.1:{port}"),
            &format!("http://{}/respelt", target.addr),
        ])
    };
    assert!(get().text().starts_with("hello from target"));
    for (version, host) in [(1, "127.0.0.1"), (2, "localhost")] {
        kubelet_write(&dir, version, &yaml(host));
        wait_for_count(&gost, r#""replaced":"[\"s\"]""#, version);
        let out = get();
        assert!(
            out.text().starts_with("hello from target"),
            "after {host}: {}\n{}",
            out.stderr,
            gost.log()
        );
    }
    assert!(
        !gost.log().contains("configuration refused"),
        "{}",
        gost.log()
    );
}

/// A new service on a port another service keeps is refused with an error that names that
/// service, not the system's "Address already in use".
#[test]
fn a_new_service_on_a_kept_services_port_is_refused_by_name() {
    let port = free_port();
    let one =
        format!("services:\n- name: first\n  addr: \":{port}\"\n  handler:\n    type: http\n");
    let (dir, gost) = reloadable(&one, 1);
    let two = format!(
        "{one}- name: second\n  addr: \"127.0.0.1:{port}\"\n  handler:\n    type: socks5\n"
    );
    kubelet_write(&dir, 1, &two);
    wait_for_count(&gost, "configuration refused", 1);
    let log = gost.log();
    let refused = log
        .lines()
        .find(|l| l.contains("configuration refused"))
        .unwrap();
    assert!(refused.contains("services[1].addr"), "{refused}");
    assert!(refused.contains("`first`"), "{refused}");
}

/// The `http2` handler's requests go through the service's accept loop: a reload that
/// changes its credentials applies to HTTP/2 connections already open (a client's pooled
/// connection used to keep the old password working for as long as it lived), and
/// `maxConnections` counts its tunnels.
#[test]
fn http2_reloads_reach_open_connections_and_tunnels_count_against_the_limit() {
    let echo = Target::echo();
    let target = echo.addr.to_string();
    let yaml = |password: &str| {
        format!(
            "services:\n- name: s\n  addr: 127.0.0.1:0\n  metadata: {{maxConnections: 2}}\n  handler:\n    type: http2\n    auth: {{username: user, password: {password}}}\n  listener:\n    type: http2\n"
        )
    };
    let (dir, server) = reloadable(&yaml("pass"), 1);
    let addr = server.service_addr("s").unwrap();
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("http2://user:pass@{addr}"),
        ],
        1,
    );
    let mut first = http_connect(client.addr(), &target, None).unwrap();
    assert!(echoes(&mut first));
    let mut second = http_connect(client.addr(), &target, None).unwrap();
    assert!(echoes(&mut second));
    // Two tunnels on one HTTP/2 connection: the third is refused.
    assert!(
        http_connect(client.addr(), &target, None).is_err(),
        "a third tunnel over the limit of 2"
    );
    drop(second);
    kubelet_write(&dir, 1, &yaml("changed"));
    wait_for_count(&server, "configuration applied", 1);
    // The client's pooled connection is still up, and its old password no longer works.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = false;
    while Instant::now() < deadline {
        // A place for the new tunnel comes free once the dropped one has closed.
        if http_connect(client.addr(), &target, None).is_err()
            && server.log().contains("proxy authentication failed")
        {
            refused = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(refused, "the old password still works:\n{}", server.log());
    // A handler swap under the listener, not a new listener.
    assert!(
        server.log().contains(r#""updated":"[\"s\"]""#),
        "{}",
        server.log()
    );
    assert!(echoes(&mut first), "the open tunnel survives the swap");
}

/// A reload that keeps an `http2` listener but gives it another handler type is refused, as
/// the same file is at start: the listener hands its handler HTTP/2 requests, which no other
/// handler serves.
#[test]
fn an_http2_listener_keeps_its_http2_handler_across_a_reload() {
    let yaml = |handler: &str| {
        format!(
            "services:\n- name: s\n  addr: 127.0.0.1:0\n  handler:\n    type: {handler}\n  listener:\n    type: http2\n"
        )
    };
    let (dir, gost) = reloadable(&yaml("http2"), 1);
    kubelet_write(&dir, 1, &yaml("http"));
    wait_for_count(&gost, "configuration refused", 1);
    assert!(
        gost.log()
            .contains("listener type `http2` works only with handler type `http2`"),
        "{}",
        gost.log()
    );
}

/// A reload that gives a TLS service on a fixed address a broken certificate is refused as a
/// whole, before the old listener lets go of the address: the service keeps serving with the
/// certificate it has (the new listener used to be built after the old one had closed, and its
/// failure left the address unserved until the next change of the configuration).
#[test]
fn a_broken_certificate_in_a_reload_leaves_the_service_serving() {
    let target = Target::http();
    let port = free_port();
    let yaml = |tls: &str| {
        format!(
            "services:\n- name: s\n  addr: 127.0.0.1:{port}\n  handler:\n    type: http\n  listener:\n    type: tls\n{tls}"
        )
    };
    let (dir, gost) = reloadable(&yaml(""), 1);
    let get = || {
        curl(&[
            "--proxy-insecure",
            "-x",
            &format!("https://127.0.0.1:{port}"),
            &format!("http://{}/tls", target.addr),
        ])
    };
    let out = get();
    assert!(
        out.text().starts_with("hello from target"),
        "{}",
        out.stderr
    );
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let broken = format!(
        "    tls:\n      certFile: {0}\n      keyFile: {0}\n",
        garbage.display()
    );
    kubelet_write(&dir, 1, &yaml(&broken));
    wait_for_count(&gost, "configuration refused", 1);
    assert!(gost.log().contains("garbage.pem"), "{}", gost.log());
    assert!(!gost.log().contains("cannot bind"), "{}", gost.log());
    let out = get();
    assert!(
        out.text().starts_with("hello from target"),
        "{}\n{}",
        out.stderr,
        gost.log()
    );
}

/// A refused reload's error names the file, line and field but quotes none of it: the lines
/// around a mistake can hold a password, and the error goes to the log and to `/readyz`,
/// which answers without credentials.
#[test]
fn a_refused_reload_shows_no_excerpt_of_the_file() {
    let dir = tempdir();
    let file = dir.join("gost.yaml");
    let good = "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    auth:\n      username: admin\n      password: S3cretPass\n  listener:\n    type: tcp\n";
    std::fs::write(&file, good).unwrap();
    let gost = Gost::start(
        &["-C", file.to_str().unwrap(), "-metrics", "127.0.0.1:0"],
        2,
    );
    let metrics = gost.addrs()[0];
    std::fs::write(&file, good.replace("    type: tcp", "    typ: tcp")).unwrap();
    wait_for_count(&gost, "configuration refused", 1);
    let readyz = curl(&[&format!("http://{metrics}/readyz")]);
    assert!(readyz.text().contains("gost.yaml"), "{}", readyz.text());
    assert!(readyz.text().contains("typ"), "{}", readyz.text());
    assert!(!readyz.text().contains("S3cretPass"), "{}", readyz.text());
    assert!(!gost.log().contains("S3cretPass"), "{}", gost.log());
}

/// A SIGHUP while the first configuration is still being fetched from its URL does not end
/// the process (SIGHUP's default action) before gost has caught it, and it is not lost: the
/// configuration is fetched again once the services run.
#[test]
fn a_sighup_while_the_first_config_url_is_read_is_not_fatal() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let config_server = Target::start({
        let fetches = fetches.clone();
        move |mut stream| {
            let _ = read_head(&mut stream);
            // The first answer is slow, so that the SIGHUP comes while it is awaited.
            if fetches.fetch_add(1, Ordering::SeqCst) == 0 {
                thread::sleep(Duration::from_secs(2));
            }
            let body = "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let url = format!("http://{}/gost.yaml", config_server.addr);
    let mut child = std::process::Command::new(gost_bin())
        .args(["-C", &url])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    thread::sleep(Duration::from_millis(700));
    assert_eq!(run("kill", &["-HUP", &pid]).code, 0);
    // The first answer comes 2 s after the request; the reload's fetch right after it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetches.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let status = child.try_wait().unwrap();
    if status.is_none() {
        let _ = run("kill", &["-TERM", &pid]);
    }
    let ended = child.wait().unwrap();
    assert!(status.is_none(), "gost ended on SIGHUP: {ended:?}");
    assert_eq!(ended.code(), Some(0), "{ended:?}");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "the SIGHUP that came during the first fetch should fetch the configuration again"
    );
}

/// The metrics endpoint's credentials follow a reload (a `metrics.auth` added, say, protects
/// it at once); its address and path, and `log:`, are read at start only, and a reload that
/// changes them says so rather than leaving the change to be found not working.
#[test]
fn a_reload_that_changes_metrics_says_it_waits_for_a_restart() {
    let service = "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n";
    let metrics = "metrics:\n  addr: 127.0.0.1:0\n";
    let (dir, gost) = reloadable(&format!("{service}{metrics}"), 2);
    let url = format!("http://{}/metrics", gost.addrs()[0]);
    assert!(scrape_metrics(&url, None).contains("status=200"));
    let auth = "  auth:\n    username: u\n    password: p\n";
    kubelet_write(&dir, 1, &format!("{service}{metrics}{auth}"));
    wait_for_count(&gost, "configuration applied", 1);
    assert!(scrape_metrics(&url, None).contains("status=401"));
    assert!(scrape_metrics(&url, Some("u:p")).contains("status=200"));
    assert!(
        !gost.log().contains("takes effect at the next start"),
        "{}",
        gost.log()
    );
    kubelet_write(&dir, 2, &format!("{service}{metrics}{auth}  path: /m\n"));
    wait_for_count(&gost, "configuration applied", 2);
    assert!(
        gost.log().contains(
            "the `metrics` section changed; its address and path take effect at the next start"
        ),
        "{}",
        gost.log()
    );
    assert!(scrape_metrics(&url, Some("u:p")).contains("status=200"));
}

/// A reload that changes the users of the metrics endpoint's auther applies to the endpoint
/// at once: the old password stops working there, as it does on the services. It used to
/// keep working, without a word in the log, until the next start.
#[test]
fn the_metrics_endpoint_follows_its_authers_password() {
    let yaml = |password: &str| {
        format!(
            "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    auther: a1\n\
             authers:\n- name: a1\n  auths:\n  - {{username: prom, password: {password}}}\n\
             metrics:\n  addr: 127.0.0.1:0\n  auther: a1\n"
        )
    };
    let (dir, gost) = reloadable(&yaml("old"), 2);
    let url = format!("http://{}/metrics", gost.addrs()[0]);
    assert!(scrape_metrics(&url, Some("prom:old")).contains("status=200"));
    kubelet_write(&dir, 1, &yaml("new"));
    wait_for_count(&gost, "configuration applied", 1);
    let old = scrape_metrics(&url, Some("prom:old"));
    assert!(
        old.contains("status=401"),
        "the old password still works: {old}"
    );
    assert!(scrape_metrics(&url, Some("prom:new")).contains("status=200"));
}

/// One plain-HTTP request on an open keep-alive connection: the status line, or `None` when
/// the proxy closed the connection instead.
fn keep_alive_get(stream: &mut TcpStream, target: SocketAddr, credentials: &str) -> Option<String> {
    let request = format!(
        "GET http://{target}/ka HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {}\r\n\r\n",
        base64(credentials.as_bytes())
    );
    stream.write_all(request.as_bytes()).ok()?;
    let head = read_head(stream).ok().filter(|h| !h.is_empty())?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    head.lines().next().map(str::to_string)
}

/// A reload that changes a password reaches HTTP/1.1 keep-alive connections already open:
/// they close between requests, so the old password stops working on them too (it used to
/// keep working for as long as the client kept the connection busy).
#[test]
fn a_changed_password_reaches_open_keep_alive_connections() {
    let target = Target::http();
    let yaml = |password: &str| {
        format!(
            "services:\n- name: s\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    auth:\n      username: u\n      password: {password}\n"
        )
    };
    let (dir, gost) = reloadable(&yaml("old"), 1);
    let addr = gost.service_addr("s").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        keep_alive_get(&mut stream, target.addr, "u:old").as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    kubelet_write(&dir, 1, &yaml("new"));
    wait_for_count(&gost, r#""updated":"[\"s\"]""#, 1);
    let again = keep_alive_get(&mut stream, target.addr, "u:old");
    assert!(
        again.as_deref() != Some("HTTP/1.1 200 OK"),
        "the old password still works on the open connection: {again:?}"
    );
    let mut fresh = TcpStream::connect(addr).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        keep_alive_get(&mut fresh, target.addr, "u:new").as_deref(),
        Some("HTTP/1.1 200 OK")
    );
}

/// A stop closes HTTP/1.1 keep-alive connections that wait for their next request at once
/// instead of waiting for them within the grace period. One that has sent nothing yet is
/// waited for (its first request is answered, see
/// `a_connection_accepted_before_a_stop_gets_its_first_request_served`), but only briefly
/// (2 s), not the handler's `readTimeout` (15 s): browsers keep idle connections to their
/// proxy opened in advance.
#[test]
fn a_stop_does_not_wait_for_idle_http_connections() {
    let target = Target::http();
    let mut gost = Gost::start(
        &["-L", "http://u:p@127.0.0.1:0", "--grace-period", "30s"],
        1,
    );
    let mut idle = TcpStream::connect(gost.addr()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        keep_alive_get(&mut idle, target.addr, "u:p").as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    gost.signal("TERM");
    assert_eq!(
        gost.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        gost.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the stop took {:?}",
        started.elapsed()
    );

    let mut gost = Gost::start(
        &["-L", "http://u:p@127.0.0.1:0", "--grace-period", "30s"],
        1,
    );
    let _silent = TcpStream::connect(gost.addr()).unwrap();
    let started = Instant::now();
    gost.signal("TERM");
    assert_eq!(
        gost.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gost.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the stop took {:?}",
        started.elapsed()
    );
}

/// Tunnels cut when a grace period ends (a removed service's, and those still open when the
/// process exits) end with their `tunnel` line, outcome `stopped` and the bytes they moved,
/// and their bytes are counted; they used to vanish without a line.
#[test]
fn tunnels_cut_after_the_grace_period_are_logged() {
    let echo = Target::echo();
    let target = echo.addr.to_string();
    let yaml = |services: &str| format!("services:\n{services}");
    let a = "- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n";
    let b = "- name: b\n  addr: 127.0.0.1:0\n  handler:\n    type: socks5\n";
    let (dir, mut gost) = reloadable(&yaml(&format!("{a}{b}")), 2);
    let mut removed = http_connect(gost.service_addr("a").unwrap(), &target, None).unwrap();
    assert!(echoes(&mut removed));
    kubelet_write(&dir, 1, &yaml(b));
    wait_for_count(&gost, r#""outcome":"stopped""#, 1);
    let line = gost
        .log()
        .lines()
        .find(|l| l.contains(r#""outcome":"stopped""#))
        .unwrap()
        .to_string();
    assert!(line.contains(r#""bytes_up":16"#), "{line}");
    assert!(line.contains(r#""service":"a""#), "{line}");

    // At exit: the grace period (1 s) runs out with a SOCKS5 tunnel open.
    let (mut stream, _, reply) =
        socks5_connect_raw(gost.service_addr("b").unwrap(), &[0], echo.addr);
    assert_eq!(reply, 0);
    assert!(echoes(&mut stream));
    gost.signal("TERM");
    assert_eq!(gost.wait_exit(Duration::from_secs(10)), Some(0));
    let stopped = gost.log().matches(r#""outcome":"stopped""#).count();
    assert_eq!(stopped, 2, "{}", gost.log());
}

/// A connection accepted just before a reload replaced its handler, whose first request had
/// not arrived yet, gets that request answered (then the connection ends): closing it would
/// lose a request that may already be on its way.
#[test]
fn a_connection_accepted_before_a_handler_swap_gets_its_first_answer() {
    let target = Target::http();
    let yaml = |realm: &str| {
        format!(
            "services:\n- name: s\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    metadata: {{authBasicRealm: {realm}}}\n"
        )
    };
    let (dir, gost) = reloadable(&yaml("a"), 1);
    let addr = gost.service_addr("s").unwrap();
    let mut fresh = TcpStream::connect(addr).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Connected is not accepted: on a loaded machine the proxy could take it from the
    // queue only after the swap, as a connection of the new handler.
    wait_accept_queue_empty(addr);
    kubelet_write(&dir, 1, &yaml("b"));
    wait_for_count(&gost, r#""updated":"[\"s\"]""#, 1);
    thread::sleep(Duration::from_millis(100));
    let request = format!(
        "GET http://{0}/first HTTP/1.1\r\nHost: {0}\r\n\r\n",
        target.addr
    );
    fresh.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut fresh).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head:?}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
}

/// Waits (up to 5 s) until the listening socket at `addr` (IPv4) has no connection waiting to
/// be accepted: Linux shows a listener's accept queue as its `rx_queue` in /proc/net/tcp.
fn wait_accept_queue_empty(addr: SocketAddr) {
    let local = format!("0100007F:{:04X}", addr.port());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let queued = table.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl, local_address, rem_address, st (0A: LISTEN), tx_queue:rx_queue
            (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
                .then(|| fields.get(4)?.split(':').nth(1).map(str::to_string))
                .flatten()
        });
        let queued = queued.expect("the service listens");
        if u64::from_str_radix(&queued, 16) == Ok(0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the connection is still not accepted"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Opens a tunnel to `target` as a `handler` client on `stream`, a connection accepted
/// earlier: CONNECT for `http` and `auto`, a SOCKS5 handshake for `socks5`. Whether the proxy
/// granted it.
fn first_tunnel(stream: &mut TcpStream, handler: &str, target: SocketAddr) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    if handler == "socks5" {
        let std::net::IpAddr::V4(ip) = target.ip() else {
            unreachable!("an IPv4 echo target")
        };
        let mut request = vec![5, 1, 0, 5, 1, 0, 1];
        request.extend_from_slice(&ip.octets());
        request.extend_from_slice(&target.port().to_be_bytes());
        stream.write_all(&request).map_err(|e| e.to_string())?;
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).map_err(|e| e.to_string())?;
        return (answer[..4] == [5, 0, 5, 0])
            .then_some(())
            .ok_or(format!("{answer:?}"));
    }
    write!(stream, "CONNECT {target} HTTP/1.1\r\n\r\n").map_err(|e| e.to_string())?;
    let head = read_head(stream).map_err(|e| e.to_string())?;
    head.starts_with("HTTP/1.1 200 Connection established")
        .then_some(())
        .ok_or(format!("{head:?}"))
}

/// A connection accepted before its service stops (replaced by a reload, or the process
/// stopping) that has not sent its first request yet gets that request served within the
/// grace period: its request may be on its way, and a client that got nothing on a fresh
/// connection does not ask again. The `http` and `auto` handlers used to close it at once.
#[test]
fn a_connection_accepted_before_a_stop_gets_its_first_request_served() {
    let echo = Target::echo();
    for handler in ["http", "auto", "socks5"] {
        let yaml = |listener_metadata: &str| {
            format!(
                "services:\n- name: s\n  addr: 127.0.0.1:0\n  handler:\n    type: {handler}\n  listener:\n    type: tcp\n{listener_metadata}"
            )
        };
        let (dir, mut gost) = reloadable(&yaml(""), 1);
        let mut fresh = TcpStream::connect(gost.service_addr("s").unwrap()).unwrap();
        thread::sleep(Duration::from_millis(200));
        kubelet_write(&dir, 1, &yaml("    metadata: {keepalive: true}\n"));
        wait_for_count(&gost, r#""replaced":"[\"s\"]""#, 1);
        let granted = first_tunnel(&mut fresh, handler, echo.addr);
        assert_eq!(granted, Ok(()), "{handler}, replaced:\n{}", gost.log());
        assert!(echoes(&mut fresh), "{handler}, replaced");

        let mut fresh = TcpStream::connect(gost.service_addr("s").unwrap()).unwrap();
        thread::sleep(Duration::from_millis(200));
        gost.signal("TERM");
        wait_for_count(&gost, "stopped accepting", 2);
        let granted = first_tunnel(&mut fresh, handler, echo.addr);
        assert_eq!(granted, Ok(()), "{handler}, stopping:\n{}", gost.log());
        assert!(echoes(&mut fresh), "{handler}, stopping");
        drop(fresh);
        assert_eq!(gost.wait_exit(Duration::from_secs(10)), Some(0));
        drop(dir);
    }
}

/// A SIGHUP, or a file change that leaves the configuration as it is (a comment, say),
/// applies nothing: no new generation, no `configuration applied` line (it is said at
/// debug), as with a `-R` read. Each used to count as a new configuration.
#[test]
fn a_reload_that_changes_nothing_is_not_a_new_generation() {
    let dir = tempdir();
    let file = dir.join("gost.yaml");
    let yaml = "services:\n- name: a\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n";
    std::fs::write(&file, yaml).unwrap();
    let gost = Gost::start(
        &["-C", file.to_str().unwrap(), "-metrics", "127.0.0.1:0"],
        2,
    );
    let url = format!("http://{}/metrics", gost.addrs()[0]);
    gost.signal("HUP");
    wait_for_count(&gost, "configuration unchanged", 1);
    std::fs::write(&file, format!("# a comment\n{yaml}")).unwrap();
    wait_for_count(&gost, "configuration unchanged", 2);
    let log = gost.log();
    assert!(!log.contains("configuration applied"), "{log}");
    assert!(log.contains(r#""cause":"SIGHUP""#), "{log}");
    assert!(log.contains(r#""cause":"file change""#), "{log}");
    let scrape = scrape_metrics(&url, None);
    assert_eq!(metric_sample(&scrape, "gost_config_generation"), Some(1.0));
    // A change is still one.
    std::fs::write(&file, yaml.replace("http", "socks5")).unwrap();
    wait_for_count(&gost, "configuration applied", 1);
    assert!(gost.log().contains(r#""generation":2"#), "{}", gost.log());
    let scrape = scrape_metrics(&url, None);
    assert_eq!(metric_sample(&scrape, "gost_config_generation"), Some(2.0));
}

/// A change of a listener's own settings on the same address (here GOST's keepalive keys)
/// hands the listening socket to the new listener: the port stays bound throughout, so no
/// connection is refused while the listener changes, and the tunnels already open stay open
/// past the grace period, as a handler change leaves them. A plain TCP listener, and a TLS one
/// (a listener with a handshake of its own), reached through a gost client that opens a TLS
/// connection per tunnel. Before, the listener was closed and bound again (connections were
/// refused in between) and the open tunnels were cut when the grace period ended.
#[test]
fn a_listener_change_hands_its_socket_over_and_keeps_open_tunnels() {
    const RELOADS: usize = 5;
    let echo = Target::echo();
    let target = echo.addr.to_string();
    let yaml = |idle: usize| {
        let listener = |kind: &str| {
            format!(
                "  listener:\n    type: {kind}\n    metadata:\n      keepalive: true\n      keepalive.idle: {idle}s\n"
            )
        };
        format!(
            "services:\n\
             - name: plain\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n{}\
             - name: tls\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n{}",
            listener("tcp"),
            listener("tls")
        )
    };
    let (dir, gost) = reloadable(&yaml(20), 2);
    let plain = gost.service_addr("plain").unwrap();
    let tls = gost.service_addr("tls").unwrap();
    let client = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("http+tls://{tls}"),
        ],
        1,
    );
    let via_tls = client.addr();
    let mut tunnels = [
        http_connect(plain, &target, None).unwrap(),
        http_connect(via_tls, &target, None).unwrap(),
    ];
    for tunnel in &mut tunnels {
        assert!(echoes(tunnel));
    }

    // New tunnels all the time, on both services.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = [plain, via_tls]
        .into_iter()
        .map(|proxy| {
            let (stop, target) = (stop.clone(), target.clone());
            thread::spawn(move || {
                let (mut done, mut failed) = (0usize, Vec::new());
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match http_connect(proxy, &target, None).map(|mut t| echoes(&mut t)) {
                        Ok(true) => done += 1,
                        Ok(false) => failed.push("no echo".to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (done, failed)
            })
        })
        .collect();
    for round in 1..=RELOADS {
        thread::sleep(Duration::from_millis(200));
        kubelet_write(&dir, round, &yaml(20 + round));
        wait_for_count(&gost, "configuration applied", round);
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    for (proxy, handle) in [plain, via_tls].into_iter().zip(load) {
        let (done, failed) = handle.join().unwrap();
        assert!(
            failed.is_empty(),
            "{proxy}: {} of {} new tunnels failed during the reloads: {:?}\nlog:\n{}",
            failed.len(),
            done + failed.len(),
            &failed[..failed.len().min(5)],
            gost.log()
        );
        assert!(done > RELOADS, "{proxy}: the load did not run");
    }
    let log = gost.log();
    let replaced = log
        .lines()
        .filter(|l| l.contains("configuration applied"))
        .filter(|l| l.contains(r#""replaced":"[\"plain\", \"tls\"]""#))
        .count();
    assert_eq!(replaced, RELOADS, "{log}");
    assert_eq!(gost.service_addr("plain"), Some(plain));
    assert_eq!(gost.service_addr("tls"), Some(tls));
    // Past the grace period (1 s) of the listeners they came through.
    thread::sleep(Duration::from_millis(1500));
    for tunnel in &mut tunnels {
        assert!(
            echoes(tunnel),
            "an open tunnel was cut\nlog:\n{}",
            gost.log()
        );
    }
}

/// A connection the old listener accepted just before it handed its socket over, whose
/// handshake (here WebSocket's) ends after the reload, is still delivered and served: the
/// old listener delivers the handshakes it began for a few seconds. It was dropped with the
/// old listener.
#[test]
fn a_handshake_under_way_during_a_listener_change_is_served() {
    let echo = Target::echo();
    let yaml = |idle: usize| {
        format!(
            "services:\n\
             - name: ws\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  listener:\n    type: ws\n    metadata:\n      keepalive: true\n      keepalive.idle: {idle}s\n"
        )
    };
    let (dir, gost) = reloadable(&yaml(20), 1);
    let ws = gost.service_addr("ws").unwrap();
    let mut raw = TcpStream::connect(ws).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Taken by the old listener's accept before the reload.
    thread::sleep(Duration::from_millis(300));
    kubelet_write(&dir, 1, &yaml(21));
    wait_for_count(&gost, "configuration applied", 1);
    raw.write_all(
        b"GET /ws HTTP/1.1\r\nHost: gost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let head = read_head(&mut raw).expect("the upgrade is answered");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // A CONNECT in one masked binary frame (mask key 0: the payload as it is).
    let connect = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", echo.addr);
    let mut frame = vec![0x82, 0x80 | connect.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(connect.as_bytes());
    raw.write_all(&frame).unwrap();
    let mut header = [0u8; 2];
    raw.read_exact(&mut header)
        .unwrap_or_else(|e| panic!("no answer to the CONNECT: {e}\nlog:\n{}", gost.log()));
    assert_eq!(header[0], 0x82, "a binary frame");
    let mut answer = vec![0u8; usize::from(header[1] & 0x7f)];
    raw.read_exact(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
