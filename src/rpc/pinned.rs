//! The joining node's server check: the master's chain must end in the CA
//! the join token pins (by the SHA-256 of its DER), the server certificate
//! must chain to that CA for serverAuth, and it must name (by its
//! `urn:uuid:` SAN) the master the token was made on. Nothing is sent
//! before this check passes.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use ssconf::DigestAlgorithm;

use crate::core::Result;
use crate::pki::provider::{provider, versions};

/// A client configuration with no client certificate that trusts only a
/// server whose chain ends in the CA with SHA-256 `pin` and whose
/// certificate names the master `master_uuid`.
pub fn pinned_client_config(pin: [u8; 32], master_uuid: &str) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(false))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            pin,
            master: master_uuid.to_owned(),
            provider: provider(),
        }))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Checks the master's chain against the token's CA pin, then verifies the
/// server certificate against that CA like any RPC client does.
pub struct PinnedCa {
    pin: [u8; 32],
    master: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl fmt::Debug for PinnedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCa").finish_non_exhaustive()
    }
}

/// The master's CA is not the one the token pins.
#[derive(Debug)]
struct PinMismatch;

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the server's CA does not match the CA pin in the join token (wrong address, or someone in the middle); nothing was sent",
        )
    }
}

impl std::error::Error for PinMismatch {}

/// The server is of the pinned CA but is not the master that made the token.
#[derive(Debug)]
struct NotTheMaster;

impl fmt::Display for NotTheMaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the server at the token's address is a node of the cluster but not the master that made the token; nothing was sent",
        )
    }
}

impl std::error::Error for NotTheMaster {}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|c| DigestAlgorithm::Sha256.digest(c).as_bytes() == self.pin)
            .ok_or_else(|| rustls::Error::Other(rustls::OtherError(Arc::new(PinMismatch))))?;
        crate::pki::chains_to_for(
            end_entity,
            std::slice::from_ref(pinned),
            now,
            webpki::KeyUsage::server_auth(),
        )
        .map_err(|e| rustls::Error::General(format!("the server certificate: {e}")))?;
        if super::identity::uuid_of(end_entity).as_deref() != Some(self.master.as_str()) {
            return Err(rustls::Error::Other(rustls::OtherError(Arc::new(
                NotTheMaster,
            ))));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
