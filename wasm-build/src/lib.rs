//! `weft-wasm-build` owns the wasm artifacts: it builds `filters/envoy` into
//! `target/wasm/weft.wasm` and describes it in `target/wasm/manifest.json` (name, version,
//! sha256, size). The controller will later serve the module from a content-addressed path and
//! reference it by this sha256 in ECDS, so the manifest is the artifact's identity. The binary
//! (`src/main.rs`) does the building; this library holds the manifest and its checks, which
//! the tests use to prove that a manifest describes the file beside it. [`exports`] decides
//! which hooks the module offers Envoy; [`code`] measures what V8 compiles.

pub mod code;
pub mod exports;

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File name of the filter module inside the wasm output directory.
pub const MODULE_FILE: &str = "weft.wasm";
/// File name of the manifest inside the wasm output directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Why a manifest could not be read or does not describe its module.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not JSON of the manifest's shape.
    #[error("{path} is not a valid manifest: {source}")]
    Parse {
        /// The manifest file.
        path: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The module's bytes differ from what the manifest says.
    #[error(
        "manifest field `{field}` says {expected} but the module has {actual}: rebuild with `make build`"
    )]
    Mismatch {
        /// The manifest field that disagrees.
        field: &'static str,
        /// What the manifest says.
        expected: String,
        /// What the module has.
        actual: String,
    },
}

/// How the module was optimised after compilation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Optimisation {
    /// The optimiser and its flags, e.g. `wasm-opt version 108 -O3`.
    pub tool: String,
    /// Size in bytes of the module before the optimiser ran (as rustc wrote it, with only the
    /// exports Envoy needs).
    pub size_before: u64,
    /// Size in bytes after the optimiser ran (also when that result was not kept).
    pub size_after: u64,
    /// Whether the optimised module was kept (only when it is smaller).
    pub kept: bool,
}

/// Identity of one built `weft.wasm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Module file name (`weft.wasm`).
    pub name: String,
    /// weft version the module was built from.
    pub version: String,
    /// Lower-case hex sha256 of the module's bytes.
    pub sha256: String,
    /// Size of the module in bytes.
    pub size: u64,
    /// The optimisation step, when one ran.
    pub optimisation: Option<Optimisation>,
}

impl Manifest {
    /// Describes `module` (the module's bytes).
    pub fn describe(version: &str, module: &[u8], optimisation: Option<Optimisation>) -> Self {
        Self {
            name: MODULE_FILE.to_owned(),
            version: version.to_owned(),
            sha256: sha256_hex(module),
            size: module.len() as u64,
            optimisation,
        }
    }

    /// Reads a manifest file.
    ///
    /// # Errors
    /// [`ManifestError::Read`] or [`ManifestError::Parse`].
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ManifestError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Checks that this manifest describes exactly `module` (the module's bytes).
    ///
    /// # Errors
    /// [`ManifestError::Mismatch`] naming the first field that disagrees.
    pub fn verify(&self, module: &[u8]) -> Result<(), ManifestError> {
        let size = module.len() as u64;
        if self.size != size {
            return Err(ManifestError::Mismatch {
                field: "size",
                expected: self.size.to_string(),
                actual: size.to_string(),
            });
        }
        let digest = sha256_hex(module);
        if self.sha256 != digest {
            return Err(ManifestError::Mismatch {
                field: "sha256",
                expected: self.sha256.clone(),
                actual: digest,
            });
        }
        Ok(())
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_fips_180_test_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_manifest_verifies_the_bytes_it_describes() {
        let manifest = Manifest::describe("1.2.3", b"\0asm module", None);
        assert_eq!(manifest.size, 11);
        manifest.verify(b"\0asm module").unwrap();
    }

    #[test]
    fn a_manifest_rejects_other_bytes_of_the_same_size() {
        let manifest = Manifest::describe("1.2.3", b"\0asm module", None);
        let err = manifest.verify(b"\0asm modulf").unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::Mismatch {
                    field: "sha256",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_manifest_rejects_a_different_size() {
        let manifest = Manifest::describe("1.2.3", b"\0asm", None);
        let err = manifest.verify(b"\0asm more").unwrap_err();
        assert!(
            matches!(err, ManifestError::Mismatch { field: "size", .. }),
            "{err}"
        );
    }

    #[test]
    fn a_manifest_round_trips_through_json() {
        let manifest = Manifest::describe(
            "0.1.0",
            b"x",
            Some(Optimisation {
                tool: "wasm-opt -O3".into(),
                size_before: 10,
                size_after: 8,
                kept: true,
            }),
        );
        let json = serde_json::to_string(&manifest).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), manifest);
    }
}
