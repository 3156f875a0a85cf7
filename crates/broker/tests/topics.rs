//! Topic filters over the wire: `+` and `#`, `$` topics hidden from leading wildcards,
//! overlapping subscriptions of one session merged into one delivery, and UNSUBSCRIBE.
//!
//! Negative checks publish at QoS 1 and wait for the PUBACK first: by then the broker
//! has routed the message, so the quiet window only covers the last hop.

use std::time::Duration;

use telehub_broker::Config;
use telehub_testkit::{Connect, Publish, RawClient, TestBroker, Version, build};

const V3: Version = Version::V311;
const V5: Version = Version::V5;

/// Publishes `topic` at QoS 1 and waits until the broker has routed it.
async fn publish(publisher: &mut RawClient, id: u16, topic: &str) {
    publisher.publish(&Publish::new(publisher.version(), topic, topic).qos(1, id)).await;
}

/// Receives one QoS 0 delivery and returns its topic.
async fn received_topic(sub: &mut RawClient) -> String {
    let d = sub.expect_publish().await;
    assert_eq!(d.payload, d.topic.as_bytes(), "payload is the topic it was published to");
    d.topic
}

#[tokio::test]
async fn mqtt_4_7_1_3_single_level_wildcard_matches_exactly_one_level() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = broker.client(&Connect::v311("sub")).await;
    assert_eq!(sub.subscribe(1, &[("a/+/c", 0), ("+", 0)]).await, [0, 0]);
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;

    for (i, topic) in ["a/b/c", "a//c", "top"].into_iter().enumerate() {
        publish(&mut publisher, i as u16 + 1, topic).await;
        assert_eq!(received_topic(&mut sub).await, topic);
    }
    // `+` is one whole level: not zero levels, not two, not a prefix
    for (i, topic) in ["a/c", "a/b/x/c", "a/b/c/d", "a/b", "top/x", "/top"].into_iter().enumerate() {
        publish(&mut publisher, i as u16 + 10, topic).await;
    }
    sub.expect_nothing().await;
}

#[tokio::test]
async fn mqtt_4_7_1_2_multi_level_wildcard_matches_parent_and_below() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = broker.client(&Connect::v311("sub")).await;
    assert_eq!(sub.subscribe(1, &[("a/#", 0)]).await, [0]);
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;

    // [MQTT-4.7.1-2] `a/#` also matches `a` itself
    for (i, topic) in ["a", "a/b", "a/b/c/d", "a/"].into_iter().enumerate() {
        publish(&mut publisher, i as u16 + 1, topic).await;
        assert_eq!(received_topic(&mut sub).await, topic);
    }
    for (i, topic) in ["b/a", "ab", "/a"].into_iter().enumerate() {
        publish(&mut publisher, i as u16 + 10, topic).await;
    }
    sub.expect_nothing().await;
}

#[tokio::test]
async fn mqtt_4_7_2_1_dollar_topics_are_not_matched_by_leading_wildcards() {
    let broker = TestBroker::start().await;
    let (mut hash, _) = broker.client(&Connect::v311("hash")).await;
    assert_eq!(hash.subscribe(1, &[("#", 0)]).await, [0]);
    let (mut plus, _) = broker.client(&Connect::v311("plus")).await;
    assert_eq!(plus.subscribe(1, &[("+/x", 0), ("+/#", 0)]).await, [0, 0]);
    let (mut sys, _) = broker.client(&Connect::v311("sys")).await;
    assert_eq!(sys.subscribe(1, &[("$SYS/#", 0)]).await, [0]);
    let (mut sys_plus, _) = broker.client(&Connect::v311("sys-plus")).await;
    assert_eq!(sys_plus.subscribe(1, &[("$SYS/+", 0)]).await, [0]);
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;

    publish(&mut publisher, 1, "$SYS/x").await;
    // a filter that names `$SYS` explicitly matches
    assert_eq!(received_topic(&mut sys).await, "$SYS/x");
    assert_eq!(received_topic(&mut sys_plus).await, "$SYS/x");
    hash.expect_nothing().await;
    plus.expect_nothing().await;

    // the same wildcards do match an ordinary topic of the same shape
    publish(&mut publisher, 2, "SYS/x").await;
    assert_eq!(received_topic(&mut hash).await, "SYS/x");
    assert_eq!(received_topic(&mut plus).await, "SYS/x");
    sys.expect_nothing().await;
}

#[tokio::test]
async fn mqtt_4_7_2_1_broker_sys_topics_reach_only_dollar_filters() {
    let config = Config { sys_interval: Duration::from_millis(50), ..TestBroker::config() };
    let broker = TestBroker::start_with(config).await;
    let (mut hash, _) = broker.client(&Connect::v311("hash")).await;
    assert_eq!(hash.subscribe(1, &[("#", 0), ("+/broker/#", 0)]).await, [0, 0]);
    let (mut sys, _) = broker.client(&Connect::v311("sys")).await;
    assert_eq!(sys.subscribe(1, &[("$SYS/broker/#", 0)]).await, [0]);
    let d = sys.expect_publish().await;
    assert!(d.topic.starts_with("$SYS/broker/"), "{d:?}");
    // several publishing rounds go by; none reaches `#` or `+/broker/#`
    hash.expect_nothing().await;
}

/// [MQTT-3.3.5-1] overlapping subscriptions of one session: one delivery, at the highest
/// granted QoS (ARCHITECTURE.md: the broker merges per session for 3.1.1 and 5.0 alike).
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos(version: Version) {
    let broker = TestBroker::start().await;
    let connect = |id: &str| if version.is_v5() { Connect::v5(id) } else { Connect::v311(id) };
    let (mut sub, _) = broker.client(&connect("sub")).await;
    assert_eq!(sub.subscribe(1, &[("over/#", 0), ("over/+", 1), ("over/x", 0)]).await, [0, 1, 0]);
    let (mut publisher, _) = broker.client(&connect("pub")).await;

    publisher.publish(&Publish::new(version, "over/x", b"q2").qos(2, 1)).await;
    let d = sub.expect_publish().await;
    assert_eq!((d.topic.as_str(), d.qos, &d.payload[..]), ("over/x", 1, &b"q2"[..]));
    sub.send(&build::puback(d.id())).await;
    sub.expect_nothing().await;

    // a topic only `over/#` matches: QoS 0
    publisher.publish(&Publish::new(version, "over/x/y", b"deep").qos(1, 2)).await;
    let d = sub.expect_publish().await;
    assert_eq!((d.topic.as_str(), d.qos), ("over/x/y", 0));
    sub.expect_nothing().await;
}

#[tokio::test]
async fn mqtt_3_3_5_1_overlapping_subscriptions_v311() {
    overlapping_subscriptions_deliver_once_at_the_highest_qos(V3).await;
}

#[tokio::test]
async fn mqtt_3_3_5_1_overlapping_subscriptions_v5() {
    overlapping_subscriptions_deliver_once_at_the_highest_qos(V5).await;
}

#[tokio::test]
async fn mqtt_3_10_4_2_unsubscribe_stops_delivery() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = broker.client(&Connect::v311("sub")).await;
    assert_eq!(sub.subscribe(1, &[("un/a", 0), ("un/b", 0)]).await, [0, 0]);
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publish(&mut publisher, 1, "un/a").await;
    assert_eq!(received_topic(&mut sub).await, "un/a");

    // [MQTT-3.10.4-4] UNSUBACK, exactly, with the UNSUBSCRIBE's packet id
    sub.send(&build::unsubscribe(V3, 0x0102, &["un/a"])).await;
    sub.expect_bytes(&[0xb0, 0x02, 0x01, 0x02]).await;
    publish(&mut publisher, 2, "un/a").await;
    sub.expect_nothing().await;

    // the other subscription is untouched
    publish(&mut publisher, 3, "un/b").await;
    assert_eq!(received_topic(&mut sub).await, "un/b");
}

#[tokio::test]
async fn mqtt_3_10_4_5_unsuback_is_sent_even_for_unknown_filters() {
    let broker = TestBroker::start().await;
    let (mut v3, _) = broker.client(&Connect::v311("un3")).await;
    v3.send(&build::unsubscribe(V3, 7, &["never/subscribed"])).await;
    v3.expect_bytes(&[0xb0, 0x02, 0x00, 0x07]).await;

    // MQTT 5: one reason code per filter, 0x00 removed, 0x11 No subscription existed
    let (mut v5, _) = broker.client(&Connect::v5("un5")).await;
    assert_eq!(v5.subscribe(1, &[("known", 0)]).await, [0]);
    assert_eq!(v5.unsubscribe(8, &["known", "never/subscribed"]).await, [0x00, 0x11]);
    // and unsubscribing again finds nothing
    assert_eq!(v5.unsubscribe(9, &["known"]).await, [0x11]);
}
