//! A cluster's life on loopback: real daemons, one state dir and port each.

use std::time::Duration;

use noded::wire::Procedure;
use ssconf::Ssconf;

use crate::support::*;

fn ping_all(from: &Node) -> (Option<i32>, serde_json::Value) {
    let out = nodectl(from.dir(), &["ping", "--json"]);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
    )
}

fn all_ok(doc: &serde_json::Value) -> bool {
    doc["results"]
        .as_array()
        .is_some_and(|r| !r.is_empty() && r.iter().all(|x| x["ok"] == true))
}

fn all_refused(doc: &serde_json::Value) -> bool {
    doc["results"].as_array().is_some_and(|r| {
        !r.is_empty()
            && r.iter().all(|x| {
                x["ok"] == false
                    && x["error"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("not authorized")
            })
    })
}

fn holds_candidate_files(node: &Node) -> bool {
    node.state.ca_key().exists()
        && node.state.config_json().exists()
        && node.state.ssh_private_key().exists()
}

fn holds_no_candidate_files(node: &Node) -> bool {
    !node.state.ca_key().exists()
        && !node.state.config_json().exists()
        && !node.state.ssh_private_key().exists()
}

fn public_key(node: &Node) -> String {
    std::fs::read_to_string(node.state.ssh_public_key())
        .unwrap()
        .trim()
        .to_owned()
}

fn authorized(node: &Node) -> String {
    std::fs::read_to_string(node.state.authorized_keys()).unwrap_or_default()
}

fn run_ok(node: &Node, args: &[&str]) -> String {
    let out = nodectl(node.dir(), args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The serial of the ssconf set `node` holds.
fn serial(node: &Node) -> u64 {
    Ssconf::stored_serial(&node.state.ssconf_dir())
        .unwrap()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn grow_promote_demote_offline_failover_remove() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let _dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let (c, _dc) = join_and_start(&m, "c", &[]);
    let all = [&m, &a, &b, &c];
    // A join returns once the candidates hold it; the loop's round it
    // woke brings the regular nodes.
    for n in all {
        assert!(
            within(Duration::from_secs(10), || serial(n) == serial(&m)),
            "{} lags",
            n.name
        );
    }
    // Only the master commands nodes.
    let (code, doc) = ping_all(&m);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["results"].as_array().unwrap().len(), 4);
    for n in [&a, &b, &c] {
        let (code, doc) = ping_all(n);
        assert_eq!(code, Some(1));
        assert!(all_refused(&doc), "{} not refused: {doc}", n.name);
        assert!(
            holds_no_candidate_files(n),
            "{} holds candidate files",
            n.name
        );
    }

    // Promote b: it commands every node and holds the candidate's files.
    run_ok(&m, &["modify", "b", "--master-candidate=yes"]);
    assert!(holds_candidate_files(&b));
    let (code, doc) = ping_all(&b);
    assert_eq!(code, Some(0), "{doc}");
    assert!(all_ok(&doc));
    let b_key = public_key(&b);
    for n in all {
        assert!(authorized(n).contains(&b_key), "{} lacks b's key", n.name);
        assert_eq!(serial(n), serial(&m));
    }
    let list: serde_json::Value = serde_json::from_str(&run_ok(&m, &["list", "--json"])).unwrap();
    let role_of = |list: &serde_json::Value, name: &str| {
        list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()["role"]
            .clone()
    };
    assert_eq!(role_of(&list, "b"), "candidate");

    // b holds a connection open to c, then is demoted: the connection is
    // closed, new ones are refused, and its secrets and key are gone.
    let b_client = noded::rpc::RpcClient::from_state(&b.state).unwrap();
    let mut open = b_client.connect("c", &c.address).await.unwrap();
    open.call(Procedure::Ping).await.unwrap();
    run_ok(&m, &["modify", "b", "--master-candidate=no"]);
    let closed = tokio::time::timeout(Duration::from_secs(5), open.read_response()).await;
    assert!(
        matches!(closed, Ok(Ok(None)) | Ok(Err(_))),
        "open connection survived: {closed:?}"
    );
    let (code, doc) = ping_all(&b);
    assert_eq!(code, Some(1));
    assert!(all_refused(&doc), "demoted b not refused: {doc}");
    assert!(holds_no_candidate_files(&b));
    for n in all {
        assert!(
            !authorized(n).contains(&b_key),
            "{} still trusts b's key",
            n.name
        );
    }

    // Offline and back: c leaves ssconf's online list, then catches up.
    run_ok(&m, &["modify", "c", "--offline=yes"]);
    let ssconf = Ssconf::load(&m.state.ssconf_dir()).unwrap();
    assert_eq!(ssconf.offline_nodes, ["c"]);
    assert!(serial(&c) < serial(&m), "an offline node is not pushed to");
    run_ok(&m, &["modify", "c", "--offline=no"]);
    assert_eq!(serial(&c), serial(&m));

    // Failover to a, then a role change from the new master.
    run_ok(&m, &["modify", "a", "--master-candidate=yes"]);
    run_ok(&a, &["master-failover"]);
    let out = nodectl(m.dir(), &["modify", "c", "--master-candidate=yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("this node is not the master (master is a); run this on a"),
        "{}",
        text(&out.stderr)
    );
    run_ok(&a, &["modify", "c", "--master-candidate=yes"]);
    let list: serde_json::Value = serde_json::from_str(&run_ok(&a, &["list", "--json"])).unwrap();
    assert_eq!(role_of(&list, "a"), "master");
    assert_eq!(role_of(&list, "m"), "candidate");
    assert_eq!(role_of(&list, "c"), "candidate");
    assert!(all_ok(&ping_all(&c).1));
    assert!(all_ok(&ping_all(&m).1));

    // Remove b: both its digests leave every node's ssconf, so no node
    // admits it as a client or accepts it as a server again.
    let b_uuid = b.state.load_identity().unwrap().uuid;
    let b_client =
        noded::pki::file_digest(&b.state.client_pem(), ssconf::DigestAlgorithm::Sha256).unwrap();
    run_ok(&a, &["remove", "b"]);
    let ssconf = Ssconf::load(&c.state.ssconf_dir()).unwrap();
    assert!(!ssconf.node_list.contains(&"b".to_owned()));
    assert!(!ssconf.master_candidates_certs.contains(&b_client));
    assert!(ssconf
        .node_server_certs
        .entries()
        .iter()
        .all(|(u, _)| *u != b_uuid));
    let out = nodectl(a.dir(), &["ping", "b"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(ssconf.master_node, "a");
    let list: serde_json::Value = serde_json::from_str(&run_ok(&a, &["list", "--json"])).unwrap();
    assert_eq!(list["nodes"].as_array().unwrap().len(), 3);
}

/// Fingerprint of the cluster state a refused join must leave untouched.
fn snapshot(m: &Node) -> (u64, String) {
    (serial(m), m.map().render())
}

#[test]
fn refused_joins_leave_the_cluster_unchanged() {
    use base64::Engine;
    let m = init_master("m");
    let _dm = Daemon::start(&m, &[]);
    let try_join = |token: &str, name: &str| {
        let node = Node::fresh(name);
        let out = nodectl(
            node.dir(),
            &[
                "join",
                token,
                "--node-name",
                name,
                "--address",
                &node.address,
            ],
        );
        assert!(
            !node.state.is_initialised(),
            "a refused join left state behind"
        );
        (out.status.code(), text(&out.stderr))
    };
    let before = snapshot(&m);

    // Garbage.
    let (code, err) = try_join("noded-join:bm90IGpzb24", "x1");
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("error: not a valid join connection string"),
        "{err}"
    );

    // Revoked.
    let token = create_token(&m, &[]);
    let id = noded::state::token::JoinToken::parse(&token).unwrap().id;
    run_ok(&m, &["token", "revoke", &id]);
    let (code, err) = try_join(&token, "x2");
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown, already used, or revoked"), "{err}");

    // Expired.
    let token = create_token(&m, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let (code, err) = try_join(&token, "x3");
    assert_eq!(code, Some(1));
    assert!(err.contains("expired"), "{err}");

    // Tampered CA pin: refused before anything is sent.
    let token = create_token(&m, &[]);
    let body = token.strip_prefix("noded-join:").unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .unwrap(),
    )
    .unwrap();
    json["ca_sha256"] = serde_json::Value::String("00".repeat(32));
    let tampered = format!(
        "noded-join:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json).unwrap())
    );
    let (code, err) = try_join(&tampered, "x4");
    assert_eq!(code, Some(1));
    assert!(err.contains("does not match the CA pin"), "{err}");
    // The secret never reached the master: the untampered token still works.
    assert_eq!(snapshot(&m), before);
    let ok = Node::fresh("x5");
    run_ok(
        &ok,
        &[
            "join",
            &token,
            "--node-name",
            "x5",
            "--address",
            &ok.address,
        ],
    );
    let after_good = snapshot(&m);
    assert_ne!(after_good, before);

    // Reused: the holder of the secret learns which node it admitted.
    let (code, err) = try_join(&token, "x6");
    assert_eq!(code, Some(1));
    assert!(err.contains("already admitted node \"x5\""), "{err}");

    // Duplicate name, duplicate address: refused, token not burned.
    let token = create_token(&m, &[]);
    let (code, err) = try_join(&token, "x5");
    assert_eq!(code, Some(1));
    assert!(err.contains("already in the cluster"), "{err}");
    let dup = Node::fresh("x7");
    let out = nodectl(
        dup.dir(),
        &["join", &token, "--node-name", "x7", "--address", &m.address],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already used by node m"));
    assert_eq!(snapshot(&m), after_good);
    // Master unreachable.
    let lone = init_master("lone");
    let dead = create_token(&lone, &[]);
    let (code, err) = try_join(&dead, "x8");
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot connect"), "{err}");
    assert_eq!(snapshot(&m), after_good);
    let tokens: serde_json::Value =
        serde_json::from_str(&run_ok(&m, &["token", "list", "--json"])).unwrap();
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 1, "{tokens}");
    assert!(!std::fs::read_to_string(m.state.tokens_json())
        .unwrap()
        .contains(
            noded::state::token::JoinToken::parse(&token)
                .unwrap()
                .secret
                .expose()
        ));
}

#[test]
fn pool_size_rule_and_auto_promote() {
    // Default pool size 3: the first two joins become candidates.
    let m = init_master("m");
    let _dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let (c, _dc) = join_and_start(&m, "c", &[]);
    assert!(holds_candidate_files(&a) && holds_candidate_files(&b));
    assert!(holds_no_candidate_files(&c));
    let out = nodectl(m.dir(), &["modify", "a", "--master-candidate=no"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--auto-promote"),
        "{}",
        text(&out.stderr)
    );
    assert!(holds_candidate_files(&a));
    run_ok(
        &m,
        &["modify", "a", "--master-candidate=no", "--auto-promote"],
    );
    assert!(holds_no_candidate_files(&a));
    assert!(holds_candidate_files(&c), "c was not promoted in a's place");
    let out = nodectl(m.dir(), &["modify", "m", "--master-candidate=no"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot be demoted"));
    // A second mutating command while the lock is held fails fast.
    let lock = noded::cluster::ClusterLock::acquire(&m.state, false, "test holder").unwrap();
    let out = nodectl(m.dir(), &["token", "create"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("test holder"),
        "{}",
        text(&out.stderr)
    );
    drop(lock);
}

/// A push that cannot reach a node names it and exits 3.
#[test]
fn unreachable_nodes_are_named_with_exit_3() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let _dm = Daemon::start(&m, &[]);
    let (_a, da) = join_and_start(&m, "a", &[]);
    let (_b, _db) = join_and_start(&m, "b", &[]);
    drop(da);
    let out = nodectl(m.dir(), &["modify", "b", "--master-candidate=yes"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("a not updated"),
        "{}",
        text(&out.stderr)
    );
}

/// The SSH directory and authorized_keys file can live outside the state
/// directory (a production node points them at /root/.ssh); lines the
/// operator keeps outside the managed block survive.
#[test]
fn ssh_paths_are_configurable() {
    let tmp = tempfile::tempdir().unwrap();
    let m_ssh = tmp.path().join("m-ssh");
    let m_keys = tmp.path().join("m-authorized_keys");
    std::fs::write(&m_keys, "# operator line\n").unwrap();
    let m = init_master_with(
        "m",
        &[
            "--ssh-dir",
            m_ssh.to_str().unwrap(),
            "--authorized-keys",
            m_keys.to_str().unwrap(),
        ],
    );
    let _dm = Daemon::start(&m, &[]);
    assert!(m_ssh.join("id_ed25519").exists());
    assert!(!m.dir().join("ssh").join("id_ed25519").exists());
    let m_pub = std::fs::read_to_string(m_ssh.join("id_ed25519.pub")).unwrap();
    let keys = std::fs::read_to_string(&m_keys).unwrap();
    assert!(
        keys.starts_with("# operator line\n") && keys.contains(m_pub.trim()),
        "{keys}"
    );

    let a_ssh = tmp.path().join("a-ssh");
    let a = Node::fresh("a");
    let token = create_token(&m, &["--master-candidate"]);
    run_ok(
        &a,
        &[
            "join",
            &token,
            "--node-name",
            "a",
            "--address",
            &a.address,
            "--ssh-dir",
            a_ssh.to_str().unwrap(),
        ],
    );
    let a_pub = std::fs::read_to_string(a_ssh.join("id_ed25519.pub")).unwrap();
    let keys = std::fs::read_to_string(&m_keys).unwrap();
    assert!(
        keys.starts_with("# operator line\n") && keys.contains(a_pub.trim()),
        "{keys}"
    );
    assert!(std::fs::read_to_string(a_ssh.join("authorized_keys"))
        .unwrap()
        .contains(m_pub.trim()));
}

/// A node whose certificate changed while it was offline gets a new one,
/// for a key it makes, when it comes back; as a candidate it then commands
/// the cluster again.
#[test]
fn online_reissues_a_certificate_that_changed() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &[]);
    let (a, da) = join_and_start(&m, "a", &[]);
    assert!(holds_candidate_files(&a));
    run_ok(&m, &["modify", "a", "--offline=yes", "--wait"]);
    // While offline, a's certificate is replaced by one the master never
    // recorded (signed by the same CA).
    let foreign_cert = ca_signed(&m, "a");
    drop(da);
    ssconf::write_atomic(
        &a.state.client_pem(),
        foreign_cert.cert_pem.as_bytes(),
        0o644,
    )
    .unwrap();
    ssconf::write_atomic(
        &a.state.client_key(),
        foreign_cert.key_pem.as_bytes(),
        0o600,
    )
    .unwrap();
    let replaced =
        noded::pki::file_digest(&a.state.client_pem(), ssconf::DigestAlgorithm::Sha256).unwrap();
    let _da = Daemon::start(&a, &[]);
    let out = run_ok(&m, &["modify", "a", "--offline=no"]);
    assert!(out.contains("issuing a new one"), "{out}");
    let now =
        noded::pki::file_digest(&a.state.client_pem(), ssconf::DigestAlgorithm::Sha256).unwrap();
    assert_ne!(now, replaced);
    let list: serde_json::Value = serde_json::from_str(&run_ok(&m, &["list", "--json"])).unwrap();
    let rec = list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "a")
        .unwrap()
        .clone();
    assert_eq!(rec["digest"], now.to_string().as_str());
    assert_eq!(rec["role"], "candidate");
    assert!(holds_candidate_files(&a));
    assert!(all_ok(&ping_all(&a).1));
}

/// A promotion whose commit fails (the master cannot write its config)
/// takes back the CA key and config it gave the node: nothing holds a
/// candidate's files while recorded as regular.
#[test]
fn a_promotion_that_cannot_be_committed_is_undone() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let _dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    assert!(holds_no_candidate_files(&a));
    let before = serial(&m);
    let out = {
        let _frozen = immutable(m.dir());
        nodectl(m.dir(), &["modify", "a", "--master-candidate=yes"])
    };
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("could not be committed"), "{err}");
    assert!(err.contains("removed again"), "{err}");
    assert!(holds_no_candidate_files(&a), "a kept the candidate files");
    assert_eq!(serial(&m), before);
    let out = nodectl(m.dir(), &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    // Once the disk takes writes again, the same promotion goes through.
    run_ok(&m, &["modify", "a", "--master-candidate=yes"]);
    assert!(holds_candidate_files(&a));
}

/// A failover that no other node takes changes nothing: the candidate does
/// not claim the mastership alone.
#[test]
fn a_failover_no_node_takes_changes_nothing() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let before = std::fs::read_to_string(a.state.config_json()).unwrap();
    drop(dm);
    let out = nodectl(a.dir(), &["master-failover"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no majority") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!text(&out.stdout).contains("is the master now"));
    assert_eq!(
        std::fs::read_to_string(a.state.config_json()).unwrap(),
        before
    );
    let master = std::fs::read_to_string(a.dir().join("ssconf/ssconf_master_node")).unwrap();
    assert_eq!(master.trim(), "m");
}

/// A candidate refuses a config from an older Raft term even when its
/// serial is higher: a deposed master cannot roll the config back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_of_an_older_term_is_refused_whatever_its_serial() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &["--master-candidate"]);
    let held = std::fs::read_to_string(a.state.config_json()).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&held).unwrap();
    let term = config["term"].as_u64().unwrap();
    assert!(term > 0, "{config}");
    config["term"] = (term - 1).into();
    config["serial"] = (config["serial"].as_u64().unwrap() + 5).into();
    let master = client(&m, Some(&node_identity(&m)));
    let mut conn = master.connect(&a.name, &a.address).await.unwrap();
    let err = conn
        .call(Procedure::WriteConfig {
            config_json: config.to_string(),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refusing to roll back"), "{err}");
    assert_eq!(
        std::fs::read_to_string(a.state.config_json()).unwrap(),
        held
    );
}
