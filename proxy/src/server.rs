//! Turning a configuration into handlers, listeners and chains; [`crate::supervisor`] runs them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gost_api::{
    ChainConfig, Config, ConfigError, ConnectorType, DialerConfig, DialerType, HandlerType,
    HopConfig, ListenerType, Metadata, SelectorStrategy, ServiceConfig,
};
use tokio_util::task::TaskTracker;

use crate::addr::Address;
use crate::auth::{Authenticator, DEFAULT_AUTH_FAILURE_LIMIT, MAX_AUTH_FAILURE_LIMIT};
use crate::chain::{
    Chain, DEFAULT_DIAL_TIMEOUT, DEFAULT_FAIL_TIMEOUT, DEFAULT_MAX_FAILS, Hop, Node, Router,
    Selection,
};
use crate::conn::{KeepAlive, MAX_KEEPALIVE_IDLE, MIN_KEEPALIVE_IDLE, TCP_KEEPALIVE_IDLE};
use crate::connector::Connector;
use crate::connector::http::HttpConnector;
use crate::connector::http2::Http2Connector;
use crate::connector::relay::RelayConnector;
use crate::connector::socks5::Socks5Connector;
use crate::dialer::Dialer;
use crate::dialer::h2::{H2Dialer, Http2Dialer};
use crate::dialer::tcp::TcpDialer;
use crate::dialer::tls::TlsDialer;
use crate::handler::auto::AutoHandler;
use crate::handler::http::{
    HttpHandler, MAX_HEADER_SIZE_LIMIT, MAX_REQUEST_HEAD, MIN_HEADER_SIZE_LIMIT,
};
use crate::handler::relay::RelayHandler;
use crate::handler::socks4::Socks4Handler;
use crate::handler::socks5::Socks5Handler;
use crate::handler::{DEFAULT_HANDSHAKE_TIMEOUT, Handler, HandlerEnv};
use crate::listener::Listener;
use crate::listener::tcp::TcpListenerImpl;
use crate::tls::{ClientTls, LazyServerTls, ServerTls, TlsDefaults};

fn field(path: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        path,
        message: message.into(),
    }
}

fn not_implemented(path: String, what: &str, name: &str) -> ConfigError {
    field(
        path,
        format!("{what} type `{name}` is not implemented in this build of gost-rs yet"),
    )
}

/// Whether this build has a connector of type `kind` (gost-api records the list, which the
/// CRDs' schema follows). [`build_chains`] refuses the others, and the command line refuses them
/// by name (`-F socks4://...`), as it does the connectors gost-api does not know, so that `-O`
/// does not print a configuration that cannot run.
pub fn connector_implemented(kind: ConnectorType) -> bool {
    kind.implemented()
}

/// `-L http3://` is GOST's HTTP/3 reverse proxy (listener and handler `http3`, gost-wire.md
/// §9.2), not the PHT tunnel over HTTP/3, which is `h3`.
const HTTP3_REVERSE_PROXY: &str = "type `http3` is GOST's HTTP/3 reverse proxy, which is not \
     implemented in this build of gost-rs; the plain HTTP tunnel over HTTP/3 is listener type `h3` \
     (-L h3://...)";

/// The chains of `config`, by name.
pub fn build_chains(config: &Config) -> Result<HashMap<String, Arc<Chain>>, ConfigError> {
    let mut chains = HashMap::new();
    for (i, chain) in config.chains.iter().enumerate() {
        chains.insert(chain.name.clone(), Arc::new(build_chain(chain, config, i)?));
    }
    Ok(chains)
}

/// Builds the handler of `config.services[i]` (its chain from `chains`).
pub fn build_service(
    config: &Config,
    i: usize,
    chains: &HashMap<String, Arc<Chain>>,
    tls_defaults: &Arc<TlsDefaults>,
    tunnels: &TaskTracker,
) -> Result<Arc<dyn Handler>, ConfigError> {
    let service = &config.services[i];
    let path = format!("services[{i}]");
    if service.listener.kind == ListenerType::Http3 {
        return Err(field(format!("{path}.listener.type"), HTTP3_REVERSE_PROXY));
    }
    // GOST's `ignoreChain` (service metadata; the command line puts a URL's query there):
    // the service dials directly although a chain is named, as `-L ...?ignoreChain=true`
    // beside `-F` asks.
    let ignore_chain = service
        .metadata
        .bool(&["ignoreChain"])
        .map_err(|e| field(format!("{path}.metadata.ignoreChain"), e.to_string()))?
        .unwrap_or(false);
    let chain = service
        .handler
        .chain
        .as_deref()
        .filter(|_| !ignore_chain)
        .map(|name| chains[name].clone());
    let dial_timeout = duration(
        &service.metadata,
        "dialTimeout",
        &format!("{path}.metadata"),
    )?
    .unwrap_or(DEFAULT_DIAL_TIMEOUT);
    let md = &service.handler.metadata;
    let md_path = format!("{path}.handler.metadata");
    let auth_failure_limit = auth_failure_limit(service, i)?;
    let env = Arc::new(HandlerEnv {
        service: Arc::from(service.name.as_str()),
        auth: Authenticator::for_handler(&service.handler, config)
            .map(|auth| auth.with_failure_limit(auth_failure_limit)),
        router: Router::new(chain, dial_timeout, service.handler.retries.unwrap_or(0))
            .with_keepalive(keepalive(service, i)?)
            .with_hash_by_target(hash_by_target(md, &md_path)?),
        metadata: md.clone(),
        max_header_size: max_header_size(md, &md_path)?,
        // As in GOST, zero (or less) is the default, not "no time at all".
        handshake_timeout: duration(md, "readTimeout", &md_path)?
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        response_timeout: response_timeout(md, &md_path)?,
        idle_timeout: idle_timeout(service.handler.kind, md, &md_path)?,
        tunnels: tunnels.clone(),
        tls: handler_tls(service, tls_defaults, &path)?,
    });
    let handler_path = format!("{path}.handler");
    // Checked here as well as at binding: a reload that changes only the handler keeps the
    // listener, and an `http2` listener hands its handler HTTP/2 requests, not streams.
    if service.listener.kind == ListenerType::Http2 && service.handler.kind != HandlerType::Http2 {
        return Err(field(
            format!("{path}.listener.type"),
            "listener type `http2` works only with handler type `http2`",
        ));
    }
    let handler: Arc<dyn Handler> = match service.handler.kind {
        HandlerType::Auto => Arc::new(AutoHandler::new(env).map_err(|e| field(handler_path, e))?),
        HandlerType::Http => Arc::new(HttpHandler::new(env).map_err(|e| field(handler_path, e))?),
        HandlerType::Socks5 => Arc::new(Socks5Handler::new(env)),
        HandlerType::Socks4 => Arc::new(Socks4Handler::new(env)),
        HandlerType::Http2 => {
            if service.listener.kind != ListenerType::Http2 {
                return Err(field(
                    format!("{handler_path}.type"),
                    "handler type `http2` works only with listener type `http2`",
                ));
            }
            Arc::new(
                crate::handler::http2::Http2Handler::new(env)
                    .map_err(|e| field(handler_path, e))?,
            )
        }
        HandlerType::Relay if service.forwarder.is_some() => {
            return Err(field(
                handler_path,
                "relay forward mode (targets in the URL path or a forwarder) is not \
                 implemented in this build of gost-rs yet",
            ));
        }
        HandlerType::Relay => Arc::new(RelayHandler::new(env)),
        other => {
            return Err(not_implemented(
                format!("{handler_path}.type"),
                "handler",
                other.as_str(),
            ));
        }
    };
    Ok(handler)
}

/// Binds a prepared listener: every check and file is done, only the address is left.
pub type BindListener = Box<dyn Fn() -> Result<Box<dyn Listener>, ConfigError> + Send + Sync>;

/// Binds the listener of `config.services[i]`.
pub fn bind_listener(
    config: &Config,
    i: usize,
    tls_defaults: &TlsDefaults,
) -> Result<Box<dyn Listener>, ConfigError> {
    prepare_listener(config, i, tls_defaults)?()
}

/// Everything the listener of `config.services[i]` needs but its address: metadata checked,
/// certificates read. A reload that moves a service to a new listener on the same address
/// prepares it before the old one lets go of the address, so that a broken certificate
/// refuses the configuration instead of leaving the address unserved.
pub fn prepare_listener(
    config: &Config,
    i: usize,
    tls_defaults: &TlsDefaults,
) -> Result<BindListener, ConfigError> {
    let service = &config.services[i];
    let path = format!("services[{i}]");
    let is_http2_handler = service.handler.kind == HandlerType::Http2;
    let keepalive = listener_keepalive(service, i)?;
    // Settings only a TLS server applies: set on a listener that serves none, they would look
    // in force and are not.
    let sets_server_tls = service.listener.tls.as_ref().is_some_and(|t| {
        t.cert_file.is_some()
            || t.key_file.is_some()
            || t.ca_file.is_some()
            || t.options.is_some()
            || t.reject_unknown_sni
            || !t.server_names.is_empty()
    });
    if sets_server_tls && !crate::supervisor::listener_serves_tls(service.listener.kind) {
        // As GOST warns: `tls+ws://` is the tls handler's scheme, not TLS around ws.
        tracing::warn!(
            service = %service.name,
            listener = service.listener.kind.as_str(),
            "{path}.listener.tls is ignored: this listener does not serve TLS (tls, wss, h2, http2, grpc, phts and h3 do); its connections are plaintext"
        );
    }
    let addr = service.addr.clone();
    let failed = {
        let (path, addr) = (path.clone(), addr.clone());
        move |e: std::io::Error| cannot_listen(&path, &addr, e)
    };
    let bind: BindListener = match service.listener.kind {
        ListenerType::Tcp => Box::new(move || {
            Ok(Box::new(
                TcpListenerImpl::bind(&addr)
                    .map_err(&failed)?
                    .with_keepalive(keepalive),
            ))
        }),
        ListenerType::Tls => {
            let tls = ServerTls::new(
                &service.name,
                service.listener.tls.as_ref(),
                tls_defaults,
                &[],
            )
            .map_err(|e| field(format!("{path}.listener.tls"), e))?;
            Box::new(move || {
                Ok(Box::new(
                    crate::listener::tls::bind(&addr, tls.clone(), keepalive).map_err(&failed)?,
                ))
            })
        }
        ListenerType::Ws | ListenerType::Wss => {
            let tls = match service.listener.kind {
                ListenerType::Wss => Some(
                    ServerTls::new(
                        &service.name,
                        service.listener.tls.as_ref(),
                        tls_defaults,
                        &[],
                    )
                    .map_err(|e| field(format!("{path}.listener.tls"), e))?,
                ),
                _ => None,
            };
            let options = crate::listener::ws::WsOptions::from_metadata(&service.listener.metadata)
                .map_err(|e| field(format!("{path}.listener.metadata"), e))?;
            Box::new(move || {
                Ok(Box::new(
                    crate::listener::ws::bind(&addr, tls.clone(), options.clone(), keepalive)
                        .map_err(&failed)?,
                ))
            })
        }
        ListenerType::H2 | ListenerType::H2c => {
            let tls = if service.listener.kind == ListenerType::H2 {
                Some(
                    ServerTls::new(
                        &service.name,
                        service.listener.tls.as_ref(),
                        tls_defaults,
                        crate::listener::http2::ALPN,
                    )
                    .map_err(|e| field(format!("{path}.listener.tls"), e))?,
                )
            } else {
                None
            };
            let h2_path = service
                .listener
                .metadata
                .string(&["path"])
                .filter(|p| !p.is_empty());
            Box::new(move || {
                Ok(Box::new(
                    crate::listener::h2::bind(&addr, tls.clone(), h2_path.clone(), keepalive)
                        .map_err(&failed)?,
                ))
            })
        }
        ListenerType::Grpc => {
            let options =
                crate::listener::grpc::GrpcOptions::from_metadata(&service.listener.metadata)
                    .map_err(|e| field(format!("{path}.listener.metadata"), e))?;
            let tls = if options.insecure {
                None
            } else {
                Some(
                    ServerTls::new(
                        &service.name,
                        service.listener.tls.as_ref(),
                        tls_defaults,
                        &[b"h2"],
                    )
                    .map_err(|e| field(format!("{path}.listener.tls"), e))?,
                )
            };
            Box::new(move || {
                Ok(Box::new(
                    crate::listener::grpc::bind(&addr, tls.clone(), options.clone(), keepalive)
                        .map_err(&failed)?,
                ))
            })
        }
        ListenerType::Http2 => {
            if !is_http2_handler {
                return Err(field(
                    format!("{path}.listener.type"),
                    "listener type `http2` works only with handler type `http2`",
                ));
            }
            let tls = ServerTls::new(
                &service.name,
                service.listener.tls.as_ref(),
                tls_defaults,
                crate::listener::http2::ALPN,
            )
            .map_err(|e| field(format!("{path}.listener.tls"), e))?;
            Box::new(move || {
                Ok(Box::new(
                    crate::listener::http2::bind(&addr, tls.clone(), keepalive).map_err(&failed)?,
                ))
            })
        }
        ListenerType::Pht | ListenerType::Phts => {
            let tls = match service.listener.kind {
                ListenerType::Phts => Some(
                    ServerTls::new(
                        &service.name,
                        service.listener.tls.as_ref(),
                        tls_defaults,
                        &[],
                    )
                    .map_err(|e| field(format!("{path}.listener.tls"), e))?,
                ),
                _ => None,
            };
            let paths = crate::pht::Paths::from_metadata(&service.listener.metadata);
            let name = service.name.clone();
            Box::new(move || {
                Ok(Box::new(
                    crate::listener::pht::bind(&addr, tls.clone(), &name, paths.clone(), keepalive)
                        .map_err(&failed)?,
                ))
            })
        }
        ListenerType::H3 => {
            let options = service
                .listener
                .tls
                .as_ref()
                .and_then(|t| t.options.as_ref());
            if crate::tls::rule_out_tls13(options) {
                return Err(field(
                    format!("{path}.listener.tls.options.maxVersion"),
                    QUIC_NEEDS_TLS13,
                ));
            }
            let tls = ServerTls::new(
                &service.name,
                service.listener.tls.as_ref(),
                tls_defaults,
                crate::h3::ALPN,
            )
            .map_err(|e| field(format!("{path}.listener.tls"), e))?;
            let options = crate::listener::h3::H3Options::from_metadata(&service.listener.metadata)
                .map_err(|e| field(format!("{path}.listener.metadata"), e))?;
            let name = service.name.clone();
            Box::new(move || {
                Ok(Box::new(
                    crate::listener::h3::bind(&name, &addr, &tls, options.clone())
                        .map_err(&failed)?,
                ))
            })
        }
        other => {
            return Err(not_implemented(
                format!("{path}.listener.type"),
                "listener",
                other.as_str(),
            ));
        }
    };
    Ok(bind)
}

/// Why an `h3` listener or dialer refuses a `maxVersion` below TLS 1.3.
const QUIC_NEEDS_TLS13: &str = "h3 runs over QUIC, which needs TLS 1.3: leave maxVersion out or \
     set it to VersionTLS13";

/// The handler's TLS for SOCKS5's TLS methods: `handler.tls`, else the defaults, unless
/// `notls` is set or the handler does not speak SOCKS5.
fn handler_tls(
    service: &gost_api::ServiceConfig,
    defaults: &Arc<TlsDefaults>,
    path: &str,
) -> Result<Option<LazyServerTls>, ConfigError> {
    let md_path = format!("{path}.handler.metadata");
    let notls = service
        .handler
        .metadata
        .bool(&["notls"])
        .map_err(|e| field(md_path, e.to_string()))?
        .unwrap_or(false);
    if notls
        || !matches!(
            service.handler.kind,
            HandlerType::Socks5 | HandlerType::Auto
        )
    {
        return Ok(None);
    }
    LazyServerTls::new(&service.name, service.handler.tls.as_ref(), defaults)
        .map(Some)
        .map_err(|e| field(format!("{path}.handler.tls"), e))
}

fn cannot_listen(path: &str, addr: &str, e: std::io::Error) -> ConfigError {
    field(
        format!("{path}.addr"),
        format!("cannot listen on {addr:?}: {e}"),
    )
}

/// A duration metadata value; `None` when unset or negative (GOST's "disabled").
fn duration(md: &Metadata, key: &str, path: &str) -> Result<Option<Duration>, ConfigError> {
    md.duration(&[key])
        .map(Option::flatten)
        .map_err(|e| field(path.to_string(), e.to_string()))
}

/// How long a target may take to answer a forwarded HTTP request once it is sent: handler
/// metadata `readTimeout`, as GOST's `http` handler reads it (unset or zero: 15 s; negative: no
/// limit).
fn response_timeout(md: &Metadata, md_path: &str) -> Result<Option<Duration>, ConfigError> {
    let set = md
        .duration(&["readTimeout"])
        .map_err(|e| field(md_path.to_string(), e.to_string()))?;
    Ok(match set {
        Some(None) => None,
        Some(Some(d)) if !d.is_zero() => Some(d),
        _ => Some(DEFAULT_HANDSHAKE_TIMEOUT),
    })
}

/// How long a tunnel may carry nothing (either way) before it is closed: handler metadata
/// `idleTimeout` (GOST's, on its http handler); on the `http2` handler also `readTimeout`
/// (`read.timeout`), the first of them above zero. GOST's http2 handler reads `readTimeout` as
/// its tunnels' idle timeout, since its streams have no handshake to time; it times only the
/// target's side, so it also ends a tunnel whose client uploads for that long to a silent
/// target, which this does not. Zero or less: no limit.
fn idle_timeout(
    kind: HandlerType,
    md: &Metadata,
    md_path: &str,
) -> Result<Option<Duration>, ConfigError> {
    let mut keys = vec!["idleTimeout"];
    if kind == HandlerType::Http2 {
        keys.extend(["readTimeout", "read.timeout"]);
    }
    for key in keys {
        let set = md
            .duration(&[key])
            .map_err(|e| field(md_path.to_string(), e.to_string()))?;
        if let Some(d) = set.flatten().filter(|d| !d.is_zero()) {
            return Ok(Some(d));
        }
    }
    Ok(None)
}

/// A service's TCP keepalive, for the sockets its listener accepts and those its dials open:
/// service metadata `keepAlive` (on unless `false`) and `keepAlivePeriod` (silence before the
/// first probe). GOST's own keys, on listeners and dialers, are read by [`listener_keepalive`]
/// and [`node_keepalive`].
pub fn keepalive(service: &ServiceConfig, i: usize) -> Result<KeepAlive, ConfigError> {
    let md = &service.metadata;
    let on = md
        .bool(&["keepAlive"])
        .map_err(|e| field(format!("services[{i}].metadata.keepAlive"), e.to_string()))?
        .unwrap_or(true);
    if !on {
        return Ok(KeepAlive::Off);
    }
    let period_path = || format!("services[{i}].metadata.keepAlivePeriod");
    let idle = match md.duration(&["keepAlivePeriod"]) {
        Err(e) => return Err(field(period_path(), e.to_string())),
        Ok(None) => TCP_KEEPALIVE_IDLE,
        Ok(Some(Some(idle))) if (MIN_KEEPALIVE_IDLE..=MAX_KEEPALIVE_IDLE).contains(&idle) => idle,
        Ok(Some(_)) => {
            return Err(field(
                period_path(),
                format!(
                    "must be between {}s and {}s (use keepAlive: false to turn keepalive off)",
                    MIN_KEEPALIVE_IDLE.as_secs(),
                    MAX_KEEPALIVE_IDLE.as_secs()
                ),
            ));
        }
    };
    Ok(KeepAlive::after(idle))
}

/// The TCP keepalive a service's listener gives the sockets it accepts: GOST's listener keys
/// (`keepalive`, `keepalive.idle`, `.interval`, `.count`; `tcp.keepalive…` on `grpc`, whose
/// `keepalive` is gRPC's) when turned on, else the service's [`keepalive`].
fn listener_keepalive(service: &ServiceConfig, i: usize) -> Result<KeepAlive, ConfigError> {
    let prefix = match service.listener.kind {
        ListenerType::Grpc => "tcp.",
        // QUIC: its `keepalive` is QUIC's own, and it accepts no TCP sockets.
        ListenerType::H3 | ListenerType::Http3 => return keepalive(service, i),
        _ => "",
    };
    match crate::conn::gost_keepalive(&service.listener.metadata, prefix) {
        Err((key, message)) => Err(field(
            format!("services[{i}].listener.metadata.{key}"),
            message,
        )),
        Ok(Some(keepalive)) => Ok(keepalive),
        Ok(None) => keepalive(service, i),
    }
}

/// The TCP keepalive for the sockets a node's dialer opens (when the node is on a chain's
/// first hop): GOST's dialer keys when turned on (`tcp.keepalive…` on `ws`/`wss` and `grpc`,
/// whose `keepalive` is the protocol's own), else `None`: the dialling service's. `h3` runs
/// over UDP and has none.
fn node_keepalive(dialer: &DialerConfig, path: &str) -> Result<Option<KeepAlive>, ConfigError> {
    let prefix = match dialer.kind {
        DialerType::Ws | DialerType::Wss | DialerType::Grpc => "tcp.",
        DialerType::H3 | DialerType::Http3 => return Ok(None),
        _ => "",
    };
    crate::conn::gost_keepalive(&dialer.metadata, prefix)
        .map_err(|(key, message)| field(format!("{path}.dialer.metadata.{key}"), message))
}

/// Whether the chain's `hash` hops key on the target: handler metadata `hash: host`, GOST's
/// only value. Otherwise they key on the client's address (an authenticated user first).
fn hash_by_target(md: &Metadata, md_path: &str) -> Result<bool, ConfigError> {
    match md.string(&["hash"]).as_deref() {
        None | Some("") => Ok(false),
        Some("host") => Ok(true),
        Some(other) => Err(field(
            format!("{md_path}.hash"),
            format!(
                "unknown value {other:?}: `host` makes hash selection key on the target; \
                 leave it out to key on the client"
            ),
        )),
    }
}

/// The largest request head the handler accepts: handler metadata `maxHeaderSize` (bytes).
fn max_header_size(md: &Metadata, md_path: &str) -> Result<usize, ConfigError> {
    let path = || format!("{md_path}.maxHeaderSize");
    match md.int(&["maxHeaderSize"]) {
        Err(e) => Err(field(path(), e.to_string())),
        Ok(None) => Ok(MAX_REQUEST_HEAD),
        Ok(Some(n)) => usize::try_from(n)
            .ok()
            .filter(|n| (MIN_HEADER_SIZE_LIMIT..=MAX_HEADER_SIZE_LIMIT).contains(n))
            .ok_or_else(|| {
                field(
                    path(),
                    format!(
                        "must be between {MIN_HEADER_SIZE_LIMIT} and {MAX_HEADER_SIZE_LIMIT} bytes, got {n}"
                    ),
                )
            }),
    }
}

/// Failed authentications a client address may make a minute before it is refused unchecked:
/// `authFailureLimit` in the service's metadata, else its handler's; 0 turns the limit off.
fn auth_failure_limit(service: &ServiceConfig, i: usize) -> Result<u32, ConfigError> {
    let key = ["authFailureLimit"];
    let (value, path) = match service.metadata.int(&key) {
        Ok(None) => (
            service.handler.metadata.int(&key),
            format!("services[{i}].handler.metadata.authFailureLimit"),
        ),
        other => (other, format!("services[{i}].metadata.authFailureLimit")),
    };
    match value {
        Err(e) => Err(field(path, e.to_string())),
        Ok(None) => Ok(DEFAULT_AUTH_FAILURE_LIMIT),
        Ok(Some(n)) => u32::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_AUTH_FAILURE_LIMIT)
            .ok_or_else(|| {
                field(
                    path,
                    format!(
                        "must be a number of failures a minute from 0 (no limit) to \
                         {MAX_AUTH_FAILURE_LIMIT}, got {n}"
                    ),
                )
            }),
    }
}

fn build_chain(chain: &ChainConfig, config: &Config, index: usize) -> Result<Chain, ConfigError> {
    let hops = chain
        .hops
        .iter()
        .enumerate()
        .map(|(j, hop)| {
            let path = format!("chains[{index}].hops[{j}]");
            // A hop with a name and no nodes stands for the top-level hop of that name. A
            // later hop's `parallel` strategy was refused by `gost_api::validate`.
            let (hop, path) = if hop.is_reference() {
                let k = config
                    .hops
                    .iter()
                    .position(|h| h.name == hop.name)
                    .expect("validated: named hops exist");
                (&config.hops[k], format!("hops[{k}]"))
            } else {
                (hop, path)
            };
            build_hop(hop, &path)
        })
        .collect::<Result<_, _>>()?;
    Ok(Chain {
        name: chain.name.clone(),
        hops,
    })
}

fn build_hop(hop: &HopConfig, path: &str) -> Result<Hop, ConfigError> {
    let selector = hop.selector.clone().unwrap_or_default();
    // As in GOST, a zero (or negative) `failTimeout` or `maxFails` is the default: GOST prints
    // both for a selector that left them out.
    let fail_timeout = match &selector.fail_timeout {
        Some(text) => gost_api::metadata::parse_go_duration(text)
            .map_err(|e| field(format!("{path}.selector.failTimeout"), e))?
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_FAIL_TIMEOUT),
        None => DEFAULT_FAIL_TIMEOUT,
    };
    if hop.nodes.is_empty() && hop.file_nodes.is_empty() {
        return Err(field(
            format!("{path}.file"),
            "the file lists no node, and the hop has none of its own",
        ));
    }
    let inline = hop
        .nodes
        .iter()
        .enumerate()
        .map(|(k, node)| (format!("{path}.nodes[{k}]"), node));
    let from_file = hop
        .file_nodes
        .iter()
        .enumerate()
        .map(|(k, node)| (format!("{path}.file[{k}]"), node));
    let nodes = inline
        .chain(from_file)
        .map(|(path, node)| {
            let addr = Address::parse(&node.addr)
                .map_err(|e| field(format!("{path}.addr"), e.to_string()))?;
            let dialer: Arc<dyn Dialer> = match node.dialer.kind {
                DialerType::Tcp => Arc::new(TcpDialer),
                DialerType::Tls => Arc::new(TlsDialer::new(
                    ClientTls::new(node.dialer.tls.as_ref(), &[])
                        .map_err(|e| field(format!("{path}.dialer.tls"), e))?,
                )),
                DialerType::Ws | DialerType::Wss => {
                    let tls = match node.dialer.kind {
                        DialerType::Wss => Some(
                            ClientTls::new(node.dialer.tls.as_ref(), &[])
                                .map_err(|e| field(format!("{path}.dialer.tls"), e))?,
                        ),
                        _ => None,
                    };
                    Arc::new(
                        crate::dialer::ws::WsDialer::new(&node.dialer.metadata, &node.addr, tls)
                            .map_err(|e| field(format!("{path}.dialer.metadata"), e))?,
                    )
                }
                DialerType::H2 | DialerType::H2c => {
                    let tls = if node.dialer.kind == DialerType::H2 {
                        Some(
                            ClientTls::new(node.dialer.tls.as_ref(), &[b"h2"])
                                .map_err(|e| field(format!("{path}.dialer.tls"), e))?,
                        )
                    } else {
                        None
                    };
                    Arc::new(
                        H2Dialer::new(tls, &node.dialer.metadata)
                            .map_err(|e| field(format!("{path}.dialer.metadata"), e))?,
                    )
                }
                DialerType::Grpc => Arc::new(
                    crate::dialer::grpc::GrpcDialer::new(
                        ClientTls::new(node.dialer.tls.as_ref(), &[b"h2"])
                            .map_err(|e| field(format!("{path}.dialer.tls"), e))?,
                        &node.dialer.metadata,
                    )
                    .map_err(|e| field(format!("{path}.dialer.metadata"), e))?,
                ),
                DialerType::Http2 => {
                    if node.connector.kind != ConnectorType::Http2 {
                        return Err(field(
                            format!("{path}.dialer.type"),
                            "dialer type `http2` works only with connector type `http2`",
                        ));
                    }
                    Arc::new(Http2Dialer::new(
                        ClientTls::new(node.dialer.tls.as_ref(), crate::listener::http2::ALPN)
                            .map_err(|e| field(format!("{path}.dialer.tls"), e))?,
                    ))
                }
                DialerType::Pht | DialerType::Phts => {
                    let tls = match node.dialer.kind {
                        DialerType::Phts => Some(
                            ClientTls::new(node.dialer.tls.as_ref(), crate::dialer::pht::ALPN)
                                .map_err(|e| field(format!("{path}.dialer.tls"), e))?,
                        ),
                        _ => None,
                    };
                    Arc::new(
                        crate::dialer::pht::PhtDialer::new(&node.dialer.metadata, &addr, tls)
                            .map_err(|e| field(format!("{path}.dialer.metadata"), e))?,
                    )
                }
                DialerType::H3 | DialerType::Http3 => {
                    let options = node.dialer.tls.as_ref().and_then(|t| t.options.as_ref());
                    if crate::tls::rule_out_tls13(options) {
                        return Err(field(
                            format!("{path}.dialer.tls.options.maxVersion"),
                            QUIC_NEEDS_TLS13,
                        ));
                    }
                    let tls = ClientTls::new(node.dialer.tls.as_ref(), crate::h3::ALPN)
                        .map_err(|e| field(format!("{path}.dialer.tls"), e))?;
                    Arc::new(
                        crate::dialer::h3::H3Dialer::new(&node.dialer.metadata, &addr, tls)
                            .map_err(|e| field(format!("{path}.dialer.metadata"), e))?,
                    )
                }
            };
            let connector_path = format!("{path}.connector");
            let auth = node.connector.auth.clone();
            let md = &node.connector.metadata;
            let connector: Arc<dyn Connector> = match node.connector.kind {
                ConnectorType::Http => {
                    Arc::new(HttpConnector::new(auth, md).map_err(|e| field(connector_path, e))?)
                }
                ConnectorType::Socks5 => Arc::new(
                    Socks5Connector::new(auth, md, node.connector.tls.as_ref(), &addr)
                        .map_err(|e| field(connector_path, e))?,
                ),
                ConnectorType::Http2 => {
                    if node.dialer.kind != DialerType::Http2 {
                        return Err(field(
                            format!("{connector_path}.type"),
                            "connector type `http2` works only with dialer type `http2`",
                        ));
                    }
                    Arc::new(Http2Connector::new(auth, md).map_err(|e| field(connector_path, e))?)
                }
                ConnectorType::Relay => {
                    Arc::new(RelayConnector::new(auth, md).map_err(|e| field(connector_path, e))?)
                }
                other => {
                    return Err(not_implemented(
                        format!("{connector_path}.type"),
                        "connector",
                        other.as_str(),
                    ));
                }
            };
            let selection = node_selection(&node.metadata, &format!("{path}.metadata"))?;
            let keepalive = node_keepalive(&node.dialer, &path)?;
            Ok(Arc::new(
                Node::new(node.name.clone(), addr, dialer, connector)
                    .with_selection(selection)
                    .with_keepalive(keepalive),
            ))
        })
        .collect::<Result<_, _>>()?;
    Ok(Hop::new(
        hop.name.clone(),
        nodes,
        selector.strategy.unwrap_or(SelectorStrategy::Round),
        selector
            .max_fails
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_MAX_FAILS),
        fail_timeout,
    ))
}

/// A node's `backup`, `weight`, `maxFails` and `failTimeout` (GOST's node metadata).
fn node_selection(md: &Metadata, path: &str) -> Result<Selection, ConfigError> {
    let at = |key: &str| format!("{path}.{key}");
    let backup = md
        .bool(&["backup"])
        .map_err(|e| field(at("backup"), e.to_string()))?
        .unwrap_or(false);
    // As in GOST, a weight below 1 counts as 1.
    let weight = md
        .int(&["weight"])
        .map_err(|e| field(at("weight"), e.to_string()))?
        .map_or(1, |w| w.clamp(1, i64::from(u32::MAX)) as u32);
    let max_fails = md
        .int(&["maxFails"])
        .map_err(|e| field(at("maxFails"), e.to_string()))?
        .map(|n| n.clamp(1, i64::from(u32::MAX)) as u32);
    let fail_timeout = match md.duration(&["failTimeout"]) {
        Err(e) => return Err(field(at("failTimeout"), e.to_string())),
        Ok(None) => None,
        Ok(Some(d)) => Some(d.filter(|d| !d.is_zero()).unwrap_or(DEFAULT_FAIL_TIMEOUT)),
    };
    Ok(Selection {
        backup,
        weight,
        max_fails,
        fail_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(md: &[(&str, &str)], handler_md: &[(&str, &str)]) -> ServiceConfig {
        let mut service = ServiceConfig::default();
        for (k, v) in md {
            service.metadata.insert_str(k, v);
        }
        for (k, v) in handler_md {
            service.handler.metadata.insert_str(k, v);
        }
        service
    }

    fn error_path(e: ConfigError) -> String {
        match e {
            ConfigError::Field { path, .. } => path,
            other => panic!("not a field error: {other}"),
        }
    }

    /// `connector_implemented` is what `build_hop` does, for every type gost-api knows.
    #[test]
    fn connector_implemented_matches_the_builder() {
        for name in ConnectorType::NAMES {
            let kind = ConnectorType::from_name(name).unwrap();
            let hop = HopConfig {
                name: "hop-0".into(),
                nodes: vec![gost_api::NodeConfig {
                    name: "node-0".into(),
                    addr: "127.0.0.1:1".into(),
                    connector: gost_api::ConnectorConfig {
                        kind,
                        ..Default::default()
                    },
                    ..Default::default()
                }],
                ..Default::default()
            };
            let refused = match build_hop(&hop, "chains[0].hops[0]") {
                Ok(_) => false,
                Err(e) => e.to_string().contains("is not implemented in this build"),
            };
            assert_eq!(refused, !connector_implemented(kind), "connector {name}");
        }
        assert!(!connector_implemented(ConnectorType::Socks4));
    }

    /// A hop selector's `failTimeout` and `maxFails` of zero (or below) are GOST's defaults,
    /// 10 s and 1 (`x/config/parsing/hop`), as GOST's `-O json` and `-O yaml` print them for a
    /// selector that left them out: a zero must not keep a dead node in the rotation.
    #[test]
    fn a_zero_fail_timeout_or_max_fails_is_the_default() {
        for (max_fails, fail_timeout) in [(Some(0), "0"), (Some(0), "0s"), (None, "-5s")] {
            let hop = HopConfig {
                name: "hop-0".into(),
                selector: Some(gost_api::SelectorConfig {
                    strategy: None,
                    max_fails,
                    fail_timeout: Some(fail_timeout.into()),
                }),
                nodes: vec![gost_api::NodeConfig {
                    name: "node-0".into(),
                    addr: "127.0.0.1:1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let hop = build_hop(&hop, "chains[0].hops[0]").unwrap();
            assert_eq!(hop.fail_timeout, DEFAULT_FAIL_TIMEOUT, "{fail_timeout}");
            assert_eq!(hop.max_fails, DEFAULT_MAX_FAILS, "{max_fails:?}");
        }
    }

    /// gost-api's `implemented` (what the CRDs offer) is what `build_service` and
    /// `prepare_listener` do, for every handler and listener type gost-api knows.
    #[test]
    fn handler_and_listener_implemented_match_the_builders() {
        let refused = |result: Result<(), ConfigError>| match result {
            Ok(()) => false,
            Err(e) => {
                let e = e.to_string();
                e.contains("is not implemented in this build") || e.contains("HTTP/3 reverse proxy")
            }
        };
        let tls_defaults = Arc::new(TlsDefaults::new(None));
        // Whether a service of one type refuses to build.
        let refuses = |set: &dyn Fn(&mut ServiceConfig)| {
            let mut svc = service(&[], &[]);
            svc.addr = "127.0.0.1:0".into();
            set(&mut svc);
            let config = Config {
                services: vec![svc],
                ..Default::default()
            };
            let built = build_service(
                &config,
                0,
                &HashMap::new(),
                &tls_defaults,
                &TaskTracker::new(),
            );
            refused(built.map(drop))
        };
        for name in HandlerType::NAMES {
            let kind = HandlerType::from_name(name).unwrap();
            assert_eq!(
                refuses(&|svc| svc.handler.kind = kind),
                !kind.implemented(),
                "handler {name}"
            );
        }
        for name in ListenerType::NAMES {
            let kind = ListenerType::from_name(name).unwrap();
            assert_eq!(
                refuses(&|svc| svc.listener.kind = kind),
                !kind.implemented(),
                "listener {name}"
            );
        }
    }

    #[test]
    fn gost_keepalive_keys_per_listener_and_dialer() {
        let mut svc = service(&[("keepAlivePeriod", "2m")], &[]);
        assert_eq!(
            listener_keepalive(&svc, 0).unwrap(),
            KeepAlive::after(Duration::from_secs(120))
        );
        svc.listener.metadata.insert_str("keepalive", "true");
        svc.listener.metadata.insert_str("keepalive.idle", "40s");
        let gost = KeepAlive::on(Duration::from_secs(40), Duration::from_secs(15), 9);
        assert_eq!(listener_keepalive(&svc, 0).unwrap(), gost);
        // On grpc, plain `keepalive` is gRPC's own.
        svc.listener.kind = ListenerType::Grpc;
        assert_eq!(
            listener_keepalive(&svc, 0).unwrap(),
            KeepAlive::after(Duration::from_secs(120))
        );
        svc.listener.metadata.insert_str("keepalive.count", "1000");
        svc.listener.kind = ListenerType::Tcp;
        let e = listener_keepalive(&svc, 4).unwrap_err();
        assert_eq!(
            error_path(e),
            "services[4].listener.metadata.keepalive.count"
        );

        let mut dialer = DialerConfig::default();
        dialer.metadata.insert_str("keepalive", "true");
        assert!(node_keepalive(&dialer, "n").unwrap().is_some());
        for (kind, expect) in [
            (DialerType::Ws, false),
            (DialerType::Grpc, false),
            (DialerType::H3, false),
        ] {
            dialer.kind = kind;
            assert_eq!(
                node_keepalive(&dialer, "n").unwrap().is_some(),
                expect,
                "{kind:?}"
            );
        }
        dialer.kind = DialerType::Wss;
        dialer.metadata.insert_str("tcp.keepalive", "true");
        dialer.metadata.insert_str("tcp.keepalive.idle", "never");
        let e = node_keepalive(&dialer, "hops[0].nodes[1]").unwrap_err();
        assert_eq!(
            error_path(e),
            "hops[0].nodes[1].dialer.metadata.tcp.keepalive.idle"
        );
    }

    #[test]
    fn read_timeout_is_the_http2_handlers_idle_timeout() {
        let md = |pairs: &[(&str, &str)]| service(&[], pairs).handler.metadata;
        let secs = |n| Some(Duration::from_secs(n));
        let with_read = md(&[("readTimeout", "40s")]);
        assert_eq!(
            idle_timeout(HandlerType::Http2, &with_read, "m").unwrap(),
            secs(40)
        );
        // Elsewhere readTimeout times the handshake.
        assert_eq!(
            idle_timeout(HandlerType::Http, &with_read, "m").unwrap(),
            None
        );
        let both = md(&[("read.timeout", "40s"), ("idleTimeout", "2m")]);
        assert_eq!(
            idle_timeout(HandlerType::Http2, &both, "m").unwrap(),
            secs(120)
        );
        assert_eq!(
            idle_timeout(HandlerType::Http, &both, "m").unwrap(),
            secs(120)
        );
        let off = md(&[("readTimeout", "0")]);
        assert_eq!(idle_timeout(HandlerType::Http2, &off, "m").unwrap(), None);
        let zero_first = md(&[("idleTimeout", "0"), ("readTimeout", "40s")]);
        assert_eq!(
            idle_timeout(HandlerType::Http2, &zero_first, "m").unwrap(),
            secs(40)
        );
    }

    #[test]
    fn read_timeout_bounds_a_forwarded_requests_answer_as_in_gost() {
        let md = |pairs: &[(&str, &str)]| service(&[], pairs).handler.metadata;
        let timeout = |pairs: &[(&str, &str)]| response_timeout(&md(pairs), "m").unwrap();
        assert_eq!(timeout(&[]), Some(Duration::from_secs(15)));
        assert_eq!(
            timeout(&[("readTimeout", "0")]),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            timeout(&[("readTimeout", "90s")]),
            Some(Duration::from_secs(90))
        );
        assert_eq!(timeout(&[("readTimeout", "-1s")]), None);
        assert!(response_timeout(&md(&[("readTimeout", "soon")]), "m").is_err());
    }

    #[test]
    fn handler_hash_takes_host_or_nothing() {
        let md = |v: &str| service(&[], &[("hash", v)]).handler.metadata;
        assert!(!hash_by_target(&Metadata::default(), "m").unwrap());
        assert!(!hash_by_target(&md(""), "m").unwrap());
        assert!(hash_by_target(&md("host"), "m").unwrap());
        // GOST compares exactly; it would ignore `HOST`, and key on the client.
        assert!(hash_by_target(&md("HOST"), "m").is_err());
        let e = hash_by_target(&md("hots"), "services[0].handler.metadata").unwrap_err();
        assert!(e.to_string().contains("`host`"), "{e}");
        assert_eq!(error_path(e), "services[0].handler.metadata.hash");
    }

    #[test]
    fn keepalive_is_on_by_default_and_configurable() {
        assert_eq!(
            keepalive(&service(&[], &[]), 0).unwrap(),
            KeepAlive::default()
        );
        assert_eq!(
            keepalive(&service(&[("keepAlive", "false")], &[]), 0).unwrap(),
            KeepAlive::Off
        );
        assert_eq!(
            keepalive(
                &service(&[("keepalive", "true"), ("keepAlivePeriod", "2m")], &[]),
                0
            )
            .unwrap(),
            KeepAlive::after(Duration::from_secs(120))
        );
        for (key, value) in [
            ("keepAlive", "maybe"),
            ("keepAlivePeriod", "soon"),
            ("keepAlivePeriod", "500ms"),
            ("keepAlivePeriod", "10h"),
            ("keepAlivePeriod", "-1"),
        ] {
            let e = keepalive(&service(&[(key, value)], &[]), 3).unwrap_err();
            assert_eq!(
                error_path(e),
                format!("services[3].metadata.{key}"),
                "{value}"
            );
        }
    }

    #[test]
    fn max_header_size_is_bounded() {
        let md = |v: &str| service(&[], &[("maxHeaderSize", v)]).handler.metadata;
        let path = "services[1].handler.metadata";
        assert_eq!(
            max_header_size(&Metadata::default(), path).unwrap(),
            MAX_REQUEST_HEAD
        );
        assert_eq!(max_header_size(&md("2048"), path).unwrap(), 2048);
        assert_eq!(
            max_header_size(&md("1048576"), path).unwrap(),
            MAX_HEADER_SIZE_LIMIT
        );
        for bad in ["1023", "1048577", "-1", "big"] {
            let e = max_header_size(&md(bad), path).unwrap_err();
            assert_eq!(
                error_path(e),
                "services[1].handler.metadata.maxHeaderSize",
                "{bad}"
            );
        }
    }

    #[test]
    fn auth_failure_limit_from_service_or_handler_metadata() {
        assert_eq!(
            auth_failure_limit(&service(&[], &[]), 0).unwrap(),
            DEFAULT_AUTH_FAILURE_LIMIT
        );
        assert_eq!(
            auth_failure_limit(&service(&[("authFailureLimit", "0")], &[]), 0).unwrap(),
            0
        );
        assert_eq!(
            auth_failure_limit(&service(&[], &[("authFailureLimit", "2")]), 0).unwrap(),
            2
        );
        assert_eq!(
            auth_failure_limit(
                &service(&[("authFailureLimit", "5")], &[("authFailureLimit", "2")]),
                0
            )
            .unwrap(),
            5,
            "the service's own value wins"
        );
        for bad in ["-1", "1001", "lots"] {
            let e = auth_failure_limit(&service(&[("authFailureLimit", bad)], &[]), 2).unwrap_err();
            assert_eq!(error_path(e), "services[2].metadata.authFailureLimit");
            let e = auth_failure_limit(&service(&[], &[("authFailureLimit", bad)]), 2).unwrap_err();
            assert_eq!(
                error_path(e),
                "services[2].handler.metadata.authFailureLimit"
            );
        }
    }
}
