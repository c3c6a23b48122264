//! How a controller runs: the options `weft controller` and local mode give it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_certs::RotationPolicy;

use crate::pki::CaSource;

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
