//! The HTTP filter: SMI access control per request on the server (inbound) side, TrafficSplit
//! routing on the client (outbound) side, and per-edge metrics on both. One pass over the
//! request headers runs every feature its plugin configuration enables (access first, so a
//! denied request is never routed; the metrics feature notes the edge), and the end of the
//! stream records the request's outcome and duration.

use std::borrow::Cow;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, GrpcStatusCode};
use weft_policy::CallerIdentity;
use weft_policy::bundle::AccessMode;
use weft_policy::engine::{Decision, Headers, HttpRequest, Routing};

use crate::edges::PendingRequest;
use crate::host::RequestHeaders;
use crate::{FilterState, HeaderPlan, ROUTE_HEADER, host};

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
    /// The request's edge and start, from its headers to its end (the metrics feature).
    pending: Option<PendingRequest>,
}

impl WeftHttp {
    /// A request context of a plugin with `state`, or of an unconfigured plugin.
    pub fn new(state: Option<Rc<FilterState>>) -> Self {
        Self {
            state,
            pending: None,
        }
    }
}

impl Context for WeftHttp {}

impl HttpContext for WeftHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(state) = &self.state else {
            let content_type = host::request_header("content-type");
            host::refuse_request(
                host::is_grpc(content_type.as_deref()),
                UNCONFIGURED_STATUS,
                GrpcStatusCode::Unavailable,
                UNCONFIGURED_HEADER,
                UNCONFIGURED_BODY,
            );
            return Action::Pause;
        };
        let started = match state.engine.metrics() {
            Some(_) => host::now_nanoseconds(),
            None => 0,
        };
        let headers = match state.header_plan {
            HeaderPlan::Nothing => RequestHeaders::default(),
            HeaderPlan::HostOnly => RequestHeaders::fetch_one(":authority"),
            HeaderPlan::Every => RequestHeaders::fetch_all(),
        };
        let peer = match (state.reads_peer_identity(), state.config.caller_identity) {
            (false, _) => None,
            (true, CallerIdentity::Connection) => host::peer_identity().map(Cow::Owned),
            (true, CallerIdentity::ForwardedClientCert) => {
                headers.forwarded_caller().map(Cow::Borrowed)
            }
        };
        let mut action = Action::Continue;
        if let Some(mode) = state.deciding_mode() {
            action = check_access(state, mode, &headers, peer.as_deref());
        }
        let mut backend = None;
        if action == Action::Continue && state.routes_splits() {
            backend = route_split(state, &headers);
        }
        if let Some(table) = state.engine.metrics()
            && let Ok(mut edges) = state.edges.try_borrow_mut()
        {
            self.pending = Some(edges.begin(
                table,
                peer.as_deref(),
                headers.header(":authority").as_deref(),
                backend,
                host::is_grpc(headers.header("content-type").as_deref()),
                started,
            ));
        }
        action
    }

    fn on_log(&mut self) {
        // Every stream ends here, answered, refused or reset, so every request is counted once.
        let (Some(state), Some(request)) = (&self.state, self.pending.take()) else {
            return;
        };
        let Some(table) = state.engine.metrics() else {
            return;
        };
        let status = host::response_code();
        let grpc_status = match request.grpc() {
            true => host::grpc_status(),
            false => None,
        };
        let ended = host::now_nanoseconds();
        if let Ok(mut edges) = state.edges.try_borrow_mut() {
            edges.finish(
                table,
                &mut host::EnvoyStats,
                &request,
                status,
                grpc_status,
                ended,
            );
        }
    }
}

/// Chooses the cluster of a request for a TrafficSplit's root service and hands it to the
/// router in [`ROUTE_HEADER`]; returns the chosen service (`name.namespace`). Any other request
/// passes untouched, except that a route header it arrived with is removed, so no client
/// chooses its own cluster.
fn route_split<'s>(state: &'s FilterState, headers: &RequestHeaders) -> Option<&'s str> {
    let split = if state.split_fallback {
        None
    } else {
        headers
            .header(":authority")
            .and_then(|host| state.engine.split_for_host(&host))
    };
    let Some(split) = split else {
        // Most requests are for no root service and carry no route header: when every header
        // was fetched that is known, and the host call to remove it is saved.
        if !headers.certainly_lacks(ROUTE_HEADER) && !host::remove_request_header(ROUTE_HEADER) {
            host::reset_request(&format!("could not remove {ROUTE_HEADER}"));
        }
        return None;
    };
    let (method, path) = (
        headers.header(":method").unwrap_or_default(),
        headers.header(":path").unwrap_or_default(),
    );
    let request = HttpRequest {
        source: None,
        method: &method,
        path: &path,
        port: 0,
        headers,
    };
    let cluster = match split.route(&request, fastrand::u64(..)) {
        Routing::Backend { service, .. } => service,
        Routing::Root {
            traffic_split,
            service,
            why,
        } => {
            log::debug!(
                "TrafficSplit {traffic_split}: {} {} goes to the root service {service}: {why}",
                request.method,
                request.path
            );
            service
        }
        Routing::NotSplit => return None,
    };
    // Replacing the header also replaces a value the client sent.
    if !host::set_request_header(ROUTE_HEADER, cluster) {
        host::reset_request(&format!("could not set {ROUTE_HEADER}"));
    }
    Some(cluster)
}

fn check_access(
    state: &FilterState,
    mode: AccessMode,
    headers: &RequestHeaders,
    source: Option<&str>,
) -> Action {
    let (method, path) = (
        headers.header(":method").unwrap_or_default(),
        headers.header(":path").unwrap_or_default(),
    );
    let request = HttpRequest {
        source,
        method: &method,
        path: &path,
        port: state.destination_port(),
        headers,
    };
    let decision = state.engine.decide_http(&request);
    let Decision::Deny { reason } = decision else {
        return Action::Continue;
    };
    let caller = source.unwrap_or("(no verified identity)");
    let (method, path) = (request.method, request.path);
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
        host::is_grpc(headers.header("content-type").as_deref()),
        DENIED_STATUS,
        GrpcStatusCode::PermissionDenied,
        DENIED_HEADER,
        &format!("weft: access denied: {reason}\n"),
    );
    Action::Pause
}
