//! One admitted connection: [`Handler::run`] reads requests, has each
//! answered by its procedure family ([`super::handlers`]), and ends when
//! the client closes, the idle timeout fires, the daemon stops, or the map
//! no longer holds the client's digest. [`AnonymousJoin`] is the master's
//! one-request connection for a node that has no certificate yet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Framed;

use super::auth::{Admission, Denial, DenialReason};
use super::budget::{ConnectionSlot, HandshakePermit};
use super::reload::CandidateMapHandle;
use super::server::Daemon;
use crate::core::FrameError;
use crate::wire::{
    self, FrameCodec, Procedure, Reply, Response, RpcError, RpcErrorKind, PROTOCOL_VERSION,
};

/// A TLS connection carrying frames.
type FramedTls = Framed<TlsStream<TcpStream>, FrameCodec>;

/// An admitted client's connection.
#[derive(Debug)]
pub struct Handler {
    daemon: Arc<Daemon>,
    tls: FramedTls,
    peer: SocketAddr,
    admission: Admission,
    /// Held for as long as the connection is served.
    _slot: ConnectionSlot,
    /// The daemon is stopping: requests already sent are still answered.
    stopping: bool,
}

/// How long a connection open when the daemon stops waits for a request
/// the client has already sent. A client writes its request right behind
/// its handshake, so it arrives with the handshake's last flight.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(500);

/// What one turn of the read loop got.
enum Next {
    /// A frame's payload: answer it.
    Frame(bytes::BytesMut),
    /// Close the connection.
    Close,
    /// The peer reset the connection: nothing can be sent on it any more,
    /// not even close_notify (`openssl s_time` resets every connection
    /// right after its handshake).
    Gone,
}

/// Whether a read failed because the peer is gone (reset or aborted).
fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

impl Handler {
    pub fn new(
        daemon: Arc<Daemon>,
        tls: TlsStream<TcpStream>,
        peer: SocketAddr,
        admission: Admission,
        slot: ConnectionSlot,
    ) -> Self {
        let max_frame = daemon.limits.max_frame;
        Handler {
            daemon,
            tls: wire::framed(tls, max_frame),
            peer,
            admission,
            _slot: slot,
            stopping: false,
        }
    }

    /// Serves requests until the connection ends.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::debug!(peer = %self.peer, uuid = %self.admission.uuid, "admitted");
        self.daemon.metrics.accepted();
        // `revoked` first checks the map as it is now, which covers a change
        // between the verifier's check and this subscription.
        let mut generation = self.daemon.map.subscribe();
        loop {
            let payload = match self.next(&mut generation, &mut stop).await {
                Next::Frame(payload) => payload,
                Next::Close => break,
                Next::Gone => return,
            };
            // The map may have changed while the frame arrived.
            if !self.daemon.map.load().contains(&self.admission.digest) {
                continue;
            }
            if !self.answer(&payload).await {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tls.get_mut().shutdown()).await;
    }

    /// Waits for the next frame, a revocation, the daemon's stop, or the
    /// idle timeout. Once the daemon stops, a request on its way is still
    /// read (the first may arrive just as the handshake finished); the
    /// connection closes when none comes within [`SHUTDOWN_DRAIN`].
    async fn next(
        &mut self,
        generation: &mut watch::Receiver<u64>,
        stop: &mut watch::Receiver<bool>,
    ) -> Next {
        let daemon = self.daemon.clone();
        let idle = if self.stopping {
            SHUTDOWN_DRAIN
        } else {
            daemon.limits.idle_timeout
        };
        let read = tokio::select! {
            biased;
            _ = revoked(generation, &daemon.map, &self.admission) => {
                daemon.deny(self.peer, &Denial {
                    reason: DenialReason::RemovedFromMap,
                    subject: self.tls.get_ref().get_ref().1.peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| crate::pki::subject_of(c)),
                    digest: Some(self.admission.digest),
                });
                return Next::Close;
            }
            _ = stop.changed(), if !self.stopping => {
                self.stopping = true;
                tokio::time::timeout(SHUTDOWN_DRAIN, self.tls.next()).await
            }
            r = tokio::time::timeout(idle, self.tls.next()) => r,
        };
        match read {
            Err(_) => {
                tracing::debug!(peer = %self.peer, "idle timeout");
                Next::Close
            }
            Ok(None) => Next::Close,
            Ok(Some(Ok(payload))) => Next::Frame(payload),
            Ok(Some(Err(e @ (FrameError::TooLarge { .. } | FrameError::Truncated)))) => {
                tracing::warn!(peer = %self.peer, uuid = %self.admission.uuid, "closing connection: {e}");
                let kind = match e {
                    FrameError::TooLarge { .. } => RpcErrorKind::TooLarge,
                    _ => RpcErrorKind::Malformed,
                };
                let error = RpcError {
                    kind,
                    message: e.to_string(),
                };
                let _ = reply(&mut self.tls, 0, Err(error)).await;
                Next::Close
            }
            Ok(Some(Err(FrameError::Io(e)))) if is_gone(&e) => {
                tracing::debug!(peer = %self.peer, "connection ended: {e}");
                Next::Gone
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(peer = %self.peer, "connection ended: {e}");
                Next::Close
            }
        }
    }

    /// Decodes, runs and answers one request; false when the connection
    /// must close.
    async fn answer(&mut self, payload: &[u8]) -> bool {
        let daemon = &self.daemon;
        let (id, result, keep_open) = match wire::decode_request(payload) {
            Ok(request) => {
                let name = request.procedure.name();
                let started = Instant::now();
                let timeout = daemon.limits.request_timeout;
                let result = tokio::time::timeout(
                    timeout,
                    super::handlers::dispatch(daemon, &self.admission, request.procedure),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(RpcError {
                        kind: RpcErrorKind::Timeout,
                        message: format!("{name} took longer than {timeout:?}"),
                    })
                });
                daemon.metrics.rpc(name, result.is_ok(), started.elapsed());
                (request.id, result, true)
            }
            Err((id, error)) => {
                // An unknown procedure leaves the framing intact: answer and
                // keep serving. Anything else malformed closes the connection.
                let keep = error.kind == RpcErrorKind::UnknownProcedure;
                tracing::warn!(peer = %self.peer, uuid = %self.admission.uuid, "bad request: {}", error.message);
                (id, Err(error), keep)
            }
        };
        let sent = tokio::time::timeout(
            daemon.limits.request_timeout,
            reply(&mut self.tls, id, result),
        )
        .await;
        // A large request or reply (an ssconf of many nodes) does not stay
        // allocated for the rest of a long-lived connection.
        let replied = match sent {
            Ok(Ok(len)) => len,
            _ => return false,
        };
        wire::trim_buffers(&mut self.tls, payload.len().max(replied));
        keep_open
    }
}

/// A connection without a client certificate, on the master: one request,
/// which must be a join; then the connection is closed.
#[derive(Debug)]
pub struct AnonymousJoin {
    daemon: Arc<Daemon>,
    tls: FramedTls,
    peer: SocketAddr,
    permit: HandshakePermit,
    _slot: ConnectionSlot,
}

impl AnonymousJoin {
    pub fn new(
        daemon: Arc<Daemon>,
        tls: TlsStream<TcpStream>,
        peer: SocketAddr,
        permit: HandshakePermit,
        slot: ConnectionSlot,
    ) -> Self {
        // A join request is small; anonymous peers get no 16 MiB frames.
        const MAX_JOIN_FRAME: u32 = 64 * 1024;
        AnonymousJoin {
            daemon,
            tls: wire::framed(tls, MAX_JOIN_FRAME),
            peer,
            permit,
            _slot: slot,
        }
    }

    /// Reads the one request, runs it if it is a join, answers, closes.
    pub async fn serve(mut self) {
        let read =
            tokio::time::timeout(self.daemon.limits.handshake_timeout, self.tls.next()).await;
        drop(self.permit);
        let payload = match read {
            Ok(Some(Ok(p))) => p,
            other => {
                return refuse_without_request(&self.daemon, self.peer, &mut self.tls, other).await
            }
        };
        // `counted`: the refusal is already recorded (once per connection).
        let (id, result, counted) = match wire::decode_request(&payload) {
            Ok(request) => match request.procedure {
                // No timeout around the join: once admitted under the lock, the
                // node is in the config and the joiner must get its reply.
                Procedure::Join(join) => {
                    let started = Instant::now();
                    let result = super::join::handle_join(&self.daemon, join).await;
                    self.daemon
                        .metrics
                        .rpc("join", result.is_ok(), started.elapsed());
                    (request.id, result, false)
                }
                other => {
                    self.daemon.deny(
                        self.peer,
                        &Denial {
                            reason: DenialReason::AnonymousRequest(other.name().to_owned()),
                            subject: None,
                            digest: None,
                        },
                    );
                    (
                        request.id,
                        Err(RpcError {
                            kind: RpcErrorKind::NotAuthorized,
                            message: "a client without a certificate may only join".into(),
                        }),
                        true,
                    )
                }
            },
            Err((id, error)) => (id, Err(error), false),
        };
        if let (Err(e), false) = (&result, counted) {
            self.daemon.deny(
                self.peer,
                &Denial {
                    reason: DenialReason::JoinRefused(e.message.clone()),
                    subject: None,
                    digest: None,
                },
            );
        }
        let _ = reply(&mut self.tls, id, result).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tls.get_mut().shutdown()).await;
    }
}

/// A connection without a certificate that brought no request: logged
/// once as a refused join; a frame too large or cut short is answered
/// as on an admitted connection.
async fn refuse_without_request(
    daemon: &Daemon,
    peer: SocketAddr,
    tls: &mut FramedTls,
    read: Result<Option<Result<bytes::BytesMut, FrameError>>, tokio::time::error::Elapsed>,
) {
    let timeout = daemon.limits.handshake_timeout;
    let (why, kind) = match read {
        Err(_) => (format!("no request within {timeout:?}"), None),
        Ok(None) => ("closed without a request".to_owned(), None),
        Ok(Some(Err(e @ FrameError::TooLarge { .. }))) => {
            (e.to_string(), Some(RpcErrorKind::TooLarge))
        }
        Ok(Some(Err(e @ (FrameError::Truncated | FrameError::Malformed(_))))) => {
            (e.to_string(), Some(RpcErrorKind::Malformed))
        }
        Ok(Some(Err(e))) => (format!("connection ended without a request: {e}"), None),
        Ok(Some(Ok(_))) => return,
    };
    daemon.deny(
        peer,
        &Denial {
            reason: DenialReason::JoinRefused(why.clone()),
            subject: None,
            digest: None,
        },
    );
    if let Some(kind) = kind {
        let error = RpcError { kind, message: why };
        let _ = reply(tls, 0, Err(error)).await;
    }
}

/// Resolves once the map no longer admits this connection's digest.
async fn revoked(
    generation: &mut watch::Receiver<u64>,
    map: &CandidateMapHandle,
    admission: &Admission,
) {
    loop {
        if !map.load().contains(&admission.digest) {
            return;
        }
        if generation.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Sends one response frame and flushes it.
/// Sends one reply; returns its length.
async fn reply(
    tls: &mut FramedTls,
    id: u64,
    result: Result<Reply, RpcError>,
) -> Result<usize, FrameError> {
    let payload = wire::encode_payload(&Response {
        version: PROTOCOL_VERSION,
        id,
        result,
    })?;
    let len = payload.len();
    tls.send(payload).await.map(|()| len)
}
