//! The compiled bundle on the wire: the form in which the controller hands a plugin
//! configuration to the filter inside Envoy. It carries the same [`PluginConfig`] as the JSON
//! document (docs/plugin-configuration.md), plus every regex already compiled to its automaton
//! ([`crate::matcher`]), so reading it takes no JSON parser and no regex compiler: lengths,
//! bytes, and a check of each automaton. [`decode`] gives the configuration back
//! (docs/decisions.md).
//!
//! Layout (docs/plugin-configuration.md#the-compiled-bundle): the magic bytes `WEFT`, the
//! weft version that wrote it (a bundle of another version is refused, saying so), then the
//! sections in this order: identity, destination port, caller identity (a byte), metrics,
//! HTTP matches, access, splits. Integers are LEB128 varints, strings and byte strings a length
//! and their bytes, lists a count and their items, optional values a 0 or 1 byte first. A
//! source's SPIFFE ID in the access trust domain is written without its common prefix.

use std::collections::BTreeMap;
#[cfg(feature = "authoring")]
use std::collections::HashMap;

use crate::bundle::{
    AccessMode, AccessPolicy, Allows, Direction, Grant, HttpMatchSpec, Identity, MetricsConfig,
    ServiceHosts, SplitTable, StickyKey, WeightedBackend,
};
use crate::config::{CONFIG_VERSION, CallerIdentity, PluginConfig};
use crate::matcher::{Matcher, MatcherError};

/// The first bytes of every compiled bundle.
pub const MAGIC: &[u8; 4] = b"WEFT";
/// The weft version that writes and reads bundles; bundles of other versions are refused.
pub const WEFT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why bytes are not a bundle this build reads, or a configuration cannot become one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not a compiled bundle at all.
    #[error("not a compiled weft bundle (it does not start with `WEFT`); use `weft compile`")]
    NotABundle,
    /// A bundle of another weft version.
    #[error(
        "the bundle was compiled by weft {found}, and this is weft {WEFT_VERSION}: compile it again with weft {WEFT_VERSION}, or run the controller and weft.wasm of one release"
    )]
    OtherVersion {
        /// The version that wrote the bundle.
        found: String,
    },
    /// The bytes end or go wrong inside a field.
    #[error("field `{field}`: {reason}")]
    Malformed {
        /// Path of the field being read.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A regex of the configuration does not compile (when encoding).
    #[error("field `{field}`: {source}")]
    Regex {
        /// Path of the regex.
        field: String,
        /// Why.
        source: MatcherError,
    },
}

impl WireError {
    /// What is wrong, without the field's path.
    pub fn reason(&self) -> String {
        match self {
            WireError::Malformed { reason, .. } => reason.clone(),
            WireError::Regex { source, .. } => source.to_string(),
            WireError::NotABundle | WireError::OtherVersion { .. } => self.to_string(),
        }
    }

    /// Path of the field at fault (`(root)` for the header).
    pub fn field(&self) -> &str {
        match self {
            WireError::Malformed { field, .. } | WireError::Regex { field, .. } => field,
            WireError::NotABundle | WireError::OtherVersion { .. } => "(root)",
        }
    }
}

/// The automata of one HTTP match, in the order of its regexes.
#[derive(Debug, Clone, Default)]
pub struct MatchAutomata {
    /// The path regex's automaton.
    pub path: Option<Matcher>,
    /// One automaton per header regex, in the spec's order.
    pub headers: Vec<Matcher>,
}

/// A decoded bundle: the configuration and its compiled regexes (`automata[i]` belongs to
/// `config.http_matches[i]`).
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The plugin configuration.
    pub config: PluginConfig,
    /// The automata of `config.http_matches`, index for index.
    pub automata: Vec<MatchAutomata>,
}

#[cfg(feature = "authoring")]
/// Compiles the automata of `config`'s HTTP matches, each regex once per encoder: the pods of
/// a mesh share their route groups, so the controller compiles a pattern once per rebuild.
#[derive(Debug, Default)]
pub struct Encoder {
    /// `(header regex?, pattern)` to the automaton's bytes.
    compiled: HashMap<(bool, String), Vec<u8>>,
}

#[cfg(feature = "authoring")]
impl Encoder {
    /// `config` as a bundle.
    ///
    /// # Errors
    /// [`WireError::Regex`] naming the field of a regex that does not compile.
    pub fn encode(&mut self, config: &PluginConfig) -> Result<Vec<u8>, WireError> {
        let mut out = Writer::default();
        out.bytes.extend_from_slice(MAGIC);
        out.string(WEFT_VERSION);
        out.option(config.identity.as_ref(), |out, identity| {
            out.string(&identity.namespace);
            out.string(&identity.service_account);
        });
        out.option(config.destination_port.as_ref(), |out, port| {
            out.varint(u64::from(*port));
        });
        out.bytes.push(match config.caller_identity {
            CallerIdentity::Connection => 0,
            CallerIdentity::ForwardedClientCert => 1,
        });
        out.option(config.metrics.as_ref(), write_metrics);
        out.varint(config.http_matches.len() as u64);
        for (i, spec) in config.http_matches.iter().enumerate() {
            out.string(&spec.name);
            match &spec.path_regex {
                None => out.bytes.push(0),
                Some(pattern) => {
                    out.bytes.push(1);
                    out.string(pattern);
                    let field = || format!("http_matches[{i}].path_regex");
                    out.byte_string(self.automaton(false, pattern, field)?);
                }
            }
            out.list(&spec.methods, |out, method| out.string(method));
            out.varint(spec.headers.len() as u64);
            for (name, pattern) in &spec.headers {
                out.string(name);
                out.string(pattern);
                let field = || format!("http_matches[{i}].headers.{name}");
                out.byte_string(self.automaton(true, pattern, field)?);
            }
        }
        out.option(config.access.as_ref(), write_access);
        out.list(&config.splits, write_split);
        Ok(out.bytes)
    }

    fn automaton(
        &mut self,
        header: bool,
        pattern: &str,
        field: impl Fn() -> String,
    ) -> Result<&[u8], WireError> {
        let key = (header, pattern.to_owned());
        if !self.compiled.contains_key(&key) {
            let matcher = if header {
                Matcher::header(pattern)
            } else {
                Matcher::path(pattern)
            }
            .map_err(|source| WireError::Regex {
                field: field(),
                source,
            })?;
            self.compiled.insert(key.clone(), matcher.to_bytes());
        }
        Ok(self.compiled.get(&key).map_or(&[], Vec::as_slice))
    }
}

#[cfg(feature = "authoring")]
/// `config` as a bundle (one-off; see [`Encoder`] to share compiled regexes).
///
/// # Errors
/// [`WireError::Regex`] naming the field of a regex that does not compile.
pub fn encode(config: &PluginConfig) -> Result<Vec<u8>, WireError> {
    Encoder::default().encode(config)
}

/// Whether `bytes` start like a bundle (rather than a JSON document).
pub fn is_bundle(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Reads a bundle [`Encoder::encode`] wrote, checking every automaton.
///
/// # Errors
/// A [`WireError`] naming the field where the bytes stop making sense.
pub fn decode(bytes: &[u8]) -> Result<Bundle, WireError> {
    decode_until(bytes, Section::All)
}

/// Reads only the identity and metrics sections of a bundle, which come first, so that the
/// metrics of a bundle whose later sections are unusable can keep counting.
///
/// # Errors
/// A [`WireError`] when those first sections cannot be read.
pub fn decode_metrics(bytes: &[u8]) -> Result<PluginConfig, WireError> {
    decode_until(bytes, Section::Metrics).map(|bundle| bundle.config)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Metrics,
    All,
}

// The readers of the bundle's parts (`read_http_match`, `read_metrics`, `read_access`,
// `read_grant`, `read_split`) stay functions of their own (`inline(never)`): V8 compiles each
// wasm function whole when Envoy loads the module, and the memory the largest one takes stays
// in Envoy's heap afterwards (docs/decisions.md, "Small functions for V8").
fn decode_until(bytes: &[u8], last: Section) -> Result<Bundle, WireError> {
    let mut r = Reader::header(bytes)?;
    let mut config = PluginConfig {
        version: CONFIG_VERSION,
        ..PluginConfig::default()
    };
    config.identity = r.option(&|| "identity".to_owned(), |r| {
        Ok(Identity {
            namespace: r.string(&|| "identity.namespace".to_owned())?,
            service_account: r.string(&|| "identity.service_account".to_owned())?,
        })
    })?;
    config.destination_port = r.option(&|| "destination_port".to_owned(), |r| {
        r.u16(&|| "destination_port".to_owned())
    })?;
    config.caller_identity = match r.byte(&|| "caller_identity".to_owned())? {
        0 => CallerIdentity::Connection,
        1 => CallerIdentity::ForwardedClientCert,
        other => return Err(r.bad_tag("caller_identity".to_owned(), other)),
    };
    config.metrics = r.option(&|| "metrics".to_owned(), read_metrics)?;
    if last == Section::Metrics {
        return Ok(Bundle {
            config,
            automata: Vec::new(),
        });
    }
    let count = r.count(&|| "http_matches".to_owned())?;
    let mut automata = Vec::with_capacity(count);
    for i in 0..count {
        let (spec, compiled) = read_http_match(&mut r, i)?;
        config.http_matches.push(spec);
        automata.push(compiled);
    }
    config.access = r.option(&|| "access".to_owned(), read_access)?;
    config.splits = r.list(&|| "splits".to_owned(), read_split)?;
    if r.rest() != 0 {
        return Err(r.malformed(
            "(end)".to_owned(),
            format!("{} bytes after the last section", r.rest()),
        ));
    }
    Ok(Bundle { config, automata })
}

#[inline(never)]
fn read_http_match(
    r: &mut Reader<'_>,
    i: usize,
) -> Result<(HttpMatchSpec, MatchAutomata), WireError> {
    let at = |part: &str| format!("http_matches[{i}].{part}");
    let name = r.string(&|| at("name"))?;
    let mut compiled = MatchAutomata::default();
    let path_regex = match r.byte(&|| at("path_regex"))? {
        0 => None,
        1 => {
            let pattern = r.string(&|| at("path_regex"))?;
            compiled.path = Some(r.automaton(&|| at("path_regex"))?);
            Some(pattern)
        }
        other => return Err(r.bad_tag(at("path_regex"), other)),
    };
    let methods = r.list(&|| at("methods"), |r, m| {
        r.string(&|| at(&format!("methods[{m}]")))
    })?;
    let headers_count = r.count(&|| at("headers"))?;
    let mut headers = Vec::with_capacity(headers_count);
    for h in 0..headers_count {
        let name = r.string(&|| at(&format!("headers[{h}]")))?;
        let pattern = r.string(&|| at(&format!("headers.{name}")))?;
        compiled
            .headers
            .push(r.automaton(&|| at(&format!("headers.{name}")))?);
        headers.push((name, pattern));
    }
    Ok((
        HttpMatchSpec {
            name,
            path_regex,
            methods,
            headers,
        },
        compiled,
    ))
}

#[cfg(feature = "authoring")]
fn write_metrics(out: &mut Writer, metrics: &MetricsConfig) {
    out.bytes.push(match metrics.direction {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    });
    out.string(&metrics.trust_domain);
    out.list(&metrics.services, |out, service| {
        out.string(&service.service);
        out.list(&service.hosts, |out, host| out.string(host));
    });
    out.option(metrics.service.as_ref(), |out, service| out.string(service));
}

#[inline(never)]
fn read_metrics(r: &mut Reader<'_>) -> Result<MetricsConfig, WireError> {
    let direction = match r.byte(&|| "metrics.direction".to_owned())? {
        0 => Direction::Inbound,
        1 => Direction::Outbound,
        other => return Err(r.bad_tag("metrics.direction".to_owned(), other)),
    };
    let trust_domain = r.string(&|| "metrics.trust_domain".to_owned())?;
    let services = r.list(&|| "metrics.services".to_owned(), |r, s| {
        Ok(ServiceHosts {
            service: r.string(&|| format!("metrics.services[{s}].service"))?,
            hosts: r.list(&|| format!("metrics.services[{s}].hosts"), |r, h| {
                r.string(&|| format!("metrics.services[{s}].hosts[{h}]"))
            })?,
        })
    })?;
    let service = r.option(&|| "metrics.service".to_owned(), |r| {
        r.string(&|| "metrics.service".to_owned())
    })?;
    Ok(MetricsConfig {
        direction,
        trust_domain,
        services,
        service,
    })
}

/// The part every SPIFFE ID of `trust_domain` starts with, left out on the wire.
fn spiffe_prefix(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/ns/")
}

#[cfg(feature = "authoring")]
fn write_access(out: &mut Writer, access: &AccessPolicy) {
    out.bytes.push(match access.mode {
        AccessMode::Enforce => 0,
        AccessMode::Permissive => 1,
        AccessMode::Audit => 2,
    });
    out.list(&access.unauthenticated_ports, |out, port| {
        out.varint(u64::from(*port));
    });
    out.string(&access.trust_domain);
    let prefix = spiffe_prefix(&access.trust_domain);
    out.varint(access.sources.len() as u64);
    for (id, grants) in &access.sources {
        match id.strip_prefix(&prefix) {
            Some(rest) => {
                out.bytes.push(1);
                out.string(rest);
            }
            None => {
                out.bytes.push(0);
                out.string(id);
            }
        }
        out.list(grants, |out, grant| out.varint(u64::from(*grant)));
    }
    out.list(&access.grants, |out, grant| {
        out.string(&grant.traffic_target);
        out.varint(u64::from(grant.rule));
        out.option(grant.port.as_ref(), |out, port| {
            out.varint(u64::from(*port))
        });
        match &grant.allows {
            Allows::Http {
                route_group,
                matches,
            } => {
                out.bytes.push(0);
                out.string(route_group);
                out.list(matches, |out, m| out.varint(u64::from(*m)));
            }
            Allows::Tcp { route, ports } | Allows::Udp { route, ports } => {
                out.bytes
                    .push(if matches!(grant.allows, Allows::Tcp { .. }) {
                        1
                    } else {
                        2
                    });
                out.string(route);
                out.list(ports, |out, port| out.varint(u64::from(*port)));
            }
        }
    });
}

#[inline(never)]
fn read_access(r: &mut Reader<'_>) -> Result<AccessPolicy, WireError> {
    let mode = match r.byte(&|| "access.mode".to_owned())? {
        0 => AccessMode::Enforce,
        1 => AccessMode::Permissive,
        2 => AccessMode::Audit,
        other => return Err(r.bad_tag("access.mode".to_owned(), other)),
    };
    let unauthenticated_ports = r.list(&|| "access.unauthenticated_ports".to_owned(), |r, p| {
        r.u16(&|| format!("access.unauthenticated_ports[{p}]"))
    })?;
    let trust_domain = r.string(&|| "access.trust_domain".to_owned())?;
    let prefix = spiffe_prefix(&trust_domain);
    let count = r.count(&|| "access.sources".to_owned())?;
    let mut sources = BTreeMap::new();
    for s in 0..count {
        let field = || format!("access.sources[{s}]");
        let id = match r.byte(&field)? {
            0 => r.string(&field)?,
            1 => format!("{prefix}{}", r.string(&field)?),
            other => return Err(r.bad_tag(field(), other)),
        };
        let grants = r.list(&|| format!("access.sources.{id}"), |r, g| {
            r.u32(&|| format!("access.sources.{id}[{g}]"))
        })?;
        sources.insert(id, grants);
    }
    let grants = r.list(&|| "access.grants".to_owned(), read_grant)?;
    Ok(AccessPolicy {
        mode,
        unauthenticated_ports,
        trust_domain,
        sources,
        grants,
    })
}

#[inline(never)]
fn read_grant(r: &mut Reader<'_>, g: usize) -> Result<Grant, WireError> {
    let at = |part: &str| format!("access.grants[{g}].{part}");
    let traffic_target = r.string(&|| at("traffic_target"))?;
    let rule = r.u32(&|| at("rule"))?;
    let port = r.option(&|| at("port"), |r| r.u16(&|| at("port")))?;
    let allows = match r.byte(&|| at("allows"))? {
        0 => Allows::Http {
            route_group: r.string(&|| at("allows.http.route_group"))?,
            matches: r.list(&|| at("allows.http.matches"), |r, m| {
                r.u32(&|| at(&format!("allows.http.matches[{m}]")))
            })?,
        },
        kind @ (1 | 2) => {
            let route = r.string(&|| at("allows.route"))?;
            let ports = r.list(&|| at("allows.ports"), |r, p| {
                r.u16(&|| at(&format!("allows.ports[{p}]")))
            })?;
            if kind == 1 {
                Allows::Tcp { route, ports }
            } else {
                Allows::Udp { route, ports }
            }
        }
        other => return Err(r.bad_tag(at("allows"), other)),
    };
    Ok(Grant {
        traffic_target,
        rule,
        port,
        allows,
    })
}

#[cfg(feature = "authoring")]
fn write_split(out: &mut Writer, split: &SplitTable) {
    out.string(&split.traffic_split);
    out.string(&split.service);
    out.list(&split.hosts, |out, host| out.string(host));
    out.list(&split.matches, |out, m| out.varint(u64::from(*m)));
    out.list(&split.backends, |out, backend| {
        out.string(&backend.service);
        out.varint(backend.weight);
    });
    out.option(split.sticky.as_ref(), |out, sticky| match sticky {
        StickyKey::Header(name) => {
            out.bytes.push(0);
            out.string(name);
        }
        StickyKey::Cookie(name) => {
            out.bytes.push(1);
            out.string(name);
        }
    });
}

#[inline(never)]
fn read_split(r: &mut Reader<'_>, s: usize) -> Result<SplitTable, WireError> {
    let at = |part: &str| format!("splits[{s}].{part}");
    Ok(SplitTable {
        traffic_split: r.string(&|| at("traffic_split"))?,
        service: r.string(&|| at("service"))?,
        hosts: r.list(&|| at("hosts"), |r, h| {
            r.string(&|| at(&format!("hosts[{h}]")))
        })?,
        matches: r.list(&|| at("matches"), |r, m| {
            r.u32(&|| at(&format!("matches[{m}]")))
        })?,
        backends: r.list(&|| at("backends"), |r, b| {
            Ok(WeightedBackend {
                service: r.string(&|| at(&format!("backends[{b}].service")))?,
                weight: r.varint(&|| at(&format!("backends[{b}].weight")))?,
            })
        })?,
        sticky: r.option(&|| at("sticky"), |r| match r.byte(&|| at("sticky"))? {
            0 => Ok(StickyKey::Header(r.string(&|| at("sticky.header"))?)),
            1 => Ok(StickyKey::Cookie(r.string(&|| at("sticky.cookie"))?)),
            other => Err(r.bad_tag(at("sticky"), other)),
        })?,
    })
}

#[cfg(feature = "authoring")]
#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
}

#[cfg(feature = "authoring")]
impl Writer {
    fn varint(&mut self, mut value: u64) {
        loop {
            let low = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.bytes.push(low);
                return;
            }
            self.bytes.push(low | 0x80);
        }
    }

    fn byte_string(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.bytes.extend_from_slice(bytes);
    }

    fn string(&mut self, text: &str) {
        self.byte_string(text.as_bytes());
    }

    fn list<T>(&mut self, items: &[T], mut write: impl FnMut(&mut Self, &T)) {
        self.varint(items.len() as u64);
        for item in items {
            write(self, item);
        }
    }

    fn option<T>(&mut self, value: Option<&T>, write: impl FnOnce(&mut Self, &T)) {
        match value {
            None => self.bytes.push(0),
            Some(value) => {
                self.bytes.push(1);
                write(self, value);
            }
        }
    }
}

/// Reads a bundle front to back; every read names the field it is for, so an error can.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader past the magic and the version, which it checks.
    fn header(bytes: &'a [u8]) -> Result<Self, WireError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(WireError::NotABundle)?;
        let mut reader = Reader { bytes: rest, at: 0 };
        let version = reader.string(&|| "(version)".to_owned())?;
        if version != WEFT_VERSION {
            return Err(WireError::OtherVersion { found: version });
        }
        Ok(reader)
    }

    fn rest(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    fn malformed(&self, field: String, reason: String) -> WireError {
        WireError::Malformed { field, reason }
    }

    fn bad_tag(&self, field: String, tag: u8) -> WireError {
        self.malformed(field, format!("unknown tag {tag}"))
    }

    fn take(&mut self, len: usize, field: &dyn Fn() -> String) -> Result<&'a [u8], WireError> {
        let bytes: &'a [u8] = self.bytes;
        let taken = self
            .at
            .checked_add(len)
            .and_then(|end| bytes.get(self.at..end))
            .ok_or_else(|| {
                self.malformed(
                    field(),
                    format!(
                        "the bundle ends early ({len} bytes wanted, {} left)",
                        self.rest()
                    ),
                )
            })?;
        self.at += len;
        Ok(taken)
    }

    fn byte(&mut self, field: &dyn Fn() -> String) -> Result<u8, WireError> {
        Ok(self.take(1, field)?.first().copied().unwrap_or(0))
    }

    fn varint(&mut self, field: &dyn Fn() -> String) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte(field)?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed(field(), "an integer longer than 64 bits".to_owned()))
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, WireError> {
        let value = self.varint(field)?;
        u32::try_from(value)
            .map_err(|_| self.malformed(field(), format!("{value} is above {}", u32::MAX)))
    }

    fn u16(&mut self, field: &dyn Fn() -> String) -> Result<u16, WireError> {
        let value = self.varint(field)?;
        u16::try_from(value)
            .map_err(|_| self.malformed(field(), format!("{value} is not a port (0-65535)")))
    }

    /// A list's length, bounded by the bytes left (each item takes at least one), so that a
    /// damaged length cannot reserve memory the bundle does not account for.
    fn count(&mut self, field: &dyn Fn() -> String) -> Result<usize, WireError> {
        let count = self.varint(field)?;
        match usize::try_from(count) {
            Ok(count) if count <= self.rest() => Ok(count),
            _ => Err(self.malformed(
                field(),
                format!("{count} items, but only {} bytes left", self.rest()),
            )),
        }
    }

    fn byte_string(&mut self, field: &dyn Fn() -> String) -> Result<&'a [u8], WireError> {
        let len = self.count(field)?;
        self.take(len, field)
    }

    fn string(&mut self, field: &dyn Fn() -> String) -> Result<String, WireError> {
        let bytes = self.byte_string(field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.malformed(field(), "not UTF-8".to_owned()))
    }

    fn automaton(&mut self, field: &dyn Fn() -> String) -> Result<Matcher, WireError> {
        let bytes = self.byte_string(field)?;
        Matcher::from_bytes(bytes).map_err(|err| self.malformed(field(), err.to_string()))
    }

    fn list<T>(
        &mut self,
        field: &dyn Fn() -> String,
        mut read: impl FnMut(&mut Self, usize) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let count = self.count(field)?;
        let mut items = Vec::with_capacity(count);
        for i in 0..count {
            items.push(read(self, i)?);
        }
        Ok(items)
    }

    fn option<T>(
        &mut self,
        field: &dyn Fn() -> String,
        read: impl FnOnce(&mut Self) -> Result<T, WireError>,
    ) -> Result<Option<T>, WireError> {
        match self.byte(field)? {
            0 => Ok(None),
            1 => read(self).map(Some),
            other => Err(self.bad_tag(field(), other)),
        }
    }
}
