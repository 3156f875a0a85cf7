//! The PostgreSQL [`RegistryStore`]: registry entries and the audit log, on the pool
//! (registry writes are rare: they do not go through the telemetry writer task). Each
//! write is one transaction, committed before its future resolves.

use tokio_postgres::types::ToSql;

use super::{PgStore, backend};
use crate::registry::{self, Arg, AuditEvent, AuditQuery, AuditRow, Change, Entry, RegistryStore};
use crate::{StoreError, Timestamp};

impl PgStore {
    /// Refuses writes once [`PgStore::close`] began, as telemetry writes are.
    pub(super) fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.admission.is_closed() { Err(StoreError::Closed) } else { Ok(()) }
    }
}

impl RegistryStore for PgStore {
    async fn registry_load(&self) -> Result<Vec<Entry>, StoreError> {
        let client = self.client().await?;
        let rows =
            client.query("SELECT kind, id, owner, body FROM registry_entries", &[]).await.map_err(backend)?;
        let mut entries = rows
            .iter()
            .map(|r| {
                Ok(Entry {
                    kind: registry::stored_kind(r.get(0))?,
                    id: r.get(1),
                    owner: r.get(2),
                    body: r.get(3),
                })
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
        let mut client = self.client().await?;
        // dropped without commit (an error below), the transaction rolls back
        let tx = client.transaction().await.map_err(backend)?;
        let put = tx
            .prepare_cached(
                "INSERT INTO registry_entries (kind, id, owner, body, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (kind, id) DO UPDATE SET \
                     owner = excluded.owner, body = excluded.body, updated_at = excluded.updated_at",
            )
            .await
            .map_err(backend)?;
        let delete = tx
            .prepare_cached("DELETE FROM registry_entries WHERE kind = $1 AND id = $2")
            .await
            .map_err(backend)?;
        let delete_owned =
            tx.prepare_cached("DELETE FROM registry_entries WHERE owner = $1").await.map_err(backend)?;
        for change in &changes {
            match change {
                Change::Put(e) => tx.execute(&put, &[&e.kind.as_str(), &e.id, &e.owner, &e.body, &now]).await,
                Change::Delete { kind, id } => tx.execute(&delete, &[&kind.as_str(), id]).await,
                Change::DeleteOwned { owner } => tx.execute(&delete_owned, &[owner]).await,
            }
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn audit_append(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.check_open()?;
        registry::refuse_nul_in_events(&events)?;
        if events.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO audit_log (ts, actor, action, target, outcome, remote, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await
            .map_err(backend)?;
        for e in &events {
            tx.execute(&insert, &[&e.ts.0, &e.actor, &e.action, &e.target, &e.outcome, &e.remote, &e.detail])
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn audit_query(&self, query: AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let (sql, args) = registry::audit_select(&query, '$');
        let params: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| match a {
                Arg::Int(i) => i as &(dyn ToSql + Sync),
                Arg::Text(s) => s,
            })
            .collect();
        let client = self.client().await?;
        let rows = client.query(&sql, &params).await.map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                id: r.get(0),
                event: AuditEvent {
                    ts: Timestamp(r.get(1)),
                    actor: r.get(2),
                    action: r.get(3),
                    target: r.get(4),
                    outcome: r.get(5),
                    remote: r.get(6),
                    detail: r.get(7),
                },
            })
            .collect())
    }

    async fn audit_prune(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.check_open()?;
        let client = self.client().await?;
        client.execute("DELETE FROM audit_log WHERE ts < $1", &[&before.0]).await.map_err(backend)
    }
}
