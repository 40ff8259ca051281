//! Users of the remote API and the audit trail: both live in the cluster
//! config (`config.json`), which the master pushes to every master
//! candidate, so they survive a failover.

use serde::{Deserialize, Serialize};

use crate::core::{Error, Result};

/// What a user of the remote API may do. Roles nest: an admin may do all an
/// operator may, an operator all a reader may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    Readonly,
    Operator,
    Admin,
}

impl UserRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Readonly => "readonly",
            UserRole::Operator => "operator",
            UserRole::Admin => "admin",
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: UserRole) -> bool {
        self >= needed
    }
}

impl std::str::FromStr for UserRole {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "readonly" => Ok(UserRole::Readonly),
            "operator" => Ok(UserRole::Operator),
            "admin" => Ok(UserRole::Admin),
            _ => Err(Error::Invalid(format!(
                "role {text:?} is not one of readonly, operator, admin"
            ))),
        }
    }
}

/// One user of the remote API as the cluster config records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub role: UserRole,
    /// SHA-256 of the user's certificate (DER), hex: what the API admits.
    pub digest: String,
    /// `notAfter` of the certificate, Unix seconds.
    pub expires: i64,
    /// A revoked user is kept (so its name and digest stay on record) and
    /// never admitted again.
    #[serde(default)]
    pub revoked: bool,
}

impl UserRecord {
    /// Whether the API admits this user at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        !self.revoked && self.expires > now
    }
}

/// How many entries the audit trail keeps: the oldest are dropped beyond.
pub const AUDIT_CAP: usize = 10_000;

/// One entry of the audit trail (SPEC §11.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub time: i64,
    /// `nodectl@NODE`, `user:NAME`, `join:NODE` or `noded`.
    pub actor: String,
    /// What was done: `promote`, `remove`, `user-add`, `refused`, ...
    pub action: String,
    /// What it was done to: a node, a user, a token id, a resource.
    pub target: String,
    /// `ok`, `partial` (committed, some nodes not updated yet), `failed`,
    /// `error: ...` or `refused: ...`.
    pub result: String,
}

impl AuditEntry {
    /// An entry stamped with the current time.
    pub fn now(actor: &str, action: &str, target: &str, result: &str) -> Self {
        AuditEntry {
            time: crate::core::time::now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            result: result.to_owned(),
        }
    }
}

/// Appends `entry` to `trail`, dropping the oldest beyond [`AUDIT_CAP`].
pub fn append(trail: &mut Vec<AuditEntry>, entry: AuditEntry) {
    trail.push(entry);
    if trail.len() > AUDIT_CAP {
        let excess = trail.len() - AUDIT_CAP;
        trail.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest() {
        use UserRole::*;
        let table = [
            (Readonly, Readonly, true),
            (Readonly, Operator, false),
            (Readonly, Admin, false),
            (Operator, Readonly, true),
            (Operator, Operator, true),
            (Operator, Admin, false),
            (Admin, Readonly, true),
            (Admin, Operator, true),
            (Admin, Admin, true),
        ];
        for (role, needed, allowed) in table {
            assert_eq!(role.allows(needed), allowed, "{role:?} for {needed:?}");
        }
        assert_eq!("admin".parse::<UserRole>().ok(), Some(Admin));
        assert!("root".parse::<UserRole>().is_err());
    }

    #[test]
    fn the_trail_is_capped() {
        let mut trail = Vec::new();
        for i in 0..AUDIT_CAP + 5 {
            append(
                &mut trail,
                AuditEntry::now("noded", "x", &i.to_string(), "ok"),
            );
        }
        assert_eq!(trail.len(), AUDIT_CAP);
        assert_eq!(trail.first().map(|e| e.target.as_str()), Some("5"));
    }

    #[test]
    fn active_users() {
        let user = UserRecord {
            name: "ann".into(),
            role: UserRole::Admin,
            digest: String::new(),
            expires: 100,
            revoked: false,
        };
        assert!(user.is_active(99));
        assert!(!user.is_active(100));
        assert!(!UserRecord {
            revoked: true,
            ..user
        }
        .is_active(0));
    }
}
