//! Rendering: a pure function from a namespace's GostServices, GostChains and Secrets (and, for
//! a sidecar, a pod's labels) to the proxy's configuration and the files beside it.
//!
//! Nothing here talks to the API server, so every rule is unit-tested directly. A problem with
//! one GostService (a missing chain or Secret, a clashing port) is reported with a CamelCase
//! reason and leaves that service out of a new config; the rest of the config is still rendered,
//! so one broken resource never takes the other tunnels of a pod down. Where pods already run
//! the service (the config they mount now is given as [`Previous`]), the service is kept as it
//! was rendered there, so that a bad edit does not cut its tunnels either ([`Rendered::kept`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gost_api::v1alpha1::{
    AuthSpec, GostChain, GostService, NodeSpec, ServiceSpec, TlsSpec, served_connector,
    served_dialer, served_handler, served_listener,
};
use gost_api::{
    AuthConfig, ChainConfig, Config, ConnectorConfig, ConnectorType, DialerConfig, DialerType,
    ForwardNodeConfig, ForwarderConfig, HandlerConfig, HandlerType, HopConfig, ListenerConfig,
    ListenerType, MetricsConfig, NodeConfig, ServiceConfig, TlsConfig,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use rustls::InconsistentKeys;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The key of the rendered configuration in the config Secret.
pub const CONFIG_KEY: &str = "config.yaml";
/// Where the config Secret is mounted in the proxy container: the proxy runs
/// `-C /etc/gost/config.yaml` and finds the TLS files beside it.
pub const MOUNT_PATH: &str = "/etc/gost";
/// The proxy's admin port (metrics, `/healthz`, `/readyz`) in sidecars and gateways: high and
/// unusual, so that it does not clash with the ports of the application it sits beside.
pub const DEFAULT_ADMIN_PORT: u16 = 15300;

/// Why part of a resource was left out of a rendered config (or its gateway out of the
/// cluster), or, for the warnings at the end, why something rendered will likely not work.
/// The names are the `reason`s of the `Rendered` condition and of events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// `handler.chain` names a GostChain that does not exist in the namespace.
    ChainNotFound,
    /// A referenced Secret does not exist.
    SecretNotFound,
    /// A referenced Secret lacks the key the reference needs.
    SecretKeyMissing,
    /// A referenced Secret's certificate, key or CA is not PEM the proxy can load (or the key
    /// does not belong to the certificate).
    InvalidCertificate,
    /// Another service of the same pod already listens on this port.
    PortConflict,
    /// The listen address cannot be used (no port, or a host that is not an IP address or
    /// `localhost`).
    InvalidAddress,
    /// A type the proxy does not run.
    UnsupportedType,
    /// The proxy would refuse the rendered service (the message quotes its error).
    InvalidService,
    /// The label selector cannot be evaluated.
    InvalidSelector,
    /// The proxy would refuse the rendered chain (the message quotes its error).
    InvalidChain,
    /// A `spec.gateway` field the API server would refuse in the objects built from it (a
    /// Service port outside 1-65535, a resource quantity that does not parse); the gateway is
    /// left as it was.
    InvalidGateway,
    /// The API server refused (or failed) a write of the gateway's Secret, Deployment or
    /// Service (the message quotes it).
    GatewayNotApplied,
    /// The API server refused (or failed) a write of a workload's config Secret (the message
    /// quotes it: a quota on Secrets, the 1 MiB a Secret holds, ...); its pods keep what they
    /// run, its new pods start without the sidecar.
    ConfigNotWritten,
    /// A warning: a user name or password ends with a newline (`\n` or `\r\n`, what
    /// `kubectl create secret generic --from-file` stores from a file with a final newline).
    /// The proxy takes it as part of the credential, so a login typed without it fails.
    TrailingNewline,
    /// A warning: a user name with a `:` where HTTP Basic authentication carries it; the
    /// first `:` separates user name from password there, so that user cannot log in.
    ColonInUserName,
}

impl Reason {
    /// The CamelCase name used as a condition reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ChainNotFound => "ChainNotFound",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SecretKeyMissing => "SecretKeyMissing",
            Reason::InvalidCertificate => "InvalidCertificate",
            Reason::PortConflict => "PortConflict",
            Reason::InvalidAddress => "InvalidAddress",
            Reason::UnsupportedType => "UnsupportedType",
            Reason::InvalidService => "InvalidService",
            Reason::InvalidSelector => "InvalidSelector",
            Reason::InvalidChain => "InvalidChain",
            Reason::InvalidGateway => "InvalidGateway",
            Reason::GatewayNotApplied => "GatewayNotApplied",
            Reason::ConfigNotWritten => "ConfigNotWritten",
            Reason::TrailingNewline => "TrailingNewline",
            Reason::ColonInUserName => "ColonInUserName",
        }
    }
}

/// Something left out of a rendered config, with what to do about it; or, as one of
/// [`Rendered::warnings`], something rendered that will likely not work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The GostService concerned.
    pub gost_service: String,
    /// Its service (`spec.services[].name`), when the problem is one service's.
    pub service: Option<String>,
    /// The GostChain concerned, when the problem is in a chain.
    pub gost_chain: Option<String>,
    /// The reason, for conditions and events.
    pub reason: Reason,
    /// A sentence saying what is wrong and how to fix it.
    pub message: String,
}

/// What rendering needs from the operator's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The admin port of the proxy (metrics and probes).
    pub admin_port: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            admin_port: DEFAULT_ADMIN_PORT,
        }
    }
}

/// A namespace's resources, as rendering sees them.
#[derive(Clone, Copy, Debug)]
pub struct Namespace<'a> {
    /// The GostServices of the namespace.
    pub services: &'a [GostService],
    /// The GostChains of the namespace.
    pub chains: &'a [GostChain],
    /// The Secrets referenced by them, by name (others may be present and are ignored).
    pub secrets: &'a BTreeMap<String, Secret>,
}

/// A rendered configuration: `config.yaml` and the TLS files it refers to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rendered {
    /// The proxy configuration.
    pub config: Config,
    /// Further Secret keys (PEM files), mounted beside `config.yaml` under [`MOUNT_PATH`].
    pub files: BTreeMap<String, Vec<u8>>,
    /// The GostServices that contributed at least one service, sorted.
    pub gost_services: BTreeSet<String>,
    /// The GostServices whose selector matched (contributing or not), sorted.
    pub matched: BTreeSet<String>,
    /// What was left out of the new rendering, and why.
    pub problems: Vec<Problem>,
    /// The services (GostService, service) that did not render but are kept as they were in
    /// the [`Previous`] config, sorted. Each also has its problem in `problems`.
    pub kept: BTreeSet<(String, String)>,
    /// What rendered as written but will likely not work (credentials that cannot log in),
    /// and what to do about it. Nothing is left out for these.
    pub warnings: Vec<Problem>,
}

/// The config that pods (or a gateway) run now: the config Secret they mount, as the operator
/// last wrote it. When a service it holds no longer renders (a bad edit: a chain deleted or
/// misnamed, a certificate that does not load, a port taken), the new config keeps the service
/// as it is here, with the files it reads, until the problem is fixed or the service is removed
/// from its GostService (or no longer selects the pod, or the GostService is deleted). Who may
/// connect is never held back: see `Renderer::keep`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Previous {
    config: Config,
    files: BTreeMap<String, Vec<u8>>,
}

impl Previous {
    /// The config held by a config Secret's data ([`Rendered::secret_data`]); an error names
    /// what is wrong when `config.yaml` is missing or does not load.
    pub fn from_secret_data(data: &BTreeMap<String, ByteString>) -> Result<Previous, String> {
        let text = data
            .get(CONFIG_KEY)
            .ok_or_else(|| format!("no key {CONFIG_KEY:?}"))?;
        let text = std::str::from_utf8(&text.0)
            .map_err(|_| format!("key {CONFIG_KEY:?} is not UTF-8 text"))?;
        let config = gost_api::from_str(text, gost_api::Format::Yaml)
            .map_err(|e| format!("key {CONFIG_KEY:?} does not load: {e}"))?;
        let files = data
            .iter()
            .filter(|(k, _)| k.as_str() != CONFIG_KEY)
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        Ok(Previous { config, files })
    }
}

impl Rendered {
    /// The data of the config Secret: `config.yaml` and the files.
    pub fn secret_data(&self) -> BTreeMap<String, ByteString> {
        let mut data: BTreeMap<String, ByteString> = self
            .files
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone())))
            .collect();
        data.insert(
            CONFIG_KEY.to_string(),
            ByteString(gost_api::to_yaml(&self.config).into_bytes()),
        );
        data
    }
}

/// A port a rendered config listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenPort {
    /// The service's name: in a gateway, its name in the GostService (a DNS label, so a valid
    /// Service port name); in a sidecar config, the rendered name ([`service_name`]).
    pub name: String,
    /// The listen port.
    pub port: u16,
    /// `TCP`, or `UDP` for the QUIC listener `h3`.
    pub protocol: &'static str,
}

impl Rendered {
    /// The listen ports of the services that rendered (a left-out service has none).
    pub fn listen_ports(&self) -> Vec<ListenPort> {
        self.config
            .services
            .iter()
            .filter_map(|svc| {
                let (_, port) = gost_api::split_host_port(&svc.addr)?;
                Some(ListenPort {
                    name: svc.name.clone(),
                    port: gost_api::parse_port(port)?,
                    protocol: if svc.listener.kind == ListenerType::H3 {
                        "UDP"
                    } else {
                        "TCP"
                    },
                })
            })
            .collect()
    }
}

/// Does `selector` select a pod with `labels`? Kubernetes semantics: an empty selector selects
/// everything, `matchLabels` and every `matchExpressions` entry must all hold.
pub fn selects(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    for (key, value) in selector.match_labels.iter().flatten() {
        if labels.get(key) != Some(value) {
            return Ok(false);
        }
    }
    for requirement in selector.match_expressions.iter().flatten() {
        if !requirement_holds(requirement, labels)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn requirement_holds(
    req: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    match req.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => Err(format!(
            "matchExpressions key {:?}: operator {} needs at least one value",
            req.key, req.operator
        )),
        "In" => Ok(value.is_some_and(|v| values.contains(v))),
        "NotIn" => Ok(!value.is_some_and(|v| values.contains(v))),
        "Exists" | "DoesNotExist" if !values.is_empty() => Err(format!(
            "matchExpressions key {:?}: operator {} takes no values",
            req.key, req.operator
        )),
        "Exists" => Ok(value.is_some()),
        "DoesNotExist" => Ok(value.is_none()),
        other => Err(format!(
            "matchExpressions key {:?}: unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist",
            req.key
        )),
    }
}

/// The config of the sidecar of a pod with `labels`: every service of every GostService that
/// selects the pod. GostServices are taken oldest first (then by name), so when two claim one
/// port the one that was there first keeps it. `previous` is the config the pod's group mounts
/// now, if any: a service that does not render is kept as it is there ([`Previous`]).
pub fn render_for_pod(
    ns: &Namespace<'_>,
    labels: &BTreeMap<String, String>,
    settings: &Settings,
    previous: Option<&Previous>,
) -> Rendered {
    guarded(previous, |previous| {
        let mut out = Renderer::new(ns, settings, previous);
        for gs in ordered(ns.services) {
            out.add_if_selected(gs, labels);
        }
        out.finish()
    })
}

/// `render(previous)`, rendered again without the kept services that [`Renderer::finish`]
/// took out (their files changed), so that no port stays reserved for one of them; and unless
/// the services it keeps make the proxy refuse the config as a whole (every service is checked
/// on its own, so this is a last guard), else `render(None)`, which keeps nothing. A kept
/// service must never cost the pod the others.
fn guarded(
    previous: Option<&Previous>,
    render: impl Fn(Option<Keeping<'_>>) -> (Rendered, BTreeSet<String>),
) -> Rendered {
    let Some(previous) = previous else {
        return render(None).0;
    };
    let mut not = BTreeSet::new();
    // Each round takes out at least one more of the previous services, so this ends.
    for _ in 0..=previous.config.services.len() {
        let (r, dropped) = render(Some(Keeping {
            previous,
            not: &not,
        }));
        if dropped.is_empty() {
            if r.kept.is_empty() || gost_api::validate(&r.config).is_ok() {
                return r;
            }
            break;
        }
        not.extend(dropped);
    }
    render(None).0
}

/// What a render may keep: the services of `previous`, except those named in `not`.
#[derive(Clone, Copy)]
struct Keeping<'a> {
    previous: &'a Previous,
    not: &'a BTreeSet<String>,
}

impl Renderer<'_> {
    /// Adds `gs` when its selector selects a pod with `labels`.
    fn add_if_selected(&mut self, gs: &GostService, labels: &BTreeMap<String, String>) {
        let Some(selector) = &gs.spec.selector else {
            return;
        };
        match selects(selector, labels) {
            Ok(true) => self.add(gs),
            Ok(false) => {}
            Err(message) => {
                self.problem(
                    gs,
                    None,
                    None,
                    Reason::InvalidSelector,
                    format!("spec.selector: {message}"),
                );
                // Whether the pod is selected is unknown: it keeps the services of the
                // GostService that it runs, rendered as they are now where they render (a
                // renewed certificate still reaches them), else as they were.
                let gs_name = name_of(gs);
                for svc in &gs.spec.services {
                    let runs = self.keeping.is_some_and(|k| {
                        let name = service_name(&gs_name, &svc.name);
                        k.previous.config.services.iter().any(|s| s.name == name)
                    });
                    if runs {
                        self.out.matched.insert(gs_name.clone());
                        self.add_service(gs, svc);
                    }
                }
            }
        }
    }
}

/// The config of a GostService's gateway: its own services only. `previous` is the config the
/// gateway mounts now, if any ([`Previous`]).
pub fn render_gateway(
    ns: &Namespace<'_>,
    gs: &GostService,
    settings: &Settings,
    previous: Option<&Previous>,
) -> Rendered {
    guarded(previous, |previous| {
        let mut out = Renderer::new(ns, settings, previous);
        out.add(gs);
        out.finish()
    })
}

/// The GostChain `name` checked on its own, as every service dialling through it would render
/// it: `None` when it renders and the proxy would accept it, else the problem.
pub fn chain_problem(ns: &Namespace<'_>, name: &str) -> Option<Problem> {
    check_chain(ns, name).0
}

/// [`chain_problem`], and the warnings of the chain when it renders (credentials that cannot
/// log in: [`Rendered::warnings`]).
pub fn check_chain(ns: &Namespace<'_>, name: &str) -> (Option<Problem>, Vec<Problem>) {
    let settings = Settings::default();
    let mut renderer = Renderer::new(ns, &settings, None);
    let as_problem = |(reason, message): (Reason, String)| Problem {
        gost_service: String::new(),
        service: None,
        gost_chain: Some(name.to_string()),
        reason,
        message,
    };
    let result = renderer.render_chain(name).and_then(|chain| {
        let alone = Config {
            chains: vec![chain.config],
            ..Config::default()
        };
        gost_api::validate(&alone).map_err(|e| {
            (
                Reason::InvalidChain,
                format!("GostChain {name:?}: the proxy would refuse it: {e}"),
            )
        })
    });
    match result {
        Err(problem) => (Some(as_problem(problem)), Vec::new()),
        Ok(()) => {
            let warnings = renderer.chain_warnings.remove(name).unwrap_or_default();
            (None, warnings.into_iter().map(as_problem).collect())
        }
    }
}

/// GostServices oldest first, then by name: the order that decides port conflicts.
fn ordered(services: &[GostService]) -> Vec<&GostService> {
    let mut v: Vec<&GostService> = services.iter().collect();
    v.sort_by(|a, b| {
        let key = |gs: &GostService| {
            (
                gs.metadata.creation_timestamp.as_ref().map(|t| t.0),
                gs.metadata.name.clone().unwrap_or_default(),
            )
        };
        key(a).cmp(&key(b))
    });
    v
}

fn name_of(gs: &GostService) -> String {
    gs.metadata.name.clone().unwrap_or_default()
}

/// The name of a rendered service: unique in the pod (GostService names are unique in the
/// namespace, service names within a GostService) and readable in logs and metric labels.
pub fn service_name(gost_service: &str, service: &str) -> String {
    format!("{gost_service}/{service}")
}

/// A listening socket, as far as clashes go: TCP and UDP (h3) ports do not clash.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Socket {
    udp: bool,
    host: Host,
    port: u16,
}

/// The host part of a listen address, by what it binds: the proxy binds an address, so two
/// spellings of one address (`localhost` and `127.0.0.1`, `::1` and `0:0:0:0:0:0:0:1`) are
/// one socket, and a wildcard takes the port on every address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
    /// Empty, `0.0.0.0` or `::`: every interface.
    Any,
    /// `localhost`: the loopback address the pod resolves it to (`127.0.0.1` or `::1`).
    Localhost,
    /// One address.
    Ip(IpAddr),
}

impl Host {
    fn overlaps(self, other: Host) -> bool {
        let loopback = |ip: IpAddr| ip == Ipv4Addr::LOCALHOST || ip == Ipv6Addr::LOCALHOST;
        match (self, other) {
            (Host::Any, _) | (_, Host::Any) | (Host::Localhost, Host::Localhost) => true,
            (Host::Localhost, Host::Ip(ip)) | (Host::Ip(ip), Host::Localhost) => loopback(ip),
            (Host::Ip(a), Host::Ip(b)) => a == b,
        }
    }
}

impl Socket {
    fn parse(addr: &str, udp: bool) -> Result<Socket, String> {
        let (host, port) = gost_api::split_host_port(addr)
            .ok_or_else(|| format!("addr {addr:?} is not `:port` or `host:port`"))?;
        // Digits only, as Go (GOST) and the CRD's rule read a port.
        let port: u16 = gost_api::parse_port(port)
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("addr {addr:?}: the port must be a number from 1 to 65535"))?;
        if addr.starts_with("[]") {
            return Err(format!(
                "addr {addr:?}: empty brackets; use `:{port}` for every interface"
            ));
        }
        let host = if host.is_empty() {
            Host::Any
        } else if host.eq_ignore_ascii_case("localhost") {
            Host::Localhost
        } else {
            // Any other name would be resolved by the sidecar when it binds, and a name that
            // does not resolve to an address of the pod makes the proxy refuse the whole config.
            match host.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                Ok(ip) if ip.is_unspecified() => Host::Any,
                Ok(ip) => Host::Ip(ip),
                Err(_) => {
                    return Err(format!(
                        "addr {addr:?}: the host {host:?} is not an IP address; a listener binds an address of the pod, so use `:{port}` (every interface), `127.0.0.1:{port}` or `localhost:{port}` (the pod only), or one of the pod's IP addresses"
                    ));
                }
            }
        };
        Ok(Socket { udp, host, port })
    }

    fn clashes(&self, other: &Socket) -> bool {
        self.udp == other.udp && self.port == other.port && self.host.overlaps(other.host)
    }
}

struct Renderer<'a> {
    ns: &'a Namespace<'a>,
    settings: &'a Settings,
    out: Rendered,
    /// Sockets taken so far, with the service that took each.
    sockets: Vec<(Socket, String)>,
    /// Chains rendered so far, or why they could not be, by GostChain name.
    chains: BTreeMap<String, Result<RenderedChain, (Reason, String)>>,
    /// The chains in the config so far: a chain joins it with the first service that is
    /// accepted and dials through it, never before.
    used_chains: BTreeSet<String>,
    /// What pods run now, to keep services that do not render.
    keeping: Option<Keeping<'a>>,
    /// The services kept from `previous`, with the files they must read as they were there.
    kept_files: Vec<(String, BTreeMap<String, Vec<u8>>)>,
    /// The warnings of each chain rendered so far (reason, message), by GostChain name: each
    /// service that dials through the chain carries them.
    chain_warnings: BTreeMap<String, Vec<(Reason, String)>>,
}

/// A GostChain rendered, with the files its TLS settings read.
#[derive(Clone)]
struct RenderedChain {
    config: ChainConfig,
    files: BTreeMap<String, Vec<u8>>,
}

impl<'a> Renderer<'a> {
    fn new(ns: &'a Namespace<'a>, settings: &'a Settings, keeping: Option<Keeping<'a>>) -> Self {
        let admin = Socket {
            udp: false,
            host: Host::Any,
            port: settings.admin_port,
        };
        Renderer {
            ns,
            settings,
            out: Rendered::default(),
            sockets: vec![(admin, "the proxy's admin endpoint".to_string())],
            chains: BTreeMap::new(),
            used_chains: BTreeSet::new(),
            keeping,
            kept_files: Vec::new(),
            chain_warnings: BTreeMap::new(),
        }
    }

    fn problem(
        &mut self,
        gs: &GostService,
        service: Option<&str>,
        chain: Option<&str>,
        reason: Reason,
        message: String,
    ) {
        self.out.problems.push(Problem {
            gost_service: name_of(gs),
            service: service.map(str::to_string),
            gost_chain: chain.map(str::to_string),
            reason,
            message,
        });
    }

    fn add(&mut self, gs: &GostService) {
        let gs_name = name_of(gs);
        self.out.matched.insert(gs_name.clone());
        for svc in &gs.spec.services {
            self.add_service(gs, svc);
        }
    }

    /// Service `svc` of `gs` rendered, else its problem and, if pods run it, kept.
    fn add_service(&mut self, gs: &GostService, svc: &ServiceSpec) {
        match self.service(gs, svc) {
            Ok(config) => {
                self.out.config.services.push(config);
                self.out.gost_services.insert(name_of(gs));
            }
            Err((reason, chain, message)) => {
                self.problem(gs, Some(&svc.name), chain.as_deref(), reason, message);
                self.keep(gs, svc);
            }
        }
    }

    /// Keeps service `svc` of `gs` as the previous config has it, when it has it and it still
    /// fits:
    /// - who may connect is what the spec says now: the service's server `auth` renders now and
    ///   is taken as it renders now, and the CAs its TLS checks client certificates against
    ///   render now and equal what the pods run (a change to access, a Secret deleted or
    ///   emptied included, is never held back);
    /// - its port is free (GostServices are taken oldest first, so an older one that claims
    ///   the port now takes it);
    /// - its chain renders now (and is used as it renders now) or is in the previous config;
    /// - every file it reads is in the previous config, and no rendered service changes it
    ///   (checked in [`Renderer::finish`]);
    /// - the proxy accepts it.
    fn keep(&mut self, gs: &GostService, spec: &ServiceSpec) {
        let Some(Keeping { previous, not }) = self.keeping else {
            return;
        };
        let gs_name = name_of(gs);
        let name = service_name(&gs_name, &spec.name);
        if not.contains(&name) {
            return;
        }
        let Some(service) = previous.config.services.iter().find(|s| s.name == name) else {
            return;
        };
        let Some((handler_auth, listener_auth)) = self.access(spec, service, previous) else {
            return;
        };
        let mut service = service.clone();
        service.handler.auth = handler_auth;
        service.listener.auth = listener_auth;
        let udp = service.listener.kind == ListenerType::H3;
        let Ok(socket) = Socket::parse(&service.addr, udp) else {
            return;
        };
        if self.sockets.iter().any(|(s, _)| s.clashes(&socket)) {
            return;
        }
        let mut alone = Config {
            services: vec![service.clone()],
            ..Config::default()
        };
        // The chain: as it renders now, else as the pods have it.
        let mut current_chain = None;
        if let Some(chain) = &service.handler.chain {
            if self.chain(chain).is_ok()
                && let Some(Ok(rendered)) = self.chains.get(chain)
            {
                alone.chains.push(rendered.config.clone());
                current_chain = Some(chain.clone());
            } else if let Some(config) = previous.config.chains.iter().find(|c| c.name == *chain) {
                alone.chains.push(config.clone());
            } else {
                return;
            }
        }
        if gost_api::validate(&alone).is_err() {
            return;
        }
        // The files it reads as the pods have them: its own, and its chain's when the chain
        // is the previous one.
        if current_chain.is_some() {
            alone.chains.clear();
        }
        let mut files = BTreeMap::new();
        for path in tls_files(&alone) {
            let Some(file) = path
                .strip_prefix(MOUNT_PATH)
                .and_then(|p| p.strip_prefix('/'))
            else {
                continue;
            };
            match previous.files.get(file) {
                Some(bytes) => files.insert(file.to_string(), bytes.clone()),
                None => return,
            };
        }
        for (file, bytes) in &files {
            self.out
                .files
                .entry(file.clone())
                .or_insert_with(|| bytes.clone());
        }
        match current_chain {
            Some(chain) => self.use_chain(&chain),
            None => {
                if let Some(config) = alone.chains.pop()
                    && self.used_chains.insert(config.name.clone())
                {
                    self.out.config.chains.push(config);
                }
            }
        }
        self.sockets.push((
            socket,
            format!(
                "service {:?} of GostService {gs_name:?} (kept as last rendered)",
                spec.name
            ),
        ));
        self.out.config.services.push(service);
        self.kept_files.push((name, files));
        self.out.matched.insert(gs_name.clone());
        self.out.gost_services.insert(gs_name.clone());
        self.out.kept.insert((gs_name, spec.name.clone()));
    }

    /// Who may connect to `spec` now, for its rendering `service` in `previous`: the handler's
    /// and the listener's server credentials as they render now, when they do and when the CAs
    /// that client certificates are checked against are the same now as there.
    fn access(
        &self,
        spec: &ServiceSpec,
        service: &ServiceConfig,
        previous: &Previous,
    ) -> Option<(Option<AuthConfig>, Option<AuthConfig>)> {
        let mut secrets = Secrets::new(self.ns);
        let handler = secrets
            .auth(
                spec.handler.auth.as_ref(),
                Side::Server,
                None,
                "handler.auth",
            )
            .ok()?;
        let listener = secrets
            .auth(
                spec.listener.auth.as_ref(),
                Side::Server,
                None,
                "listener.auth",
            )
            .ok()?;
        let ca_now = |tls: Option<&TlsSpec>| match tls.and_then(|t| t.ca_secret.as_ref()) {
            None => Some(None),
            Some(r) => secrets.key(&r.name, r.key()).ok().map(Some),
        };
        let ca_then = |tls: &Option<TlsConfig>| -> Option<Option<Vec<u8>>> {
            match tls.as_ref().and_then(|t| t.ca_file.as_deref()) {
                None => Some(None),
                Some(path) => path
                    .strip_prefix(MOUNT_PATH)
                    .and_then(|p| p.strip_prefix('/'))
                    .and_then(|file| previous.files.get(file))
                    .map(|bytes| Some(bytes.clone())),
            }
        };
        let same = |now: Option<Option<Vec<u8>>>, then: Option<Option<Vec<u8>>>| {
            now.is_some() && now == then
        };
        (same(
            ca_now(spec.handler.tls.as_ref()),
            ca_then(&service.handler.tls),
        ) && same(
            ca_now(spec.listener.tls.as_ref()),
            ca_then(&service.listener.tls),
        ))
        .then_some((handler, listener))
    }

    /// One service, or why it is left out (with the GostChain at fault, if one is).
    fn service(
        &mut self,
        gs: &GostService,
        svc: &ServiceSpec,
    ) -> Result<ServiceConfig, (Reason, Option<String>, String)> {
        let gs_name = name_of(gs);
        let here = format!("spec.services[{}]", svc.name);
        if !served_listener(svc.listener.kind) || !served_handler(svc.handler.kind) {
            return Err((
                Reason::UnsupportedType,
                None,
                format!(
                    "{here}: gost-rs does not run the HTTP/3 reverse proxy (`http3`); for PHT over HTTP/3 use listener type `h3`"
                ),
            ));
        }
        let udp = svc.listener.kind == ListenerType::H3;
        let socket = Socket::parse(&svc.addr, udp)
            .map_err(|m| (Reason::InvalidAddress, None, format!("{here}.addr: {m}")))?;
        if let Some((_, owner)) = self.sockets.iter().find(|(s, _)| s.clashes(&socket)) {
            return Err((
                Reason::PortConflict,
                None,
                format!(
                    "{here}.addr {:?}: port {} is already taken by {owner} in the same pod; pick another port",
                    svc.addr, socket.port
                ),
            ));
        }
        let chain = match &svc.handler.chain {
            None => None,
            Some(chain) => Some(self.chain(chain).map_err(|(reason, message)| {
                (
                    reason,
                    Some(chain.clone()),
                    format!("{here}.handler.chain {chain:?}: {message}"),
                )
            })?),
        };
        let mut secrets = Secrets::new(self.ns);
        let at = |field: &'static str| {
            let here = &here;
            move |(r, m): (Reason, String)| (r, None, format!("{here}.{field}: {m}"))
        };
        let handler = HandlerConfig {
            kind: svc.handler.kind,
            chain: chain.clone(),
            retries: svc.handler.retries,
            auth: secrets
                .auth(
                    svc.handler.auth.as_ref(),
                    Side::Server,
                    handler_basic(svc.handler.kind),
                    "handler.auth",
                )
                .map_err(at("handler.auth"))?,
            tls: secrets
                .tls(svc.handler.tls.as_ref(), Side::Server)
                .map_err(at("handler.tls"))?,
            metadata: svc.handler.metadata.0.clone(),
            ..HandlerConfig::default()
        };
        let listener = ListenerConfig {
            kind: svc.listener.kind,
            auth: secrets
                .auth(
                    svc.listener.auth.as_ref(),
                    Side::Server,
                    None,
                    "listener.auth",
                )
                .map_err(at("listener.auth"))?,
            tls: secrets
                .tls(svc.listener.tls.as_ref(), Side::Server)
                .map_err(at("listener.tls"))?,
            metadata: svc.listener.metadata.0.clone(),
            ..ListenerConfig::default()
        };
        let service = ServiceConfig {
            name: service_name(&gs_name, &svc.name),
            addr: svc.addr.clone(),
            handler,
            listener,
            forwarder: svc.forwarder.as_ref().map(|f| ForwarderConfig {
                nodes: f
                    .nodes
                    .iter()
                    .map(|n| ForwardNodeConfig {
                        name: n.name.clone(),
                        addr: n.addr.clone(),
                    })
                    .collect(),
            }),
            metadata: svc.metadata.0.clone(),
        };
        // The proxy must accept what we render: check the service with its chain as the proxy's
        // loader would, so that a bad address or duration is reported on this resource instead
        // of making the whole sidecar refuse its config.
        let mut alone = Config {
            services: vec![service.clone()],
            ..Config::default()
        };
        if let Some(chain) = &chain
            && let Some(Ok(rendered)) = self.chains.get(chain)
        {
            alone.chains.push(rendered.config.clone());
        }
        gost_api::validate(&alone).map_err(|e| {
            (
                Reason::InvalidService,
                None,
                format!("{here}: the proxy would refuse it: {e}"),
            )
        })?;
        self.out.files.append(&mut secrets.files);
        self.sockets.push((
            socket,
            format!("service {:?} of GostService {gs_name:?}", svc.name),
        ));
        let chain_warnings =
            chain
                .iter()
                .flat_map(|name| {
                    self.chain_warnings.get(name).into_iter().flatten().map(
                        move |(reason, message)| {
                            let message = format!("handler.chain {name:?}: {message}");
                            (*reason, Some(name.clone()), message)
                        },
                    )
                })
                .collect::<Vec<_>>();
        let own = secrets.warnings.into_iter().map(|(r, m)| (r, None, m));
        for (reason, gost_chain, message) in own.chain(chain_warnings) {
            self.out.warnings.push(Problem {
                gost_service: gs_name.clone(),
                service: Some(svc.name.clone()),
                gost_chain,
                reason,
                message: format!("{here}.{message}"),
            });
        }
        if let Some(chain) = chain {
            self.use_chain(&chain);
        }
        Ok(service)
    }

    /// The GostChain `name` rendered (once), or why it cannot be. It joins the config only
    /// with a service that uses it ([`Renderer::use_chain`]).
    fn chain(&mut self, name: &str) -> Result<String, (Reason, String)> {
        if !self.chains.contains_key(name) {
            // Checked on its own, as the proxy would load it: a chain it would refuse is one
            // that does not render (and a kept service then dials through its previous one).
            let result = self.render_chain(name).and_then(|chain| {
                let alone = Config {
                    chains: vec![chain.config.clone()],
                    ..Config::default()
                };
                match gost_api::validate(&alone) {
                    Ok(()) => Ok(chain),
                    Err(e) => Err((
                        Reason::InvalidChain,
                        format!("GostChain {name:?}: the proxy would refuse it: {e}"),
                    )),
                }
            });
            self.chains.insert(name.to_string(), result);
        }
        match &self.chains[name] {
            Ok(_) => Ok(name.to_string()),
            Err(e) => Err(e.clone()),
        }
    }

    /// Puts the rendered chain `name` and its files into the config, once.
    fn use_chain(&mut self, name: &str) {
        if let Some(Ok(rendered)) = self.chains.get(name)
            && self.used_chains.insert(name.to_string())
        {
            self.out.config.chains.push(rendered.config.clone());
            self.out.files.extend(rendered.files.clone());
        }
    }

    fn render_chain(&mut self, name: &str) -> Result<RenderedChain, (Reason, String)> {
        let Some(gc) = self
            .ns
            .chains
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
        else {
            let mut known: Vec<&str> = self
                .ns
                .chains
                .iter()
                .filter_map(|c| c.metadata.name.as_deref())
                .collect();
            known.sort_unstable();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            return Err((
                Reason::ChainNotFound,
                format!(
                    "no GostChain named {name:?} in this namespace (GostChains here: {known}); create it or fix the name"
                ),
            ));
        };
        let mut secrets = Secrets::new(self.ns);
        let mut hops = Vec::with_capacity(gc.spec.hops.len());
        let mut warnings = Vec::new();
        for hop in &gc.spec.hops {
            let mut nodes = Vec::with_capacity(hop.nodes.len());
            for node in &hop.nodes {
                let at = format!("GostChain {name:?} hop {:?} node {:?}", hop.name, node.name);
                nodes.push(
                    node_config(&mut secrets, node)
                        .map_err(|(reason, message)| (reason, format!("{at}: {message}")))?,
                );
                warnings.extend(
                    secrets
                        .warnings
                        .drain(..)
                        .map(|(reason, message)| (reason, format!("{at}: {message}"))),
                );
            }
            hops.push(HopConfig {
                name: hop.name.clone(),
                selector: hop.selector.as_ref().map(Into::into),
                nodes,
                metadata: hop.metadata.0.clone(),
                ..HopConfig::default()
            });
        }
        self.chain_warnings.insert(name.to_string(), warnings);
        Ok(RenderedChain {
            config: ChainConfig {
                name: name.to_string(),
                hops,
                metadata: gc.spec.metadata.0.clone(),
            },
            files: secrets.files,
        })
    }

    /// The rendered config, and the kept services taken out of it.
    fn finish(mut self) -> (Rendered, BTreeSet<String>) {
        // A kept service whose files a rendered service has since changed (one key of a
        // Secret they share) would read a mix: it goes (and the render is done again without
        // it, see `guarded`).
        let mut dropped = BTreeSet::new();
        for (name, files) in &self.kept_files {
            if files
                .iter()
                .any(|(f, bytes)| self.out.files.get(f) != Some(bytes))
            {
                self.out.config.services.retain(|s| s.name != *name);
                self.out
                    .kept
                    .retain(|(gs, svc)| service_name(gs, svc) != *name);
                dropped.insert(name.clone());
            }
        }
        // What no service uses any more (after that) is left out: chains, then files.
        let used: BTreeSet<&str> = self
            .out
            .config
            .services
            .iter()
            .filter_map(|s| s.handler.chain.as_deref())
            .collect();
        self.out
            .config
            .chains
            .retain(|c| used.contains(c.name.as_str()));
        let read: BTreeSet<String> = tls_files(&self.out.config)
            .into_iter()
            .filter_map(|p| p.strip_prefix(MOUNT_PATH)?.strip_prefix('/'))
            .map(str::to_string)
            .collect();
        self.out.files.retain(|f, _| read.contains(f));
        self.out.config.metrics = Some(MetricsConfig {
            addr: format!(":{}", self.settings.admin_port),
            ..MetricsConfig::default()
        });
        (self.out, dropped)
    }
}

/// The paths of every TLS file that `config`'s services and chains read.
fn tls_files(config: &Config) -> Vec<&str> {
    let services = config
        .services
        .iter()
        .flat_map(|s| [&s.handler.tls, &s.listener.tls]);
    let nodes = config
        .chains
        .iter()
        .flat_map(|c| &c.hops)
        .flat_map(|h| &h.nodes)
        .flat_map(|n| [&n.connector.tls, &n.dialer.tls]);
    services
        .chain(nodes)
        .flatten()
        .flat_map(|t| [&t.cert_file, &t.key_file, &t.ca_file])
        .flatten()
        .map(String::as_str)
        .collect()
}

fn node_config(secrets: &mut Secrets<'_>, node: &NodeSpec) -> Result<NodeConfig, (Reason, String)> {
    let prefix = |what: &'static str| move |(r, m): (Reason, String)| (r, format!("{what}: {m}"));
    // The CRD's schema lists only these, but a GostChain stored before it did may name another;
    // the proxy would refuse the whole config for it.
    let unserved = |what: &str, name: &str, served: Vec<&str>| {
        Err((
            Reason::UnsupportedType,
            format!(
                "{what}.type: gost-rs has no `{name}` client; use one of `{}`",
                served.join("`, `")
            ),
        ))
    };
    if !served_connector(node.connector.kind) {
        let served = ConnectorType::NAMES
            .iter()
            .copied()
            .filter(|n| ConnectorType::from_name(n).is_some_and(served_connector));
        return unserved("connector", node.connector.kind.as_str(), served.collect());
    }
    if !served_dialer(node.dialer.kind) {
        let served = DialerType::NAMES
            .iter()
            .copied()
            .filter(|n| DialerType::from_name(n).is_some_and(served_dialer));
        return unserved("dialer", node.dialer.kind.as_str(), served.collect());
    }
    Ok(NodeConfig {
        name: node.name.clone(),
        addr: node.addr.clone(),
        connector: ConnectorConfig {
            kind: node.connector.kind,
            auth: secrets
                .auth(
                    node.connector.auth.as_ref(),
                    Side::Client,
                    connector_basic(node.connector.kind),
                    "connector.auth",
                )
                .map_err(prefix("connector.auth"))?,
            tls: secrets
                .tls(node.connector.tls.as_ref(), Side::Client)
                .map_err(prefix("connector.tls"))?,
            metadata: node.connector.metadata.0.clone(),
        },
        dialer: DialerConfig {
            kind: node.dialer.kind,
            auth: secrets
                .auth(node.dialer.auth.as_ref(), Side::Client, None, "dialer.auth")
                .map_err(prefix("dialer.auth"))?,
            tls: match secrets
                .tls(node.dialer.tls.as_ref(), Side::Client)
                .map_err(prefix("dialer.tls"))?
            {
                Some(tls) => Some(tls),
                None if dialer_uses_tls(node.dialer.kind) => Some(TlsConfig {
                    secure: true,
                    ..TlsConfig::default()
                }),
                None => None,
            },
            metadata: node.dialer.metadata.0.clone(),
        },
        metadata: node.metadata.0.clone(),
    })
}

/// The dialers that speak TLS to their node. In the CRDs these verify their server by default
/// (GOST's command line does not), so one without `tls` renders `secure: true`.
fn dialer_uses_tls(kind: DialerType) -> bool {
    matches!(
        kind,
        DialerType::Tls
            | DialerType::Wss
            | DialerType::Http2
            | DialerType::H2
            | DialerType::Grpc
            | DialerType::Phts
            | DialerType::H3
            | DialerType::Http3
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// How a handler of type `kind` takes HTTP Basic credentials, if it does (for the
/// [`Reason::ColonInUserName`] warning).
fn handler_basic(kind: HandlerType) -> Option<String> {
    matches!(
        kind,
        HandlerType::Http | HandlerType::Http2 | HandlerType::Auto
    )
    .then(|| format!("handler type {:?}", kind.as_str()))
}

/// How a connector of type `kind` sends HTTP Basic credentials, if it does.
fn connector_basic(kind: ConnectorType) -> Option<String> {
    matches!(kind, ConnectorType::Http | ConnectorType::Http2)
        .then(|| format!("connector type {:?}", kind.as_str()))
}

/// Reads referenced Secrets and collects the files that TLS settings point at; the files join
/// the output only when the whole service or chain rendered, so a half-rendered one leaves none.
struct Secrets<'a> {
    ns: &'a Namespace<'a>,
    files: BTreeMap<String, Vec<u8>>,
    /// Warnings about what was read (reason, message starting with the field), for the caller
    /// to take along when the whole service or chain rendered.
    warnings: Vec<(Reason, String)>,
}

impl<'a> Secrets<'a> {
    fn new(ns: &'a Namespace<'a>) -> Self {
        Secrets {
            ns,
            files: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    fn key(&self, secret: &str, key: &str) -> Result<Vec<u8>, (Reason, String)> {
        let Some(s) = self.ns.secrets.get(secret) else {
            return Err((
                Reason::SecretNotFound,
                format!("Secret {secret:?} does not exist in this namespace; create it"),
            ));
        };
        if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
            return Ok(v.0.clone());
        }
        if let Some(v) = s.string_data.as_ref().and_then(|d| d.get(key)) {
            return Ok(v.clone().into_bytes());
        }
        let mut keys: Vec<&str> = s
            .data
            .iter()
            .flat_map(|d| d.keys())
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        Err((
            Reason::SecretKeyMissing,
            format!(
                "Secret {secret:?} has no key {key:?} (it has: {}); add it or set the key name in the reference",
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            ),
        ))
    }

    fn text(&self, secret: &str, key: &str) -> Result<String, (Reason, String)> {
        String::from_utf8(self.key(secret, key)?).map_err(|_| {
            (
                Reason::SecretKeyMissing,
                format!("Secret {secret:?} key {key:?} is not UTF-8 text"),
            )
        })
    }

    /// The credentials `auth` refers to. A server (handler, listener) refuses an empty user
    /// name or password: as in GOST, the proxy lets a user whose password is empty in with any
    /// password, so an empty key (a Secret made from an unset variable) would open the service.
    ///
    /// Credentials that render but cannot log in are warned about (at `field`), not changed:
    /// a final newline, and a `:` in a user name that HTTP Basic carries (`basic` says how,
    /// e.g. `handler type "http"`).
    fn auth(
        &mut self,
        auth: Option<&AuthSpec>,
        side: Side,
        basic: Option<String>,
        field: &str,
    ) -> Result<Option<AuthConfig>, (Reason, String)> {
        let Some(auth) = auth else { return Ok(None) };
        let name = &auth.secret_ref.name;
        let username = self.text(name, auth.username_key())?;
        let password = self.text(name, auth.password_key())?;
        if side == Side::Server {
            let empty = |key: &str, what: String| {
                Err((
                    Reason::SecretKeyMissing,
                    format!("Secret {name:?} key {key:?} is empty: {what}; put it in the Secret"),
                ))
            };
            if username.is_empty() {
                return empty(
                    auth.username_key(),
                    "clients need a user name to log in with".to_string(),
                );
            }
            if password.is_empty() {
                return empty(
                    auth.password_key(),
                    format!("the proxy would let user {username:?} in with any password"),
                );
            }
        }
        let recreate = self.recreate_hint(name, auth);
        for (key, value) in [
            (auth.username_key(), &username),
            (auth.password_key(), &password),
        ] {
            let Some(newline) = ["\r\n", "\n"].into_iter().find(|n| value.ends_with(n)) else {
                continue;
            };
            let effect = match side {
                Side::Server => {
                    "the proxy takes it as part of the credential, so clients that send it without the newline are refused"
                }
                Side::Client => {
                    "the proxy sends it as part of the credential, so the server most likely refuses it"
                }
            };
            self.warnings.push((
                Reason::TrailingNewline,
                format!(
                    "{field}: Secret {name:?} key {key:?} ends with a newline ({newline:?}): {effect}. `kubectl create secret generic --from-file` stores a file's final newline; store the value without it: {recreate}, or write the file with `printf %s`. If the newline is meant, ignore this warning"
                ),
            ));
        }
        if let Some(basic) = basic
            && username.contains(':')
        {
            let effect = match side {
                Side::Server => "so this user can never log in over HTTP",
                Side::Client => "so the server reads another user name and password",
            };
            self.warnings.push((
                Reason::ColonInUserName,
                format!(
                    "{field}: Secret {name:?} key {:?}: the user name contains ':', and HTTP Basic authentication ({basic}) ends the user name at the first ':', {effect}; choose a user name without ':' (in the Secret{})",
                    auth.username_key(),
                    match side {
                        Side::Server => " and in the clients' settings",
                        Side::Client => " and on the server",
                    }
                ),
            ));
        }
        Ok(Some(AuthConfig {
            username,
            password,
            file: None,
        }))
    }

    /// The command that writes Secret `name` anew with `auth`'s keys given literally, keeping
    /// its type (which cannot change).
    fn recreate_hint(&self, name: &str, auth: &AuthSpec) -> String {
        let kind = self
            .ns
            .secrets
            .get(name)
            .and_then(|s| s.type_.as_deref())
            .filter(|t| *t != "Opaque")
            .map(|t| format!(" --type={t}"))
            .unwrap_or_default();
        format!(
            "`kubectl create secret generic {name}{kind} --from-literal={}=... --from-literal={}=... --dry-run=client -o yaml | kubectl apply -f -`",
            auth.username_key(),
            auth.password_key()
        )
    }

    /// Puts `bytes` (the Secret's key `key`) into the files and returns the path the proxy
    /// reads it from. The file name is derived from the Secret and key ([`tls_file_name`]), so
    /// two references to one key share one file and different keys never do.
    fn file(&mut self, secret: &str, key: &str, bytes: Vec<u8>) -> String {
        let file = tls_file_name(secret, key);
        self.files.insert(file.clone(), bytes);
        format!("{MOUNT_PATH}/{file}")
    }

    fn tls(
        &mut self,
        tls: Option<&TlsSpec>,
        side: Side,
    ) -> Result<Option<TlsConfig>, (Reason, String)> {
        let Some(tls) = tls else { return Ok(None) };
        let (cert_file, key_file) = match &tls.certificate_secret {
            Some(s) => {
                let cert = self.key(&s.name, TLS_CERT_KEY)?;
                let key = self.key(&s.name, TLS_KEY_KEY)?;
                check_key_pair(&s.name, &cert, &key)?;
                (
                    Some(self.file(&s.name, TLS_CERT_KEY, cert)),
                    Some(self.file(&s.name, TLS_KEY_KEY, key)),
                )
            }
            None => (None, None),
        };
        let ca_file = match &tls.ca_secret {
            Some(reference) => {
                let (name, key) = (reference.name.as_str(), reference.key());
                let ca = self.key(name, key)?;
                check_ca(name, key, &ca)?;
                Some(self.file(name, key, ca))
            }
            None => None,
        };
        Ok(Some(TlsConfig {
            cert_file,
            key_file,
            ca_file,
            secure: side == Side::Client && !tls.insecure_skip_verify,
            server_name: tls.server_name.clone(),
            ..TlsConfig::default()
        }))
    }
}

/// The file (config Secret key) holding Secret `secret`'s key `key`: `{secret}_{key}`.
///
/// Secret names cannot contain `_` (they are DNS subdomains) and Secret keys can, so the first
/// `_` splits the name back into the pair: two different pairs never share a file, and no file
/// is [`CONFIG_KEY`]. Both parts are valid Secret keys (`[-._a-zA-Z0-9]+`), and so is the
/// result. Past the 253 characters a Secret key may have, it is `_` and a hash of the pair:
/// no `{secret}_{key}` starts with `_`.
fn tls_file_name(secret: &str, key: &str) -> String {
    let file = format!("{secret}_{key}");
    if file.len() <= MAX_SECRET_KEY_LEN {
        return file;
    }
    format!(
        "_{}",
        crate::group::short_hash(format!("{secret}/{key}").as_bytes())
    )
}

/// Secret data keys are at most 253 characters.
const MAX_SECRET_KEY_LEN: usize = 253;

/// The certificate key of a `certificateSecret` (a `kubernetes.io/tls` Secret).
const TLS_CERT_KEY: &str = "tls.crt";
/// The private key's key of a `certificateSecret`.
const TLS_KEY_KEY: &str = "tls.key";

/// What `kubectl` makes a `certificateSecret` with: the hint at the end of its problems.
fn tls_secret_hint(secret: &str) -> String {
    format!("`kubectl create secret tls {secret} --cert=<chain.pem> --key=<key.pem>` makes one")
}

/// The PEM certificates in `pem`, as the proxy reads a certificate or CA file.
fn pem_certificates(
    secret: &str,
    key: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, (Reason, String)> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            (
                Reason::InvalidCertificate,
                format!("Secret {secret:?} key {key:?} is not PEM certificates ({e})"),
            )
        })?;
    if certs.is_empty() {
        return Err((
            Reason::InvalidCertificate,
            format!(
                "Secret {secret:?} key {key:?} holds no PEM certificate (no `-----BEGIN CERTIFICATE-----` block)"
            ),
        ));
    }
    Ok(certs)
}

/// Checks a `certificateSecret` as the proxy loads it: `tls.crt` is a PEM chain, `tls.key` a
/// PEM private key, and the key belongs to the chain's first certificate. A pair the proxy
/// cannot load would make it refuse the whole config, every other tunnel of the pod with it.
fn check_key_pair(secret: &str, cert: &[u8], key: &[u8]) -> Result<(), (Reason, String)> {
    let hint = tls_secret_hint(secret);
    let chain = pem_certificates(secret, TLS_CERT_KEY, cert).map_err(|(r, m)| {
        (
            r,
            format!("{m}; put the certificate chain in it, leaf first ({hint})"),
        )
    })?;
    let private_key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        (
            Reason::InvalidCertificate,
            format!(
                "Secret {secret:?} key {TLS_KEY_KEY:?} is not a PEM private key ({e}); put the certificate's private key in it, PKCS#8, PKCS#1 or SEC1 ({hint})"
            ),
        )
    })?;
    CertifiedKey::from_der(chain, private_key, &rustls::crypto::ring::default_provider())
        .map(drop)
        .map_err(|e| {
            let message = match e {
                rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => format!(
                    "Secret {secret:?}: {TLS_KEY_KEY} does not match the certificate in {TLS_CERT_KEY}; put that certificate's own key in it"
                ),
                e => format!(
                    "Secret {secret:?}: {TLS_CERT_KEY} and {TLS_KEY_KEY} do not make a usable certificate ({e}); {hint}"
                ),
            };
            (Reason::InvalidCertificate, message)
        })
}

/// Checks a `caSecret` key as the proxy loads it: PEM certificates, each one usable as a trust
/// anchor.
fn check_ca(secret: &str, key: &str, pem: &[u8]) -> Result<(), (Reason, String)> {
    let hint = "put the PEM certificate(s) of the CA in it";
    let certs = pem_certificates(secret, key, pem).map_err(|(r, m)| (r, format!("{m}; {hint}")))?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            (
                Reason::InvalidCertificate,
                format!("Secret {secret:?} key {key:?} holds a certificate that is not usable as a CA ({e}); {hint}"),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(yaml: &str) -> Vec<GostService> {
        serde_saphyr::from_str::<Vec<GostService>>(yaml).expect("GostService fixtures load")
    }

    fn chains(yaml: &str) -> Vec<GostChain> {
        serde_saphyr::from_str::<Vec<GostChain>>(yaml).expect("GostChain fixtures load")
    }

    fn secret(name: &str, pairs: &[(&str, &str)]) -> (String, Secret) {
        let mut s = Secret::default();
        s.metadata.name = Some(name.to_string());
        s.data = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        (name.to_string(), s)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The rendered config as the proxy will read it: through YAML and gost-api's loader.
    fn reloaded(r: &Rendered) -> Config {
        let text = String::from_utf8(r.secret_data()[CONFIG_KEY].0.clone()).unwrap();
        gost_api::from_str(&text, gost_api::Format::Yaml)
            .unwrap_or_else(|e| panic!("the proxy refuses the rendered config: {e}\n{text}"))
    }

    const WEB_AND_ADMIN: &str = r#"
- apiVersion: gost.rs/v1alpha1
  kind: GostService
  metadata: {name: web, creationTimestamp: "2026-01-01T00:00:00Z"}
  spec:
    selector: {matchLabels: {app: web}}
    services:
    - name: proxy
      addr: ":8000"
      handler: {type: http, chain: to-gateway, auth: {secretRef: {name: users}}}
    - name: socks
      addr: ":1080"
      handler: {type: socks5}
- apiVersion: gost.rs/v1alpha1
  kind: GostService
  metadata: {name: everyone, creationTimestamp: "2026-01-02T00:00:00Z"}
  spec:
    selector:
      matchExpressions:
      - {key: tier, operator: In, values: [frontend, backend]}
      - {key: legacy, operator: DoesNotExist}
    services:
    - name: relay
      addr: ":8443"
      handler: {type: relay}
      listener: {type: tls, tls: {certificateSecret: {name: gw-cert}}}
"#;

    const TO_GATEWAY: &str = r#"
- apiVersion: gost.rs/v1alpha1
  kind: GostChain
  metadata: {name: to-gateway}
  spec:
    hops:
    - name: hop-0
      nodes:
      - name: gw
        addr: gateway.tunnels.svc:8443
        connector: {type: relay, auth: {secretRef: {name: relay-creds}, usernameKey: user}}
        dialer:
          type: grpc
          tls: {caSecret: {name: gw-cert}, serverName: gateway.tunnels.svc}
"#;

    /// A self-signed certificate and its key, PEM: what `kubectl create secret tls` stores.
    struct Pem {
        cert: String,
        key: String,
    }

    /// Two different pairs, generated once for all tests (key generation is the slow part).
    fn pems() -> &'static [Pem; 2] {
        static PEMS: std::sync::OnceLock<[Pem; 2]> = std::sync::OnceLock::new();
        PEMS.get_or_init(|| {
            let one = || {
                let c = rcgen::generate_simple_self_signed(vec!["gateway.tunnels.svc".into()])
                    .expect("rcgen makes a certificate");
                Pem {
                    cert: c.cert.pem(),
                    key: c.signing_key.serialize_pem(),
                }
            };
            [one(), one()]
        })
    }

    fn all_secrets() -> BTreeMap<String, Secret> {
        let pem = &pems()[0];
        [
            secret("users", &[("username", "alice"), ("password", "s3cret")]),
            secret("relay-creds", &[("user", "bob"), ("password", "p@ss")]),
            secret(
                "gw-cert",
                &[
                    ("tls.crt", &pem.cert),
                    ("tls.key", &pem.key),
                    ("ca.crt", &pem.cert),
                ],
            ),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let sel: LabelSelector = serde_json::from_str(
            r#"{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"env","operator":"NotIn","values":["dev"]},{"key":"team","operator":"Exists"}]}"#,
        )
        .unwrap();
        assert!(selects(&sel, &labels(&[("app", "web"), ("team", "a")])).unwrap());
        assert!(
            selects(
                &sel,
                &labels(&[("app", "web"), ("team", "a"), ("env", "prod")])
            )
            .unwrap()
        );
        assert!(
            !selects(
                &sel,
                &labels(&[("app", "web"), ("team", "a"), ("env", "dev")])
            )
            .unwrap()
        );
        assert!(!selects(&sel, &labels(&[("app", "web")])).unwrap());
        assert!(!selects(&sel, &labels(&[("app", "api"), ("team", "a")])).unwrap());
        assert!(selects(&LabelSelector::default(), &labels(&[])).unwrap());
        let bad: LabelSelector = serde_json::from_str(
            r#"{"matchExpressions":[{"key":"x","operator":"Like","values":["y"]}]}"#,
        )
        .unwrap();
        let err = selects(&bad, &labels(&[])).unwrap_err();
        assert!(err.contains("Like") && err.contains("In, NotIn"), "{err}");
        let empty_in: LabelSelector =
            serde_json::from_str(r#"{"matchExpressions":[{"key":"x","operator":"In"}]}"#).unwrap();
        assert!(selects(&empty_in, &labels(&[])).is_err());
    }

    #[test]
    fn several_services_and_a_chain_render_into_one_loadable_config() {
        let svcs = services(WEB_AND_ADMIN);
        let chs = chains(TO_GATEWAY);
        let secrets = all_secrets();
        let ns = Namespace {
            services: &svcs,
            chains: &chs,
            secrets: &secrets,
        };
        let r = render_for_pod(
            &ns,
            &labels(&[("app", "web"), ("tier", "frontend")]),
            &Settings::default(),
            None,
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let config = reloaded(&r);
        let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web/proxy", "web/socks", "everyone/relay"]);
        let proxy = &config.services[0];
        assert_eq!(proxy.handler.kind, HandlerType::Http);
        assert_eq!(proxy.handler.chain.as_deref(), Some("to-gateway"));
        let auth = proxy.handler.auth.as_ref().unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("alice", "s3cret")
        );

        assert_eq!(config.chains.len(), 1);
        let node = &config.chains[0].hops[0].nodes[0];
        assert_eq!(node.connector.kind, ConnectorType::Relay);
        assert_eq!(node.connector.auth.as_ref().unwrap().username, "bob");
        let tls = node.dialer.tls.as_ref().unwrap();
        assert!(tls.secure, "CRD clients verify by default");
        assert_eq!(tls.ca_file.as_deref(), Some("/etc/gost/gw-cert_ca.crt"));
        assert_eq!(tls.server_name.as_deref(), Some("gateway.tunnels.svc"));

        let relay_tls = config.services[2].listener.tls.as_ref().unwrap();
        assert_eq!(
            relay_tls.cert_file.as_deref(),
            Some("/etc/gost/gw-cert_tls.crt")
        );
        assert!(!relay_tls.secure);
        let data = r.secret_data();
        let pem = &pems()[0];
        assert_eq!(data["gw-cert_tls.crt"].0, pem.cert.as_bytes());
        assert_eq!(data["gw-cert_tls.key"].0, pem.key.as_bytes());
        assert_eq!(data["gw-cert_ca.crt"].0, pem.cert.as_bytes());
        assert_eq!(
            config.metrics.as_ref().unwrap().addr,
            format!(":{DEFAULT_ADMIN_PORT}")
        );
        assert_eq!(
            r.gost_services.iter().collect::<Vec<_>>(),
            ["everyone", "web"]
        );
        let chains: Vec<&str> = r.config.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(chains, ["to-gateway"]);
    }

    #[test]
    fn pods_get_only_what_selects_them() {
        let svcs = services(WEB_AND_ADMIN);
        let chs = chains(TO_GATEWAY);
        let secrets = all_secrets();
        let ns = Namespace {
            services: &svcs,
            chains: &chs,
            secrets: &secrets,
        };
        let s = Settings::default();
        let legacy = render_for_pod(
            &ns,
            &labels(&[("tier", "backend"), ("legacy", "1")]),
            &s,
            None,
        );
        assert!(legacy.config.services.is_empty() && legacy.matched.is_empty());
        let backend = render_for_pod(&ns, &labels(&[("tier", "backend")]), &s, None);
        assert_eq!(backend.config.services.len(), 1);
        assert!(
            backend.config.chains.is_empty(),
            "only used chains are rendered"
        );
        assert!(backend.files.keys().all(|k| k.starts_with("gw-cert_tls.")));
    }

    #[test]
    fn a_missing_chain_leaves_out_its_service_only() {
        let svcs = services(WEB_AND_ADMIN);
        let secrets = all_secrets();
        let ns = Namespace {
            services: &svcs,
            chains: &[],
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &labels(&[("app", "web")]), &Settings::default(), None);
        let names: Vec<&str> = r.config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web/socks"]);
        assert_eq!(r.problems.len(), 1);
        let p = &r.problems[0];
        assert_eq!(p.reason, Reason::ChainNotFound);
        assert_eq!(p.reason.as_str(), "ChainNotFound");
        assert_eq!(
            (p.gost_service.as_str(), p.service.as_deref()),
            ("web", Some("proxy"))
        );
        assert_eq!(p.gost_chain.as_deref(), Some("to-gateway"));
        assert!(
            p.message.contains("no GostChain named \"to-gateway\""),
            "{}",
            p.message
        );
        reloaded(&r);
    }

    /// The names of the rendered services.
    fn names(r: &Rendered) -> Vec<&str> {
        r.config.services.iter().map(|s| s.name.as_str()).collect()
    }

    fn kept(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        pairs
            .iter()
            .map(|(g, s)| (g.to_string(), s.to_string()))
            .collect()
    }

    #[test]
    fn a_service_that_no_longer_renders_is_kept_as_last_rendered() {
        let svcs = services(WEB_AND_ADMIN);
        let chs = chains(TO_GATEWAY);
        let secrets = all_secrets();
        let web = labels(&[("app", "web")]);
        let settings = Settings::default();
        let ns = Namespace {
            services: &svcs,
            chains: &chs,
            secrets: &secrets,
        };
        let first = render_for_pod(&ns, &web, &settings, None);
        assert!(first.problems.is_empty(), "{:?}", first.problems);
        assert!(
            !first.files.is_empty(),
            "the chain reads the CA from a file"
        );
        let previous = Previous::from_secret_data(&first.secret_data()).unwrap();
        assert_eq!(
            render_for_pod(&ns, &web, &settings, Some(&previous)),
            first,
            "nothing failing: nothing kept"
        );

        // The chain is deleted: web/proxy keeps it, its CA file and its port, exactly as the
        // pods run it now, so the sidecar sees no change at all.
        let gone = Namespace { chains: &[], ..ns };
        let r = render_for_pod(&gone, &web, &settings, Some(&previous));
        assert_eq!(r.secret_data(), first.secret_data());
        assert_eq!(r.kept, kept(&[("web", "proxy")]));
        assert_eq!(r.problems.len(), 1, "still reported: {:?}", r.problems);
        assert_eq!(r.problems[0].reason, Reason::ChainNotFound);
        assert_eq!(r.listen_ports(), first.listen_ports());
        reloaded(&r);
        // Without a previous config (a new workload), it is left out as before.
        let fresh = render_for_pod(&gone, &web, &settings, None);
        assert_eq!(names(&fresh), ["web/socks"]);
        assert!(fresh.kept.is_empty());

        // The chain is renamed to one that does not exist while the chain's credentials and
        // the service's password change: the service keeps the chain it had, which dials as
        // it renders now, and takes the password as it is now.
        let mut edited = secrets.clone();
        for (name, pairs) in [
            ("users", [("username", "alice"), ("password", "n3w-pass")]),
            ("relay-creds", [("user", "carol"), ("password", "n3w")]),
        ] {
            edited.insert(name.into(), secret(name, &pairs).1);
        }
        let mut renamed = svcs.clone();
        renamed[0].spec.services[0].handler.chain = Some("to-gatway".into());
        let r = render_for_pod(
            &Namespace {
                services: &renamed,
                secrets: &edited,
                ..ns
            },
            &web,
            &settings,
            Some(&previous),
        );
        assert_eq!(names(&r), ["web/proxy", "web/socks"]);
        assert_eq!(r.kept, kept(&[("web", "proxy")]));
        assert_eq!(r.problems[0].reason, Reason::ChainNotFound);
        let config = reloaded(&r);
        let proxy = &config.services[0];
        assert_eq!(proxy.handler.auth.as_ref().unwrap().password, "n3w-pass");
        assert_eq!(proxy.handler.chain.as_deref(), Some("to-gateway"));
        assert_eq!(config.chains.len(), 1);
        let node = &config.chains[0].hops[0].nodes[0];
        assert_eq!(node.connector.auth.as_ref().unwrap().username, "carol");

        // Removed from the GostService, no longer selecting the pod, or deleted: gone.
        let mut removed = svcs.clone();
        removed[0].spec.services.remove(0);
        let r = render_for_pod(
            &Namespace {
                services: &removed,
                ..gone
            },
            &web,
            &settings,
            Some(&previous),
        );
        assert_eq!(names(&r), ["web/socks"]);
        assert!(
            r.kept.is_empty() && r.problems.is_empty(),
            "{:?}",
            r.problems
        );
        let r = render_for_pod(
            &gone,
            &labels(&[("app", "api")]),
            &settings,
            Some(&previous),
        );
        assert!(r.config.services.is_empty() && r.kept.is_empty());
        let r = render_for_pod(
            &Namespace {
                services: &svcs[1..],
                ..gone
            },
            &web,
            &settings,
            Some(&previous),
        );
        assert!(r.config.services.is_empty() && r.kept.is_empty());
    }

    #[test]
    fn a_kept_service_needs_its_port_its_files_and_todays_access() {
        let svcs = services(WEB_AND_ADMIN);
        let chs = chains(TO_GATEWAY);
        let secrets = all_secrets();
        let web = labels(&[("app", "web")]);
        let settings = Settings::default();
        let ns = Namespace {
            services: &svcs,
            chains: &chs,
            secrets: &secrets,
        };
        let first = render_for_pod(&ns, &web, &settings, None);
        let previous = Previous::from_secret_data(&first.secret_data()).unwrap();
        let gone = Namespace { chains: &[], ..ns };

        // Another GostService claims web/proxy's port :8000: an older one takes it, a newer
        // one does not.
        let claim = |name: &str, created: &str| {
            let mut gs = svcs[1].clone();
            gs.metadata.name = Some(name.into());
            gs.metadata.creation_timestamp = Some(serde_json::from_value(created.into()).unwrap());
            gs.spec.selector = svcs[0].spec.selector.clone();
            gs.spec.services[0].addr = ":8000".into();
            gs.spec.services[0].listener = Default::default();
            gs
        };
        let mut with = svcs.clone();
        with.push(claim("zeta", "2025-12-31T00:00:00Z"));
        let r = render_for_pod(
            &Namespace {
                services: &with,
                ..gone
            },
            &web,
            &settings,
            Some(&previous),
        );
        assert_eq!(names(&r), ["zeta/relay", "web/socks"]);
        assert!(r.kept.is_empty());
        with.pop();
        with.push(claim("alpha", "2026-06-01T00:00:00Z"));
        let r = render_for_pod(
            &Namespace {
                services: &with,
                ..gone
            },
            &web,
            &settings,
            Some(&previous),
        );
        assert_eq!(names(&r), ["web/proxy", "web/socks"]);
        let conflict = r
            .problems
            .iter()
            .find(|p| p.reason == Reason::PortConflict)
            .expect("the newer claim is refused");
        assert!(
            conflict.gost_service == "alpha" && conflict.message.contains("kept as last rendered"),
            "{conflict:?}"
        );

        // A file the kept service reads is missing from the previous config: not kept.
        let mut data = first.secret_data();
        let file = first.files.keys().next().unwrap().clone();
        data.remove(&file);
        let r = render_for_pod(
            &gone,
            &web,
            &settings,
            Some(&Previous::from_secret_data(&data).unwrap()),
        );
        assert_eq!(names(&r), ["web/socks"]);
        assert!(!r.files.contains_key(&file));

        // Who may connect is never held back: the service's auth Secret deleted, its password
        // emptied, or auth asked for with a Secret that does not exist: not kept.
        let mut no_users = secrets.clone();
        no_users.remove("users");
        let mut empty = secrets.clone();
        empty.insert(
            "users".into(),
            secret("users", &[("username", "alice"), ("password", "")]).1,
        );
        for secrets in [&no_users, &empty] {
            let r = render_for_pod(
                &Namespace { secrets, ..gone },
                &web,
                &settings,
                Some(&previous),
            );
            assert!(r.kept.is_empty(), "{:?}", r.kept);
            assert_eq!(names(&r), ["web/socks"]);
        }
        let mut more_auth = svcs.clone();
        more_auth[0].spec.services[1].listener.auth = Some(
            serde_json::from_value(serde_json::json!({"secretRef": {"name": "nope"}})).unwrap(),
        );
        let r = render_for_pod(
            &Namespace {
                services: &more_auth,
                ..ns
            },
            &web,
            &settings,
            Some(&previous),
        );
        assert!(r.kept.is_empty(), "{:?}", r.kept);
        assert_eq!(names(&r), ["web/proxy"]);
        assert_eq!(r.problems[0].reason, Reason::SecretNotFound);
        // A rendering that let anyone in (an empty password, from before the operator refused
        // it) is kept with the password as it is now.
        let mut open = first.clone();
        open.config.services[0]
            .handler
            .auth
            .as_mut()
            .unwrap()
            .password = String::new();
        let previous_open = Previous::from_secret_data(&open.secret_data()).unwrap();
        let r = render_for_pod(&gone, &web, &settings, Some(&previous_open));
        assert_eq!(r.kept, kept(&[("web", "proxy")]));
        assert_eq!(
            reloaded(&r).services[0]
                .handler
                .auth
                .as_ref()
                .unwrap()
                .password,
            "s3cret"
        );

        // The selector cannot be evaluated: whether the pod is selected is unknown, so it
        // keeps what it runs, rendered as it is now where it renders (the users' new
        // password), else as it was (web/proxy, whose chain is gone).
        let mut bad = svcs.clone();
        bad[0].spec.selector = Some(
            serde_json::from_str(r#"{"matchExpressions":[{"key":"x","operator":"Like"}]}"#)
                .unwrap(),
        );
        let previous = Previous::from_secret_data(&first.secret_data()).unwrap();
        let r = render_for_pod(
            &Namespace {
                services: &bad,
                ..ns
            },
            &web,
            &settings,
            Some(&previous),
        );
        assert_eq!(r.secret_data(), first.secret_data());
        assert!(r.kept.is_empty());
        assert_eq!(r.problems[0].reason, Reason::InvalidSelector);
        assert!(r.matched.contains("web"));
        let mut renewed = secrets.clone();
        renewed.insert(
            "users".into(),
            secret("users", &[("username", "alice"), ("password", "n3w-pass")]).1,
        );
        bad[0].spec.services[1].handler.auth = svcs[0].spec.services[0].handler.auth.clone();
        let r = render_for_pod(
            &Namespace {
                services: &bad,
                chains: &[],
                secrets: &renewed,
            },
            &web,
            &settings,
            Some(&previous),
        );
        assert_eq!(names(&r), ["web/proxy", "web/socks"]);
        assert_eq!(r.kept, kept(&[("web", "proxy")]));
        let config = reloaded(&r);
        assert_eq!(
            config.services[1].handler.auth.as_ref().unwrap().password,
            "n3w-pass"
        );

        // A gateway keeps its services the same way.
        let first = render_gateway(&ns, &svcs[0], &settings, None);
        let previous = Previous::from_secret_data(&first.secret_data()).unwrap();
        let r = render_gateway(&gone, &svcs[0], &settings, Some(&previous));
        assert_eq!(r.secret_data(), first.secret_data());
        assert_eq!(r.kept, kept(&[("web", "proxy")]));

        // A config Secret that does not load says why.
        let mut data = first.secret_data();
        data.insert(CONFIG_KEY.into(), ByteString(b"services: 7".to_vec()));
        let e = Previous::from_secret_data(&data).unwrap_err();
        assert!(e.contains("\"config.yaml\" does not load"), "{e}");
        assert!(
            Previous::from_secret_data(&BTreeMap::new())
                .unwrap_err()
                .contains("no key \"config.yaml\"")
        );
    }

    #[test]
    fn kept_services_read_their_own_files_and_bring_no_invalid_chain() {
        let settings = Settings::default();
        let [old, new] = pems();
        let mut svcs = services(WEB_AND_ADMIN);
        // everyone/relay checks client certificates against gw-cert's CA.
        svcs[1].spec.services[0].listener.tls = Some(
            serde_json::from_value(serde_json::json!({
                "certificateSecret": {"name": "gw-cert"}, "caSecret": {"name": "gw-cert"}
            }))
            .unwrap(),
        );
        let secrets = all_secrets();
        let front = labels(&[("tier", "frontend")]);
        let ns = Namespace {
            services: &svcs,
            chains: &[],
            secrets: &secrets,
        };
        let first = render_for_pod(&ns, &front, &settings, None);
        assert_eq!(names(&first), ["everyone/relay"], "{:?}", first.problems);
        let previous = Previous::from_secret_data(&first.secret_data()).unwrap();

        // Its address breaks: kept, files and all.
        let mut broken = svcs.clone();
        broken[1].spec.services[0].addr = "no-port".into();
        let r = render_for_pod(
            &Namespace {
                services: &broken,
                ..ns
            },
            &front,
            &settings,
            Some(&previous),
        );
        assert_eq!(r.kept, kept(&[("everyone", "relay")]));
        assert_eq!(r.secret_data(), first.secret_data());

        // ...and the CA changes too: who may connect changed, so it is not kept.
        let gw_cert = |cert: &str, key: &str, ca: &str| {
            secret(
                "gw-cert",
                &[("tls.crt", cert), ("tls.key", key), ("ca.crt", ca)],
            )
            .1
        };
        let mut rotated = secrets.clone();
        rotated.insert("gw-cert".into(), gw_cert(&old.cert, &old.key, &new.cert));
        let r = render_for_pod(
            &Namespace {
                services: &broken,
                secrets: &rotated,
                ..ns
            },
            &front,
            &settings,
            Some(&previous),
        );
        assert!(r.config.services.is_empty() && r.kept.is_empty());
        assert!(r.files.is_empty(), "{:?}", r.files.keys());

        // The certificate is renewed and a newer service serves the new one: the kept service
        // would read the new certificate beside... whatever else changed: it goes, and only
        // the new service's files are left.
        let mut renewed = secrets.clone();
        renewed.insert("gw-cert".into(), gw_cert(&new.cert, &new.key, &old.cert));
        let mut also = broken.clone();
        let mut later = svcs[1].clone();
        later.metadata.name = Some("later".into());
        later.metadata.creation_timestamp =
            Some(serde_json::from_value("2026-06-01T00:00:00Z".into()).unwrap());
        later.spec.services[0].addr = ":9443".into();
        later.spec.services[0].listener.tls = Some(
            serde_json::from_value(serde_json::json!({"certificateSecret": {"name": "gw-cert"}}))
                .unwrap(),
        );
        // ...and claims the port the kept service had, which is free once it went.
        let mut claim = later.spec.services[0].clone();
        claim.name = "claim".into();
        claim.addr = ":8443".into();
        claim.listener = Default::default();
        later.spec.services.push(claim);
        also.push(later);
        let r = render_for_pod(
            &Namespace {
                services: &also,
                secrets: &renewed,
                ..ns
            },
            &front,
            &settings,
            Some(&previous),
        );
        assert_eq!(names(&r), ["later/relay", "later/claim"]);
        assert!(r.kept.is_empty());
        assert!(
            r.problems.iter().all(|p| p.reason != Reason::PortConflict),
            "{:?}",
            r.problems
        );
        let files: Vec<&str> = r.files.keys().map(String::as_str).collect();
        assert_eq!(files, ["gw-cert_tls.crt", "gw-cert_tls.key"]);
        assert_eq!(r.files["gw-cert_tls.crt"], new.cert.as_bytes());
        reloaded(&r);

        // A chain the proxy would refuse joins no config, kept service or not.
        let invalid = chains(
            r#"
- apiVersion: gost.rs/v1alpha1
  kind: GostChain
  metadata: {name: to-gateway}
  spec:
    hops:
    - name: hop-0
      selector: {failTimeout: soon}
      nodes:
      - {name: gw, addr: "gateway.tunnels.svc:8443", connector: {type: relay}}
"#,
        );
        let svcs = services(WEB_AND_ADMIN);
        let web = labels(&[("app", "web")]);
        let good = chains(TO_GATEWAY);
        let previous = Previous::from_secret_data(
            &render_for_pod(
                &Namespace {
                    services: &svcs,
                    chains: &good,
                    secrets: &secrets,
                },
                &web,
                &settings,
                None,
            )
            .secret_data(),
        )
        .unwrap();
        let r = render_for_pod(
            &Namespace {
                services: &svcs,
                chains: &invalid,
                secrets: &secrets,
            },
            &web,
            &settings,
            None,
        );
        assert_eq!(names(&r), ["web/socks"]);
        assert!(r.config.chains.is_empty() && r.files.is_empty());
        let p = &r.problems[0];
        assert_eq!(
            (p.reason, p.gost_chain.as_deref()),
            (Reason::InvalidChain, Some("to-gateway"))
        );
        reloaded(&r);
        // A service that ran through the chain before its bad edit keeps dialling through the
        // chain as it was.
        let r = render_for_pod(
            &Namespace {
                services: &svcs,
                chains: &invalid,
                secrets: &secrets,
            },
            &web,
            &settings,
            Some(&previous),
        );
        assert_eq!(r.kept, kept(&[("web", "proxy")]));
        assert_eq!(reloaded(&r).chains, previous.config.chains);
    }

    #[test]
    fn missing_secrets_and_keys_are_named() {
        let svcs = services(WEB_AND_ADMIN);
        let chs = chains(TO_GATEWAY);
        let mut secrets = all_secrets();
        secrets.remove("users");
        secrets.insert(
            "relay-creds".into(),
            secret("relay-creds", &[("username", "bob"), ("password", "x")]).1,
        );
        let ns = Namespace {
            services: &svcs,
            chains: &chs,
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &labels(&[("app", "web")]), &Settings::default(), None);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        // The chain is looked at first (it is what the service dials through).
        let p = &r.problems[0];
        assert_eq!(p.reason, Reason::SecretKeyMissing);
        assert!(
            p.message.contains("\"relay-creds\" has no key \"user\"")
                && p.message.contains("password, username"),
            "{}",
            p.message
        );
        assert!(
            r.files.is_empty(),
            "nothing half-rendered: {:?}",
            r.files.keys()
        );

        let chs: Vec<GostChain> = Vec::new();
        let ns = Namespace {
            services: &svcs[..1],
            chains: &chs,
            secrets: &secrets,
        };
        let mut only_auth = svcs[..1].to_vec();
        only_auth[0].spec.services[0].handler.chain = None;
        let ns = Namespace {
            services: &only_auth,
            ..ns
        };
        let r = render_for_pod(&ns, &labels(&[("app", "web")]), &Settings::default(), None);
        assert_eq!(r.problems[0].reason, Reason::SecretNotFound);
        assert!(
            r.problems[0]
                .message
                .contains("Secret \"users\" does not exist")
        );
        assert!(r.problems[0].message.contains("handler.auth"));
    }

    #[test]
    fn empty_server_credentials_are_refused_client_ones_are_sent() {
        let svcs = services(WEB_AND_ADMIN);
        let chs = chains(TO_GATEWAY);
        for (pairs, key, says) in [
            (
                [("username", "alice"), ("password", "")],
                "password",
                "let user \"alice\" in with any password",
            ),
            (
                [("username", ""), ("password", "s3cret")],
                "username",
                "clients need a user name",
            ),
        ] {
            let mut secrets = all_secrets();
            secrets.insert("users".into(), secret("users", &pairs).1);
            let ns = Namespace {
                services: &svcs,
                chains: &chs,
                secrets: &secrets,
            };
            let r = render_for_pod(&ns, &labels(&[("app", "web")]), &Settings::default(), None);
            assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
            let p = &r.problems[0];
            assert_eq!(p.reason, Reason::SecretKeyMissing);
            assert_eq!(p.service.as_deref(), Some("proxy"));
            assert!(
                p.message.contains("handler.auth")
                    && p.message
                        .contains(&format!("Secret \"users\" key \"{key}\" is empty"))
                    && p.message.contains(says),
                "{}",
                p.message
            );
            let names: Vec<&str> = r.config.services.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["web/socks"]);
        }

        // A client sends what it is given: an upstream may take an empty password.
        let mut secrets = all_secrets();
        secrets.insert(
            "relay-creds".into(),
            secret("relay-creds", &[("user", "bob"), ("password", "")]).1,
        );
        let ns = Namespace {
            services: &svcs,
            chains: &chs,
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &labels(&[("app", "web")]), &Settings::default(), None);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let node = &reloaded(&r).chains[0].hops[0].nodes[0];
        assert_eq!(node.connector.auth.as_ref().unwrap().password, "");
    }

    #[test]
    fn credentials_that_cannot_log_in_render_as_they_are_with_warnings() {
        let svcs = services(WEB_AND_ADMIN);
        let chs = chains(TO_GATEWAY);
        let mut secrets = all_secrets();
        let mut users = secret("users", &[("username", "al:ice"), ("password", "s3cret\n")]).1;
        users.type_ = Some("kubernetes.io/basic-auth".into());
        secrets.insert("users".into(), users);
        secrets.insert(
            "relay-creds".into(),
            secret("relay-creds", &[("user", "bob\r\n"), ("password", "p@ss")]).1,
        );
        let ns = Namespace {
            services: &svcs,
            chains: &chs,
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &labels(&[("app", "web")]), &Settings::default(), None);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        // Rendered as the Secrets hold them: nothing stripped.
        let config = reloaded(&r);
        let auth = config.services[0].handler.auth.as_ref().unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("al:ice", "s3cret\n")
        );
        let node = &config.chains[0].hops[0].nodes[0];
        assert_eq!(node.connector.auth.as_ref().unwrap().username, "bob\r\n");

        let said: Vec<(Reason, Option<&str>, &str)> = r
            .warnings
            .iter()
            .map(|w| (w.reason, w.gost_chain.as_deref(), w.message.as_str()))
            .collect();
        assert_eq!(said.len(), 3, "{said:#?}");
        assert!(
            r.warnings
                .iter()
                .all(|w| w.gost_service == "web" && w.service.as_deref() == Some("proxy"))
        );
        let (reason, chain, message) = said[0];
        assert_eq!((reason, chain), (Reason::TrailingNewline, None));
        assert_eq!(
            message,
            "spec.services[proxy].handler.auth: Secret \"users\" key \"password\" ends with a newline (\"\\n\"): the proxy takes it as part of the credential, so clients that send it without the newline are refused. `kubectl create secret generic --from-file` stores a file's final newline; store the value without it: `kubectl create secret generic users --type=kubernetes.io/basic-auth --from-literal=username=... --from-literal=password=... --dry-run=client -o yaml | kubectl apply -f -`, or write the file with `printf %s`. If the newline is meant, ignore this warning"
        );
        let (reason, chain, message) = said[1];
        assert_eq!((reason, chain), (Reason::ColonInUserName, None));
        assert_eq!(
            message,
            "spec.services[proxy].handler.auth: Secret \"users\" key \"username\": the user name contains ':', and HTTP Basic authentication (handler type \"http\") ends the user name at the first ':', so this user can never log in over HTTP; choose a user name without ':' (in the Secret and in the clients' settings)"
        );
        let (reason, chain, message) = said[2];
        assert_eq!(
            (reason, chain),
            (Reason::TrailingNewline, Some("to-gateway"))
        );
        assert!(
            message.starts_with("spec.services[proxy].handler.chain \"to-gateway\": GostChain \"to-gateway\" hop \"hop-0\" node \"gw\": connector.auth: Secret \"relay-creds\" key \"user\" ends with a newline (\"\\r\\n\"): the proxy sends it as part of the credential")
                && message.contains("`kubectl create secret generic relay-creds --from-literal=user=... --from-literal=password=..."),
            "{message}"
        );

        // A `:` matters only where HTTP Basic carries the user name: not to SOCKS5 or relay,
        // but to an HTTP connector.
        let socks = services(
            r#"
- apiVersion: gost.rs/v1alpha1
  kind: GostService
  metadata: {name: socks}
  spec:
    selector: {}
    services:
    - {name: s, addr: ":1080", handler: {type: socks5, auth: {secretRef: {name: users}}}}
    - {name: h, addr: ":8080", handler: {type: socks5, chain: http-up}}
"#,
        );
        let http_up = chains(
            r#"
- apiVersion: gost.rs/v1alpha1
  kind: GostChain
  metadata: {name: http-up}
  spec:
    hops:
    - name: hop-0
      nodes:
      - {name: up, addr: "up:8080", connector: {type: http, auth: {secretRef: {name: colon}}}}
"#,
        );
        secrets.insert(
            "users".into(),
            secret("users", &[("username", "al:ice"), ("password", "s3cret")]).1,
        );
        secrets.insert(
            "colon".into(),
            secret("colon", &[("username", "a:b"), ("password", "c")]).1,
        );
        let ns = Namespace {
            services: &socks,
            chains: &http_up,
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &BTreeMap::new(), &Settings::default(), None);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let said: Vec<(&str, Reason, &str)> = r
            .warnings
            .iter()
            .map(|w| (w.service.as_deref().unwrap(), w.reason, w.message.as_str()))
            .collect();
        assert_eq!(said.len(), 1, "{said:#?}");
        assert_eq!(said[0].0, "h");
        assert_eq!(said[0].1, Reason::ColonInUserName);
        assert!(
            said[0].2.contains("(connector type \"http\")")
                && said[0].2.contains("so the server reads another user name"),
            "{}",
            said[0].2
        );
    }

    #[test]
    fn clashing_ports_go_to_the_older_gost_service() {
        let svcs = services(
            r#"
- metadata: {name: b-newer, creationTimestamp: "2026-02-01T00:00:00Z"}
  spec:
    selector: {matchLabels: {app: web}}
    services:
    - {name: http, addr: "127.0.0.1:8000"}
    - {name: quic, addr: ":8000", listener: {type: h3}}
- metadata: {name: a-older, creationTimestamp: "2026-01-01T00:00:00Z"}
  spec:
    selector: {matchLabels: {app: web}}
    services:
    - {name: http, addr: ":8000"}
    - {name: admin, addr: ":15300"}
"#,
        );
        let secrets = BTreeMap::new();
        let ns = Namespace {
            services: &svcs,
            chains: &[],
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &labels(&[("app", "web")]), &Settings::default(), None);
        let names: Vec<&str> = r.config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["a-older/http", "b-newer/quic"],
            "UDP does not clash with TCP"
        );
        let reasons: Vec<(&str, Reason)> = r
            .problems
            .iter()
            .map(|p| (p.gost_service.as_str(), p.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("a-older", Reason::PortConflict),
                ("b-newer", Reason::PortConflict)
            ]
        );
        assert!(r.problems[0].message.contains("admin endpoint"));
        assert!(
            r.problems[1]
                .message
                .contains("service \"http\" of GostService \"a-older\"")
        );
        assert!(r.matched.contains("b-newer") && r.gost_services.contains("b-newer"));
    }

    #[test]
    fn bad_addresses_types_and_values_are_reported_not_rendered() {
        let svcs = services(
            r#"
- metadata: {name: bad}
  spec:
    selector: {}
    services:
    - {name: noport, addr: "localhost"}
    - {name: h3rp, addr: ":9000", listener: {type: http3}, handler: {type: http3}}
    - name: fwd
      addr: ":9001"
      forwarder: {nodes: [{name: t, addr: "no-port-here"}]}
    - {name: good, addr: ":9002"}
"#,
        );
        let secrets = BTreeMap::new();
        let ns = Namespace {
            services: &svcs,
            chains: &[],
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &labels(&[]), &Settings::default(), None);
        let reasons: Vec<Reason> = r.problems.iter().map(|p| p.reason).collect();
        assert_eq!(
            reasons,
            [
                Reason::InvalidAddress,
                Reason::UnsupportedType,
                Reason::InvalidService
            ]
        );
        assert!(
            r.problems[2].message.contains("forwarder.nodes[0].addr"),
            "{}",
            r.problems[2].message
        );
        assert_eq!(reloaded(&r).services.len(), 1);
    }

    /// The CRD schema refuses a connector the proxy has no client for, but a GostChain stored
    /// before it did is still read: it is reported and left out, never rendered (the proxy
    /// would refuse the whole config of the pod).
    #[test]
    fn a_connector_the_proxy_lacks_is_reported_not_rendered() {
        let svcs = services(WEB_AND_ADMIN);
        let mut chs = chains(TO_GATEWAY);
        chs[0].spec.hops[0].nodes[0].connector.kind = ConnectorType::Socks4;
        let secrets = all_secrets();
        let ns = Namespace {
            services: &svcs,
            chains: &chs,
            secrets: &secrets,
        };
        let p = chain_problem(&ns, "to-gateway").expect("a problem");
        assert_eq!(p.reason, Reason::UnsupportedType);
        assert_eq!(
            p.message,
            "GostChain \"to-gateway\" hop \"hop-0\" node \"gw\": connector.type: gost-rs has no `socks4` client; use one of `http`, `http2`, `socks5`, `relay`"
        );
        let r = render_for_pod(&ns, &labels(&[("app", "web")]), &Settings::default(), None);
        let reasons: Vec<Reason> = r.problems.iter().map(|p| p.reason).collect();
        assert_eq!(reasons, [Reason::UnsupportedType]);
        let names: Vec<&str> = r.config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web/socks"]);
        assert!(r.config.chains.is_empty());
    }

    #[test]
    fn a_chain_is_checked_on_its_own() {
        let chs = chains(TO_GATEWAY);
        let mut secrets = all_secrets();
        let ns = Namespace {
            services: &[],
            chains: &chs,
            secrets: &secrets,
        };
        assert_eq!(chain_problem(&ns, "to-gateway"), None);
        let missing = chain_problem(&ns, "nope").unwrap();
        assert_eq!(missing.reason, Reason::ChainNotFound);
        assert_eq!(missing.gost_chain.as_deref(), Some("nope"));
        secrets.remove("gw-cert");
        let ns = Namespace {
            services: &[],
            chains: &chs,
            secrets: &secrets,
        };
        let p = chain_problem(&ns, "to-gateway").unwrap();
        assert_eq!(p.reason, Reason::SecretNotFound);
        assert!(
            p.message.contains("node \"gw\": dialer.tls"),
            "{}",
            p.message
        );
        let mut bad = chains(TO_GATEWAY);
        bad[0].spec.hops[0].selector = Some(gost_api::v1alpha1::SelectorSpec {
            fail_timeout: Some("soon".into()),
            ..Default::default()
        });
        let secrets = all_secrets();
        let ns = Namespace {
            services: &[],
            chains: &bad,
            secrets: &secrets,
        };
        let p = chain_problem(&ns, "to-gateway").unwrap();
        assert_eq!(p.reason, Reason::InvalidChain);
        assert!(p.message.contains("failTimeout"), "{}", p.message);
    }

    #[test]
    fn an_invalid_selector_is_a_problem_and_selects_nothing() {
        let svcs = services(
            r#"
- metadata: {name: weird}
  spec:
    selector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}
    services: [{name: s, addr: ":1"}]
"#,
        );
        let secrets = BTreeMap::new();
        let ns = Namespace {
            services: &svcs,
            chains: &[],
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &labels(&[("a", "1")]), &Settings::default(), None);
        assert!(r.config.services.is_empty());
        assert_eq!(r.problems[0].reason, Reason::InvalidSelector);
    }

    #[test]
    fn a_gateway_renders_its_own_services_and_tcp_dialers_stay_plain() {
        let svcs = services(
            r#"
- metadata: {name: gw}
  spec:
    gateway: {replicas: 2}
    services:
    - name: entry
      addr: ":8080"
      handler: {type: http, chain: plain}
"#,
        );
        let chs = chains(
            r#"
- metadata: {name: plain}
  spec:
    hops:
    - name: h
      nodes:
      - {name: n, addr: "upstream:3128"}
      - {name: m, addr: "upstream2:443", dialer: {type: wss, tls: {insecureSkipVerify: true}}}
"#,
        );
        let secrets = BTreeMap::new();
        let ns = Namespace {
            services: &svcs,
            chains: &chs,
            secrets: &secrets,
        };
        assert!(
            render_for_pod(&ns, &labels(&[]), &Settings::default(), None)
                .config
                .services
                .is_empty(),
            "no selector: no sidecar"
        );
        let r = render_gateway(&ns, &svcs[0], &Settings { admin_port: 9999 }, None);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let config = reloaded(&r);
        let nodes = &config.chains[0].hops[0].nodes;
        assert!(nodes[0].dialer.tls.is_none());
        assert!(!nodes[1].dialer.tls.as_ref().unwrap().secure);
        assert_eq!(config.metrics.unwrap().addr, ":9999");
    }

    #[test]
    fn tls_secrets_the_proxy_cannot_load_leave_their_service_out() {
        let svcs = services(
            r#"
- metadata: {name: good, creationTimestamp: "2026-01-01T00:00:00Z"}
  spec:
    selector: {}
    services:
    - {name: plain, addr: ":9001", handler: {type: http}}
    - name: tls
      addr: ":9002"
      listener: {type: tls, tls: {certificateSecret: {name: good-cert}}}
- metadata: {name: bad, creationTimestamp: "2026-01-02T00:00:00Z"}
  spec:
    selector: {}
    services:
    - name: garbage
      addr: ":9003"
      listener: {type: tls, tls: {certificateSecret: {name: garbage}}}
    - name: mismatch
      addr: ":9004"
      listener: {type: tls, tls: {certificateSecret: {name: mismatch}}}
    - name: no-key
      addr: ":9005"
      listener: {type: tls, tls: {certificateSecret: {name: cert-as-key}}}
    - name: bad-ca
      addr: ":9006"
      listener: {type: tls, tls: {certificateSecret: {name: good-cert}, caSecret: {name: bad-ca}}}
"#,
        );
        let [one, two] = pems();
        let secrets: BTreeMap<_, _> = [
            secret(
                "good-cert",
                &[("tls.crt", &one.cert), ("tls.key", &one.key)],
            ),
            secret("garbage", &[("tls.crt", "garbage"), ("tls.key", "garbage")]),
            secret("mismatch", &[("tls.crt", &one.cert), ("tls.key", &two.key)]),
            secret(
                "cert-as-key",
                &[("tls.crt", &one.cert), ("tls.key", &one.cert)],
            ),
            secret(
                "bad-ca",
                &[(
                    "ca.crt",
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                )],
            ),
        ]
        .into_iter()
        .collect();
        let ns = Namespace {
            services: &svcs,
            chains: &[],
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &labels(&[]), &Settings::default(), None);
        let names: Vec<&str> = r.config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["good/plain", "good/tls"], "{:?}", r.problems);
        let found: Vec<(Option<&str>, Reason)> = r
            .problems
            .iter()
            .map(|p| (p.service.as_deref(), p.reason))
            .collect();
        assert_eq!(
            found,
            [
                (Some("garbage"), Reason::InvalidCertificate),
                (Some("mismatch"), Reason::InvalidCertificate),
                (Some("no-key"), Reason::InvalidCertificate),
                (Some("bad-ca"), Reason::InvalidCertificate),
            ]
        );
        let message = |i: usize| r.problems[i].message.as_str();
        assert!(
            message(0).contains("Secret \"garbage\" key \"tls.crt\"") && message(0).contains("PEM"),
            "{}",
            message(0)
        );
        assert!(
            message(1).contains("tls.key does not match") && message(1).contains("\"mismatch\""),
            "{}",
            message(1)
        );
        assert!(message(2).contains("key \"tls.key\""), "{}", message(2));
        assert!(
            message(3).contains("Secret \"bad-ca\" key \"ca.crt\""),
            "{}",
            message(3)
        );
        assert!(
            r.files.keys().all(|f| f.starts_with("good-cert_")),
            "no file of a left-out service: {:?}",
            r.files.keys()
        );
        reloaded(&r);
    }

    #[test]
    fn a_chain_with_an_unusable_ca_is_not_rendered() {
        let chs = chains(TO_GATEWAY);
        let mut secrets = all_secrets();
        secrets.insert(
            "gw-cert".into(),
            secret("gw-cert", &[("ca.crt", "not a certificate")]).1,
        );
        let ns = Namespace {
            services: &[],
            chains: &chs,
            secrets: &secrets,
        };
        let p = chain_problem(&ns, "to-gateway").expect("a problem");
        assert_eq!(p.reason, Reason::InvalidCertificate);
        assert!(
            p.message.contains("dialer.tls") && p.message.contains("\"gw-cert\""),
            "{}",
            p.message
        );
    }

    #[test]
    fn listen_hosts_are_ip_literals_localhost_or_empty() {
        let svcs = services(
            r#"
- metadata: {name: hosts}
  spec:
    selector: {}
    services:
    - {name: any, addr: ":9001"}
    - {name: v4, addr: "127.0.0.1:9002"}
    - {name: v6, addr: "[::1]:9003"}
    - {name: local, addr: "localhost:9004"}
    - {name: all-v4, addr: "0.0.0.0:9005"}
    - {name: name, addr: "no-such-host.invalid:9006"}
    - {name: pod-name, addr: "web-0:9007"}
"#,
        );
        let secrets = BTreeMap::new();
        let ns = Namespace {
            services: &svcs,
            chains: &[],
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &labels(&[]), &Settings::default(), None);
        let names: Vec<&str> = r.config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "hosts/any",
                "hosts/v4",
                "hosts/v6",
                "hosts/local",
                "hosts/all-v4"
            ],
            "{:?}",
            r.problems
        );
        let found: Vec<(Option<&str>, Reason)> = r
            .problems
            .iter()
            .map(|p| (p.service.as_deref(), p.reason))
            .collect();
        assert_eq!(
            found,
            [
                (Some("name"), Reason::InvalidAddress),
                (Some("pod-name"), Reason::InvalidAddress)
            ]
        );
        assert!(
            r.problems[0].message.contains("\"no-such-host.invalid\"")
                && r.problems[0].message.contains(":9006"),
            "{}",
            r.problems[0].message
        );
    }

    /// The CRD's rule on `addr` refuses at apply time what would not render; it must never
    /// refuse what would (an object the API server will not store cannot be fixed by the
    /// operator). Every address of a corpus of hosts and ports that renders matches the
    /// pattern, and the common mistakes do not.
    #[test]
    fn the_crds_listen_address_rule_refuses_only_what_would_not_render() {
        let pattern = serde_json::json!({"pattern": gost_api::v1alpha1::LISTEN_ADDR_PATTERN});
        let rule = jsonschema::validator_for(&pattern).unwrap();
        let matches = |addr: &str| rule.is_valid(&serde_json::json!(addr));
        let hosts = [
            "",
            "127.0.0.1",
            "0.0.0.0",
            "10.1.2.3",
            "255.255.255.255",
            "1.2.3",
            "256.1.1.1",
            "[::1]",
            "[::]",
            "[fe80::1]",
            "[::ffff:10.0.0.1]",
            "[1.2.3.4]",
            "[FE80::A]",
            "[fe80::1%eth0]",
            "[::1",
            "[]",
            "::1",
            "localhost",
            "LocalHost",
            "LOCALHOST",
            "db",
            "abc",
            "gateway.tunnels.svc",
            "example.com",
            " ",
            "127.0.0.1 ",
            "*",
        ];
        let ports = [
            "80", "8080", "65535", "1", "0", "65536", "08080", "", "x", "-1", "+80", "80 ",
        ];
        let mut rendered = 0;
        for host in hosts {
            for port in ports {
                for addr in [format!("{host}:{port}"), format!("{host}{port}")] {
                    if Socket::parse(&addr, false).is_ok() {
                        rendered += 1;
                        assert!(matches(&addr), "{addr:?} renders but the CRD refuses it");
                    }
                }
            }
        }
        assert!(
            rendered > 50,
            "only {rendered} addresses of the corpus render"
        );
        // The rule the CRD carries is this pattern, as a raw CEL string (no `'` to end it).
        let pattern = gost_api::v1alpha1::LISTEN_ADDR_PATTERN;
        assert!(!pattern.contains('\''));
        let crd = <gost_api::v1alpha1::GostService as kube::CustomResourceExt>::crd();
        let rule = serde_json::to_string(&format!("self.matches(r'{pattern}')")).unwrap();
        assert!(
            serde_json::to_string(&crd).unwrap().contains(&rule),
            "{rule} is not in the CRD"
        );
        for mistake in [
            "gateway.tunnels.svc:8443",
            ":+80",
            "[]:80",
            "example.com:443",
            "8080",
            "no-port",
            "localhost",
            "127.0.0.1",
            "[::1]",
            ":",
            "::1:80",
            "http://:8080",
            ":80/path",
        ] {
            assert!(!matches(mistake), "the CRD lets {mistake:?} through");
            assert!(
                Socket::parse(mistake, false).is_err(),
                "{mistake:?} renders"
            );
        }
    }

    #[test]
    fn sockets_clash_by_address_not_by_spelling() {
        let svcs = services(
            r#"
- metadata: {name: a, creationTimestamp: "2026-01-01T00:00:00Z"}
  spec:
    selector: {}
    services:
    - {name: one, addr: "127.0.0.1:9001"}
    - {name: two, addr: "localhost:9001"}
    - {name: three, addr: "[::]:9002"}
    - {name: four, addr: "0.0.0.0:9002"}
    - {name: five, addr: "10.0.0.1:9003"}
    - {name: six, addr: "[::]:9003"}
    - {name: seven, addr: "[::1]:9004"}
    - {name: eight, addr: "[0:0:0:0:0:0:0:1]:9004"}
    - {name: nine, addr: "127.0.0.1:9005"}
    - {name: ten, addr: "127.0.0.2:9005"}
    - {name: eleven, addr: "localhost:9006"}
    - {name: twelve, addr: "[::1]:9006"}
"#,
        );
        let secrets = BTreeMap::new();
        let ns = Namespace {
            services: &svcs,
            chains: &[],
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &labels(&[]), &Settings::default(), None);
        let names: Vec<&str> = r.config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a/one", "a/three", "a/five", "a/seven", "a/nine", "a/ten", "a/eleven"
            ],
            "{:?}",
            r.problems
        );
        let clashing: Vec<&str> = r
            .problems
            .iter()
            .filter(|p| p.reason == Reason::PortConflict)
            .filter_map(|p| p.service.as_deref())
            .collect();
        assert_eq!(clashing, ["two", "four", "six", "eight", "twelve"]);
        assert!(
            r.problems[0].message.contains("service \"one\""),
            "{}",
            r.problems[0].message
        );
    }

    #[test]
    fn tls_file_names_are_distinct_for_distinct_secret_keys() {
        let svcs = services(
            r#"
- metadata: {name: gs}
  spec:
    selector: {}
    services:
    - {name: one, addr: ":9001", handler: {type: http, chain: c1}}
    - {name: two, addr: ":9002", handler: {type: http, chain: c2}}
    - name: three
      addr: ":9003"
      listener: {type: tls, tls: {certificateSecret: {name: good}, caSecret: {name: config, key: yaml}}}
"#,
        );
        let chs = chains(
            r#"
- metadata: {name: c1}
  spec:
    hops: [{name: h, nodes: [{name: n, addr: "a.example:443", dialer: {type: tls, tls: {caSecret: {name: a, key: b.crt}}}}]}]
- metadata: {name: c2}
  spec:
    hops: [{name: h, nodes: [{name: n, addr: "b.example:443", dialer: {type: tls, tls: {caSecret: {name: a.b, key: crt}}}}]}]
"#,
        );
        let [one, two] = pems();
        let secrets: BTreeMap<_, _> = [
            secret("a", &[("b.crt", &one.cert)]),
            secret("a.b", &[("crt", &two.cert)]),
            secret("config", &[("yaml", &one.cert)]),
            secret("good", &[("tls.crt", &two.cert), ("tls.key", &two.key)]),
        ]
        .into_iter()
        .collect();
        let ns = Namespace {
            services: &svcs,
            chains: &chs,
            secrets: &secrets,
        };
        let r = render_for_pod(&ns, &labels(&[]), &Settings::default(), None);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let config = reloaded(&r);
        assert_eq!(config.services.len(), 3, "config.yaml was overwritten");
        let data = r.secret_data();
        let content = |path: &str| {
            let file = path.strip_prefix(&format!("{MOUNT_PATH}/")).unwrap();
            assert_ne!(file, CONFIG_KEY);
            String::from_utf8(data[file].0.clone()).unwrap()
        };
        let ca_of = |i: usize| {
            let tls = config.chains[i].hops[0].nodes[0]
                .dialer
                .tls
                .clone()
                .unwrap();
            tls.ca_file.unwrap()
        };
        assert_ne!(ca_of(0), ca_of(1));
        assert_eq!(content(&ca_of(0)), one.cert, "c1 reads Secret a key b.crt");
        assert_eq!(content(&ca_of(1)), two.cert, "c2 reads Secret a.b key crt");
        let listener = config.services[2].listener.tls.clone().unwrap();
        assert_eq!(content(&listener.ca_file.unwrap()), one.cert);
        assert_eq!(
            data.len(),
            6,
            "config.yaml and five files: {:?}",
            data.keys()
        );
        let valid = |k: &str| {
            k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        assert!(
            data.keys().all(|k| valid(k) && k.len() <= 253),
            "{:?}",
            data.keys()
        );
    }

    #[test]
    fn tls_file_names_stay_valid_secret_keys_when_long() {
        let long_secret = format!("{}.x", "s".repeat(250));
        let long_key = "k".repeat(253);
        let (a, b) = (
            tls_file_name(&long_secret, &long_key),
            tls_file_name(&long_secret, &format!("{}j", "k".repeat(252))),
        );
        assert!(a.len() <= 253 && b.len() <= 253, "{a}");
        assert_ne!(a, b);
        assert_eq!(tls_file_name("gw-cert", "ca.crt"), "gw-cert_ca.crt");
    }
}
