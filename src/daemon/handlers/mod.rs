//! The procedures a node answers, one file per family: what a node says
//! about itself ([`info`]), its ssconf ([`ssconf`]), its role files
//! ([`roles`]), its certificates ([`certs`]) and its SSH keys ([`ssh`]).
//! Joins are answered by [`super::join`].

use super::auth::Admission;
use super::consensus;
use super::server::Daemon;
use crate::pki::pair::Pair;
use crate::wire::{Procedure, Reply, RpcError, RpcErrorKind};

pub mod certs;
pub mod info;
pub mod roles;
pub mod ssconf;
pub mod ssh;

/// Answers one request of an admitted client.
pub async fn dispatch(
    daemon: &Daemon,
    caller: &Admission,
    procedure: Procedure,
) -> Result<Reply, RpcError> {
    match procedure {
        Procedure::Ping => Ok(info::ping(daemon)),
        Procedure::NodeInfo => info::node_info(daemon).await,
        Procedure::Echo { payload } => Ok(info::echo(&payload)),
        Procedure::WriteSsconf { files } => ssconf::write(daemon, files).await,
        Procedure::PatchSsconf {
            base_sha256,
            patches,
            sha256,
        } => ssconf::patch(daemon, base_sha256, patches, sha256, None).await,
        Procedure::PatchSsconfAndKeys {
            base_sha256,
            patches,
            sha256,
            keys,
        } => ssconf::patch(daemon, base_sha256, patches, sha256, Some(keys)).await,
        Procedure::Join(request) => super::join::handle_join(daemon, request).await,
        Procedure::WriteConfig { config_json } => roles::write(daemon, config_json).await,
        Procedure::InstallCandidateFiles {
            ca_key,
            config_json,
        } => roles::install(daemon, ca_key, config_json).await,
        Procedure::RemoveCandidateFiles => roles::remove(daemon).await,
        Procedure::PrepareClientKey => certs::prepare_key(daemon, Pair::Client).await,
        Procedure::PrepareServerKey => certs::prepare_key(daemon, Pair::Server).await,
        Procedure::InstallClientCert { cert_pem } => {
            certs::install_cert(daemon, Pair::Client, cert_pem).await
        }
        Procedure::InstallServerCert { cert_pem } => {
            certs::install_cert(daemon, Pair::Server, cert_pem).await
        }
        Procedure::FetchCandidateFiles => roles::fetch(daemon, caller).await,
        Procedure::Health => Ok(Reply::Health(daemon.health.snapshot())),
        Procedure::InstallCaBundle { ca_pem } => certs::install_ca_bundle(daemon, ca_pem).await,
        Procedure::GenerateSshKey => ssh::generate(daemon).await,
        Procedure::ReplaceSshKey => ssh::replace(daemon).await,
        Procedure::WriteAuthorizedKeys { keys } => ssh::write_authorized_keys(daemon, keys).await,
        Procedure::Raft { call, body } => consensus::answer(daemon, call, body).await,
        Procedure::RaftStatus => Ok(consensus::status(daemon)),
        Procedure::Propose {
            base_serial,
            config_json,
        } => {
            own(daemon, caller)?;
            consensus::propose(daemon, base_serial, config_json).await
        }
        Procedure::Recover => {
            own(daemon, caller)?;
            consensus::recover(daemon).await
        }
        Procedure::ConfirmLeadership => {
            own(daemon, caller)?;
            consensus::confirm(daemon).await
        }
        Procedure::TransferLeadership { to } => {
            own(daemon, caller)?;
            consensus::transfer(daemon, to).await
        }
        Procedure::Distribute { serial, resend } => {
            own(daemon, caller)?;
            super::converge::distribute(daemon, serial, resend).await
        }
    }
}

/// Refuses a caller other than this node itself (its nodectl, its tasks).
fn own(daemon: &Daemon, caller: &Admission) -> Result<(), RpcError> {
    if caller.uuid == daemon.identity.uuid {
        Ok(())
    } else {
        Err(RpcError {
            kind: RpcErrorKind::NotAuthorized,
            message: "only this node's own nodectl may ask this".into(),
        })
    }
}

/// Runs a blocking state-file operation off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> crate::core::Result<T> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| failed(format!("task failed: {e}")))?
        .map_err(|e| failed(e.to_string()))
}

/// A procedure that ran and failed.
pub(crate) fn failed(message: impl Into<String>) -> RpcError {
    RpcError {
        kind: RpcErrorKind::Failed,
        message: message.into(),
    }
}
