//! Issue 6's figures: convergence after a change, the operator's RSS, and admission latency,
//! against kube-fake-client's in-memory API.
//!
//! `cargo run -p gost-operator --release --example bench` prints Markdown tables. Every shape
//! runs in a child process of its own (this binary with `--child N`), so one shape's RSS is not
//! the leftovers of the one before.
//!
//! The in-memory API has no watch: the controller's stores are filled by listing
//! ([`Stores::list`]) and a change is followed by a relist and [`Context::reconcile`] of the
//! namespace, as the controller's queue would run it after its debounce. In production the
//! watches keep the stores current, so the relist is a cost of this harness, shown apart.

#[path = "../tests/support/admission.rs"]
mod admission;
#[path = "../tests/support/scale.rs"]
mod scale;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use gost_api::v1alpha1::GostService;
use gost_operator::certs::{self, CertSettings};
use gost_operator::controller::{Context, DEBOUNCE, Settings, Stores, Summary};
use gost_operator::inject::SidecarSettings;
use gost_operator::render::CONFIG_KEY;
use gost_operator::webhook::{self, CertResolver, Webhook};
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use scale::Scale;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

/// Namespaces reconciled at once, as the controller's applier does (its `CONCURRENCY`).
const CONCURRENCY: usize = 4;
/// The GostService and the Secret the change rows edit (both in the first namespace).
const CHANGED_SERVICE: usize = 7;
/// AdmissionReviews per admission row, after the warm-up.
const REQUESTS: usize = 2_000;
/// Requests per row sent before timing starts (TLS handshakes, first allocations).
const WARM_UP: usize = 20;
/// Connections of the concurrent admission rows.
const CONNECTIONS: usize = 8;
/// No single request may take longer: a hung server fails the run instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A namespace the webhook does not inject into: its rows measure TLS, HTTP and parsing only.
const PLAIN_NAMESPACE: &str = "plain";

/// The shapes measured, each in its own process; admission latency is measured on the first
/// (issue 6's size), whose namespace holds all 100 GostServices an admission render reads.
fn shapes() -> Vec<(Scale, bool)> {
    vec![
        (
            Scale {
                namespaces: 1,
                gost_services: 100,
                workloads: 100,
                pods_per_workload: 10,
            },
            true,
        ),
        (
            Scale {
                namespaces: 1,
                gost_services: 100,
                workloads: 1_000,
                pods_per_workload: 1,
            },
            false,
        ),
        (
            Scale {
                namespaces: 10,
                gost_services: 10,
                workloads: 10,
                pods_per_workload: 10,
            },
            false,
        ),
    ]
}

/// What one child measured.
#[derive(Serialize, Deserialize)]
struct Report {
    namespaces: usize,
    gost_services: usize,
    workloads: usize,
    pods: usize,
    /// VmRSS (KiB) with the in-memory API filled, before the controller's stores exist.
    baseline_rss: u64,
    /// Listing everything into the controller's stores.
    list: Duration,
    /// The first reconcile of every namespace.
    initial: Duration,
    initial_writes: usize,
    /// VmRSS and VmHWM (KiB) after the first reconcile.
    rss: u64,
    hwm: u64,
    /// After one GostService changed: the relist, the namespace's reconcile, its writes, and
    /// the group Secrets that had to change (all checked to hold the new config).
    service_relist: Duration,
    service_reconcile: Duration,
    service_writes: usize,
    affected: usize,
    /// After one referenced Secret changed.
    secret_reconcile: Duration,
    secret_writes: usize,
    admission: Vec<AdmissionRow>,
    /// VmHWM (KiB) at the end, admission included.
    final_hwm: u64,
}

#[derive(Serialize, Deserialize)]
struct AdmissionRow {
    case: String,
    connections: usize,
    requests: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => parent(),
        [flag, n] if flag == "--child" => match n
            .parse::<usize>()
            .ok()
            .and_then(|n| shapes().get(n).copied())
        {
            Some((scale, admission)) => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .expect("the runtime starts");
                let report = runtime.block_on(child(scale, admission));
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("a report serializes")
                );
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "bench: --child takes a shape number below {}, got {n:?}",
                    shapes().len()
                );
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: bench (no arguments; --child N is how the bench runs each shape)");
            ExitCode::FAILURE
        }
    }
}

fn parent() -> ExitCode {
    let exe = std::env::current_exe().expect("the bench knows its own path");
    let mut reports = Vec::new();
    for n in 0..shapes().len() {
        eprintln!("bench: shape {n}...");
        let out = Command::new(&exe)
            .args(["--child", &n.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .expect("the bench starts its child");
        if !out.status.success() {
            eprintln!("bench: shape {n} failed ({})", out.status);
            return ExitCode::FAILURE;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        match serde_json::from_str::<Report>(line) {
            Ok(report) => reports.push(report),
            Err(e) => {
                eprintln!("bench: shape {n} printed no report ({e}): {text}");
                return ExitCode::FAILURE;
            }
        }
    }
    print_tables(&reports);
    ExitCode::SUCCESS
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn shape(r: &Report) -> String {
    format!(
        "{} ns × {} GostServices, {} ReplicaSets, {} pods",
        r.namespaces,
        r.gost_services,
        r.namespaces * r.workloads,
        r.pods
    )
}

fn print_tables(reports: &[Report]) {
    let debounce = DEBOUNCE;
    println!(
        "Machine: {} cores (shared), Linux {}.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "| shape (GostServices, GostChains and 2 Secrets each per namespace) | stores list ms | first reconcile ms (writes) | GostService changed: relist ms | reconcile ms (writes, groups checked) | + debounce {} ms | referenced Secret changed: reconcile ms (writes) | + debounce |",
        debounce.as_millis()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        println!(
            "| {} | {} | {} ({}) | {} | {} ({}, {}) | **{}** | {} ({}) | **{}** |",
            shape(r),
            ms(r.list),
            ms(r.initial),
            r.initial_writes,
            ms(r.service_relist),
            ms(r.service_reconcile),
            r.service_writes,
            r.affected,
            ms(debounce + r.service_reconcile),
            ms(r.secret_reconcile),
            r.secret_writes,
            ms(debounce + r.secret_reconcile),
        );
    }
    println!();
    println!(
        "| shape | VmRSS, in-memory API filled (baseline) MiB | VmRSS after first reconcile MiB | of it the operator (minus baseline) MiB | VmHWM MiB | VmHWM after admission MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in reports {
        println!(
            "| {} | {} | {} | **{}** | {} | {} |",
            shape(r),
            mib(r.baseline_rss),
            mib(r.rss),
            mib(r.rss.saturating_sub(r.baseline_rss)),
            mib(r.hwm),
            if r.admission.is_empty() {
                "–".to_string()
            } else {
                mib(r.final_hwm)
            },
        );
    }
    for r in reports.iter().filter(|r| !r.admission.is_empty()) {
        println!();
        println!(
            "| admission, {} (HTTPS keep-alive, {REQUESTS} requests per row) | connections | p50 ms | p99 ms | max ms |",
            shape(r)
        );
        println!("|---|---:|---:|---:|---:|");
        for a in &r.admission {
            println!(
                "| {} | {} | {} | **{}** | {} |",
                a.case,
                a.connections,
                ms(a.p50),
                ms(a.p99),
                ms(a.max)
            );
        }
    }
}

/// A field of /proc/self/status in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status reads");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

async fn child(scale: Scale, admission: bool) -> Report {
    let client = scale::fake_api(scale.objects()).await;
    let baseline_rss = proc_status_kib("VmRSS");

    let started = Instant::now();
    let stores = Stores::list(&client, None).await.expect("stores fill");
    let list = started.elapsed();
    let ctx = Arc::new(Context::new(client.clone(), Settings::default(), stores));
    let namespaces: Vec<String> = (0..scale.namespaces).map(Scale::namespace).collect();

    let started = Instant::now();
    let summaries: Vec<Summary> = stream::iter(&namespaces)
        .map(|ns| {
            let ctx = ctx.clone();
            async move {
                ctx.reconcile(ns)
                    .await
                    .expect("the first reconcile succeeds")
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let initial = started.elapsed();
    let rss = proc_status_kib("VmRSS");
    let hwm = proc_status_kib("VmHWM");
    assert_eq!(
        summaries.iter().map(|s| s.groups).sum::<usize>(),
        scale.namespaces * scale.workloads,
        "one group per ReplicaSet"
    );

    let ns = &namespaces[0];
    let changed = format!("svc-{CHANGED_SERVICE}");
    let services: Api<GostService> = Api::namespaced(client.clone(), ns);
    let mut gs = services
        .get(&changed)
        .await
        .expect("the GostService exists");
    gs.spec.services[0].addr = ":9000".into();
    services
        .replace(&changed, &PostParams::default(), &gs)
        .await
        .expect("the GostService is replaced");
    let started = Instant::now();
    ctx.set_stores(Stores::list(&client, None).await.expect("stores fill"));
    let service_relist = started.elapsed();
    let started = Instant::now();
    let after_service = ctx.reconcile(ns).await.expect("the reconcile succeeds");
    let service_reconcile = started.elapsed();
    let affected = check_groups(&client, &scale, ns, |c| c.services[0].addr == ":9000").await;

    let users = format!("users-{CHANGED_SERVICE}");
    let changed_secret = scale::secret(ns, &users, &[("username", "alice"), ("password", "n3w")]);
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            &users,
            &PatchParams::default(),
            &Patch::Merge(changed_secret),
        )
        .await
        .expect("the Secret is patched");
    // Secrets are read from the API at each reconcile, not cached: no relist needed.
    let started = Instant::now();
    let after_secret = ctx.reconcile(ns).await.expect("the reconcile succeeds");
    let secret_reconcile = started.elapsed();
    check_groups(&client, &scale, ns, |c| {
        c.services[0]
            .handler
            .auth
            .as_ref()
            .map(|a| a.password.as_str())
            == Some("n3w")
    })
    .await;

    let admission = if admission {
        admission_rows(ctx.clone(), ns, &scale).await
    } else {
        Vec::new()
    };

    Report {
        namespaces: scale.namespaces,
        gost_services: scale.gost_services,
        workloads: scale.workloads,
        pods: scale.pods(),
        baseline_rss,
        list,
        initial,
        initial_writes: summaries.iter().map(|s| s.writes).sum(),
        rss,
        hwm,
        service_relist,
        service_reconcile,
        service_writes: after_service.writes,
        affected,
        secret_reconcile,
        secret_writes: after_secret.writes,
        admission,
        final_hwm: proc_status_kib("VmHWM"),
    }
}

/// Checks that the config Secret of every group [`CHANGED_SERVICE`] selects in `ns` passes
/// `holds`; returns how many there are.
async fn check_groups(
    client: &Client,
    scale: &Scale,
    ns: &str,
    holds: impl Fn(&gost_api::Config) -> bool,
) -> usize {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut n = 0;
    for rs in scale.workloads_of(CHANGED_SERVICE) {
        let name = scale::replica_set_secret(ns, &rs, &format!("svc-{CHANGED_SERVICE}"));
        let s = secrets.get(&name).await.expect("the group Secret exists");
        let text = String::from_utf8(s.data.as_ref().expect("data")[CONFIG_KEY].0.clone())
            .expect("the config is UTF-8");
        let config = gost_api::from_str(&text, gost_api::Format::Yaml)
            .unwrap_or_else(|e| panic!("the proxy refuses {name}: {e}"));
        assert!(holds(&config), "{name} does not hold the change:\n{text}");
        n += 1;
    }
    assert!(n > 0, "the change concerns no group");
    n
}

/// One admission case: the review bodies of its requests.
struct Case {
    name: &'static str,
    /// Whether the response must carry the sidecar patch.
    injects: bool,
    review: Box<dyn Fn(usize) -> Vec<u8> + Send + Sync>,
}

fn review(uid: String, namespace: &str, pod: Value, dry_run: bool) -> Vec<u8> {
    serde_json::to_vec(&admission::review(&uid, namespace, &pod, dry_run))
        .expect("a review serializes")
}

async fn admission_rows(ctx: Arc<Context>, ns: &str, scale: &Scale) -> Vec<AdmissionRow> {
    let mut cert_settings = CertSettings::new("gost-operator", "gost-system");
    cert_settings.webhook_url = Some("https://127.0.0.1:8443/mutate".into());
    let cert = certs::issue(&cert_settings, time::OffsetDateTime::now_utc())
        .expect("a certificate is issued");
    let resolver =
        Arc::new(CertResolver::new(&cert.cert_pem, &cert.key_pem).expect("the certificate loads"));
    let tls = webhook::tls_config(resolver).expect("the TLS configuration builds");
    let labels: HashMap<String, BTreeMap<String, String>> = HashMap::from([
        (
            ns.to_string(),
            BTreeMap::from([("gost.rs/inject".to_string(), "enabled".to_string())]),
        ),
        (PLAIN_NAMESPACE.to_string(), BTreeMap::new()),
    ]);
    let hook = Arc::new(Webhook::new(ctx, labels, SidecarSettings::default()));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("the port is known");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(webhook::serve(listener, tls, hook, async move {
        let _ = stopped.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert.ca_pem.as_bytes()) {
        roots
            .add(c.expect("the CA parses"))
            .expect("the CA is usable");
    }
    let mut client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    client_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));

    let (ns_a, ns_b, ns_c) = (ns.to_string(), ns.to_string(), ns.to_string());
    let services = scale.gost_services;
    let workloads = scale.workloads;
    let cases = vec![
        Case {
            name: "namespace not opted in (TLS, HTTP, JSON only)",
            injects: false,
            review: Box::new(move |i| {
                let pod = scale::replica_set_pod(PLAIN_NAMESPACE, "w0-rs", "", "svc-0");
                review(format!("plain-{i}"), PLAIN_NAMESPACE, pod, false)
            }),
        },
        Case {
            name: "dry run: render, no write",
            injects: true,
            review: Box::new(move |i| {
                let w = i % workloads;
                let rs = scale::replica_set_name(w);
                let pod = scale::replica_set_pod(&ns_a, &rs, "", &format!("svc-{}", w % services));
                review(format!("dry-{i}"), &ns_a, pod, true)
            }),
        },
        Case {
            name: "existing ReplicaSet: render, Secret already current (get, no write)",
            injects: true,
            review: Box::new(move |i| {
                let w = i % workloads;
                let rs = scale::replica_set_name(w);
                let pod = scale::replica_set_pod(&ns_b, &rs, "", &format!("svc-{}", w % services));
                review(format!("old-{i}"), &ns_b, pod, false)
            }),
        },
        Case {
            name: "new ReplicaSet each request: render, Secret created",
            injects: true,
            review: Box::new(move |i| {
                // Unique per request and per row (the sequential and concurrent rows both run).
                let rs = format!("new-{}-{i}-rs", fastrand::u64(..));
                let pod = scale::replica_set_pod(&ns_c, &rs, "", &format!("svc-{}", i % services));
                review(format!("new-{i}"), &ns_c, pod, false)
            }),
        },
    ];

    let mut rows = Vec::new();
    for case in &cases {
        for connections in [1, CONNECTIONS] {
            let latencies = run_case(&connector, addr, case, connections).await;
            rows.push(row(case.name, connections, latencies));
        }
    }
    let _ = stop.send(());
    let _ = server.await;
    rows
}

fn row(case: &str, connections: usize, mut latencies: Vec<Duration>) -> AdmissionRow {
    latencies.sort();
    let at = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    AdmissionRow {
        case: case.to_string(),
        connections,
        requests: latencies.len(),
        p50: at(50),
        p99: at(99),
        max: *latencies.last().expect("requests were sent"),
    }
}

/// Sends [`WARM_UP`] then [`REQUESTS`] reviews over `connections` keep-alive connections and
/// returns the latency of each timed one.
async fn run_case(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    case: &Case,
    connections: usize,
) -> Vec<Duration> {
    let mut senders = Vec::new();
    for _ in 0..connections {
        let tcp = TcpStream::connect(addr).await.expect("the webhook accepts");
        tcp.set_nodelay(true).expect("nodelay");
        let tls = connector
            .connect(ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()), tcp)
            .await
            .expect("the TLS handshake succeeds with the operator's CA");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("the HTTP/1.1 connection starts");
        tokio::spawn(conn);
        senders.push(sender);
    }
    let per_connection = REQUESTS / connections;
    let warm = WARM_UP.div_ceil(connections);
    let tasks = senders.into_iter().enumerate().map(|(c, mut sender)| {
        let bodies: Vec<Vec<u8>> = (0..warm + per_connection)
            .map(|i| (case.review)(c * (warm + per_connection) + i))
            .collect();
        let injects = case.injects;
        async move {
            let mut latencies = Vec::with_capacity(per_connection);
            for (i, body) in bodies.into_iter().enumerate() {
                let request = Request::post(webhook::MUTATE_PATH)
                    .header(header::HOST, "127.0.0.1")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid request");
                let started = Instant::now();
                let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                    sender.ready().await.expect("the connection stays open");
                    let response = sender
                        .send_request(request)
                        .await
                        .expect("the webhook answers");
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .expect("the body arrives")
                        .to_bytes();
                    (status, body)
                })
                .await
                .unwrap_or_else(|_| panic!("no answer within {REQUEST_TIMEOUT:?}"));
                let took = started.elapsed();
                let (status, body) = answer;
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                let review: Value = serde_json::from_slice(&body).expect("the answer is JSON");
                let response = &review["response"];
                assert_eq!(response["allowed"], true, "{review}");
                assert_eq!(
                    response.get("patch").is_some(),
                    injects,
                    "injected or not as expected: {review}"
                );
                assert!(response.get("warnings").is_none(), "{review}");
                if i >= warm {
                    latencies.push(took);
                }
            }
            latencies
        }
    });
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect()
}
