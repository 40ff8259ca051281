//! Join admission hardened (SPEC §5): node names, addresses in canonical
//! form, a joiner that died after its admission, and what a joiner may
//! learn of the master.

use base64::Engine;

use noded::pki::NodeKey;
use noded::rpc::pinned::pinned_client_config;
use noded::rpc::RpcClient;
use noded::state::token::JoinToken;
use noded::wire::{JoinRequest, Procedure};

use crate::support::*;

/// `nodectl join TOKEN --node-name NAME --address ADDRESS` in a fresh state
/// dir: (exit code, stderr).
fn join(token: &str, name: &str, address: &str) -> (Option<i32>, String) {
    let node = Node::fresh("joiner");
    // `--node-name=NAME`: a name starting with '-' is a value here.
    let out = nodectl(
        node.dir(),
        &[
            "join",
            token,
            &format!("--node-name={name}"),
            "--address",
            address,
        ],
    );
    (out.status.code(), text(&out.stderr))
}

/// A refusal: exit 1, one line `error: ...` containing `needle`.
fn assert_refused((code, stderr): (Option<i32>, String), needle: &str) {
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains(needle),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// What a refused join must leave alone: the serial, the nodes, the tokens.
fn snapshot(m: &Node) -> (u64, String, String) {
    let list = nodectl(m.dir(), &["list", "--json"]);
    let tokens = nodectl(m.dir(), &["token", "list", "--json"]);
    // The nodes as recorded; their health (reachable, last_seen) moves on.
    let mut nodes: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    for node in nodes["nodes"].as_array_mut().unwrap() {
        let node = node.as_object_mut().unwrap();
        node.remove("reachable");
        node.remove("last_seen");
    }
    (
        ssconf::Ssconf::stored_serial(&m.state.ssconf_dir())
            .unwrap()
            .unwrap_or(0),
        nodes.to_string(),
        text(&tokens.stdout),
    )
}

/// Sends a join request straight to the master, as a modified `nodectl`
/// could: the master's own checks are all that stands.
async fn raw_join(token: &str, name: &str, address: &str) -> noded::Result<()> {
    let token = JoinToken::parse(token).unwrap();
    let client = RpcClient::new(pinned_client_config(token.ca_pin()?, &token.master)?);
    let mut conn = client.connect("master", &token.addrs[0]).await?;
    let request = JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        node_name: name.to_owned(),
        address: address.to_owned(),
        csr_pem: NodeKey::generate()?.csr(name)?,
        server_csr_pem: NodeKey::generate()?.csr(name)?,
        ssh_public_key: String::new(),
    };
    conn.call(Procedure::Join(request)).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_names_are_dns_host_names() {
    let m = init_master("m");
    let _dm = Daemon::start(&m, &[]);
    let token = create_token(&m, &[]);
    let long_label = "a".repeat(64);
    let too_long = vec!["a".repeat(63); 4].join(".");
    let bad = [
        ".",
        "..",
        "-n",
        "n-",
        "Node1",
        "node_1",
        "a..b",
        "n.",
        long_label.as_str(),
        too_long.as_str(),
    ];
    for name in bad {
        // init refuses it ...
        let dir = tempfile::tempdir().unwrap();
        let node_name = format!("--node-name={name}");
        let args = [
            "init",
            "--cluster-name",
            "c",
            &node_name,
            "--address",
            "127.0.0.1:1811",
        ];
        let out = nodectl(&dir.path().join("s"), &args);
        assert_refused(
            (out.status.code(), text(&out.stderr)),
            "lower-case letters, digits and '-'",
        );
        assert!(!dir.path().join("s").join("node.json").exists());
        // ... and so does join, before it contacts the master.
        assert_refused(
            join(&token, name, "127.0.0.1:1"),
            "is not valid: use a DNS host name",
        );
    }
    // A joiner that skips the check is refused by the master itself, and
    // the token stays usable.
    let before = snapshot(&m);
    for name in ["Node1", "-n", ".."] {
        let err = raw_join(&token, name, "127.0.0.1:2").await.unwrap_err();
        assert!(err.to_string().contains("DNS host name"), "{err}");
    }
    assert_eq!(snapshot(&m), before);
    let node = Node::fresh("n1");
    let (code, stderr) = join(&token, "n1.example.org", &node.address);
    assert_eq!(code, Some(0), "{stderr}");
}

/// A node whose join is being answered is left out of the master's rounds
/// (its daemon is not running yet). Only an admission that passed the
/// token and name checks may mark it so: a join naming a member of the
/// cluster, held up here behind the cluster lock, must not take that
/// member out of the rounds (its health forgotten, its updates skipped)
/// while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_naming_a_member_does_not_take_it_out_of_the_rounds() {
    let m = init_master("m");
    let _dm = Daemon::start(&m, &["--heartbeat", "1"]);
    let (_n2, _d2) = join_and_start(&m, "n2", &[]);
    // `nodectl list` blocks this worker a moment; the join's task runs on
    // the other.
    let reachable = || listed(&m, "n2")["reachable"].clone();
    assert!(
        within(std::time::Duration::from_secs(20), || reachable() == true),
        "n2 never reachable"
    );
    let token = create_token(&m, &[]);
    let lock = noded::cluster::ClusterLock::acquire(&m.state, false, "the test").unwrap();
    let join = tokio::spawn(async move { raw_join(&token, "n2", "127.0.0.1:3").await });
    // Three heartbeats and more while the join waits for the lock.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let during = reachable();
    drop(lock);
    assert_eq!(during, true, "n2 left the rounds while a join named it");
    let err = join.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("already in the cluster"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_spelled_differently_is_still_taken() {
    let m = init_master("m");
    let _dm = Daemon::start(&m, &[]);
    let port = m.address.rsplit_once(':').unwrap().1.to_owned();
    let token = create_token(&m, &[]);
    // b at 127.0.0.2 (loopback too); its daemon need not run.
    let b_port = free_port();
    let (code, stderr) = join(&create_token(&m, &[]), "b", &format!("127.0.0.2:{b_port}"));
    assert_eq!(code, Some(0), "{stderr}");
    let before = snapshot(&m);
    let same_as_m = [
        format!("localhost:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("127.0.0.1:{port}"),
    ];
    for address in &same_as_m {
        assert_refused(
            join(&token, "x", address),
            &format!(
                "address {address} is already used by node m ({})",
                m.address
            ),
        );
    }
    // Rust's own parser refuses a leading zero; the system resolver reads
    // 127.0.0.02 as 127.0.0.2, b's address.
    assert!("127.0.0.02".parse::<std::net::Ipv4Addr>().is_err());
    let leading_zero = format!("127.0.0.02:{b_port}");
    if std::net::ToSocketAddrs::to_socket_addrs(&leading_zero).is_ok() {
        assert_refused(join(&token, "x", &leading_zero), "already used by node b");
    } else {
        eprintln!("this resolver does not read 127.0.0.02; that case is skipped");
    }
    assert_refused(
        join(&token, "x", "no-such-host.invalid:1811"),
        "address no-such-host.invalid:1811 does not resolve on the master",
    );
    // Nothing changed, and the token was not burned by the refusals (exit
    // 3: b, whose daemon is not running, did not get the new ssconf).
    assert_eq!(snapshot(&m), before);
    let (code, stderr) = join(&token, "x", &format!("127.0.0.1:{}", free_port()));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(snapshot(&m).1.contains("\"x\""));
}

#[test]
fn a_joiner_killed_after_its_admission_is_told_how_to_finish() {
    let m = init_master("m");
    let _dm = Daemon::start(&m, &[]);
    let token = create_token(&m, &[]);
    let node = Node::fresh("n");
    let args = [
        "join",
        &token,
        "--node-name",
        "n",
        "--address",
        &node.address,
    ];
    let out = nodectl(node.dir(), &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // As if killed before it wrote its state: nothing of it is left.
    std::fs::remove_dir_all(node.dir()).unwrap();
    let out = nodectl(node.dir(), &args);
    assert_refused(
        (out.status.code(), text(&out.stderr)),
        "this token already admitted node \"n\"",
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`nodectl remove n` on the master")
            && stderr.contains("new token from `nodectl token create`"),
        "{stderr}"
    );
    // The burned token is not outstanding, and its secret is not stored.
    let listed = nodectl(m.dir(), &["token", "list", "--json"]);
    assert!(!text(&listed.stdout).contains(&JoinToken::parse(&token).unwrap().id));
    let stored = std::fs::read_to_string(m.state.tokens_json()).unwrap();
    assert!(!stored.contains(JoinToken::parse(&token).unwrap().secret.expose()));
    // The same id with another secret learns nothing.
    let body = token.strip_prefix("noded-join:").unwrap();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut json: serde_json::Value =
        serde_json::from_slice(&engine.decode(body).unwrap()).unwrap();
    json["secret"] = serde_json::Value::String("0".repeat(32));
    let guessed = format!(
        "noded-join:{}",
        engine.encode(serde_json::to_vec(&json).unwrap())
    );
    let (code, stderr) = join(&guessed, "n", "127.0.0.1:3");
    assert_refused((code, stderr.clone()), "unknown, already used, or revoked");
    assert!(!stderr.contains("\"n\""), "{stderr}");
    // The way out it names works: remove, then a new token.
    let out = nodectl(m.dir(), &["remove", "n"]);
    assert!(
        out.status.code().is_some_and(|c| c == 0 || c == 3),
        "{}",
        text(&out.stderr)
    );
    let out = nodectl(
        node.dir(),
        &[
            "join",
            &create_token(&m, &[]),
            "--node-name",
            "n",
            "--address",
            &node.address,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_joiner_never_sees_the_masters_paths() {
    let m = init_master("m");
    let dm = Daemon::start(&m, &[]);
    let root = m.dir().to_string_lossy().into_owned();
    // A state file the master cannot read, once before the cluster lock
    // (tokens.json) and once after the token was checked (ca.pem): as
    // root, a directory where the file should be is what fails.
    for file in [m.state.tokens_json(), m.state.ca_pem()] {
        let token = create_token(&m, &[]);
        let saved = std::fs::read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        let (code, stderr) = join(&token, "n", &format!("127.0.0.1:{}", free_port()));
        std::fs::remove_dir(&file).unwrap();
        std::fs::write(&file, saved).unwrap();
        assert_refused(
            (code, stderr.clone()),
            "the master could not admit this node: internal error; see the master's log",
        );
        assert!(!stderr.contains(&root), "{stderr}");
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            dm.wait_log(
                &format!("{}", file.display()),
                std::time::Duration::from_secs(5)
            ),
            "the master's log lacks {name}: {}",
            dm.log()
        );
    }
    // Refusals meant for the joiner still reach it as they are.
    let token = create_token(&m, &[]);
    assert_refused(
        join(&token, "m", &format!("127.0.0.1:{}", free_port())),
        "a node named \"m\" is already in the cluster",
    );
}
