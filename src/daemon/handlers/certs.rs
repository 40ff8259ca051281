//! A node's certificates: a new client key and its CSR, the signed client
//! certificate, the server certificate, the CA bundle. The daemon serves
//! with what was installed as soon as it is in place.

use std::sync::Arc;

use super::super::runtime::{load_client_facts, reload_certificates};
use super::super::server::Daemon;
use super::blocking;
use crate::core::Secret;
use crate::wire::{Reply, RpcError};

pub async fn prepare_client_key(daemon: &Daemon) -> Result<Reply, RpcError> {
    let state = daemon.state.clone();
    let name = daemon.identity.name.clone();
    let csr = blocking(move || crate::pki::pair::prepare_client_key(&state, &name)).await?;
    Ok(Reply::Csr(csr))
}

pub async fn install_client_cert(daemon: &Daemon, cert_pem: String) -> Result<Reply, RpcError> {
    let state = daemon.state.clone();
    blocking(move || crate::pki::pair::install_client_cert(&state, &cert_pem)).await?;
    match load_client_facts(&daemon.state) {
        Ok(facts) => daemon.client_cert.store(Arc::new(facts)),
        Err(e) => tracing::error!("new client certificate unreadable: {e}"),
    }
    tracing::info!("client certificate replaced");
    Ok(Reply::Done)
}

pub async fn install_server_cert(
    daemon: &Daemon,
    cert_pem: String,
    key: Secret,
) -> Result<Reply, RpcError> {
    let state = daemon.state.clone();
    blocking(move || crate::pki::pair::install_server_cert(&state, &cert_pem, &key)).await?;
    reload_certificates(daemon);
    Ok(Reply::Done)
}

pub async fn install_ca_bundle(daemon: &Daemon, ca_pem: String) -> Result<Reply, RpcError> {
    let state = daemon.state.clone();
    blocking(move || super::roles::install_ca_bundle(&state, &ca_pem)).await?;
    reload_certificates(daemon);
    Ok(Reply::Done)
}
