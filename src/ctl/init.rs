//! `nodectl init`: a new cluster with this node as its master.

use ssconf::DigestAlgorithm;

use super::Outcome;
use crate::core::{hex, Error, Result};
use crate::pki::keystore::{FileKeyStore, KeyStore};
use crate::pki::{CertInfo, CertificateSigner, NodeKey};
use crate::state::config::{ClusterConfig, NodeRecord, NodeRole};
use crate::state::{self, NodeFiles, NodeIdentity, SshPaths, StateDir};

/// What `nodectl init` was asked for, checked by the command line.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub cluster_name: String,
    pub node_name: String,
    pub address: String,
    pub digest: DigestAlgorithm,
    pub candidate_pool_size: u32,
    /// How long a node certificate lives.
    pub cert_lifetime: std::time::Duration,
    /// A `pkcs11:` URI for the CA key, instead of `ca.key`.
    pub ca_key: Option<String>,
    pub ssh: SshPaths,
}

/// `nodectl init`: a new cluster with this node as master.
pub fn init(state: &StateDir, opts: &InitOptions) -> Result<Outcome> {
    crate::state::config::check_name("cluster name", &opts.cluster_name)?;
    crate::state::config::check_node_name(&opts.node_name)?;
    crate::state::config::check_address(&opts.address)?;
    if state.is_initialised() {
        return Err(Error::Invalid(format!(
            "{} is already initialised (node.json exists); refusing to overwrite a node's state",
            state.root().display()
        )));
    }
    let token_store = opts
        .ca_key
        .as_deref()
        .map(crate::pki::hsm::Pkcs11Uri::parse)
        .transpose()?
        .map(crate::pki::keystore::Pkcs11KeyStore::new);
    state::create_dir(state.root(), 0o755)?;
    // The CA outlives the certificates it signs, by far: it is never
    // renewed automatically.
    let ca_days = cert_days(opts).saturating_mul(10).clamp(3650, 36500);
    // The token (when named) is opened, and its key made or found, before
    // anything else is written: a wrong PIN or label leaves no state behind.
    let store: Box<dyn KeyStore> = match token_store {
        Some(store) => Box::new(store),
        None => Box::new(FileKeyStore::new(state)),
    };
    let ca = store.create_ca(&opts.cluster_name, ca_days)?;
    let uuid = uuid::Uuid::new_v4().to_string();
    // Like every node, the master makes its own two keys and has the CA
    // sign a CSR for each.
    let node_key = NodeKey::generate()?;
    let server_key = NodeKey::generate()?;
    let name = &opts.node_name;
    let client_pem = ca.sign_client_csr(&node_key.csr(name)?, name, opts.cert_lifetime)?;
    let server_pem = ca.sign_server_csr(&server_key.csr(name)?, name, &uuid, opts.cert_lifetime)?;
    let client_der = crate::pki::load_certs_from_pem(&client_pem)?;
    let server_der = crate::pki::load_certs_from_pem(&server_pem)?;
    // The master is a master candidate: it has its own SSH key pair.
    let (ssh_private, ssh_public) = crate::state::ssh::generate(&opts.node_name)?;
    let master = NodeRecord {
        uuid,
        name: opts.node_name.clone(),
        address: opts.address.clone(),
        role: NodeRole::Master,
        offline: false,
        digest: opts.digest.digest(&client_der).to_string(),
        cert_expires: CertInfo::from_der(&client_der)?.not_after,
        ssh_public_key: Some(ssh_public.clone()),
        next_digest: None,
        server_digest: DigestAlgorithm::Sha256.digest(&server_der).to_string(),
        next_server_digest: None,
        candidate_since: crate::core::time::now(),
    };
    let config = first_config(opts, &ca, &master);
    let identity = NodeIdentity {
        uuid: master.uuid.clone(),
        name: opts.node_name.clone(),
        address: opts.address.clone(),
        ssh_dir: opts.ssh.ssh_dir.clone(),
        authorized_keys: opts.ssh.authorized_keys.clone(),
    };
    let state = &state.clone().with_ssh_paths(&opts.ssh);
    state.write_node_files(&NodeFiles {
        identity: &identity,
        ca_pem: ca.cert_pem(),
        server_pem: &server_pem,
        server_key: &server_key.to_pem(),
        client_key: &node_key.to_pem(),
        client_pem: &client_pem,
        ssconf: &config.to_ssconf()?,
        ca_key: None,
        config_json: Some(&state::to_json(&config)?),
        ssh_key_pair: Some((&ssh_private, &ssh_public)),
        authorized_keys: std::slice::from_ref(&ssh_public),
    })?;
    // The Raft state: its daemon makes this node the only voter when it
    // first starts.
    state::create_dir(&state.raft_dir(), 0o700)?;
    say_initialised(state, opts, &ca, store.describe(), &master.digest);
    Ok(Outcome::Success)
}

/// What `init` made, for the operator.
fn say_initialised(
    state: &StateDir,
    opts: &InitOptions,
    ca: &impl CertificateSigner,
    ca_key: String,
    client_digest: &str,
) {
    crate::say!(
        "initialised cluster {} with master {} ({})",
        opts.cluster_name,
        opts.node_name,
        opts.address
    );
    crate::say!("  state directory  {}", state.root().display());
    crate::say!(
        "  CA sha256        {}",
        DigestAlgorithm::Sha256.digest(ca.cert_der())
    );
    crate::say!("  CA key           {ca_key}");
    crate::say!("  client digest    {client_digest} ({})", opts.digest);
    crate::say!(
        "start the daemon:  noded --state-dir {}",
        state.root().display()
    );
}

/// Node certificates' lifetime in whole days, rounded up.
fn cert_days(opts: &InitOptions) -> u32 {
    u32::try_from(opts.cert_lifetime.as_secs().div_ceil(86_400))
        .unwrap_or(36_500)
        .max(1)
}

/// The config of a new cluster: serial 1, the master its only node, no
/// users, an empty audit trail.
fn first_config(
    opts: &InitOptions,
    ca: &impl CertificateSigner,
    master: &NodeRecord,
) -> ClusterConfig {
    ClusterConfig {
        cluster_name: opts.cluster_name.clone(),
        serial: 1,
        candidate_pool_size: opts.candidate_pool_size,
        digest: opts.digest.into(),
        cert_days: cert_days(opts),
        cert_lifetime: opts.cert_lifetime.as_secs(),
        ca_sha256: hex::lower(DigestAlgorithm::Sha256.digest(ca.cert_der()).as_bytes()),
        ca_key: opts.ca_key.clone(),
        nodes: vec![master.clone()],
        users: Vec::new(),
        audit: Vec::new(),
        ca_rotation: None,
        term: 0,
    }
}
