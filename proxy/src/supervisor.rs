//! Running services, and applying a new configuration to them without dropping what did not
//! change.
//!
//! Each service is compared with its previous version by name:
//! - the same service (including the chain, hops, authenticators and TLS defaults it uses):
//!   left alone;
//! - only its handler or chain changed: a new handler is built and swapped in; the listener,
//!   and every tunnel already open, stay as they are;
//! - only its listener changed, on the same address, over TCP: the new listener takes the old
//!   one's socket over (the address stays bound), and the open tunnels stay the service's;
//! - its address changed (or an `h3` listener did): it is replaced, like a removed service
//!   plus a new one;
//! - removed: it stops accepting at once and its open tunnels may finish within the grace
//!   period, after which they are closed, and so are connections that outlived its listener
//!   (QUIC's, which share its UDP socket).
//!
//! Everything that can fail (building handlers, binding new addresses) happens before anything
//! running is touched, so an invalid configuration changes nothing. The one exception is an
//! address that moves from a removed or replaced service to a new one: it can only be bound
//! once the old listener is closed, and if that fails the service is reported as not bound.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use gost_api::{
    AutherConfig, ChainConfig, Config, ConfigError, HandlerType, HopConfig, ListenerConfig,
    ListenerType, ServiceConfig, TlsConfig,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::KeepAlive;
use crate::handler::Handler;
use crate::listener::{ACCEPT_ERROR_BACKOFF, Listener};
use crate::server;

/// Everything a service's behaviour depends on: when two are equal the service is unchanged.
#[derive(Clone, PartialEq)]
struct ServiceSpec {
    service: ServiceConfig,
    chain: Option<ChainConfig>,
    hops: Vec<HopConfig>,
    authers: Vec<AutherConfig>,
    tls: Option<TlsConfig>,
}

impl ServiceSpec {
    fn of(service: &ServiceConfig, config: &Config) -> Self {
        let chain = service
            .handler
            .chain
            .as_ref()
            .and_then(|name| config.chains.iter().find(|c| &c.name == name))
            .cloned();
        // Hops a chain names without nodes are the top-level hops of that name.
        let hops = chain
            .iter()
            .flat_map(|c| &c.hops)
            .filter(|h| h.is_reference())
            .filter_map(|h| config.hops.iter().find(|t| t.name == h.name))
            .cloned()
            .collect();
        let names: Vec<&String> = service
            .handler
            .auther
            .iter()
            .chain(&service.handler.authers)
            .collect();
        let authers = config
            .authers
            .iter()
            .filter(|a| names.contains(&&a.name))
            .cloned()
            .collect();
        // The top-level `tls` section only matters to services that serve TLS with the
        // default certificate: one that names its own takes nothing from it, CA included.
        let tls = (listener_uses_default_tls(service)
            || handler_serves_tls(service.handler.kind)
                && uses_default_cert(service.handler.tls.as_ref()))
        .then(|| config.tls.clone())
        .flatten();
        ServiceSpec {
            service: service.clone(),
            chain,
            hops,
            authers,
            tls,
        }
    }

    /// What the bound listener depends on: its address, config (GOST's keepalive keys in its
    /// metadata among it), the default TLS certificate when it serves TLS, and the service's
    /// keepalive, which the listener gives the sockets it accepts unless those keys say
    /// otherwise.
    fn listener_part(&self) -> ListenerPart {
        (
            self.service.addr.clone(),
            self.service.listener.clone(),
            listener_uses_default_tls(&self.service)
                .then(|| self.tls.clone())
                .flatten(),
            server::keepalive(&self.service, 0).ok(),
        )
    }
}

/// Whether a listener of `kind` serves TLS, and so the top-level `tls` certificate unless
/// its own `tls` names one.
pub(crate) fn listener_serves_tls(kind: ListenerType) -> bool {
    !matches!(
        kind,
        ListenerType::Tcp | ListenerType::Ws | ListenerType::H2c | ListenerType::Pht
    )
}

/// Whether a service's listener serves TLS with the default certificate (the top-level
/// `tls` section), its own `tls` naming none.
fn listener_uses_default_tls(service: &ServiceConfig) -> bool {
    listener_serves_tls(service.listener.kind) && uses_default_cert(service.listener.tls.as_ref())
}

/// Whether a server `tls` section leaves the certificate to the defaults (as
/// [`crate::tls::ServerTls::new`] reads it: a named certificate or key takes nothing from
/// them).
fn uses_default_cert(own: Option<&TlsConfig>) -> bool {
    !own.is_some_and(|t| t.cert_file.is_some() || t.key_file.is_some())
}

/// Whether a handler of `kind` serves TLS itself: SOCKS5's TLS methods (also `auto`'s).
fn handler_serves_tls(kind: HandlerType) -> bool {
    matches!(kind, HandlerType::Socks5 | HandlerType::Auto)
}

/// The socket a service's listener binds: UDP for `h3`, TCP for the others; the addresses it
/// takes, per family, and its port.
#[derive(Debug)]
struct BindKey {
    udp: bool,
    /// Per family (`true`: IPv6), the address, or `None` for every address of the family.
    slots: Vec<(bool, Option<IpAddr>)>,
    port: u16,
}

impl BindKey {
    /// `None` for port 0 (a new port at every bind) and for an address that does not parse
    /// or resolve (its bind fails with an error of its own).
    fn of(service: &ServiceConfig) -> Option<BindKey> {
        let (host, port) = gost_api::split_host_port(&service.addr)?;
        let port = gost_api::parse_port(port).filter(|p| *p != 0)?;
        let udp = service.listener.kind == ListenerType::H3;
        let slots = if host.is_empty() {
            // Both families: the listeners bind `[::]` dual-stack, or `0.0.0.0`.
            vec![(false, None), (true, None)]
        } else {
            let ip = match host.parse::<IpAddr>() {
                Ok(ip) => ip,
                // The first address, as the listener binds it.
                Err(_) => (host, port).to_socket_addrs().ok()?.next()?.ip(),
            };
            // `[::ffff:127.0.0.1]` takes 127.0.0.1.
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            match ip {
                IpAddr::V4(v4) if v4.is_unspecified() => vec![(false, None)],
                // An explicit `[::]`: the TCP listener leaves it dual-stack (the system's
                // default), the h3 one binds it IPv6 only.
                IpAddr::V6(v6) if v6.is_unspecified() && !udp => {
                    vec![(false, None), (true, None)]
                }
                IpAddr::V6(v6) if v6.is_unspecified() => vec![(true, None)],
                ip => vec![(ip.is_ipv6(), Some(ip))],
            }
        };
        Some(BindKey { udp, slots, port })
    }

    /// Whether the two cannot be bound at once: one protocol and port, and an address in
    /// common within a family (every address of the family has one with any).
    fn clashes(&self, other: &BindKey) -> bool {
        self.udp == other.udp
            && self.port == other.port
            && self.slots.iter().any(|(v6, ip)| {
                other.slots.iter().any(|(o_v6, o_ip)| {
                    v6 == o_v6 && (ip.is_none() || o_ip.is_none() || ip == o_ip)
                })
            })
    }

    fn protocol(&self) -> &'static str {
        if self.udp { "UDP" } else { "TCP" }
    }
}

type ListenerPart = (String, ListenerConfig, Option<TlsConfig>, Option<KeepAlive>);

/// Connections one service serves at once unless its `maxConnections` metadata says otherwise:
/// each takes two file descriptors and some memory, and a flood beyond this is better refused
/// at the door than allowed to exhaust the process for every other service.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The handler a service's accept loop hands connections to, and the service's connection
/// limit; swapped together on reload. The count of open connections the limit applies to
/// is the service's own ([`Running::open`]), kept across swaps and replacements (a replaced
/// service's draining connections still count), so that a reload does not grant the limit
/// again on top of what is open.
struct HandlerSlot {
    handler: Arc<dyn Handler>,
    limit: usize,
    /// Cancelled when this handler stops being the service's: swapped by a reload, or the
    /// service stops accepting. Connections it serves between requests (HTTP/1.1 keep-alive)
    /// then close, so that the next request meets the current handler, or none.
    retired: CancellationToken,
}

/// One connection counted against its service's limit, for as long as it is open.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HandlerSlot {
    fn new(
        handler: Arc<dyn Handler>,
        service: &ServiceConfig,
        index: usize,
    ) -> Result<Self, ConfigError> {
        let limit = match service.metadata.int(&["maxConnections", "maxConns"]) {
            Ok(None) => DEFAULT_MAX_CONNECTIONS,
            Ok(Some(n)) if n > 0 => n as usize,
            Ok(Some(_)) | Err(_) => {
                return Err(ConfigError::Field {
                    path: format!("services[{index}].metadata.maxConnections"),
                    message: "must be a positive number of connections".into(),
                });
            }
        };
        Ok(HandlerSlot {
            handler,
            limit,
            retired: CancellationToken::new(),
        })
    }
}

struct Running {
    spec: ServiceSpec,
    local: SocketAddr,
    handler: Arc<ArcSwap<HandlerSlot>>,
    /// The service's open connections, counted against its limit.
    open: Arc<AtomicUsize>,
    /// Stops the accept loop (which then drops the listener).
    accept: CancellationToken,
    /// Closes this service's open tunnels: fired a grace period after it was removed.
    tunnels: CancellationToken,
    /// Closes the connections that outlive its listener ([`Listener::linger`]): fired with
    /// `tunnels`, at once when a new service wants the address, or when the process exits.
    release: CancellationToken,
    /// The accept loop, which owns the listener.
    accept_task: tokio::task::JoinHandle<()>,
    /// Another handle on the listening socket (TCP), for a listener that replaces this one
    /// on the same address.
    socket: Option<std::net::TcpListener>,
    /// Tells the accept loop that its socket goes to a new listener (see [`Stop`]).
    handover: CancellationToken,
}

/// What one apply did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Services started.
    pub added: Vec<String>,
    /// Services whose handler or chain was swapped under their listener.
    pub updated: Vec<String>,
    /// Services whose listener was replaced.
    pub replaced: Vec<String>,
    /// Services stopped.
    pub removed: Vec<String>,
    /// Services left alone.
    pub unchanged: usize,
    /// Services of the new configuration that could not bind their address.
    pub unbound: Vec<String>,
}

/// The running services of the current configuration.
pub struct Supervisor {
    services: HashMap<String, Running>,
    /// Every tunnel of every service, so that shutdown can wait for them.
    tunnels: TaskTracker,
    /// What stopped listeners left running ([`Listener::linger`]), so that exit can wait for
    /// them to close.
    lingering: TaskTracker,
    /// Fired at exit: the parent of every service's `release`.
    exiting: CancellationToken,
    grace: Duration,
    generation: u64,
    all_bound: Arc<AtomicBool>,
    /// The tunnels' closing signals of the services [`Supervisor::stop_accepting`] stopped.
    stopped: Vec<CancellationToken>,
    /// For a removed service's metrics, dropped once it has drained unless a service of its
    /// name runs again: each name's latest instance (numbered as started) and whether it runs.
    instances: Instances,
    /// The number of the next service instance started.
    next_instance: u64,
}

/// Each service name's latest instance and whether it runs (see [`forget_when_drained`]).
type Instances = Arc<std::sync::Mutex<HashMap<String, (u64, bool)>>>;

/// A service whose handler is built and whose listener is bound or waits for its address.
enum Pending {
    Bound(Box<dyn Listener>),
    /// The address is held by a service that is going away; bound after it has closed, by
    /// a listener whose certificates and settings are already checked.
    AfterRelease(server::BindListener),
    /// The same service on the same address with another listener over TCP: the new
    /// listener takes the old one's socket over, so the address stays bound throughout.
    HandOver(server::BindListener),
}

/// Drops the metric series of the removed service `name`, its instance `instance`, once its
/// connections have ended (or the grace period and a moment for the cut ones to go), unless a
/// later instance of that name was started since (running or draining: its own task drops
/// them).
async fn forget_when_drained(
    name: String,
    instance: u64,
    open: Arc<AtomicUsize>,
    grace: Duration,
    instances: Instances,
) {
    let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(1);
    while open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Under the lock, so that no instance of the name starts meanwhile.
    let mut instances = instances.lock().unwrap_or_else(|e| e.into_inner());
    if instances.get(&name) == Some(&(instance, false)) {
        instances.remove(&name);
        crate::metrics::forget_service(&name);
    }
}

impl Supervisor {
    /// No services yet; `grace` is how long removed services' tunnels may run on.
    pub fn new(tunnels: TaskTracker, grace: Duration) -> Self {
        Supervisor {
            services: HashMap::new(),
            tunnels,
            lingering: TaskTracker::new(),
            exiting: CancellationToken::new(),
            grace,
            generation: 0,
            all_bound: Arc::new(AtomicBool::new(true)),
            stopped: Vec::new(),
            instances: Default::default(),
            next_instance: 0,
        }
    }

    /// The generation of the configuration running (1 for the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True when every service of the current configuration holds its address.
    pub fn all_bound(&self) -> bool {
        self.all_bound.load(Ordering::SeqCst)
    }

    /// The bound address of each running service.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut all: Vec<_> = self
            .services
            .iter()
            .map(|(name, r)| (name.clone(), r.local))
            .collect();
        all.sort();
        all
    }

    /// Makes `config` the running configuration; on error nothing changed.
    pub async fn apply(&mut self, config: &Config) -> Result<Applied, ConfigError> {
        let chains = server::build_chains(config)?;
        let tls_defaults = Arc::new(crate::tls::TlsDefaults::new(config.tls.clone()));
        let mut applied = Applied::default();

        // The sockets running services give up in this apply, and those they keep.
        let (leaving, kept): (Vec<_>, Vec<_>) =
            self.services.iter().partition(|(name, running)| {
                match config.services.iter().find(|s| &&s.name == name) {
                    None => true,
                    Some(s) => {
                        ServiceSpec::of(s, config).listener_part() != running.spec.listener_part()
                    }
                }
            });
        let leaving: Vec<BindKey> = leaving
            .into_iter()
            .filter_map(|(_, r)| BindKey::of(&r.spec.service))
            .collect();
        let kept: Vec<(&String, BindKey)> = kept
            .into_iter()
            .filter_map(|(name, r)| Some((name, BindKey::of(&r.spec.service)?)))
            .collect();

        // Phase 1: build and bind everything new; fails without touching what runs.
        let mut swaps = Vec::new();
        let mut starts = Vec::new();
        for (index, service) in config.services.iter().enumerate() {
            let spec = ServiceSpec::of(service, config);
            let previous = self.services.get(&service.name);
            if previous.is_some_and(|p| p.spec == spec) {
                applied.unchanged += 1;
                continue;
            }
            let handler =
                server::build_service(config, index, &chains, &tls_defaults, &self.tunnels)?;
            let slot = HandlerSlot::new(handler, service, index)?;
            match previous {
                Some(p) if p.spec.listener_part() == spec.listener_part() => {
                    swaps.push((service.name.clone(), spec, slot));
                }
                Some(p)
                    if p.socket.is_some()
                        && p.spec.service.addr == service.addr
                        && service.listener.kind != ListenerType::H3 =>
                {
                    let bind = server::prepare_listener(config, index, &tls_defaults)?;
                    starts.push((spec, slot, Pending::HandOver(bind), true));
                }
                _ => {
                    let key = BindKey::of(service);
                    if let Some(key) = &key
                        && let Some((holder, _)) = kept.iter().find(|(_, k)| k.clashes(key))
                    {
                        return Err(ConfigError::Field {
                            path: format!("services[{index}].addr"),
                            message: format!(
                                "cannot listen on {:?}: service `{holder}` of this configuration \
                                 keeps {} port {}",
                                service.addr,
                                key.protocol(),
                                key.port
                            ),
                        });
                    }
                    // Another spelling of a leaving service's socket (`:8080` for
                    // `127.0.0.1:8080`, `localhost` for `127.0.0.1`) is bound once that one
                    // let go of it, as the same spelling is.
                    let pending = if key
                        .as_ref()
                        .is_some_and(|key| leaving.iter().any(|l| l.clashes(key)))
                    {
                        Pending::AfterRelease(server::prepare_listener(
                            config,
                            index,
                            &tls_defaults,
                        )?)
                    } else {
                        Pending::Bound(server::bind_listener(config, index, &tls_defaults)?)
                    };
                    starts.push((spec, slot, pending, previous.is_some()));
                }
            }
        }

        // Phase 2: commit. Stop what goes away, swap handlers, start what is new. The new
        // chains' routes count from here on; the old ones' until the commit is done.
        let routes: crate::metrics::Routes = chains
            .values()
            .flat_map(|chain| {
                chain.hops.iter().flat_map(|hop| {
                    hop.nodes
                        .iter()
                        .map(|node| (chain.name.clone(), node.name.clone()))
                })
            })
            .collect();
        crate::metrics::add_routes(&routes);
        let keep: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        let replaced: Vec<String> = starts
            .iter()
            .filter(|(.., existed)| *existed)
            .map(|(spec, ..)| spec.service.name.clone())
            .collect();
        let stopping: Vec<String> = self
            .services
            .keys()
            .filter(|name| !keep.contains(&name.as_str()) || replaced.contains(name))
            .cloned()
            .collect();
        let handing_over: Vec<String> = starts
            .iter()
            .filter(|(_, _, p, _)| matches!(p, Pending::HandOver(_)))
            .map(|(spec, ..)| spec.service.name.clone())
            .collect();
        // Per service handing its socket over: the socket, and its tunnels' closing signal,
        // which the new listener's tunnels share.
        let mut handed = HashMap::new();
        // Addresses a new service binds once their old holder let go of them.
        let wanted: Vec<BindKey> = starts
            .iter()
            .filter(|(_, _, p, _)| matches!(p, Pending::AfterRelease(_)))
            .filter_map(|(spec, ..)| BindKey::of(&spec.service))
            .collect();
        let mut released = Vec::new();
        // A replaced service's open connections still count against its limit.
        let mut still_open = HashMap::new();
        for name in stopping {
            let mut running = self.services.remove(&name).expect("listed above");
            still_open.insert(name.clone(), running.open.clone());
            if handing_over.contains(&name)
                && let Some(socket) = running.socket.take()
            {
                // Its tunnels do not depend on its listener: they stay open as the service's,
                // until it is removed or the process stops.
                running.handover.cancel();
                running.accept.cancel();
                running.handler.load().retired.cancel();
                handed.insert(name, (socket, running.tunnels.clone()));
                continue;
            }
            if BindKey::of(&running.spec.service)
                .is_some_and(|key| wanted.iter().any(|w| w.clashes(&key)))
            {
                // Connections on the listener's socket cannot drain on it when another
                // listener needs the address: closed now, their tunnels go with them.
                running.release.cancel();
            }
            running.accept.cancel();
            running.handler.load().retired.cancel();
            released.push(running.accept_task);
            let tunnels = running.tunnels.clone();
            let release = running.release.clone();
            let grace = self.grace;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                tunnels.cancel();
                release.cancel();
            });
            if !replaced.contains(&name) {
                self.retire(&name, running.open.clone());
                tracing::info!(service = %name, grace_period_s = grace.as_secs_f64(), "service removed; open tunnels may finish within the grace period");
                applied.removed.push(name);
            }
        }
        for (name, spec, slot) in swaps {
            let running = self.services.get_mut(&name).expect("swapped services run");
            running.handler.swap(Arc::new(slot)).retired.cancel();
            running.spec = spec;
            applied.updated.push(name);
        }
        // Accept loops drop their listeners as they end; wait for that before binding the
        // addresses they held.
        if starts
            .iter()
            .any(|(_, _, p, _)| matches!(p, Pending::AfterRelease(_)))
        {
            for task in released {
                let _ = tokio::time::timeout(RELEASE_TIMEOUT, task).await;
            }
        }
        let mut all_bound = true;
        for (spec, slot, pending, existed) in starts {
            let name = spec.service.name.clone();
            let mut tunnels = None;
            let listener = match pending {
                Pending::Bound(listener) => listener,
                Pending::HandOver(bind) => {
                    let (socket, open_tunnels) = handed.remove(&name).expect("handed over above");
                    match crate::listener::tcp::with_handover(&spec.service.addr, socket, bind) {
                        Ok(listener) => {
                            tunnels = Some(open_tunnels);
                            listener
                        }
                        Err(e) => {
                            // Its tunnels end as a removed service's do, and so do its series.
                            let grace = self.grace;
                            tokio::spawn(async move {
                                tokio::time::sleep(grace).await;
                                open_tunnels.cancel();
                            });
                            self.retire(&name, still_open.remove(&name).unwrap_or_default());
                            tracing::error!(service = %name, error = %e, "cannot take the listening socket over");
                            all_bound = false;
                            applied.unbound.push(name);
                            continue;
                        }
                    }
                }
                Pending::AfterRelease(bind) => match bind_after_release(&bind).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        // A replaced service's draining connections still end as a removed
                        // one's (the grace period set above); its series go when they have.
                        if existed {
                            self.retire(&name, still_open.remove(&name).unwrap_or_default());
                        }
                        tracing::error!(service = %name, error = %e, "cannot bind the new listener");
                        all_bound = false;
                        applied.unbound.push(name);
                        continue;
                    }
                },
            };
            let open = still_open.remove(&name).unwrap_or_default();
            // Numbered before it takes connections: a task dropping an earlier instance's
            // series leaves this one's alone.
            self.next_instance += 1;
            self.instances
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), (self.next_instance, true));
            let running = self.start(spec, slot, listener, open, tunnels);
            self.services.insert(name.clone(), running);
            if existed {
                applied.replaced.push(name);
            } else {
                applied.added.push(name);
            }
        }
        self.all_bound.store(all_bound, Ordering::SeqCst);
        self.generation += 1;
        crate::metrics::set_services(self.services.len());
        crate::metrics::keep_routes(routes);
        Ok(applied)
    }

    /// Marks the instance of `name` that ran as stopped, and drops its series once its `open`
    /// connections have drained, unless a service of that name starts again meanwhile: what
    /// a removed service, and a replaced one whose new listener could not take over, leave.
    fn retire(&self, name: &str, open: Arc<AtomicUsize>) {
        let instance = {
            let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
            let entry = instances.entry(name.to_string()).or_insert((0, true));
            entry.1 = false;
            entry.0
        };
        tokio::spawn(forget_when_drained(
            name.to_string(),
            instance,
            open,
            self.grace,
            self.instances.clone(),
        ));
    }

    fn start(
        &self,
        spec: ServiceSpec,
        slot: HandlerSlot,
        listener: Box<dyn Listener>,
        open: Arc<AtomicUsize>,
        tunnels: Option<CancellationToken>,
    ) -> Running {
        let local = listener.local_addr();
        let socket = listener.socket();
        // Logged here, not in the accept loop's task, so that it comes before the
        // "configuration applied" line of the apply that started the service.
        tracing::info!(service = %spec.service.name, addr = %local, "listening");
        let handler = Arc::new(ArcSwap::from_pointee(slot));
        let accept = CancellationToken::new();
        let handover = CancellationToken::new();
        let tunnels = tunnels.unwrap_or_default();
        let release = self.exiting.child_token();
        let accept_task = tokio::spawn(accept_loop(
            Arc::from(spec.service.name.as_str()),
            listener,
            handler.clone(),
            open.clone(),
            Stop {
                accept: accept.clone(),
                handover: handover.clone(),
                tunnels: tunnels.clone(),
                release: release.clone(),
            },
            self.tunnels.clone(),
            self.lingering.clone(),
        ));
        Running {
            spec,
            local,
            handler,
            open,
            accept,
            tunnels,
            release,
            accept_task,
            socket,
            handover,
        }
    }

    /// Stops accepting on every service (shutdown) and waits until their listeners are
    /// closed; open tunnels run on, and so do connections that outlive their listener.
    pub async fn stop_accepting(&mut self) {
        self.stopped
            .extend(self.services.values().map(|r| r.tunnels.clone()));
        for running in self.services.values() {
            running.accept.cancel();
            running.handler.load().retired.cancel();
        }
        for (_, running) in self.services.drain() {
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, running.accept_task).await;
        }
    }

    /// Cuts the open tunnels of every service [`Supervisor::stop_accepting`] stopped: each
    /// ends, and logs and counts what it moved, at its next poll.
    pub fn close_tunnels(&self) {
        for tunnels in &self.stopped {
            tunnels.cancel();
        }
    }

    /// At exit, after [`Supervisor::stop_accepting`] and the drain: closes the connections
    /// that outlived every stopped listener, of this shutdown or of an earlier reload, and
    /// waits (briefly) until their peers have been told, as they would otherwise keep using
    /// them until their idle timeout.
    pub async fn close_lingering(&self) {
        self.exiting.cancel();
        self.lingering.close();
        if tokio::time::timeout(EXIT_CLOSE_TIMEOUT, self.lingering.wait())
            .await
            .is_err()
        {
            tracing::debug!(
                listeners = self.lingering.len(),
                "stopped listeners still closing their connections"
            );
        }
    }
}

/// How long a stopping service's accept loop may take to end and release its address. It
/// includes, for a listener whose connections share its socket, closing them
/// ([`crate::h3::CLOSE_TIMEOUT`]) when a new service wants the address.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a listener that handed its socket over to a new one still delivers the
/// connections whose handshake (TLS, WebSocket, HTTP/2) it began before: they are served by
/// the handler they were accepted for, as a connection accepted just before any reload is.
const HANDOVER_DRAIN: Duration = Duration::from_secs(3);

/// How long exit waits for stopped listeners to close the connections they still serve: each
/// takes at most [`crate::h3::CLOSE_TIMEOUT`], all at once; this bounds the exit should one
/// not keep to it.
const EXIT_CLOSE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Listeners with a handshake close their socket in a task of their own, which ends shortly
/// after the listener is dropped; bind attempts are retried briefly while that happens.
async fn bind_after_release(bind: &server::BindListener) -> Result<Box<dyn Listener>, ConfigError> {
    const ATTEMPTS: u32 = 50;
    const PAUSE: Duration = Duration::from_millis(2);
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match bind() {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(PAUSE).await;
    }
    Err(last.expect("at least one attempt"))
}

/// The tokens a service is stopped with; see [`Running`].
struct Stop {
    accept: CancellationToken,
    // Cancelled before `accept` when the listening socket goes to a new listener.
    handover: CancellationToken,
    tunnels: CancellationToken,
    release: CancellationToken,
}

async fn accept_loop(
    name: Arc<str>,
    listener: Box<dyn Listener>,
    handler: Arc<ArcSwap<HandlerSlot>>,
    open: Arc<AtomicUsize>,
    stop: Stop,
    tunnels: TaskTracker,
    lingering: TaskTracker,
) {
    let cancel_tunnels = stop.tunnels;
    // Set while a listener that handed its socket over delivers the connections whose
    // handshake it began: until then.
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.accept.cancelled(), if draining.is_none() => {
                if stop.handover.is_cancelled() && listener.stop_accepting() {
                    draining = Some(tokio::time::Instant::now() + HANDOVER_DRAIN);
                    continue;
                }
                break;
            }
            _ = tokio::time::sleep_until(draining.unwrap_or_else(tokio::time::Instant::now)), if draining.is_some() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((conn, client)) => {
                let slot = handler.load();
                // Counted only while under the limit, in one step: a replaced service's old
                // and new accept loops may run side by side for a moment on the same count.
                let admitted = open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < slot.limit).then_some(n + 1)
                });
                if admitted.is_err() {
                    // Refused at the door: the client sees its connection closed at once.
                    crate::metrics::connection_refused(&name);
                    tracing::debug!(service = %name, client = %client, "connection limit reached; refused");
                    drop(conn);
                    continue;
                }
                let permit = Admitted(open.clone());
                let handler = slot.handler.clone();
                let request = crate::metrics::Request::start(&name, client);
                let conn = crate::conn::Guarded::boxed(conn, (permit, request));
                let cancel = cancel_tunnels.clone();
                let signals = crate::handler::ConnSignals {
                    closing: cancel.clone(),
                    retired: slot.retired.clone(),
                    stopping: stop.accept.clone(),
                };
                tunnels.spawn(crate::handler::serving(signals, async move {
                    // The handler first: its tunnel sees the same signal and ends
                    // itself, logging what it moved.
                    tokio::select! {
                        biased;
                        _ = handler.handle(conn, client) => {}
                        _ = cancel.cancelled() => {}
                    }
                }));
            }
            Err(_) if draining.is_some() => break,
            Err(e) => {
                tracing::warn!(service = %name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    tracing::info!(service = %name, "stopped accepting");
    if let Some(linger) = listener.linger(stop.release.clone()) {
        if stop.release.is_cancelled() {
            // Its address is wanted now: free before this loop ends, which `apply` waits for.
            linger.await;
        } else {
            lingering.spawn(linger);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(md: &[(&str, &str)]) -> ServiceSpec {
        let mut service = ServiceConfig {
            name: "s".into(),
            addr: "127.0.0.1:0".into(),
            ..ServiceConfig::default()
        };
        for (k, v) in md {
            service.metadata.insert_str(k, v);
        }
        ServiceSpec::of(&service, &Config::default())
    }

    fn service(addr: &str, listener: ListenerType) -> ServiceConfig {
        let mut service = ServiceConfig {
            name: "s".into(),
            addr: addr.into(),
            ..ServiceConfig::default()
        };
        service.listener.kind = listener;
        service
    }

    #[test]
    fn spellings_of_one_socket_clash() {
        let key = |addr: &str, listener| BindKey::of(&service(addr, listener));
        let tcp = ListenerType::Tcp;
        let clash = |a: &str, b: &str| key(a, tcp).unwrap().clashes(&key(b, tcp).unwrap());
        for (a, b) in [
            (":8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:8080", "[::1]:8080"),
            ("127.0.0.1:8080", "localhost:8080"),
            ("127.0.0.1:8080", "127.0.0.1:08080"),
        ] {
            assert!(clash(a, b), "{a} and {b}");
            assert!(clash(b, a), "{b} and {a}");
        }
        for (a, b) in [
            ("127.0.0.1:8080", "127.0.0.1:8081"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("127.0.0.1:8080", "[::1]:8080"),
            // 0.0.0.0 is every IPv4 address only.
            ("0.0.0.0:8080", "[::1]:8080"),
        ] {
            assert!(!clash(a, b), "{a} and {b}");
            assert!(!clash(b, a), "{b} and {a}");
        }
        // An IPv4-mapped address is the IPv4 one.
        assert!(clash("127.0.0.1:8080", "[::ffff:127.0.0.1]:8080"));
        // h3 binds UDP: no clash with a TCP listener on the same port.
        let h3 = |addr: &str| key(addr, ListenerType::H3).unwrap();
        assert!(!h3(":8443").clashes(&key(":8443", tcp).unwrap()));
        assert!(h3(":8443").clashes(&h3("127.0.0.1:8443")));
        // Its explicit `[::]` is IPv6 only: the usual pair with 0.0.0.0.
        assert!(!h3("[::]:8443").clashes(&h3("0.0.0.0:8443")));
        assert!(h3("[::]:8443").clashes(&h3("[::1]:8443")));
        // Port 0 is a new port at every bind.
        assert!(key("127.0.0.1:0", tcp).is_none());
    }

    /// A service whose listener or handler names its own certificate takes nothing from the
    /// top-level `tls` section (not its CA either): a change there leaves it alone.
    #[test]
    fn top_level_tls_matters_only_where_the_default_certificate_is_served() {
        let top = |name: &str| Config {
            tls: Some(TlsConfig {
                common_name: Some(name.into()),
                ..TlsConfig::default()
            }),
            ..Config::default()
        };
        let own = TlsConfig {
            cert_file: Some("a.crt".into()),
            key_file: Some("a.key".into()),
            ..TlsConfig::default()
        };
        let changes = |service: &ServiceConfig| {
            ServiceSpec::of(service, &top("one")) != ServiceSpec::of(service, &top("two"))
        };
        let mut tls = service("127.0.0.1:0", ListenerType::Tls);
        tls.handler.kind = HandlerType::Http;
        assert!(changes(&tls), "default certificate");
        tls.listener.tls = Some(own.clone());
        assert!(!changes(&tls), "own certificate");
        let mut socks = service("127.0.0.1:0", ListenerType::Tcp);
        socks.handler.kind = HandlerType::Socks5;
        assert!(
            changes(&socks),
            "SOCKS5 TLS methods with the default certificate"
        );
        socks.handler.tls = Some(own.clone());
        assert!(!changes(&socks), "SOCKS5 TLS methods with its own");
        // A TLS listener with its own certificate and a SOCKS5 handler on the default one.
        let mut both = service("127.0.0.1:0", ListenerType::Tls);
        both.handler.kind = HandlerType::Socks5;
        both.listener.tls = Some(own);
        assert!(changes(&both));
        assert!(
            ServiceSpec::of(&both, &top("one")).listener_part()
                == ServiceSpec::of(&both, &top("two")).listener_part(),
            "only the handler is swapped"
        );
    }

    #[test]
    fn a_keepalive_change_rebinds_the_listener_and_other_limits_only_swap_the_handler() {
        let base = spec_with(&[]);
        for changed in [
            spec_with(&[("keepAlive", "false")]),
            spec_with(&[("keepAlivePeriod", "2m")]),
        ] {
            assert!(changed != base, "a service change");
            assert!(changed.listener_part() != base.listener_part());
        }
        for handler_only in [
            spec_with(&[("authFailureLimit", "2")]),
            spec_with(&[("maxConnections", "5")]),
        ] {
            assert!(handler_only != base, "a service change");
            assert!(handler_only.listener_part() == base.listener_part());
        }
    }
}
