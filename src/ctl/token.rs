//! `nodectl token create|list|revoke`: join connection strings.

use serde::Serialize;

use super::output::{print_json, print_table, write_stdout};
use super::Outcome;
use crate::cluster::{self, ClusterLock};
use crate::core::time::{now, rfc3339};
use crate::core::{Error, Result};
use crate::state::token::TokenStore;
use crate::state::users::AuditEntry;
use crate::state::StateDir;

/// `nodectl token create`.
pub async fn token_create(
    state: &StateDir,
    ttl: u64,
    master_candidate: bool,
    json: bool,
    wait: bool,
) -> Result<Outcome> {
    let created = match cluster::raft::ensure_leader_if_running(state).await {
        Ok(()) => cluster::tokens::create(state, ttl, master_candidate, wait),
        Err(e) => Err(e),
    };
    if let Some(result) = cluster::audit::result_of(&created) {
        let target = created.as_ref().map(|t| t.id.as_str()).unwrap_or("-");
        let actor = cluster::audit::nodectl_actor(state);
        let entry = AuditEntry::now(&actor, "token-create", target, &result);
        super::audit::record(state, entry).await;
    }
    let created = created?;
    let stored = &created;
    let line = created.connection_string.clone();
    if json {
        print_json(&serde_json::json!({
            "id": stored.id,
            "expires": rfc3339(stored.expires),
            "master_candidate": master_candidate,
            "connection_string": line,
        }))?;
    } else {
        write_stdout(&format!("{line}\n"))?;
        eprintln!(
            "token {} valid until {}, once{}; on the new node run:\n  nodectl --state-dir DIR join '<the line above>' --node-name NAME --address HOST:PORT",
            stored.id,
            rfc3339(stored.expires),
            if master_candidate { ", joins as a master candidate" } else { "" }
        );
    }
    Ok(Outcome::Success)
}

/// One row of `nodectl token list`.
#[derive(Debug, Serialize)]
struct ListedToken {
    id: String,
    expires: String,
    master_candidate: bool,
}

/// `nodectl token list`.
pub fn token_list(state: &StateDir, json: bool) -> Result<Outcome> {
    cluster::master_config(state)?;
    let mut tokens = TokenStore::load(state)?;
    tokens.prune(now());
    let rows: Vec<ListedToken> = tokens
        .tokens
        .iter()
        .map(|t| ListedToken {
            id: t.id.clone(),
            expires: rfc3339(t.expires),
            master_candidate: t.master_candidate,
        })
        .collect();
    if json {
        print_json(&serde_json::json!({ "tokens": rows }))?;
    } else {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.expires.clone(),
                    if t.master_candidate { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect();
        print_table(&["ID", "EXPIRES", "MASTER CANDIDATE"], &table)?;
    }
    Ok(Outcome::Success)
}

/// `nodectl token revoke ID`.
pub fn token_revoke(state: &StateDir, id: &str, wait: bool) -> Result<Outcome> {
    cluster::master_config(state)?;
    let _lock = ClusterLock::acquire(state, wait, "token revoke")?;
    let mut tokens = TokenStore::load(state)?;
    if !tokens.burn(id) {
        return Err(Error::Invalid(format!(
            "no outstanding token {id:?}; `nodectl token list` shows them"
        )));
    }
    tokens.save(state)?;
    crate::say!("token {id} revoked");
    Ok(Outcome::Success)
}
