//! The mesh's trust roots and how they change without a request lost. A root rotation is three
//! steps, and each waits for the proxies: the new root joins every proxy's trust bundle; once
//! every proxy has applied that bundle, certificates are issued by the new CA; the old root
//! leaves the bundle only once no proxy holds a certificate it signed. The operator states where
//! the mesh should end (the CA and the trust bundle); [`decide`] works out, from what each proxy
//! has applied, how far the mesh may go now. Removing a root too early is therefore delayed,
//! never obeyed. Pure: the controller feeds it what proxies acknowledged.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A root certificate, known by the SHA-256 of its DER (the first 8 bytes, hex).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RootId(String);

impl RootId {
    /// The id of the certificate `der`.
    pub fn of(der: &[u8]) -> Self {
        Self(
            Sha256::digest(der)[..8]
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
        )
    }
}

impl std::fmt::Display for RootId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What one proxy's applied secrets hold: which root signed its certificate, and which roots
/// it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The root of its workload certificate.
    pub certificate_root: RootId,
    /// Its trust bundle (shared: every proxy is given the same).
    pub bundle: Arc<BTreeSet<RootId>>,
}

/// Where a rotation stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Phase {
    /// Nothing to do: the CA in force is the one asked for, and the bundle is the one asked for.
    #[default]
    Steady,
    /// Step 1: the new CA's root is in the bundle served; certificates are still issued by the
    /// old CA until every proxy has applied it.
    AddingRoot {
        /// The new root.
        root: RootId,
        /// Pods whose proxy has not applied a bundle holding it.
        waiting: Vec<String>,
    },
    /// Step 3: roots no longer asked for are kept until no proxy holds a certificate they
    /// signed (step 2, issuing from the new CA, happened when this began).
    RetiringRoots {
        /// The roots kept.
        roots: Vec<RootId>,
        /// Pods whose proxy holds a certificate one of them signed.
        waiting: Vec<String>,
    },
}

/// What the mesh may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether certificates are to be issued by the CA asked for from now on.
    pub switch_issuer: bool,
    /// The roots every proxy is to trust.
    pub served: BTreeSet<RootId>,
    /// Where the rotation stands, after this decision.
    pub phase: Phase,
}

/// Works out the next step. `wanted_issuer` and `wanted_roots` are what the operator asked for
/// (the issuer's root among the roots); `issuer` is the root of the CA issuing now; `issued` the
/// roots of the certificates currently handed out (applied or not); `held` what each pod's proxy
/// has applied (`None`: not known yet, which waits like a proxy that lacks what is needed).
pub fn decide(
    wanted_issuer: &RootId,
    wanted_roots: &BTreeSet<RootId>,
    issuer: &RootId,
    issued: &BTreeSet<RootId>,
    held: &BTreeMap<String, Option<Held>>,
) -> Decision {
    let lacking_new_root: Vec<String> = held
        .iter()
        .filter(|(_, held)| {
            held.as_ref()
                .is_none_or(|held| !held.bundle.contains(wanted_issuer))
        })
        .map(|(pod, _)| pod.clone())
        .collect();
    let switch_issuer = wanted_issuer != issuer && lacking_new_root.is_empty();
    let issuer = if switch_issuer { wanted_issuer } else { issuer };

    // Every root a certificate in use may chain to stays trusted; after a switch, the
    // certificates issued so far are replaced, so only the proxies' own count.
    let mut served: BTreeSet<RootId> = wanted_roots.clone();
    served.insert(issuer.clone());
    if !switch_issuer {
        served.extend(issued.iter().cloned());
    }
    served.extend(
        held.values()
            .flatten()
            .map(|held| held.certificate_root.clone()),
    );

    let phase = if issuer != wanted_issuer {
        Phase::AddingRoot {
            root: wanted_issuer.clone(),
            waiting: lacking_new_root,
        }
    } else if served != *wanted_roots {
        let kept: BTreeSet<&RootId> = served.difference(wanted_roots).collect();
        Phase::RetiringRoots {
            roots: kept.iter().map(|&root| root.clone()).collect(),
            waiting: held
                .iter()
                .filter(|(_, held)| {
                    held.as_ref()
                        .is_none_or(|held| kept.contains(&held.certificate_root))
                })
                .map(|(pod, _)| pod.clone())
                .collect(),
        }
    } else {
        Phase::Steady
    };
    Decision {
        switch_issuer,
        served,
        phase,
    }
}

/// What proxies hold of the mesh's roots.
#[derive(Debug, Default)]
pub struct TrustLedger {
    /// By node id: what its proxy's applied secrets hold.
    held: BTreeMap<String, Held>,
    /// By node id: what the secrets of its latest snapshots hold, by SDS version.
    built: BTreeMap<String, VecDeque<(String, Held)>>,
}

/// How many snapshots' secrets are remembered per proxy: a proxy acknowledges one of its
/// latest few.
const SECRETS_REMEMBERED: usize = 4;

impl TrustLedger {
    /// `node` was built a snapshot whose secrets, SDS `version`, hold `held`.
    pub fn built(&mut self, node: &str, version: String, held: Held) {
        let versions = self.built.entry(node.to_owned()).or_default();
        if versions.back().is_some_and(|(last, _)| *last == version) {
            return;
        }
        if versions.len() == SECRETS_REMEMBERED {
            versions.pop_front();
        }
        versions.push_back((version, held));
    }

    /// `node` acknowledged SDS `version`; returns whether what it holds changed.
    pub fn acked(&mut self, node: &str, version: &str) -> bool {
        let Some(held) = self
            .built
            .get(node)
            .and_then(|versions| versions.iter().find(|(v, _)| v == version))
            .map(|(_, held)| held.clone())
        else {
            return false;
        };
        self.held.insert(node.to_owned(), held.clone()) != Some(held)
    }

    /// Forgets `node`.
    pub fn forget(&mut self, node: &str) {
        self.held.remove(node);
        self.built.remove(node);
    }

    /// Forgets every node but `nodes`; returns what each of those holds.
    pub fn retain(&mut self, nodes: &BTreeSet<String>) -> BTreeMap<String, Option<Held>> {
        self.held.retain(|node, _| nodes.contains(node));
        self.built.retain(|node, _| nodes.contains(node));
        nodes
            .iter()
            .map(|node| (node.clone(), self.held.get(node).cloned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &str) -> RootId {
        RootId::of(name.as_bytes())
    }

    fn set(roots: &[&str]) -> BTreeSet<RootId> {
        roots.iter().map(|name| root(name)).collect()
    }

    fn holding(certificate: &str, bundle: &[&str]) -> Option<Held> {
        Some(Held {
            certificate_root: root(certificate),
            bundle: Arc::new(set(bundle)),
        })
    }

    fn pods(held: &[(&str, Option<Held>)]) -> BTreeMap<String, Option<Held>> {
        held.iter()
            .map(|(pod, held)| ((*pod).to_owned(), held.clone()))
            .collect()
    }

    #[test]
    fn a_mesh_with_what_was_asked_for_is_steady() {
        let held = pods(&[("a", holding("old", &["old"]))]);
        let decision = decide(
            &root("old"),
            &set(&["old"]),
            &root("old"),
            &set(&["old"]),
            &held,
        );
        assert_eq!(
            decision,
            Decision {
                switch_issuer: false,
                served: set(&["old"]),
                phase: Phase::Steady
            }
        );
    }

    #[test]
    fn a_new_ca_first_joins_the_bundle_and_issues_only_once_every_proxy_trusts_it() {
        // The operator replaced the CA, and asked for the new root alone.
        let (new, wanted) = (root("new"), set(&["new"]));
        let held = pods(&[
            ("a", holding("old", &["old"])),
            ("b", holding("old", &["old"])),
        ]);
        let step = decide(&new, &wanted, &root("old"), &set(&["old"]), &held);
        assert!(!step.switch_issuer);
        assert_eq!(step.served, set(&["old", "new"]));
        assert_eq!(
            step.phase,
            Phase::AddingRoot {
                root: new.clone(),
                waiting: vec!["a".to_owned(), "b".to_owned()]
            }
        );

        // One proxy applied the wider bundle: still waiting for the other.
        let held = pods(&[
            ("a", holding("old", &["old", "new"])),
            ("b", holding("old", &["old"])),
        ]);
        let step = decide(&new, &wanted, &root("old"), &set(&["old"]), &held);
        assert!(!step.switch_issuer);
        assert_eq!(
            step.phase,
            Phase::AddingRoot {
                root: new.clone(),
                waiting: vec!["b".to_owned()]
            }
        );

        // Both did: the issuer switches; the old root stays while they hold its certificates.
        let held = pods(&[
            ("a", holding("old", &["old", "new"])),
            ("b", holding("old", &["old", "new"])),
        ]);
        let step = decide(&new, &wanted, &root("old"), &set(&["old"]), &held);
        assert!(step.switch_issuer);
        assert_eq!(step.served, set(&["old", "new"]));
        assert_eq!(
            step.phase,
            Phase::RetiringRoots {
                roots: vec![root("old")],
                waiting: vec!["a".to_owned(), "b".to_owned()]
            }
        );
    }

    #[test]
    fn the_old_root_leaves_only_once_no_proxy_holds_a_certificate_it_signed() {
        let (new, wanted) = (root("new"), set(&["new"]));
        let held = pods(&[
            ("a", holding("new", &["old", "new"])),
            ("b", holding("old", &["old", "new"])),
        ]);
        let step = decide(&new, &wanted, &new, &set(&["new"]), &held);
        assert!(!step.switch_issuer);
        assert_eq!(step.served, set(&["old", "new"]));
        assert_eq!(
            step.phase,
            Phase::RetiringRoots {
                roots: vec![root("old")],
                waiting: vec!["b".to_owned()]
            }
        );

        let held = pods(&[
            ("a", holding("new", &["old", "new"])),
            ("b", holding("new", &["old", "new"])),
        ]);
        let step = decide(&new, &wanted, &new, &set(&["new"]), &held);
        assert_eq!(step.served, set(&["new"]));
        assert_eq!(step.phase, Phase::Steady);
    }

    #[test]
    fn a_proxy_not_heard_from_holds_the_rotation_back() {
        let held = pods(&[("a", holding("old", &["old", "new"])), ("b", None)]);
        let step = decide(
            &root("new"),
            &set(&["new"]),
            &root("old"),
            &set(&["old"]),
            &held,
        );
        assert!(!step.switch_issuer);
        assert_eq!(
            step.phase,
            Phase::AddingRoot {
                root: root("new"),
                waiting: vec!["b".to_owned()]
            }
        );
    }

    #[test]
    fn a_root_the_operator_keeps_stays_and_a_mesh_without_proxies_switches_at_once() {
        let step = decide(
            &root("new"),
            &set(&["old", "new"]),
            &root("old"),
            &set(&["old"]),
            &BTreeMap::new(),
        );
        assert!(step.switch_issuer);
        assert_eq!(step.served, set(&["old", "new"]));
        assert_eq!(step.phase, Phase::Steady);
        let step = decide(
            &root("new"),
            &set(&["old", "new"]),
            &root("new"),
            &set(&["new"]),
            &BTreeMap::new(),
        );
        assert_eq!(step.phase, Phase::Steady);
    }
}
