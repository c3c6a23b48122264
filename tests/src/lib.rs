//! `weft-e2e` is the end-to-end harness: it runs real Envoy processes (from the project's
//! `.venv`, installed by `make setup`) with the real `target/wasm/weft.wasm` (built by
//! `make build`) in front of real upstream servers, all on loopback with ports chosen by the
//! kernel. Start with [`envoy::Envoy::start`]; the bootstrap builders are in [`bootstrap`], the
//! upstream servers in [`upstream`], the HTTP client in [`client`], certificates in [`pki`] and
//! the TLS client in [`tls`], Envoy's Prometheus output is read with [`prometheus`], and the
//! reliability suite's load generator, which judges every answer against the policies in force,
//! is [`load`].
//!
//! Guarantees: every process a test starts is killed when its handle drops (also when the test
//! panics), a failing test prints the Envoy log, and readiness is polled with a deadline.

pub mod ads;
pub mod attacks;
pub mod bootstrap;
pub mod client;
pub mod envoy;
pub mod load;
pub mod mesh;
pub mod paths;
pub mod pki;
pub mod policy;
pub mod poll;
pub mod prometheus;
pub mod shop;
pub mod tls;
pub mod up;
pub mod upstream;
pub mod walkthrough;
