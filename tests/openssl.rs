//! The same refusals seen by a TLS client nobody here wrote: `openssl
//! s_client`. A refused client must get a TLS alert that names the problem.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// Runs s_client against the daemon and returns everything it printed.
fn s_client(node: &Node, cert: Option<(&std::path::Path, &std::path::Path)>) -> String {
    let mut cmd = Command::new("timeout");
    cmd.arg("20")
        .arg("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(&node.address)
        .arg("-CAfile")
        .arg(node.state.ca_pem())
        .args(["-servername", "noded", "-verify_return_error", "-ign_eof"]);
    if let Some((c, k)) = cert {
        cmd.arg("-cert").arg(c).arg("-key").arg(k);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("openssl is required for these tests (apt-get install openssl)");
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
fn s_client_sees_a_clear_alert_for_each_refusal() {
    let node = init_master("o1");
    // A short idle timeout ends the accepted session quickly.
    let daemon = Daemon::start(&node, &["--idle-timeout", "1"]);
    let dir = tempfile::tempdir().unwrap();

    let candidate = node_identity(&node).write(dir.path(), "candidate");
    let out = s_client(&node, Some((&candidate.0, &candidate.1)));
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(!out.contains("alert"), "candidate refused: {out}");

    let regular = ca_signed(&node, "regular").write(dir.path(), "regular");
    let out = s_client(&node, Some((&regular.0, &regular.1)));
    assert!(out.contains("alert access denied"), "{out}");

    let foreign_id = foreign("foreign").write(dir.path(), "foreign");
    let out = s_client(&node, Some((&foreign_id.0, &foreign_id.1)));
    assert!(out.contains("alert unknown ca"), "{out}");

    let expired_id = expired(&node, "expired").write(dir.path(), "expired");
    let out = s_client(&node, Some((&expired_id.0, &expired_id.1)));
    assert!(out.contains("alert certificate expired"), "{out}");

    let self_id = self_signed("selfsigned").write(dir.path(), "self");
    let out = s_client(&node, Some((&self_id.0, &self_id.1)));
    assert!(out.contains("alert certificate unknown"), "{out}");

    // Without a certificate: only the master completes the handshake (for
    // a join); any other node refuses it with certificate_required.
    let regular_node = regular_node(&node, "r1");
    let _regular_daemon = Daemon::start(&regular_node, &[]);
    let out = s_client(&regular_node, None);
    assert!(out.contains("alert certificate required"), "{out}");

    // The digest openssl computes is the one the daemon logs.
    let fp = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&regular.0)
        .output()
        .unwrap();
    let fp = text(&fp.stdout);
    let digest = fp.trim().split_once('=').unwrap().1.to_owned();
    assert!(
        daemon.wait_log(&digest, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
}

#[test]
fn tls12_only_clients_are_refused() {
    let node = init_master("o2");
    let _daemon = Daemon::start(&node, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = node_identity(&node).write(dir.path(), "c");
    let out = Command::new("timeout")
        .args([
            "20",
            "openssl",
            "s_client",
            "-tls1_2",
            "-connect",
            &node.address,
        ])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("alert protocol version"), "{all}");
}
