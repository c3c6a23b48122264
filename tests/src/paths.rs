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
    let path = std::env::var_os("WEFT_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/envoy"));
    ensure!(
        path.exists(),
        "no Envoy at {}: run `make setup`",
        path.display()
    );
    Ok(path)
}

/// The built filter module: `$WEFT_WASM`, or `target/wasm/weft.wasm` as written by `make build`.
pub fn weft_wasm() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("WEFT_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/wasm/weft.wasm"));
    ensure!(
        path.exists(),
        "no filter module at {}: run `make build`",
        path.display()
    );
    path.canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))
}
