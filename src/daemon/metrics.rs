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

    /// The text exposition of every metric (`FAMILIES`, in order);
    /// `now` is Unix seconds. Reads the certificates from `state` (call off
    /// the async threads).
    pub fn render(
        &self,
        map: &CandidateMapHandle,
        budgets: &Budgets,
        state: &StateDir,
        now: i64,
    ) -> String {
        let scrape = Scrape {
            metrics: self,
            map,
            budgets,
            state,
            now,
        };
        let mut out = String::with_capacity(4096);
        for family in FAMILIES {
            let _ = writeln!(out, "# HELP noded_{} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE noded_{} {}", family.name, family.kind.as_str());
            let mut samples = Samples {
                out: &mut out,
                name: family.name,
            };
            (family.samples)(&scrape, &mut samples);
        }
        out
    }
}

/// What a scrape reads: the counters, and the state read at scrape time.
struct Scrape<'a> {
    metrics: &'a Metrics,
    map: &'a CandidateMapHandle,
    budgets: &'a Budgets,
    state: &'a StateDir,
    now: i64,
}

/// A metric family's `# TYPE`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: its name (after `noded_`), type, help, and how its
/// samples are read.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: fn(&Scrape<'_>, &mut Samples<'_>),
}

/// Writes the sample lines of one family.
struct Samples<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Samples<'_> {
    /// `noded_{name}{suffix}{labels} {value}`; `suffix` is `_bucket`,
    /// `_sum` or `_count` for a histogram, empty otherwise.
    fn line(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "noded_{}{suffix}", self.name);
        for (i, (key, label)) in labels.iter().enumerate() {
            let open = if i == 0 { "{" } else { "," };
            let _ = write!(self.out, "{open}{key}=\"{label}\"");
        }
        if !labels.is_empty() {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Every metric family, in the order of the exposition.
const FAMILIES: &[Family] = &[
    Family {
        name: "connections_accepted_total",
        kind: Kind::Counter,
        help: "Connections admitted after the TLS handshake.",
        samples: |s, out| out.line("", &[], s.metrics.accepted.load(Relaxed)),
    },
    Family {
        name: "ssconf_reloads_total",
        kind: Kind::Counter,
        help: "Times the ssconf files were read again (a change seen, or SIGHUP).",
        samples: |s, out| out.line("", &[], s.metrics.ssconf_reloads.load(Relaxed)),
    },
    Family {
        name: "connections_refused_total",
        kind: Kind::Counter,
        help: "Connections refused or closed by the daemon, by reason.",
        samples: |s, out| {
            for (reason, count) in Refusal::ALL.iter().zip(&s.metrics.refused) {
                out.line("", &[("reason", reason.label())], count.load(Relaxed));
            }
        },
    },
    Family {
        name: "handshakes_in_progress",
        kind: Kind::Gauge,
        help: "Connections in the TLS handshake, by lane (each lane has --max-handshakes).",
        samples: |s, out| {
            for lane in [Lane::General, Lane::ControlPlane] {
                out.line("", &[("lane", lane.label())], s.budgets.pending(lane));
            }
        },
    },
    Family {
        name: "connections_open",
        kind: Kind::Gauge,
        help: "Admitted connections open (at most --max-connections).",
        samples: |s, out| out.line("", &[], s.budgets.open()),
    },
    Family {
        name: "rpc_total",
        kind: Kind::Counter,
        help: "RPCs answered, by procedure and outcome.",
        samples: |s, out| {
            // Only the series that counted something, and ping's always.
            let names = PROCEDURES.iter().chain(std::iter::once(&"other"));
            for (name, row) in names.zip(&s.metrics.rpcs) {
                for (outcome, count) in ["ok", "error"].iter().zip(row) {
                    let n = count.load(Relaxed);
                    if n > 0 || *name == "ping" {
                        out.line("", &[("procedure", name), ("outcome", outcome)], n);
                    }
                }
            }
        },
    },
    Family {
        name: "rpc_duration_seconds",
        kind: Kind::Histogram,
        help: "Time from a request's decoding to its result, before the reply is sent.",
        samples: |s, out| {
            let mut cumulative = 0u64;
            let bounds = BUCKETS_MICROS
                .iter()
                .map(|b| format!("{}", *b as f64 / 1e6))
                .chain(std::iter::once("+Inf".to_owned()));
            for (le, count) in bounds.zip(&s.metrics.latency) {
                cumulative = cumulative.saturating_add(count.load(Relaxed));
                out.line("_bucket", &[("le", &le)], cumulative);
            }
            let sum = s.metrics.latency_sum_micros.load(Relaxed) as f64 / 1e6;
            out.line("_sum", &[], sum);
            // The count is the +Inf bucket, so the two always agree.
            out.line("_count", &[], cumulative);
        },
    },
    Family {
        name: "candidate_map_entries",
        kind: Kind::Gauge,
        help: "Entries of the candidate map in force.",
        samples: |s, out| out.line("", &[], s.map.load().len()),
    },
    Family {
        name: "candidate_map_last_reload_timestamp_seconds",
        kind: Kind::Gauge,
        help: "Unix time the candidate map in force was loaded.",
        samples: |s, out| out.line("", &[], s.map.published_at()),
    },
    Family {
        name: "certificate_expiry_seconds",
        kind: Kind::Gauge,
        help: "Seconds until the certificate's notAfter (negative once expired; the earliest of a CA bundle).",
        samples: |s, out| {
            for (label, path) in [
                ("ca", s.state.ca_pem()),
                ("server", s.state.server_pem()),
                ("client", s.state.client_pem()),
            ] {
                match earliest_not_after(&path) {
                    Ok(not_after) => out.line(
                        "",
                        &[("certificate", label)],
                        not_after.saturating_sub(s.now),
                    ),
                    Err(e) => tracing::debug!("metrics: {e}"),
                }
            }
        },
    },
];

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

    /// A scrape of a daemon that did a little of everything, with its
    /// certificates in a state directory; `now` is a day before the CA's
    /// notAfter.
    fn scrape_of_known_state() -> String {
        use crate::pki::{CertificateAuthority, CertificateSigner, NodeKey};
        let ca = CertificateAuthority::generate("test", 3650).unwrap();
        let server_csr = NodeKey::generate().unwrap().csr("m").unwrap();
        let server_pem = ca.sign_server_csr(&server_csr, "m", "uuid-m", 365).unwrap();
        let csr = NodeKey::generate().unwrap().csr("m").unwrap();
        let client_pem = ca.sign_client_csr(&csr, "m", 365).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        std::fs::write(state.ca_pem(), ca.cert_pem()).unwrap();
        std::fs::write(state.server_pem(), server_pem).unwrap();
        std::fs::write(state.client_pem(), client_pem).unwrap();
        let ca_not_after = crate::pki::CertInfo::from_der(ca.cert_der())
            .unwrap()
            .not_after;

        let m = Metrics::default();
        m.accepted();
        m.accepted();
        m.ssconf_reloaded();
        m.refused(Refusal::NotInMap);
        m.refused(Refusal::HandshakePerSource);
        m.rpc("ping", true, Duration::from_micros(40));
        m.rpc("echo", false, Duration::from_millis(3));
        m.rpc("nope", true, Duration::from_secs(1));
        let budgets = Budgets::new(4, 2, 8);
        let _slot = budgets.admit().unwrap();
        let _permit = budgets.start_handshake([127, 0, 0, 1].into()).unwrap();
        let digest = ssconf::DigestAlgorithm::Sha256.digest(ca.cert_der());
        let map = CandidateMapHandle::new(ssconf::CandidateMap::from_entries([("u1", digest)]));
        m.render(&map, &budgets, &state, ca_not_after - 86_400)
    }

    #[test]
    fn render_known_state() {
        let out = scrape_of_known_state();
        let families: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE noded_"))
            .collect();
        assert_eq!(
            families,
            [
                "connections_accepted_total counter",
                "ssconf_reloads_total counter",
                "connections_refused_total counter",
                "handshakes_in_progress gauge",
                "connections_open gauge",
                "rpc_total counter",
                "rpc_duration_seconds histogram",
                "candidate_map_entries gauge",
                "candidate_map_last_reload_timestamp_seconds gauge",
                "certificate_expiry_seconds gauge",
            ]
        );
        assert!(out.starts_with(
            "# HELP noded_connections_accepted_total Connections admitted after the TLS handshake.\n\
             # TYPE noded_connections_accepted_total counter\n\
             noded_connections_accepted_total 2\n\
             # HELP noded_ssconf_reloads_total "
        ));
        let lines: Vec<&str> = out.lines().collect();
        for want in [
            "noded_ssconf_reloads_total 1",
            "noded_connections_refused_total{reason=\"no_certificate\"} 0",
            "noded_connections_refused_total{reason=\"not_in_map\"} 1",
            "noded_connections_refused_total{reason=\"handshake_per_source\"} 1",
            "noded_handshakes_in_progress{lane=\"general\"} 1",
            "noded_handshakes_in_progress{lane=\"control_plane\"} 0",
            "noded_connections_open 1",
            "noded_rpc_total{procedure=\"ping\",outcome=\"ok\"} 1",
            "noded_rpc_total{procedure=\"ping\",outcome=\"error\"} 0",
            "noded_rpc_total{procedure=\"echo\",outcome=\"error\"} 1",
            "noded_rpc_total{procedure=\"other\",outcome=\"ok\"} 1",
            "noded_rpc_duration_seconds_bucket{le=\"0.00005\"} 1",
            "noded_rpc_duration_seconds_bucket{le=\"0.005\"} 2",
            "noded_rpc_duration_seconds_bucket{le=\"0.1\"} 2",
            "noded_rpc_duration_seconds_bucket{le=\"+Inf\"} 3",
            "noded_rpc_duration_seconds_sum 1.00304",
            "noded_rpc_duration_seconds_count 3",
            "noded_candidate_map_entries 1",
            "noded_certificate_expiry_seconds{certificate=\"ca\"} 86400",
        ] {
            assert!(lines.contains(&want), "{want} not in:\n{out}");
        }
        // A series that counted nothing is left out (ping's excepted).
        assert!(!out.contains("procedure=\"echo\",outcome=\"ok\""), "{out}");
        for cert in ["server", "client"] {
            let series = format!("noded_certificate_expiry_seconds{{certificate=\"{cert}\"}} ");
            assert!(out.contains(&series), "{series}");
        }
    }
}
