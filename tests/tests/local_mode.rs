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

#[test]
fn a_crashed_application_stops_the_mesh_and_is_named() {
    let mut weft = WeftUp::example(62);
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
    let seen = weft.wait_for("every process stopped", Duration::from_secs(20));
    let status = weft.wait().unwrap();
    assert!(!status.success());
    let all = seen.join("\n") + &weft.lines.try_iter().collect::<Vec<_>>().join("\n");
    assert!(
        all.contains("the application of shop/analytics-0 exited"),
        "{all}"
    );
    wait_gone(&children);
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
    let mut weft = WeftUp::example(66);
    let mut running = children_of(weft.id());
    running.sort_unstable();
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
    let mut after = children_of(weft.id());
    after.sort_unstable();
    assert_eq!(after, running, "no sidecar left without its application");
    assert!(matches!(weft.try_wait(), Ok(None)), "the mesh runs on");
    weft.kill().unwrap();
    weft.wait().unwrap();
    wait_gone(&running);
}
