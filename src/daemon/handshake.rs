//! One connection's TLS handshake and its typed outcome: admitted (a
//! [`Handler`] serves it), anonymous (on the master, one join request), or
//! denied (counted and logged once, then closed).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ssconf::CertDigest;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::auth::{Admission, Denial, DenialReason, Verdict, HANDSHAKE};
use super::budget::{ConnectionSlot, HandshakePermit};
use super::handler::{AnonymousJoin, Handler};
use super::server::Daemon;

/// How a handshake ended.
#[derive(Debug)]
pub enum Handshake {
    /// The verifier admitted the client and a connection slot was free.
    Admitted(Handler),
    /// On the master, a client without a certificate: it may ask to join.
    Anonymous(AnonymousJoin),
    /// Refused or gone; already counted and logged.
    Denied,
}

/// Runs the TLS handshake of `stream` (bounded by the handshake timeout)
/// with the current TLS configuration, and takes a connection slot for an
/// admitted client in exchange for its handshake permit.
pub async fn handshake(
    daemon: &Arc<Daemon>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: HandshakePermit,
) -> Handshake {
    let acceptor = TlsAcceptor::from(daemon.tls.load_full());
    let handshake = HANDSHAKE.scope(RefCell::default(), async {
        let result = acceptor.accept(stream).await;
        (
            result,
            HANDSHAKE.with(|notes| notes.borrow_mut().verdict.take()),
        )
    });
    let Ok((result, verdict)) =
        tokio::time::timeout(daemon.limits.handshake_timeout, handshake).await
    else {
        let reason = DenialReason::Handshake(format!(
            "not completed within {:?}",
            daemon.limits.handshake_timeout
        ));
        daemon.deny(peer, &Denial::anonymous(reason));
        return Handshake::Denied;
    };
    match decide(daemon, peer, result, verdict) {
        Decision::Admit(tls, admission) => {
            let Some(slot) = connection_slot(daemon, peer, Some(admission.digest)) else {
                return Handshake::Denied;
            };
            drop(permit);
            Handshake::Admitted(Handler::new(daemon.clone(), tls, peer, admission, slot))
        }
        Decision::Anonymous(tls) => {
            let Some(slot) = connection_slot(daemon, peer, None) else {
                return Handshake::Denied;
            };
            // Unauthenticated until its join request is read: it keeps the
            // handshake permit until then.
            Handshake::Anonymous(AnonymousJoin::new(daemon.clone(), tls, peer, permit, slot))
        }
        Decision::Deny(Some(denial)) => {
            daemon.deny(peer, &denial);
            Handshake::Denied
        }
        Decision::Deny(None) => Handshake::Denied,
    }
}

/// What the handshake's result and the verifier's verdict together mean.
enum Decision {
    Admit(TlsStream<TcpStream>, Admission),
    Anonymous(TlsStream<TcpStream>),
    /// `None`: the client left after it was admitted; no denial to record.
    Deny(Option<Denial>),
}

fn decide(
    daemon: &Daemon,
    peer: SocketAddr,
    result: std::io::Result<TlsStream<TcpStream>>,
    verdict: Option<Verdict>,
) -> Decision {
    match (result, verdict) {
        (Ok(tls), Some(Verdict::Admitted(admission))) => Decision::Admit(tls, admission),
        (Err(_), Some(Verdict::Denied(denial))) => Decision::Deny(Some(denial)),
        // The certificate was acceptable but the handshake still failed:
        // most likely the client holds the certificate (public) but not its
        // key, so it could not prove possession. Name what it claimed to be.
        (Err(e), Some(Verdict::Admitted(claimed))) => {
            // A client that hangs up right after its Finished (as `openssl
            // s_time` does) was admitted; that is no denial.
            if !is_tls_failure(&e) {
                tracing::debug!(%peer, uuid = %claimed.uuid, "admitted client left during the handshake: {e}");
                return Decision::Deny(None);
            }
            let mut denial = handshake_denial(&e);
            denial.subject = Some(format!("claimed candidate {}", claimed.uuid));
            denial.digest = Some(claimed.digest);
            Decision::Deny(Some(denial))
        }
        (Err(e), _) => Decision::Deny(Some(handshake_denial(&e))),
        (Ok(tls), None)
            if tls.get_ref().1.peer_certificates().is_none()
                && daemon.is_master.load(Ordering::Acquire) =>
        {
            Decision::Anonymous(tls)
        }
        // Fail closed: a handshake that completed without our verifier's
        // verdict is not trusted.
        (Ok(_), _) => Decision::Deny(Some(Denial::anonymous(DenialReason::Handshake(
            "no authorization verdict".into(),
        )))),
    }
}

/// Whether a failed handshake failed in TLS (a refusal, a bad message)
/// rather than in the connection (the peer hung up).
pub fn is_tls_failure(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some())
}

/// Maps a failed handshake without a verifier verdict to a denial.
pub fn handshake_denial(e: &std::io::Error) -> Denial {
    let rustls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let reason = match rustls_error {
        Some(rustls::Error::NoCertificatesPresented) => DenialReason::NoCertificate,
        Some(other) => DenialReason::Handshake(other.to_string()),
        None => DenialReason::Handshake(e.to_string()),
    };
    Denial {
        reason,
        subject: None,
        digest: None,
    }
}

/// A slot for a connection that completed its handshake (as the client
/// with `digest`, if it presented a certificate); when none is free the
/// refusal is recorded and the caller closes the connection.
fn connection_slot(
    daemon: &Daemon,
    peer: SocketAddr,
    digest: Option<CertDigest>,
) -> Option<ConnectionSlot> {
    match daemon.budgets.admit() {
        Ok(slot) => Some(slot),
        Err(exhausted) => {
            let mut denial = Denial::anonymous(DenialReason::Exhausted(exhausted));
            denial.digest = digest;
            daemon.deny(peer, &denial);
            None
        }
    }
}
