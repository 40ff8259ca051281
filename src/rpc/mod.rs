//! The RPC client: how a master or candidate commands a node, and how a
//! joining node reaches the master ([`pinned`]); [`fanout`] runs a call on
//! many nodes at once.
//!
//! Every connection verifies whom it reached ([`identity`]: the chain to
//! the cluster CA, the node's name, and the server certificate's digest as
//! the cluster recorded it) and presents this node's client certificate.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

use crate::core::{Error, FrameError, Result};
use crate::pki;
use crate::state::StateDir;
use crate::wire::{self, FrameCodec, Procedure, Reply, Request, PROTOCOL_VERSION};

pub mod fanout;
pub mod identity;
pub mod pinned;
pub mod tls;

use identity::RecordedServers;

/// Connects to nodes with one TLS client configuration.
#[derive(Debug, Clone)]
pub struct RpcClient {
    config: Arc<ClientConfig>,
    /// Bound on TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Bound on one call, from sending the request to the whole reply.
    pub call_timeout: Duration,
    /// Largest reply accepted.
    pub max_frame: u32,
    /// The server certificates this client accepts, when its configuration
    /// checks them ([`RpcClient::from_state`]).
    recorded: Option<RecordedServers>,
    /// The address connections leave from: the node's own (an IP literal
    /// in its recorded address), so that a firewall rule on a node's
    /// address holds for what it sends too; none: the kernel's choice.
    source: Option<std::net::IpAddr>,
}

impl RpcClient {
    /// A client using `config`.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        RpcClient {
            config,
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(60),
            max_frame: wire::DEFAULT_MAX_FRAME,
            recorded: None,
            source: None,
        }
    }

    /// Trusts the server certificates `set` records from now on (after the
    /// master commits a change, before it pushes it).
    pub fn trust_servers(&self, set: &ssconf::Ssconf) {
        if let Some(recorded) = &self.recorded {
            recorded.set_from(set);
        }
    }

    /// A client with this node's CA and client certificate.
    pub fn from_state(state: &StateDir) -> Result<Self> {
        crate::pki::pair::recover_client_pair(state)?;
        let ca = pki::load_certs(&state.ca_pem())?;
        let chain = pki::load_certs(&state.client_pem())?;
        let key = pki::load_key(&state.client_key())?;
        let recorded = RecordedServers::from_state(state)?;
        let mut client = Self::new(tls::client_config(&ca, recorded.clone(), chain, key)?);
        client.recorded = Some(recorded);
        client.source = state
            .load_identity()
            .ok()
            .and_then(|i| i.address.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        Ok(client)
    }

    /// A client with this node's previous client certificate, if it keeps
    /// one (see `pki::pair::keep_previous_identity`).
    pub fn previous_from_state(state: &StateDir) -> Result<Option<Self>> {
        let cert = state.client_prev_pem();
        let key = state.client_prev_key();
        if !cert.exists() || !key.exists() {
            return Ok(None);
        }
        // It also trusts the CA before the last rotation: a node that missed
        // the rotation still serves with a certificate of that CA.
        let mut ca = pki::load_certs(&state.ca_pem())?;
        let prev_ca = state.ca_prev_pem();
        if prev_ca.exists() {
            ca.extend(pki::load_certs(&prev_ca)?);
        }
        let recorded = RecordedServers::from_state(state)?;
        let config = tls::client_config(
            &ca,
            recorded.clone(),
            pki::load_certs(&cert)?,
            pki::load_key(&key)?,
        )?;
        let mut client = Self::new(config);
        client.recorded = Some(recorded);
        Ok(Some(client))
    }

    /// Opens a verified connection to `node` at `address` (`host:port`).
    pub async fn connect(&self, node: &str, address: &str) -> Result<Connection> {
        let unreachable = |reason: String| Error::Unreachable {
            node: node.to_owned(),
            reason,
        };
        // The server must prove it is `node`: its certificate names it and
        // is the one recorded for it.
        let server_name = ServerName::try_from(node.to_owned())
            .map_err(|e| unreachable(format!("node name {node:?}: {e}")))?;
        let connector = TlsConnector::from(self.config.clone());
        let connect = async {
            let tcp = connect_from(self.source, address)
                .await
                .map_err(|e| unreachable(format!("cannot connect to {address}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| classify(node, address, &e))
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no TLS connection to {address} within {:?}",
                    self.connect_timeout
                ))
            })??;
        Ok(Connection {
            stream: wire::framed(stream, self.max_frame),
            node: node.to_owned(),
            address: address.to_owned(),
            next_id: 1,
            call_timeout: self.call_timeout,
        })
    }
}

/// A TCP connection to `address`, leaving from `source` when that address
/// can be bound here (otherwise from wherever the kernel picks).
async fn connect_from(
    source: Option<std::net::IpAddr>,
    address: &str,
) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(address).await;
    };
    let mut last = None;
    for target in tokio::net::lookup_host(address).await? {
        if target.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = if source.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if socket.bind(std::net::SocketAddr::new(source, 0)).is_err() {
            return TcpStream::connect(address).await;
        }
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e),
        None => TcpStream::connect(address).await,
    }
}

/// One open connection to a node.
#[derive(Debug)]
pub struct Connection {
    stream: Framed<TlsStream<TcpStream>, FrameCodec>,
    node: String,
    address: String,
    next_id: u64,
    call_timeout: Duration,
}

impl Connection {
    /// Bounds each further call on this connection by `timeout`.
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    /// Sends one request and waits for its reply.
    pub async fn call(&mut self, procedure: Procedure) -> Result<Reply> {
        let id = self.next_id;
        self.next_id += 1;
        let request = wire::encode_payload(&Request {
            version: PROTOCOL_VERSION,
            id,
            procedure,
        })?;
        let timeout = self.call_timeout;
        let node = self.node.clone();
        let address = self.address.clone();
        let sent_len = request.len();
        let exchange = async {
            self.stream
                .send(request)
                .await
                .map_err(|e| frame_error(&node, &address, e))?;
            let payload = self
                .stream
                .next()
                .await
                .ok_or_else(|| Error::Unreachable {
                    node: node.clone(),
                    reason: format!("{address} closed the connection without replying"),
                })?
                .map_err(|e| frame_error(&node, &address, e))?;
            let received_len = payload.len();
            let response = wire::decode_response(&payload)?;
            if response.id != id && response.id != 0 {
                return Err(Error::Remote {
                    node: node.clone(),
                    message: format!("reply for request {} while waiting for {id}", response.id),
                });
            }
            let reply = response.result.map_err(|e| match e.kind {
                wire::RpcErrorKind::NotAuthorized => Error::NotAuthorized {
                    node: node.clone(),
                    reason: e.message,
                },
                wire::RpcErrorKind::Unconfirmed => Error::Unconfirmed(e.message),
                _ => Error::Remote {
                    node: node.clone(),
                    message: e.message,
                },
            });
            Ok((reply, received_len))
        };
        let (reply, received_len) =
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| Error::Unreachable {
                    node: self.node.clone(),
                    reason: format!("no reply from {} within {timeout:?}", self.address),
                })??;
        // A connection the convergence loop keeps open must not keep what
        // one large frame made its buffers grow to.
        wire::trim_buffers(&mut self.stream, sent_len.max(received_len));
        reply
    }

    /// Writes raw bytes (tests use this to send malformed frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let stream = self.stream.get_mut();
        let sent = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        sent.await
            .map_err(|e| classify(&self.node, &self.address, &e))
    }

    /// Closes the write side (TLS close_notify, then TCP FIN).
    pub async fn close_write(&mut self) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream
            .get_mut()
            .shutdown()
            .await
            .map_err(|e| classify(&self.node, &self.address, &e))
    }

    /// Reads one raw reply frame and decodes it (tests).
    pub async fn read_response(&mut self) -> Result<Option<wire::Response>> {
        match self.stream.next().await {
            Some(Ok(p)) => Ok(Some(wire::decode_response(&p)?)),
            None => Ok(None),
            Some(Err(e)) => Err(frame_error(&self.node, &self.address, e)),
        }
    }
}

fn frame_error(node: &str, address: &str, e: FrameError) -> Error {
    match e {
        FrameError::Io(io) => classify(node, address, &io),
        other => Error::Unreachable {
            node: node.to_owned(),
            reason: format!("{address}: {other}"),
        },
    }
}

/// Turns a TLS failure into an error an operator can act on. A TLS 1.3
/// server checks the client certificate after the client's handshake ends,
/// so a refusal surfaces as an alert on the first read.
fn classify(node: &str, address: &str, e: &std::io::Error) -> Error {
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::AlertReceived(alert)) => {
            let why = match alert {
                AlertDescription::AccessDenied => "this node's client certificate is not in the candidate map; only the master and master candidates may issue RPCs",
                AlertDescription::UnknownCA => "this node's client certificate is not signed by the node's cluster CA",
                AlertDescription::CertificateExpired => "this node's client certificate has expired (renew it with `nodectl renew-crypto --new-node-certificates`)",
                AlertDescription::CertificateRequired => "no client certificate was presented",
                _ => "the node refused the TLS handshake",
            };
            Error::NotAuthorized {
                node: node.to_owned(),
                reason: format!("{why} (TLS alert {alert:?} from {address})"),
            }
        }
        Some(rustls::Error::InvalidCertificate(cert_error)) => Error::UntrustedServer {
            node: node.to_owned(),
            address: address.to_owned(),
            reason: match cert_error {
                // Our own verifiers' reasons, in their own words.
                rustls::CertificateError::Other(other) => other.0.to_string(),
                e => e.to_string(),
            },
        },
        Some(other) => Error::Unreachable {
            node: node.to_owned(),
            reason: format!("{address}: TLS: {other}"),
        },
        None => Error::Unreachable {
            node: node.to_owned(),
            reason: format!("{address}: {e}"),
        },
    }
}
