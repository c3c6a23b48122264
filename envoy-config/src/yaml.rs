//! Writes Envoy's JSON form as readable YAML, with comments: how `envoy-configs/` is written.
//! Block style throughout; short lists of scalars on one line; a multi-line string (a plugin
//! configuration) as a literal block; `name` and `@type` first in every mapping, the other keys
//! in order.

use std::fmt::Write as _;

use serde_json::Value;

/// A comment written above the field at `path` (keys and list indexes from the root, e.g.
/// `["static_resources", "listeners", "0", "name"]`).
#[derive(Debug, Clone)]
pub struct Comment {
    /// Where.
    pub path: Vec<String>,
    /// The comment's lines, without `#`.
    pub text: String,
}

impl Comment {
    /// A comment above the field at the `/`-separated `path`.
    pub fn at(path: &str, text: &str) -> Self {
        Self {
            path: path.split('/').map(str::to_owned).collect(),
            text: text.to_owned(),
        }
    }
}

/// Lines at most this wide keep a list of scalars on one line.
const FLOW_WIDTH: usize = 120;

/// `value` as a YAML document, with `header` (lines, without `#`) on top and `comments` above
/// their fields.
pub fn to_yaml(value: &Value, header: &str, comments: &[Comment]) -> String {
    let mut out = String::new();
    for line in header.lines() {
        push_comment_line(&mut out, 0, line);
    }
    let mut path = Vec::new();
    match value {
        Value::Object(_) => write_mapping(&mut out, value, 0, &mut path, comments),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn push_comment_line(out: &mut String, indent: usize, line: &str) {
    out.push_str(&" ".repeat(indent));
    if line.is_empty() {
        out.push_str("#\n");
    } else {
        let _ = writeln!(out, "# {line}");
    }
}

fn comment_for<'c>(comments: &'c [Comment], path: &[String]) -> Option<&'c Comment> {
    comments.iter().find(|comment| comment.path == path)
}

fn ordered_keys(map: &serde_json::Map<String, Value>) -> Vec<&String> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|key| match key.as_str() {
        "name" => (0, key.as_str()),
        "@type" => (1, key.as_str()),
        other => (2, other),
    });
    keys
}

fn write_mapping(
    out: &mut String,
    value: &Value,
    indent: usize,
    path: &mut Vec<String>,
    comments: &[Comment],
) {
    let Value::Object(map) = value else { return };
    let mut first = true;
    for key in ordered_keys(map) {
        path.push(key.clone());
        // The first key of a list item shares the `- ` line.
        let pad = if first && out.ends_with("- ") {
            0
        } else {
            indent
        };
        if let Some(comment) = comment_for(comments, path) {
            if pad == 0 && indent > 0 {
                out.push('\n');
            }
            for line in comment.text.lines() {
                push_comment_line(out, indent, line);
            }
            out.push_str(&" ".repeat(indent));
        } else {
            out.push_str(&" ".repeat(pad));
        }
        out.push_str(&key_text(key));
        out.push(':');
        write_value(out, &map[key], indent, path, comments);
        path.pop();
        first = false;
    }
}

fn write_value(
    out: &mut String,
    value: &Value,
    indent: usize,
    path: &mut Vec<String>,
    comments: &[Comment],
) {
    match value {
        Value::Object(map) if map.is_empty() => out.push_str(" {}\n"),
        Value::Object(_) => {
            out.push('\n');
            write_mapping(out, value, indent + 2, path, comments);
        }
        Value::Array(items) if items.is_empty() => out.push_str(" []\n"),
        Value::Array(items) => {
            let column = out.len() - out.rfind('\n').map_or(0, |i| i + 1);
            if let Some(flow) = flow_list(items)
                && column + 1 + flow.len() <= FLOW_WIDTH
            {
                out.push(' ');
                out.push_str(&flow);
                out.push('\n');
                return;
            }
            out.push('\n');
            for (index, item) in items.iter().enumerate() {
                path.push(index.to_string());
                if let Some(comment) = comment_for(comments, path) {
                    for line in comment.text.lines() {
                        push_comment_line(out, indent, line);
                    }
                }
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                match item {
                    Value::Object(map) if !map.is_empty() => {
                        write_mapping(out, item, indent + 2, path, comments);
                    }
                    Value::String(text) if text.contains('\n') => {
                        write_literal(out, text, indent + 2);
                    }
                    other => {
                        out.push_str(&scalar(other));
                        out.push('\n');
                    }
                }
                path.pop();
            }
        }
        Value::String(text) if text.contains('\n') => {
            out.push(' ');
            write_literal(out, text, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

/// A literal block (`|` keeps the final newline, `|-` strips it). Trailing spaces on a line
/// or a leading space on the first would not survive; such text is double-quoted instead.
fn write_literal(out: &mut String, text: &str, indent: usize) {
    let awkward = text.starts_with(' ') || text.lines().any(|line| line.ends_with([' ', '\t']));
    if awkward {
        out.push_str(&scalar(&Value::String(text.to_owned())));
        out.push('\n');
        return;
    }
    out.push_str(if text.ends_with('\n') { "|\n" } else { "|-\n" });
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str(&" ".repeat(indent));
            out.push_str(line);
            out.push('\n');
        }
    }
}

fn flow_list(items: &[Value]) -> Option<String> {
    let mut parts = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Object(_) | Value::Array(_) => return None,
            Value::String(text) if text.contains('\n') => return None,
            other => parts.push(scalar(other)),
        }
    }
    Some(format!("[{}]", parts.join(", ")))
}

fn key_text(key: &str) -> String {
    if plain_safe(key) {
        key.to_owned()
    } else {
        Value::String(key.to_owned()).to_string()
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) if plain_safe(text) => text.clone(),
        // Envoy's JSON writes every double with a fraction; a whole number reads better bare.
        Value::Number(number)
            if number
                .as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.0e15 && !number.is_i64()) =>
        {
            #[allow(clippy::cast_possible_truncation)]
            let whole = number.as_f64().unwrap_or_default() as i64;
            whole.to_string()
        }
        // A JSON string is a valid YAML double-quoted scalar.
        other => other.to_string(),
    }
}

/// Whether `text` reads back as the same string when written plain.
fn plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    let reserved = matches!(
        text.to_ascii_lowercase().as_str(),
        "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
    );
    let numeric = text.parse::<f64>().is_ok() || text.starts_with(['.', '+', '-']);
    // Some values start with a digit and are never numbers: IPv4 addresses and durations.
    let digit_safe = text.parse::<std::net::Ipv4Addr>().is_ok()
        || text
            .strip_suffix('s')
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'));
    if first.is_ascii_digit() {
        return digit_safe;
    }
    (first.is_ascii_alphabetic() || first == '_' || first == '/')
        && !reserved
        && !numeric
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn round_trip(value: &Value) {
        let yaml = to_yaml(value, "a header", &[]);
        let mut documents = weft_policy::document::read_yaml(&yaml, 1).unwrap();
        assert_eq!(&documents.remove(0).value, value, "{yaml}");
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        round_trip(&json!({
            "name": "inbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
            "empty": {}, "none": [], "flag": true, "ratio": 0.5,
            "tricky": ["yes", "on", "1", "-x", "a b", ": colon", "#hash", "", "@type", "null",
                       "1e3", "0x1F", "127.0.0.1", "1s", "1.5s", "10"],
            "text": "{\n  \"version\": 1\n}\n",
            "stripped": "line one\nline two",
            "nested": [{"a": [{"b": 1}, {"c": [1, 2]}]}, [1, [2]]],
            "@type": "type.googleapis.com/x",
        }));
    }

    #[test]
    fn whole_doubles_are_written_without_a_fraction() {
        let yaml = to_yaml(&json!({"buckets": [1.0, 2.5, 60000.0]}), "", &[]);
        assert_eq!(yaml, "buckets: [1, 2.5, 60000]\n");
    }

    #[test]
    fn name_and_type_come_first_and_comments_sit_above_their_field() {
        let value = json!({"listeners": [{"port": 1, "name": "in", "@type": "t"}]});
        let yaml = to_yaml(
            &value,
            "top",
            &[Comment::at("listeners/0/port", "the port")],
        );
        assert_eq!(
            yaml,
            "# top\nlisteners:\n- name: in\n  \"@type\": t\n  # the port\n  port: 1\n"
        );
    }
}
