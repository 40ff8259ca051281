//! Crash-safe file replacement.
//!
//! Protocol: write the new content to a fresh temporary file in the same
//! directory (created `O_EXCL` with the final mode, so it is never readable
//! more widely than the target), `fsync` it, `rename` it over the target, then
//! `fsync` the directory so the rename itself is durable. A reader, or a node
//! that loses power at any instant, sees either the whole old file or the
//! whole new one, never a mix.
//!
//! A writer killed between creating its temporary file and the rename
//! leaves that file behind: `.<name>.tmp-<16 hex digits>`. The next write of
//! the same target removes such files once they are [`STALE_AFTER`] old
//! (younger ones may belong to a write still under way), and
//! [`stale_temp_files`] lists them for `verify`.
//!
//! Files written again and again (the ssconf set, on every node at every
//! change) go through [`write_atomic_all_swapped`]: the same protocol, but
//! the new content is written into the file the last write left beside the
//! target, `.<name>.swap`, and the two are exchanged (`renameat2` with
//! `RENAME_EXCHANGE`), so no inode is created or freed per write (of
//! writes at least [`SWAP_REST`] apart). That rewrites in place an inode a
//! reader may have opened while it was the target; so a swap file is only
//! rewritten once it has rested [`SWAP_REST`] since it stopped being the
//! target (a fresh file is used otherwise). A reader that reads a file
//! within [`SWAP_REST`] of opening it sees one version whole, as with a
//! rename; a slower one sees the
//! file's status-change time move on by at least [`SWAP_REST`] and can
//! read again (the ssconf readers of this crate do).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Age after which a temporary file is taken as left by a killed writer:
/// a write that is still going takes milliseconds, not a minute.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// How long a swap file must have rested since its exchange (it was the
/// target until then) before a write may rewrite it in place: far longer
/// than a read of a whole ssconf file takes, and than the kernel's timer
/// tick that coarse timestamps follow, so a reader still holding the file
/// sees its status-change time move. (Timestamps in whole seconds add
/// 2 s more.)
pub const SWAP_REST: Duration = Duration::from_millis(250);

/// The coarsest timestamp a file system keeps: 2 s (FAT).
const COARSEST_TICK: Duration = Duration::from_secs(2);

/// The target's name, when `file_name` is one of our temporary files
/// (`.<target>.tmp-<16 lower-case hex digits>`).
pub fn temp_target(file_name: &str) -> Option<&str> {
    let (target, random) = file_name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    let ours = !target.is_empty()
        && random.len() == 16
        && random
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ours.then_some(target)
}

/// Whether the file at `path` was last modified [`STALE_AFTER`] or more
/// before `now`.
pub fn is_stale(path: &Path, now: SystemTime) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| now.duration_since(modified).ok())
        .is_some_and(|age| age >= STALE_AFTER)
}

/// Our temporary files in `dir` (of any target and age), sorted. An absent
/// directory has none.
pub fn temp_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_str().and_then(temp_target).is_some() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Our temporary files in `dir` (of any target) that are stale, sorted.
/// An absent directory has none.
pub fn stale_temp_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let now = SystemTime::now();
    let mut found = temp_files(dir)?;
    found.retain(|path| is_stale(path, now));
    Ok(found)
}

/// Removes the stale temporary files of the targets `names` in `dir`, best
/// effort: a file that cannot be removed stays for `verify` to report.
fn remove_stale_temps<'a>(dir: &Path, names: impl Iterator<Item = &'a str>) {
    let Ok(stale) = stale_temp_files(dir) else {
        return;
    };
    if stale.is_empty() {
        return;
    }
    let names: Vec<&str> = names.collect();
    for path in stale {
        let of_target = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(temp_target)
            .is_some_and(|target| names.contains(&target));
        if of_target {
            let _ = fs::remove_file(&path);
        }
    }
}

/// A fresh temporary name for `name` in `dir`.
fn temp_path(dir: &Path, name: &OsStr) -> PathBuf {
    dir.join(format!(
        ".{}.tmp-{:016x}",
        name.to_string_lossy(),
        rand::random::<u64>()
    ))
}

/// Writes `contents` into the new file `tmp` with exactly `mode`, and
/// fsyncs it.
fn write_temp(tmp: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    // The umask may have narrowed the mode; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The swap file of `name` in `dir`: `.<name>.swap`.
fn swap_path(dir: &Path, name: &OsStr) -> PathBuf {
    dir.join(format!(".{}.swap", name.to_string_lossy()))
}

/// Writes `contents` into the swap file `path` with exactly `mode`, and
/// fsyncs it: into the file there when it is a plain file of this user
/// with no other name that has rested `rest` since its last exchange, else
/// into a fresh one (whatever was there removed).
fn write_swap(path: &Path, contents: &[u8], mode: u32, rest: Duration) -> io::Result<()> {
    let Some(mut file) = open_kept_swap(path, rest)? else {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        return write_temp(path, contents, mode);
    };
    file.set_len(0)?;
    file.write_all(contents)?;
    if file.metadata()?.mode() & 0o7777 != mode {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    file.sync_all()
}

/// The swap file at `path`, opened for writing, if it may take a new
/// content: a regular file (a symbolic link is not followed), of this
/// process's user, with one name (writing through a hard link would change
/// another file), whose status last changed (its exchange) `rest` ago or
/// more. `None` when there is none or it may not.
fn open_kept_swap(path: &Path, rest: Duration) -> io::Result<Option<File>> {
    use rustix::fs::{Mode, OFlags};
    use rustix::io::Errno;
    // Non-blocking: a FIFO put there must not hang the writer.
    let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::LOOP | Errno::NXIO) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    let meta = file.metadata()?;
    let ours = meta.file_type().is_file()
        && meta.nlink() == 1
        && meta.uid() == rustix::process::geteuid().as_raw();
    Ok((ours && rested(&meta, rest, SystemTime::now())).then_some(file))
}

/// Whether the file of `meta` last changed status `rest` or more before
/// `now`. A time after now (the clock was set back) counts as not rested,
/// and so does one before the epoch. A time of whole seconds may come from
/// a file system that keeps no more (ext4 with small inodes: 1 s, FAT:
/// 2 s): the change may have come up to [`COARSEST_TICK`] later than it
/// says.
fn rested(meta: &fs::Metadata, rest: Duration, now: SystemTime) -> bool {
    rested_since(meta.ctime(), meta.ctime_nsec(), rest, now)
}

/// [`rested`] for a status-change time of `secs` and `nanos` after the
/// epoch (`st_ctime`, `st_ctime_nsec`).
fn rested_since(secs: i64, nanos: i64, rest: Duration, now: SystemTime) -> bool {
    // Before the epoch: a clock gone wrong when the file changed. Not
    // rested, so a fresh file (always safe) is written instead.
    let Ok(secs) = u64::try_from(secs) else {
        return false;
    };
    let nanos = u32::try_from(nanos).unwrap_or(0);
    let changed = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
    let rest = if nanos == 0 {
        rest + COARSEST_TICK
    } else {
        rest
    };
    now.duration_since(changed).is_ok_and(|age| age >= rest)
}

/// Exchanges the swap file and the target; renames the swap file over the
/// target when there is no target yet or the file system cannot exchange.
fn exchange(swap: &Path, target: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;
    match renameat_with(CWD, swap, CWD, target, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
            fs::rename(swap, target)
        }
        Err(e) => Err(e.into()),
    }
}

/// Atomically replaces `path` with `contents`, leaving it with `mode`, and
/// removes the stale temporary files earlier writes of `path` left.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    write_atomic_all(dir, &[(name, contents)], mode).map_err(|(_, e)| e)
}

/// Replaces each of `files` (name, contents) in `dir` atomically, leaving
/// them with `mode`, in two steps made durable by one fsync of the
/// directory each: every file but the last, then the last. So after a
/// crash the last file is new only if all the others are (the ssconf
/// serial, written last, never announces a set that is not all there).
/// Each file's content is fsynced before its rename. On error, returns the
/// path of the file that failed; the temporary files not yet renamed are
/// removed.
pub fn write_atomic_all(
    dir: &Path,
    files: &[(&OsStr, &[u8])],
    mode: u32,
) -> Result<(), (PathBuf, io::Error)> {
    write_all_through(dir, files, mode, Scratch::Fresh)
}

/// [`write_atomic_all`] for files written again and again: each content
/// goes into `.<name>.swap`, the file the last write of `name` left, which
/// is then exchanged with the target and so holds the old content until
/// the next write. Creating an inode and freeing the old one was most of
/// what storing the set cost a node besides the fsyncs (on ext4 without a
/// journal, each new inode is searched for past the recently freed ones).
/// A swap file that is not a plain file of this user with one name (a
/// link, a hard link to another file) is removed, never written through,
/// and a fresh one created; so is one exchanged less than [`SWAP_REST`]
/// ago, which a reader may still be reading. Where the file system cannot
/// exchange (or the target does not exist yet), the file is renamed over
/// the target as by [`write_atomic_all`].
pub fn write_atomic_all_swapped(
    dir: &Path,
    files: &[(&OsStr, &[u8])],
    mode: u32,
) -> Result<(), (PathBuf, io::Error)> {
    write_all_through(dir, files, mode, Scratch::Swap(SWAP_REST))
}

/// Where a write puts the new content before it takes the target's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scratch {
    /// A new temporary file, renamed over the target.
    Fresh,
    /// The swap file beside the target, exchanged with it; rewritten in
    /// place once it has rested this long since its last exchange.
    Swap(Duration),
}

fn write_all_through(
    dir: &Path,
    files: &[(&OsStr, &[u8])],
    mode: u32,
    scratch: Scratch,
) -> Result<(), (PathBuf, io::Error)> {
    if files.is_empty() {
        return Ok(());
    }
    let mut pending: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(files.len());
    let result = (|| {
        for (name, contents) in files {
            let target = dir.join(name);
            let (tmp, written) = match scratch {
                Scratch::Fresh => {
                    let tmp = temp_path(dir, name);
                    let written = write_temp(&tmp, contents, mode);
                    (tmp, written)
                }
                Scratch::Swap(rest) => {
                    let swap = swap_path(dir, name);
                    let written = write_swap(&swap, contents, mode, rest);
                    (swap, written)
                }
            };
            pending.push((tmp, target.clone()));
            written.map_err(|e| (target, e))?;
        }
        let sync_dir = || {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| (dir.to_path_buf(), e))
        };
        let last = pending.len().saturating_sub(1);
        for (i, (tmp, target)) in pending.iter().enumerate() {
            if i == last && i > 0 {
                sync_dir()?;
            }
            let moved = match scratch {
                Scratch::Fresh => fs::rename(tmp, target),
                Scratch::Swap(_) => exchange(tmp, target),
            };
            moved.map_err(|e| (target.clone(), e))?;
        }
        sync_dir()
    })();
    if result.is_err() {
        for (tmp, _) in &pending {
            let _ = fs::remove_file(tmp);
        }
    } else {
        let names: Vec<_> = files
            .iter()
            .map(|(name, _)| name.to_string_lossy())
            .collect();
        remove_stale_temps(dir, names.iter().map(|name| name.as_ref()));
    }
    result
}

/// Removes `path` if it exists and makes the removal durable.
pub fn remove_durable(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_with_exact_mode_and_leaves_no_temp() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret");
        write_atomic(&path, b"one", 0o644)?;
        write_atomic(&path, b"two", 0o600)?;
        assert_eq!(fs::read(&path)?, b"two");
        assert_eq!(fs::metadata(&path)?.mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    /// A temporary file `age` old, as a killed writer leaves it.
    fn leftover(dir: &Path, name: &str, age: Duration) -> io::Result<PathBuf> {
        let path = dir.join(name);
        let file = File::create(&path)?;
        file.set_modified(SystemTime::now() - age)?;
        Ok(path)
    }

    /// [`write_atomic_all`] of files named by `&str`.
    fn write_set(
        dir: &Path,
        files: &[(&str, &[u8])],
        mode: u32,
    ) -> Result<(), (PathBuf, io::Error)> {
        let named: Vec<(&OsStr, &[u8])> = files.iter().map(|(n, c)| (OsStr::new(*n), *c)).collect();
        write_atomic_all(dir, &named, mode)
    }

    #[test]
    fn a_set_of_files_is_written_with_the_last_renamed_last() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        write_set(
            dir.path(),
            &[("a", b"1"), ("b", b"2"), ("serial", b"3")],
            0o640,
        )
        .map_err(|(_, e)| e)?;
        for (name, text) in [("a", "1"), ("b", "2"), ("serial", "3")] {
            assert_eq!(fs::read_to_string(dir.path().join(name))?, text);
            assert_eq!(fs::metadata(dir.path().join(name))?.mode() & 0o777, 0o640);
        }
        let changed = |name: &str| -> io::Result<(i64, i64)> {
            let m = fs::metadata(dir.path().join(name))?;
            Ok((m.ctime(), m.ctime_nsec()))
        };
        assert!(changed("serial")? >= changed("a")? && changed("serial")? >= changed("b")?);
        assert_eq!(fs::read_dir(dir.path())?.count(), 3);
        Ok(())
    }

    #[test]
    fn a_failed_set_names_the_file_and_leaves_no_temp_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        write_set(dir.path(), &[("a", b"old")], 0o644).map_err(|(_, e)| e)?;
        // A directory where a file should go: its rename fails.
        fs::create_dir(dir.path().join("b"))?;
        fs::write(dir.path().join("b").join("inside"), b"x")?;
        let failed = write_set(
            dir.path(),
            &[("a", b"new"), ("b", b"2"), ("c", b"3")],
            0o644,
        );
        let Err((path, _)) = failed else {
            panic!("renaming over a non-empty directory succeeded");
        };
        assert_eq!(path, dir.path().join("b"));
        // What was renamed before the failure stays; the rest never appears.
        assert_eq!(fs::read_to_string(dir.path().join("a"))?, "new");
        assert!(!dir.path().join("c").exists());
        let names: Vec<_> = fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        assert!(
            names
                .iter()
                .all(|n| temp_target(&n.to_string_lossy()).is_none()),
            "{names:?}"
        );
        Ok(())
    }

    #[test]
    fn temp_file_names() {
        let ours = ".config.json.tmp-00112233aabbccdd";
        assert_eq!(temp_target(ours), Some("config.json"));
        assert_eq!(
            temp_target(".a.tmp-b.tmp-00112233aabbccdd"),
            Some("a.tmp-b")
        );
        for other in [
            "config.json",
            ".config.json.tmp-0011",
            ".config.json.tmp-00112233AABBCCDD",
            ".config.json.tmp-00112233aabbccddee",
            "config.json.tmp-00112233aabbccdd",
            "..tmp-00112233aabbccdd",
            ".config.json.swp",
        ] {
            assert_eq!(temp_target(other), None, "{other}");
        }
    }

    #[test]
    fn a_write_removes_the_stale_temp_files_of_its_target_only() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let hour = Duration::from_secs(3600);
        let path = dir.path().join("f");
        let stale = leftover(dir.path(), ".f.tmp-0000000000000001", hour)?;
        let fresh = leftover(dir.path(), ".f.tmp-0000000000000002", Duration::ZERO)?;
        let other = leftover(dir.path(), ".g.tmp-0000000000000003", hour)?;
        let not_ours = leftover(dir.path(), ".f.tmp-backup", hour)?;
        assert_eq!(
            stale_temp_files(dir.path())?,
            [stale.clone(), other.clone()]
        );
        write_atomic(&path, b"new", 0o644)?;
        assert!(!stale.exists());
        // A younger one may be a write under way; another target's is not ours
        // to touch; a name not of our pattern is someone else's.
        assert!(fresh.exists() && other.exists() && not_ours.exists());
        assert_eq!(stale_temp_files(dir.path())?, [other]);
        assert_eq!(
            stale_temp_files(&dir.path().join("absent"))?,
            Vec::<PathBuf>::new()
        );
        Ok(())
    }

    #[test]
    fn failure_leaves_old_file_and_no_temp() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        write_atomic(&path, b"old", 0o644)?;
        // Renaming a file over a non-empty directory fails.
        let target = dir.path().join("d");
        fs::create_dir(&target)?;
        fs::write(target.join("x"), b"x")?;
        assert!(write_atomic(&target, b"new", 0o644).is_err());
        assert_eq!(fs::read(&path)?, b"old");
        assert_eq!(fs::read_dir(dir.path())?.count(), 2);
        Ok(())
    }

    /// `write_atomic_all_swapped` of one file, with swap files rewritten
    /// after `rest`.
    fn swapped(dir: &Path, name: &OsStr, text: &[u8], mode: u32, rest: Duration) -> io::Result<()> {
        write_all_through(dir, &[(name, text)], mode, Scratch::Swap(rest)).map_err(|(_, e)| e)
    }

    /// The inode numbers of `paths`, sorted.
    fn inodes(paths: &[&Path]) -> io::Result<Vec<u64>> {
        let mut i = paths
            .iter()
            .map(|p| fs::metadata(p).map(|m| m.ino()))
            .collect::<io::Result<Vec<_>>>()?;
        i.sort_unstable();
        Ok(i)
    }

    /// Swapped writes: the target gets each content with the exact mode,
    /// the swap file keeps the one before, and after the first exchange no
    /// inode is created: the two files trade theirs.
    #[test]
    fn swapped_writes_trade_two_inodes_and_keep_the_old_content_beside() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let name = OsStr::new("ssconf_serial");
        let (target, swap) = (dir.path().join(name), swap_path(dir.path(), name));
        swapped(dir.path(), name, b"1\n", 0o644, Duration::ZERO)?;
        assert_eq!(fs::read(&target)?, b"1\n");
        assert!(
            !swap.exists(),
            "the first write renames: nothing to exchange with"
        );
        swapped(dir.path(), name, b"2\n", 0o644, Duration::ZERO)?;
        assert_eq!(fs::read(&target)?, b"2\n");
        assert_eq!(fs::read(&swap)?, b"1\n");
        let before = inodes(&[&target, &swap])?;
        for (i, text) in [&b"3\n"[..], b"4\n", b"5\n"].iter().enumerate() {
            let mode = if i == 1 { 0o600 } else { 0o644 };
            swapped(dir.path(), name, text, mode, Duration::ZERO)?;
            assert_eq!(fs::read(&target)?, *text);
            assert_eq!(fs::metadata(&target)?.mode() & 0o7777, mode);
            assert_eq!(inodes(&[&target, &swap])?, before);
        }
        assert_eq!(fs::read(&swap)?, b"4\n");
        Ok(())
    }

    /// A reader holding the file it opened as the target keeps reading
    /// that version while writes follow one another faster than
    /// [`SWAP_REST`]: the swap file, its inode, is not rewritten but
    /// replaced by a fresh one. Without the rest the reader's inode is
    /// rewritten under it; after the rest the two inodes are traded again,
    /// and the reader sees the status-change time move on by the rest.
    #[test]
    fn a_swap_file_is_rewritten_only_once_it_has_rested() -> io::Result<()> {
        use std::io::{Read, Seek};
        let dir = tempfile::tempdir()?;
        let name = OsStr::new("ssconf_master_candidates_certs");
        let (target, swap) = (dir.path().join(name), swap_path(dir.path(), name));
        let read_again = |file: &mut File| -> io::Result<String> {
            file.rewind()?;
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            Ok(text)
        };
        write_atomic_all_swapped(dir.path(), &[(name, b"v1\n")], 0o644).map_err(|(_, e)| e)?;
        write_atomic_all_swapped(dir.path(), &[(name, b"v2\n")], 0o644).map_err(|(_, e)| e)?;
        let mut reader = File::open(&target)?;
        // However slow the disk, these writes come within the rest.
        let an_hour = Duration::from_secs(3600);
        for text in [&b"v3\n"[..], b"v4\n", b"v5\n"] {
            swapped(dir.path(), name, text, 0o644, an_hour)?;
            assert_eq!(fs::read(&target)?, text);
            assert_eq!(read_again(&mut reader)?, "v2\n");
        }

        // The hazard the rest avoids: rewritten at once, the reader's
        // inode takes the content two writes later.
        let mut reader = File::open(&target)?;
        swapped(dir.path(), name, b"w1\n", 0o644, Duration::ZERO)?;
        swapped(dir.path(), name, b"w2\n", 0o644, Duration::ZERO)?;
        assert_eq!(read_again(&mut reader)?, "w2\n");

        // Rested: the inodes are traded, and a reader that held the file
        // sees its status change by at least the rest.
        let reader = File::open(&target)?;
        let changed = |file: &File| -> io::Result<Duration> {
            let m = file.metadata()?;
            let secs = u64::try_from(m.ctime()).map_err(io::Error::other)?;
            let nanos = u32::try_from(m.ctime_nsec()).map_err(io::Error::other)?;
            Ok(Duration::new(secs, nanos))
        };
        let held_since = changed(&reader)?;
        std::thread::sleep(SWAP_REST);
        write_atomic_all_swapped(dir.path(), &[(name, b"x1\n")], 0o644).map_err(|(_, e)| e)?;
        let pair = inodes(&[&target, &swap])?;
        std::thread::sleep(SWAP_REST);
        write_atomic_all_swapped(dir.path(), &[(name, b"x2\n")], 0o644).map_err(|(_, e)| e)?;
        assert_eq!(
            inodes(&[&target, &swap])?,
            pair,
            "no fresh inode once rested"
        );
        assert_eq!(fs::read(&target)?, b"x2\n");
        let moved_on = changed(&reader)?.saturating_sub(held_since);
        assert!(moved_on >= SWAP_REST, "status changed {moved_on:?} later");
        Ok(())
    }

    /// A writer killed at any step of a swapped write of a set (a swap
    /// file half written; some files exchanged, the serial not yet) leaves
    /// every target whole, old or new, and the write done again completes
    /// the set whatever its swap files hold and leaves only them beside it.
    /// The steps are made by hand, in the order the writer takes them (that
    /// the serial goes last: `store_rendered_writes_the_serial_last_whatever_the_order`).
    #[test]
    fn a_swapped_write_killed_at_any_step_is_completed_by_the_next() -> io::Result<()> {
        let names = [
            "ssconf_master_candidates",
            "ssconf_master_candidates_certs",
            "ssconf_serial",
        ];
        let old: [&[u8]; 3] = [b"a\nb\n", b"a=1\nb=2\n", b"7\n"];
        let new: [&[u8]; 3] = [b"a\n", b"a=1\n", b"8\n"];
        let older: [&[u8]; 3] = [b"x\ny\nz\n", b"x=9\ny=8\nz=7\n", b"16\n"];
        let files = |texts: [&'static [u8]; 3]| -> Vec<(&'static OsStr, &'static [u8])> {
            names.iter().map(|n| OsStr::new(*n)).zip(texts).collect()
        };
        // Steps: write swap 0, 1, 2, then exchange 0, 1, 2.
        for killed_after in 0..=6 {
            for torn in [false, true] {
                let dir = tempfile::tempdir()?;
                let d = dir.path();
                // Two writes: the targets exist and so do their swap files.
                for texts in [older, old] {
                    write_all_through(d, &files(texts), 0o644, Scratch::Swap(Duration::ZERO))
                        .map_err(|(_, e)| e)?;
                }
                for (i, name) in names.iter().enumerate() {
                    let swap = swap_path(d, OsStr::new(name));
                    if i < killed_after.min(3) {
                        write_swap(&swap, new[i], 0o644, Duration::ZERO)?;
                    } else if i == killed_after && torn {
                        // Killed in the middle of this swap file.
                        fs::write(&swap, &new[i][..1])?;
                    }
                }
                for (i, name) in names.iter().enumerate() {
                    if i + 3 < killed_after {
                        exchange(&swap_path(d, OsStr::new(name)), &d.join(name))?;
                    }
                }
                let on_disk: Vec<Vec<u8>> = names
                    .iter()
                    .map(|n| fs::read(d.join(n)))
                    .collect::<io::Result<_>>()?;
                for (i, text) in on_disk.iter().enumerate() {
                    assert!(
                        *text == old[i] || *text == new[i],
                        "step {killed_after}: {} torn",
                        names[i]
                    );
                }
                // A torn swap file rewritten in place (rested), or, within
                // the rest, replaced by a fresh one.
                let rest = if torn { Duration::ZERO } else { SWAP_REST };
                write_all_through(d, &files(new), 0o644, Scratch::Swap(rest))
                    .map_err(|(_, e)| e)?;
                for (i, name) in names.iter().enumerate() {
                    assert_eq!(fs::read(d.join(name))?, new[i], "step {killed_after}");
                }
                let mut left: Vec<String> = fs::read_dir(d)?
                    .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<io::Result<_>>()?;
                left.sort();
                let mut want: Vec<String> = names
                    .iter()
                    .flat_map(|n| [n.to_string(), format!(".{n}.swap")])
                    .collect();
                want.sort();
                assert_eq!(left, want, "step {killed_after}");
            }
        }
        Ok(())
    }

    /// A swap file counts as rested from its status change on, measured
    /// against the clock: not before the rest is over, and not when the
    /// clock says it changed later than now (the clock was set back).
    #[test]
    fn a_swap_file_rests_by_the_clock_and_a_clock_set_back_counts_as_not_rested() -> io::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(".ssconf_serial.swap");
        fs::write(&path, b"1\n")?;
        let meta = fs::metadata(&path)?;
        let secs = u64::try_from(meta.ctime()).map_err(io::Error::other)?;
        let nanos = u32::try_from(meta.ctime_nsec()).map_err(io::Error::other)?;
        let changed = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        // Timestamps of whole seconds wait longer (not the case here,
        // nanoseconds are kept).
        let rest = if nanos == 0 {
            SWAP_REST + COARSEST_TICK
        } else {
            SWAP_REST
        };
        let ms = Duration::from_millis(1);
        assert!(!rested(
            &meta,
            SWAP_REST,
            changed - Duration::from_secs(3600)
        ));
        assert!(!rested(&meta, SWAP_REST, changed));
        assert!(!rested(&meta, SWAP_REST, changed + rest - ms));
        assert!(rested(&meta, SWAP_REST, changed + rest));
        assert!(rested(&meta, Duration::ZERO, changed + rest));
        Ok(())
    }

    /// A status-change time of whole seconds (a file system that keeps
    /// no more) rests [`COARSEST_TICK`] longer, since the change may have
    /// come up to that much later than it says; one with nanoseconds does
    /// not. Neither does a time before the epoch.
    #[test]
    fn a_time_of_whole_seconds_rests_the_coarsest_tick_longer() {
        let secs: i64 = 1_800_000_000;
        let at =
            |offset: Duration| SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + offset;
        let ms = Duration::from_millis(1);
        // Whole seconds: not rested until SWAP_REST + COARSEST_TICK.
        assert!(!rested_since(secs, 0, SWAP_REST, at(SWAP_REST)));
        assert!(!rested_since(
            secs,
            0,
            SWAP_REST,
            at(SWAP_REST + COARSEST_TICK - ms)
        ));
        assert!(rested_since(
            secs,
            0,
            SWAP_REST,
            at(SWAP_REST + COARSEST_TICK)
        ));
        // One nanosecond past the second: the time is exact.
        assert!(!rested_since(secs, 1, SWAP_REST, at(SWAP_REST)));
        assert!(rested_since(
            secs,
            1,
            SWAP_REST,
            at(SWAP_REST + Duration::from_nanos(1))
        ));
        // Set back: a change after now never counts as rested.
        assert!(!rested_since(secs, 500, SWAP_REST, at(Duration::ZERO)));
        // Before the epoch (a clock gone wrong at the change): not rested.
        assert!(!rested_since(
            -1,
            0,
            SWAP_REST,
            at(Duration::from_secs(3600))
        ));
    }

    /// A swap file that is a link (symbolic or hard) is never written
    /// through: the file it names keeps its content, and the write still
    /// replaces the target.
    #[test]
    fn a_swap_file_that_is_a_link_is_replaced_not_written_through() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let name = OsStr::new("ssconf_master_node");
        let (target, swap) = (dir.path().join(name), swap_path(dir.path(), name));
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious")?;
        fs::write(&target, b"old\n")?;
        std::os::unix::fs::symlink(&victim, &swap)?;
        write_atomic_all_swapped(dir.path(), &[(name, b"a\n")], 0o644).map_err(|(_, e)| e)?;
        assert_eq!(fs::read(&victim)?, b"precious");
        assert_eq!(fs::read(&target)?, b"a\n");
        // Now a hard link to the victim in the swap file's place.
        fs::remove_file(&swap)?;
        fs::hard_link(&victim, &swap)?;
        write_atomic_all_swapped(dir.path(), &[(name, b"b\n")], 0o644).map_err(|(_, e)| e)?;
        assert_eq!(fs::read(&victim)?, b"precious");
        assert_eq!(fs::read(&target)?, b"b\n");
        assert_eq!(fs::read(&swap)?, b"a\n");
        Ok(())
    }
}
