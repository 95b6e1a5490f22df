//! Sidecar injection, without I/O: whether a pod gets the gost sidecar, and the JSON Patch that
//! adds it.
//!
//! The sidecar is a native sidecar (an init container with `restartPolicy: Always`, placed first)
//! so it is serving before the pod's other init containers and its app containers start, and is
//! stopped after them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::group::{INJECTED_LABEL, INJECTED_VALUE};
use crate::render::ListenPort;
use gost_api::{Config, LogConfig, LogFormat, LogLevel};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, Pod,
    Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

/// The namespace label and pod annotation that opt in (`enabled`) or, on a pod, out (`disabled`).
pub const INJECT_KEY: &str = "gost.rs/inject";
/// The value of [`INJECT_KEY`] that opts in.
pub const INJECT_ENABLED: &str = "enabled";
/// The value of [`INJECT_KEY`] on a pod that opts out even in an enabled namespace.
pub const INJECT_DISABLED: &str = "disabled";
/// Set on an injected pod to the name of its config Secret, so people and the controller can
/// see which rendered config the sidecar reads.
pub const INJECTED_ANNOTATION: &str = "gost.rs/injected";
/// Namespaces whose pods keep the cluster running: a broken sidecar there could take the
/// cluster down, so they are never injected whatever their labels say.
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// The sidecar container's name; its presence is how re-invocation knows the pod is done.
pub const SIDECAR_NAME: &str = "gost";
/// The config Secret volume's name in the pod (unless the pod has a volume of that name:
/// [`VolumeNames`]).
pub const CONFIG_VOLUME: &str = "gost-config";
/// The writable HOME volume's name in the pod (unless taken, as [`CONFIG_VOLUME`]).
pub const HOME_VOLUME: &str = "gost-home";
/// Where the config Secret is mounted (rendering decides it: TLS file paths in the config
/// point under it).
pub const CONFIG_MOUNT_PATH: &str = crate::render::MOUNT_PATH;
/// The key of the rendered config in the config Secret, and so the file name under
/// [`CONFIG_MOUNT_PATH`].
pub const CONFIG_KEY: &str = crate::render::CONFIG_KEY;
/// HOME for the proxy: it persists a generated TLS certificate under `~/.gost`, and the root
/// filesystem is read-only, so HOME is an emptyDir.
pub const HOME_MOUNT_PATH: &str = "/var/lib/gost";
/// The admin port's name: probes and scrapers refer to it by name.
pub const ADMIN_PORT_NAME: &str = "gost-admin";
/// The admin (metrics, `/healthz`, `/readyz`) port, as rendering reserves it.
pub const DEFAULT_ADMIN_PORT: u16 = crate::render::DEFAULT_ADMIN_PORT;
/// The non-root uid and gid the sidecar runs as: the conventional "nonroot" id of distroless
/// images, which owns nothing else in the pod.
pub const SIDECAR_UID: i64 = 65532;
/// The default image: the proxy built from the same release as the operator.
pub const DEFAULT_IMAGE: &str = concat!("gost-rs/gost:", env!("CARGO_PKG_VERSION"));
/// A tagged release image need not be pulled again on every pod start.
pub const DEFAULT_IMAGE_PULL_POLICY: &str = "IfNotPresent";
/// Long enough for most requests in flight to finish, and short enough to fit inside a pod's
/// default `terminationGracePeriodSeconds` (30 s) after the app containers have stopped.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(20);
/// JSON lines: what log collectors in a cluster parse.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Json;
/// A relay at idle needs little CPU; this is what the scheduler reserves.
pub const DEFAULT_CPU_REQUEST: &str = "50m";
/// The proxy's resident set at idle is well under this.
pub const DEFAULT_MEMORY_REQUEST: &str = "32Mi";
/// A ceiling so a leak in the sidecar cannot starve the app; no CPU limit, because CPU
/// throttling a proxy adds latency to every request of the app.
pub const DEFAULT_MEMORY_LIMIT: &str = "256Mi";
/// The startup probe's period: the proxy binds in milliseconds, so check often.
const STARTUP_PERIOD_SECONDS: i32 = 1;
/// With [`STARTUP_PERIOD_SECONDS`], 30 s for the config to appear and the services to bind
/// before the kubelet restarts the sidecar.
const STARTUP_FAILURE_THRESHOLD: i32 = 30;
/// How often readiness is checked once started.
const READINESS_PERIOD_SECONDS: i32 = 5;
/// How often liveness is checked; with the default threshold of 3, a wedged proxy is restarted
/// after 30 s.
const LIVENESS_PERIOD_SECONDS: i32 = 10;

/// How the sidecar container is built: operator-wide settings, not per-pod.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarSettings {
    /// The proxy image.
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// Requests and limits of the sidecar container.
    pub resources: ResourceRequirements,
    /// The sidecar's log format. The proxy has no flag for it, so it is passed as a second,
    /// inline `-C` source; it replaces the rendered config's `log` section.
    pub log_format: LogFormat,
    /// The sidecar's log level; `None` keeps the proxy's default (info).
    pub log_level: Option<LogLevel>,
    /// How long open tunnels may finish after SIGTERM (`--grace-period`).
    pub grace_period: Duration,
    /// The admin port the rendered config's `metrics.addr` listens on.
    pub admin_port: u16,
}

impl Default for SidecarSettings {
    fn default() -> Self {
        let quantity = |q: &str| Quantity(q.to_string());
        Self {
            image: DEFAULT_IMAGE.to_string(),
            image_pull_policy: DEFAULT_IMAGE_PULL_POLICY.to_string(),
            resources: ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), quantity(DEFAULT_CPU_REQUEST)),
                    ("memory".to_string(), quantity(DEFAULT_MEMORY_REQUEST)),
                ])),
                limits: Some(BTreeMap::from([(
                    "memory".to_string(),
                    quantity(DEFAULT_MEMORY_LIMIT),
                )])),
                ..Default::default()
            },
            log_format: DEFAULT_LOG_FORMAT,
            log_level: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            admin_port: DEFAULT_ADMIN_PORT,
        }
    }
}

/// Whether a pod gets the sidecar, and if not, why (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Opted in and not yet injected.
    Inject,
    /// Left alone, with the reason.
    Skip(&'static str),
    /// Opted in but never injected (a pod on the node's network): left alone, and the reason
    /// is a warning for whoever created the pod, since they asked for the sidecar.
    Refuse(&'static str),
}

/// Why a pod with `spec.hostNetwork: true` is not injected, even when it opts in itself.
pub const HOST_NETWORK_REFUSAL: &str = "gost sidecar not injected: the pod uses the node's network (spec.hostNetwork: true), so the sidecar's ports (its admin port, its services' ports) would be opened on the node's interfaces, and two such pods on one node would clash on them; the pod annotation gost.rs/inject=enabled does not change this. Run the proxy for such pods as a gateway (GostService spec.gateway) and point them at its Service, or set gost.rs/inject=disabled on the pod to silence this warning";

/// The annotation the kubelet sets on the mirror pod of a static pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Decides injection for `pod` in `namespace`, whose `gost.rs/inject` label is
/// `namespace_label` (`None` when absent or the namespace is unknown).
pub fn decide(namespace: &str, namespace_label: Option<&str>, pod: &Pod) -> Decision {
    if SYSTEM_NAMESPACES.contains(&namespace) {
        return Decision::Skip("system namespace");
    }
    if has_sidecar(pod) {
        return Decision::Skip("already has a gost container");
    }
    // The API server's mirror of a static pod: the kubelet runs the manifest on its node,
    // whatever admission does to the mirror.
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return Decision::Skip("a static pod's mirror");
    }
    let annotation = inject_annotation(pod);
    let opted_in = match annotation {
        Some(INJECT_DISABLED) => return Decision::Skip("opted out by the pod annotation"),
        Some(INJECT_ENABLED) => true,
        _ => namespace_label == Some(INJECT_ENABLED),
    };
    if !opted_in {
        return Decision::Skip("neither the namespace nor the pod opted in");
    }
    // As Istio does, and without an override: the sidecar would bind its ports on the node,
    // where the replicas of one workload (and every other injected host-network pod on that
    // node) would fight over them, and its services would be open to whoever reaches the node.
    if uses_host_network(pod) {
        return Decision::Refuse(HOST_NETWORK_REFUSAL);
    }
    Decision::Inject
}

/// Whether the pod runs in the node's network namespace (`spec.hostNetwork: true`).
pub fn uses_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.host_network)
        .unwrap_or(false)
}

/// The pod's `gost.rs/inject` annotation, if it has one.
fn inject_annotation(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECT_KEY))
        .map(String::as_str)
}

/// Warnings about a `gost.rs/inject` pod annotation or namespace label whose value is neither
/// `enabled` nor `disabled` (`true`, `Enabled`, ...): such a value opts neither in nor out, so
/// without a word the pod would simply run without its sidecar.
pub fn opt_in_warnings(namespace_label: Option<&str>, pod: &Pod) -> Vec<String> {
    let annotation = inject_annotation(pod);
    [
        ("pod annotation", annotation),
        ("namespace label", namespace_label),
    ]
    .into_iter()
    .filter_map(|(what, value)| match value? {
        INJECT_ENABLED | INJECT_DISABLED => None,
        other => Some(format!(
            "gost sidecar: the {what} {INJECT_KEY}={other:?} is neither {INJECT_ENABLED:?} nor {INJECT_DISABLED:?} and is ignored; set {INJECT_ENABLED:?} to inject the sidecar"
        )),
    })
    .collect()
}

/// Whether a container named [`SIDECAR_NAME`] is already in the pod (an earlier invocation, or a
/// pod that runs gost by hand).
pub fn has_sidecar(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    let named = |c: &Container| c.name == SIDECAR_NAME;
    spec.containers.iter().any(named)
        || spec
            .init_containers
            .as_ref()
            .is_some_and(|init| init.iter().any(named))
}

/// The names of the proxy container's volumes in one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeNames {
    /// The config Secret's volume.
    pub config: String,
    /// The HOME volume.
    pub home: String,
}

impl Default for VolumeNames {
    fn default() -> Self {
        VolumeNames {
            config: CONFIG_VOLUME.to_string(),
            home: HOME_VOLUME.to_string(),
        }
    }
}

impl VolumeNames {
    /// Names no volume of `pod` has: [`CONFIG_VOLUME`] and [`HOME_VOLUME`], or when the pod
    /// already uses one, the first free `<name>-2`, `<name>-3`, ... The API server refuses a
    /// pod with two volumes of one name, so taking the usual name anyway would block the pod
    /// whatever the webhook's failurePolicy; a pod that uses the name for its own purpose
    /// keeps its volume and gets the sidecar too.
    pub fn free_in(pod: &Pod) -> VolumeNames {
        let taken: BTreeSet<&str> = pod
            .spec
            .iter()
            .flat_map(|spec| spec.volumes.iter().flatten())
            .map(|v| v.name.as_str())
            .collect();
        let free = |base: &str| {
            std::iter::once(base.to_string())
                .chain((2..).map(|i| format!("{base}-{i}")))
                .find(|name| !taken.contains(name.as_str()))
                .expect("a pod has finitely many volumes")
        };
        VolumeNames {
            config: free(CONFIG_VOLUME),
            home: free(HOME_VOLUME),
        }
    }
}

/// Warnings for the API server to show about injecting `pod` (kubectl prints them): volumes
/// of the pod that made the sidecar's volumes take other names, and container ports that the
/// sidecar binds too (its admin port, the `listen` ports of its services). Containers of a
/// pod share one network, so on such a clash the app or the sidecar cannot bind its port.
pub fn warnings(pod: &Pod, settings: &SidecarSettings, listen: &[ListenPort]) -> Vec<String> {
    let mut out = Vec::new();
    let names = VolumeNames::free_in(pod);
    for (usual, chosen) in [(CONFIG_VOLUME, &names.config), (HOME_VOLUME, &names.home)] {
        if usual != chosen {
            out.push(format!(
                "gost sidecar: the pod already has a volume {usual:?}; the sidecar's is {chosen:?}"
            ));
        }
    }
    let Some(spec) = &pod.spec else { return out };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name != SIDECAR_NAME);
    for container in containers {
        for declared in container.ports.iter().flatten() {
            let protocol = declared.protocol.as_deref().unwrap_or("TCP");
            let port = declared.container_port;
            let what = if protocol == "TCP" && port == i32::from(settings.admin_port) {
                "the sidecar's admin port".to_string()
            } else if let Some(service) = listen
                .iter()
                .find(|l| i32::from(l.port) == port && l.protocol == protocol)
            {
                format!("the listen port of gost service {:?}", service.name)
            } else {
                continue;
            };
            out.push(format!(
                "gost sidecar: container {:?} port {port}/{protocol} is also {what}; change one of them",
                container.name
            ));
        }
    }
    out
}

/// The JSON Patch that adds the sidecar reading `config_secret` to `pod`, relative to `pod` as
/// received; `None` when the pod already has it (or has no spec to add it to). Its volumes get
/// names the pod does not use ([`VolumeNames::free_in`]).
pub fn sidecar_patch(pod: &Pod, config_secret: &str, settings: &SidecarSettings) -> Option<Patch> {
    if has_sidecar(pod) {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let mut ops = Vec::with_capacity(4);
    let names = VolumeNames::free_in(pod);
    let sidecar = to_value(sidecar_container(settings, &names));
    if spec.init_containers.is_some() {
        ops.push(add(&["spec", "initContainers", "0"], sidecar));
    } else {
        ops.push(add(
            &["spec", "initContainers"],
            Value::Array(vec![sidecar]),
        ));
    }
    let volumes = proxy_volumes(config_secret, &names);
    if spec.volumes.is_some() {
        for volume in volumes {
            ops.push(add(&["spec", "volumes", "-"], to_value(volume)));
        }
    } else {
        let volumes = volumes.into_iter().map(to_value).collect();
        ops.push(add(&["spec", "volumes"], Value::Array(volumes)));
    }
    // The label lets the controller watch injected pods only (a label selector on the watch).
    if pod.metadata.labels.is_some() {
        ops.push(add(
            &["metadata", "labels", INJECTED_LABEL],
            Value::String(INJECTED_VALUE.to_string()),
        ));
    } else {
        let labels = serde_json::Map::from_iter([(
            INJECTED_LABEL.to_string(),
            Value::String(INJECTED_VALUE.to_string()),
        )]);
        ops.push(add(&["metadata", "labels"], Value::Object(labels)));
    }
    if pod.metadata.annotations.is_some() {
        ops.push(add(
            &["metadata", "annotations", INJECTED_ANNOTATION],
            Value::String(config_secret.to_string()),
        ));
    } else {
        let annotations = serde_json::Map::from_iter([(
            INJECTED_ANNOTATION.to_string(),
            Value::String(config_secret.to_string()),
        )]);
        ops.push(add(
            &["metadata", "annotations"],
            Value::Object(annotations),
        ));
    }
    Some(Patch(ops))
}

/// The sidecar container: [`proxy_container`] as a native sidecar.
pub fn sidecar_container(settings: &SidecarSettings, volumes: &VolumeNames) -> Container {
    Container {
        // This is what makes an init container a native sidecar.
        restart_policy: Some("Always".to_string()),
        ..proxy_container(settings, volumes)
    }
}

/// The proxy container of sidecars and gateways: the rendered config from
/// [`proxy_volumes`] (named `volumes`), the admin port with its probes, a writable HOME and a
/// locked-down security context.
pub fn proxy_container(settings: &SidecarSettings, volumes: &VolumeNames) -> Container {
    let admin_port = IntOrString::String(ADMIN_PORT_NAME.to_string());
    let http_get = |path: &str| HTTPGetAction {
        path: Some(path.to_string()),
        port: admin_port.clone(),
        ..Default::default()
    };
    Container {
        name: SIDECAR_NAME.to_string(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(sidecar_args(settings)),
        env: Some(vec![EnvVar {
            name: "HOME".to_string(),
            value: Some(HOME_MOUNT_PATH.to_string()),
            ..Default::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.to_string()),
            container_port: i32::from(settings.admin_port),
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        resources: Some(settings.resources.clone()),
        startup_probe: Some(Probe {
            http_get: Some(http_get("/readyz")),
            period_seconds: Some(STARTUP_PERIOD_SECONDS),
            failure_threshold: Some(STARTUP_FAILURE_THRESHOLD),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            http_get: Some(http_get("/readyz")),
            period_seconds: Some(READINESS_PERIOD_SECONDS),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(http_get("/healthz")),
            period_seconds: Some(LIVENESS_PERIOD_SECONDS),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            // No subPath: the kubelet swaps the `..data` symlink on Secret changes only for whole
            // volume mounts, and the proxy reloads on that change.
            VolumeMount {
                name: volumes.config.clone(),
                mount_path: CONFIG_MOUNT_PATH.to_string(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: volumes.home.clone(),
                mount_path: HOME_MOUNT_PATH.to_string(),
                ..Default::default()
            },
        ]),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            run_as_group: Some(SIDECAR_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `-C <config> -C <inline log settings> --grace-period <d>`: the proxy merges `-C` sources in
/// order and re-reads all of them on reload, so the inline one survives config changes.
fn sidecar_args(settings: &SidecarSettings) -> Vec<String> {
    let log = Config {
        log: Some(LogConfig {
            level: settings.log_level,
            format: Some(settings.log_format),
            output: None,
        }),
        ..Default::default()
    };
    let log = serde_json::to_string(&log).expect("a Config always serializes");
    vec![
        "-C".to_string(),
        format!("{CONFIG_MOUNT_PATH}/{CONFIG_KEY}"),
        "-C".to_string(),
        log,
        "--grace-period".to_string(),
        format!("{}ms", settings.grace_period.as_millis()),
    ]
}

/// The volumes [`proxy_container`] mounts: the config Secret and the writable HOME.
pub fn proxy_volumes(config_secret: &str, names: &VolumeNames) -> [Volume; 2] {
    [
        Volume {
            name: names.config.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(config_secret.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: names.home.clone(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ]
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    // from_tokens escapes `/` and `~` in a token (`gost.rs/injected` -> `gost.rs~1injected`).
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

fn to_value<T: serde::Serialize>(value: T) -> Value {
    serde_json::to_value(value).expect("k8s-openapi types always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn apply(pod_json: &Value, patch: &Patch) -> Value {
        let mut doc = pod_json.clone();
        json_patch::patch(&mut doc, patch).unwrap();
        doc
    }

    fn minimal() -> Value {
        json!({"metadata": {"name": "app"}, "spec": {"containers": [{"name": "app", "image": "app"}]}})
    }

    /// A static pod's mirror is left alone (the kubelet runs the manifest as it is), and so
    /// never counted as a pod running without the sidecar.
    #[test]
    fn a_static_pods_mirror_is_left_alone() {
        let mut mirror = minimal();
        mirror["metadata"]["annotations"] =
            json!({"kubernetes.io/config.mirror": "abc", "gost.rs/inject": "enabled"});
        assert!(matches!(
            decide("shop", Some("enabled"), &pod(mirror)),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn opt_in_and_out() {
        let plain = pod(minimal());
        assert_eq!(decide("shop", Some("enabled"), &plain), Decision::Inject);
        assert!(matches!(decide("shop", None, &plain), Decision::Skip(_)));
        assert!(matches!(
            decide("shop", Some("disabled"), &plain),
            Decision::Skip(_)
        ));

        let mut annotated = minimal();
        annotated["metadata"]["annotations"] = json!({"gost.rs/inject": "enabled"});
        assert_eq!(
            decide("shop", None, &pod(annotated.clone())),
            Decision::Inject
        );
        assert!(matches!(
            decide("kube-system", Some("enabled"), &pod(annotated)),
            Decision::Skip("system namespace")
        ));

        let mut opted_out = minimal();
        opted_out["metadata"]["annotations"] = json!({"gost.rs/inject": "disabled"});
        assert_eq!(
            decide("shop", Some("enabled"), &pod(opted_out)),
            Decision::Skip("opted out by the pod annotation")
        );

        // The node's network: refused when opted in (by the namespace or the pod itself),
        // silently skipped otherwise.
        let host = |annotation: Option<&str>| {
            let mut json = minimal();
            json["spec"]["hostNetwork"] = json!(true);
            if let Some(value) = annotation {
                json["metadata"]["annotations"] = json!({"gost.rs/inject": value});
            }
            pod(json)
        };
        let refused = Decision::Refuse(HOST_NETWORK_REFUSAL);
        assert_eq!(decide("shop", Some("enabled"), &host(None)), refused);
        assert_eq!(decide("shop", None, &host(Some("enabled"))), refused);
        assert!(matches!(
            decide("shop", Some("enabled"), &host(Some("disabled"))),
            Decision::Skip(_)
        ));
        assert!(matches!(
            decide("shop", None, &host(None)),
            Decision::Skip(_)
        ));

        let mut manual = minimal();
        manual["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "gost"}));
        assert!(matches!(
            decide("shop", Some("enabled"), &pod(manual)),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn patch_adds_missing_arrays_and_maps() {
        let json = minimal();
        let patch =
            sidecar_patch(&pod(json.clone()), "app-gost", &SidecarSettings::default()).unwrap();
        let text = serde_json::to_string(&patch).unwrap();
        assert!(text.contains("/metadata/annotations"), "{text}");
        let patched = apply(&json, &patch);
        let init = patched["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0]["name"], "gost");
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert_eq!(patched["spec"]["volumes"].as_array().unwrap().len(), 2);
        assert_eq!(
            patched["metadata"]["annotations"]["gost.rs/injected"],
            "app-gost"
        );
        assert_eq!(patched["metadata"]["labels"]["gost.rs/injected"], "true");
        // The patched pod is still a valid Pod, and now re-invocation leaves it alone.
        let patched = pod(patched);
        assert!(sidecar_patch(&patched, "app-gost", &SidecarSettings::default()).is_none());
    }

    #[test]
    fn patch_inserts_into_existing_arrays_and_maps() {
        let json = json!({
            "metadata": {"name": "app", "annotations": {"team": "shop"}},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "migrate"}],
                "containers": [{"name": "app", "image": "app"}],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }
        });
        let patch =
            sidecar_patch(&pod(json.clone()), "app-gost", &SidecarSettings::default()).unwrap();
        let text = serde_json::to_string(&patch).unwrap();
        assert!(
            text.contains("/metadata/annotations/gost.rs~1injected"),
            "{text}"
        );
        let patched = apply(&json, &patch);
        let init: Vec<_> = patched["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(init, ["gost", "migrate"]);
        let volumes: Vec<_> = patched["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(volumes, ["data", CONFIG_VOLUME, HOME_VOLUME]);
        assert_eq!(patched["metadata"]["annotations"]["team"], "shop");
        assert_eq!(
            patched["metadata"]["annotations"]["gost.rs/injected"],
            "app-gost"
        );
        assert_eq!(patched["metadata"]["labels"]["gost.rs/injected"], "true");
    }

    #[test]
    fn sidecar_args_are_what_the_proxy_accepts() {
        let settings = SidecarSettings {
            log_level: Some(LogLevel::Debug),
            grace_period: Duration::from_millis(2500),
            ..Default::default()
        };
        let args = sidecar_args(&settings);
        assert_eq!(args[..2], ["-C", "/etc/gost/config.yaml"]);
        assert_eq!(args[2], "-C");
        // The proxy treats a -C source starting with `{` as inline JSON and loads it as below.
        assert!(args[3].starts_with('{'));
        let inline = gost_api::from_str(&args[3], gost_api::Format::Json).unwrap();
        gost_api::validate(&inline).unwrap();
        let log = inline.log.unwrap();
        assert_eq!(log.format, Some(LogFormat::Json));
        assert_eq!(log.level, Some(LogLevel::Debug));
        assert!(inline.services.is_empty());
        assert_eq!(args[4], "--grace-period");
        // Parsed as the proxy's --grace-period parses it.
        assert_eq!(
            gost_api::metadata::parse_go_duration(&args[5]).unwrap(),
            Some(Duration::from_millis(2500))
        );
    }
}
