//! Connection floods: the handshake budgets, the per-source cap and the
//! control-plane lane keep the master and the candidates served, through a
//! real `noded` and real TCP connections from other loopback addresses
//! (Linux routes all of 127.0.0.0/8 to loopback).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::support::*;

/// The first bytes of a ClientHello: a handshake record claiming 512 bytes
/// and a ClientHello header, then nothing more (a stalled handshake).
const PARTIAL_CLIENT_HELLO: [u8; 11] = [
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

/// Opens `count` TCP connections from `from` to `to`, all at once; returns
/// those that connected.
async fn connect_from(from: Ipv4Addr, to: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut set = JoinSet::new();
    for _ in 0..count {
        set.spawn(async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
            socket.connect(to).await
        });
    }
    let mut open = Vec::with_capacity(count);
    while let Some(joined) = set.join_next().await {
        if let Ok(stream) = joined.unwrap() {
            open.push(stream);
        }
    }
    open
}

/// Whether the daemon closes `stream` (EOF or reset) before `within`.
async fn closed_by_daemon(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn address(node: &Node) -> SocketAddr {
    node.address.parse().unwrap()
}

/// Scrapes `metrics` until `done` holds for the body; returns that body.
fn metrics_until(metrics: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = curl(&format!("http://{metrics}/metrics"));
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never reached: {what}\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the daemon has seen all `opened` connections: `held` in
/// the general lane's handshake, the rest refused for `reason`.
fn flood_seen(metrics: &str, opened: usize, held: usize, reason: &str) -> String {
    let body = metrics_until(metrics, "every connection accepted", |b| {
        in_handshake(b, "general") + refused(b, reason) >= opened as f64
    });
    assert_eq!(in_handshake(&body, "general"), held as f64, "{body}");
    assert_eq!(refused(&body, reason), (opened - held) as f64, "{body}");
    body
}

/// A daemon of `node` with metrics and `extra` flags, and a handshake
/// timeout long enough that nothing is freed by it during a test: the
/// budgets alone must keep the candidate served. Returns the daemon and
/// its metrics address.
fn start_daemon(node: &Node, extra: &[&str]) -> (Daemon, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--metrics", &metrics, "--handshake-timeout", "300"];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(node, &args);
    (daemon, metrics)
}

fn refused(body: &str, reason: &str) -> f64 {
    sample(
        body,
        &format!("noded_connections_refused_total{{reason=\"{reason}\"}}"),
    )
}

fn in_handshake(body: &str, lane: &str) -> f64 {
    sample(
        body,
        &format!("noded_handshakes_in_progress{{lane=\"{lane}\"}}"),
    )
}

/// Largest resident set the daemon may reach while 10,000 connections from
/// one source are held. Only 64 of them (the per-source cap) get past
/// accept, each a task and a rustls connection waiting for its ClientHello
/// (about 13 KiB, measured with 1,024 of them); the rest are closed at
/// accept and cost nothing once closed. A debug build idles at about
/// 17 MiB; 64 MiB leaves room for the allocator's caches while catching
/// per-connection memory that is not bounded (10,000 handshakes would add
/// about 130 MiB).
const RSS_BOUND_KIB: u64 = 64 * 1024;

const FLOOD: usize = 10_000;

/// 10,000 connections at once from 127.0.0.2, half silent and half stalled
/// after a partial ClientHello, held open: the candidate (127.0.0.1) is
/// served while they are held and after; the daemon's memory stays bounded;
/// the refusals are counted and logged with their reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_source_does_not_keep_candidates_out() {
    raise_fd_limit(FLOOD as u64 + 1024);
    let node = init_master("f1");
    let (daemon, metrics) = start_daemon(&node, &[]);
    let candidate = client(&node, Some(&node_identity(&node)));
    ping(&candidate, &node).await.unwrap();
    let idle_rss = daemon.rss_kib();
    let started = Instant::now();

    let mut flood = connect_from(Ipv4Addr::new(127, 0, 0, 2), address(&node), FLOOD).await;
    let opened = flood.len();
    assert!(opened >= FLOOD * 9 / 10, "only {opened} connections opened");
    for stream in flood.iter_mut().skip(1).step_by(2) {
        // Refused ones are already closed: a failed write is expected.
        let _ = stream.write_all(&PARTIAL_CLIENT_HELLO).await;
    }
    // The daemon has seen every connection: 64 wait in the handshake, the
    // rest were closed at accept.
    let body = flood_seen(&metrics, opened, 64, "handshake_per_source");
    assert_eq!(refused(&body, "handshake_limit"), 0.0, "{body}");

    for _ in 0..5 {
        ping(&candidate, &node).await.unwrap();
    }
    let rss = daemon.rss_kib();
    eprintln!(
        "flood of {opened} connections from 127.0.0.2: daemon VmRSS {rss} KiB (idle {idle_rss} KiB), {:?} since the first connect",
        started.elapsed()
    );
    assert!(
        rss < RSS_BOUND_KIB,
        "daemon VmRSS {rss} KiB with the flood held"
    );
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("pending handshakes per source"))
        .unwrap_or_else(|| panic!("no per-source denial logged: {log}"));
    assert!(line.contains("peer=127.0.0.2:"), "{line}");
    assert!(line.contains("limit of 64 pending handshakes per source reached"));

    drop(flood);
    let body = metrics_until(&metrics, "the held handshakes end", |b| {
        in_handshake(b, "general") == 0.0
    });
    assert_eq!(in_handshake(&body, "control_plane"), 0.0, "{body}");
    for _ in 0..5 {
        ping(&candidate, &node).await.unwrap();
    }
    eprintln!("flood test: {:?} from the first connect", started.elapsed());
}

/// A distributed flood: 1,200 connections from 200 addresses fill the
/// general lane (1,024), and the candidate, whose address is in ssconf,
/// is still served through its own lane, while another address is closed
/// at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_distributed_flood_leaves_the_control_plane_lane_free() {
    const SOURCES: u8 = 200;
    const PER_SOURCE: usize = 6;
    raise_fd_limit(u64::from(SOURCES) * PER_SOURCE as u64 + 1024);
    let node = init_master("f2");
    let (daemon, metrics) = start_daemon(&node, &[]);
    assert!(
        daemon
            .log()
            .contains("control-plane handshake lane: 1 addresses"),
        "{}",
        daemon.log()
    );

    let mut connecting = JoinSet::new();
    for host in 1..=SOURCES {
        let from = Ipv4Addr::new(127, 0, 1, host);
        connecting.spawn(connect_from(from, address(&node), PER_SOURCE));
    }
    let mut flood = Vec::new();
    while let Some(streams) = connecting.join_next().await {
        flood.extend(streams.unwrap());
    }
    let opened = flood.len();
    assert!(opened > 1024, "only {opened} connections opened");
    flood_seen(&metrics, opened, 1024, "handshake_limit");

    // The general lane is full: another address is closed at once...
    let mut outsider = connect_from(Ipv4Addr::new(127, 0, 0, 3), address(&node), 1).await;
    assert!(closed_by_daemon(&mut outsider[0], Duration::from_secs(10)).await);
    assert!(daemon.wait_log("handshake limit of 1024 reached", Duration::from_secs(5)));
    // ...and the candidate is served, several times.
    let candidate = client(&node, Some(&node_identity(&node)));
    for _ in 0..5 {
        ping(&candidate, &node).await.unwrap();
    }
    // 1,024 handshakes of about 13 KiB each on top of the idle daemon.
    let rss = daemon.rss_kib();
    eprintln!("distributed flood of {opened} connections: daemon VmRSS {rss} KiB");
    assert!(rss < 2 * RSS_BOUND_KIB, "daemon VmRSS {rss} KiB");
    drop(flood);
    metrics_until(&metrics, "the held handshakes end", |b| {
        in_handshake(b, "general") == 0.0
    });
    ping(&candidate, &node).await.unwrap();
}

/// Small budgets, each honoured: 3 handshakes per source, 8 per lane, 2
/// admitted connections; a slot freed is usable again.
#[tokio::test(flavor = "multi_thread")]
async fn small_budgets_are_honoured() {
    let node = init_master("f3");
    let (daemon, metrics) = start_daemon(
        &node,
        &[
            "--max-handshakes",
            "8",
            "--max-handshakes-per-source",
            "3",
            "--max-connections",
            "2",
        ],
    );
    let to = address(&node);
    let within = Duration::from_secs(10);

    // Per source: the fourth from 127.0.2.1 is closed at once.
    let mut held = connect_from(Ipv4Addr::new(127, 0, 2, 1), to, 3).await;
    metrics_until(&metrics, "3 handshakes", |b| {
        in_handshake(b, "general") == 3.0
    });
    let mut fourth = connect_from(Ipv4Addr::new(127, 0, 2, 1), to, 1).await;
    assert!(closed_by_daemon(&mut fourth[0], within).await);
    assert!(daemon.wait_log("limit of 3 pending handshakes per source", within));

    // Per lane: more sources, one connection each, fill the lane of 8; one
    // more is closed. A source whose keyed bucket happens to be the full
    // one of 127.0.2.1 (the cap is per bucket, so a collision is stricter)
    // is refused per source instead: counted, and the next host is used.
    let mut host = 2;
    let mut collisions;
    loop {
        held.extend(connect_from(Ipv4Addr::new(127, 0, 2, host), to, 1).await);
        host += 1;
        // Every connection so far is either pending or refused per source
        // (the fourth from 127.0.2.1 and any collision).
        let seen = held.len() as f64 + 1.0;
        let body = metrics_until(&metrics, "the connection seen", |b| {
            in_handshake(b, "general") + refused(b, "handshake_per_source") >= seen
        });
        collisions = refused(&body, "handshake_per_source") - 1.0;
        if in_handshake(&body, "general") == 8.0 {
            break;
        }
        assert!(host < 40, "the lane never filled: {body}");
    }
    let mut ninth = connect_from(Ipv4Addr::new(127, 0, 2, host), to, 1).await;
    assert!(closed_by_daemon(&mut ninth[0], within).await);
    assert!(daemon.wait_log("handshake limit of 8 reached", within));
    // The held ones are still open: not closed, just waiting.
    assert!(!closed_by_daemon(&mut held[0], Duration::from_millis(100)).await);

    // Admitted connections: 2 are served, a third is closed after its
    // handshake; the candidate is in its own lane, so the full general
    // lane does not matter.
    let candidate = client(&node, Some(&node_identity(&node)));
    let mut first = candidate.connect("f3", &node.address).await.unwrap();
    let mut second = candidate.connect("f3", &node.address).await.unwrap();
    first.call(noded::wire::Procedure::Ping).await.unwrap();
    second.call(noded::wire::Procedure::Ping).await.unwrap();
    assert!(
        ping(&candidate, &node).await.is_err(),
        "third connection served"
    );
    assert!(daemon.wait_log("connection limit of 2 reached", within));
    let digest = node_identity(&node)
        .digest(ssconf::DigestAlgorithm::Sha256)
        .to_string();
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("connection limit of 2 reached"))
        .unwrap_or_default();
    assert!(line.contains(&digest), "no digest in {line:?}");
    drop(first);
    assert!(
        eventually(&candidate, &node, true).await,
        "slot never freed"
    );

    let body = metrics_until(&metrics, "refusals counted", |b| {
        refused(b, "connection_limit") >= 1.0
    });
    assert_eq!(
        refused(&body, "handshake_per_source"),
        1.0 + collisions,
        "{body}"
    );
    assert_eq!(refused(&body, "handshake_limit"), 1.0, "{body}");
    assert_eq!(refused(&body, "control_plane_handshake_limit"), 0.0);
    assert_eq!(sample(&body, "noded_connections_open"), 1.0, "{body}");
    drop(held);
}

/// The daemon raises its soft open-file limit to what its budgets need,
/// and says in one line when the hard limit is too low.
#[test]
fn the_daemon_raises_its_open_file_limit() {
    let node = init_master("f4");
    // 2 connections + 2 lanes × 8 handshakes + 256 in reserve.
    let budgets = ["--max-connections", "2", "--max-handshakes", "8"];
    let daemon = Daemon::start_with_ulimit(&node, &budgets, "-S -n 64");
    assert!(
        daemon
            .log()
            .contains("open-file limit raised from 64 to 274"),
        "{}",
        daemon.log()
    );
    drop(daemon);
    let daemon = Daemon::start_with_ulimit(&node, &budgets, "-n 200");
    let log = daemon.log();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("open-file limit"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(
        warning.contains("is 200 (hard limit 200) but the connection budgets need 274"),
        "{warning}"
    );
}
