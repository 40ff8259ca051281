//! `nodectl renew-crypto` (SPEC §8): the steps are
//! [`crate::cluster::renewal`]'s; here they print each node's line, show a
//! bar, and the outcome becomes the exit code.

use super::lifecycle::narration;
use super::progress::Progress;
use super::Outcome;
use crate::cluster::renewal;
use crate::core::Result;
use crate::state::StateDir;

pub use crate::cluster::renewal::RenewPlan;

/// `nodectl renew-crypto`.
pub async fn renew(state: &StateDir, plan: &RenewPlan, wait: bool) -> Result<Outcome> {
    let online = crate::cluster::load_config(state)
        .map(|c| c.online_nodes().count())
        .unwrap_or(0);
    let bar = Progress::new(online, "renewing");
    let step = || bar.step();
    let unreachable = renewal::renew(state, plan, wait, narration(&step)).await?;
    drop(bar);
    unreachable.report();
    Ok(if unreachable.is_complete() {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}
