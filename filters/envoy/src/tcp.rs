//! The network filter: SMI access control per TCP connection, on the server (inbound) side.
//!
//! The decision waits for the first bytes from the client: when Envoy announces a new
//! connection the TLS handshake has not finished, so the peer certificate is not known yet.
//! Until the decision no byte passes the filter in either direction, and a denied connection
//! is closed before any byte reaches the upstream. With the TCP proxy's
//! `upstream_connect_mode: ON_DOWNSTREAM_DATA` (as weft's configurations set it) a denied
//! caller does not even make Envoy connect upstream. A protocol in which the server speaks
//! first therefore needs its client to send a byte first; see docs/access.md.
//!
//! With the metrics feature, each connection is counted on its edge once, when weft first sees
//! its bytes (docs/metrics.md): denied, or opened and later closed, with the bytes it carried
//! each way and how long it lived. A connection that ends before carrying a byte is Envoy's
//! listener statistics' alone (`downstream_cx_total`).

use std::rc::Rc;

use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::Action;
use weft_policy::bundle::AccessMode;
use weft_policy::engine::Decision;

use crate::FilterState;
use crate::edges::{EdgeKey, TcpEvent};
use crate::host::{Envoy, Host};

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Undecided,
    Allowed,
    Closed,
}

/// One downstream TCP connection passing through the plugin, in host `H` (Envoy in the
/// module).
#[derive(Debug)]
pub struct WeftTcp<H: Host = Envoy> {
    state: Option<Rc<FilterState>>,
    verdict: Verdict,
    /// When Envoy accepted the connection (the metrics feature).
    accepted_ns: u64,
    /// The connection's edge, once counted opened (the metrics feature).
    opened: Option<EdgeKey>,
    host: H,
}

impl<H: Host> WeftTcp<H> {
    /// A connection context of a plugin with `state`, or of an unconfigured plugin.
    pub fn new(state: Option<Rc<FilterState>>, host: H) -> Self {
        Self {
            state,
            verdict: Verdict::Undecided,
            accepted_ns: 0,
            opened: None,
            host,
        }
    }

    /// The host it runs in.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// Counts `event` on the edge from `peer` (the metrics feature; nothing without it). Returns
    /// the edge.
    fn count(
        host: &mut H,
        state: &FilterState,
        peer: Option<&str>,
        event: TcpEvent,
    ) -> Option<EdgeKey> {
        let table = state.engine.metrics()?;
        let mut edges = state.edges.try_borrow_mut().ok()?;
        let edge = edges.edge(table, peer, None, None);
        edges.record_tcp(table, host, edge, event);
        Some(edge)
    }

    /// Counts the connection opened, once, reading the peer Envoy verified only if it counts.
    fn open(&mut self) {
        if self.opened.is_some()
            || self
                .state
                .as_ref()
                .is_none_or(|state| state.engine.metrics().is_none())
        {
            return;
        }
        let peer = match self.state.as_ref().is_some_and(|s| s.reads_peer_identity()) {
            true => self.host.peer_identity(),
            false => None,
        };
        self.open_from(peer.as_deref());
    }

    /// Counts the connection opened, once, from `peer` (already read for the decision).
    fn open_from(&mut self, peer: Option<&str>) {
        if let Some(state) = &self.state
            && self.opened.is_none()
        {
            self.opened = Self::count(&mut self.host, state, peer, TcpEvent::Opened);
        }
    }

    /// Counts bytes an opened connection carried.
    fn carried(&mut self, event: TcpEvent) {
        if let (Some(state), Some(edge)) = (&self.state, self.opened)
            && let Some(table) = state.engine.metrics()
            && let Ok(mut edges) = state.edges.try_borrow_mut()
        {
            edges.record_tcp(table, &mut self.host, edge, event);
        }
    }

    fn decide(&mut self) -> Action {
        let Some(state) = self.state.clone() else {
            log::error!("closing a connection: the plugin has no valid configuration");
            return self.close();
        };
        let Some(mode) = state.deciding_mode() else {
            self.verdict = Verdict::Allowed;
            self.open();
            return Action::Continue;
        };
        let source = self.host.peer_identity();
        let port = state.destination_port(&mut self.host);
        let decision = state.engine.decide_tcp(source.as_deref(), port);
        let Decision::Deny { reason } = decision else {
            self.verdict = Verdict::Allowed;
            self.open_from(source.as_deref());
            return Action::Continue;
        };
        let caller = source.as_deref().unwrap_or("(no verified identity)");
        if mode == AccessMode::Audit {
            self.host.increment(state.metrics.tcp_audit);
            log::info!(
                "audit: would close a TCP connection to port {port} from {caller}: {reason}"
            );
            self.verdict = Verdict::Allowed;
            self.open_from(source.as_deref());
            return Action::Continue;
        }
        self.host.increment(state.metrics.tcp_denied);
        Self::count(&mut self.host, &state, source.as_deref(), TcpEvent::Denied);
        log::debug!("closed a TCP connection to port {port} from {caller}: {reason}");
        self.close()
    }

    fn close(&mut self) -> Action {
        self.verdict = Verdict::Closed;
        self.host.close_connection();
        Action::Pause
    }

    /// Envoy accepted the connection (its TLS handshake is not done yet).
    pub fn new_connection(&mut self) -> Action {
        let Some(state) = &self.state else {
            return self.decide();
        };
        if state.engine.metrics().is_some() {
            self.accepted_ns = self.host.now_nanoseconds();
        }
        if state.deciding_mode().is_none() {
            self.verdict = Verdict::Allowed;
        }
        // Undecided connections go on to the TCP proxy, which holds them (see the module
        // documentation); no byte passes this filter in either direction until the decision.
        Action::Continue
    }

    /// `data_size` bytes arrived from the client.
    pub fn downstream_data(&mut self, data_size: usize) -> Action {
        let action = match self.verdict {
            // Without access decisions, the first bytes either way open the connection.
            Verdict::Allowed => {
                self.open();
                Action::Continue
            }
            Verdict::Closed => Action::Pause,
            Verdict::Undecided => self.decide(),
        };
        if action == Action::Continue {
            self.carried(TcpEvent::Received(data_size as u64));
        }
        action
    }

    /// `data_size` bytes arrived from the server.
    pub fn upstream_data(&mut self, data_size: usize) -> Action {
        // A server that speaks first must not talk to a caller not yet allowed.
        match self.verdict {
            Verdict::Allowed => {
                self.open();
                self.carried(TcpEvent::Sent(data_size as u64));
                Action::Continue
            }
            Verdict::Undecided | Verdict::Closed => Action::Pause,
        }
    }

    /// The connection closed (either side first); Envoy says so once.
    pub fn log(&mut self) {
        if self.opened.is_some() {
            let duration_ns = self.host.now_nanoseconds().saturating_sub(self.accepted_ns);
            self.carried(TcpEvent::Closed { duration_ns });
        }
    }
}

impl Context for WeftTcp {}

impl StreamContext for WeftTcp {
    fn on_new_connection(&mut self) -> Action {
        self.new_connection()
    }

    fn on_downstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        self.downstream_data(data_size)
    }

    fn on_upstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        self.upstream_data(data_size)
    }

    fn on_log(&mut self) {
        self.log();
    }
}

#[cfg(test)]
mod tests {
    use weft_policy::bundle::AccessMode;
    use weft_policy::compile::Side;

    use super::*;
    use crate::testing::{API, FRONTEND, RecordingHost, state};

    /// A connection from `peer` to port 5432 of shop/db's inbound plugin in `mode`.
    fn connection(mode: AccessMode, peer: Option<&str>) -> WeftTcp<RecordingHost> {
        let mut host = RecordingHost::request(peer, &[]);
        host.port = 5432;
        let state = state(
            "shop/db",
            Side::Inbound,
            |config| {
                if let Some(access) = config.access.as_mut() {
                    access.mode = mode;
                }
            },
            &mut host,
        );
        WeftTcp::new(Some(state), host)
    }

    #[test]
    fn no_byte_passes_either_way_before_the_decision_and_an_allowed_connection_is_counted() {
        let mut tcp = connection(AccessMode::Enforce, Some(API));
        assert_eq!(tcp.new_connection(), Action::Continue);
        // A server that speaks first waits for the client's first bytes and the decision.
        assert_eq!(tcp.upstream_data(10), Action::Pause);
        assert_eq!(tcp.downstream_data(7), Action::Continue);
        assert_eq!(tcp.upstream_data(10), Action::Continue);
        tcp.log();
        let host = tcp.host();
        assert_eq!(host.closed, 0);
        assert_eq!(host.total("weft_tcp_connections_opened_total"), 1);
        assert_eq!(host.total("weft_tcp_received_bytes_total"), 7);
        assert_eq!(host.total("weft_tcp_sent_bytes_total"), 10);
        assert_eq!(host.total("weft_tcp_connections_closed_total"), 1);
    }

    #[test]
    fn a_denied_connection_is_closed_at_its_first_bytes_and_stays_shut() {
        for peer in [Some(FRONTEND), None] {
            let mut tcp = connection(AccessMode::Enforce, peer);
            assert_eq!(tcp.new_connection(), Action::Continue);
            assert_eq!(tcp.downstream_data(7), Action::Pause);
            assert_eq!(tcp.downstream_data(7), Action::Pause);
            assert_eq!(tcp.upstream_data(10), Action::Pause);
            tcp.log();
            let host = tcp.host();
            assert_eq!(host.closed, 1, "{peer:?}");
            assert_eq!(host.total(crate::TCP_DENIED_METRIC), 1);
            assert_eq!(host.total("weft_tcp_connections_denied_total"), 1);
            assert_eq!(host.total("weft_tcp_received_bytes_total"), 0);
        }
    }

    #[test]
    fn in_audit_a_connection_that_would_be_closed_passes_and_is_counted_as_audit() {
        let mut tcp = connection(AccessMode::Audit, Some(FRONTEND));
        tcp.new_connection();
        assert_eq!(tcp.downstream_data(7), Action::Continue);
        let host = tcp.host();
        assert_eq!(host.closed, 0);
        assert_eq!(host.total(crate::TCP_AUDIT_METRIC), 1);
        assert_eq!(host.total(crate::TCP_DENIED_METRIC), 0);
    }

    #[test]
    fn an_unconfigured_plugin_closes_every_connection_at_once() {
        let mut tcp = WeftTcp::new(None, RecordingHost::request(Some(API), &[]));
        assert_eq!(tcp.new_connection(), Action::Pause);
        assert_eq!(tcp.downstream_data(7), Action::Pause);
        assert_eq!(tcp.upstream_data(7), Action::Pause);
        assert_eq!(tcp.host().closed, 1);
    }
}
