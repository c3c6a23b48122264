//! The compiled policy bundle: everything one workload's weft filter needs, with SMI already
//! resolved (references followed, versions normalised, weights checked), so the filter never
//! reads SMI. It is the `access`, `splits` and `metrics` part of the plugin configuration
//! ([`crate::config::PluginConfig`]) and is documented for users in docs/policy-bundle.md.

use serde::{Deserialize, Serialize};

/// Default SPIFFE trust domain of a Kubernetes cluster.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

pub use weft_identity::{Identity, IdentityError};

/// One HTTP request match, compiled from an HTTPRouteGroup match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatchSpec {
    /// `namespace/group/match`, for explanations.
    pub name: String,
    /// Path regex, matched from the start of the path (query string excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Allowed methods; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Lower-case header names with value regexes (whole value), all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

/// What the access feature does with its decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessMode {
    /// Deny what no TrafficTarget allows (the default).
    #[default]
    Enforce,
    /// Allow everything; decisions are not even made.
    Permissive,
    /// Allow everything, but log and count each request or connection that `enforce` would deny.
    Audit,
}

impl AccessMode {
    /// The name used in the configuration and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::Enforce => "enforce",
            AccessMode::Permissive => "permissive",
            AccessMode::Audit => "audit",
        }
    }
}

/// Inbound access policy of one workload (the destination of TrafficTargets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// What to do with decisions; absent means `enforce`.
    #[serde(default)]
    pub mode: AccessMode,
    /// Destination ports on which callers without a verified certificate are allowed (health
    /// checks, say); empty means such callers are denied everywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unauthenticated_ports: Vec<u16>,
    /// SPIFFE trust domain of source identities.
    pub trust_domain: String,
    /// What each allowed source may do: SPIFFE ID to indexes into `grants`.
    pub sources: std::collections::BTreeMap<String, Vec<u32>>,
    /// One entry per TrafficTarget rule.
    pub grants: Vec<Grant>,
}

/// What one TrafficTarget rule allows its sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// `namespace/name` of the TrafficTarget.
    pub traffic_target: String,
    /// Index of the rule in `spec.rules`.
    pub rule: u32,
    /// Only this destination port (v1alpha1/v1alpha2 `destination.port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// What the rule allows.
    pub allows: Allows,
}

/// The traffic a grant allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Allows {
    /// HTTP requests matching any of these indexes into the bundle's `http_matches`.
    Http {
        /// `namespace/name` of the HTTPRouteGroup.
        route_group: String,
        /// Indexes into `http_matches`.
        matches: Vec<u32>,
    },
    /// TCP connections (and all HTTP) on these ports; empty means every port.
    Tcp {
        /// `namespace/name` of the TCPRoute.
        route: String,
        /// Allowed ports.
        ports: Vec<u16>,
    },
    /// UDP on these ports; empty means every port (not enforced by an HTTP or TCP filter).
    Udp {
        /// `namespace/name` of the UDPRoute.
        route: String,
        /// Allowed ports.
        ports: Vec<u16>,
    },
}

/// Outbound split routing for one root service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTable {
    /// `namespace/name` of the TrafficSplit.
    pub traffic_split: String,
    /// The root service, `name.namespace`.
    pub service: String,
    /// Host names (without port) that address the root service from this workload.
    pub hosts: Vec<String>,
    /// Indexes into `http_matches`: only matching requests are split. Empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<u32>,
    /// Backends that can receive traffic (weight above 0, a port of the root service).
    pub backends: Vec<WeightedBackend>,
    /// Where the key of a sticky choice is read; absent means every request is chosen anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyKey>,
}

/// The request value that keeps a client on one backend while the weights do not change:
/// `{"header": "x-user"}` or `{"cookie": "session"}`. A request without it is chosen at random.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StickyKey {
    /// A request header, by name (case-insensitive).
    Header(String),
    /// A cookie of the `cookie` request header, by name (case-sensitive).
    Cookie(String),
}

/// A backend with its relative weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    /// Backend service, `name.namespace`.
    pub service: String,
    /// Relative weight, above 0.
    pub weight: u64,
}

/// Which side of its connections a listener's metrics describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Server side: requests this workload receives; the source is the verified peer.
    Inbound,
    /// Client side: requests this workload sends; the source is the workload itself.
    Outbound,
}

impl Direction {
    /// The name used in the configuration and as the `direction` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Per-edge golden metrics of one listener (docs/metrics.md). Label values come only from
/// verified identities and from the services named here; anything else is `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Which side the listener measures.
    pub direction: Direction,
    /// SPIFFE trust domain of peer identities; a peer of another domain is `unknown`.
    pub trust_domain: String,
    /// Outbound: the services a request may address, with the host names that address each
    /// from this workload; a request for any other host has destination `unknown`. Inbound
    /// listeners ignore it: their destination is the workload itself, never what a caller
    /// writes in `Host`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceHosts>,
    /// Inbound: the Service this workload serves (`name.namespace`, in the workload's
    /// namespace), the destination of every request the listener receives; absent means the
    /// destination service is `unknown` (its namespace is the workload's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A Kubernetes Service and the host names that address it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceHosts {
    /// The service, `name.namespace`.
    pub service: String,
    /// Host names (without port) that address it, compared lower-case without port or
    /// trailing dot.
    pub hosts: Vec<String>,
}
