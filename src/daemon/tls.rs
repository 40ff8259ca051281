//! The daemon's TLS configuration: client certificates required and
//! checked by [`CandidateVerifier`], no session resumption.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::core::{Error, Result};
use crate::daemon::auth::CandidateVerifier;
use crate::daemon::reload::CandidateMapHandle;
use crate::pki::provider::{provider, roots, versions};

/// What the daemon's TLS configuration is made of.
#[derive(Debug)]
pub struct ServerMaterial {
    /// The cluster CA certificate(s): two during a CA rotation.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// The shared server certificate, followed by the CA certificate(s) so a
    /// joining node can check the chain against its token's CA pin.
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
}

/// The daemon's TLS configuration: client certificates required, checked
/// for a chain to the cluster CA and for a digest in the candidate map; no
/// session resumption, so every connection runs that check.
pub fn server_config(
    material: ServerMaterial,
    map: &CandidateMapHandle,
    anonymous: Arc<AtomicBool>,
    allow_tls12: bool,
) -> Result<Arc<ServerConfig>> {
    let chain = WebPkiClientVerifier::builder_with_provider(roots(&material.ca_certs)?, provider())
        .build()
        .map_err(|e| Error::Invalid(format!("client verifier: {e}")))?;
    let verifier = Arc::new(CandidateVerifier::new(chain, map.clone(), anonymous));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(allow_tls12))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.server_chain, material.server_key)?;
    // rustls skips the client verifier on a resumed session: no stateful
    // session cache, no tickets, so a removed candidate cannot resume.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    // Our suite order, not the client's: OpenSSL clients list AES-256-GCM
    // first, and its SHA-384 key schedule costs more per handshake.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}
