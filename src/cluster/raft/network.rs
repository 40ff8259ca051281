//! Raft messages between the master and the candidates, over the mutual-TLS
//! RPC port: each is a [`Procedure::Raft`] call, admitted by the candidate
//! map like any other, to a server that must prove it is the node the
//! membership names (SPEC §9.1).

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Peer, TypeConfig};
use crate::core::Error;
use crate::rpc::{Connection, RpcClient};
use crate::state::StateDir;
use crate::wire::{Procedure, RaftCall, Reply};

type NodeId = u64;

/// The most bytes of entries sent in one message, well under the 16 MiB
/// frame limit.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Makes one [`PeerLink`] per peer openraft replicates to.
#[derive(Debug, Clone)]
pub struct Links {
    pub state: StateDir,
}

impl RaftNetworkFactory<TypeConfig> for Links {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> PeerLink {
        PeerLink {
            state: self.state.clone(),
            target,
            peer: node.clone(),
            conn: None,
        }
    }
}

/// A kept connection to one peer, opened again after any failure.
#[derive(Debug)]
pub struct PeerLink {
    state: StateDir,
    target: NodeId,
    peer: Peer,
    conn: Option<Connection>,
}

/// A failure before the peer answered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LinkError(String);

/// Sends `call` with `body` to `peer` and returns the body of its answer.
pub async fn exchange(
    state: &StateDir,
    conn: &mut Option<Connection>,
    peer: &Peer,
    call: RaftCall,
    body: Vec<u8>,
    ttl: Duration,
) -> Result<Vec<u8>, (bool, String)> {
    if conn.is_none() {
        let mut client = RpcClient::from_state(state).map_err(|e| (true, e.to_string()))?;
        client.connect_timeout = ttl;
        let opened = client
            .connect(&peer.name, &peer.address)
            .await
            .map_err(|e| (true, e.to_string()))?;
        *conn = Some(opened);
    }
    let Some(open) = conn.as_mut() else {
        return Err((true, "no connection".into()));
    };
    open.set_call_timeout(ttl);
    match open.call(Procedure::Raft { call, body }).await {
        Ok(Reply::Raft { body }) => Ok(body),
        Ok(other) => {
            *conn = None;
            Err((false, format!("unexpected reply {other:?}")))
        }
        Err(e) => {
            *conn = None;
            let unreachable = matches!(e, Error::Unreachable { .. });
            Err((unreachable, e.to_string()))
        }
    }
}

/// A request's body (JSON).
fn encode<Req: Serialize>(request: &Req) -> Result<Vec<u8>, NetworkError> {
    serde_json::to_vec(request).map_err(|e| NetworkError::new(&LinkError(e.to_string())))
}

impl PeerLink {
    async fn send<Req, Resp, E>(
        &mut self,
        call: RaftCall,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Peer, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = encode(request).map_err(RPCError::Network)?;
        self.send_body(call, body, option).await
    }

    async fn send_body<Resp, E>(
        &mut self,
        call: RaftCall,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Peer, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer = exchange(
            &self.state,
            &mut self.conn,
            &self.peer,
            call,
            body,
            option.hard_ttl(),
        )
        .await
        .map_err(|(unreachable, why)| {
            let error = LinkError(why);
            if unreachable {
                RPCError::Unreachable(Unreachable::new(&error))
            } else {
                RPCError::Network(NetworkError::new(&error))
            }
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&answer)
            .map_err(|e| RPCError::Network(NetworkError::new(&LinkError(e.to_string()))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        let body = encode(&rpc).map_err(RPCError::Network)?;
        // Each entry holds a whole config: a batch of large ones must not
        // outgrow a frame. openraft sends fewer entries after this answer.
        let entries = rpc.entries.len() as u64;
        if entries > 1 && body.len() > MAX_BATCH_BYTES {
            let hint = (entries * MAX_BATCH_BYTES as u64 / body.len() as u64).max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.send_body(RaftCall::AppendEntries, body, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Peer, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(RaftCall::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.send(RaftCall::Vote, &rpc, &option).await
    }
}
