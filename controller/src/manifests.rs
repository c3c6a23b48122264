//! Reading manifest files: paths given on the command line, directories walked recursively
//! for `.yaml`, `.yml` and `.json` files in a stable (sorted) order.

use std::path::{Path, PathBuf};

/// Why manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestsError {
    /// A path that cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No manifest file under the given paths.
    #[error("no .yaml, .yml or .json files under {0}")]
    Empty(String),
}

/// Every manifest file under `paths`, with its text.
///
/// # Errors
/// [`ManifestsError`] for an unreadable path, or when no manifest file is found.
pub fn read(paths: &[PathBuf]) -> Result<Vec<(String, String)>, ManifestsError> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    if files.is_empty() {
        let given: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(ManifestsError::Empty(given.join(", ")));
    }
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|source| ManifestsError::Read {
                path: path.display().to_string(),
                source,
            })?;
            Ok((path.display().to_string(), text))
        })
        .collect()
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), ManifestsError> {
    let error = |source| ManifestsError::Read {
        path: path.display().to_string(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(error)?;
    if metadata.is_file() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(error)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(error)?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect(&entry, files)?;
        } else if matches!(
            entry.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(entry);
        }
    }
    Ok(())
}
