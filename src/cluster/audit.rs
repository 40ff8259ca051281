//! The audit trail (SPEC §11.3): who changed what, kept in the replicated
//! cluster config so it reaches every master candidate and survives a
//! failover.
//!
//! A change the API makes carries its entry in its own commit. A nodectl
//! command, and a refused API request, append theirs afterwards with
//! [`record`]: under the cluster lock, the entry is added to `config.json`
//! without a new serial (nothing the nodes serve changes) and the config is
//! pushed to the online master candidates. A candidate that misses that
//! push receives the trail with the next change.

use crate::core::{Error, Result};
use crate::rpc::fanout::quiet;
use crate::rpc::RpcClient;
use crate::state::users::{append, AuditEntry};
use crate::state::StateDir;

use super::lock::ClusterLock;
use super::push::{push, PushItems, PushOutcome};
use super::store::{load_config, master_config};

/// One entry as `nodectl audit --json` and `GET /v1/audit` show it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    /// RFC 3339, UTC.
    pub time: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
}

/// `{"entries": [...]}`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditTrail {
    pub entries: Vec<AuditRow>,
}

impl From<AuditEntry> for AuditRow {
    fn from(e: AuditEntry) -> Self {
        AuditRow {
            time: crate::core::time::rfc3339(e.time),
            actor: e.actor,
            action: e.action,
            target: e.target,
            result: e.result,
        }
    }
}

/// The result an audit entry records for a change's outcome; `None` when
/// nothing was tried because another command held the cluster lock (and
/// recording would wait for that same lock).
pub fn result_of<T>(outcome: &Result<T>) -> Option<String> {
    match outcome {
        Ok(_) => Some("ok".into()),
        Err(Error::LockHeld(_)) => None,
        Err(e) => Some(format!("error: {e}")),
    }
}

/// The actor of a nodectl command run on this node: `nodectl@NODE`.
pub fn nodectl_actor(state: &StateDir) -> String {
    match state.load_identity() {
        Ok(identity) => format!("nodectl@{}", identity.name),
        Err(_) => "nodectl".to_owned(),
    }
}

/// Takes the cluster lock from async code without blocking the runtime.
pub async fn lock(state: &StateDir, wait: bool, holder: &str) -> Result<ClusterLock> {
    let state = state.clone();
    let holder = holder.to_owned();
    tokio::task::spawn_blocking(move || ClusterLock::acquire(&state, wait, &holder))
        .await
        .map_err(|e| Error::Invalid(format!("lock task failed: {e}")))?
}

/// Appends `entry` to the trail on the master and pushes the config to the
/// online master candidates (see the module's documentation).
pub async fn record(state: &StateDir, entry: AuditEntry) -> Result<PushOutcome> {
    master_config(state)?;
    let _lock = lock(state, true, "audit").await?;
    let mut config = master_config(state)?;
    append(&mut config.audit, entry);
    // A committed entry of its own that keeps the serial: the trail is not
    // part of ssconf, so the nodes have nothing new to take.
    config.term = super::raft::propose_locally(state, config.serial, &config).await?;
    let client = RpcClient::from_state(state)?;
    let skip: Vec<&str> = {
        let me = state.load_identity()?;
        config
            .nodes
            .iter()
            .filter(|n| n.uuid == me.uuid || !n.role.is_candidate())
            .map(|n| n.name.as_str())
            .collect()
    };
    let items = PushItems {
        config: true,
        ..PushItems::default()
    };
    push(&client, &config, items, &skip, &quiet).await
}

/// The trail as this node holds it (master or candidate: its
/// `config.json`), entries at or after `since` (Unix seconds).
pub fn entries(state: &StateDir, since: Option<i64>) -> Result<Vec<AuditEntry>> {
    state.check_initialised()?;
    if !state.config_json().exists() {
        return Err(Error::Invalid(
            "this node holds no cluster config; read the audit trail on the master or a master candidate".into(),
        ));
    }
    let config = load_config(state)?;
    Ok(config
        .audit
        .into_iter()
        .filter(|e| since.is_none_or(|s| e.time >= s))
        .collect())
}

/// `--since` (and the API's `since`): an RFC 3339 time, or a duration back
/// from now (`30m`, `1h`, `2d`). Unix seconds.
pub fn parse_since(text: &str, now: i64) -> Result<i64> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(t.unix_timestamp());
    }
    let back = super::ttl::parse(text).map_err(|_| {
        Error::Invalid(format!(
            "since {text:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration (30m, 1h, 2d)"
        ))
    })?;
    Ok(now.saturating_sub(i64::try_from(back).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn since() {
        let now = 1_000_000;
        let rows: &[(&str, Option<i64>)] = &[
            ("1970-01-01T00:00:10Z", Some(10)),
            ("1h", Some(now - 3600)),
            ("2d", Some(now - 2 * 86400)),
            ("yesterday", None),
            ("", None),
        ];
        for (text, want) in rows {
            assert_eq!(super::parse_since(text, now).ok(), *want, "{text}");
        }
    }
}
