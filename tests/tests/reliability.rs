//! The mesh under faults, with traffic flowing all along: a bounded load generator sends
//! requests through the sidecars of examples/mesh, and every answer is judged against the
//! policies in force while it was in flight (`weft_e2e::load`). A wrong answer (a 200 the policy
//! denies, a backend the split does not name) fails a test as surely as an error does.
//!
//! Each test runs short in `make test`; `make soak` sets `WEFT_SOAK_SECONDS` and runs them for
//! that long.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_certs::{MeshCa, Validity, first_certificate_der, serial_hex};
use weft_e2e::client;
use weft_e2e::load::{Answer, Load, Timeline, judge};
use weft_e2e::mesh::{TestMesh, write_manifest};
use weft_e2e::poll::until;
use weft_e2e::shop::{CLOSED_V1, OPEN_V2, SHIPPED, probes, verdict};
use weft_e2e::up::WeftUp;

/// How long a test keeps its fault going: `short` in `make test`, `WEFT_SOAK_SECONDS` in
/// `make soak`.
fn run_for(short: Duration) -> Duration {
    std::env::var("WEFT_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(short, Duration::from_secs)
}

/// Each probe sends a request this often.
const PACE: Duration = Duration::from_millis(20);

/// Requests a probe may send in `duration`, with room to spare: the load stops when told.
fn limit(duration: Duration) -> usize {
    usize::try_from((duration + Duration::from_secs(30)).as_millis() / PACE.as_millis())
        .unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_certificates_rotating_every_two_seconds_lose_no_request() {
    let duration = run_for(Duration::from_secs(12));
    let lifetime = Duration::from_secs(4);
    let mut mesh = TestMesh::start_with(|options| {
        options.controller.rotation.lifetime = lifetime;
    })
    .await
    .unwrap();
    let frontend = mesh.replica("shop/frontend-0").outbound();
    let analytics = mesh.replica("shop/analytics-0").outbound();
    let checkout = mesh.replica("shop/checkout-v1-0");
    let sds_updates = format!(
        "listener.{}_8080.server_ssl_socket_factory.ssl_context_update_by_sds",
        checkout.pod.pod_ip
    );
    let before = mesh.stat("shop/checkout-v1-0", &sds_updates).await.unwrap();

    let load = Load::start(probes(frontend, analytics), PACE, limit(duration));
    let probes = load.probes();
    tokio::time::sleep(duration).await;
    let records = load.finish().await;
    let report = judge(&records, &probes, &Timeline::new(SHIPPED), verdict);
    println!("{report}");
    assert_eq!(report.wrong_count, 0, "{report}");
    assert!(report.total > 100, "{report}");

    // Renewed at 40-50% of 4 s: a new certificate every 1.6-2 s, each applied over SDS.
    let rotations = mesh.stat("shop/checkout-v1-0", &sds_updates).await.unwrap() - before;
    let expected = duration.as_secs() * 2 / 5;
    println!("checkout-v1 applied {rotations} certificates in {duration:?}");
    assert!(
        rotations >= expected,
        "{rotations} rotations, expected {expected}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_root_rotated_in_three_steps_loses_no_request_and_its_old_root_outlives_every_certificate_it_signed()
 {
    let mut mesh = TestMesh::start().await.unwrap();
    let state = mesh.state.path().to_owned();
    let nodes: Vec<String> = mesh
        .mesh()
        .replicas
        .iter()
        .map(|replica| replica.pod.node_id())
        .collect();
    let old_pem = std::fs::read_to_string(state.join(weft_certs::CA_CERT_FILE)).unwrap();
    let new = MeshCa::generate(
        "cluster.local",
        Validity::starting_now(Duration::from_secs(365 * 24 * 3600)),
    )
    .unwrap();
    let new_pem = new.pem().cert_pem.clone();
    let root = |pem: &str| weft_controller::trust::RootId::of(&first_certificate_der(pem).unwrap());
    let serial = |pem: &str| serial_hex(&first_certificate_der(pem).unwrap()).unwrap();
    let (old_root, new_root) = (root(&old_pem).to_string(), root(&new_pem).to_string());
    let both = BTreeSet::from([serial(&old_pem), serial(&new_pem)]);
    let only_new = BTreeSet::from([serial(&new_pem)]);

    let frontend = mesh.replica("shop/frontend-0").outbound();
    let analytics = mesh.replica("shop/analytics-0").outbound();
    let load = Load::start(
        probes(frontend, analytics),
        PACE,
        limit(Duration::from_secs(30)),
    );
    let probes = load.probes();

    // Step 1: the new root joins the trust bundle; the old CA still issues.
    write_manifest(
        &state,
        weft_certs::TRUST_BUNDLE_FILE,
        &format!("{old_pem}{new_pem}"),
    )
    .unwrap();
    every_proxy_trusts(&mesh, &nodes, &both).await;
    assert_eq!(mesh.status()["trust"]["issuer"], old_root.as_str());

    // The db sidecar freezes, so it cannot apply a new certificate.
    let db = mesh.replica("shop/db-0").pids()[0];
    signal("STOP", db);

    // Step 2 (the new CA issues) and, too early, step 3 (the bundle names the new root alone).
    write_manifest(&state, weft_certs::CA_KEY_FILE, &new.pem().key_pem).unwrap();
    write_manifest(&state, weft_certs::CA_CERT_FILE, &new_pem).unwrap();
    write_manifest(&state, weft_certs::TRUST_BUNDLE_FILE, &new_pem).unwrap();
    let others: Vec<String> = nodes
        .iter()
        .filter(|n| *n != "shop/db-0")
        .cloned()
        .collect();
    until(
        "the new CA issuing, every other proxy in sync, the old root kept for db",
        Duration::from_secs(20),
        || {
            let status = mesh.status();
            let others = &others;
            let new_root = &new_root;
            async move {
                let trust = &status["trust"];
                let in_sync = others.iter().all(|node| {
                    status["pods"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|pod| pod["pod"] == node.as_str() && pod["in_sync"] == true)
                });
                Ok((trust["issuer"] == new_root.as_str()
                    && trust["rotation"]["step"] == "retiring_roots"
                    && trust["rotation"]["waiting"] == serde_json::json!(["shop/db-0"])
                    && in_sync)
                    .then_some(()))
            }
        },
    )
    .await
    .unwrap();
    // The removal is delayed, not obeyed: while db holds a certificate of the old root, every
    // proxy still trusts it, over several rebuilds.
    for _ in 0..5 {
        let status = mesh.status();
        assert_eq!(
            status["trust"]["rotation"]["waiting"],
            serde_json::json!(["shop/db-0"]),
            "{status:#}"
        );
        assert_eq!(
            status["trust"]["roots"],
            serde_json::json!(BTreeSet::from([old_root.clone(), new_root.clone()])),
            "{status:#}"
        );
        for node in &others {
            let admin = mesh.replica(node).admin();
            assert_eq!(
                client::trusted_ca_serials(admin).await.unwrap(),
                both,
                "{node}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // db comes back and applies its new certificate: only then does the old root go.
    signal("CONT", db);
    every_proxy_trusts(&mesh, &nodes, &only_new).await;
    let trust = mesh.status()["trust"].clone();
    assert_eq!(trust["rotation"]["step"], "steady", "{trust:#}");
    for node in &nodes {
        let held = client::applied_certificates(mesh.replica(node).admin())
            .await
            .unwrap();
        assert_eq!(held.len(), 1, "{node}");
        assert!(
            weft_certs::signed_by(&held[0], &new_pem).unwrap(),
            "{node} holds a certificate the new CA did not sign"
        );
    }
    assert_eq!(trust["roots"], serde_json::json!([new_root]), "{trust:#}");

    let records = load.finish().await;
    let report = judge(&records, &probes, &Timeline::new(SHIPPED), verdict);
    println!("through a root rotation: {report}");
    assert_eq!(report.wrong_count, 0, "{report}");
    assert!(report.total > 100, "{report}");
    mesh.stop().await;
}

/// Sends `SIG<name>` to `pid`.
fn signal(name: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits until the Envoy of every pod in `nodes` trusts exactly the CAs of `serials`.
async fn every_proxy_trusts(mesh: &TestMesh, nodes: &[String], serials: &BTreeSet<String>) {
    for node in nodes {
        let admin = mesh.replica(node).admin();
        until(
            &format!("{node} trusting the CAs {serials:?}"),
            Duration::from_secs(20),
            || async move {
                let trusted = client::trusted_ca_serials(admin).await?;
                Ok((trusted == *serials).then_some(()))
            },
        )
        .await
        .unwrap();
    }
}

/// What `/status` of a `weft up` says: the catalog generation, the generation served, and
/// each pod's address and whether its proxy applied everything it was sent.
async fn mesh_status(admin: SocketAddr) -> anyhow::Result<serde_json::Value> {
    client::get_json(admin, "/status").await
}

/// The controller's resident memory, from its `/metrics`.
async fn controller_memory(admin: SocketAddr) -> anyhow::Result<f64> {
    let reply = client::get(admin, "/metrics").await?;
    let metrics = weft_e2e::prometheus::Metrics::parse(&reply.body)?;
    Ok(metrics.counter("weft_controller_process_resident_memory_bytes", &[]))
}

/// Waits until the controller took a change past generation `before`, built every proxy's
/// snapshot from it, and every proxy applied it.
async fn wait_applied(admin: SocketAddr, before: u64) -> anyhow::Result<()> {
    until(
        "the change applied by every proxy",
        Duration::from_secs(20),
        || async move {
            let status = mesh_status(admin).await?;
            let catalog = status["generation"]["catalog"].as_u64().unwrap_or(0);
            let built = status["generation"]["built"].as_u64().unwrap_or(0);
            let in_sync = status["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|pod| pod["in_sync"] == true);
            Ok((catalog > before && built >= catalog && in_sync).then_some(()))
        },
    )
    .await
}

/// The churn test's file of access and split policy.
const POLICY: &str = "policy.yaml";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_churn_at_one_hertz_is_enforced_request_by_request_without_a_drain_or_growth() {
    let duration = run_for(Duration::from_secs(10));
    // Access and split in one file, so that each change is one atomic write: two files could be
    // picked up by two different polls, and the first applied alone would pass for the change.
    let (mut access, mut split) = (String::new(), String::new());
    let weft = WeftUp::example_with(68, |dir| {
        access = std::fs::read_to_string(dir.join("access.yaml")).unwrap();
        split = std::fs::read_to_string(dir.join("split.yaml")).unwrap();
        std::fs::write(dir.join(POLICY), format!("{access}\n---\n{split}")).unwrap();
        std::fs::remove_file(dir.join("access.yaml")).unwrap();
        std::fs::remove_file(dir.join("split.yaml")).unwrap();
    });
    let admin = weft.admin;
    let status = mesh_status(admin).await.unwrap();
    let pods: BTreeMap<String, std::net::Ipv4Addr> = status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pod| {
            (
                pod["pod"].as_str().unwrap().to_owned(),
                pod["pod_ip"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let outbound =
        |pod: &str| SocketAddr::from((pods[pod], weft_envoy_config::mesh::OUTBOUND_PORT));
    let admin_of = |pod: &str| SocketAddr::from((pods[pod], weft_envoy_config::mesh::ADMIN_PORT));

    let load = Load::start(
        probes(outbound("shop/frontend-0"), outbound("shop/analytics-0")),
        PACE,
        limit(duration),
    );
    let probes = load.probes();
    let mut timeline = Timeline::new(SHIPPED);
    // At least a few, so that settled memory and both policies are seen.
    let changes = duration.as_secs().max(4);
    let start = Instant::now();
    let mut memory = Vec::new();
    for change in 0..changes {
        let policy = if change % 2 == 0 { OPEN_V2 } else { CLOSED_V1 };
        let (access, split) = policy.manifests(&access, &split);
        tokio::time::sleep_until((start + Duration::from_secs(change)).into()).await;
        let before = mesh_status(admin).await.unwrap()["generation"]["catalog"]
            .as_u64()
            .unwrap();
        timeline.changed(policy, Instant::now());
        write_manifest(weft.manifests(), POLICY, &format!("{access}\n---\n{split}")).unwrap();
        wait_applied(admin, before).await.unwrap();
        timeline.applied(Instant::now());
        memory.push(controller_memory(admin).await.unwrap());
    }
    let records = load.finish().await;
    let report = judge(&records, &probes, &timeline, verdict);
    println!(
        "{} policies in {:?}: {report}",
        timeline.len(),
        start.elapsed()
    );
    assert_eq!(report.wrong_count, 0, "{report}");
    // Both policies were met: analytics was let in (by checkout-v2) and shut out, and
    // frontend's /cart went to each backend in turn.
    let answers = |probe: usize| -> BTreeSet<String> {
        records
            .iter()
            .filter(|record| record.probe == probe)
            .map(|record| match &record.answer {
                Answer::Reply { status, body } => format!("{status} {}", body.trim_end()),
                Answer::Error(err) => err.clone(),
            })
            .collect()
    };
    assert_eq!(
        answers(0),
        BTreeSet::from(
            [
                "200 upstream checkout-v1: GET /cart",
                "200 upstream checkout-v2: GET /cart"
            ]
            .map(str::to_owned)
        ),
        "frontend GET /cart"
    );
    let analytics = answers(1);
    assert!(
        analytics.contains("200 upstream checkout-v2: GET /cart")
            && analytics.iter().any(|answer| answer.starts_with("403 ")),
        "analytics GET /cart: {analytics:?}"
    );

    // Only plugin configuration changed: no listener was modified or drained.
    for pod in pods.keys() {
        for stat in [
            "listener_manager.listener_modified",
            "listener_manager.total_listeners_draining",
        ] {
            assert_eq!(
                client::stat(admin_of(pod), stat).await.unwrap(),
                0,
                "{pod} {stat}"
            );
        }
    }
    // The controller's memory after the first changes is where it stays.
    let mib = |bytes: f64| bytes / 1_048_576.0;
    let settled = memory[memory.len().min(3) - 1];
    let last = *memory.last().unwrap();
    println!(
        "controller RSS: {:.1} MiB after {} changes, {:.1} MiB after {changes}",
        mib(settled),
        memory.len().min(3),
        mib(last)
    );
    assert!(
        last - settled < 4.0 * 1_048_576.0,
        "controller grew from {:.1} to {:.1} MiB",
        mib(settled),
        mib(last)
    );
    drop(weft);
}
