//! Cluster-wide changes, as the master makes them: lock, change the config,
//! bump its serial, save it, then push the new state to the nodes.
//!
//! What goes where (SPEC §3): the full config to master candidates, ssconf
//! and the managed authorized_keys block to every online node. The master
//! writes its own copies locally; everything else travels over RPC, to all
//! nodes in parallel with bounded concurrency and per-node timeouts. A node
//! that cannot be reached is named in the [`PushOutcome`]; the others are
//! not held back by it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use ssconf::Ssconf;
use tokio::sync::Semaphore;

use crate::client::RpcClient;
use crate::config::{ClusterConfig, NodeRecord};
use crate::error::{Error, Result};
use crate::frame::{Procedure, Reply};
use crate::state::{self, StateDir, MODE_SECRET};

/// Nodes pushed to at once.
pub const PUSH_CONCURRENCY: usize = 32;

/// The exclusive lock on the cluster config (`config.lock` in the state
/// dir), held for the whole of a mutating command.
#[derive(Debug)]
pub struct ClusterLock {
    _file: File,
}

impl ClusterLock {
    /// Takes the lock. Without `wait`, fails at once naming the holder.
    pub fn acquire(state: &StateDir, wait: bool, holder: &str) -> Result<Self> {
        let path = state.root().join("config.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(MODE_SECRET)
            .open(&path)
            .map_err(Error::io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) if wait => file.lock().map_err(Error::io(&path))?,
            Err(TryLockError::WouldBlock) => {
                let mut who = String::new();
                let _ = file.read_to_string(&mut who);
                return Err(Error::Invalid(format!(
                    "another command holds the cluster lock ({}); retry when it is done, or pass --wait",
                    who.trim()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path)(e)),
        }
        // Record the holder for whoever finds the lock taken.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "pid {}: {holder}", std::process::id());
        let _ = file.flush();
        Ok(ClusterLock { _file: file })
    }
}

/// Loads `config.json`.
pub fn load_config(state: &StateDir) -> Result<ClusterConfig> {
    state::read_json(&state.config_json())
}

/// Saves `config.json` atomically, mode 0600.
pub fn save_config(state: &StateDir, config: &ClusterConfig) -> Result<()> {
    state.write(&state.config_json(), &state::to_json(config)?, MODE_SECRET)
}

/// The config, if this node is the master; otherwise the SPEC's error
/// naming the master.
pub fn master_config(state: &StateDir) -> Result<ClusterConfig> {
    state.check_initialised()?;
    let identity = state.load_identity()?;
    let not_master = |master: &str| {
        Error::Invalid(format!(
            "this node is not the master (master is {master}); run this on {master}"
        ))
    };
    if !state.config_json().exists() {
        let ssconf = Ssconf::load(&state.ssconf_dir())?;
        return Err(not_master(&ssconf.master_node));
    }
    let config = load_config(state)?;
    let master = config.master()?;
    if master.uuid != identity.uuid {
        return Err(not_master(&master.name));
    }
    Ok(config)
}

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
        crate::ssh::write_authorized_keys(&state.authorized_keys(), &candidate_ssh_keys(config))?;
    }
    Ok(())
}

/// Pushes `items` of `config` to every online node except those named in
/// `skip`, in parallel.
pub async fn push(
    client: &RpcClient,
    config: &ClusterConfig,
    items: PushItems,
    skip: &[&str],
) -> Result<PushOutcome> {
    let ssconf_files = config.to_ssconf()?.render();
    let config_json = String::from_utf8(state::to_json(config)?)
        .map_err(|e| Error::Invalid(format!("config is not UTF-8: {e}")))?;
    let keys = candidate_ssh_keys(config);
    let limit = Arc::new(Semaphore::new(PUSH_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for node in config
        .nodes
        .iter()
        .filter(|n| !n.offline && !skip.contains(&n.name.as_str()))
    {
        let client = client.clone();
        let node = node.clone();
        let limit = limit.clone();
        let ssconf_files = ssconf_files.clone();
        let config_json = config_json.clone();
        let keys = keys.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = async {
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
                Ok::<(), Error>(())
            }
            .await;
            (node.name, result)
        });
    }
    let mut outcome = PushOutcome::default();
    let progress = crate::progress::Progress::new(tasks.len(), "pushing cluster state");
    while let Some(joined) = tasks.join_next().await {
        progress.step();
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(e))) => outcome.unreachable.push((name, e.to_string())),
            Err(e) => return Err(Error::Invalid(format!("push task failed: {e}"))),
        }
    }
    outcome.unreachable.sort();
    Ok(outcome)
}

/// Bumps the serial, saves the config, applies it locally and pushes it to
/// every other online node.
pub async fn commit(
    state: &StateDir,
    client: &RpcClient,
    config: &mut ClusterConfig,
    items: PushItems,
    skip: &[&str],
) -> Result<PushOutcome> {
    config.serial += 1;
    save_config(state, config)?;
    apply_locally(state, config, items)?;
    let me = state.load_identity()?.name;
    let mut skip: Vec<&str> = skip.to_vec();
    skip.push(&me);
    push(client, config, items, &skip).await
}

/// Calls one procedure on one node.
pub async fn call(client: &RpcClient, node: &NodeRecord, procedure: Procedure) -> Result<Reply> {
    let mut conn = client.connect(&node.name, &node.address).await?;
    conn.call(procedure).await
}
