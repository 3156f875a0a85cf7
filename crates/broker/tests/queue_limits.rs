//! Queue limits in bytes: a session queues at most `max_queued_bytes` of payload, every
//! session together at most `max_queued_bytes_total`. At the global cap (and with
//! `queue_full = "refuse"` at a full session queue) a PUBLISH is refused before it is
//! routed to anyone: MQTT 5 QoS 1/2 publishers are told 0x97 (Quota exceeded), MQTT 3.1.1
//! ones are acknowledged and the message dropped, QoS 0 is dropped; `drop_oldest` makes
//! room in the session instead. Every drop and refusal is counted, and the bytes counted
//! as queued go back to 0 once everything is delivered or the sessions are gone.

use std::time::Duration;

use telehub_broker::Config;
use telehub_broker::config::QueueFull;
use telehub_testkit::parse::kind;
use telehub_testkit::{ARRIVAL_TIMEOUT, Connect, Publish, RawClient, TestBroker, Version, build};
use tokio::time::Instant;

const V3: Version = Version::V311;
const V5: Version = Version::V5;

fn config(queue_full: QueueFull, max_queued_bytes: usize, max_queued_bytes_total: usize) -> Config {
    Config { queue_full, max_queued_bytes, max_queued_bytes_total, ..TestBroker::config() }
}

/// A payload of `len` bytes, all `tag`.
fn payload(tag: u8, len: usize) -> Vec<u8> {
    vec![tag; len]
}

/// Waits until the bytes counted as queued in every session are `want`.
async fn assert_queued_bytes_become(broker: &TestBroker, want: u64) {
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    loop {
        let got = broker.stats().snapshot().queued_bytes;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "queued bytes stay {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An MQTT 3.1.1 persistent session subscribed to `filter` at QoS 1, then offline: what
/// is published to it stays queued.
async fn offline_session(broker: &TestBroker, id: &str, filter: &str) {
    let (mut c, _) = broker.client(&Connect::v311(id).clean(false)).await;
    assert_eq!(c.subscribe(1, &[(filter, 1)]).await, [1]);
    c.disconnect().await;
}

/// Sends `publish` and asserts the acknowledgement's kind, packet id and reason code.
async fn expect_ack(c: &mut RawClient, publish: &Publish, kind: u8, reason: u8) {
    c.send(&publish.to_bytes()).await;
    let ack = c.next_packet().await;
    assert_eq!(
        (ack.kind(), ack.packet_id(), ack.reason_code()),
        (kind, publish.packet_id(), reason),
        "{ack:?}"
    );
}

/// Reconnects the offline 3.1.1 session `id` and takes `count` deliveries, acknowledged.
async fn take_queued(broker: &TestBroker, id: &str, count: usize) -> Vec<Vec<u8>> {
    let (mut c, ack) = broker.client(&Connect::v311(id).clean(false)).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    for _ in 0..count {
        let d = c.expect_publish().await;
        c.send(&build::puback(d.id())).await;
        got.push(d.payload);
    }
    c.expect_nothing().await;
    got
}

#[tokio::test]
async fn session_queue_is_bounded_in_bytes_and_the_count_returns_to_0_after_delivery() {
    let broker = TestBroker::start_with(config(QueueFull::DropNew, 10, 1 << 20)).await;
    offline_session(&broker, "offline", "q/#").await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    for i in 0..5u8 {
        // acknowledged whatever the subscriber's queue
        publisher.publish(&Publish::new(V3, "q/x", payload(i, 4)).qos(1, u16::from(i) + 1)).await;
    }
    let stats = broker.stats().snapshot();
    // 4 + 4 fit in 10 bytes, a third does not
    assert_eq!((stats.queued_bytes, stats.messages_dropped), (8, 3), "{stats:?}");
    assert_eq!(stats.messages_quota_exceeded, 0, "a session limit with drop_new refuses nothing");

    assert_eq!(take_queued(&broker, "offline", 2).await, [payload(0, 4), payload(1, 4)]);
    assert_queued_bytes_become(&broker, 0).await;
}

#[tokio::test]
async fn mqtt5_3_4_2_1_publish_over_the_global_cap_gets_0x97_and_is_routed_nowhere() {
    let broker = TestBroker::start_with(config(QueueFull::DropNew, 1 << 20, 20)).await;
    offline_session(&broker, "offline", "fill/#").await;
    let (mut publisher, _) = broker.client(&Connect::v5("pub")).await;
    for i in 1..=2u8 {
        publisher.publish(&Publish::new(V5, "fill/x", payload(i, 8)).qos(1, u16::from(i))).await;
    }
    assert_eq!(broker.stats().snapshot().queued_bytes, 16);
    let (mut watcher, _) = broker.client(&Connect::v5("watcher")).await;
    assert_eq!(watcher.subscribe(1, &[("q/#", 2)]).await, [2]);

    // 16 + 8 > 20: refused, whatever the QoS
    let too_big = |qos, id| Publish::new(V5, "q/x", payload(9, 8)).qos(qos, id);
    expect_ack(&mut publisher, &too_big(1, 10), kind::PUBACK, 0x97).await;
    expect_ack(&mut publisher, &too_big(2, 11), kind::PUBREC, 0x97).await;
    // MQTT 5 §3.5.2.1: a PUBREC >= 0x80 ends the flow; the packet id is not pending
    publisher.send(&build::pubrel(11)).await;
    assert_eq!(publisher.next_packet().await.reason_code(), 0x92);
    publisher.send(&Publish::new(V5, "q/x", payload(9, 8)).to_bytes()).await;
    publisher.ping().await;
    watcher.expect_nothing().await;
    let stats = broker.stats().snapshot();
    assert_eq!((stats.messages_quota_exceeded, stats.queued_bytes), (3, 16), "{stats:?}");

    // what fits still goes through (16 + 4 = 20)
    publisher.publish(&Publish::new(V5, "q/x", payload(7, 4)).qos(1, 12)).await;
    let d = watcher.expect_publish().await;
    assert_eq!(d.payload, payload(7, 4));
    watcher.send(&build::puback(d.id())).await;

    // once the offline session has its messages, the budget is free again
    assert_eq!(take_queued(&broker, "offline", 2).await.len(), 2);
    assert_queued_bytes_become(&broker, 0).await;
    publisher.publish(&Publish::new(V5, "q/x", payload(9, 8)).qos(1, 13)).await;
    assert_eq!(watcher.expect_publish().await.payload, payload(9, 8));
    assert_eq!(broker.stats().snapshot().messages_quota_exceeded, 3);
}

#[tokio::test]
async fn mqtt311_publish_over_the_global_cap_is_acknowledged_dropped_and_counted() {
    let broker = TestBroker::start_with(config(QueueFull::DropNew, 1 << 20, 10)).await;
    offline_session(&broker, "offline", "fill/#").await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.publish(&Publish::new(V3, "fill/x", payload(1, 8)).qos(1, 1)).await;
    let (mut watcher, _) = broker.client(&Connect::v311("watcher")).await;
    assert_eq!(watcher.subscribe(1, &[("q/#", 2)]).await, [2]);

    // 3.1.1 has no negative acknowledgement: the flows complete as usual
    publisher.publish(&Publish::new(V3, "q/x", payload(2, 4)).qos(1, 2)).await;
    publisher.publish(&Publish::new(V3, "q/x", payload(3, 4)).qos(2, 3)).await;
    publisher.publish(&Publish::new(V3, "q/x", payload(4, 4))).await;
    publisher.ping().await; // still connected
    watcher.expect_nothing().await;
    let stats = broker.stats().snapshot();
    assert_eq!((stats.messages_quota_exceeded, stats.queued_bytes), (3, 8), "{stats:?}");
}

#[tokio::test]
async fn refuse_policy_refuses_with_0x97_when_one_session_queue_is_full() {
    let broker = TestBroker::start_with(config(QueueFull::Refuse, 8, 1 << 20)).await;
    offline_session(&broker, "offline", "q/#").await;
    let (mut watcher, _) = broker.client(&Connect::v5("watcher")).await;
    assert_eq!(watcher.subscribe(1, &[("q/#", 1)]).await, [1]);
    let (mut publisher, _) = broker.client(&Connect::v5("pub")).await;
    for i in 1..=2u8 {
        publisher.publish(&Publish::new(V5, "q/x", payload(i, 4)).qos(1, u16::from(i))).await;
        let d = watcher.expect_publish().await;
        watcher.send(&build::puback(d.id())).await;
    }
    // the offline session holds 8 bytes: a third message is refused for everyone
    expect_ack(&mut publisher, &Publish::new(V5, "q/x", payload(3, 4)).qos(1, 3), kind::PUBACK, 0x97).await;
    watcher.expect_nothing().await;
    let stats = broker.stats().snapshot();
    assert_eq!((stats.messages_quota_exceeded, stats.messages_dropped), (1, 0), "{stats:?}");
    assert_eq!(take_queued(&broker, "offline", 2).await, [payload(1, 4), payload(2, 4)]);
}

#[tokio::test]
async fn drop_oldest_at_the_global_cap_drops_the_oldest_of_the_session_queued_to() {
    let broker = TestBroker::start_with(config(QueueFull::DropOldest, 1 << 20, 16)).await;
    offline_session(&broker, "a", "a/#").await;
    offline_session(&broker, "b", "b/#").await;
    let (mut publisher, _) = broker.client(&Connect::v5("pub")).await;
    for i in 1..=2u8 {
        publisher.publish(&Publish::new(V5, "a/x", payload(i, 4)).qos(1, u16::from(i))).await;
    }
    for i in 3..=6u8 {
        // never refused: b makes room by dropping its own oldest
        publisher.publish(&Publish::new(V5, "b/x", payload(i, 4)).qos(1, u16::from(i))).await;
    }
    let stats = broker.stats().snapshot();
    assert_eq!(
        (stats.queued_bytes, stats.messages_dropped, stats.messages_quota_exceeded),
        (16, 2, 0),
        "{stats:?}"
    );
    assert_eq!(take_queued(&broker, "a", 2).await, [payload(1, 4), payload(2, 4)]);
    assert_eq!(take_queued(&broker, "b", 2).await, [payload(5, 4), payload(6, 4)]);
    assert_queued_bytes_become(&broker, 0).await;
}

#[tokio::test]
async fn queued_bytes_return_to_0_when_a_session_is_removed() {
    let broker = TestBroker::start_with(config(QueueFull::DropNew, 1 << 20, 1 << 20)).await;
    offline_session(&broker, "gone", "q/#").await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    for i in 1..=3u8 {
        publisher.publish(&Publish::new(V3, "q/x", payload(i, 5)).qos(1, u16::from(i))).await;
    }
    assert_eq!(broker.stats().snapshot().queued_bytes, 15);
    // a clean session replaces it, with what it had queued
    let (back, ack) = broker.client(&Connect::v311("gone")).await;
    assert!(!ack.session_present);
    assert_queued_bytes_become(&broker, 0).await;
    back.disconnect().await;
    assert_eq!(broker.stats().snapshot().queued_bytes, 0);
}
