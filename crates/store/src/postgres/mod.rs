//! [`PgStore`]: the PostgreSQL backend for several nodes sharing one database.
//! `deadpool-postgres` pool; one writer task per node group-commits the node's writes;
//! raw points are range-partitioned by day, with partitions created by the writer on
//! demand. Plain PostgreSQL 14+, no extensions, no TLS yet.
//!
//! # Layout
//!
//! * this file: opening, migrations, queries and retention;
//! * `writer`: the writer task and its group commit;
//! * `partition`: day partitions;
//! * `registry`: [`RegistryStore`](crate::RegistryStore), the registry and the audit log;
//! * `commands`: [`CommandStore`](crate::CommandStore), [`ShadowStore`](crate::ShadowStore)
//!   and [`OutboxStore`](crate::OutboxStore): commands, device shadows, the webhook outbox.

mod commands;
mod partition;
mod registry;
mod sessions;
mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use telehub_core::DeviceId;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;
use tokio_util::task::TaskTracker;

use crate::bucket::{self, Folder, Partial};
use crate::queue::{self, Admission};
use crate::{
    AggregateQuery, Aggregated, Config, DeviceSummary, Latest, LatestValue, Metric, PointRow, PointsQuery,
    Record, Resolution, RetentionPolicy, RetentionReport, StoreError, Timestamp, WriteSummary,
};

use self::writer::Job;

/// Key of the advisory lock that serializes migrations between nodes ("telehub").
const MIGRATION_LOCK: i64 = 0x0074_656c_6568_7562;

/// The PostgreSQL backend. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    jobs: mpsc::Sender<Job>,
    admission: Admission,
    tasks: TaskTracker,
    rollups: bool,
}

/// `tokio_postgres` errors as store errors, with the server's message (the error's
/// `Display` alone says only "db error").
#[expect(clippy::needless_pass_by_value, reason = "the shape `map_err` wants")]
fn backend(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(describe(&e))
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl PgStore {
    /// Connects to `url`, migrates the database and starts the writer task.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when the URL is invalid or the database cannot be reached or
    /// migrated.
    pub async fn open(config: &Config, url: &str) -> Result<Self, StoreError> {
        let pg: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Open(format!("invalid postgres url: {e}")))?;
        let manager =
            Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Open(format!("postgres pool: {e}")))?;
        let mut client =
            pool.get().await.map_err(|e| StoreError::Open(format!("cannot connect to postgres: {e}")))?;
        migrate(&mut client)
            .await
            .map_err(|e| StoreError::Open(format!("postgres migration failed: {e}")))?;
        drop(client);

        // bounded: every queued write holds at least one admission permit
        let (jobs, rx) = mpsc::channel(config.max_queued_points.max(1) + 16);
        let tasks = TaskTracker::new();
        tasks.spawn(writer::Writer::new(pool.clone(), config).run(rx));
        tasks.close();
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                jobs,
                admission: Admission::new(config.max_queued_points),
                tasks,
                rollups: config.rollups,
            }),
        })
    }

    /// Stops taking writes, commits everything already queued and stops the writer task.
    /// Later writes fail with [`StoreError::Closed`]; queries keep working.
    pub async fn close(&self) {
        self.inner.admission.close();
        let (tx, rx) = oneshot::channel();
        if self.inner.jobs.send(Job::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.inner.tasks.wait().await;
    }

    /// Bytes the raw-point partitions take on disk (tables and indexes), the measure
    /// `max_bytes` retention compares.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the query fails.
    pub async fn telemetry_bytes(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::int8 FROM pg_inherits \
                 WHERE inhparent = 'points'::regclass",
                &[],
            )
            .await
            .map_err(backend)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.inner.pool.get().await.map_err(|e| StoreError::Backend(format!("postgres pool: {e}")))
    }

    pub(crate) async fn write(&self, records: Vec<Record>) -> Result<WriteSummary, StoreError> {
        if records.is_empty() {
            return Ok(WriteSummary::default());
        }
        let permit = self.inner.admission.admit(queue::point_count(&records)).await?;
        let (reply, rx) = oneshot::channel();
        self.inner.jobs.send(Job::Write { records, reply, permit }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub(crate) async fn devices(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        let client = self.client().await?;
        let mut metrics: BTreeMap<String, Vec<Metric>> = BTreeMap::new();
        for row in
            client.query("SELECT device::text, metric::text FROM series", &[]).await.map_err(backend)?
        {
            metrics.entry(row.get(0)).or_default().push(Metric(row.get(1)));
        }
        let rows = client
            .query("SELECT device::text, first_seen, last_seen FROM devices", &[])
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.get(0);
            let mut m = metrics.remove(&id).unwrap_or_default();
            m.sort();
            out.push(DeviceSummary {
                id: device_id(id)?,
                first_seen: Timestamp(row.get(1)),
                last_seen: Timestamp(row.get(2)),
                metrics: m,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub(crate) async fn latest(&self, device: &DeviceId) -> Result<Option<Latest>, StoreError> {
        let client = self.client().await?;
        let Some(doc) = client
            .query_opt("SELECT document, document_at FROM devices WHERE device = $1", &[&device.as_str()])
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let rows = client
            .query(
                "SELECT metric::text, latest_ts, latest_value FROM series WHERE device = $1 AND latest_ts > $2",
                &[&device.as_str(), &i64::MIN],
            )
            .await
            .map_err(backend)?;
        let mut values: Vec<LatestValue> = rows
            .iter()
            .map(|r| LatestValue { metric: Metric(r.get(0)), ts: Timestamp(r.get(1)), value: r.get(2) })
            .collect();
        values.sort_by(|a, b| a.metric.cmp(&b.metric));
        let document = match (doc.get::<_, Option<serde_json::Value>>(0), doc.get::<_, Option<i64>>(1)) {
            (Some(v), Some(at)) => Some((Timestamp(at), v)),
            _ => None,
        };
        Ok(Some(Latest { values, document }))
    }

    pub(crate) async fn points(&self, query: PointsQuery) -> Result<Vec<PointRow>, StoreError> {
        if query.limit == 0 || query.from >= query.to {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let series = series_ids(&client, &query.device, &query.metrics).await?;
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let stmt = client
            .prepare_cached(
                "SELECT ts, value FROM points WHERE series_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4",
            )
            .await
            .map_err(backend)?;
        let mut rows = Vec::new();
        for (id, metric) in series {
            let from = crate::page::start(&query, &metric);
            for r in client.query(&stmt, &[&id, &from, &query.to.0, &limit]).await.map_err(backend)? {
                rows.push(PointRow { metric: metric.clone(), ts: Timestamp(r.get(0)), value: r.get(1) });
            }
        }
        Ok(crate::page::merge(rows, query.limit))
    }

    pub(crate) async fn aggregate(&self, query: AggregateQuery) -> Result<Aggregated, StoreError> {
        let plan = bucket::plan(&query, self.inner.rollups)?;
        if query.from >= query.to {
            return Ok(Aggregated { resolution: plan.resolution, buckets: Vec::new() });
        }
        let client = self.client().await?;
        let series = series_ids(&client, &query.device, &query.metrics).await?;
        let mut folder = Folder::new(plan.step_ms);
        for (id, metric) in &series {
            for seg in &plan.segments {
                // raw points are bucketed by the server; rollup rows are few and come as
                // they are
                let sql = match seg.source {
                    Resolution::Raw => {
                        "SELECT ts - ((ts % $4) + $4) % $4 AS start, count(*)::int8, sum(value), min(value), \
                                max(value), (array_agg(value ORDER BY ts DESC))[1], max(ts) \
                         FROM points WHERE series_id = $1 AND ts >= $2 AND ts < $3 GROUP BY start ORDER BY start"
                    }
                    Resolution::Minute => {
                        "SELECT bucket, n, total, lo, hi, last_value, last_ts FROM rollup_1m \
                         WHERE series_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket"
                    }
                    Resolution::Hour => {
                        "SELECT bucket, n, total, lo, hi, last_value, last_ts FROM rollup_1h \
                         WHERE series_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket"
                    }
                };
                let stmt = client.prepare_cached(sql).await.map_err(backend)?;
                let raw: [&(dyn ToSql + Sync); 4] = [id, &seg.from, &seg.to, &plan.step_ms];
                let params = if seg.source == Resolution::Raw { &raw[..] } else { &raw[..3] };
                let rows = client.query(&stmt, params).await.map_err(backend)?;
                let mut fold = folder.series(&metric.0);
                for r in rows {
                    let partial = Partial {
                        count: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                        sum: r.get(2),
                        min: r.get(3),
                        max: r.get(4),
                        last: r.get(5),
                        last_ts: r.get(6),
                    };
                    fold.add(r.get(0), &partial);
                }
                fold.finish();
            }
        }
        Ok(Aggregated { resolution: plan.resolution, buckets: folder.finish() })
    }

    /// Age: drops the day partitions wholly older than the cutoff and deletes from the
    /// one that straddles it. Size: drops whole days, oldest first, while the partitions
    /// take more than `max_bytes`, but never the newest day (a `DELETE` would not give
    /// the disk back, so a single day is the grain). Rollups are kept.
    pub(crate) async fn enforce_retention(
        &self,
        policy: RetentionPolicy,
        now: Timestamp,
    ) -> Result<RetentionReport, StoreError> {
        let client = self.client().await?;
        let mut report = RetentionReport::default();
        if let Some(age) = policy.max_age {
            let cutoff = now.0.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            for day in partition::list(&client).await.map_err(backend)? {
                if (day + 1) * partition::DAY_MS <= cutoff {
                    report.points_deleted += drop_partition(&client, day).await?;
                }
            }
            let deleted =
                client.execute("DELETE FROM points WHERE ts < $1", &[&cutoff]).await.map_err(backend)?;
            report.points_deleted += deleted;
            client
                .execute("DELETE FROM messages WHERE received_at < $1", &[&cutoff])
                .await
                .map_err(backend)?;
        }
        if let Some(max) = policy.max_bytes {
            let days = partition::list(&client).await.map_err(backend)?;
            let mut sizes = Vec::with_capacity(days.len());
            for day in &days {
                let row = client
                    .query_one("SELECT pg_total_relation_size($1::text::regclass)", &[&partition::name(*day)])
                    .await
                    .map_err(backend)?;
                sizes.push(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0));
            }
            let mut total: u64 = sizes.iter().sum();
            let keep_newest = days.len().saturating_sub(1);
            for (day, size) in days.iter().zip(&sizes).take(keep_newest) {
                if total <= max {
                    break;
                }
                report.points_deleted += drop_partition(&client, *day).await?;
                total -= size;
            }
        }
        Ok(report)
    }
}

/// Counts and drops one day partition; the number of points it held.
async fn drop_partition(client: &deadpool_postgres::Client, day: i64) -> Result<u64, StoreError> {
    let name = partition::name(day);
    let row =
        client.query_one(&format!("SELECT count(*)::int8 FROM \"{name}\""), &[]).await.map_err(backend)?;
    client.batch_execute(&format!("DROP TABLE IF EXISTS \"{name}\"")).await.map_err(backend)?;
    tracing::info!(partition = %name, "dropped telemetry partition");
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Applies the migrations the database has not seen, each in its own transaction, under
/// an advisory lock so nodes starting together migrate once.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), String> {
    let e = |e: tokio_postgres::Error| describe(&e);
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(e)?;
    let result = async {
        client.batch_execute(crate::migration::CREATE_VERSION_TABLE).await.map_err(e)?;
        let current: i64 = client
            .query_one("SELECT coalesce(max(version), 0)::int8 FROM schema_version", &[])
            .await
            .map_err(e)?
            .get(0);
        for m in crate::migration::pending(crate::migration::POSTGRES, current)? {
            let tx = client.transaction().await.map_err(e)?;
            tx.batch_execute(m.sql)
                .await
                .map_err(|err| format!("{:04}_{}: {}", m.version, m.name, describe(&err)))?;
            tx.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                &[&m.version, &m.name, &crate::now_ms()],
            )
            .await
            .map_err(e)?;
            tx.commit().await.map_err(e)?;
            tracing::info!(version = m.version, name = m.name, "applied postgres migration");
        }
        Ok::<_, String>(())
    }
    .await;
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await.map_err(e)?;
    result
}

/// The series ids of `metrics` of `device` that exist, each metric once.
async fn series_ids(
    client: &deadpool_postgres::Client,
    device: &DeviceId,
    metrics: &[Metric],
) -> Result<Vec<(i64, Metric)>, StoreError> {
    let mut wanted: Vec<&str> = metrics.iter().map(|m| m.0.as_str()).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let stmt = client
        .prepare_cached("SELECT id, metric::text FROM series WHERE device = $1 AND metric = ANY($2::text[])")
        .await
        .map_err(backend)?;
    let rows = client.query(&stmt, &[&device.as_str(), &wanted]).await.map_err(backend)?;
    Ok(rows.iter().map(|r| (r.get(0), Metric(r.get(1)))).collect())
}

fn device_id(id: String) -> Result<DeviceId, StoreError> {
    DeviceId::new(id).map_err(|e| StoreError::Backend(format!("stored device id is invalid: {e}")))
}
