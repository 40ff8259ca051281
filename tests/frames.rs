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

/// Requests sent at once on one connection (`Connection::calls`) are
/// answered in order, each on its own: a refused one between two others
/// does not stop the next, and one that changes the map takes effect
/// before the next is read.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order_each_on_its_own() {
    let node = init_master("f5");
    let _daemon = Daemon::start(&node, &[]);
    let client = client(&node, Some(&node_identity(&node)));
    let mut conn = client.connect(&node.name, &node.address).await.unwrap();
    let mut set = ssconf::Ssconf::load(&node.state.ssconf_dir()).unwrap();
    let second = ca_signed(&node, "second");
    let mut older = set.clone();
    set.serial = 7;
    let mut entries = set.master_candidates_certs.entries().to_vec();
    entries.push((
        "uuid-second".into(),
        second.digest(ssconf::DigestAlgorithm::Sha256),
    ));
    set.master_candidates_certs = ssconf::CandidateMap::from_entries(entries);
    older.serial = 6;
    let replies = conn
        .calls(vec![
            Procedure::Ping,
            Procedure::WriteSsconf {
                files: set.render(),
            },
            Procedure::WriteSsconf {
                files: older.render(),
            },
            Procedure::NodeInfo,
        ])
        .await
        .unwrap();
    assert_eq!(replies.len(), 4);
    let mut replies = replies.into_iter();
    assert!(matches!(replies.next(), Some(Ok(Reply::Pong { .. }))));
    assert!(matches!(
        replies.next(),
        Some(Ok(Reply::SsconfWritten { serial: 7 }))
    ));
    let refused = replies.next().unwrap().unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("is older than the (term 0, serial 7) this node holds"),
        "{refused}"
    );
    let Some(Ok(Reply::NodeInfo(info))) = replies.next() else {
        panic!("no node info after a refused request")
    };
    assert_eq!(info.ssconf_serial, 7);
    // The map written in the pipeline was published with its reply.
    ping(&crate::support::client(&node, Some(&second)), &node)
        .await
        .unwrap();
    // The connection still serves single calls, with the ids that follow.
    assert!(matches!(
        conn.call(Procedure::Ping).await,
        Ok(Reply::Pong { .. })
    ));
}
