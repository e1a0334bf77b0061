//! Durations as operators type them (`90s`, `30m`, `12h`, `7d`; a bare number is seconds), read
//! the same way by `execmesh-gateway token mint --ttl` and execmeshctl's `--ttl`, `--grace`, `--since`.

use std::time::Duration;

/// Parses `text` as a number with an optional unit `s`, `m`, `h` or `d` (default `s`); the
/// error says what a duration looks like.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 15m, 12h or 7d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{text}`: unit must be s, m, h or d")),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is longer than any duration execmesh can keep"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse(" 7d "), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse("1w").expect_err("no weeks").contains("unit must be"));
        assert!(parse("7w").is_err());
        assert!(
            parse("soon")
                .expect_err("no number")
                .contains("not a duration")
        );
        // Typed by a person: an absurd number is an error, not an overflow.
        assert!(
            parse("99999999999999999d")
                .expect_err("overflows")
                .contains("longer than")
        );
    }
}
