//! The cluster CA key inside a PKCS#11 token (an HSM, or SoftHSM2 in tests).
//!
//! The key is named by an RFC 7512 URI:
//!
//! ```text
//! pkcs11:token=T;object=O?module-path=/path/lib.so&pin-source=file:/path/pin
//! ```
//!
//! `pin-source` is `file:PATH` (the file's first line) or `env:NAME` (an
//! environment variable): the PIN itself never appears in argv, in the URI
//! or in `config.json`; a `pin-value` attribute is refused. The key is an
//! EC P-256 private key that is sensitive and not extractable: it signs in
//! the token and never leaves it. A CA rotation makes the next key under
//! the label `O.new`; activating it renames the old key to `O.old` and the
//! new one to `O`, so the URI in the config never changes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256};
use sha2::Digest;

use crate::core::{Error, Result};

/// DER of the secp256r1 (P-256) curve OID, as `CKA_EC_PARAMS` holds it.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

/// Where the token's user PIN comes from.
#[derive(Clone, PartialEq, Eq)]
enum PinSource {
    File(PathBuf),
    Env(String),
    /// The token needs no login (protected authentication path).
    None,
}

/// A parsed `pkcs11:` URI naming the CA key.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// The URI as given, kept for the config and messages (no secret in it).
    text: String,
    /// `token=`: the token's label.
    pub token: String,
    /// `object=`: the key's label.
    pub object: String,
    /// `module-path=`: the PKCS#11 library.
    pub module_path: PathBuf,
    pin: PinSource,
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Uri({})", self.text)
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn percent_decode(value: &str, uri: &str) -> Result<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad_uri(uri, "a `%` is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad_uri(uri, "a percent-encoded value is not UTF-8"))
}

fn bad_uri(uri: &str, reason: &str) -> Error {
    Error::Invalid(format!(
        "--ca-key {uri:?}: {reason} (expected pkcs11:token=T;object=O?module-path=/path/lib.so&pin-source=file:/path/pin)"
    ))
}

impl Pkcs11Uri {
    /// Parses `text` (RFC 7512: path attributes split by `;`, query
    /// attributes by `&`, values percent-encoded).
    pub fn parse(text: &str) -> Result<Self> {
        if text.contains("pin-value=") {
            // Not echoed: the URI holds the PIN.
            return Err(Error::Invalid(
                "--ca-key: a PIN in the URI (pin-value) would be visible in argv and stored in \
                 the config; use pin-source=file:/path/to/pin or pin-source=env:VARIABLE"
                    .into(),
            ));
        }
        let rest = text
            .strip_prefix("pkcs11:")
            .ok_or_else(|| bad_uri(text, "not a pkcs11: URI"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut token = None;
        let mut object = None;
        let mut module_path = None;
        let mut pin = PinSource::None;
        let path_attrs = path.split(';').filter(|a| !a.is_empty());
        let query_attrs = query.split('&').filter(|a| !a.is_empty());
        for attr in path_attrs.chain(query_attrs) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad_uri(text, &format!("attribute {attr:?} has no `=`")))?;
            let value = percent_decode(value, text)?;
            match name {
                "token" => token = Some(value),
                "object" => object = Some(value),
                "type" if value == "private" => {}
                "module-path" => module_path = Some(PathBuf::from(value)),
                "pin-source" => {
                    pin = if let Some(path) = value.strip_prefix("file:") {
                        PinSource::File(PathBuf::from(path))
                    } else if let Some(name) = value.strip_prefix("env:") {
                        PinSource::Env(name.to_owned())
                    } else if value.starts_with('/') {
                        PinSource::File(PathBuf::from(value))
                    } else {
                        return Err(bad_uri(
                            text,
                            "pin-source must be file:/path/to/pin or env:VARIABLE",
                        ));
                    }
                }
                other => return Err(bad_uri(text, &format!("unsupported attribute {other:?}"))),
            }
        }
        let need = |v: Option<String>, what: &str| {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| bad_uri(text, &format!("{what} is missing")))
        };
        Ok(Pkcs11Uri {
            text: text.to_owned(),
            token: need(token, "token=")?,
            object: need(object, "object=")?,
            module_path: module_path.ok_or_else(|| bad_uri(text, "module-path= is missing"))?,
            pin,
        })
    }

    fn read_pin(&self) -> Result<Option<AuthPin>> {
        let pin = match &self.pin {
            PinSource::None => return Ok(None),
            PinSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| {
                    Error::Invalid(format!(
                        "cannot read the PIN file {} named by pin-source: {e}",
                        path.display()
                    ))
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            PinSource::Env(name) => std::env::var(name).map_err(|_| {
                Error::Invalid(format!(
                    "the environment variable {name} named by pin-source is not set"
                ))
            })?,
        };
        Ok(Some(AuthPin::from(pin)))
    }
}

/// The loaded PKCS#11 modules, one context per library for the whole
/// process: `C_Initialize` may run once per process, and finalising one
/// context while another is in use would break it.
fn module(path: &Path) -> Result<Pkcs11> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let modules = MODULES.get_or_init(Default::default);
    let mut modules = modules
        .lock()
        .map_err(|_| Error::Invalid("PKCS#11 module table poisoned".into()))?;
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    let load = |e: CkError| {
        Error::Invalid(format!(
            "cannot load the PKCS#11 module {}: {e}; check module-path in the --ca-key URI",
            path.display()
        ))
    };
    let pkcs11 = Pkcs11::new(path).map_err(load)?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, Function::Initialize)) => {}
        Err(e) => return Err(load(e)),
    }
    modules.insert(path.to_path_buf(), pkcs11.clone());
    Ok(pkcs11)
}

fn token_error(uri: &Pkcs11Uri, what: &str, e: CkError) -> Error {
    Error::Invalid(format!("PKCS#11 token {:?}: {what}: {e}", uri.token))
}

/// A logged-in session with the token a URI names.
#[derive(Debug)]
pub struct Token {
    uri: Pkcs11Uri,
    session: Mutex<Session>,
}

impl Token {
    /// Loads the module, finds the token by label and logs in with the PIN
    /// from `pin-source`.
    pub fn open(uri: &Pkcs11Uri) -> Result<Self> {
        let pkcs11 = module(&uri.module_path)?;
        let slots = pkcs11
            .get_slots_with_token()
            .map_err(|e| token_error(uri, "listing slots", e))?;
        let slot: Option<Slot> = slots.into_iter().find(|s| {
            pkcs11
                .get_token_info(*s)
                .is_ok_and(|info| info.label().trim_end() == uri.token)
        });
        let slot = slot.ok_or_else(|| {
            Error::Invalid(format!(
                "no PKCS#11 token labelled {:?} in {}; check token= in the --ca-key URI \
                 (`softhsm2-util --show-slots` or `pkcs11-tool -L` lists the tokens)",
                uri.token,
                uri.module_path.display()
            ))
        })?;
        let session = pkcs11
            .open_rw_session(slot)
            .map_err(|e| token_error(uri, "opening a session", e))?;
        if let Some(pin) = uri.read_pin()? {
            match session.login(UserType::User, Some(&pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                    return Err(Error::Invalid(format!(
                        "PKCS#11 token {:?} refused the PIN (wrong PIN); fix the file or variable named by pin-source",
                        uri.token
                    )))
                }
                Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                    return Err(Error::Invalid(format!(
                        "PKCS#11 token {:?}: the user PIN is locked; unlock it with the token's SO PIN",
                        uri.token
                    )))
                }
                Err(e) => return Err(token_error(uri, "logging in", e)),
            }
        }
        Ok(Token {
            uri: uri.clone(),
            session: Mutex::new(session),
        })
    }

    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>> {
        self.session
            .lock()
            .map_err(|_| Error::Invalid("PKCS#11 session poisoned".into()))
    }

    /// The private key labelled `label` and its public point, if present.
    fn find(&self, session: &Session, label: &str) -> Result<Option<(ObjectHandle, Vec<u8>)>> {
        let uri = &self.uri;
        let keys = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| token_error(uri, "searching keys", e))?;
        let key = match keys.as_slice() {
            [] => return Ok(None),
            [key] => *key,
            _ => {
                return Err(Error::Invalid(format!(
                    "PKCS#11 token {:?} holds {} private keys labelled {label:?}; keep one",
                    uri.token,
                    keys.len()
                )))
            }
        };
        let attrs = session
            .get_attributes(key, &[AttributeType::KeyType, AttributeType::Id])
            .map_err(|e| token_error(uri, "reading the key", e))?;
        let mut id = None;
        for attr in attrs {
            match attr {
                Attribute::KeyType(t) if t != KeyType::EC => {
                    return Err(Error::Invalid(format!(
                        "the key labelled {label:?} in PKCS#11 token {:?} is not an EC key",
                        uri.token
                    )))
                }
                Attribute::Id(i) => id = Some(i),
                _ => {}
            }
        }
        let mut template = vec![
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        if let Some(id) = id {
            template.push(Attribute::Id(id));
        }
        let public = session
            .find_objects(&template)
            .map_err(|e| token_error(uri, "searching the public key", e))?;
        let Some(public) = public.first() else {
            return Err(Error::Invalid(format!(
                "PKCS#11 token {:?} has the private key {label:?} but not its public key",
                uri.token
            )));
        };
        let point = session
            .get_attributes(*public, &[AttributeType::EcPoint])
            .map_err(|e| token_error(uri, "reading the public key", e))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the public key {label:?} in PKCS#11 token {:?} has no EC point",
                    uri.token
                ))
            })?;
        Ok(Some((key, raw_point(&point)?)))
    }

    /// The key labelled `label`, made here (EC P-256, sensitive, not
    /// extractable) when `create` and it does not exist yet.
    pub fn key(self: &Arc<Self>, label: &str, create: bool) -> Result<TokenKey> {
        let session = self.session()?;
        let found = match self.find(&session, label)? {
            Some(found) => found,
            None if create => {
                let id: [u8; 16] = rand::random();
                let common = [
                    Attribute::Token(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Id(id.to_vec()),
                ];
                let mut public = common.to_vec();
                public.extend([
                    Attribute::KeyType(KeyType::EC),
                    Attribute::Verify(true),
                    Attribute::EcParams(P256_PARAMS.to_vec()),
                ]);
                let mut private = common.to_vec();
                private.extend([
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                ]);
                session
                    .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                    .map_err(|e| token_error(&self.uri, "generating an EC P-256 key", e))?;
                self.find(&session, label)?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "PKCS#11 token {:?} did not keep the key it generated",
                        self.uri.token
                    ))
                })?
            }
            None => {
                return Err(Error::Invalid(format!(
                "no key labelled {label:?} in PKCS#11 token {:?}; check object= in the CA key URI",
                self.uri.token
            )))
            }
        };
        Ok(TokenKey {
            token: self.clone(),
            handle: found.0,
            public: found.1,
        })
    }

    /// Whether a private key labelled `label` exists.
    pub fn has_key(&self, label: &str) -> Result<bool> {
        let session = self.session()?;
        Ok(self.find(&session, label)?.is_some())
    }

    /// Renames the key pair labelled `from` to `to` (both halves).
    pub fn relabel(&self, from: &str, to: &str) -> Result<()> {
        let session = self.session()?;
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            let objects = session
                .find_objects(&[
                    Attribute::Class(class),
                    Attribute::Label(from.as_bytes().to_vec()),
                ])
                .map_err(|e| token_error(&self.uri, "searching keys", e))?;
            for object in objects {
                session
                    .update_attributes(object, &[Attribute::Label(to.as_bytes().to_vec())])
                    .map_err(|e| token_error(&self.uri, "renaming a key", e))?;
            }
        }
        Ok(())
    }

    /// The URI this session was opened with.
    pub fn uri(&self) -> &Pkcs11Uri {
        &self.uri
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the uncompressed point
/// (some tokens return the bare point); X.509 wants the bare point.
fn raw_point(value: &[u8]) -> Result<Vec<u8>> {
    match value {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => Ok(rest.to_vec()),
        [0x04, ..] if value.len() == 65 => Ok(value.to_vec()),
        _ => Err(Error::Invalid(
            "the token's public key is not an uncompressed P-256 point".into(),
        )),
    }
}

/// A DER `INTEGER` holding the unsigned big-endian `bytes`.
fn der_integer(bytes: &[u8], out: &mut Vec<u8>) {
    let trimmed: &[u8] = match bytes.iter().position(|&b| b != 0) {
        Some(i) => bytes.get(i..).unwrap_or_default(),
        None => &[0],
    };
    let pad = trimmed.first().is_some_and(|&b| b & 0x80 != 0);
    out.push(0x02);
    out.push((trimmed.len() + usize::from(pad)) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
}

/// PKCS#11 returns an ECDSA signature as `r || s`; X.509 carries
/// `SEQUENCE { INTEGER r, INTEGER s }`.
fn der_signature(raw: &[u8]) -> Result<Vec<u8>> {
    if raw.len() != 64 {
        return Err(Error::Invalid(format!(
            "the token returned a {}-byte ECDSA signature, not 64",
            raw.len()
        )));
    }
    let (r, s) = raw.split_at(32);
    let mut body = Vec::with_capacity(72);
    der_integer(r, &mut body);
    der_integer(s, &mut body);
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(0x30);
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    Ok(out)
}

/// An EC P-256 private key inside a token: signs there, never leaves it.
pub struct TokenKey {
    token: Arc<Token>,
    handle: ObjectHandle,
    public: Vec<u8>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey({})", self.token.uri)
    }
}

impl PublicKeyData for TokenKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for TokenKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        let digest = sha2::Sha256::digest(msg);
        let session = self
            .token
            .session()
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        let raw = session
            .sign(&Mechanism::Ecdsa, self.handle, &digest)
            .map_err(|e| {
                tracing::error!(
                    "PKCS#11 token {:?}: signing failed: {e}",
                    self.token.uri.token
                );
                rcgen::Error::RemoteKeyError
            })?;
        der_signature(&raw).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_form() {
        let uri = Pkcs11Uri::parse(
            "pkcs11:token=My%20HSM;object=ca?module-path=/usr/lib/x.so&pin-source=file:/etc/pin",
        )
        .unwrap();
        assert_eq!(uri.token, "My HSM");
        assert_eq!(uri.object, "ca");
        assert_eq!(uri.module_path, PathBuf::from("/usr/lib/x.so"));
        assert!(uri.pin == PinSource::File("/etc/pin".into()));
        let env = Pkcs11Uri::parse("pkcs11:token=t;object=o?module-path=/m.so&pin-source=env:PIN")
            .unwrap();
        assert!(env.pin == PinSource::Env("PIN".into()));
    }

    #[test]
    fn refuses_a_pin_in_the_uri_and_missing_parts() {
        for bad in [
            "pkcs11:token=t;object=o?module-path=/m.so&pin-value=1234",
            "pkcs11:object=o?module-path=/m.so",
            "pkcs11:token=t?module-path=/m.so",
            "pkcs11:token=t;object=o",
            "file:/etc/ca.key",
            "pkcs11:token=t;object=o;serial=1?module-path=/m.so",
            "pkcs11:token=%zz;object=o?module-path=/m.so",
        ] {
            let e = Pkcs11Uri::parse(bad).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            assert!(!e.contains("1234"), "{e}");
        }
    }

    #[test]
    fn signature_der_is_minimal() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[63] = 1; // s is 1
        let der = der_signature(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 33 + 2 + 3, 0x02, 33]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 1]);
    }
}
