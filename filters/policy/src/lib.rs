//! `weft-policy` is weft's pure core: the SMI model ([`model`]) read from YAML of every served
//! version ([`load`]), cross-object validation ([`validate`]) with precise [`diagnostic`]s,
//! compilation per workload ([`compile`]) into the policy bundle ([`bundle`]) that is the
//! filter's plugin configuration ([`config`]), written for the filter as a compiled bundle
//! ([`wire`]) with its regexes as automata ([`matcher`]), and the per-request decisions
//! ([`engine`]); plus
//! weft's own resources beyond SMI, TrafficPolicy and EnvoyPatch ([`extension`]), read and checked
//! with it (what they become in Envoy is `weft-envoy-config`'s). It
//! does no I/O and knows nothing of proxy-wasm, tokio or Kubernetes, so the filter, the `weft`
//! command and the browser page run the same code and never disagree. Start at [`check`], then
//! [`compile::compile`] and [`engine::Engine`].
//!
//! The `authoring` feature (on by default) holds everything but reading bundles and deciding:
//! the filter builds without it, so it carries no YAML or JSON reader and no regex compiler.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bundle;
#[cfg(feature = "authoring")]
pub mod catalog;
#[cfg(feature = "authoring")]
pub mod compile;
pub mod config;
pub mod contract;
#[cfg(feature = "authoring")]
pub mod diagnostic;
#[cfg(feature = "authoring")]
pub mod document;
pub mod engine;
#[cfg(feature = "authoring")]
pub mod explain;
#[cfg(feature = "authoring")]
pub mod extension;
#[cfg(feature = "authoring")]
pub mod load;
pub mod lookup;
pub mod matcher;
pub mod metrics;
#[cfg(feature = "authoring")]
pub mod model;
#[cfg(feature = "authoring")]
pub mod object;
pub mod path;
#[cfg(feature = "test-util")]
pub mod testing;
#[cfg(feature = "authoring")]
pub mod validate;
pub mod wire;
pub mod xfcc;

pub use config::{CallerIdentity, ConfigError, PluginConfig};

#[cfg(feature = "authoring")]
/// Reads every `(file name, YAML text)` source and validates the whole set: the catalog (sorted,
/// so nothing built from it depends on the order of the sources) and every problem found,
/// loading and cross-object alike, each at the line of the field it is about, in a stable order.
pub fn check<'a>(
    sources: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> (catalog::Catalog, Vec<diagnostic::Diagnostic>) {
    let mut objects = Vec::new();
    let mut diagnostics = Vec::new();
    for (file, text) in sources {
        let (read, problems) = object::read_objects(file, text);
        objects.extend(read);
        diagnostics.extend(problems);
    }
    let (catalog, found) = object::catalog_of(&objects);
    diagnostics.extend(found);
    diagnostic::sort(&mut diagnostics);
    (catalog, diagnostics)
}
