//! GOST's configuration schema (services, chains, hops, nodes), as typed Rust.
//!
//! Field names and defaults follow GOST v3 (`x/config/config.go`): a handler without a type is
//! `auto`, a listener `tcp`, a connector `http`, a dialer `tcp`. Unknown fields are rejected so
//! that a typo never silently changes behaviour. A null list, map or section is empty, as in
//! GOST ([`crate::de::null_as_default`]).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::de::{go_duration, null_as_default};
use crate::metadata::Metadata;

/// A whole configuration: what `gost -C file.yaml` loads and `gost -O yaml` prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Listening services: an address, a listener (transport) and a handler (proxy protocol).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub services: Vec<ServiceConfig>,
    /// Forwarding chains that handlers dial through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub chains: Vec<ChainConfig>,
    /// Reusable hops, referenced by name from a chain's hop list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub hops: Vec<HopConfig>,
    /// Named authenticators, referenced by `handler.auther` / `handler.authers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub authers: Vec<AutherConfig>,
    /// The default server certificate for TLS listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogConfig>,
    /// The Prometheus metrics endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

/// One listening service: `addr` + listener + handler (+ the chain the handler dials through).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceConfig {
    /// Unique service name.
    pub name: String,
    /// Listen address, `host:port` or `:port` (all interfaces). An empty port lets the system
    /// choose one.
    #[serde(default)]
    pub addr: String,
    /// The proxy protocol spoken on accepted connections. Defaults to `auto`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub handler: HandlerConfig,
    /// The transport that accepts connections. Defaults to `tcp`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub listener: ListenerConfig,
    /// Fixed forward targets (port forwarding); when set, the client's requested address is
    /// ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarder: Option<ForwarderConfig>,
    /// Service-level settings such as `dialTimeout`.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: Metadata,
}

/// The proxy protocol of a service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HandlerConfig {
    /// Protocol: `auto` (HTTP, SOCKS4 and SOCKS5 on one port), `http`, `socks5`, `relay`, ...
    #[serde(
        default,
        rename = "type",
        deserialize_with = "crate::de::blank_as_default"
    )]
    pub kind: HandlerType,
    /// Name of the chain to dial through; without it the handler dials targets directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Extra dial attempts after a failed one (each may pick other nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// A single user that clients must authenticate as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Name of a top-level authenticator (`authers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auther: Option<String>,
    /// Names of several top-level authenticators; a client passing any of them is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub authers: Vec<String>,
    /// TLS settings of the handler itself (SOCKS5's TLS methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Protocol options, e.g. `readTimeout`, `proxyAgent`, `authBasicRealm`.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: Metadata,
}

/// The transport on which a service accepts connections.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerConfig {
    /// Transport: `tcp`, `tls`, `ws`, `wss`, `http2`, `h2`, `h2c`, `grpc`, `pht`, `phts`, `h3`.
    #[serde(
        default,
        rename = "type",
        deserialize_with = "crate::de::blank_as_default"
    )]
    pub kind: ListenerType,
    /// Chain used by reverse listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Transport-level credentials, for the transports that have them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Server certificate for TLS transports; defaults to the top-level `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Transport options, e.g. `path` for `ws`.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: Metadata,
}

/// Fixed targets of a forwarding service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForwarderConfig {
    /// Target nodes; `addr` is the address to forward to.
    #[serde(default, deserialize_with = "null_as_default")]
    pub nodes: Vec<ForwardNodeConfig>,
}

/// One forward target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForwardNodeConfig {
    /// Target name.
    #[serde(default)]
    pub name: String,
    /// Target address, `host:port`.
    pub addr: String,
}

/// A forwarding chain: ordered hops, each hop one or more nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChainConfig {
    /// Unique chain name, referenced by `handler.chain`.
    pub name: String,
    /// Hops, dialled in order: the first hop is dialled directly, each further hop through the
    /// previous one.
    #[serde(default, deserialize_with = "null_as_default")]
    pub hops: Vec<HopConfig>,
    /// Chain-level settings.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: Metadata,
}

/// One hop of a chain: a set of interchangeable nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HopConfig {
    /// Hop name. A hop with a name and no nodes refers to a top-level `hops` entry.
    pub name: String,
    /// How a node is picked for each connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<SelectorConfig>,
    /// The nodes of this hop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub nodes: Vec<NodeConfig>,
    /// GOST's period for reading `file` again. gost-rs watches the file as it watches the
    /// configuration, so a change counts at once whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "go_duration")]
    pub reload: Option<String>,
    /// More nodes, from a file holding a JSON array of nodes as written in `nodes`; a hop of a
    /// chain with a file is defined there, not a reference to a top-level hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
    /// The nodes read from `file`, after `nodes`; filled in by the program that runs the
    /// configuration (see [`crate::nodes_from_json`]).
    #[serde(skip)]
    pub file_nodes: Vec<NodeConfig>,
    /// Hop-level settings.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: Metadata,
}

impl HopConfig {
    /// Whether this entry of a chain stands for the top-level hop of its name: it defines
    /// neither nodes nor a file of them.
    pub fn is_reference(&self) -> bool {
        self.nodes.is_empty() && self.file.is_none()
    }

    /// Its nodes: those written in `nodes`, then those read from `file`.
    pub fn all_nodes(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.iter().chain(&self.file_nodes)
    }
}

/// Node selection within a hop.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SelectorConfig {
    /// `round` (round-robin, the default), `random`, `fifo` (first healthy node), `hash` or
    /// `parallel` (first hop only: the fastest node); empty is the default, as in GOST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::de::empty_as_none")]
    pub strategy: Option<SelectorStrategy>,
    /// Failures after which a node is skipped for `failTimeout` (default 1, also for 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fails: Option<u32>,
    /// How long a failed node is skipped, as a duration such as `10s` (default 10s, also for
    /// 0), or an integer number of nanoseconds as GOST's `-O json` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "go_duration")]
    pub fail_timeout: Option<String>,
}

/// Node selection strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SelectorStrategy {
    /// Each connection takes the next node in turn.
    #[serde(alias = "rr")]
    Round,
    /// A node picked at random.
    #[serde(alias = "rand")]
    Random,
    /// The first node that is not marked failed.
    #[serde(alias = "ha")]
    Fifo,
    /// A node picked by a hash of the target host.
    Hash,
    /// Every available node of a chain's first hop dialled at once; the first to connect
    /// carries the tunnel, the others are closed (GOST 3.3's race strategy).
    Parallel,
}

/// One node of a hop: an address, the transport to reach it and the protocol to speak to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    /// Node name, unique within its hop.
    pub name: String,
    /// The node's address, `host:port`.
    pub addr: String,
    /// The proxy protocol spoken to the node. Defaults to `http`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub connector: ConnectorConfig,
    /// The transport used to reach the node. Defaults to `tcp`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub dialer: DialerConfig,
    /// Node-level settings.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: Metadata,
}

/// The proxy protocol a node speaks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectorConfig {
    /// Protocol: `http`, `socks5`, `socks4`, `relay`, `http2`.
    #[serde(
        default,
        rename = "type",
        deserialize_with = "crate::de::empty_as_default"
    )]
    pub kind: ConnectorType,
    /// Credentials sent to the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// TLS settings of the protocol itself (SOCKS5's TLS methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Protocol options, e.g. `timeout`, `header`.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: Metadata,
}

/// The transport used to reach a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DialerConfig {
    /// Transport: `tcp`, `tls`, `ws`, `wss`, `http2`, `h2`, `h2c`, `grpc`, `pht`, `phts`, `h3`.
    #[serde(
        default,
        rename = "type",
        deserialize_with = "crate::de::empty_as_default"
    )]
    pub kind: DialerType,
    /// Transport-level credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Client TLS settings for TLS transports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Transport options, e.g. `path` and `host` for `ws`.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: Metadata,
}

/// A username and password. The password never appears in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password. An empty password accepts any password for this user, as in GOST.
    #[serde(default)]
    pub password: String,
    /// A node's connector or dialer only: a users file (as an auther's) whose first user is
    /// sent instead of `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A named set of users.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AutherConfig {
    /// Unique authenticator name.
    pub name: String,
    /// Accepted users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub auths: Vec<AuthConfig>,
    /// GOST's period for reading `file` again. gost-rs watches the file as it watches the
    /// configuration, so a change counts at once whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "go_duration")]
    pub reload: Option<String>,
    /// More users, from a file with one `user password` per line (see [`parse_users`]); they
    /// replace users of `auths` with the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
    /// The users read from `file`, filled in by the program that runs the configuration
    /// (loading a configuration reads no other file).
    #[serde(skip)]
    pub file_auths: Vec<AuthConfig>,
}

/// A file a section reads its data from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileSource {
    /// The file's path; empty: no file, as in GOST.
    #[serde(default)]
    pub path: String,
}

/// Users from the text of a users file, as GOST reads one: a line is a user name, then, after
/// the first space or tab, the password (the rest of the line, trimmed; none: any password);
/// blank lines and lines starting with `#` are skipped, so `admin #123` is user `admin` with
/// password `#123`.
pub fn parse_users(text: &str) -> Vec<AuthConfig> {
    text.lines()
        .map(|line| line.replace('\t', " "))
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (username, password) = line.split_once(' ').unwrap_or((line, ""));
            Some(AuthConfig {
                username: username.to_string(),
                password: password.trim().to_string(),
                file: None,
            })
        })
        .collect()
}

/// TLS material and options, for servers (certificate) and clients (verification).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM certificate chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// PEM CA bundle: on a server, client certificates are required and verified against it;
    /// on a client, the server's chain is verified against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Client: verify the server's certificate chain and name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure: bool,
    /// Client: the name sent as SNI and verified with `secure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Generated certificate: validity as a duration (default `8760h`) or an integer number of
    /// nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "go_duration")]
    pub validity: Option<String>,
    /// Generated certificate: common name (default `gost.run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// Generated certificate: organization (default `GOST`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// Server: refuse a handshake without a server name (SNI), or, with `serverNames`, with
    /// another one; the client gets no certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[serde(rename = "rejectUnknownSNI")]
    pub reject_unknown_sni: bool,
    /// Server, with `rejectUnknownSNI`: the server names accepted (any case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub server_names: Vec<String>,
    /// Protocol versions, cipher suites and ALPN of a listener's or node's handshakes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<TlsOptions>,
}

/// GOST's TLS `options`: what a listener or node offers in its handshakes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsOptions {
    /// Lowest version accepted: `VersionTLS10`, `VersionTLS11`, `VersionTLS12` or
    /// `VersionTLS13` (gost-rs speaks TLS 1.2 and 1.3 only, so the first two mean TLS 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::de::empty_as_none")]
    pub min_version: Option<String>,
    /// Highest version offered, spelled as `minVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::de::empty_as_none")]
    pub max_version: Option<String>,
    /// TLS 1.2 cipher suites allowed, by Go's names (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`);
    /// empty: all. As in Go, TLS 1.3 suites are not configurable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub cipher_suites: Vec<String>,
    /// ALPN protocols offered, in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub alpn: Vec<String>,
}

/// Logging settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfig {
    /// `trace`, `debug`, `info` (default), `warn`, `error` (`fatal` is read as `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// `json` or `text`; by default JSON when standard error is not a terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    /// `stderr` (default), `stdout`, `none` (or `null`: no logs), or a file to append to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything, including per-packet detail.
    Trace,
    /// Per-connection detail.
    Debug,
    /// One line per tunnel and lifecycle events.
    Info,
    /// Problems that did not stop the proxy.
    #[serde(alias = "warning")]
    Warn,
    /// Failures only. GOST's `fatal` is read as `error`: gost-rs logs nothing at a fatal level
    /// (a failure that stops it is an error line and an exit), so the two show the same lines.
    #[serde(alias = "fatal")]
    Error,
}

/// Log line formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// The Prometheus metrics endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {
    /// Listen address, e.g. `:9000`.
    pub addr: String,
    /// URL path (default `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Basic-auth credentials required to scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Name of a top-level authenticator required to scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auther: Option<String>,
}

macro_rules! type_enum {
    ($(#[$meta:meta])* $name:ident, default $default:ident, { $($(#[$vmeta:meta])* $variant:ident = $text:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[serde(rename = $text $(, alias = $alias)*)]
                $(#[doc = concat!("Also accepted as `", $alias, "`.")])*
                $variant,
            )+
        }

        impl Default for $name {
            fn default() -> Self {
                Self::$default
            }
        }

        impl $name {
            /// Every accepted name, in the order of the documentation.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The canonical name, as written in configuration.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// Parses a name or alias, case-insensitively.
            pub fn from_name(name: &str) -> Option<Self> {
                let name = name.to_ascii_lowercase();
                match name.as_str() {
                    $($text $(| $alias)* => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

type_enum!(
    /// Handler (server-side proxy protocol) types.
    HandlerType, default Auto, {
        /// HTTP, SOCKS4/4a and SOCKS5 on one port, told apart by the first byte.
        Auto = "auto",
        /// HTTP proxy: CONNECT tunnels and forwarding of plain HTTP requests.
        Http = "http",
        /// HTTP CONNECT proxy over HTTP/2 (with the `http2` listener).
        Http2 = "http2",
        /// HTTP/3 reverse proxy (with the `http3` listener).
        Http3 = "http3",
        /// SOCKS5 proxy (RFC 1928, RFC 1929).
        Socks5 = "socks5" | "socks",
        /// SOCKS4 and SOCKS4a proxy.
        Socks4 = "socks4" | "socks4a",
        /// GOST's relay protocol.
        Relay = "relay",
    }
);

type_enum!(
    /// Listener (server-side transport) types.
    ListenerType, default Tcp, {
        /// Plain TCP.
        Tcp = "tcp",
        /// TLS over TCP.
        Tls = "tls",
        /// WebSocket.
        Ws = "ws",
        /// WebSocket over TLS.
        Wss = "wss",
        /// HTTP/2 over TLS, for the `http2` handler.
        Http2 = "http2",
        /// HTTP/2 tunnel over TLS.
        H2 = "h2",
        /// HTTP/2 tunnel in cleartext.
        H2c = "h2c",
        /// gRPC bidirectional stream.
        Grpc = "grpc",
        /// Plain HTTP tunnel.
        Pht = "pht",
        /// Plain HTTP tunnel over TLS.
        Phts = "phts",
        /// Plain HTTP tunnel over HTTP/3.
        H3 = "h3",
        /// HTTP/3 reverse proxy.
        Http3 = "http3",
    }
);

type_enum!(
    /// Connector (client-side proxy protocol) types.
    ConnectorType, default Http, {
        /// HTTP CONNECT.
        Http = "http",
        /// HTTP CONNECT over HTTP/2 (with the `http2` dialer).
        Http2 = "http2",
        /// SOCKS5.
        Socks5 = "socks5" | "socks",
        /// SOCKS4 and SOCKS4a.
        Socks4 = "socks4" | "socks4a",
        /// GOST's relay protocol.
        Relay = "relay",
    }
);

type_enum!(
    /// Dialer (client-side transport) types.
    DialerType, default Tcp, {
        /// Plain TCP.
        Tcp = "tcp",
        /// TLS over TCP.
        Tls = "tls",
        /// WebSocket.
        Ws = "ws",
        /// WebSocket over TLS.
        Wss = "wss",
        /// HTTP/2 over TLS, for the `http2` connector.
        Http2 = "http2",
        /// HTTP/2 tunnel over TLS.
        H2 = "h2",
        /// HTTP/2 tunnel in cleartext.
        H2c = "h2c",
        /// gRPC bidirectional stream.
        Grpc = "grpc",
        /// Plain HTTP tunnel.
        Pht = "pht",
        /// Plain HTTP tunnel over TLS.
        Phts = "phts",
        /// Plain HTTP tunnel over HTTP/3.
        H3 = "h3",
        /// Plain HTTP tunnel over HTTP/3 (GOST's other name for `h3` on the client side).
        Http3 = "http3",
    }
);

// GOST knows more types than gost-rs runs. The configuration model accepts all of GOST's, so
// GOST's files load and the proxy can say by name which type it lacks; the CRDs list only
// the ones that run (`v1alpha1`), and the proxy's builder is tested against these.

impl HandlerType {
    /// Whether gost-rs runs a handler of this type (not GOST's HTTP/3 reverse proxy).
    pub fn implemented(self) -> bool {
        !matches!(self, Self::Http3)
    }
}

impl ListenerType {
    /// Whether gost-rs runs a listener of this type (not GOST's HTTP/3 reverse proxy; the
    /// plain HTTP tunnel over HTTP/3 is `h3`).
    pub fn implemented(self) -> bool {
        !matches!(self, Self::Http3)
    }
}

impl ConnectorType {
    /// Whether gost-rs has a client for this protocol (not SOCKS4).
    pub fn implemented(self) -> bool {
        !matches!(self, Self::Socks4)
    }
}

impl DialerType {
    /// Whether gost-rs has this transport on the client side: all of them (`http3` is the
    /// plain HTTP tunnel over HTTP/3, as `h3`).
    pub fn implemented(self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_file_reads_as_gost_reads_it() {
        let users = parse_users(
            "# username password\n\nadmin           #123456\ntest\\user001    123456\n\
             \tspaced\tpass word \nalone\n   # indented comment\n",
        );
        let pairs: Vec<(&str, &str)> = users
            .iter()
            .map(|u| (u.username.as_str(), u.password.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("admin", "#123456"),
                ("test\\user001", "123456"),
                ("spaced", "pass word"),
                ("alone", ""),
            ]
        );
    }
}
