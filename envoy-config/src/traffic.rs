//! A TrafficPolicy (weft's own resource, [`weft_policy::extension`]) in Envoy's native fields,
//! on the calling side: circuit breaking, outlier detection and the connect timeout on the
//! cluster of the Service called; retries and timeouts on its routes; the local rate limit and
//! fault injection as per-route configurations of Envoy's own filters, which every outbound
//! HTTP listener carries disabled and those configurations enable (so that a policy never
//! changes a listener, and a request no policy touches does not run them). Nothing here goes
//! into wasm. docs/traffic-policy.md maps each field to the Envoy field it sets.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers,
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, HttpProtocolOptions as CommonHttpProtocolOptions,
    RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    FilterConfig, HeaderMatcher, RetryPolicy, RouteAction, RouteMatch, header_matcher,
    retry_policy, route_match,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{
    FractionalPercent, HttpStatus, Percent, TokenBucket, fractional_percent,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use weft_policy::catalog::{Catalog, effective_policy};
use weft_policy::extension::{
    DEFAULT_RATE_LIMIT_STATUS, DEFAULT_RETRIABLE_STATUS_CODES, DEFAULT_RETRY_ON, Settings,
};
use weft_policy::model::{HttpMatch, Service};

use crate::clusters::{HTTP_PROTOCOL_OPTIONS, explicit_protocol};
use crate::render::any;
use crate::sources::duration;

/// Envoy's local rate limit filter.
pub const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";
/// Envoy's fault injection filter.
pub const FAULT: &str = "envoy.filters.http.fault";
/// The stats prefix of the rate limits (`<prefix>.http_local_rate_limit.rate_limited`).
pub const RATE_LIMIT_STATS: &str = "weft_rate_limit";

/// The policy in force for the calls to one Service port, as the sidecar builder applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTraffic {
    /// The TrafficPolicy it comes from (`namespace/name`).
    pub policy: String,
    /// Its settings for every call.
    pub settings: Settings,
    /// Requests matched more narrowly, first first: each with the matches that select them
    /// and the settings they get (the Service's, with the route's sections in their place).
    pub routes: Vec<RouteTraffic>,
}

/// Settings for the requests of some HTTPRouteGroup matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTraffic {
    /// Where it is written (`spec.routes[0]`).
    pub field: String,
    /// The matches (any of them).
    pub matches: Vec<HttpMatch>,
    /// The settings.
    pub settings: Settings,
}

/// `route` over `service`: each section the route gives replaces the Service's. The rate limit
/// and fault injection are the route's own only: the Service's are set once on its virtual host,
/// which a route without its own falls back to (so the Service's requests share one bucket).
pub fn overlay(service: &Settings, route: &Settings) -> Settings {
    Settings {
        connection_limits: service.connection_limits.clone(),
        outlier_detection: service.outlier_detection.clone(),
        retry: route.retry.clone().or_else(|| service.retry.clone()),
        timeouts: match (&route.timeouts, &service.timeouts) {
            (Some(route), Some(service)) => Some(weft_policy::extension::Timeouts {
                request: route.request.or(service.request),
                idle: route.idle.or(service.idle),
                connect: service.connect,
            }),
            (route, service) => route.clone().or_else(|| service.clone()),
        },
        rate_limit: route.rate_limit.clone(),
        fault_injection: route.fault_injection.clone(),
    }
}

fn count(value: Option<u32>) -> Option<UInt32Value> {
    value.map(|value| UInt32Value { value })
}

fn hundredths(percent: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: percent,
        denominator: fractional_percent::DenominatorType::Hundred as i32,
    }
}

fn always() -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(hundredths(100)),
        ..RuntimeFractionalPercent::default()
    }
}

fn proto_duration(value: Duration) -> envoy_types::pb::google::protobuf::Duration {
    duration(value)
}

/// Sets the cluster-level settings on `cluster`: connect timeout, circuit breakers (with the
/// retry budget), outlier detection, requests per connection.
pub fn apply_to_cluster(cluster: &mut Cluster, settings: &Settings) {
    if let Some(connect) = settings.timeouts.as_ref().and_then(|t| t.connect) {
        cluster.connect_timeout = Some(proto_duration(connect));
    }
    let limits = settings.connection_limits.as_ref();
    let budget = settings.retry.as_ref().and_then(|r| r.budget.as_ref());
    if limits.is_some() || budget.is_some() {
        let thresholds = circuit_breakers::Thresholds {
            max_connections: count(limits.and_then(|l| l.max_connections)),
            max_pending_requests: count(limits.and_then(|l| l.max_pending_requests)),
            max_requests: count(limits.and_then(|l| l.max_requests)),
            max_retries: count(limits.and_then(|l| l.max_retries)),
            retry_budget: budget.map(|budget| circuit_breakers::thresholds::RetryBudget {
                budget_percent: budget.percent.map(|p| Percent {
                    value: f64::from(p),
                }),
                min_retry_concurrency: count(budget.min_concurrency),
                ..circuit_breakers::thresholds::RetryBudget::default()
            }),
            ..circuit_breakers::Thresholds::default()
        };
        cluster.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![thresholds],
            ..CircuitBreakers::default()
        });
    }
    if let Some(per_connection) = limits.and_then(|l| l.max_requests_per_connection) {
        let options = HttpProtocolOptions {
            common_http_protocol_options: Some(CommonHttpProtocolOptions {
                max_requests_per_connection: count(Some(per_connection)),
                ..CommonHttpProtocolOptions::default()
            }),
            ..explicit_protocol(
                http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                    Http1ProtocolOptions::default(),
                ),
            )
        };
        cluster
            .typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.to_owned(), any(&options));
    }
    if let Some(outlier) = &settings.outlier_detection {
        cluster.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: count(outlier.consecutive_5xx),
            consecutive_gateway_failure: count(outlier.consecutive_gateway_errors),
            // Envoy counts gateway errors but does not eject on them unless told to.
            enforcing_consecutive_gateway_failure: outlier
                .consecutive_gateway_errors
                .map(|_| UInt32Value { value: 100 }),
            interval: outlier.interval.map(proto_duration),
            base_ejection_time: outlier.base_ejection_time.map(proto_duration),
            max_ejection_percent: count(outlier.max_ejection_percent),
            ..OutlierDetection::default()
        });
    }
}

/// The retry policy of `settings` (with weft's default conditions when it names none).
pub fn retry_policy(settings: &Settings) -> Option<RetryPolicy> {
    let retry = settings.retry.as_ref()?;
    let conditions: Vec<&str> = if retry.retry_on.is_empty() {
        DEFAULT_RETRY_ON.to_vec()
    } else {
        retry.retry_on.iter().map(String::as_str).collect()
    };
    let codes = if retry.retriable_status_codes.is_empty()
        && conditions.contains(&"retriable-status-codes")
    {
        DEFAULT_RETRIABLE_STATUS_CODES.to_vec()
    } else {
        retry.retriable_status_codes.clone()
    };
    Some(RetryPolicy {
        retry_on: conditions.join(","),
        num_retries: count(Some(retry.attempts.unwrap_or(1))),
        per_try_timeout: retry.per_try_timeout.map(proto_duration),
        retriable_status_codes: codes,
        retry_back_off: retry
            .backoff
            .as_ref()
            .map(|backoff| retry_policy::RetryBackOff {
                base_interval: Some(proto_duration(backoff.base_interval)),
                max_interval: backoff.max_interval.map(proto_duration),
            }),
        ..RetryPolicy::default()
    })
}

/// Sets the route-level settings on a route's action: retries and timeouts.
pub fn apply_to_action(action: &mut RouteAction, settings: &Settings) {
    if let Some(policy) = retry_policy(settings) {
        action.retry_policy = Some(policy);
    }
    if let Some(timeouts) = &settings.timeouts {
        if let Some(request) = timeouts.request {
            action.timeout = Some(proto_duration(request));
        }
        if let Some(idle) = timeouts.idle {
            action.idle_timeout = Some(proto_duration(idle));
        }
    }
}

/// The per-route configurations of Envoy's filters that `settings` asks for: the rate limit
/// and fault injection.
pub fn per_filter_config(settings: &Settings) -> HashMap<String, Any> {
    let mut configs = HashMap::new();
    if let Some(limit) = &settings.rate_limit {
        let config = LocalRateLimit {
            stat_prefix: RATE_LIMIT_STATS.to_owned(),
            status: Some(HttpStatus {
                code: i32::from(limit.status.unwrap_or(DEFAULT_RATE_LIMIT_STATUS)),
            }),
            token_bucket: Some(TokenBucket {
                max_tokens: limit.burst.unwrap_or(limit.requests),
                tokens_per_fill: count(Some(limit.requests)),
                fill_interval: Some(proto_duration(limit.interval)),
            }),
            filter_enabled: Some(always()),
            filter_enforced: Some(always()),
            ..LocalRateLimit::default()
        };
        configs.insert(LOCAL_RATE_LIMIT.to_owned(), enabling(any(&config)));
    }
    if let Some(fault) = &settings.fault_injection {
        let config = HttpFault {
            delay: fault.delay.as_ref().map(|delay| FaultDelay {
                fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(
                    proto_duration(delay.duration),
                )),
                percentage: Some(hundredths(delay.percent)),
            }),
            abort: fault.abort.as_ref().map(|abort| FaultAbort {
                error_type: Some(fault_abort::ErrorType::HttpStatus(u32::from(abort.status))),
                percentage: Some(hundredths(abort.percent)),
                ..FaultAbort::default()
            }),
            ..HttpFault::default()
        };
        configs.insert(FAULT.to_owned(), enabling(any(&config)));
    }
    configs
}

/// A filter's per-route `config` that also enables the filter, which the outbound listener
/// carries disabled ([`outbound_filters`]).
fn enabling(config: Any) -> Any {
    any(&FilterConfig {
        config: Some(config),
        is_optional: false,
        disabled: false,
    })
}

/// The HTTP filters every outbound listener carries after weft's, disabled until a route's (or
/// virtual host's) configuration enables and configures them ([`per_filter_config`]): fault
/// injection, then the local rate limit (so that a delayed request still takes a token, and
/// weft's metrics see both the faults and the 429s). Envoy does not create a disabled filter
/// for a request whose route does not enable it, so a request no TrafficPolicy touches does not
/// pay for them, and a policy still changes routes only, never the listener.
pub fn outbound_filters() -> Vec<HttpFilter> {
    let limit = LocalRateLimit {
        stat_prefix: RATE_LIMIT_STATS.to_owned(),
        ..LocalRateLimit::default()
    };
    vec![
        HttpFilter {
            name: FAULT.to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                &HttpFault::default(),
            ))),
            disabled: true,
            ..HttpFilter::default()
        },
        HttpFilter {
            name: LOCAL_RATE_LIMIT.to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&limit))),
            disabled: true,
            ..HttpFilter::default()
        },
    ]
}

fn regex(pattern: String) -> RegexMatcher {
    RegexMatcher {
        regex: pattern,
        ..RegexMatcher::default()
    }
}

/// An HTTPRouteGroup match as Envoy's route match, with SMI's meaning: the path regex anchored
/// at the start only, any listed method (`*`: any), every header's regex on the whole value.
pub fn route_match(m: &HttpMatch) -> RouteMatch {
    let path = match &m.path_regex {
        Some(pattern) => route_match::PathSpecifier::SafeRegex(regex(format!("(?:{pattern}).*"))),
        None => route_match::PathSpecifier::Prefix("/".to_owned()),
    };
    let mut headers = Vec::new();
    if !m.methods.is_empty() && !m.methods.iter().any(|method| method == "*") {
        headers.push(header_regex(":method", &m.methods.join("|")));
    }
    for (name, pattern) in &m.headers {
        headers.push(header_regex(name, pattern));
    }
    RouteMatch {
        path_specifier: Some(path),
        headers,
        ..RouteMatch::default()
    }
}

fn header_regex(name: &str, pattern: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(format!(
                    "(?:{pattern})"
                )))),
                ..StringMatcher::default()
            },
        )),
        ..HeaderMatcher::default()
    }
}

/// The policy in force for the calls to `port` of `service` ([`effective_policy`]'s rule),
/// with its routes resolved to the HTTPRouteGroup matches they name (a route naming a group or
/// match that does not exist selects nothing; `weft check` reports it).
pub fn service_traffic(catalog: &Catalog, service: &Service, port: u16) -> Option<ServiceTraffic> {
    let policy = effective_policy(catalog, service, port)?;
    let routes = policy
        .routes
        .iter()
        .map(|route| RouteTraffic {
            field: format!("spec.routes[{}]", route.position),
            matches: catalog
                .http_route_group(&policy.meta.namespace, &route.group)
                .map(|group| {
                    group
                        .matches
                        .iter()
                        .filter(|m| route.match_name.as_ref().is_none_or(|name| &m.name == name))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            settings: overlay(&policy.settings, &route.settings),
        })
        .collect();
    Some(ServiceTraffic {
        policy: format!("{}/{}", policy.meta.namespace, policy.meta.name),
        settings: policy.settings.clone(),
        routes,
    })
}
