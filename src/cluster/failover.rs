//! A new leader takes over as master (SPEC §10.2): once Raft elects this
//! node, it commits a config that names it the master, then pushes it to
//! every node. The old master becomes a candidate; it follows the new term
//! when it comes back.

use crate::cluster::raft::RaftNode;
use crate::cluster::{self, PushItems};
use crate::core::{Error, Result};
use crate::rpc::RpcClient;
use crate::state::config::NodeRole;
use crate::state::users::{append, AuditEntry};
use crate::state::StateDir;

/// Makes the config name this node, the Raft leader, the master (if it does
/// not yet), and the membership follow the config.
pub async fn take_over(state: &StateDir, node: &RaftNode) -> Result<()> {
    let identity = state.load_identity()?;
    let config = cluster::load_config(state)?;
    let me = config
        .nodes
        .iter()
        .find(|n| n.uuid == identity.uuid)
        .ok_or_else(|| Error::Invalid("this node is not in its own cluster config".into()))?;
    if me.role == NodeRole::Master {
        return node.reconcile_membership(&config).await;
    }
    // The config read above may predate entries committed before this
    // term: read it again once a majority confirmed and they are applied.
    node.confirm_leadership().await?;
    let config = cluster::load_config(state)?;
    let old = config.master().map(|m| m.name.clone()).unwrap_or_default();
    let mut next = config.clone();
    for n in &mut next.nodes {
        if n.role == NodeRole::Master {
            n.role = NodeRole::Candidate;
        }
        if n.uuid == identity.uuid {
            n.role = NodeRole::Master;
            n.offline = false;
        }
    }
    next.serial += 1;
    append(
        &mut next.audit,
        AuditEntry::now(
            "noded",
            "master-failover",
            &identity.name,
            &format!("ok: elected; {old} was the master"),
        ),
    );
    let (term, _) = node.propose(config.serial, next.clone()).await?;
    next.term = term;
    tracing::info!(
        term,
        serial = next.serial,
        "{} is the master now; {old} is a master candidate",
        identity.name
    );
    cluster::apply_locally(state, &next, PushItems::ALL)?;
    let client = RpcClient::from_state(state)?;
    let pushed = cluster::push(&client, &next, PushItems::ALL, &[&identity.name], &|| {}).await?;
    for (name, why) in &pushed.unreachable {
        tracing::warn!(node = %name, "not told of the new master yet: {why}");
    }
    node.reconcile_membership(&next).await
}
