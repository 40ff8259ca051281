//! Commit and push: the master bumps the serial, commits the config,
//! applies it locally, then its daemon brings every other online node up
//! to date ([`distribute`]); [`push`] sends a state to every node over
//! connections of its own (after a failover or a recovery, when the new
//! master's loop holds no connection yet).
//!
//! What goes where (SPEC §3): the full config to master candidates, ssconf
//! and the managed authorized_keys block to every online node. A node that
//! cannot be reached is named in the [`PushOutcome`]; the others are not
//! held back by it.

use crate::core::{Error, Result};
use crate::rpc::fanout::{fan_out, CONCURRENCY};
use crate::rpc::RpcClient;
use crate::state::config::{ClusterConfig, NodeRecord};
use crate::state::{self, StateDir};
use crate::wire::{Procedure, Reply, Resend};

/// What a push carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushItems {
    /// ssconf to every online node.
    pub ssconf: bool,
    /// `config.json` to every online master candidate.
    pub config: bool,
    /// The managed authorized_keys block to every online node.
    pub authorized_keys: bool,
}

impl PushItems {
    pub const ALL: PushItems = PushItems {
        ssconf: true,
        config: true,
        authorized_keys: true,
    };
}

/// Nodes a push did not reach, with why.
#[derive(Debug, Clone, Default)]
pub struct PushOutcome {
    pub unreachable: Vec<(String, String)>,
}

impl PushOutcome {
    pub fn is_complete(&self) -> bool {
        self.unreachable.is_empty()
    }

    /// Prints one `warning:` line per unreachable node to stderr.
    pub fn report(&self) {
        for (node, why) in &self.unreachable {
            eprintln!("warning: {node} not updated: {why}");
        }
    }
}

/// The public keys that belong in every authorized_keys: those of the
/// online master candidates (the master included).
pub fn candidate_ssh_keys(config: &ClusterConfig) -> Vec<String> {
    let mut nodes: Vec<&NodeRecord> = config
        .nodes
        .iter()
        .filter(|n| n.role.is_candidate() && !n.offline)
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
        .into_iter()
        .filter_map(|n| n.ssh_public_key.clone())
        .collect()
}

/// Writes this node's own copies (ssconf, authorized_keys) of what `items`
/// pushes to the others.
pub fn apply_locally(state: &StateDir, config: &ClusterConfig, items: PushItems) -> Result<()> {
    if items.ssconf {
        config.to_ssconf()?.store(&state.ssconf_dir())?;
    }
    if items.authorized_keys {
        crate::state::ssh::write_authorized_keys(
            &state.authorized_keys(),
            &candidate_ssh_keys(config),
        )?;
    }
    Ok(())
}

/// Pushes `items` of `config` to every online node except those named in
/// `skip`, in parallel; `on_done` is called as each node finishes.
pub async fn push(
    client: &RpcClient,
    config: &ClusterConfig,
    items: PushItems,
    skip: &[&str],
    on_done: &(dyn Fn() + Sync),
) -> Result<PushOutcome> {
    let set = config.to_ssconf()?;
    // Each node must prove it is the node this config records.
    client.trust_servers(&set);
    let ssconf_files = set.render();
    let config_json = String::from_utf8(state::to_json(config)?)
        .map_err(|e| Error::Invalid(format!("config is not UTF-8: {e}")))?;
    let keys = candidate_ssh_keys(config);
    let targets: Vec<NodeRecord> = config
        .nodes
        .iter()
        .filter(|n| !n.offline && !skip.contains(&n.name.as_str()))
        .cloned()
        .collect();
    let results = fan_out(&targets, CONCURRENCY, on_done, |node| {
        let client = client.clone();
        let ssconf_files = ssconf_files.clone();
        let config_json = config_json.clone();
        let keys = keys.clone();
        async move {
            let mut conn = client.connect(&node.name, &node.address).await?;
            if items.ssconf {
                conn.call(Procedure::WriteSsconf {
                    files: ssconf_files,
                })
                .await?;
            }
            if items.config && node.role.is_candidate() {
                conn.call(Procedure::WriteConfig { config_json }).await?;
            }
            if items.authorized_keys {
                conn.call(Procedure::WriteAuthorizedKeys { keys }).await?;
            }
            Ok(())
        }
    })
    .await;
    let mut outcome = PushOutcome::default();
    for (node, result) in results {
        if let Err(e) = result {
            outcome.unreachable.push((node.name, e.to_string()));
        }
    }
    outcome.unreachable.sort();
    Ok(outcome)
}

/// Bumps the serial, commits the config through Raft (this node's daemon
/// proposes it; it is distributed only once a majority of voters stored
/// it), applies it locally and has this node's daemon bring every other
/// online node up to date ([`distribute`]).
pub async fn commit(
    state: &StateDir,
    config: &mut ClusterConfig,
    items: PushItems,
    on_done: &(dyn Fn() + Sync),
) -> Result<PushOutcome> {
    commit_resending(state, config, items, Resend::Changes, on_done).await
}

/// [`commit`], the nodes `resend` names asked for their state and sent
/// whatever of it differs (a repair), not only the change.
pub async fn commit_resending(
    state: &StateDir,
    config: &mut ClusterConfig,
    items: PushItems,
    resend: Resend,
    on_done: &(dyn Fn() + Sync),
) -> Result<PushOutcome> {
    let base = config.serial;
    config.serial += 1;
    match super::raft::propose_locally(state, base, config).await {
        Ok(term) => config.term = term,
        Err(e) => {
            config.serial = base;
            return Err(e);
        }
    }
    apply_locally(state, config, items)?;
    distribute(state, config.serial, resend, on_done).await
}

/// Has this node's daemon, the master, bring every other online node to
/// config `serial` (or later) in a round of its convergence loop: over the
/// loop's kept connections (no TLS handshake per node and command) and as
/// a patch of the ssconf each node holds. Whatever of the config a node's
/// role needs and it lacks is sent (ssconf, authorized_keys, for a
/// candidate the config); the nodes `resend` names are asked what they
/// hold first. `on_done` is called once per node reached or not, when the
/// round is over.
pub async fn distribute(
    state: &StateDir,
    serial: u64,
    resend: Resend,
    on_done: &(dyn Fn() + Sync),
) -> Result<PushOutcome> {
    let call = Procedure::Distribute { serial, resend };
    match super::raft::local_call(state, call).await? {
        Reply::Distributed { nodes, behind, .. } => {
            for _ in 0..nodes {
                on_done();
            }
            let mut outcome = PushOutcome {
                unreachable: behind,
            };
            outcome.unreachable.sort();
            Ok(outcome)
        }
        other => Err(Error::Invalid(format!(
            "unexpected reply to distribute: {other:?}"
        ))),
    }
}

/// Calls one procedure on one node.
pub async fn call(client: &RpcClient, node: &NodeRecord, procedure: Procedure) -> Result<Reply> {
    let mut conn = client.connect(&node.name, &node.address).await?;
    conn.call(procedure).await
}
