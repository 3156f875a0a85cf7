//! The PostgreSQL [`CommandStore`], [`ShadowStore`] and [`OutboxStore`], on the pool
//! (not through the telemetry writer task), one statement or one transaction per call,
//! committed before its future resolves.
//!
//! # Concurrency between nodes
//!
//! * A command insert first bumps the device's row in `command_seqs`; that row lock
//!   serializes the inserts of one device, so the queue limit count and the sequence
//!   number are exact however many nodes insert at once.
//! * Transitions and expiry are single `UPDATE`s whose `WHERE` holds the expected
//!   states: PostgreSQL re-checks it on the locked row, so of two racing transitions
//!   from the same state only one matches.
//! * A shadow write locks the shadow row (`FOR UPDATE`) between its version check and its
//!   write.
//! * Due deliveries are claimed with `FOR UPDATE SKIP LOCKED`, so two nodes polling at
//!   once take different deliveries.

use std::time::Duration;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{PgStore, backend};
use crate::commands::{
    self, Command, CommandQuery, CommandState, CommandStore, Decision, Inserted, NewCommand,
};
use crate::outbox::{self, Delivery, OutboxEntry, OutboxQuery, OutboxStatus, OutboxStore, RawEntry, Replay};
use crate::registry::has_nul;
use crate::shadow::{self, Shadow, ShadowConflict, ShadowStore, Side};
use crate::{StoreError, Timestamp};
use telehub_core::DeviceId;

/// A row of [`commands::COLUMNS`].
fn raw_command(r: &Row) -> commands::RawCommand {
    commands::RawCommand {
        id: r.get(0),
        device: r.get(1),
        seq: r.get(2),
        mode: r.get(3),
        key: r.get(4),
        payload: r.get(5),
        topic: r.get(6),
        state: r.get(7),
        created_at: r.get(8),
        expires_at: r.get(9),
        updated_at: r.get(10),
        timestamps: r.get(11),
        result: r.get(12),
        reason: r.get(13),
    }
}

fn into_commands(rows: &[Row]) -> Result<Vec<Command>, StoreError> {
    rows.iter().map(|r| raw_command(r).into_command()).collect()
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl CommandStore for PgStore {
    async fn command_insert(
        &self,
        cmd: NewCommand,
        max_queued_per_device: usize,
    ) -> Result<Inserted, StoreError> {
        self.check_open()?;
        commands::refuse_nul(&cmd)?;
        let max = u64::try_from(max_queued_per_device).unwrap_or(u64::MAX);
        let mut client = self.client().await?;
        // dropped without commit (refused, or an error below), the transaction rolls back
        let tx = client.transaction().await.map_err(backend)?;
        let device = cmd.device.as_str();
        let seq: i64 = tx
            .query_one(
                "INSERT INTO command_seqs (device, last_seq) VALUES ($1, 1) \
                 ON CONFLICT (device) DO UPDATE SET last_seq = command_seqs.last_seq + 1 RETURNING last_seq",
                &[&device],
            )
            .await
            .map_err(backend)?
            .get(0);
        if tx.query_opt("SELECT 1 FROM commands WHERE id = $1", &[&cmd.id]).await.map_err(backend)?.is_some()
        {
            return Ok(Inserted::DuplicateId);
        }
        let mut superseded: Vec<(i64, String)> = Vec::new();
        if let (commands::CommandMode::LatestWins, Some(key)) = (cmd.mode, &cmd.key) {
            let rows = tx
                .query(
                    "UPDATE commands SET state = 'cancelled', reason = $3, updated_at = $4, \
                         timestamps = timestamps || jsonb_build_object('cancelled', $4::int8) \
                     WHERE device = $1 AND key = $2 AND mode = 'latest_wins' AND state IN ('queued', 'sent') \
                     RETURNING seq, id",
                    &[&device, key, &commands::SUPERSEDED, &cmd.created_at.0],
                )
                .await
                .map_err(backend)?;
            superseded = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            superseded.sort();
        }
        let open: i64 = tx
            .query_one(
                "SELECT count(*)::int8 FROM commands WHERE device = $1 AND state IN ('queued', 'sent')",
                &[&device],
            )
            .await
            .map_err(backend)?
            .get(0);
        let open = u64::try_from(open).unwrap_or(0);
        if open >= max {
            return Ok(Inserted::QueueFull { open });
        }
        tx.execute(
            "INSERT INTO commands (id, device, seq, mode, key, payload, topic, state, created_at, expires_at, \
                 updated_at, timestamps, result, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $8, $10, NULL, NULL)",
            &[
                &cmd.id,
                &device,
                &seq,
                &cmd.mode.as_str(),
                &cmd.key,
                &cmd.payload,
                &cmd.topic,
                &cmd.created_at.0,
                &cmd.expires_at.map(|t| t.0),
                &commands::initial_timestamps(cmd.created_at),
            ],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(Decision::Accepted(seq, superseded.into_iter().map(|(_, id)| id).collect()).into_inserted(cmd))
    }

    async fn command_get(&self, id: &str) -> Result<Option<Command>, StoreError> {
        if has_nul(id) {
            return Ok(None);
        }
        let client = self.client().await?;
        let sql = format!("SELECT {} FROM commands WHERE id = $1", commands::COLUMNS);
        let row = client.query_opt(&sql, &[&id]).await.map_err(backend)?;
        row.map(|r| raw_command(&r).into_command()).transpose()
    }

    async fn command_list(&self, query: CommandQuery) -> Result<Vec<Command>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM commands WHERE device = $1 AND (cardinality($2::text[]) = 0 OR state = ANY($2)) \
             AND seq < $3 ORDER BY seq DESC LIMIT $4",
            commands::COLUMNS
        );
        let states = commands::names(&query.states);
        let before = query.before_seq.unwrap_or(i64::MAX);
        let rows = client
            .query(&sql, &[&query.device.as_str(), &states, &before, &limit(query.limit)])
            .await
            .map_err(backend)?;
        into_commands(&rows)
    }

    async fn command_pending(&self, device: &DeviceId, max: usize) -> Result<Vec<Command>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM commands WHERE device = $1 AND state IN ('queued', 'sent') ORDER BY seq LIMIT $2",
            commands::COLUMNS
        );
        let rows = client.query(&sql, &[&device.as_str(), &limit(max)]).await.map_err(backend)?;
        into_commands(&rows)
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
        let reason = reason.map(commands::without_nul);
        let client = self.client().await?;
        let sql = format!(
            "UPDATE commands SET state = $2, updated_at = $3, \
                 timestamps = timestamps || jsonb_build_object($2::text, $3::int8), \
                 result = coalesce($4, result), reason = coalesce($5, reason) \
             WHERE id = $1 AND state = ANY($6::text[]) RETURNING {}",
            commands::COLUMNS
        );
        let row = client
            .query_opt(&sql, &[&id, &to.as_str(), &at.0, &result, &reason, &commands::names(from)])
            .await
            .map_err(backend)?;
        row.map(|r| raw_command(&r).into_command()).transpose()
    }

    async fn command_expire(&self, now: Timestamp) -> Result<Vec<Command>, StoreError> {
        self.check_open()?;
        let client = self.client().await?;
        let sql = format!(
            "UPDATE commands SET state = 'expired', updated_at = $1, \
                 timestamps = timestamps || jsonb_build_object('expired', $1::int8), reason = $2 \
             WHERE state IN ('queued', 'sent') AND expires_at <= $1 RETURNING {}",
            commands::COLUMNS
        );
        let rows = client.query(&sql, &[&now.0, &commands::EXPIRED]).await.map_err(backend)?;
        let mut expired = into_commands(&rows)?;
        expired.sort_by(|a, b| (&a.device, a.seq).cmp(&(&b.device, b.seq)));
        Ok(expired)
    }

    async fn command_prune(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.check_open()?;
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM commands WHERE updated_at < $1 AND state NOT IN ('queued', 'sent', 'delivered')",
                &[&before.0],
            )
            .await
            .map_err(backend)
    }
}

const SHADOW_COLUMNS: &str = "desired, reported, version, desired_at, reported_at";

fn into_shadow(r: &Row) -> Shadow {
    Shadow {
        desired: r.get(0),
        reported: r.get(1),
        version: r.get(2),
        desired_at: r.get::<_, Option<i64>>(3).map(Timestamp),
        reported_at: r.get::<_, Option<i64>>(4).map(Timestamp),
    }
}

impl PgStore {
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
        let device = device.as_str();
        let mut client = self.client().await?;
        // dropped without commit (a conflict, or an error below), the transaction rolls
        // back, with the version-0 row it may have inserted
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute(
            "INSERT INTO shadows (device, desired, reported, version) VALUES ($1, '{}', '{}', 0) \
             ON CONFLICT (device) DO NOTHING",
            &[&device],
        )
        .await
        .map_err(backend)?;
        let current: i64 = tx
            .query_one("SELECT version FROM shadows WHERE device = $1 FOR UPDATE", &[&device])
            .await
            .map_err(backend)?
            .get(0);
        if expected.is_some_and(|v| v != current) {
            return Ok(Err(ShadowConflict { current_version: current }));
        }
        let sql = format!(
            "UPDATE shadows SET {} WHERE device = $1 RETURNING {SHADOW_COLUMNS}",
            side.set_clause("$2", "$3")
        );
        let row = tx.query_one(&sql, &[&device, doc, &at.0]).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(Ok(into_shadow(&row)))
    }
}

impl ShadowStore for PgStore {
    async fn shadow_get(&self, device: &DeviceId) -> Result<Option<Shadow>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {SHADOW_COLUMNS} FROM shadows WHERE device = $1");
        let row = client.query_opt(&sql, &[&device.as_str()]).await.map_err(backend)?;
        Ok(row.as_ref().map(into_shadow))
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
        let client = self.client().await?;
        let deleted = client
            .execute("DELETE FROM shadows WHERE device = $1", &[&device.as_str()])
            .await
            .map_err(backend)?;
        Ok(deleted > 0)
    }
}

/// A row of [`outbox::COLUMNS`].
fn raw_entry(r: &Row) -> RawEntry {
    RawEntry {
        seq: r.get(0),
        id: r.get(1),
        endpoint: r.get(2),
        event_type: r.get(3),
        payload: r.get(4),
        created_at: r.get(5),
        next_attempt_at: r.get(6),
        status: r.get(7),
        attempts: r.get(8),
        last_error: r.get(9),
        pending_since: r.get(10),
        finished_at: r.get(11),
    }
}

impl PgStore {
    /// One statement changing rows; how many.
    async fn outbox_execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.check_open()?;
        let client = self.client().await?;
        client.execute(sql, params).await.map_err(backend)
    }
}

impl OutboxStore for PgStore {
    async fn outbox_enqueue(&self, deliveries: Vec<Delivery>) -> Result<u64, StoreError> {
        self.check_open()?;
        outbox::refuse_nul(&deliveries)?;
        if deliveries.is_empty() {
            return Ok(0);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO outbox (id, endpoint, event_type, payload, created_at, next_attempt_at, status, \
                     attempts, pending_since) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $5) ON CONFLICT (id) DO NOTHING",
            )
            .await
            .map_err(backend)?;
        let mut added = 0;
        for d in &deliveries {
            added += tx
                .execute(
                    &insert,
                    &[&d.id, &d.endpoint, &d.event_type, &d.payload, &d.created_at.0, &d.next_attempt_at.0],
                )
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(added)
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
        let client = self.client().await?;
        let mut rows: Vec<(i64, RawEntry)> = if lease.is_zero() {
            let sql = format!(
                "SELECT {} FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at, seq LIMIT $2",
                outbox::COLUMNS
            );
            let rows = client.query(&sql, &[&now.0, &limit(max)]).await.map_err(backend)?;
            rows.iter().map(|r| (r.get::<_, i64>(6), raw_entry(r))).collect()
        } else {
            self.check_open()?;
            let columns: Vec<String> =
                outbox::COLUMNS.split(", ").map(|c| format!("o.{}", c.trim())).collect();
            let sql = format!(
                "WITH due AS (SELECT seq, next_attempt_at AS was FROM outbox \
                     WHERE status = 'pending' AND next_attempt_at <= $1 \
                     ORDER BY next_attempt_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE outbox o SET next_attempt_at = $3 FROM due WHERE o.seq = due.seq \
                 RETURNING {}, due.was",
                columns.join(", ")
            );
            let until = outbox::lease_end(now, lease);
            let rows = client.query(&sql, &[&now.0, &limit(max), &until]).await.map_err(backend)?;
            rows.iter().map(|r| (r.get::<_, i64>(12), raw_entry(r))).collect()
        };
        rows.sort_by_key(|(was, e)| (*was, e.seq));
        rows.into_iter().map(|(_, e)| e.into_entry()).collect()
    }

    async fn outbox_succeeded(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        self.check_open()?;
        if has_nul(id) {
            return Ok(false);
        }
        let sql = "UPDATE outbox SET status = 'delivered', finished_at = $2, attempts = attempts + 1 \
                   WHERE id = $1 AND status = 'pending'";
        Ok(self.outbox_execute(sql, &[&id, &at.0]).await? > 0)
    }

    async fn outbox_retry(
        &self,
        id: &str,
        next_attempt_at: Timestamp,
        last_error: String,
    ) -> Result<bool, StoreError> {
        self.check_open()?;
        if has_nul(id) {
            return Ok(false);
        }
        let sql = "UPDATE outbox SET next_attempt_at = $2, last_error = $3, attempts = attempts + 1 \
                   WHERE id = $1 AND status = 'pending'";
        let error = commands::without_nul(last_error);
        Ok(self.outbox_execute(sql, &[&id, &next_attempt_at.0, &error]).await? > 0)
    }

    async fn outbox_dead(&self, id: &str, at: Timestamp, last_error: String) -> Result<bool, StoreError> {
        self.check_open()?;
        if has_nul(id) {
            return Ok(false);
        }
        let sql = "UPDATE outbox SET status = 'dead', finished_at = $2, last_error = $3, attempts = attempts + 1 \
                   WHERE id = $1 AND status = 'pending'";
        let error = commands::without_nul(last_error);
        Ok(self.outbox_execute(sql, &[&id, &at.0, &error]).await? > 0)
    }

    async fn outbox_list(&self, query: OutboxQuery) -> Result<Vec<OutboxEntry>, StoreError> {
        if query.limit == 0 || has_nul(&query.endpoint) {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM outbox WHERE endpoint = $1 AND ($2::text IS NULL OR status = $2) AND seq < $3 \
             ORDER BY seq DESC LIMIT $4",
            outbox::COLUMNS
        );
        let status = query.status.map(OutboxStatus::as_str);
        let before = query.before_seq.unwrap_or(i64::MAX);
        let rows = client
            .query(&sql, &[&query.endpoint, &status, &before, &limit(query.limit)])
            .await
            .map_err(backend)?;
        rows.iter().map(|r| raw_entry(r).into_entry()).collect()
    }

    async fn outbox_replay(&self, endpoint: &str, which: Replay, now: Timestamp) -> Result<u64, StoreError> {
        let ids: Option<Vec<String>> = match which {
            _ if has_nul(endpoint) => return Ok(0),
            Replay::AllDead => None,
            Replay::Ids(mut ids) => {
                // an id holding U+0000 cannot be stored, so matches nothing
                ids.retain(|id| !has_nul(id));
                if ids.is_empty() {
                    return Ok(0);
                }
                Some(ids)
            }
        };
        let sql = "UPDATE outbox SET status = 'pending', next_attempt_at = $2, attempts = 0, \
                       pending_since = $2, finished_at = NULL \
                   WHERE endpoint = $1 AND status = 'dead' AND ($3::text[] IS NULL OR id = ANY($3))";
        self.outbox_execute(sql, &[&endpoint, &now.0, &ids]).await
    }

    async fn outbox_prune_delivered(&self, before: Timestamp) -> Result<u64, StoreError> {
        let sql = "DELETE FROM outbox WHERE status = 'delivered' AND finished_at < $1";
        self.outbox_execute(sql, &[&before.0]).await
    }
}
