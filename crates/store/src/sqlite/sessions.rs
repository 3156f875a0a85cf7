//! The SQLite [`SessionStore`]: a batch is one `IMMEDIATE` transaction on the writer
//! thread (a [`Job::Exec`](super::writer::Job)), fsynced before the caller is answered;
//! the load reads through the reader pool.

use rusqlite::{Connection, TransactionBehavior, params};

use super::SqliteStore;
use crate::StoreError;
use crate::sessions::{self, SessionChange, SessionState, SessionStore, StoredMessage};

impl SessionStore for SqliteStore {
    async fn session_load(&self) -> Result<SessionState, StoreError> {
        self.read(|c| {
            let pairs = |sql: &str| -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
                let mut stmt = c.prepare(sql)?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
            };
            let retained = pairs("SELECT topic, body FROM mqtt_retained ORDER BY topic")?;
            let sessions = pairs("SELECT client_id, body FROM mqtt_sessions ORDER BY client_id")?;
            let mut stmt = c.prepare(
                "SELECT q.client_id, q.packet_id FROM mqtt_incoming_qos2 q \
                 JOIN mqtt_sessions s ON s.client_id = q.client_id ORDER BY q.client_id, q.packet_id",
            )?;
            let incoming_qos2 = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .filter_map(|r| match r {
                    Ok((c, id)) => u16::try_from(id).ok().map(|id| Ok((c, id))),
                    Err(e) => Some(Err(e)),
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(SessionState { retained, sessions, incoming_qos2 })
        })
        .await
    }

    async fn session_messages(
        &self,
        after: Option<(String, i64)>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let first = after.is_none();
        let (client_id, seq) = after.unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT m.client_id, m.seq, m.body, m.packet_id, m.stage FROM mqtt_messages m \
                 JOIN mqtt_sessions s ON s.client_id = m.client_id \
                 WHERE ?1 OR m.client_id > ?2 OR (m.client_id = ?2 AND m.seq > ?3) \
                 ORDER BY m.client_id, m.seq LIMIT ?4",
            )?;
            stmt.query_map(rusqlite::params![first, client_id, seq, limit], |r| {
                Ok(StoredMessage {
                    client_id: r.get(0)?,
                    seq: r.get(1)?,
                    body: r.get(2)?,
                    inflight: sessions::inflight(r.get(3)?, r.get(4)?),
                })
            })?
            .collect()
        })
        .await
    }

    async fn session_apply(&self, changes: Vec<SessionChange>) -> Result<(), StoreError> {
        self.check_open()?;
        sessions::refuse_nul(&changes)?;
        if changes.is_empty() {
            return Ok(());
        }
        self.exec(move |c| apply(c, &changes)).await
    }
}

fn apply(c: &mut Connection, changes: &[SessionChange]) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for change in changes {
        match change {
            SessionChange::PutRetained { topic, body } => tx
                .prepare_cached("INSERT OR REPLACE INTO mqtt_retained (topic, body) VALUES (?1, ?2)")?
                .execute(params![topic, body])?,
            SessionChange::DeleteRetained { topic } => {
                tx.prepare_cached("DELETE FROM mqtt_retained WHERE topic = ?1")?.execute([topic])?
            }
            SessionChange::PutSession { client_id, body } => tx
                .prepare_cached("INSERT OR REPLACE INTO mqtt_sessions (client_id, body) VALUES (?1, ?2)")?
                .execute(params![client_id, body])?,
            SessionChange::DeleteSession { client_id } => {
                tx.prepare_cached("DELETE FROM mqtt_messages WHERE client_id = ?1")?.execute([client_id])?;
                tx.prepare_cached("DELETE FROM mqtt_incoming_qos2 WHERE client_id = ?1")?
                    .execute([client_id])?;
                tx.prepare_cached("DELETE FROM mqtt_sessions WHERE client_id = ?1")?.execute([client_id])?
            }
            SessionChange::PutMessage { client_id, seq, body } => tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO mqtt_messages (client_id, seq, body, packet_id, stage) \
                     VALUES (?1, ?2, ?3, NULL, 0)",
                )?
                .execute(params![client_id, seq, body])?,
            SessionChange::MarkMessage { client_id, seq, packet_id, stage } => tx
                .prepare_cached(
                    "UPDATE mqtt_messages SET packet_id = ?3, stage = ?4 WHERE client_id = ?1 AND seq = ?2",
                )?
                .execute(params![client_id, seq, packet_id, stage])?,
            SessionChange::DeleteMessage { client_id, seq } => tx
                .prepare_cached("DELETE FROM mqtt_messages WHERE client_id = ?1 AND seq = ?2")?
                .execute(params![client_id, seq])?,
            SessionChange::AddIncomingQos2 { client_id, packet_id } => tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO mqtt_incoming_qos2 (client_id, packet_id) VALUES (?1, ?2)",
                )?
                .execute(params![client_id, packet_id])?,
            SessionChange::DeleteIncomingQos2 { client_id, packet_id } => tx
                .prepare_cached("DELETE FROM mqtt_incoming_qos2 WHERE client_id = ?1 AND packet_id = ?2")?
                .execute(params![client_id, packet_id])?,
        };
    }
    tx.commit()
}
