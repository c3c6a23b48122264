//! examples/mesh's checkout as the reliability suite drives it: the policies a test switches
//! between (who may GET /cart, where the split sends it), the probes, and the verdict that
//! judges each answer against the policies in force.

use std::net::SocketAddr;

use crate::load::{Answer, Probe};

/// The policy of examples/mesh that a test switches between: whether analytics may GET /cart
/// on checkout, and the backends checkout's split sends to.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Whether analytics may GET /cart.
    pub analytics_allowed: bool,
    /// The backends the split sends to.
    pub backends: &'static [&'static str],
}

/// The example as shipped: frontend only, 90/10.
pub const SHIPPED: Policy = Policy {
    analytics_allowed: false,
    backends: &["checkout-v1", "checkout-v2"],
};
/// Frontend only, every request to checkout-v1.
pub const CLOSED_V1: Policy = Policy {
    analytics_allowed: false,
    backends: &["checkout-v1"],
};
/// Analytics let in, every request to checkout-v2.
pub const OPEN_V2: Policy = Policy {
    analytics_allowed: true,
    backends: &["checkout-v2"],
};

impl Policy {
    /// Whether `caller` (a ServiceAccount) may GET `path` on checkout.
    pub fn allows(&self, caller: &str, path: &str) -> bool {
        match (caller, path) {
            ("frontend", "/cart") => true,
            ("analytics", "/cart") => self.analytics_allowed,
            _ => false,
        }
    }

    /// `access.yaml` and `split.yaml` for this policy, from the shipped ones.
    pub fn manifests(&self, access: &str, split: &str) -> (String, String) {
        let access = if self.analytics_allowed {
            access.replace(
                "sources: [{kind: ServiceAccount, name: frontend, namespace: shop}]",
                "sources: [{kind: ServiceAccount, name: frontend, namespace: shop}, {kind: ServiceAccount, name: analytics, namespace: shop}]",
            )
        } else {
            access.to_owned()
        };
        let weight = |backend: &str| {
            if self.backends.contains(&backend) {
                100
            } else {
                0
            }
        };
        let split = split
            .replace(
                "{service: checkout-v1, weight: 90}",
                &format!(
                    "{{service: checkout-v1, weight: {}}}",
                    weight("checkout-v1")
                ),
            )
            .replace(
                "{service: checkout-v2, weight: 10}",
                &format!(
                    "{{service: checkout-v2, weight: {}}}",
                    weight("checkout-v2")
                ),
            );
        (access, split)
    }
}

/// Whether `answer` is one `probe` may get under one of `policies`: a 200 from a backend the
/// split names where access is allowed, a 403 where it is denied; nothing else.
pub fn verdict(probe: &Probe, answer: &Answer, policies: &[&Policy]) -> Result<(), String> {
    let allowed = policies
        .iter()
        .any(|policy| policy.allows(&probe.caller, &probe.path));
    let denied = policies
        .iter()
        .any(|policy| !policy.allows(&probe.caller, &probe.path));
    match answer {
        Answer::Reply { status: 200, body } => {
            let backend = body
                .strip_prefix("upstream ")
                .and_then(|rest| rest.split(':').next())
                .unwrap_or_default();
            let split = policies.iter().any(|p| p.backends.contains(&backend));
            if allowed && split {
                Ok(())
            } else {
                Err(format!("{policies:?}"))
            }
        }
        Answer::Reply { status: 403, .. } if denied => Ok(()),
        _ => Err(format!("{policies:?}")),
    }
}

/// The three probes: frontend's allowed GET /cart, analytics' GET /cart, frontend's denied
/// GET /admin, each through its own sidecar's outbound proxy.
pub fn probes(frontend: SocketAddr, analytics: SocketAddr) -> Vec<Probe> {
    let probe = |caller: &str, via, path: &str| Probe {
        caller: caller.to_owned(),
        via,
        host: "checkout".to_owned(),
        path: path.to_owned(),
    };
    vec![
        probe("frontend", frontend, "/cart"),
        probe("analytics", analytics, "/cart"),
        probe("frontend", frontend, "/admin"),
    ]
}
