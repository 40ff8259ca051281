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

/// Polls `check` every 100 ms for at most `limit`.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
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
    let node = |name: &str| {
        let out = nodectl(m.dir(), &["list", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap()
    };
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
