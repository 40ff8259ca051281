//! `nodectl list`.

use std::collections::BTreeMap;
use std::time::Duration;

use ssconf::Ssconf;

use super::output::{print_json, print_table};
use super::Outcome;
use crate::cluster::listing::{health_by_name, node_rows, ListedNode, NodeList};
use crate::core::Result;
use crate::rpc::RpcClient;
use crate::state::config::ClusterConfig;
use crate::state::{self, StateDir};
use crate::wire::{NodeHealth, Procedure, Reply};

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
            return Ok(BTreeMap::new());
        };
        Ok::<_, crate::core::Error>(health_by_name(config, nodes))
    };
    match asked.await {
        Ok(nodes) => nodes,
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
        node_rows(&config, &health)
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
