//! A whole mesh in local mode: real Envoys configured only by the controller over xDS, with
//! certificates it issued, running examples/mesh (frontend -> checkout split v1/v2 -> db over
//! TCP; analytics, which nothing lets in).

use std::time::{Duration, Instant};

use weft_e2e::load::{Load, Timeline, judge};
use weft_e2e::mesh::TestMesh;
use weft_e2e::poll::until;
use weft_e2e::shop::{Policy, SHIPPED, probes, verdict};

const FRONTEND: &str = "shop/frontend-0";
const ANALYTICS: &str = "shop/analytics-0";
const CHECKOUT_V1: &str = "shop/checkout-v1-0";
const CHECKOUT_V2: &str = "shop/checkout-v2-0";
const DB: &str = "shop/db-0";
/// The outbound route configuration's updates an Envoy refused, and applied.
const ROUTES_REJECTED: &str = "http.outbound.rds.outbound.update_rejected";
const ROUTES_APPLIED: &str = "http.outbound.rds.outbound.update_success";

/// `GET path` to checkout as `from` is refused with 403, naming the caller's SPIFFE identity
/// (read by checkout's sidecar from the certificate the controller issued to the caller's).
async fn assert_denied(mesh: &TestMesh, from: &str, path: &str, service_account: &str) {
    let reply = mesh.call(from, "GET", "checkout", path).await.unwrap();
    assert_eq!(reply.status, 403, "{from} {path}: {}", reply.body);
    let identity = format!("spiffe://cluster.local/ns/shop/sa/{service_account}");
    assert!(
        reply.body.contains(&identity),
        "{from} {path}: {}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_split_tcp_and_metrics_work_over_certificates_the_controller_issued() {
    let mut mesh = TestMesh::start().await.unwrap();

    // Allowed: frontend may GET /cart; the split sends it to v1 or v2.
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..100 {
        let reply = mesh
            .call(FRONTEND, "GET", "checkout", "/cart")
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        match reply.body.trim_end() {
            "upstream checkout-v1: GET /cart" => v1 += 1,
            "upstream checkout-v2: GET /cart" => v2 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // 90/10: v2 gets between 1 and 30 of 100 with overwhelming probability.
    assert!(v2 > 0 && v2 <= 30 && v1 + v2 == 100, "v1 {v1}, v2 {v2}");

    // Denied: a path no rule allows, and a workload no TrafficTarget names. The 403 names the
    // caller's identity, which the inbound sidecar read from the certificate the controller
    // issued to the caller's sidecar.
    assert_denied(&mesh, FRONTEND, "/admin", "frontend").await;
    assert_denied(&mesh, ANALYTICS, "/cart", "analytics").await;

    // TCP: checkout may reach the database, analytics may not.
    assert_eq!(
        mesh.tcp(CHECKOUT_V1, 5432, "select 1")
            .await
            .unwrap()
            .as_deref(),
        Some("db: select 1")
    );
    assert_eq!(mesh.tcp(ANALYTICS, 5432, "select 1").await.unwrap(), None);

    // Metrics: each checkout sidecar counted exactly the requests it served, per edge.
    for (node, served) in [(CHECKOUT_V1, v1), (CHECKOUT_V2, v2)] {
        let metrics = mesh.metrics(node).await.unwrap();
        let allowed = metrics.counter(
            "weft_requests_total",
            &[
                ("direction", "inbound"),
                ("source_service_account", "frontend"),
                ("destination_service", "checkout"),
                ("response_code_class", "2xx"),
            ],
        );
        assert_eq!(allowed, f64::from(served), "{node}");
    }
    let status = mesh.status();
    for pod in status["pods"].as_array().unwrap() {
        assert_eq!(pod["ready"], true, "{pod}");
        assert!(pod["proxy"]["certificate_expires"].is_string(), "{pod}");
    }

    // The controller's metrics: five proxies, each converged on its first configuration, one
    // certificate per ServiceAccount.
    let metrics = mesh.controller_metrics().await.unwrap();
    assert_eq!(
        metrics.counter("weft_controller_proxies_connected", &[]),
        5.0
    );
    assert_eq!(metrics.counter("weft_controller_pods", &[]), 5.0);
    assert_eq!(
        metrics.counter("weft_controller_index_objects", &[("kind", "TrafficSplit")]),
        1.0
    );
    assert!(
        metrics.histogram_count("weft_controller_proxy_convergence_seconds", &[]) >= 5.0,
        "each proxy's first configuration is a convergence"
    );
    assert!(metrics.counter("weft_controller_xds_pushes_total", &[("type", "cds")]) >= 5.0);
    let identities = metrics.label_values(
        "weft_controller_certificate_expiry_timestamp_seconds",
        "identity",
    );
    assert_eq!(
        identities.into_iter().collect::<Vec<_>>(),
        ["analytics", "checkout", "db", "frontend"]
            .map(|sa| format!("spiffe://cluster.local/ns/shop/sa/{sa}"))
    );
    // Idle, nothing is rebuilt (no change, no certificate due).
    let rebuilds = metrics.counter("weft_controller_rebuilds_total", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = mesh.controller_metrics().await.unwrap();
    assert_eq!(
        idle.counter("weft_controller_rebuilds_total", &[]),
        rebuilds
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_is_enforced_through_ecds_without_a_drain_and_a_bad_edit_is_refused() {
    let mut mesh = TestMesh::start().await.unwrap();
    assert_eq!(mesh.checkout_status(ANALYTICS, "/cart").await, 403);
    let access = std::fs::read_to_string(mesh.manifest("access.yaml")).unwrap();
    let opened = access.replace(
        "sources: [{kind: ServiceAccount, name: frontend, namespace: shop}]",
        "sources: [{kind: ServiceAccount, name: frontend, namespace: shop}, {kind: ServiceAccount, name: analytics, namespace: shop}]",
    );
    assert_ne!(opened, access);
    let before = mesh.controller_metrics().await.unwrap();
    let before_convergences =
        before.histogram_count("weft_controller_proxy_convergence_seconds", &[]);
    let edited = Instant::now();
    mesh.write_manifest("access.yaml", &opened).unwrap();
    until(
        "analytics allowed on both checkout backends",
        Duration::from_secs(10),
        || async {
            for _ in 0..10 {
                if mesh
                    .call(ANALYTICS, "GET", "checkout", "/cart")
                    .await?
                    .status
                    != 200
                {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
    println!(
        "policy edit enforced {} ms after the file changed",
        edited.elapsed().as_millis()
    );
    // Each checkout sidecar's convergence was measured, and only plugin configuration was
    // pushed for it.
    let converged = until(
        "both checkout sidecars converged",
        Duration::from_secs(10),
        || async {
            let metrics = mesh.controller_metrics().await?;
            let count = metrics.histogram_count("weft_controller_proxy_convergence_seconds", &[]);
            Ok((count >= before_convergences + 2.0).then_some(metrics))
        },
    )
    .await
    .unwrap();
    // Only the destination's two sidecars got new plugin configurations; nothing was built
    // again, and the other three kept their snapshots.
    let made = |metrics: &weft_e2e::prometheus::Metrics, how: &str| {
        metrics.counter("weft_controller_snapshots_total", &[("how", how)])
    };
    assert_eq!(made(&converged, "policy") - made(&before, "policy"), 2.0);
    assert_eq!(made(&converged, "built"), made(&before, "built"));
    assert_eq!(
        converged.counter("weft_controller_xds_pushes_total", &[("type", "lds")]),
        before.counter("weft_controller_xds_pushes_total", &[("type", "lds")]),
        "no listener was pushed"
    );
    assert!(
        converged.counter("weft_controller_xds_pushes_total", &[("type", "ecds")])
            >= before.counter("weft_controller_xds_pushes_total", &[("type", "ecds")]) + 2.0
    );
    // The change travelled as plugin configuration only: no listener was modified or drained.
    for node in [CHECKOUT_V1, CHECKOUT_V2] {
        assert_eq!(
            mesh.stat(node, "listener_manager.listener_modified")
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            mesh.stat(node, "listener_manager.total_listeners_draining")
                .await
                .unwrap(),
            0
        );
        assert!(
            mesh.stat(
                node,
                "extension_config_discovery.http_filter.weft.inbound_8080.config_reload"
            )
            .await
            .unwrap()
                >= 2,
            "{node} reloaded its plugin configuration"
        );
    }

    // One broken object in an edit that also closes analytics' access again: the broken
    // TCPRoute is refused alone, with file and line, its previous version stays in force, and
    // the rest of the edit applies.
    let broken = access.replace("matches: {ports: [5432]}", "matches: {ports: [nope]}");
    assert_ne!(broken, access);
    mesh.write_manifest("access.yaml", &broken).unwrap();
    let refused = until(
        "the broken object reported",
        Duration::from_secs(10),
        || async {
            let refused = mesh.status()["refused"].clone();
            Ok((!refused.as_array().unwrap().is_empty()).then_some(refused))
        },
    )
    .await
    .unwrap();
    assert_eq!(refused[0]["object"], "TCPRoute shop/postgres");
    assert_eq!(refused[0]["kept"], "previous");
    let first = refused[0]["problems"][0].as_str().unwrap();
    assert!(first.contains("access.yaml:23:"), "{first}");
    let metrics = mesh.controller_metrics().await.unwrap();
    assert_eq!(
        metrics.counter(
            "weft_controller_reconcile_errors_total",
            &[("stage", "manifests")]
        ),
        1.0
    );
    assert_eq!(
        metrics.counter("weft_controller_refused_objects", &[("kind", "TCPRoute")]),
        1.0
    );
    assert!(first.contains("nope"), "{first}");
    until(
        "analytics closed again",
        Duration::from_secs(10),
        || async { Ok((mesh.checkout_status(ANALYTICS, "/cart").await == 403).then_some(())) },
    )
    .await
    .unwrap();
    assert_eq!(mesh.checkout_status(FRONTEND, "/cart").await, 200);
    // Fixed, it is in force as written and no longer reported.
    mesh.write_manifest("access.yaml", &access).unwrap();
    until("the refusal cleared", Duration::from_secs(10), || async {
        let refused = mesh.status()["refused"].clone();
        Ok(refused.as_array().unwrap().is_empty().then_some(()))
    })
    .await
    .unwrap();
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_every_proxy_refuses_is_recorded_once_per_proxy_and_never_resent() {
    let mut mesh = TestMesh::start().await.unwrap();
    // Traffic all along: every answer as the last good configuration says.
    let load = Load::start(
        probes(
            mesh.replica(FRONTEND).outbound(),
            mesh.replica(ANALYTICS).outbound(),
        ),
        Duration::from_millis(5),
        20_000,
    );
    let load_probes = load.probes();
    let mut timeline = Timeline::new(SHIPPED);
    let services = std::fs::read_to_string(mesh.manifest("services.yaml")).unwrap();
    // A TrafficPolicy on the routes of a match whose regex weft reads but Envoy's RE2 refuses
    // (a counted repetition above RE2's 1000): every caller of checkout, every pod, gets
    // outbound routes it refuses (a NACK of the whole route configuration).
    let refused = "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: long, namespace: shop}\nspec:\n  matches: [{name: xs, pathRegex: \"/x{1001}\"}]\n---\napiVersion: policy.weft.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: long, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: checkout}\n  routes:\n  - match: {kind: HTTPRouteGroup, name: long, match: xs}\n    timeouts: {request: 5s}\n";
    mesh.write_manifest("services.yaml", &format!("{services}---\n{refused}"))
        .unwrap();
    // Every pod refuses it, once.
    let callers = [ANALYTICS, CHECKOUT_V1, CHECKOUT_V2, DB, FRONTEND];
    until(
        "every caller refused its routes",
        Duration::from_secs(10),
        || async {
            let refused = callers
                .iter()
                .all(|node| mesh.pod_status(node)["proxy"]["types"]["rds"]["nacks"] == 1);
            Ok(refused.then_some(()))
        },
    )
    .await
    .unwrap();
    for node in callers {
        let rejected = mesh.stat(node, ROUTES_REJECTED).await.unwrap();
        assert_eq!(rejected, 1, "{node}");
    }
    // Unrelated changes come and go (a new TrafficSplit weight): the refused listeners are not
    // sent again, the split change is, and the last good listeners keep serving.
    let split = std::fs::read_to_string(mesh.manifest("split.yaml")).unwrap();
    timeline.changed(
        Policy {
            backends: &["checkout-v2"],
            ..SHIPPED
        },
        Instant::now(),
    );
    mesh.write_manifest("split.yaml", &split.replace("weight: 90", "weight: 0"))
        .unwrap();
    until(
        "every request to checkout-v2",
        Duration::from_secs(10),
        || async {
            for _ in 0..10 {
                let reply = mesh.call(FRONTEND, "GET", "checkout", "/cart").await?;
                if reply.body.trim_end() != "upstream checkout-v2: GET /cart" {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
    timeline.applied(Instant::now());
    for node in callers {
        let rejected = mesh.stat(node, ROUTES_REJECTED).await.unwrap();
        assert_eq!(rejected, 1, "{node}: the refused routes were sent again");
        let rds = mesh.pod_status(node)["proxy"]["types"]["rds"].clone();
        assert_eq!(rds["nacks"], 1, "{node}: {rds}");
        let error = rds["error"].as_str().unwrap_or_default();
        assert!(error.contains("repetition"), "{node}: {rds}");
    }
    let metrics = mesh.controller_metrics().await.unwrap();
    assert_eq!(
        metrics.counter("weft_controller_xds_nacks_total", &[("type", "rds")]),
        5.0,
        "one refusal per caller"
    );
    // The fix is sent and applied.
    let applied_before = mesh.stat(FRONTEND, ROUTES_APPLIED).await.unwrap();
    mesh.write_manifest("services.yaml", &services).unwrap();
    until("the fix applied", Duration::from_secs(10), || async {
        Ok((mesh.stat(FRONTEND, ROUTES_APPLIED).await? > applied_before).then_some(()))
    })
    .await
    .unwrap();
    let records = load.finish().await;
    let report = judge(&records, &load_probes, &timeline, verdict);
    println!("through a change every proxy refused: {report}");
    assert_eq!(report.wrong_count, 0, "{report}");
    assert!(report.total > 60, "{report}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_mesh_leaves_no_process_behind() {
    let mut mesh = TestMesh::start().await.unwrap();
    let pids: Vec<u32> = mesh.mesh().replicas.iter().flat_map(|r| r.pids()).collect();
    assert_eq!(pids.len(), 10, "an Envoy and an application per replica");
    for pid in &pids {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    mesh.stop().await;
    for pid in &pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty(), "process {pid} is still there: {stat}");
    }
}

/// An ADS stream to the mesh's controller with the bootstrap credential local mode gave
/// `pod`'s sidecar, claiming to be node `node_id` of `node_cluster`; the first request asks
/// for `type_url` `names`.
async fn ads_as(
    mesh: &TestMesh,
    pod: &str,
    node_id: &str,
    node_cluster: &str,
    type_url: &str,
    names: &[&str],
) -> Result<weft_envoy_config::pb::envoy::service::discovery::v3::DiscoveryResponse, tonic::Status>
{
    use weft_envoy_config::pb::envoy::config::core::v3::Node;
    use weft_envoy_config::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use weft_envoy_config::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let dir = mesh.state.path().join("pods").join(pod);
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")))
        .identity(tonic::transport::Identity::from_pem(
            read("cert.pem"),
            read("key.pem"),
        ));
    let address = mesh.mesh().controller.xds_address;
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = DiscoveryRequest {
        node: Some(Node {
            id: node_id.to_owned(),
            cluster: node_cluster.to_owned(),
            ..Node::default()
        }),
        type_url: type_url.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..DiscoveryRequest::default()
    };
    // The stream stays open (the sender lives in the returned future's scope) until a reply.
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender.send(request).await.unwrap();
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let reply = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("an answer within 5 s")?;
    drop(sender);
    reply.ok_or_else(|| tonic::Status::cancelled("no response"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_no_other_workloads_secret_and_cannot_claim_its_identity() {
    let mut mesh = TestMesh::start().await.unwrap();
    let checkout = "spiffe://cluster.local/ns/shop/sa/checkout";
    // analytics' own credential, asking for checkout's certificate: nothing is sent, and the
    // refusal is recorded.
    let reply = ads_as(
        &mesh,
        "shop/analytics-0",
        ANALYTICS,
        "shop/analytics",
        weft_xds::snapshot::SECRET,
        &[checkout],
    )
    .await
    .unwrap();
    assert!(reply.resources.is_empty(), "{reply:?}");
    let status = mesh.status();
    let analytics = status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod"] == ANALYTICS)
        .unwrap();
    assert_eq!(analytics["proxy"]["refused"], serde_json::json!([checkout]));
    // Its own certificate, asked for by the one name every proxy asks for its own, is served,
    // and it is analytics' own.
    let own = ads_as(
        &mesh,
        "shop/analytics-0",
        ANALYTICS,
        "shop/analytics",
        weft_xds::snapshot::SECRET,
        &[weft_envoy_config::mesh::WORKLOAD_CERTIFICATE],
    )
    .await
    .unwrap();
    assert_eq!(own.resources.len(), 1);
    use prost::Message as _;
    use weft_envoy_config::pb::envoy::config::core::v3::data_source::Specifier;
    use weft_envoy_config::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    let secret = Secret::decode(own.resources[0].value.as_slice()).unwrap();
    let Some(secret::Type::TlsCertificate(certificate)) = secret.r#type else {
        panic!("not a certificate: {secret:?}");
    };
    let Some(Specifier::InlineString(chain)) = certificate
        .certificate_chain
        .and_then(|chain| chain.specifier)
    else {
        panic!("no inline chain");
    };
    let der = weft_certs::first_certificate_der(&chain).unwrap();
    let (names, _) = weft_certs::inspect(&der).unwrap();
    assert_eq!(names, ["spiffe://cluster.local/ns/shop/sa/analytics"]);
    // analytics' credential claiming to be a checkout pod: refused.
    let status = ads_as(
        &mesh,
        "shop/analytics-0",
        CHECKOUT_V1,
        "shop/checkout",
        weft_xds::snapshot::SECRET,
        &[checkout],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(
        status
            .message()
            .contains("its certificate is for spiffe://cluster.local/ns/shop/sa/analytics"),
        "{status}"
    );
    mesh.stop().await;
}
