//! Objects one at a time: what a source (a folder of YAML, later the Kubernetes API) holds, each
//! keyed by kind, namespace and name and kept with the document it was read from, and the one
//! way a set of them becomes a checked [`Catalog`] ([`catalog_of`]). `weft check` reads every
//! file into objects and checks them together; the controller's store checks the objects in
//! force with one change at a time, so that a broken object is refused alone.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::catalog::Catalog;
use crate::diagnostic::{Diagnostic, Locator, Origin, Severity, locate_fields};
use crate::document::DuplicateKey;
use crate::load::{DEFAULT_NAMESPACE, LoadError};

/// What names an object: its kind, namespace and name (versions of one kind are one object, as
/// in Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectKey {
    /// Its kind (`TrafficTarget`, `Service`, ...).
    pub kind: String,
    /// Its namespace (`default` when it names none).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ObjectKey {
    /// The object a diagnostic is about, when it names one.
    pub fn of(diagnostic: &Diagnostic) -> Option<Self> {
        Some(Self {
            kind: diagnostic.kind.clone()?,
            namespace: diagnostic.namespace.clone()?,
            name: diagnostic.name.clone()?,
        })
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One object as its source wrote it.
#[derive(Debug, Clone)]
pub struct SourceObject {
    /// What names it.
    pub key: ObjectKey,
    /// Its document (never a `kind: List`: a list's items are objects of their own).
    pub value: Value,
    /// The keys its document gives twice.
    pub duplicates: Vec<DuplicateKey>,
    /// Where it was read from.
    pub origin: Origin,
    /// The text of its file, to find the line of any of its fields.
    pub text: Arc<str>,
}

impl PartialEq for SourceObject {
    /// The same object written the same way at the same place (the rest of its file may
    /// differ).
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.value == other.value
            && self.duplicates == other.duplicates
            && self.origin.file == other.origin.file
            && self.origin.line == other.origin.line
    }
}

/// Reads every document of one YAML file into `catalog`, appending problems to `diagnostics`.
/// Documents that are not SMI objects, Services, Deployments or Pods are skipped silently. A
/// document that is not YAML is reported and the file's other documents are still read.
pub fn load_yaml(file: &str, text: &str, catalog: &mut Catalog, diagnostics: &mut Vec<Diagnostic>) {
    let (objects, problems) = read_objects(file, text);
    diagnostics.extend(problems);
    for object in objects {
        crate::load::load_value(
            object.value,
            &object.origin,
            &object.duplicates,
            catalog,
            diagnostics,
        );
    }
}

/// Every object of one file, and the problems that concern no single object (a document that is
/// not YAML, or names no kind or name): those leave the file's objects unknown, so a source must
/// not read their absence as a deletion.
pub fn read_objects(file: &str, text: &str) -> (Vec<SourceObject>, Vec<Diagnostic>) {
    let shared: Arc<str> = Arc::from(text);
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for document in crate::load::split_documents(text) {
        let body = &text[document.start..document.end];
        match crate::document::read_yaml(body, document.first_line) {
            Ok(values) => {
                for value in values {
                    if value.value.is_null() {
                        continue;
                    }
                    let origin = Origin {
                        file: file.to_owned(),
                        line: document.content_line,
                        locator: Some(Locator {
                            start: document.start,
                            end: document.end,
                            first_line: document.first_line,
                            object_path: String::new(),
                        }),
                    };
                    let mut reading = Reading {
                        text: &shared,
                        objects: &mut objects,
                        problems: &mut problems,
                    };
                    reading.document(value.value, origin, value.duplicates);
                }
            }
            Err(err) => problems.push(Diagnostic {
                severity: Severity::Error,
                kind: None,
                namespace: None,
                name: None,
                field: String::new(),
                origin: Some(Origin::at(file, err.line())),
                message: match err {
                    crate::document::DocumentError::Syntax { message, .. } => {
                        LoadError::Yaml(message).to_string()
                    }
                    other => other.to_string(),
                },
            }),
        }
    }
    locate(&mut problems, file, &shared);
    (objects, problems)
}

struct Reading<'a> {
    text: &'a Arc<str>,
    objects: &'a mut Vec<SourceObject>,
    problems: &'a mut Vec<Diagnostic>,
}

impl Reading<'_> {
    /// One parsed document: an object, or a `kind: List` of them.
    fn document(&mut self, mut value: Value, origin: Origin, duplicates: Vec<DuplicateKey>) {
        let kind = value.get("kind").and_then(Value::as_str).map(str::to_owned);
        let (Some(_), Some(kind)) = (value.get("apiVersion").and_then(Value::as_str), kind) else {
            self.problems.push(Diagnostic {
                severity: Severity::Error,
                kind: None,
                namespace: None,
                name: None,
                field: String::new(),
                origin: Some(origin),
                message: LoadError::NotAnObject.to_string(),
            });
            return;
        };
        if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
            for duplicate in duplicates.iter().filter(|d| !d.path.starts_with("items[")) {
                self.problems.push(Diagnostic {
                    severity: Severity::Error,
                    kind: None,
                    namespace: None,
                    name: None,
                    field: duplicate.path.clone(),
                    origin: Some(Origin::at(&origin.file, duplicate.line)),
                    message: LoadError::DuplicateKey.to_string(),
                });
            }
            if let Some(Value::Array(items)) = value.get_mut("items").map(Value::take) {
                for (index, item) in items.into_iter().enumerate() {
                    let object_path = format!("items[{index}]");
                    let item_duplicates = duplicates
                        .iter()
                        .filter_map(|d| {
                            let rest = d.path.strip_prefix(&object_path)?;
                            let path =
                                rest.strip_prefix('.').or(rest.is_empty().then_some(rest))?;
                            Some(DuplicateKey {
                                path: path.to_owned(),
                                line: d.line,
                            })
                        })
                        .collect();
                    let mut item_origin = origin.clone();
                    if let Some(locator) = item_origin.locator.as_mut() {
                        locator.object_path = object_path;
                    }
                    self.document(item, item_origin, item_duplicates);
                }
            }
            return;
        }
        let metadata = value.get("metadata");
        let name = metadata
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty());
        let Some(name) = name.map(str::to_owned) else {
            // Nothing names it: what the reader says of it is about the file. A kind weft does
            // not read says nothing.
            let mut scratch = Catalog::default();
            let mut found = Vec::new();
            crate::load::load_value(value, &origin, &duplicates, &mut scratch, &mut found);
            self.problems.extend(found);
            return;
        };
        let namespace = metadata
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_owned();
        self.objects.push(SourceObject {
            key: ObjectKey {
                kind,
                namespace,
                name,
            },
            value,
            duplicates,
            origin,
            text: self.text.clone(),
        });
    }
}

/// Points `diagnostics` read from `file` at the lines of their fields.
fn locate(diagnostics: &mut [Diagnostic], file: &str, text: &str) {
    if diagnostics.is_empty() {
        return;
    }
    let files = HashMap::from([(file, text)]);
    locate_fields(&files, diagnostics);
}

/// Reads and checks `objects` together: the catalog (sorted), and every problem of every object
/// (reading and cross-object alike, each at the line of its field). Objects of kinds weft does
/// not read are left out silently. Checks nothing about the mesh that serves them (see the
/// controller's index).
pub fn catalog_of<'a>(
    objects: impl IntoIterator<Item = &'a SourceObject> + Clone,
) -> (Catalog, Vec<Diagnostic>) {
    let mut catalog = Catalog::default();
    let mut diagnostics = Vec::new();
    for object in objects.clone() {
        let mut found = Vec::new();
        crate::load::load_value(
            object.value.clone(),
            &object.origin,
            &object.duplicates,
            &mut catalog,
            &mut found,
        );
        locate(&mut found, &object.origin.file, &object.text);
        diagnostics.extend(found);
    }
    catalog.sort();
    let mut validation = crate::validate::validate(&catalog);
    locate_in(objects, &mut validation);
    diagnostics.extend(validation);
    crate::diagnostic::sort(&mut diagnostics);
    (catalog, diagnostics)
}

/// Points each diagnostic about one of `objects` at the line of its field in that object's
/// file.
pub fn locate_in<'a>(
    objects: impl IntoIterator<Item = &'a SourceObject>,
    diagnostics: &mut [Diagnostic],
) {
    if diagnostics.is_empty() {
        return;
    }
    let mut by_key: HashMap<&ObjectKey, &SourceObject> = HashMap::new();
    for object in objects {
        by_key.entry(&object.key).or_insert(object);
    }
    for diagnostic in diagnostics {
        let object = ObjectKey::of(diagnostic).and_then(|key| by_key.get(&key).copied());
        if let Some(object) = object {
            let file = object.origin.file.clone();
            locate(std::slice::from_mut(diagnostic), &file, &object.text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_becomes_its_objects_each_with_its_key_and_a_list_its_items() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b, namespace: shop}\n";
        let (objects, problems) = read_objects("f.yaml", text);
        assert!(problems.is_empty(), "{problems:?}");
        let keys: Vec<String> = objects.iter().map(|o| o.key.to_string()).collect();
        assert_eq!(keys, ["Service default/a", "Service shop/b"]);
        assert_eq!(objects[1].origin.line, 5);
    }

    #[test]
    fn a_document_that_is_not_yaml_or_names_nothing_is_a_problem_of_the_file() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkey: [unclosed\n---\napiVersion: v1\nkind: Service\nmetadata: {}\n---\nkind: ConfigMap\n";
        let (objects, problems) = read_objects("f.yaml", text);
        assert_eq!(objects.len(), 1);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().all(|p| ObjectKey::of(p).is_none()));
        assert!(problems.iter().any(|p| p.field == "metadata.name"));
    }

    #[test]
    fn an_object_moved_by_an_edit_elsewhere_in_its_file_differs_and_one_left_alone_does_not() {
        let first = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n";
        let second = "apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: {x: y}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n";
        let third = "# a comment\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n";
        let (one, _) = read_objects("f.yaml", first);
        let (two, _) = read_objects("f.yaml", second);
        let (three, _) = read_objects("f.yaml", third);
        assert_ne!(one[0], two[0]);
        assert_eq!(one[1], two[1]);
        assert_ne!(one[0], three[0], "moved a line down");
    }

    #[test]
    fn a_validation_problem_points_at_its_field_in_its_own_file() {
        let (objects, _) = read_objects(
            "t.yaml",
            "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: t, namespace: shop}\nspec:\n  destination: {kind: ServiceAccount, name: a, namespace: shop}\n  sources: [{kind: ServiceAccount, name: b, namespace: shop}]\n  rules:\n  - kind: HTTPRouteGroup\n    name: missing\n",
        );
        let (_, problems) = catalog_of(&objects);
        let missing = problems
            .iter()
            .find(|p| p.field.starts_with("spec.rules[0]"))
            .expect("the missing group is reported");
        assert_eq!(
            missing.origin.as_ref().map(|o| o.line),
            Some(9),
            "{missing}"
        );
    }
}
