//! The ingest hook: every accepted PUBLISH (and every published will) is offered once,
//! with its publisher; refused ones are not.

use std::sync::Arc;

use telehub_broker::IngestHook;
use telehub_broker::hook::IngestAck;
use telehub_core::{ClientId, Message};
use telehub_testkit::{ARRIVAL_TIMEOUT, Connect, Publish, QUIET_WINDOW, TestBroker, Version, build};
use tokio::sync::mpsc;

const V3: Version = Version::V311;

/// What the hook saw: publisher, topic, payload, QoS, retain.
type Offer = (Option<String>, String, Vec<u8>, u8, bool);

/// Counts offers into a channel.
struct ChannelHook(mpsc::UnboundedSender<Offer>);

impl IngestHook for ChannelHook {
    fn offer(&self, publisher: Option<&ClientId>, message: &Arc<Message>) -> Option<IngestAck> {
        let _ = self.0.send((
            publisher.map(|p| p.as_str().to_owned()),
            message.topic.as_str().to_owned(),
            message.payload.to_vec(),
            message.qos as u8,
            message.retain,
        ));
        None // acknowledge at once: holding acks is not what these tests are about
    }
}

async fn next_offer(rx: &mut mpsc::UnboundedReceiver<Offer>) -> Offer {
    match tokio::time::timeout(ARRIVAL_TIMEOUT, rx.recv()).await {
        Ok(Some(offer)) => offer,
        Ok(None) => panic!("hook dropped"),
        Err(_) => panic!("no offer within {ARRIVAL_TIMEOUT:?}"),
    }
}

async fn assert_no_offer(rx: &mut mpsc::UnboundedReceiver<Offer>) {
    if let Ok(offer) = tokio::time::timeout(QUIET_WINDOW, rx.recv()).await {
        panic!("unexpected offer {offer:?}");
    }
}

fn offer(publisher: Option<&str>, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Offer {
    (publisher.map(str::to_owned), topic.to_owned(), payload.to_vec(), qos, retain)
}

#[tokio::test]
async fn every_accepted_publish_is_offered_once() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let broker = TestBroker::start_with_hook(TestBroker::config(), Arc::new(ChannelHook(tx))).await;
    let (mut sensor, _) = broker.client(&Connect::v311("sensor")).await;

    // no subscriber at all: offered anyway (the hook sees messages before routing)
    sensor.publish(&Publish::new(V3, "t/0", b"zero")).await;
    assert_eq!(next_offer(&mut rx).await, offer(Some("sensor"), "t/0", b"zero", 0, false));
    sensor.publish(&Publish::new(V3, "t/1", b"one").qos(1, 1).retain()).await;
    assert_eq!(next_offer(&mut rx).await, offer(Some("sensor"), "t/1", b"one", 1, true));

    // QoS 2 sent twice before PUBREL: offered once
    let q2 = Publish::new(V3, "t/2", b"two").qos(2, 2);
    sensor.send(&q2.to_bytes()).await;
    sensor.expect_bytes(&[0x50, 0x02, 0x00, 0x02]).await;
    sensor.send(&q2.clone().dup().to_bytes()).await;
    sensor.expect_bytes(&[0x50, 0x02, 0x00, 0x02]).await;
    sensor.send(&build::pubrel(2)).await;
    sensor.expect_bytes(&[0x70, 0x02, 0x00, 0x02]).await;
    assert_eq!(next_offer(&mut rx).await, offer(Some("sensor"), "t/2", b"two", 2, false));
    assert_no_offer(&mut rx).await;

    // a refused PUBLISH (wildcard topic) is not offered
    let (mut bad, _) = broker.client(&Connect::v311("bad")).await;
    bad.send(&Publish::new(V3, "t/#", b"no").to_bytes()).await;
    bad.expect_closed().await;
    assert_no_offer(&mut rx).await;
}

#[tokio::test]
async fn wills_are_offered_without_a_publisher() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let broker = TestBroker::start_with_hook(TestBroker::config(), Arc::new(ChannelHook(tx))).await;
    let (dying, _) = broker.client(&Connect::v311("dying").will("wills/dying", b"bye", 1, false)).await;
    drop(dying);
    assert_eq!(next_offer(&mut rx).await, offer(None, "wills/dying", b"bye", 1, false));

    // a normal DISCONNECT publishes no will, so nothing is offered
    let (polite, _) = broker.client(&Connect::v311("polite").will("wills/polite", b"no", 0, false)).await;
    polite.disconnect().await;
    assert_no_offer(&mut rx).await;
}

#[tokio::test]
async fn broker_sys_topics_are_not_offered() {
    // regression: the `$SYS/broker/...` counters went through the hook as if they were
    // wills (publisher `None`), so ingest would store the broker's own stats
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = TestBroker::config();
    let config = telehub_broker::Config { sys_interval: std::time::Duration::from_millis(50), ..config };
    let broker = TestBroker::start_with_hook(config, Arc::new(ChannelHook(tx))).await;
    // the `$SYS` tree is being published...
    let (mut sys, _) = broker.client(&Connect::v311("sys")).await;
    assert_eq!(sys.subscribe(1, &[("$SYS/broker/uptime", 0)]).await, [0]);
    assert_eq!(sys.expect_publish().await.topic, "$SYS/broker/uptime");
    // ... and none of it is offered, while a client's message is
    assert_no_offer(&mut rx).await;
    let (mut sensor, _) = broker.client(&Connect::v311("sensor")).await;
    sensor.publish(&Publish::new(V3, "t/s", b"s").qos(1, 1)).await;
    assert_eq!(next_offer(&mut rx).await, offer(Some("sensor"), "t/s", b"s", 1, false));
}
