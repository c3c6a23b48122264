//! A mesh sidecar's resources, from a plain description of its workload: what the controller
//! serves over xDS to each proxy. The names of the generated resources are a contract (users
//! patch them, status pages show them): see the constants and docs/controller.md.
//!
//! - Inbound: one listener per application port `P` on the pod's address, port `P` (the
//!   address other workloads reach), terminating mTLS with the workload's certificate (SDS) and
//!   requiring a client certificate from the mesh, with weft's filter from ECDS, in front of the
//!   application on its own private address, port `P`.
//! - Outbound: an HTTP listener on the pod's address, port [`OUTBOUND_PORT`] (the application's
//!   `HTTP_PROXY`), routed by Host to one cluster per Service, with weft's split and metrics
//!   from ECDS; a TCP listener per TCP Service port, on the pod's address and that port.
//! - Clusters of Services get their endpoints over EDS and speak mTLS, accepting only the
//!   identities of the Service's workloads.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Node, TypedExtensionConfig};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost, route};
use envoy_types::pb::google::protobuf::{Struct, Value, value};

use weft_policy::{CallerIdentity, PluginConfig};

use crate::bootstrap::{bootstrap, node, with_ads};
use crate::clusters::{eds_cluster, static_cluster, with_http2, with_tls};
use crate::filters::{
    Code, Configuration, Kind, WeftPlugin, discovered_http_filter, discovered_network_filter,
};
use crate::listeners::{
    HttpListener, ROUTE_HEADER, Routes, direct_response, route_configuration, route_to,
    split_route, tcp_listener, virtual_host,
};
use crate::tls::{Credentials, downstream_tls, upstream_tls};
use crate::traffic::{
    ServiceTraffic, apply_to_action, apply_to_cluster, outbound_filters, per_filter_config,
    route_match,
};

/// The sidecar's admin port on the pod's address.
pub const ADMIN_PORT: u16 = 15000;
/// The outbound HTTP listener's port on the pod's address (`HTTP_PROXY`).
pub const OUTBOUND_PORT: u16 = 15001;
/// The outbound HTTP listener, and its route configuration (RDS).
pub const OUTBOUND: &str = "outbound";
/// The ECDS resource of the outbound weft plugin.
pub const OUTBOUND_PLUGIN: &str = "weft.outbound";
/// The static cluster that reaches the controller's xDS server.
pub const XDS_CLUSTER: &str = "weft-xds";

/// The SDS name of the trust bundle every proxy gets.
pub const TRUST_BUNDLE: &str = "weft-trust-bundle";

/// The SDS name of a proxy's workload certificate and key: the same name for every proxy, each
/// served its own (as Istio's `default`). A proxy can only ever name its own key, and every
/// other resource that refers to it (the Service clusters' TLS) is the same for the whole mesh,
/// so built once and shared by every proxy.
pub const WORKLOAD_CERTIFICATE: &str = "weft-workload-certificate";

/// The plugin configuration of the inbound listener of `port`, from `workload`'s compiled
/// inbound policy: port rules see the application's port, and the metrics count requests to
/// `served` (the Service the workload serves, `name.namespace`). The caller's identity is read
/// from the connection: the listener does not forward it in `x-forwarded-client-cert`, which
/// measured no cheaper (docs/decisions.md).
pub fn inbound_configuration(
    port: &InboundPort,
    workload: &PluginConfig,
    served: Option<&str>,
) -> PluginConfig {
    let mut config = workload.clone();
    config.destination_port = Some(port.port);
    if let Some(metrics) = config.metrics.as_mut() {
        metrics.service = served.map(str::to_owned);
    }
    config.caller_identity = CallerIdentity::Connection;
    config
}

/// The inbound listener (and the cluster of the application) for port `port`.
pub fn inbound_name(port: u16) -> String {
    format!("inbound:{port}")
}

/// The ECDS resource of the inbound weft plugin for port `port`.
pub fn inbound_plugin_name(port: u16) -> String {
    format!("weft.inbound:{port}")
}

/// The outbound TCP listener of the TCP Service port whose cluster is `cluster`.
pub fn outbound_tcp_name(cluster: &str) -> String {
    format!("outbound:{cluster}")
}

/// How a port is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2.
    Http,
    /// Opaque TCP.
    Tcp,
}

/// One application port behind the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundPort {
    /// The port, on the pod's and the application's addresses.
    pub port: u16,
    /// HTTP or TCP.
    pub protocol: Protocol,
}

/// A Service the workload may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundService {
    /// Its cluster: `name.namespace`.
    pub cluster: String,
    /// The names it is called by (`name`, `name.namespace`, ... as weft compiles them).
    pub hosts: Vec<String>,
    /// Its port.
    pub port: u16,
    /// HTTP or TCP.
    pub protocol: Protocol,
    /// SPIFFE IDs of the workloads behind it: the only certificates its endpoints may present.
    pub identities: Vec<String>,
    /// The TrafficPolicy in force for the calls to it, if any.
    pub traffic: Option<ServiceTraffic>,
}

/// One sidecar, as the controller describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// The pod's address: its listeners.
    pub pod_ip: Ipv4Addr,
    /// The application's private address.
    pub app_ip: Ipv4Addr,
    /// The module.
    pub module: Code,
    /// SDS name of the workload's certificate.
    pub certificate_secret: String,
    /// SDS name of the trust bundle.
    pub trust_secret: String,
    /// The application's ports.
    pub inbound: Vec<InboundPort>,
    /// The Services it may call.
    pub services: Vec<OutboundService>,
}

/// Everything a sidecar is served, by xDS type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarResources {
    /// LDS.
    pub listeners: Vec<Listener>,
    /// CDS.
    pub clusters: Vec<Cluster>,
    /// RDS.
    pub routes: Vec<RouteConfiguration>,
}

/// The outbound route configuration of a sidecar that calls `services` (the same for every
/// sidecar of a namespace).
pub fn routes_for(services: &[OutboundService]) -> RouteConfiguration {
    let mut virtual_hosts = Vec::new();
    for service in services {
        if service.protocol == Protocol::Http {
            let domains: Vec<String> = service
                .hosts
                .iter()
                .cloned()
                .chain(
                    service
                        .hosts
                        .iter()
                        .map(|h| format!("{h}:{}", service.port)),
                )
                .collect();
            virtual_hosts.push(service_virtual_host(service, &domains));
        }
    }
    virtual_hosts.push(virtual_host(
        "unknown",
        &["*".to_owned()],
        vec![
            split_route(),
            direct_response(404, "weft: no Service of the mesh has that name\n"),
        ],
    ));
    route_configuration(OUTBOUND, virtual_hosts)
}

fn on(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

impl Sidecar {
    fn credentials(&self) -> Credentials {
        Credentials::Sds {
            certificate: self.certificate_secret.clone(),
            trust: self.trust_secret.clone(),
        }
    }

    /// The listeners, clusters and routes of this sidecar (endpoints, secrets and plugin
    /// configurations are served beside them: see [`Sidecar::endpoints`],
    /// [`Sidecar::plugin`]).
    pub fn resources(&self) -> SidecarResources {
        let mut resources = self.inbound_resources();
        resources.clusters.extend(self.outbound_clusters());
        resources.routes.push(self.outbound_routes());
        resources.listeners.extend(self.outbound_listeners());
        resources
    }

    /// Its inbound listeners and the clusters of its application's ports: the pod's own.
    pub fn inbound_resources(&self) -> SidecarResources {
        let mut resources = SidecarResources::default();
        for port in &self.inbound {
            let name = inbound_name(port.port);
            let tls = Some(downstream_tls(&self.credentials(), true));
            let listener = match port.protocol {
                Protocol::Http => {
                    let mut listener = HttpListener::new(
                        &name,
                        on(self.pod_ip, port.port),
                        Routes::Inline(Box::new(route_configuration(
                            &name,
                            vec![virtual_host(
                                "app",
                                &["*".to_owned()],
                                vec![route_to(&name)],
                            )],
                        ))),
                    );
                    listener.filters =
                        vec![discovered_http_filter(&inbound_plugin_name(port.port))];
                    listener.normalise_paths = true;
                    listener.tls = tls;
                    listener.build()
                }
                Protocol::Tcp => tcp_listener(
                    &name,
                    on(self.pod_ip, port.port),
                    vec![discovered_network_filter(&inbound_plugin_name(port.port))],
                    &name,
                    tls,
                ),
            };
            resources.listeners.push(listener);
            resources
                .clusters
                .push(static_cluster(&name, &[on(self.app_ip, port.port)]));
        }
        resources
    }

    /// The clusters of the Services it calls: the same for every sidecar of its identity and
    /// namespace.
    pub fn outbound_clusters(&self) -> Vec<Cluster> {
        self.clusters_for(&self.services)
    }

    /// [`Sidecar::outbound_clusters`] for `services` instead of its own.
    pub fn clusters_for(&self, services: &[OutboundService]) -> Vec<Cluster> {
        services
            .iter()
            .map(|service| {
                let tls = upstream_tls(&self.credentials(), &service.identities, &[]);
                let mut cluster = with_tls(eds_cluster(&service.cluster), tls);
                if let Some(traffic) = &service.traffic {
                    apply_to_cluster(&mut cluster, &traffic.settings);
                }
                cluster
            })
            .collect()
    }

    /// The outbound route configuration: the same for every sidecar of its namespace.
    pub fn outbound_routes(&self) -> RouteConfiguration {
        routes_for(&self.services)
    }

    /// Its outbound listeners, on the pod's address: one per TCP Service port, then the HTTP
    /// one.
    pub fn outbound_listeners(&self) -> Vec<Listener> {
        self.listeners_for(&self.services)
    }

    /// [`Sidecar::outbound_listeners`] for `services` instead of its own.
    pub fn listeners_for(&self, services: &[OutboundService]) -> Vec<Listener> {
        let mut listeners = Vec::new();
        for service in services {
            // The pod's own port is its inbound listener; it does not call itself there.
            if service.protocol == Protocol::Tcp
                && !self.inbound.iter().any(|p| p.port == service.port)
            {
                listeners.push(tcp_listener(
                    &outbound_tcp_name(&service.cluster),
                    on(self.pod_ip, service.port),
                    Vec::new(),
                    &service.cluster,
                    None,
                ));
            }
        }
        let mut outbound = HttpListener::new(
            OUTBOUND,
            on(self.pod_ip, OUTBOUND_PORT),
            Routes::Discovered(OUTBOUND.to_owned()),
        );
        outbound.filters = vec![discovered_http_filter(OUTBOUND_PLUGIN)];
        outbound.filters.extend(outbound_filters());
        outbound.strip_request_headers = vec![ROUTE_HEADER.to_owned()];
        listeners.push(outbound.build());
        listeners
    }

    /// A weft plugin of this sidecar (ECDS resource `resource_name`) with `configuration`.
    /// Inbound plugins fail closed; the outbound one fails open (split falls back to the root
    /// service).
    pub fn plugin(
        &self,
        resource_name: &str,
        kind: Kind,
        configuration: Configuration,
    ) -> TypedExtensionConfig {
        let mut plugin = WeftPlugin::new(kind, self.module.clone(), configuration);
        plugin.fail_open = resource_name == OUTBOUND_PLUGIN;
        plugin.extension_config(resource_name)
    }
}

/// The virtual host of an HTTP Service: split routing's route and the route to the Service,
/// preceded by a pair for each match a TrafficPolicy's routes name, each with the settings
/// in force for it.
fn service_virtual_host(service: &OutboundService, domains: &[String]) -> VirtualHost {
    let Some(traffic) = &service.traffic else {
        return virtual_host(
            &service.cluster,
            domains,
            vec![split_route(), route_to(&service.cluster)],
        );
    };
    let with = |mut route: Route, settings: &weft_policy::extension::Settings| {
        if let Some(route::Action::Route(action)) = route.action.as_mut() {
            apply_to_action(action, settings);
        }
        route
    };
    let mut routes = Vec::new();
    for rule in &traffic.routes {
        for m in &rule.matches {
            let matched = route_match(m);
            let mut split = split_route();
            if let Some(split_match) = split.r#match.as_mut() {
                split_match
                    .path_specifier
                    .clone_from(&matched.path_specifier);
                split_match.headers.extend(matched.headers.iter().cloned());
            }
            let mut direct = route_to(&service.cluster);
            direct.r#match = Some(matched);
            for mut route in [split, direct] {
                route.typed_per_filter_config = per_filter_config(&rule.settings);
                routes.push(with(route, &rule.settings));
            }
        }
    }
    routes.push(with(split_route(), &traffic.settings));
    routes.push(with(route_to(&service.cluster), &traffic.settings));
    let mut host = virtual_host(&service.cluster, domains, routes);
    host.typed_per_filter_config = per_filter_config(&traffic.settings);
    host
}

/// How a sidecar reaches the controller and proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerLink {
    /// The xDS server.
    pub address: SocketAddr,
    /// The controller's SPIFFE ID, checked on its certificate.
    pub identity: String,
    /// The bootstrap credential (files): the workload's certificate and key, and the mesh CA.
    pub credentials: Credentials,
}

/// What a sidecar says about its pod in its node's metadata: written by `weft sidecar` and
/// local mode, read by the controller's admission, through this one type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodMetadata {
    /// The workload (Deployment, StatefulSet, ...) the pod is a replica of, by name.
    pub workload: String,
    /// The pod's address, where a sidecar on a host of its own listens.
    pub pod_ip: Option<Ipv4Addr>,
    /// The application's private address behind it.
    pub app_ip: Option<Ipv4Addr>,
    /// The module file the sidecar loads, when it names one.
    pub module: Option<String>,
}

/// Why a node's metadata does not describe a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// A field that must be there is not.
    #[error("its metadata has no {0}")]
    Missing(&'static str),
    /// An address field that is not an IPv4 address.
    #[error("its metadata {key} is not an IPv4 address: {value:?}")]
    NotAnAddress {
        /// The field.
        key: &'static str,
        /// What it holds.
        value: String,
    },
}

impl PodMetadata {
    /// The key of [`PodMetadata::workload`].
    pub const WORKLOAD: &'static str = "workload";
    /// The key of [`PodMetadata::pod_ip`].
    pub const POD_IP: &'static str = "pod_ip";
    /// The key of [`PodMetadata::app_ip`].
    pub const APP_IP: &'static str = "app_ip";
    /// The key of [`PodMetadata::module`].
    pub const MODULE: &'static str = "module";

    /// The metadata as the node carries it: string fields.
    pub fn to_struct(&self) -> Struct {
        let address = |ip: Option<Ipv4Addr>| ip.map(|ip| ip.to_string());
        let fields = [
            (Self::WORKLOAD, Some(self.workload.clone())),
            (Self::POD_IP, address(self.pod_ip)),
            (Self::APP_IP, address(self.app_ip)),
            (Self::MODULE, self.module.clone()),
        ];
        Struct {
            fields: fields
                .into_iter()
                .filter_map(|(key, text)| {
                    text.map(|text| {
                        (
                            key.to_owned(),
                            Value {
                                kind: Some(value::Kind::StringValue(text)),
                            },
                        )
                    })
                })
                .collect(),
        }
    }

    /// The metadata `node` carries.
    ///
    /// # Errors
    /// When it names no workload, or an address field is not an IPv4 address.
    pub fn read(node: &Node) -> Result<Self, MetadataError> {
        let address = |key: &'static str| {
            node_metadata(node, key)
                .map(|text| {
                    text.parse().map_err(|_| MetadataError::NotAnAddress {
                        key,
                        value: text.chars().take(64).collect(),
                    })
                })
                .transpose()
        };
        Ok(Self {
            workload: node_metadata(node, Self::WORKLOAD)
                .ok_or(MetadataError::Missing(Self::WORKLOAD))?
                .to_owned(),
            pod_ip: address(Self::POD_IP)?,
            app_ip: address(Self::APP_IP)?,
            module: node_metadata(node, Self::MODULE).map(str::to_owned),
        })
    }
}

/// A sidecar's bootstrap: node `node_id` of workload `workload` (`namespace/serviceaccount`)
/// with `metadata`, admin on the pod's address, ADS over mTLS to the controller. Everything
/// else comes over xDS.
pub fn sidecar_bootstrap(
    node_id: &str,
    workload: &str,
    metadata: &PodMetadata,
    pod_ip: Ipv4Addr,
    link: &ControllerLink,
) -> Bootstrap {
    let xds = with_http2(with_tls(
        static_cluster(XDS_CLUSTER, &[link.address]),
        upstream_tls(
            &link.credentials,
            std::slice::from_ref(&link.identity),
            &["h2"],
        ),
    ));
    let mut config = with_ads(
        bootstrap(on(pod_ip, ADMIN_PORT), Vec::new(), vec![xds]),
        XDS_CLUSTER,
    );
    config.node = Some(described_node(node_id, workload, metadata));
    config
}

/// The node `node_id` of workload `workload` (`namespace/serviceaccount`), describing its pod
/// with `metadata`.
pub fn described_node(node_id: &str, workload: &str, metadata: &PodMetadata) -> Node {
    let mut node: Node = node(node_id, workload);
    node.metadata = Some(metadata.to_struct());
    node
}

/// A string field of a node's metadata.
fn node_metadata<'n>(node: &'n Node, key: &str) -> Option<&'n str> {
    let fields = &node.metadata.as_ref()?.fields;
    match &fields.get(key)?.kind {
        Some(value::Kind::StringValue(text)) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_metadata_is_read_back_as_written() {
        let full = PodMetadata {
            workload: "checkout".to_owned(),
            pod_ip: Some(Ipv4Addr::new(127, 0, 0, 2)),
            app_ip: Some(Ipv4Addr::new(127, 0, 0, 3)),
            module: Some("/weft/weft.wasm".to_owned()),
        };
        let local = PodMetadata {
            workload: "checkout".to_owned(),
            ..PodMetadata::default()
        };
        for metadata in [full, local] {
            let node = described_node("shop/checkout-0", "shop/checkout", &metadata);
            assert_eq!(PodMetadata::read(&node), Ok(metadata));
        }
        let mut node = described_node("shop/a", "shop/a", &PodMetadata::default());
        node.metadata = None;
        assert_eq!(
            PodMetadata::read(&node),
            Err(MetadataError::Missing(PodMetadata::WORKLOAD))
        );
    }

    #[test]
    fn a_huge_address_is_refused_with_its_first_64_characters_only() {
        let mut node = described_node(
            "shop/a",
            "shop/a",
            &PodMetadata {
                workload: "a".to_owned(),
                ..PodMetadata::default()
            },
        );
        if let Some(metadata) = node.metadata.as_mut() {
            metadata.fields.insert(
                PodMetadata::POD_IP.to_owned(),
                Value {
                    kind: Some(value::Kind::StringValue("\n9".repeat(1 << 20))),
                },
            );
        }
        let refused = PodMetadata::read(&node).unwrap_err();
        let MetadataError::NotAnAddress { key, value } = &refused else {
            panic!("{refused:?}");
        };
        assert_eq!(*key, PodMetadata::POD_IP);
        assert_eq!(value.chars().count(), 64);
        // Written escaped: a line break from a peer does not start a line of the log.
        assert!(!refused.to_string().contains('\n'), "{refused}");
        assert!(refused.to_string().len() < 200, "{refused}");
    }
    use crate::listeners::{connection_manager, forwards_caller_identity};

    fn sidecar() -> Sidecar {
        Sidecar {
            pod_ip: Ipv4Addr::new(127, 0, 0, 2),
            app_ip: Ipv4Addr::new(127, 0, 0, 3),
            module: Code::File("weft.wasm".to_owned()),
            certificate_secret: "workload".to_owned(),
            trust_secret: "trust".to_owned(),
            inbound: vec![
                InboundPort {
                    port: 8080,
                    protocol: Protocol::Http,
                },
                InboundPort {
                    port: 5432,
                    protocol: Protocol::Tcp,
                },
            ],
            services: Vec::new(),
        }
    }

    #[test]
    fn an_inbound_plugin_reads_the_caller_from_the_connection_and_no_listener_forwards_a_header() {
        let sidecar = sidecar();
        let resources = sidecar.resources();
        let managers: Vec<_> = resources
            .listeners
            .iter()
            .filter_map(|listener| connection_manager(listener.filter_chains.first()?))
            .collect();
        assert_eq!(
            managers.len(),
            2,
            "the inbound HTTP listener and the outbound one"
        );
        for manager in &managers {
            assert!(
                !forwards_caller_identity(manager),
                "{}",
                manager.stat_prefix
            );
        }
        // Even a workload configuration that said otherwise is read from the connection.
        let workload = PluginConfig {
            caller_identity: CallerIdentity::ForwardedClientCert,
            ..PluginConfig::default()
        };
        for port in &sidecar.inbound {
            let config = inbound_configuration(port, &workload, Some("api.shop"));
            assert_eq!(config.caller_identity, CallerIdentity::Connection);
            assert_eq!(config.destination_port, Some(port.port));
        }
    }
}
