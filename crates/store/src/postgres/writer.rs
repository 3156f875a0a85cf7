//! The PostgreSQL writer task: takes every write queued (up to `max_batch_points`,
//! waiting at most `max_commit_delay` for more), commits them in one transaction of a
//! few array statements (`unnest`), then answers every caller.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;

use super::{backend, partition};
use crate::bucket::RollupDelta;
use crate::{Config, Record, Resolution, StoreError, WriteSummary};

/// What the writer task is asked to do, in queue order.
#[derive(Debug)]
pub(super) enum Job {
    /// Commit these records; the permit holds their room in the queue until answered.
    Write {
        records: Vec<Record>,
        reply: oneshot::Sender<Result<WriteSummary, StoreError>>,
        permit: OwnedSemaphorePermit,
    },
    /// Commit what is queued before this, answer and stop.
    Close(oneshot::Sender<()>),
}

/// A write waiting in the current batch.
struct Pending {
    records: Vec<Record>,
    reply: oneshot::Sender<Result<WriteSummary, StoreError>>,
    _permit: OwnedSemaphorePermit,
}

pub(super) struct Writer {
    pool: Pool,
    /// device → metric → series id, for series committed to the database.
    series: HashMap<String, HashMap<String, i64>>,
    /// Days known to have a partition.
    days: HashSet<i64>,
    rollups: bool,
    max_batch_points: usize,
    max_commit_delay: Duration,
}

/// A point of an accepted record: (write index, series id, ts, value).
type Row = (usize, i64, i64, f64);

impl Writer {
    pub(super) fn new(pool: Pool, config: &Config) -> Self {
        Self {
            pool,
            series: HashMap::new(),
            days: HashSet::new(),
            rollups: config.rollups,
            max_batch_points: config.max_batch_points.max(1),
            max_commit_delay: config.max_commit_delay,
        }
    }

    /// The task body: runs until [`Job::Close`] or until every sender is gone.
    pub(super) async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut next: Option<Job> = None;
        loop {
            let job = match next.take() {
                Some(job) => job,
                None => match jobs.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            match job {
                Job::Write { records, reply, permit } => {
                    let mut batch = vec![Pending { records, reply, _permit: permit }];
                    next = self.gather(&mut jobs, &mut batch).await;
                    self.commit_batch(batch).await;
                }
                Job::Close(done) => {
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// Adds queued writes to `batch` until it holds `max_batch_points` or the queue stays
    /// empty for `max_commit_delay`. Returns a non-write job that must run after it.
    async fn gather(&self, jobs: &mut mpsc::Receiver<Job>, batch: &mut Vec<Pending>) -> Option<Job> {
        let mut points: usize = batch.iter().map(|p| crate::queue::point_count(&p.records)).sum();
        let deadline = Instant::now() + self.max_commit_delay;
        while points < self.max_batch_points {
            let job = match jobs.try_recv() {
                Ok(job) => job,
                Err(_) if Instant::now() >= deadline => return None,
                Err(_) => match tokio::time::timeout_at(deadline, jobs.recv()).await {
                    Ok(Some(job)) => job,
                    Ok(None) | Err(_) => return None,
                },
            };
            match job {
                Job::Write { records, reply, permit } => {
                    points += crate::queue::point_count(&records);
                    batch.push(Pending { records, reply, _permit: permit });
                }
                other @ Job::Close(_) => return Some(other),
            }
        }
        None
    }

    /// Commits `batch` in one transaction and answers every caller. If it fails, the
    /// caches are dropped (a partition may have been dropped by retention, a series
    /// rolled back) and each write is retried alone, so one bad write cannot fail the
    /// others.
    async fn commit_batch(&mut self, batch: Vec<Pending>) {
        let records: Vec<&[Record]> = batch.iter().map(|p| p.records.as_slice()).collect();
        match self.commit(&records).await {
            Ok(summaries) => {
                for (p, s) in batch.into_iter().zip(summaries) {
                    let _ = p.reply.send(Ok(s));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, writes = batch.len(), "postgres group commit failed; retrying one by one");
                for p in batch {
                    let result = self.commit(&[&p.records]).await.map(|mut s| s.remove(0));
                    let _ = p.reply.send(result);
                }
            }
        }
    }

    async fn commit(&mut self, writes: &[&[Record]]) -> Result<Vec<WriteSummary>, StoreError> {
        let result = self.try_commit(writes).await;
        if result.is_err() {
            self.series.clear();
            self.days.clear();
        }
        result
    }

    async fn try_commit(&mut self, writes: &[&[Record]]) -> Result<Vec<WriteSummary>, StoreError> {
        let mut client = self.pool.get().await.map_err(|e| StoreError::Backend(e.to_string()))?;

        // partitions first, outside the transaction: DDL locks the parent table
        let mut days: Vec<i64> = writes
            .iter()
            .flat_map(|r| r.iter())
            .flat_map(|r| r.points.iter())
            .map(|p| partition::day_of(p.ts.0))
            .filter(|d| !self.days.contains(d))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        days.sort_unstable();
        for day in days {
            partition::ensure(&client, day).await.map_err(backend)?;
            self.days.insert(day);
        }

        let tx = client.transaction().await.map_err(backend)?;
        let mut summaries = vec![WriteSummary::default(); writes.len()];
        let accepted = dedupe(&tx, writes, &mut summaries).await?;

        // series of the accepted points
        let mut missing: Vec<(&str, &str)> = Vec::new();
        for (_, r) in &accepted {
            for p in &r.points {
                let (d, m) = (r.device.as_str(), p.metric.0.as_str());
                if self.series.get(d).and_then(|s| s.get(m)).is_none() {
                    missing.push((d, m));
                }
            }
        }
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            self.create_series(&tx, &missing).await?;
        }
        let mut rows: Vec<Row> = Vec::new();
        for (w, r) in &accepted {
            let by_metric = self.series.get(r.device.as_str());
            for p in r.points.iter().filter(|p| p.value.is_finite()) {
                let id = by_metric.and_then(|s| s.get(p.metric.0.as_str())).copied();
                let id = id.ok_or_else(|| StoreError::Backend(format!("series {} missing", p.metric.0)))?;
                rows.push((*w, id, p.ts.0, p.value));
            }
        }
        insert_points(&tx, &rows, &mut summaries, self.rollups).await?;
        upsert_devices(&tx, &accepted).await?;
        tx.commit().await.map_err(backend)?;
        Ok(summaries)
    }

    /// Creates the `(device, metric)` series not in the cache and loads their ids.
    async fn create_series(
        &mut self,
        tx: &Transaction<'_>,
        missing: &[(&str, &str)],
    ) -> Result<(), StoreError> {
        let devices: Vec<&str> = missing.iter().map(|(d, _)| *d).collect();
        let metrics: Vec<&str> = missing.iter().map(|(_, m)| *m).collect();
        let insert = tx
            .prepare_cached(
                "INSERT INTO series (device, metric, latest_ts, latest_value) \
                 SELECT d, m, -9223372036854775808, 0 FROM unnest($1::text[], $2::text[]) AS u(d, m) \
                 ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(backend)?;
        tx.execute(&insert, &[&devices, &metrics]).await.map_err(backend)?;
        let select = tx
            .prepare_cached(
                "SELECT s.id, s.device::text, s.metric::text FROM series s \
                 JOIN unnest($1::text[], $2::text[]) AS u(d, m) ON s.device = u.d AND s.metric = u.m",
            )
            .await
            .map_err(backend)?;
        for row in tx.query(&select, &[&devices, &metrics]).await.map_err(backend)? {
            let (id, d, m): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
            self.series.entry(d).or_default().insert(m, id);
        }
        Ok(())
    }
}

/// Records the message ids of `writes` and returns the records to store, with their
/// write's index; counts records and duplicates into `summaries`.
async fn dedupe<'r>(
    tx: &Transaction<'_>,
    writes: &[&'r [Record]],
    summaries: &mut [WriteSummary],
) -> Result<Vec<(usize, &'r Record)>, StoreError> {
    let with_id: Vec<&Record> = writes.iter().flat_map(|r| r.iter()).filter(|r| r.msg_id.is_some()).collect();
    let mut fresh: HashSet<(String, String)> = HashSet::new();
    if !with_id.is_empty() {
        let devices: Vec<&str> = with_id.iter().map(|r| r.device.as_str()).collect();
        let ids: Vec<&str> = with_id.iter().filter_map(|r| r.msg_id.as_deref()).collect();
        let at: Vec<i64> = with_id.iter().map(|r| r.received_at.0).collect();
        let stmt = tx
            .prepare_cached(
                "INSERT INTO messages (device, msg_id, received_at) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) \
                 ON CONFLICT DO NOTHING RETURNING device::text, msg_id::text",
            )
            .await
            .map_err(backend)?;
        for row in tx.query(&stmt, &[&devices, &ids, &at]).await.map_err(backend)? {
            fresh.insert((row.get(0), row.get(1)));
        }
    }
    let mut accepted = Vec::new();
    for (w, records) in writes.iter().enumerate() {
        for r in *records {
            if let Some(id) = &r.msg_id
                // the first record with a fresh id takes it; a repeat in the batch is a duplicate
                && !fresh.remove(&(r.device.as_str().to_owned(), id.clone()))
            {
                summaries[w].duplicates += 1;
                continue;
            }
            summaries[w].records += 1;
            accepted.push((w, r));
        }
    }
    Ok(accepted)
}

/// Inserts the points (a repeated `(series, ts)` keeps the stored one), then folds the
/// inserted ones into the rollups and latest values.
async fn insert_points(
    tx: &Transaction<'_>,
    rows: &[Row],
    summaries: &mut [WriteSummary],
    rollups: bool,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    // which write each (series, ts) came from; the first one wins, as in the table
    let mut origin: HashMap<(i64, i64), usize> = HashMap::with_capacity(rows.len());
    for (w, id, ts, _) in rows {
        origin.entry((*id, *ts)).or_insert(*w);
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let ts: Vec<i64> = rows.iter().map(|r| r.2).collect();
    let values: Vec<f64> = rows.iter().map(|r| r.3).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO points (series_id, ts, value) \
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::float8[]) \
             ON CONFLICT DO NOTHING RETURNING series_id, ts, value",
        )
        .await
        .map_err(backend)?;
    let inserted = tx.query(&stmt, &[&ids, &ts, &values]).await.map_err(backend)?;
    let mut delta = RollupDelta::default();
    let mut latest: HashMap<i64, (i64, f64)> = HashMap::new();
    for row in &inserted {
        let (id, ts, value): (i64, i64, f64) = (row.get(0), row.get(1), row.get(2));
        if let Some(w) = origin.get(&(id, ts)) {
            summaries[*w].points += 1;
        }
        if rollups {
            delta.add(id, ts, value);
        }
        let l = latest.entry(id).or_insert((ts, value));
        if ts > l.0 {
            *l = (ts, value);
        }
    }
    for (resolution, rows) in delta.into_sorted() {
        if rows.is_empty() {
            continue;
        }
        let table = if resolution == Resolution::Minute { "rollup_1m" } else { "rollup_1h" };
        let sql = format!(
            "INSERT INTO {table} (series_id, bucket, n, total, lo, hi, last_value, last_ts) \
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::float8[], $5::float8[], \
                                  $6::float8[], $7::float8[], $8::int8[]) \
             ON CONFLICT (series_id, bucket) DO UPDATE SET \
                 n = {table}.n + excluded.n, total = {table}.total + excluded.total, \
                 lo = least({table}.lo, excluded.lo), hi = greatest({table}.hi, excluded.hi), \
                 last_value = CASE WHEN excluded.last_ts > {table}.last_ts \
                     THEN excluded.last_value ELSE {table}.last_value END, \
                 last_ts = greatest({table}.last_ts, excluded.last_ts)"
        );
        let stmt = tx.prepare_cached(&sql).await.map_err(backend)?;
        let col =
            |f: fn(&((i64, i64), crate::bucket::Partial)) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let colf =
            |f: fn(&((i64, i64), crate::bucket::Partial)) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
        let (series, bucket) = (col(|r| r.0.0), col(|r| r.0.1));
        let n = col(|r| i64::try_from(r.1.count).unwrap_or(i64::MAX));
        let (total, lo, hi, last) =
            (colf(|r| r.1.sum), colf(|r| r.1.min), colf(|r| r.1.max), colf(|r| r.1.last));
        let last_ts = col(|r| r.1.last_ts);
        tx.execute(&stmt, &[&series, &bucket, &n, &total, &lo, &hi, &last, &last_ts])
            .await
            .map_err(backend)?;
    }
    let mut latest: Vec<(i64, (i64, f64))> = latest.into_iter().collect();
    latest.sort_unstable_by_key(|(id, _)| *id);
    let ids: Vec<i64> = latest.iter().map(|l| l.0).collect();
    let ts: Vec<i64> = latest.iter().map(|l| l.1.0).collect();
    let values: Vec<f64> = latest.iter().map(|l| l.1.1).collect();
    let stmt = tx
        .prepare_cached(
            "UPDATE series s SET latest_ts = u.ts, latest_value = u.v \
             FROM unnest($1::int8[], $2::int8[], $3::float8[]) AS u(id, ts, v) \
             WHERE s.id = u.id AND u.ts > s.latest_ts",
        )
        .await
        .map_err(backend)?;
    tx.execute(&stmt, &[&ids, &ts, &values]).await.map_err(backend)?;
    Ok(())
}

/// First and last arrival of each device, and its newest document.
async fn upsert_devices(tx: &Transaction<'_>, accepted: &[(usize, &Record)]) -> Result<(), StoreError> {
    // device → (first arrival, last arrival, newest document and its arrival)
    type Change<'a> = (i64, i64, Option<(i64, &'a serde_json::Value)>);
    let mut devices: HashMap<&str, Change<'_>> = HashMap::new();
    for (_, r) in accepted {
        let at = r.received_at.0;
        let d = devices.entry(r.device.as_str()).or_insert((at, at, None));
        d.0 = d.0.min(at);
        d.1 = d.1.max(at);
        if let Some(doc) = &r.document
            && d.2.is_none_or(|(t, _)| at >= t)
        {
            d.2 = Some((at, doc));
        }
    }
    if devices.is_empty() {
        return Ok(());
    }
    let mut devices: Vec<_> = devices.into_iter().collect();
    devices.sort_unstable_by_key(|(d, _)| *d);
    let names: Vec<&str> = devices.iter().map(|d| d.0).collect();
    let first: Vec<i64> = devices.iter().map(|d| d.1.0).collect();
    let last: Vec<i64> = devices.iter().map(|d| d.1.1).collect();
    let docs: Vec<Option<&serde_json::Value>> = devices.iter().map(|d| d.1.2.map(|(_, v)| v)).collect();
    let doc_at: Vec<Option<i64>> = devices.iter().map(|d| d.1.2.map(|(t, _)| t)).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO devices (device, first_seen, last_seen, document, document_at) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::jsonb[], $5::int8[]) \
             ON CONFLICT (device) DO UPDATE SET \
                 first_seen = least(devices.first_seen, excluded.first_seen), \
                 last_seen = greatest(devices.last_seen, excluded.last_seen), \
                 document = CASE WHEN excluded.document_at >= coalesce(devices.document_at, excluded.document_at) \
                     THEN coalesce(excluded.document, devices.document) ELSE devices.document END, \
                 document_at = CASE WHEN excluded.document_at >= coalesce(devices.document_at, excluded.document_at) \
                     THEN coalesce(excluded.document_at, devices.document_at) ELSE devices.document_at END",
        )
        .await
        .map_err(backend)?;
    tx.execute(&stmt, &[&names, &first, &last, &docs, &doc_at]).await.map_err(backend)?;
    Ok(())
}
