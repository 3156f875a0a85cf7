//! Sessions by client id: attach on CONNECT (with takeover and clean start), detach on
//! disconnect, expiry of persistent sessions, delivery into a session's bounded queue
//! with backpressure, the queue limits' refusal of a PUBLISH, and wills.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use telehub_core::{ClientId, Message, QoS, TopicFilter};
use telehub_mqtt::{
    BrokerTime, Delivery, Encoder, EnqueueError, InflightStage, Outbound, PersistChange, QueueBudget,
    Session, SessionLimits, SubOptions,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::Shared;
use crate::config::QueueFull;
use crate::hook::IngestAck;
use crate::persist::{MessageRecord, Op, SessionRecord, Snapshot, SubscriptionRecord};
use crate::router::Target;
use crate::stats::Stats;

/// Mutable state of one session; guarded by [`SessionEntry::state`]. Never held across
/// an `.await`.
pub(crate) struct SessionState {
    pub(crate) session: Session,
    /// The connection attached now, if any.
    owner: Option<u64>,
    /// Cancels the attached connection (takeover).
    kick: Option<CancellationToken>,
    /// Wakes the attached connection's writer.
    waker: Option<Arc<Notify>>,
    /// Filter → options and MQTT 5 Subscription Identifier.
    pub(crate) subscriptions: HashMap<TopicFilter, (SubOptions, Option<u32>)>,
    /// How long the session outlives its connection; `None` is forever.
    pub(crate) expiry: Option<Duration>,
    disconnected_at: Option<Instant>,
    /// Bumped on every attach; a delayed will only fires if it has not moved.
    generation: u64,
    /// The session was ended; deliveries to it are discarded.
    removed: bool,
    /// In a burst of drops (logged once per burst).
    dropping: bool,
    /// Kept on disk ([`crate::persist`]): persistence is on and the expiry is not 0.
    persistent: bool,
}

impl SessionState {
    /// Records `op` when this session is kept on disk.
    pub(crate) fn record(&self, shared: &Shared, op: impl FnOnce() -> Op) {
        if self.persistent
            && let Some(p) = &shared.persist
        {
            p.record(op());
        }
    }

    /// True when this session is kept on disk.
    pub(crate) fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Records what happened to this session's durable deliveries since the last call.
    pub(crate) fn sync(&mut self, shared: &Shared, client_id: &ClientId) {
        if !self.session.has_changes() {
            return;
        }
        let changes = self.session.take_changes();
        let (true, Some(p)) = (self.persistent, &shared.persist) else { return };
        for change in changes {
            let client_id = client_id.clone();
            p.record(match change {
                PersistChange::Sent { id, packet_id } => {
                    Op::MarkMessage { client_id, seq: id, packet_id, stage: InflightStage::Published }
                }
                PersistChange::Released { id, packet_id } => {
                    Op::MarkMessage { client_id, seq: id, packet_id, stage: InflightStage::Released }
                }
                PersistChange::Removed { id } => Op::DeleteMessage(client_id, id),
            });
        }
    }

    /// Records the session's fields (expiry, disconnect time, subscriptions).
    pub(crate) fn record_session(&self, shared: &Shared, client_id: &ClientId) {
        self.record(shared, || {
            let disconnected_at = self
                .disconnected_at
                .map(|at| SystemTime::now().checked_sub(at.elapsed()).unwrap_or(SystemTime::UNIX_EPOCH));
            Op::PutSession(SessionRecord {
                client_id: client_id.clone(),
                expiry: self.expiry,
                disconnected_at,
                subscriptions: self
                    .subscriptions
                    .iter()
                    .map(|(filter, (options, subscription_id))| SubscriptionRecord {
                        filter: filter.clone(),
                        options: *options,
                        subscription_id: *subscription_id,
                    })
                    .collect(),
            })
        });
    }
}

/// One session, shared by its connection, the router and publishers.
pub(crate) struct SessionEntry {
    pub(crate) client_id: ClientId,
    state: Mutex<SessionState>,
    /// Publishers waiting for queue room wait here.
    room: Notify,
}

/// This connection no longer owns the session (it was taken over or ended).
#[derive(Debug)]
pub(crate) struct NotOwner;

impl SessionEntry {
    fn new(client_id: ClientId, limits: SessionLimits, budget: QueueBudget) -> Self {
        Self {
            client_id,
            state: Mutex::new(SessionState {
                session: Session::with_budget(limits, budget),
                owner: None,
                kick: None,
                waker: None,
                subscriptions: HashMap::new(),
                expiry: Some(Duration::ZERO),
                disconnected_at: None,
                generation: 0,
                removed: false,
                dropping: false,
                persistent: false,
            }),
            room: Notify::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn new_for_test(client_id: ClientId, limits: SessionLimits) -> Self {
        Self::new(client_id, limits, QueueBudget::unlimited())
    }

    fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the state if connection `conn` still owns the session.
    pub(crate) fn lock_owned(&self, conn: u64) -> Result<MutexGuard<'_, SessionState>, NotOwner> {
        let st = self.lock();
        if st.owner == Some(conn) { Ok(st) } else { Err(NotOwner) }
    }

    /// True while a connection is attached.
    pub(crate) fn is_online(&self) -> bool {
        self.lock().owner.is_some()
    }

    /// Wakes the attached connection's writer, if any.
    pub(crate) fn wake(&self) {
        let waker = self.lock().waker.clone();
        if let Some(w) = waker {
            w.notify_one();
        }
    }

    /// True when a delivery of `size` bytes fits this session's queue now.
    fn has_room_for(&self, size: usize) -> bool {
        let st = self.lock();
        st.removed || st.session.has_room_for(size)
    }

    /// Queues `delivery`. When the queue is full and the subscriber is online, with
    /// `drop_new` a delivery waits up to `publish_backpressure` for room (once per
    /// burst); otherwise, and at the global cap, it is dropped, counted, and the burst
    /// logged once.
    ///
    /// A QoS 1/2 delivery to a session kept on disk is recorded before it is queued;
    /// returns true when it was.
    pub(crate) async fn enqueue(&self, shared: &Shared, delivery: Delivery) -> bool {
        enum Outcome {
            Done(Option<Arc<Notify>>),
            Wait(Delivery, Option<Arc<Notify>>),
        }
        let mut persisted = false;
        // computed only when the queue is first found full: no clock read per delivery
        let mut deadline: Option<Instant> = None;
        let mut delivery = delivery;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let outcome = {
                let mut st = self.lock();
                if st.removed {
                    return persisted;
                }
                let dropped_before = st.session.dropped();
                let size = delivery.size();
                let durable = st.persistent
                    && delivery.qos != QoS::AtMostOnce
                    && ((st.session.has_room_for(size) && shared.stats.queue_budget.has_room_for(size))
                        || shared.config.queue_full == QueueFull::DropOldest);
                if durable {
                    let seq = match delivery.persist_id {
                        Some(seq) => seq,
                        None => shared.persist_seq.fetch_add(1, Ordering::Relaxed),
                    };
                    delivery.persist_id = Some(seq);
                    st.record(shared, || {
                        Op::PutMessage(self.client_id.clone(), message_record(shared, &delivery))
                    });
                    persisted = true;
                }
                match st.session.enqueue(delivery) {
                    Ok(()) => {
                        let dropped = st.session.dropped() - dropped_before;
                        if dropped > 0 {
                            Self::record_drop(&mut st, &self.client_id, &shared.stats, dropped);
                        }
                        st.sync(shared, &self.client_id);
                        Outcome::Done(st.waker.clone())
                    }
                    Err(EnqueueError::Full(back)) => {
                        let now = Instant::now();
                        let deadline = *deadline.get_or_insert(now + shared.config.publish_backpressure);
                        // QoS 0 waits too: reading publishers faster than the subscriber
                        // drains only burns CPU on messages that would be dropped.
                        // `refuse` does not wait: the PUBLISH was checked before routing,
                        // so this is a race with another publisher
                        let may_wait = shared.config.queue_full == QueueFull::DropNew
                            && st.owner.is_some()
                            && !st.dropping
                            && now < deadline;
                        if may_wait {
                            Outcome::Wait(back, st.waker.clone())
                        } else {
                            self.drop_refused(&mut st, shared, durable.then_some(&back));
                            return persisted;
                        }
                    }
                    Err(EnqueueError::OverBudget(back)) => {
                        // the global cap: no wait, the room is not this subscriber's to make
                        self.drop_refused(&mut st, shared, durable.then_some(&back));
                        return persisted;
                    }
                }
            };
            match outcome {
                Outcome::Done(waker) => {
                    if let Some(w) = waker {
                        w.notify_one();
                    }
                    return persisted;
                }
                Outcome::Wait(back, waker) => {
                    delivery = back;
                    if let Some(w) = waker {
                        w.notify_one();
                    }
                    let deadline = deadline.unwrap_or_else(Instant::now);
                    if tokio::time::timeout_at(deadline, room).await.is_err() {
                        // timed out: the next round queues it if room appeared,
                        // else drops it and starts a burst
                        let mut st = self.lock();
                        if !st.session.has_room() {
                            st.dropping = true;
                        }
                    }
                }
            }
        }
    }

    /// Drops a delivery the session refused, counted; `recorded` when it was already
    /// recorded for the disk (a race at the global cap), which is undone.
    fn drop_refused(&self, st: &mut SessionState, shared: &Shared, recorded: Option<&Delivery>) {
        if let Some(seq) = recorded.and_then(|d| d.persist_id) {
            st.record(shared, || Op::DeleteMessage(self.client_id.clone(), seq));
        }
        st.session.count_drop();
        Self::record_drop(st, &self.client_id, &shared.stats, 1);
    }

    fn record_drop(st: &mut SessionState, client_id: &ClientId, stats: &Stats, n: u64) {
        Stats::add(&stats.messages_dropped, n);
        if !st.dropping {
            st.dropping = true;
            warn!(
                client_id = %client_id,
                queued = st.session.queued(),
                queued_bytes = st.session.queued_bytes(),
                queued_bytes_total = stats.queue_budget.used(),
                online = st.owner.is_some(),
                "session queue full: dropping deliveries until it drains"
            );
        }
    }

    /// Encodes what may be sent now (queued deliveries within the in-flight window) into
    /// `buf`, up to `max_bytes`. Returns how many PUBLISHes it encoded, whether more are
    /// ready, and whether `buf` holds a QoS 2 PUBLISH of a session kept on disk: that one
    /// must not reach the client before what recorded it is committed, else a crash in
    /// between would have the publisher send it again after the restart and the client
    /// receive it twice.
    pub(crate) fn drain(
        &self,
        conn: u64,
        encoder: &mut Encoder,
        buf: &mut BytesMut,
        max_bytes: usize,
        (now, stats, shared): (BrokerTime, &Stats, &Shared),
    ) -> Result<(u64, bool, bool), NotOwner> {
        let mut st = self.lock_owned(conn)?;
        let mut sent = 0;
        let mut more = false;
        let mut exactly_once = false;
        let expired_before = st.session.expired();
        while buf.len() < max_bytes {
            let Some(packet) = st.session.next_outgoing(now) else { break };
            let packet_id = match &packet {
                Outbound::Publish { packet_id, qos, .. } => {
                    exactly_once |= *qos == QoS::ExactlyOnce;
                    *packet_id
                }
                _ => None,
            };
            if let Err(e) = encoder.encode(packet, buf) {
                // e.g. larger than the client's Maximum Packet Size: not sent ([MQTT-3.1.2-25])
                debug!(client_id = %self.client_id, error = %e, "delivery not encodable, discarded");
                if let Some(id) = packet_id {
                    st.session.abandon(id);
                }
                continue;
            }
            sent += 1;
            more = buf.len() >= max_bytes;
        }
        let expired = st.session.expired() - expired_before;
        if expired > 0 {
            Stats::add(&stats.messages_expired, expired);
        }
        st.sync(shared, &self.client_id);
        let durable = exactly_once && st.is_persistent() && shared.persist.is_some();
        let freed = sent > 0 || expired > 0;
        if st.session.has_room() {
            st.dropping = false;
        }
        drop(st);
        if freed {
            self.room.notify_waiters();
        }
        Ok((sent, more, durable))
    }
}

/// A connection's claim on its session after CONNECT.
pub(crate) struct Attached {
    pub(crate) entry: Arc<SessionEntry>,
    pub(crate) session_present: bool,
    /// Unacknowledged deliveries to resend first, with DUP.
    pub(crate) resend: Vec<Outbound>,
    /// The session is kept on disk: CONNACK waits for it to be written.
    pub(crate) durable: bool,
}

/// What a connection tells [`Sessions::attach`].
pub(crate) struct AttachRequest {
    pub(crate) client_id: ClientId,
    pub(crate) conn: u64,
    pub(crate) clean_start: bool,
    pub(crate) expiry: Option<Duration>,
    pub(crate) receive_maximum: u16,
    pub(crate) kick: CancellationToken,
    pub(crate) waker: Arc<Notify>,
}

/// All sessions by client id.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<ClientId, Arc<SessionEntry>>>,
    next_conn: AtomicU64,
}

impl Sessions {
    /// A fresh connection id.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Number of sessions, connected or not.
    pub(crate) fn count(&self) -> usize {
        self.map().len()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<ClientId, Arc<SessionEntry>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a connection to the session of its client id: takes over a connected
    /// one ([MQTT-3.1.4-2]), starts fresh on clean start ([MQTT-3.1.2-4]) or resumes
    /// ([MQTT-3.1.2-5]).
    pub(crate) fn attach(&self, shared: &Shared, req: AttachRequest) -> Attached {
        let limits = limits(shared);
        let budget = &shared.stats.queue_budget;
        let mut ended = None;
        let (entry, session_present, resend, durable) = {
            let mut map = self.map();
            let existing = map.get(&req.client_id).cloned();
            let (entry, present) = match existing {
                Some(old) if req.clean_start => {
                    // [MQTT-3.1.4-2] clean start replaces the session, but a connection
                    // still attached to the old one must be taken over all the same:
                    // without this it stayed open on an ended session (found by
                    // tests/sessions.rs). Clearing the owner first makes it exit as taken
                    // over (MQTT 5: DISCONNECT 0x8E), not as shut down (0x8B).
                    let mut old_st = old.lock();
                    // gone from disk before the new session is written there
                    old_st.record(shared, || Op::DeleteSession(req.client_id.clone()));
                    old_st.persistent = false;
                    old_st.owner = None;
                    old_st.waker = None;
                    if let Some(kick) = old_st.kick.take() {
                        kick.cancel();
                    }
                    drop(old_st);
                    let new = Arc::new(SessionEntry::new(req.client_id.clone(), limits, budget.clone()));
                    map.insert(req.client_id.clone(), Arc::clone(&new));
                    ended = Some(old);
                    (new, false)
                }
                Some(old) => (old, true),
                None => {
                    let new = Arc::new(SessionEntry::new(req.client_id.clone(), limits, budget.clone()));
                    map.insert(req.client_id.clone(), Arc::clone(&new));
                    (new, false)
                }
            };
            let mut st = entry.lock();
            if let Some(kick) = st.kick.take() {
                kick.cancel(); // session takeover
            }
            st.owner = Some(req.conn);
            st.kick = Some(req.kick);
            st.waker = Some(req.waker);
            st.expiry = req.expiry;
            st.disconnected_at = None;
            st.generation += 1;
            let persistent = shared.persist.is_some() && req.expiry != Some(Duration::ZERO);
            if st.persistent && !persistent {
                // resumed with expiry 0: it ends with this connection, so not on disk
                st.record(shared, || Op::DeleteSession(req.client_id.clone()));
            }
            st.persistent = persistent;
            st.record_session(shared, &req.client_id);
            let resend = st.session.resume(req.receive_maximum, shared.now());
            drop(st);
            (entry, present, resend, persistent)
        };
        if let Some(old) = ended {
            end_session(shared, &old);
        }
        Attached { entry, session_present, resend, durable }
    }

    /// Detaches connection `conn`. A session with zero expiry ends now; others wait for
    /// their expiry. Returns the session generation (for delayed wills), or `None` when
    /// the connection had already lost the session to a takeover.
    pub(crate) fn detach(&self, shared: &Shared, entry: &Arc<SessionEntry>, conn: u64) -> Option<u64> {
        let mut st = entry.lock_owned(conn).ok()?;
        st.owner = None;
        st.kick = None;
        st.waker = None;
        let generation = st.generation;
        if st.expiry == Some(Duration::ZERO) {
            drop(st);
            self.remove_if_current(entry);
            end_session(shared, entry);
        } else {
            st.disconnected_at = Some(Instant::now());
            st.record_session(shared, &entry.client_id);
        }
        Some(generation)
    }

    fn remove_if_current(&self, entry: &Arc<SessionEntry>) {
        let mut map = self.map();
        if map.get(&entry.client_id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            map.remove(&entry.client_id);
        }
    }

    /// True when the session `entry` is still at `generation` with nobody attached:
    /// the client has not come back since.
    pub(crate) fn is_still_gone(entry: &SessionEntry, generation: u64) -> bool {
        let st = entry.lock();
        st.generation == generation && st.owner.is_none()
    }

    /// The session's expiry, for wills delayed past it.
    pub(crate) fn expiry_of(entry: &SessionEntry) -> Option<Duration> {
        entry.lock().expiry
    }
}

/// Marks a session ended and removes its subscriptions from the router.
fn end_session(shared: &Shared, entry: &Arc<SessionEntry>) {
    let filters: Vec<TopicFilter> = {
        let mut st = entry.lock();
        st.removed = true;
        st.record(shared, || Op::DeleteSession(entry.client_id.clone()));
        st.persistent = false;
        st.session.clear();
        drop(st.session.take_changes());
        st.subscriptions.drain().map(|(f, _)| f).collect()
    };
    for f in filters {
        shared.router.unsubscribe(&f, entry);
    }
    entry.room.notify_waiters();
}

/// Ends persistent sessions whose expiry has passed, every second, until `shutdown`.
pub(crate) async fn reap_expired(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let expired: Vec<Arc<SessionEntry>> = {
            let mut map = shared.sessions.map();
            let expired: Vec<ClientId> = map
                .iter()
                .filter(|(_, e)| {
                    let st = e.lock();
                    match (st.owner, st.disconnected_at, st.expiry) {
                        (None, Some(at), Some(expiry)) => now >= at + expiry,
                        _ => false,
                    }
                })
                .map(|(id, _)| id.clone())
                .collect();
            expired.iter().filter_map(|id| map.remove(id)).collect()
        };
        for entry in expired {
            debug!(client_id = %entry.client_id, "session expired");
            end_session(&shared, &entry);
        }
    }
}

/// A PUBLISH refused because a queue limit was reached ([`check_quota`]): not retained,
/// not offered to the ingest hook, routed to no one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaExceeded;

impl QuotaExceeded {
    /// The MQTT 5 PUBACK / PUBREC reason code: 0x97 Quota exceeded (3.4.2.1, 3.5.2.1).
    pub(crate) const REASON_CODE: u8 = 0x97;

    /// The MQTT 5 Reason String that goes with [`QuotaExceeded::REASON_CODE`].
    pub(crate) fn reason_string() -> telehub_mqtt::ReasonString {
        telehub_mqtt::ReasonString::new("message queues are full: not accepted, try again later")
    }
}

/// Routes one accepted message: retained store, ingest hook, then every matching
/// session's queue. Returns the hook's acknowledgement future, if it wants one awaited.
///
/// With persistence, the acknowledgement also waits until what the message changed on
/// disk (retained copy, deliveries to durable sessions) is committed, and until
/// everything recorded before when `durable` (the QoS 2 packet id of the PUBLISH).
///
/// # Errors
///
/// [`QuotaExceeded`] when a queue limit refuses the message ([`check_quota`]); it was
/// counted and nothing else was done with it.
pub(crate) async fn publish(
    shared: &Shared,
    from: Option<&ClientId>,
    message: Arc<Message>,
    durable: bool,
) -> Result<Option<IngestAck>, QuotaExceeded> {
    let persist = shared.persist.as_deref().filter(|_| message.qos != QoS::AtMostOnce || message.retain);
    if let Some(p) = persist.filter(|_| !durable) {
        // the journal of uncommitted ops is bounded: publishers wait for the writer
        // (not with a hold open, which would keep the writer from making room)
        while !p.has_room() {
            p.room().await;
        }
    }
    let targets = targets(shared, from, &message);
    check_quota(shared, from, &message, &targets)?;
    let ack = shared.hook.as_ref().and_then(|hook| hook.offer(from, &message));
    let (_, persisted) = route(shared, &message, targets).await;
    let stored = match persist {
        Some(p) if persisted || durable => Some(p.flush()),
        _ => None,
    };
    Ok(match (ack, stored) {
        (ack, None) => ack,
        (None, Some(stored)) => Some(stored),
        (Some(ack), Some(stored)) => Some(Box::pin(async move {
            let (a, b) = tokio::join!(ack, stored);
            a.and(b)
        })),
    })
}

/// Refuses a message that a queue limit would keep from some matching session, before
/// it goes anywhere: at the global cap (`max_queued_bytes_total`) with `drop_new` and
/// `refuse`, and with `refuse` also when a matching session's queue is full. With
/// `drop_oldest` nothing is refused: each session makes room by dropping its oldest.
/// Refusals are counted, and logged once per burst (a burst ends with the first message
/// let through).
///
/// The checks are a snapshot: a queue that fills between them and the enqueue drops its
/// delivery (counted in `messages_dropped`), and the global cap is never exceeded.
fn check_quota(
    shared: &Shared,
    from: Option<&ClientId>,
    message: &Message,
    targets: &[Target],
) -> Result<(), QuotaExceeded> {
    let budget = &shared.stats.queue_budget;
    let size = message.payload.len();
    let refused = !targets.is_empty()
        && match shared.config.queue_full {
            QueueFull::DropOldest => false,
            QueueFull::DropNew => !budget.has_room_for(size.saturating_mul(targets.len())),
            // a lock per matching session: only with `refuse`
            QueueFull::Refuse => {
                !budget.has_room_for(size.saturating_mul(targets.len()))
                    || targets.iter().any(|t| !t.entry.has_room_for(size))
            }
        };
    if !refused {
        if shared.over_quota.load(Ordering::Relaxed) {
            shared.over_quota.store(false, Ordering::Relaxed);
        }
        return Ok(());
    }
    Stats::add(&shared.stats.messages_quota_exceeded, 1);
    if !shared.over_quota.swap(true, Ordering::Relaxed) {
        warn!(
            publisher = ?from.map(ClientId::as_str),
            topic = %message.topic,
            queued_bytes_total = budget.used(),
            max_queued_bytes_total = budget.cap(),
            "queue limit reached: refusing messages (0x97 Quota exceeded) until the queues drain"
        );
    }
    Err(QuotaExceeded)
}

/// Every session `message` goes to: the router's targets, less the publisher's own
/// subscriptions with No Local ([MQTT-3.8.3-3]).
fn targets(shared: &Shared, from: Option<&ClientId>, message: &Message) -> Vec<Target> {
    let mut targets = shared.router.targets(&message.topic);
    if let Some(from) = from {
        targets.retain(|t| !(t.no_local && from == &t.entry.client_id));
    }
    targets
}

/// Publishes a message of the hub's (a command, a rule's action): like a will, the
/// ingest hook sees it with no publisher. Returns how many sessions it was queued for.
pub(crate) async fn publish_from_hub(shared: &Shared, message: Arc<Message>) -> usize {
    if let Some(hook) = &shared.hook {
        // the hub stores it whether or not this future is polled
        drop(hook.offer(None, &message));
    }
    let targets = targets(shared, None, &message);
    route(shared, &message, targets).await.0
}

/// Publishes a message of the broker's own (`$SYS`): retained store and subscribers, but
/// not the ingest hook, which receives only what clients publish and their wills (its
/// `None` publisher means a will). Without this the hub ingested the broker's counters
/// as if they were wills (found by tests/ingest.rs).
pub(crate) async fn publish_internal(shared: &Shared, message: Arc<Message>) {
    let targets = targets(shared, None, &message);
    let _ = route(shared, &message, targets).await;
}

/// Stores or clears the retained copy, then queues `message` for every target session,
/// with its expiry on the broker's clock. Returns how many sessions it went to, and
/// whether it recorded anything for the disk.
async fn route(shared: &Shared, message: &Arc<Message>, targets: Vec<Target>) -> (usize, bool) {
    let expires_at = message.properties.message_expiry.map(|d| BrokerTime(shared.now().0 + d));
    let mut persisted = false;
    if message.retain {
        // `$SYS` is published again at every start: not kept
        let persist = shared.persist.as_deref().filter(|_| !message.topic.as_str().starts_with("$SYS/"));
        shared.router.retain(message, expires_at, || {
            if let Some(p) = persist {
                p.record(if message.payload.is_empty() {
                    Op::DeleteRetained(message.topic.clone())
                } else {
                    Op::PutRetained(crate::persist::RetainedRecord {
                        message: Arc::clone(message),
                        expires_at: expires_at.map(|t| shared.clock().to_wall(t)),
                    })
                });
                persisted = true;
            }
        });
    }
    let sessions = targets.len();
    for target in targets {
        let delivery = Delivery {
            message: Arc::clone(message),
            qos: message.qos.min(target.qos),
            // [MQTT-3.3.1-12] / [MQTT-3.3.1-13] Retain As Published
            retain: target.retain_as_published && message.retain,
            subscription_ids: target.subscription_ids,
            expires_at,
            persist_id: None,
        };
        persisted |= target.entry.enqueue(shared, delivery).await;
    }
    (sessions, persisted)
}

/// The session limits of the config.
fn limits(shared: &Shared) -> SessionLimits {
    SessionLimits {
        max_queued: shared.config.max_queued_messages,
        max_queued_bytes: shared.config.max_queued_bytes,
        max_inflight: shared.config.max_inflight,
        overflow: shared.config.queue_full.into(),
    }
}

/// `delivery` (with its persist id) as kept on disk, queued.
fn message_record(shared: &Shared, delivery: &Delivery) -> MessageRecord {
    MessageRecord {
        seq: delivery.persist_id.unwrap_or_default(),
        message: Arc::clone(&delivery.message),
        qos: delivery.qos,
        retain: delivery.retain,
        subscription_ids: delivery.subscription_ids.clone(),
        expires_at: delivery.expires_at.map(|t| shared.clock().to_wall(t)),
        inflight: None,
    }
}

/// Puts back what was on disk: retained messages not yet expired, and durable sessions
/// (offline, their expiry running from their disconnect time) with their
/// subscriptions, deliveries and QoS 2 packet ids. Returns how many sessions and
/// deliveries it restored.
pub(crate) fn restore(shared: &Shared, snapshot: Snapshot) -> (usize, usize) {
    let clock = shared.clock();
    for r in snapshot.retained {
        let expires_at = r.expires_at.map(|w| clock.to_broker(w));
        if expires_at.is_some_and(|at| at <= clock.broker) {
            Stats::add(&shared.stats.messages_expired, 1);
            continue; // dropped from disk the next time its topic is retained
        }
        shared.router.retain(&r.message, expires_at, || {});
    }
    let (mut sessions, mut deliveries) = (0, 0);
    let mut next_seq = 0;
    let now = Instant::now();
    for stored in snapshot.sessions {
        let rec = stored.session;
        let entry = Arc::new(SessionEntry::new(
            rec.client_id.clone(),
            limits(shared),
            shared.stats.queue_budget.clone(),
        ));
        {
            let mut st = entry.lock();
            st.persistent = shared.persist.is_some();
            st.expiry = rec.expiry;
            // how long ago it went offline (a session online at the crash: at restart)
            let offline_for = rec
                .disconnected_at
                .map_or(Duration::ZERO, |at| clock.wall.duration_since(at).unwrap_or(Duration::ZERO));
            st.disconnected_at = Some(now.checked_sub(offline_for).unwrap_or(now));
            for sub in rec.subscriptions {
                let subscriber = crate::router::Subscriber {
                    entry: Arc::clone(&entry),
                    options: sub.options,
                    subscription_id: sub.subscription_id,
                };
                match sub.filter.split_shared() {
                    None => {
                        shared.router.subscribe(&sub.filter, subscriber);
                    }
                    Some(Ok((_, inner))) => {
                        shared.router.subscribe_shared(&sub.filter, inner, subscriber);
                    }
                    Some(Err(_)) => continue,
                }
                st.subscriptions.insert(sub.filter, (sub.options, sub.subscription_id));
            }
            for m in stored.messages {
                next_seq = next_seq.max(m.seq + 1);
                restore_delivery(&mut st.session, m, &clock);
                deliveries += 1;
            }
            for id in stored.incoming_qos2 {
                st.session.on_incoming_qos2(id);
            }
        }
        sessions += 1;
        shared.sessions.map().insert(rec.client_id, entry);
    }
    shared.persist_seq.fetch_max(next_seq, Ordering::Relaxed);
    (sessions, deliveries)
}

/// Puts one stored delivery back into its session: in flight again (resent with DUP, or
/// as PUBREL) if it was, else queued.
fn restore_delivery(session: &mut telehub_mqtt::Session, m: MessageRecord, clock: &crate::persist::Clock) {
    let delivery = Delivery {
        message: m.message,
        qos: m.qos,
        retain: m.retain,
        subscription_ids: m.subscription_ids,
        expires_at: m.expires_at.map(|w| clock.to_broker(w)),
        persist_id: Some(m.seq),
    };
    match m.inflight {
        Some((packet_id, stage)) if session.inflight() < usize::from(u16::MAX) - 1 => {
            if !session.restore_inflight(packet_id, delivery.clone(), stage) {
                session.restore_queued(delivery);
            }
        }
        _ => session.restore_queued(delivery),
    }
}

/// Appends `deliveries` (each with its session's client id, in each session's `seq`
/// order) to restored sessions, after [`restore`]: start-up reads them from disk a page at
/// a time. Deliveries of a session that was not restored are skipped. Returns how many
/// were put back.
pub(crate) fn restore_deliveries(shared: &Shared, deliveries: Vec<(ClientId, MessageRecord)>) -> usize {
    let clock = shared.clock();
    let mut restored = 0;
    let mut next_seq = 0;
    let map = shared.sessions.map();
    for (client_id, m) in deliveries {
        let Some(entry) = map.get(&client_id) else { continue };
        next_seq = u64::max(next_seq, m.seq + 1);
        restore_delivery(&mut entry.lock().session, m, &clock);
        restored += 1;
    }
    drop(map);
    shared.persist_seq.fetch_max(next_seq, Ordering::Relaxed);
    restored
}
