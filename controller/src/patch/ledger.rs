//! What became of each proxy's patches: which snapshot versions carried which patches, so that
//! a NACK withdraws, for that proxy alone, the patches new in the version it refused.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use weft_xds::snapshot::{CLUSTER, LISTENER, ROUTE};

use super::{PatchError, PatchKey, PatchReport};

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
