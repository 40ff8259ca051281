//! `noded`: the node daemon. [`runtime`] loads a node's state and runs
//! until a signal stops it; [`server`] holds the daemon's shared state and
//! accepts connections; [`handshake`] runs each TLS handshake, in which
//! [`auth`] decides who is admitted ([`tls`] builds that configuration),
//! and types its outcome; [`handler`] serves an admitted connection, and
//! [`handlers`] answer its procedures, one file per family; [`join`]
//! admits new nodes on the master; [`reload`] keeps the candidate map
//! current; [`budget`] bounds handshakes and connections; [`metrics`]
//! serves the Prometheus endpoint; [`api`] serves the remote API;
//! [`consensus`] runs this node's Raft (master and candidates).

use std::path::PathBuf;

pub mod api;
pub mod auth;
pub mod budget;
pub mod consensus;
pub mod converge;
pub mod handler;
pub mod handlers;
pub mod handshake;
pub mod join;
pub mod metrics;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod tls;

pub use runtime::{serve, LISTEN_BACKLOG};

/// What `noded` runs with, from its command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node's state directory.
    pub state_dir: PathBuf,
    /// Overrides the address recorded at init/join.
    pub listen: Option<String>,
    /// The loopback address of the Prometheus endpoint, if any.
    pub metrics: Option<String>,
    pub limits: server::Limits,
    /// On the master, the interval of the convergence loop.
    pub heartbeat: std::time::Duration,
    /// Where to serve the remote API (SPEC §11), if anywhere.
    pub api_listen: Option<String>,
}
