//! weft's own resources, for what SMI cannot say (API group `policy.weft.io`, version
//! `v1alpha1`): a [`TrafficPolicy`] attaches connection limits, outlier detection, retries,
//! timeouts, a local rate limit and fault injection to a destination Service (optionally one
//! of its ports, optionally per HTTPRouteGroup match), and an [`EnvoyPatch`] changes any field
//! of a resource weft generates, with RFC 6902 JSON Patch operations. Both are read from the
//! same manifests as SMI ([`crate::load`]), checked here field by field and against the other
//! objects, and resolved ([`effective_policy`]) by one documented rule. What they become in
//! Envoy is decided by `weft-envoy-config`; nothing here runs in the filter.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Severity};
use crate::load::{LoadError, Reader};
use crate::model::{AppProtocol, Catalog, Kind, Meta, Service};

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

/// The resource types an [`EnvoyPatch`] may change, by the names a patch gives them. Secrets and
/// the weft filter's own configuration (ECDS) are not patchable: they carry identity and
/// access control.
pub const PATCHABLE_TYPES: &[(&str, &str)] = &[
    ("Listener", "envoy.config.listener.v3.Listener"),
    ("Cluster", "envoy.config.cluster.v3.Cluster"),
    (
        "RouteConfiguration",
        "envoy.config.route.v3.RouteConfiguration",
    ),
];

/// The RFC 6902 operations.
pub const PATCH_OPERATIONS: &[&str] = &["add", "remove", "replace", "move", "copy", "test"];

/// What is wrong with a field of weft's own resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrafficError {
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
    /// The resource's type, as [`PATCHABLE_TYPES`] names it.
    pub type_name: String,
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

/// The full protobuf type name of a patchable type, by its short name or type URL.
pub fn patchable_type(name: &str) -> Option<(&'static str, &'static str)> {
    let full = name.rsplit('/').next().unwrap_or(name);
    PATCHABLE_TYPES
        .iter()
        .copied()
        .find(|(short, long)| *short == name || *long == full)
}

/// Reads a Gateway API duration (GEP-2257): one to four whole numbers of up to five digits,
/// each with a unit `h`, `m`, `s` or `ms`, such as `1h30m` or `250ms`.
///
/// # Errors
/// [`TrafficError::Duration`] for anything else.
pub fn parse_duration(text: &str) -> Result<Duration, TrafficError> {
    let bad = || TrafficError::Duration(text.to_owned());
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePolicy {
    spec: Option<WirePolicySpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePolicySpec {
    target_ref: Option<WireTargetRef>,
    connection_limits: Option<WireConnectionLimits>,
    outlier_detection: Option<WireOutlier>,
    retry: Option<WireRetry>,
    timeouts: Option<WireTimeouts>,
    rate_limit: Option<WireRateLimit>,
    fault_injection: Option<WireFault>,
    routes: Option<Vec<WireRoute>>,
}

#[derive(Deserialize)]
struct WireTargetRef {
    kind: Option<String>,
    name: Option<String>,
    port: Option<Value>,
    #[serde(rename = "group")]
    _group: Option<String>,
}

struct WireSettings {
    connection_limits: Option<WireConnectionLimits>,
    outlier_detection: Option<WireOutlier>,
    retry: Option<WireRetry>,
    timeouts: Option<WireTimeouts>,
    rate_limit: Option<WireRateLimit>,
    fault_injection: Option<WireFault>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireConnectionLimits {
    max_connections: Option<u32>,
    max_pending_requests: Option<u32>,
    max_requests: Option<u32>,
    max_retries: Option<u32>,
    max_requests_per_connection: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireOutlier {
    #[serde(rename = "consecutive5xx")]
    consecutive_5xx: Option<u32>,
    consecutive_gateway_errors: Option<u32>,
    interval: Option<String>,
    base_ejection_time: Option<String>,
    max_ejection_percent: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRetry {
    attempts: Option<u32>,
    per_try_timeout: Option<String>,
    retry_on: Option<Vec<String>>,
    retriable_status_codes: Option<Vec<u32>>,
    backoff: Option<WireBackoff>,
    budget: Option<WireBudget>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBackoff {
    base_interval: Option<String>,
    max_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBudget {
    percent: Option<u32>,
    min_concurrency: Option<u32>,
}

#[derive(Deserialize)]
struct WireTimeouts {
    request: Option<String>,
    idle: Option<String>,
    connect: Option<String>,
}

#[derive(Deserialize)]
struct WireRateLimit {
    requests: Option<u32>,
    interval: Option<String>,
    burst: Option<u32>,
    status: Option<u32>,
}

#[derive(Deserialize)]
struct WireFault {
    delay: Option<WireDelay>,
    abort: Option<WireAbort>,
}

#[derive(Deserialize)]
struct WireDelay {
    percent: Option<u32>,
    duration: Option<String>,
}

#[derive(Deserialize)]
struct WireAbort {
    percent: Option<u32>,
    status: Option<u32>,
}

// (Written out rather than flattened: serde cannot report unknown fields of a flattened struct.)
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRoute {
    #[serde(rename = "match")]
    route_match: Option<WireRouteMatch>,
    connection_limits: Option<WireConnectionLimits>,
    outlier_detection: Option<WireOutlier>,
    retry: Option<WireRetry>,
    timeouts: Option<WireTimeouts>,
    rate_limit: Option<WireRateLimit>,
    fault_injection: Option<WireFault>,
}

macro_rules! wire_settings {
    ($wire:expr) => {
        WireSettings {
            connection_limits: $wire.connection_limits,
            outlier_detection: $wire.outlier_detection,
            retry: $wire.retry,
            timeouts: $wire.timeouts,
            rate_limit: $wire.rate_limit,
            fault_injection: $wire.fault_injection,
        }
    };
}

#[derive(Deserialize)]
struct WireRouteMatch {
    kind: Option<String>,
    name: Option<String>,
    #[serde(rename = "match")]
    match_name: Option<String>,
}

#[derive(Deserialize)]
struct WirePatch {
    spec: Option<WirePatchSpec>,
}

#[derive(Deserialize)]
struct WirePatchSpec {
    selector: Option<WireSelector>,
    patches: Option<Vec<WireResourcePatch>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSelector {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Value>,
}

#[derive(Deserialize)]
struct WireResourcePatch {
    #[serde(rename = "type")]
    type_name: Option<String>,
    name: Option<String>,
    operations: Option<Vec<Value>>,
}

/// The whole-Service settings' names, as written.
const SERVICE_ONLY: [&str; 2] = ["connectionLimits", "outlierDetection"];

impl Reader<'_> {
    fn traffic_error(&mut self, field: &str, error: TrafficError) {
        self.error(field, LoadError::Shape(error.to_string()));
    }

    /// A duration field; `positive` when 0s is not allowed.
    fn duration(&mut self, field: &str, text: Option<String>, positive: bool) -> Option<Duration> {
        let text = text?;
        match parse_duration(&text) {
            Ok(duration) if positive && duration.is_zero() => {
                self.traffic_error(field, TrafficError::ZeroDuration);
                None
            }
            Ok(duration) => Some(duration),
            Err(err) => {
                self.traffic_error(field, err);
                None
            }
        }
    }

    /// A number that must lie in `low..=high`.
    fn within(
        &mut self,
        field: &str,
        value: Option<u32>,
        low: u32,
        high: u32,
        range: &'static str,
    ) -> Option<u32> {
        let value = value?;
        if (low..=high).contains(&value) {
            Some(value)
        } else {
            self.traffic_error(
                field,
                TrafficError::Range {
                    value: value.to_string(),
                    range,
                },
            );
            None
        }
    }

    fn status(&mut self, field: &str, value: Option<u32>) -> Option<u16> {
        self.within(field, value, 400, 599, "an HTTP status from 400 to 599")
            .and_then(|status| u16::try_from(status).ok())
    }

    fn percent(&mut self, field: &str, value: Option<u32>) -> Option<u32> {
        self.within(field, value, 0, 100, "a whole percentage from 0 to 100")
    }

    fn required<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.error(field, LoadError::Missing);
        }
        value
    }

    fn settings(&mut self, prefix: &str, wire: WireSettings) -> Settings {
        let at = |name: &str| format!("{prefix}{name}");
        let positive = "a whole number of 1 or more";
        let connection_limits = wire.connection_limits.map(|limits| {
            let f = |name: &str| at(&format!("connectionLimits.{name}"));
            let result = ConnectionLimits {
                max_connections: self.within(
                    &f("maxConnections"),
                    limits.max_connections,
                    1,
                    u32::MAX,
                    positive,
                ),
                max_pending_requests: self.within(
                    &f("maxPendingRequests"),
                    limits.max_pending_requests,
                    1,
                    u32::MAX,
                    positive,
                ),
                max_requests: self.within(
                    &f("maxRequests"),
                    limits.max_requests,
                    1,
                    u32::MAX,
                    positive,
                ),
                max_retries: limits.max_retries,
                max_requests_per_connection: self.within(
                    &f("maxRequestsPerConnection"),
                    limits.max_requests_per_connection,
                    1,
                    u32::MAX,
                    positive,
                ),
            };
            if limits.max_connections.is_none()
                && limits.max_pending_requests.is_none()
                && limits.max_requests.is_none()
                && limits.max_retries.is_none()
                && limits.max_requests_per_connection.is_none()
            {
                self.traffic_error(&at("connectionLimits"), TrafficError::Empty);
            }
            result
        });
        let outlier_detection = wire.outlier_detection.map(|outlier| {
            let f = |name: &str| at(&format!("outlierDetection.{name}"));
            OutlierDetection {
                consecutive_5xx: self.within(
                    &f("consecutive5xx"),
                    outlier.consecutive_5xx,
                    1,
                    u32::MAX,
                    positive,
                ),
                consecutive_gateway_errors: self.within(
                    &f("consecutiveGatewayErrors"),
                    outlier.consecutive_gateway_errors,
                    1,
                    u32::MAX,
                    positive,
                ),
                interval: self.duration(&f("interval"), outlier.interval, true),
                base_ejection_time: self.duration(
                    &f("baseEjectionTime"),
                    outlier.base_ejection_time,
                    true,
                ),
                max_ejection_percent: self
                    .percent(&f("maxEjectionPercent"), outlier.max_ejection_percent),
            }
        });
        let retry = wire.retry.map(|retry| {
            let f = |name: &str| at(&format!("retry.{name}"));
            let retry_on = retry.retry_on.unwrap_or_default();
            for (i, condition) in retry_on.iter().enumerate() {
                if !RETRY_CONDITIONS.contains(&condition.as_str()) {
                    self.traffic_error(
                        &f(&format!("retryOn[{i}]")),
                        TrafficError::RetryCondition(condition.clone()),
                    );
                }
            }
            let codes = retry.retriable_status_codes.unwrap_or_default();
            for (i, code) in codes.iter().enumerate() {
                self.within(
                    &f(&format!("retriableStatusCodes[{i}]")),
                    Some(*code),
                    100,
                    599,
                    "an HTTP status from 100 to 599",
                );
            }
            let backoff = retry.backoff.and_then(|backoff| {
                let base = self.duration(
                    &f("backoff.baseInterval"),
                    backoff.base_interval.clone(),
                    true,
                );
                if backoff.base_interval.is_none() {
                    self.error(&f("backoff.baseInterval"), LoadError::Missing);
                }
                let max = self.duration(&f("backoff.maxInterval"), backoff.max_interval, true);
                Some(Backoff {
                    base_interval: base?,
                    max_interval: max,
                })
            });
            Retry {
                attempts: retry.attempts,
                per_try_timeout: self.duration(&f("perTryTimeout"), retry.per_try_timeout, true),
                retry_on,
                retriable_status_codes: codes,
                backoff,
                budget: retry.budget.map(|budget| RetryBudget {
                    percent: self.percent(&f("budget.percent"), budget.percent),
                    min_concurrency: budget.min_concurrency,
                }),
            }
        });
        let timeouts = wire.timeouts.map(|timeouts| {
            let f = |name: &str| at(&format!("timeouts.{name}"));
            Timeouts {
                request: self.duration(&f("request"), timeouts.request, false),
                idle: self.duration(&f("idle"), timeouts.idle, false),
                connect: self.duration(&f("connect"), timeouts.connect, true),
            }
        });
        let rate_limit = wire.rate_limit.and_then(|limit| {
            let f = |name: &str| at(&format!("rateLimit.{name}"));
            let requests = self.required(&f("requests"), limit.requests);
            let requests = self.within(&f("requests"), requests, 1, u32::MAX, positive);
            let interval_text = self.required(&f("interval"), limit.interval);
            let interval = self.duration(&f("interval"), interval_text.clone(), true);
            if let (Some(interval), Some(text)) = (interval, interval_text)
                && interval < MIN_RATE_LIMIT_INTERVAL
            {
                self.traffic_error(&f("interval"), TrafficError::ShortInterval(text));
            }
            if let (Some(burst), Some(requests)) = (limit.burst, requests)
                && burst < requests
            {
                self.traffic_error(&f("burst"), TrafficError::Burst { burst, requests });
            }
            let status = self.status(&f("status"), limit.status);
            Some(RateLimit {
                requests: requests?,
                interval: interval?,
                burst: limit.burst,
                status,
            })
        });
        let fault_injection = wire.fault_injection.map(|fault| {
            let f = |name: &str| at(&format!("faultInjection.{name}"));
            let delay = fault.delay.and_then(|delay| {
                let percent = self.required(&f("delay.percent"), delay.percent);
                let duration = self.required(&f("delay.duration"), delay.duration);
                Some(FaultDelay {
                    percent: self.percent(&f("delay.percent"), percent)?,
                    duration: self.duration(&f("delay.duration"), duration, true)?,
                })
            });
            let abort = fault.abort.and_then(|abort| {
                let percent = self.required(&f("abort.percent"), abort.percent);
                let status = self.required(&f("abort.status"), abort.status);
                Some(FaultAbort {
                    percent: self.percent(&f("abort.percent"), percent)?,
                    status: self.status(&f("abort.status"), status)?,
                })
            });
            if delay.is_none() && abort.is_none() {
                self.traffic_error(&at("faultInjection"), TrafficError::Empty);
            }
            FaultInjection { delay, abort }
        });
        Settings {
            connection_limits,
            outlier_detection,
            retry,
            timeouts,
            rate_limit,
            fault_injection,
        }
    }

    /// Reads a `policy.weft.io` object into `catalog`.
    pub(crate) fn weft_object(
        &mut self,
        kind: &str,
        value: Value,
        api_version: &str,
        catalog: &mut Catalog,
    ) {
        match kind {
            "TrafficPolicy" => {
                if let Some(policy) = self.traffic_policy(value, api_version) {
                    catalog.traffic_policies.push(policy);
                }
            }
            "EnvoyPatch" => {
                if let Some(patch) = self.envoy_patch(value, api_version) {
                    catalog.envoy_patches.push(patch);
                }
            }
            _ => self.error(
                "kind",
                LoadError::UnknownKind {
                    kind: kind.to_owned(),
                    group: GROUP.to_owned(),
                    known: KINDS,
                },
            ),
        }
    }

    fn traffic_policy(&mut self, value: Value, api_version: &str) -> Option<TrafficPolicy> {
        let wire: WirePolicy = self.wire(value, api_version)?;
        let meta = self.meta(api_version)?;
        let Some(mut spec) = wire.spec else {
            self.error("spec", LoadError::Missing);
            return None;
        };
        let target = match spec.target_ref {
            None => {
                self.error("spec.targetRef", LoadError::Missing);
                None
            }
            Some(target) => {
                let kind = target.kind.unwrap_or_else(|| "Service".to_owned());
                if kind != "Service" {
                    self.traffic_error("spec.targetRef.kind", TrafficError::TargetKind(kind));
                }
                let port = target
                    .port
                    .as_ref()
                    .and_then(|port| self.port("spec.targetRef.port", port));
                match target.name.filter(|name| !name.is_empty()) {
                    Some(service) => Some(PolicyTarget { service, port }),
                    None => {
                        self.error("spec.targetRef.name", LoadError::Missing);
                        None
                    }
                }
            }
        };
        let settings = self.settings("spec.", wire_settings!(spec));
        let mut routes = Vec::new();
        for (i, mut route) in spec
            .routes
            .take()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let prefix = format!("spec.routes[{i}].");
            for (name, given) in SERVICE_ONLY.iter().zip([
                route.connection_limits.is_some(),
                route.outlier_detection.is_some(),
            ]) {
                if given {
                    self.traffic_error(&format!("{prefix}{name}"), TrafficError::NotOnRoute(name));
                }
            }
            if route.timeouts.as_ref().is_some_and(|t| t.connect.is_some()) {
                self.traffic_error(
                    &format!("{prefix}timeouts.connect"),
                    TrafficError::NotOnRoute("timeouts.connect"),
                );
            }
            if route.retry.as_ref().is_some_and(|r| r.budget.is_some()) {
                self.traffic_error(
                    &format!("{prefix}retry.budget"),
                    TrafficError::BudgetOnRoute,
                );
            }
            let route_match = route.route_match.take();
            let settings = self.settings(&prefix, wire_settings!(route));
            let Some(route_match) = route_match else {
                self.error(&format!("{prefix}match"), LoadError::Missing);
                continue;
            };
            let kind = route_match
                .kind
                .unwrap_or_else(|| "HTTPRouteGroup".to_owned());
            if kind != "HTTPRouteGroup" {
                self.traffic_error(
                    &format!("{prefix}match.kind"),
                    TrafficError::MatchKind(kind),
                );
                continue;
            }
            let Some(group) = route_match.name.filter(|name| !name.is_empty()) else {
                self.error(&format!("{prefix}match.name"), LoadError::Missing);
                continue;
            };
            routes.push(RoutePolicy {
                group,
                match_name: route_match.match_name,
                settings,
                position: i,
            });
        }
        Some(TrafficPolicy {
            meta,
            target: target?,
            settings,
            routes,
        })
    }

    fn envoy_patch(&mut self, value: Value, api_version: &str) -> Option<EnvoyPatch> {
        let wire: WirePatch = self.wire(value, api_version)?;
        let meta = self.meta(api_version)?;
        let Some(spec) = wire.spec else {
            self.error("spec", LoadError::Missing);
            return None;
        };
        let mut selector = BTreeMap::new();
        if let Some(wire_selector) = spec.selector {
            if wire_selector.match_expressions.is_some() {
                self.traffic_error("spec.selector.matchExpressions", TrafficError::Selector);
            }
            selector = wire_selector.match_labels.unwrap_or_default();
        }
        let mut patches = Vec::new();
        let wire_patches = spec.patches.unwrap_or_default();
        if wire_patches.is_empty() {
            self.error("spec.patches", LoadError::Missing);
        }
        for (i, patch) in wire_patches.into_iter().enumerate() {
            let prefix = format!("spec.patches[{i}]");
            let type_name = match patch.type_name {
                None => {
                    self.error(&format!("{prefix}.type"), LoadError::Missing);
                    None
                }
                Some(name) => match patchable_type(&name) {
                    Some((short, _)) => Some(short.to_owned()),
                    None => {
                        self.traffic_error(
                            &format!("{prefix}.type"),
                            TrafficError::PatchType(name),
                        );
                        None
                    }
                },
            };
            let name = patch.name.filter(|name| !name.is_empty());
            if name.is_none() {
                self.error(&format!("{prefix}.name"), LoadError::Missing);
            }
            let operations = patch.operations.unwrap_or_default();
            if operations.is_empty() {
                self.error(&format!("{prefix}.operations"), LoadError::Missing);
            }
            let mut good = true;
            for (j, operation) in operations.iter().enumerate() {
                if let Err((field, reason)) = check_operation(operation) {
                    let at = match field {
                        "" => format!("{prefix}.operations[{j}]"),
                        field => format!("{prefix}.operations[{j}].{field}"),
                    };
                    self.traffic_error(&at, TrafficError::PatchOperation(reason));
                    good = false;
                }
            }
            if let (Some(type_name), Some(name), true) = (type_name, name, good) {
                patches.push(ResourcePatch {
                    type_name,
                    name,
                    operations,
                    position: i,
                });
            }
        }
        Some(EnvoyPatch {
            meta,
            selector,
            patches,
        })
    }
}

/// Checks an RFC 6902 operation's shape: the field concerned (empty for the operation) and
/// what is wrong.
fn check_operation(operation: &Value) -> Result<(), (&'static str, String)> {
    let Some(object) = operation.as_object() else {
        return Err((
            "",
            "an operation is a mapping such as {op: add, path: /name, value: ...}".to_owned(),
        ));
    };
    let op = match object.get("op").map(Value::as_str) {
        None => {
            return Err((
                "op",
                "is required; use one of add, remove, replace, move, copy, test".to_owned(),
            ));
        }
        Some(Some(op)) if PATCH_OPERATIONS.contains(&op) => op,
        Some(other) => {
            return Err((
                "op",
                format!(
                    "{} is not an RFC 6902 operation; use one of add, remove, replace, move, copy, test",
                    other.map_or_else(|| object["op"].to_string(), |op| format!("{op:?}"))
                ),
            ));
        }
    };
    let pointer = |field: &'static str| -> Result<(), (&'static str, String)> {
        match object.get(field) {
            None => Err((
                field,
                "is required: a JSON Pointer such as /virtual_hosts/0/name".to_owned(),
            )),
            Some(Value::String(text)) if text.is_empty() || text.starts_with('/') => Ok(()),
            Some(other) => Err((
                field,
                format!(
                    "{other} is not a JSON Pointer; it is empty or starts with /, such as /virtual_hosts/0/name"
                ),
            )),
        }
    };
    pointer("path")?;
    if matches!(op, "move" | "copy") {
        pointer("from")?;
    }
    if matches!(op, "add" | "replace" | "test") && !object.contains_key("value") {
        return Err(("value", format!("is required for {op}")));
    }
    for key in object.keys() {
        if !matches!(key.as_str(), "op" | "path" | "from" | "value") {
            return Err((
                "",
                format!("unknown key {key:?}; an operation has op, path, from and value"),
            ));
        }
    }
    Ok(())
}

/// The Service port a policy's HTTP settings address (the first HTTP port: weft routes a
/// Service's HTTP through it).
pub fn http_port(service: &Service) -> Option<u16> {
    service
        .port_specs
        .iter()
        .find(|spec| spec.protocol == AppProtocol::Http)
        .map(|spec| spec.port)
}

/// The TrafficPolicy in force for `port` of `service` (`port` `None`: its HTTP routes), by
/// the documented rule: a policy naming the port wins over one naming the whole Service;
/// among policies equally specific, the first by name wins, whole (policies do not merge).
pub fn effective_policy<'c>(
    catalog: &'c Catalog,
    service: &Service,
    port: u16,
) -> Option<&'c TrafficPolicy> {
    let candidates = catalog.traffic_policies.iter().filter(|policy| {
        policy.meta.namespace == service.meta.namespace
            && policy.target.service == service.meta.name
            && policy.target.port.is_none_or(|p| p == port)
    });
    // Port-specific first, then by name (the list is sorted by name).
    candidates.min_by_key(|policy| (policy.target.port.is_none(), policy.meta.name.as_str()))
}

fn report(
    out: &mut Vec<Diagnostic>,
    meta: &Meta,
    kind: Kind,
    field: &str,
    severity: Severity,
    error: &TrafficError,
) {
    out.push(Diagnostic {
        severity,
        kind: Some(kind.to_string()),
        namespace: Some(meta.namespace.clone()),
        name: Some(meta.name.clone()),
        field: field.to_owned(),
        origin: meta.origin.clone(),
        message: error.to_string(),
    });
}

/// The cross-object problems of weft's own resources: targets that do not exist, settings that
/// do not fit the port, route matches that name nothing, and the losers of conflicts.
pub fn validate(catalog: &Catalog, out: &mut Vec<Diagnostic>) {
    let mut seen = std::collections::BTreeSet::new();
    for patch in &catalog.envoy_patches {
        if !seen.insert((&patch.meta.namespace, &patch.meta.name)) {
            report(
                out,
                &patch.meta,
                Kind::EnvoyPatch,
                "",
                Severity::Error,
                &TrafficError::Duplicate(Kind::EnvoyPatch),
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for policy in &catalog.traffic_policies {
        let meta = &policy.meta;
        let error = |out: &mut Vec<Diagnostic>, field: &str, error: TrafficError| {
            report(
                out,
                meta,
                Kind::TrafficPolicy,
                field,
                Severity::Error,
                &error,
            );
        };
        if !seen.insert((&meta.namespace, &meta.name)) {
            error(out, "", TrafficError::Duplicate(Kind::TrafficPolicy));
            continue;
        }
        let Some(service) = catalog.service(&meta.namespace, &policy.target.service) else {
            report(
                out,
                meta,
                Kind::TrafficPolicy,
                "spec.targetRef.name",
                Severity::Warning,
                &TrafficError::NoService(policy.target.service.clone()),
            );
            continue;
        };
        let http = http_port(service);
        let http_fields = http_settings(&policy.settings);
        let has_routes = !policy.routes.is_empty();
        match policy.target.port {
            Some(port) => {
                let Some(spec) = service.port_specs.iter().find(|spec| spec.port == port) else {
                    let ports: Vec<String> =
                        service.ports.iter().map(ToString::to_string).collect();
                    error(
                        out,
                        "spec.targetRef.port",
                        TrafficError::NoPort {
                            service: service.meta.name.clone(),
                            port,
                            ports: ports.join(", "),
                        },
                    );
                    continue;
                };
                match (spec.protocol, http) {
                    (AppProtocol::Http, Some(first)) if first != port => error(
                        out,
                        "spec.targetRef.port",
                        TrafficError::NotTheHttpPort {
                            service: service.meta.name.clone(),
                            port,
                            first,
                        },
                    ),
                    (AppProtocol::Tcp, _) => {
                        for field in http_fields
                            .iter()
                            .copied()
                            .chain(has_routes.then_some("routes"))
                        {
                            error(
                                out,
                                &format!("spec.{field}"),
                                TrafficError::HttpOnly {
                                    field,
                                    service: service.meta.name.clone(),
                                    port,
                                },
                            );
                        }
                    }
                    _ => {}
                }
            }
            None if http.is_none() => {
                for field in http_fields
                    .iter()
                    .copied()
                    .chain(has_routes.then_some("routes"))
                {
                    error(
                        out,
                        &format!("spec.{field}"),
                        TrafficError::NoHttpPort {
                            field,
                            service: service.meta.name.clone(),
                        },
                    );
                }
            }
            None => {}
        }
        for route in &policy.routes {
            let field = format!("spec.routes[{}].match", route.position);
            let Some(group) = catalog.http_route_group(&meta.namespace, &route.group) else {
                error(
                    out,
                    &format!("{field}.name"),
                    TrafficError::NoRouteGroup(route.group.clone()),
                );
                continue;
            };
            if let Some(name) = &route.match_name
                && !group.matches.iter().any(|m| &m.name == name)
            {
                let names: Vec<&str> = group.matches.iter().map(|m| m.name.as_str()).collect();
                error(
                    out,
                    &format!("{field}.match"),
                    TrafficError::NoRouteMatch {
                        group: route.group.clone(),
                        name: name.clone(),
                        names: names.join(", "),
                    },
                );
            }
        }
        // The loser of a conflict is told which policy wins.
        let ports: Vec<u16> = match policy.target.port {
            Some(port) => vec![port],
            None => service.ports.clone(),
        };
        for port in ports {
            if let Some(winner) = effective_policy(catalog, service, port)
                && winner.meta.name != meta.name
                && winner.target.port == policy.target.port
            {
                let target = match policy.target.port {
                    Some(port) => format!("port {port} of Service {}", service.meta.name),
                    None => format!("Service {}", service.meta.name),
                };
                report(
                    out,
                    meta,
                    Kind::TrafficPolicy,
                    "spec.targetRef",
                    Severity::Warning,
                    &TrafficError::Conflict {
                        target,
                        winner: winner.meta.name.clone(),
                    },
                );
                break;
            }
        }
    }
}

/// The HTTP-only settings `settings` gives, by their written names.
fn http_settings(settings: &Settings) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if settings.retry.is_some() {
        fields.push("retry");
    }
    if settings
        .timeouts
        .as_ref()
        .is_some_and(|t| t.request.is_some() || t.idle.is_some())
    {
        fields.push("timeouts");
    }
    if settings.rate_limit.is_some() {
        fields.push("rateLimit");
    }
    if settings.fault_injection.is_some() {
        fields.push("faultInjection");
    }
    if settings
        .connection_limits
        .as_ref()
        .is_some_and(|c| c.max_requests_per_connection.is_some())
    {
        fields.push("connectionLimits.maxRequestsPerConnection");
    }
    fields
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

    #[test]
    fn an_operation_is_checked_for_its_shape() {
        let good = serde_json::json!({"op": "add", "path": "/a/-", "value": 1});
        assert_eq!(check_operation(&good), Ok(()));
        let cases = [
            (serde_json::json!({"op": "frob", "path": "/a"}), "op"),
            (serde_json::json!({"path": "/a"}), "op"),
            (
                serde_json::json!({"op": "add", "path": "a", "value": 1}),
                "path",
            ),
            (serde_json::json!({"op": "add", "path": "/a"}), "value"),
            (serde_json::json!({"op": "move", "path": "/a"}), "from"),
            (
                serde_json::json!({"op": "remove", "path": "/a", "valeu": 1}),
                "",
            ),
            (serde_json::json!("add"), ""),
        ];
        for (operation, field) in cases {
            assert_eq!(
                check_operation(&operation).unwrap_err().0,
                field,
                "{operation}"
            );
        }
    }
}
