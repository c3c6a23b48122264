//! Applying the EnvoyPatches that select a proxy to its generated resources, each checked by
//! the [`super::guard`], with a cache of what a patch made of a resource.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;

use prost::{Message, Name};
use serde_json::Value;
use sha2::{Digest, Sha256};
use weft_envoy_config::constraints;
use weft_envoy_config::mesh::SidecarResources;
use weft_envoy_config::pb::envoy::config::cluster::v3::Cluster;
use weft_envoy_config::pb::envoy::config::listener::v3::Listener;
use weft_envoy_config::pb::envoy::config::route::v3::RouteConfiguration;
use weft_envoy_config::render::{from_json, to_json};
use weft_policy::extension::{EnvoyPatch, PatchedType, ResourcePatch};
use weft_xds::snapshot::{CLUSTER, LISTENER, ROUTE};

use super::guard::ResourceKind;
use super::{PatchError, PatchKey, PatchReport, key};

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
    super::guard::check(kind, name, original, &rendered(patched)?).map_err(PatchError::Guard)
}

/// What patching gave, by the resource's bytes and the patch: the pods of a namespace share
/// their outbound resources, so one rebuild patches each distinct resource once (a patch costs
/// a JSON round trip and a constraint walk per operation: about 2 ms for the outbound routes).
#[derive(Debug, Default)]
pub struct PatchCache {
    pub(super) results: HashMap<([u8; 32], PatchKey), Result<Vec<u8>, PatchError>>,
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
            type_name: resource.resource_type.name().to_owned(),
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
                Some(problem) => (type_url(resource.resource_type), Err(problem.clone())),
                None => apply_one(resource, &key, resources, cache),
            };
            reports.push(PatchReport {
                key,
                resource: format!("{} {}", resource.resource_type, resource.name),
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
                resource: format!("{} {}", resource.resource_type, resource.name),
                type_url: type_url(resource.resource_type),
                problem: Some(PatchError::Disabled),
            })
        })
        .collect()
}

/// The xDS type URL of a patchable type.
pub fn type_url(resource_type: PatchedType) -> &'static str {
    match resource_type {
        PatchedType::Listener => LISTENER,
        PatchedType::Cluster => CLUSTER,
        PatchedType::RouteConfiguration => ROUTE,
    }
}

fn apply_one(
    resource: &ResourcePatch,
    key: &PatchKey,
    resources: &mut SidecarResources,
    cache: &mut PatchCache,
) -> (&'static str, Result<(), PatchError>) {
    let result = match resource.resource_type {
        PatchedType::Listener => patch_in(
            &mut resources.listeners,
            resource,
            key,
            cache,
            |l: &Listener| &l.name,
            ResourceKind::Listener,
        ),
        PatchedType::Cluster => patch_in(
            &mut resources.clusters,
            resource,
            key,
            cache,
            |c: &Cluster| &c.name,
            ResourceKind::Cluster,
        ),
        PatchedType::RouteConfiguration => patch_in(
            &mut resources.routes,
            resource,
            key,
            cache,
            |r: &RouteConfiguration| &r.name,
            ResourceKind::Route,
        ),
    };
    (type_url(resource.resource_type), result)
}
