//! The replicated state machine: the cluster config.
//!
//! Applying an entry writes `config.json` (the applied state, SPEC §3)
//! unless the entry's `(term, serial)` is older than the config held, so an
//! entry older than a config the node was already given never rolls it
//! back. (Entries of one serial differ only in the audit trail, and are
//! applied in log order.) A snapshot is the config itself, kept
//! in `raft/snapshot.json` with its metadata.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Applied, Peer, TypeConfig};
use crate::core::{Error, Result};
use crate::state::config::ClusterConfig;
use crate::state::{StateDir, MODE_SECRET};

type NodeId = u64;

/// A snapshot as stored in `raft/snapshot.json`.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Peer>,
    /// `config.json` as it was.
    config_json: String,
}

#[derive(Debug)]
struct Inner {
    state: StateDir,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Peer>,
    /// `(term, serial)` of the config held.
    held: (u64, u64),
    snapshots: u64,
}

/// The state machine: openraft's [`RaftStateMachine`]. Clones share it.
#[derive(Debug, Clone)]
pub struct ConfigMachine {
    inner: Arc<Mutex<Inner>>,
    applied: Arc<watch::Sender<(u64, u64)>>,
    /// One write of `raft/snapshot.json` at a time.
    snapshot_write: Arc<Mutex<()>>,
}

fn io(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

fn snapshot_path(state: &StateDir) -> PathBuf {
    state.raft_dir().join("snapshot.json")
}

/// `(term, serial)` of the config in `config.json`, `(0, 0)` without one.
pub fn held_version(state: &StateDir) -> Result<(u64, u64)> {
    if !state.config_json().exists() {
        return Ok((0, 0));
    }
    let config: ClusterConfig = crate::state::read_json(&state.config_json())?;
    Ok((config.term, config.serial))
}

impl ConfigMachine {
    /// Opens the state machine of `state` (its snapshot, if any).
    pub fn open(state: &StateDir) -> Result<ConfigMachine> {
        let path = snapshot_path(state);
        let (last_applied, membership) = match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: StoredSnapshot = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
                (stored.meta.last_log_id, stored.meta.last_membership)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (None, StoredMembership::default())
            }
            Err(e) => return Err(Error::io(&path)(e)),
        };
        let held = held_version(state)?;
        let (applied, _) = watch::channel(held);
        Ok(ConfigMachine {
            inner: Arc::new(Mutex::new(Inner {
                state: state.clone(),
                last_applied,
                membership,
                held,
                snapshots: 0,
            })),
            applied: Arc::new(applied),
            snapshot_write: Arc::new(Mutex::new(())),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `(term, serial)` of each config applied here, as it happens.
    pub fn applied(&self) -> watch::Receiver<(u64, u64)> {
        self.applied.subscribe()
    }

    /// Writes `config` as `config.json` if it is newer than the one held.
    fn offer(&self, inner: &mut Inner, config: &ClusterConfig) -> std::io::Result<()> {
        let version = (config.term, config.serial);
        if version < inner.held && inner.state.config_json().exists() {
            return Ok(());
        }
        let bytes = crate::state::to_json(config).map_err(std::io::Error::other)?;
        ssconf::atomic::write_atomic(&inner.state.config_json(), &bytes, MODE_SECRET)?;
        inner.held = version;
        self.applied.send_replace(version);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ConfigMachine {
    async fn build_snapshot(
        &mut self,
    ) -> std::result::Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // The state is read under the machine's lock, the snapshot written
        // outside it (under its own): applying goes on meanwhile.
        let (config_json, meta, state) = {
            let mut inner = self.lock();
            let config_json = std::fs::read_to_string(inner.state.config_json())
                .map_err(|e| StorageIOError::read_state_machine(io(e)))?;
            inner.snapshots += 1;
            let snapshot_id = match inner.last_applied {
                Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, inner.snapshots),
                None => format!("0-0-{}", inner.snapshots),
            };
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id,
            };
            (config_json, meta, inner.state.clone())
        };
        let _writing = self
            .snapshot_write
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let stored = StoredSnapshot {
            meta: meta.clone(),
            config_json: config_json.clone(),
        };
        let bytes =
            serde_json::to_vec(&stored).map_err(|e| StorageIOError::write_snapshot(None, io(e)))?;
        ssconf::atomic::write_atomic(&snapshot_path(&state), &bytes, MODE_SECRET)
            .map_err(|e| StorageIOError::write_snapshot(None, io(e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(config_json.into_bytes())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for ConfigMachine {
    type SnapshotBuilder = ConfigMachine;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<
        (Option<LogId<NodeId>>, StoredMembership<NodeId, Peer>),
        StorageError<NodeId>,
    > {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> std::result::Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut inner = self.lock();
        let mut replies = Vec::new();
        for entry in entries {
            let mut failed = None;
            inner.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(change) => {
                    // A config this node cannot write (a full disk, a
                    // read-only state directory) is not a reason to stop
                    // Raft: the entry is committed, and the next entry,
                    // which holds the whole config, writes it.
                    if let Err(e) = self.offer(&mut inner, &change.config) {
                        tracing::error!(
                            serial = change.config.serial,
                            "config.json not written: {e}; the next change writes it"
                        );
                        failed = Some(e.to_string());
                    }
                }
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            replies.push(Applied {
                term: inner.held.0,
                serial: inner.held.1,
                error: failed,
            });
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> std::result::Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Peer>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        let config_json = String::from_utf8(snapshot.into_inner())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), io(e)))?;
        let config: ClusterConfig = serde_json::from_str(&config_json)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), io(e)))?;
        let mut inner = self.lock();
        let _writing = self
            .snapshot_write
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.offer(&mut inner, &config)
            .map_err(|e| StorageIOError::write_state_machine(io(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            config_json,
        };
        let bytes = serde_json::to_vec(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), io(e)))?;
        ssconf::atomic::write_atomic(&snapshot_path(&inner.state), &bytes, MODE_SECRET)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), io(e)))?;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        let path = snapshot_path(&inner.state);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, io(e)).into()),
        };
        let stored: StoredSnapshot = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(None, io(e)))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.config_json.into_bytes())),
        }))
    }
}
