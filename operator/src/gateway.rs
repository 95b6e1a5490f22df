//! Gateways: a GostService with `gateway` runs in a Deployment of the proxy, with its rendered
//! config in a Secret and a Service in front, all three owned by the GostService (controller
//! reference) so that deleting it collects them.
//!
//! This module only builds the desired objects; the controller applies them.

use std::collections::BTreeMap;

use gost_api::v1alpha1::GostService;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ContainerPort, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, Secret, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde::Serialize;

use crate::group::{MANAGED_BY, MANAGED_BY_LABEL, label_value, short_hash};
use crate::inject::{self, SidecarSettings};
pub use crate::render::ListenPort;
use crate::render::Rendered;

/// Prefix of a gateway's Deployment, Service and Secret.
pub const GATEWAY_PREFIX: &str = "gost-gw-";
/// `app.kubernetes.io/name` of gateway objects and pods.
pub const GATEWAY_APP: &str = "gost-gateway";
/// The standard name label.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// The standard instance label: the GostService's name.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Annotation holding a hash of what the operator last applied: an object is re-applied only
/// when the hash differs, so an unchanged gateway costs no write.
pub const SPEC_HASH_ANNOTATION: &str = "gost.rs/spec-hash";
/// Config files are readable by the owner and the pod's group only: they hold credentials.
const CONFIG_FILE_MODE: i32 = 0o440;
/// Service names are DNS labels (63 characters).
const MAX_SERVICE_NAME_LEN: usize = 63;

/// What the gateway needs from the operator's settings.
#[derive(Clone, Copy, Debug)]
pub struct GatewaySettings<'a> {
    /// The proxy container's settings, shared with the sidecar (image, admin port, default
    /// resources, logs, grace period).
    pub proxy: &'a SidecarSettings,
}

/// The desired objects of one gateway.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// The rendered config.
    pub secret: Secret,
    /// The proxy Deployment.
    pub deployment: Deployment,
    /// The Service in front; `None` when no service rendered (a Service needs a port; the
    /// existing one is left alone so a passing problem does not release a load balancer).
    pub service: Option<Service>,
}

/// `gost-gw-<name>` as a DNS-1035 label, which Service names must be (at most 63 lowercase
/// alphanumerics and `-`, starting with a letter). A GostService name is a DNS subdomain and
/// may hold `.`, so other characters become `-`; a name that had to be changed, or that is
/// too long (and then cut), ends in `-` and a hash of the full name, so that `edge.v1` and
/// `edge-v1` get different gateways.
pub fn gateway_name(gost_service: &str) -> String {
    let full = format!("{GATEWAY_PREFIX}{gost_service}");
    let label: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    if label == full && full.len() <= MAX_SERVICE_NAME_LEN && !full.ends_with('-') {
        return full;
    }
    let hash = short_hash(full.as_bytes());
    let keep = (MAX_SERVICE_NAME_LEN - hash.len() - 1).min(label.len());
    let head = label[..keep].trim_end_matches('-');
    format!("{head}-{hash}")
}

/// What in `gs.spec.gateway` the API server would refuse in the objects built from it, one
/// sentence each (field, value, what to do). The CRD's schema refuses these too; this catches
/// GostServices stored before it did, and keeps a bad field from failing the whole reconcile.
pub fn spec_problems(gs: &GostService) -> Vec<String> {
    let Some(gateway) = &gs.spec.gateway else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let ports = gateway.service.iter().flat_map(|s| &s.ports);
    for (service, port) in ports {
        if !(1..=65535).contains(port) {
            problems.push(format!(
                "spec.gateway.service.ports[{service}]: {port} is not a port; use a number from 1 to 65535, or remove the entry to expose the service's listen port"
            ));
        }
    }
    if let Some(resources) = &gateway.resources {
        let lists = [
            ("limits", &resources.limits),
            ("requests", &resources.requests),
        ];
        for (list, quantities) in lists {
            for (resource, quantity) in quantities.iter().flatten() {
                if !is_quantity(&quantity.0) {
                    problems.push(format!(
                        "spec.gateway.resources.{list}.{resource}: {:?} is not a quantity; write e.g. 128Mi, 1Gi, 500m or 2",
                        quantity.0
                    ));
                }
            }
        }
    }
    problems
}

/// Whether `s` is a Kubernetes resource quantity: a signed decimal number with an optional
/// binary (`Ki`..`Ei`) or decimal (`n`, `u`, `m`, `k`, `M`..`E`) suffix or exponent (`e3`).
pub fn is_quantity(s: &str) -> bool {
    /// `digits[.digits]` or `.digits`, and the rest.
    fn number(s: &str) -> Option<&str> {
        let int = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let rest = &s[int..];
        let Some(fraction) = rest.strip_prefix('.') else {
            return (int > 0).then_some(rest);
        };
        let frac = fraction.len()
            - fraction
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        (int > 0 || frac > 0).then_some(&fraction[frac..])
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let Some(suffix) = number(unsigned) else {
        return false;
    };
    match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        exponent => {
            exponent
                .strip_prefix(['e', 'E'])
                .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
                .and_then(number)
                == Some("")
        }
    }
}

/// The labels selecting a gateway's pods (also on every gateway object).
pub fn selector_labels(gost_service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_string(), GATEWAY_APP.to_string()),
        (INSTANCE_LABEL.to_string(), label_value(gost_service)),
    ])
}

fn object_labels(gost_service: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(gost_service);
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels
}

/// Builds the gateway of `gs` from its rendered config.
pub fn build(gs: &GostService, rendered: &Rendered, settings: &GatewaySettings<'_>) -> Gateway {
    let gs_name = gs.metadata.name.clone().unwrap_or_default();
    let name = gateway_name(&gs_name);
    let spec = gs.spec.gateway.clone().unwrap_or_default();
    let meta = |annotations: BTreeMap<String, String>| ObjectMeta {
        name: Some(name.clone()),
        namespace: gs.metadata.namespace.clone(),
        labels: Some(object_labels(&gs_name)),
        annotations: Some(annotations).filter(|a| !a.is_empty()),
        owner_references: gs.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    };

    let secret = Secret {
        metadata: meta(BTreeMap::new()),
        data: Some(rendered.secret_data()),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    };

    let ports = listen_ports(&gs_name, rendered);
    let volume_names = inject::VolumeNames::default();
    let mut container = inject::proxy_container(settings.proxy, &volume_names);
    container
        .ports
        .get_or_insert_with(Vec::new)
        .extend(ports.iter().map(|p| ContainerPort {
            container_port: i32::from(p.port),
            protocol: Some(p.protocol.to_string()),
            ..ContainerPort::default()
        }));
    if let Some(resources) = &spec.resources {
        container.resources = Some(resources.clone());
    }
    let mut volumes = inject::proxy_volumes(&name, &volume_names).to_vec();
    for volume in &mut volumes {
        if let Some(secret) = &mut volume.secret {
            // With the pod's fsGroup, only the proxy's user and group read the credentials.
            secret.default_mode = Some(CONFIG_FILE_MODE);
        }
    }
    let selector = selector_labels(&gs_name);
    let mut deployment = Deployment {
        metadata: meta(BTreeMap::new()),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas.unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(object_labels(&gs_name)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // The proxy never talks to the API server.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(inject::SIDECAR_UID),
                        run_as_group: Some(inject::SIDECAR_UID),
                        fs_group: Some(inject::SIDECAR_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    stamp_hash(&mut deployment);

    let service_spec = spec.service.clone().unwrap_or_default();
    let service = (!ports.is_empty()).then(|| {
        let mut service = Service {
            metadata: meta(service_spec.annotations.clone()),
            spec: Some(ServiceSpec {
                type_: Some(service_spec.kind.unwrap_or_default().as_str().to_string()),
                selector: Some(selector),
                ports: Some(
                    ports
                        .iter()
                        .map(|p| ServicePort {
                            name: Some(p.name.clone()),
                            protocol: Some(p.protocol.to_string()),
                            port: service_port(gs, p),
                            target_port: Some(IntOrString::Int(i32::from(p.port))),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        stamp_hash(&mut service);
        service
    });

    Gateway {
        secret,
        deployment,
        service,
    }
}

/// The listen ports of the gateway's services that rendered (a left-out service gets no port),
/// named as in the GostService.
pub fn listen_ports(gost_service: &str, rendered: &Rendered) -> Vec<ListenPort> {
    let prefix = format!("{gost_service}/");
    rendered
        .listen_ports()
        .into_iter()
        .filter_map(|mut port| {
            port.name = port.name.strip_prefix(&prefix)?.to_string();
            Some(port)
        })
        .collect()
}

/// The gateway Service's port for `listen`: the `gateway.service.ports` entry of its service
/// name when there is one, else the listen port.
pub fn service_port(gs: &GostService, listen: &ListenPort) -> i32 {
    gs.spec
        .gateway
        .as_ref()
        .and_then(|g| g.service.as_ref())
        .and_then(|s| s.ports.get(&listen.name))
        .copied()
        .unwrap_or(i32::from(listen.port))
}

/// Puts the hash of the object (as built, before the annotation) into [`SPEC_HASH_ANNOTATION`].
fn stamp_hash<K: Resource + Serialize>(obj: &mut K) {
    let json = serde_json::to_vec(obj).expect("Kubernetes objects serialize to JSON");
    let hash = short_hash(&json);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH_ANNOTATION.to_string(), hash);
}

/// The hash the operator last applied to `obj`, if any.
pub fn applied_hash<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .annotations
        .as_ref()?
        .get(SPEC_HASH_ANNOTATION)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns1035(s: &str) -> bool {
        s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn gateway_names_are_dns_labels() {
        assert_eq!(gateway_name("edge"), "gost-gw-edge");
        let long = gateway_name(&"e".repeat(200));
        assert!(
            long.len() <= 63 && long.starts_with("gost-gw-eee"),
            "{long}"
        );
        assert_ne!(long, gateway_name(&format!("{}f", "e".repeat(199))));
        let dotted = gateway_name("edge.v1");
        assert!(dotted.starts_with("gost-gw-edge-v1-"), "{dotted}");
        assert_ne!(dotted, gateway_name("edge-v1"));
        assert_eq!(gateway_name("edge-v1"), "gost-gw-edge-v1");
        let long_dotted = format!("{}.{}", "a".repeat(40), "b".repeat(200));
        for name in ["edge", "edge.v1", "9lives", "a.b.c", long_dotted.as_str()] {
            let n = gateway_name(name);
            assert!(is_dns1035(&n), "{name} -> {n}");
            assert_eq!(n, gateway_name(name), "stable");
        }
    }

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for good in [
            "1", "128Mi", "0.5", ".5", "1.", "500m", "2Gi", "+1k", "-1", "1e3", "1E-3", "1.5e+2",
            "100n",
        ] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in [
            "", "lots", "1 Gi", "1GB", "Mi", "1.2.3", "e3", "1e", "1ee3", ".", "1Ki2",
        ] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
