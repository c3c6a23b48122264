//! Request paths in normal form. An access decision matches the path as the filter sees it; an
//! application that normalises paths (resolves `..`, decodes `%2e`, reads `\` as `/`, merges
//! `//`, drops `;parameters`) may serve another path than the one the policy allowed:
//! `/orders/../admin` passes a rule for `/orders.*` and reaches `/admin`. So a path is in normal
//! form only when no such step would change which resource it names, and the access feature
//! refuses any other ([`check`]). The first line of defence is Envoy's own normalisation
//! (weft-envoy-config's `normalise_paths`), which every inbound listener weft ships sets;
//! the check catches what a listener without it (or Envoy itself: it decodes `%2e%2e;` into
//! `..;` without resolving it) lets through.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What makes a path not normal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// A `.` or `..` segment, written plainly, percent-encoded (`%2e`) or with `;parameters`.
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A backslash, which some applications read as `/`.
    Backslash,
    /// A percent-encoded slash or backslash (`%2F`, `%5C`).
    EncodedSlash,
    /// A percent-encoded character that never needs encoding (a letter, digit, `-._~`).
    EncodedUnreserved,
    /// A path that does not start with `/` (nor is `*`).
    NotAbsolute,
}

/// Why a path is not in normal form: the problem and the part of the path that has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotNormal<'a> {
    /// What is wrong.
    pub problem: Problem,
    /// The segment or escape at fault.
    pub part: Cow<'a, str>,
}

impl fmt::Display for NotNormal<'_> {
    /// What is wrong, why it matters, and which Envoy setting takes care of it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = &self.part;
        match self.problem {
            Problem::DotSegment if part.contains(';') => write!(
                f,
                "it has the dot segment `{part}`, which applications such as Tomcat resolve as `..`; Envoy does not resolve a dot segment with parameters, so send the path without it"
            ),
            Problem::DotSegment => write!(
                f,
                "it has the dot segment `{part}`, which applications resolve to another path; set normalize_path: true in Envoy's HTTP connection manager to resolve dot segments before filters run"
            ),
            Problem::EmptySegment => write!(
                f,
                "it has an empty segment (`//`), which applications may merge into one `/`; set merge_slashes: true in Envoy's HTTP connection manager to merge them before filters run"
            ),
            Problem::Backslash => write!(
                f,
                "it has a backslash, which some applications read as `/`; set normalize_path: true in Envoy's HTTP connection manager to turn it into `/` before filters run"
            ),
            Problem::EncodedSlash => write!(
                f,
                "it has `{part}`, an encoded slash or backslash, which applications may decode into a separator; set path_with_escaped_slashes_action: REJECT_REQUEST (or UNESCAPE_AND_REDIRECT) in Envoy's HTTP connection manager"
            ),
            Problem::EncodedUnreserved => write!(
                f,
                "it has `{part}`, a percent-encoded character that never needs encoding, which applications decode before they route; set normalize_path: true in Envoy's HTTP connection manager to decode it before filters run"
            ),
            Problem::NotAbsolute => {
                write!(f, "it does not start with `/`")
            }
        }
    }
}

/// The path part of a request target: without its query string or fragment.
pub fn path_only(path: &str) -> &str {
    match path.bytes().position(|b| b == b'?' || b == b'#') {
        Some(end) => path.get(..end).unwrap_or(path),
        None => path,
    }
}

/// Whether `path` (a request's `:path`; the query string and fragment are not looked at) is in
/// normal form. An empty path (CONNECT) and `*` (OPTIONS) are.
///
/// # Errors
/// [`NotNormal`] with the first problem found: dot segments and empty segments first (they
/// change which resource a path names), then backslashes and escapes.
pub fn check(path: &str) -> Result<(), NotNormal<'_>> {
    if plainly_normal(path) {
        return Ok(());
    }
    let path = path_only(path);
    if path.is_empty() || path == "*" {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(NotNormal {
            problem: Problem::NotAbsolute,
            part: Cow::Borrowed(path),
        });
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment.is_empty() && !last {
            return Err(NotNormal {
                problem: Problem::EmptySegment,
                part: Cow::Borrowed("//"),
            });
        }
        // Path parameters (`..;jsessionid=1`) do not stop a segment from being a dot segment
        // for servlet containers.
        let name = segment.split(';').next().unwrap_or(segment);
        if is_dot_segment(name) {
            return Err(NotNormal {
                problem: Problem::DotSegment,
                part: Cow::Borrowed(segment),
            });
        }
    }
    if let Some(at) = path.find('\\') {
        return Err(NotNormal {
            problem: Problem::Backslash,
            part: Cow::Borrowed(&path[at..=at]),
        });
    }
    let bytes = path.as_bytes();
    for (at, _) in path.match_indices('%') {
        let (Some(high), Some(low)) = (
            bytes.get(at + 1).and_then(|b| hex(*b)),
            bytes.get(at + 2).and_then(|b| hex(*b)),
        ) else {
            continue;
        };
        let decoded = high * 16 + low;
        let problem = match decoded {
            b'/' | b'\\' => Problem::EncodedSlash,
            b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => Problem::EncodedUnreserved,
            _ => continue,
        };
        return Err(NotNormal {
            problem,
            part: Cow::Borrowed(&path[at..at + 3]),
        });
    }
    Ok(())
}

/// Whether a request target certainly has none of the problems, in one pass over its bytes up
/// to its query (most paths): an absolute path where every problem would need a `.`, a `%`, a
/// backslash or two slashes in a row.
fn plainly_normal(target: &str) -> bool {
    let mut previous = 0u8;
    for byte in target.bytes() {
        match byte {
            b'?' | b'#' => break,
            b'.' | b'%' | b'\\' => return false,
            b'/' if previous == b'/' => return false,
            _ => previous = byte,
        }
    }
    previous != 0 && target.starts_with('/')
}

/// `.` or `..`, each dot written plainly or as `%2e`/`%2E`.
fn is_dot_segment(name: &str) -> bool {
    let mut dots = 0;
    let mut rest = name;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            rest = after;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(path: &str) -> Option<(Problem, &str)> {
        check(path).err().map(|err| match err.part {
            Cow::Borrowed(part) => (err.problem, part),
            Cow::Owned(part) => panic!("check copied {part:?} instead of pointing into the path"),
        })
    }

    #[test]
    fn normal_paths_pass() {
        for path in [
            "",
            "*",
            "/",
            "/orders",
            "/orders/",
            "/orders/42?x=/../admin",
            "/a/..b/.c/c./...",
            "/a%20b/%C3%A9/%3A/%25",
            "/a;x/b",
            "/a%2",
            "/%",
            "/a%zz",
        ] {
            assert_eq!(problem(path), None, "{path}");
        }
    }

    #[test]
    fn every_trick_that_resolves_elsewhere_is_caught() {
        for (path, expected) in [
            ("/orders/../admin", (Problem::DotSegment, "..")),
            ("/metrics/../admin", (Problem::DotSegment, "..")),
            ("/orders/%2e%2e/admin", (Problem::DotSegment, "%2e%2e")),
            ("/orders/.%2E/admin", (Problem::DotSegment, ".%2E")),
            ("/orders/./admin", (Problem::DotSegment, ".")),
            ("/orders/..", (Problem::DotSegment, "..")),
            ("/orders/..;/admin", (Problem::DotSegment, "..;")),
            ("/orders/%2e%2e;x/admin", (Problem::DotSegment, "%2e%2e;x")),
            ("/orders//admin", (Problem::EmptySegment, "//")),
            ("//admin", (Problem::EmptySegment, "//")),
            ("/orders\\..\\admin", (Problem::Backslash, "\\")),
            ("/orders%2F..%2Fadmin", (Problem::EncodedSlash, "%2F")),
            ("/orders%2f..%2fadmin", (Problem::EncodedSlash, "%2f")),
            ("/orders%5C..%5Cadmin", (Problem::EncodedSlash, "%5C")),
            ("/%61dmin", (Problem::EncodedUnreserved, "%61")),
            ("/a%2Eb", (Problem::EncodedUnreserved, "%2E")),
            ("/a%7e", (Problem::EncodedUnreserved, "%7e")),
            ("orders", (Problem::NotAbsolute, "orders")),
        ] {
            assert_eq!(problem(path), Some(expected), "{path}");
        }
    }

    #[test]
    fn the_reason_names_the_envoy_setting_that_avoids_it() {
        let reason = check("/orders/../admin").unwrap_err().to_string();
        assert!(reason.contains("normalize_path: true"), "{reason}");
        let reason = check("/a//b").unwrap_err().to_string();
        assert!(reason.contains("merge_slashes: true"), "{reason}");
        let reason = check("/a%2Fb").unwrap_err().to_string();
        assert!(
            reason.contains("path_with_escaped_slashes_action"),
            "{reason}"
        );
        let reason = check("/a/..;/b").unwrap_err().to_string();
        assert!(reason.contains("Envoy does not resolve"), "{reason}");
    }
}
