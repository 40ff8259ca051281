//! `renew-crypto --new-ca` in phases (SPEC §8): each phase committed and
//! shown by `status`, paused with `--stop-after`, resumed with
//! `--continue-ca`, undone with `--rollback-ca`; a node that is down holds
//! the rotation at its phase and is brought to it by the convergence loop
//! once it is back.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn pings(node: &Node) {
    assert!(pings_all(node), "ping from {}", node.name);
}

fn phase(m: &Node) -> String {
    let (code, out, err) = run(m, &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    doc["ca_rotation"]["phase"].as_str().unwrap().to_owned()
}

fn ca_pem(n: &Node) -> String {
    std::fs::read_to_string(n.state.ca_pem()).unwrap()
}

/// Whether `cert` was signed by the CA in `ca_pem` alone (openssl, a
/// verifier no one here wrote).
fn signed_by(cert: &Path, ca_pem: &str, scratch: &Path) -> bool {
    let ca_file = scratch.join("one-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca_file)
        .arg(cert)
        .output()
        .unwrap()
        .status
        .success()
}

/// Both certificates of every node in `nodes` are signed by `ca_pem`.
fn all_signed_by(nodes: &[&Node], ca_pem: &str, scratch: &Path) -> bool {
    nodes.iter().all(|n| {
        signed_by(&n.state.client_pem(), ca_pem, scratch)
            && signed_by(&n.state.server_pem(), ca_pem, scratch)
    })
}

/// The certificate of `bundle` that is not in `old`.
fn the_new_ca(bundle: &str, old: &str) -> String {
    let blocks: Vec<String> = bundle
        .split_inclusive("-----END CERTIFICATE-----\n")
        .map(str::to_owned)
        .collect();
    blocks
        .into_iter()
        .find(|b| !old.contains(b.as_str()))
        .unwrap()
}

#[test]
fn ca_rotation_pauses_continues_and_rolls_back() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &["--heartbeat", "1"]);
    let (a, _da) = join_and_start(&m, "a", &["--master-candidate"]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let scratch = tempfile::tempdir().unwrap();
    let nodes = [&m, &a, &b];
    let old_ca = ca_pem(&m);

    // Nothing to continue or roll back yet.
    for flag in ["--continue-ca", "--rollback-ca"] {
        let (code, _, err) = run(&m, &["renew-crypto", flag]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("no CA rotation is under way"), "{err}");
    }
    assert_eq!(phase(&m), "none");

    // Trust: both CAs everywhere; the old one still signs.
    let (code, out, err) = run(
        &m,
        &[
            "renew-crypto",
            "--new-ca",
            "--stop-after",
            "trust",
            "--wait",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("paused after its trust phase"), "{out}");
    assert_eq!(phase(&m), "trust");
    let new_ca = the_new_ca(&ca_pem(&m), &old_ca);
    for n in nodes {
        assert_eq!(
            ca_pem(n).matches("BEGIN CERTIFICATE").count(),
            2,
            "{}",
            n.name
        );
    }
    assert!(all_signed_by(&nodes, &old_ca, scratch.path()));
    pings(&m);
    pings(&a);
    // A node joins during the rotation: it is given both CAs.
    let (d, _dd) = join_and_start(&m, "d", &[]);
    assert_eq!(ca_pem(&d), ca_pem(&m));
    let nodes = [&m, &a, &b, &d];

    // Reissue: every certificate by the new CA; both still trusted.
    let (code, out, err) = run(
        &m,
        &[
            "renew-crypto",
            "--continue-ca",
            "--stop-after",
            "reissue",
            "--wait",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("paused after its reissue phase"), "{out}");
    assert_eq!(phase(&m), "reissue");
    assert!(all_signed_by(&nodes, &new_ca, scratch.path()));
    pings(&m);
    pings(&a);
    // verify: no error, one warning naming the paused rotation.
    let (code, out, err) = run(&m, &["verify"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.matches("WARNING").count(), 1, "{out}");
    assert!(out.contains("CA_ROTATION_UNDERWAY"), "{out}");
    assert!(out.contains("reissue phase is complete, paused"), "{out}");

    // Rollback: every certificate by the old CA again, the new one gone.
    let (code, out, err) = run(&m, &["renew-crypto", "--rollback-ca", "--wait"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("rolled back"), "{out}");
    assert_eq!(phase(&m), "none");
    for n in nodes {
        assert_eq!(ca_pem(n), old_ca, "{}", n.name);
    }
    assert!(all_signed_by(&nodes, &old_ca, scratch.path()));
    assert!(!m.state.root().join("ca.key.old").exists());
    assert!(!m.state.ca_key_new().exists());
    pings(&m);
    pings(&a);
    verify_clean(&m);
    // The old CA signs joins again: a node joins with a new token.
    let (_c, _dc) = join_and_start(&m, "c", &[]);
    verify_clean(&m);
    let (code, out, _) = run(&m, &["audit"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("renew-crypto rollback-ca"), "{out}");
}

#[test]
fn a_node_down_holds_the_ca_rotation_at_its_phase() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let dm = Daemon::start(&m, &["--heartbeat", "1"]);
    let (a, _da) = join_and_start(&m, "a", &["--master-candidate"]);
    let (b, db) = join_and_start(&m, "b", &[]);
    let (c, dc) = join_and_start(&m, "c", &[]);
    let scratch = tempfile::tempdir().unwrap();
    let old_ca = ca_pem(&m);

    // b down: the rotation holds at trust, naming b.
    drop(db);
    let (code, out, err) = run(&m, &["renew-crypto", "--new-ca", "--wait"]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(err.contains("b not updated"), "{err}");
    assert!(err.contains("holds at its trust phase"), "{err}");
    assert_eq!(phase(&m), "trust");
    assert_eq!(ca_pem(&b), old_ca);
    // Back: the loop gives it both CAs, with no command.
    let _db = Daemon::start(&b, &[]);
    assert!(
        within(Duration::from_secs(15), || ca_pem(&b) == ca_pem(&m)),
        "b was not brought to the trust phase"
    );
    let (code, out, err) = run(
        &m,
        &[
            "renew-crypto",
            "--continue-ca",
            "--stop-after",
            "trust",
            "--wait",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let new_ca = the_new_ca(&ca_pem(&m), &old_ca);

    // c down during reissue: held there, naming c.
    drop(dc);
    let (code, out, err) = run(&m, &["renew-crypto", "--continue-ca", "--wait"]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(err.contains("c not updated"), "{err}");
    assert_eq!(phase(&m), "reissue");
    for n in [&a, &b] {
        assert!(
            all_signed_by(&[n], &new_ca, scratch.path()),
            "{}: {out}{err}",
            n.name
        );
    }
    // The master keeps its client certificate until c's map can name the
    // new one: otherwise c would refuse it.
    assert!(err.contains("m: client certificate NOT renewed"), "{err}");
    assert!(signed_by(&m.state.server_pem(), &new_ca, scratch.path()));
    assert!(signed_by(&c.state.client_pem(), &old_ca, scratch.path()));
    // Back: the loop reissues its certificates by the new CA, and then
    // the master's own.
    let _dc = Daemon::start(&c, &[]);
    assert!(
        within(Duration::from_secs(20), || all_signed_by(
            &[&c, &m],
            &new_ca,
            scratch.path()
        )),
        "c was not brought to the reissue phase: {}",
        dm.log()
    );
    // The loop records what it did once it is done.
    assert!(
        within(Duration::from_secs(10), || {
            let (_, out, _) = run(&m, &["audit"]);
            out.contains("reissue certificates (CA rotation, reissue phase)")
        }),
        "{:?}",
        run(&m, &["audit", "--json"])
    );

    // Finished: the new CA alone everywhere.
    let (code, out, err) = run(&m, &["renew-crypto", "--continue-ca", "--wait"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("CA rotation complete"), "{out}");
    assert_eq!(phase(&m), "none");
    for n in [&m, &a, &b, &c] {
        assert_eq!(ca_pem(n), new_ca, "{}", n.name);
    }
    // Nothing to roll back once dropped.
    let (code, _, err) = run(&m, &["renew-crypto", "--rollback-ca", "--wait"]);
    assert_eq!(code, Some(1), "{err}");
    pings(&m);
    pings(&a);
    verify_clean(&m);
}

/// A master candidate down when the new CA starts signing missed its key:
/// the reissue phase holds until it has it, and once it is back
/// `--continue-ca` gives it the key and the rotation ends, the candidate
/// holding the key that signs.
#[test]
fn a_candidate_down_when_the_key_changes_gets_it_before_the_end() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &["--heartbeat", "1"]);
    let (a, da) = join_and_start(&m, "a", &["--master-candidate"]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let scratch = tempfile::tempdir().unwrap();
    let old_ca = ca_pem(&m);
    let key = |n: &Node| std::fs::read_to_string(n.state.ca_key()).unwrap();
    let stop_after_trust = [
        "renew-crypto",
        "--new-ca",
        "--stop-after",
        "trust",
        "--wait",
    ];
    let (code, out, err) = run(&m, &stop_after_trust);
    assert_eq!(code, Some(0), "{out}{err}");
    let new_ca = the_new_ca(&ca_pem(&m), &old_ca);

    // a is down while the new key starts signing: held at reissue.
    drop(da);
    let (code, out, err) = run(&m, &["renew-crypto", "--continue-ca", "--wait"]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert_eq!(phase(&m), "reissue");
    assert_ne!(key(&a), key(&m), "a cannot have the new key yet");

    // Back: the loop reissues a's certificates; the key comes with the
    // next run, which then finishes.
    let _da = Daemon::start(&a, &[]);
    assert!(
        within(Duration::from_secs(20), || all_signed_by(
            &[&a, &b, &m],
            &new_ca,
            scratch.path()
        )),
        "a was not brought to the reissue phase"
    );
    let (code, out, err) = run(&m, &["renew-crypto", "--continue-ca", "--wait"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("CA rotation complete"), "{out}");
    assert_eq!(key(&a), key(&m), "a holds the key that signs");
    for n in [&m, &a, &b] {
        assert_eq!(ca_pem(n), new_ca, "{}", n.name);
    }
    verify_clean(&m);
    // a can sign as the master: a failover to it (once its Raft log has
    // caught up), then a join through it.
    assert!(
        within(Duration::from_secs(20), || run(&a, &["master-failover"]).0
            == Some(0)),
        "{:?}",
        run(&a, &["master-failover"])
    );
    let (c, _dc) = join_and_start(&a, "c", &[]);
    assert!(all_signed_by(&[&c], &new_ca, scratch.path()));
}
