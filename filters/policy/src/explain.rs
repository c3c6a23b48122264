//! The explain report: what `weft explain --output json` prints, and what anything that shows an
//! explanation reads (the human output, the browser page): the request, who sent it to whom,
//! and the engine's own [`Decision`] with its reason. One type, written and read.

use serde::{Deserialize, Serialize};

use crate::engine::Decision;

/// One explained request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainReport {
    /// The decision and why (its fields sit at the top level: `decision`, `traffic_target`,
    /// `reason`, ...).
    #[serde(flatten)]
    pub decision: Decision<'static>,
    /// For a denial, the sentence the denied caller reads in Envoy's reply, word for word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The caller's SPIFFE ID.
    pub from: String,
    /// The destination's SPIFFE ID.
    pub to: String,
    /// What was asked.
    pub request: ExplainedRequest,
}

/// The request or connection explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "protocol", rename_all = "lowercase")]
pub enum ExplainedRequest {
    /// An HTTP request.
    Http {
        /// Its method.
        method: String,
        /// Its path.
        path: String,
        /// The destination port.
        port: u16,
        /// Its headers, `[name, value]`.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection.
    Tcp {
        /// The destination port.
        port: u16,
    },
}

impl ExplainReport {
    /// The report of `decision` on `request` from `from` to `to`.
    pub fn new(
        decision: Decision<'_>,
        from: String,
        to: String,
        request: ExplainedRequest,
    ) -> Self {
        let message = match &decision {
            Decision::Deny { reason } => Some(reason.to_string()),
            _ => None,
        };
        Self {
            decision: decision.into_owned(),
            message,
            from,
            to,
            request,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::engine::DenyReason;
    use crate::path::{NotNormal, Problem};

    #[test]
    fn every_decision_reads_back_as_written() {
        let request = ExplainedRequest::Http {
            method: "GET".to_owned(),
            path: "/a/%2e%2e/b".to_owned(),
            port: 8080,
            headers: vec![("x-a".to_owned(), "\"quoted\\\"".to_owned())],
        };
        let decisions = [
            Decision::Allow {
                traffic_target: Cow::Borrowed("shop/t"),
                rule: 1,
                route: Cow::Borrowed("shop/routes"),
                http_match: Some(Cow::Borrowed("shop/routes/all")),
            },
            Decision::AllowUnauthenticated { port: 9090 },
            Decision::Deny {
                reason: DenyReason::NoMatchingRule {
                    source: Cow::Borrowed("spiffe://x/ns/a/sa/\\b"),
                    traffic_targets: vec![Cow::Borrowed("shop/t"), Cow::Borrowed("shop/u")],
                },
            },
            Decision::Deny {
                reason: DenyReason::PathNotNormal {
                    path: Cow::Borrowed("/a/%2e%2e/b"),
                    problem: NotNormal {
                        problem: Problem::EncodedUnreserved,
                        part: Cow::Borrowed("%2e"),
                    },
                },
            },
            Decision::Deny {
                reason: DenyReason::Unauthenticated,
            },
        ];
        for decision in decisions {
            let report = ExplainReport::new(
                decision,
                "spiffe://x/ns/a/sa/b".to_owned(),
                "spiffe://x/ns/c/sa/d".to_owned(),
                request.clone(),
            );
            let json = serde_json::to_string(&report).unwrap();
            assert_eq!(
                serde_json::from_str::<ExplainReport>(&json).unwrap(),
                report,
                "{json}"
            );
        }
        let tcp = serde_json::to_value(ExplainedRequest::Tcp { port: 5432 }).unwrap();
        assert_eq!(tcp, serde_json::json!({"protocol": "tcp", "port": 5432}));
    }
}
