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
