//! Where the cluster CA's private key is kept: the certificate manager role.
//!
//! [`KeyStore`] stores and loads the CA key; what it loads is a
//! [`CertificateAuthority`], the certificate generator
//! ([`crate::pki::CertificateSigner`]). Two stores exist:
//!
//! - [`FileKeyStore`]: `ca.key` (mode 0600) on the master and every master
//!   candidate, copied to a node when it is promoted;
//! - [`Pkcs11KeyStore`]: a key inside a PKCS#11 token named by the config's
//!   `ca_key` URI; no node holds the key, every candidate reaches the token.
//!
//! Signing happens only in cluster operations (join, promotion, renewal),
//! never on the per-connection path, so the store is chosen at run time by
//! a `Box<dyn KeyStore>`; the key itself ([`crate::pki::CaKey`]) is an enum.
//! Node keys (client and server) stay in files on each node: every TLS
//! handshake uses them.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use ssconf::DigestAlgorithm;

use crate::core::{Error, Result};
use crate::pki::hsm::{Pkcs11Uri, Token};
use crate::pki::{CaKey, CertificateAuthority, CertificateSigner, Secret};
use crate::state::config::ClusterConfig;
use crate::state::{StateDir, MODE_SECRET};

/// Stores and loads the cluster CA key.
pub trait KeyStore: std::fmt::Debug {
    /// Where the key is, for messages.
    fn describe(&self) -> String;

    /// The CA in use: the certificate in `ca_pem` (one or two during a
    /// rotation) that carries the stored key's public key.
    fn load_ca(&self, ca_pem: &str) -> Result<CertificateAuthority>;

    /// A new CA for `init`: a new key (or, in a token, the labelled key if
    /// it exists already), self-signed.
    fn create_ca(&self, cluster_name: &str, days: u32) -> Result<CertificateAuthority>;

    /// The next CA of a rotation, its key kept aside until
    /// [`Self::activate_next`].
    fn create_next_ca(&self, cluster_name: &str, days: u32) -> Result<CertificateAuthority>;

    /// The next CA whose certificate is `cert_pem`, whether its key is still
    /// aside or already active.
    fn load_next_ca(&self, cert_pem: &str) -> Result<CertificateAuthority>;

    /// Makes the key set aside by [`Self::create_next_ca`] the one in use,
    /// keeping the one before aside for [`Self::restore_previous`].
    /// Idempotent: a rerun after a crash finishes the switch.
    fn activate_next(&self) -> Result<()>;

    /// `--rollback-ca`: makes the key of `old_ca_pem` the one in use again
    /// and sets the next key aside for good (a token never destroys one).
    /// Idempotent.
    fn restore_previous(&self, old_ca_pem: &str) -> Result<()>;

    /// Forgets the aside copies once the rotation is complete.
    fn finish_next(&self) -> Result<()>;

    /// What a node being made a master candidate receives: the key itself
    /// for a file store, nothing when the key is in a token.
    fn candidate_copy(&self, ca: &CertificateAuthority) -> Option<Secret>;
}

/// The store the cluster config names.
pub fn for_cluster(state: &StateDir, config: &ClusterConfig) -> Result<Box<dyn KeyStore>> {
    match &config.ca_key {
        None => Ok(Box::new(FileKeyStore::new(state))),
        Some(uri) => Ok(Box::new(Pkcs11KeyStore::new(Pkcs11Uri::parse(uri)?))),
    }
}

fn read_ca_pem(state: &StateDir) -> Result<String> {
    std::fs::read_to_string(state.ca_pem()).map_err(Error::io(state.ca_pem()))
}

/// Loads the signing CA as the cluster config says (file or token): the
/// CA whose SHA-256 the config records. A key here that belongs to another
/// CA of the bundle (one a candidate kept because it was down when a CA
/// rotation changed the key) is refused rather than used to sign.
pub fn load_ca(state: &StateDir, config: &ClusterConfig) -> Result<CertificateAuthority> {
    load_checked(state, config).map(|(_, ca)| ca)
}

/// The cluster's key store and the signing CA loaded from it, checked
/// against the config's `ca_sha256`.
fn load_checked(
    state: &StateDir,
    config: &ClusterConfig,
) -> Result<(Box<dyn KeyStore>, CertificateAuthority)> {
    let store = for_cluster(state, config)?;
    let ca = store.load_ca(&read_ca_pem(state)?)?;
    check_signing_ca(&ca, config, &store.describe())?;
    Ok((store, ca))
}

/// Refuses a CA other than the one `config` says signs (`ca_sha256`).
fn check_signing_ca(ca: &CertificateAuthority, config: &ClusterConfig, key: &str) -> Result<()> {
    let held = crate::core::hex::lower(DigestAlgorithm::Sha256.digest(ca.cert_der()).as_bytes());
    if config.ca_sha256.is_empty() || held.eq_ignore_ascii_case(&config.ca_sha256) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "the CA key {key} belongs to CA {held}, not to CA {} that the cluster signs with: this node missed the key of a CA rotation; sign on a master candidate that holds it, or demote and promote this node again from one",
        config.ca_sha256
    )))
}

/// What a node being made a master candidate receives (see
/// [`KeyStore::candidate_copy`]), after the key was loaded (for a token:
/// reached and checked against ca.pem and the config), so a broken store
/// fails first.
pub fn candidate_copy(state: &StateDir, config: &ClusterConfig) -> Result<Option<Secret>> {
    let (store, ca) = load_checked(state, config)?;
    Ok(store.candidate_copy(&ca))
}

/// `ca.key` (and `ca.key.new` during a rotation) in the state directory.
#[derive(Debug)]
pub struct FileKeyStore {
    state: StateDir,
}

impl FileKeyStore {
    pub fn new(state: &StateDir) -> Self {
        FileKeyStore {
            state: state.clone(),
        }
    }

    fn next_path(&self) -> PathBuf {
        self.state.ca_key_new()
    }

    fn read(path: &std::path::Path) -> Result<Secret> {
        std::fs::read_to_string(path)
            .map(Secret::new)
            .map_err(Error::io(path))
    }

    fn remove(path: &std::path::Path) -> Result<()> {
        ssconf::atomic::remove_durable(path).map_err(Error::io(path))
    }

    fn write(&self, path: &std::path::Path, ca: &CertificateAuthority) -> Result<()> {
        let key = ca
            .key_pem()
            .ok_or_else(|| Error::Invalid("a file key store holds file keys only".into()))?;
        self.state.write(path, key.expose().as_bytes(), MODE_SECRET)
    }
}

impl KeyStore for FileKeyStore {
    fn describe(&self) -> String {
        self.state.ca_key().display().to_string()
    }

    fn load_ca(&self, ca_pem: &str) -> Result<CertificateAuthority> {
        let key = Self::read(&self.state.ca_key())?;
        CertificateAuthority::from_pem(ca_pem, key.expose())
    }

    fn create_ca(&self, cluster_name: &str, days: u32) -> Result<CertificateAuthority> {
        let ca = CertificateAuthority::generate(cluster_name, days)?;
        self.write(&self.state.ca_key(), &ca)?;
        Ok(ca)
    }

    fn create_next_ca(&self, cluster_name: &str, days: u32) -> Result<CertificateAuthority> {
        // A key kept aside by a rotation that did not finish cleaning up.
        Self::remove(&self.state.ca_key_old())?;
        let ca = CertificateAuthority::generate(cluster_name, days)?;
        self.write(&self.next_path(), &ca)?;
        Ok(ca)
    }

    fn load_next_ca(&self, cert_pem: &str) -> Result<CertificateAuthority> {
        let path = self.next_path();
        let key = if path.exists() {
            Self::read(&path)?
        } else {
            Self::read(&self.state.ca_key())?
        };
        CertificateAuthority::from_pem(cert_pem, key.expose()).map_err(|_| {
            Error::Invalid(format!(
                "no key for the new CA (ca.new.pem) in {}; remove ca.new.pem and rerun",
                self.state.root().display()
            ))
        })
    }

    fn activate_next(&self) -> Result<()> {
        let path = self.next_path();
        if !path.exists() {
            return Ok(());
        }
        // In this order, so that a rerun after a crash at any point ends
        // with the old key aside and the next one in use.
        let old = self.state.ca_key_old();
        if !old.exists() {
            let current = Self::read(&self.state.ca_key())?;
            self.state
                .write(&old, current.expose().as_bytes(), MODE_SECRET)?;
        }
        let key = Self::read(&path)?;
        self.state
            .write(&self.state.ca_key(), key.expose().as_bytes(), MODE_SECRET)?;
        Self::remove(&path)
    }

    fn restore_previous(&self, old_ca_pem: &str) -> Result<()> {
        let in_use = Self::read(&self.state.ca_key())?;
        if CertificateAuthority::from_pem(old_ca_pem, in_use.expose()).is_err() {
            let old = self.state.ca_key_old();
            if !old.exists() {
                return Err(Error::Invalid(format!(
                    "the old CA's key is neither in {} nor kept aside; the rotation cannot be rolled back",
                    self.describe()
                )));
            }
            let key = Self::read(&old)?;
            CertificateAuthority::from_pem(old_ca_pem, key.expose())?;
            self.state
                .write(&self.state.ca_key(), key.expose().as_bytes(), MODE_SECRET)?;
        }
        Self::remove(&self.state.ca_key_old())?;
        Self::remove(&self.next_path())
    }

    fn finish_next(&self) -> Result<()> {
        Self::remove(&self.next_path())?;
        Self::remove(&self.state.ca_key_old())
    }

    fn candidate_copy(&self, ca: &CertificateAuthority) -> Option<Secret> {
        ca.key_pem()
    }
}

/// A key inside a PKCS#11 token: label `O` in use, `O.new` during a
/// rotation, `O.old` after one.
#[derive(Debug)]
pub struct Pkcs11KeyStore {
    uri: Pkcs11Uri,
    token: OnceLock<Arc<Token>>,
}

impl Pkcs11KeyStore {
    pub fn new(uri: Pkcs11Uri) -> Self {
        Pkcs11KeyStore {
            uri,
            token: OnceLock::new(),
        }
    }

    /// The token, opened (and logged in) on first use.
    fn token(&self) -> Result<Arc<Token>> {
        if let Some(token) = self.token.get() {
            return Ok(token.clone());
        }
        let token = Arc::new(Token::open(&self.uri)?);
        Ok(self.token.get_or_init(|| token).clone())
    }

    fn next_label(&self) -> String {
        format!("{}.new", self.uri.object)
    }

    fn key(&self, label: &str, create: bool) -> Result<CaKey> {
        Ok(CaKey::Token(self.token()?.key(label, create)?))
    }

    /// The CA among `cert_pem`'s certificates that `label`'s key signs for,
    /// with an error that names the token and label when none matches.
    fn ca_for(&self, cert_pem: &str, label: &str) -> Result<CertificateAuthority> {
        CertificateAuthority::with_key(cert_pem, self.key(label, false)?).map_err(|_| {
            Error::Invalid(format!(
                "the key {label:?} in PKCS#11 token {:?} does not match the CA certificate (ca.pem); \
                 check object= in the CA key URI",
                self.uri.token
            ))
        })
    }
}

impl KeyStore for Pkcs11KeyStore {
    fn describe(&self) -> String {
        self.uri.to_string()
    }

    fn load_ca(&self, ca_pem: &str) -> Result<CertificateAuthority> {
        self.ca_for(ca_pem, &self.uri.object)
    }

    fn create_ca(&self, cluster_name: &str, days: u32) -> Result<CertificateAuthority> {
        CertificateAuthority::self_signed(cluster_name, days, self.key(&self.uri.object, true)?)
    }

    fn create_next_ca(&self, cluster_name: &str, days: u32) -> Result<CertificateAuthority> {
        CertificateAuthority::self_signed(cluster_name, days, self.key(&self.next_label(), true)?)
    }

    fn load_next_ca(&self, cert_pem: &str) -> Result<CertificateAuthority> {
        if self.token()?.has_key(&self.next_label())? {
            self.ca_for(cert_pem, &self.next_label())
        } else {
            self.ca_for(cert_pem, &self.uri.object)
        }
    }

    fn activate_next(&self) -> Result<()> {
        let token = self.token()?;
        let next = self.next_label();
        if !token.has_key(&next)? {
            return Ok(());
        }
        if token.has_key(&self.uri.object)? {
            let old = format!("{}.old", self.uri.object);
            if token.has_key(&old)? {
                // Never destroy a CA key here: the one before keeps a dated label.
                let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
                token.relabel(&old, &format!("{old}.{stamp}"))?;
            }
            token.relabel(&self.uri.object, &old)?;
        }
        token.relabel(&next, &self.uri.object)
    }

    fn restore_previous(&self, old_ca_pem: &str) -> Result<()> {
        let token = self.token()?;
        let object = &self.uri.object;
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let set_aside = format!("{object}.rolled-back.{stamp}");
        if self.ca_for(old_ca_pem, object).is_err() {
            let old = format!("{object}.old");
            if !token.has_key(&old)? {
                return Err(Error::Invalid(format!(
                    "the old CA's key is neither {object:?} nor {old:?} in PKCS#11 token {:?}; \
                     the rotation cannot be rolled back",
                    self.uri.token
                )));
            }
            self.ca_for(old_ca_pem, &old)?;
            if token.has_key(object)? {
                token.relabel(object, &set_aside)?;
            }
            token.relabel(&old, object)?;
        }
        let next = self.next_label();
        if token.has_key(&next)? {
            token.relabel(&next, &format!("{set_aside}.unused"))?;
        }
        Ok(())
    }

    fn finish_next(&self) -> Result<()> {
        Ok(())
    }

    fn candidate_copy(&self, _ca: &CertificateAuthority) -> Option<Secret> {
        None
    }
}

/// Checks that the token answers and that its key is the CA in `ca_pem`
/// (for `verify`); the error says which part failed.
pub fn check(store: &dyn KeyStore, ca_pem: &str) -> Result<()> {
    let ca = store.load_ca(ca_pem)?;
    ca.check_key_matches()?;
    // A signature proves the token can still sign, not only list objects.
    let probe = crate::pki::NodeKey::generate()?.client_csr("verify-probe")?;
    ca.sign_client_csr(&probe, "verify-probe", 1)
        .map(|_| ())
        .map_err(|e| Error::Certificate(format!("{} cannot sign: {e}", store.describe())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::config::DigestAlgorithmName;

    fn config_signing_with(ca_sha256: String) -> ClusterConfig {
        ClusterConfig {
            cluster_name: "test".into(),
            serial: 1,
            candidate_pool_size: 2,
            digest: DigestAlgorithmName::Sha256,
            cert_days: 365,
            cert_lifetime: 0,
            ca_sha256,
            ca_key: None,
            nodes: Vec::new(),
            users: Vec::new(),
            audit: Vec::new(),
            ca_rotation: None,
            term: 0,
        }
    }

    #[test]
    fn only_the_ca_the_config_names_signs() {
        let sha = |ca: &CertificateAuthority| {
            crate::core::hex::lower(DigestAlgorithm::Sha256.digest(ca.cert_der()).as_bytes())
        };
        let (old, new) = (
            CertificateAuthority::generate("test", 30).unwrap(),
            CertificateAuthority::generate("test", 30).unwrap(),
        );
        assert!(check_signing_ca(&new, &config_signing_with(sha(&new)), "k").is_ok());
        let upper = sha(&new).to_uppercase();
        assert!(check_signing_ca(&new, &config_signing_with(upper), "k").is_ok());
        // A config from before the digest was recorded names none.
        assert!(check_signing_ca(&old, &config_signing_with(String::new()), "k").is_ok());
        let refused = check_signing_ca(&old, &config_signing_with(sha(&new)), "k")
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("missed the key of a CA rotation"),
            "{refused}"
        );
    }
}
