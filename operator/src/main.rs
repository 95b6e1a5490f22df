//! `gost-operator`: watches GostService and GostChain resources, renders each workload's proxy
//! config into a Secret, runs gateways, and injects the gost sidecar through a mutating
//! webhook.
//!
//! In a cluster it reads its service account; from a laptop it uses `KUBECONFIG` and can
//! register its webhook by URL (`--webhook-url https://HOST:PORT/mutate`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use gost_api::{LogFormat, LogLevel};
use gost_operator::certs::{self, CertSettings};
use gost_operator::controller::{self, Settings};
use gost_operator::inject::{self, SidecarSettings};
use gost_operator::lease::{self, LeaderElector, LeaseSettings};
use gost_operator::metrics::{self, Readiness};
use gost_operator::webhook::{self, Webhook};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Client;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector;
use tokio::sync::watch;

/// The operator's namespace when neither `--namespace` nor `POD_NAMESPACE` says.
const DEFAULT_NAMESPACE: &str = "gost-system";
/// The Lease replicas elect a leader on.
const DEFAULT_LEASE_NAME: &str = "gost-operator";
/// The Service in front of the webhook (its DNS names go into the serving certificate).
const DEFAULT_WEBHOOK_SERVICE: &str = "gost-operator-webhook";
/// Where the webhook listens: 9443, the conventional unprivileged webhook port.
const DEFAULT_WEBHOOK_ADDR: &str = ":9443";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Json,
    Text,
}

/// Watches GostService and GostChain resources, renders sidecar and gateway configs, injects
/// the gost sidecar.
#[derive(Debug, Parser)]
#[command(name = "gost-operator", version)]
struct Args {
    /// The operator's own namespace: its webhook certificate Secret and its Lease live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,

    /// The gost image of sidecars and gateways.
    #[arg(long, env = "GOST_SIDECAR_IMAGE", default_value = inject::DEFAULT_IMAGE)]
    sidecar_image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    #[arg(long, default_value = inject::DEFAULT_IMAGE_PULL_POLICY)]
    sidecar_image_pull_policy: String,
    /// CPU request of the proxy container.
    #[arg(long, default_value = inject::DEFAULT_CPU_REQUEST)]
    sidecar_cpu_request: String,
    /// Memory request of the proxy container.
    #[arg(long, default_value = inject::DEFAULT_MEMORY_REQUEST)]
    sidecar_memory_request: String,
    /// Memory limit of the proxy container.
    #[arg(long, default_value = inject::DEFAULT_MEMORY_LIMIT)]
    sidecar_memory_limit: String,
    /// Log format of the proxies.
    #[arg(long, value_enum, default_value = "json")]
    sidecar_log_format: Format,
    /// Log level of the proxies (trace, debug, info, warn, error).
    #[arg(long)]
    sidecar_log_level: Option<String>,
    /// How long a proxy lets open tunnels finish after SIGTERM, e.g. `20s`.
    #[arg(long, default_value = "20s")]
    sidecar_grace_period: String,
    /// The proxies' admin port (metrics, /healthz, /readyz).
    #[arg(long, default_value_t = gost_operator::render::DEFAULT_ADMIN_PORT)]
    admin_port: u16,

    /// Do not run the injection webhook (the controller still renders and runs gateways).
    #[arg(long)]
    no_webhook: bool,
    /// Where the webhook listens.
    #[arg(long, default_value = DEFAULT_WEBHOOK_ADDR, value_parser = listen_addr)]
    webhook_addr: SocketAddr,
    /// The webhook's Service, in `--namespace`.
    #[arg(long, default_value = DEFAULT_WEBHOOK_SERVICE)]
    webhook_service: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(long, default_value = certs::DEFAULT_WEBHOOK_CONFIGURATION)]
    webhook_configuration: String,
    /// The Secret holding the webhook's CA and serving certificate.
    #[arg(long, default_value = certs::DEFAULT_SECRET_NAME)]
    webhook_secret: String,
    /// cert-manager mode: serve the webhook with `tls.crt` and `tls.key` from this directory
    /// (a mounted cert-manager Secret, re-read as it renews) and leave the certificate Secret
    /// and caBundle alone (cert-manager's CA injector fills caBundle).
    #[arg(long, conflicts_with = "webhook_url")]
    webhook_cert_dir: Option<std::path::PathBuf>,
    /// Run outside the cluster: register the webhook with this URL
    /// (`https://HOST:PORT/mutate`, reachable from the API server) instead of a Service.
    #[arg(long)]
    webhook_url: Option<String>,

    /// Where the plain-HTTP endpoint listens: /metrics (Prometheus), /healthz, /readyz.
    #[arg(long, default_value = metrics::DEFAULT_METRICS_ADDR, value_parser = listen_addr)]
    metrics_addr: SocketAddr,

    /// Elect a leader among replicas on a Lease; only the leader reconciles.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// The Lease's name, in `--namespace`.
    #[arg(long, default_value = DEFAULT_LEASE_NAME)]
    lease_name: String,

    /// The operator's own log format (default: JSON unless standard error is a terminal).
    #[arg(long, value_enum)]
    log_format: Option<Format>,
}

fn sidecar_settings(args: &Args) -> Result<SidecarSettings, String> {
    let grace = gost_api::metadata::parse_go_duration(&args.sidecar_grace_period)
        .map_err(|e| format!("--sidecar-grace-period: {e}"))?
        .unwrap_or(Duration::ZERO);
    let level = match args.sidecar_log_level.as_deref() {
        None => None,
        Some(text) => Some(
            serde_json::from_value::<LogLevel>(serde_json::Value::String(text.to_string()))
                .map_err(|_| {
                    format!("--sidecar-log-level {text:?}: use trace, debug, info, warn or error")
                })?,
        ),
    };
    for (flag, value) in [
        ("--sidecar-cpu-request", &args.sidecar_cpu_request),
        ("--sidecar-memory-request", &args.sidecar_memory_request),
        ("--sidecar-memory-limit", &args.sidecar_memory_limit),
    ] {
        if value.is_empty() || !value.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            return Err(format!(
                "{flag} {value:?}: a Kubernetes quantity such as 50m or 64Mi"
            ));
        }
    }
    if !matches!(
        args.sidecar_image_pull_policy.as_str(),
        "Always" | "IfNotPresent" | "Never"
    ) {
        return Err(format!(
            "--sidecar-image-pull-policy {:?}: use Always, IfNotPresent or Never",
            args.sidecar_image_pull_policy
        ));
    }
    let q = |s: &str| Quantity(s.to_string());
    let mut settings = SidecarSettings {
        image: args.sidecar_image.clone(),
        image_pull_policy: args.sidecar_image_pull_policy.clone(),
        log_format: match args.sidecar_log_format {
            Format::Json => LogFormat::Json,
            Format::Text => LogFormat::Text,
        },
        log_level: level,
        grace_period: grace,
        admin_port: args.admin_port,
        ..SidecarSettings::default()
    };
    settings.resources.requests = Some(
        [
            ("cpu".to_string(), q(&args.sidecar_cpu_request)),
            ("memory".to_string(), q(&args.sidecar_memory_request)),
        ]
        .into(),
    );
    settings.resources.limits =
        Some([("memory".to_string(), q(&args.sidecar_memory_limit))].into());
    Ok(settings)
}

fn init_logging(format: Option<Format>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        Some(f) => f == Format::Json,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Completes at SIGTERM or SIGINT; a second signal exits at once.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("gost-operator: cannot install signal handlers");
        std::process::exit(1);
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received; stopping (a second signal exits at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        std::process::exit(130);
    });
}

/// A listening address: `IP:PORT`, or `:PORT` for every interface, as controller-runtime
/// operators (`--metrics-bind-address=:8080`) and GOST take it: `[::]`, which takes IPv4 too
/// (see [`bind`]).
fn listen_addr(value: &str) -> Result<SocketAddr, String> {
    let expected =
        || format!("expected IP:PORT or :PORT (e.g. 127.0.0.1:8080 or :8080), not {value:?}");
    match value.strip_prefix(':') {
        Some(port) => port
            .parse::<u16>()
            .map(|port| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))
            .map_err(|_| expected()),
        None => value.parse().map_err(|_| expected()),
    }
}

/// Listens on `addr`. Every interface (`[::]`) is both IPv6 and IPv4, so an IPv6-only cluster's
/// probes and API server reach the operator as a dual-stack one's do; on a node without IPv6
/// it is every IPv4 interface, as Go listens.
async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let v6 = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => return Ok(listener),
        Err(e)
            if addr.ip() != std::net::Ipv6Addr::UNSPECIFIED
                || e.kind() == std::io::ErrorKind::AddrInUse =>
        {
            return Err(e);
        }
        Err(e) => e,
    };
    let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
    let listener = tokio::net::TcpListener::bind(v4).await.map_err(|_| v6)?;
    tracing::info!(addr = %v4, "no IPv6 here: listening on IPv4 only");
    Ok(listener)
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    // kube's client finds two rustls providers in the build (ring, which everything of ours
    // uses, and aws-lc-rs through its HTTP stack) and would panic choosing; ring it is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sidecar = match sidecar_settings(&args) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("gost-operator: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gost-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, sidecar)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "stopped");
            eprintln!("gost-operator: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Marks the caches ready once the controller's (and, with the webhook, the namespace labels')
/// first lists are in.
async fn mark_ready(
    context: Arc<controller::Context>,
    namespaces: Option<reflector::Store<PartialObjectMeta<Namespace>>>,
    readiness: Arc<Readiness>,
) {
    if let Some(namespaces) = namespaces
        && namespaces.wait_until_ready().await.is_err()
    {
        return;
    }
    if context.caches_filled().await {
        readiness.caches_filled();
        tracing::info!("caches filled; ready");
    }
}

async fn run(args: Args, sidecar: SidecarSettings) -> Result<(), String> {
    let client = Client::try_default().await.map_err(|e| {
        format!("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {e}")
    })?;
    let (stop_tx, stop) = watch::channel(false);
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };

    // Leadership: only the leader reconciles; every replica serves the webhook.
    let (leading, election) = if args.leader_election {
        let identity = lease::default_identity();
        let elector = LeaderElector::new(
            client.clone(),
            &args.namespace,
            &args.lease_name,
            &identity,
            LeaseSettings::default(),
        )
        .map_err(|e| e.to_string())?;
        tracing::info!(identity = %identity, lease = %args.lease_name, "campaigning for leadership");
        let leadership = elector.run(stopped());
        (leadership.leading, Some(leadership.task))
    } else {
        let (tx, rx) = watch::channel(true);
        std::mem::forget(tx);
        (rx, None)
    };

    // Probes and scrapes first, so a slow start shows as "not ready" rather than as a refused
    // connection that a liveness probe would count against the pod.
    let readiness = Readiness::new(!args.no_webhook);
    let metrics_listener = bind(args.metrics_addr)
        .await
        .map_err(|e| format!("metrics: cannot listen on {}: {e}", args.metrics_addr))?;
    tracing::info!(addr = %args.metrics_addr, "metrics and probes listening");
    let metrics_task = tokio::spawn(metrics::serve(
        metrics_listener,
        readiness.clone(),
        stopped(),
    ));
    {
        let mut leading = leading.clone();
        tokio::spawn(async move {
            loop {
                metrics::metrics().set_leader(*leading.borrow_and_update());
                if leading.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    let prepared = controller::prepare(
        client.clone(),
        Settings {
            proxy: sidecar.clone(),
            namespace: args.watch_namespace.clone(),
            ..Settings::default()
        },
    );
    let context = prepared.context();
    let namespaces = prepared.namespaces();
    let controller = tokio::spawn(prepared.run(leading, stopped()));

    let webhook_task = if args.no_webhook {
        tokio::spawn(mark_ready(context.clone(), None, readiness.clone()));
        None
    } else {
        let resolver = match &args.webhook_cert_dir {
            Some(dir) => {
                let resolver = certs::resolver_from_dir(dir)
                    .map_err(|e| format!("webhook certificate: {e}"))?;
                tracing::info!(dir = %dir.display(), "serving the webhook certificate from a directory (cert-manager mode)");
                tokio::spawn(certs::follow_cert_dir(
                    dir.clone(),
                    resolver.clone(),
                    certs::CERT_DIR_POLL,
                ));
                resolver
            }
            None => {
                let mut cert_settings = CertSettings::new(&args.webhook_service, &args.namespace);
                cert_settings.secret_name = args.webhook_secret.clone();
                cert_settings.webhook_configuration = args.webhook_configuration.clone();
                cert_settings.webhook_url = args.webhook_url.clone();
                let (resolver, cert) = certs::prepare(&client, &cert_settings)
                    .await
                    .map_err(|e| format!("webhook certificate: {e}"))?;
                tokio::spawn(certs::keep_current(
                    client.clone(),
                    cert_settings,
                    resolver.clone(),
                    cert,
                ));
                resolver
            }
        };

        // Namespace labels (opt-in): the controller's metadata-only reflector.
        tokio::spawn(mark_ready(
            context.clone(),
            Some(namespaces.clone()),
            readiness.clone(),
        ));
        let listener = bind(args.webhook_addr)
            .await
            .map_err(|e| format!("webhook: cannot listen on {}: {e}", args.webhook_addr))?;
        readiness.webhook_listening();
        let tls = webhook::tls_config(resolver).map_err(|e| format!("webhook TLS: {e}"))?;
        let hook = Arc::new(Webhook::new(context, namespaces, sidecar));
        tracing::info!(addr = %args.webhook_addr, "injection webhook listening");
        Some(tokio::spawn(webhook::serve(listener, tls, hook, stopped())))
    };

    tokio::select! {
        () = terminated() => {}
        result = controller => {
            let _ = stop_tx.send(true);
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("controller: {e}")),
                Err(e) => Err(format!("controller task: {e}")),
            };
        }
    }
    let _ = stop_tx.send(true);
    let _ = metrics_task.await;
    if let Some(task) = webhook_task {
        let _ = task.await;
    }
    if let Some(task) = election {
        // Releasing the Lease lets another replica take over at once.
        let _ = task.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_alone_is_every_interface_of_both_families() {
        assert_eq!(listen_addr(":8080"), Ok("[::]:8080".parse().unwrap()));
        assert_eq!(
            listen_addr("127.0.0.1:9443"),
            Ok("127.0.0.1:9443".parse().unwrap())
        );
        assert_eq!(listen_addr("[::1]:1"), Ok("[::1]:1".parse().unwrap()));
        for bad in [":", ":http", ":65536", "8080", "localhost:8080", ""] {
            let error = listen_addr(bad).unwrap_err();
            assert!(error.contains("IP:PORT or :PORT"), "{bad}: {error}");
        }
    }
}
