//! `weft-xds-bench` (run by `make bench`): the controller under many proxies. Starts
//! `weft controller` (the release build) on a generated mesh of N pods spread as a real mesh
//! is (workloads of 10 pods, 10 workloads per namespace, each with its Service and a
//! TrafficTarget), connects N simulated proxies that speak real ADS over gRPC and mTLS as Envoy
//! does (subscribe to CDS and LDS, then to the EDS, RDS, SDS and ECDS resources those name; ACK
//! every response), then edits the manifests on disk several times and measures, per change,
//! the time from the file's rename to each affected proxy receiving it (it ACKs at once): a
//! TrafficSplit edit (every proxy's plugin configuration), a TrafficTarget edit (the plugin
//! configuration of one workload's 10 proxies) and a Service edit (every proxy's clusters).
//! Also the controller's resident memory per connected proxy and CPU time per change. Beside them, a
//! few real Envoys (`weft sidecar --exec envoy`, default 3) are measured the same way: from the
//! rename to the Envoy's counter of applied plugin updates moving. Prints a Markdown table.
//! Then churn: cycles in which a workload appears with a tenth as many pods as the mesh, their
//! proxies connect, get their configuration and disconnect, and the workload goes; the
//! controller's memory once it forgot them is compared with before.
//! Options: `--proxies N,N,...` (default 100,1000), `--changes N` (default 10), `--envoys N`,
//! `--churn-cycles N` (default 5).
//!
//! Then a probe of the floor under the memory per proxy: the same ADS service (weft-xds over
//! tonic, mTLS) in a process of its own with nothing to serve, and N clients that each open a
//! connection and an ADS stream and send one request: its resident memory per connection is
//! what the transport alone costs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use prost::Message;
use tokio::sync::mpsc;
use weft_certs::{CertifiedKey, MeshCa, Validity};
use weft_e2e::bootstrap::free_port;
use weft_e2e::client::{get, get_json, stat};
use weft_e2e::mesh::{RemotePod, weft_sidecar};
use weft_e2e::paths;
use weft_e2e::poll::until;
use weft_envoy_config::mesh::{
    ADMIN_PORT, OUTBOUND, OUTBOUND_PLUGIN, PodMetadata, inbound_plugin_name,
};
use weft_envoy_config::mesh::{TRUST_BUNDLE, WORKLOAD_CERTIFICATE};
use weft_envoy_config::pb::envoy::config::cluster::v3::Cluster;
use weft_envoy_config::pb::envoy::config::core::v3::Node;
use weft_envoy_config::pb::envoy::config::listener::v3::Listener;
use weft_envoy_config::pb::envoy::service::discovery::v3::DiscoveryRequest;
use weft_envoy_config::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_xds::snapshot::{CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET};

/// Pods per workload (a Deployment with its ServiceAccount and Service).
const PODS_PER_WORKLOAD: usize = 10;

/// Workloads per namespace.
const WORKLOADS_PER_NAMESPACE: usize = 10;

/// The namespace of workload `w`.
fn namespace_of(workload: usize) -> String {
    format!("bench-{}", workload / WORKLOADS_PER_NAMESPACE)
}

/// The namespace of the split, the real Envoys and the churn.
const FIRST: &str = "bench-0";

/// How many simulated proxies connect at once.
const CONNECT_WAVE: usize = 500;

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn manifests(dir: &Path, pods: usize, envoys: usize, weight: u32) -> anyhow::Result<()> {
    let workloads = pods.div_ceil(PODS_PER_WORKLOAD).max(3);
    let namespaces = workloads.div_ceil(WORKLOADS_PER_NAMESPACE);
    for n in 0..namespaces {
        let ns = format!("bench-{n}");
        let mut yaml = format!(
            "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: all, namespace: {ns}}}\nspec:\n  matches: [{{name: any, pathRegex: \".*\"}}]\n---\n"
        );
        let members =
            (n * WORKLOADS_PER_NAMESPACE)..((n + 1) * WORKLOADS_PER_NAMESPACE).min(workloads);
        let size = members.len();
        for i in members {
            let caller = n * WORKLOADS_PER_NAMESPACE + (i + 1) % size;
            yaml += &format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app-{i}, namespace: {ns}}}\nspec:\n  replicas: {PODS_PER_WORKLOAD}\n  template:\n    metadata: {{labels: {{app: app-{i}}}}}\n    spec:\n      serviceAccountName: sa-{i}\n      containers: [{{command: [app], ports: [{{containerPort: 8080}}]}}]\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: {ns}}}\nspec:\n  selector: {{app: app-{i}}}\n  ports: [{{port: 8080}}]\n---\n\
                 apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: to-{i}, namespace: {ns}}}\nspec:\n  destination: {{kind: ServiceAccount, name: sa-{i}, namespace: {ns}}}\n  sources: [{{kind: ServiceAccount, name: sa-{caller}, namespace: {ns}}}]\n  rules: [{{kind: HTTPRouteGroup, name: all}}]\n---\n",
            );
        }
        std::fs::write(dir.join(format!("{ns}.yaml")), yaml)?;
    }
    let real = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: real, namespace: {FIRST}}}\nspec:\n  replicas: {}\n  template:\n    metadata: {{labels: {{app: real}}}}\n    spec:\n      serviceAccountName: sa-real\n      containers: [{{command: [app], ports: [{{containerPort: 8080}}]}}]\n",
        envoys.max(1)
    );
    std::fs::write(dir.join("real.yaml"), real)?;
    write_split(dir, weight)?;
    write_target(dir, 0)?;
    write_extra_port(dir, 0)
}

/// Writes `name` in `dir` as editors and tools do: a new file renamed over the old.
fn replace(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let staging = dir.join(format!(".{name}.tmp"));
    std::fs::write(&staging, text)?;
    std::fs::rename(&staging, dir.join(name))?;
    Ok(())
}

fn write_split(dir: &Path, weight: u32) -> anyhow::Result<()> {
    let split = format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: canary, namespace: {FIRST}}}\nspec:\n  service: svc-0\n  backends:\n  - {{service: svc-1, weight: {weight}}}\n  - {{service: svc-2, weight: {}}}\n",
        100 - weight
    );
    replace(dir, "split.yaml", &split)
}

/// The workload whose proxies a TrafficTarget edit reaches.
const EDITED_WORKLOAD: usize = 3;

/// A TrafficTarget to workload [`EDITED_WORKLOAD`] from a caller that changes with `edit`.
fn write_target(dir: &Path, edit: usize) -> anyhow::Result<()> {
    let target = format!(
        "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: edited, namespace: {FIRST}}}\nspec:\n  destination: {{kind: ServiceAccount, name: sa-{EDITED_WORKLOAD}, namespace: {FIRST}}}\n  sources: [{{kind: ServiceAccount, name: sa-{}, namespace: {FIRST}}}]\n  rules: [{{kind: HTTPRouteGroup, name: all}}]\n",
        4 + edit % 2
    );
    replace(dir, "target.yaml", &target)
}

/// A Service of its own with a TCP port that changes with `edit`: every proxy gets a new
/// cluster.
fn write_extra_port(dir: &Path, edit: usize) -> anyhow::Result<()> {
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: extra, namespace: {FIRST}}}\nspec:\n  selector: {{app: app-1}}\n  ports: [{{name: tcp-extra, port: {}}}]\n",
        9000 + edit
    );
    replace(dir, "extra.yaml", &service)
}

/// What the simulated proxies report: a response of a type that matters to the bench.
#[derive(Debug)]
struct Received {
    proxy: usize,
    at: Instant,
    /// ECDS or CDS.
    kind: &'static str,
}

#[derive(Clone)]
struct Identity {
    cert: CertifiedKey,
    ca_pem: String,
}

impl Identity {
    /// mTLS as this identity, verifying the controller's certificate (for `localhost`).
    fn client_tls(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert.cert_pem,
                &self.cert.key_pem,
            ))
    }
}

/// A simulated proxy's pod.
struct SimPod {
    /// Node id, namespace/name.
    id: String,
    namespace: String,
    workload: String,
    service_account: String,
    pod_ip: Ipv4Addr,
    app_ip: Ipv4Addr,
}

impl SimPod {
    /// Replica `replica` of workload `workload` in `namespace`; `slot` numbers the pod among
    /// every pod of the run, for addresses of its own in 127.90-99 (pods) and 127.110-119
    /// (applications).
    fn new(
        namespace: &str,
        workload: &str,
        service_account: &str,
        slot: usize,
        replica: usize,
    ) -> Self {
        let address = |base: usize| {
            let octet = |n: usize| u8::try_from(n).unwrap_or(u8::MAX);
            let block = slot / 250;
            Ipv4Addr::new(
                127,
                octet(base + block / 250),
                octet(block % 250 + 1),
                octet(slot % 250 + 1),
            )
        };
        Self {
            id: format!("{namespace}/{workload}-{replica}"),
            namespace: namespace.to_owned(),
            workload: workload.to_owned(),
            service_account: service_account.to_owned(),
            pod_ip: address(90),
            app_ip: address(110),
        }
    }

    /// Pod `index` of the generated mesh: replica `index % 10` of workload `index / 10`.
    fn of_mesh(index: usize) -> Self {
        let workload = index / PODS_PER_WORKLOAD;
        Self::new(
            &namespace_of(workload),
            &format!("app-{workload}"),
            &format!("sa-{workload}"),
            index,
            index % PODS_PER_WORKLOAD,
        )
    }
}

/// One simulated proxy: Envoy's subscriptions, ACKs, and a report each time its plugin
/// configuration (ECDS) changes.
async fn proxy(
    index: usize,
    pod: SimPod,
    address: String,
    identity: Identity,
    report: mpsc::UnboundedSender<Received>,
) -> anyhow::Result<()> {
    // As Envoy does, a connection that fails (a listen queue overflowing when thousands
    // connect at once) is tried again after a jittered backoff.
    let endpoint =
        tonic::transport::Endpoint::from_shared(address)?.tls_config(identity.client_tls())?;
    let mut backoff = Duration::from_millis(100);
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(_) if backoff < Duration::from_secs(30) => {
                tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64())).await;
                backoff *= 2;
            }
            Err(err) => return Err(err.into()),
        }
    };
    let node = weft_envoy_config::mesh::described_node(
        &pod.id,
        &format!("{}/{}", pod.namespace, pod.service_account),
        &PodMetadata {
            workload: pod.workload.clone(),
            pod_ip: Some(pod.pod_ip),
            app_ip: Some(pod.app_ip),
            module: None,
        },
    );
    let (sender, receiver) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let request =
        |type_url: &str, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names: names,
            version_info: version,
            response_nonce: nonce,
            ..DiscoveryRequest::default()
        };
    let mut first = request(CLUSTER, Vec::new(), String::new(), String::new());
    first.node = Some(node);
    sender.send(first)?;
    sender.send(request(LISTENER, Vec::new(), String::new(), String::new()))?;
    sender.send(request(
        SECRET,
        vec![WORKLOAD_CERTIFICATE.to_owned(), TRUST_BUNDLE.to_owned()],
        String::new(),
        String::new(),
    ))?;
    sender.send(request(
        ROUTE,
        vec![OUTBOUND.to_owned()],
        String::new(),
        String::new(),
    ))?;
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(
            receiver,
        ))
        .await?
        .into_inner();
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    names.insert(
        SECRET.to_owned(),
        vec![WORKLOAD_CERTIFICATE.to_owned(), TRUST_BUNDLE.to_owned()],
    );
    names.insert(ROUTE.to_owned(), vec![OUTBOUND.to_owned()]);
    while let Some(response) = responses.message().await? {
        let at = Instant::now();
        let type_url = response.type_url.clone();
        let subscribed = names.get(&type_url).cloned().unwrap_or_default();
        sender.send(request(
            &type_url,
            subscribed,
            response.version_info.clone(),
            response.nonce.clone(),
        ))?;
        // Follow what the response names, as Envoy does.
        match type_url.as_str() {
            CLUSTER => {
                let _ = report.send(Received {
                    proxy: index,
                    at,
                    kind: CLUSTER,
                });
                let clusters: BTreeSet<String> = response
                    .resources
                    .iter()
                    .filter_map(|any| Cluster::decode(any.value.as_slice()).ok())
                    .filter(|c| c.eds_cluster_config.is_some())
                    .map(|c| c.name)
                    .collect();
                let list: Vec<String> = clusters.into_iter().collect();
                if names.get(ENDPOINT) != Some(&list) {
                    names.insert(ENDPOINT.to_owned(), list.clone());
                    sender.send(request(ENDPOINT, list, String::new(), String::new()))?;
                }
            }
            LISTENER => {
                let mut plugins: Vec<String> = response
                    .resources
                    .iter()
                    .filter_map(|any| Listener::decode(any.value.as_slice()).ok())
                    .filter_map(|l| match l.name.as_str() {
                        OUTBOUND => Some(OUTBOUND_PLUGIN.to_owned()),
                        other => other
                            .strip_prefix("inbound:")
                            .and_then(|port| port.parse().ok())
                            .map(inbound_plugin_name),
                    })
                    .collect();
                plugins.sort();
                if names.get(EXTENSION_CONFIG) != Some(&plugins) {
                    names.insert(EXTENSION_CONFIG.to_owned(), plugins.clone());
                    sender.send(request(
                        EXTENSION_CONFIG,
                        plugins,
                        String::new(),
                        String::new(),
                    ))?;
                }
            }
            EXTENSION_CONFIG => {
                let _ = report.send(Received {
                    proxy: index,
                    at,
                    kind: EXTENSION_CONFIG,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("VmRSS")
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// The counter of a sidecar's applied outbound plugin updates: the split edits change it.
const OUTBOUND_PLUGIN_UPDATES: &str =
    "extension_config_discovery.http_filter.weft.outbound.update_success";

/// A real Envoy of the bench: `weft sidecar --exec envoy` for one pod of workload `real`.
struct RealEnvoy {
    _sidecar: Controller,
    admin: SocketAddr,
}

fn weft_binary() -> std::path::PathBuf {
    paths::workspace_root().join("target/release/weft")
}

/// Starts real Envoy `index` against the controller at `xds` (and its module), with a
/// bootstrap credential issued from the CA in `state`, files under `dir`.
fn real_envoy(index: usize, state: &Path, dir: &Path, xds: u16) -> anyhow::Result<RealEnvoy> {
    let pod_ip = Ipv4Addr::new(127, 92, 0, u8::try_from(index + 1)?);
    let name = format!("{FIRST}/real-{index}");
    let pod = RemotePod {
        pod: &name,
        workload: "real",
        service_account: "sa-real",
        pod_ip,
        app_ip: Ipv4Addr::new(127, 93, 0, u8::try_from(index + 1)?),
    };
    let child = weft_sidecar(
        &weft_binary(),
        &pod,
        weft_policy::bundle::DEFAULT_TRUST_DOMAIN,
        (state, &dir.join(format!("envoy-{index}"))),
        xds,
    )?
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()?;
    Ok(RealEnvoy {
        _sidecar: Controller(child),
        admin: SocketAddr::from((pod_ip, ADMIN_PORT)),
    })
}

/// How long after `written` the applied-update counter of `envoy` passes `before`.
async fn applied(envoy: SocketAddr, before: u64, written: Instant) -> anyhow::Result<Duration> {
    let deadline = written + Duration::from_secs(30);
    loop {
        if stat(envoy, OUTBOUND_PLUGIN_UPDATES).await? > before {
            return Ok(written.elapsed());
        }
        ensure!(
            Instant::now() < deadline,
            "a change did not reach {envoy} in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What one run measured: the row of the convergence table, and of the churn table.
struct Rows {
    convergence: String,
    targeted: String,
    churn: String,
}

/// The churn workload's manifest: a Deployment, a Service, and a TrafficTarget letting it call
/// `svc-0` (so that every proxy of app-0 gets a new source in its plugin configuration), in
/// the first namespace, with
/// `replicas` pods (the controller lets a workload's sidecars register as many).
fn write_churn(dir: &Path, replicas: usize) -> anyhow::Result<()> {
    let yaml = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: churn, namespace: {FIRST}}}\nspec:\n  replicas: {replicas}\n  template:\n    metadata: {{labels: {{app: churn}}}}\n    spec:\n      serviceAccountName: sa-churn\n      containers: [{{command: [app], ports: [{{containerPort: 8080}}]}}]\n---\n\
                apiVersion: v1\nkind: Service\nmetadata: {{name: svc-churn, namespace: {FIRST}}}\nspec:\n  selector: {{app: churn}}\n  ports: [{{port: 8080}}]\n---\n\
                apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: churn-to-0, namespace: {FIRST}}}\nspec:\n  destination: {{kind: ServiceAccount, name: sa-0, namespace: {FIRST}}}\n  sources: [{{kind: ServiceAccount, name: sa-churn, namespace: {FIRST}}}]\n  rules: [{{kind: HTTPRouteGroup, name: all}}]\n"
    );
    replace(dir, "churn.yaml", &yaml)
}

/// Waits until `count` distinct proxies that `wanted` picks have reported a response of
/// `kind` (other reports are dropped), for at most `within`; returns when each first did.
async fn reports_from(
    received: &mut mpsc::UnboundedReceiver<Received>,
    kind: &str,
    wanted: impl Fn(usize) -> bool,
    count: usize,
    within: Duration,
) -> anyhow::Result<BTreeMap<usize, Instant>> {
    let (first, missed) = reports_within(received, kind, wanted, count, within).await?;
    ensure!(
        missed == 0,
        "{} of {count} proxies reported in {within:?}",
        first.len()
    );
    Ok(first)
}

/// How long the bench waits for a Service edit to reach every proxy.
const SERVICE_EDIT_WAIT: Duration = Duration::from_secs(300);

/// [`reports_from`], and how many of the `count` proxies did not report within `within`.
async fn reports_within(
    received: &mut mpsc::UnboundedReceiver<Received>,
    kind: &str,
    wanted: impl Fn(usize) -> bool,
    count: usize,
    within: Duration,
) -> anyhow::Result<(BTreeMap<usize, Instant>, usize)> {
    let deadline = tokio::time::Instant::now() + within;
    let mut first = BTreeMap::new();
    while first.len() < count {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some(report)) if report.kind == kind && wanted(report.proxy) => {
                first.entry(report.proxy).or_insert(report.at);
            }
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("reports ended"),
            Err(_) => break,
        }
    }
    let missed = count - first.len();
    Ok((first, missed))
}

/// The controller's `/status`.
async fn controller_status(admin: u16) -> anyhow::Result<serde_json::Value> {
    get_json(SocketAddr::from(([127, 0, 0, 1], admin)), "/status").await
}

/// Waits until the controller's catalog generation passes `before`.
async fn catalog_after(admin: u16, before: u64) -> anyhow::Result<u64> {
    until(
        "the manifests reloaded",
        Duration::from_secs(30),
        || async {
            let generation = controller_status(admin).await?["generation"]["catalog"]
                .as_u64()
                .unwrap_or(0);
            Ok((generation > before).then_some(generation))
        },
    )
    .await
}

/// Waits until the controller knows exactly `pods` pods.
async fn pods_known(admin: u16, pods: usize) -> anyhow::Result<()> {
    until(
        "departed pods forgotten",
        Duration::from_secs(60),
        || async {
            let known = controller_status(admin).await?["pods"]
                .as_array()
                .map_or(0, Vec::len);
            Ok((known == pods).then_some(()))
        },
    )
    .await
}

async fn run(proxies: usize, changes: usize, envoys: usize, cycles: usize) -> anyhow::Result<Rows> {
    let manifests_dir = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    manifests(manifests_dir.path(), proxies, envoys, 50)?;
    let (xds, admin) = (free_port()?, free_port()?);
    let weft = weft_binary();
    let child = Command::new(&weft)
        .arg("controller")
        .arg("--manifests")
        .arg(manifests_dir.path())
        .arg("--state")
        .arg(state.path())
        .args([
            "--xds",
            &format!("127.0.0.1:{xds}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(["--resume-grace-ms", "0", "--forget-after-ms", "1000"])
        // The simulated pods live on loopback addresses.
        .args(["--pod-network", "127.0.0.0/8"])
        .arg("--module")
        .arg(paths::weft_wasm()?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("{} (cargo build --release -p weft-cli)", weft.display()))?;
    let controller = Controller(child);
    let pid = controller.0.id();
    let ca_file = state.path().join(weft_certs::CA_CERT_FILE);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(ca_file.exists() && std::net::TcpStream::connect(("127.0.0.1", xds)).is_ok()) {
        ensure!(Instant::now() < deadline, "the controller did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca_pem = std::fs::read_to_string(&ca_file)?;
    let key_pem = std::fs::read_to_string(state.path().join(weft_certs::CA_KEY_FILE))?;
    let ca = MeshCa::from_pem(&ca_pem, &key_pem, "cluster.local")?;
    let identities: Vec<Identity> = (0..proxies.div_ceil(PODS_PER_WORKLOAD))
        .map(|i| {
            Ok(Identity {
                cert: ca.issue(
                    &format!("{}/sa-{i}", namespace_of(i)).parse()?,
                    Validity::starting_now(Duration::from_secs(3600)),
                )?,
                ca_pem: ca_pem.clone(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let idle_kib = rss_kib(pid)?;
    let (report, mut received) = mpsc::unbounded_channel();
    let address = format!("https://127.0.0.1:{xds}");
    let mut tasks = tokio::task::JoinSet::new();
    // Proxies come in waves of at most CONNECT_WAVE, each configured before the next starts,
    // as a rollout brings pods: the measurement is of changes to a running mesh, not of a
    // thundering herd of first connections.
    let started = Instant::now();
    for wave in (0..proxies).collect::<Vec<_>>().chunks(CONNECT_WAVE) {
        for &index in wave {
            let identity = identities[index / PODS_PER_WORKLOAD].clone();
            tasks.spawn(proxy(
                index,
                SimPod::of_mesh(index),
                address.clone(),
                identity,
                report.clone(),
            ));
        }
        let this_wave = wave[0]..=wave[wave.len() - 1];
        let configured = reports_from(
            &mut received,
            EXTENSION_CONFIG,
            |proxy| this_wave.contains(&proxy),
            wave.len(),
            Duration::from_secs(120),
        )
        .await;
        if let Err(err) = configured {
            let mut failures = Vec::new();
            while let Some(ended) = tasks.try_join_next() {
                if let Ok(Err(err)) = ended {
                    failures.push(format!("{err:#}"));
                }
            }
            anyhow::bail!(
                "proxies {this_wave:?} not configured: {err}; {} failed, the first: {:?}",
                failures.len(),
                failures.first()
            );
        }
    }
    let bring_up = started.elapsed();
    eprintln!("weft-xds-bench: {proxies} proxies connected and configured in {bring_up:?}");
    let envoy_files = tempfile::tempdir()?;
    let real = (0..envoys)
        .map(|index| real_envoy(index, state.path(), envoy_files.path(), xds))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for envoy in &real {
        until("a real Envoy ready", Duration::from_secs(60), || async {
            let ready = get(envoy.admin, "/ready").await;
            Ok(ready.ok().filter(|r| r.status == 200).map(|_| ()))
        })
        .await?;
    }
    // Let the last pushes (endpoints of pods registered late) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while received.try_recv().is_ok() {}
    let connected_kib = rss_kib(pid)?;
    let cpu_before = cpu_seconds(pid)?;
    let mut latencies = Vec::new();
    let mut real_latencies = Vec::new();
    for change in 0..changes {
        let weight = if change % 2 == 0 { 70 } else { 50 };
        let mut before = Vec::new();
        for envoy in &real {
            before.push(stat(envoy.admin, OUTBOUND_PLUGIN_UPDATES).await?);
        }
        write_split(manifests_dir.path(), weight)?;
        let written = Instant::now();
        let mut real_applied = tokio::task::JoinSet::new();
        for (envoy, before) in real.iter().zip(before) {
            real_applied.spawn(applied(envoy.admin, before, written));
        }
        let reached = reports_from(
            &mut received,
            EXTENSION_CONFIG,
            |_| true,
            proxies,
            Duration::from_secs(30),
        )
        .await
        .context("a change did not reach every proxy")?;
        latencies.extend(
            reached
                .values()
                .map(|at| at.saturating_duration_since(written)),
        );
        while let Some(latency) = real_applied.join_next().await {
            real_latencies.push(latency??);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        while received.try_recv().is_ok() {}
    }
    let cpu_per_change = (cpu_seconds(pid)? - cpu_before) / changes as f64;
    latencies.sort();
    real_latencies.sort();

    // TrafficTarget edits: only the destination's proxies are reached.
    let edited = |proxy: usize| proxy / PODS_PER_WORKLOAD == EDITED_WORKLOAD;
    let affected = (0..proxies).filter(|p| edited(*p)).count();
    let cpu_before = cpu_seconds(pid)?;
    let mut target_latencies = Vec::new();
    let mut others_reached = 0;
    for change in 0..changes {
        write_target(manifests_dir.path(), change + 1)?;
        let written = Instant::now();
        let reached = reports_from(
            &mut received,
            EXTENSION_CONFIG,
            edited,
            affected,
            Duration::from_secs(30),
        )
        .await
        .context("a TrafficTarget edit did not reach its destination's proxies")?;
        target_latencies.extend(
            reached
                .values()
                .map(|at| at.saturating_duration_since(written)),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(report) = received.try_recv() {
            others_reached += usize::from(report.proxy < proxies && !edited(report.proxy));
        }
    }
    let cpu_per_target = (cpu_seconds(pid)? - cpu_before) / changes as f64;
    target_latencies.sort();

    // Service edits: a port of a Service changes, every proxy gets new clusters. Every proxy
    // gets every cluster again (state of the world): at thousands of proxies that takes tens of
    // seconds, and an edit that has not reached every proxy in SERVICE_EDIT_WAIT is recorded
    // as such (and ends the Service edits) rather than failing the run.
    let cpu_before = cpu_seconds(pid)?;
    let mut service_latencies = Vec::new();
    let mut service_edits = 0;
    let mut service_missed = None;
    for change in 0..changes {
        write_extra_port(manifests_dir.path(), change + 1)?;
        let written = Instant::now();
        let (reached, missed) = reports_within(
            &mut received,
            CLUSTER,
            |proxy| proxy < proxies,
            proxies,
            SERVICE_EDIT_WAIT,
        )
        .await?;
        service_edits += 1;
        service_latencies.extend(
            reached
                .values()
                .map(|at| at.saturating_duration_since(written)),
        );
        if missed > 0 {
            service_missed = Some(missed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        while received.try_recv().is_ok() {}
    }
    let cpu_per_service = (cpu_seconds(pid)? - cpu_before) / f64::from(service_edits);
    service_latencies.sort();

    let per_proxy_kib = connected_kib.saturating_sub(idle_kib) as f64 / (proxies + envoys) as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let real_column = if real_latencies.is_empty() {
        "-".to_owned()
    } else {
        format!(
            "{:.0} / {:.0}",
            ms(percentile(&real_latencies, 0.5)),
            ms(real_latencies.last().copied().unwrap_or_default())
        )
    };
    let convergence = format!(
        "| {proxies} + {envoys} | {} | {:.0} | {:.0} | {:.0} | {real_column} | {:.1} | {:.0} | {:.0} |",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        per_proxy_kib,
        connected_kib as f64 / 1024.0,
        cpu_per_change * 1000.0,
    );
    let targeted = format!(
        "| {proxies} + {envoys} | {:.1} s | {affected} | {:.0} | {:.0} | {:.0} | {others_reached} | {} | {} | {:.0} |",
        bring_up.as_secs_f64(),
        ms(percentile(&target_latencies, 0.5)),
        ms(percentile(&target_latencies, 0.99)),
        cpu_per_target * 1000.0,
        service_latencies.len(),
        match service_missed {
            // The p99 of those that came is not the p99 of all: say what is known.
            Some(missed) => format!("> {} ({missed} not reached)", SERVICE_EDIT_WAIT.as_millis()),
            None => format!("{:.0}", ms(percentile(&service_latencies, 0.99))),
        },
        cpu_per_service * 1000.0,
    );
    // Printed as soon as known, so that a run that fails later keeps them.
    eprintln!("weft-xds-bench: {convergence}");
    eprintln!("weft-xds-bench: {targeted}");

    // Churn: in each cycle a workload appears with a tenth as many pods as the mesh, its
    // proxies connect and get their configuration, then they disconnect and the workload
    // goes; once the controller has forgotten them, its memory is read.
    let churn_size = (proxies / 10).max(1);
    let churn_identity = Identity {
        cert: ca.issue(
            &format!("{FIRST}/sa-churn").parse()?,
            Validity::starting_now(Duration::from_secs(3600)),
        )?,
        ca_pem: ca_pem.clone(),
    };
    let mut generation = controller_status(admin).await?["generation"]["catalog"]
        .as_u64()
        .unwrap_or(0);
    let before_churn_kib = rss_kib(pid)?;
    let mut after_cycles = Vec::new();
    for cycle in 0..cycles {
        write_churn(manifests_dir.path(), churn_size)?;
        generation = catalog_after(admin, generation).await?;
        let first = proxies + cycle * churn_size;
        let mut churners = tokio::task::JoinSet::new();
        for k in 0..churn_size {
            churners.spawn(proxy(
                first + k,
                SimPod::new(FIRST, "churn", "sa-churn", proxies + envoys + k, k),
                address.clone(),
                churn_identity.clone(),
                report.clone(),
            ));
        }
        reports_from(
            &mut received,
            EXTENSION_CONFIG,
            |proxy| proxy >= first,
            churn_size,
            Duration::from_secs(60),
        )
        .await
        .context("churned proxies did not converge")?;
        churners.abort_all();
        while churners.join_next().await.is_some() {}
        std::fs::remove_file(manifests_dir.path().join("churn.yaml"))?;
        generation = catalog_after(admin, generation).await?;
        pods_known(admin, proxies + envoys).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        while received.try_recv().is_ok() {}
        after_cycles.push(rss_kib(pid)?);
    }
    tasks.abort_all();
    drop(real);
    drop(controller);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let churn = format!(
        "| {proxies} + {envoys} | {cycles} x {churn_size} | {:.1} | {} | {:+.1} |",
        mib(before_churn_kib),
        after_cycles
            .iter()
            .map(|kib| format!("{:.1}", mib(*kib)))
            .collect::<Vec<_>>()
            .join(", "),
        after_cycles
            .last()
            .map_or(0.0, |last| mib(*last) - mib(before_churn_kib)),
    );
    Ok(Rows {
        convergence,
        targeted,
        churn,
    })
}

/// Accepts every proxy and records nothing: the probe's server.
struct AcceptAll;

impl weft_xds::server::Admission for AcceptAll {
    fn admit(&self, node: &Node, _peer: Option<&[Vec<u8>]>) -> Result<String, tonic::Status> {
        Ok(node.id.clone())
    }
    fn on_event(&self, _key: &str, _event: &weft_xds::protocol::Event) {}
    fn on_disconnect(&self, _key: &str, _status: &[weft_xds::protocol::TypeStatus]) {}
}

/// The probe's server process: the ADS service over mTLS with an empty cache, on the port it
/// writes to `dir/port`.
async fn probe_server(dir: &Path) -> anyhow::Result<()> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            read("server.pem")?,
            read("server-key.pem")?,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(read("ca.pem")?));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    std::fs::write(dir.join("port"), listener.local_addr()?.port().to_string())?;
    let service = weft_xds::server::AdsService::new(
        Arc::new(weft_xds::cache::SnapshotCache::new()),
        Arc::new(AcceptAll),
    );
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .add_service(service.into_server())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

/// Resident memory per open ADS stream (one connection each) of a server that serves nothing.
async fn transport_probe(connections: usize) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let ca = MeshCa::generate(
        "cluster.local",
        Validity::starting_now(Duration::from_secs(3600)),
    )?;
    let server = ca.issue_for(
        "spiffe://cluster.local/weft/controller",
        &["localhost".to_owned()],
        Validity::starting_now(Duration::from_secs(3600)),
    )?;
    std::fs::write(dir.path().join("ca.pem"), &ca.pem().cert_pem)?;
    std::fs::write(dir.path().join("server.pem"), &server.cert_pem)?;
    std::fs::write(dir.path().join("server-key.pem"), &server.key_pem)?;
    let child = Command::new(std::env::current_exe()?)
        .arg("--probe-server")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()?;
    let server_process = Controller(child);
    let pid = server_process.0.id();
    let port_file = dir.path().join("port");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !port_file.exists() {
        ensure!(Instant::now() < deadline, "the probe server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let port: u16 = std::fs::read_to_string(&port_file)?.trim().parse()?;
    let idle = rss_kib(pid)?;
    let identity = Identity {
        cert: ca.issue(
            &format!("{FIRST}/sa-0").parse()?,
            Validity::starting_now(Duration::from_secs(3600)),
        )?,
        ca_pem: ca.pem().cert_pem.clone(),
    };
    let mut streams = Vec::new();
    for index in 0..connections {
        let tls = identity.client_tls();
        let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
            .tls_config(tls)?
            .connect()
            .await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        sender.send(DiscoveryRequest {
            node: Some(Node {
                id: format!("probe/{index}"),
                ..Node::default()
            }),
            type_url: CLUSTER.to_owned(),
            ..DiscoveryRequest::default()
        })?;
        let responses = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(
                receiver,
            ))
            .await?;
        streams.push((sender, responses));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = rss_kib(pid)?;
    drop(streams);
    #[allow(clippy::cast_precision_loss)]
    let per = connected.saturating_sub(idle) as f64 / connections as f64;
    Ok(format!(
        "| {connections} | {per:.1} | {:.0} |",
        connected as f64 / 1024.0
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--probe-server") {
        let dir = args.get(at + 1).context("--probe-server DIR")?;
        return probe_server(Path::new(dir)).await;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let proxies: Vec<usize> = value("--proxies")
        .unwrap_or_else(|| "100,1000".to_owned())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let changes: usize = value("--changes").map_or(Ok(10), |v| v.parse())?;
    let envoys: usize = value("--envoys").map_or(Ok(3), |v| v.parse())?;
    let cycles: usize = value("--churn-cycles").map_or(Ok(5), |v| v.parse())?;
    println!(
        "Controller under simulated proxies (real ADS over gRPC and mTLS), {changes} TrafficSplit edits each:\n"
    );
    println!(
        "| simulated + real proxies | samples | change to simulated proxy p50 (ms) | p99 (ms) | max (ms) | change to real Envoy applied p50 / max (ms) | controller RSS per proxy (KiB) | controller RSS (MiB) | controller CPU per change (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let (mut churn, mut targeted) = (Vec::new(), Vec::new());
    for count in &proxies {
        let rows = run(*count, changes, envoys, cycles).await?;
        println!("{}", rows.convergence);
        churn.push(rows.churn);
        targeted.push(rows.targeted);
    }
    println!(
        "\nBring-up, and {changes} TrafficTarget edits (reaching one workload's proxies) and {changes} Service edits (a TCP port: every proxy's clusters):\n"
    );
    println!(
        "| simulated + real proxies | connected and configured in | proxies a TrafficTarget edit reaches | its p50 (ms) | its p99 (ms) | CPU per TrafficTarget edit (ms) | other proxies sent a plugin configuration | Service edit samples | its p99 (ms) | CPU per Service edit (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in targeted {
        println!("{row}");
    }
    println!(
        "\nChurn: per cycle a workload appears with a tenth as many pods, their proxies connect and get their configuration, disconnect, and the workload goes; the controller's RSS once it has forgotten them:\n"
    );
    println!(
        "| simulated + real proxies | cycles x pods | RSS before (MiB) | RSS after each cycle (MiB) | after the last vs before (MiB) |"
    );
    println!("|---|---|---|---|---|");
    for row in churn {
        println!("{row}");
    }
    println!(
        "\nThe transport alone: the same ADS service over mTLS with nothing to serve, one connection and stream per client:\n"
    );
    println!("| connections | server RSS per connection (KiB) | server RSS (MiB) |");
    println!("|---|---|---|");
    for count in &proxies {
        println!("{}", transport_probe(*count).await?);
    }
    Ok(())
}
