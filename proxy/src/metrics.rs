//! Prometheus series of this process, in one registry that the metrics endpoint serves.
//!
//! GOST's series keep GOST's names and labels (gost-wire.md §10.1) so that existing dashboards
//! keep working. GOST labels some of them with the client's IP address, which lets a scan from
//! many addresses grow the registry without bound; here the first [`MAX_CLIENT_LABELS`]
//! distinct clients get their own label value and every later one is counted as `other`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    core::Collector,
};

/// Distinct client addresses that get a label value of their own, across all services:
/// enough to tell the clients of a sidecar or a gateway apart, small enough that a scan cannot
/// make scrapes heavy.
pub const MAX_CLIENT_LABELS: usize = 256;

/// The label value for clients beyond [`MAX_CLIENT_LABELS`].
pub const OTHER_CLIENTS: &str = "other";

/// GOST's buckets for a service request's duration, in seconds.
const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

/// GOST's buckets for establishing a route through a chain node, in seconds.
const CONNECT_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0,
];

/// The registry the metrics endpoint serves.
pub fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);
    &REGISTRY
}

/// Registers the standard `process_*` series (resident memory, CPU seconds, open file
/// descriptors, start time) that dashboards and GOST's Go exporter have; on the first
/// scrape, so that a process without a metrics endpoint never loads their code.
fn register_process_series() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        registry()
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process series are registered once");
    });
}

fn register<C: Collector + Clone + 'static>(collector: C) -> C {
    registry()
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn counters(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn histograms(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    register(
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("valid metric"),
    )
}

/// GOST's `host` label: this machine's (in Kubernetes, the pod's) host name.
fn host() -> &'static str {
    static HOST: LazyLock<String> = LazyLock::new(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string())
    });
    &HOST
}

/// GOST's series.
struct Gost {
    services: IntGaugeVec,
    requests: IntCounterVec,
    in_flight: IntGaugeVec,
    duration: HistogramVec,
    input_bytes: IntCounterVec,
    output_bytes: IntCounterVec,
    handler_errors: IntCounterVec,
    chain_errors: IntCounterVec,
    connect_duration: HistogramVec,
}

static GOST: LazyLock<Gost> = LazyLock::new(|| Gost {
    services: gauges("gost_services", "Current number of services", &["host"]),
    requests: counters(
        "gost_service_requests_total",
        "Total number of requests",
        &["host", "service", "client"],
    ),
    in_flight: gauges(
        "gost_service_requests_in_flight",
        "Current in-flight requests",
        &["host", "service", "client"],
    ),
    duration: histograms(
        "gost_service_request_duration_seconds",
        "Distribution of request latencies",
        &["host", "service"],
        REQUEST_DURATION_BUCKETS,
    ),
    input_bytes: counters(
        "gost_service_transfer_input_bytes_total",
        "Total service input data transfer size in bytes",
        &["host", "service", "client"],
    ),
    output_bytes: counters(
        "gost_service_transfer_output_bytes_total",
        "Total service output data transfer size in bytes",
        &["host", "service", "client"],
    ),
    handler_errors: counters(
        "gost_service_handler_errors_total",
        "Total service handler errors",
        &["host", "service", "client"],
    ),
    chain_errors: counters(
        "gost_chain_errors_total",
        "Total chain errors",
        &["host", "chain", "node"],
    ),
    connect_duration: histograms(
        "gost_chain_node_connect_duration_seconds",
        "Distribution of chain node connect latencies",
        &["host", "chain", "node"],
        CONNECT_DURATION_BUCKETS,
    ),
});

/// Open plain-HTTP-tunnel sessions (pht, phts, h3) per service: a session whose client
/// vanished must leave this gauge once it is reclaimed.
static PHT_SESSIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauges(
        "gost_pht_sessions",
        "Open plain HTTP tunnel sessions (pht, phts, h3)",
        &["host", "service"],
    )
});

/// The open-sessions gauge of the PHT server of `service`, labelled like every other series
/// (`host`, `service`).
pub fn pht_sessions(service: &str) -> prometheus::IntGauge {
    PHT_SESSIONS.with_label_values(&[host(), service])
}

/// gost-rs' own series about the running configuration and its services.
struct Runtime {
    generation: IntGaugeVec,
    last_reload: prometheus::GaugeVec,
    reload_errors: IntCounterVec,
    open_tunnels: IntGaugeVec,
    auth_failures: IntCounterVec,
    refused: IntCounterVec,
}

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| Runtime {
    generation: gauges(
        "gost_config_generation",
        "Configurations applied since start (1 = the initial one)",
        &["host"],
    ),
    last_reload: register(
        prometheus::GaugeVec::new(
            Opts::new(
                "gost_config_last_reload_success_timestamp_seconds",
                "When a configuration was last applied, in Unix seconds",
            ),
            &["host"],
        )
        .expect("valid metric"),
    ),
    reload_errors: counters(
        "gost_config_reload_errors_total",
        "Configurations that were refused; the previous one kept running",
        &["host"],
    ),
    open_tunnels: gauges(
        "gost_service_open_connections",
        "Connections a service is serving now (tunnels and proxy sessions)",
        &["host", "service"],
    ),
    auth_failures: counters(
        "gost_service_auth_failures_total",
        "Failed client authentications",
        &["host", "service"],
    ),
    refused: counters(
        "gost_service_refused_connections_total",
        "Connections closed at once because the service was at its connection limit",
        &["host", "service"],
    ),
});

/// A connection to `service` was refused at its connection limit.
pub fn connection_refused(service: &str) {
    RUNTIME.refused.with_label_values(&[host(), service]).inc();
}

/// A configuration was applied: the `generation`th.
pub fn config_applied(generation: u64) {
    RUNTIME
        .generation
        .with_label_values(&[host()])
        .set(generation as i64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    RUNTIME.last_reload.with_label_values(&[host()]).set(now);
}

/// A configuration was refused.
pub fn config_refused() {
    RUNTIME.reload_errors.with_label_values(&[host()]).inc();
}

/// A client of `service` failed to authenticate.
pub fn auth_failed(service: &str) {
    RUNTIME
        .auth_failures
        .with_label_values(&[host(), service])
        .inc();
}

/// The `client` label value for `client`: its IP address while fewer than
/// [`MAX_CLIENT_LABELS`] addresses have been seen, else [`OTHER_CLIENTS`].
pub fn client_label(client: SocketAddr) -> String {
    static SEEN: LazyLock<Mutex<HashSet<IpAddr>>> = LazyLock::new(Default::default);
    let ip = client.ip().to_canonical();
    let mut seen = SEEN.lock().expect("client label lock");
    if seen.contains(&ip) || (seen.len() < MAX_CLIENT_LABELS && seen.insert(ip)) {
        ip.to_string()
    } else {
        OTHER_CLIENTS.to_string()
    }
}

/// Sets the number of running services.
pub fn set_services(n: usize) {
    GOST.services.with_label_values(&[host()]).set(n as i64);
}

/// One accepted connection of a service: counted at once, in flight until dropped, when its
/// duration is observed.
pub struct Request {
    // Looked up once: a tunnel of a removed service that ends after its series were dropped
    // (see [`forget_service`]) must not bring them back.
    in_flight: prometheus::IntGauge,
    open: prometheus::IntGauge,
    duration: prometheus::Histogram,
    started: std::time::Instant,
}

impl Request {
    /// Counts a new connection of `service` from `client`.
    pub fn start(service: &str, client: SocketAddr) -> Self {
        let client = client_label(client);
        GOST.requests
            .with_label_values(&[host(), service, &client])
            .inc();
        let request = Request {
            in_flight: GOST
                .in_flight
                .with_label_values(&[host(), service, &client]),
            open: RUNTIME.open_tunnels.with_label_values(&[host(), service]),
            duration: GOST.duration.with_label_values(&[host(), service]),
            started: std::time::Instant::now(),
        };
        request.in_flight.inc();
        request.open.inc();
        request
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.in_flight.dec();
        self.open.dec();
        self.duration.observe(self.started.elapsed().as_secs_f64());
    }
}

/// Stops exporting the series of `service`, removed and drained: a configuration whose
/// services come and go (an operator's, a reload's) would otherwise pile up the series of
/// every service it ever had. A service of that name added later starts from zero, which
/// Prometheus reads as a counter reset.
pub fn forget_service(service: &str) {
    let keep = |labels: &HashMap<&str, &str>| labels.get("service") != Some(&service);
    forget(&GOST.requests, keep);
    forget(&GOST.in_flight, keep);
    forget(&GOST.duration, keep);
    forget(&GOST.input_bytes, keep);
    forget(&GOST.output_bytes, keep);
    forget(&GOST.handler_errors, keep);
    forget(&PHT_SESSIONS, keep);
    forget(&RUNTIME.open_tunnels, keep);
    forget(&RUNTIME.auth_failures, keep);
    forget(&RUNTIME.refused, keep);
}

/// The running configuration's routes (chain name, node name), once one was applied: the
/// chains and nodes that may have series. A dial through an earlier configuration's node
/// that ends after an apply removed it counts nowhere, rather than bringing its series back.
static ROUTES: Mutex<Option<Routes>> = Mutex::new(None);

/// A configuration's routes: the names of each chain's nodes. Looked up by `&str` on every
/// dial, without building a key.
#[derive(Clone, Debug, Default)]
pub struct Routes(HashMap<String, HashSet<String>>);

impl Routes {
    pub fn contains(&self, chain: &str, node: &str) -> bool {
        self.0.get(chain).is_some_and(|nodes| nodes.contains(node))
    }

    fn extend(&mut self, other: &Routes) {
        for (chain, nodes) in &other.0 {
            self.0
                .entry(chain.clone())
                .or_default()
                .extend(nodes.iter().cloned());
        }
    }
}

impl FromIterator<(String, String)> for Routes {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(routes: I) -> Routes {
        let mut all = Routes::default();
        for (chain, node) in routes {
            all.0.entry(chain).or_default().insert(node);
        }
        all
    }
}

/// Runs `count` with the series of `chain` and `node` unless they are not a route of the
/// running configuration, under the lock that [`keep_routes`] changes the routes under.
fn on_route(chain: &str, node: &str, count: impl FnOnce(&[&str])) {
    let routes = ROUTES.lock().unwrap_or_else(|e| e.into_inner());
    let current = routes
        .as_ref()
        .is_none_or(|routes| routes.contains(chain, node));
    if current {
        count(&[host(), chain, node]);
    }
}

/// Counts the series of `routes` too (chain name, node name): an apply's new routes, which
/// its services use before [`keep_routes`] drops the routes it removed.
pub fn add_routes(routes: &Routes) {
    let mut current = ROUTES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(current) = current.as_mut() {
        current.extend(routes);
    }
}

/// Stops exporting the series of chains and nodes that are not in `routes` (chain name, node
/// name), the running configuration's, and counts nothing for them from now on.
pub fn keep_routes(routes: Routes) {
    let mut current = ROUTES.lock().unwrap_or_else(|e| e.into_inner());
    let keep = |labels: &HashMap<&str, &str>| {
        let chain = labels.get("chain").copied().unwrap_or_default();
        let node = labels.get("node").copied().unwrap_or_default();
        routes.contains(chain, node)
    };
    forget(&GOST.chain_errors, keep);
    forget(&GOST.connect_duration, keep);
    *current = Some(routes);
}

/// Removes the series of `vec` whose labels `keep` refuses.
fn forget<B: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<B>,
    keep: impl Fn(&HashMap<&str, &str>) -> bool,
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if !keep(&labels) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// The transfer counters of one tunnel (or one upstream connection) of a service's client,
/// looked up once when it opens so that counting the bytes of a chunk as it moves is one
/// atomic add: a tunnel open for hours shows its traffic while it runs, as GOST's does,
/// rather than all of it when it closes.
#[derive(Clone)]
pub struct TunnelMeter {
    /// Bytes from the client (`gost_service_transfer_input_bytes_total`).
    pub input: IntCounter,
    /// Bytes to the client (`gost_service_transfer_output_bytes_total`).
    pub output: IntCounter,
}

impl TunnelMeter {
    /// The counters of `service` for `client`.
    pub fn new(service: &str, client: SocketAddr) -> Self {
        let client = client_label(client);
        let labels = [host(), service, &client];
        TunnelMeter {
            input: GOST.input_bytes.with_label_values(&labels),
            output: GOST.output_bytes.with_label_values(&labels),
        }
    }
}

/// A request of `service` that failed (handshake, authentication, upstream).
pub fn handler_error(service: &str, client: SocketAddr) {
    GOST.handler_errors
        .with_label_values(&[host(), service, &client_label(client)])
        .inc();
}

/// A route through `chain` that failed at `node`.
pub fn chain_error(chain: &str, node: &str) {
    on_route(chain, node, |labels| {
        GOST.chain_errors.with_label_values(labels).inc()
    });
}

/// A route through `chain` established via `node` (the last hop's node) in `took`.
pub fn node_connected(chain: &str, node: &str, took: Duration) {
    on_route(chain, node, |labels| {
        GOST.connect_duration
            .with_label_values(labels)
            .observe(took.as_secs_f64())
    });
}

/// The registry in Prometheus' text exposition format.
pub fn render() -> String {
    LazyLock::force(&GOST);
    LazyLock::force(&RUNTIME);
    register_process_series();
    prometheus::TextEncoder::new()
        .encode_to_string(&registry().gather())
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_chain_and_node_pairs() {
        let pair = |chain: &str, node: &str| (chain.to_string(), node.to_string());
        let mut routes: Routes = [pair("c", "a"), pair("c", "b"), pair("d", "a")]
            .into_iter()
            .collect();
        assert!(routes.contains("c", "b") && routes.contains("d", "a"));
        assert!(!routes.contains("d", "b") && !routes.contains("a", "c"));
        routes.extend(&[pair("d", "b")].into_iter().collect());
        assert!(routes.contains("d", "b") && routes.contains("c", "a"));
    }

    #[test]
    fn series_render_with_gost_names() {
        let client: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let request = Request::start("svc-test", client);
        let meter = TunnelMeter::new("svc-test", client);
        meter.input.inc_by(10);
        meter.output.inc_by(20);
        drop(request);
        let text = render();
        assert!(text.contains("gost_service_requests_total{client=\"192.0.2.7\""));
        assert!(text.contains("gost_service_transfer_output_bytes_total{client=\"192.0.2.7\""));
        assert!(text.contains("gost_service_request_duration_seconds_bucket"));
    }
}
