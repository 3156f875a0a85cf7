//! The SQLite [`RegistryStore`]: registry entries and the audit log.
//!
//! # Write path
//!
//! Registry and audit writes run on the writer thread, as [`Job::Exec`](super::writer::Job)
//! jobs, each in its own `IMMEDIATE` transaction on the one write connection
//! (`synchronous=FULL`: fsynced before the caller is answered). Why not a second write
//! connection: SQLite has one write lock per file, which the group commit holds for a
//! whole batch; a second writer would wait on `busy_timeout` and fail with
//! `SQLITE_BUSY` when a batch outlasts it, and every telemetry batch would have to
//! handle the same from the other side. Through the writer thread there is a single
//! writer, so no lock to wait for and nothing to deadlock; registry writes are rare,
//! and simply queue behind the writes sent before them. Reads use the reader pool,
//! which sees every committed write (each query starts a fresh WAL snapshot).

use rusqlite::types::Value;
use rusqlite::{Connection, TransactionBehavior, params};

use super::SqliteStore;
use crate::registry::{self, Arg, AuditEvent, AuditQuery, AuditRow, Change, Entry, RegistryStore};
use crate::{StoreError, Timestamp};

impl SqliteStore {
    /// Refuses writes once [`SqliteStore::close`] began, as telemetry writes are.
    pub(super) fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.admission.is_closed() { Err(StoreError::Closed) } else { Ok(()) }
    }
}

impl RegistryStore for SqliteStore {
    async fn registry_load(&self) -> Result<Vec<Entry>, StoreError> {
        let rows = self
            .read(|c| {
                let mut stmt = c.prepare_cached("SELECT kind, id, owner, body FROM registry_entries")?;
                stmt.query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?))
                })?
                .collect::<rusqlite::Result<Vec<(String, String, Option<String>, String)>>>()
            })
            .await?;
        let mut entries = rows
            .into_iter()
            .map(|(kind, id, owner, body)| {
                Ok(Entry { kind: registry::stored_kind(&kind)?, id, owner, body: parse_json(&body)? })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        registry::sort_entries(&mut entries);
        Ok(entries)
    }

    async fn registry_apply(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        self.check_open()?;
        registry::refuse_nul_in_changes(&changes)?;
        if changes.is_empty() {
            return Ok(());
        }
        let now = crate::now_ms();
        self.exec(move |c| apply(c, &changes, now)).await
    }

    async fn audit_append(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.check_open()?;
        registry::refuse_nul_in_events(&events)?;
        if events.is_empty() {
            return Ok(());
        }
        self.exec(move |c| append(c, &events)).await
    }

    async fn audit_query(&self, query: AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let (sql, args) = registry::audit_select(&query, '?');
        let args: Vec<Value> = args
            .into_iter()
            .map(|a| match a {
                Arg::Int(i) => Value::Integer(i),
                Arg::Text(s) => Value::Text(s),
            })
            .collect();
        type Raw = (i64, i64, String, String, String, String, Option<String>, String);
        let rows = self
            .read(move |c| {
                // up to 2^6 shapes, each rare: not worth a slot in the statement cache
                let mut stmt = c.prepare(&sql)?;
                stmt.query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<Raw>>>()
            })
            .await?;
        rows.into_iter()
            .map(|(id, ts, actor, action, target, outcome, remote, detail)| {
                Ok(AuditRow {
                    id,
                    event: AuditEvent {
                        ts: Timestamp(ts),
                        actor,
                        action,
                        target,
                        outcome,
                        remote,
                        detail: parse_json(&detail)?,
                    },
                })
            })
            .collect()
    }

    async fn audit_prune(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.check_open()?;
        let deleted =
            self.exec(move |c| c.execute("DELETE FROM audit_log WHERE ts < ?1", [before.0])).await?;
        Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
    }
}

/// `changes`, in order, in one transaction (rolled back on the first error).
fn apply(c: &mut Connection, changes: &[Change], now: i64) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO registry_entries (kind, id, owner, body, updated_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (kind, id) DO UPDATE SET \
                 owner = excluded.owner, body = excluded.body, updated_at = excluded.updated_at",
        )?;
        let mut delete = tx.prepare_cached("DELETE FROM registry_entries WHERE kind = ?1 AND id = ?2")?;
        let mut delete_owned = tx.prepare_cached("DELETE FROM registry_entries WHERE owner = ?1")?;
        for change in changes {
            match change {
                Change::Put(e) => {
                    put.execute(params![e.kind.as_str(), e.id, e.owner, e.body.to_string(), now])?;
                }
                Change::Delete { kind, id } => {
                    delete.execute(params![kind.as_str(), id])?;
                }
                Change::DeleteOwned { owner } => {
                    delete_owned.execute([owner])?;
                }
            }
        }
    }
    tx.commit()
}

/// `events` in one transaction.
fn append(c: &mut Connection, events: &[AuditEvent]) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit_log (ts, actor, action, target, outcome, remote, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for e in events {
            insert.execute(params![
                e.ts.0,
                e.actor,
                e.action,
                e.target,
                e.outcome,
                e.remote,
                e.detail.to_string()
            ])?;
        }
    }
    tx.commit()
}

fn parse_json(text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("stored JSON is invalid: {e}")))
}
