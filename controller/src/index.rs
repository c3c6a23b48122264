//! The index: every object the controller knows, read from its sources. The one way manifests
//! become a checked catalog (`weft check`, `weft compile`, `weft explain` and the controller all
//! call [`load`]); the Kubernetes source will produce the same catalog.

use std::path::PathBuf;

use weft_policy::diagnostic::{Diagnostic, make_strict, sort};
use weft_policy::model::Catalog;

use crate::manifests::{self, ManifestsError};

/// Reads the manifests under `paths` and checks them: the catalog, and every problem (a file
/// that cannot be read is one more error), sorted; with `strict`, warnings are errors.
///
/// # Errors
/// When no manifest file can be found under `paths`.
pub fn load(paths: &[PathBuf], strict: bool) -> Result<(Catalog, Vec<Diagnostic>), ManifestsError> {
    let manifests = manifests::read(paths)?;
    let (catalog, mut diagnostics) = weft_policy::check(
        manifests
            .files
            .iter()
            .map(|(name, text)| (name.as_str(), text.as_str())),
    );
    diagnostics.extend(manifests.problems);
    if strict {
        make_strict(&mut diagnostics);
    }
    sort(&mut diagnostics);
    Ok((catalog, diagnostics))
}
