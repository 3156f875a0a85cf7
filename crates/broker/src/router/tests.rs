//! Router tests: trie matching against the reference matcher in `telehub-core`,
//! merging of overlapping subscriptions, and retained messages.

use super::*;
use bytes::Bytes;
use telehub_core::MessageProperties;
use telehub_mqtt::{OverflowPolicy, SessionLimits};

const T0: BrokerTime = BrokerTime(std::time::Duration::ZERO);

fn entry(id: &str) -> Arc<SessionEntry> {
    let limits = SessionLimits {
        max_queued: 10,
        max_queued_bytes: usize::MAX,
        max_inflight: 10,
        overflow: OverflowPolicy::DropNew,
    };
    Arc::new(SessionEntry::new_for_test(ClientId::new(id.to_owned()), limits))
}

fn sub(router: &Router, e: &Arc<SessionEntry>, filter: &str, qos: QoS) -> bool {
    let f = TopicFilter::new(filter.to_owned()).unwrap();
    router.subscribe(
        &f,
        Subscriber { entry: Arc::clone(e), options: SubOptions::with_qos(qos), subscription_id: None },
    )
}

fn matched(router: &Router, topic: &str) -> Vec<(String, QoS)> {
    let mut v: Vec<_> = router
        .targets(&TopicName::new(topic.to_owned()).unwrap())
        .into_iter()
        .map(|t| (t.entry.client_id.to_string(), t.qos))
        .collect();
    v.sort();
    v
}

#[test]
fn trie_agrees_with_the_reference_matcher() {
    let filters =
        ["a/b", "a/+", "a/#", "#", "+/b", "+/+", "a/b/c", "+", "/+", "a//b", "$SYS/#", "+/b/#", "a/+/c"];
    let topics = ["a/b", "a", "a/b/c", "b", "/x", "a//b", "$SYS/up", "x/b/y", "a/x/c", "a/b/"];
    let router = Router::default();
    let entries: Vec<_> = filters.iter().map(|f| entry(f)).collect();
    for (f, e) in filters.iter().zip(&entries) {
        sub(&router, e, f, QoS::AtMostOnce);
    }
    for t in topics {
        let name = TopicName::new(t).unwrap();
        let mut expected: Vec<String> = filters
            .iter()
            .filter(|f| TopicFilter::new(**f).unwrap().matches(&name))
            .map(|f| (*f).to_owned())
            .collect();
        expected.sort();
        let got: Vec<String> = matched(&router, t).into_iter().map(|(id, _)| id).collect();
        assert_eq!(got, expected, "topic {t}");
    }
}

#[test]
fn mqtt_3_3_5_1_overlapping_subscriptions_merge_to_one_target_at_highest_qos() {
    let router = Router::default();
    let e = entry("c");
    sub(&router, &e, "a/#", QoS::AtMostOnce);
    sub(&router, &e, "a/+", QoS::ExactlyOnce);
    sub(&router, &e, "a/b", QoS::AtLeastOnce);
    assert_eq!(matched(&router, "a/b"), vec![("c".to_owned(), QoS::ExactlyOnce)]);
}

#[test]
fn mqtt_3_8_4_3_resubscribing_replaces_the_subscription() {
    let router = Router::default();
    let e = entry("c");
    assert!(!sub(&router, &e, "a/b", QoS::AtMostOnce));
    assert!(sub(&router, &e, "a/b", QoS::AtLeastOnce));
    assert_eq!(matched(&router, "a/b"), vec![("c".to_owned(), QoS::AtLeastOnce)]);
}

#[test]
fn unsubscribe_removes_only_that_filter_and_only_for_that_session() {
    let router = Router::default();
    let (c1, c2) = (entry("c1"), entry("c2"));
    sub(&router, &c1, "a/#", QoS::AtMostOnce);
    sub(&router, &c1, "a/b", QoS::AtMostOnce);
    sub(&router, &c2, "a/b", QoS::AtMostOnce);
    assert!(router.unsubscribe(&TopicFilter::new("a/b").unwrap(), &c1));
    assert!(!router.unsubscribe(&TopicFilter::new("a/b").unwrap(), &c1), "already gone");
    let ids: Vec<String> = matched(&router, "a/b").into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec!["c1", "c2"], "c1 still matches through a/#");
}

#[test]
fn unsubscribe_leaves_a_newer_session_with_the_same_client_id_alone() {
    let router = Router::default();
    let (old, new) = (entry("c"), entry("c"));
    sub(&router, &old, "a/b", QoS::AtMostOnce);
    sub(&router, &new, "a/b", QoS::AtMostOnce); // clean start replaced the session
    assert!(!router.unsubscribe(&TopicFilter::new("a/b").unwrap(), &old));
    assert_eq!(matched(&router, "a/b").len(), 1);
}

fn message(topic: &str, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: TopicName::new(topic.to_owned()).unwrap(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: MessageProperties::default(),
    })
}

#[test]
fn mqtt_3_3_1_5_retained_message_is_set_replaced_and_cleared_by_empty_payload() {
    let router = Router::default();
    let all = TopicFilter::new("s/#").unwrap();
    router.retain(&message("s/1", b"a"), None, || {});
    router.retain(&message("s/2", b"b"), None, || {});
    router.retain(&message("s/1", b"c"), None, || {});
    let mut got: Vec<_> = router.retained_matching(&all, T0).iter().map(|(m, _)| m.payload.clone()).collect();
    got.sort();
    assert_eq!(got, vec![Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
    router.retain(&message("s/2", b""), None, || {});
    assert_eq!(router.retained_matching(&all, T0).len(), 1);
    assert!(router.retained_matching(&TopicFilter::new("#").unwrap(), T0).len() == 1);
    router.retain(&message("$SYS/x", b"d"), None, || {});
    assert_eq!(router.retained_matching(&TopicFilter::new("#").unwrap(), T0).len(), 1, "[MQTT-4.7.2-1]");
}

#[test]
fn mqtt_3_3_2_5_expired_retained_message_is_not_delivered_and_is_dropped() {
    let router = Router::default();
    let at = |s| BrokerTime(std::time::Duration::from_secs(s));
    router.retain(&message("e/1", b"short"), Some(at(10)), || {});
    router.retain(&message("e/2", b"long"), Some(at(100)), || {});
    let all = TopicFilter::new("e/#").unwrap();
    assert_eq!(router.retained_matching(&all, at(5)).len(), 2);
    let left = router.retained_matching(&all, at(50));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1, Some(at(100)), "the expiry travels with it");
    assert_eq!(router.retained_count(), 1, "the expired one was removed");
}
