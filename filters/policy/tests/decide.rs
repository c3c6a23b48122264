//! Decisions, statement by statement from docs/smi.md (the SMI specification as weft reads it): a realistic manifest set is
//! compiled for a workload, and each request gets the decision the spec implies.

use weft_policy::bundle::{AccessMode, Identity, StickyKey};

use weft_policy::compile::Side;
use weft_policy::config::PluginConfig;
use weft_policy::engine::{
    Decision, DenyReason, Engine, EngineError, HttpRequest, Routing, cookie, sticky_roll,
};

const MANIFESTS: &str = r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: api, namespace: shop}
spec:
  matches:
  - {name: metrics, pathRegex: /metrics, methods: [GET]}
  - {name: everything, pathRegex: ".*", methods: ["*"]}
  - name: android-insiders
    headers: {user-agent: ".*Android.*", cookie: "^(.*?;)?(type=insider)(;.*)?$"}
  - {name: create, pathRegex: /orders, methods: [POST]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: db-ports, namespace: shop}
spec: {matches: {ports: [3306, 6446]}}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: all-ports, namespace: shop}
spec: {matches: {ports: []}}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: UDPRoute
metadata: {name: dns, namespace: shop}
spec: {matches: {ports: [53]}}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: frontend-to-api, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: shop}
  sources: [{kind: ServiceAccount, name: frontend, namespace: shop}]
  rules: [{kind: HTTPRouteGroup, name: api, matches: [metrics, create]}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: admin-to-api, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: shop}
  sources: [{kind: ServiceAccount, name: admin, namespace: ops}]
  rules: [{kind: HTTPRouteGroup, name: api}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: android, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api}
  sources: [{kind: ServiceAccount, name: mobile}]
  rules: [{kind: HTTPRouteGroup, name: api, matches: [android-insiders]}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: api-to-db, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: db, namespace: shop}
  sources: [{kind: ServiceAccount, name: api, namespace: shop}]
  rules: [{kind: TCPRoute, name: db-ports}]
---
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata: {name: legacy-batch, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: shop, port: 9090}
  sources: [{kind: ServiceAccount, name: batch, namespace: shop}]
  rules: [{kind: TCPRoute, name: all-ports}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: udp-only, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: shop}
  sources: [{kind: ServiceAccount, name: resolver, namespace: shop}]
  rules: [{kind: UDPRoute, name: dns}]
"#;

fn config_for(identity: &str, side: Side, manifests: &str) -> PluginConfig {
    weft_policy::testing::compiled(identity, side, manifests)
}

fn engine(identity: &str) -> Engine {
    Engine::new(&config_for(identity, Side::Inbound, MANIFESTS)).unwrap()
}

fn spiffe(identity: &str) -> String {
    identity
        .parse::<Identity>()
        .unwrap()
        .spiffe_id("cluster.local")
}

/// `Some(match or route)` when allowed, `None` when denied.
fn http(
    engine: &Engine,
    from: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    port: u16,
) -> Option<String> {
    let source = spiffe(from);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let request = HttpRequest {
        source: Some(&source),
        method,
        path,
        port,
        headers: &headers,
    };
    match engine.decide_http(&request) {
        Decision::Allow {
            http_match, route, ..
        } => Some(http_match.unwrap_or(route).into_owned()),
        Decision::AllowUnauthenticated { port } => Some(format!("unauthenticated on {port}")),
        Decision::Deny { .. } => None,
    }
}

/// Caller, method, path, headers, the match or route expected to allow (None: denied), and the
/// statement of the spec the case checks.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
    &'a str,
);

#[test]
fn http_access_follows_path_method_and_header_matches() {
    let api = engine("shop/api");
    let cases: &[Case] = &[
        (
            "shop/frontend",
            "GET",
            "/metrics",
            &[],
            Some("shop/api/metrics"),
            "a listed match allows",
        ),
        (
            "shop/frontend",
            "GET",
            "/metrics/cpu",
            &[],
            Some("shop/api/metrics"),
            "pathRegex is anchored at the start only",
        ),
        (
            "shop/frontend",
            "GET",
            "/api/metrics",
            &[],
            None,
            "pathRegex is anchored at the start",
        ),
        (
            "shop/frontend",
            "POST",
            "/metrics",
            &[],
            None,
            "the method must match too",
        ),
        (
            "shop/frontend",
            "POST",
            "/orders?id=1",
            &[],
            Some("shop/api/create"),
            "the query string is not part of the path",
        ),
        (
            "shop/frontend",
            "GET",
            "/orders",
            &[],
            None,
            "a match not listed in the rule does not allow",
        ),
        (
            "ops/admin",
            "DELETE",
            "/anything",
            &[],
            Some("shop/api/everything"),
            "omitted rule matches mean all matches",
        ),
        (
            "ops/admin",
            "PATCH",
            "/x",
            &[],
            Some("shop/api/everything"),
            "methods * is any method",
        ),
        (
            "shop/mobile",
            "GET",
            "/",
            &[
                ("user-agent", "Mozilla Android 14"),
                ("cookie", "a=b;type=insider"),
            ],
            Some("shop/api/android-insiders"),
            "all header regexes match",
        ),
        (
            "shop/mobile",
            "GET",
            "/",
            &[
                ("User-Agent", "Mozilla Android 14"),
                ("Cookie", "type=insider"),
            ],
            Some("shop/api/android-insiders"),
            "header names are case-insensitive",
        ),
        (
            "shop/mobile",
            "GET",
            "/",
            &[("user-agent", "Mozilla Android 14")],
            None,
            "a missing header does not match",
        ),
        (
            "shop/mobile",
            "GET",
            "/",
            &[
                ("user-agent", "Mozilla android 14"),
                ("cookie", "type=insider"),
            ],
            None,
            "header regexes are case-sensitive",
        ),
        (
            "shop/mobile",
            "GET",
            "/",
            &[("user-agent", "Android"), ("cookie", "type=insiders")],
            None,
            "header regexes match the whole value",
        ),
        (
            "shop/batch",
            "GET",
            "/",
            &[],
            None,
            "a v1alpha2 destination port limits the rule to that port",
        ),
        (
            "shop/resolver",
            "GET",
            "/",
            &[],
            None,
            "a UDPRoute allows no HTTP",
        ),
        (
            "shop/stranger",
            "GET",
            "/metrics",
            &[],
            None,
            "default deny: no TrafficTarget lists the source",
        ),
    ];
    for (from, method, path, headers, expected, statement) in cases {
        assert_eq!(
            http(&api, from, method, path, headers, 8080).as_deref(),
            *expected,
            "{statement}: {from} {method} {path}"
        );
    }
    assert_eq!(
        http(&api, "shop/batch", "GET", "/", &[], 9090).as_deref(),
        Some("shop/all-ports"),
        "on its port the v1alpha2 rule allows"
    );
}

#[test]
fn a_tcp_route_allows_connections_and_http_on_its_ports_only() {
    let db = engine("shop/db");
    let api = spiffe("shop/api");
    assert!(db.decide_tcp(Some(&api), 3306).is_allowed());
    assert!(db.decide_tcp(Some(&api), 6446).is_allowed());
    assert!(!db.decide_tcp(Some(&api), 5432).is_allowed());
    assert_eq!(
        http(&db, "shop/api", "GET", "/status", &[], 3306).as_deref(),
        Some("shop/db-ports")
    );
    assert_eq!(http(&db, "shop/api", "GET", "/status", &[], 5432), None);
}

#[test]
fn an_empty_port_list_means_every_port_and_udp_rules_do_not_allow_tcp() {
    let api = engine("shop/api");
    assert!(
        api.decide_tcp(Some(&spiffe("shop/batch")), 9090)
            .is_allowed()
    );
    assert!(
        !api.decide_tcp(Some(&spiffe("shop/resolver")), 53)
            .is_allowed()
    );
    assert!(
        !api.decide_tcp(Some(&spiffe("shop/frontend")), 8080)
            .is_allowed(),
        "HTTP rules allow no raw TCP"
    );
}

#[test]
fn denials_say_why() {
    let api = engine("shop/api");
    let headers: Vec<(String, String)> = Vec::new();
    let request = |source| HttpRequest {
        source,
        method: "GET",
        path: "/orders",
        port: 8080,
        headers: &headers,
    };
    assert_eq!(
        api.decide_http(&request(None)),
        Decision::Deny {
            reason: DenyReason::Unauthenticated
        }
    );
    let stranger = spiffe("shop/stranger");
    assert_eq!(
        api.decide_http(&request(Some(&stranger))),
        Decision::Deny {
            reason: DenyReason::NoTrafficTarget {
                source: stranger.as_str().into()
            }
        }
    );
    let frontend = spiffe("shop/frontend");
    assert_eq!(
        api.decide_http(&request(Some(&frontend))),
        Decision::Deny {
            reason: DenyReason::NoMatchingRule {
                source: frontend.as_str().into(),
                traffic_targets: vec!["shop/frontend-to-api".into()]
            }
        }
    );
    let foreign = "spiffe://other.domain/ns/shop/sa/frontend";
    assert!(
        !api.decide_http(&request(Some(foreign))).is_allowed(),
        "another trust domain is another identity"
    );
}

#[test]
fn without_an_access_policy_nothing_is_allowed() {
    let engine = Engine::new(&PluginConfig::default()).unwrap();
    let source = spiffe("shop/frontend");
    assert_eq!(
        engine.decide_tcp(Some(&source), 80),
        Decision::Deny {
            reason: DenyReason::NoAccessPolicy
        }
    );
}

#[test]
fn traffic_targets_for_other_destinations_compile_to_nothing() {
    let config = config_for("shop/unprotected", Side::Inbound, MANIFESTS);
    assert!(config.access.unwrap().sources.is_empty());
}

#[test]
fn an_allow_names_the_traffic_target_rule_and_match() {
    let api = engine("shop/api");
    let source = spiffe("shop/frontend");
    let headers: Vec<(String, String)> = Vec::new();
    let decision = api.decide_http(&HttpRequest {
        source: Some(&source),
        method: "GET",
        path: "/metrics",
        port: 80,
        headers: &headers,
    });
    assert_eq!(
        decision,
        Decision::Allow {
            traffic_target: "shop/frontend-to-api".into(),
            rule: 0,
            route: "shop/api".into(),
            http_match: Some("shop/api/metrics".into())
        }
    );
    assert_eq!(
        serde_json::to_value(&decision).unwrap()["decision"],
        "allow",
        "the JSON form has decision: allow"
    );
}

const SPLITS: &str = r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: ab-test, namespace: web}
spec:
  matches:
  - {name: firefox, headers: {user-agent: ".*Firefox.*"}}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: canary, namespace: web}
spec:
  service: website
  backends: [{service: website-v1, weight: 75}, {service: website-v2, weight: 25}, {service: website-v3, weight: 0}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: ab, namespace: web}
spec:
  service: shop.web.svc.cluster.local
  matches: [{kind: HTTPRouteGroup, name: ab-test}]
  backends: [{service: shop-v2, weight: 1}]
"#;

fn route(engine: &Engine, host: &str, headers: &[(&str, &str)], roll: u64) -> String {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let request = HttpRequest {
        source: None,
        method: "GET",
        path: "/",
        port: 80,
        headers: &headers,
    };
    match engine.route(host, &request, roll) {
        Routing::NotSplit => "not split".to_owned(),
        Routing::Backend { service, .. } => service.to_owned(),
        Routing::Root { service, why, .. } => format!("root {service} ({why:?})"),
    }
}

#[test]
fn weights_are_relative_and_weight_zero_never_receives_traffic() {
    let client = Engine::new(&config_for("web/client", Side::Outbound, SPLITS)).unwrap();
    let mut counts = std::collections::BTreeMap::new();
    // Every roll modulo the total weight (100) once: exactly 75 and 25.
    for roll in 0..100 {
        *counts
            .entry(route(&client, "website", &[], roll))
            .or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        [
            ("website-v1.web".to_owned(), 75),
            ("website-v2.web".to_owned(), 25)
        ]
        .into()
    );
}

#[test]
fn every_host_form_of_the_root_service_is_recognised() {
    let inside = Engine::new(&config_for("web/client", Side::Outbound, SPLITS)).unwrap();
    for host in [
        "website",
        "website.web",
        "website.web.svc",
        "website.web.svc.cluster.local",
        "website.web.svc.cluster.local.",
        "WEBSITE.web:8080",
        "website.web.svc.cluster.local.:80",
    ] {
        // Rolls 0..75 of the total 100 choose v1, 75..100 choose v2.
        assert_eq!(route(&inside, host, &[], 0), "website-v1.web", "{host}");
        assert_eq!(route(&inside, host, &[], 80), "website-v2.web", "{host}");
    }
    assert_eq!(route(&inside, "example.com", &[], 0), "not split");
    let outside = Engine::new(&config_for("other/client", Side::Outbound, SPLITS)).unwrap();
    assert_eq!(
        route(&outside, "website", &[], 0),
        "not split",
        "a short name is another namespace's service"
    );
    assert_eq!(route(&outside, "website.web", &[], 0), "website-v1.web");
}

#[test]
fn with_matches_only_matching_requests_are_split() {
    let client = Engine::new(&config_for("web/client", Side::Outbound, SPLITS)).unwrap();
    assert_eq!(
        route(
            &client,
            "shop.web",
            &[("user-agent", "Mozilla/5.0 Firefox/130")],
            7
        ),
        "shop-v2.web"
    );
    assert_eq!(
        route(&client, "shop.web", &[("user-agent", "curl/8")], 7),
        "root shop.web (NotMatched)"
    );
}

/// The client's configuration with the canary split left with no backend that can receive
/// traffic (`weft check` refuses weights that are all 0, but a backend may lose its port, and a
/// hand-written bundle may say anything).
fn canary_without_backends() -> Engine {
    let mut config = config_for("web/client", Side::Outbound, SPLITS);
    for table in &mut config.splits {
        if table.traffic_split == "web/canary" {
            table.backends.clear();
        }
    }
    Engine::new(&config).unwrap()
}

#[test]
fn a_split_left_with_no_backend_sends_requests_to_the_root_service() {
    assert_eq!(
        route(&canary_without_backends(), "website", &[], 3),
        "root website.web (NoEligibleBackend)"
    );
}

#[test]
fn a_sticky_key_keeps_its_backend() {
    let client = Engine::new(&config_for("web/client", Side::Outbound, SPLITS)).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..200 {
        let key = format!("user-{user}");
        let first = route(&client, "website", &[], sticky_roll(key.as_bytes()));
        for _ in 0..3 {
            assert_eq!(
                route(&client, "website", &[], sticky_roll(key.as_bytes())),
                first
            );
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "sticky keys still spread over the backends");
}

fn sticky(key: StickyKey) -> Engine {
    let mut config = config_for("web/client", Side::Outbound, SPLITS);
    for table in &mut config.splits {
        table.sticky = Some(key.clone());
    }
    Engine::new(&config).unwrap()
}

#[test]
fn a_sticky_header_or_cookie_keeps_its_backend_whatever_the_random_roll() {
    for (engine, carrier) in [
        (sticky(StickyKey::Header("X-User".to_owned())), "x-user"),
        (sticky(StickyKey::Cookie("user".to_owned())), "cookie"),
    ] {
        let mut seen = std::collections::BTreeSet::new();
        for user in 0..100 {
            let value = if carrier == "cookie" {
                format!("theme=dark; user={user}; lang=en")
            } else {
                user.to_string()
            };
            let first = route(&engine, "website", &[(carrier, &value)], 0);
            for random in [1, 50, 99, u64::MAX] {
                assert_eq!(
                    route(&engine, "website", &[(carrier, &value)], random),
                    first,
                    "{carrier} {value}"
                );
            }
            seen.insert(first);
        }
        assert_eq!(
            seen.len(),
            2,
            "{carrier}: keys still spread over the backends"
        );
        // Without the key the random roll decides.
        assert_eq!(route(&engine, "website", &[], 0), "website-v1.web");
        assert_eq!(route(&engine, "website", &[], 80), "website-v2.web");
    }
}

#[test]
fn a_sticky_split_reads_only_the_headers_it_needs() {
    let engine = sticky(StickyKey::Cookie("user".to_owned()));
    let website = engine.split_for_host("website.web:80").unwrap();
    assert_eq!(website.header_names(), ["cookie"]);
    assert!(!website.reads_request_line());
    let ab = engine.split_for_host("shop").unwrap();
    assert_eq!(ab.header_names(), ["cookie", "user-agent"]);
    assert!(ab.reads_request_line());
    assert!(engine.split_for_host("example.com").is_none());
}

#[test]
fn splits_read_more_than_the_host_only_with_matches_or_a_sticky_key() {
    let weighted_only = r#"
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: canary, namespace: web}
spec:
  service: website
  backends: [{service: website-v1, weight: 9}, {service: website-v2, weight: 1}]
"#;
    let plain = config_for("web/client", Side::Outbound, weighted_only);
    assert!(!Engine::new(&plain).unwrap().splits_read_request());
    let mut sticky_plain = plain.clone();
    sticky_plain.splits[0].sticky = Some(StickyKey::Header("x-user".to_owned()));
    assert!(Engine::new(&sticky_plain).unwrap().splits_read_request());
    // SPLITS has an A/B split with matches.
    let with_matches = Engine::new(&config_for("web/client", Side::Outbound, SPLITS)).unwrap();
    assert!(with_matches.splits_read_request());
}

#[test]
fn cookies_are_found_by_exact_name() {
    assert_eq!(cookie("a=1; user=\"x y\"; b=2", "user"), Some("x y"));
    assert_eq!(cookie("a=1;user=7", "user"), Some("7"));
    assert_eq!(cookie("username=7; User=8", "user"), None);
    assert_eq!(cookie("user", "user"), None);
}

#[test]
fn an_invalid_sticky_name_is_refused_naming_the_field() {
    for (key, field) in [
        (
            StickyKey::Header("x user".to_owned()),
            "splits[0].sticky.header",
        ),
        (StickyKey::Cookie(String::new()), "splits[0].sticky.cookie"),
        (
            StickyKey::Cookie("a;b".to_owned()),
            "splits[0].sticky.cookie",
        ),
    ] {
        let mut config = config_for("web/client", Side::Outbound, SPLITS);
        config.splits[0].sticky = Some(key);
        let err = Engine::new(&config).unwrap_err();
        assert!(
            matches!(&err, EngineError::Name { field: f, .. } if f == field),
            "{err}"
        );
        assert_eq!(err.field(), field);
        assert!(err.reason().contains("is not a valid"), "{}", err.reason());
        assert_eq!(err.to_string(), format!("{field}: {}", err.reason()));
    }
}

#[test]
fn splits_without_backends_are_listed() {
    let client = Engine::new(&config_for("web/client", Side::Outbound, SPLITS)).unwrap();
    assert_eq!(client.splits_without_backends().count(), 0);
    assert_eq!(
        canary_without_backends()
            .splits_without_backends()
            .collect::<Vec<_>>(),
        [("web/canary", "website.web")]
    );
}

#[test]
fn weights_need_not_sum_to_100_and_1000_to_500_sends_a_third_to_the_second() {
    let manifests = SPLITS
        .replace("weight: 75}", "weight: 1000}")
        .replace("weight: 25}", "weight: 500}");
    let client = Engine::new(&config_for("web/client", Side::Outbound, &manifests)).unwrap();
    let second = (0..1500)
        .filter(|roll| route(&client, "website", &[], *roll) == "website-v2.web")
        .count();
    assert_eq!(
        second, 500,
        "exactly one third of the rolls over the total weight"
    );
}

#[test]
fn callers_without_identity_are_denied_except_on_ports_the_policy_opens_to_them() {
    let mut config = config_for("shop/api", Side::Inbound, MANIFESTS);
    let no_headers: Vec<(String, String)> = Vec::new();
    let anonymous = |port| HttpRequest {
        source: None,
        method: "GET",
        path: "/metrics",
        port,
        headers: &no_headers,
    };
    let enforcing = Engine::new(&config).unwrap();
    let denied = enforcing.decide_http(&anonymous(8081));
    assert!(
        matches!(
            denied,
            Decision::Deny {
                reason: DenyReason::Unauthenticated
            }
        ),
        "{denied:?}"
    );
    assert!(!enforcing.decide_tcp(None, 8081).is_allowed());

    config.access.as_mut().unwrap().unauthenticated_ports = vec![8081];
    let opened = Engine::new(&config).unwrap();
    assert_eq!(
        opened.decide_http(&anonymous(8081)),
        Decision::AllowUnauthenticated { port: 8081 }
    );
    assert_eq!(
        opened.decide_tcp(None, 8081),
        Decision::AllowUnauthenticated { port: 8081 }
    );
    assert!(
        !opened.decide_http(&anonymous(8080)).is_allowed(),
        "only the named ports are opened"
    );
}

#[test]
fn deny_reasons_read_as_sentences_naming_the_caller() {
    let api = engine("shop/api");
    let stranger = spiffe("other/stranger");
    let no_headers: Vec<(String, String)> = Vec::new();
    let request = HttpRequest {
        source: Some(stranger.as_str()),
        method: "GET",
        path: "/metrics",
        port: 8080,
        headers: &no_headers,
    };
    let Decision::Deny { reason } = api.decide_http(&request) else {
        panic!("a stranger is denied");
    };
    assert_eq!(
        reason.to_string(),
        "no TrafficTarget allows spiffe://cluster.local/ns/other/sa/stranger: none lists it as a source"
    );
    assert!(
        DenyReason::Unauthenticated
            .to_string()
            .contains("no verified client certificate")
    );
}

#[test]
fn the_mode_defaults_to_enforce_and_access_reads_only_its_match_headers() {
    let api = engine("shop/api");
    assert_eq!(api.access_mode(), Some(AccessMode::Enforce));
    assert_eq!(api.access_header_names(), ["cookie", "user-agent"]);
    let client = Engine::new(&config_for("web/client", Side::Outbound, SPLITS)).unwrap();
    assert!(
        api.access_reads_port(),
        "legacy-batch is restricted to port 9090"
    );
    assert_eq!(client.access_mode(), None);
    assert!(!client.access_reads_port());
    assert!(client.access_header_names().is_empty());
}

#[test]
fn a_path_not_in_normal_form_is_denied_even_where_a_rule_would_allow_it() {
    let engine = engine("shop/api");
    // ops/admin may do anything, shop/frontend may POST /orders...: neither passes a path an
    // application would resolve elsewhere.
    for (from, method, path) in [
        ("ops/admin", "GET", "/metrics/../admin"),
        ("shop/frontend", "POST", "/orders/../admin"),
        ("shop/frontend", "POST", "/orders/%2e%2e/admin"),
        ("shop/frontend", "POST", "/orders%2F..%2Fadmin"),
        ("shop/frontend", "POST", "/orders/..;/admin"),
        ("shop/frontend", "POST", "/orders//admin"),
        ("shop/frontend", "POST", "/orders\\admin"),
        ("shop/frontend", "POST", "/orders/%61dmin"),
    ] {
        assert_eq!(http(&engine, from, method, path, &[], 8080), None, "{path}");
    }
    assert!(
        http(
            &engine,
            "shop/frontend",
            "POST",
            "/orders/42?next=/../admin",
            &[],
            80
        )
        .is_some()
    );
    let source = spiffe("shop/frontend");
    let request = HttpRequest {
        source: Some(&source),
        method: "POST",
        path: "/orders/../admin",
        port: 80,
        headers: &Vec::<(String, String)>::new(),
    };
    let Decision::Deny { reason } = engine.decide_http(&request) else {
        panic!("allowed")
    };
    assert!(matches!(
        &reason,
        DenyReason::PathNotNormal { path, .. } if path == "/orders/../admin"
    ));
    assert!(
        reason
            .to_string()
            .starts_with("the path /orders/../admin is not in normal form"),
        "{reason}"
    );
}

#[test]
fn a_header_that_appears_several_times_is_matched_on_its_values_joined_with_commas() {
    let manifests = r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: roles, namespace: shop}
spec:
  matches: [{name: readers, headers: {x-role: "reader|viewer"}}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: shop}
  sources: [{kind: ServiceAccount, name: frontend, namespace: shop}]
  rules: [{kind: HTTPRouteGroup, name: roles}]
"#;
    let engine = Engine::new(&config_for("shop/api", Side::Inbound, manifests)).unwrap();
    let reader = ("x-role", "reader");
    assert!(http(&engine, "shop/frontend", "GET", "/", &[reader], 80).is_some());
    // The upstream would receive both values, so the rule reads "reader,admin": denied, in any
    // letter case of the name, as Envoy's RBAC decides.
    for second in [
        ("x-role", "admin"),
        ("X-Role", "admin"),
        ("x-role", "reader"),
    ] {
        assert_eq!(
            http(&engine, "shop/frontend", "GET", "/", &[reader, second], 80),
            None,
            "{second:?}"
        );
    }
    use weft_policy::engine::Headers;
    let headers = vec![
        ("x-role".to_owned(), "reader".to_owned()),
        ("X-Role".to_owned(), "admin".to_owned()),
    ];
    assert_eq!(headers.header("x-role").as_deref(), Some("reader,admin"));
    assert_eq!(headers[..1].header("x-role").as_deref(), Some("reader"));
    // Several cookie headers joined with "," are still read cookie by cookie.
    assert_eq!(cookie("a=1, user=u-7; b=2", "user"), Some("u-7"));
}
