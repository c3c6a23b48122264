//! `weft-wasm-build`: `cargo run -p weft-wasm-build --release` (what `make build` runs).
//! Compiles `filters/envoy` for `wasm32-wasip1` with the `wasm` profile (the workspace Cargo.toml), keeps only the exports
//! in [`ENVOY_ENTRY_POINTS`] (so Envoy does not enter the VM for hooks weft does not implement),
//! runs `wasm-opt` over it (which also drops the code nothing references any more) and keeps the
//! result only when it is smaller, then writes `target/wasm/weft.wasm` and
//! `target/wasm/manifest.json`. Pass `--no-opt` to skip the optimiser; the exports are pruned
//! either way, because they change what Envoy calls.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use weft_wasm_build::code::{LARGEST_FUNCTION_BUDGET, function_sizes};
use weft_wasm_build::exports::{ENVOY_ENTRY_POINTS, keep_exports};
use weft_wasm_build::{MANIFEST_FILE, MODULE_FILE, Manifest, Optimisation};

const TARGET: &str = "wasm32-wasip1";
const PACKAGE: &str = "weft-envoy";
/// The Cargo profile of the module (the workspace's Cargo.toml says how it differs from
/// `release`, and why).
const PROFILE: &str = "wasm";
/// Optimiser flags. The wasm feature flags match what rustc emits for wasm32-wasip1, which
/// V8 in Envoy supports; `-O3` optimises for speed (see docs/decisions.md for the measurement).
/// A function with one caller is inlined only when it is small: V8 compiles every function of
/// the module with TurboFan when Envoy loads it, and the memory that takes for the largest
/// functions stays in Envoy's heap (docs/decisions.md, "Small functions for V8").
const WASM_OPT_FLAGS: &[&str] = &[
    "-O3",
    "--one-caller-inline-max-function-size",
    ONE_CALLER_INLINE_MAX_SIZE,
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-reference-types",
    "--enable-multivalue",
    "--strip-debug",
];

/// wasm-opt's measure of a function's size (its expressions) up to which a function with a
/// single caller is still inlined into it (wasm-opt's default is no limit).
const ONE_CALLER_INLINE_MAX_SIZE: &str = "200";

fn main() -> anyhow::Result<()> {
    let optimise = !std::env::args().skip(1).any(|arg| arg == "--no-opt");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("wasm-build has no parent directory")?
        .to_path_buf();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--profile",
            PROFILE,
            "--target",
            TARGET,
            "-p",
            PACKAGE,
        ])
        .status()
        .context("cannot run cargo")?;
    ensure!(
        status.success(),
        "cargo build of {PACKAGE} for {TARGET} failed ({status}); is the target installed? (`make setup`)"
    );

    let compiled = target_dir
        .join(TARGET)
        .join(PROFILE)
        .join("weft_envoy.wasm");
    let out_dir = target_dir.join("wasm");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let module_path = out_dir.join(MODULE_FILE);
    let compiled_bytes =
        std::fs::read(&compiled).with_context(|| format!("cannot read {}", compiled.display()))?;
    let raw = keep_exports(&compiled_bytes, ENVOY_ENTRY_POINTS)
        .with_context(|| format!("cannot prune the exports of {}", compiled.display()))?;
    let pruned = out_dir.join("weft.pruned.wasm");
    std::fs::write(&pruned, &raw).with_context(|| format!("cannot write {}", pruned.display()))?;

    let (module, optimisation) = if optimise {
        let (bytes, report) =
            run_wasm_opt(&pruned, &out_dir.join("weft.opt.wasm"), raw.len() as u64)?;
        if report.kept {
            (bytes, Some(report))
        } else {
            (raw, Some(report))
        }
    } else {
        (raw, None)
    };

    std::fs::write(&module_path, &module)
        .with_context(|| format!("cannot write {}", module_path.display()))?;
    let manifest = Manifest::describe(env!("CARGO_PKG_VERSION"), &module, optimisation);
    let manifest_path = out_dir.join(MANIFEST_FILE);
    std::fs::write(
        &manifest_path,
        serde_json::to_string_pretty(&manifest)? + "\n",
    )
    .with_context(|| format!("cannot write {}", manifest_path.display()))?;

    if let Some(report) = &manifest.optimisation {
        println!(
            "wasm-build: {} {} -> {} bytes ({}), kept: {}",
            report.tool,
            report.size_before,
            report.size_after,
            percent_change(report.size_before, report.size_after),
            if report.kept {
                "optimised"
            } else {
                "unoptimised (not smaller)"
            }
        );
    }
    let largest = function_sizes(&module)
        .context("cannot read the module's code")?
        .into_iter()
        .max()
        .unwrap_or(0);
    println!(
        "wasm-build: largest function {largest} bytes (tests/tests/artifacts.rs allows {LARGEST_FUNCTION_BUDGET})"
    );
    println!(
        "wasm-build: wrote {} ({} bytes, sha256 {}) and {}",
        module_path.display(),
        manifest.size,
        manifest.sha256,
        manifest_path.display()
    );
    Ok(())
}

fn run_wasm_opt(
    input: &Path,
    output: &Path,
    size_before: u64,
) -> anyhow::Result<(Vec<u8>, Optimisation)> {
    let version = Command::new("wasm-opt").arg("--version").output().context(
        "wasm-opt not found: run `make setup` (Debian package binaryen), or build with --no-opt",
    )?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let status = Command::new("wasm-opt")
        .args(WASM_OPT_FLAGS)
        .arg(input)
        .arg("-o")
        .arg(output)
        .status()
        .context("cannot run wasm-opt")?;
    if !status.success() {
        bail!("wasm-opt failed ({status}) on {}", input.display());
    }
    let bytes =
        std::fs::read(output).with_context(|| format!("cannot read {}", output.display()))?;
    let size_after = bytes.len() as u64;
    let report = Optimisation {
        tool: format!("{version} {}", WASM_OPT_FLAGS.join(" ")),
        size_before,
        size_after,
        kept: size_after < size_before,
    };
    Ok((bytes, report))
}

fn percent_change(before: u64, after: u64) -> String {
    if before == 0 {
        return "n/a".to_owned();
    }
    let change = (after as f64 - before as f64) * 100.0 / before as f64;
    format!("{change:+.1}%")
}
