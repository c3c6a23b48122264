//! The controller at run time: the index fed by a watched directory, the pods, the PKI, a
//! rebuild loop that keeps every proxy's snapshot current (on a change, a pod's readiness, a
//! certificate's wall-clock renewal deadline), the ADS server over mTLS with its admission,
//! and the admin HTTP server (status, module, health).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use weft_certs::RotationPolicy;
use weft_envoy_config::pb::envoy::config::core::v3::Node;
use weft_policy::diagnostic::Diagnostic;
use weft_policy::model::Catalog;
use weft_policy::object::ObjectKey;
use weft_xds::cache::SnapshotCache;
use weft_xds::protocol::{Event, TypeStatus};
use weft_xds::server::{Admission, AdsService};
use weft_xds::snapshot::{ENDPOINT, EXTENSION_CONFIG, LISTENER, SECRET, short_name, type_version};

use crate::admission::{AdmissionError, Claim};
use crate::mesh::{MeshView, Pod, sidecar_plugins, sidecar_snapshot};
use crate::pki::{CaFiles, CaSource, Pki};
use crate::status::Status;
use crate::store::Kept;
use crate::trust::{Held, Phase};
use crate::watch::{Fingerprint, SETTLE, Settler};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The folder of YAML (SMI, Services, workloads) it serves, watched for changes.
    pub manifests: PathBuf,
    /// Where it keeps its state (the CA, the module).
    pub state: PathBuf,
    /// Whether EnvoyPatches are applied (off by default: they change any field weft generates).
    pub allow_patches: bool,
    /// Where the ADS server listens.
    pub xds_listen: SocketAddr,
    /// Where the admin HTTP server listens (status, module, health).
    pub admin_listen: SocketAddr,
    /// `weft.wasm`.
    pub module: PathBuf,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// Where the CA comes from.
    pub ca: CaSource,
    /// Workload certificate lifetime and renewal.
    pub rotation: RotationPolicy,
    /// How often the manifests folder is looked at.
    pub poll: Duration,
    /// After a start, how long snapshots are computed but not served, so that sidecars that
    /// were running reconnect (and register their pods) before anything is pushed: a
    /// restarted controller then pushes nothing to a mesh that did not change. 0 when every
    /// pod is known from the start (local mode).
    pub resume_grace: Duration,
    /// How long a pod that its sidecar registered (`weft sidecar`, not a workload replica the
    /// controller was told to run) stays after its last ADS stream ended; then it is forgotten
    /// and its endpoints leave every proxy. A sidecar that reconnects within it is the same
    /// pod; one that comes back later registers again.
    pub forget_after: Duration,
    /// The networks a sidecar may register its pod's address in (`weft sidecar` describes
    /// its pod in its node metadata); empty: no sidecar may register a pod (local mode, which
    /// knows every pod it runs).
    pub pod_networks: Vec<ipnet::Ipv4Net>,
}

/// The default of [`Options::pod_networks`] for `weft controller`: the private blocks where
/// pod networks live (RFC 1918 and the shared 100.64.0.0/10), not loopback, which would point
/// every caller at its own host.
pub fn default_pod_networks() -> Vec<ipnet::Ipv4Net> {
    [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
    ]
    .iter()
    .filter_map(|net| net.parse().ok())
    .collect()
}

/// How many pods one workload's sidecars may register: its replicas, and a quarter more (at
/// least one) for the new pods of a rolling update while the old are not yet forgotten, as
/// Kubernetes' default surge.
pub fn registrations_allowed(replicas: u32) -> usize {
    let replicas = usize::try_from(replicas).unwrap_or(usize::MAX);
    replicas.saturating_add(replicas.div_ceil(4).max(1))
}

/// The file in the state folder that keeps the pods sidecars registered.
pub const REGISTERED_FILE: &str = "registered-pods.json";

/// The default of [`Options::forget_after`]: longer than a controller restart or a network
/// blip, shorter than Kubernetes' 40 s before a silent node's pods go unready plus eviction.
pub const FORGET_AFTER: Duration = Duration::from_secs(30);

/// The largest module read or fetched (weft.wasm is about 250 KB).
pub const MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;

/// The largest file of registered pods read (about 300 bytes a pod).
const MAX_REGISTERED_BYTES: u64 = 64 * 1024 * 1024;

/// Module bytes and where the controller keeps them (content-addressed).
#[derive(Debug, Clone)]
pub struct Module {
    /// Hex SHA-256.
    pub sha256: String,
    /// The file sidecars on this host load: `<state>/modules/weft-<sha256>.wasm`.
    pub path: PathBuf,
    /// The bytes (served at `/module`).
    pub bytes: Arc<Vec<u8>>,
}

impl Module {
    /// The hex SHA-256 that names a module (its file name, `x-weft-module-sha256`).
    pub fn digest(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The digests of `current` and of every module kept in `state/modules` whose content
    /// is what its name says.
    pub fn installed(state: &Path, current: &Self) -> BTreeSet<String> {
        let mut known = BTreeSet::from([current.sha256.clone()]);
        let Ok(entries) = std::fs::read_dir(state.join("modules")) else {
            return known;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(sha) = name
                .to_str()
                .and_then(|n| n.strip_prefix("weft-"))
                .and_then(|n| n.strip_suffix(".wasm"))
            else {
                continue;
            };
            let bytes = crate::files::read_regular(&entry.path(), MAX_MODULE_BYTES);
            if bytes.is_ok_and(|bytes| Self::digest(&bytes) == sha) {
                known.insert(sha.to_owned());
            }
        }
        known
    }

    /// Reads `source` and keeps it in `state/modules` under its digest.
    ///
    /// # Errors
    /// When it cannot be read or written.
    pub fn install(source: &Path, state: &Path) -> anyhow::Result<Self> {
        let bytes = crate::files::read_regular(source, MAX_MODULE_BYTES).map_err(|err| {
            anyhow::anyhow!("{}: {err} (run `make build` first)", source.display())
        })?;
        let sha256 = Self::digest(&bytes);
        let dir = state.join("modules");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("weft-{sha256}.wasm"));
        // A file under this name that is not these bytes (corrupted, tampered with) is
        // replaced: the name is a promise about the content.
        let intact = crate::files::read_regular(&path, MAX_MODULE_BYTES)
            .is_ok_and(|kept| Sha256::digest(&kept)[..] == Sha256::digest(&bytes)[..]);
        if !intact {
            // Written whole, then renamed: a sidecar never sees a half-written module.
            let staging = dir.join(format!(".weft-{sha256}.tmp"));
            std::fs::write(&staging, &bytes)?;
            std::fs::rename(&staging, &path)?;
        }
        Ok(Self {
            sha256,
            path: std::fs::canonicalize(&path)?,
            bytes: Arc::new(bytes),
        })
    }
}

/// What the controller knows, shared by its tasks.
pub struct Shared {
    /// Its options.
    pub options: Options,
    /// The catalog in force: every object's version in force.
    catalog: RwLock<Arc<Catalog>>,
    /// The sources and the store they feed (one reader at a time: the watcher).
    sources: Mutex<Sources>,
    /// What the store refused, and the sources' problems, as of the last change.
    refused: Mutex<Refused>,
    /// Pods by node id.
    pods: Mutex<BTreeMap<String, Pod>>,
    /// Node ids whose sidecar has applied its listeners.
    ready: Mutex<BTreeSet<String>>,
    /// Pods their sidecar registered, by node id: its open streams, and since when it has
    /// had none.
    registered: Mutex<BTreeMap<String, Streams>>,
    pki: Mutex<Pki>,
    /// Why the operator's CA or trust bundle was last refused (what was asked before stays).
    ca_problem: Mutex<Option<String>>,
    /// What each pod's proxy has applied of its secrets (a rotation waits on it), and what the
    /// secrets of its latest snapshots held, by the version it would acknowledge.
    trust: Mutex<TrustLedger>,
    /// What became of the EnvoyPatches, per proxy.
    patches: Mutex<crate::patch::PatchLedger>,
    /// What rebuilds keep from one to the next (the rebuild loop's own).
    builder: Mutex<Builder>,
    /// What the changes since the last rebuild made stale.
    dirty: Mutex<crate::mesh::Dirty>,
    /// Pods removed since the last rebuild (one that comes back is built afresh).
    forgotten: Mutex<BTreeSet<String>>,
    /// Snapshots served.
    pub cache: Arc<SnapshotCache>,
    /// Per-proxy protocol status.
    pub status: Status,
    module: RwLock<Module>,
    /// The digests of every module this controller installed: the only modules a sidecar's
    /// plugin configuration may name.
    known_modules: RwLock<BTreeSet<String>>,
    changed: Notify,
    /// Since when there has been a change not yet rebuilt.
    changed_since: Mutex<Option<std::time::Instant>>,
    /// The controller's Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
    /// When the rebuild loop last went round (it does at least every second): liveness.
    heartbeat: Mutex<std::time::Instant>,
    /// Whether the pods sidecars registered changed since they were last kept in the state
    /// folder (the rebuild loop keeps them).
    registrations_changed: std::sync::atomic::AtomicBool,
    /// Changes of the catalog accepted since the start.
    generation: AtomicU64,
    /// The catalog generation the last rebuild served.
    built_generation: AtomicU64,
    /// Before this instant, snapshots are not published (see [`Options::resume_grace`]).
    publish_after: std::time::Instant,
}

/// What rebuilds keep from one to the next.
#[derive(Debug, Default)]
struct Builder {
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

/// A digest of `value` for telling inputs apart within one process.
fn digest_of(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The sources and the store they feed.
#[derive(Debug, Default)]
struct Sources {
    folder: crate::folder::Folder,
    store: crate::store::Store,
}

/// What the store refused as of the last change.
#[derive(Debug, Clone, Default)]
pub struct Refused {
    /// The objects refused, and what is in force of each.
    pub objects: BTreeMap<ObjectKey, crate::store::Refusal>,
    /// The sources' problems that concern no single object.
    pub problems: Vec<Diagnostic>,
}

/// What proxies hold of the mesh's roots.
#[derive(Debug, Default)]
struct TrustLedger {
    /// By node id: what its proxy's applied secrets hold.
    held: BTreeMap<String, Held>,
    /// By node id: what the secrets of its latest snapshots hold, by SDS version.
    built: BTreeMap<String, VecDeque<(String, Held)>>,
}

/// How many snapshots' secrets are remembered per proxy: a proxy acknowledges one of its
/// latest few.
const SECRETS_REMEMBERED: usize = 4;

impl TrustLedger {
    fn built(&mut self, node: &str, version: String, held: Held) {
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
    fn acked(&mut self, node: &str, version: &str) -> bool {
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

    fn forget(&mut self, node: &str) {
        self.held.remove(node);
        self.built.remove(node);
    }
}

/// The ADS streams of a pod its sidecar registered.
#[derive(Debug, Clone, Copy)]
struct Streams {
    open: usize,
    /// When the last one ended (while `open` is 0).
    closed_at: Option<std::time::Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// What became of each EnvoyPatch for each proxy, by node id.
    pub fn patch_reports(&self) -> BTreeMap<String, Vec<crate::patch::PatchReport>> {
        lock(&self.patches).reports.clone()
    }

    /// The catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The objects refused, and the sources' problems that concern no single object.
    pub fn refused(&self) -> Refused {
        lock(&self.refused).clone()
    }

    /// Adds or replaces a pod (a source saw it start).
    pub fn register_pod(&self, pod: Pod) {
        lock(&self.pods).insert(pod.node_id(), pod);
        self.mark_changed();
    }

    /// Adds or replaces a pod its sidecar registered (kept across restarts).
    fn register_remote_pod(&self, pod: Pod) {
        self.registrations_changed.store(true, Ordering::SeqCst);
        self.register_pod(pod);
    }

    /// Something the snapshots derive from changed: a rebuild is due.
    fn mark_changed(&self) {
        lock(&self.changed_since).get_or_insert_with(std::time::Instant::now);
        self.changed.notify_one();
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
            self.generation.load(Ordering::SeqCst),
            self.built_generation.load(Ordering::SeqCst),
        )
    }

    /// Whether proxies are being served: the first rebuild after a start (and its resume
    /// grace) is done.
    pub fn is_serving(&self) -> bool {
        self.metrics.rebuilds.get() > 0
    }

    /// A stream of `node`, a pod its sidecar registered, opened.
    fn stream_opened(&self, node: &str) {
        let mut registered = lock(&self.registered);
        let streams = registered.entry(node.to_owned()).or_insert(Streams {
            open: 0,
            closed_at: None,
        });
        streams.open += 1;
        streams.closed_at = None;
    }

    /// A stream of `node` ended (nothing happens unless its sidecar registered it).
    fn stream_closed(&self, node: &str) {
        if let Some(streams) = lock(&self.registered).get_mut(node) {
            streams.open = streams.open.saturating_sub(1);
            if streams.open == 0 {
                streams.closed_at = Some(std::time::Instant::now());
            }
        }
    }

    /// Forgets the pods their sidecar registered that have had no stream for
    /// [`Options::forget_after`] at `now`; returns their node ids.
    pub fn forget_departed(&self, now: std::time::Instant) -> Vec<String> {
        let departed: Vec<String> = lock(&self.registered)
            .iter()
            .filter(|(_, streams)| self.departed(streams, now))
            .map(|(node, _)| node.clone())
            .collect();
        for node in &departed {
            self.unregister_pod(node);
            log::info!(
                "weft: forgot {node}: its sidecar has been disconnected for {:?}",
                self.options.forget_after
            );
        }
        departed
    }

    fn departed(&self, streams: &Streams, now: std::time::Instant) -> bool {
        streams.open == 0
            && streams
                .closed_at
                .is_some_and(|at| now.saturating_duration_since(at) >= self.options.forget_after)
    }

    /// Whether a registered pod is due to be forgotten at `now`.
    fn departure_due(&self, now: std::time::Instant) -> bool {
        lock(&self.registered)
            .values()
            .any(|streams| self.departed(streams, now))
    }

    /// Removes a pod (a source saw it end): its endpoints leave every proxy, its status and
    /// its snapshot go.
    pub fn unregister_pod(&self, node: &str) {
        lock(&self.pods).remove(node);
        lock(&self.ready).remove(node);
        if lock(&self.registered).remove(node).is_some() {
            self.registrations_changed.store(true, Ordering::SeqCst);
        }
        self.status.forget(node);
        self.metrics.forget(node);
        lock(&self.trust).forget(node);
        self.cache.remove(node);
        lock(&self.forgotten).insert(node.to_owned());
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
    fn save_registered(&self) {
        if !self.registrations_changed.swap(false, Ordering::SeqCst) {
            return;
        }
        let registered: Vec<String> = lock(&self.registered).keys().cloned().collect();
        let pods: Vec<Pod> = {
            let pods = lock(&self.pods);
            registered
                .iter()
                .filter_map(|node| pods.get(node).cloned())
                .collect()
        };
        let path = self.options.state.join(REGISTERED_FILE);
        let staging = self.options.state.join(format!(".{REGISTERED_FILE}.tmp"));
        let written = serde_json::to_vec_pretty(&pods)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&staging, json))
            .and_then(|()| std::fs::rename(&staging, &path));
        if let Err(err) = written {
            log::warn!("weft: {}: {err}", path.display());
        }
    }

    /// Takes back the pods a previous run kept (see [`Shared::save_registered`]): each is
    /// ready (its sidecar kept serving) and is forgotten unless its sidecar reconnects within
    /// [`Options::forget_after`]. A pod whose workload is gone or changed identity is dropped.
    fn restore_registered(&self) {
        let path = self.options.state.join(REGISTERED_FILE);
        let json = match crate::files::read_regular(&path, MAX_REGISTERED_BYTES) {
            Ok(json) => json,
            Err(crate::files::FileError::Read(err))
                if err.kind() == std::io::ErrorKind::NotFound =>
            {
                return;
            }
            Err(err) => {
                log::warn!("weft: {}: {err}; starting without it", path.display());
                return;
            }
        };
        let pods: Vec<Pod> = match serde_json::from_slice(&json) {
            Ok(pods) => pods,
            Err(err) => {
                log::warn!("weft: {}: {err}; starting without it", path.display());
                return;
            }
        };
        let catalog = self.catalog();
        let now = std::time::Instant::now();
        let mut restored = 0;
        for pod in pods {
            let node = pod.node_id();
            let checked = pod
                .of_workload(&catalog)
                .and_then(|pod| self.may_register(&pod).map(|()| pod));
            match checked {
                Ok(pod) => {
                    lock(&self.pods).insert(node.clone(), pod);
                    lock(&self.ready).insert(node.clone());
                    lock(&self.registered).insert(
                        node,
                        Streams {
                            open: 0,
                            closed_at: Some(now),
                        },
                    );
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
    /// sidecar; why not otherwise.
    fn may_register(&self, pod: &Pod) -> Result<(), String> {
        let node = pod.node_id();
        let networks = &self.options.pod_networks;
        if !networks.iter().any(|net| net.contains(&pod.pod_ip)) {
            return Err(if networks.is_empty() {
                format!(
                    "{node}: this controller runs its pods itself; sidecars cannot register pods"
                )
            } else {
                format!(
                    "{node}: pod address {} is not in a pod network this controller allows ({}; --pod-network)",
                    pod.pod_ip,
                    networks
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        }
        let catalog = self.catalog();
        let Some(workload) = catalog
            .workloads
            .iter()
            .find(|w| w.meta.namespace == pod.namespace && w.meta.name == pod.workload)
        else {
            return Err(format!("no workload {}/{}", pod.namespace, pod.workload));
        };
        let named_as_its_pods = if workload.kind == "Pod" {
            pod.name == workload.meta.name
        } else {
            pod.name
                .strip_prefix(&workload.meta.name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|suffix| !suffix.is_empty())
        };
        if !named_as_its_pods {
            return Err(format!(
                "{node} is not named as a pod of {} {}/{} ({})",
                workload.kind,
                pod.namespace,
                pod.workload,
                if workload.kind == "Pod" {
                    format!("{} itself", workload.meta.name)
                } else {
                    format!("{}-<suffix>", workload.meta.name)
                }
            ));
        }
        let pods = lock(&self.pods);
        if let Some(other) = pods
            .values()
            .find(|other| other.pod_ip == pod.pod_ip && other.node_id() != node)
        {
            return Err(format!(
                "{node}: pod address {} is already pod {}'s",
                pod.pod_ip,
                other.node_id()
            ));
        }
        let allowed = if workload.kind == "Pod" {
            1
        } else {
            registrations_allowed(workload.replicas)
        };
        let registered = lock(&self.registered);
        let of_workload = pods
            .values()
            .filter(|other| {
                other.namespace == pod.namespace
                    && other.workload == pod.workload
                    && other.node_id() != node
                    && registered.contains_key(&other.node_id())
            })
            .count();
        if of_workload >= allowed {
            return Err(format!(
                "{node}: {} {}/{} already has {of_workload} pod(s) registered, as many as its {} replica(s) allow (with a rolling update's surge); a pod that went away is forgotten {:?} after its sidecar disconnected",
                workload.kind,
                pod.namespace,
                pod.workload,
                workload.replicas,
                self.options.forget_after
            ));
        }
        drop((registered, pods));
        if let Some(module) = &pod.module {
            let known = self.known_module(module);
            if !known {
                return Err(format!(
                    "{node} names module {module}, which is not a module this controller serves (weft-<sha256>.wasm, fetched with weft sidecar)"
                ));
            }
        }
        Ok(())
    }

    /// Whether `path` is the file of a module this controller serves or served: named
    /// `weft-<sha256>.wasm` with the digest of one it installed.
    fn known_module(&self, path: &str) -> bool {
        let name = Path::new(path)
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        name.strip_prefix("weft-")
            .and_then(|rest| rest.strip_suffix(".wasm"))
            .is_some_and(|sha| {
                self.known_modules
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains(sha)
            })
    }

    /// How many pods there are.
    pub fn pod_count(&self) -> usize {
        lock(&self.pods).len()
    }

    /// Every pod.
    pub fn pods(&self) -> Vec<Pod> {
        lock(&self.pods).values().cloned().collect()
    }

    /// Whether `node_id`'s sidecar has applied its listeners.
    pub fn is_ready(&self, node_id: &str) -> bool {
        lock(&self.ready).contains(node_id)
    }

    /// The module sidecars load (unless they named their own).
    pub fn module(&self) -> Module {
        self.module
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Upgrades the module: installs `source` and points every sidecar that did not name its
    /// own module at it (an ECDS update; a sidecar that cannot load it refuses the update and
    /// keeps the module it runs).
    ///
    /// # Errors
    /// When it cannot be read or installed.
    pub fn set_module(&self, source: &Path) -> anyhow::Result<()> {
        let module = Module::install(source, &self.options.state)?;
        log::info!(
            "weft: module {} installed; pushing it to every sidecar",
            module.sha256
        );
        self.known_modules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(module.sha256.clone());
        *self
            .module
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = module;
        self.mark_changed();
        Ok(())
    }

    /// The PKI.
    pub fn pki(&self) -> std::sync::MutexGuard<'_, Pki> {
        lock(&self.pki)
    }

    /// Reads the manifests again and gives the store the objects that changed: each object is
    /// judged alone, a refused one is reported (logged with file and line, kept for status)
    /// and what was in force of it stays, and every other change applies. Returns whether the
    /// catalog in force changed.
    pub fn reload(&self) -> bool {
        let manifests = match crate::manifests::read(std::slice::from_ref(&self.options.manifests))
        {
            Ok(manifests) => manifests,
            Err(err) => {
                log::error!(
                    "weft: {}: {err}; nothing changes",
                    self.options.manifests.display()
                );
                return false;
            }
        };
        let settled = {
            let mut sources = lock(&self.sources);
            let Sources { folder, store } = &mut *sources;
            let (changes, problems) = folder.read(&manifests);
            store.apply(crate::folder::SOURCE, changes, problems);
            store.settle()
        };
        self.report(&settled);
        let mut current = self
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if **current == *settled.catalog {
            return false;
        }
        let dirty = crate::mesh::dirty(&current, &settled.catalog, &settled.changed);
        lock(&self.dirty).merge(dirty);
        *current = settled.catalog.clone();
        self.generation.fetch_add(1, Ordering::SeqCst);
        drop(current);
        log::info!(
            "weft: manifests changed ({} object(s)); rebuilding what they affect",
            settled.changed.len()
        );
        log_unapplied(&settled.warnings);
        self.mark_changed();
        true
    }

    /// Logs and counts what the last change refused that was not refused before, and what is
    /// in force again.
    fn report(&self, settled: &crate::store::Settled) {
        let mut refused = lock(&self.refused);
        for (key, refusal) in &settled.refused {
            if refused.objects.get(key) == Some(refusal) {
                continue;
            }
            self.metrics.reconcile_error("manifests");
            for problem in &refusal.problems {
                log::error!("{problem}");
            }
            match refusal.kept {
                Kept::Previous => {
                    log::error!("weft: {key} refused; its previous version stays in force")
                }
                Kept::Nothing => log::error!("weft: {key} refused; it is not in force"),
            }
        }
        for key in refused
            .objects
            .keys()
            .filter(|key| !settled.refused.contains_key(*key))
        {
            log::info!("weft: {key} is in force as written");
        }
        for problem in settled
            .problems
            .iter()
            .filter(|p| !refused.problems.contains(p))
        {
            self.metrics.reconcile_error("manifests");
            log::error!("{problem}");
        }
        *refused = Refused {
            objects: settled.refused.clone(),
            problems: settled.problems.clone(),
        };
        self.metrics.set_refused(&refused.objects);
    }

    /// Brings every pod's snapshot up to date at wall-clock `now` (certificates past their
    /// renewal deadline are renewed). Only what a change made stale is built again: a pod whose
    /// inputs (its pod, the catalog's parts it depends on, its certificate, the trust bundle,
    /// the module, its withdrawn patches) did not change keeps its snapshot, given the new
    /// endpoints when they changed; the rest is built with what [`crate::mesh::Plan`] keeps
    /// across rebuilds. A pod whose configuration cannot be built keeps its last one, and the
    /// error is logged.
    pub fn rebuild(&self, now: OffsetDateTime) {
        if std::time::Instant::now() < self.publish_after {
            return;
        }
        let started = std::time::Instant::now();
        let since = lock(&self.changed_since).take().unwrap_or(started);
        let generation = self.generation.load(Ordering::SeqCst);
        let dirty = std::mem::replace(&mut *lock(&self.dirty), crate::mesh::Dirty::Nothing);
        let catalog = self.catalog();
        let pods = self.pods();
        let ready = lock(&self.ready).clone();
        let mut pki = lock(&self.pki);
        let nodes: BTreeSet<String> = pods.iter().map(Pod::node_id).collect();
        let held: BTreeMap<String, Option<Held>> = {
            let mut trust = lock(&self.trust);
            trust.held.retain(|node, _| nodes.contains(node));
            trust.built.retain(|node, _| nodes.contains(node));
            nodes
                .iter()
                .map(|node| (node.clone(), trust.held.get(node).cloned()))
                .collect()
        };
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
                self.metrics.reconcile_error("certificate");
            }
        }
        let bundle = pki.bundle_pem();
        let served = Arc::new(pki.served().clone());
        let trust_domain = pki.trust_domain().to_owned();
        let module = self.module().path.display().to_string();
        let withdrawn = {
            let mut patches = lock(&self.patches);
            patches.retain(&nodes);
            patches.withdrawn.clone()
        };
        // Certificates are per identity: issued (or renewed) once each.
        let mut certificates: BTreeMap<String, Option<(crate::pki::Issued, u64)>> = BTreeMap::new();
        let mut expiries = BTreeMap::new();
        for pod in &pods {
            let spiffe_id = pod.identity().spiffe_id(&trust_domain);
            if certificates.contains_key(&spiffe_id) {
                continue;
            }
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
                    self.metrics.reconcile_error("certificate");
                    None
                }
            };
            certificates.insert(spiffe_id, issued);
        }
        drop(pki);
        let view = MeshView {
            catalog: &catalog,
            pods: &pods,
            ready: &ready,
            trust_domain: &trust_domain,
            bundle: &bundle,
            module: &module,
            allow_patches: self.options.allow_patches,
            withdrawn: &withdrawn,
        };
        let mut builder = lock(&self.builder);
        let Builder {
            plan,
            interner,
            built,
            epochs,
        } = &mut *builder;
        epochs.advance(&dirty);
        plan.forget(&dirty);
        let forgotten = std::mem::take(&mut *lock(&self.forgotten));
        built.retain(|node, _| nodes.contains(node) && !forgotten.contains(node));
        let shared_inputs = digest_of(&(&bundle, &module, self.options.allow_patches));
        let endpoints = match plan.endpoints(&view, interner) {
            Ok(endpoints) => endpoints,
            Err(err) => {
                log::error!("weft: endpoints: {err}; every proxy keeps its configuration");
                self.metrics.reconcile_error("snapshot");
                return;
            }
        };
        let (mut rebuilt, mut refreshed, mut recompiled) = (0_usize, 0_usize, 0_usize);
        for pod in &pods {
            let node = pod.node_id();
            let identity = pod.identity();
            let spiffe_id = identity.spiffe_id(&trust_domain);
            let Some(Some((certificate, certificate_digest))) = certificates.get(&spiffe_id) else {
                continue;
            };
            let inputs = digest_of(&(
                pod,
                epochs.all,
                certificate_digest,
                shared_inputs,
                withdrawn.get(&node).map(|w| format!("{w:?}")),
            ));
            let policy = epochs.policy_of(&identity);
            let snapshot = match built.get(&node) {
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
                                self.metrics.reconcile_error("snapshot");
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
                            self.status
                                .set_certificate(&node, certificate.validity.not_after);
                            lock(&self.patches).built(
                                &node,
                                |type_url| type_version(&snapshot, type_url),
                                patches,
                            );
                            lock(&self.trust).built(
                                &node,
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
                            self.metrics.reconcile_error("snapshot");
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
                self.status.is_connected(&node) && self.metrics.change_pending(&node, since);
            if !self.cache.set(&node, snapshot) && marked {
                self.metrics.forget(&node);
            }
        }
        interner.sweep();
        drop(builder);
        for (how, count) in [
            ("built", rebuilt),
            ("endpoints", refreshed),
            ("policy", recompiled),
        ] {
            self.metrics
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
        self.metrics.set_certificate_expiries(expiries);
        self.built_generation.store(generation, Ordering::SeqCst);
        self.metrics.rebuilds.inc();
        self.metrics
            .rebuild_duration
            .observe(started.elapsed().as_secs_f64());
    }

    fn next_renewal(&self) -> Option<OffsetDateTime> {
        lock(&self.pki).next_renewal()
    }
}

/// The controller's admission and bookkeeping of each ADS stream.
struct Gate {
    shared: Arc<Shared>,
}

impl Gate {
    fn admit_node(&self, node: &Node, peer: Option<&[Vec<u8>]>) -> Result<String, AdmissionError> {
        // From the options, not the PKI: its lock is held through a whole rebuild.
        let claim = crate::admission::claim(node, peer, &self.shared.options.trust_domain)?;
        let known = lock(&self.shared.pods).get(&node.id).cloned();
        match known {
            Some(pod) if pod.service_account == claim.service_account => {
                if lock(&self.shared.registered).contains_key(&node.id) {
                    // Its sidecar may come back with new addresses (a restart elsewhere).
                    let current = self.remote_pod(node, &claim)?;
                    self.shared.stream_opened(&node.id);
                    if current != pod {
                        self.shared.register_remote_pod(current);
                    }
                }
            }
            Some(pod) => {
                return Err(AdmissionError::RunsAs {
                    pod: node.id.clone(),
                    runs_as: pod.service_account,
                    claimed: claim.service_account.to_owned(),
                });
            }
            None => {
                let pod = self.remote_pod(node, &claim)?;
                self.shared.stream_opened(&node.id);
                self.shared.register_remote_pod(pod);
            }
        }
        self.shared.status.connected(&node.id, &claim.spiffe_id);
        Ok(node.id.clone())
    }

    /// A sidecar started by `weft sidecar` describes its pod in its node metadata; it must name
    /// a workload of the index that runs as the identity it proved, be named as that
    /// workload's pods are, fit in its number of pods, sit in a pod network the operator
    /// allows at an address no other pod has, and name a module the controller serves.
    fn remote_pod(&self, node: &Node, claim: &Claim<'_>) -> Result<Pod, AdmissionError> {
        let metadata = crate::admission::described(node)?;
        let pod = Pod {
            namespace: claim.namespace.to_owned(),
            name: claim.pod.to_owned(),
            workload: metadata.workload,
            service_account: claim.service_account.to_owned(),
            labels: BTreeMap::new(),
            pod_ip: metadata.pod_ip,
            app_ip: metadata.app_ip,
            ports: Vec::new(),
            module: metadata.module,
        }
        .of_workload(&self.shared.catalog())
        .map_err(AdmissionError::Refused)?;
        self.shared
            .may_register(&pod)
            .map_err(AdmissionError::Refused)?;
        Ok(pod)
    }
}

impl Admission for Gate {
    fn admit(&self, node: &Node, peer: Option<&[Vec<u8>]>) -> Result<String, tonic::Status> {
        self.admit_node(node, peer).map_err(|refused| {
            log::warn!(
                "weft: refused an xDS connection from {}: {refused}",
                node.id
            );
            tonic::Status::from(refused)
        })
    }

    fn on_event(&self, key: &str, event: &Event) {
        match event {
            Event::Ack { type_url, version } => {
                self.shared.status.acked(key, short_name(type_url), version);
                lock(&self.shared.patches).acked(key, type_url, version);
                // (The ledger's lock is let go before the PKI's is taken: a rebuild takes them
                // the other way round.)
                let holds_anew = type_url == SECRET && lock(&self.shared.trust).acked(key, version);
                if holds_anew && *self.shared.pki().phase() != Phase::Steady {
                    // A rotation may take its next step.
                    self.shared.mark_changed();
                }
                if type_url == LISTENER && lock(&self.shared.ready).insert(key.to_owned()) {
                    log::info!("weft: {key} is ready");
                    self.shared.mark_changed();
                }
            }
            Event::Nack {
                type_url,
                version,
                error,
            } => {
                log::warn!(
                    "weft: proxy {key} refused {} version {version}: {error}",
                    short_name(type_url)
                );
                self.shared
                    .status
                    .nacked(key, short_name(type_url), version, error);
                self.shared.metrics.nacked(short_name(type_url));
                let withdrawn = lock(&self.shared.patches).nacked(key, type_url, version, error);
                if !withdrawn.is_empty() {
                    for patch in &withdrawn {
                        log::warn!(
                            "weft: EnvoyPatch {} spec.patches[{}] withdrawn for {key}, which refused it; it gets the unpatched configuration",
                            patch.patch,
                            patch.index
                        );
                    }
                    self.shared.metrics.reconcile_error("patch");
                    self.shared.mark_changed();
                }
            }
            Event::InSync => self.shared.metrics.in_sync(key, std::time::Instant::now()),
            Event::StaleNonce { .. } => {}
            Event::Missing {
                type_url,
                names,
                count,
            } => {
                if let Some(covered) = self.shared.status.refused(key, names, *count) {
                    log::warn!(
                        "weft: proxy {key} asked for {covered} {} resource(s) it is not given (logged at most once a minute), such as {}",
                        short_name(type_url),
                        names.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                    );
                }
            }
            Event::TooManyNames { type_url, count } => {
                if self.shared.status.refused(key, &[], *count).is_some() {
                    log::warn!(
                        "weft: proxy {key} named {count} {} resources in one request, more than {}; its stream is ended (logged at most once a minute)",
                        short_name(type_url),
                        weft_xds::protocol::MAX_RESOURCE_NAMES
                    );
                }
            }
        }
    }

    fn on_disconnect(&self, key: &str, _status: &[TypeStatus]) {
        // A sidecar that lost the controller keeps serving what it has: it stays ready (a pod
        // its sidecar registered, until it is forgotten).
        self.shared.status.disconnected(key);
        self.shared.metrics.forget(key);
        self.shared.stream_closed(key);
    }

    fn on_push(&self, _key: &str, type_url: &str, _version: &str) {
        self.shared.metrics.pushed(short_name(type_url));
    }
}

/// A running controller.
pub struct Controller {
    /// What it knows.
    pub shared: Arc<Shared>,
    /// Where the ADS server listens.
    pub xds_address: SocketAddr,
    /// Where the admin server listens.
    pub admin_address: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Controller {
    /// Starts the controller: reads the manifests into the store (objects with errors are
    /// refused and reported, the others are in force), opens the PKI, installs the module, and
    /// starts the ADS server, the admin server, the watcher and the rebuild loop.
    ///
    /// # Errors
    /// When no manifest can be found, or a port, file or certificate cannot be had.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let manifests = options.manifests.clone();
        let mut sources = Sources::default();
        let read = tokio::task::spawn_blocking(move || {
            crate::manifests::read(std::slice::from_ref(&manifests)).map(|manifests| {
                let (changes, problems) = sources.folder.read(&manifests);
                sources
                    .store
                    .apply(crate::folder::SOURCE, changes, problems);
                let settled = sources.store.settle();
                (sources, settled)
            })
        })
        .await??;
        let (sources, settled) = read;
        prepare_state(&options.state)?;
        let pki = Pki::open(
            &options.state,
            &options.ca,
            &options.trust_domain,
            options.rotation,
        )?;
        let module = Module::install(&options.module, &options.state)?;
        let now = OffsetDateTime::now_utc();
        let server = pki.server_credential(now)?;
        let bundle = pki.control_bundle_pem().to_owned();
        let shared = Arc::new(Shared {
            catalog: RwLock::new(settled.catalog.clone()),
            sources: Mutex::new(sources),
            refused: Mutex::new(Refused::default()),
            pods: Mutex::new(BTreeMap::new()),
            ready: Mutex::new(BTreeSet::new()),
            registered: Mutex::new(BTreeMap::new()),
            pki: Mutex::new(pki),
            ca_problem: Mutex::new(None),
            trust: Mutex::new(TrustLedger::default()),
            patches: Mutex::new(crate::patch::PatchLedger::default()),
            builder: Mutex::new(Builder::default()),
            dirty: Mutex::new(crate::mesh::Dirty::All),
            forgotten: Mutex::new(BTreeSet::new()),
            cache: Arc::new(SnapshotCache::new()),
            status: Status::default(),
            known_modules: RwLock::new(Module::installed(&options.state, &module)),
            module: RwLock::new(module),
            changed: Notify::new(),
            changed_since: Mutex::new(None),
            metrics: crate::metrics::Metrics::new(),
            heartbeat: Mutex::new(std::time::Instant::now()),
            registrations_changed: std::sync::atomic::AtomicBool::new(false),
            generation: AtomicU64::new(0),
            built_generation: AtomicU64::new(0),
            publish_after: std::time::Instant::now() + options.resume_grace,
            options,
        });
        shared.report(&settled);
        log_unapplied(&settled.warnings);
        shared.restore_registered();
        let (shutdown, _) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();

        let descriptors = crate::serve::raise_descriptor_limit();
        let xds = tokio::net::TcpListener::bind(shared.options.xds_listen).await?;
        let xds_address = xds.local_addr()?;
        let tls = crate::channel::server_config(&server.cert_pem, &server.key_pem, &bundle)?;
        let service = AdsService::new(
            shared.cache.clone(),
            Arc::new(Gate {
                shared: shared.clone(),
            }),
        )
        .with_stop(shutdown.subscribe());
        tasks.spawn(crate::serve::serve_xds(
            xds,
            tls,
            service.into_server(),
            shared.clone(),
            crate::serve::Limits::xds(descriptors),
            shutdown.subscribe(),
        ));

        let admin = tokio::net::TcpListener::bind(shared.options.admin_listen).await?;
        let admin_address = admin.local_addr()?;
        tasks.spawn(crate::admin::serve(
            admin,
            shared.clone(),
            crate::serve::Limits::admin(descriptors),
            shutdown.subscribe(),
        ));

        let watcher = shared.clone();
        let mut stop = shutdown.subscribe();
        tasks.spawn(async move {
            // Looking at files and reading them blocks: on a blocking thread, so that a file
            // system that hangs holds the watcher, never the runtime.
            let manifests = watcher.options.manifests.clone();
            let ca_files = watcher.pki().files().clone();
            let look = move || (fingerprint(&manifests), ca_fingerprint(&ca_files));
            let Ok((manifests_now, ca_now)) = tokio::task::spawn_blocking(look.clone()).await
            else {
                return;
            };
            let mut manifests_settler = Settler::new(manifests_now, SETTLE);
            let mut ca_settler = Settler::new(ca_now, SETTLE);
            loop {
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = tokio::time::sleep(watcher.options.poll) => {}
                }
                let Ok((manifests_now, ca_now)) = tokio::task::spawn_blocking(look.clone()).await
                else {
                    return;
                };
                let now = std::time::Instant::now();
                let manifests_changed = manifests_settler.observe(manifests_now, now);
                let ca_changed = ca_settler.observe(ca_now, now);
                if manifests_changed || ca_changed {
                    let shared = watcher.clone();
                    let reloaded = tokio::task::spawn_blocking(move || {
                        if manifests_changed {
                            shared.reload();
                        }
                        if ca_changed {
                            shared.reload_ca();
                        }
                    });
                    tokio::select! {
                        () = stopped(&mut stop) => return,
                        _ = reloaded => {}
                    }
                }
            }
        });

        let rebuilder = shared.clone();
        let mut stop = shutdown.subscribe();
        tasks.spawn(async move {
            let grace = rebuilder.options.resume_grace;
            if !grace.is_zero() {
                log::info!("weft: serving configuration in {grace:?}, once running sidecars have reconnected");
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = tokio::time::sleep(grace) => {}
                }
            }
            loop {
                let started = std::time::Instant::now();
                rebuilder.forget_departed(started);
                rebuilder.rebuild(OffsetDateTime::now_utc());
                rebuilder.save_registered();
                release_freed_memory();
                // Changes that keep coming (pods of a rollout getting ready one by one) are
                // gathered for as long as the last rebuild took, so that rebuilding takes at
                // most half of the time, and the proxies are sent fewer, larger changes
                // rather than a queue of small ones; a change after a quiet spell waits only
                // the gathering below.
                let rebuilt_at = std::time::Instant::now();
                let next_at = rebuilt_at + (rebuilt_at - started).min(MAX_PACING);
                // Wait for a change, the next renewal deadline read off the wall clock
                // (checked at least every second, so a clock that jumps is noticed), or a
                // departed pod to forget.
                loop {
                    *lock(&rebuilder.heartbeat) = std::time::Instant::now();
                    let until_renewal = rebuilder.next_renewal().map_or(Duration::from_secs(1), |at| {
                        let left = at - OffsetDateTime::now_utc();
                        Duration::try_from(left).unwrap_or(Duration::ZERO)
                    });
                    tokio::select! {
                        () = stopped(&mut stop) => return,
                        () = rebuilder.changed.notified() => {
                            // Changes often come in bursts (an editor writes twice): gather them.
                            let gathered = std::time::Instant::now() + Duration::from_millis(10);
                            tokio::time::sleep_until(gathered.max(next_at).into()).await;
                            break;
                        }
                        () = tokio::time::sleep(until_renewal.min(Duration::from_secs(1))) => {
                            let renewal = rebuilder.next_renewal().is_some_and(|at| at <= OffsetDateTime::now_utc());
                            if renewal || rebuilder.departure_due(std::time::Instant::now()) {
                                break;
                            }
                        }
                    }
                }
            }
        });
        Ok(Self {
            shared,
            xds_address,
            admin_address,
            shutdown,
            tasks,
        })
    }

    /// Stops every task and waits for them.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Stops every task and waits for them, leaving a controller that serves nothing (its
    /// ports are free again).
    pub async fn shutdown(&mut self) {
        let _ = self.shutdown.send(true);
        // The gRPC server's graceful stop waits for its HTTP/2 connections, which proxies keep
        // open; after a few seconds it is cut short.
        let drained = tokio::time::timeout(Duration::from_secs(3), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

/// What the state folder's `.gitignore` says: everything in it stays out of version control.
pub const STATE_GITIGNORE: &str =
    "# weft's state: the mesh CA's key and every workload's key. Never commit it.\n*\n";

/// Creates the state folder if need be, readable by its owner only, with a `.gitignore` that
/// keeps all of it out of version control (local mode keeps it in the manifests folder by
/// default, which is likely a repository).
///
/// # Errors
/// When the folder or the file cannot be written.
pub fn prepare_state(state: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(state)?;
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700))?;
    let ignore = state.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(&ignore, STATE_GITIGNORE)?;
    }
    Ok(())
}

/// Resolves when `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Logs what weft's own kinds leave unapplied: a TrafficPolicy that lost to another or whose
/// Service is missing, a patch that selects nothing (SMI's warnings are `weft check`'s).
fn log_unapplied(diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics
        .iter()
        .filter(|d| matches!(d.kind.as_deref(), Some("TrafficPolicy" | "EnvoyPatch")))
    {
        log::warn!("{diagnostic}");
    }
}

/// Hands the memory a rebuild freed back to the system. A rebuild holds every pod's old and new
/// snapshot at once; glibc's allocator keeps what was freed for reuse, so without this the
/// controller stays at the high-water mark of its largest rebuild (measured: +260 MiB after
/// 500 pods came and went beside 5,000; docs/BENCHMARKS.md).
/// The longest a change waits because the last rebuild was long (see the rebuild loop).
const MAX_PACING: Duration = Duration::from_secs(1);

fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heap to the system.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The operator's CA files as the watcher sees them.
fn ca_fingerprint(files: &CaFiles) -> Fingerprint {
    crate::watch::fingerprint(
        [Some(&files.cert), Some(&files.key), files.bundle.as_ref()]
            .into_iter()
            .flatten()
            .cloned(),
    )
}

/// The manifest files, found as the manifests reader finds them (so a link loop ends, hidden
/// entries such as local mode's `DIR/.weft` are skipped), as the watcher sees them.
fn fingerprint(dir: &Path) -> Fingerprint {
    crate::watch::fingerprint(crate::manifests::list(&[dir.to_path_buf()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_ends_on_a_link_loop_skips_hidden_entries_and_sees_an_edit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "kind: x\n").unwrap();
        std::fs::create_dir(dir.path().join(".weft")).unwrap();
        std::fs::write(dir.path().join(".weft/state.yaml"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
        let before = fingerprint(dir.path());
        assert_eq!(before.len(), 1, "{before:?}");
        std::fs::write(dir.path().join("a.yaml"), "kind: changed\n").unwrap();
        assert_ne!(fingerprint(dir.path()), before);
    }

    #[test]
    fn the_state_folder_is_private_and_ignored_by_version_control() {
        use std::os::unix::fs::PermissionsExt as _;
        let manifests = tempfile::tempdir().unwrap();
        let state = manifests.path().join(".weft");
        prepare_state(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let ignore = std::fs::read_to_string(state.join(".gitignore")).unwrap();
        assert!(ignore.lines().any(|line| line == "*"), "{ignore}");
        // git itself agrees, when it is there to ask.
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .current_dir(manifests.path())
                .output()
        };
        if git(&["init", "-q"]).is_ok_and(|o| o.status.success()) {
            std::fs::write(state.join("ca-key.pem"), "key").unwrap();
            let ignored = git(&["check-ignore", "-q", ".weft/ca-key.pem"]).unwrap();
            assert!(ignored.status.success(), "git does not ignore the CA key");
        }
    }

    #[test]
    fn a_kept_module_that_does_not_match_its_name_is_replaced() {
        let state = tempfile::tempdir().unwrap();
        let source = state.path().join("weft.wasm");
        std::fs::write(&source, b"\0asm module bytes").unwrap();
        let module = Module::install(&source, state.path()).unwrap();
        assert!(
            module
                .path
                .ends_with(format!("weft-{}.wasm", module.sha256))
        );
        // Corrupted (or tampered with) under its content-addressed name: installed again.
        std::fs::write(&module.path, b"something else").unwrap();
        let again = Module::install(&source, state.path()).unwrap();
        assert_eq!(std::fs::read(&again.path).unwrap(), b"\0asm module bytes");
    }
}
