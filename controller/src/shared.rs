//! What the controller's tasks share: the objects in force (published whole by the task that
//! owns the sources, [`crate::objects`]), the pods ([`crate::registry`]), the PKI, what proxies
//! acknowledged (the trust and patch ledgers), the module, the snapshots served, status and
//! metrics. Each part has its own lock, taken briefly; a rebuild holds the PKI's through its
//! certificates only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::Notify;
use weft_policy::catalog::Catalog;
use weft_xds::cache::SnapshotCache;

use crate::mesh::{Dirty, Pod};
use crate::module::{Module, Modules};
use crate::objects::{InForce, Refused};
use crate::options::Options;
use crate::patch::PatchLedger;
use crate::pki::Pki;
use crate::registry::{RegistrationRules, Registry};
use crate::status::Status;
use crate::store::Settled;
use crate::trust::TrustLedger;

/// What changed since the last rebuild.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// What the changes made stale.
    pub(crate) dirty: Dirty,
    /// Since when there has been a change not yet rebuilt.
    pub(crate) since: Option<Instant>,
}

/// What the controller knows, shared by its tasks.
pub struct Shared {
    /// Its options.
    pub options: Options,
    /// The objects in force.
    in_force: RwLock<Arc<InForce>>,
    /// What changed since the last rebuild, and the rebuild loop's wake-up.
    pub(crate) pending: Mutex<Pending>,
    pub(crate) changed: Notify,
    /// The pods, by node id.
    pub(crate) registry: Mutex<Registry>,
    pub(crate) pki: Mutex<Pki>,
    /// Why the operator's CA or trust bundle was last refused (what was asked before stays).
    ca_problem: Mutex<Option<String>>,
    /// What each pod's proxy has applied of its secrets (a rotation waits on it), and what the
    /// secrets of its latest snapshots held, by the version it would acknowledge.
    pub(crate) trust: Mutex<TrustLedger>,
    /// What became of the EnvoyPatches, per proxy.
    pub(crate) patches: Mutex<PatchLedger>,
    modules: RwLock<Modules>,
    /// Snapshots served.
    pub cache: Arc<SnapshotCache>,
    /// Per-proxy protocol status.
    pub status: Status,
    /// The controller's Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
    /// When the rebuild loop last went round (it does at least every second): liveness.
    heartbeat: Mutex<Instant>,
    /// The catalog generation the last rebuild served.
    pub(crate) built_generation: AtomicU64,
    /// Before this instant, snapshots are not published (see [`Options::resume_grace`]).
    pub(crate) publish_after: Instant,
}

/// Takes `mutex`, whether or not a task panicked holding it (every update here is whole).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

impl Shared {
    /// What a controller with `options` shares, with the objects of the first read of its
    /// sources, its PKI and its module.
    pub(crate) fn new(options: Options, pki: Pki, module: Module) -> Self {
        Self {
            in_force: RwLock::new(Arc::default()),
            pending: Mutex::new(Pending {
                dirty: Dirty::All,
                since: None,
            }),
            changed: Notify::new(),
            registry: Mutex::new(Registry::default()),
            pki: Mutex::new(pki),
            ca_problem: Mutex::new(None),
            trust: Mutex::new(TrustLedger::default()),
            patches: Mutex::new(PatchLedger::default()),
            modules: RwLock::new(Modules::open(&options.state, module)),
            cache: Arc::new(SnapshotCache::new()),
            status: Status::default(),
            metrics: crate::metrics::Metrics::new(),
            heartbeat: Mutex::new(Instant::now()),
            built_generation: AtomicU64::new(0),
            publish_after: Instant::now() + options.resume_grace,
            options,
        }
    }

    /// What became of each EnvoyPatch for each proxy, by node id.
    pub fn patch_reports(
        &self,
    ) -> std::collections::BTreeMap<String, Vec<crate::patch::PatchReport>> {
        lock(&self.patches).reports.clone()
    }

    /// The objects in force.
    pub fn in_force(&self) -> Arc<InForce> {
        read(&self.in_force)
    }

    /// The catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.in_force().catalog.clone()
    }

    /// The objects refused, and the sources' problems that concern no single object.
    pub fn refused(&self) -> Refused {
        self.in_force().refused.clone()
    }

    /// Publishes what the store settled: logs and counts what it newly refused, and when the
    /// catalog in force changed, marks what the change made stale for the next rebuild.
    /// Returns whether the catalog in force changed.
    pub(crate) fn publish(&self, settled: &Settled) -> bool {
        let mut in_force = self
            .in_force
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (refused, new) = crate::objects::report(&in_force.refused, settled);
        for _ in 0..new {
            self.metrics.reconcile_error("manifests");
        }
        self.metrics.set_refused(&refused.objects);
        let changed = *in_force.catalog != *settled.catalog;
        if changed {
            let dirty = crate::mesh::dirty(&in_force.catalog, &settled.catalog, &settled.changed);
            lock(&self.pending).dirty.merge(dirty);
        }
        *in_force = Arc::new(InForce {
            catalog: settled.catalog.clone(),
            objects: settled.objects.clone(),
            refused,
            generation: in_force.generation + u64::from(changed),
        });
        drop(in_force);
        crate::objects::log_unapplied(&settled.warnings);
        if changed {
            log::info!(
                "weft: manifests changed ({} object(s)); rebuilding what they affect",
                settled.changed.len()
            );
            self.mark_changed();
        }
        changed
    }

    /// Adds or replaces a pod (a source saw it start).
    pub fn register_pod(&self, pod: Pod) {
        lock(&self.registry).insert(pod);
        self.mark_changed();
    }

    /// Something the snapshots derive from changed: a rebuild is due.
    pub(crate) fn mark_changed(&self) {
        lock(&self.pending).since.get_or_insert_with(Instant::now);
        self.changed.notify_one();
    }

    /// The rebuild loop went round.
    pub(crate) fn beat(&self) {
        *lock(&self.heartbeat) = Instant::now();
    }

    /// Whether the rebuild loop went round within `within` (it does at least every second,
    /// and once per rebuild).
    pub fn is_live(&self, within: Duration) -> bool {
        lock(&self.heartbeat).elapsed() <= within
    }

    /// The catalog's generation (accepted changes since the start), and the one every
    /// proxy's snapshot was last built from.
    pub fn generations(&self) -> (u64, u64) {
        (
            self.in_force().generation,
            self.built_generation.load(Ordering::SeqCst),
        )
    }

    /// Whether proxies are being served: the first rebuild after a start (and its resume
    /// grace) is done.
    pub fn is_serving(&self) -> bool {
        self.metrics.rebuilds.get() > 0
    }

    /// A stream of `node` ended (nothing happens unless its sidecar registered it).
    pub(crate) fn stream_closed(&self, node: &str) {
        lock(&self.registry).stream_closed(node, Instant::now());
    }

    /// Forgets the pods their sidecar registered that have had no stream for
    /// [`Options::forget_after`] at `now`; returns their node ids.
    pub fn forget_departed(&self, now: Instant) -> Vec<String> {
        let departed = lock(&self.registry).departed(now, self.options.forget_after);
        for node in &departed {
            self.unregister_pod(node);
            log::info!(
                "weft: forgot {node}: its sidecar has been disconnected for {:?}",
                self.options.forget_after
            );
        }
        departed
    }

    /// Whether a registered pod is due to be forgotten at `now`.
    pub(crate) fn departure_due(&self, now: Instant) -> bool {
        !lock(&self.registry)
            .departed(now, self.options.forget_after)
            .is_empty()
    }

    /// Removes a pod (a source saw it end): its endpoints leave every proxy, its status and
    /// its snapshot go.
    pub fn unregister_pod(&self, node: &str) {
        lock(&self.registry).remove(node);
        self.status.forget(node);
        self.metrics.forget(node);
        lock(&self.trust).forget(node);
        self.cache.remove(node);
        self.mark_changed();
    }

    /// Reads the operator's CA and trust bundle again (their files changed). A CA or bundle
    /// that cannot be used is refused (logged, kept for status) and what was asked before
    /// stays.
    pub fn reload_ca(&self) {
        let result = self.pki().reload();
        let mut problem = lock(&self.ca_problem);
        match result {
            Ok(changed) => {
                *problem = None;
                if changed {
                    log::info!("weft: the mesh CA or trust bundle changed; rotating");
                    self.mark_changed();
                }
            }
            Err(err) => {
                let message = err.to_string();
                if problem.as_deref() != Some(message.as_str()) {
                    log::error!("weft: {message}; the CA and roots in force stay");
                    self.metrics.reconcile_error("certificate");
                    *problem = Some(message);
                }
            }
        }
    }

    /// Why the operator's CA or trust bundle was last refused.
    pub fn ca_problem(&self) -> Option<String> {
        lock(&self.ca_problem).clone()
    }

    /// Keeps the pods their sidecars registered in the state folder if they changed, so that
    /// a restarted controller still has their endpoints before they reconnect (their sidecars
    /// kept serving). Once per turn of the rebuild loop, not per registration: a thousand
    /// sidecars reconnecting write the file once. A failure is logged: the pods are then only
    /// known once they reconnect.
    pub(crate) fn save_registered(&self) {
        let Some(pods) = lock(&self.registry).take_registrations_changed() else {
            return;
        };
        if let Err(err) = crate::registry::save(&self.options.state, &pods) {
            log::warn!(
                "weft: {}: {err}",
                self.options
                    .state
                    .join(crate::registry::REGISTERED_FILE)
                    .display()
            );
        }
    }

    /// Takes back the pods a previous run kept (see [`Shared::save_registered`]): each is
    /// ready (its sidecar kept serving) and is forgotten unless its sidecar reconnects within
    /// [`Options::forget_after`]. A pod whose workload is gone or changed identity is dropped.
    pub(crate) fn restore_registered(&self) {
        let pods = match crate::registry::load(&self.options.state) {
            Ok(pods) => pods,
            Err(err) => {
                log::warn!("weft: {err}; starting without it");
                return;
            }
        };
        let catalog = self.catalog();
        let now = Instant::now();
        let mut restored = 0;
        for pod in pods {
            let node = pod.node_id();
            let checked = pod
                .of_workload(&catalog)
                .and_then(|pod| self.may_register(&pod).map(|()| pod));
            match checked {
                Ok(pod) => {
                    lock(&self.registry).restore(pod, now);
                    restored += 1;
                }
                Err(err) => log::warn!("weft: {node} from the last run is dropped: {err}"),
            }
        }
        if restored > 0 {
            log::info!(
                "weft: {restored} pod(s) registered by their sidecars before the restart keep their endpoints; each is forgotten unless it reconnects within {:?}",
                self.options.forget_after
            );
        }
    }

    /// Whether `pod` (of its workload, as the catalog has it) may be registered by its
    /// sidecar; why not otherwise ([`Registry::may_register`]).
    pub(crate) fn may_register(&self, pod: &Pod) -> Result<(), String> {
        let catalog = self.catalog();
        let modules = self
            .modules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rules = RegistrationRules {
            pod_networks: &self.options.pod_networks,
            forget_after: self.options.forget_after,
        };
        lock(&self.registry).may_register(pod, &catalog, rules, |path| modules.is_known(path))
    }

    /// How many pods there are.
    pub fn pod_count(&self) -> usize {
        lock(&self.registry).len()
    }

    /// Every pod.
    pub fn pods(&self) -> Vec<Pod> {
        lock(&self.registry).pods().cloned().collect()
    }

    /// Whether `node_id`'s sidecar has applied its listeners.
    pub fn is_ready(&self, node_id: &str) -> bool {
        lock(&self.registry).is_ready(node_id)
    }

    /// The module sidecars load (unless they named their own).
    pub fn module(&self) -> Module {
        // The module alone: not the set of every digest installed beside it.
        self.modules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .current
            .clone()
    }

    /// Upgrades the module: installs `source` and points every sidecar that did not name its
    /// own module at it (an ECDS update; a sidecar that cannot load it refuses the update and
    /// keeps the module it runs).
    ///
    /// # Errors
    /// When it cannot be read or installed.
    pub fn set_module(&self, source: &std::path::Path) -> anyhow::Result<()> {
        let module = Module::install(source, &self.options.state)?;
        log::info!(
            "weft: module {} installed; pushing it to every sidecar",
            module.sha256
        );
        self.modules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .install(module);
        self.mark_changed();
        Ok(())
    }

    /// The PKI.
    pub fn pki(&self) -> MutexGuard<'_, Pki> {
        lock(&self.pki)
    }

    /// The next wall-clock instant a certificate is due for renewal.
    pub(crate) fn next_renewal(&self) -> Option<OffsetDateTime> {
        lock(&self.pki).next_renewal()
    }
}
