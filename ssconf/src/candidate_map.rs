//! The candidate map: `ssconf_master_candidates_certs`.
//!
//! One line per master candidate (the master included), sorted by node uuid:
//!
//! ```text
//! <node-uuid>=<digest>
//! ```
//!
//! This is Ganeti's exact format, so a map Ganeti wrote loads unchanged. During
//! a certificate rotation a uuid may appear twice (old and new digest). The map
//! is an allow list only: a digest found in it admits, nothing else does.

use std::collections::HashMap;
use std::path::Path;

use crate::{lines, read_bounded, CertDigest, DigestAlgorithm, Result, SsconfError};

/// File name of the candidate map inside the ssconf directory.
pub const FILE_NAME: &str = "ssconf_master_candidates_certs";

/// The set of client-certificate digests allowed to issue RPCs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CandidateMap {
    /// Entries sorted by uuid (stable for equal uuids).
    entries: Vec<(String, CertDigest)>,
    /// Digest → index into `entries` of the first entry holding it.
    index: HashMap<CertDigest, usize>,
    has_sha1: bool,
    has_sha256: bool,
}

impl CandidateMap {
    /// An empty map: admits nobody.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Builds a map from `(uuid, digest)` pairs, sorting them by uuid.
    pub fn from_entries<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = (S, CertDigest)>,
        S: Into<String>,
    {
        let mut entries: Vec<(String, CertDigest)> =
            entries.into_iter().map(|(u, d)| (u.into(), d)).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut index = HashMap::with_capacity(entries.len());
        let (mut has_sha1, mut has_sha256) = (false, false);
        for (i, (_, digest)) in entries.iter().enumerate() {
            index.entry(*digest).or_insert(i);
            match digest.algorithm() {
                DigestAlgorithm::Sha1 => has_sha1 = true,
                DigestAlgorithm::Sha256 => has_sha256 = true,
            }
        }
        CandidateMap {
            entries,
            index,
            has_sha1,
            has_sha256,
        }
    }

    /// Parses the map's text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut entries = Vec::new();
        for (number, line) in lines(text) {
            let malformed = |reason: String| SsconfError::Malformed {
                path: path.to_path_buf(),
                line: number,
                reason,
            };
            let (uuid, digest) = line
                .split_once('=')
                .ok_or_else(|| malformed("expected <node-uuid>=<digest>".into()))?;
            if uuid.is_empty()
                || uuid
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'=')
            {
                return Err(malformed(format!(
                    "node uuid {:?} is empty or contains whitespace",
                    uuid.chars().take(40).collect::<String>()
                )));
            }
            let digest: CertDigest = digest
                .parse()
                .map_err(|e| malformed(format!("bad digest: {e}")))?;
            entries.push((uuid.to_owned(), digest));
        }
        Ok(Self::from_entries(entries))
    }

    /// Reads and parses the map file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&read_bounded(path)?, path)
    }

    /// The file's text: one `uuid=digest\n` line per entry, sorted by uuid.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.entries.len() * 130);
        for (uuid, digest) in &self.entries {
            out.push_str(uuid);
            out.push('=');
            out.push_str(&digest.to_string());
            out.push('\n');
        }
        out
    }

    /// The uuid of the entry holding `digest`, if any.
    pub fn lookup(&self, digest: &CertDigest) -> Option<&str> {
        self.index
            .get(digest)
            .and_then(|&i| self.entries.get(i))
            .map(|(uuid, _)| uuid.as_str())
    }

    /// Looks a certificate up by its DER encoding, hashing it with each
    /// algorithm the map uses (one, except in a mixed map). Returns the
    /// matching uuid and digest.
    pub fn lookup_der(&self, der: &[u8]) -> Option<(&str, CertDigest)> {
        self.lookup_by(|alg| alg.digest(der))
    }

    /// Looks a certificate up by its digests: `digest` gives the
    /// certificate's digest with each algorithm the map uses (in the order
    /// of [`algorithms`](Self::algorithms)), so a caller that already holds
    /// one (the daemon hashes each client certificate once per handshake)
    /// does not hash it again. Returns the matching uuid and digest.
    pub fn lookup_by(
        &self,
        mut digest: impl FnMut(DigestAlgorithm) -> CertDigest,
    ) -> Option<(&str, CertDigest)> {
        self.algorithms().find_map(|alg| {
            let digest = digest(alg);
            self.lookup(&digest).map(|uuid| (uuid, digest))
        })
    }

    /// Whether any entry holds `digest`.
    pub fn contains(&self, digest: &CertDigest) -> bool {
        self.index.contains_key(digest)
    }

    /// The algorithms the map's digests use.
    pub fn algorithms(&self) -> impl Iterator<Item = DigestAlgorithm> {
        [
            (self.has_sha256, DigestAlgorithm::Sha256),
            (self.has_sha1, DigestAlgorithm::Sha1),
        ]
        .into_iter()
        .filter_map(|(present, alg)| present.then_some(alg))
    }

    /// The entries, sorted by uuid.
    pub fn entries(&self) -> &[(String, CertDigest)] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map admits nobody.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map as Ganeti writes it: SHA-1 digests, entries in dict order (not
    /// sorted), a final newline.
    const GANETI_MAP: &str = "\
d3c1e2f4-5a6b-4c7d-8e9f-0a1b2c3d4e5f=11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44
0a9f7c3e-2a1b-4b8e-9f0e-5c1d2e3f4a5b=8A:1F:0C:33:9B:7E:21:5D:44:E0:9C:3A:7B:12:6F:58:90:AB:CD:EF
";

    #[test]
    fn loads_a_ganeti_map_unchanged() -> Result<()> {
        let map = CandidateMap::parse(GANETI_MAP, Path::new("m"))?;
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.algorithms().collect::<Vec<_>>(),
            [DigestAlgorithm::Sha1]
        );
        let d: CertDigest = "11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44"
            .parse()
            .map_err(|_| SsconfError::Missing { path: "x".into() })?;
        assert_eq!(map.lookup(&d), Some("d3c1e2f4-5a6b-4c7d-8e9f-0a1b2c3d4e5f"));
        assert_eq!(map.entries()[0].0, "0a9f7c3e-2a1b-4b8e-9f0e-5c1d2e3f4a5b");
        // Without the final newline, or with several, it loads the same.
        let bare = GANETI_MAP.trim_end();
        assert_eq!(CandidateMap::parse(bare, Path::new("m"))?, map);
        assert_eq!(
            CandidateMap::parse(&format!("{bare}\n\n"), Path::new("m"))?,
            map
        );
        Ok(())
    }

    #[test]
    fn sorts_by_uuid_and_keeps_overlapping_entries() {
        let a = DigestAlgorithm::Sha256.digest(b"a");
        let b = DigestAlgorithm::Sha256.digest(b"b");
        let c = DigestAlgorithm::Sha1.digest(b"c");
        let map = CandidateMap::from_entries([("u2", a), ("u1", b), ("u2", c)]);
        let uuids: Vec<_> = map.entries().iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(uuids, ["u1", "u2", "u2"]);
        assert_eq!(map.lookup_der(b"c").map(|(u, _)| u), Some("u2"));
        assert_eq!(map.lookup_der(b"b").map(|(u, _)| u), Some("u1"));
        assert_eq!(map.lookup_der(b"zzz"), None);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let good = DigestAlgorithm::Sha256.digest(b"x").to_string();
        for (text, line) in [
            (format!("u1={good}\nno-equals-sign\n"), 2),
            (format!("u1={good}\nu2=AB:CD\n"), 2),
            (format!("={good}\n"), 1),
            (format!("u1={good}\n\nu3={good}\n"), 2),
            (format!("u 1={good}\n"), 1),
            (format!("u1={good}\nu2={good}x\n"), 2),
        ] {
            match CandidateMap::parse(&text, Path::new("/s/ssconf_master_candidates_certs")) {
                Err(SsconfError::Malformed { path, line: l, .. }) => {
                    assert_eq!(l, line, "{text:?}");
                    assert_eq!(path, Path::new("/s/ssconf_master_candidates_certs"));
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn empty_file_is_an_empty_map() -> Result<()> {
        assert!(CandidateMap::parse("", Path::new("m"))?.is_empty());
        assert!(CandidateMap::parse("\n", Path::new("m"))?.is_empty());
        Ok(())
    }
}
