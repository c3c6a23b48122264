//! The network filter: SMI access control per TCP connection, on the server (inbound) side.
//!
//! The decision waits for the first bytes from the client: when Envoy announces a new
//! connection the TLS handshake has not finished, so the peer certificate is not known yet.
//! Until the decision no byte passes the filter in either direction, and a denied connection
//! is closed before any byte reaches the upstream. With the TCP proxy's
//! `upstream_connect_mode: ON_DOWNSTREAM_DATA` (as weft's configurations set it) a denied
//! caller does not even make Envoy connect upstream. A protocol in which the server speaks
//! first therefore needs its client to send a byte first; see docs/access.md.

use std::rc::Rc;

use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::Action;
use weft_policy::bundle::AccessMode;
use weft_policy::engine::Decision;

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
}

impl WeftTcp {
    /// A connection context of a plugin with `state`, or of an unconfigured plugin.
    pub fn new(state: Option<Rc<FilterState>>) -> Self {
        Self {
            state,
            verdict: Verdict::Undecided,
        }
    }

    fn decide(&mut self) -> Action {
        let Some(state) = &self.state else {
            log::error!("closing a connection: the plugin has no valid configuration");
            return self.close();
        };
        let Some(mode) = state.deciding_mode() else {
            self.verdict = Verdict::Allowed;
            return Action::Continue;
        };
        let source = host::peer_identity();
        let port = state.destination_port();
        let decision = state.engine.decide_tcp(source.as_deref(), port);
        let Decision::Deny { reason } = decision else {
            self.verdict = Verdict::Allowed;
            return Action::Continue;
        };
        let caller = source.as_deref().unwrap_or("(no verified identity)");
        if mode == AccessMode::Audit {
            host::count(state.metrics.tcp_audit);
            log::info!(
                "audit: would close a TCP connection to port {port} from {caller}: {reason}"
            );
            self.verdict = Verdict::Allowed;
            return Action::Continue;
        }
        host::count(state.metrics.tcp_denied);
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
        if state.deciding_mode().is_none() {
            self.verdict = Verdict::Allowed;
        }
        // Undecided connections go on to the TCP proxy, which holds them (see the module
        // documentation); no byte passes this filter in either direction until the decision.
        Action::Continue
    }

    fn on_downstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        match self.verdict {
            Verdict::Allowed => Action::Continue,
            Verdict::Closed => Action::Pause,
            Verdict::Undecided => self.decide(),
        }
    }

    fn on_upstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        // A server that speaks first must not talk to a caller not yet allowed.
        match self.verdict {
            Verdict::Allowed => Action::Continue,
            Verdict::Undecided | Verdict::Closed => Action::Pause,
        }
    }
}
