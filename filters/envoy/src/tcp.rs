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

use crate::edges::{EdgeKey, TcpEvent};
use crate::{FilterState, host};

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Undecided,
    Allowed,
    Closed,
}

/// One downstream TCP connection passing through the plugin.
#[derive(Debug)]
pub struct WeftTcp {
    state: Option<Rc<FilterState>>,
    verdict: Verdict,
    /// When Envoy accepted the connection (the metrics feature).
    accepted_ns: u64,
    /// The connection's edge, once counted opened (the metrics feature).
    opened: Option<EdgeKey>,
}

impl WeftTcp {
    /// A connection context of a plugin with `state`, or of an unconfigured plugin.
    pub fn new(state: Option<Rc<FilterState>>) -> Self {
        Self {
            state,
            verdict: Verdict::Undecided,
            accepted_ns: 0,
            opened: None,
        }
    }

    /// Counts `event` on the edge from `peer` (the metrics feature; nothing without it). Returns
    /// the edge.
    fn count(state: &FilterState, peer: Option<&str>, event: TcpEvent) -> Option<EdgeKey> {
        let table = state.engine.metrics()?;
        let mut edges = state.edges.try_borrow_mut().ok()?;
        let edge = edges.edge(table, peer, None, None);
        edges.record_tcp(table, &mut host::EnvoyStats, edge, event);
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
            true => host::peer_identity(),
            false => None,
        };
        self.open_from(peer.as_deref());
    }

    /// Counts the connection opened, once, from `peer` (already read for the decision).
    fn open_from(&mut self, peer: Option<&str>) {
        if let Some(state) = &self.state
            && self.opened.is_none()
        {
            self.opened = Self::count(state, peer, TcpEvent::Opened);
        }
    }

    /// Counts bytes an opened connection carried.
    fn carried(&self, event: TcpEvent) {
        if let (Some(state), Some(edge)) = (&self.state, self.opened)
            && let Some(table) = state.engine.metrics()
            && let Ok(mut edges) = state.edges.try_borrow_mut()
        {
            edges.record_tcp(table, &mut host::EnvoyStats, edge, event);
        }
    }

    fn decide(&mut self) -> Action {
        let Some(state) = &self.state else {
            log::error!("closing a connection: the plugin has no valid configuration");
            return self.close();
        };
        let Some(mode) = state.deciding_mode() else {
            self.verdict = Verdict::Allowed;
            self.open();
            return Action::Continue;
        };
        let source = host::peer_identity();
        let port = state.destination_port();
        let decision = state.engine.decide_tcp(source.as_deref(), port);
        let Decision::Deny { reason } = decision else {
            self.verdict = Verdict::Allowed;
            self.open_from(source.as_deref());
            return Action::Continue;
        };
        let caller = source.as_deref().unwrap_or("(no verified identity)");
        if mode == AccessMode::Audit {
            host::count(state.metrics.tcp_audit);
            log::info!(
                "audit: would close a TCP connection to port {port} from {caller}: {reason}"
            );
            self.verdict = Verdict::Allowed;
            self.open_from(source.as_deref());
            return Action::Continue;
        }
        host::count(state.metrics.tcp_denied);
        Self::count(state, source.as_deref(), TcpEvent::Denied);
        log::debug!("closed a TCP connection to port {port} from {caller}: {reason}");
        self.close()
    }

    fn close(&mut self) -> Action {
        self.verdict = Verdict::Closed;
        host::close_connection();
        Action::Pause
    }
}

impl Context for WeftTcp {}

impl StreamContext for WeftTcp {
    fn on_new_connection(&mut self) -> Action {
        let Some(state) = &self.state else {
            return self.decide();
        };
        if state.engine.metrics().is_some() {
            self.accepted_ns = host::now_nanoseconds();
        }
        if state.deciding_mode().is_none() {
            self.verdict = Verdict::Allowed;
        }
        // Undecided connections go on to the TCP proxy, which holds them (see the module
        // documentation); no byte passes this filter in either direction until the decision.
        Action::Continue
    }

    fn on_downstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
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

    fn on_upstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
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

    fn on_log(&mut self) {
        // Envoy calls this once per connection, when it closes (either side first).
        if self.opened.is_some() {
            let duration_ns = host::now_nanoseconds().saturating_sub(self.accepted_ns);
            self.carried(TcpEvent::Closed { duration_ns });
        }
    }
}
