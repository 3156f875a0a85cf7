//! Bounded session queues: an offline persistent session keeps at most
//! `max_queued_messages` deliveries (the rest are dropped and counted), and a subscriber
//! that stops reading does not stop the others from receiving.

use std::collections::BTreeSet;
use std::time::Duration;

use telehub_broker::Config;
use telehub_broker::config::QueueFull;
use telehub_testkit::{Connect, Publish, RawClient, TestBroker, Version, build};

const V3: Version = Version::V311;

fn payload(i: usize) -> Vec<u8> {
    format!("m{i:02}").into_bytes()
}

/// Subscribes a persistent session to `q/#` at QoS 1, disconnects it, publishes
/// `count` QoS 1 messages, and returns the broker, the payloads the session gets on
/// reconnect, and the dropped-message count at that point.
async fn offline_session_with(
    queue_full: QueueFull,
    max_queued: usize,
    count: usize,
) -> (BTreeSet<Vec<u8>>, u64) {
    let config = Config { max_queued_messages: max_queued, queue_full, ..TestBroker::config() };
    let broker = TestBroker::start_with(config).await;
    let (mut sub, _) = broker.client(&Connect::v311("offline").clean(false)).await;
    assert_eq!(sub.subscribe(1, &[("q/#", 1)]).await, [1]);
    sub.disconnect().await;

    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    for i in 0..count {
        // every publish is accepted and acknowledged, whatever the subscriber's queue
        publisher.publish(&Publish::new(V3, "q/x", payload(i)).qos(1, i as u16 + 1)).await;
    }
    let dropped = broker.stats().snapshot().messages_dropped;

    let (mut back, ack) = broker.client(&Connect::v311("offline").clean(false)).await;
    assert!(ack.session_present);
    let mut got = BTreeSet::new();
    for _ in 0..max_queued {
        let d = back.expect_publish().await;
        back.send(&build::puback(d.id())).await;
        assert!(got.insert(d.payload), "each delivery once");
    }
    back.expect_nothing().await;
    (got, dropped)
}

#[tokio::test]
async fn offline_session_keeps_at_most_max_queued_with_drop_new() {
    let (got, dropped) = offline_session_with(QueueFull::DropNew, 3, 10).await;
    // drop_new keeps the oldest
    assert_eq!(got, (0..3).map(payload).collect());
    assert_eq!(dropped, 7);
}

#[tokio::test]
async fn offline_session_keeps_at_most_max_queued_with_drop_oldest() {
    let (got, dropped) = offline_session_with(QueueFull::DropOldest, 3, 10).await;
    // drop_oldest keeps the newest
    assert_eq!(got, (7..10).map(payload).collect());
    assert_eq!(dropped, 7);
}

async fn subscriber(broker: &TestBroker, id: &str) -> RawClient {
    let (mut c, _) = broker.client(&Connect::v311(id)).await;
    assert_eq!(c.subscribe(1, &[("load/#", 1)]).await, [1]);
    c
}

#[tokio::test]
async fn slow_subscriber_does_not_stop_the_others() {
    const MAX_QUEUED: usize = 10;
    const MAX_INFLIGHT: usize = 2;
    const COUNT: usize = 60;
    let config = Config {
        max_queued_messages: MAX_QUEUED,
        max_inflight: MAX_INFLIGHT as u16,
        queue_full: QueueFull::DropNew,
        publish_backpressure: Duration::from_millis(250),
        ..TestBroker::config()
    };
    let broker = TestBroker::start_with(config).await;
    // connected, subscribed, and from now on neither reading nor acknowledging
    let mut slow = subscriber(&broker, "slow").await;
    let mut fast = subscriber(&broker, "fast").await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;

    let publishing = async {
        for i in 0..COUNT {
            publisher.publish(&Publish::new(V3, "load/x", payload(i)).qos(1, i as u16 + 1)).await;
        }
    };
    let receiving = async {
        let mut got = BTreeSet::new();
        while got.len() < COUNT {
            let d = fast.expect_publish().await;
            fast.send(&build::puback(d.id())).await;
            assert!(got.insert(d.payload), "each delivery once");
        }
        got
    };
    let ((), got) = tokio::join!(publishing, receiving);
    // the fast subscriber got everything, the publisher was never stalled for good
    assert_eq!(got, (0..COUNT).map(payload).collect());
    // the slow one holds a full window and a full queue; the rest were dropped for it
    let kept = MAX_INFLIGHT + MAX_QUEUED;
    assert_eq!(broker.stats().snapshot().messages_dropped, (COUNT - kept) as u64);

    // once it reads again it gets exactly what was kept for it
    let mut slow_got = BTreeSet::new();
    for _ in 0..kept {
        let d = slow.expect_publish().await;
        slow.send(&build::puback(d.id())).await;
        slow_got.insert(d.payload);
    }
    assert_eq!(slow_got, (0..kept).map(payload).collect());
    slow.expect_nothing().await;
}
