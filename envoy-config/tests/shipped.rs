//! `envoy-configs/` is what `weft_envoy_config::shipped` generates from `examples/shop`.

use std::path::Path;
use std::process::Command;

fn check(root: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft-envoy-configs"))
        .args(["--check", "--root"])
        .arg(root)
        .output()
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn the_shipped_configurations_are_what_envoy_config_generates() {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let output = check(repository);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_hand_edit_of_a_shipped_configuration_is_caught() {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let copy = tempfile::tempdir().unwrap();
    for dir in ["examples/shop", "envoy-configs"] {
        copy_dir(&repository.join(dir), &copy.path().join(dir));
    }
    assert!(check(copy.path()).status.success());
    let edited = copy.path().join("envoy-configs/standalone.yaml");
    let text = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(&edited, text.replace("FAIL_CLOSED", "FAIL_OPEN")).unwrap();
    let output = check(copy.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("standalone.yaml differs") && stderr.contains("make envoy-configs"),
        "{stderr}"
    );
}
