//! The metrics address (`metrics:` / `-metrics`): Prometheus metrics at the configured path,
//! and the probes a pod needs, `/healthz` (the process serves) and `/readyz` (every service is
//! bound and the process is not draining).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use gost_api::{Config, MetricsConfig};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::auth::Authenticator;
use crate::listener::tcp::TcpListenerImpl;
use crate::listener::{ACCEPT_ERROR_BACKOFF, Listener};

/// GOST's default metrics path.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";

/// A scrape or probe that has not sent its request head by then is dropped: probes come from
/// the kubelet or Prometheus on the same network, which never need long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the process is ready for traffic: set once every service is bound, cleared when
/// it starts draining; and the error of the last refused configuration, if the last attempt
/// failed.
#[derive(Clone, Default)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Default)]
struct ReadinessState {
    ready: AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
}

impl Readiness {
    /// Marks the process ready or not.
    pub fn set(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::SeqCst);
    }

    /// Records why the last configuration was refused (`None` once one is applied). The
    /// previous configuration keeps serving, so this does not make the process unready.
    pub fn set_error(&self, error: Option<String>) {
        *self.0.last_error.lock().expect("readiness lock") = error;
    }

    fn get(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }

    fn last_error(&self) -> Option<String> {
        self.0.last_error.lock().expect("readiness lock").clone()
    }
}

struct Endpoint {
    path: String,
    auth: MetricsAuth,
    ready: Readiness,
}

/// The credentials the metrics path asks for (`metrics.auth`, or its `auther`'s users), which
/// follow reloads: a changed password must stop working here as it does on the services.
#[derive(Clone, Default)]
pub struct MetricsAuth(Arc<ArcSwapOption<Authenticator>>);

impl MetricsAuth {
    /// Takes the credentials `config`'s `metrics` section asks for; without the section,
    /// the ones in use stay (the endpoint itself goes only at the next start).
    pub fn update(&self, config: &Config) {
        if let Some(metrics) = &config.metrics {
            self.0.store(Self::of(metrics, config).map(Arc::new));
        }
    }

    fn of(metrics: &MetricsConfig, config: &Config) -> Option<Authenticator> {
        let names: Vec<&String> = metrics.auther.iter().collect();
        Authenticator::configured(metrics.auth.as_ref(), &names, config)
    }
}

/// Binds the metrics address of `config`; the returned future serves it until dropped, and
/// the returned credentials are the ones it checks, for reloads to update.
pub fn bind(
    metrics: &MetricsConfig,
    config: &Config,
    ready: Readiness,
) -> Result<(SocketAddr, MetricsAuth, impl Future<Output = ()> + use<>), String> {
    let listener = TcpListenerImpl::bind(&metrics.addr)
        .map_err(|e| format!("metrics.addr: cannot listen on {:?}: {e}", metrics.addr))?;
    let local = listener.local_addr();
    let auth = MetricsAuth::default();
    auth.update(config);
    let endpoint = Arc::new(Endpoint {
        path: metrics
            .path
            .clone()
            .filter(|p| p.starts_with('/'))
            .unwrap_or_else(|| DEFAULT_METRICS_PATH.to_string()),
        auth: auth.clone(),
        ready,
    });
    Ok((local, auth, serve(listener, endpoint)))
}

async fn serve(listener: TcpListenerImpl, endpoint: Arc<Endpoint>) {
    loop {
        let (stream, _) = match listener.accept_tcp().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(respond(&endpoint, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(endpoint: &Endpoint, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    let mut response = if req.method() == Method::OPTIONS {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into())
    } else {
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                let mut body = if endpoint.ready.get() {
                    "ready\n".to_string()
                } else {
                    "not ready: starting, draining, or a listener is not bound\n".to_string()
                };
                if let Some(error) = endpoint.ready.last_error() {
                    body.push_str(&format!(
                        "last configuration refused (the previous one keeps running): {error}\n"
                    ));
                }
                let status = if endpoint.ready.get() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(status, body)
            }
            path if path == endpoint.path => {
                if authorized(endpoint, &req) {
                    let mut response = text(StatusCode::OK, crate::metrics::render());
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    response
                } else {
                    let mut response = text(StatusCode::UNAUTHORIZED, "Unauthorized\n".into());
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"gost\""),
                    );
                    response
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    };
    // GOST's metrics endpoint lets browser dashboards read it from any origin.
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

fn authorized(endpoint: &Endpoint, req: &Request<Incoming>) -> bool {
    let auth = endpoint.auth.0.load();
    let Some(auth) = auth.as_deref() else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| crate::codec::http::basic_credentials(v.as_bytes()))
        .is_some_and(|(user, pass)| auth.check(&user, &pass))
}
