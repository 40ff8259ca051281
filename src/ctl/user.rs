//! `nodectl user add|list|revoke`: identities of the remote API (SPEC §11).

use std::path::{Path, PathBuf};

use super::output::{print_json, print_table};
use super::progress::Progress;
use super::Outcome;
use crate::cluster::audit::nodectl_actor;
use crate::cluster::users::{self, NewUser, UserList, UserRow};
use crate::core::time::rfc3339;
use crate::core::{Error, Result};
use crate::pki::NodeKey;
use crate::state::config::check_name;
use crate::state::users::UserRole;
use crate::state::{StateDir, MODE_PUBLIC, MODE_SECRET};

/// What `nodectl user add` was asked.
#[derive(Debug, Clone)]
pub struct UserAddOptions {
    pub name: String,
    pub role: UserRole,
    /// The user's CSR file (P-256).
    pub csr: Option<std::path::PathBuf>,
    /// Where to write `NAME.key` (made here) and `NAME.pem`.
    pub out: Option<std::path::PathBuf>,
    /// Validity in seconds.
    pub ttl: u64,
    pub wait: bool,
}

/// `nodectl user add NAME --role ROLE [--csr FILE] [--out DIR] [--ttl DURATION]`.
pub async fn user_add(state: &StateDir, opts: &UserAddOptions) -> Result<Outcome> {
    let csr_pem = match &opts.csr {
        Some(path) => Some(std::fs::read_to_string(path).map_err(Error::io(path))?),
        None if opts.out.is_none() => {
            return Err(Error::Invalid(
                "give --csr FILE (the user's own key) or --out DIR (a key made here)".into(),
            ))
        }
        None => None,
    };
    users::check_ttl(opts.ttl)?;
    check_name("user name", &opts.name)?;
    // A key made here is on disk, in DIR, before the user is committed: a
    // DIR that cannot take it fails the command with nothing committed,
    // and a command killed after the commit leaves the key staged there.
    let staged = match (&opts.out, &csr_pem) {
        (Some(dir), None) => Some(StagedKey::write(dir, &opts.name)?),
        _ => None,
    };
    let csr_pem = csr_pem.or_else(|| staged.as_ref().map(|k| k.csr.clone()));
    let others = crate::cluster::load_config(state)
        .map(|c| c.online_nodes().count().saturating_sub(1))
        .unwrap_or(0);
    let bar = Progress::new(others, "pushing cluster state");
    let new = NewUser {
        name: opts.name.clone(),
        role: opts.role,
        csr_pem,
        ttl: opts.ttl,
    };
    let actor = nodectl_actor(state);
    let added = match users::add(state, &actor, &new, opts.wait, &|| bar.step()).await {
        Ok(added) => added,
        Err(e) => {
            if let Some(staged) = staged {
                staged.discard();
            }
            return Err(e);
        }
    };
    drop(bar);
    if let Some(staged) = staged {
        staged.install()?;
    }
    match &opts.out {
        Some(dir) => write_identity(dir, &opts.name, &added.cert_pem)?,
        None => super::output::write_stdout(&added.cert_pem)?,
    }
    eprintln!(
        "user {} ({}) added, certificate valid until {}, digest {}",
        added.record.name,
        added.record.role.as_str(),
        rfc3339(added.record.expires),
        added.record.digest
    );
    added.push.report();
    Ok(if added.push.is_complete() {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

/// A user's key made here, written (0600) beside its final name
/// `DIR/NAME.key` until the user is committed.
struct StagedKey {
    staged: PathBuf,
    path: PathBuf,
    csr: String,
}

impl StagedKey {
    fn write(dir: &Path, name: &str) -> Result<StagedKey> {
        crate::state::create_dir(dir, 0o755)?;
        let key = NodeKey::generate()?;
        let staged = dir.join(format!(".{name}.key.staged"));
        ssconf::write_atomic(&staged, key.to_pem().expose().as_bytes(), MODE_SECRET)
            .map_err(Error::io(&staged))?;
        Ok(StagedKey {
            staged,
            path: dir.join(format!("{name}.key")),
            csr: key.client_csr(&format!("user:{name}"))?,
        })
    }

    /// The user is committed: the key takes its name.
    fn install(self) -> Result<()> {
        std::fs::rename(&self.staged, &self.path).map_err(Error::io(&self.path))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io(dir))?;
        crate::say!("{}", self.path.display());
        Ok(())
    }

    /// Nothing was committed: the key is of no use.
    fn discard(self) {
        let _ = ssconf::atomic::remove_durable(&self.staged);
    }
}

/// Writes `DIR/NAME.pem` (0644) atomically.
fn write_identity(dir: &Path, name: &str, cert_pem: &str) -> Result<()> {
    crate::state::create_dir(dir, 0o755)?;
    let path = dir.join(format!("{name}.pem"));
    ssconf::write_atomic(&path, cert_pem.as_bytes(), MODE_PUBLIC).map_err(Error::io(&path))?;
    crate::say!("{}", path.display());
    Ok(())
}

/// `nodectl user list [--json]`, on the master or a candidate.
pub fn user_list(state: &StateDir, json: bool) -> Result<Outcome> {
    let rows: Vec<UserRow> = users::list(state)?.into_iter().map(UserRow::from).collect();
    if json {
        print_json(&UserList { users: rows })?;
    } else {
        let table: Vec<Vec<String>> = rows
            .into_iter()
            .map(|u| {
                let revoked = if u.revoked { "yes" } else { "no" }.to_owned();
                vec![u.name, u.role, revoked, u.expires, u.digest]
            })
            .collect();
        print_table(&["NAME", "ROLE", "REVOKED", "EXPIRES", "DIGEST"], &table)?;
    }
    Ok(Outcome::Success)
}

/// `nodectl user revoke NAME`.
pub async fn user_revoke(state: &StateDir, name: &str, wait: bool) -> Result<Outcome> {
    let actor = nodectl_actor(state);
    let push = users::revoke(state, &actor, name, wait, &crate::rpc::fanout::quiet).await?;
    crate::say!("user {name} revoked");
    push.report();
    Ok(if push.is_complete() {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}
