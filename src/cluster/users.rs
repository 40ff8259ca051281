//! Users of the remote API (SPEC §11.1): add and revoke, as nodectl and the
//! API both do it. Each change is a commit (new serial, pushed to every
//! node) that carries its audit entry.

use ssconf::DigestAlgorithm;

use crate::core::{Error, Result};
use crate::pki::{self, keystore, CertInfo, CertificateSigner, LeafRole, NodeKey};
use crate::state::config::{check_name, ClusterConfig};
use crate::state::users::{append, AuditEntry, UserRecord, UserRole};
use crate::state::StateDir;

use super::audit::lock;
use super::push::{commit, PushItems, PushOutcome};
use super::store::master_config;

/// Validity of a user certificate when none is asked for: 90 days.
pub const DEFAULT_TTL: u64 = 90 * 86400;
/// The longest validity a user certificate may have: one year.
pub const MAX_TTL: u64 = 365 * 86400;

/// What a new user is made from.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: String,
    pub role: UserRole,
    /// The user's CSR (P-256); `None`: a key is made here and returned.
    pub csr_pem: Option<String>,
    /// Validity in seconds (at most [`MAX_TTL`]).
    pub ttl: u64,
}

/// What adding a user produced.
#[derive(Debug)]
pub struct AddedUser {
    pub record: UserRecord,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The key made here when no CSR was given, PEM.
    pub key: Option<crate::core::Secret>,
    pub push: PushOutcome,
}

/// One user as `nodectl user list --json` and `GET /v1/users` show it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UserRow {
    pub name: String,
    /// `readonly`, `operator` or `admin`.
    pub role: String,
    /// SHA-256 of the user's certificate.
    pub digest: String,
    /// RFC 3339, UTC.
    pub expires: String,
    pub revoked: bool,
}

impl From<UserRecord> for UserRow {
    fn from(u: UserRecord) -> Self {
        UserRow {
            name: u.name,
            role: u.role.as_str().to_owned(),
            digest: u.digest,
            expires: crate::core::time::rfc3339(u.expires),
            revoked: u.revoked,
        }
    }
}

/// `{"users": [...]}`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UserList {
    pub users: Vec<UserRow>,
}

/// Checks a validity asked for a user certificate.
pub fn check_ttl(ttl: u64) -> Result<i64> {
    if ttl == 0 || ttl > MAX_TTL {
        return Err(Error::Invalid(format!(
            "ttl: a user certificate is valid for at most one year (365d), not {ttl} seconds"
        )));
    }
    i64::try_from(ttl).map_err(|_| Error::Invalid("ttl is too long".into()))
}

/// Signs the user's certificate and records the user in `config`: the pure
/// part of adding a user, without lock or commit.
pub fn sign_user(
    state: &StateDir,
    config: &mut ClusterConfig,
    user: &NewUser,
) -> Result<(UserRecord, String, Option<crate::core::Secret>)> {
    check_name("user name", &user.name)?;
    let ttl = check_ttl(user.ttl)?;
    if config
        .users
        .iter()
        .any(|u| u.name == user.name && !u.revoked)
    {
        return Err(Error::Invalid(format!(
            "user {:?} exists; revoke it first (`nodectl user revoke {}`) or pick another name",
            user.name, user.name
        )));
    }
    let (csr_pem, key) = match &user.csr_pem {
        Some(csr) => (csr.clone(), None),
        None => {
            let key = NodeKey::generate()?;
            (
                key.client_csr(&format!("user:{}", user.name))?,
                Some(key.to_pem()),
            )
        }
    };
    let ca = keystore::load_ca(state, config)?;
    let begin = time::OffsetDateTime::now_utc();
    let cert_pem = ca.sign_csr_between(
        &csr_pem,
        &LeafRole::User { name: &user.name },
        begin - time::Duration::hours(1),
        begin + time::Duration::seconds(ttl),
    )?;
    let der = pki::load_certs_from_pem(&cert_pem)?;
    let record = UserRecord {
        name: user.name.clone(),
        role: user.role,
        digest: DigestAlgorithm::Sha256.digest(&der).to_string(),
        expires: CertInfo::from_der(&der)?.not_after,
        revoked: false,
    };
    // A revoked user of the same name is replaced: its digest can never
    // come back, the new certificate has another.
    config.users.retain(|u| u.name != user.name);
    config.users.push(record.clone());
    config.users.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((record, cert_pem, key))
}

/// Marks user `name` revoked in `config`.
pub fn revoke_user(config: &mut ClusterConfig, name: &str) -> Result<()> {
    let user = config
        .users
        .iter_mut()
        .find(|u| u.name == name)
        .ok_or_else(|| {
            Error::NotFound(format!("no user {name:?}; `nodectl user list` shows them"))
        })?;
    user.revoked = true;
    Ok(())
}

/// Adds a user on the master: under the cluster lock, signs, records the
/// user and the audit entry, commits.
pub async fn add(
    state: &StateDir,
    actor: &str,
    user: &NewUser,
    wait: bool,
    on_done: &(dyn Fn() + Sync),
) -> Result<AddedUser> {
    master_config(state)?;
    super::raft::ensure_leader_locally(state).await?;
    let _lock = lock(state, wait, &format!("user add {}", user.name)).await?;
    let mut config = master_config(state)?;
    let (record, cert_pem, key) = sign_user(state, &mut config, user)?;
    let result = format!("ok: role {}", user.role.as_str());
    append(
        &mut config.audit,
        AuditEntry::now(actor, "user-add", &user.name, &result),
    );
    let push = commit(state, &mut config, PushItems::ALL, on_done).await?;
    Ok(AddedUser {
        record,
        cert_pem,
        key,
        push,
    })
}

/// Revokes a user on the master: under the cluster lock, with its audit
/// entry, committed.
pub async fn revoke(
    state: &StateDir,
    actor: &str,
    name: &str,
    wait: bool,
    on_done: &(dyn Fn() + Sync),
) -> Result<PushOutcome> {
    master_config(state)?;
    super::raft::ensure_leader_locally(state).await?;
    let _lock = lock(state, wait, &format!("user revoke {name}")).await?;
    let mut config = master_config(state)?;
    revoke_user(&mut config, name)?;
    append(
        &mut config.audit,
        AuditEntry::now(actor, "user-revoke", name, "ok"),
    );
    commit(state, &mut config, PushItems::ALL, on_done).await
}

/// The users this node's config records (master or candidate).
pub fn list(state: &StateDir) -> Result<Vec<UserRecord>> {
    state.check_initialised()?;
    if !state.config_json().exists() {
        return Err(Error::Invalid(
            "this node holds no cluster config; list users on the master or a master candidate"
                .into(),
        ));
    }
    Ok(super::store::load_config(state)?.users)
}
