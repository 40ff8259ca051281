//! The master's convergence loop: a node that missed changes while it was
//! down is brought up to date within one heartbeat of coming back.

use std::time::{Duration, Instant};

use crate::support::*;

fn ping(from: &Node, to: &str) -> (Option<i32>, String) {
    let out = nodectl(from.dir(), &["ping", to, "--timeout", "3"]);
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// The `--heartbeat` of the fault tests' master, and how long they wait for
/// the loop to notice something: three heartbeats, plus room for a loaded
/// machine.
const HEARTBEAT: &str = "1";
const NOTICED: Duration = Duration::from_secs(3 + 5);

fn ssconf_serial(n: &Node) -> String {
    std::fs::read_to_string(n.state.ssconf_dir().join("ssconf_serial")).unwrap()
}

/// Whether the master's loop reaches `n` and `n` holds the master's ssconf.
fn reachable_and_current(m: &Node, n: &Node) -> bool {
    listed(m, &n.name)["reachable"] == true && ssconf_serial(n) == ssconf_serial(m)
}

#[test]
fn a_node_down_during_a_demotion_refuses_the_demoted_node_within_a_heartbeat() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let _dm = Daemon::start(&m, &["--heartbeat", "1"]);
    let (a, _da) = join_and_start(&m, "a", &["--master-candidate"]);
    let (b, db) = join_and_start(&m, "b", &[]);
    assert_eq!(ping(&a, "b").0, Some(0));

    // b is down while a is demoted.
    drop(db);
    let out = nodectl(m.dir(), &["modify", "a", "--master-candidate=no"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("b"), "{}", text(&out.stderr));

    // b comes back with the old map, which still admits a.
    let db = Daemon::start(&b, &[]);
    assert!(
        db.wait_log("ssconf updated", Duration::from_secs(5)),
        "b was not brought up to date: {}",
        db.log()
    );
    let refused = within(Duration::from_secs(3), || {
        let (code, out) = ping(&a, "b");
        code == Some(1) && out.contains("not authorized")
    });
    assert!(refused, "b still admits the demoted a");
    // The master still reaches b, and b holds no candidate file.
    assert_eq!(ping(&m, "b").0, Some(0));
    assert!(!a.state.ca_key().exists());
    let out = nodectl(m.dir(), &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn a_candidate_demoted_while_down_loses_its_files_when_it_comes_back() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let _dm = Daemon::start(&m, &["--heartbeat", "1"]);
    let (a, da) = join_and_start(&m, "a", &["--master-candidate"]);
    assert!(a.state.ca_key().exists() && a.state.config_json().exists());
    drop(da);
    let out = nodectl(m.dir(), &["modify", "a", "--master-candidate=no"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Down, it kept the CA key; once back, the loop takes it away.
    assert!(a.state.ca_key().exists());
    let _da = Daemon::start(&a, &[]);
    assert!(
        within(Duration::from_secs(6), || !a.state.ca_key().exists()
            && !a.state.config_json().exists()),
        "a kept the candidate files"
    );
    let out = nodectl(m.dir(), &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// `list --json` from the master carries each node's health: a stopped
/// node turns unreachable within a heartbeat, keeps its last_seen, and is
/// never removed.
#[test]
fn list_shows_each_nodes_health() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let _dm = Daemon::start(&m, &["--heartbeat", "1"]);
    let (_b, db) = join_and_start(&m, "b", &[]);
    let node = |name: &str| listed(&m, name);
    assert!(within(Duration::from_secs(5), || node("b")["reachable"] == true));
    let seen = node("b")["last_seen"].as_str().unwrap().to_owned();
    assert!(seen.ends_with('Z'), "{seen}");
    assert_eq!(node("m")["reachable"], true);
    drop(db);
    assert!(within(Duration::from_secs(5), || node("b")["reachable"] == false));
    let after = node("b");
    assert!(after["last_seen"].is_string(), "{after}");
    let out = nodectl(m.dir(), &["list"]);
    assert!(text(&out.stdout).contains("REACHABLE"));
}

/// `init --cert-lifetime 150s`: the master's daemon renews the client and
/// the server certificate of every node once two thirds of their lifetime
/// has passed, with no refused RPC meanwhile, and verify stays clean.
#[test]
fn certificates_are_renewed_before_they_expire() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let m = init_master_with(
        "m",
        &["--candidate-pool-size", "2", "--cert-lifetime", "150s"],
    );
    let _dm = Daemon::start(&m, &["--heartbeat", "1"]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let certs = |n: &Node| {
        (
            std::fs::read_to_string(n.state.client_pem()).unwrap(),
            std::fs::read_to_string(n.state.server_pem()).unwrap(),
        )
    };
    let before: Vec<_> = [&m, &a, &b].into_iter().map(certs).collect();

    // The candidate a pings every node all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (pings, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let pinger = {
        let (stop, pings, refused) = (stop.clone(), pings.clone(), refused.clone());
        let dir = a.dir().to_owned();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(150);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let out = nodectl(&dir, &["ping", "--timeout", "5"]);
                pings.fetch_add(1, Ordering::Relaxed);
                if !out.status.success() {
                    refused.fetch_add(1, Ordering::Relaxed);
                    eprintln!("ping refused: {}", text(&out.stderr));
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let renewed = within(Duration::from_secs(140), || {
        [&m, &a, &b].into_iter().zip(&before).all(|(n, old)| {
            let now = certs(n);
            now.0 != old.0 && now.1 != old.1
        })
    });
    // One more heartbeat for the settled map to reach everyone.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    pinger.join().unwrap();
    assert!(renewed, "not every certificate was renewed within 140 s");
    assert!(pings.load(Ordering::Relaxed) > 50);
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "pings refused during the renewals"
    );
    let out = nodectl(m.dir(), &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn status_shows_the_master_health_and_expiries() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &["--heartbeat", "1"]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let status = |node: &Node| {
        let out = nodectl(node.dir(), &["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert!(within(Duration::from_secs(5), || {
        let doc = status(&m);
        doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["reachable"] == true)
    }));
    // A candidate asks the master's daemon too.
    let doc = status(&a);
    assert_eq!(doc["cluster"], "testcluster");
    assert_eq!(doc["master"], "m");
    assert_eq!(doc["voters"], serde_json::json!(["m"]));
    assert_eq!(doc["ca_rotation"]["phase"], "none");
    let node_a = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "a")
        .unwrap();
    assert_eq!(node_a["role"], "candidate");
    assert!(node_a["server_cert_expires"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(node_a["client_cert_expires"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(node_a["serial"].as_u64().unwrap() >= 2);
    let out = nodectl(m.dir(), &["status"]);
    assert!(
        text(&out.stdout).contains("master m"),
        "{}",
        text(&out.stdout)
    );
}

/// The master's metrics carry each node's health.
#[test]
fn metrics_show_each_nodes_health() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _dm = Daemon::start(&m, &["--heartbeat", "1", "--metrics", &listen]);
    let (_b, db) = join_and_start(&m, "b", &[]);
    let url = format!("http://{listen}/metrics");
    let scrape = || curl(&url).1;
    assert!(within(Duration::from_secs(5), || scrape()
        .contains("noded_node_reachable{node=\"b\"} 1")));
    let age = sample(&scrape(), "noded_node_last_seen_seconds{node=\"b\"}");
    assert!((0.0..5.0).contains(&age), "{age}");
    drop(db);
    assert!(within(Duration::from_secs(5), || scrape()
        .contains("noded_node_reachable{node=\"b\"} 0")));
}

/// The master killed (SIGKILL) in the middle of heartbeat rounds, a few
/// times: every state file stays whole, and once it is back the loop picks
/// up where it was, with verify clean.
#[test]
fn a_master_killed_during_heartbeats_comes_back_clean() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let (a, _da);
    let (b, db);
    {
        let _dm = Daemon::start(&m, &["--heartbeat", "1"]);
        (a, _da) = join_and_start(&m, "a", &[]);
        (b, db) = join_and_start(&m, "b", &[]);
        // b misses a change while the master is being killed again and
        // again (the changes are committed through the master's daemon).
        drop(db);
        let out = nodectl(m.dir(), &["modify", "a", "--offline=yes"]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        let out = nodectl(m.dir(), &["modify", "a", "--offline=no"]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    }
    let _db = Daemon::start(&b, &[]);
    for round in 0..4u64 {
        let mut dm = Daemon::start(&m, &["--heartbeat", "1"]);
        std::thread::sleep(Duration::from_millis(300 + 250 * round));
        dm.kill_now();
    }
    let _dm = Daemon::start(&m, &["--heartbeat", "1"]);
    let master_serial = || std::fs::read_to_string(m.dir().join("ssconf/ssconf_serial")).unwrap();
    assert!(within(Duration::from_secs(5), || {
        std::fs::read_to_string(b.dir().join("ssconf/ssconf_serial")).unwrap() == master_serial()
    }));
    assert_eq!(ping(&a, "b").0, Some(0));
    let out = nodectl(m.dir(), &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// A daemon stopped with SIGSTOP: its kernel still accepts TCP connections,
/// but nothing answers on them. Continued (SIGCONT) when dropped, so a
/// failing test leaves no process frozen.
struct Frozen<'a>(&'a Daemon);

impl<'a> Frozen<'a> {
    fn new(daemon: &'a Daemon) -> Self {
        daemon.signal("STOP");
        Frozen(daemon)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let pid = self.0.pid().to_string();
        if let Err(e) = std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
        {
            eprintln!("cannot continue the frozen daemon {pid}: {e}");
        }
    }
}

/// A frozen node does not hold up the loop: while c is stopped, b (down
/// during a demotion) is brought up to date and refuses the demoted a
/// within a few heartbeats, and c is shown unreachable. Once continued, c
/// is reachable and current again.
#[test]
fn a_frozen_node_does_not_hold_up_the_others() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let _dm = Daemon::start(&m, &["--heartbeat", HEARTBEAT]);
    let (a, _da) = join_and_start(&m, "a", &["--master-candidate"]);
    let (b, db) = join_and_start(&m, "b", &[]);
    let (c, dc) = join_and_start(&m, "c", &[]);
    assert_eq!(ping(&a, "b").0, Some(0));
    // The loop holds a connection to c before c freezes.
    assert!(within(NOTICED, || listed(&m, "c")["reachable"] == true));

    let frozen = Frozen::new(&dc);
    drop(db);
    let out = nodectl(m.dir(), &["modify", "a", "--master-candidate=no"]);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        text(&out.stderr)
    );
    let _db = Daemon::start(&b, &[]);
    let refused = within(NOTICED, || {
        let (code, out) = ping(&a, "b");
        code == Some(1) && out.contains("not authorized")
    });
    assert!(refused, "b still admits the demoted a while c is frozen");
    assert!(
        within(NOTICED, || listed(&m, "c")["reachable"] == false),
        "c frozen but listed reachable: {}",
        listed(&m, "c")
    );

    drop(frozen);
    assert!(
        within(NOTICED, || reachable_and_current(&m, &c)),
        "c not current after it continued: {}",
        listed(&m, "c")
    );
    verify_clean(&m);
}

/// The master (127.0.0.2) cut off from b (127.0.0.4) by dropped packets:
/// b turns unreachable within a few heartbeats, a promotion of a
/// (127.0.0.3) is committed without it, and once the rules are gone b is
/// reachable and current again, with verify clean.
fn partition_heals(case: &str, both_ways: bool) {
    if !have_nft() {
        return;
    }
    let m = init_master_at("m", "127.0.0.2", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &["--heartbeat", HEARTBEAT]);
    let (a, _da) = join_and_start_at(&m, "a", "127.0.0.3", &[]);
    let (b, _db) = join_and_start_at(&m, "b", "127.0.0.4", &[]);
    assert!(within(NOTICED, || reachable_and_current(&m, &a)
        && reachable_and_current(&m, &b)));

    let partition = Partition::new(case, &b, both_ways);
    assert!(
        within(NOTICED, || listed(&m, "b")["reachable"] == false),
        "b cut off but listed reachable: {}",
        listed(&m, "b")
    );
    let out = nodectl(m.dir(), &["modify", "a", "--master-candidate=yes"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("b"), "{}", text(&out.stderr));
    assert_ne!(ssconf_serial(&b), ssconf_serial(&m));
    // a and the master are not cut off from each other.
    assert!(within(NOTICED, || reachable_and_current(&m, &a)));

    drop(partition);
    assert!(
        within(NOTICED, || reachable_and_current(&m, &b)),
        "b not current after the partition: {}",
        listed(&m, "b")
    );
    assert_eq!(ping(&a, "b").0, Some(0), "b does not admit the promoted a");
    verify_clean(&m);
}

#[test]
fn a_partitioned_node_is_current_once_the_partition_heals() {
    partition_heals("both", true);
}

#[test]
fn a_node_cut_off_one_way_is_current_once_the_partition_heals() {
    partition_heals("oneway", false);
}

/// A candidate down during `renew-crypto --new-node-certificates` keeps no
/// valid map entry; once it answers again, the master's loop renews its
/// client certificate by itself (actor `noded` in the audit trail), and it
/// commands again.
#[test]
fn a_certificate_renewed_away_is_renewed_once_the_node_is_back() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &["--heartbeat", "1"]);
    let (a, da) = join_and_start(&m, "a", &[]);
    let (_b, _db) = join_and_start(&m, "b", &[]);
    drop(da);
    let out = nodectl(
        m.dir(),
        &["renew-crypto", "--new-node-certificates", "--wait"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(m.map().len(), 1, "a kept an entry");
    let _da = Daemon::start(&a, &[]);
    let renewed = within(Duration::from_secs(20), || {
        let out = nodectl(a.dir(), &["ping", "--timeout", "3"]);
        out.status.success()
    });
    assert!(
        renewed,
        "a was not renewed: {}",
        text(&nodectl(m.dir(), &["list"]).stdout)
    );
    assert_eq!(m.map().len(), 2);
    // Recorded once the renewal is over.
    let audited = within(Duration::from_secs(10), || {
        let trail = text(&nodectl(m.dir(), &["audit"]).stdout);
        trail.lines().any(|l| {
            l.contains("noded") && l.contains("renew client certificate") && l.contains(" a ")
        })
    });
    assert!(audited, "{}", text(&nodectl(m.dir(), &["audit"]).stdout));
    let out = nodectl(m.dir(), &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn a_change_reaches_a_node_as_a_patch_and_a_set_changed_by_hand_is_replaced_whole() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let _dm = Daemon::start(&m, &["--heartbeat", HEARTBEAT]);
    let (b, db) = join_and_start(&m, "b", &[]);
    let node_list =
        |n: &Node| std::fs::read_to_string(n.state.ssconf_dir().join("ssconf_node_list")).unwrap();
    // A join: b holds the set the loop sent it last, so it gets the lines
    // that changed.
    let (_c, _dc) = join_and_start(&m, "c", &[]);
    assert!(
        db.wait_log("ssconf updated from a patch", NOTICED),
        "{}",
        db.log()
    );
    assert!(within(NOTICED, || node_list(&b) == node_list(&m)));
    assert_eq!(node_list(&b), "b\nc\nm\n");

    // A set none the master sent (an older serial written back by hand,
    // as a restored backup would): the next heartbeat sends the whole set.
    let serial = b.state.ssconf_dir().join("ssconf_serial");
    std::fs::write(&serial, "1\n").unwrap();
    let ssconf = |n: &Node| ssconf::Ssconf::load(&n.state.ssconf_dir()).unwrap();
    assert!(
        within(NOTICED, || ssconf(&b) == ssconf(&m)),
        "b keeps serial {}",
        ssconf(&b).serial
    );
    assert!(
        db.wait_log("ssconf updated serial", NOTICED),
        "{}",
        db.log()
    );
    verify_clean(&m);
}

/// A change the master distributes reaches a node the loop left current
/// without asking it first (no `node-info`), as a patch; a node whose set
/// was changed behind the loop's back refuses the patch, and the same round
/// asks it and sends the whole set: current when the command returns. A
/// file a change does not touch (authorized_keys) changed by hand is put
/// back by the repair `verify` names, which asks the node.
#[test]
fn a_change_is_sent_without_asking_and_a_node_changed_behind_the_loop_is_asked() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    // One round at start and none after: what reaches b is what the
    // commands distribute.
    let _dm = Daemon::start(&m, &["--heartbeat", "3600"]);
    let b = Node::fresh("b");
    let token = create_token(&m, &[]);
    let out = nodectl(
        b.dir(),
        &["join", &token, "--node-name", "b", "--address", &b.address],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let metrics = format!("127.0.0.1:{}", free_port());
    let db = Daemon::start(&b, &["--metrics", &metrics]);
    let asked = || {
        let (status, body) = curl(&format!("http://{metrics}/metrics"));
        assert_eq!(status, "200", "{body}");
        sample(
            &body,
            "noded_rpc_total{procedure=\"node-info\",outcome=\"ok\"}",
        )
    };
    let ssconf = |n: &Node| ssconf::Ssconf::load(&n.state.ssconf_dir()).unwrap();
    let keys = |n: &Node| std::fs::read_to_string(n.state.authorized_keys()).unwrap();
    let modify = |flag: &str| {
        modify_node(&m, "c", flag);
        assert_eq!(ssconf(&b), ssconf(&m), "b behind after modify {flag}");
        assert_eq!(keys(&b), keys(&m));
    };
    // c joins (a regular node like b, which learns of it at the next
    // round) and is promoted: the first round that reaches b asks it.
    let (_c, _dc) = join_and_start(&m, "c", &[]);
    modify("--master-candidate=yes");
    let first = asked();
    assert!(first >= 1.0, "b was never asked");

    // c demoted, then promoted again: b gets both changes (its map and its
    // authorized_keys) and is not asked again.
    modify("--master-candidate=no");
    modify("--master-candidate=yes");
    assert_eq!(asked(), first, "b was asked for its state");
    assert!(
        db.log().contains("ssconf updated from a patch"),
        "{}",
        db.log()
    );

    // b's set changed by hand (an older serial, as a restored backup would
    // leave it): the next change's patch does not apply, so b is asked and
    // sent the whole set within the same command.
    std::fs::write(b.state.ssconf_dir().join("ssconf_serial"), "1\n").unwrap();
    assert!(within(NOTICED, || ssconf(&b).serial == 1));
    modify("--master-candidate=no");
    assert_eq!(asked(), first + 1.0);
    assert!(db.log().contains("ssconf updated serial"), "{}", db.log());

    // b's authorized_keys emptied by hand: a change does not look, the
    // repair `verify` names (`modify b --offline=no`) asks b and sends it.
    noded::state::ssh::write_authorized_keys(&b.state.authorized_keys(), &[]).unwrap();
    modify_node(&m, "c", "--offline=yes");
    assert_eq!(asked(), first + 1.0);
    assert_ne!(keys(&b), keys(&m));
    modify_node(&m, "b", "--offline=no");
    assert_eq!(keys(&b), keys(&m));
    modify_node(&m, "c", "--offline=no");
    verify_clean(&m);
}

fn modify_node(m: &Node, node: &str, flag: &str) {
    let out = nodectl(m.dir(), &["modify", node, flag]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A tmpfs of `size` mounted on `dir` (made if needed) until dropped: a
/// node's own small disk, to fill. Needs root, as the suite has in CI.
fn tmpfs(dir: &std::path::Path, size: &str) -> Undo {
    use std::process::Command;
    std::fs::create_dir_all(dir).unwrap();
    let mut mount = Command::new("mount");
    mount
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(dir);
    let mut umount = Command::new("umount");
    umount.arg("--lazy").arg(dir);
    let why = format!("mount -t tmpfs on {} (this test needs root)", dir.display());
    undone(mount, umount, &why)
}

/// Writes into `path` until the disk is full; returns what it wrote.
fn fill(path: &std::path::Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    // Bounded: the disks this fills are a few MiB.
    for _ in 0..4096 {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = file.sync_all();
    written
}

/// A node whose disk is full when a change reaches it refuses it with the
/// reason (the master logs it and lists the node unreachable), keeps the set it held whole and readable, and leaves no
/// temporary file; once space is freed, the next heartbeats bring it up to
/// date, with no operator.
#[test]
fn a_node_whose_disk_is_full_keeps_its_set_and_is_current_once_space_is_freed() {
    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let dm = Daemon::start(&m, &["--heartbeat", HEARTBEAT]);
    let b = Node::fresh("b");
    let disk = tmpfs(b.dir(), "2m");
    let (b, db) = join_node_and_start(&m, b, &[], &[]);
    assert!(within(NOTICED, || reachable_and_current(&m, &b)));
    let ssconf = |n: &Node| ssconf::Ssconf::load(&n.state.ssconf_dir()).unwrap();
    let held = ssconf(&b);

    let filler = b.dir().join("filler");
    assert!(fill(&filler) > 0);
    // A join changes the node list, addresses and server certificates
    // everywhere: b cannot store it.
    let (_c, _dc) = join_and_start(&m, "c", &[]);
    assert!(
        dm.wait_log("No space left on device", NOTICED),
        "b's failure not reported: {}",
        dm.log()
    );
    assert_eq!(listed(&m, "b")["reachable"], false);
    assert_eq!(ssconf(&b), held, "b's set changed on a full disk");
    let temps: Vec<String> = std::fs::read_dir(b.state.ssconf_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| ssconf::atomic::temp_target(n).is_some())
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
    // b still admits the master and answers it.
    assert_eq!(ping(&m, "b").0, Some(0));

    std::fs::remove_file(&filler).unwrap();
    assert!(
        within(NOTICED, || reachable_and_current(&m, &b)),
        "b not current once space was freed: {}",
        listed(&m, "b")
    );
    assert_eq!(ssconf(&b), ssconf(&m));
    assert!(db.log().contains("ssconf updated"), "{}", db.log());
    verify_clean(&m);
    drop(db);
    drop(disk);
}
