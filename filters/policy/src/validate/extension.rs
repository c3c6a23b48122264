//! The cross-object checks of weft's own resources ([`crate::extension`]).

use crate::catalog::{Catalog, effective_policy};
use crate::diagnostic::{Diagnostic, Severity};
use crate::extension::*;
use crate::model::{AppProtocol, Kind, Meta};

fn report(
    out: &mut Vec<Diagnostic>,
    meta: &Meta,
    kind: Kind,
    field: &str,
    severity: Severity,
    error: &ExtensionError,
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
                &ExtensionError::Duplicate(Kind::EnvoyPatch),
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for policy in &catalog.traffic_policies {
        let meta = &policy.meta;
        let error = |out: &mut Vec<Diagnostic>, field: &str, error: ExtensionError| {
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
            error(out, "", ExtensionError::Duplicate(Kind::TrafficPolicy));
            continue;
        }
        let Some(service) = catalog.service(&meta.namespace, &policy.target.service) else {
            report(
                out,
                meta,
                Kind::TrafficPolicy,
                "spec.targetRef.name",
                Severity::Warning,
                &ExtensionError::NoService(policy.target.service.clone()),
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
                        ExtensionError::NoPort {
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
                        ExtensionError::NotTheHttpPort {
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
                                ExtensionError::HttpOnly {
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
                        ExtensionError::NoHttpPort {
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
                    ExtensionError::NoRouteGroup(route.group.clone()),
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
                    ExtensionError::NoRouteMatch {
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
                    &ExtensionError::Conflict {
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
