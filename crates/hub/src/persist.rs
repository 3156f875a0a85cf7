//! The broker's durable state on the store: [`Journal`] is the broker's
//! [`Persistence`], [`Writer`] commits what it records, [`load`] reads it back at start.
//!
//! The broker records ops under its own locks; the journal only appends them to a
//! queue (never blocks) and wakes the writer. The writer takes everything queued (up to
//! [`MAX_BATCH`] ops, and never past the start of an open hold), encodes it and applies
//! it to the store in one transaction: many publishers' messages share one commit and
//! one fsync (group commit). A flush future resolves when the writer has committed the
//! position it was taken at; the broker holds the publisher's PUBACK/PUBREC on it.
//!
//! Bounded: the broker's session queues bound how many deliveries exist, so the store
//! holds at most what memory holds; the journal holds at most `capacity` uncommitted
//! ops, beyond which publishers wait ([`Persistence::room`]).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use telehub_broker::IngestError;
use telehub_broker::persist::{
    InflightStage, MessageRecord, Op, PersistAck, Persistence, RetainedRecord, SessionRecord, Snapshot,
    StoredSession, SubOptions, SubscriptionRecord,
};
use telehub_core::{ClientId, Message, MessageProperties, QoS, TopicFilter, TopicName};
use telehub_store::StoreError;
use telehub_store::sessions::{SessionChange, SessionStore};
use tokio::sync::{Notify, watch};
use tokio_util::bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// Ops committed per transaction at most.
pub const MAX_BATCH: usize = 4096;
/// Uncommitted ops the journal holds before publishers wait.
pub const DEFAULT_CAPACITY: usize = 65_536;
/// Failed commit ranges remembered for flush futures still waiting on them.
const FAILURES_KEPT: usize = 64;

#[derive(Default)]
struct State {
    ops: VecDeque<Op>,
    /// Ops ever recorded (the position of the last one).
    appended: u64,
    /// Ops ever taken by the writer.
    taken: u64,
    /// Open holds: id → `appended` when opened.
    holds: BTreeMap<u64, u64>,
    next_hold: u64,
    /// Recent failed commits: positions `(from, to]`.
    failures: VecDeque<(u64, u64)>,
}

struct Inner {
    state: Mutex<State>,
    len: AtomicUsize,
    capacity: usize,
    /// Wakes the writer.
    work: Notify,
    /// Wakes publishers waiting for room.
    room: Notify,
    /// Position committed (or given up on) so far.
    done: watch::Sender<u64>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The broker's [`Persistence`]: cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("queued", &self.inner.len.load(Ordering::Relaxed)).finish()
    }
}

/// Commits what the [`Journal`] records; run it until the broker has stopped.
pub struct Writer<S> {
    inner: Arc<Inner>,
    store: Arc<S>,
}

impl Journal {
    /// A journal over `store` holding at most `capacity` uncommitted ops, and its
    /// writer.
    pub fn new<S: SessionStore>(store: Arc<S>, capacity: usize) -> (Self, Writer<S>) {
        let (done, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            work: Notify::new(),
            room: Notify::new(),
            done,
        });
        (Self { inner: Arc::clone(&inner) }, Writer { inner, store })
    }
}

impl Persistence for Journal {
    fn record(&self, op: Op) {
        let mut st = self.inner.lock();
        st.ops.push_back(op);
        st.appended += 1;
        drop(st);
        self.inner.len.fetch_add(1, Ordering::Relaxed);
        self.inner.work.notify_one();
    }

    fn flush(&self) -> PersistAck {
        let target = self.inner.lock().appended;
        let mut done = self.inner.done.subscribe();
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            done.wait_for(|&d| d >= target).await.map_err(|_| IngestError::Unavailable)?;
            let failed = inner.lock().failures.iter().any(|&(from, to)| from < target && target <= to);
            if failed { Err(IngestError::Unavailable) } else { Ok(()) }
        })
    }

    fn has_room(&self) -> bool {
        self.inner.len.load(Ordering::Relaxed) < self.inner.capacity
    }

    fn room(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let notified = self.inner.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() {
                return;
            }
            notified.await;
        })
    }

    fn hold(&self) -> u64 {
        let mut st = self.inner.lock();
        let id = st.next_hold;
        st.next_hold += 1;
        let at = st.appended;
        st.holds.insert(id, at);
        id
    }

    fn release(&self, hold: u64) {
        self.inner.lock().holds.remove(&hold);
        self.inner.work.notify_one();
    }
}

impl<S: SessionStore> Writer<S> {
    /// Commits batches until `stop` is cancelled, then commits what is left and ends.
    /// Cancel `stop` only after the broker stopped (nothing records any more).
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let stopping = stop.is_cancelled();
            let work = self.inner.work.notified();
            tokio::pin!(work);
            work.as_mut().enable();
            let (batch, from) = self.take(stopping);
            if batch.is_empty() {
                if stopping {
                    return;
                }
                tokio::select! {
                    () = &mut work => {}
                    () = stop.cancelled() => {}
                }
                continue;
            }
            let to = from + batch.len() as u64;
            let changes: Vec<SessionChange> = batch.iter().map(encode_op).collect();
            drop(batch);
            if let Err(e) = self.store.session_apply(changes).await {
                error!(error = %e, ops = to - from, "cannot write the broker's durable state");
                let mut st = self.inner.lock();
                if st.failures.len() >= FAILURES_KEPT {
                    st.failures.pop_front();
                }
                st.failures.push_back((from, to));
            }
            self.inner.done.send_replace(to);
        }
    }

    /// Takes the next batch: up to [`MAX_BATCH`] ops, not past an open hold (unless
    /// `all`, at shutdown). Returns it with the position before its first op.
    fn take(&self, all: bool) -> (Vec<Op>, u64) {
        let mut st = self.inner.lock();
        let from = st.taken;
        let limit = match st.holds.values().min() {
            Some(&start) if !all => usize::try_from(start.saturating_sub(from)).unwrap_or(usize::MAX),
            _ => usize::MAX,
        };
        let n = st.ops.len().min(limit).min(MAX_BATCH);
        let batch: Vec<Op> = st.ops.drain(..n).collect();
        st.taken += n as u64;
        drop(st);
        if n > 0 {
            self.inner.len.fetch_sub(n, Ordering::Relaxed);
            self.inner.room.notify_waiters();
        }
        (batch, from)
    }
}

/// Deliveries read from the store at a time by [`restore_deliveries`].
pub const RESTORE_PAGE: usize = 1024;

/// Reads the broker's durable state from `store`, but for the sessions' deliveries
/// ([`restore_deliveries`] reads those a page at a time). Rows that cannot be decoded
/// are skipped with a warning.
///
/// # Errors
///
/// The store's, when it cannot be read.
pub async fn load<S: SessionStore>(store: &S) -> Result<Snapshot, StoreError> {
    let state = store.session_load().await?;
    let mut snapshot = Snapshot::default();
    for (topic, body) in state.retained {
        match decode_retained(&body) {
            Some(r) => snapshot.retained.push(r),
            None => warn!(%topic, "stored retained message cannot be decoded: skipped"),
        }
    }
    let mut by_id: BTreeMap<String, StoredSession> = BTreeMap::new();
    for (client_id, body) in state.sessions {
        match decode_session(&client_id, &body) {
            Some(session) => {
                by_id.insert(
                    client_id,
                    StoredSession { session, messages: Vec::new(), incoming_qos2: Vec::new() },
                );
            }
            None => warn!(%client_id, "stored session cannot be decoded: skipped"),
        }
    }
    for (client_id, packet_id) in state.incoming_qos2 {
        if let Some(s) = by_id.get_mut(&client_id) {
            s.incoming_qos2.push(packet_id);
        }
    }
    snapshot.sessions = by_id.into_values().collect();
    Ok(snapshot)
}

/// After [`load`] and [`Broker::restore`](telehub_broker::Broker::restore): reads the
/// stored deliveries [`RESTORE_PAGE`] at a time and hands each page to `broker`, so
/// start-up never holds more than one page of rows besides the session queues (which
/// the queue limits bound). Returns how many deliveries were restored.
///
/// # Errors
///
/// The store's, when it cannot be read.
pub async fn restore_deliveries<S: SessionStore>(
    store: &S,
    broker: &mut telehub_broker::Broker,
) -> Result<usize, StoreError> {
    let mut after = None;
    let mut restored = 0;
    loop {
        let page = store.session_messages(after.take(), RESTORE_PAGE).await?;
        let full = page.len() == RESTORE_PAGE;
        after = page.last().map(|m| (m.client_id.clone(), m.seq));
        let mut records = Vec::with_capacity(page.len());
        for m in page {
            let inflight = m.inflight.map(|(id, stage)| {
                (id, if stage == 2 { InflightStage::Released } else { InflightStage::Published })
            });
            match decode_message(u64::try_from(m.seq).unwrap_or_default(), &m.body, inflight) {
                Some(record) => records.push((ClientId::new(m.client_id), record)),
                None => {
                    warn!(client_id = %m.client_id, seq = m.seq, "stored message cannot be decoded: skipped");
                }
            }
        }
        restored += broker.restore_deliveries(records);
        if !full {
            return Ok(restored);
        }
    }
}

fn encode_op(op: &Op) -> SessionChange {
    let seq = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    match op {
        Op::PutRetained(r) => {
            let mut body = vec![1];
            put_time(&mut body, r.expires_at);
            put_message(&mut body, &r.message);
            SessionChange::PutRetained { topic: r.message.topic.as_str().to_owned(), body }
        }
        Op::DeleteRetained(topic) => SessionChange::DeleteRetained { topic: topic.as_str().to_owned() },
        Op::PutSession(s) => {
            SessionChange::PutSession { client_id: s.client_id.to_string(), body: encode_session(s) }
        }
        Op::DeleteSession(c) => SessionChange::DeleteSession { client_id: c.to_string() },
        Op::PutMessage(c, m) => {
            let mut body = vec![1, m.qos as u8, u8::from(m.retain)];
            put_time(&mut body, m.expires_at);
            put_u32(&mut body, u32::try_from(m.subscription_ids.len()).unwrap_or(0));
            for id in &m.subscription_ids {
                put_u32(&mut body, *id);
            }
            put_message(&mut body, &m.message);
            SessionChange::PutMessage { client_id: c.to_string(), seq: seq(m.seq), body }
        }
        Op::MarkMessage { client_id, seq: s, packet_id, stage } => SessionChange::MarkMessage {
            client_id: client_id.to_string(),
            seq: seq(*s),
            packet_id: *packet_id,
            stage: match stage {
                InflightStage::Published => 1,
                InflightStage::Released => 2,
            },
        },
        Op::DeleteMessage(c, s) => SessionChange::DeleteMessage { client_id: c.to_string(), seq: seq(*s) },
        Op::AddIncomingQos2(c, id) => {
            SessionChange::AddIncomingQos2 { client_id: c.to_string(), packet_id: *id }
        }
        Op::DeleteIncomingQos2(c, id) => {
            SessionChange::DeleteIncomingQos2 { client_id: c.to_string(), packet_id: *id }
        }
    }
}

fn encode_session(s: &SessionRecord) -> Vec<u8> {
    let mut body = vec![1];
    match s.expiry {
        None => body.push(0),
        Some(d) => {
            body.push(1);
            put_u64(&mut body, u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        }
    }
    put_time(&mut body, s.disconnected_at);
    put_u32(&mut body, u32::try_from(s.subscriptions.len()).unwrap_or(0));
    for sub in &s.subscriptions {
        put_bytes(&mut body, sub.filter.as_str().as_bytes());
        let o = sub.options;
        body.extend([o.qos as u8, u8::from(o.no_local), u8::from(o.retain_as_published), o.retain_handling]);
        match sub.subscription_id {
            None => body.push(0),
            Some(id) => {
                body.push(1);
                put_u32(&mut body, id);
            }
        }
    }
    body
}

fn decode_session(client_id: &str, body: &[u8]) -> Option<SessionRecord> {
    let mut r = Reader(body);
    if r.u8()? != 1 {
        return None;
    }
    let expiry = match r.u8()? {
        0 => None,
        _ => Some(Duration::from_millis(r.u64()?)),
    };
    let disconnected_at = r.time()?;
    let n = r.u32()?;
    let mut subscriptions = Vec::new();
    for _ in 0..n {
        let filter = TopicFilter::new(r.string()?).ok()?;
        let qos = QoS::from_u8(r.u8()?)?;
        let (no_local, retain_as_published, retain_handling) = (r.u8()? != 0, r.u8()? != 0, r.u8()?);
        let subscription_id = match r.u8()? {
            0 => None,
            _ => Some(r.u32()?),
        };
        subscriptions.push(SubscriptionRecord {
            filter,
            options: SubOptions { qos, no_local, retain_as_published, retain_handling },
            subscription_id,
        });
    }
    Some(SessionRecord {
        client_id: ClientId::new(client_id.to_owned()),
        expiry,
        disconnected_at,
        subscriptions,
    })
}

fn decode_retained(body: &[u8]) -> Option<RetainedRecord> {
    let mut r = Reader(body);
    if r.u8()? != 1 {
        return None;
    }
    let expires_at = r.time()?;
    let message = Arc::new(r.message()?);
    Some(RetainedRecord { message, expires_at })
}

fn decode_message(seq: u64, body: &[u8], inflight: Option<(u16, InflightStage)>) -> Option<MessageRecord> {
    let mut r = Reader(body);
    if r.u8()? != 1 {
        return None;
    }
    let qos = QoS::from_u8(r.u8()?)?;
    let retain = r.u8()? != 0;
    let expires_at = r.time()?;
    let n = r.u32()?;
    let subscription_ids = (0..n).map(|_| r.u32()).collect::<Option<Vec<_>>>()?;
    let message = Arc::new(r.message()?);
    Some(MessageRecord { seq, message, qos, retain, subscription_ids, expires_at, inflight })
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
    }
}

/// A wall-clock time as milliseconds since the epoch.
fn put_time(out: &mut Vec<u8>, t: Option<SystemTime>) {
    match t {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            let ms =
                t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            put_u64(out, ms);
        }
    }
}

fn put_message(out: &mut Vec<u8>, m: &Message) {
    put_bytes(out, m.topic.as_str().as_bytes());
    put_bytes(out, &m.payload);
    out.extend([m.qos as u8, u8::from(m.retain)]);
    let p = &m.properties;
    out.push(u8::from(p.is_utf8_payload));
    match p.message_expiry {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            put_u64(out, u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        }
    }
    put_opt(out, p.content_type.as_ref().map(|s| s.as_bytes().as_ref()));
    put_opt(out, p.response_topic.as_ref().map(|s| s.as_bytes().as_ref()));
    put_opt(out, p.correlation_data.as_deref());
    put_u32(out, u32::try_from(p.user_properties.len()).unwrap_or(0));
    for (k, v) in &p.user_properties {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
}

/// Reads what the `put_*` functions wrote; `None` when the bytes end early or are not
/// what they should be.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n).map(<[u8]>::to_vec)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }

    fn opt_bytes(&mut self) -> Option<Option<Vec<u8>>> {
        match self.u8()? {
            0 => Some(None),
            _ => self.bytes().map(Some),
        }
    }

    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.opt_bytes()? {
            None => Some(None),
            Some(b) => String::from_utf8(b).ok().map(Some),
        }
    }

    fn time(&mut self) -> Option<Option<SystemTime>> {
        match self.u8()? {
            0 => Some(None),
            _ => Some(Some(UNIX_EPOCH + Duration::from_millis(self.u64()?))),
        }
    }

    fn message(&mut self) -> Option<Message> {
        let topic = TopicName::new(self.string()?).ok()?;
        let payload = Bytes::from(self.bytes()?);
        let qos = QoS::from_u8(self.u8()?)?;
        let retain = self.u8()? != 0;
        let is_utf8_payload = self.u8()? != 0;
        let message_expiry = match self.u8()? {
            0 => None,
            _ => Some(Duration::from_millis(self.u64()?)),
        };
        let content_type = self.opt_string()?.map(Into::into);
        let response_topic = self.opt_string()?.map(Into::into);
        let correlation_data = self.opt_bytes()?.map(Bytes::from);
        let n = self.u32()?;
        let mut user_properties = Vec::new();
        for _ in 0..n {
            user_properties.push((self.string()?.into(), self.string()?.into()));
        }
        Some(Message {
            topic,
            payload,
            qos,
            retain,
            properties: MessageProperties {
                is_utf8_payload,
                message_expiry,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            topic: TopicName::new("a/b").unwrap(),
            payload: Bytes::from_static(b"\x00\xffpayload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: MessageProperties {
                is_utf8_payload: true,
                message_expiry: Some(Duration::from_secs(30)),
                content_type: Some("text/plain".into()),
                response_topic: Some("r/t".into()),
                correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            },
        }
    }

    fn ms(t: SystemTime) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64)
    }

    #[test]
    fn records_round_trip_through_their_encoding() {
        let now = ms(SystemTime::now());
        let m = MessageRecord {
            seq: 42,
            message: Arc::new(message()),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![1, 7],
            expires_at: Some(now),
            inflight: None,
        };
        let SessionChange::PutMessage { body, seq, .. } =
            encode_op(&Op::PutMessage(ClientId::new("c".to_owned()), m.clone()))
        else {
            panic!()
        };
        assert_eq!(seq, 42);
        assert_eq!(decode_message(42, &body, None), Some(m));

        let s = SessionRecord {
            client_id: ClientId::new("c".to_owned()),
            expiry: Some(Duration::from_secs(60)),
            disconnected_at: Some(now),
            subscriptions: vec![SubscriptionRecord {
                filter: TopicFilter::new("$share/g/a/+").unwrap(),
                options: SubOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: 2,
                },
                subscription_id: Some(9),
            }],
        };
        assert_eq!(decode_session("c", &encode_session(&s)), Some(s.clone()));
        let forever = SessionRecord { expiry: None, disconnected_at: None, subscriptions: vec![], ..s };
        assert_eq!(decode_session("c", &encode_session(&forever)), Some(forever));

        let r = RetainedRecord { message: Arc::new(message()), expires_at: None };
        let SessionChange::PutRetained { body, topic } = encode_op(&Op::PutRetained(r.clone())) else {
            panic!()
        };
        assert_eq!(topic, "a/b");
        assert_eq!(decode_retained(&body), Some(r));
        assert_eq!(decode_retained(&body[..body.len() - 1]), None, "truncated");
    }

    #[tokio::test]
    async fn start_up_restores_every_delivery_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            telehub_store::Store::open(&telehub_store::Config::default(), dir.path()).await.unwrap(),
        );
        let session = |id: &str| SessionRecord {
            client_id: ClientId::new(id.to_owned()),
            expiry: Some(Duration::from_secs(3600)),
            disconnected_at: Some(SystemTime::now()),
            subscriptions: vec![],
        };
        let mut changes =
            vec![encode_op(&Op::PutSession(session("a"))), encode_op(&Op::PutSession(session("b")))];
        // more than two pages, interleaved between the sessions as routing writes them
        let total = 2 * RESTORE_PAGE + 100;
        for seq in 0..total {
            let client = if seq % 3 == 0 { "a" } else { "b" };
            let record = MessageRecord {
                seq: seq as u64,
                message: Arc::new(message()),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![],
                expires_at: None,
                inflight: None,
            };
            changes.push(encode_op(&Op::PutMessage(ClientId::new(client.to_owned()), record)));
        }
        store.session_apply(changes).await.unwrap();

        let config = telehub_broker::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
        let mut broker = telehub_broker::Broker::bind(config, None).await.unwrap();
        let snapshot = load(&*store).await.unwrap();
        assert!(snapshot.sessions.iter().all(|s| s.messages.is_empty()), "deliveries come in pages");
        let (journal, _writer) = Journal::new(store.clone(), DEFAULT_CAPACITY);
        assert_eq!(broker.restore(Arc::new(journal), snapshot), (2, 0));
        assert_eq!(restore_deliveries(&*store, &mut broker).await.unwrap(), total);
        store.close().await;
    }
}
