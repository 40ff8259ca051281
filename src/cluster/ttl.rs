//! Durations as people write them (`90s`, `30m`, `1h`, `2d`, `52w`): the
//! validity of user certificates and tokens, and how far back `audit
//! --since` reaches. Both nodectl and the remote API parse them here.

use crate::core::{Error, Result};

/// Parses a duration (or plain seconds) into seconds; zero is refused.
pub fn parse(text: &str) -> Result<u64> {
    let text = text.trim();
    let invalid = || {
        Error::Invalid(format!(
            "{text:?} is not a duration like 30m, 1h, 2d or 52w (s, m, h, d, w)"
        ))
    };
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(invalid()),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(invalid()),
        Some(secs) => Ok(secs),
    }
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
            ("1y", None),
            ("h", None),
            ("-1h", None),
        ];
        for (text, want) in rows {
            assert_eq!(super::parse(text).ok(), *want, "{text}");
        }
    }
}
