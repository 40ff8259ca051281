//! Fingerprints of state as a node reports it (`node-info`) and `verify`
//! compares it: SHA-256 of whole files and of a whole ssconf set.

use std::path::Path;

use ssconf::Ssconf;

use crate::core::hex::sha256_hex;

/// SHA-256 (hex) of a file's bytes ("" if unreadable).
pub fn file_sha256(path: &Path) -> String {
    try_file_sha256(path).unwrap_or_default()
}

/// SHA-256 (hex) of a file's bytes, or why it could not be read.
pub fn try_file_sha256(path: &Path) -> std::io::Result<String> {
    std::fs::read(path).map(|b| sha256_hex(&b))
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
    for file in files {
        hash_file(&mut hasher, file);
    }
    crate::core::hex::lower(&hasher.finalize())
}

fn hash_file(hasher: &mut sha2::Sha256, (name, text): &(String, String)) {
    use sha2::Digest;
    hasher.update(name.as_bytes());
    hasher.update([0]);
    hasher.update(text.as_bytes());
    hasher.update([0]);
}

/// The state of a set's [`files_sha256`] before each of its files and
/// after the last: a set that differs from it only from some file on (a
/// patch) is hashed from that file, not from the start. At 1,000 nodes
/// the node list and the addresses, ahead of the candidates' files, are
/// most of the set's 300 KiB.
#[derive(Clone, Default)]
pub struct Midstates(Vec<sha2::Sha256>);

impl std::fmt::Debug for Midstates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Midstates({})", self.0.len())
    }
}

/// [`files_sha256`] of `files`, whose files before index `from` are those
/// of the set `before` was taken over, and the new set's [`Midstates`].
/// With `from` 0 or an empty `before`, the whole set is hashed.
pub fn files_sha256_from(
    files: &[(String, String)],
    from: usize,
    before: &Midstates,
) -> (String, Midstates) {
    use sha2::Digest;
    let from = from.min(before.0.len().saturating_sub(1));
    let (mut states, mut hasher) = match (before.0.get(..from), before.0.get(from)) {
        (Some(kept), Some(state)) => (kept.to_vec(), state.clone()),
        _ => (Vec::new(), sha2::Sha256::new()),
    };
    let from = states.len();
    states.reserve(files.len().saturating_sub(from) + 1);
    for file in files.iter().skip(from) {
        states.push(hasher.clone());
        hash_file(&mut hasher, file);
    }
    states.push(hasher.clone());
    (
        crate::core::hex::lower(&hasher.finalize()),
        Midstates(states),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(texts: &[&str]) -> Vec<(String, String)> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("ssconf_{i}"), (*t).to_owned()))
            .collect()
    }

    /// Resumed from any file, from the states of another set with the same
    /// files before it, the digest is the whole set's.
    #[test]
    fn a_digest_resumed_from_a_file_is_the_whole_sets() {
        let old = files(&["a\n", "b\nc\n", "", "d\n", "7\n"]);
        let (old_sha, states) = files_sha256_from(&old, 0, &Midstates::default());
        assert_eq!(old_sha, files_sha256(&old));
        for changed in 0..=old.len() {
            let mut new = old.clone();
            match new.get_mut(changed) {
                Some(file) => file.1.push_str("x\n"),
                None => new.push(("ssconf_new".into(), "y\n".into())),
            }
            for from in 0..=changed {
                let (sha, resumed) = files_sha256_from(&new, from, &states);
                assert_eq!(sha, files_sha256(&new), "changed {changed}, from {from}");
                // The new states serve the next resumption as well.
                let (again, _) = files_sha256_from(&new, new.len(), &resumed);
                assert_eq!(again, sha);
            }
        }
        // Past the end of the states kept: from their last one.
        let (sha, _) = files_sha256_from(&old, 99, &states);
        assert_eq!(sha, old_sha);
    }
}
