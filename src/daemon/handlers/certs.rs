//! A node's certificates: a new client or server key and its CSR, the
//! certificate the master signed for it, the CA bundle. The daemon uses
//! what was installed as soon as it is in place.

use std::sync::Arc;

use super::super::runtime::{load_client_facts, reload_certificates};
use super::super::server::Daemon;
use super::blocking;
use crate::pki::pair::Pair;
use crate::wire::{Reply, RpcError};

/// `prepare-client-key` and `prepare-server-key`: a new key waits on the
/// node; the master gets a CSR for it.
pub async fn prepare_key(daemon: &Daemon, pair: Pair) -> Result<Reply, RpcError> {
    let state = daemon.state.clone();
    let name = daemon.identity.name.clone();
    let csr = blocking(move || crate::pki::pair::prepare_key(&state, pair, &name)).await?;
    Ok(Reply::Csr(csr))
}

/// `install-client-cert` and `install-server-cert`: the signed certificate
/// for the pending key; the daemon uses it at once.
pub async fn install_cert(
    daemon: &Daemon,
    pair: Pair,
    cert_pem: String,
) -> Result<Reply, RpcError> {
    let state = daemon.state.clone();
    blocking(move || crate::pki::pair::install_cert(&state, pair, &cert_pem)).await?;
    match pair {
        Pair::Client => match load_client_facts(&daemon.state) {
            Ok(facts) => daemon.client_cert.store(Arc::new(facts)),
            Err(e) => tracing::error!("new client certificate unreadable: {e}"),
        },
        Pair::Server => reload_certificates(daemon),
    }
    tracing::info!(
        "{} certificate replaced",
        match pair {
            Pair::Client => "client",
            Pair::Server => "server",
        }
    );
    Ok(Reply::Done)
}

/// `install-ca-bundle`.
pub async fn install_ca_bundle(daemon: &Daemon, ca_pem: String) -> Result<Reply, RpcError> {
    let state = daemon.state.clone();
    blocking(move || super::roles::install_ca_bundle(&state, &ca_pem)).await?;
    reload_certificates(daemon);
    Ok(Reply::Done)
}
