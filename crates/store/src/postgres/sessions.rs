//! The PostgreSQL [`SessionStore`], on the pool: a batch is one transaction, committed
//! before its future resolves.

use super::{PgStore, backend};
use crate::StoreError;
use crate::sessions::{self, SessionChange, SessionState, SessionStore, StoredMessage};

impl SessionStore for PgStore {
    async fn session_load(&self) -> Result<SessionState, StoreError> {
        let client = self.client().await?;
        let pairs = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, Vec<u8>)> {
            rows.iter().map(|r| (r.get(0), r.get(1))).collect()
        };
        let retained = pairs(
            client
                .query("SELECT topic, body FROM mqtt_retained ORDER BY topic", &[])
                .await
                .map_err(backend)?,
        );
        let sessions = pairs(
            client
                .query("SELECT client_id, body FROM mqtt_sessions ORDER BY client_id", &[])
                .await
                .map_err(backend)?,
        );
        let incoming_qos2 = client
            .query(
                "SELECT q.client_id, q.packet_id FROM mqtt_incoming_qos2 q \
                 JOIN mqtt_sessions s ON s.client_id = q.client_id ORDER BY q.client_id, q.packet_id",
                &[],
            )
            .await
            .map_err(backend)?
            .iter()
            .filter_map(|r| u16::try_from(r.get::<_, i32>(1)).ok().map(|id| (r.get(0), id)))
            .collect();
        Ok(SessionState { retained, sessions, incoming_qos2 })
    }

    async fn session_messages(
        &self,
        after: Option<(String, i64)>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let client = self.client().await?;
        let first = after.is_none();
        let (client_id, seq) = after.unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(client
            .query(
                "SELECT m.client_id, m.seq, m.body, m.packet_id, m.stage FROM mqtt_messages m \
                 JOIN mqtt_sessions s ON s.client_id = m.client_id \
                 WHERE $1 OR m.client_id > $2 OR (m.client_id = $2 AND m.seq > $3) \
                 ORDER BY m.client_id, m.seq LIMIT $4",
                &[&first, &client_id, &seq, &limit],
            )
            .await
            .map_err(backend)?
            .iter()
            .map(|r| StoredMessage {
                client_id: r.get(0),
                seq: r.get(1),
                body: r.get(2),
                inflight: sessions::inflight(
                    r.get::<_, Option<i32>>(3).map(i64::from),
                    i64::from(r.get::<_, i16>(4)),
                ),
            })
            .collect())
    }

    async fn session_apply(&self, changes: Vec<SessionChange>) -> Result<(), StoreError> {
        self.check_open()?;
        sessions::refuse_nul(&changes)?;
        if changes.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        // dropped without commit (an error below), the transaction rolls back
        let tx = client.transaction().await.map_err(backend)?;
        for change in &changes {
            match change {
                SessionChange::PutRetained { topic, body } => {
                    let sql = "INSERT INTO mqtt_retained (topic, body) VALUES ($1, $2) \
                               ON CONFLICT (topic) DO UPDATE SET body = excluded.body";
                    let stmt = tx.prepare_cached(sql).await.map_err(backend)?;
                    tx.execute(&stmt, &[topic, body]).await
                }
                SessionChange::DeleteRetained { topic } => {
                    let stmt = tx
                        .prepare_cached("DELETE FROM mqtt_retained WHERE topic = $1")
                        .await
                        .map_err(backend)?;
                    tx.execute(&stmt, &[topic]).await
                }
                SessionChange::PutSession { client_id, body } => {
                    let sql = "INSERT INTO mqtt_sessions (client_id, body) VALUES ($1, $2) \
                               ON CONFLICT (client_id) DO UPDATE SET body = excluded.body";
                    let stmt = tx.prepare_cached(sql).await.map_err(backend)?;
                    tx.execute(&stmt, &[client_id, body]).await
                }
                SessionChange::DeleteSession { client_id } => {
                    let sql = "WITH m AS (DELETE FROM mqtt_messages WHERE client_id = $1), \
                               q AS (DELETE FROM mqtt_incoming_qos2 WHERE client_id = $1) \
                               DELETE FROM mqtt_sessions WHERE client_id = $1";
                    let stmt = tx.prepare_cached(sql).await.map_err(backend)?;
                    tx.execute(&stmt, &[client_id]).await
                }
                SessionChange::PutMessage { client_id, seq, body } => {
                    let sql = "INSERT INTO mqtt_messages (client_id, seq, body, packet_id, stage) \
                               VALUES ($1, $2, $3, NULL, 0) ON CONFLICT (client_id, seq) DO UPDATE SET \
                               body = excluded.body, packet_id = NULL, stage = 0";
                    let stmt = tx.prepare_cached(sql).await.map_err(backend)?;
                    tx.execute(&stmt, &[client_id, seq, body]).await
                }
                SessionChange::MarkMessage { client_id, seq, packet_id, stage } => {
                    let sql = "UPDATE mqtt_messages SET packet_id = $3, stage = $4 \
                               WHERE client_id = $1 AND seq = $2";
                    let stmt = tx.prepare_cached(sql).await.map_err(backend)?;
                    tx.execute(&stmt, &[client_id, seq, &i32::from(*packet_id), &i16::from(*stage)]).await
                }
                SessionChange::DeleteMessage { client_id, seq } => {
                    let sql = "DELETE FROM mqtt_messages WHERE client_id = $1 AND seq = $2";
                    let stmt = tx.prepare_cached(sql).await.map_err(backend)?;
                    tx.execute(&stmt, &[client_id, seq]).await
                }
                SessionChange::AddIncomingQos2 { client_id, packet_id } => {
                    let sql = "INSERT INTO mqtt_incoming_qos2 (client_id, packet_id) VALUES ($1, $2) \
                               ON CONFLICT DO NOTHING";
                    let stmt = tx.prepare_cached(sql).await.map_err(backend)?;
                    tx.execute(&stmt, &[client_id, &i32::from(*packet_id)]).await
                }
                SessionChange::DeleteIncomingQos2 { client_id, packet_id } => {
                    let sql = "DELETE FROM mqtt_incoming_qos2 WHERE client_id = $1 AND packet_id = $2";
                    let stmt = tx.prepare_cached(sql).await.map_err(backend)?;
                    tx.execute(&stmt, &[client_id, &i32::from(*packet_id)]).await
                }
            }
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
}
