//! `weft up` (local mode), `weft status`, and their output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use serde_json::Value;
use weft_certs::RotationPolicy;
use weft_controller::pki::CaSource;
use weft_controller::runtime::Options;
use weft_local::{LocalMesh, UpOptions};

/// What `weft up` was asked.
#[derive(Debug, Clone)]
pub struct UpArgs {
    /// The mesh's manifests.
    pub dir: PathBuf,
    /// State folder (CA, module, per-pod files and logs).
    pub state: Option<PathBuf>,
    /// Envoy binary.
    pub envoy: Option<PathBuf>,
    /// weft.wasm.
    pub module: Option<PathBuf>,
    /// ADS server address.
    pub xds: SocketAddr,
    /// Admin (status) address.
    pub admin: SocketAddr,
    /// Workload certificate lifetime.
    pub certificate_lifetime: Duration,
    /// The user's CA, certificate and key.
    pub ca: Option<(PathBuf, PathBuf)>,
    /// Stop once every sidecar is ready (for scripts and tests).
    pub exit_when_ready: bool,
    /// Address block (see weft-local).
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

/// Runs local mode until Ctrl-C (or SIGTERM), a process exiting, or, with `exit_when_ready`,
/// every sidecar being ready.
///
/// # Errors
/// When the mesh cannot start or a process exits.
pub fn up(args: &UpArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_up(args))
}

async fn run_up(args: &UpArgs) -> anyhow::Result<()> {
    let state = args.state.clone().unwrap_or_else(|| args.dir.join(".weft"));
    let module = args
        .module
        .clone()
        .or_else(|| beside_exe("../wasm/weft.wasm"))
        .unwrap_or_else(|| PathBuf::from("target/wasm/weft.wasm"));
    let options = UpOptions {
        controller: Options {
            manifests: args.dir.clone(),
            state: state.clone(),
            xds_listen: args.xds,
            admin_listen: args.admin,
            module,
            trust_domain: "cluster.local".to_owned(),
            ca: match &args.ca {
                Some((cert, key)) => CaSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                None => CaSource::State,
            },
            rotation: RotationPolicy {
                lifetime: args.certificate_lifetime,
                ..RotationPolicy::default()
            },
            poll: Duration::from_millis(100),
        },
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
    for replica in &mesh.replicas {
        eprintln!(
            "weft: {:<28} {:<36} pod {:<12} app {}",
            replica.pod.node_id(),
            format!(
                "spiffe://cluster.local/ns/{}/sa/{}",
                replica.pod.namespace, replica.pod.service_account
            ),
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
            () = tokio::time::sleep(Duration::from_millis(200)) => mesh.check_processes()?,
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
pub fn fetch_status(controller: &str) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<Bytes>>();
        let url = format!("{}/status", controller.trim_end_matches('/'));
        let response = client
            .get(url.parse().with_context(|| format!("{url} is not a URL"))?)
            .await
            .with_context(|| format!("the controller at {controller} cannot be reached"))?;
        let body = response.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&body)?)
    })
}

/// `weft status` as a table.
pub fn status_table(status: &Value) -> String {
    let mut out = format!(
        "{:<26} {:<40} {:<12} {:<6} {:<8} {:<6} {}\n",
        "POD", "IDENTITY", "ADDRESS", "READY", "ECDS", "NACKS", "CERTIFICATE EXPIRES"
    );
    for pod in status["pods"].as_array().into_iter().flatten() {
        let proxy = &pod["proxy"];
        let nacks: u64 = proxy["types"]
            .as_object()
            .map(|types| types.values().filter_map(|t| t["nacks"].as_u64()).sum())
            .unwrap_or_default();
        let ecds = proxy["types"]["ecds"]["acked"].as_str().unwrap_or("-");
        out.push_str(&format!(
            "{:<26} {:<40} {:<12} {:<6} {:<8} {:<6} {}\n",
            pod["pod"].as_str().unwrap_or_default(),
            proxy["identity"].as_str().unwrap_or("-"),
            pod["pod_ip"].as_str().unwrap_or_default(),
            if pod["ready"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            &ecds[..ecds.len().min(8)],
            nacks,
            proxy["certificate_expires"].as_str().unwrap_or("-"),
        ));
    }
    for problem in status["rejected_change"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "refused change: {}\n",
            problem.as_str().unwrap_or_default()
        ));
    }
    out
}
