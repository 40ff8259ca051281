//! `nodectl renew-crypto` (SPEC §8): rotation without downtime.
//!
//! Node certificates go through an overlapping map: the new digest enters
//! the map next to the old one (`next_digest` in the config) before any node
//! switches, and the old one leaves only after. Every other node is renewed
//! with the master's current certificate; the master's own certificate is
//! renewed last and the final push uses it. Each step leaves a state in
//! which every node serves and the master can command every node, so a
//! rerun after a crash simply completes the job.

use std::sync::Arc;

use ssconf::DigestAlgorithm;

use super::{progress, Outcome};
use crate::cluster::{self, ClusterLock, PushItems, PushOutcome};
use crate::core::{Error, Result, Secret};
use crate::pki::{self, CertInfo, CertificateSigner, NodeKey};
use crate::rpc::fanout::{fan_out, CONCURRENCY};
use crate::rpc::RpcClient;
use crate::state::config::{ClusterConfig, NodeRecord};
use crate::state::StateDir;
use crate::wire::{Procedure, Reply};

/// How long the old digests stay in the map after the nodes switched.
pub const SWITCH_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What to renew.
#[derive(Debug, Clone, Default)]
pub struct RenewPlan {
    pub node_certificates: bool,
    pub cluster_certificate: bool,
    pub ssh_keys: bool,
    pub ca: bool,
    /// Limit node-certificate renewal to these nodes (default: all online).
    pub nodes: Vec<String>,
}

/// Runs `op` on every node in `nodes` through [`fan_out`], with a bar.
async fn fan_out_nodes<T, F, Fut>(nodes: &[NodeRecord], op: F) -> Vec<(NodeRecord, Result<T>)>
where
    T: Send + 'static,
    F: Fn(NodeRecord) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let bar = progress::Progress::new(nodes.len(), "renewing");
    fan_out(nodes, CONCURRENCY, &|| bar.step(), op).await
}

fn report_step(node: &str, what: &str, result: &Result<impl Sized>) {
    match result {
        Ok(_) => crate::say!("{node}: {what}: ok"),
        Err(e) => eprintln!("{node}: {what}: FAILED: {e}"),
    }
}

/// `nodectl renew-crypto`.
pub async fn renew(state: &StateDir, plan: &RenewPlan, wait: bool) -> Result<Outcome> {
    cluster::master_config(state)?;
    let _lock = ClusterLock::acquire(state, wait, "renew-crypto")?;
    let mut config = cluster::master_config(state)?;
    let mut unreachable = PushOutcome::default();
    if plan.ca {
        // Reissues every certificate itself.
        new_ca(state, &mut config, &mut unreachable).await?;
    } else if plan.node_certificates {
        node_certificates(state, &mut config, &plan.nodes, &mut unreachable).await?;
    }
    if plan.cluster_certificate && !plan.ca {
        cluster_certificate(state, &config, &mut unreachable).await?;
    }
    if plan.ssh_keys {
        ssh_keys(state, &mut config, &mut unreachable).await?;
    }
    // One line per node: the first (most specific) reason.
    let mut seen = std::collections::BTreeSet::new();
    unreachable
        .unreachable
        .retain(|(node, _)| seen.insert(node.clone()));
    unreachable.report();
    Ok(if unreachable.is_complete() {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

async fn node_certificates(
    state: &StateDir,
    config: &mut ClusterConfig,
    only: &[String],
    failed: &mut PushOutcome,
) -> Result<()> {
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
    let me = state.load_identity()?;
    let alg: DigestAlgorithm = config.digest.into();
    let ca = Arc::new(crate::pki::keystore::load_ca(state, config)?);
    let days = config.cert_days;
    let targets: Vec<NodeRecord> = config
        .nodes
        .iter()
        .filter(|n| !n.offline && (only.is_empty() || only.contains(&n.name)))
        .cloned()
        .collect();
    let others: Vec<NodeRecord> = targets
        .iter()
        .filter(|n| n.uuid != me.uuid)
        .cloned()
        .collect();
    let renew_self = targets.iter().any(|n| n.uuid == me.uuid);
    let client = RpcClient::from_state(state)?;

    // A run that was interrupted after a node switched, but before the
    // switch was recorded, left the certificate the node uses as
    // `next_digest`: adopt it before anything else, or it would fall out
    // of the map.
    let own = crate::pki::file_digest(&state.client_pem(), alg)?.to_string();
    adopt(node_mut(config, &me.name)?, &own);

    // 1. Every other node makes a key and a CSR; the master signs.
    let signed = fan_out_nodes(&others, |node| {
        let client = client.clone();
        let ca = ca.clone();
        async move {
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
            Ok((actual, ca.sign_client_csr(&csr, days)?))
        }
    })
    .await;
    let mut pending: Vec<(NodeRecord, String)> = Vec::new();
    for (node, result) in signed {
        report_step(&node.name, "new key and CSR", &result);
        let record = node_mut(config, &node.name)?;
        match result {
            Ok((actual, cert_pem)) => {
                adopt(record, &actual);
                let der = pki::load_certs_from_pem(&cert_pem)?;
                record.next_digest = Some(alg.digest(&der).to_string());
                pending.push((node, cert_pem));
            }
            Err(e) => {
                // Keeps no valid entry: fixed later with --node.
                record.digest = String::new();
                record.next_digest = None;
                failed.unreachable.push((node.name.clone(), format!("{e}; renew it later with `nodectl renew-crypto --new-node-certificates --node {}`", node.name)));
            }
        }
    }
    // 2. The overlapping map (old and new digests) reaches every node.
    let overlap = progress::commit(state, &client, config, PushItems::ALL, &[]).await?;
    failed.unreachable.extend(overlap.unreachable);

    // 3. Each node switches to its new certificate.
    let installed = fan_out_nodes(
        &pending.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        |node| {
            let client = client.clone();
            let cert_pem = pending
                .iter()
                .find(|(n, _)| n.uuid == node.uuid)
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            async move {
                let procedure = Procedure::InstallClientCert {
                    cert_pem: cert_pem.clone(),
                };
                cluster::call(&client, &node, procedure)
                    .await
                    .map(|_| cert_pem)
            }
        },
    )
    .await;
    // Switched nodes keep both digests in the map until the grace period
    // below has passed; they are recorded as switched only then.
    let mut switched: Vec<(String, String)> = Vec::new();
    for (node, result) in installed {
        report_step(&node.name, "new client certificate", &result);
        let record = node_mut(config, &node.name)?;
        match result {
            Ok(cert_pem) => switched.push((node.name.clone(), cert_pem)),
            Err(e) => {
                record.digest = String::new();
                record.next_digest = None;
                failed.unreachable.push((node.name.clone(), format!("{e}; renew it later with `nodectl renew-crypto --new-node-certificates --node {}`", node.name)));
            }
        }
    }
    // The master's own certificate comes last, and only when every node
    // holds a map with its new digest: a node that missed the pushes keeps
    // the master's old digest, and the master must still be able to
    // command it once it is back.
    if renew_self {
        if !failed.is_complete() {
            eprintln!(
                "{}: client certificate NOT renewed: some nodes did not get the new map; run `nodectl renew-crypto --new-node-certificates --node {}` once they are reachable",
                me.name, me.name
            );
        } else {
            let key = NodeKey::generate()?;
            let cert_pem = ca.sign_client_csr(&key.client_csr(&me.name)?, days)?;
            let der = pki::load_certs_from_pem(&cert_pem)?;
            node_mut(config, &me.name)?.next_digest = Some(alg.digest(&der).to_string());
            let overlap = progress::commit(state, &client, config, PushItems::ALL, &[]).await?;
            if overlap.is_complete() {
                state.write(
                    &state.client_key_pending(),
                    key.to_pem().expose().as_bytes(),
                    crate::state::MODE_SECRET,
                )?;
                crate::pki::pair::keep_previous_identity(state)?;
                crate::pki::pair::switch_client_pair(state, &cert_pem)?;
                switched.push((me.name.clone(), cert_pem));
                crate::say!("{}: new client certificate: ok", me.name);
            } else {
                node_mut(config, &me.name)?.next_digest = None;
                eprintln!(
                    "{}: client certificate NOT renewed: some nodes did not get the new map",
                    me.name
                );
                failed.unreachable.extend(overlap.unreachable);
            }
        }
    }

    // 4. Only the new digests remain — after a grace period, so that a
    // command that loaded a node's old certificate just before the switch
    // still completes with it.
    if !switched.is_empty() {
        tokio::time::sleep(SWITCH_GRACE).await;
    }
    for (name, cert_pem) in &switched {
        finish(node_mut(config, name)?, cert_pem, alg)?;
    }
    let client = RpcClient::from_state(state)?;
    let done = progress::commit(state, &client, config, PushItems::ALL, &[]).await?;
    failed.unreachable.extend(done.unreachable);
    Ok(())
}

/// Records `actual` as the node's certificate if it is the pending one.
fn adopt(record: &mut NodeRecord, actual: &str) {
    if record.next_digest.as_deref() == Some(actual) {
        record.digest = actual.to_owned();
        record.next_digest = None;
    }
}

fn finish(record: &mut NodeRecord, cert_pem: &str, alg: DigestAlgorithm) -> Result<()> {
    let der = pki::load_certs_from_pem(cert_pem)?;
    record.digest = alg.digest(&der).to_string();
    record.next_digest = None;
    record.cert_expires = CertInfo::from_der(&der)?.not_after;
    Ok(())
}

fn node_mut<'a>(config: &'a mut ClusterConfig, name: &str) -> Result<&'a mut NodeRecord> {
    config
        .nodes
        .iter_mut()
        .find(|n| n.name == name)
        .ok_or_else(|| Error::Invalid(format!("unknown node {name:?}")))
}

/// A new shared server certificate on every online node; each daemon
/// serves with it from the next handshake, without a restart.
async fn cluster_certificate(
    state: &StateDir,
    config: &ClusterConfig,
    failed: &mut PushOutcome,
) -> Result<()> {
    let ca = crate::pki::keystore::load_ca(state, config)?;
    let (cert_pem, key) = ca.issue_server_certificate(&config.cluster_name, config.cert_days)?;
    let client = RpcClient::from_state(state)?;
    let nodes: Vec<NodeRecord> = config.online_nodes().cloned().collect();
    let results = fan_out_nodes(&nodes, |node| {
        let client = client.clone();
        let cert_pem = cert_pem.clone();
        let key: Secret = key.clone();
        async move {
            cluster::call(
                &client,
                &node,
                Procedure::InstallServerCert { cert_pem, key },
            )
            .await
        }
    })
    .await;
    report(
        results,
        "new server certificate",
        "nodectl renew-crypto --new-cluster-certificate",
        failed,
    );
    Ok(())
}

/// A new SSH key pair on every online master candidate (made there), then
/// the new public keys in every authorized_keys.
async fn ssh_keys(
    state: &StateDir,
    config: &mut ClusterConfig,
    failed: &mut PushOutcome,
) -> Result<()> {
    let client = RpcClient::from_state(state)?;
    let candidates: Vec<NodeRecord> = config
        .nodes
        .iter()
        .filter(|n| n.role.is_candidate() && !n.offline)
        .cloned()
        .collect();
    let results = fan_out_nodes(&candidates, |node| {
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
        report_step(&node.name, "new SSH key", &result);
        match result {
            Ok(key) => node_mut(config, &node.name)?.ssh_public_key = Some(key),
            Err(e) => failed.unreachable.push((
                node.name,
                format!("{e}; run `nodectl renew-crypto --new-ssh-keys` again"),
            )),
        }
    }
    let pushed = progress::commit(state, &client, config, PushItems::ALL, &[]).await?;
    failed.unreachable.extend(pushed.unreachable);
    Ok(())
}

/// Sends `ca_pem` to every online node (this one included, through its
/// daemon, which reloads its TLS configuration). Returns whether all took it.
async fn install_bundle(
    client: &RpcClient,
    config: &ClusterConfig,
    ca_pem: &str,
    what: &str,
    failed: &mut PushOutcome,
) -> bool {
    let nodes: Vec<NodeRecord> = config.online_nodes().cloned().collect();
    let results = fan_out_nodes(&nodes, |node| {
        let client = client.clone();
        let ca_pem = ca_pem.to_owned();
        async move { cluster::call(&client, &node, Procedure::InstallCaBundle { ca_pem }).await }
    })
    .await;
    report(results, what, "nodectl renew-crypto --new-ca", failed)
}

/// Prints each node's outcome of step `what`; records every failure with
/// the command to rerun. Returns whether every node succeeded.
fn report<T>(
    results: Vec<(NodeRecord, Result<T>)>,
    what: &str,
    rerun: &str,
    failed: &mut PushOutcome,
) -> bool {
    let mut all = true;
    for (node, result) in results {
        report_step(&node.name, what, &result);
        if let Err(e) = result {
            all = false;
            failed.unreachable.push((
                node.name,
                format!("{e}; run `{rerun}` again once it is reachable"),
            ));
        }
    }
    all
}

/// `--new-ca`: a new CA trusted beside the old one, every certificate
/// reissued by it, then the old one dropped. Each phase is recorded on disk
/// (`ca.new.pem` while the new CA is being distributed, with its key aside in
/// the key store: `ca.key.new`, or the token label `O.new`; two
/// certificates in ca.pem until the old one is dropped), so a rerun resumes
/// where a crash or an unreachable node stopped it.
async fn new_ca(
    state: &StateDir,
    config: &mut ClusterConfig,
    failed: &mut PushOutcome,
) -> Result<()> {
    let new_cert_path = state.ca_new_pem();
    let trusted = pki::load_certs(&state.ca_pem())?;
    let client = RpcClient::from_state(state)?;
    let store = crate::pki::keystore::for_cluster(state, config)?;

    // 1. A new CA, kept aside until every node trusts it. Its certificate is
    // written last: it marks the phase (a key set aside by a run that died
    // before that is replaced).
    if !new_cert_path.exists() && trusted.len() == 1 {
        let days = config.cert_days.saturating_mul(10).min(36500);
        let ca = store.create_next_ca(&config.cluster_name, days)?;
        state.write(
            &new_cert_path,
            ca.cert_pem().as_bytes(),
            crate::state::MODE_PUBLIC,
        )?;
        crate::say!(
            "new CA made: {}",
            DigestAlgorithm::Sha256.digest(ca.cert_der())
        );
    }
    if new_cert_path.exists() {
        let new_cert =
            std::fs::read_to_string(&new_cert_path).map_err(Error::io(&new_cert_path))?;
        let new_ca = store.load_next_ca(&new_cert)?;
        let new_key = store.candidate_copy(&new_ca);
        // 2. Every node trusts both CAs.
        let mut bundle = new_ca.cert_pem().to_owned();
        for old in trusted
            .iter()
            .filter(|c| c.as_ref() != new_ca.cert_der().as_ref())
        {
            bundle.push_str(&pki::pem_of(old));
        }
        if !install_bundle(&client, config, &bundle, "trusts old and new CA", failed).await {
            eprintln!(
                "stopped: every online node must trust the new CA before anything is signed by it"
            );
            return Ok(());
        }
        // 3. The master and the candidates sign with the new CA from now on.
        store.activate_next()?;
        config.ca_sha256 = DigestAlgorithm::Sha256
            .digest(new_ca.cert_der())
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let me = state.load_identity()?;
        let mut next = config.clone();
        next.serial += 1;
        let config_json = String::from_utf8(crate::state::to_json(&next)?)
            .map_err(|e| Error::Invalid(format!("config is not UTF-8: {e}")))?;
        let candidates: Vec<NodeRecord> = config
            .nodes
            .iter()
            .filter(|n| n.role.is_candidate() && !n.offline && n.uuid != me.uuid)
            .cloned()
            .collect();
        let results = fan_out_nodes(&candidates, |node| {
            let client = client.clone();
            let ca_key = new_key.clone();
            let config_json = config_json.clone();
            async move {
                cluster::call(
                    &client,
                    &node,
                    Procedure::InstallCandidateFiles {
                        ca_key,
                        config_json,
                    },
                )
                .await
            }
        })
        .await;
        report(
            results,
            "new CA key",
            "nodectl renew-crypto --new-ca",
            failed,
        );
        let pushed = progress::commit(state, &client, config, PushItems::ALL, &[]).await?;
        failed.unreachable.extend(pushed.unreachable);
        if !failed.is_complete() {
            eprintln!(
                "stopped: rerun `nodectl renew-crypto --new-ca` once every node is reachable"
            );
            return Ok(());
        }
        store.finish_next()?;
        ssconf::atomic::remove_durable(&new_cert_path).map_err(Error::io(&new_cert_path))?;
    }
    // 4. Every certificate reissued by the new CA.
    cluster_certificate(state, config, failed).await?;
    node_certificates(state, config, &[], failed).await?;
    if !failed.is_complete() {
        eprintln!("stopped before dropping the old CA: rerun `nodectl renew-crypto --new-ca` once every node is reachable");
        return Ok(());
    }
    // 5. The old CA is dropped everywhere. The master keeps its certificate
    // (ca.prev.pem) to reach, once, a node that was offline meanwhile.
    let ca = crate::pki::keystore::load_ca(state, config)?;
    let old: String = pki::load_certs(&state.ca_pem())?
        .iter()
        .filter(|c| c.as_ref() != ca.cert_der().as_ref())
        .map(|c| pki::pem_of(c))
        .collect();
    if !old.is_empty() {
        state.write(
            &state.ca_prev_pem(),
            old.as_bytes(),
            crate::state::MODE_PUBLIC,
        )?;
    }
    let client = RpcClient::from_state(state)?;
    if install_bundle(
        &client,
        config,
        ca.cert_pem(),
        "trusts the new CA only",
        failed,
    )
    .await
    {
        crate::say!(
            "CA rotation complete: {}",
            DigestAlgorithm::Sha256.digest(ca.cert_der())
        );
    }
    Ok(())
}
