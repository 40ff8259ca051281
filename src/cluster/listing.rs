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
