//! The cluster config, replicated among the master and the candidates by
//! Raft (`openraft`, SPEC §10.1).
//!
//! - [`log`]: the log and the vote in `raft/`, fsynced before acknowledged.
//! - [`machine`]: the state machine, whose state is `config.json`.
//! - [`network`]: Raft messages as procedures over the mutual-TLS port.
//!
//! Every change is one entry holding the whole new config. The leader takes
//! a change only when it is based on the config last applied (the serial it
//! started from), after confirming with a majority that it still leads; the
//! entry is pushed to the nodes only once committed. Voters are the master
//! and the longest-serving online candidates, an odd number of them (at
//! most 5: an even count tolerates no more failures than one fewer, and
//! needs one more node to answer); the other candidates are learners.

pub mod log;
pub mod machine;
pub mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::{ChangeMembers, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::core::{Error, Result};
use crate::rpc::RpcClient;
use crate::state::config::{ClusterConfig, NodeRecord, NodeRole};
use crate::state::{NodeIdentity, StateDir};
use crate::wire::{Procedure, RaftCall, RaftInfo};

use self::log::LogStore;
use self::machine::ConfigMachine;
use self::network::Links;

/// One change: the whole config as it is to be. Shared, not copied, when
/// openraft clones an entry (for each follower it replicates to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    pub config: Arc<ClusterConfig>,
}

/// What applying an entry left: the `(term, serial)` of the config held,
/// and why the entry's config could not be written, if it could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub term: u64,
    pub serial: u64,
    pub error: Option<String>,
}

/// A member of the Raft group as the membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub uuid: String,
    pub name: String,
    pub address: String,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

openraft::declare_raft_types!(
    /// noded's Raft types.
    pub TypeConfig:
        D = ConfigChange,
        R = Applied,
        NodeId = u64,
        Node = Peer,
);

/// Most voters a cluster has (SPEC §10.1).
pub const MAX_VOTERS: usize = 5;
/// Longest a change waits for a majority before it is given up.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Raft's heartbeat and election timeouts, in milliseconds.
/// openraft counts a follower's timeout from the end of the leader's lease
/// (`ELECTION_MAX_MS` after its last heartbeat), so a dead leader is
/// replaced 1.8–2.4 s after its last heartbeat: 12 missed heartbeats at
/// least, which a loaded machine does not miss by accident.
pub const HEARTBEAT_MS: u64 = 150;
pub const ELECTION_MIN_MS: u64 = 600;
pub const ELECTION_MAX_MS: u64 = 1200;

/// The Raft id of the node with `uuid`: its first 64 bits (uuids are
/// random v4; a name of any other form is hashed).
pub fn node_id(uuid: &str) -> u64 {
    let hex: String = uuid.chars().filter(|c| *c != '-').take(16).collect();
    match u64::from_str_radix(&hex, 16) {
        Ok(id) if hex.len() == 16 => id,
        _ => {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(uuid.as_bytes());
            digest
                .iter()
                .take(8)
                .fold(0u64, |id, byte| (id << 8) | u64::from(*byte))
        }
    }
}

fn peer(node: &NodeRecord) -> Peer {
    Peer {
        uuid: node.uuid.clone(),
        name: node.name.clone(),
        address: node.address.clone(),
    }
}

/// Voters and learners as the config asks for them: the master first, then
/// the online candidates by how long they have been candidates.
pub fn desired_members(config: &ClusterConfig) -> (BTreeMap<u64, Peer>, BTreeMap<u64, Peer>) {
    let mut candidates: Vec<&NodeRecord> = config
        .nodes
        .iter()
        .filter(|n| n.role.is_candidate() && !n.offline)
        .collect();
    candidates.sort_by(|a, b| {
        (a.role != NodeRole::Master, a.candidate_since, &a.name).cmp(&(
            b.role != NodeRole::Master,
            b.candidate_since,
            &b.name,
        ))
    });
    let count = candidates.len().min(MAX_VOTERS);
    let voters = if count.is_multiple_of(2) {
        count.saturating_sub(1)
    } else {
        count
    }
    .max(1);
    let mut v = BTreeMap::new();
    let mut l = BTreeMap::new();
    for (i, node) in candidates.into_iter().enumerate() {
        let entry = (node_id(&node.uuid), peer(node));
        if i < voters {
            v.insert(entry.0, entry.1);
        } else {
            l.insert(entry.0, entry.1);
        }
    }
    (v, l)
}

fn raft_config() -> Result<openraft::Config> {
    openraft::Config {
        cluster_name: "noded".into(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_MIN_MS,
        election_timeout_max: ELECTION_MAX_MS,
        install_snapshot_timeout: 5_000,
        // Every entry is a whole config and is kept in memory (and a
        // snapshot is just the config): a short log keeps the master's
        // memory small at 1,000 nodes, and a follower further behind gets
        // the snapshot, no larger than one entry.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(8),
        max_payload_entries: 32,
        max_in_snapshot_log_to_keep: 2,
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::Invalid(format!("raft configuration: {e}")))
}

/// This node's Raft: the running instance and what it needs.
#[derive(Clone)]
pub struct RaftNode {
    pub raft: Raft<TypeConfig>,
    pub id: u64,
    state: StateDir,
    machine: ConfigMachine,
    /// One change at a time: check the base serial, then propose.
    proposing: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode").field("id", &self.id).finish()
    }
}

fn raft_error(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("raft: {e}"))
}

impl RaftNode {
    /// Starts Raft on `state` (creating `raft/`). A master whose log is
    /// empty (a new cluster, or one from before Raft) becomes the only
    /// voter.
    pub async fn start(state: &StateDir, identity: &NodeIdentity) -> Result<RaftNode> {
        let dir = state.raft_dir();
        let log = LogStore::open(&dir)?;
        let fresh = log.is_empty();
        let machine = ConfigMachine::open(state)?;
        let id = node_id(&identity.uuid);
        let raft = Raft::new(
            id,
            Arc::new(raft_config()?),
            Links {
                state: state.clone(),
            },
            log,
            machine.clone(),
        )
        .await
        .map_err(raft_error)?;
        if fresh {
            let config = super::load_config(state)?;
            if let Some(me) = config.nodes.iter().find(|n| n.uuid == identity.uuid) {
                if me.role == NodeRole::Master {
                    let members = BTreeMap::from([(id, peer(me))]);
                    raft.initialize(members).await.map_err(raft_error)?;
                }
            }
        }
        Ok(RaftNode {
            raft,
            id,
            state: state.clone(),
            machine,
            proposing: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// `(term, serial)` of each config applied here.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<(u64, u64)> {
        self.machine.applied()
    }

    /// Whether this node leads, and a majority acknowledged it lately
    /// (within three leases: a leader cut off from the others stops acting
    /// as the master soon after they elect another; it commits nothing
    /// meanwhile, and what it pushes carries its old term).
    pub fn leads(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let single = m.membership_config.membership().voter_ids().count() == 1;
        m.state == ServerState::Leader
            && m.current_leader == Some(self.id)
            && (single
                || m.millis_since_quorum_ack
                    .is_some_and(|ms| ms <= 3 * ELECTION_MAX_MS))
    }

    /// Before a change is checked against the config applied here: this
    /// node leads and has applied every entry committed before its term
    /// (it applied one of its own term). Otherwise a majority is asked
    /// and the state machine waited for ([`Self::confirm_leadership`]).
    async fn ensure_current(&self) -> Result<()> {
        let m = self.raft.metrics().borrow().clone();
        let current = m.state == ServerState::Leader
            && m.current_leader == Some(self.id)
            && m.last_applied
                .is_some_and(|l| l.leader_id.term == m.current_term);
        if current {
            Ok(())
        } else {
            self.confirm_leadership().await
        }
    }

    /// The leader's name, if known.
    pub fn leader_name(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|p| p.name.clone())
    }

    /// What `status` and `verify` show of this node's Raft.
    pub fn info(&self) -> RaftInfo {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let name = |id: u64| {
            membership
                .get_node(&id)
                .map(|p| p.name.clone())
                .unwrap_or_else(|| id.to_string())
        };
        let mut voters: Vec<String> = membership.voter_ids().map(name).collect();
        voters.sort();
        let mut learners: Vec<String> = membership.learner_ids().map(name).collect();
        learners.sort();
        RaftInfo {
            state: format!("{:?}", m.state).to_lowercase(),
            term: m.current_term,
            leader: m.current_leader.map(name),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            voters,
            learners,
        }
    }

    fn not_master(&self) -> Error {
        let me = self.raft.metrics().borrow().current_leader == Some(self.id);
        match self.leader_name() {
            Some(_) if me => Error::Invalid(
                "this node is not the master right now (an election is under way); retry in a few seconds, or see `nodectl status`".into(),
            ),
            Some(master) => Error::Invalid(format!(
                "this node is not the master (master is {master}); run this on {master}"
            )),
            None => Error::Invalid(
                "this node is not the master, and no master is elected now (no majority of voters answers); retry, or see `nodectl status`".into(),
            ),
        }
    }

    /// Confirms with a majority that this node still leads and has applied
    /// everything committed; names the voters that did not answer.
    pub async fn confirm_leadership(&self) -> Result<()> {
        match tokio::time::timeout(COMMIT_TIMEOUT, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match e.api_error() {
                Some(openraft::error::CheckIsLeaderError::ForwardToLeader(_)) => {
                    Err(self.not_master())
                }
                Some(_) => Err(self.no_majority().await),
                None => Err(raft_error(e)),
            },
            Err(_) => Err(self.no_majority().await),
        }
    }

    /// The error of a change no majority took, naming the silent voters.
    async fn no_majority(&self) -> Error {
        let silent = self.silent_voters().await;
        Error::Invalid(format!(
            "no majority of voters answers ({} did not, within {}s); nothing was changed",
            if silent.is_empty() {
                "a voter".to_owned()
            } else {
                silent.join(", ")
            },
            COMMIT_TIMEOUT.as_secs()
        ))
    }

    /// The error of a change this leader wrote to its log that no majority
    /// confirmed in time: it commits if the silent voters come back while
    /// this node still leads.
    async fn unconfirmed(&self) -> Error {
        let silent = self.silent_voters().await;
        Error::Unconfirmed(format!(
            "no majority of voters confirmed the change within {}s ({} did not answer): it is not committed, but may still be once they answer; check `nodectl list` before running it again",
            COMMIT_TIMEOUT.as_secs(),
            if silent.is_empty() {
                "a voter".to_owned()
            } else {
                silent.join(", ")
            },
        ))
    }

    /// Voters other than this node that do not answer a ping within 1 s.
    pub async fn silent_voters(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let mut silent = Vec::new();
        let Ok(mut client) = RpcClient::from_state(&self.state) else {
            return silent;
        };
        client.connect_timeout = Duration::from_secs(1);
        client.call_timeout = Duration::from_secs(1);
        let mut probes = Vec::new();
        for id in membership.voter_ids().filter(|id| *id != self.id) {
            if let Some(p) = membership.get_node(&id) {
                let (client, p) = (client.clone(), p.clone());
                probes.push(async move {
                    let ok = match client.connect(&p.name, &p.address).await {
                        Ok(mut conn) => conn.call(Procedure::Ping).await.is_ok(),
                        Err(_) => false,
                    };
                    (p.name, ok)
                });
            }
        }
        for (name, ok) in futures_util::future::join_all(probes).await {
            if !ok {
                silent.push(name);
            }
        }
        silent.sort();
        silent
    }

    /// Commits `config` as the next config, if the config applied here is
    /// still the one it was made from (`base_serial`). Returns the term and
    /// log index it was committed at.
    pub async fn propose(&self, base_serial: u64, mut config: ClusterConfig) -> Result<(u64, u64)> {
        let _one = self.proposing.lock().await;
        self.ensure_current().await?;
        let held = *self.machine.applied().borrow();
        if held.1 != base_serial {
            return Err(Error::Invalid(format!(
                "the cluster config changed meanwhile (serial {} here, the change was made from {base_serial}); run the command again",
                held.1
            )));
        }
        if config.serial < held.1 {
            return Err(Error::Invalid(format!(
                "a change must not lower the serial below {}",
                held.1
            )));
        }
        // A master that cannot write its own config (a read-only or
        // immutable state directory) must not commit one. A full disk shows
        // when the entry is applied (the reply says so).
        let probe = self.state.root().join(".raft-probe");
        std::fs::File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| {
                Error::Invalid(format!(
                    "this node cannot write its state directory ({e}); nothing was changed"
                ))
            })?;
        let term = self.raft.metrics().borrow().current_term;
        config.term = term;
        match tokio::time::timeout(COMMIT_TIMEOUT, self.raft.client_write(ConfigChange { config: Arc::new(config) }))
            .await
        {
            Ok(Ok(reply)) => match reply.data.error {
                None => Ok((term, reply.log_id.index)),
                Some(e) => Err(Error::Invalid(format!(
                    "committed, but this node could not write its config.json ({e}); the next change writes it"
                ))),
            },
            Ok(Err(e)) => match e.api_error() {
                Some(openraft::error::ClientWriteError::ForwardToLeader(_)) => {
                    Err(self.not_master())
                }
                Some(_) | None => Err(raft_error(e)),
            },
            Err(_) => Err(self.unconfirmed().await),
        }
    }

    /// Brings the membership to what `config` asks for: new members join
    /// as learners, then the voters are replaced, then members that left
    /// the pool are removed.
    pub async fn reconcile_membership(&self, config: &ClusterConfig) -> Result<()> {
        let (voters, learners) = desired_members(config);
        let current = self.raft.metrics().borrow().membership_config.clone();
        let membership = current.membership();
        let known: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
        let bounded = |what: &'static str| {
            move |_| Error::Invalid(format!("raft: {what} took longer than {COMMIT_TIMEOUT:?}"))
        };
        for (id, p) in voters.iter().chain(learners.iter()) {
            if !known.contains(id) {
                tokio::time::timeout(COMMIT_TIMEOUT, self.raft.add_learner(*id, p.clone(), false))
                    .await
                    .map_err(bounded("adding a learner"))?
                    .map_err(raft_error)?;
            }
        }
        let now: BTreeSet<u64> = membership.voter_ids().collect();
        let want: BTreeSet<u64> = voters.keys().copied().collect();
        if now != want {
            tokio::time::timeout(
                COMMIT_TIMEOUT,
                self.raft
                    .change_membership(ChangeMembers::ReplaceAllVoters(want.clone()), true),
            )
            .await
            .map_err(bounded("changing the voters"))?
            .map_err(raft_error)?;
        }
        let members = self.raft.metrics().borrow().membership_config.clone();
        let gone: BTreeSet<u64> = members
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| !voters.contains_key(id) && !learners.contains_key(id))
            .collect();
        if !gone.is_empty() {
            tokio::time::timeout(
                COMMIT_TIMEOUT,
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(gone), false),
            )
            .await
            .map_err(bounded("removing members"))?
            .map_err(raft_error)?;
        }
        Ok(())
    }

    /// Answers a Raft message from a peer: the reply's body.
    pub async fn answer(&self, call: RaftCall, body: &[u8]) -> Result<Vec<u8>> {
        let malformed =
            |e: serde_json::Error| Error::Invalid(format!("malformed raft message: {e}"));
        let encode = |r: std::result::Result<Vec<u8>, serde_json::Error>| {
            r.map_err(|e| Error::Invalid(format!("raft reply: {e}")))
        };
        match call {
            RaftCall::AppendEntries => {
                let request = serde_json::from_slice(body).map_err(malformed)?;
                encode(serde_json::to_vec(&self.raft.append_entries(request).await))
            }
            RaftCall::Vote => {
                let request = serde_json::from_slice(body).map_err(malformed)?;
                encode(serde_json::to_vec(&self.raft.vote(request).await))
            }
            RaftCall::InstallSnapshot => {
                let request = serde_json::from_slice(body).map_err(malformed)?;
                encode(serde_json::to_vec(
                    &self.raft.install_snapshot(request).await,
                ))
            }
            RaftCall::StepDown => {
                let to: u64 = serde_json::from_slice(body).map_err(malformed)?;
                self.step_down(to).await?;
                Ok(Vec::new())
            }
            RaftCall::Elect => {
                self.raft.trigger().elect().await.map_err(raft_error)?;
                Ok(Vec::new())
            }
        }
    }

    /// On the leader, for a leadership transfer to `to`: checks that `to`
    /// is a voter whose log is complete, then stops sending heartbeats, so
    /// that `to`'s election is granted. Heartbeats resume within a few
    /// election timeouts whatever happens.
    async fn step_down(&self, to: u64) -> Result<()> {
        self.confirm_leadership().await?;
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let name = membership
            .get_node(&to)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| to.to_string());
        if !membership.nodes().any(|(id, _)| *id == to) {
            return Err(Error::Invalid(format!(
                "{name} is not a member of Raft yet (its noded may not be running); see `nodectl status`"
            )));
        }
        let last = m.last_log_index;
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&to).cloned())
            .flatten()
            .map(|l| l.index);
        if matched < last {
            return Err(Error::Invalid(format!(
                "{name} is behind (log index {} of {}); retry once it has caught up",
                matched.unwrap_or(0),
                last.unwrap_or(0)
            )));
        }
        if !membership.voter_ids().any(|id| id == to) {
            // A learner stands as a voter first; once it leads, the voters
            // follow the config again (it first, then the longest-serving).
            tokio::time::timeout(
                COMMIT_TIMEOUT,
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([to])), true),
            )
            .await
            .map_err(|_| {
                Error::Invalid(format!(
                    "making {name} a voter took longer than {COMMIT_TIMEOUT:?}"
                ))
            })?
            .map_err(raft_error)?;
        }
        self.raft.runtime_config().heartbeat(false);
        let raft = self.raft.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3 * ELECTION_MAX_MS)).await;
            raft.runtime_config().heartbeat(true);
        });
        Ok(())
    }

    /// Stops this node's Raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// `recover --force`, on a candidate whose Raft is stopped: this node
/// becomes the only voter and the master in a new term, above any term it
/// has seen. The voters in `lost` are made regular nodes in the config
/// (they rejoin by promotion; the loop removes what they hold when they
/// come back). Writes two entries after the last one in the log (the new
/// membership, then the config) and a committed vote for this node, so
/// that Raft starts again as the leader of a group of one; then writes the
/// config. Returns the new config.
pub fn force_recovery(
    state: &StateDir,
    identity: &NodeIdentity,
    term: u64,
    lost: &[String],
) -> Result<ClusterConfig> {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};
    let mut config = super::load_config(state)?;
    let old_master = config.master().map(|m| m.name.clone()).unwrap_or_default();
    for n in &mut config.nodes {
        if n.uuid == identity.uuid {
            n.role = NodeRole::Master;
            n.offline = false;
        } else if lost.contains(&n.name) {
            n.role = NodeRole::Regular;
            n.ssh_public_key = None;
        } else if n.role == NodeRole::Master {
            n.role = NodeRole::Candidate;
        }
    }
    let me = config
        .nodes
        .iter()
        .find(|n| n.uuid == identity.uuid)
        .ok_or_else(|| Error::Invalid("this node is not in its own cluster config".into()))?;
    let id = node_id(&identity.uuid);
    let members = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, peer(me))]));
    let term = term + 1;
    config.serial += 1;
    config.term = term;
    crate::state::users::append(
        &mut config.audit,
        crate::state::users::AuditEntry::now(
            &format!("nodectl@{}", identity.name),
            "recover",
            &identity.name,
            &format!(
                "ok: the only voter; {} lost{}",
                if lost.is_empty() {
                    "no voter".to_owned()
                } else {
                    lost.join(", ")
                },
                if old_master == identity.name {
                    String::new()
                } else {
                    format!("; {old_master} was the master")
                }
            ),
        ),
    );
    let log = LogStore::open(&state.raft_dir())?;
    let next = log.last_log_id().map(|l| l.index + 1).unwrap_or(1);
    let leader = CommittedLeaderId::new(term, id);
    let entries = vec![
        Entry::<TypeConfig> {
            log_id: LogId::new(leader, next),
            payload: EntryPayload::Membership(members),
        },
        Entry::<TypeConfig> {
            log_id: LogId::new(leader, next + 1),
            payload: EntryPayload::Normal(ConfigChange {
                config: Arc::new(config.clone()),
            }),
        },
    ];
    log.force(entries, Vote::new_committed(term, id))?;
    super::save_config(state, &config)?;
    Ok(config)
}

/// Calls `procedure` on this node's own daemon; its refusal is returned
/// as it is (not master, no majority, changed meanwhile).
pub(crate) async fn local_call(
    state: &StateDir,
    procedure: Procedure,
) -> Result<crate::wire::Reply> {
    let identity = state.load_identity()?;
    let client = RpcClient::from_state(state)?;
    let mut conn = client
        .connect(&identity.name, &identity.address)
        .await
        .map_err(|e| Error::Unreachable {
            node: identity.name.clone(),
            reason: format!(
                "this node's noded does not answer ({e}); changes go through it: start it (`systemctl start noded`)"
            ),
        })?;
    conn.call(procedure).await.map_err(|e| match e {
        Error::Remote { message, .. } => Error::Invalid(message),
        other => other,
    })
}

/// Asks this node's daemon to commit `config` (made from the config at
/// `base_serial`); returns the term it was committed in.
pub async fn propose_locally(
    state: &StateDir,
    base_serial: u64,
    config: &ClusterConfig,
) -> Result<u64> {
    let config_json = String::from_utf8(crate::state::to_json(config)?)
        .map_err(|e| Error::Invalid(format!("config is not UTF-8: {e}")))?;
    let procedure = Procedure::Propose {
        base_serial,
        config_json,
    };
    match local_call(state, procedure).await? {
        crate::wire::Reply::Committed { term, .. } => Ok(term),
        other => Err(Error::Invalid(format!(
            "unexpected reply to a change: {other:?}"
        ))),
    }
}

/// This node's view of Raft, from its daemon (`None`: it runs none).
pub async fn status_locally(state: &StateDir) -> Result<Option<RaftInfo>> {
    match local_call(state, Procedure::RaftStatus).await? {
        crate::wire::Reply::RaftStatus(info) => Ok(info.map(|i| *i)),
        other => Err(Error::Invalid(format!(
            "unexpected reply to raft-status: {other:?}"
        ))),
    }
}

/// The leader's name as this node's daemon knows it.
pub async fn leader_locally(state: &StateDir) -> Result<Option<String>> {
    Ok(status_locally(state).await?.and_then(|i| i.leader))
}

/// Refuses, naming the master, unless a majority of voters confirms now
/// that this node leads: a deposed master whose config still names it, or
/// a master cut off from the majority, touches no node.
pub async fn ensure_leader_locally(state: &StateDir) -> Result<()> {
    local_call(state, Procedure::ConfirmLeadership)
        .await
        .map(|_| ())
}

/// As [`ensure_leader_locally`], but a node whose daemon is not running
/// passes (what it does touches no other node: a join token, whose joiner
/// finds the master through the daemon anyway).
pub async fn ensure_leader_if_running(state: &StateDir) -> Result<()> {
    match ensure_leader_locally(state).await {
        Err(Error::Unreachable { .. }) => Ok(()),
        other => other,
    }
}

/// What `recover --force` did: new term and serial, the serial held
/// before, the voters given up, the nodes not reached.
pub type Recovery = (u64, u64, u64, Vec<String>, Vec<(String, String)>);

/// Asks this node's daemon for `recover --force`.
pub async fn recover_locally(state: &StateDir) -> Result<Recovery> {
    match local_call(state, Procedure::Recover).await? {
        crate::wire::Reply::Recovered {
            term,
            serial,
            held_serial,
            lost,
            unreachable,
        } => Ok((term, serial, held_serial, lost, unreachable)),
        other => Err(Error::Invalid(format!(
            "unexpected reply to recover: {other:?}"
        ))),
    }
}

/// Asks this node's daemon for a leadership transfer to `to` (itself when
/// `None`).
pub async fn transfer_locally(state: &StateDir, to: Option<&str>) -> Result<()> {
    let procedure = Procedure::TransferLeadership {
        to: to.map(str::to_owned),
    };
    local_call(state, procedure).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::config::DigestAlgorithmName;

    fn node(name: &str, role: NodeRole, offline: bool, since: i64) -> NodeRecord {
        NodeRecord {
            uuid: format!(
                "{:08x}-0000-4000-8000-000000000000",
                name.len() * 7919 + name.as_bytes()[0] as usize
            ),
            name: name.to_owned(),
            address: "127.0.0.1:1".to_owned(),
            role,
            offline,
            digest: String::new(),
            cert_expires: 0,
            next_digest: None,
            server_digest: String::new(),
            next_server_digest: None,
            candidate_since: since,
            ssh_public_key: None,
        }
    }

    fn config(nodes: Vec<NodeRecord>) -> ClusterConfig {
        ClusterConfig {
            cluster_name: "c".into(),
            serial: 1,
            term: 1,
            candidate_pool_size: 10,
            digest: DigestAlgorithmName::Sha256,
            cert_days: 1,
            cert_lifetime: 0,
            ca_sha256: String::new(),
            ca_key: None,
            nodes,
            users: Vec::new(),
            audit: Vec::new(),
            ca_rotation: None,
        }
    }

    fn names(members: &BTreeMap<u64, Peer>) -> Vec<String> {
        let mut names: Vec<String> = members.values().map(|p| p.name.clone()).collect();
        names.sort();
        names
    }

    use NodeRole::{Candidate as C, Master as M, Regular as R};

    /// (nodes as (name, role, offline, candidate since), voters, learners)
    type Row = (
        &'static [(&'static str, NodeRole, bool, i64)],
        &'static [&'static str],
        &'static [&'static str],
    );

    #[test]
    fn voters_are_the_master_and_the_longest_serving_an_odd_number() {
        let rows: &[Row] = &[
            (&[("m", M, false, 9)], &["m"], &[]),
            // Two: one voter, one learner (a second voter adds no tolerance).
            (&[("m", M, false, 9), ("a", C, false, 1)], &["m"], &["a"]),
            (
                &[("m", M, false, 9), ("a", C, false, 1), ("b", C, false, 2)],
                &["a", "b", "m"],
                &[],
            ),
            (
                &[
                    ("m", M, false, 9),
                    ("a", C, false, 3),
                    ("b", C, false, 2),
                    ("c", C, false, 1),
                ],
                &["b", "c", "m"],
                &["a"],
            ),
            // Offline candidates and regular nodes are not members.
            (
                &[
                    ("m", M, false, 9),
                    ("a", C, true, 1),
                    ("b", C, false, 2),
                    ("c", R, false, 0),
                ],
                &["m"],
                &["b"],
            ),
            (
                &[
                    ("m", M, false, 0),
                    ("a", C, false, 1),
                    ("b", C, false, 2),
                    ("c", C, false, 3),
                    ("d", C, false, 4),
                    ("e", C, false, 5),
                    ("f", C, false, 6),
                ],
                &["a", "b", "c", "d", "m"],
                &["e", "f"],
            ),
        ];
        for (nodes, voters, learners) in rows {
            let nodes = nodes
                .iter()
                .map(|(n, r, o, s)| node(n, *r, *o, *s))
                .collect();
            let (v, l) = desired_members(&config(nodes));
            assert_eq!(names(&v), *voters);
            assert_eq!(names(&l), *learners);
        }
    }

    #[test]
    fn node_ids_come_from_the_uuid() {
        assert_eq!(node_id("0123456789abcdef-0000"), 0x0123_4567_89ab_cdef);
        assert_eq!(
            node_id("01234567-89ab-cdef-0000-000000000000"),
            0x0123_4567_89ab_cdef
        );
        // Anything else is hashed, the same way each time.
        assert_eq!(node_id("not-a-uuid"), node_id("not-a-uuid"));
        assert_ne!(node_id("not-a-uuid"), node_id("not-a-uuie"));
    }
}
