//! The operator's own endpoint: Prometheus metrics, liveness and readiness, on plain HTTP
//! (`--metrics-addr`, default port 8080), apart from the webhook's HTTPS port so probes and
//! scrapes need no certificate.
//!
//! - `GET /metrics`: reconciles, admissions, config writes and leadership, in the Prometheus
//!   text format.
//! - `GET /healthz`: 200 while the process serves requests (liveness).
//! - `GET /readyz`: 200 once the caches are filled and the webhook listens, else 503 with what
//!   is still missing (readiness: the webhook Service sends admissions only to ready replicas).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// Where the endpoint listens by default: 8080, the conventional metrics port of operators,
/// which the chart's probes and ServiceMonitor use.
pub const DEFAULT_METRICS_ADDR: &str = ":8080";
/// Paths served.
pub const METRICS_PATH: &str = "/metrics";
/// See [`METRICS_PATH`].
pub const HEALTHZ_PATH: &str = "/healthz";
/// See [`METRICS_PATH`].
pub const READYZ_PATH: &str = "/readyz";
/// A scrape or probe that has not sent its request line within this long is dropped: probes
/// answer in milliseconds, so only a stuck or hostile client waits this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Bucket bounds in seconds of the latency histograms: admissions must stay far below the API
/// server's 10 s webhook timeout and the 20 ms the operator aims for, reconciles take longer.
const ADMISSION_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// See [`ADMISSION_BUCKETS`].
const RECONCILE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What an admission ended in, the `outcome` label of `gost_operator_admissions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The sidecar was added.
    Injected,
    /// The pod was not opted in, is already injected, uses the node's network (with a
    /// warning), or is not a create.
    Skipped,
    /// The pod was opted in but its config could not be rendered or written; it was admitted
    /// without the sidecar, with a warning.
    Failed,
    /// The request was not a valid AdmissionReview.
    Malformed,
}

impl Admission {
    fn label(self) -> &'static str {
        match self {
            Admission::Injected => "injected",
            Admission::Skipped => "skipped",
            Admission::Failed => "failed",
            Admission::Malformed => "malformed",
        }
    }
}

/// The operator's metrics, one set per process.
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    reconcile_seconds: Histogram,
    admissions: IntCounterVec,
    admission_seconds: Histogram,
    writes: IntCounterVec,
    leader: IntGauge,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "gost_operator_reconciles_total",
                "Namespace reconciles, by result (ok or error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let reconcile_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "gost_operator_reconcile_duration_seconds",
                "How long a namespace reconcile took.",
            )
            .buckets(RECONCILE_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let admissions = IntCounterVec::new(
            Opts::new(
                "gost_operator_admissions_total",
                "Pod admissions seen by the injection webhook, by outcome (injected, skipped, failed, malformed).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let admission_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "gost_operator_admission_duration_seconds",
                "How long the webhook took to answer an AdmissionReview, body read included.",
            )
            .buckets(ADMISSION_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let writes = IntCounterVec::new(
            Opts::new(
                "gost_operator_object_writes_total",
                "Objects the operator created, replaced, patched or deleted, by source (reconcile or admission).",
            ),
            &["source"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "gost_operator_leader",
            "1 while this replica leads (reconciles and writes), else 0.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_seconds.clone()),
            Box::new(admissions.clone()),
            Box::new(admission_seconds.clone()),
            Box::new(writes.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        // Every outcome shows from the first scrape, so rate() and alerts see a zero, not a gap.
        for outcome in [
            Admission::Injected,
            Admission::Skipped,
            Admission::Failed,
            Admission::Malformed,
        ] {
            admissions.with_label_values(&[outcome.label()]);
        }
        for result in ["ok", "error"] {
            reconciles.with_label_values(&[result]);
        }
        Metrics {
            registry,
            reconciles,
            reconcile_seconds,
            admissions,
            admission_seconds,
            writes,
            leader,
        }
    }

    /// One namespace reconcile ended.
    pub fn reconciled(&self, ok: bool, took: Duration) {
        self.reconciles
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// One AdmissionReview was answered.
    pub fn admitted(&self, outcome: Admission, took: Duration) {
        self.admissions.with_label_values(&[outcome.label()]).inc();
        self.admission_seconds.observe(took.as_secs_f64());
    }

    /// `n` objects were written by `source` (`reconcile` or `admission`).
    pub fn wrote(&self, source: &str, n: usize) {
        if n > 0 {
            self.writes.with_label_values(&[source]).inc_by(n as u64);
        }
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The Prometheus text of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        out
    }
}

/// What readiness waits for. Each part starts not ready; the binary marks them as they come.
#[derive(Debug, Default)]
pub struct Readiness {
    caches: AtomicBool,
    webhook: AtomicBool,
}

impl Readiness {
    /// Readiness for a process with (`webhook`) or without the injection webhook.
    pub fn new(webhook: bool) -> Arc<Self> {
        Arc::new(Readiness {
            caches: AtomicBool::new(false),
            webhook: AtomicBool::new(!webhook),
        })
    }

    /// The GostService, GostChain and pod caches (and the namespace labels) are filled.
    pub fn caches_filled(&self) {
        self.caches.store(true, Ordering::Release);
    }

    /// The webhook accepts connections.
    pub fn webhook_listening(&self) {
        self.webhook.store(true, Ordering::Release);
    }

    /// `None` when ready, else what is still missing.
    pub fn missing(&self) -> Option<&'static str> {
        match (
            self.caches.load(Ordering::Acquire),
            self.webhook.load(Ordering::Acquire),
        ) {
            (true, true) => None,
            (false, true) => Some("the caches are still being filled"),
            (true, false) => Some("the webhook does not listen yet"),
            (false, false) => {
                Some("the caches are still being filled and the webhook does not listen yet")
            }
        }
    }
}

/// Serves the endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()>,
) {
    crate::webhook::accept_until(listener, shutdown, "metrics endpoint", |stream, peer| {
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let readiness = readiness.clone();
                async move { Ok::<_, Infallible>(answer(&request, &readiness)) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "metrics connection ended with an error");
            }
        });
    })
    .await;
}

fn answer(request: &Request<Incoming>, readiness: &Readiness) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} takes GET\n"),
            "text/plain; charset=utf-8",
        );
    }
    match path {
        METRICS_PATH => text(StatusCode::OK, metrics().encode(), prometheus::TEXT_FORMAT),
        HEALTHZ_PATH => text(StatusCode::OK, "ok\n", "text/plain; charset=utf-8"),
        READYZ_PATH => match readiness.missing() {
            None => text(StatusCode::OK, "ready\n", "text/plain; charset=utf-8"),
            Some(missing) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {missing}\n"),
                "text/plain; charset=utf-8",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no such path: {path} (try {METRICS_PATH}, {HEALTHZ_PATH} or {READYZ_PATH})\n"),
            "text/plain; charset=utf-8",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("a static response is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_missing() {
        let r = Readiness::new(true);
        assert_eq!(
            r.missing(),
            Some("the caches are still being filled and the webhook does not listen yet")
        );
        r.caches_filled();
        assert_eq!(r.missing(), Some("the webhook does not listen yet"));
        r.webhook_listening();
        assert_eq!(r.missing(), None);
        let without_webhook = Readiness::new(false);
        without_webhook.caches_filled();
        assert_eq!(without_webhook.missing(), None);
    }

    #[test]
    fn every_outcome_shows_from_the_start() {
        let text = String::from_utf8(metrics().encode()).unwrap();
        for outcome in ["injected", "skipped", "failed", "malformed"] {
            assert!(
                text.contains(&format!(
                    "gost_operator_admissions_total{{outcome=\"{outcome}\"}}"
                )),
                "{outcome} missing from:\n{text}"
            );
        }
        assert!(text.contains("gost_operator_leader "), "{text}");
    }
}
