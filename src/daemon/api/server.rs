//! The API's listener: TLS 1.3 with a client certificate required and
//! checked by [`UserVerifier`], HTTP/1.1 by hyper, the [`router`] behind.
//! Each connection watches the allow list and is cut as soon as its user
//! is no longer admitted (revoked, expired, removed).

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use super::admission::{self, AllowListHandle, Caller, UserVerifier};
use super::{router, ApiState, MAX_CONNECTIONS, MAX_HEAD};
use crate::core::{Error, Result};
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
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let (api, tls, stop) = (api.clone(), tls.load_full(), stop.clone());
        tokio::spawn(async move {
            connection(api, tls, stream, peer, stop).await;
            drop(slot);
        });
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
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = api.daemon.limits.handshake_timeout;
    let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "API handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let caller = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| admission::admit(&api.users.load(), cert).ok());
    let Some(caller) = caller else {
        return;
    };
    let mut changes = api.users.subscribe();
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

fn log_cut(caller: &Caller, peer: SocketAddr) {
    tracing::info!(user = %caller.name, %peer, "API connection closed: the user is no longer admitted");
}
