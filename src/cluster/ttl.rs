//! Durations as people write them (`90s`, `30m`, `1h`, `2d`, `52w`, or
//! plain seconds) for user certificates, tokens and `audit --since`, through
//! the one parser (`core::time::parse_duration`), in seconds.

use std::time::Duration;

use crate::core::time::{parse_duration, MAX_CERT_LIFETIME};
use crate::core::{Error, Result};

/// Parses a duration of at most `max` into seconds; zero is refused.
pub fn parse_at_most(text: &str, max: Duration) -> Result<u64> {
    parse_duration(text, max)
        .map(|d| d.as_secs())
        .map_err(Error::Invalid)
}

/// Parses a duration (at most 100 years) into seconds; zero is refused.
pub fn parse(text: &str) -> Result<u64> {
    parse_at_most(text, MAX_CERT_LIFETIME)
}

/// The same, as clap's value parser wants it.
pub fn parse_for_clap(text: &str) -> std::result::Result<u64, String> {
    parse(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        let rows: &[(&str, Option<u64>)] = &[
            ("90", Some(90)),
            ("90s", Some(90)),
            ("30m", Some(1800)),
            ("1h", Some(3600)),
            ("2d", Some(172_800)),
            ("52w", Some(52 * 604_800)),
            ("0h", None),
            ("h", None),
            ("-1h", None),
        ];
        for (text, want) in rows {
            assert_eq!(super::parse(text).ok(), *want, "{text}");
        }
    }
}
