//! `nodectl modify`, `remove`, `master-failover`: the steps are
//! [`crate::cluster::lifecycle`]'s; here they print as they go and the
//! outcome becomes the exit code (3 when a node was not reached).

use super::progress::Progress;
use super::Outcome;
use crate::cluster::lifecycle::{self, Narration};
use crate::cluster::PushOutcome;
use crate::core::Result;
use crate::state::StateDir;

/// Reports the nodes `push` did not reach and gives the exit outcome.
fn outcome(push: &PushOutcome) -> Outcome {
    push.report();
    exit_outcome(push)
}

/// 0 when every node took the change, 3 (partial) otherwise.
fn exit_outcome(push: &PushOutcome) -> Outcome {
    if push.is_complete() {
        Outcome::Success
    } else {
        Outcome::Partial
    }
}

fn say(line: &str) {
    crate::say!("{line}");
}

fn warn(line: &str) {
    eprintln!("warning: {line}");
}

fn fail(line: &str) {
    eprintln!("{line}");
}

/// How nodectl speaks for a change: lines on stdout, warnings and failed
/// steps on stderr, `step` for the bar.
pub fn narration(step: &(dyn Fn() + Sync)) -> Narration<'_> {
    Narration {
        on_line: &say,
        on_warning: &warn,
        on_step: step,
        on_failure: &fail,
    }
}

/// A bar over the other online nodes, for the pushes of a change.
fn bar(state: &StateDir) -> Progress {
    let online = crate::cluster::load_config(state)
        .map(|c| c.online_nodes().count().saturating_sub(1))
        .unwrap_or(0);
    Progress::new(online, "pushing cluster state")
}

/// `nodectl modify NODE --master-candidate=yes|no`.
pub async fn set_candidate(
    state: &StateDir,
    name: &str,
    yes: bool,
    auto_promote: bool,
    wait: bool,
) -> Result<Outcome> {
    let bar = bar(state);
    let step = || bar.step();
    let talk = narration(&step);
    let push = lifecycle::set_candidate(state, name, yes, auto_promote, wait, talk).await?;
    Ok(outcome(&push))
}

/// `nodectl modify NODE --offline=yes|no`.
pub async fn set_offline(
    state: &StateDir,
    name: &str,
    yes: bool,
    auto_promote: bool,
    wait: bool,
) -> Result<Outcome> {
    let bar = bar(state);
    let step = || bar.step();
    let talk = narration(&step);
    let push = lifecycle::set_offline(state, name, yes, auto_promote, wait, talk).await?;
    Ok(outcome(&push))
}

/// `nodectl remove NODE`.
pub async fn remove(state: &StateDir, name: &str, wait: bool) -> Result<Outcome> {
    let bar = bar(state);
    let step = || bar.step();
    let talk = narration(&step);
    let push = lifecycle::remove(state, name, wait, talk).await?;
    Ok(outcome(&push))
}

/// `nodectl master-failover`, on a master candidate.
pub async fn master_failover(state: &StateDir, to: Option<&str>) -> Result<Outcome> {
    let bar = bar(state);
    let step = || bar.step();
    let talk = narration(&step);
    let push = lifecycle::master_failover(state, to, talk).await?;
    Ok(outcome(&push))
}

/// `nodectl recover --force`, on a master candidate.
pub async fn recover(state: &StateDir) -> Result<Outcome> {
    let bar = bar(state);
    let step = || bar.step();
    let talk = narration(&step);
    let push = lifecycle::recover(state, talk).await?;
    Ok(outcome(&push))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_outcome_table() {
        let partial = PushOutcome {
            unreachable: vec![("n".into(), "down".into())],
        };
        let rows = [
            (PushOutcome::default(), Outcome::Success),
            (partial, Outcome::Partial),
        ];
        for (push, want) in rows {
            assert_eq!(exit_outcome(&push), want, "{push:?}");
        }
    }
}
