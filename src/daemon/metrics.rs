//! Opt-in Prometheus metrics (`noded --metrics ADDR:PORT`).
//!
//! [`Metrics`] is a set of atomics the connection path bumps with relaxed
//! increments (no lock, no allocation). Everything else (map size, reload
//! time, certificate expiry) is read at scrape time. [`serve`] answers
//! `GET /metrics` on a separate, loopback-only listener with the text
//! exposition format; the HTTP is a minimal hand-written subset (one
//! request per connection, bounded in size and time), enough for
//! Prometheus and curl on loopback.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::core::{Error, Result};
use crate::daemon::auth::DenialReason;
use crate::daemon::budget::{Budgets, Exhausted, Lane};
use crate::daemon::reload::CandidateMapHandle;
use crate::daemon::server::Daemon;
use crate::state::StateDir;

/// Why a connection was refused, as the `reason` label says it. The
/// discriminant is the counter's index (same order as [`Refusal::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoCertificate,
    Chain,
    NotInMap,
    RemovedFromMap,
    Handshake,
    Anonymous,
    JoinRefused,
    ConnectionLimit,
    HandshakeLimit,
    ControlPlaneHandshakeLimit,
    HandshakePerSource,
}

impl Refusal {
    pub const ALL: [Refusal; 11] = [
        Refusal::NoCertificate,
        Refusal::Chain,
        Refusal::NotInMap,
        Refusal::RemovedFromMap,
        Refusal::Handshake,
        Refusal::Anonymous,
        Refusal::JoinRefused,
        Refusal::ConnectionLimit,
        Refusal::HandshakeLimit,
        Refusal::ControlPlaneHandshakeLimit,
        Refusal::HandshakePerSource,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_certificate",
            Refusal::Chain => "chain",
            Refusal::NotInMap => "not_in_map",
            Refusal::RemovedFromMap => "removed_from_map",
            Refusal::Handshake => "handshake",
            Refusal::Anonymous => "anonymous",
            Refusal::JoinRefused => "join_refused",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HandshakeLimit => "handshake_limit",
            Refusal::ControlPlaneHandshakeLimit => "control_plane_handshake_limit",
            Refusal::HandshakePerSource => "handshake_per_source",
        }
    }
}

impl From<&DenialReason> for Refusal {
    fn from(reason: &DenialReason) -> Self {
        match reason {
            DenialReason::NoCertificate => Refusal::NoCertificate,
            DenialReason::Chain(_) => Refusal::Chain,
            DenialReason::NotInMap => Refusal::NotInMap,
            DenialReason::RemovedFromMap => Refusal::RemovedFromMap,
            DenialReason::Handshake(_) => Refusal::Handshake,
            DenialReason::AnonymousRequest(_) => Refusal::Anonymous,
            DenialReason::JoinRefused(_) => Refusal::JoinRefused,
            DenialReason::Exhausted(Exhausted::Connections { .. }) => Refusal::ConnectionLimit,
            DenialReason::Exhausted(Exhausted::Handshakes {
                lane: Lane::General,
                ..
            }) => Refusal::HandshakeLimit,
            DenialReason::Exhausted(Exhausted::Handshakes {
                lane: Lane::ControlPlane,
                ..
            }) => Refusal::ControlPlaneHandshakeLimit,
            DenialReason::Exhausted(Exhausted::HandshakesFromSource { .. }) => {
                Refusal::HandshakePerSource
            }
        }
    }
}

/// Every `Procedure::name()`, in a fixed order: the `procedure` label.
/// A name missing here is counted as `other`.
pub const PROCEDURES: [&str; 15] = [
    "ping",
    "node-info",
    "write-ssconf",
    "echo",
    "join",
    "write-config",
    "install-candidate-files",
    "remove-candidate-files",
    "generate-ssh-key",
    "write-authorized-keys",
    "prepare-client-key",
    "install-client-cert",
    "install-server-cert",
    "replace-ssh-key",
    "install-ca-bundle",
];
const OTHER: usize = PROCEDURES.len();

/// Upper bounds of the latency histogram's buckets, in microseconds
/// (`+Inf` is implicit).
pub const BUCKETS_MICROS: [u64; 10] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000,
];

/// The daemon's counters. All updates are relaxed atomic increments.
#[derive(Debug)]
pub struct Metrics {
    accepted: AtomicU64,
    ssconf_reloads: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    /// `[procedure][0 = ok, 1 = error]`; the last row is `other`.
    rpcs: [[AtomicU64; 2]; PROCEDURES.len() + 1],
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    latency: [AtomicU64; BUCKETS_MICROS.len() + 1],
    latency_sum_micros: AtomicU64,
    latency_count: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            accepted: AtomicU64::new(0),
            ssconf_reloads: AtomicU64::new(0),
            refused: Default::default(),
            rpcs: Default::default(),
            latency: Default::default(),
            latency_sum_micros: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// A connection completed its handshake and was admitted.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }

    /// The ssconf files were read again (a change, or SIGHUP).
    pub fn ssconf_reloaded(&self) {
        self.ssconf_reloads.fetch_add(1, Relaxed);
    }

    /// A connection was refused or closed for `reason`.
    pub fn refused(&self, reason: Refusal) {
        if let Some(c) = self.refused.get(reason as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// One RPC finished, `ok` or not, after `elapsed`.
    pub fn rpc(&self, procedure: &'static str, ok: bool, elapsed: Duration) {
        let p = PROCEDURES
            .iter()
            .position(|n| *n == procedure)
            .unwrap_or(OTHER);
        if let Some(c) = self.rpcs.get(p).and_then(|row| row.get(usize::from(!ok))) {
            c.fetch_add(1, Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_MICROS
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(BUCKETS_MICROS.len());
        if let Some(c) = self.latency.get(bucket) {
            c.fetch_add(1, Relaxed);
        }
        self.latency_sum_micros.fetch_add(micros, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// The text exposition of every metric; `now` is Unix seconds. Reads
    /// the certificates from `state` (call off the async threads).
    pub fn render(
        &self,
        map: &CandidateMapHandle,
        budgets: &Budgets,
        state: &StateDir,
        now: i64,
    ) -> String {
        let mut out = String::with_capacity(4096);
        fn head(out: &mut String, name: &str, kind: &str, help: &str) {
            let _ = writeln!(out, "# HELP noded_{name} {help}");
            let _ = writeln!(out, "# TYPE noded_{name} {kind}");
        }

        head(
            &mut out,
            "connections_accepted_total",
            "counter",
            "Connections admitted after the TLS handshake.",
        );
        let _ = writeln!(
            out,
            "noded_connections_accepted_total {}",
            self.accepted.load(Relaxed)
        );
        head(
            &mut out,
            "ssconf_reloads_total",
            "counter",
            "Times the ssconf files were read again (a change seen, or SIGHUP).",
        );
        let _ = writeln!(
            out,
            "noded_ssconf_reloads_total {}",
            self.ssconf_reloads.load(Relaxed)
        );

        head(
            &mut out,
            "connections_refused_total",
            "counter",
            "Connections refused or closed by the daemon, by reason.",
        );
        for (reason, count) in Refusal::ALL.iter().zip(&self.refused) {
            let _ = writeln!(
                out,
                "noded_connections_refused_total{{reason=\"{}\"}} {}",
                reason.label(),
                count.load(Relaxed)
            );
        }

        head(
            &mut out,
            "handshakes_in_progress",
            "gauge",
            "Connections in the TLS handshake, by lane (each lane has --max-handshakes).",
        );
        for lane in [Lane::General, Lane::ControlPlane] {
            let _ = writeln!(
                out,
                "noded_handshakes_in_progress{{lane=\"{}\"}} {}",
                lane.label(),
                budgets.pending(lane)
            );
        }
        head(
            &mut out,
            "connections_open",
            "gauge",
            "Admitted connections open (at most --max-connections).",
        );
        let _ = writeln!(out, "noded_connections_open {}", budgets.open());

        head(
            &mut out,
            "rpc_total",
            "counter",
            "RPCs answered, by procedure and outcome.",
        );
        let names = PROCEDURES.iter().chain(std::iter::once(&"other"));
        for (name, row) in names.zip(&self.rpcs) {
            for (outcome, count) in ["ok", "error"].iter().zip(row) {
                let n = count.load(Relaxed);
                if n > 0 || *name == "ping" {
                    let _ = writeln!(
                        out,
                        "noded_rpc_total{{procedure=\"{name}\",outcome=\"{outcome}\"}} {n}"
                    );
                }
            }
        }

        head(
            &mut out,
            "rpc_duration_seconds",
            "histogram",
            "Time from a request's decoding to its result, before the reply is sent.",
        );
        let mut cumulative = 0u64;
        let bounds = BUCKETS_MICROS
            .iter()
            .map(|b| format!("{}", *b as f64 / 1e6))
            .chain(std::iter::once("+Inf".to_owned()));
        for (le, count) in bounds.zip(&self.latency) {
            cumulative = cumulative.saturating_add(count.load(Relaxed));
            let _ = writeln!(
                out,
                "noded_rpc_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "noded_rpc_duration_seconds_sum {}",
            self.latency_sum_micros.load(Relaxed) as f64 / 1e6
        );
        // The count is the +Inf bucket, so the two always agree.
        let _ = writeln!(out, "noded_rpc_duration_seconds_count {cumulative}");

        head(
            &mut out,
            "candidate_map_entries",
            "gauge",
            "Entries of the candidate map in force.",
        );
        let _ = writeln!(out, "noded_candidate_map_entries {}", map.load().len());
        head(
            &mut out,
            "candidate_map_last_reload_timestamp_seconds",
            "gauge",
            "Unix time the candidate map in force was loaded.",
        );
        let _ = writeln!(
            out,
            "noded_candidate_map_last_reload_timestamp_seconds {}",
            map.published_at()
        );

        head(
            &mut out,
            "certificate_expiry_seconds",
            "gauge",
            "Seconds until the certificate's notAfter (negative once expired; the earliest of a CA bundle).",
        );
        for (label, path) in [
            ("ca", state.ca_pem()),
            ("server", state.server_pem()),
            ("client", state.client_pem()),
        ] {
            match earliest_not_after(&path) {
                Ok(not_after) => {
                    let _ = writeln!(
                        out,
                        "noded_certificate_expiry_seconds{{certificate=\"{label}\"}} {}",
                        not_after.saturating_sub(now)
                    );
                }
                Err(e) => tracing::debug!("metrics: {e}"),
            }
        }
        out
    }
}

fn earliest_not_after(path: &std::path::Path) -> Result<i64> {
    let certs = crate::pki::load_certs(path)?;
    let mut earliest = None;
    for cert in &certs {
        let t = crate::pki::CertInfo::from_der(cert)?.not_after;
        earliest = Some(earliest.map_or(t, |e: i64| e.min(t)));
    }
    earliest.ok_or_else(|| Error::Pem {
        path: path.to_path_buf(),
        reason: "no certificate".into(),
    })
}

/// Parses `--metrics`: an IP address and port, and the address must be
/// loopback (127.0.0.0/8 or ::1); the endpoint has no authentication.
pub fn parse_address(address: &str) -> Result<SocketAddr> {
    let addr: SocketAddr = address.parse().map_err(|_| {
        Error::Invalid(format!(
            "--metrics {address}: expected a loopback IP address and port, e.g. 127.0.0.1:9811"
        ))
    })?;
    if !addr.ip().is_loopback() {
        return Err(Error::Invalid(format!(
            "--metrics {address}: refused, the metrics endpoint listens on loopback only (127.0.0.0/8 or [::1])"
        )));
    }
    Ok(addr)
}

/// Largest request head read from a scraper.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper has to send its request and read the reply.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more are closed at accept.
const MAX_SCRAPES: usize = 8;

/// Answers `GET /metrics` on `listener` for as long as the task lives.
pub async fn serve(listener: TcpListener, daemon: Arc<Daemon>) {
    let limit = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(IO_TIMEOUT, scrape(stream, &daemon)).await;
            drop(permit);
        });
    }
}

async fn scrape(mut stream: TcpStream, daemon: &Arc<Daemon>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST {
            respond(&mut stream, "431 Request Header Fields Too Large", "").await;
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split('?').next().unwrap_or_default());
    match (method, path) {
        (Some("GET"), Some("/metrics")) => {
            let d = daemon.clone();
            let body = tokio::task::spawn_blocking(move || {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                d.metrics.render(&d.map, &d.budgets, &d.state, now)
            })
            .await;
            match body {
                Ok(body) => respond(&mut stream, "200 OK", &body).await,
                Err(_) => respond(&mut stream, "500 Internal Server Error", "").await,
            }
        }
        (Some("GET"), Some(_)) => respond(&mut stream, "404 Not Found", "not found\n").await,
        (Some(_), Some(_)) => respond(&mut stream, "405 Method Not Allowed", "only GET\n").await,
        _ => respond(&mut stream, "400 Bad Request", "").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        assert!(parse_address("127.0.0.1:9811").is_ok());
        assert!(parse_address("127.3.2.1:9811").is_ok());
        assert!(parse_address("[::1]:9811").is_ok());
        assert!(parse_address("0.0.0.0:9811").is_err());
        assert!(parse_address("[::]:9811").is_err());
        assert!(parse_address("10.0.0.1:9811").is_err());
        assert!(parse_address("localhost:9811").is_err());
    }

    #[test]
    fn every_procedure_has_a_label() {
        use crate::wire::Procedure;
        for p in [
            Procedure::Ping,
            Procedure::NodeInfo,
            Procedure::GenerateSshKey,
        ] {
            assert!(PROCEDURES.contains(&p.name()));
        }
    }

    #[test]
    fn histogram_buckets() {
        let m = Metrics::default();
        m.rpc("ping", true, Duration::from_micros(40));
        m.rpc("ping", false, Duration::from_millis(3));
        m.rpc("nope", true, Duration::from_secs(1));
        assert_eq!(m.latency_count.load(Relaxed), 3);
        assert_eq!(m.latency[0].load(Relaxed), 1);
        assert_eq!(m.latency[6].load(Relaxed), 1);
        assert_eq!(m.latency[BUCKETS_MICROS.len()].load(Relaxed), 1);
        assert_eq!(m.rpcs[0][0].load(Relaxed), 1);
        assert_eq!(m.rpcs[0][1].load(Relaxed), 1);
        assert_eq!(m.rpcs[OTHER][0].load(Relaxed), 1);
    }
}
