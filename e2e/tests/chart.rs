//! The Helm chart (charts/gost-operator) and the all-in-one manifest generated from it
//! (deploy/gost-operator.yaml), checked offline with the real tools: `helm lint` and
//! `helm template` for several value sets, each rendering validated strictly against
//! Kubernetes' own schemas (scripts/validate-manifests, kubernetes-validate) and scanned by
//! checkov, then asserted on object by object.
//!
//! The tools come from `scripts/tools` (scripts/test runs it): helm from `$HELM` else
//! `.tools/bin/helm`, checkov from `$CHECKOV` else `.tools/bin/checkov`, the validator's Python
//! from `$TOOLS_PYTHON` else `.tools/venv/bin/python`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A bound on any one tool run: helm renders in well under a second and checkov scans a
/// rendering in about ten on this machine's 2 cores; a hung tool fails the test instead.
const TOOL_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a running tool is polled for exit.
const POLL: Duration = Duration::from_millis(50);
/// The release every rendering uses: the names the operator's flags default to.
const RELEASE: &str = "gost-operator";
const NAMESPACE: &str = "gost-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

fn chart() -> PathBuf {
    repo().join("charts/gost-operator")
}

/// A tool from `$var`, else from its place under .tools/; a missing one fails with how to
/// install it.
fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(default));
    assert!(
        path.is_file(),
        "{} not found (${var} or {default}): run scripts/tools, which installs helm, kubectl, \
         checkov and kubernetes-validate into .tools/",
        path.display()
    );
    path
}

fn helm() -> PathBuf {
    tool("HELM", ".tools/bin/helm")
}

/// Runs `cmd` to completion within [`TOOL_TIMEOUT`], killing it past that.
fn run(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Pipes are drained on threads so that a chatty tool cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the tool") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {TOOL_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `helm template` of the chart with `args` (values files, --set): the output, or helm's error.
fn try_render(args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", RELEASE])
        .arg(chart())
        .args(["--namespace", NAMESPACE])
        .args(args);
    let out = run(cmd);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

fn render(args: &[&str]) -> String {
    try_render(args).unwrap_or_else(|e| panic!("helm template {args:?} failed:\n{e}"))
}

fn objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// A scratch file for the tools, unique to this test process and `name`.
fn scratch(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gost-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write scratch file");
    path
}

/// Strict schema validation of every object (custom resources against our CRDs).
fn validate(name: &str, yaml: &str) {
    let file = scratch(&format!("{name}.yaml"), yaml);
    let mut cmd = Command::new(tool("TOOLS_PYTHON", ".tools/venv/bin/python"));
    cmd.arg("scripts/validate-manifests")
        .args(["--kubernetes-version", "1.32", "--crds", "crds"])
        .arg(&file);
    let out = run(cmd);
    let report = text(&out.stdout) + &text(&out.stderr);
    assert!(
        out.status.success() && report.contains(", 0 invalid"),
        "{name}: schema validation failed:\n{report}"
    );
}

/// checkov's scan of one rendering (offline: `--skip-download`, no platform calls).
fn run_checkov(name: &str, yaml: &str) -> Output {
    let file = scratch(&format!("{name}.yaml"), yaml);
    let mut cmd = Command::new(tool("CHECKOV", ".tools/bin/checkov"));
    cmd.arg("--file").arg(&file).args([
        "--framework",
        "kubernetes",
        "--compact",
        "--skip-download",
    ]);
    run(cmd)
}

/// checkov finds no failed check (accepted findings are skip annotations set from values).
fn checkov(name: &str, yaml: &str) {
    let out = run_checkov(name, yaml);
    let report = text(&out.stdout);
    assert!(
        out.status.success() && report.contains("Failed checks: 0"),
        "{name}: checkov found failed checks (fix them, or justify an exception in values.yaml \
         checkovSkips):\n{report}\n{}",
        text(&out.stderr)
    );
    assert!(
        report.contains("Passed checks:"),
        "{name}: checkov scanned nothing:\n{report}"
    );
}

/// Renders, validates and scans one value set; returns its objects.
fn checked(name: &str, args: &[&str]) -> Vec<Value> {
    let yaml = render(args);
    validate(name, &yaml);
    checkov(name, &yaml);
    objects(&yaml)
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendering"))
}

fn count(objs: &[Value], kind: &str) -> usize {
    objs.iter().filter(|o| o["kind"] == kind).count()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The workspace version (Cargo.toml `[workspace.package] version`), the chart's appVersion.
fn workspace_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn operator_container(objs: &[Value]) -> &Value {
    let dep = find(objs, "Deployment", RELEASE);
    &dep["spec"]["template"]["spec"]["containers"][0]
}

fn args(objs: &[Value]) -> Vec<String> {
    strings(&operator_container(objs)["args"])
}

#[test]
fn chart_lints() {
    for extra in [&[][..], &["--strict"], &["--strict", "-f"]] {
        let mut cmd = Command::new(helm());
        cmd.arg("lint").arg(chart()).args(extra);
        if extra.last() == Some(&"-f") {
            cmd.arg(chart().join("values-ha.yaml"));
        }
        let out = run(cmd);
        assert!(
            out.status.success(),
            "helm lint {extra:?} failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn chart_version_is_the_workspace_version() {
    let chart_yaml = std::fs::read_to_string(chart().join("Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_saphyr::from_str(&chart_yaml).expect("Chart.yaml parses");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["type"], "application");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(workspace_version().as_str()),
        "Chart.yaml appVersion must be the workspace version of Cargo.toml"
    );
}

#[test]
fn chart_crds_are_the_generated_ones() {
    for file in ["gostchains.gost.rs.yaml", "gostservices.gost.rs.yaml"] {
        let generated = std::fs::read_to_string(repo().join("crds").join(file)).expect("crd");
        let charted = std::fs::read_to_string(chart().join("crds").join(file)).unwrap_or_default();
        assert!(
            generated == charted,
            "charts/gost-operator/crds/{file} differs from crds/{file}: run \
             `cargo run -p gost-api --features kube --bin crdgen`"
        );
    }
}

#[test]
fn default_values() {
    let objs = checked("defaults", &[]);
    let version = workspace_version();

    // The Deployment: image, leader election, the operator's names passed explicitly.
    let dep = find(&objs, "Deployment", RELEASE);
    assert_eq!(dep["metadata"]["namespace"], NAMESPACE);
    assert_eq!(dep["spec"]["replicas"], 1);
    let c = operator_container(&objs);
    assert_eq!(c["image"], format!("gost-rs/gost-operator:{version}"));
    let a = args(&objs);
    for want in [
        "--leader-election=true".to_string(),
        "--webhook-service=gost-operator-webhook".into(),
        "--webhook-configuration=gost-sidecar-injector".into(),
        "--webhook-addr=:9443".into(),
        "--metrics-addr=:8080".into(),
        format!("--sidecar-image=gost-rs/gost:{version}"),
        "--sidecar-image-pull-policy=IfNotPresent".into(),
        "--sidecar-cpu-request=50m".into(),
        "--sidecar-memory-request=32Mi".into(),
        "--sidecar-memory-limit=256Mi".into(),
        "--sidecar-log-format=json".into(),
        "--sidecar-grace-period=20s".into(),
    ] {
        assert!(a.contains(&want), "operator args lack {want}: {a:?}");
    }
    assert!(
        !a.iter().any(|x| x.starts_with("--watch-namespace")),
        "watches every namespace by default: {a:?}"
    );
    let env = &c["env"];
    assert!(
        env.as_array()
            .is_some_and(|e| e.iter().any(|v| v["name"] == "POD_NAMESPACE"
                && v["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace")),
        "POD_NAMESPACE from the downward API: {env}"
    );
    let ports: Vec<(String, i64)> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["containerPort"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [("metrics".to_string(), 8080), ("webhook".to_string(), 9443)]
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(
        c["volumeMounts"].as_array().is_some_and(|m| m
            .iter()
            .any(|v| v["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")),
        "the API token is mounted through the projected volume"
    );

    // Services: the webhook's under the name the operator is told, and metrics.
    let hook_svc = find(&objs, "Service", "gost-operator-webhook");
    assert_eq!(hook_svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(hook_svc["spec"]["ports"][0]["targetPort"], "webhook");
    let metrics_svc = find(&objs, "Service", "gost-operator-metrics");
    assert_eq!(metrics_svc["spec"]["ports"][0]["name"], "metrics");
    assert_eq!(metrics_svc["spec"]["ports"][0]["port"], 8080);

    // The webhook configuration: certs::url_webhook_configuration's rules, by Service.
    let mwc = find(
        &objs,
        "MutatingWebhookConfiguration",
        "gost-sidecar-injector",
    );
    let hooks = mwc["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    assert_eq!(hook["name"], "inject.gost.rs");
    assert_eq!(
        hook["clientConfig"]["service"],
        serde_json::json!({"name": "gost-operator-webhook", "namespace": NAMESPACE, "path": "/mutate", "port": 443})
    );
    assert!(
        hook["clientConfig"].get("caBundle").is_none(),
        "a first install leaves caBundle to the operator"
    );
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "NoneOnDryRun");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(
        hook["rules"],
        serde_json::json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
            "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(
        hook["namespaceSelector"],
        serde_json::json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name",
            "operator": "NotIn", "values": ["kube-system", "kube-public", "kube-node-lease"]}]})
    );

    // RBAC: no wildcards; the webhook configuration and the Lease are limited by name.
    assert_no_wildcards(&objs);
    let cluster = find(&objs, "ClusterRole", RELEASE);
    let mwc_rule = rule_for(cluster, "mutatingwebhookconfigurations");
    assert_eq!(
        strings(&mwc_rule["resourceNames"]),
        ["gost-sidecar-injector"]
    );
    assert_eq!(strings(&mwc_rule["verbs"]), ["get", "update"]);
    let workloads = find(&objs, "ClusterRole", "gost-operator-workloads");
    assert!(strings(&rule_for(workloads, "secrets")["verbs"]).contains(&"delete".to_string()));
    let role = find(&objs, "Role", RELEASE);
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        strings(&rule_for(role, "leases")["resourceNames"]),
        ["gost-operator"]
    );
    let sa = find(&objs, "ServiceAccount", RELEASE);
    assert_eq!(sa["metadata"]["namespace"], NAMESPACE);
    for binding in objs
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        assert_eq!(binding["subjects"][0]["name"], RELEASE);
    }

    // On by default: the NetworkPolicy; off: PDB, ServiceMonitor.
    let np = find(&objs, "NetworkPolicy", RELEASE);
    let ingress_ports: Vec<&Value> = np["spec"]["ingress"]
        .as_array()
        .expect("ingress")
        .iter()
        .map(|r| &r["ports"][0]["port"])
        .collect();
    assert_eq!(
        ingress_ports,
        [&Value::from("webhook"), &Value::from("metrics")]
    );
    assert_eq!(count(&objs, "PodDisruptionBudget"), 0);
    assert_eq!(count(&objs, "ServiceMonitor"), 0);
}

/// The first rule of `role` that names `resource`.
fn rule_for<'a>(role: &'a Value, resource: &str) -> &'a Value {
    role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| strings(&r["resources"]).iter().any(|x| x == resource))
        .unwrap_or_else(|| panic!("{} has no rule for {resource}", role["metadata"]["name"]))
}

fn assert_no_wildcards(objs: &[Value]) {
    for role in objs
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        for rule in role["rules"].as_array().expect("rules") {
            for field in ["verbs", "resources", "apiGroups"] {
                assert!(
                    !strings(&rule[field]).iter().any(|x| x.contains('*')),
                    "{} grants a wildcard in {field}: {rule}",
                    role["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn ha_values() {
    let objs = checked("ha", &["-f", "charts/gost-operator/values-ha.yaml"]);
    let dep = find(&objs, "Deployment", RELEASE);
    assert_eq!(dep["spec"]["replicas"], 2);
    assert!(args(&objs).contains(&"--leader-election=true".to_string()));
    let pdb = find(&objs, "PodDisruptionBudget", RELEASE);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
    let pod = &dep["spec"]["template"]["spec"];
    let anti =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    // The templated selector names this release's pods.
    assert_eq!(
        anti["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        RELEASE
    );
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
}

#[test]
fn pdb_with_one_replica_is_refused() {
    let err = try_render(&["--set", "podDisruptionBudget.enabled=true"])
        .expect_err("a PDB over one replica blocks drains");
    assert!(err.contains("replicaCount"), "{err}");
}

#[test]
fn monitoring_on() {
    let objs = checked("monitoring", &["--set", "serviceMonitor.enabled=true"]);
    let sm = find(&objs, "ServiceMonitor", RELEASE);
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    // It selects the metrics Service, not the webhook's.
    let metrics_svc = find(&objs, "Service", "gost-operator-metrics");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(&metrics_svc["metadata"]["labels"][k], v, "label {k}");
    }
    let hook_svc = find(&objs, "Service", "gost-operator-webhook");
    assert!(hook_svc["metadata"]["labels"]["app.kubernetes.io/component"].is_null());
}

#[test]
fn network_policy_off() {
    // checkov's CKV2_K8S_6 (a pod without a NetworkPolicy) then holds: the values file accepts
    // it with its reason, as a user turning the policy off would.
    let objs = checked(
        "no-netpol",
        &["-f", "charts/gost-operator/ci/no-networkpolicy-values.yaml"],
    );
    assert_eq!(count(&objs, "NetworkPolicy"), 0);
    find(&objs, "Deployment", RELEASE);
}

#[test]
fn watch_namespace() {
    let objs = checked("watch-ns", &["--set", "watchNamespace=apps"]);
    assert!(args(&objs).contains(&"--watch-namespace=apps".to_string()));
    // The namespaced permissions are a Role in the watched namespace, not cluster-wide.
    let workloads = find(&objs, "Role", "gost-operator-workloads");
    assert_eq!(workloads["metadata"]["namespace"], "apps");
    let binding = find(&objs, "RoleBinding", "gost-operator-workloads");
    assert_eq!(binding["metadata"]["namespace"], "apps");
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    for role in objs.iter().filter(|o| o["kind"] == "ClusterRole") {
        for rule in role["rules"].as_array().expect("rules") {
            assert!(
                !strings(&rule["resources"]).contains(&"secrets".to_string()),
                "no cluster-wide Secret access with watchNamespace: {rule}"
            );
        }
    }
    assert_no_wildcards(&objs);
}

#[test]
fn digest_pins_the_image() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let objs = objects(&render(&["--set", &format!("image.digest={digest}")]));
    assert_eq!(
        operator_container(&objs)["image"],
        format!("gost-rs/gost-operator@{digest}")
    );
}

#[test]
fn bad_values_are_refused_by_name() {
    let bad = scratch("bad-values.yaml", "replicaCount: \"two\"\n");
    let err = try_render(&["-f", bad.to_str().expect("utf-8 path")])
        .expect_err("replicaCount: \"two\" must be refused");
    assert!(
        err.contains("replicaCount"),
        "error does not name the value: {err}"
    );

    let err = try_render(&["--set", "replicaCuont=2"]).expect_err("an unknown key is refused");
    assert!(
        err.contains("replicaCuont"),
        "error does not name the key: {err}"
    );

    let err = try_render(&["--set", "sidecar.logFormat=xml"]).expect_err("json or text only");
    assert!(err.contains("logFormat"), "{err}");

    let err = try_render(&["--set", "checkovSkips[0].id=CKV_K8S_1,checkovSkips[0].objects[0]=deployment,checkovSkips[0].reason=because a=b"])
        .expect_err("checkov splits a skip on '=': a reason must not contain one");
    assert!(err.contains("reason"), "{err}");
}

#[test]
fn deploy_manifest_is_fresh_and_valid() {
    let fresh = scratch("gost-operator.yaml", "");
    let mut cmd = Command::new(repo().join("scripts/gen-deploy"));
    cmd.arg(&fresh).env("HELM", helm());
    let out = run(cmd);
    assert!(
        out.status.success(),
        "scripts/gen-deploy failed:\n{}",
        text(&out.stderr)
    );
    let generated = std::fs::read_to_string(&fresh).expect("generated manifest");
    let committed =
        std::fs::read_to_string(repo().join("deploy/gost-operator.yaml")).unwrap_or_default();
    assert!(
        generated == committed,
        "deploy/gost-operator.yaml is stale: run scripts/gen-deploy"
    );

    validate("deploy", &committed);
    let objs = objects(&committed);
    assert_eq!(objs[0]["kind"], "Namespace", "the Namespace comes first");
    assert_eq!(objs[0]["metadata"]["name"], NAMESPACE);
    let crds: Vec<&str> = objs
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(crds, ["gostchains.gost.rs", "gostservices.gost.rs"]);
    for o in &objs[1..] {
        let cluster_scoped = [
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
        ]
        .contains(&o["kind"].as_str().unwrap_or_default());
        if !cluster_scoped {
            assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{}", o["kind"]);
        }
    }
}

#[test]
fn checkov_reports_unjustified_findings() {
    // Without the justified exceptions of values.yaml the scan must fail on them: proof that
    // the scan runs on the rendering and that the exceptions are what makes it pass.
    let yaml = render(&["--set-json", "checkovSkips=[]"]);
    let out = run_checkov("no-skips", &yaml);
    let report = text(&out.stdout);
    assert!(
        !out.status.success(),
        "checkov passed without the exceptions:\n{report}"
    );
    for id in ["CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_155"] {
        assert!(
            report.contains(id),
            "checkov did not report {id}:\n{report}"
        );
    }
}

/// Every flag the chart passes is one the operator takes: with the rendered arguments and no
/// cluster it gets past parsing (exit 2 and a usage error would mean a flag it does not know
/// or a value it refuses) and stops at the missing cluster configuration.
#[test]
fn the_operator_takes_the_rendered_arguments() {
    let bin = gost_e2e::operator_bin();
    for (name, set) in [
        ("args-default", &[][..]),
        (
            "args-all",
            &[
                "--set",
                "watchNamespace=apps",
                "--set",
                "sidecar.logLevel=debug",
                "--set",
                "sidecar.logFormat=text",
            ][..],
        ),
        (
            "args-cert-manager",
            &["--set", "webhook.certManager.enabled=true"][..],
        ),
    ] {
        let objs = objects(&render(set));
        let flags = args(&objs);
        assert!(!flags.is_empty(), "{name}: no args rendered");
        let mut cmd = Command::new(&bin);
        cmd.args(&flags)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = run(cmd);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {flags:?}\n{stderr}");
        assert!(
            stderr.contains("cannot reach the Kubernetes API"),
            "{name}: {flags:?}\n{stderr}"
        );
    }
}

#[test]
fn cert_manager_mode() {
    let objs = checked(
        "cert-manager",
        &["--set", "webhook.certManager.enabled=true"],
    );
    let cert = find(&objs, "Certificate", "gost-operator-webhook");
    assert_eq!(cert["spec"]["secretName"], "gost-operator-webhook-tls");
    assert_eq!(
        strings(&cert["spec"]["dnsNames"]),
        [
            "gost-operator-webhook",
            "gost-operator-webhook.gost-system",
            "gost-operator-webhook.gost-system.svc",
            "gost-operator-webhook.gost-system.svc.cluster.local",
        ]
    );
    assert_eq!(
        cert["spec"]["issuerRef"]["name"],
        "gost-operator-selfsigned"
    );
    assert!(find(&objs, "Issuer", "gost-operator-selfsigned")["spec"]["selfSigned"].is_object());
    let config = find(
        &objs,
        "MutatingWebhookConfiguration",
        "gost-sidecar-injector",
    );
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "gost-system/gost-operator-webhook"
    );
    // The operator serves the mounted pair and touches neither the Secret nor caBundle.
    let flags = args(&objs);
    assert!(flags.contains(&"--webhook-cert-dir=/etc/gost-operator/webhook-tls".to_string()));
    assert!(
        !flags.iter().any(|f| f.starts_with("--webhook-secret")),
        "{flags:?}"
    );
    let pod = &find(&objs, "Deployment", RELEASE)["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "webhook-tls")
        .expect("the certificate volume");
    assert_eq!(volume["secret"]["secretName"], "gost-operator-webhook-tls");
    for role in objs.iter().filter(|o| o["kind"] == "ClusterRole") {
        for rule in role["rules"].as_array().unwrap() {
            assert!(
                !strings(&rule["resources"]).contains(&"mutatingwebhookconfigurations".into()),
                "no rights on the webhook configuration in cert-manager mode: {rule}"
            );
        }
    }
    let own = find(&objs, "Role", RELEASE);
    assert!(
        !own["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| strings(&r["resources"]).contains(&"secrets".into())),
        "no Secret rights in the release namespace in cert-manager mode: {own}"
    );
    assert_no_wildcards(&objs);

    // An issuer of the user's: no Issuer of ours.
    let objs = objects(&render(&[
        "--set",
        "webhook.certManager.enabled=true",
        "--set",
        "webhook.certManager.issuerRef.name=my-ca",
        "--set",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    ]));
    assert_eq!(count(&objs, "Issuer"), 0);
    let cert = find(&objs, "Certificate", "gost-operator-webhook");
    assert_eq!(cert["spec"]["issuerRef"]["name"], "my-ca");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    let refused = try_render(&["--set", "webhook.certManager.issuerRef.kind=Bogus"]).unwrap_err();
    assert!(refused.contains("issuerRef/kind"), "{refused}");
}
