//! Hot reload of the candidate map.
//!
//! The map lives in an [`ArcSwap`] (the handshake path reads it lock-free)
//! next to a `watch` channel that wakes every open connection when a new map
//! is published, so connections whose digest left the map are closed.
//!
//! The watcher follows arti's file watcher: it watches the ssconf
//! *directory* (an atomic rename replaces the file's inode, so a watch on
//! the file itself would go deaf), debounces bursts, and queues one rescan
//! right after the watch starts so a change between the first load and the
//! watch is not lost. SIGHUP and the write-ssconf RPC go through the same
//! [`reload_map`]. A new map that fails to parse keeps the previous one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use ssconf::{CandidateMap, SsconfError};
use tokio::sync::{mpsc, watch};

use crate::core::{Error, Result};

/// How long the watcher waits for a burst of events to settle.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// The current candidate map, shared by the verifier and every connection.
#[derive(Debug, Clone)]
pub struct CandidateMapHandle {
    current: Arc<ArcSwap<CandidateMap>>,
    generation: Arc<watch::Sender<u64>>,
    /// Held across load-compare-publish, so two reloads finishing out of
    /// order cannot publish an older map after a newer one.
    reloading: Arc<tokio::sync::Mutex<()>>,
    /// Unix time the current map was published (for metrics).
    published_at: Arc<AtomicI64>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl CandidateMapHandle {
    /// A handle holding `map`.
    pub fn new(map: CandidateMap) -> Self {
        CandidateMapHandle {
            current: Arc::new(ArcSwap::from_pointee(map)),
            generation: Arc::new(watch::channel(0).0),
            reloading: Arc::new(tokio::sync::Mutex::new(())),
            published_at: Arc::new(AtomicI64::new(unix_now())),
        }
    }

    /// The current map (lock-free).
    pub fn load(&self) -> arc_swap::Guard<Arc<CandidateMap>> {
        self.current.load()
    }

    /// Replaces the map and wakes every subscriber.
    pub fn publish(&self, map: CandidateMap) {
        self.current.store(Arc::new(map));
        self.published_at.store(unix_now(), Ordering::Relaxed);
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Unix time the current map was published.
    pub fn published_at(&self) -> i64 {
        self.published_at.load(Ordering::Relaxed)
    }

    /// A receiver that changes whenever a map is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// Loads the map at `path` and publishes it if it differs from the current
/// one. A missing file publishes an empty map (nobody is admitted); a
/// malformed one keeps the current map. Returns whether a new map went out.
pub async fn reload_map(path: &Path, handle: &CandidateMapHandle) -> bool {
    let _one_at_a_time = handle.reloading.lock().await;
    let owned = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || CandidateMap::load(&owned)).await;
    match loaded {
        Ok(Ok(map)) => {
            if **handle.load() == map {
                return false;
            }
            tracing::info!(
                entries = map.len(),
                "candidate map reloaded from {}: {} entries",
                path.display(),
                map.len()
            );
            handle.publish(map);
            true
        }
        Ok(Err(SsconfError::Missing { .. })) => {
            if handle.load().is_empty() {
                return false;
            }
            tracing::error!(
                "candidate map {} disappeared: denying every client until it is restored",
                path.display()
            );
            handle.publish(CandidateMap::empty());
            true
        }
        Ok(Err(e)) => {
            tracing::error!("keeping the previous candidate map: {e}");
            false
        }
        Err(e) => {
            tracing::error!("keeping the previous candidate map: reload task failed: {e}");
            false
        }
    }
}

/// Watches `ssconf_dir` and calls `reload` when one of its ssconf files
/// changes or when `manual` fires (SIGHUP). Runs until `manual`'s sender is
/// dropped.
pub fn spawn_watcher<F, Fut>(
    ssconf_dir: PathBuf,
    mut manual: mpsc::Receiver<()>,
    reload: F,
) -> Result<tokio::task::JoinHandle<()>>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (tx, mut events) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match res {
            // Temporary files of atomic writes start with a dot.
            // Reading a file (opening, closing it unchanged) is no change:
            // without this filter the reload's own reads are events, and an
            // idle daemon reloads every debounce period forever.
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => event.need_rescan(),
            Ok(event) => {
                event.need_rescan()
                    || event.paths.iter().any(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("ssconf_"))
                    })
            }
            // An error from the watcher may mean lost events: rescan.
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })
    .map_err(|e| Error::Invalid(format!("cannot watch {}: {e}", ssconf_dir.display())))?;
    watcher
        .watch(&ssconf_dir, RecursiveMode::NonRecursive)
        .map_err(|e| Error::Invalid(format!("cannot watch {}: {e}", ssconf_dir.display())))?;
    Ok(tokio::spawn(async move {
        // Keep the watcher alive as long as this task.
        let _watcher = watcher;
        // The initial rescan.
        reload().await;
        loop {
            tokio::select! {
                ev = events.recv() => if ev.is_none() { break },
                m = manual.recv() => if m.is_none() { break },
            }
            tokio::time::sleep(DEBOUNCE).await;
            while events.try_recv().is_ok() {}
            while manual.try_recv().is_ok() {}
            reload().await;
        }
    }))
}
