//! The files a node's role allows (SPEC §3), as the node itself installs
//! and removes them on the master's request.

use ssconf::Ssconf;

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::pki::Secret;
use crate::state::{StateDir, MODE_PUBLIC, MODE_SECRET};

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_sha256(path: &std::path::Path) -> String {
    std::fs::read(path)
        .map(|b| sha256_hex(&b))
        .unwrap_or_default()
}

/// SHA-256 (hex) of a whole ssconf set, as `node-info` reports it.
pub fn ssconf_sha256(set: &Ssconf) -> String {
    let mut all = String::new();
    for (name, text) in set.render() {
        all.push_str(&name);
        all.push('\0');
        all.push_str(&text);
        all.push('\0');
    }
    sha256_hex(all.as_bytes())
}

/// SHA-256 (hex) of a file's bytes ("" if unreadable).
pub fn file_sha256_hex(path: &std::path::Path) -> String {
    file_sha256(path)
}

/// What this node reports about itself (`node-info`), read from disk now.
pub fn node_info(
    state: &StateDir,
    identity: &crate::state::NodeIdentity,
    cert: &crate::server::ClientCertFacts,
) -> crate::frame::NodeInfo {
    let ssconf = Ssconf::load(&state.ssconf_dir());
    let ssconf_sha256 = match &ssconf {
        Ok(set) => Ok(ssconf_sha256(set)),
        Err(e) => Err(e.to_string()),
    };
    let authorized_keys = match std::fs::read_to_string(state.authorized_keys()) {
        Ok(text) => crate::ssh::managed_keys(&text).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", state.authorized_keys().display())),
    };
    crate::frame::NodeInfo {
        uuid: identity.uuid.clone(),
        name: identity.name.clone(),
        address: identity.address.clone(),
        client_digest_sha256: cert.sha256.to_string(),
        client_digest_sha1: cert.sha1.to_string(),
        client_cert_expires: cert.expires,
        ssconf_serial: ssconf.as_ref().map(|s| s.serial).unwrap_or(0),
        role_files: state.role_files(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        client_cert_pem: std::fs::read_to_string(state.client_pem()).unwrap_or_default(),
        ssconf_sha256,
        server_pem_sha256: file_sha256(&state.server_pem()),
        ca_pem_sha256: file_sha256(&state.ca_pem()),
        authorized_keys,
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
        if config.serial < current.serial {
            return Err(Error::Invalid(format!(
                "config serial {} is older than the serial {} this node holds; refusing to roll back",
                config.serial, current.serial
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

/// Makes a new client key, kept as `client.key.new` until its certificate
/// arrives; returns a CSR for it.
pub fn prepare_client_key(state: &StateDir, node_name: &str) -> Result<String> {
    let key = crate::pki::NodeKey::generate()?;
    let pending = state.root().join("client.key.new");
    state.write(&pending, key.to_pem().expose().as_bytes(), MODE_SECRET)?;
    key.client_csr(node_name)
}

/// Installs a certificate for the pending key: checks that it is for that
/// key and chains to this node's CA, then replaces client.key and
/// client.pem.
pub fn install_client_cert(state: &StateDir, cert_pem: &str) -> Result<()> {
    let pending = state.root().join("client.key.new");
    let key_pem = std::fs::read_to_string(&pending).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid("no pending client key; ask for a CSR first".into())
        } else {
            Error::io(&pending)(e)
        }
    })?;
    let key = crate::pki::NodeKey::from_pem(&key_pem)?;
    let cert = crate::pki::load_certs_from_pem(cert_pem)?;
    let ca = crate::pki::load_certs(&state.ca_pem())?;
    let checked = ca
        .iter()
        .map(|c| crate::pki::check_client_certificate(&cert, c, &key))
        .find(|r| r.is_ok())
        .unwrap_or_else(|| {
            Err(Error::Certificate(
                "the new client certificate does not chain to this node's CA".into(),
            ))
        });
    checked?;
    switch_client_pair(state, cert_pem)
}

/// Switches to the pending key (`client.key.new`) and its certificate.
///
/// Two files cannot be replaced in one step, so: the certificate replaces
/// client.pem, then the pending key is renamed over client.key. A crash in
/// between leaves the new certificate with the pending key beside it, which
/// [`recover_client_pair`] finishes before the pair is next used.
pub fn switch_client_pair(state: &StateDir, cert_pem: &str) -> Result<()> {
    state.write(&state.client_pem(), cert_pem.as_bytes(), MODE_PUBLIC)?;
    recover_client_pair(state)
}

/// Keeps this node's current client certificate and key as
/// `client.prev.pem`/`client.prev.key` before the master replaces its own:
/// a node that was offline during the renewal still holds a map with the
/// old digest, and the master reaches it once with the old pair to send it
/// the current map.
pub fn keep_previous_identity(state: &StateDir) -> Result<()> {
    let cert = std::fs::read(state.client_pem()).map_err(Error::io(state.client_pem()))?;
    let key = std::fs::read(state.client_key()).map_err(Error::io(state.client_key()))?;
    state.write(&state.root().join("client.prev.key"), &key, MODE_SECRET)?;
    state.write(&state.root().join("client.prev.pem"), &cert, MODE_PUBLIC)
}

/// Finishes an interrupted [`switch_client_pair`]: if the pending key is the
/// one client.pem was issued for, it becomes client.key. A pending key whose
/// certificate never arrived is left alone (the old pair still matches).
pub fn recover_client_pair(state: &StateDir) -> Result<()> {
    recover_pair(
        state,
        &state.root().join("client.key.new"),
        &state.client_key(),
        &state.client_pem(),
    )
}

/// [`recover_client_pair`] for the shared server certificate and key
/// (`server.key.new`), which [`install_server_cert`] switches the same way.
pub fn recover_server_pair(state: &StateDir) -> Result<()> {
    recover_pair(
        state,
        &state.root().join("server.key.new"),
        &state.server_key(),
        &state.server_pem(),
    )
}

/// The shared server certificate and key, as a pair that belongs together
/// (an interrupted switch is finished first).
pub fn read_server_pair(state: &StateDir) -> Result<(String, Secret)> {
    recover_server_pair(state)?;
    let cert =
        std::fs::read_to_string(state.server_pem()).map_err(Error::io(state.server_pem()))?;
    let key = std::fs::read_to_string(state.server_key()).map_err(Error::io(state.server_key()))?;
    Ok((cert, Secret::new(key)))
}

/// Renames `pending` over `key_path` if `cert_path` holds the certificate
/// of that pending key.
fn recover_pair(
    state: &StateDir,
    pending: &std::path::Path,
    key_path: &std::path::Path,
    cert_path: &std::path::Path,
) -> Result<()> {
    let Ok(key_pem) = std::fs::read_to_string(pending) else {
        return Ok(());
    };
    let key = crate::pki::NodeKey::from_pem(&key_pem)?;
    let cert = crate::pki::load_certs(cert_path)?;
    let Some(cert) = cert.first() else {
        return Ok(());
    };
    if !crate::pki::cert_has_key(cert, &key)? {
        return Ok(());
    }
    match std::fs::rename(pending, key_path) {
        Ok(()) => {}
        // Another process (the daemon, a concurrent nodectl) finished it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(pending)(e)),
    }
    std::fs::File::open(state.root())
        .and_then(|d| d.sync_all())
        .map_err(Error::io(state.root()))
}

/// Installs a new shared server certificate and key (after checking that
/// they belong together and chain to this node's CA).
pub fn install_server_cert(state: &StateDir, cert_pem: &str, key: &Secret) -> Result<()> {
    let chain = vec![crate::pki::load_certs_from_pem(cert_pem)?];
    let key_der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key.expose().as_bytes())
            .map_err(|e| Error::Certificate(format!("new server key: {e}")))?
    };
    // Builds a throwaway config: fails unless key and certificate match.
    let ca = crate::pki::load_certs(&state.ca_pem())?;
    crate::tls::server_config(
        crate::tls::ServerMaterial {
            ca_certs: ca,
            server_chain: chain,
            server_key: key_der,
        },
        &crate::reload::CandidateMapHandle::new(ssconf::CandidateMap::empty()),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        false,
    )?;
    // As for the client pair: the key waits beside the old one until the
    // certificate is in place, so a crash between two writes never leaves a
    // certificate with another key (the daemon would refuse to start).
    state.write(
        &state.root().join("server.key.new"),
        key.expose().as_bytes(),
        MODE_SECRET,
    )?;
    state.write(&state.server_pem(), cert_pem.as_bytes(), MODE_PUBLIC)?;
    recover_server_pair(state)
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

/// Replaces this node's SSH key pair with a new one.
pub fn replace_ssh_key(state: &StateDir, comment: &str) -> Result<String> {
    for path in [state.ssh_private_key(), state.ssh_public_key()] {
        ssconf::atomic::remove_durable(&path).map_err(Error::io(&path))?;
    }
    ensure_ssh_key(state, comment)
}

/// This node's SSH public key, making the key pair first if there is none.
pub fn ensure_ssh_key(state: &StateDir, comment: &str) -> Result<String> {
    let private = state.ssh_private_key();
    if private.exists() {
        let text = std::fs::read_to_string(&private).map_err(Error::io(&private))?;
        return crate::ssh::public_of(&text);
    }
    let (key, public) = crate::ssh::generate(comment)?;
    state.write_ssh_key_pair(&key, &public)?;
    Ok(public)
}
