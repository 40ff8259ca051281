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

/// How many times [`read_bounded`] reads a file that was rewritten while
/// it read it before giving up.
pub const READ_ATTEMPTS: usize = 8;

/// What a rewrite of a file changes: size, modification and status-change
/// times.
type Settled = (u64, i64, i64, i64, i64);

fn settled(file: &std::fs::File) -> std::io::Result<Settled> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    Ok((
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// Reads a whole ssconf file, bounded by [`MAX_FILE_SIZE`].
///
/// Writers exchange each file of the set with the swap file beside it
/// ([`atomic::write_atomic_all_swapped`]), and the next write of that file
/// rewrites the inode in place. A reader that opened the file before the
/// exchange and reads on until that rewrite would see a mix of two
/// versions; so the open file's size and times are compared before and
/// after the read, and a file that changed under the read is opened and
/// read again, up to [`READ_ATTEMPTS`] times.
pub(crate) fn read_bounded(path: &std::path::Path) -> Result<String> {
    let mut attempts = 0;
    let bytes = loop {
        attempts += 1;
        let (bytes, steady) = read_once(path)?;
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

/// One open and read of `path`: its bytes, and whether the file stayed
/// the same while they were read.
fn read_once(path: &std::path::Path) -> Result<(Vec<u8>, bool)> {
    use std::io::Read;
    let io = |source: std::io::Error| SsconfError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            SsconfError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            io(source)
        }
    })?;
    let before = settled(&file).map_err(io)?;
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
    let after = settled(&file).map_err(io)?;
    Ok((bytes, before == after))
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

    /// A file rewritten while it was held open shows in its size and
    /// times, which [`read_bounded`] compares before and after each read;
    /// one that stayed the same reads whole at once.
    #[test]
    fn a_rewrite_under_an_open_file_is_seen() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let name = std::ffi::OsStr::new("ssconf_serial");
        let path = dir.path().join(name);
        let write = |text: &[u8]| {
            atomic::write_atomic_all_swapped(dir.path(), &[(name, text)], 0o644).map_err(|(_, e)| e)
        };
        write(b"11\n")?;
        write(b"12\n")?;
        let held = std::fs::File::open(&path)?;
        let before = settled(&held)?;
        assert_eq!(
            read_once(&path).map_err(std::io::Error::other)?,
            (b"12\n".to_vec(), true)
        );
        assert_eq!(read_bounded(&path).map_err(std::io::Error::other)?, "12\n");
        // The same size: only the times tell.
        for text in [&b"13\n"[..], b"14\n"] {
            std::thread::sleep(atomic::SWAP_REST);
            write(text)?;
        }
        assert_ne!(
            settled(&held)?,
            before,
            "a rewrite of the held inode unseen"
        );
        assert_eq!(read_bounded(&path).map_err(std::io::Error::other)?, "14\n");
        Ok(())
    }
}
