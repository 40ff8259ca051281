//! After a full cluster workflow: no secret in any log, and no state file
//! wider than its mode in the state-directory table.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::support::*;

/// Every file under `dir` with its mode.
fn files(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            files(&entry.path(), out);
        } else {
            out.push((entry.path(), meta.mode() & 0o777));
        }
    }
}

/// The widest mode a state file may have (SPEC §3), by its name.
fn allowed(path: &Path) -> u32 {
    let name = path.file_name().unwrap().to_str().unwrap();
    match name {
        "ca.key" | "server.key" | "client.key" | "config.json" | "tokens.json" | "id_ed25519"
        | "authorized_keys" | "client.prev.key" | "client.key.new" | "config.lock" => 0o600,
        _ => 0o644,
    }
}

#[test]
fn no_secret_in_logs_and_no_file_too_open() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let dm = Daemon::start(&m, &[]);
    let (a, da) = join_and_start(&m, "a", &[]);
    let (b, db) = join_and_start(&m, "b", &[]);
    let token = create_token(&m, &[]);
    let secret = noded::state::token::JoinToken::parse(&token)
        .unwrap()
        .secret
        .expose()
        .to_owned();
    let mut outputs = String::new();
    for args in [
        vec!["modify", "b", "--master-candidate=yes"],
        vec!["modify", "b", "--master-candidate=no"],
        vec![
            "renew-crypto",
            "--new-node-certificates",
            "--new-cluster-certificate",
            "--new-ssh-keys",
        ],
        vec!["verify", "--json"],
        vec!["list", "--json"],
        vec!["token", "list", "--json"],
    ] {
        let out = nodectl(m.dir(), &args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        outputs.push_str(&text(&out.stdout));
        outputs.push_str(&text(&out.stderr));
    }
    // A refused join with the real token secret in a tampered token.
    let node = Node::fresh("x");
    let out = nodectl(
        node.dir(),
        &[
            "join",
            &token,
            "--node-name",
            "m",
            "--address",
            &node.address,
        ],
    );
    outputs.push_str(&text(&out.stderr));

    let mut secrets: Vec<String> = vec![secret];
    for n in [&m, &a, &b] {
        for key in [n.state.client_key(), n.state.server_key(), n.state.ca_key()] {
            if let Ok(pem) = std::fs::read_to_string(&key) {
                // The base64 body lines of the key.
                secrets.extend(
                    pem.lines()
                        .filter(|l| !l.starts_with("-----"))
                        .map(str::to_owned),
                );
            }
        }
    }
    let logs = [dm.log(), da.log(), db.log(), outputs].join("\n");
    assert!(!logs.contains("PRIVATE KEY"), "a private key in the logs");
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "a secret in the logs or output: {s:.12}..."
        );
    }
    for n in [&m, &a, &b] {
        let mut all = Vec::new();
        files(n.dir(), &mut all);
        for (path, mode) in all {
            let max = allowed(&path);
            assert_eq!(
                mode & !max,
                0,
                "{} has mode {mode:o}, wider than {max:o}",
                path.display()
            );
        }
    }
}
