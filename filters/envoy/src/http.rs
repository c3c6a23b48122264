//! The HTTP filter: SMI access control per request on the server (inbound) side, and
//! TrafficSplit routing on the client (outbound) side. One pass over the request runs every
//! feature its plugin configuration enables: access first, so a denied request is never routed.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, GrpcStatusCode};
use weft_policy::bundle::AccessMode;
use weft_policy::engine::{Decision, HttpRequest, Routing};

use crate::{FilterState, ROUTE_HEADER, host};

/// Status of the local reply for a request that reaches a plugin whose configuration was
/// refused; Envoy normally stops such requests itself, this is the second line of defence.
pub const UNCONFIGURED_STATUS: u32 = 503;
/// Body of that reply.
pub const UNCONFIGURED_BODY: &str =
    "weft: the plugin has no valid configuration; see the Envoy log\n";
/// Status of the reply to a request the access policy denies.
pub const DENIED_STATUS: u32 = 403;
/// Header (name, value) on every reply in which weft refuses a request.
pub const DENIED_HEADER: (&str, &str) = ("x-weft-access", "denied");
/// Header (name, value) on the reply of an unconfigured plugin.
pub const UNCONFIGURED_HEADER: (&str, &str) = ("x-weft-access", "unconfigured");

/// One HTTP request (stream) passing through the plugin.
#[derive(Debug)]
pub struct WeftHttp {
    state: Option<Rc<FilterState>>,
}

impl WeftHttp {
    /// A request context of a plugin with `state`, or of an unconfigured plugin.
    pub fn new(state: Option<Rc<FilterState>>) -> Self {
        Self { state }
    }
}

impl Context for WeftHttp {}

impl HttpContext for WeftHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(state) = &self.state else {
            host::refuse_request(
                UNCONFIGURED_STATUS,
                GrpcStatusCode::Unavailable,
                UNCONFIGURED_HEADER,
                UNCONFIGURED_BODY,
            );
            return Action::Pause;
        };
        host::count(state.metrics.http_requests);
        if let Some(mode) = state.deciding_mode()
            && check_access(state, mode) == Action::Pause
        {
            return Action::Pause;
        }
        if state.routes_splits() {
            route_split(state);
        }
        Action::Continue
    }
}

/// Chooses the cluster of a request for a TrafficSplit's root service and hands it to the
/// router in [`ROUTE_HEADER`]. Any other request passes untouched, except that a route header
/// it arrived with is removed, so no client chooses its own cluster.
fn route_split(state: &FilterState) {
    let split = if state.split_fallback {
        None
    } else {
        host::request_header(":authority").and_then(|host| state.engine.split_for_host(&host))
    };
    let Some(split) = split else {
        if !host::remove_request_header(ROUTE_HEADER) {
            host::reset_request(&format!("could not remove {ROUTE_HEADER}"));
        }
        return;
    };
    let (method, path) = if split.reads_request_line() {
        (
            host::request_header(":method").unwrap_or_default(),
            host::request_header(":path").unwrap_or_default(),
        )
    } else {
        (String::new(), String::new())
    };
    let headers: Vec<(String, String)> = split
        .header_names()
        .iter()
        .filter_map(|name| host::request_header(name).map(|value| (name.clone(), value)))
        .collect();
    let request = HttpRequest {
        source: None,
        method: &method,
        path: &path,
        port: 0,
        headers: &headers,
    };
    let cluster = match split.route(&request, fastrand::u64(..)) {
        Routing::Backend { service, .. } => service,
        Routing::Root {
            traffic_split,
            service,
            why,
        } => {
            log::debug!(
                "TrafficSplit {traffic_split}: {method} {path} goes to the root service {service}: {why}"
            );
            service
        }
        Routing::NotSplit => return,
    };
    // Replacing the header also replaces a value the client sent.
    if !host::set_request_header(ROUTE_HEADER, cluster) {
        host::reset_request(&format!("could not set {ROUTE_HEADER}"));
    }
}

fn check_access(state: &FilterState, mode: AccessMode) -> Action {
    let source = host::peer_identity();
    let method = host::request_header(":method").unwrap_or_default();
    let path = host::request_header(":path").unwrap_or_default();
    let headers: Vec<(String, String)> = state
        .engine
        .access_header_names()
        .iter()
        .filter_map(|name| host::request_header(name).map(|value| (name.clone(), value)))
        .collect();
    let request = HttpRequest {
        source: source.as_deref(),
        method: &method,
        path: &path,
        port: state.destination_port(),
        headers: &headers,
    };
    let decision = state.engine.decide_http(&request);
    let Decision::Deny { reason } = decision else {
        return Action::Continue;
    };
    let caller = source.as_deref().unwrap_or("(no verified identity)");
    if mode == AccessMode::Audit {
        host::count(state.metrics.http_audit);
        log::info!(
            "audit: would deny {method} {path} on port {} from {caller}: {reason}",
            request.port
        );
        return Action::Continue;
    }
    host::count(state.metrics.http_denied);
    log::debug!(
        "denied {method} {path} on port {} from {caller}: {reason}",
        request.port
    );
    host::refuse_request(
        DENIED_STATUS,
        GrpcStatusCode::PermissionDenied,
        DENIED_HEADER,
        &format!("weft: access denied: {reason}\n"),
    );
    Action::Pause
}
