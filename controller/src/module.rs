//! The filter module the controller serves: installed content-addressed in the state folder
//! (`modules/weft-<sha256>.wasm`), and the digests of every module it installed, the only ones
//! a sidecar may name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The largest module read or fetched (weft.wasm is about 250 KB).
pub const MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;

/// Module bytes and where the controller keeps them (content-addressed).
#[derive(Debug, Clone)]
pub struct Module {
    /// Hex SHA-256.
    pub sha256: String,
    /// The file sidecars on this host load: `<state>/modules/weft-<sha256>.wasm`.
    pub path: PathBuf,
    /// The bytes (served at `/module`).
    pub bytes: Arc<Vec<u8>>,
}

impl Module {
    /// The hex SHA-256 that names a module (its file name, `x-weft-module-sha256`).
    pub fn digest(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The digests of `current` and of every module kept in `state/modules` whose content
    /// is what its name says.
    pub fn installed(state: &Path, current: &Self) -> BTreeSet<String> {
        let mut known = BTreeSet::from([current.sha256.clone()]);
        let Ok(entries) = std::fs::read_dir(state.join("modules")) else {
            return known;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(sha) = name
                .to_str()
                .and_then(|n| n.strip_prefix("weft-"))
                .and_then(|n| n.strip_suffix(".wasm"))
            else {
                continue;
            };
            let bytes = crate::files::read_regular(&entry.path(), MAX_MODULE_BYTES);
            if bytes.is_ok_and(|bytes| Self::digest(&bytes) == sha) {
                known.insert(sha.to_owned());
            }
        }
        known
    }

    /// Reads `source` and keeps it in `state/modules` under its digest.
    ///
    /// # Errors
    /// When it cannot be read or written.
    pub fn install(source: &Path, state: &Path) -> anyhow::Result<Self> {
        let bytes = crate::files::read_regular(source, MAX_MODULE_BYTES).map_err(|err| {
            anyhow::anyhow!("{}: {err} (run `make build` first)", source.display())
        })?;
        let sha256 = Self::digest(&bytes);
        let dir = state.join("modules");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("weft-{sha256}.wasm"));
        // A file under this name that is not these bytes (corrupted, tampered with) is
        // replaced: the name is a promise about the content.
        let intact = crate::files::read_regular(&path, MAX_MODULE_BYTES)
            .is_ok_and(|kept| Sha256::digest(&kept)[..] == Sha256::digest(&bytes)[..]);
        if !intact {
            // Written whole, then renamed: a sidecar never sees a half-written module.
            let staging = dir.join(format!(".weft-{sha256}.tmp"));
            std::fs::write(&staging, &bytes)?;
            std::fs::rename(&staging, &path)?;
        }
        Ok(Self {
            sha256,
            path: std::fs::canonicalize(&path)?,
            bytes: Arc::new(bytes),
        })
    }
}

/// The module sidecars load, and every module this controller installed.
#[derive(Debug, Clone)]
pub struct Modules {
    /// The module sidecars load (unless they named their own).
    pub current: Module,
    /// The digests of every module this controller installed.
    known: BTreeSet<String>,
}

impl Modules {
    /// `current`, and every intact module kept in `state/modules`.
    pub fn open(state: &Path, current: Module) -> Self {
        Self {
            known: Module::installed(state, &current),
            current,
        }
    }

    /// Makes `module` the current one.
    pub fn install(&mut self, module: Module) {
        self.known.insert(module.sha256.clone());
        self.current = module;
    }

    /// Whether `path` is the file of a module this controller serves or served: named
    /// `weft-<sha256>.wasm` with the digest of one it installed.
    pub fn is_known(&self, path: &str) -> bool {
        let name = Path::new(path)
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        name.strip_prefix("weft-")
            .and_then(|rest| rest.strip_suffix(".wasm"))
            .is_some_and(|sha| self.known.contains(sha))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_module_that_does_not_match_its_name_is_replaced() {
        let state = tempfile::tempdir().unwrap();
        let source = state.path().join("weft.wasm");
        std::fs::write(&source, b"\0asm module bytes").unwrap();
        let module = Module::install(&source, state.path()).unwrap();
        assert!(
            module
                .path
                .ends_with(format!("weft-{}.wasm", module.sha256))
        );
        // Corrupted (or tampered with) under its content-addressed name: installed again.
        std::fs::write(&module.path, b"something else").unwrap();
        let again = Module::install(&source, state.path()).unwrap();
        assert_eq!(std::fs::read(&again.path).unwrap(), b"\0asm module bytes");
    }

    #[test]
    fn only_installed_modules_are_known_by_their_file_name() {
        let state = tempfile::tempdir().unwrap();
        let source = state.path().join("weft.wasm");
        std::fs::write(&source, b"\0asm first").unwrap();
        let first = Module::install(&source, state.path()).unwrap();
        let mut modules = Modules::open(state.path(), first.clone());
        std::fs::write(&source, b"\0asm second").unwrap();
        let second = Module::install(&source, state.path()).unwrap();
        assert!(!modules.is_known(&second.path.display().to_string()));
        modules.install(second.clone());
        for module in [&first, &second] {
            assert!(modules.is_known(&format!("/elsewhere/weft-{}.wasm", module.sha256)));
        }
        assert!(!modules.is_known(&format!("/x/weft-{}.wasm", "0".repeat(64))));
        assert!(!modules.is_known(&format!("/x/{}.wasm", first.sha256)));
        // Reopened (a restart): what was installed and is intact is still known.
        let reopened = Modules::open(state.path(), second);
        assert!(reopened.is_known(&format!("weft-{}.wasm", first.sha256)));
    }
}
