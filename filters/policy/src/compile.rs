//! Compilation: from a validated [`Catalog`] to the plugin configuration of one workload's
//! inbound listener (access control and metrics) or outbound listener (split routing and
//! metrics). The output depends only on the catalog's content, not on the order objects were
//! read in.

use std::collections::BTreeMap;

use crate::bundle::{
    AccessPolicy, Allows, Direction, Grant, HttpMatchSpec, Identity, MetricsConfig, ServiceHosts,
    SplitTable, WeightedBackend,
};
use crate::catalog::Catalog;
use crate::config::PluginConfig;
use crate::diagnostic::Diagnostic;
use crate::model::{HttpRouteGroup, Kind, L4Protocol, TrafficSplit};
use crate::validate::{SERVICE_ACCOUNT, short_service_name};

/// Why a configuration could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// The manifests have errors; nothing is compiled from a broken set.
    #[error("the manifests have {0} error(s); run `weft check` and fix them first")]
    InvalidManifests(usize),
}

/// Which listener of the workload the configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Server side: access control for traffic to this workload.
    Inbound,
    /// Client side: split routing for traffic from this workload.
    Outbound,
}

/// Cluster-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// Kubernetes cluster domain of service host names.
    pub cluster_domain: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            trust_domain: crate::bundle::DEFAULT_TRUST_DOMAIN.to_owned(),
            cluster_domain: "cluster.local".to_owned(),
        }
    }
}

/// Compiles the plugin configuration of `identity`'s `side` listener.
///
/// # Errors
/// [`CompileError::InvalidManifests`] when `diagnostics` (from [`crate::check`]) holds errors.
pub fn compile(
    catalog: &Catalog,
    diagnostics: &[Diagnostic],
    identity: &Identity,
    side: Side,
    options: &Options,
) -> Result<PluginConfig, CompileError> {
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        return Err(CompileError::InvalidManifests(errors));
    }
    let mut matches = MatchTable::default();
    let mut config = PluginConfig {
        identity: Some(identity.clone()),
        ..PluginConfig::default()
    };
    let direction = match side {
        Side::Inbound => {
            config.access = Some(access_policy(catalog, identity, options, &mut matches));
            Direction::Inbound
        }
        Side::Outbound => {
            config.splits = catalog
                .traffic_splits
                .iter()
                .map(|split| split_table(catalog, split, identity, options, &mut matches))
                .collect();
            Direction::Outbound
        }
    };
    config.http_matches = matches.specs;
    config.metrics = Some(MetricsConfig {
        direction,
        trust_domain: options.trust_domain.clone(),
        // Inbound, the destination is the workload itself (`service`, set by the caller of
        // compile when it knows the workload's Service), never a Host a caller sends.
        services: match side {
            Side::Outbound => known_services(catalog, identity, options),
            Side::Inbound => Vec::new(),
        },
        service: None,
    });
    Ok(config)
}

/// The host names that address service `name` of `namespace` from a workload in
/// `client_namespace`: `name.namespace`, `.svc` and the full cluster domain, and the short
/// `name` only from inside its namespace, where it resolves to this service.
pub fn service_hosts(
    name: &str,
    namespace: &str,
    client_namespace: &str,
    options: &Options,
) -> Vec<String> {
    let mut hosts = vec![
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.{}", options.cluster_domain),
    ];
    if client_namespace == namespace {
        hosts.insert(0, name.to_owned());
    }
    hosts
}

/// Every service the manifests name, as Service objects or as a TrafficSplit's root or
/// backends, with its host names: the destinations metrics may label, sorted by service.
fn known_services(catalog: &Catalog, identity: &Identity, options: &Options) -> Vec<ServiceHosts> {
    let mut names: std::collections::BTreeSet<(String, String)> = catalog
        .services
        .iter()
        .map(|service| (service.meta.namespace.clone(), service.meta.name.clone()))
        .collect();
    for split in &catalog.traffic_splits {
        let namespace = split.meta.namespace.as_str();
        let named = std::iter::once(split.service.as_str())
            .chain(split.backends.iter().map(|b| b.service.as_str()));
        for service in named {
            names.insert((
                namespace.to_owned(),
                short_service_name(service, namespace).to_owned(),
            ));
        }
    }
    let mut services: Vec<ServiceHosts> = names
        .into_iter()
        .map(|(namespace, name)| ServiceHosts {
            service: format!("{name}.{namespace}"),
            hosts: service_hosts(&name, &namespace, &identity.namespace, options),
        })
        .collect();
    services.sort_by(|a, b| a.service.cmp(&b.service));
    services
}

/// HTTP matches, each stored once however many rules name it.
#[derive(Default)]
struct MatchTable {
    specs: Vec<HttpMatchSpec>,
    index: BTreeMap<String, u32>,
}

impl MatchTable {
    /// Indexes of `group`'s matches named in `names` (all of them when `names` is `None` or
    /// empty, as SMI says for an omitted `matches`).
    fn intern(&mut self, group: &HttpRouteGroup, names: Option<&[String]>) -> Vec<u32> {
        let selected = group
            .matches
            .iter()
            .filter(|m| names.is_none_or(|names| names.is_empty() || names.contains(&m.name)));
        selected
            .map(|m| {
                let name = format!("{}/{}/{}", group.meta.namespace, group.meta.name, m.name);
                if let Some(index) = self.index.get(&name) {
                    return *index;
                }
                let index = u32::try_from(self.specs.len()).unwrap_or(u32::MAX);
                let any_method =
                    m.methods.is_empty() || m.methods.iter().any(|method| method == "*");
                self.specs.push(HttpMatchSpec {
                    name: name.clone(),
                    path_regex: m.path_regex.clone(),
                    methods: if any_method {
                        Vec::new()
                    } else {
                        m.methods.clone()
                    },
                    headers: m.headers.clone(),
                });
                self.index.insert(name, index);
                index
            })
            .collect()
    }
}

fn access_policy(
    catalog: &Catalog,
    identity: &Identity,
    options: &Options,
    matches: &mut MatchTable,
) -> AccessPolicy {
    let mut policy = AccessPolicy {
        trust_domain: options.trust_domain.clone(),
        ..AccessPolicy::default()
    };
    let protects_identity = |namespace: &str, destination: &crate::model::Subject| {
        destination.kind == SERVICE_ACCOUNT
            && destination.name == identity.service_account
            && destination.namespace.as_deref().unwrap_or(namespace) == identity.namespace
    };
    for target in &catalog.traffic_targets {
        let namespace = target.meta.namespace.as_str();
        if !target
            .destination
            .as_ref()
            .is_some_and(|d| protects_identity(namespace, d))
        {
            continue;
        }
        let mut grants = Vec::new();
        for (rule_index, rule) in target.rules.iter().enumerate() {
            let route = format!("{namespace}/{}", rule.name);
            let allows =
                match Kind::of_rule(&rule.kind) {
                    Some(Kind::HttpRouteGroup) => catalog
                        .http_route_group(namespace, &rule.name)
                        .map(|group| Allows::Http {
                            route_group: route,
                            matches: matches.intern(group, rule.matches.as_deref()),
                        }),
                    Some(Kind::TcpRoute) => catalog
                        .port_route(L4Protocol::Tcp, namespace, &rule.name)
                        .map(|r| Allows::Tcp {
                            route,
                            ports: r.ports.clone(),
                        }),
                    Some(Kind::UdpRoute) => catalog
                        .port_route(L4Protocol::Udp, namespace, &rule.name)
                        .map(|r| Allows::Udp {
                            route,
                            ports: r.ports.clone(),
                        }),
                    _ => None,
                };
            if let Some(allows) = allows {
                grants.push(u32::try_from(policy.grants.len()).unwrap_or(u32::MAX));
                policy.grants.push(Grant {
                    traffic_target: format!("{namespace}/{}", target.meta.name),
                    rule: u32::try_from(rule_index).unwrap_or(u32::MAX),
                    port: target.destination_port,
                    allows,
                });
            }
        }
        for source in target.sources.iter().filter(|s| s.kind == SERVICE_ACCOUNT) {
            let source = Identity {
                namespace: source
                    .namespace
                    .clone()
                    .unwrap_or_else(|| namespace.to_owned()),
                service_account: source.name.clone(),
            };
            let entry = policy
                .sources
                .entry(source.spiffe_id(&options.trust_domain))
                .or_default();
            entry.extend(&grants);
            entry.sort_unstable();
            entry.dedup();
        }
    }
    policy
}

fn split_table(
    catalog: &Catalog,
    split: &TrafficSplit,
    client: &Identity,
    options: &Options,
    matches: &mut MatchTable,
) -> SplitTable {
    let namespace = split.meta.namespace.as_str();
    let root = short_service_name(&split.service, namespace);
    let hosts = service_hosts(root, namespace, &client.namespace, options);
    let root_ports = catalog.service(namespace, root).map(|s| &s.ports);
    let backends = split
        .backends
        .iter()
        .filter(|b| b.weight > 0)
        .filter_map(|b| {
            let name = short_service_name(&b.service, namespace);
            let eligible = name != root
                && match (root_ports, catalog.service(namespace, name)) {
                    (Some(root_ports), Some(service)) => {
                        service.ports.iter().any(|p| root_ports.contains(p))
                    }
                    _ => true,
                };
            eligible.then(|| WeightedBackend {
                service: format!("{name}.{namespace}"),
                weight: b.weight,
            })
        })
        .collect();
    let match_indexes = split
        .matches
        .iter()
        .filter_map(|r| catalog.http_route_group(namespace, &r.name))
        .flat_map(|group| matches.intern(group, None))
        .collect();
    SplitTable {
        traffic_split: format!("{namespace}/{}", split.meta.name),
        service: format!("{root}.{namespace}"),
        hosts,
        matches: match_indexes,
        backends,
        sticky: None,
    }
}
