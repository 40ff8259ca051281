//! `nodectl verify`: prints the findings of [`crate::cluster::verify`].

use serde::Serialize;

use super::output::print_json;
use super::progress::Progress;
use super::Outcome;
use crate::cluster::verify::{findings, Finding, Severity};
use crate::core::Result;
use crate::state::StateDir;

/// `nodectl verify [--json]`.
pub async fn verify(state: &StateDir, json: bool) -> Result<Outcome> {
    let online = crate::cluster::load_config(state)
        .map(|c| c.online_nodes().count())
        .unwrap_or(0);
    let bar = Progress::new(online, "checking nodes");
    let (findings, checked) = findings(state, &|| bar.step()).await?;
    drop(bar);
    let errors = findings.iter().any(|f| f.severity == Severity::Error);
    if json {
        #[derive(Serialize)]
        struct Report<'a> {
            findings: &'a [Finding],
        }
        print_json(&Report {
            findings: &findings,
        })?;
    } else if findings.is_empty() {
        crate::say!("no findings: {checked} nodes checked, the cluster is consistent");
    } else {
        for f in &findings {
            crate::say!(
                "{:<7}  {}  {}: {}",
                f.severity.as_str(),
                f.node,
                f.code,
                f.message
            );
            crate::say!("         fix: {}", f.fix);
        }
        let n_errors = findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        crate::say!(
            "{} errors, {} warnings",
            n_errors,
            findings.len() - n_errors
        );
    }
    Ok(if errors {
        Outcome::Failed
    } else {
        Outcome::Success
    })
}
