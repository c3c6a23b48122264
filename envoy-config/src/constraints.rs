//! The field constraints Envoy's protos declare with protoc-gen-validate (`validate.rules`),
//! checked on a resource before it is served, as Envoy checks them when it loads it: required
//! messages and oneofs, numbers and durations within their bounds, strings and lists not too
//! short, enums among their values, into every message and packed `Any` the resource holds.
//! What Envoy checks beyond these (cross-field rules, regex syntax, names that must exist) is
//! left to Envoy, whose refusal the controller handles.

use prost::{Message, Name};
use prost_reflect::{
    DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MapKey, ReflectMessage, Value,
};

use crate::render::descriptors;

/// A constraint a resource breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct ConstraintError {
    /// Where, as a JSON path of proto field names (`virtual_hosts[0].domains`).
    pub field: String,
    /// The rule, as the proto states it.
    pub rule: String,
}

struct Rules {
    rules: ExtensionDescriptor,
    required_oneof: Option<ExtensionDescriptor>,
}

/// Checks `message` against its protos' declared constraints.
///
/// # Errors
/// The first constraint broken.
pub fn check<M: Message + Name>(message: &M) -> Result<(), ConstraintError> {
    let pool = descriptors();
    let Some(rules) = pool.get_extension_by_name("validate.rules") else {
        return Ok(());
    };
    let rules = Rules {
        rules,
        required_oneof: pool.get_extension_by_name("validate.required"),
    };
    let Some(descriptor) = pool.get_message_by_name(&M::full_name()) else {
        return Ok(());
    };
    let Ok(dynamic) = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()) else {
        return Ok(());
    };
    check_message(&rules, &dynamic, "", 0)
}

/// How deep messages are followed (Envoy's resources nest a few dozen levels at most).
const MAX_DEPTH: usize = 64;

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn broken(field: &str, rule: impl Into<String>) -> Result<(), ConstraintError> {
    Err(ConstraintError {
        field: field.to_owned(),
        rule: rule.into(),
    })
}

fn check_message(
    rules: &Rules,
    message: &DynamicMessage,
    path: &str,
    depth: usize,
) -> Result<(), ConstraintError> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let descriptor = message.descriptor();
    if descriptor.full_name() == "google.protobuf.Any" {
        return check_any(rules, message, path, depth);
    }
    if let Some(required) = &rules.required_oneof {
        for oneof in descriptor.oneofs() {
            let options = oneof.options();
            let is_required = options.has_extension(required)
                && options.get_extension(required).as_bool() == Some(true);
            if is_required && !oneof.fields().any(|f| message.has_field(&f)) {
                let names: Vec<String> = oneof.fields().map(|f| f.name().to_owned()).collect();
                return broken(
                    &join(path, oneof.name()),
                    format!("one of {} is required", names.join(", ")),
                );
            }
        }
    }
    for field in descriptor.fields() {
        let here = join(path, field.name());
        let options = field.options();
        let field_rules = options
            .has_extension(&rules.rules)
            .then(|| options.get_extension(&rules.rules).as_message().cloned())
            .flatten();
        let set = message.has_field(&field);
        // The rules of a oneof's member apply only when it is the one set.
        if field.containing_oneof().is_some() && !set {
            continue;
        }
        if let Some(field_rules) = &field_rules {
            check_field(&field, field_rules, message, set, &here)?;
        }
        if !set {
            continue;
        }
        match &*message.get_field(&field) {
            Value::Message(inner) => check_message(rules, inner, &here, depth + 1)?,
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(inner) = item {
                        check_message(rules, inner, &format!("{here}[{i}]"), depth + 1)?;
                    }
                }
            }
            Value::Map(entries) => {
                for (key, value) in entries {
                    if let Value::Message(inner) = value {
                        let key = match key {
                            MapKey::String(text) => text.clone(),
                            other => format!("{other:?}"),
                        };
                        check_message(rules, inner, &format!("{here}[{key}]"), depth + 1)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// An `Any`'s content, when weft's descriptors know its type (Envoy refuses one it does not
/// know; weft leaves that to Envoy).
fn check_any(
    rules: &Rules,
    message: &DynamicMessage,
    path: &str,
    depth: usize,
) -> Result<(), ConstraintError> {
    let type_url = message
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let bytes = message
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let name = type_url.rsplit('/').next().unwrap_or_default();
    let Some(descriptor) = descriptors().get_message_by_name(name) else {
        return Ok(());
    };
    match DynamicMessage::decode(descriptor, bytes) {
        Ok(inner) => check_message(rules, &inner, path, depth + 1),
        Err(_) => broken(path, format!("does not decode as {name}")),
    }
}

fn number(value: Option<&Value>) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    match value? {
        Value::I32(v) => Some(f64::from(*v)),
        Value::I64(v) => Some(*v as f64),
        Value::U32(v) => Some(f64::from(*v)),
        Value::U64(v) => Some(*v as f64),
        Value::F32(v) => Some(f64::from(*v)),
        Value::F64(v) => Some(*v),
        _ => None,
    }
}

/// A duration (or a `google.protobuf.Duration` in rules) in seconds.
fn seconds(message: &DynamicMessage) -> f64 {
    let part = |name: &str| number(message.get_field_by_name(name).as_deref()).unwrap_or(0.0);
    part("seconds") + part("nanos") / 1e9
}

fn bound(rules: &DynamicMessage, name: &str, duration: bool) -> Option<f64> {
    let field = rules.descriptor().get_field_by_name(name)?;
    if !rules.has_field(&field) {
        return None;
    }
    let value = rules.get_field(&field);
    if duration {
        value.as_message().map(seconds)
    } else {
        number(Some(&value))
    }
}

/// A bound of a number: its rule's name, the test, and how it reads.
type Bound = (&'static str, fn(f64, f64) -> bool, &'static str);

/// Checks `value` against gt, gte, lt, lte of `rules`.
fn within(
    rules: &DynamicMessage,
    value: f64,
    duration: bool,
    field: &str,
) -> Result<(), ConstraintError> {
    let show = |v: f64| {
        if duration {
            format!("{v}s")
        } else {
            format!("{v}")
        }
    };
    let checks: [Bound; 4] = [
        ("gt", |v, b| v > b, "greater than"),
        ("gte", |v, b| v >= b, "at least"),
        ("lt", |v, b| v < b, "less than"),
        ("lte", |v, b| v <= b, "at most"),
    ];
    for (name, holds, words) in checks {
        if let Some(limit) = bound(rules, name, duration)
            && !holds(value, limit)
        {
            return broken(
                field,
                format!("must be {words} {}, not {}", show(limit), show(value)),
            );
        }
    }
    Ok(())
}

fn check_field(
    field: &FieldDescriptor,
    rules: &DynamicMessage,
    message: &DynamicMessage,
    set: bool,
    here: &str,
) -> Result<(), ConstraintError> {
    // The rules message has one field set: the kind of rule (string, uint32, message, ...).
    for (kind, kind_rules) in rules.fields() {
        let Value::Message(kind_rules) = kind_rules else {
            continue;
        };
        let value = message.get_field(field);
        match kind.name() {
            "message" => {
                let required = kind_rules
                    .get_field_by_name("required")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                if required && !set {
                    return broken(here, "is required");
                }
            }
            "duration" => {
                let required = kind_rules
                    .get_field_by_name("required")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                match value.as_message() {
                    Some(duration) if set => within(kind_rules, seconds(duration), true, here)?,
                    _ if required => return broken(here, "is required"),
                    _ => {}
                }
            }
            "string" => {
                if let Some(text) = value.as_str() {
                    let length = text.chars().count();
                    let min = number(kind_rules.get_field_by_name("min_len").as_deref());
                    #[allow(clippy::cast_precision_loss)]
                    if min.is_some_and(|min| (length as f64) < min)
                        && (set || !field.supports_presence())
                    {
                        return broken(
                            here,
                            format!("must be at least {} characters long", min.unwrap_or(0.0)),
                        );
                    }
                }
            }
            "repeated" => {
                if let Some(items) = value.as_list() {
                    let min = number(kind_rules.get_field_by_name("min_items").as_deref());
                    #[allow(clippy::cast_precision_loss)]
                    if min.is_some_and(|min| (items.len() as f64) < min) {
                        return broken(
                            here,
                            format!("needs at least {} items", min.unwrap_or(0.0)),
                        );
                    }
                }
            }
            "enum" => {
                let defined_only = kind_rules
                    .get_field_by_name("defined_only")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                if let (true, Some(number), Kind::Enum(descriptor)) =
                    (defined_only, value.as_enum_number(), field.kind())
                    && descriptor.get_value(number).is_none()
                {
                    return broken(
                        here,
                        format!("{number} is not a value of {}", descriptor.name()),
                    );
                }
            }
            "uint32" | "uint64" | "int32" | "int64" | "double" | "float" => {
                // Wrapped numbers (UInt32Value...) hold theirs in `value`.
                let number = match &*value {
                    Value::Message(wrapper) => {
                        number(wrapper.get_field_by_name("value").as_deref())
                    }
                    other => number(Some(other)),
                };
                if let Some(number) = number
                    && (set || !field.supports_presence())
                    && !field.is_list()
                {
                    within(kind_rules, number, false, here)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use envoy_types::pb::google::protobuf::Duration;

    use super::*;

    #[test]
    fn constraints_declared_in_the_protos_are_checked() {
        let route = RouteConfiguration {
            name: "outbound".into(),
            virtual_hosts: vec![VirtualHost {
                name: "x".into(),
                domains: vec![],
                ..VirtualHost::default()
            }],
            ..RouteConfiguration::default()
        };
        assert_eq!(
            check(&route).unwrap_err().to_string(),
            "virtual_hosts[0].domains: needs at least 1 items"
        );
        let cluster = Cluster {
            name: "c".into(),
            connect_timeout: Some(Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Cluster::default()
        };
        assert_eq!(
            check(&cluster).unwrap_err().to_string(),
            "connect_timeout: must be greater than 0s, not -1s"
        );
    }
}
