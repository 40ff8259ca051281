//! Raft among the master and the candidates, measured with the real
//! binaries on loopback: commit latency (a change proposed to the leader's
//! daemon, until it is committed by a majority and applied) with 3 and 5
//! voters, and failover time (the leader's daemon killed with SIGKILL,
//! until a new leader has committed the config that names it) over
//! `BENCH_RAFT_TRIALS` trials (default 20).
//!
//! Prints a Markdown section on stdout; progress on stderr. Run by
//! `scripts/bench-raft`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use noded::rpc::RpcClient;
use noded::state::config::ClusterConfig;
use noded::state::StateDir;
use noded::wire::{Procedure, Reply};

const NODECTL: &str = env!("CARGO_BIN_EXE_nodectl");
const NODED: &str = env!("CARGO_BIN_EXE_noded");

struct Node {
    name: String,
    dir: PathBuf,
    address: String,
    daemon: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let child = Command::new(NODED)
            .arg("--state-dir")
            .arg(&self.dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&self.address).is_err() {
            assert!(Instant::now() < deadline, "{} does not listen", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn config(&self) -> Option<ClusterConfig> {
        let bytes = std::fs::read(self.dir.join("config.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn master(&self) -> String {
        self.config()
            .and_then(|c| c.master().ok().map(|m| m.name.clone()))
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn nodectl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(NODECTL)
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nodectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A cluster of `voters` candidates (the master included), each on its own
/// loopback address, every one a voter.
fn cluster(root: &Path, voters: usize) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..voters {
        let ip = format!("127.0.0.{}", 60 + i);
        let name = format!("n{i}");
        let dir = root.join(&name);
        let address = format!("{ip}:{}", free_port(&ip));
        let mut node = Node {
            name: name.clone(),
            dir,
            address: address.clone(),
            daemon: None,
        };
        if i == 0 {
            let pool = voters.to_string();
            nodectl(
                &node.dir,
                &[
                    "init",
                    "--cluster-name",
                    "bench",
                    "--node-name",
                    &name,
                    "--address",
                    &address,
                    "--candidate-pool-size",
                    &pool,
                ],
            );
        } else {
            let token = nodectl(&nodes[0].dir, &["token", "create", "--master-candidate"]);
            let token = token.lines().next().unwrap().to_owned();
            let out = Command::new(NODECTL)
                .arg("--state-dir")
                .arg(&node.dir)
                .args(["join", &token, "--node-name", &name, "--address", &address])
                .output()
                .unwrap();
            assert!(matches!(out.status.code(), Some(0 | 3)), "join {name}");
        }
        node.start();
        nodes.push(node);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = nodectl(&nodes[0].dir, &["status", "--json"]);
        let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
        if doc["voters"].as_array().map(Vec::len) == Some(voters) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "voters never reached {voters}: {doc}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    nodes
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `count` commits on the master's daemon, one after another, over one
/// connection: each records an audit entry (a whole-config entry, the
/// serial kept), the smallest real change. With `trail` the trail is first
/// filled to that many entries; each commit then replaces the last entry,
/// so the config keeps its size.
fn commit_latency(
    rt: &tokio::runtime::Runtime,
    master: &Node,
    count: usize,
    trail: usize,
) -> Vec<Duration> {
    let state = StateDir::new(&master.dir);
    rt.block_on(async {
        let client = RpcClient::from_state(&state).unwrap();
        let mut conn = client.connect(&master.name, &master.address).await.unwrap();
        let mut config = master.config().unwrap();
        while config.audit.len() < trail {
            config.audit.push(noded::state::users::AuditEntry::now(
                "bench",
                "fill",
                &config.audit.len().to_string(),
                "ok",
            ));
        }
        let mut times = Vec::with_capacity(count);
        for i in 0..count {
            config.audit.pop();
            noded::state::users::append(
                &mut config.audit,
                noded::state::users::AuditEntry::now("bench", "commit", &i.to_string(), "ok"),
            );
            let config_json = String::from_utf8(noded::state::to_json(&config).unwrap()).unwrap();
            let started = Instant::now();
            let reply = conn
                .call(Procedure::Propose {
                    base_serial: config.serial,
                    config_json,
                })
                .await
                .unwrap();
            times.push(started.elapsed());
            match reply {
                Reply::Committed { term, .. } => config.term = term,
                other => panic!("{other:?}"),
            }
        }
        times
    })
}

/// The leader killed `trials` times: from SIGKILL until a survivor holds
/// a config naming a new master (committed by the new leader, applied
/// there). The killed node is started again and followed before the next.
fn failover(nodes: &mut [Node], trials: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for trial in 0..trials {
        let leader = nodes[0].master();
        let li = nodes.iter().position(|n| n.name == leader).unwrap();
        let si = (li + 1) % nodes.len();
        let started = Instant::now();
        nodes[li].kill();
        loop {
            let now = nodes[si].master();
            if !now.is_empty() && now != leader {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no new leader");
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = started.elapsed();
        eprintln!("bench-raft: failover {trial}: {took:?}");
        times.push(took);
        nodes[li].start();
        let new = nodes[si].master();
        let deadline = Instant::now() + Duration::from_secs(30);
        while nodes[li].master() != new {
            assert!(Instant::now() < deadline, "{leader} did not follow {new}");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the restarted node's election timer settle.
        std::thread::sleep(Duration::from_secs(2));
    }
    times
}

/// One row of the table: `what`, then n, p50, p99 and max of `times`.
fn row(what: &str, times: &mut [Duration]) {
    times.sort();
    println!(
        "| {what} | {} | {} | {} | {} |",
        times.len(),
        ms(percentile(times, 0.5)),
        ms(percentile(times, 0.99)),
        ms(*times.last().unwrap())
    );
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let commits: usize = std::env::var("BENCH_RAFT_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let trials: usize = std::env::var("BENCH_RAFT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = tempfile::tempdir().unwrap();
    println!("## Raft: commit latency and failover time");
    println!();
    println!("`scripts/bench-raft` (`cargo bench --bench raft`): real daemons, each on its own");
    println!("loopback address (127.0.0.60 and up), every candidate a voter. A commit is one");
    println!("`propose` to the leader's daemon over a kept connection (the whole config with");
    println!("one more audit entry), answered once a majority stored it (each `fdatasync`ed)");
    println!("and the leader applied it (`config.json` written, fsynced). Failover: the");
    println!("leader's daemon killed with SIGKILL, until a survivor holds the config naming");
    println!("a new master (committed by the new leader); the killed node restarted and");
    println!("following before the next trial.");
    println!();
    println!("| | n | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for voters in [3usize, 5] {
        let dir = root.path().join(format!("v{voters}"));
        std::fs::create_dir_all(&dir).unwrap();
        eprintln!("bench-raft: {voters} voters");
        let nodes = cluster(&dir, voters);
        let mut times = commit_latency(&rt, &nodes[0], commits, 0);
        row(&format!("commit, {voters} voters"), &mut times);
        if voters == 3 {
            let mut nodes = nodes;
            let mut times = failover(&mut nodes, trials);
            row("failover, 3 voters", &mut times);
            // The trail at its cap: the whole config (about 1.3 MB of JSON)
            // travels in every entry.
            let master = nodes
                .iter()
                .position(|n| n.name == nodes[0].master())
                .unwrap();
            let mut times = commit_latency(&rt, &nodes[master], commits / 5, 10_000);
            row(
                "commit, 3 voters, a full audit trail (10,000 entries)",
                &mut times,
            );
            let mut times = failover(&mut nodes, trials.div_ceil(4));
            row("failover, 3 voters, a full audit trail", &mut times);
        }
    }
}
