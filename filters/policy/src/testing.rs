//! Fixtures that the tests and benchmarks of every crate share (feature `test-util`): a
//! configuration compiled from manifests as `weft compile` makes it, and the busy API policy
//! that the engine's criterion bench and the data plane's wrk bench both measure, so that their
//! figures come from one policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::bundle::Identity;
use crate::check;
use crate::compile::{Options, Side, compile};
use crate::config::PluginConfig;

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

/// `count` TrafficTargets protecting shop/api, each from its own ServiceAccount in one of 20
/// namespaces, each naming two matches of one of eight route groups of five matches (path
/// regexes, methods, a header), which is how a busy API service's policy looks.
pub fn busy_api(count: usize) -> String {
    let mut out = String::new();
    for g in 0..BUSY_API_GROUPS {
        out.push_str(&format!(
            "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: routes-{g}, namespace: shop}}\nspec:\n  matches:\n"
        ));
        for item in [
            format!("{{name: list, pathRegex: '/api/v{g}/items$', methods: [GET]}}"),
            format!(
                "{{name: item, pathRegex: '/api/v{g}/items/[0-9]+$', methods: [GET, PUT, DELETE]}}"
            ),
            format!("{{name: create, pathRegex: '/api/v{g}/items$', methods: [POST]}}"),
            "{name: metrics, pathRegex: /metrics$, methods: [GET]}".to_owned(),
            format!(
                "{{name: beta, pathRegex: '/api/v{g}/beta/.*', headers: {{x-beta: 'true|yes'}}}}"
            ),
        ] {
            out.push_str(&format!("  - {item}\n"));
        }
        out.push_str("---\n");
    }
    for i in 0..count {
        out.push_str(&format!(
            "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: tt-{i}, namespace: shop}}\nspec:\n  destination: {{kind: ServiceAccount, name: api, namespace: shop}}\n  sources: [{{kind: ServiceAccount, name: client-{i}, namespace: team-{}}}]\n  rules: [{{kind: HTTPRouteGroup, name: routes-{}, matches: [create, item]}}]\n---\n",
            i % 20,
            i % BUSY_API_GROUPS
        ));
    }
    out
}

/// How many route groups [`busy_api`] writes; TrafficTarget `i` names group `i % 8`.
pub const BUSY_API_GROUPS: usize = 8;
