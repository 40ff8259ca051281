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

/// Sends `request` to the metrics endpoint as raw bytes and reads until the
/// server closes: the whole reply, or what arrived before a reset.
fn raw_http(addr: &str, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    // The server may close before it read everything (a head over the
    // limit): a failed write is an answer too.
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

/// The status code and the value of `header` (lower case) in `reply`.
fn status_and_header(reply: &str, header: &str) -> (String, Option<String>) {
    let (head, _) = reply.split_once("\r\n\r\n").unwrap_or((reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let value = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case(header)
            .then(|| value.trim().to_owned())
    });
    (status, value)
}

fn body_of(reply: &str) -> &str {
    reply.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// Prometheus asks for OpenMetrics first; curl and older scrapers get the
/// classic text format. Same families, same samples, in both.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_format_follows_accept() {
    let node = init_master("m4");
    let addr = format!("127.0.0.1:{}", free_port());
    let _daemon = Daemon::start(&node, &["--metrics", &addr]);
    let master = client(&node, Some(&node_identity(&node)));
    ping(&master, &node).await.unwrap();

    // What Prometheus 2.x and 3.x send.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let reply = raw_http(
        &addr,
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {prometheus}\r\n\r\n").as_bytes(),
    );
    let (status, content_type) = status_and_header(&reply, "content-type");
    assert_eq!(status, "200", "{reply}");
    let content_type = content_type.unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let open = body_of(&reply);
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(
        open.contains("# TYPE noded_connections_accepted counter\n"),
        "{open}"
    );
    assert!(open.contains("# TYPE noded_rpc_duration_seconds histogram\n"));
    assert!(sample(open, "noded_connections_accepted_total") >= 1.0);
    assert!(sample(open, "noded_rpc_total{procedure=\"ping\",outcome=\"ok\"}") >= 1.0);
    assert_eq!(
        sample(open, "noded_rpc_duration_seconds_bucket{le=\"+Inf\"}"),
        sample(open, "noded_rpc_duration_seconds_count")
    );

    for accept in [
        None,
        Some("text/plain"),
        Some("*/*"),
        Some("application/openmetrics-text;q=0,text/plain;q=0.5"),
    ] {
        let header = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        let reply = raw_http(
            &addr,
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{header}\r\n").as_bytes(),
        );
        let (status, content_type) = status_and_header(&reply, "content-type");
        assert_eq!(status, "200", "{accept:?}: {reply}");
        let content_type = content_type.unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{accept:?}: {content_type}"
        );
        let classic = body_of(&reply);
        assert!(!classic.contains("# EOF"), "{classic}");
        assert!(classic.contains("# TYPE noded_connections_accepted_total counter\n"));
        assert!(sample(classic, "noded_connections_accepted_total") >= 1.0);
        for cert in ["ca", "server", "client"] {
            let series = format!("noded_certificate_expiry_seconds{{certificate=\"{cert}\"}}");
            assert!(sample(classic, &series) > 0.0, "{series}");
        }
    }

    // Other methods and paths.
    let reply = raw_http(
        &addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status_and_header(&reply, "allow").0, "405", "{reply}");
    let reply = raw_http(&addr, b"GET /metrics/x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_and_header(&reply, "allow").0, "404", "{reply}");
}

/// A scraper that sends garbage, a head over the limit, or nothing at all
/// gets an error or a closed connection; the daemon serves on, scrapes and
/// RPCs alike.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_scrapes() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let node = init_master("m5");
    let addr = format!("127.0.0.1:{}", free_port());
    let daemon = Daemon::start(&node, &["--metrics", &addr]);

    // A request line of garbage.
    let reply = raw_http(&addr, b"\x16\x03\x01 garbage \xff\xfe\r\n\r\n");
    let status = status_and_header(&reply, "content-type").0;
    assert_eq!(status, "400", "{reply}");
    let reply = raw_http(&addr, b"GET\r\n\r\n");
    let status = status_and_header(&reply, "content-type").0;
    assert_eq!(status, "400", "{reply}");

    // Headers over the 8 KiB limit: 431, or closed.
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..400 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(40)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let reply = raw_http(&addr, &big);
    let status = status_and_header(&reply, "content-type").0;
    // 431; or a reset, when the unread rest of the request reached the
    // kernel's buffers before the reply was read.
    assert!(reply.is_empty() || status == "431", "{reply}");
    // One endless header line, too.
    let mut line = b"GET /metrics HTTP/1.1\r\nX-Long: ".to_vec();
    line.extend(std::iter::repeat_n(b'b', 64 * 1024));
    let reply = raw_http(&addr, &line);
    let status = status_and_header(&reply, "content-type").0;
    // 431; or a reset, when the unread rest of the request reached the
    // kernel's buffers before the reply was read.
    assert!(reply.is_empty() || status == "431", "{reply}");

    // Slow clients: half a request each, then silence. Up to 8 scrapes at
    // once; a ninth is closed at once, and the slow ones within the time
    // limit (5 s).
    let started = Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost:").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let reply = raw_http(&addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        reply.is_empty(),
        "a scrape over the limit was served: {reply}"
    );
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "slow scrapes held for {waited:?}"
    );
    // The RPC port was never affected, and scrapes are served again.
    let master = client(&node, Some(&node_identity(&node)));
    ping(&master, &node).await.unwrap();
    let (status, body) = curl(&format!("http://{addr}/metrics"));
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("noded_connections_open"));
    assert!(!daemon.log().contains("panicked"));
}
