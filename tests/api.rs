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

/// Waits until `node`'s API at `port` admits the user of `cert` (the API
/// reads its users from the config the daemon just committed).
fn admitted(node: &Node, port: u16, cert: &Path, key: &Path) {
    let ok = within(Duration::from_secs(10), || {
        api_curl(node, port, Some((cert, key)), "GET", "/v1/status", None).0 == "200"
    });
    assert!(ok, "the API does not admit {}", cert.display());
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
    let _d = Daemon::start(&m, &[]);
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

    // An --out that cannot take the key fails before the user is
    // committed: the name stays free, and the key is never lost.
    let file = ids.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let bad_out = file.join("x");
    let out = nodectl(
        m.dir(),
        &[
            "user",
            "add",
            "cy",
            "--role",
            "admin",
            "--out",
            bad_out.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let listed = json_of(&nodectl(m.dir(), &["user", "list", "--json"]));
    assert_eq!(listed["users"].as_array().unwrap().len(), 2, "{listed}");
    let (cert, key) = add_user(&m, ids.path(), "cy", "admin");
    assert!(cert.exists() && key.exists());
    assert!(
        !ids.path().join(".cy.key.staged").exists(),
        "the staged key took its name"
    );

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

/// A master with a daemon serving the API, and one user of each role.
struct ApiCluster {
    m: Node,
    _daemon: Daemon,
    port: u16,
    ids: tempfile::TempDir,
}

impl ApiCluster {
    fn start() -> ApiCluster {
        Self::start_with(&[])
    }

    /// With `init_args` given to `nodectl init`.
    fn start_with(init_args: &[&str]) -> ApiCluster {
        let m = init_master_with("m", init_args);
        let ids = tempfile::tempdir().unwrap();
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        // Users are committed through the daemon's Raft: it runs first.
        let daemon = Daemon::start(&m, &["--api-listen", &listen]);
        assert!(
            daemon.wait_log("remote API on", Duration::from_secs(10)),
            "{}",
            daemon.log()
        );
        for role in ["readonly", "operator", "admin"] {
            let (cert, key) = add_user(&m, ids.path(), role, role);
            admitted(&m, port, &cert, &key);
        }
        ApiCluster {
            m,
            _daemon: daemon,
            port,
            ids,
        }
    }

    fn identity(&self, user: &str) -> (PathBuf, PathBuf) {
        (
            self.ids.path().join(format!("{user}.pem")),
            self.ids.path().join(format!("{user}.key")),
        )
    }

    /// curl as `user` (`None`: no certificate, `Some(("node", ..))`: the
    /// master's own client certificate): (status, body); status "000" when
    /// the handshake was refused.
    fn curl(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (String, String) {
        let (cert, key) = match user {
            Some("node") => (self.m.state.client_pem(), self.m.state.client_key()),
            Some(user) => self.identity(user),
            None => (PathBuf::new(), PathBuf::new()),
        };
        api_curl(
            &self.m,
            self.port,
            Some((cert.as_path(), key.as_path())).filter(|_| user.is_some()),
            method,
            path,
            body,
        )
    }
}

/// curl against `node`'s API at `port`, which answers as `node`'s name.
fn api_curl(
    node: &Node,
    port: u16,
    identity: Option<(&Path, &Path)>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (String, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ])
    .arg("--cacert")
    .arg(node.state.ca_pem())
    .arg("--resolve")
    .arg(format!("{}:{port}:127.0.0.1", node.name));
    if let Some((cert, key)) = identity {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    if let Some(body) = body {
        cmd.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ]);
    }
    cmd.arg(format!("https://{}:{port}{path}", node.name));
    let out = cmd.output().expect("curl runs");
    let all = text(&out.stdout);
    let (body, status) = all.rsplit_once('\n').unwrap();
    (status.to_owned(), body.to_owned())
}

#[test]
fn each_role_against_each_resource() {
    let api = ApiCluster::start();
    // (method, path, body, the lowest role allowed, its status)
    let rows: &[(&str, &str, Option<&str>, &str, &str)] = &[
        ("GET", "/v1/nodes", None, "readonly", "200"),
        ("GET", "/v1/status", None, "readonly", "200"),
        ("GET", "/v1/verify", None, "readonly", "200"),
        ("GET", "/v1/audit", None, "readonly", "200"),
        ("GET", "/v1/openapi.json", None, "readonly", "200"),
        (
            "PUT",
            "/v1/nodes/m/role",
            Some(r#"{"master_candidate": true}"#),
            "operator",
            "200",
        ),
        (
            "PUT",
            "/v1/nodes/m/offline",
            Some(r#"{"offline": false}"#),
            "operator",
            "200",
        ),
        (
            "POST",
            "/v1/tokens",
            Some(r#"{"ttl": "1h"}"#),
            "operator",
            "201",
        ),
        ("DELETE", "/v1/nodes/nobody", None, "admin", "404"),
        (
            "POST",
            "/v1/renew-crypto",
            Some(r#"{"ssh_keys": true}"#),
            "admin",
            "200",
        ),
        ("GET", "/v1/users", None, "admin", "200"),
        ("DELETE", "/v1/users/nobody", None, "admin", "404"),
    ];
    let rank = |r: &str| {
        ["readonly", "operator", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    for (method, path, body, needed, ok) in rows {
        for user in ["readonly", "operator", "admin"] {
            let (status, text) = api.curl(Some(user), method, path, *body);
            if rank(user) >= rank(needed) {
                assert_eq!(status, *ok, "{user} {method} {path}: {text}");
            } else {
                assert_eq!(status, "403", "{user} {method} {path}: {text}");
                let error: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(error["code"], "forbidden");
                let needs = format!("needs the {needed} role");
                assert!(error["error"].as_str().unwrap().contains(&needs), "{text}");
            }
        }
    }
    // A user added over the API, from a CSR; listed like nodectl's.
    let key = noded::pki::NodeKey::generate().unwrap();
    let csr = serde_json::to_string(&key.client_csr("eve").unwrap()).unwrap();
    let body = format!(r#"{{"name": "eve", "role": "readonly", "csr": {csr}, "ttl": "30d"}}"#);
    let (status, text) = api.curl(Some("admin"), "POST", "/v1/users", Some(&body));
    assert_eq!(status, "201", "{text}");
    let created: Value = serde_json::from_str(&text).unwrap();
    assert!(created["certificate"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let (_, text) = api.curl(Some("readonly"), "GET", "/v1/nodes", None);
    let nodes: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(nodes["nodes"][0]["name"], "m");
    let listed = json_of(&nodectl(api.m.dir(), &["user", "list", "--json"]));
    let (_, text) = api.curl(Some("admin"), "GET", "/v1/users", None);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), listed);
}

/// Peers that connect and stall in the handshake take at most their
/// source's share of the API's handshake budget, never the connections of
/// admitted users: a user from another address is served while one
/// address holds more connections than the API admits at once.
#[test]
fn stalled_handshakes_do_not_lock_users_out() {
    raise_fd_limit(8192);
    let api = ApiCluster::start();
    let target: std::net::SocketAddr = format!("127.0.0.1:{}", api.port).parse().unwrap();
    let source: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
    let stalled: Vec<socket2::Socket> = (0..1100)
        .map(|_| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.bind(&source.into()).unwrap();
            socket.connect(&target.into()).unwrap();
            socket
        })
        .collect();
    assert!(
        api._daemon.wait_log(
            "pending handshakes per source reached",
            Duration::from_secs(10)
        ),
        "{}",
        api._daemon.log()
    );
    assert_eq!(
        api.curl(Some("readonly"), "GET", "/v1/status", None).0,
        "200"
    );
    drop(stalled);
}

#[test]
fn strangers_nodes_and_bad_requests_are_refused() {
    let api = ApiCluster::start();
    // No certificate, and a node's certificate: refused in the handshake,
    // each logged once with the peer, and the node's subject and digest.
    assert_eq!(api.curl(None, "GET", "/v1/nodes", None).0, "000");
    assert_eq!(api.curl(Some("node"), "GET", "/v1/nodes", None).0, "000");
    let digest =
        noded::pki::file_digest(&api.m.state.client_pem(), DigestAlgorithm::Sha256).unwrap();
    let not_a_user = "not the certificate of an active API user";
    assert!(
        api._daemon.wait_log(not_a_user, Duration::from_secs(5)),
        "{}",
        api._daemon.log()
    );
    let log = api._daemon.log();
    let line = log.lines().find(|l| l.contains(not_a_user)).unwrap();
    assert!(
        line.contains("peer=127.0.0.1:")
            && line.contains(r#"subject="CN=m""#)
            && line.contains(&digest.to_string()),
        "{line}"
    );
    assert_eq!(log.matches(not_a_user).count(), 1, "{log}");
    assert!(log.contains("reason=no client certificate"), "{log}");
    // A certificate of another CA.
    let stranger = foreign("user:admin");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = stranger.write(dir.path(), "stranger");
    let refused = api_curl(
        &api.m,
        api.port,
        Some((&cert, &key)),
        "GET",
        "/v1/nodes",
        None,
    );
    assert_eq!(refused.0, "000");

    let cases: &[(&str, &str, &str, &str)] = &[
        ("POST", "/v1/tokens", r#"{"ttl": "2x"}"#, "ttl"),
        ("POST", "/v1/tokens", r#"{"ttl": "1h""#, "EOF"),
        ("POST", "/v1/tokens", r#"{"tll": "1h"}"#, "tll"),
        (
            "POST",
            "/v1/users",
            r#"{"name": "x", "role": "boss", "csr": ""}"#,
            "role",
        ),
        (
            "POST",
            "/v1/users",
            r#"{"name": "x", "role": "admin"}"#,
            "csr",
        ),
        (
            "POST",
            "/v1/users",
            r#"{"name": "x", "role": "admin", "csr": "no"}"#,
            "signing request",
        ),
        ("POST", "/v1/renew-crypto", r#"{}"#, "at least one"),
        (
            "POST",
            "/v1/renew-crypto",
            r#"{"ca": true, "rollback_ca": true}"#,
            "at most one",
        ),
        (
            "POST",
            "/v1/renew-crypto",
            r#"{"ca": true, "ca_stop_after": "drop"}"#,
            "trust or reissue",
        ),
        (
            "POST",
            "/v1/renew-crypto",
            r#"{"ssh_keys": true, "nodes": ["m"]}"#,
            "nodes",
        ),
        (
            "POST",
            "/v1/renew-crypto",
            r#"{"ca": true, "ca_stop_after": "trust", "node_certificates": true}"#,
            "not with a CA rotation",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, text) = api.curl(Some("admin"), method, path, Some(body));
        assert_eq!(status, "400", "{body}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["code"], "bad_request");
        assert!(
            error["error"].as_str().unwrap().contains(field),
            "{body}: {text}"
        );
    }
    let big = format!(r#"{{"ttl": "{}"}}"#, "1".repeat(2 << 20));
    let file = dir.path().join("big.json");
    std::fs::write(&file, big).unwrap();
    let (status, text) = api.curl(
        Some("admin"),
        "POST",
        "/v1/tokens",
        Some(&format!("@{}", file.display())),
    );
    assert_eq!(status, "413", "{text}");
    assert!(text.contains("payload_too_large"));
    // A request head over 64 KiB.
    let (cert, key) = api.identity("admin");
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--cacert")
        .arg(api.m.state.ca_pem())
        .arg("--resolve")
        .arg(format!("m:{}:127.0.0.1", api.port))
        .args([
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ])
        .args(["-H", &format!("x-padding: {}", "p".repeat(80 << 10))])
        .arg(format!("https://m:{}/v1/status", api.port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "431");
    let (status, text) = api.curl(Some("admin"), "GET", "/v1/nothing", None);
    assert_eq!((status.as_str(), text.contains("not_found")), ("404", true));
    // The cluster lock held by another command: 409.
    let lock = noded::cluster::ClusterLock::acquire(&api.m.state, false, "test holder").unwrap();
    let (status, text) = api.curl(Some("operator"), "POST", "/v1/tokens", Some("{}"));
    assert_eq!(status, "409", "{text}");
    assert!(text.contains("test holder"), "{text}");
    drop(lock);
}

#[test]
fn api_changes_and_refusals_are_audited() {
    let api = ApiCluster::start();
    let (status, _) = api.curl(Some("operator"), "POST", "/v1/tokens", Some("{}"));
    assert_eq!(status, "201");
    let (status, _) = api.curl(Some("readonly"), "DELETE", "/v1/users/admin", None);
    assert_eq!(status, "403");
    let (status, _) = api.curl(Some("admin"), "DELETE", "/v1/users/operator", None);
    assert_eq!(status, "200");
    let (status, text) = api.curl(Some("readonly"), "GET", "/v1/audit?since=1h", None);
    assert_eq!(status, "200", "{text}");
    let trail: Value = serde_json::from_str(&text).unwrap();
    let got: Vec<String> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["actor"], e["action"], e["target"], e["result"]
            )
        })
        .filter(|e| e.contains("user:"))
        .collect();
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(
        got[0].starts_with(r#""user:operator" "token-create""#),
        "{got:#?}"
    );
    assert!(
        got[1].starts_with(
            r#""user:readonly" "refused" "DELETE /v1/users/admin" "refused: needs the admin role"#
        ),
        "{got:#?}"
    );
    assert!(
        got[2].starts_with(r#""user:admin" "user-revoke" "operator" "ok""#),
        "{got:#?}"
    );
    let (status, _) = api.curl(Some("readonly"), "GET", "/v1/audit?since=soon", None);
    assert_eq!(status, "400");
}

/// Reads from `stream` until `needle` has been seen.
async fn read_until<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_user_is_cut_off_within_a_second() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = ApiCluster::start();
    let (cert, key) = api.identity("operator");
    let user = Identity::from_files(&cert, &key);
    let mut roots = rustls::RootCertStore::empty();
    for ca in api.m.ca_certs() {
        roots.add(ca).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(noded::pki::provider::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(user.chain.clone(), user.key.clone_key())
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", api.port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("m").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    // Two requests on one keep-alive connection.
    for _ in 0..2 {
        tls.write_all(b"GET /v1/status HTTP/1.1\r\nhost: m\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until(&mut tls, "]}").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let out = nodectl(api.m.dir(), &["user", "revoke", "operator"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let revoked_at = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the connection stayed open: {closed:?}"
    );
    assert!(
        revoked_at.elapsed() < Duration::from_millis(1000),
        "{:?}",
        revoked_at.elapsed()
    );
    // And a new connection is refused in the handshake.
    assert_eq!(
        api.curl(Some("operator"), "GET", "/v1/status", None).0,
        "000"
    );
    assert_eq!(
        api.curl(Some("readonly"), "GET", "/v1/status", None).0,
        "200"
    );
}

#[test]
fn a_node_that_is_not_the_master_redirects() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &[]);
    let (c, dc) = join_and_start(&m, "c", &["--master-candidate"]);
    drop(dc);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&c, &["--api-listen", &listen]);
    assert!(daemon.wait_log("remote API on", Duration::from_secs(10)));
    let ids = tempfile::tempdir().unwrap();
    let (cert, key) = add_user(&m, ids.path(), "ann", "readonly");
    // Wait for the user list to reach the candidate.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (status, _) = loop {
        let answer = api_curl(&c, port, Some((&cert, &key)), "GET", "/v1/nodes?x=1", None);
        if answer.0 != "000" || std::time::Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, "307");
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{redirect_url}"])
        .arg("--cacert")
        .arg(c.state.ca_pem())
        .arg("--resolve")
        .arg(format!("c:{port}:127.0.0.1"))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(format!("https://c:{port}/v1/nodes?x=1"))
        .output()
        .unwrap();
    let master_host = m.address.rsplit_once(':').unwrap().0;
    assert_eq!(
        text(&out.stdout),
        format!("https://{master_host}:{port}/v1/nodes?x=1")
    );

    // A regular node holds no user list: a user's certificate is
    // redirected, a node's is refused.
    let (r, dr) = join_and_start(&m, "r", &[]);
    drop(dr);
    assert!(!r.state.config_json().exists(), "r is a candidate");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&r, &["--api-listen", &listen]);
    assert!(daemon.wait_log("remote API on", Duration::from_secs(10)));
    let answer = api_curl(&r, port, Some((&cert, &key)), "DELETE", "/v1/users/x", None);
    assert_eq!(answer.0, "307", "{answer:?}");
    let node = (r.state.client_pem(), r.state.client_key());
    let answer = api_curl(&r, port, Some((&node.0, &node.1)), "GET", "/v1/nodes", None);
    assert_eq!(answer.0, "000", "{answer:?}");
}

#[test]
fn the_openapi_document_is_checked_in() {
    let generated = noded::daemon::api::openapi::document();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("NODED_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is not the API's document; regenerate it with `NODED_BLESS=1 cargo test --test tests openapi`"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    for path in [
        "/v1/nodes",
        "/v1/users/{name}",
        "/v1/tokens",
        "/v1/renew-crypto",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    // And the daemon serves the same document.
    let api = ApiCluster::start();
    let (status, served) = api.curl(Some("readonly"), "GET", "/v1/openapi.json", None);
    assert_eq!(status, "200");
    assert_eq!(served, generated);
}

#[test]
fn nodes_are_demoted_offlined_and_removed_over_the_api() {
    let api = ApiCluster::start_with(&["--candidate-pool-size", "1"]);
    let (b, _db) = join_and_start(&api.m, "b", &["--master-candidate"]);
    let role = |name: &str| {
        let list = json_of(&nodectl(api.m.dir(), &["list", "--json"]));
        list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .map(|n| {
                (
                    n["role"].as_str().unwrap().to_owned(),
                    n["offline"].as_bool().unwrap(),
                )
            })
    };
    assert_eq!(role("b"), Some(("candidate".into(), false)));
    let demote = r#"{"master_candidate": false, "auto_promote": false}"#;
    let (status, text) = api.curl(Some("operator"), "PUT", "/v1/nodes/b/role", Some(demote));
    assert_eq!(status, "200", "{text}");
    let outcome: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(outcome["result"], "ok", "{text}");
    let said = outcome["messages"][0].as_str().unwrap();
    assert!(said.contains("b is now a regular node"), "{text}");
    assert_eq!(role("b"), Some(("regular".into(), false)));
    assert!(
        !b.state.config_json().exists(),
        "a demoted node keeps its config"
    );

    let offline = Some(r#"{"offline": true}"#);
    let (status, text) = api.curl(Some("operator"), "PUT", "/v1/nodes/b/offline", offline);
    assert_eq!(status, "200", "{text}");
    assert_eq!(role("b"), Some(("regular".into(), true)));
    // The master is refused, and told what to do instead.
    let (status, text) = api.curl(Some("operator"), "PUT", "/v1/nodes/m/offline", offline);
    assert_eq!(status, "400", "{text}");
    assert!(text.contains("master-failover"), "{text}");

    let (status, text) = api.curl(Some("admin"), "DELETE", "/v1/nodes/b", None);
    assert_eq!(status, "200", "{text}");
    assert_eq!(role("b"), None);

    let trail = json_of(&nodectl(api.m.dir(), &["audit", "--json"]));
    let got: Vec<String> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"].as_str().unwrap().starts_with("user:"))
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["actor"], e["action"], e["target"], e["result"]
            )
        })
        .collect();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_eq!(got[0], r#""user:operator" "demote" "b" "ok""#);
    assert_eq!(got[1], r#""user:operator" "offline" "b" "ok""#);
    assert!(
        got[2].starts_with(r#""user:operator" "offline" "m" "error: "#),
        "{got:#?}"
    );
    assert_eq!(got[3], r#""user:admin" "remove" "b" "ok""#);
}

#[test]
fn certificates_are_renewed_over_the_api() {
    let api = ApiCluster::start();
    let (b, _db) = join_and_start(&api.m, "b", &[]);
    let digest_of = |name: &str| {
        let list = json_of(&nodectl(api.m.dir(), &["list", "--json"]));
        list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .map(|n| n["digest"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let before = digest_of("b");
    let body = r#"{"node_certificates": true, "nodes": ["b"]}"#;
    let (status, text) = api.curl(Some("admin"), "POST", "/v1/renew-crypto", Some(body));
    assert_eq!(status, "200", "{text}");
    let outcome: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(outcome["result"], "ok", "{text}");
    let said: Vec<&str> = outcome["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(said.contains(&"b: new client certificate: ok"), "{said:?}");
    let after = digest_of("b");
    assert_ne!(before, after);
    let on_disk = noded::pki::file_digest(&b.state.client_pem(), DigestAlgorithm::Sha256).unwrap();
    assert_eq!(on_disk.to_string(), after);
    let trail = json_of(&nodectl(api.m.dir(), &["audit", "--json"]));
    let last = trail["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "user:admin");
    assert_eq!(last["action"], "renew-crypto node-certificates");
    assert_eq!(last["target"], "b");
    assert_eq!(last["result"], "ok");

    // A CA rotation paused after its trust phase, then rolled back.
    let phase = || {
        let (status, text) = api.curl(Some("readonly"), "GET", "/v1/status", None);
        assert_eq!(status, "200", "{text}");
        let doc: Value = serde_json::from_str(&text).unwrap();
        doc["ca_rotation"].clone()
    };
    let body = r#"{"ca": true, "ca_stop_after": "trust"}"#;
    let (status, text) = api.curl(Some("admin"), "POST", "/v1/renew-crypto", Some(body));
    assert_eq!(status, "200", "{text}");
    assert_eq!(phase()["phase"], "trust");
    assert_eq!(phase()["paused"], true);
    let body = r#"{"rollback_ca": true}"#;
    let (status, text) = api.curl(Some("admin"), "POST", "/v1/renew-crypto", Some(body));
    assert_eq!(status, "200", "{text}");
    assert_eq!(phase()["phase"], "none");
    let trail = json_of(&nodectl(api.m.dir(), &["audit", "--json"]));
    let last = trail["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "renew-crypto rollback-ca");
}

/// A change that outlives `--request-timeout` is answered 503 (JSON, code
/// `timeout`); the change itself runs to its end in the background.
#[test]
fn a_request_that_outlives_the_timeout_is_a_503() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let ids = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&m, &["--api-listen", &listen, "--request-timeout", "1"]);
    assert!(
        daemon.wait_log("remote API on", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    let (cert, key) = add_user(&m, ids.path(), "admin", "admin");
    admitted(&m, port, &cert, &key);
    let (x, dx) = join_and_start(&m, "x", &[]);
    // x's address takes TCP connections and never speaks TLS: a call to it
    // waits for the client's connect timeout (10 s).
    drop(dx);
    let _silent = std::net::TcpListener::bind(&x.address).unwrap();
    let body = r#"{"node_certificates": true, "cluster_certificate": false, "ssh_keys": false, "ca": false, "nodes": ["x"]}"#;
    let started = std::time::Instant::now();
    let (status, text) = api_curl(
        &m,
        port,
        Some((cert.as_path(), key.as_path())),
        "POST",
        "/v1/renew-crypto",
        Some(body),
    );
    assert_eq!(status, "503", "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["code"], "timeout", "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered after the change"
    );
}

/// One user has at most 8 requests in flight: a 9th is answered 429 while
/// 8 slow ones (verify, waiting on a node that never speaks TLS) run.
#[test]
fn a_user_with_eight_requests_in_flight_gets_a_429() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let ids = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&m, &["--api-listen", &listen]);
    assert!(
        daemon.wait_log("remote API on", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    let (cert, key) = add_user(&m, ids.path(), "ro", "readonly");
    admitted(&m, port, &cert, &key);
    let (x, dx) = join_and_start(&m, "x", &[]);
    drop(dx);
    // verify waits for x's TLS handshake until the connect timeout (10 s).
    let _silent = std::net::TcpListener::bind(&x.address).unwrap();
    let m = std::sync::Arc::new(m);
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let (m, cert, key) = (m.clone(), cert.clone(), key.clone());
            std::thread::spawn(move || {
                api_curl(&m, port, Some((&cert, &key)), "GET", "/v1/verify", None).0
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let (status, text) = api_curl(&m, port, Some((&cert, &key)), "GET", "/v1/nodes", None);
    assert_eq!(status, "429", "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["error"].as_str().unwrap().contains("8"), "{text}");
    for request in slow {
        let status = request.join().unwrap();
        assert_ne!(status, "429", "one of the first 8 was refused");
    }
    // Once they are done, the user is served again.
    let (status, text) = api_curl(&m, port, Some((&cert, &key)), "GET", "/v1/nodes", None);
    assert_eq!(status, "200", "{text}");
}
