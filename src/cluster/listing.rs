//! What `nodectl list` and the API's `GET /v1/nodes` show of each node, and
//! the health they show it with: one definition for both.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::core::time::{now, rfc3339};
use crate::state::config::ClusterConfig;
use crate::wire::NodeHealth;

/// One node as `list` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ListedNode {
    pub name: String,
    pub uuid: String,
    pub address: String,
    /// `master`, `candidate` or `regular`.
    pub role: String,
    pub offline: bool,
    /// Digest of the node's client certificate.
    pub digest: String,
    /// RFC 3339, UTC; empty when unknown.
    pub cert_expires: String,
    /// Whether the master's last heartbeat reached the node (the master
    /// itself: whether its daemon answered); null when unknown.
    pub reachable: Option<bool>,
    /// RFC 3339, UTC, of the last heartbeat the node answered; null when
    /// unknown or never.
    pub last_seen: Option<String>,
}

/// `{"nodes": [...]}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeList {
    pub nodes: Vec<ListedNode>,
}

/// The master's health table by name, the master itself added as reachable
/// now (its daemon is the one answering).
pub fn health_by_name(
    config: &ClusterConfig,
    mut nodes: Vec<NodeHealth>,
) -> BTreeMap<String, NodeHealth> {
    if let Ok(master) = config.master() {
        nodes.push(NodeHealth {
            name: master.name.clone(),
            reachable: true,
            last_seen: now(),
            serial: config.serial,
            term: config.term,
            client_cert_expires: 0,
            server_cert_expires: 0,
            error: None,
        });
    }
    nodes.into_iter().map(|h| (h.name.clone(), h)).collect()
}

/// Every node of `config`, by name, with its health.
pub fn node_rows(config: &ClusterConfig, health: &BTreeMap<String, NodeHealth>) -> Vec<ListedNode> {
    let mut nodes = config.nodes.clone();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
        .into_iter()
        .map(|n| ListedNode {
            reachable: health.get(&n.name).map(|h| h.reachable),
            last_seen: health
                .get(&n.name)
                .filter(|h| h.last_seen > 0)
                .map(|h| rfc3339(h.last_seen)),
            name: n.name,
            uuid: n.uuid,
            address: n.address,
            role: n.role.as_str().to_owned(),
            offline: n.offline,
            digest: n.digest,
            cert_expires: rfc3339(n.cert_expires),
        })
        .collect()
}

/// `status --json` and `GET /v1/status` (SPEC §2.2): `term`, `commit_index`
/// (the last log index applied) and `voters` as this node's Raft sees them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Status {
    pub cluster: String,
    pub master: String,
    pub term: u64,
    pub commit_index: u64,
    pub voters: Vec<String>,
    pub ca_rotation: CaRotation,
    pub nodes: Vec<NodeStatus>,
}

/// The phase of a CA rotation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CaRotation {
    /// `none`; or the phase of the rotation under way: `trust` (both CAs
    /// being given to every node), `reissue` (the new CA signs; every
    /// certificate being reissued by it), `drop` (the old CA leaving every
    /// trust store), `rollback` (`--rollback-ca`).
    pub phase: String,
    /// The phase is complete and the rotation paused there
    /// (`--stop-after`); `--continue-ca` goes on.
    pub paused: bool,
    /// When the rotation began (RFC 3339, UTC); null between rotations.
    pub started: Option<String>,
}

/// One node in [`Status`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeStatus {
    pub name: String,
    /// `master`, `candidate` or `regular`.
    pub role: String,
    /// Whether the master's last heartbeat reached it; null when unknown.
    pub reachable: Option<bool>,
    /// RFC 3339, UTC, of the last heartbeat it answered.
    pub last_seen: Option<String>,
    /// The ssconf serial it reported then.
    pub serial: Option<u64>,
    pub term: u64,
    /// RFC 3339, UTC.
    pub client_cert_expires: String,
    /// RFC 3339, UTC, as the node reported it; null when unknown.
    pub server_cert_expires: Option<String>,
}

/// The status document of `config`, with `health` by name.
pub fn status(
    config: &ClusterConfig,
    health: &BTreeMap<String, NodeHealth>,
    raft: Option<&crate::wire::RaftInfo>,
) -> crate::core::Result<Status> {
    let mut nodes: Vec<NodeStatus> = config
        .nodes
        .iter()
        .map(|n| {
            let h = health.get(&n.name);
            let seen = h.filter(|h| h.last_seen > 0);
            NodeStatus {
                name: n.name.clone(),
                role: n.role.as_str().to_owned(),
                reachable: h.map(|h| h.reachable),
                last_seen: seen.map(|h| rfc3339(h.last_seen)),
                serial: seen.map(|h| h.serial),
                term: seen.map(|h| h.term).unwrap_or(0),
                client_cert_expires: rfc3339(n.cert_expires),
                server_cert_expires: h
                    .filter(|h| h.server_cert_expires > 0)
                    .map(|h| rfc3339(h.server_cert_expires)),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let master = config.master()?.name.clone();
    Ok(Status {
        cluster: config.cluster_name.clone(),
        voters: raft.map(|r| r.voters.clone()).unwrap_or_default(),
        master,
        term: raft.map(|r| r.term).unwrap_or(config.term),
        commit_index: raft.map(|r| r.applied_index).unwrap_or(0),
        ca_rotation: CaRotation {
            phase: crate::cluster::ca_rotation::phase_of(config).to_owned(),
            paused: config.ca_rotation.as_ref().is_some_and(|r| r.complete),
            started: config
                .ca_rotation
                .as_ref()
                .map(|r| crate::core::time::rfc3339(r.started)),
        },
        nodes,
    })
}
