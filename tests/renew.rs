//! `nodectl renew-crypto` on a running cluster.

use std::process::Command;

use ssconf::DigestAlgorithm;

use crate::support::*;

fn digest(node: &Node) -> String {
    noded::pki::file_digest(&node.state.client_pem(), DigestAlgorithm::Sha256)
        .unwrap()
        .to_string()
}

#[test]
fn node_certificates_switch_through_an_overlapping_map() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let before: Vec<String> = [&m, &a, &b].iter().map(|n| digest(n)).collect();
    let old_a = node_identity(&a);

    // While the renewal runs, candidate a keeps commanding: with whatever
    // certificate it has at that moment, every ping succeeds.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinger = {
        let stop = stop.clone();
        let dir = a.dir().to_path_buf();
        std::thread::spawn(move || {
            let mut runs = 0;
            let mut failures = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = nodectl(&dir, &["ping"]);
                runs += 1;
                if !out.status.success() {
                    failures.push(text(&out.stdout) + &text(&out.stderr));
                }
            }
            (runs, failures)
        })
    };
    let (code, out, err) = run(&m, &["renew-crypto", "--new-node-certificates"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, failures) = pinger.join().unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(runs > 0);
    // A ping that read the key and certificate files while they were being
    // replaced may fail locally; none may be refused by a node.
    for f in &failures {
        assert!(
            !f.contains("not authorized"),
            "candidate refused during renewal: {f}"
        );
    }
    let after: Vec<String> = [&m, &a, &b].iter().map(|n| digest(n)).collect();
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old, new);
    }
    // The map holds exactly the new digests of the candidates.
    let map = m.map();
    assert_eq!(map.len(), 2, "{}", map.render());
    for d in &after[..2] {
        assert!(map.render().contains(d.as_str()));
    }
    assert!(pings_all(&m) && pings_all(&a));
    verify_clean(&m);
    // The old certificate of a is refused now.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(ping(&client(&m, Some(&old_a)), &m));
    assert!(
        matches!(refused, Err(noded::Error::NotAuthorized { .. })),
        "{refused:?}"
    );
}

#[test]
fn an_unreachable_node_keeps_no_entry_and_is_renewed_later() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    // No heartbeat during the test: the convergence loop would renew a by
    // itself once it answers (tests/converge.rs); here, by hand.
    let _dm = Daemon::start(&m, &["--heartbeat", "3600"]);
    let (a, da) = join_and_start(&m, "a", &[]);
    let (_b, _db) = join_and_start(&m, "b", &[]);
    drop(da);
    let (code, _, err) = run(&m, &["renew-crypto", "--new-node-certificates"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("a not updated") || err.contains("a: "),
        "{err}"
    );
    assert!(err.contains("--node a"), "{err}");
    // No valid entry for a.
    assert_eq!(m.map().len(), 1);
    let _da = Daemon::start(&a, &[]);
    assert!(!pings_all(&a), "a commands without an entry");
    let (code, out, err) = run(&m, &["verify"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("renew-crypto --new-node-certificates --node a"),
        "{out}{err}"
    );
    let (code, _, err) = run(
        &m,
        &["renew-crypto", "--new-node-certificates", "--node", "a"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(pings_all(&a));
    verify_clean(&m);
}

#[test]
fn cluster_certificate_and_ssh_keys() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let server_of = |n: &Node| {
        (
            std::fs::read_to_string(n.state.server_pem()).unwrap(),
            std::fs::read_to_string(n.state.server_key()).unwrap(),
        )
    };
    let old_servers: Vec<_> = [&m, &a, &b].into_iter().map(server_of).collect();
    let old_keys = (
        std::fs::read_to_string(m.state.ssh_public_key()).unwrap(),
        std::fs::read_to_string(a.state.ssh_public_key()).unwrap(),
    );
    let (code, out, err) = run(
        &m,
        &[
            "renew-crypto",
            "--new-cluster-certificate",
            "--new-ssh-keys",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    // Every node made its own new key; each certificate names its node.
    let new_servers: Vec<_> = [&m, &a, &b].into_iter().map(server_of).collect();
    for (n, (old, new)) in [&m, &a, &b]
        .into_iter()
        .zip(old_servers.iter().zip(&new_servers))
    {
        assert_ne!(old.0, new.0, "{}: same certificate", n.name);
        assert_ne!(old.1, new.1, "{}: same key", n.name);
        let der = noded::pki::load_certs_from_pem(&new.0).unwrap();
        let uuid = n.state.load_identity().unwrap().uuid;
        assert_eq!(noded::rpc::identity::uuid_of(&der), Some(uuid));
    }
    assert_ne!(new_servers[1].1, new_servers[2].1, "a and b share a key");
    // The running daemons serve the new certificate without a restart.
    let served = Command::new("timeout")
        .args([
            "10",
            "openssl",
            "s_client",
            "-connect",
            &b.address,
            "-showcerts",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let served = text(&served.stdout);
    let first_cert_in = |pem: &str| {
        pem.split("-----END CERTIFICATE-----")
            .next()
            .unwrap()
            .trim()
            .to_owned()
    };
    assert!(
        served.contains(&first_cert_in(&new_servers[2].0)),
        "b still serves the old certificate"
    );
    let new_keys = (
        std::fs::read_to_string(m.state.ssh_public_key()).unwrap(),
        std::fs::read_to_string(a.state.ssh_public_key()).unwrap(),
    );
    assert_ne!(old_keys.0, new_keys.0);
    assert_ne!(old_keys.1, new_keys.1);
    let authorized = std::fs::read_to_string(b.state.authorized_keys()).unwrap();
    assert!(authorized.contains(new_keys.1.trim()) && !authorized.contains(old_keys.1.trim()));
    assert!(pings_all(&m) && pings_all(&a));
    verify_clean(&m);
    drop(dm);
}

#[test]
fn usage_errors() {
    let m = init_master("m");
    let (code, _, _) = run(&m, &["renew-crypto"]);
    assert_eq!(code, Some(2));
    let (code, _, _) = run(&m, &["renew-crypto", "--node", "m"]);
    assert_eq!(code, Some(2));
}

/// kill -9 of `nodectl renew-crypto` at several points: afterwards the
/// master still commands every node, and a rerun leaves a clean cluster.
#[test]
fn killed_renewals_are_completed_by_a_rerun() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let (_b, _db) = join_and_start(&m, "b", &[]);
    for delay_ms in [10u64, 40, 80, 150, 250, 400] {
        let mut child = Command::new(NODECTL)
            .arg("--state-dir")
            .arg(m.dir())
            .args([
                "renew-crypto",
                "--new-node-certificates",
                "--new-cluster-certificate",
                "--new-ssh-keys",
                "--wait",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            pings_all(&m),
            "after a kill at {delay_ms} ms the master cannot command every node"
        );
        assert!(
            pings_all(&a),
            "after a kill at {delay_ms} ms candidate a cannot command every node"
        );
    }
    let (code, out, err) = run(
        &m,
        &[
            "renew-crypto",
            "--new-node-certificates",
            "--new-cluster-certificate",
            "--new-ssh-keys",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    verify_clean(&m);
}

/// --new-ca: both CAs trusted during the switch, every certificate
/// reissued, the old CA dropped; no candidate refused on the way, and
/// killed runs are completed by a rerun.
#[test]
fn ca_rotation_without_refusals() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let old_ca = std::fs::read_to_string(m.state.ca_pem()).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinger = {
        let stop = stop.clone();
        let dir = a.dir().to_path_buf();
        std::thread::spawn(move || {
            let mut refusals = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = nodectl(&dir, &["ping"]);
                let all = text(&out.stdout) + &text(&out.stderr);
                if all.contains("not authorized") || all.contains("does not trust") {
                    refusals.push(all);
                }
            }
            refusals
        })
    };
    // Killed (SIGKILL) at several points, so in different phases (each rerun
    // goes on from the committed phase), then completed.
    for delay_ms in [30u64, 200, 700, 1500, 2500] {
        let mut child = Command::new(NODECTL)
            .arg("--state-dir")
            .arg(m.dir())
            .args(["renew-crypto", "--new-ca", "--wait"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            pings_all(&m),
            "after a kill at {delay_ms} ms the master cannot command every node"
        );
    }
    // --wait: the master's convergence loop may be bringing nodes to the
    // phase a killed run left.
    let (code, out, err) = run(&m, &["renew-crypto", "--new-ca", "--wait"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refusals = pinger.join().unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("CA rotation complete"), "{out}");
    assert!(
        refusals.is_empty(),
        "refused during the CA rotation: {refusals:?}"
    );
    let new_ca = std::fs::read_to_string(m.state.ca_pem()).unwrap();
    assert_ne!(new_ca, old_ca);
    assert_eq!(new_ca.matches("BEGIN CERTIFICATE").count(), 1);
    for n in [&a, &b] {
        assert_eq!(std::fs::read_to_string(n.state.ca_pem()).unwrap(), new_ca);
    }
    assert!(pings_all(&m) && pings_all(&a));
    verify_clean(&m);
    // A node joins with a token that pins the new CA.
    let (_c, _dc) = join_and_start(&m, "c", &[]);
    verify_clean(&m);
}

/// A node offline during a renewal (the master's own certificate included)
/// comes back online, is caught up, and a rerun leaves a clean cluster.
#[test]
fn a_node_offline_during_the_renewal_comes_back() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &[]);
    let (_a, _da) = join_and_start(&m, "a", &[]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let (code, _, err) = run(&m, &["modify", "b", "--offline=yes"]);
    assert_eq!(code, Some(0), "{err}");
    let all = [
        "renew-crypto",
        "--new-node-certificates",
        "--new-cluster-certificate",
        "--new-ssh-keys",
    ];
    let (code, out, err) = run(&m, &all);
    assert_eq!(code, Some(0), "{out}{err}");
    // b missed it all: its map still names the master's old certificate.
    let (code, out, err) = run(&m, &["modify", "b", "--offline=no"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("caught up with the master's previous certificate"),
        "{out}"
    );
    assert!(pings_all(&m));
    let (code, out, err) = run(&m, &all);
    assert_eq!(code, Some(0), "{out}{err}");
    verify_clean(&m);
    assert_eq!(serial_of(&b), serial_of(&m));
}

fn serial_of(n: &Node) -> u64 {
    ssconf::Ssconf::stored_serial(&n.state.ssconf_dir())
        .unwrap()
        .unwrap()
}

/// A node's daemon stopped in the middle of a renewal: every other daemon
/// still serves and is commanded; once it is back, a rerun completes.
#[test]
fn a_daemon_stopped_mid_renewal() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let (b, db) = join_and_start(&m, "b", &[]);
    let mut db = Some(db);
    let all = [
        "--state-dir",
        m.dir().to_str().unwrap(),
        "renew-crypto",
        "--new-node-certificates",
        "--new-cluster-certificate",
        "--new-ssh-keys",
    ];
    let mut child = Command::new(NODECTL).args(all).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(60));
    drop(db.take());
    let status = child.wait().unwrap();
    assert!(matches!(status.code(), Some(0) | Some(3)), "{status:?}");
    // Every reachable node is still commanded.
    let out = nodectl(m.dir(), &["ping", "m", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _db = Daemon::start(&b, &[]);
    let (code, out, err) = run(&m, &all[2..]);
    assert_eq!(code, Some(0), "{out}{err}");
    verify_clean(&m);
    assert!(pings_all(&a));
}

/// A node offline during a CA rotation comes back: it is caught up (CAs,
/// server certificate, map), gets a certificate of the new CA, and ends up
/// trusting the new CA only, like every node.
#[test]
fn a_node_offline_during_a_ca_rotation_comes_back() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let (code, _, err) = run(&m, &["modify", "a", "--offline=yes"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(&m, &["renew-crypto", "--new-ca"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = run(&m, &["modify", "a", "--offline=no"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("caught up"), "{out}");
    assert!(pings_all(&m) && pings_all(&a));
    let ca = std::fs::read_to_string(m.state.ca_pem()).unwrap();
    for n in [&a, &b] {
        assert_eq!(
            std::fs::read_to_string(n.state.ca_pem()).unwrap(),
            ca,
            "{}",
            n.name
        );
    }
    verify_clean(&m);
}

/// The master's clock two days ahead (faketime): every node refuses the
/// certificate it is sent, as not valid yet. Each says why, and keeps its
/// current certificate and its map entry: no candidate is locked out.
#[test]
fn a_master_clock_ahead_locks_nobody_out() {
    if Command::new("faketime").arg("-h").output().is_err() {
        eprintln!("skipped: faketime is not installed (apt-get install faketime)");
        return;
    }
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let _dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let (b, _db) = join_and_start(&m, "b", &[]);
    let before: Vec<String> = [&m, &a, &b].iter().map(|n| digest(n)).collect();
    let map_before = m.map();
    let nodectl_bin = env!("CARGO_BIN_EXE_nodectl");
    let out = Command::new("faketime")
        .args(["-f", "+2d", nodectl_bin, "--state-dir"])
        .arg(m.dir())
        .args(["renew-crypto", "--new-node-certificates"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{}{err}", text(&out.stdout));
    for node in ["a", "b"] {
        assert!(
            err.lines()
                .any(|l| l.contains(node) && l.contains("clocks differ")),
            "{node} not named with the cause: {err}"
        );
    }
    let after: Vec<String> = [&m, &a, &b].iter().map(|n| digest(n)).collect();
    assert_eq!(before, after, "a certificate changed");
    assert_eq!(m.map(), map_before, "the map changed");
    assert!(pings_all(&m) && pings_all(&a));
    verify_clean(&m);
}
