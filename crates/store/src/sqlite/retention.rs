//! SQLite retention: raw points older than `max_age`, then the oldest raw points while
//! they take more than `max_bytes`. Deletes run on the writer thread a few series per
//! transaction, so writes queued meanwhile are not held up behind one long delete.
//! Rollups are kept: they are what long-range queries read once raw points are gone.

use rusqlite::{Connection, params};

use super::SqliteStore;
use crate::bucket::{HOUR_MS, floor};
use crate::{RetentionPolicy, RetentionReport, StoreError, Timestamp};

/// Series deleted from per writer transaction.
const SERIES_PER_JOB: usize = 64;

/// The size of the raw points.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measure {
    /// Bytes of the pages they occupy.
    pub(super) bytes: u64,
    /// How many there are.
    pub(super) live: u64,
}

/// Pages in use by the whole file, less those of every table and index but `points`:
/// cheap (dbstat walks only the small tables), and exact to the page.
pub(super) fn measure(c: &Connection) -> rusqlite::Result<Measure> {
    let pragma = |name: &str| c.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0));
    let page_size = pragma("page_size")?;
    let used = (pragma("page_count")? - pragma("freelist_count")?) * page_size;
    let mut names = c.prepare("SELECT name FROM sqlite_schema WHERE rootpage > 0 AND name <> 'points'")?;
    let mut others: Vec<String> = names.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    others.push("sqlite_schema".into());
    let mut other_bytes = 0;
    let mut size = c.prepare("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ?1")?;
    for name in &others {
        other_bytes += size.query_row([name], |r| r.get::<_, i64>(0))?;
    }
    let live: i64 = c.query_row("SELECT coalesce(sum(point_count), 0) FROM series", [], |r| r.get(0))?;
    Ok(Measure {
        bytes: u64::try_from(used - other_bytes).unwrap_or(0),
        live: u64::try_from(live).unwrap_or(0),
    })
}

pub(super) async fn enforce(
    store: &SqliteStore,
    policy: RetentionPolicy,
    now: Timestamp,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    if let Some(age) = policy.max_age {
        let cutoff = now.0.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        report.points_deleted += delete_before(store, cutoff).await?;
        store.exec(move |c| c.execute("DELETE FROM messages WHERE received_at < ?1", [cutoff])).await?;
    }
    if let Some(max) = policy.max_bytes {
        let m = store.read(measure).await?;
        if m.bytes > max && m.live > 0 {
            let need = crate::points_over(m.bytes, m.live, max);
            let last = store.read(move |c| oldest(c, need)).await?;
            report.points_deleted += delete_before(store, last.saturating_add(1)).await?;
        }
    }
    Ok(report)
}

/// Deletes every raw point before `end`, a few series per writer transaction.
async fn delete_before(store: &SqliteStore, end: i64) -> Result<u64, StoreError> {
    let ids: Vec<i64> = store
        .read(|c| {
            c.prepare("SELECT id FROM series WHERE point_count > 0")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .await?;
    let mut deleted = 0;
    for chunk in ids.chunks(SERIES_PER_JOB) {
        let chunk = chunk.to_vec();
        deleted += store
            .exec(move |c| {
                let tx = c.transaction()?;
                let mut n_total = 0u64;
                {
                    let mut delete =
                        tx.prepare_cached("DELETE FROM points WHERE series_id = ?1 AND ts < ?2")?;
                    let mut count =
                        tx.prepare_cached("UPDATE series SET point_count = point_count - ?2 WHERE id = ?1")?;
                    for id in chunk {
                        let n = delete.execute(params![id, end])?;
                        if n > 0 {
                            count.execute(params![id, n as i64])?;
                            n_total += n as u64;
                        }
                    }
                }
                tx.commit()?;
                Ok(n_total)
            })
            .await?;
    }
    Ok(deleted)
}

/// The timestamp of the `need`-th oldest raw point over all series (deleting up to and
/// including it deletes at least `need` points). Walks hour by hour from the oldest
/// point, counting through each series' primary key, so it reads about `need` index
/// entries rather than the table.
fn oldest(c: &Connection, need: u64) -> rusqlite::Result<i64> {
    let mut first = c.prepare_cached("SELECT min(ts) FROM points WHERE series_id = ?1 AND ts >= ?2")?;
    let mut count =
        c.prepare_cached("SELECT count(*) FROM points WHERE series_id = ?1 AND ts >= ?2 AND ts < ?3")?;
    let mut times =
        c.prepare_cached("SELECT ts FROM points WHERE series_id = ?1 AND ts >= ?2 AND ts < ?3")?;
    let ids: Vec<i64> = c
        .prepare("SELECT id FROM series WHERE point_count > 0")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    // (series, its oldest point not yet counted)
    let mut next: Vec<(i64, i64)> = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(ts) = first.query_row(params![id, i64::MIN], |r| r.get::<_, Option<i64>>(0))? {
            next.push((id, ts));
        }
    }
    let mut counted = 0u64;
    while let Some(hour) = next.iter().map(|(_, ts)| floor(*ts, HOUR_MS)).min() {
        let end = hour.saturating_add(HOUR_MS);
        let mut in_hour = 0u64;
        for (id, ts) in next.iter().filter(|(_, ts)| *ts < end) {
            in_hour += count.query_row(params![id, ts, end], |r| r.get::<_, i64>(0))? as u64;
        }
        if counted + in_hour >= need {
            let mut all = Vec::with_capacity(usize::try_from(in_hour).unwrap_or(0));
            for (id, ts) in next.iter().filter(|(_, ts)| *ts < end) {
                let mut rows = times.query(params![id, ts, end])?;
                while let Some(r) = rows.next()? {
                    all.push(r.get::<_, i64>(0)?);
                }
            }
            all.sort_unstable();
            let k =
                usize::try_from(need - counted - 1).unwrap_or(usize::MAX).min(all.len().saturating_sub(1));
            return Ok(all.get(k).copied().unwrap_or(end - 1));
        }
        counted += in_hour;
        let mut still = Vec::with_capacity(next.len());
        for (id, ts) in next {
            if ts >= end {
                still.push((id, ts));
            } else if let Some(ts) = first.query_row(params![id, end], |r| r.get::<_, Option<i64>>(0))? {
                still.push((id, ts));
            }
        }
        next = still;
    }
    Ok(i64::MAX - 1)
}
