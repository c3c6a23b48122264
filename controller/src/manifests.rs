//! Reading manifest files: paths given on the command line, directories walked recursively for
//! `.yaml`, `.yml` and `.json` files in a stable (sorted) order.
//!
//! What is followed: symbolic links to files and to directories are followed, but each real
//! file is read once and each real directory walked once, so a link loop ends and a file
//! reached by two names is not read twice. Entries whose names start with `.` are skipped
//! inside directories (hidden files, editors' swap files, and the `..data` and timestamped
//! folders of a Kubernetes ConfigMap volume, whose files are read through the links next to
//! them); a path given on the command line is always read. A file that cannot be read, or is
//! not UTF-8 text, is reported against its path and the others are still read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use weft_policy::diagnostic::{Diagnostic, Origin, Severity};

/// Why a file or directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestsError {
    /// A path that cannot be read (the diagnostic it makes names the path).
    #[error("cannot be read: {0}")]
    Read(std::io::Error),
    /// A file whose bytes are not UTF-8 text.
    #[error("is not UTF-8 text; manifests are YAML or JSON text files")]
    NotText,
    /// No manifest file under the given paths.
    #[error("no .yaml, .yml or .json files under {0}")]
    Empty(String),
}

/// The manifest files found, and the problems met reading them.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Each file's path and text, in a stable order.
    pub files: Vec<(String, String)>,
    /// One error per path that could not be read, against that path.
    pub problems: Vec<Diagnostic>,
}

/// Every manifest file under `paths`, with its text, and an error for each path that could not
/// be read.
///
/// # Errors
/// [`ManifestsError::Empty`] when nothing at all was found or reported under `paths`.
pub fn read(paths: &[PathBuf]) -> Result<Manifests, ManifestsError> {
    let walk = Walk::over(paths);
    let mut manifests = Manifests {
        files: Vec::new(),
        problems: walk.problems,
    };
    for path in walk.files {
        match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => manifests.files.push((path.display().to_string(), text)),
                Err(_) => manifests
                    .problems
                    .push(problem(&path, ManifestsError::NotText)),
            },
            Err(source) => manifests
                .problems
                .push(problem(&path, ManifestsError::Read(source))),
        }
    }
    if manifests.files.is_empty() && manifests.problems.is_empty() {
        let given: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(ManifestsError::Empty(given.join(", ")));
    }
    Ok(manifests)
}

/// The manifest files under `paths`, found as [`read`] finds them (links followed once, hidden
/// entries skipped), without reading them: what a watcher looks at.
pub fn list(paths: &[PathBuf]) -> Vec<PathBuf> {
    Walk::over(paths).files
}

/// An error against a whole file (line 0).
fn problem(path: &Path, error: ManifestsError) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        kind: None,
        namespace: None,
        name: None,
        field: String::new(),
        origin: Some(Origin::at(&path.display().to_string(), 0)),
        message: error.to_string(),
    }
}

#[derive(Default)]
struct Walk {
    files: Vec<PathBuf>,
    problems: Vec<Diagnostic>,
    /// Real (canonical) paths of the files and directories taken so far.
    seen: HashSet<PathBuf>,
}

impl Walk {
    fn over(paths: &[PathBuf]) -> Self {
        let mut walk = Self::default();
        for path in paths {
            walk.given(path);
        }
        walk
    }

    fn unreadable(&mut self, path: &Path, source: std::io::Error) {
        self.problems
            .push(problem(path, ManifestsError::Read(source)));
    }

    /// A path from the command line: a file is read whatever its name.
    fn given(&mut self, path: &Path) {
        match std::fs::metadata(path) {
            Ok(metadata) if metadata.is_dir() => self.directory(path),
            Ok(_) => self.file(path),
            Err(source) => self.unreadable(path, source),
        }
    }

    /// Takes `path` unless its real path was taken already.
    fn first_time(&mut self, path: &Path) -> bool {
        match std::fs::canonicalize(path) {
            Ok(real) => self.seen.insert(real),
            Err(_) => true,
        }
    }

    fn file(&mut self, path: &Path) {
        if self.first_time(path) {
            self.files.push(path.to_path_buf());
        }
    }

    fn directory(&mut self, path: &Path) {
        if !self.first_time(path) {
            return;
        }
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(source) => return self.unreadable(path, source),
        };
        let mut paths = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => paths.push(entry.path()),
                Err(source) => return self.unreadable(path, source),
            }
        }
        paths.sort();
        for entry in paths {
            let hidden = entry
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with('.'));
            if hidden {
                continue;
            }
            let manifest_name = matches!(
                entry.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            );
            match std::fs::metadata(&entry) {
                Ok(metadata) if metadata.is_dir() => self.directory(&entry),
                Ok(_) if manifest_name => self.file(&entry),
                Ok(_) => {}
                // A manifest's link to nowhere is reported, not silently skipped.
                Err(source) if manifest_name => self.unreadable(&entry, source),
                Err(_) => {}
            }
        }
    }
}
