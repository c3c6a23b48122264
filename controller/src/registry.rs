//! The pods the controller serves: those a source told it about (local mode runs them), and
//! those their sidecar registered over ADS (`weft sidecar` describes its pod in its node
//! metadata). What a registering sidecar may claim is decided here ([`Registry::may_register`]),
//! and the registered pods are kept in the state folder so that a restarted controller still has
//! their endpoints before they reconnect.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use weft_policy::catalog::Catalog;

use crate::mesh::Pod;

/// The file in the state folder that keeps the pods sidecars registered.
pub const REGISTERED_FILE: &str = "registered-pods.json";

/// The default of [`crate::options::Options::forget_after`]: longer than a controller restart
/// or a network blip, shorter than Kubernetes' 40 s before a silent node's pods go unready
/// plus eviction.
pub const FORGET_AFTER: Duration = Duration::from_secs(30);

/// The largest file of registered pods read (about 300 bytes a pod).
const MAX_REGISTERED_BYTES: u64 = 64 * 1024 * 1024;

/// How many pods one workload's sidecars may register: its replicas, and a quarter more (at
/// least one) for the new pods of a rolling update while the old are not yet forgotten, as
/// Kubernetes' default surge.
pub fn registrations_allowed(replicas: u32) -> usize {
    let replicas = usize::try_from(replicas).unwrap_or(usize::MAX);
    replicas.saturating_add(replicas.div_ceil(4).max(1))
}

/// The ADS streams of a pod its sidecar registered.
#[derive(Debug, Clone, Copy)]
struct Streams {
    open: usize,
    /// When the last one ended (while `open` is 0).
    closed_at: Option<Instant>,
}

/// What a registering sidecar is checked against besides the registry.
#[derive(Debug, Clone, Copy)]
pub struct RegistrationRules<'a> {
    /// The networks a pod's address may be in (none: no sidecar may register a pod).
    pub pod_networks: &'a [ipnet::Ipv4Net],
    /// How long a registered pod outlives its last stream (for the messages).
    pub forget_after: Duration,
}

/// The pods as a rebuild sees them, built once per change of the registry and shared until the
/// next: a change of policy alone rebuilds with the very same set, and what is computed per pod
/// here (its node id, its identity, a digest of it) is not computed again per rebuild.
#[derive(Debug, Default)]
pub struct PodSet {
    /// Every pod, in node id order.
    pub pods: Vec<Pod>,
    /// Their node ids, in the same order.
    pub nodes: Vec<String>,
    /// Their identities, in the same order.
    pub identities: Vec<weft_policy::bundle::Identity>,
    /// A digest of each pod (for telling a pod's inputs apart from one rebuild to the next).
    pub digests: Vec<u64>,
    /// The node ids whose sidecar has applied its listeners.
    pub ready: BTreeSet<String>,
}

impl PodSet {
    fn of(registry: &Registry) -> Self {
        let mut set = Self {
            ready: registry.ready.clone(),
            ..Self::default()
        };
        for (node, pod) in &registry.pods {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::hash::DefaultHasher::new();
            pod.hash(&mut hasher);
            set.digests.push(hasher.finish());
            set.identities.push(pod.identity());
            set.nodes.push(node.clone());
            set.pods.push(pod.clone());
        }
        set
    }
}

/// The pods, their readiness and their sidecars' streams, by node id.
#[derive(Debug, Default)]
pub struct Registry {
    pods: BTreeMap<String, Pod>,
    /// Node ids whose sidecar has applied its listeners.
    ready: BTreeSet<String>,
    /// Pods their sidecar registered: its open streams, and since when it has had none.
    registered: BTreeMap<String, Streams>,
    /// Whether the registered pods changed since they were last kept in the state folder.
    registrations_changed: bool,
    /// Pods removed since the last rebuild took them (one that comes back is built afresh).
    forgotten: BTreeSet<String>,
    /// The pods and their readiness as of the last change, once asked for.
    set: Option<std::sync::Arc<PodSet>>,
}

impl Registry {
    /// Adds or replaces a pod a source saw start.
    pub fn insert(&mut self, pod: Pod) {
        self.set = None;
        self.pods.insert(pod.node_id(), pod);
    }

    /// The pods and their readiness now, shared until the next change.
    pub fn pod_set(&mut self) -> std::sync::Arc<PodSet> {
        if let Some(set) = &self.set {
            return set.clone();
        }
        let set = std::sync::Arc::new(PodSet::of(self));
        self.set = Some(set.clone());
        set
    }

    /// Adds or replaces a pod its sidecar registered (kept across restarts).
    pub fn insert_registered(&mut self, pod: Pod) {
        self.registrations_changed = true;
        self.insert(pod);
    }

    /// Removes a pod; it is remembered as forgotten until the next rebuild takes the list.
    pub fn remove(&mut self, node: &str) {
        self.set = None;
        self.pods.remove(node);
        self.ready.remove(node);
        if self.registered.remove(node).is_some() {
            self.registrations_changed = true;
        }
        self.forgotten.insert(node.to_owned());
    }

    /// The pods removed since the last call.
    pub fn take_forgotten(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.forgotten)
    }

    /// The pod of `node`.
    pub fn pod(&self, node: &str) -> Option<&Pod> {
        self.pods.get(node)
    }

    /// Every pod, by node id.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// How many pods there are.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether there is no pod.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// `node`'s sidecar applied its listeners; returns whether that is new.
    pub fn set_ready(&mut self, node: &str) -> bool {
        let new = self.ready.insert(node.to_owned());
        if new {
            self.set = None;
        }
        new
    }

    /// Whether `node`'s sidecar has applied its listeners.
    pub fn is_ready(&self, node: &str) -> bool {
        self.ready.contains(node)
    }

    /// The node ids whose sidecar has applied its listeners.
    pub fn ready(&self) -> &BTreeSet<String> {
        &self.ready
    }

    /// Whether `node` is a pod its sidecar registered.
    pub fn is_registered(&self, node: &str) -> bool {
        self.registered.contains_key(node)
    }

    /// A stream of `node`, a pod its sidecar registered, opened.
    pub fn stream_opened(&mut self, node: &str) {
        let streams = self.registered.entry(node.to_owned()).or_insert(Streams {
            open: 0,
            closed_at: None,
        });
        streams.open += 1;
        streams.closed_at = None;
    }

    /// A stream of `node` ended at `now` (nothing happens unless its sidecar registered it).
    pub fn stream_closed(&mut self, node: &str, now: Instant) {
        if let Some(streams) = self.registered.get_mut(node) {
            streams.open = streams.open.saturating_sub(1);
            if streams.open == 0 {
                streams.closed_at = Some(now);
            }
        }
    }

    /// The registered pods that have had no stream for `forget_after` at `now`.
    pub fn departed(&self, now: Instant, forget_after: Duration) -> Vec<String> {
        self.registered
            .iter()
            .filter(|(_, streams)| Self::is_departed(streams, now, forget_after))
            .map(|(node, _)| node.clone())
            .collect()
    }

    fn is_departed(streams: &Streams, now: Instant, forget_after: Duration) -> bool {
        streams.open == 0
            && streams
                .closed_at
                .is_some_and(|at| now.saturating_duration_since(at) >= forget_after)
    }

    /// The registered pods to keep in the state folder, if they changed since the last call.
    pub fn take_registrations_changed(&mut self) -> Option<Vec<Pod>> {
        if !std::mem::take(&mut self.registrations_changed) {
            return None;
        }
        Some(
            self.registered
                .keys()
                .filter_map(|node| self.pods.get(node).cloned())
                .collect(),
        )
    }

    /// Takes back a pod a previous run kept, at `now`: ready (its sidecar kept serving),
    /// registered with no stream open.
    pub fn restore(&mut self, pod: Pod, now: Instant) {
        self.set = None;
        let node = pod.node_id();
        self.pods.insert(node.clone(), pod);
        self.ready.insert(node.clone());
        self.registered.insert(
            node,
            Streams {
                open: 0,
                closed_at: Some(now),
            },
        );
    }

    /// Whether `pod` (of its workload, as `catalog` has it) may be registered by its sidecar;
    /// why not otherwise. `is_known_module` says whether a module file is one the controller
    /// serves.
    ///
    /// # Errors
    /// The reason, naming the pod and what would be allowed.
    pub fn may_register(
        &self,
        pod: &Pod,
        catalog: &Catalog,
        rules: RegistrationRules<'_>,
        is_known_module: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let node = pod.node_id();
        let networks = rules.pod_networks;
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
        if let Some(other) = self
            .pods
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
        let of_workload = self
            .pods
            .values()
            .filter(|other| {
                other.namespace == pod.namespace
                    && other.workload == pod.workload
                    && other.node_id() != node
                    && self.registered.contains_key(&other.node_id())
            })
            .count();
        if of_workload >= allowed {
            return Err(format!(
                "{node}: {} {}/{} already has {of_workload} pod(s) registered, as many as its {} replica(s) allow (with a rolling update's surge); a pod that went away is forgotten {:?} after its sidecar disconnected",
                workload.kind, pod.namespace, pod.workload, workload.replicas, rules.forget_after
            ));
        }
        if let Some(module) = &pod.module
            && !is_known_module(module)
        {
            return Err(format!(
                "{node} names module {module}, which is not a module this controller serves (weft-<sha256>.wasm, fetched with weft sidecar)"
            ));
        }
        Ok(())
    }
}

/// Keeps `pods` in the state folder, written whole then renamed.
///
/// # Errors
/// When the file cannot be written.
pub fn save(state: &Path, pods: &[Pod]) -> std::io::Result<()> {
    let path = state.join(REGISTERED_FILE);
    let staging = state.join(format!(".{REGISTERED_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(pods).map_err(std::io::Error::other)?;
    std::fs::write(&staging, json)?;
    std::fs::rename(&staging, &path)
}

/// The pods a previous run kept in the state folder; none when there is no such file.
///
/// # Errors
/// When the file cannot be read or is not a list of pods.
pub fn load(state: &Path) -> Result<Vec<Pod>, String> {
    let path = state.join(REGISTERED_FILE);
    let json = match crate::files::read_regular(&path, MAX_REGISTERED_BYTES) {
        Ok(json) => json,
        Err(crate::files::FileError::Read(err)) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(err) => return Err(format!("{}: {err}", path.display())),
    };
    serde_json::from_slice(&json).map_err(|err| format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        crate::testing::MeshBuilder::default()
            .deployment("shop", "api", "api", None, &[8080])
            .catalog()
    }

    fn pod(name: &str, ip: [u8; 4]) -> Pod {
        Pod {
            namespace: "shop".to_owned(),
            name: name.to_owned(),
            workload: "api".to_owned(),
            service_account: "api".to_owned(),
            labels: BTreeMap::new(),
            pod_ip: ip.into(),
            app_ip: ip.into(),
            ports: Vec::new(),
            module: None,
        }
    }

    /// As the gate registers a pod: its stream opened, then the pod.
    fn register(registry: &mut Registry, pod: Pod) {
        registry.stream_opened(&pod.node_id());
        registry.insert_registered(pod);
    }

    const NETWORKS: &[&str] = &["10.0.0.0/8"];

    fn rules(networks: &[ipnet::Ipv4Net]) -> RegistrationRules<'_> {
        RegistrationRules {
            pod_networks: networks,
            forget_after: FORGET_AFTER,
        }
    }

    fn networks() -> Vec<ipnet::Ipv4Net> {
        NETWORKS.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn a_registration_is_refused_outside_the_pod_networks_misnamed_on_a_taken_address_or_past_the_surge()
     {
        let catalog = catalog();
        let networks = networks();
        let mut registry = Registry::default();
        let ok = |registry: &Registry, pod: &Pod| {
            registry.may_register(pod, &catalog, rules(&networks), |_| false)
        };
        assert!(ok(&registry, &pod("api-1", [10, 0, 0, 1])).is_ok());
        let outside = ok(&registry, &pod("api-1", [192, 168, 0, 1])).unwrap_err();
        assert!(outside.contains("10.0.0.0/8"), "{outside}");
        let misnamed = ok(&registry, &pod("web-1", [10, 0, 0, 1])).unwrap_err();
        assert!(misnamed.contains("api-<suffix>"), "{misnamed}");
        let none = registry
            .may_register(&pod("api-1", [10, 0, 0, 1]), &catalog, rules(&[]), |_| true)
            .unwrap_err();
        assert!(none.contains("cannot register"), "{none}");

        register(&mut registry, pod("api-1", [10, 0, 0, 1]));
        let taken = ok(&registry, &pod("api-2", [10, 0, 0, 1])).unwrap_err();
        assert!(taken.contains("already pod"), "{taken}");
        // Two replicas and a surge of one: the fourth is refused.
        register(&mut registry, pod("api-2", [10, 0, 0, 2]));
        register(&mut registry, pod("api-3", [10, 0, 0, 3]));
        let surge = ok(&registry, &pod("api-4", [10, 0, 0, 4])).unwrap_err();
        assert!(surge.contains("3 pod(s) registered"), "{surge}");
        // The same pod coming back is not counted against itself.
        assert!(ok(&registry, &pod("api-3", [10, 0, 0, 3])).is_ok());

        let mut named = pod("api-9", [10, 0, 0, 9]);
        named.module = Some("/tmp/evil.wasm".to_owned());
        registry.remove("shop/api-3");
        let module = ok(&registry, &named).unwrap_err();
        assert!(
            module.contains("not a module this controller serves"),
            "{module}"
        );
    }

    #[test]
    fn a_registered_pod_departs_only_after_its_last_stream_has_been_closed_long_enough() {
        let mut registry = Registry::default();
        let node = pod("api-1", [10, 0, 0, 1]).node_id();
        register(&mut registry, pod("api-1", [10, 0, 0, 1]));
        registry.stream_opened(&node);
        let start = Instant::now();
        let later = start + FORGET_AFTER;
        registry.stream_closed(&node, start);
        assert!(
            registry.departed(later, FORGET_AFTER).is_empty(),
            "a stream is still open"
        );
        registry.stream_closed(&node, start);
        assert!(registry.departed(start, FORGET_AFTER).is_empty());
        assert_eq!(registry.departed(later, FORGET_AFTER), vec![node.clone()]);
        registry.remove(&node);
        assert_eq!(registry.take_forgotten(), BTreeSet::from([node]));
        assert!(registry.take_forgotten().is_empty());
    }

    #[test]
    fn registered_pods_are_kept_once_per_change_and_read_back() {
        let state = tempfile::tempdir().unwrap();
        assert_eq!(load(state.path()).unwrap(), Vec::new());
        let mut registry = Registry::default();
        registry.insert(pod("api-0", [10, 0, 0, 9]));
        assert!(
            registry.take_registrations_changed().is_none(),
            "not registered by a sidecar"
        );
        registry.insert_registered(pod("api-1", [10, 0, 0, 1]));
        let kept = registry.take_registrations_changed().unwrap();
        assert!(registry.take_registrations_changed().is_none());
        save(state.path(), &kept).unwrap();
        assert_eq!(load(state.path()).unwrap(), kept);
        std::fs::write(state.path().join(REGISTERED_FILE), "not json").unwrap();
        let err = load(state.path()).unwrap_err();
        assert!(err.contains(REGISTERED_FILE), "{err}");
    }

    #[test]
    fn the_pod_set_is_shared_until_a_pod_or_its_readiness_changes() {
        let mut registry = Registry::default();
        registry.insert(pod("api-0", [10, 0, 0, 1]));
        let first = registry.pod_set();
        assert!(std::sync::Arc::ptr_eq(&first, &registry.pod_set()));
        assert_eq!(first.nodes, ["shop/api-0"]);
        assert!(first.ready.is_empty());
        assert!(registry.set_ready("shop/api-0"));
        let ready = registry.pod_set();
        assert!(!std::sync::Arc::ptr_eq(&first, &ready));
        assert!(ready.ready.contains("shop/api-0"));
        assert!(!registry.set_ready("shop/api-0"), "already ready");
        assert!(std::sync::Arc::ptr_eq(&ready, &registry.pod_set()));
        registry.insert(pod("api-1", [10, 0, 0, 2]));
        let two = registry.pod_set();
        assert_eq!(two.nodes, ["shop/api-0", "shop/api-1"]);
        assert_ne!(two.digests[0], two.digests[1]);
        registry.remove("shop/api-0");
        assert_eq!(registry.pod_set().nodes, ["shop/api-1"]);
    }

    #[test]
    fn a_registered_pods_file_that_is_a_fifo_or_too_large_is_refused_without_blocking() {
        let state = tempfile::tempdir().unwrap();
        let path = state.path().join(REGISTERED_FILE);
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        // Nobody writes the FIFO: reading it would block for ever.
        let err = load(state.path()).unwrap_err();
        assert!(err.contains(REGISTERED_FILE), "{err}");
        std::fs::remove_file(&path).unwrap();
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_REGISTERED_BYTES + 1).unwrap();
        let err = load(state.path()).unwrap_err();
        assert!(err.contains(REGISTERED_FILE), "{err}");
    }
}
