//! Role changes (SPEC §6), as the master carries them out: promote, demote,
//! offline, online, remove, and master failover (run on a candidate).
//!
//! Each runs under the cluster lock and ends with a [`cluster::commit`]; a
//! node that could not be reached is named in the [`PushOutcome`]. nodectl
//! and the remote API run the same steps: what a step has to say goes to
//! the caller's [`Narration`] (nodectl prints it, the API collects it).

use crate::cluster::{self, ClusterLock, PushItems, PushOutcome};
use crate::core::{Error, Result};
use crate::pki::CertificateSigner;
use crate::rpc::RpcClient;
use crate::state::config::{ClusterConfig, NodeRecord, NodeRole};
use crate::state::{self, StateDir};
use crate::wire::{Procedure, Reply, Resend};

/// Where a change's progress lines, warnings and per-node steps go.
#[derive(Clone, Copy)]
pub struct Narration<'a> {
    /// A line of what was done.
    pub on_line: &'a (dyn Fn(&str) + Sync),
    /// A warning (nodectl prints it as `warning: ...` on stderr).
    pub on_warning: &'a (dyn Fn(&str) + Sync),
    /// One node of a push done.
    pub on_step: &'a (dyn Fn() + Sync),
    /// A step that failed on a node (nodectl prints it on stderr as is).
    pub on_failure: &'a (dyn Fn(&str) + Sync),
}

impl std::fmt::Debug for Narration<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Narration")
    }
}

impl Narration<'_> {
    pub(crate) fn say(&self, line: &str) {
        (self.on_line)(line)
    }

    fn warn(&self, line: &str) {
        (self.on_warning)(line)
    }

    pub(crate) fn fail(&self, line: &str) {
        (self.on_failure)(line)
    }
}

fn find<'a>(config: &'a ClusterConfig, name: &str) -> Result<&'a NodeRecord> {
    config.node(name).ok_or_else(|| {
        Error::NotFound(format!(
            "unknown node {name:?}; `nodectl list` shows the cluster's nodes"
        ))
    })
}

fn find_mut<'a>(config: &'a mut ClusterConfig, name: &str) -> Result<&'a mut NodeRecord> {
    config
        .nodes
        .iter_mut()
        .find(|n| n.name == name)
        .ok_or_else(|| Error::Invalid(format!("unknown node {name:?}")))
}

fn online_candidates(config: &ClusterConfig) -> usize {
    config
        .nodes
        .iter()
        .filter(|n| n.role.is_candidate() && !n.offline)
        .count()
}

fn config_json(config: &ClusterConfig) -> Result<String> {
    String::from_utf8(state::to_json(config)?)
        .map_err(|e| Error::Invalid(format!("config is not UTF-8: {e}")))
}

/// An online regular node to promote in place of `leaving`: the first by
/// name, so that reruns pick the same one.
fn replacement(config: &ClusterConfig, leaving: &str) -> Option<String> {
    config
        .nodes
        .iter()
        .filter(|n| n.role == NodeRole::Regular && !n.offline && n.name != leaving)
        .map(|n| &n.name)
        .min()
        .cloned()
}

/// What the pool-size rule asks when a master candidate leaves the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PoolRule {
    /// Enough candidates remain.
    Enough,
    /// Promote another node (`--auto-promote`).
    Promote,
    /// Too few would remain: refuse the change.
    Refuse { remaining: usize, pool: usize },
    /// Too few remain, and the change goes ahead anyway (offline, remove).
    Warn { remaining: usize, pool: usize },
}

/// The pool-size rule (SPEC §6) for one candidate leaving, out of `online`
/// online candidates (the master included). `strict` refuses rather than
/// warns.
fn pool_rule(online: usize, pool: usize, auto_promote: bool, strict: bool) -> PoolRule {
    let remaining = online.saturating_sub(1);
    if remaining >= pool {
        PoolRule::Enough
    } else if auto_promote {
        PoolRule::Promote
    } else if strict {
        PoolRule::Refuse { remaining, pool }
    } else {
        PoolRule::Warn { remaining, pool }
    }
}

/// The context every master-side change needs.
struct Master<'a> {
    state: StateDir,
    client: RpcClient,
    config: ClusterConfig,
    talk: Narration<'a>,
    /// The nodes this command's commits have asked for their state and
    /// sent whatever differs, not only the change (a repair).
    resend: Resend,
    _lock: ClusterLock,
}

impl<'a> Master<'a> {
    async fn open(
        state: &StateDir,
        wait: bool,
        what: &str,
        talk: Narration<'a>,
    ) -> Result<Master<'a>> {
        cluster::master_config(state)?;
        cluster::raft::ensure_leader_locally(state).await?;
        let lock = ClusterLock::acquire(state, wait, what)?;
        // Re-read under the lock: another command may have just changed it.
        let config = cluster::master_config(state)?;
        Ok(Master {
            state: state.clone(),
            client: RpcClient::from_state(state)?,
            config,
            talk,
            resend: Resend::Changes,
            _lock: lock,
        })
    }

    async fn commit(&mut self, items: PushItems) -> Result<PushOutcome> {
        let step = self.talk.on_step;
        let resend = self.resend.clone();
        cluster::commit_resending(&self.state, &mut self.config, items, resend, step).await
    }

    /// Makes `name` a master candidate: CA key and config to it, its own SSH
    /// key pair, then the new map, config and authorized_keys everywhere.
    async fn promote(&mut self, name: &str) -> Result<PushOutcome> {
        let node = find(&self.config, name)?.clone();
        if node.offline {
            return Err(Error::Invalid(format!(
                "{name} is offline; bring it online first (`nodectl modify {name} --offline=no`)"
            )));
        }
        // Loaded (for a token: reached and checked) before anything changes.
        let ca_key = crate::pki::keystore::candidate_copy(&self.state, &self.config)?;
        let mut next = self.config.clone();
        find_mut(&mut next, name)?.role = NodeRole::Candidate;
        let unreachable =
            |e: Error| Error::Invalid(format!("cannot promote {name}: {e}; nothing was changed"));
        let mut conn = self
            .client
            .connect(&node.name, &node.address)
            .await
            .map_err(unreachable)?;
        conn.call(Procedure::InstallCandidateFiles {
            ca_key,
            config_json: config_json(&next)?,
        })
        .await
        .map_err(unreachable)?;
        let public = match conn.call(Procedure::GenerateSshKey).await {
            Ok(Reply::SshPublicKey(key)) => key,
            other => {
                // Take back what the node was given.
                let _ = conn.call(Procedure::RemoveCandidateFiles).await;
                return Err(Error::Invalid(format!(
                    "cannot promote {name}: no SSH key from it ({other:?}); nothing was changed"
                )));
            }
        };
        crate::state::ssh::check_public(&public)?;
        let record = find_mut(&mut self.config, name)?;
        record.role = NodeRole::Candidate;
        record.candidate_since = crate::core::time::now();
        record.ssh_public_key = Some(public);
        match self.commit(PushItems::ALL).await {
            Ok(push) => Ok(push),
            // Not committed (or not yet: see below): the node is still
            // recorded as regular, so it must not keep what it was given.
            Err(e) => {
                let undone = match conn.call(Procedure::RemoveCandidateFiles).await {
                    Ok(_) => "its CA key and config were removed again".to_owned(),
                    Err(u) => format!(
                        "its CA key and config could not be removed ({u}); run `nodectl modify {name} --master-candidate=no`"
                    ),
                };
                // Fail closed: a regular node never keeps the CA key. A
                // promotion that commits after all leaves a candidate
                // without it, which the operator is told how to mend.
                let later = if matches!(e, Error::Unconfirmed(_)) {
                    format!("; should `nodectl list` show {name} as a candidate later, run `nodectl modify {name} --master-candidate=no`, then `--master-candidate=yes`")
                } else {
                    String::new()
                };
                Err(Error::Invalid(format!(
                    "cannot promote {name}: the change could not be committed ({e}); {undone}{later}"
                )))
            }
        }
    }

    /// Makes `name` a regular node: the new map reaches every online node
    /// first, then its CA key, config and SSH private key go, then its
    /// public key leaves every authorized_keys.
    async fn demote(&mut self, name: &str) -> Result<PushOutcome> {
        let node = find(&self.config, name)?.clone();
        let record = find_mut(&mut self.config, name)?;
        record.role = NodeRole::Regular;
        record.ssh_public_key = None;
        let mut result = self
            .commit(PushItems {
                ssconf: true,
                config: true,
                authorized_keys: false,
            })
            .await?;
        if !node.offline {
            if let Err(e) =
                cluster::call(&self.client, &node, Procedure::RemoveCandidateFiles).await
            {
                result.unreachable.push((
                    name.to_owned(),
                    format!("its CA key, config and SSH key could not be removed: {e}"),
                ));
            }
        }
        let keys = self.push_authorized_keys().await?;
        result.unreachable.extend(keys.unreachable);
        Ok(result)
    }

    async fn push_authorized_keys(&self) -> Result<PushOutcome> {
        let items = PushItems {
            ssconf: false,
            config: false,
            authorized_keys: true,
        };
        cluster::apply_locally(&self.state, &self.config, items)?;
        let resend = self.resend.clone();
        cluster::distribute(&self.state, self.config.serial, resend, self.talk.on_step).await
    }

    /// Applies the pool-size rule to `name` leaving the candidates.
    async fn keep_pool(
        &mut self,
        name: &str,
        auto_promote: bool,
        strict: bool,
    ) -> Result<PushOutcome> {
        let pool = self.config.candidate_pool_size as usize;
        match pool_rule(online_candidates(&self.config), pool, auto_promote, strict) {
            PoolRule::Enough => Ok(PushOutcome::default()),
            PoolRule::Promote => {
                let Some(other) = replacement(&self.config, name) else {
                    return Err(Error::Invalid(format!(
                        "no online regular node to promote in place of {name}"
                    )));
                };
                self.talk.say(&format!("promoting {other} to keep {pool} master candidates"));
                self.promote(&other).await
            }
            PoolRule::Refuse { remaining, pool } => Err(Error::Invalid(format!(
                "this would leave {remaining} master candidates, fewer than the pool size {pool}; pass --auto-promote to promote another node"
            ))),
            PoolRule::Warn { remaining, pool } => {
                self.talk.warn(&format!("{remaining} master candidates remain, fewer than the pool size {pool}"));
                Ok(PushOutcome::default())
            }
        }
    }
}

/// `nodectl modify NODE --master-candidate=yes|no`.
pub async fn set_candidate(
    state: &StateDir,
    name: &str,
    yes: bool,
    auto_promote: bool,
    wait: bool,
    talk: Narration<'_>,
) -> Result<PushOutcome> {
    let mut master = Master::open(state, wait, &format!("modify {name}"), talk).await?;
    let node = find(&master.config, name)?.clone();
    if yes {
        if node.role == NodeRole::Master {
            // Nothing to promote; send everyone the state again.
            let push = master.commit(PushItems::ALL).await?;
            master
                .talk
                .say(&format!("{name} is the master; cluster state sent again"));
            return Ok(push);
        }
        // On a candidate this re-installs its files and key: a repair.
        let push = master.promote(name).await?;
        master.talk.say(&format!(
            "{name} is now a master candidate (serial {})",
            master.config.serial
        ));
        return Ok(push);
    }
    match node.role {
        NodeRole::Master => Err(Error::Invalid(format!(
            "{name} is the master and cannot be demoted; run `nodectl master-failover` on another candidate first"
        ))),
        NodeRole::Regular => {
            // A repair: make sure it holds nothing a candidate holds.
            let mut push = PushOutcome::default();
            if !node.offline {
                if let Err(e) = cluster::call(&master.client, &node, Procedure::RemoveCandidateFiles).await {
                    push.unreachable.push((name.to_owned(), e.to_string()));
                }
            }
            let sent = master.commit(PushItems::ALL).await?;
            push.unreachable.extend(sent.unreachable);
            master.talk.say(&format!("{name} is a regular node; candidate files removed, state sent again"));
            Ok(push)
        }
        NodeRole::Candidate => {
            let mut push = master.keep_pool(name, auto_promote, true).await?;
            let demoted = master.demote(name).await?;
            push.unreachable.extend(demoted.unreachable);
            master.talk.say(&format!("{name} is now a regular node (serial {})", master.config.serial));
            Ok(push)
        }
    }
}

/// `nodectl modify NODE --offline=yes|no`.
pub async fn set_offline(
    state: &StateDir,
    name: &str,
    yes: bool,
    auto_promote: bool,
    wait: bool,
    talk: Narration<'_>,
) -> Result<PushOutcome> {
    let mut master = Master::open(state, wait, &format!("modify {name}"), talk).await?;
    let node = find(&master.config, name)?.clone();
    match offline_step(&node, yes) {
        OfflineStep::ResendState => {
            // The master is online by definition: send everyone the state.
            master.resend = Resend::All;
            let push = master.commit(PushItems::ALL).await?;
            master.talk.say(&format!("{name} is the master; cluster state sent again"));
            Ok(push)
        }
        OfflineStep::RefuseMaster => Err(Error::Invalid(format!(
            "{name} is the master and cannot be offlined; run `nodectl master-failover` on another candidate first"
        ))),
        OfflineStep::AlreadyOffline => {
            master.talk.say(&format!("{name} is already offline"));
            Ok(PushOutcome::default())
        }
        OfflineStep::TakeOffline => {
            let push = master.take_offline(&node, auto_promote).await?;
            master.talk.say(&format!("{name} is offline (serial {})", master.config.serial));
            Ok(push)
        }
        OfflineStep::BringOnline => {
            let push = master.bring_online(&node).await?;
            master.talk.say(&format!("{name} is online (serial {})", master.config.serial));
            Ok(push)
        }
    }
}

/// What `modify NODE --offline=yes|no` does to `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OfflineStep {
    /// `--offline=no` on the master: its state is sent again.
    ResendState,
    /// `--offline=yes` on the master: refused.
    RefuseMaster,
    /// `--offline=yes` on an offline node: nothing to do.
    AlreadyOffline,
    TakeOffline,
    /// `--offline=no`; on an online node, a repair that re-sends its state
    /// and re-issues a certificate that does not match the record.
    BringOnline,
}

fn offline_step(node: &NodeRecord, yes: bool) -> OfflineStep {
    match (node.role, yes) {
        (NodeRole::Master, false) => OfflineStep::ResendState,
        (NodeRole::Master, true) => OfflineStep::RefuseMaster,
        (_, true) if node.offline => OfflineStep::AlreadyOffline,
        (_, true) => OfflineStep::TakeOffline,
        (_, false) => OfflineStep::BringOnline,
    }
}

/// Whether a node's client certificate must be issued again when it comes
/// online: it is not the one on record, or a CA the cluster no longer uses
/// issued it (it missed a rotation).
fn needs_new_certificate(recorded: &str, actual: &str, from_current_ca: bool) -> bool {
    actual != recorded || !from_current_ca
}

impl Master<'_> {
    /// Offline: as a demotion for the map, every other node first; then
    /// its candidate files removed, best effort (the node may be gone).
    async fn take_offline(&mut self, node: &NodeRecord, auto_promote: bool) -> Result<PushOutcome> {
        let name = node.name.as_str();
        let mut push = if node.role.is_candidate() {
            self.keep_pool(name, auto_promote, false).await?
        } else {
            PushOutcome::default()
        };
        find_mut(&mut self.config, name)?.offline = true;
        let others = self.commit(PushItems::ALL).await?;
        push.unreachable.extend(others.unreachable);
        match cluster::call(&self.client, node, Procedure::RemoveCandidateFiles).await {
            Ok(_) => {}
            Err(e) if node.role.is_candidate() => self.talk.warn(&format!(
                "could not remove the CA key and config from {name} ({e}); they will be removed when it comes back online"
            )),
            Err(_) => {}
        }
        Ok(push)
    }

    /// Online: the node gets the current state first (a new client
    /// certificate if its own is not the one on record), then its role
    /// again, then everyone else.
    async fn bring_online(&mut self, node: &NodeRecord) -> Result<PushOutcome> {
        let name = node.name.as_str();
        // Whatever of its state differs, not only this change.
        self.resend = Resend::Nodes(vec![name.to_owned()]);
        find_mut(&mut self.config, name)?.offline = false;
        if let Some(server_digest) = catch_up(self, node).await {
            find_mut(&mut self.config, name)?.server_digest = server_digest;
            self.client.trust_servers(&self.config.to_ssconf()?);
        }
        self.reissue_if_stale(node).await?;
        let mut push = PushOutcome::default();
        if node.role.is_candidate() {
            find_mut(&mut self.config, name)?.role = NodeRole::Regular;
            // Re-promote: CA key, config, its own SSH key, everywhere.
            push = self.promote(name).await?;
        } else {
            let removed = cluster::call(&self.client, node, Procedure::RemoveCandidateFiles).await;
            if let Err(e) = removed {
                push.unreachable.push((name.to_owned(), e.to_string()));
            }
            let done = self.commit(PushItems::ALL).await?;
            push.unreachable.extend(done.unreachable);
        }
        // Its ca.pem as every node's (after a CA rotation it missed, it still
        // trusts the old CA too).
        if let Err(e) = finish_ca_catch_up(self, node).await {
            push.unreachable.push((name.to_owned(), e.to_string()));
        }
        Ok(push)
    }

    /// Issues `node` a new client certificate, for a key it makes now, when
    /// the one on its disk is not the one the master signed for it. A node
    /// that cannot be reached stays offline.
    async fn reissue_if_stale(&mut self, node: &NodeRecord) -> Result<()> {
        let name = node.name.as_str();
        let reach =
            |e: Error| Error::Invalid(format!("cannot bring {name} online: {e}; it stays offline"));
        let mut conn = self
            .client
            .connect(&node.name, &node.address)
            .await
            .map_err(reach)?;
        let Reply::NodeInfo(info) = conn.call(Procedure::NodeInfo).await.map_err(reach)? else {
            return Ok(());
        };
        let alg: ssconf::DigestAlgorithm = self.config.digest.into();
        // The certificate as it is on the node's disk now.
        let der = crate::pki::load_certs_from_pem(&info.client_cert_pem).ok();
        let actual = der
            .as_ref()
            .map(|der| alg.digest(der).to_string())
            .unwrap_or_default();
        let current_ca = crate::pki::load_certs(&self.state.ca_pem())?;
        let from_current_ca = der.as_ref().is_some_and(|der| {
            crate::pki::chains_to(der, &current_ca, rustls_pki_types::UnixTime::now()).is_ok()
        });
        if !needs_new_certificate(&node.digest, &actual, from_current_ca) {
            return Ok(());
        }
        self.talk.say(&format!(
            "{name}'s client certificate is not the one on record; issuing a new one"
        ));
        let Reply::Csr(csr) = conn
            .call(Procedure::PrepareClientKey)
            .await
            .map_err(reach)?
        else {
            return Err(reach(Error::Invalid("no CSR in the reply".into())));
        };
        let ca = crate::pki::keystore::load_ca(&self.state, &self.config)?;
        let cert_pem = ca.sign_client_csr(&csr, name, self.config.cert_lifetime())?;
        let der = crate::pki::load_certs_from_pem(&cert_pem)?;
        conn.call(Procedure::InstallClientCert { cert_pem })
            .await
            .map_err(reach)?;
        let record = find_mut(&mut self.config, name)?;
        record.digest = alg.digest(&der).to_string();
        record.cert_expires = crate::pki::CertInfo::from_der(&der)?.not_after;
        Ok(())
    }
}

/// A node that missed a renewal of the master's own certificate (it was
/// offline) refuses the master's new one; the previous one, which its map
/// still holds, brings it the current map once. A node that missed a CA
/// rotation also gets a server certificate of the current CA: returns its
/// digest, for the config.
async fn catch_up(master: &Master<'_>, node: &NodeRecord) -> Option<String> {
    let current = cluster::call(&master.client, node, Procedure::Ping).await;
    if !missed_renewal(&current) {
        return None;
    }
    let Ok(Some(previous)) = RpcClient::previous_from_state(&master.state) else {
        return None;
    };
    let result = async {
        let mut conn = previous.connect(&node.name, &node.address).await?;
        // The CAs first (so it trusts the master's current certificate),
        // then the server certificate of the current CA, then the map.
        let ca_pem = std::fs::read_to_string(master.state.ca_pem())
            .map_err(Error::io(master.state.ca_pem()))?;
        let mut bundle = ca_pem.clone();
        let prev_ca = master.state.ca_prev_pem();
        if let Ok(old) = std::fs::read_to_string(&prev_ca) {
            bundle.push_str(&old);
        }
        let mut server_digest = None;
        if bundle != ca_pem {
            conn.call(Procedure::InstallCaBundle { ca_pem: bundle })
                .await?;
            let Reply::Csr(csr) = conn.call(Procedure::PrepareServerKey).await? else {
                return Err(Error::Invalid("no CSR in the reply".into()));
            };
            let ca = crate::pki::keystore::load_ca(&master.state, &master.config)?;
            let cert_pem =
                ca.sign_server_csr(&csr, &node.name, &node.uuid, master.config.cert_lifetime())?;
            let der = crate::pki::load_certs_from_pem(&cert_pem)?;
            conn.call(Procedure::InstallServerCert { cert_pem }).await?;
            server_digest = Some(ssconf::DigestAlgorithm::Sha256.digest(&der).to_string());
        }
        // The map as it will be once its new server certificate is recorded.
        let mut config = master.config.clone();
        if let Some(digest) = &server_digest {
            find_mut(&mut config, &node.name)?.server_digest = digest.clone();
        }
        let ssconf = config.to_ssconf()?;
        conn.call(Procedure::WriteSsconf {
            files: ssconf.render(),
        })
        .await?;
        Ok::<Option<String>, Error>(server_digest)
    }
    .await;
    match result {
        Ok(digest) => {
            master.talk.say(&format!(
                "{}: caught up with the master's previous certificate",
                node.name
            ));
            digest
        }
        Err(e) => {
            master
                .talk
                .warn(&format!("{}: could not catch it up: {e}", node.name));
            None
        }
    }
}

/// Whether a ping's result says the node missed a renewal while it was
/// offline: its map lacks the master's current certificate, or it serves
/// with a certificate of a CA the master no longer trusts.
fn missed_renewal(ping: &Result<Reply>) -> bool {
    matches!(
        ping,
        Err(Error::NotAuthorized { .. } | Error::UntrustedServer { .. })
    )
}

/// Once a node that missed a CA rotation has its new client certificate,
/// it trusts the current CA only, like every other node.
async fn finish_ca_catch_up(master: &Master<'_>, node: &NodeRecord) -> Result<()> {
    let ca_pem =
        std::fs::read_to_string(master.state.ca_pem()).map_err(Error::io(master.state.ca_pem()))?;
    cluster::call(&master.client, node, Procedure::InstallCaBundle { ca_pem }).await?;
    Ok(())
}

/// `nodectl remove NODE`.
pub async fn remove(
    state: &StateDir,
    name: &str,
    wait: bool,
    talk: Narration<'_>,
) -> Result<PushOutcome> {
    let mut master = Master::open(state, wait, &format!("remove {name}"), talk).await?;
    let node = find(&master.config, name)?.clone();
    if node.role == NodeRole::Master {
        return Err(Error::Invalid(format!(
            "{name} is the master and cannot be removed; run `nodectl master-failover` on another candidate first"
        )));
    }
    if node.role.is_candidate() && !node.offline {
        master.keep_pool(name, false, false).await?;
    }
    master.config.nodes.retain(|n| n.name != name);
    let mut push = master.commit(PushItems::ALL).await?;
    if !node.offline {
        if let Err(e) = cluster::call(&master.client, &node, Procedure::RemoveCandidateFiles).await
        {
            if node.role.is_candidate() {
                push.unreachable
                    .push((name.to_owned(), format!("its keys could not be wiped: {e}")));
            }
        }
    }
    master
        .talk
        .say(&format!("{name} removed (serial {})", master.config.serial));
    Ok(push)
}

/// `nodectl master-failover [--to NODE]`, on a master candidate: a Raft
/// leadership transfer to NODE (this node by default). The leader checks
/// the target is a voter whose log is complete; the new leader then
/// commits the config that names it the master and pushes it (SPEC §10.2).
pub async fn master_failover(
    state: &StateDir,
    to: Option<&str>,
    talk: Narration<'_>,
) -> Result<PushOutcome> {
    state.check_initialised()?;
    let identity = state.load_identity()?;
    if !state.config_json().exists() {
        return Err(Error::Invalid(
            "this node is not a master candidate (it holds no config.json); run master-failover on a master candidate".into(),
        ));
    }
    let config = cluster::load_config(state)?;
    let target = to.unwrap_or(&identity.name).to_owned();
    let record = find(&config, &target)?;
    if record.role == NodeRole::Regular {
        return Err(Error::Invalid(format!(
            "{target} is not a master candidate; promote it first"
        )));
    }
    let old = config.master()?.name.clone();
    if old == target && cluster::raft::leader_locally(state).await?.as_deref() == Some(&target) {
        talk.say(&format!("{target} is already the master"));
        return Ok(PushOutcome::default());
    }
    cluster::raft::transfer_locally(state, to).await?;
    // The new leader commits the config that names it; wait to see it here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = cluster::load_config(state)?;
        if now.master().map(|m| m.name == target).unwrap_or(false) {
            talk.say(&format!(
                "{target} is the master now (term {}, serial {}); {old} is a master candidate. Join tokens made on {old} are no longer valid.",
                now.term, now.serial
            ));
            return Ok(PushOutcome::default());
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::Invalid(format!(
                "{target} leads Raft but its config change did not reach this node within 10s; see `nodectl status`"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `nodectl recover --force`, on a master candidate, when a majority of
/// voters is lost for good: this node becomes the only voter and the
/// master. Says what may be lost: changes the lost voters committed after
/// the serial this node held.
pub async fn recover(state: &StateDir, talk: Narration<'_>) -> Result<PushOutcome> {
    state.check_initialised()?;
    if !state.config_json().exists() {
        return Err(Error::Invalid(
            "this node is not a master candidate (it holds no config.json); run recover on a master candidate".into(),
        ));
    }
    let (term, serial, held, lost, unreachable) = cluster::raft::recover_locally(state).await?;
    let me = state.load_identity()?.name;
    talk.warn(&format!(
        "RECOVERED BY FORCE: {me} is the only voter and the master (term {term}, serial {serial}). Any change committed after serial {held} by the voters lost ({}) is LOST.",
        if lost.is_empty() { "none".to_owned() } else { lost.join(", ") }
    ));
    if !lost.is_empty() {
        talk.say(&format!(
            "{} are regular nodes now; once repaired, each rejoins by promotion: nodectl modify NODE --master-candidate=yes",
            lost.join(", ")
        ));
    }
    Ok(PushOutcome { unreachable })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::config::DigestAlgorithmName;

    fn node(name: &str, role: NodeRole, offline: bool) -> NodeRecord {
        NodeRecord {
            uuid: format!("uuid-{name}"),
            name: name.to_owned(),
            address: "127.0.0.1:1".to_owned(),
            role,
            offline,
            digest: format!("digest-{name}"),
            cert_expires: 0,
            next_digest: None,
            ssh_public_key: None,
            server_digest: String::new(),
            next_server_digest: None,
            candidate_since: 0,
        }
    }

    fn cluster(nodes: Vec<NodeRecord>) -> ClusterConfig {
        ClusterConfig {
            cluster_name: "test".to_owned(),
            serial: 1,
            candidate_pool_size: 3,
            digest: DigestAlgorithmName::Sha256,
            cert_days: 365,
            cert_lifetime: 0,
            ca_sha256: String::new(),
            ca_key: None,
            nodes,
            users: Vec::new(),
            audit: Vec::new(),
            ca_rotation: None,
            term: 0,
        }
    }

    use NodeRole::{Candidate as C, Master as M, Regular as R};

    /// Nodes as (name, role, offline).
    type Nodes = &'static [(&'static str, NodeRole, bool)];

    #[test]
    fn online_candidates_counts_the_master_and_online_candidates() {
        let rows: &[(Nodes, usize)] = &[
            (&[("m", M, false)], 1),
            (&[("m", M, false), ("a", C, false), ("b", R, false)], 2),
            (&[("m", M, false), ("a", C, true), ("b", C, false)], 2),
            (&[("m", M, false), ("a", R, false), ("b", R, true)], 1),
            (&[], 0),
        ];
        for (nodes, want) in rows {
            let config = cluster(nodes.iter().map(|(n, r, o)| node(n, *r, *o)).collect());
            assert_eq!(online_candidates(&config), *want, "{nodes:?}");
        }
    }

    #[test]
    fn replacement_is_the_first_online_regular_node_by_name() {
        let rows: &[(Nodes, &str, Option<&str>)] = &[
            (
                &[("m", M, false), ("c", R, false), ("b", R, false)],
                "a",
                Some("b"),
            ),
            // The leaving node itself is never its replacement.
            (
                &[("m", M, false), ("b", R, false), ("c", R, false)],
                "b",
                Some("c"),
            ),
            // Offline and candidate nodes are not eligible.
            (
                &[("m", M, false), ("b", R, true), ("c", C, false)],
                "c",
                None,
            ),
            (&[("m", M, false)], "m", None),
        ];
        for (nodes, leaving, want) in rows {
            let config = cluster(nodes.iter().map(|(n, r, o)| node(n, *r, *o)).collect());
            assert_eq!(
                replacement(&config, leaving).as_deref(),
                *want,
                "{nodes:?} leaving {leaving}"
            );
        }
    }

    #[test]
    fn pool_rule_table() {
        use PoolRule::*;
        // (online candidates, pool size, --auto-promote, strict) -> rule
        let rows = [
            (4, 3, false, true, Enough),
            (3, 2, false, true, Enough),
            (3, 3, true, true, Promote),
            (3, 3, true, false, Promote),
            (
                3,
                3,
                false,
                true,
                Refuse {
                    remaining: 2,
                    pool: 3,
                },
            ),
            (
                3,
                3,
                false,
                false,
                Warn {
                    remaining: 2,
                    pool: 3,
                },
            ),
            (
                1,
                1,
                false,
                false,
                Warn {
                    remaining: 0,
                    pool: 1,
                },
            ),
            (
                0,
                1,
                false,
                true,
                Refuse {
                    remaining: 0,
                    pool: 1,
                },
            ),
            (1, 0, false, true, Enough),
        ];
        for (online, pool, auto, strict, want) in rows {
            assert_eq!(
                pool_rule(online, pool, auto, strict),
                want,
                "{online} online, pool {pool}, auto {auto}, strict {strict}"
            );
        }
    }

    #[test]
    fn offline_step_table() {
        use OfflineStep::*;
        // (role, offline now, --offline=yes) -> step
        let rows = [
            (M, false, false, ResendState),
            (M, false, true, RefuseMaster),
            (C, false, true, TakeOffline),
            (R, false, true, TakeOffline),
            (C, true, true, AlreadyOffline),
            (R, true, true, AlreadyOffline),
            (C, true, false, BringOnline),
            (R, true, false, BringOnline),
            // A repair.
            (R, false, false, BringOnline),
        ];
        for (role, offline, yes, want) in rows {
            let n = node("n", role, offline);
            assert_eq!(
                offline_step(&n, yes),
                want,
                "{role:?} offline {offline} yes {yes}"
            );
        }
    }

    #[test]
    fn needs_new_certificate_table() {
        // (recorded, actual on disk, chains to the current CA) -> reissue
        let rows = [
            ("d1", "d1", true, false),
            ("d1", "d2", true, true),
            ("d1", "d1", false, true),
            ("d1", "", false, true),
            ("", "", false, true),
        ];
        for (recorded, actual, current, want) in rows {
            assert_eq!(
                needs_new_certificate(recorded, actual, current),
                want,
                "{recorded:?} {actual:?} {current}"
            );
        }
    }

    #[test]
    fn missed_renewal_table() {
        let node = || "n".to_owned();
        let rows: Vec<(Result<Reply>, bool)> = vec![
            (
                Ok(Reply::Pong {
                    node: node(),
                    version: "1".into(),
                }),
                false,
            ),
            (
                Err(Error::NotAuthorized {
                    node: node(),
                    reason: "access denied".into(),
                }),
                true,
            ),
            (
                Err(Error::UntrustedServer {
                    node: node(),
                    address: "127.0.0.1:1".into(),
                    reason: "unknown issuer".into(),
                }),
                true,
            ),
            (
                Err(Error::Unreachable {
                    node: node(),
                    reason: "connection refused".into(),
                }),
                false,
            ),
            (
                Err(Error::Remote {
                    node: node(),
                    message: "busy".into(),
                }),
                false,
            ),
        ];
        for (ping, want) in &rows {
            assert_eq!(missed_renewal(ping), *want, "{ping:?}");
        }
    }
}
