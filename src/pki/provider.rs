//! The one crypto provider (aws-lc-rs), passed explicitly to every TLS
//! configuration noded builds: rustls panics when it must pick between two
//! enabled providers on its own. Also what every configuration shares: the
//! protocol versions and the root store of the cluster CA(s).

use std::sync::{Arc, OnceLock};

use rustls::crypto::hmac::{Hmac, Key, Tag};
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::crypto::CryptoProvider;
use rustls::{CipherSuiteCommon, RootCertStore, SupportedCipherSuite, Tls13CipherSuite};
use rustls_pki_types::CertificateDer;

use crate::core::Result;

/// The crypto provider of every TLS configuration noded builds.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            for suite in &mut provider.cipher_suites {
                if let SupportedCipherSuite::Tls13(tls13) = suite {
                    if tls13.common.suite == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 {
                        *suite = SupportedCipherSuite::Tls13(with_hmac_hkdf(tls13));
                    }
                }
            }
            // AES-128-GCM with SHA-256 first: measured, the SHA-384 key
            // schedule of AES-256-GCM costs about 8 % of a handshake where
            // SHA-512 has no hardware support; the other suites stay
            // available for peers that want them.
            provider.cipher_suites.sort_by_key(|s| {
                !matches!(s.suite(), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
            });
            Arc::new(provider)
        })
        .clone()
}

/// TLS versions the daemon and clients speak: 1.3 only, unless TLS 1.2 is
/// explicitly allowed.
pub fn versions(allow_tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    if allow_tls12 {
        rustls::ALL_VERSIONS
    } else {
        &TLS13_ONLY
    }
}

/// A root store holding exactly `ca_certs`.
pub fn roots(ca_certs: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for ca in ca_certs {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

/// TLS_AES_128_GCM_SHA256 as `suite` has it (aws-lc's AEAD and hash), with
/// its key schedule's HKDF computed over [`HmacSha256`].
///
/// The provider's own HKDF keeps an extracted secret unextracted
/// (aws-lc-rs's `Prk` in extract-and-expand mode) and runs HKDF-Extract
/// again for every HKDF-Expand from it: 8 extra HMACs per full handshake,
/// each setting its key up anew. rustls's [`HkdfUsingHmac`] extracts once
/// and expands with an HMAC key set up once per secret. Same function,
/// same bytes: RFC 5869 HKDF over HMAC-SHA-256 either way.
fn with_hmac_hkdf(suite: &Tls13CipherSuite) -> &'static Tls13CipherSuite {
    static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HmacSha256);
    static SUITE: OnceLock<Tls13CipherSuite> = OnceLock::new();
    SUITE.get_or_init(|| Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: suite.common.suite,
            hash_provider: suite.common.hash_provider,
            confidentiality_limit: suite.common.confidentiality_limit,
        },
        hkdf_provider: &HKDF_SHA256,
        aead_alg: suite.aead_alg,
        quic: suite.quic,
    })
}

/// HMAC-SHA-256 from aws-lc, the key's inner and outer pads computed once
/// per key and copied for each tag.
#[derive(Debug)]
struct HmacSha256;

impl Hmac for HmacSha256 {
    fn with_key(&self, key: &[u8]) -> Box<dyn Key> {
        Box::new(HmacSha256Key(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            key,
        )))
    }

    fn hash_output_len(&self) -> usize {
        32
    }
}

struct HmacSha256Key(aws_lc_rs::hmac::Key);

impl Key for HmacSha256Key {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut context = aws_lc_rs::hmac::Context::with_key(&self.0);
        context.update(first);
        for part in middle {
            context.update(part);
        }
        context.update(last);
        Tag::new(context.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key schedule over [`HmacSha256`] derives the same bytes as the
    /// provider's own HKDF.
    #[test]
    fn hmac_hkdf_matches_the_providers() {
        let SupportedCipherSuite::Tls13(original) =
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        else {
            panic!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite");
        };
        let ours = with_hmac_hkdf(original);
        let (a, b) = (original.hkdf_provider, ours.hkdf_provider);
        let info: [&[u8]; 2] = [b"tls13 c hs traffic", &[7; 32]];
        for salt in [None, Some(&[3u8; 32][..])] {
            let secret = [9u8; 32];
            let x = a.extract_from_secret(salt, &secret);
            let y = b.extract_from_secret(salt, &secret);
            assert_eq!(
                x.expand_block(&info).as_ref(),
                y.expand_block(&info).as_ref()
            );
            let (mut long_x, mut long_y) = ([0u8; 80], [0u8; 80]);
            x.expand_slice(&info, &mut long_x).unwrap();
            y.expand_slice(&info, &mut long_y).unwrap();
            assert_eq!(long_x, long_y);
            let x = a.extract_from_zero_ikm(salt);
            let y = b.extract_from_zero_ikm(salt);
            let okm = x.expand_block(&info);
            assert_eq!(okm.as_ref(), y.expand_block(&info).as_ref());
            assert_eq!(
                a.expander_for_okm(&okm).expand_block(&info).as_ref(),
                b.expander_for_okm(&okm).expand_block(&info).as_ref()
            );
            assert_eq!(
                a.hmac_sign(&okm, b"finished").as_ref(),
                b.hmac_sign(&okm, b"finished").as_ref()
            );
        }
        assert!(provider()
            .cipher_suites
            .iter()
            .any(|s| matches!(s, SupportedCipherSuite::Tls13(t) if std::ptr::eq(*t, ours))));
    }
}
