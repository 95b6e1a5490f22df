//! The sidecar-injection webhook: an HTTPS server answering `POST /mutate` with
//! `admission.k8s.io/v1` AdmissionReviews, and `GET /healthz`.
//!
//! It never blocks a pod: when the pod's config cannot be rendered it allows the pod uninjected
//! and says why in the response's warnings (the MutatingWebhookConfiguration uses
//! `failurePolicy: Ignore` for the same reason).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND, Operation,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::inject::{self, Decision, INJECT_KEY, SidecarSettings};
use crate::metrics::{Admission, metrics};
use crate::render::ListenPort;

/// The path the MutatingWebhookConfiguration calls.
pub const MUTATE_PATH: &str = "/mutate";
/// The liveness path of the operator's webhook server.
pub const HEALTHZ_PATH: &str = "/healthz";
/// The API server caps request bodies at 3 MiB; a review is a little larger than its pod, so a
/// body past 4 MiB is not an AdmissionReview from a real API server.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The API server gives a webhook at most its `timeoutSeconds` (5 s in our configuration): a
/// peer slower than that to finish the TLS handshake is not the API server.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds reading a request's head, and separately its body, for the same reason.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The config a pod's sidecar gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SidecarConfig {
    /// The name of the config Secret the sidecar mounts.
    pub secret: String,
    /// The ports the rendered services listen on (checked against the pod's own ports).
    pub listen_ports: Vec<ListenPort>,
}

/// Renders the config Secret of a pod's config group. The controller implements it.
pub trait PodConfig: Send + Sync + 'static {
    /// Renders (unless `dry_run`) the config Secret for this pod's config group and returns
    /// its name and what it listens on; `dry_run` must not write anything.
    fn ensure_config(
        &self,
        namespace: &str,
        pod: &Pod,
        dry_run: bool,
    ) -> impl Future<Output = Result<SidecarConfig, String>> + Send;
}

impl<T: PodConfig> PodConfig for Arc<T> {
    fn ensure_config(
        &self,
        namespace: &str,
        pod: &Pod,
        dry_run: bool,
    ) -> impl Future<Output = Result<SidecarConfig, String>> + Send {
        T::ensure_config(self, namespace, pod, dry_run)
    }
}

/// The labels of the namespaces pods are created in (a reflector's store in the binary).
pub trait NamespaceLabels: Send + Sync + 'static {
    /// The value of label `key` on `namespace`; `None` when absent or the namespace is unknown.
    fn label(&self, namespace: &str, key: &str) -> Option<String>;

    /// Whether `namespace` is known, so that a label it lacks is absent rather than not read
    /// yet.
    fn known(&self, _namespace: &str) -> bool {
        true
    }
}

impl<F> NamespaceLabels for F
where
    F: Fn(&str, &str) -> Option<String> + Send + Sync + 'static,
{
    fn label(&self, namespace: &str, key: &str) -> Option<String> {
        self(namespace, key)
    }
}

impl NamespaceLabels for HashMap<String, BTreeMap<String, String>> {
    fn label(&self, namespace: &str, key: &str) -> Option<String> {
        self.get(namespace)?.get(key).cloned()
    }
}

/// A request that is not an AdmissionReview we can answer: HTTP 400 with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// The admission logic, independent of HTTP.
pub struct Webhook<P, N> {
    pod_config: P,
    namespaces: N,
    settings: SidecarSettings,
}

impl<P: PodConfig, N: NamespaceLabels> Webhook<P, N> {
    /// A webhook building sidecars with `settings`.
    pub fn new(pod_config: P, namespaces: N, settings: SidecarSettings) -> Self {
        Self {
            pod_config,
            namespaces,
            settings,
        }
    }

    /// Answers one AdmissionReview body: the response review and what it amounted to, or what
    /// is wrong with the body.
    pub async fn review(
        &self,
        body: &[u8],
    ) -> Result<(AdmissionReview<DynamicObject>, Admission), Malformed> {
        let review = match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
            Ok(review) => review,
            Err(error) => return diagnose(body, &error),
        };
        if review.types.kind != META_KIND || review.types.api_version != META_API_VERSION_V1 {
            return Err(Malformed(format!(
                "expected kind {META_KIND} and apiVersion {META_API_VERSION_V1}, got kind {:?} and apiVersion {:?}",
                review.types.kind, review.types.api_version
            )));
        }
        let Some(mut request) = review.request else {
            return Err(Malformed("the AdmissionReview has no `request`".into()));
        };
        request.types = review.types;
        let (response, outcome) = self.admit(&request).await;
        Ok((response.into_review(), outcome))
    }

    async fn admit(&self, request: &AdmissionRequest<Pod>) -> (AdmissionResponse, Admission) {
        let mut response = AdmissionResponse::from(request);
        let kind = &request.kind;
        if !(kind.group.is_empty() && kind.version == "v1" && kind.kind == "Pod") {
            tracing::warn!(uid = %request.uid, ?kind, "admission request for something else than a Pod");
            let response = warn(
                response,
                format!(
                    "gost sidecar injector: expected a v1 Pod, got {}/{} {}; nothing injected",
                    kind.group, kind.version, kind.kind
                ),
            );
            return (response, Admission::Skipped);
        }
        let (Operation::Create, Some(pod)) = (&request.operation, &request.object) else {
            return (response, Admission::Skipped);
        };
        let namespace = request
            .namespace
            .as_deref()
            .or(pod.metadata.namespace.as_deref())
            .unwrap_or("default");
        let label = self.namespaces.label(namespace, INJECT_KEY);
        for warning in inject::opt_in_warnings(label.as_deref(), pod) {
            tracing::warn!(uid = %request.uid, namespace, pod = pod_name(pod), "{warning}");
            response = warn(response, warning);
        }
        match inject::decide(namespace, label.as_deref(), pod) {
            Decision::Inject => {}
            Decision::Skip(reason) => {
                tracing::debug!(uid = %request.uid, namespace, reason, "not injecting");
                return (response, Admission::Skipped);
            }
            Decision::Refuse(reason) => {
                tracing::warn!(uid = %request.uid, namespace, pod = pod_name(pod), "{reason}");
                return (warn(response, reason.to_string()), Admission::Skipped);
            }
        }
        let config = match self
            .pod_config
            .ensure_config(namespace, pod, request.dry_run)
            .await
        {
            Ok(config) => config,
            Err(reason) => {
                tracing::warn!(uid = %request.uid, namespace, pod = pod_name(pod), %reason, "cannot render the sidecar config; admitting the pod without the sidecar");
                let response = warn(response, format!("gost sidecar not injected: {reason}"));
                return (response, Admission::Failed);
            }
        };
        let secret = &config.secret;
        let Some(patch) = inject::sidecar_patch(pod, secret, &self.settings) else {
            return (response, Admission::Skipped);
        };
        tracing::info!(uid = %request.uid, namespace, pod = pod_name(pod), config = %secret, dry_run = request.dry_run, "injecting the gost sidecar");
        let response = inject::warnings(pod, &self.settings, &config.listen_ports)
            .into_iter()
            .fold(response, warn);
        match response.with_patch(patch) {
            Ok(response) => (response, Admission::Injected),
            Err(error) => (
                warn(
                    AdmissionResponse::from(request),
                    format!("gost sidecar not injected: {error}"),
                ),
                Admission::Failed,
            ),
        }
    }
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or("")
}

/// Adds `warning` to what the API server shows the client (kubectl prints it).
fn warn(mut response: AdmissionResponse, warning: String) -> AdmissionResponse {
    response.warnings.get_or_insert_with(Vec::new).push(warning);
    response
}

/// Why a body did not parse as an AdmissionReview of a Pod: 400 for what is not a review, an
/// allowing response with a warning when the request's uid is readable (the API server gets an
/// answer it can use, and the pod is not blocked).
fn diagnose(
    body: &[u8],
    error: &serde_json::Error,
) -> Result<(AdmissionReview<DynamicObject>, Admission), Malformed> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Malformed(format!("the body is not JSON: {e}")))?;
    let kind = value.get("kind").and_then(Value::as_str);
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    if kind != Some(META_KIND) || api_version != Some(META_API_VERSION_V1) {
        return Err(Malformed(format!(
            "expected kind {META_KIND} and apiVersion {META_API_VERSION_V1}, got kind {kind:?} and apiVersion {api_version:?}"
        )));
    }
    let Some(request) = value.get("request") else {
        return Err(Malformed("the AdmissionReview has no `request`".into()));
    };
    let Some(uid) = request.get("uid").and_then(Value::as_str) else {
        return Err(Malformed(format!(
            "the AdmissionReview's request is not readable: {error}"
        )));
    };
    tracing::warn!(uid, %error, "admission request not readable as a review of a Pod");
    // `invalid` is the one constructor that needs no parsed request; it is then made allowing.
    let mut response = AdmissionResponse::invalid("");
    response.uid = uid.to_string();
    response.allowed = true;
    response.result = Default::default();
    let review = warn(
        response,
        format!("gost sidecar injector: the request is not readable as a review of a Pod ({error}); nothing injected"),
    )
    .into_review();
    Ok((review, Admission::Malformed))
}

/// The review as the API server reads it: kube serializes the patch as a JSON array of bytes,
/// every other webhook (and the API's own Go types) as base64, so we send base64.
fn encode_review(review: &AdmissionReview<DynamicObject>) -> Vec<u8> {
    let mut value = serde_json::to_value(review).expect("an AdmissionReview always serializes");
    let patch = review.response.as_ref().and_then(|r| r.patch.as_ref());
    if let (Some(patch), Some(slot)) = (patch, value.pointer_mut("/response/patch")) {
        *slot = Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    serde_json::to_vec(&value).expect("a JSON value always serializes")
}

/// The serving certificate, swapped in place when the operator rotates it: new handshakes get
/// the new one, no restart and no dropped connections.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

/// A PEM certificate or key that rustls cannot use.
#[derive(Debug, thiserror::Error)]
#[error("unusable serving certificate: {0}")]
pub struct BadCertificate(String);

impl CertResolver {
    /// Serves `cert_pem` (the chain, leaf first) with `key_pem`.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, BadCertificate> {
        Ok(Self {
            current: ArcSwap::from_pointee(certified_key(cert_pem, key_pem)?),
        })
    }

    /// Serves `cert_pem` and `key_pem` from the next handshake on.
    pub fn update(&self, cert_pem: &str, key_pem: &str) -> Result<(), BadCertificate> {
        self.current
            .store(Arc::new(certified_key(cert_pem, key_pem)?));
        Ok(())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, BadCertificate> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BadCertificate(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(BadCertificate("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| BadCertificate(format!("key PEM: {e}")))?;
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| BadCertificate(e.to_string()))
}

/// The TLS configuration of the webhook server: ring, TLS 1.2 and 1.3, HTTP/1.1.
pub fn tls_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the webhook on `listener` until `shutdown` completes. Connections in progress finish
/// on their own (each is bounded by the timeouts above).
pub async fn serve<P: PodConfig, N: NamespaceLabels>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    webhook: Arc<Webhook<P, N>>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    accept_until(listener, shutdown, "webhook", |stream, peer| {
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(acceptor.clone(), stream, peer, webhook.clone()));
    })
    .await;
}

/// Accepts connections on `listener` and hands each to `serve` until `shutdown` completes;
/// the webhook's and the metrics endpoint's accept loop. `what` names the endpoint in logs.
pub(crate) async fn accept_until(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    what: &str,
    mut serve: impl FnMut(tokio::net::TcpStream, SocketAddr),
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve(stream, peer),
                Err(error) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!(%error, "{what}: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// How long to wait after a failed accept (e.g. EMFILE) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

async fn connection<P: PodConfig, N: NamespaceLabels>(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    webhook: Arc<Webhook<P, N>>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "webhook TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "webhook TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |request| {
        let webhook = webhook.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&webhook, request).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "webhook connection ended with an error");
    }
}

async fn handle<P: PodConfig, N: NamespaceLabels>(
    webhook: &Webhook<P, N>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, HEALTHZ_PATH) => text(StatusCode::OK, "ok\n".into()),
        (&Method::POST, MUTATE_PATH) => mutate(webhook, request).await,
        (_, MUTATE_PATH) | (_, HEALTHZ_PATH) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{MUTATE_PATH} takes POST, {HEALTHZ_PATH} takes GET\n"),
        ),
        (_, path) => text(StatusCode::NOT_FOUND, format!("no such path: {path}\n")),
    }
}

async fn mutate<P: PodConfig, N: NamespaceLabels>(
    webhook: &Webhook<P, N>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    let body = match tokio::time::timeout(READ_TIMEOUT, body.collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(error)) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {error}\n"),
            );
        }
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {READ_TIMEOUT:?}\n"),
            );
        }
    };
    match webhook.review(&body).await {
        Ok((review, outcome)) => {
            metrics().admitted(outcome, started.elapsed());
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(encode_review(&review))))
                .expect("a static response is valid")
        }
        Err(Malformed(message)) => {
            metrics().admitted(Admission::Malformed, started.elapsed());
            tracing::warn!(%message, "malformed AdmissionReview");
            text(StatusCode::BAD_REQUEST, format!("{message}\n"))
        }
    }
}

fn too_large() -> Response<Full<Bytes>> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("an AdmissionReview is at most {MAX_BODY_BYTES} bytes\n"),
    )
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is valid")
}

/// The binary's source of namespace labels: a reflector store of Namespace metadata.
impl NamespaceLabels
    for kube::runtime::reflector::Store<
        kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>,
    >
{
    fn label(&self, namespace: &str, key: &str) -> Option<String> {
        let ns = self.get(&kube::runtime::reflector::ObjectRef::new(namespace))?;
        ns.metadata.labels.as_ref()?.get(key).cloned()
    }

    fn known(&self, namespace: &str) -> bool {
        self.get(&kube::runtime::reflector::ObjectRef::new(namespace))
            .is_some()
    }
}
