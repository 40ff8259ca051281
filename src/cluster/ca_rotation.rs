//! `renew-crypto --new-ca`, `--continue-ca`, `--rollback-ca` (SPEC §8): the
//! CA rotation in phases, each committed in the config
//! ([`ClusterConfig::ca_rotation`]) before any node is changed for it, and
//! shown by `status`:
//!
//! 1. **trust**: a new CA, its key aside in the key store; every online node
//!    trusts both CAs. The old CA still signs.
//! 2. **reissue**: the new CA signs (the old key stays aside); every online
//!    node's client and server certificates are reissued by it, each node
//!    recorded in [`CaRotation::reissued`].
//! 3. **drop**: the old CA leaves every trust store; the rotation ends.
//!
//! `--rollback-ca` (before drop) enters **rollback**: the old key signs
//! again, every node the new CA reissued is reissued by the old one, then
//! the new CA leaves every trust store.
//!
//! A phase completes only when every online node took it; a node that
//! cannot be reached holds the rotation at that phase (named, exit 3). The
//! convergence loop brings a node that comes back to the phase (its CA
//! bundle, and in reissue or rollback its certificates, through
//! [`bring_to_phase`]); `--continue-ca` then goes on. A rerun after a crash
//! at any point resumes from the committed phase.

use std::collections::BTreeSet;

use ssconf::DigestAlgorithm;

use crate::cluster::lifecycle::Narration;
use crate::cluster::renew;
use crate::cluster::renewal::{fan_out_nodes, node_certificates, report_step, server_certificates};
use crate::cluster::{self, PushItems, PushOutcome};
use crate::core::{hex, Error, Result, Secret};
use crate::pki::keystore::KeyStore;
use crate::pki::{self, CertificateSigner};
use crate::rpc::RpcClient;
use crate::state::config::{CaPhase, CaRotation, ClusterConfig, NodeRecord};
use crate::state::{StateDir, MODE_PUBLIC};
use crate::wire::Procedure;

/// What `renew-crypto` asks of the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaAction {
    /// `--new-ca`: begins a rotation (or, when one is under way, goes on
    /// with it).
    Start,
    /// `--continue-ca`: goes on with the rotation under way.
    Continue,
    /// `--rollback-ca`: back to the old CA alone (before the drop phase).
    Rollback,
}

/// A CA run: the action, and the phase to pause after (`--stop-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaPlan {
    pub action: CaAction,
    /// `Trust` or `Reissue`: stop once that phase is complete.
    pub stop_after: Option<CaPhase>,
}

impl CaPlan {
    /// The plan of `renew-crypto`'s CA flags (at most one of `new`,
    /// `continue_ca`, `rollback`; `stop_after` is `trust` or `reissue`,
    /// and only with one of the first two); `None` when none is set.
    pub fn from_flags(
        new: bool,
        continue_ca: bool,
        rollback: bool,
        stop_after: Option<&str>,
    ) -> Result<Option<CaPlan>> {
        let action = match (new, continue_ca, rollback) {
            (false, false, false) => None,
            (true, false, false) => Some(CaAction::Start),
            (false, true, false) => Some(CaAction::Continue),
            (false, false, true) => Some(CaAction::Rollback),
            _ => {
                return Err(Error::Invalid(
                    "give at most one of --new-ca, --continue-ca and --rollback-ca".into(),
                ))
            }
        };
        let stop_after = match stop_after {
            None => None,
            Some("trust") => Some(CaPhase::Trust),
            Some("reissue") => Some(CaPhase::Reissue),
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "--stop-after {other:?}: give trust or reissue"
                )))
            }
        };
        match (action, stop_after) {
            (None | Some(CaAction::Rollback), Some(_)) => Err(Error::Invalid(
                "--stop-after goes with --new-ca or --continue-ca".into(),
            )),
            (action, stop_after) => Ok(action.map(|action| CaPlan { action, stop_after })),
        }
    }

    /// The plan's name in the audit trail's action.
    pub fn audit_name(&self) -> &'static str {
        match self.action {
            CaAction::Start => "ca",
            CaAction::Continue => "continue-ca",
            CaAction::Rollback => "rollback-ca",
        }
    }
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Every online node took it: on to the next.
    Complete,
    /// A node did not: the rotation stays at this phase.
    Held,
    /// The rotation is over (after drop or rollback).
    Ended,
}

/// Runs the CA rotation as `plan` asks, phase after phase, until it ends,
/// a node holds it, or the phase to stop after is complete.
pub async fn rotate(
    state: &StateDir,
    config: &mut ClusterConfig,
    plan: CaPlan,
    failed: &mut PushOutcome,
    talk: Narration<'_>,
) -> Result<()> {
    check_stop_after(config, plan)?;
    let run = Run::open(state, config)?;
    begin(&run, config, plan.action, failed, talk).await?;
    loop {
        let Some((phase, complete)) = config.ca_rotation.as_ref().map(|r| (r.phase, r.complete))
        else {
            return Ok(());
        };
        let flow = match phase {
            _ if complete => Flow::Complete,
            CaPhase::Trust => run.trust(config, failed, talk).await?,
            CaPhase::Reissue => run.reissue(config, failed, talk).await?,
            CaPhase::Drop => run.drop_old(config, failed, talk).await?,
            CaPhase::Rollback => run.roll_back(config, failed, talk).await?,
        };
        match flow {
            Flow::Ended => return Ok(()),
            Flow::Held => {
                talk.fail(&format!(
                    "the CA rotation holds at its {phase} phase: once every online node is \
                     reachable, the convergence loop brings it to the phase; then run \
                     `nodectl renew-crypto --continue-ca`"
                ));
                return Ok(());
            }
            Flow::Complete if plan.stop_after == Some(phase) => {
                if !complete {
                    rotation_mut(config)?.complete = true;
                    run.commit(config, failed, talk).await?;
                }
                talk.say(&format!(
                    "CA rotation paused after its {phase} phase; go on with \
                     `nodectl renew-crypto --continue-ca`{}",
                    if phase == CaPhase::Drop {
                        ""
                    } else {
                        " or back with `--rollback-ca`"
                    }
                ));
                return Ok(());
            }
            Flow::Complete => run.advance(config, phase, failed, talk).await?,
        }
    }
}

/// Refuses a `--stop-after` phase the rotation under way is past (or a
/// rollback, which has no phase to stop after): it would never be reached
/// and the rotation would run to its end.
fn check_stop_after(config: &ClusterConfig, plan: CaPlan) -> Result<()> {
    let (Some(stop), Some(r)) = (plan.stop_after, &config.ca_rotation) else {
        return Ok(());
    };
    let order = |p: CaPhase| match p {
        CaPhase::Trust => 0,
        CaPhase::Reissue => 1,
        CaPhase::Drop | CaPhase::Rollback => 2,
    };
    if order(r.phase) > order(stop) {
        return Err(Error::Invalid(format!(
            "the CA rotation is in its {} phase, past {stop}; run without --stop-after, or \
             with a later phase",
            r.phase
        )));
    }
    Ok(())
}

/// Starts a rotation, or checks that `action` fits the one under way.
async fn begin(
    run: &Run<'_>,
    config: &mut ClusterConfig,
    action: CaAction,
    failed: &mut PushOutcome,
    talk: Narration<'_>,
) -> Result<()> {
    let phase = config.ca_rotation.as_ref().map(|r| r.phase);
    match (action, phase) {
        (CaAction::Start, None) => run.start(config, failed, talk).await,
        (CaAction::Start | CaAction::Continue, Some(phase)) => {
            talk.say(&format!("CA rotation in its {phase} phase: going on"));
            Ok(())
        }
        (CaAction::Continue | CaAction::Rollback, None) => Err(Error::Invalid(
            "no CA rotation is under way; begin one with `nodectl renew-crypto --new-ca`".into(),
        )),
        (CaAction::Rollback, Some(CaPhase::Drop)) => Err(Error::Invalid(
            "the CA rotation is in its drop phase and cannot be rolled back; finish it with \
             `nodectl renew-crypto --continue-ca`"
                .into(),
        )),
        (CaAction::Rollback, Some(CaPhase::Rollback)) => {
            talk.say("CA rollback under way: going on");
            Ok(())
        }
        (CaAction::Rollback, Some(phase)) => run.begin_rollback(config, phase, failed, talk).await,
    }
}

/// What every phase needs.
struct Run<'a> {
    state: &'a StateDir,
    store: Box<dyn KeyStore>,
}

fn rotation(config: &ClusterConfig) -> Result<&CaRotation> {
    config
        .ca_rotation
        .as_ref()
        .ok_or_else(|| Error::Invalid("no CA rotation is under way".into()))
}

fn rotation_mut(config: &mut ClusterConfig) -> Result<&mut CaRotation> {
    config
        .ca_rotation
        .as_mut()
        .ok_or_else(|| Error::Invalid("no CA rotation is under way".into()))
}

fn sha256_of_first(pem: &str) -> Result<String> {
    let first = pki::load_certs_from_pem(pem)?;
    Ok(hex::lower(
        DigestAlgorithm::Sha256.digest(&first).as_bytes(),
    ))
}

impl<'a> Run<'a> {
    fn open(state: &'a StateDir, config: &ClusterConfig) -> Result<Self> {
        Ok(Run {
            state,
            store: crate::pki::keystore::for_cluster(state, config)?,
        })
    }

    /// A client with this node's client certificate as it is now: the
    /// reissue phase renews it.
    fn client(&self) -> Result<RpcClient> {
        RpcClient::from_state(self.state)
    }

    async fn commit(
        &self,
        config: &mut ClusterConfig,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<()> {
        let pushed = cluster::commit(self.state, config, PushItems::ALL, talk.on_step).await?;
        failed.unreachable.extend(pushed.unreachable);
        Ok(())
    }

    /// A new CA, its key aside; the trust phase committed before any node
    /// is given it.
    async fn start(
        &self,
        config: &mut ClusterConfig,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<()> {
        let old_ca_pem =
            std::fs::read_to_string(self.state.ca_pem()).map_err(Error::io(self.state.ca_pem()))?;
        let days = config.cert_days.saturating_mul(10).min(36500);
        let ca = self.store.create_next_ca(&config.cluster_name, days)?;
        config.ca_rotation = Some(CaRotation {
            phase: CaPhase::Trust,
            old_ca_pem,
            new_ca_pem: ca.cert_pem().to_owned(),
            reissued: BTreeSet::new(),
            complete: false,
            started: crate::core::time::now(),
        });
        self.commit(config, failed, talk).await?;
        talk.say(&format!(
            "new CA made: {}; phase trust",
            DigestAlgorithm::Sha256.digest(ca.cert_der())
        ));
        Ok(())
    }

    /// Trust: both CAs, the new one first, in every online node's bundle.
    async fn trust(
        &self,
        config: &mut ClusterConfig,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<Flow> {
        let r = rotation(config)?;
        let bundle = trust_bundle(&r.new_ca_pem, &r.old_ca_pem)?;
        let what = "trusts the old and the new CA";
        self.install_bundle(config, &bundle, what, failed, talk)
            .await
    }

    /// Reissue: every online node not reissued yet gets client and server
    /// certificates of the new CA.
    async fn reissue(
        &self,
        config: &mut ClusterConfig,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<Flow> {
        let pending = pending(config)?;
        if !pending.is_empty() {
            bring_to_phase(self.state, config, &pending, failed, talk).await?;
        }
        // Every online candidate must hold the key that signs now before
        // the phase completes: one that was down when the key changed gets
        // it here (the others are given the same key again), so that it can
        // sign as the master, and take the next phase's trust bundle.
        let r = rotation(config)?;
        let signing = match r.phase {
            CaPhase::Rollback => r.old_ca_pem.clone(),
            _ => r.new_ca_pem.clone(),
        };
        let ca = self.store.load_ca(&signing)?;
        self.send_key(config, self.store.candidate_copy(&ca), 0, failed, talk)
            .await?;
        Ok(if pending_or_failed(config, failed)? {
            Flow::Held
        } else {
            Flow::Complete
        })
    }

    /// Drop: the new CA alone in every online node's bundle; then the
    /// rotation ends. The master keeps the old CA (`ca.prev.pem`) to reach,
    /// once, a node that was offline meanwhile.
    async fn drop_old(
        &self,
        config: &mut ClusterConfig,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<Flow> {
        let r = rotation(config)?.clone();
        let what = "trusts the new CA only";
        if self
            .install_bundle(config, &r.new_ca_pem, what, failed, talk)
            .await?
            == Flow::Held
        {
            return Ok(Flow::Held);
        }
        let old = r.old_ca_pem.as_bytes();
        self.state
            .write(&self.state.ca_prev_pem(), old, MODE_PUBLIC)?;
        self.store.finish_next()?;
        let done = format!("CA rotation complete: {}", sha256_of_first(&r.new_ca_pem)?);
        self.end(config, &done, failed, talk).await
    }

    /// Rollback: every node the new CA reissued is reissued by the old one
    /// (as in reissue, the CA that signs now being the old one); then the
    /// old CA alone in every online node's bundle.
    async fn roll_back(
        &self,
        config: &mut ClusterConfig,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<Flow> {
        if self.reissue(config, failed, talk).await? == Flow::Held {
            return Ok(Flow::Held);
        }
        let r = rotation(config)?.clone();
        let what = "trusts the old CA only";
        if self
            .install_bundle(config, &r.old_ca_pem, what, failed, talk)
            .await?
            == Flow::Held
        {
            return Ok(Flow::Held);
        }
        let done = format!(
            "CA rotation rolled back: the cluster trusts {} only",
            sha256_of_first(&r.old_ca_pem)?
        );
        self.end(config, &done, failed, talk).await
    }

    /// The rotation is over: committed without it, and `done` said.
    async fn end(
        &self,
        config: &mut ClusterConfig,
        done: &str,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<Flow> {
        config.ca_rotation = None;
        self.commit(config, failed, talk).await?;
        talk.say(done);
        Ok(Flow::Ended)
    }

    /// From a complete `phase` to the next one, committed before any node
    /// is changed for it.
    async fn advance(
        &self,
        config: &mut ClusterConfig,
        phase: CaPhase,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<()> {
        match phase {
            CaPhase::Trust => {
                // The new key signs from here on; the old one stays aside.
                let new_ca_pem = rotation(config)?.new_ca_pem.clone();
                let ca = self.store.load_next_ca(&new_ca_pem)?;
                self.store.activate_next()?;
                config.ca_sha256 = sha256_of_first(&new_ca_pem)?;
                let r = rotation_mut(config)?;
                r.phase = CaPhase::Reissue;
                r.complete = false;
                self.send_key(config, self.store.candidate_copy(&ca), 1, failed, talk)
                    .await?;
            }
            CaPhase::Reissue => {
                let r = rotation_mut(config)?;
                r.phase = CaPhase::Drop;
                r.complete = false;
            }
            CaPhase::Drop | CaPhase::Rollback => return Ok(()),
        }
        self.commit(config, failed, talk).await?;
        let phase = rotation(config)?.phase;
        talk.say(&format!("CA rotation: phase {phase}"));
        Ok(())
    }

    /// Trust or reissue to rollback: the old key signs again, committed
    /// before anything is reissued by it.
    async fn begin_rollback(
        &self,
        config: &mut ClusterConfig,
        from: CaPhase,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<()> {
        let old_ca_pem = rotation(config)?.old_ca_pem.clone();
        self.store.restore_previous(&old_ca_pem)?;
        let ca = self.store.load_ca(&old_ca_pem)?;
        config.ca_sha256 = sha256_of_first(&old_ca_pem)?;
        let r = rotation_mut(config)?;
        r.phase = CaPhase::Rollback;
        r.complete = false;
        // From trust too: a run that gave the candidates the new key and
        // died before committing the reissue phase left them holding it.
        self.send_key(config, self.store.candidate_copy(&ca), 1, failed, talk)
            .await?;
        self.commit(config, failed, talk).await?;
        talk.say(&format!("CA rotation: rolling back from its {from} phase"));
        Ok(())
    }

    /// Sends `ca_pem` to every online node (this one through its daemon).
    async fn install_bundle(
        &self,
        config: &ClusterConfig,
        ca_pem: &str,
        what: &str,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<Flow> {
        let client = self.client()?;
        let nodes: Vec<NodeRecord> = config.online_nodes().cloned().collect();
        let results = fan_out_nodes(talk, &nodes, |node| {
            let client = client.clone();
            let procedure = Procedure::InstallCaBundle {
                ca_pem: ca_pem.to_owned(),
            };
            async move { cluster::call(&client, &node, procedure).await }
        })
        .await;
        Ok(if report(results, what, failed, talk) {
            Flow::Complete
        } else {
            Flow::Held
        })
    }

    /// The key that signs now (for a file store; nothing for a token) and
    /// the config, `ahead` serials on (1: as it will be committed next; 0:
    /// as committed), to every other online master candidate.
    async fn send_key(
        &self,
        config: &ClusterConfig,
        ca_key: Option<Secret>,
        ahead: u64,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<()> {
        let me = self.state.load_identity()?;
        let mut next = config.clone();
        next.serial += ahead;
        let config_json = String::from_utf8(crate::state::to_json(&next)?)
            .map_err(|e| Error::Invalid(format!("config is not UTF-8: {e}")))?;
        let candidates = renew::online_candidates_except(config, Some(&me.uuid));
        let client = self.client()?;
        let results = fan_out_nodes(talk, &candidates, |node| {
            let client = client.clone();
            let procedure = Procedure::InstallCandidateFiles {
                ca_key: ca_key.clone(),
                config_json: config_json.clone(),
            };
            async move { cluster::call(&client, &node, procedure).await }
        })
        .await;
        report(results, "CA key", failed, talk);
        Ok(())
    }
}

/// The online nodes the phase still has to reissue: in reissue, those the
/// new CA did not sign for yet; in rollback, those it did.
fn pending(config: &ClusterConfig) -> Result<Vec<String>> {
    let r = rotation(config)?;
    let rolling_back = r.phase == CaPhase::Rollback;
    Ok(config
        .online_nodes()
        .filter(|n| r.reissued.contains(&n.name) == rolling_back)
        .map(|n| n.name.clone())
        .collect())
}

fn pending_or_failed(config: &ClusterConfig, failed: &PushOutcome) -> Result<bool> {
    Ok(!pending(config)?.is_empty() || !failed.is_complete())
}

/// Reissues the client and server certificates of `names` (online nodes)
/// by the CA that signs now, and records in the rotation which nodes took
/// both. The command's reissue and rollback phases, and the convergence
/// loop for a node that comes back during them.
pub async fn bring_to_phase(
    state: &StateDir,
    config: &mut ClusterConfig,
    names: &[String],
    failed: &mut PushOutcome,
    talk: Narration<'_>,
) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let mut step = PushOutcome::default();
    server_certificates(state, config, names, &mut step, talk).await?;
    node_certificates(state, config, names, &mut step, talk).await?;
    let mut missed: BTreeSet<&str> = step.unreachable.iter().map(|(n, _)| n.as_str()).collect();
    // The master renews its own client certificate only once every node
    // can name the new one: it says so, but it is no node's failure.
    let me = state.load_identity()?.name;
    if !own_certificates_signed_now(state, config)? {
        missed.insert(&me);
    }
    let r = rotation_mut(config)?;
    let rolling_back = r.phase == CaPhase::Rollback;
    for name in names.iter().filter(|n| !missed.contains(n.as_str())) {
        if rolling_back {
            r.reissued.remove(name);
        } else {
            r.reissued.insert(name.clone());
        }
    }
    failed.unreachable.extend(step.unreachable);
    let pushed = cluster::commit(state, config, PushItems::ALL, talk.on_step).await?;
    failed.unreachable.extend(pushed.unreachable);
    Ok(())
}

/// Whether this node's client and server certificates are both signed by
/// the CA that signs now.
fn own_certificates_signed_now(state: &StateDir, config: &ClusterConfig) -> Result<bool> {
    let ca = crate::pki::keystore::load_ca(state, config)?;
    let cas = [ca.cert_der().clone()];
    let now = rustls::pki_types::UnixTime::now();
    let signed = |path: &std::path::Path, usage| -> Result<bool> {
        Ok(match pki::load_certs(path)?.first() {
            Some(cert) => pki::chains_to_for(cert, &cas, now, usage).is_ok(),
            None => false,
        })
    };
    Ok(
        signed(&state.client_pem(), webpki::KeyUsage::client_auth())?
            && signed(&state.server_pem(), webpki::KeyUsage::server_auth())?,
    )
}

/// The nodes of `config` that the convergence loop should bring to the
/// rotation's phase now (none outside reissue and rollback): the pending
/// ones among `reachable`; and this node, `me`, once every other online
/// node is reachable (its own client certificate is renewed only then).
pub fn behind_phase(config: &ClusterConfig, me: &str, reachable: &BTreeSet<String>) -> Vec<String> {
    if !matches!(
        config.ca_rotation.as_ref().map(|r| r.phase),
        Some(CaPhase::Reissue | CaPhase::Rollback)
    ) {
        return Vec::new();
    }
    let all_reachable = config
        .online_nodes()
        .all(|n| n.name == me || reachable.contains(&n.name));
    pending(config)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| {
            if n == me {
                all_reachable
            } else {
                reachable.contains(n)
            }
        })
        .collect()
}

/// The phase of the rotation under way, `none` between rotations.
pub fn phase_of(config: &ClusterConfig) -> &'static str {
    config
        .ca_rotation
        .as_ref()
        .map_or("none", |r| r.phase.as_str())
}

/// Prints each node's outcome of step `what`; records every failure.
/// Returns whether every node succeeded.
fn report<T>(
    results: Vec<(NodeRecord, Result<T>)>,
    what: &str,
    failed: &mut PushOutcome,
    talk: Narration<'_>,
) -> bool {
    let mut all = true;
    for (node, result) in results {
        report_step(talk, &node.name, what, &result);
        if let Err(e) = result {
            all = false;
            failed.unreachable.push((node.name, e.to_string()));
        }
    }
    all
}

/// The CA bundle of the trust phase: the new CA first, then every CA of
/// `old` that is not the new one.
fn trust_bundle(new_pem: &str, old: &str) -> Result<String> {
    let new = pki::certs_from_pem(new_pem)?;
    let mut bundle: String = new.iter().map(|c| pki::pem_of(c)).collect();
    for cert in pki::certs_from_pem(old)? {
        if !new.iter().any(|n| n.as_ref() == cert.as_ref()) {
            bundle.push_str(&pki::pem_of(&cert));
        }
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn ca_flags_table() {
        use CaAction::*;
        // (new, continue, rollback, stop-after) -> plan, or the error's start
        type Want = std::result::Result<Option<(CaAction, Option<CaPhase>)>, &'static str>;
        type Flags = (bool, bool, bool, Option<&'static str>);
        let rows: Vec<(Flags, Want)> = vec![
            ((false, false, false, None), Ok(None)),
            ((true, false, false, None), Ok(Some((Start, None)))),
            (
                (true, false, false, Some("trust")),
                Ok(Some((Start, Some(CaPhase::Trust)))),
            ),
            (
                (false, true, false, Some("reissue")),
                Ok(Some((Continue, Some(CaPhase::Reissue)))),
            ),
            ((false, false, true, None), Ok(Some((Rollback, None)))),
            (
                (false, false, true, Some("trust")),
                Err("--stop-after goes with"),
            ),
            (
                (false, false, false, Some("trust")),
                Err("--stop-after goes with"),
            ),
            (
                (true, false, false, Some("drop")),
                Err("--stop-after \"drop\""),
            ),
            ((true, true, false, None), Err("give at most one")),
            ((false, true, true, None), Err("give at most one")),
        ];
        for ((new, cont, back, stop), want) in rows {
            let got = CaPlan::from_flags(new, cont, back, stop)
                .map(|p| p.map(|p| (p.action, p.stop_after)))
                .map_err(|e| e.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(e), Err(start)) => assert!(e.contains(start), "{e}"),
                (got, want) => panic!("{new} {cont} {back} {stop:?}: {got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn a_stop_after_phase_already_past_is_refused() {
        let plan = |stop| CaPlan {
            action: CaAction::Continue,
            stop_after: Some(stop),
        };
        // phase under way, --stop-after -> accepted
        let rows = [
            (CaPhase::Trust, CaPhase::Trust, true),
            (CaPhase::Trust, CaPhase::Reissue, true),
            (CaPhase::Reissue, CaPhase::Reissue, true),
            (CaPhase::Reissue, CaPhase::Trust, false),
            (CaPhase::Drop, CaPhase::Reissue, false),
            (CaPhase::Rollback, CaPhase::Trust, false),
            (CaPhase::Rollback, CaPhase::Reissue, false),
        ];
        for (phase, stop, ok) in rows {
            let config = config_in(phase, &[]);
            let got = check_stop_after(&config, plan(stop));
            assert_eq!(got.is_ok(), ok, "{phase} --stop-after {stop}: {got:?}");
        }
        let mut config = config_in(CaPhase::Trust, &[]);
        config.ca_rotation = None;
        assert!(check_stop_after(&config, plan(CaPhase::Trust)).is_ok());
    }

    #[test]
    fn trust_bundle_puts_the_new_ca_first_and_once() {
        let der = |b: &[u8]| CertificateDer::from(b.to_vec());
        let pem = |certs: &[&CertificateDer<'static>]| -> String {
            certs.iter().map(|c| pki::pem_of(c)).collect()
        };
        let (new, old, older) = (der(b"new"), der(b"old"), der(b"older"));
        // old bundle -> the CAs of the trust bundle, in order
        let rows: Vec<(String, String)> = vec![
            (pem(&[&old]), pem(&[&new, &old])),
            (pem(&[&new, &old]), pem(&[&new, &old])),
            (pem(&[&old, &older]), pem(&[&new, &old, &older])),
        ];
        for (old_bundle, want) in rows {
            assert_eq!(trust_bundle(&pem(&[&new]), &old_bundle).unwrap(), want);
        }
    }

    fn config_in(phase: CaPhase, reissued: &[&str]) -> ClusterConfig {
        let node = |name: &str, role: &str| {
            format!(
                r#"{{"uuid": "u-{name}", "name": "{name}", "address": "127.0.0.1:1",
                    "role": "{role}", "offline": false, "digest": "d", "cert_expires": 0}}"#
            )
        };
        let json = format!(
            r#"{{"cluster_name": "t", "serial": 1, "candidate_pool_size": 3,
                "digest": "sha256", "cert_days": 1, "ca_sha256": "", "nodes": [{}, {}, {}]}}"#,
            node("m", "master"),
            node("a", "candidate"),
            node("b", "regular")
        );
        let mut config: ClusterConfig = serde_json::from_str(&json).unwrap();
        config.ca_rotation = Some(CaRotation {
            phase,
            old_ca_pem: String::new(),
            new_ca_pem: String::new(),
            reissued: reissued.iter().map(|s| s.to_string()).collect(),
            complete: false,
            started: 0,
        });
        config
    }

    #[test]
    fn pending_and_behind_phase_follow_the_phase() {
        let all: BTreeSet<String> = ["m", "a", "b"].iter().map(|s| s.to_string()).collect();
        // phase, reissued -> pending; what the loop takes (all reachable)
        type Row = (
            CaPhase,
            Vec<&'static str>,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let rows: Vec<Row> = vec![
            (CaPhase::Trust, vec![], vec!["a", "b", "m"], vec![]),
            (CaPhase::Reissue, vec!["m"], vec!["a", "b"], vec!["a", "b"]),
            (CaPhase::Reissue, vec!["a", "b"], vec!["m"], vec!["m"]),
            (CaPhase::Reissue, vec!["m", "a", "b"], vec![], vec![]),
            (CaPhase::Drop, vec!["m", "a", "b"], vec![], vec![]),
            (CaPhase::Rollback, vec!["a"], vec!["a"], vec!["a"]),
            (CaPhase::Rollback, vec![], vec![], vec![]),
        ];
        for (phase, reissued, want_pending, want_loop) in rows {
            let config = config_in(phase, &reissued);
            let mut got = pending(&config).unwrap();
            got.sort();
            assert_eq!(got, want_pending, "{phase} {reissued:?}");
            let mut got = behind_phase(&config, "m", &all);
            got.sort();
            assert_eq!(got, want_loop, "{phase} {reissued:?}");
        }
        let config = config_in(CaPhase::Reissue, &[]);
        let only_a: BTreeSet<String> = ["a".to_string()].into();
        assert_eq!(behind_phase(&config, "m", &only_a), vec!["a".to_string()]);
        // The loop leaves the master's own renewal until every other
        // online node answers.
        let others: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let mut got = behind_phase(&config, "m", &others);
        got.sort();
        assert_eq!(got, vec!["a", "b", "m"]);
    }
}
