//! The `gost-operator` binary's command line: bad values are refused before anything starts,
//! with the flag named; without a reachable cluster configuration it says so and exits.

use std::process::Command;

fn operator(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gost-operator"));
    cmd.args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBECONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("gost-operator runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_named() {
    for (args, named) in [
        (
            &["--sidecar-grace-period", "soon"][..],
            "--sidecar-grace-period",
        ),
        (&["--sidecar-log-level", "loud"][..], "--sidecar-log-level"),
        (
            &["--sidecar-memory-limit", "lots"][..],
            "--sidecar-memory-limit",
        ),
        (
            &["--sidecar-image-pull-policy", "Sometimes"][..],
            "--sidecar-image-pull-policy",
        ),
    ] {
        let (code, stderr) = operator(args, &[]);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    let (code, stderr) = operator(&["--webhook-addr", "nowhere"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--webhook-addr"), "{stderr}");
    let (code, stderr) = operator(
        &[
            "--webhook-cert-dir",
            "/certs",
            "--webhook-url",
            "https://127.0.0.1:9443/mutate",
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--webhook-cert-dir") && stderr.contains("--webhook-url"),
        "{stderr}"
    );
    let (code, stderr) = operator(&["--metrics-addr", "nowhere"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--metrics-addr") && stderr.contains("IP:PORT or :PORT"),
        "{stderr}"
    );
    let (code, stderr) = operator(&["--webhook-addr", ":99999"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--webhook-addr"), "{stderr}");
}

/// `:PORT` is every interface, as controller-runtime operators and GOST read it: the flags
/// are taken and the operator goes on to look for a cluster (none here), before it listens.
#[test]
fn a_port_alone_is_a_listening_address() {
    let (code, stderr) = operator(
        &["--metrics-addr", ":9090", "--webhook-addr", ":9443"],
        &[("KUBECONFIG", "/nonexistent/kubeconfig")],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach the Kubernetes API"),
        "{stderr}"
    );
}

#[test]
fn no_cluster_configuration_is_a_clear_error() {
    let (code, stderr) = operator(&[], &[("KUBECONFIG", "/nonexistent/kubeconfig")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach the Kubernetes API") && stderr.contains("/nonexistent"),
        "{stderr}"
    );
}

/// An API server that refuses connections: the operator says which call failed and exits
/// instead of hanging (this also caught the TLS provider panic of a spawned task).
#[test]
fn an_unreachable_api_server_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("gost-operator-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://127.0.0.1:{port}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\nusers:\n- name: u\n  user: {{token: t}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gost-operator"))
        .args([
            "--webhook-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("KUBECONFIG", &kubeconfig)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("gost-operator did not exit within 30 s against a refusing API server");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("webhook certificate") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
