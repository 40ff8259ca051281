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
//! watch is not lost. SIGHUP goes through the same [`reload_map`]; the
//! write-ssconf and patch-ssconf RPCs publish the map they stored
//! ([`publish_written`]). A new map that fails to parse keeps the previous
//! one.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use inotify::{EventMask, Inotify, StreamExt, WatchMask};
use ssconf::{CandidateMap, SsconfError};
use tokio::sync::{mpsc, watch};

use crate::core::{Error, Result};
use crate::state::ssconf_cache::{stamp, Stamp};

/// How long the watcher waits for a burst of events to settle.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// The current candidate map, shared by the verifier and every connection.
#[derive(Debug, Clone)]
pub struct CandidateMapHandle {
    current: Arc<ArcSwap<CandidateMap>>,
    generation: Arc<watch::Sender<u64>>,
    /// Held across load-compare-publish, so two reloads finishing out of
    /// order cannot publish an older map after a newer one. It keeps the
    /// stamp of the file last read: a reload that finds the same stamp (the
    /// watcher's, after the daemon's own write and reload) reads nothing.
    reloading: Arc<tokio::sync::Mutex<Stamp>>,
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
            reloading: Arc::new(tokio::sync::Mutex::new(None)),
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
    let mut last = handle.reloading.lock().await;
    // One `stat`, here rather than on the blocking pool (as the daemon
    // reads ssconf's master file): after each of the daemon's own writes
    // the watcher finds the file as written, and a hop to the pool and
    // back would wake two threads on every node for nothing.
    let now = stamp(path);
    if now.is_some() && now == *last {
        return false;
    }
    // Stamped before the read: a file replaced meanwhile is read again
    // next time.
    let owned = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || CandidateMap::load(&owned)).await;
    if loaded.is_ok() {
        *last = now;
    }
    match loaded {
        Ok(Ok(map)) => publish_if_new(path, handle, Cow::Owned(map)),
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

/// Publishes `map`, which this process has just written to the map file:
/// nothing is read. `written` is the file's stamp when the file was seen
/// to hold `map` after the write: a reload that finds the file so (the
/// watcher's, woken by that write) reads nothing; `None` makes the next
/// reload read the file. Returns whether a new map went out.
pub async fn publish_written(
    path: &Path,
    handle: &CandidateMapHandle,
    map: &CandidateMap,
    written: Stamp,
) -> bool {
    let mut last = handle.reloading.lock().await;
    *last = written;
    publish_if_new(path, handle, Cow::Borrowed(map))
}

/// Publishes `map`, read from or written to `path`, unless it is the
/// current one. Returns whether it went out.
fn publish_if_new(path: &Path, handle: &CandidateMapHandle, map: Cow<'_, CandidateMap>) -> bool {
    if **handle.load() == *map {
        return false;
    }
    tracing::info!(
        entries = map.len(),
        "candidate map reloaded from {}: {} entries",
        path.display(),
        map.len()
    );
    handle.publish(map.into_owned());
    true
}

/// What the watcher listens for: a file renamed in or out (every atomic
/// write), written and closed (an edit in place), deleted, and the
/// directory itself going away. Not opens, reads or attribute changes: the
/// daemon's own reads of the set would wake it for nothing.
fn watch_mask() -> WatchMask {
    WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// Whether an event may have changed the set: one about an ssconf file
/// (temporary files of atomic writes start with a dot), about the
/// directory itself, or a queue overflow (events were lost: rescan).
fn relevant(mask: EventMask, name: Option<&std::ffi::OsStr>) -> bool {
    if mask.intersects(EventMask::Q_OVERFLOW | EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
        return true;
    }
    name.and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("ssconf_"))
}

/// Watches `ssconf_dir` and calls `reload` when one of its ssconf files
/// changes or when `manual` fires (SIGHUP), on a thread of its own with a
/// current-thread runtime. Runs until `manual`'s sender is dropped.
///
/// Its own thread: every write of the set (the daemon's own, on every
/// node at every change) sends the watcher a few bursts of events, and on
/// the multi-threaded runtime each one woke a second worker for nothing
/// (measured: 10 of a node's 45 context switches per change, against
/// about 4 here).
pub fn spawn_watcher<F, Fut>(
    ssconf_dir: PathBuf,
    manual: mpsc::Receiver<()>,
    reload: F,
) -> Result<std::thread::JoinHandle<()>>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let cannot =
        |e: std::io::Error| Error::Invalid(format!("cannot watch {}: {e}", ssconf_dir.display()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(cannot)?;
    let inotify = Inotify::init().map_err(cannot)?;
    inotify
        .watches()
        .add(&ssconf_dir, watch_mask())
        .map_err(cannot)?;
    let events = {
        // Registers the descriptor with the watcher's reactor.
        let _entered = runtime.enter();
        inotify.into_event_stream(vec![0u8; 4096]).map_err(cannot)?
    };
    let events = events.map(|ev| ev.map(|e| (e.mask, e.name.map(|n| n.to_os_string()))));
    std::thread::Builder::new()
        .name("noded-ssconf".into())
        .spawn(move || runtime.block_on(watch(events, manual, reload)))
        .map_err(cannot)
}

/// One event of the watched directory: its mask and the file's name.
type DirEvent = std::io::Result<(EventMask, Option<std::ffi::OsString>)>;

/// [`spawn_watcher`]'s loop over `events`: a rescan at the start, then one
/// per burst of events with a relevant one or per `manual` signal, until
/// `manual`'s sender is dropped. It blocks its thread for the debounce: it
/// must run on a thread of its own.
async fn watch<S, F, Fut>(mut events: S, mut manual: mpsc::Receiver<()>, reload: F)
where
    S: futures_util::Stream<Item = DirEvent> + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // The initial rescan.
    reload().await;
    // A watch that cannot be read any more (an error, or the end of its
    // stream) is given up after one last rescan: the map is then reloaded
    // on SIGHUP and on the daemon's own writes only.
    let mut watching = true;
    let give_up = |why: String| {
        tracing::error!(
            "ssconf watcher stopped ({why}): the candidate map is now reloaded on SIGHUP and on pushes only; restart the daemon to watch again"
        );
    };
    let why = |ev: Option<DirEvent>| match ev {
        Some(Err(e)) => e.to_string(),
        _ => "its event stream ended".to_owned(),
    };
    loop {
        // The first event of a burst, or a signal.
        let mut changed = tokio::select! {
            ev = events.next(), if watching => match ev {
                Some(Ok((mask, name))) => relevant(mask, name.as_deref()),
                other => {
                    give_up(why(other));
                    watching = false;
                    true
                }
            },
            m = manual.recv() => {
                if m.is_none() {
                    break;
                }
                true
            }
        };
        // The rest of the burst. A write of the set (the daemon's own, on
        // every node at every change) sends events for a few milliseconds:
        // its temporary files written, the lock file closed, the files
        // renamed. The thread sleeps through them, this runtime's only
        // task: asleep in the reactor it would be woken by each one.
        // Then the reactor takes in what arrived (the yield), and the
        // events are read without waiting.
        std::thread::sleep(DEBOUNCE);
        tokio::task::yield_now().await;
        // A burst is bounded, and a failing watch is not read again.
        for _ in 0..4096 {
            if !watching {
                break;
            }
            match futures_util::FutureExt::now_or_never(events.next()) {
                None => break,
                Some(Some(Ok((mask, name)))) => changed |= relevant(mask, name.as_deref()),
                Some(other) => {
                    give_up(why(other));
                    watching = false;
                    changed = true;
                }
            }
        }
        while manual.try_recv().is_ok() {
            changed = true;
        }
        if changed {
            reload().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::sync::atomic::AtomicUsize;

    use futures_util::stream;

    use super::*;

    /// Runs [`watch`] over `events`; `signals` SIGHUPs are sent once it
    /// has stopped reading them, then the channel is closed. Returns how
    /// many rescans it made.
    async fn rescans(events: Vec<DirEvent>, signals: usize) -> usize {
        let count = Arc::new(AtomicUsize::new(0));
        // After the events given: a stream that must never be read (a
        // watch given up is not read again) and never ends.
        let after = stream::poll_fn(|_| -> std::task::Poll<Option<DirEvent>> {
            panic!("a watch given up was read again")
        });
        let tail = stream::pending::<DirEvent>();
        let failed = events.iter().any(|e| e.is_err());
        let events: std::pin::Pin<Box<dyn futures_util::Stream<Item = DirEvent>>> = if failed {
            Box::pin(stream::iter(events).chain(after))
        } else {
            Box::pin(stream::iter(events).chain(tail))
        };
        let (tx, rx) = mpsc::channel(4);
        let counted = count.clone();
        let task = watch(events, rx, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {}
        });
        let drive = async {
            for _ in 0..signals {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = tx.send(()).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(tx);
        };
        tokio::join!(task, drive);
        count.load(Ordering::SeqCst)
    }

    fn map_event(mask: EventMask) -> DirEvent {
        Ok((mask, Some("ssconf_master_candidates_certs".into())))
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_then_each_sighup_rescans() {
        let events = vec![
            map_event(EventMask::MOVED_TO),
            Ok((EventMask::CLOSE_WRITE, Some("notes.txt".into()))),
        ];
        // The initial rescan, the change, two SIGHUPs.
        assert_eq!(rescans(events, 2).await, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_that_fails_is_given_up_after_one_rescan_and_sighup_still_works() {
        // The error arrives while the watcher waits.
        let events = vec![Err(std::io::Error::other("read error"))];
        // The initial rescan, the last one after the error, one SIGHUP.
        assert_eq!(rescans(events, 1).await, 3);
        // The error arrives during a burst's debounce, after a change.
        let events = vec![
            map_event(EventMask::MOVED_TO),
            Err(std::io::Error::other("read error")),
        ];
        assert_eq!(rescans(events, 1).await, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_whose_stream_ends_is_given_up() {
        let count = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel(4);
        let counted = count.clone();
        let task = watch(stream::iter(Vec::<DirEvent>::new()), rx, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {}
        });
        let drive = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(tx);
        };
        tokio::join!(task, drive);
        // The initial rescan and the last one; the ended stream is not
        // polled again (a stream::iter would keep answering None).
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn only_changes_to_ssconf_files_and_the_directory_wake_the_watcher() {
        let name = |n: &'static str| Some(OsStr::new(n));
        let map = name("ssconf_master_candidates_certs");
        assert!(relevant(EventMask::MOVED_TO, map));
        assert!(relevant(EventMask::CLOSE_WRITE, map));
        assert!(relevant(EventMask::DELETE, map));
        // The temporary file of an atomic write, and a file of another tool.
        assert!(!relevant(
            EventMask::CLOSE_WRITE,
            name(".ssconf_master_candidates_certs.tmp-0123456789abcdef")
        ));
        assert!(!relevant(EventMask::MOVED_TO, name("notes.txt")));
        // Lost events, or the directory itself gone: rescan.
        assert!(relevant(EventMask::Q_OVERFLOW, None));
        assert!(relevant(EventMask::DELETE_SELF, None));
        assert!(relevant(EventMask::MOVE_SELF, None));
        // The watch mask leaves out what reading a file causes.
        let mask = watch_mask();
        assert!(!mask.contains(WatchMask::OPEN));
        assert!(!mask.contains(WatchMask::ACCESS));
        assert!(!mask.contains(WatchMask::CLOSE_NOWRITE));
    }
}
