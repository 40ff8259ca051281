//! TLS configurations for the daemon and for RPC clients.
//!
//! One crypto provider (aws-lc-rs), passed explicitly everywhere: rustls
//! panics when it must pick between two enabled providers on its own.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth::CandidateVerifier;
use crate::error::{Error, Result};
use crate::reload::CandidateMapHandle;

/// The crypto provider of every TLS configuration noded builds.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            // AES-128-GCM with SHA-256 first: measured, the SHA-384 key
            // schedule of AES-256-GCM costs about 8 % of a handshake where
            // SHA-512 has no hardware support; the other suites stay
            // available for peers that want them.
            provider.cipher_suites.sort_by_key(|s| {
                !matches!(s.suite(), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
            });
            Arc::new(provider)
        })
        .clone()
}

/// TLS versions the daemon and clients speak: 1.3 only, unless TLS 1.2 is
/// explicitly allowed.
fn versions(allow_tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    if allow_tls12 {
        rustls::ALL_VERSIONS
    } else {
        &TLS13_ONLY
    }
}

fn roots(ca_certs: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for ca in ca_certs {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

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

/// The RPC client's TLS configuration: verifies the server's chain to the
/// cluster CA and presents this node's client certificate.
pub fn client_config(
    ca_certs: &[CertificateDer<'static>],
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(false))?
        .with_root_certificates(roots(ca_certs)?)
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
