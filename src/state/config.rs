//! The cluster configuration (`config.json`), held by the master and the
//! master candidates, and the ssconf set derived from it.

use serde::{Deserialize, Serialize};
use ssconf::{CandidateMap, CertDigest, DigestAlgorithm, Ssconf};

use crate::core::{Error, Result};

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Master,
    Candidate,
    Regular,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Master => "master",
            NodeRole::Candidate => "candidate",
            NodeRole::Regular => "regular",
        }
    }

    /// Whether the role issues RPCs (and so has a map entry).
    pub fn is_candidate(self) -> bool {
        matches!(self, NodeRole::Master | NodeRole::Candidate)
    }
}

/// One node as the master records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub uuid: String,
    pub name: String,
    pub address: String,
    pub role: NodeRole,
    pub offline: bool,
    /// Digest of the client certificate the master signed for the node, in
    /// the cluster's digest algorithm.
    pub digest: String,
    /// `notAfter` of that certificate, Unix seconds.
    pub cert_expires: i64,
    /// During a certificate renewal: the digest of the new certificate, in
    /// the map next to the old one until the node uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_digest: Option<String>,
    /// SHA-256 digest of the node's own server certificate, which the master
    /// signed from the node's CSR: what every RPC client checks it reached.
    #[serde(default)]
    pub server_digest: String,
    /// During a server certificate renewal: the new certificate's digest,
    /// accepted beside the old one until the node serves with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_server_digest: Option<String>,
    /// When the node last became a master candidate, Unix seconds (0:
    /// unknown): the longest-serving candidates are Raft's voters.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub candidate_since: i64,
    /// The node's SSH public key (master candidates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
}

/// The full cluster configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub cluster_name: String,
    /// Bumped by every change; nodes refuse older ones.
    pub serial: u64,
    /// The Raft term that committed this config (0 before Raft); with the
    /// serial, what a node compares: a lower term is refused (fencing).
    #[serde(default)]
    pub term: u64,
    /// How many master candidates (the master included) the cluster keeps.
    pub candidate_pool_size: u32,
    /// Digest algorithm of the candidate map.
    pub digest: DigestAlgorithmName,
    /// Validity of new certificates, in days (rounded up from
    /// `cert_lifetime` when that is set).
    pub cert_days: u32,
    /// Validity of new node certificates, in seconds (`init
    /// --cert-lifetime`); 0 in configs that predate it: `cert_days` then.
    /// The master renews a certificate once two thirds of it has passed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cert_lifetime: u64,
    /// SHA-256 of the CA certificate's DER (what join tokens pin), hex.
    pub ca_sha256: String,
    /// Where the CA key lives when it is not `ca.key`: a `pkcs11:` URI
    /// (RFC 7512) that the master and every master candidate can reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
    pub nodes: Vec<NodeRecord>,
    /// Users of the remote API (SPEC §11.1), revoked ones included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<crate::state::users::UserRecord>,
    /// The audit trail (SPEC §11.3), oldest first, at most
    /// [`crate::state::users::AUDIT_CAP`] entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<crate::state::users::AuditEntry>,
    /// A CA rotation in progress (SPEC §8), none between rotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rotation: Option<CaRotation>,
}

/// A phase of a CA rotation (`renew-crypto --new-ca`), as committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaPhase {
    /// Every node is given both CAs; the old one still signs.
    Trust,
    /// The new CA signs; every certificate is reissued by it.
    Reissue,
    /// The old CA leaves every trust store.
    Drop,
    /// `--rollback-ca`: the old CA signs again, what the new one signed is
    /// reissued by the old one, then the new one leaves every trust store.
    Rollback,
}

impl CaPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            CaPhase::Trust => "trust",
            CaPhase::Reissue => "reissue",
            CaPhase::Drop => "drop",
            CaPhase::Rollback => "rollback",
        }
    }
}

impl std::fmt::Display for CaPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CA rotation in progress: its phase, both CAs, and which nodes hold
/// certificates of the new CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    pub phase: CaPhase,
    /// The trust bundle before the rotation (PEM).
    pub old_ca_pem: String,
    /// The new CA's certificate (PEM).
    pub new_ca_pem: String,
    /// Nodes (by name) whose client and server certificates the new CA
    /// signed during this rotation.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub reissued: std::collections::BTreeSet<String>,
    /// The phase is complete (every online node took it) and the rotation
    /// paused there (`--stop-after`): going on needs no node.
    #[serde(default)]
    pub complete: bool,
    /// When the rotation began, Unix seconds.
    pub started: i64,
}

/// [`DigestAlgorithm`] as it appears in JSON (`"sha256"` / `"sha1"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestAlgorithmName {
    Sha256,
    Sha1,
}

impl From<DigestAlgorithmName> for DigestAlgorithm {
    fn from(n: DigestAlgorithmName) -> Self {
        match n {
            DigestAlgorithmName::Sha256 => DigestAlgorithm::Sha256,
            DigestAlgorithmName::Sha1 => DigestAlgorithm::Sha1,
        }
    }
}

impl From<DigestAlgorithm> for DigestAlgorithmName {
    fn from(a: DigestAlgorithm) -> Self {
        match a {
            DigestAlgorithm::Sha256 => DigestAlgorithmName::Sha256,
            DigestAlgorithm::Sha1 => DigestAlgorithmName::Sha1,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

impl ClusterConfig {
    /// How long a node certificate the master signs now is valid.
    pub fn cert_lifetime(&self) -> std::time::Duration {
        match self.cert_lifetime {
            0 => std::time::Duration::from_secs(u64::from(self.cert_days) * 86_400),
            secs => std::time::Duration::from_secs(secs),
        }
    }

    /// The master's record.
    pub fn master(&self) -> Result<&NodeRecord> {
        self.nodes
            .iter()
            .find(|n| n.role == NodeRole::Master)
            .ok_or_else(|| Error::Invalid("cluster config names no master".into()))
    }

    /// The nodes that are not offline (the ones pushes and checks reach).
    pub fn online_nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.iter().filter(|n| !n.offline)
    }

    /// The record of the node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The ssconf set every node should hold for this config.
    pub fn to_ssconf(&self) -> Result<Ssconf> {
        let mut nodes: Vec<&NodeRecord> = self.nodes.iter().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let names = |f: &dyn Fn(&NodeRecord) -> bool| -> Vec<String> {
            nodes
                .iter()
                .filter(|n| f(n))
                .map(|n| n.name.clone())
                .collect()
        };
        let mut entries = Vec::new();
        for n in nodes.iter().filter(|n| n.role.is_candidate() && !n.offline) {
            // An empty digest: no valid certificate on record (a renewal
            // that did not reach the node); no entry until it is renewed.
            for text in std::iter::once(&n.digest).chain(n.next_digest.iter()) {
                if text.is_empty() {
                    continue;
                }
                let digest: CertDigest = text.parse().map_err(|e| {
                    Error::Invalid(format!("config: node {}: bad digest: {e}", n.name))
                })?;
                entries.push((n.uuid.clone(), digest));
            }
        }
        Ok(Ssconf {
            node_server_certs: self.server_certs()?,
            cluster_name: self.cluster_name.clone(),
            master_node: self.master()?.name.clone(),
            node_list: names(&|_| true),
            node_addresses: nodes
                .iter()
                .map(|n| (n.name.clone(), n.address.clone()))
                .collect(),
            online_nodes: names(&|n| !n.offline),
            offline_nodes: names(&|n| n.offline),
            master_candidates: names(&|n| n.role.is_candidate() && !n.offline),
            master_candidates_certs: CandidateMap::from_entries(entries),
            term: self.term,
            serial: self.serial,
        })
    }
}

impl ClusterConfig {
    /// `<uuid>=<digest>` of every node's server certificate (both during a
    /// switch): `ssconf_node_server_certs`.
    pub fn server_certs(&self) -> Result<CandidateMap> {
        let mut entries = Vec::new();
        for n in &self.nodes {
            for text in std::iter::once(&n.server_digest).chain(n.next_server_digest.iter()) {
                if text.is_empty() {
                    continue;
                }
                let digest: CertDigest = text.parse().map_err(|e| {
                    Error::Invalid(format!("config: node {}: bad server digest: {e}", n.name))
                })?;
                entries.push((n.uuid.clone(), digest));
            }
        }
        Ok(CandidateMap::from_entries(entries))
    }
}

/// Longest node name: a DNS host name (RFC 1035).
pub const MAX_NODE_NAME: usize = 253;
/// Longest label of a node name.
pub const MAX_NODE_LABEL: usize = 63;

/// Checks a node name (SPEC §5): a DNS label or a dotted host name, each
/// label `[a-z0-9]([a-z0-9-]*[a-z0-9])?` of at most 63 characters, at most
/// 253 in all. The name ends up in certificates, ssconf lines, file names
/// of completions and host lookups, so nothing else is let in: no `.` or
/// `..`, no leading `-` (an option to whatever reads it), no upper case (a
/// second spelling of the same host), no `_`.
pub fn check_node_name(name: &str) -> Result<()> {
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                bytes.len() <= MAX_NODE_LABEL
                    && inner(first)
                    && inner(last)
                    && bytes.iter().all(|b| inner(b) || *b == b'-')
            }
            _ => false,
        }
    };
    if name.len() <= MAX_NODE_NAME && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "node name {name:?} is not valid: use a DNS host name, labels of 1-63 lower-case letters, digits and '-' (not first or last) joined by '.', at most 253 characters (e.g. node1 or node1.example.org)"
        )))
    }
}

/// Checks a cluster name: what can stand in ssconf lines, JSON and the CA
/// certificate's subject. Deliberately looser than a node name: a cluster
/// name is never looked up as a host, and clusters made with it must keep
/// working.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what} {name:?} is not valid: use 1-253 letters, digits, '-', '.', '_'"
        )))
    }
}

/// Checks a `host:port` address.
pub fn check_address(address: &str) -> Result<()> {
    let invalid = || {
        Error::Invalid(format!(
            "address {address:?} is not HOST:PORT (e.g. 192.0.2.10:1811 or [2001:db8::1]:1811)"
        ))
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if port == 0 || host.is_empty() || host.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(invalid());
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.starts_with('[') != host.ends_with(']') || (host.contains(':') && !bracketed) {
        return Err(invalid());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        let long_label = "a".repeat(63);
        let longest = [long_label.as_str(); 3].join(".") + "." + &"a".repeat(61);
        assert_eq!(longest.len(), 253);
        for good in [
            "n",
            "node1",
            "0",
            "a-b",
            "a--b",
            "node1.example.org",
            &long_label,
            &longest,
        ] {
            assert!(check_node_name(good).is_ok(), "{good}");
        }
        let too_long_label = "a".repeat(64);
        let too_long = longest.clone() + "a";
        for bad in [
            "",
            ".",
            "..",
            "-a",
            "a-",
            "A",
            "Node1",
            "a_b",
            "a..b",
            ".a",
            "a.",
            "a b",
            "a/b",
            "a:b",
            "é",
            &too_long_label,
            &too_long,
            "a.-b",
            "a.b-",
        ] {
            let err = check_node_name(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("DNS host name"), "{bad:?}: {err}");
        }
    }
}
