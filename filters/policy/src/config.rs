//! The plugin configuration of the weft filter: the JSON that Envoy hands to `weft.wasm` in
//! `configuration` (a `google.protobuf.StringValue`), parsed once per configuration change.
//!
//! # Errors
//! Parsing is strict: an unknown field, a wrong type or an unsupported `version` is refused with
//! a [`ConfigError`] whose message names the field path and says what would be valid, because a
//! misspelt policy field silently ignored would be a policy silently not enforced.

use serde::{Deserialize, Serialize};

use crate::bundle::{AccessPolicy, HttpMatchSpec, Identity, MetricsConfig, SplitTable};
#[cfg(feature = "authoring")]
use crate::document::JsonError;

/// The plugin configuration format this build reads and writes.
pub const CONFIG_VERSION: u32 = 1;

/// Why a plugin configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No configuration bytes at all (Envoy's `configuration` is absent or empty).
    #[error(
        "plugin configuration: none given; set `configuration` to the compiled bundle that `weft compile --bundle` (or `weft bundle`) prints"
    )]
    Missing,
    /// The bytes are not valid UTF-8 JSON of the expected shape.
    #[error("plugin configuration: field `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the offending field (`(root)` for the top level).
        field: String,
        /// What is wrong and, where serde knows it, what would be valid.
        reason: String,
    },
    /// The `version` field names a format this build does not read.
    #[error(
        "plugin configuration: field `version`: {found} is not supported; this weft.wasm reads version {CONFIG_VERSION}"
    )]
    UnsupportedVersion {
        /// The version found in the configuration.
        found: u32,
    },
}

/// Where the HTTP filter reads a request's verified caller identity (its SPIFFE ID).
///
/// Both say the same for a listener that verifies client certificates; the header costs the
/// filter no host call, since it arrives with the request headers the filter fetches anyway,
/// while the property is a host call per request. The filter cannot see its listener's
/// settings, so the header is only trusted when the configuration says so, for a listener that
/// sets it anyway (docs/access.md, "Caller identity from x-forwarded-client-cert"). The TCP
/// filter always reads the connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerIdentity {
    /// The URI SAN of the peer certificate Envoy verified on the downstream connection (the
    /// property `connection.uri_san_peer_certificate`).
    #[default]
    Connection,
    /// The `URI` of the `x-forwarded-client-cert` header ([`crate::xfcc`]). Only sound on a
    /// listener whose connection manager sets `forward_client_cert_details: SANITIZE_SET` and
    /// `set_current_client_cert_details: {uri: true}`: Envoy then replaces a header a client
    /// sent with the verified certificate's details, or removes it when there is none.
    ForwardedClientCert,
}

impl CallerIdentity {
    /// Whether this is the default, [`CallerIdentity::Connection`].
    pub fn is_connection(&self) -> bool {
        *self == CallerIdentity::Connection
    }
}

/// The whole configuration of one weft plugin instance: the compiled policy bundle of one
/// workload (see [`crate::bundle`]); `weft compile` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Format version; absent means [`CONFIG_VERSION`].
    #[serde(default = "current_version")]
    pub version: u32,
    /// The workload this Envoy serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// The destination port that port rules (TCPRoute `ports`, `destination.port`) see for
    /// traffic through this plugin; absent means the port the connection was addressed to
    /// (Envoy's `destination.port`). Set it when the listener's port is not the application's,
    /// as in an explicit (non-transparent) inbound sidecar listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// Where HTTP requests' verified caller identity is read; absent means the connection's
    /// peer certificate. Only a listener that sets `x-forwarded-client-cert` itself (and removes
    /// any a client sent) may say `forwarded_client_cert`: see [`CallerIdentity`].
    #[serde(default, skip_serializing_if = "CallerIdentity::is_connection")]
    pub caller_identity: CallerIdentity,
    /// HTTP matches, referenced by index from `access` and `splits`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_matches: Vec<HttpMatchSpec>,
    /// Inbound access control; absent means the feature is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessPolicy>,
    /// Outbound split routing, one table per root service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub splits: Vec<SplitTable>,
    /// Per-edge golden metrics; absent means the feature is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

#[cfg(feature = "authoring")]
fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn current_version() -> u32 {
    CONFIG_VERSION
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            identity: None,
            destination_port: None,
            caller_identity: CallerIdentity::Connection,
            http_matches: Vec::new(),
            access: None,
            splits: Vec::new(),
            metrics: None,
        }
    }
}

#[cfg(feature = "authoring")]
impl PluginConfig {
    /// Parses and checks a configuration from its JSON document.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] for empty input, [`ConfigError::Invalid`] naming the field for
    /// malformed JSON, unknown fields or wrong types, [`ConfigError::UnsupportedVersion`] for a
    /// format this build does not read.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::Missing);
        }
        let root = |reason: String| ConfigError::Invalid {
            field: "(root)".to_owned(),
            reason,
        };
        let document = crate::document::read_json(bytes).map_err(|err| match err {
            JsonError::DuplicateKey { path } => ConfigError::Invalid {
                reason: JsonError::DuplicateKey { path: path.clone() }.to_string(),
                field: path,
            },
            JsonError::Syntax(message) => root(message),
        })?;
        // serde would also build a struct from a JSON array; a configuration is an object.
        if !document.is_object() {
            return Err(root(format!(
                "expected a JSON object, found {}",
                json_kind(&document)
            )));
        }
        let config: Self =
            serde_path_to_error::deserialize(document).map_err(|err| ConfigError::Invalid {
                field: err.path().to_string(),
                reason: err.into_inner().to_string(),
            })?;
        if config.version != CONFIG_VERSION {
            return Err(ConfigError::UnsupportedVersion {
                found: config.version,
            });
        }
        Ok(config)
    }

    /// The configuration as the JSON that [`PluginConfig::from_json`] reads back.
    ///
    /// # Errors
    /// Only if serde_json fails to serialise plain data, which it does not for these types.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PluginConfig, ConfigError> {
        PluginConfig::from_json(text.as_bytes())
    }

    #[test]
    fn an_empty_object_is_the_current_version() {
        assert_eq!(parse("{}"), Ok(PluginConfig::default()));
    }

    #[test]
    fn an_explicit_current_version_is_accepted() {
        assert_eq!(parse(r#"{"version": 1}"#), Ok(PluginConfig::default()));
    }

    #[test]
    fn missing_configuration_is_refused_with_a_hint() {
        for blank in ["", "  \n"] {
            let err = parse(blank).unwrap_err();
            assert_eq!(err, ConfigError::Missing);
            assert!(err.to_string().contains("weft compile --bundle"), "{err}");
        }
    }

    #[test]
    fn an_unknown_field_is_named_with_the_fields_that_exist() {
        let err = parse(r#"{"version": 1, "acess": {}}"#).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("unknown field `acess`"), "{message}");
        assert!(message.contains("expected one of `version`"), "{message}");
    }

    #[test]
    fn a_wrong_type_names_the_field_and_the_expected_type() {
        let err = parse(r#"{"version": "one"}"#).unwrap_err();
        match &err {
            ConfigError::Invalid { field, reason } => {
                assert_eq!(field, "version");
                assert!(reason.contains("expected u32"), "{reason}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn an_unsupported_version_says_which_version_is_read() {
        let err = parse(r#"{"version": 2}"#).unwrap_err();
        assert_eq!(err, ConfigError::UnsupportedVersion { found: 2 });
        assert!(err.to_string().contains("reads version 1"), "{err}");
    }

    #[test]
    fn a_non_object_or_malformed_document_is_refused_at_the_root() {
        for text in ["[]", "{", "{} {}", "\"x\"", "\u{feff}{}"] {
            match parse(text) {
                Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "(root)", "{text}"),
                other => panic!("{text:?} should be invalid at the root, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_repeated_key_is_refused_naming_it_wherever_it_is() {
        // Appending a second `access` to a compiled configuration must not switch the mode.
        let err = parse(
            r#"{"version": 1, "access": {"trust_domain": "d", "sources": {}, "grants": []},
                "access": {"mode": "permissive", "trust_domain": "d", "sources": {}, "grants": []}}"#,
        )
        .unwrap_err();
        match &err {
            ConfigError::Invalid { field, reason } => {
                assert_eq!(field, "access");
                assert!(reason.contains("given twice"), "{reason}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert!(err.to_string().contains("`access`"), "{err}");
        let nested = parse(
            r#"{"access": {"trust_domain": "d", "grants": [],
                "sources": {"spiffe://d/ns/a/sa/b": [], "spiffe://d/ns/a/sa/b": [0]}}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&nested, ConfigError::Invalid { field, .. } if field == "access.sources.spiffe://d/ns/a/sa/b"),
            "{nested:?}"
        );
    }

    #[test]
    fn invalid_utf8_is_refused_not_panicked_on() {
        assert!(matches!(
            PluginConfig::from_json(&[b'{', 0xff, b'}']),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn serialised_configuration_reads_back_equal() {
        let config = PluginConfig::default();
        let json = config.to_json().unwrap();
        assert_eq!(parse(&json), Ok(config));
    }
}
