//! Simple-store configuration ("ssconf") files, as Ganeti lays them out.
//!
//! Every node of a noded cluster keeps a directory `ssconf/` with one small
//! file per key (`ssconf_<key>`), each a list of `\n`-terminated lines. The
//! master writes the whole set and pushes it to every node; the node daemon
//! reads only [`CandidateMap`] (`ssconf_master_candidates_certs`) on its hot
//! path, and [`Ssconf`] as a whole for everything else.
//!
//! - [`digest`]: [`CertDigest`], a certificate's DER digest in the exact text
//!   form `openssl x509 -noout -fingerprint` prints.
//! - [`candidate_map`]: [`CandidateMap`], Ganeti's `<uuid>=<digest>` format.
//! - [`set`]: [`Ssconf`], the whole set, with rollback protection on `serial`.
//! - [`atomic`]: [`write_atomic`], the one way any state file is written.

pub mod atomic;
pub mod candidate_map;
pub mod digest;
pub mod set;

pub use atomic::write_atomic;
pub use candidate_map::CandidateMap;
pub use digest::{CertDigest, DigestAlgorithm};
pub use set::{Ssconf, SsconfKey};

use std::path::PathBuf;

/// Everything that can go wrong reading or writing ssconf files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SsconfError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A required ssconf file does not exist.
    #[error("{}: missing; the node has no ssconf (run `nodectl init` or `nodectl join`)", path.display())]
    Missing { path: PathBuf },
    /// A line does not follow the file's format.
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// The file is larger than any sane ssconf file.
    #[error("{}: larger than {limit} bytes; refusing to read it", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    /// The file was rewritten during each of several reads in a row.
    #[error("{}: rewritten while it was read, {attempts} times in a row; try again once the cluster's changes settle", path.display())]
    Unsettled { path: PathBuf, attempts: usize },
    /// A set with the serial on disk but different content was offered.
    #[error("ssconf serial {serial} is already held with different content; the master must bump the serial")]
    Conflict { serial: u64 },
    /// A set older than the one on disk was offered: a lower term (from a
    /// deposed master), or the same term and a lower serial.
    #[error("ssconf (term {offered_term}, serial {offered}) is older than the (term {current_term}, serial {current}) this node holds; refusing to roll back")]
    Rollback {
        current: u64,
        current_term: u64,
        offered: u64,
        offered_term: u64,
    },
}

/// Result alias for this crate.
pub type Result<T, E = SsconfError> = std::result::Result<T, E>;

/// The largest ssconf file this crate reads (a map of 100,000 SHA-256 entries
/// is about 14 MiB).
pub const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// How many times the readers of the set read a file that was rewritten while
/// it read it before giving up.
pub const READ_ATTEMPTS: usize = 8;

/// What a rewrite of a file changes: size, modification and status-change
/// times.
type Settled = (u64, i64, i64, i64, i64);

fn settled(meta: &std::fs::Metadata) -> Settled {
    use std::os::unix::fs::MetadataExt;
    (
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// Reads a whole ssconf file, bounded by [`MAX_FILE_SIZE`].
///
/// Writers exchange each file of the set with the swap file beside it
/// ([`atomic::write_atomic_all_swapped`]), and a later write of that file
/// may rewrite the inode in place once it has rested
/// [`atomic::SWAP_REST`]. A reader that opened the file before the
/// exchange and reads on until that rewrite would see a mix of two
/// versions; so a read counts only if the open file's size and times are
/// the same after it as before, and the path still names that file. A
/// file that changed under the read is opened and read again, up to
/// [`READ_ATTEMPTS`] times.
pub(crate) fn read_bounded(path: &std::path::Path) -> Result<String> {
    let mut attempts = 0;
    let bytes = loop {
        attempts += 1;
        let file = std::fs::File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                SsconfError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                io_error(path, source)
            }
        })?;
        let (bytes, steady) = read_open(file, path)?;
        if steady {
            break bytes;
        }
        if attempts >= READ_ATTEMPTS {
            return Err(SsconfError::Unsettled {
                path: path.to_path_buf(),
                attempts,
            });
        }
    };
    text(bytes, path)
}

fn io_error(path: &std::path::Path, source: std::io::Error) -> SsconfError {
    SsconfError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The bytes of `file`, opened at `path`, and whether the read was steady:
/// the file unchanged from before the read to after it, and still the one
/// `path` names.
fn read_open(mut file: std::fs::File, path: &std::path::Path) -> Result<(Vec<u8>, bool)> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let io = |source| io_error(path, source);
    let before = file.metadata().map_err(io)?;
    let mut bytes = Vec::new();
    let read = (&mut file)
        .take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if read as u64 > MAX_FILE_SIZE {
        return Err(SsconfError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_SIZE,
        });
    }
    let after = file.metadata().map_err(io)?;
    let named = match std::fs::metadata(path) {
        Ok(now) => now.dev() == after.dev() && now.ino() == after.ino(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(e)),
    };
    Ok((bytes, named && settled(&before) == settled(&after)))
}

/// `bytes` as text, or where they stop being UTF-8.
fn text(bytes: Vec<u8>, path: &std::path::Path) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = e
            .as_bytes()
            .get(..valid)
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
            + 1;
        SsconfError::Malformed {
            path: path.to_path_buf(),
            line,
            reason: "not valid UTF-8 text".into(),
        }
    })
}

/// Splits a file's text into lines; the final `\n` is optional (Ganeti
/// writes the last line without one).
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    // Ganeti's reader strips every trailing newline (`rstrip("\n")`).
    let text = text.trim_end_matches('\n');
    let mut lines = text.split('\n').enumerate().map(|(i, l)| (i + 1, l));
    // An empty file has no lines, not one empty line.
    let empty = text.is_empty();
    std::iter::from_fn(move || if empty { None } else { lines.next() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read is steady only if the file stayed the same and the path
    /// still names it: a file replaced (renamed over, exchanged) or
    /// rewritten in place while it was held open is read again, and one
    /// that stayed reads whole at once.
    #[test]
    fn a_file_replaced_or_rewritten_under_an_open_read_is_read_again() -> std::io::Result<()> {
        let err = std::io::Error::other;
        let dir = tempfile::tempdir()?;
        let name = std::ffi::OsStr::new("ssconf_serial");
        let path = dir.path().join(name);
        let write = |text: &[u8]| {
            atomic::write_atomic_all_swapped(dir.path(), &[(name, text)], 0o644).map_err(|(_, e)| e)
        };
        write(b"11\n")?;
        write(b"12\n")?;
        let steady = read_open(std::fs::File::open(&path)?, &path).map_err(err)?;
        assert_eq!(steady, (b"12\n".to_vec(), true));
        // Exchanged away before the read: the path names another file.
        let held = std::fs::File::open(&path)?;
        write(b"13\n")?;
        assert_eq!(
            read_open(held, &path).map_err(err)?,
            (b"12\n".to_vec(), false)
        );
        assert_eq!(read_bounded(&path).map_err(err)?, "13\n");
        // Removed before the read.
        let held = std::fs::File::open(&path)?;
        std::fs::remove_file(&path)?;
        assert!(!read_open(held, &path).map_err(err)?.1);
        write(b"14\n")?;
        // Rewritten in place, the same size, while the path still names it:
        // only the times tell. (What a reader sees whose inode was exchanged
        // away, rested and came back; made here by a plain write.)
        let held = std::fs::File::open(&path)?;
        let before = settled(&held.metadata()?);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"15\n")?;
        assert_ne!(
            settled(&held.metadata()?),
            before,
            "a rewrite of the held inode unseen"
        );
        assert_eq!(read_bounded(&path).map_err(err)?, "15\n");
        Ok(())
    }
}
