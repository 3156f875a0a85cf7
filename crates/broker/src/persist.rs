//! [`Persistence`]: how the broker keeps its state on disk without knowing the disk.
//!
//! The broker records every change of durable state as an [`Op`], in the order the
//! in-memory state changed (each op is recorded under the lock that guards what it
//! describes), and asks for a [`Persistence::flush`] future when an acknowledgement must
//! wait for durability: a QoS 1/2 PUBACK/PUBREC is held until every op its PUBLISH
//! caused is committed, through the same held-acknowledgement path as the ingest hook.
//!
//! What is durable: retained messages; sessions that outlive their connection (MQTT 3.x
//! clean session 0, MQTT 5 session expiry > 0) with their expiry, disconnect time and
//! subscriptions; their queued and in-flight QoS 1/2 deliveries; the QoS 2 packet ids
//! they received and have not released. Sessions with expiry 0 and QoS 0 deliveries
//! never reach it.
//!
//! At start the implementation loads a [`Snapshot`], which
//! [`Broker::restore`](crate::Broker::restore) puts back: restored sessions are offline
//! until their clients reconnect, and their expiry runs from the disconnect time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use telehub_core::{ClientId, Message, QoS, TopicFilter, TopicName};
use telehub_mqtt::BrokerTime;
pub use telehub_mqtt::{InflightStage, SubOptions};

use crate::hook::IngestError;

/// Resolves when the ops it covers are durable (or could not be written).
pub type PersistAck = Pin<Box<dyn Future<Output = Result<(), IngestError>> + Send + 'static>>;

/// A retained message as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedRecord {
    /// The message (its topic is the key).
    pub message: Arc<Message>,
    /// When it expires (MQTT 5 Message Expiry Interval), in wall-clock time.
    pub expires_at: Option<SystemTime>,
}

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The filter as subscribed (`$share/{group}/{filter}` for a shared one).
    pub filter: TopicFilter,
    /// Its options.
    pub options: SubOptions,
    /// Its MQTT 5 Subscription Identifier.
    pub subscription_id: Option<u32>,
}

/// A session's own fields (what [`Op::PutSession`] writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Its client id (the key).
    pub client_id: ClientId,
    /// How long it outlives its connection; `None`: until a clean session replaces it.
    pub expiry: Option<Duration>,
    /// When its client disconnected; `None` while connected.
    pub disconnected_at: Option<SystemTime>,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionRecord>,
}

/// A QoS 1/2 delivery waiting in, or in flight from, a durable session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Unique among every session's deliveries and increasing: the delivery order.
    pub seq: u64,
    /// The message.
    pub message: Arc<Message>,
    /// The delivery's QoS (1 or 2).
    pub qos: QoS,
    /// The RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers to send.
    pub subscription_ids: Vec<u32>,
    /// When it expires, in wall-clock time.
    pub expires_at: Option<SystemTime>,
    /// In flight with this packet id, at this stage; `None` while queued.
    pub inflight: Option<(u16, InflightStage)>,
}

/// A durable session with everything that belongs to it, as loaded at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The session.
    pub session: SessionRecord,
    /// Its deliveries, by `seq`.
    pub messages: Vec<MessageRecord>,
    /// QoS 2 packet ids received from its client and not yet released.
    pub incoming_qos2: Vec<u16>,
}

/// Everything the broker keeps on disk, as loaded at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Retained messages.
    pub retained: Vec<RetainedRecord>,
    /// Durable sessions.
    pub sessions: Vec<StoredSession>,
}

/// One change of durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set or replace the retained message of its topic.
    PutRetained(RetainedRecord),
    /// Clear the retained message of a topic.
    DeleteRetained(TopicName),
    /// Insert or replace a session's fields (its deliveries stay).
    PutSession(SessionRecord),
    /// Delete a session with its deliveries and QoS 2 packet ids.
    DeleteSession(ClientId),
    /// Insert (or replace) a delivery of a session.
    PutMessage(ClientId, MessageRecord),
    /// A delivery was sent with this packet id, or its PUBREL was.
    MarkMessage {
        /// The session.
        client_id: ClientId,
        /// The delivery.
        seq: u64,
        /// Its packet id.
        packet_id: u16,
        /// Its stage.
        stage: InflightStage,
    },
    /// A delivery left the session (acknowledged, dropped, expired).
    DeleteMessage(ClientId, u64),
    /// A QoS 2 PUBLISH with this packet id was received (PUBREC follows).
    AddIncomingQos2(ClientId, u16),
    /// Its PUBREL was received.
    DeleteIncomingQos2(ClientId, u16),
}

/// Where the broker keeps its durable state (see the module docs).
///
/// `record` is called under the broker's locks: it must not block or wait. Ops are
/// committed in the order recorded, a prefix at a time, except that ops recorded while
/// a hold is open ([`Persistence::hold`]) are committed together with everything
/// recorded before the hold was released.
pub trait Persistence: Send + Sync + 'static {
    /// Appends `op` after every op recorded before it.
    fn record(&self, op: Op);

    /// Resolves `Ok` once every op recorded before this call is durable; `Err` if one
    /// of them could not be written.
    fn flush(&self) -> PersistAck;

    /// True while the journal of ops not yet committed is under its bound.
    fn has_room(&self) -> bool;

    /// Resolves when [`Persistence::has_room`] may be true again (publishers wait here
    /// before routing when it is false).
    fn room(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// Opens a hold: nothing recorded from now on is committed until it is released,
    /// so the ops of one QoS 2 PUBLISH (its packet id and its deliveries) are durable
    /// together or not at all.
    fn hold(&self) -> u64;

    /// Releases a hold from [`Persistence::hold`].
    fn release(&self, hold: u64);
}

/// Releases a hold when dropped.
pub(crate) struct Hold<'a> {
    persist: &'a dyn Persistence,
    id: u64,
}

impl<'a> Hold<'a> {
    pub(crate) fn new(persist: &'a dyn Persistence) -> Self {
        Self { persist, id: persist.hold() }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.persist.release(self.id);
    }
}

/// Converts between the broker's monotonic clock and wall-clock time, for expiry
/// times that must keep running across a restart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) broker: BrokerTime,
    pub(crate) wall: SystemTime,
}

impl Clock {
    /// The wall-clock time of `t`.
    pub(crate) fn to_wall(self, t: BrokerTime) -> SystemTime {
        match t.0.checked_sub(self.broker.0) {
            Some(ahead) => self.wall + ahead,
            None => self.wall.checked_sub(self.broker.0 - t.0).unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    /// The broker time of wall-clock time `at` (the broker's start when before it).
    pub(crate) fn to_broker(self, at: SystemTime) -> BrokerTime {
        match at.duration_since(self.wall) {
            Ok(ahead) => BrokerTime(self.broker.0 + ahead),
            Err(e) => BrokerTime(self.broker.0.saturating_sub(e.duration())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_round_trips_and_clamps_before_the_start() {
        let clock = Clock { broker: BrokerTime(Duration::from_secs(10)), wall: SystemTime::now() };
        let t = BrokerTime(Duration::from_secs(25));
        assert_eq!(clock.to_broker(clock.to_wall(t)), t);
        let early = BrokerTime(Duration::from_secs(4));
        assert_eq!(clock.to_broker(clock.to_wall(early)), early);
        let long_ago = clock.wall - Duration::from_secs(3600);
        assert_eq!(clock.to_broker(long_ago), BrokerTime(Duration::ZERO));
    }
}
