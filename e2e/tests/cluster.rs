//! Cluster tests of the operator (issue 6, point 7), run against whatever cluster `KUBECONFIG`
//! points at: `cargo test -p gost-e2e -- --ignored`.
//!
//! They drive the cluster with `kubectl`, the client users use, and read its `-o json`. Each
//! test works in a namespace of its own, `gost-e2e-<random>`, opted in to injection and deleted
//! when the test ends, passed or failed.
//!
//! The operator under test is, by default, the one installed in the cluster (namespace
//! `$GOST_E2E_OPERATOR_NAMESPACE`, default `gost-system`). With `$GOST_E2E_WEBHOOK_HOST` set,
//! each test instead runs the locally built `gost-operator` in laptop mode, its webhook
//! registered by URL at that host (an address of this machine the API server can reach, e.g.
//! the docker bridge address for kind). Laptop-mode tests run one at a time: every operator's
//! webhook sees every pod of the cluster, so two at once would inject into each other's pods.
//! There, `$GOST_E2E_IMAGE` (if set) is the gost image of sidecars and gateways, for images
//! loaded into the cluster under another name than the operator's default.
//!
//! Every file of `deploy/examples/` has a test here (`example_*`): applied as users apply it,
//! its gateway and client sidecar are checked object by object, and where pods run (the
//! cluster has a Ready node) a request goes through the tunnel from the client pod.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

#[path = "../../operator/tests/support/examples.rs"]
mod examples;

/// How long any one thing may take to happen in the cluster: long enough for a GC pass or a
/// kind node to admit a pod, short enough that a broken operator fails the run in minutes.
const WAIT: Duration = Duration::from_secs(60);
/// How often a wait looks again: quick enough for a test to end soon after the cluster
/// converges, slow enough not to load the API server.
const POLL: Duration = Duration::from_millis(500);
/// Each kubectl request's own bound (`--request-timeout`), so a hung API server cannot stall a
/// test past its waits.
const KUBECTL_REQUEST_TIMEOUT: &str = "30s";
/// How long laptop mode waits for the operator to listen (a debug build starting and issuing
/// its webhook certificate).
const OPERATOR_STARTUP: Duration = Duration::from_secs(60);
/// Lines of the operator's log shown when a laptop-mode test fails.
const OPERATOR_LOG_TAIL: usize = 60;

/// Where the installed operator runs when `$GOST_E2E_OPERATOR_NAMESPACE` does not say.
const DEFAULT_OPERATOR_NAMESPACE: &str = "gost-system";
/// What the operator logs once its webhook accepts connections (operator/src/main.rs).
const WEBHOOK_LISTENING: &str = "injection webhook listening";

/// The namespace opt-in the webhook honours (operator/src/inject.rs).
const INJECT_LABEL: &str = "gost.rs/inject=enabled";
/// Label and annotation the webhook puts on a pod it injected (operator/src/group.rs,
/// operator/src/inject.rs).
const INJECTED: &str = "gost.rs/injected";
/// The sidecar's container name (operator/src/inject.rs).
const SIDECAR: &str = "gost";
/// The rendered config's key in its Secret (operator/src/render.rs).
const CONFIG_KEY: &str = "config.yaml";
/// Prefixes of the Secret of a config group and of a gateway's objects.
const SIDECAR_SECRET_PREFIX: &str = "gost-sidecar-";
const GATEWAY_PREFIX: &str = "gost-gw-";
/// The application image of the demo Deployment: tiny, and served by the project's registry.
const DEMO_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// Credentials of the demo service, before and after the Secret changes.
const DEMO_USER: &str = "alice";
const FIRST_PASSWORD: &str = "first-password";
const SECOND_PASSWORD: &str = "second-password";

// ---------------------------------------------------------------------------------------------
// kubectl

/// Runs kubectl with `args` (and `stdin`, if any); its standard output, or a message naming
/// the command and what it printed on failure.
fn kubectl_result(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut command = Command::new("kubectl");
    command
        .arg(format!("--request-timeout={KUBECTL_REQUEST_TIMEOUT}"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run kubectl (is it on PATH?): {e}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped");
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("kubectl {args:?}: writing its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("kubectl {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs kubectl; panics with its error output when it fails.
fn kubectl(args: &[&str]) -> String {
    kubectl_result(args, None).unwrap_or_else(|e| panic!("{e}"))
}

/// Applies `objects` (a JSON list of manifests) in namespace `ns`.
fn apply(ns: &str, objects: Value) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    kubectl_result(&["apply", "-n", ns, "-f", "-"], Some(&list.to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The object `kind/name` in `ns`, `None` when it does not exist, or kubectl's error (waits
/// retry on it: one failed request is not a verdict).
fn get(ns: &str, kind: &str, name: &str) -> Result<Option<Value>, String> {
    let out = kubectl_result(
        &[
            "get",
            kind,
            name,
            "-n",
            ns,
            "-o",
            "json",
            "--ignore-not-found",
        ],
        None,
    )?;
    if out.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&out).map(Some).map_err(|e| {
        format!("kubectl get {kind} {name} printed something that is not JSON ({e}): {out}")
    })
}

/// Waits until `kind/name` in `ns` exists; the object.
fn wait_exists(ns: &str, kind: &str, name: &str) -> Value {
    wait_for(&format!("{kind} {ns}/{name} to exist"), || {
        get(ns, kind, name)?.ok_or_else(|| "not found".to_string())
    })
}

/// Polls `check` every [`POLL`] until it returns `Ok`, for at most [`WAIT`]; panics naming
/// `what` and the last state `check` described.
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("waited {WAIT:?} for {what}; last seen: {last}")
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Waits until `kind/name` in `ns` no longer exists.
fn wait_gone(ns: &str, kind: &str, name: &str) {
    wait_for(
        &format!("{kind} {ns}/{name} to be deleted"),
        || match get(ns, kind, name)? {
            None => Ok(()),
            Some(obj) => Err(format!(
                "still there (deletionTimestamp {}, ownerReferences {})",
                obj["metadata"]["deletionTimestamp"], obj["metadata"]["ownerReferences"]
            )),
        },
    );
}

/// The condition of type `kind` in `obj`'s status.
fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

// ---------------------------------------------------------------------------------------------
// The cluster, the operator and a namespace per test

/// `None`, with the reason on standard error, when no cluster is configured: `--ignored` on a
/// machine without one then passes, and says why.
fn cluster(test: &str) -> Option<()> {
    if std::env::var_os("KUBECONFIG").is_none_or(|v| v.is_empty()) {
        eprintln!(
            "skipping {test}: KUBECONFIG is not set; point it at a cluster to run the cluster tests"
        );
        return None;
    }
    Some(())
}

/// Applies the CRDs of this checkout and waits until the API serves both.
fn apply_crds() {
    let dir = gost_e2e::workspace_root().join("crds");
    kubectl(&["apply", "-f", dir.to_str().expect("UTF-8 path")]);
    for crd in ["gostchains.gost.rs", "gostservices.gost.rs"] {
        wait_for(&format!("CRD {crd} to be Established"), || {
            let obj = get("default", "customresourcedefinition", crd)?
                .ok_or_else(|| "not found".to_string())?;
            match condition(&obj, "Established") {
                Some(c) if c["status"] == "True" => Ok(()),
                other => Err(format!("Established condition: {other:?}")),
            }
        });
    }
}

/// [`apply_crds`] once per test run: the other tests need the CRDs, and parallel applies of
/// the same objects would only conflict.
fn ensure_crds() {
    static APPLIED: Mutex<bool> = Mutex::new(false);
    let mut applied = APPLIED.lock().unwrap_or_else(|e| e.into_inner());
    if !*applied {
        apply_crds();
        *applied = true;
    }
}

/// Serializes laptop-mode tests (see the module documentation).
static LAPTOP: Mutex<()> = Mutex::new(());

/// A `gost-operator` this harness started (laptop mode), killed by its PID at the end.
struct LocalOperator {
    child: Child,
    log: PathBuf,
    _log_dir: gost_e2e::TempDir,
    /// Its MutatingWebhookConfiguration (cluster-scoped, so named after the test namespace).
    webhook_configuration: String,
}

impl LocalOperator {
    /// Starts the operator for namespace `ns`, its webhook at `https://host:PORT/mutate`, and
    /// waits until the webhook listens.
    fn start(ns: &str, host: &str) -> LocalOperator {
        let port = match std::env::var("GOST_E2E_WEBHOOK_PORT") {
            Ok(port) => port
                .parse::<u16>()
                .unwrap_or_else(|_| panic!("GOST_E2E_WEBHOOK_PORT {port:?} is not a port number")),
            // A port free now; the operator binds it a moment later.
            Err(_) => TcpListener::bind("0.0.0.0:0")
                .and_then(|l| l.local_addr())
                .expect("an ephemeral port")
                .port(),
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let log_dir = gost_e2e::tempdir();
        let log = log_dir.join("gost-operator.log");
        let log_file = std::fs::File::create(&log).expect("create the operator log");
        let url = format!("https://{host}:{port}/mutate");
        let addr = format!("0.0.0.0:{port}");
        let child = Command::new(gost_e2e::operator_bin())
            .args([
                "--webhook-url",
                &url,
                "--webhook-addr",
                &addr,
                // Any free port: probes and scrapes are not part of these tests.
                "--metrics-addr",
                "127.0.0.1:0",
                "--leader-election=false",
                "--namespace",
                ns,
                // Only this test's namespace: operators of earlier runs or an installed one
                // must not see two controllers writing the same objects.
                "--watch-namespace",
                ns,
                "--webhook-configuration",
                ns,
                "--log-format",
                "text",
            ])
            .env("RUST_LOG", "info,gost_operator=debug")
            .envs(
                std::env::var("GOST_E2E_IMAGE")
                    .ok()
                    .filter(|i| !i.is_empty())
                    .map(|image| ("GOST_SIDECAR_IMAGE", image)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("gost-operator starts");
        let mut operator = LocalOperator {
            child,
            log,
            _log_dir: log_dir,
            webhook_configuration: ns.to_string(),
        };
        let deadline = Instant::now() + OPERATOR_STARTUP;
        loop {
            let text = std::fs::read_to_string(&operator.log).unwrap_or_default();
            if text.contains(WEBHOOK_LISTENING) {
                return operator;
            }
            if let Ok(Some(status)) = operator.child.try_wait() {
                panic!("gost-operator exited ({status}) before its webhook listened; log:\n{text}");
            }
            if Instant::now() >= deadline {
                panic!(
                    "gost-operator did not log {WEBHOOK_LISTENING:?} within {OPERATOR_STARTUP:?}; log:\n{}",
                    operator.log_tail()
                );
            }
            thread::sleep(POLL);
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(OPERATOR_LOG_TAIL)..].join("\n")
    }
}

impl Drop for LocalOperator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its webhook points at a port nobody serves now; the API server would try it (and
        // time out) for every pod until it is gone.
        if let Err(e) = kubectl_result(
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &self.webhook_configuration,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        ) {
            eprintln!("cleanup: {e}");
        }
        if thread::panicking() {
            eprintln!("gost-operator log (last lines):\n{}", self.log_tail());
        }
    }
}

/// With an operator installed in the cluster: fails clearly when it is not running.
fn check_installed_operator() {
    let ns = std::env::var("GOST_E2E_OPERATOR_NAMESPACE")
        .unwrap_or_else(|_| DEFAULT_OPERATOR_NAMESPACE.to_string());
    let pods: Value = serde_json::from_str(&kubectl(&["get", "pods", "-n", &ns, "-o", "json"]))
        .expect("kubectl prints JSON");
    let ready = pods["items"].as_array().is_some_and(|items| {
        items
            .iter()
            .any(|pod| condition(pod, "Ready").is_some_and(|c| c["status"] == "True"))
    });
    assert!(
        ready,
        "no ready operator pod in namespace {ns:?}: install the operator there, set \
         GOST_E2E_OPERATOR_NAMESPACE to where it runs, or set GOST_E2E_WEBHOOK_HOST to run the \
         local build instead"
    );
}

/// A namespace of one test, opted in to injection; deleted (after the local operator, if any,
/// is stopped) when the test ends, passed or failed.
struct TestNamespace {
    name: String,
    operator: Option<LocalOperator>,
    _laptop: Option<MutexGuard<'static, ()>>,
}

impl TestNamespace {
    fn create() -> TestNamespace {
        ensure_crds();
        let name = format!("gost-e2e-{:08x}", fastrand::u32(..));
        let host = std::env::var("GOST_E2E_WEBHOOK_HOST")
            .ok()
            .filter(|h| !h.is_empty());
        let laptop = host
            .is_some()
            .then(|| LAPTOP.lock().unwrap_or_else(|e| e.into_inner()));
        let (key, value) = INJECT_LABEL.split_once('=').expect("key=value");
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {key: value}},
        });
        kubectl_result(&["create", "-f", "-"], Some(&manifest.to_string()))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut namespace = TestNamespace {
            name,
            operator: None,
            _laptop: laptop,
        };
        match host {
            Some(host) => namespace.operator = Some(LocalOperator::start(&namespace.name, &host)),
            None => check_installed_operator(),
        }
        namespace
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if thread::panicking() {
            let state = kubectl_result(
                &[
                    "get",
                    "gostservices,gostchains,deployments,replicasets,pods,secrets,services",
                    "-n",
                    &self.name,
                    "-o",
                    "wide",
                ],
                None,
            );
            eprintln!(
                "namespace {} at the failure:\n{}",
                self.name,
                state.unwrap_or_else(|e| e)
            );
        }
        // Stopped first, so that it does not react to the namespace going away.
        self.operator = None;
        if let Err(e) = kubectl_result(
            &[
                "delete",
                "namespace",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        ) {
            eprintln!("cleanup: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The demo: a GostService whose sidecars dial through a chain, with credentials from a Secret

struct Demo {
    /// The ReplicaSet that made the demo pod, which owns its config Secret.
    replica_set: String,
    replica_set_uid: String,
    /// The config group Secret the webhook named in the pod's annotation.
    secret: String,
}

/// Applies the demo's Secret, GostChain, GostService and Deployment, waits for the pod and
/// checks what the webhook did to it.
fn start_demo(ns: &str) -> Demo {
    apply(
        ns,
        json!([
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "demo-users"},
                "type": "kubernetes.io/basic-auth",
                "stringData": {"username": DEMO_USER, "password": FIRST_PASSWORD},
            },
            {
                "apiVersion": "gost.rs/v1alpha1",
                "kind": "GostChain",
                "metadata": {"name": "demo-chain"},
                "spec": {"hops": [{"name": "hop-0", "nodes": [
                    {"name": "gateway", "addr": format!("gost-gw-tunnel.{ns}.svc:8443")},
                ]}]},
            },
            {
                "apiVersion": "gost.rs/v1alpha1",
                "kind": "GostService",
                "metadata": {"name": "demo"},
                "spec": {
                    "selector": {"matchLabels": {"app": "demo"}},
                    "services": [{
                        "name": "proxy",
                        "addr": ":8080",
                        "handler": {
                            "type": "http",
                            "chain": "demo-chain",
                            "auth": {"secretRef": {"name": "demo-users"}},
                        },
                    }],
                },
            },
        ]),
    );
    // The pod is admitted only once the operator has seen the GostService (its status says
    // so): the webhook then renders the pod's config at admission, and an installed
    // operator's namespace cache has had as long to see this new namespace's opt-in label.
    wait_for("the operator to observe GostService demo", || {
        let gs = get(ns, "gostservice", "demo")?.ok_or("GostService demo not found")?;
        let observed = &gs["status"]["observedGeneration"];
        if !observed.is_null() && *observed == gs["metadata"]["generation"] {
            Ok(())
        } else {
            Err(format!("status: {}", gs["status"]))
        }
    });
    apply(
        ns,
        json!([
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "demo"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "demo"}},
                    "template": {
                        "metadata": {"labels": {"app": "demo"}},
                        "spec": {"containers": [{"name": "app", "image": DEMO_IMAGE}]},
                    },
                },
            },
        ]),
    );

    let pod = wait_for("the demo Deployment's pod to be created", || {
        let pods: Value = serde_json::from_str(&kubectl(&[
            "get", "pods", "-n", ns, "-l", "app=demo", "-o", "json",
        ]))
        .map_err(|e| e.to_string())?;
        pods["items"]
            .as_array()
            .and_then(|items| items.first().cloned())
            .ok_or_else(|| "no pod yet".to_string())
    });
    let meta = &pod["metadata"];
    let pod_name = meta["name"].as_str().unwrap_or_default().to_string();

    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == SIDECAR))
        .unwrap_or_else(|| {
            panic!(
                "pod {pod_name} has no init container {SIDECAR:?}: the webhook did not inject it \
                 (in laptop mode: can the API server reach GOST_E2E_WEBHOOK_HOST?); \
                 initContainers: {}",
                pod["spec"]["initContainers"]
            )
        });
    assert_eq!(
        sidecar["restartPolicy"], "Always",
        "the sidecar is a native sidecar (an init container that keeps running)"
    );
    assert_eq!(
        meta["labels"][INJECTED], "true",
        "pod {pod_name} lacks the label the controller's pod watch selects on; labels: {}",
        meta["labels"]
    );
    let secret = meta["annotations"][INJECTED]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "pod {pod_name} has no {INJECTED} annotation naming its config Secret; \
                 annotations: {}",
                meta["annotations"]
            )
        })
        .to_string();

    let owner = meta["ownerReferences"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["controller"] == true))
        .unwrap_or_else(|| panic!("pod {pod_name} has no controller owner"));
    assert_eq!(
        owner["kind"], "ReplicaSet",
        "a Deployment's pod belongs to a ReplicaSet"
    );
    let replica_set = owner["name"].as_str().expect("owner name").to_string();
    let replica_set_uid = owner["uid"].as_str().expect("owner uid").to_string();
    assert!(
        secret.starts_with(&format!("{SIDECAR_SECRET_PREFIX}replicaset-{replica_set}-")),
        "the config group Secret {secret} is named after the pod's owner (and labels)"
    );
    Demo {
        replica_set,
        replica_set_uid,
        secret,
    }
}

/// The config rendered into Secret `name`, loaded as the proxy loads it.
fn rendered_config(ns: &str, name: &str) -> Result<gost_api::Config, String> {
    let secret = get(ns, "secret", name)?.ok_or_else(|| format!("Secret {name} not found"))?;
    let encoded = secret["data"][CONFIG_KEY]
        .as_str()
        .ok_or_else(|| format!("Secret {name} has no {CONFIG_KEY:?} key"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("{CONFIG_KEY} of Secret {name} is not base64: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| format!("{CONFIG_KEY} is not UTF-8: {e}"))?;
    gost_api::from_str(&text, gost_api::Format::Yaml)
        .map_err(|e| format!("{CONFIG_KEY} of Secret {name} does not load: {e}\n{text}"))
}

/// Waits until the config in Secret `secret` has service `service` and `check` accepts it.
fn wait_for_service(
    ns: &str,
    secret: &str,
    service: &str,
    what: &str,
    check: impl Fn(&gost_api::ServiceConfig) -> Result<(), String>,
) -> gost_api::Config {
    wait_for(&format!("Secret {secret}: {what}"), || {
        let config = rendered_config(ns, secret)?;
        let svc = config
            .services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| {
                let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
                format!("no service {service:?}; services: {names:?}")
            })?;
        check(svc)?;
        Ok(config)
    })
}

fn password_is(expected: &'static str) -> impl Fn(&gost_api::ServiceConfig) -> Result<(), String> {
    move |svc| match &svc.handler.auth {
        Some(auth) if auth.username == DEMO_USER && auth.password == expected => Ok(()),
        other => Err(format!("handler.auth is {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn crds_apply_and_are_established() {
    if cluster("crds_apply_and_are_established").is_none() {
        return;
    }
    apply_crds();
    // Discovery and the published schema follow Established by a moment.
    wait_for(
        "kubectl explain to describe gostservices.spec.services",
        || {
            let text = kubectl_result(&["explain", "gostservices.spec.services"], None)?;
            if text.contains("handler") {
                Ok(())
            } else {
                Err(format!("no `handler` field in:\n{text}"))
            }
        },
    );
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn sidecar_is_injected_and_config_rendered() {
    if cluster("sidecar_is_injected_and_config_rendered").is_none() {
        return;
    }
    let ns = TestNamespace::create();
    let demo = start_demo(&ns.name);

    let secret = wait_exists(&ns.name, "secret", &demo.secret);
    let owned = secret["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|o| {
            o.iter()
                .any(|o| o["kind"] == "ReplicaSet" && o["uid"] == demo.replica_set_uid.as_str())
        });
    assert!(
        owned,
        "Secret {} is not owned by ReplicaSet {} (so garbage collection would not remove it); \
         ownerReferences: {}",
        demo.secret, demo.replica_set, secret["metadata"]["ownerReferences"]
    );

    let config = wait_for_service(
        &ns.name,
        &demo.secret,
        "demo/proxy",
        "service demo/proxy with the credentials and the chain",
        |svc| {
            if svc.addr != ":8080" {
                return Err(format!("addr is {:?}", svc.addr));
            }
            if svc.handler.chain.is_none() {
                return Err("the handler dials directly, not through demo-chain".to_string());
            }
            password_is(FIRST_PASSWORD)(svc)
        },
    );
    assert_eq!(
        config.chains.len(),
        1,
        "the chain the handler names is rendered: {:?}",
        config.chains
    );

    wait_for(
        "GostService demo: Rendered=True, matchedWorkloads=1",
        || {
            let gs = get(&ns.name, "gostservice", "demo")?.ok_or("GostService demo not found")?;
            let rendered = condition(&gs, "Rendered").cloned().unwrap_or(Value::Null);
            if rendered["status"] == "True" && gs["status"]["matchedWorkloads"] == 1 {
                Ok(())
            } else {
                Err(format!("status: {}", gs["status"]))
            }
        },
    );
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn secret_follows_the_gost_service() {
    if cluster("secret_follows_the_gost_service").is_none() {
        return;
    }
    let ns = TestNamespace::create();
    let demo = start_demo(&ns.name);
    wait_for_service(
        &ns.name,
        &demo.secret,
        "demo/proxy",
        "the first render",
        password_is(FIRST_PASSWORD),
    );

    kubectl(&[
        "patch",
        "gostservice",
        "demo",
        "-n",
        &ns.name,
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/services/0/addr", "value": ":8081"}]"#,
    ]);
    wait_for_service(
        &ns.name,
        &demo.secret,
        "demo/proxy",
        "the new port :8081",
        |svc| {
            if svc.addr == ":8081" {
                Ok(())
            } else {
                Err(format!("addr is {:?}", svc.addr))
            }
        },
    );

    let patch = json!({"stringData": {"password": SECOND_PASSWORD}}).to_string();
    kubectl(&[
        "patch",
        "secret",
        "demo-users",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        &patch,
    ]);
    wait_for_service(
        &ns.name,
        &demo.secret,
        "demo/proxy",
        "the new password",
        password_is(SECOND_PASSWORD),
    );
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn garbage_collection_removes_the_rendered_secret() {
    if cluster("garbage_collection_removes_the_rendered_secret").is_none() {
        return;
    }
    let ns = TestNamespace::create();
    let demo = start_demo(&ns.name);
    wait_exists(&ns.name, "secret", &demo.secret);

    kubectl(&[
        "delete",
        "deployment",
        "demo",
        "-n",
        &ns.name,
        "--cascade=foreground",
        "--wait=false",
    ]);
    wait_gone(&ns.name, "replicaset", &demo.replica_set);
    wait_gone(&ns.name, "secret", &demo.secret);
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn gateway_runs_deployment_and_service() {
    if cluster("gateway_runs_deployment_and_service").is_none() {
        return;
    }
    let ns = TestNamespace::create();
    apply(
        &ns.name,
        json!([{
            "apiVersion": "gost.rs/v1alpha1",
            "kind": "GostService",
            "metadata": {"name": "tunnel"},
            "spec": {
                "gateway": {"replicas": 1},
                "services": [{"name": "entry", "addr": ":8443", "handler": {"type": "http"}}],
            },
        }]),
    );
    let gs = wait_exists(&ns.name, "gostservice", "tunnel");
    let gs_uid = gs["metadata"]["uid"].as_str().expect("a uid").to_string();
    let name = format!("{GATEWAY_PREFIX}tunnel");

    for kind in ["deployment", "service", "secret"] {
        let obj = wait_exists(&ns.name, kind, &name);
        let owner = obj["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["controller"] == true));
        assert!(
            owner.is_some_and(|o| o["kind"] == "GostService" && o["uid"] == gs_uid.as_str()),
            "gateway {kind} {name} is not controlled by GostService tunnel; ownerReferences: {}",
            obj["metadata"]["ownerReferences"]
        );
        if kind == "deployment" {
            assert_eq!(obj["spec"]["replicas"], 1, "gateway.replicas is 1");
        }
        if kind == "service" {
            let ports = obj["spec"]["ports"].as_array().cloned().unwrap_or_default();
            assert!(
                ports.iter().any(|p| p["port"] == 8443),
                "gateway Service {name} exposes the listen port 8443; ports: {ports:?}"
            );
        }
    }
    rendered_config(&ns.name, &name).unwrap_or_else(|e| panic!("gateway config: {e}"));

    kubectl(&[
        "delete",
        "gostservice",
        "tunnel",
        "-n",
        &ns.name,
        &format!("--timeout={}s", WAIT.as_secs()),
    ]);
    for kind in ["deployment", "service", "secret"] {
        wait_gone(&ns.name, kind, &name);
    }
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn a_missing_chain_is_reported_in_status() {
    if cluster("a_missing_chain_is_reported_in_status").is_none() {
        return;
    }
    let ns = TestNamespace::create();
    apply(
        &ns.name,
        json!([{
            "apiVersion": "gost.rs/v1alpha1",
            "kind": "GostService",
            "metadata": {"name": "lost"},
            "spec": {
                "selector": {"matchLabels": {"app": "lost"}},
                "services": [{
                    "name": "proxy",
                    "addr": ":8080",
                    "handler": {"type": "http", "chain": "no-such-chain"},
                }],
            },
        }]),
    );
    wait_for(
        "GostService lost: Rendered=False, reason ChainNotFound, naming the chain",
        || {
            let gs = get(&ns.name, "gostservice", "lost")?.ok_or("GostService lost not found")?;
            let rendered = condition(&gs, "Rendered").cloned().unwrap_or(Value::Null);
            let message = rendered["message"].as_str().unwrap_or_default();
            if rendered["status"] == "False"
                && rendered["reason"] == "ChainNotFound"
                && message.contains("no-such-chain")
            {
                Ok(())
            } else {
                Err(format!("Rendered condition: {rendered}"))
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// The examples of deploy/examples, applied as users apply them

/// An address every cluster serves to its pods, so the request through a tunnel needs no
/// internet: any HTTP answer (even 401 or 403) proves the tunnel carried it.
const IN_CLUSTER_TARGET: &str = "https://kubernetes.default.svc/version";
/// The container of an example's client Deployment that has curl (deploy/examples/*.yaml).
const CLIENT_CONTAINER: &str = "curl";
/// curl's own bound for the request through the tunnel, inside kubectl's request timeout.
const TUNNEL_REQUEST_SECONDS: &str = "20";

/// True when the cluster has a Ready node, so pods actually run; on an API server alone the
/// example tests stop after the object-level checks.
fn pods_can_run() -> bool {
    let nodes: Value = serde_json::from_str(&kubectl(&["get", "nodes", "-o", "json"]))
        .expect("kubectl prints JSON");
    nodes["items"].as_array().is_some_and(|items| {
        items
            .iter()
            .any(|node| condition(node, "Ready").is_some_and(|c| c["status"] == "True"))
    })
}

/// Waits until Deployment `name` is Available.
fn wait_available(ns: &str, name: &str) {
    wait_for(&format!("Deployment {ns}/{name} to be Available"), || {
        let obj = get(ns, "deployment", name)?.ok_or("not found")?;
        match condition(&obj, "Available") {
            Some(c) if c["status"] == "True" => Ok(()),
            _ => Err(format!("status: {}", obj["status"])),
        }
    });
}

/// Applies `deploy/examples/<file>` in a fresh namespace and checks it: the gateway's
/// Deployment and Service with the rendered ports, the client pods' sidecar and its config
/// Secret with the rendered services; then, where pods run, a request from each client pod
/// through each of its local proxies.
fn run_example(test: &str, file: &str) {
    if cluster(test).is_none() {
        return;
    }
    let path = examples::examples_dir().join(file);
    let example = examples::load(&path);
    let ns = TestNamespace::create();
    kubectl(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        path.to_str().expect("UTF-8 path"),
    ]);

    // What the operator will make of it, rendered here by the same functions.
    let offline = gost_operator::render::Namespace {
        services: &example.services,
        chains: &example.chains,
        secrets: &example.secrets,
    };
    let settings = gost_operator::render::Settings::default();

    let mut gateways = Vec::new();
    for gs in example.gateways() {
        let gs_name = gs.metadata.name.clone().unwrap_or_default();
        let rendered = gost_operator::render::render_gateway(&offline, gs, &settings, None);
        let expected: Vec<(String, u16, &str)> =
            gost_operator::gateway::listen_ports(&gs_name, &rendered)
                .into_iter()
                .map(|p| (p.name, p.port, p.protocol))
                .collect();
        let name = gost_operator::gateway::gateway_name(&gs_name);
        wait_exists(&ns.name, "deployment", &name);
        let service = wait_exists(&ns.name, "service", &name);
        let mut ports: Vec<(String, u16, &str)> = Vec::new();
        for port in service["spec"]["ports"].as_array().into_iter().flatten() {
            let protocol = if port["protocol"] == "UDP" {
                "UDP"
            } else {
                "TCP"
            };
            ports.push((
                port["name"].as_str().unwrap_or_default().to_string(),
                port["targetPort"].as_u64().unwrap_or_default() as u16,
                protocol,
            ));
        }
        ports.sort();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort();
        assert_eq!(
            ports, expected_sorted,
            "{file}: Service {name} exposes every gateway service (name, port, protocol)"
        );
        let config = wait_for(&format!("gateway {name}'s config"), || {
            rendered_config(&ns.name, &name)
        });
        let mut names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        let mut want: Vec<String> = rendered
            .config
            .services
            .iter()
            .map(|s| s.name.clone())
            .collect();
        want.sort();
        assert_eq!(names, want, "{file}: gateway {name} runs every service");
        gateways.push(name);
    }

    let mut clients = Vec::new();
    for (deployment, labels) in example.client_pods() {
        let rendered = gost_operator::render::render_for_pod(&offline, &labels, &settings, None);
        let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let selector = selector.join(",");
        let pod = wait_for(&format!("a pod of Deployment {deployment}"), || {
            let pods: Value = serde_json::from_str(&kubectl_result(
                &["get", "pods", "-n", &ns.name, "-l", &selector, "-o", "json"],
                None,
            )?)
            .map_err(|e| e.to_string())?;
            pods["items"]
                .as_array()
                .and_then(|items| items.first().cloned())
                .ok_or_else(|| "no pod yet".to_string())
        });
        let has_sidecar = pod["spec"]["initContainers"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["name"] == SIDECAR && c["restartPolicy"] == "Always")
        });
        assert!(
            has_sidecar,
            "{file}: the {deployment} pod has no {SIDECAR:?} native sidecar (is the namespace \
             labelled {INJECT_LABEL}, is the webhook reachable?); initContainers: {}",
            pod["spec"]["initContainers"]
        );
        let secret = pod["metadata"]["annotations"][INJECTED]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: the {deployment} pod names no config Secret"))
            .to_string();
        let want: Vec<String> = rendered
            .config
            .services
            .iter()
            .map(|s| s.name.clone())
            .collect();
        wait_for(
            &format!("Secret {secret} to hold {want:?} with their chains"),
            || {
                let config = rendered_config(&ns.name, &secret)?;
                for name in &want {
                    let svc = config
                        .services
                        .iter()
                        .find(|s| &s.name == name)
                        .ok_or_else(|| format!("no service {name}"))?;
                    let chain = svc.handler.chain.as_deref().ok_or("no chain")?;
                    if !config.chains.iter().any(|c| c.name == chain) {
                        return Err(format!("chain {chain} not rendered"));
                    }
                }
                Ok(())
            },
        );
        let ports: Vec<String> = rendered
            .config
            .services
            .iter()
            .filter_map(|s| gost_api::split_host_port(&s.addr).map(|(_, p)| p.to_string()))
            .collect();
        clients.push((deployment, ports));
    }
    assert!(
        !gateways.is_empty() && !clients.is_empty(),
        "{file}: a gateway and a client"
    );

    if !pods_can_run() {
        eprintln!(
            "{test}: the request through the tunnel was skipped because no pod runs (the \
             cluster has no Ready node); the object-level checks passed"
        );
        return;
    }
    for name in &gateways {
        wait_available(&ns.name, name);
    }
    for (deployment, ports) in &clients {
        wait_available(&ns.name, deployment);
        for port in ports {
            let proxy = format!("http://127.0.0.1:{port}");
            let target = format!("deploy/{deployment}");
            // The sidecar may still be reloading its first config: retried within the wait.
            let code = wait_for(&format!("{deployment}: a request through {proxy}"), || {
                let code = kubectl_result(
                    &[
                        "exec",
                        "-n",
                        &ns.name,
                        &target,
                        "-c",
                        CLIENT_CONTAINER,
                        "--",
                        "curl",
                        "-sSk",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--max-time",
                        TUNNEL_REQUEST_SECONDS,
                        "-x",
                        &proxy,
                        IN_CLUSTER_TARGET,
                    ],
                    None,
                )?;
                if code.len() == 3 && code != "000" {
                    Ok(code)
                } else {
                    Err(format!("curl answered {code:?}"))
                }
            });
            eprintln!("{test}: {deployment} via {proxy}: HTTP {code} from {IN_CLUSTER_TARGET}");
        }
    }
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn example_tunnel() {
    run_example("example_tunnel", "tunnel.yaml");
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn example_pht() {
    run_example("example_pht", "pht.yaml");
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn example_socks5_ws() {
    run_example("example_socks5_ws", "socks5-ws.yaml");
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn example_http2() {
    run_example("example_http2", "http2.yaml");
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn example_h2() {
    run_example("example_h2", "h2.yaml");
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn example_grpc() {
    run_example("example_grpc", "grpc.yaml");
}

#[test]
#[ignore = "needs a cluster: KUBECONFIG"]
fn example_h3() {
    run_example("example_h3", "h3.yaml");
}
