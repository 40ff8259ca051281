//! Command-line definitions of `noded` and `nodectl`. They live in the
//! library so the man pages and completions are generated from the same
//! definitions the binaries parse.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use ssconf::DigestAlgorithm;

use crate::core::{Error, Result};
use crate::ctl::output::write_stdout;
use crate::ctl::{self, Outcome};
use crate::daemon::server::Limits;
use crate::logging::LogFormat;
use crate::state::{self, SshPaths, StateDir, DEFAULT_STATE_DIR, MODE_PUBLIC};

/// Options every command of both binaries takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The node's state directory.
    #[arg(long, env = "NODED_STATE_DIR", default_value = DEFAULT_STATE_DIR, global = true, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Log format (logs go to stderr; filter with RUST_LOG, e.g. RUST_LOG=noded=debug).
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

/// noded: the node daemon. Serves RPCs over mutual TLS to the master and the
/// master candidates only.
///
/// A client is admitted only if its certificate chains to the cluster CA AND
/// its digest is in the candidate map (ssconf/ssconf_master_candidates_certs),
/// which is reloaded as soon as the file changes and on SIGHUP.
#[derive(Debug, Parser)]
#[command(name = "noded", version, max_term_width = 100)]
pub struct NodedArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Address to listen on (default: the address recorded at init/join).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Admitted connections served at once (join sessions on the master
    /// included); a connection that completes its handshake beyond them is
    /// closed.
    #[arg(long, default_value_t = 4096, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Connections in the TLS handshake at once, from addresses other than
    /// the master's and the candidates'; further ones are closed at accept.
    /// The master and the candidates (their IP addresses in ssconf) have a
    /// budget of the same size of their own, so a flood cannot keep them
    /// out.
    #[arg(long, default_value_t = 1024, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes: u32,
    /// Connections one source address (an IPv6 /64) may have in the TLS
    /// handshake at once; further ones are closed at accept.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes_per_source: u32,
    /// Seconds a client has to complete the TLS handshake.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout: u64,
    /// Seconds an established connection may stay idle.
    #[arg(long, default_value_t = 300, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout: u64,
    /// Largest request frame, in bytes.
    #[arg(long, default_value_t = crate::wire::DEFAULT_MAX_FRAME, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(64..))]
    pub max_frame: u32,
    /// Also accept TLS 1.2 (AEAD suites only). TLS 1.3 alone by default.
    #[arg(long)]
    pub allow_tls12: bool,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (plain HTTP, no
    /// authentication; a loopback address is required, e.g. 127.0.0.1:9811).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// On the master: seconds between two heartbeats of every online node
    /// (the convergence loop); a node that is behind gets the current state.
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat: u64,
    /// Serve the remote API at https://ADDR:PORT/v1/ (conventional port
    /// 5080): HTTP/1.1 JSON over TLS 1.3, for the users made with `nodectl
    /// user add` only (their certificate is checked in the handshake). On
    /// a node that is not the master, every request is answered with a 307
    /// to the master's address on the same port. Bodies up to 1 MiB,
    /// headers up to 64 KiB, 8 requests of one user at once,
    /// --request-timeout per request.
    #[arg(long, value_name = "ADDR:PORT")]
    pub api_listen: Option<String>,
}

/// nodectl: runs a noded cluster: init, membership, roles, checks, rotation.
///
/// Exit status: 0 success; 1 the operation failed (or verify found errors);
/// 2 usage error; 3 completed, but some nodes were unreachable.
#[derive(Debug, Parser)]
#[command(
    name = "nodectl",
    version,
    max_term_width = 100,
    propagate_version = true
)]
pub struct NodectlArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

impl NodedArgs {
    /// What the daemon runs with.
    pub fn daemon_options(&self) -> crate::daemon::Options {
        crate::daemon::Options {
            state_dir: self.global.state_dir.clone(),
            listen: self.listen.clone(),
            metrics: self.metrics.clone(),
            heartbeat: std::time::Duration::from_secs(self.heartbeat),
            api_listen: self.api_listen.clone(),
            limits: Limits {
                max_frame: self.max_frame,
                max_connections: self.max_connections,
                max_handshakes: self.max_handshakes,
                max_handshakes_per_source: self.max_handshakes_per_source,
                handshake_timeout: std::time::Duration::from_secs(self.handshake_timeout),
                idle_timeout: std::time::Duration::from_secs(self.idle_timeout),
                request_timeout: std::time::Duration::from_secs(self.request_timeout),
                allow_tls12: self.allow_tls12,
                ..Limits::default()
            },
        }
    }
}

/// The subcommands of `nodectl`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new cluster with this node as its master.
    Init(InitArgs),
    /// List the cluster's nodes.
    List {
        /// Print one JSON document: {"nodes": [{"name", "uuid", "address", "role", "offline", "digest", "cert_expires", "reachable", "last_seen"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Call a trivial RPC on nodes with this node's client certificate.
    ///
    /// Works from any node; from a node that is not a master candidate every
    /// target refuses it ("not authorized").
    Ping {
        /// Nodes to ping (default: every online node).
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
        /// Print one JSON document: {"results": [{"node", "ok", "rtt_ms", "error"}]}.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for each node.
        #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
    },
    /// Join tokens: create, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Join this (new) node to a cluster with a connection string.
    ///
    /// Run on the new node, with its own --state-dir. The node makes its key
    /// and CSR here; the connection to the master is refused before anything
    /// is sent unless the master's CA matches the token's pin. The master
    /// refuses an address another node has, however spelled (it compares
    /// the resolved IP and port). A join stopped after the master admitted
    /// the node is told so when run again with the same token: then run
    /// `nodectl remove NODE` on the master and join with a new token.
    Join {
        /// The `noded-join:...` connection string from `nodectl token create`.
        #[arg(value_name = "TOKEN")]
        token: String,
        /// Name of this node: a DNS host name (labels of lower-case letters,
        /// digits and '-', joined by '.'; at most 253 characters).
        #[arg(long, value_name = "N")]
        node_name: String,
        /// Address this node's daemon listens on and peers connect to.
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
        #[command(flatten)]
        ssh: SshArgs,
    },
    /// Change a node's role: promote/demote, offline/online.
    Modify(ModifyArgs),
    /// Remove a node from the cluster (best effort to wipe its keys).
    Remove {
        #[arg(value_name = "NODE")]
        node: String,
        /// Wait for the cluster lock instead of failing when it is taken.
        #[arg(long)]
        wait: bool,
    },
    /// Make this master candidate (or NODE) the master by a Raft leadership
    /// transfer (run on a candidate); refused when the target is behind or
    /// no majority of voters answers.
    MasterFailover {
        /// The candidate to make the master (default: this node).
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// Accepted for compatibility; a transfer takes no lock.
        #[arg(long, hide = true)]
        wait: bool,
    },
    /// When a majority of voters is lost for good: make this candidate the
    /// only voter and the master, in a new term (run on a candidate).
    /// Prints what may be lost; the lost voters become regular nodes and
    /// rejoin by promotion. Refused while a majority answers.
    Recover {
        /// Required: this sets Raft's majority rule aside.
        #[arg(long, required = true)]
        force: bool,
    },

    /// The cluster at a glance (run on the master or a candidate): the
    /// master, the CA rotation phase, each node's health as the master's
    /// heartbeats saw it (reachable, last heartbeat, serial) and its
    /// certificates' expiry.
    Status {
        /// Print one JSON document: {"cluster", "master", "term", "commit_index", "voters", "ca_rotation": {"phase"}, "nodes": [{"name", "role", "reachable", "last_seen", "serial", "term", "client_cert_expires", "server_cert_expires"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Check the cluster's consistency (run on the master or a candidate).
    ///
    /// Gathers every online node's state over RPC and reports each finding as
    /// ERROR or WARNING with the node and the command that fixes it. Exit 0
    /// with warnings only, 1 with any error.
    Verify {
        /// Print one JSON document: {"findings": [{"severity", "node", "code", "message", "fix"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Rotate node certificates, the server certificate or SSH keys without
    /// downtime.
    ///
    /// Node certificates switch through an overlapping candidate map (old and
    /// new digests), so no candidate, the master included, is ever refused.
    /// An interrupted run is completed by running it again.
    RenewCrypto(RenewArgs),
    /// Generate man pages or shell completions.
    #[command(subcommand)]
    Generate(Generate),
    /// Users of the remote API (noded --api-listen): add, list, revoke.
    #[command(subcommand)]
    User(UserCommand),
    /// Print the audit trail: every change, who made it, and how it ended.
    ///
    /// Read from this node's config.json: run it on the master or any master
    /// candidate. The trail keeps the last 10000 entries.
    Audit {
        /// Only entries at or after TIME: RFC 3339 (2026-01-31T12:00:00Z) or
        /// a duration back from now (30m, 1h, 2d).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Print one JSON document: {"entries": [{"time", "actor", "action", "target", "result"}]}.
        #[arg(long)]
        json: bool,
    },
}

/// `nodectl user`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user of the remote API: the cluster CA signs a certificate for
    /// the user's key.
    ///
    /// With --csr, the user keeps their own key (ECDSA P-256) and the
    /// certificate is printed (or written to DIR/NAME.pem with --out). With
    /// --out alone, a key is made here: DIR/NAME.key (mode 0600) and
    /// DIR/NAME.pem. Run on the master.
    #[command(group(clap::ArgGroup::new("key_source").required(true).multiple(true).args(["csr", "out"])))]
    Add {
        #[arg(value_name = "NAME")]
        name: String,
        /// What the user may do; roles nest (admin > operator > readonly).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The user's certificate signing request (PEM, ECDSA P-256).
        #[arg(long, value_name = "FILE")]
        csr: Option<PathBuf>,
        /// Write NAME.pem (and, without --csr, a new key NAME.key) into DIR.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Validity of the certificate, e.g. 30d, 12w (at most 365d).
        #[arg(long, default_value = "90d", value_name = "DURATION", value_parser = crate::cluster::ttl::parse_for_clap)]
        ttl: u64,
        /// Wait for the cluster lock instead of failing when it is taken.
        #[arg(long)]
        wait: bool,
    },
    /// List the users (revoked ones included).
    List {
        /// Print one JSON document: {"users": [{"name", "role", "digest", "expires", "revoked"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a user: refused from then on; its open API connections are
    /// closed within one second.
    Revoke {
        #[arg(value_name = "NAME")]
        name: String,
        /// Wait for the cluster lock instead of failing when it is taken.
        #[arg(long)]
        wait: bool,
    },
}

/// `--role` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Readonly,
    Operator,
    Admin,
}

impl From<RoleArg> for crate::state::users::UserRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Readonly => Self::Readonly,
            RoleArg::Operator => Self::Operator,
            RoleArg::Admin => Self::Admin,
        }
    }
}

/// The audit action and target of a mutating command that does not record
/// its own entry.
fn audited(command: &Command) -> Option<(String, String)> {
    let entry = |action: &str, target: &str| Some((action.to_owned(), target.to_owned()));
    match command {
        Command::Modify(m) => match (m.master_candidate, m.offline) {
            (Some(YesNo::Yes), _) => entry("promote", &m.node),
            (Some(YesNo::No), _) => entry("demote", &m.node),
            (None, Some(YesNo::Yes)) => entry("offline", &m.node),
            (None, Some(YesNo::No)) => entry("online", &m.node),
            (None, None) => None,
        },
        Command::Remove { node, .. } => entry("remove", node),
        Command::MasterFailover { to, .. } => {
            entry("master-failover", to.as_deref().unwrap_or("-"))
        }
        Command::Recover { .. } => None,

        Command::RenewCrypto(r) => {
            let mut what = Vec::new();
            for (set, name) in [
                (r.new_node_certificates, "node-certificates"),
                (r.new_cluster_certificate, "cluster-certificate"),
                (r.new_ssh_keys, "ssh-keys"),
            ] {
                if set {
                    what.push(name);
                }
            }
            if let Ok(Some(ca)) = r.ca_plan() {
                what.push(ca.audit_name());
            }
            let target = if r.node.is_empty() {
                "cluster".to_owned()
            } else {
                r.node.join(",")
            };
            entry(&format!("renew-crypto {}", what.join(",")), &target)
        }
        Command::Token(TokenCommand::Revoke { id, .. }) => entry("token-revoke", id),
        _ => None,
    }
}

impl RenewArgs {
    /// What the CA flags ask.
    fn ca_plan(&self) -> Result<Option<crate::cluster::ca_rotation::CaPlan>> {
        crate::cluster::ca_rotation::CaPlan::from_flags(
            self.new_ca,
            self.continue_ca,
            self.rollback_ca,
            self.stop_after.as_deref(),
        )
    }
}

/// `nodectl renew-crypto`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["new_node_certificates", "new_cluster_certificate", "new_ssh_keys", "new_ca", "continue_ca", "rollback_ca"])))]
#[command(group(clap::ArgGroup::new("ca_run").multiple(true).args(["new_ca", "continue_ca"])))]
pub struct RenewArgs {
    /// Every online node (or each --node) makes a new key; the master signs.
    /// Not with a CA rotation, whose reissue phase renews every node's
    /// certificates.
    #[arg(long, conflicts_with_all = ["new_ca", "continue_ca", "rollback_ca"])]
    pub new_node_certificates: bool,
    /// A new server certificate and key on every node. Not with a CA
    /// rotation, whose reissue phase renews them.
    #[arg(long, conflicts_with_all = ["new_ca", "continue_ca", "rollback_ca"])]
    pub new_cluster_certificate: bool,
    /// Every master candidate makes a new SSH key pair.
    #[arg(long)]
    pub new_ssh_keys: bool,
    /// A new cluster CA in three phases, each committed and shown by
    /// `status`: trust (every node trusts both CAs), reissue (every
    /// certificate reissued by the new CA), drop (the old CA leaves every
    /// trust store). A node that cannot be reached holds the rotation at its
    /// phase (exit 3). During a rotation, goes on with it.
    #[arg(long, conflicts_with_all = ["continue_ca", "rollback_ca"])]
    pub new_ca: bool,
    /// Pause the CA rotation once this phase is complete (with --new-ca or
    /// --continue-ca).
    #[arg(long, value_name = "PHASE", value_parser = ["trust", "reissue"], requires = "ca_run")]
    pub stop_after: Option<String>,
    /// Go on with the CA rotation under way, from its committed phase.
    #[arg(long, conflicts_with = "rollback_ca")]
    pub continue_ca: bool,
    /// Return every node to the old CA alone, reissuing by it what the new
    /// CA signed (before the drop phase only).
    #[arg(long, conflicts_with = "stop_after")]
    pub rollback_ca: bool,
    /// Renew only this node's certificate (repeatable).
    #[arg(long, value_name = "NODE", requires = "new_node_certificates")]
    pub node: Vec<String>,
    /// Wait for the cluster lock instead of failing when it is taken.
    #[arg(long)]
    pub wait: bool,
}

/// `nodectl token`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a one-time join connection string.
    Create {
        /// Validity, e.g. 90s, 30m, 1h, 2d or plain seconds; at least one
        /// second, at most 7 days.
        #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = parse_token_ttl)]
        ttl: u64,
        /// The joining node becomes a master candidate.
        #[arg(long)]
        master_candidate: bool,
        /// Print one JSON document: {"id", "expires", "master_candidate", "connection_string"}.
        #[arg(long)]
        json: bool,
        /// Wait for the cluster lock instead of failing when it is taken.
        #[arg(long)]
        wait: bool,
    },
    /// List outstanding tokens (never their secrets).
    List {
        /// Print one JSON document: {"tokens": [{"id", "expires", "master_candidate"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token.
    Revoke {
        #[arg(value_name = "ID")]
        id: String,
        /// Wait for the cluster lock instead of failing when it is taken.
        #[arg(long)]
        wait: bool,
    },
}

/// `yes` or `no`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum YesNo {
    Yes,
    No,
}

impl YesNo {
    pub fn yes(self) -> bool {
        self == YesNo::Yes
    }
}

/// `nodectl modify`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("change").required(true).args(["master_candidate", "offline"])))]
pub struct ModifyArgs {
    #[arg(value_name = "NODE")]
    pub node: String,
    /// Promote (yes) or demote (no) the node.
    #[arg(long, value_enum, value_name = "yes|no")]
    pub master_candidate: Option<YesNo>,
    /// Take the node offline (yes) or bring it back (no). On a node that is
    /// online, no is the repair `verify` names: the node is asked for its
    /// state and sent whatever of it differs.
    #[arg(long, value_enum, value_name = "yes|no")]
    pub offline: Option<YesNo>,
    /// Promote another eligible node when this change would leave fewer
    /// master candidates than the pool size.
    #[arg(long)]
    pub auto_promote: bool,
    /// Wait for the cluster lock instead of failing when it is taken.
    #[arg(long)]
    pub wait: bool,
}

/// `--ttl` of `token create`: a duration of at most seven days, in seconds.
fn parse_cert_lifetime(text: &str) -> Result<std::time::Duration, String> {
    let lifetime = crate::core::time::parse_duration(text, crate::core::time::MAX_CERT_LIFETIME)?;
    if lifetime.as_secs() < 60 {
        return Err(format!("{text:?} is too short: at least 60s"));
    }
    Ok(lifetime)
}

fn parse_token_ttl(text: &str) -> Result<u64, String> {
    crate::core::time::parse_duration(text, crate::core::time::MAX_TOKEN_TTL).map(|d| d.as_secs())
}

/// `nodectl init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Name of the new cluster.
    #[arg(long, value_name = "C")]
    pub cluster_name: String,
    /// Name of this node (the master): a DNS host name (labels of
    /// lower-case letters, digits and '-', joined by '.'; at most 253
    /// characters).
    #[arg(long, value_name = "N")]
    pub node_name: String,
    /// Address this node's daemon listens on and peers connect to.
    #[arg(long, value_name = "HOST:PORT")]
    pub address: String,
    /// Digest algorithm of the candidate map (sha1 for Ganeti compatibility).
    #[arg(long, value_enum, default_value = "sha256")]
    pub digest: DigestArg,
    /// Master candidates to keep, the master included.
    #[arg(long, default_value_t = 3, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub candidate_pool_size: u32,
    #[command(flatten)]
    pub ssh: SshArgs,
    /// Validity of node and server certificates, in days (the CA gets ten
    /// times as long, and at least ten years).
    #[arg(long, default_value_t = 365, value_name = "D", value_parser = clap::value_parser!(u32).range(1..=36500), conflicts_with = "cert_lifetime")]
    pub cert_days: u32,
    /// Validity of node and server certificates as a duration (90s, 30m,
    /// 12h, 365d; at least 60s): the master renews each once two thirds of
    /// it has passed. Default: --cert-days.
    #[arg(long, value_name = "DURATION", value_parser = parse_cert_lifetime)]
    pub cert_lifetime: Option<std::time::Duration>,
    /// Keep the CA key in a PKCS#11 token instead of ca.key: an RFC 7512
    /// URI, pkcs11:token=T;object=O?module-path=/path/lib.so&pin-source=file:/path/pin
    /// (or pin-source=env:VARIABLE; a pin-value is refused). The key labelled
    /// O is used if it exists, else made in the token (EC P-256, not
    /// extractable). The master and every master candidate must reach the
    /// token with the same URI.
    #[arg(long, value_name = "URI")]
    pub ca_key: Option<String>,
}

impl InitArgs {
    /// The options of `nodectl init`.
    pub fn options(&self) -> ctl::init::InitOptions {
        ctl::init::InitOptions {
            cluster_name: self.cluster_name.clone(),
            node_name: self.node_name.clone(),
            address: self.address.clone(),
            digest: match self.digest {
                DigestArg::Sha256 => DigestAlgorithm::Sha256,
                DigestArg::Sha1 => DigestAlgorithm::Sha1,
            },
            candidate_pool_size: self.candidate_pool_size,
            cert_lifetime: self.cert_lifetime.unwrap_or(std::time::Duration::from_secs(
                u64::from(self.cert_days) * 86_400,
            )),
            ca_key: self.ca_key.clone(),
            ssh: self.ssh.paths(),
        }
    }
}

/// Where a node keeps its SSH files (recorded in node.json).
// The field docs are the options' help text: `<state-dir>` is meant as
// written there, not as HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, Args)]
pub struct SshArgs {
    /// Directory of this node's SSH key pair, if it becomes a master
    /// candidate (default: <state-dir>/ssh; e.g. /root/.ssh in production).
    #[arg(long, value_name = "DIR")]
    pub ssh_dir: Option<PathBuf>,
    /// authorized_keys file whose managed block noded maintains (default:
    /// <ssh-dir>/authorized_keys). Lines outside the block are never touched.
    #[arg(long, value_name = "FILE")]
    pub authorized_keys: Option<PathBuf>,
}

impl SshArgs {
    /// The paths as the state directory takes them.
    pub fn paths(&self) -> SshPaths {
        SshPaths {
            ssh_dir: self.ssh_dir.clone(),
            authorized_keys: self.authorized_keys.clone(),
        }
    }
}

/// `--digest` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DigestArg {
    Sha256,
    Sha1,
}

/// `nodectl generate`.
#[derive(Debug, Subcommand)]
pub enum Generate {
    /// Write noded.8 and nodectl.8 into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print a completion script for SHELL.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs one parsed `nodectl` command.
pub async fn run_nodectl(args: NodectlArgs) -> Result<Outcome> {
    let state = StateDir::new(&args.global.state_dir);
    let audit = audited(&args.command);
    let outcome = match args.command {
        Command::Init(init_args) => ctl::init::init(&state, &init_args.options()),
        Command::List { json } => ctl::list::list(&state, json).await,
        Command::Ping {
            nodes,
            json,
            timeout,
        } => {
            ctl::ping::ping(
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
        }) => ctl::token::token_create(&state, ttl, master_candidate, json, wait).await,
        Command::Token(TokenCommand::List { json }) => ctl::token::token_list(&state, json),
        Command::Token(TokenCommand::Revoke { id, wait }) => {
            ctl::token::token_revoke(&state, &id, wait)
        }
        Command::Join {
            token,
            node_name,
            address,
            ssh,
        } => ctl::join::join(&state, &token, &node_name, &address, &ssh.paths()).await,
        Command::Modify(m) => match (m.master_candidate, m.offline) {
            (Some(mc), None) => {
                ctl::lifecycle::set_candidate(&state, &m.node, mc.yes(), m.auto_promote, m.wait)
                    .await
            }
            (None, Some(off)) => {
                ctl::lifecycle::set_offline(&state, &m.node, off.yes(), m.auto_promote, m.wait)
                    .await
            }
            _ => Err(Error::Invalid(
                "give exactly one of --master-candidate and --offline".into(),
            )),
        },
        Command::Remove { node, wait } => ctl::lifecycle::remove(&state, &node, wait).await,
        Command::MasterFailover { to, wait: _ } => {
            ctl::lifecycle::master_failover(&state, to.as_deref()).await
        }
        Command::Recover { force: _ } => ctl::lifecycle::recover(&state).await,

        Command::Status { json } => ctl::status::status(&state, json).await,
        Command::Verify { json } => ctl::verify::verify(&state, json).await,
        Command::RenewCrypto(r) => {
            let plan = ctl::renew::RenewPlan {
                node_certificates: r.new_node_certificates,
                cluster_certificate: r.new_cluster_certificate,
                ssh_keys: r.new_ssh_keys,
                ca: r.ca_plan()?,
                nodes: r.node,
            };
            ctl::renew::renew(&state, &plan, r.wait).await
        }
        Command::Generate(Generate::Man { dir }) => write_man_pages(&dir),
        Command::Generate(Generate::Completions { shell }) => completions(shell),
        Command::User(UserCommand::Add {
            name,
            role,
            csr,
            out,
            ttl,
            wait,
        }) => {
            let opts = ctl::user::UserAddOptions {
                name,
                role: role.into(),
                csr,
                out,
                ttl,
                wait,
            };
            ctl::user::user_add(&state, &opts).await
        }
        Command::User(UserCommand::List { json }) => ctl::user::user_list(&state, json),
        Command::User(UserCommand::Revoke { name, wait }) => {
            ctl::user::user_revoke(&state, &name, wait).await
        }
        Command::Audit { since, json } => ctl::audit::audit(&state, since.as_deref(), json),
    };
    if let Some((action, target)) = audit {
        ctl::audit::record_command(&state, &action, &target, &outcome).await;
    }
    outcome
}

/// `(name, command)` of each page.
pub fn man_pages() -> Vec<(&'static str, clap::Command)> {
    vec![
        ("noded", NodedArgs::command()),
        ("nodectl", NodectlArgs::command()),
    ]
}

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

/// `nodectl generate man DIR`: writes noded.8 and nodectl.8.
pub fn write_man_pages(dir: &Path) -> Result<Outcome> {
    state::create_dir(dir, 0o755)?;
    for (name, cmd) in man_pages() {
        let path = dir.join(format!("{name}.8"));
        let page = crate::man::render(&cmd).map_err(Error::io(&path))?;
        ssconf::write_atomic(&path, &page, MODE_PUBLIC).map_err(Error::io(&path))?;
        crate::say!("{}", path.display());
    }
    Ok(Outcome::Success)
}

/// `nodectl generate completions SHELL`: prints the script; bash's also
/// completes node names.
pub fn completions(shell: clap_complete::Shell) -> Result<Outcome> {
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
