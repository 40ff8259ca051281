//! Test fixtures: clusters in temp dirs, daemons as child processes, client
//! identities of every kind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use noded::pki::{self, CertificateAuthority, CertificateSigner, NodeKey};
use noded::rpc::RpcClient;
use noded::state::{NodeIdentity, StateDir};
use noded::wire::{Procedure, Reply};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use ssconf::{CandidateMap, CertDigest, DigestAlgorithm, Ssconf};
use time::{Duration as TimeDuration, OffsetDateTime};

pub const NODED: &str = env!("CARGO_BIN_EXE_noded");
pub const NODECTL: &str = env!("CARGO_BIN_EXE_nodectl");

/// A port that was free a moment ago. Chosen below Linux's ephemeral range
/// (32768+), so the outgoing connections of parallel tests cannot take it
/// between this check and the daemon's bind; a per-process counter keeps
/// parallel tests of one run apart.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// [`free_port`] on another loopback address (`127.0.0.2`, ...).
pub fn free_port_on(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 600) as u16 * 20;
    loop {
        let port = 20000 + (base - 20000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12000;
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// Runs `nodectl --state-dir DIR ARGS...`.
pub fn nodectl(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(NODECTL)
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `nodectl verify` on `master` exits 0 and finds nothing, not even a warning.
pub fn verify_clean(master: &Node) {
    let out = nodectl(master.dir(), &["verify"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("no findings"), "{stdout}");
}

/// Runs nodectl on `node`'s state directory: exit code, stdout, stderr.
pub fn run(node: &Node, args: &[&str]) -> (Option<i32>, String, String) {
    let out = nodectl(node.dir(), args);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Whether `ping` from `node` reaches every online node (what failed is
/// printed).
pub fn pings_all(node: &Node) -> bool {
    let (code, out, err) = run(node, &["ping"]);
    if code != Some(0) {
        eprintln!("ping from {} failed:\n{out}{err}", node.name);
    }
    code == Some(0)
}

/// Polls `check` every 100 ms for at most `limit`.
pub fn within(limit: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// A node's state directory in a temp dir.
pub struct Node {
    _tmp: tempfile::TempDir,
    pub state: StateDir,
    pub name: String,
    pub address: String,
}

impl Node {
    pub fn dir(&self) -> &Path {
        self.state.root()
    }

    pub fn map_path(&self) -> PathBuf {
        Ssconf::candidate_map_path(&self.state.ssconf_dir())
    }

    pub fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::from_pem(
            &std::fs::read_to_string(self.state.ca_pem()).unwrap(),
            &std::fs::read_to_string(self.state.ca_key()).unwrap(),
        )
        .unwrap()
    }

    pub fn ca_certs(&self) -> Vec<CertificateDer<'static>> {
        pki::load_certs(&self.state.ca_pem()).unwrap()
    }

    pub fn map(&self) -> CandidateMap {
        CandidateMap::load(&self.map_path()).unwrap()
    }

    /// Replaces the candidate map file the way a push does (atomic rename).
    pub fn write_map(&self, map: &CandidateMap) {
        ssconf::write_atomic(&self.map_path(), map.render().as_bytes(), 0o644).unwrap();
    }

    pub fn write_map_text(&self, text: &str) {
        ssconf::write_atomic(&self.map_path(), text.as_bytes(), 0o644).unwrap();
    }
}

/// `nodectl init` of a new single-node cluster on a free loopback port.
pub fn init_master(name: &str) -> Node {
    init_master_with(name, &[])
}

/// `init` of the test cluster with `name` at `address`, then `extra`.
pub fn init_args<'a>(name: &'a str, address: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "init",
        "--cluster-name",
        "testcluster",
        "--node-name",
        name,
        "--address",
        address,
    ];
    args.extend_from_slice(extra);
    args
}

pub fn init_master_with(name: &str, extra: &[&str]) -> Node {
    init_master_at(name, "127.0.0.1", extra)
}

/// [`init_master_with`], the master listening on the loopback address `ip`.
pub fn init_master_at(name: &str, ip: &str, extra: &[&str]) -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    let address = format!("{ip}:{}", free_port_on(ip));
    let out = nodectl(&dir, &init_args(name, &address, extra));
    assert!(out.status.success(), "init failed: {}", text(&out.stderr));
    Node {
        _tmp: tmp,
        state: StateDir::new(dir),
        name: name.to_owned(),
        address,
    }
}

/// A regular node of `master`'s cluster, made the way a join makes one: its
/// own client and server keys, CSRs signed by the CA, the cluster's ssconf;
/// no CA key, no config. The cluster does not record it.
pub fn regular_node(master: &Node, name: &str) -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let state = StateDir::new(&dir);
    std::fs::copy(master.state.ca_pem(), state.ca_pem()).unwrap();
    let uuid = format!("uuid-{name}");
    let key = NodeKey::generate().unwrap();
    let cert = master
        .ca()
        .sign_client_csr(&key.csr(name).unwrap(), name, 90)
        .unwrap();
    ssconf::write_atomic(&state.client_pem(), cert.as_bytes(), 0o644).unwrap();
    ssconf::write_atomic(&state.client_key(), key.to_pem().expose().as_bytes(), 0o600).unwrap();
    let server_key = NodeKey::generate().unwrap();
    let server = master
        .ca()
        .sign_server_csr(&server_key.csr(name).unwrap(), name, &uuid, 90)
        .unwrap();
    ssconf::write_atomic(&state.server_pem(), server.as_bytes(), 0o644).unwrap();
    ssconf::write_atomic(
        &state.server_key(),
        server_key.to_pem().expose().as_bytes(),
        0o600,
    )
    .unwrap();
    Ssconf::load(&master.state.ssconf_dir())
        .unwrap()
        .store(&state.ssconf_dir())
        .unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let identity = NodeIdentity {
        uuid,
        name: name.to_owned(),
        address: address.clone(),
        ssh_dir: None,
        authorized_keys: None,
    };
    std::fs::write(state.node_json(), serde_json::to_vec(&identity).unwrap()).unwrap();
    Node {
        _tmp: tmp,
        state,
        name: name.to_owned(),
        address,
    }
}

/// A running `noded`, stopped (SIGKILL) when dropped.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn start(node: &Node, extra: &[&str]) -> Daemon {
        Self::start_env(node, extra, &[])
    }

    pub fn start_env(node: &Node, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(NODED);
        command.arg("--state-dir").arg(node.dir()).args(extra);
        command.envs(env.iter().copied());
        Self::spawn(command)
    }

    /// Starts `noded` through `sh -c 'ulimit ULIMIT && exec noded ...'`,
    /// e.g. with `-S -n 64` (a low soft open-file limit).
    pub fn start_with_ulimit(node: &Node, extra: &[&str], ulimit: &str) -> Daemon {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit {ulimit} && exec \"$@\""))
            .arg("sh")
            .arg(NODED)
            .arg("--state-dir")
            .arg(node.dir())
            .args(extra);
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Daemon {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let daemon = Daemon { child, log };
        assert!(
            daemon.wait_log("listening on", Duration::from_secs(20)),
            "noded did not start: {}",
            daemon.log()
        );
        daemon
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_log_count(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().matches(needle).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's resident set size (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {status}"))
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "noded did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client identity: certificate chain and key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    fn from_pem(cert_pem: String, key_pem: String) -> Identity {
        Identity {
            chain: CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            cert_pem,
            key_pem,
        }
    }

    /// An identity from a certificate file and a key file.
    pub fn from_files(cert: &Path, key: &Path) -> Identity {
        Identity::from_pem(
            std::fs::read_to_string(cert).unwrap(),
            std::fs::read_to_string(key).unwrap(),
        )
    }

    pub fn digest(&self, alg: DigestAlgorithm) -> CertDigest {
        alg.digest(&self.chain[0])
    }

    /// Writes cert and key into `dir` as `<stem>.pem` / `<stem>.key`.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// The node's own client identity (from its state dir).
pub fn node_identity(node: &Node) -> Identity {
    Identity::from_pem(
        std::fs::read_to_string(node.state.client_pem()).unwrap(),
        std::fs::read_to_string(node.state.client_key()).unwrap(),
    )
}

/// A client certificate signed by `ca`, valid between the given offsets
/// from now.
pub fn signed_by(
    ca: &CertificateAuthority,
    name: &str,
    from: TimeDuration,
    to: TimeDuration,
) -> Identity {
    let key = NodeKey::generate().unwrap();
    let now = OffsetDateTime::now_utc();
    let cert = ca
        .sign_csr_between(
            &key.csr(name).unwrap(),
            &noded::pki::LeafRole::Client { node: name },
            now + from,
            now + to,
        )
        .unwrap();
    Identity::from_pem(cert, key.to_pem().expose().to_owned())
}

/// A client certificate signed by the node's cluster CA, valid now.
pub fn ca_signed(node: &Node, name: &str) -> Identity {
    signed_by(
        &node.ca(),
        name,
        TimeDuration::hours(-1),
        TimeDuration::days(90),
    )
}

/// A certificate signed by the node's CA that expired yesterday.
pub fn expired(node: &Node, name: &str) -> Identity {
    signed_by(
        &node.ca(),
        name,
        TimeDuration::days(-30),
        TimeDuration::days(-1),
    )
}

/// A certificate from another cluster's CA.
pub fn foreign(name: &str) -> Identity {
    let ca = CertificateAuthority::generate("othercluster", 30).unwrap();
    signed_by(&ca, name, TimeDuration::hours(-1), TimeDuration::days(90))
}

/// A self-signed client certificate (a CA of its own).
pub fn self_signed(name: &str) -> Identity {
    let ca = CertificateAuthority::generate(name, 30).unwrap();
    let cert_pem = ca.cert_pem().to_owned();
    Identity::from_pem(cert_pem, ca.key_pem().unwrap().expose().to_owned())
}

/// An RPC client presenting `identity` (or nothing) to `node`'s daemon.
pub fn client(node: &Node, identity: Option<&Identity>) -> RpcClient {
    let ca = node.ca_certs();
    let config = match identity {
        Some(id) => {
            let recorded = noded::rpc::identity::RecordedServers::from_state(&node.state).unwrap();
            noded::rpc::tls::client_config(&ca, recorded, id.chain.clone(), id.key.clone_key())
                .unwrap()
        }
        None => noded::rpc::tls::anonymous_client_config(&ca).unwrap(),
    };
    let mut client = RpcClient::new(config);
    client.connect_timeout = Duration::from_secs(5);
    client.call_timeout = Duration::from_secs(5);
    client
}

/// Connects and pings once.
pub async fn ping(client: &RpcClient, node: &Node) -> noded::Result<()> {
    let mut conn = client.connect(&node.name, &node.address).await?;
    match conn.call(Procedure::Ping).await? {
        Reply::Pong { .. } => Ok(()),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Polls `ping` until it gives the wanted outcome (the map reload is
/// asynchronous); returns whether it did within the timeout.
pub async fn eventually(client: &RpcClient, node: &Node, admitted: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ping(client, node).await.is_ok() == admitted {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// A client presenting `cert`'s chain but signing with `key`: it has the
/// certificate (which is public) without its private key.
pub fn client_without_the_key(node: &Node, cert: &Identity, key: &Identity) -> RpcClient {
    use rustls::client::ResolvesClientCert;
    use rustls::sign::CertifiedKey;
    use std::sync::Arc;

    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);
    impl ResolvesClientCert for Fixed {
        fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let provider = noded::pki::provider::provider();
    let signing = provider
        .key_provider
        .load_private_key(key.key.clone_key())
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in node.ca_certs() {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Fixed(Arc::new(CertifiedKey::new(
            cert.chain.clone(),
            signing,
        )))));
    let mut client = RpcClient::new(Arc::new(config));
    client.connect_timeout = Duration::from_secs(5);
    client.call_timeout = Duration::from_secs(5);
    client
}

/// The node's shared server certificate and key, as a client identity.
pub fn server_identity(node: &Node) -> Identity {
    Identity::from_pem(
        std::fs::read_to_string(node.state.server_pem()).unwrap(),
        std::fs::read_to_string(node.state.server_key()).unwrap(),
    )
}

impl Node {
    /// An empty state directory for a node that will join, with a free
    /// loopback address.
    pub fn fresh(name: &str) -> Node {
        Node::fresh_at(name, "127.0.0.1")
    }

    /// [`Node::fresh`] with a free port on the loopback address `ip`.
    pub fn fresh_at(name: &str, ip: &str) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        Node {
            _tmp: tmp,
            state: StateDir::new(dir),
            name: name.to_owned(),
            address: format!("{ip}:{}", free_port_on(ip)),
        }
    }
}

/// `nodectl token create` on `master`; returns the connection string.
pub fn create_token(master: &Node, extra: &[&str]) -> String {
    let mut args = vec!["token", "create"];
    args.extend_from_slice(extra);
    let out = nodectl(master.dir(), &args);
    assert!(out.status.success(), "token create: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// Joins a new node with a fresh token and starts its daemon.
pub fn join_and_start(master: &Node, name: &str, token_args: &[&str]) -> (Node, Daemon) {
    join_and_start_env(master, name, token_args, &[])
}

/// [`join_and_start`], the daemon started with `env`.
pub fn join_and_start_env(
    master: &Node,
    name: &str,
    token_args: &[&str],
    env: &[(&str, &str)],
) -> (Node, Daemon) {
    join_node_and_start(master, Node::fresh(name), token_args, env)
}

/// [`join_and_start`], the node listening on the loopback address `ip`.
pub fn join_and_start_at(
    master: &Node,
    name: &str,
    ip: &str,
    token_args: &[&str],
) -> (Node, Daemon) {
    join_node_and_start(master, Node::fresh_at(name, ip), token_args, &[])
}

/// Joins `node` (made but not joined: its state directory may be set up
/// first) and starts its daemon with `env`.
pub fn join_node_and_start(
    master: &Node,
    node: Node,
    token_args: &[&str],
    env: &[(&str, &str)],
) -> (Node, Daemon) {
    let token = create_token(master, token_args);
    let name = node.name.as_str();
    let out = nodectl(
        node.dir(),
        &[
            "join",
            &token,
            "--node-name",
            name,
            "--address",
            &node.address,
        ],
    );
    assert!(
        out.status.success(),
        "join {name}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let daemon = Daemon::start_env(&node, &[], env);
    (node, daemon)
}

/// Raises this process's open-file limit to at least `needed` (the hard
/// limit too when it is lower, which needs root, as in CI).
pub fn raise_fd_limit(needed: u64) {
    use rlimit::Resource;
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).unwrap();
    if soft >= needed {
        return;
    }
    rlimit::setrlimit(Resource::NOFILE, needed, hard.max(needed)).unwrap_or_else(|e| {
        panic!("this test needs {needed} open files (soft {soft}, hard {hard}): {e}")
    });
}

/// Runs `curl` against `url`; returns (HTTP status, body).
pub fn curl(url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl failed: {}", text(&out.stderr));
    let all = text(&out.stdout);
    let (body, status) = all.rsplit_once('\n').unwrap();
    (status.to_owned(), body.to_owned())
}

/// The value of the sample named exactly `series` (name and labels).
pub fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

/// Installs nftables when `nft` is missing (once per test run); false when
/// it cannot be had and this is not root, where the partition tests are
/// skipped. As root (CI) a missing nftables fails them.
pub fn have_nft() -> bool {
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;
    static HAVE: OnceLock<bool> = OnceLock::new();
    let found = || {
        Command::new("nft")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    *HAVE.get_or_init(|| {
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !found() && !apt(&["install", "-y", "-q", "nftables"]) {
            // The package lists may be missing (a fresh container).
            let _ = apt(&["update", "-q"]) && apt(&["install", "-y", "-q", "nftables"]);
        }
        if found() {
            return true;
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| text(&o.stdout).trim() == "0");
        assert!(!root, "nftables is missing and apt-get could not install it");
        eprintln!("*** SKIPPED: the partition tests need nftables (nft), which is missing and cannot be installed without root ***");
        false
    })
}

/// A table of nftables rules that drop packets on loopback, deleted when
/// dropped (even when the test fails).
pub struct Partition {
    table: String,
}

impl Partition {
    /// Drops the packets going to `node`'s listening address and, with
    /// `both_ways`, those it sends from it.
    ///
    /// Keyed on the node's address and port: other nodes on the same
    /// loopback address (other tests) are not cut. Nothing but the master
    /// talks to the node during these tests: that is the partition between
    /// them.
    pub fn new(case: &str, node: &Node, both_ways: bool) -> Partition {
        let (ip, port) = node.address.rsplit_once(':').unwrap();
        assert!(ip.starts_with("127."), "{ip} is not a loopback address");
        let mut rules = format!("ip daddr {ip} tcp dport {port} drop\n");
        if both_ways {
            rules.push_str(&format!("ip saddr {ip} tcp sport {port} drop\n"));
        }
        Self::with_rules(case, &rules)
    }

    /// Drops every packet from and to `node`'s address (its daemon's and
    /// its nodectl's: a node's connections leave from its own address).
    /// The address must be the test's own.
    pub fn isolate(case: &str, node: &Node) -> Partition {
        let (ip, _) = node.address.rsplit_once(':').unwrap();
        assert!(
            ip.starts_with("127.") && ip != "127.0.0.1",
            "{ip} is not a node's own loopback address"
        );
        Self::with_rules(case, &format!("ip saddr {ip} drop\nip daddr {ip} drop\n"))
    }

    /// A table of the test's own (named after this process, `case` and a
    /// number no other partition of this process has: tests run at once,
    /// and one's table going must not take another's rules with it) with
    /// `rules` in its output chain.
    fn with_rules(case: &str, rules: &str) -> Partition {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = format!("noded_test_{}_{case}_{n}", std::process::id());
        let script = format!(
            "table ip {table} {{\n chain out {{\n type filter hook output priority 0; policy accept;\n{rules} }}\n}}\n"
        );
        // The guard exists before the table does: a half-made one goes too.
        let partition = Partition { table };
        let out = nft(&["-f", "-"], &script);
        assert!(
            out.status.success(),
            "nft -f: {}{script}",
            text(&out.stderr)
        );
        partition
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let out = nft(&["delete", "table", "ip", &self.table], "");
        if !out.status.success() && !std::thread::panicking() {
            panic!("nft delete table {}: {}", self.table, text(&out.stderr));
        }
    }
}

/// Runs `nft ARGS` with `input` on its stdin.
pub fn nft(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// A change to the machine that a test makes with a command and always
/// takes back with another when dropped (best effort): see [`undone`].
pub struct Undo(Command);

/// Runs `change`, which must succeed (`why` says what it needs), and
/// returns the guard that runs `undo` when dropped.
pub fn undone(mut change: Command, undo: Command, why: &str) -> Undo {
    let ok = change.status().is_ok_and(|s| s.success());
    assert!(ok, "{why}");
    Undo(undo)
}

impl Drop for Undo {
    fn drop(&mut self) {
        let _ = self.0.status();
    }
}

/// Makes a directory refuse new entries (`chattr +i`) until dropped: a
/// state directory on a full or read-only disk, for root too.
pub fn immutable(dir: &std::path::Path) -> Undo {
    let chattr = |flag: &str| {
        let mut command = std::process::Command::new("chattr");
        command.arg(flag).arg(dir);
        command
    };
    undone(
        chattr("+i"),
        chattr("-i"),
        &format!("chattr +i {}", dir.display()),
    )
}

/// `name`'s entry in the master's `list --json`.
pub fn listed(m: &Node, name: &str) -> serde_json::Value {
    let out = nodectl(m.dir(), &["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not listed: {doc}"))
}
