//! The wire format: length-prefixed postcard frames carrying a versioned
//! request/response envelope.
//!
//! ```text
//! +----------------+---------------------------------------------+
//! | length: u32 BE | postcard(Request | Response), `length` bytes |
//! +----------------+---------------------------------------------+
//! ```
//!
//! A request body starts with `version: u16` and `id: u64`, then the
//! [`Procedure`]; the two header fields are decoded first, so a reply can
//! carry the id even when the procedure is unknown. The claimed length is
//! checked against the limit before a single byte is allocated for it.

use serde::{Deserialize, Serialize};

use crate::core::Secret;

mod codec;
pub mod patch;
pub use crate::core::FrameError;
pub use codec::*;
pub use patch::SsconfPatch;

/// The envelope version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The default largest frame either side accepts.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// A call from a master or master candidate to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Procedure {
    /// Liveness and version check.
    Ping,
    /// This node's identity, client-certificate digest, and role files.
    NodeInfo,
    /// Replace the node's ssconf set; refused if older than what it holds.
    WriteSsconf {
        /// `(file name, text)` for every ssconf key.
        files: Vec<(String, String)>,
    },
    /// Bulk data for throughput measurement; the reply is its length.
    Echo {
        /// Encoded as bytes, not as a sequence of u8: the same bytes on
        /// the wire, copied in one go instead of one element at a time.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A new node asks to join (the only procedure an anonymous connection
    /// may call, and only on the master).
    Join(JoinRequest),
    /// Replace `config.json` (master candidates); refused if older.
    WriteConfig { config_json: String },
    /// Make this node a master candidate: CA key and config. No key is sent
    /// when the config keeps the CA key in a PKCS#11 token.
    InstallCandidateFiles {
        ca_key: Option<Secret>,
        config_json: String,
    },
    /// Make this node a regular node again: remove CA key, config, tokens
    /// and SSH private key.
    RemoveCandidateFiles,
    /// Make this node's own SSH key pair (if it has none); reply with the
    /// public key.
    GenerateSshKey,
    /// Replace the managed block of authorized_keys with these keys.
    WriteAuthorizedKeys { keys: Vec<String> },
    /// Make a new client key (kept pending on the node) and answer with a
    /// CSR for it.
    PrepareClientKey,
    /// Install a client certificate for the pending key.
    InstallClientCert { cert_pem: String },
    /// Install a server certificate for the pending server key (made by
    /// [`Procedure::PrepareServerKey`]) and serve with it.
    InstallServerCert { cert_pem: String },
    /// Replace this candidate's SSH key pair; reply with the new public key.
    ReplaceSshKey,
    /// Replace ca.pem (one or two CA certificates) and trust exactly those.
    InstallCaBundle { ca_pem: String },
    /// Make a new server key (kept pending on the node) and answer with a
    /// CSR for it.
    PrepareServerKey,
    /// On the master, from a master candidate over its own admitted
    /// connection: the candidate files (CA key unless it lives in a token,
    /// and the config). How a node that joined as a candidate gets them.
    FetchCandidateFiles,
    /// On the master: each node's health as the convergence loop last saw
    /// it.
    Health,
    /// A Raft message between the master and the candidates (SPEC §10.1).
    Raft {
        call: RaftCall,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// From this node's nodectl (or a task of its daemon) to its daemon:
    /// commit `config_json`, made from the config at `base_serial`.
    Propose {
        base_serial: u64,
        config_json: String,
    },
    /// This node's view of Raft.
    RaftStatus,
    /// From this node's nodectl to its daemon: make `to` (this node when
    /// `None`) the master by a leadership transfer.
    TransferLeadership { to: Option<String> },
    /// From this node's nodectl to its daemon, before a change touches any
    /// node: confirm with a majority of voters that this node leads.
    ConfirmLeadership,
    /// From this node's nodectl to its daemon: `recover --force`.
    Recover,
    /// Replace the node's ssconf set by the one `patches` make of the set
    /// whose SHA-256 is `base_sha256`; refused unless the node holds that
    /// set and the result's SHA-256 is `sha256` (then the sender sends the
    /// whole set), or when older than what it holds.
    PatchSsconf {
        base_sha256: String,
        patches: Vec<SsconfPatch>,
        sha256: String,
    },
    /// From this node's nodectl to its master daemon, after a commit: bring
    /// every online node to config `serial` (or later) through the
    /// convergence loop's kept connections, and say which did not take it.
    Distribute { serial: u64, resend: Resend },
    /// [`Procedure::PatchSsconf`], then, only if the node stored the
    /// patched set, [`Procedure::WriteAuthorizedKeys`] with `keys`: the
    /// keys travel with the set they belong to, so a node that holds
    /// another set (a newer master's, say) refuses both. One request and
    /// one trip to the node's disk instead of two.
    PatchSsconfAndKeys {
        base_sha256: String,
        patches: Vec<SsconfPatch>,
        sha256: String,
        keys: Vec<String>,
    },
}

/// The nodes a [`Procedure::Distribute`] round asks for their state and
/// sends whatever of it differs, as the loop's periodic rounds do: a
/// command that repairs a node (`modify NODE --offline=no`). The others
/// are sent what changed since the round last left them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resend {
    #[default]
    Changes,
    Nodes(Vec<String>),
    All,
}

impl Resend {
    /// Whether the node `name` is asked.
    pub fn asks(&self, name: &str) -> bool {
        match self {
            Resend::Changes => false,
            Resend::Nodes(names) => names.iter().any(|n| n == name),
            Resend::All => true,
        }
    }
}

/// The kinds of [`Procedure::Raft`] messages. The body is JSON of
/// openraft's request; the reply's body JSON of its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftCall {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// To the leader: stop heartbeats so that the voter in the body (its
    /// Raft id) can take over.
    StepDown,
    /// To a voter: start an election now.
    Elect,
}

/// A node's view of Raft (master and candidates only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftInfo {
    /// `leader`, `follower`, `candidate` or `learner`.
    pub state: String,
    pub term: u64,
    /// The leader's name, if known.
    pub leader: Option<String>,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
}

/// What a joining node sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token_id: String,
    pub secret: Secret,
    pub node_name: String,
    pub address: String,
    /// CSR for the node's client certificate; the key stays on the node.
    pub csr_pem: String,
    /// CSR for the node's own server certificate; that key stays too.
    pub server_csr_pem: String,
    /// The node's SSH public key, used if it becomes a master candidate.
    pub ssh_public_key: String,
}

/// What the master answers a successful join with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    pub uuid: String,
    pub master_candidate: bool,
    pub ca_pem: String,
    /// The node's own server certificate, for the key it made.
    pub server_pem: String,
    pub client_pem: String,
    pub ssconf_files: Vec<(String, String)>,
    pub authorized_keys: Vec<String>,
    /// Nodes the master could not push the new state to.
    pub unreachable: Vec<String>,
}

impl Procedure {
    /// Number of procedures this build knows (variant indexes 0..COUNT).
    pub const COUNT: u32 = 27;

    /// The procedure's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Procedure::Ping => "ping",
            Procedure::NodeInfo => "node-info",
            Procedure::WriteSsconf { .. } => "write-ssconf",
            Procedure::Echo { .. } => "echo",
            Procedure::Join(_) => "join",
            Procedure::WriteConfig { .. } => "write-config",
            Procedure::InstallCandidateFiles { .. } => "install-candidate-files",
            Procedure::RemoveCandidateFiles => "remove-candidate-files",
            Procedure::GenerateSshKey => "generate-ssh-key",
            Procedure::WriteAuthorizedKeys { .. } => "write-authorized-keys",
            Procedure::PrepareClientKey => "prepare-client-key",
            Procedure::InstallClientCert { .. } => "install-client-cert",
            Procedure::InstallServerCert { .. } => "install-server-cert",
            Procedure::ReplaceSshKey => "replace-ssh-key",
            Procedure::InstallCaBundle { .. } => "install-ca-bundle",
            Procedure::PrepareServerKey => "prepare-server-key",
            Procedure::FetchCandidateFiles => "fetch-candidate-files",
            Procedure::Health => "health",
            Procedure::Raft { .. } => "raft",
            Procedure::Propose { .. } => "propose",
            Procedure::RaftStatus => "raft-status",
            Procedure::TransferLeadership { .. } => "transfer-leadership",
            Procedure::ConfirmLeadership => "confirm-leadership",
            Procedure::Recover => "recover",
            Procedure::PatchSsconf { .. } => "patch-ssconf",
            Procedure::Distribute { .. } => "distribute",
            Procedure::PatchSsconfAndKeys { .. } => "patch-ssconf-and-keys",
        }
    }
}

/// Which of a node's role files it holds (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleFiles {
    pub ca_key: bool,
    pub config: bool,
    pub ssh_private_key: bool,
    pub tokens: bool,
}

/// A node's answer to [`Procedure::NodeInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub uuid: String,
    pub name: String,
    pub address: String,
    /// SHA-256 digest of the node's client certificate, OpenSSL notation.
    pub client_digest_sha256: String,
    /// SHA-1 digest of the same certificate (Ganeti-format clusters).
    pub client_digest_sha1: String,
    /// `notAfter` of the client certificate, Unix seconds.
    pub client_cert_expires: i64,
    /// Serial of the ssconf set the node holds (0 if none).
    pub ssconf_serial: u64,
    /// Raft term of the ssconf set the node holds (0 if none).
    pub ssconf_term: u64,
    /// The node's view of Raft (master and candidates).
    pub raft: Option<RaftInfo>,
    pub role_files: RoleFiles,
    pub version: String,
    /// `client.pem` as it is on disk now.
    pub client_cert_pem: String,
    /// SHA-256 (hex) of the node's whole ssconf set, or the error reading it.
    pub ssconf_sha256: Result<String, String>,
    /// SHA-256 digest of the node's server certificate, OpenSSL notation
    /// ("" if unreadable).
    pub server_digest: String,
    /// `notAfter` of the server certificate, Unix seconds (0 if unreadable).
    pub server_cert_expires: i64,
    /// SHA-256 (hex) of `ca.pem` as a file.
    pub ca_pem_sha256: String,
    /// The managed block of the node's authorized_keys, or the error.
    pub authorized_keys: Result<Vec<String>, String>,
    /// Temporary files of interrupted writes left in the state directory
    /// and its ssconf directory, relative to the state directory.
    pub stale_temp_files: Vec<String>,
}

/// One node's health as the master's loop last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub name: String,
    /// Whether the last heartbeat was answered.
    pub reachable: bool,
    /// When a heartbeat was last answered, Unix seconds (0: never).
    pub last_seen: i64,
    /// The ssconf serial the node reported then.
    pub serial: u64,
    /// The Raft term of that ssconf.
    pub term: u64,
    /// `notAfter` of the node's client and server certificates as it
    /// reported them, Unix seconds (0: unknown).
    pub client_cert_expires: i64,
    pub server_cert_expires: i64,
    /// Why the last heartbeat failed, if it did.
    pub error: Option<String>,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Pong {
        node: String,
        version: String,
    },
    NodeInfo(Box<NodeInfo>),
    SsconfWritten {
        serial: u64,
    },
    Echoed {
        len: u64,
    },
    Joined(Box<JoinReply>),
    Done,
    SshPublicKey(String),
    Csr(String),
    /// Each node's health, on the master.
    Health(Vec<NodeHealth>),
    /// What a new master candidate holds besides its own files.
    CandidateFiles {
        ca_key: Option<Secret>,
        config_json: String,
    },
    /// A Raft message's answer (JSON).
    Raft {
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// A change committed at `term`, log `index`, as config `serial`.
    Committed {
        term: u64,
        index: u64,
        serial: u64,
    },
    /// This node's Raft, `None` when it runs none.
    RaftStatus(Option<Box<RaftInfo>>),
    /// `recover --force` done: the new term and serial, the serial this
    /// node held before, the voters given up, and the nodes the new state
    /// did not reach yet.
    Recovered {
        term: u64,
        serial: u64,
        held_serial: u64,
        lost: Vec<String>,
        unreachable: Vec<(String, String)>,
    },
    /// A round of the convergence loop sent config `serial` to `nodes`
    /// online nodes; those in `behind` did not take it, with why.
    Distributed {
        serial: u64,
        nodes: u64,
        behind: Vec<(String, String)>,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcErrorKind {
    /// The frame or envelope could not be decoded; the connection closes.
    Malformed,
    /// The frame exceeds the limit; the connection closes.
    TooLarge,
    /// The envelope version is not spoken here.
    UnsupportedVersion,
    /// The procedure is not known to this daemon.
    UnknownProcedure,
    /// The procedure ran and failed.
    Failed,
    /// The request took longer than the per-request timeout.
    Timeout,
    /// The caller may not call this procedure.
    NotAuthorized,
    /// A change the leader wrote but no majority confirmed in time: not
    /// committed yet, and it may still be.
    Unconfirmed,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    pub kind: RpcErrorKind,
    pub message: String,
}

/// One frame from client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u16,
    pub id: u64,
    pub procedure: Procedure,
}

/// One frame from server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub version: u16,
    pub id: u64,
    pub result: Result<Reply, RpcError>,
}
