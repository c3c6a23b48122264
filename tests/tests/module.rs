//! The module's delivery: no sequence lets a request pass an access filter it should meet.
//! Sidecars load `weft.wasm` from a content-addressed file the controller names over ECDS
//! (docs/decisions.md); Envoy refuses (NACKs) a plugin configuration whose module it cannot load
//! and keeps the last one it could, and a listener whose first plugin configuration never
//! loaded never serves.

use std::time::Duration;

use weft_e2e::mesh::{TestMesh, copy_example, options};
use weft_e2e::paths;
use weft_e2e::poll::until;
use weft_local::LocalMesh;

const FRONTEND: &str = "shop/frontend-0";
const ANALYTICS: &str = "shop/analytics-0";
const CHECKOUT_V1: &str = "shop/checkout-v1-0";

/// weft.wasm with a custom section appended: another valid module, with another digest.
fn another_build(dir: &std::path::Path) -> std::path::PathBuf {
    let mut bytes = std::fs::read(paths::weft_wasm().unwrap()).unwrap();
    let name = b"weft-test";
    let payload = b"another build";
    let content = 1 + name.len() + payload.len();
    bytes.push(0); // custom section
    bytes.push(u8::try_from(content).unwrap());
    bytes.push(u8::try_from(name.len()).unwrap());
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir.join("weft-next.wasm");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A file that is not a wasm module (a truncated download, a wrong file).
fn broken_module(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("weft-broken.wasm");
    std::fs::write(&path, b"\0asm this is not a module").unwrap();
    path
}

async fn ecds_acked(mesh: &TestMesh, node: &str) -> Option<String> {
    mesh.pod_status(node)["proxy"]["types"]["ecds"]["acked"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_envoy_cannot_load_at_first_start_lets_no_request_through() {
    let manifests = copy_example("mesh").unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut options = options(manifests.path(), state.path()).unwrap();
    options.controller.module = broken_module(state.path());
    let mut mesh = LocalMesh::up(options).await.unwrap();
    // Every sidecar refuses the plugin configuration (its module cannot be loaded); their
    // listeners then start without it, and Envoy answers what would pass the filter with 500
    // (filter configuration not found) and resets TCP connections.
    let shared = mesh.controller.shared.clone();
    until(
        "every sidecar refused the module",
        Duration::from_secs(20),
        || async {
            let status = weft_controller::admin::status_json(&shared);
            let refused = status["pods"].as_array().unwrap().iter().all(|pod| {
                let ecds = &pod["proxy"]["types"]["ecds"];
                ecds["nacks"].as_u64() >= Some(1) && ecds["acked"].is_null()
            });
            Ok(refused.then_some(()))
        },
    )
    .await
    .unwrap();
    let _ = mesh.wait_ready(Duration::from_secs(10)).await;
    for from in [FRONTEND, ANALYTICS] {
        let replica = mesh
            .replicas
            .iter()
            .find(|r| r.pod.node_id() == from)
            .unwrap();
        for path in ["/cart", "/admin"] {
            let reply =
                weft_e2e::client::request(replica.outbound(), "GET", path, &[("host", "checkout")])
                    .await;
            if let Ok(reply) = reply {
                assert_eq!(reply.status, 500, "{from} {path}: {reply:?}");
            }
        }
    }
    let checkout = mesh
        .replicas
        .iter()
        .find(|r| r.pod.node_id() == CHECKOUT_V1)
        .unwrap();
    let db = std::net::SocketAddr::from((checkout.pod.pod_ip, 5432));
    if let Ok(mut stream) = tokio::net::TcpStream::connect(db).await {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = stream.write_all(b"select 1\n").await;
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(
            read.is_ok() && answer.is_empty(),
            "the database answered: {answer:?}"
        );
    }
    mesh.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_upgrade_applies_in_place_and_one_envoy_cannot_load_is_refused_while_the_old_enforces()
 {
    let mut mesh = TestMesh::start().await.unwrap();
    let before = ecds_acked(&mesh, CHECKOUT_V1).await.unwrap();
    let next = another_build(mesh.state.path());
    mesh.mesh().controller.shared.set_module(&next).unwrap();
    until(
        "the new module applied",
        Duration::from_secs(15),
        || async {
            Ok(ecds_acked(&mesh, CHECKOUT_V1)
                .await
                .filter(|v| *v != before))
        },
    )
    .await
    .unwrap();
    assert_eq!(mesh.checkout_status(ANALYTICS, "/cart").await, 403);
    assert_eq!(mesh.checkout_status(FRONTEND, "/cart").await, 200);
    assert_eq!(
        mesh.stat(CHECKOUT_V1, "listener_manager.total_listeners_draining")
            .await
            .unwrap(),
        0
    );

    // An upgrade to a module Envoy cannot load: refused by every sidecar, recorded, and the
    // module they run keeps enforcing.
    let upgraded = ecds_acked(&mesh, CHECKOUT_V1).await.unwrap();
    mesh.mesh()
        .controller
        .shared
        .set_module(&broken_module(mesh.state.path()))
        .unwrap();
    until(
        "the broken module refused",
        Duration::from_secs(15),
        || async {
            let ecds = mesh.pod_status(CHECKOUT_V1)["proxy"]["types"]["ecds"].clone();
            Ok((ecds["nacks"].as_u64() >= Some(1)).then_some(ecds))
        },
    )
    .await
    .unwrap();
    assert_eq!(ecds_acked(&mesh, CHECKOUT_V1).await.unwrap(), upgraded);
    for _ in 0..5 {
        assert_eq!(mesh.checkout_status(ANALYTICS, "/cart").await, 403);
        assert_eq!(mesh.checkout_status(FRONTEND, "/cart").await, 200);
    }
    mesh.stop().await;
}
