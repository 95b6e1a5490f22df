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
