//! `ping`, `node-info`, `echo`: what a node says about itself.

use super::super::server::Daemon;
use super::failed;
use crate::wire::{Reply, RpcError};

pub fn ping(daemon: &Daemon) -> Reply {
    Reply::Pong {
        node: daemon.identity.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

pub async fn node_info(daemon: &Daemon) -> Result<Reply, RpcError> {
    let state = daemon.state.clone();
    let identity = daemon.identity.clone();
    let cert = daemon.client_cert.load_full();
    let raft = daemon.raft.load().as_ref().map(|n| n.info());
    let cache = daemon.ssconf.clone();
    let facts = daemon.facts.clone();
    let info = tokio::task::spawn_blocking(move || {
        let ssconf = cache.load(&state.ssconf_dir());
        super::roles::node_info(&state, &identity, &cert, raft, ssconf, &facts)
    })
    .await
    .map_err(|e| failed(format!("node-info task failed: {e}")))?;
    Ok(Reply::NodeInfo(Box::new(info)))
}

pub fn echo(payload: &[u8]) -> Reply {
    Reply::Echoed {
        len: payload.len() as u64,
    }
}
