//! The consistency checks of `nodectl verify` (SPEC §7): every node's state
//! gathered over RPC in parallel, every finding with the node it concerns
//! and the command that fixes it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use ssconf::{CandidateMap, CertDigest, DigestAlgorithm, Ssconf};

use crate::cluster;
use crate::core::{Error, Result};
use crate::pki::{self, CertInfo};
use crate::rpc::fanout::{fan_out, CONCURRENCY};
use crate::rpc::RpcClient;
use crate::state::config::{ClusterConfig, NodeRecord, NodeRole};
use crate::state::StateDir;
use crate::wire::{NodeInfo, Procedure, Reply};

/// Days before expiry that make a WARNING, and an ERROR.
pub const WARN_DAYS: i64 = 30;
pub const ERROR_DAYS: i64 = 7;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Severity {
    #[serde(rename = "ERROR")]
    Error,
    #[serde(rename = "WARNING")]
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
        }
    }
}

/// One inconsistency.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub node: String,
    pub code: &'static str,
    pub message: String,
    pub fix: String,
}

#[derive(Debug, Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(
        &mut self,
        severity: Severity,
        node: &str,
        code: &'static str,
        message: String,
        fix: String,
    ) {
        self.0.push(Finding {
            severity,
            node: node.to_owned(),
            code,
            message,
            fix,
        });
    }
}

fn resync(node: &str) -> String {
    format!("nodectl modify {node} --offline=no (sends it the cluster's state again)")
}

fn reissue(node: &str) -> String {
    format!("nodectl renew-crypto --new-node-certificates --node {node}")
}

/// Checks a certificate's expiry.
fn expiry(findings: &mut Findings, node: &str, what: &str, not_after: i64, now: i64, fix: &str) {
    let days = (not_after - now).div_euclid(86_400);
    let when = crate::core::time::rfc3339(not_after);
    if not_after <= now {
        findings.add(
            Severity::Error,
            node,
            "CERT_EXPIRED",
            format!("{what} expired on {when}"),
            fix.to_owned(),
        );
    } else if days < ERROR_DAYS {
        findings.add(
            Severity::Error,
            node,
            "CERT_EXPIRES",
            format!("{what} expires in {days} days ({when})"),
            fix.to_owned(),
        );
    } else if days < WARN_DAYS {
        findings.add(
            Severity::Warning,
            node,
            "CERT_EXPIRES",
            format!("{what} expires in {days} days ({when})"),
            fix.to_owned(),
        );
    }
}

/// Runs every check; `infos` holds what each reachable online node said.
fn check(
    config: &ClusterConfig,
    local: &LocalView,
    infos: &BTreeMap<String, Result<NodeInfo, String>>,
    now: i64,
) -> Vec<Finding> {
    let mut findings = Findings::default();
    let alg: DigestAlgorithm = config.digest.into();
    let master = config.master().map(|m| m.name.clone()).unwrap_or_default();
    let by_uuid: BTreeMap<&str, &NodeRecord> =
        config.nodes.iter().map(|n| (n.uuid.as_str(), n)).collect();
    let expected_ssconf = config.to_ssconf().ok();
    let expected_ssconf_sha = expected_ssconf
        .as_ref()
        .map(crate::state::fingerprint::ssconf_sha256);
    let expected_keys: BTreeSet<String> = cluster::candidate_ssh_keys(config).into_iter().collect();

    // The map this node holds: entries only for online candidates, and one
    // for each of them.
    for (uuid, _) in local.map.entries() {
        match by_uuid.get(uuid.as_str()) {
            Some(n) if n.role.is_candidate() && !n.offline => {}
            Some(n) => findings.add(
                Severity::Error,
                &n.name,
                "MAP_ENTRY_NOT_CANDIDATE",
                format!(
                    "the candidate map has an entry for {}, which is {}",
                    n.name,
                    if n.offline { "offline" } else { "a regular node" }
                ),
                format!("nodectl modify {} --master-candidate=no", n.name),
            ),
            None => findings.add(
                Severity::Error,
                &local.name,
                "MAP_ENTRY_UNKNOWN",
                format!("the candidate map has an entry for uuid {uuid}, which is no node of the cluster"),
                resync(&master),
            ),
        }
    }
    for n in config
        .nodes
        .iter()
        .filter(|n| n.role.is_candidate() && !n.offline)
    {
        if !local.map.entries().iter().any(|(u, _)| *u == n.uuid) {
            findings.add(
                Severity::Error,
                &n.name,
                "CANDIDATE_WITHOUT_ENTRY",
                format!(
                    "{} is a master candidate but has no entry in the candidate map",
                    n.name
                ),
                if n.digest.is_empty() {
                    reissue(&n.name)
                } else {
                    format!("nodectl modify {} --master-candidate=yes", n.name)
                },
            );
        }
    }

    // Per node, from what it reported.
    let mut holders: BTreeMap<CertDigest, Vec<String>> = BTreeMap::new();
    for n in config.online_nodes() {
        let info = match infos.get(&n.name) {
            Some(Ok(info)) => info,
            Some(Err(e)) => {
                findings.add(
                    Severity::Error,
                    &n.name,
                    "UNREACHABLE",
                    format!("{} did not answer: {e}", n.name),
                    format!(
                        "start noded on {0}, or mark it offline: nodectl modify {0} --offline=yes",
                        n.name
                    ),
                );
                continue;
            }
            None => continue,
        };
        let candidate = n.role.is_candidate();
        // Its client certificate.
        match pki::load_certs_from_pem(&info.client_cert_pem) {
            Err(e) => findings.add(
                Severity::Error,
                &n.name,
                "CERT_UNREADABLE",
                format!("client.pem: {e}"),
                reissue(&n.name),
            ),
            Ok(der) => {
                let digest = alg.digest(&der);
                holders.entry(digest).or_default().push(n.name.clone());
                if candidate {
                    let entries: Vec<CertDigest> = local
                        .map
                        .entries()
                        .iter()
                        .filter(|(u, _)| *u == n.uuid)
                        .map(|(_, d)| *d)
                        .collect();
                    if !entries.is_empty() && !entries.contains(&digest) {
                        findings.add(
                            Severity::Error,
                            &n.name,
                            "CANDIDATE_DIGEST_MISMATCH",
                            format!("{}'s client certificate ({digest}) is not the one in the candidate map", n.name),
                            reissue(&n.name),
                        );
                    }
                } else if local.map.contains(&digest) {
                    findings.add(
                        Severity::Error,
                        &n.name,
                        "REGULAR_USES_CANDIDATE_CERT",
                        format!("regular node {} uses a certificate that is in the candidate map ({digest})", n.name),
                        reissue(&n.name),
                    );
                }
                // Signed by the current CA? (Expiry is its own finding.)
                // Checked at a moment it is valid, so that an expired
                // certificate is reported as expired, not as foreign.
                let at_secs = CertInfo::from_der(&der)
                    .map(|i| (i.not_after - 1).min(now))
                    .unwrap_or(now);
                let at = rustls_pki_types::UnixTime::since_unix_epoch(
                    std::time::Duration::from_secs(u64::try_from(at_secs).unwrap_or(0)),
                );
                if let Err(e) = pki::chains_to(&der, &local.ca_certs, at) {
                    findings.add(
                        Severity::Error,
                        &n.name,
                        "CERT_NOT_FROM_CA",
                        format!("{}'s client certificate is not a client certificate of the current CA ({e:?})", n.name),
                        reissue(&n.name),
                    );
                }
                if let Ok(info) = CertInfo::from_der(&der) {
                    expiry(
                        &mut findings,
                        &n.name,
                        "client certificate",
                        info.not_after,
                        now,
                        &reissue(&n.name),
                    );
                }
            }
        }
        // Same ssconf everywhere.
        match (&info.ssconf_sha256, &expected_ssconf_sha) {
            (Err(e), _) => findings.add(
                Severity::Error,
                &n.name,
                "SSCONF_UNREADABLE",
                e.clone(),
                resync(&n.name),
            ),
            (Ok(have), Some(want)) if have != want => findings.add(
                Severity::Error,
                &n.name,
                "SSCONF_DIFFERS",
                format!(
                    "{}'s ssconf (serial {}) differs from the cluster's (serial {})",
                    n.name, info.ssconf_serial, config.serial
                ),
                resync(&n.name),
            ),
            _ => {}
        }
        if info.server_pem_sha256 != local.server_pem_sha256 {
            findings.add(
                Severity::Error,
                &n.name,
                "SERVER_CERT_DIFFERS",
                format!("{}'s server.pem differs from {}'s", n.name, local.name),
                "nodectl renew-crypto --new-cluster-certificate".into(),
            );
        }
        if info.ca_pem_sha256 != local.ca_pem_sha256 {
            findings.add(
                Severity::Error,
                &n.name,
                "CA_DIFFERS",
                format!("{}'s ca.pem differs from {}'s", n.name, local.name),
                resync(&n.name),
            );
        }
        // Role files.
        let files = &info.role_files;
        // With the CA key in a token, no node holds a key file: one that
        // does is a copy that the token was meant to prevent.
        let key_file_expected = config.ca_key.is_none();
        if let (Some(uri), true) = (&config.ca_key, files.ca_key) {
            findings.add(
                Severity::Error,
                &n.name,
                "CA_KEY_FILE_WITH_TOKEN",
                format!("{} holds ca.key although the CA key is in {uri}", n.name),
                format!(
                    "nodectl modify {} --master-candidate={}",
                    n.name,
                    if candidate { "yes" } else { "no" }
                ),
            );
        }
        let held = [
            ("CA key (ca.key)", files.ca_key, key_file_expected),
            ("cluster config (config.json)", files.config, true),
            ("SSH private key", files.ssh_private_key, true),
        ];
        if candidate {
            for (what, present, expected) in held {
                if expected && !present {
                    findings.add(
                        Severity::Error,
                        &n.name,
                        "ROLE_FILE_MISSING",
                        format!("master candidate {} lacks its {what}", n.name),
                        format!("nodectl modify {} --master-candidate=yes", n.name),
                    );
                }
            }
            if files.tokens && n.role != NodeRole::Master {
                findings.add(
                    Severity::Warning,
                    &n.name,
                    "STALE_TOKENS",
                    format!("{} holds tokens.json but is not the master", n.name),
                    format!("nodectl modify {} --master-candidate=yes", n.name),
                );
            }
        } else {
            for (what, present, expected) in
                held.into_iter()
                    .chain([("join tokens (tokens.json)", files.tokens, true)])
            {
                if expected && present {
                    findings.add(
                        Severity::Error,
                        &n.name,
                        "ROLE_FILE_FORBIDDEN",
                        format!("regular node {} holds a {what}", n.name),
                        format!("nodectl modify {} --master-candidate=no", n.name),
                    );
                }
            }
        }
        match &info.authorized_keys {
            Err(e) => findings.add(
                Severity::Error,
                &n.name,
                "AUTHORIZED_KEYS_UNREADABLE",
                e.clone(),
                resync(&n.name),
            ),
            Ok(keys) => {
                let have: BTreeSet<String> = keys.iter().map(|k| k.trim().to_owned()).collect();
                if have != expected_keys {
                    findings.add(
                        Severity::Error,
                        &n.name,
                        "AUTHORIZED_KEYS_DIFFER",
                        format!(
                            "{}'s managed authorized_keys block has {} keys; the master candidates' are {} ({} missing, {} extra)",
                            n.name,
                            have.len(),
                            expected_keys.len(),
                            expected_keys.difference(&have).count(),
                            have.difference(&expected_keys).count()
                        ),
                        resync(&n.name),
                    );
                }
            }
        }
    }
    for (digest, names) in holders.iter().filter(|(_, names)| names.len() > 1) {
        for name in names {
            findings.add(
                Severity::Error,
                name,
                "SHARED_CERTIFICATE",
                format!(
                    "{} share one client certificate ({digest})",
                    names.join(", ")
                ),
                reissue(name),
            );
        }
    }
    // The cluster-wide certificates, as this node holds them.
    for ca in &local.ca_infos {
        expiry(
            &mut findings,
            &local.name,
            "the cluster CA certificate",
            ca.not_after,
            now,
            "nodectl renew-crypto --new-ca",
        );
    }
    if let Some(server) = &local.server_info {
        expiry(
            &mut findings,
            &local.name,
            "the shared server certificate",
            server.not_after,
            now,
            "nodectl renew-crypto --new-cluster-certificate",
        );
    }
    let mut findings = findings.0;
    findings.sort();
    findings.dedup();
    findings
}

/// What the verifying node itself holds.
struct LocalView {
    name: String,
    map: CandidateMap,
    ca_certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    ca_infos: Vec<CertInfo>,
    ca_pem_sha256: String,
    server_pem_sha256: String,
    server_info: Option<CertInfo>,
}

fn local_view(state: &StateDir) -> Result<LocalView> {
    let ca_certs = pki::load_certs(&state.ca_pem())?;
    let ca_infos = ca_certs
        .iter()
        .filter_map(|c| CertInfo::from_der(c).ok())
        .collect();
    let server_info = pki::load_certs(&state.server_pem())
        .ok()
        .and_then(|c| c.first().and_then(|c| CertInfo::from_der(c).ok()));
    Ok(LocalView {
        name: state.load_identity()?.name,
        map: CandidateMap::load(&Ssconf::candidate_map_path(&state.ssconf_dir()))
            .unwrap_or_default(),
        ca_certs,
        ca_infos,
        ca_pem_sha256: crate::state::fingerprint::file_sha256(&state.ca_pem()),
        server_pem_sha256: crate::state::fingerprint::file_sha256(&state.server_pem()),
        server_info,
    })
}

/// Asks every online node for its `node-info`, in parallel; `on_done` is
/// called as each answers.
pub async fn gather(
    client: &RpcClient,
    config: &ClusterConfig,
    on_done: &(dyn Fn() + Sync),
) -> BTreeMap<String, Result<NodeInfo, String>> {
    let nodes: Vec<NodeRecord> = config.online_nodes().cloned().collect();
    let results = fan_out(&nodes, CONCURRENCY, on_done, |node| {
        let client = client.clone();
        async move { cluster::call(&client, &node, Procedure::NodeInfo).await }
    })
    .await;
    results
        .into_iter()
        .map(|(node, result)| {
            let info = match result {
                Ok(Reply::NodeInfo(info)) => Ok(*info),
                Ok(other) => Err(format!("unexpected reply {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            (node.name, info)
        })
        .collect()
}

/// The CA key as this node would sign with it: reachable (for a token: the
/// module loads, the token is there, the PIN is accepted, the label exists),
/// matching ca.pem, and able to sign.
fn check_key_store(state: &StateDir, config: &ClusterConfig, node: &str) -> Option<Finding> {
    let ca_pem = std::fs::read_to_string(state.ca_pem()).ok()?;
    if config.ca_key.is_none() && !state.ca_key().exists() {
        // Reported as ROLE_FILE_MISSING.
        return None;
    }
    let result = crate::pki::keystore::for_cluster(state, config)
        .and_then(|store| crate::pki::keystore::check(store.as_ref(), &ca_pem));
    let e = result.err()?;
    let mut findings = Findings::default();
    findings.add(
        Severity::Error,
        node,
        "CA_KEY_UNUSABLE",
        format!("the CA key cannot sign for ca.pem: {e}"),
        match &config.ca_key {
            Some(uri) => format!(
                "make the token in {uri} reachable from {node} (module, token label, PIN source, object label) or fix the config's ca_key"
            ),
            None => format!("copy a matching ca.key from another master candidate to {node}"),
        },
    );
    findings.0.pop()
}

/// Every finding about the cluster, as seen from this node (the master or
/// a candidate): its config and files, and every online node's answer.
pub async fn findings(
    state: &StateDir,
    on_done: &(dyn Fn() + Sync),
) -> Result<(Vec<Finding>, usize)> {
    state.check_initialised()?;
    if !state.config_json().exists() {
        return Err(Error::Invalid(
            "this node holds no cluster config; run verify on the master or a master candidate"
                .into(),
        ));
    }
    let config = cluster::load_config(state)?;
    let local = local_view(state)?;
    let client = RpcClient::from_state(state)?;
    let infos = gather(&client, &config, on_done).await;
    let mut findings = check(&config, &local, &infos, crate::core::time::now());
    findings.extend(check_key_store(state, &config, &local.name));
    Ok((findings, infos.len()))
}
