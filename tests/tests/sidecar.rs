//! Sidecars started with `weft sidecar` against a separate `weft controller` process: the
//! module fetched and checked, identity proven with a credential from `weft cert workload`,
//! and a controller killed with SIGKILL and restarted under load-bearing sidecars that keep
//! serving and resume without a push.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weft_e2e::bootstrap::free_port;
use weft_e2e::client::request;
use weft_e2e::load::{Load, Timeline, judge};
use weft_e2e::mesh::{RemotePod, copy_example, weft_controller, weft_sidecar};
use weft_e2e::paths;
use weft_e2e::poll::until;
use weft_e2e::shop::{Policy, SHIPPED, probes, verdict};
use weft_envoy_config::mesh::{ADMIN_PORT, OUTBOUND_PORT, PodMetadata};

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn weft() -> Command {
    Command::new(paths::workspace_root().join("target/debug/weft"))
}

struct Pod {
    name: &'static str,
    workload: &'static str,
    service_account: &'static str,
    pod_ip: Ipv4Addr,
    app_ip: Ipv4Addr,
}

/// frontend-0, analytics-0 and checkout-v1-0, with pod addresses in 127.SUBNET.0.0/16 and
/// application addresses in the next: each test its own, as they run at once.
fn shop_pods(subnet: u8) -> [Pod; 3] {
    let pod = |n| Ipv4Addr::new(127, subnet, n, 1);
    let app = |n| Ipv4Addr::new(127, subnet + 1, n, 1);
    [
        Pod {
            name: "frontend-0",
            workload: "frontend",
            service_account: "frontend",
            pod_ip: pod(1),
            app_ip: app(1),
        },
        Pod {
            name: "analytics-0",
            workload: "analytics",
            service_account: "analytics",
            pod_ip: pod(2),
            app_ip: app(2),
        },
        Pod {
            name: "checkout-v1-0",
            workload: "checkout-v1",
            service_account: "checkout",
            pod_ip: pod(3),
            app_ip: app(3),
        },
    ]
}

/// The port checkout's application and its sidecar's inbound listener serve (examples/mesh).
const CHECKOUT_PORT: u16 = 8080;

impl Pod {
    /// Its sidecar's admin.
    fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.pod_ip, ADMIN_PORT))
    }

    /// Its sidecar's outbound HTTP proxy.
    fn outbound(&self) -> SocketAddr {
        SocketAddr::from((self.pod_ip, OUTBOUND_PORT))
    }

    /// This pod as `weft_sidecar` takes it, named `name` (namespace/name).
    fn remote<'a>(&'a self, name: &'a str) -> RemotePod<'a> {
        RemotePod {
            pod: name,
            workload: self.workload,
            service_account: self.service_account,
            pod_ip: self.pod_ip,
            app_ip: self.app_ip,
        }
    }
}

fn start_controller(manifests: &Path, state: &Path, xds: u16, admin: u16) -> Process {
    start_controller_with(manifests, state, xds, admin, &[])
}

fn start_controller_with(
    manifests: &Path,
    state: &Path,
    xds: u16,
    admin: u16,
    flags: &[&str],
) -> Process {
    let child = weft_controller(manifests, state, (xds, admin), flags)
        .unwrap()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

async fn status(admin: u16) -> anyhow::Result<serde_json::Value> {
    weft_e2e::client::get_json(SocketAddr::from(([127, 0, 0, 1], admin)), "/status").await
}

/// Waits until the controller at `admin` answers `/status`.
async fn wait_controller(admin: u16) {
    until("the controller", Duration::from_secs(20), || async {
        Ok(status(admin).await.ok())
    })
    .await
    .unwrap();
}

/// The `/metrics` of the controller at `admin`.
async fn controller_metrics(admin: u16) -> weft_e2e::prometheus::Metrics {
    let reply = request(
        SocketAddr::from(([127, 0, 0, 1], admin)),
        "GET",
        "/metrics",
        &[],
    )
    .await
    .unwrap();
    weft_e2e::prometheus::Metrics::parse(&reply.body).unwrap()
}

async fn stat(pod: &Pod, name: &str) -> u64 {
    weft_e2e::client::stat(pod.admin(), name).await.unwrap()
}

/// `weft sidecar --exec envoy` for `pod` in `trust_domain`, with a bootstrap credential issued
/// from the CA in `state` (files under `pods/<pod>`).
fn start_sidecar(
    pod: &Pod,
    trust_domain: &str,
    (state, pods): (&Path, &Path),
    xds: u16,
) -> Process {
    let name = format!("shop/{}", pod.name);
    let remote = pod.remote(&name);
    let child = weft_sidecar(
        &paths::workspace_root().join("target/debug/weft"),
        &remote,
        trust_domain,
        (state, &pods.join(pod.name)),
        xds,
    )
    .unwrap()
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    Process(child)
}

/// [`start_sidecar`] for each of `pods`, in cluster.local.
fn start_sidecars(pods: &[Pod], files: (&Path, &Path), xds: u16) -> Vec<Process> {
    pods.iter()
        .map(|pod| start_sidecar(pod, "cluster.local", files, xds))
        .collect()
}

/// Starts `command` with its stderr read line by line onto the channel returned.
fn spawn_reading_stderr(
    command: &mut std::process::Command,
) -> (Process, std::sync::mpsc::Receiver<String>) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (Process(child), seen)
}

/// Waits until every pod's Envoy is ready.
async fn wait_live(pods: &[Pod]) {
    for pod in pods {
        until(
            &format!("{} live", pod.name),
            Duration::from_secs(30),
            || async {
                let ready = request(pod.admin(), "GET", "/ready", &[]).await;
                Ok(ready.ok().filter(|r| r.status == 200).map(|_| ()))
            },
        )
        .await
        .unwrap();
    }
}

async fn call(from: &Pod, path: &str) -> (u16, String) {
    let reply = request(from.outbound(), "GET", path, &[("host", "checkout")])
        .await
        .unwrap();
    (reply.status, reply.body.trim_end().to_owned())
}

/// checkout-v1's application on `pod`'s application address.
fn start_checkout_app(pod: &Pod) -> Process {
    Process(
        Command::new(paths::workspace_root().join("target/debug/weft-upstream"))
            .arg(format!("{}:{CHECKOUT_PORT}", pod.app_ip))
            .arg("checkout-v1")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Waits until `caller` gets a 200 from checkout.
async fn wait_reaches_checkout(caller: &Pod) {
    until(
        "the caller reaches checkout",
        Duration::from_secs(15),
        || async { Ok((call(caller, "/cart").await.0 == 200).then_some(())) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_of_a_separate_controller_keep_serving_through_its_sigkill_and_resume_without_a_push()
 {
    let pods = shop_pods(70);
    let manifests = copy_example("mesh").unwrap();
    std::fs::remove_file(manifests.path().join("split.yaml")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let pods_dir = tempfile::tempdir().unwrap();
    let (xds, admin) = (free_port().unwrap(), free_port().unwrap());
    let mut controller = start_controller(manifests.path(), state.path(), xds, admin);
    wait_controller(admin).await;

    let app = start_checkout_app(&pods[2]);
    let sidecars: Vec<Process> = start_sidecars(&pods, (state.path(), pods_dir.path()), xds);
    wait_live(&pods).await;
    wait_reaches_checkout(&pods[0]).await;
    assert_eq!(
        call(&pods[0], "/cart").await,
        (200, "upstream checkout-v1: GET /cart".to_owned())
    );
    assert_eq!(call(&pods[1], "/cart").await.0, 403);

    let counted = [
        "listener_manager.lds.update_success",
        "cluster_manager.cds.update_success",
        "cluster.checkout.shop.update_success",
        "extension_config_discovery.http_filter.weft.outbound.update_success",
    ];
    let mut before = Vec::new();
    for name in counted {
        before.push(stat(&pods[0], name).await);
    }

    // Traffic all along: every answer as the policy says, none lost.
    let load = Load::start(
        probes(pods[0].outbound(), pods[1].outbound()),
        Duration::from_millis(20),
        5_000,
    );
    let load_probes = load.probes();
    tokio::time::sleep(Duration::from_millis(500)).await;
    controller.0.kill().unwrap(); // SIGKILL
    controller.0.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _restarted = start_controller(manifests.path(), state.path(), xds, admin);
    until(
        "every sidecar reconnected and resumed",
        Duration::from_secs(30),
        || async {
            let Ok(status) = status(admin).await else {
                return Ok(None);
            };
            let pods = status["pods"].as_array().cloned().unwrap_or_default();
            let resumed = pods.len() == pods.len()
                && pods.iter().all(|p| {
                    p["proxy"]["connected"] == true
                        && p["ready"] == true
                        && p["proxy"]["types"]["sds"]["acked"].is_string()
                        // It applied everything the new controller has for it.
                        && p["in_sync"] == true
                });
            Ok(resumed.then_some(()))
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = load.finish().await;
    // Only checkout-v1 runs: the split (removed) sends everything there.
    let only_v1 = Policy {
        backends: &["checkout-v1"],
        ..SHIPPED
    };
    let report = judge(&records, &load_probes, &Timeline::new(only_v1), verdict);
    println!("through the controller's SIGKILL and restart: {report}");
    assert_eq!(report.wrong_count, 0, "{report}");
    // Listeners, clusters, endpoints and plugin configuration were not pushed again (the new
    // controller only issued new certificates, over SDS).
    for (name, count) in counted.iter().zip(before) {
        assert_eq!(stat(&pods[0], name).await, count, "{name}");
    }
    let metrics = controller_metrics(admin).await;
    for kind in ["cds", "eds", "lds", "rds", "ecds"] {
        assert_eq!(
            metrics.counter("weft_controller_xds_pushes_total", &[("type", kind)]),
            0.0,
            "the restarted controller pushed {kind}"
        );
    }
    assert_eq!(call(&pods[0], "/cart").await.0, 200);
    assert_eq!(answer_past_certificate_swap(&pods[1], "/cart").await, 403);
    drop(sidecars);
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_whose_module_cannot_be_had_listens_on_nothing_and_starts_once_it_can() {
    let pods = shop_pods(76);
    let manifests = copy_example("mesh").unwrap();
    std::fs::remove_file(manifests.path().join("split.yaml")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let pods_dir = tempfile::tempdir().unwrap();
    let (xds, admin) = (free_port().unwrap(), free_port().unwrap());
    // The CA exists (the bootstrap credentials come from it), but no controller serves the
    // module yet.
    weft()
        .args(["cert", "ca", "--out"])
        .arg(state.path())
        .status()
        .unwrap();
    let checkout = &pods[2];
    let name = format!("shop/{}", checkout.name);
    let remote = checkout.remote(&name);
    let mut waiting = weft_sidecar(
        &paths::workspace_root().join("target/debug/weft"),
        &remote,
        "cluster.local",
        (state.path(), &pods_dir.path().join(checkout.name)),
        xds,
    )
    .unwrap();
    let (waiting, seen) = spawn_reading_stderr(&mut waiting);
    let tried = weft_e2e::up::wait_for(&seen, "trying again", Duration::from_secs(10));
    assert!(
        tried.iter().any(|line| line.contains("cannot be reached")),
        "{tried:#?}"
    );
    // Waiting: nothing listens on the pod's ports, so nothing can pass unfiltered.
    weft_e2e::up::wait_for(&seen, "trying again", Duration::from_secs(10));
    for port in [CHECKOUT_PORT, ADMIN_PORT, OUTBOUND_PORT] {
        let refused = tokio::net::TcpStream::connect((checkout.pod_ip, port)).await;
        assert!(
            refused.is_err(),
            "something listens on {}:{port}",
            checkout.pod_ip
        );
    }

    // The module comes: the sidecar starts by itself and serves, enforcing.
    let _controller = start_controller(manifests.path(), state.path(), xds, admin);
    let _app = start_checkout_app(checkout);
    let callers: Vec<Process> = start_sidecars(&pods[..2], (state.path(), pods_dir.path()), xds);
    wait_live(&pods).await;
    wait_reaches_checkout(&pods[0]).await;
    assert_eq!(call(&pods[1], "/cart").await.0, 403);
    drop(callers);
    drop(waiting);
}

#[test]
fn a_sidecar_refuses_to_start_when_the_module_does_not_match_its_pin() {
    let out = tempfile::tempdir().unwrap();
    let manifests = copy_example("mesh").unwrap();
    let state = tempfile::tempdir().unwrap();
    let (xds, admin) = (free_port().unwrap(), free_port().unwrap());
    let _controller = start_controller(manifests.path(), state.path(), xds, admin);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(wait_controller(admin));
    let issued = weft()
        .args(["cert", "workload", "--ca"])
        .arg(state.path())
        .args(["--identity", "shop/frontend", "--out"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(issued.success());
    std::fs::copy(
        state.path().join(weft_certs::CA_CERT_FILE),
        out.path().join(weft_certs::CA_CERT_FILE),
    )
    .unwrap();
    let pinned = weft()
        .arg("sidecar")
        .args(["--xds", &format!("127.0.0.1:{xds}")])
        .args([
            "--pod",
            "shop/frontend-0",
            "--workload",
            "frontend",
            "--service-account",
            "frontend",
        ])
        .args(["--pod-ip", "127.70.9.1", "--app-ip", "127.71.9.1"])
        .arg("--credentials")
        .arg(out.path())
        .arg("--out")
        .arg(out.path())
        .args(["--exec", "/bin/false"])
        .args(["--module-sha256", &"0".repeat(64)])
        .output()
        .unwrap();
    assert!(!pinned.status.success());
    let stderr = String::from_utf8_lossy(&pinned.stderr);
    assert!(
        stderr.contains("not the pinned") && stderr.contains("not starting Envoy"),
        "{stderr}"
    );
    assert!(!out.path().join("bootstrap.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_sidecar_went_away_is_forgotten_and_leaves_its_callers_endpoints() {
    const CALLER: Pod = Pod {
        name: "frontend-0",
        workload: "frontend",
        service_account: "frontend",
        pod_ip: Ipv4Addr::new(127, 72, 1, 1),
        app_ip: Ipv4Addr::new(127, 73, 1, 1),
    };
    const CALLED: Pod = Pod {
        name: "checkout-v1-0",
        workload: "checkout-v1",
        service_account: "checkout",
        pod_ip: Ipv4Addr::new(127, 72, 3, 1),
        app_ip: Ipv4Addr::new(127, 73, 3, 1),
    };
    let manifests = copy_example("mesh").unwrap();
    std::fs::remove_file(manifests.path().join("split.yaml")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let pods_dir = tempfile::tempdir().unwrap();
    let (xds, admin) = (free_port().unwrap(), free_port().unwrap());
    let _controller = start_controller_with(
        manifests.path(),
        state.path(),
        xds,
        admin,
        &["--forget-after-ms", "1000", "--trust-domain", "example.org"],
    );
    wait_controller(admin).await;
    let _app = start_checkout_app(&CALLED);
    // In a trust domain of its own: every identity check (the controller's, the admission's,
    // the peers') is made in it.
    let files = (state.path(), pods_dir.path());
    let _caller = start_sidecar(&CALLER, "example.org", files, xds);
    let called = start_sidecar(&CALLED, "example.org", files, xds);
    wait_live(&[CALLER, CALLED]).await;
    wait_reaches_checkout(&CALLER).await;
    let identities: Vec<String> = status(admin).await.unwrap()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["proxy"]["identity"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        identities,
        [
            "spiffe://example.org/ns/shop/sa/checkout",
            "spiffe://example.org/ns/shop/sa/frontend"
        ]
    );
    let members = "cluster.checkout.shop.membership_total";
    assert_eq!(stat(&CALLER, members).await, 1);

    drop(called); // SIGKILL: the sidecar never says goodbye
    let gone = until(
        "checkout-v1-0 forgotten",
        Duration::from_secs(10),
        || async {
            let status = status(admin).await?;
            let names: Vec<String> = status["pods"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p["pod"].as_str().map(str::to_owned))
                .collect();
            Ok((!names.iter().any(|n| n.ends_with(CALLED.name))).then_some(names))
        },
    )
    .await
    .unwrap();
    assert_eq!(gone, vec![format!("shop/{}", CALLER.name)]);
    until(
        "frontend's endpoints of checkout emptied",
        Duration::from_secs(10),
        || async { Ok((stat(&CALLER, members).await == 0).then_some(())) },
    )
    .await
    .unwrap();
    assert_eq!(call(&CALLER, "/cart").await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_restarted_under_load_serves_nothing_until_configured_and_lets_no_request_through_unfiltered()
 {
    let restarted = shop_pods(74);
    let checkout = &restarted[2];
    let manifests = copy_example("mesh").unwrap();
    std::fs::remove_file(manifests.path().join("split.yaml")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let pods_dir = tempfile::tempdir().unwrap();
    let (xds, admin) = (free_port().unwrap(), free_port().unwrap());
    let _controller = start_controller(manifests.path(), state.path(), xds, admin);
    wait_controller(admin).await;
    let _app = start_checkout_app(checkout);
    let files = (state.path(), pods_dir.path());
    let mut sidecars = start_sidecars(&restarted, files, xds);
    wait_live(&restarted).await;
    wait_reaches_checkout(&restarted[0]).await;

    let load = Load::start(
        probes(restarted[0].outbound(), restarted[1].outbound()),
        Duration::from_millis(10),
        5_000,
    );
    let load_probes = load.probes();
    // Meanwhile a caller with no mesh identity knocks on checkout's inbound port directly.
    let inbound = SocketAddr::from((checkout.pod_ip, CHECKOUT_PORT));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let knocker = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = match tokio::time::timeout(
                    Duration::from_secs(2),
                    request(inbound, "GET", "/cart", &[("host", "checkout")]),
                )
                .await
                {
                    Ok(Ok(reply)) => reply.status.to_string(),
                    Ok(Err(err)) if format!("{err:#}").contains("refused") => {
                        "connection refused".to_owned()
                    }
                    Ok(Err(_)) => "no HTTP answer".to_owned(),
                    Err(_) => "timeout".to_owned(),
                };
                answers.push(answer);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // checkout-v1's sidecar dies (SIGKILL) and is started again at once, while the controller
    // is up and traffic flows.
    let killed_at = std::time::Instant::now();
    drop(sidecars.pop());
    sidecars.push(start_sidecar(checkout, "cluster.local", files, xds));
    let served_at = until(
        "the restarted sidecar serving",
        Duration::from_secs(30),
        || async {
            let (status, _) = call(&restarted[0], "/cart").await;
            Ok((status == 200).then(std::time::Instant::now))
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let knocked = knocker.await.unwrap();
    let records = load.finish().await;

    // While it restarts, a call may fail (checkout has one replica); it is never let through
    // unfiltered: analytics and /admin are refused throughout, and once it serves, nothing
    // fails.
    let only_v1 = Policy {
        backends: &["checkout-v1"],
        ..SHIPPED
    };
    let failed = |answer: &weft_e2e::load::Answer| {
        matches!(answer, weft_e2e::load::Answer::Error(_))
            || matches!(answer, weft_e2e::load::Answer::Reply { status: 503, .. })
    };
    let failed_while_down = records.iter().filter(|r| failed(&r.answer)).count();
    let report = judge(
        &records,
        &load_probes,
        &Timeline::new(only_v1),
        |probe, answer, policies| {
            if failed(answer) {
                return Ok(());
            }
            verdict(probe, answer, policies)
        },
    );
    let late_failures: Vec<_> = records
        .iter()
        .filter(|record| record.sent > served_at && failed(&record.answer))
        .collect();
    let mut knocks = std::collections::BTreeMap::<String, usize>::new();
    for answer in &knocked {
        *knocks.entry(answer.clone()).or_default() += 1;
    }
    println!(
        "through checkout-v1's sidecar restart: {report}; {failed_while_down} failed while it was down ({:?} from the kill until it served); the caller without a mesh identity got {knocks:?}",
        served_at - killed_at,
    );
    assert_eq!(report.wrong_count, 0, "{report}");
    assert!(late_failures.is_empty(), "{late_failures:#?}");
    assert!(
        knocks
            .keys()
            .all(|answer| answer == "connection refused" || answer == "no HTTP answer"),
        "a caller without a mesh identity was answered: {knocks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_takes_no_module_from_a_server_that_is_not_its_controller() {
    // The sidecar's credential and the controller it trusts come from one CA; an impostor
    // controller (its own state, so its own CA) answers on the address it is given.
    let pods = shop_pods(78);
    let manifests = copy_example("mesh").unwrap();
    let (ours, impostor) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = tempfile::tempdir().unwrap();
    weft()
        .args(["cert", "ca", "--out"])
        .arg(ours.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let (xds, admin) = (free_port().unwrap(), free_port().unwrap());
    let _impostor = start_controller(manifests.path(), impostor.path(), xds, admin);
    wait_controller(admin).await;
    let checkout = &pods[2];
    let name = format!("shop/{}", checkout.name);
    let remote = checkout.remote(&name);
    let mut waiting = weft_sidecar(
        &paths::workspace_root().join("target/debug/weft"),
        &remote,
        "cluster.local",
        (ours.path(), out.path()),
        xds,
    )
    .unwrap();
    let (_waiting, seen) = spawn_reading_stderr(&mut waiting);
    let tried = weft_e2e::up::wait_for(&seen, "trying again", Duration::from_secs(10));
    assert!(tried.iter().any(|line| line.contains("TLS")), "{tried:#?}");
    weft_e2e::up::wait_for(&seen, "trying again", Duration::from_secs(10));
    assert!(
        !out.path().join("bootstrap.json").exists(),
        "no Envoy is started with a module from an impostor"
    );
    assert!(!out.path().join("modules").exists());
}

/// A TCP forwarder on loopback whose target can be switched: switching cuts every connection
/// it carries, as a controller replica going away does, and new ones go to the new target.
struct Switch {
    port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Switch {
    async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(target));
        let (cut, _) = tokio::sync::watch::channel(0_u64);
        let (to, cuts) = (target.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let port = to.load(std::sync::atomic::Ordering::SeqCst);
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            target,
            cut,
            task,
        }
    }

    fn switch(&self, to: u16) {
        self.target.store(to, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_modify(|n| *n += 1);
    }
}

/// What a proxy of `credential`'s identity, as `node`, is served of `type_url` (naming
/// `names`): the version and the resources.
async fn served(
    xds: u16,
    credential: &weft_e2e::ads::Credential,
    node: &weft_envoy_config::pb::envoy::config::core::v3::Node,
    type_url: &str,
    names: &[&str],
) -> (String, Vec<weft_envoy_config::pb::google::protobuf::Any>) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut stream = weft_e2e::ads::open(
        SocketAddr::from(([127, 0, 0, 1], xds)),
        credential,
        weft_e2e::ads::first_request(node, type_url, &names),
    )
    .await
    .unwrap();
    let response = stream.next(Duration::from_secs(10)).await.unwrap();
    (response.version_info, response.resources)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_identical_versions_and_sidecars_moving_between_them_get_only_new_certificates()
 {
    use weft_xds::snapshot::{CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET};
    let pods = shop_pods(78);
    let manifests = copy_example("mesh").unwrap();
    let (first_state, second_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pods_dir = tempfile::tempdir().unwrap();
    let (first_xds, first_admin) = (free_port().unwrap(), free_port().unwrap());
    let _first = start_controller(manifests.path(), first_state.path(), first_xds, first_admin);
    wait_controller(first_admin).await;
    let switch = Switch::start(first_xds).await;
    let app = start_checkout_app(&pods[2]);
    let sidecars = start_sidecars(&pods, (first_state.path(), pods_dir.path()), switch.port);
    wait_live(&pods).await;
    wait_reaches_checkout(&pods[0]).await;
    let registered = first_state
        .path()
        .join(weft_controller::registry::REGISTERED_FILE);
    until(
        "the registered pods kept",
        Duration::from_secs(10),
        || async {
            let kept = std::fs::read_to_string(&registered).unwrap_or_default();
            Ok(pods.iter().all(|pod| kept.contains(pod.name)).then_some(()))
        },
    )
    .await
    .unwrap();

    // The second replica reads the same manifests with the same CA, and knows the same pods
    // (in Kubernetes from the API server; here from the first one's state).
    for file in [
        weft_certs::CA_CERT_FILE,
        weft_certs::CA_KEY_FILE,
        weft_controller::registry::REGISTERED_FILE,
    ] {
        std::fs::copy(
            first_state.path().join(file),
            second_state.path().join(file),
        )
        .unwrap();
    }
    let (second_xds, second_admin) = (free_port().unwrap(), free_port().unwrap());
    let _second = start_controller(
        manifests.path(),
        second_state.path(),
        second_xds,
        second_admin,
    );
    wait_controller(second_admin).await;

    // Every type but the workload certificate: the same versions and bytes from both.
    // Asked as frontend-0's sidecar describes itself (its module file included).
    let kept: Vec<weft_controller::mesh::Pod> =
        serde_json::from_str(&std::fs::read_to_string(&registered).unwrap()).unwrap();
    let module = kept
        .iter()
        .find(|pod| pod.name == "frontend-0")
        .and_then(|pod| pod.module.clone())
        .expect("the sidecar names its module");
    let frontend = weft_e2e::ads::Credential::issue(first_state.path(), "shop/frontend").unwrap();
    let node = weft_e2e::ads::node(
        "shop/frontend-0",
        "shop/frontend",
        &[
            (PodMetadata::WORKLOAD, "frontend"),
            (PodMetadata::POD_IP, &pods[0].pod_ip.to_string()),
            (PodMetadata::APP_IP, &pods[0].app_ip.to_string()),
            (PodMetadata::MODULE, &module),
        ],
    );
    let compared = [
        (CLUSTER, vec![]),
        (LISTENER, vec![]),
        (ROUTE, vec![weft_envoy_config::mesh::OUTBOUND]),
        (ENDPOINT, vec!["checkout.shop"]),
        (
            EXTENSION_CONFIG,
            vec![weft_envoy_config::mesh::OUTBOUND_PLUGIN],
        ),
        (SECRET, vec![weft_envoy_config::mesh::TRUST_BUNDLE]),
    ];
    for (type_url, names) in &compared {
        let first = served(first_xds, &frontend, &node, type_url, names).await;
        let second = until(
            "the second replica serving",
            Duration::from_secs(10),
            || async {
                let second = served(second_xds, &frontend, &node, type_url, names).await;
                Ok((!second.1.is_empty()).then_some(second))
            },
        )
        .await
        .unwrap();
        assert!(!first.1.is_empty(), "{type_url}");
        assert_eq!(first.0, second.0, "{type_url}: versions differ");
        assert!(first.1 == second.1, "{type_url}: resources differ");
    }
    let spiffe = [weft_envoy_config::mesh::WORKLOAD_CERTIFICATE];
    let certificate = |xds| served(xds, &frontend, &node, SECRET, &spiffe);
    assert_ne!(
        certificate(first_xds).await.0,
        certificate(second_xds).await.0
    );

    // Every sidecar moves to the second replica: it is sent its new certificate and nothing
    // else.
    let counted = [
        "listener_manager.lds.update_success",
        "cluster_manager.cds.update_success",
        "cluster.checkout.shop.update_success",
        "http.outbound.rds.outbound.update_success",
        "extension_config_discovery.http_filter.weft.outbound.update_success",
    ];
    let mut before = Vec::new();
    for pod in &pods {
        for name in counted {
            before.push(stat(pod, name).await);
        }
    }
    let pushes = || async {
        let metrics = controller_metrics(second_admin).await;
        ["cds", "eds", "lds", "rds", "ecds", "sds"]
            .map(|kind| metrics.counter("weft_controller_xds_pushes_total", &[("type", kind)]))
    };
    // (What this test asked the second replica itself was pushed to it.)
    let pushed_before = pushes().await;
    switch.switch(second_xds);
    until(
        "every sidecar on the second replica, in sync",
        Duration::from_secs(30),
        || async {
            let pods = status(second_admin).await?["pods"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let moved = pods.len() == 3
                && pods.iter().all(|p| {
                    p["proxy"]["connected"] == true
                        && p["in_sync"] == true
                        && p["proxy"]["types"]["sds"]["acked"].is_string()
                });
            Ok(moved.then_some(()))
        },
    )
    .await
    .unwrap();
    let mut after = Vec::new();
    for pod in &pods {
        for name in counted {
            after.push(stat(pod, name).await);
        }
    }
    assert_eq!(after, before, "{counted:?} per pod");
    let pushed = pushes().await;
    assert_eq!(
        pushed[..5],
        pushed_before[..5],
        "the second replica pushed cds, eds, lds, rds or ecds"
    );
    assert!(
        pushed[5] >= pushed_before[5] + 3.0,
        "each sidecar its certificate"
    );
    // The policy holds on the second replica's certificates (a request while a sidecar
    // swaps its certificate may be answered 503: polled, not asserted once).
    until(
        "frontend reaching checkout on the new certificates",
        Duration::from_secs(10),
        || async { Ok((call(&pods[0], "/cart").await.0 == 200).then_some(())) },
    )
    .await
    .unwrap();
    assert_eq!(answer_past_certificate_swap(&pods[1], "/cart").await, 403);
    drop(sidecars);
    drop(app);
}

/// The status of `pod`'s call to `path` once its sidecar is past a certificate swap: a request
/// while a sidecar swaps its certificate may be answered 503, so that one is asked again.
async fn answer_past_certificate_swap(pod: &Pod, path: &str) -> u16 {
    until(
        "an answer other than 503",
        Duration::from_secs(10),
        || async {
            let status = call(pod, path).await.0;
            Ok((status != 503).then_some(status))
        },
    )
    .await
    .unwrap()
}
