//! Policies that benchmarks share. This file is also compiled into weft-policy's criterion
//! bench (`#[path]`), so the engine's figures and Envoy's figures come from one policy.

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
