//! Who may issue RPCs: the authorization table, through real TLS against a
//! real `noded`, and the map's hot reload.

use std::time::Duration;

use noded::Error;
use ssconf::{CandidateMap, DigestAlgorithm};

use crate::support::*;

enum Expect {
    Admitted,
    /// Refused in the handshake; the daemon's denial names this reason.
    Refused(&'static str),
}

/// Every kind of peer against one daemon. Digests of the self-signed,
/// foreign-CA and expired certificates are put IN the map, to show that a
/// digest alone never admits: the chain to the cluster CA is required too.
#[tokio::test(flavor = "multi_thread")]
async fn authorization_table() {
    let node = init_master("m1");
    let daemon = Daemon::start(&node, &[]);

    let candidate = node_identity(&node);
    let regular = ca_signed(&node, "regular1");
    let selfsigned = self_signed("selfsigned1");
    let foreign_ca = foreign("foreign1");
    let expired_cert = expired(&node, "expired1");
    // Every node holds the shared server certificate and key; it must not
    // serve as a client certificate (its EKU is serverAuth only).
    let server = server_identity(&node);

    let alg = DigestAlgorithm::Sha256;
    let mut entries: Vec<_> = node.map().entries().to_vec();
    entries.push(("uuid-self".into(), selfsigned.digest(alg)));
    entries.push(("uuid-foreign".into(), foreign_ca.digest(alg)));
    entries.push(("uuid-expired".into(), expired_cert.digest(alg)));
    entries.push(("uuid-server".into(), server.digest(alg)));
    node.write_map(&CandidateMap::from_entries(entries));
    assert!(
        daemon.wait_log("5 entries", Duration::from_secs(10)),
        "map not reloaded: {}",
        daemon.log()
    );

    let mut cases: Vec<(&str, Option<&Identity>, Expect)> = vec![
        ("candidate", Some(&candidate), Expect::Admitted),
        (
            "CA-signed, not in map",
            Some(&regular),
            Expect::Refused("not in the candidate map"),
        ),
        (
            "self-signed, digest in map",
            Some(&selfsigned),
            Expect::Refused("certificate not accepted"),
        ),
        (
            "foreign CA, digest in map",
            Some(&foreign_ca),
            Expect::Refused("certificate not accepted: invalid peer certificate: UnknownIssuer"),
        ),
        // The master completes the handshake for a join, and nothing else.
        (
            "no certificate",
            None,
            Expect::Refused("only join is allowed"),
        ),
        (
            "expired, digest in map",
            Some(&expired_cert),
            Expect::Refused(
                "certificate not accepted: invalid peer certificate: certificate expired",
            ),
        ),
    ];
    cases.push((
        "server certificate as client, digest in map",
        Some(&server),
        Expect::Refused("certificate not accepted"),
    ));
    for (name, identity, expect) in cases {
        let before = daemon.log();
        let result = ping(&client(&node, identity), &node).await;
        match expect {
            Expect::Admitted => assert!(result.is_ok(), "{name}: {result:?}"),
            Expect::Refused(reason) => {
                assert!(
                    matches!(result, Err(Error::NotAuthorized { .. })),
                    "{name}: expected a refusal, got {result:?}"
                );
                assert!(
                    daemon.wait_log_count(
                        "denied",
                        before.matches("denied").count() + 1,
                        Duration::from_secs(5)
                    ),
                    "{name}: no denial logged"
                );
                let log = daemon.log();
                let new = &log[before.len()..];
                let line = new
                    .lines()
                    .find(|l| l.contains("denied"))
                    .unwrap_or_default();
                assert!(
                    line.contains(reason),
                    "{name}: denial {line:?} lacks {reason:?}"
                );
                assert!(line.contains("127.0.0.1:"), "{name}: no peer in {line:?}");
                if let Some(id) = identity {
                    let digest = id.digest(alg).to_string();
                    assert!(line.contains(&digest), "{name}: no digest in {line:?}");
                    let cn = x509_cn(id);
                    assert!(
                        line.contains(&format!("CN={cn}")),
                        "{name}: no subject in {line:?}"
                    );
                    // Logged once: one connection, one line.
                    std::thread::sleep(Duration::from_millis(200));
                    assert_eq!(
                        daemon.log().matches(&digest).count(),
                        1,
                        "{name}: logged more than once"
                    );
                }
            }
        }
        // The candidate is served after every refusal.
        ping(&client(&node, Some(&candidate)), &node)
            .await
            .unwrap_or_else(|e| panic!("candidate refused after {name}: {e}"));
    }
}

/// Proof of possession: the candidate's certificate (public, in the map)
/// presented with another key is refused, and the denial names the digest
/// it claimed.
#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_certificate_without_its_key_is_refused() {
    let node = init_master("m11");
    let daemon = Daemon::start(&node, &[]);
    let candidate = node_identity(&node);
    let other = ca_signed(&node, "other");
    let result = ping(&client_without_the_key(&node, &candidate, &other), &node).await;
    assert!(
        matches!(result, Err(Error::NotAuthorized { .. })),
        "{result:?}"
    );
    let digest = candidate.digest(DigestAlgorithm::Sha256).to_string();
    assert!(
        daemon.wait_log(&digest, Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
    ping(&client(&node, Some(&candidate)), &node).await.unwrap();
    // The certificate's chain and key are remembered now: the impostor is
    // still refused (its CertificateVerify checked with the remembered key).
    let again = ping(&client_without_the_key(&node, &candidate, &other), &node).await;
    assert!(
        matches!(again, Err(Error::NotAuthorized { .. })),
        "{again:?}"
    );
}

fn x509_cn(id: &Identity) -> String {
    let subject = noded::pki::subject_of(&id.chain[0]);
    subject
        .split(", ")
        .find_map(|p| p.strip_prefix("CN="))
        .unwrap_or_default()
        .to_owned()
}

/// A candidate removed from the map while connected loses its open
/// connection, and a new connection is refused; one added while the daemon
/// runs is admitted without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn map_changes_apply_to_open_and_new_connections() {
    let node = init_master("m2");
    let daemon = Daemon::start(&node, &[]);
    let master = node.map();
    let second = ca_signed(&node, "candidate2");
    let second_client = client(&node, Some(&second));

    // Not yet a candidate.
    assert!(matches!(
        ping(&second_client, &node).await,
        Err(Error::NotAuthorized { .. })
    ));

    // Added while the daemon runs: admitted without restart.
    let mut entries = master.entries().to_vec();
    entries.push((
        "uuid-candidate2".into(),
        second.digest(DigestAlgorithm::Sha256),
    ));
    node.write_map(&CandidateMap::from_entries(entries));
    assert!(
        eventually(&second_client, &node, true).await,
        "added candidate never admitted"
    );

    // Connected, then removed: the open connection is closed.
    let mut conn = second_client.connect("m2", &node.address).await.unwrap();
    conn.call(noded::wire::Procedure::Ping).await.unwrap();
    node.write_map(&master);
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.read_response()).await;
    match closed {
        Ok(Ok(None)) | Ok(Err(_)) => {}
        other => panic!("open connection of a removed candidate not closed: {other:?}"),
    }
    assert!(daemon.wait_log("removed from the candidate map", Duration::from_secs(5)));
    // A new connection is refused.
    assert!(matches!(
        ping(&second_client, &node).await,
        Err(Error::NotAuthorized { .. })
    ));
    // The master's own connection is unaffected.
    ping(&client(&node, Some(&node_identity(&node))), &node)
        .await
        .unwrap();
}

/// A malformed map keeps the previous one (and says which line is bad); a
/// deleted map denies everyone; a valid map restores service.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_map_keeps_previous_and_missing_map_denies() {
    let node = init_master("m3");
    let daemon = Daemon::start(&node, &[]);
    let good = node.map();
    let master = client(&node, Some(&node_identity(&node)));

    node.write_map_text(&format!("{}this line is not a map entry\n", good.render()));
    assert!(
        daemon.wait_log("ssconf_master_candidates_certs:2:", Duration::from_secs(10)),
        "no error naming line 2: {}",
        daemon.log()
    );
    assert!(daemon.log().contains("keeping the previous candidate map"));
    ping(&master, &node).await.unwrap();

    std::fs::remove_file(node.map_path()).unwrap();
    assert!(
        eventually(&master, &node, false).await,
        "deleted map still admits"
    );
    assert!(daemon.log().contains("denying every client"));

    // Restored by an edit in place rather than a rename: the watcher sees
    // the file written and closed.
    std::fs::write(node.map_path(), good.render()).unwrap();
    assert!(
        eventually(&master, &node, true).await,
        "restored map not picked up"
    );
}

/// Every node but the master refuses a client without a certificate in
/// the handshake (alert certificate_required).
#[tokio::test(flavor = "multi_thread")]
async fn only_the_master_completes_anonymous_handshakes() {
    let master = init_master("m10");
    let regular = regular_node(&master, "r10");
    let daemon = Daemon::start(&regular, &[]);
    match ping(&client(&regular, None), &regular).await {
        Err(Error::NotAuthorized { reason, .. }) => {
            assert!(reason.contains("CertificateRequired"), "{reason}")
        }
        other => panic!("anonymous client not refused in the handshake: {other:?}"),
    }
    assert!(daemon.wait_log("no client certificate", Duration::from_secs(5)));
}

/// A daemon that starts without any valid map admits nobody.
#[tokio::test(flavor = "multi_thread")]
async fn starting_without_a_map_denies_everyone() {
    let node = init_master("m4");
    node.write_map_text("garbage\n");
    let daemon = Daemon::start(&node, &[]);
    assert!(daemon.log().contains("no valid candidate map"));
    let result = ping(&client(&node, Some(&node_identity(&node))), &node).await;
    assert!(
        matches!(result, Err(Error::NotAuthorized { .. })),
        "{result:?}"
    );
}

/// SHA-1 maps (Ganeti's format) work end to end.
#[tokio::test(flavor = "multi_thread")]
async fn sha1_cluster_admits_its_master() {
    let node = init_master_with("m5", &["--digest", "sha1"]);
    let map = node.map();
    assert_eq!(
        map.algorithms().collect::<Vec<_>>(),
        [DigestAlgorithm::Sha1]
    );
    let _daemon = Daemon::start(&node, &[]);
    ping(&client(&node, Some(&node_identity(&node))), &node)
        .await
        .unwrap();
    let regular = ca_signed(&node, "r");
    assert!(matches!(
        ping(&client(&node, Some(&regular)), &node).await,
        Err(Error::NotAuthorized { .. })
    ));
}

/// TLS session resumption cannot bring a removed candidate back: the daemon
/// issues no tickets and keeps no session cache, so every connection runs
/// the full check.
#[tokio::test(flavor = "multi_thread")]
async fn resumption_cannot_readmit_a_removed_candidate() {
    use std::sync::Arc;
    let node = init_master("m6");
    let _daemon = Daemon::start(&node, &[]);
    let master = node.map();
    let second = ca_signed(&node, "candidate6");
    let mut entries = master.entries().to_vec();
    entries.push(("uuid-6".into(), second.digest(DigestAlgorithm::Sha256)));
    node.write_map(&CandidateMap::from_entries(entries));

    // A client that WANTS to resume: default in-memory session cache.
    let mut config = rustls::ClientConfig::builder_with_provider(noded::pki::provider::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            for c in node.ca_certs() {
                roots.add(c).unwrap();
            }
            roots
        })
        .with_client_auth_cert(second.chain.clone(), second.key.clone_key())
        .unwrap();
    config.resumption = rustls::client::Resumption::in_memory_sessions(32);
    let resuming = noded::rpc::RpcClient::new(Arc::new(config));
    assert!(eventually(&resuming, &node, true).await);
    ping(&resuming, &node).await.unwrap();
    node.write_map(&master);
    assert!(
        eventually(&resuming, &node, false).await,
        "removed candidate resumed its way back in"
    );
}

/// A client that connects and never finishes the handshake is dropped at
/// the handshake timeout (and logged), while candidates are served.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_handshakes_are_dropped_at_the_timeout() {
    use tokio::io::AsyncReadExt;
    let node = init_master("m7");
    let daemon = Daemon::start(&node, &["--handshake-timeout", "1"]);
    let mut stalled = tokio::net::TcpStream::connect(&node.address).await.unwrap();
    ping(&client(&node, Some(&node_identity(&node))), &node)
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buf))
        .await
        .expect("stalled connection not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(daemon.wait_log("not completed within", Duration::from_secs(5)));
}

/// The RPC client refuses a server whose certificate does not chain to its
/// own cluster's CA (another cluster's daemon, or an impostor).
#[tokio::test(flavor = "multi_thread")]
async fn client_verifies_the_server_chain() {
    let ours = init_master("m9");
    let theirs = init_master("x9");
    let _daemon = Daemon::start(&theirs, &[]);
    // Our client (our CA, our master's certificate) against their daemon.
    let result = ping(&client(&ours, Some(&node_identity(&ours))), &theirs).await;
    match result {
        Err(e @ Error::UntrustedServer { .. }) => {
            assert!(e.to_string().contains("does not trust"), "{e}")
        }
        other => panic!("client accepted a foreign server: {other:?}"),
    }
}
