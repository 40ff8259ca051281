//! The authorization decision: who may issue RPCs to this node.
//!
//! A client is admitted only if BOTH hold:
//! 1. its certificate chains to the cluster CA (rustls-webpki, which also
//!    checks validity dates and the clientAuth purpose), and
//! 2. the certificate's digest is an entry of the candidate map.
//!
//! The check runs inside the TLS handshake ([`CandidateVerifier`]), so a
//! refused client gets a TLS alert: `unknown_ca` or `certificate_expired` for
//! a bad chain, `access_denied` for a certificate not in the map,
//! `certificate_required` for none at all. The map is read from an
//! [`arc_swap::ArcSwap`]: one atomic load and one hash per handshake, no lock
//! and no file I/O.
//!
//! The verifier cannot see the peer's address, but the denial log must name
//! it. So the verifier leaves its [`Verdict`] in a task-local slot
//! ([`HANDSHAKE`]) that the connection task (which knows the peer) reads
//! right after the handshake.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use ssconf::{CandidateMap, CertDigest, DigestAlgorithm};

use crate::daemon::budget::Exhausted;
use crate::daemon::reload::CandidateMapHandle;

/// Why a client was refused or disconnected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenialReason {
    /// The client presented no certificate.
    NoCertificate,
    /// The certificate does not chain to the cluster CA, is expired, or is
    /// not for client authentication.
    Chain(String),
    /// The certificate is valid but its digest is not in the candidate map.
    NotInMap,
    /// The candidate map changed and no longer holds the certificate's digest.
    RemovedFromMap,
    /// The handshake failed for another reason (protocol, timeout).
    Handshake(String),
    /// A client without a certificate asked for something other than a join.
    AnonymousRequest(String),
    /// A join request was refused (bad token, duplicate name, ...).
    JoinRefused(String),
    /// On the remote API: the certificate is not an active user's.
    NotAUser,
    /// A budget was full: closed before any TLS was spoken, or right after
    /// the handshake when no connection slot was free.
    Exhausted(Exhausted),
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenialReason::NoCertificate => f.write_str("no client certificate"),
            DenialReason::Chain(e) => write!(f, "certificate not accepted: {e}"),
            DenialReason::NotInMap => {
                f.write_str("certificate digest not in the candidate map (not a master candidate)")
            }
            DenialReason::RemovedFromMap => {
                f.write_str("certificate digest removed from the candidate map; connection closed")
            }
            DenialReason::Handshake(e) => write!(f, "handshake failed: {e}"),
            DenialReason::JoinRefused(why) => write!(f, "join refused: {why}"),
            DenialReason::NotAUser => f.write_str(
                "not the certificate of an active API user (revoked, expired or unknown)",
            ),
            DenialReason::Exhausted(budget) => write!(f, "closed: {budget}"),
            DenialReason::AnonymousRequest(p) => {
                write!(
                    f,
                    "client without a certificate called {p}; only join is allowed"
                )
            }
        }
    }
}

/// A refused client, as the denial log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenialReason,
    /// The certificate's subject, if it presented one.
    pub subject: Option<String>,
    /// The certificate's digest in the map's algorithm (SHA-256 if empty).
    pub digest: Option<CertDigest>,
}

impl Denial {
    /// A denial known only by its reason (no certificate was seen).
    pub fn anonymous(reason: DenialReason) -> Self {
        Denial {
            reason,
            subject: None,
            digest: None,
        }
    }
}

/// A client the map admits: the entry's uuid names it in logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub uuid: String,
    pub digest: CertDigest,
}

/// The outcome of the authorization check for one handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Admitted(Admission),
    Denied(Denial),
}

/// A client's end-entity certificate with its SHA-256 digest, computed once
/// per handshake: the chain-check cache is keyed by it and the candidate
/// map's digests are SHA-256 unless the map came from Ganeti (SHA-1).
#[derive(Debug, Clone, Copy)]
pub struct PeerCertificate<'a> {
    pub der: &'a [u8],
    pub sha256: CertDigest,
}

impl<'a> PeerCertificate<'a> {
    /// Hashes `der` (SHA-256) once.
    pub fn new(der: &'a [u8]) -> Self {
        PeerCertificate {
            der,
            sha256: DigestAlgorithm::Sha256.digest(der),
        }
    }

    /// The certificate's digest with `algorithm`; hashes only for SHA-1.
    pub fn digest(&self, algorithm: DigestAlgorithm) -> CertDigest {
        match algorithm {
            DigestAlgorithm::Sha256 => self.sha256,
            other => other.digest(self.der),
        }
    }
}

/// The decision, given the chain check's result: chain first (a certificate
/// we did not sign is refused whatever its digest), then the map.
pub fn authorize(
    chain: Result<(), rustls::Error>,
    map: &CandidateMap,
    cert: &PeerCertificate<'_>,
) -> Verdict {
    let log_digest = || {
        let alg = map.algorithms().next().unwrap_or(DigestAlgorithm::Sha256);
        Some(cert.digest(alg))
    };
    if let Err(e) = chain {
        return Verdict::Denied(Denial {
            reason: DenialReason::Chain(e.to_string()),
            subject: Some(crate::pki::subject_of(cert.der)),
            digest: log_digest(),
        });
    }
    match map.lookup_by(|alg| cert.digest(alg)) {
        Some((uuid, digest)) => Verdict::Admitted(Admission {
            uuid: uuid.to_owned(),
            digest,
        }),
        None => Verdict::Denied(Denial {
            reason: DenialReason::NotInMap,
            subject: Some(crate::pki::subject_of(cert.der)),
            digest: log_digest(),
        }),
    }
}

tokio::task_local! {
    /// What [`CandidateVerifier`] leaves for the rest of one connection's
    /// handshake.
    pub static HANDSHAKE: RefCell<HandshakeNotes>;
}

/// What the verifier learnt of a connection's client certificate.
#[derive(Debug, Default)]
pub struct HandshakeNotes {
    /// The verdict, for the connection task (which knows the peer).
    pub verdict: Option<Verdict>,
    /// The parsed key of the certificate whose chain the verifier
    /// accepted, for the client's CertificateVerify later in the same
    /// handshake.
    key: Option<Arc<ClientKey>>,
}

/// Client certificates whose chain to the CA verified, by the SHA-256 of
/// their DER, each with the exact intermediates sent with it, its validity
/// window and its public key parsed once.
///
/// The cluster's clients are few and connect again and again with the same
/// certificate; for each of them the chain check (one ECDSA verification
/// and a certificate parse, about a sixth of a handshake's CPU) gives the
/// same answer every time, as long as the trust anchors are the same and
/// the time is inside the certificate's validity. So a success is
/// remembered: by exact DER (a re-encoded certificate is another entry;
/// the intermediates are compared byte for byte), in the verifier of one
/// TLS configuration (a CA change builds a new verifier, with an empty
/// cache), and only with the validity re-checked at each use. The key is
/// the digest the map check needs anyway, so a handshake hashes the
/// certificate once. Proof of possession (the client's CertificateVerify)
/// and the map check still run on every handshake; a failure is never
/// remembered. Reads are one atomic load and a hash lookup; an insertion
/// copies the map (a new certificate is rare), and the cache holds at most
/// [`ChainCache::CAPACITY`] certificates, starting over when full.
///
/// The certificate's key, when it is ECDSA P-256 (the cluster's keys are),
/// is kept parsed too, for the client's CertificateVerify: see
/// [`CandidateVerifier::verify_tls13_signature`].
#[derive(Debug, Default)]
struct ChainCache {
    verified: arc_swap::ArcSwap<std::collections::HashMap<CertDigest, Remembered>>,
}

/// What is remembered of one certificate.
#[derive(Debug, Clone, Default)]
struct Remembered {
    /// Its ECDSA P-256 key, parsed; `None` for a key of another kind (its
    /// signatures are checked by webpki, parsing every time).
    key: Option<Arc<ClientKey>>,
    chains: Vec<VerifiedChain>,
}

/// A client certificate's ECDSA P-256 key, parsed, with the certificate.
#[derive(Debug)]
pub struct ClientKey {
    der: Box<[u8]>,
    key: aws_lc_rs::signature::ParsedPublicKey,
}

impl ClientKey {
    /// The key of `cert` when it is an uncompressed P-256 point under
    /// id-ecPublicKey with the prime256v1 curve.
    fn of(der: &[u8], cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<Self> {
        let point = crate::pki::p256_point(cert.public_key())?;
        let key = aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            point,
        )
        .ok()?;
        Some(ClientKey {
            der: der.into(),
            key,
        })
    }
}

/// One chain that verified: the intermediates the client sent with the
/// certificate (OpenSSL clients send their CA along) and the certificate's
/// validity window.
#[derive(Debug, Clone)]
struct VerifiedChain {
    intermediates: Vec<CertificateDer<'static>>,
    not_before: i64,
    not_after: i64,
}

/// A remembered success, as [`ChainCache::verified`] finds it.
#[derive(Debug)]
struct Verified {
    key: Option<Arc<ClientKey>>,
}

impl ChainCache {
    const CAPACITY: usize = 4096;
    /// Distinct sets of intermediates remembered per certificate.
    const CHAINS_PER_CERTIFICATE: usize = 4;

    /// Whether `cert` with exactly `intermediates` verified before and
    /// `now` is in its validity; if so, with its parsed key.
    fn verified(
        &self,
        cert: &PeerCertificate<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Option<Verified> {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let all = self.verified.load();
        let remembered = all.get(&cert.sha256)?;
        remembered
            .chains
            .iter()
            .any(|c| {
                c.intermediates.as_slice() == intermediates
                    && c.not_before <= now
                    && now <= c.not_after
            })
            .then(|| Verified {
                key: remembered.key.clone(),
            })
    }

    /// Remembers a certificate whose chain just verified; its parsed key,
    /// if it is ECDSA P-256.
    fn insert(
        &self,
        cert: &PeerCertificate<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<Arc<ClientKey>> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der).ok()?;
        let key = ClientKey::of(cert.der, &parsed).map(Arc::new);
        let chain = VerifiedChain {
            intermediates: intermediates
                .iter()
                .map(|c| c.clone().into_owned())
                .collect(),
            not_before: parsed.validity().not_before.timestamp(),
            not_after: parsed.validity().not_after.timestamp(),
        };
        self.verified.rcu(|current| {
            let mut next = if current.len() >= Self::CAPACITY {
                std::collections::HashMap::new()
            } else {
                (**current).clone()
            };
            let remembered = next.entry(cert.sha256).or_default();
            if remembered.chains.len() >= Self::CHAINS_PER_CERTIFICATE {
                remembered.chains.clear();
            }
            remembered.chains.push(chain.clone());
            remembered.key.clone_from(&key);
            next
        });
        key
    }
}

/// The daemon's client-certificate verifier: chain AND map.
#[derive(Debug)]
pub struct CandidateVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    chain_cache: ChainCache,
    map: CandidateMapHandle,
    /// Set while this node is the master: clients without a certificate may
    /// then complete the handshake, to call the join procedure and nothing
    /// else. Every other node refuses them in the handshake.
    anonymous: Arc<AtomicBool>,
}

impl CandidateVerifier {
    /// Wraps the webpki chain verifier with the candidate-map check.
    pub fn new(
        chain: Arc<dyn ClientCertVerifier>,
        map: CandidateMapHandle,
        anonymous: Arc<AtomicBool>,
    ) -> Self {
        CandidateVerifier {
            chain,
            chain_cache: ChainCache::default(),
            map,
            anonymous,
        }
    }
}

impl ClientCertVerifier for CandidateVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.anonymous.load(Ordering::Acquire)
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let cert = PeerCertificate::new(end_entity);
        let (chain, key) = match self.chain_cache.verified(&cert, intermediates, now) {
            Some(verified) => (Ok(()), verified.key),
            None => {
                let chain = self
                    .chain
                    .verify_client_cert(end_entity, intermediates, now)
                    .map(|_| ());
                let key = match chain {
                    Ok(()) => self.chain_cache.insert(&cert, intermediates),
                    Err(_) => None,
                };
                (chain, key)
            }
        };
        let chain_error = chain.as_ref().err().cloned();
        let verdict = authorize(chain, &self.map.load(), &cert);
        let result = match (&verdict, chain_error) {
            (Verdict::Admitted(_), _) => Ok(ClientCertVerified::assertion()),
            // Keep webpki's own error so the alert says what is wrong
            // (unknown_ca, certificate_expired, ...).
            (Verdict::Denied(_), Some(e)) => Err(e),
            (Verdict::Denied(_), None) => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        };
        let _ = HANDSHAKE.try_with(|notes| {
            *notes.borrow_mut() = HandshakeNotes {
                verdict: Some(verdict),
                key,
            };
        });
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    /// The client's CertificateVerify. A P-256 signature by the certificate
    /// [`Self::verify_client_cert`] just accepted on this connection is
    /// checked with the key the chain cache holds parsed (it left it in
    /// [`HANDSHAKE`]); webpki checks anything else, parsing the
    /// certificate and its key anew. Same key, scheme and algorithm either
    /// way: ecdsa_secp256r1_sha256 with a P-256 key under id-ecPublicKey.
    /// Parsing again cost about 4 µs of each handshake (BENCHMARKS.md).
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme == SignatureScheme::ECDSA_NISTP256_SHA256 {
            let remembered = HANDSHAKE.try_with(|notes| {
                let notes = notes.borrow();
                let key = notes.key.as_deref().filter(|key| *key.der == **cert)?;
                Some(key.key.verify_sig(message, dss.signature()).is_ok())
            });
            match remembered {
                Ok(Some(true)) => return Ok(HandshakeSignatureValid::assertion()),
                Ok(Some(false)) => {
                    return Err(rustls::Error::InvalidCertificate(
                        CertificateError::BadSignature,
                    ))
                }
                Ok(None) | Err(_) => {}
            }
        }
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Logs denials, each once, at most [`DenialLog::PER_SECOND`] a second; the
/// rest are counted and the count is logged when the next second opens.
#[derive(Debug)]
pub struct DenialLog {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl Default for DenialLog {
    fn default() -> Self {
        DenialLog {
            window: Mutex::new(Window {
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }
}

impl DenialLog {
    /// Denials logged per second before the rest are only counted.
    pub const PER_SECOND: u32 = 20;

    /// Records one denial of `peer`.
    pub fn record(&self, peer: SocketAddr, denial: &Denial) {
        // Only denials take this lock; admitted connections never do.
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        if w.start.elapsed() >= Duration::from_secs(1) {
            if w.suppressed > 0 {
                tracing::warn!(
                    suppressed = w.suppressed,
                    "{} more denied connections were not logged (rate limit)",
                    w.suppressed
                );
            }
            *w = Window {
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged >= Self::PER_SECOND {
            w.suppressed += 1;
            return;
        }
        w.logged += 1;
        drop(w);
        let subject = denial.subject.as_deref().unwrap_or("-");
        let digest = denial
            .digest
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        tracing::warn!(
            peer = %peer,
            subject,
            digest,
            reason = %denial.reason,
            "connection denied"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, CertificateSigner, NodeKey};
    use rustls::server::WebPkiClientVerifier;
    use time::{Duration as TimeDuration, OffsetDateTime};

    fn verifier(ca: &CertificateAuthority, map: CandidateMap) -> CandidateVerifier {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let chain = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            crate::pki::provider::provider(),
        )
        .build()
        .unwrap();
        CandidateVerifier::new(
            chain,
            CandidateMapHandle::new(map),
            Arc::new(AtomicBool::new(false)),
        )
    }

    fn at(t: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64))
    }

    /// A certificate valid from an hour ago for one day, and a map with it.
    fn candidate(ca: &CertificateAuthority) -> (CertificateDer<'static>, CandidateMap) {
        let (cert, map, _) = candidate_with_key(ca);
        (cert, map)
    }

    /// [`candidate`], with the certificate's key for signing.
    fn candidate_with_key(
        ca: &CertificateAuthority,
    ) -> (
        CertificateDer<'static>,
        CandidateMap,
        aws_lc_rs::signature::EcdsaKeyPair,
    ) {
        let now = OffsetDateTime::now_utc();
        let key = NodeKey::generate().unwrap();
        let signer = {
            use rustls_pki_types::pem::PemObject;
            let pem = key.to_pem();
            let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.expose().as_bytes())
                .unwrap();
            aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                der.secret_pkcs8_der(),
            )
            .unwrap()
        };
        let csr = key.client_csr("mc").unwrap();
        let pem = ca
            .sign_csr_between(
                &csr,
                &crate::pki::LeafRole::Client { node: "mc" },
                now - TimeDuration::hours(1),
                now + TimeDuration::days(1),
            )
            .unwrap();
        let der = crate::pki::load_certs_from_pem(&pem).unwrap();
        let map = CandidateMap::from_entries([("uuid-mc", DigestAlgorithm::Sha256.digest(&der))]);
        (der, map, signer)
    }

    #[test]
    fn a_remembered_key_checks_certificate_verify_as_webpki_does() {
        use aws_lc_rs::signature::KeyPair as _;
        let ca = CertificateAuthority::generate("c", 30).unwrap();
        let (cert, map, signer) = candidate_with_key(&ca);
        let (_, _, stranger) = candidate_with_key(&ca);
        let v = verifier(&ca, map);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let message = b"TLS 1.3, client CertificateVerify\0transcript hash".as_slice();
        // As the client's CertificateVerify carries it: scheme, length,
        // signature.
        let dss = |scheme: SignatureScheme, signature: &[u8]| {
            use rustls::internal::msgs::codec::{Codec, Reader};
            let mut wire = u16::from(scheme).to_be_bytes().to_vec();
            wire.extend_from_slice(&u16::try_from(signature.len()).unwrap().to_be_bytes());
            wire.extend_from_slice(signature);
            DigitallySignedStruct::read(&mut Reader::init(&wire)).unwrap()
        };
        let sign = |key: &aws_lc_rs::signature::EcdsaKeyPair, scheme| {
            dss(scheme, key.sign(&rng, message).unwrap().as_ref())
        };
        let good = sign(&signer, SignatureScheme::ECDSA_NISTP256_SHA256);
        let other_key = sign(&stranger, SignatureScheme::ECDSA_NISTP256_SHA256);
        let mut flipped = signer.sign(&rng, message).unwrap().as_ref().to_vec();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        let flipped = dss(SignatureScheme::ECDSA_NISTP256_SHA256, &flipped);
        let wrong_scheme = sign(&signer, SignatureScheme::ECDSA_NISTP384_SHA384);
        let check =
            |dss: &DigitallySignedStruct| v.verify_tls13_signature(message, &cert, dss).map(|_| ());
        let all = [&good, &other_key, &flipped, &wrong_scheme];
        let key_left = || HANDSHAKE.with(|notes| notes.borrow().key.clone());
        HANDSHAKE.sync_scope(RefCell::default(), || {
            // First webpki answers (the chain was not checked yet), then the
            // key the chain check left for this handshake: the same answers.
            let webpki: Vec<_> = all.into_iter().map(check).collect();
            let now = at(OffsetDateTime::now_utc());
            assert!(v.verify_client_cert(&cert, &[], now).is_ok());
            let first = key_left().unwrap();
            assert_eq!(first.key.as_ref(), signer.public_key().as_ref());
            let parsed: Vec<_> = all.into_iter().map(check).collect();
            assert_eq!(webpki, parsed);
            assert_eq!(parsed[0], Ok(()));
            let bad = Err(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature,
            ));
            assert_eq!(parsed[1], bad);
            assert!(parsed[2].is_err(), "{:?}", parsed[2]);
            assert!(parsed[3].is_err(), "{:?}", parsed[3]);
            // Remembered: the next handshake gets the same parsed key.
            assert!(v.verify_client_cert(&cert, &[], now).is_ok());
            let again = key_left().unwrap();
            assert!(Arc::ptr_eq(&first, &again));
            // The key is used only for the certificate it came from.
            let (unknown, _) = candidate(&ca);
            let unknown_signed = v.verify_tls13_signature(message, &unknown, &good);
            assert!(unknown_signed.is_err(), "{unknown_signed:?}");
        });
    }

    #[test]
    fn a_remembered_chain_still_expires_and_still_needs_the_map() {
        let ca = CertificateAuthority::generate("c", 30).unwrap();
        let (cert, map) = candidate(&ca);
        let v = verifier(&ca, map);
        let now = OffsetDateTime::now_utc();
        assert!(v.verify_client_cert(&cert, &[], at(now)).is_ok());
        assert!(v
            .chain_cache
            .verified(&PeerCertificate::new(&cert), &[], at(now))
            .is_some());
        // Remembered, and used again; with the CA sent along (as OpenSSL
        // clients do) it is another entry, checked and remembered too.
        assert!(v.verify_client_cert(&cert, &[], at(now)).is_ok());
        let with_ca = [ca.cert_der().clone()];
        assert!(v.verify_client_cert(&cert, &with_ca, at(now)).is_ok());
        assert!(v
            .chain_cache
            .verified(&PeerCertificate::new(&cert), &with_ca, at(now))
            .is_some());
        // The same certificate with other intermediates is not remembered.
        let other = [cert.clone()];
        assert!(v
            .chain_cache
            .verified(&PeerCertificate::new(&cert), &other, at(now))
            .is_none());
        let expired = v.verify_client_cert(&cert, &with_ca, at(now + TimeDuration::days(2)));
        assert!(expired.is_err(), "{expired:?}");
        // Past notAfter (or before notBefore) the cache does not answer:
        // webpki does, with its own error.
        let later = v.verify_client_cert(&cert, &[], at(now + TimeDuration::days(2)));
        assert!(
            matches!(
                later,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ExpiredContext { .. }
                ))
            ),
            "{later:?}"
        );
        let earlier = v.verify_client_cert(&cert, &[], at(now - TimeDuration::days(1)));
        assert!(earlier.is_err(), "{earlier:?}");
        // Out of the map: refused, whatever the cache says of the chain.
        v.map.publish(CandidateMap::empty());
        assert!(v.verify_client_cert(&cert, &[], at(now)).is_err());
    }

    #[test]
    fn another_ca_starts_with_nothing_remembered() {
        let old = CertificateAuthority::generate("c", 30).unwrap();
        let (cert, map) = candidate(&old);
        let now = at(OffsetDateTime::now_utc());
        assert!(verifier(&old, map.clone())
            .verify_client_cert(&cert, &[], now)
            .is_ok());
        // A CA rotation builds a new TLS configuration, hence a new verifier.
        let new = CertificateAuthority::generate("c", 30).unwrap();
        let v = verifier(&new, map);
        assert!(v.verify_client_cert(&cert, &[], now).is_err());
        assert!(v
            .chain_cache
            .verified(&PeerCertificate::new(&cert), &[], now)
            .is_none());
    }
}
