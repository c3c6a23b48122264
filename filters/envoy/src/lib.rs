//! `weft-envoy` builds `weft.wasm`, the one module that carries every weft feature into an
//! unmodified Envoy. It is a thin adapter: the root context reads the plugin configuration (the
//! compiled bundle of [`weft_policy::wire`], regexes already automata) once per configuration
//! change, builds the [`weft_policy::engine::Engine`] from it and keeps
//! both in an [`Rc`] that every request or connection context shares; the contexts only read
//! facts from Envoy, ask the engine, and act on the answer. Read [`WeftRoot::on_configure`]
//! first, then [`http::WeftHttp`] and [`tcp::WeftTcp`].
//!
//! One module serves two kinds of Envoy filter: the HTTP filter (`root_id` `weft`, or empty)
//! and the network filter for TCP listeners (`root_id` `weft.tcp`).
//!
//! Nothing here may panic (a panic aborts the VM and every request on it): host calls that can
//! fail are matched, not unwrapped. The access feature fails closed: a context whose plugin has
//! no valid configuration refuses every request and closes every connection. Split routing
//! fails to the root service: an invalid configuration that certainly holds no access policy
//! ([`split_only`]) starts the plugin in a fallback that leaves every request to the Envoy
//! route of the service it addresses.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod edges;
pub mod host;
pub mod http;
pub mod tcp;
#[cfg(test)]
mod testing;

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::ContextType;
use weft_policy::bundle::{AccessMode, Direction};
use weft_policy::engine::Engine;
use weft_policy::wire;
use weft_policy::{ConfigError, PluginConfig};

use crate::edges::{EdgeRecorder, MetricHost};
use crate::host::{Envoy, Host};

/// HTTP requests the access feature denied (enforce mode).
pub const HTTP_DENIED_METRIC: &str = "weft_access_http_denied_total";
/// HTTP requests the access feature would have denied (audit mode).
pub const HTTP_AUDIT_METRIC: &str = "weft_access_http_audit_denied_total";
/// TCP connections the access feature closed (enforce mode).
pub const TCP_DENIED_METRIC: &str = "weft_access_tcp_denied_total";
/// TCP connections the access feature would have closed (audit mode).
pub const TCP_AUDIT_METRIC: &str = "weft_access_tcp_audit_denied_total";

pub use weft_policy::contract::{HTTP_ROOT_IDS, ROUTE_HEADER, TCP_ROOT_ID};

// The entry point must be an exported, unmangled symbol; that is the only unsafe code here.
#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| Box::new(crate::WeftRoot::default()));
    }}
}

/// Which kind of Envoy filter a plugin is, from its `root_id`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FilterKind {
    /// An HTTP filter (`envoy.filters.http.wasm`).
    #[default]
    Http,
    /// A network filter (`envoy.filters.network.wasm`) on a TCP listener.
    Tcp,
}

impl FilterKind {
    /// The kind a `root_id` selects.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `root_id` and the valid values.
    pub fn from_root_id(root_id: &str) -> Result<Self, ConfigError> {
        if root_id == TCP_ROOT_ID {
            Ok(FilterKind::Tcp)
        } else if HTTP_ROOT_IDS.contains(&root_id) {
            Ok(FilterKind::Http)
        } else {
            Err(ConfigError::Invalid {
                field: "root_id".to_owned(),
                reason: format!(
                    "{root_id:?} is not a weft filter; use \"weft\" for the HTTP filter or \"{TCP_ROOT_ID}\" for the network filter"
                ),
            })
        }
    }
}

/// Counter ids, each `None` when Envoy would not define it (metrics never block traffic).
#[derive(Debug, Clone, Copy)]
pub struct Metrics {
    http_denied: Option<u32>,
    http_audit: Option<u32>,
    tcp_denied: Option<u32>,
    tcp_audit: Option<u32>,
}

impl Metrics {
    fn define(host: &mut impl MetricHost) -> Self {
        Self {
            http_denied: host.define_counter(HTTP_DENIED_METRIC),
            http_audit: host.define_counter(HTTP_AUDIT_METRIC),
            tcp_denied: host.define_counter(TCP_DENIED_METRIC),
            tcp_audit: host.define_counter(TCP_AUDIT_METRIC),
        }
    }
}

/// Which request headers an HTTP request context fetches from Envoy, decided once per
/// configuration: every fetch is a costly round trip into the VM, so each request makes at
/// most one (see [`host::RequestHeaders`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderPlan {
    /// No feature reads a header.
    Nothing,
    /// Only the host is read: split routing by weight alone.
    HostOnly,
    /// Several headers are read (access decisions, metrics, or splits with `matches` or a
    /// sticky key): all of them in one call.
    Every,
}

impl HeaderPlan {
    /// The plan for a plugin whose features `engine` describes.
    pub fn for_engine(engine: &Engine, split_fallback: bool) -> Self {
        if deciding_mode(engine).is_some()
            || engine.splits_read_request()
            || engine.metrics().is_some()
        {
            HeaderPlan::Every
        } else if engine.has_splits() && !split_fallback {
            HeaderPlan::HostOnly
        } else {
            HeaderPlan::Nothing
        }
    }
}

/// The access mode when `engine` makes access decisions (`enforce` or `audit`); `None` when
/// the feature is off or permissive.
fn deciding_mode(engine: &Engine) -> Option<AccessMode> {
    engine
        .access_mode()
        .filter(|mode| *mode != AccessMode::Permissive)
}

/// What every request or connection context of one configured plugin shares.
#[derive(Debug)]
pub struct FilterState {
    /// The parsed plugin configuration.
    pub config: PluginConfig,
    /// The engine built from it.
    pub engine: Engine,
    /// The plugin's counters.
    pub metrics: Metrics,
    /// The configuration was refused but held only split routing: requests go to the Envoy
    /// route of the service they address, and a route header a client sent is removed.
    pub split_fallback: bool,
    /// The request headers each HTTP request fetches.
    pub header_plan: HeaderPlan,
    /// The metric ids of the edges seen, and the peers (the metrics feature).
    pub edges: RefCell<EdgeRecorder>,
}

impl FilterState {
    /// The shared state of a configured plugin (defines its counters in `host`).
    pub fn new(
        config: PluginConfig,
        engine: Engine,
        split_fallback: bool,
        host: &mut impl MetricHost,
    ) -> Self {
        let header_plan = HeaderPlan::for_engine(&engine, split_fallback);
        Self {
            config,
            engine,
            metrics: Metrics::define(host),
            split_fallback,
            header_plan,
            edges: RefCell::new(EdgeRecorder::default()),
        }
    }

    /// Whether HTTP requests need the caller's verified identity: for access decisions, and
    /// for the source of inbound metrics.
    pub fn reads_peer_identity(&self) -> bool {
        self.deciding_mode().is_some()
            || self
                .engine
                .metrics()
                .is_some_and(|metrics| metrics.direction() == Direction::Inbound)
    }

    /// The mode when access decisions must be made (`enforce` or `audit`); `None` when the
    /// feature is off or permissive, so traffic passes without a decision.
    pub fn deciding_mode(&self) -> Option<AccessMode> {
        deciding_mode(&self.engine)
    }

    /// Whether requests pass through split routing (and lose any route header they carry).
    pub fn routes_splits(&self) -> bool {
        self.split_fallback || self.engine.has_splits()
    }

    /// The destination port that port rules see for the current connection; not asked of
    /// Envoy (one host call saved per request) when no rule depends on it.
    pub fn destination_port(&self, host: &mut impl Host) -> u16 {
        match self.config.destination_port {
            Some(port) => port,
            None if self.engine.access_reads_port() => host.destination_port(),
            None => 0,
        }
    }
}

/// The root context: one per plugin per VM, alive across configuration changes.
#[derive(Debug, Default)]
pub struct WeftRoot {
    kind: FilterKind,
    state: Option<Rc<FilterState>>,
}

impl Context for WeftRoot {}

/// Reads a plugin configuration (a compiled bundle, [`weft_policy::wire`]) and builds its
/// engine: everything that can refuse a configuration, in one place.
///
/// # Errors
/// The [`ConfigError`] that names the field at fault; a JSON document is refused saying how to
/// compile it.
pub fn load(bytes: &[u8]) -> Result<(PluginConfig, Engine), ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::Missing);
    }
    let bundle = wire::decode(bytes).map_err(|err| ConfigError::Invalid {
        field: err.field().to_owned(),
        reason: match err {
            wire::WireError::NotABundle if bytes.trim_ascii_start().starts_with(b"{") => {
                JSON_REFUSED.to_owned()
            }
            err => err.reason(),
        },
    })?;
    let engine = Engine::with_automata(&bundle.config, bundle.automata).map_err(|err| {
        ConfigError::Invalid {
            field: err.field().to_owned(),
            reason: err.reason(),
        }
    })?;
    Ok((bundle.config, engine))
}

/// Why a JSON document is refused, and what to do instead.
pub const JSON_REFUSED: &str = "this is a JSON document, and weft.wasm reads the compiled bundle: compile it with `weft compile --bundle` (or let the controller push it) and pass it as a google.protobuf.BytesValue; see docs/plugin-configuration.md";

impl RootContext for WeftRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // Drop any earlier state first, so nothing keeps serving a configuration being replaced.
        self.state = None;
        let started = host::now_nanoseconds();
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let loaded = FilterKind::from_root_id(&host::plugin_root_id()).and_then(|kind| {
            // The kind is known even if the configuration is refused, so the contexts Envoy
            // may still create are of the right type (the SDK would panic otherwise) and refuse.
            self.kind = kind;
            load(&bytes)
        });
        // Each VM seeds its own generator of split rolls from the host's entropy (WASI).
        fastrand::seed(std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            0u8,
        ));
        match loaded {
            Ok((config, engine)) => {
                let kind = self.kind;
                let elapsed_us = host::now_nanoseconds().saturating_sub(started) / 1_000;
                log::info!(
                    "weft {} configured as the {} filter in {}.{:03} ms from {} bytes of {} (plugin configuration version {}; access {}; splits {}; metrics {})",
                    env!("CARGO_PKG_VERSION"),
                    match kind {
                        FilterKind::Http => "HTTP",
                        FilterKind::Tcp => "TCP",
                    },
                    elapsed_us / 1_000,
                    elapsed_us % 1_000,
                    bytes.len(),
                    "compiled bundle",
                    config.version,
                    engine.access_mode().map_or("off", |mode| mode.as_str()),
                    config.splits.len(),
                    engine
                        .metrics()
                        .map_or("off", |metrics| metrics.direction().as_str()),
                );
                for (traffic_split, service) in engine.splits_without_backends() {
                    log::warn!(
                        "TrafficSplit {traffic_split}: no backend has a weight above 0 and a port of the root service, so every request for {service} goes to the root service"
                    );
                }
                self.state = Some(Rc::new(FilterState::new(config, engine, false, &mut Envoy)));
                true
            }
            Err(err) if self.kind == FilterKind::Http && split_only(&bytes) => {
                log::error!(
                    "{err}; split routing falls back: every request goes to the Envoy route of the service it addresses (the root service) until the configuration is fixed"
                );
                let (config, engine) = fallback(&bytes);
                self.state = Some(Rc::new(FilterState::new(config, engine, true, &mut Envoy)));
                true
            }
            Err(err) => {
                log::error!("{err}; the plugin refuses to start");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(match self.kind {
            FilterKind::Http => ContextType::HttpContext,
            FilterKind::Tcp => ContextType::StreamContext,
        })
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Returning None would panic inside the SDK's dispatcher; an unconfigured context refuses instead.
        Some(Box::new(http::WeftHttp::new(self.state.clone(), Envoy)))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(tcp::WeftTcp::new(self.state.clone(), Envoy)))
    }
}

/// The plugin of a split-only configuration that was refused: no split routing, and the
/// metrics of the bundle's `identity` and `metrics` when those read on their own (they come
/// first; so the traffic stays visible while the configuration is broken), else nothing.
fn fallback(bytes: &[u8]) -> (PluginConfig, Engine) {
    let salvaged = wire::decode_metrics(bytes)
        .ok()
        .filter(|config| config.metrics.is_some())
        .and_then(|config| {
            let engine = Engine::with_automata(&config, Vec::new()).ok()?;
            Some((config, engine))
        });
    match salvaged {
        Some(loaded) => {
            log::info!("the metrics of the refused configuration keep counting");
            loaded
        }
        None => (PluginConfig::default(), Engine::empty()),
    }
}

/// Whether a configuration certainly enables no access control: a bundle that reads whole,
/// with split tables and no access section (its engine refused it: an index out of range, say).
/// Only such a configuration may fall back to the root service when it is refused; anything
/// else (a bundle that does not read, a JSON document) is refused, because access fails closed.
pub fn split_only(bytes: &[u8]) -> bool {
    wire::decode(bytes)
        .is_ok_and(|bundle| !bundle.config.splits.is_empty() && bundle.config.access.is_none())
}

#[cfg(test)]
mod tests {
    use super::{HeaderPlan, JSON_REFUSED, load, split_only};
    use weft_policy::PluginConfig;

    /// The bundle `weft compile` would make of the JSON document `text`.
    fn bundle(text: &str) -> Vec<u8> {
        let config = PluginConfig::from_json(text.as_bytes()).unwrap();
        weft_policy::wire::encode(&config).unwrap()
    }

    fn plan(configuration: &str, split_fallback: bool) -> HeaderPlan {
        let (_, engine) = load(&bundle(configuration)).unwrap();
        HeaderPlan::for_engine(&engine, split_fallback)
    }

    const ACCESS: &str =
        r#""access": {"trust_domain": "cluster.local", "sources": {}, "grants": []}"#;
    const SPLIT: &str = r#""splits": [{"traffic_split": "web/canary", "service": "website.web",
        "hosts": ["website.web"], "backends": [{"service": "website-v1.web", "weight": 1}]}]"#;

    #[test]
    fn each_request_fetches_only_the_headers_its_features_read() {
        assert_eq!(plan(r#"{"version": 1}"#, false), HeaderPlan::Nothing);
        assert_eq!(
            plan(&format!(r#"{{"version": 1, {SPLIT}}}"#), false),
            HeaderPlan::HostOnly
        );
        let sticky = SPLIT.replace(
            r#""weight": 1}]"#,
            r#""weight": 1}], "sticky": {"cookie": "user"}"#,
        );
        assert_eq!(
            plan(&format!(r#"{{"version": 1, {sticky}}}"#), false),
            HeaderPlan::Every
        );
        assert_eq!(
            plan(&format!(r#"{{"version": 1, {ACCESS}}}"#), false),
            HeaderPlan::Every
        );
        let permissive = ACCESS.replace(r#""grants": []"#, r#""grants": [], "mode": "permissive""#);
        assert_eq!(
            plan(&format!(r#"{{"version": 1, {permissive}}}"#), false),
            HeaderPlan::Nothing
        );
        // The fallback routes nothing itself: it only removes a client's route header.
        assert_eq!(plan(r#"{"version": 1}"#, true), HeaderPlan::Nothing);
        // Metrics read the host and content-type, alone or with a weighted split.
        const METRICS: &str =
            r#""metrics": {"direction": "outbound", "trust_domain": "cluster.local"}"#;
        assert_eq!(
            plan(&format!(r#"{{"version": 1, {METRICS}}}"#), false),
            HeaderPlan::Every
        );
        assert_eq!(
            plan(&format!(r#"{{"version": 1, {SPLIT}, {METRICS}}}"#), false),
            HeaderPlan::Every
        );
    }

    #[test]
    fn a_bundle_loads_as_the_document_it_was_compiled_from_and_json_is_refused() {
        let document = format!(r#"{{"version": 1, {ACCESS}, {SPLIT}}}"#);
        let (decoded, engine) = load(&bundle(&document)).unwrap();
        assert_eq!(
            decoded,
            PluginConfig::from_json(document.as_bytes()).unwrap()
        );
        assert!(engine.has_access_policy() && engine.has_splits());
        // A bundle cut short is refused, naming where it stopped.
        let whole = bundle(&document);
        let err = load(&whole[..whole.len() - 1]).unwrap_err().to_string();
        assert!(err.contains("field `splits"), "{err}");
        let err = load(document.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(JSON_REFUSED), "{err}");
        assert!(load(b"").is_err() && load(b" \n").is_err());
    }

    #[test]
    fn only_a_bundle_that_reads_whole_with_splits_and_no_access_may_fall_back() {
        let split = |extra: &str| bundle(&format!(r#"{{"version": 1, {SPLIT}{extra}}}"#));
        // An index out of range: the bundle reads, the engine refuses it.
        let broken = bundle(&format!(
            r#"{{"version": 1, {}}}"#,
            SPLIT.replace(r#""backends""#, r#""matches": [7], "backends""#)
        ));
        assert!(load(&broken).is_err());
        assert!(split_only(&broken));
        assert!(split_only(&split("")));
        assert!(!split_only(&split(&format!(", {ACCESS}"))));
        let whole = split("");
        assert!(!split_only(&whole[..whole.len() - 1]));
        for text in [
            format!(r#"{{"version": 1, {SPLIT}}}"#),
            r#"{"splits": [],"#.to_owned(),
            String::new(),
        ] {
            assert!(!split_only(text.as_bytes()), "{text}");
        }
    }
}
