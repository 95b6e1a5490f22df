//! Issue 6's scale in the in-memory API: namespaces of GostServices, each with its GostChain
//! and two referenced Secrets, and injected pods in ReplicaSets. Shared by the ignored
//! measurement in `tests/reconcile.rs` and by `examples/bench.rs` (included there with
//! `#[path]`), so both measure the same objects.

use gost_api::v1alpha1::{GostChain, GostService};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube_fake_client::ClientBuilder;
use serde_json::{Value, json};

/// The shape of a seeded API.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Namespaces, named `ns-0`, `ns-1`, ...
    pub namespaces: usize,
    /// GostServices per namespace, `svc-0`, ...; each has a GostChain `chain-K` and references
    /// the Secrets `users-K` (its proxy's users) and `relay-K` (its chain's credentials).
    pub gost_services: usize,
    /// ReplicaSets per namespace, `wW-rs`; workload W is selected by GostService W mod
    /// `gost_services`.
    pub workloads: usize,
    /// Injected pods per ReplicaSet.
    pub pods_per_workload: usize,
}

impl Scale {
    /// The name of namespace `i`.
    pub fn namespace(i: usize) -> String {
        format!("ns-{i}")
    }

    /// Injected pods in all namespaces.
    pub fn pods(&self) -> usize {
        self.namespaces * self.workloads * self.pods_per_workload
    }

    /// The ReplicaSets (in every namespace) whose pods GostService `k` selects.
    pub fn workloads_of(&self, k: usize) -> impl Iterator<Item = String> + '_ {
        (0..self.workloads)
            .filter(move |w| w % self.gost_services == k)
            .map(replica_set_name)
    }

    /// Every object of the seeded API.
    pub fn objects(&self) -> Vec<Value> {
        let mut objects = Vec::new();
        for n in 0..self.namespaces {
            let ns = Scale::namespace(n);
            for k in 0..self.gost_services {
                objects.push(gost_service(&ns, k));
                objects.push(chain(&ns, k));
                objects.push(secret(
                    &ns,
                    &format!("users-{k}"),
                    &[("username", "alice"), ("password", "s3cret")],
                ));
                objects.push(secret(
                    &ns,
                    &format!("relay-{k}"),
                    &[("username", "bob"), ("password", "p@ss")],
                ));
            }
            for w in 0..self.workloads {
                let rs = replica_set_name(w);
                let selected_by = format!("svc-{}", w % self.gost_services);
                objects.push(json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": rs, "namespace": ns, "uid": replica_set_uid(&ns, &rs)},
                    "spec": {"selector": {"matchLabels": {"app": format!("w{w}")}}}
                }));
                for i in 0..self.pods_per_workload {
                    objects.push(replica_set_pod(
                        &ns,
                        &rs,
                        &format!("{rs}-{i}"),
                        &selected_by,
                    ));
                }
            }
        }
        objects
    }
}

/// The name of ReplicaSet `w`.
pub fn replica_set_name(w: usize) -> String {
    format!("w{w}-rs")
}

/// The UID of ReplicaSet `rs` in `ns`.
pub fn replica_set_uid(ns: &str, rs: &str) -> String {
    format!("uid-{ns}-{rs}")
}

/// An injected pod of ReplicaSet `rs`, selected by GostService `gost_service` (an empty `name`
/// is a pod at admission, which has only its `generateName`).
pub fn replica_set_pod(ns: &str, rs: &str, name: &str, gost_service: &str) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "generateName": format!("{rs}-"), "namespace": ns,
            "labels": {"app": rs.trim_end_matches("-rs"), "gost.rs/service": gost_service,
                       "gost.rs/injected": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                                 "uid": replica_set_uid(ns, rs), "controller": true}]
        },
        "spec": {"containers": [{"name": "app", "image": "app"}]}
    });
    if name.is_empty() {
        pod["metadata"].as_object_mut().unwrap().remove("name");
    }
    pod
}

/// The config Secret of ReplicaSet `rs`'s pods (they all have the same labels), selected by
/// GostService `gost_service`.
pub fn replica_set_secret(ns: &str, rs: &str, gost_service: &str) -> String {
    let pod: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(replica_set_pod(ns, rs, "", gost_service)).unwrap();
    gost_operator::group::Group::of_pod(&pod.metadata)
        .expect("a ReplicaSet's pod has a group")
        .secret_name()
}

/// GostService `svc-K`: an authenticated HTTP proxy dialling through `chain-K`, and SOCKS5.
pub fn gost_service(ns: &str, k: usize) -> Value {
    json!({
        "apiVersion": "gost.rs/v1alpha1", "kind": "GostService",
        "metadata": {"name": format!("svc-{k}"), "namespace": ns,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "selector": {"matchLabels": {"gost.rs/service": format!("svc-{k}")}},
            "services": [
                {"name": "http", "addr": ":8000",
                 "handler": {"type": "http", "chain": format!("chain-{k}"),
                             "auth": {"secretRef": {"name": format!("users-{k}")}}}},
                {"name": "socks", "addr": ":1080", "handler": {"type": "socks5"}}
            ]
        }
    })
}

fn chain(ns: &str, k: usize) -> Value {
    json!({
        "apiVersion": "gost.rs/v1alpha1", "kind": "GostChain",
        "metadata": {"name": format!("chain-{k}"), "namespace": ns},
        "spec": {"hops": [{"name": "hop-0", "nodes": [{
            "name": "gw", "addr": "gateway.tunnels.svc:8443",
            "connector": {"type": "relay", "auth": {"secretRef": {"name": format!("relay-{k}")}}}
        }]}]}
    })
}

/// An Opaque Secret with these string pairs.
pub fn secret(ns: &str, name: &str, pairs: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| {
            let b = serde_json::to_value(ByteString(v.as_bytes().to_vec())).unwrap();
            (k.to_string(), b)
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
           "data": data})
}

/// The in-memory API holding `objects`, with the operator's resources registered.
pub async fn fake_api(objects: Vec<Value>) -> Client {
    ClientBuilder::new()
        .with_resource::<GostService>()
        .with_resource::<GostChain>()
        // GostService and GostChain have no `Default`, which the fake's status switch needs;
        // status patches still leave their spec and generation alone.
        .with_status_subresource::<Deployment>()
        .with_runtime_objects(objects)
        .build()
        .await
        .expect("the in-memory API starts")
}
