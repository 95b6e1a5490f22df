//! The committed CRD files are what `crdgen` writes today, and their schemas are structural:
//! the API server refuses a CRD whose schema is not.

use serde_json::Value;

#[test]
fn committed_crds_are_fresh() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, yaml) in gost_api::v1alpha1::crd_files() {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == yaml,
            "crds/{file} is stale: run `cargo run -p gost-api --features kube --bin crdgen`"
        );
        // The Helm chart installs the same CRDs from its own crds/ folder.
        let charted = std::fs::read_to_string(dir.join("../charts/gost-operator/crds").join(file))
            .unwrap_or_default();
        assert!(
            charted == yaml,
            "charts/gost-operator/crds/{file} is stale: run `cargo run -p gost-api --features kube --bin crdgen`"
        );
    }
}

/// Checks the rules of a structural schema (Kubernetes "Specifying a structural schema"):
/// every node says its type unless it preserves unknown fields or is int-or-string; `properties`
/// and `additionalProperties` never meet; the logical junctors carry no types, defaults or
/// descriptions; `additionalProperties` is never a bare `true`/`false`.
fn check_structural(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        problems.push(format!("{path}: not an object"));
        return;
    };
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !obj.contains_key("type") && !preserve && !int_or_string {
        problems.push(format!("{path}: no type"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    if let Some(Value::Bool(_)) = obj.get("additionalProperties") {
        problems.push(format!("{path}: additionalProperties is a boolean"));
    }
    for key in ["$ref", "definitions", "$defs"] {
        if obj.contains_key(key) {
            problems.push(format!("{path}: `{key}` is not allowed"));
        }
    }
    for junctor in ["oneOf", "anyOf", "allOf", "not"] {
        let Some(branches) = obj.get(junctor) else {
            continue;
        };
        let branches = match branches {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        for branch in branches {
            for key in [
                "type",
                "default",
                "description",
                "nullable",
                "additionalProperties",
            ] {
                if branch.get(key).is_some() {
                    problems.push(format!("{path}.{junctor}: `{key}` inside a junctor"));
                }
            }
        }
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (name, child) in props {
            check_structural(child, &format!("{path}.{name}"), problems);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(items, &format!("{path}[]"), problems);
    }
    if let Some(extra @ Value::Object(_)) = obj.get("additionalProperties") {
        check_structural(extra, &format!("{path}{{}}"), problems);
    }
}

#[test]
fn generated_schemas_are_structural() {
    use kube::CustomResourceExt;
    for crd in [
        gost_api::v1alpha1::GostChain::crd(),
        gost_api::v1alpha1::GostService::crd(),
    ] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        for version in &crd.spec.versions {
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap_or_else(|| panic!("{name} {}: no schema", version.name));
            let schema = serde_json::to_value(schema).unwrap();
            let mut problems = Vec::new();
            check_structural(&schema, &name, &mut problems);
            assert!(
                problems.is_empty(),
                "{name} is not structural:\n{}",
                problems.join("\n")
            );
            // The status subresource is what lets the operator write status without bumping
            // the generation.
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{name}: no status subresource"
            );
            assert!(
                version
                    .additional_printer_columns
                    .as_ref()
                    .is_some_and(|c| c.len() >= 3),
                "{name}: printer columns"
            );
        }
    }
}

#[test]
fn every_field_is_described_for_kubectl_explain() {
    use kube::CustomResourceExt;
    fn walk(node: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(Value::Object(props)) = node.get("properties") {
            for (name, child) in props {
                let here = format!("{path}.{name}");
                // apiVersion/kind/metadata are described by Kubernetes itself.
                let top = matches!(here.as_str(), ".apiVersion" | ".kind" | ".metadata");
                if !top && child.get("description").is_none() {
                    missing.push(here.clone());
                }
                walk(child, &here, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    for crd in [
        gost_api::v1alpha1::GostChain::crd(),
        gost_api::v1alpha1::GostService::crd(),
    ] {
        let schema = crd.spec.versions[0].schema.as_ref().unwrap();
        let schema = serde_json::to_value(schema.open_api_v3_schema.as_ref().unwrap()).unwrap();
        let mut missing = Vec::new();
        walk(&schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );
    }
}

/// The `type` enums of the CRDs list only what the proxy runs (GOST knows more, and the
/// configuration model accepts it): the API server refuses the rest when the resource is
/// written, instead of the operator finding out at render time.
#[test]
fn type_enums_list_only_what_the_proxy_runs() {
    use kube::CustomResourceExt;
    fn schema(
        crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Value {
        let schema = crd.spec.versions[0].schema.as_ref().unwrap();
        serde_json::to_value(schema.open_api_v3_schema.as_ref().unwrap()).unwrap()
    }
    fn names(schema: &Value, pointer: &str) -> Vec<String> {
        let node = schema
            .pointer(pointer)
            .unwrap_or_else(|| panic!("no {pointer}"));
        node["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{pointer}: no enum: {node}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }
    let chain = schema(gost_api::v1alpha1::GostChain::crd());
    let service = schema(gost_api::v1alpha1::GostService::crd());
    let node = "/properties/spec/properties/hops/items/properties/nodes/items/properties";
    let svc = "/properties/spec/properties/services/items/properties";
    for (schema, pointer, expected) in [
        (
            &chain,
            format!("{node}/connector/properties/type"),
            &["http", "http2", "socks5", "relay"][..],
        ),
        (
            &chain,
            format!("{node}/dialer/properties/type"),
            &[
                "tcp", "tls", "ws", "wss", "http2", "h2", "h2c", "grpc", "pht", "phts", "h3",
                "http3",
            ][..],
        ),
        (
            &service,
            format!("{svc}/handler/properties/type"),
            &["auto", "http", "http2", "socks5", "socks4", "relay"][..],
        ),
        (
            &service,
            format!("{svc}/listener/properties/type"),
            &[
                "tcp", "tls", "ws", "wss", "http2", "h2", "h2c", "grpc", "pht", "phts", "h3",
            ][..],
        ),
    ] {
        assert_eq!(names(schema, &pointer), expected, "{pointer}");
        let node = schema.pointer(&pointer).unwrap();
        assert_eq!(node["type"], "string", "{pointer}: {node}");
        assert!(node["default"].is_string(), "{pointer}: {node}");
        let description = node["description"].as_str().unwrap_or_default();
        for name in expected {
            assert!(
                description.contains(&format!("`{name}`")),
                "{pointer}: {description:?} does not name {name}"
            );
        }
    }
    // Each list is the proxy's, as gost-api records it.
    let implemented = |names: &[&str], runs: &dyn Fn(&str) -> bool| -> Vec<String> {
        names
            .iter()
            .filter(|n| runs(n))
            .map(|n| n.to_string())
            .collect()
    };
    use gost_api::{ConnectorType, DialerType, HandlerType, ListenerType};
    assert_eq!(
        names(&chain, &format!("{node}/connector/properties/type")),
        implemented(ConnectorType::NAMES, &|n| ConnectorType::from_name(n)
            .unwrap()
            .implemented())
    );
    assert_eq!(
        names(&chain, &format!("{node}/dialer/properties/type")),
        implemented(DialerType::NAMES, &|n| DialerType::from_name(n)
            .unwrap()
            .implemented())
    );
    assert_eq!(
        names(&service, &format!("{svc}/handler/properties/type")),
        implemented(HandlerType::NAMES, &|n| HandlerType::from_name(n)
            .unwrap()
            .implemented())
    );
    assert_eq!(
        names(&service, &format!("{svc}/listener/properties/type")),
        implemented(ListenerType::NAMES, &|n| ListenerType::from_name(n)
            .unwrap()
            .implemented())
    );
}
