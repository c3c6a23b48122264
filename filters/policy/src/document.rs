//! Reading YAML and JSON documents into [`serde_json::Value`], the one shape the loader and the
//! plugin configuration are read from, strictly:
//! - a key given twice in one mapping is reported (YAML and JSON libraries silently keep one of
//!   the two values; Kubernetes refuses such an object, and so does weft);
//! - nesting is bounded by [`MAX_DEPTH`], so that reading stays linear in the input (a YAML
//!   scanner tracks every open flow level for every token, which makes deep nesting quadratic;
//!   reading stops at the first level too deep);
//! - YAML aliases cannot expand a document beyond [`MAX_NODES`] values.
//!
//! For YAML it can also tell the line of every field ([`yaml_field_lines`]), so that a diagnostic
//! points at the field it is about. Field paths are written as the loader writes them:
//! `spec.matches[0].pathRegex`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// How deeply mappings and sequences may nest in one document. SMI objects nest about six
/// levels deep, a Deployment's pod template about twelve.
pub const MAX_DEPTH: usize = 64;

/// How many values one YAML document may hold once its aliases are expanded, a bound on what a
/// small document of nested aliases ("billion laughs") could make the reader build.
pub const MAX_NODES: usize = 1_000_000;

/// Why a document could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The text is not YAML.
    #[error("not valid YAML: {message}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// The parser's explanation.
        message: String,
    },
    /// Mappings and sequences nest deeper than [`MAX_DEPTH`].
    #[error(
        "nested more than {MAX_DEPTH} levels deep; weft reads documents up to {MAX_DEPTH} levels of mappings and sequences"
    )]
    TooDeep {
        /// 1-based line of the first value too deep.
        line: usize,
    },
    /// Aliases expand the document beyond [`MAX_NODES`] values.
    #[error(
        "the document holds more than {MAX_NODES} values once its aliases are expanded; weft reads no more"
    )]
    TooLarge {
        /// 1-based line where the limit was passed.
        line: usize,
    },
    /// A mapping or sequence used as a key.
    #[error(
        "a mapping key must be a scalar (a string, number or boolean), not a mapping or sequence"
    )]
    ComplexKey {
        /// 1-based line of the key.
        line: usize,
    },
    /// An alias to an anchor not defined before it.
    #[error("the alias refers to an anchor that is not defined before it")]
    UnknownAlias {
        /// 1-based line of the alias.
        line: usize,
    },
}

impl DocumentError {
    /// The 1-based line the error is about.
    pub fn line(&self) -> usize {
        match self {
            DocumentError::Syntax { line, .. }
            | DocumentError::TooDeep { line }
            | DocumentError::TooLarge { line }
            | DocumentError::ComplexKey { line }
            | DocumentError::UnknownAlias { line } => *line,
        }
    }
}

/// A key given a second time in one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// Field path of the key (`spec.matches[0].pathRegex`).
    pub path: String,
    /// 1-based line of its second occurrence.
    pub line: usize,
}

/// One YAML document read into a value.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlDocument {
    /// The document; where a key was repeated, the last value given.
    pub value: Value,
    /// Every key given more than once, in the order found.
    pub duplicates: Vec<DuplicateKey>,
}

/// Reads every YAML document of `text` (whose first line is line `first_line` of its file).
///
/// # Errors
/// The first [`DocumentError`]; nothing is returned for a text that cannot be read whole.
pub fn read_yaml(text: &str, first_line: usize) -> Result<Vec<YamlDocument>, DocumentError> {
    let mut builder = Builder::new(first_line, false);
    builder.run(text)?;
    Ok(builder.documents)
}

/// The line of every field of the YAML `text` (whose first line is line `first_line` of its
/// file), by field path; an empty path is the line of the document's first value. For the
/// first document only; a text that cannot be read gives the lines of the fields read before
/// the problem.
pub fn yaml_field_lines(text: &str, first_line: usize) -> HashMap<String, usize> {
    let mut builder = Builder::new(first_line, true);
    let _ = builder.run(text);
    builder.lines.unwrap_or_default()
}

/// One step of a field path.
#[derive(Debug, Clone)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// Appends one step to a field path written as the loader writes them: `a.b[0].c`.
fn push_segment(out: &mut String, segment: &Segment<'_>) {
    match segment {
        Segment::Key(key) => {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        Segment::Index(index) => {
            out.push('[');
            out.push_str(&index.to_string());
            out.push(']');
        }
    }
}

/// A mapping or sequence being read.
enum Frame {
    Sequence {
        items: Vec<Value>,
        anchor: usize,
        nodes: usize,
    },
    Mapping {
        entries: Map<String, Value>,
        /// The key whose value comes next; `None` while the next node is a key.
        key: Option<String>,
        anchor: usize,
        nodes: usize,
    },
}

/// Builds values from parser events, with an explicit stack (no recursion), so that depth costs
/// nothing but the bound.
struct Builder {
    first_line: usize,
    /// The open mappings and sequences, outermost first; their pending keys and item counts
    /// are the path of the node being read.
    stack: Vec<Frame>,
    /// Anchor id to the value it names and the number of values in it.
    anchors: HashMap<usize, (Value, usize)>,
    /// Values in the current document, aliases expanded.
    nodes: usize,
    duplicates: Vec<DuplicateKey>,
    documents: Vec<YamlDocument>,
    /// Field path to line, when asked for ([`yaml_field_lines`]); first document only.
    lines: Option<HashMap<String, usize>>,
}

impl Builder {
    fn new(first_line: usize, record_lines: bool) -> Self {
        Self {
            first_line,
            stack: Vec::new(),
            anchors: HashMap::new(),
            nodes: 0,
            duplicates: Vec::new(),
            documents: Vec::new(),
            lines: record_lines.then(HashMap::new),
        }
    }

    fn line(&self, span: &Span) -> usize {
        self.first_line + span.start.line().saturating_sub(1)
    }

    fn run(&mut self, text: &str) -> Result<(), DocumentError> {
        let mut parser = Parser::new_from_str(text);
        while let Some(next) = parser.next_event() {
            let (event, span) = next.map_err(|err| self.syntax(&err))?;
            let line = self.line(&span);
            match event {
                Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
                Event::DocumentStart(_) => {
                    self.nodes = 0;
                    self.anchors.clear();
                }
                Event::DocumentEnd => {}
                Event::Scalar(text, style, anchor, tag) => {
                    if self.expects_key() {
                        self.key(text.into_owned(), line);
                    } else {
                        self.record_line(line);
                        self.count(1, line)?;
                        let value = scalar(text, style, tag.as_deref());
                        self.complete(value, anchor, 1);
                    }
                }
                Event::Alias(id) => {
                    let (value, nodes) = self
                        .anchors
                        .get(&id)
                        .cloned()
                        .ok_or(DocumentError::UnknownAlias { line })?;
                    if self.expects_key() {
                        match value {
                            Value::String(key) => self.key(key, line),
                            Value::Array(_) | Value::Object(_) => {
                                return Err(DocumentError::ComplexKey { line });
                            }
                            other => self.key(other.to_string(), line),
                        }
                    } else {
                        self.record_line(line);
                        self.count(nodes, line)?;
                        self.complete(value, 0, nodes);
                    }
                }
                Event::SequenceStart(anchor, _) => {
                    self.open(line)?;
                    self.stack.push(Frame::Sequence {
                        items: Vec::new(),
                        anchor,
                        nodes: 1,
                    });
                }
                Event::MappingStart(anchor, _) => {
                    self.open(line)?;
                    self.stack.push(Frame::Mapping {
                        entries: Map::new(),
                        key: None,
                        anchor,
                        nodes: 1,
                    });
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let (value, anchor, nodes) = match self.stack.pop() {
                        Some(Frame::Sequence {
                            items,
                            anchor,
                            nodes,
                        }) => (Value::Array(items), anchor, nodes),
                        Some(Frame::Mapping {
                            entries,
                            anchor,
                            nodes,
                            ..
                        }) => (Value::Object(entries), anchor, nodes),
                        None => continue,
                    };
                    // Its values were counted as they were read.
                    self.complete(value, anchor, nodes);
                }
            }
        }
        Ok(())
    }

    fn syntax(&self, err: &ScanError) -> DocumentError {
        let line = self.first_line + err.marker().line().saturating_sub(1);
        // The scanner has a flow-nesting limit of its own, met while it looks ahead.
        if err.info() == "recursion limit exceeded" {
            return DocumentError::TooDeep { line };
        }
        DocumentError::Syntax {
            line,
            message: err.info().to_owned(),
        }
    }

    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Mapping { key: None, .. }))
    }

    /// A mapping or sequence starts at `line`.
    fn open(&mut self, line: usize) -> Result<(), DocumentError> {
        if self.expects_key() {
            return Err(DocumentError::ComplexKey { line });
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(DocumentError::TooDeep { line });
        }
        self.record_line(line);
        self.count(1, line)
    }

    /// The next key of the innermost mapping.
    fn key(&mut self, key: String, line: usize) {
        let Some(Frame::Mapping {
            entries,
            key: pending,
            ..
        }) = self.stack.last_mut()
        else {
            return;
        };
        let repeated = entries.contains_key(&key);
        *pending = Some(key);
        if repeated {
            let path = self.current_path();
            self.duplicates.push(DuplicateKey { path, line });
        }
        self.record_line(line);
    }

    /// The field path of the node being read, from the open frames: each mapping's pending
    /// key, each sequence's next index. Built only for a repeated key or a line asked for.
    fn current_path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Mapping { key: Some(key), .. } => {
                    push_segment(&mut path, &Segment::Key(key));
                }
                Frame::Mapping { key: None, .. } => {}
                Frame::Sequence { items, .. } => {
                    push_segment(&mut path, &Segment::Index(items.len()));
                }
            }
        }
        path
    }

    /// Notes that the field at the current path (a key's value or a sequence item) starts at
    /// `line`, where lines are asked for.
    fn record_line(&mut self, line: usize) {
        if self.lines.is_some() && self.documents.is_empty() {
            let path = self.current_path();
            if let Some(lines) = self.lines.as_mut() {
                lines.entry(path).or_insert(line);
            }
        }
    }

    fn count(&mut self, nodes: usize, line: usize) -> Result<(), DocumentError> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > MAX_NODES {
            return Err(DocumentError::TooLarge { line });
        }
        Ok(())
    }

    /// A value of `nodes` values is complete: it goes into its parent, or ends the document.
    fn complete(&mut self, value: Value, anchor: usize, nodes: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (value.clone(), nodes));
        }
        match self.stack.last_mut() {
            None => {
                self.documents.push(YamlDocument {
                    value,
                    duplicates: std::mem::take(&mut self.duplicates),
                });
            }
            Some(Frame::Sequence {
                items,
                nodes: total,
                ..
            }) => {
                items.push(value);
                *total += nodes;
            }
            Some(Frame::Mapping {
                entries,
                key,
                nodes: total,
                ..
            }) => {
                if let Some(key) = key.take() {
                    entries.insert(key, value);
                }
                *total += nodes;
            }
        }
    }
}

/// A scalar as YAML 1.2's core schema types it: plain scalars may be null, booleans or numbers,
/// quoted and block scalars are strings, and a `!!str`, `!!int`, `!!float`, `!!bool` or `!!null`
/// tag says which.
fn scalar(text: Cow<'_, str>, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    let core = tag.filter(|tag| tag.is_yaml_core_schema());
    match core.map(|tag| tag.suffix.as_str()) {
        Some("str") => return Value::String(text.into_owned()),
        Some("int" | "float" | "bool" | "null") => {
            return plain(&text).unwrap_or_else(|| Value::String(text.into_owned()));
        }
        _ => {}
    }
    // A non-specific `!` tag or any local tag leaves a plain scalar untyped: a string.
    if style != ScalarStyle::Plain || tag.is_some() {
        return Value::String(text.into_owned());
    }
    plain(&text).unwrap_or_else(|| Value::String(text.into_owned()))
}

/// The typed value of a plain scalar, or `None` for a string.
fn plain(text: &str) -> Option<Value> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok().map(Value::from);
    }
    if let Some(octal) = text.strip_prefix("0o") {
        return u64::from_str_radix(octal, 8).ok().map(Value::from);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if integer {
        if let Ok(n) = text.parse::<i64>() {
            return Some(Value::from(n));
        }
        if !text.starts_with('-')
            && let Ok(n) = digits.parse::<u64>()
        {
            return Some(Value::from(n));
        }
    }
    // A float, or an integer too large for 64 bits, which other YAML readers make a float too.
    if integer || is_float(digits) {
        return text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number);
    }
    None
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` (YAML 1.2 core schema, sign removed).
fn is_float(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match fraction {
        None => !whole.is_empty() && digits(whole),
        Some(fraction) => {
            digits(whole) && digits(fraction) && !(whole.is_empty() && fraction.is_empty())
        }
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok && (fraction.is_some() || exponent.is_some())
}

/// Why a JSON document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON (serde_json's message, with line and column).
    #[error("{0}")]
    Syntax(String),
    /// A key given twice in one object.
    #[error(
        "`{path}` is given twice; give each key once (a second value would silently replace the first)"
    )]
    DuplicateKey {
        /// Field path of the key.
        path: String,
    },
}

/// Reads one JSON document, refusing a key given twice in any object.
///
/// # Errors
/// [`JsonError::DuplicateKey`] naming the first repeated key's path, or [`JsonError::Syntax`].
pub fn read_json(bytes: &[u8]) -> Result<Value, JsonError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let seed = StrictValue {
        path: String::new(),
        duplicate: &duplicate,
    };
    let result = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match (result, duplicate.into_inner()) {
        (_, Some(path)) => Err(JsonError::DuplicateKey { path }),
        (Ok(value), None) => Ok(value),
        (Err(err), None) => Err(JsonError::Syntax(err.to_string())),
    }
}

/// A [`Value`] deserialised with a check for repeated keys; the path of the first one found is
/// written into `duplicate` (serde's own errors cannot carry it back).
struct StrictValue<'a> {
    path: String,
    duplicate: &'a RefCell<Option<String>>,
}

impl StrictValue<'_> {
    fn child(&self, segment: Segment<'_>) -> Self {
        let mut path = self.path.clone();
        push_segment(&mut path, &segment);
        StrictValue {
            path,
            duplicate: self.duplicate,
        }
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child(Segment::Index(items.len())))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = self.child(Segment::Key(&key));
            if entries.contains_key(&key) {
                let path = child.path.clone();
                *self.duplicate.borrow_mut() = Some(path.clone());
                return Err(de::Error::custom(format!("duplicate key `{path}`")));
            }
            let value = map.next_value_seed(child)?;
            entries.insert(key, value);
        }
        Ok(Value::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn one(text: &str) -> YamlDocument {
        let mut documents = read_yaml(text, 1).unwrap();
        assert_eq!(documents.len(), 1, "{documents:?}");
        documents.remove(0)
    }

    #[test]
    fn plain_scalars_are_typed_as_yaml_1_2_core_and_quoted_ones_are_strings() {
        let document = one(
            "a: 1\nb: -2\nc: 1.5\nd: true\ne: ~\nf: '1'\ng: yes\nh: 0x1f\ni: 1e3\nj: !!str 5\nk: .inf\nl: 99999999999999999999999\nm: \"true\"\nn: |\n  text\n",
        );
        assert_eq!(
            document.value,
            json!({"a": 1, "b": -2, "c": 1.5, "d": true, "e": null, "f": "1", "g": "yes",
                   "h": 31, "i": 1000.0, "j": "5", "k": ".inf", "l": 1e23, "m": "true", "n": "text\n"})
        );
    }

    #[test]
    fn a_repeated_key_is_reported_with_its_path_and_line_and_the_last_value_kept() {
        let document = one(
            "spec:\n  matches:\n  - name: a\n    pathRegex: /x\n    pathRegex: /y\nspec2: {k: 1, k: 2}\n",
        );
        assert_eq!(
            document.duplicates,
            [
                DuplicateKey {
                    path: "spec.matches[0].pathRegex".into(),
                    line: 5
                },
                DuplicateKey {
                    path: "spec2.k".into(),
                    line: 6
                }
            ]
        );
        assert_eq!(document.value["spec"]["matches"][0]["pathRegex"], "/y");
    }

    #[test]
    fn anchors_and_aliases_expand() {
        let document = one("base: &b {x: 1}\nuse: *b\nlist: [&n 2, *n]\n");
        assert_eq!(
            document.value,
            json!({"base": {"x": 1}, "use": {"x": 1}, "list": [2, 2]})
        );
    }

    #[test]
    fn nesting_past_the_bound_is_refused_at_once() {
        let deep = format!("a: {}{}\n", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(matches!(
            read_yaml(&deep, 1),
            Err(DocumentError::TooDeep { line: 1 })
        ));
        let fine = format!(
            "{}{}\n",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(read_yaml(&fine, 1).is_ok());
        // 100,000 levels would take minutes to scan whole; the reader stops at the bound, where
        // the flow scanner or the builder first meets it.
        let hostile = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            read_yaml(&hostile, 1),
            Err(DocumentError::TooDeep { line: 1 })
        ));
        let block = (0..1_000)
            .map(|depth| format!("{}k:", " ".repeat(depth)))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(matches!(
            read_yaml(&block, 1),
            Err(DocumentError::TooDeep { line: 65 })
        ));
    }

    #[test]
    fn nested_aliases_cannot_expand_without_bound() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        assert!(matches!(
            read_yaml(&text, 1),
            Err(DocumentError::TooLarge { .. })
        ));
    }

    #[test]
    fn complex_keys_unknown_aliases_and_bad_syntax_are_errors_with_lines() {
        assert!(matches!(
            read_yaml("a: 1\n? [x]\n: 2\n", 1),
            Err(DocumentError::ComplexKey { line: 2 })
        ));
        assert!(matches!(
            read_yaml("a: *nope\n", 1),
            Err(DocumentError::Syntax { line: 1, .. })
        ));
        match read_yaml("a: [1\nb: 2\n", 10) {
            Err(DocumentError::Syntax { line, .. }) => assert!(line >= 10, "{line}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_field_has_its_line() {
        let lines = yaml_field_lines(
            "apiVersion: x\nspec:\n  rules:\n  - kind: A\n    name: b\n  - {kind: C}\n",
            3,
        );
        assert_eq!(lines["apiVersion"], 3);
        assert_eq!(lines["spec.rules"], 5);
        assert_eq!(lines["spec.rules[0]"], 6);
        assert_eq!(lines["spec.rules[0].name"], 7);
        assert_eq!(lines["spec.rules[1].kind"], 8);
    }

    #[test]
    fn json_with_a_repeated_key_is_refused_naming_it() {
        assert_eq!(
            read_json(br#"{"a": {"b": 1, "c": [{"d": 1, "d": 2}]}}"#),
            Err(JsonError::DuplicateKey {
                path: "a.c[0].d".into()
            })
        );
        assert_eq!(
            read_json(br#"{"access": {}, "x": 1, "access": {"mode": "permissive"}}"#),
            Err(JsonError::DuplicateKey {
                path: "access".into()
            })
        );
        assert_eq!(
            read_json(br#"{"a": [1, {"b": null}]}"#),
            Ok(json!({"a": [1, {"b": null}]}))
        );
        assert!(matches!(read_json(b"{} {}"), Err(JsonError::Syntax(_))));
    }
}
