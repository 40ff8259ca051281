//! The CA key in a PKCS#11 token (SoftHSM2): a whole cluster workflow that
//! signs only through the token, and each way the token can be wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use noded::pki;
use noded::state::StateDir;
use rustls_pki_types::UnixTime;

use crate::support::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Distinctive, so that a leak into a log or an output is found by grep.
const PIN: &str = "pin-Zq83xK";

/// A SoftHSM2 token of its own (config and token directory in a temp dir).
struct SoftHsm {
    tmp: tempfile::TempDir,
    conf: PathBuf,
}

impl SoftHsm {
    /// A fresh initialised token labelled `label`, or `None` (with the
    /// reason printed) where SoftHSM2 is not installed.
    fn new(label: &str) -> Option<SoftHsm> {
        if !Path::new(MODULE).exists() {
            eprintln!(
                "skipped: SoftHSM2 is not installed ({MODULE} missing; apt-get install softhsm2)"
            );
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let tokens = tmp.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = tmp.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let hsm = SoftHsm { tmp, conf };
        hsm.add_token(label);
        std::fs::write(hsm.pin_file(), format!("{PIN}\n")).unwrap();
        Some(hsm)
    }

    fn add_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", PIN, "--so-pin", "87654321"])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "softhsm2-util: {}", text(&out.stderr));
    }

    fn pin_file(&self) -> PathBuf {
        self.tmp.path().join("pin")
    }

    fn uri(&self, token: &str, object: &str) -> String {
        format!(
            "pkcs11:token={token};object={object}?module-path={MODULE}&pin-source=file:{}",
            self.pin_file().display()
        )
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("SOFTHSM2_CONF", self.conf.to_str().unwrap())]
    }

    fn nodectl(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(NODECTL)
            .arg("--state-dir")
            .arg(dir)
            .args(args)
            .env_remove("RUST_LOG")
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap()
    }

    fn run_ok(&self, node: &Node, args: &[&str]) -> String {
        let out = self.nodectl(node.dir(), args);
        assert!(
            out.status.success(),
            "nodectl {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// A new cluster whose CA key is `object` in `token`.
    fn init(&self, name: &str, token: &str, object: &str) -> Node {
        let node = Node::fresh(name);
        let uri = self.uri(token, object);
        self.run_ok(&node, &init_args(name, &node.address, &["--ca-key", &uri]));
        node
    }

    fn start(&self, node: &Node) -> Daemon {
        Daemon::start_env(node, &[], &self.env())
    }

    /// A joined node whose daemon reaches the token (it signs joins once
    /// it is the master).
    fn join(&self, master: &Node, name: &str, token_args: &[&str]) -> (Node, Daemon) {
        join_and_start_env(master, name, token_args, &self.env())
    }
}

/// One line, `error: ...`, naming `cause`.
fn fails_with(out: &Output, cause: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(cause), "expected {cause:?} in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// What a failed operation must not change: the config and the map.
fn snapshot(node: &Node) -> (String, String) {
    (
        std::fs::read_to_string(node.state.config_json()).unwrap(),
        std::fs::read_to_string(node.map_path()).unwrap(),
    )
}

fn set_ca_key(node: &Node, uri: &str) {
    let path = node.state.config_json();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["ca_key"] = uri.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

fn chains(node: &Node, ca_of: &StateDir) {
    let cert = pki::load_certs(&node.state.client_pem()).unwrap();
    let cas = pki::load_certs(&ca_of.ca_pem()).unwrap();
    pki::chains_to(&cert[0], &cas, UnixTime::now())
        .unwrap_or_else(|e| panic!("{}'s certificate does not chain: {e:?}", node.name));
}

fn verify_clean(hsm: &SoftHsm, node: &Node) {
    let out = hsm.nodectl(node.dir(), &["verify", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["findings"],
        serde_json::json!([]),
        "{}",
        text(&out.stderr)
    );
    assert!(out.status.success());
}

#[test]
fn a_cluster_signs_only_through_the_token() {
    let Some(hsm) = SoftHsm::new("noded") else {
        return;
    };
    let m = hsm.init("m", "noded", "ca");
    let config = std::fs::read_to_string(m.state.config_json()).unwrap();
    assert!(config.contains("\"ca_key\": \"pkcs11:token=noded;object=ca?"));
    assert!(!config.contains(PIN), "the PIN never reaches the config");
    let dm = hsm.start(&m);
    let (a, _da) = hsm.join(&m, "a", &["--master-candidate"]);
    let (b, _db) = hsm.join(&m, "b", &[]);
    let (c, _dc) = hsm.join(&m, "c", &[]);
    // Pool size 3: a and b are candidates, c is regular; promote c too.
    hsm.run_ok(&m, &["modify", "c", "--master-candidate=yes"]);
    for node in [&m, &a, &b, &c] {
        assert!(!node.state.ca_key().exists(), "{} holds ca.key", node.name);
        assert!(
            node.state.config_json().exists(),
            "{} lacks the config",
            node.name
        );
        chains(node, &m.state);
    }
    verify_clean(&hsm, &m);

    let before = m.map();
    hsm.run_ok(&m, &["renew-crypto", "--new-node-certificates"]);
    assert_ne!(m.map(), before, "every digest changed");
    let old_ca = std::fs::read_to_string(m.state.ca_pem()).unwrap();
    // A rotation rolled back from its reissue phase: the old key signs
    // again (relabelled back in the token), every node trusts the old CA
    // alone, and what the new key signed is reissued by the old one.
    hsm.run_ok(&m, &["renew-crypto", "--new-ca", "--stop-after", "reissue"]);
    hsm.run_ok(&m, &["renew-crypto", "--rollback-ca"]);
    for node in [&m, &a, &b, &c] {
        assert_eq!(
            std::fs::read_to_string(node.state.ca_pem()).unwrap(),
            old_ca,
            "{}",
            node.name
        );
        chains(node, &m.state);
    }
    verify_clean(&hsm, &m);
    hsm.run_ok(&m, &["renew-crypto", "--new-ca"]);
    let new_ca = std::fs::read_to_string(m.state.ca_pem()).unwrap();
    assert_ne!(old_ca, new_ca);
    assert_eq!(pki::load_certs(&m.state.ca_pem()).unwrap().len(), 1);
    for node in [&m, &a, &b, &c] {
        assert!(!node.state.ca_key().exists(), "{} holds ca.key", node.name);
        assert_eq!(
            std::fs::read_to_string(node.state.ca_pem()).unwrap(),
            new_ca
        );
        chains(node, &m.state);
    }
    verify_clean(&hsm, &m);
    // A verifier no one here wrote accepts what the token signed (the
    // r||s signature re-encoded as DER).
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(m.state.ca_pem())
        .arg(m.state.client_pem())
        .arg(m.state.server_pem())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // A candidate reaches the same token: after a failover it signs a join.
    hsm.run_ok(&a, &["master-failover"]);
    let (d, _dd) = hsm.join(&a, "d", &[]);
    chains(&d, &a.state);
    assert!(!d.state.ca_key().exists());
    // Errors none (the old master's tokens.json is a warning of failover).
    let out = hsm.nodectl(a.dir(), &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(!dm.log().contains(PIN), "the PIN never reaches a log");
}

#[test]
fn token_faults_are_one_line_errors_that_change_nothing() {
    let Some(hsm) = SoftHsm::new("noded") else {
        return;
    };
    // init: nothing is written when the token cannot be used.
    let wrong_pin = hsm.tmp.path().join("wrong-pin");
    std::fs::write(&wrong_pin, "0000\n").unwrap();
    let z = Node::fresh("z");
    let init = |uri: String| {
        hsm.nodectl(
            z.dir(),
            &[
                "init",
                "--cluster-name",
                "x",
                "--node-name",
                "z",
                "--address",
                &z.address,
                "--ca-key",
                &uri,
            ],
        )
    };
    let bad_pin_uri = hsm.uri("noded", "ca").replace(
        hsm.pin_file().to_str().unwrap(),
        wrong_pin.to_str().unwrap(),
    );
    fails_with(&init(bad_pin_uri.clone()), "wrong PIN");
    fails_with(
        &init(hsm.uri("absent", "ca")),
        "no PKCS#11 token labelled \"absent\"",
    );
    fails_with(
        &init(
            hsm.uri("noded", "ca")
                .replace(MODULE, "/nonexistent/lib.so"),
        ),
        "cannot load the PKCS#11 module /nonexistent/lib.so",
    );
    let out = init(format!(
        "pkcs11:token=noded;object=ca?module-path={MODULE}&pin-value={PIN}"
    ));
    fails_with(&out, "pin-value");
    assert!(
        !text(&out.stderr).contains(PIN),
        "the refusal does not echo the PIN"
    );
    assert!(!z.dir().join("node.json").exists() && !z.dir().join("ca.pem").exists());

    // A working cluster, then the token goes wrong under it.
    let m = hsm.init("m", "noded", "ca");
    let dm = hsm.start(&m);
    let (a, _da) = hsm.join(&m, "a", &[]);
    let good = hsm.uri("noded", "ca");
    // Another key in the same token, for another CA.
    hsm.init("other", "noded", "other");
    let cases = [
        (bad_pin_uri, "wrong PIN"),
        (
            hsm.uri("absent", "ca"),
            "no PKCS#11 token labelled \"absent\"",
        ),
        (hsm.uri("noded", "missing"), "no key labelled \"missing\""),
        (
            hsm.uri("noded", "other"),
            "the key \"other\" in PKCS#11 token \"noded\" does not match the CA certificate",
        ),
    ];
    for (uri, cause) in cases {
        set_ca_key(&m, &uri);
        let before = snapshot(&m);
        let a_before = std::fs::read_to_string(a.state.client_pem()).unwrap();
        let out = hsm.nodectl(m.dir(), &["renew-crypto", "--new-node-certificates"]);
        fails_with(&out, cause);
        assert!(!text(&out.stderr).contains(PIN) && !text(&out.stderr).contains("0000"));
        fails_with(
            &hsm.nodectl(m.dir(), &["modify", "a", "--master-candidate=yes"]),
            cause,
        );
        let token = create_token(&m, &[]);
        let joiner = Node::fresh("j");
        let join = |token: &str| {
            hsm.nodectl(
                joiner.dir(),
                &[
                    "join",
                    token,
                    "--node-name",
                    "j",
                    "--address",
                    &joiner.address,
                ],
            )
        };
        let out = join(&token);
        assert_eq!(
            out.status.code(),
            Some(1),
            "join must fail: {}",
            text(&out.stderr)
        );
        // The joiner learns that the master failed, nothing of its token,
        // module or PIN file; the master's log says why.
        let told = text(&out.stderr);
        assert!(
            told.contains("the master could not admit this node"),
            "{told}"
        );
        for secret in [cause, MODULE, hsm.tmp.path().to_str().unwrap()] {
            assert!(!told.contains(secret), "{told}");
        }
        assert!(dm.log().contains(cause), "{}", dm.log());
        let out = hsm.nodectl(m.dir(), &["verify", "--json"]);
        assert_eq!(out.status.code(), Some(1));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let codes: Vec<&str> = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["CA_KEY_UNUSABLE"], "{doc}");
        assert!(doc["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains(cause));
        // The join token was not spent, nothing else moved.
        assert_eq!(snapshot(&m).1, before.1, "map unchanged ({cause})");
        let config: serde_json::Value = serde_json::from_str(&snapshot(&m).0).unwrap();
        let was: serde_json::Value = serde_json::from_str(&before.0).unwrap();
        assert_eq!(
            config["serial"], was["serial"],
            "serial unchanged ({cause})"
        );
        assert_eq!(config["nodes"], was["nodes"], "nodes unchanged ({cause})");
        assert_eq!(
            std::fs::read_to_string(a.state.client_pem()).unwrap(),
            a_before
        );
        set_ca_key(&m, &good);
        // The token that failed to sign is still good once the key is.
        let out = join(&token);
        assert!(out.status.success(), "{}", text(&out.stderr));
        // j's daemon never ran: the remove completes with j named (exit 3).
        let out = hsm.nodectl(m.dir(), &["remove", "j"]);
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "{}",
            text(&out.stderr)
        );
    }
    verify_clean(&hsm, &m);
    // A stray ca.key on a node of a token cluster is reported.
    std::fs::write(a.state.ca_key(), "stray").unwrap();
    let out = hsm.nodectl(m.dir(), &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("CA_KEY_FILE_WITH_TOKEN"));
}
