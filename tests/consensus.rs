//! Raft among the master and the candidates (SPEC §10): one master at a
//! time, no committed change lost, failover by itself, fencing by term.
//! Real daemons on distinct loopback addresses; faults by SIGSTOP, kill -9
//! and nftables rules the tests add and always remove.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// Long enough for an election (timeouts of 1–2 s, plus the old leader's
/// lease) on a loaded machine.
const ELECTED: Duration = Duration::from_secs(20);

fn ssconf_key(node: &Node, key: &str) -> String {
    std::fs::read_to_string(node.state.ssconf_dir().join(format!("ssconf_{key}")))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

fn master_of(node: &Node) -> String {
    ssconf_key(node, "master_node")
}

fn term_of(node: &Node) -> u64 {
    ssconf_key(node, "term").parse().unwrap_or(0)
}

fn status(node: &Node) -> Value {
    let out = nodectl(node.dir(), &["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn voters(node: &Node) -> Vec<String> {
    status(node)["voters"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn config_of(node: &Node) -> Value {
    std::fs::read(node.state.config_json())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn role_in(config: &Value, name: &str) -> Option<String> {
    config["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["role"].as_str().map(str::to_owned))
}

/// m (127.0.0.2) the master; a (.3) and b (.4) candidates, so the three
/// are voters; d (.5) a regular node.
struct Three {
    nodes: Vec<(Node, Daemon)>,
}

impl Three {
    fn new() -> Three {
        Self::at(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"])
    }

    /// m, a, b and d on these addresses.
    fn at(ips: [&str; 4]) -> Three {
        let m = init_master_at("m", ips[0], &["--candidate-pool-size", "3"]);
        let dm = Daemon::start(&m, &["--heartbeat", "1"]);
        let mut nodes = vec![(m, dm)];
        for (name, ip) in [("a", ips[1]), ("b", ips[2]), ("d", ips[3])] {
            let (node, _) = nodes.first().unwrap();
            let joined = join_and_start_at(node, name, ip, &[]);
            nodes.push(joined);
        }
        let three = Three { nodes };
        assert!(
            within(ELECTED, || voters(three.node("m")) == ["a", "b", "m"]),
            "the voters are not m, a and b: {}",
            status(three.node("m"))
        );
        three
    }

    fn node(&self, name: &str) -> &Node {
        &self.nodes.iter().find(|(n, _)| n.name == name).unwrap().0
    }

    fn daemon(&mut self, name: &str) -> &mut Daemon {
        &mut self
            .nodes
            .iter_mut()
            .find(|(n, _)| n.name == name)
            .unwrap()
            .1
    }

    /// Every node's ssconf names the same master and term; that master.
    fn one_master(&self) -> Option<String> {
        let first = master_of(&self.nodes[0].0);
        let term = term_of(&self.nodes[0].0);
        self.nodes
            .iter()
            .all(|(n, _)| master_of(n) == first && term_of(n) == term)
            .then_some(first)
    }
}

/// The first case: the master frozen, the others elect a new one by
/// themselves; the old master, resumed, follows the new term, refuses
/// mutating commands naming the new master, and serves as a candidate.
#[test]
fn a_frozen_master_is_replaced_and_follows_the_new_term() {
    let mut c = Three::new();
    let term = term_of(c.node("d"));
    c.daemon("m").signal("STOP");
    let elected = within(ELECTED, || {
        let new = master_of(c.node("d"));
        new != "m" && master_of(c.node("a")) == new && master_of(c.node("b")) == new
    });
    c.daemon("m").signal("CONT");
    assert!(
        elected,
        "no new master while m was frozen: {}",
        status(c.node("a"))
    );
    let new = master_of(c.node("d"));
    assert!(new == "a" || new == "b", "{new}");
    assert!(term_of(c.node("d")) > term);

    // m follows: the new master's state reaches it, it claims nothing.
    assert!(
        within(ELECTED, || c.one_master().as_deref() == Some(new.as_str())),
        "m did not follow the new master {new}"
    );
    let (code, _, err) = run(c.node("m"), &["modify", "d", "--master-candidate=yes"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("master is {new}")), "{err}");
    assert!(!c.node("d").state.config_json().exists());
    let (code, _, err) = run(c.node("m"), &["token", "create"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(pings_all(c.node("m")), "m does not serve as a candidate");

    // The trail survived the failover, which is in it too.
    let (code, trail, err) = run(c.node(&new), &["audit"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(trail.contains("join:d"), "{trail}");
    assert!(
        trail
            .lines()
            .any(|l| l.contains("noded") && l.contains("master-failover")),
        "{trail}"
    );

    // The new master commits, and the change reaches m.
    let (code, _, err) = run(c.node(&new), &["modify", "d", "--master-candidate=yes"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        role_in(&config_of(c.node("m")), "d").as_deref(),
        Some("candidate")
    );
    assert!(within(ELECTED, || {
        let out = nodectl(c.node(&new).dir(), &["verify"]);
        out.status.success()
    }));
}

/// The second case: a candidate frozen while the master commits;
/// then the master frozen. The frozen candidate's log is behind, so it
/// cannot win: the up-to-date voter does, and no committed change is lost.
#[test]
fn a_stale_candidate_cannot_win_and_nothing_committed_is_lost() {
    let mut c = Three::new();
    c.daemon("a").signal("STOP");
    // Committed by m and b; a does not hear of it.
    let (code, _, err) = run(c.node("m"), &["modify", "d", "--master-candidate=yes"]);
    assert_eq!(code, Some(3), "{err}");
    let e = Node::fresh_at("e", "127.0.0.6");
    let token = create_token(c.node("m"), &[]);
    let out = nodectl(
        e.dir(),
        &["join", &token, "--node-name", "e", "--address", &e.address],
    );
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        text(&out.stderr)
    );
    let de = Daemon::start(&e, &[]);
    c.nodes.push((e, de));
    c.daemon("m").signal("STOP");
    c.daemon("a").signal("CONT");
    let elected = within(ELECTED, || master_of(c.node("b")) == "b");
    c.daemon("m").signal("CONT");
    assert!(elected, "b was not elected: {}", status(c.node("b")));
    // Nothing committed is lost: e in every node list, d a candidate.
    assert!(
        within(ELECTED, || {
            c.nodes.iter().all(|(n, _)| {
                ssconf_key(n, "node_list").lines().any(|l| l == "e")
                    && ssconf_key(n, "master_candidates").lines().any(|l| l == "d")
            }) && c.one_master().as_deref() == Some("b")
        }),
        "a node lost a committed change, or the masters differ"
    );
    for name in ["a", "m", "d"] {
        let config = config_of(c.node(name));
        assert_eq!(
            role_in(&config, "d").as_deref(),
            Some("candidate"),
            "{name}"
        );
        assert_eq!(role_in(&config, "e").as_deref(), Some("regular"), "{name}");
    }
    assert!(within(ELECTED, || nodectl(c.node("b").dir(), &["verify"])
        .status
        .success()));
}

/// Two of three voters frozen: a change is refused within a bounded time,
/// naming them, and no node changes; once they are back it goes through.
#[test]
fn no_majority_no_change() {
    let mut c = Three::new();
    let serial = ssconf_key(c.node("d"), "serial");
    c.daemon("a").signal("STOP");
    c.daemon("b").signal("STOP");
    let started = Instant::now();
    let (code, _, err) = run(c.node("m"), &["modify", "d", "--master-candidate=yes"]);
    let took = started.elapsed();
    c.daemon("a").signal("CONT");
    c.daemon("b").signal("CONT");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no majority"), "{err}");
    // The audit entry, written by the leader before the change was
    // refused, is not claimed to be dropped: it may still commit.
    assert!(err.contains("not committed, but may still be"), "{err}");
    assert!(err.contains('a') && err.contains('b'), "{err}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_eq!(ssconf_key(c.node("d"), "serial"), serial);
    assert!(!c.node("d").state.config_json().exists());
    assert!(!c.node("d").state.ca_key().exists());
    assert_eq!(
        role_in(&config_of(c.node("m")), "d").as_deref(),
        Some("regular")
    );
    // Once they are back the change goes through, on whichever node is the
    // master then: a and b, resumed, heard nothing from m while frozen and
    // may elect one of them (openraft 0.9 has no pre-vote).
    let done = within(ELECTED, || {
        c.one_master().is_some_and(|master| {
            nodectl(
                c.node(&master).dir(),
                &["modify", "d", "--master-candidate=yes"],
            )
            .status
            .success()
        })
    });
    assert!(done, "{}", status(c.node("m")));
}

/// The leader killed with SIGKILL at several points of a change: a new
/// leader is elected; a change nodectl reported committed (exit 0 or 3)
/// is on the new master; the killed node comes back as a follower.
#[test]
fn the_leader_killed_during_a_change() {
    let mut c = Three::new();
    let mut want_candidate = true;
    for delay_ms in [0u64, 40, 150, 600] {
        let master = c.one_master().expect("one master before the step");
        let flag = if want_candidate {
            "--master-candidate=yes"
        } else {
            "--master-candidate=no"
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_nodectl"))
            .arg("--state-dir")
            .arg(c.node(&master).dir())
            .args(["modify", "d", flag])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        c.daemon(&master).kill_now();
        let out = child.wait_with_output().unwrap();
        let code = out.status.code();
        let survivor = ["m", "a", "b"].into_iter().find(|n| *n != master).unwrap();
        let elected = within(ELECTED, || {
            let new = master_of(c.node(survivor));
            new != master && !new.is_empty()
        });
        assert!(
            elected,
            "no new master after {master} was killed at {delay_ms} ms"
        );
        let new = master_of(c.node(survivor));
        let role = role_in(&config_of(c.node(&new)), "d");
        if matches!(code, Some(0 | 3)) {
            let wanted = if want_candidate {
                "candidate"
            } else {
                "regular"
            };
            assert_eq!(
                role.as_deref(),
                Some(wanted),
                "exit {code:?} at {delay_ms} ms: {}",
                text(&out.stderr)
            );
        }
        // The killed node comes back and follows.
        let node = c.node(&master);
        let restarted = Daemon::start(node, &["--heartbeat", "1"]);
        *c.daemon(&master) = restarted;
        assert!(
            within(ELECTED, || c.one_master().as_deref() == Some(new.as_str())),
            "{master} did not follow {new}"
        );
        want_candidate = role.as_deref() != Some("candidate");
    }
    let master = c.one_master().unwrap();
    assert!(within(ELECTED, || nodectl(
        c.node(&master).dir(),
        &["verify"]
    )
    .status
    .success()));
}

/// `master-failover` is a leadership transfer: to this candidate, to
/// another voter with `--to`, refused for a learner; the single-voter
/// cluster of pool size 1 needs none of it.
#[test]
fn master_failover_transfers_the_leadership() {
    let c = Three::new();
    let (code, out, err) = run(c.node("a"), &["master-failover"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("a is the master now"), "{out}");
    assert!(within(ELECTED, || c.one_master().as_deref() == Some("a")));
    let (code, out, err) = run(c.node("a"), &["master-failover", "--to", "b"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(within(ELECTED, || c.one_master().as_deref() == Some("b")));
    // A regular node cannot be the target.
    let (code, _, err) = run(c.node("b"), &["master-failover", "--to", "d"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a master candidate"), "{err}");
    verify_clean(c.node("b"));
}

/// The master cut off from the others both ways by nftables: the others
/// elect a master; the cut-off one commits nothing; after the rules are
/// gone, one master everywhere and verify clean.
#[test]
fn a_partitioned_master_is_replaced() {
    if !have_nft() {
        return;
    }
    // Addresses of this test alone: every packet from and to m's is
    // dropped, whatever the port.
    let c = Three::at(["127.0.0.22", "127.0.0.23", "127.0.0.24", "127.0.0.25"]);
    let partition = Partition::isolate("consensus_both", c.node("m"));
    let elected = within(ELECTED, || {
        let new = master_of(c.node("d"));
        new != "m" && master_of(c.node("a")) == new
    });
    let (code, _, err) = run(c.node("m"), &["modify", "d", "--master-candidate=yes"]);
    drop(partition);
    assert!(elected, "no new master while m was cut off");
    assert_eq!(code, Some(1), "m committed while cut off: {err}");
    let new = master_of(c.node("d"));
    assert!(within(ELECTED, || c.one_master().as_deref() == Some(new.as_str())));
    assert_eq!(
        role_in(&config_of(c.node(&new)), "d").as_deref(),
        Some("regular")
    );
    assert!(within(ELECTED, || nodectl(c.node(&new).dir(), &["verify"])
        .status
        .success()));
}

/// A majority lost for good (two of three voters killed): changes fail;
/// `recover --force` on the master left makes it the only voter in a new
/// term, says what may be lost, and the cluster takes changes again; a
/// lost voter, repaired, is a regular node that rejoins by promotion.
#[test]
fn recover_force_after_a_majority_is_lost() {
    let mut c = Three::new();
    c.daemon("a").kill_now();
    c.daemon("b").kill_now();
    let (code, _, err) = run(c.node("m"), &["modify", "d", "--master-candidate=yes"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, err) = run(c.node("m"), &["recover"]);
    assert_eq!(code, Some(2), "--force is required: {err}");
    let term = term_of(c.node("d"));
    let (code, out, err) = run(c.node("m"), &["recover", "--force"]);
    assert!(matches!(code, Some(0 | 3)), "{out}{err}");
    assert!(
        err.contains("RECOVERED BY FORCE") && err.contains("LOST"),
        "{err}"
    );
    assert!(err.contains("a, b"), "{err}");
    assert_eq!(voters(c.node("m")), ["m"]);
    assert!(term_of(c.node("d")) > term, "d did not take the new term");
    let (code, _, err) = run(c.node("m"), &["modify", "d", "--master-candidate=yes"]);
    assert_eq!(code, Some(3), "a and b are down: {err}");
    // a comes back: a regular node now; the loop takes its candidate files.
    let restarted = Daemon::start(c.node("a"), &[]);
    *c.daemon("a") = restarted;
    assert!(
        within(ELECTED, || !c.node("a").state.config_json().exists()),
        "a kept its candidate files"
    );
    let (code, _, err) = run(
        c.node("m"),
        &["modify", "a", "--master-candidate=yes", "--wait"],
    );
    assert_eq!(code, Some(3), "b is still down: {err}");
    assert!(
        within(ELECTED, || voters(c.node("m")) == ["a", "d", "m"]),
        "{}",
        status(c.node("m"))
    );
    let (code, _, err) = run(c.node("m"), &["modify", "b", "--offline=yes"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(within(ELECTED, || nodectl(c.node("m").dir(), &["verify"])
        .status
        .success()));
}

/// A `recover --force` that cannot write (the master's Raft directory
/// refuses new files, as on a full or read-only disk) fails with the
/// cause and changes nothing; Raft runs again without a restart of noded,
/// and once the disk takes writes the same command recovers.
#[test]
fn a_failed_recover_force_leaves_raft_running_for_a_retry() {
    let mut c = Three::at(["127.0.0.41", "127.0.0.42", "127.0.0.43", "127.0.0.44"]);
    c.daemon("a").kill_now();
    c.daemon("b").kill_now();
    let voters_before = voters(c.node("m"));
    assert_eq!(voters_before.len(), 3, "{}", status(c.node("m")));
    let raft_dir = c.node("m").state.raft_dir();
    {
        let _frozen = immutable(&raft_dir);
        let (code, out, err) = run(c.node("m"), &["recover", "--force"]);
        assert_eq!(code, Some(1), "{out}{err}");
        assert!(
            err.contains("recovery failed") && err.contains("run `nodectl recover --force` again"),
            "{err}"
        );
        assert!(!err.contains("RECOVERED BY FORCE"), "{err}");
        // Raft answers again (status lists the voters), nothing changed.
        assert!(
            within(ELECTED, || voters(c.node("m")) == voters_before),
            "{}",
            status(c.node("m"))
        );
    }
    let (code, out, err) = run(c.node("m"), &["recover", "--force"]);
    assert!(matches!(code, Some(0 | 3)), "{out}{err}");
    assert!(err.contains("RECOVERED BY FORCE"), "{err}");
    assert_eq!(voters(c.node("m")), ["m"]);
}

/// A small deterministic generator for the randomized run.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// About a minute of random faults (kill -9 and restart, SIGSTOP and
/// SIGCONT, a node cut off by nftables) under a stream of changes (users
/// added on whichever node is the master). Afterwards: one master, every
/// acknowledged change on every candidate, verify clean.
#[test]
fn randomized_faults_lose_no_acknowledged_change() {
    let nft = have_nft();
    let mut c = Three::at(["127.0.0.32", "127.0.0.33", "127.0.0.34", "127.0.0.35"]);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("randomized run, seed {seed}");
    let mut dice = Dice(seed);
    let ids = tempfile::tempdir().unwrap();
    let voters = ["m", "a", "b"];
    let mut acknowledged = Vec::new();
    let mut frozen: Option<&str> = None;
    let mut partition: Option<Partition> = None;
    let started = Instant::now();
    let mut step = 0u32;
    while started.elapsed() < Duration::from_secs(60) && step < 400 {
        step += 1;
        // A fault lasts a few steps at most: a frozen node holds every
        // push to it for the connect timeout.
        if dice.roll(3) == 0 {
            if let Some(v) = frozen.take() {
                c.daemon(v).signal("CONT");
            }
            drop(partition.take());
        }
        match dice.roll(10) {
            0 => {
                // kill -9 a voter and start it again (not the frozen one).
                let v = voters[dice.roll(3) as usize];
                if frozen != Some(v) {
                    c.daemon(v).kill_now();
                    std::thread::sleep(Duration::from_millis(dice.roll(1500)));
                    let restarted = Daemon::start(c.node(v), &["--heartbeat", "1"]);
                    *c.daemon(v) = restarted;
                }
            }
            1 => match frozen.take() {
                Some(v) => c.daemon(v).signal("CONT"),
                None => {
                    let v = voters[dice.roll(3) as usize];
                    c.daemon(v).signal("STOP");
                    frozen = Some(v);
                }
            },
            2 if nft => {
                partition = match partition.take() {
                    Some(p) => {
                        drop(p);
                        None
                    }
                    None => {
                        let v = voters[dice.roll(3) as usize];
                        Some(Partition::isolate("consensus_random", c.node(v)))
                    }
                };
            }
            _ => {
                // A change on whoever a live node says is the master.
                let master = master_of(c.node("d"));
                if master.is_empty() || frozen == Some(master.as_str()) {
                    continue;
                }
                let name = format!("u{step}");
                let out = nodectl(
                    c.node(&master).dir(),
                    &[
                        "user",
                        "add",
                        &name,
                        "--role",
                        "readonly",
                        "--out",
                        ids.path().to_str().unwrap(),
                    ],
                );
                // 0, or 3: committed, some node not updated yet.
                if matches!(out.status.code(), Some(0 | 3)) {
                    acknowledged.push(name);
                } else {
                    eprintln!("step {step}: on {master}: {}", text(&out.stderr).trim_end());
                }
            }
        }
    }
    if let Some(v) = frozen.take() {
        c.daemon(v).signal("CONT");
    }
    drop(partition);
    eprintln!(
        "{} changes acknowledged in {step} steps",
        acknowledged.len()
    );
    assert!(
        !acknowledged.is_empty(),
        "no change was acknowledged at all"
    );
    assert!(
        within(Duration::from_secs(30), || c.one_master().is_some()),
        "no single master after the run"
    );
    let master = c.one_master().unwrap();
    for name in ["m", "a", "b"] {
        let has_all = within(Duration::from_secs(30), || {
            let config = config_of(c.node(name));
            let users: Vec<String> = config["users"]
                .as_array()
                .map(|u| {
                    u.iter()
                        .filter_map(|u| u["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            acknowledged.iter().all(|a| users.contains(a))
        });
        assert!(has_all, "{name} lost an acknowledged change (seed {seed})");
    }
    assert!(
        within(Duration::from_secs(30), || nodectl(
            c.node(&master).dir(),
            &["verify"]
        )
        .status
        .success()),
        "verify not clean (seed {seed}): {}",
        text(&nodectl(c.node(&master).dir(), &["verify"]).stdout)
    );
}

/// The master's port unreachable one way (nothing gets to it; what it
/// sends still arrives): its heartbeats still reach the voters, so they
/// keep it; no second master appears, and once the rule is gone the
/// cluster takes changes with verify clean.
#[test]
fn a_master_cut_off_one_way_stays_the_only_master() {
    if !have_nft() {
        return;
    }
    let c = Three::at(["127.0.0.42", "127.0.0.43", "127.0.0.44", "127.0.0.45"]);
    let term = term_of(c.node("d"));
    {
        let _partition = Partition::new("consensus_oneway", c.node("m"), false);
        std::thread::sleep(Duration::from_secs(6));
        for name in ["a", "b", "d"] {
            assert_eq!(master_of(c.node(name)), "m", "{name}");
            assert_eq!(term_of(c.node(name)), term, "{name}");
        }
        let view = status(c.node("a"));
        assert_eq!(view["master"], "m", "{view}");
    }
    let (code, _, err) = run(c.node("m"), &["modify", "d", "--master-candidate=yes"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(within(ELECTED, || nodectl(c.node("m").dir(), &["verify"])
        .status
        .success()));
}
