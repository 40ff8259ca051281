//! This node's part in Raft (SPEC §10): the instance it runs while it is
//! the master or a candidate, the procedures that reach it, and the watch
//! that makes the leader the master.
//!
//! Raft runs whenever `config.json` is here: from the start on the master
//! and the candidates, from `install-candidate-files` on a promoted node;
//! `remove-candidate-files` stops it and removes `raft/`. The master is the
//! leader: a node is the master (loop, joins, changes) only while its Raft
//! leads with a majority's recent acknowledgement, and a voter elected
//! leader makes itself the master in the config by a committed change.

use std::sync::Arc;
use std::time::Duration;

use super::handlers::failed;
use super::server::Daemon;
use crate::cluster::raft::RaftNode;
use crate::core::{Error, Result};
use crate::wire::{RaftCall, Reply, RpcError, RpcErrorKind};

/// Starts Raft if this node holds the config and runs none yet.
pub async fn start(daemon: &Arc<Daemon>) -> Result<()> {
    let _changing = daemon.raft_changing.lock().await;
    if !daemon.state.config_json().exists() || daemon.raft.load().is_some() {
        return Ok(());
    }
    let node = RaftNode::start(&daemon.state, &daemon.identity).await?;
    tracing::info!(id = node.id, "raft started");
    daemon.raft.store(Some(Arc::new(node.clone())));
    tokio::spawn(watch_leadership(daemon.clone(), node));
    Ok(())
}

/// How soon a start of Raft that failed is tried again.
const START_RETRY: Duration = Duration::from_secs(2);

/// Starts Raft whenever this node comes to hold the config, woken by
/// `raft_wanted`: every path that writes `config.json` while the daemon
/// runs (`install-candidate-files`, `write-config`, `recover --force`)
/// wakes it. A start that failed is tried again every `START_RETRY`;
/// otherwise the task sleeps, so a regular node has no timer of its own
/// here.
pub async fn supervise(daemon: Arc<Daemon>) {
    let mut failed = false;
    loop {
        if failed {
            let _ = tokio::time::timeout(START_RETRY, daemon.raft_wanted.notified()).await;
        } else {
            daemon.raft_wanted.notified().await;
        }
        failed = match start(&daemon).await {
            Ok(()) => false,
            Err(e) => {
                tracing::error!("raft does not start: {e}; trying again in {START_RETRY:?}");
                true
            }
        };
    }
}

/// Stops Raft and removes `raft/` (a demoted or removed candidate).
pub async fn stop(daemon: &Daemon) -> Result<()> {
    let _changing = daemon.raft_changing.lock().await;
    if let Some(node) = daemon.raft.swap(None) {
        node.shutdown().await;
        tracing::info!("raft stopped");
    }
    let dir = daemon.state.raft_dir();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&dir)(e)),
    }
}

fn running(daemon: &Daemon) -> std::result::Result<Arc<RaftNode>, RpcError> {
    daemon
        .raft
        .load_full()
        .ok_or_else(|| failed("this node runs no Raft (it is not a master candidate)"))
}

/// `raft`: a message from a peer.
pub async fn answer(
    daemon: &Daemon,
    call: RaftCall,
    body: Vec<u8>,
) -> std::result::Result<Reply, RpcError> {
    let node = running(daemon)?;
    node.answer(call, &body)
        .await
        .map(|body| Reply::Raft { body })
        .map_err(|e| failed(e.to_string()))
}

/// `propose`: commits a change made on this node (by its nodectl or its
/// own tasks), then brings the membership to what the change asks.
pub async fn propose(
    daemon: &Daemon,
    base_serial: u64,
    config_json: String,
) -> std::result::Result<Reply, RpcError> {
    let node = running(daemon)?;
    let config: crate::state::config::ClusterConfig = serde_json::from_str(&config_json)
        .map_err(|e| failed(format!("proposed config is malformed: {e}")))?;
    let serial = config.serial;
    let (term, index) = node
        .propose(base_serial, config.clone())
        .await
        .map_err(|e| match e {
            Error::Unconfirmed(message) => RpcError {
                kind: RpcErrorKind::Unconfirmed,
                message,
            },
            e => failed(e.to_string()),
        })?;
    daemon.config_changed.notify_one();
    let mut applied = config;
    applied.term = term;
    if let Err(e) = node.reconcile_membership(&applied).await {
        tracing::warn!("raft membership not brought up to date yet: {e}");
    }
    Ok(Reply::Committed {
        term,
        index,
        serial,
    })
}

/// `confirm-leadership`: this node leads, a majority says so now.
pub async fn confirm(daemon: &Daemon) -> std::result::Result<Reply, RpcError> {
    match daemon.raft.load_full() {
        None => Ok(Reply::Done),
        Some(node) => node
            .confirm_leadership()
            .await
            .map(|()| Reply::Done)
            .map_err(|e| failed(e.to_string())),
    }
}

/// `recover`: refused while a majority of voters answers; otherwise this
/// node becomes the only voter and the master in a new term
/// ([`crate::cluster::raft::force_recovery`]), Raft starts again, and the
/// new state is pushed to every node.
pub async fn recover(daemon: &Daemon) -> std::result::Result<Reply, RpcError> {
    let node = running(daemon)?;
    let info = node.info();
    let silent = node.silent_voters().await;
    let answering = info.voters.len().saturating_sub(silent.len());
    if answering * 2 > info.voters.len() {
        return Err(failed(format!(
            "{answering} of {} voters ({}) answer: a majority is not lost; use `nodectl master-failover` (recover --force is for a majority lost for good)",
            info.voters.len(),
            info.voters.join(", ")
        )));
    }
    let held_serial = crate::cluster::raft::machine::held_version(&daemon.state)
        .map_err(|e| failed(e.to_string()))?
        .1;
    let term = node.raft.metrics().borrow().current_term;
    // Until the store is rewritten: a start by the supervisor (woken by
    // another call meanwhile) would otherwise bring back the old
    // membership, which cannot elect a leader.
    let changing = daemon.raft_changing.lock().await;
    daemon.raft.store(None);
    node.shutdown().await;
    tracing::warn!(term, lost = ?silent, "recover --force: this node becomes the only voter");
    let recovered =
        crate::cluster::raft::force_recovery(&daemon.state, &daemon.identity, term, &silent);
    drop(changing);
    // Raft starts again from what is on disk, recovered or not: a failed
    // recovery leaves the node answering its peers and ready for another
    // `recover --force` once the cause is fixed.
    daemon.raft_wanted.notify_one();
    let config = recovered.map_err(|e| {
        tracing::error!("recover --force failed: {e}");
        failed(format!(
            "recovery failed: {e}; Raft starts again from its store: fix the cause, then run `nodectl recover --force` again"
        ))
    })?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if daemon.raft.load().as_ref().is_some_and(|n| n.leads()) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(failed(
                "the recovered Raft does not lead within 10s; see noded's log",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.refresh_role();
    let state = &daemon.state;
    let pushed = async {
        crate::cluster::apply_locally(state, &config, crate::cluster::PushItems::ALL)?;
        let client = crate::rpc::RpcClient::from_state(state)?;
        crate::cluster::push(
            &client,
            &config,
            crate::cluster::PushItems::ALL,
            &[&daemon.identity.name],
            &|| {},
        )
        .await
    }
    .await
    .map_err(|e| failed(e.to_string()))?;
    daemon.reload_ssconf().await;
    Ok(Reply::Recovered {
        term: config.term,
        serial: config.serial,
        held_serial,
        lost: silent,
        unreachable: pushed.unreachable,
    })
}

/// `raft-status`.
pub fn status(daemon: &Daemon) -> Reply {
    Reply::RaftStatus(daemon.raft.load().as_ref().map(|n| Box::new(n.info())))
}

/// `transfer-leadership`: makes `to` (this node when `None`) the leader:
/// the leader checks `to` is an up-to-date voter and stops its heartbeats,
/// then `to` stands for election until it wins or 3 election timeouts
/// pass.
pub async fn transfer(daemon: &Daemon, to: Option<String>) -> std::result::Result<Reply, RpcError> {
    let node = running(daemon)?;
    let config = crate::cluster::load_config(&daemon.state).map_err(|e| failed(e.to_string()))?;
    let target = match &to {
        None => daemon.identity.clone().uuid,
        Some(name) => config.node(name).map(|n| n.uuid.clone()).ok_or_else(|| {
            failed(format!(
                "unknown node {name:?}; `nodectl list` shows the cluster's nodes"
            ))
        })?,
    };
    let target_name = to.unwrap_or_else(|| daemon.identity.name.clone());
    let target_id = crate::cluster::raft::node_id(&target);
    let leader = node.raft.metrics().borrow().current_leader;
    if leader == Some(target_id) {
        return Ok(Reply::Done);
    }
    let Some(leader) = leader else {
        let silent = node.silent_voters().await;
        return Err(failed(format!(
            "no master is elected now: no majority of voters answers ({} did not); nothing was changed",
            if silent.is_empty() { "a voter".to_owned() } else { silent.join(", ") }
        )));
    };
    let peer_of = |id: u64| {
        node.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    };
    let body = serde_json::to_vec(&target_id).map_err(|e| failed(e.to_string()))?;
    let ttl = Duration::from_secs(6);
    let leader_peer =
        peer_of(leader).ok_or_else(|| failed("the leader is not in the membership"))?;
    if leader == node.id {
        node.answer(RaftCall::StepDown, &body)
            .await
            .map_err(|e| failed(e.to_string()))?;
    } else {
        call_peer(daemon, &leader_peer, RaftCall::StepDown, body, ttl).await?;
    }
    let target_peer = peer_of(target_id).ok_or_else(|| {
        failed(format!(
            "{target_name} is not a member of Raft; promote it first"
        ))
    })?;
    // The voters grant no vote while the leader's lease (one election
    // timeout from its last heartbeat) holds: stand once it has run out,
    // then once more if that election was split.
    let lease = Duration::from_millis(crate::cluster::raft::ELECTION_MAX_MS + 100);
    let metrics = node.raft.metrics();
    for _ in 0..2 {
        tokio::time::sleep(lease).await;
        if metrics.borrow().current_leader == Some(target_id) {
            return Ok(Reply::Done);
        }
        if target_id == node.id {
            let _ = node.raft.trigger().elect().await;
        } else {
            let _ = call_peer(daemon, &target_peer, RaftCall::Elect, Vec::new(), ttl).await;
        }
        let until = tokio::time::Instant::now() + lease;
        while tokio::time::Instant::now() < until {
            if metrics.borrow().current_leader == Some(target_id) {
                return Ok(Reply::Done);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Err(failed(format!(
        "{target_name} did not win the election (leader now: {}); see `nodectl status`",
        node.leader_name().unwrap_or_else(|| "none".into())
    )))
}

async fn call_peer(
    daemon: &Daemon,
    peer: &crate::cluster::raft::Peer,
    call: RaftCall,
    body: Vec<u8>,
    ttl: Duration,
) -> std::result::Result<Vec<u8>, RpcError> {
    let mut conn = None;
    crate::cluster::raft::network::exchange(&daemon.state, &mut conn, peer, call, body, ttl)
        .await
        .map_err(|(_, why)| failed(format!("{}: {why}", peer.name)))
}

/// A node that is not the master keeps no join tokens: those it made name
/// it as the master, and no joiner can use them any more.
fn drop_stale_tokens(daemon: &Daemon) {
    let path = daemon.state.tokens_json();
    if !path.exists() {
        return;
    }
    let Ok(config) = crate::cluster::load_config(&daemon.state) else {
        return;
    };
    if config
        .master()
        .is_ok_and(|m| m.uuid != daemon.identity.uuid)
    {
        match ssconf::atomic::remove_durable(&path) {
            Ok(()) => tracing::info!("join tokens made here removed: another node is the master"),
            Err(e) => tracing::warn!("{}: {e}", path.display()),
        }
    }
}

/// Follows this node's leadership: refreshes whether it is the master, and
/// once it leads, makes the config say so and keeps the membership to
/// what the config asks (after each applied change, and every 5 s until
/// it does: a new candidate's daemon may start later than its join).
async fn watch_leadership(daemon: Arc<Daemon>, node: RaftNode) {
    let mut metrics = node.raft.metrics();
    let mut applied = node.applied();
    let mut leading = false;
    let mut settled = false;
    let mut last_try: Option<tokio::time::Instant> = None;
    loop {
        let changed = tokio::time::timeout(Duration::from_millis(500), metrics.changed()).await;
        if matches!(changed, Ok(Err(_))) {
            return;
        }
        if daemon.raft.load().as_ref().is_none_or(|n| n.id != node.id) {
            return;
        }
        let leads = node.leads();
        daemon.refresh_role();
        if leads != leading {
            let term = node.raft.metrics().borrow().current_term;
            tracing::info!(
                term,
                "raft leadership {}",
                if leads { "taken" } else { "lost" }
            );
            leading = leads;
            settled = false;
            last_try = None;
        }
        if !leads {
            drop_stale_tokens(&daemon);
            continue;
        }
        let config_changed = applied.has_changed().unwrap_or(false);
        // Settled: the membership is what the applied config asks, until
        // the next change. Unsettled (just elected, or a member that did
        // not answer): at once, then every 5 s.
        let due = config_changed
            || (!settled && last_try.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)));
        if !due {
            continue;
        }
        applied.borrow_and_update();
        last_try = Some(tokio::time::Instant::now());
        match crate::cluster::failover::take_over(&daemon.state, &node).await {
            Ok(()) => settled = true,
            Err(e) => tracing::warn!("bringing raft's membership to the config: {e}; retrying"),
        }
        if !settled {
            daemon.reload_ssconf().await;
        }
    }
}
