//! A node's state directory (SPEC §3): paths, modes, and identity.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::{Error, Result, Secret};
use crate::wire::RoleFiles;

pub mod config;
pub mod fingerprint;
pub mod ssconf_cache;
pub mod ssh;
pub mod token;
pub mod users;

/// Mode of public state files (certificates, ssconf, node.json).
pub const MODE_PUBLIC: u32 = 0o644;
/// Mode of secret state files (keys, config.json, tokens.json).
pub const MODE_SECRET: u32 = 0o600;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/noded";
/// Default daemon port.
pub const DEFAULT_PORT: u16 = 1811;

/// This node's identity (`node.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub uuid: String,
    pub name: String,
    /// `host:port` the daemon listens on and peers connect to.
    pub address: String,
    /// Where this node keeps its SSH key pair (default `<state-dir>/ssh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_dir: Option<PathBuf>,
    /// The authorized_keys file whose managed block noded maintains
    /// (default `<ssh-dir>/authorized_keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_keys: Option<PathBuf>,
}

/// Where a node keeps its SSH key pair and its authorized_keys, when not in
/// the state directory (a production node may point them at `/root/.ssh`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshPaths {
    pub ssh_dir: Option<PathBuf>,
    pub authorized_keys: Option<PathBuf>,
}

/// Everything a new node writes into its state directory, at `init` (the
/// first master) and at `join` (any other node).
#[derive(Debug)]
pub struct NodeFiles<'a> {
    pub identity: &'a NodeIdentity,
    pub ca_pem: &'a str,
    pub server_pem: &'a str,
    pub server_key: &'a Secret,
    pub client_key: &'a Secret,
    pub client_pem: &'a str,
    pub ssconf: &'a ssconf::Ssconf,
    /// A master candidate's CA key, when it is a file.
    pub ca_key: Option<&'a Secret>,
    /// A master candidate's `config.json`.
    pub config_json: Option<&'a [u8]>,
    /// A master candidate's own SSH key pair: private key, public key line.
    pub ssh_key_pair: Option<(&'a Secret, &'a str)>,
    /// The master candidates' public keys, for the managed block.
    pub authorized_keys: &'a [String],
}

/// The files of one node's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// SSH paths given on the command line before node.json exists.
    ssh: Option<(Option<PathBuf>, Option<PathBuf>)>,
}

impl StateDir {
    /// The state directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir {
            root: root.into(),
            ssh: None,
        }
    }

    /// The same directory, with SSH paths that node.json does not hold yet
    /// (during init and join).
    pub fn with_ssh_paths(mut self, paths: &SshPaths) -> Self {
        self.ssh = Some((paths.ssh_dir.clone(), paths.authorized_keys.clone()));
        self
    }

    /// `(ssh dir, authorized_keys)` overrides: from the command line during
    /// init/join, from node.json afterwards.
    fn ssh_overrides(&self) -> (Option<PathBuf>, Option<PathBuf>) {
        match &self.ssh {
            Some(paths) => paths.clone(),
            None => self
                .load_identity()
                .map(|i| (i.ssh_dir, i.authorized_keys))
                .unwrap_or((None, None)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn ca_pem(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    pub fn server_pem(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    pub fn client_pem(&self) -> PathBuf {
        self.root.join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.root.join("client.key")
    }
    pub fn node_json(&self) -> PathBuf {
        self.root.join("node.json")
    }
    pub fn config_json(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn tokens_json(&self) -> PathBuf {
        self.root.join("tokens.json")
    }
    /// The Raft log, vote and snapshot (SPEC §3), mode 0700.
    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }
    pub fn ssconf_dir(&self) -> PathBuf {
        self.root.join("ssconf")
    }
    /// The exclusive lock of mutating commands.
    pub fn config_lock(&self) -> PathBuf {
        self.root.join("config.lock")
    }
    /// A client key made for a renewal, waiting for its certificate.
    pub fn client_key_pending(&self) -> PathBuf {
        self.root.join("client.key.new")
    }
    /// A server key waiting beside the old one until its certificate is in place.
    pub fn server_key_pending(&self) -> PathBuf {
        self.root.join("server.key.new")
    }
    /// The master's client certificate before its last renewal.
    pub fn client_prev_pem(&self) -> PathBuf {
        self.root.join("client.prev.pem")
    }
    /// The key of [`StateDir::client_prev_pem`].
    pub fn client_prev_key(&self) -> PathBuf {
        self.root.join("client.prev.key")
    }
    /// The CA before the last rotation.
    pub fn ca_prev_pem(&self) -> PathBuf {
        self.root.join("ca.prev.pem")
    }
    /// During a CA rotation's trust phase: the next CA's key (file key
    /// store).
    pub fn ca_key_new(&self) -> PathBuf {
        self.root.join("ca.key.new")
    }
    /// From a CA rotation's reissue phase until it ends: the key of the CA
    /// before it, for `--rollback-ca` (file key store).
    pub fn ca_key_old(&self) -> PathBuf {
        self.root.join("ca.key.old")
    }
    pub fn ssh_dir(&self) -> PathBuf {
        self.ssh_overrides()
            .0
            .unwrap_or_else(|| self.root.join("ssh"))
    }
    pub fn ssh_private_key(&self) -> PathBuf {
        self.ssh_dir().join("id_ed25519")
    }
    pub fn ssh_public_key(&self) -> PathBuf {
        self.ssh_dir().join("id_ed25519.pub")
    }
    pub fn authorized_keys(&self) -> PathBuf {
        let (dir, file) = self.ssh_overrides();
        file.unwrap_or_else(|| {
            dir.unwrap_or_else(|| self.root.join("ssh"))
                .join("authorized_keys")
        })
    }

    /// Whether `node.json` exists (the last file `init`/`join` writes).
    pub fn is_initialised(&self) -> bool {
        self.node_json().exists()
    }

    /// Fails, naming the first missing file and the command to run, unless
    /// every file a serving node needs is present.
    pub fn check_initialised(&self) -> Result<()> {
        for path in [
            self.node_json(),
            self.ca_pem(),
            self.server_pem(),
            self.server_key(),
            self.client_pem(),
            self.client_key(),
            self.ssconf_dir(),
        ] {
            if !path.exists() {
                return Err(Error::NotInitialised { path });
            }
        }
        Ok(())
    }

    /// Writes `contents` to `path` atomically with `mode`.
    pub fn write(&self, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        ssconf::write_atomic(path, contents, mode).map_err(Error::io(path))
    }

    /// Reads this node's identity.
    pub fn load_identity(&self) -> Result<NodeIdentity> {
        read_json(&self.node_json())
    }

    /// Which role files are present.
    pub fn role_files(&self) -> RoleFiles {
        RoleFiles {
            ca_key: self.ca_key().exists(),
            config: self.config_json().exists(),
            ssh_private_key: self.ssh_private_key().exists(),
            tokens: self.tokens_json().exists(),
        }
    }

    /// The directories where interrupted writes may leave temporary files
    /// (see [`ssconf::atomic`]): the state directory and its ssconf
    /// directory.
    pub fn temp_file_dirs(&self) -> [PathBuf; 2] {
        [self.root.clone(), self.ssconf_dir()]
    }

    /// Of `listings` (each directory of [`StateDir::temp_file_dirs`] with
    /// our temporary files in it, of any age), the stale ones, relative to
    /// the state directory. A directory that could not be listed is logged.
    pub fn stale_temp_files(
        &self,
        listings: impl IntoIterator<Item = (PathBuf, std::io::Result<Vec<PathBuf>>)>,
    ) -> Vec<String> {
        let now = std::time::SystemTime::now();
        let mut found = Vec::new();
        for (dir, listed) in listings {
            match listed {
                Ok(paths) => found.extend(
                    paths
                        .iter()
                        .filter(|p| ssconf::atomic::is_stale(p, now))
                        .map(|p| {
                            p.strip_prefix(&self.root)
                                .unwrap_or(p)
                                .to_string_lossy()
                                .into_owned()
                        }),
                ),
                Err(e) => tracing::warn!("cannot list {}: {e}", dir.display()),
            }
        }
        found
    }
}

impl StateDir {
    /// Writes a new node's files, each atomically with its mode: keys and
    /// certificates first, `node.json` last. A node without node.json is not
    /// initialised, so an interrupted init or join can simply be run again.
    pub fn write_node_files(&self, files: &NodeFiles<'_>) -> Result<()> {
        create_dir(&self.root, 0o755)?;
        self.write(&self.ca_pem(), files.ca_pem.as_bytes(), MODE_PUBLIC)?;
        self.write(&self.server_pem(), files.server_pem.as_bytes(), MODE_PUBLIC)?;
        self.write(
            &self.server_key(),
            files.server_key.expose().as_bytes(),
            MODE_SECRET,
        )?;
        self.write(
            &self.client_key(),
            files.client_key.expose().as_bytes(),
            MODE_SECRET,
        )?;
        self.write(&self.client_pem(), files.client_pem.as_bytes(), MODE_PUBLIC)?;
        files.ssconf.store(&self.ssconf_dir())?;
        if let Some(ca_key) = files.ca_key {
            self.write(&self.ca_key(), ca_key.expose().as_bytes(), MODE_SECRET)?;
        }
        if let Some(config_json) = files.config_json {
            self.write(&self.config_json(), config_json, MODE_SECRET)?;
        }
        if let Some((private, public)) = files.ssh_key_pair {
            self.write_ssh_key_pair(private, public)?;
        }
        ssh::write_authorized_keys(&self.authorized_keys(), files.authorized_keys)?;
        self.write(&self.node_json(), &to_json(files.identity)?, MODE_PUBLIC)
    }
}

/// Creates `path` (and its parents) with `mode` if it does not exist.
pub fn create_dir(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(Error::io(path))
}

impl StateDir {
    /// Writes this node's SSH key pair (private 0600, public 0644) into its
    /// SSH directory (0700).
    pub fn write_ssh_key_pair(&self, private: &Secret, public: &str) -> Result<()> {
        create_dir(&self.ssh_dir(), 0o700)?;
        self.write(
            &self.ssh_private_key(),
            private.expose().as_bytes(),
            MODE_SECRET,
        )?;
        self.write(
            &self.ssh_public_key(),
            format!("{public}\n").as_bytes(),
            MODE_PUBLIC,
        )
    }
}

/// Reads a state file; a missing file means the node is not initialised.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotInitialised {
                path: path.to_path_buf(),
            }
        } else {
            Error::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Reads a JSON state file; a missing file means the node is not initialised.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::State {
        path: path.to_path_buf(),
        reason: format!("malformed JSON: {e}"),
    })
}

/// Serialises `value` as pretty JSON with a final newline.
pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Invalid(format!("cannot encode JSON: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}
