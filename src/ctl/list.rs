//! `nodectl list`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use ssconf::Ssconf;

use super::output::{print_json, print_table};
use super::Outcome;
use crate::core::time::{now, rfc3339};
use crate::core::Result;
use crate::rpc::RpcClient;
use crate::state::config::ClusterConfig;
use crate::state::{self, StateDir};
use crate::wire::{NodeHealth, Procedure, Reply};

/// One row of `nodectl list`.
#[derive(Debug, Serialize)]
struct ListedNode {
    name: String,
    uuid: String,
    address: String,
    role: String,
    offline: bool,
    digest: String,
    /// RFC 3339, UTC; empty when unknown.
    cert_expires: String,
    /// Whether the master's last heartbeat reached the node (the master
    /// itself: whether its daemon answered); null when unknown.
    reachable: Option<bool>,
    /// RFC 3339, UTC, of the last heartbeat the node answered; null when
    /// unknown or never.
    last_seen: Option<String>,
}

/// Each node's health from the master's convergence loop, by name; empty
/// when the master's daemon cannot be asked. The master itself is
/// reachable when its daemon answered.
pub async fn master_health(
    state: &StateDir,
    config: &ClusterConfig,
) -> BTreeMap<String, NodeHealth> {
    let asked = async {
        let master = config.master()?;
        let mut client = RpcClient::from_state(state)?;
        client.connect_timeout = Duration::from_secs(3);
        client.call_timeout = Duration::from_secs(3);
        let mut conn = client.connect(&master.name, &master.address).await?;
        let Reply::Health(nodes) = conn.call(Procedure::Health).await? else {
            return Ok(Vec::new());
        };
        let mut nodes = nodes;
        nodes.push(NodeHealth {
            name: master.name.clone(),
            reachable: true,
            last_seen: now(),
            serial: config.serial,
            client_cert_expires: 0,
            server_cert_expires: 0,
            error: None,
        });
        Ok::<_, crate::core::Error>(nodes)
    };
    match asked.await {
        Ok(nodes) => nodes.into_iter().map(|h| (h.name.clone(), h)).collect(),
        Err(e) => {
            tracing::debug!("no health from the master: {e}");
            BTreeMap::new()
        }
    }
}

/// `nodectl list`: from config.json on the master and candidates (with the
/// health the master's daemon holds), from ssconf elsewhere (which knows
/// no uuids, digests, expiry dates or health).
pub async fn list(state: &StateDir, json: bool) -> Result<Outcome> {
    let rows: Vec<ListedNode> = if state.config_json().exists() {
        let config: ClusterConfig = state::read_json(&state.config_json())?;
        let health = master_health(state, &config).await;
        let mut nodes = config.nodes;
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
    } else {
        state.check_initialised()?;
        let ssconf = Ssconf::load(&state.ssconf_dir())?;
        ssconf
            .node_addresses
            .iter()
            .map(|(name, address)| ListedNode {
                role: if *name == ssconf.master_node {
                    "master"
                } else if ssconf.master_candidates.contains(name) {
                    "candidate"
                } else {
                    "regular"
                }
                .to_owned(),
                offline: ssconf.offline_nodes.contains(name),
                name: name.clone(),
                uuid: String::new(),
                address: address.clone(),
                digest: String::new(),
                cert_expires: String::new(),
                reachable: None,
                last_seen: None,
            })
            .collect()
    };
    if json {
        print_json(&NodeList { nodes: rows })?;
    } else {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.role.clone(),
                    if r.offline { "yes" } else { "no" }.to_owned(),
                    match r.reachable {
                        Some(true) => "yes",
                        Some(false) => "NO",
                        None => "?",
                    }
                    .to_owned(),
                    r.address.clone(),
                    r.cert_expires.clone(),
                    r.digest.clone(),
                ]
            })
            .collect();
        print_table(
            &[
                "NAME",
                "ROLE",
                "OFFLINE",
                "REACHABLE",
                "ADDRESS",
                "CERT EXPIRES",
                "DIGEST",
            ],
            &table,
        )?;
    }
    Ok(Outcome::Success)
}

/// `nodectl list --json`.
#[derive(Debug, Serialize)]
struct NodeList {
    nodes: Vec<ListedNode>,
}
