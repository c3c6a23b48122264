//! `weft-controller` wires weft's pieces into a controller: sources (a watched directory of
//! YAML now, Kubernetes later) feed one index of SMI objects, Services, workloads and pods; for
//! each connected proxy it derives that workload's Envoy resources (weft-envoy-config) with its
//! compiled policy bundle and certificates, and serves them over ADS (weft-xds), with the
//! EnvoyPatches that select it applied last and isolated per proxy ([`patch`]); it runs the
//! mesh CA and rotates workload certificates on wall-clock time, and reports status.

pub mod admin;
pub mod admission;
pub mod channel;
pub mod files;
pub mod folder;
pub mod index;
pub mod manifests;
pub mod mesh;
pub mod metrics;
pub mod module;
pub mod objects;
pub mod options;
pub mod patch;
pub mod pki;
pub mod rebuild;
pub mod registry;
pub mod report;
pub mod runtime;
pub mod serve;
pub mod shared;
pub mod status;
pub mod store;
#[cfg(test)]
mod testing;
pub mod trust;
pub mod watch;
