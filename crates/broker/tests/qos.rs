//! QoS 0/1/2 in both directions with the exact acknowledgement bytes, QoS downgrade to
//! the granted QoS, exactly-once delivery of a repeated QoS 2 PUBLISH, and PUBREL for an
//! unknown packet id.

use telehub_broker::Config;
use telehub_testkit::parse::kind;
use telehub_testkit::{Connect, Publish, RawClient, TestBroker, Version, build};

const V3: Version = Version::V311;
const V5: Version = Version::V5;

async fn subscriber(broker: &TestBroker, id: &str, filter: &str, qos: u8) -> RawClient {
    let (mut c, _) = broker.client(&Connect::v311(id)).await;
    assert_eq!(c.subscribe(1, &[(filter, qos)]).await, [qos], "granted QoS");
    c
}

#[tokio::test]
async fn mqtt_3_3_4_1_qos0_both_ways_without_acks() {
    let broker = TestBroker::start().await;
    let mut sub = subscriber(&broker, "sub", "q/0", 0).await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.send(&[0x30, 0x07, 0x00, 0x03, b'q', b'/', b'0', b'h', b'i']).await;
    // delivered as sent: QoS 0, no packet id, no DUP, no RETAIN
    sub.expect_bytes(&[0x30, 0x07, 0x00, 0x03, b'q', b'/', b'0', b'h', b'i']).await;
    // QoS 0 is never acknowledged
    publisher.expect_nothing().await;
    sub.expect_nothing().await;
}

#[tokio::test]
async fn mqtt_4_3_2_2_qos1_puback_and_delivery() {
    let broker = TestBroker::start().await;
    let mut sub = subscriber(&broker, "sub", "q/1", 1).await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    // PUBLISH QoS 1, id 0x1234 → PUBACK with the same id
    publisher.send(&[0x32, 0x08, 0x00, 0x03, b'q', b'/', b'1', 0x12, 0x34, b'x']).await;
    publisher.expect_bytes(&[0x40, 0x02, 0x12, 0x34]).await;

    // [MQTT-4.3.2-1] the delivery is QoS 1 with a non-zero packet id of the server's choice
    let got = sub.next_packet().await;
    assert_eq!(got.first_byte, 0x32, "QoS 1, no DUP, no RETAIN: {got:?}");
    let delivery = got.publish(V3);
    assert_eq!((delivery.topic.as_str(), &delivery.payload[..]), ("q/1", &b"x"[..]));
    sub.send(&build::puback(delivery.id())).await;
    // acknowledged: not sent again, and nothing else arrives
    sub.expect_nothing().await;
}

#[tokio::test]
async fn mqtt_4_3_3_2_qos2_inbound_pubrec_pubrel_pubcomp() {
    let broker = TestBroker::start().await;
    let mut sub = subscriber(&broker, "sub", "q/2", 2).await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.send(&[0x34, 0x08, 0x00, 0x03, b'q', b'/', b'2', 0x00, 0x09, b'y']).await;
    publisher.expect_bytes(&[0x50, 0x02, 0x00, 0x09]).await; // PUBREC
    publisher.send(&[0x62, 0x02, 0x00, 0x09]).await; // PUBREL
    publisher.expect_bytes(&[0x70, 0x02, 0x00, 0x09]).await; // PUBCOMP

    let delivery = sub.expect_publish().await;
    assert_eq!((delivery.qos, delivery.topic.as_str(), &delivery.payload[..]), (2, "q/2", &b"y"[..]));
}

#[tokio::test]
async fn mqtt_4_3_3_1_qos2_outbound_pubrel_and_window() {
    // with one delivery in flight at a time, the second QoS 2 delivery must wait until
    // the first is completed by PUBCOMP
    let broker = TestBroker::start_with(Config { max_inflight: 1, ..TestBroker::config() }).await;
    let mut sub = subscriber(&broker, "sub", "q/2", 2).await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.publish(&Publish::new(V3, "q/2", b"first").qos(2, 1)).await;
    publisher.publish(&Publish::new(V3, "q/2", b"second").qos(2, 2)).await;

    let first = sub.expect_publish().await;
    assert_eq!((first.qos, first.dup, &first.payload[..]), (2, false, &b"first"[..]));
    let id = first.id();
    sub.send(&build::pubrec(id)).await;
    // [MQTT-4.3.3-1] the server answers PUBREC with PUBREL (flags 0010) and the same id
    sub.expect_bytes(&[0x62, 0x02, (id >> 8) as u8, id as u8]).await;
    // still in flight until PUBCOMP: the second delivery waits
    sub.expect_nothing().await;
    sub.send(&build::pubcomp(id)).await;

    let second = sub.expect_publish().await;
    assert_eq!((second.qos, &second.payload[..]), (2, &b"second"[..]));
    sub.send(&build::pubrec(second.id())).await;
    let rel = sub.next_packet().await;
    assert_eq!((rel.kind(), rel.packet_id()), (kind::PUBREL, second.id()));
    sub.send(&build::pubcomp(second.id())).await;
    sub.expect_nothing().await;
}

#[tokio::test]
async fn mqtt5_qos1_and_qos2_acks_carry_success() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = broker.client(&Connect::v5("sub5")).await;
    assert_eq!(sub.subscribe(1, &[("q5/#", 2)]).await, [2]);
    let (mut publisher, _) = broker.client(&Connect::v5("pub5")).await;
    // the testkit checks every ack's kind, packet id and reason code 0x00
    publisher.publish(&Publish::new(V5, "q5/a", b"one").qos(1, 11)).await;
    publisher.publish(&Publish::new(V5, "q5/b", b"two").qos(2, 12)).await;

    let mut payloads = Vec::new();
    for _ in 0..2 {
        let d = sub.expect_publish().await;
        payloads.push((d.qos, d.payload.clone()));
        match d.qos {
            1 => sub.send(&build::puback(d.id())).await,
            _ => {
                sub.send(&build::pubrec(d.id())).await;
                let rel = sub.next_packet().await;
                assert_eq!((rel.kind(), rel.packet_id(), rel.reason_code()), (kind::PUBREL, d.id(), 0));
                sub.send(&build::pubcomp(d.id())).await;
            }
        }
    }
    payloads.sort();
    assert_eq!(payloads, [(1, b"one".to_vec()), (2, b"two".to_vec())]);
}

#[tokio::test]
async fn mqtt_3_8_4_6_delivery_is_downgraded_to_the_granted_qos() {
    let broker = TestBroker::start().await;
    let mut at0 = subscriber(&broker, "at0", "down", 0).await;
    let mut at1 = subscriber(&broker, "at1", "down", 1).await;
    let mut at2 = subscriber(&broker, "at2", "down", 2).await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.publish(&Publish::new(V3, "down", b"q2").qos(2, 1)).await;

    // QoS 0 subscription: no packet id at all
    at0.expect_bytes(&[0x30, 0x08, 0x00, 0x04, b'd', b'o', b'w', b'n', b'q', b'2']).await;
    let d1 = at1.expect_publish().await;
    assert_eq!((d1.qos, &d1.payload[..]), (1, &b"q2"[..]));
    at1.send(&build::puback(d1.id())).await;
    let d2 = at2.expect_publish().await;
    assert_eq!((d2.qos, &d2.payload[..]), (2, &b"q2"[..]));

    // a lower QoS message is never upgraded
    publisher.publish(&Publish::new(V3, "down", b"q0")).await;
    let up = at2.expect_publish().await;
    assert_eq!((up.qos, up.packet_id, &up.payload[..]), (0, None, &b"q0"[..]));
}

#[tokio::test]
async fn mqtt_4_3_3_2_repeated_qos2_publish_is_delivered_once() {
    let broker = TestBroker::start().await;
    let mut sub = subscriber(&broker, "sub", "once", 1).await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    let publish = Publish::new(V3, "once", b"exactly").qos(2, 5);
    publisher.send(&publish.to_bytes()).await;
    publisher.expect_bytes(&[0x50, 0x02, 0x00, 0x05]).await;
    // the sender did not see our PUBREC: it sends the same PUBLISH again, with DUP
    publisher.send(&publish.clone().dup().to_bytes()).await;
    publisher.expect_bytes(&[0x50, 0x02, 0x00, 0x05]).await;
    publisher.send(&build::pubrel(5)).await;
    publisher.expect_bytes(&[0x70, 0x02, 0x00, 0x05]).await;

    let d = sub.expect_publish().await;
    assert_eq!(&d.payload[..], b"exactly");
    sub.send(&build::puback(d.id())).await;
    sub.expect_nothing().await;

    // after PUBREL the id is free again: a new PUBLISH with it is a new message
    publisher.publish(&Publish::new(V3, "once", b"again").qos(2, 5)).await;
    let again = sub.expect_publish().await;
    assert_eq!(&again.payload[..], b"again");
}

#[tokio::test]
async fn mqtt_4_3_3_pubrel_for_unknown_id_is_answered_with_pubcomp() {
    let broker = TestBroker::start().await;
    let (mut v3, _) = broker.client(&Connect::v311("rel3")).await;
    v3.send(&build::pubrel(0x0777)).await;
    v3.expect_bytes(&[0x70, 0x02, 0x07, 0x77]).await;

    // MQTT 5 §3.7.2.1: PUBCOMP with reason 0x92 Packet Identifier not found
    let (mut v5, _) = broker.client(&Connect::v5("rel5")).await;
    v5.send(&build::pubrel(0x0777)).await;
    let comp = v5.next_packet().await;
    assert_eq!(
        (comp.kind(), comp.packet_id(), comp.reason_code()),
        (kind::PUBCOMP, 0x0777, 0x92),
        "{comp:?}"
    );
    // the connection stays usable
    v5.ping().await;
    v3.ping().await;
}
