//! The layering of `src/` (README "Layout"): each top-level part imports
//! only the parts below it, and `daemon` and `ctl` never import each other.
//! Read from the `crate::` paths of every source file, tests excluded.

use std::collections::BTreeMap;
use std::path::Path;

/// Each top-level part of `src/` and its rank: a part may use only parts
/// of a lower rank. `daemon` and `ctl` share a rank, so neither may use the
/// other.
const RANKS: &[(&str, u32)] = &[
    ("core", 0),
    ("wire", 1),
    ("state", 2),
    ("pki", 3),
    ("rpc", 4),
    ("cluster", 5),
    ("daemon", 6),
    ("ctl", 6),
    ("logging", 7),
    ("man", 7),
    ("cli", 8),
];

/// The code of `text` before its first `#[cfg(test)]`, without comments.
fn code_of(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The parts named in `crate::` paths of `code`, including the
/// `use crate::{a, b::c}` group form.
fn parts_used(code: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    parts.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            parts.push(name);
        }
    }
    parts
}

/// Every import against the layering, as `file: part uses other`.
fn violations(files: &[(String, String, String)]) -> Vec<String> {
    let ranks: BTreeMap<&str, u32> = RANKS.iter().copied().collect();
    let mut found = Vec::new();
    for (file, part, text) in files {
        let Some(&rank) = ranks.get(part.as_str()) else {
            found.push(format!("{file}: part {part:?} has no rank in the layering"));
            continue;
        };
        for used in parts_used(&code_of(text)) {
            if used == *part {
                continue;
            }
            // Macros exported at the crate root (`crate::say!`) and the
            // root's re-exports are not parts.
            let Some(&other) = ranks.get(used.as_str()) else {
                continue;
            };
            if other >= rank {
                found.push(format!("{file}: {part} uses {used}"));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn sources(dir: &Path, part: &str, out: &mut Vec<(String, String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, part, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path.display().to_string(), part.to_owned(), text));
        }
    }
}

#[test]
fn every_part_imports_only_the_parts_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if matches!(name.as_str(), "lib.rs" | "bin") {
            continue;
        }
        let part = name.trim_end_matches(".rs").to_owned();
        if path.is_dir() {
            sources(&path, &part, &mut files);
        } else {
            let text = std::fs::read_to_string(&path).unwrap();
            files.push((path.display().to_string(), part, text));
        }
    }
    assert!(files.len() > 20, "found only {} source files", files.len());
    let found = violations(&files);
    assert!(
        found.is_empty(),
        "imports against the layering:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_catches_an_upward_import_and_a_cross_import() {
    let file = |part: &str, text: &str| (format!("{part}/x.rs"), part.to_owned(), text.to_owned());
    let files = vec![
        file(
            "state",
            "use crate::core::Error;\nuse crate::pki::NodeKey;\n",
        ),
        file("ctl", "use crate::{cluster, daemon::server::Daemon};\n"),
        file(
            "daemon",
            "// crate::ctl in a comment is fine\nuse crate::wire;\n",
        ),
        file(
            "pki",
            "fn f() {}\n#[cfg(test)]\nmod tests { use crate::cli; }\n",
        ),
        file("extra", "use crate::core;\n"),
    ];
    assert_eq!(
        violations(&files),
        vec![
            "ctl/x.rs: ctl uses daemon".to_owned(),
            "extra/x.rs: part \"extra\" has no rank in the layering".to_owned(),
            "state/x.rs: state uses pki".to_owned(),
        ]
    );
}
