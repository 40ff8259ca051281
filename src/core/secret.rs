//! Secret text that never shows itself.

use std::fmt;

/// Secret text: a private key's PEM, a token secret. Its `Debug` never
/// shows it, so it cannot leak through logs, error chains or `{:?}`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps secret text.
    pub fn new(text: String) -> Self {
        Secret(text)
    }
    /// The secret text, for writing to a 0600 file, a TLS config, or the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(...)")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_never_shows_the_text() {
        let s = Secret::new("-----BEGIN PRIVATE KEY-----".into());
        assert_eq!(format!("{s:?}"), "Secret(...)");
        assert_eq!(s.expose(), "-----BEGIN PRIVATE KEY-----");
    }
}
