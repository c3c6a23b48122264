//! `weft up` run as a user runs it, as a child process, on a copy of examples/mesh: its stderr
//! lines on a channel, the controller's admin address read off them, its children found
//! through `/proc`, and a SIGKILL (which takes its children with it) if a test ends early.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::paths;

/// A `weft up` process, its mesh ready.
pub struct WeftUp {
    child: Child,
    /// Its stderr, line by line (from after the mesh was ready).
    pub lines: mpsc::Receiver<String>,
    /// The controller's admin address (status, metrics).
    pub admin: SocketAddr,
    /// Its manifests folder, a copy of examples/mesh.
    manifests: tempfile::TempDir,
    _state: tempfile::TempDir,
}

impl std::ops::Deref for WeftUp {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for WeftUp {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for WeftUp {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl WeftUp {
    /// `weft up` on a copy of examples/mesh in `subnet` (pods at 127.SUBNET+1.k.n), once its
    /// mesh is ready.
    ///
    /// # Panics
    /// When `target/debug/weft`, Envoy or the module is missing, or the mesh is not ready
    /// within a minute.
    pub fn example(subnet: u8) -> Self {
        Self::example_with(subnet, |_| {})
    }

    /// [`WeftUp::example`], with `prepare` changing the copied manifests before `weft up`
    /// reads them.
    ///
    /// # Panics
    /// As [`WeftUp::example`].
    pub fn example_with(subnet: u8, prepare: impl FnOnce(&Path)) -> Self {
        let manifests = crate::mesh::copy_example("mesh").expect("examples/mesh");
        prepare(manifests.path());
        let state = tempfile::tempdir().expect("a state folder");
        let mut child = Command::new(paths::workspace_root().join("target/debug/weft"))
            .arg("up")
            .arg(manifests.path())
            .arg("--state")
            .arg(state.path())
            .args([
                "--xds",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--subnet",
                &subnet.to_string(),
            ])
            .arg("--envoy")
            .arg(paths::envoy_binary().expect("Envoy (make setup)"))
            .arg("--module")
            .arg(paths::weft_wasm().expect("weft.wasm (make build)"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("target/debug/weft (make build)");
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        // Killed on the way out if it never gets ready.
        let mut up = Self {
            child,
            lines: receiver,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            manifests,
            _state: state,
        };
        let seen = up.wait_for("mesh ready", Duration::from_secs(60));
        up.admin = seen
            .iter()
            .find_map(|line| {
                let (_, after) = line.split_once("status on http://")?;
                after.split_once('/')?.0.parse().ok()
            })
            .unwrap_or_else(|| panic!("no admin address in {seen:#?}"));
        up
    }

    /// Its manifests folder.
    pub fn manifests(&self) -> &Path {
        self.manifests.path()
    }

    /// Waits for a stderr line containing `needle`; returns every line seen.
    ///
    /// # Panics
    /// When none comes within `deadline`.
    pub fn wait_for(&self, needle: &str, deadline: Duration) -> Vec<String> {
        wait_for(&self.lines, needle, deadline)
    }

    /// Waits until a stderr line contained each of `needles`.
    ///
    /// # Panics
    /// When one does not come within `deadline`.
    pub fn wait_for_all(&self, needles: &[&str], deadline: Duration) {
        let give_up = Instant::now() + deadline;
        let mut missing: Vec<&str> = needles.to_vec();
        let mut seen = Vec::new();
        while !missing.is_empty() {
            let line = give_up
                .checked_duration_since(Instant::now())
                .and_then(|left| self.lines.recv_timeout(left).ok())
                .unwrap_or_else(|| panic!("never saw {missing:?} within {deadline:?}: {seen:#?}"));
            missing.retain(|needle| !line.contains(needle));
            seen.push(line);
        }
    }
}

/// Waits for a line containing `needle`; returns every line seen.
///
/// # Panics
/// When none comes within `deadline`.
pub fn wait_for(lines: &mpsc::Receiver<String>, needle: &str, deadline: Duration) -> Vec<String> {
    let give_up = Instant::now() + deadline;
    let mut seen = Vec::new();
    while let Some(left) = give_up.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {deadline:?}: {seen:#?}");
}

/// The processes whose parent is `pid`, in pid order.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis: state, then ppid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            children.push(child);
        }
    }
    children.sort_unstable();
    children
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// Waits until none of `pids` runs.
///
/// # Panics
/// When one still runs after 10 s.
pub fn wait_gone(pids: &[u32]) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|pid| alive(*pid)) {
        assert!(
            Instant::now() < give_up,
            "still running: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
