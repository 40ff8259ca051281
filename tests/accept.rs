//! Which accept thread serves a connection: the one whose listener names
//! the CPU that processed the connection's SYN (`SO_INCOMING_CPU`). On
//! loopback that is the client's CPU, so a client pinned to a CPU is served
//! by that CPU's thread alone.

use std::time::Duration;

use crate::support::*;

/// Connections each pinned client makes.
const CONNECTIONS: u64 = 40;

/// The CPUs this process may run on, in order: noded, started from here,
/// inherits the mask and gives its listener `i` the `i`-th of them.
fn allowed_cpus() -> Vec<usize> {
    let set = rustix::thread::sched_getaffinity(None).unwrap();
    (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect()
}

/// Linux steers by `SO_INCOMING_CPU` among `SO_REUSEPORT` listeners since
/// 6.1.
fn kernel_steers() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 1)
}

/// Voluntary context switches of each `noded-accept-N` thread of `pid`,
/// indexed by N: a thread that serves a connection sleeps at least once
/// while it waits for the client, one that serves nothing hardly ever.
fn accept_thread_switches(pid: u32) -> Vec<u64> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let Some(index) = comm.trim().strip_prefix("noded-accept-") else {
            continue;
        };
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .unwrap();
        threads.push((index.parse::<usize>().unwrap(), switches));
    }
    threads.sort_unstable();
    threads.into_iter().map(|(_, switches)| switches).collect()
}

/// `CONNECTIONS` pings, each on a new connection, from a thread pinned to
/// `cpu`.
fn pings_from(cpu: usize, node: &Node) {
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            rustix::thread::sched_setaffinity(None, &set).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = client(node, Some(&node_identity(node)));
                for _ in 0..CONNECTIONS {
                    ping(&client, node).await.unwrap();
                }
            });
        });
    });
}

#[test]
fn a_client_pinned_to_a_cpu_is_served_by_that_cpus_accept_thread() {
    let cpus = allowed_cpus();
    if cpus.len() < 2 || !kernel_steers() {
        eprintln!("skipped: needs 2 CPUs and Linux 6.1 or later");
        return;
    }
    let node = init_master("steered1");
    let daemon = Daemon::start(&node, &[]);
    let threads = accept_thread_switches(daemon.pid()).len();
    assert!(
        threads >= 2,
        "{threads} accept threads on {} CPUs",
        cpus.len()
    );
    // Let start-up settle (Raft's first election, the first reload).
    std::thread::sleep(Duration::from_millis(500));
    for (index, &cpu) in cpus.iter().take(threads).enumerate() {
        let before = accept_thread_switches(daemon.pid());
        pings_from(cpu, &node);
        let after = accept_thread_switches(daemon.pid());
        let woke: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert!(
            woke[index] >= CONNECTIONS,
            "CPU {cpu}'s thread noded-accept-{index} woke {} times for {CONNECTIONS} \
             connections from that CPU (all threads: {woke:?})",
            woke[index]
        );
        for (other, &count) in woke.iter().enumerate() {
            if other != index {
                assert!(
                    count < CONNECTIONS / 4,
                    "noded-accept-{other} woke {count} times while a client on CPU {cpu} \
                     connected {CONNECTIONS} times (all threads: {woke:?})"
                );
            }
        }
    }
}
