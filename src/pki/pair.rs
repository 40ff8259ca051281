//! A node's key and certificate pairs, switched crash-safely: a new key
//! waits beside the old one (`*.key.new`) until its certificate is in
//! place, and every reader finishes an interrupted switch first.

use crate::core::{Error, Result, Secret};
use crate::state::{StateDir, MODE_PUBLIC, MODE_SECRET};

/// Makes a new client key, kept as `client.key.new` until its certificate
/// arrives; returns a CSR for it.
pub fn prepare_client_key(state: &StateDir, node_name: &str) -> Result<String> {
    let key = super::NodeKey::generate()?;
    let pending = state.client_key_pending();
    state.write(&pending, key.to_pem().expose().as_bytes(), MODE_SECRET)?;
    key.client_csr(node_name)
}

/// Installs a certificate for the pending key: checks that it is for that
/// key and chains to this node's CA, then replaces client.key and
/// client.pem.
pub fn install_client_cert(state: &StateDir, cert_pem: &str) -> Result<()> {
    let pending = state.client_key_pending();
    let key_pem = std::fs::read_to_string(&pending).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid("no pending client key; ask for a CSR first".into())
        } else {
            Error::io(&pending)(e)
        }
    })?;
    let key = super::NodeKey::from_pem(&key_pem)?;
    let cert = super::load_certs_from_pem(cert_pem)?;
    let ca = super::load_certs(&state.ca_pem())?;
    let checked = ca
        .iter()
        .map(|c| super::check_client_certificate(&cert, c, &key))
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
    state.write(&state.client_prev_key(), &key, MODE_SECRET)?;
    state.write(&state.client_prev_pem(), &cert, MODE_PUBLIC)
}

/// Finishes an interrupted [`switch_client_pair`]: if the pending key is the
/// one client.pem was issued for, it becomes client.key. A pending key whose
/// certificate never arrived is left alone (the old pair still matches).
pub fn recover_client_pair(state: &StateDir) -> Result<()> {
    recover_pair(
        state,
        &state.client_key_pending(),
        &state.client_key(),
        &state.client_pem(),
    )
}

/// [`recover_client_pair`] for the shared server certificate and key
/// (`server.key.new`), which [`install_server_cert`] switches the same way.
pub fn recover_server_pair(state: &StateDir) -> Result<()> {
    recover_pair(
        state,
        &state.server_key_pending(),
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
    let key = super::NodeKey::from_pem(&key_pem)?;
    let cert = super::load_certs(cert_path)?;
    let Some(cert) = cert.first() else {
        return Ok(());
    };
    if !super::cert_has_key(cert, &key)? {
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
    let cert = super::load_certs_from_pem(cert_pem)?;
    let new_key = super::NodeKey::from_pem(key.expose())
        .map_err(|e| Error::Certificate(format!("new server key: {e}")))?;
    if !super::cert_has_key(&cert, &new_key)? {
        return Err(Error::Certificate(
            "the new server certificate is not for the new server key".into(),
        ));
    }
    // As for the client pair: the key waits beside the old one until the
    // certificate is in place, so a crash between two writes never leaves a
    // certificate with another key (the daemon would refuse to start).
    state.write(
        &state.server_key_pending(),
        key.expose().as_bytes(),
        MODE_SECRET,
    )?;
    state.write(&state.server_pem(), cert_pem.as_bytes(), MODE_PUBLIC)?;
    recover_server_pair(state)
}
