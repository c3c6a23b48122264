//! The controller's Prometheus metrics, served at `/metrics` on the admin port in the
//! OpenMetrics text format: proxies connected, pushes and refusals per xDS type, the time from
//! a change to each proxy applying it, certificate expiry per identity, the index's size,
//! rebuilds and reconcile errors, and the process's resident memory. docs/controller.md lists
//! each one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Istio's `pilot_proxy_convergence_time` buckets (0.1 s to 30 s), with finer ones below
/// them: a change on loopback converges in tens of milliseconds.
pub const CONVERGENCE_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0, 5.0, 10.0, 30.0,
];

/// How long a rebuild of every proxy's snapshot takes.
const REBUILD_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Labels of per-type metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// `cds`, `eds`, `lds`, `rds`, `sds` or `ecds`.
    pub r#type: String,
}

/// Labels of per-identity metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    /// A SPIFFE ID.
    pub identity: String,
}

/// Labels of the index's size.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// An object kind (`TrafficTarget`, `Service`, ...).
    pub kind: String,
}

/// How a snapshot was made.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HowLabels {
    /// `built`, `policy` or `endpoints`.
    pub how: String,
}

/// Labels of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Where it failed: `manifests` (a change was refused), `certificate` (one could not be
    /// issued) or `snapshot` (a proxy's configuration could not be built).
    pub stage: String,
}

/// Every metric of the controller.
pub struct Metrics {
    registry: Registry,
    /// Proxies with an open ADS stream.
    pub proxies_connected: Gauge,
    /// Pods known (replicas run and sidecars registered).
    pub pods: Gauge,
    /// Responses sent, per type.
    pub pushes: Family<TypeLabels, Counter>,
    /// Versions refused by a proxy, per type.
    pub nacks: Family<TypeLabels, Counter>,
    /// From a change to a proxy having applied all of it.
    pub convergence: Histogram,
    /// Rebuilds of every proxy's snapshot.
    pub rebuilds: Counter,
    /// How long each rebuild took.
    pub rebuild_duration: Histogram,
    /// Proxies' snapshots built afresh (`how="built"`), given new plugin configurations (and
    /// endpoints) only (`how="policy"`), or new endpoints only (`how="endpoints"`).
    pub snapshots: Family<HowLabels, Counter>,
    /// Errors while reconciling, per stage.
    pub reconcile_errors: Family<StageLabels, Counter>,
    /// When each identity's current certificate expires (Unix seconds).
    pub certificate_expiry: Family<IdentityLabels, Gauge>,
    /// Objects in the index, per kind.
    pub index_objects: Family<KindLabels, Gauge>,
    /// Objects refused, per kind.
    pub refused_objects: Family<KindLabels, Gauge>,
    /// The controller's resident memory.
    pub resident_memory: Gauge<u64, AtomicU64>,
    /// Per proxy: since when it has had a change it has not yet applied.
    pending: Mutex<HashMap<String, Instant>>,
    /// The identities `certificate_expiry` shows.
    exported_identities: Mutex<BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under `weft_controller_`.
    pub fn new() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            proxies_connected: Gauge::default(),
            pods: Gauge::default(),
            pushes: Family::default(),
            nacks: Family::default(),
            convergence: Histogram::new(CONVERGENCE_BUCKETS),
            rebuilds: Counter::default(),
            rebuild_duration: Histogram::new(REBUILD_BUCKETS),
            snapshots: Family::default(),
            reconcile_errors: Family::default(),
            certificate_expiry: Family::default(),
            index_objects: Family::default(),
            refused_objects: Family::default(),
            resident_memory: Gauge::default(),
            pending: Mutex::new(HashMap::new()),
            exported_identities: Mutex::new(BTreeSet::new()),
        };
        let mut registry = Registry::with_prefix("weft_controller");
        registry.register(
            "proxies_connected",
            "Proxies with an open ADS stream",
            metrics.proxies_connected.clone(),
        );
        registry.register(
            "pods",
            "Pods known: replicas run and sidecars registered",
            metrics.pods.clone(),
        );
        registry.register(
            "xds_pushes",
            "xDS responses sent, per type",
            metrics.pushes.clone(),
        );
        registry.register(
            "xds_nacks",
            "xDS versions a proxy refused, per type",
            metrics.nacks.clone(),
        );
        registry.register(
            "proxy_convergence_seconds",
            "From a change the controller saw to a proxy having applied all of it",
            metrics.convergence.clone(),
        );
        registry.register(
            "rebuilds",
            "Rebuilds of every proxy's snapshot",
            metrics.rebuilds.clone(),
        );
        registry.register(
            "rebuild_duration_seconds",
            "How long a rebuild of every proxy's snapshot took",
            metrics.rebuild_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Errors while reconciling, per stage (manifests, certificate, snapshot)",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When each identity's current workload certificate expires, Unix seconds",
            metrics.certificate_expiry.clone(),
        );
        registry.register(
            "index_objects",
            "Objects in the index, per kind",
            metrics.index_objects.clone(),
        );
        registry.register(
            "snapshots",
            "Proxies' snapshots built afresh (how=built), given new plugin configurations only (how=policy) or new endpoints only (how=endpoints)",
            metrics.snapshots.clone(),
        );
        registry.register(
            "refused_objects",
            "Objects refused, per kind: an error keeps them, or their new version, out of force",
            metrics.refused_objects.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "The controller's resident memory",
            metrics.resident_memory.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// `node` has a change to apply that the controller saw at `since` (the earliest one it
    /// has not applied counts). Returns whether it had none pending before.
    pub fn change_pending(&self, node: &str, since: Instant) -> bool {
        let mut pending = lock(&self.pending);
        if pending.contains_key(node) {
            return false;
        }
        pending.insert(node.to_owned(), since);
        true
    }

    /// The current certificate of each identity expires at (Unix seconds); identities not
    /// named are no longer shown.
    pub fn set_certificate_expiries(&self, expiries: BTreeMap<String, i64>) {
        let mut exported = lock(&self.exported_identities);
        for gone in exported.difference(&expiries.keys().cloned().collect()) {
            self.certificate_expiry.remove(&IdentityLabels {
                identity: gone.clone(),
            });
        }
        for (identity, at) in &expiries {
            self.certificate_expiry
                .get_or_create(&IdentityLabels {
                    identity: identity.clone(),
                })
                .set(*at);
        }
        *exported = expiries.into_keys().collect();
    }

    /// Whether `node` has a change it has not applied yet.
    pub fn is_pending(&self, node: &str) -> bool {
        lock(&self.pending).contains_key(node)
    }

    /// `node` has applied everything it was sent at `now`: the end of its convergence.
    pub fn in_sync(&self, node: &str, now: Instant) {
        if let Some(since) = lock(&self.pending).remove(node) {
            self.convergence
                .observe(now.saturating_duration_since(since).as_secs_f64());
        }
    }

    /// `node` is gone or disconnected: what it had pending is not a convergence to measure.
    pub fn forget(&self, node: &str) {
        lock(&self.pending).remove(node);
    }

    /// Counts a response of `kind` (`cds`, ...) sent.
    pub fn pushed(&self, kind: &str) {
        count_type(&self.pushes, kind);
    }

    /// Counts a version of `kind` refused.
    pub fn nacked(&self, kind: &str) {
        count_type(&self.nacks, kind);
    }

    /// Shows how many objects of each kind are refused (a kind with none is not shown).
    pub fn set_refused(
        &self,
        refused: &std::collections::BTreeMap<weft_policy::object::ObjectKey, crate::store::Refusal>,
    ) {
        let mut counts: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for key in refused.keys() {
            *counts.entry(key.kind.as_str()).or_default() += 1;
        }
        self.refused_objects.clear();
        for (kind, count) in counts {
            self.refused_objects
                .get_or_create(&KindLabels {
                    kind: kind.to_owned(),
                })
                .set(count);
        }
    }

    /// Counts an error at `stage`.
    pub fn reconcile_error(&self, stage: &str) {
        self.reconcile_errors
            .get_or_create(&StageLabels {
                stage: stage.to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        if let Some(bytes) = resident_memory() {
            self.resident_memory.set(bytes);
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn count_type(family: &Family<TypeLabels, Counter>, kind: &str) {
    family
        .get_or_create(&TypeLabels {
            r#type: kind.to_owned(),
        })
        .inc();
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The process's resident memory, from `/proc/self/status` (Linux).
fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|line| line.split([' ', '{']).next() == Some(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn a_convergence_is_measured_from_the_earliest_change_a_proxy_had_not_applied() {
        let metrics = Metrics::new();
        let start = Instant::now();
        metrics.change_pending("shop/a-0", start);
        // A second change before the first was applied: still measured from the first.
        metrics.change_pending("shop/a-0", start + Duration::from_millis(300));
        metrics.in_sync("shop/a-0", start + Duration::from_millis(400));
        // In sync with nothing pending (a reconnect, an ACK of an unchanged version): nothing.
        metrics.in_sync("shop/a-0", start + Duration::from_secs(9));
        // A proxy that left: its pending change is not measured when it comes back.
        metrics.change_pending("shop/b-0", start);
        metrics.forget("shop/b-0");
        metrics.in_sync("shop/b-0", start + Duration::from_secs(9));
        let text = metrics.encode();
        assert_eq!(
            sample(&text, "weft_controller_proxy_convergence_seconds_count"),
            Some(1.0)
        );
        let sum = sample(&text, "weft_controller_proxy_convergence_seconds_sum").unwrap();
        assert!((sum - 0.4).abs() < 1e-9, "{sum}");
        assert!(
            text.contains("weft_controller_proxy_convergence_seconds_bucket{le=\"0.5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("weft_controller_proxy_convergence_seconds_bucket{le=\"0.25\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn the_text_names_every_metric_and_the_resident_memory() {
        let metrics = Metrics::new();
        metrics.reconcile_error("manifests");
        metrics
            .pushes
            .get_or_create(&TypeLabels {
                r#type: "cds".to_owned(),
            })
            .inc();
        let text = metrics.encode();
        for name in [
            "weft_controller_proxies_connected",
            "weft_controller_pods",
            "weft_controller_rebuilds_total",
            "weft_controller_rebuild_duration_seconds_count",
        ] {
            assert!(sample(&text, name).is_some(), "{name} in\n{text}");
        }
        assert!(text.contains("weft_controller_xds_pushes_total{type=\"cds\"} 1"));
        assert!(text.contains("weft_controller_reconcile_errors_total{stage=\"manifests\"} 1"));
        let rss = sample(&text, "weft_controller_process_resident_memory_bytes").unwrap();
        assert!(rss > 1_000_000.0, "{rss}");
        assert!(text.ends_with("# EOF\n"));
    }
}
