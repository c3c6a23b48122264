//! The SMI objects weft understands, normalised to the newest served versions (access
//! v1alpha3, specs v1alpha4, split v1alpha4) whatever version they were written in, plus the
//! Kubernetes Service fields that split eligibility needs. [`crate::load`] builds these from
//! YAML; [`crate::validate`] checks them; [`crate::compile`] turns them into a bundle.

use std::fmt;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::diagnostic::Origin;

/// The kinds of object in a [`crate::catalog::Catalog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    /// access.smi-spec.io TrafficTarget.
    TrafficTarget,
    /// specs.smi-spec.io HTTPRouteGroup.
    #[serde(rename = "HTTPRouteGroup")]
    HttpRouteGroup,
    /// specs.smi-spec.io TCPRoute.
    #[serde(rename = "TCPRoute")]
    TcpRoute,
    /// specs.smi-spec.io UDPRoute.
    #[serde(rename = "UDPRoute")]
    UdpRoute,
    /// split.smi-spec.io TrafficSplit.
    TrafficSplit,
    /// core v1 Service.
    Service,
    /// policy.weft.io TrafficPolicy.
    TrafficPolicy,
    /// policy.weft.io EnvoyPatch.
    EnvoyPatch,
}

impl Kind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TrafficTarget => "TrafficTarget",
            Kind::HttpRouteGroup => "HTTPRouteGroup",
            Kind::TcpRoute => "TCPRoute",
            Kind::UdpRoute => "UDPRoute",
            Kind::TrafficSplit => "TrafficSplit",
            Kind::Service => "Service",
            Kind::TrafficPolicy => "TrafficPolicy",
            Kind::EnvoyPatch => "EnvoyPatch",
        }
    }

    /// The kind for a TrafficTarget rule's `kind`, if it is one a rule may name.
    pub fn of_rule(kind: &str) -> Option<Kind> {
        match kind {
            "HTTPRouteGroup" => Some(Kind::HttpRouteGroup),
            "TCPRoute" => Some(Kind::TcpRoute),
            "UDPRoute" => Some(Kind::UdpRoute),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity and provenance of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Meta {
    /// `metadata.namespace` (`default` when absent, as kubectl does).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The `apiVersion` it was written in.
    pub api_version: String,
    /// File and line it was read from, if it came from a file.
    pub origin: Option<Origin>,
}

/// A TrafficTarget: the sources allowed to reach a destination, through which rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficTarget {
    /// Object identity.
    pub meta: Meta,
    /// `spec.destination`; `None` when absent (an error).
    pub destination: Option<Subject>,
    /// `spec.sources`.
    pub sources: Vec<Subject>,
    /// `spec.rules` (`specs` in v1alpha1).
    pub rules: Vec<TrafficTargetRule>,
    /// `destination.port` of v1alpha1/v1alpha2: when set, every rule is limited to this port.
    /// Dropping it, as the SDK's conversion does, would widen access; weft honours it.
    pub destination_port: Option<u16>,
    /// Where the body's fields are written, so that diagnostics name them as the file does.
    pub written: TargetFields,
}

/// How a TrafficTarget's version writes its fields: v1alpha1 keeps the body at the root and
/// calls its rules `specs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetFields {
    /// Prefix of `destination` and `sources`: `spec.`, or empty for a body at the root.
    pub body: String,
    /// Path of the rules: `spec.rules`, `specs` or `rules`.
    pub rules: String,
}

impl Default for TargetFields {
    fn default() -> Self {
        Self {
            body: "spec.".to_owned(),
            rules: "spec.rules".to_owned(),
        }
    }
}

/// A subject of a TrafficTarget (a ServiceAccount).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subject {
    /// `kind`; `ServiceAccount` is the only kind SMI defines.
    pub kind: String,
    /// ServiceAccount name.
    pub name: String,
    /// ServiceAccount namespace; `None` means the TrafficTarget's namespace.
    pub namespace: Option<String>,
    /// Its index in the list it is written in (`sources`); 0 for the destination.
    pub position: usize,
}

/// One entry of `spec.rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficTargetRule {
    /// `HTTPRouteGroup`, `TCPRoute` or `UDPRoute` (anything else is an error).
    pub kind: String,
    /// Name of the route object, in the TrafficTarget's namespace.
    pub name: String,
    /// Names of HTTPRouteGroup matches; `None` means all of the group's matches.
    pub matches: Option<Vec<String>>,
    /// Its index in the list it is written in.
    pub position: usize,
}

/// An HTTPRouteGroup: named HTTP request matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRouteGroup {
    /// Object identity.
    pub meta: Meta,
    /// `spec.matches` (or root `matches` in v1alpha1/v1alpha2).
    pub matches: Vec<HttpMatch>,
    /// Where the matches are written: `spec.matches` or `matches`.
    pub matches_field: String,
}

/// One HTTP match: path regex AND method AND every header regex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpMatch {
    /// The match's name, referenced from TrafficTarget rules.
    pub name: String,
    /// Regex on the path, anchored at the start; `None` matches any path.
    pub path_regex: Option<String>,
    /// Allowed methods; empty or containing `*` means any method.
    pub methods: Vec<String>,
    /// Header name (lower case) and value regex pairs, all of which must match.
    pub headers: Vec<(String, String)>,
    /// Where each header of `headers` is written, relative to the match (`headers.User-Agent`,
    /// `headers[0].user-agent`), in the same order.
    pub header_fields: Vec<String>,
    /// Its index in the list it is written in.
    pub position: usize,
}

/// Layer-4 protocol of a port route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum L4Protocol {
    /// TCPRoute.
    Tcp,
    /// UDPRoute.
    Udp,
}

/// A TCPRoute or UDPRoute: the destination ports a rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortRoute {
    /// Object identity.
    pub meta: Meta,
    /// TCP or UDP.
    pub protocol: L4Protocol,
    /// `spec.matches.ports`; empty means every port.
    pub ports: Vec<u16>,
}

impl PortRoute {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self.protocol {
            L4Protocol::Tcp => Kind::TcpRoute,
            L4Protocol::Udp => Kind::UdpRoute,
        }
    }
}

/// A TrafficSplit: requests for a root service go to backends by relative weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficSplit {
    /// Object identity.
    pub meta: Meta,
    /// `spec.service`, the root service (short name or FQDN).
    pub service: String,
    /// `spec.backends`.
    pub backends: Vec<SplitBackend>,
    /// `spec.matches`: HTTPRouteGroups whose requests are split; empty means all requests.
    pub matches: Vec<LocalRef>,
}

/// One backend of a TrafficSplit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitBackend {
    /// Backend Service name.
    pub service: String,
    /// Relative weight (v1alpha1 quantities are converted to thousandths, which keeps ratios).
    pub weight: u64,
    /// Its index in the list it is written in.
    pub position: usize,
}

/// A reference to an object in the same namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalRef {
    /// Kind named by the reference.
    pub kind: String,
    /// Object name.
    pub name: String,
    /// Its index in the list it is written in.
    pub position: usize,
}

/// The Service fields weft needs: its ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Object identity.
    pub meta: Meta,
    /// `spec.ports[].port`, sorted, without repeats.
    pub ports: Vec<u16>,
    /// `spec.selector`: the labels of the workloads behind it.
    pub selector: BTreeMap<String, String>,
    /// `spec.ports`, as written (those that could be read).
    pub port_specs: Vec<ServicePort>,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    /// `name` (may be empty).
    pub name: String,
    /// `port`: the port callers use.
    pub port: u16,
    /// `targetPort`: the workload's port (`port` when absent).
    pub target_port: u16,
    /// How it is spoken: `appProtocol`, else a name prefix (`tcp-`, `http-`), else HTTP.
    pub protocol: AppProtocol,
}

/// How a Service port is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1 or HTTP/2: access per request, split, metrics.
    Http,
    /// Opaque TCP: access per connection.
    Tcp,
}

/// A workload: a Deployment (its pod template) or a Pod, as weft needs it to identify its
/// proxies (what local mode runs is read from its document, `weft_local::Run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// Object identity.
    pub meta: Meta,
    /// `Deployment` or `Pod`.
    pub kind: String,
    /// `serviceAccountName` (`default` when absent, as Kubernetes does): its identity.
    pub service_account: String,
    /// The pods' labels (a Deployment's `spec.template.metadata.labels`).
    pub labels: BTreeMap<String, String>,
    /// `spec.replicas` (1 when absent; 1 for a Pod).
    pub replicas: u32,
    /// The first container's `ports[].containerPort`.
    pub ports: Vec<u16>,
}
