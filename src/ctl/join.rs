//! `nodectl join`: the new node's side of a join (SPEC §5).
//!
//! The node makes its key and CSR locally, connects to the master WITHOUT a
//! client certificate, and aborts the handshake — before a byte of the token
//! is sent — unless the master's chain ends in a CA whose SHA-256 is the
//! token's pin ([`crate::rpc::pinned`]). The master's side is
//! `daemon::join::admit`.

use ssconf::{DigestAlgorithm, Ssconf};

use super::Outcome;
use crate::core::{Error, Result, Secret};
use crate::pki::{self, NodeKey};
use crate::rpc::pinned::pinned_client_config;
use crate::rpc::RpcClient;
use crate::state::config::{check_address, check_node_name};
use crate::state::token::JoinToken;
use crate::state::{NodeFiles, NodeIdentity, SshPaths, StateDir, MODE_SECRET};
use crate::wire::{JoinReply, JoinRequest, Procedure, Reply};

/// The keys a joining node makes for itself; none of them leaves it.
struct NewKeys {
    client: NodeKey,
    server: NodeKey,
    ssh_private: Secret,
    ssh_public: String,
}

/// `nodectl join`: the new node's side.
pub async fn join(
    state: &StateDir,
    token_text: &str,
    node_name: &str,
    address: &str,
    ssh: &SshPaths,
) -> Result<Outcome> {
    let state = &state.clone().with_ssh_paths(ssh);
    let token = JoinToken::parse(token_text)?;
    check_node_name(node_name)?;
    check_address(address)?;
    if state.is_initialised() {
        return Err(Error::Invalid(format!(
            "{} is already initialised (node.json exists); a node joins once, into a new state directory",
            state.root().display()
        )));
    }
    if token.expires <= crate::core::time::now() {
        return Err(Error::Invalid(
            "join token expired; create a new one with `nodectl token create`".into(),
        ));
    }
    let (ssh_private, ssh_public) = crate::state::ssh::generate(node_name)?;
    let keys = NewKeys {
        client: NodeKey::generate()?,
        server: NodeKey::generate()?,
        ssh_private,
        ssh_public,
    };
    let request = JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        node_name: node_name.to_owned(),
        address: address.to_owned(),
        csr_pem: keys.client.csr(node_name)?,
        server_csr_pem: keys.server.csr(node_name)?,
        ssh_public_key: keys.ssh_public.clone(),
    };
    let reply = ask_master(&token, request).await?;
    let identity = NodeIdentity {
        uuid: reply.uuid.clone(),
        name: node_name.to_owned(),
        address: address.to_owned(),
        ssh_dir: ssh.ssh_dir.clone(),
        authorized_keys: ssh.authorized_keys.clone(),
    };
    install(state, &token, &identity, &keys, &reply)?;
    crate::say!(
        "joined cluster as {node_name} ({}), uuid {}",
        if reply.master_candidate {
            "master candidate"
        } else {
            "regular node"
        },
        reply.uuid
    );
    let mut complete = reply.unreachable.is_empty();
    if reply.master_candidate {
        if let Err(e) = fetch_candidate_files(state).await {
            complete = false;
            eprintln!(
                "warning: {node_name} is a master candidate but could not fetch the CA key and config from the master: {e}; on the master, run `nodectl modify {node_name} --master-candidate=yes` to send them"
            );
        }
    }
    crate::say!(
        "start the daemon:  noded --state-dir {}",
        state.root().display()
    );
    for node in &reply.unreachable {
        eprintln!(
            "warning: the master could not update {node}; it will catch up at the next change"
        );
    }
    Ok(if complete {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

/// Sends the join request to the master at each of the token's addresses
/// in turn, over a connection that checked the master first.
async fn ask_master(token: &JoinToken, request: JoinRequest) -> Result<Box<JoinReply>> {
    let client = RpcClient::new(pinned_client_config(token.ca_pin()?, &token.master)?);
    let mut last_error = None;
    for addr in &token.addrs {
        let attempt = async {
            let mut conn = client.connect("master", addr).await?;
            conn.call(Procedure::Join(request.clone())).await
        }
        .await;
        match attempt {
            Ok(Reply::Joined(r)) => return Ok(r),
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
    Err(last_error.unwrap_or_else(|| Error::Invalid("the token names no master address".into())))
}

/// A new master candidate's CA key (unless it lives in a token) and config,
/// fetched from the master over this node's own admitted connection, which
/// checked that it reached the master the ssconf names.
async fn fetch_candidate_files(state: &StateDir) -> Result<()> {
    let ssconf = Ssconf::load(&state.ssconf_dir())?;
    let master = ssconf.master_node.clone();
    let address = ssconf
        .address_of(&master)
        .ok_or_else(|| Error::Invalid(format!("ssconf has no address for the master {master}")))?
        .to_owned();
    let client = RpcClient::from_state(state)?;
    let mut conn = client.connect(&master, &address).await?;
    match conn.call(Procedure::FetchCandidateFiles).await? {
        Reply::CandidateFiles {
            ca_key,
            config_json,
        } => {
            if let Some(ca_key) = ca_key {
                let ca_pem =
                    std::fs::read_to_string(state.ca_pem()).map_err(Error::io(state.ca_pem()))?;
                pki::CertificateAuthority::from_pem(&ca_pem, ca_key.expose())?
                    .check_key_matches()?;
                state.write(&state.ca_key(), ca_key.expose().as_bytes(), MODE_SECRET)?;
            }
            state.write(&state.config_json(), config_json.as_bytes(), MODE_SECRET)
        }
        other => Err(Error::Invalid(format!(
            "master answered fetch-candidate-files with {other:?}"
        ))),
    }
}

/// Writes what the master sent, once it is checked to fit together: the CA
/// is the pinned one, each certificate is for our key and chains to that
/// CA, and the server certificate names this node.
fn install(
    state: &StateDir,
    token: &JoinToken,
    identity: &NodeIdentity,
    keys: &NewKeys,
    reply: &JoinReply,
) -> Result<()> {
    // The bundle holds the pinned CA (and, during a CA rotation, the other
    // CA of the rotation, which the pinned master vouches for); our
    // certificates must chain to the pinned one.
    let pin = token.ca_pin()?;
    let Some(ca_der) = pki::certs_from_pem(&reply.ca_pem)?
        .into_iter()
        .find(|c| DigestAlgorithm::Sha256.digest(c).as_bytes() == pin)
    else {
        return Err(Error::Invalid(
            "the master sent a CA certificate other than the pinned one; nothing was written"
                .into(),
        ));
    };
    let ca = std::slice::from_ref(&ca_der);
    let client_der = pki::load_certs_from_pem(&reply.client_pem)?;
    pki::check_certificate(
        &client_der,
        ca,
        &keys.client,
        webpki::KeyUsage::client_auth(),
    )?;
    let server_der = pki::load_certs_from_pem(&reply.server_pem)?;
    pki::check_certificate(
        &server_der,
        ca,
        &keys.server,
        webpki::KeyUsage::server_auth(),
    )?;
    if crate::rpc::identity::uuid_of(&server_der).as_deref() != Some(reply.uuid.as_str()) {
        return Err(Error::Invalid(
            "the server certificate the master sent does not name this node; nothing was written"
                .into(),
        ));
    }
    let ssconf = Ssconf::parse_files(&reply.ssconf_files, &state.ssconf_dir())?;
    let candidate = reply.master_candidate;
    state.write_node_files(&NodeFiles {
        identity,
        ca_pem: &reply.ca_pem,
        server_pem: &reply.server_pem,
        server_key: &keys.server.to_pem(),
        client_key: &keys.client.to_pem(),
        client_pem: &reply.client_pem,
        ssconf: &ssconf,
        ca_key: None,
        config_json: None,
        ssh_key_pair: candidate.then_some((&keys.ssh_private, keys.ssh_public.as_str())),
        authorized_keys: &reply.authorized_keys,
    })
}
