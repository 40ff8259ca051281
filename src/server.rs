//! The node daemon's server: accept loop, per-connection handler, dispatch.
//!
//! Modelled on mini-redis: [`run`] owns the accept loop, each connection runs
//! in its own task, and shutdown is a `watch` every handler holds plus an
//! `mpsc` sender each drops when done, so `run` knows when the last one is
//! gone.
//!
//! Per connection: a handshake permit at accept (its lane's and its
//! source's budget, see [`crate::budget`]; none free: closed at once), the
//! TLS handshake (bounded by the handshake timeout; the
//! [`CandidateVerifier`](crate::auth::CandidateVerifier) decides inside it),
//! then a connection slot in exchange for the permit (none free: closed),
//! then frames until the client closes, the idle timeout fires, the daemon
//! shuts down, or the candidate map stops holding the client's digest.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use ssconf::{CertDigest, Ssconf};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::auth::{Admission, Denial, DenialLog, DenialReason, Verdict, VERDICT};
use crate::budget::{Budgets, HandshakePermit};
use crate::frame::{
    self, FrameError, Procedure, Reply, Response, RpcError, RpcErrorKind, PROTOCOL_VERSION,
};
use crate::metrics::{Metrics, Refusal};
use crate::reload::{self, CandidateMapHandle};
use crate::state::{NodeIdentity, StateDir};

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
            max_frame: frame::DEFAULT_MAX_FRAME,
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
    /// Serialises ssconf writes (check serial, then write).
    ssconf_write: tokio::sync::Mutex<()>,
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
        let daemon = Daemon {
            state,
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
            ssconf_write: tokio::sync::Mutex::new(()),
        };
        daemon.refresh_role();
        daemon.refresh_control_plane();
        daemon
    }

    /// Counts and logs (rate-limited) one refused connection.
    pub fn deny(&self, peer: SocketAddr, denial: &Denial) {
        self.metrics.refused(Refusal::from(&denial.reason));
        self.denials.record(peer, denial);
    }

    /// Re-reads who the master is from ssconf.
    pub fn refresh_role(&self) {
        let path = self
            .state
            .ssconf_dir()
            .join(ssconf::SsconfKey::MasterNode.file_name());
        let master = std::fs::read_to_string(path)
            .map(|t| t.trim_end() == self.identity.name)
            .unwrap_or(false);
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
        self.refresh_role();
        self.refresh_control_plane();
    }

    /// Re-reads the master's and the candidates' addresses from ssconf for
    /// the control-plane lane. An unreadable set keeps the previous
    /// addresses: the lane only reserves handshake slots, it admits nobody.
    pub fn refresh_control_plane(&self) {
        let dir = self.state.ssconf_dir();
        let set = match Ssconf::load(&dir) {
            Ok(set) => set,
            Err(e) => {
                tracing::debug!("control-plane addresses unchanged: {e}");
                return;
            }
        };
        let (addresses, not_literal) = control_plane_addresses(&set);
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

/// How long a connection open when the daemon stops waits for a request
/// the client has already sent. A client writes its request right behind
/// its handshake, so it arrives with the handshake's last flight.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(500);

/// Serves connections from `listener` until `shutdown` resolves, then lets
/// in-flight requests finish (up to the shutdown grace) and returns.
pub async fn run(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
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
        let _ = stream.set_nodelay(true);
        let daemon = daemon.clone();
        let stop = stop_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            serve_connection(&daemon, stream, peer, permit, stop).await;
            drop(done);
        });
    }
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    let _ = stop_tx.send(true);
    drop(done_tx);
    if tokio::time::timeout(daemon.limits.shutdown_grace, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace elapsed with connections still open");
    }
}

/// Maps a failed handshake without a verifier verdict to a denial.
fn handshake_denial(e: &std::io::Error) -> Denial {
    let rustls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let reason = match rustls_error {
        Some(rustls::Error::NoCertificatesPresented) => DenialReason::NoCertificate,
        Some(other) => DenialReason::Handshake(other.to_string()),
        None => DenialReason::Handshake(e.to_string()),
    };
    Denial {
        reason,
        subject: None,
        digest: None,
    }
}

async fn serve_connection(
    daemon: &Daemon,
    stream: TcpStream,
    peer: SocketAddr,
    handshake_permit: HandshakePermit,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(daemon.tls.load_full());
    let handshake = VERDICT.scope(RefCell::new(None), async {
        let result = acceptor.accept(stream).await;
        (result, VERDICT.with(|v| v.borrow_mut().take()))
    });
    let (result, verdict) =
        match tokio::time::timeout(daemon.limits.handshake_timeout, handshake).await {
            Ok(r) => r,
            Err(_) => {
                let reason = DenialReason::Handshake(format!(
                    "not completed within {:?}",
                    daemon.limits.handshake_timeout
                ));
                daemon.deny(
                    peer,
                    &Denial {
                        reason,
                        subject: None,
                        digest: None,
                    },
                );
                return;
            }
        };
    let (mut tls, admission) = match (result, verdict) {
        (Ok(tls), Some(Verdict::Admitted(admission))) => (tls, admission),
        (Err(_), Some(Verdict::Denied(denial))) => {
            daemon.deny(peer, &denial);
            return;
        }
        // The certificate was acceptable but the handshake still failed:
        // most likely the client holds the certificate (public) but not its
        // key, so it could not prove possession. Name what it claimed to be.
        (Err(e), Some(Verdict::Admitted(claimed))) => {
            // A client that hangs up right after its Finished (as `openssl
            // s_time` does) was admitted; that is no denial.
            let tls_failure = e
                .get_ref()
                .is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some());
            if !tls_failure {
                tracing::debug!(%peer, uuid = %claimed.uuid, "admitted client left during the handshake: {e}");
                return;
            }
            let mut denial = handshake_denial(&e);
            denial.subject = Some(format!("claimed candidate {}", claimed.uuid));
            denial.digest = Some(claimed.digest);
            daemon.deny(peer, &denial);
            return;
        }
        (Err(e), _) => {
            daemon.deny(peer, &handshake_denial(&e));
            return;
        }
        (Ok(tls), None)
            if tls.get_ref().1.peer_certificates().is_none()
                && daemon.is_master.load(Ordering::Acquire) =>
        {
            let Some(_slot) = connection_slot(daemon, peer, None) else {
                return;
            };
            // Unauthenticated until its join request is read: it keeps the
            // handshake permit until then.
            serve_anonymous(daemon, tls, peer, handshake_permit).await;
            return;
        }
        // Fail closed: a handshake that completed without our verifier's
        // verdict is not trusted.
        (Ok(_), _) => {
            daemon.deny(
                peer,
                &Denial {
                    reason: DenialReason::Handshake("no authorization verdict".into()),
                    subject: None,
                    digest: None,
                },
            );
            return;
        }
    };
    let Some(_slot) = connection_slot(daemon, peer, Some(admission.digest)) else {
        return;
    };
    drop(handshake_permit);
    tracing::debug!(%peer, uuid = %admission.uuid, "admitted");
    daemon.metrics.accepted();
    // `revoked` first checks the map as it is now, which covers a change
    // between the verifier's check and this subscription.
    let mut generation = daemon.map.subscribe();
    // Once the daemon stops, requests already sent are still answered (the
    // first may be on its way while the handshake finished); the connection
    // closes when none arrives within SHUTDOWN_DRAIN.
    let mut stopping = false;
    loop {
        let idle = if stopping {
            SHUTDOWN_DRAIN
        } else {
            daemon.limits.idle_timeout
        };
        let read = tokio::select! {
            biased;
            _ = revoked(&mut generation, &daemon.map, &admission) => {
                daemon.deny(peer, &Denial {
                    reason: DenialReason::RemovedFromMap,
                    subject: tls.get_ref().1.peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| crate::pki::subject_of(c)),
                    digest: Some(admission.digest),
                });
                break;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                tokio::time::timeout(
                    SHUTDOWN_DRAIN,
                    frame::read_frame(&mut tls, daemon.limits.max_frame),
                )
                .await
            }
            r = tokio::time::timeout(
                idle,
                frame::read_frame(&mut tls, daemon.limits.max_frame),
            ) => r,
        };
        let payload = match read {
            Err(_) => {
                tracing::debug!(%peer, "idle timeout");
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(payload))) => payload,
            Ok(Err(e @ (FrameError::TooLarge { .. } | FrameError::Truncated))) => {
                tracing::warn!(%peer, uuid = %admission.uuid, "closing connection: {e}");
                let kind = match e {
                    FrameError::TooLarge { .. } => RpcErrorKind::TooLarge,
                    _ => RpcErrorKind::Malformed,
                };
                let _ = reply(
                    &mut tls,
                    0,
                    Err(RpcError {
                        kind,
                        message: e.to_string(),
                    }),
                )
                .await;
                break;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, "connection ended: {e}");
                break;
            }
        };
        // The map may have changed while the frame arrived.
        if !daemon.map.load().contains(&admission.digest) {
            continue;
        }
        let (id, result, keep_open) = match frame::decode_request(&payload) {
            Ok(request) => {
                let name = request.procedure.name();
                let started = Instant::now();
                let result = match tokio::time::timeout(
                    daemon.limits.request_timeout,
                    dispatch(daemon, request.procedure),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(RpcError {
                        kind: RpcErrorKind::Timeout,
                        message: format!(
                            "{name} took longer than {:?}",
                            daemon.limits.request_timeout
                        ),
                    }),
                };
                daemon.metrics.rpc(name, result.is_ok(), started.elapsed());
                (request.id, result, true)
            }
            Err((id, error)) => {
                // An unknown procedure leaves the framing intact: answer and
                // keep serving. Anything else malformed closes the connection.
                let keep = error.kind == RpcErrorKind::UnknownProcedure;
                tracing::warn!(%peer, uuid = %admission.uuid, "bad request: {}", error.message);
                (id, Err(error), keep)
            }
        };
        let sent =
            tokio::time::timeout(daemon.limits.request_timeout, reply(&mut tls, id, result)).await;
        if !matches!(sent, Ok(Ok(()))) || !keep_open {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

/// A slot for a connection that completed its handshake (as the client
/// with `digest`, if it presented a certificate); when none is free the
/// refusal is recorded and the caller closes the connection.
fn connection_slot(
    daemon: &Daemon,
    peer: SocketAddr,
    digest: Option<CertDigest>,
) -> Option<crate::budget::ConnectionSlot> {
    match daemon.budgets.admit() {
        Ok(slot) => Some(slot),
        Err(exhausted) => {
            let mut denial = Denial::anonymous(DenialReason::Exhausted(exhausted));
            denial.digest = digest;
            daemon.deny(peer, &denial);
            None
        }
    }
}

/// A connection without a client certificate, on the master: one request,
/// which must be a join; then the connection is closed.
async fn serve_anonymous(
    daemon: &Daemon,
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    handshake_permit: HandshakePermit,
) {
    // A join request is small; anonymous peers get no 16 MiB frames.
    const MAX_JOIN_FRAME: u32 = 64 * 1024;
    let read = tokio::time::timeout(
        daemon.limits.handshake_timeout,
        frame::read_frame(&mut tls, MAX_JOIN_FRAME),
    )
    .await;
    drop(handshake_permit);
    let payload = match read {
        Ok(Ok(Some(p))) => p,
        _ => return,
    };
    // `counted`: the refusal is already recorded (once per connection).
    let (id, result, counted) = match frame::decode_request(&payload) {
        Ok(request) => match request.procedure {
            // No timeout around the join: once admitted under the lock, the
            // node is in the config and the joiner must get its reply.
            Procedure::Join(join) => {
                let started = Instant::now();
                let result = handle_join(daemon, join).await;
                daemon
                    .metrics
                    .rpc("join", result.is_ok(), started.elapsed());
                (request.id, result, false)
            }
            other => {
                daemon.deny(
                    peer,
                    &Denial {
                        reason: DenialReason::AnonymousRequest(other.name().to_owned()),
                        subject: None,
                        digest: None,
                    },
                );
                (
                    request.id,
                    Err(RpcError {
                        kind: RpcErrorKind::NotAuthorized,
                        message: "a client without a certificate may only join".into(),
                    }),
                    true,
                )
            }
        },
        Err((id, error)) => (id, Err(error), false),
    };
    if let (Err(e), false) = (&result, counted) {
        daemon.deny(
            peer,
            &Denial {
                reason: DenialReason::JoinRefused(e.message.clone()),
                subject: None,
                digest: None,
            },
        );
    }
    let _ = reply(&mut tls, id, result).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

/// The master's side of a join: admit under the cluster lock, then push
/// the new state to every other online node.
async fn handle_join(
    daemon: &Daemon,
    request: crate::frame::JoinRequest,
) -> Result<Reply, RpcError> {
    if !daemon.is_master.load(Ordering::Acquire) {
        return Err(failed(
            "this node is not the master; join through the master's address",
        ));
    }
    let state = daemon.state.clone();
    let name = request.node_name.clone();
    let (mut join_reply, config) =
        tokio::task::spawn_blocking(move || crate::join::admit(&state, &request))
            .await
            .map_err(|e| failed(format!("join task failed: {e}")))?
            .map_err(|e| failed(e.to_string()))?;
    daemon.reload_ssconf().await;
    let client =
        crate::client::RpcClient::from_state(&daemon.state).map_err(|e| failed(e.to_string()))?;
    let me = daemon.identity.name.clone();
    match crate::cluster::push(
        &client,
        &config,
        crate::cluster::PushItems::ALL,
        &[&me, &name],
    )
    .await
    {
        Ok(outcome) => {
            for (node, why) in &outcome.unreachable {
                tracing::warn!(%node, "not updated after the join of {name}: {why}");
            }
            join_reply.unreachable = outcome.unreachable.into_iter().map(|(n, _)| n).collect();
        }
        Err(e) => tracing::error!("push after the join of {name} failed: {e}"),
    }
    Ok(Reply::Joined(Box::new(join_reply)))
}

/// Runs a blocking state-file operation off the async threads.
async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| failed(format!("task failed: {e}")))?
        .map_err(|e| failed(e.to_string()))
}

/// Resolves once the map no longer admits this connection's digest.
async fn revoked(
    generation: &mut watch::Receiver<u64>,
    map: &CandidateMapHandle,
    admission: &Admission,
) {
    loop {
        if !map.load().contains(&admission.digest) {
            return;
        }
        if generation.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn reply<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    id: u64,
    result: Result<Reply, RpcError>,
) -> Result<(), FrameError> {
    let bytes = frame::encode(&Response {
        version: PROTOCOL_VERSION,
        id,
        result,
    })?;
    frame::write_frame(writer, &bytes).await
}

fn failed(message: impl Into<String>) -> RpcError {
    RpcError {
        kind: RpcErrorKind::Failed,
        message: message.into(),
    }
}

async fn dispatch(daemon: &Daemon, procedure: Procedure) -> Result<Reply, RpcError> {
    match procedure {
        Procedure::Ping => Ok(Reply::Pong {
            node: daemon.identity.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }),
        Procedure::NodeInfo => {
            let state = daemon.state.clone();
            let identity = daemon.identity.clone();
            let cert = daemon.client_cert.load_full();
            let info = tokio::task::spawn_blocking(move || {
                crate::roles::node_info(&state, &identity, &cert)
            })
            .await
            .map_err(|e| failed(format!("node-info task failed: {e}")))?;
            Ok(Reply::NodeInfo(Box::new(info)))
        }
        Procedure::WriteSsconf { files } => {
            let _guard = daemon.ssconf_write.lock().await;
            let dir = daemon.state.ssconf_dir();
            let set = Ssconf::parse_files(&files, &dir).map_err(|e| failed(e.to_string()))?;
            let serial = set.serial;
            let write_dir = dir.clone();
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let name_file = write_dir.join(ssconf::SsconfKey::ClusterName.file_name());
                match std::fs::read_to_string(&name_file) {
                    Ok(current) if current.trim_end() != set.cluster_name => {
                        return Err(format!(
                            "ssconf for cluster {:?} refused: this node belongs to cluster {:?}",
                            set.cluster_name,
                            current.trim_end()
                        ));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("{}: {e}", name_file.display())),
                }
                set.store(&write_dir).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| failed(format!("write-ssconf task failed: {e}")))?
            .map_err(failed)?;
            tracing::info!(serial, "ssconf updated");
            // Publish now rather than waiting for the watcher's debounce.
            daemon.reload_ssconf().await;
            Ok(Reply::SsconfWritten { serial })
        }
        Procedure::Echo { payload } => Ok(Reply::Echoed {
            len: payload.len() as u64,
        }),
        Procedure::Join(request) => handle_join(daemon, request).await,
        Procedure::WriteConfig { config_json } => {
            let state = daemon.state.clone();
            blocking(move || crate::roles::write_config(&state, &config_json)).await?;
            Ok(Reply::Done)
        }
        Procedure::InstallCandidateFiles {
            ca_key,
            config_json,
        } => {
            let state = daemon.state.clone();
            blocking(move || {
                crate::roles::install_candidate_files(&state, ca_key.as_ref(), &config_json)
            })
            .await?;
            tracing::info!("now holding the master-candidate files (CA key, config)");
            Ok(Reply::Done)
        }
        Procedure::RemoveCandidateFiles => {
            if daemon.is_master.load(Ordering::Acquire) {
                return Err(failed(
                    "this node is the master; fail over to another candidate first",
                ));
            }
            let state = daemon.state.clone();
            blocking(move || crate::roles::remove_candidate_files(&state)).await?;
            tracing::info!("master-candidate files removed (CA key, config, SSH private key)");
            Ok(Reply::Done)
        }
        Procedure::GenerateSshKey => {
            let state = daemon.state.clone();
            let name = daemon.identity.name.clone();
            let public = blocking(move || crate::roles::ensure_ssh_key(&state, &name)).await?;
            Ok(Reply::SshPublicKey(public))
        }
        Procedure::PrepareClientKey => {
            let state = daemon.state.clone();
            let name = daemon.identity.name.clone();
            let csr = blocking(move || crate::roles::prepare_client_key(&state, &name)).await?;
            Ok(Reply::Csr(csr))
        }
        Procedure::InstallClientCert { cert_pem } => {
            let state = daemon.state.clone();
            blocking(move || crate::roles::install_client_cert(&state, &cert_pem)).await?;
            match crate::daemon::load_client_facts(&daemon.state) {
                Ok(facts) => daemon.client_cert.store(Arc::new(facts)),
                Err(e) => tracing::error!("new client certificate unreadable: {e}"),
            }
            tracing::info!("client certificate replaced");
            Ok(Reply::Done)
        }
        Procedure::InstallServerCert { cert_pem, key } => {
            let state = daemon.state.clone();
            blocking(move || crate::roles::install_server_cert(&state, &cert_pem, &key)).await?;
            crate::daemon::reload_certificates(daemon);
            Ok(Reply::Done)
        }
        Procedure::InstallCaBundle { ca_pem } => {
            let state = daemon.state.clone();
            blocking(move || crate::roles::install_ca_bundle(&state, &ca_pem)).await?;
            crate::daemon::reload_certificates(daemon);
            Ok(Reply::Done)
        }
        Procedure::ReplaceSshKey => {
            let state = daemon.state.clone();
            let name = daemon.identity.name.clone();
            let public = blocking(move || crate::roles::replace_ssh_key(&state, &name)).await?;
            Ok(Reply::SshPublicKey(public))
        }
        Procedure::WriteAuthorizedKeys { keys } => {
            let path = daemon.state.authorized_keys();
            blocking(move || crate::ssh::write_authorized_keys(&path, &keys)).await?;
            Ok(Reply::Done)
        }
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
