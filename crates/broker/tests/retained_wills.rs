//! Retained messages (set, replace, clear, RETAIN flag on delivery) and wills (when they
//! are and are not published, retained wills, MQTT 5 DISCONNECT 0x04).

use telehub_testkit::{Connect, Publish, RawClient, TestBroker, Version, build};

const V3: Version = Version::V311;

async fn subscribed(broker: &TestBroker, id: &str, filter: &str) -> RawClient {
    let (mut c, _) = broker.client(&Connect::v311(id)).await;
    assert_eq!(c.subscribe(1, &[(filter, 0)]).await, [0]);
    c
}

/// Publishes a retained message at QoS 1 and waits for the PUBACK: stored by then.
async fn retain(publisher: &mut RawClient, id: u16, topic: &str, payload: &[u8]) {
    publisher.publish(&Publish::new(V3, topic, payload).qos(1, id).retain()).await;
}

#[tokio::test]
async fn mqtt_3_3_1_6_retained_message_reaches_a_new_subscriber_with_retain_set() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    retain(&mut publisher, 1, "site/1/temp", b"21.5").await;

    let (mut late, _) = broker.client(&Connect::v311("late")).await;
    assert_eq!(late.subscribe(1, &[("site/+/temp", 1)]).await, [1]);
    // [MQTT-3.3.1-8] RETAIN is 1 because it is sent for a new subscription
    let got = late.next_packet().await;
    assert_eq!(got.first_byte, 0x33, "QoS 1 + RETAIN: {got:?}");
    let got = got.publish(V3);
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("site/1/temp", &b"21.5"[..]));
    late.send(&build::puback(got.id())).await;
    late.expect_nothing().await;
}

#[tokio::test]
async fn mqtt_3_3_1_5_retained_message_is_replaced() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    retain(&mut publisher, 1, "r/x", b"old").await;
    retain(&mut publisher, 2, "r/x", b"new").await;

    let mut late = subscribed(&broker, "late", "r/x").await;
    let got = late.expect_publish().await;
    assert_eq!((got.retain, &got.payload[..]), (true, &b"new"[..]));
    late.expect_nothing().await; // one retained message per topic
}

#[tokio::test]
async fn mqtt_3_3_1_10_empty_retained_payload_clears() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    retain(&mut publisher, 1, "r/gone", b"here").await;
    retain(&mut publisher, 2, "r/kept", b"kept").await;
    // [MQTT-3.3.1-10] [MQTT-3.3.1-11] an empty retained PUBLISH removes it and is not stored
    retain(&mut publisher, 3, "r/gone", b"").await;

    let mut late = subscribed(&broker, "late", "r/#").await;
    let got = late.expect_publish().await;
    assert_eq!((got.topic.as_str(), got.retain, &got.payload[..]), ("r/kept", true, &b"kept"[..]));
    late.expect_nothing().await;
}

#[tokio::test]
async fn mqtt_3_3_1_9_live_delivery_has_retain_flag_0_for_v311() {
    let broker = TestBroker::start().await;
    let mut sub = subscribed(&broker, "sub", "live/#").await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    retain(&mut publisher, 1, "live/a", b"v").await;
    // established subscription: RETAIN 0 whatever the publisher set
    sub.expect_bytes(&[0x30, 0x09, 0x00, 0x06, b'l', b'i', b'v', b'e', b'/', b'a', b'v']).await;

    // ... and it was stored: a new subscription gets it with RETAIN 1
    assert_eq!(sub.subscribe(2, &[("live/a", 0)]).await, [0]);
    let again = sub.expect_publish().await;
    assert_eq!((again.topic.as_str(), again.retain), ("live/a", true));
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_is_published_when_the_socket_closes_without_disconnect() {
    let broker = TestBroker::start().await;
    let mut watcher = subscribed(&broker, "watcher", "wills/#").await;
    let (mut dying, _) = broker.client(&Connect::v311("dying").will("wills/dying", b"lost", 1, false)).await;
    dying.shutdown_write().await;
    drop(dying);

    let will = watcher.expect_publish().await;
    assert_eq!((will.topic.as_str(), &will.payload[..], will.retain), ("wills/dying", &b"lost"[..], false));
}

#[tokio::test]
async fn mqtt_3_1_2_24_will_is_published_on_keep_alive_timeout() {
    let broker = TestBroker::start().await;
    let mut watcher = subscribed(&broker, "watcher", "wills/#").await;
    // keep-alive 1 s and then silence: the broker closes after 1.5 s
    let (mut silent, _) = broker
        .client(&Connect::v311("silent").keep_alive(1).will("wills/silent", b"timeout", 0, false))
        .await;

    let will = watcher.expect_publish().await;
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("wills/silent", &b"timeout"[..]));
    silent.expect_closed().await;
}

#[tokio::test]
async fn mqtt_3_1_2_10_will_is_not_published_after_disconnect() {
    let broker = TestBroker::start().await;
    let mut watcher = subscribed(&broker, "watcher", "wills/#").await;
    let (polite, _) = broker.client(&Connect::v311("polite").will("wills/polite", b"no", 0, true)).await;
    polite.disconnect().await;
    watcher.expect_nothing().await;

    // nor retained
    let mut late = subscribed(&broker, "late", "wills/#").await;
    late.expect_nothing().await;

    // MQTT 5 DISCONNECT 0x00 discards the will too ([MQTT-3.14.4-3])
    let (mut polite5, _) =
        broker.client(&Connect::v5("polite5").will("wills/polite5", b"no", 0, false)).await;
    polite5.send(&build::disconnect_v5(0x00)).await;
    polite5.expect_closed().await;
    watcher.expect_nothing().await;
}

#[tokio::test]
async fn mqtt_3_1_2_17_retained_will_is_retained() {
    let broker = TestBroker::start().await;
    let mut watcher = subscribed(&broker, "watcher", "wills/#").await;
    let (dying, _) = broker.client(&Connect::v311("dying").will("wills/kept", b"last", 1, true)).await;
    drop(dying);

    // live delivery of the will: RETAIN 0 for an established subscription
    let will = watcher.expect_publish().await;
    assert_eq!((will.topic.as_str(), will.retain), ("wills/kept", false));

    // it was stored as the topic's retained message
    let mut late = subscribed(&broker, "late", "wills/kept").await;
    let got = late.expect_publish().await;
    assert_eq!((got.topic.as_str(), &got.payload[..], got.retain), ("wills/kept", &b"last"[..], true));
}

#[tokio::test]
async fn mqtt5_3_14_2_1_disconnect_with_will_message_publishes_the_will() {
    let broker = TestBroker::start().await;
    let mut watcher = subscribed(&broker, "watcher", "wills/#").await;
    let (mut leaving, _) =
        broker.client(&Connect::v5("leaving").will("wills/leaving", b"bye", 0, false)).await;
    // 0x04 Disconnect with Will Message
    leaving.send(&build::disconnect_v5(0x04)).await;
    leaving.expect_closed().await;

    let will = watcher.expect_publish().await;
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("wills/leaving", &b"bye"[..]));
}
