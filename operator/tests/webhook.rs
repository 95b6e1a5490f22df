//! The injection webhook over real HTTPS (curl with the operator's CA), and the certificate
//! lifecycle against the in-memory API server.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use gost_operator::certs::{self, CertSettings, Renewal, ServingCert};
use gost_operator::inject::SidecarSettings;
use gost_operator::render::ListenPort;
use gost_operator::webhook::{self, CertResolver, PodConfig, SidecarConfig, Webhook};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ServiceReference, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

mod support {
    pub mod admission;
}
use support::admission::review;

/// The webhook Service's DNS name for `CertSettings::new("gost-operator", "gost-system")`.
const SERVICE_HOST: &str = "gost-operator.gost-system.svc";

/// Bounds every curl call: a hung server fails the test instead of hanging it.
const CURL_MAX_SECONDS: &str = "10";

#[derive(Default)]
struct RecordingConfig {
    calls: Mutex<Vec<(String, bool)>>,
    fail: Option<String>,
}

impl PodConfig for RecordingConfig {
    async fn ensure_config(
        &self,
        namespace: &str,
        pod: &Pod,
        dry_run: bool,
    ) -> Result<SidecarConfig, String> {
        self.calls
            .lock()
            .unwrap()
            .push((namespace.to_string(), dry_run));
        match &self.fail {
            Some(reason) => Err(reason.clone()),
            None => Ok(SidecarConfig {
                secret: format!(
                    "{}-gost",
                    pod.metadata.generate_name.as_deref().unwrap_or("pod")
                ),
                listen_ports: vec![ListenPort {
                    name: "web/proxy".into(),
                    port: 8000,
                    protocol: "TCP",
                }],
            }),
        }
    }
}

struct Server {
    port: u16,
    dir: PathBuf,
    pod_config: Arc<RecordingConfig>,
    resolver: Arc<CertResolver>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A temporary directory of this test process, unique per call.
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gost-webhook-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn laptop_settings() -> CertSettings {
    let mut settings = CertSettings::new("gost-operator", "gost-system");
    settings.webhook_url = Some("https://127.0.0.1:8443/mutate".into());
    settings
}

/// Namespace labels as the binary's reflector would report them.
fn namespaces() -> HashMap<String, BTreeMap<String, String>> {
    HashMap::from([
        (
            "shop".to_string(),
            BTreeMap::from([("gost.rs/inject".to_string(), "enabled".to_string())]),
        ),
        ("plain".to_string(), BTreeMap::new()),
        (
            "typo".to_string(),
            BTreeMap::from([("gost.rs/inject".to_string(), "true".to_string())]),
        ),
    ])
}

async fn start(fail: Option<&str>) -> Server {
    let cert = certs::issue(&laptop_settings(), OffsetDateTime::now_utc()).unwrap();
    let resolver = Arc::new(CertResolver::new(&cert.cert_pem, &cert.key_pem).unwrap());
    start_with(resolver, &cert.ca_pem, fail).await
}

async fn start_with(resolver: Arc<CertResolver>, ca_pem: &str, fail: Option<&str>) -> Server {
    let dir = scratch_dir();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    let tls = webhook::tls_config(resolver.clone()).unwrap();
    let pod_config = Arc::new(RecordingConfig {
        fail: fail.map(str::to_string),
        ..Default::default()
    });
    let hook = Arc::new(Webhook::new(
        pod_config.clone(),
        namespaces(),
        SidecarSettings::default(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(webhook::serve(listener, tls, hook, async move {
        let _ = stopped.await;
    }));
    Server {
        port,
        dir,
        pod_config,
        resolver,
        stop: Some(stop),
    }
}

struct Reply {
    status: u16,
    body: String,
}

/// curl, verifying the server against `ca` (a PEM file).
async fn curl(url: String, ca: PathBuf, body: Option<PathBuf>, extra: &[&str]) -> Reply {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--max-time", CURL_MAX_SECONDS, "--cacert"])
            .arg(&ca)
            .args(["-w", "\n%{http_code}"]);
        if let Some(body) = body {
            command
                .args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", body.display()));
        }
        command.args(&extra).arg(&url);
        let output = command.output().expect("curl runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        Reply {
            status: status.trim().parse().unwrap_or(0),
            body: format!("{body}{}", String::from_utf8_lossy(&output.stderr)),
        }
    })
    .await
    .unwrap()
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    async fn post_bytes(&self, body: &[u8], extra: &[&str]) -> Reply {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let file = self.dir.join(format!(
            "body-{}.json",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, body).unwrap();
        curl(
            self.url("/mutate"),
            self.dir.join("ca.pem"),
            Some(file),
            extra,
        )
        .await
    }

    /// Posts a review and returns its `response`, requiring HTTP 200.
    async fn admit(&self, review: &Value) -> Value {
        let reply = self
            .post_bytes(&serde_json::to_vec(review).unwrap(), &[])
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let answer: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        answer["response"].clone()
    }

    /// What the API server does: GET /healthz by the webhook Service's DNS name (resolved to
    /// this server), verifying the certificate against the PEM file `ca`.
    async fn healthz_as_service(&self, ca: PathBuf) -> Reply {
        let resolve = format!("{SERVICE_HOST}:{}:127.0.0.1", self.port);
        curl(
            format!("https://{SERVICE_HOST}:{}/healthz", self.port),
            ca,
            None,
            &["--resolve", &resolve],
        )
        .await
    }

    fn calls(&self) -> Vec<(String, bool)> {
        self.pod_config.calls.lock().unwrap().clone()
    }
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-7d9f-", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}]}
    })
}

/// Decodes the base64 JSON Patch of a response and applies it to `pod`.
fn apply(response: &Value, pod: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let encoded = response["patch"]
        .as_str()
        .expect("the patch is base64 text");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    patched
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|item| item["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn injects_a_pod_in_an_enabled_namespace_and_not_twice() {
    let server = start(None).await;
    let original = pod();
    let response = server.admit(&review("u1", "shop", &original, false)).await;
    let patched = apply(&response, &original);

    let sidecar = &patched["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "gost");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["args"][0], "-C");
    assert_eq!(sidecar["args"][1], "/etc/gost/config.yaml");
    assert_eq!(sidecar["ports"][0]["name"], "gost-admin");
    assert_eq!(sidecar["ports"][0]["containerPort"], 15300);
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["port"], "gost-admin");
    let security = &sidecar["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    let config_mount = &sidecar["volumeMounts"][0];
    assert_eq!(config_mount["mountPath"], "/etc/gost");
    assert_eq!(config_mount["readOnly"], true);
    assert!(config_mount.get("subPath").is_none(), "{config_mount}");
    let home = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "HOME")
        .unwrap();
    assert_eq!(home["value"], sidecar["volumeMounts"][1]["mountPath"]);

    let volumes = &patched["spec"]["volumes"];
    assert_eq!(names(volumes), ["gost-config", "gost-home"]);
    assert_eq!(volumes[0]["secret"]["secretName"], "web-7d9f--gost");
    assert!(volumes[1]["emptyDir"].is_object());
    assert_eq!(
        patched["metadata"]["annotations"]["gost.rs/injected"],
        "web-7d9f--gost"
    );
    assert_eq!(patched["metadata"]["labels"]["gost.rs/injected"], "true");
    // The app container is untouched, and the result is still a Pod.
    assert_eq!(
        patched["spec"]["containers"],
        original["spec"]["containers"]
    );
    serde_json::from_value::<Pod>(patched.clone()).unwrap();
    assert_eq!(server.calls(), [("shop".to_string(), false)]);

    // Re-invocation (reinvocationPolicy: IfNeeded) sees the patched pod: nothing more.
    let again = server.admit(&review("u2", "shop", &patched, false)).await;
    assert!(again.get("patch").is_none(), "{again}");
    assert_eq!(server.calls().len(), 1, "no config rendered for a done pod");
}

#[tokio::test]
async fn keeps_existing_init_containers_volumes_and_annotations() {
    let server = start(None).await;
    let mut original = pod();
    original["metadata"]["annotations"] = json!({"team": "shop"});
    original["spec"]["initContainers"] = json!([{"name": "migrate", "image": "migrate:1"}]);
    original["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let response = server.admit(&review("u1", "shop", &original, false)).await;
    let patched = apply(&response, &original);
    assert_eq!(
        names(&patched["spec"]["initContainers"]),
        ["gost", "migrate"]
    );
    assert_eq!(
        patched["spec"]["initContainers"][1],
        original["spec"]["initContainers"][0]
    );
    assert_eq!(
        names(&patched["spec"]["volumes"]),
        ["data", "gost-config", "gost-home"]
    );
    assert_eq!(patched["metadata"]["annotations"]["team"], "shop");
    assert_eq!(
        patched["metadata"]["annotations"]["gost.rs/injected"],
        "web-7d9f--gost"
    );
    assert_eq!(patched["metadata"]["labels"]["gost.rs/injected"], "true");
}

/// A pod may already use the sidecar's volume names (the API server refuses a pod with two
/// volumes of one name, whatever the webhook's failurePolicy): the sidecar's volumes then get
/// free names, its mounts follow, and a warning says so.
#[tokio::test]
async fn volumes_named_like_the_sidecars_get_other_names() {
    let server = start(None).await;
    let mut original = pod();
    original["spec"]["volumes"] = json!([
        {"name": "gost-config", "configMap": {"name": "my-gost-client-settings"}},
        {"name": "gost-home", "emptyDir": {}},
        {"name": "gost-config-2", "emptyDir": {}},
    ]);
    let response = server.admit(&review("u1", "shop", &original, false)).await;
    let patched = apply(&response, &original);
    let volumes = names(&patched["spec"]["volumes"]);
    let mut unique = volumes.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        volumes.len(),
        "duplicate volume names: {volumes:?}"
    );
    assert_eq!(
        patched["spec"]["volumes"].as_array().unwrap()[..3],
        original["spec"]["volumes"].as_array().unwrap()[..],
        "the pod's own volumes are untouched"
    );
    let by_name = |name: &str| {
        patched["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    let mounts = &patched["spec"]["initContainers"][0]["volumeMounts"];
    let config = by_name(mounts[0]["name"].as_str().unwrap());
    assert_eq!(config["secret"]["secretName"], "web-7d9f--gost");
    assert_eq!(mounts[0]["mountPath"], "/etc/gost");
    let home = by_name(mounts[1]["name"].as_str().unwrap());
    assert!(home["emptyDir"].is_object(), "{home}");
    assert_ne!(mounts[1]["name"], "gost-home");
    serde_json::from_value::<Pod>(patched.clone()).unwrap();
    let warnings: Vec<&str> = response["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings: {response}"))
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    let warnings = warnings.join("\n");
    assert!(
        warnings.contains("\"gost-config\"") && warnings.contains("\"gost-home\""),
        "{response}"
    );
}

/// Containers of a pod share its network: an app port that the sidecar also binds means one
/// of them fails to start. The pod is still injected, with a warning naming the clash.
#[tokio::test]
async fn app_ports_the_sidecar_binds_are_warned_about() {
    let server = start(None).await;
    let mut original = pod();
    original["spec"]["containers"][0]["ports"] = json!([
        {"containerPort": 15300}, {"containerPort": 8080}, {"containerPort": 8000, "protocol": "UDP"}
    ]);
    original["spec"]["initContainers"] =
        json!([{"name": "warm-up", "image": "w", "ports": [{"containerPort": 8000}]}]);
    let response = server.admit(&review("u1", "shop", &original, false)).await;
    apply(&response, &original);
    let warnings: Vec<&str> = response["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings: {response}"))
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("container \"warm-up\" port 8000/TCP")
            && warnings[0].contains("gost service \"web/proxy\""),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("container \"web\" port 15300/TCP")
            && warnings[1].contains("admin port"),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn pod_annotation_opts_in_and_out() {
    let server = start(None).await;
    let mut opted_in = pod();
    opted_in["metadata"]["annotations"] = json!({"gost.rs/inject": "enabled"});
    let response = server.admit(&review("in", "plain", &opted_in, false)).await;
    let patched = apply(&response, &opted_in);
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "gost");

    let mut opted_out = pod();
    opted_out["metadata"]["annotations"] = json!({"gost.rs/inject": "disabled"});
    let response = server
        .admit(&review("out", "shop", &opted_out, false))
        .await;
    assert!(response.get("patch").is_none(), "{response}");

    let response = server.admit(&review("plain", "plain", &pod(), false)).await;
    assert!(response.get("patch").is_none(), "{response}");
    let response = server
        .admit(&review("unknown", "nowhere", &pod(), false))
        .await;
    assert!(response.get("patch").is_none(), "{response}");

    assert_eq!(server.calls(), [("plain".to_string(), false)]);
}

/// The warnings of an admission response.
fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| w.iter().map(|w| w.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_opt_in_value_other_than_enabled_or_disabled_is_warned_about() {
    let server = start(None).await;

    // `true` (as other injectors spell it) opts in nowhere: the pod is left alone, and says why.
    let mut annotated = pod();
    annotated["metadata"]["annotations"] = json!({"gost.rs/inject": "true"});
    let response = server.admit(&review("a", "plain", &annotated, false)).await;
    assert!(response.get("patch").is_none(), "{response}");
    let said = warnings(&response);
    assert_eq!(said.len(), 1, "{response}");
    assert!(
        said[0].contains("pod annotation gost.rs/inject=\"true\"")
            && said[0].contains("\"enabled\""),
        "{said:?}"
    );

    let response = server.admit(&review("n", "typo", &pod(), false)).await;
    assert!(response.get("patch").is_none(), "{response}");
    let said = warnings(&response);
    assert_eq!(said.len(), 1, "{response}");
    assert!(
        said[0].contains("namespace label gost.rs/inject=\"true\""),
        "{said:?}"
    );

    // A pod that opts in is injected there, and the namespace's value is still pointed out.
    let mut opted_in = pod();
    opted_in["metadata"]["annotations"] = json!({"gost.rs/inject": "enabled"});
    let response = server.admit(&review("i", "typo", &opted_in, false)).await;
    let patched = apply(&response, &opted_in);
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "gost");
    assert_eq!(warnings(&response).len(), 1, "{response}");

    // The values that mean something are not warned about.
    for (uid, namespace, value) in [("e", "shop", "enabled"), ("d", "shop", "disabled")] {
        let mut annotated = pod();
        annotated["metadata"]["annotations"] = json!({"gost.rs/inject": value});
        let response = server
            .admit(&review(uid, namespace, &annotated, false))
            .await;
        assert!(warnings(&response).is_empty(), "{response}");
    }
}

/// A pod on the node's network shares the node's ports with every other such pod there: two of
/// them on one node would clash on the sidecar's ports, and the sidecar would listen on the
/// node's interfaces. Such a pod is never injected, even when it opts in itself, and is told
/// why; one that opts out or never opted in hears nothing.
#[tokio::test]
async fn host_network_pods_are_not_injected_and_told_why() {
    let server = start(None).await;
    let host_pod = |annotation: Option<&str>| {
        let mut pod = pod();
        pod["spec"]["hostNetwork"] = json!(true);
        if let Some(value) = annotation {
            pod["metadata"]["annotations"] = json!({"gost.rs/inject": value});
        }
        pod
    };

    for (uid, namespace, annotation) in [
        ("ns", "shop", None),
        ("pod", "plain", Some("enabled")),
        ("both", "shop", Some("enabled")),
    ] {
        let response = server
            .admit(&review(uid, namespace, &host_pod(annotation), false))
            .await;
        assert!(response.get("patch").is_none(), "{uid}: {response}");
        let said = warnings(&response);
        assert_eq!(said.len(), 1, "{uid}: {response}");
        assert!(
            said[0].starts_with("gost sidecar not injected")
                && said[0].contains("hostNetwork: true")
                && said[0].contains("node"),
            "{uid}: {said:?}"
        );
    }

    // Opted out, or never opted in: nothing to say.
    for (uid, namespace, annotation) in [("out", "shop", Some("disabled")), ("no", "plain", None)] {
        let response = server
            .admit(&review(uid, namespace, &host_pod(annotation), false))
            .await;
        assert!(response.get("patch").is_none(), "{uid}: {response}");
        assert!(warnings(&response).is_empty(), "{uid}: {response}");
    }

    // `hostNetwork: false` is the pod network: injected as usual.
    let mut own_network = pod();
    own_network["spec"]["hostNetwork"] = json!(false);
    let response = server
        .admit(&review("false", "shop", &own_network, false))
        .await;
    let patched = apply(&response, &own_network);
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "gost");

    // No config was rendered for a pod that is not injected.
    assert_eq!(server.calls(), [("shop".to_string(), false)]);
}

#[tokio::test]
async fn dry_run_is_passed_to_the_renderer() {
    let server = start(None).await;
    let response = server.admit(&review("dry", "shop", &pod(), true)).await;
    // The pod the dry run shows is the one a real create would produce.
    let patched = apply(&response, &pod());
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "gost");
    assert_eq!(server.calls(), [("shop".to_string(), true)]);
}

#[tokio::test]
async fn a_render_failure_admits_the_pod_uninjected_with_a_warning() {
    let server = start(Some("GostChain upstream not found")).await;
    let response = server.admit(&review("u1", "shop", &pod(), false)).await;
    assert!(response.get("patch").is_none(), "{response}");
    let warnings = response["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("GostChain upstream not found")),
        "{response}"
    );
}

#[tokio::test]
async fn malformed_reviews_get_400_naming_the_problem() {
    let server = start(None).await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "not JSON"),
        (
            serde_json::to_vec(&json!({"kind": "Pod", "apiVersion": "v1"})).unwrap(),
            "expected kind AdmissionReview",
        ),
        (
            serde_json::to_vec(&json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {}})).unwrap(),
            "admission.k8s.io/v1beta1",
        ),
        (
            serde_json::to_vec(&json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"})).unwrap(),
            "no `request`",
        ),
        (
            serde_json::to_vec(&json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"operation": "CREATE"}})).unwrap(),
            "not readable",
        ),
    ];
    for (body, expected) in cases {
        let reply = server.post_bytes(&body, &[]).await;
        assert_eq!(
            reply.status,
            400,
            "{}: {}",
            String::from_utf8_lossy(&body),
            reply.body
        );
        assert!(
            reply.body.contains(expected),
            "{expected:?} not in {:?}",
            reply.body
        );
    }

    // With a readable uid, the API server gets an allowing answer and the reason.
    let mut bad_object = review(
        "u-bad",
        "shop",
        &json!({"spec": {"containers": "nope"}}),
        false,
    );
    let response = server.admit(&bad_object).await;
    assert!(response.get("patch").is_none(), "{response}");
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("not readable as a review of a Pod")
    );

    // A review of something else than a Pod is allowed untouched.
    bad_object["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    bad_object["request"]["object"] = json!({"metadata": {"name": "web"}});
    let response = server.admit(&bad_object).await;
    assert!(response.get("patch").is_none(), "{response}");
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("Deployment")
    );
    assert!(server.calls().is_empty());
}

#[tokio::test]
async fn an_oversized_body_gets_413() {
    let server = start(None).await;
    let big = format!(
        "{{\"pad\":\"{}\"}}",
        "x".repeat(webhook::MAX_BODY_BYTES + 1)
    );
    // Declared by Content-Length: refused before reading.
    let reply = server.post_bytes(big.as_bytes(), &[]).await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    // Chunked, with no length up front: refused once the limit is crossed.
    let reply = server
        .post_bytes(big.as_bytes(), &["-H", "Transfer-Encoding: chunked"])
        .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
}

#[tokio::test]
async fn healthz_and_unknown_paths() {
    let server = start(None).await;
    let ca = server.dir.join("ca.pem");
    let reply = curl(server.url("/healthz"), ca.clone(), None, &[]).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));
    let reply = curl(server.url("/nope"), ca.clone(), None, &[]).await;
    assert_eq!(reply.status, 404);
    let reply = curl(server.url("/mutate"), ca, None, &[]).await;
    assert_eq!(reply.status, 405);
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let server = start(None).await;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    // Bounded: the server must close well before this.
    let read = tokio::time::timeout(
        webhook::HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        socket.read(&mut buf),
    )
    .await
    .expect("the server closes a peer that never sends a ClientHello");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= webhook::HANDSHAKE_TIMEOUT - Duration::from_millis(100));
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let server = start(None).await;
    let rotated = certs::issue(&laptop_settings(), OffsetDateTime::now_utc()).unwrap();
    let new_ca = server.dir.join("new-ca.pem");
    std::fs::write(&new_ca, &rotated.ca_pem).unwrap();
    let old_ca = server.dir.join("ca.pem");

    let reply = curl(server.url("/healthz"), new_ca.clone(), None, &[]).await;
    assert_ne!(
        reply.status, 200,
        "the new CA must not verify the old certificate yet"
    );
    server
        .resolver
        .update(&rotated.cert_pem, &rotated.key_pem)
        .unwrap();
    let reply = curl(server.url("/healthz"), new_ca, None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = curl(server.url("/healthz"), old_ca, None, &[]).await;
    assert_ne!(reply.status, 200, "the old CA must no longer verify");
}

// --- certificates against the in-memory API server ---

fn chart_webhook_configuration(ca_bundle: Option<&str>) -> MutatingWebhookConfiguration {
    let webhook = |name: &str| MutatingWebhook {
        name: name.to_string(),
        admission_review_versions: vec!["v1".into()],
        side_effects: "NoneOnDryRun".into(),
        client_config: WebhookClientConfig {
            service: Some(ServiceReference {
                name: "gost-operator".into(),
                namespace: "gost-system".into(),
                path: Some("/mutate".into()),
                port: Some(443),
            }),
            ca_bundle: ca_bundle.map(|b| ByteString(b.as_bytes().to_vec())),
            url: None,
        },
        ..Default::default()
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(certs::DEFAULT_WEBHOOK_CONFIGURATION.into()),
            ..Default::default()
        },
        webhooks: Some(vec![webhook("inject.gost.rs"), webhook("second.gost.rs")]),
    }
}

async fn fake_cluster(ca_bundle: Option<&str>) -> Client {
    kube_fake_client::ClientBuilder::new()
        .with_object(chart_webhook_configuration(ca_bundle))
        .build()
        .await
        .unwrap()
}

async fn ca_bundles(client: &Client) -> Vec<Option<String>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = api.get(certs::DEFAULT_WEBHOOK_CONFIGURATION).await.unwrap();
    config
        .webhooks
        .unwrap()
        .into_iter()
        .map(|w| {
            w.client_config
                .ca_bundle
                .map(|b| String::from_utf8(b.0).unwrap())
        })
        .collect()
}

async fn stored(client: &Client, settings: &CertSettings) -> ServingCert {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    ServingCert::from_secret(&api.get(&settings.secret_name).await.unwrap()).unwrap()
}

#[tokio::test]
async fn first_run_creates_the_secret_and_the_ca_bundle_then_reuses_them() {
    let client = fake_cluster(None).await;
    let settings = CertSettings::new("gost-operator", "gost-system");

    let (resolver, first) = certs::prepare(&client, &settings).await.unwrap();
    assert_eq!(stored(&client, &settings).await, first);
    assert_eq!(
        ca_bundles(&client).await,
        vec![Some(first.ca_pem.clone()); 2]
    );

    let second = certs::ensure_serving_cert(&client, &settings)
        .await
        .unwrap();
    assert_eq!(second, first, "a valid stored certificate is reused");
    assert!(
        !certs::ensure_ca_bundle(&client, &settings.webhook_configuration, &second.ca_pem)
            .await
            .unwrap(),
        "an equal caBundle is not written again"
    );

    // What the API server does: call the Service's DNS name and verify against caBundle.
    let server = start_with(resolver, &first.ca_pem, None).await;
    let reply = server.healthz_as_service(server.dir.join("ca.pem")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn an_expiring_serving_certificate_is_renewed_from_the_same_ca() {
    let client = fake_cluster(None).await;
    let settings = CertSettings::new("gost-operator", "gost-system");
    // Issued 80 of its 90 days ago: 10 days left, less than a third.
    let issued = OffsetDateTime::now_utc() - Duration::from_secs(80 * 24 * 3600);
    let old = certs::issue(&settings, issued).unwrap();
    assert!(matches!(
        certs::renewal(&old, &settings, OffsetDateTime::now_utc()),
        Renewal::Serving(_)
    ));
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(settings.secret_name.clone()),
            namespace: Some(settings.namespace.clone()),
            ..Default::default()
        },
        data: Some(BTreeMap::new()),
        ..Default::default()
    };
    for (key, value) in [
        ("ca.crt", &old.ca_pem),
        ("ca.key", &old.ca_key_pem),
        ("tls.crt", &old.cert_pem),
        ("tls.key", &old.key_pem),
    ] {
        secret
            .data
            .as_mut()
            .unwrap()
            .insert(key.into(), ByteString(value.as_bytes().to_vec()));
    }
    api.create(&PostParams::default(), &secret).await.unwrap();

    let renewed = certs::ensure_serving_cert(&client, &settings)
        .await
        .unwrap();
    assert_ne!(renewed.cert_pem, old.cert_pem);
    assert_ne!(renewed.key_pem, old.key_pem);
    assert_eq!(renewed.ca_pem, old.ca_pem, "caBundle need not change");
    assert_eq!(stored(&client, &settings).await, renewed);
    assert_eq!(
        certs::renewal(&renewed, &settings, OffsetDateTime::now_utc()),
        Renewal::Keep
    );

    // A CA with less than a third of its life left is replaced, serving certificate and all.
    let ancient = OffsetDateTime::now_utc() - Duration::from_secs(300 * 24 * 3600);
    let old = certs::issue(&settings, ancient).unwrap();
    assert!(matches!(
        certs::renewal(&old, &settings, OffsetDateTime::now_utc()),
        Renewal::Everything(_)
    ));
}

#[tokio::test]
async fn a_certificate_without_the_needed_names_is_reissued() {
    let client = fake_cluster(None).await;
    let in_cluster = CertSettings::new("gost-operator", "gost-system");
    let first = certs::ensure_serving_cert(&client, &in_cluster)
        .await
        .unwrap();
    // Now run from a laptop: the API server calls 127.0.0.1.
    let laptop = laptop_settings();
    let second = certs::ensure_serving_cert(&client, &laptop).await.unwrap();
    assert_ne!(second.cert_pem, first.cert_pem);
    assert_eq!(second.ca_pem, first.ca_pem);
    assert_eq!(
        certs::renewal(&second, &laptop, OffsetDateTime::now_utc()),
        Renewal::Keep
    );
}

#[tokio::test]
async fn a_wrong_ca_bundle_is_corrected() {
    let client = fake_cluster(Some("-----BEGIN CERTIFICATE-----\nstale\n")).await;
    let settings = CertSettings::new("gost-operator", "gost-system");
    let cert = certs::ensure_serving_cert(&client, &settings)
        .await
        .unwrap();
    certs::sync_webhook_configuration(&client, &settings, &cert)
        .await
        .unwrap();
    assert_eq!(
        ca_bundles(&client).await,
        vec![Some(cert.ca_pem.clone()); 2]
    );
}

#[tokio::test]
async fn a_missing_webhook_configuration_is_reported_by_name() {
    let client = kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap();
    let error = certs::ensure_ca_bundle(&client, "gost-sidecar-injector", "ca")
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("gost-sidecar-injector"),
        "{error}"
    );
}

#[tokio::test]
async fn laptop_mode_registers_the_webhook_by_url() {
    let client = kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap();
    let settings = laptop_settings();
    let cert = certs::ensure_serving_cert(&client, &settings)
        .await
        .unwrap();
    certs::sync_webhook_configuration(&client, &settings, &cert)
        .await
        .unwrap();
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = api.get(&settings.webhook_configuration).await.unwrap();
    let value = serde_json::to_value(&config).unwrap();
    let hook = &value["webhooks"][0];
    assert_eq!(hook["clientConfig"]["url"], "https://127.0.0.1:8443/mutate");
    assert!(hook["clientConfig"].get("service").is_none());
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "NoneOnDryRun");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["rules"][0]["operations"], json!(["CREATE"]));
    assert_eq!(hook["rules"][0]["resources"], json!(["pods"]));
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    assert_eq!(
        excluded["values"],
        json!(["kube-system", "kube-public", "kube-node-lease"])
    );
    assert_eq!(
        config.webhooks.unwrap()[0].client_config.ca_bundle,
        Some(ByteString(cert.ca_pem.as_bytes().to_vec()))
    );

    // A URL the server cannot answer on is refused with the reason.
    let error = certs::register_webhook_by_url(&client, "x", "https://127.0.0.1:8443/", "ca")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("/mutate"), "{error}");
    let error = certs::register_webhook_by_url(&client, "x", "http://127.0.0.1:8443/mutate", "ca")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("https"), "{error}");
}

#[tokio::test]
async fn replicas_starting_together_converge_on_one_certificate() {
    let client = fake_cluster(None).await;
    let settings = CertSettings::new("gost-operator", "gost-system");
    let (a, b) = tokio::join!(
        certs::ensure_serving_cert(&client, &settings),
        certs::ensure_serving_cert(&client, &settings)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "both replicas serve the stored certificate");
    assert_eq!(stored(&client, &settings).await, a);
}

/// Plain-HTTP curl for the metrics endpoint: (status, body).
async fn curl_plain(url: String, extra: &[&str]) -> (u16, String) {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                CURL_MAX_SECONDS,
                "-w",
                "\n%{http_code}",
            ])
            .args(&extra)
            .arg(&url)
            .output()
            .expect("curl runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (status.trim().parse().unwrap_or(0), body.to_string())
    })
    .await
    .unwrap()
}

/// The value of the sample line that starts with `prefix` (name and labels) in a scrape.
fn sample(scrape: &str, prefix: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{scrape}"))
}

#[tokio::test]
async fn the_metrics_endpoint_counts_admissions_and_reports_readiness() {
    use gost_operator::metrics::{self, Readiness};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let readiness = Readiness::new(true);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(metrics::serve(listener, readiness.clone(), async {
        let _ = stopped.await;
    }));

    // Readiness names what it waits for, then turns 200; liveness is 200 throughout.
    let (status, body) = curl_plain(format!("{base}/readyz"), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("caches") && body.contains("webhook"),
        "{body}"
    );
    assert_eq!(
        curl_plain(format!("{base}/healthz"), &[]).await,
        (200, "ok\n".to_string())
    );
    readiness.caches_filled();
    let (status, body) = curl_plain(format!("{base}/readyz"), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("webhook") && !body.contains("caches"),
        "{body}"
    );
    readiness.webhook_listening();
    assert_eq!(
        curl_plain(format!("{base}/readyz"), &[]).await,
        (200, "ready\n".to_string())
    );
    let (status, body) = curl_plain(format!("{base}/nope"), &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("/metrics"), "{body}");
    assert_eq!(
        curl_plain(format!("{base}/metrics"), &["-X", "POST"])
            .await
            .0,
        405
    );

    // An injection and a malformed body through the real webhook show in the next scrape
    // (other tests of this process admit too, so the counts grow by at least that much).
    let scrape = |base: String| async move {
        let (status, body) = curl_plain(format!("{base}/metrics"), &[]).await;
        assert_eq!(status, 200, "{body}");
        body
    };
    let before = scrape(base.clone()).await;
    let server = start(None).await;
    server.admit(&review("m1", "shop", &pod(), false)).await;
    assert_eq!(server.post_bytes(b"{not json", &[]).await.status, 400);
    let after = scrape(base.clone()).await;
    for (prefix, grew) in [
        ("gost_operator_admissions_total{outcome=\"injected\"}", 1.0),
        ("gost_operator_admissions_total{outcome=\"malformed\"}", 1.0),
        ("gost_operator_admission_duration_seconds_count", 2.0),
    ] {
        assert!(
            sample(&after, prefix) >= sample(&before, prefix) + grew,
            "{prefix} did not grow by {grew}:\nbefore:\n{before}\nafter:\n{after}"
        );
    }
    assert!(
        after.contains("# TYPE gost_operator_reconciles_total counter"),
        "{after}"
    );
    assert!(after.contains("gost_operator_leader "), "{after}");
    let _ = stop.send(());
}

/// Stores `cert` as the webhook's Secret, as an earlier run of the operator would have.
async fn store(client: &Client, settings: &CertSettings, cert: &ServingCert) {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let data = [
        ("ca.crt", &cert.ca_pem),
        ("ca.key", &cert.ca_key_pem),
        ("tls.crt", &cert.cert_pem),
        ("tls.key", &cert.key_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(settings.secret_name.clone()),
            namespace: Some(settings.namespace.clone()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    api.create(&PostParams::default(), &secret).await.unwrap();
}

#[tokio::test]
async fn a_new_ca_keeps_the_old_one_in_the_ca_bundle_while_it_is_valid() {
    let client = fake_cluster(None).await;
    let settings = CertSettings::new("gost-operator", "gost-system");
    // A CA with less than a third of its year left (the next check replaces it), serving a
    // certificate it issued yesterday.
    let now = OffsetDateTime::now_utc();
    let old = certs::issue(&settings, now - Duration::from_secs(300 * 24 * 3600)).unwrap();
    let old =
        certs::reissue_serving(&old, &settings, now - Duration::from_secs(24 * 3600)).unwrap();
    store(&client, &settings, &old).await;

    let renewed = certs::ensure_serving_cert(&client, &settings)
        .await
        .unwrap();
    assert_ne!(renewed.ca_pem, old.ca_pem, "a new CA");
    assert_eq!(
        renewed.previous_ca_pem.as_deref(),
        Some(old.ca_pem.as_str())
    );
    assert_eq!(
        stored(&client, &settings).await,
        renewed,
        "kept in the Secret"
    );
    certs::sync_webhook_configuration(&client, &settings, &renewed)
        .await
        .unwrap();
    let bundle = renewed.ca_bundle(OffsetDateTime::now_utc());
    assert!(bundle.contains(&renewed.ca_pem) && bundle.contains(&old.ca_pem));
    assert_eq!(ca_bundles(&client).await, vec![Some(bundle.clone()); 2]);

    // What the API server does with that caBundle: a replica still serving the old CA's
    // certificate and one serving the new CA's are both trusted.
    for (which, cert) in [("old", &old), ("new", &renewed)] {
        let resolver = Arc::new(CertResolver::new(&cert.cert_pem, &cert.key_pem).unwrap());
        let server = start_with(resolver, &bundle, None).await;
        let reply = server.healthz_as_service(server.dir.join("ca.pem")).await;
        assert_eq!(reply.status, 200, "{which} certificate: {}", reply.body);
    }

    // What went wrong before: a caBundle of the new CA alone refuses the old certificate.
    let resolver = Arc::new(CertResolver::new(&old.cert_pem, &old.key_pem).unwrap());
    let server = start_with(resolver, &renewed.ca_pem, None).await;
    let reply = server.healthz_as_service(server.dir.join("ca.pem")).await;
    assert_eq!(reply.status, 0, "{}", reply.body);

    // Once the old CA has expired it leaves the bundle.
    let after_expiry = OffsetDateTime::now_utc() + Duration::from_secs(70 * 24 * 3600);
    assert_eq!(renewed.ca_bundle(after_expiry), renewed.ca_pem);
}

#[tokio::test]
async fn cert_manager_mode_serves_the_directory_and_follows_its_renewal() {
    let settings = CertSettings::new("gost-operator", "gost-system");
    let first = certs::issue(&settings, OffsetDateTime::now_utc()).unwrap();
    let dir = scratch_dir();
    let write = |cert: &ServingCert| {
        std::fs::write(dir.join("tls.crt"), &cert.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &cert.key_pem).unwrap();
    };
    // A missing directory is named.
    let missing = certs::resolver_from_dir(&dir.join("nope"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("--webhook-cert-dir") && missing.contains("nope"),
        "{missing}"
    );
    write(&first);
    let resolver = certs::resolver_from_dir(&dir).unwrap();
    let follower = tokio::spawn(certs::follow_cert_dir(
        dir.clone(),
        resolver.clone(),
        Duration::from_millis(50),
    ));
    let server = start_with(resolver, &first.ca_pem, None).await;
    let ca = |cert: &ServingCert, name: &str| {
        let path = server.dir.join(name);
        std::fs::write(&path, &cert.ca_pem).unwrap();
        path
    };
    let reply = server.healthz_as_service(ca(&first, "first.pem")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A garbled update is not served; the current pair stays.
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reply = server.healthz_as_service(ca(&first, "first.pem")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // cert-manager renews (here from another CA): served within a few polls, no restart.
    let renewed = certs::issue(&settings, OffsetDateTime::now_utc()).unwrap();
    write(&renewed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = server.healthz_as_service(ca(&renewed, "renewed.pem")).await;
        if reply.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was not served: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    follower.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
