//! `write-ssconf` and `patch-ssconf`: a new ssconf set, whole or as what
//! changed since the set this node holds; refused when it is for another
//! cluster or older than the one held (the `ssconf` crate checks the
//! serial).

use std::path::Path;
use std::sync::Arc;

use ssconf::Ssconf;

use super::super::server::Daemon;
use super::blocking;
use crate::core::Error;
use crate::state::fingerprint;
use crate::state::ssconf_cache::{stamp, HeldSsconf, SsconfCache, Written};
use crate::wire::{patch, Reply, RpcError, SsconfPatch};

pub async fn write(daemon: &Daemon, files: Vec<(String, String)>) -> Result<Reply, RpcError> {
    let _guard = daemon.ssconf_write.lock().await;
    let dir = daemon.state.ssconf_dir();
    let cache = daemon.ssconf.clone();
    let written = blocking(move || {
        let set = Ssconf::parse_files(&files, &dir).map_err(|e| Error::Invalid(e.to_string()))?;
        let files = set.render();
        let held = HeldSsconf {
            sha256: fingerprint::files_sha256(&files),
            files,
            set,
        };
        store(&dir, &cache, held, None).map_err(Error::Invalid)
    })
    .await?;
    publish(daemon, written, "ssconf updated").await
}

/// The set `patches` make of the one held here, which must be the set
/// whose SHA-256 is `base_sha256`; stored only if it is exactly the set
/// whose SHA-256 is `sha256`.
pub async fn patch(
    daemon: &Daemon,
    base_sha256: String,
    patches: Vec<SsconfPatch>,
    sha256: String,
) -> Result<Reply, RpcError> {
    let _guard = daemon.ssconf_write.lock().await;
    let dir = daemon.state.ssconf_dir();
    let cache = daemon.ssconf.clone();
    // Rebuilt and stored in one blocking task: a change reaches every node
    // of the cluster at once, and each hop to the blocking pool and back
    // wakes two threads.
    let written = blocking(move || {
        let held = cache
            .take(&dir)
            .map_err(|e| Error::Invalid(format!("no ssconf to patch: {e}")))?;
        let touched: Vec<String> = patches.iter().map(|p| p.file.clone()).collect();
        let set = rebuild(&dir, held, &base_sha256, &patches, &sha256).map_err(Error::Invalid)?;
        store(&dir, &cache, set, Some(&touched)).map_err(Error::Invalid)
    })
    .await?;
    publish(daemon, written, "ssconf updated from a patch").await
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
    let files = patch::apply(held.files, patches)
        .ok_or("the patch does not fit the ssconf held here; send the whole set")?;
    // Hashed as patched: equal to the sender's digest, the text is exactly
    // the sender's rendering, so it needs no rendering here, and only the
    // files the patch touched need reading into the held set.
    let sha256 = fingerprint::files_sha256(&files);
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
    Ok(HeldSsconf { set, files, sha256 })
}

/// Stores `held` (under the caller's `ssconf_write` guard) and keeps it
/// as the set held. With `touched`, only those files (and the serial) can
/// differ from the set on disk, which was just read and checked against
/// its digest: the others are neither read nor written.
fn store(
    dir: &Path,
    cache: &SsconfCache,
    held: HeldSsconf,
    touched: Option<&[String]>,
) -> Result<Written, String> {
    let set = &held.set;
    let name_file = dir.join(ssconf::SsconfKey::ClusterName.file_name());
    match std::fs::read_to_string(&name_file) {
        Ok(current) if current.trim_end() != set.cluster_name => {
            return Err(format!(
                "ssconf for cluster {:?} refused: this node belongs to cluster {:?}",
                set.cluster_name,
                current.trim_end()
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", name_file.display())),
    }
    let serial_file = ssconf::SsconfKey::Serial.file_name();
    let subset: Vec<(String, String)>;
    let written = match touched {
        Some(touched) => {
            subset = held
                .files
                .iter()
                .filter(|(name, _)| *name == serial_file || touched.contains(name))
                .cloned()
                .collect();
            &subset
        }
        None => &held.files,
    };
    set.store_rendered(written, dir)
        .map_err(|e| e.to_string())?;
    // What was just written needs no reading back: the set is kept as
    // held, and its map is published as written, with the map file's stamp
    // so that the watcher's rescan after this write reads nothing.
    let map_stamp = stamp(&Ssconf::candidate_map_path(dir));
    let held = Arc::new(held);
    cache.seed(dir, held.clone());
    Ok(Written { held, map_stamp })
}

/// Publishes what [`store`] wrote: the map, the master, the control-plane
/// addresses.
async fn publish(daemon: &Daemon, written: Written, done: &'static str) -> Result<Reply, RpcError> {
    let serial = written.held.set.serial;
    tracing::info!(serial, "{done}");
    daemon
        .publish_written(&written.held, written.map_stamp)
        .await;
    Ok(Reply::SsconfWritten { serial })
}
