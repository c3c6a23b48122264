//! `weft controller` against hostile inputs, each a reproduction of the security review: a
//! flood of idle and half-open connections, a proxy asking for fifty thousand names, a
//! certificate of a partner's root that the workload trust bundle holds, sidecars registering
//! pods that are not theirs, and manifests that are not files, are too large, or are written in
//! place. Every time, the controller keeps serving real sidecars and answering `/healthz`, and
//! refuses what it must with a reason.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use weft_e2e::ads::{Credential, first_answer, first_request, node, open};
use weft_e2e::bootstrap::free_port;
use weft_e2e::client::get;
use weft_e2e::mesh::{RemotePod, copy_example, weft_controller, weft_sidecar};
use weft_e2e::poll::until;
use weft_envoy_config::mesh::PodMetadata;
use weft_xds::snapshot::{CLUSTER, SECRET};

/// A `weft controller` process and its folders, killed when dropped.
struct Controller {
    child: Child,
    xds: u16,
    admin: u16,
    manifests: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    /// `weft controller` on a copy of examples/mesh with `flags`, answering `/healthz`.
    async fn start(flags: &[&str]) -> Self {
        let manifests = copy_example("mesh").unwrap();
        let state = tempfile::tempdir().unwrap();
        Self::start_in(manifests, state, flags).await
    }

    async fn start_in(
        manifests: tempfile::TempDir,
        state: tempfile::TempDir,
        flags: &[&str],
    ) -> Self {
        let (xds, admin) = (free_port().unwrap(), free_port().unwrap());
        let child = weft_controller(manifests.path(), state.path(), (xds, admin), flags)
            .unwrap()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let controller = Self {
            child,
            xds,
            admin,
            manifests,
            state,
        };
        until(
            "the controller serving",
            Duration::from_secs(20),
            || async {
                Ok(get(controller.admin_address(), "/readyz")
                    .await
                    .is_ok_and(|reply| reply.status == 200)
                    .then_some(()))
            },
        )
        .await
        .unwrap();
        controller
    }

    fn xds_address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.xds))
    }

    fn admin_address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }

    async fn status(&self) -> serde_json::Value {
        weft_e2e::client::get_json(self.admin_address(), "/status")
            .await
            .unwrap()
    }

    /// The names of the pods `/status` lists, and the status itself (for messages).
    async fn pod_names(&self) -> (Vec<String>, serde_json::Value) {
        let status = self.status().await;
        let names = status["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pod| pod["pod"].as_str().map(str::to_owned))
            .collect();
        (names, status)
    }

    /// How long `/healthz` takes to answer 200.
    async fn healthz(&self) -> Duration {
        let started = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            get(self.admin_address(), "/healthz"),
        )
        .await
        .expect("/healthz answered within 10 s")
        .expect("/healthz answered");
        assert_eq!(reply.status, 200, "{reply:?}");
        started.elapsed()
    }

    /// The controller's open file descriptors.
    fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(Iterator::count)
            .unwrap_or_default()
    }

    /// Its resident memory, KiB.
    fn resident_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kib| kib.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or_default()
    }

    /// A credential of the controller's CA for `identity`.
    fn credential(&self, identity: &str) -> Credential {
        Credential::issue(self.state.path(), identity).unwrap()
    }
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node of `weft sidecar`'s making: pod `namespace/name` of `workload`, running as `sa`, at
/// `pod_ip`, with more metadata.
fn pod(
    name: &str,
    workload: &str,
    sa: &str,
    pod_ip: &str,
    more: &[(&str, &str)],
) -> weft_envoy_config::pb::envoy::config::core::v3::Node {
    let mut metadata = vec![
        (PodMetadata::WORKLOAD, workload),
        (PodMetadata::POD_IP, pod_ip),
        (PodMetadata::APP_IP, "127.71.0.1"),
    ];
    metadata.extend_from_slice(more);
    node(name, &format!("shop/{sa}"), &metadata)
}

/// A TCP connection from `from` to `to` that sends nothing.
async fn idle(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Whether the server closed `stream` within `within` (a read ends or fails).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut byte = [0u8; 1];
    tokio::time::timeout(within, stream.read(&mut byte))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_idle_and_half_open_connections_leaves_sidecars_served_and_healthz_answering() {
    let controller = Controller::start(&[]).await;
    let baseline = controller.descriptors();
    let attacker = Ipv4Addr::new(127, 66, 0, 1);
    let (xds, admin) = (controller.xds_address(), controller.admin_address());
    // 1,500 TCP connections to the xDS port that never start TLS, 300 to the admin port that
    // never send a byte, and 50 that send half a request's headers.
    let mut held = Vec::new();
    for _ in 0..1500 {
        if let Ok(stream) = idle(attacker, xds).await {
            held.push(stream);
        }
    }
    for _ in 0..300 {
        if let Ok(stream) = idle(attacker, admin).await {
            held.push(stream);
        }
    }
    let mut partial = Vec::new();
    for _ in 0..50 {
        if let Ok(mut stream) = idle(attacker, admin).await {
            use tokio::io::AsyncWriteExt as _;
            let _ = stream
                .write_all(b"GET /status HTTP/1.1\r\nhost: weft\r\nx-slow: ")
                .await;
            partial.push(stream);
        }
    }
    let flooded_at = Instant::now();
    assert!(held.len() > 1000, "the flood opened only {}", held.len());
    // Meanwhile a real sidecar fetches its module, gets its configuration and serves, and
    // /healthz answers at once.
    let sidecar_dir = tempfile::tempdir().unwrap();
    let remote = RemotePod {
        pod: "shop/checkout-v1-9",
        workload: "checkout-v1",
        service_account: "checkout",
        pod_ip: Ipv4Addr::new(127, 72, 0, 1),
        app_ip: Ipv4Addr::new(127, 73, 0, 1),
    };
    let weft = weft_e2e::paths::workspace_root().join("target/debug/weft");
    let mut sidecar = Killed(
        weft_sidecar(
            &weft,
            &remote,
            "cluster.local",
            (controller.state.path(), sidecar_dir.path()),
            controller.xds,
        )
        .unwrap()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let sidecar_admin = SocketAddr::from((remote.pod_ip, weft_envoy_config::mesh::ADMIN_PORT));
    until("the sidecar live", Duration::from_secs(20), || async {
        Ok(get(sidecar_admin, "/ready")
            .await
            .is_ok_and(|reply| reply.status == 200)
            .then_some(()))
    })
    .await
    .unwrap();
    assert!(matches!(sidecar.0.try_wait(), Ok(None)), "the sidecar runs");
    for _ in 0..5 {
        assert!(controller.healthz().await < Duration::from_secs(1));
    }
    // The controller holds a bounded number of the flood's connections, and lets each go
    // once its handshake (or its headers) did not come in time.
    let during = controller.descriptors();
    let held_at_most = weft_controller::serve::Limits::xds(u64::MAX).per_peer
        + weft_controller::serve::Limits::admin(u64::MAX).per_peer;
    assert!(
        during < baseline + held_at_most + 20,
        "{during} descriptors open during the flood, {baseline} before"
    );
    let deadline = weft_controller::serve::HANDSHAKE + Duration::from_secs(2);
    for stream in held.iter_mut().step_by(50).chain(partial.iter_mut()) {
        let left = deadline.saturating_sub(flooded_at.elapsed());
        assert!(
            closed_within(stream, left.max(Duration::from_millis(100))).await,
            "a connection held past {deadline:?}"
        );
    }
    assert!(controller.healthz().await < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_asking_for_fifty_thousand_names_is_refused_and_its_refusals_stay_bounded() {
    let controller = Controller::start(&[]).await;
    let frontend = controller.credential("shop/frontend");
    let node = pod("shop/frontend-5", "frontend", "frontend", "127.72.1.1", &[]);
    // Fifty thousand names of secrets that do not exist: the stream is ended.
    let names: Vec<String> = (0..50_000)
        .map(|i| format!("spiffe://cluster.local/ns/shop/sa/nobody-{i}"))
        .collect();
    let mut stream = open(
        controller.xds_address(),
        &frontend,
        first_request(&node, SECRET, &names),
    )
    .await
    .unwrap();
    let ended = stream.next(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
    assert!(ended.message().contains("at most 10000"), "{ended:?}");
    // Ten thousand (as many as a request may name): answered, and remembered as a count and
    // the last few names, however often it asks.
    for _ in 0..3 {
        let mut stream = open(
            controller.xds_address(),
            &frontend,
            first_request(&node, SECRET, &names[..10_000]),
        )
        .await
        .unwrap();
        let response = stream.next(Duration::from_secs(10)).await.unwrap();
        assert!(response.resources.is_empty());
    }
    let proxy = until("the refusals recorded", Duration::from_secs(10), || async {
        let status = controller.status().await;
        let proxy = status["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|pod| pod["pod"] == "shop/frontend-5")
            .map(|pod| pod["proxy"].clone());
        Ok(proxy.filter(|proxy| proxy["refused_total"].as_u64() >= Some(80_000)))
    })
    .await
    .unwrap();
    assert_eq!(
        proxy["refused"].as_array().map(Vec::len),
        Some(16),
        "{proxy}"
    );
    let status = get(controller.admin_address(), "/status").await.unwrap();
    assert!(
        status.body.len() < 64 * 1024,
        "/status is {} bytes",
        status.body.len()
    );
    // Others are served at once, and /healthz answers.
    let checkout = controller.credential("shop/checkout");
    let other = pod(
        "shop/checkout-v1-9",
        "checkout-v1",
        "checkout",
        "127.72.1.2",
        &[],
    );
    let started = Instant::now();
    assert!(
        first_answer(controller.xds_address(), &checkout, &other, CLUSTER)
            .await
            .is_ok()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(controller.healthz().await < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partner_root_in_the_trust_bundle_cannot_speak_for_the_mesh_to_the_controller() {
    use weft_certs::{MeshCa, Validity};
    let pki = tempfile::tempdir().unwrap();
    let year = Validity::starting_now(Duration::from_secs(365 * 24 * 3600));
    let write = |dir: &Path, ca: &MeshCa| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(weft_certs::CA_CERT_FILE), &ca.pem().cert_pem).unwrap();
        std::fs::write(dir.join(weft_certs::CA_KEY_FILE), &ca.pem().key_pem).unwrap();
    };
    let mesh = MeshCa::generate("cluster.local", year).unwrap();
    let partner = MeshCa::generate("cluster.local", year).unwrap();
    let (mesh_dir, partner_dir) = (pki.path().join("mesh"), pki.path().join("partner"));
    write(&mesh_dir, &mesh);
    write(&partner_dir, &partner);
    let bundle = pki.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        format!("{}{}", mesh.pem().cert_pem, partner.pem().cert_pem),
    )
    .unwrap();
    let path = |p: &Path| p.display().to_string();
    let controller = Controller::start(&[
        "--ca-cert",
        &path(&mesh_dir.join(weft_certs::CA_CERT_FILE)),
        "--ca-key",
        &path(&mesh_dir.join(weft_certs::CA_KEY_FILE)),
        "--trust-bundle",
        &path(&bundle),
    ])
    .await;
    let secret = weft_envoy_config::mesh::WORKLOAD_CERTIFICATE;
    let node = pod(
        "shop/checkout-v1-9",
        "checkout-v1",
        "checkout",
        "127.72.2.1",
        &[],
    );
    // Workloads trust the partner's root for calls...
    let ours = Credential::issue(&mesh_dir, "shop/checkout").unwrap();
    let served = first_answer(controller.xds_address(), &ours, &node, CLUSTER).await;
    assert!(served.is_ok(), "{served:?}");
    // ...but a certificate of that root, for the same identity, gets nothing from the
    // controller: no stream, so no key over SDS.
    let theirs = Credential {
        ca_pem: ours.ca_pem.clone(),
        ..Credential::issue(&partner_dir, "shop/checkout").unwrap()
    };
    // Another pod of the same workload, so that nothing the first stream left can answer for
    // it: it must not get as far as the controller's admission.
    let theirs_node = pod(
        "shop/checkout-v1-8",
        "checkout-v1",
        "checkout",
        "127.72.2.2",
        &[],
    );
    let request = first_request(&theirs_node, SECRET, &[secret.to_owned()]);
    let refused = match open(controller.xds_address(), &theirs, request).await {
        Err(err) => format!("{err:#}"),
        Ok(mut stream) => match stream.next(Duration::from_secs(5)).await {
            Ok(response) => panic!("the partner's certificate got {response:?}"),
            Err(status) => status.to_string(),
        },
    };
    // Refused by TLS (the connection broken), not by the admission (a gRPC status saying why
    // the node may not connect), which would mean the certificate was taken.
    assert!(refused.contains("transport error"), "{refused}");
    assert!(!refused.contains("PermissionDenied"), "{refused}");
    let (pods, status) = controller.pod_names().await;
    assert!(
        pods.iter().any(|pod| pod == "shop/checkout-v1-9"),
        "{status}"
    );
    assert!(
        !pods.iter().any(|pod| pod == "shop/checkout-v1-8"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_registers_only_its_workloads_pods_within_its_replicas_at_allowed_addresses_with_a_known_module()
 {
    let controller = Controller::start(&["--pod-network", "127.70.0.0/16"]).await;
    let frontend = controller.credential("shop/frontend");
    let checkout = controller.credential("shop/checkout");
    let xds = controller.xds_address();
    // Why the controller refuses a stream of `node` with `credential` ("served" if it does not).
    let refusal = |credential: &Credential, node| {
        let credential = credential.clone();
        async move {
            match first_answer(xds, &credential, &node, CLUSTER).await {
                Ok(_) => "served".to_owned(),
                Err(status) => status.message().to_owned(),
            }
        }
    };
    let evil = [(PodMetadata::MODULE, "/tmp/evil.wasm")];
    for (node, why) in [
        (
            pod("shop/db-7", "frontend", "frontend", "127.70.1.1", &[]),
            "not named as a pod of Deployment shop/frontend",
        ),
        (
            pod("shop/frontend-a", "frontend", "frontend", "10.1.2.3", &[]),
            "not in a pod network this controller allows (127.70.0.0/16",
        ),
        (
            pod(
                "shop/checkout-v1-a",
                "checkout-v1",
                "frontend",
                "127.70.1.1",
                &[],
            ),
            "runs as checkout, not frontend",
        ),
        (
            pod(
                "shop/frontend-a",
                "frontend",
                "frontend",
                "127.70.1.1",
                &evil,
            ),
            "not a module this controller serves",
        ),
    ] {
        let refused = refusal(&frontend, node).await;
        assert!(refused.contains(why), "{refused}");
    }
    // Its own pods, as many as one replica and a rolling update's surge: two, no more; each
    // at an address of its own. The streams stay open (a pod lives as long as its sidecar).
    let mut streams = Vec::new();
    for (name, ip) in [
        ("shop/frontend-a", "127.70.1.1"),
        ("shop/frontend-b", "127.70.1.2"),
    ] {
        let node = pod(name, "frontend", "frontend", ip, &[]);
        let mut stream = open(xds, &frontend, first_request(&node, CLUSTER, &[]))
            .await
            .unwrap();
        assert!(stream.next(Duration::from_secs(10)).await.is_ok(), "{name}");
        streams.push(stream);
    }
    let third = pod("shop/frontend-c", "frontend", "frontend", "127.70.1.3", &[]);
    let refused = refusal(&frontend, third).await;
    assert!(
        refused.contains("already has 2 pod(s) registered"),
        "{refused}"
    );
    let taken = pod(
        "shop/checkout-v1-a",
        "checkout-v1",
        "checkout",
        "127.70.1.1",
        &[],
    );
    let refused = refusal(&checkout, taken).await;
    assert!(
        refused.contains("pod address 127.70.1.1 is already pod shop/frontend-a's"),
        "{refused}"
    );
    drop(streams);
}

/// Waits until a problem of the controller's sources mentions `needle`.
async fn refused_change(controller: &Controller, needle: &str) -> String {
    until(
        &format!("a problem naming {needle:?}"),
        Duration::from_secs(15),
        || async {
            let status = controller.status().await;
            Ok(status["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .find(|line| line.contains(needle))
                .map(str::to_owned))
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifests_that_are_not_regular_files_or_too_large_are_refused_while_the_controller_serves()
{
    let mut controller = Controller::start(&[]).await;
    let dir = controller.manifests.path().to_path_buf();
    // A FIFO: reading it would block for good.
    let fifo = dir.join("zz.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let line = refused_change(&controller, "zz.yaml").await;
    assert!(line.contains("is a FIFO, not a regular file"), "{line}");
    assert!(controller.healthz().await < Duration::from_secs(1));
    std::fs::remove_file(&fifo).unwrap();
    // A link to /dev/zero: reading it would never end.
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    let line = refused_change(&controller, "zero.yaml").await;
    assert!(
        line.contains("is a character device, not a regular file"),
        "{line}"
    );
    std::fs::remove_file(dir.join("zero.yaml")).unwrap();
    // 96 MB of YAML: refused by its size, never read into memory.
    let before = controller.resident_kib();
    let big = dir.join("big.yaml");
    let mut file = std::fs::File::create(&big).unwrap();
    let line = "# padding padding padding padding padding padding padding padding padding\n";
    for _ in 0..(96 * 1024 * 1024 / line.len()) {
        file.write_all(line.as_bytes()).unwrap();
    }
    drop(file);
    let refused = refused_change(&controller, "big.yaml").await;
    assert!(refused.contains("a manifest file may have"), "{refused}");
    let after = controller.resident_kib();
    assert!(
        after < before + 20 * 1024,
        "resident memory went from {before} to {after} KiB"
    );
    std::fs::remove_file(&big).unwrap();
    // A sidecar is served all along, and the controller stops on SIGTERM.
    let checkout = controller.credential("shop/checkout");
    let node = pod(
        "shop/checkout-v1-9",
        "checkout-v1",
        "checkout",
        "127.72.3.1",
        &[],
    );
    assert!(
        first_answer(controller.xds_address(), &checkout, &node, CLUSTER)
            .await
            .is_ok()
    );
    let pid = controller.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let stopped = Instant::now();
    while controller.child.try_wait().unwrap().is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "SIGTERM ignored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_port_answers_get_only_and_refuses_headers_past_its_limit() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let controller = Controller::start(&[]).await;
    let posted = weft_e2e::client::request(controller.admin_address(), "POST", "/status", &[])
        .await
        .unwrap();
    assert_eq!(posted.status, 405, "{posted:?}");
    // Headers past 8 KiB: refused, never buffered without end.
    let mut stream = tokio::net::TcpStream::connect(controller.admin_address())
        .await
        .unwrap();
    let head = format!(
        "GET /status HTTP/1.1\r\nhost: weft\r\nx-padding: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert!(controller.healthz().await < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_kept_across_a_restart_are_checked_as_a_new_registration_is() {
    // The file of pods a previous run kept, written by someone else: a pod outside the pod
    // networks, one named as another workload's, and one that is fine.
    let manifests = copy_example("mesh").unwrap();
    let state = tempfile::tempdir().unwrap();
    let kept = |name: &str, workload: &str, sa: &str, ip: &str| {
        serde_json::json!({"namespace": "shop", "name": name, "workload": workload,
            "service_account": sa, "labels": {}, "pod_ip": ip, "app_ip": "127.71.0.1",
            "ports": [], "module": null})
    };
    let pods = serde_json::json!([
        kept("frontend-far", "frontend", "frontend", "10.9.9.9"),
        kept("db-0", "frontend", "frontend", "127.70.3.1"),
        kept("frontend-kept", "frontend", "frontend", "127.70.3.2"),
    ]);
    std::fs::write(state.path().join("registered-pods.json"), pods.to_string()).unwrap();
    let controller =
        Controller::start_in(manifests, state, &["--pod-network", "127.70.0.0/16"]).await;
    let (names, status) = controller.pod_names().await;
    assert_eq!(names, ["shop/frontend-kept"], "{status}");
}
