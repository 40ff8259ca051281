//! `nodectl list`.

use serde::Serialize;
use ssconf::Ssconf;

use super::output::{print_json, print_table};
use super::Outcome;
use crate::core::time::rfc3339;
use crate::core::Result;
use crate::state::config::ClusterConfig;
use crate::state::{self, StateDir};

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
}

/// `nodectl list`: from config.json on the master and candidates, from
/// ssconf elsewhere (which knows no uuids, digests or expiry dates).
pub fn list(state: &StateDir, json: bool) -> Result<Outcome> {
    let rows: Vec<ListedNode> = if state.config_json().exists() {
        let config: ClusterConfig = state::read_json(&state.config_json())?;
        let mut nodes = config.nodes;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
            .into_iter()
            .map(|n| ListedNode {
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
