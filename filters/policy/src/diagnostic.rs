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

/// Where an object was read from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Origin {
    /// The file name as given to the loader.
    pub file: String,
    /// 1-based line of the object's first line in that file.
    pub line: usize,
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
        if let Some(origin) = &self.origin {
            write!(f, "{}:{}: ", origin.file, origin.line)?;
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
