//! The broker's side of durable state, against an in-memory [`Persistence`] double: what
//! it records and in which order, that a QoS 1/2 acknowledgement waits for the flush,
//! that clean sessions record nothing, and that a snapshot built from the recorded ops
//! (what a store would hold) is restored by a new broker: queued messages in order,
//! in-flight ones resent with DUP, QoS 2 packet ids not routed twice, retained messages,
//! subscriptions, and session expiry running on from the disconnect time.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use telehub_broker::persist::{
    InflightStage, MessageRecord, Op, PersistAck, Persistence, RetainedRecord, SessionRecord, Snapshot,
    StoredSession,
};
use telehub_broker::{Broker, Config};
use telehub_testkit::{Connect, Publish, RawClient, Version, build};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A stored session: its fields, its deliveries by seq, its QoS 2 packet ids.
type Model = (SessionRecord, BTreeMap<u64, MessageRecord>, BTreeSet<u16>);

/// Records every op; flushes resolve while the gate is open.
struct Disk {
    ops: Mutex<Vec<Op>>,
    gate: watch::Sender<bool>,
}

impl Disk {
    fn new() -> Arc<Self> {
        Arc::new(Self { ops: Mutex::new(Vec::new()), gate: watch::channel(true).0 })
    }

    fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }

    /// What a store that applied every op in order holds.
    fn snapshot(&self) -> Snapshot {
        let mut retained = BTreeMap::new();
        let mut sessions: BTreeMap<String, Model> = BTreeMap::new();
        for op in self.ops() {
            match op {
                Op::PutRetained(r) => {
                    retained.insert(r.message.topic.as_str().to_owned(), r);
                }
                Op::DeleteRetained(t) => {
                    retained.remove(t.as_str());
                }
                Op::PutSession(s) => {
                    let e = sessions
                        .entry(s.client_id.to_string())
                        .or_insert_with(|| (s.clone(), BTreeMap::new(), BTreeSet::new()));
                    e.0 = s;
                }
                Op::DeleteSession(c) => {
                    sessions.remove(&c.to_string());
                }
                Op::PutMessage(c, m) => {
                    if let Some(s) = sessions.get_mut(&c.to_string()) {
                        s.1.insert(m.seq, m);
                    }
                }
                Op::MarkMessage { client_id, seq, packet_id, stage } => {
                    if let Some(m) = sessions.get_mut(&client_id.to_string()).and_then(|s| s.1.get_mut(&seq))
                    {
                        m.inflight = Some((packet_id, stage));
                    }
                }
                Op::DeleteMessage(c, seq) => {
                    if let Some(s) = sessions.get_mut(&c.to_string()) {
                        s.1.remove(&seq);
                    }
                }
                Op::AddIncomingQos2(c, id) => {
                    if let Some(s) = sessions.get_mut(&c.to_string()) {
                        s.2.insert(id);
                    }
                }
                Op::DeleteIncomingQos2(c, id) => {
                    if let Some(s) = sessions.get_mut(&c.to_string()) {
                        s.2.remove(&id);
                    }
                }
            }
        }
        Snapshot {
            retained: retained.into_values().collect::<Vec<RetainedRecord>>(),
            sessions: sessions
                .into_values()
                .map(|(session, messages, qos2)| StoredSession {
                    session,
                    messages: messages.into_values().collect(),
                    incoming_qos2: qos2.into_iter().collect(),
                })
                .collect(),
        }
    }
}

impl Persistence for Disk {
    fn record(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    fn flush(&self) -> PersistAck {
        let mut gate = self.gate.subscribe();
        Box::pin(async move {
            let _ = gate.wait_for(|open| *open).await;
            Ok(())
        })
    }

    fn has_room(&self) -> bool {
        true
    }

    fn room(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }

    fn hold(&self) -> u64 {
        0
    }

    fn release(&self, _hold: u64) {}
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Running {
    async fn start(disk: &Arc<Disk>, snapshot: Snapshot) -> Self {
        let config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            sys_interval: Duration::ZERO,
            ..Config::default()
        };
        let mut broker = Broker::bind(config, None).await.unwrap();
        broker.restore(Arc::clone(disk) as Arc<dyn Persistence>, snapshot);
        let addr = broker.local_addr();
        let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
        tasks.spawn(broker.run(shutdown.clone()));
        tasks.close();
        Self { addr, shutdown, tasks }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await.unwrap();
    }

    async fn client(&self, connect: &Connect) -> (RawClient, bool) {
        let (c, ack) = RawClient::open(self.addr, connect).await;
        (c, ack.session_present)
    }
}

fn persistent(id: &str) -> Connect {
    Connect::v311(id).clean(false)
}

fn seqs_put(ops: &[Op]) -> Vec<u64> {
    ops.iter().filter_map(|op| if let Op::PutMessage(_, m) = op { Some(m.seq) } else { None }).collect()
}

#[tokio::test]
async fn queued_messages_are_recorded_in_order_acked_after_the_flush_and_restored() {
    let disk = Disk::new();
    let broker = Running::start(&disk, Snapshot::default()).await;
    let (mut sub, present) = broker.client(&persistent("sub")).await;
    assert!(!present);
    assert_eq!(sub.subscribe(1, &[("d/#", 1)]).await, [1]);
    sub.disconnect().await;

    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    // the flush does not resolve: no PUBACK
    disk.gate.send_replace(false);
    publisher.send(&Publish::new(Version::V311, "d/1", b"m0").qos(1, 1).to_bytes()).await;
    assert!(
        publisher.next_packet_within(Duration::from_millis(300)).await.is_none(),
        "PUBACK before the flush"
    );
    assert_eq!(seqs_put(&disk.ops()).len(), 1, "recorded before the PUBACK");
    disk.gate.send_replace(true);
    let ack = publisher.next_packet().await;
    assert_eq!((ack.kind(), ack.packet_id()), (4, 1), "PUBACK once flushed");
    for i in 1..5u16 {
        publisher.publish(&Publish::new(Version::V311, "d/1", format!("m{i}")).qos(1, i + 1)).await;
    }
    publisher.disconnect().await;
    let seqs = seqs_put(&disk.ops());
    assert_eq!(seqs.len(), 5);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "increasing: {seqs:?}");
    broker.stop().await;

    // a new broker on what the disk holds
    let snapshot = disk.snapshot();
    assert_eq!(snapshot.sessions.len(), 1, "only the persistent session: {snapshot:?}");
    assert_eq!(snapshot.sessions[0].messages.len(), 5);
    let disk2 = Disk::new();
    let broker = Running::start(&disk2, snapshot).await;
    let (mut sub, present) = broker.client(&persistent("sub")).await;
    assert!(present, "restored session");
    for i in 0..5 {
        let p = sub.expect_publish().await;
        assert_eq!(
            (p.topic.as_str(), p.payload.as_slice(), p.dup),
            ("d/1", format!("m{i}").as_bytes(), false)
        );
        sub.send(&build::puback(p.id())).await;
    }
    sub.expect_nothing().await;
    // the subscription was restored too
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.publish(&Publish::new(Version::V311, "d/2", b"live").qos(1, 9)).await;
    let p = sub.expect_publish().await;
    assert_eq!(p.payload, b"live");
    sub.send(&build::puback(p.id())).await;
    sub.disconnect().await;
    let deleted = disk2.ops().iter().filter(|op| matches!(op, Op::DeleteMessage(..))).count();
    assert_eq!(deleted, 6, "every acknowledged delivery is removed from disk");
    assert!(disk2.snapshot().sessions[0].messages.is_empty());
    broker.stop().await;
}

#[tokio::test]
async fn in_flight_deliveries_are_resent_with_dup_after_a_restore() {
    let disk = Disk::new();
    let broker = Running::start(&disk, Snapshot::default()).await;
    let (mut sub, _) = broker.client(&persistent("sub")).await;
    sub.subscribe(1, &[("q1", 1), ("q2", 2)]).await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.publish(&Publish::new(Version::V311, "q1", b"one").qos(1, 1)).await;
    publisher.publish(&Publish::new(Version::V311, "q2", b"two").qos(2, 2)).await;
    publisher.publish(&Publish::new(Version::V311, "q2", b"three").qos(2, 3)).await;
    let one = sub.expect_publish().await;
    let two = sub.expect_publish().await;
    let three = sub.expect_publish().await;
    // PUBREC for "two": its PUBREL is what must be resent
    sub.send(&build::pubrec(two.id())).await;
    let rel = sub.next_packet().await;
    assert_eq!((rel.kind(), rel.packet_id()), (6, two.id()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.stop().await; // nothing acknowledged further
    drop(sub);

    let snapshot = disk.snapshot();
    let marks: Vec<_> = snapshot.sessions[0].messages.iter().map(|m| m.inflight).collect();
    assert_eq!(
        marks,
        [
            Some((one.id(), InflightStage::Published)),
            Some((two.id(), InflightStage::Released)),
            Some((three.id(), InflightStage::Published)),
        ]
    );
    let disk2 = Disk::new();
    let broker = Running::start(&disk2, snapshot).await;
    let (mut sub, present) = broker.client(&persistent("sub")).await;
    assert!(present);
    let again = sub.expect_publish().await;
    assert_eq!((again.payload.as_slice(), again.dup, again.id()), (&b"one"[..], true, one.id()));
    let rel = sub.next_packet().await;
    assert_eq!((rel.kind(), rel.packet_id()), (6, two.id()), "PUBREL resent");
    let again = sub.expect_publish().await;
    assert_eq!((again.payload.as_slice(), again.dup, again.qos), (&b"three"[..], true, 2));
    sub.send(&build::puback(one.id())).await;
    sub.send(&build::pubcomp(two.id())).await;
    sub.send(&build::pubrec(three.id())).await;
    let rel = sub.next_packet().await;
    sub.send(&build::pubcomp(rel.packet_id())).await;
    sub.expect_nothing().await;
    sub.disconnect().await;
    broker.stop().await;
    assert!(disk2.snapshot().sessions[0].messages.is_empty());
}

#[tokio::test]
async fn a_qos2_publish_resent_after_a_restore_is_not_routed_twice() {
    let disk = Disk::new();
    let broker = Running::start(&disk, Snapshot::default()).await;
    let (mut sub, _) = broker.client(&persistent("sub")).await;
    sub.subscribe(1, &[("x", 2)]).await;
    sub.disconnect().await;
    let (mut publisher, _) = broker.client(&persistent("pub")).await;
    publisher.send(&Publish::new(Version::V311, "x", b"once").qos(2, 7).to_bytes()).await;
    let rec = publisher.next_packet().await;
    assert_eq!((rec.kind(), rec.packet_id()), (5, 7));
    broker.stop().await; // no PUBREL before the restart
    drop(publisher);

    let snapshot = disk.snapshot();
    let publisher_state = snapshot.sessions.iter().find(|s| s.session.client_id.as_str() == "pub").unwrap();
    assert_eq!(publisher_state.incoming_qos2, [7]);
    let disk2 = Disk::new();
    let broker = Running::start(&disk2, snapshot).await;
    let (mut publisher, present) = broker.client(&persistent("pub")).await;
    assert!(present);
    // resent with DUP (it did not see the PUBREC): acknowledged, not routed
    publisher.send(&Publish::new(Version::V311, "x", b"once").qos(2, 7).dup().to_bytes()).await;
    let rec = publisher.next_packet().await;
    assert_eq!((rec.kind(), rec.packet_id()), (5, 7));
    publisher.send(&build::pubrel(7)).await;
    let comp = publisher.next_packet().await;
    assert_eq!((comp.kind(), comp.packet_id(), comp.reason_code()), (7, 7, 0));
    publisher.disconnect().await;
    let (mut sub, _) = broker.client(&persistent("sub")).await;
    let p = sub.expect_publish().await;
    assert_eq!(p.payload, b"once");
    sub.send(&build::pubrec(p.id())).await;
    let rel = sub.next_packet().await;
    sub.send(&build::pubcomp(rel.packet_id())).await;
    sub.expect_nothing().await;
    sub.disconnect().await;
    broker.stop().await;
    assert!(disk2.snapshot().sessions.iter().all(|s| s.incoming_qos2.is_empty() && s.messages.is_empty()));
}

/// The window a crash could otherwise open: a QoS 2 message forwarded to a connected
/// persistent session before its record is committed would, after a restart, be routed
/// again when its publisher (never PUBRECed) sends it again, and reach the client twice.
#[tokio::test]
async fn a_qos2_delivery_to_a_persistent_session_goes_out_only_once_committed() {
    let disk = Disk::new();
    let broker = Running::start(&disk, Snapshot::default()).await;
    let (mut sub, _) = broker.client(&persistent("sub2")).await;
    assert_eq!(sub.subscribe(1, &[("q/#", 2), ("one/#", 1)]).await, [2, 1]);
    let (mut publisher, _) = broker.client(&Connect::v311("pub2")).await;
    disk.gate.send_replace(false);
    publisher.send(&Publish::new(Version::V311, "q/1", b"exactly").qos(2, 1).to_bytes()).await;
    assert!(
        sub.next_packet_within(Duration::from_millis(300)).await.is_none(),
        "a QoS 2 delivery left before its record was committed"
    );
    assert_eq!(seqs_put(&disk.ops()).len(), 1, "recorded, waiting for the commit");
    disk.gate.send_replace(true);
    let p = sub.expect_publish().await;
    assert_eq!((p.topic.as_str(), p.payload.as_slice(), p.qos), ("q/1", &b"exactly"[..], 2));
    let rec = publisher.next_packet().await;
    assert_eq!((rec.kind(), rec.packet_id()), (5, 1), "PUBREC once committed");
    sub.disconnect().await;
    publisher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn retained_messages_are_kept_and_clean_sessions_record_nothing() {
    let disk = Disk::new();
    let broker = Running::start(&disk, Snapshot::default()).await;
    let (mut sub, _) = broker.client(&Connect::v311("clean")).await;
    sub.subscribe(1, &[("#", 1)]).await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.publish(&Publish::new(Version::V311, "plain", b"p").qos(1, 1)).await;
    let p = sub.expect_publish().await;
    sub.send(&build::puback(p.id())).await;
    assert!(
        disk.ops().is_empty(),
        "clean sessions and non-retained messages record nothing: {:?}",
        disk.ops()
    );
    sub.disconnect().await;
    publisher.publish(&Publish::new(Version::V311, "r/1", b"kept").qos(1, 2).retain()).await;
    publisher.publish(&Publish::new(Version::V311, "r/2", b"gone").qos(0, 0).retain()).await;
    publisher.publish(&Publish::new(Version::V311, "r/2", b"").qos(1, 3).retain()).await;
    publisher.disconnect().await;
    broker.stop().await;
    let kinds: Vec<&str> = disk
        .ops()
        .iter()
        .map(|op| match op {
            Op::PutRetained(_) => "put",
            Op::DeleteRetained(_) => "delete",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["put", "put", "delete"]);

    let broker = Running::start(&Disk::new(), disk.snapshot()).await;
    let (mut sub, _) = broker.client(&Connect::v311("late")).await;
    sub.subscribe(1, &[("r/#", 1)]).await;
    let p = sub.expect_publish().await;
    assert_eq!((p.topic.as_str(), p.payload.as_slice(), p.retain), ("r/1", &b"kept"[..], true));
    sub.send(&build::puback(p.id())).await;
    sub.expect_nothing().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn restored_sessions_expire_from_their_disconnect_time() {
    let disk = Disk::new();
    let broker = Running::start(&disk, Snapshot::default()).await;
    let (mut short, _) = broker.client(&Connect::v5("short").clean(false).session_expiry(2)).await;
    short.subscribe(1, &[("s", 1)]).await;
    short.disconnect().await;
    let (mut long, _) = broker.client(&Connect::v5("long").clean(false).session_expiry(600)).await;
    long.subscribe(1, &[("s", 1)]).await;
    long.disconnect().await;
    broker.stop().await;
    let snapshot = disk.snapshot();
    assert_eq!(snapshot.sessions.len(), 2);
    assert!(snapshot.sessions.iter().all(|s| s.session.disconnected_at.is_some()));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let disk2 = Disk::new();
    let broker = Running::start(&disk2, snapshot).await;
    // 1.5 s of its 2 s were used before the restart: gone about 0.5 s after it
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (c, present) = broker.client(&Connect::v5("short").clean(false).session_expiry(2)).await;
    assert!(!present, "expired across the restart");
    c.disconnect().await;
    let (c, present) = broker.client(&Connect::v5("long").clean(false).session_expiry(600)).await;
    assert!(present);
    c.disconnect().await;
    broker.stop().await;
    assert!(disk2.ops().iter().any(|op| matches!(op, Op::DeleteSession(c) if c.as_str() == "short")));
}
