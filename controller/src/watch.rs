//! When a change of watched files is taken. Files are looked at, not read: a fingerprint is
//! each file's identity on disk (device and inode), size and modification time. A change is
//! taken at once when every changed file was replaced whole, the way editors, `sed -i`,
//! kubectl-like tools and ConfigMap volumes save (a new file renamed over the old name, so the
//! name never shows a half-written file); any other change (a file written in place, created,
//! removed) is taken only once nothing has changed for [`SETTLE`], so that a file truncated
//! and written again, or copied in piece by piece, is never taken half-written. Pure but for
//! [`fingerprint`], which reads metadata.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long files changed other than by a rename must stay unchanged before the change is
/// taken: longer than an editor or a copy takes to write a manifest in place.
pub const SETTLE: Duration = Duration::from_secs(2);

/// One file as the watcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileState {
    /// Device and inode: which file the name leads to.
    pub identity: (u64, u64),
    /// Its size.
    pub size: u64,
    /// Its modification time, nanoseconds since the epoch.
    pub modified: i128,
}

/// Every watched path and its state (`None`: it cannot be looked at).
pub type Fingerprint = Vec<(PathBuf, Option<FileState>)>;

/// The state of `path` (links followed).
pub fn state(path: &Path) -> Option<FileState> {
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileState {
        identity: (metadata.dev(), metadata.ino()),
        size: metadata.size(),
        modified: i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec()),
    })
}

/// The fingerprint of `paths`, in their order.
pub fn fingerprint(paths: impl IntoIterator<Item = PathBuf>) -> Fingerprint {
    paths
        .into_iter()
        .map(|path| {
            let state = state(&path);
            (path, state)
        })
        .collect()
}

/// Whether `after` differs from `before` only by files replaced whole: the same names, and
/// each name that changed leads to another file that can be looked at.
fn replaced_whole(before: &Fingerprint, after: &Fingerprint) -> bool {
    before.len() == after.len()
        && before
            .iter()
            .zip(after)
            .all(|((path, old), (new_path, new))| {
                path == new_path
                    && (old == new
                        || matches!((old, new), (Some(old), Some(new)) if old.identity != new.identity))
            })
}

/// Decides, poll by poll, when a change is taken.
#[derive(Debug)]
pub struct Settler {
    taken: Fingerprint,
    /// A change seen and not yet taken: what it looks like, and since when.
    pending: Option<(Fingerprint, Instant)>,
    settle: Duration,
}

impl Settler {
    /// A settler for files that look like `taken` now (what is loaded).
    pub fn new(taken: Fingerprint, settle: Duration) -> Self {
        Self {
            taken,
            pending: None,
            settle,
        }
    }

    /// The files look like `seen` at `now`: whether the change (if any) is to be taken now.
    /// Once it says so, `seen` is what is taken.
    pub fn observe(&mut self, seen: Fingerprint, now: Instant) -> bool {
        if seen == self.taken {
            self.pending = None;
            return false;
        }
        let settled = match &self.pending {
            Some((pending, since)) if *pending == seen => now.duration_since(*since) >= self.settle,
            _ => {
                self.pending = Some((seen.clone(), now));
                false
            }
        };
        if settled || replaced_whole(&self.taken, &seen) {
            self.taken = seen;
            self.pending = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(inode: u64, size: u64, modified: i128) -> Option<FileState> {
        Some(FileState {
            identity: (1, inode),
            size,
            modified,
        })
    }

    fn print(files: &[(&str, Option<FileState>)]) -> Fingerprint {
        files
            .iter()
            .map(|(path, state)| (PathBuf::from(path), *state))
            .collect()
    }

    #[test]
    fn a_file_renamed_into_place_is_taken_at_once() {
        let start = Instant::now();
        let mut settler = Settler::new(print(&[("a.yaml", file(1, 10, 1))]), SETTLE);
        assert!(!settler.observe(print(&[("a.yaml", file(1, 10, 1))]), start));
        assert!(settler.observe(print(&[("a.yaml", file(2, 12, 2))]), start));
    }

    #[test]
    fn a_file_truncated_for_a_second_is_not_taken_and_its_rewrite_is_taken_once_settled() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let original = print(&[("a.yaml", file(1, 10, 1))]);
        let mut settler = Settler::new(original.clone(), SETTLE);
        let truncated = print(&[("a.yaml", file(1, 0, 2))]);
        for ms in (0..=1000).step_by(100) {
            assert!(!settler.observe(truncated.clone(), at(ms)), "{ms} ms");
        }
        // Written back as it was: nothing to take.
        let rewritten = print(&[("a.yaml", file(1, 10, 3))]);
        for ms in (1100..3100).step_by(100) {
            assert!(!settler.observe(rewritten.clone(), at(ms)), "{ms} ms");
        }
        assert!(settler.observe(rewritten.clone(), at(3100)));
        assert!(!settler.observe(rewritten, at(3200)), "taken once");
    }

    #[test]
    fn a_removed_or_new_file_waits_for_the_folder_to_settle() {
        let start = Instant::now();
        let mut settler = Settler::new(print(&[("a.yaml", file(1, 10, 1))]), SETTLE);
        let gone = print(&[]);
        assert!(!settler.observe(gone.clone(), start));
        assert!(!settler.observe(gone.clone(), start + Duration::from_secs(1)));
        // Back before it settled (an editor that removes and writes anew): nothing changed.
        assert!(!settler.observe(
            print(&[("a.yaml", file(1, 10, 1))]),
            start + Duration::from_secs(1)
        ));
        assert!(!settler.observe(gone.clone(), start + Duration::from_secs(2)));
        assert!(settler.observe(gone, start + Duration::from_secs(4)));
        let added = print(&[("b.yaml", file(3, 5, 5))]);
        assert!(!settler.observe(added.clone(), start + Duration::from_secs(5)));
        assert!(settler.observe(added, start + Duration::from_secs(7)));
    }

    #[test]
    fn a_fingerprint_sees_a_rename_over_a_file_and_an_edit_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, "kind: a\n").unwrap();
        let before = fingerprint([path.clone()]);
        std::fs::write(dir.path().join(".a.tmp"), "kind: b\n").unwrap();
        std::fs::rename(dir.path().join(".a.tmp"), &path).unwrap();
        let renamed = fingerprint([path.clone()]);
        assert!(replaced_whole(&before, &renamed));
        std::fs::write(&path, "kind: changed in place\n").unwrap();
        let edited = fingerprint([path]);
        assert_ne!(edited, renamed);
        assert!(!replaced_whole(&renamed, &edited));
    }
}
