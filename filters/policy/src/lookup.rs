//! The maps a request looks names up in, and the one form a host is looked up by: shared by the
//! engine's split tables and the filter's metrics.

use std::borrow::Cow;
use std::collections::HashMap;

/// The maps looked up on every request, here and in the filter's metrics: foldhash is several
/// times faster than the standard library's SipHash on short keys; flooding is no concern,
/// because a request only looks up keys the configuration put in or the host verified.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A [`FastMap`] keyed by names from the policy (callers, hosts, services).
pub(crate) type LookupMap<V> = FastMap<String, V>;

/// A host as the split tables key it: without port or trailing dot, lower-case. It borrows
/// from `host` unless `host` has upper-case letters, so the usual request allocates nothing.
pub fn host_key(host: &str) -> Cow<'_, str> {
    let without_port = match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    let name = without_port.trim_end_matches('.');
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::host_key;

    #[test]
    fn usual_host_forms_are_keyed_without_allocating() {
        for (host, key) in [
            ("website", "website"),
            ("website.web:8080", "website.web"),
            (
                "website.web.svc.cluster.local.",
                "website.web.svc.cluster.local",
            ),
            (
                "website.web.svc.cluster.local.:80",
                "website.web.svc.cluster.local",
            ),
        ] {
            assert!(
                matches!(host_key(host), Cow::Borrowed(k) if k == key),
                "{host}"
            );
        }
        assert_eq!(
            host_key("WebSite.Web:80"),
            Cow::<str>::Owned("website.web".into())
        );
        assert_eq!(
            host_key("[::1]:8080"),
            "[::1]:8080",
            "an IPv6 literal keeps its colons"
        );
    }
}
