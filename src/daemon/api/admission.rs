//! Who the remote API admits (SPEC §11.1): a certificate that chains to the
//! cluster CA AND whose SHA-256 digest is that of a user in `config.json`
//! who is not revoked and not expired. Node certificates are never users,
//! so they are refused like any stranger.
//!
//! The allow list is an [`ArcSwap`] replaced whenever `config.json` changes
//! ([`watch_config`]); every open connection subscribes to its changes and
//! closes when its user is no longer admitted. A node that holds no
//! `config.json` (a regular node) has no user list: it admits certificates
//! of the cluster CA named `user:...` and answers them only with a redirect
//! to the master. No readable list at start denies everyone (fail closed);
//! an unreadable new one keeps the previous.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use ssconf::DigestAlgorithm;
use tokio::sync::watch;

use crate::daemon::auth::{Denial, DenialReason, Verdict, HANDSHAKE};
use crate::pki;
use crate::state::config::ClusterConfig;
use crate::state::users::UserRole;
use crate::state::StateDir;

/// How often `config.json` is checked for a change: a revocation closes the
/// user's connections well within a second.
pub const POLL: Duration = Duration::from_millis(250);

/// An admitted caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    /// `None` on a node without a user list: such a caller is only ever
    /// redirected to the master.
    pub role: Option<UserRole>,
    /// SHA-256 of the certificate, as `config.json` records it.
    pub digest: String,
}

/// The users the API admits, by certificate digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowList {
    /// From this node's `config.json`: active users only.
    Users(HashMap<String, (String, UserRole)>),
    /// No `config.json` here: any `user:` certificate of the cluster CA, to
    /// be redirected.
    RedirectOnly,
}

impl AllowList {
    /// Nobody: before any list was read.
    pub fn nobody() -> Self {
        AllowList::Users(HashMap::new())
    }

    /// The active users of `config` at `now`.
    pub fn from_config(config: &ClusterConfig, now: i64) -> Self {
        AllowList::Users(
            config
                .users
                .iter()
                .filter(|u| u.is_active(now))
                .map(|u| (u.digest.clone(), (u.name.clone(), u.role)))
                .collect(),
        )
    }
}

/// Why a certificate was refused on the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not one of the users (a node's certificate, a revoked or unknown user).
    NotAUser,
}

/// The API's authorization decision for a certificate that already chains
/// to the cluster CA: one function, table-tested.
pub fn admit(list: &AllowList, cert: &CertificateDer<'_>) -> Result<Caller, Refused> {
    let digest = DigestAlgorithm::Sha256.digest(cert).to_string();
    match list {
        AllowList::Users(users) => users
            .get(&digest)
            .map(|(name, role)| Caller {
                name: name.clone(),
                role: Some(*role),
                digest: digest.clone(),
            })
            .ok_or(Refused::NotAUser),
        AllowList::RedirectOnly => {
            let subject = pki::subject_of(cert);
            match subject.strip_prefix("CN=user:") {
                Some(name) if !name.is_empty() && !name.contains(',') => Ok(Caller {
                    name: name.to_owned(),
                    role: None,
                    digest,
                }),
                _ => Err(Refused::NotAUser),
            }
        }
    }
}

/// The current allow list and its changes.
#[derive(Debug)]
pub struct AllowListHandle {
    current: ArcSwap<AllowList>,
    changed: watch::Sender<u64>,
}

impl AllowListHandle {
    pub fn new(list: AllowList) -> Self {
        AllowListHandle {
            current: ArcSwap::from_pointee(list),
            changed: watch::Sender::new(0),
        }
    }

    pub fn load(&self) -> Arc<AllowList> {
        self.current.load_full()
    }

    /// Publishes a new list (when it differs) and wakes every connection.
    pub fn publish(&self, list: AllowList) {
        if *self.current.load_full() != list {
            self.current.store(Arc::new(list));
            self.changed.send_modify(|n| *n += 1);
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether `caller` is still admitted by the current list.
    pub fn still_admits(&self, caller: &Caller) -> bool {
        match &**self.current.load() {
            AllowList::Users(users) => users
                .get(&caller.digest)
                .is_some_and(|(name, role)| *name == caller.name && Some(*role) == caller.role),
            AllowList::RedirectOnly => caller.role.is_none(),
        }
    }
}

/// The allow list this node's state gives: [`AllowList::RedirectOnly`]
/// when it holds no `config.json`.
pub fn read(state: &StateDir) -> crate::Result<AllowList> {
    if !state.config_json().exists() {
        return Ok(AllowList::RedirectOnly);
    }
    let config: ClusterConfig = crate::state::read_json(&state.config_json())?;
    Ok(AllowList::from_config(&config, crate::core::time::now()))
}

/// The modification time and length of `config.json`, to notice a change.
fn stamp(state: &StateDir) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(state.config_json()).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Re-reads the allow list whenever `config.json` changes (and every
/// minute, for expiries), calling `on_change` after each new list; a bad
/// file keeps the previous list.
pub async fn watch_config(
    state: StateDir,
    handle: Arc<AllowListHandle>,
    on_change: impl Fn(),
    changed: &tokio::sync::Notify,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = stamp(&state);
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = changed.notified() => {}
            _ = stop.changed() => return,
        }
        ticks = ticks.wrapping_add(1);
        let now = stamp(&state);
        if now == last && !ticks.is_multiple_of(240) {
            continue;
        }
        last = now;
        match read(&state) {
            Ok(list) => {
                handle.publish(list);
                on_change();
            }
            Err(e) => tracing::error!("API users: keeping the current list: {e}"),
        }
    }
}

/// The API's client-certificate verifier: webpki's chain check, then
/// [`admit`].
#[derive(Debug)]
pub struct UserVerifier {
    pub chain: Arc<dyn ClientCertVerifier>,
    pub users: Arc<AllowListHandle>,
}

impl ClientCertVerifier for UserVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        match admit(&self.users.load(), end_entity) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(Refused::NotAUser) => {
                // For the connection task, which knows the peer and logs
                // the refusal once.
                let denial = Denial {
                    reason: DenialReason::NotAUser,
                    subject: Some(pki::subject_of(end_entity)),
                    digest: Some(DigestAlgorithm::Sha256.digest(end_entity)),
                };
                let _ = HANDSHAKE.try_with(|notes| {
                    notes.borrow_mut().verdict = Some(Verdict::Denied(denial));
                });
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, CertificateSigner, LeafRole, NodeKey};

    fn cert(ca: &CertificateAuthority, role: &LeafRole<'_>) -> CertificateDer<'static> {
        let key = NodeKey::generate().unwrap();
        let pem = ca.sign_csr(&key.csr("x").unwrap(), role, 1).unwrap();
        pki::load_certs_from_pem(&pem).unwrap()
    }

    #[test]
    fn who_is_admitted() {
        let ca = CertificateAuthority::generate("c", 1).unwrap();
        let ann = cert(&ca, &LeafRole::User { name: "ann" });
        let revoked = cert(&ca, &LeafRole::User { name: "bob" });
        let node = cert(&ca, &LeafRole::Client { node: "m" });
        let digest = |c: &CertificateDer<'_>| DigestAlgorithm::Sha256.digest(c).to_string();
        let users = AllowList::Users(
            [(digest(&ann), ("ann".to_owned(), UserRole::Operator))]
                .into_iter()
                .collect(),
        );
        type Row<'a> = (
            &'a AllowList,
            &'a CertificateDer<'a>,
            Option<(&'a str, Option<UserRole>)>,
        );
        let rows: &[Row<'_>] = &[
            (&users, &ann, Some(("ann", Some(UserRole::Operator)))),
            (&users, &revoked, None),
            (&users, &node, None),
            (&AllowList::nobody(), &ann, None),
            (&AllowList::RedirectOnly, &ann, Some(("ann", None))),
            (&AllowList::RedirectOnly, &node, None),
        ];
        for (i, (list, cert, want)) in rows.iter().enumerate() {
            let got = admit(list, cert).ok();
            let got = got.as_ref().map(|c| (c.name.as_str(), c.role));
            assert_eq!(got, *want, "row {i}");
        }
    }
}
