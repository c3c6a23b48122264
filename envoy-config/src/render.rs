//! Typed resources as Envoy reads them: `Any` packing, Envoy's JSON (proto3 JSON mapping with
//! the protos' own field names, as Envoy's docs and YAML configurations write them), reading
//! such JSON back into typed resources, and a digest of a resource's canonical content.
//!
//! prost has no reflection, so the JSON mapping goes through prost-reflect with descriptors
//! compiled from the envoy-types crate's `.proto` files at build time (build.rs).

use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Why a resource could not be rendered or read.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The descriptors weft compiled do not hold this message type.
    #[error("no descriptor for {0}; add its .proto to envoy-config/build.rs")]
    UnknownType(String),
    /// The bytes do not decode as the named message.
    #[error("{type_name}: {source}")]
    Decode {
        /// Message type.
        type_name: String,
        /// The decoder's reason.
        source: prost::DecodeError,
    },
    /// The JSON is not a valid value of the named message (an unknown field, a wrong type).
    #[error("{type_name}: {reason}")]
    Json {
        /// Message type.
        type_name: String,
        /// What is wrong, as the JSON reader says.
        reason: String,
    },
}

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy-descriptors.bin"));

/// The descriptors of every Envoy message weft renders.
pub fn descriptors() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        #[allow(clippy::expect_used)]
        DescriptorPool::decode(DESCRIPTORS).expect("build.rs wrote a valid descriptor set")
    })
}

fn descriptor(type_name: &str) -> Result<MessageDescriptor, RenderError> {
    descriptors()
        .get_message_by_name(type_name)
        .ok_or_else(|| RenderError::UnknownType(type_name.to_owned()))
}

/// `message` packed into an `Any`, as typed configuration fields and xDS responses carry it.
pub fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// The message type an `Any`'s type URL names.
pub fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// `message` in Envoy's JSON form (proto field names, `@type` in every `Any`).
///
/// # Errors
/// When weft's descriptors do not know the message or a type packed in it.
pub fn to_json<M: Message + Name>(message: &M) -> Result<Value, RenderError> {
    encoded_to_json(&M::full_name(), &message.encode_to_vec())
}

/// An `Any`'s content in Envoy's JSON form, with its `@type`.
///
/// # Errors
/// As [`to_json`].
pub fn any_to_json(any: &Any) -> Result<Value, RenderError> {
    encoded_to_json(&Any::full_name(), &any.encode_to_vec())
}

fn encoded_to_json(type_name: &str, bytes: &[u8]) -> Result<Value, RenderError> {
    let dynamic = DynamicMessage::decode(descriptor(type_name)?, bytes).map_err(|source| {
        RenderError::Decode {
            type_name: type_name.to_owned(),
            source,
        }
    })?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|err| RenderError::Json {
            type_name: type_name.to_owned(),
            reason: err.to_string(),
        })
}

/// Reads Envoy's JSON form of `M`: unknown fields and wrong types are errors, as in Envoy.
///
/// # Errors
/// [`RenderError::Json`] naming what is wrong.
pub fn from_json<M: Message + Name + Default>(value: &Value) -> Result<M, RenderError> {
    let type_name = M::full_name();
    let json_error = |reason: String| RenderError::Json {
        type_name: type_name.clone(),
        reason,
    };
    let dynamic = DynamicMessage::deserialize(descriptor(&type_name)?, value)
        .map_err(|err| json_error(err.to_string()))?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|source| RenderError::Decode {
        type_name: type_name.clone(),
        source,
    })
}

/// A digest of a resource's content that does not depend on how it was encoded: the SHA-256 of
/// its JSON form with every object's keys sorted (protobuf map fields encode in a `HashMap`'s
/// order, so equal resources can differ byte for byte). Hex, 16 characters: enough to tell
/// versions apart, short enough for logs.
///
/// # Errors
/// As [`any_to_json`].
pub fn content_digest(any: &Any) -> Result<String, RenderError> {
    // serde_json's map is ordered by key (no `preserve_order`), so its text is canonical.
    let canonical = any_to_json(any)?.to_string();
    let digest = Sha256::digest(canonical.as_bytes());
    Ok(digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::protobuf::{Struct, Value as ProtoValue, value::Kind};

    use super::*;

    #[test]
    fn json_uses_proto_field_names_and_reads_back() {
        let node = Node {
            id: "shop/api-0".into(),
            user_agent_name: "envoy".into(),
            ..Node::default()
        };
        let json = to_json(&node).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "shop/api-0", "user_agent_name": "envoy"})
        );
        assert_eq!(from_json::<Node>(&json).unwrap(), node);
    }

    #[test]
    fn reading_json_refuses_an_unknown_field() {
        let err = from_json::<Node>(&serde_json::json!({"idd": "x"})).unwrap_err();
        assert!(err.to_string().contains("idd"), "{err}");
    }

    #[test]
    fn the_digest_ignores_the_order_a_map_was_encoded_in() {
        let entries = (0..32).map(|i| {
            (
                format!("key{i}"),
                ProtoValue {
                    kind: Some(Kind::NumberValue(f64::from(i))),
                },
            )
        });
        let forward: Vec<_> = entries.collect();
        let mut backward = forward.clone();
        backward.reverse();
        let node = |fields: Vec<(String, ProtoValue)>| {
            // Encode a map in a chosen order: one map entry per encoded message, merged.
            let mut bytes = Vec::new();
            for (key, value) in fields {
                let one = Node {
                    metadata: Some(Struct {
                        fields: [(key, value)].into_iter().collect(),
                    }),
                    ..Node::default()
                };
                bytes.extend(one.encode_to_vec());
            }
            Any {
                type_url: Node::type_url(),
                value: bytes,
            }
        };
        let (a, b) = (node(forward), node(backward));
        assert_ne!(a.value, b.value, "the encodings must differ for this test");
        assert_eq!(content_digest(&a).unwrap(), content_digest(&b).unwrap());
        let other = any(&Node {
            id: "x".into(),
            ..Node::default()
        });
        assert_ne!(content_digest(&a).unwrap(), content_digest(&other).unwrap());
    }
}
