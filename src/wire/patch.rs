//! An ssconf set sent as what changed since a set the node holds.
//!
//! Each file of a set is a list of lines, and a change to the cluster
//! touches few of them: a join adds one line to a handful of files, a
//! demotion rewrites the small candidate files. A [`SsconfPatch`] keeps the
//! lines a file shares with the held one at its start and its end and
//! carries only those between, so a change reaches 1,000 nodes as a few
//! hundred bytes each instead of the whole set. The receiver rebuilds the
//! whole set and checks its SHA-256 against the sender's before it stores
//! anything: a patch that does not give exactly the sender's set is
//! refused, and the sender sends the whole set instead.

use serde::{Deserialize, Serialize};

/// One file of a set, as the lines it keeps from the held file and the
/// lines it has instead of the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsconfPatch {
    /// The file's name (`ssconf_<key>`).
    pub file: String,
    /// Lines kept from the start of the held file.
    pub head: u32,
    /// Lines kept from the end of the held file.
    pub tail: u32,
    /// The whole lines between them.
    pub middle: String,
}

/// The patches that turn the set `old` into `new` (both as `(file name,
/// text)`): one per file whose text differs, none for a file that is the
/// same. A file `old` lacks is sent whole.
pub fn diff(old: &[(String, String)], new: &[(String, String)]) -> Vec<SsconfPatch> {
    let mut patches = Vec::new();
    for (file, text) in new {
        let held = old.iter().find(|(f, _)| f == file).map(|(_, t)| t.as_str());
        if held == Some(text.as_str()) {
            continue;
        }
        let ours: Vec<&str> = text.split_inclusive('\n').collect();
        let theirs: Vec<&str> = held.unwrap_or("").split_inclusive('\n').collect();
        let head = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
        let tail = ours
            .iter()
            .skip(head)
            .rev()
            .zip(theirs.iter().skip(head).rev())
            .take_while(|(a, b)| a == b)
            .count();
        let middle: String = ours
            .iter()
            .skip(head)
            .take(ours.len().saturating_sub(head + tail))
            .copied()
            .collect();
        // A count beyond u32 (never, for ssconf) sends the file whole.
        patches.push(match (u32::try_from(head), u32::try_from(tail)) {
            (Ok(head), Ok(tail)) => SsconfPatch {
                file: file.clone(),
                head,
                tail,
                middle,
            },
            _ => SsconfPatch {
                file: file.clone(),
                head: 0,
                tail: 0,
                middle: text.clone(),
            },
        });
    }
    patches
}

/// Applies `patches` to `files`, the held set's; files without a patch
/// stay as they are. `None` when a patch keeps more lines than its file has,
/// names a file that is not an ssconf file, or names one twice (a sender
/// patches each file at most once: refused before any work, so that a
/// frame of many patches costs no more than the set's files).
pub fn apply(
    mut files: Vec<(String, String)>,
    patches: &[SsconfPatch],
) -> Option<Vec<(String, String)>> {
    let mut named = std::collections::BTreeSet::new();
    let known = |file: &str| ssconf::SsconfKey::from_file_name(file).is_some();
    if !patches
        .iter()
        .all(|p| known(&p.file) && named.insert(p.file.as_str()))
    {
        return None;
    }
    for patch in patches {
        let slot = files.iter_mut().find(|(f, _)| *f == patch.file);
        let old = slot.as_ref().map(|(_, t)| t.as_str()).unwrap_or("");
        let lines: Vec<&str> = old.split_inclusive('\n').collect();
        let (head, tail) = (patch.head as usize, patch.tail as usize);
        let rest = lines.len().checked_sub(head.checked_add(tail)?)?;
        let mut text: String = lines.iter().take(head).copied().collect();
        text.push_str(&patch.middle);
        text.extend(lines.iter().skip(head + rest).copied());
        match slot {
            Some((_, held)) => *held = text,
            None => files.push((patch.file.clone(), text)),
        }
    }
    Some(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, &str)]) -> Vec<(String, String)> {
        files
            .iter()
            .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn a_patch_rebuilds_the_new_set_exactly() {
        let old = set(&[
            ("ssconf_node_list", "a\nb\nd\n"),
            ("ssconf_master_candidates", "a\nb\n"),
            ("ssconf_serial", "7\n"),
        ]);
        let rows: [(&str, Vec<(String, String)>); 6] = [
            (
                "a line added in the middle",
                set(&[
                    ("ssconf_node_list", "a\nb\nc\nd\n"),
                    ("ssconf_master_candidates", "a\nb\n"),
                    ("ssconf_serial", "8\n"),
                ]),
            ),
            (
                "a line removed at the end",
                set(&[
                    ("ssconf_node_list", "a\nb\n"),
                    ("ssconf_master_candidates", "a\n"),
                    ("ssconf_serial", "8\n"),
                ]),
            ),
            (
                "everything replaced",
                set(&[
                    ("ssconf_node_list", "x\n"),
                    ("ssconf_master_candidates", ""),
                    ("ssconf_serial", "9\n"),
                ]),
            ),
            (
                "a repeated line",
                set(&[
                    ("ssconf_node_list", "a\nb\nb\nd\n"),
                    ("ssconf_master_candidates", "a\nb\n"),
                    ("ssconf_serial", "8\n"),
                ]),
            ),
            (
                "a file the held set lacks",
                set(&[
                    ("ssconf_node_list", "a\nb\nd\n"),
                    ("ssconf_master_candidates", "a\nb\n"),
                    ("ssconf_term", "3\n"),
                    ("ssconf_serial", "8\n"),
                ]),
            ),
            ("the same set", old.clone()),
        ];
        for (what, new) in rows {
            let patches = diff(&old, &new);
            let mut rebuilt = apply(old.clone(), &patches).expect(what);
            rebuilt.sort();
            let mut want = new.clone();
            want.sort();
            assert_eq!(rebuilt, want, "{what}");
        }
        let unchanged = diff(&old, &old);
        assert!(unchanged.is_empty());
        // Only what changed travels.
        let joined = set(&[
            ("ssconf_node_list", "a\nb\nc\nd\n"),
            ("ssconf_master_candidates", "a\nb\n"),
            ("ssconf_serial", "8\n"),
        ]);
        let patches = diff(&old, &joined);
        assert_eq!(patches.len(), 2);
        assert_eq!(
            patches[0],
            SsconfPatch {
                file: "ssconf_node_list".into(),
                head: 2,
                tail: 1,
                middle: "c\n".into(),
            }
        );
    }

    #[test]
    fn a_patch_that_keeps_more_lines_than_the_file_has_is_refused() {
        let held = set(&[("ssconf_node_list", "a\n")]);
        let patch = SsconfPatch {
            file: "ssconf_node_list".into(),
            head: 1,
            tail: 1,
            middle: String::new(),
        };
        assert_eq!(apply(held.clone(), &[patch]), None);
        let huge = SsconfPatch {
            file: "ssconf_node_list".into(),
            head: u32::MAX,
            tail: u32::MAX,
            middle: String::new(),
        };
        assert_eq!(apply(held.clone(), &[huge]), None);
    }

    #[test]
    fn a_file_named_twice_or_not_an_ssconf_file_is_refused_before_any_work() {
        let held = set(&[("ssconf_node_list", "a\n")]);
        let patch = |file: &str| SsconfPatch {
            file: file.into(),
            head: 0,
            tail: 0,
            middle: "b\n".into(),
        };
        let twice = [patch("ssconf_node_list"), patch("ssconf_node_list")];
        assert_eq!(apply(held.clone(), &twice), None);
        assert_eq!(apply(held.clone(), &[patch("../etc/passwd")]), None);
        // 100,000 patches of made-up files: refused at the first.
        let many: Vec<SsconfPatch> = (0..100_000).map(|i| patch(&format!("f{i}"))).collect();
        assert_eq!(apply(held.clone(), &many), None);
        assert!(apply(held, &[patch("ssconf_node_list"), patch("ssconf_serial")]).is_some());
    }
}
