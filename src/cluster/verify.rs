//! The consistency checks of `nodectl verify` (SPEC §7): every node's state
//! gathered over RPC in parallel, every finding with the node it concerns
//! and the command that fixes it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use ssconf::{CandidateMap, CertDigest, DigestAlgorithm, Ssconf};

use crate::cluster;
use crate::core::{Error, Result};
use crate::pki::{self, CertInfo};
use crate::rpc::fanout::{fan_out, CONCURRENCY};
use crate::rpc::RpcClient;
use crate::state::config::{ClusterConfig, NodeRecord, NodeRole};
use crate::state::StateDir;
use crate::wire::{NodeInfo, Procedure, Reply, Resend};

/// Days before expiry that make a WARNING, and an ERROR.
pub const WARN_DAYS: i64 = 30;
pub const ERROR_DAYS: i64 = 7;

/// How close to its expiry a certificate makes a WARNING, and an ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub warn_secs: i64,
    pub error_secs: i64,
}

impl Horizon {
    /// The CA: 30 and 7 days (SPEC §7); it is never renewed by itself.
    pub const CA: Horizon = Horizon {
        warn_secs: WARN_DAYS * 86_400,
        error_secs: ERROR_DAYS * 86_400,
    };

    /// Node certificates: 30 and 7 days, or, for a cluster whose
    /// certificates live shorter, a quarter and a tenth of their lifetime:
    /// the master renews them with a third left, so a WARNING means the
    /// automatic renewal is overdue.
    pub fn nodes(config: &ClusterConfig) -> Horizon {
        let life = i64::try_from(config.cert_lifetime().as_secs()).unwrap_or(i64::MAX);
        Horizon {
            warn_secs: Horizon::CA.warn_secs.min(life / 4),
            error_secs: Horizon::CA.error_secs.min(life / 10),
        }
    }
}

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

/// What a finding is about: the word `verify` prints and `--json` carries.
///
/// The variants are in the byte order of their strings (`CANDIDATE_...`
/// before `CA_...`: `N` sorts before `_`), so that findings sort as they
/// did when the code was a string; a test holds the two orders together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    AuthorizedKeysDiffer,
    AuthorizedKeysUnreadable,
    CandidateDigestMismatch,
    CandidateWithoutEntry,
    CaDiffers,
    CaKeyFileWithToken,
    CaKeyUnusable,
    CaRotationUnderway,
    CertExpired,
    CertExpires,
    CertNotFromCa,
    CertUnreadable,
    MapEntryNotCandidate,
    MapEntryUnknown,
    RaftBehind,
    RaftDisagrees,
    RaftNoMajority,
    RegularUsesCandidateCert,
    RoleFileForbidden,
    RoleFileMissing,
    ServerCertDiffers,
    SharedCertificate,
    SsconfDiffers,
    SsconfUnreadable,
    StaleTempFile,
    StaleTokens,
    Unreachable,
}

impl Code {
    /// Every code, in order.
    pub const ALL: [Code; 27] = [
        Code::AuthorizedKeysDiffer,
        Code::AuthorizedKeysUnreadable,
        Code::CandidateDigestMismatch,
        Code::CandidateWithoutEntry,
        Code::CaDiffers,
        Code::CaKeyFileWithToken,
        Code::CaKeyUnusable,
        Code::CaRotationUnderway,
        Code::CertExpired,
        Code::CertExpires,
        Code::CertNotFromCa,
        Code::CertUnreadable,
        Code::MapEntryNotCandidate,
        Code::MapEntryUnknown,
        Code::RaftBehind,
        Code::RaftDisagrees,
        Code::RaftNoMajority,
        Code::RegularUsesCandidateCert,
        Code::RoleFileForbidden,
        Code::RoleFileMissing,
        Code::ServerCertDiffers,
        Code::SharedCertificate,
        Code::SsconfDiffers,
        Code::SsconfUnreadable,
        Code::StaleTempFile,
        Code::StaleTokens,
        Code::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::AuthorizedKeysDiffer => "AUTHORIZED_KEYS_DIFFER",
            Code::AuthorizedKeysUnreadable => "AUTHORIZED_KEYS_UNREADABLE",
            Code::CandidateDigestMismatch => "CANDIDATE_DIGEST_MISMATCH",
            Code::CandidateWithoutEntry => "CANDIDATE_WITHOUT_ENTRY",
            Code::CaDiffers => "CA_DIFFERS",
            Code::CaKeyFileWithToken => "CA_KEY_FILE_WITH_TOKEN",
            Code::CaKeyUnusable => "CA_KEY_UNUSABLE",
            Code::CaRotationUnderway => "CA_ROTATION_UNDERWAY",
            Code::CertExpired => "CERT_EXPIRED",
            Code::CertExpires => "CERT_EXPIRES",
            Code::CertNotFromCa => "CERT_NOT_FROM_CA",
            Code::CertUnreadable => "CERT_UNREADABLE",
            Code::MapEntryNotCandidate => "MAP_ENTRY_NOT_CANDIDATE",
            Code::MapEntryUnknown => "MAP_ENTRY_UNKNOWN",
            Code::RaftBehind => "RAFT_BEHIND",
            Code::RaftDisagrees => "RAFT_DISAGREES",
            Code::RaftNoMajority => "RAFT_NO_MAJORITY",
            Code::RegularUsesCandidateCert => "REGULAR_USES_CANDIDATE_CERT",
            Code::RoleFileForbidden => "ROLE_FILE_FORBIDDEN",
            Code::RoleFileMissing => "ROLE_FILE_MISSING",
            Code::ServerCertDiffers => "SERVER_CERT_DIFFERS",
            Code::SharedCertificate => "SHARED_CERTIFICATE",
            Code::SsconfDiffers => "SSCONF_DIFFERS",
            Code::SsconfUnreadable => "SSCONF_UNREADABLE",
            Code::StaleTempFile => "STALE_TEMP_FILE",
            Code::StaleTokens => "STALE_TOKENS",
            Code::Unreachable => "UNREACHABLE",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One inconsistency.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub node: String,
    pub code: Code,
    pub message: String,
    pub fix: String,
}

#[derive(Debug, Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, severity: Severity, node: &str, code: Code, message: String, fix: String) {
        self.0.push(Finding {
            severity,
            node: node.to_owned(),
            code,
            message,
            fix,
        });
    }

    /// The findings in their printed order, each once.
    fn into_sorted(self) -> Vec<Finding> {
        let mut findings = self.0;
        findings.sort();
        findings.dedup();
        findings
    }
}

fn resync(node: &str) -> String {
    format!("nodectl modify {node} --offline=no (sends it the cluster's state again)")
}

fn reissue(node: &str) -> String {
    format!("nodectl renew-crypto --new-node-certificates --node {node}")
}

/// Checks a certificate's expiry.
fn expiry(
    findings: &mut Findings,
    node: &str,
    what: &str,
    (not_after, now): (i64, i64),
    horizon: Horizon,
    fix: &str,
) {
    let left = not_after - now;
    let days = left.div_euclid(86_400);
    let when = crate::core::time::rfc3339(not_after);
    if not_after <= now {
        findings.add(
            Severity::Error,
            node,
            Code::CertExpired,
            format!("{what} expired on {when}"),
            fix.to_owned(),
        );
    } else if left < horizon.error_secs {
        findings.add(
            Severity::Error,
            node,
            Code::CertExpires,
            format!("{what} expires in {days} days ({when})"),
            fix.to_owned(),
        );
    } else if left < horizon.warn_secs {
        findings.add(
            Severity::Warning,
            node,
            Code::CertExpires,
            format!("{what} expires in {days} days ({when})"),
            fix.to_owned(),
        );
    }
}

/// An online node that answered, and its answer.
type Answer<'a> = (&'a NodeRecord, &'a NodeInfo);

/// Runs every check; `infos` holds what each reachable online node said.
fn check(
    config: &ClusterConfig,
    local: &LocalView,
    infos: &BTreeMap<String, Result<NodeInfo, String>>,
    now: i64,
) -> Vec<Finding> {
    let mut findings = Findings::default();
    check_candidate_map(&mut findings, config, local);
    let answers = check_reachable(&mut findings, config, infos);
    check_client_certificates(&mut findings, config, local, &answers, now);
    check_shared_files(&mut findings, config, local, &answers);
    check_server_certificates(&mut findings, &answers, (now, Horizon::nodes(config)));
    check_role_files(&mut findings, config, &answers);
    check_authorized_keys(&mut findings, config, &answers);
    check_stale_temp_files(&mut findings, &answers);
    check_cluster_certificates(&mut findings, local, now);
    check_ca_rotation(&mut findings, config, local);
    check_raft(&mut findings, config, &answers);
    findings.into_sorted()
}

/// How far behind the leader's log a member may be before it is reported.
const RAFT_BEHIND: u64 = 100;

/// Raft as the master and the candidates see it (SPEC §7): a majority of
/// the voters answers and agrees that the master leads in its term; no
/// candidate believes in another leader; no member's log is far behind.
fn check_raft(findings: &mut Findings, config: &ClusterConfig, answers: &[Answer<'_>]) {
    let Ok(master) = config.master() else {
        return;
    };
    let Some(lead) = answers
        .iter()
        .find(|(n, _)| n.uuid == master.uuid)
        .and_then(|(_, i)| i.raft.as_ref())
    else {
        // The master did not answer (reported), or runs no Raft (a version
        // from before it): nothing to compare with.
        return;
    };
    let raft_of = |name: &str| {
        answers
            .iter()
            .find(|(n, _)| n.name == name)
            .map(|(_, i)| i.raft.as_ref())
    };
    let agrees = |r: &crate::wire::RaftInfo| {
        r.leader.as_deref() == Some(master.name.as_str()) && r.term == lead.term
    };
    let agreeing = lead
        .voters
        .iter()
        .filter(|v| matches!(raft_of(v), Some(Some(r)) if agrees(r)))
        .count();
    if agreeing <= lead.voters.len() / 2 {
        findings.add(
            Severity::Error,
            &master.name,
            Code::RaftNoMajority,
            format!(
                "{agreeing} of {} voters ({}) answer and agree that {} leads in term {}",
                lead.voters.len(),
                lead.voters.join(", "),
                master.name,
                lead.term
            ),
            "start noded on the voters that did not answer; with a majority lost for good: nodectl recover --force on a candidate".into(),
        );
    }
    for (node, info) in answers.iter().filter(|(n, _)| n.role.is_candidate()) {
        let r = match &info.raft {
            None => {
                findings.add(
                    Severity::Error,
                    &node.name,
                    Code::RaftDisagrees,
                    format!("{} is a master candidate but runs no Raft", node.name),
                    format!("restart noded on {}", node.name),
                );
                continue;
            }
            Some(r) => r,
        };
        if !agrees(r) {
            findings.add(
                Severity::Error,
                &node.name,
                Code::RaftDisagrees,
                format!(
                    "{} believes the leader is {} in term {} (the master is {}, term {})",
                    node.name,
                    r.leader.as_deref().unwrap_or("unknown"),
                    r.term,
                    master.name,
                    lead.term
                ),
                "wait an election timeout and run verify again; if it stays, see `nodectl status` on both".into(),
            );
        } else if r.applied_index + RAFT_BEHIND < lead.last_log_index {
            findings.add(
                Severity::Warning,
                &node.name,
                Code::RaftBehind,
                format!(
                    "{}'s Raft log is behind: applied {} of {}",
                    node.name, r.applied_index, lead.last_log_index
                ),
                format!("check {}'s disk and its link to {}", node.name, master.name),
            );
        }
    }
}

/// A CA rotation left under way (paused, or held by a node): a warning on
/// this node, with the commands that end it.
fn check_ca_rotation(findings: &mut Findings, config: &ClusterConfig, local: &LocalView) {
    let Some(r) = &config.ca_rotation else {
        return;
    };
    let state = if r.complete {
        "complete, paused"
    } else {
        "under way"
    };
    findings.add(
        Severity::Warning,
        &local.name,
        Code::CaRotationUnderway,
        format!(
            "a CA rotation began {} and its {} phase is {state}",
            crate::core::time::rfc3339(r.started),
            r.phase
        ),
        if r.phase == crate::state::config::CaPhase::Drop {
            "nodectl renew-crypto --continue-ca".to_owned()
        } else {
            "nodectl renew-crypto --continue-ca (or --rollback-ca)".to_owned()
        },
    );
}

/// The map this node holds: entries only for online candidates, and one
/// for each of them.
fn check_candidate_map(findings: &mut Findings, config: &ClusterConfig, local: &LocalView) {
    let master = config.master().map(|m| m.name.clone()).unwrap_or_default();
    let by_uuid: BTreeMap<&str, &NodeRecord> =
        config.nodes.iter().map(|n| (n.uuid.as_str(), n)).collect();
    for (uuid, _) in local.map.entries() {
        match by_uuid.get(uuid.as_str()) {
            Some(n) if n.role.is_candidate() && !n.offline => {}
            Some(n) => findings.add(
                Severity::Error,
                &n.name,
                Code::MapEntryNotCandidate,
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
                Code::MapEntryUnknown,
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
                Code::CandidateWithoutEntry,
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
}

/// Every online node answered; returns those that did, with their answers.
/// A node missing from `infos` was not asked and is no finding.
fn check_reachable<'a>(
    findings: &mut Findings,
    config: &'a ClusterConfig,
    infos: &'a BTreeMap<String, Result<NodeInfo, String>>,
) -> Vec<Answer<'a>> {
    let mut answers = Vec::new();
    for n in config.online_nodes() {
        match infos.get(&n.name) {
            Some(Ok(info)) => answers.push((n, info)),
            Some(Err(e)) => findings.add(
                Severity::Error,
                &n.name,
                Code::Unreachable,
                format!("{} did not answer: {e}", n.name),
                format!(
                    "start noded on {0}, or mark it offline: nodectl modify {0} --offline=yes",
                    n.name
                ),
            ),
            None => {}
        }
    }
    answers
}

/// Each node's client certificate: readable, the one in the map (for a
/// candidate) or not in it (for a regular node), from the current CA, not
/// expiring, and no two nodes holding the same one.
fn check_client_certificates(
    findings: &mut Findings,
    config: &ClusterConfig,
    local: &LocalView,
    answers: &[Answer<'_>],
    now: i64,
) {
    let alg: DigestAlgorithm = config.digest.into();
    let mut holders: BTreeMap<CertDigest, Vec<String>> = BTreeMap::new();
    for (n, info) in answers {
        match pki::load_certs_from_pem(&info.client_cert_pem) {
            Err(e) => findings.add(
                Severity::Error,
                &n.name,
                Code::CertUnreadable,
                format!("client.pem: {e}"),
                reissue(&n.name),
            ),
            Ok(der) => {
                let digest = alg.digest(&der);
                holders.entry(digest).or_default().push(n.name.clone());
                check_client_digest(findings, local, n, digest);
                check_client_issuer(findings, local, n, &der, (now, Horizon::nodes(config)));
            }
        }
    }
    for (digest, names) in holders.iter().filter(|(_, names)| names.len() > 1) {
        for name in names {
            findings.add(
                Severity::Error,
                name,
                Code::SharedCertificate,
                format!(
                    "{} share one client certificate ({digest})",
                    names.join(", ")
                ),
                reissue(name),
            );
        }
    }
}

/// A candidate's client certificate is the one its map entries name; a
/// regular node's is in no entry.
fn check_client_digest(
    findings: &mut Findings,
    local: &LocalView,
    n: &NodeRecord,
    digest: CertDigest,
) {
    if n.role.is_candidate() {
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
                Code::CandidateDigestMismatch,
                format!(
                    "{}'s client certificate ({digest}) is not the one in the candidate map",
                    n.name
                ),
                reissue(&n.name),
            );
        }
    } else if local.map.contains(&digest) {
        findings.add(
            Severity::Error,
            &n.name,
            Code::RegularUsesCandidateCert,
            format!(
                "regular node {} uses a certificate that is in the candidate map ({digest})",
                n.name
            ),
            reissue(&n.name),
        );
    }
}

/// A client certificate is signed by the current CA, and how soon it
/// expires.
fn check_client_issuer(
    findings: &mut Findings,
    local: &LocalView,
    n: &NodeRecord,
    der: &rustls_pki_types::CertificateDer<'_>,
    (now, horizon): (i64, Horizon),
) {
    // Expiry is its own finding: the chain is checked at a moment the
    // certificate is valid, so that an expired certificate is reported as
    // expired, not as foreign.
    let at_secs = CertInfo::from_der(der)
        .map(|i| (i.not_after - 1).min(now))
        .unwrap_or(now);
    let at = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(at_secs).unwrap_or(0),
    ));
    if let Err(e) = pki::chains_to(der, &local.ca_certs, at) {
        findings.add(
            Severity::Error,
            &n.name,
            Code::CertNotFromCa,
            format!(
                "{}'s client certificate is not a client certificate of the current CA ({e:?})",
                n.name
            ),
            reissue(&n.name),
        );
    }
    if let Ok(info) = CertInfo::from_der(der) {
        expiry(
            findings,
            &n.name,
            "client certificate",
            (info.not_after, now),
            horizon,
            &reissue(&n.name),
        );
    }
}

/// The files every node holds alike: the same ssconf set as the config
/// makes, and the same server.pem and ca.pem as this node.
fn check_shared_files(
    findings: &mut Findings,
    config: &ClusterConfig,
    local: &LocalView,
    answers: &[Answer<'_>],
) {
    let expected_ssconf_sha = config
        .to_ssconf()
        .ok()
        .as_ref()
        .map(crate::state::fingerprint::ssconf_sha256);
    for (n, info) in answers {
        match (&info.ssconf_sha256, &expected_ssconf_sha) {
            (Err(e), _) => findings.add(
                Severity::Error,
                &n.name,
                Code::SsconfUnreadable,
                e.clone(),
                resync(&n.name),
            ),
            (Ok(have), Some(want)) if have != want => findings.add(
                Severity::Error,
                &n.name,
                Code::SsconfDiffers,
                format!(
                    "{}'s ssconf (serial {}) differs from the cluster's (serial {})",
                    n.name, info.ssconf_serial, config.serial
                ),
                resync(&n.name),
            ),
            _ => {}
        }
        if info.ca_pem_sha256 != local.ca_pem_sha256 {
            findings.add(
                Severity::Error,
                &n.name,
                Code::CaDiffers,
                format!("{}'s ca.pem differs from {}'s", n.name, local.name),
                resync(&n.name),
            );
        }
    }
}

/// Each node's own server certificate (SPEC §9.1): the one the cluster
/// recorded for it, and how soon it expires.
fn check_server_certificates(
    findings: &mut Findings,
    answers: &[Answer<'_>],
    (now, horizon): (i64, Horizon),
) {
    for (n, info) in answers {
        let recorded = std::iter::once(&n.server_digest).chain(n.next_server_digest.iter());
        if info.server_digest.is_empty() || !recorded.into_iter().any(|d| *d == info.server_digest)
        {
            findings.add(
                Severity::Error,
                &n.name,
                Code::ServerCertDiffers,
                format!(
                    "{}'s server certificate (sha256 {}) is not the one recorded for it",
                    n.name,
                    if info.server_digest.is_empty() {
                        "unreadable"
                    } else {
                        &info.server_digest
                    }
                ),
                "nodectl renew-crypto --new-cluster-certificate".into(),
            );
        }
        expiry(
            findings,
            &n.name,
            "its server certificate",
            (info.server_cert_expires, now),
            horizon,
            "nodectl renew-crypto --new-cluster-certificate",
        );
    }
}

/// The role files (SPEC §3): the CA key, config and SSH private key on every
/// candidate and on no regular node; join tokens on the master alone.
fn check_role_files(findings: &mut Findings, config: &ClusterConfig, answers: &[Answer<'_>]) {
    // With the CA key in a token, no node holds a key file: one that does
    // is a copy that the token was meant to prevent.
    let key_file_expected = config.ca_key.is_none();
    for (n, info) in answers {
        let files = &info.role_files;
        let candidate = n.role.is_candidate();
        if let (Some(uri), true) = (&config.ca_key, files.ca_key) {
            findings.add(
                Severity::Error,
                &n.name,
                Code::CaKeyFileWithToken,
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
                        Code::RoleFileMissing,
                        format!("master candidate {} lacks its {what}", n.name),
                        format!("nodectl modify {} --master-candidate=yes", n.name),
                    );
                }
            }
            if files.tokens && n.role != NodeRole::Master {
                findings.add(
                    Severity::Warning,
                    &n.name,
                    Code::StaleTokens,
                    format!("{} holds tokens.json but is not the master", n.name),
                    format!("nodectl modify {} --master-candidate=yes", n.name),
                );
            }
        } else {
            let tokens = ("join tokens (tokens.json)", files.tokens, true);
            for (what, present, expected) in held.into_iter().chain([tokens]) {
                if expected && present {
                    findings.add(
                        Severity::Error,
                        &n.name,
                        Code::RoleFileForbidden,
                        format!("regular node {} holds a {what}", n.name),
                        format!("nodectl modify {} --master-candidate=no", n.name),
                    );
                }
            }
        }
    }
}

/// Every node's managed authorized_keys block holds exactly the online
/// candidates' public keys.
fn check_authorized_keys(findings: &mut Findings, config: &ClusterConfig, answers: &[Answer<'_>]) {
    let expected: BTreeSet<String> = cluster::candidate_ssh_keys(config).into_iter().collect();
    for (n, info) in answers {
        match &info.authorized_keys {
            Err(e) => findings.add(
                Severity::Error,
                &n.name,
                Code::AuthorizedKeysUnreadable,
                e.clone(),
                resync(&n.name),
            ),
            Ok(keys) => {
                let have: BTreeSet<String> = keys.iter().map(|k| k.trim().to_owned()).collect();
                if have != expected {
                    findings.add(
                        Severity::Error,
                        &n.name,
                        Code::AuthorizedKeysDiffer,
                        format!(
                            "{}'s managed authorized_keys block has {} keys; the master candidates' are {} ({} missing, {} extra)",
                            n.name,
                            have.len(),
                            expected.len(),
                            expected.difference(&have).count(),
                            have.difference(&expected).count()
                        ),
                        resync(&n.name),
                    );
                }
            }
        }
    }
}

/// Temporary files that interrupted writes left behind (SPEC §7): harmless
/// (the file they were to replace is whole), but clutter, and a sign that
/// a write was killed. The next write of the same file removes them too.
fn check_stale_temp_files(findings: &mut Findings, answers: &[Answer<'_>]) {
    for (n, info) in answers {
        for path in &info.stale_temp_files {
            findings.add(
                Severity::Warning,
                &n.name,
                Code::StaleTempFile,
                format!("{} holds {path}, left by an interrupted write", n.name),
                format!(
                    "on {}, in its state directory (--state-dir, default {}): rm -- '{path}'",
                    n.name,
                    crate::state::DEFAULT_STATE_DIR
                ),
            );
        }
    }
}

/// The cluster-wide certificates, as this node holds them: how soon the CA
/// certificates expire.
fn check_cluster_certificates(findings: &mut Findings, local: &LocalView, now: i64) {
    for ca in &local.ca_infos {
        expiry(
            findings,
            &local.name,
            "the cluster CA certificate",
            (ca.not_after, now),
            Horizon::CA,
            "nodectl renew-crypto --new-ca",
        );
    }
    {}
}

/// What the verifying node itself holds.
struct LocalView {
    name: String,
    map: CandidateMap,
    ca_certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    ca_infos: Vec<CertInfo>,
    ca_pem_sha256: String,
}

fn local_view(state: &StateDir) -> Result<LocalView> {
    let ca_certs = pki::load_certs(&state.ca_pem())?;
    let ca_infos = ca_certs
        .iter()
        .filter_map(|c| CertInfo::from_der(c).ok())
        .collect();
    Ok(LocalView {
        name: state.load_identity()?.name,
        map: CandidateMap::load(&Ssconf::candidate_map_path(&state.ssconf_dir()))
            .unwrap_or_default(),
        ca_certs,
        ca_infos,
        ca_pem_sha256: crate::state::fingerprint::file_sha256(&state.ca_pem()),
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
        Code::CaKeyUnusable,
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
    // A change the master committed (a join) may still be on its way to
    // the regular nodes in a round of its loop: on the master, wait for
    // that round (at once when there is none). A node it did not reach is
    // then reported below like any other.
    if cluster::raft::leader_locally(state).await.ok().flatten() == Some(local.name.clone()) {
        if let Err(e) = cluster::distribute(state, config.serial, Resend::Changes, &|| {}).await {
            tracing::debug!("verify: no round before gathering: {e}");
        }
    }
    let client = RpcClient::from_state(state)?;
    let mut infos = gather(&client, &config, on_done).await;
    let mut findings = check(&config, &local, &infos, crate::core::time::now());
    // Raft's views converge within a heartbeat or two (a node that just
    // joined or came back has not heard from the leader yet): ask once
    // more before reporting them.
    let raft_codes = [Code::RaftDisagrees, Code::RaftNoMajority];
    if findings.iter().any(|f| raft_codes.contains(&f.code)) {
        tokio::time::sleep(std::time::Duration::from_millis(
            2 * cluster::raft::ELECTION_MAX_MS,
        ))
        .await;
        infos = gather(&client, &config, &|| {}).await;
        findings = check(&config, &local, &infos, crate::core::time::now());
    }
    findings.extend(check_key_store(state, &config, &local.name));
    Ok((findings, infos.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, CertificateSigner, NodeKey};
    use crate::state::config::DigestAlgorithmName;
    use crate::wire::RoleFiles;
    use time::{Duration, OffsetDateTime};

    const DAY: i64 = 86_400;

    /// A cluster of four online nodes as `check` sees it: `m` the master,
    /// `a` a candidate, `b` and `c` regular nodes, every answer consistent.
    struct Fixture {
        ca: CertificateAuthority,
        config: ClusterConfig,
        local: LocalView,
        infos: BTreeMap<String, Result<NodeInfo, String>>,
        now: i64,
    }

    /// A client certificate for `name` from `ca`, valid from `from` to
    /// `until` days from now.
    fn client_pem(ca: &impl CertificateSigner, name: &str, from: i64, until: i64) -> String {
        let csr = NodeKey::generate().unwrap().client_csr(name).unwrap();
        let now = OffsetDateTime::now_utc();
        ca.sign_csr_between(
            &csr,
            &pki::LeafRole::Client { node: name },
            now + Duration::days(from),
            now + Duration::days(until),
        )
        .unwrap()
    }

    /// A stand-in server certificate digest for node `name`.
    fn server_digest_of(name: &str) -> String {
        DigestAlgorithm::Sha256.digest(name.as_bytes()).to_string()
    }

    fn digest_of(pem: &str) -> CertDigest {
        DigestAlgorithm::Sha256.digest(&pki::load_certs_from_pem(pem).unwrap())
    }

    impl Fixture {
        fn new() -> Self {
            let ca = CertificateAuthority::generate("test", 3650).unwrap();
            let roles = [
                ("m", NodeRole::Master),
                ("a", NodeRole::Candidate),
                ("b", NodeRole::Regular),
                ("c", NodeRole::Regular),
            ];
            let pems: Vec<String> = roles
                .iter()
                .map(|(name, _)| client_pem(&ca, name, -1, 365))
                .collect();
            let nodes = roles
                .iter()
                .zip(&pems)
                .map(|((name, role), pem)| NodeRecord {
                    uuid: format!("uuid-{name}"),
                    name: (*name).to_owned(),
                    address: "127.0.0.1:1811".into(),
                    role: *role,
                    offline: false,
                    digest: digest_of(pem).to_string(),
                    cert_expires: 0,
                    next_digest: None,
                    ssh_public_key: role
                        .is_candidate()
                        .then(|| format!("ssh-ed25519 AAAAkey-of-{name} root@{name}")),
                    server_digest: server_digest_of(name),
                    next_server_digest: None,
                    candidate_since: 0,
                })
                .collect();
            let config = ClusterConfig {
                cluster_name: "test".into(),
                serial: 7,
                candidate_pool_size: 2,
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
            };
            let ssconf = config.to_ssconf().unwrap();
            let local = LocalView {
                name: "m".into(),
                map: ssconf.master_candidates_certs.clone(),
                ca_certs: vec![ca.cert_der().clone()],
                ca_infos: vec![CertInfo::from_der(ca.cert_der()).unwrap()],
                ca_pem_sha256: "ca-pem-sha".into(),
            };
            let now = crate::core::time::now();
            let ssconf_sha = crate::state::fingerprint::ssconf_sha256(&ssconf);
            let keys = cluster::candidate_ssh_keys(&config);
            let infos = config
                .nodes
                .iter()
                .zip(pems)
                .map(|(n, client_cert_pem)| {
                    let candidate = n.role.is_candidate();
                    let info = NodeInfo {
                        uuid: n.uuid.clone(),
                        name: n.name.clone(),
                        address: n.address.clone(),
                        client_digest_sha256: n.digest.clone(),
                        client_digest_sha1: String::new(),
                        client_cert_expires: 0,
                        ssconf_serial: config.serial,
                        ssconf_term: config.term,
                        raft: None,
                        role_files: RoleFiles {
                            ca_key: candidate,
                            config: candidate,
                            ssh_private_key: candidate,
                            tokens: n.role == NodeRole::Master,
                        },
                        version: "test".into(),
                        client_cert_pem,
                        ssconf_sha256: Ok(ssconf_sha.clone()),
                        server_digest: n.server_digest.clone(),
                        server_cert_expires: now + 365 * DAY,
                        ca_pem_sha256: local.ca_pem_sha256.clone(),
                        authorized_keys: Ok(keys.clone()),
                        stale_temp_files: Vec::new(),
                    };
                    (n.name.clone(), Ok(info))
                })
                .collect();
            Fixture {
                ca,
                config,
                local,
                infos,
                now,
            }
        }

        fn info(&mut self, name: &str) -> &mut NodeInfo {
            self.infos.get_mut(name).unwrap().as_mut().unwrap()
        }

        /// m and a run Raft, both voters, m leading in term 3.
        fn with_raft(&mut self) {
            for name in ["m", "a"] {
                self.info(name).raft = Some(crate::wire::RaftInfo {
                    state: if name == "m" { "leader" } else { "follower" }.into(),
                    term: 3,
                    leader: Some("m".into()),
                    last_log_index: 500,
                    applied_index: 500,
                    voters: vec!["a".into(), "m".into()],
                    learners: Vec::new(),
                });
            }
        }

        fn raft(&mut self, name: &str) -> &mut crate::wire::RaftInfo {
            self.info(name).raft.as_mut().unwrap()
        }

        /// The map with one more entry.
        fn add_map_entry(&mut self, uuid: &str) {
            let digest = DigestAlgorithm::Sha256.digest(self.ca.cert_der());
            let entries = self.local.map.entries().iter().cloned();
            let extra = (uuid.to_owned(), digest);
            self.local.map = CandidateMap::from_entries(entries.chain([extra]));
        }

        /// `c` now presents a certificate from `ca`, valid `from`..`until`
        /// days from now.
        fn reissue_c(&mut self, ca: Option<&CertificateAuthority>, from: i64, until: i64) {
            let pem = client_pem(ca.unwrap_or(&self.ca), "c", from, until);
            self.info("c").client_cert_pem = pem;
        }
    }

    use Code::*;
    use Severity::{Error as E, Warning as W};

    type Row = (
        &'static str,
        fn(&mut Fixture),
        &'static [(Severity, &'static str, Code)],
    );

    const ROWS: &[Row] = &[
        ("a consistent cluster", |_| {}, &[]),
        // Raft.
        ("raft agrees", |f| f.with_raft(), &[]),
        (
            "a voter believes in another leader",
            |f| {
                f.with_raft();
                f.raft("a").leader = Some("a".into());
                f.raft("a").term = 4;
            },
            &[(E, "a", RaftDisagrees), (E, "m", RaftNoMajority)],
        ),
        (
            "a candidate runs no raft",
            |f| {
                f.with_raft();
                f.info("a").raft = None;
            },
            &[(E, "a", RaftDisagrees), (E, "m", RaftNoMajority)],
        ),
        (
            "a member far behind",
            |f| {
                f.with_raft();
                f.raft("a").applied_index = 2;
            },
            &[(W, "a", RaftBehind)],
        ),
        // The candidate map.
        (
            "map entry for a regular node",
            |f| f.add_map_entry("uuid-c"),
            &[(E, "c", MapEntryNotCandidate)],
        ),
        (
            "map entry for no node",
            |f| f.add_map_entry("uuid-gone"),
            &[(E, "m", MapEntryUnknown)],
        ),
        (
            "candidate without entry",
            |f| {
                let entries = f.local.map.entries().iter().cloned();
                let kept: Vec<_> = entries.filter(|(u, _)| u != "uuid-a").collect();
                f.local.map = CandidateMap::from_entries(kept);
            },
            &[(E, "a", CandidateWithoutEntry)],
        ),
        // Reachability.
        (
            "online node does not answer",
            |f| {
                f.infos.insert("c".into(), Err("connection refused".into()));
            },
            &[(E, "c", Unreachable)],
        ),
        (
            "node not asked",
            |f| {
                f.infos.remove("c");
            },
            &[],
        ),
        // Client certificates.
        (
            "unreadable client certificate",
            |f| f.info("c").client_cert_pem = "not a certificate".into(),
            &[(E, "c", CertUnreadable)],
        ),
        (
            "candidate presents another certificate than its entry",
            |f| f.info("a").client_cert_pem = client_pem(&f.ca, "a", -1, 365),
            &[(E, "a", CandidateDigestMismatch)],
        ),
        (
            "regular node presents a candidate's certificate",
            |f| f.info("c").client_cert_pem = f.info("a").client_cert_pem.clone(),
            &[
                (E, "a", SharedCertificate),
                (E, "c", RegularUsesCandidateCert),
                (E, "c", SharedCertificate),
            ],
        ),
        (
            "two regular nodes share a certificate",
            |f| f.info("c").client_cert_pem = f.info("b").client_cert_pem.clone(),
            &[(E, "b", SharedCertificate), (E, "c", SharedCertificate)],
        ),
        (
            "client certificate from another CA",
            |f| {
                let other = CertificateAuthority::generate("other", 3650).unwrap();
                f.reissue_c(Some(&other), -1, 365);
            },
            &[(E, "c", CertNotFromCa)],
        ),
        (
            "client certificate expires within the warning period",
            |f| f.reissue_c(None, -1, 20),
            &[(W, "c", CertExpires)],
        ),
        (
            "client certificate expires within the error period",
            |f| f.reissue_c(None, -1, 3),
            &[(E, "c", CertExpires)],
        ),
        (
            "client certificate expired",
            |f| f.reissue_c(None, -30, -1),
            &[(E, "c", CertExpired)],
        ),
        // Files every node holds alike.
        (
            "ssconf unreadable",
            |f| f.info("c").ssconf_sha256 = Err("ssconf/cluster_name: missing".into()),
            &[(E, "c", SsconfUnreadable)],
        ),
        (
            "ssconf differs",
            |f| f.info("c").ssconf_sha256 = Ok("0".repeat(64)),
            &[(E, "c", SsconfDiffers)],
        ),
        (
            "server.pem differs",
            |f| f.info("c").server_digest = server_digest_of("other"),
            &[(E, "c", ServerCertDiffers)],
        ),
        (
            "ca.pem differs",
            |f| f.info("b").ca_pem_sha256 = "other".into(),
            &[(E, "b", CaDiffers)],
        ),
        // Role files.
        (
            "candidate lacks the config and the SSH key",
            |f| {
                f.info("a").role_files.config = false;
                f.info("a").role_files.ssh_private_key = false;
            },
            &[(E, "a", RoleFileMissing), (E, "a", RoleFileMissing)],
        ),
        (
            "candidate holds join tokens",
            |f| f.info("a").role_files.tokens = true,
            &[(W, "a", StaleTokens)],
        ),
        (
            "regular node holds the CA key and join tokens",
            |f| {
                f.info("b").role_files.ca_key = true;
                f.info("b").role_files.tokens = true;
            },
            &[(E, "b", RoleFileForbidden), (E, "b", RoleFileForbidden)],
        ),
        (
            "CA key files although the key is in a token",
            |f| f.config.ca_key = Some("pkcs11:token=ca;object=ca".into()),
            &[(E, "a", CaKeyFileWithToken), (E, "m", CaKeyFileWithToken)],
        ),
        (
            "CA key in a token, no node holds a key file",
            |f| {
                f.config.ca_key = Some("pkcs11:token=ca;object=ca".into());
                f.info("m").role_files.ca_key = false;
                f.info("a").role_files.ca_key = false;
            },
            &[],
        ),
        // authorized_keys.
        (
            "authorized_keys unreadable",
            |f| f.info("c").authorized_keys = Err("permission denied".into()),
            &[(E, "c", AuthorizedKeysUnreadable)],
        ),
        (
            "authorized_keys lacks a candidate's key",
            |f| {
                let keys = f.info("b").authorized_keys.as_mut().unwrap();
                keys.pop();
            },
            &[(E, "b", AuthorizedKeysDiffer)],
        ),
        // Leftovers of interrupted writes.
        (
            "temporary files of an interrupted write",
            |f| {
                f.info("b").stale_temp_files = vec![
                    ".config.json.tmp-0123456789abcdef".into(),
                    "ssconf/.ssconf_serial.tmp-0123456789abcdef".into(),
                ];
            },
            &[(W, "b", StaleTempFile), (W, "b", StaleTempFile)],
        ),
        // The cluster-wide certificates.
        (
            "a CA rotation paused",
            |f| {
                f.config.ca_rotation = Some(crate::state::config::CaRotation {
                    phase: crate::state::config::CaPhase::Trust,
                    old_ca_pem: String::new(),
                    new_ca_pem: String::new(),
                    reissued: BTreeSet::new(),
                    complete: true,
                    started: f.now,
                })
            },
            &[(W, "m", CaRotationUnderway)],
        ),
        (
            "CA certificate expires within the warning period",
            |f| f.local.ca_infos[0].not_after = f.now + 20 * DAY,
            &[(W, "m", CertExpires)],
        ),
        (
            "server certificate expired",
            |f| f.info("b").server_cert_expires = f.now - DAY,
            &[(E, "b", CertExpired)],
        ),
    ];

    #[test]
    fn check_finds_exactly_what_is_broken() {
        for (case, breaks, want) in ROWS {
            let mut f = Fixture::new();
            breaks(&mut f);
            let got: Vec<(Severity, String, Code)> = check(&f.config, &f.local, &f.infos, f.now)
                .into_iter()
                .map(|x| (x.severity, x.node, x.code))
                .collect();
            let want: Vec<(Severity, String, Code)> = want
                .iter()
                .map(|(s, n, c)| (*s, (*n).to_owned(), *c))
                .collect();
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn every_family_has_a_row() {
        let covered: BTreeSet<Code> = ROWS
            .iter()
            .flat_map(|(_, _, want)| want.iter().map(|(_, _, c)| *c))
            .collect();
        let missing: Vec<Code> = Code::ALL
            .into_iter()
            // Needs a state directory: `key_store` below.
            .filter(|c| *c != CaKeyUnusable && !covered.contains(c))
            .collect();
        assert_eq!(missing, [], "codes no row produces");
    }

    #[test]
    fn codes_sort_print_and_serialise_as_their_strings() {
        for pair in Code::ALL.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
            assert!(pair[0].as_str() < pair[1].as_str(), "{pair:?}");
        }
        for code in Code::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(code.to_string(), code.as_str());
        }
    }

    #[test]
    fn finding_json() {
        let finding = Finding {
            severity: Severity::Warning,
            node: "a".into(),
            code: StaleTokens,
            message: "m".into(),
            fix: "f".into(),
        };
        assert_eq!(
            serde_json::to_string(&finding).unwrap(),
            r#"{"severity":"WARNING","node":"a","code":"STALE_TOKENS","message":"m","fix":"f"}"#
        );
    }

    #[test]
    fn key_store() {
        let ca = CertificateAuthority::generate("test", 3650).unwrap();
        let other = CertificateAuthority::generate("other", 3650).unwrap();
        let own_key = ca.key_pem().unwrap();
        let other_key = other.key_pem().unwrap();
        let config = Fixture::new().config;
        let rows: [(&str, Option<&str>, Option<Code>); 3] = [
            ("the CA's own key", Some(own_key.expose()), None),
            ("no key file: a missing role file", None, None),
            (
                "another CA's key",
                Some(other_key.expose()),
                Some(CaKeyUnusable),
            ),
        ];
        for (case, key, want) in rows {
            let dir = tempfile::tempdir().unwrap();
            let state = StateDir::new(dir.path());
            std::fs::write(state.ca_pem(), ca.cert_pem()).unwrap();
            if let Some(key) = key {
                std::fs::write(state.ca_key(), key).unwrap();
            }
            let got = check_key_store(&state, &config, "m").map(|f| (f.node, f.code));
            assert_eq!(got, want.map(|c| ("m".to_owned(), c)), "{case}");
        }
    }
}
