//! The one crypto provider (aws-lc-rs), passed explicitly to every TLS
//! configuration noded builds: rustls panics when it must pick between two
//! enabled providers on its own. Also what every configuration shares: the
//! protocol versions and the root store of the cluster CA(s).

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::core::Result;

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
pub fn versions(allow_tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    if allow_tls12 {
        rustls::ALL_VERSIONS
    } else {
        &TLS13_ONLY
    }
}

/// A root store holding exactly `ca_certs`.
pub fn roots(ca_certs: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for ca in ca_certs {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}
