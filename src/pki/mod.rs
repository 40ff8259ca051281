//! The cluster's X.509 material: the CA, each node's own server
//! certificate and its client certificate (both signed from CSRs made on
//! the node), and their digests.
//!
//! Every key is ECDSA P-256. Leaves carry `CA:FALSE` and an extended key
//! usage (serverAuth or clientAuth); serials are 127 random bits. When the CA
//! signs a CSR it takes only the subject name and public key from it and sets
//! every extension itself, so a CSR cannot ask for `CA:TRUE`.

use std::fmt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use ssconf::{CertDigest, DigestAlgorithm};
use time::{Duration, OffsetDateTime};

use crate::core::Secret;
use crate::core::{Error, Result};

pub mod hsm;
pub mod keystore;
pub mod pair;
pub mod provider;

fn cert_error(e: rcgen::Error) -> Error {
    Error::Certificate(e.to_string())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte: a 127-bit DER INTEGER.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // Tolerate an hour of clock skew between nodes.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

fn leaf_params(
    name: DistinguishedName,
    days: u32,
    usage: ExtendedKeyUsagePurpose,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    params
}

/// A node's private key (ECDSA P-256), generated on that node.
pub struct NodeKey(KeyPair);

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(...)")
    }
}

impl NodeKey {
    /// A fresh P-256 key.
    pub fn generate() -> Result<Self> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(NodeKey)
            .map_err(cert_error)
    }

    /// Loads a key from PEM text.
    pub fn from_pem(pem: &str) -> Result<Self> {
        KeyPair::from_pem(pem).map(NodeKey).map_err(cert_error)
    }

    /// The key as PKCS#8 PEM.
    pub fn to_pem(&self) -> Secret {
        Secret::new(self.0.serialize_pem())
    }

    /// A CSR for this key, naming `node_name`. The master takes only the
    /// public key from it: the same CSR serves a client or a server
    /// certificate.
    pub fn csr(&self, node_name: &str) -> Result<String> {
        self.client_csr(node_name)
    }

    /// A CSR for a client certificate naming `node_name`.
    pub fn client_csr(&self, node_name: &str) -> Result<String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, node_name);
        params
            .serialize_request(&self.0)
            .and_then(|csr| csr.pem())
            .map_err(cert_error)
    }
}

/// The CA's private key: a PEM file (`ca.key`) or a key inside a PKCS#11
/// token. An enum, not a trait object: signing is static dispatch.
pub enum CaKey {
    File(KeyPair),
    Token(hsm::TokenKey),
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaKey::File(_) => f.write_str("CaKey::File(...)"),
            CaKey::Token(key) => write!(f, "CaKey::{key:?}"),
        }
    }
}

impl rcgen::PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::File(key) => key.der_bytes(),
            CaKey::Token(key) => key.der_bytes(),
        }
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            CaKey::File(key) => key.algorithm(),
            CaKey::Token(key) => key.algorithm(),
        }
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::File(key) => key.sign(msg),
            CaKey::Token(key) => key.sign(msg),
        }
    }
}

/// The certificate generator: signs node CSRs into client certificates and
/// issues the shared server certificate, with the cluster CA.
pub trait CertificateSigner {
    /// The signing CA's certificate, PEM.
    fn cert_pem(&self) -> &str;

    /// The signing CA's certificate, DER.
    fn cert_der(&self) -> &CertificateDer<'static>;

    /// Signs a node's CSR into the leaf `role` describes, valid from
    /// `not_before` to `not_after`. Only the CSR's public key is used
    /// (after checking its signature, which proves the requester holds the
    /// key, and that the key itself is P-256); the subject and every
    /// extension are set here from `role`.
    fn sign_csr_between(
        &self,
        csr_pem: &str,
        role: &LeafRole<'_>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<String>;

    /// [`Self::sign_csr_between`] for `days` from now (an hour back, for
    /// clocks that differ a little).
    fn sign_csr(
        &self,
        csr_pem: &str,
        role: &LeafRole<'_>,
        lifetime: impl Into<Lifetime>,
    ) -> Result<String> {
        let now = OffsetDateTime::now_utc();
        let Lifetime(lifetime) = lifetime.into();
        let lifetime = Duration::try_from(lifetime)
            .map_err(|e| Error::Certificate(format!("certificate lifetime: {e}")))?;
        self.sign_csr_between(csr_pem, role, now - Duration::hours(1), now + lifetime)
    }

    /// A client certificate for node `node` (CN = its name, clientAuth).
    fn sign_client_csr(
        &self,
        csr_pem: &str,
        node: &str,
        lifetime: impl Into<Lifetime>,
    ) -> Result<String> {
        self.sign_csr(csr_pem, &LeafRole::Client { node }, lifetime)
    }

    /// A server certificate for node `node` with uuid `uuid` (CN = its
    /// name; SANs `DNS:<name>` and `URI:urn:uuid:<uuid>`; serverAuth).
    fn sign_server_csr(
        &self,
        csr_pem: &str,
        node: &str,
        uuid: &str,
        lifetime: impl Into<Lifetime>,
    ) -> Result<String> {
        self.sign_csr(csr_pem, &LeafRole::Server { node, uuid }, lifetime)
    }
}

/// How long a signed leaf is valid, from now: a duration, or whole days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime(pub std::time::Duration);

impl From<std::time::Duration> for Lifetime {
    fn from(d: std::time::Duration) -> Self {
        Lifetime(d)
    }
}

impl From<u32> for Lifetime {
    /// Days.
    fn from(days: u32) -> Self {
        Lifetime(std::time::Duration::from_secs(u64::from(days) * 86_400))
    }
}

/// What a leaf certificate the CA signs is for; everything in it comes
/// from here, nothing from the CSR but its public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafRole<'a> {
    /// A node's client certificate.
    Client { node: &'a str },
    /// A node's own server certificate.
    Server { node: &'a str, uuid: &'a str },
    /// A user of the remote API: CN `user:NAME`, clientAuth. Its digest is
    /// never in the candidate map, so the RPC port never admits it.
    User { name: &'a str },
}

impl LeafRole<'_> {
    /// The certificate's parameters, without validity and key.
    fn params(&self) -> Result<CertificateParams> {
        let (node, usage) = match *self {
            LeafRole::Client { node } => (node.to_owned(), ExtendedKeyUsagePurpose::ClientAuth),
            LeafRole::Server { node, .. } => (node.to_owned(), ExtendedKeyUsagePurpose::ServerAuth),
            LeafRole::User { name } => {
                (format!("user:{name}"), ExtendedKeyUsagePurpose::ClientAuth)
            }
        };
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, node);
        let mut params = leaf_params(name, 1, usage);
        if let LeafRole::Server { node, uuid } = *self {
            let dns = node.try_into().map_err(|e: rcgen::Error| {
                Error::Certificate(format!("node name {node:?}: {e}"))
            })?;
            let urn = format!("urn:uuid:{uuid}")
                .try_into()
                .map_err(|e: rcgen::Error| Error::Certificate(format!("uuid {uuid:?}: {e}")))?;
            params.subject_alt_names = vec![SanType::DnsName(dns), SanType::URI(urn)];
        }
        Ok(params)
    }
}

/// The CSR's public key must be an uncompressed P-256 point under
/// id-ecPublicKey with the prime256v1 curve: checked on the key itself, not
/// on the signature's algorithm (a P-384 key signed with ecdsa-with-SHA256
/// would otherwise pass and make a broken certificate).
fn check_csr_key_is_p256(csr_pem: &str) -> Result<()> {
    use x509_parser::prelude::FromDer;
    let invalid = |why: &str| Error::Certificate(format!("certificate signing request: {why}"));
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| invalid(&format!("not a PEM CSR: {e}")))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| invalid(&format!("unparsable: {e}")))?;
    match p256_point(&csr.certification_request_info.subject_pki) {
        Some(_) => Ok(()),
        None => Err(invalid("the key is not ECDSA P-256")),
    }
}

/// A CSR the cluster signs: PEM, parsable, self-signed, an ECDSA P-256
/// key signed with ECDSA P-256 SHA-256. Its errors are the requester's to
/// fix: they name nothing of the signer.
pub fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams> {
    check_csr_key_is_p256(csr_pem)?;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| Error::Certificate(format!("certificate signing request: {e}")))?;
    if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(Error::Certificate(
            "certificate signing request: not signed with ECDSA P-256 SHA-256".into(),
        ));
    }
    Ok(csr)
}

/// The key of `spki` as an uncompressed P-256 point, if it is one under
/// id-ecPublicKey with the prime256v1 curve; `None` for any other key.
pub fn p256_point<'a>(spki: &'a x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<&'a [u8]> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let point: &[u8] = &spki.subject_public_key.data;
    (spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && curve.as_ref() == Some(&OID_EC_P256)
        && point.len() == 65
        && point.first() == Some(&4))
    .then_some(point)
}

/// The cluster certificate authority: its certificate and signing key.
pub struct CertificateAuthority<K = CaKey> {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: K,
}

impl<K> fmt::Debug for CertificateAuthority<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert", &CertDigestDisplay(&self.cert_der))
            .field("key", &"...")
            .finish()
    }
}

struct CertDigestDisplay<'a>(&'a [u8]);
impl fmt::Debug for CertDigestDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", DigestAlgorithm::Sha256.digest(self.0))
    }
}

/// The raw public key in a certificate's SubjectPublicKeyInfo.
fn public_key_of(cert_der: &[u8]) -> Result<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| Error::Certificate(format!("unparsable CA certificate: {e}")))?;
    Ok(parsed.public_key().subject_public_key.data.to_vec())
}

impl CertificateAuthority<CaKey> {
    /// A new self-signed CA for `cluster_name`, valid `days`, with a new
    /// key in memory (for `ca.key`).
    pub fn generate(cluster_name: &str, days: u32) -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_error)?;
        Self::self_signed(cluster_name, days, CaKey::File(key))
    }

    /// Loads the CA from its certificate and key PEM text.
    ///
    /// `cert_pem` may hold several CA certificates (during a CA rotation);
    /// the one the key belongs to is the signing CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_error)?;
        Self::with_key(cert_pem, CaKey::File(key))
    }

    /// The CA private key, PEM; `None` when it lives in a token.
    pub fn key_pem(&self) -> Option<Secret> {
        match &self.key {
            CaKey::File(key) => Some(Secret::new(key.serialize_pem())),
            CaKey::Token(_) => None,
        }
    }
}

impl<K: rcgen::SigningKey> CertificateAuthority<K> {
    /// A new self-signed CA certificate for `key`.
    pub fn self_signed(cluster_name: &str, days: u32, key: K) -> Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("noded cluster CA {cluster_name}"),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, days);
        let cert = params.self_signed(&key).map_err(cert_error)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// The CA whose certificate in `cert_pem` (one or several) carries
    /// `key`'s public key.
    pub fn with_key(cert_pem: &str, key: K) -> Result<Self> {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Certificate(format!("CA certificate: {e}")))?;
        for cert_der in certs {
            if public_key_of(&cert_der)? == key.der_bytes() {
                let one = pem_of(&cert_der);
                return Ok(CertificateAuthority {
                    cert_pem: one,
                    cert_der,
                    key,
                });
            }
        }
        Err(Error::Certificate(
            "the CA key does not belong to any CA certificate in ca.pem".into(),
        ))
    }

    /// Fails unless the key is the one the CA certificate was made for.
    pub fn check_key_matches(&self) -> Result<()> {
        if public_key_of(&self.cert_der)? != self.key.der_bytes() {
            return Err(Error::Certificate(
                "the CA key does not belong to the CA certificate (ca.pem)".into(),
            ));
        }
        Ok(())
    }

    fn issuer(&self) -> Result<Issuer<'_, &K>> {
        Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(cert_error)
    }
}

impl<K: rcgen::SigningKey> CertificateSigner for CertificateAuthority<K> {
    fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    fn sign_csr_between(
        &self,
        csr_pem: &str,
        role: &LeafRole<'_>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<String> {
        let csr = parse_csr(csr_pem)?;
        let mut params = role.params()?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(cert_error)?;
        Ok(cert.pem())
    }
}

/// A DER certificate as PEM text.
pub fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// What the tools show of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject as `CN=..., O=...`.
    pub subject: String,
    /// `notAfter`, in Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    /// Parses the fields the tools show from a certificate's DER.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::Certificate(format!("unparsable certificate: {e}")))?;
        Ok(CertInfo {
            subject: cert.subject().to_string(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// The subject of a DER certificate, or `?` when it does not parse (for logs).
pub fn subject_of(der: &[u8]) -> String {
    CertInfo::from_der(der)
        .map(|i| i.subject)
        .unwrap_or_else(|_| "?".into())
}

/// The first certificate of PEM text, DER.
pub fn load_certs_from_pem(pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Pem {
        path: "(received)".into(),
        reason: format!("no certificate: {e}"),
    })
}

/// Every certificate of PEM text (none is an error), DER.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(pem.as_bytes(), Path::new("(received)"))
}

/// Whether `cert` carries `key`'s public key.
pub fn cert_has_key(cert: &CertificateDer<'_>, key: &NodeKey) -> Result<bool> {
    use rcgen::PublicKeyData;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::Certificate(format!("unparsable certificate: {e}")))?;
    Ok(parsed.public_key().subject_public_key.data.as_ref() == key.0.der_bytes())
}

/// Checks a certificate the CA signed for a node: it is for `key`, and
/// chains to one of `cas` for `usage` now. A certificate not valid yet says
/// so with both clocks: the signer's is ahead of this node's.
pub fn check_certificate(
    cert: &CertificateDer<'_>,
    cas: &[CertificateDer<'_>],
    key: &NodeKey,
    usage: webpki::KeyUsage,
) -> Result<()> {
    use rcgen::PublicKeyData;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::Certificate(format!("unparsable certificate: {e}")))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.0.der_bytes() {
        return Err(Error::Certificate(
            "the signed certificate is not for this node's key".into(),
        ));
    }
    let now = rustls_pki_types::UnixTime::now();
    chains_to_for(cert, cas, now, usage).map_err(|e| match e {
        webpki::Error::CertNotValidYet { .. } => Error::Certificate(format!(
            "the signed certificate is not valid before {}, and this node's clock says {}: clocks differ; fix the clock of the signer or of this node",
            crate::core::time::rfc3339(parsed.validity().not_before.timestamp()),
            crate::core::time::rfc3339(now.as_secs() as i64)
        )),
        e => Error::Certificate(format!(
            "the signed certificate does not chain to the cluster CA: {e}"
        )),
    })
}

/// [`check_certificate`] for a client certificate and one CA.
pub fn check_client_certificate(
    cert: &CertificateDer<'_>,
    ca: &CertificateDer<'_>,
    key: &NodeKey,
) -> Result<()> {
    check_certificate(
        cert,
        std::slice::from_ref(ca),
        key,
        webpki::KeyUsage::client_auth(),
    )
}

/// Checks that `cert` is a client certificate issued by one of `cas`, valid
/// at `when`.
pub fn chains_to(
    cert: &CertificateDer<'_>,
    cas: &[CertificateDer<'_>],
    when: rustls_pki_types::UnixTime,
) -> std::result::Result<(), webpki::Error> {
    chains_to_for(cert, cas, when, webpki::KeyUsage::client_auth())
}

/// Whether `cert` chains to one of `cas` at `when`, for `usage`.
pub fn chains_to_for(
    cert: &CertificateDer<'_>,
    cas: &[CertificateDer<'_>],
    when: rustls_pki_types::UnixTime,
    usage: webpki::KeyUsage,
) -> std::result::Result<(), webpki::Error> {
    let anchors = cas
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    webpki::EndEntityCert::try_from(cert)?
        .verify_for_usage(
            provider::provider().signature_verification_algorithms.all,
            &anchors,
            &[],
            when,
            usage,
            None,
            None,
        )
        .map(|_| ())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(&crate::state::read_file(path)?, path)
}

/// Every certificate of PEM bytes (none is an error naming `source`).
fn parse_certs(pem: &[u8], source: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            path: source.to_path_buf(),
            reason: format!("broken PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: source.to_path_buf(),
            reason: "no certificate found (expected a PEM `CERTIFICATE` block)".into(),
        });
    }
    Ok(certs)
}

/// Reads the private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = crate::state::read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| Error::Pem {
        path: path.to_path_buf(),
        reason: format!("no usable private key: {e}"),
    })
}

/// The digest of a certificate, as the candidate map records it.
pub fn digest(cert: &CertificateDer<'_>, algorithm: DigestAlgorithm) -> CertDigest {
    algorithm.digest(cert.as_ref())
}

/// Digest of the first certificate in a PEM file (tests and tools).
pub fn file_digest(path: &Path, alg: DigestAlgorithm) -> Result<ssconf::CertDigest> {
    let certs = load_certs(path)?;
    certs
        .first()
        .map(|c| digest(c, alg))
        .ok_or_else(|| Error::Pem {
            path: path.to_path_buf(),
            reason: "no certificate".into(),
        })
}
