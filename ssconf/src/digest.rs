//! Certificate digests in OpenSSL's fingerprint notation.

use std::fmt;
use std::str::FromStr;

use sha1::Digest as _;

/// Which hash a [`CertDigest`] uses. The map's text tells it by length:
/// 20 bytes is SHA-1 (what Ganeti writes), 32 bytes SHA-256 (our default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    Sha1,
    Sha256,
}

impl DigestAlgorithm {
    /// The digest of `der` (a certificate's DER encoding) with this hash.
    pub fn digest(self, der: &[u8]) -> CertDigest {
        match self {
            DigestAlgorithm::Sha1 => CertDigest::Sha1(sha1::Sha1::digest(der).into()),
            DigestAlgorithm::Sha256 => CertDigest::Sha256(sha2::Sha256::digest(der).into()),
        }
    }

    /// The name used on the command line and in config files.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha1 => "sha1",
            DigestAlgorithm::Sha256 => "sha256",
        }
    }
}

impl FromStr for DigestAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Ok(DigestAlgorithm::Sha1),
            "sha256" => Ok(DigestAlgorithm::Sha256),
            other => Err(format!(
                "unknown digest algorithm {other:?} (expected sha256 or sha1)"
            )),
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The digest of a certificate's DER encoding.
///
/// Displays as upper-case hex pairs joined by colons, byte for byte what
/// `openssl x509 -noout -fingerprint -sha256` (or `-sha1`) prints after `=`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertDigest {
    Sha1([u8; 20]),
    Sha256([u8; 32]),
}

impl CertDigest {
    /// The hash this digest was made with.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self {
            CertDigest::Sha1(_) => DigestAlgorithm::Sha1,
            CertDigest::Sha256(_) => DigestAlgorithm::Sha256,
        }
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CertDigest::Sha1(b) => b,
            CertDigest::Sha256(b) => b,
        }
    }
}

impl fmt::Display for CertDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Built in one buffer and written once: a map or a node_server_certs
        // of 1,000 lines is rendered on every change, and a `write!` per
        // byte made that most of a node's work.
        let nibble = |v: u8| if v < 10 { b'0' + v } else { b'A' + v - 10 };
        let chars = self.as_bytes().iter().enumerate().flat_map(|(i, byte)| {
            (i > 0)
                .then_some(b':')
                .into_iter()
                .chain([nibble(byte >> 4), nibble(byte & 0x0f)])
        });
        let mut text = [0u8; 32 * 3];
        let mut len = 0;
        for (slot, c) in text.iter_mut().zip(chars) {
            *slot = c;
            len += 1;
        }
        f.write_str(std::str::from_utf8(text.get(..len).unwrap_or_default()).unwrap_or_default())
    }
}

impl fmt::Debug for CertDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self)
    }
}

/// Why a digest's text did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("digest has {0} bytes; expected 20 (SHA-1) or 32 (SHA-256)")]
    Length(usize),
    #[error("digest byte {0:?} is not two hex digits")]
    Hex(String),
}

impl FromStr for CertDigest {
    type Err = DigestParseError;

    /// Parses `AB:CD:...` (case-insensitive, as OpenSSL and Ganeti write it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = Vec::with_capacity(32);
        for pair in s.split(':') {
            if bytes.len() == 32 {
                return Err(DigestParseError::Length(s.split(':').count()));
            }
            match u8::from_str_radix(pair, 16) {
                Ok(v) if pair.len() == 2 && pair.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    bytes.push(v)
                }
                _ => return Err(DigestParseError::Hex(pair.chars().take(8).collect())),
            }
        }
        if let Ok(d) = <[u8; 20]>::try_from(bytes.as_slice()) {
            Ok(CertDigest::Sha1(d))
        } else if let Ok(d) = <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(CertDigest::Sha256(d))
        } else {
            Err(DigestParseError::Length(bytes.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_openssl_and_parses_back() {
        let d = DigestAlgorithm::Sha256.digest(b"abc");
        let text = d.to_string();
        assert_eq!(
            text,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
        assert_eq!(text.parse::<CertDigest>(), Ok(d));
        assert_eq!(text.to_lowercase().parse::<CertDigest>(), Ok(d));
        let s1 = DigestAlgorithm::Sha1.digest(b"abc");
        assert_eq!(
            s1.to_string(),
            "A9:99:3E:36:47:06:81:6A:BA:3E:25:71:78:50:C2:6C:9C:D0:D8:9D"
        );
        assert_eq!(s1.algorithm(), DigestAlgorithm::Sha1);
    }

    #[test]
    fn rejects_bad_lengths_and_digits() {
        assert_eq!(
            "AB:CD".parse::<CertDigest>(),
            Err(DigestParseError::Length(2))
        );
        assert!(matches!(
            "".parse::<CertDigest>(),
            Err(DigestParseError::Hex(_))
        ));
        assert!(matches!(
            "ZZ".parse::<CertDigest>(),
            Err(DigestParseError::Hex(_))
        ));
        assert!(matches!(
            "+A".parse::<CertDigest>(),
            Err(DigestParseError::Hex(_))
        ));
        let long = vec!["00"; 33].join(":");
        assert!(matches!(
            long.parse::<CertDigest>(),
            Err(DigestParseError::Length(_))
        ));
    }
}
