//! What telehub keeps, behind one trait family with two backends (SQLite, the embedded
//! default, and PostgreSQL) and one conformance suite both must pass.
//!
//! # Layout
//!
//! * this file: the vocabulary ([`Record`], [`Point`], queries and their answers) and
//!   [`TelemetryStore`], the trait the hub and the API use.

use std::future::Future;
use std::time::Duration;

use telehub_core::DeviceId;

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
    /// Points committed.
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
/// the epoch. `resolution: None` lets the store pick the coarsest rollup whose period
/// divides `step` (so a 30-day query at 1 h steps reads the hourly rollup).
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

/// How much telemetry to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Delete raw points older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest raw points until the telemetry takes at most this many bytes.
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
    fn aggregate(&self, query: AggregateQuery) -> impl Future<Output = Result<Aggregated, StoreError>> + Send;

    /// Deletes raw points beyond `policy` as of `now`.
    fn enforce_retention(
        &self,
        policy: RetentionPolicy,
        now: Timestamp,
    ) -> impl Future<Output = Result<RetentionReport, StoreError>> + Send;
}
