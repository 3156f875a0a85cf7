//! What telehub keeps, behind one trait family with two backends (SQLite, the embedded
//! default, and PostgreSQL) and one conformance suite both must pass.
//!
//! # Layout
//!
//! * this file: the vocabulary ([`Record`], [`Point`], queries and their answers),
//!   [`TelemetryStore`], the trait the hub and the API use, and [`Store`], the backend
//!   chosen by [`Config`];
//! * [`registry`]: [`RegistryStore`], the device registry (devices, credentials, ACL
//!   rules, admin tokens, as JSON documents) and the audit log, with its vocabulary;
//!   [`Store`] implements it too;
//! * [`commands`]: [`CommandStore`], commands to devices (modes, states, the per-device
//!   sequence and queue limit, latest-wins superseding, expiry);
//! * [`shadow`]: [`ShadowStore`], each device's desired and reported state under one
//!   version (compare-and-set);
//! * [`outbox`]: [`OutboxStore`], the durable outbox of webhook deliveries (retries, the
//!   dead-letter list, replay); [`Store`] implements these three too;
//! * [`sessions`]: [`SessionStore`], the MQTT broker's durable state (retained
//!   messages, persistent sessions, their deliveries, QoS 2 packet ids); [`Store`] too;
//! * [`config`]: the `[store]` section;
//! * `queue`: the bound on points waiting for a writer (backpressure);
//! * [`sqlite`]: the embedded backend (one writer thread, WAL, reader pool);
//! * [`postgres`]: the scale-out backend (pool, writer task, day partitions);
//! * `bucket`, `page`: what both backends share: rollup
//!   folding, the aggregate plan, cursor paging;
//! * `migration`: the embedded SQL migrations of each backend;
//! * `conformance` (tests only): the one suite both backends pass.
//!
//! # Durability
//!
//! A [`TelemetryStore::write`] resolves `Ok` only after its transaction committed:
//! SQLite with `synchronous=FULL` in WAL mode (fsynced, survives `kill -9` and power
//! loss), PostgreSQL with its own commit (durable with the server's default
//! `synchronous_commit=on`). Many callers' writes share one transaction and one fsync
//! (group commit).

mod bucket;
pub mod commands;
pub mod config;
mod migration;
pub mod outbox;
mod page;
pub mod postgres;
mod queue;
pub mod registry;
pub mod sessions;
pub mod shadow;
pub mod sqlite;

#[cfg(test)]
mod conformance;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use telehub_core::DeviceId;

pub use commands::CommandStore;
pub use config::{Config, RetentionConfig};
pub use outbox::OutboxStore;
pub use postgres::PgStore;
pub use registry::RegistryStore;
pub use sessions::SessionStore;
pub use shadow::ShadowStore;
pub use sqlite::SqliteStore;

/// Milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

/// A metric name: a field of a device's telemetry document (`temperature`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Metric(pub String);

/// One numeric value of one metric at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Which metric.
    pub metric: Metric,
    /// When it was measured (device time if the device sent one, else arrival time).
    pub ts: Timestamp,
    /// The value (booleans are stored as 0/1).
    pub value: f64,
}

/// One accepted telemetry message, as the hub hands it to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The device it came from.
    pub device: DeviceId,
    /// Optional message id; `(device, msg_id)` is stored once ([`WriteSummary::duplicates`]).
    pub msg_id: Option<String>,
    /// When telehub received it.
    pub received_at: Timestamp,
    /// Its numeric fields.
    pub points: Vec<Point>,
    /// The whole JSON document, kept as the device's latest reported state when it is
    /// newer than the stored one.
    pub document: Option<serde_json::Value>,
}

/// What a [`TelemetryStore::write`] committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Records committed.
    pub records: usize,
    /// Records skipped because their `(device, msg_id)` was already stored.
    pub duplicates: usize,
    /// Points committed. A point whose `(device, metric, ts)` is already stored keeps
    /// the stored value and is not counted (so a replay without message ids is
    /// idempotent too); a value that is not finite (NaN, ±inf) is skipped.
    pub points: usize,
}

/// A device as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSummary {
    /// Its id.
    pub id: DeviceId,
    /// Arrival time of its first record.
    pub first_seen: Timestamp,
    /// Arrival time of its latest record.
    pub last_seen: Timestamp,
    /// Every metric it has sent, sorted.
    pub metrics: Vec<Metric>,
}

/// The latest value of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestValue {
    /// Which metric.
    pub metric: Metric,
    /// Its timestamp (the greatest seen, not the last to arrive).
    pub ts: Timestamp,
    /// Its value.
    pub value: f64,
}

/// A device's latest state.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    /// The latest value of each metric, sorted by metric.
    pub values: Vec<LatestValue>,
    /// The latest document and when it arrived.
    pub document: Option<(Timestamp, serde_json::Value)>,
}

/// Where a page of raw points ends; pass it back as [`PointsQuery::after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Timestamp of the last point returned.
    pub ts: Timestamp,
    /// Metric of the last point returned.
    pub metric: Metric,
}

/// Raw points of some metrics of one device in `[from, to)`, ordered by `(ts, metric)`.
#[derive(Debug, Clone, PartialEq)]
pub struct PointsQuery {
    /// The device.
    pub device: DeviceId,
    /// The metrics (at least one).
    pub metrics: Vec<Metric>,
    /// Inclusive start.
    pub from: Timestamp,
    /// Exclusive end.
    pub to: Timestamp,
    /// Page size.
    pub limit: usize,
    /// Continue after this point.
    pub after: Option<Cursor>,
}

/// One raw point of a [`PointsQuery`] answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRow {
    /// Which metric.
    pub metric: Metric,
    /// When.
    pub ts: Timestamp,
    /// Value.
    pub value: f64,
}

/// An aggregate function over a time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agg {
    /// Arithmetic mean.
    Mean,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Sum.
    Sum,
    /// Number of points.
    Count,
    /// Value with the greatest timestamp.
    Last,
}

/// The data an aggregate was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Raw points.
    Raw,
    /// The 1-minute rollup.
    Minute,
    /// The 1-hour rollup.
    Hour,
}

/// Time buckets of `step` over `[from, to)`; buckets start at multiples of `step` since
/// the epoch.
///
/// # Resolution
///
/// `resolution: None` lets the store pick the coarsest rollup whose period divides
/// `step`: a multiple of 1 h reads the hourly rollup (so a 30-day query at 1 h steps
/// reads 720 rows per metric), another multiple of 1 min the minute rollup, anything
/// else (e.g. 90 s) raw points. With rollups turned off in [`Config`] it is always raw.
/// The rollup covers the whole periods inside `[from, to)`; the unaligned edges (less
/// than one period each) are read from raw points, so the answer is exact for any
/// `from` and `to`. A forced resolution whose period does not divide `step` puts each
/// rollup row in the bucket of its start.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateQuery {
    /// The device.
    pub device: DeviceId,
    /// The metrics (at least one).
    pub metrics: Vec<Metric>,
    /// Inclusive start.
    pub from: Timestamp,
    /// Exclusive end.
    pub to: Timestamp,
    /// Bucket width (at least 1 s).
    pub step: Duration,
    /// Force a resolution, or `None` for automatic.
    pub resolution: Option<Resolution>,
}

/// One bucket of one metric, with everything every [`Agg`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Which metric.
    pub metric: Metric,
    /// Bucket start.
    pub start: Timestamp,
    /// Number of points.
    pub count: u64,
    /// Sum of values.
    pub sum: f64,
    /// Minimum value.
    pub min: f64,
    /// Maximum value.
    pub max: f64,
    /// Value of the point with the greatest timestamp.
    pub last: f64,
}

impl Bucket {
    /// The value of `agg` for this bucket.
    pub fn get(&self, agg: Agg) -> f64 {
        match agg {
            Agg::Mean => self.sum / self.count as f64,
            Agg::Min => self.min,
            Agg::Max => self.max,
            Agg::Sum => self.sum,
            Agg::Count => self.count as f64,
            Agg::Last => self.last,
        }
    }
}

/// The answer to an [`AggregateQuery`]: non-empty buckets ordered by `(metric, start)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregated {
    /// What the buckets were computed from.
    pub resolution: Resolution,
    /// The buckets.
    pub buckets: Vec<Bucket>,
}

/// How much telemetry to keep. Only raw points (and, with `max_age`, the message ids
/// that dedupe them) are deleted; rollups are kept, so long-range aggregates still work
/// after the raw points are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Delete raw points older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest raw points until the telemetry takes at most this many bytes
    /// (as [`Store::telemetry_bytes`] measures it: SQLite deletes to the point,
    /// PostgreSQL drops whole days, oldest first, but never the newest day).
    pub max_bytes: Option<u64>,
}

/// What [`TelemetryStore::enforce_retention`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Raw points deleted.
    pub points_deleted: u64,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, reached or migrated.
    #[error("cannot open the store: {0}")]
    Open(String),
    /// A query or write failed.
    #[error("store operation failed: {0}")]
    Backend(String),
    /// The store is shutting down or its writer has stopped.
    #[error("the store is closed")]
    Closed,
}

/// Telemetry and latest state, per device.
///
/// Every method is safe to call from many tasks at once. Writes are durable when their
/// future resolves `Ok` (committed: a crash right after loses nothing).
pub trait TelemetryStore: Send + Sync + 'static {
    /// Commits `records` (group commit: many callers' records share one transaction).
    /// Out-of-order and late points are accepted; rollups are updated in the same
    /// transaction. A record whose `(device, msg_id)` is already stored is skipped.
    fn write(&self, records: Vec<Record>) -> impl Future<Output = Result<WriteSummary, StoreError>> + Send;

    /// Every device that has sent a record.
    fn devices(&self) -> impl Future<Output = Result<Vec<DeviceSummary>, StoreError>> + Send;

    /// A device's latest values and document, `None` for an unknown device.
    fn latest(&self, device: &DeviceId) -> impl Future<Output = Result<Option<Latest>, StoreError>> + Send;

    /// A page of raw points.
    fn points(&self, query: PointsQuery) -> impl Future<Output = Result<Vec<PointRow>, StoreError>> + Send;

    /// Time-bucketed aggregates.
    fn aggregate(&self, query: AggregateQuery)
    -> impl Future<Output = Result<Aggregated, StoreError>> + Send;

    /// Deletes raw points beyond `policy` as of `now`.
    fn enforce_retention(
        &self,
        policy: RetentionPolicy,
        now: Timestamp,
    ) -> impl Future<Output = Result<RetentionReport, StoreError>> + Send;
}

/// The backend [`Config`] chose. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub enum Store {
    /// The embedded default: `telehub.db` in the data directory.
    Sqlite(SqliteStore),
    /// `url = "postgres://…"`.
    Postgres(PgStore),
}

impl Store {
    /// Opens the store `config` names (SQLite `telehub.db` in `data_dir`, created with
    /// the directory if missing, or PostgreSQL at `config.url`), runs its migrations and
    /// starts its writer.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] naming the file or server and what went wrong.
    pub async fn open(config: &Config, data_dir: &Path) -> Result<Store, StoreError> {
        match &config.url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Store::Postgres(PgStore::open(config, url).await?))
            }
            Some(url) => Err(StoreError::Open(format!(
                "unsupported store url {:?}: expected postgres://… (or no url for SQLite)",
                redact(url)
            ))),
            None => {
                let (config, dir) = (config.clone(), data_dir.to_owned());
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| StoreError::Open(format!("cannot create {}: {e}", dir.display())))?;
                    SqliteStore::open(&config, &dir.join("telehub.db")).map(Store::Sqlite)
                })
                .await
                .map_err(|e| StoreError::Open(format!("open task failed: {e}")))?
            }
        }
    }

    /// Stops taking writes and commits everything already queued (SQLite also
    /// checkpoints its WAL). Later writes fail with [`StoreError::Closed`]. Call it once,
    /// at the end of shutdown, after the writers (ingest) have stopped.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }

    /// Bytes the raw points take on disk, the measure of [`RetentionPolicy::max_bytes`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the query fails.
    pub async fn telemetry_bytes(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.telemetry_bytes().await,
            Store::Postgres(s) => s.telemetry_bytes().await,
        }
    }

    /// Which backend this is, for logs: `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}

impl TelemetryStore for Store {
    async fn write(&self, records: Vec<Record>) -> Result<WriteSummary, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(records).await,
            Store::Postgres(s) => s.write(records).await,
        }
    }

    async fn devices(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        match self {
            Store::Sqlite(s) => s.devices().await,
            Store::Postgres(s) => s.devices().await,
        }
    }

    async fn latest(&self, device: &DeviceId) -> Result<Option<Latest>, StoreError> {
        match self {
            Store::Sqlite(s) => s.latest(device).await,
            Store::Postgres(s) => s.latest(device).await,
        }
    }

    async fn points(&self, query: PointsQuery) -> Result<Vec<PointRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.points(query).await,
            Store::Postgres(s) => s.points(query).await,
        }
    }

    async fn aggregate(&self, query: AggregateQuery) -> Result<Aggregated, StoreError> {
        match self {
            Store::Sqlite(s) => s.aggregate(query).await,
            Store::Postgres(s) => s.aggregate(query).await,
        }
    }

    async fn enforce_retention(
        &self,
        policy: RetentionPolicy,
        now: Timestamp,
    ) -> Result<RetentionReport, StoreError> {
        match self {
            Store::Sqlite(s) => s.enforce_retention(policy, now).await,
            Store::Postgres(s) => s.enforce_retention(policy, now).await,
        }
    }
}

impl RegistryStore for Store {
    async fn registry_load(&self) -> Result<Vec<registry::Entry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.registry_load().await,
            Store::Postgres(s) => s.registry_load().await,
        }
    }

    async fn registry_apply(&self, changes: Vec<registry::Change>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.registry_apply(changes).await,
            Store::Postgres(s) => s.registry_apply(changes).await,
        }
    }

    async fn audit_append(&self, events: Vec<registry::AuditEvent>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.audit_append(events).await,
            Store::Postgres(s) => s.audit_append(events).await,
        }
    }

    async fn audit_query(&self, query: registry::AuditQuery) -> Result<Vec<registry::AuditRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.audit_query(query).await,
            Store::Postgres(s) => s.audit_query(query).await,
        }
    }

    async fn audit_prune(&self, before: Timestamp) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.audit_prune(before).await,
            Store::Postgres(s) => s.audit_prune(before).await,
        }
    }
}

/// Forwards each listed method of a trait to the backend of a [`Store`].
macro_rules! dispatch {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {
        $(
            async fn $name(&self, $($arg: $ty),*) -> Result<$out, StoreError> {
                match self {
                    Store::Sqlite(s) => s.$name($($arg),*).await,
                    Store::Postgres(s) => s.$name($($arg),*).await,
                }
            }
        )*
    };
}

impl CommandStore for Store {
    dispatch! {
        command_insert(cmd: commands::NewCommand, max_queued_per_device: usize) -> commands::Inserted;
        command_get(id: &str) -> Option<commands::Command>;
        command_list(query: commands::CommandQuery) -> Vec<commands::Command>;
        command_pending(device: &DeviceId, limit: usize) -> Vec<commands::Command>;
        command_transition(
            id: &str,
            from: &[commands::CommandState],
            to: commands::CommandState,
            result: Option<serde_json::Value>,
            reason: Option<String>,
            at: Timestamp
        ) -> Option<commands::Command>;
        command_expire(now: Timestamp) -> Vec<commands::Command>;
        command_prune(before: Timestamp) -> u64;
    }
}

impl ShadowStore for Store {
    dispatch! {
        shadow_get(device: &DeviceId) -> Option<shadow::Shadow>;
        shadow_set_desired(
            device: &DeviceId,
            desired: serde_json::Value,
            expected_version: Option<i64>,
            at: Timestamp
        ) -> Result<shadow::Shadow, shadow::ShadowConflict>;
        shadow_set_reported(device: &DeviceId, reported: serde_json::Value, at: Timestamp) -> shadow::Shadow;
        shadow_delete(device: &DeviceId) -> bool;
    }
}

impl OutboxStore for Store {
    dispatch! {
        outbox_enqueue(deliveries: Vec<outbox::Delivery>) -> u64;
        outbox_due(now: Timestamp, limit: usize, lease: Duration) -> Vec<outbox::OutboxEntry>;
        outbox_succeeded(id: &str, at: Timestamp) -> bool;
        outbox_retry(id: &str, next_attempt_at: Timestamp, last_error: String) -> bool;
        outbox_dead(id: &str, at: Timestamp, last_error: String) -> bool;
        outbox_list(query: outbox::OutboxQuery) -> Vec<outbox::OutboxEntry>;
        outbox_replay(endpoint: &str, which: outbox::Replay, now: Timestamp) -> u64;
        outbox_prune_delivered(before: Timestamp) -> u64;
    }
}

impl SessionStore for Store {
    dispatch! {
        session_load() -> sessions::SessionState;
        session_messages(after: Option<(String, i64)>, limit: usize) -> Vec<sessions::StoredMessage>;
        session_apply(changes: Vec<sessions::SessionChange>) -> ();
    }
}

/// `url` without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Now, in milliseconds since the epoch (for bookkeeping columns only).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How many of `live` points, taking `bytes` in all, must go to fit in `max` bytes
/// (rounded up; all of them when `max` is 0).
fn points_over(bytes: u64, live: u64, max: u64) -> u64 {
    if bytes <= max || bytes == 0 {
        return 0;
    }
    let over = u128::from(bytes - max) * u128::from(live);
    let need = over.div_ceil(u128::from(bytes));
    u64::try_from(need).unwrap_or(u64::MAX).min(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_over_rounds_up_and_is_bounded() {
        assert_eq!(points_over(100, 10, 100), 0);
        assert_eq!(points_over(100, 10, 50), 5);
        assert_eq!(points_over(100, 10, 49), 6);
        assert_eq!(points_over(100, 10, 0), 10);
    }

    #[test]
    fn redact_hides_the_password() {
        assert_eq!(redact("mysql://u:secret@h/db"), "mysql://u:***@h/db");
        assert_eq!(redact("mysql://h/db"), "mysql://h/db");
    }
}
