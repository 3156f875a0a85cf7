//! [`Stats`]: the broker's counters, shared lock-free by every connection.

use std::sync::atomic::{AtomicU64, Ordering};

use telehub_mqtt::QueueBudget;

/// Counters since start. Read with [`Stats::snapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) connections_current: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    pub(crate) messages_expired: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) messages_refused: AtomicU64,
    pub(crate) messages_quota_exceeded: AtomicU64,
    /// The payload bytes queued in every session, and their cap
    /// (`max_queued_bytes_total`); shared by every session.
    pub(crate) queue_budget: QueueBudget,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Clients connected now.
    pub connections_current: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// PUBLISH packets accepted from clients.
    pub messages_received: u64,
    /// PUBLISH packets written to clients.
    pub messages_sent: u64,
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Deliveries dropped for one session: its queue was full (in deliveries or bytes),
    /// or, with `drop_oldest`, evicted to make room, or the global cap was reached.
    pub messages_dropped: u64,
    /// Queued deliveries discarded because their Message Expiry Interval passed.
    pub messages_expired: u64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: u64,
    /// Sockets closed before any handshake because [`Authenticator::accept`] said no.
    ///
    /// [`Authenticator::accept`]: crate::Authenticator::accept
    pub connections_refused: u64,
    /// CONNECTs refused by the [`Authenticator`](crate::Authenticator): bad credentials,
    /// not authorized, connection rate, registry unavailable or too slow, or a will the
    /// client may not publish.
    pub auth_failures: u64,
    /// PUBLISH packets the [`Authenticator`](crate::Authenticator) refused: never
    /// routed, retained or offered to the ingest hook.
    pub messages_refused: u64,
    /// PUBLISH packets not routed to anyone because a queue limit was reached (the
    /// global cap, or with `queue_full = "refuse"` a matching session's queue): MQTT 5
    /// QoS 1/2 publishers were answered 0x97 (Quota exceeded), MQTT 3.x ones
    /// acknowledged, and QoS 0 messages dropped.
    pub messages_quota_exceeded: u64,
    /// Payload bytes queued now in every session together (gauge).
    pub queued_bytes: u64,
}

impl Stats {
    /// Zeroed counters, with a cap of `max_queued_bytes_total` on the bytes queued in
    /// every session together.
    pub(crate) fn with_queue_cap(max_queued_bytes_total: usize) -> Self {
        Self { queue_budget: QueueBudget::new(max_queued_bytes_total), ..Self::default() }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_current: get(&self.connections_current),
            connections_total: get(&self.connections_total),
            messages_received: get(&self.messages_received),
            messages_sent: get(&self.messages_sent),
            bytes_received: get(&self.bytes_received),
            bytes_sent: get(&self.bytes_sent),
            messages_dropped: get(&self.messages_dropped),
            messages_expired: get(&self.messages_expired),
            protocol_errors: get(&self.protocol_errors),
            connections_refused: get(&self.connections_refused),
            auth_failures: get(&self.auth_failures),
            messages_refused: get(&self.messages_refused),
            messages_quota_exceeded: get(&self.messages_quota_exceeded),
            queued_bytes: self.queue_budget.used() as u64,
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
