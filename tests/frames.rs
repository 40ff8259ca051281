//! Malformed input on an authorized connection: each gets an error reply,
//! and the daemon keeps serving.

use std::time::Duration;

use noded::wire::{Procedure, Reply, RpcErrorKind};

use crate::support::*;

async fn expect_error_then_close(
    node: &Node,
    bytes: &[u8],
    close_write: bool,
    kinds: &[RpcErrorKind],
) {
    let client = client(node, Some(&node_identity(node)));
    let mut conn = client.connect(&node.name, &node.address).await.unwrap();
    conn.send_raw(bytes).await.unwrap();
    if close_write {
        conn.close_write().await.unwrap();
    }
    let reply = tokio::time::timeout(Duration::from_secs(5), conn.read_response())
        .await
        .expect("no reply")
        .expect("reply unreadable")
        .expect("connection closed without an error reply");
    let error = reply
        .result
        .expect_err("malformed input answered with success");
    assert!(
        kinds.contains(&error.kind),
        "{:?}: {}",
        error.kind,
        error.message
    );
    // The connection is closed after the error.
    let next = tokio::time::timeout(Duration::from_secs(5), conn.read_response())
        .await
        .expect("connection left open");
    assert!(matches!(next, Ok(None) | Err(_)), "{next:?}");
    // Others are still served.
    ping(&client, node).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_oversized_and_truncated_frames() {
    let node = init_master("f1");
    let daemon = Daemon::start(&node, &["--max-frame", "1024"]);
    // A well-framed payload that is not an envelope.
    expect_error_then_close(
        &node,
        &[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
        false,
        &[RpcErrorKind::Malformed],
    )
    .await;
    // A claimed length of 4 GiB: refused before allocating.
    expect_error_then_close(
        &node,
        &[0xff, 0xff, 0xff, 0xff],
        false,
        &[RpcErrorKind::TooLarge],
    )
    .await;
    // Just over the configured limit.
    let over = 1025u32.to_be_bytes();
    expect_error_then_close(&node, &over, false, &[RpcErrorKind::TooLarge]).await;
    // Truncated: promises 100 bytes, sends 3, then ends.
    expect_error_then_close(
        &node,
        &[0, 0, 0, 100, 1, 2, 3],
        true,
        &[RpcErrorKind::Malformed],
    )
    .await;
    // Random bytes.
    let noise: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let mut frame = (noise.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&noise);
    expect_error_then_close(
        &node,
        &frame,
        false,
        &[RpcErrorKind::Malformed, RpcErrorKind::UnsupportedVersion],
    )
    .await;
    assert!(!daemon.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_procedure_and_version_are_answered() {
    let node = init_master("f2");
    let _daemon = Daemon::start(&node, &[]);
    let client = client(&node, Some(&node_identity(&node)));
    let mut conn = client.connect(&node.name, &node.address).await.unwrap();
    // version 1, id 5, procedure 99: framing intact, so the connection stays.
    conn.send_raw(&[0, 0, 0, 3, 1, 5, 99]).await.unwrap();
    let reply = conn.read_response().await.unwrap().unwrap();
    assert_eq!(reply.id, 5);
    assert_eq!(
        reply.result.unwrap_err().kind,
        RpcErrorKind::UnknownProcedure
    );
    assert!(matches!(
        conn.call(Procedure::Ping).await.unwrap(),
        Reply::Pong { .. }
    ));
    // An envelope version this daemon does not speak.
    conn.send_raw(&[0, 0, 0, 3, 7, 6, 0]).await.unwrap();
    let reply = conn.read_response().await.unwrap().unwrap();
    assert_eq!(
        reply.result.unwrap_err().kind,
        RpcErrorKind::UnsupportedVersion
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_info_and_large_payloads() {
    let node = init_master("f3");
    let _daemon = Daemon::start(&node, &[]);
    let client = client(&node, Some(&node_identity(&node)));
    let mut conn = client.connect(&node.name, &node.address).await.unwrap();
    let Reply::NodeInfo(info) = conn.call(Procedure::NodeInfo).await.unwrap() else {
        panic!("not node info")
    };
    assert_eq!(info.name, "f3");
    assert_eq!(
        info.client_digest_sha256,
        node_identity(&node)
            .digest(ssconf::DigestAlgorithm::Sha256)
            .to_string()
    );
    assert!(info.role_files.ca_key && info.role_files.config);
    assert_eq!(info.ssconf_serial, 1);
    let payload = vec![7u8; 8 * 1024 * 1024];
    let Reply::Echoed { len } = conn.call(Procedure::Echo { payload }).await.unwrap() else {
        panic!("not echoed")
    };
    assert_eq!(len, 8 * 1024 * 1024);
}

/// The write-ssconf RPC: applies a newer set, refuses an older one and a
/// set of another cluster, and the new map takes effect at once.
#[tokio::test(flavor = "multi_thread")]
async fn write_ssconf_is_serial_checked() {
    let node = init_master("f4");
    let _daemon = Daemon::start(&node, &[]);
    let client = client(&node, Some(&node_identity(&node)));
    let mut conn = client.connect(&node.name, &node.address).await.unwrap();
    let mut set = ssconf::Ssconf::load(&node.state.ssconf_dir()).unwrap();
    let second = ca_signed(&node, "second");

    set.serial = 5;
    let mut entries = set.master_candidates_certs.entries().to_vec();
    entries.push((
        "uuid-second".into(),
        second.digest(ssconf::DigestAlgorithm::Sha256),
    ));
    set.master_candidates_certs = ssconf::CandidateMap::from_entries(entries);
    let reply = conn
        .call(Procedure::WriteSsconf {
            files: set.render(),
        })
        .await
        .unwrap();
    assert_eq!(reply, Reply::SsconfWritten { serial: 5 });
    // Published before the reply: the new candidate is admitted right away.
    ping(&crate::support::client(&node, Some(&second)), &node)
        .await
        .unwrap();

    set.serial = 4;
    let err = conn
        .call(Procedure::WriteSsconf {
            files: set.render(),
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is older than the (term 0, serial 5) this node holds"),
        "{err}"
    );

    set.serial = 6;
    set.cluster_name = "othercluster".into();
    let err = conn
        .call(Procedure::WriteSsconf {
            files: set.render(),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("belongs to cluster"), "{err}");

    let mut broken = set.render();
    broken.retain(|(name, _)| name != "ssconf_serial");
    let err = conn
        .call(Procedure::WriteSsconf { files: broken })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ssconf_serial"), "{err}");
    assert_eq!(
        ssconf::Ssconf::stored_serial(&node.state.ssconf_dir()).unwrap(),
        Some(5)
    );
}

/// `patch-ssconf-and-keys`: the authorized_keys block travels with the set
/// it belongs to. A node that holds another set (the patch's base is not
/// its set: a newer master's, say) refuses both and keeps its keys; one
/// that holds the base stores the set, publishes its map and writes the
/// keys, in one request.
#[tokio::test(flavor = "multi_thread")]
async fn keys_sent_with_a_patch_are_written_only_with_the_set() {
    use noded::state::{fingerprint, ssh};
    let node = init_master("f5");
    let _daemon = Daemon::start(&node, &[]);
    let client = client(&node, Some(&node_identity(&node)));
    let mut conn = client.connect(&node.name, &node.address).await.unwrap();
    let keys_path = node.state.authorized_keys();
    let held_keys =
        || ssh::managed_keys(&std::fs::read_to_string(&keys_path).unwrap_or_default()).unwrap();
    let before = held_keys();

    let old = ssconf::Ssconf::load(&node.state.ssconf_dir()).unwrap();
    let old_files = old.render();
    let mut new = old.clone();
    new.serial += 1;
    let second = ca_signed(&node, "second");
    let mut entries = new.master_candidates_certs.entries().to_vec();
    entries.push((
        "uuid-second".into(),
        second.digest(ssconf::DigestAlgorithm::Sha256),
    ));
    new.master_candidates_certs = ssconf::CandidateMap::from_entries(entries);
    let new_files = new.render();
    let request = |base: &str, keys: Vec<String>| Procedure::PatchSsconfAndKeys {
        base_sha256: base.to_owned(),
        patches: noded::wire::patch::diff(&old_files, &new_files),
        sha256: fingerprint::files_sha256(&new_files),
        keys,
    };
    let (_, stale_key) = ssh::generate("stale@master").unwrap();
    let (_, key) = ssh::generate("current@master").unwrap();

    // Another set held here: both refused, the keys untouched.
    let refused = conn
        .call(request(&"0".repeat(64), vec![stale_key.clone()]))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("not the patch's base"),
        "{refused}"
    );
    assert_eq!(held_keys(), before);
    assert!(client_refused(&second, &node).await);

    // The base held here: the set stored and published, then the keys.
    let base = fingerprint::files_sha256(&old_files);
    let reply = conn.call(request(&base, vec![key.clone()])).await.unwrap();
    assert_eq!(reply, Reply::SsconfWritten { serial: new.serial });
    assert_eq!(held_keys(), vec![key.clone()]);
    ping(&crate::support::client(&node, Some(&second)), &node)
        .await
        .unwrap();

    // The same request again: its base is no longer the set held here.
    let refused = conn
        .call(request(&base, vec![stale_key]))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("not the patch's base"),
        "{refused}"
    );
    assert_eq!(held_keys(), vec![key]);
}

/// Whether `identity` is refused by `node`'s daemon.
async fn client_refused(identity: &Identity, node: &Node) -> bool {
    ping(&crate::support::client(node, Some(identity)), node)
        .await
        .is_err()
}

/// Without a certificate the master reads one request, a join: a frame too
/// large for a join or cut short is answered as on an admitted connection,
/// and every such connection, one that brings no request included, is
/// logged once as a refused join.
#[tokio::test(flavor = "multi_thread")]
async fn anonymous_bad_frames_are_answered_and_logged_once() {
    let node = init_master("f5");
    let daemon = Daemon::start(&node, &[]);
    let anonymous = client(&node, None);
    let cases: [(&[u8], bool, Option<RpcErrorKind>, &str); 3] = [
        (
            &[0, 1, 0, 1],
            false,
            Some(RpcErrorKind::TooLarge),
            "join refused: frame of 65537 bytes exceeds the limit of 65536 bytes",
        ),
        (
            &[0, 0, 0, 100, 1, 2, 3],
            true,
            Some(RpcErrorKind::Malformed),
            "join refused: connection closed in the middle of a frame",
        ),
        (&[], true, None, "join refused: closed without a request"),
    ];
    for (bytes, close_write, kind, logged) in cases {
        let mut conn = anonymous.connect(&node.name, &node.address).await.unwrap();
        conn.send_raw(bytes).await.unwrap();
        if close_write {
            conn.close_write().await.unwrap();
        }
        let reply = tokio::time::timeout(Duration::from_secs(5), conn.read_response())
            .await
            .expect("connection left open");
        match kind {
            Some(kind) => {
                let reply = reply.expect("reply unreadable").expect("no error reply");
                let error = reply.result.expect_err("answered with success");
                assert_eq!(error.kind, kind, "{}", error.message);
            }
            None => assert!(matches!(reply, Ok(None) | Err(_)), "{reply:?}"),
        }
        assert!(
            daemon.wait_log(logged, Duration::from_secs(5)),
            "{}",
            daemon.log()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        daemon.log().matches("connection denied").count(),
        cases.len(),
        "{}",
        daemon.log()
    );
}
