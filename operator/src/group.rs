//! Config groups: the pods whose sidecars share one rendered config Secret.
//!
//! A sidecar's config depends on its pod's labels (GostService selectors match them), so pods
//! share a Secret only when they have the same controller owner (the ReplicaSet, StatefulSet,
//! DaemonSet, Job... that made them) *and* the same labels. The pods of one ReplicaSet do (one
//! template, one `pod-template-hash`), and share one Secret; StatefulSet pods do not (each
//! carries its own `statefulset.kubernetes.io/pod-name`), nor do the pods of two revisions of
//! a rollout (`controller-revision-hash`), and each such label set gets its own Secret. The
//! Secret's name holds the owner and a hash of the labels, both known at admission, so the
//! webhook names the Secret before the pod exists; the webhook records the name in the pod's
//! [`crate::inject::INJECTED_ANNOTATION`], which the controller follows (labels may change
//! later, a mounted volume may not). A pod without a controller owner is its own group.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The label the injection webhook puts on every pod it injects; the controller watches only
/// pods that carry it (with the value `true`).
pub const INJECTED_LABEL: &str = "gost.rs/injected";
/// The value of [`INJECTED_LABEL`] on injected pods.
pub const INJECTED_VALUE: &str = "true";
/// The label naming the config group a rendered Secret belongs to.
pub const CONFIG_GROUP_LABEL: &str = "gost.rs/config-group";
/// The standard label saying who manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`]; the controller lists its own Secrets by it.
pub const MANAGED_BY: &str = "gost-operator";
/// Prefix of every config group Secret.
pub const SECRET_PREFIX: &str = "gost-sidecar-";

/// Kubernetes object names (DNS subdomains) are at most 253 characters.
const MAX_NAME_LEN: usize = 253;
/// Label values are at most 63 characters.
const MAX_LABEL_VALUE_LEN: usize = 63;
/// Hex digits of SHA-256 kept in a shortened name: 64 bits, so two long names sharing a prefix
/// collide with negligible probability.
const HASH_HEX_LEN: usize = 16;

/// The pods that share one config Secret: those of one owner with one set of labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Group {
    /// `apiVersion` of the owner (`v1` for a bare pod).
    pub api_version: String,
    /// Kind of the owner (`Pod` for a bare pod).
    pub kind: String,
    /// Name of the owner.
    pub name: String,
    /// UID of the owner; `None` for a bare pod at admission, before it is stored.
    pub uid: Option<String>,
    /// [`labels_hash`] of the pods' labels; `None` for a bare pod (a group of one).
    pub labels: Option<String>,
}

impl Group {
    /// The group of a pod with this metadata: its controller owner and its labels, else the
    /// pod itself. `None` when the pod has neither a controller owner nor a name (a bare pod
    /// with only `generateName` at admission: its name is not known yet).
    pub fn of_pod(meta: &ObjectMeta) -> Option<Group> {
        if let Some(owner) = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
        {
            return Some(Group {
                api_version: owner.api_version.clone(),
                kind: owner.kind.clone(),
                name: owner.name.clone(),
                uid: Some(owner.uid.clone()).filter(|u| !u.is_empty()),
                labels: Some(labels_hash(meta.labels.as_ref())),
            });
        }
        let name = meta.name.clone().filter(|n| !n.is_empty())?;
        Some(Group {
            api_version: "v1".to_string(),
            kind: "Pod".to_string(),
            name,
            uid: meta.uid.clone().filter(|u| !u.is_empty()),
            labels: None,
        })
    }

    /// The name of the group's config Secret.
    pub fn secret_name(&self) -> String {
        match &self.labels {
            Some(hash) => secret_name(&self.kind, &format!("{}-{hash}", self.name)),
            None => secret_name(&self.kind, &self.name),
        }
    }

    /// The workload, as `Kind/name` (what a GostService's status counts and its events list).
    pub fn workload(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// The value of [`CONFIG_GROUP_LABEL`] on the group's Secret.
    pub fn label_value(&self) -> String {
        label_value(&self.secret_name())
    }

    /// The reference that makes the owner's deletion collect the Secret. Not a controller
    /// reference (the workload's controller owns it, not us) and it does not block the owner's
    /// deletion. `None` until the owner has a UID.
    pub fn owner_reference(&self) -> Option<OwnerReference> {
        Some(OwnerReference {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            uid: self.uid.clone()?,
            controller: Some(false),
            block_owner_deletion: Some(false),
        })
    }
}

/// A hash of a pod's labels, without [`INJECTED_LABEL`]: the webhook adds that label to the pod
/// it admits, so the labels at admission and once stored hash alike.
pub fn labels_hash(labels: Option<&BTreeMap<String, String>>) -> String {
    let mut labels = labels.cloned().unwrap_or_default();
    labels.remove(INJECTED_LABEL);
    let json = serde_json::to_vec(&labels).expect("a map of strings serializes");
    short_hash(&json)
}

/// `gost-sidecar-<kind>-<name>` as a DNS subdomain: lowercased, other characters replaced by
/// `-`, and shortened with a hash of the full name when longer than 253 characters.
pub fn secret_name(kind: &str, owner_name: &str) -> String {
    let full = format!("{SECRET_PREFIX}{}-{owner_name}", kind.to_ascii_lowercase());
    shorten(&sanitize(&full), &full, MAX_NAME_LEN)
}

/// A label value for `name`: the name itself when it fits in 63 characters, else a shortened
/// name ending in a hash of it.
pub fn label_value(name: &str) -> String {
    let valid: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    shorten(&valid, name, MAX_LABEL_VALUE_LEN)
}

/// The first 16 hex digits of SHA-256 of `data`: stable across builds and versions (names made
/// from it must not change when the operator is upgraded).
pub fn short_hash(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref()[..HASH_HEX_LEN / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lowercase alphanumerics, `-` and `.`, starting and ending with an alphanumeric.
fn sanitize(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// `name` when it fits in `max`, else its first characters, `-` and the hash of `original`, so
/// that two long names differing only at the end stay distinct.
fn shorten(name: &str, original: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let hash = short_hash(original.as_bytes());
    let keep = max - HASH_HEX_LEN - 1;
    let head = name[..keep].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}-{hash}")
}

/// Labels of a group's config Secret.
pub fn secret_labels(group: &Group) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (CONFIG_GROUP_LABEL.to_string(), group.label_value()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            controller,
            block_owner_deletion: None,
        }
    }

    fn is_dns_subdomain(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    }

    #[test]
    fn the_controller_owner_is_the_group() {
        let meta = ObjectMeta {
            name: Some("web-7d9f-abcde".into()),
            owner_references: Some(vec![
                owner("Foo", "not-the-controller", None),
                owner("ReplicaSet", "web-7d9f", Some(true)),
            ]),
            ..ObjectMeta::default()
        };
        let g = Group::of_pod(&meta).unwrap();
        assert_eq!(
            (g.kind.as_str(), g.name.as_str(), g.uid.as_deref()),
            ("ReplicaSet", "web-7d9f", Some("uid-web-7d9f"))
        );
        assert_eq!(
            g.secret_name(),
            format!("gost-sidecar-replicaset-web-7d9f-{}", labels_hash(None))
        );
        assert_eq!(g.workload(), "ReplicaSet/web-7d9f");
        let o = g.owner_reference().unwrap();
        assert_eq!(
            (o.controller, o.block_owner_deletion),
            (Some(false), Some(false))
        );
        assert_eq!(o.api_version, "apps/v1");
    }

    #[test]
    fn pods_of_one_owner_share_a_group_only_with_the_same_labels() {
        let pod = |labels: &[(&str, &str)]| {
            let meta = ObjectMeta {
                owner_references: Some(vec![owner("StatefulSet", "db", Some(true))]),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            };
            Group::of_pod(&meta).unwrap().secret_name()
        };
        let db0 = pod(&[
            ("app", "db"),
            ("statefulset.kubernetes.io/pod-name", "db-0"),
        ]);
        let db1 = pod(&[
            ("app", "db"),
            ("statefulset.kubernetes.io/pod-name", "db-1"),
        ]);
        assert_ne!(db0, db1);
        assert!(db0.starts_with("gost-sidecar-statefulset-db-") && is_dns_subdomain(&db0));
        // The label the webhook adds does not move a pod to another group.
        let injected = pod(&[
            ("app", "db"),
            ("statefulset.kubernetes.io/pod-name", "db-0"),
            (INJECTED_LABEL, INJECTED_VALUE),
        ]);
        assert_eq!(db0, injected);
        assert_eq!(
            db0,
            pod(&[
                ("statefulset.kubernetes.io/pod-name", "db-0"),
                ("app", "db")
            ]),
            "stable"
        );
    }

    #[test]
    fn kinds_give_distinct_names() {
        for (kind, want) in [
            ("StatefulSet", "gost-sidecar-statefulset-db"),
            ("DaemonSet", "gost-sidecar-daemonset-db"),
            ("Job", "gost-sidecar-job-db"),
            ("Pod", "gost-sidecar-pod-db"),
        ] {
            assert_eq!(secret_name(kind, "db"), want);
        }
    }

    #[test]
    fn a_bare_pod_is_its_own_group_and_owns_its_secret_once_it_has_a_uid() {
        let mut meta = ObjectMeta {
            name: Some("debug".into()),
            owner_references: Some(vec![owner("Foo", "x", Some(false))]),
            ..ObjectMeta::default()
        };
        let g = Group::of_pod(&meta).unwrap();
        assert_eq!(g.secret_name(), "gost-sidecar-pod-debug");
        assert!(g.owner_reference().is_none(), "no uid at admission");
        meta.uid = Some("u1".into());
        let o = Group::of_pod(&meta).unwrap().owner_reference().unwrap();
        assert_eq!((o.kind.as_str(), o.uid.as_str()), ("Pod", "u1"));
        let unnamed = ObjectMeta {
            generate_name: Some("debug-".into()),
            ..ObjectMeta::default()
        };
        assert!(Group::of_pod(&unnamed).is_none());
    }

    #[test]
    fn names_are_sanitized() {
        let n = secret_name("My_Kind", "A.b_c");
        assert_eq!(n, "gost-sidecar-my-kind-a.b-c");
        assert!(is_dns_subdomain(&n));
        assert!(is_dns_subdomain(&secret_name("Pod", "x-")));
    }

    #[test]
    fn long_names_are_shortened_with_a_hash_and_stay_distinct() {
        let a = "a".repeat(250);
        let b = format!("{}b", "a".repeat(249));
        let (na, nb) = (secret_name("ReplicaSet", &a), secret_name("ReplicaSet", &b));
        assert_eq!(na.len(), 253);
        assert!(is_dns_subdomain(&na) && is_dns_subdomain(&nb), "{na}");
        assert_ne!(na, nb);
        assert!(na.starts_with("gost-sidecar-replicaset-aaa"));
        assert_eq!(na, secret_name("ReplicaSet", &a), "stable");
        // Exactly at the limit: kept as is.
        let fits = "x".repeat(253 - "gost-sidecar-pod-".len());
        assert_eq!(secret_name("Pod", &fits).len(), 253);
        assert!(!secret_name("Pod", &fits).contains(&short_hash(fits.as_bytes())));
    }

    #[test]
    fn label_values_fit_in_63() {
        assert_eq!(label_value("gost-sidecar-pod-x"), "gost-sidecar-pod-x");
        let long = secret_name("ReplicaSet", &"n".repeat(100));
        let v = label_value(&long);
        assert_eq!(v.len(), 63);
        assert!(v.ends_with(&short_hash(long.as_bytes())));
        assert_eq!(
            short_hash(b"abc"),
            "ba7816bf8f01cfea",
            "SHA-256, not a per-build hash"
        );
    }
}
