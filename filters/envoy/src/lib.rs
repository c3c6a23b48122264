//! `weft-envoy` builds `weft.wasm`, the one module that carries every weft feature into an
//! unmodified Envoy. It is a thin adapter: the root context reads the plugin configuration
//! once per configuration change with [`weft_policy::PluginConfig`], keeps the result in an
//! [`Rc`] and hands it to every request context, which only calls into that shared state.
//! Read [`WeftRoot::on_configure`] first, then [`WeftHttp`].
//!
//! Nothing here may panic (a panic aborts the VM and every request on it): host calls that can
//! fail are matched, not unwrapped, and a root context without a valid configuration still
//! creates request contexts, which refuse every request (fail closed).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use weft_policy::{ConfigError, PluginConfig};

/// Name of the counter of HTTP requests that reached a configured weft plugin.
pub const HTTP_REQUESTS_METRIC: &str = "weft_plugin_http_requests_total";

/// Status and body of the local reply for a request that reaches a plugin whose configuration
/// was refused; Envoy normally stops such requests itself, this is the second line of defence.
pub const UNCONFIGURED_STATUS: u32 = 503;
/// See [`UNCONFIGURED_STATUS`].
pub const UNCONFIGURED_BODY: &str =
    "weft: the plugin has no valid configuration; see the Envoy log\n";

// The entry point must be an exported, unmangled symbol; that is the only unsafe code here.
#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| Box::new(crate::WeftRoot::default()));
    }}
}

/// What every request context of one configured plugin shares.
#[derive(Debug)]
pub struct FilterState {
    /// The parsed plugin configuration.
    pub config: PluginConfig,
    /// Id of [`HTTP_REQUESTS_METRIC`], if Envoy let us define it (metrics never block traffic).
    requests_metric: Option<u32>,
}

/// The root context: one per plugin per VM, alive across configuration changes.
#[derive(Debug, Default)]
pub struct WeftRoot {
    state: Option<Rc<FilterState>>,
}

impl Context for WeftRoot {}

impl RootContext for WeftRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match PluginConfig::from_json(&bytes).and_then(refuse_unenforced_features) {
            Ok(config) => {
                let requests_metric = define_counter(HTTP_REQUESTS_METRIC);
                log::info!(
                    "weft {} configured (plugin configuration version {})",
                    env!("CARGO_PKG_VERSION"),
                    config.version
                );
                self.state = Some(Rc::new(FilterState {
                    config,
                    requests_metric,
                }));
                true
            }
            Err(err) => {
                // Drop any earlier state so nothing keeps serving a configuration that was replaced.
                self.state = None;
                log::error!("{err}; the plugin refuses to start");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Returning None would panic inside the SDK's dispatcher; an unconfigured context refuses instead.
        Some(Box::new(WeftHttp {
            state: self.state.clone(),
        }))
    }
}

/// One HTTP request (stream) passing through the plugin.
#[derive(Debug)]
pub struct WeftHttp {
    state: Option<Rc<FilterState>>,
}

impl Context for WeftHttp {}

impl HttpContext for WeftHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(state) = &self.state else {
            refuse_unconfigured();
            return Action::Pause;
        };
        if let Some(metric) = state.requests_metric
            && let Err(status) = hostcalls::increment_metric(metric, 1)
        {
            log::debug!("could not count the request: {status:?}");
        }
        Action::Continue
    }
}

/// Refuses a configuration with a feature this build does not enforce yet: accepting an access
/// policy without enforcing it would fail open.
fn refuse_unenforced_features(config: PluginConfig) -> Result<PluginConfig, ConfigError> {
    let unenforced = if config.access.is_some() {
        Some("access")
    } else if !config.splits.is_empty() {
        Some("splits")
    } else {
        None
    };
    match unenforced {
        Some(field) => Err(ConfigError::Invalid {
            field: field.to_owned(),
            reason: format!(
                "this weft.wasm ({}) does not implement `{field}` yet",
                env!("CARGO_PKG_VERSION")
            ),
        }),
        None => Ok(config),
    }
}

fn define_counter(name: &str) -> Option<u32> {
    match hostcalls::define_metric(MetricType::Counter, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("could not define metric {name}: {status:?}");
            None
        }
    }
}

fn refuse_unconfigured() {
    let reply = hostcalls::send_http_response(
        UNCONFIGURED_STATUS,
        vec![
            ("content-type", "text/plain"),
            ("x-weft-refused", "unconfigured"),
        ],
        Some(UNCONFIGURED_BODY.as_bytes()),
    );
    if let Err(status) = reply {
        // Without a local reply the request must still not pass: reset it.
        let _ = hostcalls::log(LogLevel::Error, &format!("local reply failed: {status:?}"));
        let _ = hostcalls::reset_http_request();
    }
}
