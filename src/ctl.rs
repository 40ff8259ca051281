//! `nodectl`'s commands.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use ssconf::{DigestAlgorithm, Ssconf};

use crate::cli::{Command, DigestArg, Generate, InitArgs, NodectlArgs, TokenCommand};
use crate::client::RpcClient;
use crate::config::{ClusterConfig, NodeRecord, NodeRole};
use crate::error::{Error, Result};
use crate::frame::{Procedure, Reply};
use crate::keystore::{FileKeyStore, KeyStore};
use crate::pki::{self, CertInfo, CertificateSigner, NodeKey};
use crate::state::{self, NodeIdentity, StateDir, MODE_PUBLIC, MODE_SECRET};
use crate::token::{JoinToken, TokenStore};

/// Appended to the bash completion: node names (from the state directory's
/// ssconf) where a command takes a NODE.
const BASH_NODE_NAMES: &str = r#"
# Node names from ssconf for NODE arguments (modify, remove, ping, --node).
_nodectl_node_names() {
    local dir="${NODED_STATE_DIR:-/var/lib/noded}" i
    for ((i = 1; i < ${#COMP_WORDS[@]}; i++)); do
        case ${COMP_WORDS[i]} in
            --state-dir) dir=${COMP_WORDS[i + 1]} ;;
            --state-dir=*) dir=${COMP_WORDS[i]#--state-dir=} ;;
        esac
    done
    cat "$dir/ssconf/ssconf_node_list" 2>/dev/null
}
_nodectl_with_nodes() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]} word
    if [[ $cur != -* ]]; then
        case $prev in
            modify | remove | --node)
                COMPREPLY=($(compgen -W "$(_nodectl_node_names)" -- "$cur"))
                return 0
                ;;
        esac
        for word in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
            if [[ $word == ping ]]; then
                COMPREPLY=($(compgen -W "$(_nodectl_node_names)" -- "$cur"))
                return 0
            fi
        done
    fi
    _nodectl "$@"
}
complete -F _nodectl_with_nodes -o nosort -o bashdefault -o default nodectl
"#;

/// How a command ended (errors are returned as `Err`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1: the command ran, and what it checked failed.
    Failed,
    /// Exit 3: done, but some nodes were unreachable.
    Partial,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failed => 1,
            Outcome::Partial => 3,
        }
    }
}

/// Runs one parsed `nodectl` command.
pub async fn run(args: NodectlArgs) -> Result<Outcome> {
    let state = StateDir::new(&args.global.state_dir);
    match args.command {
        Command::Init(init_args) => init(&state, &init_args),
        Command::List { json } => list(&state, json),
        Command::Ping {
            nodes,
            json,
            timeout,
        } => {
            ping(
                &state,
                &nodes,
                json,
                std::time::Duration::from_secs(timeout),
            )
            .await
        }
        Command::Token(TokenCommand::Create {
            ttl,
            master_candidate,
            json,
            wait,
        }) => token_create(&state, ttl, master_candidate, json, wait),
        Command::Token(TokenCommand::List { json }) => token_list(&state, json),
        Command::Token(TokenCommand::Revoke { id, wait }) => token_revoke(&state, &id, wait),
        Command::Join {
            token,
            node_name,
            address,
            ssh,
        } => crate::join::join(&state, &token, &node_name, &address, &ssh).await,
        Command::Modify(m) => match (m.master_candidate, m.offline) {
            (Some(mc), None) => {
                crate::lifecycle::set_candidate(&state, &m.node, mc.yes(), m.auto_promote, m.wait)
                    .await
            }
            (None, Some(off)) => {
                crate::lifecycle::set_offline(&state, &m.node, off.yes(), m.auto_promote, m.wait)
                    .await
            }
            _ => Err(Error::Invalid(
                "give exactly one of --master-candidate and --offline".into(),
            )),
        },
        Command::Remove { node, wait } => crate::lifecycle::remove(&state, &node, wait).await,
        Command::MasterFailover { wait } => crate::lifecycle::master_failover(&state, wait).await,
        Command::Verify { json } => crate::verify::verify(&state, json).await,
        Command::RenewCrypto(r) => {
            let plan = crate::renew::RenewPlan {
                node_certificates: r.new_node_certificates,
                cluster_certificate: r.new_cluster_certificate,
                ssh_keys: r.new_ssh_keys,
                ca: r.new_ca,
                nodes: r.node,
            };
            crate::renew::renew(&state, &plan, r.wait).await
        }
        Command::Generate(Generate::Man { dir }) => generate_man(&dir),
        Command::Generate(Generate::Completions { shell }) => {
            let mut cmd = <NodectlArgs as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "nodectl", &mut script);
            let mut text = String::from_utf8_lossy(&script).into_owned();
            if shell == clap_complete::Shell::Bash {
                text.push_str(BASH_NODE_NAMES);
            }
            write_stdout(&text)?;
            Ok(Outcome::Success)
        }
    }
}

/// `nodectl init`: a new cluster with this node as master.
fn init(state: &StateDir, args: &InitArgs) -> Result<Outcome> {
    crate::config::check_name("cluster name", &args.cluster_name)?;
    crate::config::check_name("node name", &args.node_name)?;
    crate::config::check_address(&args.address)?;
    if state.is_initialised() {
        return Err(Error::Invalid(format!(
            "{} is already initialised (node.json exists); refusing to overwrite a node's state",
            state.root().display()
        )));
    }
    let token_store = args
        .ca_key
        .as_deref()
        .map(crate::hsm::Pkcs11Uri::parse)
        .transpose()?
        .map(crate::keystore::Pkcs11KeyStore::new);
    state::create_dir(state.root(), 0o755)?;
    let digest_alg = match args.digest {
        DigestArg::Sha256 => DigestAlgorithm::Sha256,
        DigestArg::Sha1 => DigestAlgorithm::Sha1,
    };
    // The CA outlives the certificates it signs.
    let ca_days = args.cert_days.saturating_mul(10).min(36500);
    // The token (when named) is opened, and its key made or found, before
    // anything else is written: a wrong PIN or label leaves no state behind.
    let store: Box<dyn KeyStore> = match token_store {
        Some(store) => Box::new(store),
        None => Box::new(FileKeyStore::new(state)),
    };
    let ca = store.create_ca(&args.cluster_name, ca_days)?;
    let (server_pem, server_key) =
        ca.issue_server_certificate(&args.cluster_name, args.cert_days)?;
    let node_key = NodeKey::generate()?;
    let client_pem = ca.sign_client_csr(&node_key.client_csr(&args.node_name)?, args.cert_days)?;
    let client_der = rustls_pki_types::CertificateDer::from(
        pem_first_der(&client_pem)
            .ok_or_else(|| Error::Certificate("signed certificate is not PEM".into()))?,
    );
    let uuid = uuid::Uuid::new_v4().to_string();
    // The master is a master candidate: it has its own SSH key pair.
    let (ssh_private, ssh_public) = crate::ssh::generate(&args.node_name)?;
    let config = ClusterConfig {
        cluster_name: args.cluster_name.clone(),
        serial: 1,
        candidate_pool_size: args.candidate_pool_size,
        digest: digest_alg.into(),
        cert_days: args.cert_days,
        ca_sha256: hex_lower(DigestAlgorithm::Sha256.digest(ca.cert_der()).as_bytes()),
        ca_key: args.ca_key.clone(),
        nodes: vec![NodeRecord {
            uuid: uuid.clone(),
            name: args.node_name.clone(),
            address: args.address.clone(),
            role: NodeRole::Master,
            offline: false,
            digest: digest_alg.digest(&client_der).to_string(),
            cert_expires: CertInfo::from_der(&client_der)?.not_after,
            ssh_public_key: Some(ssh_public.clone()),
            next_digest: None,
        }],
    };
    let identity = NodeIdentity {
        uuid,
        name: args.node_name.clone(),
        address: args.address.clone(),
        ssh_dir: args.ssh.ssh_dir.clone(),
        authorized_keys: args.ssh.authorized_keys.clone(),
    };
    let state = &state
        .clone()
        .with_ssh_paths(args.ssh.ssh_dir.clone(), args.ssh.authorized_keys.clone());
    // Keys and certificates first, node.json last: a node without node.json
    // is not initialised, so an interrupted init can simply be run again.
    state.write(&state.ca_pem(), ca.cert_pem().as_bytes(), MODE_PUBLIC)?;
    state.write(&state.server_pem(), server_pem.as_bytes(), MODE_PUBLIC)?;
    state.write(
        &state.server_key(),
        server_key.expose().as_bytes(),
        MODE_SECRET,
    )?;
    state.write(
        &state.client_key(),
        node_key.to_pem().expose().as_bytes(),
        MODE_SECRET,
    )?;
    state.write(&state.client_pem(), client_pem.as_bytes(), MODE_PUBLIC)?;
    state.write(&state.config_json(), &state::to_json(&config)?, MODE_SECRET)?;
    config.to_ssconf()?.store(&state.ssconf_dir())?;
    state.write_ssh_key_pair(&ssh_private, &ssh_public)?;
    crate::ssh::write_authorized_keys(&state.authorized_keys(), &[ssh_public])?;
    state.write(&state.node_json(), &state::to_json(&identity)?, MODE_PUBLIC)?;
    let digest = &config
        .nodes
        .first()
        .map(|n| n.digest.clone())
        .unwrap_or_default();
    crate::say!(
        "initialised cluster {} with master {} ({})",
        args.cluster_name,
        args.node_name,
        args.address
    );
    crate::say!("  state directory  {}", state.root().display());
    crate::say!(
        "  CA sha256        {}",
        DigestAlgorithm::Sha256.digest(ca.cert_der())
    );
    crate::say!("  CA key           {}", store.describe());
    crate::say!("  client digest    {digest} ({digest_alg})");
    crate::say!(
        "start the daemon:  noded --state-dir {}",
        state.root().display()
    );
    Ok(Outcome::Success)
}

fn pem_first_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `nodectl token create`.
fn token_create(
    state: &StateDir,
    ttl: u64,
    master_candidate: bool,
    json: bool,
    wait: bool,
) -> Result<Outcome> {
    let config = crate::cluster::master_config(state)?;
    let _lock = crate::cluster::ClusterLock::acquire(state, wait, "token create")?;
    let mut tokens = TokenStore::load(state)?;
    tokens.prune(crate::token::now());
    let ttl = i64::try_from(ttl).map_err(|_| Error::Invalid("--ttl is too long".into()))?;
    let (stored, secret) = tokens.create(ttl, master_candidate);
    tokens.save(state)?;
    let token = JoinToken {
        v: 1,
        addrs: vec![config.master()?.address.clone()],
        ca_sha256: config.ca_sha256.clone(),
        id: stored.id.clone(),
        secret,
        expires: stored.expires,
        master_candidate,
    };
    let line = token.encode()?;
    if json {
        print_json(&serde_json::json!({
            "id": stored.id,
            "expires": rfc3339(stored.expires),
            "master_candidate": master_candidate,
            "connection_string": line,
        }))?;
    } else {
        write_stdout(&format!("{line}\n"))?;
        eprintln!(
            "token {} valid until {}, once{}; on the new node run:\n  nodectl --state-dir DIR join '<the line above>' --node-name NAME --address HOST:PORT",
            stored.id,
            rfc3339(stored.expires),
            if master_candidate { ", joins as a master candidate" } else { "" }
        );
    }
    Ok(Outcome::Success)
}

/// One row of `nodectl token list`.
#[derive(Debug, Serialize)]
struct ListedToken {
    id: String,
    expires: String,
    master_candidate: bool,
}

/// `nodectl token list`.
fn token_list(state: &StateDir, json: bool) -> Result<Outcome> {
    crate::cluster::master_config(state)?;
    let mut tokens = TokenStore::load(state)?;
    tokens.prune(crate::token::now());
    let rows: Vec<ListedToken> = tokens
        .tokens
        .iter()
        .map(|t| ListedToken {
            id: t.id.clone(),
            expires: rfc3339(t.expires),
            master_candidate: t.master_candidate,
        })
        .collect();
    if json {
        print_json(&serde_json::json!({ "tokens": rows }))?;
    } else {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.expires.clone(),
                    if t.master_candidate { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect();
        print_table(&["ID", "EXPIRES", "MASTER CANDIDATE"], &table)?;
    }
    Ok(Outcome::Success)
}

/// `nodectl token revoke ID`.
fn token_revoke(state: &StateDir, id: &str, wait: bool) -> Result<Outcome> {
    crate::cluster::master_config(state)?;
    let _lock = crate::cluster::ClusterLock::acquire(state, wait, "token revoke")?;
    let mut tokens = TokenStore::load(state)?;
    if !tokens.burn(id) {
        return Err(Error::Invalid(format!(
            "no outstanding token {id:?}; `nodectl token list` shows them"
        )));
    }
    tokens.save(state)?;
    crate::say!("token {id} revoked");
    Ok(Outcome::Success)
}

/// One row of `nodectl list`.
#[derive(Debug, Serialize)]
struct ListedNode {
    name: String,
    uuid: String,
    address: String,
    role: String,
    offline: bool,
    digest: String,
    /// RFC 3339, UTC; empty when unknown.
    cert_expires: String,
}

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// `nodectl list`: from config.json on the master and candidates, from
/// ssconf elsewhere (which knows no uuids, digests or expiry dates).
fn list(state: &StateDir, json: bool) -> Result<Outcome> {
    let rows: Vec<ListedNode> = if state.config_json().exists() {
        let config: ClusterConfig = state::read_json(&state.config_json())?;
        let mut nodes = config.nodes;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
            .into_iter()
            .map(|n| ListedNode {
                name: n.name,
                uuid: n.uuid,
                address: n.address,
                role: n.role.as_str().to_owned(),
                offline: n.offline,
                digest: n.digest,
                cert_expires: rfc3339(n.cert_expires),
            })
            .collect()
    } else {
        state.check_initialised()?;
        let ssconf = Ssconf::load(&state.ssconf_dir())?;
        ssconf
            .node_addresses
            .iter()
            .map(|(name, address)| ListedNode {
                role: if *name == ssconf.master_node {
                    "master"
                } else if ssconf.master_candidates.contains(name) {
                    "candidate"
                } else {
                    "regular"
                }
                .to_owned(),
                offline: ssconf.offline_nodes.contains(name),
                name: name.clone(),
                uuid: String::new(),
                address: address.clone(),
                digest: String::new(),
                cert_expires: String::new(),
            })
            .collect()
    };
    if json {
        print_json(&NodeList { nodes: rows })?;
    } else {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.role.clone(),
                    if r.offline { "yes" } else { "no" }.to_owned(),
                    r.address.clone(),
                    r.cert_expires.clone(),
                    r.digest.clone(),
                ]
            })
            .collect();
        print_table(
            &[
                "NAME",
                "ROLE",
                "OFFLINE",
                "ADDRESS",
                "CERT EXPIRES",
                "DIGEST",
            ],
            &table,
        )?;
    }
    Ok(Outcome::Success)
}

/// One row of `nodectl ping`.
#[derive(Debug, Serialize)]
struct PingResult {
    node: String,
    ok: bool,
    rtt_ms: Option<f64>,
    error: Option<String>,
}

/// `nodectl ping`: from any node, with that node's client certificate.
async fn ping(
    state: &StateDir,
    nodes: &[String],
    json: bool,
    timeout: std::time::Duration,
) -> Result<Outcome> {
    state.check_initialised()?;
    let ssconf = Ssconf::load(&state.ssconf_dir())?;
    let targets: Vec<(String, String)> = if nodes.is_empty() {
        ssconf
            .online_nodes
            .iter()
            .filter_map(|n| ssconf.address_of(n).map(|a| (n.clone(), a.to_owned())))
            .collect()
    } else {
        nodes
            .iter()
            .map(|n| {
                ssconf
                    .address_of(n)
                    .map(|a| (n.clone(), a.to_owned()))
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "unknown node {n:?}; `nodectl list` shows the cluster's nodes"
                        ))
                    })
            })
            .collect::<Result<_>>()?
    };
    let mut client = RpcClient::from_state(state)?;
    client.connect_timeout = timeout;
    client.call_timeout = timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (node, address)) in targets.into_iter().enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            let result = async {
                let mut conn = client.connect(&node, &address).await?;
                // The round trip of the RPC alone, on the open connection.
                let start = Instant::now();
                match conn.call(Procedure::Ping).await? {
                    Reply::Pong { .. } => Ok(start.elapsed()),
                    other => Err(Error::Remote {
                        node: node.clone(),
                        message: format!("unexpected reply {other:?}"),
                    }),
                }
            }
            .await;
            let row = match result {
                Ok(rtt) => PingResult {
                    node,
                    ok: true,
                    rtt_ms: Some((rtt.as_secs_f64() * 1e6).round() / 1000.0),
                    error: None,
                },
                Err(e) => PingResult {
                    node,
                    ok: false,
                    rtt_ms: None,
                    error: Some(e.to_string()),
                },
            };
            (index, row)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(r) => results.push(r),
            Err(e) => return Err(Error::Invalid(format!("ping task failed: {e}"))),
        }
    }
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<PingResult> = results.into_iter().map(|(_, r)| r).collect();
    let all_ok = results.iter().all(|r| r.ok);
    let failure = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.error.clone().unwrap_or_else(|| "failed".into()))
        .collect::<Vec<_>>();
    let total = results.len();
    if json {
        print_json(&PingResults { results })?;
    } else {
        let table: Vec<Vec<String>> = results
            .iter()
            .map(|r| match (&r.rtt_ms, &r.error) {
                (Some(ms), _) => vec![r.node.clone(), "ok".into(), format!("{ms:.3} ms")],
                (_, err) => vec![
                    r.node.clone(),
                    "FAILED".into(),
                    err.clone().unwrap_or_default(),
                ],
            })
            .collect();
        print_table(&["NODE", "RESULT", "DETAIL"], &table)?;
    }
    if let Some(first) = failure.first() {
        eprintln!("error: {} of {total} nodes failed; {first}", failure.len());
    }
    Ok(if all_ok {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

fn generate_man(dir: &Path) -> Result<Outcome> {
    state::create_dir(dir, 0o755)?;
    for (name, cmd) in crate::man::pages() {
        let path = dir.join(format!("{name}.8"));
        let page = crate::man::render(&cmd).map_err(Error::io(&path))?;
        ssconf::write_atomic(&path, &page, MODE_PUBLIC).map_err(Error::io(&path))?;
        crate::say!("{}", path.display());
    }
    Ok(Outcome::Success)
}

/// `nodectl list --json`.
#[derive(Debug, Serialize)]
struct NodeList {
    nodes: Vec<ListedNode>,
}

/// `nodectl ping --json`.
#[derive(Debug, Serialize)]
struct PingResults {
    results: Vec<PingResult>,
}

pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Invalid(format!("cannot encode JSON: {e}")))?;
    write_stdout(&format!("{text}\n"))
}

/// Prints rows aligned in columns under `header`.
fn print_table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, w) in cells.zip(&widths) {
            text.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    write_stdout(&out)
}

/// Writes one line to stdout, ignoring a closed pipe.
pub fn say_line(text: &str) {
    let _ = write_stdout(&format!("{text}\n"));
}

/// Writes to stdout; a closed pipe (`nodectl list | head -1`) is not an error.
fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("stdout")(e)),
        _ => Ok(()),
    }
}

/// Digest of the first certificate in a PEM file (tests and tools).
pub fn file_digest(path: &Path, alg: DigestAlgorithm) -> Result<ssconf::CertDigest> {
    let certs = pki::load_certs(path)?;
    certs
        .first()
        .map(|c| pki::digest(c, alg))
        .ok_or_else(|| Error::Pem {
            path: path.to_path_buf(),
            reason: "no certificate".into(),
        })
}
