//! MQTT 5 shared subscriptions `$share/{group}/{filter}` over the wire: each message to
//! one member of the group, balanced round robin, members that left are skipped, a
//! shared subscription beside an ordinary one gets its own delivery, and No Local on a
//! shared subscription is a protocol error.

use std::collections::BTreeSet;

use telehub_testkit::{Connect, Publish, RawClient, TestBroker, Version};

const V5: Version = Version::V5;

async fn member(broker: &TestBroker, id: &str, filter: &str) -> RawClient {
    let (mut c, ack) = broker.client(&Connect::v5(id)).await;
    assert_eq!(ack.code, 0);
    assert_eq!(c.subscribe(1, &[(filter, 0)]).await, [0], "{filter} granted at QoS 0");
    c
}

/// Drains QoS 0 deliveries until the quiet window passes; returns their payloads.
async fn drain(c: &mut RawClient) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(p) = c.next_packet_within(telehub_testkit::QUIET_WINDOW).await {
        got.push(String::from_utf8(p.publish(V5).payload).unwrap());
    }
    got
}

async fn publish_n(publisher: &mut RawClient, range: std::ops::Range<u16>) {
    for i in range {
        publisher.publish(&Publish::new(V5, "jobs/new", format!("m{i}")).qos(1, i + 1)).await;
    }
}

#[tokio::test]
async fn mqtt_4_8_2_each_message_goes_to_one_member_and_the_group_is_balanced() {
    let broker = TestBroker::start().await;
    let mut a = member(&broker, "worker-a", "$share/workers/jobs/#").await;
    let mut b = member(&broker, "worker-b", "$share/workers/jobs/+").await; // same group name, other filter: own group
    let mut c = member(&broker, "worker-c", "$share/workers/jobs/#").await;
    let mut plain = member(&broker, "audit", "jobs/#").await;
    let (mut publisher, _) = broker.client(&Connect::v5("pub")).await;
    publish_n(&mut publisher, 0..10).await;

    let (got_a, got_c) = (drain(&mut a).await, drain(&mut c).await);
    assert_eq!(got_a.len() + got_c.len(), 10, "each message to exactly one member: {got_a:?} {got_c:?}");
    let union: BTreeSet<_> = got_a.iter().chain(&got_c).cloned().collect();
    assert_eq!(union.len(), 10, "no message twice");
    assert_eq!((got_a.len(), got_c.len()), (5, 5), "round robin over two connected members");
    assert_eq!(drain(&mut b).await.len(), 10, "a group with another filter is another group");
    assert_eq!(drain(&mut plain).await.len(), 10, "an ordinary subscription gets every message");
}

#[tokio::test]
async fn mqtt_4_8_2_a_member_that_left_is_skipped() {
    let broker = TestBroker::start().await;
    let a = member(&broker, "worker-a", "$share/g/jobs/#").await;
    let mut b = member(&broker, "worker-b", "$share/g/jobs/#").await;
    a.disconnect().await; // clean start, expiry 0: its session and membership end
    let (mut publisher, _) = broker.client(&Connect::v5("pub")).await;
    publish_n(&mut publisher, 0..6).await;
    assert_eq!(drain(&mut b).await.len(), 6, "the remaining member gets everything");
}

#[tokio::test]
async fn shared_subscription_gets_no_retained_messages_and_can_be_unsubscribed() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.client(&Connect::v5("pub")).await;
    publisher.publish(&Publish::new(V5, "jobs/kept", "r").qos(1, 1).retain()).await;
    let mut a = member(&broker, "worker-a", "$share/g/jobs/#").await;
    assert!(drain(&mut a).await.is_empty(), "no retained message for a shared subscription");
    assert_eq!(a.unsubscribe(2, &["$share/g/jobs/#"]).await, [0x00]);
    publish_n(&mut publisher, 10..12).await;
    assert!(drain(&mut a).await.is_empty(), "unsubscribed");
}

#[tokio::test]
async fn mqtt_4_8_2_2_malformed_share_names_are_refused_per_filter() {
    let broker = TestBroker::start().await;
    let (mut c, _) = broker.client(&Connect::v5("c")).await;
    let codes = c.subscribe(1, &[("$share/g", 0), ("$share/+/a", 0), ("$share/ok/a", 1)]).await;
    assert_eq!(codes, [0x8f, 0x8f, 0x01]);
}

#[tokio::test]
async fn mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let (mut c, _) = broker.client(&Connect::v5("c")).await;
    c.send(&telehub_testkit::build::subscribe(V5, 1, &[("$share/g/a", 0x04)])).await;
    c.expect_disconnect(0x82).await;
    broker.assert_serving().await;
}
