//! `weft-envoy-config` is where weft's knowledge of Envoy's configuration lives: it builds typed
//! Envoy resources (envoy-types) for a workload and its policy bundle (listeners with weft's
//! filters, routes, clusters, ECDS and SDS references, weft's stats settings, bootstraps, and
//! the native fields TrafficPolicies set: [`traffic`]), checks resources against the constraints
//! Envoy's protos declare ([`constraints`]), and
//! renders them as Envoy's JSON and as the commented YAML of `envoy-configs/`. The controller
//! serves what it builds over xDS, the shipped configurations are generated from it, and the
//! test harness runs Envoy on it, so all three say the same thing. It does no I/O and knows
//! nothing of xDS transport.

pub mod bootstrap;
pub mod clusters;
pub mod constraints;
pub mod filters;
pub mod listeners;
pub mod mesh;
pub mod render;
pub mod shipped;
pub mod sources;
pub mod tls;
pub mod traffic;
pub mod yaml;

pub use envoy_types::pb;
