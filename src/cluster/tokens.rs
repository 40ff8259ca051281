//! Creating a join token (SPEC §5), as `nodectl token create` and the
//! remote API's `POST /v1/tokens` both do it.

use crate::core::time::now;
use crate::core::{Error, Result};
use crate::state::token::{JoinToken, TokenStore};
use crate::state::StateDir;

use super::lock::ClusterLock;
use super::store::master_config;

/// A token just made: what its creator is shown.
#[derive(Clone)]
pub struct CreatedToken {
    pub id: String,
    /// Unix seconds.
    pub expires: i64,
    pub master_candidate: bool,
    /// The `noded-join:...` line for the new node: it holds the secret.
    pub connection_string: String,
}

/// Without the connection string, which holds the token's secret.
impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("id", &self.id)
            .field("expires", &self.expires)
            .field("master_candidate", &self.master_candidate)
            .finish_non_exhaustive()
    }
}

/// Makes a one-time token valid for `ttl` seconds, on the master, under the
/// cluster lock.
pub fn create(
    state: &StateDir,
    ttl: u64,
    master_candidate: bool,
    wait: bool,
) -> Result<CreatedToken> {
    let config = master_config(state)?;
    let _lock = ClusterLock::acquire(state, wait, "token create")?;
    let mut tokens = TokenStore::load(state)?;
    tokens.prune(now());
    let ttl = i64::try_from(ttl).map_err(|_| Error::Invalid("ttl is too long".into()))?;
    let (stored, secret) = tokens.create(ttl, master_candidate);
    tokens.save(state)?;
    let token = JoinToken {
        v: 1,
        addrs: vec![config.master()?.address.clone()],
        ca_sha256: config.ca_sha256.clone(),
        master: config.master()?.uuid.clone(),
        id: stored.id.clone(),
        secret,
        expires: stored.expires,
        master_candidate,
    };
    Ok(CreatedToken {
        connection_string: token.encode()?,
        id: stored.id,
        expires: stored.expires,
        master_candidate,
    })
}
