//! `weft-policy` is weft's pure core: it owns the plugin configuration that the `weft.wasm`
//! filter reads, and (from the SMI work on) the SMI model, its validation, the compiled policy
//! bundle and the per-request decisions. It does no I/O and knows nothing of proxy-wasm, tokio
//! or Kubernetes, so the filter, the controller and the browser page all run the same code and
//! never disagree. Start reading at [`config::PluginConfig`].
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod config;
pub mod diagnostic;
pub mod load;
pub mod model;

pub use config::{ConfigError, PluginConfig};
