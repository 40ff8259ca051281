//! Opt-in Prometheus metrics (`noded --metrics ADDR:PORT`).
//!
//! [`Metrics`] is a set of atomics the connection path bumps with relaxed
//! increments (no lock, no allocation). Everything else (map size, reload
//! time, certificate expiry) is read at scrape time. A scrape takes a
//! [`Snapshot`] of it all and has prometheus-client encode it, in the
//! OpenMetrics or the classic text format as the `Accept` header asks.
//! [`serve`] answers `GET /metrics` on a separate, loopback-only listener
//! through hyper and axum (one request per connection, bounded in size,
//! time and number at once).

use crate::wire::NodeHealth;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, text, DescriptorEncoder, EncodeLabelSet, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
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
            // The API's refusals are its own log's, not the RPC port's
            // metrics; a user not in the list is what NotInMap is here.
            DenialReason::NotInMap | DenialReason::NotAUser => Refusal::NotInMap,
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

    /// Reads every counter and the state behind the gauges, now; `now` is
    /// Unix seconds. Reads the certificates from `state` (call off the
    /// async threads).
    pub fn snapshot(
        &self,
        map: &CandidateMapHandle,
        budgets: &Budgets,
        state: &StateDir,
        (now, nodes): (i64, Vec<NodeHealth>),
    ) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Relaxed);
        let mut certificate_expiry = Vec::with_capacity(3);
        for (label, path) in [
            ("ca", state.ca_pem()),
            ("server", state.server_pem()),
            ("client", state.client_pem()),
        ] {
            match earliest_not_after(&path) {
                Ok(not_after) => certificate_expiry.push((label, not_after.saturating_sub(now))),
                Err(e) => tracing::debug!("metrics: {e}"),
            }
        }
        Snapshot {
            accepted: load(&self.accepted),
            ssconf_reloads: load(&self.ssconf_reloads),
            refused: self.refused.each_ref().map(load),
            handshakes: [Lane::General, Lane::ControlPlane].map(|l| (l, budgets.pending(l))),
            open: budgets.open(),
            rpcs: self.rpcs.each_ref().map(|row| row.each_ref().map(load)),
            latency: self.latency.each_ref().map(load),
            latency_sum_micros: load(&self.latency_sum_micros),
            map_entries: map.load().len(),
            map_published_at: map.published_at(),
            certificate_expiry,
            nodes: nodes
                .into_iter()
                .map(|h| {
                    (
                        h.name,
                        h.reachable,
                        (h.last_seen > 0).then(|| now - h.last_seen),
                    )
                })
                .collect(),
        }
    }

    /// The exposition of every metric in `format`; see [`Metrics::snapshot`].
    pub fn render(
        &self,
        map: &CandidateMapHandle,
        budgets: &Budgets,
        state: &StateDir,
        (now, nodes): (i64, Vec<NodeHealth>),
        format: Format,
    ) -> String {
        self.snapshot(map, budgets, state, (now, nodes))
            .encode(format)
    }
}

/// The two exposition formats a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, version 0.0.4.
    Classic,
    /// OpenMetrics 1.0 text (ends with `# EOF`).
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists
    /// `application/openmetrics-text` with a non-zero quality (as Prometheus
    /// does), the classic format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let wants_openmetrics = accept.unwrap_or_default().split(',').any(|range| {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            let refused = params.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    /// The reply's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Every metric's value at one scrape: plain numbers, read from the
/// atomics and the daemon's state once, then encoded by prometheus-client.
#[derive(Debug, Clone)]
pub struct Snapshot {
    accepted: u64,
    ssconf_reloads: u64,
    refused: [u64; Refusal::ALL.len()],
    handshakes: [(Lane, u32); 2],
    open: u32,
    rpcs: [[u64; 2]; PROCEDURES.len() + 1],
    latency: [u64; BUCKETS_MICROS.len() + 1],
    latency_sum_micros: u64,
    map_entries: usize,
    map_published_at: i64,
    certificate_expiry: Vec<(&'static str, i64)>,
    /// On the master: each node's name, reachability and seconds since its
    /// last answered heartbeat (none if never).
    nodes: Vec<(String, bool, Option<i64>)>,
}

impl Snapshot {
    /// The exposition in `format`. A registry per scrape: it holds this
    /// snapshot only, and a scrape is rare next to the counters' updates.
    pub fn encode(self, format: Format) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::with_capacity(4096);
        let encoded = match format {
            Format::Classic => prometheus_text::encode(&mut out, &registry),
            Format::OpenMetrics => text::encode(&mut out, &registry),
        };
        // Writing to a String cannot fail, nor can the collector below.
        if encoded.is_err() {
            tracing::warn!("metrics: encoding failed");
        }
        out
    }

    /// The latency histogram's buckets as prometheus-client takes them:
    /// `(upper bound in seconds, non-cumulative count)`, `+Inf` last.
    fn latency_buckets(&self) -> [(f64, u64); BUCKETS_MICROS.len() + 1] {
        let mut buckets = [(f64::INFINITY, 0); BUCKETS_MICROS.len() + 1];
        let bounds = BUCKETS_MICROS.iter().map(|b| *b as f64 / 1e6);
        let bounds = bounds.chain(std::iter::once(f64::INFINITY));
        for ((slot, bound), count) in buckets.iter_mut().zip(bounds).zip(self.latency) {
            *slot = (bound, count);
        }
        buckets
    }
}

/// Help texts, in the order of the exposition.
const HELP_ACCEPTED: &str = "Connections admitted after the TLS handshake.";
const HELP_RELOADS: &str = "Times the ssconf files were read again (a change seen, or SIGHUP).";
const HELP_REFUSED: &str = "Connections refused or closed by the daemon, by reason.";
const HELP_HANDSHAKES: &str =
    "Connections in the TLS handshake, by lane (each lane has --max-handshakes).";
const HELP_OPEN: &str = "Admitted connections open (at most --max-connections).";
const HELP_RPC: &str = "RPCs answered, by procedure and outcome.";
const HELP_DURATION: &str =
    "Time from a request's decoding to its result, before the reply is sent.";
const HELP_ENTRIES: &str = "Entries of the candidate map in force.";
const HELP_RELOADED_AT: &str = "Unix time the candidate map in force was loaded.";
const HELP_REACHABLE: &str = "On the master: 1 if the node answered the last heartbeat, 0 if not.";
const HELP_LAST_SEEN: &str =
    "On the master: seconds since the node last answered a heartbeat (absent if it never did).";
const HELP_EXPIRY: &str = "Seconds until the certificate's notAfter (negative once expired; the earliest of a CA bundle).";

impl Collector for Snapshot {
    fn encode(&self, mut out: DescriptorEncoder) -> fmt::Result {
        // Counter names leave out `_total`: prometheus-client adds it.
        counter(
            &mut out,
            "noded_connections_accepted",
            HELP_ACCEPTED,
            self.accepted,
        )?;
        counter(
            &mut out,
            "noded_ssconf_reloads",
            HELP_RELOADS,
            self.ssconf_reloads,
        )?;
        let refused: Vec<_> = Refusal::ALL
            .iter()
            .zip(self.refused)
            .map(|(reason, n)| ([("reason", reason.label())], n))
            .collect();
        counter_family(
            &mut out,
            "noded_connections_refused",
            HELP_REFUSED,
            &refused,
        )?;
        let lanes: Vec<_> = self
            .handshakes
            .iter()
            .map(|(lane, n)| ([("lane", lane.label())], i64::from(*n)))
            .collect();
        gauge_family(
            &mut out,
            "noded_handshakes_in_progress",
            HELP_HANDSHAKES,
            &lanes,
        )?;
        gauge(
            &mut out,
            "noded_connections_open",
            HELP_OPEN,
            i64::from(self.open),
        )?;
        // Only the series that counted something, and ping's always.
        let names = PROCEDURES.iter().chain(std::iter::once(&"other"));
        let mut rpcs = Vec::new();
        for (name, row) in names.zip(self.rpcs) {
            for (outcome, n) in ["ok", "error"].into_iter().zip(row) {
                if n > 0 || *name == "ping" {
                    rpcs.push(([("procedure", *name), ("outcome", outcome)], n));
                }
            }
        }
        counter_family(&mut out, "noded_rpc", HELP_RPC, &rpcs)?;
        let buckets = self.latency_buckets();
        // The count is the +Inf bucket, so the two always agree.
        let count = self.latency.iter().fold(0u64, |a, n| a.saturating_add(*n));
        let sum = self.latency_sum_micros as f64 / 1e6;
        out.encode_descriptor(
            "noded_rpc_duration_seconds",
            HELP_DURATION,
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        let entries = i64::try_from(self.map_entries).unwrap_or(i64::MAX);
        gauge(
            &mut out,
            "noded_candidate_map_entries",
            HELP_ENTRIES,
            entries,
        )?;
        let at = self.map_published_at;
        gauge(
            &mut out,
            "noded_candidate_map_last_reload_timestamp_seconds",
            HELP_RELOADED_AT,
            at,
        )?;
        let expiry: Vec<_> = self
            .certificate_expiry
            .iter()
            .map(|(label, seconds)| ([("certificate", *label)], *seconds))
            .collect();
        gauge_family(
            &mut out,
            "noded_certificate_expiry_seconds",
            HELP_EXPIRY,
            &expiry,
        )?;
        self.encode_nodes(&mut out)
    }
}

impl Snapshot {
    /// On the master: each node's reachability and heartbeat age.
    fn encode_nodes(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let reachable: Vec<_> = self
            .nodes
            .iter()
            .map(|(node, up, _)| ([("node", node.as_str())], i64::from(*up)))
            .collect();
        gauge_family(out, "noded_node_reachable", HELP_REACHABLE, &reachable)?;
        let last_seen: Vec<_> = self
            .nodes
            .iter()
            .filter_map(|(node, _, age)| age.map(|age| ([("node", node.as_str())], age)))
            .collect();
        gauge_family(
            out,
            "noded_node_last_seen_seconds",
            HELP_LAST_SEEN,
            &last_seen,
        )
    }
}

/// A counter without labels.
fn counter(out: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    out.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// A gauge without labels.
fn gauge(out: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> fmt::Result {
    out.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// A counter with one series per label set.
fn counter_family<L: EncodeLabelSet>(
    out: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(L, u64)],
) -> fmt::Result {
    let mut metric = out.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        metric
            .encode_family(labels)?
            .encode_counter::<NoLabelSet, _, u64>(value, None)?;
    }
    Ok(())
}

/// A gauge with one series per label set.
fn gauge_family<L: EncodeLabelSet>(
    out: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(L, i64)],
) -> fmt::Result {
    let mut metric = out.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        metric.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
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

/// Largest request head read from a scraper (hyper's smallest read
/// buffer; a longer head is answered 431).
const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper has to send its request and read the reply.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more are closed at accept.
const MAX_SCRAPES: usize = 8;

/// Answers `GET /metrics` on `listener` for as long as the task lives:
/// HTTP/1.1 by hyper, routed by axum, one request per connection.
pub async fn serve(listener: TcpListener, daemon: Arc<Daemon>) {
    let limit = Arc::new(Semaphore::new(MAX_SCRAPES));
    let router = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(daemon);
    let mut http = http1::Builder::new();
    http.max_buf_size(MAX_REQUEST)
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(IO_TIMEOUT);
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
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        tokio::spawn(async move {
            match tokio::time::timeout(IO_TIMEOUT, connection).await {
                Ok(Err(e)) => tracing::debug!("metrics: {e}"),
                Err(_) => tracing::debug!("metrics: scrape took longer than {IO_TIMEOUT:?}"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

/// `GET /metrics`: the exposition, in the format the `Accept` header asks for.
async fn scrape(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let body = tokio::task::spawn_blocking(move || {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let d = &daemon;
        d.metrics.render(
            &d.map,
            &d.budgets,
            &d.state,
            (now, d.health.snapshot()),
            format,
        )
    })
    .await;
    match body {
        Ok(body) => ([(CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
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
    fn scrape_of_known_state(format: Format) -> String {
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
        let nodes = vec![NodeHealth {
            name: "b".into(),
            reachable: true,
            last_seen: ca_not_after - 86_400 - 3,
            serial: 4,
            term: 0,
            client_cert_expires: 0,
            server_cert_expires: 0,
            error: None,
        }];
        m.render(
            &map,
            &budgets,
            &state,
            (ca_not_after - 86_400, nodes),
            format,
        )
    }

    #[test]
    fn render_known_state() {
        let out = scrape_of_known_state(Format::Classic);
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
                "node_reachable gauge",
                "node_last_seen_seconds gauge",
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
            "noded_node_reachable{node=\"b\"} 1",
            "noded_node_last_seen_seconds{node=\"b\"} 3",
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
            // prometheus-client writes bounds as Go's client does.
            "noded_rpc_duration_seconds_bucket{le=\"5e-05\"} 1",
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

    #[test]
    fn openmetrics_of_known_state() {
        let out = scrape_of_known_state(Format::OpenMetrics);
        assert!(out.ends_with("\n# EOF\n"), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        for want in [
            // OpenMetrics names a counter family without `_total`.
            "# TYPE noded_connections_accepted counter",
            "noded_connections_accepted_total 2",
            "# TYPE noded_rpc counter",
            "noded_rpc_total{procedure=\"echo\",outcome=\"error\"} 1",
            "# TYPE noded_rpc_duration_seconds histogram",
            "noded_rpc_duration_seconds_bucket{le=\"+Inf\"} 3",
            "noded_rpc_duration_seconds_count 3",
            "noded_handshakes_in_progress{lane=\"general\"} 1",
            "noded_certificate_expiry_seconds{certificate=\"ca\"} 86400",
        ] {
            assert!(lines.contains(&want), "{want} not in:\n{out}");
        }
    }

    #[test]
    fn format_follows_accept() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, want) in [
            (None, Format::Classic),
            (Some(""), Format::Classic),
            (Some("*/*"), Format::Classic),
            (Some("text/plain;version=0.0.4"), Format::Classic),
            (Some(prometheus), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("text/plain, Application/OpenMetrics-Text ; q=0.2"),
                Format::OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Classic),
            (Some("application/openmetrics-textual"), Format::Classic),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }
}
