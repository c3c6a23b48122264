//! `weft-xds` serves Envoy's xDS over one ADS stream per proxy, state of the world: per-proxy
//! snapshots with content-derived versions ([`snapshot`]), the protocol of one stream as a
//! synchronous state machine ([`protocol`]), a store that hands each stream its proxy's latest
//! snapshot ([`cache`]), and a thin tonic service ([`server`]); the last two are the default
//! feature `server`. It knows neither SMI nor
//! Kubernetes: the controller decides what each proxy gets and who a proxy is.

#[cfg(feature = "server")]
pub mod cache;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
pub mod snapshot;
