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
//!
//! What is refused: only regular files are read (a FIFO would block the reader for good, a link
//! to `/dev/zero` would never end), each at most [`MAX_FILE_BYTES`] and all together at most
//! [`MAX_TOTAL_BYTES`], and a walk stops after [`MAX_ENTRIES`] entries; each refusal is an error
//! against the path. Reading blocks: callers on an async runtime read on a blocking thread.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::files::FileError;

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
    /// Something other than a regular file where a manifest was expected.
    #[error("is {0}, not a regular file; manifests are regular YAML or JSON files")]
    NotRegular(&'static str),
    /// A file larger than [`MAX_FILE_BYTES`].
    #[error(
        "is {0} bytes or more, more than the {MAX_FILE_BYTES} a manifest file may have (a Kubernetes object is at most 1.5 MB); split it"
    )]
    TooLarge(u64),
    /// The files together are larger than [`MAX_TOTAL_BYTES`].
    #[error(
        "is not read: the manifests read before it already hold {MAX_TOTAL_BYTES} bytes, as many as a folder may"
    )]
    TotalTooLarge,
    /// A walk that met more than [`MAX_ENTRIES`] entries.
    #[error(
        "holds more than {MAX_ENTRIES} entries; the rest is not read (a link to a large tree?)"
    )]
    TooManyEntries,
}

/// The largest manifest file read.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// The most bytes read from all manifest files together.
pub const MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;
/// The most directory entries a walk looks at.
pub const MAX_ENTRIES: usize = 10_000;

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
    let mut total = 0;
    for path in walk.files {
        match read_file(&path, MAX_TOTAL_BYTES.saturating_sub(total)) {
            Ok(text) => {
                total += text.len() as u64;
                manifests.files.push((path.display().to_string(), text));
            }
            Err(error) => manifests.problems.push(problem(&path, error)),
        }
    }
    if manifests.files.is_empty() && manifests.problems.is_empty() {
        let given: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(ManifestsError::Empty(given.join(", ")));
    }
    Ok(manifests)
}

/// The text of the regular manifest file `path`, of at most [`MAX_FILE_BYTES`] and at most
/// `room` bytes ([`crate::files::read_text`]).
fn read_file(path: &Path, room: u64) -> Result<String, ManifestsError> {
    let limit = MAX_FILE_BYTES.min(room);
    crate::files::read_text(path, limit).map_err(|error| match error {
        FileError::Read(source) => ManifestsError::Read(source),
        FileError::NotRegular(kind) => ManifestsError::NotRegular(kind),
        FileError::TooLarge { .. } if limit < MAX_FILE_BYTES => ManifestsError::TotalTooLarge,
        FileError::TooLarge { size, .. } => ManifestsError::TooLarge(size),
        FileError::NotText => ManifestsError::NotText,
    })
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
    /// Directory entries looked at.
    entries: usize,
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
        if self.entries > MAX_ENTRIES || !self.first_time(path) {
            return;
        }
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(source) => return self.unreadable(path, source),
        };
        let mut paths = Vec::new();
        for entry in entries {
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                self.problems
                    .push(problem(path, ManifestsError::TooManyEntries));
                return;
            }
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
                // A manifest's name on something that is not a file is reported when read.
                Ok(_) if manifest_name => self.file(&entry),
                Ok(_) => {}
                // A manifest's link to nowhere is reported, not silently skipped.
                Err(source) if manifest_name => self.unreadable(&entry, source),
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_past_the_room_left_is_refused_as_too_much_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "kind: x\n").unwrap();
        assert_eq!(read_file(&file, 1024).unwrap(), "kind: x\n");
        assert!(matches!(
            read_file(&file, 4),
            Err(ManifestsError::TotalTooLarge)
        ));
    }

    #[test]
    fn a_walk_stops_after_its_entries_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "kind: x\n").unwrap();
        for i in 0..MAX_ENTRIES {
            std::fs::write(dir.path().join(format!("n{i}.txt")), "").unwrap();
        }
        let walk = Walk::over(&[dir.path().to_path_buf()]);
        assert!(walk.files.is_empty(), "{} files", walk.files.len());
        assert_eq!(walk.problems.len(), 1);
        assert!(
            walk.problems[0]
                .message
                .starts_with(&format!("holds more than {MAX_ENTRIES} entries")),
            "{}",
            walk.problems[0].message
        );
    }
}
