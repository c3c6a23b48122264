//! What one proxy should have: its resources per xDS type, each with a version that names its
//! content, and the version of any set of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use sha2::{Digest, Sha256};

/// The xDS types weft serves, in the order a change is pushed: clusters before their endpoints,
/// both before the listeners that use them, secrets and filter configurations before the
/// listeners that wait for them, routes last (make before break).
pub const PUSH_ORDER: [&str; 6] = [CLUSTER, ENDPOINT, SECRET, LISTENER, EXTENSION_CONFIG, ROUTE];

/// CDS.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// EDS.
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// LDS.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// RDS.
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// SDS.
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// ECDS.
pub const EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

/// Whether a type is asked for as a whole (an empty list of names means every resource) rather
/// than by name.
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == CLUSTER || type_url == LISTENER
}

/// The short name of an xDS type for logs and metrics (`cds`, `eds`, ...).
pub fn short_name(type_url: &str) -> &'static str {
    match type_url {
        CLUSTER => "cds",
        ENDPOINT => "eds",
        LISTENER => "lds",
        ROUTE => "rds",
        SECRET => "sds",
        EXTENSION_CONFIG => "ecds",
        _ => "other",
    }
}

/// One resource: its name, a version derived from its content (the caller's canonical
/// digest: equal content, equal version), and the resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Resource name.
    pub name: String,
    /// Version of its content.
    pub version: String,
    /// The resource.
    pub body: Any,
}

// `Any` is a type URL and bytes: its equality is an equivalence, so shared resources compare
// by pointer first (`Arc`'s equality does for `Eq` types).
impl Eq for Resource {}

/// The resources of one type, by name.
pub type Resources = BTreeMap<String, Arc<Resource>>;

/// Every resource of one proxy, by type and name. Resources are shared (`Arc`), and so are
/// whole types: every proxy holds the same endpoints once, and a change of endpoints alone
/// gives each proxy's snapshot the new set without copying the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    types: BTreeMap<String, Arc<Resources>>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a resource of `type_url`.
    pub fn insert(&mut self, type_url: &str, resource: impl Into<Arc<Resource>>) {
        let resource = resource.into();
        Arc::make_mut(self.types.entry(type_url.to_owned()).or_default())
            .insert(resource.name.clone(), resource);
    }

    /// Makes `resources` (shared with other snapshots) every resource of `type_url`.
    pub fn set_type(&mut self, type_url: &str, resources: Arc<Resources>) {
        self.types.insert(type_url.to_owned(), resources);
    }

    /// The resources of `type_url` as the set other snapshots may share.
    pub fn shared(&self, type_url: &str) -> Option<&Arc<Resources>> {
        self.types.get(type_url)
    }

    /// The resources of `type_url`, by name.
    pub fn resources(&self, type_url: &str) -> Option<&Resources> {
        self.types.get(type_url).map(AsRef::as_ref)
    }

    /// How many resources it holds.
    pub fn len(&self) -> usize {
        self.types.values().map(|resources| resources.len()).sum()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A shared, immutable snapshot.
pub type SharedSnapshot = Arc<Snapshot>;

/// The version of `type_url` a proxy subscribed to every resource of that type in `snapshot`
/// is sent (the one it then acknowledges).
pub fn type_version(snapshot: &Snapshot, type_url: &str) -> String {
    set_version(
        snapshot
            .resources(type_url)
            .into_iter()
            .flat_map(BTreeMap::values)
            .map(AsRef::as_ref),
    )
}

/// The version of a response holding `resources`: a digest of their names and versions, so a
/// response with the same content always has the same version, whatever else changed.
pub fn set_version<'r>(resources: impl IntoIterator<Item = &'r Resource>) -> String {
    let mut hasher = Sha256::new();
    for resource in resources {
        hasher.update(resource.name.as_bytes());
        hasher.update([0]);
        hasher.update(resource.version.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
