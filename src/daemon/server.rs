//! The daemon's shared state ([`Daemon`]) and its limits, and the accept
//! loop ([`run`]).
//!
//! Modelled on mini-redis: [`run`] owns the accept loop, each connection runs
//! in its own task, and shutdown is a `watch` every handler holds plus an
//! `mpsc` sender each drops when done, so `run` knows when the last one is
//! gone.
//!
//! Per connection: a handshake permit at accept (its lane's and its
//! source's budget, see [`super::budget`]; none free: closed at once), the
//! TLS handshake ([`super::handshake`], bounded by the handshake timeout;
//! the [`CandidateVerifier`](super::auth::CandidateVerifier) decides inside
//! it), then a connection slot in exchange for the permit (none free:
//! closed), then the [`Handler`](super::handler::Handler) reads frames until
//! the client closes, the idle timeout fires, the daemon shuts down, or the
//! candidate map stops holding the client's digest.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use ssconf::{CertDigest, Ssconf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::auth::{Denial, DenialLog, DenialReason};
use super::budget::Budgets;
use super::handshake::{handshake, Handshake};
use super::metrics::{Metrics, Refusal};
use super::reload::{self, CandidateMapHandle};
use crate::state::ssconf_cache::{HeldSsconf, Stamp};
use crate::state::{NodeIdentity, StateDir};
use crate::wire;

/// Resource limits of the daemon (SPEC §9), each configurable.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame accepted; a larger claimed length closes the connection
    /// before anything is allocated for it.
    pub max_frame: u32,
    /// Admitted connections (join sessions on the master included) served
    /// at once; a connection that completes its handshake beyond it is
    /// closed.
    pub max_connections: u32,
    /// Connections in the TLS handshake at once, per lane (the control
    /// plane's addresses have a budget of their own); more are closed at
    /// accept.
    pub max_handshakes: u32,
    /// Connections one source address (an IPv6 /64) may have in the TLS
    /// handshake at once; more are closed at accept.
    pub max_handshakes_per_source: u32,
    /// Time a client has to complete the TLS handshake (slowloris bound).
    pub handshake_timeout: Duration,
    /// Time an established connection may stay silent between requests.
    pub idle_timeout: Duration,
    /// Time one request may take, from its last byte to its reply.
    pub request_timeout: Duration,
    /// Time in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Whether TLS 1.2 is accepted besides 1.3.
    pub allow_tls12: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: wire::DEFAULT_MAX_FRAME,
            max_connections: 4096,
            max_handshakes: 1024,
            max_handshakes_per_source: 64,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            allow_tls12: false,
        }
    }
}

/// What this node says about its own client certificate.
#[derive(Debug, Clone)]
pub struct ClientCertFacts {
    pub sha256: CertDigest,
    pub sha1: CertDigest,
    pub expires: i64,
}

/// The daemon's shared state. Hot fields (TLS config, map) are swapped
/// atomically; nothing here is locked on the per-connection path.
#[derive(Debug)]
pub struct Daemon {
    pub state: StateDir,
    pub identity: NodeIdentity,
    pub tls: ArcSwap<ServerConfig>,
    pub map: CandidateMapHandle,
    pub limits: Limits,
    pub client_cert: ArcSwap<ClientCertFacts>,
    pub denials: DenialLog,
    /// Handshake and connection budgets, and the control-plane addresses.
    pub budgets: Budgets,
    /// Counters for the opt-in metrics endpoint (relaxed atomics only).
    pub metrics: Arc<Metrics>,
    /// Whether this node is the master (per its ssconf); shared with the
    /// verifier, which admits certificate-less clients (for join) only then.
    pub is_master: Arc<AtomicBool>,
    /// Each node's health, as the master's convergence loop last saw it.
    pub health: super::converge::HealthTable,
    /// The convergence loop's connections and rounds.
    pub converger: super::converge::Converger,
    /// This node's Raft, while it is the master or a candidate.
    pub raft: arc_swap::ArcSwapOption<crate::cluster::raft::RaftNode>,
    /// Wakes the task that starts Raft once this node holds the config.
    pub raft_wanted: tokio::sync::Notify,
    /// Held while Raft is started, stopped or replaced (`recover --force`):
    /// a start never reads a Raft store that is being rewritten.
    pub raft_changing: tokio::sync::Mutex<()>,
    /// Told when this node commits a change: the API re-reads its users
    /// at once rather than at its next poll.
    pub config_changed: tokio::sync::Notify,
    /// Serialises ssconf writes (check serial, then write).
    pub(super) ssconf_write: tokio::sync::Mutex<()>,
    /// The ssconf set as last read, read again when a file changed.
    pub ssconf: Arc<crate::state::ssconf_cache::SsconfCache>,
    /// What `node-info` derives from the other state files, derived again
    /// when a file changed.
    pub facts: Arc<super::handlers::roles::NodeFacts>,
    /// SHA-256 of the set whose control-plane addresses the lane holds: the
    /// watcher's rescan after the daemon's own write finds that set again.
    control_plane_of: std::sync::Mutex<String>,
}

impl Daemon {
    /// Assembles the daemon's state.
    pub fn new(
        state: StateDir,
        identity: NodeIdentity,
        tls: Arc<ServerConfig>,
        map: CandidateMapHandle,
        limits: Limits,
        client_cert: ClientCertFacts,
        is_master: Arc<AtomicBool>,
    ) -> Self {
        // The SSH paths as node.json names them, taken from the identity
        // read at start: a push's authorized_keys and every node-info
        // would otherwise read node.json again for them.
        let ssh = crate::state::SshPaths {
            ssh_dir: identity.ssh_dir.clone(),
            authorized_keys: identity.authorized_keys.clone(),
        };
        let daemon = Daemon {
            state: state.with_ssh_paths(&ssh),
            identity,
            tls: ArcSwap::new(tls),
            map,
            budgets: Budgets::new(
                limits.max_handshakes,
                limits.max_handshakes_per_source,
                limits.max_connections,
            ),
            limits,
            client_cert: ArcSwap::from_pointee(client_cert),
            denials: DenialLog::default(),
            metrics: Arc::new(Metrics::default()),
            is_master,
            health: Default::default(),
            converger: Default::default(),
            ssconf_write: tokio::sync::Mutex::new(()),
            ssconf: Arc::default(),
            facts: Arc::default(),
            control_plane_of: std::sync::Mutex::default(),
            raft: arc_swap::ArcSwapOption::empty(),
            raft_wanted: tokio::sync::Notify::new(),
            raft_changing: tokio::sync::Mutex::new(()),
            config_changed: tokio::sync::Notify::new(),
        };
        daemon.take_up_stored_set();
        daemon
    }

    /// Counts and logs (rate-limited) one refused connection.
    pub fn deny(&self, peer: SocketAddr, denial: &Denial) {
        self.metrics.refused(Refusal::from(&denial.reason));
        self.denials.record(peer, denial);
    }

    /// Re-reads who the master is from ssconf; a node running Raft is the
    /// master only while it leads.
    pub fn refresh_role(&self) {
        let path = self
            .state
            .ssconf_dir()
            .join(ssconf::SsconfKey::MasterNode.file_name());
        let named = std::fs::read_to_string(path)
            .map(|t| t.trim_end() == self.identity.name)
            .unwrap_or(false);
        self.set_role(named);
    }

    /// Takes the master role when ssconf `named` this node the master (and,
    /// when it runs Raft, while it leads), and leaves it otherwise.
    fn set_role(&self, named: bool) {
        let master = named && self.raft.load().as_ref().is_none_or(|raft| raft.leads());
        if self.is_master.swap(master, Ordering::AcqRel) != master {
            tracing::info!(
                master,
                "master role {}",
                if master { "taken" } else { "left" }
            );
        }
    }

    /// Reloads everything the daemon takes from ssconf.
    pub async fn reload_ssconf(&self) {
        self.metrics.ssconf_reloaded();
        reload::reload_map(
            &Ssconf::candidate_map_path(&self.state.ssconf_dir()),
            &self.map,
        )
        .await;
        self.take_up_stored_set();
    }

    /// The master and the control-plane addresses from one read of the set
    /// in the ssconf directory (none when it is the set held: after each of
    /// the daemon's own writes the watcher comes here). An unreadable set
    /// keeps the previous addresses (the lane only reserves handshake
    /// slots, it admits nobody); the role then comes from the master file.
    fn take_up_stored_set(&self) {
        match self.ssconf.load(&self.state.ssconf_dir()) {
            Ok(held) => self.take_up(&held),
            Err(e) => {
                tracing::debug!("control-plane addresses unchanged: {e}");
                self.refresh_role();
            }
        }
    }

    /// The master role and the control-plane lane as `held` says.
    fn take_up(&self, held: &HeldSsconf) {
        self.set_role(held.set.master_node.trim_end() == self.identity.name);
        self.set_control_plane(held);
    }

    /// Takes up the set this daemon has just stored (under its
    /// `ssconf_write` guard) as [`Daemon::reload_ssconf`] would, without
    /// reading it back: its map, whose file had stamp `map_stamp` right
    /// after the write, its master and its control-plane addresses.
    pub async fn publish_written(&self, held: &HeldSsconf, map_stamp: Stamp) {
        self.metrics.ssconf_reloaded();
        let dir = self.state.ssconf_dir();
        reload::publish_written(
            &Ssconf::candidate_map_path(&dir),
            &self.map,
            &held.set.master_candidates_certs,
            map_stamp,
        )
        .await;
        self.take_up(held);
    }

    /// Reserves the control-plane lane for the master's and the
    /// candidates' addresses in `held`; nothing to do (and nothing logged
    /// again) when it is the set the lane was last set from.
    fn set_control_plane(&self, held: &HeldSsconf) {
        let mut of = crate::core::locked(&self.control_plane_of);
        if *of == held.sha256 {
            return;
        }
        of.clone_from(&held.sha256);
        let (addresses, not_literal) = control_plane_addresses(&held.set);
        for (node, address) in not_literal {
            tracing::warn!(
                %node,
                "address {address} is not an IP literal; this node's connections use the general handshake lane"
            );
        }
        if *self.budgets.control_plane() != addresses {
            tracing::info!(
                addresses = ?addresses,
                "control-plane handshake lane: {} addresses",
                addresses.len()
            );
            self.budgets.set_control_plane(addresses);
        }
    }
}

/// The IP addresses of the master and the master candidates in `set`, and
/// the `(node, address)` pairs whose host is not an IP literal.
pub fn control_plane_addresses(set: &Ssconf) -> (Vec<std::net::IpAddr>, Vec<(String, String)>) {
    let mut addresses = Vec::new();
    let mut not_literal = Vec::new();
    for (node, address) in &set.node_addresses {
        if *node != set.master_node && !set.master_candidates.contains(node) {
            continue;
        }
        match address.parse::<SocketAddr>() {
            Ok(a) => addresses.push(a.ip().to_canonical()),
            Err(_) => not_literal.push((node.clone(), address.clone())),
        }
    }
    addresses.sort_unstable();
    addresses.dedup();
    (addresses, not_literal)
}

/// Serves connections from `listeners` until `shutdown` resolves, then lets
/// in-flight requests finish (up to the shutdown grace) and returns.
///
/// Each listener (one per core, all on the same address with
/// `SO_REUSEPORT`, see [`super::runtime::bind_per_core`]) gets a thread of
/// its own with a current-thread runtime that accepts, runs the handshake
/// and serves the connection: the kernel spreads connections over the
/// listeners, and a connection never moves between threads. Measured with
/// `openssl s_time -new`, a multi-threaded runtime accepting on one thread
/// and serving on another paid several futex wake-ups and context
/// switches per handshake. Fails only when a thread or its runtime cannot
/// be started; then nothing is served.
pub async fn run(
    listeners: Vec<std::net::TcpListener>,
    daemon: Arc<Daemon>,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::core::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every accept thread holds a sender until its last connection is done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut threads = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let started = accept_thread(i, listener, &daemon, &stop_rx, &done_tx);
        match started {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                let _ = stop_tx.send(true);
                return Err(e);
            }
        }
    }
    drop(done_tx);
    shutdown.await;
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    let _ = stop_tx.send(true);
    // Each thread gives its connections the grace; a little more here.
    let grace = daemon.limits.shutdown_grace + Duration::from_secs(1);
    if tokio::time::timeout(grace, done_rx.recv()).await.is_err() {
        tracing::warn!("shutdown grace elapsed with connections still open");
    }
    drop(threads);
    Ok(())
}

/// Starts the thread that serves `listener` on a current-thread runtime of
/// its own.
fn accept_thread(
    index: usize,
    listener: std::net::TcpListener,
    daemon: &Arc<Daemon>,
    stop: &watch::Receiver<bool>,
    done: &mpsc::Sender<()>,
) -> crate::core::Result<std::thread::JoinHandle<()>> {
    let io = || crate::core::Error::io(format!("accept thread {index}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io())?;
    let listener = {
        // Registers the socket with this thread's reactor.
        let _entered = runtime.enter();
        TcpListener::from_std(listener).map_err(io())?
    };
    let (daemon, stop, done) = (daemon.clone(), stop.clone(), done.clone());
    std::thread::Builder::new()
        .name(format!("noded-accept-{index}"))
        .spawn(move || {
            runtime.block_on(async move {
                let (local_tx, mut local_rx) = mpsc::channel::<()>(1);
                accept(listener, &daemon, stop, local_tx).await;
                // This thread's connections finish here: the runtime (and
                // whatever still runs on it) goes when this returns.
                let _ = tokio::time::timeout(daemon.limits.shutdown_grace, local_rx.recv()).await;
            });
            drop(done);
        })
        .map_err(io())
}

/// Accepts connections from `listener` until `stop` turns true, each in a
/// task of the current runtime holding a clone of `done`.
async fn accept(
    listener: TcpListener,
    daemon: &Arc<Daemon>,
    stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let mut stopped = stop.clone();
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Closed at once when the budget is full: no TLS is spoken, so a
        // flood costs an accept and a close, not a handshake.
        let permit = match daemon.budgets.start_handshake(peer.ip()) {
            Ok(permit) => permit,
            Err(exhausted) => {
                drop(stream);
                daemon.deny(peer, &Denial::anonymous(DenialReason::Exhausted(exhausted)));
                continue;
            }
        };
        // On Linux the socket has the listener's TCP_NODELAY already.
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        let daemon = daemon.clone();
        let stop = stop.clone();
        let done = done.clone();
        // Boxed: the connection's future (TLS state, handler, frame
        // buffers) is several KiB, and tokio moves an unboxed future by
        // value into its task cell and again at each change of stage; a
        // box moves as one pointer.
        tokio::spawn(Box::pin(async move {
            match handshake(&daemon, stream, peer, permit).await {
                Handshake::Admitted(handler) => handler.run(stop).await,
                Handshake::Anonymous(anonymous) => anonymous.serve().await,
                Handshake::Denied => {}
            }
            drop(done);
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_is_the_master_and_the_candidates_ip_literals() {
        let set = Ssconf {
            master_node: "m".into(),
            master_candidates: vec!["m".into(), "c1".into(), "c2".into(), "c3".into()],
            node_addresses: vec![
                ("c1".into(), "10.0.0.2:1811".into()),
                ("c2".into(), "[2001:db8::2]:1811".into()),
                ("c3".into(), "node-c3.example:1811".into()),
                ("m".into(), "10.0.0.1:1811".into()),
                ("m2".into(), "10.0.0.1:1812".into()),
                ("r".into(), "10.0.0.9:1811".into()),
            ],
            ..Ssconf::default()
        };
        let (addresses, not_literal) = control_plane_addresses(&set);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            addresses,
            [ip("10.0.0.1"), ip("10.0.0.2"), ip("2001:db8::2")]
        );
        assert_eq!(
            not_literal,
            [("c3".to_owned(), "node-c3.example:1811".to_owned())]
        );
    }
}
