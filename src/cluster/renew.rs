//! Renewing node client certificates and node server certificates (SPEC
//! §8): the runs ([`node_certificates`], [`server_certificates`]), which
//! `nodectl renew-crypto` and the master's daemon (automatic renewal,
//! SPEC §8.1) both drive, telling what happens through a [`Reporter`]; and
//! their decisions as plain functions: which nodes a run renews, and what
//! each node's record holds after each step.
//!
//! A renewal goes through an overlapping map: the new digest enters the map
//! next to the old one (`next_digest`) before the node switches, and the old
//! one leaves only after. The steps, each followed by a commit:
//!
//! 1. **prepare** and **sign**: the node makes a key and a CSR; the master
//!    signs it and records the new digest as `next_digest`
//!    ([`StepOutcome::Signed`]).
//! 2. **overlap**: the map with old and new digests reaches every node.
//! 3. **install**: the node switches to its new certificate.
//! 4. **settle**: after a grace period only the new digest remains
//!    ([`StepOutcome::Settled`]).
//!
//! The master's own certificate comes last, once every node holds a map
//! with its new digest ([`StepOutcome::Withdrawn`] otherwise).

use std::sync::Arc;

use ssconf::DigestAlgorithm;

use crate::cluster::{self, PushItems, PushOutcome};
use crate::core::{Error, Result};
use crate::pki::{self, CertInfo, CertificateAuthority, CertificateSigner, NodeKey};
use crate::rpc::fanout::{fan_out, CONCURRENCY};
use crate::rpc::RpcClient;
use crate::state::config::{ClusterConfig, NodeRecord};
use crate::state::{StateDir, MODE_SECRET};
use crate::wire::{Procedure, Reply};

/// How long the old digests stay in the map after the nodes switched, so
/// that a command that loaded a node's old certificate just before the
/// switch still completes with it.
pub const SWITCH_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A certificate the master signed for a node, with what its record needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCertificate {
    pub cert_pem: String,
    /// In the cluster's digest algorithm.
    pub digest: String,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

impl NewCertificate {
    /// Reads the digest and expiry of `cert_pem`.
    pub fn parse(cert_pem: String, alg: DigestAlgorithm) -> Result<Self> {
        let der = pki::load_certs_from_pem(&cert_pem)?;
        Ok(NewCertificate {
            digest: alg.digest(&der).to_string(),
            not_after: CertInfo::from_der(&der)?.not_after,
            cert_pem,
        })
    }

    /// What the record of a node that switched to it holds once the grace
    /// period passed.
    pub fn settled(&self) -> StepOutcome {
        StepOutcome::Settled {
            digest: self.digest.clone(),
            not_after: self.not_after,
        }
    }
}

/// What happened to one node in a step of the renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// The node (or the master itself) uses the certificate with this
    /// digest. A run interrupted after the node switched, but before the
    /// switch was recorded, left that certificate as `next_digest`: it is
    /// adopted, or it would fall out of the map.
    Uses(String),
    /// The node uses `actual` (empty when unknown) and the master signed it
    /// a new certificate with digest `next`: both are in the next map.
    Signed { actual: String, next: String },
    /// A step failed on a node that could not be reached (or whose answer
    /// was lost): its old certificate may be gone, so it keeps no valid
    /// entry, and is fixed later with `renew-crypto --new-node-certificates
    /// --node NODE`.
    Failed,
    /// The node was reached and refused the step (a full disk, a clock out
    /// of range, a certificate it would not take): it still uses its current
    /// certificate, which keeps its entry; the new one is withdrawn.
    Refused,
    /// The node switched to this certificate and the grace period passed:
    /// only its digest remains.
    Settled { digest: String, not_after: i64 },
    /// The master's own new certificate did not reach every node's map: it
    /// keeps its current one alone.
    Withdrawn,
}

/// Changes `record` as `outcome` says (see [`StepOutcome`]).
pub fn record_outcome(record: &mut NodeRecord, outcome: &StepOutcome) {
    match outcome {
        StepOutcome::Uses(actual) => adopt(record, actual),
        StepOutcome::Signed { actual, next } => {
            adopt(record, actual);
            record.next_digest = Some(next.clone());
        }
        StepOutcome::Failed => {
            record.digest = String::new();
            record.next_digest = None;
        }
        StepOutcome::Settled { digest, not_after } => {
            record.digest = digest.clone();
            record.next_digest = None;
            record.cert_expires = *not_after;
        }
        StepOutcome::Withdrawn | StepOutcome::Refused => record.next_digest = None,
    }
}

/// What happened to one node in a step of a server certificate renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStep {
    /// The node serves with `actual` (empty when unknown) and the master
    /// signed it a new certificate with digest `next`: clients accept both.
    Signed { actual: String, next: String },
    /// The node serves with the new certificate: only it remains.
    Switched,
}

/// Changes `record`'s server digests as `step` says.
pub fn record_server_outcome(record: &mut NodeRecord, step: &ServerStep) {
    match step {
        ServerStep::Signed { actual, next } => {
            // An earlier run's switch that was never recorded.
            if record.next_server_digest.as_deref() == Some(actual.as_str()) {
                record.server_digest = actual.clone();
            }
            record.next_server_digest = Some(next.clone());
        }
        ServerStep::Switched => {
            if let Some(next) = record.next_server_digest.take() {
                record.server_digest = next;
            }
        }
    }
}

/// Records `actual` as the node's certificate if it is the pending one.
fn adopt(record: &mut NodeRecord, actual: &str) {
    if record.next_digest.as_deref() == Some(actual) {
        record.digest = actual.to_owned();
        record.next_digest = None;
    }
}

/// The nodes a run renews: every online node, or those in `only`, each of
/// which must exist and be online.
pub fn targets(config: &ClusterConfig, only: &[String]) -> Result<Vec<NodeRecord>> {
    for name in only {
        let node = config.node(name).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown node {name:?}; `nodectl list` shows the cluster's nodes"
            ))
        })?;
        if node.offline {
            return Err(Error::Invalid(format!(
                "{name} is offline; bring it online first (`nodectl modify {name} --offline=no`)"
            )));
        }
    }
    Ok(config
        .nodes
        .iter()
        .filter(|n| !n.offline && (only.is_empty() || only.contains(&n.name)))
        .cloned()
        .collect())
}

/// The online master candidates, `except` one (by uuid): those that get
/// the new CA key during a CA rotation, or a new SSH key.
pub fn online_candidates_except(config: &ClusterConfig, except: Option<&str>) -> Vec<NodeRecord> {
    config
        .nodes
        .iter()
        .filter(|n| n.role.is_candidate() && !n.offline && Some(n.uuid.as_str()) != except)
        .cloned()
        .collect()
}

/// The record of the node called `name`, to change.
pub fn node_mut<'a>(config: &'a mut ClusterConfig, name: &str) -> Result<&'a mut NodeRecord> {
    config
        .nodes
        .iter_mut()
        .find(|n| n.name == name)
        .ok_or_else(|| Error::Invalid(format!("unknown node {name:?}")))
}

/// Where a renewal tells what happens: nodectl prints lines and shows
/// bars; the master's daemon logs.
pub trait Reporter: Sync {
    /// A fan-out over `total` nodes begins.
    fn begin(&self, what: &str, total: usize);
    /// One node of the current fan-out is done.
    fn tick(&self);
    /// One node's step ended, with its error if it failed.
    fn step(&self, node: &str, what: &str, error: Option<&Error>);
    /// A line about the run (stdout for nodectl).
    fn note(&self, text: &str);
    /// A warning about the run (stderr for nodectl).
    fn warn(&self, text: &str);
}

/// Runs `op` on every node in `nodes` through [`fan_out`], reporting.
async fn fan_out_nodes<T, F, Fut>(
    report: &dyn Reporter,
    nodes: &[NodeRecord],
    op: F,
) -> Vec<(NodeRecord, Result<T>)>
where
    T: Send + 'static,
    F: Fn(NodeRecord) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    report.begin("renewing", nodes.len());
    fan_out(nodes, CONCURRENCY, &|| report.tick(), op).await
}

/// Commits `config` and pushes it to every other online node, reporting.
async fn commit_all(
    state: &StateDir,
    client: &RpcClient,
    config: &mut ClusterConfig,
    report: &dyn Reporter,
) -> Result<PushOutcome> {
    let others = config.online_nodes().count().saturating_sub(1);
    report.begin("pushing cluster state", others);
    cluster::commit(state, client, config, PushItems::ALL, &[], &|| {
        report.tick()
    })
    .await
}

/// `--new-node-certificates`: the steps of [`cluster::renew`] for every
/// node in `only` (default: every online node), the master last.
pub async fn node_certificates(
    state: &StateDir,
    config: &mut ClusterConfig,
    only: &[String],
    failed: &mut PushOutcome,
    report: &dyn Reporter,
) -> Result<()> {
    let targets = targets(config, only)?;
    let me = state.load_identity()?;
    let run = Renewal::open(state, config, report)?;
    // A run interrupted after this node switched, but before the switch was
    // recorded, left its certificate as `next_digest`: adopted first.
    let own = pki::file_digest(&state.client_pem(), run.alg)?.to_string();
    record_outcome(node_mut(config, &me.name)?, &StepOutcome::Uses(own.clone()));
    let (own_target, others): (Vec<NodeRecord>, Vec<NodeRecord>) =
        targets.into_iter().partition(|n| n.uuid == me.uuid);

    let pending = run.prepare_and_sign(config, &others, failed).await?;
    let overlap = run.commit(config).await?;
    failed.unreachable.extend(overlap.unreachable);
    let mut switched = run.install(config, &pending, failed).await?;
    if !own_target.is_empty() {
        switched.extend(run.renew_own(config, &me.name, own, failed).await?);
    }
    run.settle(config, &switched, failed).await
}

/// What every step of a node-certificate renewal needs.
struct Renewal<'a> {
    state: &'a StateDir,
    report: &'a dyn Reporter,
    client: RpcClient,
    ca: Arc<CertificateAuthority>,
    alg: DigestAlgorithm,
    lifetime: std::time::Duration,
}

impl<'a> Renewal<'a> {
    fn open(state: &'a StateDir, config: &ClusterConfig, report: &'a dyn Reporter) -> Result<Self> {
        Ok(Renewal {
            state,
            report,
            alg: config.digest.into(),
            ca: Arc::new(crate::pki::keystore::load_ca(state, config)?),
            lifetime: config.cert_lifetime(),
            client: RpcClient::from_state(state)?,
        })
    }

    /// Commits `config` and pushes it to every other online node.
    async fn commit(&self, config: &mut ClusterConfig) -> Result<PushOutcome> {
        commit_all(self.state, &self.client, config, self.report).await
    }

    /// Prepare and sign: every node in `nodes` makes a key and a CSR, the
    /// master signs it and records the new digest next to the old one.
    /// Returns the nodes that got a certificate, with it.
    async fn prepare_and_sign(
        &self,
        config: &mut ClusterConfig,
        nodes: &[NodeRecord],
        failed: &mut PushOutcome,
    ) -> Result<Vec<(NodeRecord, NewCertificate)>> {
        let (alg, lifetime) = (self.alg, self.lifetime);
        let signed = fan_out_nodes(self.report, nodes, |node| {
            let client = self.client.clone();
            let ca = self.ca.clone();
            async move {
                let (actual, csr) = prepare(&client, &node, alg).await?;
                Ok((actual, ca.sign_client_csr(&csr, &node.name, lifetime)?))
            }
        })
        .await;
        let mut pending = Vec::new();
        for (node, result) in signed {
            self.report
                .step(&node.name, "new key and CSR", result.as_ref().err());
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
    ) -> Result<Vec<(String, NewCertificate)>> {
        let nodes: Vec<NodeRecord> = pending.iter().map(|(n, _)| n.clone()).collect();
        let installed = fan_out_nodes(self.report, &nodes, |node| {
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
            self.report
                .step(&node.name, "new client certificate", result.as_ref().err());
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
    ) -> Result<Option<(String, NewCertificate)>> {
        if !failed.is_complete() {
            self.report.warn(&format!(
                "{me}: client certificate NOT renewed: some nodes did not get the new map; run `nodectl renew-crypto --new-node-certificates --node {me}` once they are reachable"
            ));
            return Ok(None);
        }
        let key = NodeKey::generate()?;
        let cert_pem = self.ca.sign_client_csr(&key.csr(me)?, me, self.lifetime)?;
        let cert = NewCertificate::parse(cert_pem, self.alg)?;
        let signed = StepOutcome::Signed {
            actual: own,
            next: cert.digest.clone(),
        };
        record_outcome(node_mut(config, me)?, &signed);
        let overlap = self.commit(config).await?;
        if !overlap.is_complete() {
            record_outcome(node_mut(config, me)?, &StepOutcome::Withdrawn);
            self.report.warn(&format!(
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
        self.report
            .note(&format!("{me}: new client certificate: ok"));
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
    ) -> Result<()> {
        if !switched.is_empty() {
            tokio::time::sleep(SWITCH_GRACE).await;
        }
        for (name, cert) in switched {
            record_outcome(node_mut(config, name)?, &cert.settled());
        }
        // The master may have switched: it pushes with its new certificate.
        let client = RpcClient::from_state(self.state)?;
        let done = commit_all(self.state, &client, config, self.report).await?;
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
    report: &dyn Reporter,
) -> Result<()> {
    let client = RpcClient::from_state(state)?;
    let ca = Arc::new(crate::pki::keystore::load_ca(state, config)?);
    let days = config.cert_lifetime();
    let nodes = targets(config, only)?;
    let signed = fan_out_nodes(report, &nodes, |node| {
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
        report.step(&node.name, "new server key and CSR", result.as_ref().err());
        let record = node_mut(config, &node.name)?;
        match result {
            Ok((actual, cert_pem)) => {
                let next = NewCertificate::parse(cert_pem, DigestAlgorithm::Sha256)?;
                record_server_outcome(
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
    let overlap = commit_all(state, &client, config, report).await?;
    failed.unreachable.extend(overlap.unreachable);
    let installed =
        fan_out_nodes(
            report,
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
        report.step(&node.name, "new server certificate", result.as_ref().err());
        let record = node_mut(config, &node.name)?;
        match result {
            Ok(_) => record_server_outcome(record, &ServerStep::Switched),
            // Both stay accepted: whichever the node serves with is valid.
            Err(e) => failed
                .unreachable
                .push((node.name, format!("{e}; {rerun}"))),
        }
    }
    tokio::time::sleep(SWITCH_GRACE).await;
    let done = commit_all(state, &client, config, report).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::config::{DigestAlgorithmName, NodeRole};

    fn record(digest: &str, next: Option<&str>) -> NodeRecord {
        NodeRecord {
            uuid: "uuid-n".into(),
            name: "n".into(),
            address: "127.0.0.1:1".into(),
            role: NodeRole::Candidate,
            offline: false,
            digest: digest.into(),
            cert_expires: 100,
            next_digest: next.map(Into::into),
            ssh_public_key: None,
            server_digest: String::new(),
            next_server_digest: None,
        }
    }

    #[test]
    fn record_after_each_outcome() {
        use StepOutcome::*;
        let uses = |d: &str| Uses(d.into());
        let signed = |actual: &str, next: &str| Signed {
            actual: actual.into(),
            next: next.into(),
        };
        let settled = |d: &str| Settled {
            digest: d.into(),
            not_after: 200,
        };
        // (digest, next_digest) before, outcome -> (digest, next_digest, cert_expires) after
        type Before = (&'static str, Option<&'static str>);
        type After = (&'static str, Option<&'static str>, i64);
        let rows: Vec<(Before, StepOutcome, After)> = vec![
            // Adopt: the node uses the pending certificate.
            (("old", Some("new")), uses("new"), ("new", None, 100)),
            // Still on the old one: both stay.
            (("old", Some("new")), uses("old"), ("old", Some("new"), 100)),
            (("old", None), uses("other"), ("old", None, 100)),
            // Signed: the new digest enters next to the old.
            (
                ("old", None),
                signed("old", "new"),
                ("old", Some("new"), 100),
            ),
            // Signed after an interrupted run: the node switched to the
            // previous run's certificate, which it uses now.
            (
                ("old", Some("mid")),
                signed("mid", "new"),
                ("mid", Some("new"), 100),
            ),
            // A previous run's certificate the node never installed.
            (
                ("old", Some("mid")),
                signed("old", "new"),
                ("old", Some("new"), 100),
            ),
            // Unknown certificate on the node.
            (("old", None), signed("", "new"), ("old", Some("new"), 100)),
            // Failed (unreachable, or the answer was lost): no valid entry.
            (("old", None), Failed, ("", None, 100)),
            (("old", Some("new")), Failed, ("", None, 100)),
            // Refused (the node answered no): its current one stays.
            (("old", Some("new")), Refused, ("old", None, 100)),
            (("old", None), Refused, ("old", None, 100)),
            // Settled: the new digest alone.
            (("old", Some("new")), settled("new"), ("new", None, 200)),
            (("", None), settled("new"), ("new", None, 200)),
            // Withdrawn: the master keeps its current certificate.
            (("old", Some("new")), Withdrawn, ("old", None, 100)),
            (("old", None), Withdrawn, ("old", None, 100)),
        ];
        for ((digest, next), outcome, (want_digest, want_next, want_expires)) in rows {
            let mut r = record(digest, next);
            record_outcome(&mut r, &outcome);
            assert_eq!(
                (r.digest.as_str(), r.next_digest.as_deref(), r.cert_expires),
                (want_digest, want_next, want_expires),
                "({digest:?}, {next:?}) after {outcome:?}"
            );
        }
    }

    fn cluster() -> ClusterConfig {
        let node = |name: &str, role, offline| NodeRecord {
            uuid: format!("uuid-{name}"),
            name: name.into(),
            role,
            offline,
            ..record("d", None)
        };
        ClusterConfig {
            cluster_name: "test".into(),
            serial: 1,
            candidate_pool_size: 3,
            digest: DigestAlgorithmName::Sha256,
            cert_days: 365,
            cert_lifetime: 0,
            ca_sha256: String::new(),
            ca_key: None,
            nodes: vec![
                node("m", NodeRole::Master, false),
                node("c", NodeRole::Candidate, false),
                node("d", NodeRole::Candidate, true),
                node("r", NodeRole::Regular, false),
                node("s", NodeRole::Regular, true),
            ],
        }
    }

    #[test]
    fn targets_table() {
        // --node arguments -> renewed nodes, or the start of the error
        type Want = std::result::Result<&'static [&'static str], &'static str>;
        let rows: &[(&[&str], Want)] = &[
            (&[], Ok(&["m", "c", "r"])),
            (&["r"], Ok(&["r"])),
            (&["r", "m"], Ok(&["m", "r"])),
            (&["s"], Err("s is offline")),
            (&["r", "x"], Err("unknown node \"x\"")),
        ];
        let config = cluster();
        for (only, want) in rows {
            let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
            let got = targets(&config, &only);
            match (got, want) {
                (Ok(nodes), Ok(want)) => {
                    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                    assert_eq!(&names, want, "{only:?}");
                }
                (Err(e), Err(want)) => {
                    assert!(e.to_string().starts_with(want), "{only:?}: {e}")
                }
                (got, want) => panic!("{only:?}: {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn online_candidates_except_table() {
        let rows: &[(Option<&str>, &[&str])] = &[
            (None, &["m", "c"]),
            (Some("uuid-m"), &["c"]),
            (Some("uuid-r"), &["m", "c"]),
        ];
        let config = cluster();
        for (except, want) in rows {
            let got = online_candidates_except(&config, *except);
            let names: Vec<&str> = got.iter().map(|n| n.name.as_str()).collect();
            assert_eq!(&names, want, "except {except:?}");
        }
    }
}
