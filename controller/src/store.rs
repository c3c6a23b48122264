//! The store: every object the sources hold, keyed by kind, namespace and name, and the version
//! of each that is in force. Sources feed it per-object upserts and deletes ([`Change`]); the
//! store judges each change against the objects in force ([`crate::index::judge`]), so that an
//! object that fails is refused alone while every other change applies.
//!
//! The rules (docs/controller.md, "One object at a time"):
//! - a changed object with an error is refused, and its previous version stays in force (a new
//!   one stays absent);
//! - a deletion always applies, as in Kubernetes;
//! - an object in force that another change breaks (a TrafficTarget whose HTTPRouteGroup was
//!   deleted) is withdrawn and reported, so that it never opens more than either version of
//!   what it names allowed; it comes back when it is valid again;
//! - changed objects are refused before any object in force is withdrawn, so a new object
//!   that clashes with one in force is the one refused.
//!
//! Pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use weft_policy::catalog::Catalog;
use weft_policy::diagnostic::Diagnostic;
use weft_policy::object::{ObjectKey, SourceObject};

/// One change a source reports.
#[derive(Debug, Clone)]
pub enum Change {
    /// An object was written (created or changed).
    Upsert(Arc<SourceObject>),
    /// An object is gone.
    Delete(ObjectKey),
    /// The source itself cannot give one version of an object (a folder that defines it
    /// twice): its version in force stays, and `problems` say why.
    Refuse(ObjectKey, Vec<Diagnostic>),
}

/// What a source proposes for one object.
#[derive(Debug, Clone)]
enum Proposal {
    Object(Arc<SourceObject>),
    Refused(Vec<Diagnostic>),
}

/// What is in force of an object that was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kept {
    /// Its previous version.
    Previous,
    /// Nothing: it is new, or its version in force is no longer valid either.
    Nothing,
}

/// Why an object is not in force as its source wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Its errors, as `weft check` prints them.
    pub problems: Vec<Diagnostic>,
    /// What is in force instead.
    pub kept: Kept,
}

/// What the store holds in force after the last change.
#[derive(Debug, Clone, Default)]
pub struct Settled {
    /// The catalog in force.
    pub catalog: Arc<Catalog>,
    /// The objects in force, as their sources wrote them (what the catalog was read from).
    pub objects: Arc<BTreeMap<ObjectKey, Arc<SourceObject>>>,
    /// The objects refused, and what stays in force of each.
    pub refused: BTreeMap<ObjectKey, Refusal>,
    /// Warnings of the objects in force.
    pub warnings: Vec<Diagnostic>,
    /// Problems of the sources that concern no single object (a file that is not YAML).
    pub problems: Vec<Diagnostic>,
    /// The objects whose version in force this change changed (added, changed or removed).
    pub changed: BTreeSet<ObjectKey>,
}

/// Every object of every source, and the versions in force.
#[derive(Debug, Default)]
pub struct Store {
    /// By key: what a source says now, and which source.
    proposed: BTreeMap<ObjectKey, (String, Proposal)>,
    /// By key: the version in force.
    in_force: Arc<BTreeMap<ObjectKey, Arc<SourceObject>>>,
    /// By source: its problems that concern no single object.
    problems: BTreeMap<String, Vec<Diagnostic>>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `source`'s changes and its current problems that concern no single object (they
    /// replace the ones it gave before). A deletion by another source than the one that wrote
    /// the object is ignored.
    pub fn apply(
        &mut self,
        source: &str,
        changes: impl IntoIterator<Item = Change>,
        problems: Vec<Diagnostic>,
    ) {
        for change in changes {
            match change {
                Change::Upsert(object) => {
                    self.proposed.insert(
                        object.key.clone(),
                        (source.to_owned(), Proposal::Object(object)),
                    );
                }
                Change::Refuse(key, problems) => {
                    self.proposed
                        .insert(key, (source.to_owned(), Proposal::Refused(problems)));
                }
                Change::Delete(key) => {
                    if self
                        .proposed
                        .get(&key)
                        .is_some_and(|(owner, _)| owner == source)
                    {
                        self.proposed.remove(&key);
                    }
                }
            }
        }
        self.problems.insert(source.to_owned(), problems);
    }

    /// How many objects the sources hold.
    pub fn len(&self) -> usize {
        self.proposed.len()
    }

    /// Whether the sources hold none.
    pub fn is_empty(&self) -> bool {
        self.proposed.is_empty()
    }

    /// Judges what the sources propose against what is in force, per object, and makes the
    /// outcome the objects in force.
    pub fn settle(&mut self) -> Settled {
        let mut candidate: BTreeMap<ObjectKey, Arc<SourceObject>> = BTreeMap::new();
        let mut refused: BTreeMap<ObjectKey, Refusal> = BTreeMap::new();
        for (key, (_, proposal)) in &self.proposed {
            match proposal {
                Proposal::Object(object) => {
                    candidate.insert(key.clone(), object.clone());
                }
                Proposal::Refused(problems) => {
                    let kept = match self.in_force.get(key) {
                        Some(previous) => {
                            candidate.insert(key.clone(), previous.clone());
                            Kept::Previous
                        }
                        None => Kept::Nothing,
                    };
                    refused.insert(
                        key.clone(),
                        Refusal {
                            problems: problems.clone(),
                            kept,
                        },
                    );
                }
            }
        }
        // Each round reverts a changed object or withdraws one in force, and an object is
        // reverted at most once and withdrawn at most once: the rounds are bounded.
        let rounds = 2 * candidate.len() + 1;
        let mut judged = crate::index::judge(candidate.values().map(AsRef::as_ref));
        for _ in 0..rounds {
            let mut failing: BTreeMap<ObjectKey, Vec<Diagnostic>> = BTreeMap::new();
            for diagnostic in judged.1.iter().filter(|d| d.is_error()) {
                if let Some(key) = ObjectKey::of(diagnostic).filter(|k| candidate.contains_key(k)) {
                    failing.entry(key).or_default().push(diagnostic.clone());
                }
            }
            if failing.is_empty() {
                break;
            }
            let changed: Vec<ObjectKey> = failing
                .keys()
                .filter(|key| self.in_force.get(*key) != candidate.get(*key))
                .cloned()
                .collect();
            let chosen: Vec<ObjectKey> = if changed.is_empty() {
                failing.keys().cloned().collect()
            } else {
                changed
            };
            for key in chosen {
                let problems = failing.remove(&key).unwrap_or_default();
                let previous = self
                    .in_force
                    .get(&key)
                    .filter(|previous| Some(*previous) != candidate.get(&key))
                    .cloned();
                let kept = match previous {
                    Some(previous) => {
                        candidate.insert(key.clone(), previous);
                        Kept::Previous
                    }
                    None => {
                        candidate.remove(&key);
                        Kept::Nothing
                    }
                };
                refused
                    .entry(key)
                    .and_modify(|refusal| refusal.kept = kept)
                    .or_insert(Refusal { problems, kept });
            }
            judged = crate::index::judge(candidate.values().map(AsRef::as_ref));
        }
        let (catalog, diagnostics) = judged;
        let changed: BTreeSet<ObjectKey> = candidate
            .iter()
            .filter(|(key, object)| self.in_force.get(*key) != Some(*object))
            .map(|(key, _)| key.clone())
            .chain(
                self.in_force
                    .keys()
                    .filter(|key| !candidate.contains_key(*key))
                    .cloned(),
            )
            .collect();
        self.in_force = Arc::new(candidate);
        let mut problems: Vec<Diagnostic> = self.problems.values().flatten().cloned().collect();
        // What is left of the errors concerns no single object in force.
        problems.extend(
            diagnostics
                .iter()
                .filter(|d| d.is_error() && ObjectKey::of(d).is_none())
                .cloned(),
        );
        weft_policy::diagnostic::sort(&mut problems);
        Settled {
            catalog: Arc::new(catalog),
            objects: self.in_force.clone(),
            refused,
            warnings: diagnostics.into_iter().filter(|d| !d.is_error()).collect(),
            problems,
            changed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_policy::object::read_objects;

    fn objects(file: &str, text: &str) -> Vec<Change> {
        let (objects, problems) = read_objects(file, text);
        assert!(problems.is_empty(), "{problems:?}");
        objects
            .into_iter()
            .map(|o| Change::Upsert(Arc::new(o)))
            .collect()
    }

    const GROUP: &str = "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: api, namespace: shop}\nspec:\n  matches: [{name: cart, pathRegex: /cart, methods: [GET]}]\n";
    const BROKEN_GROUP: &str = "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: api, namespace: shop}\nspec:\n  matches: [{name: cart, pathRegex: \"(\", methods: [GET]}]\n";
    const WIDE_GROUP: &str = "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: api, namespace: shop}\nspec:\n  matches: [{name: cart, pathRegex: /.*, methods: [\"*\"]}, {name: cart, pathRegex: /x}]\n";
    const TARGET: &str = "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: t, namespace: shop}\nspec:\n  destination: {kind: ServiceAccount, name: checkout, namespace: shop}\n  sources: [{kind: ServiceAccount, name: frontend, namespace: shop}]\n  rules: [{kind: HTTPRouteGroup, name: api}]\n";

    fn split(namespace: &str, weight: u32) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {namespace}}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web-v2, namespace: {namespace}}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web-v1, namespace: {namespace}}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: web, namespace: {namespace}}}\nspec:\n  service: web\n  backends: [{{service: web-v1, weight: {weight}}}, {{service: web-v2, weight: 10}}]\n"
        )
    }

    fn key(kind: &str, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    fn weight(settled: &Settled, namespace: &str) -> u64 {
        settled
            .catalog
            .traffic_splits
            .iter()
            .find(|s| s.meta.namespace == namespace)
            .map(|s| s.backends[0].weight)
            .expect("the split is in force")
    }

    #[test]
    fn a_broken_object_in_one_namespace_is_refused_alone_while_another_namespace_changes() {
        let mut store = Store::new();
        store.apply("files", objects("a.yaml", &split("blue", 90)), vec![]);
        store.apply("files", objects("b.yaml", GROUP), vec![]);
        store.apply("files", objects("c.yaml", TARGET), vec![]);
        let first = store.settle();
        assert!(first.refused.is_empty(), "{:?}", first.refused);
        // One team breaks its group; another edits its split.
        store.apply("files", objects("b.yaml", BROKEN_GROUP), vec![]);
        store.apply("files", objects("a.yaml", &split("blue", 50)), vec![]);
        let second = store.settle();
        assert_eq!(weight(&second, "blue"), 50, "the split edit applied");
        let refusal = &second.refused[&key("HTTPRouteGroup", "shop", "api")];
        assert_eq!(refusal.kept, Kept::Previous);
        assert!(
            refusal.problems[0].to_string().contains("b.yaml:5"),
            "{}",
            refusal.problems[0]
        );
        let group = &second.catalog.http_route_groups[0];
        assert_eq!(group.matches[0].path_regex.as_deref(), Some("/cart"));
        assert_eq!(second.catalog.traffic_targets.len(), 1);
        assert!(second.changed.contains(&key("TrafficSplit", "blue", "web")));
        assert!(
            !second
                .changed
                .contains(&key("HTTPRouteGroup", "shop", "api"))
        );
    }

    #[test]
    fn a_new_broken_object_is_absent_and_a_fix_brings_it_in() {
        let mut store = Store::new();
        store.apply("files", objects("b.yaml", BROKEN_GROUP), vec![]);
        let settled = store.settle();
        assert!(settled.catalog.http_route_groups.is_empty());
        assert_eq!(
            settled.refused[&key("HTTPRouteGroup", "shop", "api")].kept,
            Kept::Nothing
        );
        store.apply("files", objects("b.yaml", GROUP), vec![]);
        let fixed = store.settle();
        assert!(fixed.refused.is_empty());
        assert_eq!(fixed.catalog.http_route_groups.len(), 1);
    }

    #[test]
    fn a_target_naming_a_refused_group_uses_its_previous_version_never_the_refused_one() {
        let mut store = Store::new();
        store.apply("files", objects("b.yaml", GROUP), vec![]);
        store.apply("files", objects("c.yaml", TARGET), vec![]);
        store.settle();
        // A wider group that is refused (two matches of one name): the target still allows
        // only GET /cart.
        store.apply("files", objects("b.yaml", WIDE_GROUP), vec![]);
        let settled = store.settle();
        assert!(
            settled
                .refused
                .contains_key(&key("HTTPRouteGroup", "shop", "api"))
        );
        let group = &settled.catalog.http_route_groups[0];
        assert_eq!(group.matches.len(), 1);
        assert_eq!(group.matches[0].methods, ["GET"]);
    }

    #[test]
    fn a_deletion_applies_and_a_target_it_breaks_is_withdrawn_until_it_is_valid_again() {
        let mut store = Store::new();
        store.apply("files", objects("b.yaml", GROUP), vec![]);
        store.apply("files", objects("c.yaml", TARGET), vec![]);
        store.settle();
        store.apply(
            "files",
            [Change::Delete(key("HTTPRouteGroup", "shop", "api"))],
            vec![],
        );
        let settled = store.settle();
        assert!(settled.catalog.http_route_groups.is_empty());
        assert!(settled.catalog.traffic_targets.is_empty(), "withdrawn");
        let refusal = &settled.refused[&key("TrafficTarget", "shop", "t")];
        assert_eq!(refusal.kept, Kept::Nothing);
        assert!(refusal.problems[0].message.contains("does not exist"));
        store.apply("files", objects("b.yaml", GROUP), vec![]);
        let back = store.settle();
        assert_eq!(back.catalog.traffic_targets.len(), 1);
        assert!(back.refused.is_empty());
    }

    #[test]
    fn a_new_object_that_clashes_with_one_in_force_is_the_one_refused() {
        let tcp = |name: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{port: 5432, appProtocol: tcp}}]}}\n"
            )
        };
        let mut store = Store::new();
        store.apply("files", objects("a.yaml", &tcp("db")), vec![]);
        assert!(store.settle().refused.is_empty());
        store.apply("files", objects("b.yaml", &tcp("cache")), vec![]);
        let settled = store.settle();
        let names: Vec<&str> = settled
            .catalog
            .services
            .iter()
            .map(|s| s.meta.name.as_str())
            .collect();
        assert_eq!(names, ["db"]);
        assert!(
            settled
                .refused
                .contains_key(&key("Service", "shop", "cache"))
        );
    }

    #[test]
    fn a_source_refusal_keeps_the_version_in_force_and_a_deletion_by_another_source_is_ignored() {
        let mut store = Store::new();
        store.apply("files", objects("b.yaml", GROUP), vec![]);
        store.settle();
        let problem = Diagnostic {
            severity: weft_policy::diagnostic::Severity::Error,
            kind: Some("HTTPRouteGroup".into()),
            namespace: Some("shop".into()),
            name: Some("api".into()),
            field: String::new(),
            origin: None,
            message: "defined twice".into(),
        };
        let api = key("HTTPRouteGroup", "shop", "api");
        store.apply("kubernetes", [Change::Delete(api.clone())], vec![]);
        assert_eq!(store.settle().catalog.http_route_groups.len(), 1);
        store.apply(
            "files",
            [Change::Refuse(api.clone(), vec![problem])],
            vec![],
        );
        let settled = store.settle();
        assert_eq!(settled.catalog.http_route_groups.len(), 1);
        assert_eq!(settled.refused[&api].kept, Kept::Previous);
    }
}
