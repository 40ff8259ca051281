//! Fingerprints of state as a node reports it (`node-info`) and `verify`
//! compares it: SHA-256 of whole files and of a whole ssconf set.

use std::path::Path;

use ssconf::Ssconf;

use crate::core::hex::sha256_hex;

/// SHA-256 (hex) of a file's bytes ("" if unreadable).
pub fn file_sha256(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| sha256_hex(&b))
        .unwrap_or_default()
}

/// SHA-256 (hex) of a whole ssconf set, as `node-info` reports it.
pub fn ssconf_sha256(set: &Ssconf) -> String {
    files_sha256(&set.render())
}

/// SHA-256 (hex) of a set's `(file name, text)` pairs as
/// [`Ssconf::render`] gives them: [`ssconf_sha256`] of the set they make.
pub fn files_sha256(files: &[(String, String)]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for (name, text) in files {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    crate::core::hex::lower(&hasher.finalize())
}
