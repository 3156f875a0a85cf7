//! Human durations in config files: `"250ms"`, `"30s"`, `"10m"`, `"1h"`, `"7d"`.

use std::time::Duration;

/// Parses `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
///
/// # Errors
///
/// A message saying what was expected, for config errors.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. \"30s\""))?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    };
    d.ok_or_else(|| format!("invalid duration {text:?}: expected a number and one of ms, s, m, h, d"))
}

/// Serde adapter: `#[serde(with = "telehub_core::duration")]`.
///
/// # Errors
///
/// The deserializer's error carrying [`parse`]'s message.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Serde adapter: writes whole seconds as `"<n>s"` (milliseconds when below one second).
///
/// # Errors
///
/// Only the serializer's own.
pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    } else {
        s.serialize_str(&format!("{}s", d.as_secs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn rejects_missing_or_unknown_units_with_a_message() {
        assert!(parse("30").unwrap_err().contains("ms, s, m, h, d"));
        assert!(parse("3 weeks").is_err());
        assert!(parse("s").unwrap_err().contains("expected"));
        assert!(parse("-1s").is_err());
    }
}
