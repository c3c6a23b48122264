//! SMI TrafficSplit routing inside a real Envoy: the real weft.wasm on outbound (client side)
//! listeners compiled for shop/frontend, a `cluster_header` route reading the cluster weft
//! chose, and real upstreams, one per cluster, that say who they are and record what reached
//! them. Counts are exact because retries are off; proportions are judged by a chi-square test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use weft_e2e::bootstrap::{
    self, LdsFile, ROUTE_HEADER, bootstrap, cluster, http_listener_with_hosts, route_to,
    split_route, virtual_host, weft_http_filter_with,
};
use weft_e2e::client::Session;
use weft_e2e::envoy::Envoy;
use weft_e2e::upstream::HttpUpstream;
use weft_e2e::{paths, policy};
use weft_envoy_config::filters::Configuration;
use weft_policy::bundle::StickyKey;
use weft_policy::metrics::{DURATION, REQUESTS};

/// The client workload whose outbound listener is tested.
const CLIENT: &str = "shop/frontend";
/// Clusters, named as weft names services (`name.namespace`); each has its own upstream.
const CLUSTERS: [&str; 7] = [
    "checkout.shop",
    "checkout-v1.shop",
    "checkout-v2.shop",
    "checkout-v3.shop",
    "cart.shop",
    "cart-v2.shop",
    "other",
];
const CHECKOUT_BACKENDS: [&str; 3] = ["checkout-v1.shop", "checkout-v2.shop", "checkout-v3.shop"];
/// Chi-square critical values at p = 0.001 for 1 and 2 degrees of freedom.
const CHI_SQUARE_CRITICAL: [f64; 2] = [10.828, 13.816];
const LDS_UPDATED: &str = "listener_manager.lds.update_success";

/// The outbound plugin configuration of shop/frontend with the checkout split weighted
/// `weights` (v1, v2, v3), as JSON.
fn outbound(weights: [u64; 3]) -> weft_policy::PluginConfig {
    let manifests = policy::fixture(
        "split",
        &[
            ("V1_WEIGHT", weights[0].to_string()),
            ("V2_WEIGHT", weights[1].to_string()),
            ("V3_WEIGHT", weights[2].to_string()),
        ],
    )
    .unwrap();
    policy::outbound(&manifests, CLIENT).unwrap()
}

fn json(weights: [u64; 3]) -> String {
    policy::json(&outbound(weights))
}

/// The domains a virtual host of service `name` in namespace `shop` lists (without ports).
fn service_domains(name: &str) -> Vec<String> {
    vec![
        name.to_owned(),
        format!("{name}.shop"),
        format!("{name}.shop.svc"),
        format!("{name}.shop.svc.cluster.local"),
    ]
}

/// An outbound listener named `name` running weft with `configuration`: requests for the root
/// services go to the root clusters by Envoy's own routes unless weft names a cluster in
/// the route header; any other host goes to `other`.
fn outbound_listener(module: &std::path::Path, name: &str, configuration: &str) -> Value {
    outbound_listener_with(module, name, bootstrap::configuration(configuration))
}

/// [`outbound_listener`] with the plugin configuration as given.
fn outbound_listener_with(
    module: &std::path::Path,
    name: &str,
    configuration: Configuration,
) -> Value {
    let root_host = |service: &str| {
        let domains = service_domains(service);
        let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
        virtual_host(
            service,
            &domains,
            vec![split_route(), route_to(&format!("{service}.shop"))],
        )
    };
    http_listener_with_hosts(
        name,
        vec![weft_http_filter_with(module, configuration)],
        vec![
            root_host("checkout"),
            root_host("cart"),
            virtual_host("others", &["*"], vec![split_route(), route_to("other")]),
        ],
    )
}

struct Mesh {
    envoy: Envoy,
    upstreams: BTreeMap<&'static str, HttpUpstream>,
}

impl Mesh {
    /// One upstream per cluster and one Envoy with an outbound listener per `(name, plugin
    /// configuration)`.
    async fn start(listeners: &[(&str, String)]) -> Self {
        let (upstreams, clusters) = Self::upstreams().await;
        let module = paths::weft_wasm().unwrap();
        let listeners = listeners
            .iter()
            .map(|(name, configuration)| outbound_listener(&module, name, configuration))
            .collect();
        let envoy = Envoy::start(&bootstrap(listeners, clusters)).await.unwrap();
        Self { envoy, upstreams }
    }

    async fn upstreams() -> (BTreeMap<&'static str, HttpUpstream>, Vec<Value>) {
        let mut upstreams = BTreeMap::new();
        let mut clusters = Vec::new();
        for name in CLUSTERS {
            let upstream = HttpUpstream::start(name).await.unwrap();
            clusters.push(cluster(name, upstream.addr()));
            upstreams.insert(name, upstream);
        }
        (upstreams, clusters)
    }

    async fn listener(&self, name: &str) -> Session {
        Session::keep_alive(self.envoy.listener(name).await.unwrap())
    }

    /// How many requests each upstream received.
    fn received(&self) -> BTreeMap<&'static str, usize> {
        self.upstreams
            .iter()
            .map(|(name, upstream)| (*name, upstream.seen().len()))
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

/// Sends `n` requests for `host` (with `headers`) and counts which upstream answered each.
async fn spread(
    session: &Session,
    host: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> BTreeMap<String, usize> {
    let mut headers = headers.to_vec();
    headers.push(("host", host));
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let reply = session.request("GET", "/", &headers).await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        *counts.entry(answered_by(&reply)).or_insert(0) += 1;
    }
    counts
}

fn answered_by(reply: &weft_e2e::client::Reply) -> String {
    reply
        .headers
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(no upstream)")
        .to_owned()
}

async fn one(session: &Session, host: &str, headers: &[(&str, &str)]) -> String {
    spread(session, host, headers, 1)
        .await
        .into_keys()
        .next()
        .unwrap_or_default()
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Pearson's chi-square statistic of `observed` against `weights` over `backends`; a backend
/// of weight 0 must have received nothing.
fn chi_square(observed: &BTreeMap<String, usize>, backends: &[&str], weights: &[u64]) -> f64 {
    let n: usize = observed.values().sum();
    let total: u64 = weights.iter().sum();
    let mut statistic = 0.0;
    for (backend, weight) in backends.iter().zip(weights) {
        let seen = observed.get(*backend).copied().unwrap_or(0);
        if *weight == 0 {
            assert_eq!(
                seen, 0,
                "{backend} has weight 0 but got requests: {observed:?}"
            );
            continue;
        }
        let expected = n as f64 * *weight as f64 / total as f64;
        statistic += (seen as f64 - expected).powi(2) / expected;
    }
    let unexpected: Vec<_> = observed
        .keys()
        .filter(|k| !backends.contains(&k.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "requests went elsewhere: {observed:?}"
    );
    statistic
}

fn assert_proportions(observed: &BTreeMap<String, usize>, weights: &[u64]) {
    let degrees = weights.iter().filter(|w| **w > 0).count() - 1;
    let statistic = chi_square(observed, &CHECKOUT_BACKENDS, weights);
    let critical = CHI_SQUARE_CRITICAL[degrees - 1];
    assert!(
        statistic < critical,
        "weights {weights:?}: chi-square {statistic:.2} >= {critical} ({degrees} df, p = 0.001): {observed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_1_0_send_every_request_to_the_first_backend_and_0_1_to_the_second() {
    let mesh = Mesh::start(&[("first", json([1, 0, 0])), ("second", json([0, 1, 0]))]).await;
    let first = spread(&mesh.listener("first").await, "checkout.shop", &[], 200).await;
    assert_eq!(first, counts(&[("checkout-v1.shop", 200)]));
    let second = spread(&mesh.listener("second").await, "checkout.shop", &[], 200).await;
    assert_eq!(second, counts(&[("checkout-v2.shop", 200)]));
    // The upstreams agree, and the route header never left Envoy.
    assert_eq!(
        mesh.received(),
        [("checkout-v1.shop", 200), ("checkout-v2.shop", 200)].into()
    );
    for upstream in mesh.upstreams.values() {
        for seen in upstream.seen() {
            assert!(
                seen.headers.iter().all(|(name, _)| name != ROUTE_HEADER),
                "{ROUTE_HEADER} reached {}: {:?}",
                upstream.name(),
                seen.headers
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_choices_hold_under_a_chi_square_test_at_p_0_001() {
    let cases: [(&str, [u64; 3]); 3] = [
        ("w75", [75, 25, 0]),
        ("w1000", [1000, 500, 0]),
        ("w60", [60, 30, 10]),
    ];
    let listeners: Vec<(&str, String)> = cases.iter().map(|(n, w)| (*n, json(*w))).collect();
    let mesh = Mesh::start(&listeners).await;
    for (name, weights) in cases {
        let observed = spread(&mesh.listener(name).await, "checkout.shop", &[], 2000).await;
        assert_proportions(&observed, &weights);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_form_of_the_root_service_is_split_and_other_hosts_pass_untouched() {
    let mesh = Mesh::start(&[("first", json([1, 0, 0]))]).await;
    let session = mesh.listener("first").await;
    for host in [
        "checkout",
        "checkout.shop",
        "checkout.shop.svc",
        "checkout.shop.svc.cluster.local",
        "checkout.",
        "checkout.shop.svc.cluster.local.",
        "checkout:80",
        "checkout.shop:8080",
        "checkout.shop.svc.cluster.local.:80",
        "Checkout.Shop.SVC",
    ] {
        // Envoy's own routes would send these to checkout.shop (or, with a port, to `other`).
        assert_eq!(one(&session, host, &[]).await, "checkout-v1.shop", "{host}");
    }
    for host in ["example.com", "checkout.web", "checkout-v2", "api.shop:80"] {
        assert_eq!(one(&session, host, &[]).await, "other", "{host}");
    }
    // An unknown host passes untouched: what the client sent is what the upstream saw.
    let before = mesh.upstreams["other"].seen().len();
    one(&session, "example.com", &[("x-trace", "abc")]).await;
    let seen = &mesh.upstreams["other"].seen()[before];
    let mut names: Vec<&str> = seen.headers.iter().map(|(n, _)| n.as_str()).collect();
    names
        .retain(|n| !n.starts_with("x-envoy") && *n != "x-forwarded-proto" && *n != "x-request-id");
    names.sort_unstable();
    assert_eq!(names, ["host", "x-trace"], "{:?}", seen.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_choose_its_own_cluster_with_the_route_header() {
    let mesh = Mesh::start(&[("first", json([1, 0, 0]))]).await;
    let session = mesh.listener("first").await;
    let spoofed = [(ROUTE_HEADER, "checkout-v3.shop")];
    // For a root service weft's choice replaces it; for any other host it is removed.
    assert_eq!(
        spread(&session, "checkout.shop", &spoofed, 50).await,
        counts(&[("checkout-v1.shop", 50)])
    );
    assert_eq!(
        spread(&session, "example.com", &spoofed, 50).await,
        counts(&[("other", 50)])
    );
    assert!(mesh.upstreams["checkout-v3.shop"].seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_split_sends_only_matching_requests_to_the_backends() {
    let mesh = Mesh::start(&[("ab", json([1, 0, 0]))]).await;
    let session = mesh.listener("ab").await;
    assert_eq!(
        spread(&session, "cart.shop", &[("x-beta", "yes")], 20).await,
        counts(&[("cart-v2.shop", 20)])
    );
    for headers in [
        vec![],
        vec![("x-beta", "no")],
        vec![("x-beta", "yes please")],
    ] {
        assert_eq!(
            spread(&session, "cart", &headers, 20).await,
            counts(&[("cart.shop", 20)]),
            "{headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_keeps_each_user_on_one_backend() {
    let mut config = outbound([1, 1, 1]);
    for table in &mut config.splits {
        table.sticky = Some(StickyKey::Cookie("user".to_owned()));
    }
    let mesh = Mesh::start(&[("sticky", policy::json(&config))]).await;
    let session = mesh.listener("sticky").await;
    let mut users_per_backend = BTreeMap::new();
    for user in 0..60 {
        let cookie = format!("theme=dark; user=u{user}");
        let chosen = spread(&session, "checkout.shop", &[("cookie", &cookie)], 5).await;
        assert_eq!(chosen.len(), 1, "user u{user} moved: {chosen:?}");
        let backend = chosen.into_keys().next().unwrap_or_default();
        *users_per_backend.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(
        users_per_backend.len(),
        3,
        "users spread over every backend: {users_per_backend:?}"
    );
    // Without the cookie every request is chosen anew.
    let anonymous = spread(&session, "checkout.shop", &[], 300).await;
    assert_eq!(anonymous.len(), 3, "{anonymous:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_backend_left_the_root_service_gets_the_requests_and_the_log_says_why() {
    // weft check refuses weights that are all 0; a plugin configuration can still come with no
    // backend left (every backend without a port of the root service, or written by hand).
    let mut dark = outbound([1, 0, 0]);
    for table in &mut dark.splits {
        table.backends.clear();
    }
    let mesh = Mesh::start(&[("dark", policy::json(&dark))]).await;
    let session = mesh.listener("dark").await;
    assert_eq!(
        spread(&session, "checkout.shop", &[], 20).await,
        counts(&[("checkout.shop", 20)])
    );
    mesh.envoy
        .wait_for_log(
            "TrafficSplit shop/checkout: no backend has a weight above 0 and a port of the root service, so every request for checkout.shop goes to the root service",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_sends_every_request_to_its_root_service_and_says_so() {
    let mut broken: Value = serde_json::from_str(&json([1, 0, 0])).unwrap();
    broken["splits"][0]["matches"] = serde_json::json!([7]);
    let mesh = Mesh::start(&[("broken", broken.to_string())]).await;
    let session = mesh.listener("broken").await;
    mesh.envoy
        .wait_for_log(
            "field `splits[0].matches[0]`: index 7 is out of range; there are 1 http_matches; split routing falls back",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        spread(&session, "checkout.shop", &[], 20).await,
        counts(&[("checkout.shop", 20)])
    );
    // Even now a route header from the client is removed.
    assert_eq!(
        spread(
            &session,
            "checkout.shop",
            &[(ROUTE_HEADER, "checkout-v2.shop")],
            20
        )
        .await,
        counts(&[("checkout.shop", 20)])
    );
    // The metrics section was valid on its own, so the traffic stays visible meanwhile.
    let to_root = [
        ("destination_service", "checkout"),
        ("destination_backend", "checkout"),
        ("outcome", "success"),
    ];
    let metrics = mesh
        .envoy
        .prometheus_when(|m| m.histogram_count(DURATION, &to_root[..2]) >= 40.0)
        .await
        .unwrap();
    assert_eq!(metrics.counter(REQUESTS, &to_root), 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_that_might_hold_access_policy_is_refused() {
    let module = paths::weft_wasm().unwrap();
    // A bundle that does not read whole: what follows the splits might have been access
    // policy, so it is refused, not fallen back from.
    let whole = bootstrap::configuration(&json([1, 0, 0])).0;
    let broken = Configuration(whole[..whole.len() - 1].to_vec());
    let listener = outbound_listener_with(&module, "broken", broken);
    let clusters = CLUSTERS
        .iter()
        .map(|name| cluster(name, SocketAddr::from(([127, 0, 0, 1], 9))))
        .collect();
    let (status, log) = Envoy::expect_exit(&bootstrap(vec![listener], clusters))
        .await
        .unwrap();
    assert_ne!(status, Some(0), "{log}");
    assert!(
        log.contains("the bundle ends early") && log.contains("the plugin refuses to start"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_goes_90_10_then_50_50_then_0_100_by_changing_only_the_traffic_split() {
    let (upstreams, clusters) = Mesh::upstreams().await;
    let module = paths::weft_wasm().unwrap();
    let listener = |weights| vec![outbound_listener(&module, "outbound", &json(weights))];
    let mut lds = LdsFile::new(listener([90, 10, 0])).unwrap();
    let envoy = Envoy::start(&lds.bootstrap(clusters)).await.unwrap();
    let address = envoy.wait_for_listener("outbound").await.unwrap();
    let mesh = Mesh { envoy, upstreams };

    let observed = spread(&Session::keep_alive(address), "checkout", &[], 2000).await;
    assert_proportions(&observed, &[90, 10, 0]);

    for (step, weights) in [(2, [50, 50, 0]), (3, [0, 100, 0])] {
        lds.publish(listener(weights)).unwrap();
        mesh.envoy.wait_for_stat(LDS_UPDATED, step).await.unwrap();
        wait_until_serving(&mesh.envoy, address).await;
        // New connections reach the new listener; the old one drains.
        let session = Session::keep_alive(address);
        let observed = spread(&session, "checkout", &[], 2000).await;
        if weights[0] == 0 {
            assert_eq!(observed, counts(&[("checkout-v2.shop", 2000)]));
        } else {
            assert_proportions(&observed, &weights);
        }
    }
}

/// Waits until the updated listener has replaced the old one (none warming or draining).
async fn wait_until_serving(envoy: &Envoy, address: SocketAddr) {
    weft_e2e::poll::until("the updated listener", Duration::from_secs(10), || async {
        let warming = envoy
            .stat("listener_manager.total_listeners_warming")
            .await?;
        let active = envoy.listener("outbound").await.ok();
        Ok((warming == Some(0) && active == Some(address)).then_some(()))
    })
    .await
    .unwrap();
}
