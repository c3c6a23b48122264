//! EnvoyPatches applied to one sidecar's generated resources, after everything else: each
//! resource patch's RFC 6902 operations on the resource's Envoy JSON, the result read back into
//! its typed proto (unknown fields and wrong types refused, as Envoy refuses them), and the
//! guard ([`crate::guard`]): a patch changes only what cannot change who reaches what. A patch
//! that fails is left out for this proxy alone, with a reason naming the patch, the operation
//! and the JSON path; the proxy gets the unpatched resource. Pure: the runtime keeps which
//! patches a proxy refused (NACK) and passes them in as withdrawn.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;

use prost::{Message, Name};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use weft_envoy_config::constraints;
use weft_envoy_config::mesh::SidecarResources;
use weft_envoy_config::pb::envoy::config::cluster::v3::Cluster;
use weft_envoy_config::pb::envoy::config::listener::v3::Listener;
use weft_envoy_config::pb::envoy::config::route::v3::RouteConfiguration;
use weft_envoy_config::render::{from_json, to_json};
use weft_policy::extension::{EnvoyPatch, ResourcePatch};
use weft_xds::snapshot::{CLUSTER, LISTENER, ROUTE};

use crate::guard::ResourceKind;

/// Why a resource patch was not applied to a proxy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// No generated resource of that type and name for this proxy.
    #[error("this proxy has no {type_name} named {name:?}; its {type_name}s are {available}")]
    NoTarget {
        /// The type.
        type_name: String,
        /// The name.
        name: String,
        /// The names it has.
        available: String,
    },
    /// An operation that cannot be applied (a path that does not exist, a failed test).
    #[error("operations[{index}] ({op} {path}): {reason}")]
    Operation {
        /// Its index.
        index: usize,
        /// `op`.
        op: String,
        /// `path`.
        path: String,
        /// Why.
        reason: String,
    },
    /// The patched resource is not a valid Envoy resource of its type.
    #[error("operations[{index}] ({op} {path}): the patched {type_name} is not valid: {reason}")]
    Invalid {
        /// The first operation after which it stopped being valid.
        index: usize,
        /// `op`.
        op: String,
        /// `path`.
        path: String,
        /// The type.
        type_name: String,
        /// What the reader says.
        reason: String,
    },
    /// A patch that renames the resource.
    #[error("renames {from:?} to {to:?}; a patch changes a resource, it cannot rename one")]
    Renamed {
        /// The name before.
        from: String,
        /// The name after.
        to: String,
    },
    /// A patch that would change what decides who reaches what.
    #[error("{0}")]
    Guard(crate::guard::Breach),
    /// Envoy refused the configuration with this patch (a NACK).
    #[error("Envoy refused it: {0}")]
    Refused(String),
    /// Patches are off in this controller.
    #[error("patches are off; start the controller with --allow-patches to apply them")]
    Disabled,
}

/// One resource patch of one EnvoyPatch, as it was written: editing it makes a new key, so a
/// patch withdrawn after a NACK is tried again once changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PatchKey {
    /// The EnvoyPatch, `namespace/name`.
    pub patch: String,
    /// Its index in `spec.patches`.
    pub index: usize,
    /// A digest of what it says.
    pub digest: String,
}

/// What became of one resource patch for one proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchReport {
    /// Which.
    pub key: PatchKey,
    /// The resource, `Type name`.
    pub resource: String,
    /// The xDS type URL of the resource.
    pub type_url: &'static str,
    /// `None` when applied; why not otherwise.
    pub problem: Option<PatchError>,
}

impl PatchReport {
    /// Whether it is in the proxy's configuration.
    pub fn applied(&self) -> bool {
        self.problem.is_none()
    }
}

fn key(patch: &EnvoyPatch, resource: &ResourcePatch) -> PatchKey {
    let mut hasher = Sha256::new();
    hasher.update(resource.type_name.as_bytes());
    hasher.update([0]);
    hasher.update(resource.name.as_bytes());
    hasher.update([0]);
    hasher.update(
        Value::Array(resource.operations.clone())
            .to_string()
            .as_bytes(),
    );
    PatchKey {
        patch: format!("{}/{}", patch.meta.namespace, patch.meta.name),
        index: resource.position,
        digest: hasher.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

fn text(operation: &Value, field: &str) -> String {
    operation
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `resource` as Envoy's JSON, or why it cannot be rendered.
fn rendered<T: Message + Name>(resource: &T) -> Result<Value, PatchError> {
    to_json(resource).map_err(|err| PatchError::Invalid {
        index: 0,
        op: String::new(),
        path: String::new(),
        type_name: T::NAME.to_owned(),
        reason: err.to_string(),
    })
}

/// `operations` applied to `original`, the JSON of a resource of type `T`, read back as `T`.
fn patched<T: Message + Name + Default>(
    original: &Value,
    operations: &[Value],
) -> Result<T, PatchError> {
    let type_name = T::NAME.to_owned();
    let mut document = original.clone();
    let mut result: Result<T, (usize, String, String, String)> =
        from_json::<T>(&document).map_err(|err| (0, String::new(), String::new(), err.to_string()));
    for (index, operation) in operations.iter().enumerate() {
        let (op, path) = (text(operation, "op"), text(operation, "path"));
        let failed = |reason: String| PatchError::Operation {
            index,
            op: op.clone(),
            path: path.clone(),
            reason,
        };
        let parsed: json_patch::PatchOperation =
            serde_json::from_value(operation.clone()).map_err(|err| failed(err.to_string()))?;
        // The library panics if it cannot undo a failed operation; a patch must never take the
        // controller down, so a panic is an error like any other.
        let mut next = document.clone();
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            json_patch::patch(&mut next, std::slice::from_ref(&parsed))
        })) {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(failed(err.kind.to_string())),
            Err(_) => return Err(failed("the patch library failed on it".to_owned())),
        }
        document = next;
        // Read back after each operation, so that the one that made it invalid is named (a
        // later one may make it valid again: a move done as copy and remove).
        let read = from_json::<T>(&document)
            .map_err(|err| err.to_string())
            .and_then(|typed| {
                constraints::check(&typed)
                    .map(|()| typed)
                    .map_err(|err| err.to_string())
            });
        match read {
            Ok(typed) => result = Ok(typed),
            Err(reason) => {
                if result.is_ok() {
                    result = Err((index, op, path, reason));
                }
            }
        }
    }
    result.map_err(|(index, op, path, reason)| PatchError::Invalid {
        index,
        op,
        path,
        type_name,
        reason,
    })
}

/// Checks that `patched` changes nothing of `original` (the JSON of a resource of `kind`) but
/// the safe fields of its side ([`crate::guard`]), comparing both as Envoy's JSON (the patched
/// one rendered anew, as the proxy would read it).
fn keeps_guard<T: Message + Name>(
    kind: ResourceKind,
    name: &str,
    original: &Value,
    patched: &T,
) -> Result<(), PatchError> {
    crate::guard::check(kind, name, original, &rendered(patched)?).map_err(PatchError::Guard)
}

/// What patching gave, by the resource's bytes and the patch: the pods of a namespace share
/// their outbound resources, so one rebuild patches each distinct resource once (a patch costs
/// a JSON round trip and a constraint walk per operation: about 2 ms for the outbound routes).
#[derive(Debug, Default)]
pub struct PatchCache {
    results: HashMap<([u8; 32], PatchKey), Result<Vec<u8>, PatchError>>,
}

/// Patches the resource named `name` of `list` in place: found, patched, not renamed, and
/// changing only what the guard lets a patch change, or left as it was.
fn patch_in<T: Message + Name + Default>(
    list: &mut [T],
    resource: &ResourcePatch,
    key: &PatchKey,
    cache: &mut PatchCache,
    named: impl Fn(&T) -> &str,
    kind: ResourceKind,
) -> Result<(), PatchError> {
    let available: Vec<&str> = list.iter().map(&named).collect();
    let Some(index) = available.iter().position(|n| *n == resource.name) else {
        return Err(PatchError::NoTarget {
            type_name: resource.type_name.clone(),
            name: resource.name.clone(),
            available: available.join(", "),
        });
    };
    let target = &mut list[index];
    let bytes = target.encode_to_vec();
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let result = cache
        .results
        .entry((digest, key.clone()))
        .or_insert_with(|| {
            let original = rendered(&*target)?;
            let new: T = patched(&original, &resource.operations)?;
            if named(&new) != named(target) {
                return Err(PatchError::Renamed {
                    from: named(target).to_owned(),
                    to: named(&new).to_owned(),
                });
            }
            keeps_guard(kind, &resource.name, &original, &new)?;
            Ok(new.encode_to_vec())
        })
        .clone()?;
    *target = T::decode(result.as_slice()).map_err(|err| PatchError::Invalid {
        index: 0,
        op: String::new(),
        path: String::new(),
        type_name: T::NAME.to_owned(),
        reason: err.to_string(),
    })?;
    Ok(())
}

/// Applies the resource patches of `patches` (those selecting this proxy, in name order) to
/// `resources`, except those `withdrawn` for it; returns what became of each.
pub fn apply(
    patches: &[&EnvoyPatch],
    resources: &mut SidecarResources,
    withdrawn: &BTreeMap<PatchKey, PatchError>,
    cache: &mut PatchCache,
) -> Vec<PatchReport> {
    let mut reports = Vec::new();
    for patch in patches {
        for resource in &patch.patches {
            let key = key(patch, resource);
            let (type_url, outcome) = match withdrawn.get(&key) {
                Some(problem) => (type_url(&resource.type_name), Err(problem.clone())),
                None => apply_one(resource, &key, resources, cache),
            };
            reports.push(PatchReport {
                key,
                resource: format!("{} {}", resource.type_name, resource.name),
                type_url,
                problem: outcome.err(),
            });
        }
    }
    reports
}

/// What each resource patch of `patches` would have been for a proxy with patches off.
pub fn disabled(patches: &[&EnvoyPatch]) -> Vec<PatchReport> {
    patches
        .iter()
        .flat_map(|patch| {
            patch.patches.iter().map(|resource| PatchReport {
                key: key(patch, resource),
                resource: format!("{} {}", resource.type_name, resource.name),
                type_url: type_url(&resource.type_name),
                problem: Some(PatchError::Disabled),
            })
        })
        .collect()
}

fn type_url(type_name: &str) -> &'static str {
    match type_name {
        "Listener" => LISTENER,
        "Cluster" => CLUSTER,
        _ => ROUTE,
    }
}

fn apply_one(
    resource: &ResourcePatch,
    key: &PatchKey,
    resources: &mut SidecarResources,
    cache: &mut PatchCache,
) -> (&'static str, Result<(), PatchError>) {
    let result = match resource.type_name.as_str() {
        "Listener" => patch_in(
            &mut resources.listeners,
            resource,
            key,
            cache,
            |l: &Listener| &l.name,
            ResourceKind::Listener,
        ),
        "Cluster" => patch_in(
            &mut resources.clusters,
            resource,
            key,
            cache,
            |c: &Cluster| &c.name,
            ResourceKind::Cluster,
        ),
        _ => patch_in(
            &mut resources.routes,
            resource,
            key,
            cache,
            |r: &RouteConfiguration| &r.name,
            ResourceKind::Route,
        ),
    };
    (type_url(&resource.type_name), result)
}

/// The xDS types a patch can change.
pub const PATCHED_TYPES: [&str; 3] = [LISTENER, CLUSTER, ROUTE];

/// The patches applied in each of a proxy's latest versions of one type, oldest first.
type AppliedByVersion = VecDeque<(String, BTreeSet<PatchKey>)>;

/// How many built versions are remembered per proxy and type: a proxy answers one of its
/// latest few.
const VERSIONS_REMEMBERED: usize = 4;

/// Which patches each proxy was given, applied and refused: a NACK is pinned on the patches new
/// in the refused version (or on all of its patches, when none is new), which are withdrawn for
/// that proxy alone; the rest of its configuration, and every other proxy, is unaffected.
#[derive(Debug, Default)]
pub struct PatchLedger {
    /// By node id: the resource patches it refused.
    pub withdrawn: BTreeMap<String, BTreeMap<PatchKey, PatchError>>,
    /// By node id: what became of each patch in its latest snapshot.
    pub reports: BTreeMap<String, Vec<PatchReport>>,
    /// By node id and type: the patches applied in each of its latest versions.
    built: BTreeMap<(String, &'static str), AppliedByVersion>,
    /// By node id and type: the patches of the version it applied last.
    acked: BTreeMap<(String, &'static str), BTreeSet<PatchKey>>,
}

fn patched_type(type_url: &str) -> Option<&'static str> {
    PATCHED_TYPES.into_iter().find(|t| *t == type_url)
}

impl PatchLedger {
    /// `node` was built with `reports`, its versions per type given by `version`.
    pub fn built(
        &mut self,
        node: &str,
        version: impl Fn(&str) -> String,
        reports: Vec<PatchReport>,
    ) {
        // Most proxies have no patch: they keep nothing here.
        if reports.is_empty() {
            // (Entries are only ever made for a node with reports.)
            if self.reports.remove(node).is_some() {
                self.withdrawn.remove(node);
                for type_url in PATCHED_TYPES {
                    let key = (node.to_owned(), type_url);
                    self.built.remove(&key);
                    self.acked.remove(&key);
                }
            }
            return;
        }
        for type_url in PATCHED_TYPES {
            let applied: BTreeSet<PatchKey> = reports
                .iter()
                .filter(|r| r.applied() && r.type_url == type_url)
                .map(|r| r.key.clone())
                .collect();
            let versions = self.built.entry((node.to_owned(), type_url)).or_default();
            let version = version(type_url);
            if versions.back().is_some_and(|(last, _)| *last == version) {
                continue;
            }
            if versions.len() == VERSIONS_REMEMBERED {
                versions.pop_front();
            }
            versions.push_back((version, applied));
        }
        // A withdrawal ends with the patch (or with its edit, which is a new key).
        if let Some(withdrawn) = self.withdrawn.get_mut(node) {
            withdrawn.retain(|key, _| reports.iter().any(|r| &r.key == key));
        }
        self.reports.insert(node.to_owned(), reports);
    }

    fn applied_in(
        &self,
        node: &str,
        type_url: &'static str,
        version: &str,
    ) -> Option<&BTreeSet<PatchKey>> {
        self.built
            .get(&(node.to_owned(), type_url))?
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, keys)| keys)
    }

    /// `node` applied `version` of `type_url`.
    pub fn acked(&mut self, node: &str, type_url: &str, version: &str) {
        let Some(type_url) = patched_type(type_url).filter(|_| self.reports.contains_key(node))
        else {
            return;
        };
        if let Some(keys) = self.applied_in(node, type_url, version).cloned() {
            self.acked.insert((node.to_owned(), type_url), keys);
        }
    }

    /// `node` refused `version` of `type_url` saying `error`: the patches withdrawn for it
    /// (none when that version had none, or they were withdrawn already).
    pub fn nacked(
        &mut self,
        node: &str,
        type_url: &str,
        version: &str,
        error: &str,
    ) -> Vec<PatchKey> {
        let Some(type_url) = patched_type(type_url).filter(|_| self.reports.contains_key(node))
        else {
            return Vec::new();
        };
        let Some(applied) = self.applied_in(node, type_url, version).cloned() else {
            return Vec::new();
        };
        let before = self
            .acked
            .get(&(node.to_owned(), type_url))
            .cloned()
            .unwrap_or_default();
        let new: Vec<PatchKey> = applied.difference(&before).cloned().collect();
        let suspects = if new.is_empty() {
            applied.into_iter().collect()
        } else {
            new
        };
        let withdrawn = self.withdrawn.entry(node.to_owned()).or_default();
        for key in &suspects {
            withdrawn.insert(key.clone(), PatchError::Refused(error.to_owned()));
        }
        suspects
    }

    /// Forgets the proxies not in `nodes`.
    pub fn retain(&mut self, nodes: &BTreeSet<String>) {
        self.withdrawn.retain(|node, _| nodes.contains(node));
        self.reports.retain(|node, _| nodes.contains(node));
        self.built.retain(|(node, _), _| nodes.contains(node));
        self.acked.retain(|(node, _), _| nodes.contains(node));
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;
    use weft_envoy_config::filters::Code;
    use weft_envoy_config::mesh::{InboundPort, OutboundService, Protocol, Sidecar};
    use weft_policy::model::Meta;

    use super::*;

    fn sidecar() -> SidecarResources {
        sidecar_description().resources()
    }

    fn sidecar_description() -> Sidecar {
        Sidecar {
            pod_ip: Ipv4Addr::new(127, 0, 1, 1),
            app_ip: Ipv4Addr::new(127, 1, 1, 1),
            module: Code::File("/weft.wasm".to_owned()),
            certificate_secret: weft_envoy_config::mesh::WORKLOAD_CERTIFICATE.to_owned(),
            trust_secret: weft_envoy_config::mesh::TRUST_BUNDLE.to_owned(),
            inbound: vec![InboundPort {
                port: 8080,
                protocol: Protocol::Http,
            }],
            services: vec![OutboundService {
                cluster: "checkout.shop".to_owned(),
                hosts: vec!["checkout".to_owned()],
                port: 8080,
                protocol: Protocol::Http,
                identities: vec![],
                traffic: None,
            }],
        }
    }

    fn patch(type_name: &str, name: &str, operations: Value) -> EnvoyPatch {
        EnvoyPatch {
            meta: Meta {
                namespace: "shop".to_owned(),
                name: "p".to_owned(),
                api_version: "policy.weft.io/v1alpha1".to_owned(),
                origin: None,
            },
            selector: BTreeMap::new(),
            patches: vec![ResourcePatch {
                type_name: type_name.to_owned(),
                name: name.to_owned(),
                operations: operations.as_array().cloned().unwrap_or_default(),
                position: 0,
            }],
        }
    }

    fn outcome(patch: &EnvoyPatch) -> (SidecarResources, Option<String>) {
        let mut resources = sidecar();
        let reports = apply(
            &[patch],
            &mut resources,
            &BTreeMap::new(),
            &mut PatchCache::default(),
        );
        (
            resources,
            reports[0].problem.as_ref().map(ToString::to_string),
        )
    }

    #[test]
    fn every_resource_weft_generates_meets_the_constraints_of_its_protos() {
        let (catalog, problems) = weft_policy::check([
            (
                "policy.yaml",
                include_str!("../../examples/policies/checkout.yaml"),
            ),
            (
                "mesh.yaml",
                include_str!("../../examples/mesh/services.yaml"),
            ),
            (
                "access.yaml",
                include_str!("../../examples/mesh/access.yaml"),
            ),
        ]);
        assert!(problems.iter().all(|p| !p.is_error()), "{problems:#?}");
        let service = catalog.service("shop", "checkout").unwrap();
        let traffic = weft_envoy_config::traffic::service_traffic(&catalog, service, 8080);
        assert!(traffic.is_some());
        let mut sidecar = sidecar_description();
        sidecar.services[0].traffic = traffic;
        let resources = sidecar.resources();
        for listener in &resources.listeners {
            constraints::check(listener).unwrap();
        }
        for cluster in &resources.clusters {
            constraints::check(cluster).unwrap();
        }
        for route in &resources.routes {
            constraints::check(route).unwrap();
        }
    }

    #[test]
    fn a_patch_changes_its_resource_and_nothing_else() {
        let header = json!([{"op": "add", "path": "/response_headers_to_add", "value": [
            {"header": {"key": "x-patched", "value": "yes"}}]}]);
        let (resources, problem) = outcome(&patch("RouteConfiguration", "outbound", header));
        assert_eq!(problem, None);
        let original = sidecar();
        assert_eq!(resources.listeners, original.listeners);
        assert_eq!(resources.clusters, original.clusters);
        assert_eq!(resources.routes[0].response_headers_to_add.len(), 1);
        // Through one cache, as the pods of a rebuild share it: the same result each time.
        let mut cache = PatchCache::default();
        for _ in 0..2 {
            let mut again = sidecar();
            let patch = patch(
                "RouteConfiguration",
                "outbound",
                json!([{"op": "add", "path": "/response_headers_to_add", "value": [
                {"header": {"key": "x-patched", "value": "yes"}}]}]),
            );
            let reports = apply(&[&patch], &mut again, &BTreeMap::new(), &mut cache);
            assert!(reports[0].applied());
            assert_eq!(again, resources);
        }
        assert_eq!(cache.results.len(), 1);
    }

    #[test]
    fn a_patch_that_does_not_apply_or_decode_names_the_operation_and_path() {
        let cases = [
            (
                json!([{"op": "replace", "path": "/virtual_hosts/9/name", "value": "x"}]),
                "operations[0] (replace /virtual_hosts/9/name): path is invalid",
            ),
            (
                json!([{"op": "add", "path": "/virtual_hosts/0/no_such_field", "value": 1}]),
                "operations[0] (add /virtual_hosts/0/no_such_field): the patched RouteConfiguration is not valid",
            ),
            (
                json!([{"op": "replace", "path": "/virtual_hosts/0/domains", "value": []}]),
                "operations[0] (replace /virtual_hosts/0/domains): the patched RouteConfiguration is not valid: virtual_hosts[0].domains: needs at least 1 items",
            ),
            (
                json!([{"op": "test", "path": "/name", "value": "inbound"}]),
                "operations[0] (test /name): value did not match",
            ),
            (
                json!([{"op": "replace", "path": "/name", "value": "other"}]),
                "renames \"outbound\" to \"other\"",
            ),
        ];
        for (operations, expected) in cases {
            let (resources, problem) =
                outcome(&patch("RouteConfiguration", "outbound", operations));
            let problem = problem.unwrap_or_default();
            assert!(problem.starts_with(expected), "{problem}");
            assert_eq!(resources, sidecar(), "nothing half-applied");
        }
        let (_, problem) = outcome(&patch(
            "Cluster",
            "nowhere.shop",
            json!([{"op": "remove", "path": "/name"}]),
        ));
        assert_eq!(
            problem.unwrap(),
            "this proxy has no Cluster named \"nowhere.shop\"; its Clusters are inbound:8080, checkout.shop"
        );
    }

    #[test]
    fn no_patch_can_take_the_access_filter_tls_or_path_normalisation_out_of_an_inbound_listener() {
        let chain = "/filter_chains/0";
        let manager = format!("{chain}/filters/0/typed_config");
        let cases = [
            json!([{"op": "remove", "path": format!("{manager}/http_filters/0")}]),
            json!([{"op": "remove", "path": format!("{chain}/transport_socket")}]),
            json!([{"op": "copy", "from": chain, "path": "/default_filter_chain"},
                   {"op": "remove", "path": "/default_filter_chain/transport_socket"}]),
            json!([{"op": "copy", "from": chain, "path": "/filter_chains/-"},
                   {"op": "remove", "path": "/filter_chains/1/filters/0/typed_config/http_filters/0"}]),
            // The filter would judge a path other than the one the application serves.
            json!([{"op": "remove", "path": format!("{manager}/normalize_path")}]),
            json!([{"op": "replace", "path": format!("{manager}/merge_slashes"), "value": false}]),
        ];
        for operations in cases {
            let (resources, problem) =
                outcome(&patch("Listener", "inbound:8080", operations.clone()));
            let problem = problem.unwrap_or_default();
            assert!(
                problem.contains("which decides who reaches what"),
                "{operations}: {problem}"
            );
            assert_eq!(resources, sidecar());
        }
        // What does not touch the guard is allowed, such as handing the application the
        // caller's certificate details (weft's filter reads the connection, not the header).
        for operations in [
            json!([{"op": "add", "path": "/per_connection_buffer_limit_bytes", "value": 65536}]),
            json!([{"op": "add", "path": format!("{manager}/forward_client_cert_details"),
                    "value": "SANITIZE_SET"},
                   {"op": "add", "path": format!("{manager}/set_current_client_cert_details"),
                    "value": {"uri": true}}]),
        ] {
            let (_, problem) = outcome(&patch("Listener", "inbound:8080", operations.clone()));
            assert_eq!(problem, None, "{operations}");
        }
    }

    #[test]
    fn a_nack_withdraws_the_patches_new_in_the_refused_version_for_that_proxy_only() {
        let good = patch(
            "RouteConfiguration",
            "outbound",
            json!([{"op": "add", "path": "/validate_clusters", "value": false}]),
        );
        let mut bad = patch(
            "RouteConfiguration",
            "outbound",
            // Safe by the guard; Envoy refuses to add a pseudo-header.
            json!([{"op": "add", "path": "/virtual_hosts/0/request_headers_to_add",
                    "value": [{"header": {"key": ":path", "value": "/x"}}]}]),
        );
        bad.meta.name = "q".to_owned();
        let mut ledger = PatchLedger::default();
        let build =
            |ledger: &mut PatchLedger, node: &str, patches: &[&EnvoyPatch], version: &str| {
                let mut resources = sidecar();
                let none = BTreeMap::new();
                let withdrawn = ledger.withdrawn.get(node).unwrap_or(&none);
                let reports = apply(
                    patches,
                    &mut resources,
                    withdrawn,
                    &mut PatchCache::default(),
                );
                ledger.built(node, |t| format!("{t}-{version}"), reports);
            };
        build(&mut ledger, "shop/a", &[&good], "1");
        ledger.acked("shop/a", ROUTE, &format!("{ROUTE}-1"));
        build(&mut ledger, "shop/a", &[&good, &bad], "2");
        build(&mut ledger, "shop/b", &[&good, &bad], "2");
        let withdrawn = ledger.nacked("shop/a", ROUTE, &format!("{ROUTE}-2"), "duplicate domain");
        assert_eq!(
            withdrawn
                .iter()
                .map(|k| k.patch.as_str())
                .collect::<Vec<_>>(),
            ["shop/q"]
        );
        build(&mut ledger, "shop/a", &[&good, &bad], "3");
        let reports = &ledger.reports["shop/a"];
        assert!(reports[0].applied());
        assert_eq!(
            reports[1].problem,
            Some(PatchError::Refused("duplicate domain".to_owned()))
        );
        assert!(
            ledger.reports["shop/b"].iter().all(PatchReport::applied),
            "another proxy keeps it"
        );
        // A NACK of a version without patches, or of another type, withdraws nothing.
        assert!(
            ledger
                .nacked("shop/a", CLUSTER, &format!("{CLUSTER}-3"), "x")
                .is_empty()
        );
        // The patch removed: its withdrawal goes with it.
        build(&mut ledger, "shop/a", &[&good], "4");
        assert!(ledger.withdrawn["shop/a"].is_empty());
        // No patch left for the proxy: nothing is kept of it, and a late refusal of a patched
        // version withdraws nothing.
        build(&mut ledger, "shop/a", &[], "5");
        assert!(!ledger.reports.contains_key("shop/a"));
        assert!(!ledger.withdrawn.contains_key("shop/a"));
        assert!(
            ledger
                .nacked("shop/a", ROUTE, &format!("{ROUTE}-4"), "x")
                .is_empty()
        );
    }

    #[test]
    fn a_withdrawn_patch_is_left_out_and_an_edit_makes_it_new() {
        let first = patch(
            "RouteConfiguration",
            "outbound",
            json!([{"op": "add", "path": "/validate_clusters", "value": false}]),
        );
        let mut resources = sidecar();
        let key = apply(
            &[&first],
            &mut resources,
            &BTreeMap::new(),
            &mut PatchCache::default(),
        )[0]
        .key
        .clone();
        let withdrawn = BTreeMap::from([(key.clone(), PatchError::Refused("no".to_owned()))]);
        let mut resources = sidecar();
        let reports = apply(
            &[&first],
            &mut resources,
            &withdrawn,
            &mut PatchCache::default(),
        );
        assert_eq!(
            reports[0].problem,
            Some(PatchError::Refused("no".to_owned()))
        );
        assert_eq!(resources, sidecar());
        let edited = patch(
            "RouteConfiguration",
            "outbound",
            json!([{"op": "add", "path": "/validate_clusters", "value": true}]),
        );
        let reports = apply(
            &[&edited],
            &mut resources,
            &withdrawn,
            &mut PatchCache::default(),
        );
        assert_ne!(reports[0].key, key);
        assert!(reports[0].applied());
    }
}
