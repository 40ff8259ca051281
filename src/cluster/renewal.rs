//! `nodectl renew-crypto` (SPEC §8): rotation without downtime.
//!
//! Node certificates go through an overlapping map: the new digest enters
//! the map next to the old one (`next_digest` in the config) before any node
//! switches, and the old one leaves only after. Every other node is renewed
//! with the master's current certificate; the master's own certificate is
//! renewed last and the final push uses it. Each step leaves a state in
//! which every node serves and the master can command every node, so a
//! rerun after a crash simply completes the job. The steps and what each
//! makes of a node's record are in [`cluster::renew`]; this file carries
//! them out and says each node's line to the caller's [`Narration`]
//! (nodectl prints it; the remote API returns it).

use std::sync::Arc;

use ssconf::DigestAlgorithm;

use crate::cluster::ca_rotation::{self, CaPlan};
use crate::cluster::lifecycle::Narration;
use crate::cluster::renew::{
    self, node_mut, record_outcome, NewCertificate, ServerStep, StepOutcome, SWITCH_GRACE,
};
use crate::cluster::{self, ClusterLock, PushItems, PushOutcome};
use crate::core::{Error, Result};
use crate::pki::{self, CertificateAuthority, CertificateSigner, NodeKey};
use crate::rpc::fanout::{fan_out, CONCURRENCY};
use crate::rpc::RpcClient;
use crate::state::config::{ClusterConfig, NodeRecord};
use crate::state::{StateDir, MODE_SECRET};
use crate::wire::{Procedure, Reply};

/// What to renew.
#[derive(Debug, Clone, Default)]
pub struct RenewPlan {
    pub node_certificates: bool,
    pub cluster_certificate: bool,
    pub ssh_keys: bool,
    /// `--new-ca`, `--continue-ca` or `--rollback-ca` (which reissue every
    /// certificate themselves).
    pub ca: Option<CaPlan>,
    /// Limit node-certificate renewal to these nodes (default: all online).
    pub nodes: Vec<String>,
}

/// Runs `op` on every node in `nodes` through [`fan_out`], a step each.
pub(crate) async fn fan_out_nodes<T, F, Fut>(
    talk: Narration<'_>,
    nodes: &[NodeRecord],
    op: F,
) -> Vec<(NodeRecord, Result<T>)>
where
    T: Send + 'static,
    F: Fn(NodeRecord) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    fan_out(nodes, CONCURRENCY, talk.on_step, op).await
}

pub(crate) fn report_step(
    talk: Narration<'_>,
    node: &str,
    what: &str,
    result: &Result<impl Sized>,
) {
    match result {
        Ok(_) => talk.say(&format!("{node}: {what}: ok")),
        Err(e) => talk.fail(&format!("{node}: {what}: FAILED: {e}")),
    }
}

/// `renew-crypto`: the nodes that did not take it, one line each.
pub async fn renew(
    state: &StateDir,
    plan: &RenewPlan,
    wait: bool,
    talk: Narration<'_>,
) -> Result<PushOutcome> {
    cluster::master_config(state)?;
    cluster::raft::ensure_leader_locally(state).await?;
    let _lock = ClusterLock::acquire(state, wait, "renew-crypto")?;
    let mut config = cluster::master_config(state)?;
    let mut unreachable = PushOutcome::default();
    if let Some(ca) = plan.ca {
        ca_rotation::rotate(state, &mut config, ca, &mut unreachable, talk).await?;
    } else if plan.node_certificates {
        node_certificates(state, &mut config, &plan.nodes, &mut unreachable, talk).await?;
    }
    if plan.cluster_certificate && plan.ca.is_none() {
        server_certificates(state, &mut config, &[], &mut unreachable, talk).await?;
    }
    if plan.ssh_keys {
        ssh_keys(state, &mut config, &mut unreachable, talk).await?;
    }
    // One line per node: the first (most specific) reason.
    let mut seen = std::collections::BTreeSet::new();
    unreachable
        .unreachable
        .retain(|(node, _)| seen.insert(node.clone()));
    Ok(unreachable)
}

/// `--new-node-certificates`: the steps of [`cluster::renew`] for every
/// node in `only` (default: every online node), the master last.
pub async fn node_certificates(
    state: &StateDir,
    config: &mut ClusterConfig,
    only: &[String],
    failed: &mut PushOutcome,
    talk: Narration<'_>,
) -> Result<()> {
    let targets = renew::targets(config, only)?;
    let me = state.load_identity()?;
    let run = Renewal::open(state, config)?;
    // A run interrupted after this node switched, but before the switch was
    // recorded, left its certificate as `next_digest`: adopted first.
    let own = pki::file_digest(&state.client_pem(), run.alg)?.to_string();
    record_outcome(node_mut(config, &me.name)?, &StepOutcome::Uses(own.clone()));
    let (own_target, others): (Vec<NodeRecord>, Vec<NodeRecord>) =
        targets.into_iter().partition(|n| n.uuid == me.uuid);

    let pending = run.prepare_and_sign(config, &others, failed, talk).await?;
    let overlap = run.commit(config, talk).await?;
    failed.unreachable.extend(overlap.unreachable);
    let mut switched = run.install(config, &pending, failed, talk).await?;
    if !own_target.is_empty() {
        switched.extend(run.renew_own(config, &me.name, own, failed, talk).await?);
    }
    run.settle(config, &switched, failed, talk).await
}

/// What every step of a node-certificate renewal needs.
struct Renewal<'a> {
    state: &'a StateDir,
    client: RpcClient,
    ca: Arc<CertificateAuthority>,
    alg: DigestAlgorithm,
    days: std::time::Duration,
}

impl<'a> Renewal<'a> {
    fn open(state: &'a StateDir, config: &ClusterConfig) -> Result<Self> {
        Ok(Renewal {
            state,
            alg: config.digest.into(),
            ca: Arc::new(crate::pki::keystore::load_ca(state, config)?),
            days: config.cert_lifetime(),
            client: RpcClient::from_state(state)?,
        })
    }

    /// Commits `config` and pushes it to every other online node.
    async fn commit(&self, config: &mut ClusterConfig, talk: Narration<'_>) -> Result<PushOutcome> {
        cluster::commit(self.state, config, PushItems::ALL, talk.on_step).await
    }

    /// Prepare and sign: every node in `nodes` makes a key and a CSR, the
    /// master signs it and records the new digest next to the old one.
    /// Returns the nodes that got a certificate, with it.
    async fn prepare_and_sign(
        &self,
        config: &mut ClusterConfig,
        nodes: &[NodeRecord],
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<Vec<(NodeRecord, NewCertificate)>> {
        let (alg, days) = (self.alg, self.days);
        let signed = fan_out_nodes(talk, nodes, |node| {
            let client = self.client.clone();
            let ca = self.ca.clone();
            async move {
                let (actual, csr) = prepare(&client, &node, alg).await?;
                Ok((actual, ca.sign_client_csr(&csr, &node.name, days)?))
            }
        })
        .await;
        let mut pending = Vec::new();
        for (node, result) in signed {
            report_step(talk, &node.name, "new key and CSR", &result);
            let outcome = match result {
                Ok((actual, cert_pem)) => {
                    let cert = NewCertificate::parse(cert_pem, alg)?;
                    let next = cert.digest.clone();
                    pending.push((node.clone(), cert));
                    StepOutcome::Signed { actual, next }
                }
                Err(e) => {
                    failed.unreachable.push(renew_later(&node.name, &e));
                    failure(&e)
                }
            };
            record_outcome(node_mut(config, &node.name)?, &outcome);
        }
        Ok(pending)
    }

    /// Install: each node switches to its new certificate (once the map
    /// with both digests reached every node). Returns the nodes that did.
    async fn install(
        &self,
        config: &mut ClusterConfig,
        pending: &[(NodeRecord, NewCertificate)],
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<Vec<(String, NewCertificate)>> {
        let nodes: Vec<NodeRecord> = pending.iter().map(|(n, _)| n.clone()).collect();
        let installed = fan_out_nodes(talk, &nodes, |node| {
            let client = self.client.clone();
            let cert = pending
                .iter()
                .find(|(n, _)| n.uuid == node.uuid)
                .map(|(_, c)| c.clone());
            async move {
                let cert = cert.ok_or_else(|| Error::Invalid("no certificate signed".into()))?;
                let cert_pem = cert.cert_pem.clone();
                let procedure = Procedure::InstallClientCert { cert_pem };
                cluster::call(&client, &node, procedure).await.map(|_| cert)
            }
        })
        .await;
        let mut switched = Vec::new();
        for (node, result) in installed {
            report_step(talk, &node.name, "new client certificate", &result);
            match result {
                Ok(cert) => switched.push((node.name, cert)),
                Err(e) => {
                    failed.unreachable.push(renew_later(&node.name, &e));
                    record_outcome(node_mut(config, &node.name)?, &failure(&e));
                }
            }
        }
        Ok(switched)
    }

    /// The master's own certificate (it uses `own`), last, and only when
    /// every node holds a map with its new digest: a node that missed the
    /// pushes keeps the master's old digest, and the master must still be
    /// able to command it once it is back. Made and installed here.
    async fn renew_own(
        &self,
        config: &mut ClusterConfig,
        me: &str,
        own: String,
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<Option<(String, NewCertificate)>> {
        if !failed.is_complete() {
            talk.fail(&format!(
                "{me}: client certificate NOT renewed: some nodes did not get the new map; run `nodectl renew-crypto --new-node-certificates --node {me}` once they are reachable"
            ));
            return Ok(None);
        }
        let key = NodeKey::generate()?;
        let cert_pem = self.ca.sign_client_csr(&key.csr(me)?, me, self.days)?;
        let cert = NewCertificate::parse(cert_pem, self.alg)?;
        let signed = StepOutcome::Signed {
            actual: own,
            next: cert.digest.clone(),
        };
        record_outcome(node_mut(config, me)?, &signed);
        let overlap = self.commit(config, talk).await?;
        if !overlap.is_complete() {
            record_outcome(node_mut(config, me)?, &StepOutcome::Withdrawn);
            talk.fail(&format!(
                "{me}: client certificate NOT renewed: some nodes did not get the new map"
            ));
            failed.unreachable.extend(overlap.unreachable);
            return Ok(None);
        }
        let state = self.state;
        let pending_key = state.client_key_pending();
        let key_pem = key.to_pem();
        state.write(&pending_key, key_pem.expose().as_bytes(), MODE_SECRET)?;
        crate::pki::pair::keep_previous_identity(state)?;
        crate::pki::pair::switch_client_pair(state, &cert.cert_pem)?;
        talk.say(&format!("{me}: new client certificate: ok"));
        Ok(Some((me.to_owned(), cert)))
    }

    /// Settle: only the new digests remain, after a grace period so that a
    /// command that loaded a node's old certificate just before the switch
    /// still completes with it.
    async fn settle(
        &self,
        config: &mut ClusterConfig,
        switched: &[(String, NewCertificate)],
        failed: &mut PushOutcome,
        talk: Narration<'_>,
    ) -> Result<()> {
        if !switched.is_empty() {
            tokio::time::sleep(SWITCH_GRACE).await;
        }
        for (name, cert) in switched {
            record_outcome(node_mut(config, name)?, &cert.settled());
        }
        let done = cluster::commit(self.state, config, PushItems::ALL, talk.on_step).await?;
        failed.unreachable.extend(done.unreachable);
        Ok(())
    }
}

/// Prepare, on one node: the digest of the certificate it uses now (empty
/// when unknown) and the CSR of a key it makes.
async fn prepare(
    client: &RpcClient,
    node: &NodeRecord,
    alg: DigestAlgorithm,
) -> Result<(String, String)> {
    let mut conn = client.connect(&node.name, &node.address).await?;
    let actual = match conn.call(Procedure::NodeInfo).await? {
        Reply::NodeInfo(info) => pki::load_certs_from_pem(&info.client_cert_pem)
            .map(|der| alg.digest(&der).to_string())
            .unwrap_or_default(),
        _ => String::new(),
    };
    let Reply::Csr(csr) = conn.call(Procedure::PrepareClientKey).await? else {
        return Err(Error::Invalid("no CSR in the reply".into()));
    };
    Ok((actual, csr))
}

/// What a failed step means for the node's entry: a node that was not
/// reached (or whose answer was lost) may have switched, so it keeps no
/// valid entry (SPEC §8); one that answered no, or a failure on the master,
/// leaves it with its current certificate and entry.
fn failure(e: &Error) -> StepOutcome {
    if e.is_unreachable() {
        StepOutcome::Failed
    } else {
        StepOutcome::Refused
    }
}

/// A node whose renewal failed, with the command that fixes it later.
fn renew_later(node: &str, e: &Error) -> (String, String) {
    (
        node.to_owned(),
        format!(
            "{e}; renew it later with `nodectl renew-crypto --new-node-certificates --node {node}`"
        ),
    )
}

/// `--new-cluster-certificate`: every online node (the master included,
/// through its own daemon) makes a new server key and a CSR; the master
/// signs a certificate naming the node and records its digest beside the
/// current one, so that clients accept either while the node switches; then
/// the node serves with it (no restart) and only the new digest remains. A
/// node where a step fails keeps serving with its current certificate.
pub async fn server_certificates(
    state: &StateDir,
    config: &mut ClusterConfig,
    only: &[String],
    failed: &mut PushOutcome,
    talk: Narration<'_>,
) -> Result<()> {
    let client = RpcClient::from_state(state)?;
    let ca = Arc::new(crate::pki::keystore::load_ca(state, config)?);
    let days = config.cert_lifetime();
    let nodes = renew::targets(config, only)?;
    let signed = fan_out_nodes(talk, &nodes, |node| {
        let (client, ca) = (client.clone(), ca.clone());
        async move {
            let (actual, csr) = prepare_server(&client, &node).await?;
            let cert = ca.sign_server_csr(&csr, &node.name, &node.uuid, days)?;
            Ok((actual, cert))
        }
    })
    .await;
    let rerun = "run `nodectl renew-crypto --new-cluster-certificate` again";
    let mut pending = Vec::new();
    for (node, result) in signed {
        report_step(talk, &node.name, "new server key and CSR", &result);
        let record = node_mut(config, &node.name)?;
        match result {
            Ok((actual, cert_pem)) => {
                let next = NewCertificate::parse(cert_pem, DigestAlgorithm::Sha256)?;
                renew::record_server_outcome(
                    record,
                    &ServerStep::Signed {
                        actual,
                        next: next.digest.clone(),
                    },
                );
                pending.push((node, next));
            }
            Err(e) => failed.unreachable.push((
                node.name,
                format!("{e}; its current server certificate stays; {rerun}"),
            )),
        }
    }
    // Every client accepts the old and the new certificate of each node.
    let overlap = cluster::commit(state, config, PushItems::ALL, talk.on_step).await?;
    failed.unreachable.extend(overlap.unreachable);
    // A client reads the recorded certificates when it starts: one that
    // started just before this commit knows only the old ones. Give it the
    // grace period to finish before any node serves its new certificate.
    if !pending.is_empty() {
        tokio::time::sleep(SWITCH_GRACE).await;
    }
    let installed =
        fan_out_nodes(
            talk,
            &pending.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            |node| {
                let client = client.clone();
                let cert_pem = pending
                    .iter()
                    .find(|(n, _)| n.uuid == node.uuid)
                    .map(|(_, c)| c.cert_pem.clone())
                    .unwrap_or_default();
                async move {
                    cluster::call(&client, &node, Procedure::InstallServerCert { cert_pem }).await
                }
            },
        )
        .await;
    for (node, result) in installed {
        report_step(talk, &node.name, "new server certificate", &result);
        let record = node_mut(config, &node.name)?;
        match result {
            Ok(_) => renew::record_server_outcome(record, &ServerStep::Switched),
            // Both stay accepted: whichever the node serves with is valid.
            Err(e) => failed
                .unreachable
                .push((node.name, format!("{e}; {rerun}"))),
        }
    }
    tokio::time::sleep(SWITCH_GRACE).await;
    let done = cluster::commit(state, config, PushItems::ALL, talk.on_step).await?;
    failed.unreachable.extend(done.unreachable);
    Ok(())
}

/// On one node: the digest of the server certificate it serves with now
/// (empty when unknown), and the CSR of a new server key it makes.
async fn prepare_server(client: &RpcClient, node: &NodeRecord) -> Result<(String, String)> {
    let mut conn = client.connect(&node.name, &node.address).await?;
    let actual = match conn.call(Procedure::NodeInfo).await? {
        Reply::NodeInfo(info) => info.server_digest,
        _ => String::new(),
    };
    let Reply::Csr(csr) = conn.call(Procedure::PrepareServerKey).await? else {
        return Err(Error::Invalid("no CSR in the reply".into()));
    };
    Ok((actual, csr))
}

/// A new SSH key pair on every online master candidate (made there), then
/// the new public keys in every authorized_keys.
async fn ssh_keys(
    state: &StateDir,
    config: &mut ClusterConfig,
    failed: &mut PushOutcome,
    talk: Narration<'_>,
) -> Result<()> {
    let client = RpcClient::from_state(state)?;
    let candidates = renew::online_candidates_except(config, None);
    let results = fan_out_nodes(talk, &candidates, |node| {
        let client = client.clone();
        async move {
            match cluster::call(&client, &node, Procedure::ReplaceSshKey).await? {
                Reply::SshPublicKey(key) => {
                    crate::state::ssh::check_public(&key)?;
                    Ok(key)
                }
                other => Err(Error::Invalid(format!("unexpected reply {other:?}"))),
            }
        }
    })
    .await;
    for (node, result) in results {
        report_step(talk, &node.name, "new SSH key", &result);
        match result {
            Ok(key) => node_mut(config, &node.name)?.ssh_public_key = Some(key),
            Err(e) => failed.unreachable.push((
                node.name,
                format!("{e}; run `nodectl renew-crypto --new-ssh-keys` again"),
            )),
        }
    }
    let pushed = cluster::commit(state, config, PushItems::ALL, talk.on_step).await?;
    failed.unreachable.extend(pushed.unreachable);
    Ok(())
}
