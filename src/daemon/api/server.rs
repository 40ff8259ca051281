//! The API's listener: TLS 1.3 with a client certificate required and
//! checked by [`UserVerifier`], HTTP/1.1 by hyper, the [`router`] behind.
//! Each connection watches the allow list and is cut as soon as its user
//! is no longer admitted (revoked, expired, removed).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use super::admission::{self, AllowListHandle, Caller, UserVerifier};
use super::{router, ApiState, MAX_HEAD};
use crate::core::{Error, Result};
use crate::daemon::auth::{Denial, DenialReason, Verdict, HANDSHAKE};
use crate::daemon::budget::HandshakePermit;
use crate::daemon::handshake::{handshake_denial, is_tls_failure};
use crate::daemon::runtime::load_server_material;
use crate::daemon::server::Daemon;
use crate::pki::provider::{provider, roots, versions};

/// The API's TLS configuration: TLS 1.3 only, this node's server
/// certificate, client certificates required and checked against the
/// allow list; no resumption, so every connection is checked.
pub fn tls_config(daemon: &Daemon, users: &Arc<AllowListHandle>) -> Result<Arc<ServerConfig>> {
    let material = load_server_material(&daemon.state)?;
    let chain = WebPkiClientVerifier::builder_with_provider(roots(&material.ca_certs)?, provider())
        .build()
        .map_err(|e| Error::Invalid(format!("API client verifier: {e}")))?;
    let verifier = Arc::new(UserVerifier {
        chain,
        users: users.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(false))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.server_chain, material.server_key)?;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the API on `listener` until `stop` turns true.
pub async fn run(listener: TcpListener, daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let initial = admission::read(&daemon.state).unwrap_or_else(|e| {
        tracing::error!("API: no user list ({e}); refusing everyone until one is read");
        admission::AllowList::nobody()
    });
    let users = Arc::new(AllowListHandle::new(initial));
    let tls = match tls_config(&daemon, &users) {
        Ok(config) => Arc::new(ArcSwap::new(config)),
        Err(e) => {
            tracing::error!("API not served: {e}");
            return;
        }
    };
    // A config change may carry renewed certificates: rebuild the TLS
    // configuration with the list (a failure keeps the current one).
    let reload = {
        let (daemon, users, tls) = (daemon.clone(), users.clone(), tls.clone());
        move || match tls_config(&daemon, &users) {
            Ok(config) => tls.store(config),
            Err(e) => tracing::error!("API: keeping the current TLS configuration: {e}"),
        }
    };
    let watcher = {
        let (daemon, users, stop) = (daemon.clone(), users.clone(), stop.clone());
        tokio::spawn(async move {
            let state = daemon.state.clone();
            admission::watch_config(state, users, reload, &daemon.config_changed, stop).await
        })
    };
    let api = Arc::new(ApiState::new(daemon, users, port));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("API accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // As on the RPC port: closed at once when the source's or the
        // port's handshake budget is full, so that peers stalling in the
        // handshake cannot take the admitted users' connections.
        let permit = match api.budgets.start_handshake(peer.ip()) {
            Ok(permit) => permit,
            Err(exhausted) => {
                drop(stream);
                api.denials
                    .record(peer, &Denial::anonymous(DenialReason::Exhausted(exhausted)));
                continue;
            }
        };
        let (api, tls, stop) = (api.clone(), tls.load_full(), stop.clone());
        tokio::spawn(connection(api, tls, stream, peer, permit, stop));
    }
    watcher.abort();
}

/// One connection: handshake, then HTTP until the client leaves, the
/// daemon stops, or the user is no longer admitted.
async fn connection(
    api: Arc<ApiState>,
    tls: Arc<ServerConfig>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: HandshakePermit,
    mut stop: watch::Receiver<bool>,
) {
    let Some(stream) = handshake(&api, tls, stream, peer).await else {
        return;
    };
    // Subscribed before the check: a revocation published after it is
    // seen as a change.
    let mut changes = api.users.subscribe();
    let caller = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| admission::admit(&api.users.load(), cert).ok());
    let Some(caller) = caller else {
        // Revoked between the verifier's check and this one.
        let denial = Denial::anonymous(DenialReason::NotAUser);
        api.denials.record(peer, &denial);
        return;
    };
    let _slot = match api.budgets.admit() {
        Ok(slot) => slot,
        Err(exhausted) => {
            let mut denial = Denial::anonymous(DenialReason::Exhausted(exhausted));
            denial.subject = Some(format!("user:{}", caller.name));
            api.denials.record(peer, &denial);
            return;
        }
    };
    drop(permit);
    let service = {
        let (router, caller) = (router(api.clone()), caller.clone());
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(caller.clone());
            router.clone().oneshot(request)
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(api.daemon.limits.idle_timeout)
        .max_header_size(MAX_HEAD);
    let served = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "API connection: {e}");
                }
                return;
            }
            _ = changes.changed() => {
                if !api.users.still_admits(&caller) {
                    log_cut(&caller, peer);
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// The TLS handshake of an API connection, within the handshake timeout;
/// a refusal is recorded once, with the user verifier's subject and digest
/// when it refused the certificate.
async fn handshake(
    api: &ApiState,
    tls: Arc<ServerConfig>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = api.daemon.limits.handshake_timeout;
    let handshake = HANDSHAKE.scope(RefCell::default(), async {
        let result = acceptor.accept(stream).await;
        let verdict = HANDSHAKE.with(|notes| notes.borrow_mut().verdict.take());
        (result, verdict)
    });
    let denial = match tokio::time::timeout(limit, handshake).await {
        Ok((Ok(stream), _)) => return Some(stream),
        Err(_) => Denial::anonymous(DenialReason::Handshake(format!(
            "not completed within {limit:?}"
        ))),
        Ok((Err(_), Some(Verdict::Denied(denial)))) => denial,
        Ok((Err(e), _)) => {
            if !is_tls_failure(&e) {
                tracing::debug!(%peer, "API client left during the handshake: {e}");
                return None;
            }
            handshake_denial(&e)
        }
    };
    api.denials.record(peer, &denial);
    None
}

fn log_cut(caller: &Caller, peer: SocketAddr) {
    tracing::info!(user = %caller.name, %peer, "API connection closed: the user is no longer admitted");
}
