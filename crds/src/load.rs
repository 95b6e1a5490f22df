//! Loading, validating and printing configurations.
//!
//! Text is deserialized into [`Config`] as it is parsed (YAML through serde-saphyr, JSON
//! through serde_json, read as loosely as GOST reads it: [`crate::de`]), with the path of every
//! failing field tracked, then checked for cross-references (chains, hops, authers) and
//! addresses. Every error says where (`services[0].handler.type`) and what would be accepted.

use std::collections::HashSet;
use std::fmt;

use serde_json::Value;

use crate::config::*;
use crate::de::Lenient;
use crate::metadata::{Metadata, Scope, parse_go_duration, unimplemented_option};

/// The two text formats GOST reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// YAML (the default).
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    /// The format a file name implies (`.json` is JSON, anything else YAML), or for standard
    /// input the one the first non-blank character implies, as GOST does.
    pub fn detect(file_name: Option<&str>, text: &str) -> Format {
        match file_name {
            Some(name) if name.to_ascii_lowercase().ends_with(".json") => Format::Json,
            Some(name)
                if name.to_ascii_lowercase().ends_with(".yaml")
                    || name.to_ascii_lowercase().ends_with(".yml") =>
            {
                Format::Yaml
            }
            _ if text.trim_start().starts_with('{') => Format::Json,
            _ => Format::Yaml,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        })
    }
}

/// Why a configuration was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not well-formed YAML or JSON.
    #[error("invalid {format}: {message}")]
    Syntax {
        /// The format the text was read as.
        format: Format,
        /// The parser's description, with line and column.
        message: String,
    },
    /// A field has a wrong type or value, or refers to something that does not exist.
    #[error("{path}: {message}")]
    Field {
        /// Where, e.g. `services[0].handler.type`.
        path: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
}

impl ConfigError {
    fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Field {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Top-level sections of GOST's schema that gost-rs does not implement. They are rejected by
/// name rather than ignored: silently dropping a `bypasses` or `limiters` section would leave a
/// proxy more open than its owner believes.
const UNSUPPORTED_SECTIONS: &[&str] = &[
    "admissions",
    "api",
    "bypasses",
    "climiters",
    "hosts",
    "ingresses",
    "limiters",
    "loggers",
    "observers",
    "plugins",
    "profiling",
    "quotas",
    "recorders",
    "resolvers",
    "rewriters",
    "rlimiters",
    "routers",
    "sds",
];

/// Most YAML nodes and events a configuration may have. One `-L` with a port range makes up to
/// 65,536 services of about 13 nodes and 26 events each, and `gost -O yaml` of such a command
/// line must load back; the parser's defaults (250,000 nodes) stop near 19,000 services.
/// These bounds still stop a runaway file long before memory does.
const MAX_YAML_NODES: usize = 4_000_000;
/// See [`MAX_YAML_NODES`].
const MAX_YAML_EVENTS: usize = 2 * MAX_YAML_NODES;

/// The parser's resource limits: room for the largest configuration the command line makes;
/// the limits on aliases and anchors, which stop expansion bombs, stay at their defaults.
fn yaml_budget() -> serde_saphyr::Budget {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_YAML_NODES;
    budget.max_events = MAX_YAML_EVENTS;
    budget
}

/// Parses and validates a configuration.
pub fn from_str(text: &str, format: Format) -> Result<Config, ConfigError> {
    let typed = match format {
        Format::Yaml => {
            if text.trim().is_empty() {
                return Ok(Config::default());
            }
            // YAML 1.1 spellings such as `n` or `yes` stay strings (a node named `n` is not
            // `false`), as in GOST's YAML library.
            let mut options = serde_saphyr::Options::default();
            options.strict_booleans = true;
            options.budget = Some(yaml_budget());
            // No excerpt of the file in errors: they reach logs and `/readyz`, and the lines
            // around a mistake can hold a password. Line, column and field path remain.
            options.with_snippet = false;
            // Remember where a typed error happened; the wrapper only passes the error on.
            let mut failed_at = None;
            let result =
                serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
                    // A document that is only a null (`~`) is an empty configuration.
                    serde_path_to_error::deserialize::<_, Option<Config>>(Lenient::new(de, false))
                        .map(Option::unwrap_or_default)
                        .map_err(|e| {
                            failed_at = Some(e.path().to_string());
                            e.into_inner()
                        })
                });
            match (result, failed_at) {
                (Ok(config), _) => config,
                (Err(e), Some(path)) if path != "." => {
                    return Err(field_error(known_part(&path), yaml_message(&e)));
                }
                (Err(e), _) => {
                    return Err(ConfigError::Syntax {
                        format,
                        message: yaml_message(&e),
                    });
                }
            }
        }
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let lenient = Lenient::new(&mut de, true);
            let config = serde_path_to_error::deserialize::<_, Option<Config>>(lenient);
            let config = config.map(Option::unwrap_or_default).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if inner.is_data() {
                    field_error(path, inner.to_string())
                } else {
                    ConfigError::Syntax {
                        format,
                        message: inner.to_string(),
                    }
                }
            })?;
            de.end().map_err(|e| ConfigError::Syntax {
                format,
                message: e.to_string(),
            })?;
            config
        }
    };
    validate(&typed)?;
    Ok(typed)
}

/// Deserializes and validates a configuration from a generic tree (e.g. a custom resource's
/// embedded config).
pub fn from_value(tree: Value) -> Result<Config, ConfigError> {
    let config: Config = serde_path_to_error::deserialize(Lenient::new(tree, true))
        .map_err(|e| field_error(e.path().to_string(), e.into_inner().to_string()))?;
    validate(&config)?;
    Ok(config)
}

/// The part of a field path that names fields: a mistake found where a key was expected
/// (a duplicate key, bad indentation) ends the path in `?`, which names nothing.
fn known_part(path: &str) -> String {
    let mut path = path;
    while let Some(parent) = path.strip_suffix(".?") {
        path = parent;
    }
    if path == "?" {
        String::new()
    } else {
        path.to_string()
    }
}

/// A YAML error's text without advice meant for programs that use the YAML library.
fn yaml_message(error: &serde_saphyr::Error) -> String {
    error
        .to_string()
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "")
        .replace(
            "cannot deserialize null into string; use Option<String>",
            "a text value is required here, found none (null)",
        )
        .replace(
            "invalid char: cannot deserialize null; use Option<char>",
            "a character is required here, found none (null)",
        )
}

/// A deserializer's message without the value it found: serde writes `invalid type: string
/// "…", expected …`, and that value can be a password written where a section was expected
/// (`auth: "user:pass"`). The kind of value stays (`a string`), enough to see the mistake.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let found = ["invalid type: ", "invalid value: "]
            .iter()
            .filter_map(|lead| rest.find(lead).map(|at| (at, at + lead.len())))
            .min();
        let Some((_, after)) = found else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        // The found value runs to the `, expected` that serde always writes after it; a
        // string's, written as Rust escapes it, to its closing quote first (it may hold
        // `, expected` itself).
        let from = match rest.strip_prefix("string \"") {
            Some(text) => {
                closing_quote(text).map_or(rest.len(), |q| rest.len() - text.len() + q + 1)
            }
            None => 0,
        };
        let Some(end) = rest[from..].find(", expected ").map(|e| from + e) else {
            continue;
        };
        let value = &rest[..end];
        let kind = [
            ("string ", "a string"),
            ("integer ", "an integer"),
            ("floating point ", "a number"),
            ("character ", "a character"),
        ]
        .iter()
        .find(|(prefix, _)| value.starts_with(prefix))
        .map(|(_, kind)| *kind);
        match kind {
            Some(kind) => out.push_str(kind),
            None => out.push_str(value),
        }
        rest = &rest[end..];
    }
}

/// Where the string that `text` starts inside ends: its first quote not escaped by a
/// backslash.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

fn field_error(path: String, message: String) -> ConfigError {
    let message = without_values(&message);
    let path = if path == "." || path.is_empty() {
        "(top level)".to_string()
    } else {
        path
    };
    if path == "log.rotation" {
        return ConfigError::field(
            path,
            "GOST's log rotation is not supported by gost-rs; remove it (gost-rs appends to \
             log.output, so a rotation that copies and truncates the file works)",
        );
    }
    if UNSUPPORTED_SECTIONS.contains(&path.to_ascii_lowercase().as_str()) {
        return ConfigError::field(
            path,
            "this GOST section is not supported by gost-rs; remove it (ignoring it would \
             change what the proxy allows without telling you)",
        );
    }
    ConfigError::field(path, message)
}

/// Checks what serde cannot: unique names, references between sections, addresses.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let chain_names = unique_names(config.chains.iter().map(|c| c.name.as_str()), "chains")?;
    let hop_names = unique_names(config.hops.iter().map(|h| h.name.as_str()), "hops")?;
    let auther_names = unique_names(config.authers.iter().map(|a| a.name.as_str()), "authers")?;
    unique_names(config.services.iter().map(|s| s.name.as_str()), "services")?;

    for (i, service) in config.services.iter().enumerate() {
        let path = format!("services[{i}]");
        check_listen_addr(&service.addr, &format!("{path}.addr"))?;
        check_options(
            &service.metadata,
            Scope::Service,
            &format!("{path}.metadata"),
        )?;
        check_options(
            &service.handler.metadata,
            Scope::Handler,
            &format!("{path}.handler.metadata"),
        )?;
        check_options(
            &service.listener.metadata,
            Scope::Listener,
            &format!("{path}.listener.metadata"),
        )?;
        for (auth, at) in [
            (&service.handler.auth, "handler.auth"),
            (&service.listener.auth, "listener.auth"),
        ] {
            check_no_users_file(auth.as_ref(), &format!("{path}.{at}"))?;
        }
        if let Some(chain) = &service.handler.chain
            && !chain_names.contains(chain.as_str())
        {
            return Err(ConfigError::field(
                format!("{path}.handler.chain"),
                format!(
                    "no chain named {chain:?}; defined chains: {}",
                    list(&chain_names)
                ),
            ));
        }
        let authers = service
            .handler
            .auther
            .iter()
            .chain(&service.handler.authers);
        for (j, auther) in authers.enumerate() {
            if !auther_names.contains(auther.as_str()) {
                let field = if j == 0 && service.handler.auther.is_some() {
                    "auther".to_string()
                } else {
                    "authers".to_string()
                };
                return Err(ConfigError::field(
                    format!("{path}.handler.{field}"),
                    format!(
                        "no auther named {auther:?}; defined authers: {}",
                        list(&auther_names)
                    ),
                ));
            }
        }
        if let Some(forwarder) = &service.forwarder {
            for (j, node) in forwarder.nodes.iter().enumerate() {
                check_dial_addr(&node.addr, &format!("{path}.forwarder.nodes[{j}].addr"))?;
            }
        }
    }
    for (i, chain) in config.chains.iter().enumerate() {
        if chain.hops.is_empty() {
            return Err(ConfigError::field(
                format!("chains[{i}].hops"),
                "a chain needs at least one hop",
            ));
        }
        for (j, hop) in chain.hops.iter().enumerate() {
            let path = format!("chains[{i}].hops[{j}]");
            if hop.is_reference() && !hop_names.contains(hop.name.as_str()) {
                return Err(ConfigError::field(
                    format!("{path}.nodes"),
                    format!(
                        "hop {:?} has no nodes and names no top-level hop; defined hops: {}",
                        hop.name,
                        list(&hop_names)
                    ),
                ));
            }
            check_hop(hop, &path)?;
            // GOST takes a chain's hop without `nodes` (a missing key, not `nodes: []`) for
            // the top-level hop of its name, `file` or not; here its `file` defines it in
            // place. Both at once, with different files, is ambiguous.
            if hop.nodes.is_empty()
                && let Some(file) = &hop.file
                && let Some(k) = config.hops.iter().position(|h| h.name == hop.name)
                && config.hops[k].file.as_ref().map(|f| &f.path) != Some(&file.path)
            {
                return Err(ConfigError::field(
                    format!("{path}.file"),
                    format!(
                        "this hop defines its nodes with a `file`, and the top-level hop \
                         hops[{k}] has the same name {:?} but other nodes (GOST uses one or the \
                         other depending on how `nodes` is written); rename one of them, or \
                         leave `file` out to use hops[{k}]",
                        hop.name
                    ),
                ));
            }
            // A later hop is reached through the nodes before it, one tunnel at a time.
            let (used, used_path) = match config.hops.iter().position(|h| h.name == hop.name) {
                Some(k) if hop.is_reference() => (&config.hops[k], format!("hops[{k}]")),
                _ => (hop, path.clone()),
            };
            if j > 0
                && used.selector.as_ref().and_then(|s| s.strategy)
                    == Some(SelectorStrategy::Parallel)
            {
                return Err(ConfigError::field(
                    format!("{used_path}.selector.strategy"),
                    format!(
                        "`parallel` races the nodes of a chain's first hop only, and this hop \
                         is hop {j} of chain {:?}: a later hop is reached through the nodes \
                         before it, one tunnel at a time (GOST cannot use it there either); \
                         use round, random, fifo or hash",
                        chain.name
                    ),
                ));
            }
        }
    }
    for (i, hop) in config.hops.iter().enumerate() {
        check_hop(hop, &format!("hops[{i}]"))?;
        if hop.is_reference() {
            return Err(ConfigError::field(
                format!("hops[{i}].nodes"),
                "a hop needs at least one node, or a `file` of them",
            ));
        }
    }
    if config
        .tls
        .as_ref()
        .is_some_and(|t| t.reject_unknown_sni || !t.server_names.is_empty())
    {
        // As `options` below: GOST applies them per listener only.
        return Err(ConfigError::field(
            "tls.rejectUnknownSNI",
            "the top-level `tls` section gives the default certificate only (GOST ignores its \
             `rejectUnknownSNI` and `serverNames`); set them in the `tls` of each listener they \
             are for",
        ));
    }
    if config.tls.as_ref().is_some_and(|t| t.options.is_some()) {
        // GOST reads the top-level section for the default certificate only and drops its
        // `options` without a word; a minVersion meant for every service would not hold.
        return Err(ConfigError::field(
            "tls.options",
            "the top-level `tls` section gives the default certificate only (GOST ignores its \
             `options`); set `options` in the `tls` of each listener, handler or node they are for",
        ));
    }
    for (i, auther) in config.authers.iter().enumerate() {
        for (k, auth) in auther.auths.iter().enumerate() {
            if auth.file.is_some() {
                return Err(ConfigError::field(
                    format!("authers[{i}].auths[{k}].file"),
                    format!(
                        "an entry of `auths` is one user (`username`, `password`); GOST skips \
                         this one, as it has no user name, and its file is never read; name the \
                         file in the auther itself: `authers[{i}].file: {{path: ...}}`"
                    ),
                ));
            }
        }
    }
    if let Some(metrics) = &config.metrics {
        check_listen_addr(&metrics.addr, "metrics.addr")?;
        check_no_users_file(metrics.auth.as_ref(), "metrics.auth")?;
        if let Some(path) = metrics.path.as_deref()
            && !path.is_empty()
            && !path.starts_with('/')
        {
            return Err(ConfigError::field(
                "metrics.path",
                format!("{path:?} is not a URL path: it must start with `/` (e.g. `/{path}`)"),
            ));
        }
        if let Some(auther) = &metrics.auther
            && !auther_names.contains(auther.as_str())
        {
            return Err(ConfigError::field(
                "metrics.auther",
                format!(
                    "no auther named {auther:?}; defined authers: {}",
                    list(&auther_names)
                ),
            ));
        }
    }
    Ok(())
}

/// A server's `auth` takes no users file: GOST reads `auth.file` for clients only, and a
/// server given nothing else would serve everyone.
fn check_no_users_file(auth: Option<&AuthConfig>, path: &str) -> Result<(), ConfigError> {
    if auth.is_some_and(|a| a.file.is_some()) {
        return Err(ConfigError::field(
            format!("{path}.file"),
            "a users file in `auth` is read by a node's connector or dialer only (GOST ignores \
             it here and asks clients for no password); for a server, name the file in an \
             auther (`authers: [{name: users, file: {path: ...}}]`) and refer to it with \
             `auther`",
        ));
    }
    Ok(())
}

fn check_hop(hop: &HopConfig, path: &str) -> Result<(), ConfigError> {
    if let Some(timeout) = hop
        .selector
        .as_ref()
        .and_then(|s| s.fail_timeout.as_deref())
    {
        parse_go_duration(timeout)
            .map_err(|e| ConfigError::field(format!("{path}.selector.failTimeout"), e))?;
    }
    check_options(&hop.metadata, Scope::Hop, &format!("{path}.metadata"))?;
    for (k, node) in hop.nodes.iter().enumerate() {
        check_dial_addr(&node.addr, &format!("{path}.nodes[{k}].addr"))?;
        check_options(
            &node.metadata,
            Scope::Node,
            &format!("{path}.nodes[{k}].metadata"),
        )?;
    }
    Ok(())
}

/// The nodes of a hop's `file` (GOST's: a JSON array of nodes as a hop's `nodes` holds them),
/// checked as those of the hop at `path`; errors name the file's entries as
/// `{path}.file[INDEX]`.
pub fn nodes_from_json(text: &str, path: &str) -> Result<Vec<NodeConfig>, ConfigError> {
    let at = format!("{path}.file");
    let mut de = serde_json::Deserializer::from_str(text);
    let nodes: Vec<NodeConfig> = serde_path_to_error::deserialize(Lenient::new(&mut de, true))
        .map_err(|e| {
            let inner = known_part(&e.path().to_string());
            let inner = inner.trim_start_matches('.');
            let inner = if inner.starts_with('[') || inner.is_empty() {
                inner.to_string()
            } else {
                format!(".{inner}")
            };
            let message = without_values(&e.into_inner().to_string());
            ConfigError::field(format!("{at}{inner}"), message)
        })?;
    de.end()
        .map_err(|e| ConfigError::field(at.clone(), e.to_string()))?;
    let hop = HopConfig {
        nodes,
        ..HopConfig::default()
    };
    check_hop(&hop, &at).map_err(|e| match e {
        ConfigError::Field { path, message } => ConfigError::Field {
            path: path.replace(&format!("{at}.nodes"), &at),
            message,
        },
        other => other,
    })?;
    Ok(hop.nodes)
}

/// Refuses an option GOST implements and gost-rs does not, set in the metadata at `path`.
fn check_options(metadata: &Metadata, scope: Scope, path: &str) -> Result<(), ConfigError> {
    match unimplemented_option(&metadata.0, scope) {
        Some(found) => Err(ConfigError::field(
            format!("{path}.{}", found.key),
            format!(
                "{found} is not supported by gost-rs; {} (ignoring it would change what the \
                 proxy does without telling you)",
                found.remedy()
            ),
        )),
        None => Ok(()),
    }
}

fn unique_names<'a>(
    names: impl Iterator<Item = &'a str>,
    section: &str,
) -> Result<HashSet<&'a str>, ConfigError> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if name.is_empty() {
            return Err(ConfigError::field(
                format!("{section}[{i}].name"),
                "a name is required",
            ));
        }
        if !seen.insert(name) {
            return Err(ConfigError::field(
                format!("{section}[{i}].name"),
                format!("the name {name:?} is used twice in `{section}`; names must be unique"),
            ));
        }
    }
    Ok(seen)
}

fn list(names: &HashSet<&str>) -> String {
    if names.is_empty() {
        return "none".to_string();
    }
    let mut v: Vec<_> = names.iter().copied().collect();
    v.sort_unstable();
    v.join(", ")
}

/// A port number as Go reads one: decimal digits only, so `+80`, ` 80` and `0x50` are refused
/// (Rust's `u16::from_str` takes a leading `+`).
pub fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Splits `host:port`, `[v6]:port` or `:port` into host and port text.
pub fn split_host_port(addr: &str) -> Option<(&str, &str)> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = addr.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

fn check_listen_addr(addr: &str, path: &str) -> Result<(), ConfigError> {
    let bad = || {
        ConfigError::field(
            path,
            format!("invalid listen address {addr:?}: expected host:port, [ipv6]:port or :port"),
        )
    };
    let (_, port) = split_host_port(addr).ok_or_else(bad)?;
    if !port.is_empty() && parse_port(port).is_none() {
        return Err(ConfigError::field(
            path,
            format!("invalid port {port:?} in {addr:?}: expected a number from 0 to 65535"),
        ));
    }
    Ok(())
}

fn check_dial_addr(addr: &str, path: &str) -> Result<(), ConfigError> {
    let (host, port) = split_host_port(addr).ok_or_else(|| {
        ConfigError::field(
            path,
            format!("invalid address {addr:?}: expected host:port or [ipv6]:port"),
        )
    })?;
    match parse_port(port) {
        Some(p) if p != 0 => {}
        _ => {
            return Err(ConfigError::field(
                path,
                format!("invalid port {port:?} in {addr:?}: expected a number from 1 to 65535"),
            ));
        }
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err(ConfigError::field(
            path,
            format!("invalid host {host:?} in {addr:?}"),
        ));
    }
    Ok(())
}

/// The configuration as YAML, as `gost -O yaml` prints it.
pub fn to_yaml(config: &Config) -> String {
    serde_saphyr::to_string(config).expect("a Config always serializes")
}

/// The configuration as pretty-printed JSON, as `gost -O json` prints it.
pub fn to_json(config: &Config) -> String {
    serde_json::to_string_pretty(config).expect("a Config always serializes")
}
