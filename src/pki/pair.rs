//! A node's two key and certificate pairs (client and server), switched
//! crash-safely: a new key waits beside the old one (`*.key.new`) until its
//! certificate is in place, and every reader finishes an interrupted switch
//! first. Both keys are made on the node; only CSRs leave it.

use std::path::{Path, PathBuf};

use crate::core::{Error, Result};
use crate::state::{StateDir, MODE_PUBLIC, MODE_SECRET};

/// Which of a node's two pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    /// `client.pem`/`client.key`: what the node presents when it calls.
    Client,
    /// `server.pem`/`server.key`: what the node serves with.
    Server,
}

impl Pair {
    fn key(self, state: &StateDir) -> PathBuf {
        match self {
            Pair::Client => state.client_key(),
            Pair::Server => state.server_key(),
        }
    }
    fn cert(self, state: &StateDir) -> PathBuf {
        match self {
            Pair::Client => state.client_pem(),
            Pair::Server => state.server_pem(),
        }
    }
    fn pending(self, state: &StateDir) -> PathBuf {
        match self {
            Pair::Client => state.client_key_pending(),
            Pair::Server => state.server_key_pending(),
        }
    }
    fn usage(self) -> webpki::KeyUsage {
        match self {
            Pair::Client => webpki::KeyUsage::client_auth(),
            Pair::Server => webpki::KeyUsage::server_auth(),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Pair::Client => "client",
            Pair::Server => "server",
        }
    }
}

/// Makes a new key for `pair`, kept as `*.key.new` until its certificate
/// arrives; returns a CSR for it.
pub fn prepare_key(state: &StateDir, pair: Pair, node_name: &str) -> Result<String> {
    let key = super::NodeKey::generate()?;
    state.write(
        &pair.pending(state),
        key.to_pem().expose().as_bytes(),
        MODE_SECRET,
    )?;
    key.csr(node_name)
}

/// Installs a certificate for the pending key of `pair`: checks that it is
/// for that key, for that use, and chains to a CA this node trusts, then
/// switches.
pub fn install_cert(state: &StateDir, pair: Pair, cert_pem: &str) -> Result<()> {
    let pending = pair.pending(state);
    let key_pem = std::fs::read_to_string(&pending).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid(format!(
                "no pending {} key; ask for a CSR first",
                pair.name()
            ))
        } else {
            Error::io(&pending)(e)
        }
    })?;
    let key = super::NodeKey::from_pem(&key_pem)?;
    let cert = super::load_certs_from_pem(cert_pem)?;
    let cas = super::load_certs(&state.ca_pem())?;
    super::check_certificate(&cert, &cas, &key, pair.usage())?;
    switch(state, pair, cert_pem)
}

/// Switches `pair` to the pending key and `cert_pem`.
///
/// Two files cannot be replaced in one step, so: the certificate replaces
/// the old one, then the pending key is renamed over the old key. A crash in
/// between leaves the new certificate with the pending key beside it, which
/// [`recover`] finishes before the pair is next used.
pub fn switch(state: &StateDir, pair: Pair, cert_pem: &str) -> Result<()> {
    state.write(&pair.cert(state), cert_pem.as_bytes(), MODE_PUBLIC)?;
    recover(state, pair)
}

/// [`switch`] for the client pair.
pub fn switch_client_pair(state: &StateDir, cert_pem: &str) -> Result<()> {
    switch(state, Pair::Client, cert_pem)
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

/// Finishes an interrupted [`switch_client_pair`].
pub fn recover_client_pair(state: &StateDir) -> Result<()> {
    recover(state, Pair::Client)
}

/// Finishes an interrupted switch of the server pair.
pub fn recover_server_pair(state: &StateDir) -> Result<()> {
    recover(state, Pair::Server)
}

/// Finishes an interrupted [`switch`]: if the pending key is the one the
/// certificate was issued for, it becomes the key. A pending key whose
/// certificate never arrived is left alone (the old pair still matches).
pub fn recover(state: &StateDir, pair: Pair) -> Result<()> {
    let pending = pair.pending(state);
    let Ok(key_pem) = std::fs::read_to_string(&pending) else {
        return Ok(());
    };
    let key = super::NodeKey::from_pem(&key_pem)?;
    let cert = super::load_certs(&pair.cert(state))?;
    let Some(cert) = cert.first() else {
        return Ok(());
    };
    if !super::cert_has_key(cert, &key)? {
        return Ok(());
    }
    rename_durably(state.root(), &pending, &pair.key(state))
}

fn rename_durably(dir: &Path, from: &Path, to: &Path) -> Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => {}
        // Another process (the daemon, a concurrent nodectl) finished it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(from)(e)),
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}
