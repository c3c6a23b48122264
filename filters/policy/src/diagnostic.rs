//! Problems found in a set of manifests, each pinned to the object, the field and (where known)
//! the file and line, with a message that says what would be valid.

use std::fmt;

use serde::Serialize;

/// How bad a problem is: errors make a manifest set unusable, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The set cannot be compiled until this is fixed.
    Error,
    /// Legal, but probably not what the author meant.
    Warning,
}

/// Where an object (or, in a diagnostic, the field it is about) was read from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Origin {
    /// The file name as given to the loader.
    pub file: String,
    /// 1-based line in that file: of the object's first line, and in a diagnostic returned by
    /// [`crate::check`], of the field the diagnostic is about; 0 for the file as a whole.
    pub line: usize,
    /// Where the object's document is, so that the line of any of its fields can be found.
    #[serde(skip)]
    pub locator: Option<Locator>,
}

impl Origin {
    /// An origin at `line` of `file`, with nothing to find fields by.
    pub fn at(file: &str, line: usize) -> Self {
        Self {
            file: file.to_owned(),
            line,
            locator: None,
        }
    }
}

/// Where an object sits in its file: the text of its YAML document and its path in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Locator {
    /// Byte offset of the document's text in the file.
    pub start: usize,
    /// Byte offset just past the document's text.
    pub end: usize,
    /// 1-based line of the document text's first line.
    pub first_line: usize,
    /// The object's field path in its document: empty, or `items[3]` in a `kind: List`.
    pub object_path: String,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Kind of the object concerned (`TrafficTarget`, ...), if the problem concerns one.
    pub kind: Option<String>,
    /// Namespace of the object.
    pub namespace: Option<String>,
    /// Name of the object.
    pub name: Option<String>,
    /// Path of the field concerned, e.g. `spec.rules[0].name` (empty for the whole object).
    pub field: String,
    /// Where the object was read from.
    pub origin: Option<Origin>,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl Diagnostic {
    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            // Line 0: the file as a whole.
            Some(origin) if origin.line == 0 => write!(f, "{}: ", origin.file)?,
            Some(origin) => write!(f, "{}:{}: ", origin.file, origin.line)?,
            None => {}
        }
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: ")?;
        if let (Some(kind), Some(name)) = (&self.kind, &self.name) {
            match &self.namespace {
                Some(namespace) => write!(f, "{kind} {namespace}/{name}: ")?,
                None => write!(f, "{kind} {name}: ")?,
            }
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)
    }
}

/// Makes every warning an error, as `--strict` asks (kubectl's `--validate=strict` does the
/// same with unknown fields): for pipelines that want nothing questionable to pass.
pub fn make_strict(diagnostics: &mut [Diagnostic]) {
    for diagnostic in diagnostics
        .iter_mut()
        .filter(|d| d.severity == Severity::Warning)
    {
        diagnostic.severity = Severity::Error;
    }
}

/// Sorts diagnostics into a stable order (file, line, object, field, message), so output does
/// not depend on the order in which files or objects were read.
pub fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| {
        (
            &a.origin,
            &a.kind,
            &a.namespace,
            &a.name,
            &a.field,
            &a.message,
            a.severity,
        )
            .cmp(&(
                &b.origin,
                &b.kind,
                &b.namespace,
                &b.name,
                &b.field,
                &b.message,
                b.severity,
            ))
    });
}

/// Points every diagnostic that concerns a field at the line of that field (or of its nearest
/// ancestor written in the file) instead of its object's first line. `files` maps each file
/// name to its text; only the documents that have diagnostics are read again.
pub fn locate_fields(
    files: &std::collections::HashMap<&str, &str>,
    diagnostics: &mut [Diagnostic],
) {
    let mut lines_of: std::collections::HashMap<
        (String, usize),
        std::collections::HashMap<String, usize>,
    > = std::collections::HashMap::new();
    for diagnostic in diagnostics.iter_mut() {
        let Some(origin) = diagnostic.origin.as_mut() else {
            continue;
        };
        let Some(locator) = origin.locator.take() else {
            continue;
        };
        let Some(text) = files.get(origin.file.as_str()) else {
            continue;
        };
        let lines = lines_of
            .entry((origin.file.clone(), locator.start))
            .or_insert_with(|| {
                text.get(locator.start..locator.end)
                    .map(|body| crate::document::yaml_field_lines(body, locator.first_line))
                    .unwrap_or_default()
            });
        let mut path = locator.object_path.clone();
        if !diagnostic.field.is_empty() {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&diagnostic.field);
        }
        // The nearest ancestor that is written: a missing field is reported where it belongs.
        loop {
            if let Some(line) = lines.get(&path) {
                origin.line = *line;
                break;
            }
            if path.len() <= locator.object_path.len() {
                break;
            }
            match path.rfind(['.', '[']) {
                Some(at) if at >= locator.object_path.len() => path.truncate(at),
                _ => path.truncate(locator.object_path.len()),
            }
        }
    }
}
