//! Timestamps at the edges: parsed from RFC 3339 text or Unix milliseconds, written as
//! RFC 3339 (UTC), the current time, and arrival times ([`ArrivalClock`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use telehub_core::DeviceId;

use telehub_store::Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `0001-01-01T00:00:00Z`, the earliest time RFC 3339 can write.
pub const MIN: Timestamp = Timestamp(-62_135_596_800_000);

/// `9999-12-31T23:59:59.999Z`, the latest time RFC 3339 can write.
pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// Neither RFC 3339 nor an integer.
    #[error("{0:?} is neither RFC 3339 (2024-05-01T12:00:00Z) nor Unix milliseconds")]
    Unparsable(String),
    /// A JSON value that is not a string or a number.
    #[error("expected an RFC 3339 string or Unix milliseconds, found {0}")]
    WrongType(&'static str),
    /// Outside years 1 to 9999.
    #[error("{0} is outside the years 1 to 9999")]
    OutOfRange(String),
}

/// The current time.
pub fn now() -> Timestamp {
    let ms = match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(MAX.0),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(-MIN.0),
    };
    Timestamp(ms)
}

/// Parses RFC 3339 (`2024-05-01T12:00:00.250+02:00`) or Unix milliseconds (`1714557600250`).
/// Sub-millisecond digits are truncated.
///
/// # Errors
///
/// [`TimestampError`] saying what was expected.
pub fn parse(text: &str) -> Result<Timestamp, TimestampError> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return in_range(ms, text);
    }
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| TimestampError::Unparsable(text.to_owned()))?;
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    in_range(i64::try_from(ms).unwrap_or(i64::MAX), text)
}

/// Reads a timestamp from a JSON document: an RFC 3339 string, or a number of Unix
/// milliseconds (fractions truncated).
///
/// # Errors
///
/// [`TimestampError`] saying what was expected.
pub fn from_json(value: &serde_json::Value) -> Result<Timestamp, TimestampError> {
    match value {
        serde_json::Value::String(s) => parse(s),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(ms), _) => in_range(ms, &n.to_string()),
            // a float: truncated to whole ms; out-of-range values are refused below
            (None, Some(f)) if f.is_finite() && f.abs() < 1e15 => in_range(f.trunc() as i64, &n.to_string()),
            _ => Err(TimestampError::OutOfRange(n.to_string())),
        },
        other => Err(TimestampError::WrongType(json_kind(other))),
    }
}

/// Writes `ts` as RFC 3339 in UTC, with milliseconds when they are not zero
/// (`2024-05-01T10:00:00Z`, `2024-05-01T10:00:00.25Z`).
pub fn to_rfc3339(ts: Timestamp) -> String {
    let clamped = ts.0.clamp(MIN.0, MAX.0);
    debug_assert_eq!(clamped, ts.0, "timestamps are range-checked where they enter");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(clamped) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| clamped.to_string())
}

fn in_range(ms: i64, text: &str) -> Result<Timestamp, TimestampError> {
    if (MIN.0..=MAX.0).contains(&ms) {
        Ok(Timestamp(ms))
    } else {
        Err(TimestampError::OutOfRange(text.to_owned()))
    }
}

/// The JSON type of `value`, for messages.
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_rfc3339_with_offsets_and_fractions() {
        assert_eq!(parse("1970-01-01T00:00:01Z"), Ok(Timestamp(1000)));
        assert_eq!(parse("1970-01-01T02:00:01.250+02:00"), Ok(Timestamp(1250)));
        assert_eq!(parse("2024-05-01T12:00:00.123456789Z"), Ok(Timestamp(1_714_564_800_123)));
    }

    #[test]
    fn parses_unix_milliseconds() {
        assert_eq!(parse("1714564800123"), Ok(Timestamp(1_714_564_800_123)));
        assert_eq!(parse("-1000"), Ok(Timestamp(-1000)));
        assert_eq!(from_json(&json!(1_714_564_800_123_i64)), Ok(Timestamp(1_714_564_800_123)));
        assert_eq!(from_json(&json!(1_714_564_800_123.9)), Ok(Timestamp(1_714_564_800_123)));
        assert_eq!(from_json(&json!("2024-05-01T12:00:00Z")), Ok(Timestamp(1_714_564_800_000)));
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        assert!(matches!(parse("yesterday"), Err(TimestampError::Unparsable(_))));
        assert!(matches!(parse("2024-05-01 12:00"), Err(TimestampError::Unparsable(_))));
        assert!(matches!(parse("99999999999999999"), Err(TimestampError::OutOfRange(_))));
        assert_eq!(from_json(&json!(true)), Err(TimestampError::WrongType("boolean")));
        assert!(matches!(from_json(&json!(1e300)), Err(TimestampError::OutOfRange(_))));
    }

    #[test]
    fn writes_rfc3339_utc_and_round_trips() {
        assert_eq!(to_rfc3339(Timestamp(0)), "1970-01-01T00:00:00Z");
        assert_eq!(to_rfc3339(Timestamp(1_714_564_800_250)), "2024-05-01T12:00:00.25Z");
        for ms in [MIN.0, -1, 0, 1, 1_714_564_800_123, MAX.0] {
            assert_eq!(parse(&to_rfc3339(Timestamp(ms))), Ok(Timestamp(ms)), "{ms}");
        }
    }
}

/// Where a record's arrival time comes from: the time its points get when the message
/// carries no timestamp of its own.
pub trait Arrival {
    /// The arrival time of the next record of `device`.
    fn stamp(&self, device: &DeviceId) -> Timestamp;
}

/// A fixed arrival time (tests, replays).
impl Arrival for Timestamp {
    fn stamp(&self, _device: &DeviceId) -> Timestamp {
        *self
    }
}

/// Arrival times that never repeat for one device: the current millisecond, or one after
/// the device's previous arrival if that is not earlier. A point is stored once per
/// `(device, metric, ts)`, so two untimestamped messages of one device in the same
/// millisecond would otherwise collide and the second one's points would be lost after
/// it was acknowledged. A device sending more than 1000 untimestamped messages a second
/// sees its arrival times run ahead of the clock until the burst ends.
#[derive(Debug, Default)]
pub struct ArrivalClock {
    last: Mutex<HashMap<DeviceId, i64>>,
}

/// Devices remembered before entries at or before the current millisecond are forgotten.
const ARRIVAL_DEVICES: usize = 100_000;

impl Arrival for ArrivalClock {
    fn stamp(&self, device: &DeviceId) -> Timestamp {
        let now = now().0;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() >= ARRIVAL_DEVICES {
            // an entry at or before now can no longer push a stamp forward
            last.retain(|_, t| *t > now);
        }
        let t = match last.get(device) {
            Some(&prev) if prev >= now => prev + 1,
            _ => now,
        };
        last.insert(device.clone(), t);
        Timestamp(t)
    }
}

#[cfg(test)]
mod arrival_tests {
    use super::*;

    #[test]
    fn arrival_times_of_one_device_never_repeat_and_devices_are_independent() {
        let clock = ArrivalClock::default();
        let (a, b) = (DeviceId::new("a").unwrap(), DeviceId::new("b").unwrap());
        let stamps: Vec<i64> = (0..5000).map(|_| clock.stamp(&a).0).collect();
        assert!(stamps.windows(2).all(|w| w[1] > w[0]), "strictly increasing for one device");
        let first_b = clock.stamp(&b).0;
        assert!(first_b <= stamps[4999], "another device is not pushed forward by a's burst");
    }
}
