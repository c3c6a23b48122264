//! `weft up` as a user runs it: whatever happens to it or to one of its processes, nothing it
//! started is left behind.

use std::process::Command;
use std::time::Duration;

use weft_e2e::mesh::write_manifest;
use weft_e2e::up::{WeftUp, children_of, wait_gone};

#[test]
fn killing_weft_up_takes_every_process_it_started_with_it() {
    let mut weft = WeftUp::example(60);
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

/// The pid of the child of `weft` whose command line holds every one of `words`.
fn child_with(weft: &WeftUp, words: &[&str]) -> Option<u32> {
    children_of(weft.id()).into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmd| words.iter().all(|word| cmd.contains(word)))
    })
}

#[test]
fn a_crashed_application_or_sidecar_is_started_again_and_reported_while_the_mesh_runs_on() {
    let mut weft = WeftUp::example(62);
    let running = children_of(weft.id());
    for (role, words) in [
        ("the application", &["weft-upstream", "analytics"][..]),
        ("the sidecar", &["envoy", "analytics-0"][..]),
    ] {
        let crashed = child_with(&weft, words).unwrap_or_else(|| panic!("{role} of analytics"));
        Command::new("kill")
            .args(["-KILL", &crashed.to_string()])
            .status()
            .unwrap();
        weft.wait_for_all(
            &[
                &format!("{role} of shop/analytics-0 exited (signal: 9"),
                &format!("started {role} of shop/analytics-0 again"),
            ],
            Duration::from_secs(20),
        );
        let again = child_with(&weft, words).expect("started again");
        assert_ne!(again, crashed);
        assert!(matches!(weft.try_wait(), Ok(None)), "the mesh runs on");
    }
    // Every other process ran on untouched, and the pod's status counts both restarts.
    let after = children_of(weft.id());
    let untouched = running.iter().filter(|pid| after.contains(pid)).count();
    assert_eq!(untouched, running.len() - 2, "{running:?} then {after:?}");
    let status = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(weft_e2e::client::get_json(weft.admin, "/status"))
        .unwrap();
    let analytics = status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pod| pod["pod"] == "shop/analytics-0")
        .unwrap()
        .clone();
    assert_eq!(analytics["proxy"]["restarts"], 2, "{analytics:#}");
    assert!(
        analytics["proxy"]["last_exit"]
            .as_str()
            .is_some_and(|exit| exit.starts_with("the sidecar: signal: 9")),
        "{analytics:#}"
    );
    weft.kill().unwrap();
    weft.wait().unwrap();
    wait_gone(&after);
}

fn reports(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: reports, namespace: shop}}\nspec:\n  replicas: {replicas}\n  template:\n    metadata: {{labels: {{app: reports}}}}\n    spec:\n      serviceAccountName: reports\n      containers:\n      - command: [weft-upstream, \"$(APP_IP):8080\", reports]\n        ports: [{{containerPort: 8080}}]\n"
    )
}

#[test]
fn a_workload_added_scaled_and_removed_on_disk_starts_and_stops_only_its_replicas() {
    let mut weft = WeftUp::example(64);
    let running = children_of(weft.id());
    assert_eq!(running.len(), 10, "{running:?}");

    write_manifest(weft.manifests(), "reports.yaml", &reports(1)).unwrap();
    weft.wait_for_all(
        &["started shop/reports-0", "shop/reports-0 is ready"],
        Duration::from_secs(30),
    );
    let one = children_of(weft.id());
    assert_eq!(one.len(), 12, "its Envoy and its application: {one:?}");
    assert!(
        running.iter().all(|pid| one.contains(pid)),
        "none restarted"
    );

    write_manifest(weft.manifests(), "reports.yaml", &reports(2)).unwrap();
    weft.wait_for_all(
        &["started shop/reports-1", "shop/reports-1 is ready"],
        Duration::from_secs(30),
    );
    let two = children_of(weft.id());
    assert_eq!(two.len(), 14, "{two:?}");
    assert!(one.iter().all(|pid| two.contains(pid)), "reports-0 kept");

    std::fs::remove_file(weft.manifests().join("reports.yaml")).unwrap();
    weft.wait_for_all(
        &["stopped shop/reports-0", "stopped shop/reports-1"],
        Duration::from_secs(30),
    );
    let added: Vec<u32> = two
        .iter()
        .copied()
        .filter(|pid| !running.contains(pid))
        .collect();
    wait_gone(&added);
    let left = children_of(weft.id());
    assert_eq!(left, running, "the rest of the mesh runs on");
    weft.kill().unwrap();
    weft.wait().unwrap();
    wait_gone(&running);
}

#[test]
fn a_workload_whose_command_cannot_start_is_named_and_leaves_no_sidecar_behind() {
    let mut weft = WeftUp::example(66);
    let running = children_of(weft.id());
    write_manifest(
        weft.manifests(),
        "broken.yaml",
        &reports(1).replace("weft-upstream", "no-such-program"),
    )
    .unwrap();
    weft.wait_for_all(
        &["shop/reports-0 did not start", "no-such-program"],
        Duration::from_secs(30),
    );
    let after = children_of(weft.id());
    assert_eq!(after, running, "no sidecar left without its application");
    assert!(matches!(weft.try_wait(), Ok(None)), "the mesh runs on");
    weft.kill().unwrap();
    weft.wait().unwrap();
    wait_gone(&running);
}

#[test]
fn a_manifest_truncated_for_a_second_is_never_taken_and_a_removed_folder_recovers() {
    let mut weft = WeftUp::example(68);
    let running = children_of(weft.id());
    let dir = weft.manifests().to_path_buf();
    let workloads = dir.join("workloads.yaml");
    let text = std::fs::read_to_string(&workloads).unwrap();
    // Written in place, as an editor or a copy does: truncated, nothing for a second, then
    // the text again.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&workloads)
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&workloads, &text).unwrap();
    // Past the time a change written in place must stay unchanged, nothing stopped.
    std::thread::sleep(weft_controller::watch::SETTLE + Duration::from_millis(1500));
    let seen: Vec<String> = weft.lines.try_iter().collect();
    assert_every_replica_ran_on(&weft, &seen, &running);
    // The folder removed, then written again with a change: the change is taken once the
    // folder is back, and nothing stopped meanwhile.
    std::fs::remove_dir_all(&dir).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::create_dir(&dir).unwrap();
    let example = weft_e2e::paths::workspace_root().join("examples/mesh");
    for entry in std::fs::read_dir(&example).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if name == "split.yaml" {
            text = text.replace("weight: 90", "weight: 0");
        }
        write_manifest(&dir, name.to_str().unwrap(), &text).unwrap();
    }
    let seen = weft.wait_for("manifests changed", Duration::from_secs(20));
    assert_every_replica_ran_on(&weft, &seen, &running);
    weft.kill().unwrap();
    weft.wait().unwrap();
    wait_gone(&running);
}

/// No line of `seen` says a replica stopped, and `weft up`'s children are still `running`.
fn assert_every_replica_ran_on(weft: &WeftUp, seen: &[String], running: &[u32]) {
    assert!(
        !seen.iter().any(|line| line.contains("stopped")),
        "{seen:#?}"
    );
    assert_eq!(children_of(weft.id()), running, "every replica ran on");
}
