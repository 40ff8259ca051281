//! `nodectl status`: the cluster at a glance (SPEC §2.2), from the config
//! of the master or a candidate and the health the master's daemon holds.
//!
//! Until the config is replicated through Raft, `term` is 0, the only
//! voter is the master and `commit_index` is the config's serial: the
//! fields are there, with what this version knows.

use serde::Serialize;

use super::list::master_health;
use super::output::{print_json, print_table};
use super::Outcome;
use crate::core::time::rfc3339;
use crate::core::{Error, Result};
use crate::state::config::ClusterConfig;
use crate::state::{self, StateDir};

#[derive(Debug, Serialize)]
struct Status {
    cluster: String,
    master: String,
    term: u64,
    commit_index: u64,
    voters: Vec<String>,
    ca_rotation: CaRotation,
    nodes: Vec<NodeStatus>,
}

#[derive(Debug, Serialize)]
struct CaRotation {
    /// `none`, `trust` (a new CA is being distributed) or `reissue` (both
    /// CAs trusted, certificates being reissued by the new one).
    phase: &'static str,
}

#[derive(Debug, Serialize)]
struct NodeStatus {
    name: String,
    role: String,
    reachable: Option<bool>,
    last_seen: Option<String>,
    serial: Option<u64>,
    term: u64,
    client_cert_expires: String,
    server_cert_expires: Option<String>,
}

/// The phase of a CA rotation, as this node's files show it.
fn ca_phase(state: &StateDir) -> Result<&'static str> {
    if state.ca_new_pem().exists() {
        return Ok("trust");
    }
    Ok(match crate::pki::load_certs(&state.ca_pem())?.len() {
        0 | 1 => "none",
        _ => "reissue",
    })
}

/// `nodectl status [--json]`.
pub async fn status(state: &StateDir, json: bool) -> Result<Outcome> {
    state.check_initialised()?;
    if !state.config_json().exists() {
        return Err(Error::Invalid(
            "this node holds no cluster config; run status on the master or a master candidate"
                .into(),
        ));
    }
    let config: ClusterConfig = state::read_json(&state.config_json())?;
    let health = master_health(state, &config).await;
    let mut nodes: Vec<NodeStatus> = config
        .nodes
        .iter()
        .map(|n| {
            let h = health.get(&n.name);
            NodeStatus {
                name: n.name.clone(),
                role: n.role.as_str().to_owned(),
                reachable: h.map(|h| h.reachable),
                last_seen: h.filter(|h| h.last_seen > 0).map(|h| rfc3339(h.last_seen)),
                serial: h.filter(|h| h.last_seen > 0).map(|h| h.serial),
                term: 0,
                client_cert_expires: rfc3339(n.cert_expires),
                server_cert_expires: h
                    .filter(|h| h.server_cert_expires > 0)
                    .map(|h| rfc3339(h.server_cert_expires)),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let master = config.master()?.name.clone();
    let status = Status {
        cluster: config.cluster_name.clone(),
        voters: vec![master.clone()],
        master,
        term: 0,
        commit_index: config.serial,
        ca_rotation: CaRotation {
            phase: ca_phase(state)?,
        },
        nodes,
    };
    if json {
        print_json(&status)?;
        return Ok(Outcome::Success);
    }
    crate::say!(
        "cluster {}: master {}, serial {}, CA rotation: {}",
        status.cluster,
        status.master,
        status.commit_index,
        status.ca_rotation.phase
    );
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "?".into());
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.role.clone(),
                match n.reachable {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "?".into(),
                },
                opt(&n.last_seen),
                n.serial
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "?".into()),
                n.client_cert_expires.clone(),
                opt(&n.server_cert_expires),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "ROLE",
            "REACHABLE",
            "LAST SEEN",
            "SERIAL",
            "CLIENT CERT EXPIRES",
            "SERVER CERT EXPIRES",
        ],
        &rows,
    )?;
    Ok(Outcome::Success)
}
