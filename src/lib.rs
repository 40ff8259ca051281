//! noded: a node daemon and its control CLI that secure a cluster's control
//! plane with mutual TLS.
//!
//! # Components
//!
//! - [`pki`]: the cluster CA, the shared server certificate, node client
//!   certificates signed from CSRs, digests.
//! - [`keystore`]: where the CA key lives (`ca.key`, or a PKCS#11 token
//!   through [`hsm`]) behind the [`keystore::KeyStore`] trait.
//! - [`state`]: a node's state directory; [`config`]: the cluster config and
//!   the ssconf set derived from it (files: the `ssconf` crate).
//! - [`tls`]: rustls configurations (aws-lc-rs, TLS 1.3, no resumption).
//! - [`auth`]: the authorization decision and the verifier running it.
//! - [`reload`]: the candidate map's hot reload.
//! - [`frame`]: the wire format; [`server`]: the daemon's accept loop and
//!   connection handler; [`budget`]: its handshake and connection budgets;
//!   [`client`]: the RPC client.
//! - [`metrics`]: the opt-in Prometheus endpoint (`noded --metrics`).
//! - [`daemon`], [`ctl`], [`cli`], [`man`], [`logging`]: what the `noded`
//!   and `nodectl` binaries run.
//!
//! # How a request flows
//!
//! 1. [`server::run`] accepts a TCP connection, takes a handshake permit
//!    of its lane and source ([`budget`]; none free: closed at once) and
//!    starts a handshake with the current TLS config (an `ArcSwap`). Once
//!    admitted, the connection trades the permit for a connection slot.
//! 2. rustls calls [`auth::CandidateVerifier`]: webpki checks the chain to
//!    the cluster CA, then the certificate's digest is looked up in the
//!    current [`ssconf::CandidateMap`]. A refusal fails the handshake with a
//!    TLS alert and is logged once with peer, subject, digest and reason.
//! 3. The connection reads [`frame`]s: a length (checked against the limit
//!    before any allocation) and a postcard envelope; each request is
//!    dispatched and answered.
//! 4. Meanwhile, the connection watches the map: when a new map no longer
//!    holds its digest, it is closed.

/// Prints a line to stdout like `println!`, except that a closed stdout
/// (`nodectl list | head -1`) is not a panic.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::ctl::say_line(&format!($($arg)*))
    };
}

pub mod auth;
pub mod budget;
pub mod cli;
pub mod client;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod error;
pub mod frame;
pub mod hsm;
pub mod keystore;
pub mod logging;
pub mod man;
pub mod metrics;
pub mod pki;
pub mod reload;
pub mod server;
pub mod state;
pub mod tls;

pub use error::{Error, Result};
pub mod cluster;
pub mod join;
pub mod lifecycle;
pub mod progress;
pub mod renew;
pub mod roles;
pub mod ssh;
pub mod token;
pub mod verify;
