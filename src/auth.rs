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
//! it. So the verifier leaves its [`Verdict`] in a task-local slot that the
//! connection task (which knows the peer) reads right after the handshake.

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

use crate::budget::Exhausted;
use crate::reload::CandidateMapHandle;

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

/// The decision, given the chain check's result: chain first (a certificate
/// we did not sign is refused whatever its digest), then the map.
pub fn authorize(
    chain: Result<(), rustls::Error>,
    map: &CandidateMap,
    end_entity: &[u8],
) -> Verdict {
    let log_digest = || {
        let alg = map.algorithms().next().unwrap_or(DigestAlgorithm::Sha256);
        Some(alg.digest(end_entity))
    };
    if let Err(e) = chain {
        return Verdict::Denied(Denial {
            reason: DenialReason::Chain(e.to_string()),
            subject: Some(crate::pki::subject_of(end_entity)),
            digest: log_digest(),
        });
    }
    match map.lookup_der(end_entity) {
        Some((uuid, digest)) => Verdict::Admitted(Admission {
            uuid: uuid.to_owned(),
            digest,
        }),
        None => Verdict::Denied(Denial {
            reason: DenialReason::NotInMap,
            subject: Some(crate::pki::subject_of(end_entity)),
            digest: log_digest(),
        }),
    }
}

tokio::task_local! {
    /// Where [`CandidateVerifier`] leaves its verdict for the connection task.
    pub static VERDICT: RefCell<Option<Verdict>>;
}

/// The daemon's client-certificate verifier: chain AND map.
#[derive(Debug)]
pub struct CandidateVerifier {
    chain: Arc<dyn ClientCertVerifier>,
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
        let chain = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ());
        let chain_error = chain.as_ref().err().cloned();
        let verdict = authorize(chain, &self.map.load(), end_entity);
        let result = match (&verdict, chain_error) {
            (Verdict::Admitted(_), _) => Ok(ClientCertVerified::assertion()),
            // Keep webpki's own error so the alert says what is wrong
            // (unknown_ca, certificate_expired, ...).
            (Verdict::Denied(_), Some(e)) => Err(e),
            (Verdict::Denied(_), None) => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        };
        let _ = VERDICT.try_with(|slot| *slot.borrow_mut() = Some(verdict));
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

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
