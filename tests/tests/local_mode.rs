//! `weft up` as a user runs it: whatever happens to it or to one of its processes, nothing it
//! started is left behind.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use weft_e2e::mesh::copy_example;
use weft_e2e::paths;

/// A `weft up` process, killed (SIGKILL, so its children go too) if a test ends early.
struct WeftUp(Child);

impl std::ops::Deref for WeftUp {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for WeftUp {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for WeftUp {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `weft up` on a copy of examples/mesh in `subnet`, and a channel of its stderr lines.
fn weft_up(
    subnet: u8,
    state: &std::path::Path,
    manifests: &std::path::Path,
) -> (WeftUp, mpsc::Receiver<String>) {
    let mut child = Command::new(paths::workspace_root().join("target/debug/weft"))
        .arg("up")
        .arg(manifests)
        .arg("--state")
        .arg(state)
        .args([
            "--xds",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--subnet",
            &subnet.to_string(),
        ])
        .arg("--envoy")
        .arg(paths::envoy_binary().unwrap())
        .arg("--module")
        .arg(paths::weft_wasm().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (WeftUp(child), receiver)
}

/// Waits for a stderr line containing `needle`; returns every line seen.
fn wait_for(lines: &mpsc::Receiver<String>, needle: &str, deadline: Duration) -> Vec<String> {
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

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
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
    children
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

fn wait_gone(pids: &[u32]) {
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

#[test]
fn killing_weft_up_takes_every_process_it_started_with_it() {
    let manifests = copy_example("mesh").unwrap();
    let state = tempfile::tempdir().unwrap();
    let (mut weft, lines) = weft_up(60, state.path(), manifests.path());
    wait_for(&lines, "mesh ready", Duration::from_secs(60));
    let children = children_of(weft.id());
    assert_eq!(
        children.len(),
        10,
        "an Envoy and an application per replica: {children:?}"
    );
    weft.kill().unwrap(); // SIGKILL: no chance to clean up
    weft.wait().unwrap();
    wait_gone(&children);
}

#[test]
fn a_crashed_application_stops_the_mesh_and_is_named() {
    let manifests = copy_example("mesh").unwrap();
    let state = tempfile::tempdir().unwrap();
    let (mut weft, lines) = weft_up(62, state.path(), manifests.path());
    wait_for(&lines, "mesh ready", Duration::from_secs(60));
    let children = children_of(weft.id());
    let analytics = children
        .iter()
        .copied()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.contains("weft-upstream") && cmd.contains("analytics"))
        })
        .expect("the analytics application");
    Command::new("kill")
        .args(["-KILL", &analytics.to_string()])
        .status()
        .unwrap();
    let seen = wait_for(&lines, "every process stopped", Duration::from_secs(20));
    let status = weft.wait().unwrap();
    assert!(!status.success());
    let all = seen.join("\n") + &lines.try_iter().collect::<Vec<_>>().join("\n");
    assert!(
        all.contains("the application of shop/analytics-0 exited"),
        "{all}"
    );
    wait_gone(&children);
}

/// Waits until a stderr line contains each of `needles`.
fn wait_for_all(lines: &mpsc::Receiver<String>, needles: &[&str], deadline: Duration) {
    let give_up = Instant::now() + deadline;
    let mut missing: Vec<&str> = needles.to_vec();
    let mut seen = Vec::new();
    while !missing.is_empty() {
        let left = give_up
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("never saw {missing:?} within {deadline:?}: {seen:#?}"));
        let Ok(line) = lines.recv_timeout(left) else {
            panic!("never saw {missing:?} within {deadline:?}: {seen:#?}");
        };
        missing.retain(|needle| !line.contains(needle));
        seen.push(line);
    }
}

/// Writes `text` to `dir/name` the way an editor saving atomically does.
fn write_manifest(dir: &std::path::Path, name: &str, text: &str) {
    let staging = dir.join(format!(".{name}.tmp"));
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, dir.join(name)).unwrap();
}

fn reports(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: reports, namespace: shop}}\nspec:\n  replicas: {replicas}\n  template:\n    metadata: {{labels: {{app: reports}}}}\n    spec:\n      serviceAccountName: reports\n      containers:\n      - command: [weft-upstream, \"$(APP_IP):8080\", reports]\n        ports: [{{containerPort: 8080}}]\n"
    )
}

#[test]
fn a_workload_added_scaled_and_removed_on_disk_starts_and_stops_only_its_replicas() {
    let manifests = copy_example("mesh").unwrap();
    let state = tempfile::tempdir().unwrap();
    let (mut weft, lines) = weft_up(64, state.path(), manifests.path());
    wait_for(&lines, "mesh ready", Duration::from_secs(60));
    let running = children_of(weft.id());
    assert_eq!(running.len(), 10, "{running:?}");

    write_manifest(manifests.path(), "reports.yaml", &reports(1));
    wait_for_all(
        &lines,
        &["started shop/reports-0", "shop/reports-0 is ready"],
        Duration::from_secs(30),
    );
    let one = children_of(weft.id());
    assert_eq!(one.len(), 12, "its Envoy and its application: {one:?}");
    assert!(
        running.iter().all(|pid| one.contains(pid)),
        "none restarted"
    );

    write_manifest(manifests.path(), "reports.yaml", &reports(2));
    wait_for_all(
        &lines,
        &["started shop/reports-1", "shop/reports-1 is ready"],
        Duration::from_secs(30),
    );
    let two = children_of(weft.id());
    assert_eq!(two.len(), 14, "{two:?}");
    assert!(one.iter().all(|pid| two.contains(pid)), "reports-0 kept");

    std::fs::remove_file(manifests.path().join("reports.yaml")).unwrap();
    wait_for_all(
        &lines,
        &["stopped shop/reports-0", "stopped shop/reports-1"],
        Duration::from_secs(30),
    );
    let added: Vec<u32> = two
        .iter()
        .copied()
        .filter(|pid| !running.contains(pid))
        .collect();
    wait_gone(&added);
    let mut left = children_of(weft.id());
    left.sort_unstable();
    let mut expected = running.clone();
    expected.sort_unstable();
    assert_eq!(left, expected, "the rest of the mesh runs on");
    weft.kill().unwrap();
    weft.wait().unwrap();
    wait_gone(&running);
}

#[test]
fn a_workload_whose_command_cannot_start_is_named_and_leaves_no_sidecar_behind() {
    let manifests = copy_example("mesh").unwrap();
    let state = tempfile::tempdir().unwrap();
    let (mut weft, lines) = weft_up(66, state.path(), manifests.path());
    wait_for(&lines, "mesh ready", Duration::from_secs(60));
    let mut running = children_of(weft.id());
    running.sort_unstable();
    write_manifest(
        manifests.path(),
        "broken.yaml",
        &reports(1).replace("weft-upstream", "no-such-program"),
    );
    wait_for_all(
        &lines,
        &["shop/reports-0 did not start", "no-such-program"],
        Duration::from_secs(30),
    );
    let mut after = children_of(weft.id());
    after.sort_unstable();
    assert_eq!(after, running, "no sidecar left without its application");
    assert!(matches!(weft.try_wait(), Ok(None)), "the mesh runs on");
    weft.kill().unwrap();
    weft.wait().unwrap();
    wait_gone(&running);
}
