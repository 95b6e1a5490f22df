//! The controller: keeps one rendered config Secret per config group, the gateways, the status
//! of GostServices and GostChains, and their events.
//!
//! The unit of work is a namespace: rendering needs all GostServices and GostChains of the
//! namespace anyway, and a burst of changes there (a rollout, `kubectl apply` of ten resources)
//! collapses into one debounced reconcile. Any change to a GostService, GostChain, referenced
//! Secret, injected pod, pod without the sidecar that a GostService selects, or gateway
//! Deployment in namespace N queues N.
//!
//! [`Context::reconcile`] is a plain async function over the reflector stores and the API, so
//! tests call it directly against an in-memory API without watches ([`Stores::list`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, future, stream};
use gost_api::v1alpha1::{AuthSpec, GostChain, GostService, TlsSpec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, applier, reflector as reflect};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::gateway::{self, GATEWAY_APP, GatewaySettings, NAME_LABEL};
use crate::group::{
    self, CONFIG_GROUP_LABEL, Group, INJECTED_LABEL, INJECTED_VALUE, MANAGED_BY, MANAGED_BY_LABEL,
    SECRET_PREFIX,
};
use crate::inject::{
    self, Decision, INJECT_DISABLED, INJECT_ENABLED, INJECT_KEY, INJECTED_ANNOTATION,
    SYSTEM_NAMESPACES, SidecarSettings,
};
use crate::metrics::metrics;
use crate::render::{
    self, Namespace, Previous, Problem, Reason, Rendered, render_for_pod, render_gateway,
};
use crate::status::{self, GatewayState, Seen, ServiceObservation};
use crate::webhook::{NamespaceLabels, SidecarConfig};

/// Changes within this window after the first are reconciled together: a rollout of 1,000
/// pods or an `apply` of many resources costs a few reconciles, well inside the 10 s goal.
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// Namespaces reconciled at once (one namespace is never reconciled twice at once).
const CONCURRENCY: u16 = 4;
/// Every namespace is reconciled again this long after its last success, to repair drift
/// nothing told us about (an edited rendered Secret, a missed watch event).
const RESYNC_PERIOD: Duration = Duration::from_secs(10 * 60);
/// The first retry after a failed reconcile, doubled each failure up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(1);
/// Retries of a failing namespace never wait longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// Attempts of the admission-time write when it races with a reconcile (409 Conflict).
const ENSURE_ATTEMPTS: usize = 3;
/// How long the admission-time render waits for the caches of a starting operator: well below
/// the webhook's own timeout (10 s), so the webhook still answers in time.
const ENSURE_READY_TIMEOUT: Duration = Duration::from_secs(2);
/// A config Secret that no injected pod uses is deleted once it has stayed unused this long:
/// longer than the moment between an admission writing a Secret and its pod being stored, and
/// than the gap while a StatefulSet replaces a pod (the new one mounts the same Secret).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(2 * 60);
/// The field manager of every write.
pub const DEFAULT_FIELD_MANAGER: &str = "gost-operator";

/// The operator's settings, as far as the controller goes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The proxy container of sidecars and gateways (image, admin port, resources, logs).
    pub proxy: SidecarSettings,
    /// The field manager of every write.
    pub field_manager: String,
    /// Watch this namespace only (default: all).
    pub namespace: Option<String>,
    /// The debounce of namespace reconciles.
    pub debounce: Duration,
    /// How long a config Secret no pod uses any more is kept before it is deleted.
    pub orphan_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            proxy: SidecarSettings::default(),
            field_manager: DEFAULT_FIELD_MANAGER.to_string(),
            namespace: None,
            debounce: DEBOUNCE,
            orphan_grace: ORPHAN_GRACE,
        }
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done, e.g. `replace Secret "x"`.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The controller's machinery stopped.
    #[error("the controller stopped: {0}")]
    Stopped(String),
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Api { action, source }
}

/// The caches reconciles read: GostServices, GostChains, and the metadata of injected pods.
#[derive(Clone)]
pub struct Stores {
    services: Store<GostService>,
    chains: Store<GostChain>,
    pods: Store<PartialObjectMeta<Pod>>,
}

impl Stores {
    /// Stores filled by one list each, without watching: for tests and one-off tools. `None`
    /// lists all namespaces.
    pub async fn list(client: &Client, namespace: Option<&str>) -> Result<Stores, Error> {
        let lp = ListParams::default();
        let services = filled(
            scoped::<GostService>(client, namespace)
                .list(&lp)
                .await
                .map_err(api_err("list GostServices"))?
                .items,
        );
        let chains = filled(
            scoped::<GostChain>(client, namespace)
                .list(&lp)
                .await
                .map_err(api_err("list GostChains"))?
                .items,
        );
        let pods = filled(
            scoped::<Pod>(client, namespace)
                .list(&injected_pods())
                .await
                .map_err(api_err("list injected Pods"))?
                .items
                .into_iter()
                .map(|p| p.metadata.into_response_partial::<Pod>())
                .collect(),
        );
        Ok(Stores {
            services,
            chains,
            pods,
        })
    }
}

fn filled<K>(items: Vec<K>) -> Store<K>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let mut writer = reflector::store::Writer::<K>::default();
    writer.apply_watcher_event(&Event::Init);
    for item in items {
        writer.apply_watcher_event(&Event::InitApply(item));
    }
    writer.apply_watcher_event(&Event::InitDone);
    writer.as_reader()
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn injected_pods() -> ListParams {
    ListParams::default().labels(&format!("{INJECTED_LABEL}={INJECTED_VALUE}"))
}

/// The pods the webhook did not inject (the label is absent, or set by hand to another value).
/// How soon a namespace with pods running without the sidecar is reconciled again.
const RECOUNT_PERIOD: Duration = Duration::from_secs(60);

/// Pods without the sidecar fetched one by one, at most; more are listed.
const FETCHED_BY_NAME: usize = 10;

fn uninjected_pods() -> ListParams {
    ListParams::default().labels(&format!("{INJECTED_LABEL}!={INJECTED_VALUE}"))
}

fn managed() -> ListParams {
    ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
}

fn gateways() -> ListParams {
    ListParams::default().labels(&format!(
        "{NAME_LABEL}={GATEWAY_APP},{MANAGED_BY_LABEL}={MANAGED_BY}"
    ))
}

/// What one reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Config groups (workloads with injected pods) in the namespace.
    pub groups: usize,
    /// Objects created, replaced, patched or deleted (status patches included).
    pub writes: usize,
    /// When unused config Secrets wait out [`Settings::orphan_grace`]: reconcile again then.
    pub requeue_after: Option<Duration>,
}

/// The namespace's resources, read once per reconcile.
struct Snapshot {
    services: Vec<GostService>,
    chains: Vec<GostChain>,
    pods: Vec<Arc<PartialObjectMeta<Pod>>>,
    secrets: BTreeMap<String, Secret>,
}

impl Snapshot {
    fn namespace(&self) -> Namespace<'_> {
        Namespace {
            services: &self.services,
            chains: &self.chains,
            secrets: &self.secrets,
        }
    }
}

/// Everything a reconcile needs, shared by the reconciles of all namespaces.
pub struct Context {
    client: Client,
    settings: Settings,
    stores: RwLock<Stores>,
    /// Who records events (see [`Context::record_events`] for why not one shared `Recorder`).
    reporter: Reporter,
    /// What the last reconcile saw of each GostService (by namespace/UID), to record events on
    /// changes.
    seen: Mutex<HashMap<String, Seen>>,
    /// Consecutive failures by namespace, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Since when each config Secret (by namespace/name) has been without pods.
    orphans: Mutex<HashMap<String, Instant>>,
    /// The namespaces' labels (whether a namespace opts in to injection), as the webhook
    /// reads them; `None` until set, when only a pod's own annotation opts it in.
    namespace_labels: RwLock<Option<Arc<dyn NamespaceLabels>>>,
}

impl Context {
    /// A context reading `stores`.
    pub fn new(client: Client, settings: Settings, stores: Stores) -> Context {
        let reporter = Reporter {
            controller: settings.field_manager.clone(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            reporter,
            client,
            settings,
            stores: RwLock::new(stores),
            seen: Mutex::default(),
            failures: Mutex::default(),
            orphans: Mutex::default(),
            namespace_labels: RwLock::default(),
        }
    }

    /// Where the namespaces' labels are read (the binary: the reflector store the webhook
    /// reads; tests: a map).
    pub fn set_namespace_labels(&self, labels: impl NamespaceLabels) {
        *self
            .namespace_labels
            .write()
            .expect("namespace labels lock") = Some(Arc::new(labels));
    }

    /// Whether namespace `ns` is in the namespace cache (always, without one: only a pod's
    /// own annotation opts it in then).
    fn namespace_known(&self, ns: &str) -> bool {
        self.namespace_labels
            .read()
            .expect("namespace labels lock")
            .as_ref()
            .is_none_or(|labels| labels.known(ns))
    }

    /// The `gost.rs/inject` label of namespace `ns`, when known.
    fn namespace_inject_label(&self, ns: &str) -> Option<String> {
        self.namespace_labels
            .read()
            .expect("namespace labels lock")
            .as_ref()?
            .label(ns, INJECT_KEY)
    }

    /// Replaces the stores (tests refill them with [`Stores::list`] after changing the API).
    pub fn set_stores(&self, stores: Stores) {
        *self.stores.write().expect("stores lock") = stores;
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn render_settings(&self) -> render::Settings {
        render::Settings {
            admin_port: self.settings.proxy.admin_port,
        }
    }

    /// The GostServices, GostChains and injected pods of `ns` from the stores, with the Secrets
    /// they reference read from the API (Secrets are not cached: most are not ours, and some,
    /// like Helm's release Secrets, are large).
    async fn snapshot(&self, ns: &str) -> Result<Snapshot, Error> {
        self.snapshot_for(ns, None).await
    }

    /// With `pod_labels`, only what a pod with those labels renders from: the GostServices
    /// that select it and the GostChains they dial through, and so only their Secrets (an
    /// admission must not fetch every Secret of the namespace), and no pods.
    async fn snapshot_for(
        &self,
        ns: &str,
        pod_labels: Option<&BTreeMap<String, String>>,
    ) -> Result<Snapshot, Error> {
        let (mut services, mut chains, mut pods) = {
            let stores = self.stores.read().expect("stores lock");
            let in_ns = |m: &ObjectMeta| m.namespace.as_deref() == Some(ns);
            // Filter before cloning: an admission in a namespace of 100 GostServices clones
            // the one or two that select its pod, not all of them.
            let services = stores
                .services
                .state()
                .into_iter()
                .filter(|gs| {
                    in_ns(&gs.metadata)
                        && pod_labels.is_none_or(|labels| {
                            gs.spec
                                .selector
                                .as_ref()
                                // A selector that cannot be evaluated is rendered as a
                                // problem, keeping what the pod's group runs of it.
                                .is_some_and(|sel| render::selects(sel, labels) != Ok(false))
                        })
                })
                .map(|o| (*o).clone())
                .collect::<Vec<GostService>>();
            let used: Option<BTreeSet<&str>> = pod_labels.map(|_| {
                services
                    .iter()
                    .flat_map(|gs| &gs.spec.services)
                    .filter_map(|svc| svc.handler.chain.as_deref())
                    .collect()
            });
            let chains = stores
                .chains
                .state()
                .into_iter()
                .filter(|gc| {
                    in_ns(&gc.metadata)
                        && used.as_ref().is_none_or(|used| {
                            used.contains(gc.metadata.name.as_deref().unwrap_or_default())
                        })
                })
                .map(|o| (*o).clone())
                .collect::<Vec<GostChain>>();
            // An admission renders one pod's config: the namespace's pods do not matter.
            let pods = if pod_labels.is_some() {
                Vec::new()
            } else {
                stores
                    .pods
                    .state()
                    .into_iter()
                    .filter(|o| {
                        in_ns(&o.metadata)
                            && o.metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(INJECTED_LABEL))
                                .is_some_and(|v| v == INJECTED_VALUE)
                    })
                    .collect::<Vec<_>>()
            };
            (services, chains, pods)
        };
        services.sort_by_key(|o| o.metadata.name.clone());
        chains.sort_by_key(|o| o.metadata.name.clone());
        pods.sort_by_key(|o| o.metadata.name.clone());
        let names = referenced_secrets(&services, &chains);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let fetched = future::try_join_all(names.into_iter().map(|name| {
            let api = api.clone();
            async move {
                let secret = api
                    .get_opt(&name)
                    .await
                    .map_err(api_err(format!("get Secret {ns}/{name}")))?;
                Ok::<_, Error>(secret.map(|s| (name, s)))
            }
        }))
        .await?;
        Ok(Snapshot {
            services,
            chains,
            pods,
            secrets: fetched.into_iter().flatten().collect(),
        })
    }

    /// Brings namespace `ns` to its desired state: the config Secret of every config group,
    /// every gateway, and the status of every GostService and GostChain. Writes only what
    /// differs.
    ///
    /// A failed write does not stop the others: a gateway the API server refuses becomes a
    /// condition on its GostService, and every other Secret, gateway and status is still
    /// written. The reconcile then fails with the first error that a retry may cure, so the
    /// namespace is retried with backoff.
    pub async fn reconcile(&self, ns: &str) -> Result<Summary, Error> {
        let snap = self.snapshot(ns).await?;
        let namespace = snap.namespace();
        let rs = self.render_settings();
        let mut summary = Summary::default();
        let mut failures = Failures::default();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let mut existing: BTreeMap<String, Secret> = secrets
            .list(&managed())
            .await
            .map_err(api_err(format!("list managed Secrets in {ns}")))?
            .items
            .into_iter()
            .map(|s| (s.name_any(), s))
            .collect();

        let groups = config_groups(&snap.pods);
        summary.groups = groups.len();

        let mut observed: BTreeMap<String, ServiceObservation> = BTreeMap::new();
        let mut gateway_renders: BTreeMap<String, Rendered> = BTreeMap::new();
        // Problems of each GostService on its own (chains, Secrets, addresses), found whether
        // or not any pod matches it.
        for gs in &snap.services {
            let gateway = gs
                .spec
                .gateway
                .is_some()
                .then(|| gateway::gateway_name(&gs.name_any()));
            let previous = gateway
                .as_ref()
                .and_then(|name| previous_config(ns, existing.get(name)));
            let r = render_gateway(&namespace, gs, &rs, previous.as_ref());
            let obs = observed.entry(gs.name_any()).or_default();
            add_problems(&mut obs.problems, &r.problems);
            add_problems(&mut obs.warnings, &r.warnings);
            if let Some(name) = gateway {
                note_kept(&mut observed, &r, &format!("gateway Deployment/{name}"));
                gateway_renders.insert(gs.name_any(), r);
            }
        }
        for (name, (group, pod)) in &groups {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let previous = previous_config(ns, existing.get(name));
            let r = render_for_pod(&namespace, &labels, &rs, previous.as_ref());
            for gs in &r.matched {
                observed
                    .entry(gs.clone())
                    .or_default()
                    .matched
                    .insert(group.workload());
            }
            for p in &r.problems {
                let obs = observed.entry(p.gost_service.clone()).or_default();
                add_problems(&mut obs.problems, std::slice::from_ref(p));
            }
            for w in &r.warnings {
                let obs = observed.entry(w.gost_service.clone()).or_default();
                add_problems(&mut obs.warnings, std::slice::from_ref(w));
            }
            note_kept(&mut observed, &r, &group.workload());
            let desired = group_secret(ns, name, group, &r);
            match self
                .write_secret(&secrets, existing.remove(name).as_ref(), desired)
                .await
            {
                Ok(wrote) => summary.writes += usize::from(wrote),
                Err(e) => {
                    // Said where users look: otherwise only this log knows that the workload's
                    // new pods start without the sidecar (admission cannot write it either).
                    // Not for what the retry cures: a conflict (admission wrote it meanwhile),
                    // or a first transient failure.
                    if !retryable(&e) || (!conflict(&e) && self.failed_before(ns)) {
                        for gs in &r.matched {
                            let obs = observed.entry(gs.clone()).or_default();
                            add_problems(&mut obs.problems, &[config_not_written(gs, group, &e)]);
                        }
                    }
                    failures.push(e);
                }
            }
        }

        // Gateways before statuses: what the API server refuses there is reported in them.
        summary.writes += self
            .reconcile_gateways(
                ns,
                &snap,
                &gateway_renders,
                &mut existing,
                &mut observed,
                &mut failures,
            )
            .await;
        // What is left of the group Secrets belongs to groups without pods.
        let unused: Vec<Secret> = existing
            .into_values()
            .filter(|s| s.labels().contains_key(CONFIG_GROUP_LABEL))
            .collect();
        let (deleted, requeue_after) = self
            .delete_unused_group_secrets(ns, unused, &mut failures)
            .await;
        summary.writes += deleted;
        summary.requeue_after = requeue_after;
        match self.pods_without_sidecar(ns, &snap.services).await {
            Ok(by_service) => {
                for (gs, pods) in by_service.into_iter().flatten() {
                    if !pods.is_empty() {
                        // A counted pod that finishes or is evicted changes no metadata
                        // the watch sees: looked at again soon rather than at the resync.
                        summary.requeue_after = Some(
                            summary
                                .requeue_after
                                .map_or(RECOUNT_PERIOD, |d| d.min(RECOUNT_PERIOD)),
                        );
                    }
                    observed.entry(gs).or_default().without_sidecar = Some(pods);
                }
            }
            // The statuses keep what they said about it; the retry lists again.
            Err(e) => failures.push(e),
        }
        summary.writes += self
            .write_statuses(ns, &snap, &observed, &mut failures)
            .await;
        match failures.into_first(ns) {
            Some(error) => Err(error),
            None => Ok(summary),
        }
    }

    /// Applies the gateway of every GostService that has one and deletes the gateways of those
    /// that no longer do. A gateway whose spec is invalid, or that the API server refuses, is
    /// left as it was and reported as a problem of its GostService.
    async fn reconcile_gateways(
        &self,
        ns: &str,
        snap: &Snapshot,
        renders: &BTreeMap<String, Rendered>,
        existing_secrets: &mut BTreeMap<String, Secret>,
        observed: &mut BTreeMap<String, ServiceObservation>,
        failures: &mut Failures,
    ) -> usize {
        let mut writes = 0;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let services: Api<K8sService> = Api::namespaced(self.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let with_gateway = || snap.services.iter().filter(|gs| gs.spec.gateway.is_some());
        let listed = future::try_join(
            async {
                deployments
                    .list(&gateways())
                    .await
                    .map_err(api_err(format!("list gateway Deployments in {ns}")))
            },
            async {
                services
                    .list(&gateways())
                    .await
                    .map_err(api_err(format!("list gateway Services in {ns}")))
            },
        )
        .await;
        let (mut existing_deployments, mut existing_services) = match listed {
            Ok((d, s)) => (by_name(d.items), by_name(s.items)),
            Err(e) => {
                // Without the list, nothing can be applied or deleted safely.
                for gs in with_gateway() {
                    let obs = observed.entry(gs.name_any()).or_default();
                    add_problems(&mut obs.problems, &[gateway_not_applied(gs, &e)]);
                }
                failures.push(e);
                return 0;
            }
        };
        let gw_settings = GatewaySettings {
            proxy: &self.settings.proxy,
        };
        for gs in with_gateway() {
            let Some(rendered) = renders.get(&gs.name_any()) else {
                continue;
            };
            let name = gateway::gateway_name(&gs.name_any());
            // Claimed whatever happens next, so that an invalid or refused gateway keeps the
            // objects it has instead of losing them as if it were gone.
            let current_secret = existing_secrets.remove(&name);
            let current_deployment = existing_deployments.remove(&name);
            let current_service = existing_services.remove(&name);
            let obs = observed.entry(gs.name_any()).or_default();
            let invalid: Vec<Problem> = gateway::spec_problems(gs)
                .into_iter()
                .map(|message| gateway_problem(gs, Reason::InvalidGateway, message))
                .collect();
            if !invalid.is_empty() {
                add_problems(&mut obs.problems, &invalid);
                continue;
            }
            let gw = gateway::build(gs, rendered, &gw_settings);
            obs.gateway = Some(GatewayState {
                name: name.clone(),
                desired: gw
                    .deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .unwrap_or(1),
                available: current_deployment
                    .as_ref()
                    .and_then(|d| d.status.as_ref())
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0),
            });
            let applied = async {
                let mut wrote = usize::from(
                    self.write_secret(&secrets, current_secret.as_ref(), gw.secret)
                        .await?,
                );
                wrote += usize::from(
                    self.apply_if_changed(
                        &deployments,
                        current_deployment.as_ref(),
                        &gw.deployment,
                    )
                    .await?,
                );
                if let Some(service) = &gw.service {
                    wrote += usize::from(
                        self.apply_if_changed(&services, current_service.as_ref(), service)
                            .await?,
                    );
                }
                Ok::<_, Error>(wrote)
            };
            match applied.await {
                Ok(wrote) => writes += wrote,
                Err(e) => {
                    add_problems(&mut obs.problems, &[gateway_not_applied(gs, &e)]);
                    if retryable(&e) {
                        failures.push(e);
                    }
                }
            }
        }
        // What is left belongs to GostServices that no longer ask for a gateway.
        let gateway_secrets: Vec<String> = existing_secrets
            .iter()
            .filter(|(_, s)| s.labels().get(NAME_LABEL).map(String::as_str) == Some(GATEWAY_APP))
            .map(|(n, _)| n.clone())
            .collect();
        for name in existing_deployments.keys() {
            failures.count(delete(&deployments, name).await, &mut writes);
        }
        for name in existing_services.keys() {
            failures.count(delete(&services, name).await, &mut writes);
        }
        for name in gateway_secrets {
            failures.count(delete(&secrets, &name).await, &mut writes);
        }
        writes
    }

    /// Deletes the `unused` config Secrets (no injected pod mounts them) that have stayed
    /// unused for [`Settings::orphan_grace`], except any that a pod of the namespace mounts
    /// (the injected-pod cache may miss one: a pod not stored yet, a label taken off). Returns
    /// the deletions and, while some Secrets wait out the grace, when to look again.
    async fn delete_unused_group_secrets(
        &self,
        ns: &str,
        unused: Vec<Secret>,
        failures: &mut Failures,
    ) -> (usize, Option<Duration>) {
        let key = |s: &Secret| format!("{ns}/{}", s.name_any());
        let now = Instant::now();
        let grace = self.settings.orphan_grace;
        let mut due = Vec::new();
        let mut wait: Option<Duration> = None;
        {
            let mut orphans = self.orphans.lock().expect("orphans lock");
            // Secrets of this namespace that are used again (or gone) start afresh next time.
            let current: BTreeSet<String> = unused.iter().map(key).collect();
            let prefix = format!("{ns}/");
            orphans.retain(|k, _| !k.starts_with(&prefix) || current.contains(k));
            for secret in unused {
                let since = *orphans.entry(key(&secret)).or_insert(now);
                match grace.checked_sub(now.duration_since(since)) {
                    Some(left) if !left.is_zero() => {
                        // A little later than due, so that the next look finds it due.
                        let at = left + Duration::from_secs(1);
                        wait = Some(wait.map_or(at, |w| w.min(at)));
                    }
                    _ => due.push(secret),
                }
            }
        }
        if due.is_empty() {
            return (0, wait);
        }
        let mounted = match self.mounted_secrets(ns).await {
            Ok(mounted) => mounted,
            Err(e) => {
                failures.push(e);
                return (0, wait);
            }
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let mut deleted = 0;
        for secret in due {
            let name = secret.name_any();
            if mounted.contains(&name) {
                // Kept; looked at again after another grace period, not at every reconcile
                // (each look lists every pod of the namespace).
                self.orphans
                    .lock()
                    .expect("orphans lock")
                    .insert(key(&secret), Instant::now());
                continue;
            }
            // Only the version listed: one an admission rewrote since is in use again.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: secret.resource_version(),
                    uid: secret.uid(),
                }),
                ..DeleteParams::background()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {
                    info!(namespace = %ns, secret = %name, "deleted: no pod uses this config Secret any more");
                    deleted += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    failures.push(api_err(format!("delete Secret {ns}/{name}"))(e));
                    continue;
                }
            }
            self.orphans
                .lock()
                .expect("orphans lock")
                .remove(&key(&secret));
        }
        (deleted, wait)
    }

    /// The pods of `ns` that run without the sidecar although a GostService selects them and
    /// the webhook would inject them now (they opt in, and nothing else keeps the sidecar out),
    /// by GostService; every GostService of `services` has an entry. Such pods are not
    /// labelled injected, so the caches do not hold them: they are listed, metadata first,
    /// and in full only when some opt in (their spec and phase decide the rest).
    async fn pods_without_sidecar(
        &self,
        ns: &str,
        services: &[GostService],
    ) -> Result<Option<BTreeMap<String, BTreeSet<String>>>, Error> {
        // Until the namespace's labels are read, a pod it opts in would look opted out: not
        // known yet (the statuses keep what they said).
        if !self.namespace_known(ns) {
            return Ok(None);
        }
        let mut out: BTreeMap<String, BTreeSet<String>> = services
            .iter()
            .map(|gs| (gs.name_any(), BTreeSet::new()))
            .collect();
        let selectors: Vec<(String, &LabelSelector)> = services
            .iter()
            .filter_map(|gs| Some((gs.name_any(), gs.spec.selector.as_ref()?)))
            .collect();
        if selectors.is_empty() || SYSTEM_NAMESPACES.contains(&ns) {
            return Ok(Some(out));
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        // From the API server's watch cache, not etcd: this runs on every reconcile.
        let listed = api
            .list_metadata(&uninjected_pods().match_any())
            .await
            .map_err(api_err(format!("list Pods without the sidecar in {ns}")))?;
        let no_labels = BTreeMap::new();
        let namespace_label = self.namespace_inject_label(ns);
        // Pod name -> the GostServices that select it.
        let mut candidates: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for pod in &listed.items {
            let meta = &pod.metadata;
            if meta.deletion_timestamp.is_some() {
                continue;
            }
            let labels = meta.labels.as_ref().unwrap_or(&no_labels);
            // A selector that cannot be evaluated is a render problem of its own.
            let selecting: Vec<&str> = selectors
                .iter()
                .filter(|(_, sel)| render::selects(sel, labels) == Ok(true))
                .map(|(name, _)| name.as_str())
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let annotation = meta.annotations.as_ref().and_then(|a| a.get(INJECT_KEY));
            let opted_in = match annotation.map(String::as_str) {
                Some(INJECT_ENABLED) => true,
                Some(INJECT_DISABLED) => false,
                _ => namespace_label.as_deref() == Some(INJECT_ENABLED),
            };
            if opted_in && let Some(name) = &meta.name {
                candidates.insert(name.clone(), selecting);
            }
        }
        if candidates.is_empty() {
            return Ok(Some(out));
        }
        // Their spec and phase: a few by name, rather than every pod of the namespace without
        // the label in full; many (a workload older than its GostService) in one list.
        let pods = if candidates.len() <= FETCHED_BY_NAME {
            let mut pods = Vec::new();
            for name in candidates.keys() {
                let pod = api
                    .get_opt(name)
                    .await
                    .map_err(api_err(format!("get Pod {ns}/{name}")))?;
                pods.extend(pod);
            }
            pods
        } else {
            api.list(&uninjected_pods().match_any())
                .await
                .map_err(api_err(format!("list Pods without the sidecar in {ns}")))?
                .items
        };
        for pod in &pods {
            let name = pod.name_any();
            let Some(selecting) = candidates.get(&name) else {
                continue;
            };
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            // A pod that has finished runs nothing that could bypass the tunnel.
            if matches!(phase, Some("Succeeded" | "Failed"))
                || pod.metadata.deletion_timestamp.is_some()
                || inject::decide(ns, namespace_label.as_deref(), pod) != Decision::Inject
            {
                continue;
            }
            for gs in selecting {
                out.entry((*gs).to_string())
                    .or_default()
                    .insert(name.clone());
            }
        }
        Ok(Some(out))
    }

    /// The Secrets that the volumes of the namespace's pods (all of them, injected or not)
    /// refer to.
    async fn mounted_secrets(&self, ns: &str) -> Result<BTreeSet<String>, Error> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(api_err(format!("list Pods in {ns}")))?;
        let mut names = BTreeSet::new();
        for volume in list
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref())
            .flat_map(|spec| spec.volumes.iter().flatten())
        {
            names.extend(volume.secret.as_ref().and_then(|s| s.secret_name.clone()));
            let projected = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
            names.extend(
                projected
                    .into_iter()
                    .flatten()
                    .filter_map(|source| Some(source.secret.as_ref()?.name.clone())),
            );
        }
        Ok(names)
    }

    /// Creates `desired`, or replaces `existing` when its data, type, our labels or our owner
    /// reference differ. Returns whether it wrote.
    async fn write_secret(
        &self,
        api: &Api<Secret>,
        existing: Option<&Secret>,
        desired: Secret,
    ) -> Result<bool, Error> {
        let name = desired.name_any();
        let pp = PostParams {
            field_manager: Some(self.settings.field_manager.clone()),
            ..PostParams::default()
        };
        let Some(existing) = existing else {
            api.create(&pp, &desired)
                .await
                .map_err(api_err(format!("create Secret {name:?}")))?;
            debug!(secret = %name, "created");
            return Ok(true);
        };
        let labels = existing.labels();
        let owners = existing.owner_references();
        let same = existing.data.as_ref().map(|d| d.is_empty()) == Some(false)
            && existing.data == desired.data
            && existing.type_ == desired.type_
            && desired
                .labels()
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
            && desired
                .owner_references()
                .iter()
                .all(|o| owners.iter().any(|e| e.uid == o.uid));
        if same {
            return Ok(false);
        }
        let mut updated = existing.clone();
        updated.data = desired.data.clone();
        updated.string_data = None;
        updated.type_ = desired.type_.clone();
        updated.labels_mut().extend(desired.labels().clone());
        for owner in desired.owner_references() {
            let refs = updated.owner_references_mut();
            if !refs.iter().any(|e| e.uid == owner.uid) {
                refs.push(owner.clone());
            }
        }
        api.replace(&name, &pp, &updated)
            .await
            .map_err(api_err(format!("replace Secret {name:?}")))?;
        debug!(secret = %name, "updated");
        Ok(true)
    }

    /// Server-side applies `desired` unless `existing` carries the same spec hash.
    async fn apply_if_changed<K>(
        &self,
        api: &Api<K>,
        existing: Option<&K>,
        desired: &K,
    ) -> Result<bool, Error>
    where
        K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        if existing.is_some_and(|e| gateway::applied_hash(e) == gateway::applied_hash(desired)) {
            return Ok(false);
        }
        let name = desired.name_any();
        let pp = PatchParams::apply(&self.settings.field_manager).force();
        api.patch(&name, &pp, &Patch::Apply(desired))
            .await
            .map_err(api_err(format!(
                "apply {} {name:?}",
                K::kind(&K::DynamicType::default())
            )))?;
        Ok(true)
    }

    async fn write_statuses(
        &self,
        ns: &str,
        snap: &Snapshot,
        observed: &BTreeMap<String, ServiceObservation>,
        failures: &mut Failures,
    ) -> usize {
        let mut writes = 0;
        let now = Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default());
        let services: Api<GostService> = Api::namespaced(self.client.clone(), ns);
        for gs in &snap.services {
            let name = gs.name_any();
            let obs = observed.get(&name).cloned().unwrap_or_default();
            let new = status::gost_service_status(gs, &obs, &now);
            self.record_events(gs, &obs).await;
            if gs.status.as_ref() != Some(&new) {
                let patched = services
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({ "status": new })),
                    )
                    .await
                    .map_err(api_err(format!("patch status of GostService {ns}/{name}")));
                failures.count(patched.map(|_| 1), &mut writes);
            }
        }
        // Forget GostServices of this namespace that are gone.
        let current: BTreeSet<String> = snap.services.iter().map(seen_key).collect();
        let prefix = format!("{ns}/");
        self.seen
            .lock()
            .expect("seen lock")
            .retain(|k, _| !k.starts_with(&prefix) || current.contains(k));
        let chains: Api<GostChain> = Api::namespaced(self.client.clone(), ns);
        let namespace = snap.namespace();
        for gc in &snap.chains {
            let name = gc.name_any();
            let (problem, warnings) = render::check_chain(&namespace, &name);
            let new = status::gost_chain_status(gc, problem.as_ref(), &warnings, &now);
            if gc.status.as_ref() != Some(&new) {
                let patched = chains
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({ "status": new })),
                    )
                    .await
                    .map_err(api_err(format!("patch status of GostChain {ns}/{name}")));
                failures.count(patched.map(|_| 1), &mut writes);
            }
        }
        writes
    }

    /// Events on changes only. Events are advisory: a failure to record one is logged and
    /// does not fail the reconcile (which would retry and repeat the others).
    async fn record_events(&self, gs: &GostService, obs: &ServiceObservation) {
        let uid = seen_key(gs);
        let reported = obs.reported();
        let before = self.seen.lock().expect("seen lock").get(&uid).cloned();
        let now = Seen {
            problems: reported.iter().map(|p| p.message.clone()).collect(),
            matched: obs.matched.clone(),
            // Not listed this time: what was known stands.
            without_sidecar: obs
                .without_sidecar
                .clone()
                .or_else(|| before.as_ref()?.without_sidecar.clone()),
        };
        let events = status::events(before.as_ref(), gs.status.as_ref(), &now, &reported);
        self.seen.lock().expect("seen lock").insert(uid, now);
        let reference = gs.object_ref(&());
        for ev in events {
            let event = KubeEvent {
                type_: if ev.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: ev.reason.clone(),
                note: Some(ev.note),
                action: "Render".to_string(),
                secondary: None,
            };
            // A recorder of its own for each event: kube's `Recorder` takes a second event of
            // the same reason on one object, within minutes, for a repeat of the first (its
            // key leaves the note out), and only counts it; the second note (another Secret,
            // a new typo) would be lost. `status::events` already leaves out what is unchanged.
            let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(gost_service = %gs.name_any(), reason = %ev.reason, error = %e, "could not record an event");
            }
        }
    }

    /// Completes once the GostService, GostChain and pod caches hold their first full list
    /// (before that an admission cannot render); false if a cache's watch ended first.
    pub async fn caches_filled(&self) -> bool {
        let stores = self.stores.read().expect("stores lock").clone();
        let (s, c, p) = future::join3(
            stores.services.wait_until_ready(),
            stores.chains.wait_until_ready(),
            stores.pods.wait_until_ready(),
        )
        .await;
        s.is_ok() && c.is_ok() && p.is_ok()
    }

    /// Renders the config of `pod`'s group and writes its Secret (unless `dry_run`), for the
    /// admission webhook: the sidecar then starts with its config. Returns the Secret's name
    /// and the ports the config listens on.
    pub async fn ensure_pod_config(
        &self,
        namespace: &str,
        pod: &Pod,
        dry_run: bool,
    ) -> Result<SidecarConfig, String> {
        let group = Group::of_pod(&pod.metadata).ok_or_else(|| {
            "the pod has neither a controller owner nor a name, so its config Secret cannot be named; give it a name".to_string()
        })?;
        let name = group.secret_name();
        // Rendering from caches that are still empty would overwrite the group's Secret with a
        // config without services, cutting the tunnels of the workload's running pods.
        if !matches!(
            tokio::time::timeout(ENSURE_READY_TIMEOUT, self.caches_filled()).await,
            Ok(true)
        ) {
            return Err(format!(
                "the operator is starting and has not read the GostServices yet; the config Secret {name:?} is written once it has"
            ));
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let snap = self
            .snapshot_for(namespace, Some(&labels))
            .await
            .map_err(|e| e.to_string())?;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let mut last = String::new();
        for _ in 0..ENSURE_ATTEMPTS {
            // The group's other pods run what its Secret holds: render over it, so that a
            // service that no longer renders is kept for them (and this pod) as it is there.
            let existing = api
                .get_opt(&name)
                .await
                .map_err(|e| format!("get Secret {namespace}/{name}: {e}"))?;
            let previous = previous_config(namespace, existing.as_ref());
            let rendered = render_for_pod(
                &snap.namespace(),
                &labels,
                &self.render_settings(),
                previous.as_ref(),
            );
            let configured = SidecarConfig {
                secret: name.clone(),
                listen_ports: rendered.listen_ports(),
            };
            if dry_run {
                return Ok(configured);
            }
            let desired = group_secret(namespace, &name, &group, &rendered);
            match self.write_secret(&api, existing.as_ref(), desired).await {
                Ok(wrote) => {
                    metrics().wrote("admission", usize::from(wrote));
                    return Ok(configured);
                }
                Err(Error::Api {
                    source: kube::Error::Api(status),
                    action,
                }) if status.code == 409 => last = format!("{action}: {}", status.message),
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!(
            "{last} (still conflicting after {ENSURE_ATTEMPTS} attempts)"
        ))
    }

    fn backoff(&self, ns: &str) -> (u32, Duration) {
        let mut failures = self.failures.lock().expect("failures lock");
        let n = failures.entry(ns.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let exp = (*n - 1).min(16);
        (*n, (BASE_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF))
    }

    /// Whether the namespace's last reconcile failed.
    fn failed_before(&self, ns: &str) -> bool {
        self.failures
            .lock()
            .expect("failures lock")
            .get(ns)
            .is_some_and(|n| *n > 0)
    }

    fn succeeded(&self, ns: &str) {
        self.failures.lock().expect("failures lock").remove(ns);
    }
}

/// The key of a GostService in [`Context::seen`]: namespace and UID (a GostService deleted and
/// created again under the same name starts afresh).
fn seen_key(gs: &GostService) -> String {
    format!(
        "{}/{}",
        gs.namespace().unwrap_or_default(),
        gs.uid().unwrap_or_else(|| gs.name_any())
    )
}

fn by_name<K: Resource>(items: Vec<K>) -> BTreeMap<String, K> {
    items.into_iter().map(|o| (o.name_any(), o)).collect()
}

async fn delete<K>(api: &Api<K>, name: &str) -> Result<usize, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            info!(%kind, %name, "deleted: its GostService no longer asks for a gateway");
            Ok(1)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(0),
        Err(e) => Err(api_err(format!("delete {kind} {name:?}"))(e)),
    }
}

/// The errors of one reconcile's writes: each is logged, and the reconcile fails with the
/// first one once everything else was done.
#[derive(Default)]
struct Failures(Vec<Error>);

impl Failures {
    fn push(&mut self, error: Error) {
        self.0.push(error);
    }

    /// Adds the writes of `result`, or keeps its error.
    fn count(&mut self, result: Result<usize, Error>, writes: &mut usize) {
        match result {
            Ok(n) => *writes += n,
            Err(e) => self.push(e),
        }
    }

    /// The first error, the others logged.
    fn into_first(self, ns: &str) -> Option<Error> {
        let mut errors = self.0.into_iter();
        let first = errors.next();
        for other in errors {
            warn!(namespace = %ns, error = %other, "write failed");
        }
        first
    }
}

/// Whether a retry may cure `error`: not when the API server refused the request as invalid
/// or forbidden (4xx), which only a change of the resource cures (and that triggers a
/// reconcile anyway).
fn retryable(error: &Error) -> bool {
    match error {
        Error::Api {
            source: kube::Error::Api(status),
            ..
        } => !(400..500).contains(&status.code) || matches!(status.code, 408 | 409 | 429),
        _ => true,
    }
}

/// Whether `error` is a conflict: another writer (admission) got there between read and write.
fn conflict(error: &Error) -> bool {
    matches!(
        error,
        Error::Api {
            source: kube::Error::Api(status),
            ..
        } if status.code == 409
    )
}

/// A problem of `gs`'s gateway (no service, no chain).
fn gateway_problem(gs: &GostService, reason: Reason, message: String) -> Problem {
    Problem {
        gost_service: gs.name_any(),
        service: None,
        gost_chain: None,
        reason,
        message,
    }
}

/// `error`, met while applying `gs`'s gateway, as a problem saying what to do about it.
fn gateway_not_applied(gs: &GostService, error: &Error) -> Problem {
    let message = match error {
        Error::Api {
            action,
            source: kube::Error::Api(status),
        } if !retryable(error) => format!(
            "the API server refused to {action}: {}; fix what it names in spec.gateway",
            status.message
        ),
        Error::Api { action, source } => {
            format!("could not {action} ({source}); the operator retries with backoff")
        }
        other => format!("{other}; the operator retries with backoff"),
    };
    gateway_problem(gs, Reason::GatewayNotApplied, message)
}

/// `error`, met writing the config Secret of `group`, as a problem of GostService `gs` (one
/// its pods match), saying what it means for the workload.
fn config_not_written(gs: &str, group: &Group, error: &Error) -> Problem {
    let workload = group.workload();
    let why = match error {
        Error::Api {
            action,
            source: kube::Error::Api(status),
        } if !retryable(error) => format!("the API server refused to {action}: {}", status.message),
        Error::Api {
            action,
            source: kube::Error::Api(status),
        } => format!(
            "could not {action} ({}); the operator retries with backoff",
            status.message
        ),
        Error::Api { action, source } => {
            format!("could not {action} ({source}); the operator retries with backoff")
        }
        other => format!("{other}; the operator retries with backoff"),
    };
    Problem {
        gost_service: gs.to_string(),
        service: None,
        gost_chain: None,
        reason: Reason::ConfigNotWritten,
        message: format!(
            "the config of {workload} is not written: {why}. Its running pods keep the config they have; its new pods start without the sidecar until it is written"
        ),
    }
}

/// The config that `secret` (a config Secret of ours, if it exists) holds, for rendering over
/// it; `None`, with a warning, when it does not load (edited by hand): nothing is kept then.
fn previous_config(ns: &str, secret: Option<&Secret>) -> Option<Previous> {
    let secret = secret?;
    let empty = BTreeMap::new();
    match Previous::from_secret_data(secret.data.as_ref().unwrap_or(&empty)) {
        Ok(previous) => Some(previous),
        Err(e) => {
            warn!(
                secret = %format!("{ns}/{}", secret.name_any()),
                "the config Secret {e}; services that no longer render cannot be kept from it"
            );
            None
        }
    }
}

/// Records in `observed` the services that `r` kept as last rendered, and `where_` (the
/// workload or gateway that runs them).
fn note_kept(observed: &mut BTreeMap<String, ServiceObservation>, r: &Rendered, where_: &str) {
    for (gs, svc) in &r.kept {
        observed
            .entry(gs.clone())
            .or_default()
            .kept
            .entry(svc.clone())
            .or_default()
            .insert(where_.to_string());
    }
}

fn add_problems(into: &mut Vec<Problem>, new: &[Problem]) {
    for p in new {
        if !into
            .iter()
            .any(|q| q.reason == p.reason && q.message == p.message)
        {
            into.push(p.clone());
        }
    }
}

/// The config groups of `pods` (sorted by name), by the config Secret they mount: the group and
/// the pod whose labels the Secret is rendered from.
///
/// A pod mounts the Secret the webhook named in its [`INJECTED_ANNOTATION`] at admission (else,
/// for a pod labelled by hand, the one its group names now). Pods mounting one Secret had the
/// same labels then; should their labels differ now (edited since), the Secret is rendered
/// from a pod whose labels still give its name, else from the first.
fn config_groups(
    pods: &[Arc<PartialObjectMeta<Pod>>],
) -> BTreeMap<String, (Group, &PartialObjectMeta<Pod>)> {
    let mut groups: BTreeMap<String, (Group, &PartialObjectMeta<Pod>)> = BTreeMap::new();
    for pod in pods {
        let Some(group) = Group::of_pod(&pod.metadata) else {
            continue;
        };
        let named = group.secret_name();
        let mounted = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INJECTED_ANNOTATION))
            // Only our Secrets: an annotation cannot make the controller write another one.
            .filter(|name| name.starts_with(SECRET_PREFIX))
            .cloned()
            .unwrap_or_else(|| named.clone());
        let matches = named == mounted;
        match groups.entry(mounted) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert((group, pod));
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                let first_matches = slot.get().0.secret_name() == *slot.key();
                if matches && !first_matches {
                    slot.insert((group, pod));
                }
            }
        }
    }
    groups
}

/// The config Secret `name` of `group`, rendered as `r`.
fn group_secret(ns: &str, name: &str, group: &Group, r: &Rendered) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(group::secret_labels(group)),
            owner_references: group.owner_reference().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(r.secret_data()),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    }
}

/// The names of the Secrets the GostServices and GostChains reference.
pub fn referenced_secrets<'a>(
    services: impl IntoIterator<Item = &'a GostService>,
    chains: impl IntoIterator<Item = &'a GostChain>,
) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let auth = |a: Option<&AuthSpec>, names: &mut BTreeSet<String>| {
        if let Some(a) = a {
            names.insert(a.secret_ref.name.clone());
        }
    };
    let tls = |t: Option<&TlsSpec>, names: &mut BTreeSet<String>| {
        if let Some(t) = t {
            names.extend(t.certificate_secret.iter().map(|s| s.name.clone()));
            names.extend(t.ca_secret.iter().map(|s| s.name.clone()));
        }
    };
    for svc in services.into_iter().flat_map(|gs| &gs.spec.services) {
        auth(svc.handler.auth.as_ref(), &mut names);
        auth(svc.listener.auth.as_ref(), &mut names);
        tls(svc.handler.tls.as_ref(), &mut names);
        tls(svc.listener.tls.as_ref(), &mut names);
    }
    for node in chains
        .into_iter()
        .flat_map(|c| &c.spec.hops)
        .flat_map(|h| &h.nodes)
    {
        auth(node.connector.auth.as_ref(), &mut names);
        auth(node.dialer.auth.as_ref(), &mut names);
        tls(node.connector.tls.as_ref(), &mut names);
        tls(node.dialer.tls.as_ref(), &mut names);
    }
    names
}

/// A namespace to reconcile, sent by the watchers. The applier runs kube-runtime's debounced
/// scheduler and runner over object references of a store; a namespace key is kept as a
/// `Namespace` object in a store of our own, so no Namespace watch (nor RBAC for it) is needed.
#[derive(Clone)]
struct Queue {
    writer: Arc<Mutex<reflector::store::Writer<K8sNamespace>>>,
    reader: Store<K8sNamespace>,
    tx: mpsc::UnboundedSender<ObjectRef<K8sNamespace>>,
}

impl Queue {
    fn new() -> (Queue, mpsc::UnboundedReceiver<ObjectRef<K8sNamespace>>) {
        let mut writer = reflector::store::Writer::<K8sNamespace>::default();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Queue {
            reader: writer.as_reader(),
            writer: Arc::new(Mutex::new(writer)),
            tx,
        };
        (queue, rx)
    }

    fn push(&self, ns: &str) {
        let key = ObjectRef::<K8sNamespace>::new(ns);
        if self.reader.get(&key).is_none() {
            let obj = K8sNamespace {
                metadata: ObjectMeta {
                    name: Some(ns.to_string()),
                    ..ObjectMeta::default()
                },
                ..K8sNamespace::default()
            };
            self.writer
                .lock()
                .expect("queue lock")
                .apply_watcher_event(&Event::Apply(obj));
        }
        // The receiver lives as long as the applier; after it stops nothing needs queueing.
        let _ = self.tx.send(key);
    }
}

/// Remembers a fingerprint per object, so that watch events that change nothing we read (a
/// pod's status, a GostService's own status write) queue nothing.
#[derive(Default)]
struct Fingerprints(HashMap<String, u64>);

impl Fingerprints {
    fn changed(&mut self, key: String, fingerprint: u64) -> bool {
        self.0.insert(key, fingerprint) != Some(fingerprint)
    }

    /// Whether there was a fingerprint to forget.
    fn forget(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }
}

/// The fingerprint of a pod without the sidecar when a GostService of its namespace selects it:
/// what decides whether it counts (its labels, its opt-in annotation, whether it is being
/// deleted). `None` for the others, which no status mentions.
fn uninjected_fingerprint(
    services: &Store<GostService>,
    pod: &PartialObjectMeta<Pod>,
) -> Option<u64> {
    let meta = &pod.metadata;
    let ns = meta.namespace.as_deref()?;
    let no_labels = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&no_labels);
    let selected = services.state().iter().any(|gs| {
        gs.metadata.namespace.as_deref() == Some(ns)
            && gs
                .spec
                .selector
                .as_ref()
                .is_some_and(|sel| render::selects(sel, labels) == Ok(true))
    });
    selected.then(|| {
        fingerprint((
            labels,
            meta.annotations.as_ref().and_then(|a| a.get(INJECT_KEY)),
            meta.deletion_timestamp.is_some(),
            &meta.uid,
        ))
    })
}

fn fingerprint(parts: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

fn object_key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default()
    )
}

/// Runs the future `start` makes while `leading` is true: started when this replica leads,
/// dropped when it stops leading, started anew when it leads again.
async fn while_leading<F: Future<Output = ()>>(
    mut leading: tokio::sync::watch::Receiver<bool>,
    mut start: impl FnMut() -> F,
) {
    loop {
        // Until this replica leads; a closed channel (shutting down) never will.
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return future::pending().await;
            }
        }
        let lost = async {
            loop {
                if leading.changed().await.is_err() {
                    return future::pending().await;
                }
                if !*leading.borrow_and_update() {
                    return;
                }
            }
        };
        tokio::select! {
            () = start() => return,
            () = lost => {}
        }
    }
}

/// Feeds `events` into `queue`: the namespace of every object whose fingerprint changed, or
/// that was deleted. Watch errors are logged; the stream's backoff retries them.
async fn watch_into<K, S, F>(what: &'static str, events: S, queue: Queue, mut fp: F)
where
    K: Resource,
    S: futures_util::Stream<Item = Result<Event<K>, watcher::Error>>,
    F: FnMut(&K) -> Option<u64>,
{
    let mut seen = Fingerprints::default();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                let Some(f) = fp(&obj) else {
                    // No longer of interest (a pod relabelled out of a selector): a status
                    // that counted it changes.
                    if seen.forget(&object_key(obj.meta()))
                        && let Some(ns) = obj.meta().namespace.as_deref()
                    {
                        queue.push(ns);
                    }
                    continue;
                };
                if seen.changed(object_key(obj.meta()), f)
                    && let Some(ns) = obj.meta().namespace.as_deref()
                {
                    queue.push(ns);
                }
            }
            Ok(Event::Delete(obj)) => {
                seen.forget(&object_key(obj.meta()));
                if fp(&obj).is_some()
                    && let Some(ns) = obj.meta().namespace.as_deref()
                {
                    queue.push(ns);
                }
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => warn!(watch = what, error = %e, "watch failed; retrying with backoff"),
        }
    }
}

/// The admission webhook renders a pod's config Secret with the controller's context.
impl crate::webhook::PodConfig for Context {
    fn ensure_config(
        &self,
        namespace: &str,
        pod: &Pod,
        dry_run: bool,
    ) -> impl Future<Output = Result<SidecarConfig, String>> + Send {
        self.ensure_pod_config(namespace, pod, dry_run)
    }
}

/// A controller whose context exists (so the admission webhook can render with it) and whose
/// watches and reconciles start with [`Prepared::run`].
pub struct Prepared {
    client: Client,
    ctx: Arc<Context>,
    namespace: Option<String>,
    debounce: Duration,
    writers: (
        reflector::store::Writer<GostService>,
        reflector::store::Writer<GostChain>,
        reflector::store::Writer<PartialObjectMeta<Pod>>,
    ),
    namespaces: (
        reflector::store::Writer<PartialObjectMeta<K8sNamespace>>,
        Store<PartialObjectMeta<K8sNamespace>>,
    ),
    readers: (
        Store<GostService>,
        Store<GostChain>,
        Store<PartialObjectMeta<Pod>>,
    ),
}

/// Creates the controller's context and empty stores; [`Prepared::run`] fills and uses them.
pub fn prepare(client: Client, settings: Settings) -> Prepared {
    let (services_r, services_w) = reflector::store::<GostService>();
    let (chains_r, chains_w) = reflector::store::<GostChain>();
    let (pods_r, pods_w) = reflector::store::<PartialObjectMeta<Pod>>();
    let (namespaces_r, namespaces_w) = reflector::store::<PartialObjectMeta<K8sNamespace>>();
    let namespace = settings.namespace.clone();
    let debounce = settings.debounce;
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        Stores {
            services: services_r.clone(),
            chains: chains_r.clone(),
            pods: pods_r.clone(),
        },
    ));
    ctx.set_namespace_labels(namespaces_r.clone());
    Prepared {
        client,
        ctx,
        namespace,
        debounce,
        writers: (services_w, chains_w, pods_w),
        readers: (services_r, chains_r, pods_r),
        namespaces: (namespaces_w, namespaces_r),
    }
}

impl Prepared {
    /// The context: what the admission webhook renders pod configs with.
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// The namespaces' metadata (their opt-in label), filled by [`Prepared::run`]: what the
    /// admission webhook decides injection with, and the controller which pods should have the
    /// sidecar.
    pub fn namespaces(&self) -> Store<PartialObjectMeta<K8sNamespace>> {
        self.namespaces.1.clone()
    }

    /// Runs until `shutdown` completes: watches GostServices, GostChains, injected pods
    /// (metadata only), Namespace metadata, Secret metadata, the metadata of pods without the
    /// sidecar (uncached) and gateway Deployments on every replica (the webhook needs the
    /// caches), and reconciles the namespaces they touch while `leading` is true.
    /// A replica that becomes leader reconciles every namespace it knows of.
    pub async fn run(
        self,
        leading: tokio::sync::watch::Receiver<bool>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        run_prepared(self, leading, shutdown).await
    }
}

async fn run_prepared(
    prepared: Prepared,
    leading: tokio::sync::watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let Prepared {
        client,
        ctx,
        namespace,
        debounce,
        writers: (services_w, chains_w, pods_w),
        readers: (services_r, chains_r, pods_r),
        namespaces: (namespaces_w, _),
    } = prepared;
    let ns = namespace.as_deref();
    let (queue, rx) = Queue::new();
    let cfg = watcher::Config::default();

    let services = watch_into(
        "GostService",
        reflect(
            services_w,
            kube::runtime::watcher(scoped(&client, ns), cfg.clone()),
        )
        .default_backoff(),
        queue.clone(),
        |gs: &GostService| Some(fingerprint(gs.metadata.generation)),
    );
    let chains = watch_into(
        "GostChain",
        reflect(
            chains_w,
            kube::runtime::watcher(scoped(&client, ns), cfg.clone()),
        )
        .default_backoff(),
        queue.clone(),
        |gc: &GostChain| Some(fingerprint(gc.metadata.generation)),
    );
    let pods = watch_into(
        "Pod",
        reflect(
            pods_w,
            kube::runtime::watcher(
                scoped::<PartialObjectMeta<Pod>>(&client, ns),
                cfg.clone()
                    .labels(&format!("{INJECTED_LABEL}={INJECTED_VALUE}")),
            ),
        )
        .default_backoff(),
        queue.clone(),
        |p: &PartialObjectMeta<Pod>| {
            Some(fingerprint((
                &p.metadata.labels,
                p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(INJECTED_ANNOTATION)),
                p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .map(|o| (&o.kind, &o.name, &o.uid, o.controller))
                    .collect::<Vec<_>>(),
                &p.metadata.uid,
            )))
        },
    );
    // Only referenced Secrets matter; which ones are referenced is read from the stores when
    // a Secret changes (the initial list is skipped: every namespace is reconciled then).
    let (svc_for_secrets, chains_for_secrets) = (services_r.clone(), chains_r.clone());
    let secrets = watch_into(
        "Secret",
        kube::runtime::watcher(
            scoped::<PartialObjectMeta<Secret>>(&client, ns),
            cfg.clone(),
        )
        .default_backoff(),
        queue.clone(),
        move |s: &PartialObjectMeta<Secret>| {
            if s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY) {
                return None;
            }
            let ns = s.metadata.namespace.as_deref()?;
            let in_ns = |m: &ObjectMeta| m.namespace.as_deref() == Some(ns);
            let gs = svc_for_secrets.state();
            let gc = chains_for_secrets.state();
            referenced_secrets(
                gs.iter().map(|o| &**o).filter(|o| in_ns(&o.metadata)),
                gc.iter().map(|o| &**o).filter(|o| in_ns(&o.metadata)),
            )
            .contains(&s.name_any())
            .then(|| fingerprint(&s.metadata.resource_version))
        },
    );
    let deployments = watch_into(
        "Deployment",
        kube::runtime::watcher(
            scoped::<Deployment>(&client, ns),
            cfg.clone().labels(&format!("{NAME_LABEL}={GATEWAY_APP}")),
        )
        .default_backoff(),
        queue.clone(),
        |d: &Deployment| {
            Some(fingerprint((
                d.status.as_ref().and_then(|s| s.available_replicas),
                d.metadata.generation,
            )))
        },
    );
    // Pods the webhook did not inject: metadata only, kept in no cache, and only those a
    // GostService of their namespace selects queue it (their own status changes do not).
    // Watched by the leader only: every pod of the cluster (or namespace) is in it, and only
    // the leader reconciles what it queues.
    let uninjected = {
        let (client, cfg, queue) = (client.clone(), cfg.clone(), queue.clone());
        let (services_for_pods, namespace) = (services_r.clone(), namespace.clone());
        while_leading(leading.clone(), move || {
            let services_for_pods = services_for_pods.clone();
            watch_into(
                "Pod without the sidecar",
                kube::runtime::watcher(
                    scoped::<PartialObjectMeta<Pod>>(&client, namespace.as_deref()),
                    cfg.clone()
                        .labels(&format!("{INJECTED_LABEL}!={INJECTED_VALUE}")),
                )
                .default_backoff(),
                queue.clone(),
                move |p: &PartialObjectMeta<Pod>| uninjected_fingerprint(&services_for_pods, p),
            )
        })
    };
    // Every namespace's metadata, whatever `--namespace` says: Namespaces have none.
    let namespaces = reflect(
        namespaces_w,
        kube::runtime::watcher(
            Api::<PartialObjectMeta<K8sNamespace>>::all(client.clone()),
            cfg.clone(),
        ),
    )
    .default_backoff()
    .for_each(|event| async move {
        if let Err(e) = event {
            warn!(error = %e, "namespace watch failed; retrying with backoff");
        }
    });
    let watchers = future::join3(
        future::join5(services, chains, pods, secrets, deployments),
        uninjected,
        namespaces,
    );

    let ready = {
        let (s, c, p) = (services_r.clone(), chains_r.clone(), pods_r.clone());
        async move {
            let _ = future::join3(
                s.wait_until_ready(),
                c.wait_until_ready(),
                p.wait_until_ready(),
            )
            .await;
        }
    };
    let promotions = {
        let (queue, mut leading) = (queue.clone(), leading.clone());
        let (s, c, p) = (services_r.clone(), chains_r.clone(), pods_r.clone());
        async move {
            while leading.changed().await.is_ok() {
                if !*leading.borrow_and_update() {
                    info!("no longer the leader; reconciles pause");
                    continue;
                }
                info!("leader now; reconciling every namespace");
                let mut namespaces = BTreeSet::new();
                namespaces.extend(
                    s.state()
                        .iter()
                        .filter_map(|o| o.metadata.namespace.clone()),
                );
                namespaces.extend(
                    c.state()
                        .iter()
                        .filter_map(|o| o.metadata.namespace.clone()),
                );
                namespaces.extend(
                    p.state()
                        .iter()
                        .filter_map(|o| o.metadata.namespace.clone()),
                );
                for ns in namespaces {
                    queue.push(&ns);
                }
            }
            // The elector is gone (shutting down): nothing more to promote.
            future::pending::<()>().await;
        }
    };
    let applier = async move {
        // Reconciles before the first lists arrive would see empty stores and undo work.
        ready.await;
        info!("caches filled; reconciling");
        drive(ctx, queue, rx, debounce, leading).await;
    };
    let applier = async move {
        tokio::select! {
            () = applier => {}
            () = promotions => {}
        }
    };
    tokio::select! {
        () = shutdown => {
            info!("controller shutting down");
            Ok(())
        }
        () = applier => Err(Error::Stopped("the reconcile queue ended".into())),
        _ = watchers => Err(Error::Stopped("the watches ended".into())),
    }
}

/// Reconciles the namespaces pushed into `queue` until it closes: kube-runtime's applier
/// debounces bursts, never runs one namespace twice at once, requeues each success after
/// [`RESYNC_PERIOD`] and each failure after a growing backoff.
async fn drive(
    ctx: Arc<Context>,
    queue: Queue,
    rx: mpsc::UnboundedReceiver<ObjectRef<K8sNamespace>>,
    debounce: Duration,
    leading: tokio::sync::watch::Receiver<bool>,
) {
    let requests = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|r| (Ok::<_, Infallible>(r), rx))
    });
    applier(
        |key: Arc<K8sNamespace>, ctx: Arc<Context>| {
            let leader = *leading.borrow();
            Box::pin(async move {
                let ns = key.name_any();
                if !leader {
                    // A follower keeps its caches for the webhook and writes nothing; the
                    // namespace is queued again when this replica becomes leader.
                    return Ok(Action::await_change());
                }
                let started = Instant::now();
                let result = ctx.reconcile(&ns).await;
                metrics().reconciled(result.is_ok(), started.elapsed());
                let summary = result?;
                metrics().wrote("reconcile", summary.writes);
                ctx.succeeded(&ns);
                debug!(namespace = %ns, groups = summary.groups, writes = summary.writes, "reconciled");
                let next = summary
                    .requeue_after
                    .map_or(RESYNC_PERIOD, |d| d.min(RESYNC_PERIOD));
                Ok::<_, Error>(Action::requeue(next))
            })
        },
        |key: Arc<K8sNamespace>, err: &Error, ctx: Arc<Context>| {
            let ns = key.name_any();
            let (attempt, delay) = ctx.backoff(&ns);
            warn!(namespace = %ns, attempt, retry_in = ?delay, error = %err, "reconcile failed");
            Action::requeue(delay)
        },
        ctx,
        queue.reader.clone(),
        requests,
        controller::Config::default()
            .debounce(debounce)
            .concurrency(CONCURRENCY),
    )
    .for_each(|result| async move {
        if let Err(e) = result {
            // Reconcile failures were logged by the error policy.
            debug!(error = %e, "applier");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kube_fake_client::{ClientBuilder, interceptor};
    use serde_json::json;

    /// Bounds every wait in these tests.
    const WAIT: Duration = Duration::from_secs(10);

    fn objects() -> Vec<serde_json::Value> {
        vec![
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "p", "namespace": "apps", "uid": "pod-uid",
                                "labels": {"app": "web", "gost.rs/injected": "true"}},
                   "spec": {"containers": [{"name": "a", "image": "a"}]}}),
            json!({"apiVersion": "gost.rs/v1alpha1", "kind": "GostService",
                   "metadata": {"name": "web", "namespace": "apps"},
                   "spec": {"selector": {"matchLabels": {"app": "web"}},
                            "services": [{"name": "s", "addr": ":8000"}]}}),
        ]
    }

    async fn wait_for_secret(client: &Client, started: Instant) -> Duration {
        let api: Api<Secret> = Api::namespaced(client.clone(), "apps");
        loop {
            if api.get_opt("gost-sidecar-pod-p").await.unwrap().is_some() {
                return started.elapsed();
            }
            assert!(started.elapsed() < WAIT, "no Secret after {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let ctx = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let client = ClientBuilder::new().build().await.unwrap();
                let empty = Stores {
                    services: filled(Vec::new()),
                    chains: filled(Vec::new()),
                    pods: filled(Vec::new()),
                };
                Context::new(client, Settings::default(), empty)
            });
        let delays: Vec<Duration> = (0..12).map(|_| ctx.backoff("a").1).collect();
        assert_eq!(delays[0], BASE_BACKOFF);
        assert_eq!(delays[1], BASE_BACKOFF * 2);
        assert_eq!(*delays.last().unwrap(), MAX_BACKOFF);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(ctx.backoff("b").1, BASE_BACKOFF, "per namespace");
        ctx.succeeded("a");
        assert_eq!(ctx.backoff("a").1, BASE_BACKOFF);
    }

    /// The watch of pods without the sidecar queues a namespace for the pods a GostService
    /// there selects, when something that decides whether they count changes, and when one
    /// stops being selected (relabelled); other pods and status-only changes queue nothing.
    #[tokio::test]
    async fn uninjected_pods_queue_their_namespace_only_when_selected() {
        let gs: GostService = serde_json::from_value(objects()[1].clone()).unwrap();
        let services = filled(vec![gs]);
        let pod = |ns: &str, name: &str, app: &str, version: &str| {
            ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("app".into(), app.into())])),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            }
            .into_response_partial::<Pod>()
        };
        let events = vec![
            Event::InitApply(pod("apps", "a", "web", "1")),
            Event::InitApply(pod("apps", "db", "db", "1")),
            Event::InitApply(pod("shop", "b", "web", "1")),
            Event::InitDone,
            // Its status changed: the metadata watch sees only a new resourceVersion.
            Event::Apply(pod("apps", "a", "web", "2")),
            Event::Apply(pod("apps", "db", "db", "2")),
            Event::Apply(pod("apps", "a", "db", "3")),
            Event::Delete(pod("apps", "db", "db", "4")),
            Event::Apply(pod("apps", "c", "web", "1")),
            Event::Delete(pod("apps", "c", "web", "2")),
        ];
        let (queue, mut rx) = Queue::new();
        watch_into(
            "Pod without the sidecar",
            stream::iter(events.into_iter().map(Ok)),
            queue,
            |p: &PartialObjectMeta<Pod>| uninjected_fingerprint(&services, p),
        )
        .await;
        let mut queued = Vec::new();
        while let Ok(key) = rx.try_recv() {
            queued.push(key.name);
        }
        // a listed, a relabelled out of the selector, c created, c deleted.
        assert_eq!(queued, ["apps", "apps", "apps", "apps"]);
    }

    #[tokio::test]
    async fn a_leaders_watch_runs_only_while_it_leads() {
        let (lead, leading) = tokio::sync::watch::channel(false);
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        struct Running(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let task = tokio::spawn(while_leading(leading, {
            let (started, running) = (started.clone(), running.clone());
            move || {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let guard = Running(running.clone());
                async move {
                    let _guard = guard;
                    future::pending::<()>().await
                }
            }
        }));
        // Polls until `what` holds, within 5 s.
        async fn until(what: impl Fn() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !what() {
                assert!(Instant::now() < deadline, "not within 5 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let count =
            |n: &Arc<std::sync::atomic::AtomicUsize>| n.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(count(&started), 0, "a follower watches nothing");
        lead.send(true).unwrap();
        until(|| count(&running) == 1).await;
        lead.send(false).unwrap();
        until(|| count(&running) == 0).await;
        lead.send(true).unwrap();
        until(|| count(&running) == 1).await;
        assert_eq!(count(&started), 2);
        task.abort();
    }

    #[tokio::test]
    async fn run_can_be_spawned() {
        fn spawnable<F: Future + Send + 'static>(_: &F) {}
        let client = ClientBuilder::new().build().await.unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (_lead, leading) = tokio::sync::watch::channel(true);
        let controller = prepare(client, Settings::default()).run(leading, async move {
            let _ = stopped.await;
        });
        spawnable(&controller);
    }

    #[tokio::test]
    async fn the_admission_render_waits_for_filled_caches() {
        let client = ClientBuilder::new().build().await.unwrap();
        let (services, _services_writer) = reflector::store::<GostService>();
        let stores = Stores {
            services,
            chains: filled(Vec::new()),
            pods: filled(Vec::new()),
        };
        let ctx = Context::new(client, Settings::default(), stores);
        let pod: Pod = serde_json::from_value(objects()[0].clone()).unwrap();
        let started = Instant::now();
        let err = ctx
            .ensure_pod_config("apps", &pod, false)
            .await
            .unwrap_err();
        assert!(err.contains("has not read the GostServices yet"), "{err}");
        assert!(started.elapsed() < ENSURE_READY_TIMEOUT + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn queued_namespaces_are_reconciled_after_the_debounce() {
        let client = ClientBuilder::new()
            .with_resource::<GostService>()
            .with_resource::<GostChain>()
            .with_runtime_objects(objects())
            .build()
            .await
            .unwrap();
        let stores = Stores::list(&client, None).await.unwrap();
        let ctx = Arc::new(Context::new(client.clone(), Settings::default(), stores));
        let (queue, rx) = Queue::new();
        let debounce = Duration::from_millis(200);
        let driver = tokio::spawn(drive(
            ctx,
            queue.clone(),
            rx,
            debounce,
            tokio::sync::watch::channel(true).1,
        ));
        let started = Instant::now();
        // A burst of triggers: one reconcile.
        for _ in 0..100 {
            queue.push("apps");
        }
        let took = wait_for_secret(&client, started).await;
        assert!(took >= debounce, "ran before the debounce: {took:?}");
        // The reconcile and its writes are counted (metrics are per process, so at least).
        let counted = |text: &str, prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = String::from_utf8(metrics().encode()).unwrap();
            if counted(&text, "gost_operator_reconciles_total{result=\"ok\"}") >= 1.0
                && counted(
                    &text,
                    "gost_operator_object_writes_total{source=\"reconcile\"}",
                ) >= 1.0
            {
                break;
            }
            assert!(Instant::now() < deadline, "reconcile not counted:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        driver.abort();
    }

    #[tokio::test]
    async fn a_follower_writes_nothing_until_it_leads() {
        let client = ClientBuilder::new()
            .with_resource::<GostService>()
            .with_resource::<GostChain>()
            .with_runtime_objects(objects())
            .build()
            .await
            .unwrap();
        let stores = Stores::list(&client, None).await.unwrap();
        let ctx = Arc::new(Context::new(client.clone(), Settings::default(), stores));
        let (queue, rx) = Queue::new();
        let (lead, leading) = tokio::sync::watch::channel(false);
        let driver = tokio::spawn(drive(ctx, queue.clone(), rx, Duration::ZERO, leading));
        queue.push("apps");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let api: Api<Secret> = Api::namespaced(client.clone(), "apps");
        assert!(
            api.get_opt("gost-sidecar-pod-p").await.unwrap().is_none(),
            "a follower rendered"
        );
        lead.send(true).unwrap();
        // Promotion queues the namespaces again (run_prepared does it from the stores).
        let started = Instant::now();
        queue.push("apps");
        wait_for_secret(&client, started).await;
        driver.abort();
    }

    #[tokio::test]
    async fn a_failed_reconcile_is_retried_with_backoff() {
        let creates = Arc::new(AtomicUsize::new(0));
        let seen = creates.clone();
        let client = ClientBuilder::new()
            .with_resource::<GostService>()
            .with_resource::<GostChain>()
            .with_runtime_objects(objects())
            .with_interceptor_funcs(interceptor::Funcs::new().create(move |c| {
                if c.object["kind"] == "Secret" && seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(kube_fake_client::Error::Internal("etcd is down".into()));
                }
                Ok(None)
            }))
            .build()
            .await
            .unwrap();
        let stores = Stores::list(&client, None).await.unwrap();
        let ctx = Arc::new(Context::new(client.clone(), Settings::default(), stores));
        let (queue, rx) = Queue::new();
        let driver = tokio::spawn(drive(
            ctx.clone(),
            queue.clone(),
            rx,
            Duration::ZERO,
            tokio::sync::watch::channel(true).1,
        ));
        let started = Instant::now();
        queue.push("apps");
        let took = wait_for_secret(&client, started).await;
        assert!(took >= BASE_BACKOFF, "retried without backoff: {took:?}");
        assert_eq!(creates.load(Ordering::SeqCst), 2);
        assert!(
            ctx.failures.lock().unwrap().is_empty(),
            "the success reset the backoff"
        );
        driver.abort();
    }
}
