//! The decisions of a certificate renewal (SPEC §8), apart from the RPCs
//! that carry it out (`cluster::renewal`): which nodes a run renews, and
//! what each node's record holds after each step. They hold no I/O.
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

use ssconf::DigestAlgorithm;

use crate::core::{Error, Result};
use crate::pki::{self, CertInfo};
use crate::state::config::{ClusterConfig, NodeRecord};

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
            candidate_since: 0,
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
            users: Vec::new(),
            audit: Vec::new(),
            ca_rotation: None,
            term: 0,
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
