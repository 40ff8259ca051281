//! Crash safety: SIGKILL of nodectl and of noded at random points of state
//! writes and cluster operations. Afterwards every state file is whole (an
//! old or a new version, never torn), the daemons come back, and the master
//! commands every node.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// Every state file of `node` parses.
fn whole(node: &Node) {
    let s = &node.state;
    let ssconf = ssconf::Ssconf::load(&s.ssconf_dir());
    assert!(
        ssconf.is_ok(),
        "{}: torn ssconf: {:?}",
        node.name,
        ssconf.err()
    );
    for pem in [s.ca_pem(), s.server_pem(), s.client_pem()] {
        noded::pki::load_certs(&pem).unwrap_or_else(|e| panic!("{}: {e}", pem.display()));
    }
    for key in [s.server_key(), s.client_key()] {
        noded::pki::load_key(&key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    }
    if s.config_json().exists() {
        noded::cluster::load_config(s).unwrap_or_else(|e| panic!("{}: {e}", node.name));
    }
    if s.tokens_json().exists() {
        noded::state::token::TokenStore::load(s).unwrap_or_else(|e| panic!("{}: {e}", node.name));
    }
    s.load_identity().unwrap();
}

#[test]
fn sigkill_at_random_points_leaves_whole_files() {
    let m = init_master_with("m", &["--candidate-pool-size", "2"]);
    let mut dm = Daemon::start(&m, &[]);
    let (a, _da) = join_and_start(&m, "a", &[]);
    let (b, mut db) = join_and_start(&m, "b", &[]);
    let operations: [&[&str]; 4] = [
        &["renew-crypto", "--new-node-certificates", "--wait"],
        &["modify", "b", "--master-candidate=yes", "--wait"],
        &["modify", "b", "--master-candidate=no", "--wait"],
        &[
            "renew-crypto",
            "--new-cluster-certificate",
            "--new-ssh-keys",
            "--wait",
        ],
    ];
    // A fixed pseudo-random sequence: the same points on every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..16 {
        let op = operations[round % operations.len()];
        let mut child = Command::new(NODECTL)
            .arg("--state-dir")
            .arg(m.dir())
            .args(op)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(next() % 300));
        // Every other round, the daemons die too (mid-write of a push).
        if round % 2 == 1 {
            dm.kill_now();
            db.kill_now();
        }
        let _ = child.kill();
        let _ = child.wait();
        for node in [&m, &a, &b] {
            whole(node);
        }
        if round % 2 == 1 {
            dm = Daemon::start(&m, &[]);
            db = Daemon::start(&b, &[]);
        }
        let out = nodectl(m.dir(), &["ping"]);
        assert!(
            out.status.success(),
            "round {round} ({op:?}): {}",
            text(&out.stderr)
        );
    }
    // A rerun of each operation leaves a clean cluster.
    for op in operations {
        let out = nodectl(m.dir(), op);
        assert!(
            matches!(out.status.code(), Some(0)),
            "{op:?}: {}",
            text(&out.stderr)
        );
    }
    let out = nodectl(m.dir(), &["verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The instant a server certificate switch is most fragile: the new key
/// waits as server.key.new and server.pem is already the new certificate
/// (the kill came before the rename). The daemon finishes the switch at
/// start and serves with the new pair; a key whose certificate never came
/// is left aside and the old pair keeps working.
#[test]
fn an_interrupted_server_certificate_switch_is_finished_at_start() {
    use noded::pki::{CertificateSigner, NodeKey};
    let m = init_master("m");
    let pending = m.dir().join("server.key.new");
    let key = NodeKey::generate().unwrap();
    let uuid = m.state.load_identity().unwrap().uuid;
    let new_pem = m
        .ca()
        .sign_server_csr(&key.csr("m").unwrap(), "m", &uuid, 365)
        .unwrap();
    let new_key = key.to_pem();

    // Killed after the key, before the certificate: the old pair stays.
    std::fs::write(&pending, new_key.expose()).unwrap();
    let old_key = std::fs::read_to_string(m.state.server_key()).unwrap();
    let daemon = Daemon::start(&m, &[]);
    let out = nodectl(m.dir(), &["ping"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(m.state.server_key()).unwrap(),
        old_key
    );
    drop(daemon);

    // Killed after the certificate, before the rename: the new pair, whose
    // digest the cluster recorded before the switch began.
    std::fs::write(m.state.server_pem(), &new_pem).unwrap();
    let der = noded::pki::load_certs_from_pem(&new_pem).unwrap();
    let recorded = m.dir().join("ssconf/ssconf_node_server_certs");
    let mut lines = std::fs::read_to_string(&recorded).unwrap();
    lines.push_str(&format!(
        "{uuid}={}\n",
        ssconf::DigestAlgorithm::Sha256.digest(&der)
    ));
    std::fs::write(&recorded, lines).unwrap();
    let _daemon = Daemon::start(&m, &[]);
    let out = nodectl(m.dir(), &["ping"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(m.state.server_key()).unwrap(),
        new_key.expose()
    );
    assert!(!pending.exists());
}
