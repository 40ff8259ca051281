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
//! them out and reports each node's line.

use rustls::pki_types::CertificateDer;
use ssconf::DigestAlgorithm;

use super::{progress, Outcome};
use crate::cluster::renew::{self, node_mut, Reporter};
use crate::cluster::{self, ClusterLock, PushItems, PushOutcome};
use crate::core::{hex, Error, Result, Secret};
use crate::pki::keystore::KeyStore;
use crate::pki::{self, CertificateSigner};
use crate::rpc::fanout::{fan_out, CONCURRENCY};
use crate::rpc::RpcClient;
use crate::state::config::{ClusterConfig, NodeRecord};
use crate::state::{StateDir, MODE_PUBLIC};
use crate::wire::{Procedure, Reply};

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
    Printed.step(node, what, result.as_ref().err());
}

/// How nodectl reports a renewal: a line per node and step (stdout when
/// it went well, stderr when not), and a bar on a terminal.
struct Printed;

static BAR: std::sync::Mutex<Option<progress::Progress>> = std::sync::Mutex::new(None);

impl Reporter for Printed {
    fn begin(&self, what: &str, total: usize) {
        if let Ok(mut bar) = BAR.lock() {
            *bar = Some(progress::Progress::new(total, what));
        }
    }
    fn tick(&self) {
        if let Ok(bar) = BAR.lock() {
            if let Some(bar) = bar.as_ref() {
                bar.step();
            }
        }
    }
    fn step(&self, node: &str, what: &str, error: Option<&Error>) {
        if let Ok(mut bar) = BAR.lock() {
            *bar = None;
        }
        match error {
            None => crate::say!("{node}: {what}: ok"),
            Some(e) => eprintln!("{node}: {what}: FAILED: {e}"),
        }
    }
    fn note(&self, text: &str) {
        crate::say!("{text}");
    }
    fn warn(&self, text: &str) {
        eprintln!("{text}");
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
        renew::node_certificates(state, &mut config, &plan.nodes, &mut unreachable, &Printed)
            .await?;
    }
    if plan.cluster_certificate && !plan.ca {
        renew::server_certificates(state, &mut config, &[], &mut unreachable, &Printed).await?;
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

/// A new SSH key pair on every online master candidate (made there), then
/// the new public keys in every authorized_keys.
async fn ssh_keys(
    state: &StateDir,
    config: &mut ClusterConfig,
    failed: &mut PushOutcome,
) -> Result<()> {
    let client = RpcClient::from_state(state)?;
    let candidates = renew::online_candidates_except(config, None);
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

/// Runs the procedure `install` makes on every online node (this one
/// included, through its daemon, which reloads its TLS configuration), and
/// reports step `what`. Returns whether every node took it.
async fn install_everywhere(
    client: &RpcClient,
    config: &ClusterConfig,
    install: impl Fn() -> Procedure,
    what: &str,
    rerun: &str,
    failed: &mut PushOutcome,
) -> bool {
    let nodes: Vec<NodeRecord> = config.online_nodes().cloned().collect();
    let results = fan_out_nodes(&nodes, |node| {
        let client = client.clone();
        let procedure = install();
        async move { cluster::call(&client, &node, procedure).await }
    })
    .await;
    report(results, what, rerun, failed)
}

/// Sends `ca_pem` to every online node. Returns whether all took it.
async fn install_bundle(
    client: &RpcClient,
    config: &ClusterConfig,
    ca_pem: &str,
    what: &str,
    failed: &mut PushOutcome,
) -> bool {
    let install = || Procedure::InstallCaBundle {
        ca_pem: ca_pem.to_owned(),
    };
    let rerun = "nodectl renew-crypto --new-ca";
    install_everywhere(client, config, install, what, rerun, failed).await
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
    let trusted = pki::load_certs(&state.ca_pem())?;
    let client = RpcClient::from_state(state)?;
    let store = crate::pki::keystore::for_cluster(state, config)?;
    // 1. A new CA, kept aside until every node trusts it.
    if !state.ca_new_pem().exists() && trusted.len() == 1 {
        make_next_ca(state, config, store.as_ref())?;
    }
    // 2. and 3.: trust, then sign with it.
    if state.ca_new_pem().exists()
        && !introduce_next_ca(state, &client, config, store.as_ref(), &trusted, failed).await?
    {
        return Ok(());
    }
    // 4. Every certificate reissued by the new CA.
    renew::server_certificates(state, config, &[], failed, &Printed).await?;
    renew::node_certificates(state, config, &[], failed, &Printed).await?;
    if !failed.is_complete() {
        eprintln!("stopped before dropping the old CA: rerun `nodectl renew-crypto --new-ca` once every node is reachable");
        return Ok(());
    }
    drop_old_ca(state, config, failed).await
}

/// Step 1 of `--new-ca`: the next CA, its key aside in the key store. Its
/// certificate (`ca.new.pem`) is written last: it marks the phase (a key set
/// aside by a run that died before that is replaced).
fn make_next_ca(state: &StateDir, config: &ClusterConfig, store: &dyn KeyStore) -> Result<()> {
    let days = config.cert_days.saturating_mul(10).min(36500);
    let ca = store.create_next_ca(&config.cluster_name, days)?;
    state.write(&state.ca_new_pem(), ca.cert_pem().as_bytes(), MODE_PUBLIC)?;
    crate::say!(
        "new CA made: {}",
        DigestAlgorithm::Sha256.digest(ca.cert_der())
    );
    Ok(())
}

/// Steps 2 and 3 of `--new-ca`: every node trusts both CAs; then the master
/// and the candidates sign with the new one, and the config names it.
/// Returns whether every node took both, so that reissuing may begin.
async fn introduce_next_ca(
    state: &StateDir,
    client: &RpcClient,
    config: &mut ClusterConfig,
    store: &dyn KeyStore,
    trusted: &[CertificateDer<'static>],
    failed: &mut PushOutcome,
) -> Result<bool> {
    let new_cert_path = state.ca_new_pem();
    let new_cert = std::fs::read_to_string(&new_cert_path).map_err(Error::io(&new_cert_path))?;
    let new_ca = store.load_next_ca(&new_cert)?;
    let bundle = trust_bundle(new_ca.cert_pem(), new_ca.cert_der(), trusted);
    if !install_bundle(client, config, &bundle, "trusts old and new CA", failed).await {
        eprintln!(
            "stopped: every online node must trust the new CA before anything is signed by it"
        );
        return Ok(false);
    }
    store.activate_next()?;
    config.ca_sha256 = hex::lower(DigestAlgorithm::Sha256.digest(new_ca.cert_der()).as_bytes());
    let new_key = store.candidate_copy(&new_ca);
    send_next_ca_key(state, client, config, new_key, failed).await?;
    let pushed = progress::commit(state, client, config, PushItems::ALL, &[]).await?;
    failed.unreachable.extend(pushed.unreachable);
    if !failed.is_complete() {
        eprintln!("stopped: rerun `nodectl renew-crypto --new-ca` once every node is reachable");
        return Ok(false);
    }
    store.finish_next()?;
    ssconf::atomic::remove_durable(&new_cert_path).map_err(Error::io(&new_cert_path))?;
    Ok(true)
}

/// The new CA's key (for a file store; nothing for a token) and the config
/// naming it, to every other online master candidate.
async fn send_next_ca_key(
    state: &StateDir,
    client: &RpcClient,
    config: &ClusterConfig,
    ca_key: Option<Secret>,
    failed: &mut PushOutcome,
) -> Result<()> {
    let me = state.load_identity()?;
    let mut next = config.clone();
    next.serial += 1;
    let config_json = String::from_utf8(crate::state::to_json(&next)?)
        .map_err(|e| Error::Invalid(format!("config is not UTF-8: {e}")))?;
    let candidates = renew::online_candidates_except(config, Some(&me.uuid));
    let results = fan_out_nodes(&candidates, |node| {
        let client = client.clone();
        let procedure = Procedure::InstallCandidateFiles {
            ca_key: ca_key.clone(),
            config_json: config_json.clone(),
        };
        async move { cluster::call(&client, &node, procedure).await }
    })
    .await;
    report(
        results,
        "new CA key",
        "nodectl renew-crypto --new-ca",
        failed,
    );
    Ok(())
}

/// Step 5 of `--new-ca`: the old CA is dropped everywhere. The master keeps
/// its certificate (ca.prev.pem) to reach, once, a node that was offline
/// meanwhile.
async fn drop_old_ca(
    state: &StateDir,
    config: &ClusterConfig,
    failed: &mut PushOutcome,
) -> Result<()> {
    let ca = crate::pki::keystore::load_ca(state, config)?;
    let old: String = pki::load_certs(&state.ca_pem())?
        .iter()
        .filter(|c| c.as_ref() != ca.cert_der().as_ref())
        .map(|c| pki::pem_of(c))
        .collect();
    if !old.is_empty() {
        state.write(&state.ca_prev_pem(), old.as_bytes(), MODE_PUBLIC)?;
    }
    let client = RpcClient::from_state(state)?;
    let what = "trusts the new CA only";
    if install_bundle(&client, config, ca.cert_pem(), what, failed).await {
        crate::say!(
            "CA rotation complete: {}",
            DigestAlgorithm::Sha256.digest(ca.cert_der())
        );
    }
    Ok(())
}

/// The CA bundle of the trust phase: the new CA first, then every trusted
/// CA that is not the new one.
fn trust_bundle(new_pem: &str, new_der: &[u8], trusted: &[CertificateDer<'static>]) -> String {
    let mut bundle = new_pem.to_owned();
    for old in trusted.iter().filter(|c| c.as_ref() != new_der) {
        bundle.push_str(&pki::pem_of(old));
    }
    bundle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_bundle_puts_the_new_ca_first_and_once() {
        let der = |b: &[u8]| CertificateDer::from(b.to_vec());
        let (new, old, older) = (der(b"new"), der(b"old"), der(b"older"));
        let new_pem = pki::pem_of(&new);
        // trusted now -> the CAs of the bundle, in order
        let rows: Vec<(Vec<CertificateDer<'static>>, Vec<&CertificateDer<'static>>)> = vec![
            (vec![old.clone()], vec![&new, &old]),
            // A rerun: ca.pem already holds the new CA.
            (vec![new.clone(), old.clone()], vec![&new, &old]),
            (vec![old.clone(), older.clone()], vec![&new, &old, &older]),
            (vec![], vec![&new]),
        ];
        for (trusted, want) in rows {
            let want: String = want.into_iter().map(|c| pki::pem_of(c)).collect();
            assert_eq!(trust_bundle(&new_pem, &new, &trusted), want);
        }
    }
}
