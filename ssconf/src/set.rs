//! The whole ssconf set of a node.

use std::path::{Path, PathBuf};

use crate::atomic::write_atomic_all_swapped;
use crate::candidate_map::{self, CandidateMap};
use crate::{lines, read_bounded, Result, SsconfError};

/// Mode of every ssconf file: world-readable, as Ganeti's.
pub const FILE_MODE: u32 = 0o644;

/// The keys of the set, one file `ssconf_<key>` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SsconfKey {
    ClusterName,
    MasterNode,
    NodeList,
    NodeAddresses,
    OnlineNodes,
    OfflineNodes,
    MasterCandidates,
    MasterCandidatesCerts,
    NodeServerCerts,
    /// The Raft term that committed the set (absent in sets written before
    /// Raft, or by Ganeti: read as 0).
    Term,
    Serial,
}

impl SsconfKey {
    /// Every key, in the order a write goes: `serial` last, so a set whose
    /// serial is on disk is complete.
    pub const ALL: [SsconfKey; 11] = [
        SsconfKey::ClusterName,
        SsconfKey::MasterNode,
        SsconfKey::NodeList,
        SsconfKey::NodeAddresses,
        SsconfKey::OnlineNodes,
        SsconfKey::OfflineNodes,
        SsconfKey::MasterCandidates,
        SsconfKey::MasterCandidatesCerts,
        SsconfKey::NodeServerCerts,
        SsconfKey::Term,
        SsconfKey::Serial,
    ];

    /// The key's name, e.g. `master_candidates_certs`.
    pub fn name(self) -> &'static str {
        match self {
            SsconfKey::ClusterName => "cluster_name",
            SsconfKey::MasterNode => "master_node",
            SsconfKey::NodeList => "node_list",
            SsconfKey::NodeAddresses => "node_addresses",
            SsconfKey::OnlineNodes => "online_nodes",
            SsconfKey::OfflineNodes => "offline_nodes",
            SsconfKey::MasterCandidates => "master_candidates",
            SsconfKey::MasterCandidatesCerts => "master_candidates_certs",
            SsconfKey::NodeServerCerts => "node_server_certs",
            SsconfKey::Term => "term",
            SsconfKey::Serial => "serial",
        }
    }

    /// The key's file name, e.g. `ssconf_master_candidates_certs`.
    pub fn file_name(self) -> String {
        format!("ssconf_{}", self.name())
    }

    /// The key whose file is called `file_name`.
    pub fn from_file_name(file_name: &str) -> Option<SsconfKey> {
        let name = file_name.strip_prefix("ssconf_")?;
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The ssconf set: what every node knows about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ssconf {
    pub cluster_name: String,
    /// Name of the master node.
    pub master_node: String,
    /// Names of all nodes, sorted.
    pub node_list: Vec<String>,
    /// `(name, "host:port")` of every node, sorted by name.
    pub node_addresses: Vec<(String, String)>,
    pub online_nodes: Vec<String>,
    pub offline_nodes: Vec<String>,
    /// Names of the master candidates, the master included.
    pub master_candidates: Vec<String>,
    /// The candidate map.
    pub master_candidates_certs: CandidateMap,
    /// `<uuid>=<digest>` of every node's own server certificate (two for a
    /// node switching certificates), in the same format as the candidate
    /// map: what every RPC client checks that it reached the node it meant.
    pub node_server_certs: CandidateMap,
    /// The Raft term of the commit that made the set: with the serial, the
    /// set's version `(term, serial)`, compared in that order.
    pub term: u64,
    /// Monotonically increasing version of the set.
    pub serial: u64,
}

fn join_lines<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for item in items {
        out.push_str(item);
        out.push('\n');
    }
    out
}

impl Ssconf {
    /// The text of the file for `key`.
    pub fn render_key(&self, key: SsconfKey) -> String {
        match key {
            SsconfKey::ClusterName => join_lines([self.cluster_name.as_str()]),
            SsconfKey::MasterNode => join_lines([self.master_node.as_str()]),
            SsconfKey::NodeList => join_lines(self.node_list.iter().map(String::as_str)),
            SsconfKey::NodeAddresses => {
                let lines: Vec<String> = self
                    .node_addresses
                    .iter()
                    .map(|(n, a)| format!("{n} {a}"))
                    .collect();
                join_lines(lines.iter().map(String::as_str))
            }
            SsconfKey::OnlineNodes => join_lines(self.online_nodes.iter().map(String::as_str)),
            SsconfKey::OfflineNodes => join_lines(self.offline_nodes.iter().map(String::as_str)),
            SsconfKey::MasterCandidates => {
                join_lines(self.master_candidates.iter().map(String::as_str))
            }
            SsconfKey::MasterCandidatesCerts => self.master_candidates_certs.render(),
            SsconfKey::NodeServerCerts => self.node_server_certs.render(),
            SsconfKey::Term => format!("{}\n", self.term),
            SsconfKey::Serial => format!("{}\n", self.serial),
        }
    }

    /// Every file of the set as `(file name, text)`, serial last.
    pub fn render(&self) -> Vec<(String, String)> {
        SsconfKey::ALL
            .into_iter()
            .map(|k| (k.file_name(), self.render_key(k)))
            .collect()
    }

    /// Parses a set from `(file name, text)` pairs (as [`Ssconf::render`] makes
    /// them); `dir` only names files in errors. Every key must be present.
    pub fn parse_files(files: &[(String, String)], dir: &Path) -> Result<Self> {
        let mut set = Ssconf::default();
        let mut seen = [false; SsconfKey::ALL.len()];
        for (file_name, text) in files {
            let key = set.parse_file(file_name, text, dir)?;
            if let Some(flag) = SsconfKey::ALL
                .iter()
                .position(|k| *k == key)
                .and_then(|i| seen.get_mut(i))
            {
                *flag = true;
            }
        }
        if let Some(missing) = SsconfKey::ALL
            .iter()
            .zip(seen)
            .find_map(|(k, present)| (!present && *k != SsconfKey::Term).then_some(*k))
        {
            return Err(SsconfError::Missing {
                path: dir.join(missing.file_name()),
            });
        }
        Ok(set)
    }

    /// This set with the files `changed` (`(file name, text)`, as
    /// [`Ssconf::render`] makes them) read in place of what it held for
    /// their keys; the other keys are kept as they are. `dir` only names
    /// files in errors. Reading only what changed spares parsing the
    /// unchanged files of a large set again; taking the set spares copying
    /// them (at 1,000 nodes, thousands of names and digests).
    pub fn with_files<'a>(
        mut self,
        changed: impl IntoIterator<Item = (&'a str, &'a str)>,
        dir: &Path,
    ) -> Result<Self> {
        for (file_name, text) in changed {
            self.parse_file(file_name, text, dir)?;
        }
        Ok(self)
    }

    /// Reads `text` as the file `file_name` of `dir` into this set; returns
    /// its key.
    fn parse_file(&mut self, file_name: &str, text: &str, dir: &Path) -> Result<SsconfKey> {
        let path = dir.join(file_name);
        let key = SsconfKey::from_file_name(file_name).ok_or_else(|| SsconfError::Malformed {
            path: path.clone(),
            line: 0,
            reason: "not an ssconf key".into(),
        })?;
        self.parse_key(key, text, &path)?;
        Ok(key)
    }

    fn parse_key(&mut self, key: SsconfKey, text: &str, path: &Path) -> Result<()> {
        let malformed = |line: usize, reason: &str| SsconfError::Malformed {
            path: path.to_path_buf(),
            line,
            reason: reason.to_string(),
        };
        let names = |text: &str| -> Result<Vec<String>> {
            lines(text)
                .map(|(n, l)| {
                    if l.is_empty() || l.bytes().any(|b| b.is_ascii_whitespace()) {
                        Err(malformed(n, "expected one node name per line"))
                    } else {
                        Ok(l.to_owned())
                    }
                })
                .collect()
        };
        let single = |text: &str| -> Result<String> {
            let mut it = lines(text);
            match (it.next(), it.next()) {
                (Some((_, l)), None) if !l.is_empty() => Ok(l.to_owned()),
                (None, _) => Err(malformed(1, "expected one line, found none")),
                (Some((n, _)), None) => Err(malformed(n, "expected a value, found an empty line")),
                (Some(_), Some((n, _))) => Err(malformed(n, "expected exactly one line")),
            }
        };
        match key {
            SsconfKey::ClusterName => self.cluster_name = single(text)?,
            SsconfKey::MasterNode => self.master_node = single(text)?,
            SsconfKey::NodeList => self.node_list = names(text)?,
            SsconfKey::OnlineNodes => self.online_nodes = names(text)?,
            SsconfKey::OfflineNodes => self.offline_nodes = names(text)?,
            SsconfKey::MasterCandidates => self.master_candidates = names(text)?,
            SsconfKey::NodeAddresses => {
                self.node_addresses = lines(text)
                    .map(|(n, l)| match l.split_once(' ') {
                        Some((name, addr))
                            if !name.is_empty() && !addr.is_empty() && !addr.contains(' ') =>
                        {
                            Ok((name.to_owned(), addr.to_owned()))
                        }
                        _ => Err(malformed(n, "expected `<node-name> <host:port>`")),
                    })
                    .collect::<Result<_>>()?
            }
            SsconfKey::MasterCandidatesCerts => {
                self.master_candidates_certs = CandidateMap::parse(text, path)?
            }
            SsconfKey::NodeServerCerts => self.node_server_certs = CandidateMap::parse(text, path)?,
            SsconfKey::Term => {
                self.term = single(text)?
                    .parse()
                    .map_err(|_| malformed(1, "term is not a non-negative integer"))?
            }
            SsconfKey::Serial => {
                self.serial = single(text)?
                    .parse()
                    .map_err(|_| malformed(1, "serial is not a non-negative integer"))?
            }
        }
        Ok(())
    }

    /// Reads the whole set from the ssconf directory `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut files = Vec::with_capacity(SsconfKey::ALL.len());
        for key in SsconfKey::ALL {
            let name = key.file_name();
            let text = match read_bounded(&dir.join(&name)) {
                Err(SsconfError::Missing { .. }) if key == SsconfKey::Term => continue,
                read => read?,
            };
            files.push((name, text));
        }
        Self::parse_files(&files, dir)
    }

    /// The version `(term, serial)` of the set stored in `dir`, or `None`
    /// if there is none.
    pub fn stored_version(dir: &Path) -> Result<Option<(u64, u64)>> {
        let Some(serial) = Self::stored_serial(dir)? else {
            return Ok(None);
        };
        let path = dir.join(SsconfKey::Term.file_name());
        let term = match read_bounded(&path) {
            Ok(text) => {
                let mut set = Ssconf::default();
                set.parse_key(SsconfKey::Term, &text, &path)?;
                set.term
            }
            Err(SsconfError::Missing { .. }) => 0,
            Err(e) => return Err(e),
        };
        Ok(Some((term, serial)))
    }

    /// The serial of the set stored in `dir`, or `None` if there is none.
    pub fn stored_serial(dir: &Path) -> Result<Option<u64>> {
        let path = dir.join(SsconfKey::Serial.file_name());
        match read_bounded(&path) {
            Ok(text) => {
                let mut set = Ssconf::default();
                set.parse_key(SsconfKey::Serial, &text, &path)?;
                Ok(Some(set.serial))
            }
            Err(SsconfError::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the whole set into `dir` (created if needed), each file
    /// atomically with mode 0644 and `serial` last; files whose content is
    /// already the same are not rewritten. Refuses a set older than
    /// the one stored; an equal serial rewrites (a retried push).
    pub fn store(&self, dir: &Path) -> Result<()> {
        self.store_rendered(&self.render(), dir)
    }

    /// [`Ssconf::store`] of `files`, which must be this set's
    /// [`Ssconf::render`]: a caller that has them already saves rendering
    /// the set again (at 1,000 nodes, a thousand digests). A caller that
    /// knows the stored set (it just read it) may pass only the files that
    /// differ from it and the serial. The serial is written last whatever
    /// the order of `files`.
    pub fn store_rendered(&self, files: &[(String, String)], dir: &Path) -> Result<()> {
        self.store_files(files, dir, true)
    }

    /// [`Ssconf::store_rendered`] of `files` that the caller knows differ
    /// from the stored ones (it read and checked the stored set just
    /// before): they are written without being read and compared first.
    pub fn store_differing(&self, files: &[(String, String)], dir: &Path) -> Result<()> {
        self.store_files(files, dir, false)
    }

    fn store_files(&self, files: &[(String, String)], dir: &Path, compare: bool) -> Result<()> {
        let io = |path: PathBuf| move |source| SsconfError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        // One writer at a time, across processes: the serial check and the
        // writes form one step.
        let lock_path = dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(lock_path.clone()))?;
        lock.lock().map_err(io(lock_path))?;
        if let Some(current) = Self::stored_version(dir)? {
            let offered = (self.term, self.serial);
            if offered < current {
                return Err(SsconfError::Rollback {
                    current: current.1,
                    current_term: current.0,
                    offered: self.serial,
                    offered_term: self.term,
                });
            }
            // The same version is a retried push only if it says the same.
            if offered == current {
                if let Ok(stored) = Self::load(dir) {
                    if stored != *self {
                        return Err(SsconfError::Conflict { serial: current.1 });
                    }
                }
            }
        }
        let serial = SsconfKey::Serial.file_name();
        let (last, first): (Vec<_>, Vec<_>) = files.iter().partition(|(name, _)| *name == serial);
        // A file that already says this is left alone: a change to the map
        // rewrites (and fsyncs) the map and the serial, not every file. The
        // serial always changes, so it is still written last.
        let changed: Vec<(&std::ffi::OsStr, &[u8])> = first
            .into_iter()
            .chain(last)
            .filter(|(name, text)| {
                !compare
                    || std::fs::read(dir.join(name))
                        .map_or(true, |current| current != text.as_bytes())
            })
            .map(|(name, text)| (std::ffi::OsStr::new(name), text.as_bytes()))
            .collect();
        write_atomic_all_swapped(dir, &changed, FILE_MODE)
            .map_err(|(path, source)| SsconfError::Io { path, source })
    }

    /// The address recorded for node `name`.
    pub fn address_of(&self, name: &str) -> Option<&str> {
        self.node_addresses
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.as_str())
    }

    /// Path of the candidate map inside the ssconf directory `dir`.
    pub fn candidate_map_path(dir: &Path) -> PathBuf {
        dir.join(candidate_map::FILE_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DigestAlgorithm;
    use std::os::unix::fs::MetadataExt;

    fn tmp() -> Result<tempfile::TempDir> {
        tempfile::tempdir().map_err(|source| SsconfError::Io {
            path: "tmp".into(),
            source,
        })
    }

    fn sample(serial: u64) -> Ssconf {
        Ssconf {
            cluster_name: "c1".into(),
            master_node: "n1".into(),
            node_list: vec!["n1".into(), "n2".into()],
            node_addresses: vec![
                ("n1".into(), "127.0.0.1:1811".into()),
                ("n2".into(), "[::1]:1812".into()),
            ],
            online_nodes: vec!["n1".into(), "n2".into()],
            offline_nodes: vec![],
            master_candidates: vec!["n1".into()],
            master_candidates_certs: CandidateMap::from_entries([(
                "uuid-1",
                DigestAlgorithm::Sha256.digest(b"cert"),
            )]),
            node_server_certs: CandidateMap::from_entries([
                ("uuid-1", DigestAlgorithm::Sha256.digest(b"server 1")),
                ("uuid-2", DigestAlgorithm::Sha256.digest(b"server 2")),
            ]),
            term: 0,
            serial,
        }
    }

    #[test]
    fn round_trip_with_modes() -> Result<()> {
        let dir = tmp()?;
        let ssconf = dir.path().join("ssconf");
        sample(3).store(&ssconf)?;
        assert_eq!(Ssconf::load(&ssconf)?, sample(3));
        for key in SsconfKey::ALL {
            let meta = std::fs::metadata(ssconf.join(key.file_name())).map_err(|source| {
                SsconfError::Io {
                    path: "meta".into(),
                    source,
                }
            })?;
            assert_eq!(meta.mode() & 0o777, 0o644, "{key:?}");
        }
        assert_eq!(Ssconf::stored_serial(&ssconf)?, Some(3));
        Ok(())
    }

    /// The metadata of `key`'s file in `dir`.
    fn meta(dir: &Path, key: SsconfKey) -> Result<std::fs::Metadata> {
        let path = dir.join(key.file_name());
        std::fs::metadata(&path).map_err(|source| SsconfError::Io { path, source })
    }

    #[test]
    fn only_changed_files_are_rewritten() -> Result<()> {
        let dir = tmp()?;
        let inode = |key: SsconfKey| meta(dir.path(), key).map(|m| m.ino());
        sample(1).store(dir.path())?;
        let (name, map, serial) = (
            inode(SsconfKey::ClusterName)?,
            inode(SsconfKey::MasterCandidatesCerts)?,
            inode(SsconfKey::Serial)?,
        );
        let mut next = sample(2);
        next.master_candidates_certs = CandidateMap::empty();
        next.store(dir.path())?;
        assert_eq!(
            inode(SsconfKey::ClusterName)?,
            name,
            "unchanged: not rewritten"
        );
        assert_ne!(inode(SsconfKey::MasterCandidatesCerts)?, map);
        assert_ne!(inode(SsconfKey::Serial)?, serial);
        assert_eq!(Ssconf::load(dir.path())?, next);
        Ok(())
    }

    #[test]
    fn with_files_reads_only_what_changed_and_matches_a_whole_parse() -> Result<()> {
        let held = sample(1);
        let mut next = sample(2);
        next.master_candidates_certs = CandidateMap::empty();
        next.online_nodes = vec!["n1".into()];
        next.offline_nodes = vec!["n2".into()];
        let old = held.render();
        let changed: Vec<(String, String)> = next
            .render()
            .into_iter()
            .filter(|file| !old.contains(file))
            .collect();
        assert_eq!(changed.len(), 4, "map, online, offline, serial");
        let dir = Path::new("/ssconf");
        let rebuilt = held
            .clone()
            .with_files(changed.iter().map(|(n, t)| (n.as_str(), t.as_str())), dir)?;
        assert_eq!(rebuilt, next);
        assert_eq!(rebuilt, Ssconf::parse_files(&next.render(), dir)?);
        // What it refuses, it names.
        let bad = held.clone().with_files([("ssconf_serial", "x\n")], dir);
        assert!(
            matches!(bad, Err(SsconfError::Malformed { ref path, .. }) if path.ends_with("ssconf_serial"))
        );
        let unknown = held.clone().with_files([("ssconf_nothing", "a\n")], dir);
        assert!(matches!(
            unknown,
            Err(SsconfError::Malformed { line: 0, .. })
        ));
        Ok(())
    }

    #[test]
    fn store_rendered_writes_the_serial_last_whatever_the_order() -> Result<()> {
        let dir = tmp()?;
        sample(1).store(dir.path())?;
        let mut next = sample(2);
        next.master_candidates_certs = CandidateMap::empty();
        let mut files = next.render();
        files.rotate_right(1);
        assert_eq!(
            files.first().map(|(n, _)| n.as_str()),
            Some("ssconf_serial")
        );
        next.store_rendered(&files, dir.path())?;
        assert_eq!(Ssconf::load(dir.path())?, next);
        let changed_at =
            |key: SsconfKey| meta(dir.path(), key).map(|m| (m.ctime(), m.ctime_nsec()));
        assert!(changed_at(SsconfKey::Serial)? >= changed_at(SsconfKey::MasterCandidatesCerts)?);
        Ok(())
    }

    #[test]
    fn a_lower_term_is_refused_and_a_higher_one_wins_over_the_serial() -> Result<()> {
        let dir = tmp()?;
        let mut held = sample(9);
        held.term = 3;
        held.store(dir.path())?;
        // A deposed master's set: a higher serial, an older term.
        let mut deposed = sample(12);
        deposed.term = 2;
        assert!(matches!(
            deposed.store(dir.path()),
            Err(SsconfError::Rollback {
                current: 9,
                current_term: 3,
                offered: 12,
                offered_term: 2
            })
        ));
        assert_eq!(Ssconf::stored_version(dir.path())?, Some((3, 9)));
        // A newer term wins even with a lower serial (`recover --force`).
        let mut recovered = sample(7);
        recovered.term = 4;
        recovered.store(dir.path())?;
        assert_eq!(Ssconf::stored_version(dir.path())?, Some((4, 7)));
        Ok(())
    }

    #[test]
    fn a_set_without_a_term_file_reads_as_term_0() -> Result<()> {
        let dir = tmp()?;
        sample(5).store(dir.path())?;
        std::fs::remove_file(dir.path().join("ssconf_term")).map_err(|source| SsconfError::Io {
            path: dir.path().into(),
            source,
        })?;
        assert_eq!(Ssconf::load(dir.path())?, sample(5));
        assert_eq!(Ssconf::stored_version(dir.path())?, Some((0, 5)));
        Ok(())
    }

    #[test]
    fn rollback_is_refused_and_leaves_files_alone() -> Result<()> {
        let dir = tmp()?;
        sample(5).store(dir.path())?;
        let mut old = sample(4);
        old.master_node = "n2".into();
        assert!(matches!(
            old.store(dir.path()),
            Err(SsconfError::Rollback {
                current: 5,
                offered: 4,
                ..
            })
        ));
        assert_eq!(Ssconf::load(dir.path())?, sample(5));
        // The same serial again is a retried push, and is accepted.
        sample(5).store(dir.path())?;
        sample(6).store(dir.path())?;
        assert_eq!(Ssconf::stored_serial(dir.path())?, Some(6));
        Ok(())
    }

    #[test]
    fn malformed_files_are_named_with_their_line() {
        let mut files = sample(1).render();
        for (name, text) in files.iter_mut() {
            if name == "ssconf_node_addresses" {
                *text = "n1 127.0.0.1:1811\nn2\n".into();
            }
        }
        match Ssconf::parse_files(&files, Path::new("/x")) {
            Err(SsconfError::Malformed { path, line, .. }) => {
                assert_eq!(path, Path::new("/x/ssconf_node_addresses"));
                assert_eq!(line, 2);
            }
            other => panic!("{other:?}"),
        }
        let mut files = sample(1).render();
        files.retain(|(n, _)| n != "ssconf_serial");
        assert!(matches!(
            Ssconf::parse_files(&files, Path::new("/x")),
            Err(SsconfError::Missing { .. })
        ));
        let mut files = sample(1).render();
        files.push(("ssconf_bogus".into(), String::new()));
        assert!(Ssconf::parse_files(&files, Path::new("/x")).is_err());
    }
}
