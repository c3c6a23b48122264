//! The latest snapshot of every proxy, by key, with a watch per key so that each ADS stream
//! learns of its proxy's new snapshot at once. Setting a snapshot never waits for streams.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::snapshot::SharedSnapshot;

/// Snapshots by proxy key.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    entries: Mutex<HashMap<String, watch::Sender<Option<SharedSnapshot>>>>,
}

impl SnapshotCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_entries<T>(
        &self,
        f: impl FnOnce(&mut HashMap<String, watch::Sender<Option<SharedSnapshot>>>) -> T,
    ) -> T {
        // A panic while holding the lock cannot leave the map half-changed (each use is one
        // map operation), so a poisoned lock is still sound to use.
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut entries)
    }

    /// Makes `snapshot` the current one of `key`; streams of that proxy push what changed.
    /// Returns whether it differs from the previous one.
    pub fn set(&self, key: &str, snapshot: SharedSnapshot) -> bool {
        self.with_entries(|entries| match entries.get(key) {
            Some(sender) => sender.send_if_modified(|current| {
                let changed = current.as_deref() != Some(&*snapshot);
                if changed {
                    *current = Some(snapshot);
                }
                changed
            }),
            None => {
                entries.insert(key.to_owned(), watch::Sender::new(Some(snapshot)));
                true
            }
        })
    }

    /// A watch on `key`'s snapshot (`None` until one is set).
    pub fn watch(&self, key: &str) -> watch::Receiver<Option<SharedSnapshot>> {
        self.with_entries(|entries| {
            entries
                .entry(key.to_owned())
                .or_insert_with(|| watch::Sender::new(None))
                .subscribe()
        })
    }

    /// Forgets `key` (a proxy that is gone); its streams end their watch.
    pub fn remove(&self, key: &str) {
        self.with_entries(|entries| entries.remove(key));
    }
}
