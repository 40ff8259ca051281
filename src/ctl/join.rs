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
use crate::state::config::{check_address, check_name};
use crate::state::token::JoinToken;
use crate::state::{NodeFiles, NodeIdentity, SshPaths, StateDir};
use crate::wire::{JoinReply, JoinRequest, Procedure, Reply};

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
    check_name("node name", node_name)?;
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
    let key = NodeKey::generate()?;
    let (ssh_private, ssh_public) = crate::state::ssh::generate(node_name)?;
    let request = JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        node_name: node_name.to_owned(),
        address: address.to_owned(),
        csr_pem: key.client_csr(node_name)?,
        ssh_public_key: ssh_public.clone(),
    };
    let client = RpcClient::new(pinned_client_config(token.ca_pin()?)?);

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

/// Writes what the master sent, once it is checked to fit together: the CA
/// is the pinned one, the certificate is for our key and chains to that CA.
#[allow(clippy::too_many_arguments)]
fn install(
    state: &StateDir,
    ssh: &SshPaths,
    pin: [u8; 32],
    node_name: &str,
    address: &str,
    key: &NodeKey,
    ssh_private: Secret,
    ssh_public: &str,
    reply: &JoinReply,
) -> Result<()> {
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
    let candidate = reply.master_candidate;
    state.write_node_files(&NodeFiles {
        identity: &NodeIdentity {
            uuid: reply.uuid.clone(),
            name: node_name.to_owned(),
            address: address.to_owned(),
            ssh_dir: ssh.ssh_dir.clone(),
            authorized_keys: ssh.authorized_keys.clone(),
        },
        ca_pem: &reply.ca_pem,
        server_pem: &reply.server_pem,
        server_key: &reply.server_key,
        client_key: &key.to_pem(),
        client_pem: &reply.client_pem,
        ssconf: &ssconf,
        // With the CA key in a token, only the config (naming it) comes.
        ca_key: reply.ca_key.as_ref().filter(|_| candidate),
        config_json: reply
            .config_json
            .as_ref()
            .filter(|_| candidate)
            .map(|c| c.as_bytes()),
        ssh_key_pair: candidate.then_some((&ssh_private, ssh_public)),
        authorized_keys: &reply.authorized_keys,
    })
}
