//! The caller's identity in the `x-forwarded-client-cert` header (XFCC), as Envoy writes it for
//! a listener with `forward_client_cert_details: SANITIZE_SET` and
//! `set_current_client_cert_details: {uri: true}`: one element of `;`-separated `key=value`
//! pairs, `By=<own URI SAN>;Hash=<certificate digest>;URI=<caller URI SAN>`, in which a value
//! holding `,`, `;` or `=` is double-quoted.
//!
//! Reading is strict, because what it returns is trusted as a verified identity: a header
//! that is not one well-formed element (several elements, which SANITIZE_SET never writes, an
//! unbalanced quote, a pair without `=`) yields no identity, which can only deny.

/// The header's name, as Envoy keeps it.
pub const HEADER: &str = "x-forwarded-client-cert";

/// The caller's URI SAN in the XFCC value `header`: its first non-empty `URI` (key matched
/// without regard to case), as the property `connection.uri_san_peer_certificate` gives the
/// first URI SAN; `None` when there is none or the value is not one well-formed element.
pub fn caller_uri(header: &str) -> Option<&str> {
    if header
        .bytes()
        .any(|byte| matches!(byte, b'"' | b',' | b'\\'))
    {
        first_uri(pairs(header)?.into_iter())
    } else {
        // What Envoy writes for SPIFFE IDs: one element, nothing quoted; split without a list.
        first_uri(header.split(';'))
    }
}

/// The first non-empty `URI` of `pairs`, unquoted; `None` if a pair is no `key=value` or that
/// `URI` is badly quoted.
fn first_uri<'h>(pairs: impl Iterator<Item = &'h str>) -> Option<&'h str> {
    let mut found = None;
    for pair in pairs {
        let (key, value) = pair.split_once('=')?;
        if found.is_none() && key.eq_ignore_ascii_case("URI") {
            let value = unquoted(value)?;
            found = (!value.is_empty()).then_some(value);
        }
    }
    found
}

/// The `;`-separated pairs of one element, or `None` if `header` holds several (a `,` outside
/// quotes) or a quote is left open.
fn pairs(header: &str) -> Option<Vec<&str>> {
    let mut pairs = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, byte) in header.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                pairs.push(header.get(start..at)?);
                start = at + 1;
            }
            b',' if !quoted => return None,
            _ => {}
        }
    }
    if quoted || escaped {
        return None;
    }
    pairs.push(header.get(start..)?);
    Some(pairs)
}

/// `value` without its surrounding quotes; `None` for a quoted value holding an escape (a URI
/// SAN with a `"` in it is no SPIFFE ID) or a quote inside an unquoted one.
fn unquoted(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => (!value.contains('"')).then_some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "spiffe://cluster.local/ns/shop/sa/web";

    #[test]
    fn envoy_sanitize_set_value_yields_the_caller() {
        let header = format!("By=spiffe://cluster.local/ns/shop/sa/api;Hash=0a1b2c3d;URI={CALLER}");
        assert_eq!(caller_uri(&header), Some(CALLER));
    }

    #[test]
    fn a_quoted_value_and_quoted_neighbours_are_read() {
        let header = format!("Hash=ab;Subject=\"CN=web,O=shop;x\";URI=\"{CALLER}\";DNS=web.shop");
        assert_eq!(caller_uri(&header), Some(CALLER));
    }

    #[test]
    fn the_first_non_empty_uri_counts_and_the_key_ignores_case() {
        let header = format!("uri=;Uri={CALLER};URI=spiffe://other/ns/a/sa/b");
        assert_eq!(caller_uri(&header), Some(CALLER));
    }

    #[test]
    fn no_uri_or_an_empty_one_is_no_identity() {
        assert_eq!(caller_uri("By=spiffe://x;Hash=ab"), None);
        assert_eq!(caller_uri("Hash=ab;URI="), None);
        assert_eq!(caller_uri(""), None);
    }

    #[test]
    fn several_elements_are_no_identity() {
        // A client's element followed by Envoy's (APPEND_FORWARD) must never yield the client's.
        let header = format!("URI=spiffe://evil/ns/a/sa/b,By=x;URI={CALLER}");
        assert_eq!(caller_uri(&header), None);
    }

    #[test]
    fn malformed_elements_are_no_identity() {
        for header in [
            format!("URI=\"{CALLER}"),
            format!("Subject=\"a;URI={CALLER}"),
            format!("Hash;URI={CALLER}"),
            format!("URI={CALLER}\"x"),
            "URI=\"a\\\"b\"".to_owned(),
        ] {
            assert_eq!(caller_uri(&header), None, "{header}");
        }
    }
}
