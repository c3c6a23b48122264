//! weft's own resources, for what SMI cannot say (API group `policy.weft.io`, version
//! `v1alpha1`): extensions of SMI. A [`TrafficPolicy`] attaches connection limits, outlier
//! detection, retries, timeouts, a local rate limit and fault injection to a destination
//! Service (optionally one of its ports, optionally per HTTPRouteGroup match), and an
//! [`EnvoyPatch`] changes any field of a resource weft generates, with RFC 6902 JSON Patch
//! operations. This module is their model; they are read from the same manifests as SMI
//! ([`crate::load`]'s `extension`), checked against the other objects by [`crate::validate`]'s
//! `extension`, and resolved by [`crate::catalog::effective_policy`]. What they become in Envoy
//! is decided by `weft-envoy-config`; nothing here runs in the filter.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::model::{AppProtocol, Kind, Meta, Service};

/// The API group of weft's own resources.
pub const GROUP: &str = "policy.weft.io";
/// The versions of [`GROUP`] that are read.
pub const VERSIONS: &[&str] = &["v1alpha1"];
/// The kinds [`GROUP`] defines.
pub const KINDS: &str = "TrafficPolicy, EnvoyPatch";

/// The conditions a retry may be made on: Envoy's `x-envoy-retry-on` and
/// `x-envoy-retry-grpc-on` values.
pub const RETRY_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The retry conditions used when a retry names none: those under which the request surely did
/// not reach the application or it said to try again (Istio's defaults, for HTTP).
pub const DEFAULT_RETRY_ON: &[&str] = &[
    "connect-failure",
    "refused-stream",
    "retriable-status-codes",
];
/// The status codes retried by default (with `retriable-status-codes`).
pub const DEFAULT_RETRIABLE_STATUS_CODES: &[u32] = &[503];
/// The status of a request refused by a rate limit, unless the policy says otherwise.
pub const DEFAULT_RATE_LIMIT_STATUS: u16 = 429;
/// The shortest refill interval of a rate limit that Envoy accepts.
pub const MIN_RATE_LIMIT_INTERVAL: Duration = Duration::from_millis(50);

/// The resource types an [`EnvoyPatch`] may change. Secrets and the weft filter's own
/// configuration (ECDS) are not patchable: they carry identity and access control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PatchedType {
    /// `envoy.config.listener.v3.Listener`.
    Listener,
    /// `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// `envoy.config.route.v3.RouteConfiguration`.
    RouteConfiguration,
}

impl PatchedType {
    /// Every patchable type.
    pub const ALL: [Self; 3] = [Self::Listener, Self::Cluster, Self::RouteConfiguration];

    /// The name a patch gives it (`spec.patches[].type`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Listener => "Listener",
            Self::Cluster => "Cluster",
            Self::RouteConfiguration => "RouteConfiguration",
        }
    }

    /// Envoy's protobuf type name, which a patch may give instead (as such or as a type URL).
    /// The controller's tests check it against the protos weft builds.
    pub fn envoy_type(self) -> &'static str {
        match self {
            Self::Listener => "envoy.config.listener.v3.Listener",
            Self::Cluster => "envoy.config.cluster.v3.Cluster",
            Self::RouteConfiguration => "envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The type a patch names: its short name, Envoy's type name or a type URL.
    pub fn named(name: &str) -> Option<Self> {
        let full = name.rsplit('/').next().unwrap_or(name);
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name || kind.envoy_type() == full)
    }
}

impl std::fmt::Display for PatchedType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The RFC 6902 operations.
pub const PATCH_OPERATIONS: &[&str] = &["add", "remove", "replace", "move", "copy", "test"];

/// What is wrong with a field of weft's own resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// A duration not in Gateway API's form.
    #[error(
        "{0:?} is not a duration; write whole numbers with units h, m, s or ms, such as 250ms, 5s or 1m30s"
    )]
    Duration(String),
    /// A duration that must be more than zero.
    #[error("must be more than 0s")]
    ZeroDuration,
    /// A number outside its range.
    #[error("{value} is out of range; use {range}")]
    Range {
        /// The number given.
        value: String,
        /// What would be valid.
        range: &'static str,
    },
    /// A retry condition Envoy does not know.
    #[error("{0:?} is not a retry condition; use one of {list}", list = RETRY_CONDITIONS.join(", "))]
    RetryCondition(String),
    /// Two objects of one kind with one namespace and name.
    #[error("another {0} with this namespace and name was already read; names must be unique")]
    Duplicate(Kind),
    /// A route match naming something other than an HTTPRouteGroup.
    #[error("kind {0} cannot be matched; a route matches an HTTPRouteGroup")]
    MatchKind(String),
    /// A targetRef kind other than Service.
    #[error("kind {0} cannot be targeted; a TrafficPolicy targets a Service")]
    TargetKind(String),
    /// A section with nothing in it.
    #[error("sets nothing; give at least one of its fields or remove it")]
    Empty,
    /// A burst smaller than the requests per interval.
    #[error(
        "burst {burst} is less than requests {requests}; the bucket holds at least one interval's tokens"
    )]
    Burst {
        /// The burst.
        burst: u32,
        /// The requests per interval.
        requests: u32,
    },
    /// A rate limit refilled faster than Envoy allows.
    #[error("{0:?} is shorter than Envoy's shortest refill interval, 50ms")]
    ShortInterval(String),
    /// A setting of a whole Service given on a route.
    #[error("{0} applies to a whole Service (its cluster), not to a route; move it to spec.{0}")]
    NotOnRoute(&'static str),
    /// A retry budget given on a route.
    #[error(
        "a retry budget applies to a whole Service (its cluster), not to a route; move it to spec.retry.budget"
    )]
    BudgetOnRoute,
    /// A type an EnvoyPatch cannot change.
    #[error(
        "{0:?} cannot be patched; patch one of Listener, Cluster or RouteConfiguration (secrets and weft's filter configuration are not patchable)"
    )]
    PatchType(String),
    /// An operation that is not RFC 6902.
    #[error("{0}")]
    PatchOperation(String),
    /// A label selector form weft does not read.
    #[error("only matchLabels is supported; write the labels as selector.matchLabels")]
    Selector,
    /// The targeted Service is not in the manifests.
    #[error("no Service {0} in this namespace; the policy applies to nothing until it exists")]
    NoService(String),
    /// The targeted port is not a port of the Service.
    #[error("Service {service} has no port {port}; its ports are {ports}")]
    NoPort {
        /// The Service.
        service: String,
        /// The port.
        port: u16,
        /// Its ports.
        ports: String,
    },
    /// A second HTTP port: weft routes a Service's HTTP through its first HTTP port.
    #[error(
        "port {port} is not the HTTP port weft routes Service {service} through ({first}, its first HTTP port); target port {first} or none"
    )]
    NotTheHttpPort {
        /// The Service.
        service: String,
        /// The port targeted.
        port: u16,
        /// Its first HTTP port.
        first: u16,
    },
    /// HTTP settings on a TCP port.
    #[error("{field} applies to HTTP; port {port} of Service {service} is TCP")]
    HttpOnly {
        /// The setting.
        field: &'static str,
        /// The Service.
        service: String,
        /// The port.
        port: u16,
    },
    /// HTTP settings on a Service without HTTP ports.
    #[error("{field} applies to HTTP; Service {service} has no HTTP port")]
    NoHttpPort {
        /// The setting.
        field: &'static str,
        /// The Service.
        service: String,
    },
    /// A route match naming no HTTPRouteGroup.
    #[error("no HTTPRouteGroup {0} in this namespace")]
    NoRouteGroup(String),
    /// A route match naming no match of its group.
    #[error("HTTPRouteGroup {group} has no match {name}; its matches are {names}")]
    NoRouteMatch {
        /// The group.
        group: String,
        /// The match named.
        name: String,
        /// Its matches.
        names: String,
    },
    /// Two policies on one target.
    #[error(
        "{target} is also targeted by TrafficPolicy {winner}, which wins (policies on one target do not merge; the first by name wins); this policy is not applied there"
    )]
    Conflict {
        /// What both target.
        target: String,
        /// The policy applied.
        winner: String,
    },
}

/// A TrafficPolicy: settings for the calls to one Service (or one of its ports), compiled into
/// every calling proxy's cluster and routes for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficPolicy {
    /// Object identity.
    pub meta: Meta,
    /// The Service (in the policy's namespace) and port it applies to.
    pub target: PolicyTarget,
    /// Settings for every call to the target.
    pub settings: Settings,
    /// Settings for the requests of particular HTTPRouteGroup matches, first match first.
    pub routes: Vec<RoutePolicy>,
}

/// What a TrafficPolicy is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyTarget {
    /// The Service's name, in the policy's namespace.
    pub service: String,
    /// One of its ports, or all of them.
    pub port: Option<u16>,
}

/// The settings of a TrafficPolicy, each optional: what is not given is Envoy's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Circuit breaking: limits on connections and requests.
    pub connection_limits: Option<ConnectionLimits>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// Retries.
    pub retry: Option<Retry>,
    /// Timeouts.
    pub timeouts: Option<Timeouts>,
    /// A local rate limit in each calling proxy.
    pub rate_limit: Option<RateLimit>,
    /// Delays and aborts injected for testing.
    pub fault_injection: Option<FaultInjection>,
}

/// Circuit breaking (Envoy's `circuit_breakers` thresholds at default priority).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionLimits {
    /// `max_connections`.
    pub max_connections: Option<u32>,
    /// `max_pending_requests`.
    pub max_pending_requests: Option<u32>,
    /// `max_requests`.
    pub max_requests: Option<u32>,
    /// `max_retries`.
    pub max_retries: Option<u32>,
    /// `common_http_protocol_options.max_requests_per_connection`.
    pub max_requests_per_connection: Option<u32>,
}

/// Outlier detection (Envoy's `outlier_detection`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// `consecutive_5xx`.
    pub consecutive_5xx: Option<u32>,
    /// `consecutive_gateway_failure` (enforced at 100%).
    pub consecutive_gateway_errors: Option<u32>,
    /// `interval`.
    pub interval: Option<Duration>,
    /// `base_ejection_time`.
    pub base_ejection_time: Option<Duration>,
    /// `max_ejection_percent`.
    pub max_ejection_percent: Option<u32>,
}

/// Retries (Envoy's route `retry_policy`; the budget is the cluster's `retry_budget`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Retry {
    /// `num_retries`: retries after the first attempt.
    pub attempts: Option<u32>,
    /// `per_try_timeout`.
    pub per_try_timeout: Option<Duration>,
    /// `retry_on`; [`DEFAULT_RETRY_ON`] when empty.
    pub retry_on: Vec<String>,
    /// `retriable_status_codes`; [`DEFAULT_RETRIABLE_STATUS_CODES`] when empty and the
    /// conditions include `retriable-status-codes`.
    pub retriable_status_codes: Vec<u32>,
    /// `retry_back_off`.
    pub backoff: Option<Backoff>,
    /// The cluster's `circuit_breakers.thresholds.retry_budget`.
    pub budget: Option<RetryBudget>,
}

/// Exponential back-off between retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backoff {
    /// `base_interval`.
    pub base_interval: Duration,
    /// `max_interval` (Envoy: ten times the base when absent).
    pub max_interval: Option<Duration>,
}

/// A retry budget: retries allowed as a share of the requests in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryBudget {
    /// `budget_percent`, 0 to 100 (Envoy: 20).
    pub percent: Option<u32>,
    /// `min_retry_concurrency` (Envoy: 3).
    pub min_concurrency: Option<u32>,
}

/// Timeouts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// The route's `timeout`: the whole request, retries included (0 turns it off; Envoy: 15s).
    pub request: Option<Duration>,
    /// The route's `idle_timeout`: a stream with no activity (0 turns it off).
    pub idle: Option<Duration>,
    /// The cluster's `connect_timeout` (weft: 1s).
    pub connect: Option<Duration>,
}

/// A token bucket in each calling proxy (Envoy's local rate limit filter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// `tokens_per_fill`: requests allowed per interval.
    pub requests: u32,
    /// `fill_interval`.
    pub interval: Duration,
    /// `max_tokens`: the most requests at once (`requests` when absent).
    pub burst: Option<u32>,
    /// `status`: the answer past the limit ([`DEFAULT_RATE_LIMIT_STATUS`] when absent).
    pub status: Option<u16>,
}

/// Fault injection (Envoy's fault filter).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FaultInjection {
    /// A delay before some requests are sent.
    pub delay: Option<FaultDelay>,
    /// An answer in place of some requests.
    pub abort: Option<FaultAbort>,
}

/// `delay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultDelay {
    /// `percentage`, of 100.
    pub percent: u32,
    /// `fixed_delay`.
    pub duration: Duration,
}

/// `abort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultAbort {
    /// `percentage`, of 100.
    pub percent: u32,
    /// `http_status`.
    pub status: u16,
}

/// Settings for the requests of one HTTPRouteGroup's matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoutePolicy {
    /// The HTTPRouteGroup, in the policy's namespace.
    pub group: String,
    /// One of its matches, or all of them.
    pub match_name: Option<String>,
    /// What these requests get instead of the Service's settings (the whole-Service
    /// settings a route does not give still apply to it).
    pub settings: Settings,
    /// Its index in `spec.routes`.
    pub position: usize,
}

/// An EnvoyPatch: JSON Patch operations on resources weft generates, for the workloads its
/// selector picks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvoyPatch {
    /// Object identity.
    pub meta: Meta,
    /// `selector.matchLabels`: the workloads of the patch's namespace it applies to (all of
    /// them when empty).
    pub selector: BTreeMap<String, String>,
    /// The resources it changes, in order.
    pub patches: Vec<ResourcePatch>,
}

/// Operations on one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourcePatch {
    /// The resource's type.
    pub resource_type: PatchedType,
    /// The resource's name (docs/controller.md lists the names weft generates).
    pub name: String,
    /// RFC 6902 operations, each checked for its shape.
    pub operations: Vec<Value>,
    /// Its index in `spec.patches`.
    pub position: usize,
}

impl EnvoyPatch {
    /// Whether it applies to a workload of `namespace` labelled `labels`.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.meta.namespace == namespace
            && self
                .selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// Reads a Gateway API duration (GEP-2257): one to four whole numbers of up to five digits,
/// each with a unit `h`, `m`, `s` or `ms`, such as `1h30m` or `250ms`.
///
/// # Errors
/// [`ExtensionError::Duration`] for anything else.
pub fn parse_duration(text: &str) -> Result<Duration, ExtensionError> {
    let bad = || ExtensionError::Duration(text.to_owned());
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, length) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[length..];
        total += unit * u32::try_from(number).map_err(|_| bad())?;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    Ok(total)
}

// ---- wire shapes: strict types; a wrong type is reported with its path by `Reader::wire` ----

/// The Service port a policy's HTTP settings address (the first HTTP port: weft routes a
/// Service's HTTP through it).
pub fn http_port(service: &Service) -> Option<u16> {
    service
        .port_specs
        .iter()
        .find(|spec| spec.protocol == AppProtocol::Http)
        .map(|spec| spec.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_as_gateway_api_writes_them() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "1",
            "1.5s",
            "s",
            "-1s",
            "1d",
            "123456s",
            "1s1s1s1s1s",
            "1 s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_duration("2s500ms"), Ok(Duration::from_millis(2500)));
    }
}
