//! What a node installs and removes for its role (SPEC §3) on the master's
//! request, and what it reports about itself.

use std::sync::atomic::Ordering;

use ssconf::Ssconf;

use super::super::auth::Admission;
use super::super::server::Daemon;
use super::{blocking, failed};
use crate::core::{Error, Result, Secret};
use crate::daemon::server::ClientCertFacts;
use crate::state::config::ClusterConfig;
use crate::state::ssconf_cache::{HeldSsconf, Stamped};
use crate::state::{fingerprint, NodeIdentity, StateDir, MODE_PUBLIC, MODE_SECRET};
use crate::wire::{NodeInfo, Reply, RpcError};

/// What `node-info` derives from the state directory's files, each
/// derived again only when its file (or, for the temporary files, its
/// directory) changed: the master asks every node every heartbeat, and
/// reading, parsing and hashing the certificates, the key block and the
/// two listings was a third of what a node spent on the answer. A read
/// that failed is not kept (tried again next time); whether a temporary
/// file is stale is decided on every call.
#[derive(Debug, Default)]
pub struct NodeFacts {
    /// `server.pem`: the first certificate's SHA-256 and expiry.
    server: Stamped<Option<(String, i64)>>,
    /// The managed block of `authorized_keys`, or why it does not parse.
    authorized_keys: Stamped<std::result::Result<Vec<String>, String>>,
    client_pem: Stamped<String>,
    ca_pem_sha256: Stamped<String>,
    /// Our temporary files in each of [`StateDir::temp_file_dirs`].
    temp_files: [Stamped<Vec<std::path::PathBuf>>; 2],
}

/// What this node reports about itself (`node-info`), read from disk now
/// (the ssconf set `ssconf` through the daemon's cache, the other files
/// through `facts`: both read again what changed).
pub fn node_info(
    state: &StateDir,
    identity: &NodeIdentity,
    cert: &ClientCertFacts,
    raft: Option<crate::wire::RaftInfo>,
    ssconf: std::result::Result<std::sync::Arc<HeldSsconf>, ssconf::SsconfError>,
    facts: &NodeFacts,
) -> NodeInfo {
    let ssconf_sha256 = match &ssconf {
        Ok(held) => Ok(held.sha256.clone()),
        Err(e) => Err(e.to_string()),
    };
    let ssconf = ssconf.as_ref().map(|held| &held.set);
    let server = facts
        .server
        .get(&state.server_pem(), |path| {
            crate::pki::load_certs(path).map(|certs| {
                certs.into_iter().next().map(|der| {
                    let digest = ssconf::DigestAlgorithm::Sha256.digest(&der).to_string();
                    let expires = crate::pki::CertInfo::from_der(&der)
                        .map(|i| i.not_after)
                        .unwrap_or(0);
                    (digest, expires)
                })
            })
        })
        .ok()
        .flatten();
    let authorized_keys = facts
        .authorized_keys
        .get(
            &state.authorized_keys(),
            |path| match std::fs::read_to_string(path) {
                Ok(text) => Ok(crate::state::ssh::managed_keys(&text).map_err(|e| e.to_string())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ok(Vec::new())),
                Err(e) => Err(format!("{}: {e}", path.display())),
            },
        )
        .and_then(|parsed| parsed);
    let stale_temp_files = state.stale_temp_files(
        state
            .temp_file_dirs()
            .into_iter()
            .zip(&facts.temp_files)
            .map(|(dir, cache)| {
                let listed = cache.get(&dir, ssconf::atomic::temp_files);
                (dir, listed)
            }),
    );
    let client_cert_pem = facts
        .client_pem
        .get(&state.client_pem(), |path| std::fs::read_to_string(path))
        .unwrap_or_default();
    let ca_pem_sha256 = facts
        .ca_pem_sha256
        .get(&state.ca_pem(), fingerprint::try_file_sha256)
        .unwrap_or_default();
    NodeInfo {
        uuid: identity.uuid.clone(),
        name: identity.name.clone(),
        address: identity.address.clone(),
        client_digest_sha256: cert.sha256.to_string(),
        client_digest_sha1: cert.sha1.to_string(),
        client_cert_expires: cert.expires,
        ssconf_serial: ssconf.as_ref().map(|s| s.serial).unwrap_or(0),
        ssconf_term: ssconf.as_ref().map(|s| s.term).unwrap_or(0),
        raft,
        role_files: state.role_files(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        client_cert_pem,
        ssconf_sha256,
        server_digest: server.as_ref().map(|(d, _)| d.clone()).unwrap_or_default(),
        server_cert_expires: server.map(|(_, e)| e).unwrap_or(0),
        ca_pem_sha256,
        authorized_keys,
        stale_temp_files,
    }
}

/// Parses a pushed config and checks it may replace the one held here:
/// same cluster, serial not older.
fn accept_config(state: &StateDir, config_json: &str) -> Result<ClusterConfig> {
    let config: ClusterConfig = serde_json::from_str(config_json)
        .map_err(|e| Error::Invalid(format!("pushed config is malformed: {e}")))?;
    let ssconf = Ssconf::load(&state.ssconf_dir())?;
    if ssconf.cluster_name != config.cluster_name {
        return Err(Error::Invalid(format!(
            "config for cluster {:?} refused: this node belongs to cluster {:?}",
            config.cluster_name, ssconf.cluster_name
        )));
    }
    if state.config_json().exists() {
        let current: ClusterConfig = crate::state::read_json(&state.config_json())?;
        // As Raft orders them: the term first, then the serial.
        if (config.term, config.serial) < (current.term, current.serial) {
            return Err(Error::Invalid(format!(
                "config (term {}, serial {}) is older than the one this node holds (term {}, serial {}); refusing to roll back",
                config.term, config.serial, current.term, current.serial
            )));
        }
    }
    Ok(config)
}

/// Replaces `config.json` (serial-checked).
pub fn write_config(state: &StateDir, config_json: &str) -> Result<()> {
    accept_config(state, config_json)?;
    state.write(&state.config_json(), config_json.as_bytes(), MODE_SECRET)
}

/// Makes this node a master candidate: CA key and config.
///
/// `ca_key` is `None` when the config names a PKCS#11 token for the CA key:
/// then no key file is written, and any stale `ca.key` is removed.
pub fn install_candidate_files(
    state: &StateDir,
    ca_key: Option<&Secret>,
    config_json: &str,
) -> Result<()> {
    let config = accept_config(state, config_json)?;
    match (ca_key, &config.ca_key) {
        (Some(ca_key), None) => {
            // The key must belong to the CA this node trusts.
            let ca_pem =
                std::fs::read_to_string(state.ca_pem()).map_err(Error::io(state.ca_pem()))?;
            crate::pki::CertificateAuthority::from_pem(&ca_pem, ca_key.expose())?
                .check_key_matches()?;
            state.write(&state.ca_key(), ca_key.expose().as_bytes(), MODE_SECRET)?;
        }
        (None, Some(_)) => {
            let path = state.ca_key();
            ssconf::atomic::remove_durable(&path).map_err(Error::io(&path))?;
        }
        (Some(_), Some(uri)) => {
            return Err(Error::Invalid(format!(
                "refusing a CA key file: the cluster config keeps the CA key in {uri}"
            )))
        }
        (None, None) => {
            return Err(Error::Invalid(
                "no CA key was sent and the cluster config names no token for it".into(),
            ))
        }
    }
    state.write(&state.config_json(), config_json.as_bytes(), MODE_SECRET)
}

/// Makes this node a regular one: removes the CA key, config, tokens and
/// the SSH key pair.
pub fn remove_candidate_files(state: &StateDir) -> Result<()> {
    for path in [
        state.ca_key(),
        state.config_json(),
        state.tokens_json(),
        state.ssh_private_key(),
        state.ssh_public_key(),
    ] {
        ssconf::atomic::remove_durable(&path).map_err(Error::io(&path))?;
    }
    Ok(())
}

/// Replaces ca.pem with `ca_pem` (the CAs to trust). Refused if the CA key
/// this node holds would match none of them.
pub fn install_ca_bundle(state: &StateDir, ca_pem: &str) -> Result<()> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate(format!("CA bundle: {e}")))?;
    if certs.is_empty() || certs.len() > 2 {
        return Err(Error::Certificate(format!(
            "a CA bundle holds one or two certificates, not {}",
            certs.len()
        )));
    }
    for cert in &certs {
        webpki::anchor_from_trusted_cert(cert)
            .map_err(|e| Error::Certificate(format!("CA bundle: {e}")))?;
    }
    if let Ok(key) = std::fs::read_to_string(state.ca_key()) {
        crate::pki::CertificateAuthority::from_pem(ca_pem, &key)?;
    }
    state.write(&state.ca_pem(), ca_pem.as_bytes(), MODE_PUBLIC)
}

/// `write-config`.
pub async fn write(daemon: &Daemon, config_json: String) -> std::result::Result<Reply, RpcError> {
    let state = daemon.state.clone();
    blocking(move || write_config(&state, &config_json)).await?;
    // A node that held no config before runs Raft from now on.
    daemon.raft_wanted.notify_one();
    Ok(Reply::Done)
}

/// `install-candidate-files`.
pub async fn install(
    daemon: &Daemon,
    ca_key: Option<Secret>,
    config_json: String,
) -> std::result::Result<Reply, RpcError> {
    let state = daemon.state.clone();
    blocking(move || install_candidate_files(&state, ca_key.as_ref(), &config_json)).await?;
    tracing::info!("now holding the master-candidate files (CA key, config)");
    daemon.raft_wanted.notify_one();
    Ok(Reply::Done)
}

/// `remove-candidate-files`; refused on the master.
pub async fn remove(daemon: &Daemon) -> std::result::Result<Reply, RpcError> {
    if daemon.is_master.load(Ordering::Acquire) {
        return Err(failed(
            "this node is the master; fail over to another candidate first",
        ));
    }
    let state = daemon.state.clone();
    blocking(move || remove_candidate_files(&state)).await?;
    super::super::consensus::stop(daemon)
        .await
        .map_err(|e| failed(e.to_string()))?;
    tracing::info!("master-candidate files removed (CA key, config, SSH private key)");
    Ok(Reply::Done)
}

/// `fetch-candidate-files`, on the master: a master candidate (by the
/// client certificate it was admitted with) gets the CA key, unless it
/// lives in a token, and the config. How a node that joined as a candidate
/// receives them: over its own verified connection, never in the join
/// reply.
pub async fn fetch(daemon: &Daemon, caller: &Admission) -> std::result::Result<Reply, RpcError> {
    if !daemon.is_master.load(Ordering::Acquire) {
        return Err(failed("this node is not the master"));
    }
    let state = daemon.state.clone();
    let digest = caller.digest.to_string();
    blocking(move || {
        let config: ClusterConfig = crate::state::read_json(&state.config_json())?;
        let record = config
            .nodes
            .iter()
            .find(|n| n.digest == digest || n.next_digest.as_deref() == Some(digest.as_str()))
            .ok_or_else(|| Error::Invalid("the caller is not a node of this cluster".into()))?;
        if !record.role.is_candidate() || record.offline {
            return Err(Error::Invalid(format!(
                "{} is not an online master candidate",
                record.name
            )));
        }
        let ca_key = match config.ca_key {
            Some(_) => None,
            None => Some(Secret::new(
                std::fs::read_to_string(state.ca_key()).map_err(Error::io(state.ca_key()))?,
            )),
        };
        let config_json =
            std::fs::read_to_string(state.config_json()).map_err(Error::io(state.config_json()))?;
        tracing::info!(node = %record.name, "candidate files sent to a new master candidate");
        Ok(Reply::CandidateFiles {
            ca_key,
            config_json,
        })
    })
    .await
}
