//! `nodectl token create|list|revoke`: join connection strings.

use serde::Serialize;

use super::output::{print_json, print_table, write_stdout};
use super::Outcome;
use crate::cluster::{self, ClusterLock};
use crate::core::time::{now, rfc3339};
use crate::core::{Error, Result};
use crate::state::token::{JoinToken, TokenStore};
use crate::state::StateDir;

/// `nodectl token create`.
pub fn token_create(
    state: &StateDir,
    ttl: u64,
    master_candidate: bool,
    json: bool,
    wait: bool,
) -> Result<Outcome> {
    let config = cluster::master_config(state)?;
    let _lock = ClusterLock::acquire(state, wait, "token create")?;
    let mut tokens = TokenStore::load(state)?;
    tokens.prune(now());
    let ttl = i64::try_from(ttl).map_err(|_| Error::Invalid("--ttl is too long".into()))?;
    let (stored, secret) = tokens.create(ttl, master_candidate);
    tokens.save(state)?;
    let token = JoinToken {
        v: 1,
        addrs: vec![config.master()?.address.clone()],
        ca_sha256: config.ca_sha256.clone(),
        master: config.master()?.uuid.clone(),
        id: stored.id.clone(),
        secret,
        expires: stored.expires,
        master_candidate,
    };
    let line = token.encode()?;
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
