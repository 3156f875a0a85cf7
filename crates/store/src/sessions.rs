//! [`SessionStore`]: the MQTT broker's durable state: retained messages, sessions that
//! outlive their connection, their queued and in-flight deliveries, and the QoS 2 packet
//! ids they received and have not released.
//!
//! The store keeps opaque bodies (the hub encodes them); it knows only the keys, the
//! order of deliveries (`seq`) and the in-flight mark of each delivery. Changes come in
//! batches ([`SessionStore::session_apply`]), each applied in one transaction, in order.

use std::future::Future;

use crate::StoreError;

/// One change of the broker's durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// Insert or replace the retained message of `topic`.
    PutRetained {
        /// Its topic.
        topic: String,
        /// The encoded message.
        body: Vec<u8>,
    },
    /// Delete the retained message of `topic` (nothing if there is none).
    DeleteRetained {
        /// Its topic.
        topic: String,
    },
    /// Insert or replace a session's own fields; its deliveries and packet ids stay.
    PutSession {
        /// Its client id.
        client_id: String,
        /// The encoded session.
        body: Vec<u8>,
    },
    /// Delete a session with its deliveries and packet ids.
    DeleteSession {
        /// Its client id.
        client_id: String,
    },
    /// Insert or replace a delivery (not in flight).
    PutMessage {
        /// Its session.
        client_id: String,
        /// Its position: unique and increasing across sessions.
        seq: i64,
        /// The encoded delivery.
        body: Vec<u8>,
    },
    /// Mark a delivery in flight with `packet_id` at `stage` (1: published, 2: PUBREL
    /// sent). Nothing happens if it is not stored.
    MarkMessage {
        /// Its session.
        client_id: String,
        /// Its position.
        seq: i64,
        /// Its packet id.
        packet_id: u16,
        /// Its stage.
        stage: u8,
    },
    /// Delete a delivery.
    DeleteMessage {
        /// Its session.
        client_id: String,
        /// Its position.
        seq: i64,
    },
    /// Record a QoS 2 packet id received from the session's client.
    AddIncomingQos2 {
        /// Its session.
        client_id: String,
        /// The packet id.
        packet_id: u16,
    },
    /// Forget a QoS 2 packet id (its PUBREL came).
    DeleteIncomingQos2 {
        /// Its session.
        client_id: String,
        /// The packet id.
        packet_id: u16,
    },
}

/// A stored delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its session.
    pub client_id: String,
    /// Its position.
    pub seq: i64,
    /// The encoded delivery.
    pub body: Vec<u8>,
    /// In flight with this packet id and stage, if it is.
    pub inflight: Option<(u16, u8)>,
}

/// What [`SessionStore::session_load`] reads: everything but the deliveries, which
/// [`SessionStore::session_messages`] reads page by page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// `(topic, body)`, by topic.
    pub retained: Vec<(String, Vec<u8>)>,
    /// `(client_id, body)`, by client id.
    pub sessions: Vec<(String, Vec<u8>)>,
    /// `(client_id, packet_id)`, by client id then packet id; only of stored sessions.
    pub incoming_qos2: Vec<(String, u16)>,
}

/// The MQTT broker's durable state.
///
/// Both methods are safe to call from many tasks, but the broker has one writer: the
/// order of batches is the order of its calls. A batch is durable when its future
/// resolves `Ok`, and is all or nothing.
pub trait SessionStore: Send + Sync + 'static {
    /// Reads everything but the deliveries (at start).
    fn session_load(&self) -> impl Future<Output = Result<SessionState, StoreError>> + Send;

    /// The deliveries of stored sessions after position `after` (`(client_id, seq)`;
    /// `None`: from the first), in `(client_id, seq)` order, at most `limit`. Start-up
    /// reads them a page at a time, never all at once.
    fn session_messages(
        &self,
        after: Option<(String, i64)>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + Send;

    /// Applies `changes` in order, in one transaction.
    fn session_apply(
        &self,
        changes: Vec<SessionChange>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Refuses a batch with a NUL character in a key (MQTT forbids U+0000 in client ids
/// and topics; PostgreSQL text cannot hold it), before anything is written.
pub(crate) fn refuse_nul(changes: &[SessionChange]) -> Result<(), StoreError> {
    let bad = changes.iter().any(|c| {
        let key = match c {
            SessionChange::PutRetained { topic, .. } | SessionChange::DeleteRetained { topic } => topic,
            SessionChange::PutSession { client_id, .. }
            | SessionChange::DeleteSession { client_id }
            | SessionChange::PutMessage { client_id, .. }
            | SessionChange::MarkMessage { client_id, .. }
            | SessionChange::DeleteMessage { client_id, .. }
            | SessionChange::AddIncomingQos2 { client_id, .. }
            | SessionChange::DeleteIncomingQos2 { client_id, .. } => client_id,
        };
        key.contains('\0')
    });
    if bad {
        return Err(StoreError::Backend("a session change contains a NUL character".into()));
    }
    Ok(())
}

/// The in-flight mark of a stored delivery, read back.
pub(crate) fn inflight(packet_id: Option<i64>, stage: i64) -> Option<(u16, u8)> {
    let packet_id = u16::try_from(packet_id?).ok()?;
    Some((packet_id, u8::try_from(stage).unwrap_or(1)))
}
