//! Join admission on the master (SPEC §5): [`admit`] checks the token,
//! signs the CSR, records the digest of the certificate it signed, adds the
//! node, saves and pushes, and answers with everything the node needs. The
//! joining node's side is `nodectl join`.

use std::sync::atomic::Ordering;

use ssconf::DigestAlgorithm;

use super::handlers::failed;
use super::server::Daemon;
use crate::cluster::{self, ClusterLock, PushItems};
use crate::core::{Error, Result};
use crate::pki::{self, CertInfo, CertificateSigner};
use crate::state::config::{check_address, check_name, ClusterConfig, NodeRecord, NodeRole};
use crate::state::token::TokenStore;
use crate::state::StateDir;
use crate::wire::{JoinReply, JoinRequest, Reply, RpcError};

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
    }
}

/// The master's side, under the cluster lock: check, sign, add, save.
/// Returns the reply (without push results) and the new config.
pub fn admit(state: &StateDir, req: &JoinRequest) -> Result<(JoinReply, ClusterConfig)> {
    check_name("node name", &req.node_name)?;
    check_address(&req.address)?;
    // Check the token before queueing for the lock, so that a peer without
    // a valid token cannot hold up the cluster's administration.
    TokenStore::load(state)?
        .check(&req.token_id, req.secret.expose(), crate::core::time::now())
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let _lock = ClusterLock::acquire(state, true, &format!("join of {}", req.node_name))?;
    let mut config = cluster::master_config(state)?;
    let mut tokens = TokenStore::load(state)?;
    let token = tokens
        .check(&req.token_id, req.secret.expose(), crate::core::time::now())
        .map_err(|e| Error::Invalid(e.to_string()))?
        .clone();
    if config.nodes.iter().any(|n| n.name == req.node_name) {
        return Err(Error::Invalid(format!(
            "a node named {:?} is already in the cluster; pick another --node-name (or `nodectl remove` the old one)",
            req.node_name
        )));
    }
    if config.nodes.iter().any(|n| n.address == req.address) {
        return Err(Error::Invalid(format!(
            "address {} is already used by another node; pick another --address",
            req.address
        )));
    }
    let ca_pem = std::fs::read_to_string(state.ca_pem()).map_err(Error::io(state.ca_pem()))?;
    let store = crate::pki::keystore::for_cluster(state, &config)?;
    let ca = store.load_ca(&ca_pem)?;
    // The name in the certificate is the node name; the CSR contributes only
    // its public key (and proves possession of the private key).
    let uuid = uuid::Uuid::new_v4().to_string();
    let client_pem = ca.sign_client_csr(&req.csr_pem, &req.node_name, config.cert_days)?;
    let server_pem =
        ca.sign_server_csr(&req.server_csr_pem, &req.node_name, &uuid, config.cert_days)?;
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
        crate::state::ssh::check_public(&req.ssh_public_key)?;
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
    config.serial += 1;
    // Burn the token first: a crash after this loses a token, never reuses one.
    tokens.burn(&token.id);
    tokens.save(state)?;
    cluster::save_config(state, &config)?;
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
    Ok((reply, config))
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

/// The master's side of a join: admit under the cluster lock, then push
/// the new state to every other online node.
pub async fn handle_join(daemon: &Daemon, request: JoinRequest) -> Result<Reply, RpcError> {
    if !daemon.is_master.load(Ordering::Acquire) {
        return Err(failed(
            "this node is not the master; join through the master's address",
        ));
    }
    let state = daemon.state.clone();
    let name = request.node_name.clone();
    let (mut join_reply, config) =
        tokio::task::spawn_blocking(move || super::join::admit(&state, &request))
            .await
            .map_err(|e| failed(format!("join task failed: {e}")))?
            .map_err(|e| failed(e.to_string()))?;
    daemon.reload_ssconf().await;
    let client =
        crate::rpc::RpcClient::from_state(&daemon.state).map_err(|e| failed(e.to_string()))?;
    let me = daemon.identity.name.clone();
    match crate::cluster::push(
        &client,
        &config,
        crate::cluster::PushItems::ALL,
        &[&me, &name],
        &crate::rpc::fanout::quiet,
    )
    .await
    {
        Ok(outcome) => {
            for (node, why) in &outcome.unreachable {
                tracing::warn!(%node, "not updated after the join of {name}: {why}");
            }
            join_reply.unreachable = outcome.unreachable.into_iter().map(|(n, _)| n).collect();
        }
        Err(e) => tracing::error!("push after the join of {name} failed: {e}"),
    }
    Ok(Reply::Joined(Box::new(join_reply)))
}
