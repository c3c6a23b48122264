//! Per-edge golden metrics from a real Envoy running the real weft.wasm: known numbers of
//! requests with known outcomes, from callers with several mTLS identities (inbound) and
//! through a TrafficSplit (outbound), then `/stats/prometheus` is scraped and every count is
//! asserted exactly, per edge. TCP connections likewise, through the network filter.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use weft_e2e::bootstrap::{
    ServerTls, bootstrap, cluster, free_port, http_listener, http_listener_with_hosts, on_port,
    route_to, split_route, tcp_listener_with, virtual_host, weft_http_filter, weft_network_filter,
    with_tls,
};
use weft_e2e::client;
use weft_e2e::envoy::Envoy;
use weft_e2e::pki::Pki;
use weft_e2e::prometheus::Metrics;
use weft_e2e::tls::TlsClient;
use weft_e2e::upstream::{HttpUpstream, TcpEcho};
use weft_e2e::{paths, policy, poll};
use weft_policy::bundle::AccessMode;
use weft_policy::metrics::{
    DURATION, REQUESTS, TCP_CLOSED, TCP_DENIED, TCP_DURATION, TCP_OPENED, TCP_RECEIVED_BYTES,
    TCP_SENT_BYTES,
};

/// The Host every inbound request names: shop/api's Service.
const API: &str = "api.shop";

/// The labels of the edge from `source` (namespace/service account) to `service` in `shop`,
/// served by `backend`, on the `direction` side.
fn edge<'a>(
    direction: &'a str,
    source: (&'a str, &'a str),
    service: &'a str,
    backend: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let namespace = if service == "unknown" {
        "unknown"
    } else {
        "shop"
    };
    vec![
        ("direction", direction),
        ("source_namespace", source.0),
        ("source_service_account", source.1),
        ("source_workload", source.1),
        ("destination_namespace", namespace),
        ("destination_service", service),
        ("destination_backend", backend),
    ]
}

/// `edge` with a response code class and an outcome.
fn response<'a>(
    edge: &[(&'a str, &'a str)],
    class: &'a str,
    outcome: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut labels = edge.to_vec();
    labels.extend([("response_code_class", class), ("outcome", outcome)]);
    labels
}

/// An edge's labels, a response code class, an outcome, and how many requests had them.
type Expected<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str, f64);

/// Asserts that the scrape holds exactly `expected` request counts (per edge, code class and
/// outcome; nothing else) and, per edge, a duration histogram with as many observations.
fn assert_counted_exactly(metrics: &Metrics, expected: &[Expected<'_>]) {
    let mut per_edge: BTreeMap<Vec<(&str, &str)>, f64> = BTreeMap::new();
    for (edge, class, outcome, count) in expected {
        let labels = response(edge, class, outcome);
        assert_eq!(
            metrics.counter(REQUESTS, &labels),
            *count,
            "{REQUESTS}{labels:?}"
        );
        *per_edge.entry(edge.clone()).or_default() += count;
    }
    assert_eq!(
        metrics.samples(REQUESTS, &[]).count(),
        expected.len(),
        "a request counted on an edge, class or outcome the test did not expect"
    );
    for (edge, count) in &per_edge {
        assert_eq!(
            metrics.histogram_count(DURATION, edge),
            *count,
            "{DURATION}{edge:?}"
        );
    }
    assert_eq!(metrics.samples(DURATION, &[]).count(), per_edge.len());
}

/// Scrapes `envoy` until every request of `expected` has been observed, then asserts that the
/// scrape holds exactly `expected` ([`assert_counted_exactly`]).
async fn assert_scraped_exactly(envoy: &Envoy, expected: &[Expected<'_>]) {
    let total: f64 = expected.iter().map(|(.., count)| count).sum();
    let metrics = envoy
        .prometheus_when(|m| m.histogram_count(DURATION, &[]) >= total)
        .await
        .unwrap();
    assert_counted_exactly(&metrics, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_requests_are_counted_exactly_per_verified_caller_with_their_outcomes() {
    let pki = Pki::new().unwrap();
    let upstream = HttpUpstream::start("api").await.unwrap();
    let manifests = policy::fixture("metrics", &[]).unwrap();
    let mut config = policy::inbound(&manifests, "shop/api", AccessMode::Enforce).unwrap();
    // As `weft compile --service api` sets it: the Service shop/api serves.
    config.metrics.as_mut().unwrap().service = Some(API.to_owned());
    let server = pki.server("shop/api").unwrap();
    let tls = ServerTls {
        cert_file: server.cert_file.clone(),
        key_file: server.key_file.clone(),
        ca_file: pki.ca_file(),
        require_client_certificate: true,
    };
    let module = paths::weft_wasm().unwrap();
    let listener = with_tls(
        http_listener(
            "inbound",
            vec![weft_http_filter(&module, &policy::json(&config))],
            "api",
        ),
        &tls,
    );
    let envoy = Envoy::start(&bootstrap(
        vec![listener],
        vec![cluster("api", upstream.addr())],
    ))
    .await
    .unwrap();
    let inbound = envoy.listener("inbound").await.unwrap();
    let caller = |identity: &str| {
        TlsClient::new(pki.ca_pem(), Some(&pki.workload(identity).unwrap())).unwrap()
    };
    let (frontend, client, stranger) = (
        caller("shop/frontend"),
        caller("web/client"),
        caller("shop/stranger"),
    );
    let get_from =
        |caller: &TlsClient, host: &'static str, path: &'static str, times: usize, status: u16| {
            let caller = caller.clone();
            async move {
                for _ in 0..times {
                    let reply = caller
                        .request(inbound, "GET", path, &[("host", host)])
                        .await
                        .unwrap();
                    assert_eq!(reply.status, status, "GET {path}: {reply:?}");
                }
            }
        };
    let get = |caller: &TlsClient, path: &'static str, times: usize, status: u16| {
        get_from(caller, API, path, times, status)
    };
    get(&frontend, "/orders", 5, 200).await;
    // A caller naming another service in Host still reaches, and counts against, shop/api.
    get_from(&frontend, "checkout.shop", "/orders", 2, 200).await;
    get(&frontend, "/status/503", 3, 503).await;
    // The upstream closes the connection without an answer; Envoy replies 503 itself.
    get(&frontend, "/reset", 2, 503).await;
    get(&client, "/orders", 4, 200).await;
    for (path, grpc_status, times) in [("/grpc/13", "13", 2), ("/grpc/0", "0", 1)] {
        for _ in 0..times {
            let reply = client.grpc_to(inbound, API, path).await.unwrap();
            assert_eq!(reply.grpc_status.as_deref(), Some(grpc_status), "{reply:?}");
        }
    }
    // No TrafficTarget lets shop/stranger in: 403, a success (the server answered as designed).
    get(&stranger, "/orders", 2, 403).await;
    // A caller that gives up while the upstream takes its time: no response at all.
    frontend
        .abandon(inbound, "/delay/3000", &[("host", API)], async {
            poll::until(
                "the slow request to reach the upstream",
                tls_deadline(),
                || async {
                    Ok(upstream
                        .seen()
                        .iter()
                        .any(|seen| seen.path == "/delay/3000")
                        .then_some(()))
                },
            )
            .await
            .unwrap();
        })
        .await
        .unwrap();

    let from_frontend = edge("inbound", ("shop", "frontend"), "api", "api");
    let from_client = edge("inbound", ("web", "client"), "api", "api");
    let from_stranger = edge("inbound", ("shop", "stranger"), "api", "api");
    let expected = [
        (from_frontend.clone(), "2xx", "success", 7.0),
        (from_frontend.clone(), "5xx", "failure", 5.0),
        (from_frontend.clone(), "none", "failure", 1.0),
        (from_client.clone(), "2xx", "success", 5.0),
        (from_client.clone(), "2xx", "failure", 2.0),
        (from_stranger.clone(), "4xx", "success", 2.0),
    ];
    assert_scraped_exactly(&envoy, &expected).await;
}

fn tls_deadline() -> std::time::Duration {
    weft_e2e::tls::IO_DEADLINE
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_requests_are_counted_from_the_workload_to_the_service_and_the_backend_a_split_chose()
 {
    let manifests = policy::fixture("metrics", &[]).unwrap();
    let config = policy::outbound(&manifests, "shop/frontend").unwrap();
    let mut upstreams = BTreeMap::new();
    let mut clusters = Vec::new();
    for name in ["checkout.shop", "checkout-v2.shop", "api.shop"] {
        let upstream = HttpUpstream::start(name).await.unwrap();
        clusters.push(cluster(name, upstream.addr()));
        upstreams.insert(name, upstream);
    }
    let domains = |name: &str| {
        [
            name.to_owned(),
            format!("{name}.shop"),
            format!("{name}.shop.svc"),
            format!("{name}.shop.svc.cluster.local"),
        ]
    };
    let (checkout, api) = (domains("checkout"), domains("api"));
    let module = paths::weft_wasm().unwrap();
    let listener = http_listener_with_hosts(
        "outbound",
        vec![weft_http_filter(&module, &policy::json(&config))],
        vec![
            virtual_host(
                "checkout",
                &checkout.each_ref().map(String::as_str),
                vec![split_route(), route_to("checkout.shop")],
            ),
            virtual_host(
                "api",
                &api.each_ref().map(String::as_str),
                vec![route_to("api.shop")],
            ),
            // As docs/split.md says: weft's choice is followed for hosts the domains above do
            // not list (with a port, say); other hosts still reach a cluster, labelled unknown.
            virtual_host("others", &["*"], vec![split_route(), route_to("api.shop")]),
        ],
    );
    let envoy = Envoy::start(&bootstrap(vec![listener], clusters))
        .await
        .unwrap();
    let outbound: SocketAddr = envoy.listener("outbound").await.unwrap();
    let send = |host: &'static str,
                path: &'static str,
                extra: Option<(&'static str, &'static str)>,
                times: usize,
                answered_by: &'static str| async move {
        for _ in 0..times {
            let mut headers = vec![("host", host)];
            headers.extend(extra);
            let reply = client::request(outbound, "GET", path, &headers)
                .await
                .unwrap();
            assert_eq!(
                reply
                    .headers
                    .get("x-upstream")
                    .and_then(|v| v.to_str().ok()),
                Some(answered_by),
                "{host} {path}: {reply:?}"
            );
        }
    };
    send(
        "checkout",
        "/",
        Some(("x-beta", "yes")),
        5,
        "checkout-v2.shop",
    )
    .await;
    send("checkout.shop:80", "/", None, 3, "checkout.shop").await;
    send("api.shop", "/", None, 2, "api.shop").await;
    send("api.shop", "/status/500", None, 1, "api.shop").await;
    send("example.com", "/", None, 1, "api.shop").await;

    let me = ("shop", "frontend");
    let expected = [
        (
            edge("outbound", me, "checkout", "checkout-v2"),
            "2xx",
            "success",
            5.0,
        ),
        (
            edge("outbound", me, "checkout", "checkout"),
            "2xx",
            "success",
            3.0,
        ),
        (edge("outbound", me, "api", "api"), "2xx", "success", 2.0),
        (edge("outbound", me, "api", "api"), "5xx", "failure", 1.0),
        (
            edge("outbound", me, "unknown", "unknown"),
            "2xx",
            "success",
            1.0,
        ),
    ];
    assert_scraped_exactly(&envoy, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_counted_per_edge_opened_denied_and_closed_with_their_bytes() {
    let pki = Pki::new().unwrap();
    let echo = TcpEcho::start().await.unwrap();
    // The TCPRoute of the fixture names the database listener's port: shop/api may connect on
    // it, shop/batch only on another port, shop/stranger nowhere.
    let db_port = free_port().unwrap();
    let manifests = policy::fixture("access", &[("DB_PORT", db_port.to_string())]).unwrap();
    let server = pki.server("shop/db").unwrap();
    let tls = ServerTls {
        cert_file: server.cert_file.clone(),
        key_file: server.key_file.clone(),
        ca_file: pki.ca_file(),
        require_client_certificate: true,
    };
    let module = paths::weft_wasm().unwrap();
    // The second listener makes no access decision (permissive), so metrics alone read the
    // caller; it serves another Service of the namespace, to keep its edges apart.
    let listener = |name: &str, port: u16, mode, service: &str| {
        let mut config = policy::inbound(&manifests, "shop/db", mode).unwrap();
        config.metrics.as_mut().unwrap().service = Some(service.to_owned());
        let filter = weft_network_filter(&module, &policy::json(&config));
        with_tls(
            on_port(tcp_listener_with(name, vec![filter], "db"), port),
            &tls,
        )
    };
    let envoy = Envoy::start(&bootstrap(
        vec![
            listener("db", db_port, AccessMode::Enforce, "db.shop"),
            listener(
                "cache",
                free_port().unwrap(),
                AccessMode::Permissive,
                "cache.shop",
            ),
        ],
        vec![cluster("db", echo.addr())],
    ))
    .await
    .unwrap();
    let (db, cache) = (
        envoy.listener("db").await.unwrap(),
        envoy.listener("cache").await.unwrap(),
    );
    let caller = |identity: &str| {
        TlsClient::new(pki.ca_pem(), Some(&pki.workload(identity).unwrap())).unwrap()
    };
    let (api, batch, stranger) = (
        caller("shop/api"),
        caller("shop/batch"),
        caller("shop/stranger"),
    );
    let large = vec![b'x'; 100_000];
    for payload in [b"SELECT 1;".as_slice(), large.as_slice()] {
        assert_eq!(api.echo(db, payload).await.unwrap(), payload);
    }
    for denied in [&batch, &stranger, &stranger] {
        let reply = denied.echo(db, b"DROP TABLE orders;").await;
        assert!(reply.as_ref().map_or(true, Vec::is_empty), "{reply:?}");
    }
    assert_eq!(stranger.echo(cache, b"ping").await.unwrap(), b"ping");

    let tcp_edge = |source: &'static str, service: &'static str| {
        vec![
            ("direction", "inbound"),
            ("source_namespace", "shop"),
            ("source_service_account", source),
            ("source_workload", source),
            ("destination_namespace", "shop"),
            ("destination_service", service),
            ("destination_backend", service),
        ]
    };
    let (api_db, stranger_cache) = (tcp_edge("api", "db"), tcp_edge("stranger", "cache"));
    // Connections are counted closed when Envoy has closed them, which may follow the
    // client's close by a moment; histograms show up after a stats flush.
    let metrics = envoy
        .prometheus_when(|m| m.histogram_count(TCP_DURATION, &[]) >= 3.0)
        .await
        .unwrap();
    let payload_bytes = (b"SELECT 1;".len() + large.len()) as f64;
    for (family, edge, value) in [
        (TCP_OPENED, &api_db, 2.0),
        (TCP_CLOSED, &api_db, 2.0),
        (TCP_RECEIVED_BYTES, &api_db, payload_bytes),
        (TCP_SENT_BYTES, &api_db, payload_bytes),
        (TCP_OPENED, &stranger_cache, 1.0),
        (TCP_CLOSED, &stranger_cache, 1.0),
        (TCP_RECEIVED_BYTES, &stranger_cache, 4.0),
        (TCP_SENT_BYTES, &stranger_cache, 4.0),
        (TCP_DENIED, &tcp_edge("batch", "db"), 1.0),
        (TCP_DENIED, &tcp_edge("stranger", "db"), 2.0),
    ] {
        assert_eq!(metrics.counter(family, edge), value, "{family}{edge:?}");
    }
    for (family, edges) in [
        (TCP_OPENED, 2),
        (TCP_CLOSED, 2),
        (TCP_RECEIVED_BYTES, 2),
        (TCP_SENT_BYTES, 2),
        (TCP_DENIED, 2),
        (TCP_DURATION, 2),
    ] {
        assert_eq!(
            metrics.samples(family, &[]).count(),
            edges,
            "{family}: an edge the test did not expect"
        );
    }
    assert_eq!(metrics.histogram_count(TCP_DURATION, &api_db), 2.0);
    assert_eq!(metrics.histogram_count(TCP_DURATION, &stranger_cache), 1.0);
    // No HTTP metric on a TCP listener.
    assert_eq!(metrics.samples(REQUESTS, &[]).count(), 0);
}
