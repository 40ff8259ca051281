//! `nodectl audit`: the audit trail (SPEC §11.3); and how every mutating
//! nodectl command leaves its entry in it.

use super::output::{print_json, print_table};
use super::Outcome;
use crate::cluster::audit::{entries, nodectl_actor, parse_since, AuditRow, AuditTrail};
use crate::core::time::now;
use crate::core::Result;
use crate::state::users::AuditEntry;
use crate::state::StateDir;

/// `nodectl audit [--since TIME] [--json]`, on the master or a candidate.
pub fn audit(state: &StateDir, since: Option<&str>, json: bool) -> Result<Outcome> {
    let since = since.map(|s| parse_since(s, now())).transpose()?;
    let entries: Vec<AuditRow> = entries(state, since)?
        .into_iter()
        .map(AuditRow::from)
        .collect();
    if json {
        print_json(&AuditTrail { entries })?;
    } else {
        let table: Vec<Vec<String>> = entries
            .into_iter()
            .map(|e| vec![e.time, e.actor, e.action, e.target, e.result])
            .collect();
        print_table(&["TIME", "ACTOR", "ACTION", "TARGET", "RESULT"], &table)?;
    }
    Ok(Outcome::Success)
}

/// The result an audit entry records for a command's outcome; `None` when
/// nothing was attempted (another command held the lock).
pub fn result_of(outcome: &Result<Outcome>) -> Option<String> {
    match outcome {
        Ok(Outcome::Success) => Some("ok".into()),
        Ok(Outcome::Partial) => Some("partial".into()),
        Ok(Outcome::Failed) => Some("failed".into()),
        Err(_) => crate::cluster::audit::result_of(outcome),
    }
}

/// Records a nodectl command on the master's trail. A node that is not the
/// master changed nothing, and records nothing; any other failure to record
/// is a warning, never the command's failure.
pub async fn record(state: &StateDir, entry: AuditEntry) {
    let on_master = crate::cluster::master_config(state).is_ok();
    if !on_master {
        return;
    }
    match crate::cluster::audit::record(state, entry).await {
        Ok(push) => {
            for (node, why) in &push.unreachable {
                tracing::debug!(%node, "audit entry not pushed: {why}");
            }
        }
        Err(e) => eprintln!("warning: the audit entry was not recorded: {e}"),
    }
}

/// Records a finished nodectl command (`action` on `target`).
pub async fn record_command(
    state: &StateDir,
    action: &str,
    target: &str,
    outcome: &Result<Outcome>,
) {
    if let Some(result) = result_of(outcome) {
        record(
            state,
            AuditEntry::now(&nodectl_actor(state), action, target, &result),
        )
        .await;
    }
}
