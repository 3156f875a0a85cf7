//! One client's session, sans I/O: the bounded queue of deliveries waiting to be sent,
//! the in-flight window of QoS 1/2 deliveries awaiting acknowledgement, packet-id
//! allocation, the QoS 2 packet ids received but not yet released, and redelivery with
//! DUP when the client reconnects.
//!
//! The broker keeps a `Session` per client id behind a mutex; publishers call
//! [`Session::enqueue`], the client's connection calls [`Session::next_outgoing`] and the
//! `on_*` acknowledgement handlers. Nothing here blocks or does I/O.
//!
//! Queued deliveries are bounded per session in number and in payload bytes
//! ([`SessionLimits`]), and across every session by a shared [`QueueBudget`]: each queue
//! adds what it takes to the budget and gives it back when the delivery leaves the
//! queue (sent, dropped, expired, cleared, or the session dropped).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use telehub_core::{Message, QoS};

use crate::{Outbound, ProtocolError};

/// What to do when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Refuse the new delivery (the oldest queued messages are kept).
    #[default]
    DropNew,
    /// Drop the oldest queued delivery to make room for the new one.
    DropOldest,
    /// Refuse the new delivery, like [`OverflowPolicy::DropNew`]; the broker also
    /// refuses the PUBLISH that caused it before routing it to anyone.
    Refuse,
}

/// Limits of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Deliveries waiting to be sent (not yet in flight), online or offline.
    pub max_queued: usize,
    /// Payload bytes of the deliveries waiting to be sent.
    pub max_queued_bytes: usize,
    /// QoS 1/2 deliveries in flight to the client at once. For MQTT 5 the client's
    /// Receive Maximum lowers it further ([MQTT-3.3.4-7]).
    pub max_inflight: u16,
    /// What happens when `max_queued` or `max_queued_bytes` is reached.
    pub overflow: OverflowPolicy,
}

/// The payload bytes queued in every session sharing it, and their cap. Cloning shares
/// it; one atomic add per queued or dequeued delivery.
#[derive(Debug, Clone)]
pub struct QueueBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    used: AtomicUsize,
    cap: usize,
}

impl QueueBudget {
    /// An empty budget of `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self { inner: Arc::new(BudgetInner { used: AtomicUsize::new(0), cap }) }
    }

    /// An empty budget without a cap.
    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    /// Bytes queued now in every session sharing this budget.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.inner.cap
    }

    /// True when `bytes` more fit under the cap now (another session may take them
    /// before they are queued).
    pub fn has_room_for(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.inner.cap
    }

    /// Takes `bytes` if they fit under the cap.
    fn try_take(&self, bytes: usize) -> bool {
        let cap = self.inner.cap;
        self.inner
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&after| after <= cap)
            })
            .is_ok()
    }

    /// Takes `bytes` whether or not they fit (restored deliveries).
    fn force_take(&self, bytes: usize) {
        self.inner.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn give_back(&self, bytes: usize) {
        let before = self.inner.used.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(before >= bytes, "queue budget gave back more than it took");
    }
}

impl Default for QueueBudget {
    fn default() -> Self {
        Self::unlimited()
    }
}

/// A point on the broker's monotonic clock: time since the broker started. The session
/// never reads a clock itself; the caller passes the time in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BrokerTime(pub Duration);

/// A message on its way to one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// The QoS of this delivery: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// The RETAIN flag to send.
    pub retain: bool,
    /// MQTT 5 Subscription Identifiers of the matching subscriptions ([MQTT-3.3.4-3]).
    pub subscription_ids: Vec<u32>,
    /// When the message expires (MQTT 5 Message Expiry Interval), if it does.
    pub expires_at: Option<BrokerTime>,
    /// The delivery's id in durable storage, when the broker keeps it on disk; the
    /// session reports what happens to it through [`Session::take_changes`].
    pub persist_id: Option<u64>,
}

impl Delivery {
    /// The bytes this delivery counts for in a queue: its payload (shared between the
    /// sessions it is queued for, but counted in each).
    pub fn size(&self) -> usize {
        self.message.payload.len()
    }

    /// What is left of the Message Expiry Interval at `now`, at least one second while
    /// the message is not expired ([MQTT-3.3.2-6]: the forwarded interval is what is
    /// left); `None` for a message that does not expire.
    fn remaining(&self, now: BrokerTime) -> Option<Duration> {
        let left = self.expires_at?.0.saturating_sub(now.0);
        Some(left.max(Duration::from_secs(1)))
    }

    fn is_expired(&self, now: BrokerTime) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// What happened to a delivery with a [`Delivery::persist_id`], for the broker to
/// mirror on disk ([`Session::take_changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistChange {
    /// Sent with this packet id; now awaiting PUBACK or PUBREC.
    Sent {
        /// The delivery's persist id.
        id: u64,
        /// Its packet id.
        packet_id: u16,
    },
    /// PUBREL sent for the delivery in flight with this packet id; awaiting PUBCOMP.
    Released {
        /// The delivery's persist id.
        id: u64,
        /// Its packet id.
        packet_id: u16,
    },
    /// Gone from the session: acknowledged, dropped, expired, abandoned or cleared.
    Removed {
        /// The delivery's persist id.
        id: u64,
    },
}

/// The stage of a delivery restored in flight ([`Session::restore_inflight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightStage {
    /// PUBLISH sent, awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, awaiting PUBCOMP.
    Released,
}

/// A delivery was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueError {
    /// The session's queue is full (in deliveries or bytes); the rejected delivery is
    /// handed back.
    Full(Delivery),
    /// The [`QueueBudget`] shared by every session is used up; the rejected delivery is
    /// handed back.
    OverBudget(Delivery),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // named for the packet awaited
enum Awaiting {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    PubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    PubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    PubComp,
}

#[derive(Debug)]
struct Inflight {
    delivery: Delivery,
    stage: Awaiting,
    /// Send order, so a resumed session redelivers in the original order ([MQTT-4.6.0-1]).
    seq: u64,
}

/// The state of one MQTT session (see the module docs).
#[derive(Debug)]
pub struct Session {
    limits: SessionLimits,
    /// The client's Receive Maximum for the current connection.
    client_receive_maximum: u16,
    queue: VecDeque<Delivery>,
    /// Sum of [`Delivery::size`] over `queue`, all of it taken from `budget`.
    queued_bytes: usize,
    budget: QueueBudget,
    inflight: HashMap<u16, Inflight>,
    next_packet_id: u16,
    next_seq: u64,
    /// QoS 2 packet ids received (PUBREC sent) and not yet released by PUBREL.
    incoming_qos2: HashSet<u16>,
    dropped: u64,
    expired: u64,
    /// What happened to deliveries with a persist id since the last take.
    changes: Vec<PersistChange>,
}

impl Session {
    /// An empty session with a budget of its own, without a cap.
    pub fn new(limits: SessionLimits) -> Self {
        Self::with_budget(limits, QueueBudget::unlimited())
    }

    /// An empty session whose queued bytes also count against `budget`, shared with
    /// other sessions.
    pub fn with_budget(limits: SessionLimits, budget: QueueBudget) -> Self {
        Self {
            limits,
            client_receive_maximum: u16::MAX,
            queue: VecDeque::new(),
            queued_bytes: 0,
            budget,
            inflight: HashMap::new(),
            next_packet_id: 1,
            next_seq: 0,
            incoming_qos2: HashSet::new(),
            dropped: 0,
            expired: 0,
            changes: Vec::new(),
        }
    }

    /// What happened to deliveries with a [`Delivery::persist_id`] since the last call,
    /// in order. Empty (and free) for sessions that keep nothing on disk.
    pub fn take_changes(&mut self) -> Vec<PersistChange> {
        std::mem::take(&mut self.changes)
    }

    /// True when [`Session::take_changes`] has something.
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    fn removed(&mut self, delivery: &Delivery) {
        if let Some(id) = delivery.persist_id {
            self.changes.push(PersistChange::Removed { id });
        }
    }

    /// Puts back a delivery that was queued when the broker stopped, ignoring the bounds
    /// (it held at most the bounds of its time); its bytes count all the same.
    pub fn restore_queued(&mut self, delivery: Delivery) {
        self.budget.force_take(delivery.size());
        self.push_taken(delivery);
    }

    /// Appends a delivery whose bytes were taken from the budget.
    fn push_taken(&mut self, delivery: Delivery) {
        self.queued_bytes += delivery.size();
        self.queue.push_back(delivery);
    }

    /// Takes the oldest queued delivery, giving its bytes back to the budget.
    fn pop_queued(&mut self) -> Option<Delivery> {
        let delivery = self.queue.pop_front()?;
        let size = delivery.size();
        self.queued_bytes -= size;
        self.budget.give_back(size);
        Some(delivery)
    }

    /// Puts back a QoS 1/2 delivery that was in flight with `packet_id` when the broker
    /// stopped; it is resent (with DUP, or as PUBREL) on the next [`Session::resume`],
    /// after those restored before it. An id already in use is refused (false).
    pub fn restore_inflight(&mut self, packet_id: u16, delivery: Delivery, stage: InflightStage) -> bool {
        if packet_id == 0 || delivery.qos == QoS::AtMostOnce || self.inflight.contains_key(&packet_id) {
            return false;
        }
        let stage = match (stage, delivery.qos) {
            (InflightStage::Released, QoS::ExactlyOnce) => Awaiting::PubComp,
            (_, QoS::ExactlyOnce) => Awaiting::PubRec,
            _ => Awaiting::PubAck,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.inflight.insert(packet_id, Inflight { delivery, stage, seq });
        true
    }

    /// The QoS 2 packet ids received and not yet released, for keeping them on disk.
    pub fn incoming_qos2_ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.incoming_qos2.iter().copied()
    }

    /// Deliveries dropped by the overflow policy since the session began.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queued deliveries whose Message Expiry Interval passed before they could be
    /// sent, and were discarded ([MQTT-3.3.2-5]), since the session began.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Deliveries waiting to be sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Payload bytes of the deliveries waiting to be sent.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// QoS 1/2 deliveries sent and not yet fully acknowledged.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// True when the queue has room for another delivery (of any size that fits the
    /// byte limit).
    pub fn has_room(&self) -> bool {
        self.queue.len() < self.limits.max_queued && self.queued_bytes < self.limits.max_queued_bytes
    }

    /// True when a delivery of `size` bytes fits this session's limits now (the shared
    /// budget aside).
    pub fn has_room_for(&self, size: usize) -> bool {
        self.queue.len() < self.limits.max_queued
            && self.queued_bytes.saturating_add(size) <= self.limits.max_queued_bytes
    }

    /// Queues a delivery. QoS 0 deliveries and QoS 1/2 deliveries share the bounds:
    /// `max_queued` deliveries, `max_queued_bytes` payload bytes, and the shared
    /// [`QueueBudget`].
    ///
    /// # Errors
    ///
    /// With [`OverflowPolicy::DropNew`] and [`OverflowPolicy::Refuse`]:
    /// [`EnqueueError::Full`] when the session's limits are reached,
    /// [`EnqueueError::OverBudget`] when the shared budget is; the caller decides
    /// whether to wait or count a drop. With [`OverflowPolicy::DropOldest`] the oldest
    /// deliveries of this session are dropped (and counted) until the new one fits
    /// both, or, when dropping all of them would not make room, the new one is; this
    /// never fails.
    pub fn enqueue(&mut self, delivery: Delivery) -> Result<(), EnqueueError> {
        let size = delivery.size();
        let drop_oldest = self.limits.overflow == OverflowPolicy::DropOldest;
        if !self.has_room_for(size) {
            if !drop_oldest {
                return Err(EnqueueError::Full(delivery));
            }
            if size > self.limits.max_queued_bytes || self.limits.max_queued == 0 {
                // can never fit: the queue is kept
                self.drop_new(&delivery);
                return Ok(());
            }
            while !self.has_room_for(size) && self.drop_oldest() {}
        }
        if !self.budget.try_take(size) {
            if !drop_oldest {
                return Err(EnqueueError::OverBudget(delivery));
            }
            // only this session's oldest make room, never other sessions' deliveries;
            // when all of them would not be enough, the queue is kept
            let room = self.budget.cap().saturating_sub(self.budget.used());
            if self.queued_bytes.saturating_add(room) < size {
                self.drop_new(&delivery);
                return Ok(());
            }
            while !self.budget.try_take(size) {
                if !self.drop_oldest() {
                    self.drop_new(&delivery);
                    return Ok(());
                }
            }
        }
        self.push_taken(delivery);
        Ok(())
    }

    /// Drops (and counts) the oldest queued delivery; false when there is none.
    fn drop_oldest(&mut self) -> bool {
        let Some(old) = self.pop_queued() else { return false };
        self.dropped += 1;
        self.removed(&old);
        true
    }

    /// Counts `delivery` as dropped instead of queued.
    fn drop_new(&mut self, delivery: &Delivery) {
        self.dropped += 1;
        self.removed(delivery);
    }

    /// Counts a delivery the caller gave up on after [`EnqueueError::Full`].
    pub fn count_drop(&mut self) {
        self.dropped += 1;
    }

    /// Starts a new connection for this session: records the client's Receive Maximum
    /// and returns what must be resent first: every unacknowledged QoS 1/2 PUBLISH with
    /// DUP set and every PUBREL not yet completed, in their original order
    /// ([MQTT-4.4.0-1], [MQTT-4.6.0-1]).
    pub fn resume(&mut self, client_receive_maximum: u16, now: BrokerTime) -> Vec<Outbound> {
        self.client_receive_maximum = client_receive_maximum.max(1);
        let mut pending: Vec<(&u16, &Inflight)> = self.inflight.iter().collect();
        pending.sort_by_key(|(_, f)| f.seq);
        pending
            .into_iter()
            .map(|(&id, f)| match f.stage {
                Awaiting::PubAck | Awaiting::PubRec => Outbound::Publish {
                    message: Arc::clone(&f.delivery.message),
                    qos: f.delivery.qos,
                    packet_id: Some(id),
                    retain: f.delivery.retain,
                    dup: true,
                    subscription_ids: f.delivery.subscription_ids.clone(),
                    message_expiry: f.delivery.remaining(now),
                },
                Awaiting::PubComp => Outbound::PubRel(id),
            })
            .collect()
    }

    fn window(&self) -> usize {
        usize::from(self.limits.max_inflight.min(self.client_receive_maximum).max(1))
    }

    /// Takes the next queued delivery that may be sent now, assigning a packet id to
    /// QoS 1/2 deliveries and recording them as in flight. Returns `None` when the queue
    /// is empty or the next QoS 1/2 delivery must wait for the in-flight window.
    ///
    /// Queued deliveries that expired by `now` are discarded on the way ([MQTT-3.3.2-5])
    /// and counted ([`Session::expired`]).
    pub fn next_outgoing(&mut self, now: BrokerTime) -> Option<Outbound> {
        while self.queue.front().is_some_and(|d| d.is_expired(now)) {
            if let Some(gone) = self.pop_queued() {
                self.removed(&gone);
            }
            self.expired += 1;
        }
        let front = self.queue.front()?;
        if front.qos != QoS::AtMostOnce && self.inflight.len() >= self.window() {
            return None;
        }
        let delivery = self.pop_queued()?;
        let packet_id = match delivery.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                let id = self.allocate_packet_id();
                let stage =
                    if delivery.qos == QoS::AtLeastOnce { Awaiting::PubAck } else { Awaiting::PubRec };
                let seq = self.next_seq;
                self.next_seq += 1;
                if let Some(pid) = delivery.persist_id {
                    self.changes.push(PersistChange::Sent { id: pid, packet_id: id });
                }
                self.inflight.insert(id, Inflight { delivery: delivery.clone(), stage, seq });
                Some(id)
            }
        };
        let message_expiry = delivery.remaining(now);
        Some(Outbound::Publish {
            message: delivery.message,
            qos: delivery.qos,
            packet_id,
            retain: delivery.retain,
            dup: false,
            message_expiry,
            subscription_ids: delivery.subscription_ids,
        })
    }

    /// [MQTT-2.3.1-2] a new QoS 1/2 PUBLISH uses a packet id not currently in use.
    /// The caller guarantees the window (at most 65535) leaves one free.
    fn allocate_packet_id(&mut self) -> u16 {
        debug_assert!(self.inflight.len() < usize::from(u16::MAX));
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    /// PUBACK from the client: the QoS 1 delivery is complete.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::UnknownPacketId`] when `id` is not a QoS 1 delivery in flight.
    pub fn on_puback(&mut self, id: u16) -> Result<(), ProtocolError> {
        match self.inflight.get(&id) {
            Some(f) if f.stage == Awaiting::PubAck => {
                if let Some(f) = self.inflight.remove(&id) {
                    self.removed(&f.delivery);
                }
                Ok(())
            }
            _ => Err(ProtocolError::UnknownPacketId),
        }
    }

    /// PUBREC from the client: answer with PUBREL and wait for PUBCOMP ([MQTT-4.3.3-3]).
    /// A repeated PUBREC (after a resend) is answered again.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::UnknownPacketId`] when `id` is not a QoS 2 delivery in flight.
    pub fn on_pubrec(&mut self, id: u16) -> Result<Outbound, ProtocolError> {
        match self.inflight.get_mut(&id) {
            Some(f) if f.stage != Awaiting::PubAck => {
                if f.stage == Awaiting::PubRec
                    && let Some(pid) = f.delivery.persist_id
                {
                    self.changes.push(PersistChange::Released { id: pid, packet_id: id });
                }
                f.stage = Awaiting::PubComp;
                Ok(Outbound::PubRel(id))
            }
            _ => Err(ProtocolError::UnknownPacketId),
        }
    }

    /// PUBCOMP from the client: the QoS 2 delivery is complete.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::UnknownPacketId`] when `id` is not awaiting PUBCOMP.
    pub fn on_pubcomp(&mut self, id: u16) -> Result<(), ProtocolError> {
        match self.inflight.get(&id) {
            Some(f) if f.stage == Awaiting::PubComp => {
                if let Some(f) = self.inflight.remove(&id) {
                    self.removed(&f.delivery);
                }
                Ok(())
            }
            _ => Err(ProtocolError::UnknownPacketId),
        }
    }

    /// A QoS 2 PUBLISH arrived with `id`. Returns true when it is new and must be routed;
    /// false for a duplicate of one not yet released, which must only be acknowledged
    /// again ([MQTT-4.3.3-9]: deliver exactly once).
    pub fn on_incoming_qos2(&mut self, id: u16) -> bool {
        self.incoming_qos2.insert(id)
    }

    /// Number of QoS 2 PUBLISHes received and not yet released; these count against
    /// our Receive Maximum together with unacknowledged QoS 1 PUBLISHes.
    pub fn incoming_qos2_pending(&self) -> usize {
        self.incoming_qos2.len()
    }

    /// PUBREL from the client: the packet id is free again. Returns the PUBCOMP reason
    /// code: 0x00, or 0x92 (packet identifier not found) for an unknown id.
    pub fn on_pubrel(&mut self, id: u16) -> u8 {
        if self.incoming_qos2.remove(&id) { 0x00 } else { 0x92 }
    }

    /// Gives up on an in-flight delivery that could not be sent at all (e.g. larger
    /// than the client's Maximum Packet Size), freeing its packet id.
    pub fn abandon(&mut self, id: u16) {
        if let Some(f) = self.inflight.remove(&id) {
            self.removed(&f.delivery);
        }
    }

    /// Forgets everything (clean start / clean session).
    pub fn clear(&mut self) {
        while let Some(d) = self.pop_queued() {
            self.removed(&d);
        }
        for (_, f) in std::mem::take(&mut self.inflight) {
            self.removed(&f.delivery);
        }
        self.incoming_qos2.clear();
        self.next_packet_id = 1;
    }
}

impl Drop for Session {
    /// Gives the queued bytes back to the shared budget.
    fn drop(&mut self) {
        debug_assert_eq!(self.queued_bytes, self.queue.iter().map(Delivery::size).sum::<usize>());
        self.budget.give_back(self.queued_bytes);
    }
}

#[cfg(test)]
mod tests;
