//! `nodectl verify`: each check, by breaking a healthy cluster in exactly
//! that way, seeing exactly that finding, and running the fix it names.

use std::collections::BTreeSet;

use noded::pki::CertificateSigner;
use ssconf::{CandidateMap, DigestAlgorithm};

use crate::support::*;

/// m (master), a (candidate), b and c (regular), all running.
struct Cluster {
    m: Node,
    a: Node,
    b: Node,
    c: Node,
    daemons: Vec<(String, Daemon)>,
}

fn cluster() -> Cluster {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let dm = Daemon::start(&m, &[]);
    let (a, da) = join_and_start(&m, "a", &[]);
    let (b, db) = join_and_start(&m, "b", &[]);
    let (c, dc) = join_and_start(&m, "c", &[]);
    // The joins' round (the regular nodes get a join from the loop, after
    // it returned) is over before a test changes a node by hand: verify
    // waits for it.
    verify_clean(&m);
    Cluster {
        m,
        a,
        b,
        c,
        daemons: vec![
            ("m".into(), dm),
            ("a".into(), da),
            ("b".into(), db),
            ("c".into(), dc),
        ],
    }
}

/// `(severity, node, code)` of every finding, and the exit code.
fn verify(
    m: &Node,
) -> (
    Option<i32>,
    BTreeSet<(String, String, String)>,
    serde_json::Value,
) {
    let out = nodectl(m.dir(), &["verify", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify --json: {e}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    let set = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            for field in ["severity", "node", "code", "message", "fix"] {
                assert!(f[field].is_string(), "{field} missing in {f}");
            }
            (
                f["severity"].as_str().unwrap().to_owned(),
                f["node"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (out.status.code(), set, doc)
}

fn expect(m: &Node, findings: &[(&str, &str, &str)]) -> serde_json::Value {
    let (code, got, doc) = verify(m);
    let want: BTreeSet<(String, String, String)> = findings
        .iter()
        .map(|(s, n, c)| (s.to_string(), n.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want, "{doc:#}");
    let errors = findings.iter().any(|(s, _, _)| *s == "ERROR");
    assert_eq!(code, Some(if errors { 1 } else { 0 }), "{doc:#}");
    doc
}

/// Runs the fix a finding names (the part before any parenthesis).
fn run_fix(m: &Node, doc: &serde_json::Value, node: &str) {
    let fix = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["node"] == node)
        .unwrap()["fix"]
        .as_str()
        .unwrap()
        .to_owned();
    let command = fix.split(" (").next().unwrap();
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[0], "nodectl", "{fix}");
    let out = nodectl(m.dir(), &words[1..]);
    assert_eq!(out.status.code(), Some(0), "{fix}: {}", text(&out.stderr));
}

fn replace_client_cert(node: &Node, id: &Identity) {
    ssconf::write_atomic(&node.state.client_pem(), id.cert_pem.as_bytes(), 0o644).unwrap();
    ssconf::write_atomic(&node.state.client_key(), id.key_pem.as_bytes(), 0o600).unwrap();
}

fn uuid(m: &Node, name: &str) -> String {
    listed(m, name)["uuid"].as_str().unwrap().to_owned()
}

#[test]
fn a_healthy_cluster_has_no_findings() {
    let k = cluster();
    expect(&k.m, &[]);
    let out = nodectl(k.m.dir(), &["verify"]);
    assert!(text(&out.stdout).contains("no findings"));
    // Regular nodes cannot verify.
    let out = nodectl(k.c.dir(), &["verify"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn map_entries_must_match_the_candidates() {
    let k = cluster();
    // An entry for regular node c.
    let mut entries = k.m.map().entries().to_vec();
    entries.push((
        uuid(&k.m, "c"),
        DigestAlgorithm::Sha256.digest(b"not a certificate"),
    ));
    k.m.write_map(&CandidateMap::from_entries(entries));
    let doc = expect(
        &k.m,
        &[
            ("ERROR", "c", "MAP_ENTRY_NOT_CANDIDATE"),
            ("ERROR", "m", "SSCONF_DIFFERS"),
        ],
    );
    run_fix(&k.m, &doc, "c");
    expect(&k.m, &[]);
    // Candidate a without an entry.
    let a = uuid(&k.m, "a");
    let entries: Vec<_> =
        k.m.map()
            .entries()
            .iter()
            .filter(|(u, _)| *u != a)
            .cloned()
            .collect();
    k.m.write_map(&CandidateMap::from_entries(entries));
    let doc = expect(
        &k.m,
        &[
            ("ERROR", "a", "CANDIDATE_WITHOUT_ENTRY"),
            ("ERROR", "m", "SSCONF_DIFFERS"),
        ],
    );
    run_fix(&k.m, &doc, "a");
    expect(&k.m, &[]);
}

#[test]
fn client_certificates_are_checked() {
    let k = cluster();
    // Candidate a's certificate is not the one in the map.
    replace_client_cert(&k.a, &ca_signed(&k.m, "a"));
    let doc = expect(&k.m, &[("ERROR", "a", "CANDIDATE_DIGEST_MISMATCH")]);
    run_fix(&k.m, &doc, "a");
    expect(&k.m, &[]);
    // Two regular nodes share one certificate.
    replace_client_cert(&k.c, &node_identity(&k.b));
    let doc = expect(
        &k.m,
        &[
            ("ERROR", "b", "SHARED_CERTIFICATE"),
            ("ERROR", "c", "SHARED_CERTIFICATE"),
        ],
    );
    run_fix(&k.m, &doc, "c");
    expect(&k.m, &[]);
    // A regular node uses a candidate's certificate.
    replace_client_cert(&k.c, &node_identity(&k.a));
    let doc = expect(
        &k.m,
        &[
            ("ERROR", "c", "REGULAR_USES_CANDIDATE_CERT"),
            ("ERROR", "a", "SHARED_CERTIFICATE"),
            ("ERROR", "c", "SHARED_CERTIFICATE"),
        ],
    );
    run_fix(&k.m, &doc, "c");
    expect(&k.m, &[]);
    // Not signed by the cluster CA.
    replace_client_cert(&k.c, &foreign("c"));
    let doc = expect(&k.m, &[("ERROR", "c", "CERT_NOT_FROM_CA")]);
    run_fix(&k.m, &doc, "c");
    expect(&k.m, &[]);
}

#[test]
fn expiring_certificates_warn_then_fail() {
    use time::Duration;
    let k = cluster();
    let ca = k.m.ca();
    replace_client_cert(
        &k.c,
        &signed_by(&ca, "c", Duration::hours(-1), Duration::days(20)),
    );
    expect(&k.m, &[("WARNING", "c", "CERT_EXPIRES")]);
    replace_client_cert(
        &k.c,
        &signed_by(&ca, "c", Duration::hours(-1), Duration::days(5)),
    );
    expect(&k.m, &[("ERROR", "c", "CERT_EXPIRES")]);
    replace_client_cert(
        &k.c,
        &signed_by(&ca, "c", Duration::days(-10), Duration::days(-1)),
    );
    let doc = expect(&k.m, &[("ERROR", "c", "CERT_EXPIRED")]);
    run_fix(&k.m, &doc, "c");
    expect(&k.m, &[]);
}

#[test]
fn files_must_be_the_same_everywhere() {
    let k = cluster();
    // ssconf differs on one node.
    ssconf::write_atomic(
        &k.c.state.ssconf_dir().join("ssconf_online_nodes"),
        b"c\n",
        0o644,
    )
    .unwrap();
    let doc = expect(&k.m, &[("ERROR", "c", "SSCONF_DIFFERS")]);
    run_fix(&k.m, &doc, "c");
    expect(&k.m, &[]);
    // server.pem on one node is not the certificate recorded for it.
    let other = {
        use noded::pki::NodeKey;
        let key = NodeKey::generate().unwrap();
        let uuid = k.c.state.load_identity().unwrap().uuid;
        k.m.ca()
            .sign_server_csr(&key.csr("c").unwrap(), "c", &uuid, 365)
            .unwrap()
    };
    let good = std::fs::read(k.c.state.server_pem()).unwrap();
    ssconf::write_atomic(&k.c.state.server_pem(), other.as_bytes(), 0o644).unwrap();
    expect(&k.m, &[("ERROR", "c", "SERVER_CERT_DIFFERS")]);
    ssconf::write_atomic(&k.c.state.server_pem(), &good, 0o644).unwrap();
    expect(&k.m, &[]);
}

#[test]
fn role_files_follow_the_role() {
    let k = cluster();
    for (file, from) in [
        (k.c.state.ca_key(), k.m.state.ca_key()),
        (k.c.state.config_json(), k.m.state.config_json()),
    ] {
        std::fs::copy(from, &file).unwrap();
        let doc = expect(&k.m, &[("ERROR", "c", "ROLE_FILE_FORBIDDEN")]);
        run_fix(&k.m, &doc, "c");
        assert!(!file.exists());
        expect(&k.m, &[]);
    }
    std::fs::create_dir_all(k.c.state.ssh_dir()).unwrap();
    std::fs::copy(k.a.state.ssh_private_key(), k.c.state.ssh_private_key()).unwrap();
    expect(&k.m, &[("ERROR", "c", "ROLE_FILE_FORBIDDEN")]);
    std::fs::remove_file(k.c.state.ssh_private_key()).unwrap();
    // A candidate without its SSH private key.
    std::fs::remove_file(k.a.state.ssh_private_key()).unwrap();
    let doc = expect(&k.m, &[("ERROR", "a", "ROLE_FILE_MISSING")]);
    run_fix(&k.m, &doc, "a");
    expect(&k.m, &[]);
}

#[test]
fn authorized_keys_and_reachability() {
    let mut k = cluster();
    noded::state::ssh::write_authorized_keys(&k.b.state.authorized_keys(), &[]).unwrap();
    let doc = expect(&k.m, &[("ERROR", "b", "AUTHORIZED_KEYS_DIFFER")]);
    run_fix(&k.m, &doc, "b");
    expect(&k.m, &[]);
    // An unreachable node.
    k.daemons.retain(|(name, _)| name != "c");
    let doc = expect(&k.m, &[("ERROR", "c", "UNREACHABLE")]);
    let fix = doc["findings"][0]["fix"].as_str().unwrap();
    assert!(fix.contains("nodectl modify c --offline=yes"), "{fix}");
    let out = nodectl(k.m.dir(), &["modify", "c", "--offline=yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    expect(&k.m, &[]);
}

/// A temporary file as a writer killed mid-write leaves it, an hour old.
fn leftover(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    file.set_modified(hour_ago).unwrap();
    path
}

#[test]
fn temp_files_of_interrupted_writes_are_reported_and_cleaned() {
    let m = init_master("m");
    let _dm = Daemon::start(&m, &[]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let on_b = leftover(&b.state.ssconf_dir(), ".ssconf_serial.tmp-0123456789abcdef");
    let on_m = leftover(m.dir(), ".config.json.tmp-fedcba9876543210");
    // A younger one may be a write under way: not reported, not removed.
    let young = b
        .state
        .ssconf_dir()
        .join(".ssconf_serial.tmp-0000000000000001");
    std::fs::write(&young, b"").unwrap();
    let (code, got, doc) = verify(&m);
    let want: BTreeSet<(String, String, String)> = [("WARNING", "b"), ("WARNING", "m")]
        .iter()
        .map(|(s, n)| (s.to_string(), n.to_string(), "STALE_TEMP_FILE".to_string()))
        .collect();
    assert_eq!(got, want, "{doc:#}");
    assert_eq!(code, Some(0), "warnings only: {doc:#}");
    for (node, path) in [
        ("b", "ssconf/.ssconf_serial.tmp-0123456789abcdef"),
        ("m", ".config.json.tmp-fedcba9876543210"),
    ] {
        let finding = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["node"] == node)
            .unwrap();
        let message = finding["message"].as_str().unwrap();
        let fix = finding["fix"].as_str().unwrap();
        assert!(message.contains(path), "{message}");
        assert!(fix.ends_with(&format!("rm -- '{path}'")), "{fix}");
    }
    // The next write of each file removes its leftover: a join writes the
    // master's config.json and pushes a new ssconf_serial to b.
    let (_c, _dc) = join_and_start(&m, "c", &[]);
    assert!(!on_b.exists() && !on_m.exists());
    assert!(young.exists());
    std::fs::remove_file(&young).unwrap();
    expect(&m, &[]);
    // The fix it names, run in the node's state directory, clears it too.
    leftover(m.dir(), ".tokens.json.tmp-00000000000000aa");
    let doc = expect(&m, &[("WARNING", "m", "STALE_TEMP_FILE")]);
    let fix = doc["findings"][0]["fix"].as_str().unwrap();
    let command = fix.rsplit_once("): ").unwrap().1;
    let out = std::process::Command::new("sh")
        .args(["-c", command])
        .current_dir(m.dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{command}: {}", text(&out.stderr));
    expect(&m, &[]);
}
