//! Smoke tests: a real Envoy loads the real `weft.wasm`, requests pass through it, and a bad
//! plugin configuration is refused with nothing reaching the upstream.

use weft_e2e::bootstrap::{
    LdsFile, bootstrap, cluster, configuration, http_listener, weft_http_filter,
    weft_http_filter_with,
};
use weft_e2e::envoy::Envoy;
use weft_e2e::upstream::HttpUpstream;
use weft_e2e::{client, paths};
use weft_envoy_config::filters::Configuration;
use weft_policy::metrics::{DURATION, REQUESTS};

/// A plugin with only the metrics feature, inbound, knowing no services: every request is
/// counted on the edge from `unknown` (plaintext, no certificate) to `unknown`.
const METRICS_ONLY: &str =
    r#"{"version": 1, "metrics": {"direction": "inbound", "trust_domain": "cluster.local"}}"#;

/// Envoy's count of listener updates it refused.
const LDS_REJECTED: &str = "listener_manager.lds.update_rejected";

fn weft_proxy(upstream: &HttpUpstream, plugin_configuration: &str) -> serde_json::Value {
    weft_proxy_with(upstream, configuration(plugin_configuration))
}

fn weft_proxy_with(upstream: &HttpUpstream, configuration: Configuration) -> serde_json::Value {
    let module = paths::weft_wasm().expect("weft.wasm is built");
    bootstrap(
        vec![http_listener(
            "ingress",
            vec![weft_http_filter_with(&module, configuration)],
            "app",
        )],
        vec![cluster("app", upstream.addr())],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_loads_weft_wasm_and_requests_pass_through_it() {
    let upstream = HttpUpstream::start("app").await.unwrap();
    let envoy = Envoy::start(&weft_proxy(&upstream, METRICS_ONLY))
        .await
        .unwrap();
    let configured = envoy
        .wait_for_log(
            "bytes of compiled bundle (plugin configuration version 1; access off; splits 0; metrics inbound)",
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        configured.contains("wasm log weft")
            && configured.contains("configured as the HTTP filter in"),
        "{configured}"
    );
    let before = envoy.prometheus().await.unwrap();
    assert_eq!(before.counter(REQUESTS, &[]), 0.0);

    let ingress = envoy.listener("ingress").await.unwrap();
    for path in ["/hello", "/hello/again?x=1"] {
        let reply = client::get(ingress, path).await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, format!("upstream app: GET {path}\n"));
    }

    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Two requests reached the upstream, and weft counted both: they went through the filter.
    let edge = [
        ("direction", "inbound"),
        ("source_namespace", "unknown"),
        ("destination_service", "unknown"),
    ];
    let after = envoy
        .prometheus_when(|m| m.histogram_count(DURATION, &edge) >= 2.0)
        .await
        .unwrap();
    let success = [edge.as_slice(), &[("outcome", "success")]].concat();
    assert_eq!(after.counter(REQUESTS, &success), 2.0);
    assert_eq!(after.counter(REQUESTS, &edge), 2.0);
    assert_eq!(after.histogram_count(DURATION, &edge), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_plugin_configuration_is_refused_and_nothing_reaches_the_upstream() {
    let whole = configuration(r#"{"version": 1, "access": {"trust_domain": "cluster.local", "sources": {}, "grants": []}}"#).0;
    let mut other_version = b"WEFT\x050.0.9".to_vec();
    other_version.extend_from_slice(&whole[4 + 1 + weft_policy::wire::WEFT_VERSION.len()..]);
    let cases: [(Configuration, &str); 6] = [
        (
            // The JSON document itself: weft.wasm reads only its compiled bundle (strictness
            // of the document is `weft compile`'s and `weft bundle`'s, tested there).
            Configuration(br#"{"version": 1, "acess": {}}"#.to_vec()),
            "field `(root)`: this is a JSON document, and weft.wasm reads the compiled bundle",
        ),
        (
            Configuration(Vec::new()),
            "plugin configuration: none given",
        ),
        (
            Configuration(whole[..whole.len() - 2].to_vec()),
            "the bundle ends early",
        ),
        (
            Configuration(other_version),
            "the bundle was compiled by weft 0.0.9, and this is weft",
        ),
        (
            configuration(
                r#"{"access": {"trust_domain": "cluster.local", "sources": {"spiffe://cluster.local/ns/a/sa/b": [3]}, "grants": []}}"#,
            ),
            "field `access.sources.spiffe://cluster.local/ns/a/sa/b`: index 3 is out of range; there are 0 grants",
        ),
        (
            // With access policy beside splits, an error anywhere refuses: access fails closed.
            configuration(
                r#"{"splits": [{"traffic_split": "a/b", "service": "b.a", "hosts": ["b"], "backends": [], "sticky": {"cookie": ""}}], "access": {"trust_domain": "cluster.local", "sources": {}, "grants": []}}"#,
            ),
            "field `splits[0].sticky.cookie`: \"\" is not a valid cookie name",
        ),
    ];
    let upstream = HttpUpstream::start("app").await.unwrap();
    for (configuration, reason) in cases {
        let (code, log) = Envoy::expect_exit(&weft_proxy_with(&upstream, configuration.clone()))
            .await
            .unwrap();
        assert_ne!(code, Some(0), "Envoy accepted {configuration:?}\n{log}");
        let line = log
            .lines()
            .find(|line| line.contains("wasm log weft") && line.contains("refuses to start"))
            .unwrap_or_else(|| panic!("no refusal line for {configuration:?}\n{log}"));
        assert!(
            line.contains(reason),
            "for {configuration:?} expected {reason:?} in\n{line}"
        );
        assert!(
            log.contains("Unable to create Wasm plugin weft"),
            "Envoy did not refuse the plugin for {configuration:?}\n{log}"
        );
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_update_with_an_invalid_plugin_configuration_is_rejected_and_the_last_good_one_keeps_serving()
 {
    let upstream = HttpUpstream::start("app").await.unwrap();
    let module = paths::weft_wasm().unwrap();
    let weft_listener = |name: &str, configuration: &str| {
        http_listener(name, vec![weft_http_filter(&module, configuration)], "app")
    };
    let mut lds = LdsFile::new(vec![weft_listener("ingress", METRICS_ONLY)]).unwrap();
    let envoy = Envoy::start(&lds.bootstrap(vec![cluster("app", upstream.addr())]))
        .await
        .unwrap();
    let ingress = envoy.wait_for_listener("ingress").await.unwrap();
    assert_eq!(client::get(ingress, "/before").await.unwrap().status, 200);

    // The same listener with a configuration weft.wasm refuses (a JSON document where the
    // compiled bundle belongs): Envoy must refuse the update...
    lds.publish(vec![weft_listener(
        "ingress",
        r#"{"version": 1, "acess": {}}"#,
    )])
    .unwrap();
    envoy.wait_for_stat(LDS_REJECTED, 1).await.unwrap();
    envoy
        .wait_for_log("this is a JSON document", std::time::Duration::from_secs(5))
        .await
        .unwrap();
    // ...and the last good configuration keeps serving on the same address.
    let reply = client::get(ingress, "/after").await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "upstream app: GET /after\n");

    // A new listener whose plugin cannot be configured is never opened.
    lds.publish(vec![
        weft_listener("ingress", METRICS_ONLY),
        weft_listener("canary", r#"{"version": 2}"#),
    ])
    .unwrap();
    envoy.wait_for_stat(LDS_REJECTED, 2).await.unwrap();
    assert!(
        envoy.listener("canary").await.is_err(),
        "the canary listener was opened"
    );
    // Both requests went through the first, good plugin.
    let metrics = envoy.prometheus().await.unwrap();
    assert_eq!(metrics.counter(REQUESTS, &[("outcome", "success")]), 2.0);
    let paths: Vec<_> = upstream.seen().into_iter().map(|seen| seen.path).collect();
    assert_eq!(paths, ["/before", "/after"]);
}
