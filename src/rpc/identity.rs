//! Whom an RPC client reached (SPEC §9.1): the server's chain to the
//! cluster CA, its name, AND its certificate's digest as the cluster
//! recorded it for that node (`ssconf_node_server_certs`). A node that
//! answers on another node's address with its own valid certificate is
//! refused in the handshake, before a single application byte is sent.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use ssconf::{CandidateMap, DigestAlgorithm, Ssconf, SsconfKey};

use crate::core::{Error, Result};
use crate::state::StateDir;

/// The server certificates the cluster recorded, `<uuid>=<digest>`, shared
/// by every connection of a client and replaced when the cluster changes.
#[derive(Debug, Clone, Default)]
pub struct RecordedServers(Arc<ArcSwap<CandidateMap>>);

impl RecordedServers {
    /// The set in this node's ssconf (empty when there is none yet: then
    /// no server is accepted).
    pub fn from_state(state: &StateDir) -> Result<Self> {
        let path = state
            .ssconf_dir()
            .join(SsconfKey::NodeServerCerts.file_name());
        let map = match CandidateMap::load(&path) {
            Ok(map) => map,
            Err(ssconf::SsconfError::Missing { .. }) => CandidateMap::empty(),
            Err(e) => return Err(e.into()),
        };
        Ok(RecordedServers(Arc::new(ArcSwap::from_pointee(map))))
    }

    /// Trusts exactly `map` from now on.
    pub fn set(&self, map: CandidateMap) {
        self.0.store(Arc::new(map));
    }

    /// Trusts what `set` records.
    pub fn set_from(&self, set: &Ssconf) {
        self.set(set.node_server_certs.clone());
    }
}

/// Checks the chain and name with webpki, then the recorded digest.
pub struct NodeServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    recorded: RecordedServers,
}

impl fmt::Debug for NodeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeServerVerifier").finish_non_exhaustive()
    }
}

impl NodeServerVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        recorded: RecordedServers,
    ) -> Result<Arc<NodeServerVerifier>> {
        let webpki =
            WebPkiServerVerifier::builder_with_provider(roots, crate::pki::provider::provider())
                .build()
                .map_err(|e| Error::Invalid(format!("server verifier: {e}")))?;
        Ok(Arc::new(NodeServerVerifier { webpki, recorded }))
    }
}

/// The server's certificate is valid but not the one recorded for the node.
#[derive(Debug)]
pub struct NotRecorded {
    pub name: String,
    pub digest: String,
}

impl fmt::Display for NotRecorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "its certificate (sha256 {}) is not the one the cluster recorded for {}: another node, or an impostor, answers at this address",
            self.digest, self.name
        )
    }
}

impl std::error::Error for NotRecorded {}

/// The uuid in a certificate's `urn:uuid:` URI SAN.
pub fn uuid_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => {
            uri.strip_prefix("urn:uuid:").map(str::to_owned)
        }
        _ => None,
    })
}

/// Whether `map` records `cert` for the uuid the certificate names.
pub fn is_recorded(map: &CandidateMap, cert: &CertificateDer<'_>) -> bool {
    let digest = DigestAlgorithm::Sha256.digest(cert);
    let Some(uuid) = uuid_of(cert) else {
        return false;
    };
    map.entries()
        .iter()
        .any(|(u, d)| *d == digest && *u == uuid)
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // The chain, the validity, serverAuth and the node's name first.
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if is_recorded(&self.recorded.0.load(), end_entity) {
            return Ok(verified);
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(NotRecorded {
                name: server_name.to_str().into_owned(),
                digest: DigestAlgorithm::Sha256.digest(end_entity).to_string(),
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
