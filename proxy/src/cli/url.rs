//! GOST's command line: service (`-L`) and chain node (`-F`) URLs turned into a [`Config`].
//!
//! The rules are GOST 3.2.6's (`x/config/cmd`), checked against the configurations it prints
//! with `-O yaml`: `[scheme://][user:pass@]host:port[/targets][?key=value&...]`, where the
//! scheme names a handler and a listener (`-L`) or a connector and a dialer (`-F`) and the
//! query becomes metadata. Where GOST silently drops or zeroes a malformed value (a bad port, a
//! bad percent-escape, an undecodable `auth=`), this module reports it instead, and it refuses
//! the GOST options gost-rs does not implement rather than ignoring them.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::ops::RangeInclusive;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use gost_api::metadata::{Scope, parse_go_bool, parse_go_duration, unimplemented_option};
use gost_api::{
    AuthConfig, ChainConfig, Config, ConnectorConfig, ConnectorType, DialerConfig, DialerType,
    ForwardNodeConfig, ForwarderConfig, HandlerConfig, HandlerType, HopConfig, ListenerConfig,
    ListenerType, Metadata, MetricsConfig, NodeConfig, SelectorConfig, SelectorStrategy,
    ServiceConfig, TlsConfig,
};
use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::server::connector_implemented;

/// A command-line argument that cannot be turned into configuration. The argument is quoted
/// with its password (and any `auth=` value) replaced by `***`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// The argument is malformed.
    #[error("{flag} {arg:?}: {reason}")]
    Invalid {
        /// `-L`, `-F` or `-metrics`.
        flag: &'static str,
        /// The argument, redacted.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The argument asks for a GOST feature that gost-rs does not implement.
    #[error("{flag} {arg:?}: {feature} is not supported by gost-rs yet")]
    Unsupported {
        /// `-L` or `-F`.
        flag: &'static str,
        /// The argument, redacted.
        arg: String,
        /// The feature.
        feature: String,
    },
}

/// Builds the configuration that `gost -L <services>... -F <nodes>...` runs: one service per
/// `-L` (one per port of a port range), named `service-<i>`, and, when there is any `-F`, one
/// chain `chain-0` with one hop per `-F` that every service dials through.
pub fn config_from_args(services: &[String], nodes: &[String]) -> Result<Config, CliError> {
    // GOST reads the nodes first, so with both flags wrong the `-F` error is the one reported.
    let hops = nodes
        .iter()
        .enumerate()
        .map(|(i, arg)| hop_from_arg(i, arg).map_err(|p| p.into_error("-F", arg)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut all = Vec::new();
    for arg in services {
        // GOST skips a blank `-L` (a blank `-F` is an error).
        if arg.trim().is_empty() {
            continue;
        }
        all.extend(services_from_arg(arg).map_err(|p| p.into_error("-L", arg))?);
    }
    let chain = (!hops.is_empty()).then(|| "chain-0".to_string());
    for (i, service) in all.iter_mut().enumerate() {
        service.name = format!("service-{i}");
        service.handler.chain = chain.clone();
    }
    let mut config = Config {
        services: all,
        ..Config::default()
    };
    if let Some(name) = chain {
        config.chains.push(ChainConfig {
            name,
            hops,
            metadata: Metadata::default(),
        });
    }
    Ok(config)
}

/// The metrics endpoint of `-metrics [user:pass@][host]:port[?path=/metrics]`, read as GOST
/// reads the flag: as a URL whose user info (percent-decoded) is the endpoint's Basic auth and
/// whose `path` parameter is its path. Where GOST ignores what it cannot use (a scheme, a URL
/// path, another parameter) or falls back to the raw text as the address, this is an error.
pub fn metrics_from_arg(arg: &str) -> Result<MetricsConfig, CliError> {
    metrics_config(arg).map_err(|p| p.into_error("-metrics", arg))
}

fn metrics_config(arg: &str) -> Parsed<MetricsConfig> {
    let url = parse_url(arg)?;
    if url.scheme != "auto" && url.scheme != "http" {
        return invalid(format!(
            "the metrics endpoint is plain HTTP: give [user:pass@][host]:port, without the \
             scheme {:?}",
            url.scheme
        ));
    }
    if !url.path.is_empty() {
        return invalid(format!(
            "unexpected path {:?} after the address: give the metrics path as ?path={}",
            url.path, url.path
        ));
    }
    let (host, port) = split_host_port(&url.host)?;
    let Some(port) = port.filter(|p| !p.is_empty()) else {
        return invalid(format!(
            "no port in {:?}: expected [user:pass@][host]:port",
            url.host
        ));
    };
    check_listen_host(host)?;
    let addr = join_host_port(host, parse_port(port, 0)?);
    let mut path = None;
    for (key, value) in url.query {
        if !key.eq_ignore_ascii_case("path") {
            return invalid(format!("unknown option {key:?} (accepted: path=/...)"));
        }
        path = value.as_str().filter(|p| !p.is_empty()).map(str::to_string);
    }
    Ok(MetricsConfig {
        addr,
        path,
        auth: url.user,
        ..MetricsConfig::default()
    })
}

/// What is wrong with one argument; [`Problem::into_error`] adds the flag and the argument.
enum Problem {
    Invalid(String),
    Unsupported(String),
}

impl Problem {
    fn into_error(self, flag: &'static str, arg: &str) -> CliError {
        let arg = redact(arg);
        match self {
            Problem::Invalid(reason) => CliError::Invalid { flag, arg, reason },
            Problem::Unsupported(feature) => CliError::Unsupported { flag, arg, feature },
        }
    }
}

type Parsed<T> = Result<T, Problem>;

fn invalid<T>(reason: impl Into<String>) -> Parsed<T> {
    Err(Problem::Invalid(reason.into()))
}

/// Query parameters; after decoding, values are strings except the few GOST converts.
type Params = BTreeMap<String, Value>;

fn services_from_arg(arg: &str) -> Parsed<Vec<ServiceConfig>> {
    let url = parse_url(arg)?;
    let (handler, listener) = split_scheme(&url.scheme);
    let addrs = listen_addrs(&url.host)?;
    // GOST turns any other handler with a path into a `forward` (or `tcp`, ...) handler,
    // which gost-api does not model. Checked on the name as written: GOST replaces the
    // handler it registers (`ss`, ...) too, so this is the error that applies.
    if !url.path.trim_matches('/').is_empty()
        && HandlerType::from_name(handler) != Some(HandlerType::Relay)
    {
        return Err(Problem::Unsupported(format!(
            "port forwarding (the URL path {:?} names forward targets, for GOST's `tcp`, \
             `udp`, `rtcp`, `rudp` or `relay` forward services)",
            url.path
        )));
    }
    let handler = scheme_part(
        handler,
        HandlerType::from_name,
        GOST_HANDLERS,
        "handler",
        HandlerType::Auto,
    )?;
    let listener = scheme_part(
        listener,
        ListenerType::from_name,
        GOST_LISTENERS,
        "listener",
        ListenerType::Tcp,
    )?;
    let targets = forward_targets(&url.path)?;

    let mut params = url.query;
    let auth = take_auth(url.user, &mut params)?;
    let tls = take_server_tls(&mut params)?;
    // GOST splits `dns` into a list for every service; only its `dns` handler and tun
    // listeners read it, so on the services gost-rs has it changes nothing, as in GOST.
    if let Some(dns) = lookup(&params, &["dns"]) {
        remove(&mut params, &["dns"]);
        params.insert(
            "dns".into(),
            Value::from(dns.split(',').collect::<Vec<_>>()),
        );
    }
    // GOST consumes these keys on every service but uses them only for forward targets.
    if take_selector(&mut params)?.is_some() && !targets.is_empty() {
        return Err(Problem::Unsupported(
            "a selector (strategy, maxFails, failTimeout) for forward targets".into(),
        ));
    }
    let [service_md, mut handler_md, listener_md] =
        split_scopes(&params, ["service.", "handler.", "listener."], &[]);
    // GOST moves `interface`, `so_mark`, `proxyProtocol`, `netns` and `netns.out` to the
    // service; all of them are refused here, in whichever scope an unscoped key lands.
    reject_unimplemented(&service_md, Scope::Service)?;
    reject_unimplemented(&handler_md, Scope::Handler)?;
    reject_unimplemented(&listener_md, Scope::Listener)?;
    reject_unsupported(
        &handler_md,
        &[
            "admission",
            "bypass",
            "resolver",
            "hosts",
            "limiter.in",
            "limiter.out",
            "limiter.conn.in",
            "limiter.conn.out",
            "climiter",
            "rlimiter",
        ],
    )?;
    let retries = take_retries(&mut handler_md)?;

    let handler = HandlerConfig {
        kind: handler,
        retries,
        auth,
        metadata: Metadata(handler_md),
        ..HandlerConfig::default()
    };
    let listener = ListenerConfig {
        kind: listener,
        tls,
        metadata: Metadata(listener_md),
        ..ListenerConfig::default()
    };
    let count = addrs.len();
    Ok(addrs
        .into_iter()
        .enumerate()
        .map(|(i, addr)| ServiceConfig {
            name: String::new(),
            addr,
            handler: handler.clone(),
            listener: listener.clone(),
            forwarder: forwarder_for(i, count, &targets),
            metadata: Metadata(service_md.clone()),
        })
        .collect())
}

fn hop_from_arg(index: usize, arg: &str) -> Parsed<HopConfig> {
    let url = parse_url(arg)?;
    let mut params = url.query;
    let selector = take_selector(&mut params)?;
    reject_unsupported(&params, &["bypass", "resolver", "hosts"])?;
    // GOST fills the hop's metadata before the node consumes `auth` and the TLS keys, so the
    // hop keeps them (case-33: `secure` and `serverName` show up on the hop only).
    let [hop_md] = split_scopes(&params, ["hop."], &["node.", "connector.", "dialer."]);
    // GOST moves `interface`, `so_mark` and `proxyProtocol` to the hop; refused here.
    reject_unimplemented(&hop_md, Scope::Hop)?;
    params.retain(|key, _| !key.starts_with("hop."));

    let (connector, dialer) = split_scheme(&url.scheme);
    // A connector gost-api knows but this build lacks is refused here, as one gost-api does not
    // know is, rather than when the service starts: `-O` must not print what cannot run.
    let connector = scheme_part(
        connector,
        |name| ConnectorType::from_name(name).filter(|kind| connector_implemented(*kind)),
        GOST_CONNECTORS,
        "connector",
        ConnectorType::Http,
    )?;
    let dialer = scheme_part(
        dialer,
        DialerType::from_name,
        GOST_DIALERS,
        "dialer",
        DialerType::Tcp,
    )?;
    let auth = take_auth(url.user, &mut params)?;
    let tls = take_client_tls(&mut params)?;
    let [node_md, connector_md, dialer_md] =
        split_scopes(&params, ["node.", "connector.", "dialer."], &[]);
    reject_unimplemented(&node_md, Scope::Node)?;

    let nodes = node_addrs(&url.host)?
        .into_iter()
        .enumerate()
        .map(|(j, (addr, host))| NodeConfig {
            name: format!("node-{j}"),
            addr,
            connector: ConnectorConfig {
                kind: connector,
                auth: auth.clone(),
                tls: None,
                metadata: Metadata(connector_md.clone()),
            },
            dialer: DialerConfig {
                kind: dialer,
                auth: None,
                tls: client_tls_for(&tls, host),
                metadata: Metadata(dialer_md.clone()),
            },
            metadata: Metadata(node_md.clone()),
        })
        .collect();
    Ok(HopConfig {
        name: format!("hop-{index}"),
        selector,
        nodes,
        metadata: Metadata(hop_md),
        ..HopConfig::default()
    })
}

/// One argument, split as GOST splits it; `host` and `path` are still raw.
struct CmdUrl {
    scheme: String,
    user: Option<AuthConfig>,
    host: String,
    path: String,
    query: Params,
}

fn parse_url(arg: &str) -> Parsed<CmdUrl> {
    let arg = arg.trim();
    if arg.is_empty() {
        return invalid("empty value");
    }
    if arg.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return invalid("control character in the URL");
    }
    // GOST would prepend `auto://` and read the rest as a forward target path.
    if arg.starts_with("://") {
        return invalid(
            "no scheme before \"://\": name one, as in http://host:port, or give the address \
             alone for the auto handler",
        );
    }
    let (scheme, rest) = match arg.split_once("://") {
        Some(parts) if !arg.starts_with(':') => parts,
        _ => {
            if let Some(problem) = malformed_scheme(arg) {
                return Err(problem);
            }
            ("auto", arg)
        }
    };
    if !is_scheme_name(scheme) {
        return invalid(format!(
            "invalid scheme {scheme:?}: expected a name such as http, socks5+ws or relay+tls"
        ));
    }
    let scheme = match scheme.to_ascii_lowercase() {
        s if s == "https" => "http+tls".to_string(),
        s => s,
    };

    // As in GOST, the user info ends at the last '@' before the first '/' or '?', so an '@'
    // in a password needs no escaping.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (user, after_user) = match rest[..authority_end].rfind('@') {
        Some(at) => (Some(parse_userinfo(&rest[..at])?), &rest[at + 1..]),
        None => (None, rest),
    };
    let host_end = after_user.find(['/', '?', '#']).unwrap_or(after_user.len());
    let (host, tail) = after_user.split_at(host_end);
    // GOST would take such a password for the host and the rest for the path or the query,
    // and run without authentication; and our host and port errors would quote the password.
    if user.is_none() && tail.contains('@') {
        return invalid(
            "'@' after the host: in a user name or password percent-encode '/', '?' and '#' \
             (%2F, %3F, %23); elsewhere write '@' as %40",
        );
    }
    let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    Ok(CmdUrl {
        scheme,
        user,
        host: host.to_string(),
        path: path.to_string(),
        query: parse_query(query)?,
    })
}

/// Whether `name` has the shape of a URL scheme: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// A scheme written without its `//` (`http:/host:port`) or its `:` (`http//host:port`), in an
/// argument without `://`. GOST reads such a scheme as a host and the rest as a URL path, that
/// is forward targets, and never as the service asked for; no address of that shape is useful
/// without a scheme (the `auto` handler takes no targets), so this names the typo instead.
/// With an '@' further on, `user:/...@` may be user info whose password starts with '/': that
/// is left to the error about the '@' unless the name is one of GOST's schemes.
fn malformed_scheme(arg: &str) -> Option<Problem> {
    let (name, rest) = arg.split_at(arg.find([':', '/'])?);
    if !is_scheme_name(name) || (arg.contains('@') && !is_gost_scheme(name)) {
        return None;
    }
    let (written, missing) = if rest.starts_with(":/") {
        (&arg[..name.len() + 2], "'/'")
    } else if rest.starts_with("//") {
        (&arg[..name.len() + 2], "':'")
    } else {
        return None;
    };
    Some(Problem::Invalid(format!(
        "{written:?} lacks a {missing}: a scheme ends with \"://\", as in {name}://host:port"
    )))
}

// The names GOST registers (`registry.*Registry().Register(...)` in go-gost/x, checked at
// commit 0132cef). GOST falls back to a default type only for a name missing from its own
// registry; a name it registers and gost-rs does not implement must be refused, not replaced:
// `-L ss://method:secret@:8338` would otherwise run an open `auto` proxy, and `-F mtls://...`
// would send plain TCP where the user asked for TLS.

/// GOST's handler names.
const GOST_HANDLERS: &[&str] = &[
    "api", "auto", "dns", "file", "forward", "http", "http2", "http3", "masque", "metrics", "red",
    "redir", "redirect", "redu", "relay", "router", "rtcp", "rudp", "runix", "serial", "sni",
    "socks", "socks4", "socks4a", "socks5", "ss", "sshd", "ssu", "tap", "tcp", "tun", "tungo",
    "tunnel", "udp", "unix",
];

/// GOST's listener names.
const GOST_LISTENERS: &[&str] = &[
    "dns", "dtls", "ftcp", "grpc", "h2", "h2c", "h3", "http2", "http3", "icmp", "icmp6", "kcp",
    "mtcp", "mtls", "mws", "mwss", "ohttp", "otls", "pht", "phts", "quic", "red", "redir",
    "redirect", "redu", "rtcp", "rudp", "runix", "serial", "ssh", "sshd", "stdio", "tap", "tcp",
    "tls", "tun", "tungo", "udp", "unix", "ws", "wss", "wt",
];

/// GOST's connector names.
const GOST_CONNECTORS: &[&str] = &[
    "direct", "forward", "http", "http2", "masque", "relay", "router", "serial", "sni", "socks",
    "socks4", "socks4a", "socks5", "ss", "sshd", "ssu", "tcp", "tunnel", "unix", "virtual",
];

/// GOST's dialer names.
const GOST_DIALERS: &[&str] = &[
    "direct",
    "dtls",
    "ftcp",
    "grpc",
    "h2",
    "h2c",
    "h3",
    "h3-masque",
    "http2",
    "http3",
    "icmp",
    "icmp6",
    "kcp",
    "mtcp",
    "mtls",
    "mws",
    "mwss",
    "ohttp",
    "ohttps",
    "otls",
    "pht",
    "phts",
    "quic",
    "serial",
    "ssh",
    "sshd",
    "tcp",
    "tls",
    "udp",
    "unix",
    "utls",
    "virtual",
    "wg",
    "ws",
    "wss",
    "wt",
];

/// Whether every part of `scheme` (`a` or `a+b`) is a name GOST registers, or `https`.
fn is_gost_scheme(scheme: &str) -> bool {
    let scheme = scheme.to_ascii_lowercase();
    let known = |part: &str| {
        part == "https"
            || [GOST_HANDLERS, GOST_LISTENERS, GOST_CONNECTORS, GOST_DIALERS]
                .iter()
                .any(|names| names.contains(&part))
    };
    scheme.split('+').all(known)
}

/// One half of a scheme as GOST resolves it: our type of that name; an error if GOST has one
/// of that name (its `role`: handler, listener, ...) and we do not; else GOST's `fallback`.
fn scheme_part<T>(
    name: &str,
    ours: impl Fn(&str) -> Option<T>,
    gost: &[&str],
    role: &str,
    fallback: T,
) -> Parsed<T> {
    match ours(name) {
        Some(kind) => Ok(kind),
        None if gost.contains(&name) => {
            Err(Problem::Unsupported(format!("GOST's `{name}` {role}")))
        }
        None => Ok(fallback),
    }
}

/// `a+b` names the handler and listener (or connector and dialer), a single `a` both; with
/// more parts GOST names neither, so both fall back to their defaults.
fn split_scheme(scheme: &str) -> (&str, &str) {
    let mut parts = scheme.split('+');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), None, _) => (a, a),
        (Some(a), Some(b), None) => (a, b),
        _ => ("", ""),
    }
}

fn parse_userinfo(info: &str) -> Parsed<AuthConfig> {
    // The characters Go's URL parser accepts. The offending one is not quoted: it may be part
    // of a password.
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._:~!$&'()*+,;=%@".contains(c);
    if !info.chars().all(allowed) {
        return invalid("the user name or password has a character that must be percent-encoded");
    }
    let (user, pass) = info.split_once(':').unwrap_or((info, ""));
    Ok(AuthConfig {
        username: unescape(user, false).map_err(|e| Problem::Invalid(format!("user name: {e}")))?,
        password: unescape(pass, false).map_err(|e| Problem::Invalid(format!("password: {e}")))?,
        file: None,
    })
}

/// Percent-decodes `text` (with `+` as a space in queries), rejecting malformed escapes that
/// Go would reject too.
fn unescape(text: &str, plus_is_space: bool) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let hex_at = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_hexdigit);
    if text
        .match_indices('%')
        .any(|(i, _)| !(hex_at(i + 1) && hex_at(i + 2)))
    {
        return Err("invalid percent-encoding (expected % and two hex digits)");
    }
    let spaced;
    let text = if plus_is_space && text.contains('+') {
        spaced = text.replace('+', " ");
        &spaced
    } else {
        text
    };
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "not UTF-8 after percent-decoding")
}

fn parse_query(query: &str) -> Parsed<Params> {
    let mut params = Params::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Go drops such a pair without a word.
        if pair.contains(';') {
            return invalid(format!(
                "query parameter {key:?}: ';' does not separate parameters; use '&', or %3B \
                 inside a value"
            ));
        }
        let bad = |e| Problem::Invalid(format!("query parameter {key:?}: {e}"));
        let name = unescape(key, true).map_err(bad)?;
        let value = unescape(value, true).map_err(bad)?;
        // Go keeps the first value of a repeated key.
        params.entry(name).or_insert(Value::String(value));
    }
    Ok(params)
}

/// The value of the last of `aliases` present, keys matched ignoring case as GOST's getters do
/// (and, as in GOST, the last alias wins). Empty counts as absent, as GOST's callers test it.
fn lookup(params: &Params, aliases: &[&str]) -> Option<String> {
    aliases
        .iter()
        .rev()
        .find_map(|alias| {
            params
                .iter()
                .rev()
                .find(|(key, _)| key.eq_ignore_ascii_case(alias))
        })
        .map(|(_, value)| match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .filter(|value| !value.is_empty())
}

/// Removes every spelling of `aliases`. GOST deletes only the exact spelling it looks for,
/// which leaves e.g. `Secure=true` both applied and in the metadata.
fn remove(params: &mut Params, aliases: &[&str]) {
    params.retain(|key, _| !aliases.iter().any(|alias| key.eq_ignore_ascii_case(alias)));
}

fn take(params: &mut Params, aliases: &[&str]) -> Option<String> {
    let value = lookup(params, aliases);
    remove(params, aliases);
    value
}

fn reject_unsupported(params: &Params, keys: &[&str]) -> Parsed<()> {
    match keys.iter().find(|key| lookup(params, &[key]).is_some()) {
        Some(key) => Err(Problem::Unsupported(format!("the {key:?} option"))),
        None => Ok(()),
    }
}

/// Refuses an option GOST implements and gost-rs does not, from gost-api's list, which the
/// configuration loader checks too; its default value (`udp=false`, `so_mark=0`) passes.
fn reject_unimplemented(metadata: &Params, scope: Scope) -> Parsed<()> {
    match unimplemented_option(metadata, scope) {
        Some(found) => Err(Problem::Unsupported(found.to_string())),
        None => Ok(()),
    }
}

/// Splits the query over scopes: a key prefixed with a scope's name (`handler.x`) goes to that
/// scope only, without the prefix, and wins over the same key unprefixed; a key with one of the
/// `others` prefixes goes nowhere; any other key goes to every scope.
fn split_scopes<const N: usize>(
    params: &Params,
    scopes: [&str; N],
    others: &[&str],
) -> [Params; N] {
    let mut out: [Params; N] = std::array::from_fn(|_| Params::new());
    for (key, value) in params {
        if others.iter().any(|prefix| key.starts_with(prefix)) {
            continue;
        }
        match scopes.iter().position(|prefix| key.starts_with(prefix)) {
            Some(i) => {
                out[i].insert(key[scopes[i].len()..].to_string(), value.clone());
            }
            None => {
                for scope in &mut out {
                    scope.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
        }
    }
    out
}

/// The user info wins over `auth=<base64 of user:pass>`; `auth` is consumed either way.
fn take_auth(user: Option<AuthConfig>, params: &mut Params) -> Parsed<Option<AuthConfig>> {
    let encoded = take(params, &["auth"]);
    match (user, encoded) {
        (Some(user), _) => Ok(Some(user)),
        (None, Some(encoded)) => decode_auth(&encoded).map(Some),
        (None, None) => Ok(None),
    }
}

/// Go's decoders try URL-safe, then standard base64; these take both with or without padding.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);

fn decode_auth(encoded: &str) -> Parsed<AuthConfig> {
    let bad = || Problem::Invalid("query parameter auth: not the base64 of user:password".into());
    let bytes = URL_SAFE
        .decode(encoded)
        .or_else(|_| STANDARD.decode(encoded))
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (username, password) = text.split_once(':').unwrap_or((&text, ""));
    Ok(AuthConfig {
        username: username.to_string(),
        password: password.to_string(),
        file: None,
    })
}

/// The `-L` certificate keys. GOST keeps the section only when a certificate is named, and so
/// drops a lone `caFile` (no client certificates asked for) or `keyFile` without a word; here
/// any of them keeps it, and the service then requires client certificates or says what is
/// missing.
fn take_server_tls(params: &mut Params) -> Parsed<Option<TlsConfig>> {
    let cert_file = take(params, &["tls.certFile", "certFile", "cert"]);
    let key_file = take(params, &["tls.keyFile", "keyFile", "key"]);
    let ca_file = take(params, &["tls.caFile", "caFile", "ca"]);
    // As GOST's documentation writes it (`?rejectUnknownSNI=true&serverNames=a,b`), which
    // GOST's command line drops: a check that looks set and is not would be worse than none.
    let reject_unknown_sni = take(params, &["tls.rejectUnknownSNI", "rejectUnknownSNI"])
        .map(|v| {
            parse_go_bool(&v).ok_or_else(|| {
                Problem::Invalid(format!(
                    "rejectUnknownSNI: expected true or false, got {v:?}"
                ))
            })
        })
        .transpose()?
        .unwrap_or(false);
    let server_names: Vec<String> = take(params, &["tls.serverNames", "serverNames"])
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let named = cert_file.is_some()
        || key_file.is_some()
        || ca_file.is_some()
        || reject_unknown_sni
        || !server_names.is_empty();
    Ok(named.then(|| TlsConfig {
        cert_file,
        key_file,
        ca_file,
        reject_unknown_sni,
        server_names,
        ..TlsConfig::default()
    }))
}

/// The `-F` TLS keys, for the dialer (not the connector, as in GOST).
fn take_client_tls(params: &mut Params) -> Parsed<TlsConfig> {
    let secure = match take(params, &["tls.secure", "secure"]) {
        Some(value) => parse_go_bool(&value).ok_or_else(|| {
            Problem::Invalid(format!("secure: expected true or false, got {value:?}"))
        })?,
        None => false,
    };
    Ok(TlsConfig {
        cert_file: take(params, &["tls.certFile", "certFile", "cert"]),
        key_file: take(params, &["tls.keyFile", "keyFile", "key"]),
        ca_file: take(params, &["tls.caFile", "caFile", "ca"]),
        secure,
        server_name: take(params, &["tls.serverName", "serverName"]),
        ..TlsConfig::default()
    })
}

/// The server name defaults to the node's host, even for plain TCP dialers (GOST prints it so);
/// GOST leaves the section out when nothing in it matters.
fn client_tls_for(template: &TlsConfig, host: String) -> Option<TlsConfig> {
    let mut tls = template.clone();
    if tls.server_name.is_none() && !host.is_empty() {
        tls.server_name = Some(host);
    }
    let useful =
        tls.secure || tls.cert_file.is_some() || tls.ca_file.is_some() || tls.server_name.is_some();
    useful.then_some(tls)
}

fn take_selector(params: &mut Params) -> Parsed<Option<SelectorConfig>> {
    let strategy = lookup(params, &["strategy"]);
    let max_fails = match lookup(params, &["maxFails", "max_fails"]) {
        Some(value) => value.parse::<i64>().map_err(|_| {
            Problem::Invalid(format!("maxFails: expected a whole number, got {value:?}"))
        })?,
        None => 0,
    };
    let fail_timeout = match lookup(params, &["failTimeout", "fail_timeout"]) {
        Some(value) => positive_duration(&value)?,
        None => None,
    };
    // GOST leaves the keys in the metadata when none of them is set to something positive.
    if strategy.is_none() && max_fails <= 0 && fail_timeout.is_none() {
        return Ok(None);
    }
    remove(
        params,
        &[
            "strategy",
            "maxFails",
            "max_fails",
            "failTimeout",
            "fail_timeout",
        ],
    );
    let strategy = match strategy {
        Some(name) => {
            serde_json::from_value(Value::String(name.to_ascii_lowercase())).map_err(|_| {
                Problem::Invalid(format!(
                    "strategy: unknown selector strategy {name:?}; expected round, rr, random, \
                     rand, fifo, ha, hash or parallel"
                ))
            })?
        }
        None => SelectorStrategy::Round,
    };
    let max_fails = match max_fails {
        n if n <= 0 => 1,
        n => {
            u32::try_from(n).map_err(|_| Problem::Invalid(format!("maxFails: {n} is too large")))?
        }
    };
    // GOST fills in its defaults, and prints them.
    Ok(Some(SelectorConfig {
        strategy: Some(strategy),
        max_fails: Some(max_fails),
        fail_timeout: Some(fail_timeout.unwrap_or_else(|| "30s".to_string())),
    }))
}

/// A `failTimeout` as GOST reads it (a Go duration, else whole seconds), spelled so that the
/// configuration reads it back the same; `None` when not positive, which GOST takes as unset.
fn positive_duration(value: &str) -> Parsed<Option<String>> {
    match parse_go_duration(value) {
        Ok(Some(d)) if !d.is_zero() => Ok(Some(value.to_string())),
        Ok(_) => Ok(None),
        Err(_) => match value.parse::<i64>() {
            Ok(n) if n > 0 => Ok(Some(format!("{n}s"))),
            Ok(_) => Ok(None),
            Err(_) => invalid(format!(
                "failTimeout: expected a duration such as 30s, got {value:?}"
            )),
        },
    }
}

fn take_retries(params: &mut Params) -> Parsed<Option<u32>> {
    let Some(value) = lookup(params, &["retries"]) else {
        return Ok(None);
    };
    let bad = || Problem::Invalid(format!("retries: expected a whole number, got {value:?}"));
    let n = value.parse::<i64>().map_err(|_| bad())?;
    // As in GOST, zero or less stays in the metadata.
    if n <= 0 {
        return Ok(None);
    }
    remove(params, &["retries"]);
    u32::try_from(n).map(Some).map_err(|_| bad())
}

/// Splits `host:port`, `[v6]:port`, `host` or `[v6]`; the port text may be empty.
fn split_host_port(text: &str) -> Parsed<(&str, Option<&str>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return invalid(format!("missing ']' in {text:?}"));
        };
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => invalid(format!("unexpected {after:?} after ']' in {text:?}")),
            },
        };
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') && could_be_ipv6(text) => invalid(format!(
            "{text:?}: an IPv6 address must be in brackets, as in [::1]:8080"
        )),
        Some((host, _)) if host.contains(':') => {
            invalid(format!("{text:?} is not a valid host:port"))
        }
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((text, None)),
    }
}

/// Whether `text` has only the characters of an IPv6 address (with a port, or a zone after
/// `%`), so that the brackets are what it lacks.
fn could_be_ipv6(text: &str) -> bool {
    let address = text.split_once('%').map_or(text, |(address, _)| address);
    address
        .chars()
        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn parse_port(text: &str, min: u16) -> Parsed<u16> {
    match text.parse::<u16>() {
        Ok(port) if port >= min && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => invalid(format!(
            "invalid port {text:?}: expected a number from {min} to 65535"
        )),
    }
}

/// A port or a range such as `8000-8010`.
fn port_range(text: &str, min: u16) -> Parsed<RangeInclusive<u16>> {
    let Some((first, last)) = text.split_once('-') else {
        return parse_port(text, min).map(|port| port..=port);
    };
    // The whole text is quoted: `-1` is a negative port, not a range without its start.
    let (Ok(first), Ok(last)) = (parse_port(first, min), parse_port(last, min)) else {
        return invalid(format!(
            "invalid port {text:?}: expected a number from {min} to 65535, or a range such as \
             8000-8010"
        ));
    };
    if first > last {
        return invalid(format!(
            "invalid port range {text:?}: {first} is above {last}"
        ));
    }
    Ok(first..=last)
}

/// Any odd listen host is left for the bind to judge, but a stray bracket would make the
/// address unreadable.
fn check_listen_host(name: &str) -> Parsed<()> {
    if name.contains(['[', ']']) {
        return invalid(format!("invalid host {name:?}"));
    }
    Ok(())
}

/// The listen addresses of one `-L`: one per port of a range. Without a port the system
/// chooses one (GOST has no default ports).
fn listen_addrs(host: &str) -> Parsed<Vec<String>> {
    let (name, port) = split_host_port(host)?;
    check_listen_host(name)?;
    let ports = match port {
        None | Some("") => 0..=0,
        Some(spec) => port_range(spec, 0)?,
    };
    Ok(ports.map(|port| join_host_port(name, port)).collect())
}

/// Hosts gost-api accepts in a dial address: the characters Go allows in a URL host, less
/// the percent-escapes, and IPv6 literals.
fn check_dial_host(host: &str, bracketed: bool) -> Parsed<()> {
    let ok = if bracketed || host.contains(':') {
        host.parse::<Ipv6Addr>().is_ok()
    } else {
        host.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || "-._~!$&'()*+;=".contains(c)
                || (!c.is_ascii() && !c.is_whitespace())
        })
    };
    if ok {
        Ok(())
    } else {
        invalid(format!("invalid host {host:?}"))
    }
}

/// `host1,host2:port` names several nodes of one hop; a host without a port takes the last
/// one's. Returns each node's address and host.
fn node_addrs(hosts: &str) -> Parsed<Vec<(String, String)>> {
    let mut parts = hosts
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| Ok((split_host_port(part)?, part.starts_with('['))))
        .collect::<Parsed<Vec<_>>>()?;
    if parts.is_empty() {
        parts.push((("", None), false));
    }
    let default_port = parts
        .last()
        .and_then(|((_, port), _)| *port)
        .filter(|p| !p.is_empty());
    parts
        .into_iter()
        .map(|((host, port), bracketed)| {
            check_dial_host(host, bracketed)?;
            let Some(port) = port.filter(|p| !p.is_empty()).or(default_port) else {
                return invalid(format!(
                    "the node address {:?} has no port (there is no default port)",
                    if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host.to_string()
                    }
                ));
            };
            Ok((join_host_port(host, parse_port(port, 1)?), host.to_string()))
        })
        .collect()
}

/// The forward targets of a `-L` URL path: comma-separated `host:port`, port ranges allowed.
fn forward_targets(path: &str) -> Parsed<Vec<ForwardNodeConfig>> {
    let targets = path.trim_matches('/');
    let mut nodes = Vec::new();
    if targets.is_empty() {
        return Ok(nodes);
    }
    for target in targets.split(',') {
        let (host, port) = split_host_port(target)?;
        check_dial_host(host, target.starts_with('['))?;
        let Some(spec) = port.filter(|p| !p.is_empty()) else {
            return invalid(format!("the forward target {target:?} has no port"));
        };
        for port in port_range(spec, 1)? {
            nodes.push(ForwardNodeConfig {
                name: format!("target-{}", nodes.len()),
                addr: join_host_port(host, port),
            });
        }
    }
    Ok(nodes)
}

/// GOST's spreading of targets over a port range's services: a single service takes them all,
/// a single target goes to every service, otherwise service `i` takes target `i` (if any).
fn forwarder_for(
    index: usize,
    services: usize,
    targets: &[ForwardNodeConfig],
) -> Option<ForwarderConfig> {
    let nodes = match (services, targets.len()) {
        (_, 0) => return None,
        (1, _) | (_, 1) => targets.to_vec(),
        _ => vec![targets.get(index)?.clone()],
    };
    Some(ForwarderConfig { nodes })
}

/// The argument as error messages show it: the password (`user:***@`) and an `auth=` value
/// hidden.
fn redact(arg: &str) -> String {
    let start = arg.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = arg.split_at(start);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    // Without an '@' in the authority a password holding '/' or '?' ends at a later '@'
    // (`parse_url` rejects such an argument, but it is still shown): hide up to the last one.
    let at = rest[..authority_end].rfind('@').or_else(|| rest.rfind('@'));
    let mut out = scheme.to_string();
    let tail = match at.and_then(|at| Some((at, rest[..at].find(':')?))) {
        Some((at, colon)) => {
            out.push_str(&rest[..=colon]);
            out.push_str("***");
            &rest[at..]
        }
        None => rest,
    };
    let Some((before, query)) = tail.split_once('?') else {
        out.push_str(tail);
        return out;
    };
    let is_auth = |key: &str| {
        percent_decode_str(key)
            .decode_utf8_lossy()
            .eq_ignore_ascii_case("auth")
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_auth(key) => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    out.push_str(before);
    out.push('?');
    out.push_str(&pairs.join("&"));
    out
}

#[cfg(test)]
mod tests {
    use gost_api::Format;

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn serve(arg: &str) -> Result<Config, CliError> {
        config_from_args(&args(&[arg]), &[])
    }

    fn forward(arg: &str) -> Result<Config, CliError> {
        config_from_args(&args(&[":8080"]), &args(&[arg]))
    }

    fn hop(arg: &str) -> HopConfig {
        forward(arg).unwrap().chains.remove(0).hops.remove(0)
    }

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        Metadata(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(*v)))
                .collect(),
        )
    }

    fn auth(username: &str, password: &str) -> Option<AuthConfig> {
        Some(AuthConfig {
            username: username.into(),
            password: password.into(),
            file: None,
        })
    }

    fn reason(result: Result<Config, CliError>) -> String {
        match result.unwrap_err() {
            CliError::Invalid { reason, .. } => reason,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn errors_name_the_argument_without_the_password() {
        let err = forward("socks5://a@b:x").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"-F "socks5://a@b:x": invalid port "x": expected a number from 1 to 65535"#
        );
        let err = forward("socks5://user:s3cret@b:x").unwrap_err().to_string();
        assert!(err.contains(r#""socks5://user:***@b:x""#), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = serve("http://:99999?auth=dXNlcjpzM2NyZXQ")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth=***") && !err.contains("dXNlcjpzM2NyZXQ"),
            "{err}"
        );
        // A '/' in a password moves the '@' out of the authority; still hidden.
        let err = serve("http://u:se/cret@:8080").unwrap_err().to_string();
        assert!(!err.contains("se/cret") && !err.contains("cret"), "{err}");
        assert!(err.contains("%2F"), "{err}");
        let err = serve("http://u:s#cret@:8080").unwrap_err().to_string();
        assert!(!err.contains("s#cret"), "{err}");
    }

    #[test]
    fn malformed_values_are_errors() {
        assert!(reason(serve("http://u%zz:p@:8080")).contains("percent-encoding"));
        assert!(reason(serve("http://:8080?a=%g1")).contains(r#"query parameter "a""#));
        assert!(reason(serve("http://:8080?auth=%%%")).contains("percent"));
        assert!(reason(serve("http://:8080?auth=!!!")).contains("base64"));
        assert!(reason(serve("http://:8080?a=1;b=2")).contains("';'"));
        assert!(reason(serve("1http://:8080")).contains("scheme"));
        assert!(reason(serve("http://::1:8080")).contains("brackets"));
        assert!(reason(serve("http://[::1:8080")).contains("']'"));
        assert!(reason(serve("a://[[]")).contains("invalid host"));
        assert!(reason(serve("http://:8010-8000")).contains("range"));
        assert!(reason(serve("http://:80\u{7}")).contains("control"));
        assert!(reason(forward("http://example.com")).contains("no port"));
        assert!(reason(forward("http://")).contains("no port"));
        assert!(reason(forward("http://a b:80")).contains("invalid host"));
        assert!(reason(forward("http://[zz]:80")).contains("invalid host"));
        assert!(reason(forward("http://h:0")).contains("port"));
        assert!(reason(forward("http://h:80?secure=yes")).contains("secure"));
        assert!(reason(forward("http://h:80?strategy=best")).contains("strategy"));
        assert!(reason(serve("http://:80?retries=many")).contains("retries"));
        assert_eq!(
            forward("  ").unwrap_err(),
            CliError::Invalid {
                flag: "-F",
                arg: "  ".into(),
                reason: "empty value".into()
            }
        );
    }

    /// Each error names what is wrong, quoting the offending text, rather than a rule that a
    /// misreading of the argument breaks.
    #[test]
    fn errors_name_the_offending_text() {
        // A scheme missing its `//` or its `:` is not taken for a host and forward targets.
        let reason_of = |arg| reason(serve(arg));
        for (arg, shown, missing) in [
            ("http:/127.0.0.1:38080", "\"http:/\"", "'/'"),
            ("socks5+ws:/:1080", "\"socks5+ws:/\"", "'/'"),
            ("HTTPS:/:443", "\"HTTPS:/\"", "'/'"),
            ("http//127.0.0.1:38080", "\"http//\"", "':'"),
            ("foo:/:1", "\"foo:/\"", "'/'"),
        ] {
            let reason = reason_of(arg);
            assert!(
                reason.contains(shown) && reason.contains(missing) && reason.contains("://"),
                "{arg}: {reason}"
            );
        }
        assert!(reason(forward("http:/h:1")).contains("\"http:/\""));
        // Credentials after it are not shown.
        let err = serve("http:/user:s3cret@h:1").unwrap_err().to_string();
        assert!(
            err.contains("\"http:/\" lacks") && !err.contains("s3cret"),
            "{err}"
        );
        // Without a scheme GOST knows, `user:/...@` may be a password starting with '/'.
        assert!(reason(serve("u:/p@:8080")).contains("'@' after the host"));
        let metrics = metrics_from_arg("u:/p@:9000").unwrap_err().to_string();
        assert!(metrics.contains("'@' after the host"), "{metrics}");
        // Still forward targets (port forwarding), which gost-rs does not implement.
        let err = serve(":8080/10.0.0.1:80").unwrap_err().to_string();
        assert!(err.contains("port forwarding"), "{err}");
        let err = serve("localhost:8080/10.0.0.1:80").unwrap_err().to_string();
        assert!(err.contains("port forwarding"), "{err}");

        let no_scheme = reason_of("://127.0.0.1:1");
        assert!(
            no_scheme.starts_with("no scheme before \"://\""),
            "{no_scheme}"
        );

        // A negative port is quoted whole, not as a range without its start.
        assert_eq!(
            reason_of("http://127.0.0.1:-1"),
            "invalid port \"-1\": expected a number from 0 to 65535, or a range such as 8000-8010"
        );
        assert!(reason_of("http://:8000-").contains("\"8000-\""));
        assert!(reason_of("http://:8000-99999").contains("\"8000-99999\""));
        assert!(reason_of("relay://:1/h:-1").contains("\"-1\": expected a number from 1"));
        assert!(reason(forward("http://h:-1")).contains("\"-1\""));

        // Brackets are the fix only for what may be an IPv6 address.
        assert_eq!(
            reason_of("http://127.0.0.1:38080,127.0.0.1:38081"),
            "\"127.0.0.1:38080,127.0.0.1:38081\" is not a valid host:port"
        );
        assert!(reason_of("http://host:1:2").contains("not a valid host:port"));
        assert!(reason_of("http://fe80::1:8080").contains("brackets"));
        assert!(reason_of("http://fe80::1%eth0:8080").contains("brackets"));
        assert!(reason_of("http://::ffff:1.2.3.4:80").contains("brackets"));
    }

    #[test]
    fn unsupported_features_are_refused() {
        let err = serve("tcp://:8080/10.0.0.1:80").unwrap_err();
        assert!(
            matches!(err, CliError::Unsupported { flag: "-L", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("port forwarding"), "{err}");
        let err = serve("http://:8080?bypass=10.0.0.0/8").unwrap_err();
        assert!(err.to_string().contains(r#""bypass" option"#), "{err}");
        assert!(matches!(
            forward("http://h:1?hosts=a:1.2.3.4"),
            Err(CliError::Unsupported { .. })
        ));
        let err = serve("relay://:8080/h:80?strategy=fifo").unwrap_err();
        assert!(matches!(err, CliError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn types_gost_has_and_we_do_not_are_refused_by_name() {
        let feature = |result: Result<Config, CliError>| match result.unwrap_err() {
            CliError::Unsupported { feature, .. } => feature,
            other => panic!("expected Unsupported, got {other}"),
        };
        for (arg, expected) in [
            ("ss://aes-128-gcm:secret@:8338", "GOST's `ss` handler"),
            ("api://:18080", "GOST's `api` handler"),
            ("metrics://:9000", "GOST's `metrics` handler"),
            ("tcp://:8080", "GOST's `tcp` handler"),
            ("socks5+wt://:8443", "GOST's `wt` listener"),
            ("wt://:8443", "GOST's `wt` listener"),
            ("mwss://:443", "GOST's `mwss` listener"),
            ("relay+kcp://:8388", "GOST's `kcp` listener"),
        ] {
            assert_eq!(feature(serve(arg)), expected, "-L {arg}");
        }
        for (arg, expected) in [
            ("mwss://h:443", "GOST's `mwss` dialer"),
            ("mtls://h:443", "GOST's `mtls` dialer"),
            ("http+utls://h:443", "GOST's `utls` dialer"),
            ("ss://aes-128-gcm:secret@h:8338", "GOST's `ss` connector"),
            ("direct://h:1", "GOST's `direct` connector"),
            ("tcp://h:1", "GOST's `tcp` connector"),
            // gost-api has the type, this build has no connector for it; named as written.
            ("socks4://h:1080", "GOST's `socks4` connector"),
            ("socks4a://h:1080", "GOST's `socks4a` connector"),
            ("SOCKS4A+ws://h:80", "GOST's `socks4a` connector"),
        ] {
            assert_eq!(feature(forward(arg)), expected, "-F {arg}");
        }
        let err = forward("socks4://127.0.0.1:1").unwrap_err().to_string();
        assert_eq!(
            err,
            "-F \"socks4://127.0.0.1:1\": GOST's `socks4` connector is not supported by gost-rs yet"
        );
        // The handlers are there.
        for arg in ["socks4://:1080", "socks4a://:1080"] {
            let service = serve(arg).unwrap().services.remove(0);
            assert_eq!(service.handler.kind, HandlerType::Socks4, "{arg}");
        }
        let err = serve("ss://u:p@:8338").unwrap_err().to_string();
        assert!(err.contains("not supported by gost-rs"), "{err}");
        // Names GOST does not register keep GOST's fallbacks (see `scheme_fallbacks`); a path
        // is still the port-forwarding error GOST's own rewrite of the handler leads to.
        assert!(feature(serve("ss://:1/h:80")).contains("port forwarding"));
    }

    /// Every name our types take is one GOST registers in the same role, so that no name GOST
    /// would replace by its fallback means something else to us.
    #[test]
    fn our_types_are_gosts() {
        let pairs: [(&[&str], &[&str]); 4] = [
            (HandlerType::NAMES, GOST_HANDLERS),
            (ListenerType::NAMES, GOST_LISTENERS),
            (ConnectorType::NAMES, GOST_CONNECTORS),
            (DialerType::NAMES, GOST_DIALERS),
        ];
        for (ours, gost) in pairs {
            for name in ours {
                assert!(gost.contains(name), "{name} is not GOST's");
            }
        }
    }

    #[test]
    fn metrics_flag_is_read_as_gost_reads_it() {
        // GOST's documentation example.
        let metrics = metrics_from_arg("user:pass@:9000?path=/metrics").unwrap();
        assert_eq!(metrics.addr, ":9000");
        assert_eq!(metrics.path.as_deref(), Some("/metrics"));
        assert_eq!(metrics.auth, auth("user", "pass"));
        let metrics = metrics_from_arg("p%40m:s%3Ac%40ret@127.0.0.1:9000?Path=/m").unwrap();
        assert_eq!(metrics.auth, auth("p@m", "s:c@ret"));
        assert_eq!(metrics.path.as_deref(), Some("/m"));
        let metrics = metrics_from_arg("[::1]:9000").unwrap();
        assert_eq!(
            (metrics.addr.as_str(), metrics.path, metrics.auth),
            ("[::1]:9000", None, None)
        );
        assert_eq!(metrics_from_arg("http://:9000").unwrap().addr, ":9000");
        let reason = |arg| match metrics_from_arg(arg).unwrap_err() {
            CliError::Invalid { reason, .. } => reason,
            other => panic!("expected Invalid, got {other}"),
        };
        assert!(reason(":9000?paht=/x").contains("paht"));
        assert!(reason(":9000/metrics").contains("?path=/metrics"));
        assert!(reason("localhost").contains("no port"));
        assert!(reason(":90000").contains("port"));
        assert!(reason("https://:9000").contains("plain HTTP"));
        assert!(reason("u:p%zz@:9000").contains("percent-encoding"));
        // The password is never shown.
        let err = metrics_from_arg("user:s3cret@:x").unwrap_err().to_string();
        assert!(err.starts_with(r#"-metrics "user:***@:x""#), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn relay_keeps_its_forward_targets() {
        let config = serve("relay://:8080/a:80,b:8000-8001").unwrap();
        let service = &config.services[0];
        assert_eq!(service.handler.kind, HandlerType::Relay);
        let targets: Vec<_> = service
            .forwarder
            .as_ref()
            .unwrap()
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.addr.as_str()))
            .collect();
        assert_eq!(
            targets,
            [
                ("target-0", "a:80"),
                ("target-1", "b:8000"),
                ("target-2", "b:8001")
            ]
        );
        assert!(reason(serve("relay://:8080/a")).contains("no port"));
        // Over a port range, service i takes target i.
        let config = serve("relay://:8000-8002/a:1,b:2").unwrap();
        let addrs: Vec<_> = config
            .services
            .iter()
            .map(|s| s.forwarder.as_ref().map(|f| f.nodes[0].addr.clone()))
            .collect();
        assert_eq!(addrs, [Some("a:1".into()), Some("b:2".into()), None]);
    }

    #[test]
    fn listen_addresses() {
        let addrs = |arg| {
            serve(arg)
                .unwrap()
                .services
                .into_iter()
                .map(|s| (s.name, s.addr))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            addrs(":8000-8002"),
            [
                ("service-0".to_string(), ":8000".to_string()),
                ("service-1".into(), ":8001".into()),
                ("service-2".into(), ":8002".into())
            ]
        );
        assert_eq!(addrs("http://"), [("service-0".into(), ":0".into())]);
        assert_eq!(
            addrs("http://127.0.0.1"),
            [("service-0".into(), "127.0.0.1:0".into())]
        );
        assert_eq!(
            addrs("socks5://[::1]"),
            [("service-0".into(), "[::1]:0".into())]
        );
        assert_eq!(
            addrs("user:pass@localhost:1080"),
            [("service-0".into(), "localhost:1080".into())]
        );
        assert!(
            config_from_args(&args(&["", " "]), &[])
                .unwrap()
                .services
                .is_empty()
        );
    }

    #[test]
    fn scheme_fallbacks() {
        let kinds = |arg: &str| {
            let s = serve(arg).unwrap().services.remove(0);
            let n = &hop(arg).nodes[0];
            (
                s.handler.kind.as_str(),
                s.listener.kind.as_str(),
                n.connector.kind.as_str(),
                n.dialer.kind.as_str(),
            )
        };
        assert_eq!(kinds("ws://:1"), ("auto", "ws", "http", "ws"));
        assert_eq!(kinds("h3://:1"), ("auto", "h3", "http", "h3"));
        assert_eq!(kinds("http3://:1"), ("http3", "http3", "http", "http3"));
        assert_eq!(kinds("HTTPS://:1"), ("http", "tls", "http", "tls"));
        assert_eq!(kinds("socks+wss://:1"), ("socks5", "wss", "socks5", "wss"));
        assert_eq!(kinds("foo+bar://:1"), ("auto", "tcp", "http", "tcp"));
        // GOST has a `pht` listener and dialer but no such handler or connector.
        assert_eq!(kinds("pht://:1"), ("auto", "pht", "http", "pht"));
        assert_eq!(kinds("tls://:1"), ("auto", "tls", "http", "tls"));
        assert_eq!(kinds("grpc://:1"), ("auto", "grpc", "http", "grpc"));
        assert_eq!(kinds("relay+ws+tls://:1"), ("auto", "tcp", "http", "tcp"));
        assert_eq!(kinds(":1"), ("auto", "tcp", "http", "tcp"));
    }

    #[test]
    fn credentials() {
        let handler_auth = |arg| serve(arg).unwrap().services.remove(0).handler.auth;
        assert_eq!(
            handler_auth("http://u%40x:p%3Aw%26d@:8080"),
            auth("u@x", "p:w&d")
        );
        assert_eq!(handler_auth("http://a@b:c@d@:8080"), auth("a@b", "c@d"));
        assert_eq!(handler_auth("http://user@:8080"), auth("user", ""));
        // "user:pass" in standard, URL-safe, padded and unpadded base64.
        assert_eq!(
            handler_auth("http://:8080?auth=dXNlcjpwYXNz"),
            auth("user", "pass")
        );
        assert_eq!(
            handler_auth("http://:8080?auth=dX5-PjpwPz8"),
            auth("u~~>", "p??")
        );
        // A '+' in a query is a space, so standard base64 needs %2B, as in GOST.
        assert_eq!(
            handler_auth("http://:8080?auth=dX5%2BPjpwPz8="),
            auth("u~~>", "p??")
        );
        assert_eq!(handler_auth("http://:8080?auth=dXNlcg=="), auth("user", ""));
        assert_eq!(handler_auth("http://:8080?auth=dXNlcg"), auth("user", ""));
        // The user info wins, and `auth` never reaches the -L metadata.
        let service = serve("http://a:b@:8080?auth=!!!")
            .unwrap()
            .services
            .remove(0);
        assert_eq!(service.handler.auth, auth("a", "b"));
        assert!(service.handler.metadata.is_empty() && service.metadata.is_empty());
        // On -F, GOST's hop keeps it.
        let hop = hop("socks5://h:1080?auth=dXNlcjpwYXNz");
        assert_eq!(hop.nodes[0].connector.auth, auth("user", "pass"));
        assert_eq!(hop.metadata, md(&[("auth", "dXNlcjpwYXNz")]));
        assert!(hop.nodes[0].metadata.is_empty());
    }

    #[test]
    fn scoped_metadata_on_services() {
        let service = serve("http://:8080?a=1&handler.b=2&listener.c=3&service.d=4&handler.a=9&cert=c.pem&key=k.pem&retries=2&so_mark=0").unwrap().services.remove(0);
        // A zero `so_mark` is not moved to the service, as in GOST.
        assert_eq!(
            service.handler.metadata,
            md(&[("a", "9"), ("b", "2"), ("so_mark", "0")])
        );
        assert_eq!(service.handler.retries, Some(2));
        assert_eq!(
            service.listener.metadata,
            md(&[("a", "1"), ("c", "3"), ("retries", "2"), ("so_mark", "0")])
        );
        assert_eq!(
            service.metadata,
            md(&[("a", "1"), ("d", "4"), ("retries", "2"), ("so_mark", "0")])
        );
        let tls = service.listener.tls.unwrap();
        assert_eq!(
            (tls.cert_file.as_deref(), tls.key_file.as_deref()),
            (Some("c.pem"), Some("k.pem"))
        );
        // A lone `ca` keeps the section (GOST drops it, and with it the client certificates
        // the user asked for); the keys never reach the metadata.
        let service = serve("http://:8080?ca=ca.pem").unwrap().services.remove(0);
        assert_eq!(
            service.listener.tls.unwrap().ca_file.as_deref(),
            Some("ca.pem")
        );
        assert!(service.listener.metadata.is_empty());
        let service = serve("http://:8080").unwrap().services.remove(0);
        assert!(service.listener.tls.is_none());
    }

    #[test]
    fn options_gost_implements_and_we_do_not_are_refused() {
        let feature = |result: Result<Config, CliError>| match result.unwrap_err() {
            CliError::Unsupported { feature, .. } => feature,
            other => panic!("expected Unsupported, got {other}"),
        };
        for (arg, key) in [
            ("http://:8080?proxyProtocol=1", "proxyProtocol"),
            ("http://:8080?interface=eth0", "interface"),
            ("http://:8080?so_mark=7", "so_mark"),
            ("http://:8080?netns=blue", "netns"),
            ("http://:8080?netns.out=red", "netns.out"),
            ("http://:8080?service.INTERFACE=eth0", "INTERFACE"),
            ("http://:8080?udp=true", "udp"),
            ("socks5://:1080?bind=1", "bind"),
            ("relay://:8421?handler.bind=true", "bind"),
            ("socks5://:1080?sniffing=true", "sniffing"),
            ("http://:8080?mitm.certFile=ca.pem", "mitm.certFile"),
            ("socks5://:1080?tor=true", "tor"),
            ("socks5://:1080?enableTor=true", "enableTor"),
        ] {
            let feature = feature(serve(arg));
            assert!(
                feature.starts_with(&format!("the {key:?} option (")),
                "-L {arg}: {feature}"
            );
        }
        for (arg, key) in [
            ("http://h:1?interface=eth0", "interface"),
            ("http://h:1?so_mark=100", "so_mark"),
            ("http://h:1?proxyProtocol=2", "proxyProtocol"),
            ("http://h:1?netns=blue", "netns"),
            ("http://h:1?node.netns=blue", "netns"),
        ] {
            let feature = feature(forward(arg));
            assert!(
                feature.starts_with(&format!("the {key:?} option (")),
                "-F {arg}: {feature}"
            );
        }
        let err = serve("http://:8080?proxyProtocol=1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PROXY protocol") && err.contains("not supported by gost-rs"),
            "{err}"
        );
        // Off is the default, and what gost-rs does; and where GOST does not read a key, it
        // stays metadata.
        for arg in [
            "socks5://:1080?udp=false&bind=0&sniffing=false&so_mark=0&proxyProtocol=0",
            "http://:8080?listener.udp=true",
        ] {
            serve(arg).unwrap();
        }
        forward("http://h:1?so_mark=0&connector.interface=eth0").unwrap();
    }

    #[test]
    fn scoped_metadata_on_nodes() {
        let wide = hop(
            "relay+wss://a,b:443?x=1&node.n=2&connector.c=3&dialer.d=4&hop.h=5&Secure=1&caFile=ca.pem&strategy=fifo&maxFails=3",
        );
        assert_eq!(
            wide.metadata,
            md(&[
                ("Secure", "1"),
                ("caFile", "ca.pem"),
                ("h", "5"),
                ("x", "1")
            ])
        );
        assert_eq!(
            wide.selector,
            Some(SelectorConfig {
                strategy: Some(SelectorStrategy::Fifo),
                max_fails: Some(3),
                fail_timeout: Some("30s".into()),
            })
        );
        let names: Vec<_> = wide
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.addr.as_str()))
            .collect();
        assert_eq!(names, [("node-0", "a:443"), ("node-1", "b:443")]);
        for node in &wide.nodes {
            assert_eq!(node.metadata, md(&[("n", "2"), ("x", "1")]));
            assert_eq!(node.connector.metadata, md(&[("c", "3"), ("x", "1")]));
            assert_eq!(node.dialer.metadata, md(&[("d", "4"), ("x", "1")]));
            let tls = node.dialer.tls.as_ref().unwrap();
            assert!(tls.secure);
            assert_eq!(tls.ca_file.as_deref(), Some("ca.pem"));
            // Each node's own host, where GOST would send "a,b".
            assert_eq!(tls.server_name.as_deref(), Some(&node.addr[..1]));
        }
        assert_eq!(hop_addrs("http://[::1],[::2]:80"), ["[::1]:80", "[::2]:80"]);
        assert_eq!(hop_addrs("http://a:1,b:2"), ["a:1", "b:2"]);
        assert_eq!(
            hop("http://[::1]:80").nodes[0]
                .dialer
                .tls
                .as_ref()
                .unwrap()
                .server_name
                .as_deref(),
            Some("::1")
        );
        // Integer seconds become a Go duration.
        assert_eq!(
            hop("http://h:1?failTimeout=10")
                .selector
                .unwrap()
                .fail_timeout
                .as_deref(),
            Some("10s")
        );
        // Not positive: not a selector, and the key stays.
        let unset = hop("http://h:1?maxFails=0");
        assert!(unset.selector.is_none());
        assert_eq!(unset.metadata, md(&[("maxFails", "0")]));
    }

    fn hop_addrs(arg: &str) -> Vec<String> {
        hop(arg).nodes.into_iter().map(|n| n.addr).collect()
    }

    #[test]
    fn chains_attach_to_every_service() {
        let config =
            config_from_args(&args(&[":1", "socks5://:2"]), &args(&["h:1", "h:2"])).unwrap();
        assert!(
            config
                .services
                .iter()
                .all(|s| s.handler.chain.as_deref() == Some("chain-0"))
        );
        let hops: Vec<_> = config.chains[0]
            .hops
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(hops, ["hop-0", "hop-1"]);
        assert!(
            config_from_args(&args(&[":1"]), &[])
                .unwrap()
                .chains
                .is_empty()
        );
    }

    /// (scheme, -L handler, -L listener, -F connector, -F dialer), from the table in §9.2.
    const SCHEMES: &[(&str, &str, &str, &str, &str)] = &[
        ("http", "http", "tcp", "http", "tcp"),
        ("https", "http", "tls", "http", "tls"),
        ("socks5", "socks5", "tcp", "socks5", "tcp"),
        ("socks", "socks5", "tcp", "socks5", "tcp"),
        ("relay", "relay", "tcp", "relay", "tcp"),
        ("socks5+ws", "socks5", "ws", "socks5", "ws"),
        ("ws", "auto", "ws", "http", "ws"),
        ("wss", "auto", "wss", "http", "wss"),
        ("http2", "http2", "http2", "http2", "http2"),
        ("h2", "auto", "h2", "http", "h2"),
        ("h2c", "auto", "h2c", "http", "h2c"),
        ("socks5+h2", "socks5", "h2", "socks5", "h2"),
        ("grpc", "auto", "grpc", "http", "grpc"),
        ("relay+grpc", "relay", "grpc", "relay", "grpc"),
        ("pht", "auto", "pht", "http", "pht"),
        ("phts", "auto", "phts", "http", "phts"),
        ("relay+pht", "relay", "pht", "relay", "pht"),
        ("h3", "auto", "h3", "http", "h3"),
        ("http3", "http3", "http3", "http", "http3"),
        ("auto", "auto", "tcp", "http", "tcp"),
    ];

    fn encode(text: &str) -> String {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    fn host_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just(String::new()),
            any::<[u8; 4]>().prop_map(|o| format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])),
            any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string()),
            "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,6}){0,2}",
        ]
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(
            text in proptest::prelude::prop_oneof![
                "\\PC{0,40}",
                "[a-z0-9+]{0,9}://[-a-z0-9:@%/?&=.,\\[\\]#;+ ]{0,40}",
                "(http|relay)://(u:p@)?(:1|\\[::1\\]:2|h:3)(/[a-z:0-9,-]{0,9})?\\?[a-zA-Z._]{1,9}=\\PC{0,20}",
            ],
        ) {
            for (services, nodes) in [(vec![text.clone()], vec![]), (vec![":1".to_string()], vec![text.clone()])] {
                match config_from_args(&services, &nodes) {
                    // Valid, and what `gost -O yaml` or `-O json` prints loads back the same.
                    Ok(config) => {
                        let yaml = gost_api::to_yaml(&config);
                        assert_eq!(gost_api::from_str(&yaml, Format::Yaml), Ok(config.clone()));
                        let json = gost_api::to_json(&config);
                        assert_eq!(gost_api::from_str(&json, Format::Json), Ok(config));
                    }
                    Err(err) => {
                        err.to_string();
                    }
                }
            }
        }

        #[test]
        fn parsed_urls_carry_their_parts(
            scheme in proptest::sample::select(SCHEMES),
            user in "\\PC{0,12}",
            pass in "\\PC{0,12}",
            host in host_strategy(),
            port in 1u16..,
            query in proptest::collection::btree_map("x[a-zA-Z0-9_.-]{0,8}", "\\PC{0,12}", 0..4),
        ) {
            let (name, handler, listener, connector, dialer) = scheme;
            let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
            let encoded: Vec<String> = query.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
            let arg = format!("{name}://{}:{}@{authority}?{}", encode(&user), encode(&pass), encoded.join("&"));
            let expected_md = Metadata(query.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect());

            let service = serve(&arg).unwrap().services.remove(0);
            assert_eq!(&service.addr, &authority);
            assert_eq!((service.handler.kind.as_str(), service.listener.kind.as_str()), (handler, listener));
            assert_eq!(service.handler.auth, auth(&user, &pass));
            assert_eq!(&service.handler.metadata, &expected_md);
            assert_eq!(&service.listener.metadata, &expected_md);
            assert_eq!(&service.metadata, &expected_md);

            let hop = hop(&arg);
            let node = &hop.nodes[0];
            assert_eq!(&node.addr, &authority);
            assert_eq!((node.connector.kind.as_str(), node.dialer.kind.as_str()), (connector, dialer));
            assert_eq!(node.connector.auth.clone(), auth(&user, &pass));
            assert_eq!(node.dialer.tls.as_ref().and_then(|t| t.server_name.clone()), Some(host.clone()).filter(|h| !h.is_empty()));
            for metadata in [&hop.metadata, &node.metadata, &node.connector.metadata, &node.dialer.metadata] {
                assert_eq!(metadata, &expected_md);
            }
        }
    }
}
