//! Reading SMI manifests: YAML (one or many documents per file, or a `kind: List`) of every
//! served version into the normalised [`Catalog`], with a [`Diagnostic`] for every problem found
//! on the way. Loading never stops at the first problem: an object that cannot be read is
//! skipped with an error, every other object is still read.
//!
//! Wire-format quirks accepted (see docs/smi.md): `headers` as a map or as a list of single-key
//! maps; `matches` at the object root when `spec.matches` is absent (`spec` wins when both
//! exist); v1alpha1 TrafficTargets with root-level `destination`/`sources`/`specs`; v1alpha1
//! quantity weights (`100m`); `destination.port` on v1alpha1/v1alpha2 TrafficTargets.

mod extension;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::catalog::Catalog;
use crate::diagnostic::{Diagnostic, Origin, Severity};
use crate::document::DuplicateKey;
use crate::model::{
    AppProtocol, HttpMatch, HttpRouteGroup, L4Protocol, LocalRef, Meta, PortRoute, Service,
    ServicePort, SplitBackend, Subject, TrafficSplit, TrafficTarget, TrafficTargetRule, Workload,
};

/// Why one document or field could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The YAML itself is malformed.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// A key given twice in one mapping.
    #[error(
        "is given twice; give each key once (Kubernetes refuses an object with a repeated key, and the second value would silently replace the first)"
    )]
    DuplicateKey,
    /// The document is not a mapping with `apiVersion` and `kind`.
    #[error("not a Kubernetes object: it needs string fields `apiVersion` and `kind`")]
    NotAnObject,
    /// An SMI group with a version weft does not serve.
    #[error("apiVersion {api_version} is not served for {kind}; weft reads {served}")]
    UnservedVersion {
        /// The apiVersion found.
        api_version: String,
        /// The kind found.
        kind: String,
        /// The versions that are read, comma-separated.
        served: String,
    },
    /// An SMI group with a kind it does not define.
    #[error("kind {kind} does not exist in {group}; it defines {known}")]
    UnknownKind {
        /// The kind found.
        kind: String,
        /// The API group.
        group: String,
        /// Kinds the group defines.
        known: &'static str,
    },
    /// A field has the wrong shape.
    #[error("{0}")]
    Shape(String),
    /// A required field is absent.
    #[error("is required")]
    Missing,
    /// A field this version does not define (ignored).
    #[error("unknown field, ignored (check its spelling against the {0} schema)")]
    UnknownField(String),
    /// A field an SMI object that decides access does not define: an error, since a misspelt
    /// field ignored could widen access (`method` for `methods` would allow every method).
    #[error(
        "unknown field{}; here {kind} {api_version} reads {known} (docs/smi.md)",
        suggestion.as_ref().map(|s| format!(": did you mean `{s}`?")).unwrap_or_default()
    )]
    UnknownAccessField {
        /// The kind.
        kind: String,
        /// Its apiVersion.
        api_version: String,
        /// The field it most likely meant, if one is close.
        suggestion: Option<String>,
        /// The fields read at that place, comma-separated.
        known: String,
    },
    /// A field weft's own kinds do not define (an error: a misspelt setting must not pass).
    #[error(
        "unknown field; check its spelling against the {0} schema (docs/traffic-policy.md, docs/patches.md)"
    )]
    UnknownWeftField(String),
    /// A port outside 1..=65535.
    #[error("{0} is not a port; use a whole number from 1 to 65535")]
    BadPort(String),
    /// A TrafficSplit weight that is not a whole number (v1alpha2 and later).
    #[error("{0} is not a valid weight; use a whole number of 0 or more")]
    BadWeight(String),
    /// A weight above [`MAX_WEIGHT`].
    #[error("{0} is too large; weights are relative, from 0 to 4294967295")]
    WeightTooLarge(String),
    /// A v1alpha1 weight above [`MAX_WEIGHT`] thousandths.
    #[error(
        "{0} is too large; v1alpha1 weights are relative quantities up to 4294967295m (about 4.29M)"
    )]
    QuantityTooLarge(String),
    /// A v1alpha1 TrafficSplit weight that is not a Kubernetes quantity.
    #[error(
        "{0} is not a valid v1alpha1 weight; use a quantity such as 1, 500m or 1500m (0 or more)"
    )]
    BadQuantity(String),
    /// Headers neither a map nor a list of maps of strings.
    #[error(
        "headers must map header names to regex strings, as a map or a list of single-key maps"
    )]
    BadHeaders,
    /// A header named twice in one match (names differ only in letter case).
    #[error(
        "header {0} is already given in this match (header names are case-insensitive); give each header once"
    )]
    DuplicateHeader(String),
}

const ACCESS_GROUP: &str = "access.smi-spec.io";
const SPECS_GROUP: &str = "specs.smi-spec.io";
const SPLIT_GROUP: &str = "split.smi-spec.io";
const ACCESS_VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3"];
const SPECS_VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"];
const SPLIT_VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"];

/// The namespace of an object that names none, as kubectl assumes.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One YAML document of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DocumentText {
    /// Byte offsets of its text.
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// 1-based line of its text's first line.
    pub(crate) first_line: usize,
    /// 1-based line of its first content line (not blank, not a comment).
    pub(crate) content_line: usize,
}

/// Splits YAML text at `---` (and `...`) lines, so that a document that is not YAML does not
/// hide the others, and so that each object's line is known.
pub(crate) fn split_documents(text: &str) -> Vec<DocumentText> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            documents.push((start, offset, first_line));
            start = offset + line.len();
            first_line = index + 2;
        }
        offset += line.len();
    }
    documents.push((start, text.len(), first_line));
    documents
        .into_iter()
        .filter_map(|(start, end, first_line)| {
            let body = &text[start..end];
            let skip = body
                .lines()
                .take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
                .count();
            (skip < body.lines().count()).then_some(DocumentText {
                start,
                end,
                first_line,
                content_line: first_line + skip,
            })
        })
        .collect()
}

/// Reads one object (a `kind: List` was split into its items by
/// [`crate::object::read_objects`]); `duplicates` are the keys the object repeats, with paths
/// from its root.
pub(crate) fn load_value(
    value: Value,
    origin: &Origin,
    duplicates: &[DuplicateKey],
    catalog: &mut Catalog,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let (Some(api_version), Some(kind)) = (
        value
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        value.get("kind").and_then(Value::as_str).map(str::to_owned),
    ) else {
        diagnostics.push(problem(None, origin, "", LoadError::NotAnObject));
        return;
    };
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    let mut reader = Reader {
        origin,
        diagnostics,
        object: ObjectId {
            kind: kind.clone(),
            namespace: None,
            name: None,
        },
        // A misspelt setting of weft's own kinds, or of the SMI kinds that decide access,
        // must not pass silently; other unknown fields (a TrafficSplit's) stay warnings, as
        // kubectl treats them.
        unknown_fields_are_errors: group == crate::extension::GROUP,
        access_schema: access_schema(group, &kind),
    };
    let served = match group {
        ACCESS_GROUP => ACCESS_VERSIONS,
        SPECS_GROUP => SPECS_VERSIONS,
        SPLIT_GROUP => SPLIT_VERSIONS,
        "" if version == "v1" && kind == "Service" => {
            reader.identify(&value);
            reader.duplicates(duplicates);
            if let Some(service) = reader.service(value, &api_version) {
                catalog.services.push(service);
            }
            return;
        }
        "apps" if version == "v1" && kind == "Deployment" => {
            reader.identify(&value);
            reader.duplicates(duplicates);
            if let Some(workload) = reader.workload(value, &api_version, true) {
                catalog.workloads.push(workload);
            }
            return;
        }
        crate::extension::GROUP => {
            reader.identify(&value);
            reader.duplicates(duplicates);
            if crate::extension::VERSIONS.contains(&version) {
                reader.weft_object(&kind, value, &api_version, catalog);
            } else {
                reader.error(
                    "apiVersion",
                    LoadError::UnservedVersion {
                        api_version: api_version.clone(),
                        kind,
                        served: crate::extension::VERSIONS.join(", "),
                    },
                );
            }
            return;
        }
        "" if version == "v1" && kind == "Pod" => {
            reader.identify(&value);
            reader.duplicates(duplicates);
            if let Some(workload) = reader.workload(value, &api_version, false) {
                catalog.workloads.push(workload);
            }
            return;
        }
        _ => return,
    };
    reader.identify(&value);
    reader.duplicates(duplicates);
    if !served.contains(&version) {
        reader.error(
            "apiVersion",
            LoadError::UnservedVersion {
                api_version: api_version.clone(),
                kind,
                served: served.join(", "),
            },
        );
        return;
    }
    match (group, kind.as_str()) {
        (ACCESS_GROUP, "TrafficTarget") => {
            if let Some(target) = reader.traffic_target(value, &api_version) {
                catalog.traffic_targets.push(target);
            }
        }
        (SPECS_GROUP, "HTTPRouteGroup") => {
            if let Some(group) = reader.http_route_group(value, &api_version) {
                catalog.http_route_groups.push(group);
            }
        }
        (SPECS_GROUP, "TCPRoute" | "UDPRoute") => {
            let protocol = if kind == "TCPRoute" {
                L4Protocol::Tcp
            } else {
                L4Protocol::Udp
            };
            if let Some(route) = reader.port_route(value, &api_version, protocol) {
                catalog.port_routes.push(route);
            }
        }
        (SPLIT_GROUP, "TrafficSplit") => {
            if let Some(split) = reader.traffic_split(value, &api_version, version == "v1alpha1") {
                catalog.traffic_splits.push(split);
            }
        }
        (group, _) => {
            let known = match group {
                ACCESS_GROUP => "TrafficTarget",
                SPECS_GROUP => "HTTPRouteGroup, TCPRoute, UDPRoute",
                _ => "TrafficSplit",
            };
            reader.error(
                "kind",
                LoadError::UnknownKind {
                    kind,
                    group: group.to_owned(),
                    known,
                },
            );
        }
    }
}

fn problem(
    object: Option<&ObjectId>,
    origin: &Origin,
    field: &str,
    error: LoadError,
) -> Diagnostic {
    let severity = match error {
        LoadError::UnknownField(_) => Severity::Warning,
        _ => Severity::Error,
    };
    Diagnostic {
        severity,
        kind: object.map(|o| o.kind.clone()),
        namespace: object.and_then(|o| o.namespace.clone()),
        name: object.and_then(|o| o.name.clone()),
        field: field.to_owned(),
        origin: Some(origin.clone()),
        message: error.to_string(),
    }
}

#[derive(Debug, Clone)]
struct ObjectId {
    kind: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// Reads one object, reporting problems against it.
pub(crate) struct Reader<'a> {
    origin: &'a Origin,
    diagnostics: &'a mut Vec<Diagnostic>,
    object: ObjectId,
    /// Whether a field the schema does not define is an error rather than a warning.
    unknown_fields_are_errors: bool,
    /// For the SMI kinds that decide access: the fields read at each place, by the place's
    /// path with list indices left out (an unknown field there is an error).
    access_schema: Option<&'static [(&'static str, &'static [&'static str])]>,
}

/// The fields of a TrafficTarget (every served version: v1alpha1 keeps the body at the root
/// and calls the rules `specs`; v1alpha1 and v1alpha2 give the destination a port).
const TRAFFIC_TARGET_FIELDS: &[(&str, &[&str])] = &[
    ("", &["spec", "destination", "sources", "rules", "specs"]),
    ("spec", &["destination", "sources", "rules", "specs"]),
    ("destination", &["kind", "name", "namespace", "port"]),
    ("spec.destination", &["kind", "name", "namespace", "port"]),
    ("sources[]", &["kind", "name", "namespace", "port"]),
    ("spec.sources[]", &["kind", "name", "namespace", "port"]),
    ("rules[]", &["kind", "name", "matches"]),
    ("spec.rules[]", &["kind", "name", "matches"]),
    ("specs[]", &["kind", "name", "matches"]),
    ("spec.specs[]", &["kind", "name", "matches"]),
];

/// The fields of an HTTPRouteGroup (`matches` at the root in v1alpha1 and v1alpha2).
const HTTP_ROUTE_GROUP_FIELDS: &[(&str, &[&str])] = &[
    ("", &["spec", "matches"]),
    ("spec", &["matches"]),
    ("matches[]", &["name", "pathRegex", "methods", "headers"]),
    (
        "spec.matches[]",
        &["name", "pathRegex", "methods", "headers"],
    ),
];

/// The fields of a TCPRoute or UDPRoute.
const PORT_ROUTE_FIELDS: &[(&str, &[&str])] = &[
    ("", &["spec"]),
    ("spec", &["matches"]),
    ("spec.matches", &["name", "ports"]),
];

/// The fields of `kind` of `group` when it is a kind that decides access.
fn access_schema(
    group: &str,
    kind: &str,
) -> Option<&'static [(&'static str, &'static [&'static str])]> {
    match (group, kind) {
        (ACCESS_GROUP, "TrafficTarget") => Some(TRAFFIC_TARGET_FIELDS),
        (SPECS_GROUP, "HTTPRouteGroup") => Some(HTTP_ROUTE_GROUP_FIELDS),
        (SPECS_GROUP, "TCPRoute" | "UDPRoute") => Some(PORT_ROUTE_FIELDS),
        _ => None,
    }
}

/// `field` (a path such as `spec.matches[0].method`) split into its place with list indices
/// left out (`spec.matches[]`) and its last name (`method`).
fn place_of(field: &str) -> (String, &str) {
    let (parent, name) = field.rsplit_once('.').unwrap_or(("", field));
    let mut place = String::new();
    let mut in_index = false;
    for c in parent.chars() {
        match c {
            '[' => {
                in_index = true;
                place.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => place.push(c),
        }
    }
    (place, name)
}

/// The known field `name` most likely meant: the closest by edit distance (letter case
/// aside), if it is close enough to be a slip.
pub(crate) fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = name.to_ascii_lowercase();
    known
        .iter()
        .map(|candidate| {
            (
                strsim::damerau_levenshtein(&lower, &candidate.to_ascii_lowercase()),
                *candidate,
            )
        })
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

// ---- wire shapes: lenient (every field optional) so that all problems are reported at once ----

/// A leaf read leniently: a value of the wrong type is kept (with serde's reason) to be reported
/// at its own field, instead of failing the whole object and hiding its other problems.
enum Lenient<T> {
    Good(T),
    Bad(String),
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(match serde_json::from_value::<T>(value) {
            Ok(good) => Lenient::Good(good),
            Err(err) => Lenient::Bad(err.to_string()),
        })
    }
}

#[derive(Deserialize, Default)]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTrafficTarget {
    spec: Option<WireTrafficTargetBody>,
    // v1alpha1 keeps the body at the root (written out rather than flattened: serde cannot
    // report unknown fields of a flattened struct, and they decide access).
    destination: Option<WireSubject>,
    sources: Option<Vec<WireSubject>>,
    rules: Option<Vec<WireRule>>,
    specs: Option<Vec<WireRule>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireTrafficTargetBody {
    destination: Option<WireSubject>,
    sources: Option<Vec<WireSubject>>,
    rules: Option<Vec<WireRule>>,
    specs: Option<Vec<WireRule>>,
}

#[derive(Deserialize)]
struct WireSubject {
    kind: Option<Lenient<String>>,
    name: Option<Lenient<String>>,
    namespace: Option<Lenient<String>>,
    port: Option<Value>,
}

#[derive(Deserialize)]
struct WireRule {
    kind: Option<Lenient<String>>,
    name: Option<Lenient<String>>,
    matches: Option<Lenient<Vec<String>>>,
}

#[derive(Deserialize)]
struct WireRouteGroup {
    spec: Option<WireMatchesBody>,
    matches: Option<Vec<WireHttpMatch>>,
}

#[derive(Deserialize)]
struct WireMatchesBody {
    matches: Option<Vec<WireHttpMatch>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireHttpMatch {
    name: Option<Lenient<String>>,
    path_regex: Option<Lenient<String>>,
    methods: Option<Lenient<Vec<String>>>,
    headers: Option<Value>,
}

#[derive(Deserialize)]
struct WirePortRoute {
    spec: Option<WirePortBody>,
}

#[derive(Deserialize)]
struct WirePortBody {
    matches: Option<WirePortMatches>,
}

#[derive(Deserialize)]
struct WirePortMatches {
    #[serde(rename = "name")]
    _name: Option<Value>,
    ports: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct WireSplit {
    spec: Option<WireSplitBody>,
}

#[derive(Deserialize)]
struct WireSplitBody {
    service: Option<Lenient<String>>,
    backends: Option<Vec<WireBackend>>,
    matches: Option<Vec<WireLocalRef>>,
}

#[derive(Deserialize)]
struct WireBackend {
    service: Option<Lenient<String>>,
    weight: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireLocalRef {
    kind: Option<Lenient<String>>,
    name: Option<Lenient<String>>,
    #[serde(rename = "apiGroup")]
    _api_group: Option<Value>,
}

#[derive(Deserialize)]
struct WireService {
    spec: Option<WireServiceSpec>,
}

#[derive(Deserialize)]
struct WireServiceSpec {
    ports: Option<Vec<WireServicePort>>,
    selector: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireServicePort {
    port: Option<Value>,
    name: Option<String>,
    target_port: Option<Value>,
    app_protocol: Option<String>,
}

// Kubernetes workloads: every field weft does not read is ignored, as kubectl would accept it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireDeploymentSpec {
    replicas: Option<u32>,
    template: Option<WirePodTemplate>,
}

#[derive(Deserialize, Default)]
struct WirePodTemplate {
    metadata: Option<WirePodMeta>,
    spec: Option<WirePodSpec>,
}

#[derive(Deserialize, Default)]
struct WirePodMeta {
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WirePodSpec {
    service_account_name: Option<String>,
    containers: Option<Vec<WireContainer>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireContainer {
    // What the container runs is local mode's (`weft_local::Run`), read from the document; read
    // here only so that a wrong type is refused at its field.
    #[serde(rename = "command")]
    _command: Option<Vec<String>>,
    #[serde(rename = "args")]
    _args: Option<Vec<String>>,
    #[serde(rename = "env")]
    _env: Option<Vec<WireEnv>>,
    ports: Option<Vec<WireContainerPort>>,
}

#[derive(Deserialize)]
struct WireEnv {
    #[serde(rename = "name")]
    _name: String,
    #[serde(rename = "value")]
    _value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireContainerPort {
    container_port: u16,
}

impl Reader<'_> {
    pub(crate) fn error(&mut self, field: &str, error: LoadError) {
        self.diagnostics
            .push(problem(Some(&self.object), self.origin, field, error));
    }

    /// A string field: reported at `field` when it has the wrong type, or (when `required`) when
    /// it is absent or empty; `None` then.
    fn text(
        &mut self,
        field: &str,
        value: Option<Lenient<String>>,
        required: bool,
    ) -> Option<String> {
        match value {
            Some(Lenient::Bad(reason)) => {
                self.error(field, LoadError::Shape(reason));
                None
            }
            Some(Lenient::Good(text)) if !text.is_empty() => Some(text),
            _ => {
                if required {
                    self.error(field, LoadError::Missing);
                }
                None
            }
        }
    }

    /// A list of strings, reported at `field` when it has the wrong type.
    fn texts(&mut self, field: &str, value: Option<Lenient<Vec<String>>>) -> Option<Vec<String>> {
        match value? {
            Lenient::Good(texts) => Some(texts),
            Lenient::Bad(reason) => {
                self.error(field, LoadError::Shape(reason));
                None
            }
        }
    }

    /// A backend's weight: a whole number, or a v1alpha1 quantity in thousandths; reported at
    /// `field` when absent, invalid or too large.
    fn weight(&mut self, field: &str, value: Option<Value>, quantity: bool) -> Option<u64> {
        let Some(value) = value else {
            self.error(field, LoadError::Missing);
            return None;
        };
        let read = match quantity {
            true => quantity_milli(&value),
            false => whole_number(&value),
        };
        let shown = || value.to_string();
        let error = match (read, quantity) {
            (Ok(weight), _) => return Some(weight),
            (Err(WeightProblem::TooLarge), true) => LoadError::QuantityTooLarge(shown()),
            (Err(WeightProblem::TooLarge), false) => LoadError::WeightTooLarge(shown()),
            (Err(WeightProblem::Invalid), true) => LoadError::BadQuantity(shown()),
            (Err(WeightProblem::Invalid), false) => LoadError::BadWeight(shown()),
        };
        self.error(field, error);
        None
    }

    /// Reports each repeated key at the line of its repetition.
    fn duplicates(&mut self, duplicates: &[DuplicateKey]) {
        for duplicate in duplicates {
            let origin = Origin::at(&self.origin.file, duplicate.line);
            self.diagnostics.push(problem(
                Some(&self.object),
                &origin,
                &duplicate.path,
                LoadError::DuplicateKey,
            ));
        }
    }

    /// Records name and namespace for diagnostics, before the object is read.
    fn identify(&mut self, value: &Value) {
        let metadata = value
            .get("metadata")
            .cloned()
            .and_then(|m| serde_json::from_value::<WireMeta>(m).ok())
            .unwrap_or_default();
        self.object.name = metadata.name;
        self.object.namespace = Some(
            metadata
                .namespace
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        );
    }

    pub(crate) fn meta(&mut self, api_version: &str) -> Option<Meta> {
        let Some(name) = self.object.name.clone().filter(|n| !n.is_empty()) else {
            self.error("metadata.name", LoadError::Missing);
            return None;
        };
        Some(Meta {
            namespace: self
                .object
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            name,
            api_version: api_version.to_owned(),
            origin: Some(self.origin.clone()),
        })
    }

    /// Deserialises `value` into a wire shape, warning about unknown fields and reporting a
    /// shape error with its field path. The envelope (`apiVersion`, `kind`, `metadata`,
    /// `status`) was read already and is not part of any wire shape.
    pub(crate) fn wire<T: for<'de> Deserialize<'de>>(
        &mut self,
        mut value: Value,
        schema: &str,
    ) -> Option<T> {
        if let Some(object) = value.as_object_mut() {
            for envelope in ["apiVersion", "kind", "metadata", "status"] {
                object.remove(envelope);
            }
        }
        let mut unknown = Vec::new();
        let mut record =
            |path: serde_ignored::Path<'_>| unknown.push(field_path(&path.to_string()));
        let deserializer = serde_ignored::Deserializer::new(value, &mut record);
        let result: Result<T, _> = serde_path_to_error::deserialize(deserializer);
        for field in unknown {
            let error = self.unknown_field(&field, schema);
            self.error(&field, error);
        }
        match result {
            Ok(wire) => Some(wire),
            Err(err) => {
                let field = field_path(&err.path().to_string());
                self.error(&field, LoadError::Shape(err.into_inner().to_string()));
                None
            }
        }
    }

    /// What an unknown `field` of an object read with `schema` is.
    fn unknown_field(&self, field: &str, schema: &str) -> LoadError {
        if let Some(fields) = self.access_schema {
            let (place, name) = place_of(field);
            let known = fields
                .iter()
                .find(|(at, _)| *at == place)
                .map_or(&[][..], |(_, known)| *known);
            return LoadError::UnknownAccessField {
                kind: self.object.kind.clone(),
                api_version: schema.to_owned(),
                suggestion: closest(name, known).map(str::to_owned),
                known: if known.is_empty() {
                    "no fields".to_owned()
                } else {
                    known.join(", ")
                },
            };
        }
        if self.unknown_fields_are_errors {
            LoadError::UnknownWeftField(schema.to_owned())
        } else {
            LoadError::UnknownField(schema.to_owned())
        }
    }

    fn traffic_target(&mut self, value: Value, api_version: &str) -> Option<TrafficTarget> {
        let wire: WireTrafficTarget = self.wire(value, api_version)?;
        let meta = self.meta(api_version)?;
        let in_spec = wire.spec.is_some();
        let body = wire.spec.unwrap_or(WireTrafficTargetBody {
            destination: wire.destination,
            sources: wire.sources,
            rules: wire.rules,
            specs: wire.specs,
        });
        let prefix = if in_spec { "spec." } else { "" };
        let rules_field = if body.rules.is_none() && body.specs.is_some() {
            "specs"
        } else {
            "rules"
        };
        let written = crate::model::TargetFields {
            body: prefix.to_owned(),
            rules: format!("{prefix}{rules_field}"),
        };
        let mut destination_port = None;
        let destination = match body.destination {
            None => {
                self.error(&format!("{prefix}destination"), LoadError::Missing);
                None
            }
            Some(subject) => {
                let field = format!("{prefix}destination");
                if let Some(port) = &subject.port {
                    destination_port = self.port(&format!("{field}.port"), port);
                }
                self.subject(&field, 0, subject)
            }
        };
        let sources = body
            .sources
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(i, subject)| self.subject(&format!("{prefix}sources[{i}]"), i, subject))
            .collect();
        let wire_rules = body.rules.or(body.specs).unwrap_or_default();
        let mut rules = Vec::new();
        for (i, rule) in wire_rules.into_iter().enumerate() {
            let field = format!("{}[{i}]", written.rules);
            let kind = self.text(&format!("{field}.kind"), rule.kind, true);
            let name = self.text(&format!("{field}.name"), rule.name, true);
            let matches = self.texts(&format!("{field}.matches"), rule.matches);
            if let (Some(kind), Some(name)) = (kind, name) {
                rules.push(TrafficTargetRule {
                    kind,
                    name,
                    matches,
                    position: i,
                });
            }
        }
        Some(TrafficTarget {
            meta,
            destination,
            sources,
            rules,
            destination_port,
            written,
        })
    }

    fn subject(&mut self, field: &str, position: usize, subject: WireSubject) -> Option<Subject> {
        let name = self.text(&format!("{field}.name"), subject.name, true);
        let kind = self.text(&format!("{field}.kind"), subject.kind, true);
        let namespace = self.text(&format!("{field}.namespace"), subject.namespace, false);
        Some(Subject {
            kind: kind?,
            name: name?,
            namespace,
            position,
        })
    }

    pub(crate) fn port(&mut self, field: &str, value: &Value) -> Option<u16> {
        match value
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        {
            Some(port) => Some(port),
            None => {
                self.error(field, LoadError::BadPort(value.to_string()));
                None
            }
        }
    }

    fn http_route_group(&mut self, value: Value, api_version: &str) -> Option<HttpRouteGroup> {
        let wire: WireRouteGroup = self.wire(value, api_version)?;
        let meta = self.meta(api_version)?;
        let (prefix, wire_matches) = match (wire.spec.and_then(|spec| spec.matches), wire.matches) {
            (Some(matches), _) => ("spec.matches", matches),
            (None, Some(matches)) => ("matches", matches),
            (None, None) => {
                self.error("spec.matches", LoadError::Missing);
                return None;
            }
        };
        let mut matches = Vec::new();
        for (i, wire) in wire_matches.into_iter().enumerate() {
            let field = format!("{prefix}[{i}]");
            let name = self.text(&format!("{field}.name"), wire.name, true);
            let path_regex = self.text(&format!("{field}.pathRegex"), wire.path_regex, false);
            let methods = self.texts(&format!("{field}.methods"), wire.methods);
            let Some(name) = name else {
                continue;
            };
            let headers = match wire.headers {
                None => Vec::new(),
                Some(value) => match headers(value) {
                    Some(headers) => headers,
                    None => {
                        self.error(&format!("{field}.headers"), LoadError::BadHeaders);
                        continue;
                    }
                },
            };
            let mut by_name: BTreeMap<String, (String, String)> = BTreeMap::new();
            for (written, name, regex) in headers {
                match by_name.entry(name) {
                    std::collections::btree_map::Entry::Occupied(taken) => self.error(
                        &format!("{field}.{written}"),
                        LoadError::DuplicateHeader(taken.key().clone()),
                    ),
                    std::collections::btree_map::Entry::Vacant(free) => {
                        free.insert((regex, written));
                    }
                }
            }
            let (headers, header_fields) = by_name
                .into_iter()
                .map(|(name, (regex, written))| ((name, regex), written))
                .unzip();
            matches.push(HttpMatch {
                name,
                path_regex,
                methods: methods.unwrap_or_default(),
                headers,
                header_fields,
                position: i,
            });
        }
        Some(HttpRouteGroup {
            meta,
            matches,
            matches_field: prefix.to_owned(),
        })
    }

    fn port_route(
        &mut self,
        value: Value,
        api_version: &str,
        protocol: L4Protocol,
    ) -> Option<PortRoute> {
        let wire: WirePortRoute = self.wire(value, api_version)?;
        let meta = self.meta(api_version)?;
        let mut ports = Vec::new();
        let wire_ports = wire
            .spec
            .and_then(|s| s.matches)
            .and_then(|m| m.ports)
            .unwrap_or_default();
        for (i, port) in wire_ports.iter().enumerate() {
            if let Some(port) = self.port(&format!("spec.matches.ports[{i}]"), port) {
                ports.push(port);
            }
        }
        ports.sort_unstable();
        ports.dedup();
        Some(PortRoute {
            meta,
            protocol,
            ports,
        })
    }

    fn traffic_split(
        &mut self,
        value: Value,
        api_version: &str,
        quantity_weights: bool,
    ) -> Option<TrafficSplit> {
        let wire: WireSplit = self.wire(value, api_version)?;
        let meta = self.meta(api_version)?;
        let Some(spec) = wire.spec else {
            self.error("spec", LoadError::Missing);
            return None;
        };
        // A split without a readable root service is still read, so that its other problems
        // are reported too; validation skips what needs the root.
        let service = self
            .text("spec.service", spec.service, true)
            .unwrap_or_default();
        let mut backends = Vec::new();
        for (i, backend) in spec.backends.unwrap_or_default().into_iter().enumerate() {
            let field = format!("spec.backends[{i}]");
            let name = self.text(&format!("{field}.service"), backend.service, true);
            let weight = self.weight(&format!("{field}.weight"), backend.weight, quantity_weights);
            if let (Some(service), Some(weight)) = (name, weight) {
                backends.push(SplitBackend {
                    service,
                    weight,
                    position: i,
                });
            }
        }
        let mut matches = Vec::new();
        for (i, reference) in spec.matches.unwrap_or_default().into_iter().enumerate() {
            let field = format!("spec.matches[{i}]");
            let kind = self.text(&format!("{field}.kind"), reference.kind, true);
            let name = self.text(&format!("{field}.name"), reference.name, true);
            if let (Some(kind), Some(name)) = (kind, name) {
                matches.push(LocalRef {
                    kind,
                    name,
                    position: i,
                });
            }
        }
        Some(TrafficSplit {
            meta,
            service,
            backends,
            matches,
        })
    }

    fn service(&mut self, value: Value, api_version: &str) -> Option<Service> {
        // A Service has many fields weft does not read; none of them is worth a warning.
        let wire: WireService = self.read_shape(value)?;
        let meta = self.meta(api_version)?;
        let spec = wire.spec.unwrap_or(WireServiceSpec {
            ports: None,
            selector: None,
        });
        let mut port_specs = Vec::new();
        for (index, port) in spec.ports.unwrap_or_default().into_iter().enumerate() {
            let Some(number) = port.port.as_ref().and_then(port_number) else {
                let shown = port
                    .port
                    .map_or_else(|| "nothing".to_owned(), |v| v.to_string());
                self.error(
                    &format!("spec.ports[{index}].port"),
                    LoadError::BadPort(shown),
                );
                continue;
            };
            let target_port = match &port.target_port {
                None => number,
                Some(value) => match port_number(value) {
                    Some(target) => target,
                    None => {
                        self.error(
                            &format!("spec.ports[{index}].targetPort"),
                            LoadError::Shape(format!(
                                "{value} is not a port number; weft reads targetPort as a number from 1 to 65535 (named container ports are not supported)"
                            )),
                        );
                        continue;
                    }
                },
            };
            let name = port.name.unwrap_or_default();
            let protocol = match port.app_protocol.as_deref() {
                Some("tcp") => AppProtocol::Tcp,
                Some(_) => AppProtocol::Http,
                None if name == "tcp" || name.starts_with("tcp-") => AppProtocol::Tcp,
                None => AppProtocol::Http,
            };
            port_specs.push(ServicePort {
                name,
                port: number,
                target_port,
                protocol,
            });
        }
        let mut ports: Vec<u16> = port_specs.iter().map(|p| p.port).collect();
        ports.sort_unstable();
        ports.dedup();
        Some(Service {
            meta,
            ports,
            selector: spec.selector.unwrap_or_default(),
            port_specs,
        })
    }

    /// A value read into `T`, or an error at the field serde stopped at.
    fn read_shape<T: serde::de::DeserializeOwned>(&mut self, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize(value) {
            Ok(read) => Some(read),
            Err(err) => {
                let field = field_path(&err.path().to_string());
                self.error(&field, LoadError::Shape(err.into_inner().to_string()));
                None
            }
        }
    }

    /// A Deployment (`deployment`) or a Pod.
    fn workload(&mut self, value: Value, api_version: &str, deployment: bool) -> Option<Workload> {
        let labels_field;
        let (replicas, metadata, pod) = if deployment {
            #[derive(Deserialize)]
            struct Wire {
                spec: Option<WireDeploymentSpec>,
            }
            let wire: Wire = self.read_shape(value)?;
            let spec = wire.spec.unwrap_or_default();
            let template = spec.template.unwrap_or_default();
            labels_field = "spec.template.metadata.labels";
            (spec.replicas.unwrap_or(1), template.metadata, template.spec)
        } else {
            #[derive(Deserialize)]
            struct Wire {
                metadata: Option<WirePodMeta>,
                spec: Option<WirePodSpec>,
            }
            let wire: Wire = self.read_shape(value)?;
            labels_field = "metadata.labels";
            (1, wire.metadata, wire.spec)
        };
        let meta = self.meta(api_version)?;
        let pod = pod.unwrap_or_default();
        let labels = metadata.and_then(|m| m.labels).unwrap_or_default();
        if deployment && labels.is_empty() {
            self.error(labels_field, LoadError::Missing);
        }
        let container = pod
            .containers
            .and_then(|containers| containers.into_iter().next())
            .unwrap_or_default();
        Some(Workload {
            meta,
            kind: if deployment { "Deployment" } else { "Pod" }.to_owned(),
            service_account: pod
                .service_account_name
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            labels,
            replicas,
            ports: container
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|port| port.container_port)
                .collect(),
        })
    }
}

/// A port number from 1 to 65535.
fn port_number(value: &Value) -> Option<u16> {
    value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n > 0)
}

/// `spec.rules.0.name` (serde's path) as `spec.rules[0].name`.
fn field_path(path: &str) -> String {
    let mut out = String::new();
    for segment in path.split('.').filter(|s| !s.is_empty() && *s != "?") {
        if segment.chars().all(|c| c.is_ascii_digit()) {
            out.push('[');
            out.push_str(segment);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// Headers as a map, or as a list of maps (each usually with one key), as `(where it is
/// written relative to the match, lower-case name, regex)`, in the order written. Names are
/// lower-cased because HTTP header names are case-insensitive and Envoy presents them so.
fn headers(value: Value) -> Option<Vec<(String, String, String)>> {
    let maps: Vec<(Option<usize>, serde_json::Map<String, Value>)> = match value {
        Value::Object(map) => vec![(None, map)],
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::Object(map) => Some((Some(index), map)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    let mut headers = Vec::new();
    for (index, map) in maps {
        for (name, regex) in map {
            let written = match index {
                None => format!("headers.{name}"),
                Some(index) => format!("headers[{index}].{name}"),
            };
            headers.push((
                written,
                name.to_ascii_lowercase(),
                regex.as_str()?.to_owned(),
            ));
        }
    }
    Some(headers)
}

/// The largest weight a backend may have: Envoy's own cluster weights are 32-bit, and relative
/// weights need no more.
pub const MAX_WEIGHT: u64 = u32::MAX as u64;

/// Why a weight could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightProblem {
    /// Not a whole number of 0 or more (or not a quantity).
    Invalid,
    /// Above [`MAX_WEIGHT`].
    TooLarge,
}

/// A whole number from 0 to [`MAX_WEIGHT`] (an integral float such as `2.0` counts; the CRD
/// says `number`).
fn whole_number(value: &Value) -> Result<u64, WeightProblem> {
    let Value::Number(number) = value else {
        return Err(WeightProblem::Invalid);
    };
    if let Some(n) = number.as_u64() {
        return if n <= MAX_WEIGHT {
            Ok(n)
        } else {
            Err(WeightProblem::TooLarge)
        };
    }
    let f = number.as_f64().ok_or(WeightProblem::Invalid)?;
    if f < 0.0 || f.fract() != 0.0 {
        return Err(WeightProblem::Invalid);
    }
    if f > MAX_WEIGHT as f64 {
        return Err(WeightProblem::TooLarge);
    }
    Ok(f as u64)
}

/// A Kubernetes quantity (`1`, `500m`, `1.5`, `2k`, `1M`; decimal suffixes only) in thousandths,
/// which keeps the ratios of a v1alpha1 split exact, at most [`MAX_WEIGHT`] thousandths.
/// Negative or sub-milli values are refused.
fn quantity_milli(value: &Value) -> Result<u64, WeightProblem> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err(WeightProblem::Invalid),
    };
    let invalid = WeightProblem::Invalid;
    let (number, scale) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => {
            let scale: u128 = match &text[at..] {
                "m" => 1,
                "k" => 1_000_000,
                "M" => 1_000_000_000,
                _ => return Err(invalid),
            };
            (&text[..at], scale)
        }
        None => (text.as_str(), 1000),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !fraction.chars().all(|c| c.is_ascii_digit())
    {
        return Err(invalid);
    }
    // Too many digits for any weight: say so rather than overflow.
    if whole.trim_start_matches('0').len() > 20 {
        return Err(WeightProblem::TooLarge);
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| invalid)?
    };
    // Digits below a thousandth must be zeros: a weight is a whole number of thousandths.
    let mut value = whole * scale;
    let mut unit = scale;
    for digit in fraction.chars() {
        let digit = u128::from(digit.to_digit(10).ok_or(invalid)?);
        if unit == 1 {
            if digit != 0 {
                return Err(invalid);
            }
            continue;
        }
        unit /= 10;
        value += digit * unit;
    }
    u64::try_from(value)
        .ok()
        .filter(|milli| *milli <= MAX_WEIGHT)
        .ok_or(WeightProblem::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_split_with_the_line_of_their_first_content() {
        let text = "# header\n---\n\napiVersion: v1\n---\n# only a comment\n---\nkind: X\n";
        let documents = split_documents(text);
        assert_eq!(
            documents
                .iter()
                .map(|d| (d.first_line, d.content_line))
                .collect::<Vec<_>>(),
            [(3, 4), (8, 8)]
        );
        assert_eq!(&text[documents[1].start..documents[1].end], "kind: X\n");
    }

    #[test]
    fn quantities_become_thousandths() {
        let q = |s: &str| quantity_milli(&Value::String(s.into()));
        assert_eq!(q("1"), Ok(1000));
        assert_eq!(q("100m"), Ok(100));
        assert_eq!(q("1500m"), Ok(1500));
        assert_eq!(q("1.5"), Ok(1500));
        assert_eq!(q("0.25"), Ok(250));
        assert_eq!(q("2k"), Ok(2_000_000));
        assert_eq!(quantity_milli(&serde_json::json!(3)), Ok(3000));
        for bad in ["-1", "1.0005", "abc", "", "1x", "0.5m", "."] {
            assert_eq!(q(bad), Err(WeightProblem::Invalid), "{bad}");
        }
        for large in ["5M", "99999999999M", "123456789012345678901234567890"] {
            assert_eq!(q(large), Err(WeightProblem::TooLarge), "{large}");
        }
    }

    #[test]
    fn weights_are_whole_numbers_up_to_32_bits() {
        let w = |v: serde_json::Value| whole_number(&v);
        assert_eq!(w(serde_json::json!(90)), Ok(90));
        assert_eq!(w(serde_json::json!(2.0)), Ok(2));
        assert_eq!(w(serde_json::json!(4_294_967_295u64)), Ok(MAX_WEIGHT));
        assert_eq!(
            w(serde_json::json!(4_294_967_296u64)),
            Err(WeightProblem::TooLarge)
        );
        assert_eq!(w(serde_json::json!(1e23)), Err(WeightProblem::TooLarge));
        for bad in [
            serde_json::json!("50"),
            serde_json::json!(-3),
            serde_json::json!(1.5),
        ] {
            assert_eq!(w(bad.clone()), Err(WeightProblem::Invalid), "{bad}");
        }
    }

    #[test]
    fn serde_paths_read_like_yaml_paths() {
        assert_eq!(field_path("spec.rules.0.matchez"), "spec.rules[0].matchez");
        assert_eq!(field_path("."), "");
    }
}
