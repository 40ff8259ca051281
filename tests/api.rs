//! The remote API (SPEC §11): users and their certificates, the audit
//! trail, and the HTTPS API itself, with curl as the client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use ssconf::DigestAlgorithm;

use crate::support::*;

/// `nodectl user add NAME --role ROLE --out DIR` on `master`: (cert, key).
pub fn add_user(master: &Node, dir: &Path, name: &str, role: &str) -> (PathBuf, PathBuf) {
    let out = nodectl(
        master.dir(),
        &[
            "user",
            "add",
            name,
            "--role",
            role,
            "--out",
            dir.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "user add {name}: {}",
        text(&out.stderr)
    );
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn user_identity(cert: &Path, key: &Path) -> Identity {
    Identity::from_files(cert, key)
}

#[test]
fn users_are_added_listed_and_revoked_in_the_config() {
    use std::os::unix::fs::PermissionsExt;
    let m = init_master("m");
    let ids = tempfile::tempdir().unwrap();
    let (cert, key) = add_user(&m, ids.path(), "ann", "operator");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let subject = noded::pki::subject_of(&noded::pki::load_certs(&cert).unwrap()[0]);
    assert_eq!(subject, "CN=user:ann");

    // With the user's own key: a CSR in, the certificate out.
    let key = noded::pki::NodeKey::generate().unwrap();
    let csr = ids.path().join("bob.csr");
    std::fs::write(&csr, key.client_csr("bob").unwrap()).unwrap();
    let out = nodectl(
        m.dir(),
        &[
            "user",
            "add",
            "bob",
            "--role",
            "readonly",
            "--csr",
            csr.to_str().unwrap(),
            "--ttl",
            "7d",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("-----BEGIN CERTIFICATE-----"));

    let listed = json_of(&nodectl(m.dir(), &["user", "list", "--json"]));
    let users = listed["users"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0]["name"], "ann");
    assert_eq!(users[0]["role"], "operator");
    assert_eq!(users[0]["revoked"], false);
    let digest = noded::pki::file_digest(&cert, DigestAlgorithm::Sha256).unwrap();
    assert_eq!(users[0]["digest"], digest.to_string());
    assert!(users[1]["expires"].as_str().unwrap().ends_with('Z'));

    // Refusals: a duplicate, a year and a day, a bad role, no key source.
    for (args, needle) in [
        (
            &["user", "add", "ann", "--role", "admin", "--out", "x"][..],
            "exists",
        ),
        (
            &[
                "user", "add", "cy", "--role", "admin", "--out", "x", "--ttl", "366d",
            ][..],
            "one year",
        ),
        (
            &["user", "add", "cy", "--role", "root", "--out", "x"][..],
            "root",
        ),
        (&["user", "add", "cy", "--role", "admin"][..], "--csr"),
    ] {
        let out = nodectl(m.dir(), args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }

    let out = nodectl(m.dir(), &["user", "revoke", "ann"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = json_of(&nodectl(m.dir(), &["user", "list", "--json"]));
    assert_eq!(listed["users"][0]["revoked"], true);
    let out = nodectl(m.dir(), &["user", "revoke", "nobody"]);
    assert!(
        text(&out.stderr).contains("no user"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_certificate_is_never_admitted_on_the_rpc_port() {
    let m = init_master("m");
    let _d = Daemon::start(&m, &[]);
    let ids = tempfile::tempdir().unwrap();
    let (cert, key) = add_user(&m, ids.path(), "root", "admin");
    let user = user_identity(&cert, &key);
    let digest = user.digest(DigestAlgorithm::Sha256);
    assert!(
        !m.map().render().contains(&digest.to_string()),
        "a user's digest is in the candidate map"
    );
    let node = node_identity(&m);
    assert!(eventually(&client(&m, Some(&node)), &m, true).await);
    assert!(ping(&client(&m, Some(&user)), &m).await.is_err());
}

#[test]
fn changes_leave_an_audit_trail_that_reaches_the_candidates() {
    let m = init_master("m");
    let _d = Daemon::start(&m, &[]);
    let (c, _cd) = join_and_start(&m, "c", &["--master-candidate"]);
    let ids = tempfile::tempdir().unwrap();
    add_user(&m, ids.path(), "ann", "admin");
    let token = json_of(&nodectl(m.dir(), &["token", "create", "--json"]));
    let out = nodectl(m.dir(), &["token", "revoke", token["id"].as_str().unwrap()]);
    assert!(out.status.success());
    let out = nodectl(m.dir(), &["modify", "nope", "--offline", "yes"]);
    assert!(!out.status.success());
    let out = nodectl(m.dir(), &["user", "revoke", "ann"]);
    assert!(out.status.success());

    // The first entry: the token `join_and_start` made for c.
    let want = [
        ("nodectl@m", "token-create", "*"),
        ("join:c", "join", "c"),
        ("nodectl@m", "user-add", "ann"),
        ("nodectl@m", "token-create", token["id"].as_str().unwrap()),
        ("nodectl@m", "token-revoke", token["id"].as_str().unwrap()),
        ("nodectl@m", "offline", "nope"),
        ("nodectl@m", "user-revoke", "ann"),
    ];
    // Read on the candidate: the trail travels with the config.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let trail = json_of(&nodectl(c.dir(), &["audit", "--json"]));
        let entries = trail["entries"].as_array().unwrap().clone();
        if entries.len() >= want.len() || std::time::Instant::now() > deadline {
            break entries;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let got: Vec<(&str, &str, &str)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                if i == 0 {
                    "*"
                } else {
                    e["target"].as_str().unwrap()
                },
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(entries[5]["result"]
        .as_str()
        .unwrap()
        .starts_with("error: "));
    assert!(entries[0]["time"].as_str().unwrap().ends_with('Z'));
    let later = json_of(&nodectl(
        c.dir(),
        &["audit", "--json", "--since", "2999-01-01T00:00:00Z"],
    ));
    assert_eq!(later["entries"].as_array().unwrap().len(), 0);
    let out = nodectl(c.dir(), &["audit", "--since", "yesterday"]);
    assert!(!out.status.success());
}
