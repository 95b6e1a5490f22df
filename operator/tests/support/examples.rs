//! The example manifests under `deploy/examples/`, loaded into typed objects: shared by the
//! operator's checks (`tests/examples.rs`) and by the e2e tests that run them on loopback and in
//! a cluster (included there with `#[path]`), so every layer reads the files the same way.

// Each including test uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gost_api::v1alpha1::{GostChain, GostService};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

/// `deploy/examples/` of this checkout.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .join("deploy/examples")
}

/// One example file, its documents sorted by kind.
#[derive(Clone, Debug)]
pub struct Example {
    /// The file name, e.g. `tunnel.yaml`.
    pub file: String,
    /// Every document, as written (YAML read into JSON values), in file order.
    pub documents: Vec<Value>,
    pub services: Vec<GostService>,
    pub chains: Vec<GostChain>,
    /// By name, as rendering takes them.
    pub secrets: BTreeMap<String, Secret>,
    pub deployments: Vec<Deployment>,
}

impl Example {
    /// The GostServices the operator runs as gateways (the server ends).
    pub fn gateways(&self) -> impl Iterator<Item = &GostService> {
        self.services.iter().filter(|gs| gs.spec.gateway.is_some())
    }

    /// The pod labels of each client Deployment, by Deployment name.
    pub fn client_pods(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.deployments
            .iter()
            .map(|d| {
                let name = d.metadata.name.clone().unwrap_or_default();
                let labels = d
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.metadata.as_ref())
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                (name, labels)
            })
            .collect()
    }
}

/// Every `*.yaml` under `deploy/examples/`, sorted by name.
pub fn load_all() -> Vec<Example> {
    let dir = examples_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files.iter().map(|p| load(p)).collect()
}

/// One example file; panics naming the file, the document and the field when something in it
/// does not load.
pub fn load(path: &Path) -> Example {
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a UTF-8 file name")
        .to_string();
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let documents: Vec<Value> = serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"))
        .into_iter()
        // The comment block before the first `---` is an empty document.
        .filter(|doc| !doc.is_null())
        .collect();
    let mut example = Example {
        file: file.clone(),
        documents: documents.clone(),
        services: Vec::new(),
        chains: Vec::new(),
        secrets: BTreeMap::new(),
        deployments: Vec::new(),
    };
    for (i, doc) in documents.into_iter().enumerate() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let at = format!(
            "{file} document {} ({kind} {})",
            i + 1,
            doc["metadata"]["name"]
        );
        match (
            doc["apiVersion"].as_str().unwrap_or_default(),
            kind.as_str(),
        ) {
            ("gost.rs/v1alpha1", "GostService") => example.services.push(typed(&at, doc)),
            ("gost.rs/v1alpha1", "GostChain") => example.chains.push(typed(&at, doc)),
            ("v1", "Secret") => {
                let secret: Secret = typed(&at, doc);
                let name = secret.metadata.name.clone().unwrap_or_default();
                example.secrets.insert(name, secret);
            }
            ("apps/v1", "Deployment") => example.deployments.push(typed(&at, doc)),
            (api, kind) => panic!(
                "{at}: unexpected apiVersion {api:?} kind {kind:?}; examples hold GostServices, \
                 GostChains, Secrets and Deployments"
            ),
        }
    }
    example
}

/// `doc` as a `T`, checked to hold nothing `T` drops: written back, it must be the same
/// document, so a misspelt or misplaced field fails here instead of being ignored.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(at: &str, doc: Value) -> T {
    let value: T = serde_path_to_error::deserialize(doc.clone())
        .unwrap_or_else(|e| panic!("{at}: {} at {}", e.inner(), e.path()));
    let back = serde_json::to_value(&value).expect("typed objects serialize");
    if back != doc {
        panic!(
            "{at}: fields were lost or changed on reading (unknown or misplaced fields?)\n\
             written:\n{doc:#}\nread back:\n{back:#}"
        );
    }
    value
}
