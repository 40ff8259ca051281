//! The clock, in Unix seconds, RFC 3339 for people and JSON, and the one
//! parser of durations given on a command line or in a request.

use std::time::Duration;

/// Current time in Unix seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `unix` as RFC 3339 in UTC; empty when out of range.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The longest a node certificate may live: 100 years.
pub const MAX_CERT_LIFETIME: Duration = Duration::from_secs(36_500 * 86_400);

/// Seven days: the longest a join token may live (SPEC §5).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Parses a duration of at least one second and at most `max`: `90s`,
/// `30m`, `1h`, `2d`, plain seconds (`3600`), or any combination
/// `humantime` reads (`1h 30m`). The error says what is accepted, and names
/// `max` when the duration exceeds it.
pub fn parse_duration(text: &str, max: Duration) -> Result<Duration, String> {
    let text = text.trim();
    let parsed = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>().map(Duration::from_secs).map_err(|_| {
            format!(
                "{text:?} is too long: at most {}",
                humantime::format_duration(max)
            )
        })?
    } else {
        humantime::parse_duration(text).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => {
                format!(
                    "{text:?} is too long: at most {}",
                    humantime::format_duration(max)
                )
            }
            _ => format!("{text:?} is not a duration like 90s, 30m, 1h or 2d ({e})"),
        })?
    };
    if parsed.as_secs() == 0 {
        return Err(format!("{text:?} is not a duration of at least one second"));
    }
    if parsed > max {
        return Err(format!(
            "{text:?} is too long: at most {}",
            humantime::format_duration(max)
        ));
    }
    // Whole seconds: what expiry times are counted in.
    Ok(Duration::from_secs(parsed.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accepted_and_refused() {
        let week = MAX_TOKEN_TTL;
        for (text, secs) in [
            ("90s", 90),
            ("30m", 1800),
            ("1h", 3600),
            ("2d", 172_800),
            ("3600", 3600),
            (" 1h 30m ", 5400),
            ("7d", 604_800),
            ("1500ms", 1),
        ] {
            assert_eq!(
                parse_duration(text, week),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for (text, needle) in [
            ("0", "at least one second"),
            ("0s", "at least one second"),
            ("500ms", "at least one second"),
            ("8d", "at most 7days"),
            ("604801", "at most 7days"),
            ("9999999999999s", "at most 7days"),
            ("99999999999999999999", "at most 7days"),
            ("99999999999999999999s", "at most 7days"),
            ("", "not a duration"),
            ("h", "not a duration"),
            ("1x", "not a duration"),
            ("-1h", "not a duration"),
        ] {
            match parse_duration(text, week) {
                Ok(d) => panic!("{text:?} gave {d:?}"),
                Err(e) => assert!(e.contains(needle), "{text:?}: {e}"),
            }
        }
    }

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(i64::MAX), "");
    }
}
