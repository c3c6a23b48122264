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

/// The resources of one type in a snapshot: sets shared with other snapshots, layered. The
/// proxy is served their union; where two layers hold a name, the later one's resource is
/// served. A proxy's own clusters and the mesh's Service clusters are two layers, so thousands
/// of proxies hold the mesh's clusters once rather than a map of them each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layers(Vec<Arc<Resources>>);

impl Layers {
    /// The resource served as `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.0.iter().rev().find_map(|layer| layer.get(name))
    }

    /// Whether a resource is served as `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The resources served, in the order of their names.
    pub fn values(&self) -> impl Iterator<Item = &Arc<Resource>> {
        let mut heads: Vec<_> = self.0.iter().map(|layer| layer.iter().peekable()).collect();
        std::iter::from_fn(move || {
            // The least name among the layers' next ones; the latest layer holding it wins.
            let (mut least, mut winner): (Option<&String>, Option<usize>) = (None, None);
            for (index, head) in heads.iter_mut().enumerate() {
                if let Some((name, _)) = head.peek()
                    && least.is_none_or(|least| *name <= least)
                {
                    least = Some(*name);
                    winner = Some(index);
                }
            }
            let least = least?.clone();
            let mut served = None;
            for (index, head) in heads.iter_mut().enumerate() {
                if let Some((name, _)) = head.peek()
                    && **name == least
                {
                    let (_, resource) = head.next()?;
                    if Some(index) == winner {
                        served = Some(resource);
                    }
                }
            }
            served
        })
    }

    /// How many resources are served.
    pub fn len(&self) -> usize {
        match self.0.as_slice() {
            [] => 0,
            [only] => only.len(),
            _ => self.values().count(),
        }
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|layer| layer.is_empty())
    }

    /// Whether `other` is made of the very same sets (a pointer comparison per layer): then
    /// it serves the same resources, and what was computed from one holds for the other.
    pub fn same_sets(&self, other: &Layers) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(mine, theirs)| Arc::ptr_eq(mine, theirs))
    }

    /// The addresses of its sets, which identify them while they are held.
    pub fn pointers(&self) -> Vec<usize> {
        self.0
            .iter()
            .map(|layer| Arc::as_ptr(layer) as usize)
            .collect()
    }

    /// Weak references to its sets: they keep the sets' addresses from being reused, not the
    /// sets.
    pub fn downgrade(&self) -> Vec<std::sync::Weak<Resources>> {
        self.0.iter().map(Arc::downgrade).collect()
    }

    /// Whether `set` is its only layer.
    pub fn is_only(&self, set: &Arc<Resources>) -> bool {
        matches!(self.0.as_slice(), [only] if Arc::ptr_eq(only, set))
    }
}

/// Every resource of one proxy, by type and name. Resources are shared (`Arc`), and so are
/// whole sets of a type ([`Layers`]): every proxy holds the same endpoints once, and a change
/// of endpoints alone gives each proxy's snapshot the new set without copying the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    types: BTreeMap<String, Layers>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a resource of `type_url`, in the snapshot's own (first) layer of it.
    pub fn insert(&mut self, type_url: &str, resource: impl Into<Arc<Resource>>) {
        let resource = resource.into();
        let layers = &mut self.types.entry(type_url.to_owned()).or_default().0;
        if layers.is_empty() {
            layers.push(Arc::default());
        }
        Arc::make_mut(&mut layers[0]).insert(resource.name.clone(), resource);
    }

    /// Makes `resources` (shared with other snapshots) every resource of `type_url`.
    pub fn set_type(&mut self, type_url: &str, resources: Arc<Resources>) {
        self.types
            .insert(type_url.to_owned(), Layers(vec![resources]));
    }

    /// Adds `resources` (shared with other snapshots) to those of `type_url`, over those it
    /// has.
    pub fn add_layer(&mut self, type_url: &str, resources: Arc<Resources>) {
        self.types
            .entry(type_url.to_owned())
            .or_default()
            .0
            .push(resources);
    }

    /// The resources of `type_url`.
    pub fn resources(&self, type_url: &str) -> Option<&Layers> {
        self.types.get(type_url)
    }

    /// How many resources it holds.
    pub fn len(&self) -> usize {
        self.types.values().map(Layers::len).sum()
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
            .flat_map(Layers::values)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str, content: &str) -> Arc<Resource> {
        Arc::new(Resource {
            name: name.to_owned(),
            version: content.to_owned(),
            body: Any::default(),
        })
    }

    fn set(entries: &[(&str, &str)]) -> Arc<Resources> {
        Arc::new(
            entries
                .iter()
                .map(|(name, content)| ((*name).to_owned(), resource(name, content)))
                .collect(),
        )
    }

    #[test]
    fn layers_serve_their_union_in_name_order_the_later_layer_winning_a_name() {
        let mut layered = Snapshot::new();
        layered.insert(CLUSTER, resource("inbound:8080", "app"));
        layered.insert(CLUSTER, resource("m", "own"));
        layered.add_layer(CLUSTER, set(&[("a", "1"), ("m", "shared"), ("z", "2")]));
        let layers = layered.resources(CLUSTER).unwrap();
        let served: Vec<(&str, &str)> = layers
            .values()
            .map(|r| (r.name.as_str(), r.version.as_str()))
            .collect();
        assert_eq!(
            served,
            [
                ("a", "1"),
                ("inbound:8080", "app"),
                ("m", "shared"),
                ("z", "2")
            ]
        );
        assert_eq!(layers.len(), 4);
        assert_eq!(layered.len(), 4);
        assert_eq!(layers.get("m").unwrap().version, "shared");
        assert!(layers.contains_key("inbound:8080"));
        assert!(!layers.contains_key("b"));

        // The version is the one of the same resources in one set.
        let mut flat = Snapshot::new();
        for (name, content) in [
            ("a", "1"),
            ("inbound:8080", "app"),
            ("m", "shared"),
            ("z", "2"),
        ] {
            flat.insert(CLUSTER, resource(name, content));
        }
        assert_eq!(
            type_version(&layered, CLUSTER),
            type_version(&flat, CLUSTER)
        );
    }

    #[test]
    fn layers_are_the_same_sets_only_when_every_layer_is_the_very_same() {
        let shared = set(&[("a", "1")]);
        let mut one = Snapshot::new();
        one.insert(CLUSTER, resource("own", "1"));
        one.add_layer(CLUSTER, shared.clone());
        let copy = one.clone();
        assert!(
            one.resources(CLUSTER)
                .unwrap()
                .same_sets(copy.resources(CLUSTER).unwrap())
        );
        let mut other = one.clone();
        other.add_layer(CLUSTER, set(&[("b", "1")]));
        assert!(
            !one.resources(CLUSTER)
                .unwrap()
                .same_sets(other.resources(CLUSTER).unwrap())
        );
        let mut equal_content = Snapshot::new();
        equal_content.insert(CLUSTER, resource("own", "1"));
        equal_content.add_layer(CLUSTER, set(&[("a", "1")]));
        assert!(
            !one.resources(CLUSTER)
                .unwrap()
                .same_sets(equal_content.resources(CLUSTER).unwrap())
        );
        let mut only = Snapshot::new();
        only.set_type(ENDPOINT, shared.clone());
        assert!(only.resources(ENDPOINT).unwrap().is_only(&shared));
        assert!(!one.resources(CLUSTER).unwrap().is_only(&shared));
    }
}
