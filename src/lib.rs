//! noded: a node daemon and its control CLI that secure a cluster's control
//! plane with mutual TLS.
//!
//! # Layers
//!
//! Each part imports only the parts above it in this list; `daemon` and
//! `ctl` never import each other (a test reads the `use crate::` lines and
//! fails otherwise).
//!
//! - [`core`]: the error type, [`core::Secret`], hex digests, the clock.
//! - [`wire`]: the protocol types ([`wire::Procedure`], [`wire::Reply`])
//!   and the codec (length-prefixed postcard frames).
//! - [`state`]: a node's state directory: every path, atomic files and
//!   their modes, the cluster config and the ssconf set derived from it,
//!   join tokens, SSH keys, fingerprints (ssconf files: the `ssconf` crate).
//! - [`pki`]: the CA, certificates, CSR signing, key pairs and their
//!   crash-safe switch ([`pki::pair`]), where the CA key lives
//!   ([`pki::keystore`], [`pki::hsm`]), the one rustls crypto provider.
//! - [`rpc`]: the RPC client: connect, verify the server, call; a joining
//!   node's pinned connection; [`rpc::fanout`] to many nodes at once.
//! - [`cluster`]: the cluster as the master changes it: the lock, the
//!   config store, the config replicated by Raft ([`cluster::raft`]:
//!   openraft's log, state machine and network), commit and push, a new
//!   leader's take-over ([`cluster::failover`]), and `verify`'s checks.
//! - [`daemon`]: `noded`: listener, handshake, connection handler, one
//!   handler file per procedure family, authorization, map reload,
//!   budgets, metrics, join admission, this node's Raft
//!   ([`daemon::consensus`]), and the remote API
//!   ([`daemon::api`]: HTTPS for users with roles, over the same rustls).
//! - [`ctl`]: `nodectl`: one file per command, and its output.
//! - [`cli`], [`man`], [`logging`]: the command lines of both binaries,
//!   their man pages and completions, and logging; `src/bin/` are thin.
//!
//! # How a request flows (daemon side)
//!
//! 1. [`daemon::server::run`] accepts a TCP connection (one accept thread
//!    per core, each with its own listener on the same address and its own
//!    current-thread runtime, which also serves the connection), takes a handshake
//!    permit of its lane and source ([`daemon::budget`]; none free: closed
//!    at once) and starts a handshake with the current TLS config (an
//!    `ArcSwap`). Once admitted, the connection trades the permit for a
//!    connection slot.
//! 2. rustls calls [`daemon::auth::CandidateVerifier`]: webpki checks the
//!    chain to the cluster CA, then the certificate's digest is looked up
//!    in the current [`ssconf::CandidateMap`]. A refusal fails the
//!    handshake with a TLS alert and is logged once with peer, subject,
//!    digest and reason.
//! 3. The connection reads [`wire`] frames: a length (checked against the
//!    limit before any allocation) and a postcard envelope; each request is
//!    dispatched to its handler family ([`daemon::handlers`]) and answered.
//! 4. Meanwhile, the connection watches the map: when a new map no longer
//!    holds its digest, it is closed.
//!
//! # How a command flows (control side)
//!
//! 1. `nodectl` parses its arguments ([`cli`]) into a command and plain
//!    options, and runs the command's file in [`ctl`].
//! 2. A mutating command confirms with its daemon that this node leads
//!    (a majority of voters says so), takes the [`cluster::ClusterLock`],
//!    loads the config ([`cluster::store`]), changes it, and commits: the
//!    serial is bumped and the config proposed to the local daemon, whose
//!    Raft commits it once a majority of voters stored it and applies it
//!    (`config.json`); then the local copies are written and the daemon
//!    asked to distribute the change ([`cluster::distribute`]): a round of
//!    its convergence loop (`daemon::converge`) over kept connections, each
//!    verified by [`rpc::RpcClient`], that sends every other online node
//!    what it lacks (an ssconf patch, [`wire::patch`]).
//! 3. Each node's daemon checks what it is sent (cluster name, the patched
//!    set's SHA-256, and a `(term, serial)` not older than its own) and
//!    writes it atomically; its map reload then admits or closes clients.
//! 4. The command prints per-node lines and decides its exit code
//!    ([`ctl::Outcome`]): 0, 1, or 3 when a node did not take the change.

/// Prints a line to stdout like `println!`, except that a closed stdout
/// (`nodectl list | head -1`) is not a panic.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::ctl::output::say_line(&format!($($arg)*))
    };
}

pub mod cli;
pub mod cluster;
pub mod core;
pub mod ctl;
pub mod daemon;
pub mod logging;
pub mod man;
pub mod pki;
pub mod rpc;
pub mod state;
pub mod wire;

pub use crate::core::{Error, Result};
