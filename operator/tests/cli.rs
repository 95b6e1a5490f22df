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
