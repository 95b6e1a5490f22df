//! An AdmissionReview for a pod, as the API server sends it: shared by the webhook tests and
//! the operator benchmark.

use serde_json::{Value, json};

/// A `CREATE pods` AdmissionReview (v1) for `pod` in `namespace`.
pub fn review(uid: &str, namespace: &str, pod: &Value, dry_run: bool) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": dry_run,
        }
    })
}
