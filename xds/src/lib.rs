//! `weft-xds` serves Envoy's xDS over one ADS stream per proxy, state of the world: per-proxy
//! snapshots with content-derived versions ([`snapshot`]), the protocol of one stream as a
//! synchronous state machine ([`protocol`]), a store that hands each stream its proxy's latest
//! snapshot ([`cache`]), and a thin tonic service ([`server`]). It knows neither SMI nor
//! Kubernetes: the controller decides what each proxy gets and who a proxy is.

pub mod cache;
pub mod protocol;
pub mod server;
pub mod snapshot;
