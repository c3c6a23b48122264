//! A local mesh for tests: local mode (weft-local) on a copy of `examples/mesh`, with the
//! controller's ports chosen by the kernel, and helpers to call Services as a given workload
//! (through that replica's sidecar, which presents its controller-issued certificate).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use weft_certs::RotationPolicy;
use weft_controller::options::Options;
use weft_controller::pki::CaSource;
use weft_local::{LocalMesh, Replica, UpOptions};

use crate::client::{Reply, request};
use crate::paths;

/// A running mesh and the folders it uses (removed when dropped, after the mesh is down).
pub struct TestMesh {
    /// The mesh (`None` once stopped).
    pub mesh: Option<LocalMesh>,
    /// Its manifests: a copy of the example, free to edit.
    pub manifests: tempfile::TempDir,
    /// Its state.
    pub state: tempfile::TempDir,
    /// What it was started with.
    pub options: UpOptions,
}

/// Subnets of meshes started by this process, so that tests running at once do not collide
/// (10, 12, 14, ...: each mesh uses its subnet and the next).
static NEXT_SUBNET: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(10);

/// Options for a mesh on `manifests` keeping its state in `state`, in a subnet of its own.
pub fn options(manifests: &Path, state: &Path) -> anyhow::Result<UpOptions> {
    let subnet = NEXT_SUBNET.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
    Ok(UpOptions {
        controller: Options {
            manifests: manifests.to_path_buf(),
            state: state.to_path_buf(),
            allow_patches: false,
            xds_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            module: paths::weft_wasm()?,
            trust_domain: "cluster.local".to_owned(),
            ca: CaSource::State,
            rotation: RotationPolicy::default(),
            poll: Duration::from_millis(50),
            resume_grace: Duration::ZERO,
            forget_after: weft_controller::registry::FORGET_AFTER,
            pod_networks: Vec::new(),
        },
        envoy: paths::envoy_binary()?,
        command_path: vec![paths::workspace_root().join("target/debug")],
        subnet,
    })
}

/// Copies the files of `examples/<name>` into a new folder.
pub fn copy_example(name: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("weft-mesh-").tempdir()?;
    let from = paths::workspace_root().join("examples").join(name);
    for entry in std::fs::read_dir(&from).with_context(|| from.display().to_string())? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::copy(
                &path,
                dir.path().join(path.file_name().context("a file name")?),
            )?;
        }
    }
    Ok(dir)
}

/// Writes `text` to `dir/name` the way an editor saving atomically does (write, then
/// rename), so the controller's watcher never reads half a file.
///
/// # Errors
/// When the file cannot be written.
pub fn write_manifest(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let staging = dir.join(format!(".{name}.tmp"));
    std::fs::write(&staging, text)?;
    std::fs::rename(&staging, dir.join(name))?;
    Ok(())
}

impl TestMesh {
    /// Starts `examples/mesh` and waits until every sidecar is ready.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// [`TestMesh::start`] with options changed by `change`.
    pub async fn start_with(change: impl FnOnce(&mut UpOptions)) -> anyhow::Result<Self> {
        Self::start_prepared(|_| Ok(()), change).await
    }

    /// [`TestMesh::start_with`], with `prepare` changing the copied manifests first.
    pub async fn start_prepared(
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
        change: impl FnOnce(&mut UpOptions),
    ) -> anyhow::Result<Self> {
        let manifests = copy_example("mesh")?;
        prepare(manifests.path())?;
        let state = tempfile::Builder::new().prefix("weft-state-").tempdir()?;
        let mut options = options(manifests.path(), state.path())?;
        change(&mut options);
        let mut mesh = LocalMesh::up(options.clone()).await?;
        mesh.wait_ready(Duration::from_secs(30)).await?;
        Ok(Self {
            mesh: Some(mesh),
            manifests,
            state,
            options,
        })
    }

    /// The running mesh, to change.
    pub fn mesh_mut(&mut self) -> &mut LocalMesh {
        self.mesh.as_mut().expect("the mesh is running")
    }

    /// The status of pod `node`.
    pub fn pod_status(&self, node: &str) -> serde_json::Value {
        self.status()["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["pod"] == node).cloned())
            .unwrap_or_default()
    }

    /// The running mesh.
    pub fn mesh(&self) -> &LocalMesh {
        self.mesh.as_ref().expect("the mesh is running")
    }

    /// The replica of pod `node` (`namespace/name`).
    pub fn replica(&self, node: &str) -> &Replica {
        self.mesh()
            .replicas
            .iter()
            .find(|r| r.pod.node_id() == node)
            .unwrap_or_else(|| panic!("no pod {node}"))
    }

    /// `method path` to the Service `host`, sent as pod `from` (through its outbound proxy).
    pub async fn call(
        &self,
        from: &str,
        method: &str,
        host: &str,
        path: &str,
    ) -> anyhow::Result<Reply> {
        request(
            self.replica(from).outbound(),
            method,
            path,
            &[("host", host)],
        )
        .await
    }

    /// The status of `GET path` to the Service `checkout`, sent as pod `from`.
    pub async fn checkout_status(&self, from: &str, path: &str) -> u16 {
        match self.call(from, "GET", "checkout", path).await {
            Ok(reply) => reply.status,
            Err(err) => panic!("{from} -> checkout {path}: {err:#}"),
        }
    }

    /// Sends `line` to TCP Service port `port` as pod `from` (through its outbound listener on
    /// its own address) and returns the answer line, or `None` if the connection was closed.
    pub async fn tcp(&self, from: &str, port: u16, line: &str) -> anyhow::Result<Option<String>> {
        let address = SocketAddr::from((self.replica(from).pod.pod_ip, port));
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        let mut answer = String::new();
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            BufReader::new(&mut stream).read_line(&mut answer),
        )
        .await
        .context("no answer and no close within 5 s")?;
        Ok(match read {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(answer.trim_end().to_owned()),
        })
    }

    /// A stat of pod `node`'s sidecar (0 when absent).
    pub async fn stat(&self, node: &str, name: &str) -> anyhow::Result<u64> {
        crate::client::stat(self.replica(node).admin(), name).await
    }

    /// Pod `node`'s sidecar's Prometheus metrics.
    pub async fn metrics(&self, node: &str) -> anyhow::Result<crate::prometheus::Metrics> {
        let reply = request(self.replica(node).admin(), "GET", "/stats/prometheus", &[]).await?;
        crate::prometheus::Metrics::parse(&reply.body)
    }

    /// The controller's Prometheus metrics, read from its admin port's `/metrics`.
    pub async fn controller_metrics(&self) -> anyhow::Result<crate::prometheus::Metrics> {
        let admin = self.mesh().controller.admin_address;
        let reply = request(admin, "GET", "/metrics", &[]).await?;
        anyhow::ensure!(reply.status == 200, "/metrics: {}", reply.status);
        crate::prometheus::Metrics::parse(&reply.body)
    }

    /// The controller's status.
    pub fn status(&self) -> serde_json::Value {
        weft_controller::admin::status_json(&self.mesh().controller.shared)
    }

    /// Writes `text` to the manifest file `name`, atomically (write, then rename).
    pub fn write_manifest(&self, name: &str, text: &str) -> anyhow::Result<()> {
        write_manifest(self.manifests.path(), name, text)
    }

    /// The manifest file `name`.
    pub fn manifest(&self, name: &str) -> PathBuf {
        self.manifests.path().join(name)
    }

    /// Stops every process and the controller.
    pub async fn stop(&mut self) {
        if let Some(mesh) = self.mesh.take() {
            mesh.down().await;
        }
    }
}

/// A pod run by `weft sidecar` against a separate `weft controller`.
#[derive(Debug, Clone, Copy)]
pub struct RemotePod<'a> {
    /// `namespace/name`.
    pub pod: &'a str,
    /// Its workload (of the controller's manifests).
    pub workload: &'a str,
    /// Its ServiceAccount (in the pod's namespace).
    pub service_account: &'a str,
    /// Its sidecar's address.
    pub pod_ip: std::net::Ipv4Addr,
    /// Its application's address.
    pub app_ip: std::net::Ipv4Addr,
}

/// `weft sidecar --exec envoy` for `pod` in `trust_domain`, run with the `weft` binary `weft`,
/// against the controller at `xds` (ADS and the module); its bootstrap credential
/// issued with `weft cert workload` from the CA in `state` into `dir`, with the CA beside it.
/// Ready to spawn.
///
/// # Errors
/// When the credential cannot be issued.
pub fn weft_sidecar(
    weft: &Path,
    pod: &RemotePod<'_>,
    trust_domain: &str,
    (state, dir): (&Path, &Path),
    xds: u16,
) -> anyhow::Result<std::process::Command> {
    let namespace = pod.pod.split_once('/').map_or("default", |(ns, _)| ns);
    let issued = std::process::Command::new(weft)
        .args(["cert", "workload", "--trust-domain", trust_domain, "--ca"])
        .arg(state)
        .args([
            "--identity",
            &format!("{namespace}/{}", pod.service_account),
            "--out",
        ])
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        issued.status.success(),
        "weft cert workload: {}",
        String::from_utf8_lossy(&issued.stderr)
    );
    std::fs::copy(
        state.join(weft_certs::CA_CERT_FILE),
        dir.join(weft_certs::CA_CERT_FILE),
    )?;
    let mut command = std::process::Command::new(weft);
    command
        .arg("sidecar")
        .args(["--xds", &format!("127.0.0.1:{xds}")])
        .args(["--pod", pod.pod, "--workload", pod.workload])
        .args(["--service-account", pod.service_account])
        .args(["--trust-domain", trust_domain])
        .args(["--pod-ip", &pod.pod_ip.to_string()])
        .args(["--app-ip", &pod.app_ip.to_string()])
        .arg("--credentials")
        .arg(dir)
        .arg("--out")
        .arg(dir)
        .arg("--exec")
        .arg(paths::envoy_binary()?);
    Ok(command)
}

/// `weft controller` (the `weft` binary of `make build`) on `manifests`, keeping its state in
/// `state`, serving xDS on `127.0.0.1:xds` and its admin on `127.0.0.1:admin`, with no resume
/// grace to speak of, the test's pods on loopback allowed (unless `flags` name the pod
/// networks), the module `make build` made, and `flags`. Ready to spawn.
///
/// # Errors
/// When the module cannot be found.
pub fn weft_controller(
    manifests: &Path,
    state: &Path,
    (xds, admin): (u16, u16),
    flags: &[&str],
) -> anyhow::Result<std::process::Command> {
    let mut command = std::process::Command::new(paths::workspace_root().join("target/debug/weft"));
    command
        .arg("controller")
        .arg("--manifests")
        .arg(manifests)
        .arg("--state")
        .arg(state)
        .args(["--xds", &format!("127.0.0.1:{xds}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--resume-grace-ms", "1500"]);
    if !flags.contains(&"--pod-network") {
        // The test's pods live on loopback addresses.
        command.args(["--pod-network", "127.0.0.0/8"]);
    }
    command.args(flags).arg("--module").arg(paths::weft_wasm()?);
    Ok(command)
}
