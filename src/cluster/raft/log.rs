//! The Raft log and vote on disk (`raft/log`, `raft/vote.json`).
//!
//! The log is one file of JSON lines: a first `{"purged": ...}` line when
//! a prefix was purged, then one `{"entry": ...}` line per entry. An append
//! writes its lines and `fdatasync`s before openraft is told the entries
//! are stored; a truncation or a purge rewrites the file atomically. A last
//! line cut short by a crash was never acknowledged: it is dropped (and cut
//! from the file) when the log is opened. The vote is one atomically
//! written file. Entries are also kept in memory: the log stays short,
//! because a snapshot of the state machine (the config) replaces it every
//! few entries.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use crate::core::{Error, Result};

type NodeId = u64;

/// One line of the log file.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Purged(LogId<NodeId>),
    Entry(Box<Entry<TypeConfig>>),
}

/// [`Line::Entry`] as written, borrowing the entry.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum EntryLine<'a> {
    Entry(&'a Entry<TypeConfig>),
}

/// What a log file holds: the last purged id, the entries, and how many
/// of its bytes parsed.
type ReadLog = (Option<LogId<NodeId>>, BTreeMap<u64, Entry<TypeConfig>>, u64);

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    /// Entries purged since the file was last rewritten: still in it,
    /// before a `purged` line.
    dead: usize,
}

/// Purged entries a log file may still hold before it is rewritten.
const DEAD_BEFORE_REWRITE: usize = 512;
/// Length past which a log file holding any purged entry is rewritten:
/// each entry is a whole config (~700 KB at 1,000 nodes), so a count alone
/// would let the file grow to hundreds of MB, all parsed at the next start.
const REWRITE_ABOVE_BYTES: u64 = 64 * 1024 * 1024;

/// Whether a log file of `length` bytes holding `dead` purged entries is
/// rewritten rather than given a `purged` line.
fn rewrite_due(dead: usize, length: u64) -> bool {
    dead > DEAD_BEFORE_REWRITE || (dead > 0 && length > REWRITE_ABOVE_BYTES)
}

/// The log and the vote: openraft's [`RaftLogStorage`]. Clones share the
/// same log (one is the reader openraft asks for).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn io(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("log")
}

fn vote_path(dir: &Path) -> PathBuf {
    dir.join("vote.json")
}

/// Reads the log file: the purged id, the entries, and the length of the
/// part that parsed (a torn last line is left out).
fn read_log(path: &Path) -> Result<ReadLog> {
    let mut entries = BTreeMap::new();
    let mut purged = None;
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, entries, 0)),
        Err(e) => return Err(Error::io(path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut good = 0u64;
    let mut number = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(Error::io(path))?;
        if read == 0 {
            break;
        }
        number += 1;
        let complete = line.ends_with('\n');
        match serde_json::from_str::<Line>(line.trim_end()) {
            Ok(Line::Purged(id)) if complete => {
                // The entries up to it came before it in the file.
                entries.retain(|index, _| *index > id.index);
                purged = Some(id);
            }
            Ok(Line::Entry(entry)) if complete => {
                entries.insert(entry.get_log_id().index, *entry);
            }
            _ => {
                // Only the last line may be torn; anything else is damage.
                let mut rest = String::new();
                reader.read_line(&mut rest).map_err(Error::io(path))?;
                if !rest.is_empty() {
                    return Err(Error::Invalid(format!(
                        "{}: line {number} is malformed; restore the node's raft/ from a backup or run `nodectl recover --force` on a healthy candidate",
                        path.display()
                    )));
                }
                break;
            }
        }
        good += read as u64;
    }
    Ok((purged, entries, good))
}

/// Sets `path`'s mode to `mode` when it is another (only then: an
/// immutable directory refuses even a chmod that changes nothing).
fn narrow_mode(path: &Path, meta: &std::fs::Metadata, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(Error::io(path))
}

impl LogStore {
    /// Opens (creating) the log in `dir`, mode 0700; the log file, whose
    /// entries are whole configs, is 0600 like `config.json`. Modes left
    /// wider by an older version are narrowed.
    pub fn open(dir: &Path) -> Result<LogStore> {
        use std::os::unix::fs::OpenOptionsExt;
        crate::state::create_dir(dir, 0o700)?;
        narrow_mode(dir, &std::fs::metadata(dir).map_err(Error::io(dir))?, 0o700)?;
        let path = log_path(dir);
        let (last_purged, entries, good) = read_log(&path)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(crate::state::MODE_SECRET)
            .open(&path)
            .map_err(Error::io(&path))?;
        let meta = file.metadata().map_err(Error::io(&path))?;
        narrow_mode(&path, &meta, crate::state::MODE_SECRET)?;
        if file.metadata().map_err(Error::io(&path))?.len() != good {
            file.set_len(good).map_err(Error::io(&path))?;
            file.sync_all().map_err(Error::io(&path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(Error::io(&path))?;
        let vote = match std::fs::read(vote_path(dir)) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", vote_path(dir).display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(vote_path(dir))(e)),
        };
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_owned(),
                file,
                entries,
                last_purged,
                vote,
                dead: 0,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `recover --force`, with Raft stopped: records `vote`, then appends
    /// `entries` (fsynced), outside openraft.
    pub fn force(&self, entries: Vec<Entry<TypeConfig>>, vote: Vote<NodeId>) -> Result<()> {
        let mut inner = self.lock();
        let mut text = Vec::new();
        for entry in &entries {
            serde_json::to_writer(&mut text, &EntryLine::Entry(entry))
                .map_err(|e| Error::Invalid(format!("raft log entry: {e}")))?;
            text.push(b'\n');
        }
        // The vote first: stopped between the two, the store holds a
        // vote for this node in the new term over the old log, which Raft
        // starts from as it would after winning an election; the other
        // way round it would hold entries of a term it never voted in.
        let bytes = serde_json::to_vec(&vote).map_err(|e| Error::Invalid(format!("vote: {e}")))?;
        ssconf::atomic::write_atomic(&vote_path(&inner.dir), &bytes, 0o600)
            .map_err(Error::io(vote_path(&inner.dir)))?;
        inner.vote = Some(vote);
        let path = log_path(&inner.dir);
        inner
            .file
            .write_all(&text)
            .and_then(|()| inner.file.sync_data())
            .map_err(Error::io(&path))?;
        for entry in entries {
            inner.entries.insert(entry.get_log_id().index, entry);
        }
        Ok(())
    }

    /// The id of the last entry (or of the last purged one).
    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.lock().last_log_id()
    }

    /// Whether the log holds nothing at all (a node never part of Raft).
    pub fn is_empty(&self) -> bool {
        let inner = self.lock();
        inner.entries.is_empty() && inner.last_purged.is_none() && inner.vote.is_none()
    }
}

impl Inner {
    /// Rewrites the whole file (after a truncation or a purge).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut text = Vec::new();
        if let Some(purged) = self.last_purged {
            serde_json::to_writer(&mut text, &Line::Purged(purged))?;
            text.push(b'\n');
        }
        for entry in self.entries.values() {
            serde_json::to_writer(&mut text, &EntryLine::Entry(entry))?;
            text.push(b'\n');
        }
        let path = log_path(&self.dir);
        ssconf::atomic::write_atomic(&path, &text, 0o600)?;
        self.dead = 0;
        let mut file = OpenOptions::new().append(true).read(true).open(&path)?;
        file.seek(SeekFrom::End(0))?;
        self.file = file;
        Ok(())
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(self.last_purged)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(
        &mut self,
    ) -> std::result::Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(
        &mut self,
        vote: &Vote<NodeId>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(io(e)))?;
        ssconf::atomic::write_atomic(&vote_path(&inner.dir), &bytes, 0o600)
            .map_err(|e| StorageIOError::write_vote(io(e)))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(
        &mut self,
    ) -> std::result::Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> std::result::Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut text = Vec::new();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        for entry in &entries {
            serde_json::to_writer(&mut text, &EntryLine::Entry(entry))
                .map_err(|e| StorageIOError::write_logs(io(e)))?;
            text.push(b'\n');
        }
        let written = inner
            .file
            .write_all(&text)
            .and_then(|()| inner.file.sync_data());
        if let Err(e) = written {
            let message = e.to_string();
            callback.log_io_completed(Err(e));
            return Err(StorageIOError::write_logs(io(message)).into());
        }
        for entry in entries {
            inner.entries.insert(entry.get_log_id().index, entry);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(
        &mut self,
        log_id: LogId<NodeId>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.entries.retain(|index, _| *index < log_id.index);
        inner
            .rewrite()
            .map_err(|e| StorageIOError::write_logs(io(e)).into())
    }

    async fn purge(
        &mut self,
        log_id: LogId<NodeId>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        // A `purged` line appended, the file rewritten only once it holds
        // many purged entries: a purge follows every snapshot, and a
        // rewrite each time would hold up the commits around it.
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner.last_purged = Some(log_id);
        inner.entries.retain(|index, _| *index > log_id.index);
        inner.dead += before - inner.entries.len();
        let length = inner.file.metadata().map(|m| m.len()).unwrap_or(0);
        let written = if rewrite_due(inner.dead, length) {
            inner.rewrite()
        } else {
            let mut line = serde_json::to_vec(&Line::Purged(log_id)).map_err(std::io::Error::other);
            if let Ok(bytes) = &mut line {
                bytes.push(b'\n');
            }
            line.and_then(|bytes| {
                inner.file.write_all(&bytes)?;
                inner.file.sync_data()
            })
        };
        written.map_err(|e| StorageIOError::write_logs(io(e)).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn a_purge_rewrites_the_file_after_many_entries_or_many_bytes() {
        let mb = 1024 * 1024;
        let rows: [(usize, u64, bool); 6] = [
            (0, 0, false),
            (1, mb, false),
            (DEAD_BEFORE_REWRITE, mb, false),
            (DEAD_BEFORE_REWRITE + 1, mb, true),
            (1, REWRITE_ABOVE_BYTES + 1, true),
            (0, REWRITE_ABOVE_BYTES + 1, false),
        ];
        for (dead, length, due) in rows {
            assert_eq!(
                rewrite_due(dead, length),
                due,
                "{dead} dead, {length} bytes"
            );
        }
    }

    fn ids(store: &LogStore) -> Vec<u64> {
        store.lock().entries.keys().copied().collect()
    }

    #[test]
    fn the_log_is_private_and_a_wider_mode_is_narrowed() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let raft = dir.path().join("raft");
        drop(LogStore::open(&raft).unwrap());
        assert_eq!((mode(&raft), mode(&log_path(&raft))), (0o700, 0o600));
        let wide = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&raft, wide.clone()).unwrap();
        std::fs::set_permissions(log_path(&raft), wide).unwrap();
        drop(LogStore::open(&raft).unwrap());
        assert_eq!((mode(&raft), mode(&log_path(&raft))), (0o700, 0o600));
    }

    #[test]
    fn entries_and_vote_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        assert!(store.is_empty());
        store
            .force(vec![entry(1, 1), entry(1, 2)], Vote::new_committed(1, 1))
            .unwrap();
        let again = LogStore::open(dir.path()).unwrap();
        assert_eq!(ids(&again), [1, 2]);
        assert_eq!(again.lock().vote, Some(Vote::new_committed(1, 1)));
        assert_eq!(again.last_log_id().map(|l| l.index), Some(2));
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        store.force(vec![entry(1, 1)], Vote::new(1, 1)).unwrap();
        drop(store);
        let path = log_path(dir.path());
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"entry\":{\"log_id\":").unwrap();
        let again = LogStore::open(dir.path()).unwrap();
        assert_eq!(ids(&again), [1]);
        // Cut from the file: the next append follows the last whole line.
        again.force(vec![entry(1, 2)], Vote::new(1, 1)).unwrap();
        assert_eq!(ids(&LogStore::open(dir.path()).unwrap()), [1, 2]);
    }

    #[test]
    fn damage_before_the_last_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(log_path(dir.path()), "garbage\n{\"purged\":null}\n").unwrap();
        let err = LogStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 1 is malformed"), "{err}");
    }

    #[tokio::test]
    async fn truncate_rewrites_the_file_and_purge_appends_to_it() {
        let purged = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let entries = (1..=5).map(|i| entry(1, i)).collect();
        store.force(entries, Vote::new(1, 1)).unwrap();
        store.truncate(purged(4)).await.unwrap();
        assert_eq!(ids(&store), [1, 2, 3]);
        store.purge(purged(2)).await.unwrap();
        // Appended after the purge, then read back: the purged ones stay out.
        store.force(vec![entry(1, 4)], Vote::new(1, 1)).unwrap();
        let mut again = LogStore::open(dir.path()).unwrap();
        assert_eq!(ids(&again), [3, 4]);
        assert_eq!(again.lock().last_purged.map(|l| l.index), Some(2));
        let state = again.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
    }

    #[tokio::test]
    async fn many_purged_entries_make_the_file_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let count = DEAD_BEFORE_REWRITE as u64 + 10;
        let entries = (1..=count).map(|i| entry(1, i)).collect();
        store.force(entries, Vote::new(1, 1)).unwrap();
        let long = std::fs::metadata(log_path(dir.path())).unwrap().len();
        let upto = LogId::new(CommittedLeaderId::new(1, 1), count - 1);
        store.purge(upto).await.unwrap();
        let short = std::fs::metadata(log_path(dir.path())).unwrap().len();
        assert!(short * 100 < long, "{short} of {long} bytes");
        assert_eq!(ids(&LogStore::open(dir.path()).unwrap()), [count]);
    }
}
