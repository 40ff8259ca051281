//! Joining a node to the cluster (SPEC §5): both ends.
//!
//! The new node ([`join`]) makes its key and CSR locally, connects to the
//! master WITHOUT a client certificate, and aborts the handshake — before a
//! byte of the token is sent — unless the master's chain ends in a CA whose
//! SHA-256 is the token's pin. The master ([`admit`]) checks the token,
//! signs the CSR, records the digest of the certificate it signed, adds the
//! node, saves and pushes, and answers with everything the node needs.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use ssconf::{DigestAlgorithm, Ssconf};

use crate::cluster::{self, ClusterLock, PushItems};
use crate::config::{check_address, check_name, NodeRecord, NodeRole};
use crate::ctl::Outcome;
use crate::error::{Error, Result};
use crate::frame::{JoinReply, JoinRequest, Procedure, Reply};
use crate::pki::{self, CertInfo, CertificateSigner, NodeKey, Secret};
use crate::state::{self, NodeIdentity, StateDir, MODE_PUBLIC, MODE_SECRET};
use crate::token::{self, JoinToken, TokenStore};

/// The master's side, under the cluster lock: check, sign, add, save.
/// Returns the reply (without push results) and the new config.
pub fn admit(
    state: &StateDir,
    req: &JoinRequest,
) -> Result<(JoinReply, crate::config::ClusterConfig)> {
    check_name("node name", &req.node_name)?;
    check_address(&req.address)?;
    // Check the token before queueing for the lock, so that a peer without
    // a valid token cannot hold up the cluster's administration.
    TokenStore::load(state)?
        .check(&req.token_id, req.secret.expose(), token::now())
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let _lock = ClusterLock::acquire(state, true, &format!("join of {}", req.node_name))?;
    let mut config = cluster::master_config(state)?;
    let mut tokens = TokenStore::load(state)?;
    let token = tokens
        .check(&req.token_id, req.secret.expose(), token::now())
        .map_err(|e| Error::Invalid(e.to_string()))?
        .clone();
    if config.nodes.iter().any(|n| n.name == req.node_name) {
        return Err(Error::Invalid(format!(
            "a node named {:?} is already in the cluster; pick another --node-name (or `nodectl remove` the old one)",
            req.node_name
        )));
    }
    if config.nodes.iter().any(|n| n.address == req.address) {
        return Err(Error::Invalid(format!(
            "address {} is already used by another node; pick another --address",
            req.address
        )));
    }
    let ca_pem = std::fs::read_to_string(state.ca_pem()).map_err(Error::io(state.ca_pem()))?;
    let store = crate::keystore::for_cluster(state, &config)?;
    let ca = store.load_ca(&ca_pem)?;
    let ca_key = store.candidate_copy(&ca);
    // The name in the certificate is the node name; the CSR contributes only
    // its public key (and proves possession of the private key).
    let client_pem = ca.sign_client_csr(&req.csr_pem, config.cert_days)?;
    let client_der = pki::load_certs_from_pem(&client_pem)?;
    let alg: DigestAlgorithm = config.digest.into();
    let online_candidates = config
        .nodes
        .iter()
        .filter(|n| n.role.is_candidate() && !n.offline)
        .count();
    let candidate =
        token.master_candidate || online_candidates < config.candidate_pool_size as usize;
    if candidate {
        crate::ssh::check_public(&req.ssh_public_key)?;
    }
    let uuid = uuid::Uuid::new_v4().to_string();
    config.nodes.push(NodeRecord {
        uuid: uuid.clone(),
        name: req.node_name.clone(),
        address: req.address.clone(),
        role: if candidate {
            NodeRole::Candidate
        } else {
            NodeRole::Regular
        },
        offline: false,
        digest: alg.digest(&client_der).to_string(),
        cert_expires: CertInfo::from_der(&client_der)?.not_after,
        ssh_public_key: candidate.then(|| req.ssh_public_key.trim().to_owned()),
        next_digest: None,
    });
    config.serial += 1;
    // Burn the token first: a crash after this loses a token, never reuses one.
    tokens.burn(&token.id);
    tokens.save(state)?;
    cluster::save_config(state, &config)?;
    cluster::apply_locally(state, &config, PushItems::ALL)?;
    let (server_pem, server_key) = crate::roles::read_server_pair(state)?;
    let reply = JoinReply {
        uuid,
        master_candidate: candidate,
        ca_pem,
        server_pem,
        server_key,
        client_pem,
        ssconf_files: config.to_ssconf()?.render(),
        ca_key: ca_key.filter(|_| candidate),
        config_json: if candidate {
            Some(
                String::from_utf8(state::to_json(&config)?)
                    .map_err(|e| Error::Invalid(format!("config is not UTF-8: {e}")))?,
            )
        } else {
            None
        },
        authorized_keys: cluster::candidate_ssh_keys(&config),
        unreachable: Vec::new(),
    };
    tracing::info!(
        node = %req.node_name,
        address = %req.address,
        role = if candidate { "candidate" } else { "regular" },
        serial = config.serial,
        "node joined"
    );
    Ok((reply, config))
}

/// Checks the master's chain against the token's CA pin, then verifies the
/// server certificate against that CA like any RPC client does.
struct PinnedCa {
    pin: [u8; 32],
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

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|c| DigestAlgorithm::Sha256.digest(c).as_bytes() == self.pin)
            .ok_or_else(|| rustls::Error::Other(rustls::OtherError(Arc::new(PinMismatch))))?;
        let mut roots = RootCertStore::empty();
        roots.add(pinned.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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

/// `nodectl join`: the new node's side.
pub async fn join(
    state: &StateDir,
    token_text: &str,
    node_name: &str,
    address: &str,
    ssh: &crate::cli::SshArgs,
) -> Result<Outcome> {
    let state = &state
        .clone()
        .with_ssh_paths(ssh.ssh_dir.clone(), ssh.authorized_keys.clone());
    let token = JoinToken::parse(token_text)?;
    check_name("node name", node_name)?;
    check_address(address)?;
    if state.is_initialised() {
        return Err(Error::Invalid(format!(
            "{} is already initialised (node.json exists); a node joins once, into a new state directory",
            state.root().display()
        )));
    }
    if token.expires <= token::now() {
        return Err(Error::Invalid(
            "join token expired; create a new one with `nodectl token create`".into(),
        ));
    }
    let key = NodeKey::generate()?;
    let (ssh_private, ssh_public) = crate::ssh::generate(node_name)?;
    let request = JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        node_name: node_name.to_owned(),
        address: address.to_owned(),
        csr_pem: key.client_csr(node_name)?,
        ssh_public_key: ssh_public.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            pin: token.ca_pin()?,
            provider: crate::tls::provider(),
        }))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let client = crate::client::RpcClient::new(Arc::new(config));

    let mut last_error = None;
    let mut reply = None;
    for addr in &token.addrs {
        let attempt = async {
            let mut conn = client.connect("master", addr).await?;
            conn.call(Procedure::Join(request.clone())).await
        }
        .await;
        match attempt {
            Ok(Reply::Joined(r)) => {
                reply = Some(r);
                break;
            }
            Ok(other) => {
                return Err(Error::Invalid(format!(
                    "master answered the join with {other:?}"
                )))
            }
            // The master said no: do not try its other addresses.
            Err(e @ Error::Remote { .. }) => return Err(e),
            Err(e) => last_error = Some(e),
        }
    }
    let reply = match (reply, last_error) {
        (Some(r), _) => r,
        (None, Some(e)) => return Err(e),
        (None, None) => return Err(Error::Invalid("the token names no master address".into())),
    };
    install(
        state,
        ssh,
        token.ca_pin()?,
        node_name,
        address,
        &key,
        ssh_private,
        &ssh_public,
        &reply,
    )?;
    crate::say!(
        "joined cluster as {node_name} ({}), uuid {}",
        if reply.master_candidate {
            "master candidate"
        } else {
            "regular node"
        },
        reply.uuid
    );
    crate::say!(
        "start the daemon:  noded --state-dir {}",
        state.root().display()
    );
    for node in &reply.unreachable {
        eprintln!(
            "warning: the master could not update {node}; it will catch up at the next change"
        );
    }
    Ok(if reply.unreachable.is_empty() {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

/// Writes what the master sent; `node.json` last, so an interrupted join
/// leaves an uninitialised directory.
#[allow(clippy::too_many_arguments)]
fn install(
    state: &StateDir,
    ssh: &crate::cli::SshArgs,
    pin: [u8; 32],
    node_name: &str,
    address: &str,
    key: &NodeKey,
    ssh_private: Secret,
    ssh_public: &str,
    reply: &JoinReply,
) -> Result<()> {
    state::create_dir(state.root(), 0o755)?;
    // What arrived must fit together before anything is written: the CA is
    // the pinned one, the certificate is for our key and chains to that CA.
    let ca_der = pki::load_certs_from_pem(&reply.ca_pem)?;
    if DigestAlgorithm::Sha256.digest(&ca_der).as_bytes() != pin {
        return Err(Error::Invalid(
            "the master sent a CA certificate other than the pinned one; nothing was written"
                .into(),
        ));
    }
    let client_der = pki::load_certs_from_pem(&reply.client_pem)?;
    pki::check_client_certificate(&client_der, &ca_der, key)?;
    let ssconf = Ssconf::parse_files(&reply.ssconf_files, &state.ssconf_dir())?;
    state.write(&state.ca_pem(), reply.ca_pem.as_bytes(), MODE_PUBLIC)?;
    state.write(
        &state.server_pem(),
        reply.server_pem.as_bytes(),
        MODE_PUBLIC,
    )?;
    state.write(
        &state.server_key(),
        reply.server_key.expose().as_bytes(),
        MODE_SECRET,
    )?;
    state.write(
        &state.client_key(),
        key.to_pem().expose().as_bytes(),
        MODE_SECRET,
    )?;
    state.write(
        &state.client_pem(),
        reply.client_pem.as_bytes(),
        MODE_PUBLIC,
    )?;
    ssconf.store(&state.ssconf_dir())?;
    if reply.master_candidate {
        // With the CA key in a token, only the config (naming it) comes.
        if let Some(ca_key) = &reply.ca_key {
            state.write(&state.ca_key(), ca_key.expose().as_bytes(), MODE_SECRET)?;
        }
        if let Some(config_json) = &reply.config_json {
            state.write(&state.config_json(), config_json.as_bytes(), MODE_SECRET)?;
        }
        state.write_ssh_key_pair(&ssh_private, ssh_public)?;
    }
    crate::ssh::write_authorized_keys(&state.authorized_keys(), &reply.authorized_keys)?;
    state.write(
        &state.node_json(),
        &state::to_json(&NodeIdentity {
            uuid: reply.uuid.clone(),
            name: node_name.to_owned(),
            address: address.to_owned(),
            ssh_dir: ssh.ssh_dir.clone(),
            authorized_keys: ssh.authorized_keys.clone(),
        })?,
        MODE_PUBLIC,
    )
}
