//! The objects in force, as the rest of the controller reads them: the sources and the store
//! they feed are owned by the one task that reads the sources ([`Sources`]); every change it
//! settles is published as a new [`InForce`], which readers (the rebuild loop, the admission,
//! the admin port) take as a whole and never see half-changed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use weft_policy::catalog::Catalog;
use weft_policy::diagnostic::Diagnostic;
use weft_policy::object::{ObjectKey, SourceObject};

use crate::manifests::ManifestsError;
use crate::store::{Kept, Refusal, Settled, Store};

/// The sources and the store they feed: a watched folder now, Kubernetes next, each giving the
/// store the objects that changed.
#[derive(Debug)]
pub struct Sources {
    manifests: PathBuf,
    folder: crate::folder::Folder,
    store: Store,
}

impl Sources {
    /// The sources of a controller that serves the folder `manifests`.
    pub fn new(manifests: PathBuf) -> Self {
        Self {
            manifests,
            folder: crate::folder::Folder::default(),
            store: Store::default(),
        }
    }

    /// Reads the folder again and gives the store the objects that changed: each object is
    /// judged alone ([`Store::settle`]), a refused one keeps what was in force of it, and every
    /// other change applies.
    ///
    /// # Errors
    /// When the folder cannot be read at all (then nothing changes).
    pub fn read(&mut self) -> Result<Settled, ManifestsError> {
        let started = std::time::Instant::now();
        let manifests = crate::manifests::read(std::slice::from_ref(&self.manifests))?;
        let read = started.elapsed();
        let (changes, problems) = self.folder.read(&manifests);
        let parsed = started.elapsed();
        let changed = changes.len();
        self.store.apply(crate::folder::SOURCE, changes, problems);
        let settled = self.store.settle();
        log::debug!(
            "weft: read {} file(s) in {read:?}, parsed them into {changed} change(s) by {parsed:?}, judged {} object(s) by {:?}",
            manifests.files.len(),
            self.store.len(),
            started.elapsed()
        );
        Ok(settled)
    }
}

/// What the store refused as of the last change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refused {
    /// The objects refused, and what is in force of each.
    pub objects: BTreeMap<ObjectKey, Refusal>,
    /// The sources' problems that concern no single object.
    pub problems: Vec<Diagnostic>,
}

/// The objects in force, as of one settled change.
#[derive(Debug, Default)]
pub struct InForce {
    /// Every object's version in force.
    pub catalog: Arc<Catalog>,
    /// The same objects as their sources wrote them (local mode reads what to run from a
    /// workload's document).
    pub objects: Arc<BTreeMap<ObjectKey, Arc<SourceObject>>>,
    /// What was refused.
    pub refused: Refused,
    /// Changes of the catalog accepted since the start.
    pub generation: u64,
}

/// Logs what `settled` refused that `previous` did not, and what is in force again; returns
/// the refusals now and how many are new (each is counted as a reconcile error).
pub fn report(previous: &Refused, settled: &Settled) -> (Refused, usize) {
    let mut new = 0;
    for (key, refusal) in &settled.refused {
        if previous.objects.get(key) == Some(refusal) {
            continue;
        }
        new += 1;
        for problem in &refusal.problems {
            log::error!("{problem}");
        }
        match refusal.kept {
            Kept::Previous => {
                log::error!("weft: {key} refused; its previous version stays in force");
            }
            Kept::Nothing => log::error!("weft: {key} refused; it is not in force"),
        }
    }
    for key in previous
        .objects
        .keys()
        .filter(|key| !settled.refused.contains_key(*key))
    {
        log::info!("weft: {key} is in force as written");
    }
    for problem in settled
        .problems
        .iter()
        .filter(|p| !previous.problems.contains(p))
    {
        new += 1;
        log::error!("{problem}");
    }
    (
        Refused {
            objects: settled.refused.clone(),
            problems: settled.problems.clone(),
        },
        new,
    )
}

/// Logs what weft's own kinds leave unapplied: a TrafficPolicy that lost to another or whose
/// Service is missing, a patch that selects nothing (SMI's warnings are `weft check`'s).
pub fn log_unapplied(diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics
        .iter()
        .filter(|d| matches!(d.kind.as_deref(), Some("TrafficPolicy" | "EnvoyPatch")))
    {
        log::warn!("{diagnostic}");
    }
}
