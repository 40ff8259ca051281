//! The convergence loop (SPEC §10.3). On the master, every `--heartbeat`
//! seconds, each online node is asked for its state over a persistent
//! connection (reopened when it breaks), at most [`CONCURRENCY`] at once; a
//! node whose ssconf, authorized_keys, CA bundle or (for a candidate)
//! config is not the cluster's gets the whole current state for its role.
//! So a node that was down while the cluster changed (a demotion, say) is
//! current within one heartbeat of coming back, with no operator.
//!
//! The commands distribute a change through a round too ([`round_now`]),
//! which does not ask a node the loop left current over the connection it
//! keeps: it sends the change as a patch of the set the node holds
//! (`Held`), one round trip less per node. A node that holds another set
//! refuses the patch and is then asked.
//!
//! A node has one interval (at least a second) to answer and be brought up
//! to date; one that does not (a frozen process whose kernel still accepts
//! TCP, a partition that drops packets) is marked unreachable and its
//! connection dropped. So up to [`CONCURRENCY`] such nodes make a round last
//! about one interval, not the connect or call timeout, and the others are
//! heartbeated meanwhile.
//!
//! Each node's health (reachable, last heartbeat answered) is kept here for
//! `nodectl list --json`, `status` and the metrics. A node gone for long is
//! reported, never removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::handlers::failed;
use super::server::Daemon;
use crate::cluster::lifecycle::Narration;
use crate::cluster::{self, ca_rotation, renewal, ClusterLock};
use crate::core::{locked, Error, Result};
use crate::rpc::fanout::{self, fan_out, CONCURRENCY};
use crate::rpc::{Connection, RpcClient};
use crate::state::config::{ClusterConfig, NodeRecord};
use crate::state::ssconf_cache::{stamp, Stamp};
use crate::state::users::AuditEntry;
use crate::state::{fingerprint, StateDir};
use crate::wire::{patch, NodeHealth, NodeInfo, Procedure, Reply, Resend, RpcError, SsconfPatch};

/// The health of every node the loop has heartbeated, by uuid.
#[derive(Debug, Default)]
pub struct HealthTable(Mutex<BTreeMap<String, NodeHealth>>);

impl HealthTable {
    /// The names of the nodes whose last heartbeat was answered.
    fn reachable(&self) -> std::collections::BTreeSet<String> {
        locked(&self.0)
            .values()
            .filter(|h| h.reachable)
            .map(|h| h.name.clone())
            .collect()
    }

    /// A copy of every node's health.
    pub fn snapshot(&self) -> Vec<NodeHealth> {
        locked(&self.0).values().cloned().collect()
    }

    fn update(&self, uuid: &str, f: impl FnOnce(&mut NodeHealth)) {
        let mut table = locked(&self.0);
        if let Some(entry) = table.get_mut(uuid) {
            f(entry);
        }
    }

    /// Keeps exactly the nodes of `config` that the loop watches.
    fn track(&self, nodes: &[NodeRecord]) {
        let mut table = locked(&self.0);
        table.retain(|uuid, _| nodes.iter().any(|n| n.uuid == *uuid));
        for n in nodes {
            table.entry(n.uuid.clone()).or_insert_with(|| NodeHealth {
                name: n.name.clone(),
                reachable: false,
                last_seen: 0,
                serial: 0,
                term: 0,
                client_cert_expires: 0,
                server_cert_expires: 0,
                error: None,
            });
        }
    }

    /// Forgets what `name` said of its server certificate's expiry.
    fn forget_expiry(&self, name: &str) {
        let mut table = locked(&self.0);
        for h in table.values_mut().filter(|h| h.name == name) {
            h.server_cert_expires = 0;
        }
    }

    fn forget_all(&self) {
        locked(&self.0).clear()
    }
}

/// The persistent connections of the loop, by uuid: each round takes a
/// node's connection out and puts it back if it still works.
type Pool = Arc<Mutex<HashMap<String, Kept>>>;

/// A kept connection, with what its node held when a round last left it.
/// The connection (about 1.4 KiB) is boxed: the pool's table and each
/// heartbeat's future hold a pointer. Held inline, at 1,000 nodes, the
/// master's peak RSS over a change rose from 71–83 to 115–131 MiB, nearly
/// all of it freed memory the allocator kept (BENCHMARKS.md).
#[derive(Debug)]
struct Kept {
    conn: Box<Connection>,
    held: Held,
}

/// What a node held when a round last brought it up to date over the
/// connection kept with it. A round that distributes a change sends the
/// node what differs from that without asking it first (no `node-info`,
/// one round trip less); the ssconf patch names the set it applies to, so
/// a node that holds another refuses it, and the round then asks. A new
/// connection (the node restarted, say) starts with nothing known, and
/// the loop's periodic rounds always ask, so a file changed behind the
/// loop's back is found within one heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    ssconf_sha256: String,
    serial: u64,
    term: u64,
    /// SHA-256 of the managed authorized_keys block.
    keys_sha256: String,
    ca_pem_sha256: String,
    /// The node was a master candidate.
    candidate: bool,
    /// A regular node held none of a candidate's files (CA key, config).
    clean: bool,
}

impl Held {
    /// Whether what is known is enough to bring `node` to `wanted` without
    /// asking it: same CA bundle and role, no candidate files to remove.
    fn enough_for(&self, wanted: &Wanted, node: &NodeRecord) -> bool {
        self.ca_pem_sha256 == wanted.ca_pem_sha256
            && self.candidate == node.role.is_candidate()
            && (self.candidate || self.clean)
    }
}

/// The least time a node is given to answer a heartbeat, whatever the
/// interval: a TLS handshake and a few calls on a loaded machine.
const MIN_ANSWER_BOUND: Duration = Duration::from_secs(1);

/// A rendered ssconf set, `(file name, text)` per file.
type SsconfFiles = Arc<Vec<(String, String)>>;

/// How many of the last sets sent are kept to patch from.
const SETS_KEPT: usize = 16;

/// What the loop keeps between rounds, shared with the handlers that
/// distribute a change through a round ([`round_now`]): the persistent
/// connections, and one round at a time.
#[derive(Debug)]
pub struct Converger {
    pool: Pool,
    /// One round at a time; holds the config serial the last round sent
    /// and the nodes it could not bring up to date.
    rounds: tokio::sync::Mutex<RoundOutcome>,
    /// The last [`SETS_KEPT`] ssconf sets rounds sent, by SHA-256, newest
    /// last: a node that holds one of them is sent what changed since.
    sent: Mutex<std::collections::VecDeque<(String, SsconfFiles)>>,
    /// The last round's reference, with the stamps of the files it was
    /// made from (`config.json`, `ca.pem`): a round at rest reads, parses
    /// and renders nothing (at 1,000 nodes, ~1 MB of config each time).
    wanted: Mutex<Option<(Vec<Stamp>, Arc<Wanted>)>>,
    /// Each node's time to answer in a round, in milliseconds.
    bound_ms: std::sync::atomic::AtomicU64,
    /// The loop's client, kept across rounds while this node's client
    /// certificate and CA bundle stay the same (by the files' SHA-256). A
    /// kept connection holds the client configuration it was made with,
    /// and with it the recorded server certificates of every node: a new
    /// client per round left one such table alive per round in which a
    /// connection was made (hundreds, while a cluster grows).
    client: Mutex<Option<(String, RpcClient)>>,
    /// Nodes admitted whose join has not been answered yet: their daemon
    /// is not running, so a round leaves them out.
    pub joining: JoinsInFlight,
}

/// What a round did: the config serial it sent, to how many nodes, and
/// the nodes it could not bring up to date, with why.
#[derive(Debug, Default, Clone)]
pub struct RoundOutcome {
    pub serial: u64,
    pub nodes: u64,
    pub behind: Vec<(String, String)>,
}

impl Default for Converger {
    fn default() -> Self {
        Converger {
            pool: Pool::default(),
            rounds: tokio::sync::Mutex::new(RoundOutcome::default()),
            sent: Mutex::default(),
            wanted: Mutex::default(),
            bound_ms: std::sync::atomic::AtomicU64::new(5_000),
            joining: JoinsInFlight::default(),
            client: Mutex::default(),
        }
    }
}

impl Converger {
    fn bound(&self) -> Duration {
        Duration::from_millis(self.bound_ms.load(Ordering::Relaxed))
    }

    /// The kept sets other than `wanted` (to patch from, by SHA-256);
    /// then keeps `wanted`.
    fn bases_of(&self, sha256: &str, files: &SsconfFiles) -> Vec<(String, SsconfFiles)> {
        let mut sent = locked(&self.sent);
        let bases = sent
            .iter()
            .filter(|(sha, _)| sha != sha256)
            .cloned()
            .collect();
        if !sent.iter().any(|(sha, _)| sha == sha256) {
            sent.push_back((sha256.to_owned(), files.clone()));
            while sent.len() > SETS_KEPT {
                sent.pop_front();
            }
        }
        bases
    }

    /// This round's reference: the last one while `config.json` and
    /// `ca.pem` are unchanged, else made anew.
    fn wanted(&self, daemon: &Daemon) -> Result<Arc<Wanted>> {
        let state = &daemon.state;
        let stamps = vec![stamp(&state.config_json()), stamp(&state.ca_pem())];
        if let Some((held, wanted)) = locked(&self.wanted).as_ref() {
            if *held == stamps {
                return Ok(wanted.clone());
            }
        }
        // A file replaced between the stamps and the read leaves stamps
        // older than the content: the next round makes it again.
        let wanted = Arc::new(Wanted::load(daemon)?);
        *locked(&self.wanted) = Some((stamps, wanted.clone()));
        Ok(wanted)
    }

    /// The loop's client for this round (see [`Converger::client`]).
    fn client(&self, state: &StateDir) -> Result<RpcClient> {
        let key = format!(
            "{} {}",
            fingerprint::file_sha256(&state.client_pem()),
            fingerprint::file_sha256(&state.ca_pem())
        );
        let mut kept = locked(&self.client);
        if let Some((held, client)) = kept.as_ref() {
            if *held == key {
                return Ok(client.clone());
            }
        }
        let client = RpcClient::from_state(state)?;
        *kept = Some((key, client.clone()));
        Ok(client)
    }
}

/// The nodes whose join is being answered, each with how many marks it
/// holds (one, as admissions mark under the cluster lock once the name is
/// known to be free; counted, so that no drop ends another's mark).
#[derive(Debug, Default, Clone)]
pub struct JoinsInFlight(Arc<Mutex<HashMap<String, usize>>>);

impl JoinsInFlight {
    /// Marks `node` as joining until the returned guard is dropped. Only
    /// an admission that passed the token and name checks marks: a name
    /// marked is left out of every round, so a peer without a token must
    /// not be able to mark the name of a node of the cluster.
    pub fn mark(&self, node: &str) -> JoinInFlight {
        *locked(&self.0).entry(node.to_owned()).or_insert(0) += 1;
        JoinInFlight {
            joins: self.clone(),
            node: node.to_owned(),
        }
    }

    fn names(&self) -> Vec<String> {
        locked(&self.0).keys().cloned().collect()
    }
}

/// A join being answered (see [`JoinsInFlight::mark`]).
#[derive(Debug)]
pub struct JoinInFlight {
    joins: JoinsInFlight,
    node: String,
}

impl Drop for JoinInFlight {
    fn drop(&mut self) {
        let mut joining = locked(&self.joins.0);
        if let Some(count) = joining.get_mut(&self.node) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                joining.remove(&self.node);
            }
        }
    }
}

/// Runs the loop until `stop` changes.
pub async fn run(daemon: Arc<Daemon>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let bound = interval.max(MIN_ANSWER_BOUND);
    let millis = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
    daemon.converger.bound_ms.store(millis, Ordering::Relaxed);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !daemon.is_master.load(Ordering::Acquire) {
            clear(&daemon.converger.pool);
            daemon.health.forget_all();
            continue;
        }
        if let Err(e) = round_now(&daemon, 0, &Resend::All).await {
            tracing::warn!("heartbeat round skipped: {e}");
            continue;
        }
        if let Err(e) = renew_due(&daemon).await {
            tracing::warn!("automatic renewal: {e}");
        }
        if let Err(e) = bring_to_ca_phase(&daemon).await {
            tracing::warn!("CA rotation: {e}");
        }
    }
}

/// A round over the loop's persistent connections that sent a config of
/// at least serial `at_least`: the last round's outcome if it did (changes
/// that arrive together share one round), else a new one, after the one
/// under way. Nodes whose join is being answered are left out. The
/// commands distribute their changes this way ([`distribute`]): no node
/// pays a new TLS handshake, and a node is sent only what changed. The
/// nodes `resend` names are asked for their state first, as the loop's
/// periodic rounds ask every node.
pub async fn round_now(daemon: &Daemon, at_least: u64, resend: &Resend) -> Result<RoundOutcome> {
    let converger = &daemon.converger;
    let mut last = converger.rounds.lock().await;
    if at_least > 0 && last.serial >= at_least {
        return Ok(last.clone());
    }
    let joining = converger.joining.names();
    let skip: Vec<&str> = joining.iter().map(String::as_str).collect();
    *last = round(
        daemon,
        &converger.pool,
        converger.bound(),
        &skip,
        Reach::All,
        resend,
    )
    .await?;
    Ok(last.clone())
}

/// A round over the online master candidates only, beside whatever round
/// is under way (a candidate in both may pay a new connection): what a
/// join waits for, so that every node that may call the new node knows
/// it when the join returns. The regular nodes, which call no one, get it
/// from the loop's next heartbeat round.
pub async fn candidates_round(daemon: &Daemon) -> Result<RoundOutcome> {
    let converger = &daemon.converger;
    let joining = converger.joining.names();
    let skip: Vec<&str> = joining.iter().map(String::as_str).collect();
    round(
        daemon,
        &converger.pool,
        converger.bound(),
        &skip,
        Reach::Candidates,
        &Resend::All,
    )
    .await
}

/// `distribute`: on the master, a round that brings every online node to
/// config `serial` or later; answers with the nodes it did not reach.
pub async fn distribute(daemon: &Daemon, serial: u64, resend: Resend) -> Result<Reply, RpcError> {
    if !daemon.is_master.load(Ordering::Acquire) {
        return Err(failed(
            "this node is not the master; the change is distributed by the master",
        ));
    }
    let outcome = round_now(daemon, serial, &resend)
        .await
        .map_err(|e| failed(format!("distributing config {serial}: {e}")))?;
    if outcome.serial < serial {
        return Err(failed(format!(
            "this node applied config {} only, not yet {serial}; run the command again",
            outcome.serial
        )));
    }
    Ok(Reply::Distributed {
        serial: outcome.serial,
        nodes: outcome.nodes,
        behind: outcome.behind,
    })
}

fn clear(pool: &Pool) {
    locked(pool).clear()
}

/// What a node of a role should hold, as this round's reference.
#[derive(Debug)]
struct Wanted {
    config: Arc<ClusterConfig>,
    /// The config's ssconf set (the servers a round's client trusts).
    set: ssconf::Ssconf,
    ssconf_files: Arc<Vec<(String, String)>>,
    ssconf_sha256: String,
    /// What changed since each set a node may hold, by its SHA-256.
    /// The kept sets a node may hold, by SHA-256: what it is sent is
    /// worked out from them when a node holds one ([`Wanted::patch_from`]).
    bases: Vec<(String, SsconfFiles)>,
    /// The patches worked out so far in this round, by base.
    patches: Mutex<HashMap<String, Arc<Vec<SsconfPatch>>>>,
    config_json: String,
    keys: Vec<String>,
    keys_sha256: String,
    ca_pem: String,
    ca_pem_sha256: String,
}

impl Wanted {
    /// The patches from the kept set whose SHA-256 is `base` to this
    /// round's set, worked out once per round and base, and only for a
    /// base some node holds (at rest, none: no node is behind).
    fn patch_from(&self, base: &str) -> Option<Arc<Vec<SsconfPatch>>> {
        let (_, old) = self.bases.iter().find(|(sha, _)| sha == base)?;
        let mut patches = locked(&self.patches);
        let patch = patches
            .entry(base.to_owned())
            .or_insert_with(|| Arc::new(patch::diff(old, &self.ssconf_files)));
        Some(patch.clone())
    }

    fn load(daemon: &Daemon) -> Result<Wanted> {
        let state = &daemon.state;
        let (config, config_json) = cluster::load_config_text(state)?;
        let set = config.to_ssconf()?;
        let ca_pem = std::fs::read_to_string(state.ca_pem()).map_err(Error::io(state.ca_pem()))?;
        let ssconf_files = Arc::new(set.render());
        let ssconf_sha256 = fingerprint::files_sha256(&ssconf_files);
        let keys = cluster::candidate_ssh_keys(&config);
        Ok(Wanted {
            bases: daemon.converger.bases_of(&ssconf_sha256, &ssconf_files),
            patches: Mutex::default(),
            ssconf_files,
            ssconf_sha256,
            config_json,
            keys_sha256: keys_sha256(&keys),
            keys,
            ca_pem_sha256: crate::core::hex::sha256_hex(ca_pem.as_bytes()),
            ca_pem,
            set,
            config: Arc::new(config),
        })
    }
}

/// Which nodes a round reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Every online node.
    All,
    /// The online master candidates only: the nodes that may call others.
    Candidates,
}

/// One heartbeat of every online node of `reach` but this one and those in
/// `skip`, each given `bound` to answer and be brought up to date. The
/// nodes `resend` names are asked for their state; the others are sent
/// what differs from what the loop knows they hold ([`Held`]), if it does.
async fn round(
    daemon: &Daemon,
    pool: &Pool,
    bound: Duration,
    skip: &[&str],
    reach: Reach,
    resend: &Resend,
) -> Result<RoundOutcome> {
    let wanted = daemon.converger.wanted(daemon)?;
    // Whole rounds, one at a time, share the kept client; a candidates'
    // round may run beside one (with another config) and takes its own,
    // so neither changes the servers the other trusts.
    let client = match reach {
        Reach::All => daemon.converger.client(&daemon.state)?,
        Reach::Candidates => RpcClient::from_state(&daemon.state)?,
    };
    client.trust_servers(&wanted.set);
    let nodes: Vec<NodeRecord> = wanted
        .config
        .online_nodes()
        .filter(|n| n.uuid != daemon.identity.uuid && !skip.contains(&n.name.as_str()))
        .filter(|n| reach == Reach::All || n.role.is_candidate())
        .cloned()
        .collect();
    if reach == Reach::All {
        daemon.health.track(&nodes);
    }
    let results = fan_out(&nodes, CONCURRENCY, &fanout::quiet, |node| {
        let (client, pool, wanted) = (client.clone(), pool.clone(), wanted.clone());
        let state = daemon.state.clone();
        let ask = resend.asks(&node.name);
        async move {
            // Started once fan_out gives this node its turn. On timeout the
            // heartbeat is dropped, and with it the connection it took out
            // of the pool: next round opens a new one.
            let beat = heartbeat(&state, &client, &pool, &wanted, &node, ask);
            match tokio::time::timeout(bound, beat).await {
                Ok(result) => result,
                Err(_) => Err(Error::Unreachable {
                    node: node.name.clone(),
                    reason: format!("no answer within {bound:?}"),
                }),
            }
        }
    })
    .await;
    let now = crate::core::time::now();
    let mut behind = Vec::new();
    for (node, result) in results {
        if let Err(e) = &result {
            behind.push((node.name.clone(), e.to_string()));
        }
        daemon.health.update(&node.uuid, |h| match result {
            Ok(beat) => {
                h.reachable = true;
                h.last_seen = now;
                h.serial = beat.serial;
                h.term = beat.term;
                if let Some((client, server)) = beat.expires {
                    h.client_cert_expires = client;
                    h.server_cert_expires = server;
                }
                h.error = None;
            }
            Err(e) => {
                if h.reachable {
                    tracing::warn!(node = %node.name, "unreachable: {e}");
                }
                h.reachable = false;
                h.error = Some(e.to_string());
            }
        });
    }
    Ok(RoundOutcome {
        serial: wanted.config.serial,
        nodes: nodes.len() as u64,
        behind,
    })
}

/// What a round keeps of a node's answer: the whole `node-info` (its
/// certificate, keys and files, some KiB) is dropped as soon as the node is
/// done, not held for every node until the round ends.
struct Beat {
    serial: u64,
    term: u64,
    /// The client and server certificates' expiry, when the node was
    /// asked.
    expires: Option<(i64, i64)>,
}

/// Brings `node` up to date, asking it for its state first when `ask` or
/// when too little is known of it ([`Held`]); returns the `(serial, term)`
/// it holds now and, when asked, its certificates' expiry.
async fn heartbeat(
    state: &StateDir,
    client: &RpcClient,
    pool: &Pool,
    wanted: &Wanted,
    node: &NodeRecord,
    ask: bool,
) -> Result<Beat> {
    let taken = locked(pool).remove(&node.uuid);
    let mut kept = None;
    if let Some(Kept { mut conn, held }) = taken {
        if !ask && held.enough_for(wanted, node) {
            match bring_known(&mut conn, wanted, node, &held).await {
                Ok(Some(held)) => {
                    let beat = Beat {
                        serial: held.serial,
                        term: held.term,
                        expires: None,
                    };
                    locked(pool).insert(node.uuid.clone(), Kept { conn, held });
                    return Ok(beat);
                }
                Ok(None) => kept = Some(conn),
                Err(e) => {
                    tracing::debug!(node = %node.name, "kept connection failed, reconnecting: {e}");
                }
            }
        } else {
            kept = Some(conn);
        }
    }
    // A kept connection may have ended meanwhile (the node restarted or
    // timed it out, or closed it because this node's client certificate
    // was renewed and left the map): one new connection is tried then.
    let pooled = match kept {
        Some(mut conn) => match conn.call(Procedure::NodeInfo).await {
            Ok(reply) => Some((conn, reply)),
            Err(e) => {
                tracing::debug!(node = %node.name, "kept connection failed, reconnecting: {e}");
                None
            }
        },
        None => None,
    };
    let (mut conn, reply) = match pooled {
        Some(pair) => pair,
        None => {
            let mut conn = Box::new(client.connect(&node.name, &node.address).await?);
            let reply = conn.call(Procedure::NodeInfo).await?;
            (conn, reply)
        }
    };
    let info = match reply {
        Reply::NodeInfo(info) => info,
        other => return Err(Error::Invalid(format!("unexpected reply {other:?}"))),
    };
    let held = bring_current(state, &mut conn, wanted, node, &info).await?;
    let beat = Beat {
        serial: held.serial,
        term: held.term,
        expires: Some((info.client_cert_expires, info.server_cert_expires)),
    };
    locked(pool).insert(node.uuid.clone(), Kept { conn, held });
    Ok(beat)
}

/// Sends `node`, of which `held` is known, what of `wanted` it lacks: the
/// config (a candidate) and an ssconf patch when its set is another, the
/// authorized_keys block when it differs (with the patch, in the same
/// request, and written only if the node stored the patched set). Returns
/// what the node holds now, or `None` when the round must ask it: the set
/// it is known to hold is no longer kept to patch from, or it refused the
/// patch (it holds another set, or, during an upgrade, does not know the
/// combined request), and then nothing was sent after.
async fn bring_known(
    conn: &mut Connection,
    wanted: &Wanted,
    node: &NodeRecord,
    held: &Held,
) -> Result<Option<Held>> {
    let mut now = held.clone();
    let keying = held.keys_sha256 != wanted.keys_sha256;
    if held.ssconf_sha256 != wanted.ssconf_sha256 {
        let keys = keying.then(|| wanted.keys.clone());
        let Some(patch) = patch_of(wanted, &held.ssconf_sha256, keys) else {
            return Ok(None);
        };
        tracing::debug!(node = %node.name, held = held.serial, "sending the change");
        if node.role.is_candidate() {
            let config_json = wanted.config_json.clone();
            conn.call(Procedure::WriteConfig { config_json }).await?;
        }
        match conn.call(patch).await {
            Ok(Reply::SsconfWritten { serial }) => {
                now.serial = serial;
                now.term = wanted.config.term;
            }
            Ok(_) => {}
            Err(e @ Error::Remote { .. }) => {
                tracing::debug!(node = %node.name, "ssconf patch refused, asking the node: {e}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        now.ssconf_sha256 = wanted.ssconf_sha256.clone();
    } else if keying {
        let keys = wanted.keys.clone();
        conn.call(Procedure::WriteAuthorizedKeys { keys }).await?;
    }
    if keying {
        now.keys_sha256 = wanted.keys_sha256.clone();
    }
    Ok(Some(now))
}

/// Sends `node` whatever of its role's state differs from `wanted`;
/// returns what it holds now.
async fn bring_current(
    state: &StateDir,
    conn: &mut Connection,
    wanted: &Wanted,
    node: &NodeRecord,
    info: &NodeInfo,
) -> Result<Held> {
    let mut held = Held {
        // Both are the wanted ones once the calls below succeeded.
        ssconf_sha256: wanted.ssconf_sha256.clone(),
        keys_sha256: wanted.keys_sha256.clone(),
        serial: info.ssconf_serial,
        term: info.ssconf_term,
        ca_pem_sha256: info.ca_pem_sha256.clone(),
        candidate: node.role.is_candidate(),
        clean: !(info.role_files.ca_key || info.role_files.config),
    };
    if info.ca_pem_sha256 != wanted.ca_pem_sha256 {
        // The master's bundle is the one of the CA rotation's phase (if one
        // is under way). Not while a command holds the cluster lock: a CA
        // rotation changes the bundles node by node.
        if let Ok(_lock) = ClusterLock::acquire(state, false, "convergence loop") {
            tracing::info!(node = %node.name, "CA bundle behind: sending the current one");
            let ca_pem = wanted.ca_pem.clone();
            conn.call(Procedure::InstallCaBundle { ca_pem }).await?;
            held.ca_pem_sha256 = wanted.ca_pem_sha256.clone();
        }
    }
    if info.ssconf_sha256.as_deref().ok() != Some(wanted.ssconf_sha256.as_str()) {
        tracing::info!(
            node = %node.name,
            held = info.ssconf_serial,
            current = wanted.config.serial,
            "ssconf behind: sending the current state"
        );
        // The config first: a round cut off between the two (the node's
        // time ran out) leaves the ssconf behind, which the next round
        // sees and sends both again; the other way round, nothing would
        // show that a candidate's config stayed behind.
        if node.role.is_candidate() {
            let config_json = wanted.config_json.clone();
            conn.call(Procedure::WriteConfig { config_json }).await?;
        }
        if let Reply::SsconfWritten { serial } = send_ssconf(conn, wanted, node, info).await? {
            held.serial = serial;
            held.term = wanted.config.term;
        }
    }
    let files = &info.role_files;
    if !node.role.is_candidate() && (files.ca_key || files.config) {
        // A candidate demoted while it was down still holds the CA key and
        // the config (an SSH key alone may be the operator's own, in a
        // shared SSH directory: verify reports it, the loop leaves it). Not
        // while a command holds the cluster lock: a promotion installs the
        // files before it commits.
        if let Ok(_lock) = ClusterLock::acquire(state, false, "convergence loop") {
            tracing::warn!(node = %node.name, "regular node holds candidate files: removing them");
            conn.call(Procedure::RemoveCandidateFiles).await?;
            held.clean = true;
        }
    }
    if info.authorized_keys.as_ref().ok() != Some(&wanted.keys) {
        tracing::info!(node = %node.name, "authorized_keys behind: sending the current block");
        let keys = wanted.keys.clone();
        conn.call(Procedure::WriteAuthorizedKeys { keys }).await?;
    }
    Ok(held)
}

/// Sends `node` the current ssconf set: what changed since the set it
/// holds when that is one of the last sent, else (or when the node refuses
/// the patch) the whole set.
async fn send_ssconf(
    conn: &mut Connection,
    wanted: &Wanted,
    node: &NodeRecord,
    info: &NodeInfo,
) -> Result<Reply> {
    if let Some(patch) = info
        .ssconf_sha256
        .as_deref()
        .ok()
        .and_then(|sha| patch_of(wanted, sha, None))
    {
        match conn.call(patch).await {
            Ok(reply) => return Ok(reply),
            Err(e @ Error::Remote { .. }) => {
                tracing::debug!(node = %node.name, "ssconf patch refused, sending the whole set: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    let files = wanted.ssconf_files.as_ref().clone();
    conn.call(Procedure::WriteSsconf { files }).await
}

/// The patch from the kept set whose SHA-256 is `base` to `wanted`'s set,
/// if that set is kept; with `keys`, followed by that authorized_keys
/// block if the node stores the patched set.
fn patch_of(wanted: &Wanted, base: &str, keys: Option<Vec<String>>) -> Option<Procedure> {
    let patches = wanted.patch_from(base)?.as_ref().clone();
    let (base_sha256, sha256) = (base.to_owned(), wanted.ssconf_sha256.clone());
    Some(match keys {
        Some(keys) => Procedure::PatchSsconfAndKeys {
            base_sha256,
            patches,
            sha256,
            keys,
        },
        None => Procedure::PatchSsconf {
            base_sha256,
            patches,
            sha256,
        },
    })
}

/// SHA-256 (hex) of an authorized_keys block.
fn keys_sha256(keys: &[String]) -> String {
    crate::core::hex::sha256_hex(keys.join("\n").as_bytes())
}

/// Automatic renewal (SPEC §8.1): the client and server certificates of
/// every online node, this one included, once two thirds of their lifetime
/// has passed, and the client certificate of a node that lost it to a
/// renewal while it was down, through the same steps as `renew-crypto`;
/// only when no command holds the cluster lock (the next round tries
/// again).
async fn renew_due(daemon: &Daemon) -> Result<()> {
    let state = &daemon.state;
    let config = cluster::load_config(state)?;
    let now = crate::core::time::now();
    let third = i64::try_from(config.cert_lifetime().as_secs() / 3).unwrap_or(i64::MAX);
    let due = |expires: i64| expires > 0 && expires - now <= third;
    let reachable = daemon.health.reachable();
    // Also a node whose certificate was renewed away: a renewal step failed
    // while it could not be reached, so it keeps no valid entry (an empty
    // digest) until it is renewed again, now that it answers.
    let renewed_away = |n: &NodeRecord| n.digest.is_empty() && reachable.contains(&n.name);
    let clients: Vec<String> = config
        .online_nodes()
        .filter(|n| due(n.cert_expires) || renewed_away(n))
        .map(|n| n.name.clone())
        .collect();
    let mut servers: Vec<String> = daemon
        .health
        .snapshot()
        .into_iter()
        .filter(|h| h.reachable && due(h.server_cert_expires))
        .map(|h| h.name)
        .collect();
    let own = crate::pki::load_certs(&state.server_pem())?;
    if let Some(cert) = own.first() {
        if due(crate::pki::CertInfo::from_der(cert)?.not_after) {
            servers.push(daemon.identity.name.clone());
        }
    }
    if clients.is_empty() && servers.is_empty() {
        return Ok(());
    }
    let mut failed = cluster::PushOutcome::default();
    let outcome = {
        let Ok(_lock) = ClusterLock::acquire(state, false, "automatic renewal") else {
            return Ok(());
        };
        let mut config = cluster::master_config(state)?;
        let talk = logged();
        let mut outcome = Ok(());
        if !clients.is_empty() {
            tracing::info!(nodes = ?clients, "automatic renewal of client certificates");
            outcome =
                renewal::node_certificates(state, &mut config, &clients, &mut failed, talk).await;
        }
        if !servers.is_empty() && outcome.is_ok() {
            tracing::info!(nodes = ?servers, "automatic renewal of server certificates");
            outcome =
                renewal::server_certificates(state, &mut config, &servers, &mut failed, talk).await;
            // Until the next heartbeat tells the new expiry.
            for name in &servers {
                daemon.health.forget_expiry(name);
            }
        }
        outcome
    };
    super::runtime::reload_certificates(daemon);
    for (node, why) in &failed.unreachable {
        tracing::warn!(%node, "automatic renewal incomplete: {why}");
    }
    // The audit trail, once the lock is free again (recording takes it).
    audit(
        state,
        "renew client certificate",
        &clients,
        &outcome,
        &failed,
    )
    .await;
    audit(
        state,
        "renew server certificate",
        &servers,
        &outcome,
        &failed,
    )
    .await;
    outcome
}

/// One audit entry with actor `noded` per node of `names` for what the
/// loop did: `ok`, `partial` (some node was not done) or the error.
async fn audit(
    state: &StateDir,
    action: &str,
    names: &[String],
    outcome: &Result<()>,
    failed: &cluster::PushOutcome,
) {
    let result = match (outcome, failed.is_complete()) {
        (Err(e), _) => format!("error: {e}"),
        (Ok(()), true) => "ok".to_owned(),
        (Ok(()), false) => format!("partial: {} node(s) not done", failed.unreachable.len()),
    };
    for name in names {
        let entry = AuditEntry::now("noded", action, name, &result);
        if let Err(e) = cluster::audit::record(state, entry).await {
            tracing::warn!("audit trail: {e}");
        }
    }
}

/// During a CA rotation's reissue or rollback phase, a reachable node that
/// the phase has not reached yet (it was down when the command ran) gets its
/// certificates reissued by the CA that signs now, as `--continue-ca` would;
/// only when no command holds the cluster lock.
async fn bring_to_ca_phase(daemon: &Daemon) -> Result<()> {
    let state = &daemon.state;
    let config = cluster::load_config(state)?;
    let reachable = daemon.health.reachable();
    let behind = ca_rotation::behind_phase(&config, &daemon.identity.name, &reachable);
    if behind.is_empty() {
        return Ok(());
    }
    let mut failed = cluster::PushOutcome::default();
    let (phase, outcome) = {
        let Ok(_lock) = ClusterLock::acquire(state, false, "convergence loop") else {
            return Ok(());
        };
        let mut config = cluster::master_config(state)?;
        let phase = ca_rotation::phase_of(&config);
        tracing::info!(nodes = ?behind, %phase, "CA rotation: bringing nodes to the phase");
        let outcome =
            ca_rotation::bring_to_phase(state, &mut config, &behind, &mut failed, logged()).await;
        (phase, outcome)
    };
    super::runtime::reload_certificates(daemon);
    let action = format!("reissue certificates (CA rotation, {phase} phase)");
    audit(state, &action, &behind, &outcome, &failed).await;
    outcome
}

fn log_line(line: &str) {
    tracing::info!("{line}");
}

fn log_warning(line: &str) {
    tracing::warn!("{line}");
}

fn nothing() {}

/// How the master's daemon tells an automatic renewal: in its log.
fn logged() -> Narration<'static> {
    Narration {
        on_line: &log_line,
        on_warning: &log_warning,
        on_step: &nothing,
        on_failure: &log_warning,
    }
}
