//! Join admission on the master (SPEC §5): [`admit`] checks the token,
//! signs the CSR, records the digest of the certificate it signed, adds the
//! node, saves and pushes, and answers with everything the node needs. The
//! joining node's side is `nodectl join`.

use std::collections::BTreeSet;
use std::net::{SocketAddr, SocketAddrV6, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::Ordering;

use ssconf::DigestAlgorithm;

use super::converge::{JoinInFlight, JoinsInFlight};
use super::handlers::failed;
use super::server::Daemon;
use crate::cluster::raft::RaftNode;
use crate::cluster::{self, ClusterLock, PushItems};
use crate::core::{chain, Error, Result};
use crate::pki::{self, CertInfo, CertificateSigner};
use crate::state::config::{check_address, check_node_name, ClusterConfig, NodeRecord, NodeRole};
use crate::state::token::TokenStore;
use crate::state::StateDir;
use crate::wire::{JoinReply, JoinRequest, Reply, Resend, RpcError};

/// The record of a node admitted with `req`, before its certificates.
fn new_record(req: &JoinRequest, candidate: bool) -> NodeRecord {
    NodeRecord {
        uuid: String::new(),
        name: req.node_name.clone(),
        address: req.address.clone(),
        role: if candidate {
            NodeRole::Candidate
        } else {
            NodeRole::Regular
        },
        offline: false,
        digest: String::new(),
        cert_expires: 0,
        ssh_public_key: candidate.then(|| req.ssh_public_key.trim().to_owned()),
        next_digest: None,
        server_digest: String::new(),
        next_server_digest: None,
        candidate_since: if candidate {
            crate::core::time::now()
        } else {
            0
        },
    }
}

/// An address in the form two spellings of it share: every socket address
/// it resolves to (the standard resolver: `/etc/hosts`, DNS), an
/// IPv4-mapped IPv6 address as the IPv4 address, no IPv6 flow label.
fn resolve(address: &str) -> std::io::Result<BTreeSet<SocketAddr>> {
    let canonical = |addr: SocketAddr| match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => SocketAddrV6::new(*v6.ip(), v6.port(), 0, v6.scope_id()).into(),
        },
        v4 => v4,
    };
    Ok(address.to_socket_addrs()?.map(canonical).collect())
}

/// The joiner's address, resolved; one that does not resolve is refused.
fn resolve_joiner(address: &str) -> Result<BTreeSet<SocketAddr>> {
    let refused = |why: String| {
        Error::Invalid(format!(
            "address {address} does not resolve on the master ({why}); give an IP address, or a name the master resolves"
        ))
    };
    match resolve(address) {
        Ok(set) if set.is_empty() => Err(refused("no address".into())),
        Ok(set) => Ok(set),
        Err(e) => Err(refused(e.to_string())),
    }
}

/// Refuses a joiner whose name, or whose address in canonical form
/// (`resolved`), a node of `config` already has; the error names that node.
fn check_unique(
    config: &ClusterConfig,
    req: &JoinRequest,
    resolved: &BTreeSet<SocketAddr>,
) -> Result<()> {
    if config.nodes.iter().any(|n| n.name == req.node_name) {
        return Err(Error::Invalid(format!(
            "a node named {:?} is already in the cluster; pick another --node-name (or `nodectl remove` the old one)",
            req.node_name
        )));
    }
    for n in &config.nodes {
        let same = n.address == req.address
            || match resolve(&n.address) {
                Ok(theirs) => !theirs.is_disjoint(resolved),
                Err(e) => {
                    // Compared as text only; the join goes on.
                    tracing::warn!(node = %n.name, address = %n.address, "does not resolve: {e}");
                    false
                }
            };
        if same {
            return Err(Error::Invalid(format!(
                "address {} is already used by node {} ({}); pick another --address",
                req.address, n.name, n.address
            )));
        }
    }
    Ok(())
}

fn token_refused(e: crate::state::token::TokenError) -> JoinFailure {
    JoinFailure::Refused(Error::Invalid(e.to_string()))
}

/// The checks of the request made before queueing for the cluster lock
/// (so that a peer without a valid token cannot hold up the cluster's
/// administration): name, address, token, both CSRs. The joiner made them
/// too, but a joiner may be modified. Returns the address resolved.
fn check_request(
    state: &StateDir,
    req: &JoinRequest,
) -> std::result::Result<BTreeSet<SocketAddr>, JoinFailure> {
    use JoinFailure::Refused;
    check_node_name(&req.node_name).map_err(Refused)?;
    check_address(&req.address).map_err(Refused)?;
    TokenStore::load(state)?
        .check(&req.token_id, req.secret.expose(), crate::core::time::now())
        .map_err(token_refused)?;
    let resolved = resolve_joiner(&req.address).map_err(Refused)?;
    for csr in [&req.csr_pem, &req.server_csr_pem] {
        pki::parse_csr(csr).map_err(Refused)?;
    }
    Ok(resolved)
}

/// The master's side, under the cluster lock: check, sign, add, save.
/// Returns the reply (without the nodes not brought up to date), the
/// serial of the config that holds the node, and the node's mark in
/// `joins`, to hold until the reply is sent.
///
/// The token is checked first and burned only when the node is added: a
/// join refused for its name, address or CSR leaves the token usable.
///
/// Only the checks of what the joiner sent (name, address, token, CSRs,
/// SSH key) fail as [`JoinFailure::Refused`]; anything else is the
/// master's own failure, which the joiner is not told about.
pub fn admit(
    state: &StateDir,
    raft: &RaftNode,
    req: &JoinRequest,
    joins: &JoinsInFlight,
) -> std::result::Result<(JoinReply, u64, JoinInFlight), JoinFailure> {
    use JoinFailure::Refused;
    let resolved = check_request(state, req)?;
    let _lock = ClusterLock::acquire(state, true, &format!("join of {}", req.node_name))?;
    let mut config = cluster::master_config(state)?;
    let mut tokens = TokenStore::load(state)?;
    let token = tokens
        .check(&req.token_id, req.secret.expose(), crate::core::time::now())
        .map_err(token_refused)?
        .clone();
    check_unique(&config, req, &resolved).map_err(Refused)?;
    // From here until the reply no round reaches for the joiner, whose
    // daemon is not running yet. Marked only now: a name marked is left
    // out of every round, and a peer without a valid token, or naming a
    // node of the cluster, must not be able to mark it.
    let in_flight = joins.mark(&req.node_name);
    let ca_pem = std::fs::read_to_string(state.ca_pem()).map_err(Error::io(state.ca_pem()))?;
    // The CA the config says signs, refused if this node's key is another's.
    let ca = crate::pki::keystore::load_ca(state, &config)?;
    // The name in the certificate is the node name; the CSR contributes only
    // its public key (and proves possession of the private key).
    let uuid = uuid::Uuid::new_v4().to_string();
    let client_pem = ca.sign_client_csr(&req.csr_pem, &req.node_name, config.cert_lifetime())?;
    let server_pem = ca.sign_server_csr(
        &req.server_csr_pem,
        &req.node_name,
        &uuid,
        config.cert_lifetime(),
    )?;
    let server_der = pki::load_certs_from_pem(&server_pem)?;
    let client_der = pki::load_certs_from_pem(&client_pem)?;
    let alg: DigestAlgorithm = config.digest.into();
    let online_candidates = config
        .nodes
        .iter()
        .filter(|n| n.role.is_candidate() && !n.offline)
        .count();
    let candidate =
        token.master_candidate || online_candidates < config.candidate_pool_size as usize;
    if candidate {
        crate::state::ssh::check_public(&req.ssh_public_key).map_err(Refused)?;
    }
    config.nodes.push(NodeRecord {
        uuid: uuid.clone(),
        digest: alg.digest(&client_der).to_string(),
        cert_expires: CertInfo::from_der(&client_der)?.not_after,
        server_digest: DigestAlgorithm::Sha256.digest(&server_der).to_string(),
        ..new_record(req, candidate)
    });
    // The audit entry travels with the commit that adds the node.
    crate::state::users::append(&mut config.audit, join_entry(&req.node_name, candidate));
    let base = config.serial;
    config.serial += 1;
    // Burn the token first: a crash after this loses a token, never reuses
    // one. It is remembered with the node's name, for a joiner that dies
    // before it writes its state and comes back with the same token.
    tokens.prune(crate::core::time::now());
    tokens.burn_for(&token.id, &req.node_name);
    tokens.save(state)?;
    // Committed through Raft (this runs on a blocking thread of the
    // daemon's runtime, which may wait for it).
    let (term, _) =
        tokio::runtime::Handle::current().block_on(raft.propose(base, config.clone()))?;
    config.term = term;
    cluster::apply_locally(state, &config, PushItems::ALL)?;
    // No CA key and no config here: a candidate fetches them over its own
    // admitted connection, once it holds its certificates.
    let reply = JoinReply {
        uuid,
        master_candidate: candidate,
        ca_pem,
        server_pem,
        client_pem,
        ssconf_files: config.to_ssconf()?.render(),
        authorized_keys: cluster::candidate_ssh_keys(&config),
        unreachable: Vec::new(),
    };
    tracing::info!(
        node = %req.node_name,
        address = %req.address,
        role = if candidate { "candidate" } else { "regular" },
        serial = config.serial,
        "node joined"
    );
    Ok((reply, config.serial, in_flight))
}

/// Why an admission failed: something the joiner sent, or the master.
#[derive(Debug)]
pub enum JoinFailure {
    /// A check of the request (token, name, address, CSR, SSH key): the
    /// joiner is told why.
    Refused(Error),
    /// The master's own failure (a state file, the CA key or its token,
    /// Raft): the joiner is told only that the master failed.
    Internal(Error),
}

/// Fail closed: an error not marked as a refusal is the master's own.
impl From<Error> for JoinFailure {
    fn from(error: Error) -> Self {
        JoinFailure::Internal(error)
    }
}

/// What a joiner is told when its admission fails. The refusals meant for
/// it (token, name, address, CSR) go as they are; any other error (a state
/// file the master cannot read or write, its CA key's token, ...) may name
/// the master's files, which are none of the joiner's business: it goes to
/// the master's log, and the joiner learns only that the master failed.
fn joiner_error(state_root: &Path, node: &str, failure: JoinFailure) -> RpcError {
    let (error, refused) = match failure {
        JoinFailure::Refused(error) => (error, true),
        JoinFailure::Internal(error) => (error, false),
    };
    let text = error.to_string();
    // A refusal that names a file of the master after all is kept back too.
    let absolute = std::fs::canonicalize(state_root).ok();
    let names_a_path = absolute
        .into_iter()
        .chain([state_root.join("")])
        .any(|root| text.contains(&*root.to_string_lossy()));
    let for_joiner = refused && !names_a_path;
    // A refusal goes to the denial log with the peer's address, once per
    // connection (`AnonymousJoin::serve`); the name is the joiner's, not
    // checked yet when the refusal is about it: escaped here.
    if for_joiner {
        failed(text)
    } else {
        tracing::error!(?node, "join failed on the master: {}", chain(&error));
        failed("the master could not admit this node: internal error; see the master's log")
    }
}

/// The audit entry of a node's admission: actor `join:NODE` (the joining
/// node speaks for itself with its token).
fn join_entry(node: &str, candidate: bool) -> crate::state::users::AuditEntry {
    let result = if candidate {
        "ok: master candidate"
    } else {
        "ok: regular"
    };
    crate::state::users::AuditEntry::now(&format!("join:{node}"), "join", node, result)
}

/// The master's side of a join: admit under the cluster lock and bring
/// the master candidates up to date; the convergence loop's next round
/// brings the others.
pub async fn handle_join(daemon: &Daemon, request: JoinRequest) -> Result<Reply, RpcError> {
    if !daemon.is_master.load(Ordering::Acquire) {
        return Err(failed(
            "this node is not the master; join through the master's address",
        ));
    }
    let state = daemon.state.clone();
    let name = request.node_name.clone();
    let Some(raft) = daemon.raft.load_full() else {
        return Err(failed(
            "this node is not the master; join through the master's address",
        ));
    };
    let joins = daemon.converger.joining.clone();
    let (mut join_reply, serial, _in_flight) =
        tokio::task::spawn_blocking(move || admit(&state, &raft, &request, &joins))
            .await
            .map_err(|e| failed(format!("join task failed: {e}")))?
            .map_err(|e| joiner_error(daemon.state.root(), &name, e))?;
    daemon.reload_ssconf().await;
    // Committed. Before the reply, the candidates (every node that may
    // call the new node) get its ssconf; the regular nodes, which call no
    // one, get it from the loop's next heartbeat round, shared by every
    // join of the interval (a round per join kept a 1,000-node cluster
    // busy with rounds while nodes joined). Both go over the loop's kept
    // connections, as a patch of the set each node holds.
    // A node that joins as a candidate enters the map, which every node
    // admits by: that join waits for a whole round (joins as candidates
    // are few, the pool's size).
    let distributed = if join_reply.master_candidate {
        super::converge::round_now(daemon, serial, &Resend::Changes).await
    } else {
        super::converge::candidates_round(daemon).await
    };
    match distributed {
        Ok(outcome) => {
            for (node, why) in &outcome.behind {
                tracing::warn!(%node, "not updated after the join of {name}: {why}");
            }
            join_reply.unreachable = outcome.behind.into_iter().map(|(n, _)| n).collect();
        }
        Err(e) => tracing::error!("distributing the join of {name} (serial {serial}) failed: {e}"),
    }
    Ok(Reply::Joined(Box::new(join_reply)))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_joiner_is_told_refusals_never_the_masters_files() {
        let internal = "the master could not admit this node: internal error; see the master's log";
        let io = |path: &str| Error::Io {
            path: PathBuf::from(path),
            source: std::io::Error::other("boom"),
        };
        let rows: [(&str, JoinFailure, &str); 8] = [
            (
                "/var/lib/noded",
                JoinFailure::Refused(Error::Invalid("name taken".into())),
                "name taken",
            ),
            (
                "m",
                JoinFailure::Refused(Error::Invalid("address taken by node m".into())),
                "address taken by node m",
            ),
            (
                "/s",
                JoinFailure::Refused(Error::Certificate("bad CSR".into())),
                "certificate: bad CSR",
            ),
            ("/s", JoinFailure::Internal(io("/s/tokens.json")), internal),
            (
                "/s",
                JoinFailure::Internal(Error::NotInitialised {
                    path: "/s/node.json".into(),
                }),
                internal,
            ),
            (
                "/s",
                JoinFailure::Refused(Error::Invalid("no key in /s; remove /s/ca.new.pem".into())),
                internal,
            ),
            (
                "m",
                JoinFailure::Refused(Error::Invalid("no key for the new CA in m/".into())),
                internal,
            ),
            // The master's own failure names a file outside its state
            // directory (its CA key's PIN file): never told.
            (
                "/var/lib/noded",
                JoinFailure::Internal(Error::Invalid(
                    "cannot read the PIN file /etc/noded/hsm.pin named by pin-source".into(),
                )),
                internal,
            ),
        ];
        for (root, error, told) in rows {
            let shown = format!("{error:?}");
            assert_eq!(
                joiner_error(Path::new(root), "n", error).message,
                told,
                "{shown}"
            );
        }
    }
}
