//! The folder source: a folder of YAML read whole each time it changes, and turned into the
//! objects that changed since the last read ([`Change`]s for the store). A file whose text did
//! not change is not parsed again: its objects are the very ones of the last read, so an edit
//! of one file of a large folder costs the parsing of that file.
//!
//! What a read cannot see is not a deletion: the objects last read from a file that is now
//! unreadable, or has a document that is not YAML or names no object, stay as they were until
//! the file reads again. An object defined twice (in one file or two) is refused as the folder's
//! problem, and its version in force stays.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use weft_policy::diagnostic::{Diagnostic, Severity};
use weft_policy::object::{ObjectKey, SourceObject, read_objects};

use crate::manifests::Manifests;
use crate::store::Change;

/// The name the folder's changes carry in the store.
pub const SOURCE: &str = "files";

/// What the folder said of one object at the last read.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Object(Arc<SourceObject>),
    /// Defined more than once: the file of its first definition, and why it is refused.
    Twice(String, Vec<Diagnostic>),
}

impl Entry {
    /// The same entry: the very same object (the usual case, checked first), or an equal one.
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Entry::Object(mine), Entry::Object(theirs)) => {
                Arc::ptr_eq(mine, theirs) || mine == theirs
            }
            _ => self == other,
        }
    }

    fn file(&self) -> &str {
        match self {
            Entry::Object(object) => &object.origin.file,
            Entry::Twice(file, _) => file,
        }
    }
}

/// One file as last read: its text, and the objects and problems it was read into.
#[derive(Debug)]
struct ParsedFile {
    text: Arc<str>,
    objects: Vec<Arc<SourceObject>>,
    problems: Vec<Diagnostic>,
}

/// The folder as last read.
#[derive(Debug, Default)]
pub struct Folder {
    last: BTreeMap<ObjectKey, Entry>,
    /// By file name.
    parsed: HashMap<String, ParsedFile>,
}

impl Folder {
    /// A folder not read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The changes since the last read, and every problem of the folder that concerns no single
    /// object (files that could not be read, documents that are not objects).
    pub fn read(&mut self, manifests: &Manifests) -> (Vec<Change>, Vec<Diagnostic>) {
        let mut problems = manifests.problems.clone();
        let mut unseen: BTreeSet<String> = problems
            .iter()
            .filter(|p| p.is_error())
            .filter_map(|p| p.origin.as_ref().map(|o| o.file.clone()))
            .collect();
        let mut definitions: BTreeMap<ObjectKey, Vec<Arc<SourceObject>>> = BTreeMap::new();
        let mut parsed = HashMap::with_capacity(manifests.files.len());
        for (file, text) in &manifests.files {
            let file_parsed = match self.parsed.remove(file) {
                Some(last) if *last.text == **text => last,
                _ => {
                    let (objects, found) = read_objects(file, text);
                    ParsedFile {
                        text: Arc::from(text.as_str()),
                        objects: objects.into_iter().map(Arc::new).collect(),
                        problems: found,
                    }
                }
            };
            if file_parsed.problems.iter().any(Diagnostic::is_error) {
                unseen.insert(file.clone());
            }
            problems.extend(file_parsed.problems.iter().cloned());
            for object in &file_parsed.objects {
                definitions
                    .entry(object.key.clone())
                    .or_default()
                    .push(object.clone());
            }
            parsed.insert(file.clone(), file_parsed);
        }
        self.parsed = parsed;
        let mut now: BTreeMap<ObjectKey, Entry> = definitions
            .into_iter()
            .map(|(key, mut objects)| {
                let entry = if objects.len() == 1 {
                    Entry::Object(objects.remove(0))
                } else {
                    let file = objects[0].origin.file.clone();
                    Entry::Twice(file, defined_twice(&key, &objects))
                };
                (key, entry)
            })
            .collect();
        for (key, entry) in &self.last {
            if !now.contains_key(key) && unseen.contains(entry.file()) {
                now.insert(key.clone(), entry.clone());
            }
        }
        let mut changes = Vec::new();
        for (key, entry) in &now {
            if !self.last.get(key).is_some_and(|last| last.same(entry)) {
                changes.push(match entry {
                    Entry::Object(object) => Change::Upsert(object.clone()),
                    Entry::Twice(_, problems) => Change::Refuse(key.clone(), problems.clone()),
                });
            }
        }
        for key in self.last.keys().filter(|key| !now.contains_key(*key)) {
            changes.push(Change::Delete(key.clone()));
        }
        self.last = now;
        (changes, problems)
    }
}

/// The problem of an object the folder defines more than once: at each definition after the
/// first.
fn defined_twice(key: &ObjectKey, objects: &[Arc<SourceObject>]) -> Vec<Diagnostic> {
    let places: Vec<String> = objects
        .iter()
        .map(|o| format!("{}:{}", o.origin.file, o.origin.line))
        .collect();
    objects
        .iter()
        .skip(1)
        .map(|object| Diagnostic {
            severity: Severity::Error,
            kind: Some(key.kind.clone()),
            namespace: Some(key.namespace.clone()),
            name: Some(key.name.clone()),
            field: String::new(),
            origin: Some(object.origin.clone()),
            message: format!(
                "{} {}/{} is defined {} times (at {}); define each object once (whatever version of it was in force stays)",
                key.kind,
                key.namespace,
                key.name,
                objects.len(),
                places.join(", ")
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> Manifests {
        Manifests {
            files: files
                .iter()
                .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
                .collect(),
            problems: Vec::new(),
        }
    }

    fn service(name: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{port: {port}}}]}}\n"
        )
    }

    fn summary(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|change| match change {
                Change::Upsert(object) => format!("upsert {}", object.key.name),
                Change::Delete(key) => format!("delete {}", key.name),
                Change::Refuse(key, _) => format!("refuse {}", key.name),
            })
            .collect()
    }

    #[test]
    fn a_read_gives_only_the_objects_that_changed() {
        let mut source = Folder::new();
        let both = format!("{}---\n{}", service("a", 80), service("b", 80));
        let (changes, _) = source.read(&folder(&[("s.yaml", &both)]));
        assert_eq!(summary(&changes), ["upsert a", "upsert b"]);
        let edited = format!("{}---\n{}", service("a", 80), service("b", 81));
        let (changes, _) = source.read(&folder(&[("s.yaml", &edited)]));
        assert_eq!(summary(&changes), ["upsert b"]);
        let (changes, _) = source.read(&folder(&[("s.yaml", &service("a", 80))]));
        assert_eq!(summary(&changes), ["delete b"]);
        let (changes, _) = source.read(&folder(&[("s.yaml", &service("a", 80))]));
        assert!(changes.is_empty());
    }

    #[test]
    fn a_file_that_stops_reading_as_yaml_deletes_nothing() {
        let mut source = Folder::new();
        let (changes, _) = source.read(&folder(&[
            ("a.yaml", &service("a", 80)),
            ("b.yaml", &service("b", 80)),
        ]));
        assert_eq!(changes.len(), 2);
        let broken = format!(
            "{}---\nkey: [unclosed\n",
            service("a", 80).replace("a,", "z,")
        );
        let (changes, problems) = source.read(&folder(&[
            ("a.yaml", &broken),
            ("b.yaml", &service("b", 81)),
        ]));
        // z is read and b changed; a is not deleted, since its file has a document that is
        // not YAML.
        assert_eq!(summary(&changes), ["upsert b", "upsert z"]);
        assert!(
            problems[0].to_string().contains("a.yaml:7"),
            "{}",
            problems[0]
        );
        let (changes, _) = source.read(&folder(&[("b.yaml", &service("b", 81))]));
        assert_eq!(summary(&changes), ["delete a", "delete z"]);
    }

    #[test]
    fn an_object_defined_twice_is_refused_at_its_second_definition() {
        let mut source = Folder::new();
        let (changes, _) = source.read(&folder(&[
            ("a.yaml", &service("a", 80)),
            ("b.yaml", &service("a", 81)),
        ]));
        let [Change::Refuse(_, problems)] = changes.as_slice() else {
            panic!("{:?}", summary(&changes));
        };
        let line = problems[0].to_string();
        assert!(line.starts_with("b.yaml:1:"), "{line}");
        assert!(
            line.contains("defined 2 times (at a.yaml:1, b.yaml:1)"),
            "{line}"
        );
    }

    #[test]
    fn a_file_whose_text_did_not_change_keeps_its_very_objects_and_only_the_edited_one_is_read() {
        let mut source = Folder::new();
        let before = folder(&[("a.yaml", &service("a", 80)), ("b.yaml", &service("b", 80))]);
        source.read(&before);
        let kept = |source: &Folder, name: &str| match source.last.values().find(|e| match e {
            Entry::Object(o) => o.key.name == name,
            Entry::Twice(..) => false,
        }) {
            Some(Entry::Object(object)) => object.clone(),
            _ => panic!("no {name}"),
        };
        let (a, b) = (kept(&source, "a"), kept(&source, "b"));
        let after = folder(&[("a.yaml", &service("a", 80)), ("b.yaml", &service("b", 81))]);
        let (changes, _) = source.read(&after);
        assert_eq!(summary(&changes), ["upsert b"]);
        assert!(
            Arc::ptr_eq(&a, &kept(&source, "a")),
            "a.yaml was not parsed again"
        );
        assert!(!Arc::ptr_eq(&b, &kept(&source, "b")));
        // A file that goes takes what was parsed of it along.
        let (changes, _) = source.read(&folder(&[("b.yaml", &service("b", 81))]));
        assert_eq!(summary(&changes), ["delete a"]);
        assert_eq!(source.parsed.len(), 1);
    }
}
