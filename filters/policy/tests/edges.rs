//! Edge labels of the metrics feature, from issue 6's rules: the source is the verified peer
//! (inbound) or the workload itself (outbound), destinations are the services the manifests
//! name, the backend is the split's choice, and anything else is `unknown`.

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
    weft_policy::testing::compiled(identity, side, MANIFESTS)
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
    let destination = table.destination(Some(host));
    let backend = backend.and_then(|name| table.service_named(name));
    let labels = table.edge_labels(&source, destination, backend);
    assert_eq!(labels.map(|(name, _)| name), EDGE_LABELS);
    labels
        .iter()
        .map(|(_, value)| (*value).to_owned())
        .collect()
}

#[test]
fn weft_compile_enables_metrics_on_both_sides_and_outbound_with_every_service_the_manifests_name() {
    let inbound = config("shop/frontend", Side::Inbound).metrics.unwrap();
    assert_eq!(inbound.direction, Direction::Inbound);
    assert_eq!(inbound.trust_domain, "cluster.local");
    {
        let metrics = config("shop/frontend", Side::Outbound).metrics.unwrap();
        assert_eq!(metrics.direction, Direction::Outbound);
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

/// The inbound configuration of shop/api, serving the Service `api` (`weft compile --service`).
fn inbound_api() -> PluginConfig {
    let mut config = config("shop/api", Side::Inbound);
    if let Some(metrics) = config.metrics.as_mut() {
        metrics.service = Some("api.shop".to_owned());
    }
    config
}

#[test]
fn inbound_edges_run_from_the_verified_peer_and_anything_unverified_is_unknown() {
    let engine = Engine::new(&inbound_api()).unwrap();
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

#[test]
fn an_inbound_destination_is_the_workload_never_the_host_a_caller_sends() {
    let engine = Engine::new(&inbound_api()).unwrap();
    let api = table(&engine);
    let peer = api.source(Some("spiffe://cluster.local/ns/web/sa/client"));
    for claimed in ["checkout.shop", "checkout-v2", "api", "anything.example"] {
        assert_eq!(
            labels(api, peer, claimed, None),
            ["inbound", "web", "client", "client", "shop", "api", "api"],
            "Host {claimed}"
        );
    }
    // Without a service of its own, the destination is unknown within the workload's namespace.
    let engine = Engine::new(&config("shop/api", Side::Inbound)).unwrap();
    assert_eq!(
        labels(table(&engine), peer, "checkout.shop", None),
        [
            "inbound", "web", "client", "client", "shop", UNKNOWN, UNKNOWN
        ]
    );
    assert!(
        config("shop/api", Side::Inbound)
            .metrics
            .unwrap()
            .services
            .is_empty(),
        "an inbound plugin lists no services to look hosts up in"
    );
}

#[test]
fn an_inbound_service_outside_the_workloads_namespace_or_on_outbound_is_refused() {
    let mut foreign = inbound_api();
    foreign.metrics.as_mut().unwrap().service = Some("api.other".to_owned());
    let err = Engine::new(&foreign).unwrap_err();
    assert_eq!(err.field(), "metrics.service");
    assert!(
        err.reason()
            .contains("not in the workload's namespace shop"),
        "{}",
        err.reason()
    );
    let mut outbound = config("shop/frontend", Side::Outbound);
    outbound.metrics.as_mut().unwrap().service = Some("frontend.shop".to_owned());
    let err = Engine::new(&outbound).unwrap_err();
    assert!(
        err.reason().contains("only an inbound listener"),
        "{}",
        err.reason()
    );
}
