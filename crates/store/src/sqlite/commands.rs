//! The SQLite [`CommandStore`], [`ShadowStore`] and [`OutboxStore`]. Writes run on the
//! writer thread as [`Job::Exec`](super::writer::Job) jobs, each one statement or one
//! `IMMEDIATE` transaction on the one write connection, fsynced before the caller is
//! answered (see `registry` for why not a second write connection); a compare-and-set
//! is one statement or one transaction there, so nothing can come between its check and
//! its write. Reads use the reader pool.

use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use telehub_core::DeviceId;

use super::SqliteStore;
use crate::commands::{
    self, Command, CommandQuery, CommandState, CommandStore, Decision, Inserted, NewCommand,
};
use crate::outbox::{self, Delivery, OutboxEntry, OutboxQuery, OutboxStatus, OutboxStore, RawEntry, Replay};
use crate::registry::has_nul;
use crate::shadow::{self, Shadow, ShadowConflict, ShadowStore, Side};
use crate::{StoreError, Timestamp};

/// A JSON column (stored as text).
fn json(r: &Row<'_>, i: usize) -> rusqlite::Result<serde_json::Value> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e)))
}

/// A nullable JSON column.
fn json_opt(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<serde_json::Value>> {
    match r.get::<_, Option<String>>(i)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e))),
    }
}

/// A row of [`commands::COLUMNS`].
fn raw_command(r: &Row<'_>) -> rusqlite::Result<commands::RawCommand> {
    Ok(commands::RawCommand {
        id: r.get(0)?,
        device: r.get(1)?,
        seq: r.get(2)?,
        mode: r.get(3)?,
        key: r.get(4)?,
        payload: json(r, 5)?,
        topic: r.get(6)?,
        state: r.get(7)?,
        created_at: r.get(8)?,
        expires_at: r.get(9)?,
        updated_at: r.get(10)?,
        timestamps: json(r, 11)?,
        result: json_opt(r, 12)?,
        reason: r.get(13)?,
    })
}

fn into_commands(rows: Vec<commands::RawCommand>) -> Result<Vec<Command>, StoreError> {
    rows.into_iter().map(commands::RawCommand::into_command).collect()
}

/// A JSON array of state names, for `state IN (SELECT value FROM json_each(?))`.
fn state_list(states: &[CommandState]) -> String {
    serde_json::Value::from(commands::names(states)).to_string()
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl CommandStore for SqliteStore {
    async fn command_insert(
        &self,
        cmd: NewCommand,
        max_queued_per_device: usize,
    ) -> Result<Inserted, StoreError> {
        self.check_open()?;
        commands::refuse_nul(&cmd)?;
        let max = u64::try_from(max_queued_per_device).unwrap_or(u64::MAX);
        let (decision, cmd) = self
            .exec(move |c| {
                let decision = insert(c, &cmd, max)?;
                Ok((decision, cmd))
            })
            .await?;
        Ok(decision.into_inserted(cmd))
    }

    async fn command_get(&self, id: &str) -> Result<Option<Command>, StoreError> {
        if has_nul(id) {
            return Ok(None);
        }
        let id = id.to_owned();
        let row = self
            .read(move |c| {
                c.prepare_cached(&format!("SELECT {} FROM commands WHERE id = ?1", commands::COLUMNS))?
                    .query_row([id], raw_command)
                    .optional()
            })
            .await?;
        row.map(commands::RawCommand::into_command).transpose()
    }

    async fn command_list(&self, query: CommandQuery) -> Result<Vec<Command>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {} FROM commands WHERE device = ?1 \
                     AND (?2 = '[]' OR state IN (SELECT value FROM json_each(?2))) AND seq < ?3 \
                     ORDER BY seq DESC LIMIT ?4",
                    commands::COLUMNS
                ))?;
                stmt.query_map(
                    params![
                        query.device.as_str(),
                        state_list(&query.states),
                        query.before_seq.unwrap_or(i64::MAX),
                        limit(query.limit)
                    ],
                    raw_command,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        into_commands(rows)
    }

    async fn command_pending(&self, device: &DeviceId, max: usize) -> Result<Vec<Command>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let device = device.as_str().to_owned();
        let rows = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {} FROM commands WHERE device = ?1 AND state IN ('queued', 'sent') \
                     ORDER BY seq LIMIT ?2",
                    commands::COLUMNS
                ))?;
                stmt.query_map(params![device, limit(max)], raw_command)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        into_commands(rows)
    }

    async fn command_transition(
        &self,
        id: &str,
        from: &[CommandState],
        to: CommandState,
        result: Option<serde_json::Value>,
        reason: Option<String>,
        at: Timestamp,
    ) -> Result<Option<Command>, StoreError> {
        self.check_open()?;
        if result.as_ref().is_some_and(crate::registry::json_has_nul) {
            return Err(StoreError::Backend("a command result contains a NUL character".into()));
        }
        if from.is_empty() || has_nul(id) {
            return Ok(None);
        }
        let (id, from) = (id.to_owned(), state_list(from));
        let result = result.map(|r| r.to_string());
        let reason = reason.map(commands::without_nul);
        let row = self
            .exec(move |c| {
                c.prepare_cached(&format!(
                    "UPDATE commands SET state = ?2, updated_at = ?3, \
                         timestamps = json_set(timestamps, '$.' || ?2, ?3), \
                         result = coalesce(?4, result), reason = coalesce(?5, reason) \
                     WHERE id = ?1 AND state IN (SELECT value FROM json_each(?6)) RETURNING {}",
                    commands::COLUMNS
                ))?
                .query_row(params![id, to.as_str(), at.0, result, reason, from], raw_command)
                .optional()
            })
            .await?;
        row.map(commands::RawCommand::into_command).transpose()
    }

    async fn command_expire(&self, now: Timestamp) -> Result<Vec<Command>, StoreError> {
        self.check_open()?;
        let rows = self
            .exec(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "UPDATE commands SET state = 'expired', updated_at = ?1, \
                         timestamps = json_set(timestamps, '$.expired', ?1), reason = ?2 \
                     WHERE state IN ('queued', 'sent') AND expires_at <= ?1 RETURNING {}",
                    commands::COLUMNS
                ))?;
                stmt.query_map(params![now.0, commands::EXPIRED], raw_command)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        let mut expired = into_commands(rows)?;
        expired.sort_by(|a, b| (&a.device, a.seq).cmp(&(&b.device, b.seq)));
        Ok(expired)
    }

    async fn command_prune(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.check_open()?;
        let deleted = self
            .exec(move |c| {
                c.prepare_cached(
                    "DELETE FROM commands WHERE updated_at < ?1 \
                     AND state NOT IN ('queued', 'sent', 'delivered')",
                )?
                .execute([before.0])
            })
            .await?;
        Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
    }
}

/// [`CommandStore::command_insert`] in one transaction (rolled back when refused).
fn insert(c: &mut Connection, cmd: &NewCommand, max: u64) -> rusqlite::Result<Decision> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let device = cmd.device.as_str();
    let exists = tx
        .prepare_cached("SELECT 1 FROM commands WHERE id = ?1")?
        .query_row([&cmd.id], |_| Ok(()))
        .optional()?;
    if exists.is_some() {
        return Ok(Decision::Duplicate);
    }
    let mut superseded: Vec<(i64, String)> = Vec::new();
    if let (commands::CommandMode::LatestWins, Some(key)) = (cmd.mode, &cmd.key) {
        let mut stmt = tx.prepare_cached(
            "UPDATE commands SET state = 'cancelled', reason = ?3, updated_at = ?4, \
                 timestamps = json_set(timestamps, '$.cancelled', ?4) \
             WHERE device = ?1 AND key = ?2 AND mode = 'latest_wins' AND state IN ('queued', 'sent') \
             RETURNING seq, id",
        )?;
        superseded = stmt
            .query_map(params![device, key, commands::SUPERSEDED, cmd.created_at.0], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        superseded.sort();
    }
    let open: i64 = tx
        .prepare_cached("SELECT count(*) FROM commands WHERE device = ?1 AND state IN ('queued', 'sent')")?
        .query_row([device], |r| r.get(0))?;
    let open = u64::try_from(open).unwrap_or(0);
    if open >= max {
        return Ok(Decision::Full(open));
    }
    let seq: i64 = tx
        .prepare_cached(
            "INSERT INTO command_seqs (device, last_seq) VALUES (?1, 1) \
             ON CONFLICT (device) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
        )?
        .query_row([device], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO commands (id, device, seq, mode, key, payload, topic, state, created_at, expires_at, \
             updated_at, timestamps, result, reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?9, ?8, ?10, NULL, NULL)",
    )?
    .execute(params![
        cmd.id,
        device,
        seq,
        cmd.mode.as_str(),
        cmd.key,
        cmd.payload.to_string(),
        cmd.topic,
        cmd.created_at.0,
        cmd.expires_at.map(|t| t.0),
        commands::initial_timestamps(cmd.created_at).to_string(),
    ])?;
    tx.commit()?;
    Ok(Decision::Accepted(seq, superseded.into_iter().map(|(_, id)| id).collect()))
}

type RawShadow = (serde_json::Value, serde_json::Value, i64, Option<i64>, Option<i64>);

fn raw_shadow(r: &Row<'_>) -> rusqlite::Result<RawShadow> {
    Ok((json(r, 0)?, json(r, 1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn into_shadow((desired, reported, version, desired_at, reported_at): RawShadow) -> Shadow {
    Shadow {
        desired,
        reported,
        version,
        desired_at: desired_at.map(Timestamp),
        reported_at: reported_at.map(Timestamp),
    }
}

impl SqliteStore {
    /// Replaces one side of a shadow, if the version is as expected.
    async fn shadow_set(
        &self,
        device: &DeviceId,
        side: Side,
        doc: &serde_json::Value,
        expected: Option<i64>,
        at: Timestamp,
    ) -> Result<Result<Shadow, ShadowConflict>, StoreError> {
        self.check_open()?;
        shadow::refuse_nul(doc)?;
        let (device, doc) = (device.as_str().to_owned(), doc.to_string());
        let result = self
            .exec(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let current: Option<i64> = tx
                    .prepare_cached("SELECT version FROM shadows WHERE device = ?1")?
                    .query_row([&device], |r| r.get(0))
                    .optional()?;
                if let Some(expected) = expected
                    && expected != current.unwrap_or(0)
                {
                    return Ok(Err(ShadowConflict { current_version: current.unwrap_or(0) }));
                }
                if current.is_none() {
                    tx.prepare_cached(
                        "INSERT INTO shadows (device, desired, reported, version) VALUES (?1, '{}', '{}', 0)",
                    )?
                    .execute([&device])?;
                }
                let row = tx
                    .prepare_cached(&format!(
                        "UPDATE shadows SET {} WHERE device = ?1 \
                         RETURNING desired, reported, version, desired_at, reported_at",
                        side.set_clause("?2", "?3")
                    ))?
                    .query_row(params![device, doc, at.0], raw_shadow)?;
                tx.commit()?;
                Ok(Ok(row))
            })
            .await?;
        Ok(result.map(into_shadow))
    }
}

impl ShadowStore for SqliteStore {
    async fn shadow_get(&self, device: &DeviceId) -> Result<Option<Shadow>, StoreError> {
        let device = device.as_str().to_owned();
        let row = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT desired, reported, version, desired_at, reported_at FROM shadows WHERE device = ?1",
                )?
                .query_row([device], raw_shadow)
                .optional()
            })
            .await?;
        Ok(row.map(into_shadow))
    }

    async fn shadow_set_desired(
        &self,
        device: &DeviceId,
        desired: serde_json::Value,
        expected_version: Option<i64>,
        at: Timestamp,
    ) -> Result<Result<Shadow, ShadowConflict>, StoreError> {
        self.shadow_set(device, Side::Desired, &desired, expected_version, at).await
    }

    async fn shadow_set_reported(
        &self,
        device: &DeviceId,
        reported: serde_json::Value,
        at: Timestamp,
    ) -> Result<Shadow, StoreError> {
        let set = self.shadow_set(device, Side::Reported, &reported, None, at).await?;
        set.map_err(|c| StoreError::Backend(format!("unconditional shadow write conflicted: {c:?}")))
    }

    async fn shadow_delete(&self, device: &DeviceId) -> Result<bool, StoreError> {
        self.check_open()?;
        let device = device.as_str().to_owned();
        let deleted =
            self.exec(move |c| c.execute("DELETE FROM shadows WHERE device = ?1", [device])).await?;
        Ok(deleted > 0)
    }
}

/// A row of [`outbox::COLUMNS`].
fn raw_entry(r: &Row<'_>) -> rusqlite::Result<RawEntry> {
    Ok(RawEntry {
        seq: r.get(0)?,
        id: r.get(1)?,
        endpoint: r.get(2)?,
        event_type: r.get(3)?,
        payload: json(r, 4)?,
        created_at: r.get(5)?,
        next_attempt_at: r.get(6)?,
        status: r.get(7)?,
        attempts: r.get(8)?,
        last_error: r.get(9)?,
        pending_since: r.get(10)?,
        finished_at: r.get(11)?,
    })
}

fn into_entries(rows: Vec<RawEntry>) -> Result<Vec<OutboxEntry>, StoreError> {
    rows.into_iter().map(RawEntry::into_entry).collect()
}

impl SqliteStore {
    /// One `UPDATE` of a pending delivery; whether it matched.
    async fn outbox_update(
        &self,
        sql: &'static str,
        id: &str,
        at: i64,
        error: Option<String>,
    ) -> Result<bool, StoreError> {
        self.check_open()?;
        if has_nul(id) {
            return Ok(false);
        }
        let id = id.to_owned();
        let error = error.map(commands::without_nul);
        let changed = self.exec(move |c| c.prepare_cached(sql)?.execute(params![id, at, error])).await?;
        Ok(changed > 0)
    }
}

impl OutboxStore for SqliteStore {
    async fn outbox_enqueue(&self, deliveries: Vec<Delivery>) -> Result<u64, StoreError> {
        self.check_open()?;
        outbox::refuse_nul(&deliveries)?;
        if deliveries.is_empty() {
            return Ok(0);
        }
        let added = self
            .exec(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut added = 0;
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO outbox (id, endpoint, event_type, payload, created_at, next_attempt_at, \
                             status, attempts, pending_since) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?5) ON CONFLICT (id) DO NOTHING",
                    )?;
                    for d in &deliveries {
                        added += insert.execute(params![
                            d.id,
                            d.endpoint,
                            d.event_type,
                            d.payload.to_string(),
                            d.created_at.0,
                            d.next_attempt_at.0
                        ])?;
                    }
                }
                tx.commit()?;
                Ok(added)
            })
            .await?;
        Ok(u64::try_from(added).unwrap_or(u64::MAX))
    }

    async fn outbox_due(
        &self,
        now: Timestamp,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?1 \
             ORDER BY next_attempt_at, seq LIMIT ?2",
            outbox::COLUMNS
        );
        let rows = if lease.is_zero() {
            self.read(move |c| {
                c.prepare_cached(&sql)?
                    .query_map(params![now.0, limit(max)], raw_entry)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?
        } else {
            self.check_open()?;
            let until = outbox::lease_end(now, lease);
            self.exec(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut rows = tx
                    .prepare_cached(&sql)?
                    .query_map(params![now.0, limit(max)], raw_entry)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                {
                    let mut claim =
                        tx.prepare_cached("UPDATE outbox SET next_attempt_at = ?2 WHERE seq = ?1")?;
                    for row in &mut rows {
                        claim.execute(params![row.seq, until])?;
                        row.next_attempt_at = until;
                    }
                }
                tx.commit()?;
                Ok(rows)
            })
            .await?
        };
        into_entries(rows)
    }

    async fn outbox_succeeded(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        self.outbox_update(
            "UPDATE outbox SET status = 'delivered', finished_at = ?2, attempts = attempts + 1, \
                 last_error = coalesce(?3, last_error) \
             WHERE id = ?1 AND status = 'pending'",
            id,
            at.0,
            None,
        )
        .await
    }

    async fn outbox_retry(
        &self,
        id: &str,
        next_attempt_at: Timestamp,
        last_error: String,
    ) -> Result<bool, StoreError> {
        self.outbox_update(
            "UPDATE outbox SET next_attempt_at = ?2, last_error = ?3, attempts = attempts + 1 \
             WHERE id = ?1 AND status = 'pending'",
            id,
            next_attempt_at.0,
            Some(last_error),
        )
        .await
    }

    async fn outbox_dead(&self, id: &str, at: Timestamp, last_error: String) -> Result<bool, StoreError> {
        self.outbox_update(
            "UPDATE outbox SET status = 'dead', finished_at = ?2, last_error = ?3, attempts = attempts + 1 \
             WHERE id = ?1 AND status = 'pending'",
            id,
            at.0,
            Some(last_error),
        )
        .await
    }

    async fn outbox_list(&self, query: OutboxQuery) -> Result<Vec<OutboxEntry>, StoreError> {
        if query.limit == 0 || has_nul(&query.endpoint) {
            return Ok(Vec::new());
        }
        let rows = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {} FROM outbox WHERE endpoint = ?1 AND (?2 IS NULL OR status = ?2) AND seq < ?3 \
                     ORDER BY seq DESC LIMIT ?4",
                    outbox::COLUMNS
                ))?;
                stmt.query_map(
                    params![
                        query.endpoint,
                        query.status.map(OutboxStatus::as_str),
                        query.before_seq.unwrap_or(i64::MAX),
                        limit(query.limit)
                    ],
                    raw_entry,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        into_entries(rows)
    }

    async fn outbox_replay(&self, endpoint: &str, which: Replay, now: Timestamp) -> Result<u64, StoreError> {
        self.check_open()?;
        let endpoint = endpoint.to_owned();
        let ids = match which {
            _ if has_nul(&endpoint) => return Ok(0),
            Replay::AllDead => None,
            Replay::Ids(mut ids) => {
                // an id holding U+0000 cannot be stored, so matches nothing
                ids.retain(|id| !has_nul(id));
                if ids.is_empty() {
                    return Ok(0);
                }
                Some(serde_json::Value::from(ids).to_string())
            }
        };
        let changed = self
            .exec(move |c| {
                c.prepare_cached(
                    "UPDATE outbox SET status = 'pending', next_attempt_at = ?2, attempts = 0, \
                         pending_since = ?2, finished_at = NULL \
                     WHERE endpoint = ?1 AND status = 'dead' \
                     AND (?3 IS NULL OR id IN (SELECT value FROM json_each(?3)))",
                )?
                .execute(params![endpoint, now.0, ids])
            })
            .await?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }

    async fn outbox_prune_delivered(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.check_open()?;
        let deleted = self
            .exec(move |c| {
                c.prepare_cached("DELETE FROM outbox WHERE status = 'delivered' AND finished_at < ?1")?
                    .execute([before.0])
            })
            .await?;
        Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
    }
}
