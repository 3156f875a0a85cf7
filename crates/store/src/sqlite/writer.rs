//! The SQLite writer thread: the only owner of the write connection. It takes every
//! write queued (up to `max_batch_points`, waiting at most `max_commit_delay` for more),
//! commits them in one transaction with one fsync, then answers every caller.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use crate::bucket::RollupDelta;
use crate::{Config, Record, Resolution, StoreError, WriteSummary};

/// What the writer thread is asked to do, in queue order.
pub(super) enum Job {
    /// Commit these records; the permit holds their room in the queue until answered.
    Write {
        records: Vec<Record>,
        reply: oneshot::Sender<Result<WriteSummary, StoreError>>,
        permit: OwnedSemaphorePermit,
    },
    /// Run this on the write connection (retention, registry and audit writes); it
    /// answers through its own channel.
    Exec(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Commit what is queued before this, checkpoint, answer and stop.
    Close(oneshot::Sender<()>),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Write { records, .. } => write!(f, "Write({} records)", records.len()),
            Job::Exec(_) => f.write_str("Exec"),
            Job::Close(_) => f.write_str("Close"),
        }
    }
}

/// A write waiting in the current batch.
struct Pending {
    records: Vec<Record>,
    reply: oneshot::Sender<Result<WriteSummary, StoreError>>,
    _permit: OwnedSemaphorePermit,
}

pub(super) struct Writer {
    conn: Connection,
    /// device → metric → series id, for series committed to the database.
    series: HashMap<String, HashMap<String, i64>>,
    rollups: bool,
    max_batch_points: usize,
    max_commit_delay: Duration,
}

/// What one transaction changes besides raw points, folded so each row is written once.
#[derive(Default)]
struct Changes<'a> {
    rollups: RollupDelta,
    /// series id → (points added, greatest ts, its value)
    series: HashMap<i64, (i64, i64, f64)>,
    /// device → (first arrival, last arrival, newest document and its arrival)
    devices: HashMap<&'a str, DeviceChange<'a>>,
}

struct DeviceChange<'a> {
    first: i64,
    last: i64,
    document: Option<(i64, &'a serde_json::Value)>,
}

impl Writer {
    pub(super) fn new(conn: Connection, config: &Config) -> Self {
        Self {
            conn,
            series: HashMap::new(),
            rollups: config.rollups,
            max_batch_points: config.max_batch_points.max(1),
            max_commit_delay: config.max_commit_delay,
        }
    }

    /// The thread body: runs until [`Job::Close`] or until every sender is gone.
    pub(super) fn run(mut self, jobs: &Receiver<Job>) {
        let mut next: Option<Job> = None;
        loop {
            let job = match next.take() {
                Some(job) => job,
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            match job {
                Job::Write { records, reply, permit } => {
                    let mut batch = vec![Pending { records, reply, _permit: permit }];
                    next = self.gather(jobs, &mut batch);
                    self.commit_batch(batch);
                }
                Job::Exec(f) => f(&mut self.conn),
                Job::Close(done) => {
                    self.checkpoint();
                    // anything queued after Close is dropped: its caller sees Closed
                    let _ = done.send(());
                    return;
                }
            }
        }
        self.checkpoint();
    }

    /// Adds queued writes to `batch` until it holds `max_batch_points` or the queue stays
    /// empty for `max_commit_delay`. Returns a non-write job that must run after it.
    fn gather(&self, jobs: &Receiver<Job>, batch: &mut Vec<Pending>) -> Option<Job> {
        let mut points: usize = batch.iter().map(|p| crate::queue::point_count(&p.records)).sum();
        let deadline = Instant::now() + self.max_commit_delay;
        while points < self.max_batch_points {
            let job = match jobs.try_recv() {
                Ok(job) => job,
                Err(_) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    if wait.is_zero() {
                        return None;
                    }
                    match jobs.recv_timeout(wait) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
                    }
                }
            };
            match job {
                Job::Write { records, reply, permit } => {
                    points += crate::queue::point_count(&records);
                    batch.push(Pending { records, reply, _permit: permit });
                }
                other => return Some(other),
            }
        }
        None
    }

    /// Commits `batch` in one transaction and answers every caller. If the transaction
    /// fails, each write is retried alone so one bad write cannot fail the others.
    fn commit_batch(&mut self, batch: Vec<Pending>) {
        let records: Vec<&[Record]> = batch.iter().map(|p| p.records.as_slice()).collect();
        match self.commit(&records) {
            Ok(summaries) => {
                for (p, s) in batch.into_iter().zip(summaries) {
                    let _ = p.reply.send(Ok(s));
                }
            }
            Err(e) if batch.len() == 1 => {
                let _ = batch.into_iter().next().map(|p| p.reply.send(Err(super::backend(e))));
            }
            Err(e) => {
                tracing::warn!(error = %e, writes = batch.len(), "sqlite group commit failed; retrying one by one");
                for p in batch {
                    let result = self.commit(&[&p.records]).map(|mut s| s.remove(0)).map_err(super::backend);
                    let _ = p.reply.send(result);
                }
            }
        }
    }

    /// One transaction for all of `writes`; the summary of each.
    fn commit(&mut self, writes: &[&[Record]]) -> rusqlite::Result<Vec<WriteSummary>> {
        let result = self.try_commit(writes);
        if result.is_err() {
            // series created by the rolled-back transaction do not exist
            self.series.clear();
        }
        result
    }

    fn try_commit(&mut self, writes: &[&[Record]]) -> rusqlite::Result<Vec<WriteSummary>> {
        let Writer { conn, series, rollups, .. } = self;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut changes = Changes::default();
        let mut summaries = Vec::with_capacity(writes.len());
        {
            let mut insert_msg = tx.prepare_cached(
                "INSERT INTO messages (device, msg_id, received_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?;
            let mut insert_point = tx.prepare_cached(
                "INSERT INTO points (series_id, ts, value) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?;
            for records in writes {
                let mut summary = WriteSummary::default();
                for r in *records {
                    let device = r.device.as_str();
                    if let Some(id) = &r.msg_id
                        && insert_msg.execute(params![device, id, r.received_at.0])? == 0
                    {
                        summary.duplicates += 1;
                        continue;
                    }
                    summary.records += 1;
                    let at = r.received_at.0;
                    let d = changes.devices.entry(device).or_insert(DeviceChange {
                        first: at,
                        last: at,
                        document: None,
                    });
                    d.first = d.first.min(at);
                    d.last = d.last.max(at);
                    if let Some(doc) = &r.document
                        && d.document.is_none_or(|(t, _)| at >= t)
                    {
                        d.document = Some((at, doc));
                    }
                    for p in &r.points {
                        if !p.value.is_finite() {
                            continue;
                        }
                        let id = series_id(&tx, series, device, &p.metric.0)?;
                        if insert_point.execute(params![id, p.ts.0, p.value])? == 0 {
                            continue;
                        }
                        summary.points += 1;
                        if *rollups {
                            changes.rollups.add(id, p.ts.0, p.value);
                        }
                        let s = changes.series.entry(id).or_insert((0, p.ts.0, p.value));
                        s.0 += 1;
                        if p.ts.0 > s.1 {
                            (s.1, s.2) = (p.ts.0, p.value);
                        }
                    }
                }
                summaries.push(summary);
            }
        }
        apply(&tx, changes)?;
        tx.commit()?;
        Ok(summaries)
    }

    /// Copies the WAL into the database file and truncates it (shutdown).
    fn checkpoint(&self) {
        match self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
            Ok(0) => tracing::debug!("sqlite wal checkpointed"),
            Ok(_) => tracing::warn!("sqlite wal checkpoint incomplete: readers were busy"),
            Err(e) => tracing::warn!(error = %e, "sqlite wal checkpoint failed"),
        }
    }
}

/// The id of `(device, metric)`, created on first use.
fn series_id(
    tx: &Transaction<'_>,
    cache: &mut HashMap<String, HashMap<String, i64>>,
    device: &str,
    metric: &str,
) -> rusqlite::Result<i64> {
    if let Some(id) = cache.get(device).and_then(|m| m.get(metric)) {
        return Ok(*id);
    }
    let found: Option<i64> = tx
        .prepare_cached("SELECT id FROM series WHERE device = ?1 AND metric = ?2")?
        .query_row(params![device, metric], |r| r.get(0))
        .optional()?;
    let id = match found {
        Some(id) => id,
        None => {
            tx.prepare_cached(
                "INSERT INTO series (device, metric, latest_ts, latest_value, point_count) \
                 VALUES (?1, ?2, ?3, 0, 0)",
            )?
            .execute(params![device, metric, i64::MIN])?;
            tx.last_insert_rowid()
        }
    };
    cache.entry(device.to_owned()).or_default().insert(metric.to_owned(), id);
    Ok(id)
}

/// Writes the folded rollups, series and devices of one transaction.
fn apply(tx: &Transaction<'_>, changes: Changes<'_>) -> rusqlite::Result<()> {
    for (resolution, rows) in changes.rollups.into_sorted() {
        let sql = match resolution {
            Resolution::Minute => ROLLUP_1M,
            _ => ROLLUP_1H,
        };
        let mut stmt = tx.prepare_cached(sql)?;
        for ((series, bucket), p) in rows {
            let n = i64::try_from(p.count).unwrap_or(i64::MAX);
            stmt.execute(params![series, bucket, n, p.sum, p.min, p.max, p.last, p.last_ts])?;
        }
    }
    let mut stmt = tx.prepare_cached(
        "UPDATE series SET point_count = point_count + ?2, \
             latest_value = CASE WHEN ?3 > latest_ts THEN ?4 ELSE latest_value END, \
             latest_ts = max(latest_ts, ?3) \
         WHERE id = ?1",
    )?;
    for (id, (added, ts, value)) in changes.series {
        stmt.execute(params![id, added, ts, value])?;
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO devices (device, first_seen, last_seen, document, document_at) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (device) DO UPDATE SET \
             first_seen = min(first_seen, excluded.first_seen), \
             last_seen = max(last_seen, excluded.last_seen), \
             document = CASE WHEN excluded.document_at >= coalesce(document_at, excluded.document_at) \
                 THEN coalesce(excluded.document, document) ELSE document END, \
             document_at = CASE WHEN excluded.document_at >= coalesce(document_at, excluded.document_at) \
                 THEN coalesce(excluded.document_at, document_at) ELSE document_at END",
    )?;
    for (device, d) in changes.devices {
        let (doc_at, doc) = match d.document {
            Some((at, doc)) => (Some(at), Some(doc.to_string())),
            None => (None, None),
        };
        stmt.execute(params![device, d.first, d.last, doc, doc_at])?;
    }
    Ok(())
}

/// Merges a batch's partial into a rollup row: late and out-of-order points repair it.
const ROLLUP_1M: &str = "INSERT INTO rollup_1m (series_id, bucket, n, total, lo, hi, last_value, last_ts) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (series_id, bucket) DO UPDATE SET \
         n = n + excluded.n, total = total + excluded.total, \
         lo = min(lo, excluded.lo), hi = max(hi, excluded.hi), \
         last_value = CASE WHEN excluded.last_ts > last_ts THEN excluded.last_value ELSE last_value END, \
         last_ts = max(last_ts, excluded.last_ts)";

const ROLLUP_1H: &str = "INSERT INTO rollup_1h (series_id, bucket, n, total, lo, hi, last_value, last_ts) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (series_id, bucket) DO UPDATE SET \
         n = n + excluded.n, total = total + excluded.total, \
         lo = min(lo, excluded.lo), hi = max(hi, excluded.hi), \
         last_value = CASE WHEN excluded.last_ts > last_ts THEN excluded.last_value ELSE last_value END, \
         last_ts = max(last_ts, excluded.last_ts)";
