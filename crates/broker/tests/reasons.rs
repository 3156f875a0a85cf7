//! MQTT 5 Reason Strings (property 0x1F) over raw bytes: refused CONNECTs, PUBLISHes,
//! SUBSCRIBEs and UNSUBSCRIBEs and server DISCONNECTs say why; Request Problem
//! Information 0 keeps them off everything but CONNACK and DISCONNECT ([MQTT-3.1.2-29]);
//! a client's Maximum Packet Size too small for one gets the packet without it; Request
//! Response Information is accepted and answered with no Response Information.

use std::net::SocketAddr;
use std::sync::Arc;

use telehub_broker::auth::AuthFuture;
use telehub_broker::{Authenticator, ConnectInfo, Principal, PublishRefusal, Refusal};
use telehub_core::{DeviceId, Message};
use telehub_testkit::parse::{Packet, kind, property};
use telehub_testkit::{Connect, Publish, RawClient, TestBroker, Version, build};

const V5: Version = Version::V5;
const PASSWORD: &[u8] = b"s3cret-password";

/// Lets in anyone presenting [`PASSWORD`]; publishing and subscribing only under `ok/`.
struct OkOnly;

impl Authenticator for OkOnly {
    fn accept(&self, _peer: SocketAddr) -> bool {
        true
    }

    fn authenticate(&self, info: ConnectInfo<'_>) -> AuthFuture {
        let verdict = if info.password == Some(PASSWORD) {
            Ok(Principal::device(DeviceId::new("dev").unwrap(), "cred"))
        } else {
            Err(Refusal::BadCredentials)
        };
        Box::pin(std::future::ready(verdict))
    }

    fn authorize_publish(&self, _who: &Principal, message: &Message) -> Result<(), PublishRefusal> {
        match message.topic.as_str() {
            t if t.starts_with("ok/") => Ok(()),
            "fast/x" => Err(PublishRefusal::RateTooHigh),
            _ => Err(PublishRefusal::NotAuthorized),
        }
    }

    fn authorize_subscribe(&self, _who: &Principal, filter: &str) -> bool {
        filter.starts_with("ok/")
    }
}

async fn broker() -> TestBroker {
    TestBroker::start_with_auth(TestBroker::config(), Arc::new(OkOnly)).await
}

fn login(client_id: &str) -> Connect {
    Connect::v5(client_id).username("dev").password(PASSWORD)
}

fn reason_string(p: &Packet) -> Option<String> {
    p.properties().string(property::REASON_STRING).map(str::to_owned)
}

async fn refused_subscribe(c: &mut RawClient) -> Packet {
    c.send(&build::subscribe(V5, 1, &[("ok/a", 0), ("no/b", 1), ("a/#/b", 0)])).await;
    let suback = c.next_packet().await;
    assert_eq!(suback.suback(V5), (1, vec![0x00, 0x87, 0x8f]));
    suback
}

async fn refused_publish(c: &mut RawClient) -> Packet {
    c.send(&Publish::new(V5, "no/x", "1").qos(1, 1).to_bytes()).await;
    let puback = c.next_packet().await;
    assert_eq!((puback.kind(), puback.reason_code()), (kind::PUBACK, 0x87), "{puback:?}");
    puback
}

#[tokio::test]
async fn mqtt_3_2_2_3_9_refused_connect_says_why() {
    let broker = broker().await;
    let mut c = broker.raw().await;
    let ack = c.handshake(&Connect::v5("c").username("dev").password(b"wrong-password")).await;
    assert_eq!(ack.code, 0x86);
    let text = ack.properties.string(property::REASON_STRING).expect("reason string");
    assert_eq!(text, "bad user name or password");
    c.expect_closed().await;

    let mut c = broker.raw().await;
    let ack = c.handshake(&login("c").will("no/will", b"bye", 0, false)).await;
    assert_eq!(ack.code, 0x87);
    assert_eq!(
        ack.properties.string(property::REASON_STRING),
        Some("not authorized to publish the will to no/will")
    );
}

#[tokio::test]
async fn mqtt_3_4_2_2_refused_publish_says_why() {
    let broker = broker().await;
    let (mut c, _) = broker.client(&login("c")).await;
    let puback = refused_publish(&mut c).await;
    assert_eq!(reason_string(&puback).as_deref(), Some("not authorized to publish to no/x"));

    c.send(&Publish::new(V5, "fast/x", "1").qos(1, 2).to_bytes()).await;
    let puback = c.next_packet().await;
    assert_eq!(puback.reason_code(), 0x97);
    assert_eq!(reason_string(&puback).as_deref(), Some("message rate above this client's limit"));

    // QoS 2: PUBREC says why, and the PUBREL that follows finds no flow (0x92)
    c.send(&Publish::new(V5, "no/y", "2").qos(2, 3).to_bytes()).await;
    let pubrec = c.next_packet().await;
    assert_eq!((pubrec.kind(), pubrec.reason_code()), (kind::PUBREC, 0x87));
    assert_eq!(reason_string(&pubrec).as_deref(), Some("not authorized to publish to no/y"));
    c.send(&build::pubrel(3)).await;
    let pubcomp = c.next_packet().await;
    assert_eq!((pubcomp.kind(), pubcomp.reason_code()), (kind::PUBCOMP, 0x92));
    assert_eq!(reason_string(&pubcomp).as_deref(), Some("packet identifier 3 not found"));

    // accepted: no reason string
    c.send(&Publish::new(V5, "ok/x", "3").qos(1, 4).to_bytes()).await;
    let puback = c.next_packet().await;
    assert_eq!((puback.reason_code(), reason_string(&puback)), (0, None));
}

#[tokio::test]
async fn mqtt_3_9_2_1_refused_subscribe_says_why() {
    let broker = broker().await;
    let (mut c, _) = broker.client(&login("c")).await;
    let suback = refused_subscribe(&mut c).await;
    assert_eq!(reason_string(&suback).as_deref(), Some("not authorized to subscribe to no/b (and 1 more)"));
    // all granted: no reason string
    c.send(&build::subscribe(V5, 2, &[("ok/c", 1)])).await;
    assert_eq!(reason_string(&c.next_packet().await), None);

    c.send(&build::unsubscribe(V5, 3, &[("a/#/b")])).await;
    let unsuback = c.next_packet().await;
    assert_eq!(unsuback.unsuback(V5), (3, vec![0x8f]));
    let text = reason_string(&unsuback).expect("reason string");
    assert!(text.starts_with("topic filter 1: "), "{text}");
}

#[tokio::test]
async fn mqtt_3_14_2_3_server_disconnect_says_why() {
    let broker = broker().await;
    let (mut c, _) = broker.client(&login("c")).await;
    let mut body = Vec::new();
    build::string(b"", &mut body);
    body.extend_from_slice(&[3, 0x23, 0, 7]); // Topic Alias 7, never defined
    c.send(&build::frame(0x30, &body)).await;
    let disconnect = c.next_packet().await;
    assert_eq!((disconnect.kind(), disconnect.reason_code()), (kind::DISCONNECT, 0x94));
    assert_eq!(reason_string(&disconnect).as_deref(), Some("topic alias 7 is not defined"));
    c.expect_closed().await;

    let (mut first, _) = broker.client(&login("same")).await;
    let (_second, _) = broker.client(&login("same")).await;
    let disconnect = first.next_packet().await;
    assert_eq!(disconnect.reason_code(), 0x8e);
    assert_eq!(reason_string(&disconnect).as_deref(), Some("session taken over by another connection"));
}

#[tokio::test]
async fn keep_alive_timeout_disconnect_says_why() {
    let broker = broker().await;
    let (mut c, _) = broker.client(&login("c").keep_alive(1)).await;
    let disconnect = c.next_packet().await; // after 1.5 s of silence
    assert_eq!(disconnect.reason_code(), 0x8d);
    assert_eq!(reason_string(&disconnect).as_deref(), Some("keep-alive timeout"));
}

#[tokio::test]
async fn auth_packet_is_answered_with_a_disconnect_that_says_why() {
    let broker = broker().await;
    let (mut c, _) = broker.client(&login("c")).await;
    c.send(&[0xf0, 0x00]).await; // AUTH, reason 0x00, no properties
    let disconnect = c.next_packet().await;
    assert_eq!((disconnect.kind(), disconnect.reason_code()), (kind::DISCONNECT, 0x8c));
    assert_eq!(reason_string(&disconnect).as_deref(), Some("enhanced authentication is not supported"));
    c.expect_closed().await;
    broker.client(&login("after")).await.0.disconnect().await; // still serving
}

#[tokio::test]
async fn mqtt_3_1_2_29_without_problem_information_acks_carry_no_reason_string() {
    let broker = broker().await;
    let quiet = login("quiet").request_problem_information(0);
    let (mut c, _) = broker.client(&quiet).await;
    let puback = refused_publish(&mut c).await;
    assert_eq!(puback.properties().get(property::REASON_STRING), None, "{puback:?}");
    let suback = refused_subscribe(&mut c).await;
    assert_eq!(suback.properties().get(property::REASON_STRING), None, "{suback:?}");

    // CONNACK and DISCONNECT still may
    c.send(&[0xf0, 0x00]).await;
    let disconnect = c.next_packet().await;
    assert_eq!(disconnect.reason_code(), 0x8c);
    assert!(reason_string(&disconnect).is_some(), "{disconnect:?}");
    let mut c = broker.raw().await;
    let ack = c.handshake(&Connect::v5("q").request_problem_information(0)).await;
    assert_eq!(ack.code, 0x86);
    assert!(ack.properties.string(property::REASON_STRING).is_some());
}

#[tokio::test]
async fn mqtt_3_9_2_1_reason_string_is_left_out_when_over_the_client_maximum_packet_size() {
    let broker = broker().await;
    // room for a SUBACK with three codes (8 bytes), not for the 40-byte string
    let (mut c, _) = broker.client(&login("small").maximum_packet_size(16)).await;
    let suback = refused_subscribe(&mut c).await;
    assert!(suback.to_bytes().len() <= 16, "{suback:?}");
    assert_eq!(reason_string(&suback), None);
    let puback = refused_publish(&mut c).await;
    assert_eq!(reason_string(&puback), None);
    c.ping().await; // the connection goes on

    // [MQTT-3.2.2-19] the same for a refusing CONNACK
    let mut c = broker.raw().await;
    let ack = c.handshake(&Connect::v5("q").maximum_packet_size(10)).await;
    assert_eq!((ack.code, ack.properties.get(property::REASON_STRING)), (0x86, None));
    // with room, the string is there
    let (mut c, _) = broker.client(&login("roomy").maximum_packet_size(200)).await;
    let suback = refused_subscribe(&mut c).await;
    assert!(reason_string(&suback).is_some());
}

#[tokio::test]
async fn mqtt_3_1_2_11_6_request_response_information_is_accepted_and_none_returned() {
    let broker = broker().await;
    for value in [0, 1] {
        let (c, ack) = broker.client(&login("r").request_response_information(value)).await;
        assert_eq!(ack.properties.get(property::RESPONSE_INFORMATION), None, "value {value}");
        c.disconnect().await;
    }
    // any other value breaks the CONNECT: refused with a CONNACK that says why (§4.13),
    // then closed
    let mut c = broker.raw().await;
    c.send(&login("r").request_response_information(2).to_bytes()).await;
    let ack = c.next_packet().await.connack(Version::V5);
    assert_eq!(ack.code, 0x82, "{ack:?}"); // Protocol Error ([MQTT-3.1.2-28], §3.1.2.11.6)
    assert_eq!(
        ack.properties.string(property::REASON_STRING),
        Some("request information property 0x19 must be 0 or 1, not 2")
    );
    c.expect_closed().await;
    broker.client(&login("after")).await.0.disconnect().await; // still serving
}
