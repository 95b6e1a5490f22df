//! Turning a configuration into handlers, listeners and chains; [`crate::supervisor`] runs them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gost_api::{
    ChainConfig, Config, ConfigError, ConnectorType, DialerType, HandlerType, HopConfig,
    ListenerType, Metadata, SelectorStrategy,
};
use tokio_util::task::TaskTracker;

use crate::addr::Address;
use crate::auth::Authenticator;
use crate::chain::{
    Chain, DEFAULT_DIAL_TIMEOUT, DEFAULT_FAIL_TIMEOUT, DEFAULT_MAX_FAILS, Hop, Node, Router,
};
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
use crate::handler::http::HttpHandler;
use crate::handler::relay::RelayHandler;
use crate::handler::socks4::Socks4Handler;
use crate::handler::socks5::Socks5Handler;
use crate::handler::{DEFAULT_HANDSHAKE_TIMEOUT, Handler, HandlerEnv};
use crate::listener::Listener;
use crate::listener::tcp::TcpListenerImpl;
use crate::tls::{ClientTls, ServerTls, TlsDefaults};

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

/// A service's handler, built but not yet serving.
pub struct Built {
    /// Serves each accepted connection.
    pub handler: Arc<dyn Handler>,
    /// The same handler for the `http2` listener, which drives it per stream.
    http2: Option<Arc<crate::handler::http2::Http2Handler>>,
}

/// Builds the handler of `config.services[i]` (its chain from `chains`).
pub fn build_service(
    config: &Config,
    i: usize,
    chains: &HashMap<String, Arc<Chain>>,
    tls_defaults: &TlsDefaults,
    tunnels: &TaskTracker,
) -> Result<Built, ConfigError> {
    let service = &config.services[i];
    let path = format!("services[{i}]");
    if service.listener.kind == ListenerType::Http3 {
        return Err(field(format!("{path}.listener.type"), HTTP3_REVERSE_PROXY));
    }
    let chain = service
        .handler
        .chain
        .as_deref()
        .map(|name| chains[name].clone());
    let dial_timeout = duration(
        &service.metadata,
        "dialTimeout",
        &format!("{path}.metadata"),
    )?
    .unwrap_or(DEFAULT_DIAL_TIMEOUT);
    let md = &service.handler.metadata;
    let md_path = format!("{path}.handler.metadata");
    let env = Arc::new(HandlerEnv {
        service: Arc::from(service.name.as_str()),
        auth: Authenticator::for_handler(&service.handler, config),
        router: Router::new(chain, dial_timeout, service.handler.retries.unwrap_or(0)),
        metadata: md.clone(),
        handshake_timeout: duration(md, "readTimeout", &md_path)?
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        idle_timeout: duration(md, "idleTimeout", &md_path)?.filter(|d| !d.is_zero()),
        tunnels: tunnels.clone(),
        tls: handler_tls(service, tls_defaults, &path)?,
    });
    let handler_path = format!("{path}.handler");
    let mut http2_handler = None;
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
            let handler = Arc::new(
                crate::handler::http2::Http2Handler::new(env)
                    .map_err(|e| field(handler_path, e))?,
            );
            http2_handler = Some(handler.clone());
            handler
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
    Ok(Built {
        handler,
        http2: http2_handler,
    })
}

/// Binds the listener of `config.services[i]`, whose handler is `built`.
pub fn bind_listener(
    config: &Config,
    i: usize,
    tls_defaults: &TlsDefaults,
    built: &Built,
) -> Result<Box<dyn Listener>, ConfigError> {
    let service = &config.services[i];
    let path = format!("services[{i}]");
    let http2_handler = built.http2.clone();
    let listener: Box<dyn Listener> = match service.listener.kind {
        ListenerType::Tcp => Box::new(
            TcpListenerImpl::bind(&service.addr)
                .map_err(|e| cannot_listen(&path, &service.addr, e))?,
        ),
        ListenerType::Tls => {
            let tls = ServerTls::new(service.listener.tls.as_ref(), tls_defaults, &[])
                .map_err(|e| field(format!("{path}.listener.tls"), e))?;
            Box::new(
                crate::listener::tls::bind(&service.addr, tls)
                    .map_err(|e| cannot_listen(&path, &service.addr, e))?,
            )
        }
        ListenerType::Ws | ListenerType::Wss => {
            let tls = match service.listener.kind {
                ListenerType::Wss => Some(
                    ServerTls::new(service.listener.tls.as_ref(), tls_defaults, &[])
                        .map_err(|e| field(format!("{path}.listener.tls"), e))?,
                ),
                _ => None,
            };
            let options = crate::listener::ws::WsOptions::from_metadata(&service.listener.metadata)
                .map_err(|e| field(format!("{path}.listener.metadata"), e))?;
            Box::new(
                crate::listener::ws::bind(&service.addr, tls, options)
                    .map_err(|e| cannot_listen(&path, &service.addr, e))?,
            )
        }
        ListenerType::H2 | ListenerType::H2c => {
            let tls = if service.listener.kind == ListenerType::H2 {
                Some(
                    ServerTls::new(
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
            Box::new(
                crate::listener::h2::bind(&service.addr, tls, h2_path)
                    .map_err(|e| cannot_listen(&path, &service.addr, e))?,
            )
        }
        ListenerType::Grpc => {
            let options =
                crate::listener::grpc::GrpcOptions::from_metadata(&service.listener.metadata)
                    .map_err(|e| field(format!("{path}.listener.metadata"), e))?;
            let tls = if options.insecure {
                None
            } else {
                Some(
                    ServerTls::new(service.listener.tls.as_ref(), tls_defaults, &[b"h2"])
                        .map_err(|e| field(format!("{path}.listener.tls"), e))?,
                )
            };
            Box::new(
                crate::listener::grpc::bind(&service.addr, tls, options)
                    .map_err(|e| cannot_listen(&path, &service.addr, e))?,
            )
        }
        ListenerType::Http2 => {
            let Some(handler) = http2_handler else {
                return Err(field(
                    format!("{path}.listener.type"),
                    "listener type `http2` works only with handler type `http2`",
                ));
            };
            let tls = ServerTls::new(
                service.listener.tls.as_ref(),
                tls_defaults,
                crate::listener::http2::ALPN,
            )
            .map_err(|e| field(format!("{path}.listener.tls"), e))?;
            Box::new(
                crate::listener::http2::bind(&service.addr, tls, handler)
                    .map_err(|e| cannot_listen(&path, &service.addr, e))?,
            )
        }
        ListenerType::Pht | ListenerType::Phts => {
            let tls = match service.listener.kind {
                ListenerType::Phts => Some(
                    ServerTls::new(
                        service.listener.tls.as_ref(),
                        tls_defaults,
                        crate::listener::pht::ALPN,
                    )
                    .map_err(|e| field(format!("{path}.listener.tls"), e))?,
                ),
                _ => None,
            };
            let paths = crate::pht::Paths::from_metadata(&service.listener.metadata);
            Box::new(
                crate::listener::pht::bind(&service.addr, tls, &service.name, paths)
                    .map_err(|e| cannot_listen(&path, &service.addr, e))?,
            )
        }
        ListenerType::H3 => {
            let tls = ServerTls::new(service.listener.tls.as_ref(), tls_defaults, crate::h3::ALPN)
                .map_err(|e| field(format!("{path}.listener.tls"), e))?;
            let options = crate::listener::h3::H3Options::from_metadata(&service.listener.metadata)
                .map_err(|e| field(format!("{path}.listener.metadata"), e))?;
            Box::new(
                crate::listener::h3::bind(&service.name, &service.addr, &tls, options)
                    .map_err(|e| cannot_listen(&path, &service.addr, e))?,
            )
        }
        other => {
            return Err(not_implemented(
                format!("{path}.listener.type"),
                "listener",
                other.as_str(),
            ));
        }
    };
    Ok(listener)
}

/// The handler's TLS for SOCKS5's TLS methods: `handler.tls`, else the defaults, unless
/// `notls` is set or the handler does not speak SOCKS5.
fn handler_tls(
    service: &gost_api::ServiceConfig,
    defaults: &TlsDefaults,
    path: &str,
) -> Result<Option<ServerTls>, ConfigError> {
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
    ServerTls::new(service.handler.tls.as_ref(), defaults, &[])
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

fn build_chain(chain: &ChainConfig, config: &Config, index: usize) -> Result<Chain, ConfigError> {
    let hops = chain
        .hops
        .iter()
        .enumerate()
        .map(|(j, hop)| {
            let path = format!("chains[{index}].hops[{j}]");
            // A hop with a name and no nodes stands for the top-level hop of that name.
            let (hop, path) = if hop.nodes.is_empty() {
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
    let fail_timeout = match &selector.fail_timeout {
        Some(text) => gost_api::metadata::parse_go_duration(text)
            .map_err(|e| field(format!("{path}.selector.failTimeout"), e))?
            .unwrap_or(DEFAULT_FAIL_TIMEOUT),
        None => DEFAULT_FAIL_TIMEOUT,
    };
    let nodes = hop
        .nodes
        .iter()
        .enumerate()
        .map(|(k, node)| {
            let path = format!("{path}.nodes[{k}]");
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
                            ClientTls::new(node.dialer.tls.as_ref(), crate::listener::pht::ALPN)
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
            Ok(Arc::new(Node::new(
                node.name.clone(),
                addr,
                dialer,
                connector,
            )))
        })
        .collect::<Result<_, _>>()?;
    Ok(Hop::new(
        hop.name.clone(),
        nodes,
        selector.strategy.unwrap_or(SelectorStrategy::Round),
        selector.max_fails.unwrap_or(DEFAULT_MAX_FAILS),
        fail_timeout,
    ))
}
