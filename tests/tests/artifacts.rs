//! The built artifacts and the shipped Envoy configurations are what they claim to be.

use std::path::Path;
use std::process::Command;

use weft_e2e::paths;
use weft_wasm_build::{MANIFEST_FILE, Manifest};

#[test]
fn the_manifest_describes_the_built_module() {
    let module_path = paths::weft_wasm().unwrap();
    let module = std::fs::read(&module_path).unwrap();
    let manifest = Manifest::read(&module_path.with_file_name(MANIFEST_FILE)).unwrap();
    assert_eq!(manifest.name, "weft.wasm");
    assert_eq!(manifest.version, env!("CARGO_PKG_VERSION"));
    manifest.verify(&module).unwrap();
    assert!(module.starts_with(b"\0asm"), "not a wasm module");
    if let Some(optimisation) = &manifest.optimisation {
        // A kept optimisation is smaller by construction, and the module is what was kept.
        let expected = if optimisation.kept {
            optimisation.size_after
        } else {
            optimisation.size_before
        };
        assert_eq!(manifest.size, expected, "{optimisation:?}");
    }
}

/// Runs `envoy --mode validate` on `config` from the workspace root (where the shipped
/// configurations' relative path to `target/wasm/weft.wasm` resolves).
fn validate(config: &Path) -> (bool, String) {
    let output = Command::new(paths::envoy_binary().unwrap())
        .current_dir(paths::workspace_root())
        .args([
            "--mode",
            "validate",
            "--use-dynamic-base-id",
            "--log-level",
            "warning",
            "-c",
        ])
        .arg(config)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), log)
}

#[test]
fn every_shipped_envoy_configuration_passes_envoy_validation() {
    paths::weft_wasm().unwrap();
    let dir = paths::workspace_root().join("envoy-configs");
    let mut configs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    configs.sort();
    assert!(
        !configs.is_empty(),
        "no configurations in {}",
        dir.display()
    );
    for config in &configs {
        let (ok, log) = validate(config);
        assert!(ok, "{} is invalid:\n{log}", config.display());
    }
}

#[test]
fn envoy_validation_rejects_a_broken_configuration() {
    // The check above means something only if validation can fail: an unknown field must.
    let dir = tempfile::tempdir().unwrap();
    let standalone =
        std::fs::read_to_string(paths::workspace_root().join("envoy-configs/standalone.yaml"))
            .unwrap();
    let broken = standalone.replace("failure_policy: FAIL_CLOSED", "failure_polcy: FAIL_CLOSED");
    assert_ne!(
        broken, standalone,
        "the standalone configuration no longer sets failure_policy"
    );
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let (ok, log) = validate(&path);
    assert!(!ok, "validation accepted an unknown field:\n{log}");
    assert!(log.contains("failure_polcy"), "{log}");
}
