//! The status report: what the controller's `/status` answers and `weft status` reads, as one
//! type both sides use. Every field has a default, so that a `weft` of another version reads
//! what it knows of a report and leaves the rest.

use serde::{Deserialize, Serialize};

use crate::status::ProxyStatus;
use weft_policy::object::ObjectKey;

use crate::store::{Kept, Refusal};
use crate::trust::{Phase, RootId};

/// What `/status` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusReport {
    /// The catalog's generation and the one every proxy was last built from.
    pub generation: Generations,
    /// What became of each EnvoyPatch for each proxy.
    pub patches: Vec<PatchState>,
    /// The module sidecars load.
    pub module_sha256: String,
    /// The objects refused, and what is in force of each.
    pub refused: Vec<RefusedObject>,
    /// The sources' problems that concern no single object, as `weft check` prints them.
    pub problems: Vec<String>,
    /// Every pod and its proxy.
    pub pods: Vec<PodReport>,
    /// The mesh's roots.
    pub trust: TrustReport,
}

/// Changes of the catalog accepted since the start, and the one the last rebuild served: equal
/// when every proxy's snapshot is built from the objects in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Generations {
    /// The catalog's.
    pub catalog: u64,
    /// The last rebuild's.
    pub built: u64,
}

/// One pod and its proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodReport {
    /// Its node id, `namespace/name`.
    pub pod: String,
    /// Its workload, `namespace/name`.
    pub workload: String,
    /// The ServiceAccount it runs as.
    pub service_account: String,
    /// Its address.
    pub pod_ip: String,
    /// Its application's address.
    pub app_ip: String,
    /// Whether its sidecar has applied its listeners.
    pub ready: bool,
    /// Whether its proxy is connected and has applied the latest change.
    pub in_sync: bool,
    /// What its proxy has done, once it connected.
    pub proxy: Option<ProxyStatus>,
}

/// What became of one resource patch for one proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PatchState {
    /// The proxy's node id.
    pub pod: String,
    /// The EnvoyPatch, `namespace/name`.
    pub patch: String,
    /// Which of its patches, `spec.patches[N]`.
    pub field: String,
    /// The resource, `Type name`.
    pub resource: String,
    /// Applied, or why not.
    pub state: PatchOutcome,
    /// Why it is not applied.
    pub reason: Option<String>,
}

/// Whether a resource patch is in a proxy's configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchOutcome {
    /// It is.
    #[default]
    Applied,
    /// Envoy refused the configuration with it; that proxy gets the unpatched resource until
    /// the patch changes.
    Withdrawn,
    /// Patches are off in this controller.
    Off,
    /// It cannot be applied (no such resource, an operation that fails, the guard).
    Refused,
}

impl std::fmt::Display for PatchOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Applied => "applied",
            Self::Withdrawn => "withdrawn",
            Self::Off => "off",
            Self::Refused => "refused",
        })
    }
}

/// A refused object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedObject {
    /// `Kind namespace/name`.
    pub object: String,
    /// What is in force instead.
    pub kept: Kept,
    /// Its errors, as `weft check` prints them.
    pub problems: Vec<String>,
}

impl RefusedObject {
    /// The report of `key`'s refusal.
    pub fn new(key: &ObjectKey, refusal: &Refusal) -> Self {
        Self {
            object: key.to_string(),
            kept: refusal.kept,
            problems: refusal.problems.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The mesh's roots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrustReport {
    /// The root that issues workload certificates.
    pub issuer: Option<RootId>,
    /// The roots every proxy trusts.
    pub roots: Vec<RootId>,
    /// Where a rotation stands.
    pub rotation: Phase,
    /// Why the operator's CA or trust bundle was last refused.
    pub problem: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_as_written_and_a_partial_one_reads_with_defaults() {
        let report = StatusReport {
            generation: Generations {
                catalog: 3,
                built: 2,
            },
            patches: vec![PatchState {
                pod: "shop/a-0".to_owned(),
                patch: "shop/p".to_owned(),
                field: "spec.patches[0]".to_owned(),
                resource: "Cluster x".to_owned(),
                state: PatchOutcome::Withdrawn,
                reason: Some("Envoy refused it: x".to_owned()),
            }],
            module_sha256: "ab".repeat(32),
            refused: vec![RefusedObject {
                object: "TrafficTarget shop/t".to_owned(),
                kept: Kept::Previous,
                problems: vec!["m.yaml:3: bad".to_owned()],
            }],
            problems: vec!["n.yaml: not YAML".to_owned()],
            pods: vec![PodReport {
                pod: "shop/a-0".to_owned(),
                ready: true,
                proxy: Some(ProxyStatus::default()),
                ..PodReport::default()
            }],
            trust: TrustReport {
                issuer: Some(RootId::of(b"root")),
                roots: vec![RootId::of(b"root")],
                rotation: Phase::RetiringRoots {
                    roots: vec![RootId::of(b"old")],
                    waiting: vec!["shop/a-0".to_owned()],
                },
                problem: None,
            },
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["patches"][0]["state"], "withdrawn");
        assert_eq!(json["trust"]["rotation"]["step"], "retiring_roots");
        assert_eq!(
            serde_json::from_value::<StatusReport>(json).unwrap(),
            report
        );
        let partial: StatusReport =
            serde_json::from_value(serde_json::json!({"pods": [{"pod": "shop/b-0"}]})).unwrap();
        assert_eq!(partial.pods[0].pod, "shop/b-0");
        assert_eq!(partial.trust.rotation, Phase::Steady);
    }
}
