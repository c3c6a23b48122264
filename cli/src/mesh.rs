//! `weft up` (local mode), `weft status`, and their output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use weft_certs::RotationPolicy;
use weft_controller::options::Options;
use weft_controller::pki::CaSource;
use weft_controller::report::{PodReport, StatusReport, TrustReport};
use weft_controller::store::Kept;
use weft_controller::trust::Phase;
use weft_local::{LocalMesh, UpOptions};

/// What the controller runs with, in `weft up` and `weft controller` (their shared flags).
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerSettings {
    /// weft.wasm [default: ../wasm/weft.wasm beside weft, else target/wasm/weft.wasm].
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Where the xDS server listens.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds: SocketAddr,
    /// Where the status server listens (`weft status`, the module).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub admin: SocketAddr,
    /// Lifetime of workload certificates, in seconds (renewed at 40-50% of it).
    #[arg(long = "certificate-lifetime", value_name = "SECONDS", default_value = "86400", value_parser = seconds)]
    pub certificate_lifetime: Duration,
    /// The mesh CA's certificate (PEM), with --ca-key; default: generated into the state.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The mesh CA's key (PEM).
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// The roots every proxy is to trust (PEM, one or more), with --ca-cert; default: the CA
    /// certificate alone. The files are watched: rotate the root by editing them (docs/controller.md).
    #[arg(long, requires = "ca_cert")]
    pub trust_bundle: Option<PathBuf>,
    /// The mesh's SPIFFE trust domain (workload identities are spiffe://DOMAIN/ns/NS/sa/SA).
    #[arg(long, default_value = weft_policy::bundle::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Apply EnvoyPatches (raw JSON patches of the generated Envoy configuration); without it
    /// they are read, checked and reported, never applied (docs/patches.md).
    #[arg(long)]
    pub allow_patches: bool,
}

/// A whole number of seconds.
fn seconds(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_secs)
        .map_err(|err| format!("{text:?} is not a whole number of seconds: {err}"))
}

/// A whole number of milliseconds.
fn milliseconds(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_millis)
        .map_err(|err| format!("{text:?} is not a whole number of milliseconds: {err}"))
}

impl ControllerSettings {
    /// The controller's options for `manifests`, keeping its state in `state`.
    pub fn options(&self, manifests: &Path, state: &Path, resume_grace: Duration) -> Options {
        Options {
            manifests: manifests.to_path_buf(),
            state: state.to_path_buf(),
            allow_patches: self.allow_patches,
            xds_listen: self.xds,
            admin_listen: self.admin,
            module: self
                .module
                .clone()
                .or_else(|| beside_exe("../wasm/weft.wasm"))
                .unwrap_or_else(|| PathBuf::from("target/wasm/weft.wasm")),
            trust_domain: self.trust_domain.clone(),
            ca: match (&self.ca_cert, &self.ca_key) {
                (Some(cert), Some(key)) => CaSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                    bundle: self.trust_bundle.clone(),
                },
                _ => CaSource::State,
            },
            rotation: RotationPolicy {
                lifetime: self.certificate_lifetime,
                ..RotationPolicy::default()
            },
            poll: Duration::from_millis(100),
            resume_grace,
            forget_after: weft_controller::registry::FORGET_AFTER,
            // Local mode registers the pods it runs; `weft controller` sets its own.
            pod_networks: Vec::new(),
        }
    }
}

/// What `weft up` is asked (its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// The mesh: SMI objects, Services, Deployments or Pods (YAML).
    pub dir: PathBuf,
    /// Where the CA, the module and each pod's files and logs are kept [default: DIR/.weft].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The Envoy binary [default: .venv/bin/envoy, else envoy on PATH].
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// The controller's settings.
    #[command(flatten)]
    pub controller: ControllerSettings,
    /// Stop as soon as every sidecar is ready (scripts, tests).
    #[arg(long)]
    pub exit_when_ready: bool,
    /// Pods get 127.SUBNET.k.n and applications 127.(SUBNET+1).k.n.
    #[arg(long, default_value_t = 0)]
    pub subnet: u8,
}

fn beside_exe(relative: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(relative);
    path.exists().then_some(path)
}

fn default_envoy() -> PathBuf {
    let local = PathBuf::from(".venv/bin/envoy");
    if local.exists() {
        local
    } else {
        PathBuf::from("envoy")
    }
}

/// Logs the controller's and local mode's lines (refused changes with file and line, NACKs
/// with the proxy, type, version and Envoy's reason, certificates issued) to stderr; `RUST_LOG`
/// changes the level (`RUST_LOG=debug`).
fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .try_init();
}

/// Runs local mode until Ctrl-C (or SIGTERM), a process exiting, or, with `exit_when_ready`,
/// every sidecar being ready.
///
/// # Errors
/// When the mesh cannot start or a process exits.
pub fn up(args: &UpArgs) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_up(args))
}

async fn run_up(args: &UpArgs) -> anyhow::Result<()> {
    let state = args.state.clone().unwrap_or_else(|| args.dir.join(".weft"));
    let options = UpOptions {
        // Local mode knows every pod from the start: no grace.
        controller: args.controller.options(&args.dir, &state, Duration::ZERO),
        envoy: args.envoy.clone().unwrap_or_else(default_envoy),
        command_path: std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .into_iter()
            .collect(),
        subnet: args.subnet,
    };
    let mut mesh = LocalMesh::up(options).await?;
    eprintln!(
        "weft: controller: xDS on {}, status on http://{}/status; state in {}",
        mesh.controller.xds_address,
        mesh.controller.admin_address,
        state.display()
    );
    let result = serve(&mut mesh, args.exit_when_ready).await;
    mesh.down().await;
    eprintln!("weft: every process stopped");
    result
}

async fn serve(mesh: &mut LocalMesh, exit_when_ready: bool) -> anyhow::Result<()> {
    let took = tokio::select! {
        took = mesh.wait_ready(Duration::from_secs(60)) => took?,
        () = interrupted() => return Ok(()),
    };
    let trust_domain = &mesh.controller.shared.options.trust_domain;
    for replica in &mesh.replicas {
        eprintln!(
            "weft: {:<28} {:<36} pod {:<12} app {}",
            replica.pod.node_id(),
            replica.pod.identity().spiffe_id(trust_domain),
            replica.pod.pod_ip,
            replica.pod.app_ip
        );
    }
    eprintln!(
        "weft: mesh ready in {:.1} s; Ctrl-C stops it",
        took.as_secs_f64()
    );
    if exit_when_ready {
        return Ok(());
    }
    loop {
        tokio::select! {
            () = interrupted() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                mesh.reconcile();
                mesh.supervise();
            }
        }
    }
}

async fn interrupted() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// The controller's `/status`.
///
/// # Errors
/// When the controller cannot be reached.
pub fn fetch_status(controller: &str) -> anyhow::Result<StatusReport> {
    fetch_status_within(controller, STATUS_TIMEOUT, MAX_STATUS_BYTES)
}

/// How long `weft status` waits for the whole report.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest status report read (about 1 KB a pod).
pub const MAX_STATUS_BYTES: usize = 64 * 1024 * 1024;

/// [`fetch_status`] giving up after `timeout`, or once the answer passes `limit` bytes: an
/// address that is not a controller (one that never answers, or streams forever) is an error,
/// never a hang or an exhausted memory.
///
/// # Errors
/// When the controller cannot be reached in time, or answers no status report within `limit`.
pub fn fetch_status_within(
    controller: &str,
    timeout: Duration,
    limit: usize,
) -> anyhow::Result<StatusReport> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<Bytes>>();
        let url = format!("{}/status", controller.trim_end_matches('/'));
        let uri = url.parse().with_context(|| format!("{url} is not a URL"))?;
        let read = async {
            let response = client
                .get(uri)
                .await
                .with_context(|| format!("the controller at {controller} cannot be reached"))?;
            let body = http_body_util::Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|err| {
                    anyhow::anyhow!(
                        "the controller at {controller} answered more than {limit} bytes, or broke off: {err}"
                    )
                })?
                .to_bytes();
            serde_json::from_slice(&body).with_context(|| {
                format!("the controller at {controller} answered no status report")
            })
        };
        tokio::time::timeout(timeout, read).await.map_err(|_| {
            anyhow::anyhow!("the controller at {controller} did not answer within {timeout:?}")
        })?
    })
}

/// `weft status` as a table, each column as wide as its widest cell.
pub fn status_table(status: &StatusReport) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        [
            "POD",
            "IDENTITY",
            "ADDRESS",
            "READY",
            "ECDS",
            "NACKS",
            "RESTARTS",
            "CERTIFICATE EXPIRES",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for pod in &status.pods {
        rows.push(pod_row(pod));
    }
    let mut widths = vec![0; rows[0].len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join(" ").trim_end());
        out.push('\n');
    }
    if status.trust.issuer.is_some() {
        out.push_str(&trust_line(&status.trust));
    }
    for patch in &status.patches {
        let mut line = format!(
            "patch {} {} on {} of {}: {}",
            patch.patch, patch.field, patch.resource, patch.pod, patch.state
        );
        if let Some(reason) = &patch.reason {
            line.push_str(&format!(" ({reason})"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    for object in &status.refused {
        let kept = match object.kept {
            Kept::Previous => "its previous version stays in force",
            Kept::Nothing => "not in force",
        };
        out.push_str(&format!("refused {} ({kept}):\n", object.object));
        for problem in &object.problems {
            out.push_str(&format!("  {problem}\n"));
        }
    }
    for problem in &status.problems {
        out.push_str(&format!("problem: {problem}\n"));
    }
    out
}

/// A pod's row of the status table.
fn pod_row(pod: &PodReport) -> Vec<String> {
    let proxy = pod.proxy.clone().unwrap_or_default();
    let nacks: u64 = proxy.types.values().map(|t| t.nacks).sum();
    let ecds = proxy
        .types
        .get("ecds")
        .and_then(|ecds| ecds.acked.as_deref())
        .unwrap_or("-");
    vec![
        pod.pod.clone(),
        proxy.identity.clone().unwrap_or_else(|| "-".to_owned()),
        pod.pod_ip.clone(),
        if pod.ready { "yes" } else { "no" }.to_owned(),
        ecds.chars().take(8).collect(),
        nacks.to_string(),
        proxy.restarts.to_string(),
        proxy
            .certificate_expires
            .clone()
            .unwrap_or_else(|| "-".to_owned()),
    ]
}

/// The status line of the mesh's trust: the root issuing, the roots trusted, a rotation under
/// way and whom it waits for, and a refused CA change.
fn trust_line(trust: &TrustReport) -> String {
    let roots: Vec<String> = trust.roots.iter().map(ToString::to_string).collect();
    let mut line = format!(
        "trust: issuer {}, roots {}",
        trust
            .issuer
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string),
        roots.join(", ")
    );
    match &trust.rotation {
        Phase::AddingRoot {
            root,
            waiting: pods,
        } => line.push_str(&format!(
            "; rotating: root {root} added; the new CA issues once these trust it: {}",
            waiting(pods)
        )),
        Phase::RetiringRoots { waiting: pods, .. } => line.push_str(&format!(
            "; rotating: old roots kept until these apply a certificate of the new CA: {}",
            waiting(pods)
        )),
        Phase::Steady => {}
    }
    line.push('\n');
    if let Some(problem) = &trust.problem {
        line.push_str(&format!("refused CA change: {problem}\n"));
    }
    line
}

/// The pods a rotation waits for, for a status line.
fn waiting(pods: &[String]) -> String {
    match pods.len() {
        0 => "nothing".to_owned(),
        1..=3 => pods.join(", "),
        n => format!("{}, and {} more", pods[..3].join(", "), n - 3),
    }
}

/// What `weft controller` is asked (its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// The mesh: SMI objects, Services, Deployments or Pods (YAML).
    #[arg(long)]
    pub manifests: PathBuf,
    /// Where the CA and the module are kept.
    #[arg(long)]
    pub state: PathBuf,
    /// The controller's settings.
    #[command(flatten)]
    pub controller: ControllerSettings,
    /// Milliseconds after a start during which nothing is pushed, so that running sidecars
    /// reconnect first (a restart then changes nothing).
    #[arg(long = "resume-grace-ms", value_name = "MS", default_value = "2000", value_parser = milliseconds)]
    pub resume_grace: Duration,
    /// Milliseconds a pod that its sidecar registered (`weft sidecar`) stays after its
    /// sidecar disconnected; then its endpoints leave every proxy.
    #[arg(long = "forget-after-ms", value_name = "MS", default_value = "30000", value_parser = milliseconds)]
    pub forget_after: Duration,
    /// A network (CIDR) sidecars may register their pod's address in; repeat for several.
    /// Default: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 and 100.64.0.0/10.
    #[arg(long = "pod-network", value_name = "CIDR")]
    pub pod_networks: Vec<ipnet::Ipv4Net>,
}

/// Runs the controller alone (for sidecars started with `weft sidecar`) until Ctrl-C/SIGTERM.
///
/// # Errors
/// When it cannot start.
pub fn controller(args: &ControllerArgs) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let options = weft_controller::options::Options {
            forget_after: args.forget_after,
            pod_networks: if args.pod_networks.is_empty() {
                weft_controller::options::default_pod_networks()
            } else {
                args.pod_networks.clone()
            },
            ..args
                .controller
                .options(&args.manifests, &args.state, args.resume_grace)
        };
        let controller = weft_controller::runtime::Controller::start(options).await?;
        eprintln!(
            "weft: controller serving xDS on {} and status on http://{}/status; state in {}",
            controller.xds_address,
            controller.admin_address,
            args.state.display()
        );
        interrupted().await;
        controller.stop().await;
        Ok(())
    })
}

/// What `weft sidecar` is asked (its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct SidecarArgs {
    /// The controller's xDS address (the module is fetched there too, over the same mTLS
    /// channel).
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds: SocketAddr,
    /// The pod, namespace/name.
    #[arg(long)]
    pub pod: String,
    /// The Deployment or Pod it runs (as named in the controller's manifests).
    #[arg(long)]
    pub workload: String,
    /// Its ServiceAccount (its certificate's identity).
    #[arg(long)]
    pub service_account: String,
    /// The pod's address: other workloads reach its sidecar there.
    #[arg(long)]
    pub pod_ip: std::net::Ipv4Addr,
    /// The address its application listens on.
    #[arg(long)]
    pub app_ip: std::net::Ipv4Addr,
    /// Folder with cert.pem, key.pem and ca.pem.
    #[arg(long)]
    pub credentials: PathBuf,
    /// Where the module and bootstrap.json are written.
    #[arg(long)]
    pub out: PathBuf,
    /// Refuse a module whose SHA-256 is not this.
    #[arg(long)]
    pub module_sha256: Option<String>,
    /// Then become Envoy, this binary.
    #[arg(long)]
    pub exec: Option<PathBuf>,
    /// The mesh's SPIFFE trust domain (the controller's identity is checked in it).
    #[arg(long, default_value = weft_policy::bundle::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

/// How long `weft sidecar` waits between two attempts to fetch the module: doubling from the
/// first to the last.
const MODULE_RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// Fetches the module over the control channel (mTLS with the sidecar's bootstrap credential,
/// the controller checked by its SPIFFE ID; the module checked against the SHA-256 the
/// controller announces, and against `--module-sha256` when given; while it cannot be had,
/// Envoy is not started and the fetch is retried), writes the bootstrap, and with `exec`
/// becomes Envoy.
///
/// # Errors
/// When the module is not the pinned one, or a file cannot be written; Envoy is then not
/// started.
pub fn sidecar(args: &SidecarArgs) -> anyhow::Result<()> {
    let (namespace, _) = args
        .pod
        .split_once('/')
        .with_context(|| format!("--pod {}: give namespace/name", args.pod))?;
    let credentials = std::fs::canonicalize(&args.credentials)
        .with_context(|| format!("{}", args.credentials.display()))?;
    let read = |name: &str| {
        let path = credentials.join(name);
        weft_controller::files::read_text(&path, 1024 * 1024)
            .with_context(|| format!("{}", path.display()))
    };
    let controller_identity = weft_controller::pki::controller_identity(&args.trust_domain);
    let tls = weft_controller::channel::client_config(
        &read(weft_certs::CERT_FILE)?,
        &read(weft_certs::KEY_FILE)?,
        &read(weft_certs::CA_CERT_FILE)?,
        &controller_identity,
    )?;
    let runtime = tokio::runtime::Runtime::new()?;
    let (bytes, sha256) = runtime.block_on(wait_for_module(args, tls))?;
    let modules = args.out.join("modules");
    std::fs::create_dir_all(&modules)?;
    let module = modules.join(format!("weft-{sha256}.wasm"));
    let staging = modules.join(format!(".weft-{sha256}.tmp"));
    std::fs::write(&staging, &bytes)?;
    std::fs::rename(&staging, &module)?;
    let module = std::fs::canonicalize(&module)?;
    let file = |name: &str| credentials.join(name).display().to_string();
    let link = weft_envoy_config::mesh::ControllerLink {
        address: args.xds,
        identity: controller_identity,
        credentials: weft_envoy_config::tls::Credentials::Files {
            cert: file(weft_certs::CERT_FILE),
            key: file(weft_certs::KEY_FILE),
            ca: file(weft_certs::CA_CERT_FILE),
        },
    };
    let bootstrap = weft_envoy_config::mesh::sidecar_bootstrap(
        &args.pod,
        &format!("{namespace}/{}", args.service_account),
        &weft_envoy_config::mesh::PodMetadata {
            workload: args.workload.clone(),
            pod_ip: Some(args.pod_ip),
            app_ip: Some(args.app_ip),
            module: Some(module.display().to_string()),
        },
        args.pod_ip,
        &link,
    );
    let path = args.out.join("bootstrap.json");
    std::fs::write(
        &path,
        weft_envoy_config::render::to_json(&bootstrap)?.to_string(),
    )?;
    eprintln!("weft: wrote {} (module {sha256})", path.display());
    if let Some(envoy) = &args.exec {
        use std::os::unix::process::CommandExt as _;
        let err = std::process::Command::new(envoy)
            .arg("-c")
            .arg(&path)
            .args(weft_envoy_config::bootstrap::SIDECAR_ENVOY_ARGS)
            .args(["--log-level", "warning"])
            .exec();
        anyhow::bail!("starting {}: {err}", envoy.display());
    }
    Ok(())
}

/// The module and its SHA-256, once the controller serves one that matches what it announces:
/// until then nothing listens on the pod's ports, so no request can pass a filter that is not
/// there. A module that is not the pinned one is an error at once (waiting would not fix it).
async fn wait_for_module(
    args: &SidecarArgs,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> anyhow::Result<(Bytes, String)> {
    let mut pause = MODULE_RETRY.0;
    loop {
        match weft_controller::channel::fetch_module(args.xds, tls.clone(), Duration::from_secs(10))
            .await
        {
            Ok((bytes, sha256)) => {
                if let Some(pinned) = &args.module_sha256 {
                    anyhow::ensure!(
                        *pinned == sha256,
                        "the module from {} has SHA-256 {sha256}, not the pinned {pinned}; not starting Envoy",
                        args.xds
                    );
                }
                return Ok((bytes, sha256));
            }
            Err(err) => {
                eprintln!("weft: {err:#}; Envoy not started, trying again in {pause:?}");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = interrupted() => anyhow::bail!("interrupted while waiting for the module"),
                }
                pause = (pause * 2).min(MODULE_RETRY.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_keeps_its_columns_aligned_whatever_the_identities_length() {
        let status = serde_json::json!({"pods": [
            {"pod": "shop/frontend-0", "pod_ip": "127.0.1.1", "ready": true,
             "proxy": {"identity": "spiffe://cluster.local/ns/shop/sa/frontend",
                       "types": {"ecds": {"acked": "0123456789abcdef", "nacks": 0}},
                       "certificate_expires": "2026-12-02T00:00:00Z"}},
            {"pod": "a-very-long-namespace/a-very-long-pod-name-0", "pod_ip": "127.0.2.1",
             "ready": false,
             "proxy": {"identity": "spiffe://a.much.longer.trust.domain/ns/a-very-long-namespace/sa/a-very-long-service-account",
                       "types": {"lds": {"nacks": 2}}}},
        ]});
        let table = status_table(&serde_json::from_value(status).unwrap());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let address_column = lines[0].find("ADDRESS").unwrap();
        assert_eq!(lines[1].find("127.0.1.1"), Some(address_column), "{table}");
        assert_eq!(lines[2].find("127.0.2.1"), Some(address_column), "{table}");
        assert!(lines[1].contains(" 01234567 "), "{table}");
        assert!(
            lines[2].contains(" no ") && lines[2].contains(" 2 "),
            "{table}"
        );
    }

    #[test]
    fn the_status_says_whom_a_root_rotation_waits_for_and_why_a_ca_change_was_refused() {
        let status = serde_json::json!({"pods": [], "trust": {
            "issuer": "bbbb", "roots": ["aaaa", "bbbb"],
            "rotation": {"step": "retiring_roots", "roots": ["aaaa"],
                         "waiting": ["shop/a-0", "shop/b-0", "shop/c-0", "shop/d-0"]},
            "problem": "trust-bundle.pem does not hold the root of the CA ca.pem"}});
        let table = status_table(&serde_json::from_value(status).unwrap());
        assert!(
            table.contains("trust: issuer bbbb, roots aaaa, bbbb; rotating: old roots kept until these apply a certificate of the new CA: shop/a-0, shop/b-0, shop/c-0, and 1 more\n"),
            "{table}"
        );
        assert!(
            table.contains("refused CA change: trust-bundle.pem does not hold"),
            "{table}"
        );
    }

    #[test]
    fn the_status_has_a_line_per_patch_and_pod_with_its_state_and_reason() {
        let status = serde_json::json!({"pods": [], "patches": [
            {"pod": "shop/frontend-0", "patch": "shop/header", "field": "spec.patches[0]",
             "resource": "RouteConfiguration outbound", "state": "applied", "reason": null},
            {"pod": "shop/frontend-0", "patch": "shop/dup", "field": "spec.patches[0]",
             "resource": "RouteConfiguration outbound", "state": "withdrawn",
             "reason": "Envoy refused it: duplicate domain"}]});
        let table = status_table(&serde_json::from_value(status).unwrap());
        assert!(
            table.contains("patch shop/header spec.patches[0] on RouteConfiguration outbound of shop/frontend-0: applied\n"),
            "{table}"
        );
        assert!(
            table.contains("patch shop/dup spec.patches[0] on RouteConfiguration outbound of shop/frontend-0: withdrawn (Envoy refused it: duplicate domain)\n"),
            "{table}"
        );
    }

    /// A server on loopback that answers every connection with `reply` (and then, with
    /// `endless`, zeros forever), or never answers when `reply` is empty.
    fn hostile_server(reply: &'static [u8], endless: bool) -> String {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    if reply.is_empty() {
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                    // The request first, as a server would.
                    let _ = stream.read(&mut [0; 4096]);
                    let _ = stream.write_all(reply);
                    while endless && stream.write_all(&[b'0'; 4096]).is_ok() {}
                });
            }
        });
        format!("http://{address}")
    }

    #[test]
    fn a_status_address_that_never_answers_or_streams_forever_is_an_error_not_a_hang() {
        let silent = hostile_server(b"", false);
        let started = std::time::Instant::now();
        let err = fetch_status_within(&silent, Duration::from_millis(300), 1024).unwrap_err();
        assert!(err.to_string().contains("did not answer within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let endless = hostile_server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n",
            true,
        );
        let err = fetch_status_within(&endless, Duration::from_secs(5), 64 * 1024).unwrap_err();
        assert!(err.to_string().contains("more than 65536 bytes"), "{err}");
        let not_json = hostile_server(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", false);
        let err = fetch_status_within(&not_json, Duration::from_secs(5), 1024).unwrap_err();
        assert!(err.to_string().contains("no status report"), "{err}");
    }
}
