//! The patch guard: what an EnvoyPatch may change in a resource weft generated.
//!
//! Everything that decides who reaches what is the resource's *projection*: the resource's
//! Envoy JSON with the fields of the safe list taken out. A patched resource is accepted only
//! when its projection is the generated one's, so a patch changes nothing but safe fields;
//! a field not on a safe list (one Envoy adds tomorrow included) is inside the projection until
//! someone argues it safe. A refusal names the first path whose change breaks the projection
//! and the invariant that path belongs to (listener addresses, filter chains, TLS, the filters
//! on every path, what the application receives, where requests go, endpoints, the caller's
//! identity).
//!
//! There are two safe lists. Inbound resources (`inbound:<port>` listeners and clusters: the
//! access filter's own listener and the path to the application behind it) may change only
//! timeouts, buffer and header limits, access logs and response headers. Outbound resources
//! (the `outbound` listener and routes, the Services' clusters and TCP listeners) may also
//! change retries, load balancing, circuit breaking, outlier detection, health checks and the
//! headers added to requests: the caller's side decides none of the access decisions, which are
//! taken by the destination's inbound filter, but it decides where a request goes and whom it
//! trusts, which stay as generated. docs/patches.md lists both. Pure: JSON in, a verdict out.

use serde_json::{Map, Value};

/// A part of what decides who reaches what; a refused patch names the one it would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// Where a listener listens.
    Address,
    /// Which filter chain a connection takes.
    FilterChains,
    /// TLS contexts: certificates, what is required of the peer and SAN matchers.
    Tls,
    /// The filters a request or connection meets on every path it can take.
    Filters,
    /// What the application receives: normalised paths, no rewrite after the filter judged.
    Paths,
    /// Where requests go: virtual hosts, route matches, clusters, host rewrites, mirrors.
    Destinations,
    /// A cluster's endpoints and how they are found.
    Endpoints,
    /// How the caller's identity is read or forwarded.
    Identity,
    /// A field of an inbound resource that is not on the inbound safe list.
    InboundSafeList,
    /// A field of an outbound resource that is not on the outbound safe list.
    OutboundSafeList,
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Address => "where the listener listens",
            Self::FilterChains => {
                "which filter chain a connection takes and how chains are matched"
            }
            Self::Tls => "the TLS context and its validation (certificates, SAN matchers)",
            Self::Filters => {
                "the filters on every path a request can take (network and HTTP filters, \
                 per-route filter configuration, upgrades and CONNECT, direct responses)"
            }
            Self::Paths => {
                "what the application receives (path normalisation, rewrites, request headers \
                 added after the access filter judged the request)"
            }
            Self::Destinations => {
                "where each request goes (virtual hosts, route matches, clusters, host \
                 rewrites, mirrors, redirects)"
            }
            Self::Endpoints => "the cluster's endpoints and how they are found",
            Self::Identity => "how the caller's identity is read or forwarded",
            Self::InboundSafeList => "a field of an inbound resource not on the inbound safe list",
            Self::OutboundSafeList => "a field not on the outbound safe list",
        })
    }
}

/// Why a patched resource is refused: the first path where its projection differs from the
/// generated one's, and the invariant that path belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "changes {path}, which decides who reaches what: {invariant}; a patch may change only the safe fields docs/patches.md lists for {side} resources"
)]
pub struct Breach {
    /// The JSON pointer of the first difference.
    pub path: String,
    /// What it would change.
    pub invariant: Invariant,
    /// `inbound` or `outbound`.
    pub side: &'static str,
}

/// The kinds of resources a patch can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// A listener.
    Listener,
    /// A cluster.
    Cluster,
    /// A route configuration.
    Route,
}

/// Which side of the sidecar a resource serves: the access filter's side, or the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `inbound:<port>` listeners and clusters.
    Inbound,
    /// Everything else.
    Outbound,
}

impl Side {
    /// The side of the resource named `name` (weft's names: docs/controller.md).
    pub fn of(name: &str) -> Self {
        if name.starts_with("inbound:") {
            Self::Inbound
        } else {
            Self::Outbound
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// A safe field: a path pattern and, for some, the values it may take.
struct Safe {
    /// Segments separated by `/`: a key, `*` (every element or map value), and a key or `*`
    /// followed by `{Type}` when the value there must be a typed config of that message.
    pattern: String,
    allowed: fn(&Value) -> bool,
}

fn any(pattern: String) -> Safe {
    Safe {
        pattern,
        allowed: |_| true,
    }
}

/// The HTTP connection manager of a listener's filter chains.
const HCM: &str = "filter_chains/*/filters/*/typed_config{HttpConnectionManager}";
/// The TCP proxy of a listener's filter chains.
const TCP: &str = "filter_chains/*/filters/*/typed_config{TcpProxy}";

/// The listener fields both sides may change.
const LISTENER_SAFE: &[&str] = &[
    "per_connection_buffer_limit_bytes",
    "tcp_backlog_size",
    "access_log",
    "stat_prefix",
    "max_connections_to_accept_per_socket_event",
];

/// The connection manager fields both sides may change (relative to [`HCM`]'s typed config).
const HCM_SAFE: &[&str] = &[
    "stream_idle_timeout",
    "request_timeout",
    "request_headers_timeout",
    "drain_timeout",
    "delayed_close_timeout",
    "max_request_headers_kb",
    "common_http_protocol_options/idle_timeout",
    "common_http_protocol_options/max_connection_duration",
    "common_http_protocol_options/max_headers_count",
    "common_http_protocol_options/max_stream_duration",
    "common_http_protocol_options/max_requests_per_connection",
    "http2_protocol_options/max_concurrent_streams",
    "http2_protocol_options/initial_stream_window_size",
    "http2_protocol_options/initial_connection_window_size",
    "http2_protocol_options/connection_keepalive",
    "access_log",
    "access_log_options",
    "server_name",
    "server_header_transformation",
    "generate_request_id",
    "stat_prefix",
];

/// The connection manager fields only the outbound side may change.
const HCM_OUTBOUND_SAFE: &[&str] = &[
    "preserve_external_request_id",
    "always_set_request_id_in_response",
    "add_user_agent",
    "local_reply_config",
    "use_remote_address",
    "xff_num_trusted_hops",
    "skip_xff_append",
    "via",
    "stream_error_on_invalid_http_message",
];

/// The TCP proxy fields both sides may change.
const TCP_SAFE: &[&str] = &[
    "idle_timeout",
    "access_log",
    "access_log_options",
    "max_downstream_connection_duration",
    "stat_prefix",
];

/// Response headers, at a route configuration's, a virtual host's or a route's level.
const RESPONSE_HEADERS: &[&str] = &["response_headers_to_add", "response_headers_to_remove"];

/// Route action fields the inbound side may change.
const ACTION_INBOUND_SAFE: &[&str] = &["timeout", "idle_timeout", "max_stream_duration"];

/// Route action fields the outbound side may change.
const ACTION_OUTBOUND_SAFE: &[&str] = &[
    "timeout",
    "idle_timeout",
    "max_stream_duration",
    "retry_policy",
    "hedge_policy",
    "hash_policy",
    "rate_limits",
    "include_vh_rate_limits",
    "priority",
];

/// Virtual host fields (besides headers) the outbound side may change.
const VIRTUAL_HOST_OUTBOUND_SAFE: &[&str] = &[
    "request_headers_to_add",
    "retry_policy",
    "hedge_policy",
    "include_request_attempt_count",
    "include_attempt_count_in_response",
    "per_request_buffer_limit_bytes",
    "request_body_buffer_limit",
    "rate_limits",
];

/// Route fields (besides headers and the action) the outbound side may change.
const ROUTE_OUTBOUND_SAFE: &[&str] = &[
    "request_headers_to_add",
    "name",
    "decorator",
    "per_request_buffer_limit_bytes",
    "request_body_buffer_limit",
];

/// Cluster fields the inbound side may change.
const CLUSTER_INBOUND_SAFE: &[&str] = &[
    "connect_timeout",
    "per_connection_buffer_limit_bytes",
    "circuit_breakers",
    "upstream_connection_options",
];

/// Cluster fields only the outbound side may change.
const CLUSTER_OUTBOUND_SAFE: &[&str] = &[
    "outlier_detection",
    "lb_policy",
    "load_balancing_policy",
    "common_lb_config",
    "ring_hash_lb_config",
    "maglev_lb_config",
    "least_request_lb_config",
    "round_robin_lb_config",
    "close_connections_on_host_health_failure",
    "ignore_health_on_host_removal",
    "health_checks",
    "track_timeout_budgets",
    "track_cluster_stats",
    "preconnect_policy",
    "typed_extension_protocol_options/*{HttpProtocolOptions}/common_http_protocol_options",
    "typed_extension_protocol_options/*{HttpProtocolOptions}/explicit_http_config",
];

/// Whether `value` is an XFCC mode that cannot pass a client's header on: the application is
/// told the verified caller, or nothing.
fn sanitising(value: &Value) -> bool {
    matches!(value.as_str(), Some("SANITIZE" | "SANITIZE_SET"))
}

/// Route configuration fields (besides headers) only the outbound side may change.
const ROUTE_CONFIG_OUTBOUND_SAFE: &[&str] = &[
    "request_headers_to_add",
    "validate_clusters",
    "max_direct_response_body_size_bytes",
];

/// Adds `fields`, each under `prefix`, to `patterns`.
fn under(patterns: &mut Vec<String>, prefix: &str, fields: &[&str]) {
    patterns.extend(fields.iter().map(|field| format!("{prefix}{field}")));
}

/// The safe fields of a route configuration whose JSON starts at `prefix` (`""` for one of its
/// own, the connection manager's `route_config/` for one inline in a listener).
fn route_safe(patterns: &mut Vec<String>, prefix: &str, outbound: bool) {
    let host = format!("{prefix}virtual_hosts/*/");
    let route = format!("{host}routes/*/");
    for level in [prefix, &host, &route] {
        under(patterns, level, RESPONSE_HEADERS);
    }
    let actions = if outbound {
        ACTION_OUTBOUND_SAFE
    } else {
        ACTION_INBOUND_SAFE
    };
    under(patterns, &format!("{route}route/"), actions);
    if outbound {
        under(patterns, prefix, ROUTE_CONFIG_OUTBOUND_SAFE);
        under(patterns, &host, VIRTUAL_HOST_OUTBOUND_SAFE);
        under(patterns, &route, ROUTE_OUTBOUND_SAFE);
    }
}

/// The safe list of `kind` on `side`, as patterns relative to the resource.
fn safe_list(kind: ResourceKind, side: Side) -> Vec<Safe> {
    let outbound = side == Side::Outbound;
    let mut patterns = Vec::new();
    match kind {
        ResourceKind::Listener => {
            let manager = format!("{HCM}/");
            under(&mut patterns, "", LISTENER_SAFE);
            under(&mut patterns, &manager, HCM_SAFE);
            under(&mut patterns, &format!("{TCP}/"), TCP_SAFE);
            if outbound {
                under(&mut patterns, &manager, HCM_OUTBOUND_SAFE);
            }
            // Routes inline in the listener (the inbound ones) are judged as routes.
            route_safe(&mut patterns, &format!("{manager}route_config/"), outbound);
        }
        ResourceKind::Route => route_safe(&mut patterns, "", outbound),
        ResourceKind::Cluster => {
            under(&mut patterns, "", CLUSTER_INBOUND_SAFE);
            if outbound {
                under(&mut patterns, "", CLUSTER_OUTBOUND_SAFE);
            }
        }
    }
    let mut safe: Vec<Safe> = patterns.into_iter().map(any).collect();
    if kind == ResourceKind::Listener && !outbound {
        // The application may be told the verified caller (or nothing), never a client's
        // header passed on.
        safe.push(Safe {
            pattern: format!("{HCM}/forward_client_cert_details"),
            allowed: sanitising,
        });
        safe.push(any(format!("{HCM}/set_current_client_cert_details")));
    }
    safe
}

/// One segment of a pattern: a key (or `*`) and the type its value must have, if any.
fn segment(text: &str) -> (&str, Option<&str>) {
    match text.split_once('{') {
        Some((key, rest)) => (key, rest.strip_suffix('}')),
        None => (text, None),
    }
}

/// Whether `value` is a typed config (`@type`) of the message named `short` (its last part).
fn typed_as(value: &Value, short: &str) -> bool {
    value
        .get("@type")
        .and_then(Value::as_str)
        .and_then(|url| url.rsplit(['.', '/']).next())
        .is_some_and(|name| name == short)
}

/// Takes the fields `segments` name out of `value` when `allowed` accepts them, and an object
/// left with nothing (or only its `@type`) by that out of its parent; returns whether `value`
/// itself is now such an empty leftover.
fn prune(value: &mut Value, segments: &[&str], allowed: fn(&Value) -> bool) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        return false;
    };
    let (key, type_name) = segment(first);
    let fits = |child: &Value| type_name.is_none_or(|t| typed_as(child, t));
    let mut pruned_any = false;
    match value {
        Value::Object(object) => {
            let keys: Vec<String> = if key == "*" {
                object.keys().cloned().collect()
            } else {
                object
                    .contains_key(key)
                    .then(|| key.to_owned())
                    .into_iter()
                    .collect()
            };
            for key in keys {
                let Some(child) = object.get_mut(&key) else {
                    continue;
                };
                if !fits(child) {
                    continue;
                }
                let remove = if rest.is_empty() {
                    allowed(child)
                } else {
                    prune(child, rest, allowed)
                };
                if remove {
                    object.remove(&key);
                    pruned_any = true;
                }
            }
            pruned_any && is_leftover(object)
        }
        Value::Array(items) if key == "*" => {
            for item in items.iter_mut() {
                if fits(item) {
                    // An emptied element stays: removing it would shift the others.
                    let _ = prune(item, rest, allowed);
                }
            }
            false
        }
        _ => false,
    }
}

fn is_leftover(object: &Map<String, Value>) -> bool {
    object.is_empty() || (object.len() == 1 && object.contains_key("@type"))
}

/// The projection of a resource of `kind` on `side`: its Envoy JSON without the safe fields.
pub fn projection(kind: ResourceKind, side: Side, resource: &Value) -> Value {
    let mut projected = resource.clone();
    for safe in safe_list(kind, side) {
        let segments: Vec<&str> = safe.pattern.split('/').collect();
        prune(&mut projected, &segments, safe.allowed);
    }
    projected
}

/// Checks that `patched` changes nothing of `generated` (a resource of `kind` named `name`)
/// but safe fields.
///
/// # Errors
/// The first path where the projections differ and the invariant it belongs to.
pub fn check(
    kind: ResourceKind,
    name: &str,
    generated: &Value,
    patched: &Value,
) -> Result<(), Breach> {
    let side = Side::of(name);
    let before = projection(kind, side, generated);
    let after = projection(kind, side, patched);
    match first_difference(&before, &after, &mut Vec::new()) {
        None => Ok(()),
        Some(path) => Err(Breach {
            invariant: classify(kind, side, &path),
            path: pointer(&path),
            side: side.word(),
        }),
    }
}

/// The path of the first place where `a` and `b` differ (an array of another length differs
/// as a whole).
fn first_difference(a: &Value, b: &Value, path: &mut Vec<String>) -> Option<Vec<String>> {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                path.push(key.clone());
                let found = match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(x, y, path),
                    _ => Some(path.clone()),
                };
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (index, (x, y)) in a.iter().zip(b).enumerate() {
                path.push(index.to_string());
                let found = first_difference(x, y, path);
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ => (a != b).then(|| path.clone()),
    }
}

/// `path` as a JSON pointer (RFC 6901), as patches name paths.
fn pointer(path: &[String]) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.iter()
        .map(|key| format!("/{}", key.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Which invariant the projection's `path` belongs to: the first entry of the table whose
/// pattern `path` starts with (a route configuration inline in a listener is judged as a
/// route configuration); a path no entry names is outside the safe list of its side.
fn classify(kind: ResourceKind, side: Side, path: &[String]) -> Invariant {
    let unlisted = match side {
        Side::Inbound => Invariant::InboundSafeList,
        Side::Outbound => Invariant::OutboundSafeList,
    };
    let inline_routes = kind == ResourceKind::Listener
        && path.len() > 5
        && path[0] == "filter_chains"
        && path[2] == "filters"
        && path[4] == "typed_config"
        && path[5] == "route_config";
    let (table, path) = match kind {
        _ if inline_routes => (ROUTE_INVARIANTS, &path[6..]),
        ResourceKind::Listener => (LISTENER_INVARIANTS, path),
        ResourceKind::Route => (ROUTE_INVARIANTS, path),
        ResourceKind::Cluster => (CLUSTER_INVARIANTS, path),
    };
    let starts_with = |pattern: &str| {
        let segments: Vec<&str> = pattern.split('/').collect();
        segments.len() <= path.len()
            && segments
                .iter()
                .zip(path)
                .all(|(pattern, key)| *pattern == "*" || pattern == key)
    };
    match table.iter().find(|(pattern, _)| starts_with(pattern)) {
        Some((_, invariant)) => *invariant,
        // The inline route configuration as a whole (or a field no entry names): where
        // requests go.
        None if inline_routes => Invariant::Destinations,
        None => unlisted,
    }
}

/// Listener paths by invariant, the specific before the general.
const LISTENER_INVARIANTS: &[(&str, Invariant)] = &[
    ("address", Invariant::Address),
    ("additional_addresses", Invariant::Address),
    ("bind_to_port", Invariant::Address),
    ("enable_reuse_port", Invariant::Address),
    ("reuse_port", Invariant::Address),
    ("freebind", Invariant::Address),
    ("transparent", Invariant::Address),
    ("socket_options", Invariant::Address),
    ("internal_listener", Invariant::Address),
    ("api_listener", Invariant::Address),
    ("default_filter_chain", Invariant::FilterChains),
    ("filter_chain_matcher", Invariant::FilterChains),
    ("listener_filters", Invariant::FilterChains),
    ("use_original_dst", Invariant::FilterChains),
    (
        "filter_chains/*/filter_chain_match",
        Invariant::FilterChains,
    ),
    ("filter_chains/*/transport_socket", Invariant::Tls),
    (
        "filter_chains/*/transport_socket_connect_timeout",
        Invariant::Tls,
    ),
    (
        "filter_chains/*/filters/*/typed_config/forward_client_cert_details",
        Invariant::Identity,
    ),
    (
        "filter_chains/*/filters/*/typed_config/set_current_client_cert_details",
        Invariant::Identity,
    ),
    (
        "filter_chains/*/filters/*/typed_config/early_header_mutation_extensions",
        Invariant::Destinations,
    ),
    (
        "filter_chains/*/filters/*/typed_config/normalize_path",
        Invariant::Paths,
    ),
    (
        "filter_chains/*/filters/*/typed_config/merge_slashes",
        Invariant::Paths,
    ),
    (
        "filter_chains/*/filters/*/typed_config/path_with_escaped_slashes_action",
        Invariant::Paths,
    ),
    (
        "filter_chains/*/filters/*/typed_config/path_normalization_options",
        Invariant::Paths,
    ),
    (
        "filter_chains/*/filters/*/typed_config/strip_matching_host_port",
        Invariant::Destinations,
    ),
    (
        "filter_chains/*/filters/*/typed_config/strip_any_host_port",
        Invariant::Destinations,
    ),
    (
        "filter_chains/*/filters/*/typed_config/http_filters",
        Invariant::Filters,
    ),
    (
        "filter_chains/*/filters/*/typed_config/upgrade_configs",
        Invariant::Filters,
    ),
    (
        "filter_chains/*/filters/*/typed_config/http2_protocol_options/allow_connect",
        Invariant::Filters,
    ),
    (
        "filter_chains/*/filters/*/typed_config/http3_protocol_options",
        Invariant::Filters,
    ),
    (
        "filter_chains/*/filters/*/typed_config/codec_type",
        Invariant::Filters,
    ),
    (
        "filter_chains/*/filters/*/typed_config/scoped_routes",
        Invariant::Destinations,
    ),
    (
        "filter_chains/*/filters/*/typed_config/rds",
        Invariant::Destinations,
    ),
    (
        "filter_chains/*/filters/*/typed_config/cluster",
        Invariant::Destinations,
    ),
    (
        "filter_chains/*/filters/*/typed_config/weighted_clusters",
        Invariant::Destinations,
    ),
    (
        "filter_chains/*/filters/*/typed_config/tunneling_config",
        Invariant::Destinations,
    ),
    // route_config: classified as a route configuration (`classify`).
    (
        "filter_chains/*/filters/*/typed_config/@type",
        Invariant::Filters,
    ),
    ("filter_chains/*/filters/*/name", Invariant::Filters),
    (
        "filter_chains/*/filters/*/config_discovery",
        Invariant::Filters,
    ),
    ("filter_chains/*/filters", Invariant::Filters),
    ("filter_chains", Invariant::FilterChains),
];

/// Route configuration paths by invariant, the specific before the general.
const ROUTE_INVARIANTS: &[(&str, Invariant)] = &[
    (
        "virtual_hosts/*/routes/*/route/prefix_rewrite",
        Invariant::Paths,
    ),
    (
        "virtual_hosts/*/routes/*/route/regex_rewrite",
        Invariant::Paths,
    ),
    (
        "virtual_hosts/*/routes/*/route/path_rewrite_policy",
        Invariant::Paths,
    ),
    (
        "virtual_hosts/*/routes/*/route/path_rewrite",
        Invariant::Paths,
    ),
    (
        "virtual_hosts/*/routes/*/route/upgrade_configs",
        Invariant::Filters,
    ),
    (
        "virtual_hosts/*/routes/*/route/weighted_clusters/clusters/*/typed_per_filter_config",
        Invariant::Filters,
    ),
    ("virtual_hosts/*/routes/*/route", Invariant::Destinations),
    (
        "virtual_hosts/*/routes/*/typed_per_filter_config",
        Invariant::Filters,
    ),
    (
        "virtual_hosts/*/routes/*/direct_response",
        Invariant::Filters,
    ),
    ("virtual_hosts/*/routes/*/filter_action", Invariant::Filters),
    (
        "virtual_hosts/*/routes/*/non_forwarding_action",
        Invariant::Filters,
    ),
    (
        "virtual_hosts/*/routes/*/request_headers_to_add",
        Invariant::Paths,
    ),
    (
        "virtual_hosts/*/routes/*/request_headers_to_remove",
        Invariant::Paths,
    ),
    ("virtual_hosts/*/routes/*/match", Invariant::Destinations),
    ("virtual_hosts/*/routes/*/redirect", Invariant::Destinations),
    ("virtual_hosts/*/routes", Invariant::Destinations),
    (
        "virtual_hosts/*/typed_per_filter_config",
        Invariant::Filters,
    ),
    ("virtual_hosts/*/request_headers_to_add", Invariant::Paths),
    (
        "virtual_hosts/*/request_headers_to_remove",
        Invariant::Paths,
    ),
    ("virtual_hosts/*/domains", Invariant::Destinations),
    ("virtual_hosts/*/require_tls", Invariant::Destinations),
    ("virtual_hosts/*/matcher", Invariant::Destinations),
    (
        "virtual_hosts/*/request_mirror_policies",
        Invariant::Destinations,
    ),
    ("virtual_hosts", Invariant::Destinations),
    ("typed_per_filter_config", Invariant::Filters),
    ("request_headers_to_add", Invariant::Paths),
    ("request_headers_to_remove", Invariant::Paths),
    ("request_mirror_policies", Invariant::Destinations),
    ("ignore_port_in_host_matching", Invariant::Destinations),
    ("cluster_specifier_plugins", Invariant::Destinations),
    ("vhds", Invariant::Destinations),
];

/// Cluster paths by invariant.
const CLUSTER_INVARIANTS: &[(&str, Invariant)] = &[
    ("load_assignment", Invariant::Endpoints),
    ("type", Invariant::Endpoints),
    ("cluster_type", Invariant::Endpoints),
    ("eds_cluster_config", Invariant::Endpoints),
    ("lb_subset_config", Invariant::Endpoints),
    ("upstream_bind_config", Invariant::Endpoints),
    ("dns_lookup_family", Invariant::Endpoints),
    ("transport_socket", Invariant::Tls),
    ("transport_socket_matches", Invariant::Tls),
    ("typed_extension_protocol_options", Invariant::Filters),
    ("filters", Invariant::Filters),
];

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn listener() -> Value {
        json!({
            "name": "inbound:8080",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound:8080",
                        "normalize_path": true,
                        "http_filters": [{"name": "weft"}, {"name": "router"}],
                        "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "inbound:8080"}}]}]}
                    }
                }],
                "transport_socket": {"name": "tls"}
            }]
        })
    }

    fn patched(change: impl FnOnce(&mut Value)) -> Value {
        let mut value = listener();
        change(&mut value);
        value
    }

    fn verdict(value: &Value) -> Result<(), Breach> {
        check(ResourceKind::Listener, "inbound:8080", &listener(), value)
    }

    const MANAGER: &str = "/filter_chains/0/filters/0/typed_config";

    #[test]
    fn a_safe_field_passes_and_its_neighbours_do_not() {
        let timeout = patched(|v| {
            v.pointer_mut(MANAGER).unwrap()["stream_idle_timeout"] = json!("5s");
        });
        assert_eq!(verdict(&timeout), Ok(()));
        let normalisation = patched(|v| {
            v.pointer_mut(MANAGER).unwrap()["normalize_path"] = json!(false);
        });
        let breach = verdict(&normalisation).unwrap_err();
        assert_eq!(breach.invariant, Invariant::Paths);
        assert_eq!(breach.path, format!("{MANAGER}/normalize_path"));
    }

    #[test]
    fn a_safe_field_under_a_filter_of_another_type_is_not_safe() {
        // `stream_idle_timeout` is safe in a connection manager; in a typed config of another
        // type (the chain's filter swapped), the type itself differs first.
        let swapped = patched(|v| {
            let config = v.pointer_mut(MANAGER).unwrap();
            config["@type"] =
                json!("type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy");
        });
        let breach = verdict(&swapped).unwrap_err();
        assert_eq!(breach.invariant, Invariant::Filters, "{breach}");
    }

    #[test]
    fn a_per_filter_config_in_the_inline_routes_is_a_filter_change() {
        let disabled = patched(|v| {
            v.pointer_mut(&format!("{MANAGER}/route_config/virtual_hosts/0"))
                .unwrap()["typed_per_filter_config"] = json!({"weft.inbound:8080": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true}});
        });
        let breach = verdict(&disabled).unwrap_err();
        assert_eq!(breach.invariant, Invariant::Filters);
        assert_eq!(
            breach.path,
            format!("{MANAGER}/route_config/virtual_hosts/0/typed_per_filter_config")
        );
        assert!(breach.to_string().contains("inbound resources"), "{breach}");
    }

    #[test]
    fn the_forwarded_certificate_may_be_set_only_to_what_the_proxy_verified() {
        for (mode, safe) in [
            ("SANITIZE_SET", true),
            ("SANITIZE", true),
            ("APPEND_FORWARD", false),
            ("FORWARD_ONLY", false),
        ] {
            let value = patched(|v| {
                v.pointer_mut(MANAGER).unwrap()["forward_client_cert_details"] = json!(mode);
            });
            match verdict(&value) {
                Ok(()) => assert!(safe, "{mode}"),
                Err(breach) => {
                    assert!(!safe, "{mode}: {breach}");
                    assert_eq!(breach.invariant, Invariant::Identity);
                }
            }
        }
    }

    #[test]
    fn an_outbound_resource_has_the_wider_list() {
        let routes = json!({"name": "outbound", "virtual_hosts": [{"name": "a", "domains": ["a"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]});
        let mut retried = routes.clone();
        retried["virtual_hosts"][0]["routes"][0]["route"]["retry_policy"] =
            json!({"num_retries": 2});
        retried["virtual_hosts"][0]["request_headers_to_add"] =
            json!([{"header": {"key": "x", "value": "y"}}]);
        assert_eq!(
            check(ResourceKind::Route, "outbound", &routes, &retried),
            Ok(())
        );
        let mut elsewhere = routes.clone();
        elsewhere["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = json!("b");
        let breach = check(ResourceKind::Route, "outbound", &routes, &elsewhere).unwrap_err();
        assert_eq!(breach.invariant, Invariant::Destinations);
        let mut rewritten = routes.clone();
        rewritten["virtual_hosts"][0]["routes"][0]["route"]["prefix_rewrite"] = json!("/admin");
        let breach = check(ResourceKind::Route, "outbound", &routes, &rewritten).unwrap_err();
        assert_eq!(breach.invariant, Invariant::Paths);
    }

    #[test]
    fn a_typed_config_added_with_only_safe_fields_is_safe() {
        let cluster = json!({"name": "checkout.shop", "type": "EDS"});
        let mut options = cluster.clone();
        options["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": "5s"}}});
        assert_eq!(
            check(ResourceKind::Cluster, "checkout.shop", &cluster, &options),
            Ok(())
        );
        // The same on the application's cluster: not on the inbound list.
        let breach = check(ResourceKind::Cluster, "inbound:8080", &cluster, &options).unwrap_err();
        assert_eq!(breach.invariant, Invariant::Filters);
        // Upstream HTTP filters in the same options are not safe anywhere.
        options["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["http_filters"] = json!([{"name": "x"}]);
        let breach = check(ResourceKind::Cluster, "checkout.shop", &cluster, &options).unwrap_err();
        assert_eq!(breach.invariant, Invariant::Filters);
    }

    #[test]
    fn a_field_no_table_names_is_refused_as_unlisted() {
        let breach = verdict(&patched(|v| v["drain_type"] = json!("MODIFY_ONLY"))).unwrap_err();
        assert_eq!(breach.invariant, Invariant::InboundSafeList);
        assert_eq!(breach.path, "/drain_type");
    }
}
