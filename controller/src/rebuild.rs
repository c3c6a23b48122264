//! The rebuild: brings every proxy's snapshot up to date with what changed since the last one,
//! and rebuilds only what the change made stale ([`crate::mesh::Dirty`]): a pod whose inputs did
//! not change keeps its snapshot, given the new endpoints or plugin configurations when those
//! changed. The [`Rebuilder`] is owned by the rebuild loop; what it reads it takes from
//! [`Shared`] briefly, one lock at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use time::OffsetDateTime;
use weft_xds::snapshot::{ENDPOINT, EXTENSION_CONFIG, SECRET, type_version};

use weft_policy::bundle::Identity;

use crate::mesh::{MeshView, sidecar_plugins, sidecar_snapshot};
use crate::shared::{Pending, Shared, lock};
use crate::trust::Held;

/// What rebuilds keep from one to the next: the rebuild loop's own.
#[derive(Debug, Default)]
pub struct Rebuilder {
    /// The pods of the last rebuild, and their node ids as a set.
    pod_set: Option<Arc<crate::registry::PodSet>>,
    nodes: BTreeSet<String>,
    /// What is computed once for every pod.
    plan: crate::mesh::Plan,
    /// Resources shared by the snapshots.
    interner: crate::mesh::Interner,
    /// By node id: what its last snapshot was built from, and the snapshot.
    built: std::collections::HashMap<String, BuiltPod>,
    /// When the parts of the catalog a pod depends on last changed.
    epochs: Epochs,
}

/// A pod's last build.
#[derive(Debug)]
struct BuiltPod {
    /// A digest of what its resources but the plugin configurations were built from.
    inputs: u64,
    /// When the compiled policy its plugin configurations hold last changed.
    policy: (u64, u64, u64),
    snapshot: Arc<weft_xds::snapshot::Snapshot>,
}

/// When the parts of the catalog a pod's snapshot depends on last changed: all of it, every
/// outbound policy, or the inbound policy of one identity (numbers from one counter, so that no
/// two changes share one).
#[derive(Debug, Default)]
struct Epochs {
    all: u64,
    outbound: u64,
    inbound: std::collections::HashMap<weft_policy::bundle::Identity, u64>,
    next: u64,
}

impl Epochs {
    fn advance(&mut self, dirty: &crate::mesh::Dirty) {
        match dirty {
            crate::mesh::Dirty::Nothing => {}
            crate::mesh::Dirty::All => {
                self.next += 1;
                self.all = self.next;
                self.inbound.clear();
            }
            crate::mesh::Dirty::Policy { inbound, outbound } => {
                for identity in inbound {
                    self.next += 1;
                    self.inbound.insert(identity.clone(), self.next);
                }
                if *outbound {
                    self.next += 1;
                    self.outbound = self.next;
                }
            }
        }
    }

    /// When `identity`'s compiled policy last changed.
    fn policy_of(&self, identity: &weft_policy::bundle::Identity) -> (u64, u64, u64) {
        (
            self.all,
            self.outbound,
            self.inbound.get(identity).copied().unwrap_or(0),
        )
    }
}

/// An identity's certificate, and a digest of it.
type Certificate = (crate::pki::Issued, u64);

/// A digest of `value` for telling inputs apart within one process.
fn digest_of(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl Rebuilder {
    /// Brings every pod's snapshot up to date at wall-clock `now` (certificates past their
    /// renewal deadline are renewed). Only what a change made stale is built again: a pod whose
    /// inputs (its pod, the catalog's parts it depends on, its certificate, the trust bundle,
    /// the module, its withdrawn patches) did not change keeps its snapshot, given the new
    /// endpoints when they changed; the rest is built with what [`crate::mesh::Plan`] keeps
    /// across rebuilds. A pod whose configuration cannot be built keeps its last one, and the
    /// error is logged.
    pub fn rebuild(&mut self, shared: &Shared, now: OffsetDateTime) {
        if std::time::Instant::now() < shared.publish_after {
            return;
        }
        let started = std::time::Instant::now();
        let Pending { dirty, since } = std::mem::take(&mut *lock(&shared.pending));
        let since = since.unwrap_or(started);
        let in_force = shared.in_force();
        let (catalog, generation) = (&in_force.catalog, in_force.generation);
        let (pod_set, forgotten) = {
            let mut registry = lock(&shared.registry);
            (registry.pod_set(), registry.take_forgotten())
        };
        let pods = &pod_set.pods;
        let mut pki = lock(&shared.pki);
        let pods_changed = !self
            .pod_set
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, &pod_set));
        if pods_changed {
            self.nodes = pod_set.nodes.iter().cloned().collect();
        }
        let nodes = &self.nodes;
        let held = lock(&shared.trust).retain(nodes);
        match pki.advance(&held) {
            Ok(true) => log::info!(
                "weft: certificates issued by root {}, roots trusted: {}; {:?}",
                pki.issuer_root(),
                pki.served()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                pki.phase()
            ),
            Ok(false) => {}
            Err(err) => {
                log::error!("weft: {err}");
                shared.metrics.reconcile_error("certificate");
            }
        }
        let bundle = pki.bundle_pem();
        let served = Arc::new(pki.served().clone());
        let trust_domain = pki.trust_domain().to_owned();
        let module = shared.module().path.display().to_string();
        let withdrawn = {
            let mut patches = lock(&shared.patches);
            patches.retain(nodes);
            patches.withdrawn.clone()
        };
        // Certificates are per identity: issued (or renewed) once each.
        let mut certificates: HashMap<&Identity, Option<Certificate>> = HashMap::new();
        let mut expiries = BTreeMap::new();
        for identity in &pod_set.identities {
            if certificates.contains_key(identity) {
                continue;
            }
            let spiffe_id = identity.spiffe_id(&trust_domain);
            let issued = match pki.workload(&spiffe_id, now) {
                Ok((issued, renewed)) => {
                    if renewed {
                        log::info!(
                            "weft: issued a certificate for {spiffe_id}, valid until {}",
                            issued.validity.not_after
                        );
                    }
                    expiries.insert(
                        spiffe_id.clone(),
                        issued.validity.not_after.unix_timestamp(),
                    );
                    let digest = digest_of(&(&issued.pem.cert_pem, &issued.pem.key_pem));
                    Some((issued, digest))
                }
                Err(err) => {
                    log::error!("weft: {err}");
                    shared.metrics.reconcile_error("certificate");
                    None
                }
            };
            certificates.insert(identity, issued);
        }
        drop(pki);
        let view = MeshView {
            catalog,
            pods,
            nodes: &pod_set.nodes,
            ready: &pod_set.ready,
            trust_domain: &trust_domain,
            bundle: &bundle,
            module: &module,
            allow_patches: shared.options.allow_patches,
            withdrawn: &withdrawn,
        };
        let Self {
            plan,
            interner,
            built,
            epochs,
            ..
        } = self;
        epochs.advance(&dirty);
        plan.forget(&dirty);
        built.retain(|node, _| nodes.contains(node) && !forgotten.contains(node));
        let shared_inputs = digest_of(&(&bundle, &module, shared.options.allow_patches));
        let endpoints = match plan.endpoints(&view, interner) {
            Ok(endpoints) => endpoints,
            Err(err) => {
                log::error!("weft: endpoints: {err}; every proxy keeps its configuration");
                shared.metrics.reconcile_error("snapshot");
                return;
            }
        };
        let (mut rebuilt, mut refreshed, mut recompiled) = (0_usize, 0_usize, 0_usize);
        for (index, pod) in pods.iter().enumerate() {
            let node = &pod_set.nodes[index];
            let identity = &pod_set.identities[index];
            let Some(Some((certificate, certificate_digest))) = certificates.get(identity) else {
                continue;
            };
            let inputs = digest_of(&(
                pod_set.digests[index],
                epochs.all,
                certificate_digest,
                shared_inputs,
                withdrawn.get(node).map(|w| format!("{w:?}")),
            ));
            let policy = epochs.policy_of(identity);
            let snapshot = match built.get(node) {
                Some(last) if last.inputs == inputs => {
                    let endpoints_current = last
                        .snapshot
                        .resources(ENDPOINT)
                        .is_some_and(|current| current.is_only(&endpoints));
                    if endpoints_current && last.policy == policy {
                        continue;
                    }
                    // The rest of its snapshot is shared: only the endpoints, or the plugin
                    // configurations, are new.
                    let mut snapshot = (*last.snapshot).clone();
                    snapshot.set_type(ENDPOINT, endpoints.clone());
                    if last.policy == policy {
                        refreshed += 1;
                    } else {
                        recompiled += 1;
                        match sidecar_plugins(&view, plan, interner, pod) {
                            Ok(plugins) => snapshot.set_type(EXTENSION_CONFIG, plugins),
                            Err(err) => {
                                log::error!("weft: {node}: {err}; it keeps its last configuration");
                                shared.metrics.reconcile_error("snapshot");
                                continue;
                            }
                        }
                    }
                    Arc::new(snapshot)
                }
                _ => {
                    match sidecar_snapshot(&view, plan, interner, pod, &certificate.pem, &endpoints)
                    {
                        Ok((snapshot, patches)) => {
                            rebuilt += 1;
                            shared
                                .status
                                .set_certificate(node, certificate.validity.not_after);
                            lock(&shared.patches).built(
                                node,
                                |type_url| type_version(&snapshot, type_url),
                                patches,
                            );
                            lock(&shared.trust).built(
                                node,
                                type_version(&snapshot, SECRET),
                                Held {
                                    certificate_root: certificate.root.clone(),
                                    bundle: served.clone(),
                                },
                            );
                            Arc::new(snapshot)
                        }
                        Err(err) => {
                            log::error!("weft: {node}: {err}; it keeps its last configuration");
                            shared.metrics.reconcile_error("snapshot");
                            continue;
                        }
                    }
                }
            };
            built.insert(
                node.clone(),
                BuiltPod {
                    inputs,
                    policy,
                    snapshot: snapshot.clone(),
                },
            );
            // Marked before the snapshot is published, so that a proxy quick to apply it
            // cannot finish before its convergence started; a proxy that is not connected
            // converges when it reconnects, which is not measured.
            let marked =
                shared.status.is_connected(node) && shared.metrics.change_pending(node, since);
            if !shared.cache.set(node, snapshot) && marked {
                shared.metrics.forget(node);
            }
        }
        interner.sweep();
        self.pod_set = Some(pod_set.clone());
        for (how, count) in [
            ("built", rebuilt),
            ("endpoints", refreshed),
            ("policy", recompiled),
        ] {
            shared
                .metrics
                .snapshots
                .get_or_create(&crate::metrics::HowLabels {
                    how: how.to_owned(),
                })
                .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
        }
        log::debug!(
            "weft: built {rebuilt} proxies' configuration, their plugin configurations for {recompiled}, their endpoints for {refreshed} ({} pods) in {:?}",
            pods.len(),
            started.elapsed()
        );
        shared.metrics.set_certificate_expiries(expiries);
        shared.built_generation.store(generation, Ordering::SeqCst);
        shared.metrics.rebuilds.inc();
        shared
            .metrics
            .rebuild_duration
            .observe(started.elapsed().as_secs_f64());
    }
}
