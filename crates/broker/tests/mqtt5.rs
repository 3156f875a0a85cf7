//! MQTT 5 properties the broker acts on, over raw bytes: topic aliases from the
//! client ([MQTT-3.3.2-*]) and subscription identifiers on deliveries
//! ([MQTT-3.3.4-3], [MQTT-3.3.4-4]), plus what CONNACK announces.

use telehub_testkit::build::{frame, string, varint};
use telehub_testkit::{Connect, PropertyValue, RawClient, TestBroker, Version};

const V5: Version = Version::V5;

/// A v5 QoS 0 PUBLISH with a Topic Alias property (0x23).
fn publish_with_alias(topic: &str, alias: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    let props = [0x23, (alias >> 8) as u8, alias as u8];
    varint(props.len(), &mut body);
    body.extend_from_slice(&props);
    body.extend_from_slice(payload);
    frame(0x30, &body)
}

/// A v5 SUBSCRIBE with a Subscription Identifier property (0x0B).
fn subscribe_with_id(packet_id: u16, filter: &str, id: usize) -> Vec<u8> {
    let mut props = vec![0x0b];
    varint(id, &mut props);
    let mut body = packet_id.to_be_bytes().to_vec();
    varint(props.len(), &mut body);
    body.extend_from_slice(&props);
    string(filter.as_bytes(), &mut body);
    body.push(0);
    frame(0x82, &body)
}

fn subscription_ids(p: &telehub_testkit::PublishPacket) -> Vec<u64> {
    let mut ids: Vec<u64> = p
        .properties
        .0
        .iter()
        .filter(|(id, _)| *id == 0x0b)
        .map(|(_, v)| match v {
            PropertyValue::VarInt(n) => *n as u64,
            other => panic!("subscription identifier is not a varint: {other:?}"),
        })
        .collect();
    ids.sort_unstable();
    ids
}

async fn subscriber(broker: &TestBroker, filter: &str) -> RawClient {
    let (mut sub, _) = broker.client(&Connect::v5("sub")).await;
    assert_eq!(sub.subscribe(1, &[(filter, 0)]).await, [0]);
    sub
}

#[tokio::test]
async fn connack_announces_topic_alias_maximum_and_identifier_support() {
    let broker = TestBroker::start().await;
    let (_c, ack) = broker.client(&Connect::v5("c")).await;
    assert_eq!(ack.properties.u16(0x22), Some(64), "Topic Alias Maximum (config default)");
    assert_ne!(ack.properties.get(0x29).map(|v| format!("{v:?}")), Some("Byte(0)".into()), "ids available");
    assert_ne!(
        ack.properties.get(0x2a).map(|v| format!("{v:?}")),
        Some("Byte(0)".into()),
        "shared available"
    );
}

#[tokio::test]
async fn mqtt_3_3_2_topic_alias_is_defined_then_used_with_an_empty_topic() {
    let broker = TestBroker::start().await;
    let mut sub = subscriber(&broker, "plant/#").await;
    let (mut device, _) = broker.client(&Connect::v5("dev")).await;
    device.send(&publish_with_alias("plant/7/line/3/temperature", 5, b"21.5")).await;
    device.send(&publish_with_alias("", 5, b"21.6")).await;
    for payload in [&b"21.5"[..], b"21.6"] {
        let p = sub.expect_publish().await;
        assert_eq!((p.topic.as_str(), &p.payload[..]), ("plant/7/line/3/temperature", payload));
    }
    // redefining the alias points it at another topic
    device.send(&publish_with_alias("plant/8/t", 5, b"1")).await;
    device.send(&publish_with_alias("", 5, b"2")).await;
    for payload in [&b"1"[..], b"2"] {
        let p = sub.expect_publish().await;
        assert_eq!((p.topic.as_str(), &p.payload[..]), ("plant/8/t", payload));
    }
}

#[tokio::test]
async fn mqtt_3_3_2_unknown_or_out_of_range_topic_alias_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    for (packet, reason) in [
        (publish_with_alias("", 9, b"x"), 0x94), // never defined: Topic Alias invalid
        (publish_with_alias("a/b", 65, b"x"), 0x94), // above our maximum of 64
        // 0 is not an alias [MQTT-3.3.2-8]; the codec already refuses it as malformed
        (publish_with_alias("a/b", 0, b"x"), 0x81),
    ] {
        let (mut c, _) = broker.client(&Connect::v5("c")).await;
        c.send(&packet).await;
        c.expect_disconnect(reason).await;
    }
    broker.assert_serving().await;
}

#[tokio::test]
async fn mqtt_3_3_4_3_deliveries_carry_the_subscription_identifiers_that_matched() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = broker.client(&Connect::v5("sub")).await;
    sub.send(&subscribe_with_id(1, "a/#", 7)).await;
    assert_eq!(sub.next_packet().await.suback(V5), (1, vec![0]));
    sub.send(&subscribe_with_id(2, "a/+", 300)).await;
    assert_eq!(sub.next_packet().await.suback(V5), (2, vec![0]));
    assert_eq!(sub.subscribe(3, &[("b/#", 0)]).await, [0]); // no identifier

    let (mut publisher, _) = broker.client(&Connect::v5("pub")).await;
    publisher.publish(&telehub_testkit::Publish::new(V5, "a/x", "1").qos(1, 1)).await;
    let p = sub.expect_publish().await;
    assert_eq!(subscription_ids(&p), [7, 300], "one delivery carrying both identifiers [MQTT-3.3.4-4]");
    publisher.publish(&telehub_testkit::Publish::new(V5, "a/x/y", "2").qos(1, 2)).await;
    assert_eq!(subscription_ids(&sub.expect_publish().await), [7]);
    publisher.publish(&telehub_testkit::Publish::new(V5, "b/z", "3").qos(1, 3)).await;
    assert!(subscription_ids(&sub.expect_publish().await).is_empty());
}

#[tokio::test]
async fn retained_message_on_subscribe_carries_the_subscription_identifier() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.client(&Connect::v5("pub")).await;
    publisher.publish(&telehub_testkit::Publish::new(V5, "r/1", "kept").qos(1, 1).retain()).await;
    let (mut sub, _) = broker.client(&Connect::v5("sub")).await;
    sub.send(&subscribe_with_id(1, "r/#", 42)).await;
    assert_eq!(sub.next_packet().await.suback(V5), (1, vec![0]));
    let p = sub.expect_publish().await;
    assert!(p.retain);
    assert_eq!(subscription_ids(&p), [42]);
}

/// A v5 QoS 1 PUBLISH with a Message Expiry Interval property (0x02).
fn publish_with_expiry(topic: &str, packet_id: u16, secs: u32, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    body.extend_from_slice(&packet_id.to_be_bytes());
    let mut props = vec![0x02];
    props.extend_from_slice(&secs.to_be_bytes());
    varint(props.len(), &mut body);
    body.extend_from_slice(&props);
    body.extend_from_slice(payload);
    frame(0x32, &body)
}

#[tokio::test]
async fn mqtt_3_3_2_5_message_expired_while_queued_is_not_delivered() {
    let broker = TestBroker::start().await;
    let persistent = Connect::v5("sleepy").clean(false).session_expiry(600);
    let (mut sub, _) = broker.client(&persistent).await;
    assert_eq!(sub.subscribe(1, &[("x/#", 1)]).await, [1]);
    sub.disconnect().await;

    let (mut publisher, _) = broker.client(&Connect::v5("pub")).await;
    publisher.send(&publish_with_expiry("x/short", 1, 1, b"gone")).await;
    assert_eq!(publisher.next_packet().await.packet_id(), 1);
    publisher.send(&publish_with_expiry("x/long", 2, 100, b"kept")).await;
    assert_eq!(publisher.next_packet().await.packet_id(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(2_200)).await; // past the 1 s expiry

    let (mut sub, ack) = broker.client(&persistent).await;
    assert!(ack.session_present);
    let p = sub.expect_publish().await;
    assert_eq!(p.payload, b"kept", "the expired message was dropped from the queue");
    let left = p.properties.u32(0x02).expect("expiry forwarded");
    assert!((1..=98).contains(&left), "[MQTT-3.3.2-6] the interval left, not the original: {left}");
    sub.send(&telehub_testkit::build::puback(p.id())).await;
    sub.expect_nothing().await;
    assert_eq!(broker.stats().snapshot().messages_expired, 1);
}

#[tokio::test]
async fn mqtt_3_3_2_5_expired_retained_message_is_not_sent_to_new_subscribers() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.client(&Connect::v5("pub")).await;
    let mut short = publish_with_expiry("r/short", 1, 1, b"old");
    short[0] |= 0x01; // RETAIN
    publisher.send(&short).await;
    assert_eq!(publisher.next_packet().await.packet_id(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let (mut sub, _) = broker.client(&Connect::v5("late")).await;
    assert_eq!(sub.subscribe(1, &[("r/#", 1)]).await, [1]);
    sub.expect_nothing().await;
}
