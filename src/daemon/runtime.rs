//! `noded`'s runtime: load a node's state, serve, reload, stop.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ssconf::{CandidateMap, DigestAlgorithm, Ssconf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::reload::{self, CandidateMapHandle};
use super::server::{self, ClientCertFacts, Daemon, Limits};
use super::tls::{self, ServerMaterial};
use super::Options;
use crate::core::{Error, Result};
use crate::pki::{self, CertInfo};
use crate::state::StateDir;

/// Listen backlog: sized for bursts (a backlog of 5 stalls clients for a
/// second when many connect at once).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Descriptors beyond the connection budgets: listeners, the map watcher,
/// state files, pushes to other nodes after a join, stdio.
pub const FD_RESERVE: u64 = 256;

/// The open-file limit the budgets of `limits` need: every admitted
/// connection, every handshake of both lanes, and [`FD_RESERVE`]; with the
/// remote API, its handshakes and its connections too.
pub fn fds_needed(limits: &Limits, api: bool) -> u64 {
    let rpc = u64::from(limits.max_connections) + 2 * u64::from(limits.max_handshakes);
    let api = if api {
        u64::from(limits.max_handshakes) + u64::from(super::api::MAX_CONNECTIONS)
    } else {
        0
    };
    rpc + api + FD_RESERVE
}

/// Raises the soft RLIMIT_NOFILE to `needed` (at most the hard limit) and
/// warns in one line when the hard limit is lower. Makes no call when the
/// soft limit already suffices (under the systemd unit, `LimitNOFILE=`
/// sets it). Returns the soft limit in force.
pub fn raise_fd_limit(needed: u64) -> Option<u64> {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            return None;
        }
    };
    if soft >= needed {
        return Some(soft);
    }
    let target = needed.min(hard);
    let mut in_force = soft;
    if target > soft {
        match rlimit::setrlimit(rlimit::Resource::NOFILE, target, hard) {
            Ok(()) => {
                tracing::info!("open-file limit raised from {soft} to {target}");
                in_force = target;
            }
            Err(e) => tracing::warn!("cannot raise the open-file limit from {soft}: {e}"),
        }
    }
    if in_force < needed {
        tracing::warn!(
            "the open-file limit is {in_force} (hard limit {hard}) but the connection budgets need {needed}; raise LimitNOFILE or lower --max-connections/--max-handshakes, or accept fails under load"
        );
    }
    Some(in_force)
}

/// Reads the daemon's TLS material from the state directory.
pub fn load_server_material(state: &StateDir) -> Result<ServerMaterial> {
    // Finishes a server certificate switch a crash interrupted.
    crate::pki::pair::recover_server_pair(state)?;
    let ca_certs = pki::load_certs(&state.ca_pem())?;
    let mut server_chain = pki::load_certs(&state.server_pem())?;
    server_chain.extend(ca_certs.iter().cloned());
    Ok(ServerMaterial {
        ca_certs,
        server_chain,
        server_key: pki::load_key(&state.server_key())?,
    })
}

/// What the node reports about its own client certificate.
pub fn load_client_facts(state: &StateDir) -> Result<ClientCertFacts> {
    let path = state.client_pem();
    let certs = pki::load_certs(&path)?;
    let cert = certs.first().ok_or_else(|| Error::Pem {
        path: path.clone(),
        reason: "no certificate".into(),
    })?;
    Ok(ClientCertFacts {
        sha256: DigestAlgorithm::Sha256.digest(cert),
        sha1: DigestAlgorithm::Sha1.digest(cert),
        expires: CertInfo::from_der(cert)?.not_after,
    })
}

/// Binds `address` (`host:port`) with a burst-sized backlog.
pub async fn bind(address: &str) -> Result<TcpListener> {
    let invalid = |reason: String| Error::Invalid(format!("cannot listen on {address}: {reason}"));
    let addr: SocketAddr = tokio::net::lookup_host(address)
        .await
        .map_err(|e| invalid(e.to_string()))?
        .next()
        .ok_or_else(|| invalid("the name resolves to no address".into()))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| invalid(e.to_string()))?;
    socket
        .set_reuseaddr(true)
        .map_err(|e| invalid(e.to_string()))?;
    socket.bind(addr).map_err(|e| invalid(e.to_string()))?;
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|e| invalid(e.to_string()))
}

/// The CPUs this process may run on (its affinity mask, as systemd's
/// `CPUAffinity=` or `taskset` left it), at most `count` of them; empty
/// when the mask cannot be read.
fn allowed_cpus(count: usize) -> Vec<usize> {
    let Ok(set) = rustix::thread::sched_getaffinity(None) else {
        return Vec::new();
    };
    (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .take(count)
        .collect()
}

/// Binds `address` once per core, every socket with `SO_REUSEPORT`, for
/// [`server::run`]'s accept threads: the kernel spreads incoming
/// connections over them. A port given as 0 is chosen once, by the first
/// socket.
///
/// Each listener names a CPU of the process's affinity mask with
/// `SO_INCOMING_CPU`: Linux (6.1 and later) hands a connection to the
/// listener of the CPU that processed its SYN. The connections whose
/// packets one CPU handles (on loopback: one client's) are then served by
/// one thread, which the scheduler runs where it is woken, rather than by
/// whichever thread a hash picks, often waking on the other core
/// (BENCHMARKS.md, "Handshake path"). A connection whose SYN arrives on a
/// CPU no listener names, or any connection on an older kernel, is spread
/// by hash as before. The threads are not pinned: the scheduler may still
/// move one to an idle core. With a single-queue NIC and no RPS, every
/// SYN arrives on one CPU and one thread serves all connections (README,
/// "Accept threads").
///
/// `SO_REUSEPORT` would let a second daemon on the same address (same
/// user) quietly share the connections, so the address is first bound
/// without it: if anything listens there, that bind fails as a plain
/// `bind` does.
pub async fn bind_per_core(address: &str) -> Result<Vec<std::net::TcpListener>> {
    let invalid = |reason: String| Error::Invalid(format!("cannot listen on {address}: {reason}"));
    let io = |e: std::io::Error| invalid(e.to_string());
    let mut addr: SocketAddr = tokio::net::lookup_host(address)
        .await
        .map_err(io)?
        .next()
        .ok_or_else(|| invalid("the name resolves to no address".into()))?;
    let socket = |addr: SocketAddr, reuseport: bool| -> Result<TcpSocket> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(io)?;
        socket.set_reuseaddr(true).map_err(io)?;
        socket.set_reuseport(reuseport).map_err(io)?;
        Ok(socket)
    };
    // The exclusive probe: fails with "address in use" like a plain bind,
    // and picks the port when it is 0.
    let probe = socket(addr, false)?;
    probe.bind(addr).map_err(io)?;
    addr = probe.local_addr().map_err(io)?;
    drop(probe);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpus = match allowed_cpus(cores) {
        cpus if cpus.len() == cores && cores > 1 => cpus.into_iter().map(Some).collect(),
        // One CPU, or a mask that does not say which: nothing to steer.
        _ => vec![None; cores],
    };
    let mut listeners = Vec::with_capacity(cpus.len());
    for cpu in cpus {
        let socket = socket(addr, true)?;
        // Linux gives every accepted socket the listener's TCP_NODELAY:
        // one system call here instead of one per connection.
        socket.set_nodelay(true).map_err(io)?;
        if let Some(cpu) = cpu {
            // An optimisation only: refused, the kernel spreads this
            // listener's connections by hash.
            let _ = socket2::SockRef::from(&socket).set_cpu_affinity(cpu);
        }
        socket.bind(addr).map_err(io)?;
        let listener = socket.listen(LISTEN_BACKLOG).map_err(io)?;
        // Taken out of this runtime's reactor: each accept thread
        // registers its listener with its own.
        listeners.push(listener.into_std().map_err(io)?);
    }
    Ok(listeners)
}

/// The role this node has according to its ssconf, for status lines.
fn role_of(ssconf: Option<&Ssconf>, name: &str) -> &'static str {
    match ssconf {
        Some(s) if s.master_node == name => "master",
        Some(s) if s.master_candidates.iter().any(|n| n == name) => "candidate",
        Some(_) => "regular",
        None => "unknown",
    }
}

/// The candidate map at start: a missing or malformed map denies every
/// client until a valid one arrives (fail closed).
fn initial_map(state: &StateDir) -> CandidateMapHandle {
    let map_path = Ssconf::candidate_map_path(&state.ssconf_dir());
    match CandidateMap::load(&map_path) {
        Ok(map) => CandidateMapHandle::new(map),
        Err(e) => {
            tracing::error!(
                "no valid candidate map ({e}); denying every client until a valid one arrives"
            );
            CandidateMapHandle::new(CandidateMap::empty())
        }
    }
}

/// Loads the node's state and binds its listener: everything that can fail
/// before the daemon serves.
async fn start(opts: &Options) -> Result<(Arc<Daemon>, Vec<std::net::TcpListener>)> {
    let state = StateDir::new(&opts.state_dir);
    state.check_initialised()?;
    crate::pki::pair::recover_client_pair(&state)?;
    let identity = state.load_identity()?;
    let handle = initial_map(&state);
    let is_master = Arc::new(AtomicBool::new(false));
    let config = tls::server_config(
        load_server_material(&state)?,
        &handle,
        is_master.clone(),
        opts.limits.allow_tls12,
    )?;
    raise_fd_limit(fds_needed(&opts.limits, opts.api_listen.is_some()));
    let address = opts
        .listen
        .clone()
        .unwrap_or_else(|| identity.address.clone());
    let listeners = bind_per_core(&address).await?;
    let client_facts = load_client_facts(&state)?;
    let daemon = Daemon::new(
        state,
        identity,
        config,
        handle,
        opts.limits.clone(),
        client_facts,
        is_master,
    );
    Ok((Arc::new(daemon), listeners))
}

/// SIGHUP: ssconf (through the watcher's channel) and certificates reload.
fn spawn_reloader(
    daemon: Arc<Daemon>,
    reload_tx: mpsc::Sender<()>,
    local: SocketAddr,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut hup = signal(SignalKind::hangup()).map_err(Error::io("SIGHUP"))?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading certificates and ssconf");
            let _ = reload_tx.send(()).await;
            reload_certificates(&daemon);
            notify_systemd(&[sd_notify::NotifyState::Status(&status_line(&daemon, local))]);
        }
    }))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(opts: Options) -> Result<()> {
    let metrics_addr = opts
        .metrics
        .as_deref()
        .map(super::metrics::parse_address)
        .transpose()?;
    let (daemon, listeners) = start(&opts).await?;
    super::consensus::start(&daemon).await?;
    let consensus = tokio::spawn(super::consensus::supervise(daemon.clone()));
    let local = listeners
        .first()
        .ok_or_else(|| Error::Invalid("no listener".into()))?
        .local_addr()
        .map_err(Error::io(daemon.state.root()))?;
    let metrics = match metrics_addr {
        Some(addr) => {
            let listener = bind(&addr.to_string()).await?;
            let local = listener
                .local_addr()
                .map_err(Error::io(daemon.state.root()))?;
            tracing::info!("metrics on http://{local}/metrics");
            Some(tokio::spawn(super::metrics::serve(
                listener,
                daemon.clone(),
            )))
        }
        None => None,
    };
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let watched = daemon.clone();
    let watcher = reload::spawn_watcher(daemon.state.ssconf_dir(), reload_rx, move || {
        let daemon = watched.clone();
        async move {
            // A set this daemon is writing is reloaded once it is whole:
            // the writer publishes it and keeps it parsed, so reading it
            // here mid-write would parse (and hash) the whole set for
            // nothing, on every node and every change.
            let _whole = daemon.ssconf_write.lock().await;
            daemon.reload_ssconf().await
        }
    })?;
    let mut term = signal(SignalKind::terminate()).map_err(Error::io("SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::io("SIGINT"))?;
    let reloader = spawn_reloader(daemon.clone(), reload_tx, local)?;
    let (stop_loop, loop_stopped) = tokio::sync::watch::channel(false);
    let api = match &opts.api_listen {
        Some(address) => {
            let listener = bind(address).await?;
            let local = listener
                .local_addr()
                .map_err(Error::io(daemon.state.root()))?;
            tracing::info!("remote API on https://{local}/v1/");
            Some(tokio::spawn(super::api::server::run(
                listener,
                daemon.clone(),
                loop_stopped.clone(),
            )))
        }
        None => None,
    };
    let converge = tokio::spawn(super::converge::run(
        daemon.clone(),
        opts.heartbeat,
        loop_stopped,
    ));

    let status = status_line(&daemon, local);
    tracing::info!("{status}");
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
    };
    let served = server::run(listeners, daemon.clone(), shutdown).await;
    if let Some(raft) = daemon.raft.load_full() {
        raft.shutdown().await;
    }
    let _ = stop_loop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), converge).await;
    if let Some(api) = api {
        let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
    }
    reloader.abort();
    consensus.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    // The watcher's thread ends with the reloader, which held the sender
    // of its signals; the process exit takes it otherwise.
    drop(watcher);
    served?;
    tracing::info!("stopped");
    Ok(())
}

fn status_line(daemon: &Daemon, local: SocketAddr) -> String {
    let ssconf = Ssconf::load(&daemon.state.ssconf_dir()).ok();
    format!(
        "role {}; {} entries in the candidate map; listening on {local}",
        role_of(ssconf.as_ref(), &daemon.identity.name),
        daemon.map.load().len()
    )
}

/// Rebuilds the TLS configuration from the state directory; on any error
/// the current one stays in force.
pub fn reload_certificates(daemon: &Daemon) {
    let rebuilt = load_server_material(&daemon.state).and_then(|m| {
        tls::server_config(
            m,
            &daemon.map,
            daemon.is_master.clone(),
            daemon.limits.allow_tls12,
        )
    });
    match rebuilt {
        Ok(config) => {
            daemon.tls.store(config);
            tracing::info!("TLS configuration reloaded");
        }
        Err(e) => tracing::error!("keeping the current TLS configuration: {e}"),
    }
    match load_client_facts(&daemon.state) {
        Ok(facts) => daemon.client_cert.store(Arc::new(facts)),
        Err(e) => tracing::error!("keeping the current client certificate facts: {e}"),
    }
}

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_listener_names_a_cpu_of_the_mask_in_turn() {
        let listeners = bind_per_core("127.0.0.1:0").await.unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(listeners.len(), cores);
        let named: Vec<usize> = listeners
            .iter()
            .map(|l| socket2::SockRef::from(l).cpu_affinity().unwrap())
            .collect();
        let port = listeners[0].local_addr().unwrap().port();
        assert!(listeners
            .iter()
            .all(|l| l.local_addr().unwrap().port() == port));
        if cores > 1 {
            assert_eq!(named, allowed_cpus(cores));
        }
    }
}
