//! `nodectl status`: the cluster at a glance (SPEC §2.2), from the config
//! of the master or a candidate and the health the master's daemon holds.
//! Raft's term, commit index and voters are this node's daemon's view.

use super::list::master_health;
use super::output::{print_json, print_table};
use super::Outcome;
use crate::core::{Error, Result};
use crate::state::config::ClusterConfig;
use crate::state::{self, StateDir};

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
    let raft = crate::cluster::raft::status_locally(state)
        .await
        .ok()
        .flatten();
    let status = crate::cluster::listing::status(&config, &health, raft.as_ref())?;
    if json {
        print_json(&status)?;
        return Ok(Outcome::Success);
    }
    crate::say!(
        "cluster {}: master {}, term {}, serial {}, voters {}{}; CA rotation: {}",
        status.cluster,
        status.master,
        status.term,
        config.serial,
        if status.voters.is_empty() {
            "unknown (this node's noded does not answer)".to_owned()
        } else {
            status.voters.join(", ")
        },
        match raft.as_ref().filter(|r| !r.learners.is_empty()) {
            Some(r) => format!(", learners {}", r.learners.join(", ")),
            None => String::new(),
        },
        match (&status.ca_rotation.started, status.ca_rotation.paused) {
            (None, _) => status.ca_rotation.phase.clone(),
            (Some(since), false) => format!("{} (since {since})", status.ca_rotation.phase),
            (Some(since), true) => format!(
                "{} complete, paused (since {since}; `renew-crypto --continue-ca` goes on)",
                status.ca_rotation.phase
            ),
        }
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
                if n.serial.is_some() {
                    n.term.to_string()
                } else {
                    "?".into()
                },
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
            "TERM",
            "CLIENT CERT EXPIRES",
            "SERVER CERT EXPIRES",
        ],
        &rows,
    )?;
    Ok(Outcome::Success)
}
