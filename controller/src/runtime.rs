//! The controller's wiring: starts the tasks and hands each what it owns. The sources' task owns
//! the sources and the store ([`crate::objects`]) and publishes what they settle; the rebuild
//! loop owns the [`Rebuilder`]; the ADS server admits streams through the [`Gate`]
//! ([`crate::admission`]); the admin server reads [`Shared`]. See docs/architecture.md.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use weft_xds::server::AdsService;

use crate::admission::Gate;
use crate::module::Module;
use crate::objects::Sources;
use crate::options::Options;
use crate::pki::{CaFiles, Pki};
use crate::rebuild::Rebuilder;
use crate::serve::stopped;
use crate::shared::Shared;
use crate::watch::{Fingerprint, SETTLE, Settler};

/// A running controller.
pub struct Controller {
    /// What it knows.
    pub shared: Arc<Shared>,
    /// Where the ADS server listens.
    pub xds_address: SocketAddr,
    /// Where the admin server listens.
    pub admin_address: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Controller {
    /// Starts the controller: reads the manifests into the store (objects with errors are
    /// refused and reported, the others are in force), opens the PKI, installs the module, and
    /// starts the ADS server, the admin server, the watcher and the rebuild loop.
    ///
    /// # Errors
    /// When no manifest can be found, or a port, file or certificate cannot be had.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let mut sources = Sources::new(options.manifests.clone());
        let (sources, settled) =
            tokio::task::spawn_blocking(move || sources.read().map(|settled| (sources, settled)))
                .await??;
        prepare_state(&options.state)?;
        let pki = Pki::open(
            &options.state,
            &options.ca,
            &options.trust_domain,
            options.rotation,
        )?;
        let module = Module::install(&options.module, &options.state)?;
        let now = OffsetDateTime::now_utc();
        let server = pki.server_credential(now)?;
        let bundle = pki.control_bundle_pem().to_owned();
        let shared = Arc::new(Shared::new(options, pki, module));
        shared.publish(&settled);
        shared.restore_registered();
        let (shutdown, _) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();

        let descriptors = crate::serve::raise_descriptor_limit();
        let xds = tokio::net::TcpListener::bind(shared.options.xds_listen).await?;
        let xds_address = xds.local_addr()?;
        let tls = crate::channel::server_config(&server.cert_pem, &server.key_pem, &bundle)?;
        let service = AdsService::new(shared.cache.clone(), Arc::new(Gate::new(shared.clone())))
            .with_stop(shutdown.subscribe());
        tasks.spawn(crate::serve::serve_xds(
            xds,
            tls,
            service.into_server(),
            shared.clone(),
            crate::serve::Limits::xds(descriptors),
            shutdown.subscribe(),
        ));

        let admin = tokio::net::TcpListener::bind(shared.options.admin_listen).await?;
        let admin_address = admin.local_addr()?;
        tasks.spawn(crate::admin::serve(
            admin,
            shared.clone(),
            crate::serve::Limits::admin(descriptors),
            shutdown.subscribe(),
        ));

        tasks.spawn(watch_sources(shared.clone(), sources, shutdown.subscribe()));

        tasks.spawn(rebuild_loop(shared.clone(), shutdown.subscribe()));
        Ok(Self {
            shared,
            xds_address,
            admin_address,
            shutdown,
            tasks,
        })
    }

    /// Stops every task and waits for them.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Stops every task and waits for them, leaving a controller that serves nothing (its
    /// ports are free again).
    pub async fn shutdown(&mut self) {
        let _ = self.shutdown.send(true);
        // The gRPC server's graceful stop waits for its HTTP/2 connections, which proxies keep
        // open; after a few seconds it is cut short.
        let drained = tokio::time::timeout(Duration::from_secs(3), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

/// The one task that owns the sources and the store: looks at the manifests and the
/// operator's CA files every [`Options::poll`], and once a change has settled, reads it and
/// publishes what the store settled.
async fn watch_sources(shared: Arc<Shared>, mut sources: Sources, mut stop: watch::Receiver<bool>) {
    // Looking at files and reading them blocks: on a blocking thread, so that a file system
    // that hangs holds the watcher, never the runtime.
    let manifests = shared.options.manifests.clone();
    let ca_files = shared.pki().files().clone();
    let look = move || (fingerprint(&manifests), ca_fingerprint(&ca_files));
    let Ok((manifests_now, ca_now)) = tokio::task::spawn_blocking(look.clone()).await else {
        return;
    };
    let mut manifests_settler = Settler::new(manifests_now, SETTLE);
    let mut ca_settler = Settler::new(ca_now, SETTLE);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(shared.options.poll) => {}
        }
        let Ok((manifests_now, ca_now)) = tokio::task::spawn_blocking(look.clone()).await else {
            return;
        };
        let now = std::time::Instant::now();
        let manifests_changed = manifests_settler.observe(manifests_now, now);
        let ca_changed = ca_settler.observe(ca_now, now);
        if !manifests_changed && !ca_changed {
            continue;
        }
        let reader = shared.clone();
        let reloaded = tokio::task::spawn_blocking(move || {
            if manifests_changed {
                match sources.read() {
                    Ok(settled) => {
                        reader.publish(&settled);
                    }
                    Err(err) => log::error!(
                        "weft: {}: {err}; nothing changes",
                        reader.options.manifests.display()
                    ),
                }
            }
            if ca_changed {
                reader.reload_ca();
            }
            sources
        });
        tokio::select! {
            () = stopped(&mut stop) => return,
            read = reloaded => match read {
                Ok(read) => sources = read,
                Err(err) => {
                    // A bug, never an input: the store is started afresh, and the next change
                    // of the folder is read whole into it (the objects in force stay published
                    // until then).
                    log::error!("weft: reading the manifests failed ({err}); the next change is read afresh");
                    shared.metrics.reconcile_error("manifests");
                    sources = Sources::new(shared.options.manifests.clone());
                }
            },
        }
    }
}

/// The rebuild loop: owns the [`Rebuilder`], and rebuilds on a change, a certificate's
/// renewal deadline or a departed pod to forget.
async fn rebuild_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let grace = shared.options.resume_grace;
    if !grace.is_zero() {
        log::info!(
            "weft: serving configuration in {grace:?}, once running sidecars have reconnected"
        );
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(grace) => {}
        }
    }
    let mut rebuilder = Rebuilder::default();
    loop {
        let started = std::time::Instant::now();
        shared.forget_departed(started);
        rebuilder.rebuild(&shared, OffsetDateTime::now_utc());
        shared.save_registered();
        release_freed_memory();
        // Changes that keep coming (pods of a rollout getting ready one by one) are gathered
        // for as long as the last rebuild took, so that rebuilding takes at most half of the
        // time, and the proxies are sent fewer, larger changes rather than a queue of small
        // ones; a change after a quiet spell waits only the gathering below.
        let rebuilt_at = std::time::Instant::now();
        let next_at = rebuilt_at + (rebuilt_at - started).min(MAX_PACING);
        // Wait for a change, the next renewal deadline read off the wall clock (checked at
        // least every second, so a clock that jumps is noticed), or a departed pod to forget.
        loop {
            shared.beat();
            let until_renewal = shared.next_renewal().map_or(Duration::from_secs(1), |at| {
                let left = at - OffsetDateTime::now_utc();
                Duration::try_from(left).unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                () = stopped(&mut stop) => return,
                () = shared.changed.notified() => {
                    // Changes often come in bursts (an editor writes twice): gather them.
                    let gathered = std::time::Instant::now() + Duration::from_millis(10);
                    tokio::time::sleep_until(gathered.max(next_at).into()).await;
                    break;
                }
                () = tokio::time::sleep(until_renewal.min(Duration::from_secs(1))) => {
                    let renewal = shared.next_renewal().is_some_and(|at| at <= OffsetDateTime::now_utc());
                    if renewal || shared.departure_due(std::time::Instant::now()) {
                        break;
                    }
                }
            }
        }
    }
}

/// What the state folder's `.gitignore` says: everything in it stays out of version control.
pub const STATE_GITIGNORE: &str =
    "# weft's state: the mesh CA's key and every workload's key. Never commit it.\n*\n";

/// Creates the state folder if need be, readable by its owner only, with a `.gitignore` that
/// keeps all of it out of version control (local mode keeps it in the manifests folder by
/// default, which is likely a repository).
///
/// # Errors
/// When the folder or the file cannot be written.
pub fn prepare_state(state: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(state)?;
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700))?;
    let ignore = state.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(&ignore, STATE_GITIGNORE)?;
    }
    Ok(())
}

/// The longest a change waits because the last rebuild was long (see the rebuild loop).
const MAX_PACING: Duration = Duration::from_secs(1);

/// Hands the memory a rebuild freed back to the system. A rebuild holds every pod's old and new
/// snapshot at once; glibc's allocator keeps what was freed for reuse, so without this the
/// controller stays at the high-water mark of its largest rebuild (measured: +260 MiB after
/// 500 pods came and went beside 5,000; docs/BENCHMARKS.md).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heap to the system.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The operator's CA files as the watcher sees them.
fn ca_fingerprint(files: &CaFiles) -> Fingerprint {
    crate::watch::fingerprint(
        [Some(&files.cert), Some(&files.key), files.bundle.as_ref()]
            .into_iter()
            .flatten()
            .cloned(),
    )
}

/// The manifest files, found as the manifests reader finds them (so a link loop ends, hidden
/// entries such as local mode's `DIR/.weft` are skipped), as the watcher sees them.
fn fingerprint(dir: &Path) -> Fingerprint {
    crate::watch::fingerprint(crate::manifests::list(&[dir.to_path_buf()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_ends_on_a_link_loop_skips_hidden_entries_and_sees_an_edit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "kind: x\n").unwrap();
        std::fs::create_dir(dir.path().join(".weft")).unwrap();
        std::fs::write(dir.path().join(".weft/state.yaml"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
        let before = fingerprint(dir.path());
        assert_eq!(before.len(), 1, "{before:?}");
        std::fs::write(dir.path().join("a.yaml"), "kind: changed\n").unwrap();
        assert_ne!(fingerprint(dir.path()), before);
    }

    #[test]
    fn the_state_folder_is_private_and_ignored_by_version_control() {
        use std::os::unix::fs::PermissionsExt as _;
        let manifests = tempfile::tempdir().unwrap();
        let state = manifests.path().join(".weft");
        prepare_state(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let ignore = std::fs::read_to_string(state.join(".gitignore")).unwrap();
        assert!(ignore.lines().any(|line| line == "*"), "{ignore}");
        // git itself agrees, when it is there to ask.
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .current_dir(manifests.path())
                .output()
        };
        if git(&["init", "-q"]).is_ok_and(|o| o.status.success()) {
            std::fs::write(state.join("ca-key.pem"), "key").unwrap();
            let ignored = git(&["check-ignore", "-q", ".weft/ca-key.pem"]).unwrap();
            assert!(ignored.status.success(), "git does not ignore the CA key");
        }
    }
}
