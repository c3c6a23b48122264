//! TrafficPolicies in a local mesh of real Envoys: each setting compiled into Envoy's native
//! cluster and route fields on the calling side, checked by what a caller gets and by
//! Envoy's own counters. The mesh is examples/mesh with checkout-v1 scaled to two replicas,
//! every path of checkout open to frontend, and the policies of `POLICIES`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_e2e::client::{Reply, request};
use weft_e2e::mesh::{TestMesh, write_manifest};
use weft_e2e::poll::until;

const POLICIES: &str = r"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: policy-routes, namespace: shop}
spec:
  matches:
  - {name: limited, pathRegex: /limited$, methods: [GET]}
  - {name: faulty, pathRegex: /faulty$, methods: [GET]}
---
apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: checkout-v1, namespace: shop}
spec:
  targetRef: {kind: Service, name: checkout-v1}
  connectionLimits: {maxConnections: 2, maxPendingRequests: 1}
  outlierDetection: {consecutive5xx: 3, interval: 500ms, baseEjectionTime: 2s, maxEjectionPercent: 50}
---
apiVersion: policy.weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: checkout-v2, namespace: shop}
spec:
  targetRef: {kind: Service, name: checkout-v2, port: 8080}
  retry: {attempts: 3, retryOn: [retriable-status-codes], retriableStatusCodes: [503]}
  timeouts: {request: 1s}
  routes:
  - match: {kind: HTTPRouteGroup, name: policy-routes, match: limited}
    rateLimit: {requests: 3, interval: 1h}
  - match: {kind: HTTPRouteGroup, name: policy-routes, match: faulty}
    faultInjection: {delay: {percent: 100, duration: 300ms}, abort: {percent: 100, status: 418}}
";

const FRONTEND: &str = "shop/frontend-0";

/// examples/mesh with two checkout-v1 replicas, every path of checkout open to frontend, and
/// the policies.
fn prepare(dir: &std::path::Path) -> anyhow::Result<()> {
    let workloads = std::fs::read_to_string(dir.join("workloads.yaml"))?;
    let (before, after) = workloads
        .split_once("metadata: {name: checkout-v1, namespace: shop}\nspec:\n  replicas: 1")
        .ok_or_else(|| anyhow::anyhow!("checkout-v1 in workloads.yaml"))?;
    write_manifest(
        dir,
        "workloads.yaml",
        &format!(
            "{before}metadata: {{name: checkout-v1, namespace: shop}}\nspec:\n  replicas: 2{after}"
        ),
    )?;
    let access = std::fs::read_to_string(dir.join("access.yaml"))?;
    write_manifest(
        dir,
        "access.yaml",
        &access.replace(r#""/cart(/.*)?$""#, r#"".*""#),
    )?;
    write_manifest(dir, "policies.yaml", POLICIES)
}

async fn call(mesh: &TestMesh, host: &str, path: &str) -> Reply {
    mesh.call(FRONTEND, "GET", host, path)
        .await
        .unwrap_or_else(|err| panic!("frontend -> {host} {path}: {err:#}"))
}

async fn stat(mesh: &TestMesh, name: &str) -> u64 {
    mesh.stat(FRONTEND, name).await.unwrap()
}

/// A condition as `until` polls it: `Some(())` once it holds.
fn holds(condition: bool) -> anyhow::Result<Option<()>> {
    Ok(condition.then_some(()))
}

fn served_by(reply: &Reply) -> String {
    reply
        .headers
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_policies_trip_eject_retry_time_out_and_limit_in_real_envoys() {
    let mut mesh = TestMesh::start_prepared(prepare, |_| {}).await.unwrap();
    circuit_breaker_trips_at_the_configured_concurrency(&mesh).await;
    outlier_detection_ejects_a_failing_replica_and_brings_it_back(&mesh).await;
    retries_turn_failures_into_successes_with_the_exact_number_of_attempts(&mesh).await;
    a_request_timeout_answers_504_at_the_configured_time(&mesh).await;
    a_rate_limit_answers_429_past_the_burst_on_its_route_only(&mesh).await;
    faults_are_injected_by_the_caller_on_their_route(&mesh).await;
    mesh.stop().await;
}

/// maxConnections 2 and maxPendingRequests 1: with two slow requests in flight and one
/// waiting, seven more are refused at once with 503 and counted as overflow by Envoy.
async fn circuit_breaker_trips_at_the_configured_concurrency(mesh: &TestMesh) {
    const CLUSTER: &str = "cluster.checkout-v1.shop";
    let outbound = mesh.replica(FRONTEND).outbound();
    let slow = |outbound: SocketAddr| {
        tokio::spawn(async move {
            request(outbound, "GET", "/delay/3000", &[("host", "checkout-v1")])
                .await
                .map(|reply| reply.status)
        })
    };
    let mut in_flight = Vec::new();
    // One at a time, each seen by Envoy before the next: two active, then one pending.
    for (active, pending) in [(1, 0), (2, 0), (2, 1)] {
        in_flight.push(slow(outbound));
        until(
            &format!("{active} active and {pending} pending requests"),
            Duration::from_secs(5),
            || async {
                holds(
                    stat(mesh, &format!("{CLUSTER}.upstream_rq_active")).await == active
                        && stat(mesh, &format!("{CLUSTER}.upstream_rq_pending_active")).await
                            == pending,
                )
            },
        )
        .await
        .unwrap();
    }
    let mut refused = 0;
    for _ in 0..7 {
        let reply = call(mesh, "checkout-v1", "/cart").await;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(
            reply
                .headers
                .get("x-envoy-overloaded")
                .map(|v| v.as_bytes()),
            Some(&b"true"[..]),
            "{reply:?}"
        );
        refused += 1;
    }
    let mut served = Vec::new();
    for task in in_flight {
        served.push(task.await.unwrap().unwrap());
    }
    assert_eq!(served, [200, 200, 200], "the requests within the limits");
    assert_eq!(refused, 7);
    assert_eq!(
        stat(mesh, &format!("{CLUSTER}.upstream_rq_pending_overflow")).await,
        7
    );
}

/// consecutive5xx 3: a replica answering 500 is ejected after exactly three failures, the
/// other serves everything, and the first comes back once healed and its ejection is over.
async fn outlier_detection_ejects_a_failing_replica_and_brings_it_back(mesh: &TestMesh) {
    const EJECTED: &str = "cluster.checkout-v1.shop.outlier_detection.ejections_active";
    let failing = mesh.replica("shop/checkout-v1-1").pod.app_ip;
    let failing_app = SocketAddr::from((failing, 8080));
    let reply = request(failing_app, "POST", "/upstream/fail", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let mut failures = 0;
    let mut sent = 0;
    while stat(mesh, EJECTED).await == 0 {
        assert!(
            sent < 40,
            "not ejected after {sent} requests, {failures} failures"
        );
        let reply = call(mesh, "checkout-v1", "/cart").await;
        sent += 1;
        if reply.status == 500 {
            failures += 1;
            assert_eq!(served_by(&reply), failing_app.to_string());
            // The ejection is made on Envoy's main thread: give it the time to be seen.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while stat(mesh, EJECTED).await == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
        } else {
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    }
    let ejected_at = Instant::now();
    assert_eq!(failures, 3, "consecutive5xx is 3");
    for _ in 0..20 {
        let reply = call(mesh, "checkout-v1", "/cart").await;
        assert_eq!(reply.status, 200, "the healthy replica serves: {reply:?}");
        assert_ne!(served_by(&reply), failing_app.to_string());
    }
    assert_eq!(
        stat(
            mesh,
            "cluster.checkout-v1.shop.outlier_detection.ejections_enforced_consecutive_5xx"
        )
        .await,
        1
    );
    let reply = request(failing_app, "POST", "/upstream/heal", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let mut back = false;
    for _ in 0..400 {
        let reply = call(mesh, "checkout-v1", "/cart").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        if served_by(&reply) == failing_app.to_string() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(back, "the healed replica never served again");
    assert!(
        ejected_at.elapsed() >= Duration::from_secs(2),
        "back before baseEjectionTime: {:?}",
        ejected_at.elapsed()
    );
    assert_eq!(stat(mesh, EJECTED).await, 0);
}

/// attempts 3 on 503: a backend failing twice succeeds on the third attempt; one failing
/// more often is tried four times (one try and three retries) and its 503 is returned.
async fn retries_turn_failures_into_successes_with_the_exact_number_of_attempts(mesh: &TestMesh) {
    const CLUSTER: &str = "cluster.checkout-v2.shop";
    let reply = call(mesh, "checkout-v2", "/flaky/twice/2").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.ends_with("attempt 3\n"), "{reply:?}");
    assert_eq!(stat(mesh, &format!("{CLUSTER}.upstream_rq_retry")).await, 2);
    let reply = call(mesh, "checkout-v2", "/flaky/always/100").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.body.ends_with("attempt 4\n"), "{reply:?}");
    assert_eq!(stat(mesh, &format!("{CLUSTER}.upstream_rq_retry")).await, 5);
    assert_eq!(
        stat(mesh, &format!("{CLUSTER}.upstream_rq_retry_limit_exceeded")).await,
        1
    );
}

/// timeouts.request 1s: a backend taking 3 s is answered 504 by the caller's proxy after 1 s.
async fn a_request_timeout_answers_504_at_the_configured_time(mesh: &TestMesh) {
    let started = Instant::now();
    let reply = call(mesh, "checkout-v2", "/delay/3000").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{reply:?}");
    // (Envoy's timers may fire a fraction of a millisecond early.)
    assert!(
        took >= Duration::from_millis(990) && took < Duration::from_millis(1900),
        "answered after {took:?}"
    );
    assert_eq!(
        stat(mesh, "cluster.checkout-v2.shop.upstream_rq_timeout").await,
        1
    );
}

/// A route's rateLimit of 3 an hour: the fourth and fifth requests on that route get 429,
/// counted by Envoy; other paths of the Service are not limited.
async fn a_rate_limit_answers_429_past_the_burst_on_its_route_only(mesh: &TestMesh) {
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(call(mesh, "checkout-v2", "/limited").await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(
        stat(mesh, "weft_rate_limit.http_local_rate_limit.rate_limited").await,
        2
    );
    for _ in 0..10 {
        assert_eq!(call(mesh, "checkout-v2", "/cart").await.status, 200);
    }
}

/// A route's faultInjection of a 300 ms delay and an abort with 418, for every request: the
/// caller's proxy answers 418 after the delay, without reaching checkout-v2 (whose upstream
/// request count does not move).
async fn faults_are_injected_by_the_caller_on_their_route(mesh: &TestMesh) {
    const SENT: &str = "cluster.checkout-v2.shop.upstream_rq_total";
    let before = stat(mesh, SENT).await;
    for _ in 0..3 {
        // (Envoy's timers may fire a fraction of a millisecond early.)
        let started = Instant::now();
        let reply = call(mesh, "checkout-v2", "/faulty").await;
        assert_eq!(reply.status, 418, "{reply:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(290),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        stat(mesh, SENT).await,
        before,
        "aborted before leaving the caller"
    );
    assert_eq!(stat(mesh, "http.outbound.fault.aborts_injected").await, 3);
    assert_eq!(stat(mesh, "http.outbound.fault.delays_injected").await, 3);
}

const HEADER_PATCH: &str = r#"
apiVersion: policy.weft.io/v1alpha1
kind: EnvoyPatch
metadata: {name: frontend-header, namespace: shop}
spec:
  selector: {matchLabels: {app: frontend}}
  patches:
  - type: RouteConfiguration
    name: outbound
    operations:
    - {op: add, path: /response_headers_to_add, value: [{header: {key: x-weft-patched, value: "yes"}}]}
"#;

/// Decodes as JSON but not as a RouteConfiguration: refused before it is pushed.
const INVALID_PATCH: &str = r"
apiVersion: policy.weft.io/v1alpha1
kind: EnvoyPatch
metadata: {name: invalid, namespace: shop}
spec:
  selector: {matchLabels: {app: frontend}}
  patches:
  - type: RouteConfiguration
    name: outbound
    operations:
    - {op: add, path: /virtual_hosts/0/no_such_field, value: 1}
";

/// A RouteConfiguration that passes weft's checks (headers added on the outbound side are
/// safe) and Envoy refuses: a pseudo-header cannot be added.
const NACKED_PATCH: &str = r#"
apiVersion: policy.weft.io/v1alpha1
kind: EnvoyPatch
metadata: {name: pseudo-header, namespace: shop}
spec:
  selector: {matchLabels: {app: frontend}}
  patches:
  - type: RouteConfiguration
    name: outbound
    operations:
    - {op: add, path: /request_headers_to_add, value: [{header: {key: ":path", value: /x}}]}
"#;

/// The status entry of EnvoyPatch `patch` on pod `pod`, once it is in state `state`.
async fn patch_state(mesh: &TestMesh, patch: &str, state: &str) -> serde_json::Value {
    until(&format!("{patch} {state}"), Duration::from_secs(10), || {
        let found = mesh.status()["patches"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["patch"] == patch && p["pod"] == FRONTEND && p["state"] == state)
            .cloned();
        async move { Ok(found) }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patch_changes_behaviour_and_a_broken_one_is_refused_or_withdrawn_while_traffic_flows() {
    let mut mesh = TestMesh::start_prepared(
        |dir| write_manifest(dir, "patches.yaml", HEADER_PATCH),
        |options| options.controller.allow_patches = true,
    )
    .await
    .unwrap();
    patch_state(&mesh, "shop/frontend-header", "applied").await;
    let patched = |reply: &Reply| reply.headers.get("x-weft-patched").is_some();
    let reply = call(&mesh, "checkout", "/cart").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(patched(&reply), "the patch adds the header: {reply:?}");
    let other = mesh
        .call("shop/analytics-0", "GET", "checkout", "/cart")
        .await
        .unwrap();
    assert_eq!(other.status, 403);
    assert!(!patched(&other), "analytics is not selected: {other:?}");

    // Traffic from frontend all along.
    let outbound = mesh.replica(FRONTEND).outbound();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let load = tokio::spawn(async move {
        let mut answers = Vec::new();
        while !*stopped.borrow_and_update() {
            let reply = request(outbound, "GET", "/cart", &[("host", "checkout")]).await;
            answers.push(
                reply
                    .map(|r| (r.status, patched(&r)))
                    .map_err(|e| e.to_string()),
            );
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        answers
    });
    // Each phase lets at least 20 requests through before the next.
    let twenty_more = || {
        let from = sent.load(std::sync::atomic::Ordering::SeqCst);
        let sent = sent.clone();
        async move {
            until("20 more answers", Duration::from_secs(10), move || {
                let done = sent.load(std::sync::atomic::Ordering::SeqCst) >= from + 20;
                async move { holds(done) }
            })
            .await
            .unwrap();
        }
    };
    twenty_more().await;

    mesh.write_manifest("invalid.yaml", INVALID_PATCH).unwrap();
    let refused = patch_state(&mesh, "shop/invalid", "refused").await;
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(
            "operations[0] (add /virtual_hosts/0/no_such_field): the patched RouteConfiguration is not valid"
        ),
        "{refused}"
    );
    assert_eq!(refused["field"], "spec.patches[0]");
    twenty_more().await;

    let nacks_before = nacks(&mesh);
    mesh.write_manifest("nacked.yaml", NACKED_PATCH).unwrap();
    let withdrawn = patch_state(&mesh, "shop/pseudo-header", "withdrawn").await;
    let reason = withdrawn["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("Envoy refused it:") && reason.contains("may not be modified"),
        "{withdrawn}"
    );
    assert_eq!(
        nacks(&mesh),
        nacks_before + 1,
        "one refusal, then the unpatched configuration"
    );
    // Withdrawn for frontend, which is back in sync with the header patch still applied.
    until("frontend in sync", Duration::from_secs(10), || {
        let in_sync = mesh.pod_status(FRONTEND)["in_sync"] == true;
        async move { holds(in_sync) }
    })
    .await
    .unwrap();
    patch_state(&mesh, "shop/frontend-header", "applied").await;
    let reply = call(&mesh, "checkout", "/cart").await;
    assert!(patched(&reply), "{reply:?}");
    twenty_more().await;

    stop.send(true).unwrap();
    let answers = load.await.unwrap();
    assert!(answers.len() >= 60, "{} answers", answers.len());
    let wrong: Vec<_> = answers
        .iter()
        .filter(|answer| **answer != Ok((200, true)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {}: {wrong:?}",
        wrong.len(),
        answers.len()
    );
    eprintln!(
        "{} requests during the broken patches, all 200 and patched",
        answers.len()
    );
    mesh.stop().await;
}

/// How many configurations frontend's proxy refused.
fn nacks(mesh: &TestMesh) -> u64 {
    mesh.pod_status(FRONTEND)["proxy"]["types"]
        .as_object()
        .map(|types| types.values().filter_map(|t| t["nacks"].as_u64()).sum())
        .unwrap_or_default()
}
