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
use crate::host::{Envoy, Host, RequestHeaders};
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

/// One HTTP request (stream) passing through the plugin, in host `H` (Envoy in the module).
#[derive(Debug)]
pub struct WeftHttp<H: Host = Envoy> {
    state: Option<Rc<FilterState>>,
    /// The request's edge and start, from its headers to its end (the metrics feature).
    pending: Option<PendingRequest>,
    host: H,
}

impl<H: Host> WeftHttp<H> {
    /// A request context of a plugin with `state`, or of an unconfigured plugin.
    pub fn new(state: Option<Rc<FilterState>>, host: H) -> Self {
        Self {
            state,
            pending: None,
            host,
        }
    }

    /// The host it runs in.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The request headers arrived: decide access, route a split, note the edge.
    pub fn request_headers(&mut self) -> Action {
        let host = &mut self.host;
        let Some(state) = &self.state else {
            // Fails closed: no configuration, no request.
            let headers = host.request_headers(HeaderPlan::Every);
            host.refuse_request(
                host::is_grpc(headers.header("content-type").as_deref()),
                UNCONFIGURED_STATUS,
                GrpcStatusCode::Unavailable,
                UNCONFIGURED_HEADER,
                UNCONFIGURED_BODY,
            );
            return Action::Pause;
        };
        let started = match state.engine.metrics() {
            Some(_) => host.now_nanoseconds(),
            None => 0,
        };
        let headers = host.request_headers(state.header_plan);
        let peer = match (state.reads_peer_identity(), state.config.caller_identity) {
            (false, _) => None,
            (true, CallerIdentity::Connection) => host.peer_identity().map(Cow::Owned),
            (true, CallerIdentity::ForwardedClientCert) => {
                headers.forwarded_caller().map(Cow::Borrowed)
            }
        };
        let mut action = Action::Continue;
        if let Some(mode) = state.deciding_mode() {
            action = check_access(host, state, mode, &headers, peer.as_deref());
        }
        let mut backend = None;
        if action == Action::Continue && state.routes_splits() {
            backend = route_split(host, state, &headers);
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

    /// The stream ended (answered, refused or reset): count the request once.
    pub fn log(&mut self) {
        let (Some(state), Some(request)) = (&self.state, self.pending.take()) else {
            return;
        };
        let Some(table) = state.engine.metrics() else {
            return;
        };
        let host = &mut self.host;
        let status = host.response_code();
        let grpc_status = match request.grpc() {
            true => host.grpc_status(),
            false => None,
        };
        let ended = host.now_nanoseconds();
        if let Ok(mut edges) = state.edges.try_borrow_mut() {
            edges.finish(table, host, &request, status, grpc_status, ended);
        }
    }
}

impl Context for WeftHttp {}

impl HttpContext for WeftHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.request_headers()
    }

    fn on_log(&mut self) {
        self.log();
    }
}

/// Chooses the cluster of a request for a TrafficSplit's root service and hands it to the
/// router in [`ROUTE_HEADER`]; returns the chosen service (`name.namespace`). Any other request
/// passes untouched, except that a route header it arrived with is removed, so no client
/// chooses its own cluster.
fn route_split<'s>(
    host: &mut impl Host,
    state: &'s FilterState,
    headers: &RequestHeaders,
) -> Option<&'s str> {
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
        if !headers.certainly_lacks(ROUTE_HEADER) && !host.remove_request_header(ROUTE_HEADER) {
            host.reset_request(&format!("could not remove {ROUTE_HEADER}"));
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
    let cluster = match split.route(&request, host.roll()) {
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
    if !host.set_request_header(ROUTE_HEADER, cluster) {
        host.reset_request(&format!("could not set {ROUTE_HEADER}"));
    }
    Some(cluster)
}

fn check_access(
    host: &mut impl Host,
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
        port: state.destination_port(host),
        headers,
    };
    let decision = state.engine.decide_http(&request);
    let Decision::Deny { reason } = decision else {
        return Action::Continue;
    };
    let caller = source.unwrap_or("(no verified identity)");
    let (method, path) = (request.method, request.path);
    if mode == AccessMode::Audit {
        host.increment(state.metrics.http_audit);
        log::info!(
            "audit: would deny {method} {path} on port {} from {caller}: {reason}",
            request.port
        );
        return Action::Continue;
    }
    host.increment(state.metrics.http_denied);
    log::debug!(
        "denied {method} {path} on port {} from {caller}: {reason}",
        request.port
    );
    host.refuse_request(
        host::is_grpc(headers.header("content-type").as_deref()),
        DENIED_STATUS,
        GrpcStatusCode::PermissionDenied,
        DENIED_HEADER,
        &format!("weft: access denied: {reason}\n"),
    );
    Action::Pause
}

#[cfg(test)]
mod tests {
    use weft_policy::bundle::AccessMode;
    use weft_policy::compile::Side;

    use super::*;
    use crate::testing::{FRONTEND, RecordingHost, state};

    fn get(path: &str) -> Vec<(&str, &str)> {
        vec![
            (":authority", "api.shop:8080"),
            (":method", "GET"),
            (":path", path),
        ]
    }

    /// `headers` from `peer` through shop/api's inbound plugin in `mode`.
    fn inbound(
        mode: AccessMode,
        peer: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (Action, RecordingHost) {
        let mut host = RecordingHost::request(peer, headers);
        host.port = 8080;
        let state = state(
            "shop/api",
            Side::Inbound,
            |config| {
                if let Some(access) = config.access.as_mut() {
                    access.mode = mode;
                }
            },
            &mut host,
        );
        let mut http = WeftHttp::new(Some(state), host);
        let action = http.request_headers();
        http.host.response_code = 200;
        http.log();
        (action, http.host)
    }

    #[test]
    fn an_allowed_request_passes_untouched_and_is_counted_on_its_edge() {
        let (action, host) = inbound(AccessMode::Enforce, Some(FRONTEND), &get("/items"));
        assert_eq!(action, Action::Continue);
        assert!(
            host.replies.is_empty() && host.resets.is_empty(),
            "{host:?}"
        );
        assert!(host.set.is_empty() && host.removed.is_empty(), "{host:?}");
        assert_eq!(host.total(crate::HTTP_DENIED_METRIC), 0);
        assert_eq!(host.total("weft_requests_total"), 1, "{:?}", host.metrics);
    }

    #[test]
    fn a_denied_request_is_answered_403_with_the_reason_and_counted_denied() {
        let (action, host) = inbound(AccessMode::Enforce, Some(FRONTEND), &get("/admin"));
        assert_eq!(action, Action::Pause);
        let [reply] = host.replies.as_slice() else {
            panic!("{host:?}")
        };
        assert_eq!(reply.http_status, DENIED_STATUS);
        assert!(!reply.grpc);
        assert_eq!(
            reply.marker,
            (DENIED_HEADER.0.to_owned(), DENIED_HEADER.1.to_owned())
        );
        assert!(
            reply
                .body
                .starts_with("weft: access denied: no TrafficTarget allows")
                && reply.body.contains("shop/frontend-to-api"),
            "{}",
            reply.body
        );
        assert_eq!(host.total(crate::HTTP_DENIED_METRIC), 1);
        // Without a verified identity, the same: denied, never passed.
        let (action, host) = inbound(AccessMode::Enforce, None, &get("/items"));
        assert_eq!((action, host.replies.len()), (Action::Pause, 1));
    }

    #[test]
    fn a_denied_grpc_call_gets_permission_denied() {
        let mut headers = get("/admin");
        headers.push(("content-type", "application/grpc+proto"));
        let (_, host) = inbound(AccessMode::Enforce, Some(FRONTEND), &headers);
        let [reply] = host.replies.as_slice() else {
            panic!("{host:?}")
        };
        assert!(reply.grpc);
        assert_eq!(reply.grpc_status, GrpcStatusCode::PermissionDenied);
    }

    #[test]
    fn in_audit_a_request_that_would_be_denied_passes_and_is_counted_as_audit() {
        let (action, host) = inbound(AccessMode::Audit, Some(FRONTEND), &get("/admin"));
        assert_eq!(action, Action::Continue);
        assert!(host.replies.is_empty(), "{host:?}");
        assert_eq!(host.total(crate::HTTP_AUDIT_METRIC), 1);
        assert_eq!(host.total(crate::HTTP_DENIED_METRIC), 0);
    }

    #[test]
    fn in_permissive_mode_no_decision_is_made_and_no_identity_is_needed() {
        let (action, host) = inbound(AccessMode::Permissive, None, &get("/admin"));
        assert_eq!(action, Action::Continue);
        assert!(host.replies.is_empty(), "{host:?}");
        assert_eq!(host.total(crate::HTTP_AUDIT_METRIC), 0);
    }

    #[test]
    fn an_unconfigured_plugin_refuses_every_request_and_grpc_callers_get_unavailable() {
        for (content_type, grpc) in [("text/plain", false), ("application/grpc", true)] {
            let mut headers = get("/items");
            headers.push(("content-type", content_type));
            let mut http = WeftHttp::new(None, RecordingHost::request(Some(FRONTEND), &headers));
            assert_eq!(http.request_headers(), Action::Pause);
            let [reply] = http.host().replies.as_slice() else {
                panic!("{:?}", http.host())
            };
            assert_eq!(reply.grpc, grpc);
            assert_eq!(
                (reply.http_status, reply.grpc_status),
                (UNCONFIGURED_STATUS, GrpcStatusCode::Unavailable)
            );
            assert_eq!(reply.body, UNCONFIGURED_BODY);
        }
    }

    /// `headers` through shop/frontend's outbound plugin, the split roll at `roll`.
    fn outbound(
        headers: &[(&str, &str)],
        roll: u64,
        headers_refused: bool,
    ) -> (Action, RecordingHost) {
        let mut host = RecordingHost::request(None, headers);
        host.roll = roll;
        host.headers_refused = headers_refused;
        let state = state("shop/frontend", Side::Outbound, |_| {}, &mut host);
        let mut http = WeftHttp::new(Some(state), host);
        (http.request_headers(), http.host)
    }

    #[test]
    fn a_split_request_gets_its_backend_in_the_route_header_whatever_the_client_sent() {
        let mut headers = get("/items");
        headers.push((ROUTE_HEADER, "db.shop"));
        let (first, low) = outbound(&headers, 0, false);
        // The roll is taken modulo the total weight (100): 0 falls in the first half, 75 in the
        // second.
        let (_, high) = outbound(&headers, 75, false);
        assert_eq!(first, Action::Continue);
        let chosen = |host: &RecordingHost| {
            let [(name, value)] = host.set.as_slice() else {
                panic!("{host:?}")
            };
            assert_eq!(name, ROUTE_HEADER);
            value.clone()
        };
        let mut backends = [chosen(&low), chosen(&high)];
        backends.sort();
        assert_eq!(backends, ["api-v1.shop", "api-v2.shop"]);
    }

    #[test]
    fn a_request_for_no_split_loses_the_route_header_it_brought_or_is_reset() {
        let headers = [
            (":authority", "elsewhere.shop"),
            (":method", "GET"),
            (":path", "/"),
            (ROUTE_HEADER, "api-v2.shop"),
        ];
        let (action, host) = outbound(&headers, 0, false);
        assert_eq!(action, Action::Continue);
        assert_eq!(host.removed, [ROUTE_HEADER]);
        assert!(host.set.is_empty(), "{host:?}");
        // Envoy refusing to remove it: the request never reaches a cluster it chose itself.
        let (_, host) = outbound(&headers, 0, true);
        assert_eq!(host.resets.len(), 1, "{host:?}");
        // When every header was fetched and there is none, the removal is not even asked.
        let (_, host) = outbound(&headers[..3], 0, false);
        assert!(
            host.removed.is_empty() && host.resets.is_empty(),
            "{host:?}"
        );
    }
}
