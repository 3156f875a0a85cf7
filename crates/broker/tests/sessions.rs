//! Sessions: persistent sessions (offline delivery, session present, redelivery with DUP),
//! clean sessions, session takeover, zero-length client identifiers, and shutdown.

use telehub_testkit::parse::{kind, property};
use telehub_testkit::{Connect, Publish, TestBroker, Version, build};

const V3: Version = Version::V311;

#[tokio::test]
async fn mqtt_3_1_2_5_persistent_session_receives_what_was_published_while_offline() {
    let broker = TestBroker::start().await;
    let (mut sub, ack) = broker.client(&Connect::v311("keeper").clean(false)).await;
    assert!(!ack.session_present, "no session existed");
    assert_eq!(sub.subscribe(1, &[("offline/#", 1)]).await, [1]);
    sub.disconnect().await;

    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    for (i, payload) in [b"m1", b"m2", b"m3"].into_iter().enumerate() {
        publisher.publish(&Publish::new(V3, "offline/x", payload).qos(1, i as u16 + 1)).await;
    }

    let mut back = broker.raw().await;
    back.send(&Connect::v311("keeper").clean(false).to_bytes()).await;
    // [MQTT-3.2.2-2] session present = 1
    back.expect_bytes(&[0x20, 0x02, 0x01, 0x00]).await;
    let mut payloads = Vec::new();
    for _ in 0..3 {
        let d = back.expect_publish().await;
        assert_eq!((d.topic.as_str(), d.qos, d.dup), ("offline/x", 1, false));
        back.send(&build::puback(d.id())).await;
        payloads.push(d.payload);
    }
    payloads.sort();
    assert_eq!(payloads, [b"m1", b"m2", b"m3"]);
    back.expect_nothing().await;

    // the subscription survived too: live messages arrive
    publisher.publish(&Publish::new(V3, "offline/y", b"live").qos(1, 9)).await;
    assert_eq!(back.expect_publish().await.payload, b"live");
}

#[tokio::test]
async fn mqtt_4_4_0_1_unacknowledged_deliveries_are_resent_with_dup() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = broker.client(&Connect::v311("forgetful").clean(false)).await;
    assert_eq!(sub.subscribe(1, &[("redo", 1)]).await, [1]);
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.publish(&Publish::new(V3, "redo", b"again").qos(1, 1)).await;

    let first = sub.expect_publish().await;
    assert!(!first.dup);
    // no PUBACK: the socket just goes away
    drop(sub);

    let (mut back, ack) = broker.client(&Connect::v311("forgetful").clean(false)).await;
    assert!(ack.session_present);
    // [MQTT-3.3.1-1] resent with DUP = 1, same packet id and payload
    let resent = back.next_packet().await;
    assert_eq!(resent.first_byte, 0x3a, "QoS 1 + DUP: {resent:?}");
    let resent = resent.publish(V3);
    assert_eq!((resent.id(), &resent.payload[..]), (first.id(), &b"again"[..]));
    back.send(&build::puback(resent.id())).await;
    back.expect_nothing().await;

    // acknowledged now: a further reconnect resends nothing
    back.disconnect().await;
    let (mut last, ack) = broker.client(&Connect::v311("forgetful").clean(false)).await;
    assert!(ack.session_present);
    last.expect_nothing().await;
}

#[tokio::test]
async fn mqtt_3_1_2_6_clean_session_discards_the_old_one() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = broker.client(&Connect::v311("cleaner").clean(false)).await;
    assert_eq!(sub.subscribe(1, &[("gone/#", 1)]).await, [1]);
    sub.disconnect().await;
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.publish(&Publish::new(V3, "gone/a", b"queued").qos(1, 1)).await;

    let mut clean = broker.raw().await;
    clean.send(&Connect::v311("cleaner").clean(true).to_bytes()).await;
    // [MQTT-3.2.2-1] session present = 0
    clean.expect_bytes(&[0x20, 0x02, 0x00, 0x00]).await;
    // neither the queued message nor the subscription survived
    clean.expect_nothing().await;
    publisher.publish(&Publish::new(V3, "gone/b", b"live").qos(1, 2)).await;
    clean.expect_nothing().await;
    clean.disconnect().await;

    // and the clean session itself ended with its connection
    let (_again, ack) = broker.client(&Connect::v311("cleaner").clean(false)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn mqtt_3_1_4_2_second_connect_with_the_same_client_id_takes_over() {
    let broker = TestBroker::start().await;
    let (mut first, _) = broker.client(&Connect::v311("twin").clean(false)).await;
    assert_eq!(first.subscribe(1, &[("twin/#", 1)]).await, [1]);

    let (mut second, ack) = broker.client(&Connect::v311("twin").clean(false)).await;
    assert!(ack.session_present, "took over the same session");
    first.expect_closed().await;

    // the second connection has the session's subscription and works
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.publish(&Publish::new(V3, "twin/a", b"to-second").qos(1, 1)).await;
    let d = second.expect_publish().await;
    assert_eq!(d.payload, b"to-second");
    second.send(&build::puback(d.id())).await;
    second.ping().await;
}

#[tokio::test]
async fn mqtt_3_1_4_2_takeover_with_clean_session_closes_the_old_connection() {
    // regression: a clean-session CONNECT replaced the session but left the connection
    // attached to the old one open (and its will unpublished)
    let broker = TestBroker::start().await;
    let mut watcher = broker.client(&Connect::v311("watcher")).await.0;
    assert_eq!(watcher.subscribe(1, &[("wills/#", 0)]).await, [0]);
    let (mut first, _) = broker.client(&Connect::v311("twin").will("wills/twin", b"first", 0, false)).await;
    assert_eq!(first.subscribe(1, &[("twin/#", 1)]).await, [1]);

    let (mut second, ack) = broker.client(&Connect::v311("twin").clean(true)).await;
    assert!(!ack.session_present);
    first.expect_closed().await;
    // the first connection went away without DISCONNECT: its will is published
    let will = watcher.expect_publish().await;
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("wills/twin", &b"first"[..]));

    // the new session starts empty, and works
    let (mut publisher, _) = broker.client(&Connect::v311("pub")).await;
    publisher.publish(&Publish::new(V3, "twin/a", b"old-subscription").qos(1, 1)).await;
    second.expect_nothing().await;
    assert_eq!(second.subscribe(1, &[("twin/#", 1)]).await, [1]);
    publisher.publish(&Publish::new(V3, "twin/a", b"new").qos(1, 2)).await;
    assert_eq!(second.expect_publish().await.payload, b"new");
}

#[tokio::test]
async fn mqtt5_3_1_4_3_takeover_sends_disconnect_0x8e_to_the_old_connection() {
    let broker = TestBroker::start().await;
    // clean start, then a resumed session: both take over a connected client
    for (i, clean) in [true, false].into_iter().enumerate() {
        let id = format!("twin5-{i}");
        let (mut first, _) = broker.client(&Connect::v5(&id).clean(clean).session_expiry(60)).await;
        let (mut second, _) = broker.client(&Connect::v5(&id).clean(clean).session_expiry(60)).await;
        first.expect_disconnect(0x8e).await; // Session taken over
        assert_eq!(second.subscribe(1, &[("t", 0)]).await, [0]);
        second.ping().await;
    }
}

#[tokio::test]
async fn mqtt_3_1_3_8_v311_empty_client_id_needs_a_clean_session() {
    let broker = TestBroker::start().await;
    let mut refused = broker.raw().await;
    refused.send(&Connect::v311("").clean(false).to_bytes()).await;
    // CONNACK 0x02 Identifier rejected, then closed
    refused.expect_bytes(&[0x20, 0x02, 0x00, 0x02]).await;
    refused.expect_closed().await;

    // [MQTT-3.1.3-6] with a clean session the server assigns one
    let mut accepted = broker.raw().await;
    accepted.send(&Connect::v311("").clean(true).to_bytes()).await;
    accepted.expect_bytes(&[0x20, 0x02, 0x00, 0x00]).await;
    assert_eq!(accepted.subscribe(1, &[("anon", 0)]).await, [0]);
}

#[tokio::test]
async fn mqtt5_3_1_3_8_empty_client_id_without_clean_start_is_refused_with_connack() {
    // the codec (rmqtt) refuses it; the broker answers CONNACK 0x85 Client Identifier not
    // valid, which MQTT 5 allows, instead of dropping the socket
    let broker = TestBroker::start().await;
    let mut refused = broker.raw().await;
    refused.send(&Connect::v5("").clean(false).to_bytes()).await;
    let ack = refused.next_packet().await.connack(Version::V5);
    assert_eq!((ack.code, ack.session_present), (0x85, false));
    refused.expect_closed().await;
}

#[tokio::test]
async fn mqtt5_3_2_2_3_7_empty_client_id_gets_an_assigned_client_identifier() {
    let broker = TestBroker::start().await;
    let (mut a, ack_a) = broker.client(&Connect::v5("")).await;
    let (_b, ack_b) = broker.client(&Connect::v5("")).await;
    let id_a = ack_a.properties.string(property::ASSIGNED_CLIENT_IDENTIFIER).expect("assigned id");
    let id_b = ack_b.properties.string(property::ASSIGNED_CLIENT_IDENTIFIER).expect("assigned id");
    assert!(!id_a.is_empty());
    assert_ne!(id_a, id_b, "each client gets its own");
    // the connection works under its assigned id
    assert_eq!(a.subscribe(1, &[("assigned", 0)]).await, [0]);

    // a client that brings its own id is not assigned one
    let (_named, ack) = broker.client(&Connect::v5("named")).await;
    assert_eq!(ack.properties.get(property::ASSIGNED_CLIENT_IDENTIFIER), None);
}

#[tokio::test]
async fn mqtt5_session_expiry_keeps_the_session_across_reconnects() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = broker.client(&Connect::v5("expiring").clean(false).session_expiry(60)).await;
    assert_eq!(sub.subscribe(1, &[("exp", 1)]).await, [1]);
    sub.send(&build::disconnect()).await;
    sub.expect_closed().await;

    let (mut publisher, _) = broker.client(&Connect::v5("pub")).await;
    publisher.publish(&Publish::new(Version::V5, "exp", b"kept").qos(1, 1)).await;

    let (mut back, ack) = broker.client(&Connect::v5("expiring").clean(false).session_expiry(60)).await;
    assert!(ack.session_present);
    let d = back.next_packet().await;
    assert_eq!(d.kind(), kind::PUBLISH);
    assert_eq!(d.publish(Version::V5).payload, b"kept");
}

#[tokio::test]
async fn broker_shutdown_disconnects_every_client() {
    let broker = TestBroker::start().await;
    let addr = broker.addr();
    let (mut v5, _) = broker.client(&Connect::v5("v5")).await;
    let (mut v3, _) = broker.client(&Connect::v311("v3")).await;
    // stop() returns once every connection and task has ended
    broker.stop().await;
    // MQTT 5: DISCONNECT 0x8B Server shutting down; 3.1.1 has no server DISCONNECT
    v5.expect_disconnect(0x8b).await;
    v3.expect_closed().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn the_hub_publishes_through_control_and_learns_how_many_sessions_took_it() {
    let broker = TestBroker::start().await;
    let control = broker.control();
    let command = |topic: &str| telehub_core::Message {
        topic: telehub_core::TopicName::new(topic).unwrap(),
        payload: bytes::Bytes::from_static(b"{\"led_on\":true}"),
        qos: telehub_core::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    assert_eq!(control.publish(command("nl-1/commands")).await, 0, "nobody subscribes yet");
    let (mut device, _) = broker.client(&Connect::v311("nl-1")).await;
    assert_eq!(device.subscribe(1, &[("nl-1/commands", 1)]).await, [1]);
    assert_eq!(control.publish(command("nl-1/commands")).await, 1);
    let d = device.expect_publish().await;
    assert_eq!((d.topic.as_str(), d.qos, &d.payload[..]), ("nl-1/commands", 1, &b"{\"led_on\":true}"[..]));
    device.send(&build::puback(d.id())).await;
    device.disconnect().await;
    broker.stop().await;
    assert_eq!(
        control.publish(command("nl-1/commands")).await,
        0,
        "nobody subscribes once the broker stopped"
    );
}
