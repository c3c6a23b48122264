//! Regex matchers as weft runs them: each path or header regex of a policy becomes a
//! deterministic finite automaton (regex-automata's dense DFA) once, where the policy is
//! compiled, and a decision then walks it byte by byte, without backtracking or allocation. A
//! DFA serialises to bytes ([`Matcher::to_bytes`]) and is read back by [`Matcher::from_bytes`],
//! which checks it, so the compiled bundle carries the automata and the filter inside Envoy
//! needs only the search, not the regex parser and compiler (docs/decisions.md).
//!
//! The dialect is the `regex` crate's (RE2-like), with Unicode classes for `\w`, `\d` and `\s`
//! and Unicode case folding. Two limits come from determinisation: a regex whose automaton
//! would exceed [`DFA_SIZE_LIMIT`] is refused where it is compiled (`weft check` names it), and
//! a Unicode word boundary (`\b`) matches only ASCII text: on other bytes the search gives up
//! and the regex does not match, which can only deny (or send a request to a split's root
//! service).

use regex_automata::dfa::{Automaton, dense};
use regex_automata::{Anchored, Input};
#[cfg(feature = "authoring")]
use regex_automata::{dfa::StartKind, nfa::thompson};

/// Largest automaton weft builds for one regex, in bytes: a hostile or careless pattern (a
/// large counted repetition of a Unicode class) is refused instead of exhausting memory.
pub const DFA_SIZE_LIMIT: usize = 1 << 20;

/// Why a regex could not become a matcher, or bytes are not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    /// The pattern is not a valid regex, or its automaton is too large.
    #[error("{0}")]
    Build(String),
    /// Bytes that are not a serialised matcher of this weft build.
    #[error("not a compiled regex of this weft build: {0}")]
    Decode(String),
}

/// A compiled regex: anchored at the start of the text; a path regex matches any text that
/// starts with a match, a header regex only a whole value.
#[derive(Clone)]
pub struct Matcher {
    dfa: dense::DFA<Vec<u32>>,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("bytes", &self.dfa.memory_usage())
            .finish()
    }
}

impl Matcher {
    #[cfg(feature = "authoring")]
    /// An HTTPRouteGroup `pathRegex` as SMI defines it: matched from the start of the path.
    ///
    /// # Errors
    /// [`MatcherError::Build`] when `pattern` does not compile or is too large.
    pub fn path(pattern: &str) -> Result<Self, MatcherError> {
        Self::build(&format!("(?:{pattern})"))
    }

    #[cfg(feature = "authoring")]
    /// A header value regex as Envoy's `safe_regex` applies it: the whole value.
    ///
    /// # Errors
    /// [`MatcherError::Build`] when `pattern` does not compile or is too large.
    pub fn header(pattern: &str) -> Result<Self, MatcherError> {
        Self::build(&format!("(?:{pattern})$"))
    }

    #[cfg(feature = "authoring")]
    fn build(pattern: &str) -> Result<Self, MatcherError> {
        let config = dense::Config::new()
            // Every search starts at the beginning of the text, so only anchored start states
            // are built (smaller, and no unanchored prefix loop).
            .start_kind(StartKind::Anchored)
            .unicode_word_boundary(true)
            .dfa_size_limit(Some(DFA_SIZE_LIMIT))
            .determinize_size_limit(Some(4 * DFA_SIZE_LIMIT));
        let dfa = dense::Builder::new()
            .configure(config)
            .thompson(thompson::Config::new().nfa_size_limit(Some(DFA_SIZE_LIMIT)))
            .build(pattern)
            // The builder's messages span lines (the pattern, a caret); a log line must not.
            .map_err(|err| MatcherError::Build(one_line(&err.to_string())))?;
        Ok(Self { dfa })
    }

    /// Whether `text` matches: for a path regex, whether some prefix of `text` does; for a
    /// header regex, whether all of it does. The search stops at the first match state.
    pub fn is_match(&self, text: &str) -> bool {
        let input = Input::new(text).anchored(Anchored::Yes).earliest(true);
        matches!(self.dfa.try_search_fwd(&input), Ok(Some(_)))
    }

    #[cfg(feature = "authoring")]
    /// The automaton in its serialised form (little endian, as wasm32 and x86-64 are).
    pub fn to_bytes(&self) -> Vec<u8> {
        let (mut bytes, padding) = self.dfa.to_bytes_little_endian();
        bytes.drain(..padding);
        bytes
    }

    /// Reads an automaton [`Matcher::to_bytes`] wrote, checking that it is well formed (a
    /// corrupted automaton cannot make a search read out of bounds or loop).
    ///
    /// # Errors
    /// [`MatcherError::Decode`] for bytes that are not a serialised automaton of this build.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MatcherError> {
        // The automaton is read in place from 4-byte words, so it must start on a 4-byte
        // boundary; the bundle gives no such guarantee, so it is copied to one.
        let mut aligned = vec![0u8; bytes.len() + 3];
        let offset = (4 - aligned.as_ptr() as usize % 4) % 4;
        let Some(slot) = aligned.get_mut(offset..offset + bytes.len()) else {
            return Err(MatcherError::Decode(
                "cannot align the automaton".to_owned(),
            ));
        };
        slot.copy_from_slice(bytes);
        let (dfa, _) = dense::DFA::from_bytes(slot)
            .map_err(|err| MatcherError::Decode(one_line(&err.to_string())))?;
        Ok(Self {
            dfa: dfa.to_owned(),
        })
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(all(test, feature = "authoring"))]
mod tests {
    use super::*;

    #[test]
    fn a_path_regex_matches_from_the_start_and_a_header_regex_the_whole_value() {
        let path = Matcher::path("/api/v[0-9]+/items").unwrap();
        for (text, expected) in [
            ("/api/v1/items", true),
            ("/api/v12/items/3", true),
            ("/x/api/v1/items", false),
            ("/api/vx/items", false),
            ("", false),
        ] {
            assert_eq!(path.is_match(text), expected, "{text}");
        }
        let header = Matcher::header("ops|root").unwrap();
        for (text, expected) in [
            ("ops", true),
            ("root", true),
            ("ops2", false),
            ("xops", false),
        ] {
            assert_eq!(header.is_match(text), expected, "{text}");
        }
        let alternation = Matcher::path("/a$|/b").unwrap();
        assert!(alternation.is_match("/bcd"));
        assert!(!alternation.is_match("/ab"));
    }

    #[test]
    fn unicode_classes_and_case_folding_match_as_in_the_regex_crate() {
        for (pattern, text) in [
            (r"\w+", "/café"),
            (r"(?i)/straße", "/STRASSE"),
            (r"(?i)/k", "/\u{212A}"),
            (r"\d", "/\u{0663}"),
            (r"/\bword\b", "/word"),
            (r".*/x", "/\u{1F600}/x"),
        ] {
            let expected = regex::Regex::new(&format!("^(?:{pattern})"))
                .unwrap()
                .is_match(text);
            let matcher = Matcher::path(pattern).unwrap();
            assert_eq!(matcher.is_match(text), expected, "{pattern} on {text}");
        }
    }

    #[test]
    fn a_unicode_word_boundary_never_matches_beyond_ascii() {
        let matcher = Matcher::path(r"/\bé").unwrap();
        assert!(!matcher.is_match("/é"));
        assert!(Matcher::path(r"/\bx").unwrap().is_match("/x"));
    }

    #[test]
    fn bytes_round_trip_and_damage_is_refused() {
        let matcher = Matcher::path("/api/v[0-9]+/items/[0-9]+$").unwrap();
        let bytes = matcher.to_bytes();
        // Read back from an unaligned place, as a bundle holds it.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let back = Matcher::from_bytes(&shifted[1..]).unwrap();
        assert!(back.is_match("/api/v3/items/42"));
        assert!(!back.is_match("/api/v3/items/x"));
        assert!(Matcher::from_bytes(&bytes[..bytes.len() / 2]).is_err());
        assert!(Matcher::from_bytes(b"").is_err());
        let mut damaged = bytes.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0xff;
        // A damaged automaton is refused, or read as some automaton; either way no panic.
        if let Ok(read) = Matcher::from_bytes(&damaged) {
            let _ = read.is_match("/api/v3/items/42");
        }
    }

    #[test]
    fn an_automaton_too_large_is_refused_with_a_one_line_reason() {
        let err = Matcher::path(r"\w{1000}").unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(Matcher::path("(").is_err());
    }
}
