//! What each proxy is served: from the index (SMI objects, Services, workloads) and the pods
//! running, the resources of one pod's sidecar, compiled policy and certificates included, as
//! an xDS snapshot with content-derived versions. Pure: no clock, no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::patch::{PatchError, PatchKey, PatchReport};
use prost::Name;
use weft_envoy_config::clusters::load_assignment;
use weft_envoy_config::filters::{Code, Configuration, Kind};
use weft_envoy_config::mesh::{
    InboundPort, OUTBOUND_PLUGIN, OutboundService, Protocol, Sidecar, SidecarResources,
    inbound_configuration, inbound_plugin_name,
};
use weft_envoy_config::mesh::{TRUST_BUNDLE, WORKLOAD_CERTIFICATE};
use weft_envoy_config::pb::google::protobuf::Any;
use weft_envoy_config::render::{any, content_digest};
use weft_envoy_config::tls::{certificate_secret, trust_secret};
use weft_envoy_config::traffic::service_traffic;
use weft_policy::PluginConfig;
use weft_policy::bundle::Identity;
use weft_policy::catalog::Catalog;
use weft_policy::compile::{Options, Side, compile, service_hosts};
use weft_policy::diagnostic::{Diagnostic, Severity};
use weft_policy::model::{AppProtocol, Service};
use weft_xds::snapshot::{
    CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, Resource, Resources, SECRET, Snapshot,
};

/// A running replica of a workload, as a source (local mode, or a remote sidecar's node)
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
    /// This pod with its workload's labels and ports, as `catalog` has them.
    ///
    /// # Errors
    /// When `catalog` has no such workload, or it runs as another ServiceAccount.
    pub fn of_workload(mut self, catalog: &Catalog) -> Result<Self, String> {
        let workload = catalog
            .workloads
            .iter()
            .find(|w| w.meta.namespace == self.namespace && w.meta.name == self.workload)
            .ok_or_else(|| {
                format!(
                    "no workload {}/{} in the index",
                    self.namespace, self.workload
                )
            })?;
        if workload.service_account != self.service_account {
            return Err(format!(
                "workload {}/{} runs as {}, not {}",
                self.namespace, self.workload, workload.service_account, self.service_account
            ));
        }
        self.labels.clone_from(&workload.labels);
        self.ports.clone_from(&workload.ports);
        Ok(self)
    }

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
    /// Their node ids, in the same order.
    pub nodes: &'a [String],
    /// Node ids of pods whose sidecar serves (endpoints list only these).
    pub ready: &'a BTreeSet<String>,
    /// The trust domain.
    pub trust_domain: &'a str,
    /// The trust bundle, PEM.
    pub bundle: &'a str,
    /// The module every sidecar loads unless it named its own.
    pub module: &'a str,
    /// Whether EnvoyPatches are applied (off unless the controller is told).
    pub allow_patches: bool,
    /// The resource patches each proxy (by node id) refused, left out of its configuration.
    pub withdrawn: &'a BTreeMap<String, BTreeMap<PatchKey, PatchError>>,
}

fn selects(service: &Service, pod: &Pod) -> bool {
    selects_labels(service, &pod.namespace, &pod.labels)
}

fn selects_labels(service: &Service, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
    !service.selector.is_empty()
        && service.meta.namespace == namespace
        && service
            .selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
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

/// Resources built before, by their bytes: equal bytes are one shared resource, whose
/// canonical digest is computed once (rendering a resource as canonical JSON is the costly part
/// of a rebuild, and most resources are equal across the pods of a workload and across
/// rebuilds).
#[derive(Debug, Default)]
pub struct Interner {
    entries: HashMap<[u8; 32], Arc<Resource>>,
}

impl Interner {
    /// The shared resource `name` with `body`.
    ///
    /// # Errors
    /// When the body cannot be rendered for its digest.
    pub fn resource(&mut self, name: &str, body: Any) -> Result<Arc<Resource>, MeshError> {
        let mut hasher = Sha256::new();
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(body.type_url.as_bytes());
        hasher.update([0]);
        hasher.update(&body.value);
        let key: [u8; 32] = hasher.finalize().into();
        if let Some(resource) = self.entries.get(&key) {
            return Ok(resource.clone());
        }
        let resource = Arc::new(Resource {
            name: name.to_owned(),
            version: content_digest(&body)?,
            body,
        });
        self.entries.insert(key, resource.clone());
        Ok(resource)
    }

    /// Forgets the resources no snapshot holds any more.
    pub fn sweep(&mut self) {
        self.entries
            .retain(|_, resource| Arc::strong_count(resource) > 1);
    }

    /// How many resources it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The Services a workload of `namespace` may call, as its sidecar's outbound clusters and
/// virtual hosts are built from them: names, ports, the identities behind them and the
/// TrafficPolicy in force for each.
pub fn outbound_services(
    catalog: &Catalog,
    trust_domain: &str,
    namespace: &str,
) -> Vec<OutboundService> {
    let mut services = Vec::new();
    for service in &catalog.services {
        // From the workloads it selects, not from the pods running now: a pod that comes or
        // goes changes endpoints, never the clusters.
        let identities: Vec<String> = catalog
            .workloads
            .iter()
            .filter(|w| selects_labels(service, &w.meta.namespace, &w.labels))
            .map(|w| {
                Identity {
                    namespace: w.meta.namespace.clone(),
                    service_account: w.service_account.clone(),
                }
                .spiffe_id(trust_domain)
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let hosts = service_hosts(
            &service.meta.name,
            &service.meta.namespace,
            namespace,
            &Options::default(),
        );
        for (spec, http) in service_ports(service) {
            services.push(OutboundService {
                cluster: cluster_name(service, spec.port, http),
                hosts: hosts.clone(),
                port: spec.port,
                protocol: protocol(spec.protocol),
                identities: identities.clone(),
                traffic: service_traffic(catalog, service, spec.port),
            });
        }
    }
    services
}

/// What rebuilds compute once for every pod: the Services as each namespace calls them and the
/// compiled plugin configurations per identity (kept from one rebuild to the next until a
/// change makes them stale, see [`Plan::forget`]), and the endpoints (once per rebuild).
#[derive(Debug, Default)]
pub struct Plan {
    services: HashMap<String, Arc<Vec<OutboundService>>>,
    /// The clusters of the Services, the same for every unpatched proxy of the mesh.
    clusters: Option<Arc<Resources>>,
    /// By namespace: the outbound route configuration.
    routes: HashMap<String, Arc<Resources>>,
    /// The endpoints, and a digest of the ready pods they were built from.
    endpoints: Option<(u64, Arc<Resources>)>,
    /// Each Service port's load assignment and the addresses it was built from: a pod that
    /// becomes ready changes its Services' assignments, and only those are encoded again.
    assignments: HashMap<String, (Vec<SocketAddr>, Arc<Resource>)>,
    /// By identity and side.
    compiled: HashMap<(Identity, Side), PluginConfig>,
    /// By namespace: the outbound policy, which depends on the identity only by its namespace
    /// (and names it): compiled once per namespace.
    outbound: HashMap<String, PluginConfig>,
    /// The plugin configurations (ECDS) of the pods of one shape, shared by them.
    plugins: HashMap<PluginShape, Arc<Resources>>,
    /// EnvoyPatches applied in this rebuild, by resource and patch.
    patches: crate::patch::PatchCache,
    /// Writes the plugin configurations as bundles, compiling each regex once per rebuild.
    bundles: weft_policy::wire::Encoder,
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

/// What a change of the catalog makes stale.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Dirty {
    /// Nothing.
    #[default]
    Nothing,
    /// Compiled policy only (the plugin configurations, pushed over ECDS): the inbound policy of
    /// these identities (a TrafficTarget or a route it names changed), and with `outbound`
    /// every identity's outbound policy (a TrafficSplit changed).
    Policy {
        /// Identities whose inbound policy is stale.
        inbound: BTreeSet<Identity>,
        /// Whether every outbound policy is stale.
        outbound: bool,
    },
    /// Everything built from the catalog.
    All,
}

impl Dirty {
    /// This and `other` together.
    pub fn merge(&mut self, other: Dirty) {
        *self = match (std::mem::replace(self, Dirty::Nothing), other) {
            (Dirty::All, _) | (_, Dirty::All) => Dirty::All,
            (Dirty::Nothing, other) | (other, Dirty::Nothing) => other,
            (
                Dirty::Policy {
                    mut inbound,
                    outbound,
                },
                Dirty::Policy {
                    inbound: theirs,
                    outbound: their_outbound,
                },
            ) => {
                inbound.extend(theirs);
                Dirty::Policy {
                    inbound,
                    outbound: outbound || their_outbound,
                }
            }
        };
    }
}

/// What the change from `old` to `new` of the objects `changed` makes stale. Access rules
/// stale the inbound policy of the identities they protect (their old and new destinations),
/// TrafficSplits the outbound policy; any other kind, or a route that a TrafficPolicy of its
/// namespace may name, stales everything.
pub fn dirty(
    old: &Catalog,
    new: &Catalog,
    changed: &BTreeSet<weft_policy::object::ObjectKey>,
) -> Dirty {
    let mut identities = BTreeSet::new();
    let mut outbound = false;
    let destination = |target: &weft_policy::model::TrafficTarget| {
        target.destination.as_ref().map(|d| Identity {
            namespace: d
                .namespace
                .clone()
                .unwrap_or_else(|| target.meta.namespace.clone()),
            service_account: d.name.clone(),
        })
    };
    for key in changed {
        let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
        match key.kind.as_str() {
            "TrafficTarget" => {
                for catalog in [old, new] {
                    let target = catalog
                        .traffic_targets
                        .iter()
                        .find(|t| t.meta.namespace == namespace && t.meta.name == name);
                    match target.map(destination) {
                        Some(Some(identity)) => {
                            identities.insert(identity);
                        }
                        Some(None) => return Dirty::All,
                        None => {}
                    }
                }
            }
            "HTTPRouteGroup" | "TCPRoute" | "UDPRoute" => {
                let policies = [old, new].into_iter().any(|catalog| {
                    catalog
                        .traffic_policies
                        .iter()
                        .any(|p| p.meta.namespace == namespace)
                });
                if policies {
                    return Dirty::All;
                }
                for catalog in [old, new] {
                    for target in catalog.traffic_targets.iter().filter(|t| {
                        t.meta.namespace == namespace && t.rules.iter().any(|r| r.name == name)
                    }) {
                        match destination(target) {
                            Some(identity) => {
                                identities.insert(identity);
                            }
                            None => return Dirty::All,
                        }
                    }
                }
            }
            // A split changes where callers send, which only their plugin decides.
            "TrafficSplit" => outbound = true,
            _ => return Dirty::All,
        }
    }
    if identities.is_empty() && !outbound {
        Dirty::Nothing
    } else {
        Dirty::Policy {
            inbound: identities,
            outbound,
        }
    }
}

impl Plan {
    /// Forgets what `dirty` makes stale, and what holds for one rebuild only (patch results,
    /// compiled regexes).
    pub fn forget(&mut self, dirty: &Dirty) {
        match dirty {
            Dirty::All => {
                // A load assignment is its cluster's name and addresses, whatever the catalog.
                let assignments = std::mem::take(&mut self.assignments);
                *self = Plan::default();
                self.assignments = assignments;
            }
            Dirty::Policy { inbound, outbound } => {
                self.compiled.retain(|(identity, side), _| match side {
                    Side::Inbound => !inbound.contains(identity),
                    Side::Outbound => !outbound,
                });
                if *outbound {
                    self.outbound.clear();
                }
                self.plugins
                    .retain(|shape, _| !*outbound && !inbound.contains(&shape.identity));
            }
            Dirty::Nothing => {}
        }
        self.patches = crate::patch::PatchCache::default();
        self.bundles = weft_policy::wire::Encoder::default();
    }

    /// `config` of `identity`'s workload as the bundle its sidecar's plugin is pushed.
    fn bundle(
        &mut self,
        identity: &Identity,
        config: &PluginConfig,
    ) -> Result<Configuration, MeshError> {
        self.bundles
            .encode(config)
            .map(Configuration)
            .map_err(|err| MeshError::Compile {
                identity: identity.to_string(),
                reason: err.to_string(),
            })
    }

    fn services(&mut self, view: &MeshView<'_>, namespace: &str) -> Arc<Vec<OutboundService>> {
        self.services
            .entry(namespace.to_owned())
            .or_insert_with(|| {
                Arc::new(outbound_services(
                    view.catalog,
                    view.trust_domain,
                    namespace,
                ))
            })
            .clone()
    }

    /// The clusters of the Services, built once for every unpatched sidecar of the mesh: a
    /// cluster reads its Service's name, port, identities and TrafficPolicy, and the
    /// certificate's SDS name ([`WORKLOAD_CERTIFICATE`]), none of which depends on the pod or
    /// its namespace.
    fn clusters(
        &mut self,
        view: &MeshView<'_>,
        interner: &mut Interner,
        sidecar: &Sidecar,
        pod: &Pod,
    ) -> Result<Arc<Resources>, MeshError> {
        if let Some(clusters) = &self.clusters {
            return Ok(clusters.clone());
        }
        let services = self.services(view, &pod.namespace);
        let mut clusters = Resources::new();
        for cluster in sidecar.clusters_for(&services) {
            let resource = interner.resource(&cluster.name, any(&cluster))?;
            clusters.insert(resource.name.clone(), resource);
        }
        let clusters = Arc::new(clusters);
        self.clusters = Some(clusters.clone());
        Ok(clusters)
    }

    /// The outbound routes of `namespace`, built once.
    fn routes(
        &mut self,
        view: &MeshView<'_>,
        interner: &mut Interner,
        namespace: &str,
    ) -> Result<Arc<Resources>, MeshError> {
        if let Some(routes) = self.routes.get(namespace) {
            return Ok(routes.clone());
        }
        let services = self.services(view, namespace);
        let route = weft_envoy_config::mesh::routes_for(&services);
        let resource = interner.resource(&route.name, any(&route))?;
        let routes = Arc::new(Resources::from([(resource.name.clone(), resource)]));
        self.routes.insert(namespace.to_owned(), routes.clone());
        Ok(routes)
    }

    /// The endpoints of every Service port, the same for every pod: built, encoded and
    /// digested once, and again only when the ready pods change (or the catalog: a new plan),
    /// and shared by every snapshot (with a thousand pods, building them for each pod was most
    /// of a rebuild). Pods are grouped by namespace and labels, so each Service's selector is
    /// matched once per workload, not once per pod.
    pub fn endpoints(
        &mut self,
        view: &MeshView<'_>,
        interner: &mut Interner,
    ) -> Result<Arc<Resources>, MeshError> {
        let ready = || {
            view.pods
                .iter()
                .zip(view.nodes)
                .filter(|(_, node)| view.ready.contains(*node))
                .map(|(pod, _)| pod)
        };
        let inputs = {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::hash::DefaultHasher::new();
            for pod in ready() {
                (&pod.namespace, &pod.labels, pod.pod_ip).hash(&mut hasher);
            }
            hasher.finish()
        };
        if let Some((built_from, endpoints)) = &self.endpoints
            && *built_from == inputs
        {
            return Ok(endpoints.clone());
        }
        let mut groups: BTreeMap<(&str, &BTreeMap<String, String>), Vec<&Pod>> = BTreeMap::new();
        for pod in ready() {
            groups
                .entry((pod.namespace.as_str(), &pod.labels))
                .or_default()
                .push(pod);
        }
        let mut resources = Resources::new();
        let mut assignments = HashMap::new();
        for service in &view.catalog.services {
            let selected: Vec<&Pod> = groups
                .iter()
                .filter(|((namespace, labels), _)| selects_labels(service, namespace, labels))
                .flat_map(|(_, pods)| pods.iter().copied())
                .collect();
            for (spec, http) in service_ports(service) {
                let addresses: Vec<SocketAddr> = selected
                    .iter()
                    .map(|p| SocketAddr::V4(SocketAddrV4::new(p.pod_ip, spec.target_port)))
                    .collect();
                let cluster = cluster_name(service, spec.port, http);
                let resource = match self.assignments.remove(&cluster) {
                    Some((built_from, resource)) if built_from == addresses => resource,
                    _ => {
                        interner.resource(&cluster, any(&load_assignment(&cluster, &addresses)))?
                    }
                };
                assignments.insert(cluster, (addresses, resource.clone()));
                resources.insert(resource.name.clone(), resource);
            }
        }
        self.assignments = assignments;
        let endpoints = Arc::new(resources);
        self.endpoints = Some((inputs, endpoints.clone()));
        Ok(endpoints)
    }

    fn compiled(
        &mut self,
        view: &MeshView<'_>,
        identity: &Identity,
        side: Side,
    ) -> Result<&PluginConfig, MeshError> {
        let key = (identity.clone(), side);
        if !self.compiled.contains_key(&key) {
            let config = match side {
                Side::Inbound => compiled(view, identity, side)?,
                Side::Outbound => {
                    let namespace = &identity.namespace;
                    if !self.outbound.contains_key(namespace) {
                        let config = compiled(view, identity, side)?;
                        self.outbound.insert(namespace.clone(), config);
                    }
                    let mut config = self.outbound[namespace].clone();
                    config.identity = Some(identity.clone());
                    config
                }
            };
            self.compiled.insert(key.clone(), config);
        }
        self.compiled.get(&key).ok_or_else(|| MeshError::Compile {
            identity: identity.to_string(),
            reason: "not compiled".to_owned(),
        })
    }
}

/// What a pod's plugin configurations are built from: pods of one shape share them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PluginShape {
    identity: Identity,
    inbound: Vec<(u16, bool)>,
    served: Option<String>,
    module: String,
}

/// The plugin configurations (ECDS) of `pod`'s sidecar, shared with the pods of its shape:
/// one per inbound port, and the outbound one.
///
/// # Errors
/// When its policy does not compile or a resource cannot be rendered.
pub fn sidecar_plugins(
    view: &MeshView<'_>,
    plan: &mut Plan,
    interner: &mut Interner,
    pod: &Pod,
) -> Result<Arc<Resources>, MeshError> {
    let (sidecar, own_services) = describe_ports(view, pod);
    let served = own_services
        .first()
        .map(|service| format!("{}.{}", service.meta.name, service.meta.namespace));
    let identity = pod.identity();
    let shape = PluginShape {
        identity: identity.clone(),
        inbound: sidecar
            .inbound
            .iter()
            .map(|p| (p.port, p.protocol == Protocol::Http))
            .collect(),
        served: served.clone(),
        module: pod.module.clone().unwrap_or_else(|| view.module.to_owned()),
    };
    if let Some(plugins) = plan.plugins.get(&shape) {
        return Ok(plugins.clone());
    }
    let inbound_config = plan.compiled(view, &identity, Side::Inbound)?.clone();
    let outbound_config = plan.compiled(view, &identity, Side::Outbound)?.clone();
    let outbound_config = plan.bundle(&identity, &outbound_config)?;
    let mut plugins = Resources::new();
    for port in &sidecar.inbound {
        let config = inbound_configuration(port, &inbound_config, served.as_deref());
        let kind = match port.protocol {
            Protocol::Http => Kind::Http,
            Protocol::Tcp => Kind::Tcp,
        };
        let name = inbound_plugin_name(port.port);
        let plugin = sidecar.plugin(&name, kind, plan.bundle(&identity, &config)?);
        plugins.insert(name.clone(), interner.resource(&name, any(&plugin))?);
    }
    let plugin = sidecar.plugin(OUTBOUND_PLUGIN, Kind::Http, outbound_config);
    plugins.insert(
        OUTBOUND_PLUGIN.to_owned(),
        interner.resource(OUTBOUND_PLUGIN, any(&plugin))?,
    );
    let plugins = Arc::new(plugins);
    plan.plugins.insert(shape, plugins.clone());
    Ok(plugins)
}

/// The ports of a Service that get a cluster: its first HTTP port (one cluster per Service
/// for HTTP, which split routing names) and each TCP port; with whether it is the HTTP one.
fn service_ports(service: &Service) -> Vec<(&weft_policy::model::ServicePort, bool)> {
    let mut ports = Vec::new();
    let mut http_done = false;
    for spec in &service.port_specs {
        let http = spec.protocol == AppProtocol::Http;
        if http && http_done {
            continue;
        }
        http_done |= http;
        ports.push((spec, http));
    }
    ports
}

/// What `pod`'s sidecar is, before it is built: its ports and the Services it calls (with the
/// TrafficPolicies in force), and the Services it is part of.
fn describe_sidecar<'c>(
    view: &MeshView<'c>,
    plan: &mut Plan,
    pod: &Pod,
) -> (Sidecar, Vec<&'c Service>) {
    let (mut sidecar, own_services) = describe_ports(view, pod);
    sidecar.services = plan.services(view, &pod.namespace).to_vec();
    (sidecar, own_services)
}

/// `pod`'s sidecar without the Services it calls, and the Services it is part of.
fn describe_ports<'c>(view: &MeshView<'c>, pod: &Pod) -> (Sidecar, Vec<&'c Service>) {
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
    let module = pod.module.as_deref().unwrap_or(view.module);
    let sidecar = Sidecar {
        pod_ip: pod.pod_ip,
        app_ip: pod.app_ip,
        module: Code::File(module.to_owned()),
        certificate_secret: WORKLOAD_CERTIFICATE.to_owned(),
        trust_secret: TRUST_BUNDLE.to_owned(),
        inbound,
        services: Vec::new(),
    };
    (sidecar, own_services)
}

/// What the mesh cannot serve although each object is valid SMI and Kubernetes: two TCP
/// Service ports on one port (every sidecar listens for each on its own address, so Envoy
/// would refuse every sidecar's listeners as duplicates), a port the sidecar keeps for itself,
/// and two pods of one name (a Pod named like the replica of a Deployment, which local mode
/// names `<deployment>-<n>`). Each an error at its field.
pub fn check_mesh(catalog: &Catalog) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let error =
        |kind: &str, meta: &weft_policy::model::Meta, field: String, message: String| Diagnostic {
            severity: Severity::Error,
            kind: Some(kind.to_owned()),
            namespace: Some(meta.namespace.clone()),
            name: Some(meta.name.clone()),
            field,
            origin: meta.origin.clone(),
            message,
        };
    let reserved = [
        (weft_envoy_config::mesh::ADMIN_PORT, "its admin"),
        (
            weft_envoy_config::mesh::OUTBOUND_PORT,
            "its outbound HTTP listener",
        ),
    ];
    // A clash is reported on both objects, so that whichever of them was changed last can be
    // refused alone (the store refuses changed objects before those in force).
    let mut tcp_ports: BTreeMap<u16, (String, &Service, String)> = BTreeMap::new();
    for service in &catalog.services {
        for (index, spec) in service.port_specs.iter().enumerate() {
            if spec.protocol != AppProtocol::Tcp {
                continue;
            }
            let field = format!("spec.ports[{index}].port");
            let name = format!("{}/{}", service.meta.namespace, service.meta.name);
            if let Some((_, what)) = reserved.iter().find(|(port, _)| *port == spec.port) {
                diagnostics.push(error(
                    "Service",
                    &service.meta,
                    field,
                    format!(
                        "TCP port {} is the sidecar's own ({what}); every sidecar listens for a TCP Service port on that port of its address, so use another",
                        spec.port
                    ),
                ));
                continue;
            }
            let clash = |other: &str| {
                format!(
                    "TCP port {} is also Service {other}'s; every sidecar listens for each TCP Service port on that port of its own address, so two TCP Services cannot share a port: give one another port",
                    spec.port
                )
            };
            match tcp_ports.get(&spec.port) {
                Some((first, first_service, first_field)) if *first != name => {
                    diagnostics.push(error("Service", &service.meta, field, clash(first)));
                    diagnostics.push(error(
                        "Service",
                        &first_service.meta,
                        first_field.clone(),
                        clash(&name),
                    ));
                }
                Some(_) => {}
                None => {
                    tcp_ports.insert(spec.port, (name, service, field));
                }
            }
        }
    }
    let mut pods: BTreeMap<(String, String), (String, &weft_policy::model::Workload, String)> =
        BTreeMap::new();
    for workload in &catalog.workloads {
        let ports_field = if workload.kind == "Pod" {
            "spec.containers[0].ports"
        } else {
            "spec.template.spec.containers[0].ports"
        };
        for (index, port) in workload.ports.iter().enumerate() {
            if let Some((_, what)) = reserved.iter().find(|(reserved, _)| reserved == port) {
                diagnostics.push(error(
                    &workload.kind,
                    &workload.meta,
                    format!("{ports_field}[{index}].containerPort"),
                    format!("port {port} is the sidecar's own ({what}) on the pod's address; use another"),
                ));
            }
        }
        // Each pod's name, what it is to this workload, and how a message says it is named.
        let this = format!(
            "{} {}/{}",
            workload.kind, workload.meta.namespace, workload.meta.name
        );
        let names: Vec<(String, String, String)> = if workload.kind == "Pod" {
            vec![(workload.meta.name.clone(), this, "it is".to_owned())]
        } else {
            (0..workload.replicas)
                .map(|n| {
                    (
                        format!("{}-{n}", workload.meta.name),
                        format!("replica {n} of {this}"),
                        format!("its replica {n} would be"),
                    )
                })
                .collect()
        };
        for (pod, what, named) in names {
            let key = (workload.meta.namespace.clone(), pod.clone());
            match pods.get(&key) {
                Some((first, first_workload, first_named)) => {
                    let clash = |named: &str, other: &str| {
                        format!(
                            "{named} pod {}/{pod}, which is also {other}; local mode names a Deployment's replicas <name>-<n>, so rename one of them",
                            workload.meta.namespace
                        )
                    };
                    diagnostics.push(error(
                        &workload.kind,
                        &workload.meta,
                        "metadata.name".to_owned(),
                        clash(&named, first),
                    ));
                    diagnostics.push(error(
                        &first_workload.kind,
                        &first_workload.meta,
                        "metadata.name".to_owned(),
                        clash(first_named, &what),
                    ));
                    break;
                }
                None => {
                    pods.insert(key, (what, workload, named));
                }
            }
        }
    }
    diagnostics
}

/// A view of `catalog` for building sidecars' resources outside a running controller: no
/// pods, patches allowed and none withdrawn.
fn offline_view<'a>(
    catalog: &'a Catalog,
    trust_domain: &'a str,
    withdrawn: &'a BTreeMap<String, BTreeMap<PatchKey, PatchError>>,
    ready: &'a BTreeSet<String>,
) -> MeshView<'a> {
    MeshView {
        catalog,
        pods: &[],
        nodes: &[],
        ready,
        trust_domain,
        bundle: "",
        module: "weft.wasm",
        allow_patches: true,
        withdrawn,
    }
}

/// The listeners, clusters and routes the controller generates for `pod`'s sidecar, before
/// any EnvoyPatch: what a patch is applied to.
pub fn generated_resources(catalog: &Catalog, trust_domain: &str, pod: &Pod) -> SidecarResources {
    let (withdrawn, ready) = (BTreeMap::new(), BTreeSet::new());
    let view = offline_view(catalog, trust_domain, &withdrawn, &ready);
    describe_sidecar(&view, &mut Plan::default(), pod)
        .0
        .resources()
}

/// Every EnvoyPatch of `catalog` tried on the sidecar of each workload it selects, as the
/// controller would apply it (`weft check`): an error for each resource patch that would be
/// refused, naming the workload; a warning for a patch that selects no workload.
pub fn check_patches(catalog: &Catalog, trust_domain: &str) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let (withdrawn, ready) = (BTreeMap::new(), BTreeSet::new());
    let view = offline_view(catalog, trust_domain, &withdrawn, &ready);
    let mut plan = Plan::default();
    for patch in &catalog.envoy_patches {
        let report = |severity, field: String, message: String| Diagnostic {
            severity,
            kind: Some("EnvoyPatch".to_owned()),
            namespace: Some(patch.meta.namespace.clone()),
            name: Some(patch.meta.name.clone()),
            field,
            origin: patch.meta.origin.clone(),
            message,
        };
        let workloads: Vec<_> = catalog
            .workloads
            .iter()
            .filter(|w| patch.selects(&w.meta.namespace, &w.labels))
            .collect();
        if workloads.is_empty() {
            diagnostics.push(report(
                Severity::Warning,
                "spec.selector".to_owned(),
                "selects no workload in these manifests; it changes nothing".to_owned(),
            ));
        }
        for workload in workloads {
            let pod = Pod {
                namespace: workload.meta.namespace.clone(),
                name: format!("{}-0", workload.meta.name),
                workload: workload.meta.name.clone(),
                service_account: workload.service_account.clone(),
                labels: workload.labels.clone(),
                pod_ip: Ipv4Addr::new(127, 0, 0, 1),
                app_ip: Ipv4Addr::new(127, 0, 0, 2),
                ports: workload.ports.clone(),
                module: None,
            };
            let (sidecar, _) = describe_sidecar(&view, &mut plan, &pod);
            let mut resources = sidecar.resources();
            for outcome in crate::patch::apply(
                &[patch],
                &mut resources,
                &BTreeMap::new(),
                &mut plan.patches,
            ) {
                if let Some(problem) = outcome.problem {
                    let mut field = format!("spec.patches[{}]", outcome.key.index);
                    if let crate::patch::PatchError::Operation { index, .. }
                    | crate::patch::PatchError::Invalid { index, .. } = &problem
                    {
                        field.push_str(&format!(".operations[{index}]"));
                    }
                    diagnostics.push(report(
                        Severity::Error,
                        field,
                        format!(
                            "on {} {}/{}: {problem}",
                            workload.kind, workload.meta.namespace, workload.meta.name
                        ),
                    ));
                }
            }
        }
    }
    diagnostics
}

/// The snapshot of `pod`'s sidecar, with its workload certificate `certificate` (PEM) and the
/// rebuild's `endpoints` ([`Plan::endpoints`], computed once per rebuild: digesting the pods for
/// each pod made a rebuild quadratic), from what `plan` computed once for the rebuild and the
/// resources `interner` already holds; with what became of each EnvoyPatch selecting the pod.
///
/// # Errors
/// When its policy does not compile or a resource cannot be rendered.
pub fn sidecar_snapshot(
    view: &MeshView<'_>,
    plan: &mut Plan,
    interner: &mut Interner,
    pod: &Pod,
    certificate: &weft_certs::CertifiedKey,
    endpoints: &Arc<Resources>,
) -> Result<(Snapshot, Vec<PatchReport>), MeshError> {
    let patches: Vec<&weft_policy::extension::EnvoyPatch> = view
        .catalog
        .envoy_patches
        .iter()
        .filter(|patch| patch.selects(&pod.namespace, &pod.labels))
        .collect();
    let mut snapshot = Snapshot::new();
    let reports = if view.allow_patches && !patches.is_empty() {
        // Patched: this pod's resources are its own.
        let (sidecar, _) = describe_sidecar(view, plan, pod);
        let mut built = sidecar.resources();
        let none = BTreeMap::new();
        let withdrawn = view.withdrawn.get(&pod.node_id()).unwrap_or(&none);
        let reports = crate::patch::apply(&patches, &mut built, withdrawn, &mut plan.patches);
        for listener in &built.listeners {
            snapshot.insert(LISTENER, interner.resource(&listener.name, any(listener))?);
        }
        for cluster in &built.clusters {
            snapshot.insert(CLUSTER, interner.resource(&cluster.name, any(cluster))?);
        }
        for route in &built.routes {
            snapshot.insert(ROUTE, interner.resource(&route.name, any(route))?);
        }
        reports
    } else {
        // Unpatched: the outbound clusters are the mesh's and the routes its namespace's, built
        // once and shared; only its listeners and inbound clusters are its own.
        let (sidecar, _) = describe_ports(view, pod);
        let services = plan.services(view, &pod.namespace);
        let own = sidecar.inbound_resources();
        for listener in own
            .listeners
            .iter()
            .chain(&sidecar.listeners_for(&services))
        {
            snapshot.insert(LISTENER, interner.resource(&listener.name, any(listener))?);
        }
        for cluster in &own.clusters {
            snapshot.insert(CLUSTER, interner.resource(&cluster.name, any(cluster))?);
        }
        snapshot.add_layer(CLUSTER, plan.clusters(view, interner, &sidecar, pod)?);
        snapshot.set_type(ROUTE, plan.routes(view, interner, &pod.namespace)?);
        crate::patch::disabled(&patches)
    };
    snapshot.set_type(ENDPOINT, endpoints.clone());
    snapshot.insert(
        SECRET,
        interner.resource(
            WORKLOAD_CERTIFICATE,
            any(&certificate_secret(
                WORKLOAD_CERTIFICATE,
                &certificate.cert_pem,
                &certificate.key_pem,
            )),
        )?,
    );
    snapshot.insert(
        SECRET,
        interner.resource(TRUST_BUNDLE, any(&trust_secret(TRUST_BUNDLE, view.bundle)))?,
    );
    snapshot.set_type(
        EXTENSION_CONFIG,
        sidecar_plugins(view, plan, interner, pod)?,
    );
    debug_assert_eq!(
        weft_xds::snapshot::EXTENSION_CONFIG,
        weft_envoy_config::pb::envoy::config::core::v3::TypedExtensionConfig::type_url()
    );
    Ok((snapshot, reports))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_policy::object::ObjectKey;

    const MESH: &str = "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: api, namespace: shop}\nspec:\n  matches: [{name: all, pathRegex: /.*}]\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: to-checkout, namespace: shop}\nspec:\n  destination: {kind: ServiceAccount, name: checkout, namespace: shop}\n  sources: [{kind: ServiceAccount, name: frontend, namespace: shop}]\n  rules: [{kind: HTTPRouteGroup, name: api}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: checkout, namespace: shop}\nspec:\n  selector: {app: checkout}\n  ports: [{port: 8080}]\n";

    fn catalog(text: &str) -> Catalog {
        let (catalog, problems) = weft_policy::check([("m.yaml", text)]);
        assert!(!problems.iter().any(Diagnostic::is_error), "{problems:?}");
        catalog
    }

    fn changed(kind: &str, name: &str) -> BTreeSet<ObjectKey> {
        BTreeSet::from([ObjectKey {
            kind: kind.to_owned(),
            namespace: "shop".to_owned(),
            name: name.to_owned(),
        }])
    }

    fn identities(names: &[&str]) -> Dirty {
        Dirty::Policy {
            inbound: names
                .iter()
                .map(|sa| Identity {
                    namespace: "shop".to_owned(),
                    service_account: (*sa).to_owned(),
                })
                .collect(),
            outbound: false,
        }
    }

    #[test]
    fn a_traffic_target_edit_stales_the_inbound_policy_of_its_old_and_new_destinations_only() {
        let old = catalog(MESH);
        let new = catalog(&MESH.replace(
            "name: checkout, namespace: shop}\n  sources",
            "name: db, namespace: shop}\n  sources",
        ));
        assert_eq!(
            dirty(&old, &new, &changed("TrafficTarget", "to-checkout")),
            identities(&["checkout", "db"])
        );
    }

    #[test]
    fn a_route_group_edit_stales_the_destinations_that_name_it_unless_a_traffic_policy_may() {
        let old = catalog(MESH);
        let new = catalog(&MESH.replace("pathRegex: /.*", "pathRegex: /cart"));
        assert_eq!(
            dirty(&old, &new, &changed("HTTPRouteGroup", "api")),
            identities(&["checkout"])
        );
        let policy = "---\napiVersion: policy.weft.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: checkout}\n  timeouts: {request: 5s}\n";
        let with_policy = catalog(&format!("{MESH}{policy}"));
        assert_eq!(
            dirty(
                &with_policy,
                &with_policy,
                &changed("HTTPRouteGroup", "api")
            ),
            Dirty::All
        );
    }

    #[test]
    fn any_other_kind_stales_everything_and_merging_keeps_the_widest() {
        let old = catalog(MESH);
        assert_eq!(
            dirty(&old, &old, &changed("Service", "checkout")),
            Dirty::All
        );
        assert_eq!(dirty(&old, &old, &BTreeSet::new()), Dirty::Nothing);
        let mut merged = identities(&["a"]);
        merged.merge(identities(&["b"]));
        assert_eq!(merged, identities(&["a", "b"]));
        merged.merge(dirty(&old, &old, &changed("TrafficSplit", "canary")));
        let Dirty::Policy { inbound, outbound } = &merged else {
            panic!("{merged:?}");
        };
        assert!(*outbound && inbound.len() == 2);
        merged.merge(Dirty::All);
        assert_eq!(merged, Dirty::All);
    }

    #[test]
    fn endpoints_are_one_shared_set_of_ready_pods_of_selected_workloads_built_when_pods_change() {
        let catalog = catalog(MESH);
        let pod = |name: &str, ip: u8, app: &str| Pod {
            namespace: "shop".to_owned(),
            name: name.to_owned(),
            workload: "checkout".to_owned(),
            service_account: "checkout".to_owned(),
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            pod_ip: Ipv4Addr::new(10, 0, 0, ip),
            app_ip: Ipv4Addr::new(10, 1, 0, ip),
            ports: vec![8080],
            module: None,
        };
        let pods = [
            pod("checkout-0", 1, "checkout"),
            pod("checkout-1", 2, "checkout"),
            pod("other-0", 3, "other"),
        ];
        let ready = BTreeSet::from(["shop/checkout-0".to_owned(), "shop/other-0".to_owned()]);
        let withdrawn = BTreeMap::new();
        let nodes: Vec<String> = pods.iter().map(Pod::node_id).collect();
        let view = MeshView {
            catalog: &catalog,
            pods: &pods,
            nodes: &nodes,
            ready: &ready,
            trust_domain: "cluster.local",
            bundle: "",
            module: "weft.wasm",
            allow_patches: false,
            withdrawn: &withdrawn,
        };
        let (mut plan, mut interner) = (Plan::default(), Interner::default());
        let first = plan.endpoints(&view, &mut interner).unwrap();
        plan.forget(&identities(&["checkout"]));
        let again = plan.endpoints(&view, &mut interner).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "built again only when pods change"
        );
        let assignment: weft_envoy_config::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
            prost::Message::decode(first["checkout.shop"].body.value.as_slice()).unwrap();
        let addresses: Vec<String> = assignment
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| format!("{e:?}"))
            .collect();
        assert_eq!(addresses.len(), 1, "{addresses:?}");
        assert!(addresses[0].contains("10.0.0.1"), "{addresses:?}");
        let ready = BTreeSet::from(["shop/checkout-1".to_owned()]);
        let view = MeshView {
            ready: &ready,
            ..view
        };
        let next = plan.endpoints(&view, &mut interner).unwrap();
        let assignment: weft_envoy_config::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
            prost::Message::decode(next["checkout.shop"].body.value.as_slice()).unwrap();
        assert!(
            format!("{assignment:?}").contains("10.0.0.2"),
            "{assignment:?}"
        );
        assert!(
            !format!("{assignment:?}").contains("10.0.0.1"),
            "{assignment:?}"
        );
    }

    #[test]
    fn the_outbound_policy_compiled_once_per_namespace_is_each_identitys_own() {
        let split = "---\napiVersion: v1\nkind: Service\nmetadata: {name: checkout-v2, namespace: shop}\nspec:\n  selector: {app: checkout}\n  ports: [{port: 8080}]\n---\napiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: canary, namespace: shop}\nspec:\n  service: checkout\n  backends: [{service: checkout-v2, weight: 1}]\n";
        let catalog = catalog(&format!("{MESH}{split}"));
        let (withdrawn, ready) = (BTreeMap::new(), BTreeSet::new());
        let view = offline_view(&catalog, "cluster.local", &withdrawn, &ready);
        let mut plan = Plan::default();
        for (namespace, sa) in [("shop", "frontend"), ("shop", "analytics"), ("web", "ui")] {
            let identity = Identity {
                namespace: namespace.to_owned(),
                service_account: sa.to_owned(),
            };
            let shared = plan
                .compiled(&view, &identity, Side::Outbound)
                .unwrap()
                .clone();
            assert_eq!(
                shared,
                compiled(&view, &identity, Side::Outbound).unwrap(),
                "{identity}"
            );
        }
        assert_eq!(plan.outbound.len(), 2, "one compile per namespace");
    }

    /// A shop: frontend calls checkout, split between v1 and v2; checkout-v1 also serves a TCP
    /// port; analytics is allowed nothing.
    fn shop() -> crate::testing::MeshBuilder {
        crate::testing::MeshBuilder::default()
            .deployment("shop", "frontend", "frontend", None, &[8080])
            .deployment("shop", "analytics", "analytics", None, &[8080])
            .deployment("shop", "checkout-v1", "checkout", Some("v1"), &[8080, 5432])
            .deployment("shop", "checkout-v2", "checkout", Some("v2"), &[8080])
            .service("shop", "frontend", "frontend", None, &[(8080, "http")])
            .service("shop", "checkout", "checkout", None, &[(8080, "http")])
            .service(
                "shop",
                "checkout-v1",
                "checkout",
                Some("v1"),
                &[(8080, "http"), (5432, "tcp")],
            )
            .service(
                "shop",
                "checkout-v2",
                "checkout",
                Some("v2"),
                &[(8080, "http")],
            )
            .allow("shop", "frontend-to-checkout", "frontend", "checkout")
            .split(
                "shop",
                "canary",
                "checkout",
                &[("checkout-v1", 90), ("checkout-v2", 10)],
            )
    }

    fn names(snapshot: &Snapshot, type_url: &str) -> Vec<String> {
        snapshot
            .resources(type_url)
            .map(|layers| layers.values().map(|r| r.name.clone()).collect())
            .unwrap_or_default()
    }

    fn certificate() -> weft_certs::CertifiedKey {
        weft_certs::CertifiedKey {
            cert_pem: "certificate".to_owned(),
            key_pem: "key".to_owned(),
        }
    }

    #[test]
    fn a_sidecar_gets_a_listener_per_port_the_mesh_service_clusters_and_its_own_secrets_by_name() {
        use crate::testing::{ViewParts, pod};
        let catalog = shop().catalog();
        let pods = vec![
            pod(&catalog, "shop", "frontend", 1, 0),
            pod(&catalog, "shop", "checkout-v1", 2, 0),
            pod(&catalog, "shop", "checkout-v1", 2, 1),
            pod(&catalog, "shop", "checkout-v2", 3, 0),
        ];
        // checkout-v1-1's sidecar is not ready: no endpoint of it anywhere.
        let parts = ViewParts::new(&pods, |node| node != "shop/checkout-v1-1");
        let view = parts.view(&catalog, &pods);
        let (mut plan, mut interner) = (Plan::default(), Interner::default());
        let endpoints = plan.endpoints(&view, &mut interner).unwrap();
        let build = |plan: &mut Plan, interner: &mut Interner, pod: &Pod| {
            sidecar_snapshot(&view, plan, interner, pod, &certificate(), &endpoints)
                .unwrap()
                .0
        };
        let frontend = build(&mut plan, &mut interner, &pods[0]);
        let checkout = build(&mut plan, &mut interner, &pods[1]);

        let listeners = names(&frontend, LISTENER);
        assert!(
            listeners.contains(&weft_envoy_config::mesh::inbound_name(8080)),
            "{listeners:?}"
        );
        assert!(
            listeners
                .iter()
                .any(|l| l == weft_envoy_config::mesh::OUTBOUND),
            "{listeners:?}"
        );
        let checkout_listeners = names(&checkout, LISTENER);
        assert!(
            checkout_listeners.contains(&weft_envoy_config::mesh::inbound_name(5432)),
            "the TCP port is served: {checkout_listeners:?}"
        );
        let clusters = names(&frontend, CLUSTER);
        for service in ["checkout.shop", "checkout-v1.shop", "checkout-v2.shop"] {
            assert!(
                clusters.iter().any(|c| c == service),
                "{service}: {clusters:?}"
            );
        }
        // The Service clusters are one set for the mesh: both proxies hold the same.
        let (mine, theirs) = (
            frontend.resources(CLUSTER).unwrap().pointers(),
            checkout.resources(CLUSTER).unwrap().pointers(),
        );
        assert!(
            mine.iter().any(|layer| theirs.contains(layer)),
            "{mine:?} {theirs:?}"
        );
        // Every proxy's certificate has the one name; the key is its own.
        let mut secrets = names(&frontend, SECRET);
        secrets.sort();
        let mut expected = vec![TRUST_BUNDLE.to_owned(), WORKLOAD_CERTIFICATE.to_owned()];
        expected.sort();
        assert_eq!(secrets, expected);
        // Endpoints: ready pods only, shared by every proxy.
        assert!(frontend.resources(ENDPOINT).unwrap().is_only(&endpoints));
        let assignment = format!(
            "{:?}",
            <weft_envoy_config::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as prost::Message>::decode(
                endpoints["checkout-v1.shop"].body.value.as_slice()
            )
            .unwrap()
        );
        assert!(assignment.contains("10.2.0.1"), "{assignment}");
        assert!(!assignment.contains("10.2.0.2"), "not ready: {assignment}");
        // The plugins: one per inbound port and the outbound one.
        let plugins = names(&frontend, EXTENSION_CONFIG);
        assert!(
            plugins.contains(&weft_envoy_config::mesh::inbound_plugin_name(8080)),
            "{plugins:?}"
        );
        assert!(
            plugins
                .iter()
                .any(|p| p == weft_envoy_config::mesh::OUTBOUND_PLUGIN),
            "{plugins:?}"
        );
    }

    #[test]
    fn a_traffic_target_edit_rebuilds_the_destinations_plugins_and_keeps_everyone_elses() {
        use crate::testing::{ViewParts, pod};
        let before = shop().catalog();
        let after = shop()
            .allow("shop", "analytics-to-checkout", "analytics", "checkout")
            .catalog();
        let plugins = |catalog: &Catalog, plan: &mut Plan, interner: &mut Interner| {
            let pods = vec![
                pod(catalog, "shop", "frontend", 1, 0),
                pod(catalog, "shop", "checkout-v1", 2, 0),
            ];
            let parts = ViewParts::all_ready(&pods);
            let view = parts.view(catalog, &pods);
            pods.iter()
                .map(|pod| sidecar_plugins(&view, plan, interner, pod).unwrap())
                .collect::<Vec<_>>()
        };
        let (mut plan, mut interner) = (Plan::default(), Interner::default());
        let first = plugins(&before, &mut plan, &mut interner);
        let changed = BTreeSet::from([
            ObjectKey {
                kind: "HTTPRouteGroup".to_owned(),
                namespace: "shop".to_owned(),
                name: "analytics-to-checkout".to_owned(),
            },
            ObjectKey {
                kind: "TrafficTarget".to_owned(),
                namespace: "shop".to_owned(),
                name: "analytics-to-checkout".to_owned(),
            },
        ]);
        let dirty = dirty(&before, &after, &changed);
        assert_eq!(dirty, identities(&["checkout"]));
        plan.forget(&dirty);
        let second = plugins(&after, &mut plan, &mut interner);
        assert!(
            Arc::ptr_eq(&first[0], &second[0]),
            "frontend's plugins are kept"
        );
        assert!(
            !Arc::ptr_eq(&first[1], &second[1]),
            "checkout's are rebuilt"
        );
        assert_ne!(first[1], second[1]);
    }
}
