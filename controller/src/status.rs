//! What each proxy has done: connected or not, the versions it applied per xDS type, what it
//! refused and why, the secrets it asked for and was refused, and its certificate's expiry.
//! `weft status` and `/status` show it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;
use time::OffsetDateTime;

/// One xDS type of one proxy.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TypeState {
    /// The last version it applied.
    pub acked: Option<String>,
    /// The last version it refused.
    pub nacked: Option<String>,
    /// Envoy's reason for the last refusal.
    pub error: Option<String>,
    /// Refusals counted.
    pub nacks: u64,
}

/// One proxy.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ProxyStatus {
    /// Its SPIFFE ID, as proven on its xDS connection.
    pub identity: Option<String>,
    /// Whether its ADS stream is open.
    pub connected: bool,
    /// Per xDS type (`cds`, `eds`, `lds`, `rds`, `sds`, `ecds`).
    pub types: BTreeMap<String, TypeState>,
    /// Resources it asked for and was refused (another workload's secret, say).
    pub refused: Vec<String>,
    /// When its workload certificate expires (RFC 3339).
    pub certificate_expires: Option<String>,
}

/// Every proxy's status, by node id.
#[derive(Debug, Default)]
pub struct Status {
    proxies: Mutex<BTreeMap<String, ProxyStatus>>,
}

impl Status {
    fn with<T>(&self, node: &str, f: impl FnOnce(&mut ProxyStatus) -> T) -> T {
        let mut proxies = self
            .proxies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(proxies.entry(node.to_owned()).or_default())
    }

    /// `node` connected as `identity`.
    pub fn connected(&self, node: &str, identity: &str) {
        self.with(node, |p| {
            p.connected = true;
            p.identity = Some(identity.to_owned());
        });
    }

    /// `node`'s stream ended.
    pub fn disconnected(&self, node: &str) {
        self.with(node, |p| p.connected = false);
    }

    /// `node` applied `version` of `kind`.
    pub fn acked(&self, node: &str, kind: &str, version: &str) {
        self.with(node, |p| {
            p.types.entry(kind.to_owned()).or_default().acked = Some(version.to_owned());
        });
    }

    /// `node` refused `version` of `kind`.
    pub fn nacked(&self, node: &str, kind: &str, version: &str, error: &str) {
        self.with(node, |p| {
            let state = p.types.entry(kind.to_owned()).or_default();
            state.nacked = Some(version.to_owned());
            state.error = Some(error.to_owned());
            state.nacks += 1;
        });
    }

    /// `node` asked for `names` and was not given them.
    pub fn refused(&self, node: &str, names: &[String]) {
        self.with(node, |p| {
            for name in names {
                if !p.refused.contains(name) {
                    p.refused.push(name.clone());
                }
            }
        });
    }

    /// `node`'s certificate expires at `at`.
    pub fn set_certificate(&self, node: &str, at: OffsetDateTime) {
        let text = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        self.with(node, |p| p.certificate_expires = Some(text));
    }

    /// Whether `node`'s ADS stream is open.
    pub fn is_connected(&self, node: &str) -> bool {
        self.proxies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(node)
            .is_some_and(|p| p.connected)
    }

    /// Forgets `node` (a pod that is gone).
    pub fn forget(&self, node: &str) {
        self.proxies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(node);
    }

    /// A copy of every proxy's status.
    pub fn all(&self) -> BTreeMap<String, ProxyStatus> {
        self.proxies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
