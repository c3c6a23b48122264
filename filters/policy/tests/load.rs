//! Loading SMI manifests of every served version and wire quirk (docs/smi.md).

use weft_policy::catalog::Catalog;
use weft_policy::diagnostic::{Diagnostic, Severity};
use weft_policy::model::{AppProtocol, HttpMatch, L4Protocol, Subject};
use weft_policy::object::load_yaml;

fn load(text: &str) -> (Catalog, Vec<Diagnostic>) {
    let mut catalog = Catalog::default();
    let mut diagnostics = Vec::new();
    load_yaml("test.yaml", text, &mut catalog, &mut diagnostics);
    (catalog, diagnostics)
}

fn load_clean(text: &str) -> Catalog {
    let (catalog, diagnostics) = load(text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    catalog
}

fn messages(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics.iter().map(ToString::to_string).collect()
}

#[test]
fn a_v1alpha3_traffic_target_is_read_field_by_field() {
    let catalog = load_clean(
        r#"
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: allow-a, namespace: ns}
spec:
  destination: {kind: ServiceAccount, name: service-b, namespace: ns}
  sources:
  - {kind: ServiceAccount, name: service-a, namespace: other}
  rules:
  - {kind: HTTPRouteGroup, name: the-routes, matches: [metrics]}
  - {kind: TCPRoute, name: the-ports}
"#,
    );
    let target = &catalog.traffic_targets[0];
    assert_eq!(
        (target.meta.namespace.as_str(), target.meta.name.as_str()),
        ("ns", "allow-a")
    );
    assert_eq!(target.meta.origin.as_ref().unwrap().line, 2);
    assert_eq!(target.destination.as_ref().unwrap().name, "service-b");
    assert_eq!(
        target.sources,
        [Subject {
            kind: "ServiceAccount".into(),
            name: "service-a".into(),
            namespace: Some("other".into()),
            position: 0,
        }]
    );
    assert_eq!(target.rules[0].matches, Some(vec!["metrics".to_owned()]));
    assert_eq!(
        target.rules[1].matches, None,
        "omitted matches means all matches"
    );
    assert_eq!(target.destination_port, None);
}

#[test]
fn a_v1alpha2_destination_port_is_kept_as_a_restriction() {
    let catalog = load_clean(
        r#"
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata: {name: t, namespace: ns}
spec:
  destination: {kind: ServiceAccount, name: b, namespace: ns, port: 8080}
  sources: [{kind: ServiceAccount, name: a, namespace: ns}]
  rules: [{kind: TCPRoute, name: tcp}]
"#,
    );
    assert_eq!(catalog.traffic_targets[0].destination_port, Some(8080));
}

#[test]
fn a_v1alpha1_traffic_target_has_its_body_at_the_root_and_specs_for_rules() {
    let catalog = load_clean(
        r#"
apiVersion: access.smi-spec.io/v1alpha1
kind: TrafficTarget
metadata: {name: t, namespace: ns}
destination: {kind: ServiceAccount, name: b, namespace: ns, port: 9090}
sources: [{kind: ServiceAccount, name: a, namespace: ns}]
specs: [{kind: HTTPRouteGroup, name: routes, matches: [all]}]
"#,
    );
    let target = &catalog.traffic_targets[0];
    assert_eq!(target.destination.as_ref().unwrap().name, "b");
    assert_eq!(target.destination_port, Some(9090));
    assert_eq!(target.rules[0].name, "routes");
}

#[test]
fn headers_are_read_as_a_map_or_as_a_list_of_single_key_maps() {
    let catalog = load_clean(
        r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: map-form, namespace: ns}
spec:
  matches:
  - name: android
    headers: {User-Agent: ".*Android.*", cookie: "^(.*?;)?(type=insider)(;.*)?$"}
---
apiVersion: specs.smi-spec.io/v1alpha3
kind: HTTPRouteGroup
metadata: {name: list-form, namespace: ns}
spec:
  matches:
  - name: android
    headers:
    - User-Agent: ".*Android.*"
    - cookie: "^(.*?;)?(type=insider)(;.*)?$"
"#,
    );
    let [map, list] = &catalog.http_route_groups[..] else {
        panic!("two groups")
    };
    assert_eq!(map.matches[0].headers, list.matches[0].headers);
    assert_eq!(
        map.matches[0].header_fields,
        ["headers.cookie", "headers.User-Agent"],
        "where each header is written, for diagnostics"
    );
    assert_eq!(
        list.matches[0].header_fields,
        ["headers[1].cookie", "headers[0].User-Agent"]
    );
    assert_eq!(
        map.matches[0].headers[0],
        (
            "cookie".to_owned(),
            "^(.*?;)?(type=insider)(;.*)?$".to_owned()
        )
    );
    assert_eq!(
        map.matches[0].headers[1].0, "user-agent",
        "header names are lower-cased"
    );
}

#[test]
fn root_matches_are_read_when_spec_matches_is_absent_and_spec_wins_when_both_exist() {
    let catalog = load_clean(
        r#"
apiVersion: specs.smi-spec.io/v1alpha1
kind: HTTPRouteGroup
metadata: {name: old, namespace: ns}
matches:
- {name: metrics, pathRegex: /metrics, methods: [GET]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: both, namespace: ns}
matches: [{name: root}]
spec:
  matches: [{name: spec}]
"#,
    );
    assert_eq!(
        catalog.http_route_groups[0].matches,
        [HttpMatch {
            name: "metrics".into(),
            path_regex: Some("/metrics".into()),
            methods: vec!["GET".into()],
            headers: vec![],
            header_fields: vec![],
            position: 0,
        }]
    );
    assert_eq!(catalog.http_route_groups[1].matches[0].name, "spec");
}

#[test]
fn tcp_and_udp_routes_read_their_ports_and_older_empty_specs_mean_all_ports() {
    let catalog = load_clean(
        r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: db, namespace: ns}
spec: {matches: {ports: [3306, 6446]}}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: UDPRoute
metadata: {name: dns, namespace: ns}
spec: {matches: {ports: []}}
---
apiVersion: specs.smi-spec.io/v1alpha3
kind: TCPRoute
metadata: {name: legacy, namespace: ns}
spec: {}
"#,
    );
    let routes = &catalog.port_routes;
    assert_eq!(
        (routes[0].protocol, routes[0].ports.clone()),
        (L4Protocol::Tcp, vec![3306, 6446])
    );
    assert_eq!(
        (routes[1].protocol, routes[1].ports.clone()),
        (L4Protocol::Udp, vec![])
    );
    assert!(routes[2].ports.is_empty());
}

#[test]
fn split_weights_are_integers_and_v1alpha1_quantities_become_thousandths() {
    let catalog = load_clean(
        r#"
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: canary, namespace: ns}
spec:
  service: website
  matches: [{kind: HTTPRouteGroup, name: ab-test}]
  backends: [{service: website-v1, weight: 1000}, {service: website-v2, weight: 500}]
---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: old, namespace: ns}
spec:
  service: website
  backends: [{service: a, weight: 1}, {service: b, weight: 100m}, {service: c, weight: "1500m"}]
"#,
    );
    let weights = |i: usize| {
        catalog.traffic_splits[i]
            .backends
            .iter()
            .map(|b| b.weight)
            .collect::<Vec<_>>()
    };
    assert_eq!(weights(0), [1000, 500]);
    assert_eq!(catalog.traffic_splits[0].matches[0].name, "ab-test");
    assert_eq!(
        weights(1),
        [1000, 100, 1500],
        "1 = 1000m, so 1 and 100m keep their 10:1 ratio"
    );
}

#[test]
fn bad_weights_are_refused_with_what_would_be_valid() {
    let (_, diagnostics) = load(
        r#"
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: s, namespace: ns}
spec:
  service: website
  backends: [{service: a, weight: -1}, {service: b, weight: 1.5}, {service: c, weight: "10"}, {service: d}]
"#,
    );
    let messages = messages(&diagnostics);
    assert_eq!(messages.len(), 4, "{messages:#?}");
    assert!(
        messages[0]
            .contains("spec.backends[0].weight: -1 is not a valid weight; use a whole number"),
        "{}",
        messages[0]
    );
    assert!(messages[1].contains("spec.backends[1].weight: 1.5 is not a valid weight"));
    assert!(messages[2].contains("spec.backends[2].weight: \"10\" is not a valid weight"));
    assert!(messages[3].contains("spec.backends[3].weight: is required"));
    assert!(
        messages[0].starts_with("test.yaml:2: error: TrafficSplit ns/s: "),
        "{}",
        messages[0]
    );
}

#[test]
fn unserved_versions_and_unknown_kinds_are_errors_naming_what_is_served() {
    let (catalog, diagnostics) = load(
        r#"
apiVersion: access.smi-spec.io/v1alpha4
kind: TrafficTarget
metadata: {name: t}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: GRPCRoute
metadata: {name: g}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"#,
    );
    assert_eq!(catalog, Catalog::default());
    let messages = messages(&diagnostics);
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(messages[0].contains("apiVersion access.smi-spec.io/v1alpha4 is not served for TrafficTarget; weft reads v1alpha1, v1alpha2, v1alpha3"));
    assert!(messages[1].contains("kind GRPCRoute does not exist in specs.smi-spec.io; it defines HTTPRouteGroup, TCPRoute, UDPRoute"));
    assert!(messages[1].starts_with("test.yaml:6:"), "{}", messages[1]);
}

#[test]
fn an_unknown_field_of_an_object_that_decides_access_is_an_error_naming_what_it_likely_meant() {
    let (_, diagnostics) = load(
        r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: g, namespace: ns, labels: {app: x}, annotations: {a: b}}
spec:
  matches:
  - {name: m, pathregex: /typo, method: [GET]}
status: {}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t, namespace: ns}
spce: {}
spec:
  destination: {kind: ServiceAccount, name: b, namespace: ns}
  sources: [{kind: ServiceAccount, nmae: a, name: a}]
  rules: [{kind: HTTPRouteGroup, name: g, match: [m]}]
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: db, namespace: ns}
spec:
  matches: {port: [5432]}
"#,
    );
    let found: Vec<(&str, Severity, &str)> = diagnostics
        .iter()
        .filter(|d| d.message.starts_with("unknown field"))
        .map(|d| (d.field.as_str(), d.severity, d.message.as_str()))
        .collect();
    let expect = [
        ("spec.matches[0].method", "did you mean `methods`?"),
        ("spec.matches[0].pathregex", "did you mean `pathRegex`?"),
        ("spce", "did you mean `spec`?"),
        ("spec.sources[0].nmae", "did you mean `name`?"),
        ("spec.rules[0].match", "did you mean `matches`?"),
        ("spec.matches.port", "did you mean `ports`?"),
    ];
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    for (field, meant) in expect {
        let (_, severity, message) = found
            .iter()
            .find(|(at, _, _)| *at == field)
            .unwrap_or_else(|| panic!("nothing at {field}: {found:#?}"));
        assert_eq!(*severity, Severity::Error, "{field}");
        assert!(message.contains(meant), "{field}: {message}");
    }
    let method = found
        .iter()
        .find(|(at, _, _)| *at == "spec.matches[0].method")
        .unwrap();
    assert!(
        method.2.contains(
            "HTTPRouteGroup specs.smi-spec.io/v1alpha4 reads name, pathRegex, methods, headers"
        ),
        "{}",
        method.2
    );
}

#[test]
fn a_field_far_from_every_known_one_is_an_error_without_a_guess() {
    let (_, diagnostics) = load(
        r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: g, namespace: ns}
spec:
  matches:
  - {name: m, allowEverything: true}
"#,
    );
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics[0].severity, Severity::Error);
    assert!(
        diagnostics[0]
            .message
            .starts_with("unknown field; here HTTPRouteGroup"),
        "{}",
        diagnostics[0].message
    );
}

#[test]
fn unknown_fields_of_a_traffic_split_are_warnings_with_their_path_and_metadata_is_not_checked() {
    let (catalog, diagnostics) = load(
        r#"
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: s, namespace: ns, labels: {app: x}, annotations: {a: b}}
spec:
  service: web
  comment: rolled out on Monday
  backends: [{service: web-v1, weight: 1}]
status: {}
"#,
    );
    assert_eq!(catalog.traffic_splits.len(), 1);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics[0].severity, Severity::Warning);
    assert_eq!(diagnostics[0].field, "spec.comment");
}

#[test]
fn missing_fields_are_all_reported_at_once() {
    let (_, diagnostics) = load(
        r#"
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t, namespace: ns}
spec:
  sources: [{kind: ServiceAccount}]
  rules: [{name: r}]
"#,
    );
    let fields: Vec<_> = diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.destination",
            "spec.sources[0].name",
            "spec.rules[0].kind"
        ]
    );
}

#[test]
fn malformed_yaml_points_at_its_line_and_other_documents_are_still_read() {
    let (catalog, diagnostics) = load(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\nspec: {ports: [{port: 80}]}\n---\nkind: x\n- not a mapping entry\n",
    );
    assert_eq!(catalog.services[0].ports, [80]);
    assert_eq!(diagnostics.len(), 1);
    // The document starts on line 6; the bad entry is its second line.
    assert_eq!(diagnostics[0].origin.as_ref().unwrap().line, 7);
    assert!(diagnostics[0].message.starts_with("not valid YAML"));
}

#[test]
fn a_list_object_is_read_item_by_item_and_namespace_defaults_to_default() {
    let catalog = load_clean(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: specs.smi-spec.io/v1alpha4
  kind: TCPRoute
  metadata: {name: a}
  spec: {matches: {ports: [80]}}
"#,
    );
    assert_eq!(catalog.port_routes[0].meta.namespace, "default");
}

#[test]
fn a_repeated_key_is_an_error_with_file_line_object_and_field() {
    let (_, diagnostics) = load(
        r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: routes, namespace: ns}
spec:
  matches:
  - name: orders
    pathRegex: /orders$
    pathRegex: /.*
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t, namespace: ns}
spec:
  destination: {kind: ServiceAccount, name: b, namespace: ns}
  sources: [{kind: ServiceAccount, name: a, namespace: ns}]
  rules: [{kind: HTTPRouteGroup, name: routes}]
  rules: [{kind: TCPRoute, name: ports}]
"#,
    );
    assert_eq!(
        messages(&diagnostics),
        [
            "test.yaml:9: error: HTTPRouteGroup ns/routes: spec.matches[0].pathRegex: is given twice; give each key once (Kubernetes refuses an object with a repeated key, and the second value would silently replace the first)",
            "test.yaml:18: error: TrafficTarget ns/t: spec.rules: is given twice; give each key once (Kubernetes refuses an object with a repeated key, and the second value would silently replace the first)",
        ]
    );
}

#[test]
fn a_header_given_twice_in_other_letter_cases_is_an_error() {
    let (_, diagnostics) = load(
        r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: routes, namespace: ns}
spec:
  matches:
  - name: roles
    headers: {x-role: reader, X-Role: admin}
"#,
    );
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics[0].field, "spec.matches[0].headers.x-role");
    assert!(
        diagnostics[0]
            .message
            .contains("header x-role is already given"),
        "{}",
        diagnostics[0].message
    );
}

#[test]
fn workloads_and_services_are_read_as_local_mode_runs_them() {
    let (catalog, diagnostics) = load(
        r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: db}
  ports:
  - {name: tcp-postgres, port: 5432, targetPort: 15432}
  - {name: admin, port: 8081, appProtocol: tcp}
  - {name: web, port: 8080}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: db, namespace: shop}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: db}}
    spec:
      serviceAccountName: database
      containers:
      - command: [weft-upstream]
        args: ["$(APP_IP):15432", db]
        env: [{name: MODE, value: tcp}]
        ports: [{containerPort: 15432}]
---
apiVersion: v1
kind: Pod
metadata: {name: debug, namespace: shop, labels: {app: debug}}
spec:
  containers: [{command: [sleep, "60"]}]
"#,
    );
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let service = &catalog.services[0];
    assert_eq!(service.selector.get("app").map(String::as_str), Some("db"));
    let ports: Vec<_> = service
        .port_specs
        .iter()
        .map(|p| (p.port, p.target_port, p.protocol))
        .collect();
    assert_eq!(
        ports,
        vec![
            (5432, 15432, AppProtocol::Tcp),
            (8081, 8081, AppProtocol::Tcp),
            (8080, 8080, AppProtocol::Http),
        ]
    );
    let db = &catalog.workloads[0];
    assert_eq!(
        (db.kind.as_str(), db.meta.name.as_str()),
        ("Deployment", "db")
    );
    assert_eq!(db.service_account, "database");
    assert_eq!(db.replicas, 2);
    assert_eq!(db.ports, [15432]);
    let debug = &catalog.workloads[1];
    assert_eq!(
        (debug.kind.as_str(), debug.service_account.as_str()),
        ("Pod", "default")
    );
    assert_eq!(debug.replicas, 1);
}

#[test]
fn a_bad_workload_or_service_port_is_an_error_at_its_field() {
    let (_, diagnostics) = load(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: many
"#,
    );
    let messages = messages(&diagnostics);
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(
        messages[0]
            .contains("Service shop/web: spec.ports[0].targetPort: \"http\" is not a port number"),
        "{}",
        messages[0]
    );
    assert!(
        messages[1].contains("Deployment shop/web: spec.replicas: invalid type"),
        "{}",
        messages[1]
    );
    assert!(messages[1].starts_with("test.yaml:8:"), "{}", messages[1]);
}

#[test]
fn a_container_command_or_env_of_the_wrong_type_is_an_error_at_its_field() {
    let (_, diagnostics) = load(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: debug, namespace: shop, labels: {app: debug}}\nspec:\n  containers: [{command: sleep, env: [{name: A, value: 1}]}]\n",
    );
    let errors: Vec<String> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.field.clone())
        .collect();
    assert!(
        errors
            .iter()
            .any(|field| field.starts_with("spec.containers[0]")),
        "{diagnostics:#?}"
    );
}
