//! Writes `envoy-configs/` from `weft_envoy_config::shipped` and `examples/shop`
//! (`make envoy-configs`); with `--check`, exits 1 naming each file that differs instead.
//! `--root DIR` reads and writes under DIR instead of the repository.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|arg| arg == "--check");
    let root = match args.iter().position(|arg| arg == "--root") {
        Some(at) => PathBuf::from(args.get(at + 1).context("--root needs a folder")?),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the crate sits in the workspace")?
            .to_path_buf(),
    };
    let example = read_example(&root.join("examples/shop"))?;
    let mut stale = Vec::new();
    for config in weft_envoy_config::shipped::generate(&example)? {
        let path = root.join("envoy-configs").join(config.file);
        let text = config.yaml()?;
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path);
            }
        } else {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        for path in &stale {
            eprintln!(
                "{} differs from what envoy-config generates; run `make envoy-configs`",
                path.display()
            );
        }
        std::process::exit(1);
    }
    Ok(())
}

/// The example's manifests as (file name relative to the repository root, text), in name order.
fn read_example(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok((
                format!(
                    "examples/shop/{}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ),
                text,
            ))
        })
        .collect()
}
