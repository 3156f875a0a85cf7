//! Session state machine tests, without sockets, tagged with the spec statements.

use std::time::Duration;

use super::*;
use bytes::Bytes;
use telehub_core::{MessageProperties, TopicName};

fn limits(max_queued: usize, max_inflight: u16) -> SessionLimits {
    SessionLimits {
        max_queued,
        max_queued_bytes: usize::MAX,
        max_inflight,
        overflow: OverflowPolicy::DropNew,
    }
}

/// A delivery of `n` with a payload of `size` bytes.
fn sized(n: u8, size: usize) -> Delivery {
    let mut d = delivery(n, QoS::AtLeastOnce);
    d.message = Arc::new(Message { payload: Bytes::from(vec![n; size]), ..(*d.message).clone() });
    d
}

fn delivery(n: u8, qos: QoS) -> Delivery {
    Delivery {
        message: Arc::new(Message {
            topic: TopicName::new("t").unwrap(),
            payload: Bytes::from(vec![n]),
            qos,
            retain: false,
            properties: MessageProperties::default(),
        }),
        qos,
        retain: false,
        subscription_ids: Vec::new(),
        expires_at: None,
        persist_id: None,
    }
}

const T0: BrokerTime = BrokerTime(Duration::ZERO);

fn at(secs: u64) -> BrokerTime {
    BrokerTime(Duration::from_secs(secs))
}

#[test]
fn mqtt_3_3_2_5_expired_queued_delivery_is_discarded_and_counted() {
    let mut s = Session::new(limits(10, 10));
    let mut d = delivery(1, QoS::AtLeastOnce);
    d.expires_at = Some(at(10));
    s.enqueue(d).unwrap();
    let mut fresh = delivery(2, QoS::AtLeastOnce);
    fresh.expires_at = Some(at(100));
    s.enqueue(fresh).unwrap();
    match s.next_outgoing(at(40)).unwrap() {
        Outbound::Publish { message, message_expiry, .. } => {
            assert_eq!(message.payload[0], 2, "the expired one was skipped");
            assert_eq!(message_expiry, Some(Duration::from_secs(60)), "[MQTT-3.3.2-6] what is left");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.expired(), 1);
}

#[test]
fn resent_delivery_carries_the_interval_left_at_resume() {
    let mut s = Session::new(limits(10, 10));
    let mut d = delivery(1, QoS::AtLeastOnce);
    d.expires_at = Some(at(30));
    s.enqueue(d).unwrap();
    s.next_outgoing(at(0)).unwrap();
    match &s.resume(10, at(25))[..] {
        [Outbound::Publish { message_expiry, dup: true, .. }] => {
            assert_eq!(*message_expiry, Some(Duration::from_secs(5)));
        }
        other => panic!("{other:?}"),
    }
}

fn publish_id(o: &Outbound) -> (Option<u16>, bool, u8) {
    match o {
        Outbound::Publish { packet_id, dup, message, .. } => (*packet_id, *dup, message.payload[0]),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[test]
fn mqtt_2_3_1_1_qos0_has_no_packet_id_and_qos1_gets_a_nonzero_one() {
    let mut s = Session::new(limits(10, 10));
    s.enqueue(delivery(0, QoS::AtMostOnce)).unwrap();
    s.enqueue(delivery(1, QoS::AtLeastOnce)).unwrap();
    assert_eq!(publish_id(&s.next_outgoing(T0).unwrap()).0, None);
    let (id, _, _) = publish_id(&s.next_outgoing(T0).unwrap());
    assert!(matches!(id, Some(n) if n != 0));
    assert_eq!(s.inflight(), 1);
}

#[test]
fn mqtt_2_3_1_2_packet_ids_in_flight_are_unique_and_wrap_skipping_zero() {
    let mut s = Session::new(limits(10, 3));
    s.next_packet_id = u16::MAX - 1;
    for n in 0..3 {
        s.enqueue(delivery(n, QoS::AtLeastOnce)).unwrap();
    }
    let ids: Vec<_> = (0..3).map(|_| publish_id(&s.next_outgoing(T0).unwrap()).0.unwrap()).collect();
    assert_eq!(ids, vec![u16::MAX - 1, u16::MAX, 1]);
    // id 1 is in flight: the next allocation after the wrap must skip it
    s.on_puback(u16::MAX).unwrap();
    s.next_packet_id = 1;
    s.enqueue(delivery(9, QoS::AtLeastOnce)).unwrap();
    assert_eq!(publish_id(&s.next_outgoing(T0).unwrap()).0, Some(2));
}

#[test]
fn mqtt_4_9_0_2_inflight_window_holds_back_qos1_but_not_qos0() {
    let mut s = Session::new(limits(10, 1));
    s.enqueue(delivery(1, QoS::AtLeastOnce)).unwrap();
    s.enqueue(delivery(2, QoS::AtLeastOnce)).unwrap();
    let (id, _, _) = publish_id(&s.next_outgoing(T0).unwrap());
    assert!(s.next_outgoing(T0).is_none(), "window of 1 is full");
    s.on_puback(id.unwrap()).unwrap();
    assert_eq!(publish_id(&s.next_outgoing(T0).unwrap()).2, 2);
}

#[test]
fn mqtt_3_3_4_7_client_receive_maximum_lowers_the_window() {
    let mut s = Session::new(limits(10, 100));
    assert!(s.resume(2, T0).is_empty());
    for n in 0..3 {
        s.enqueue(delivery(n, QoS::AtLeastOnce)).unwrap();
    }
    assert!(s.next_outgoing(T0).is_some());
    assert!(s.next_outgoing(T0).is_some());
    assert!(s.next_outgoing(T0).is_none());
}

#[test]
fn mqtt_4_3_3_qos2_outgoing_flow_publish_pubrec_pubrel_pubcomp() {
    let mut s = Session::new(limits(10, 10));
    s.enqueue(delivery(1, QoS::ExactlyOnce)).unwrap();
    let id = publish_id(&s.next_outgoing(T0).unwrap()).0.unwrap();
    assert_eq!(s.on_puback(id), Err(ProtocolError::UnknownPacketId), "QoS 2 is not acked by PUBACK");
    assert_eq!(s.on_pubcomp(id), Err(ProtocolError::UnknownPacketId), "PUBCOMP before PUBREC");
    assert_eq!(s.on_pubrec(id), Ok(Outbound::PubRel(id)));
    assert_eq!(s.on_pubrec(id), Ok(Outbound::PubRel(id)), "a repeated PUBREC is answered again");
    s.on_pubcomp(id).unwrap();
    assert_eq!(s.inflight(), 0);
}

#[test]
fn ack_for_unknown_packet_id_is_a_protocol_error() {
    let mut s = Session::new(limits(10, 10));
    assert_eq!(s.on_puback(7), Err(ProtocolError::UnknownPacketId));
    assert_eq!(s.on_pubrec(7), Err(ProtocolError::UnknownPacketId));
}

#[test]
fn mqtt_4_4_0_1_resume_resends_unacked_with_dup_in_order_then_pubrel() {
    let mut s = Session::new(limits(10, 10));
    for n in 0..3 {
        s.enqueue(delivery(n, if n == 1 { QoS::ExactlyOnce } else { QoS::AtLeastOnce })).unwrap();
    }
    let ids: Vec<_> = (0..3).map(|_| publish_id(&s.next_outgoing(T0).unwrap()).0.unwrap()).collect();
    s.on_puback(ids[0]).unwrap();
    s.on_pubrec(ids[1]).unwrap(); // now awaiting PUBCOMP
    let resent = s.resume(10, T0);
    assert_eq!(resent.len(), 2);
    assert_eq!(resent[0], Outbound::PubRel(ids[1]));
    assert_eq!(publish_id(&resent[1]), (Some(ids[2]), true, 2));
}

#[test]
fn mqtt_4_3_3_9_duplicate_incoming_qos2_is_routed_once() {
    let mut s = Session::new(limits(10, 10));
    assert!(s.on_incoming_qos2(5));
    assert!(!s.on_incoming_qos2(5), "resent PUBLISH before PUBREL is not routed again");
    assert_eq!(s.on_pubrel(5), 0x00);
    assert_eq!(s.on_pubrel(5), 0x92, "PUBREL for an unknown id gets Packet Identifier not found");
    assert!(s.on_incoming_qos2(5), "after release the id may be reused");
}

#[test]
fn full_queue_refuses_new_deliveries_with_drop_new() {
    let mut s = Session::new(limits(2, 10));
    s.enqueue(delivery(1, QoS::AtMostOnce)).unwrap();
    s.enqueue(delivery(2, QoS::AtMostOnce)).unwrap();
    assert!(!s.has_room());
    assert_eq!(
        s.enqueue(delivery(3, QoS::AtMostOnce)),
        Err(EnqueueError::Full(delivery(3, QoS::AtMostOnce)))
    );
    s.count_drop();
    assert_eq!(s.dropped(), 1);
    assert_eq!(publish_id(&s.next_outgoing(T0).unwrap()).2, 1);
}

#[test]
fn full_queue_drops_oldest_with_drop_oldest_and_counts_it() {
    let mut s = Session::new(SessionLimits { overflow: OverflowPolicy::DropOldest, ..limits(2, 10) });
    for n in 1..=3 {
        s.enqueue(delivery(n, QoS::AtLeastOnce)).unwrap();
    }
    assert_eq!(s.dropped(), 1);
    assert_eq!(s.queued(), 2);
    assert_eq!(publish_id(&s.next_outgoing(T0).unwrap()).2, 2);
}

#[test]
fn clear_forgets_queue_inflight_and_incoming() {
    let mut s = Session::new(limits(10, 10));
    s.enqueue(delivery(1, QoS::AtLeastOnce)).unwrap();
    s.enqueue(delivery(2, QoS::AtLeastOnce)).unwrap();
    s.next_outgoing(T0).unwrap();
    s.on_incoming_qos2(9);
    s.clear();
    assert_eq!((s.queued(), s.inflight(), s.incoming_qos2_pending()), (0, 0, 0));
    assert!(s.resume(10, T0).is_empty());
}

#[test]
fn queue_is_bounded_in_bytes_with_drop_new_and_refuse() {
    for overflow in [OverflowPolicy::DropNew, OverflowPolicy::Refuse] {
        let mut s = Session::new(SessionLimits { max_queued_bytes: 10, overflow, ..limits(10, 10) });
        s.enqueue(sized(1, 6)).unwrap();
        assert!(s.has_room_for(4) && !s.has_room_for(5));
        assert_eq!(s.enqueue(sized(2, 5)), Err(EnqueueError::Full(sized(2, 5))), "{overflow:?}");
        s.enqueue(sized(3, 4)).unwrap();
        assert_eq!((s.queued(), s.queued_bytes()), (2, 10));
        assert!(!s.has_room());
    }
}

#[test]
fn queue_is_bounded_in_bytes_with_drop_oldest() {
    let mut s = Session::new(SessionLimits {
        max_queued_bytes: 10,
        overflow: OverflowPolicy::DropOldest,
        ..limits(10, 10)
    });
    s.enqueue(sized(1, 4)).unwrap();
    s.enqueue(sized(2, 4)).unwrap();
    s.enqueue(sized(3, 8)).unwrap(); // both older ones make room
    assert_eq!((s.queued(), s.queued_bytes(), s.dropped()), (1, 8, 2));
    s.enqueue(sized(4, 11)).unwrap(); // can never fit: dropped itself
    assert_eq!((s.queued(), s.queued_bytes(), s.dropped()), (1, 8, 3));
}

#[test]
fn shared_budget_caps_every_session_together() {
    let budget = QueueBudget::new(10);
    let mut a = Session::with_budget(limits(10, 10), budget.clone());
    let mut b = Session::with_budget(limits(10, 10), budget.clone());
    a.enqueue(sized(1, 6)).unwrap();
    assert!(budget.has_room_for(4) && !budget.has_room_for(5));
    assert_eq!(b.enqueue(sized(2, 5)), Err(EnqueueError::OverBudget(sized(2, 5))));
    b.enqueue(sized(3, 4)).unwrap();
    assert_eq!(budget.used(), 10);
    // sent: given back
    a.next_outgoing(T0).unwrap();
    assert_eq!(budget.used(), 4);
    // dropped session: given back
    drop(b);
    assert_eq!(budget.used(), 0);
}

#[test]
fn drop_oldest_over_the_budget_drops_from_its_own_session_only() {
    let budget = QueueBudget::new(10);
    let drop_oldest = SessionLimits { overflow: OverflowPolicy::DropOldest, ..limits(10, 10) };
    let mut a = Session::with_budget(drop_oldest, budget.clone());
    let mut b = Session::with_budget(drop_oldest, budget.clone());
    a.enqueue(sized(1, 6)).unwrap();
    b.enqueue(sized(2, 2)).unwrap();
    b.enqueue(sized(3, 4)).unwrap(); // drops b's oldest, not a's
    assert_eq!((a.queued(), b.queued(), b.dropped(), budget.used()), (1, 1, 1, 10));
    b.enqueue(sized(4, 5)).unwrap(); // b has 4 bytes to give: not enough, so dropped itself
    assert_eq!((a.queued(), b.queued(), b.dropped(), budget.used()), (1, 1, 2, 10));
}

#[test]
fn budget_follows_expiry_clear_and_restore() {
    let budget = QueueBudget::new(100);
    let mut s = Session::with_budget(limits(10, 10), budget.clone());
    let mut d = sized(1, 7);
    d.expires_at = Some(at(1));
    s.enqueue(d).unwrap();
    s.enqueue(sized(2, 5)).unwrap();
    assert_eq!(budget.used(), 12);
    s.next_outgoing(at(2)).unwrap(); // 1 expired, 2 sent
    assert_eq!((s.expired(), budget.used()), (1, 0));
    s.restore_queued(sized(3, 200)); // over the cap, counted all the same
    assert_eq!(budget.used(), 200);
    s.clear();
    assert_eq!((s.queued_bytes(), budget.used()), (0, 0));
}
