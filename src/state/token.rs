//! Join tokens and the connection string (SPEC §5).
//!
//! `nodectl token create` prints `noded-join:` + unpadded base64url of a JSON
//! object carrying the master's addresses, the SHA-256 pin of the CA
//! certificate, the token id, a 128-bit random secret, the expiry and whether
//! the new node becomes a master candidate. The master keeps only the
//! SHA-256 of the secret (`tokens.json`, 0600), compares in constant time,
//! and burns the token on use. A burned token is remembered (id, hash of
//! the secret, the node it admitted) until it would have expired, so that a
//! joiner killed after its admission, running `join` again, learns what
//! happened and how to finish instead of "unknown token".

use base64::Engine;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::core::hex;
use crate::core::time::now;
use crate::core::{Error, Result, Secret};
use crate::state::{self, StateDir, MODE_SECRET};

/// Prefix of every connection string.
pub const PREFIX: &str = "noded-join:";
/// Largest connection string accepted (a real one is ~300 bytes).
const MAX_LEN: usize = 8192;

/// What a connection string carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub v: u32,
    /// The master's `host:port` addresses.
    pub addrs: Vec<String>,
    /// SHA-256 of the CA certificate's DER, lower-case hex.
    pub ca_sha256: String,
    /// The uuid of the master that made the token: the joining node
    /// accepts only a server certificate that names it.
    pub master: String,
    pub id: String,
    pub secret: Secret,
    /// Unix seconds.
    pub expires: i64,
    pub master_candidate: bool,
}

impl JoinToken {
    /// The `noded-join:...` line.
    pub fn encode(&self) -> Result<String> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::Invalid(format!("cannot encode token: {e}")))?;
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        ))
    }

    /// Parses a connection string.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "not a valid join connection string ({why}); copy the whole `noded-join:` line that `nodectl token create` printed"
            ))
        };
        let text = text.trim();
        if text.len() > MAX_LEN {
            return Err(bad("too long"));
        }
        let body = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad("missing `noded-join:` prefix"))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad("not base64url"))?;
        let token: JoinToken =
            serde_json::from_slice(&json).map_err(|_| bad("unreadable content"))?;
        if token.v != 1 {
            return Err(bad(&format!("version {} is not supported", token.v)));
        }
        if token.addrs.is_empty() {
            return Err(bad("no master address"));
        }
        if token.ca_sha256.len() != 64 || !token.ca_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("CA pin is not a SHA-256 hex digest"));
        }
        if uuid::Uuid::parse_str(&token.master).is_err() {
            return Err(bad("the master's uuid is missing"));
        }
        Ok(token)
    }

    /// The pinned CA digest as raw bytes.
    pub fn ca_pin(&self) -> Result<[u8; 32]> {
        let mut out = [0u8; 32];
        for (i, slot) in out.iter_mut().enumerate() {
            let pair = self
                .ca_sha256
                .get(2 * i..2 * i + 2)
                .ok_or_else(|| Error::Invalid("CA pin too short".into()))?;
            *slot = u8::from_str_radix(pair, 16)
                .map_err(|_| Error::Invalid("CA pin is not hex".into()))?;
        }
        Ok(out)
    }
}

/// A token as the master stores it: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    pub expires: i64,
    pub master_candidate: bool,
}

/// A token that admitted a node, kept until its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurnedToken {
    pub id: String,
    /// SHA-256 of the secret, hex: only the holder of the secret is told
    /// which node the token admitted.
    pub secret_sha256: String,
    pub expires: i64,
    /// The node the token admitted.
    pub node: String,
}

/// `tokens.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStore {
    pub tokens: Vec<StoredToken>,
    /// Tokens used by a join, until they would have expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub burned: Vec<BurnedToken>,
}

/// Why a join token was refused. Deliberately coarse towards the joiner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("join token is unknown, already used, or revoked; create a new one with `nodectl token create`")]
    Unknown,
    #[error("join token expired; create a new one with `nodectl token create`")]
    Expired,
    /// The token was used, by a join whose node did not finish (it was
    /// killed after the master admitted it).
    #[error("this token already admitted node {node:?}; if that node did not finish joining (it was stopped before writing its state), run `nodectl remove {node}` on the master, then join with a new token from `nodectl token create`")]
    AlreadyAdmitted { node: String },
}

fn hash(secret: &str) -> [u8; 32] {
    hex::sha256(secret.as_bytes())
}

impl TokenStore {
    /// Loads `tokens.json` (an absent file is an empty store).
    pub fn load(state: &StateDir) -> Result<Self> {
        if !state.tokens_json().exists() {
            return Ok(TokenStore::default());
        }
        state::read_json(&state.tokens_json())
    }

    /// Saves `tokens.json` atomically, mode 0600.
    pub fn save(&self, state: &StateDir) -> Result<()> {
        state.write(&state.tokens_json(), &state::to_json(self)?, MODE_SECRET)
    }

    /// Makes a new token; returns it with its secret (shown once).
    pub fn create(&mut self, ttl_secs: i64, master_candidate: bool) -> (StoredToken, Secret) {
        let id = hex::lower(&rand::random::<[u8; 8]>());
        let secret = Secret::new(hex::lower(&rand::random::<[u8; 16]>()));
        let stored = StoredToken {
            id,
            secret_sha256: hex::lower(&hash(secret.expose())),
            expires: now().saturating_add(ttl_secs),
            master_candidate,
        };
        self.tokens.push(stored.clone());
        (stored, secret)
    }

    /// Drops expired tokens, and the memory of burned ones that expired.
    pub fn prune(&mut self, now: i64) {
        self.tokens.retain(|t| t.expires > now);
        self.burned.retain(|t| t.expires > now);
    }

    /// Checks `id` and `secret` (constant time in the secret); the token
    /// stays until [`TokenStore::burn`].
    /// A token already used says which node it admitted, and only to the
    /// holder of its secret: a wrong secret learns nothing.
    pub fn check(&self, id: &str, secret: &str, now: i64) -> Result<&StoredToken, TokenError> {
        let offered = hex::lower(&hash(secret));
        let matches = |stored: &str| bool::from(offered.as_bytes().ct_eq(stored.as_bytes()));
        let Some(token) = self.tokens.iter().find(|t| t.id == id) else {
            return match self.burned.iter().find(|t| t.id == id) {
                Some(b) if matches(&b.secret_sha256) && b.expires > now => {
                    Err(TokenError::AlreadyAdmitted {
                        node: b.node.clone(),
                    })
                }
                _ => Err(TokenError::Unknown),
            };
        };
        if !matches(&token.secret_sha256) {
            return Err(TokenError::Unknown);
        }
        if token.expires <= now {
            return Err(TokenError::Expired);
        }
        Ok(token)
    }

    /// Removes token `id` after it admitted `node`, and remembers it until
    /// its expiry; returns whether it existed.
    pub fn burn_for(&mut self, id: &str, node: &str) -> bool {
        let Some(token) = self.tokens.iter().find(|t| t.id == id).cloned() else {
            return false;
        };
        self.burn(id);
        self.burned.retain(|b| b.id != id);
        self.burned.push(BurnedToken {
            id: token.id,
            secret_sha256: token.secret_sha256,
            expires: token.expires,
            node: node.to_owned(),
        });
        true
    }

    /// Removes token `id` (revoked: forgotten at once); returns whether it
    /// existed.
    pub fn burn(&mut self, id: &str) -> bool {
        let before = self.tokens.len();
        self.tokens.retain(|t| t.id != id);
        self.tokens.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_string_round_trip_and_garbage() -> Result<()> {
        let token = JoinToken {
            v: 1,
            addrs: vec!["127.0.0.1:1811".into()],
            ca_sha256: "ab".repeat(32),
            master: "4f6c3c5e-8d1e-4a57-9a3b-2b5f0e9d7c11".into(),
            id: "id1".into(),
            secret: Secret::new("s".into()),
            expires: 5,
            master_candidate: true,
        };
        let text = token.encode()?;
        assert!(text.starts_with(PREFIX));
        let unnamed = JoinToken {
            master: String::new(),
            ..token.clone()
        };
        assert!(JoinToken::parse(&unnamed.encode()?).is_err());
        assert_eq!(JoinToken::parse(&text)?, token);
        assert_eq!(token.ca_pin()?, [0xab; 32]);
        for bad in [
            "",
            "noded-join:",
            "noded-join:!!!",
            "xyz",
            &text[..text.len() - 3],
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn store_checks_secret_expiry_and_burns() {
        let mut store = TokenStore::default();
        let (t, secret) = store.create(60, false);
        assert!(store.check(&t.id, secret.expose(), now()).is_ok());
        assert_eq!(store.check(&t.id, "wrong", now()), Err(TokenError::Unknown));
        assert_eq!(
            store.check("nope", secret.expose(), now()),
            Err(TokenError::Unknown)
        );
        assert_eq!(
            store.check(&t.id, secret.expose(), now() + 61),
            Err(TokenError::Expired)
        );
        assert!(!serde_json::to_string(&store)
            .unwrap_or_default()
            .contains(secret.expose()));
        assert!(store.burn(&t.id));
        assert_eq!(
            store.check(&t.id, secret.expose(), now()),
            Err(TokenError::Unknown)
        );
    }

    #[test]
    fn a_burned_token_names_its_node_to_the_holder_of_the_secret_only() {
        let mut store = TokenStore::default();
        let (t, secret) = store.create(60, false);
        assert!(store.burn_for(&t.id, "n1"));
        assert!(store.tokens.is_empty());
        let admitted = Err(TokenError::AlreadyAdmitted { node: "n1".into() });
        assert_eq!(store.check(&t.id, secret.expose(), now()), admitted);
        // Round trip through tokens.json keeps the memory, never the secret.
        let json = serde_json::to_string(&store).unwrap_or_default();
        assert!(!json.contains(secret.expose()), "{json}");
        let store: TokenStore = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(store.check(&t.id, secret.expose(), now()), admitted);
        assert_eq!(store.check(&t.id, "wrong", now()), Err(TokenError::Unknown));
        let later = now() + 61;
        assert_eq!(
            store.check(&t.id, secret.expose(), later),
            Err(TokenError::Unknown)
        );
        let mut pruned = store.clone();
        pruned.prune(later);
        assert!(pruned.burned.is_empty());
        // A store written before burned tokens were remembered still loads.
        let old: TokenStore = serde_json::from_str(r#"{"tokens": []}"#).unwrap_or_default();
        assert!(old.burned.is_empty());
    }
}
