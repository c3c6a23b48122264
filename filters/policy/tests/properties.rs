//! Properties that must hold for every manifest set, not just the examples: the result does
//! not depend on the order of objects, adding a TrafficTarget never takes an allowed request
//! away, and no input panics the loader, the compiler or the engine.

use proptest::prelude::*;
use weft_policy::bundle::Identity;
use weft_policy::check;
use weft_policy::compile::{Options, Side, compile};
use weft_policy::config::PluginConfig;
use weft_policy::engine::{Engine, HttpRequest};

const ACCOUNTS: &[&str] = &["a", "b", "c", "d"];
const NAMESPACES: &[&str] = &["x", "y"];
const PATHS: &[&str] = &["/", "/api", "/api/v1", "/metrics", "/admin/x"];
const METHODS: &[&str] = &["GET", "POST", "DELETE"];

/// Route objects every generated TrafficTarget may name, in namespace x.
const ROUTES: &str = r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: g, namespace: x}
spec:
  matches:
  - {name: api, pathRegex: /api, methods: [GET]}
  - {name: metrics, pathRegex: /metrics, methods: ["*"]}
  - {name: admin, pathRegex: /admin, methods: [DELETE, POST], headers: {x-role: "ops|root"}}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: t, namespace: x}
spec: {matches: {ports: [8080]}}
"#;

/// One generated TrafficTarget for destination x/a.
#[derive(Debug, Clone)]
struct Target {
    sources: Vec<(usize, usize)>,
    rule: usize,
}

fn target_yaml(index: usize, target: &Target) -> String {
    let sources: Vec<String> = target
        .sources
        .iter()
        .map(|(ns, sa)| {
            format!(
                "{{kind: ServiceAccount, name: {}, namespace: {}}}",
                ACCOUNTS[*sa], NAMESPACES[*ns]
            )
        })
        .collect();
    let rule = match target.rule {
        0 => "{kind: HTTPRouteGroup, name: g}",
        1 => "{kind: HTTPRouteGroup, name: g, matches: [api]}",
        2 => "{kind: HTTPRouteGroup, name: g, matches: [metrics, admin]}",
        _ => "{kind: TCPRoute, name: t}",
    };
    format!(
        "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: t{index}, namespace: x}}\nspec:\n  destination: {{kind: ServiceAccount, name: a, namespace: x}}\n  sources: [{}]\n  rules: [{rule}]\n",
        sources.join(", ")
    )
}

fn targets() -> impl Strategy<Value = Vec<Target>> {
    prop::collection::vec(
        (
            prop::collection::vec((0..NAMESPACES.len(), 0..ACCOUNTS.len()), 1..3),
            0..4usize,
        )
            .prop_map(|(sources, rule)| Target { sources, rule }),
        0..8,
    )
}

fn documents(targets: &[Target]) -> Vec<String> {
    let mut documents: Vec<String> = ROUTES.split("\n---\n").map(str::to_owned).collect();
    documents.extend(targets.iter().enumerate().map(|(i, t)| target_yaml(i, t)));
    documents
}

fn compiled(documents: &[String]) -> PluginConfig {
    let sources: Vec<(String, &str)> = documents
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("f{i}.yaml"), d.as_str()))
        .collect();
    let (catalog, diagnostics) = check(sources.iter().map(|(name, text)| (name.as_str(), *text)));
    assert!(
        diagnostics.iter().all(|d| !d.is_error()),
        "{diagnostics:#?}"
    );
    let identity: Identity = "x/a".parse().unwrap();
    compile(
        &catalog,
        &diagnostics,
        &identity,
        Side::Inbound,
        &Options::default(),
    )
    .unwrap()
}

/// Every request of the generated space, with whether it is allowed.
fn decisions(config: &PluginConfig) -> Vec<bool> {
    let engine = Engine::new(config).unwrap();
    let mut out = Vec::new();
    for ns in NAMESPACES {
        for sa in ACCOUNTS {
            let source = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
            for path in PATHS {
                for method in METHODS {
                    for role in ["ops", "dev"] {
                        let headers = vec![("x-role".to_owned(), role.to_owned())];
                        for port in [80, 8080] {
                            let request = HttpRequest {
                                source: Some(&source),
                                method,
                                path,
                                port,
                                headers: &headers,
                            };
                            out.push(engine.decide_http(&request).is_allowed());
                        }
                    }
                }
            }
            for port in [80, 8080] {
                out.push(engine.decide_tcp(Some(&source), port).is_allowed());
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_compiled_configuration_does_not_depend_on_object_order(targets in targets(), seed in any::<u64>()) {
        let documents = documents(&targets);
        let mut shuffled = documents.clone();
        // A deterministic Fisher-Yates shuffle driven by the generated seed.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(compiled(&documents), compiled(&shuffled));
    }

    #[test]
    fn adding_a_traffic_target_never_takes_an_allowed_request_away(targets in targets(), extra in targets()) {
        let before = decisions(&compiled(&documents(&targets)));
        let mut more = targets.clone();
        more.extend(extra);
        let after = decisions(&compiled(&documents(&more)));
        for (i, (was, is)) in before.iter().zip(&after).enumerate() {
            prop_assert!(!was || *is, "request {} was allowed and no longer is", i);
        }
    }

    #[test]
    fn no_text_panics_the_loader(text in ".{0,400}") {
        let _ = check([("any.yaml", text.as_str())]);
    }

    #[test]
    fn no_yaml_shaped_text_panics_the_loader(
        lines in prop::collection::vec(
            prop::sample::select(vec![
                "apiVersion: access.smi-spec.io/v1alpha3", "apiVersion: specs.smi-spec.io/v1alpha1",
                "apiVersion: split.smi-spec.io/v1alpha1", "kind: TrafficTarget", "kind: HTTPRouteGroup",
                "kind: TrafficSplit", "kind: TCPRoute", "metadata: {name: n}", "spec:", "  matches:",
                "  - {name: m, pathRegex: '(', headers: [{a: b}, 3]}", "  backends: [{service: s, weight: 1.5m}]",
                "  destination: {kind: ServiceAccount, port: -1}", "  sources: 7", "  rules: [{}]", "---",
                "matches: {ports: [0, 70000]}", "  weight: \"\"", "kind: List", "items: [1, {kind: x}]",
            ]),
            0..24,
        )
    ) {
        let text = lines.join("\n");
        let (catalog, diagnostics) = check([("any.yaml", text.as_str())]);
        if diagnostics.iter().all(|d| !d.is_error()) {
            let identity: Identity = "x/a".parse().unwrap();
            for side in [Side::Inbound, Side::Outbound] {
                let config = compile(&catalog, &diagnostics, &identity, side, &Options::default()).unwrap();
                prop_assert!(Engine::new(&config).is_ok());
            }
        }
    }

    #[test]
    fn no_plugin_configuration_panics_the_engine(text in r#"\{("(version|access|splits|http_matches|identity)": ?(1|\[\]|\{\}|"x"|null),? ?){0,4}\}"#) {
        if let Ok(config) = PluginConfig::from_json(text.as_bytes()) {
            let _ = Engine::new(&config);
        }
    }
}
