//! The library's error type.

use std::path::PathBuf;

/// Everything the noded library can fail with. Each variant carries what an
/// operator needs to act: the file, the node, the peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state directory lacks a file every initialised node has.
    #[error("{} is missing: the state directory is not initialised; run `nodectl init` (new cluster) or `nodectl join` (new node) first", path.display())]
    NotInitialised { path: PathBuf },
    /// A PEM file holds no usable certificate or key.
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    /// A JSON state file is malformed.
    #[error("{}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    /// Certificate generation or signing failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// ssconf files.
    #[error(transparent)]
    Ssconf(#[from] ssconf::SsconfError),
    /// TLS configuration.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A wire-protocol violation.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// An RPC the peer answered with an error.
    #[error("{node}: {message}")]
    Remote { node: String, message: String },
    /// Could not talk to a node.
    #[error("{node}: {reason}")]
    Unreachable { node: String, reason: String },
    /// The peer refused this node's client certificate.
    #[error("{node}: not authorized: {reason}")]
    NotAuthorized { node: String, reason: String },
    /// The command needs something it was not given or cannot have.
    #[error("{0}")]
    Invalid(String),
    /// The node's server certificate does not chain to this node's cluster
    /// CA: another cluster's daemon, an impostor, or a node that missed a CA
    /// rotation.
    #[error("{node}: {address} presented a server certificate this node does not trust ({reason}); is it a node of this cluster?")]
    UntrustedServer {
        node: String,
        address: String,
        reason: String,
    },
    /// Another command holds the cluster lock (its holder in the message).
    #[error("{0}")]
    LockHeld(String),
    /// The node, user or token named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A change Raft took but no majority confirmed in time: not committed
    /// yet, and it may still be once the silent voters answer.
    #[error("{0}")]
    Unconfirmed(String),
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the node could not be reached (or its answer never came),
    /// as opposed to a node that answered no, or a failure here.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// An error and its sources on one line, `a: b: c`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// A wire-protocol violation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
