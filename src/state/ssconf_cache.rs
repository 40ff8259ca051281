//! A node's ssconf set as last read from its directory, with its rendered
//! files and SHA-256, read again only when a file of the set changed.
//!
//! The loop asks every node for its state every heartbeat, and a change
//! reaches a node as a patch of the set it holds: both need the set, its
//! text and its digest. Parsing and hashing the set of a 1,000-node cluster
//! (about 300 KiB) each time cost every node milliseconds per heartbeat;
//! checking that no file changed costs one `stat` per file. A file counts
//! as changed when its inode, size, modification or status-change time
//! differs: every write of the set exchanges each file with its swap file
//! (the inode changes, and the status-change time of both) or renames a
//! fresh file over it, and an edit in place changes the times.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ssconf::{Ssconf, SsconfError, SsconfKey};

use super::fingerprint;

/// A set as read, with what is derived from it.
#[derive(Debug, Clone)]
pub struct HeldSsconf {
    pub set: Ssconf,
    /// `(file name, text)` of every file, as [`Ssconf::render`] gives it.
    pub files: Vec<(String, String)>,
    /// SHA-256 (hex) of the set, as `node-info` reports it.
    pub sha256: String,
    /// The digest's state before each file, for a patched set's digest.
    pub midstates: fingerprint::Midstates,
}

impl HeldSsconf {
    /// `set` with its `files` (its [`Ssconf::render`]) and their digest.
    pub fn new(set: Ssconf, files: Vec<(String, String)>) -> Self {
        let (sha256, midstates) =
            fingerprint::files_sha256_from(&files, 0, &fingerprint::Midstates::default());
        HeldSsconf {
            set,
            files,
            sha256,
            midstates,
        }
    }
}

/// A set this process has just stored, with the [`Stamp`] its map file
/// had right after the write.
#[derive(Debug)]
pub struct Written {
    pub held: Arc<HeldSsconf>,
    pub map_stamp: Stamp,
}

/// What identifies a file's content without reading it: inode, size,
/// modification and status-change times; `None` for a file that cannot be
/// read.
pub type Stamp = Option<(u64, u64, i64, i64, i64, i64)>;

/// The [`Stamp`] of the file at `path`.
pub fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    ))
}

/// A value derived from the file (or directory) at a path, derived again
/// only when the path's [`Stamp`] changed: what `node-info` reports of a
/// certificate, a key block or a directory's listing costs one `stat`
/// while the file stays as it was. Only a derivation that succeeded is
/// kept: a read that failed (a descriptor limit, a transient I/O error) is
/// tried again at the next call, not reported until the file changes. A
/// file replaced between the stamp and the derivation leaves a stamp older
/// than the value: the next call derives again.
#[derive(Debug)]
pub struct Stamped<T>(Mutex<Option<(Stamp, T)>>);

impl<T> Default for Stamped<T> {
    fn default() -> Self {
        Stamped(Mutex::new(None))
    }
}

impl<T: Clone> Stamped<T> {
    /// The value for the file at `path` as it is now: the one derived
    /// before if its stamp is unchanged, else `derive(path)`, kept if it
    /// succeeded.
    pub fn get<E>(&self, path: &Path, derive: impl FnOnce(&Path) -> Result<T, E>) -> Result<T, E> {
        let now = stamp(path);
        if let Some((stamped, value)) = crate::core::locked(&self.0).as_ref() {
            if *stamped == now {
                return Ok(value.clone());
            }
        }
        let value = derive(path)?;
        *crate::core::locked(&self.0) = Some((now, value.clone()));
        Ok(value)
    }
}

/// The cache; one per state directory (the daemon holds one).
#[derive(Debug, Default)]
pub struct SsconfCache(Mutex<Option<(Vec<Stamp>, Arc<HeldSsconf>)>>);

fn stamps(dir: &Path) -> Vec<Stamp> {
    SsconfKey::ALL
        .iter()
        .map(|key| stamp(&dir.join(key.file_name())))
        .collect()
}

impl SsconfCache {
    /// The set in `dir`: the one read before if no file changed since,
    /// else read now.
    pub fn load(&self, dir: &Path) -> Result<Arc<HeldSsconf>, SsconfError> {
        let before = stamps(dir);
        if let Some((stamp, held)) = self.guard().as_ref() {
            if *stamp == before {
                return Ok(held.clone());
            }
        }
        // A file replaced between the stamps and the read leaves stamps
        // older than the content: the next call reads again.
        let set = Ssconf::load(dir)?;
        let files = set.render();
        let held = Arc::new(HeldSsconf::new(set, files));
        *self.guard() = Some((before, held.clone()));
        Ok(held)
    }

    /// The set held in `dir`, taken out of the cache to be changed (a
    /// patch): no copy when nobody else holds it at the moment. The next
    /// [`SsconfCache::load`] reads the directory again unless the caller
    /// seeds the changed set.
    pub fn take(&self, dir: &Path) -> Result<HeldSsconf, SsconfError> {
        let held = self.load(dir)?;
        *self.guard() = None;
        Ok(Arc::try_unwrap(held).unwrap_or_else(|shared| (*shared).clone()))
    }

    /// Keeps `held` as the set in `dir`, which this process has just
    /// written there: the next [`SsconfCache::load`] reads nothing unless a
    /// file changes after this call. (An edit by hand between the write and
    /// this call would go unseen until the next change of any file of the
    /// set; the daemon's writes are serialised.)
    pub fn seed(&self, dir: &Path, held: Arc<HeldSsconf>) {
        *self.guard() = Some((stamps(dir), held));
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, Option<(Vec<Stamp>, Arc<HeldSsconf>)>> {
        crate::core::locked(&self.0)
    }
}

/// A set of cluster `c` with master `a` and `nodes` (tests).
#[cfg(test)]
pub(crate) fn test_set(serial: u64, nodes: &[&str]) -> Ssconf {
    Ssconf {
        cluster_name: "c".into(),
        master_node: "a".into(),
        node_list: nodes.iter().map(|n| (*n).to_owned()).collect(),
        node_addresses: nodes
            .iter()
            .map(|n| ((*n).to_owned(), "127.0.0.1:1811".to_owned()))
            .collect(),
        online_nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
        master_candidates: vec!["a".into()],
        serial,
        ..Ssconf::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(serial: u64, nodes: &[&str]) -> Ssconf {
        test_set(serial, nodes)
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        set(1, &["a", "b"]).store(dir.path()).unwrap();
        let cache = SsconfCache::default();
        let first = cache.load(dir.path()).unwrap();
        assert_eq!(first.set.serial, 1);
        assert_eq!(first.sha256, fingerprint::ssconf_sha256(&first.set));
        // Nothing changed: the same set, not read again.
        assert!(Arc::ptr_eq(&first, &cache.load(dir.path()).unwrap()));
        // A write of the set (rename into place).
        set(2, &["a", "b", "c"]).store(dir.path()).unwrap();
        let second = cache.load(dir.path()).unwrap();
        assert_eq!(second.set.node_list, ["a", "b", "c"]);
        assert_eq!(second.sha256, fingerprint::ssconf_sha256(&second.set));
        // An edit in place of one file, same size.
        let list = dir.path().join(SsconfKey::NodeList.file_name());
        std::fs::write(&list, "a\nb\nd\n").unwrap();
        assert_eq!(
            cache.load(dir.path()).unwrap().set.node_list,
            ["a", "b", "d"]
        );
        // A set this process wrote and keeps: not read back, until a file
        // changes.
        let third = set(3, &["a"]);
        third.store(dir.path()).unwrap();
        let files = third.render();
        let kept = Arc::new(HeldSsconf::new(third, files));
        cache.seed(dir.path(), kept.clone());
        assert!(Arc::ptr_eq(&kept, &cache.load(dir.path()).unwrap()));
        set(4, &["a", "b"]).store(dir.path()).unwrap();
        assert_eq!(cache.load(dir.path()).unwrap().set.serial, 4);
        // A file gone: the error, as reading the set gives it.
        std::fs::remove_file(&list).unwrap();
        assert!(cache.load(dir.path()).is_err());
    }

    /// A stamped value is derived again when its file is replaced, edited
    /// in place, removed or created, and only then; a directory's when an
    /// entry comes or goes.
    #[test]
    fn a_stamped_value_is_derived_again_only_when_its_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.pem");
        let derived = std::cell::Cell::new(0);
        let read = |p: &Path| -> Result<Option<String>, std::io::Error> {
            derived.set(derived.get() + 1);
            match std::fs::read_to_string(p) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        };
        let cell = Stamped::default();
        // Absent, then still absent: derived once.
        assert_eq!(cell.get(&path, read).unwrap(), None);
        assert_eq!(cell.get(&path, read).unwrap(), None);
        assert_eq!(derived.get(), 1);
        let expect = |text: Option<&str>, times: u32| {
            assert_eq!(cell.get(&path, read).unwrap().as_deref(), text);
            assert_eq!(cell.get(&path, read).unwrap().as_deref(), text);
            assert_eq!(derived.get(), times);
        };
        ssconf::write_atomic(&path, b"one", 0o644).unwrap();
        expect(Some("one"), 2);
        // Replaced by rename, the same size.
        ssconf::write_atomic(&path, b"two", 0o644).unwrap();
        expect(Some("two"), 3);
        // Edited in place, the same size.
        std::fs::write(&path, b"six").unwrap();
        expect(Some("six"), 4);
        std::fs::remove_file(&path).unwrap();
        expect(None, 5);
        // A derivation that failed is not kept: tried again each time.
        let failing = Stamped::<String>::default();
        let tries = std::cell::Cell::new(0);
        for _ in 0..2 {
            let failed = failing.get(dir.path(), |_| {
                tries.set(tries.get() + 1);
                Err::<String, _>("too many open files")
            });
            assert!(failed.is_err());
        }
        assert_eq!(tries.get(), 2);

        let listing = Stamped::default();
        let listed = std::cell::Cell::new(0);
        let list = |d: &Path| {
            listed.set(listed.get() + 1);
            ssconf::atomic::temp_files(d).map(|found| found.len())
        };
        assert_eq!(listing.get(dir.path(), list).unwrap(), 0);
        assert_eq!(listing.get(dir.path(), list).unwrap(), 0);
        std::fs::write(dir.path().join(".ca.pem.tmp-0123456789abcdef"), b"").unwrap();
        assert_eq!(listing.get(dir.path(), list).unwrap(), 1);
        assert_eq!(listing.get(dir.path(), list).unwrap(), 1);
        assert_eq!(listed.get(), 2);
    }
}
