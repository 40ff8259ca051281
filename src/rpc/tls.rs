//! The RPC client's TLS configurations: the cluster CA(s) as the only
//! roots, TLS 1.3, no resumption.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::identity::{NodeServerVerifier, RecordedServers};
use crate::core::Result;
use crate::pki::provider::{provider, roots, versions};

/// The RPC client's TLS configuration: verifies the server's chain to the
/// cluster CA, its name and its recorded digest ([`NodeServerVerifier`]),
/// and presents this node's client certificate.
pub fn client_config(
    ca_certs: &[CertificateDer<'static>],
    recorded: RecordedServers,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(false))?
        .dangerous()
        .with_custom_certificate_verifier(NodeServerVerifier::new(roots(ca_certs)?, recorded)?)
        .with_client_auth_cert(client_chain, client_key)?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A client configuration that presents no certificate (for tests of refusal
/// and, later, the join request).
pub fn anonymous_client_config(ca_certs: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(false))?
        .with_root_certificates(roots(ca_certs)?)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}
