//! What each proxy is served: from the index (SMI objects, Services, workloads) and the pods
//! running, the resources of one pod's sidecar, compiled policy and certificates included, as
//! an xDS snapshot with content-derived versions. Pure: no clock, no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use prost::Name;
use weft_envoy_config::filters::{Code, Kind};
use weft_envoy_config::mesh::{
    InboundPort, OUTBOUND_PLUGIN, OutboundService, Protocol, Sidecar, endpoints,
    inbound_plugin_name,
};
use weft_envoy_config::pb::google::protobuf::Any;
use weft_envoy_config::render::{any, content_digest};
use weft_envoy_config::tls::{certificate_secret, trust_secret};
use weft_policy::PluginConfig;
use weft_policy::bundle::Identity;
use weft_policy::compile::{Options, Side, compile, service_hosts};
use weft_policy::model::{AppProtocol, Catalog, Service};
use weft_xds::snapshot::{
    CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, Resource, SECRET, Snapshot,
};

/// The SDS name of the trust bundle every proxy gets.
pub const TRUST_BUNDLE: &str = "weft-trust-bundle";

/// A running replica of a workload, as a source (local mode, or a remote sidecar's node)
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Pod name (`<workload>-<n>` in local mode).
    pub name: String,
    /// The Deployment or Pod object it runs.
    pub workload: String,
    /// Its ServiceAccount.
    pub service_account: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its address: other workloads reach its sidecar here.
    pub pod_ip: Ipv4Addr,
    /// Where its application listens (its sidecar forwards to it).
    pub app_ip: Ipv4Addr,
    /// Its application's ports.
    pub ports: Vec<u16>,
    /// The module file on the sidecar's host, if the sidecar named one.
    pub module: Option<String>,
}

impl Pod {
    /// Its proxy's node id: `namespace/name`.
    pub fn node_id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its identity.
    pub fn identity(&self) -> Identity {
        Identity {
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
        }
    }
}

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The policy does not compile for this workload.
    #[error("{identity}: {reason}")]
    Compile {
        /// The workload.
        identity: String,
        /// Why.
        reason: String,
    },
    /// A resource could not be rendered for its version.
    #[error("{0}")]
    Render(#[from] weft_envoy_config::render::RenderError),
}

/// The mesh as one sidecar's snapshot is derived from it.
#[derive(Debug, Clone, Copy)]
pub struct MeshView<'a> {
    /// SMI objects, Services, workloads.
    pub catalog: &'a Catalog,
    /// Every pod.
    pub pods: &'a [Pod],
    /// Node ids of pods whose sidecar serves (endpoints list only these).
    pub ready: &'a BTreeSet<String>,
    /// The trust domain.
    pub trust_domain: &'a str,
    /// The trust bundle, PEM.
    pub bundle: &'a str,
    /// The module every sidecar loads unless it named its own.
    pub module: &'a str,
}

fn selects(service: &Service, pod: &Pod) -> bool {
    !service.selector.is_empty()
        && service.meta.namespace == pod.namespace
        && service
            .selector
            .iter()
            .all(|(key, value)| pod.labels.get(key) == Some(value))
}

fn protocol(protocol: AppProtocol) -> Protocol {
    match protocol {
        AppProtocol::Http => Protocol::Http,
        AppProtocol::Tcp => Protocol::Tcp,
    }
}

/// The cluster of a Service's HTTP port (`name.namespace`: split routing names clusters so),
/// or of a TCP port (`name.namespace:port`).
pub fn cluster_name(service: &Service, port: u16, http: bool) -> String {
    if http {
        format!("{}.{}", service.meta.name, service.meta.namespace)
    } else {
        format!("{}.{}:{port}", service.meta.name, service.meta.namespace)
    }
}

fn resource(name: &str, body: Any) -> Result<Resource, MeshError> {
    Ok(Resource {
        name: name.to_owned(),
        version: content_digest(&body)?,
        body,
    })
}

fn compiled(
    view: &MeshView<'_>,
    identity: &Identity,
    side: Side,
) -> Result<PluginConfig, MeshError> {
    let options = Options {
        trust_domain: view.trust_domain.to_owned(),
        ..Options::default()
    };
    compile(view.catalog, &[], identity, side, &options).map_err(|err| MeshError::Compile {
        identity: format!("{}/{}", identity.namespace, identity.service_account),
        reason: err.to_string(),
    })
}

fn json(config: &PluginConfig) -> String {
    serde_json::to_string(config).unwrap_or_default()
}

/// The snapshot of `pod`'s sidecar, with its workload certificate `certificate` (PEM).
///
/// # Errors
/// When its policy does not compile or a resource cannot be rendered.
pub fn sidecar_snapshot(
    view: &MeshView<'_>,
    pod: &Pod,
    certificate: &weft_certs::CertifiedKey,
) -> Result<Snapshot, MeshError> {
    let identity = pod.identity();
    let spiffe_id = identity.spiffe_id(view.trust_domain);
    let own_services: Vec<&Service> = view
        .catalog
        .services
        .iter()
        .filter(|service| selects(service, pod))
        .collect();
    let inbound: Vec<InboundPort> = pod
        .ports
        .iter()
        .map(|port| InboundPort {
            port: *port,
            protocol: own_services
                .iter()
                .flat_map(|service| service.port_specs.iter())
                .find(|spec| spec.target_port == *port)
                .map_or(Protocol::Http, |spec| protocol(spec.protocol)),
        })
        .collect();
    let mut services = Vec::new();
    let mut endpoint_sets: Vec<(String, Vec<SocketAddr>)> = Vec::new();
    for service in &view.catalog.services {
        let behind: Vec<&Pod> = view.pods.iter().filter(|p| selects(service, p)).collect();
        let mut identities: Vec<String> = behind
            .iter()
            .map(|p| p.identity().spiffe_id(view.trust_domain))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        identities.sort();
        let hosts = service_hosts(
            &service.meta.name,
            &service.meta.namespace,
            &pod.namespace,
            &Options::default(),
        );
        let mut http_done = false;
        for spec in &service.port_specs {
            let http = spec.protocol == AppProtocol::Http;
            if http && http_done {
                // One cluster per Service for HTTP, on its first HTTP port.
                continue;
            }
            http_done |= http;
            let cluster = cluster_name(service, spec.port, http);
            services.push(OutboundService {
                cluster: cluster.clone(),
                hosts: hosts.clone(),
                port: spec.port,
                protocol: protocol(spec.protocol),
                identities: identities.clone(),
            });
            let addresses = behind
                .iter()
                .filter(|p| view.ready.contains(&p.node_id()))
                .map(|p| SocketAddr::V4(SocketAddrV4::new(p.pod_ip, spec.target_port)))
                .collect();
            endpoint_sets.push((cluster, addresses));
        }
    }
    let module = pod.module.as_deref().unwrap_or(view.module);
    let sidecar = Sidecar {
        pod_ip: pod.pod_ip,
        app_ip: pod.app_ip,
        module: Code::File(module.to_owned()),
        certificate_secret: spiffe_id.clone(),
        trust_secret: TRUST_BUNDLE.to_owned(),
        inbound,
        services,
    };
    let built = sidecar.resources();
    let mut snapshot = Snapshot::new();
    for listener in &built.listeners {
        snapshot.insert(LISTENER, resource(&listener.name, any(listener))?);
    }
    for cluster in &built.clusters {
        snapshot.insert(CLUSTER, resource(&cluster.name, any(cluster))?);
    }
    for route in &built.routes {
        snapshot.insert(ROUTE, resource(&route.name, any(route))?);
    }
    for (cluster, addresses) in &endpoint_sets {
        snapshot.insert(
            ENDPOINT,
            resource(cluster, any(&endpoints(cluster, addresses)))?,
        );
    }
    snapshot.insert(
        SECRET,
        resource(
            &spiffe_id,
            any(&certificate_secret(
                &spiffe_id,
                &certificate.cert_pem,
                &certificate.key_pem,
            )),
        )?,
    );
    snapshot.insert(
        SECRET,
        resource(TRUST_BUNDLE, any(&trust_secret(TRUST_BUNDLE, view.bundle)))?,
    );
    let inbound_config = compiled(view, &identity, Side::Inbound)?;
    let served = own_services
        .first()
        .map(|service| format!("{}.{}", service.meta.name, service.meta.namespace));
    for port in &sidecar.inbound {
        let mut config = inbound_config.clone();
        config.destination_port = Some(port.port);
        if let Some(metrics) = config.metrics.as_mut() {
            metrics.service.clone_from(&served);
        }
        let kind = match port.protocol {
            Protocol::Http => Kind::Http,
            Protocol::Tcp => Kind::Tcp,
        };
        let name = inbound_plugin_name(port.port);
        let plugin = sidecar.plugin(&name, kind, json(&config));
        snapshot.insert(EXTENSION_CONFIG, resource(&name, any(&plugin))?);
    }
    let outbound_config = compiled(view, &identity, Side::Outbound)?;
    let plugin = sidecar.plugin(OUTBOUND_PLUGIN, Kind::Http, json(&outbound_config));
    snapshot.insert(EXTENSION_CONFIG, resource(OUTBOUND_PLUGIN, any(&plugin))?);
    debug_assert_eq!(
        weft_xds::snapshot::EXTENSION_CONFIG,
        weft_envoy_config::pb::envoy::config::core::v3::TypedExtensionConfig::type_url()
    );
    Ok(snapshot)
}
