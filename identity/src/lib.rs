//! `weft-identity`: a workload's identity, its Kubernetes ServiceAccount, as weft names it
//! everywhere (`namespace/serviceaccount`) and as its certificate says it (a SPIFFE ID). A crate
//! of its own so that the certificates and the policy engine both use it and neither depends on
//! the other.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an identity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not of the form `namespace/serviceaccount`.
    #[error("{0:?} is not an identity; write namespace/serviceaccount, e.g. shop/frontend")]
    Form(String),
    /// A part that is not a Kubernetes name.
    #[error(
        "{part} {value:?} is not a valid Kubernetes name (lower-case letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit)"
    )]
    Name {
        /// `namespace` or `serviceaccount`.
        part: &'static str,
        /// The value given.
        value: String,
    },
}

/// A workload identity: a Kubernetes ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount's name.
    pub service_account: String,
}

impl Identity {
    /// The SPIFFE ID of this identity in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (namespace, service_account) = text
            .split_once('/')
            .ok_or_else(|| IdentityError::Form(text.to_owned()))?;
        for (part, value) in [
            ("namespace", namespace),
            ("serviceaccount", service_account),
        ] {
            if !is_kubernetes_name(value) {
                return Err(IdentityError::Name {
                    part,
                    value: value.to_owned(),
                });
            }
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }
}

/// A DNS-1123 subdomain, the rule for Kubernetes object names.
fn is_kubernetes_name(value: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !value.is_empty()
        && value.len() <= 253
        && value.starts_with(alphanumeric)
        && value.ends_with(alphanumeric)
        && value
            .chars()
            .all(|c| alphanumeric(c) || c == '-' || c == '.')
}
