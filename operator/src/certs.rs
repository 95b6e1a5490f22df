//! The webhook's serving certificate: the operator issues it from its own CA, keeps both in a
//! Secret so every replica serves the same one, renews them before they expire, and keeps the
//! MutatingWebhookConfiguration's `caBundle` equal to the CA.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::inject::SYSTEM_NAMESPACES;
use crate::webhook::{CertResolver, MUTATE_PATH};

/// The Secret holding the CA and the serving certificate, in the operator's namespace.
pub const DEFAULT_SECRET_NAME: &str = "gost-operator-webhook-tls";
/// The MutatingWebhookConfiguration the chart installs (or laptop mode registers).
pub const DEFAULT_WEBHOOK_CONFIGURATION: &str = "gost-sidecar-injector";
/// The webhook's name inside the configuration: it must be a fully qualified name.
pub const WEBHOOK_NAME: &str = "inject.gost.rs";
/// Secret keys: the CA certificate (what `caBundle` holds) and its key (to renew the serving
/// certificate without changing `caBundle`), and the serving pair in the `kubernetes.io/tls`
/// layout.
pub const CA_CERT_KEY: &str = "ca.crt";
/// See [`CA_CERT_KEY`].
pub const CA_KEY_KEY: &str = "ca.key";
/// See [`CA_CERT_KEY`].
pub const TLS_CERT_KEY: &str = "tls.crt";
/// The CA before the last CA renewal, kept while it is valid: `caBundle` carries both, so the
/// API server accepts replicas still serving a certificate of the old CA while the new one
/// propagates (else their admissions fail and pods start without the sidecar).
pub const PREVIOUS_CA_CERT_KEY: &str = "ca-previous.crt";
/// See [`CA_CERT_KEY`].
pub const TLS_KEY_KEY: &str = "tls.key";
/// The CA changes `caBundle`, which briefly breaks admission while the API server catches up, so
/// it lives long.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The serving certificate rotates without touching `caBundle`: short-lived, like public CAs'.
pub const DEFAULT_SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Renew when less than `1 / RENEW_WHEN_LEFT_DIVISOR` of a certificate's lifetime is left: a
/// month of slack for a 90-day certificate, for the operator to be down and come back.
pub const RENEW_WHEN_LEFT_DIVISOR: i64 = 3;
/// Backdating `notBefore` absorbs clock skew between the operator and the API server.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);
/// How often the running operator checks the Secret and `caBundle`: also how long a chart
/// upgrade that resets `caBundle` leaves injection broken.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// The API server gives up on a webhook after this long (the pod is then admitted without the
/// sidecar, `failurePolicy: Ignore`).
pub const WEBHOOK_TIMEOUT_SECONDS: i32 = 5;
/// Another replica writing the Secret at the same moment makes a write conflict; re-reading and
/// retrying a few times settles it.
const WRITE_ATTEMPTS: usize = 3;

/// What went wrong issuing, storing or publishing the certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen could not build a certificate.
    #[error("cannot issue the webhook certificate: {0}")]
    Issue(#[from] rcgen::Error),
    /// The Kubernetes API refused a read or a write.
    #[error("{what}: {source}")]
    Api {
        /// Which object and operation.
        what: String,
        /// The API's answer (boxed: kube's error is large, and every Result here carries it).
        source: Box<kube::Error>,
    },
    /// A setting cannot be turned into a certificate (e.g. a webhook URL without a host).
    #[error("{0}")]
    Settings(String),
    /// The stored certificate does not load into rustls.
    #[error(transparent)]
    Unusable(#[from] crate::webhook::BadCertificate),
    /// The MutatingWebhookConfiguration to patch does not exist.
    #[error(
        "MutatingWebhookConfiguration {0} not found: install the chart's webhook configuration, or run with --webhook-url to register one"
    )]
    NoWebhookConfiguration(String),
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Api {
        what,
        source: Box::new(source),
    }
}

/// Where the certificate is stored and which names it must carry.
#[derive(Clone, Debug, PartialEq)]
pub struct CertSettings {
    /// The webhook Service's name.
    pub service: String,
    /// The operator's namespace (of the Service and of the Secret).
    pub namespace: String,
    /// The Secret storing the CA and the serving pair.
    pub secret_name: String,
    /// The MutatingWebhookConfiguration whose `caBundle` follows the CA.
    pub webhook_configuration: String,
    /// Laptop mode: the URL the API server calls (`https://127.0.0.1:PORT/mutate`); its host
    /// goes into the certificate, and the configuration is registered with this URL.
    pub webhook_url: Option<String>,
    /// Validity of a newly issued CA.
    pub ca_validity: Duration,
    /// Validity of a newly issued serving certificate.
    pub serving_validity: Duration,
}

impl CertSettings {
    /// The defaults for the webhook Service `service` in `namespace`.
    pub fn new(service: &str, namespace: &str) -> Self {
        Self {
            service: service.to_string(),
            namespace: namespace.to_string(),
            secret_name: DEFAULT_SECRET_NAME.to_string(),
            webhook_configuration: DEFAULT_WEBHOOK_CONFIGURATION.to_string(),
            webhook_url: None,
            ca_validity: DEFAULT_CA_VALIDITY,
            serving_validity: DEFAULT_SERVING_VALIDITY,
        }
    }

    /// The subject alternative names: the Service's DNS names, plus the webhook URL's host.
    pub fn subject_alt_names(&self) -> Result<Vec<String>, CertError> {
        let (service, namespace) = (&self.service, &self.namespace);
        let mut names = vec![
            service.clone(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        if let Some(url) = &self.webhook_url {
            let host = url_host(url)?;
            if !names.contains(&host) {
                names.push(host);
            }
        }
        Ok(names)
    }
}

/// The host of an `https://host[:port]/path` URL, without IPv6 brackets.
fn url_host(url: &str) -> Result<String, CertError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| CertError::Settings(format!("webhook URL {url:?}: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(CertError::Settings(format!(
            "webhook URL {url:?}: the API server calls webhooks over https only"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| CertError::Settings(format!("webhook URL {url:?} has no host")))?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

/// The CA and the serving pair, PEM-encoded, as stored in the Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCert {
    /// The CA certificate: what `caBundle` holds.
    pub ca_pem: String,
    /// The CA's private key.
    pub ca_key_pem: String,
    /// The serving certificate, issued by the CA.
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
    /// The CA this one replaced, while it may still be served (see [`PREVIOUS_CA_CERT_KEY`]).
    pub previous_ca_pem: Option<String>,
}

impl std::fmt::Debug for ServingCert {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Reads the four keys of the Secret; `None` when one is missing or not UTF-8.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let get = |key: &str| String::from_utf8(data.get(key)?.0.clone()).ok();
        Some(Self {
            ca_pem: get(CA_CERT_KEY)?,
            ca_key_pem: get(CA_KEY_KEY)?,
            cert_pem: get(TLS_CERT_KEY)?,
            key_pem: get(TLS_KEY_KEY)?,
            previous_ca_pem: get(PREVIOUS_CA_CERT_KEY),
        })
    }

    /// What `caBundle` holds: the CA, then the previous CA while it has not expired.
    pub fn ca_bundle(&self, now: OffsetDateTime) -> String {
        let mut bundle = self.ca_pem.clone();
        if let Some(previous) = &self.previous_ca_pem
            && parse(previous).is_ok_and(|ca| ca.not_after > now.unix_timestamp())
        {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(previous);
        }
        bundle
    }

    fn to_secret(&self, name: &str, namespace: &str) -> Secret {
        let bytes = |s: &String| ByteString(s.as_bytes().to_vec());
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_string()),
            data: Some(
                [
                    (CA_CERT_KEY, &self.ca_pem),
                    (CA_KEY_KEY, &self.ca_key_pem),
                    (TLS_CERT_KEY, &self.cert_pem),
                    (TLS_KEY_KEY, &self.key_pem),
                ]
                .into_iter()
                .chain(
                    self.previous_ca_pem
                        .as_ref()
                        .map(|previous| (PREVIOUS_CA_CERT_KEY, previous)),
                )
                .map(|(k, v)| (k.to_string(), bytes(v)))
                .collect(),
            ),
            ..Default::default()
        }
    }
}

/// What a stored certificate needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Valid, with the right names, for a while yet.
    Keep,
    /// A new serving certificate from the same CA (`caBundle` unchanged), and why.
    Serving(String),
    /// A new CA and serving certificate, and why.
    Everything(String),
}

struct Parsed {
    not_before: i64,
    not_after: i64,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    names: BTreeSet<String>,
}

fn parse(pem: &str) -> Result<Parsed, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let cert = pem.parse_x509().map_err(|e| e.to_string())?;
    let mut names = BTreeSet::new();
    if let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    names.insert(dns.to_string());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(Parsed {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        subject: cert.subject().as_raw().to_vec(),
        issuer: cert.issuer().as_raw().to_vec(),
        names,
    })
}

fn running_out(cert: &Parsed, now: i64) -> bool {
    let lifetime = cert.not_after - cert.not_before;
    cert.not_after - now < lifetime / RENEW_WHEN_LEFT_DIVISOR
}

/// Whether `stored` can keep serving at `now` for `settings`.
pub fn renewal(stored: &ServingCert, settings: &CertSettings, now: OffsetDateTime) -> Renewal {
    let now = now.unix_timestamp();
    let ca = match parse(&stored.ca_pem) {
        Ok(ca) => ca,
        Err(e) => return Renewal::Everything(format!("the stored CA does not parse: {e}")),
    };
    if KeyPair::from_pem(&stored.ca_key_pem).is_err() {
        return Renewal::Everything("the stored CA key does not parse".into());
    }
    if running_out(&ca, now) {
        return Renewal::Everything("the CA is near its expiry".into());
    }
    let serving = match parse(&stored.cert_pem) {
        Ok(serving) => serving,
        Err(e) => return Renewal::Serving(format!("the stored certificate does not parse: {e}")),
    };
    if KeyPair::from_pem(&stored.key_pem).is_err() {
        return Renewal::Serving("the stored key does not parse".into());
    }
    if serving.issuer != ca.subject {
        return Renewal::Serving("the certificate was not issued by the stored CA".into());
    }
    if running_out(&serving, now) {
        return Renewal::Serving("the certificate is near its expiry".into());
    }
    let wanted = match settings.subject_alt_names() {
        Ok(names) => names.into_iter().map(normalize).collect::<BTreeSet<_>>(),
        Err(e) => return Renewal::Serving(e.to_string()),
    };
    if serving.names != wanted {
        return Renewal::Serving(format!(
            "the certificate names {:?}, the webhook needs {:?}",
            serving.names, wanted
        ));
    }
    Renewal::Keep
}

/// IP addresses in their canonical text form, so `::1` and `0::1` compare equal.
fn normalize(name: String) -> String {
    name.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .unwrap_or(name)
}

fn validity(params: &mut CertificateParams, now: OffsetDateTime, validity: Duration) {
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + validity;
}

/// A new CA and a serving certificate from it, both valid from `now`.
pub fn issue(settings: &CertSettings, now: OffsetDateTime) -> Result<ServingCert, CertError> {
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("gost-operator webhook CA ({})", settings.namespace),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, now, settings.ca_validity);
    let ca = params.self_signed(&ca_key)?;
    let issuer = Issuer::new(params, &ca_key);
    let (cert_pem, key_pem) = serving_pair(settings, &issuer, now)?;
    Ok(ServingCert {
        ca_pem: ca.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        cert_pem,
        key_pem,
        previous_ca_pem: None,
    })
}

/// A new serving certificate from `stored`'s CA, valid from `now`: `caBundle` stays as it is.
pub fn reissue_serving(
    stored: &ServingCert,
    settings: &CertSettings,
    now: OffsetDateTime,
) -> Result<ServingCert, CertError> {
    let ca_key = KeyPair::from_pem(&stored.ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&stored.ca_pem, ca_key)?;
    let (cert_pem, key_pem) = serving_pair(settings, &issuer, now)?;
    Ok(ServingCert {
        ca_pem: stored.ca_pem.clone(),
        ca_key_pem: stored.ca_key_pem.clone(),
        cert_pem,
        key_pem,
        previous_ca_pem: stored.previous_ca_pem.clone(),
    })
}

fn serving_pair(
    settings: &CertSettings,
    issuer: &Issuer<'_, impl rcgen::SigningKey>,
    now: OffsetDateTime,
) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(settings.subject_alt_names()?)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{}.{}.svc", settings.service, settings.namespace),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, settings.serving_validity);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Returns the serving certificate to use: the stored one when still good, else a renewed one,
/// written to the Secret first so every replica converges on it.
pub async fn ensure_serving_cert(
    client: &Client,
    settings: &CertSettings,
) -> Result<ServingCert, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let what = format!("Secret {}/{}", settings.namespace, settings.secret_name);
    for _ in 0..WRITE_ATTEMPTS {
        let now = OffsetDateTime::now_utc();
        let existing = api
            .get_opt(&settings.secret_name)
            .await
            .map_err(api_error(format!("reading {what}")))?;
        let stored = existing.as_ref().and_then(ServingCert::from_secret);
        let fresh = match &stored {
            None => issue(settings, now)?,
            Some(stored) => match renewal(stored, settings, now) {
                Renewal::Keep => return Ok(stored.clone()),
                Renewal::Serving(reason) => {
                    tracing::info!(secret = %what, %reason, "renewing the webhook serving certificate");
                    reissue_serving(stored, settings, now)?
                }
                Renewal::Everything(reason) => {
                    tracing::info!(secret = %what, %reason, "issuing a new webhook CA");
                    let mut fresh = issue(settings, now)?;
                    // The old CA stays in caBundle while replicas may still serve its
                    // certificate (see PREVIOUS_CA_CERT_KEY).
                    fresh.previous_ca_pem = parse(&stored.ca_pem)
                        .is_ok_and(|ca| ca.not_after > now.unix_timestamp())
                        .then(|| stored.ca_pem.clone());
                    fresh
                }
            },
        };
        let mut secret = fresh.to_secret(&settings.secret_name, &settings.namespace);
        let written = match existing {
            Some(existing) => {
                secret.metadata.resource_version = existing.metadata.resource_version;
                secret.metadata.labels = existing.metadata.labels;
                secret.metadata.annotations = existing.metadata.annotations;
                api.replace(&settings.secret_name, &PostParams::default(), &secret)
                    .await
            }
            None => api.create(&PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => return Ok(fresh),
            // Another replica wrote first: use what it wrote if it is good.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(api_error(format!("writing {what}"))(e)),
        }
    }
    Err(CertError::Settings(format!(
        "{what} kept changing under us ({WRITE_ATTEMPTS} write conflicts in a row)"
    )))
}

/// Sets the `caBundle` of every webhook in the configuration named `name` to `ca_pem`, writing
/// only when one differs; returns whether it wrote.
pub async fn ensure_ca_bundle(
    client: &Client,
    name: &str,
    ca_pem: &str,
) -> Result<bool, CertError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = format!("MutatingWebhookConfiguration {name}");
    let Some(mut config) = api
        .get_opt(name)
        .await
        .map_err(api_error(format!("reading {what}")))?
    else {
        return Err(CertError::NoWebhookConfiguration(name.to_string()));
    };
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let mut changed = false;
    for webhook in config.webhooks.iter_mut().flatten() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
            webhook.client_config.ca_bundle = Some(bundle.clone());
            changed = true;
        }
    }
    if changed {
        api.replace(name, &PostParams::default(), &config)
            .await
            .map_err(api_error(format!("updating the caBundle of {what}")))?;
        tracing::info!(configuration = name, "webhook caBundle updated");
    }
    Ok(changed)
}

/// The configuration laptop mode registers: the API server calls `url` directly.
pub fn url_webhook_configuration(
    name: &str,
    url: &str,
    ca_pem: &str,
) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_NAME.to_string(),
            admission_review_versions: vec!["v1".to_string()],
            client_config: WebhookClientConfig {
                url: Some(url.to_string()),
                ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
                service: None,
            },
            // A pod must never wait on our outage.
            failure_policy: Some("Ignore".to_string()),
            // Dry-run requests render nothing (PodConfig::ensure_config's contract).
            side_effects: "NoneOnDryRun".to_string(),
            reinvocation_policy: Some("IfNeeded".to_string()),
            timeout_seconds: Some(WEBHOOK_TIMEOUT_SECONDS),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".to_string(),
                    operator: "NotIn".to_string(),
                    values: Some(SYSTEM_NAMESPACES.iter().map(|s| s.to_string()).collect()),
                }]),
                ..Default::default()
            }),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_string()]),
                operations: Some(vec!["CREATE".to_string()]),
                resources: Some(vec!["pods".to_string()]),
                scope: Some("Namespaced".to_string()),
            }]),
            ..Default::default()
        }]),
    }
}

/// Laptop mode: creates or updates the configuration named `name` so the API server calls
/// `url` (which should end in [`MUTATE_PATH`]) trusting `ca_pem`.
pub async fn register_webhook_by_url(
    client: &Client,
    name: &str,
    url: &str,
    ca_pem: &str,
) -> Result<(), CertError> {
    if !url.ends_with(MUTATE_PATH) {
        return Err(CertError::Settings(format!(
            "webhook URL {url:?}: the webhook serves {MUTATE_PATH}, so the URL must end with it"
        )));
    }
    url_host(url)?;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = format!("MutatingWebhookConfiguration {name}");
    let mut wanted = url_webhook_configuration(name, url, ca_pem);
    match api
        .get_opt(name)
        .await
        .map_err(api_error(format!("reading {what}")))?
    {
        Some(existing) => {
            if existing.webhooks == wanted.webhooks {
                return Ok(());
            }
            wanted.metadata.resource_version = existing.metadata.resource_version;
            wanted.metadata.labels = existing.metadata.labels;
            api.replace(name, &PostParams::default(), &wanted)
                .await
                .map_err(api_error(format!("updating {what}")))?;
        }
        None => {
            api.create(&PostParams::default(), &wanted)
                .await
                .map_err(api_error(format!("creating {what}")))?;
        }
    }
    tracing::info!(configuration = name, url, "webhook registered by URL");
    Ok(())
}

/// Brings the configuration in line with `cert`: by URL in laptop mode, else its `caBundle`.
pub async fn sync_webhook_configuration(
    client: &Client,
    settings: &CertSettings,
    cert: &ServingCert,
) -> Result<(), CertError> {
    let bundle = cert.ca_bundle(OffsetDateTime::now_utc());
    match &settings.webhook_url {
        Some(url) => {
            register_webhook_by_url(client, &settings.webhook_configuration, url, &bundle).await
        }
        None => ensure_ca_bundle(client, &settings.webhook_configuration, &bundle)
            .await
            .map(drop),
    }
}

/// Startup: the certificate to serve (stored or newly issued), a resolver serving it, and the
/// webhook configuration brought in line. Hand the results to [`crate::webhook::tls_config`]
/// and [`keep_current`].
pub async fn prepare(
    client: &Client,
    settings: &CertSettings,
) -> Result<(Arc<CertResolver>, ServingCert), CertError> {
    let cert = ensure_serving_cert(client, settings).await?;
    let resolver = Arc::new(CertResolver::new(&cert.cert_pem, &cert.key_pem)?);
    sync_webhook_configuration(client, settings, &cert).await?;
    Ok((resolver, cert))
}

/// Runs for the life of the operator: every [`CHECK_INTERVAL`], renews the certificate when due,
/// swaps it into `resolver` and keeps the webhook configuration current. `current` is what the
/// resolver serves now. Errors are logged and retried on the next round.
pub async fn keep_current(
    client: Client,
    settings: CertSettings,
    resolver: Arc<CertResolver>,
    mut current: ServingCert,
) {
    let mut pending_ca: Option<String> = None;
    loop {
        tokio::time::sleep(CHECK_INTERVAL).await;
        let cert = match ensure_serving_cert(&client, &settings).await {
            Ok(cert) => cert,
            Err(error) => {
                tracing::warn!(%error, "cannot check the webhook certificate");
                continue;
            }
        };
        // caBundle first: it must trust the new CA before any replica serves its certificate.
        if let Err(error) = sync_webhook_configuration(&client, &settings, &cert).await {
            tracing::warn!(%error, "cannot update the webhook configuration");
            continue;
        }
        // A new CA is served one round after caBundle first carried it, so the API server
        // has picked the bundle up; until then the old certificate, still valid and trusted
        // through the previous CA, keeps serving.
        if cert.ca_pem != current.ca_pem && pending_ca.as_ref() != Some(&cert.ca_pem) {
            tracing::info!(
                "new webhook CA published in caBundle; serving its certificate next round"
            );
            pending_ca = Some(cert.ca_pem.clone());
            continue;
        }
        if cert != current {
            match resolver.update(&cert.cert_pem, &cert.key_pem) {
                Ok(()) => {
                    tracing::info!("serving the renewed webhook certificate");
                    current = cert;
                }
                Err(error) => tracing::warn!(%error, "the stored webhook certificate is unusable"),
            }
        }
    }
}

/// How often a certificate directory (`--webhook-cert-dir`) is read again: cert-manager
/// renews well ahead of expiry and the kubelet takes up to a minute to update a mounted Secret,
/// so ten seconds adds nothing noticeable.
pub const CERT_DIR_POLL: Duration = Duration::from_secs(10);
/// The files of a certificate directory: cert-manager's `kubernetes.io/tls` Secret layout.
pub const CERT_DIR_FILES: (&str, &str) = (TLS_CERT_KEY, TLS_KEY_KEY);

/// Reads the serving pair from `dir` (`tls.crt`, `tls.key`), as cert-manager writes it into a
/// mounted Secret.
pub fn read_cert_dir(dir: &std::path::Path) -> Result<(String, String), CertError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| {
            CertError::Settings(format!("--webhook-cert-dir: {}: {e}", path.display()))
        })
    };
    Ok((read(CERT_DIR_FILES.0)?, read(CERT_DIR_FILES.1)?))
}

/// A resolver serving the pair in `dir`, for cert-manager mode: the operator then manages
/// neither the certificate Secret nor `caBundle` (cert-manager's CA injector does).
pub fn resolver_from_dir(dir: &std::path::Path) -> Result<Arc<CertResolver>, CertError> {
    let (cert, key) = read_cert_dir(dir)?;
    Ok(Arc::new(CertResolver::new(&cert, &key)?))
}

/// Runs for the life of the operator in cert-manager mode: reads `dir` every `every` and serves
/// a changed pair from the next handshake on. A pair that does not load (a half-written
/// update) is logged and the current one kept.
pub async fn follow_cert_dir(
    dir: std::path::PathBuf,
    resolver: Arc<CertResolver>,
    every: Duration,
) {
    let mut current = read_cert_dir(&dir).ok();
    loop {
        tokio::time::sleep(every).await;
        let pair = match read_cert_dir(&dir) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "cannot read the webhook certificate directory");
                continue;
            }
        };
        if current.as_ref() == Some(&pair) {
            continue;
        }
        match resolver.update(&pair.0, &pair.1) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "serving the renewed webhook certificate");
                current = Some(pair);
            }
            Err(error) => {
                tracing::warn!(%error, "the webhook certificate directory holds an unusable pair")
            }
        }
    }
}
