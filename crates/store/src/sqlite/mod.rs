//! [`SqliteStore`]: the embedded backend. One file in WAL mode; one writer thread owns
//! the only write connection and group-commits everything queued; queries run on a
//! small pool of read-only connections through `spawn_blocking`.
//!
//! # Durability
//!
//! `synchronous=FULL`: every commit fsyncs the WAL before the writer answers, so a
//! resolved write survives `kill -9` *and* a power loss. (`NORMAL` in WAL mode would
//! survive a process crash, since the WAL is already in the OS page cache, but could
//! lose the last commits on power loss; group commit makes the fsync cheap enough that
//! we keep the stronger promise.)
//!
//! # Layout
//!
//! * this file: opening, migrations, the reader pool and the queries;
//! * `writer`: the writer thread and its group commit;
//! * `retention`: deleting by age and by size;
//! * `registry`: [`RegistryStore`](crate::RegistryStore), the registry and the audit log;
//! * `commands`: [`CommandStore`](crate::CommandStore), [`ShadowStore`](crate::ShadowStore)
//!   and [`OutboxStore`](crate::OutboxStore): commands, device shadows, the webhook outbox.
//! * `sessions`: [`SessionStore`](crate::SessionStore), the MQTT broker's durable state.

mod commands;
mod registry;
mod retention;
mod sessions;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use telehub_core::DeviceId;
use tokio::sync::oneshot;

use crate::bucket::{self, Folder, Partial};
use crate::queue::{self, Admission};
use crate::{
    AggregateQuery, Aggregated, Config, DeviceSummary, Latest, LatestValue, Metric, PointRow, PointsQuery,
    Record, Resolution, RetentionPolicy, RetentionReport, StoreError, Timestamp, WriteSummary,
};

use self::writer::Job;

/// The SQLite backend. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    admission: Admission,
    readers: Mutex<Vec<Connection>>,
    pool_size: usize,
    rollups: bool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// `rusqlite` errors as store errors.
#[expect(clippy::needless_pass_by_value, reason = "the shape `map_err` wants")]
fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path`, migrates it and starts
    /// the writer thread. Blocking: call it from `spawn_blocking` or at startup.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when the file cannot be opened or migrated.
    pub fn open(config: &Config, path: &Path) -> Result<Self, StoreError> {
        let open_err = |e: rusqlite::Error| StoreError::Open(format!("{}: {e}", path.display()));
        let mut conn = Connection::open(path).map_err(open_err)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open(format!("{}: cannot switch to WAL mode ({mode})", path.display())));
        }
        // cache 64 MiB (allocated as used) and checkpoint every 64 MiB of WAL: a group
        // commit touches about one page per series per table, and checkpointing after
        // every large commit (the 4 MiB default) cost a third of per-message throughput
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000; PRAGMA cache_size=-65536; \
             PRAGMA temp_store=MEMORY; PRAGMA wal_autocheckpoint=16384;",
        )
        .map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&mut conn)
            .map_err(|e| StoreError::Open(format!("{}: migration failed: {e}", path.display())))?;

        let (jobs, rx) = mpsc::channel();
        let w = writer::Writer::new(conn, config);
        let thread = std::thread::Builder::new()
            .name("telehub-sqlite-writer".into())
            .spawn(move || w.run(&rx))
            .map_err(|e| StoreError::Open(format!("cannot start the SQLite writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                jobs,
                admission: Admission::new(config.max_queued_points),
                readers: Mutex::new(Vec::new()),
                pool_size: config.pool_size.max(1),
                rollups: config.rollups,
                writer: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Stops taking writes, commits everything already queued, checkpoints the WAL into
    /// the database file and stops the writer thread. Later writes fail with
    /// [`StoreError::Closed`]; queries keep working.
    pub async fn close(&self) {
        self.inner.admission.close();
        let (tx, rx) = oneshot::channel();
        if self.inner.jobs.send(Job::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let thread = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Bytes the raw points take on disk (pages in use minus those of every other table
    /// and index), the measure `max_bytes` retention compares.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the query fails.
    pub async fn telemetry_bytes(&self) -> Result<u64, StoreError> {
        self.read(|c| retention::measure(c).map(|m| m.bytes)).await
    }

    /// Runs `f` on the writer thread, after every write queued before it.
    async fn exec<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Exec(Box::new(move |conn: &mut Connection| {
            let _ = tx.send(f(conn).map_err(backend));
        }));
        self.inner.jobs.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read connection from the pool, on the blocking thread pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_reader(&inner.path).map_err(backend)?,
            };
            let result = f(&conn).map_err(backend);
            let mut pool = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < inner.pool_size {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("query task failed: {e}")))?
    }

    pub(crate) async fn write(&self, records: Vec<Record>) -> Result<WriteSummary, StoreError> {
        if records.is_empty() {
            return Ok(WriteSummary::default());
        }
        let permit = self.inner.admission.admit(queue::point_count(&records)).await?;
        let (reply, rx) = oneshot::channel();
        self.inner.jobs.send(Job::Write { records, reply, permit }).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub(crate) async fn devices(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        let rows = self
            .read(|c| {
                let mut metrics: BTreeMap<String, Vec<Metric>> = BTreeMap::new();
                let mut stmt = c.prepare_cached("SELECT device, metric FROM series")?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    metrics.entry(r.get(0)?).or_default().push(Metric(r.get(1)?));
                }
                let mut stmt = c.prepare_cached("SELECT device, first_seen, last_seen FROM devices")?;
                let devices = stmt
                    .query_map([], |r| {
                        let id: String = r.get(0)?;
                        let metrics = metrics.remove(&id).unwrap_or_default();
                        Ok((id, r.get(1)?, r.get(2)?, metrics))
                    })?
                    .collect::<rusqlite::Result<Vec<(String, i64, i64, Vec<Metric>)>>>()?;
                Ok(devices)
            })
            .await?;
        let mut out = rows
            .into_iter()
            .map(|(id, first, last, mut metrics)| {
                metrics.sort();
                Ok(DeviceSummary {
                    id: device_id(id)?,
                    first_seen: Timestamp(first),
                    last_seen: Timestamp(last),
                    metrics,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub(crate) async fn latest(&self, device: &DeviceId) -> Result<Option<Latest>, StoreError> {
        let device = device.as_str().to_owned();
        let found = self
            .read(move |c| {
                let doc: Option<(Option<String>, Option<i64>)> = c
                    .prepare_cached("SELECT document, document_at FROM devices WHERE device = ?1")?
                    .query_row([&device], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let Some(doc) = doc else { return Ok(None) };
                let mut stmt = c.prepare_cached(
                    "SELECT metric, latest_ts, latest_value FROM series WHERE device = ?1 AND latest_ts > ?2",
                )?;
                let values = stmt
                    .query_map(params![device, i64::MIN], |r| {
                        Ok(LatestValue {
                            metric: Metric(r.get(0)?),
                            ts: Timestamp(r.get(1)?),
                            value: r.get(2)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(Some((values, doc)))
            })
            .await?;
        let Some((mut values, doc)) = found else { return Ok(None) };
        values.sort_by(|a, b| a.metric.cmp(&b.metric));
        let document = match doc {
            (Some(text), Some(at)) => Some((Timestamp(at), parse_document(&text)?)),
            _ => None,
        };
        Ok(Some(Latest { values, document }))
    }

    pub(crate) async fn points(&self, query: PointsQuery) -> Result<Vec<PointRow>, StoreError> {
        if query.limit == 0 || query.from >= query.to {
            return Ok(Vec::new());
        }
        self.read(move |c| {
            let series = series_ids(c, &query.device, &query.metrics)?;
            let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
            let mut rows = Vec::new();
            let mut stmt = c.prepare_cached(
                "SELECT ts, value FROM points WHERE series_id = ?1 AND ts >= ?2 AND ts < ?3 \
                 ORDER BY ts LIMIT ?4",
            )?;
            for (id, metric) in series {
                let from = crate::page::start(&query, &metric);
                let mut r = stmt.query(params![id, from, query.to.0, limit])?;
                while let Some(r) = r.next()? {
                    rows.push(PointRow {
                        metric: metric.clone(),
                        ts: Timestamp(r.get(0)?),
                        value: r.get(1)?,
                    });
                }
            }
            Ok(crate::page::merge(rows, query.limit))
        })
        .await
    }

    pub(crate) async fn aggregate(&self, query: AggregateQuery) -> Result<Aggregated, StoreError> {
        let plan = bucket::plan(&query, self.inner.rollups)?;
        if query.from >= query.to {
            return Ok(Aggregated { resolution: plan.resolution, buckets: Vec::new() });
        }
        self.read(move |c| {
            let series = series_ids(c, &query.device, &query.metrics)?;
            let mut folder = Folder::new(plan.step_ms);
            for (id, metric) in &series {
                for seg in &plan.segments {
                    let sql = match seg.source {
                        Resolution::Raw => {
                            "SELECT ts, value FROM points WHERE series_id = ?1 AND ts >= ?2 AND ts < ?3"
                        }
                        Resolution::Minute => {
                            "SELECT bucket, n, total, lo, hi, last_value, last_ts FROM rollup_1m \
                             WHERE series_id = ?1 AND bucket >= ?2 AND bucket < ?3"
                        }
                        Resolution::Hour => {
                            "SELECT bucket, n, total, lo, hi, last_value, last_ts FROM rollup_1h \
                             WHERE series_id = ?1 AND bucket >= ?2 AND bucket < ?3"
                        }
                    };
                    let mut stmt = c.prepare_cached(sql)?;
                    let mut rows = stmt.query(params![id, seg.from, seg.to])?;
                    let mut fold = folder.series(&metric.0);
                    while let Some(r) = rows.next()? {
                        let ts: i64 = r.get(0)?;
                        let partial = if seg.source == Resolution::Raw {
                            Partial::point(ts, r.get(1)?)
                        } else {
                            Partial {
                                count: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
                                sum: r.get(2)?,
                                min: r.get(3)?,
                                max: r.get(4)?,
                                last: r.get(5)?,
                                last_ts: r.get(6)?,
                            }
                        };
                        fold.add(ts, &partial);
                    }
                    fold.finish();
                }
            }
            Ok(Aggregated { resolution: plan.resolution, buckets: folder.finish() })
        })
        .await
    }

    pub(crate) async fn enforce_retention(
        &self,
        policy: RetentionPolicy,
        now: Timestamp,
    ) -> Result<RetentionReport, StoreError> {
        retention::enforce(self, policy, now).await
    }
}

/// Applies the migrations the database has not seen, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let e = |e: rusqlite::Error| e.to_string();
    conn.execute_batch(crate::migration::CREATE_VERSION_TABLE).map_err(e)?;
    let current: i64 = conn
        .query_row("SELECT coalesce(max(version), 0) FROM schema_version", [], |r| r.get(0))
        .map_err(e)?;
    for m in crate::migration::pending(crate::migration::SQLITE, current)? {
        let tx = conn.transaction().map_err(e)?;
        tx.execute_batch(m.sql).map_err(|err| format!("{:04}_{}: {err}", m.version, m.name))?;
        tx.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, crate::now_ms()],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        tracing::info!(version = m.version, name = m.name, "applied sqlite migration");
    }
    Ok(())
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.execute_batch("PRAGMA busy_timeout=10000; PRAGMA cache_size=-16384;")?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The series ids of `metrics` of `device` that exist, each metric once.
fn series_ids(c: &Connection, device: &DeviceId, metrics: &[Metric]) -> rusqlite::Result<Vec<(i64, Metric)>> {
    let mut stmt = c.prepare_cached("SELECT id FROM series WHERE device = ?1 AND metric = ?2")?;
    let mut out: Vec<(i64, Metric)> = Vec::with_capacity(metrics.len());
    for m in metrics {
        if out.iter().any(|(_, seen)| seen == m) {
            continue;
        }
        if let Some(id) = stmt.query_row(params![device.as_str(), m.0], |r| r.get(0)).optional()? {
            out.push((id, m.clone()));
        }
    }
    Ok(out)
}

fn device_id(id: String) -> Result<DeviceId, StoreError> {
    DeviceId::new(id).map_err(|e| StoreError::Backend(format!("stored device id is invalid: {e}")))
}

fn parse_document(text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("stored document is not JSON: {e}")))
}
