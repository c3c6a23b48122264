//! `weft-local` runs a mesh on one machine: the controller, and for each workload replica its
//! application process and an Envoy sidecar bootstrapped against the controller, each replica
//! on its own loopback address. It supervises the processes and stops them all on the way out.
//!
//! Addresses: the `n`-th replica of the `k`-th workload (in name order at the start; a workload
//! added later takes the next number) is the pod `<workload>-<n>` at `127.0.k.(n+1)` (its sidecar's listeners: inbound on each application
//! port, outbound HTTP on 15001, admin on 15000), and its application listens on
//! `127.1.k.(n+1)`, which it is told as `APP_IP` (`--subnet S` moves both to `127.S` and
//! `127.S+1`). Loopback is shared by every local process, so
//! local mode shows and tests the mesh; it is not a security boundary against processes of the
//! same machine.
//!
//! The manifests folder is watched: a workload added, scaled, changed or removed on disk gets
//! its replicas started, restarted or stopped, and no other replica is touched. A sidecar or
//! an application that exits is started again after a backoff, as a kubelet restarts a
//! container.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use time::OffsetDateTime;
use weft_controller::mesh::Pod;
use weft_controller::objects::InForce;
use weft_controller::options::Options;
use weft_controller::pki::write_private;
use weft_controller::runtime::Controller;
use weft_envoy_config::mesh::{ControllerLink, OUTBOUND_PORT, PodMetadata, sidecar_bootstrap};
use weft_envoy_config::render::to_json;
use weft_envoy_config::tls::Credentials;
use weft_policy::catalog::Catalog;
use weft_policy::compile::{Options as CompileOptions, service_hosts};
use weft_policy::model::{AppProtocol, Workload};
use weft_policy::object::{ObjectKey, SourceObject};

/// How local mode runs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The controller's options (its manifests are the mesh's).
    pub controller: Options,
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// Folders searched for application commands before `PATH` (weft's own folder).
    pub command_path: Vec<PathBuf>,
    /// Pods get `127.<subnet>.k.n`, applications `127.<subnet + 1>.k.n` (0 by default; two
    /// meshes on one machine need different subnets).
    pub subnet: u8,
}

/// How long local mode waits before starting an exited process again: doubling from the
/// first to the last, and back to the first once a process ran for [`RESTART_RESET`].
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// How long a process must run for its next exit to be taken as a new failure.
const RESTART_RESET: Duration = Duration::from_secs(60);

/// One process of a replica, and how to start it again.
#[derive(Debug)]
struct Supervised {
    /// What it is, in messages: `the sidecar`, `the application`.
    role: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    /// Running, or `None` while it waits to start again.
    child: Option<Child>,
    started: Instant,
    restarts: u32,
    /// When it starts again.
    restart_at: Option<Instant>,
}

impl Supervised {
    /// Starts `program` with `args` and `env` (added to this process's), its output in `log`.
    fn start(
        role: &'static str,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut process = Self {
            role,
            program,
            args,
            env,
            log,
            child: None,
            started: Instant::now(),
            restarts: 0,
            restart_at: None,
        };
        process.child = Some(process.spawn(false)?);
        Ok(process)
    }

    fn spawn(&self, append: bool) -> anyhow::Result<Child> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        spawn(command, &self.log, append)
    }

    /// Notices an exit (scheduling a start after the backoff) or starts it again when its
    /// time has come; returns what happened, for the log.
    fn supervise(
        &mut self,
        node: &str,
        status: &weft_controller::status::Status,
    ) -> Option<String> {
        if let Some(child) = self.child.as_mut() {
            let exit = match child.try_wait() {
                Ok(Some(exit)) => exit.to_string(),
                Ok(None) => return None,
                Err(err) => err.to_string(),
            };
            self.child = None;
            if self.started.elapsed() >= RESTART_RESET {
                self.restarts = 0;
            }
            let delay = RESTART_BACKOFF
                .0
                .saturating_mul(1 << self.restarts.min(5))
                .min(RESTART_BACKOFF.1);
            self.restarts += 1;
            self.restart_at = Some(Instant::now() + delay);
            status.restarted(node, self.role, &exit);
            return Some(format!(
                "weft: {} of {node} exited ({exit}); starting it again in {delay:?}:\n{}",
                self.role,
                tail(&self.log)
            ));
        }
        let due = self.restart_at.is_some_and(|at| Instant::now() >= at);
        if !due {
            return None;
        }
        match self.spawn(true) {
            Ok(child) => {
                self.child = Some(child);
                self.started = Instant::now();
                self.restart_at = None;
                Some(format!("weft: started {} of {node} again", self.role))
            }
            Err(err) => {
                self.restart_at = Some(Instant::now() + RESTART_BACKOFF.1);
                Some(format!(
                    "weft: {} of {node} could not start again: {err:#}; trying again in {:?}",
                    self.role, RESTART_BACKOFF.1
                ))
            }
        }
    }

    fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// One running replica.
#[derive(Debug)]
pub struct Replica {
    /// The pod.
    pub pod: Pod,
    /// The workload it was started from.
    workload: Workload,
    /// What it runs.
    run: Run,
    /// Its folder: bootstrap, credentials, logs.
    pub dir: PathBuf,
    envoy: Supervised,
    app: Option<Supervised>,
}

impl Replica {
    /// Its processes that run: the sidecar, then the application if it has one.
    fn children(&mut self) -> impl Iterator<Item = &mut Child> {
        std::iter::once(&mut self.envoy)
            .chain(self.app.as_mut())
            .filter_map(|process| process.child.as_mut())
    }

    /// The sidecar's admin address.
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.pod.pod_ip, weft_envoy_config::mesh::ADMIN_PORT))
    }

    /// The process ids of its Envoy and its application (those running).
    pub fn pids(&self) -> Vec<u32> {
        self.envoy
            .id()
            .into_iter()
            .chain(self.app.as_ref().and_then(Supervised::id))
            .collect()
    }

    /// The sidecar's outbound HTTP proxy (`HTTP_PROXY`).
    pub fn outbound(&self) -> SocketAddr {
        SocketAddr::from((self.pod.pod_ip, OUTBOUND_PORT))
    }
}

impl Drop for Replica {
    /// A replica dropped without [`LocalMesh::down`] (a panic) still takes its processes with
    /// it.
    fn drop(&mut self) {
        for child in self.children() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A mesh running on this machine.
pub struct LocalMesh {
    /// The controller.
    pub controller: Controller,
    /// Every replica, in pod order.
    pub replicas: Vec<Replica>,
    options: UpOptions,
    /// The objects the replicas were started from.
    in_force: Arc<InForce>,
    numbers: WorkloadNumbers,
}

/// What local mode runs for a workload: its first container's `command` followed by its
/// `args`, and its `env` (name, value), in order. Read from the workload's document in force,
/// not from the policy model, which has no use for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    /// The program and its arguments (none: only the sidecar runs).
    pub command: Vec<String>,
    /// The environment it is given besides what [`environment`] adds.
    pub env: Vec<(String, String)>,
}

impl Run {
    /// What `object`, a Deployment or a Pod, runs. The loader has checked the fields' types
    /// (a workload whose container fields have the wrong type is refused, so never in force);
    /// a field that still cannot be read runs nothing rather than something half-read.
    pub fn of(object: &SourceObject) -> Self {
        #[derive(serde::Deserialize, Default)]
        struct Container {
            command: Option<Vec<String>>,
            args: Option<Vec<String>>,
            env: Option<Vec<Env>>,
        }
        #[derive(serde::Deserialize)]
        struct Env {
            name: String,
            value: Option<String>,
        }
        let pod_spec = if object.key.kind == "Pod" {
            object.value.get("spec")
        } else {
            object
                .value
                .get("spec")
                .and_then(|spec| spec.get("template"))
                .and_then(|template| template.get("spec"))
        };
        let first = pod_spec
            .and_then(|spec| spec.get("containers"))
            .and_then(|containers| containers.get(0))
            .cloned()
            .unwrap_or_default();
        let container: Container = serde_json::from_value(first).unwrap_or_default();
        let mut command = container.command.unwrap_or_default();
        command.extend(container.args.unwrap_or_default());
        Self {
            command,
            env: container
                .env
                .unwrap_or_default()
                .into_iter()
                .map(|env| (env.name, env.value.unwrap_or_default()))
                .collect(),
        }
    }
}

/// The number `k` of each workload (its pods are `127.S.k.n`), kept for the whole run so that
/// a workload added or removed never moves another one's pods.
#[derive(Debug, Default, Clone)]
pub struct WorkloadNumbers(BTreeMap<(String, String), u8>);

impl WorkloadNumbers {
    fn of(&mut self, workload: &Workload) -> anyhow::Result<u8> {
        let key = (workload.meta.namespace.clone(), workload.meta.name.clone());
        if let Some(k) = self.0.get(&key) {
            return Ok(*k);
        }
        let k = self
            .0
            .values()
            .max()
            .map_or(Some(1), |k| k.checked_add(1))
            .filter(|k| *k < 255)
            .context("local mode runs at most 254 workloads")?;
        self.0.insert(key, k);
        Ok(k)
    }
}

/// The pods of the workloads in force, with their addresses in `subnet` (workloads numbered by
/// `numbers`, which gives a new workload the next number), and what each runs.
///
/// # Errors
/// Past 254 workloads, or 254 replicas of one.
pub fn plan(
    in_force: &InForce,
    subnet: u8,
    numbers: &mut WorkloadNumbers,
) -> anyhow::Result<Vec<(Pod, Workload, Run)>> {
    let catalog = &in_force.catalog;
    let app_subnet = subnet
        .checked_add(1)
        .context("the subnet must be below 255")?;
    let mut pods = Vec::new();
    for workload in &catalog.workloads {
        let k = numbers.of(workload)?;
        let key = ObjectKey {
            kind: workload.kind.clone(),
            namespace: workload.meta.namespace.clone(),
            name: workload.meta.name.clone(),
        };
        let run = in_force
            .objects
            .get(&key)
            .map(|object| Run::of(object))
            .unwrap_or_default();
        for n in 0..workload.replicas {
            let host = u8::try_from(n + 1)
                .ok()
                .filter(|h| *h < 255)
                .with_context(|| {
                    format!(
                        "{}: local mode runs at most 254 replicas",
                        workload.meta.name
                    )
                })?;
            let name = if workload.kind == "Pod" {
                workload.meta.name.clone()
            } else {
                format!("{}-{n}", workload.meta.name)
            };
            pods.push((
                Pod {
                    namespace: workload.meta.namespace.clone(),
                    name,
                    workload: workload.meta.name.clone(),
                    service_account: workload.service_account.clone(),
                    labels: workload.labels.clone(),
                    pod_ip: Ipv4Addr::new(127, subnet, k, host),
                    app_ip: Ipv4Addr::new(127, app_subnet, k, host),
                    ports: workload.ports.clone(),
                    module: None,
                },
                workload.clone(),
                run.clone(),
            ));
        }
    }
    Ok(pods)
}

/// What a pod's application is told, the way Kubernetes tells a pod: who and where it is,
/// its proxy, and where each Service of its namespace is (`<NAME>_SERVICE_HOST`/`_PORT`: an
/// HTTP Service by name, through `HTTP_PROXY`; a TCP Service at the sidecar's listener on the
/// pod's own address).
pub fn environment(catalog: &Catalog, pod: &Pod, run: &Run) -> Vec<(String, String)> {
    let proxy = format!("http://{}:{OUTBOUND_PORT}", pod.pod_ip);
    let mut env = vec![
        ("POD_NAME".to_owned(), pod.name.clone()),
        ("POD_NAMESPACE".to_owned(), pod.namespace.clone()),
        ("POD_IP".to_owned(), pod.pod_ip.to_string()),
        ("APP_IP".to_owned(), pod.app_ip.to_string()),
        ("HTTP_PROXY".to_owned(), proxy.clone()),
        ("http_proxy".to_owned(), proxy),
    ];
    for service in catalog
        .services
        .iter()
        .filter(|s| s.meta.namespace == pod.namespace)
    {
        let Some(first) = service.port_specs.first() else {
            continue;
        };
        let prefix = service.meta.name.to_ascii_uppercase().replace('-', "_");
        let host = match first.protocol {
            AppProtocol::Http => service_hosts(
                &service.meta.name,
                &service.meta.namespace,
                &pod.namespace,
                &CompileOptions::default(),
            )
            .pop()
            .unwrap_or_default(),
            AppProtocol::Tcp => pod.pod_ip.to_string(),
        };
        env.push((format!("{prefix}_SERVICE_HOST"), host));
        env.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
    }
    env.extend(run.env.iter().cloned());
    env
}

/// `text` with each `$(NAME)` replaced by `NAME`'s value in `env`, as Kubernetes expands a
/// container's command and args (`$$` is a literal `$`; an unknown name is left as written).
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, value)) = env.iter().rev().find(|(name, _)| *name == inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Starts `command`, its output written to `log` (after what it holds, with `append`),
/// killed with SIGKILL if this process dies first, so nothing outlives local mode even when it
/// is killed.
fn spawn(mut command: Command, log: &Path, append: bool) -> anyhow::Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(log)
        .with_context(|| format!("{}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))
}

fn find_command(name: &str, search: &[PathBuf]) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    search
        .iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

impl LocalMesh {
    /// Starts the controller, then every replica: its credentials and bootstrap, its Envoy,
    /// its application.
    ///
    /// # Errors
    /// When the manifests have errors, or a process or file cannot be had; whatever was
    /// started is stopped.
    pub async fn up(options: UpOptions) -> anyhow::Result<Self> {
        let controller = Controller::start(options.controller.clone()).await?;
        let in_force = controller.shared.in_force();
        let mut mesh = Self {
            controller,
            replicas: Vec::new(),
            options,
            in_force: in_force.clone(),
            numbers: WorkloadNumbers::default(),
        };
        let started = plan(&in_force, mesh.options.subnet, &mut mesh.numbers).and_then(|pods| {
            pods.into_iter().try_for_each(|(pod, workload, run)| {
                mesh.start_replica(&in_force.catalog, pod, workload, run)
            })
        });
        if let Err(err) = started {
            mesh.down().await;
            return Err(err);
        }
        Ok(mesh)
    }

    /// Brings the replicas in line with the controller's catalog when it changed: starts the
    /// replicas of workloads added or scaled up, stops those of workloads removed or scaled
    /// down, restarts those whose workload changed (identity, labels, command, environment,
    /// ports); every other replica runs on. A replica that cannot start is logged and left out
    /// (the next change tries again). Returns whether anything changed.
    pub fn reconcile(&mut self) -> bool {
        let in_force = self.controller.shared.in_force();
        if Arc::ptr_eq(&in_force, &self.in_force) {
            return false;
        }
        self.in_force = in_force.clone();
        let catalog = &in_force.catalog;
        let wanted = match plan(&in_force, self.options.subnet, &mut self.numbers) {
            Ok(wanted) => wanted,
            Err(err) => {
                log::error!("weft: {err}; the replicas running are kept");
                return false;
            }
        };
        let mut changed = false;
        let (kept, mut gone): (Vec<Replica>, Vec<Replica>) = std::mem::take(&mut self.replicas)
            .into_iter()
            .partition(|replica| {
                wanted.iter().any(|(pod, workload, run)| {
                    *pod == replica.pod
                        && same_run((workload, run), (&replica.workload, &replica.run))
                })
            });
        // Stopped together: each may take the whole SIGTERM grace.
        stop_all(
            &mut gone
                .iter_mut()
                .flat_map(Replica::children)
                .collect::<Vec<_>>(),
        );
        for replica in &gone {
            let node = replica.pod.node_id();
            self.controller.shared.unregister_pod(&node);
            log::info!("weft: stopped {node}");
            changed = true;
        }
        self.replicas = kept;
        for (pod, workload, run) in wanted {
            if self
                .replicas
                .iter()
                .any(|r| r.pod.node_id() == pod.node_id())
            {
                continue;
            }
            let node = pod.node_id();
            let (pod_ip, app_ip) = (pod.pod_ip, pod.app_ip);
            match self.start_replica(catalog, pod, workload, run) {
                Ok(()) => log::info!("weft: started {node} (pod {pod_ip}, app {app_ip})"),
                Err(err) => log::error!("weft: {node} did not start: {err:#}"),
            }
            changed = true;
        }
        self.replicas.sort_by_key(|r| r.pod.node_id());
        changed
    }

    fn start_replica(
        &mut self,
        catalog: &Catalog,
        pod: Pod,
        workload: Workload,
        run: Run,
    ) -> anyhow::Result<()> {
        let options = &self.options;
        let shared = self.controller.shared.clone();
        let (controller_identity, trust_domain) = {
            let pki = shared.pki();
            (pki.controller_identity(), pki.trust_domain().to_owned())
        };
        let dir = options
            .controller
            .state
            .join("pods")
            .join(&pod.namespace)
            .join(&pod.name);
        std::fs::create_dir_all(&dir)?;
        let spiffe_id = pod.identity().spiffe_id(&trust_domain);
        let credential = {
            let pki = shared.pki();
            std::fs::write(dir.join(weft_certs::CA_CERT_FILE), pki.control_bundle_pem())?;
            pki.bootstrap_credential(&spiffe_id, OffsetDateTime::now_utc())?
        };
        std::fs::write(dir.join(weft_certs::CERT_FILE), &credential.cert_pem)?;
        write_private(&dir.join(weft_certs::KEY_FILE), &credential.key_pem)?;
        let link = ControllerLink {
            address: self.controller.xds_address,
            identity: controller_identity.clone(),
            credentials: Credentials::Files {
                cert: dir.join(weft_certs::CERT_FILE).display().to_string(),
                key: dir.join(weft_certs::KEY_FILE).display().to_string(),
                ca: dir.join(weft_certs::CA_CERT_FILE).display().to_string(),
            },
        };
        let workload_id = format!("{}/{}", pod.namespace, pod.service_account);
        let bootstrap = sidecar_bootstrap(
            &pod.node_id(),
            &workload_id,
            &PodMetadata {
                workload: pod.workload.clone(),
                ..PodMetadata::default()
            },
            pod.pod_ip,
            &link,
        );
        let bootstrap_path = dir.join("bootstrap.json");
        std::fs::write(&bootstrap_path, to_json(&bootstrap)?.to_string())?;
        shared.register_pod(pod.clone());

        let mut envoy_args = vec!["-c".to_owned(), bootstrap_path.display().to_string()];
        envoy_args.extend(
            weft_envoy_config::bootstrap::SIDECAR_ENVOY_ARGS
                .iter()
                .map(|arg| (*arg).to_owned()),
        );
        envoy_args.extend(
            [
                "--log-level",
                "warning",
                "--component-log-level",
                "wasm:info",
            ]
            .map(str::to_owned),
        );
        let node = pod.node_id();
        let mut envoy = match Supervised::start(
            "the sidecar",
            options.envoy.clone(),
            envoy_args,
            Vec::new(),
            dir.join("envoy.log"),
        ) {
            Ok(envoy) => envoy,
            Err(err) => {
                shared.unregister_pod(&node);
                return Err(err);
            }
        };

        let env = environment(catalog, &pod, &run);
        let app = match run.command.split_first() {
            Some((program, args)) => {
                let program = find_command(&expand(program, &env), &options.command_path);
                let args = args.iter().map(|arg| expand(arg, &env)).collect();
                match Supervised::start("the application", program, args, env, dir.join("app.log"))
                {
                    Ok(app) => Some(app),
                    Err(err) => {
                        // Half a replica is none: its sidecar goes too.
                        if let Some(child) = envoy.child.as_mut() {
                            let _ = child.kill();
                            let _ = child.wait();
                        }
                        shared.unregister_pod(&node);
                        return Err(err);
                    }
                }
            }
            None => None,
        };
        self.replicas.push(Replica {
            pod,
            workload,
            run,
            dir,
            envoy,
            app,
        });
        Ok(())
    }

    /// Waits until every sidecar has applied its listeners and says it is live (its admin's
    /// `/ready`: its listeners warmed, so they accept connections), or `timeout`; a process
    /// that exits meanwhile is started again ([`LocalMesh::supervise`]).
    ///
    /// # Errors
    /// When time runs out, naming the sidecars not ready.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            self.supervise();
            let mut waiting = Vec::new();
            for replica in &self.replicas {
                if !self.controller.shared.is_ready(&replica.pod.node_id())
                    || !live(replica.admin()).await
                {
                    waiting.push(replica.pod.node_id());
                }
            }
            if waiting.is_empty() {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "not ready after {timeout:?}: {}",
                waiting.join(", ")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts again, after a backoff, every process that exited (a sidecar or an application
    /// crashing does not stop the mesh, as a kubelet restarts a container): each exit and each
    /// start is logged, with the end of the process's log, and counted in the pod's status
    /// (`restarts`, `last_exit`).
    pub fn supervise(&mut self) {
        let status = &self.controller.shared.status;
        for replica in &mut self.replicas {
            let node = replica.pod.node_id();
            for process in std::iter::once(&mut replica.envoy).chain(replica.app.as_mut()) {
                if let Some(message) = process.supervise(&node, status) {
                    log::warn!("{message}");
                }
            }
        }
    }

    /// Stops every process (SIGTERM, then SIGKILL after 5 s) and the controller.
    pub async fn down(mut self) {
        stop_all(
            &mut self
                .replicas
                .iter_mut()
                .flat_map(Replica::children)
                .collect::<Vec<_>>(),
        );
        self.controller.stop().await;
    }
}

/// Whether a replica started from `running` is still what `wanted` runs (a replica count or
/// where the workload was read from does not matter).
fn same_run(wanted: (&Workload, &Run), running: (&Workload, &Run)) -> bool {
    let ((wanted, wanted_run), (running, running_run)) = (wanted, running);
    wanted.kind == running.kind
        && wanted.service_account == running.service_account
        && wanted.labels == running.labels
        && wanted.ports == running.ports
        && wanted_run == running_run
}

/// SIGTERM to each child, SIGKILL to those still running 5 s later; every child is reaped.
fn stop_all(children: &mut [&mut Child]) {
    for child in children.iter() {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY-free: kill(2) through libc takes plain integers.
            #[allow(unsafe_code)]
            // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for child in children.iter_mut() {
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Whether the Envoy whose admin is at `admin` answers `/ready` with 200 (state LIVE).
async fn live(admin: SocketAddr) -> bool {
    use http_body_util::Empty;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let Ok(uri) = format!("http://{admin}/ready").parse() else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), client.get(uri)).await,
        Ok(Ok(response)) if response.status() == 200
    )
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_runs_its_first_containers_command_args_and_env_from_its_document() {
        let (objects, problems) = weft_policy::object::read_objects(
            "m.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: db, namespace: shop}\nspec:\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      containers:\n      - {command: [weft-upstream], args: [\"$(APP_IP):15432\", db], env: [{name: MODE, value: tcp}, {name: EMPTY}]}\n      - {command: [other]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: debug, namespace: shop}\nspec:\n  containers: [{command: [sleep, \"60\"]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: bare, namespace: shop}\nspec: {}\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let runs: Vec<Run> = objects.iter().map(Run::of).collect();
        assert_eq!(
            runs[0],
            Run {
                command: vec![
                    "weft-upstream".to_owned(),
                    "$(APP_IP):15432".to_owned(),
                    "db".to_owned()
                ],
                env: vec![
                    ("MODE".to_owned(), "tcp".to_owned()),
                    ("EMPTY".to_owned(), String::new())
                ],
            }
        );
        assert_eq!(runs[1].command, ["sleep", "60"]);
        assert_eq!(runs[2], Run::default());
    }

    #[test]
    fn commands_expand_variables_as_kubernetes_does() {
        let env = vec![("APP_IP".to_owned(), "127.1.1.1".to_owned())];
        assert_eq!(expand("$(APP_IP):8080", &env), "127.1.1.1:8080");
        assert_eq!(expand("$$(APP_IP)", &env), "$(APP_IP)");
        assert_eq!(expand("$(NOPE) $x", &env), "$(NOPE) $x");
    }
}
