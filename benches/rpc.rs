//! Benchmark of noded's RPC path and of its authorization check.
//!
//! `scripts/bench` starts a daemon and runs this target against it; the
//! figures end up in `BENCHMARKS.md`. Phases (all by default, or a subset
//! with `--only`):
//!
//! - `rpc`: Ping round trips over ONE persistent connection, back to back.
//! - `paced`: the same, paced at `--rate` calls per second (default 1,000).
//! - `connect`: a new connection (TCP + full mTLS 1.3 handshake) plus one
//!   Ping, sequentially and from `--concurrency` tasks at once.
//! - `authz`: the cost of the authorization check itself
//!   (`CandidateMap::lookup_der`, SHA-256 included) for maps of 10, 1,000
//!   and 100,000 entries, next to the webpki chain check it follows.
//!
//! Every figure is printed on stdout as one `key value` line. With
//! `--server-pid`, the daemon's CPU time per operation is reported as well
//! (from `/proc/PID/stat`).
//!
//! ```text
//! rpc --state-dir DIR --addr HOST:PORT [--node NAME] [--seconds S]
//!     [--paced-seconds S] [--rate R] [--connect-seconds S] [--concurrency N]
//!     [--server-pid PID] [--clk-tck HZ] [--only rpc,paced,connect,authz]
//! ```
//!
//! `--state-dir` and `--addr` may also come from `NODED_BENCH_STATE_DIR` and
//! `NODED_BENCH_ADDR`.

use std::error::Error;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use noded::daemon::auth::{authorize, CandidateVerifier, PeerCertificate};
use noded::daemon::reload::CandidateMapHandle;
use noded::rpc::{Connection, RpcClient};
use noded::state::StateDir;
use noded::wire::{Procedure, Reply};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, UnixTime};
use ssconf::{CandidateMap, CertDigest, DigestAlgorithm};

type BoxError = Box<dyn Error + Send + Sync>;
type BoxResult<T> = Result<T, BoxError>;

const PHASES: [&str; 8] = [
    "memory",
    "rpc",
    "paced",
    "concurrent",
    "connect",
    "upload",
    "revoke",
    "authz",
];

#[derive(Debug)]
struct Args {
    state_dir: PathBuf,
    addr: String,
    node: String,
    seconds: f64,
    paced_seconds: f64,
    rate: f64,
    connect_seconds: f64,
    concurrency: usize,
    server_pid: Option<u32>,
    clk_tck: f64,
    phases: Vec<String>,
    /// Persistent connections, one Ping in flight on each, per run.
    conns: Vec<usize>,
    upload_bytes: usize,
    uploads: usize,
    trials: usize,
    /// Idle connections held open, cumulatively, for the memory figures.
    idle_conns: Vec<usize>,
}

const USAGE: &str = "usage: rpc --state-dir DIR --addr HOST:PORT [--node NAME] [--seconds S] \
[--paced-seconds S] [--rate R] [--connect-seconds S] [--concurrency N] [--server-pid PID] \
[--clk-tck HZ] [--conns 1,8,64] [--upload-bytes B] [--uploads N] [--trials N] \
[--idle-conns 1000,10000] [--only memory,rpc,paced,concurrent,connect,upload,revoke,authz]";

fn list(value: &str) -> BoxResult<Vec<usize>> {
    value
        .split(',')
        .map(|n| Ok(n.trim().parse::<usize>()?))
        .collect()
}

fn parse_args() -> BoxResult<Args> {
    let mut args = Args {
        state_dir: std::env::var_os("NODED_BENCH_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_default(),
        addr: std::env::var("NODED_BENCH_ADDR").unwrap_or_default(),
        node: "bench".to_owned(),
        seconds: 10.0,
        paced_seconds: 30.0,
        rate: 1000.0,
        connect_seconds: 10.0,
        concurrency: 8,
        server_pid: None,
        clk_tck: 100.0,
        phases: PHASES.iter().map(|p| (*p).to_owned()).collect(),
        conns: vec![1, 8, 64],
        upload_bytes: 16 << 20,
        uploads: 8,
        trials: 100,
        idle_conns: vec![1_000, 10_000],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` appends `--bench` to a harness-less target's arguments.
        if flag == "--bench" {
            continue;
        }
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--state-dir" => args.state_dir = PathBuf::from(value),
            "--addr" => args.addr = value,
            "--node" => args.node = value,
            "--seconds" => args.seconds = value.parse()?,
            "--paced-seconds" => args.paced_seconds = value.parse()?,
            "--rate" => args.rate = value.parse()?,
            "--connect-seconds" => args.connect_seconds = value.parse()?,
            "--concurrency" => args.concurrency = value.parse()?,
            "--server-pid" => args.server_pid = Some(value.parse()?),
            "--clk-tck" => args.clk_tck = value.parse()?,
            "--conns" => args.conns = list(&value)?,
            "--upload-bytes" => args.upload_bytes = value.parse()?,
            "--uploads" => args.uploads = value.parse()?,
            "--trials" => args.trials = value.parse()?,
            "--idle-conns" => args.idle_conns = list(&value)?,
            "--only" => {
                args.phases = value.split(',').map(str::to_owned).collect();
                if let Some(bad) = args.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    return Err(
                        format!("unknown phase {bad:?}; phases: {}", PHASES.join(",")).into(),
                    );
                }
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    if args.state_dir.as_os_str().is_empty() {
        return Err(format!("--state-dir (or NODED_BENCH_STATE_DIR) is required\n{USAGE}").into());
    }
    let needs_daemon = args.phases.iter().any(|p| p != "authz");
    if needs_daemon && args.addr.is_empty() {
        return Err(format!("--addr (or NODED_BENCH_ADDR) is required\n{USAGE}").into());
    }
    if args.rate.is_nan() || args.rate <= 0.0 || args.concurrency == 0 {
        return Err("--rate and --concurrency must be positive".into());
    }
    Ok(args)
}

fn main() -> BoxResult<()> {
    let args = parse_args()?;
    let state = StateDir::new(&args.state_dir);
    for phase in &args.phases {
        match phase.as_str() {
            "memory" => bench_memory(&args, &state)?,
            "rpc" => bench_rpc(&args, &state)?,
            "concurrent" => bench_concurrent(&args, &state)?,
            "upload" => bench_upload(&args, &state)?,
            "revoke" => bench_revoke(&args, &state)?,
            "paced" => bench_paced(&args, &state)?,
            "connect" => bench_connect(&args, &state)?,
            "authz" => bench_authz(&state)?,
            _ => {}
        }
    }
    Ok(())
}

fn out(key: &str, value: impl std::fmt::Display) {
    println!("{key} {value}");
}

// ---------------------------------------------------------------- CPU time

/// User + system CPU seconds of process `pid` (all threads).
fn cpu_seconds(pid: &str, clk_tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime field 14, stime field 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck)
}

/// CPU seconds the whole machine spent busy (every CPU, from `/proc/stat`).
fn machine_busy_seconds(clk_tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Some(busy / clk_tck)
}

/// CPU time of this process, of the daemon and of the whole machine over one
/// measurement.
struct CpuMeter {
    clk_tck: f64,
    server: Option<String>,
    wall_start: Instant,
    client_start: Option<f64>,
    server_start: Option<f64>,
    machine_start: Option<f64>,
}

impl CpuMeter {
    fn start(args: &Args) -> Self {
        let server = args.server_pid.map(|p| p.to_string());
        CpuMeter {
            clk_tck: args.clk_tck,
            wall_start: Instant::now(),
            client_start: cpu_seconds("self", args.clk_tck),
            server_start: server.as_deref().and_then(|p| cpu_seconds(p, args.clk_tck)),
            machine_start: machine_busy_seconds(args.clk_tck),
            server,
        }
    }

    /// Prints CPU microseconds per operation, client and daemon, and the
    /// share of the machine other processes took meanwhile (noise).
    fn report(&self, prefix: &str, ops: usize) {
        let wall = self.wall_start.elapsed().as_secs_f64();
        let delta = |start: Option<f64>, now: Option<f64>| Some(now? - start?);
        let client = delta(self.client_start, cpu_seconds("self", self.clk_tck));
        let server = delta(
            self.server_start,
            self.server
                .as_deref()
                .and_then(|p| cpu_seconds(p, self.clk_tck)),
        );
        let machine = delta(self.machine_start, machine_busy_seconds(self.clk_tck));
        if ops > 0 {
            if let Some(c) = client {
                let us = c * 1e6 / ops as f64;
                out(
                    &format!("{prefix}.client_cpu_us_per_op"),
                    format!("{us:.1}"),
                );
            }
            if let Some(c) = server {
                let us = c * 1e6 / ops as f64;
                out(
                    &format!("{prefix}.server_cpu_us_per_op"),
                    format!("{us:.1}"),
                );
            }
        }
        if let (Some(m), Some(c), Some(s)) = (machine, client, server) {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
            let other = ((m - c - s) * 100.0 / (wall * cpus).max(1e-9)).max(0.0);
            out(&format!("{prefix}.other_cpu_pct"), format!("{other:.0}"));
        }
    }
}

// ------------------------------------------------------------- statistics

/// Nearest-rank percentile of sorted nanosecond samples, in microseconds.
fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied().unwrap_or_default() as f64 / 1e3
}

/// Prints count, rate and latency percentiles of `samples` (nanoseconds).
fn report_latencies(prefix: &str, samples: &mut [u64], elapsed: Duration) {
    samples.sort_unstable();
    let n = samples.len();
    let mean = if n == 0 {
        0.0
    } else {
        samples.iter().map(|&s| s as f64).sum::<f64>() / n as f64 / 1e3
    };
    out(&format!("{prefix}.count"), n);
    out(
        &format!("{prefix}.seconds"),
        format!("{:.3}", elapsed.as_secs_f64()),
    );
    out(
        &format!("{prefix}.per_sec"),
        format!("{:.1}", n as f64 / elapsed.as_secs_f64().max(1e-9)),
    );
    out(&format!("{prefix}.mean_us"), format!("{mean:.1}"));
    for (name, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)] {
        out(
            &format!("{prefix}.{name}_us"),
            format!("{:.1}", percentile_us(samples, p)),
        );
    }
    out(
        &format!("{prefix}.max_us"),
        format!("{:.1}", percentile_us(samples, 100.0)),
    );
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// -------------------------------------------------------------------- RPC

async fn ping(conn: &mut Connection) -> BoxResult<()> {
    match conn.call(Procedure::Ping).await? {
        Reply::Pong { .. } => Ok(()),
        other => Err(format!("unexpected reply to ping: {other:?}").into()),
    }
}

/// A single-threaded runtime: the benchmark's client is one task, and
/// the current-thread scheduler adds no cross-thread wake-up to its calls.
fn current_thread() -> BoxResult<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Back-to-back Pings over one persistent connection.
fn bench_rpc(args: &Args, state: &StateDir) -> BoxResult<()> {
    let client = RpcClient::from_state(state)?;
    current_thread()?.block_on(async {
        let mut conn = client.connect(&args.node, &args.addr).await?;
        for _ in 0..2000 {
            ping(&mut conn).await?;
        }
        let run = Duration::from_secs_f64(args.seconds);
        let mut samples = Vec::with_capacity(1 << 20);
        let cpu = CpuMeter::start(args);
        let start = Instant::now();
        while start.elapsed() < run {
            let sent = Instant::now();
            ping(&mut conn).await?;
            samples.push(nanos(sent.elapsed()));
        }
        let elapsed = start.elapsed();
        cpu.report("rpc.unthrottled", samples.len());
        report_latencies("rpc.unthrottled", &mut samples, elapsed);
        Ok(())
    })
}

/// How long before a paced send the client stops sleeping and spins.
const SPIN: Duration = Duration::from_micros(200);

/// Pings over one persistent connection, each sent at its scheduled time
/// (`start + i / rate`). Latency is measured from the actual send; the
/// latency from the scheduled send (which also counts any queueing when
/// the client falls behind, i.e. corrected for coordinated omission) is
/// reported next to it.
fn bench_paced(args: &Args, state: &StateDir) -> BoxResult<()> {
    let client = RpcClient::from_state(state)?;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    current_thread()?.block_on(async {
        let mut conn = client.connect(&args.node, &args.addr).await?;
        for _ in 0..500 {
            ping(&mut conn).await?;
        }
        let calls = (args.paced_seconds * args.rate).round().max(1.0) as u32;
        let mut service = Vec::with_capacity(calls as usize);
        let mut from_schedule = Vec::with_capacity(calls as usize);
        let mut late = 0usize;
        let cpu = CpuMeter::start(args);
        let start = Instant::now() + Duration::from_millis(10);
        for i in 0..calls {
            let due = start + interval * i;
            // A thread sleep (the runtime has nothing else to do; finer than
            // tokio's 1 ms timer wheel), then a short spin to the exact time.
            let now = Instant::now();
            if due > now + SPIN {
                std::thread::sleep(due - now - SPIN);
            }
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            let sent = Instant::now();
            if sent.saturating_duration_since(due) > interval {
                late += 1;
            }
            ping(&mut conn).await?;
            let done = Instant::now();
            service.push(nanos(done - sent));
            from_schedule.push(nanos(done.saturating_duration_since(due)));
        }
        let elapsed = start.elapsed();
        cpu.report("rpc.paced", service.len());
        out("rpc.paced.target_per_sec", format!("{:.0}", args.rate));
        out("rpc.paced.late_sends", late);
        report_latencies("rpc.paced", &mut service, elapsed);
        report_latencies("rpc.paced_from_schedule", &mut from_schedule, elapsed);
        Ok(())
    })
}

/// New connection (TCP + mTLS handshake) plus one Ping, timed as a whole.
async fn connect_and_ping(client: &RpcClient, node: &str, addr: &str) -> BoxResult<u64> {
    let start = Instant::now();
    let mut conn = client.connect(node, addr).await?;
    ping(&mut conn).await?;
    let took = nanos(start.elapsed());
    drop(conn);
    Ok(took)
}

fn bench_connect(args: &Args, state: &StateDir) -> BoxResult<()> {
    let client = RpcClient::from_state(state)?;
    let run = Duration::from_secs_f64(args.connect_seconds);

    // Sequential: one connection at a time.
    current_thread()?.block_on(async {
        for _ in 0..20 {
            connect_and_ping(&client, &args.node, &args.addr).await?;
        }
        let mut samples = Vec::new();
        let cpu = CpuMeter::start(args);
        let start = Instant::now();
        while start.elapsed() < run {
            samples.push(connect_and_ping(&client, &args.node, &args.addr).await?);
        }
        let elapsed = start.elapsed();
        cpu.report("connect.sequential", samples.len());
        report_latencies("connect.sequential", &mut samples, elapsed);
        Ok::<(), BoxError>(())
    })?;

    // Concurrent: N tasks, each connecting in a loop, on a multi-threaded
    // runtime with one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let concurrency = args.concurrency;
        let cpu = CpuMeter::start(args);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let client = client.clone();
            let node = args.node.clone();
            let addr = args.addr.clone();
            tasks.spawn(async move {
                let mut samples = Vec::new();
                while start.elapsed() < run {
                    samples.push(connect_and_ping(&client, &node, &addr).await?);
                }
                Ok::<Vec<u64>, BoxError>(samples)
            });
        }
        let mut samples = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            samples.extend(joined??);
        }
        let elapsed = start.elapsed();
        let prefix = "connect.concurrent";
        out(&format!("{prefix}.tasks"), concurrency);
        cpu.report(prefix, samples.len());
        report_latencies(prefix, &mut samples, elapsed);
        Ok(())
    })
}

/// A multi-threaded client runtime, one worker per core.
fn multi_thread() -> BoxResult<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Round trips over `--conns` persistent connections at once (1, 8, 64 by
/// default), each with one Ping in flight at a time.
fn bench_concurrent(args: &Args, state: &StateDir) -> BoxResult<()> {
    let client = RpcClient::from_state(state)?;
    let run = Duration::from_secs_f64(args.seconds);
    multi_thread()?.block_on(async {
        for &conns in &args.conns {
            let mut connections = Vec::with_capacity(conns);
            for _ in 0..conns {
                let mut conn = client.connect(&args.node, &args.addr).await?;
                for _ in 0..100 {
                    ping(&mut conn).await?;
                }
                connections.push(conn);
            }
            let cpu = CpuMeter::start(args);
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for mut conn in connections {
                tasks.spawn(async move {
                    let mut samples = Vec::with_capacity(1 << 16);
                    while start.elapsed() < run {
                        let sent = Instant::now();
                        ping(&mut conn).await?;
                        samples.push(nanos(sent.elapsed()));
                    }
                    Ok::<Vec<u64>, BoxError>(samples)
                });
            }
            let mut samples = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                samples.extend(joined??);
            }
            let elapsed = start.elapsed();
            let prefix = format!("rpc.conc{conns}");
            cpu.report(&prefix, samples.len());
            report_latencies(&prefix, &mut samples, elapsed);
        }
        Ok(())
    })
}

/// `--uploads` Echo calls of `--upload-bytes` each over one connection:
/// the time from the call to its (small) reply, so encoding, TLS, the
/// daemon's read and decode all count.
fn bench_upload(args: &Args, state: &StateDir) -> BoxResult<()> {
    let client = RpcClient::from_state(state)?;
    let payload = vec![0x5a_u8; args.upload_bytes];
    let frame_len = noded::wire::encode(&noded::wire::Request {
        version: noded::wire::PROTOCOL_VERSION,
        id: u64::from(u32::MAX),
        procedure: Procedure::Echo {
            payload: payload.clone(),
        },
    })?
    .len();
    out("upload.payload_bytes", payload.len());
    out("upload.frame_bytes", frame_len);
    current_thread()?.block_on(async {
        let mut conn = client.connect(&args.node, &args.addr).await?;
        let mut seconds = Vec::with_capacity(args.uploads);
        let mut busy = 0.0;
        let cpu = CpuMeter::start(args);
        for i in 0..=args.uploads {
            let procedure = Procedure::Echo {
                payload: payload.clone(),
            };
            let start = Instant::now();
            match conn.call(procedure).await? {
                Reply::Echoed { len } if len == payload.len() as u64 => {}
                other => return Err(format!("unexpected reply to echo: {other:?}").into()),
            }
            // The first upload warms the connection and both allocators.
            if i > 0 {
                let took = start.elapsed().as_secs_f64();
                busy += took;
                seconds.push(took);
            }
        }
        cpu.report("upload", seconds.len());
        seconds.sort_by(f64::total_cmp);
        let mib = payload.len() as f64 / f64::from(1u32 << 20);
        if let (Some(best), Some(median)) = (seconds.first(), seconds.get(seconds.len() / 2)) {
            out("upload.count", seconds.len());
            out("upload.best_ms", format!("{:.1}", best * 1e3));
            out("upload.median_ms", format!("{:.1}", median * 1e3));
            out("upload.best_mib_s", format!("{:.0}", mib / best));
            out("upload.median_mib_s", format!("{:.0}", mib / median));
            out(
                "upload.mean_mib_s",
                format!("{:.0}", mib * seconds.len() as f64 / busy),
            );
        }
        Ok(())
    })
}

/// Replaces the map file the way nodectl does (temporary file, fsync,
/// rename, fsync of the directory); returns the instant of the rename.
fn land_map(path: &std::path::Path, text: &str) -> BoxResult<Instant> {
    use std::io::Write;
    let dir = path.parent().ok_or("the map path has no directory")?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the map path has no file name")?;
    let tmp = dir.join(format!(".{name}.tmp-bench"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    let at = Instant::now();
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(at)
}

/// Revocation latency over `--trials` trials: an admitted connection is
/// open; a map without the client's digest lands; measured from the
/// rename until (a) a new handshake is refused (the client retries back to
/// back) and (b) the open connection is closed by the daemon. Then the
/// original map lands again and the client waits to be admitted.
fn bench_revoke(args: &Args, state: &StateDir) -> BoxResult<()> {
    let client = RpcClient::from_state(state)?;
    let path = ssconf::Ssconf::candidate_map_path(&state.ssconf_dir());
    let original = std::fs::read_to_string(&path)?;
    let without = CandidateMap::from_entries([(
        fake_uuid(0),
        DigestAlgorithm::Sha256.digest(b"not the bench client"),
    )])
    .render();
    let limit = Duration::from_secs(10);
    let result = multi_thread()?.block_on(async {
        let mut refused = Vec::with_capacity(args.trials);
        let mut closed = Vec::with_capacity(args.trials);
        let mut readmitted = Vec::with_capacity(args.trials);
        let mut attempts = 0usize;
        let start = Instant::now();
        for _ in 0..args.trials {
            let mut held = client.connect(&args.node, &args.addr).await?;
            ping(&mut held).await?;
            let watcher = tokio::spawn(async move {
                // Ends with a clean close (close_notify) or an error.
                let _ = held.read_response().await;
                Instant::now()
            });
            let landed = land_map(&path, &without)?;
            loop {
                attempts += 1;
                if connect_and_ping(&client, &args.node, &args.addr)
                    .await
                    .is_err()
                {
                    refused.push(nanos(landed.elapsed()));
                    break;
                }
                if landed.elapsed() > limit {
                    return Err("new handshakes still admitted 10 s after the map landed".into());
                }
            }
            let closed_at = tokio::time::timeout(limit, watcher)
                .await
                .map_err(|_| "open connection still open 10 s after the map landed")??;
            closed.push(nanos(closed_at.saturating_duration_since(landed)));
            let landed = land_map(&path, &original)?;
            loop {
                if connect_and_ping(&client, &args.node, &args.addr)
                    .await
                    .is_ok()
                {
                    readmitted.push(nanos(landed.elapsed()));
                    break;
                }
                if landed.elapsed() > limit {
                    return Err("not admitted again 10 s after the map was restored".into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let elapsed = start.elapsed();
        out("revoke.trials", refused.len());
        out("revoke.attempts_per_trial", attempts / refused.len().max(1));
        report_latencies("revoke.refused", &mut refused, elapsed);
        report_latencies("revoke.closed", &mut closed, elapsed);
        report_latencies("revoke.readmitted", &mut readmitted, elapsed);
        Ok::<(), BoxError>(())
    });
    // Whatever happened, leave the original map in place.
    land_map(&path, &original)?;
    result
}

/// Resident set size of process `pid` (or "self"), KiB.
fn rss_kib(pid: &str) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// One "<field> N kB" line of `/proc/<pid>/status`, KiB.
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The daemon's RSS idle, then with `--idle-conns` admitted connections
/// open (each served one Ping, then left idle), opened 64 at a time.
fn bench_memory(args: &Args, state: &StateDir) -> BoxResult<()> {
    let pid = args
        .server_pid
        .ok_or("the memory phase needs --server-pid")?
        .to_string();
    let daemon_rss = || rss_kib(&pid).ok_or("cannot read the daemon's VmRSS");
    let client = RpcClient::from_state(state)?;
    let idle = daemon_rss()?;
    out("memory.idle_rss_kib", idle);
    // What the idle figure is made of: the daemon's own memory (heap,
    // stacks) against the pages of its executable and libraries it maps.
    for (key, field) in [
        ("memory.idle_rss_anon_kib", "RssAnon:"),
        ("memory.idle_rss_file_kib", "RssFile:"),
    ] {
        out(
            key,
            status_kib(&pid, field).ok_or("cannot read the daemon's status")?,
        );
    }
    multi_thread()?.block_on(async {
        let mut held: Vec<Connection> = Vec::new();
        for &target in &args.idle_conns {
            let start = Instant::now();
            while held.len() < target {
                let mut batch = tokio::task::JoinSet::new();
                for _ in 0..(target - held.len()).min(64) {
                    let client = client.clone();
                    let node = args.node.clone();
                    let addr = args.addr.clone();
                    batch.spawn(async move {
                        let mut conn = client.connect(&node, &addr).await?;
                        ping(&mut conn).await?;
                        Ok::<Connection, BoxError>(conn)
                    });
                }
                while let Some(joined) = batch.join_next().await {
                    held.push(joined??);
                }
            }
            let opened = start.elapsed();
            // Let the daemon finish whatever the last handshakes left.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = daemon_rss()?;
            let prefix = format!("memory.conns{target}");
            out(
                &format!("{prefix}.open_seconds"),
                format!("{:.1}", opened.as_secs_f64()),
            );
            out(&format!("{prefix}.rss_kib"), rss);
            out(
                &format!("{prefix}.per_conn_kib"),
                format!("{:.1}", rss.saturating_sub(idle) as f64 / target as f64),
            );
        }
        if let Some(rss) = rss_kib("self") {
            out("memory.client_rss_kib", rss);
        }
        Ok::<(), BoxError>(())
    })?;
    // The connections are gone; give the daemon a moment to close them.
    std::thread::sleep(Duration::from_secs(1));
    if let Some(rss) = rss_kib(&pid) {
        out("memory.after_close_rss_kib", rss);
    }
    Ok(())
}

// ---------------------------------------------------------- authorization

/// Nanoseconds per call of `f`: the fastest of seven batches sized to take
/// about 20 ms each (other processes on the machine only ever add time).
fn ns_per_op<R>(mut f: impl FnMut() -> R) -> f64 {
    let mut iters: u64 = 1;
    loop {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        if start.elapsed() >= Duration::from_millis(20) || iters >= 1 << 30 {
            break;
        }
        iters *= 2;
    }
    let mut batches: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(f());
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches.first().copied().unwrap_or_default()
}

/// A node uuid for fake map entry `i`.
fn fake_uuid(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i, i)
}

fn bench_authz(state: &StateDir) -> BoxResult<()> {
    let certs = noded::pki::load_certs(&state.client_pem())?;
    let cert = certs.first().ok_or("client.pem holds no certificate")?;
    let server_certs = noded::pki::load_certs(&state.server_pem())?;
    let stranger = server_certs
        .first()
        .ok_or("server.pem holds no certificate")?;
    let der: &[u8] = cert.as_ref();
    let cert_digest = DigestAlgorithm::Sha256.digest(der);

    out("authz.cert_der_bytes", der.len());
    out(
        "authz.sha256_ns",
        format!(
            "{:.0}",
            ns_per_op(|| DigestAlgorithm::Sha256.digest(black_box(der)))
        ),
    );

    // Certificate-sized blobs that stand for other candidates' certificates,
    // so lookups also touch entries spread over the map (not one hot one).
    let blob = |i: usize| -> Vec<u8> {
        let mut b = der.to_vec();
        let tail = b.len().saturating_sub(8);
        if let Some(t) = b.get_mut(tail..) {
            t.copy_from_slice(&(i as u64).to_le_bytes());
        }
        b
    };

    let mut big_map = None;
    for size in [10usize, 1_000, 100_000] {
        let others = size - 1;
        let rotating: Vec<Vec<u8>> = (0..others.min(1024)).map(blob).collect();
        let mut entries: Vec<(String, CertDigest)> = Vec::with_capacity(size);
        for i in 0..others {
            let digest = match rotating.get(i) {
                Some(b) => DigestAlgorithm::Sha256.digest(b),
                None => DigestAlgorithm::Sha256.digest(&(i as u64).to_le_bytes()),
            };
            entries.push((fake_uuid(i), digest));
        }
        entries.push(("bench-master".to_owned(), cert_digest));
        let built = Instant::now();
        let map = CandidateMap::from_entries(entries);
        let build_ms = built.elapsed().as_secs_f64() * 1e3;
        let text = map.render();
        let parsed = Instant::now();
        let reparsed = CandidateMap::parse(&text, std::path::Path::new("bench"))?;
        let parse_ms = parsed.elapsed().as_secs_f64() * 1e3;
        if reparsed.len() != size || map.lookup_der(der).is_none() {
            return Err(format!("map of {size} entries was not built as expected").into());
        }
        let prefix = format!("authz.map{size}");
        out(&format!("{prefix}.entries"), map.len());
        out(&format!("{prefix}.build_ms"), format!("{build_ms:.2}"));
        out(&format!("{prefix}.parse_ms"), format!("{parse_ms:.2}"));
        out(
            &format!("{prefix}.lookup_der_hit_ns"),
            format!(
                "{:.0}",
                ns_per_op(|| map.lookup_der(black_box(der)).is_some())
            ),
        );
        let mut i = 0usize;
        out(
            &format!("{prefix}.lookup_der_rotating_ns"),
            format!(
                "{:.0}",
                ns_per_op(|| {
                    i = i.wrapping_add(1);
                    rotating
                        .get(i % rotating.len().max(1))
                        .and_then(|b| map.lookup_der(b))
                        .is_some()
                })
            ),
        );
        out(
            &format!("{prefix}.lookup_der_miss_ns"),
            format!(
                "{:.0}",
                ns_per_op(|| map.lookup_der(black_box(stranger.as_ref())).is_none())
            ),
        );
        out(
            &format!("{prefix}.lookup_digest_ns"),
            format!(
                "{:.0}",
                ns_per_op(|| map.lookup(black_box(&cert_digest)).is_some())
            ),
        );
        out(
            &format!("{prefix}.authorize_ns"),
            format!(
                "{:.0}",
                ns_per_op(|| authorize(Ok(()), &map, &PeerCertificate::new(black_box(der))))
            ),
        );
        big_map = Some(map);
    }

    // The whole verifier rustls calls in the handshake: webpki's chain check
    // (an ECDSA P-256 verification) and then the map, here of 100,000.
    let mut roots = RootCertStore::empty();
    for ca in noded::pki::load_certs(&state.ca_pem())? {
        roots.add(ca)?;
    }
    let chain = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        noded::pki::provider::provider(),
    )
    .build()?;
    let handle = CandidateMapHandle::new(big_map.unwrap_or_default());
    // Not the master's anonymous-join mode: a certificate is required.
    let anonymous = Arc::new(AtomicBool::new(false));
    let full = CandidateVerifier::new(chain.clone(), handle, anonymous);
    let end_entity: &CertificateDer<'static> = cert;
    let now = UnixTime::now();
    full.verify_client_cert(end_entity, &[], now)?;
    out(
        "authz.verify_chain_us",
        format!(
            "{:.2}",
            ns_per_op(|| chain.verify_client_cert(end_entity, &[], now).is_ok()) / 1e3
        ),
    );
    out(
        "authz.verify_chain_and_map100000_us",
        format!(
            "{:.2}",
            ns_per_op(|| full.verify_client_cert(end_entity, &[], now).is_ok()) / 1e3
        ),
    );
    Ok(())
}
