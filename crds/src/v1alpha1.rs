//! The custom resources of group `gost.rs`, version `v1alpha1`: `GostChain` and `GostService`.
//!
//! They follow the configuration model of [`crate::config`] field for field, with two
//! differences that make them safe to keep in a cluster:
//! - credentials and TLS material are never inline: they are references to `Secret`s in the
//!   resource's namespace (`auth.secretRef`, `tls.certificateSecret`, `tls.caSecret`);
//! - TLS clients verify their server by default (`insecureSkipVerify: true` turns it off),
//!   where GOST's command line does not.
//!
//! A `GostService` names the pods whose sidecars run its services (`selector`) and/or asks for a
//! gateway (a Deployment and a Service run by the operator). Its handlers dial through
//! `GostChain`s of the same namespace, named in `handler.chain`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{
    ConnectorType, DialerType, HandlerType, ListenerType, SelectorConfig, SelectorStrategy,
};
use crate::de::null_as_default;

/// The API group of every gost-rs resource.
pub const GROUP: &str = "gost.rs";
/// The API version of this module's resources.
pub const VERSION: &str = "v1alpha1";

/// Condition type: the resource is fully applied (rendered, and for a gateway, available).
pub const CONDITION_READY: &str = "Ready";
/// Condition type: a sidecar or gateway config was rendered from the resource.
pub const CONDITION_RENDERED: &str = "Rendered";
/// Condition type of a GostService: every pod it selects that opts in to injection runs the
/// sidecar (`False` names those that run without it).
pub const CONDITION_INJECTED: &str = "Injected";

/// Free-form protocol options, exactly as GOST's `metadata` (e.g. `path` for `ws`,
/// `readTimeout`); values may be strings, numbers, booleans or maps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MetadataSpec(pub crate::metadata::Metadata);

/// An object whose fields the API server keeps as written: a structural schema cannot say
/// "any map of scalars and maps" any other way.
impl JsonSchema for MetadataSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MetadataSpec".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

impl MetadataSpec {
    /// True when no option is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A reference to a `Secret` in the resource's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret (same namespace as the resource).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Credentials taken from a Secret: by default its `username` and `password` keys, the layout
/// of a `kubernetes.io/basic-auth` Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthSpec {
    /// The Secret holding the credentials.
    pub secret_ref: SecretRef,
    /// Key of the user name in the Secret (default `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_key: Option<String>,
    /// Key of the password in the Secret (default `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_key: Option<String>,
}

impl AuthSpec {
    /// The Secret key of the user name.
    pub fn username_key(&self) -> &str {
        self.username_key.as_deref().unwrap_or("username")
    }

    /// The Secret key of the password.
    pub fn password_key(&self) -> &str {
        self.password_key.as_deref().unwrap_or("password")
    }
}

/// A key of a Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace as the resource).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key (default `ca.crt`, as cert-manager and `kubernetes.io/tls` Secrets name it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl SecretKeyRef {
    /// The key within the Secret.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("ca.crt")
    }
}

/// TLS for a server (listener) or a client (dialer, connector).
///
/// - On a listener: `certificateSecret` is the server certificate (a `kubernetes.io/tls` Secret:
///   `tls.crt`, `tls.key`; without it a self-signed certificate is generated at start);
///   `caSecret` makes the server require client certificates signed by that CA (mutual TLS).
/// - On a dialer or connector: the server is verified against `caSecret` (or the public roots
///   without it), unless `insecureSkipVerify`; `certificateSecret` is presented as the client
///   certificate; `serverName` sets SNI and the name verified.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret with `tls.crt` and `tls.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_secret: Option<SecretRef>,
    /// A CA bundle: clients verify the server against it; servers require client
    /// certificates signed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// Client only: do not verify the server's certificate (GOST's default, off here). Use only
    /// for tests; every unverified peer is logged as a warning.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// Client only: the name sent as SNI and verified (default: the node's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// GostChain

/// A forwarding chain: hops dialled in order, each hop one or more interchangeable nodes.
/// Services in the same namespace dial through it by naming it in `handler.chain`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gost.rs",
    version = "v1alpha1",
    kind = "GostChain",
    doc = "A forwarding chain (hops of nodes) that GostServices in the same namespace dial through.",
    plural = "gostchains",
    shortname = "gch",
    category = "gost",
    namespaced,
    status = "GostChainStatus",
    printcolumn = r#"{"name":"Hops","type":"integer","jsonPath":".status.hops"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.hops.all(h, self.hops.exists_one(g, g.name == h.name))",
    "message": "hop names must be unique within a GostChain"
}]))]
pub struct GostChainSpec {
    /// The hops, dialled in order: the first directly, each further one through the previous.
    #[schemars(length(min = 1, max = 16))]
    #[serde(deserialize_with = "null_as_default")]
    pub hops: Vec<HopSpec>,
    /// Chain-level options.
    #[serde(default, skip_serializing_if = "MetadataSpec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: MetadataSpec,
}

/// One hop: a set of interchangeable nodes and how one is picked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HopSpec {
    /// Hop name, unique within the chain.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Node selection (`round` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<SelectorSpec>,
    /// The nodes of this hop.
    #[schemars(length(min = 1, max = 64))]
    #[serde(deserialize_with = "null_as_default")]
    pub nodes: Vec<NodeSpec>,
    /// Hop-level options.
    #[serde(default, skip_serializing_if = "MetadataSpec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: MetadataSpec,
}

/// Node selection within a hop.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SelectorSpec {
    /// `round` (default), `random`, `fifo` or `hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<SelectorStrategy>,
    /// Failures after which a node is skipped for `failTimeout` (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = u32::MAX))]
    pub max_fails: Option<u32>,
    /// How long a failed node is skipped, e.g. `10s` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_timeout: Option<String>,
}

impl From<&SelectorSpec> for SelectorConfig {
    fn from(s: &SelectorSpec) -> Self {
        SelectorConfig {
            strategy: s.strategy,
            max_fails: s.max_fails,
            fail_timeout: s.fail_timeout.clone(),
        }
    }
}

/// One node: an address, the transport that reaches it and the protocol spoken to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// Node name, unique within its hop.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// `host:port`, e.g. `gost-gateway.tunnels.svc:8443`.
    #[schemars(length(min = 3, max = 260))]
    pub addr: String,
    /// The proxy protocol spoken to the node (`http` by default).
    #[serde(default, deserialize_with = "null_as_default")]
    pub connector: ConnectorSpec,
    /// The transport that reaches the node (`tcp` by default).
    #[serde(default, deserialize_with = "null_as_default")]
    pub dialer: DialerSpec,
    /// Node-level options.
    #[serde(default, skip_serializing_if = "MetadataSpec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: MetadataSpec,
}

/// The proxy protocol a node speaks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectorSpec {
    /// `http`, `http2`, `socks5` or `relay` (gost-rs has no SOCKS4 client).
    #[serde(default, rename = "type")]
    #[schemars(schema_with = "connector_types")]
    pub kind: ConnectorType,
    /// Credentials sent to the node, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// TLS of the protocol itself (SOCKS5's TLS methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Protocol options.
    #[serde(default, skip_serializing_if = "MetadataSpec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: MetadataSpec,
}

/// The transport that reaches a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DialerSpec {
    /// `tcp`, `tls`, `ws`, `wss`, `http2`, `h2`, `h2c`, `grpc`, `pht`, `phts` or `h3` (also
    /// spelt `http3`, as GOST does).
    #[serde(default, rename = "type")]
    #[schemars(schema_with = "dialer_types")]
    pub kind: DialerType,
    /// Transport-level credentials, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// TLS for the TLS transports; the server is verified unless `insecureSkipVerify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Transport options, e.g. `path` for `ws`, `grpcInsecure` for `grpc`.
    #[serde(default, skip_serializing_if = "MetadataSpec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: MetadataSpec,
}

/// What the operator last observed of a GostChain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GostChainStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of hops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hops: Option<i32>,
    /// `Ready`: every referenced Secret exists and has its keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------------------------------------
// GostService

/// Proxy services (listener + handler + optional chain) run by the sidecars of the selected
/// pods, and/or by a gateway the operator runs.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gost.rs",
    version = "v1alpha1",
    kind = "GostService",
    doc = "Proxy services run by the injected sidecars of the selected pods and/or by an operator-run gateway.",
    plural = "gostservices",
    shortname = "gsvc",
    category = "gost",
    namespaced,
    status = "GostServiceStatus",
    printcolumn = r#"{"name":"Services","type":"integer","jsonPath":".status.services"}"#,
    printcolumn = r#"{"name":"Workloads","type":"integer","jsonPath":".status.matchedWorkloads"}"#,
    printcolumn = r#"{"name":"Without Sidecar","type":"integer","jsonPath":".status.podsWithoutSidecar"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.selector) || has(self.gateway)",
    "message": "set `selector` (pods whose sidecars run these services), `gateway` (a Deployment run by the operator), or both"
}, {
    "rule": "self.services.all(s, self.services.exists_one(t, t.name == s.name))",
    "message": "service names must be unique within a GostService"
}]))]
pub struct GostServiceSpec {
    /// The pods whose injected sidecars run these services (in this namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Run these services in a Deployment of the proxy with a Service in front: the server end
    /// of a tunnel, inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
    /// The services, as in GOST's `services:` section.
    #[schemars(length(min = 1, max = 64))]
    #[serde(deserialize_with = "null_as_default")]
    pub services: Vec<ServiceSpec>,
}

// One literal for the pattern and its CEL rule (concat! takes literals only).
macro_rules! listen_addr_pattern {
    () => {
        r"^(\[[0-9A-Fa-f:.]+\]|[0-9.]+|[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt])?:[0-9]+$"
    };
}

/// The shape of a listen address the operator renders (`:port`, or an IP address or
/// `localhost` then a port) in RE2 syntax, as the API server's CEL `matches` reads it: a host
/// name or a missing port (`gateway.tunnels.svc:8443`, `8080`) is refused when the GostService
/// is applied, not only reported in its status afterwards. It is looser than the operator's own
/// check, never stricter (a test holds it to that): the address itself and the port's range are
/// checked when rendering.
pub const LISTEN_ADDR_PATTERN: &str = listen_addr_pattern!();

/// [`LISTEN_ADDR_PATTERN`] as the CEL rule of `addr` (a raw CEL string: no escapes to undo).
const LISTEN_ADDR_RULE: &str = concat!("self.matches(r'", listen_addr_pattern!(), "')");

/// One proxy service: address, listener (transport) and handler (protocol).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Name, unique within the GostService (a DNS label: it names the gateway Service port).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Listen address: `:port` (every interface) or `host:port`, where host is an IP address
    /// (`127.0.0.1`, `[::1]`) or `localhost`; a name the sidecar would have to resolve is not
    /// rendered.
    #[schemars(length(min = 2, max = 260))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": LISTEN_ADDR_RULE,
        "message": "addr must be `:port` (every interface of the pod) or `host:port` with host an IP address (`127.0.0.1`, `[::1]`) or `localhost`: a listener binds an address of its pod, and a host name or a missing port would not render"
    }]))]
    pub addr: String,
    /// The proxy protocol (`auto` by default).
    #[serde(default, deserialize_with = "null_as_default")]
    pub handler: HandlerSpec,
    /// The transport (`tcp` by default).
    #[serde(default, deserialize_with = "null_as_default")]
    pub listener: ListenerSpec,
    /// Fixed targets (port forwarding): the client's requested address is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarder: Option<ForwarderSpec>,
    /// Service options, e.g. `maxConnections`, `dialTimeout`.
    #[serde(default, skip_serializing_if = "MetadataSpec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: MetadataSpec,
}

/// The proxy protocol of a service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HandlerSpec {
    /// `auto`, `http`, `http2`, `socks5`, `socks4` or `relay`.
    #[serde(default, rename = "type")]
    #[schemars(schema_with = "handler_types")]
    pub kind: HandlerType,
    /// Name of a GostChain in this namespace to dial through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Extra dial attempts after a failed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = u32::MAX))]
    pub retries: Option<u32>,
    /// The user clients must authenticate as, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// TLS of the protocol itself (SOCKS5's TLS methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Protocol options, e.g. `readTimeout`.
    #[serde(default, skip_serializing_if = "MetadataSpec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: MetadataSpec,
}

/// The transport of a service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerSpec {
    /// `tcp`, `tls`, `ws`, `wss`, `http2`, `h2`, `h2c`, `grpc`, `pht`, `phts` or `h3`.
    #[serde(default, rename = "type")]
    #[schemars(schema_with = "listener_types")]
    pub kind: ListenerType,
    /// Transport-level credentials, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Server certificate and client-certificate CA for the TLS transports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Transport options, e.g. `path` for `ws`.
    #[serde(default, skip_serializing_if = "MetadataSpec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: MetadataSpec,
}

/// Fixed forward targets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForwarderSpec {
    /// The targets.
    #[schemars(length(min = 1, max = 64))]
    #[serde(deserialize_with = "null_as_default")]
    pub nodes: Vec<ForwardNodeSpec>,
}

/// One forward target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForwardNodeSpec {
    /// Target name.
    #[serde(default)]
    pub name: String,
    /// `host:port`.
    pub addr: String,
}

/// A Deployment of the proxy, run by the operator, with a Service in front of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Pods of the Deployment (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// The Service in front of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<GatewayServiceSpec>,
    /// Compute resources of the proxy container (the operator's sidecar defaults otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = quantities_have_a_pattern)]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

/// A Kubernetes resource quantity (`128Mi`, `0.5`, `500m`, `1e3`): the pattern the API server's
/// own CRDs give `resource.Quantity`, so a typo is refused at apply time instead of making the
/// gateway's Deployment fail later.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// Puts [`QUANTITY_PATTERN`] on the values of `limits` and `requests`.
fn quantities_have_a_pattern(schema: &mut schemars::Schema) {
    for list in ["limits", "requests"] {
        let pointer = format!("/properties/{list}/additionalProperties");
        if let Some(values) = schema
            .pointer_mut(&pointer)
            .and_then(serde_json::Value::as_object_mut)
        {
            values.insert("pattern".into(), QUANTITY_PATTERN.into());
        }
    }
}

/// The Service in front of a gateway. Its ports are the services' listen ports, named after the
/// services.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayServiceSpec {
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<GatewayServiceType>,
    /// Extra annotations, e.g. for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
    /// Per-service port overrides: service name → port the Service exposes, 1 to 65535
    /// (default: the service's listen port).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(extend("additionalProperties" = {
        "type": "integer", "format": "int32", "minimum": 1, "maximum": 65535
    }))]
    pub ports: BTreeMap<String, i32>,
}

/// Kubernetes Service types a gateway may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GatewayServiceType {
    /// Reachable inside the cluster.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through the cloud's load balancer.
    LoadBalancer,
}

impl GatewayServiceType {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// What the operator last observed of a GostService.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GostServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<i32>,
    /// Workloads (the pods' owners, e.g. a ReplicaSet or a StatefulSet) whose sidecars run
    /// these services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_workloads: Option<i32>,
    /// Pods it selects that opt in to injection but run without the gost sidecar (the webhook
    /// was unreachable, could not write their config, or they predate the opt-in or the
    /// operator), so their traffic bypasses these services; the `Injected` condition names
    /// some and says what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_without_sidecar: Option<i32>,
    /// `Rendered` (configs were rendered; a reason names what was left out), `Injected` and
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The handler, listener, connector and dialer types gost-rs runs, checked by the renderer: the
/// schema's enums list only these, but a resource stored before they did may name another.
pub fn served_listener(kind: ListenerType) -> bool {
    kind.implemented()
}

/// See [`served_listener`].
pub fn served_handler(kind: HandlerType) -> bool {
    kind.implemented()
}

/// See [`served_listener`].
pub fn served_connector(kind: ConnectorType) -> bool {
    kind.implemented()
}

/// See [`served_listener`].
pub fn served_dialer(kind: DialerType) -> bool {
    kind.implemented()
}

/// The schema of a `type` field: a string, one of `names` (GOST's other types are left out, so
/// the API server refuses them when the resource is written). Its description and default come
/// from the field.
fn type_schema<'a>(names: impl Iterator<Item = &'a str>) -> schemars::Schema {
    let names: Vec<&str> = names.collect();
    schemars::json_schema!({"type": "string", "enum": names})
}

fn connector_types(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let served = |n: &&str| ConnectorType::from_name(n).is_some_and(served_connector);
    type_schema(ConnectorType::NAMES.iter().copied().filter(served))
}

fn dialer_types(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let served = |n: &&str| DialerType::from_name(n).is_some_and(served_dialer);
    type_schema(DialerType::NAMES.iter().copied().filter(served))
}

fn handler_types(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let served = |n: &&str| HandlerType::from_name(n).is_some_and(served_handler);
    type_schema(HandlerType::NAMES.iter().copied().filter(served))
}

fn listener_types(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let served = |n: &&str| ListenerType::from_name(n).is_some_and(served_listener);
    type_schema(ListenerType::NAMES.iter().copied().filter(served))
}

/// The generated CustomResourceDefinitions, as `(file name under crds/, YAML)`, in the order
/// `kubectl apply` should see them. `crdgen` writes them; a test keeps the committed files fresh.
pub fn crd_files() -> Vec<(&'static str, String)> {
    use kube::CustomResourceExt;
    let header =
        "# Generated by `cargo run -p gost-api --features kube --bin crdgen`; do not edit.\n";
    [
        ("gostchains.gost.rs.yaml", GostChain::crd()),
        ("gostservices.gost.rs.yaml", GostService::crd()),
    ]
    .into_iter()
    .map(|(file, crd)| {
        let yaml = serde_saphyr::to_string(&crd).expect("a CRD serializes to YAML");
        (file, format!("{header}{yaml}"))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{CustomResourceExt, Resource};

    #[test]
    fn names_and_scope() {
        assert_eq!(GostChain::group(&()), GROUP);
        assert_eq!(GostService::version(&()), VERSION);
        assert_eq!(GostService::crd().spec.scope, "Namespaced");
        assert_eq!(GostChain::crd().spec.names.plural, "gostchains");
    }

    #[test]
    fn a_gost_service_reads_from_yaml() {
        let yaml = r#"
apiVersion: gost.rs/v1alpha1
kind: GostService
metadata: {name: web, namespace: apps}
spec:
  selector: {matchLabels: {app: web}}
  services:
  - name: proxy
    addr: ":8000"
    handler: {type: http, chain: to-gateway, auth: {secretRef: {name: proxy-users}}}
    metadata: {maxConnections: 100}
"#;
        let gs: GostService = serde_saphyr::from_str(yaml).expect("loads");
        let svc = &gs.spec.services[0];
        assert_eq!(svc.handler.kind, HandlerType::Http);
        assert_eq!(svc.handler.chain.as_deref(), Some("to-gateway"));
        assert_eq!(svc.listener.kind, ListenerType::Tcp);
        assert_eq!(
            svc.handler.auth.as_ref().unwrap().password_key(),
            "password"
        );
        assert!(svc.metadata.0.int(&["maxConnections"]).unwrap() == Some(100));
    }

    /// A null list, map or section reads as empty, as in the configuration files (the API
    /// server drops such nulls itself; other clients of these types may not).
    #[test]
    fn nulls_read_as_empty() {
        let spec = r#"{"selector": {}, "services": [{"name": "p", "addr": ":1", "handler": null,
            "listener": {"metadata": null}, "metadata": null}],
            "gateway": {"service": {"annotations": null, "ports": null}}}"#;
        let spec: GostServiceSpec = serde_json::from_str(spec).expect("loads");
        assert_eq!(spec.services[0].handler, HandlerSpec::default());
        assert!(
            spec.gateway
                .unwrap()
                .service
                .unwrap()
                .annotations
                .is_empty()
        );
        let chain = r#"{"hops": [{"name": "h", "nodes": [{"name": "n", "addr": "a:1",
            "connector": null, "dialer": {"metadata": null}}], "metadata": null}], "metadata": null}"#;
        let chain: GostChainSpec = serde_json::from_str(chain).expect("loads");
        assert_eq!(chain.hops[0].nodes[0].connector, ConnectorSpec::default());
        let err = serde_json::from_str::<GostChainSpec>(r#"{"hops": {}}"#).unwrap_err();
        assert!(err.to_string().contains("expected a sequence"), "{err}");
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let typo = r#"{"hops":[{"name":"h","nodes":[{"name":"n","addr":"a:1","dailer":{}}]}]}"#;
        let err = serde_json::from_str::<GostChainSpec>(typo).unwrap_err();
        assert!(err.to_string().contains("dailer"), "{err}");
        let bad = r#"{"hops":[{"name":"h","nodes":[{"name":"n","addr":"a:1","dialer":{"type":"quic"}}]}]}"#;
        let err = serde_json::from_str::<GostChainSpec>(bad).unwrap_err();
        assert!(err.to_string().contains("quic"), "{err}");
    }
}
