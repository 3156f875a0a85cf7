//! [`OutboxStore`]: the durable outbox of outbound webhook deliveries. A delivery is
//! `pending` from the moment it is enqueued (committed) until it is `delivered` or
//! `dead` (the dead-letter list, from which it can be replayed). Due deliveries are
//! claimed for a lease, so two pollers (or two nodes) do not send the same delivery at
//! once, and one that dies mid-delivery leaves it due again when the lease ends.

use std::future::Future;
use std::time::Duration;

use crate::{StoreError, Timestamp};

/// One delivery to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Its id, unique among all deliveries (the `webhook-id` the receiver dedupes by).
    pub id: String,
    /// The webhook endpoint (its registry id) it goes to.
    pub endpoint: String,
    /// What happened (`message`, `device.connected`, `command.state`…).
    pub event_type: String,
    /// The body.
    pub payload: serde_json::Value,
    /// When the event happened.
    pub created_at: Timestamp,
    /// When to make the first attempt.
    pub next_attempt_at: Timestamp,
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    /// Waiting for its next attempt.
    Pending,
    /// Accepted by the receiver.
    Delivered,
    /// Given up on: the dead-letter list.
    Dead,
}

impl OutboxStatus {
    /// The name stored in the database (and used by the API).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "dead" => Self::Dead,
            _ => return None,
        })
    }
}

/// A stored delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Increasing with enqueue order; the paging cursor of [`OutboxQuery`].
    pub seq: i64,
    /// The delivery (`next_attempt_at` as stored now).
    pub delivery: Delivery,
    /// Where it is.
    pub status: OutboxStatus,
    /// Attempts made (since the last replay).
    pub attempts: u32,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// Since when it has been pending: `created_at`, or the time of its last replay.
    /// The dispatcher measures a delivery's maximum age from here.
    pub pending_since: Timestamp,
    /// When it was delivered or given up on.
    pub finished_at: Option<Timestamp>,
}

/// Deliveries of one endpoint, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxQuery {
    /// The endpoint.
    pub endpoint: String,
    /// Only deliveries with this status (all when `None`).
    pub status: Option<OutboxStatus>,
    /// Only deliveries with a smaller `seq` (the next page).
    pub before_seq: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// Which dead deliveries [`OutboxStore::outbox_replay`] makes pending again.
#[derive(Debug, Clone, PartialEq)]
pub enum Replay {
    /// These (those of them that are dead and belong to the endpoint).
    Ids(Vec<String>),
    /// Every dead delivery of the endpoint.
    AllDead,
}

/// The webhook outbox.
///
/// Every method is safe to call from many tasks (and nodes) at once, and durable when
/// its future resolves `Ok`. Ids, endpoints, event types and payloads holding U+0000
/// are refused with [`StoreError::Backend`] on both backends; in an error text it is
/// replaced by U+FFFD.
pub trait OutboxStore: Send + Sync + 'static {
    /// Enqueues `deliveries` as pending, in one transaction. A delivery whose id is
    /// already stored is skipped (enqueueing is idempotent); returns how many were new.
    fn outbox_enqueue(
        &self,
        deliveries: Vec<Delivery>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Claims up to `limit` pending deliveries with `next_attempt_at <= now`, earliest
    /// `next_attempt_at` first (then enqueue order): moves their `next_attempt_at` to
    /// `now + lease` and returns them so. A zero lease only reads them.
    fn outbox_due(
        &self,
        now: Timestamp,
        limit: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;

    /// Records a successful attempt of a pending delivery: `delivered` at `at`, one more
    /// attempt. Whether it was pending.
    fn outbox_succeeded(
        &self,
        id: &str,
        at: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records a failed attempt of a pending delivery: one more attempt, the error, and
    /// the time of the next one. Whether it was pending.
    fn outbox_retry(
        &self,
        id: &str,
        next_attempt_at: Timestamp,
        last_error: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records the failed attempt after which a pending delivery is given up on: `dead`
    /// at `at`, one more attempt, the error. Whether it was pending.
    fn outbox_dead(
        &self,
        id: &str,
        at: Timestamp,
        last_error: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A page of an endpoint's deliveries, newest (greatest `seq`) first.
    fn outbox_list(
        &self,
        query: OutboxQuery,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;

    /// Makes dead deliveries of `endpoint` pending again, due at `now`, with no attempts
    /// and `pending_since = now` (the last error is kept); returns how many.
    fn outbox_replay(
        &self,
        endpoint: &str,
        which: Replay,
        now: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes delivered deliveries finished before `before` (dead ones are kept);
    /// returns how many.
    fn outbox_prune_delivered(
        &self,
        before: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The columns every outbox query selects, in [`RawEntry`] order.
pub(crate) const COLUMNS: &str = "seq, id, endpoint, event_type, payload, created_at, next_attempt_at, status, \
     attempts, last_error, pending_since, finished_at";

/// An outbox row as read, before its status is checked.
pub(crate) struct RawEntry {
    pub(crate) seq: i64,
    pub(crate) id: String,
    pub(crate) endpoint: String,
    pub(crate) event_type: String,
    pub(crate) payload: serde_json::Value,
    pub(crate) created_at: i64,
    pub(crate) next_attempt_at: i64,
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) last_error: Option<String>,
    pub(crate) pending_since: i64,
    pub(crate) finished_at: Option<i64>,
}

impl RawEntry {
    pub(crate) fn into_entry(self) -> Result<OutboxEntry, StoreError> {
        let status = OutboxStatus::parse(&self.status).ok_or_else(|| {
            StoreError::Backend(format!("stored delivery {:?}: unknown status {:?}", self.id, self.status))
        })?;
        Ok(OutboxEntry {
            seq: self.seq,
            delivery: Delivery {
                id: self.id,
                endpoint: self.endpoint,
                event_type: self.event_type,
                payload: self.payload,
                created_at: Timestamp(self.created_at),
                next_attempt_at: Timestamp(self.next_attempt_at),
            },
            status,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            last_error: self.last_error,
            pending_since: Timestamp(self.pending_since),
            finished_at: self.finished_at.map(Timestamp),
        })
    }
}

/// Refuses deliveries holding U+0000 (see [`OutboxStore`]).
pub(crate) fn refuse_nul(deliveries: &[Delivery]) -> Result<(), StoreError> {
    use crate::registry::{has_nul, json_has_nul};
    let bad = deliveries.iter().any(|d| {
        has_nul(&d.id) || has_nul(&d.endpoint) || has_nul(&d.event_type) || json_has_nul(&d.payload)
    });
    if bad {
        return Err(StoreError::Backend("a delivery contains a NUL character".into()));
    }
    Ok(())
}

/// `now + lease` in milliseconds, saturating.
pub(crate) fn lease_end(now: Timestamp, lease: Duration) -> i64 {
    now.0.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}
