//! [`Config`]: the `[store]` section: which database, how the writer batches, retention.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RetentionPolicy;

/// The `[store]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `postgres://user:password@host:port/db` selects PostgreSQL; absent selects the
    /// SQLite file `telehub.db` in the data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Most points one group commit takes from the queue (a single larger write is
    /// still committed whole).
    pub max_batch_points: usize,
    /// How long the writer waits for more writes before committing a batch that is not
    /// full. `0ms` commits as soon as the queue is empty; writes that arrive while a
    /// commit is running join the next one either way.
    #[serde(with = "telehub_core::duration")]
    pub max_commit_delay: Duration,
    /// Points queued for the writer at most. A write that finds the queue full waits
    /// for room (backpressure), it is never dropped.
    pub max_queued_points: usize,
    /// Connections: PostgreSQL pool size; SQLite read connections kept open.
    pub pool_size: usize,
    /// Maintain the 1-minute and 1-hour rollups on write. Turned off, aggregates read
    /// raw points (and rollups written before stay as they were).
    pub rollups: bool,
    /// How much telemetry to keep.
    pub retention: RetentionConfig,
}

/// The `[store.retention]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Delete raw points older than this (absent: keep forever).
    #[serde(with = "optional_duration", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Delete the oldest raw points while they take more bytes than this (absent: no
    /// limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// How often retention is enforced.
    #[serde(with = "telehub_core::duration")]
    pub interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: None,
            max_batch_points: 20_000,
            max_commit_delay: Duration::ZERO,
            max_queued_points: 200_000,
            pool_size: 4,
            rollups: true,
            retention: RetentionConfig::default(),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { max_age: None, max_bytes: None, interval: Duration::from_secs(600) }
    }
}

impl RetentionConfig {
    /// The policy to pass to [`crate::TelemetryStore::enforce_retention`].
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy { max_age: self.max_age, max_bytes: self.max_bytes }
    }
}

/// `Option<Duration>` in the `telehub_core::duration` format; absent means `None`.
mod optional_duration {
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        telehub_core::duration::deserialize(d).map(Some)
    }

    pub(super) fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => telehub_core::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_durations_parse_and_absent_means_none() {
        let c: RetentionConfig = serde_json::from_str(r#"{"max_age": "30d", "interval": "1m"}"#).unwrap();
        assert_eq!(c.max_age, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.max_bytes, None);
        assert_eq!(c.interval, Duration::from_secs(60));
        let c: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c, Config::default());
        assert!(serde_json::from_str::<Config>(r#"{"urll": "x"}"#).is_err());
    }
}
