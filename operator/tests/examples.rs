//! Every example under `deploy/examples/` is right without a cluster: each document loads into
//! its type with no field dropped, each custom resource validates against the generated CRD's
//! schema, and the operator renders its gateways and client sidecars with no problem, the
//! client's chains pointing at a gateway of the same file by its Service's short name.

#[path = "support/examples.rs"]
mod examples;

use std::collections::BTreeMap;

use examples::Example;
use gost_api::v1alpha1::GostService;
use gost_operator::gateway::{self, GatewaySettings, ListenPort};
use gost_operator::inject::SidecarSettings;
use gost_operator::render::{Namespace, Rendered, Settings, render_for_pod, render_gateway};
use serde_json::Value;

/// One file per tunnel of the seed page, plus the quick start (which is also the seed's first
/// tunnel, HTTP CONNECT): a file that goes missing or appears unannounced fails here, so the
/// README's table and the cluster suite are kept in step with the directory.
const EXPECTED_FILES: &[&str] = &[
    "grpc.yaml",
    "h2.yaml",
    "h3.yaml",
    "http2.yaml",
    "pht.yaml",
    "socks5-ws.yaml",
    "tunnel.yaml",
];

fn namespace(example: &Example) -> Namespace<'_> {
    Namespace {
        services: &example.services,
        chains: &example.chains,
        secrets: &example.secrets,
    }
}

/// The rendered config through YAML and the proxy's loader, as the sidecar reads it.
fn loads(what: &str, rendered: &Rendered) {
    let yaml = gost_api::to_yaml(&rendered.config);
    if let Err(e) = gost_api::from_str(&yaml, gost_api::Format::Yaml) {
        panic!("{what}: the proxy refuses the rendered config: {e}\n{yaml}");
    }
}

#[test]
fn the_example_files_are_the_expected_ones() {
    let files: Vec<String> = examples::load_all().into_iter().map(|e| e.file).collect();
    assert_eq!(files, EXPECTED_FILES);
}

/// A JSON Schema validator per kind, from the generated CRDs.
fn validators() -> BTreeMap<String, jsonschema::Validator> {
    gost_api::v1alpha1::crd_files()
        .iter()
        .map(|(file, yaml)| {
            let crd: Value = serde_saphyr::from_str(yaml).expect("the generated CRD is YAML");
            let kind = crd["spec"]["names"]["kind"].as_str().expect("a kind");
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            assert!(schema.is_object(), "{file} has an openAPIV3Schema");
            let validator = jsonschema::validator_for(schema)
                .unwrap_or_else(|e| panic!("{file}: the schema does not compile: {e}"));
            (kind.to_string(), validator)
        })
        .collect()
}

/// The API server refuses, at apply time, gateway fields that would make the gateway's
/// objects invalid: a Service port outside 1-65535 and a resource quantity that is not one.
#[test]
fn the_crd_schema_refuses_bad_gateway_ports_and_quantities() {
    let validators = validators();
    let validator = &validators["GostService"];
    let with_gateway = |gateway: Value| {
        serde_json::json!({
            "apiVersion": "gost.rs/v1alpha1", "kind": "GostService",
            "metadata": {"name": "edge"},
            "spec": {"gateway": gateway, "services": [{"name": "entry", "addr": ":8080"}]}
        })
    };
    let good = with_gateway(serde_json::json!({
        "service": {"ports": {"entry": 443}},
        "resources": {"limits": {"memory": "128Mi", "cpu": "500m"}, "requests": {"cpu": "0.1"}}
    }));
    let errors: Vec<String> = validator
        .iter_errors(&good)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    for bad in [
        serde_json::json!({"service": {"ports": {"entry": 70000}}}),
        serde_json::json!({"service": {"ports": {"entry": 0}}}),
        serde_json::json!({"resources": {"limits": {"memory": "lots"}}}),
        serde_json::json!({"resources": {"requests": {"cpu": "1 core"}}}),
    ] {
        let doc = with_gateway(bad.clone());
        assert!(!validator.is_valid(&doc), "accepted: {bad}");
    }
}

/// An integer the API server stores must be one the operator can read back: a single custom
/// resource that does not deserialize fails the operator's whole list and watch of its kind.
#[test]
fn the_crd_schema_refuses_integers_the_operator_cannot_read() {
    let validators = validators();
    let service = |retries: Value| {
        serde_json::json!({
            "apiVersion": "gost.rs/v1alpha1", "kind": "GostService",
            "metadata": {"name": "web"},
            "spec": {"selector": {}, "services": [
                {"name": "proxy", "addr": ":8080", "handler": {"retries": retries}}
            ]}
        })
    };
    let chain = |max_fails: Value| {
        serde_json::json!({
            "apiVersion": "gost.rs/v1alpha1", "kind": "GostChain",
            "metadata": {"name": "up"},
            "spec": {"hops": [{"name": "hop-0", "selector": {"maxFails": max_fails},
                "nodes": [{"name": "a", "addr": "gw:8080"}]}]}
        })
    };
    for value in [
        0,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        i64::MAX as u64,
    ] {
        let value = Value::from(value);
        for (kind, doc) in [
            ("GostService", service(value.clone())),
            ("GostChain", chain(value.clone())),
        ] {
            let accepted = validators[kind].is_valid(&doc);
            let read = match kind {
                "GostService" => serde_json::from_value::<GostService>(doc).is_ok(),
                _ => serde_json::from_value::<gost_api::v1alpha1::GostChain>(doc).is_ok(),
            };
            assert_eq!(
                accepted, read,
                "{kind} with {value}: schema accepts {accepted}, operator reads {read}"
            );
        }
    }
}

#[test]
fn every_custom_resource_validates_against_its_crd_schema() {
    let validators = validators();
    let mut checked = 0;
    for example in examples::load_all() {
        for doc in &example.documents {
            let Some(validator) = doc["kind"].as_str().and_then(|k| validators.get(k)) else {
                continue;
            };
            let errors: Vec<String> = validator
                .iter_errors(doc)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{}: {} {} does not match its CRD: {errors:#?}",
                example.file,
                doc["kind"],
                doc["metadata"]["name"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 2 * EXPECTED_FILES.len(), "checked {checked}");
}

/// The CEL rules of the CRDs that a JSON Schema validator does not evaluate.
#[test]
fn every_gost_service_meets_the_crd_rules() {
    let addr_rule = jsonschema::validator_for(
        &serde_json::json!({"pattern": gost_api::v1alpha1::LISTEN_ADDR_PATTERN}),
    )
    .unwrap();
    for example in examples::load_all() {
        for gs in &example.services {
            let name = gs.metadata.name.as_deref().unwrap_or_default();
            for svc in &gs.spec.services {
                assert!(
                    addr_rule.is_valid(&serde_json::json!(svc.addr)),
                    "{}: GostService {name} service {}: addr {:?}",
                    example.file,
                    svc.name,
                    svc.addr
                );
            }
            assert!(
                gs.spec.selector.is_some() || gs.spec.gateway.is_some(),
                "{}: GostService {name} has neither selector nor gateway",
                example.file
            );
            let mut names: Vec<&str> = gs.spec.services.iter().map(|s| s.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(
                names.len(),
                gs.spec.services.len(),
                "{}: {name}",
                example.file
            );
            assert!(
                gs.metadata.namespace.is_none(),
                "{}: GostService {name} names a namespace; examples apply in any",
                example.file
            );
        }
    }
}

/// The gateway's Service ports: listen port, or the override in `gateway.service.ports`.
fn service_ports(gs: &GostService, rendered: &Rendered) -> Vec<(ListenPort, i32)> {
    let name = gs.metadata.name.as_deref().unwrap_or_default();
    let overrides = gs
        .spec
        .gateway
        .as_ref()
        .and_then(|g| g.service.as_ref())
        .map(|s| s.ports.clone())
        .unwrap_or_default();
    gateway::listen_ports(name, rendered)
        .into_iter()
        .map(|p| {
            let port = overrides.get(&p.name).copied().unwrap_or(i32::from(p.port));
            (p, port)
        })
        .collect()
}

#[test]
fn every_example_renders_its_gateway_and_its_clients() {
    for example in examples::load_all() {
        let file = &example.file;
        let ns = namespace(&example);
        let settings = Settings::default();

        // Server ends: every service of each gateway renders, and its Service exposes them.
        let mut gateway_ports: BTreeMap<String, Vec<(String, i32)>> = BTreeMap::new();
        for gs in example.gateways() {
            let name = gs.metadata.name.clone().unwrap_or_default();
            let rendered = render_gateway(&ns, gs, &settings, None);
            assert!(
                rendered.problems.is_empty() && rendered.warnings.is_empty(),
                "{file}: gateway {name}: {:#?} {:#?}",
                rendered.problems,
                rendered.warnings
            );
            assert_eq!(
                rendered.config.services.len(),
                gs.spec.services.len(),
                "{file}: gateway {name} renders every service"
            );
            loads(&format!("{file}: gateway {name}"), &rendered);
            let sidecar = SidecarSettings::default();
            let built = gateway::build(gs, &rendered, &GatewaySettings { proxy: &sidecar });
            assert_eq!(
                built.service.as_ref().and_then(|s| s.metadata.name.clone()),
                Some(format!("gost-gw-{name}")),
                "{file}: gateway {name} gets its Service"
            );
            let ports = service_ports(gs, &rendered);
            let exposed: Vec<i32> = built
                .service
                .iter()
                .flat_map(|s| s.spec.iter())
                .flat_map(|s| s.ports.iter().flatten())
                .map(|p| p.port)
                .collect();
            assert_eq!(
                exposed,
                ports.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
                "{file}: gateway {name}'s Service ports"
            );
            gateway_ports.insert(
                gateway::gateway_name(&name),
                ports.into_iter().map(|(p, port)| (p.name, port)).collect(),
            );
        }
        assert!(!gateway_ports.is_empty(), "{file}: no gateway (server end)");

        // Client ends: each Deployment's pods get every service of the GostServices selecting
        // them, and each chain they dial reaches a gateway port of this file.
        let clients = example.client_pods();
        assert!(
            !clients.is_empty(),
            "{file}: no client Deployment to try the tunnel from"
        );
        for (deployment, labels) in &clients {
            let rendered = render_for_pod(&ns, labels, &settings, None);
            assert!(
                rendered.problems.is_empty() && rendered.warnings.is_empty(),
                "{file}: the sidecar of Deployment {deployment}: {:#?} {:#?}",
                rendered.problems,
                rendered.warnings
            );
            let selecting: Vec<&GostService> = example
                .services
                .iter()
                .filter(|gs| {
                    rendered
                        .matched
                        .contains(gs.metadata.name.as_deref().unwrap_or(""))
                })
                .collect();
            assert!(
                !selecting.is_empty(),
                "{file}: no GostService selects {deployment}"
            );
            let expected: usize = selecting.iter().map(|gs| gs.spec.services.len()).sum();
            assert_eq!(
                rendered.config.services.len(),
                expected,
                "{file}: {deployment}"
            );
            loads(&format!("{file}: {deployment}"), &rendered);
            for service in &rendered.config.services {
                assert!(
                    service.handler.chain.is_some(),
                    "{file}: client service {} dials directly, not through the tunnel",
                    service.name
                );
            }
            for chain in &rendered.config.chains {
                for node in chain.hops.iter().flat_map(|h| h.nodes.iter()) {
                    let (host, port) = gost_api::split_host_port(&node.addr)
                        .unwrap_or_else(|| panic!("{file}: node addr {:?}", node.addr));
                    let port: i32 = port.parse().expect("a port number");
                    let ports = gateway_ports.get(host).unwrap_or_else(|| {
                        panic!(
                            "{file}: chain {} dials {host:?}, not a gateway Service of this file \
                             (by its short name, so the file works in any namespace): {:?}",
                            chain.name,
                            gateway_ports.keys()
                        )
                    });
                    assert!(
                        ports.iter().any(|(_, p)| *p == port),
                        "{file}: chain {} dials port {port} of {host}, which exposes {ports:?}",
                        chain.name
                    );
                }
            }
        }
    }
}

/// Each example's credentials and TLS material come from Secrets of the same file, written as
/// `stringData` (readable demo values), and nothing secret is inline in a custom resource.
#[test]
fn secrets_are_demo_values_in_string_data() {
    for example in examples::load_all() {
        for (name, secret) in &example.secrets {
            assert!(
                secret.data.is_none() && secret.string_data.is_some(),
                "{}: Secret {name} should use stringData (readable demo values)",
                example.file
            );
        }
        let text = std::fs::read_to_string(examples::examples_dir().join(&example.file))
            .expect("readable");
        if !example.secrets.is_empty() {
            assert!(
                text.contains("Demo") || text.contains("demo"),
                "{}: say that the Secrets are demo values",
                example.file
            );
        }
    }
}
