//! What each proxy has done: connected or not, the versions it applied per xDS type, what it
//! refused and why, the secrets it asked for and was refused, and its certificate's expiry.
//! `weft status` and `/status` show it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One xDS type of one proxy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ProxyStatus {
    /// Its SPIFFE ID, as proven on its xDS connection.
    pub identity: Option<String>,
    /// Whether its ADS stream is open.
    pub connected: bool,
    /// Per xDS type (`cds`, `eds`, `lds`, `rds`, `sds`, `ecds`).
    pub types: BTreeMap<String, TypeState>,
    /// The latest resources it asked for and was refused (another workload's secret, say):
    /// at most [`REFUSED_KEPT`], the latest last.
    pub refused: Vec<String>,
    /// How many times it asked for a resource and was refused.
    pub refused_total: u64,
    /// When a refusal of this proxy was last logged, and how many came since.
    #[serde(skip)]
    refusals_logged: Option<(std::time::Instant, u64)>,
    /// When its workload certificate expires (RFC 3339).
    pub certificate_expires: Option<String>,
    /// How many times local mode started one of the pod's processes again after it exited.
    pub restarts: u64,
    /// The last such exit: which process, and how it ended.
    pub last_exit: Option<String>,
}

/// How many refused names each proxy's status keeps.
pub const REFUSED_KEPT: usize = 16;

/// How often refusals of one proxy are logged at most.
pub const REFUSALS_LOGGED_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

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

    /// `node` asked for `count` resources it was not given, `names` among them. Returns, when
    /// a log line is due (the proxy's first refusal, then at most one per
    /// [`REFUSALS_LOGGED_EVERY`]), how many refusals it covers.
    pub fn refused(&self, node: &str, names: &[String], count: usize) -> Option<u64> {
        let now = std::time::Instant::now();
        self.with(node, |p| {
            for name in names {
                if let Some(at) = p.refused.iter().position(|kept| kept == name) {
                    p.refused.remove(at);
                }
                if p.refused.len() == REFUSED_KEPT {
                    p.refused.remove(0);
                }
                p.refused.push(name.clone());
            }
            let count = u64::try_from(count).unwrap_or(u64::MAX);
            p.refused_total = p.refused_total.saturating_add(count);
            match &mut p.refusals_logged {
                Some((at, since)) if now.duration_since(*at) < REFUSALS_LOGGED_EVERY => {
                    *since = since.saturating_add(count);
                    None
                }
                logged => {
                    let covered = logged.map_or(0, |(_, since)| since) + count;
                    *logged = Some((now, 0));
                    Some(covered)
                }
            }
        })
    }

    /// A process of `node`'s pod (`role`: the sidecar, the application) exited with `exit`
    /// and is to be started again.
    pub fn restarted(&self, node: &str, role: &str, exit: &str) {
        self.with(node, |p| {
            p.restarts += 1;
            p.last_exit = Some(format!("{role}: {exit}"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_latest_few_a_count_and_log_once_a_minute() {
        let status = Status::default();
        let names: Vec<String> = (0..50_000).map(|i| format!("secret-{i}")).collect();
        assert_eq!(
            status.refused("shop/a-0", &names[..16], 50_000),
            Some(50_000)
        );
        assert_eq!(
            status.refused("shop/a-0", &names[16..20], 4),
            None,
            "logged a moment ago"
        );
        let proxy = &status.all()["shop/a-0"];
        assert_eq!(proxy.refused.len(), REFUSED_KEPT);
        assert_eq!(proxy.refused.last().map(String::as_str), Some("secret-19"));
        assert_eq!(proxy.refused_total, 50_004);
        // A name refused again moves to the end rather than being kept twice.
        status.refused("shop/a-0", &names[4..5], 1);
        let proxy = &status.all()["shop/a-0"];
        assert_eq!(proxy.refused.iter().filter(|n| *n == "secret-4").count(), 1);
        assert_eq!(proxy.refused.last().map(String::as_str), Some("secret-4"));
    }
}
