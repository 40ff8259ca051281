//! The opt-in Prometheus endpoint (`noded --metrics`), scraped with curl.

use std::process::Command;

use noded::Error;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_endpoint() {
    let node = init_master("m1");
    let addr = format!("127.0.0.1:{}", free_port());
    let daemon = Daemon::start(&node, &["--metrics", &addr]);
    assert!(daemon
        .log()
        .contains(&format!("metrics on http://{addr}/metrics")));

    const PINGS: usize = 3;
    let master = client(&node, Some(&node_identity(&node)));
    for _ in 0..PINGS {
        ping(&master, &node).await.unwrap();
    }
    let refused = ping(&client(&node, Some(&ca_signed(&node, "regular1"))), &node).await;
    assert!(
        matches!(refused, Err(Error::NotAuthorized { .. })),
        "{refused:?}"
    );
    // The refusal is counted by the daemon's connection task; wait for it.
    assert!(daemon.wait_log("denied", std::time::Duration::from_secs(5)));

    let (status, body) = curl(&format!("http://{addr}/metrics"));
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("# TYPE noded_rpc_duration_seconds histogram"));
    let pings = PINGS as f64;
    assert!(sample(&body, "noded_connections_accepted_total") >= pings);
    assert_eq!(
        sample(
            &body,
            "noded_connections_refused_total{reason=\"not_in_map\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&body, "noded_connections_refused_total{reason=\"chain\"}"),
        0.0
    );
    assert!(sample(&body, "noded_rpc_total{procedure=\"ping\",outcome=\"ok\"}") >= pings);
    assert!(sample(&body, "noded_rpc_duration_seconds_count") >= pings);
    assert_eq!(
        sample(&body, "noded_rpc_duration_seconds_bucket{le=\"+Inf\"}"),
        sample(&body, "noded_rpc_duration_seconds_count")
    );
    assert_eq!(sample(&body, "noded_candidate_map_entries"), 1.0);
    assert!(sample(&body, "noded_candidate_map_last_reload_timestamp_seconds") > 1.6e9);
    for cert in ["ca", "server", "client"] {
        let series = format!("noded_certificate_expiry_seconds{{certificate=\"{cert}\"}}");
        assert!(sample(&body, &series) > 0.0, "{series}");
    }

    let (status, _) = curl(&format!("http://{addr}/other"));
    assert_eq!(status, "404");
    // The RPC port still serves after the scrapes.
    ping(&master, &node).await.unwrap();
    daemon.terminate();
}

#[test]
fn metrics_refuses_a_non_loopback_address() {
    let node = init_master("m1");
    for bad in [
        format!("0.0.0.0:{}", free_port()),
        "[::]:9811".to_owned(),
        "localhost:9811".to_owned(),
    ] {
        let out = Command::new(NODED)
            .arg("--state-dir")
            .arg(node.dir())
            .args(["--metrics", &bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}: {out:?}");
        let err = text(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{bad}: {err}");
        assert!(err.contains("loopback"), "{bad}: {err}");
    }
}

/// An idle daemon reads its ssconf files again only when one changes: its
/// own reads are no change (they once were, and an idle daemon re-read the
/// set every 20 ms). A real change is still seen.
#[test]
fn an_idle_daemon_does_not_reload() {
    let node = init_master("m3");
    let addr = format!("127.0.0.1:{}", free_port());
    let _daemon = Daemon::start(&node, &["--metrics", &addr]);
    let reloads = || {
        let (_, body) = curl(&format!("http://{addr}/metrics"));
        sample(&body, "noded_ssconf_reloads_total")
    };
    // The initial read; give a reload loop time to show (50 debounces).
    std::thread::sleep(std::time::Duration::from_secs(1));
    let settled = reloads();
    assert!(settled >= 1.0);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(reloads(), settled, "reloads while idle");
    let map = node.map();
    node.write_map(&map);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reloads() <= settled {
        assert!(
            std::time::Instant::now() < deadline,
            "a change was not seen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
