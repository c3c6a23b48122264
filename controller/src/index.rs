//! The index: every object the controller knows, read from its sources. The one way manifests
//! become a checked catalog (`weft check`, `weft compile`, `weft explain` and the controller all
//! call [`load`]): SMI's checks, then what the mesh cannot serve ([`crate::mesh::check_mesh`]);
//! the Kubernetes source will produce the same catalog.

use std::path::PathBuf;

use weft_policy::bundle::DEFAULT_TRUST_DOMAIN;
use weft_policy::catalog::Catalog;
use weft_policy::diagnostic::{Diagnostic, make_strict, sort};
use weft_policy::object::{SourceObject, catalog_of, locate_in, read_objects};

use crate::manifests::{self, ManifestsError};

/// Reads the manifests under `paths` and checks them: the catalog, and every problem (a file
/// that cannot be read is one more error), sorted; with `strict`, warnings are errors.
///
/// # Errors
/// When no manifest file can be found under `paths`.
pub fn load(paths: &[PathBuf], strict: bool) -> Result<(Catalog, Vec<Diagnostic>), ManifestsError> {
    read(paths, strict, false)
}

/// [`load`], and every EnvoyPatch tried on the workloads it selects, as the controller would
/// apply it: what `weft check` reports. (The controller itself applies a patch per proxy and
/// reports a refusal in its status, so that one broken patch never holds back a change.)
///
/// # Errors
/// As [`load`].
pub fn check(
    paths: &[PathBuf],
    strict: bool,
) -> Result<(Catalog, Vec<Diagnostic>), ManifestsError> {
    read(paths, strict, true)
}

fn read(
    paths: &[PathBuf],
    strict: bool,
    try_patches: bool,
) -> Result<(Catalog, Vec<Diagnostic>), ManifestsError> {
    let manifests = manifests::read(paths)?;
    let mut objects = Vec::new();
    let mut diagnostics = manifests.problems;
    for (file, text) in &manifests.files {
        let (read, problems) = read_objects(file, text);
        objects.extend(read);
        diagnostics.extend(problems);
    }
    let (catalog, found) = judge(&objects);
    diagnostics.extend(found);
    if try_patches && !diagnostics.iter().any(Diagnostic::is_error) {
        let mut tried = crate::mesh::check_patches(&catalog, DEFAULT_TRUST_DOMAIN);
        locate_in(&objects, &mut tried);
        diagnostics.extend(tried);
    }
    if strict {
        make_strict(&mut diagnostics);
    }
    sort(&mut diagnostics);
    Ok((catalog, diagnostics))
}

/// Checks `objects` together, as SMI and as the mesh will serve them
/// ([`crate::mesh::check_mesh`]): the catalog, and every problem at its field. The one check
/// `weft check` and the controller's store share.
pub fn judge<'a>(
    objects: impl IntoIterator<Item = &'a SourceObject> + Clone,
) -> (Catalog, Vec<Diagnostic>) {
    let (catalog, mut diagnostics) = catalog_of(objects.clone());
    let mut mesh = crate::mesh::check_mesh(&catalog);
    locate_in(objects, &mut mesh);
    diagnostics.extend(mesh);
    sort(&mut diagnostics);
    (catalog, diagnostics)
}
