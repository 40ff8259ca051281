//! Command-line definitions of `noded` and `nodectl`. They live in the
//! library so the man pages and completions are generated from the same
//! definitions the binaries parse.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::state::DEFAULT_STATE_DIR;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (journald- and collector-friendly).
    Json,
}

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
    /// Connections served at once; further ones are closed at accept.
    #[arg(long, default_value_t = 4096, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
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
    #[arg(long, default_value_t = crate::frame::DEFAULT_MAX_FRAME, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(64..))]
    pub max_frame: u32,
    /// Also accept TLS 1.2 (AEAD suites only). TLS 1.3 alone by default.
    #[arg(long)]
    pub allow_tls12: bool,
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

/// The subcommands of `nodectl`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new cluster with this node as its master.
    Init(InitArgs),
    /// List the cluster's nodes.
    List {
        /// Print one JSON document: {"nodes": [{"name", "uuid", "address", "role", "offline", "digest", "cert_expires"}]}.
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
    /// Generate man pages or shell completions.
    #[command(subcommand)]
    Generate(Generate),
}

/// `nodectl init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Name of the new cluster.
    #[arg(long, value_name = "C")]
    pub cluster_name: String,
    /// Name of this node (the master).
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
    /// Validity of node and server certificates, in days (the CA gets ten times as long).
    #[arg(long, default_value_t = 365, value_name = "D", value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub cert_days: u32,
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
