//! The network filter: SMI access control per TCP connection, on the server (inbound) side.
//!
//! The decision waits for the first bytes from the client: when Envoy announces a new
//! connection the TLS handshake has not finished, so the peer certificate is not known yet.
//! Until then the filter holds the connection, so the filters after it (the TCP proxy) do not
//! even connect upstream, and a denied connection is closed before any byte reaches it.

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
        let mode = match state.engine.access_mode() {
            None | Some(AccessMode::Permissive) => {
                self.verdict = Verdict::Allowed;
                return Action::Continue;
            }
            Some(mode) => mode,
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
        if self.state.is_none() {
            return self.decide();
        }
        let permissive = self.state.as_ref().is_some_and(|state| {
            matches!(
                state.engine.access_mode(),
                None | Some(AccessMode::Permissive)
            )
        });
        if permissive {
            self.verdict = Verdict::Allowed;
            return Action::Continue;
        }
        Action::Pause
    }

    fn on_downstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        match self.verdict {
            Verdict::Allowed => Action::Continue,
            Verdict::Closed => Action::Pause,
            Verdict::Undecided => self.decide(),
        }
    }
}
