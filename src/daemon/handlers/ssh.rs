//! A master candidate's own SSH key pair, and every node's managed
//! authorized_keys block.

use super::super::server::Daemon;
use super::blocking;
use crate::wire::{Reply, RpcError};

pub async fn generate(daemon: &Daemon) -> Result<Reply, RpcError> {
    let state = daemon.state.clone();
    let name = daemon.identity.name.clone();
    let public = blocking(move || crate::state::ssh::ensure_ssh_key(&state, &name)).await?;
    Ok(Reply::SshPublicKey(public))
}

pub async fn replace(daemon: &Daemon) -> Result<Reply, RpcError> {
    let state = daemon.state.clone();
    let name = daemon.identity.name.clone();
    let public = blocking(move || crate::state::ssh::replace_ssh_key(&state, &name)).await?;
    Ok(Reply::SshPublicKey(public))
}

pub async fn write_authorized_keys(daemon: &Daemon, keys: Vec<String>) -> Result<Reply, RpcError> {
    let path = daemon.state.authorized_keys();
    blocking(move || crate::state::ssh::write_authorized_keys(&path, &keys)).await?;
    Ok(Reply::Done)
}
