//! Reconciliation against kube-fake-client's in-memory API. It has no watch, so each test
//! refills the controller's stores by listing ([`Stores::list`]) and calls
//! [`Context::reconcile`] directly, as the controller's queue would after a change.

use gost_api::v1alpha1::{GostChain, GostService};
use gost_operator::controller::{Context, Settings, Stores, Summary};
use gost_operator::group::Group;
use gost_operator::render::CONFIG_KEY;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

mod support {
    pub mod scale;
}
use support::scale::{self, Scale};

const NS: &str = "apps";
const RS_UID: &str = "0b9d6a4e-rs-web";

fn replica_set() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-5d4f", "namespace": NS, "uid": RS_UID},
        "spec": {"selector": {"matchLabels": {"app": "web"}}}
    })
}

fn rs_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": NS,
            "labels": {"app": "web", "gost.rs/injected": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f",
                                 "uid": RS_UID, "controller": true}]
        },
        "spec": {"containers": [{"name": "app", "image": "app"}]}
    })
}

/// The config Secret the webhook and the controller name for `pod`.
fn secret_of(pod: &Value) -> String {
    let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
    Group::of_pod(&pod.metadata).unwrap().secret_name()
}

/// The config Secret of the ReplicaSet's pods (they have the same labels: one Secret).
fn group_secret() -> String {
    secret_of(&rs_pod("web-5d4f-a"))
}

fn bare_pod(name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": uid,
                     "labels": {"app": "web", "gost.rs/injected": "true"}},
        "spec": {"containers": [{"name": "app", "image": "app"}]}
    })
}

fn secret(name: &str, pairs: &[(&str, &str)]) -> Value {
    scale::secret(NS, name, pairs)
}

fn web_service(chain: &str) -> Value {
    json!({
        "apiVersion": "gost.rs/v1alpha1", "kind": "GostService",
        "metadata": {"name": "web", "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "services": [
                {"name": "proxy", "addr": ":8000",
                 "handler": {"type": "http", "chain": chain, "auth": {"secretRef": {"name": "users"}}}},
                {"name": "socks", "addr": ":1080", "handler": {"type": "socks5"}}
            ]
        }
    })
}

fn chain(name: &str, creds: &str) -> Value {
    json!({
        "apiVersion": "gost.rs/v1alpha1", "kind": "GostChain",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"hops": [{"name": "hop-0", "nodes": [{
            "name": "gw", "addr": "gateway.tunnels.svc:8443",
            "connector": {"type": "relay", "auth": {"secretRef": {"name": creds}}}
        }]}]}
    })
}

/// The namespace of most tests: a ReplicaSet's pod, a GostService selecting it through a
/// GostChain, and the Secrets they reference.
fn base() -> Vec<Value> {
    vec![
        replica_set(),
        rs_pod("web-5d4f-a"),
        web_service("to-gateway"),
        chain("to-gateway", "relay-creds"),
        secret("users", &[("username", "alice"), ("password", "s3cret")]),
        secret("relay-creds", &[("username", "bob"), ("password", "p@ss")]),
    ]
}

async fn setup(objects: Vec<Value>) -> (Client, Context) {
    let client = scale::fake_api(objects).await;
    let stores = Stores::list(&client, Some(NS)).await.expect("stores fill");
    let ctx = Context::new(client.clone(), Settings::default(), stores);
    (client, ctx)
}

/// What the controller does after a watch event: refill the caches, reconcile the namespace.
async fn reconcile(client: &Client, ctx: &Context) -> Summary {
    ctx.set_stores(Stores::list(client, Some(NS)).await.expect("stores fill"));
    ctx.reconcile(NS).await.expect("reconcile succeeds")
}

fn api<K>(client: &Client) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client.clone(), NS)
}

/// The rendered config of a Secret, loaded as the proxy loads it.
fn config_of(s: &Secret) -> gost_api::Config {
    let text = String::from_utf8(s.data.as_ref().unwrap()[CONFIG_KEY].0.clone()).unwrap();
    gost_api::from_str(&text, gost_api::Format::Yaml)
        .unwrap_or_else(|e| panic!("the proxy refuses the rendered config: {e}\n{text}"))
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
}

/// Replaces GostService `name` with `change` made to it, as `kubectl edit` does.
async fn edit(client: &Client, name: &str, change: impl FnOnce(&mut GostService)) {
    let services = api::<GostService>(client);
    let mut gs = services.get(name).await.unwrap();
    change(&mut gs);
    services
        .replace(name, &PostParams::default(), &gs)
        .await
        .unwrap();
}

/// The ports of the sidecar that admitting `pod` configures (and writes the config for).
async fn admitted_ports(ctx: &Context, pod: &Pod) -> Vec<u16> {
    ctx.ensure_pod_config(NS, pod, false)
        .await
        .unwrap()
        .listen_ports
        .iter()
        .map(|p| p.port)
        .collect()
}

async fn events(client: &Client) -> Vec<(String, String)> {
    api::<Event>(client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect()
}

async fn managed_secrets(client: &Client) -> Vec<Secret> {
    api::<Secret>(client)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=gost-operator"))
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn a_group_secret_is_rendered_owned_by_the_workload_and_reported() {
    let (client, ctx) = setup(base()).await;
    let summary = reconcile(&client, &ctx).await;
    assert_eq!(summary.groups, 1);

    let s = api::<Secret>(&client).get(&group_secret()).await.unwrap();
    let config = config_of(&s);
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web/proxy", "web/socks"]);
    assert_eq!(
        config.services[0].handler.auth.as_ref().unwrap().password,
        "s3cret"
    );
    assert_eq!(config.chains[0].name, "to-gateway");
    let owner = &s.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("ReplicaSet", "web-5d4f", RS_UID)
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(false), Some(false))
    );
    assert_eq!(s.labels()["app.kubernetes.io/managed-by"], "gost-operator");
    assert!(
        s.name_any()
            .starts_with("gost-sidecar-replicaset-web-5d4f-")
    );
    assert_eq!(s.labels()["gost.rs/config-group"], group_secret());

    let gs = api::<GostService>(&client).get("web").await.unwrap();
    let status = gs.status.expect("status written");
    assert_eq!(status.observed_generation, gs.metadata.generation);
    assert!(status.observed_generation.is_some());
    assert_eq!(
        (status.services, status.matched_workloads),
        (Some(2), Some(1))
    );
    let rendered = condition(&status.conditions, "Rendered");
    assert_eq!(
        (rendered.status.as_str(), rendered.reason.as_str()),
        ("True", "Rendered")
    );
    assert_eq!(condition(&status.conditions, "Ready").status, "True");

    let gc = api::<GostChain>(&client).get("to-gateway").await.unwrap();
    let status = gc.status.expect("chain status written");
    assert_eq!(status.hops, Some(1));
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Valid")
    );

    assert_eq!(
        events(&client).await,
        [("Normal".to_string(), "Rendered".to_string())],
        "one event: the matched workloads changed (from none to one)"
    );
}

#[tokio::test]
async fn the_secret_follows_the_gost_service_and_referenced_secrets() {
    let (client, ctx) = setup(base()).await;
    reconcile(&client, &ctx).await;
    let services = api::<GostService>(&client);
    edit(&client, "web", |gs| {
        gs.spec.services[0].addr = ":8080".into();
    })
    .await;
    reconcile(&client, &ctx).await;
    let s = api::<Secret>(&client).get(&group_secret()).await.unwrap();
    assert_eq!(config_of(&s).services[0].addr, ":8080");
    let gs = services.get("web").await.unwrap();
    assert_eq!(
        gs.status.unwrap().observed_generation,
        gs.metadata.generation,
        "the status describes the new generation"
    );

    let users = secret("users", &[("username", "alice"), ("password", "n3w-pass")]);
    api::<Secret>(&client)
        .patch("users", &PatchParams::default(), &Patch::Merge(users))
        .await
        .unwrap();
    reconcile(&client, &ctx).await;
    let s = api::<Secret>(&client).get(&group_secret()).await.unwrap();
    let config = config_of(&s);
    assert_eq!(
        config.services[0].handler.auth.as_ref().unwrap().password,
        "n3w-pass"
    );

    let creds = secret("relay-creds", &[("username", "carol"), ("password", "x")]);
    api::<Secret>(&client)
        .patch("relay-creds", &PatchParams::default(), &Patch::Merge(creds))
        .await
        .unwrap();
    reconcile(&client, &ctx).await;
    let s = api::<Secret>(&client).get(&group_secret()).await.unwrap();
    let node = &config_of(&s).chains[0].hops[0].nodes[0];
    assert_eq!(node.connector.auth.as_ref().unwrap().username, "carol");
}

#[tokio::test]
async fn a_missing_chain_is_reported_and_the_other_services_still_render() {
    let mut objects = base();
    objects[2] = web_service("nope");
    let (client, ctx) = setup(objects).await;
    reconcile(&client, &ctx).await;

    let s = api::<Secret>(&client).get(&group_secret()).await.unwrap();
    let names: Vec<String> = config_of(&s).services.into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["web/socks"]);

    let status = api::<GostService>(&client)
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap();
    let rendered = condition(&status.conditions, "Rendered");
    assert_eq!(
        (rendered.status.as_str(), rendered.reason.as_str()),
        ("False", "ChainNotFound")
    );
    assert!(
        rendered
            .message
            .starts_with("ChainNotFound: spec.services[proxy].handler.chain \"nope\"")
            && rendered.message.contains("no GostChain named \"nope\"")
            && rendered.message.contains("GostChains here: to-gateway"),
        "{}",
        rendered.message
    );
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "RenderProblems")
    );
    assert_eq!(status.matched_workloads, Some(1));
    let events = events(&client).await;
    assert!(
        events.contains(&("Warning".into(), "ChainNotFound".into())),
        "{events:?}"
    );

    // Fixing it flips the conditions and records no second warning.
    let services = api::<GostService>(&client);
    edit(&client, "web", |gs| {
        gs.spec.services[0].handler.chain = Some("to-gateway".into());
    })
    .await;
    reconcile(&client, &ctx).await;
    let status = services.get("web").await.unwrap().status.unwrap();
    assert_eq!(condition(&status.conditions, "Rendered").status, "True");
    assert_eq!(condition(&status.conditions, "Ready").status, "True");
    let after = self::events(&client).await;
    assert_eq!(
        after.iter().filter(|(t, _)| t == "Warning").count(),
        1,
        "{after:?}"
    );
}

#[tokio::test]
async fn a_bad_edit_keeps_what_running_pods_have_until_fixed_or_removed() {
    let mut objects = base();
    objects.push(edge_service(json!({})));
    let (client, ctx) = setup(objects).await;
    reconcile(&client, &ctx).await;
    let before = api::<Secret>(&client).get(&group_secret()).await.unwrap();
    let gateway_before = api::<Secret>(&client).get("gost-gw-edge").await.unwrap();
    let services = api::<GostService>(&client);

    // A typo in the chain's name: the pods keep running web/proxy as they have it, and its
    // config Secret is not even rewritten.
    edit(&client, "web", |gs| {
        gs.spec.services[0].handler.chain = Some("to-gatway".into());
    })
    .await;
    // And the gateway's first service gets an address without a port.
    edit(&client, "edge", |edge| {
        edge.spec.services[0].addr = "no-port".into();
    })
    .await;
    reconcile(&client, &ctx).await;
    let after = api::<Secret>(&client).get(&group_secret()).await.unwrap();
    assert_eq!(after.data, before.data);
    assert_eq!(after.resource_version(), before.resource_version());
    let gateway_after = api::<Secret>(&client).get("gost-gw-edge").await.unwrap();
    assert_eq!(gateway_after.data, gateway_before.data);

    let status = services.get("web").await.unwrap().status.unwrap();
    let rendered = condition(&status.conditions, "Rendered");
    assert_eq!(
        (rendered.status.as_str(), rendered.reason.as_str()),
        ("False", "ChainNotFound")
    );
    assert!(
        rendered.message.contains("\"to-gatway\""),
        "{}",
        rendered.message
    );
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(ready.status, "False");
    assert!(
        ready
            .message
            .ends_with("keep running as last rendered until fixed or removed: \"proxy\" (in ReplicaSet/web-5d4f)"),
        "{}",
        ready.message
    );
    let status = services.get("edge").await.unwrap().status.unwrap();
    let ready = condition(&status.conditions, "Ready");
    assert!(
        ready
            .message
            .ends_with("\"entry\" (in gateway Deployment/gost-gw-edge)"),
        "{}",
        ready.message
    );

    // A new pod of the workload gets the same config as its siblings.
    let pod: Pod = serde_json::from_value(rs_pod("")).unwrap();
    assert_eq!(admitted_ports(&ctx, &pod).await, [8000, 1080]);
    let admitted = api::<Secret>(&client).get(&group_secret()).await.unwrap();
    assert_eq!(admitted.resource_version(), before.resource_version());

    // A selector that cannot be evaluated: the workload keeps what it runs, at admission too.
    let mut gs = services.get("web").await.unwrap();
    let selector = gs.spec.selector.clone();
    gs.spec.selector = Some(
        serde_json::from_value(json!({"matchExpressions": [{"key": "app", "operator": "Like"}]}))
            .unwrap(),
    );
    services
        .replace("web", &PostParams::default(), &gs)
        .await
        .unwrap();
    reconcile(&client, &ctx).await;
    assert_eq!(admitted_ports(&ctx, &pod).await, [8000, 1080]);
    let s = api::<Secret>(&client).get(&group_secret()).await.unwrap();
    assert_eq!(s.data, before.data);
    let status = services.get("web").await.unwrap().status.unwrap();
    assert_eq!(status.matched_workloads, Some(1));
    let rendered = condition(&status.conditions, "Rendered");
    assert!(
        rendered.message.contains("InvalidSelector: spec.selector"),
        "{}",
        rendered.message
    );
    edit(&client, "web", |gs| {
        gs.spec.selector = selector;
    })
    .await;

    // Removing the service is meant: it goes.
    let mut gs = services.get("web").await.unwrap();
    gs.spec.services.remove(0);
    services
        .replace("web", &PostParams::default(), &gs)
        .await
        .unwrap();
    reconcile(&client, &ctx).await;
    let s = api::<Secret>(&client).get(&group_secret()).await.unwrap();
    let names: Vec<String> = config_of(&s).services.into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["web/socks"]);
    let status = services.get("web").await.unwrap().status.unwrap();
    assert_eq!(condition(&status.conditions, "Ready").status, "True");

    // Fixing the gateway's service renders the fix.
    edit(&client, "edge", |edge| {
        edge.spec.services[0].addr = ":9090".into();
    })
    .await;
    reconcile(&client, &ctx).await;
    let s = api::<Secret>(&client).get("gost-gw-edge").await.unwrap();
    assert_eq!(config_of(&s).services[0].addr, ":9090");
}

#[tokio::test]
async fn a_second_reconcile_without_changes_writes_nothing() {
    let (client, ctx) = setup(base()).await;
    let first = reconcile(&client, &ctx).await;
    assert!(first.writes >= 3, "secret + two statuses: {first:?}");
    let secret_rv = api::<Secret>(&client)
        .get(&group_secret())
        .await
        .unwrap()
        .resource_version();
    let gs_rv = api::<GostService>(&client)
        .get("web")
        .await
        .unwrap()
        .resource_version();
    let gc_rv = api::<GostChain>(&client)
        .get("to-gateway")
        .await
        .unwrap()
        .resource_version();
    let events_before = events(&client).await.len();

    let second = reconcile(&client, &ctx).await;
    assert_eq!(second.writes, 0, "{second:?}");
    assert_eq!(
        api::<Secret>(&client)
            .get(&group_secret())
            .await
            .unwrap()
            .resource_version(),
        secret_rv
    );
    assert_eq!(
        api::<GostService>(&client)
            .get("web")
            .await
            .unwrap()
            .resource_version(),
        gs_rv
    );
    assert_eq!(
        api::<GostChain>(&client)
            .get("to-gateway")
            .await
            .unwrap()
            .resource_version(),
        gc_rv
    );
    assert_eq!(
        events(&client).await.len(),
        events_before,
        "no event without a change"
    );

    // A fresh operator (no memory of the last reconcile) writes nothing either and repeats
    // no event: what it needs is in the status.
    let fresh = Context::new(
        client.clone(),
        Settings::default(),
        Stores::list(&client, Some(NS)).await.unwrap(),
    );
    assert_eq!(fresh.reconcile(NS).await.unwrap().writes, 0);
    assert_eq!(events(&client).await.len(), events_before);
}

/// Credentials that render but cannot log in (a final newline, as `--from-file` stores it;
/// a `:` in an HTTP Basic user name) are rendered as they are, and said: a Warning event each
/// and the `Rendered` condition (still True), once, and gone when fixed.
#[tokio::test]
async fn credentials_that_cannot_log_in_are_rendered_as_they_are_and_warned_about() {
    let mut objects = base();
    objects[4] = secret("users", &[("username", "al:ice"), ("password", "s3cret\n")]);
    objects[5] = secret(
        "relay-creds",
        &[("username", "bob"), ("password", "p@ss\r\n")],
    );
    let (client, ctx) = setup(objects).await;
    reconcile(&client, &ctx).await;

    // Not stripped: what the Secret holds is what the proxy gets.
    let s = api::<Secret>(&client).get(&group_secret()).await.unwrap();
    let config = config_of(&s);
    let auth = config.services[0].handler.auth.as_ref().unwrap();
    assert_eq!(
        (auth.username.as_str(), auth.password.as_str()),
        ("al:ice", "s3cret\n")
    );
    let node = &config.chains[0].hops[0].nodes[0];
    assert_eq!(node.connector.auth.as_ref().unwrap().password, "p@ss\r\n");

    let services = api::<GostService>(&client);
    let status = services.get("web").await.unwrap().status.unwrap();
    let rendered = condition(&status.conditions, "Rendered");
    assert_eq!(
        (rendered.status.as_str(), rendered.reason.as_str()),
        ("True", "Rendered")
    );
    let message = &rendered.message;
    assert!(
        message.contains("TrailingNewline: spec.services[proxy].handler.auth: Secret \"users\" key \"password\" ends with a newline")
            && message.contains("--from-literal=password=")
            && message.contains("printf %s"),
        "{message}"
    );
    assert!(
        message.contains(
            "ColonInUserName: spec.services[proxy].handler.auth: Secret \"users\" key \"username\""
        ) && message.contains("HTTP Basic"),
        "{message}"
    );
    assert!(
        message.contains("TrailingNewline: spec.services[proxy].handler.chain \"to-gateway\": GostChain \"to-gateway\" hop \"hop-0\" node \"gw\": connector.auth: Secret \"relay-creds\" key \"password\" ends with a newline"),
        "{message}"
    );
    assert_eq!(condition(&status.conditions, "Ready").status, "True");
    // The GostChain says it too, still Ready.
    let gc = api::<GostChain>(&client).get("to-gateway").await.unwrap();
    let ready = condition(&gc.status.as_ref().unwrap().conditions, "Ready").clone();
    assert_eq!(ready.status, "True");
    assert!(
        ready.message.contains("1 warning(s): TrailingNewline: GostChain \"to-gateway\" hop \"hop-0\" node \"gw\": connector.auth: Secret \"relay-creds\" key \"password\""),
        "{}",
        ready.message
    );
    // One Warning event for each, with its own note: two of one reason are not taken for a
    // repeat of one.
    let warnings: Vec<(String, String)> = api::<Event>(&client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect();
    let mut described: Vec<(&str, &str)> = warnings
        .iter()
        .map(|(reason, note)| {
            let secret = [
                "\"users\" key \"username\"",
                "\"users\" key \"password\"",
                "\"relay-creds\" key \"password\"",
            ]
            .into_iter()
            .find(|s| note.contains(s))
            .unwrap_or(note);
            (reason.as_str(), secret)
        })
        .collect();
    described.sort();
    assert_eq!(
        described,
        [
            ("ColonInUserName", "\"users\" key \"username\""),
            ("TrailingNewline", "\"relay-creds\" key \"password\""),
            ("TrailingNewline", "\"users\" key \"password\""),
        ],
        "{warnings:#?}"
    );

    // No change, no write, and no repeated event; nor from a fresh operator.
    let before = events(&client).await.len();
    assert_eq!(reconcile(&client, &ctx).await.writes, 0);
    let fresh = Context::new(
        client.clone(),
        Settings::default(),
        Stores::list(&client, Some(NS)).await.unwrap(),
    );
    assert_eq!(fresh.reconcile(NS).await.unwrap().writes, 0);
    assert_eq!(events(&client).await.len(), before);

    // Fixed: the warnings go from the status.
    for fixed in [
        secret("users", &[("username", "alice"), ("password", "s3cret")]),
        secret("relay-creds", &[("username", "bob"), ("password", "p@ss")]),
    ] {
        let name = fixed["metadata"]["name"].as_str().unwrap().to_string();
        api::<Secret>(&client)
            .replace(
                &name,
                &PostParams::default(),
                &serde_json::from_value(fixed).unwrap(),
            )
            .await
            .unwrap();
    }
    reconcile(&client, &ctx).await;
    let status = services.get("web").await.unwrap().status.unwrap();
    let rendered = condition(&status.conditions, "Rendered");
    assert_eq!(rendered.status, "True");
    assert!(!rendered.message.contains("Secret"), "{}", rendered.message);
    let gc = api::<GostChain>(&client).get("to-gateway").await.unwrap();
    let ready = condition(&gc.status.as_ref().unwrap().conditions, "Ready").clone();
    assert_eq!(ready.message, "every referenced Secret and key is present");
    assert_eq!(events(&client).await.len(), before);
}

fn edge_service(gateway: Value) -> Value {
    json!({
        "apiVersion": "gost.rs/v1alpha1", "kind": "GostService",
        "metadata": {"name": "edge", "namespace": NS},
        "spec": {
            "gateway": gateway,
            "services": [
                {"name": "entry", "addr": ":8080", "handler": {"type": "http"}},
                {"name": "tunnel", "addr": ":8443", "handler": {"type": "relay"},
                 "listener": {"type": "h3"}}
            ]
        }
    })
}

#[tokio::test]
async fn a_gateway_runs_as_deployment_service_and_secret_and_goes_with_its_spec() {
    let gw = json!({"replicas": 2, "service": {"type": "LoadBalancer", "ports": {"entry": 80},
                                               "annotations": {"lb.example/internal": "true"}}});
    let (client, ctx) = setup(vec![edge_service(gw)]).await;
    reconcile(&client, &ctx).await;
    let gs = api::<GostService>(&client).get("edge").await.unwrap();
    let uid = gs.uid().unwrap();
    let owned_by_gs =
        |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
            refs.iter()
                .any(|o| o.uid == uid && o.kind == "GostService" && o.controller == Some(true))
        };

    let d = api::<Deployment>(&client)
        .get("gost-gw-edge")
        .await
        .unwrap();
    assert!(owned_by_gs(d.owner_references()));
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(labels["app.kubernetes.io/name"], "gost-gateway");
    assert_eq!(labels["app.kubernetes.io/instance"], "edge");
    let c = &pod.containers[0];
    let args = c.args.as_deref().unwrap();
    assert_eq!(args[..2], ["-C", "/etc/gost/config.yaml"]);
    assert!(
        c.restart_policy.is_none(),
        "a gateway's proxy is a plain container"
    );
    let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    assert!(ports.contains(&15300) && ports.contains(&8443), "{ports:?}");
    assert_eq!(
        c.image.as_deref(),
        Some(Settings::default().proxy.image.as_str())
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
        ["ALL"]
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let mount = &c.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.sub_path.as_deref()),
        ("/etc/gost", None)
    );
    let readiness = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(readiness.path.as_deref(), Some("/readyz"));
    let volume = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(
        volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("gost-gw-edge")
    );
    assert!(c.resources.as_ref().unwrap().limits.is_some());

    let svc = api::<Service>(&client).get("gost-gw-edge").await.unwrap();
    assert!(owned_by_gs(svc.owner_references()));
    assert_eq!(svc.annotations()["lb.example/internal"], "true");
    let sspec = svc.spec.as_ref().unwrap();
    assert_eq!(sspec.type_.as_deref(), Some("LoadBalancer"));
    let ports: Vec<(String, i32, String)> = sspec
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.port, p.protocol.clone().unwrap()))
        .collect();
    assert_eq!(
        ports,
        [
            ("entry".to_string(), 80, "TCP".to_string()),
            ("tunnel".to_string(), 8443, "UDP".to_string())
        ]
    );

    let s = api::<Secret>(&client).get("gost-gw-edge").await.unwrap();
    assert!(owned_by_gs(s.owner_references()));
    assert_eq!(config_of(&s).services.len(), 2);

    // Not available yet: Ready waits for the Deployment.
    let status = api::<GostService>(&client)
        .get("edge")
        .await
        .unwrap()
        .status
        .unwrap();
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "GatewayUnavailable")
    );
    api::<Deployment>(&client)
        .patch_status(
            "gost-gw-edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"availableReplicas": 2}})),
        )
        .await
        .unwrap();
    let summary = reconcile(&client, &ctx).await;
    assert_eq!(summary.writes, 1, "only the status: {summary:?}");
    let status = api::<GostService>(&client)
        .get("edge")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(condition(&status.conditions, "Ready").status, "True");

    // Without `gateway`, the three objects go.
    edit(&client, "edge", |gs| {
        gs.spec.gateway = None;
        gs.spec.selector =
            Some(serde_json::from_value(json!({"matchLabels": {"app": "edge"}})).unwrap());
    })
    .await;
    reconcile(&client, &ctx).await;
    assert!(
        api::<Deployment>(&client)
            .get_opt("gost-gw-edge")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        api::<Service>(&client)
            .get_opt("gost-gw-edge")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        api::<Secret>(&client)
            .get_opt("gost-gw-edge")
            .await
            .unwrap()
            .is_none()
    );
}

/// The in-memory API with `objects`, refusing Service and Deployment writes as the real API
/// server would (a name that is not a DNS-1035 label, a port outside 1-65535) and every write
/// of an object named `refuse`.
async fn strict_api(objects: Vec<Value>, refuse: &'static str) -> Client {
    use kube_fake_client::{ClientBuilder, interceptor};
    fn is_dns1035(s: &str) -> bool {
        s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }
    ClientBuilder::new()
        .with_resource::<GostService>()
        .with_resource::<GostChain>()
        .with_status_subresource::<Deployment>()
        .with_runtime_objects(objects)
        .with_interceptor_funcs(interceptor::Funcs::new().patch(move |c| {
            let invalid = |m: String| Err(kube_fake_client::Error::InvalidRequest(m));
            if c.name == refuse {
                return invalid(format!(
                    "{} \"{refuse}\" is invalid: spec: Forbidden: refused by the test",
                    c.patch["kind"]
                ));
            }
            if c.patch["kind"] == "Service" {
                if !is_dns1035(c.name) {
                    return invalid(format!(
                        "Service \"{}\" is invalid: metadata.name: Invalid value: a DNS-1035 label must consist of lower case alphanumeric characters or '-'",
                        c.name
                    ));
                }
                for p in c.patch["spec"]["ports"].as_array().into_iter().flatten() {
                    let port = p["port"].as_i64().unwrap_or(0);
                    if !(1..=65535).contains(&port) {
                        return invalid(format!(
                            "Service \"{}\" is invalid: spec.ports[0].port: Invalid value: {port}: must be between 1 and 65535, inclusive",
                            c.name
                        ));
                    }
                }
            }
            Ok(None)
        }))
        .build()
        .await
        .expect("the in-memory API starts")
}

/// A workload's config Secret that the API server refuses (here its 1 MiB limit) is said on the
/// GostServices its pods match, not only in the operator's log: its new pods would start
/// without the sidecar. A conflict (admission wrote the Secret meanwhile) is not: the retry
/// cures it. Once the Secret can be written, the condition clears.
#[tokio::test]
async fn a_config_secret_the_api_refuses_is_a_condition_on_the_gost_services_it_serves() {
    use kube_fake_client::{ClientBuilder, interceptor};
    use std::sync::atomic::{AtomicU8, Ordering};
    const TOO_LONG: u8 = 0;
    const CONFLICT: u8 = 1;
    const ACCEPTED: u8 = 2;
    static API: AtomicU8 = AtomicU8::new(TOO_LONG);
    let client = ClientBuilder::new()
        .with_resource::<GostService>()
        .with_resource::<GostChain>()
        .with_runtime_objects(base())
        .with_interceptor_funcs(interceptor::Funcs::new().create(|c| {
            let name = c.object["metadata"]["name"].as_str().unwrap_or_default();
            if c.object["kind"] != "Secret" || !name.starts_with("gost-sidecar-") {
                return Ok(None);
            }
            match API.load(Ordering::SeqCst) {
                TOO_LONG => Err(kube_fake_client::Error::InvalidRequest(format!(
                    "Secret \"{name}\" is invalid: data: Too long: must have at most 1048576 bytes"
                ))),
                CONFLICT => Err(kube_fake_client::Error::Conflict(format!(
                    "secrets \"{name}\" already exists"
                ))),
                _ => Ok(None),
            }
        }))
        .build()
        .await
        .expect("the in-memory API starts");
    let ctx = Context::new(
        client.clone(),
        Settings::default(),
        Stores::list(&client, Some(NS)).await.unwrap(),
    );
    let error = ctx.reconcile(NS).await.unwrap_err().to_string();
    assert!(error.contains("Too long"), "{error}");

    let status = api::<GostService>(&client)
        .get("web")
        .await
        .unwrap()
        .status
        .expect("statuses are written although the Secret is not");
    let rendered = condition(&status.conditions, "Rendered");
    assert_eq!(
        (rendered.status.as_str(), rendered.reason.as_str()),
        ("False", "ConfigNotWritten")
    );
    for part in [
        "the config of ReplicaSet/web-5d4f is not written: the API server refused to create Secret",
        "Too long: must have at most 1048576 bytes. Its running pods",
        "new pods start without the sidecar",
    ] {
        assert!(
            rendered.message.contains(part),
            "{part:?} in {}",
            rendered.message
        );
    }
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(ready.status, "False");
    assert!(
        ready
            .message
            .starts_with("the config of a workload it serves is not written"),
        "{}",
        ready.message
    );
    assert!(
        events(&client)
            .await
            .contains(&("Warning".into(), "ConfigNotWritten".into())),
        "{:?}",
        events(&client).await
    );

    API.store(CONFLICT, Ordering::SeqCst);
    ctx.reconcile(NS).await.unwrap_err();
    let status = api::<GostService>(&client)
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap();
    let rendered = condition(&status.conditions, "Rendered");
    assert_eq!(
        (rendered.status.as_str(), rendered.reason.as_str()),
        ("True", "Rendered"),
        "{}",
        rendered.message
    );

    API.store(ACCEPTED, Ordering::SeqCst);
    reconcile(&client, &ctx).await;
    assert!(
        api::<Secret>(&client)
            .get_opt(&group_secret())
            .await
            .unwrap()
            .is_some()
    );
    let status = api::<GostService>(&client)
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(condition(&status.conditions, "Rendered").status, "True");
    assert_eq!(condition(&status.conditions, "Ready").status, "True");
}

fn named_edge(name: &str, gateway: Value) -> Value {
    let mut gs = edge_service(gateway);
    gs["metadata"]["name"] = json!(name);
    gs
}

/// One GostService whose gateway the API server refuses must not stop the namespace: the
/// refusal is a condition on that GostService, and every other Secret and status is written.
#[tokio::test]
async fn a_gateway_the_api_refuses_is_a_condition_on_its_gost_service_only() {
    let mut objects = base();
    objects[2] = web_service("nope");
    objects.push(named_edge("edge", json!({})));
    objects.push(named_edge("other", json!({})));
    let client = strict_api(objects, "gost-gw-edge").await;
    let ctx = Context::new(
        client.clone(),
        Settings::default(),
        Stores::list(&client, Some(NS)).await.unwrap(),
    );
    reconcile(&client, &ctx).await;

    let status = api::<GostService>(&client)
        .get("edge")
        .await
        .unwrap()
        .status
        .expect("the refused GostService has a status");
    let rendered = condition(&status.conditions, "Rendered");
    assert_eq!(
        (rendered.status.as_str(), rendered.reason.as_str()),
        ("False", "GatewayNotApplied")
    );
    assert!(
        rendered.message.contains("\"gost-gw-edge\"")
            && rendered.message.contains("refused by the test")
            && rendered.message.contains("spec.gateway"),
        "{}",
        rendered.message
    );
    assert_eq!(condition(&status.conditions, "Ready").status, "False");

    // The rest of the namespace went on: the other gateway, the sidecar's Secret, the
    // statuses of the other GostService and of the GostChain.
    assert!(
        api::<Deployment>(&client)
            .get_opt("gost-gw-other")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        api::<Secret>(&client)
            .get_opt(&group_secret())
            .await
            .unwrap()
            .is_some()
    );
    let web = api::<GostService>(&client).get("web").await.unwrap();
    assert_eq!(
        condition(&web.status.unwrap().conditions, "Rendered").reason,
        "ChainNotFound"
    );
    let other = api::<GostService>(&client).get("other").await.unwrap();
    assert!(other.status.is_some());
    let gc = api::<GostChain>(&client).get("to-gateway").await.unwrap();
    assert!(gc.status.is_some());
}

/// Gateway fields the API server would refuse in the objects built from them are either
/// made valid (a GostService name with dots makes a valid Service name) or reported on the
/// GostService, without stopping the reconcile.
#[tokio::test]
async fn gateway_names_and_ports_the_api_would_refuse_are_fixed_or_reported() {
    let objects = vec![
        named_edge("edge.v1", json!({})),
        named_edge("edge-v1", json!({})),
        named_edge("far", json!({"service": {"ports": {"entry": 70000}}})),
        named_edge("big", json!({"resources": {"limits": {"memory": "lots"}}})),
    ];
    let client = strict_api(objects, "").await;
    let ctx = Context::new(
        client.clone(),
        Settings::default(),
        Stores::list(&client, Some(NS)).await.unwrap(),
    );
    reconcile(&client, &ctx).await;

    let services: Vec<String> = api::<Service>(&client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert_eq!(services.len(), 2, "edge.v1 and edge-v1: {services:?}");
    assert!(
        services.contains(&"gost-gw-edge-v1".to_string()),
        "{services:?}"
    );
    let status = |name: &'static str| {
        let client = client.clone();
        async move {
            api::<GostService>(&client)
                .get(name)
                .await
                .unwrap()
                .status
                .unwrap_or_else(|| panic!("{name} has no status"))
        }
    };
    let dotted = status("edge.v1").await;
    assert_eq!(condition(&dotted.conditions, "Rendered").status, "True");

    let far = status("far").await;
    let rendered = condition(&far.conditions, "Rendered");
    assert_eq!(
        (rendered.status.as_str(), rendered.reason.as_str()),
        ("False", "InvalidGateway")
    );
    assert!(
        rendered
            .message
            .contains("spec.gateway.service.ports[entry]")
            && rendered.message.contains("70000")
            && rendered.message.contains("1 to 65535"),
        "{}",
        rendered.message
    );
    let big = status("big").await;
    let rendered = condition(&big.conditions, "Rendered");
    assert_eq!(rendered.reason, "InvalidGateway");
    assert!(
        rendered
            .message
            .contains("spec.gateway.resources.limits.memory")
            && rendered.message.contains("\"lots\""),
        "{}",
        rendered.message
    );
    for refused in ["gost-gw-far", "gost-gw-big"] {
        assert!(
            api::<Deployment>(&client)
                .get_opt(refused)
                .await
                .unwrap()
                .is_none(),
            "{refused}: nothing is applied for an invalid gateway"
        );
    }
}

/// A gateway write that failed for a reason a retry may cure is reported too, and fails the
/// reconcile (so the namespace is retried with backoff) only after everything else was done.
#[tokio::test]
async fn a_failed_gateway_write_is_retried_after_the_rest_is_written() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let failed = Arc::new(AtomicBool::new(false));
    let once = failed.clone();
    let mut objects = base();
    objects.push(named_edge("edge", json!({})));
    let client = kube_fake_client::ClientBuilder::new()
        .with_resource::<GostService>()
        .with_resource::<GostChain>()
        .with_status_subresource::<Deployment>()
        .with_runtime_objects(objects)
        .with_interceptor_funcs(kube_fake_client::interceptor::Funcs::new().patch(move |c| {
            if c.patch["kind"] == "Deployment" && !once.swap(true, Ordering::SeqCst) {
                return Err(kube_fake_client::Error::Internal("etcd is down".into()));
            }
            Ok(None)
        }))
        .build()
        .await
        .unwrap();
    let ctx = Context::new(
        client.clone(),
        Settings::default(),
        Stores::list(&client, Some(NS)).await.unwrap(),
    );
    let err = ctx
        .reconcile(NS)
        .await
        .expect_err("the failed write fails the reconcile");
    assert!(err.to_string().contains("gost-gw-edge"), "{err}");
    assert!(failed.load(Ordering::SeqCst));
    let status = api::<GostService>(&client)
        .get("edge")
        .await
        .unwrap()
        .status
        .unwrap();
    let rendered = condition(&status.conditions, "Rendered");
    assert_eq!(rendered.reason, "GatewayNotApplied");
    assert!(rendered.message.contains("retries"), "{}", rendered.message);
    assert!(
        api::<GostService>(&client)
            .get("web")
            .await
            .unwrap()
            .status
            .is_some(),
        "the other statuses were written"
    );

    // The retry applies it, and the condition clears.
    reconcile(&client, &ctx).await;
    assert!(
        api::<Deployment>(&client)
            .get_opt("gost-gw-edge")
            .await
            .unwrap()
            .is_some()
    );
    let status = api::<GostService>(&client)
        .get("edge")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(condition(&status.conditions, "Rendered").status, "True");
}

#[tokio::test]
async fn a_chain_with_a_missing_secret_is_not_ready() {
    let mut objects = base();
    objects[3] = chain("to-gateway", "absent-creds");
    let (client, ctx) = setup(objects).await;
    reconcile(&client, &ctx).await;
    let status = api::<GostChain>(&client)
        .get("to-gateway")
        .await
        .unwrap()
        .status
        .unwrap();
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(
        ready
            .message
            .starts_with("GostChain \"to-gateway\" hop \"hop-0\" node \"gw\"")
            && ready
                .message
                .contains("Secret \"absent-creds\" does not exist"),
        "{}",
        ready.message
    );
    // The GostService dialling through it says why its service is missing.
    let status = api::<GostService>(&client)
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        condition(&status.conditions, "Rendered").reason,
        "SecretNotFound"
    );

    // Creating the Secret makes the chain Ready.
    api::<Secret>(&client)
        .create(
            &PostParams::default(),
            &serde_json::from_value(secret(
                "absent-creds",
                &[("username", "u"), ("password", "p")],
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    reconcile(&client, &ctx).await;
    let gc = api::<GostChain>(&client).get("to-gateway").await.unwrap();
    assert_eq!(
        condition(&gc.status.unwrap().conditions, "Ready").reason,
        "Valid"
    );
}

#[tokio::test]
async fn one_secret_per_workload_and_one_per_bare_pod() {
    let mut objects = base();
    objects.push(rs_pod("web-5d4f-b"));
    objects.push(bare_pod("debug", "pod-debug-uid"));
    let (client, ctx) = setup(objects).await;
    let summary = reconcile(&client, &ctx).await;
    assert_eq!(summary.groups, 2);
    assert_eq!(
        managed_secrets(&client).await.len(),
        2,
        "the controller keeps the Secrets the webhook named, and makes no others"
    );
    let mut names: Vec<String> = managed_secrets(&client)
        .await
        .iter()
        .map(|s| s.name_any())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["gost-sidecar-pod-debug".to_string(), group_secret()]
    );
    let bare = api::<Secret>(&client)
        .get("gost-sidecar-pod-debug")
        .await
        .unwrap();
    let owner = &bare.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Pod", "pod-debug-uid")
    );
    let status = api::<GostService>(&client)
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.matched_workloads, Some(2));
}

const STS_UID: &str = "5e1f7c2a-sts-db";

/// Pod `db-<i>` of StatefulSet `db` at `revision`, labelled as the StatefulSet controller labels
/// it (so its labels differ from its siblings'); `secret` is the config Secret the webhook
/// mounted and named in its annotation.
fn sts_pod(i: usize, revision: &str, secret: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("db-{i}"), "namespace": NS, "uid": format!("db-{i}-{revision}"),
            "labels": {"app": "db", "gost.rs/injected": "true",
                       "controller-revision-hash": format!("db-{revision}"),
                       "statefulset.kubernetes.io/pod-name": format!("db-{i}"),
                       "apps.kubernetes.io/pod-index": i.to_string()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                 "uid": STS_UID, "controller": true}]
        },
        "spec": {"containers": [{"name": "db", "image": "db"}]}
    });
    if let Some(secret) = secret {
        pod["metadata"]["annotations"] = json!({"gost.rs/injected": secret});
    }
    pod
}

fn db_service(name: &str, created: &str, selector: Value, addr: &str) -> Value {
    json!({
        "apiVersion": "gost.rs/v1alpha1", "kind": "GostService",
        "metadata": {"name": name, "namespace": NS, "creationTimestamp": created},
        "spec": {"selector": {"matchLabels": selector},
                 "services": [{"name": "s", "addr": addr}]}
    })
}

/// What the API server and the webhook do with a new pod: the webhook renders its config
/// Secret at admission (before the pod has a UID or the injected label), then the pod is
/// stored naming that Secret. Returns the Secret's name.
async fn admit_and_store(client: &Client, ctx: &Context, pod: Value) -> String {
    let mut admitted: Pod = serde_json::from_value(pod.clone()).unwrap();
    admitted.metadata.uid = None;
    admitted
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("gost.rs/injected");
    let secret = ctx
        .ensure_pod_config(NS, &admitted, false)
        .await
        .unwrap()
        .secret;
    let mut stored = pod;
    stored["metadata"]["annotations"] = json!({"gost.rs/injected": secret});
    api::<Pod>(client)
        .create(
            &PostParams::default(),
            &serde_json::from_value(stored).unwrap(),
        )
        .await
        .unwrap();
    secret
}

fn services_in(s: &Secret) -> Vec<String> {
    config_of(s).services.into_iter().map(|s| s.name).collect()
}

/// StatefulSet pods carry their own name and index as labels: each gets a config Secret
/// rendered from its own labels (a GostService may select one replica), and the webhook's
/// Secret at admission is the one the controller keeps.
#[tokio::test]
async fn statefulset_pods_get_configs_rendered_from_their_own_labels() {
    let objects = vec![
        db_service(
            "primary-only",
            "2026-01-01T00:00:00Z",
            json!({"statefulset.kubernetes.io/pod-name": "db-1"}),
            ":7000",
        ),
        db_service(
            "all-db",
            "2026-01-02T00:00:00Z",
            json!({"app": "db"}),
            ":7001",
        ),
    ];
    let (client, ctx) = setup(objects).await;
    let mut names = Vec::new();
    for i in 0..2 {
        names.push(admit_and_store(&client, &ctx, sts_pod(i, "v1", None)).await);
    }
    assert_ne!(
        names[0], names[1],
        "pods with different labels share no config Secret"
    );
    let admitted: Vec<Vec<String>> = {
        let mut v = Vec::new();
        for name in &names {
            v.push(services_in(
                &api::<Secret>(&client).get(name).await.unwrap(),
            ));
        }
        v
    };
    let summary = reconcile(&client, &ctx).await;
    assert_eq!(summary.groups, 2);
    assert_eq!(
        managed_secrets(&client).await.len(),
        2,
        "the controller keeps the Secrets the webhook named, and makes no others"
    );
    let db0 = api::<Secret>(&client).get(&names[0]).await.unwrap();
    let db1 = api::<Secret>(&client).get(&names[1]).await.unwrap();
    assert_eq!(services_in(&db0), ["all-db/s"]);
    assert_eq!(services_in(&db1), ["primary-only/s", "all-db/s"]);
    assert_eq!(
        admitted,
        [services_in(&db0), services_in(&db1)],
        "the controller keeps what admission rendered"
    );
    for s in [&db0, &db1] {
        let owner = &s.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("StatefulSet", STS_UID)
        );
        assert!(s.name_any().starts_with("gost-sidecar-statefulset-db-"));
    }
    let status = |name: &'static str| {
        let client = client.clone();
        async move {
            api::<GostService>(&client)
                .get(name)
                .await
                .unwrap()
                .status
                .unwrap()
        }
    };
    let primary = status("primary-only").await;
    assert_eq!(condition(&primary.conditions, "Rendered").status, "True");
    assert_eq!(primary.matched_workloads, Some(1));
    assert_eq!(
        status("all-db").await.matched_workloads,
        Some(1),
        "two Secrets, one workload"
    );
}

/// A rollout changes the pods' labels (controller-revision-hash), so the new pods mount new
/// Secrets. The old ones go once unused for the grace period, unless a pod still mounts one.
#[tokio::test]
async fn unused_config_secrets_go_after_the_grace_but_never_while_mounted() {
    let objects = vec![db_service(
        "all-db",
        "2026-01-01T00:00:00Z",
        json!({"app": "db"}),
        ":7001",
    )];
    let (client, ctx) = setup(objects).await;
    let mut v1 = Vec::new();
    for i in 0..2 {
        v1.push(admit_and_store(&client, &ctx, sts_pod(i, "v1", None)).await);
    }
    reconcile(&client, &ctx).await;

    // The rollout replaces both pods.
    let pods = api::<Pod>(&client);
    let mut v2 = Vec::new();
    for i in 0..2 {
        pods.delete(&format!("db-{i}"), &Default::default())
            .await
            .unwrap();
        v2.push(admit_and_store(&client, &ctx, sts_pod(i, "v2", None)).await);
    }
    assert!(v2.iter().all(|n| !v1.contains(n)), "{v1:?} {v2:?}");
    // A pod the controller does not watch (no injected label) still mounts db-0's old Secret.
    let inspector = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "inspector", "namespace": NS},
        "spec": {"containers": [{"name": "sh", "image": "sh"}],
                 "volumes": [{"name": "old", "secret": {"secretName": v1[0]}}]}
    });
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(inspector).unwrap(),
    )
    .await
    .unwrap();

    let exists = |name: String| {
        let client = client.clone();
        async move {
            api::<Secret>(&client)
                .get_opt(&name)
                .await
                .unwrap()
                .is_some()
        }
    };
    // Within the grace period nothing goes, and the reconcile asks to come back.
    let summary = reconcile(&client, &ctx).await;
    for name in v1.iter().chain(&v2) {
        assert!(
            exists(name.clone()).await,
            "{name} deleted within the grace"
        );
    }
    let again = summary
        .requeue_after
        .expect("a reconcile once the grace is over");
    let grace = Settings::default().orphan_grace;
    assert!(
        again > grace / 2 && again <= grace + Duration::from_secs(1),
        "{again:?}"
    );

    // After it, the unused Secret goes; the mounted one and the current ones stay.
    let no_grace = Context::new(
        client.clone(),
        Settings {
            orphan_grace: Duration::ZERO,
            ..Settings::default()
        },
        Stores::list(&client, Some(NS)).await.unwrap(),
    );
    reconcile(&client, &no_grace).await;
    assert!(!exists(v1[1].clone()).await, "{} kept", v1[1]);
    assert!(exists(v1[0].clone()).await, "a mounted Secret was deleted");
    for name in &v2 {
        assert!(exists(name.clone()).await, "{name}");
    }
    let summary = reconcile(&client, &no_grace).await;
    assert_eq!(summary.requeue_after, None);
}

#[tokio::test]
async fn ensure_pod_config_writes_only_when_not_a_dry_run() {
    let objects: Vec<Value> = base().into_iter().filter(|o| o["kind"] != "Pod").collect();
    let (client, ctx) = setup(objects).await;
    // At admission the pod is not stored yet, but its owner is known.
    let pod: Pod = serde_json::from_value(rs_pod("")).unwrap();
    let configured = ctx.ensure_pod_config(NS, &pod, true).await.unwrap();
    assert_eq!(configured.secret, group_secret());
    let ports: Vec<(&str, u16)> = configured
        .listen_ports
        .iter()
        .map(|p| (p.name.as_str(), p.port))
        .collect();
    assert_eq!(ports, [("web/proxy", 8000), ("web/socks", 1080)]);
    let name = configured.secret;
    assert!(
        api::<Secret>(&client)
            .get_opt(&name)
            .await
            .unwrap()
            .is_none(),
        "dry run wrote"
    );

    let name = ctx.ensure_pod_config(NS, &pod, false).await.unwrap().secret;
    let s = api::<Secret>(&client).get(&name).await.unwrap();
    assert_eq!(config_of(&s).services.len(), 2);
    assert_eq!(s.owner_references()[0].uid, RS_UID);
    // Again: the Secret is already right, nothing is written.
    let rv = s.resource_version();
    ctx.ensure_pod_config(NS, &pod, false).await.unwrap();
    assert_eq!(
        api::<Secret>(&client)
            .get(&name)
            .await
            .unwrap()
            .resource_version(),
        rv
    );

    // A bare pod at admission has no UID: its Secret gets its owner once the pod is stored.
    let mut bare: Pod = serde_json::from_value(bare_pod("debug", "")).unwrap();
    bare.metadata.uid = None;
    let name = ctx
        .ensure_pod_config(NS, &bare, false)
        .await
        .unwrap()
        .secret;
    assert_eq!(name, "gost-sidecar-pod-debug");
    let s = api::<Secret>(&client).get(&name).await.unwrap();
    assert!(s.owner_references().is_empty());
    api::<Pod>(&client)
        .create(
            &PostParams::default(),
            &serde_json::from_value(bare_pod("debug", "pod-debug-uid")).unwrap(),
        )
        .await
        .unwrap();
    reconcile(&client, &ctx).await;
    let s = api::<Secret>(&client).get(&name).await.unwrap();
    assert_eq!(s.owner_references()[0].uid, "pod-debug-uid");

    let mut nameless = pod.clone();
    nameless.metadata.owner_references = None;
    let err = ctx
        .ensure_pod_config(NS, &nameless, true)
        .await
        .unwrap_err();
    assert!(
        err.contains("neither a controller owner nor a name"),
        "{err}"
    );
}

#[tokio::test]
async fn a_change_rewrites_only_the_groups_it_concerns() {
    let mut objects = Vec::new();
    for app in ["a", "b", "c"] {
        let rs = format!("{app}-rs");
        objects.push(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs, "namespace": NS, "uid": format!("uid-{rs}")},
            "spec": {"selector": {"matchLabels": {"app": app}}}
        }));
        for i in 0..3 {
            objects.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": format!("{rs}-{i}"), "namespace": NS,
                    "labels": {"app": app, "gost.rs/injected": "true"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                         "name": rs, "uid": format!("uid-{rs}"), "controller": true}]
                },
                "spec": {"containers": [{"name": "app", "image": "app"}]}
            }));
        }
    }
    for app in ["a", "b"] {
        objects.push(json!({
            "apiVersion": "gost.rs/v1alpha1", "kind": "GostService",
            "metadata": {"name": format!("svc-{app}"), "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": app}},
                     "services": [{"name": "http", "addr": ":8000"}]}
        }));
    }
    let (client, ctx) = setup(objects).await;
    let first = reconcile(&client, &ctx).await;
    assert_eq!(first.groups, 3, "nine pods, three workloads");
    assert_eq!(managed_secrets(&client).await.len(), 3);
    let secret_of_rs = |app: &str| {
        secret_of(&json!({
            "metadata": {"labels": {"app": app},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": format!("{app}-rs"), "uid": "u", "controller": true}]}
        }))
    };
    let rv = |app: &'static str| {
        let client = client.clone();
        let name = secret_of_rs(app);
        async move {
            api::<Secret>(&client)
                .get(&name)
                .await
                .unwrap()
                .resource_version()
        }
    };
    let (b, c) = (rv("b").await, rv("c").await);

    edit(&client, "svc-a", |gs| {
        gs.spec.services[0].addr = ":9000".into();
    })
    .await;
    let second = reconcile(&client, &ctx).await;
    assert_eq!(
        second.writes, 2,
        "group a's Secret and svc-a's status: {second:?}"
    );
    let a = api::<Secret>(&client)
        .get(&secret_of_rs("a"))
        .await
        .unwrap();
    assert_eq!(config_of(&a).services[0].addr, ":9000");
    assert_eq!(rv("b").await, b);
    assert_eq!(rv("c").await, c);
}

/// Issue 6's figure, in the in-memory API: 1,000 pods (100 workloads) under 100 GostServices
/// converge within 10 s of a change. Ignored in CI (a measurement, not a check of behaviour):
/// `cargo test -p gost-operator --release --test reconcile -- --ignored --nocapture`; the
/// fuller figures (more shapes, RSS, admission latency) come from `examples/bench.rs`.
#[tokio::test]
#[ignore]
async fn a_thousand_pods_under_a_hundred_gost_services_converge_quickly() {
    const GOAL: std::time::Duration = std::time::Duration::from_secs(10);
    let scale = Scale {
        namespaces: 1,
        gost_services: 100,
        workloads: 100,
        pods_per_workload: 10,
    };
    let ns = Scale::namespace(0);
    let client = scale::fake_api(scale.objects()).await;
    let ctx = Context::new(
        client.clone(),
        Settings::default(),
        Stores::list(&client, None).await.expect("stores fill"),
    );
    let started = std::time::Instant::now();
    let first = ctx.reconcile(&ns).await.expect("reconcile succeeds");
    let initial = started.elapsed();
    assert_eq!(first.groups, scale.workloads);

    let services: Api<GostService> = Api::namespaced(client.clone(), &ns);
    let mut gs = services.get("svc-7").await.unwrap();
    gs.spec.services[0].addr = ":9000".into();
    services
        .replace("svc-7", &PostParams::default(), &gs)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    ctx.set_stores(Stores::list(&client, None).await.expect("stores fill"));
    let second = ctx.reconcile(&ns).await.expect("reconcile succeeds");
    let change = started.elapsed();
    println!(
        "{} pods / {} GostServices: initial reconcile {initial:?} ({} writes), after a change {change:?} ({} writes)",
        scale.pods(),
        scale.gost_services,
        first.writes,
        second.writes
    );
    assert_eq!(second.writes, 2, "svc-7's one group Secret and its status");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for rs in scale.workloads_of(7) {
        let s = secrets
            .get(&scale::replica_set_secret(&ns, &rs, "svc-7"))
            .await
            .unwrap();
        assert_eq!(config_of(&s).services[0].addr, ":9000", "{rs}");
    }
    assert!(initial < GOAL && change < GOAL);
}

/// Namespace `NS` opts in to injection (what the controller's Namespace cache would say).
fn opt_in_namespace(ctx: &Context) {
    let labels = BTreeMap::from([("gost.rs/inject".to_string(), "enabled".to_string())]);
    ctx.set_namespace_labels(HashMap::from([(NS.to_string(), labels)]));
}

/// A pod of ReplicaSet `rs` (uid `rs_uid`) selected by GostService "web", as admitted: with
/// the sidecar (`injected`) or without.
fn revision_pod(name: &str, rs: &str, rs_uid: &str, injected: bool) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "labels": {"app": "web", "pod-template-hash": rs},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                                 "uid": rs_uid, "controller": true}]
        },
        "spec": {"containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running"}
    });
    if injected {
        pod["metadata"]["labels"]["gost.rs/injected"] = json!("true");
        pod["spec"]["initContainers"] =
            json!([{"name": "gost", "image": "gost", "restartPolicy": "Always"}]);
    }
    pod
}

/// The status of GostService `name` as the API serves it (its JSON, field names included).
async fn status_json(client: &Client, name: &str) -> Value {
    let resource = kube::core::ApiResource::erase::<GostService>(&());
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
    api.get(name).await.unwrap().data["status"].clone()
}

fn json_condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// A pod the webhook admitted without the sidecar because its new rollout revision's config
/// Secret could not be created (a ResourceQuota on Secrets) runs outside the tunnel: the
/// GostService that selects it says so (count, the `Injected` condition naming the pod and
/// what to do, `Ready=False`, one Warning event), and stops saying so once the pod is replaced
/// by an injected one.
#[tokio::test]
async fn a_pod_admitted_without_the_sidecar_is_reported_until_replaced() {
    use kube_fake_client::{ClientBuilder, interceptor};
    use std::sync::atomic::{AtomicBool, Ordering};
    static QUOTA_FULL: AtomicBool = AtomicBool::new(true);
    let client = ClientBuilder::new()
        .with_resource::<GostService>()
        .with_resource::<GostChain>()
        .with_runtime_objects(base())
        .with_interceptor_funcs(interceptor::Funcs::new().create(|c| {
            let name = c.object["metadata"]["name"].as_str().unwrap_or_default();
            if c.object["kind"] == "Secret"
                && name.starts_with("gost-sidecar-replicaset-web-7c8e")
                && QUOTA_FULL.load(Ordering::SeqCst)
            {
                return Err(kube_fake_client::Error::InvalidRequest(format!(
                    "secrets \"{name}\" is forbidden: exceeded quota: secrets, requested: secrets=1, used: secrets=10, limited: secrets=10"
                )));
            }
            Ok(None)
        }))
        .build()
        .await
        .expect("the in-memory API starts");
    let ctx = Context::new(
        client.clone(),
        Settings::default(),
        Stores::list(&client, Some(NS)).await.unwrap(),
    );
    opt_in_namespace(&ctx);
    reconcile(&client, &ctx).await;
    let status = status_json(&client, "web").await;
    assert_eq!(status["podsWithoutSidecar"], 0, "{status}");
    assert_eq!(json_condition(&status, "Injected")["status"], "True");

    // A rollout's new revision: admission cannot create its config Secret, and the API
    // server stores the pod as it came (failurePolicy Ignore, or the webhook's own answer).
    let new_pod = revision_pod("web-7c8e-x", "web-7c8e", "uid-rs-7c8e", false);
    let error = ctx
        .ensure_pod_config(NS, &serde_json::from_value(new_pod.clone()).unwrap(), false)
        .await
        .unwrap_err();
    assert!(error.contains("exceeded quota"), "{error}");
    api::<Pod>(&client)
        .create(
            &PostParams::default(),
            &serde_json::from_value(new_pod).unwrap(),
        )
        .await
        .unwrap();
    reconcile(&client, &ctx).await;
    let status = status_json(&client, "web").await;
    assert_eq!(status["podsWithoutSidecar"], 1, "{status}");
    let injected = json_condition(&status, "Injected");
    assert_eq!(
        (&injected["status"], &injected["reason"]),
        (&json!("False"), &json!("PodsWithoutSidecar"))
    );
    let message = injected["message"].as_str().unwrap();
    for part in [
        "1 pod(s) it selects opted in to injection but run without the gost sidecar",
        ": web-7c8e-x.",
        "ResourceQuota",
        "re-create them: `kubectl rollout restart`",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    let ready = json_condition(&status, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("PodsWithoutSidecar"))
    );
    let warned = |events: Vec<(String, String)>| {
        events
            .iter()
            .filter(|e| *e == &("Warning".to_string(), "PodsWithoutSidecar".to_string()))
            .count()
    };
    assert_eq!(warned(events(&client).await), 1);
    // Nothing new: no second warning.
    reconcile(&client, &ctx).await;
    assert_eq!(warned(events(&client).await), 1);

    // The quota is raised and the pod re-created: the replacement has the sidecar.
    QUOTA_FULL.store(false, Ordering::SeqCst);
    let pods = api::<Pod>(&client);
    pods.delete("web-7c8e-x", &Default::default())
        .await
        .unwrap();
    let replacement = revision_pod("web-7c8e-y", "web-7c8e", "uid-rs-7c8e", true);
    ctx.ensure_pod_config(
        NS,
        &serde_json::from_value(replacement.clone()).unwrap(),
        false,
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(replacement).unwrap(),
    )
    .await
    .unwrap();
    reconcile(&client, &ctx).await;
    let status = status_json(&client, "web").await;
    assert_eq!(status["podsWithoutSidecar"], 0, "{status}");
    assert_eq!(json_condition(&status, "Injected")["status"], "True");
    assert_eq!(json_condition(&status, "Ready")["status"], "True");
    assert!(
        events(&client)
            .await
            .contains(&("Normal".into(), "Injected".into())),
        "{:?}",
        events(&client).await
    );
}

/// Only pods the webhook would inject now are counted: selected, opted in (by their namespace
/// or their own annotation), not opted out, not on the node's network, without a `gost`
/// container of their own, and not finished. Pods that predate the opt-in count too.
#[tokio::test]
async fn only_selected_pods_that_would_be_injected_count() {
    let pod = |name: &str, change: &dyn Fn(&mut Value)| {
        let mut pod = revision_pod(name, "web-5d4f", RS_UID, false);
        change(&mut pod);
        pod
    };
    let mut objects = base();
    objects.extend([
        pod("old-1", &|_| {}),
        pod("old-2", &|_| {}),
        pod("opted-out", &|p| {
            p["metadata"]["annotations"] = json!({"gost.rs/inject": "disabled"})
        }),
        pod("host-network", &|p| p["spec"]["hostNetwork"] = json!(true)),
        pod("own-gost", &|p| {
            p["spec"]["containers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "gost", "image": "gost"}))
        }),
        pod("done", &|p| p["status"]["phase"] = json!("Succeeded")),
        pod("not-selected", &|p| {
            p["metadata"]["labels"]["app"] = json!("db")
        }),
    ]);
    let (client, ctx) = setup(objects).await;
    opt_in_namespace(&ctx);
    reconcile(&client, &ctx).await;
    let status = status_json(&client, "web").await;
    assert_eq!(status["podsWithoutSidecar"], 2, "{status}");
    let message = json_condition(&status, "Injected")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains(": old-1, old-2."), "{message}");

    // In a namespace that does not opt in, only a pod's own annotation does.
    let mut objects = base();
    objects.extend([
        pod("plain", &|_| {}),
        pod("annotated", &|p| {
            p["metadata"]["annotations"] = json!({"gost.rs/inject": "enabled"})
        }),
    ]);
    let (client, ctx) = setup(objects).await;
    reconcile(&client, &ctx).await;
    let status = status_json(&client, "web").await;
    assert_eq!(status["podsWithoutSidecar"], 1, "{status}");
    let message = json_condition(&status, "Injected")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains(": annotated."), "{message}");
}

/// Namespace labels not read yet (the operator just started, or it may not list Namespaces):
/// the count is not known, rather than "none", and reconciling goes on; once read, pods the
/// namespace opts in are counted.
#[tokio::test]
async fn pods_are_not_counted_before_their_namespace_is_read() {
    struct NotRead;
    impl gost_operator::webhook::NamespaceLabels for NotRead {
        fn label(&self, _: &str, _: &str) -> Option<String> {
            None
        }
        fn known(&self, _: &str) -> bool {
            false
        }
    }
    let client = scale::fake_api(base()).await;
    let ctx = Context::new(
        client.clone(),
        Settings::default(),
        Stores::list(&client, Some(NS)).await.unwrap(),
    );
    ctx.set_namespace_labels(NotRead);
    api::<Pod>(&client)
        .create(
            &PostParams::default(),
            &serde_json::from_value(revision_pod("web-7c8e-x", "web-7c8e", "uid-rs-7c8e", false))
                .unwrap(),
        )
        .await
        .unwrap();
    reconcile(&client, &ctx).await;
    let status = status_json(&client, "web").await;
    assert_eq!(status["podsWithoutSidecar"], Value::Null, "{status}");
    let injected = json_condition(&status, "Injected");
    assert_eq!(
        (&injected["status"], &injected["reason"]),
        (&json!("Unknown"), &json!("PodsNotListed")),
        "{status}"
    );
    assert_ne!(
        json_condition(&status, "Ready")["reason"],
        "PodsWithoutSidecar"
    );

    opt_in_namespace(&ctx);
    reconcile(&client, &ctx).await;
    let status = status_json(&client, "web").await;
    assert_eq!(status["podsWithoutSidecar"], 1, "{status}");
}
