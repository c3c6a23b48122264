//! `weft describe service NS/NAME`: the Envoy settings every calling proxy gets for a Service,
//! read off the resources the controller would generate (the same builder), each field with
//! where it came from: weft's own defaults, or a TrafficPolicy's field.

use std::fmt::Write as _;

use serde_json::Value;
use weft_envoy_config::mesh::{OutboundService, Protocol, Sidecar};
use weft_envoy_config::pb::envoy::config::cluster::v3::Cluster;
use weft_envoy_config::pb::envoy::config::route::v3::{Route, VirtualHost, route};
use weft_envoy_config::render::to_json;
use weft_policy::catalog::Catalog;

/// Why a Service cannot be described.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// Not `namespace/name`.
    #[error("{0:?} is not namespace/name, such as shop/checkout")]
    Name(String),
    /// No such Service.
    #[error("no Service {0} in the manifests")]
    NoService(String),
    /// A resource that cannot be shown.
    #[error("{0}")]
    Render(#[from] weft_envoy_config::render::RenderError),
}

/// Where a setting of a generated resource comes from, by the start of its Envoy field path.
const SOURCES: &[(&str, &str)] = &[
    ("connect_timeout", "timeouts.connect"),
    (
        "circuit_breakers.thresholds[0].retry_budget",
        "retry.budget",
    ),
    ("circuit_breakers", "connectionLimits"),
    ("outlier_detection", "outlierDetection"),
    (
        "typed_extension_protocol_options",
        "connectionLimits.maxRequestsPerConnection",
    ),
    ("route.retry_policy", "retry"),
    ("route.timeout", "timeouts.request"),
    ("route.idle_timeout", "timeouts.idle"),
    (
        "typed_per_filter_config[envoy.filters.http.local_ratelimit]",
        "rateLimit",
    ),
    (
        "typed_per_filter_config[envoy.filters.http.fault]",
        "faultInjection",
    ),
];

/// The fields of a cluster and of a route that TrafficPolicies set.
const CLUSTER_FIELDS: &[&str] = &[
    "connect_timeout",
    "circuit_breakers",
    "outlier_detection",
    "typed_extension_protocol_options",
];
const ROUTE_FIELDS: &[&str] = &[
    "route.retry_policy",
    "route.timeout",
    "route.idle_timeout",
    "typed_per_filter_config",
];

fn leaves(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let path = if key.contains('.') || key.contains(':') {
                    format!("{path}[{key}]")
                } else if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                leaves(inner, &path, out);
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                leaves(inner, &format!("{path}[{i}]"), out);
            }
        }
        other => out.push((path.to_owned(), other.to_string())),
    }
}

/// The leaves of `value` under `fields`, each with its source: weft when `without` (the same
/// resource built with no policy) has it alike, else the policy's field.
fn settings(
    value: &Value,
    without: &Value,
    fields: &[&str],
    policy: Option<&str>,
    route: Option<(&str, &Value)>,
    out: &mut String,
) {
    let (mut with_leaves, mut without_leaves, mut service_leaves) =
        (Vec::new(), Vec::new(), Vec::new());
    leaves(value, "", &mut with_leaves);
    leaves(without, "", &mut without_leaves);
    if let Some((_, service_route)) = route {
        leaves(service_route, "", &mut service_leaves);
    }
    let wanted = |path: &str| fields.iter().any(|field| path.starts_with(field));
    let rows: Vec<(String, String, String)> = with_leaves
        .into_iter()
        .filter(|(path, _)| wanted(path) && !path.ends_with("@type"))
        .map(|(path, shown)| {
            let source = if without_leaves.contains(&(path.clone(), shown.clone())) {
                "weft".to_owned()
            } else {
                let field = SOURCES
                    .iter()
                    .find(|(prefix, _)| path.starts_with(prefix))
                    .map_or("", |(_, field)| field);
                // A route's setting alike on the Service's own route is the Service's.
                let at = match route {
                    Some((field, _))
                        if !service_leaves.contains(&(path.clone(), shown.clone())) =>
                    {
                        format!("{field}.")
                    }
                    _ => String::new(),
                };
                format!("TrafficPolicy {} {at}{field}", policy.unwrap_or("?"))
            };
            (path, shown, source)
        })
        .collect();
    let width = rows
        .iter()
        .map(|(path, shown, _)| path.len() + shown.len() + 2)
        .max()
        .unwrap_or(0);
    for (path, shown, source) in rows {
        let setting = format!("{path}: {shown}");
        let _ = writeln!(out, "    {setting:<width$}  {source}");
    }
}

fn built(service: &OutboundService) -> (Cluster, Option<VirtualHost>) {
    let sidecar = Sidecar {
        pod_ip: std::net::Ipv4Addr::LOCALHOST,
        app_ip: std::net::Ipv4Addr::LOCALHOST,
        module: weft_envoy_config::filters::Code::File("weft.wasm".to_owned()),
        certificate_secret: String::new(),
        trust_secret: String::new(),
        inbound: Vec::new(),
        services: vec![service.clone()],
    };
    let resources = sidecar.resources();
    let cluster = resources.clusters.into_iter().next().unwrap_or_default();
    let host = resources.routes.into_iter().next().and_then(|routes| {
        routes
            .virtual_hosts
            .into_iter()
            .find(|h| h.name == service.cluster)
    });
    (cluster, host)
}

/// The routes that send to the Service's cluster (each has a twin for split routing, with the
/// same settings).
fn direct_routes(host: &VirtualHost) -> Vec<&Route> {
    host.routes
        .iter()
        .filter(|r| {
            matches!(&r.action, Some(route::Action::Route(action))
                if matches!(action.cluster_specifier,
                    Some(weft_envoy_config::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(_))))
        })
        .collect()
}

/// `weft describe service`: what every calling proxy gets for `service` (`namespace/name`).
///
/// # Errors
/// When the name is not `namespace/name`, there is no such Service, or a resource cannot be
/// rendered.
pub fn describe_service(catalog: &Catalog, service: &str) -> Result<String, DescribeError> {
    let (namespace, name) = service
        .split_once('/')
        .ok_or_else(|| DescribeError::Name(service.to_owned()))?;
    catalog
        .service(namespace, name)
        .ok_or_else(|| DescribeError::NoService(service.to_owned()))?;
    let mut out = format!("Service {service}, as every calling proxy reaches it\n");
    let policies: Vec<_> = catalog
        .traffic_policies
        .iter()
        .filter(|p| p.meta.namespace == namespace && p.target.service == name)
        .collect();
    for split in catalog
        .traffic_splits
        .iter()
        .filter(|s| s.meta.namespace == namespace && s.service == name)
    {
        let backends: Vec<String> = split
            .backends
            .iter()
            .map(|b| format!("{} ({})", b.service, b.weight))
            .collect();
        let _ = writeln!(
            out,
            "  TrafficSplit {namespace}/{}: requests go to {}; each backend's cluster settings apply there (weft describe service {namespace}/BACKEND)",
            split.meta.name,
            backends.join(", ")
        );
    }
    let services = weft_controller::mesh::outbound_services(
        catalog,
        weft_policy::bundle::DEFAULT_TRUST_DOMAIN,
        namespace,
    );
    let prefix = format!("{name}.{namespace}");
    for outbound in services
        .iter()
        .filter(|s| s.cluster == prefix || s.cluster.starts_with(&format!("{prefix}:")))
    {
        let protocol = match outbound.protocol {
            Protocol::Http => "HTTP",
            Protocol::Tcp => "TCP",
        };
        let _ = writeln!(
            out,
            "\n  port {} ({protocol}): cluster {}",
            outbound.port, outbound.cluster
        );
        let policy = outbound.traffic.as_ref().map(|t| t.policy.clone());
        match &policy {
            Some(policy) => {
                let origin = policies
                    .iter()
                    .find(|p| format!("{}/{}", p.meta.namespace, p.meta.name) == *policy)
                    .and_then(|p| p.meta.origin.as_ref())
                    .map(|o| format!(" ({}:{})", o.file, o.line))
                    .unwrap_or_default();
                let _ = writeln!(out, "  TrafficPolicy {policy}{origin}");
                for loser in policies.iter().filter(|p| {
                    format!("{}/{}", p.meta.namespace, p.meta.name) != *policy
                        && p.target.port.is_none_or(|port| port == outbound.port)
                }) {
                    let _ = writeln!(
                        out,
                        "  not applied: TrafficPolicy {}/{} (policies on one target do not merge; the port's own, then the first by name, wins)",
                        loser.meta.namespace, loser.meta.name
                    );
                }
            }
            None => {
                let _ = writeln!(out, "  no TrafficPolicy: weft's and Envoy's defaults");
            }
        }
        let mut bare = outbound.clone();
        bare.traffic = None;
        let (cluster, host) = built(outbound);
        let (bare_cluster, bare_host) = built(&bare);
        let _ = writeln!(out, "  Cluster {}", cluster.name);
        settings(
            &to_json(&cluster)?,
            &to_json(&bare_cluster)?,
            CLUSTER_FIELDS,
            policy.as_deref(),
            None,
            &mut out,
        );
        let (Some(host), Some(bare_host)) = (host, bare_host) else {
            continue;
        };
        let host_json = to_json(&host)?;
        let bare_host_json = to_json(&bare_host)?;
        let _ = writeln!(
            out,
            "  Virtual host {} (route configuration outbound)",
            host.name
        );
        settings(
            &host_json,
            &bare_host_json,
            &["typed_per_filter_config"],
            policy.as_deref(),
            None,
            &mut out,
        );
        let bare_route = direct_routes(&bare_host)
            .first()
            .map(|r| to_json(*r))
            .transpose()?
            .unwrap_or_default();
        let mut labels = Vec::new();
        if let Some(traffic) = &outbound.traffic {
            for rule in &traffic.routes {
                for m in &rule.matches {
                    labels.push((
                        format!("requests matching {} ({})", m.name, rule.field),
                        Some(rule.field.clone()),
                    ));
                }
            }
        }
        labels.push(("every other request".to_owned(), None));
        let routes = direct_routes(&host);
        let service_route = routes
            .last()
            .map(|r| to_json(*r))
            .transpose()?
            .unwrap_or_default();
        for (route, (label, field)) in routes.into_iter().zip(labels) {
            let _ = writeln!(out, "  Route: {label}");
            settings(
                &to_json(route)?,
                &bare_route,
                ROUTE_FIELDS,
                policy.as_deref(),
                field.as_deref().map(|field| (field, &service_route)),
                &mut out,
            );
        }
    }
    out.push_str("\nFields not listed are Envoy's defaults (docs/traffic-policy.md lists them).\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let (catalog, problems) = weft_policy::check([
            (
                "services.yaml",
                include_str!("../../examples/mesh/services.yaml"),
            ),
            ("split.yaml", include_str!("../../examples/mesh/split.yaml")),
            (
                "checkout.yaml",
                include_str!("../../examples/policies/checkout.yaml"),
            ),
        ]);
        assert!(problems.iter().all(|p| !p.is_error()), "{problems:#?}");
        catalog
    }

    #[test]
    fn each_setting_is_shown_with_the_policy_field_it_comes_from() {
        let text = describe_service(&catalog(), "shop/checkout").unwrap();
        let line = |needle: &str| {
            text.lines()
                .find(|line| line.trim_start().starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            line("circuit_breakers.thresholds[0].max_connections"),
            "circuit_breakers.thresholds[0].max_connections: 100 TrafficPolicy shop/checkout connectionLimits"
        );
        assert_eq!(line("connect_timeout"), "connect_timeout: \"1s\" weft");
        assert_eq!(
            line("route.timeout: \"10s\""),
            "route.timeout: \"10s\" TrafficPolicy shop/checkout spec.routes[0].timeouts.request"
        );
        assert_eq!(
            line("route.timeout: \"2s\""),
            "route.timeout: \"2s\" TrafficPolicy shop/checkout timeouts.request"
        );
        assert!(text.contains(
            "TrafficSplit shop/checkout-canary: requests go to checkout-v1 (90), checkout-v2 (10)"
        ));
        assert!(
            text.contains("TrafficPolicy shop/checkout (checkout.yaml:13)"),
            "{text}"
        );
    }

    #[test]
    fn a_service_without_policy_shows_weft_defaults_and_a_missing_one_is_an_error() {
        let text = describe_service(&catalog(), "shop/db").unwrap();
        assert!(text.contains("no TrafficPolicy"), "{text}");
        assert!(text.contains("connect_timeout: \"1s\"  weft"), "{text}");
        assert_eq!(
            describe_service(&catalog(), "shop/nope")
                .unwrap_err()
                .to_string(),
            "no Service shop/nope in the manifests"
        );
        assert!(describe_service(&catalog(), "checkout").is_err());
    }
}
