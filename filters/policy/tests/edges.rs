//! Edge labels of the metrics feature, from issue 6's rules: the source is the verified peer
//! (inbound) or the workload itself (outbound), destinations are the services the manifests
//! name, the backend is the split's choice, and anything else is `unknown`.

mod common;

use weft_policy::bundle::Direction;
use weft_policy::compile::Side;
use weft_policy::config::PluginConfig;
use weft_policy::engine::{Engine, EngineError};
use weft_policy::metrics::{EDGE_LABELS, MetricsTable, Source, UNKNOWN};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: checkout, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: canary, namespace: shop}
spec:
  service: checkout
  backends: [{service: checkout-v1, weight: 90}, {service: checkout-v2, weight: 10}]
"#;

fn config(identity: &str, side: Side) -> PluginConfig {
    common::compiled(identity, side, MANIFESTS)
}

fn table(engine: &Engine) -> &MetricsTable {
    engine.metrics().expect("weft compile enables metrics")
}

/// The label values of an edge, in [`EDGE_LABELS`] order.
fn labels(
    table: &MetricsTable,
    source: Source<'_>,
    host: &str,
    backend: Option<&str>,
) -> Vec<String> {
    let destination = table.service_for_host(host);
    let backend = backend.and_then(|name| table.service_named(name));
    let labels = table.edge_labels(&source, destination, backend);
    assert_eq!(labels.map(|(name, _)| name), EDGE_LABELS);
    labels
        .iter()
        .map(|(_, value)| (*value).to_owned())
        .collect()
}

#[test]
fn weft_compile_enables_metrics_on_both_sides_with_every_service_the_manifests_name() {
    for (side, direction) in [
        (Side::Inbound, Direction::Inbound),
        (Side::Outbound, Direction::Outbound),
    ] {
        let metrics = config("shop/frontend", side).metrics.unwrap();
        assert_eq!(metrics.direction, direction);
        assert_eq!(metrics.trust_domain, "cluster.local");
        let services: Vec<&str> = metrics
            .services
            .iter()
            .map(|s| s.service.as_str())
            .collect();
        assert_eq!(
            services,
            [
                "api.shop",
                "checkout-v1.shop",
                "checkout-v2.shop",
                "checkout.shop"
            ]
        );
        assert_eq!(
            metrics.services[0].hosts,
            [
                "api",
                "api.shop",
                "api.shop.svc",
                "api.shop.svc.cluster.local"
            ]
        );
    }
    let elsewhere = config("web/client", Side::Outbound).metrics.unwrap();
    assert_eq!(
        elsewhere.services[0].hosts[0], "api.shop",
        "a short name addresses a service only from its own namespace"
    );
}

#[test]
fn outbound_edges_run_from_the_workload_to_the_addressed_service_and_the_chosen_backend() {
    let engine = Engine::new(&config("shop/frontend", Side::Outbound)).unwrap();
    let table = table(&engine);
    let source = table.source(Some("spiffe://cluster.local/ns/other/sa/ignored"));
    assert_eq!(
        source,
        Source::Local,
        "outbound, the peer is not the source"
    );
    assert_eq!(
        labels(
            table,
            source,
            "checkout.shop.svc.cluster.local.:80",
            Some("checkout-v2.shop")
        ),
        [
            "outbound",
            "shop",
            "frontend",
            "frontend",
            "shop",
            "checkout",
            "checkout-v2"
        ]
    );
    assert_eq!(
        labels(table, source, "API", None),
        [
            "outbound", "shop", "frontend", "frontend", "shop", "api", "api"
        ],
        "without a split the backend is the service itself"
    );
    assert_eq!(
        labels(table, source, "example.com", None),
        [
            "outbound", "shop", "frontend", "frontend", UNKNOWN, UNKNOWN, UNKNOWN
        ]
    );
}

#[test]
fn inbound_edges_run_from_the_verified_peer_and_anything_unverified_is_unknown() {
    let engine = Engine::new(&config("shop/api", Side::Inbound)).unwrap();
    let table = table(&engine);
    let peer = table.source(Some("spiffe://cluster.local/ns/web/sa/client"));
    assert_eq!(peer, Source::Peer("web", "client"));
    assert_eq!(
        labels(table, peer, "api.shop", None),
        ["inbound", "web", "client", "client", "shop", "api", "api"]
    );
    for unverified in [
        None,
        Some("spiffe://elsewhere.example/ns/web/sa/client"),
        Some("not a spiffe id"),
    ] {
        assert_eq!(table.source(unverified), Source::Unknown, "{unverified:?}");
    }
    assert_eq!(
        labels(table, Source::Unknown, "api", None),
        ["inbound", UNKNOWN, UNKNOWN, UNKNOWN, "shop", "api", "api"]
    );
}

#[test]
fn a_service_not_written_name_dot_namespace_is_refused_naming_the_field() {
    let mut config = config("shop/frontend", Side::Outbound);
    if let Some(metrics) = config.metrics.as_mut() {
        metrics.services[1].service = "checkout-v1".to_owned();
    }
    let err = Engine::new(&config).unwrap_err();
    assert!(matches!(err, EngineError::Metrics(_)), "{err:?}");
    assert_eq!(err.field(), "metrics.services[1].service");
    assert!(
        err.reason().contains("write name.namespace"),
        "{}",
        err.reason()
    );
}
