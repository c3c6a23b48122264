//! weft's own resources read with SMI: TrafficPolicy and EnvoyPatch, field by field, and their
//! cross-object checks.

use std::time::Duration;

use weft_policy::catalog::effective_policy;
use weft_policy::check;
use weft_policy::extension::RateLimit;

const SERVICES: &str = r"
apiVersion: v1
kind: Service
metadata: {name: checkout, namespace: shop}
spec:
  selector: {app: checkout}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: db}
  ports: [{name: tcp-postgres, port: 5432, appProtocol: tcp}]
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: checkout-routes, namespace: shop}
spec:
  matches:
  - {name: cart, pathRegex: /cart$, methods: [GET]}
  - {name: pay, pathRegex: /pay$, methods: [POST]}
";

fn checked(policy: &str) -> (weft_policy::catalog::Catalog, Vec<String>) {
    let (catalog, diagnostics) = check([("services.yaml", SERVICES), ("policy.yaml", policy)]);
    (
        catalog,
        diagnostics.iter().map(ToString::to_string).collect(),
    )
}

#[test]
fn a_traffic_policy_is_read_with_every_section() {
    let (catalog, problems) = checked(
        r"
apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: checkout, namespace: shop}
spec:
  targetRef: {kind: Service, name: checkout}
  connectionLimits: {maxConnections: 10, maxPendingRequests: 2, maxRequests: 20, maxRetries: 3, maxRequestsPerConnection: 100}
  outlierDetection: {consecutive5xx: 3, consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  retry:
    attempts: 2
    perTryTimeout: 250ms
    retryOn: [5xx, reset]
    backoff: {baseInterval: 25ms, maxInterval: 100ms}
    budget: {percent: 20, minConcurrency: 3}
  timeouts: {request: 2s, idle: 1m, connect: 500ms}
  rateLimit: {requests: 10, interval: 1s, burst: 20}
  faultInjection: {delay: {percent: 10, duration: 1s}, abort: {percent: 5, status: 503}}
  routes:
  - match: {kind: HTTPRouteGroup, name: checkout-routes, match: pay}
    retry: {attempts: 0}
    timeouts: {request: 10s}
",
    );
    assert!(problems.is_empty(), "{problems:#?}");
    let policy = &catalog.traffic_policies[0];
    assert_eq!(policy.target.service, "checkout");
    let limits = policy.settings.connection_limits.as_ref().unwrap();
    assert_eq!(limits.max_pending_requests, Some(2));
    let retry = policy.settings.retry.as_ref().unwrap();
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(250)));
    assert_eq!(retry.retry_on, ["5xx", "reset"]);
    assert_eq!(
        policy.settings.rate_limit,
        Some(RateLimit {
            requests: 10,
            interval: Duration::from_secs(1),
            burst: Some(20),
            status: None,
        })
    );
    assert_eq!(policy.routes[0].match_name.as_deref(), Some("pay"));
    assert_eq!(
        policy.routes[0].settings.timeouts.as_ref().unwrap().request,
        Some(Duration::from_secs(10))
    );
}

#[test]
fn each_bad_field_is_named_with_its_line_and_what_would_be_valid() {
    let (_, problems) = checked(
        r"apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: bad, namespace: shop}
spec:
  targetRef: {name: checkout}
  outlierDetection:
    interval: 1.5s
    maxEjectionPercent: 150
  retry:
    retryOn: [5xx, sometimes]
  rateLimit: {requests: 10, interval: 10ms, burst: 5, status: 200}
  timeouts: {conect: 1s}
",
    );
    let expected = [
        "policy.yaml:7: error: TrafficPolicy shop/bad: spec.outlierDetection.interval: \"1.5s\" is not a duration",
        "policy.yaml:8: error: TrafficPolicy shop/bad: spec.outlierDetection.maxEjectionPercent: 150 is out of range; use a whole percentage from 0 to 100",
        "policy.yaml:10: error: TrafficPolicy shop/bad: spec.retry.retryOn[1]: \"sometimes\" is not a retry condition",
        "policy.yaml:11: error: TrafficPolicy shop/bad: spec.rateLimit.burst: burst 5 is less than requests 10",
        "policy.yaml:11: error: TrafficPolicy shop/bad: spec.rateLimit.interval: \"10ms\" is shorter than Envoy's shortest refill interval, 50ms",
        "policy.yaml:11: error: TrafficPolicy shop/bad: spec.rateLimit.status: 200 is out of range; use an HTTP status from 400 to 599",
        "policy.yaml:12: error: TrafficPolicy shop/bad: spec.timeouts.conect: unknown field; check its spelling",
    ];
    for needle in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(needle)),
            "no {needle:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
}

#[test]
fn settings_that_do_not_fit_the_target_are_errors_and_a_missing_service_a_warning() {
    let (_, problems) = checked(
        r"apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: db, namespace: shop}
spec:
  targetRef: {name: db, port: 5432}
  retry: {attempts: 1}
---
apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: wrong-port, namespace: shop}
spec:
  targetRef: {name: checkout, port: 9090}
  timeouts: {connect: 1s}
---
apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: routes, namespace: shop}
spec:
  targetRef: {name: checkout}
  routes:
  - match: {name: checkout-routes, match: refund}
  - match: {name: nowhere}
  - match: {name: checkout-routes}
    connectionLimits: {maxConnections: 1}
---
apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: ghost, namespace: shop}
spec:
  targetRef: {name: ghost}
  timeouts: {connect: 1s}
",
    );
    let expected = [
        "error: TrafficPolicy shop/db: spec.retry: retry applies to HTTP; port 5432 of Service db is TCP",
        "error: TrafficPolicy shop/wrong-port: spec.targetRef.port: Service checkout has no port 9090; its ports are 8080",
        "error: TrafficPolicy shop/routes: spec.routes[0].match.match: HTTPRouteGroup checkout-routes has no match refund; its matches are cart, pay",
        "error: TrafficPolicy shop/routes: spec.routes[1].match.name: no HTTPRouteGroup nowhere in this namespace",
        "error: TrafficPolicy shop/routes: spec.routes[2].connectionLimits: connectionLimits applies to a whole Service",
        "warning: TrafficPolicy shop/ghost: spec.targetRef.name: no Service ghost in this namespace",
    ];
    for needle in expected {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "no {needle:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
}

#[test]
fn two_policies_on_one_target_resolve_to_the_first_by_name_and_the_port_beats_the_service() {
    let (catalog, problems) = checked(
        r"apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: b-second, namespace: shop}
spec:
  targetRef: {name: checkout}
  timeouts: {connect: 2s}
---
apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: a-first, namespace: shop}
spec:
  targetRef: {name: checkout}
  timeouts: {connect: 1s}
---
apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: z-port, namespace: shop}
spec:
  targetRef: {name: db, port: 5432}
  timeouts: {connect: 3s}
---
apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: y-whole, namespace: shop}
spec:
  targetRef: {name: db}
  timeouts: {connect: 4s}
",
    );
    assert_eq!(
        problems,
        [
            "policy.yaml:5: warning: TrafficPolicy shop/b-second: spec.targetRef: Service checkout is also targeted by TrafficPolicy a-first, which wins (policies on one target do not merge; the first by name wins); this policy is not applied there"
        ],
    );
    let checkout = catalog.service("shop", "checkout").unwrap();
    assert_eq!(
        effective_policy(&catalog, checkout, 8080)
            .unwrap()
            .meta
            .name,
        "a-first"
    );
    let db = catalog.service("shop", "db").unwrap();
    assert_eq!(
        effective_policy(&catalog, db, 5432).unwrap().meta.name,
        "z-port"
    );
}

#[test]
fn an_envoy_patch_is_read_and_its_operations_checked() {
    let (catalog, problems) = checked(
        r#"apiVersion: policy.weft.io/v1alpha1
kind: EnvoyPatch
metadata: {name: header, namespace: shop}
spec:
  selector: {matchLabels: {app: frontend}}
  patches:
  - type: RouteConfiguration
    name: outbound
    operations:
    - {op: add, path: /response_headers_to_add, value: [{header: {key: x-patched, value: "yes"}}]}
---
apiVersion: policy.weft.io/v1alpha1
kind: EnvoyPatch
metadata: {name: bad, namespace: shop}
spec:
  patches:
  - type: Secret
    name: spiffe://cluster.local/ns/shop/sa/frontend
    operations: [{op: remove, path: /tls_certificate}]
  - type: type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: checkout.shop
    operations:
    - {op: replace, path: connect_timeout, value: 1s}
"#,
    );
    assert_eq!(
        problems,
        [
            "policy.yaml:17: error: EnvoyPatch shop/bad: spec.patches[0].type: \"Secret\" cannot be patched; patch one of Listener, Cluster or RouteConfiguration (secrets and weft's filter configuration are not patchable)",
            "policy.yaml:23: error: EnvoyPatch shop/bad: spec.patches[1].operations[0].path: \"connect_timeout\" is not a JSON Pointer; it is empty or starts with /, such as /virtual_hosts/0/name",
        ]
    );
    let patch = &catalog
        .envoy_patches
        .iter()
        .find(|p| p.meta.name == "header")
        .unwrap();
    assert_eq!(
        patch.patches[0].resource_type,
        weft_policy::extension::PatchedType::RouteConfiguration
    );
    let labels = [("app".to_owned(), "frontend".to_owned())].into();
    assert!(patch.selects("shop", &labels));
    assert!(!patch.selects("other", &labels));
}
