//! `write-ssconf`, `patch-ssconf` and `patch-ssconf-and-keys`: a new
//! ssconf set, whole or as what changed since the set this node holds
//! (then perhaps with the authorized_keys block that goes with it);
//! refused when it is for another cluster or older than the one held (the
//! `ssconf` crate checks the serial).

use std::path::Path;
use std::sync::Arc;

use ssconf::Ssconf;

use super::super::server::Daemon;
use super::{blocking, failed};
use crate::core::Error;
use crate::state::fingerprint;
use crate::state::ssconf_cache::{stamp, HeldSsconf, SsconfCache, Stamp, Written};
use crate::wire::{patch, Reply, RpcError, SsconfPatch};

pub async fn write(daemon: &Daemon, files: Vec<(String, String)>) -> Result<Reply, RpcError> {
    let _guard = daemon.ssconf_write.lock().await;
    let dir = daemon.state.ssconf_dir();
    let cache = daemon.ssconf.clone();
    let written = blocking(move || {
        let set = Ssconf::parse_files(&files, &dir).map_err(|e| Error::Invalid(e.to_string()))?;
        let files = set.render();
        let held = HeldSsconf::new(set, files);
        store(&dir, &cache, held, Base::Disk).map_err(Error::Invalid)
    })
    .await?;
    Ok(publish(daemon, written, "ssconf updated").await)
}

/// The set `patches` make of the one held here, which must be the set
/// whose SHA-256 is `base_sha256`; stored only if it is exactly the set
/// whose SHA-256 is `sha256`. With `keys`, the managed authorized_keys
/// block is then written too, and only if the set was stored.
pub async fn patch(
    daemon: &Daemon,
    base_sha256: String,
    patches: Vec<SsconfPatch>,
    sha256: String,
    keys: Option<Vec<String>>,
) -> Result<Reply, RpcError> {
    let _guard = daemon.ssconf_write.lock().await;
    let dir = daemon.state.ssconf_dir();
    let cache = daemon.ssconf.clone();
    let authorized_keys = daemon.state.authorized_keys();
    // Rebuilt, stored and followed by the keys in one blocking task: a
    // change reaches every node of the cluster at once, and each hop to
    // the blocking pool and back wakes two threads.
    let (written, keys_failed) = blocking(move || {
        let held = cache
            .take(&dir)
            .map_err(|e| Error::Invalid(format!("no ssconf to patch: {e}")))?;
        let touched: Vec<String> = patches.iter().map(|p| p.file.clone()).collect();
        let cluster = held.set.cluster_name.clone();
        let set = rebuild(&dir, held, &base_sha256, &patches, &sha256).map_err(Error::Invalid)?;
        let base = Base::Held {
            cluster: &cluster,
            touched: &touched,
        };
        let written = store(&dir, &cache, set, base).map_err(Error::Invalid)?;
        let keys_failed = keys.and_then(|keys| {
            crate::state::ssh::write_authorized_keys(&authorized_keys, &keys).err()
        });
        Ok((written, keys_failed))
    })
    .await?;
    let reply = publish(daemon, written, "ssconf updated from a patch").await;
    match keys_failed {
        // The set is stored and published; the sender asks the node and
        // sends the keys again.
        Some(e) => Err(failed(format!(
            "ssconf stored, authorized_keys not written: {e}"
        ))),
        None => Ok(reply),
    }
}

/// The held set with `patches` applied, checked against both digests.
fn rebuild(
    dir: &Path,
    held: HeldSsconf,
    base: &str,
    patches: &[SsconfPatch],
    want: &str,
) -> Result<HeldSsconf, String> {
    if held.sha256 != base {
        return Err("the ssconf held here is not the patch's base; send the whole set".into());
    }
    // The files before the first one the patch touches stay as they are
    // (a file the set lacks is added at the end): the digest resumes there.
    let from = patches
        .iter()
        .map(|p| {
            held.files
                .iter()
                .position(|(name, _)| *name == p.file)
                .unwrap_or(held.files.len())
        })
        .min()
        .unwrap_or(held.files.len());
    let files = patch::apply(held.files, patches)
        .ok_or("the patch does not fit the ssconf held here; send the whole set")?;
    // Hashed as patched: equal to the sender's digest, the text is exactly
    // the sender's rendering, so it needs no rendering here, and only the
    // files the patch touched need reading into the held set.
    let (sha256, midstates) = fingerprint::files_sha256_from(&files, from, &held.midstates);
    if sha256 != want {
        return Err("the patched ssconf is not the sender's; send the whole set".into());
    }
    let changed = files
        .iter()
        .filter(|(name, _)| patches.iter().any(|p| p.file == *name))
        .map(|(name, text)| (name.as_str(), text.as_str()));
    let set = held
        .set
        .with_files(changed, dir)
        .map_err(|e| e.to_string())?;
    Ok(HeldSsconf {
        set,
        files,
        sha256,
        midstates,
    })
}

/// What a write replaces.
#[derive(Clone, Copy)]
enum Base<'a> {
    /// Whatever the directory holds.
    Disk,
    /// The set held here (of cluster `cluster`), just read and checked
    /// against its digest, of which a patch changed `touched`.
    Held {
        cluster: &'a str,
        touched: &'a [String],
    },
}

/// Stores `held` (under the caller's `ssconf_write` guard) and keeps it
/// as the set held. On a [`Base::Held`], only the touched files and the
/// serial can differ from the set on disk: the others are neither read
/// nor written, and the touched ones are written without being read.
fn store(
    dir: &Path,
    cache: &SsconfCache,
    held: HeldSsconf,
    base: Base<'_>,
) -> Result<Written, String> {
    let set = &held.set;
    let current = match base {
        Base::Held { cluster, .. } => Some(cluster.to_owned()),
        Base::Disk => {
            let name_file = dir.join(ssconf::SsconfKey::ClusterName.file_name());
            match std::fs::read_to_string(&name_file) {
                Ok(current) => Some(current.trim_end().to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(format!("{}: {e}", name_file.display())),
            }
        }
    };
    if let Some(current) = current.filter(|c| *c != set.cluster_name) {
        return Err(format!(
            "ssconf for cluster {:?} refused: this node belongs to cluster {current:?}",
            set.cluster_name
        ));
    }
    let serial_file = ssconf::SsconfKey::Serial.file_name();
    match base {
        Base::Held { touched, .. } => {
            let subset: Vec<(String, String)> = held
                .files
                .iter()
                .filter(|(name, _)| *name == serial_file || touched.contains(name))
                .cloned()
                .collect();
            set.store_differing(&subset, dir)
        }
        Base::Disk => set.store_rendered(&held.files, dir),
    }
    .map_err(|e| e.to_string())?;
    // The set is kept as held and its map published as it is, without
    // parsing the files again. The map file's stamp goes with it, so that
    // the watcher's rescan after this write reads nothing, but only once
    // the file, read after the stamp was taken, says what this set's map
    // says: another writer (an operator's edit) between the write and the
    // stamp must not have its file taken for this one.
    let map_stamp = map_stamp_if_held(dir, &held.files);
    let held = Arc::new(held);
    cache.seed(dir, held.clone());
    Ok(Written { held, map_stamp })
}

/// The stamp of the map file in `dir` when, read after the stamp was
/// taken, it holds the map text of `files`; `None` otherwise (the next
/// reload then reads it).
fn map_stamp_if_held(dir: &Path, files: &[(String, String)]) -> Stamp {
    let path = Ssconf::candidate_map_path(dir);
    let name = ssconf::SsconfKey::MasterCandidatesCerts.file_name();
    let ours = files.iter().find(|(n, _)| *n == name)?;
    let stamped = stamp(&path)?;
    let on_disk = std::fs::read(&path).ok()?;
    (on_disk == ours.1.as_bytes()).then_some(stamped)
}

/// Publishes what [`store`] wrote: the map, the master, the control-plane
/// addresses.
async fn publish(daemon: &Daemon, written: Written, done: &'static str) -> Reply {
    let serial = written.held.set.serial;
    tracing::info!(serial, "{done}");
    daemon
        .publish_written(&written.held, written.map_stamp)
        .await;
    Reply::SsconfWritten { serial }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(serial: u64) -> Ssconf {
        crate::state::ssconf_cache::test_set(serial, &["a"])
    }

    /// The map file's stamp goes with a written set only while the file
    /// holds that set's map: a map written meanwhile by someone else keeps
    /// no stamp, so the next reload reads it.
    #[test]
    fn the_map_stamp_is_kept_only_for_the_map_written() {
        let dir = tempfile::tempdir().unwrap();
        let ours = set(1);
        ours.store(dir.path()).unwrap();
        let files = ours.render();
        let kept = map_stamp_if_held(dir.path(), &files);
        assert!(kept.is_some());
        assert_eq!(kept, stamp(&Ssconf::candidate_map_path(dir.path())));

        // Another writer's map, in place of ours.
        let path = Ssconf::candidate_map_path(dir.path());
        let theirs = "uuid-x sha256:".to_owned() + &"ab".repeat(32) + "\n";
        std::fs::write(&path, theirs).unwrap();
        assert_eq!(map_stamp_if_held(dir.path(), &files), None);
        // No map file at all.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(map_stamp_if_held(dir.path(), &files), None);
    }
}
