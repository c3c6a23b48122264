//! Cross-object validation: each SMI rule of docs/smi.md that a single document cannot show.

use weft_policy::check;
use weft_policy::diagnostic::{Diagnostic, Severity};
use weft_policy::validate::short_service_name;

const ROUTES: &str = r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: routes, namespace: ns}
spec:
  matches:
  - {name: metrics, pathRegex: /metrics$, methods: [GET]}
  - {name: everything, pathRegex: ".*", methods: ["*"]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: ports, namespace: ns}
spec: {matches: {ports: [8080]}}
"#;

fn problems(yaml: &str) -> Vec<Diagnostic> {
    let text = format!("{ROUTES}\n---\n{yaml}");
    check([("m.yaml", text.as_str())]).1
}

fn only(yaml: &str) -> Diagnostic {
    let mut found = problems(yaml);
    assert_eq!(found.len(), 1, "{found:#?}");
    found.remove(0)
}

fn target(spec: &str) -> String {
    format!(
        "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: t, namespace: ns}}\nspec:\n{spec}"
    )
}

const DESTINATION: &str = "  destination: {kind: ServiceAccount, name: b, namespace: ns}\n";
const SOURCES: &str = "  sources: [{kind: ServiceAccount, name: a, namespace: ns}]\n";

#[test]
fn a_complete_set_has_no_problems() {
    assert_eq!(
        problems(&target(&format!(
            "{DESTINATION}{SOURCES}  rules: [{{kind: HTTPRouteGroup, name: routes, matches: [metrics]}}, {{kind: TCPRoute, name: ports}}]\n"
        ))),
        []
    );
}

#[test]
fn a_traffic_target_without_sources_is_rejected() {
    let d = only(&target(&format!(
        "{DESTINATION}  rules: [{{kind: TCPRoute, name: ports}}]\n"
    )));
    assert_eq!(
        (d.severity, d.field.as_str()),
        (Severity::Error, "spec.sources")
    );
    assert!(d.to_string().starts_with("m.yaml:"), "{d}");
}

#[test]
fn a_traffic_target_without_rules_is_rejected() {
    let d = only(&target(&format!("{DESTINATION}{SOURCES}")));
    assert_eq!(
        (d.severity, d.field.as_str()),
        (Severity::Error, "spec.rules")
    );
}

#[test]
fn a_traffic_target_without_destination_is_rejected() {
    let d = only(&target(&format!(
        "{SOURCES}  rules: [{{kind: TCPRoute, name: ports}}]\n"
    )));
    assert_eq!(
        (d.severity, d.field.as_str()),
        (Severity::Error, "spec.destination")
    );
}

#[test]
fn unknown_subject_and_rule_kinds_are_rejected() {
    let found = problems(&target(
        "  destination: {kind: Group, name: b, namespace: ns}\n  sources: [{kind: User, name: a}]\n  rules: [{kind: GRPCRoute, name: x}]\n",
    ));
    let fields: Vec<_> = found
        .iter()
        .map(|d| {
            (
                d.origin.as_ref().unwrap().line,
                d.field.as_str(),
                d.message.as_str(),
            )
        })
        .collect();
    // Each problem is reported at the line of its own field in m.yaml, not at the object.
    assert_eq!(
        fields,
        [
            (
                20,
                "spec.destination.kind",
                "kind Group is not supported; SMI defines only ServiceAccount"
            ),
            (
                21,
                "spec.sources[0].kind",
                "kind User is not supported; SMI defines only ServiceAccount"
            ),
            (
                22,
                "spec.rules[0].kind",
                "kind GRPCRoute is not a rule kind; use HTTPRouteGroup, TCPRoute or UDPRoute"
            ),
        ]
    );
}

#[test]
fn references_to_missing_routes_and_match_names_are_rejected() {
    let found = problems(&target(&format!(
        "{DESTINATION}{SOURCES}  rules: [{{kind: HTTPRouteGroup, name: nope}}, {{kind: HTTPRouteGroup, name: routes, matches: [metrics, metricz]}}, {{kind: UDPRoute, name: ports}}]\n"
    )));
    let messages: Vec<_> = found
        .iter()
        .map(|d| format!("{}: {}", d.field, d.message))
        .collect();
    assert_eq!(
        messages,
        [
            "spec.rules[0].name: HTTPRouteGroup ns/nope does not exist",
            "spec.rules[1].matches[1]: match metricz does not exist in HTTPRouteGroup ns/routes; it has: metrics, everything",
            "spec.rules[2].name: UDPRoute ns/ports does not exist",
        ]
    );
}

#[test]
fn matches_on_a_tcp_rule_are_a_warning() {
    let d = only(&target(&format!(
        "{DESTINATION}{SOURCES}  rules: [{{kind: TCPRoute, name: ports, matches: [x]}}]\n"
    )));
    assert_eq!(
        (d.severity, d.field.as_str()),
        (Severity::Warning, "spec.rules[0].matches")
    );
}

#[test]
fn a_destination_in_another_namespace_is_rejected() {
    let d = only(&target(&format!(
        "  destination: {{kind: ServiceAccount, name: b, namespace: other}}\n{SOURCES}  rules: [{{kind: TCPRoute, name: ports}}]\n"
    )));
    assert_eq!(d.field, "spec.destination.namespace");
    assert!(
        d.message.contains("create the TrafficTarget in other"),
        "{d}"
    );
}

#[test]
fn route_group_regexes_methods_and_match_names_are_checked() {
    let found = problems(
        r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: bad, namespace: ns}
spec:
  matches:
  - {name: a, pathRegex: "/api/(v1", methods: [get, FETCH]}
  - {name: a, headers: {x-user: "[a-"}}
"#,
    );
    let fields: Vec<_> = found.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.matches[0].methods[0]",
            "spec.matches[0].methods[1]",
            "spec.matches[0].pathRegex",
            "spec.matches[1].headers.x-user",
            "spec.matches[1].name",
        ]
    );
    assert!(found.iter().all(|d| d.severity == Severity::Error));
    assert!(
        found[2].message.starts_with("invalid regex: "),
        "{}",
        found[2].message
    );
    assert!(
        found[0].message.contains("is not one of *, GET"),
        "{}",
        found[0].message
    );
}

fn split(backends: &str, extra: &str) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: s, namespace: ns}}\nspec:\n  service: web\n  backends: {backends}\n{extra}"
    )
}

/// The problems of `yaml` other than Services missing from the manifests (these splits name
/// services no manifest declares; that warning has a test of its own).
fn split_problems(yaml: &str) -> Vec<Diagnostic> {
    problems(yaml)
        .into_iter()
        .filter(|d| !d.message.contains("is not among the manifests"))
        .collect()
}

#[test]
fn split_problems_are_reported() {
    let messages = |yaml: &str| {
        split_problems(yaml)
            .iter()
            .map(|d| format!("{:?} {}: {}", d.severity, d.field, d.message))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        messages(&split("[]", "")),
        ["Error spec.backends: at least one backend is required"]
    );
    assert_eq!(
        messages(&split(
            "[{service: v1, weight: 0}, {service: v2, weight: 0}]",
            ""
        )),
        [
            "Error spec.backends: every backend has weight 0, so the split would send nowhere; give a backend a weight above 0 (or remove the TrafficSplit to send everything to the root service)"
        ]
    );
    assert_eq!(
        messages(&split(
            "[{service: web.ns.svc.cluster.local, weight: 1}, {service: v1, weight: 1}, {service: v1, weight: 2}]",
            ""
        )),
        [
            "Error spec.backends[0].service: the root service web cannot be its own backend (TrafficSplits are not self-referential)",
            "Error spec.backends[2].service: backend v1 is listed twice; list each backend once with its total weight",
        ]
    );
    assert_eq!(
        messages(&split(
            "[{service: v1, weight: 1}]",
            "  matches: [{kind: HTTPRouteGroup, name: nope}, {kind: TCPRoute, name: ports}]\n"
        )),
        [
            "Error spec.matches[0].name: HTTPRouteGroup ns/nope does not exist",
            "Error spec.matches[1].kind: kind TCPRoute cannot select requests; use HTTPRouteGroup",
        ]
    );
}

#[test]
fn a_second_split_of_the_same_root_service_is_rejected() {
    let second = split("[{service: v1, weight: 1}]", "")
        .replace("name: s,", "name: s2,")
        .replace("service: web\n", "service: web.ns.svc\n");
    let found = split_problems(&format!(
        "{}\n---\n{second}",
        split("[{service: v1, weight: 1}]", "")
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].name.as_deref(), Some("s2"));
    assert!(
        found[0]
            .message
            .contains("TrafficSplit ns/s already splits")
    );
}

#[test]
fn backends_without_a_port_of_the_root_service_are_a_warning() {
    let services = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: v1, namespace: ns}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: v2, namespace: ns}\nspec: {ports: [{port: 8080}]}\n";
    let found = problems(&format!(
        "{services}---\n{}",
        split(
            "[{service: v1, weight: 1}, {service: v2, weight: 1}, {service: v3, weight: 1}]",
            ""
        )
    ));
    let messages: Vec<_> = found
        .iter()
        .map(|d| format!("{:?} {}: {}", d.severity, d.field, d.message))
        .collect();
    assert_eq!(
        messages,
        [
            "Warning spec.backends[1].service: Service ns/v2 has none of the root service's ports (80), so it receives no traffic",
            "Warning spec.backends[2].service: Service ns/v3 is not among the manifests: requests will be sent to a service nobody declared here (check the name), and its ports cannot be checked; weft check --strict makes this an error",
        ]
    );
}

#[test]
fn duplicate_objects_are_rejected() {
    let found = problems(ROUTES);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found.iter().all(|d| d.message.starts_with("another")));
}

#[test]
fn service_names_are_shortened_only_within_their_namespace() {
    for (given, short) in [
        ("web", "web"),
        ("web.ns", "web"),
        ("web.ns.svc", "web"),
        ("web.ns.svc.cluster.local", "web"),
        ("web.ns.svc.cluster.local.", "web"),
        ("web.other", "web.other"),
        ("web.ns.svcx", "web.ns.svcx"),
        ("web.nsx.svc", "web.nsx.svc"),
    ] {
        assert_eq!(short_service_name(given, "ns"), short, "{given}");
    }
}

#[test]
fn a_v1alpha1_traffic_target_is_reported_at_the_fields_and_lines_it_writes() {
    let text = "\
apiVersion: specs.smi-spec.io/v1alpha1
kind: HTTPRouteGroup
metadata: {name: routes, namespace: ns}
matches:
- name: ok
  pathRegex: /ok$
- name: bad
  pathRegex: \"(\"
---
apiVersion: access.smi-spec.io/v1alpha1
kind: TrafficTarget
metadata: {name: t, namespace: ns}
destination: {kind: ServiceAccount, name: b, namespace: ns, port: 80}
sources:
- kind: ServiceAccount
  name: a
specs:
- kind: HTTPRouteGroup
  name: routes
- kind: HTTPRouteGroup
  name: missing
";
    let found: Vec<_> = check([("old.yaml", text)])
        .1
        .into_iter()
        .map(|d| (d.origin.unwrap().line, d.field))
        .collect();
    assert_eq!(
        found,
        [
            (8, "matches[1].pathRegex".to_owned()),
            (21, "specs[1].name".to_owned())
        ]
    );
}

#[test]
fn a_missing_field_is_reported_at_the_line_of_its_parent_and_list_items_at_their_own() {
    let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: specs.smi-spec.io/v1alpha4
  kind: HTTPRouteGroup
  metadata: {name: routes, namespace: ns}
  spec: {matches: [{name: m}]}
- apiVersion: access.smi-spec.io/v1alpha3
  kind: TrafficTarget
  metadata: {name: t, namespace: ns}
  spec:
    destination: {kind: ServiceAccount, name: b}
    rules: [{kind: HTTPRouteGroup, name: routes}]
";
    let found = check([("list.yaml", text)]).1;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].field, "spec.sources");
    assert_eq!(
        found[0].origin.as_ref().unwrap().line,
        11,
        "the line of spec, where sources belong"
    );
}
