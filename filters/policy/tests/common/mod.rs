//! Helpers shared by the policy crate's integration tests.

use weft_policy::bundle::Identity;
use weft_policy::check;
use weft_policy::compile::{Options, Side, compile};
use weft_policy::config::PluginConfig;

/// The plugin configuration of `identity`'s `side` listener compiled from `manifests` (one
/// YAML file), as `weft compile` makes it; the manifests must have no error.
pub fn compiled(identity: &str, side: Side, manifests: &str) -> PluginConfig {
    let (catalog, diagnostics) = check([("m.yaml", manifests)]);
    assert!(
        diagnostics.iter().all(|d| !d.is_error()),
        "{diagnostics:#?}"
    );
    compile(
        &catalog,
        &diagnostics,
        &identity.parse::<Identity>().unwrap(),
        side,
        &Options::default(),
    )
    .unwrap()
}
