//! Reading weft's own resources ([`crate::extension`]): their serde shapes as written, and the
//! field-by-field checks that need no other object.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{LoadError, Reader};
use crate::catalog::Catalog;
use crate::extension::*;

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
    fn extension_error(&mut self, field: &str, error: ExtensionError) {
        self.error(field, LoadError::Shape(error.to_string()));
    }

    /// A duration field; `positive` when 0s is not allowed.
    fn duration(&mut self, field: &str, text: Option<String>, positive: bool) -> Option<Duration> {
        let text = text?;
        match parse_duration(&text) {
            Ok(duration) if positive && duration.is_zero() => {
                self.extension_error(field, ExtensionError::ZeroDuration);
                None
            }
            Ok(duration) => Some(duration),
            Err(err) => {
                self.extension_error(field, err);
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
            self.extension_error(
                field,
                ExtensionError::Range {
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
                self.extension_error(&at("connectionLimits"), ExtensionError::Empty);
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
                    self.extension_error(
                        &f(&format!("retryOn[{i}]")),
                        ExtensionError::RetryCondition(condition.clone()),
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
                self.extension_error(&f("interval"), ExtensionError::ShortInterval(text));
            }
            if let (Some(burst), Some(requests)) = (limit.burst, requests)
                && burst < requests
            {
                self.extension_error(&f("burst"), ExtensionError::Burst { burst, requests });
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
                self.extension_error(&at("faultInjection"), ExtensionError::Empty);
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
                    self.extension_error("spec.targetRef.kind", ExtensionError::TargetKind(kind));
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
                    self.extension_error(
                        &format!("{prefix}{name}"),
                        ExtensionError::NotOnRoute(name),
                    );
                }
            }
            if route.timeouts.as_ref().is_some_and(|t| t.connect.is_some()) {
                self.extension_error(
                    &format!("{prefix}timeouts.connect"),
                    ExtensionError::NotOnRoute("timeouts.connect"),
                );
            }
            if route.retry.as_ref().is_some_and(|r| r.budget.is_some()) {
                self.extension_error(
                    &format!("{prefix}retry.budget"),
                    ExtensionError::BudgetOnRoute,
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
                self.extension_error(
                    &format!("{prefix}match.kind"),
                    ExtensionError::MatchKind(kind),
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
                self.extension_error("spec.selector.matchExpressions", ExtensionError::Selector);
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
                Some(name) => match PatchedType::named(&name) {
                    Some(kind) => Some(kind),
                    None => {
                        self.extension_error(
                            &format!("{prefix}.type"),
                            ExtensionError::PatchType(name),
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
                    self.extension_error(&at, ExtensionError::PatchOperation(reason));
                    good = false;
                }
            }
            if let (Some(resource_type), Some(name), true) = (type_name, name, good) {
                patches.push(ResourcePatch {
                    resource_type,
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

#[cfg(test)]
mod tests {
    use super::*;

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
