//! TLS (gost-wire.md §3): the `tls` listener and dialer behind GOST's `https` scheme, server
//! certificates (generated and kept, from files, re-read on change), client verification as
//! GOST does it, mutual TLS, and SOCKS5's TLS methods, with real `gost` processes, curl and
//! Python's `ssl` module.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gost_e2e::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A test CA that issues server and client certificates into a directory.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn write(&self, dir: &Path, name: &str) -> String {
        let path = dir.join(format!("{name}.pem"));
        fs::write(&path, &self.pem).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// Issues a certificate for `names` and writes `NAME.pem` and `NAME.key`; returns both
    /// paths and the certificate's PEM.
    fn issue(
        &self,
        dir: &Path,
        name: &str,
        names: &[&str],
        client: bool,
    ) -> (String, String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        fs::write(&cert_path, cert.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();
        (
            cert_path.to_str().unwrap().to_string(),
            key_path.to_str().unwrap().to_string(),
            cert.pem(),
        )
    }
}

/// The certificate a TLS server serves, as PEM, fetched by Python's `ssl`.
fn served_cert(addr: std::net::SocketAddr) -> String {
    let out = python(
        "tls_clients.py",
        &["cert", "127.0.0.1", &addr.port().to_string()],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.text()
}

fn same_pem(a: &str, b: &str) -> bool {
    let squash = |s: &str| s.split_whitespace().collect::<String>();
    squash(a) == squash(b)
}

fn get_through(proxy: &str, target: &Target) -> Output {
    curl(&["-x", proxy, &format!("http://{}/tls", target.addr)])
}

#[test]
fn https_proxy_generates_a_certificate_keeps_it_and_serves_it_again() {
    let target = Target::http();
    let home = tempdir();
    let first_served;
    {
        let server = Gost::start_in(&["-L", "https://user:pass@127.0.0.1:0"], 1, Some(&home));
        let proxy = format!("https://user:pass@{}", server.addr());
        let ok = curl(&[
            "--proxy-insecure",
            "-x",
            &proxy,
            &format!("http://{}/tls", target.addr),
        ]);
        assert_eq!(ok.code, 0, "{}", ok.stderr);
        assert!(ok.text().starts_with("hello from target"), "{}", ok.text());
        // Without --proxy-insecure, curl refuses the self-signed certificate: TLS is real.
        let refused = get_through(&proxy, &target);
        assert_ne!(refused.code, 0);
        first_served = served_cert(server.addr());
    }
    let dir = home.join(".gost");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("auto-ca-key.pem")), 0o600);
    assert_eq!(mode(&dir.join("auto-ca-cert.pem")), 0o644);
    let kept = fs::read_to_string(dir.join("auto-ca-cert.pem")).unwrap();
    assert!(
        same_pem(&kept, &first_served),
        "served {first_served}\nkept {kept}"
    );
    // GOST's profile: O=GOST, CN=gost.run, a CA certificate, SAN gost.run.
    let text = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-text",
            "-in",
            dir.join("auto-ca-cert.pem").to_str().unwrap(),
        ],
    );
    assert_eq!(text.code, 0, "{}", text.stderr);
    let text = text.text();
    for expected in [
        "O = GOST",
        "CN = gost.run",
        "CA:TRUE",
        "DNS:gost.run",
        "TLS Web Server Authentication",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // A second start serves the kept certificate instead of generating another one.
    let again = Gost::start_in(&["-L", "https://127.0.0.1:0"], 1, Some(&home));
    assert!(same_pem(&served_cert(again.addr()), &kept));
}

/// Without `HOME`, the generated certificate is kept in `.gost` under the working directory,
/// as GOST keeps it, and the log says where.
#[test]
fn without_home_the_generated_certificate_is_kept_in_the_working_directory() {
    let dir = tempdir();
    let server = Gost::start_in_without_home(&["-L", "https://127.0.0.1:0"], 1, &dir);
    let kept = dir.join(".gost/auto-ca-cert.pem");
    server.wait_for_log("generated TLS certificate saved");
    assert!(kept.is_file(), "{}", server.log());
    assert!(
        server
            .log()
            .contains(&dir.join(".gost").display().to_string()),
        "{}",
        server.log()
    );
    let kept = fs::read_to_string(&kept).unwrap();
    assert!(same_pem(&served_cert(server.addr()), &kept));
    drop(server);
    // The next start serves it again.
    let again = Gost::start_in_without_home(&["-L", "https://127.0.0.1:0"], 1, &dir);
    assert!(same_pem(&served_cert(again.addr()), &kept));
}

#[test]
fn client_verifies_the_server_only_when_asked_as_gost_does() {
    let dir = tempdir();
    let target = Target::http();
    let ca = Ca::new("gost-rs test CA");
    let ca_file = ca.write(&dir, "ca");
    let other_ca_file = Ca::new("another CA").write(&dir, "other-ca");
    let (cert, key, _) = ca.issue(&dir, "server", &["localhost", "127.0.0.1"], false);
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}"),
        ],
        1,
    );
    let through = |query: &str| {
        let client = Gost::start(
            &[
                "-L",
                "http://127.0.0.1:0",
                "-F",
                &format!("https://{}?{query}", server.addr()),
            ],
            1,
        );
        let out = get_through(&format!("http://{}", client.addr()), &target);
        (out, client.log())
    };

    // GOST's default: no verification, and a warning saying so.
    let (out, log) = through("");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(log.contains("not verified"), "{log}");
    // secure=true with the right CA: verified, no warning.
    let (out, log) = through(&format!("secure=true&caFile={ca_file}"));
    assert_eq!(out.code, 0, "{}\n{log}", out.stderr);
    assert!(!log.contains("not verified"), "{log}");
    // The wrong CA fails the dial; the client's HTTP front says 502 and logs why.
    let (out, log) = through(&format!("secure=true&caFile={other_ca_file}"));
    assert_eq!(out.code, 0);
    assert!(out.text().is_empty() || !out.text().contains("hello from target"));
    assert!(log.to_lowercase().contains("certificate"), "{log}");
    // secure=true checks the name too; caFile alone checks only the chain (GOST's pinning).
    let (out, _) = through(&format!(
        "secure=true&caFile={ca_file}&serverName=wrong.example"
    ));
    assert!(!out.text().contains("hello from target"));
    let (out, log) = through(&format!("caFile={ca_file}&serverName=wrong.example"));
    assert!(
        out.text().starts_with("hello from target"),
        "{}\n{log}",
        out.stderr
    );
}

/// The warning that a node's certificate is not verified comes once per node for the life of
/// the process: a reload that rebuilds the chain (here: the service's handler changed) used
/// to say it again, each time.
#[test]
fn an_unverified_node_is_warned_about_once_across_reloads() {
    let dir = tempdir();
    let target = Target::http();
    let server = Gost::start(&["-L", "https://127.0.0.1:0"], 1);
    let file = dir.join("gost.yaml");
    let yaml = |agent: &str| {
        format!(
            "services:\n- name: front\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    chain: up\n    metadata: {{proxyAgent: {agent}}}\n\
             chains:\n- name: up\n  hops:\n  - name: h\n    nodes:\n    - name: n\n      addr: {}\n      connector:\n        type: http\n      dialer:\n        type: tls\n",
            server.addr()
        )
    };
    fs::write(&file, yaml("a")).unwrap();
    let client = Gost::start(&["-C", file.to_str().unwrap()], 1);
    let warnings = || client.log().matches("not verified").count();
    for (round, agent) in ["a", "b", "c"].into_iter().enumerate() {
        if round > 0 {
            fs::write(&file, yaml(agent)).unwrap();
            client.wait_for_log(&format!("\"generation\":{}", round + 1));
        }
        let proxy = format!("http://{}", client.service_addr("front").unwrap());
        let out = get_through(&proxy, &target);
        assert!(
            out.text().starts_with("hello from target"),
            "{}",
            out.stderr
        );
        assert_eq!(warnings(), 1, "round {round}:\n{}", client.log());
    }
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let dir = tempdir();
    let target = Target::http();
    let ca = Ca::new("gost-rs test CA");
    let ca_file = ca.write(&dir, "ca");
    let (cert, key, _) = ca.issue(&dir, "server", &["localhost", "127.0.0.1"], false);
    let (client_cert, client_key, _) = ca.issue(&dir, "client", &["client"], true);
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}&caFile={ca_file}"),
        ],
        1,
    );
    let without = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("https://{}", server.addr()),
        ],
        1,
    );
    let out = get_through(&format!("http://{}", without.addr()), &target);
    assert!(
        !out.text().contains("hello from target"),
        "no client certificate must be refused"
    );
    let with = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!(
                "https://{}?cert={client_cert}&key={client_key}",
                server.addr()
            ),
        ],
        1,
    );
    let out = get_through(&format!("http://{}", with.addr()), &target);
    assert!(
        out.text().starts_with("hello from target"),
        "{}\n{}",
        out.stderr,
        with.log()
    );
}

/// A service's `caFile` without a certificate of its own still requires client certificates
/// from that CA, with the default certificate (GOST takes any client then); a `certFile`
/// without its `keyFile` is an error, not a silent fall-back to the default certificate.
#[test]
fn a_ca_file_alone_still_requires_client_certificates() {
    let dir = tempdir();
    let target = Target::http();
    let ca = Ca::new("gost-rs test CA");
    let ca_file = ca.write(&dir, "ca");
    let (client_cert, client_key, _) = ca.issue(&dir, "client", &["client"], true);
    let server = Gost::start_in(
        &["-L", &format!("https://127.0.0.1:0?caFile={ca_file}")],
        1,
        Some(&dir),
    );
    let without = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("https://{}", server.addr()),
        ],
        1,
    );
    let out = get_through(&format!("http://{}", without.addr()), &target);
    assert!(
        !out.text().contains("hello from target"),
        "no client certificate must be refused"
    );
    let with = Gost::start(
        &[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!(
                "https://{}?cert={client_cert}&key={client_key}",
                server.addr()
            ),
        ],
        1,
    );
    let out = get_through(&format!("http://{}", with.addr()), &target);
    assert!(
        out.text().starts_with("hello from target"),
        "{}\n{}",
        out.stderr,
        with.log()
    );

    let (cert, key, _) = ca.issue(&dir, "server", &["127.0.0.1"], false);
    for (query, missing) in [
        (format!("certFile={cert}"), "keyFile"),
        (format!("keyFile={key}"), "certFile"),
    ] {
        let out = run(
            &gost_bin().to_string_lossy(),
            &["-L", &format!("https://127.0.0.1:0?{query}")],
        );
        assert_ne!(out.code, 0);
        assert!(
            out.stderr.contains(&format!("{missing}, which is missing")),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn certificate_files_are_reread_when_they_change() {
    let dir = tempdir();
    let ca = Ca::new("gost-rs test CA");
    let (cert, key, first) = ca.issue(&dir, "server", &["localhost"], false);
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}"),
        ],
        1,
    );
    assert!(same_pem(&served_cert(server.addr()), &first));
    // A renewal as cert-manager or a kubelet would do it: new files swapped in by rename.
    let renewed = tempdir();
    let (new_cert, new_key, second) = ca.issue(&renewed, "server", &["localhost"], false);
    fs::rename(&new_key, &key).unwrap();
    fs::rename(&new_cert, &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = served_cert(server.addr());
        if same_pem(&served, &second) {
            break;
        }
        assert!(
            same_pem(&served, &first),
            "served neither certificate: {served}"
        );
        assert!(
            Instant::now() < deadline,
            "renewed certificate not served within 10 s"
        );
        thread::sleep(Duration::from_millis(300));
    }
    assert!(
        server.log().contains("TLS certificate reloaded"),
        "{}",
        server.log()
    );
    // A broken file keeps the last good certificate, and is logged once however many
    // handshakes come in while it stays.
    fs::write(&cert, "not a certificate").unwrap();
    for _ in 0..4 {
        thread::sleep(Duration::from_millis(700));
        assert!(same_pem(&served_cert(server.addr()), &second));
    }
    let log = server.log();
    assert_eq!(log.matches("not reloaded").count(), 1, "{log}");
}

/// A renewal that swaps symbolic links to files with the same modification time (a Nix
/// store, `cp -p`, `rsync -a`) is seen: files are compared by content.
#[test]
fn a_certificate_swapped_in_with_the_same_modification_time_is_served() {
    use std::os::unix::fs::symlink;
    let dir = tempdir();
    let ca = Ca::new("gost-rs test CA");
    let (store1, store2) = (dir.join("store1"), dir.join("store2"));
    fs::create_dir_all(&store1).unwrap();
    fs::create_dir_all(&store2).unwrap();
    let (_, _, first) = ca.issue(&store1, "server", &["localhost"], false);
    let (_, _, second) = ca.issue(&store2, "server", &["localhost"], false);
    let time = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for store in [&store1, &store2] {
        for name in ["server.pem", "server.key"] {
            let file = fs::File::options()
                .write(true)
                .open(store.join(name))
                .unwrap();
            file.set_modified(time).unwrap();
        }
    }
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    symlink(store1.join("server.pem"), &cert).unwrap();
    symlink(store1.join("server.key"), &key).unwrap();
    let server = Gost::start(
        &[
            "-L",
            &format!(
                "https://127.0.0.1:0?certFile={}&keyFile={}",
                cert.display(),
                key.display()
            ),
        ],
        1,
    );
    assert!(same_pem(&served_cert(server.addr()), &first));
    // Each link replaced at once, as a deployment tool does it.
    for (link, target) in [(&key, "server.key"), (&cert, "server.pem")] {
        let next = dir.join("next-link");
        symlink(store2.join(target), &next).unwrap();
        fs::rename(&next, link).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !same_pem(&served_cert(server.addr()), &second) {
        assert!(
            Instant::now() < deadline,
            "the swapped-in certificate was not served within 10 s:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(300));
    }
}

/// Waits up to 10 s for a request through the HTTP proxy `client` to reach `target`,
/// trying again every 300 ms; panics with `gost`'s log if it never does.
fn through_within_10s(client: &Gost, target: &Target, gost: &Gost) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = get_through(&format!("http://{}", client.addr()), target);
        if out.text().starts_with("hello from target") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not through within 10 s:\n{}\n{}",
            client.log(),
            gost.log()
        );
        thread::sleep(Duration::from_millis(300));
    }
}

/// A `gost` HTTP proxy on loopback whose one node is `node`.
fn client_of(node: &str) -> Gost {
    Gost::start(&["-L", "http://127.0.0.1:0", "-F", node], 1)
}

/// cert-manager rotating a server's `ca.crt` needs no restart: the client CA file is re-read
/// as the certificate files are.
#[test]
fn a_servers_client_ca_file_is_reread_when_it_changes() {
    let dir = tempdir();
    let target = Target::http();
    let (old_ca, new_ca) = (Ca::new("old client CA"), Ca::new("new client CA"));
    let (cert, key, _) = old_ca.issue(&dir, "server", &["127.0.0.1"], false);
    let ca_file = old_ca.write(&dir, "client-ca");
    let (client_cert, client_key, _) = new_ca.issue(&dir, "client", &["client"], true);
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}&caFile={ca_file}"),
        ],
        1,
    );
    let client = client_of(&format!(
        "https://{}?cert={client_cert}&key={client_key}",
        server.addr()
    ));
    let out = get_through(&format!("http://{}", client.addr()), &target);
    assert!(
        !out.text().contains("hello from target"),
        "a certificate from another CA must be refused"
    );
    let next = new_ca.write(&dir, "next-ca");
    fs::rename(&next, &ca_file).unwrap();
    through_within_10s(&client, &target, &server);
    server.wait_for_log("TLS client CA file reloaded");
    // A broken file keeps the CA in use. (A new client process: the first one's TLS
    // sessions are resumed without a certificate check.)
    fs::write(&ca_file, "not a certificate").unwrap();
    thread::sleep(Duration::from_millis(1200));
    let fresh = client_of(&format!(
        "https://{}?cert={client_cert}&key={client_key}",
        server.addr()
    ));
    through_within_10s(&fresh, &target, &server);
    server.wait_for_log("TLS client CA file not reloaded");
}

/// A client certificate renewed on disk is presented from the next handshake on.
#[test]
fn a_clients_certificate_is_reread_when_it_changes() {
    let dir = tempdir();
    let target = Target::http();
    let ca = Ca::new("gost-rs test CA");
    let ca_file = ca.write(&dir, "ca");
    let (cert, key, _) = ca.issue(&dir, "server", &["127.0.0.1"], false);
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}&caFile={ca_file}"),
        ],
        1,
    );
    // First a certificate the server does not take.
    let (client_cert, client_key, _) =
        Ca::new("another CA").issue(&dir, "client", &["client"], true);
    let client = client_of(&format!(
        "https://{}?cert={client_cert}&key={client_key}",
        server.addr()
    ));
    let out = get_through(&format!("http://{}", client.addr()), &target);
    assert!(!out.text().contains("hello from target"));
    let renewed = tempdir();
    let (new_cert, new_key, _) = ca.issue(&renewed, "client", &["client"], true);
    fs::rename(&new_key, &client_key).unwrap();
    fs::rename(&new_cert, &client_cert).unwrap();
    through_within_10s(&client, &target, &server);
    client.wait_for_log("TLS client certificate reloaded");
}

/// A client's `caFile` renewed on disk verifies the next handshake.
#[test]
fn a_clients_ca_file_is_reread_when_it_changes() {
    let dir = tempdir();
    let target = Target::http();
    let ca = Ca::new("gost-rs test CA");
    let (cert, key, _) = ca.issue(&dir, "server", &["127.0.0.1"], false);
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}"),
        ],
        1,
    );
    let ca_file = Ca::new("another CA").write(&dir, "ca");
    let client = client_of(&format!("https://{}?caFile={ca_file}", server.addr()));
    let out = get_through(&format!("http://{}", client.addr()), &target);
    assert!(
        !out.text().contains("hello from target"),
        "a server certificate from another CA must be refused"
    );
    let next = ca.write(&dir, "next-ca");
    fs::rename(&next, &ca_file).unwrap();
    through_within_10s(&client, &target, &server);
    client.wait_for_log("TLS CA file reloaded");
}

/// A self-signed CA certificate used as its own leaf, as GOST generates them and as
/// `openssl req -x509` makes them, for `names`; expired since 2001 when `expired`. Writes
/// `NAME.pem` and `NAME.key`; returns both paths.
fn self_signed(dir: &Path, name: &str, names: &[&str], expired: bool) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.to_str().unwrap().to_string(),
        key_path.to_str().unwrap().to_string(),
    )
}

/// `secure=true&caFile=CERT` where CERT is the server's own self-signed CA certificate (GOST's
/// generated one, `openssl req -x509`'s) verifies, as with Go and OpenSSL; the name is still
/// checked.
#[test]
fn secure_verification_takes_a_self_signed_ca_certificate_pinned_in_the_ca_file() {
    let dir = tempdir();
    let target = Target::http();
    let (cert, key) = self_signed(&dir, "server", &["127.0.0.1"], false);
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}"),
        ],
        1,
    );
    let client = client_of(&format!(
        "https://{}?secure=true&caFile={cert}",
        server.addr()
    ));
    let out = get_through(&format!("http://{}", client.addr()), &target);
    assert!(
        out.text().starts_with("hello from target"),
        "{}\n{}",
        out.stderr,
        client.log()
    );
    let wrong = client_of(&format!(
        "https://{}?secure=true&caFile={cert}&serverName=wrong.example",
        server.addr()
    ));
    let out = get_through(&format!("http://{}", wrong.addr()), &target);
    assert!(!out.text().contains("hello from target"));
    wrong.wait_for_log("not valid for name");

    // GOST's generated certificate, named as it is (gost.run).
    let home = tempdir();
    let generated = Gost::start_in(&["-L", "https://127.0.0.1:0"], 1, Some(&home));
    let kept = home.join(".gost/auto-ca-cert.pem");
    let client = client_of(&format!(
        "https://{}?secure=true&caFile={}&serverName=gost.run",
        generated.addr(),
        kept.display()
    ));
    let out = get_through(&format!("http://{}", client.addr()), &target);
    assert!(
        out.text().starts_with("hello from target"),
        "{}\n{}",
        out.stderr,
        client.log()
    );
}

/// A server whose `caFile` lists a client's self-signed CA certificate takes that client, as
/// Go and OpenSSL do, unless the certificate has expired.
#[test]
fn a_server_takes_a_self_signed_client_certificate_pinned_in_its_ca_file() {
    let dir = tempdir();
    let target = Target::http();
    let ca = Ca::new("gost-rs test CA");
    let (cert, key, _) = ca.issue(&dir, "server", &["127.0.0.1"], false);
    for (expired, through) in [(false, true), (true, false)] {
        let name = if expired { "old-client" } else { "client" };
        let (client_cert, client_key) = self_signed(&dir, name, &["client"], expired);
        let server = Gost::start(
            &[
                "-L",
                &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}&caFile={client_cert}"),
            ],
            1,
        );
        let client = client_of(&format!(
            "https://{}?cert={client_cert}&key={client_key}",
            server.addr()
        ));
        let out = get_through(&format!("http://{}", client.addr()), &target);
        assert_eq!(
            out.text().starts_with("hello from target"),
            through,
            "expired {expired}: {}\n{}",
            out.stderr,
            server.log()
        );
        if expired {
            server.wait_for_log("certificate expired");
        }
    }
}

/// Pinning with `caFile` alone (no `secure`) refuses an expired certificate, as GOST does.
#[test]
fn pinning_refuses_an_expired_certificate() {
    let dir = tempdir();
    let target = Target::http();
    let (cert, key) = self_signed(&dir, "server", &["127.0.0.1"], true);
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}"),
        ],
        1,
    );
    let client = client_of(&format!("https://{}?caFile={cert}", server.addr()));
    let out = get_through(&format!("http://{}", client.addr()), &target);
    assert!(
        !out.text().contains("hello from target"),
        "an expired pinned certificate must be refused"
    );
    client.wait_for_log("certificate expired");
}

#[test]
fn socks5_serves_gosts_tls_methods_and_our_client_uses_them() {
    let target = Target::http();
    let home = tempdir();
    let server = Gost::start_in(&["-L", "socks5://user:pass@127.0.0.1:0"], 1, Some(&home));
    let port = server.addr().port().to_string();
    let target_port = target.addr.port().to_string();
    // The certificate is made when a client first asks for TLS, not at start: a SOCKS5 proxy
    // that never meets such a client writes nothing to ~/.gost.
    assert!(!home.join(".gost").exists(), "{}", server.log());
    // An independent client greeting as GOST does (00 02 80 82) gets 0x82: TLS, then RFC 1929
    // inside it.
    python_checks(
        "tls_clients.py",
        &["socks5-tls", &port, &target_port, "user", "pass"].map(String::from),
        &[
            "method 0x82",
            "tls TLSv1.3",
            "auth status 0",
            "reply 0",
            "HTTP/1.1 200",
            "hello",
        ],
    );
    assert!(
        home.join(".gost/auto-ca-cert.pem").is_file(),
        "{}",
        server.log()
    );
    let refused = python(
        "tls_clients.py",
        &["socks5-tls", &port, &target_port, "user", "wrong"],
    );
    assert!(
        refused.text().contains("auth status 1"),
        "{}{}",
        refused.text(),
        refused.stderr
    );
    // With notls the server picks the plain method for the same greeting.
    let plain = Gost::start_in(
        &["-L", "socks5://user:pass@127.0.0.1:0?notls=true"],
        1,
        Some(&home),
    );
    python_checks(
        "tls_clients.py",
        &[
            "socks5-tls",
            &plain.addr().port().to_string(),
            &target_port,
            "user",
            "pass",
        ]
        .map(String::from),
        &["method 0x02", "auth status 0", "reply 0", "hello"],
    );
    // Our client offers the TLS methods too (the unverified-peer warning shows TLS was used),
    // and falls back to plain SOCKS5 with a notls server.
    for (upstream, tls) in [(server.addr(), true), (plain.addr(), false)] {
        let client = Gost::start(
            &[
                "-L",
                "http://127.0.0.1:0",
                "-F",
                &format!("socks5://user:pass@{upstream}"),
            ],
            1,
        );
        let out = get_through(&format!("http://{}", client.addr()), &target);
        assert!(
            out.text().starts_with("hello from target"),
            "{}\n{}",
            out.stderr,
            client.log()
        );
        assert_eq!(
            client.log().contains("not verified"),
            tls,
            "{}",
            client.log()
        );
    }
}

/// An `openssl s_server -www` on a free loopback port, killed when dropped.
struct HttpsOrigin {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl HttpsOrigin {
    fn start(dir: &Path) -> HttpsOrigin {
        let (cert, key) = (dir.join("sni-cert.pem"), dir.join("sni-key.pem"));
        let made = run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
                "-subj",
                "/CN=localhost",
                "-days",
                "1",
            ],
        );
        assert_eq!(made.code, 0, "{}", made.stderr);
        HttpsOrigin::serve(dir, &cert, &key, "-www")
    }

    /// `openssl s_server` with `cert` and `key` in `dir`, serving a status page (`-www`) or
    /// the files of `dir` (`-WWW`).
    fn serve(dir: &Path, cert: &Path, key: &Path, mode: &str) -> HttpsOrigin {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = std::process::Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                mode,
                "-accept",
                &addr.to_string(),
                "-cert",
            ])
            .arg(cert)
            .arg("-key")
            .arg(key)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server starts");
        let mut origin = HttpsOrigin { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "openssl s_server did not listen on {addr}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        // Listening, and not some other process on a port taken meanwhile.
        assert!(
            origin.child.try_wait().unwrap().is_none(),
            "openssl s_server exited (port {addr} taken?)"
        );
        origin
    }
}

impl Drop for HttpsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When the SOCKS5 handler cannot have a certificate (here: a top-level `tls` section whose
/// common name is no valid name, and no certificate kept anywhere), a client offering GOST's
/// TLS methods beside the plain one gets the plain one, not a TLS method and then a reset.
#[test]
fn socks5_without_a_certificate_answers_with_a_plain_method() {
    let home = tempdir();
    let target = Target::echo();
    let yaml = "services:\n- name: s\n  addr: 127.0.0.1:0\n  handler:\n    type: socks5\n  listener:\n    type: tcp\ntls:\n  commonName: \"g\u{f8}st\"\n";
    let file = home.join("gost.yaml");
    fs::write(&file, yaml).unwrap();
    let gost = Gost::start_in(&["-C", file.to_str().unwrap()], 1, Some(&home));
    for _ in 0..2 {
        // No auth, or GOST's TLS method.
        let (stream, method, reply) = socks5_connect_raw(gost.addr(), &[0, 0x80], target.addr);
        assert_eq!((method, reply), (0, 0), "{}", gost.log());
        echo_round_trip(stream, 1024);
    }
    let warnings = gost
        .log()
        .matches("no certificate for SOCKS5's TLS methods")
        .count();
    assert_eq!(warnings, 1, "{}", gost.log());
}

/// `secure=true` without a `caFile` trusts what Go (GOST) and OpenSSL trust: the CA
/// certificates of `SSL_CERT_FILE` when it is set (else the system's); `-C https://…` the same.
#[test]
fn secure_without_a_ca_file_trusts_ssl_cert_file() {
    let dir = tempdir();
    let target = Target::http();
    let ca = Ca::new("company CA");
    let ca_file = ca.write(&dir, "ca");
    let other_ca_file = Ca::new("another CA").write(&dir, "other-ca");
    let (cert, key, _) = ca.issue(&dir, "server", &["127.0.0.1"], false);
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}"),
        ],
        1,
    );
    for (roots, through) in [(&ca_file, true), (&other_ca_file, false)] {
        let client = Gost::start_with_env(
            &[
                "-L",
                "http://127.0.0.1:0",
                "-F",
                &format!("https://{}?secure=true", server.addr()),
            ],
            1,
            &[("SSL_CERT_FILE", roots)],
        );
        let out = get_through(&format!("http://{}", client.addr()), &target);
        assert_eq!(
            out.text().starts_with("hello from target"),
            through,
            "SSL_CERT_FILE={roots}: {}\n{}",
            out.stderr,
            client.log()
        );
    }

    fs::write(
        dir.join("gost.yaml"),
        "services:\n- name: from-https\n  addr: 127.0.0.1:0\n  handler: {type: http}\n  listener: {type: tcp}\n",
    )
    .unwrap();
    let origin = HttpsOrigin::serve(&dir, Path::new(&cert), Path::new(&key), "-WWW");
    let url = format!("https://{}/gost.yaml", origin.addr);
    let gost = gost_bin();
    for (roots, fetched) in [(&ca_file, true), (&other_ca_file, false)] {
        let out = run(
            "env",
            &[
                &format!("SSL_CERT_FILE={roots}"),
                &gost.to_string_lossy(),
                "-C",
                &url,
                "-O",
                "yaml",
            ],
        );
        assert_eq!(
            out.code == 0 && out.text().contains("from-https"),
            fetched,
            "SSL_CERT_FILE={roots}: {}\n{}",
            out.text(),
            out.stderr
        );
    }
}

/// `phts` offers no ALPN, as GOST's server: a client offering only `h2` completes the
/// handshake (no `no_application_protocol` alert) and is served HTTP/1.1.
#[test]
fn phts_serves_clients_whatever_alpn_they_offer() {
    let home = tempdir();
    let server = Gost::start_in(&["-L", "relay+phts://127.0.0.1:0"], 1, Some(&home));
    let addr = server.addr().to_string();
    for alpn in [Some("h2"), Some("h2,http/1.1"), None] {
        let mut args = vec!["s_client", "-connect", &addr, "-servername", "localhost"];
        if let Some(alpn) = alpn {
            args.extend(["-alpn", alpn]);
        }
        let out = run("openssl", &args);
        assert_eq!(out.code, 0, "ALPN {alpn:?}: {}\n{}", out.text(), out.stderr);
        assert!(
            out.text().contains("No ALPN negotiated"),
            "ALPN {alpn:?}: {}",
            out.text()
        );
    }
    let out = run(
        "python3",
        &[
            "-c",
            "import socket, ssl, sys\n\
             ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n\
             ctx.check_hostname = False\n\
             ctx.verify_mode = ssl.CERT_NONE\n\
             ctx.set_alpn_protocols(['h2'])\n\
             s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10))\n\
             s.sendall(b'POST /authorize HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\n\\r\\n')\n\
             print(s.recv(4096).split(b'\\r\\n')[0].decode())",
            &server.addr().port().to_string(),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.text().starts_with("HTTP/1.1 "), "{}", out.text());
}

/// The gRPC hint about `grpcInsecure` comes only with a failure that looks like the peer not
/// speaking TLS, not with a certificate refusal, on either end.
#[test]
fn grpc_mentions_grpc_insecure_only_when_the_peer_does_not_speak_tls() {
    let home = tempdir();
    let target = Target::http();
    let other_ca_file = Ca::new("another CA").write(&home, "other-ca");
    let hint = "a server with grpcInsecure=true needs it on this end too";
    let tls_server = Gost::start_in(&["-L", "relay+grpc://127.0.0.1:0"], 1, Some(&home));
    let cleartext_server = Gost::start(&["-L", "relay+grpc://127.0.0.1:0?grpcInsecure=true"], 1);
    for (node, hinted) in [
        (format!("relay+grpc://{}", cleartext_server.addr()), true),
        (
            format!(
                "relay+grpc://{}?secure=true&caFile={other_ca_file}",
                tls_server.addr()
            ),
            false,
        ),
    ] {
        let client = client_of(&node);
        let out = get_through(&format!("http://{}", client.addr()), &target);
        assert!(!out.text().contains("hello from target"), "{node}");
        client.wait_for_log("TLS handshake failed");
        assert_eq!(
            client.log().contains(hint),
            hinted,
            "{node}:\n{}",
            client.log()
        );
    }
    // The server's side: a client without TLS gets the hint, a TLS client that fails the
    // handshake otherwise (here: it refuses the server's certificate) does not.
    let server_hint = "a client without TLS needs grpcInsecure=true on both ends";
    assert!(
        !tls_server.log().contains(server_hint),
        "{}",
        tls_server.log()
    );
    let cleartext_client = client_of(&format!(
        "relay+grpc://{}?grpcInsecure=true",
        tls_server.addr()
    ));
    let out = get_through(&format!("http://{}", cleartext_client.addr()), &target);
    assert!(!out.text().contains("hello from target"));
    tls_server.wait_for_log(server_hint);
}

/// A TLS client (`wss`, `phts`, `h2`, `relay+tls`) pointed at a listener without TLS logs
/// that the server did not answer in TLS, not only rustls's "corrupt message" (gRPC's hint
/// about `grpcInsecure` is tested above).
#[test]
fn a_tls_client_of_a_server_without_tls_is_told_so() {
    let target = Target::http();
    let ws = Gost::start(&["-L", "relay+ws://127.0.0.1:0"], 1);
    let pht = Gost::start(&["-L", "relay+pht://127.0.0.1:0"], 1);
    let h2c = Gost::start(&["-L", "h2c://127.0.0.1:0"], 1);
    for node in [
        format!("relay+wss://{}", ws.addr()),
        format!("relay+tls://{}", ws.addr()),
        format!("relay+phts://{}", pht.addr()),
        format!("h2://{}", h2c.addr()),
    ] {
        let client = client_of(&node);
        let out = get_through(&format!("http://{}", client.addr()), &target);
        assert!(!out.text().contains("hello from target"), "{node}");
        client.wait_for_log("the server did not answer in TLS");
        let log = client.log();
        assert!(
            log.lines()
                .all(|l| l.matches("TLS handshake failed").count() <= 1),
            "{node}:\n{log}"
        );
    }
}

/// An encrypted private key is named as such, not as "not a PEM private key".
#[test]
fn an_encrypted_private_key_is_refused_as_encrypted() {
    let dir = tempdir();
    let (cert, key, _) = Ca::new("gost-rs test CA").issue(&dir, "server", &["127.0.0.1"], false);
    let encrypted = dir.join("encrypted.key");
    let made = run(
        "openssl",
        &[
            "pkcs8",
            "-topk8",
            "-in",
            &key,
            "-out",
            encrypted.to_str().unwrap(),
            "-passout",
            "pass:secret",
        ],
    );
    assert_eq!(made.code, 0, "{}", made.stderr);
    let out = run(
        &gost_bin().to_string_lossy(),
        &[
            "-L",
            &format!(
                "https://127.0.0.1:0?certFile={cert}&keyFile={}",
                encrypted.display()
            ),
        ],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("encrypted.key: the private key is encrypted"),
        "{}",
        out.stderr
    );
}

/// A refused client certificate is logged at WARN, once per client address a minute, over
/// TCP (`https`) and QUIC (`h3`) alike.
#[test]
fn refused_client_certificates_are_warned_about_once_per_address() {
    let dir = tempdir();
    let target = Target::http();
    let ca = Ca::new("gost-rs test CA");
    let ca_file = ca.write(&dir, "ca");
    let (cert, key, _) = ca.issue(&dir, "server", &["127.0.0.1"], false);
    let (other_cert, other_key, _) = Ca::new("another CA").issue(&dir, "client", &["client"], true);
    for scheme in ["https", "h3"] {
        let server = Gost::start(
            &[
                "-L",
                &format!("{scheme}://127.0.0.1:0?certFile={cert}&keyFile={key}&caFile={ca_file}"),
            ],
            1,
        );
        for node in [
            format!("{scheme}://{}", server.addr()),
            format!(
                "{scheme}://{}?cert={other_cert}&key={other_key}",
                server.addr()
            ),
        ] {
            let client = client_of(&node);
            for _ in 0..3 {
                let out = get_through(&format!("http://{}", client.addr()), &target);
                assert!(!out.text().contains("hello from target"), "{node}");
            }
        }
        server.wait_for_log("TLS client certificate refused");
        let log = server.log();
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("TLS client certificate refused"))
            .collect();
        assert_eq!(warned.len(), 1, "{scheme}: {log}");
        for expected in [
            "\"level\":\"warn\"",
            "\"client\":\"127.0.0.1:",
            "\"service\":\"service-0\"",
        ] {
            assert!(warned[0].contains(expected), "{scheme}: {}", warned[0]);
        }
    }
}

/// An HTTP CONNECT proxy that notes each target asked for and carries every tunnel to
/// `origin`, wherever it was meant to go (so that a tunnel to port 443 needs no port 443).
/// A CONNECT proxy that carries every tunnel to `origin`, recording the target each asked
/// for and, when each ends, the bytes it carried up.
fn recording_proxy(origin: std::net::SocketAddr) -> (Target, Recorded, Recorded<u64>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let carried = Arc::new(Mutex::new(Vec::new()));
    let (noted, counted) = (asked.clone(), carried.clone());
    let proxy = Target::start(move |mut client| {
        let Ok(head) = read_head(&mut client) else {
            return;
        };
        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
        noted.lock().unwrap().push(target);
        let Ok(upstream) = std::net::TcpStream::connect(origin) else {
            return;
        };
        if client.write_all(b"HTTP/1.1 200 OK\r\n\r\n").is_err() {
            return;
        }
        let (mut up_read, mut client_write) =
            (upstream.try_clone().unwrap(), client.try_clone().unwrap());
        let back = thread::spawn(move || {
            let _ = std::io::copy(&mut up_read, &mut client_write);
            let _ = client_write.shutdown(std::net::Shutdown::Write);
        });
        let mut up_write = upstream;
        let up = std::io::copy(&mut client, &mut up_write).unwrap_or(0);
        let _ = up_write.shutdown(std::net::Shutdown::Write);
        let _ = back.join();
        counted.lock().unwrap().push(up);
    });
    (proxy, asked, carried)
}

type Recorded<T = String> = Arc<Mutex<Vec<T>>>;

/// The number after `"key":` in `line`.
fn log_number(line: &str, key: &str) -> u64 {
    let needle = format!("\"{key}\":");
    let at = line
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + needle.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number for {key} in {line}"))
}

/// As GOST's, the `auto` handler forwards a TLS client through its chain to the server name of
/// its ClientHello, port 443; the TLS session stays the client's. A service with credentials
/// refuses TLS clients (GOST forwards them unchecked), and a ClientHello without a name goes
/// nowhere.
#[test]
fn auto_forwards_tls_clients_by_server_name() {
    let dir = tempdir();
    let origin = HttpsOrigin::start(&dir);
    let (node, asked, carried) = recording_proxy(origin.addr);
    let node_url = format!("http://{}", node.addr);
    let open = Gost::start(&["-L", "auto://127.0.0.1:0", "-F", &node_url], 1);
    let guarded = Gost::start(&["-L", "auto://user:pass@127.0.0.1:0", "-F", &node_url], 1);
    let fetch = |gost: &Gost, host: &str| {
        let via = format!("{host}:443:127.0.0.1:{}", gost.addr().port());
        curl(&["-k", "--connect-to", &via, &format!("https://{host}/")])
    };
    let out = fetch(&open, "sni.example");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.text().contains("<HTML>"), "{}", out.text());
    assert_eq!(*asked.lock().unwrap(), ["sni.example:443"]);
    open.wait_for_log("\"target\":\"sni.example:443\"");
    // The tunnel's bytes up count the ClientHello read before it, as the node received them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while carried.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the node's tunnel did not end");
        thread::sleep(Duration::from_millis(20));
    }
    let log = open.log();
    let line = log
        .lines()
        .find(|l| l.contains("\"target\":\"sni.example:443\"") && l.contains("bytes_up"))
        .unwrap();
    assert_eq!(
        log_number(line, "bytes_up"),
        carried.lock().unwrap()[0],
        "{line}"
    );
    // curl sends no server name for an address.
    let unnamed = curl(&["-k", &format!("https://{}/", open.addr())]);
    assert_ne!(unnamed.code, 0, "{}", unnamed.text());
    // The same port still serves HTTP proxy clients.
    let http = curl_status(&[
        "-k",
        "-x",
        &format!("http://{}", open.addr()),
        "https://other.example/",
    ]);
    assert_eq!(http.text(), "200", "{}", http.stderr);
    let refused = fetch(&guarded, "sni.example");
    assert_ne!(refused.code, 0, "{}", refused.text());
    guarded.wait_for_log("cannot send the service's credentials");
    assert_eq!(
        *asked.lock().unwrap(),
        ["sni.example:443", "other.example:443"],
        "only the open service's two tunnels reached the node"
    );
}

/// A mutual-TLS service resumes no sessions: a resumed session skips the client
/// certificate's check, so a client whose CA was rotated out (or whose certificate expired)
/// could go on resuming.
#[test]
fn mutual_tls_services_resume_no_sessions() {
    let dir = tempdir();
    let ca = Ca::new("gost-rs test CA");
    let ca_file = ca.write(&dir, "ca");
    let (cert, key, _) = ca.issue(&dir, "server", &["127.0.0.1"], false);
    let (client_cert, client_key, _) = ca.issue(&dir, "client", &["client"], true);
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}&caFile={ca_file}"),
        ],
        1,
    );
    let session = dir.join("session.pem");
    let session = session.to_str().unwrap();
    let connect = server.addr().to_string();
    let handshake = |resume: bool| {
        let sessions = if resume { "-sess_in" } else { "-sess_out" };
        // A request and its answer, so that TLS 1.3 tickets (sent after the handshake) are
        // read before the client ends.
        let script = format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -connect {connect} \
             -cert {client_cert} -key {client_key} -CAfile {ca_file} {sessions} {session} -ign_eof"
        );
        run("sh", &["-c", &script]).text()
    };
    let first = handshake(false);
    assert!(first.contains("New, TLSv1.3"), "{first}");
    // No ticket came (so nothing to resume with), or the resumption was refused.
    let stored = fs::metadata(session).map(|m| m.len()).unwrap_or(0);
    if stored > 0 {
        let second = handshake(true);
        assert!(!second.contains("Reused"), "{second}");
        assert!(second.contains("New, TLSv1.3"), "{second}");
    }
}

/// An X.509 v1 certificate for `v1.test` (no extensions, as `openssl x509 -req` without
/// `-extfile` writes them before OpenSSL 3.2; valid from 2000 to 2126) and its key.
const V1_CERT: &str = include_str!("../../proxy/src/tls/testdata/v1.crt");
const V1_KEY: &str = include_str!("../../proxy/src/tls/testdata/v1.key");

/// A server with a v1 certificate (Go, so GOST, serves one) is served and reached by our
/// client, unverified as GOST's default and with the certificate pinned in a `caFile`.
#[test]
fn a_v1_certificate_is_served_and_accepted() {
    let dir = tempdir();
    let target = Target::http();
    let (cert, key) = (dir.join("v1.crt"), dir.join("v1.key"));
    fs::write(&cert, V1_CERT).unwrap();
    fs::write(&key, V1_KEY).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}"),
        ],
        1,
    );
    assert!(same_pem(&served_cert(server.addr()), V1_CERT));
    for query in [String::new(), format!("?caFile={cert}")] {
        let client = client_of(&format!("https://{}{query}", server.addr()));
        let out = get_through(&format!("http://{}", client.addr()), &target);
        assert!(
            out.text().starts_with("hello from target"),
            "{query}: {}\n{}",
            out.stderr,
            client.log()
        );
    }
}

/// A server whose `caFile` pins a v1 client certificate takes that client, as Go (so GOST)
/// takes it, and still refuses a client without one.
#[test]
fn a_pinned_v1_client_certificate_is_taken() {
    let dir = tempdir();
    let target = Target::http();
    let ca = Ca::new("gost-rs test CA");
    let (cert, key, _) = ca.issue(&dir, "server", &["127.0.0.1"], false);
    let (v1_cert, v1_key) = (dir.join("v1.crt"), dir.join("v1.key"));
    fs::write(&v1_cert, V1_CERT).unwrap();
    fs::write(&v1_key, V1_KEY).unwrap();
    let (v1_cert, v1_key) = (v1_cert.to_str().unwrap(), v1_key.to_str().unwrap());
    let server = Gost::start(
        &[
            "-L",
            &format!("https://127.0.0.1:0?certFile={cert}&keyFile={key}&caFile={v1_cert}"),
        ],
        1,
    );
    for (query, through) in [
        (format!("?cert={v1_cert}&key={v1_key}"), true),
        (String::new(), false),
    ] {
        let client = client_of(&format!("https://{}{query}", server.addr()));
        let out = get_through(&format!("http://{}", client.addr()), &target);
        assert_eq!(
            out.text().starts_with("hello from target"),
            through,
            "{query}: {}\n{}",
            out.stderr,
            server.log()
        );
    }
}

/// GOST's TLS `options` (its TLS page's example, with `minVersion`, `maxVersion`,
/// `cipherSuites` and `alpn`): a listener offers what they say, and so does a node's dialer.
/// The top-level section takes none, since GOST ignores them there.
#[test]
fn tls_options_set_versions_cipher_suites_and_alpn_as_in_gost() {
    let dir = tempdir();
    let target = Target::http();
    let ca = Ca::new("gost-rs test CA");
    // rcgen's keys are ECDSA P-256, so the ECDSA suites apply.
    let (cert, key, _) = ca.issue(&dir, "server", &["localhost", "127.0.0.1"], false);
    let server = |options: &str| {
        Gost::start_config(
            &format!(
                "services:\n- name: service-0\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  \
                 listener:\n    type: tls\n    tls:\n      certFile: {cert}\n      keyFile: {key}\n      \
                 options:\n{options}"
            ),
            1,
        )
    };
    let handshake = |gost: &Gost, max: &str, alpn: &str, ciphers: &[&str]| {
        let port = gost.addr().port().to_string();
        let mut args = vec!["handshake", "127.0.0.1", &port, max, alpn];
        args.extend_from_slice(ciphers);
        let out = python("tls_clients.py", &args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.text()
    };

    let tls13 = server("        minVersion: VersionTLS13\n        alpn: [h2, http/1.1]\n");
    let out = handshake(&tls13, "1.2", "-", &[]);
    assert!(out.starts_with("refused"), "{out}\n{}", tls13.log());
    let out = handshake(&tls13, "1.3", "http/1.1,h2", &[]);
    assert!(out.contains("version=TLSv1.3 alpn=h2"), "{out}");

    let chacha = server(
        "        maxVersion: versiontls12\n        cipherSuites:\n        \
         - TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256\n",
    );
    let out = handshake(&chacha, "1.3", "-", &[]);
    assert!(
        out.contains("version=TLSv1.2 alpn=None cipher=ECDHE-ECDSA-CHACHA20-POLY1305"),
        "{out}"
    );
    let out = handshake(&chacha, "1.2", "-", &["ECDHE-ECDSA-AES128-GCM-SHA256"]);
    assert!(out.starts_with("refused"), "{out}");

    // A node whose dialer stops at TLS 1.2 reaches the server that speaks it, not the other.
    let client = |server: &Gost| {
        Gost::start_config(
            &format!(
                "services:\n- name: service-0\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    \
                 chain: chain-0\nchains:\n- name: chain-0\n  hops:\n  - name: hop-0\n    nodes:\n    \
                 - name: node-0\n      addr: {}\n      dialer:\n        type: tls\n        tls:\n          \
                 options:\n            maxVersion: VersionTLS12\n",
                server.addr()
            ),
            1,
        )
    };
    let via = client(&chacha);
    let out = get_through(&format!("http://{}", via.addr()), &target);
    assert!(
        out.text().starts_with("hello from target"),
        "{}\n{}",
        out.stderr,
        via.log()
    );
    let via = client(&tls13);
    let out = get_through(&format!("http://{}", via.addr()), &target);
    assert!(!out.text().contains("hello from target"), "{}", out.text());
    assert!(via.log().contains("upstream dial failed"), "{}", via.log());

    let file = dir.join("top.yaml");
    fs::write(
        &file,
        "services:\n- name: s\n  addr: 127.0.0.1:0\n  listener:\n    type: tls\n\
         tls:\n  options:\n    minVersion: VersionTLS13\n",
    )
    .unwrap();
    let out = run(
        gost_bin().to_str().unwrap(),
        &["-C", file.to_str().unwrap(), "-O", "yaml"],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("tls.options") && out.stderr.contains("each listener"),
        "{}",
        out.stderr
    );
}

/// GOST's `rejectUnknownSNI` and `serverNames`, as its TLS page writes them on the command
/// line (which GOST itself drops) and in a file: a handshake without a server name, or with
/// one not listed, fails without a certificate; a listed one, in any case, is served.
#[test]
fn reject_unknown_sni_serves_only_the_listed_names() {
    let dir = tempdir();
    let target = Target::http();
    let ca = Ca::new("gost-rs test CA");
    let (cert, key, _) = ca.issue(&dir, "server", &["localhost", "127.0.0.1"], false);
    let from_cli = Gost::start(
        &[
            "-L",
            &format!(
                "http+tls://127.0.0.1:0?certFile={cert}&keyFile={key}&rejectUnknownSNI=true&serverNames=localhost,proxy.example"
            ),
        ],
        1,
    );
    let from_file = Gost::start_config(
        &format!(
            "services:\n- name: service-0\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n  \
             listener:\n    type: tls\n    tls:\n      certFile: {cert}\n      keyFile: {key}\n      \
             rejectUnknownSNI: true\n      serverNames:\n      - localhost\n"
        ),
        1,
    );
    for server in [&from_cli, &from_file] {
        let sni = |name: &str| {
            let port = server.addr().port().to_string();
            let out = python(
                "tls_clients.py",
                &["handshake-sni", "127.0.0.1", &port, name],
            );
            assert_eq!(out.code, 0, "{}", out.stderr);
            out.text()
        };
        assert!(sni("-").starts_with("refused"), "{}", sni("-"));
        assert!(sni("evil.example").starts_with("refused"));
        assert!(
            sni("LOCALHOST").starts_with("served"),
            "{}",
            sni("LOCALHOST")
        );
        let out = curl(&[
            "--proxy-insecure",
            "-x",
            &format!("https://localhost:{}", server.addr().port()),
            &format!("http://{}/", target.addr),
        ]);
        assert!(
            out.text().starts_with("hello from target"),
            "{}\n{}",
            out.stderr,
            server.log()
        );
    }
}
