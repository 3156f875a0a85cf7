//! Malformed input and protocol violations, sent as raw bytes: each closes only the
//! offending connection ([MQTT-4.8.0-1]; MQTT 5 first sends DISCONNECT with the reason
//! code, [MQTT-4.13.1-1]), and the broker keeps serving a client connected before and
//! fresh clients after.

use telehub_broker::Config;
use telehub_mqtt::fuzz::seeds::{self, Before, Seed};
use telehub_testkit::parse::property;
use telehub_testkit::{Connect, Publish, RawClient, TestBroker, Version, build};

const V3: Version = Version::V311;
const V5: Version = Version::V5;

/// A client connected before the bad input, subscribed to `health/#` and to `#` (the
/// latter to see that nothing a bad client sent was routed).
async fn bystander(broker: &TestBroker) -> RawClient {
    let (mut c, _) = broker.client(&Connect::v311("bystander")).await;
    assert_eq!(c.subscribe(1, &[("health/#", 1), ("#", 0)]).await, [1, 0]);
    c
}

/// The bystander received nothing from the bad client, still receives, and fresh
/// clients connect and exchange messages.
async fn assert_unaffected(broker: &TestBroker, mut bystander: RawClient) {
    bystander.expect_nothing().await;
    let (mut p, _) = broker.client(&Connect::v311("after")).await;
    p.publish(&Publish::new(V3, "health/after", b"ok").qos(1, 1)).await;
    let got = bystander.expect_publish().await;
    assert_eq!((got.topic.as_str(), &got.payload[..], got.qos), ("health/after", &b"ok"[..], 1));
    broker.assert_serving().await;
}

async fn connected(broker: &TestBroker, connect: &Connect) -> RawClient {
    broker.client(connect).await.0
}

/// Connects as `seed` says comes first (with the seed's name as client id), then sends
/// its bytes (`telehub_mqtt::fuzz::seeds`, the fuzz corpus of known crash classes).
async fn send_seed(broker: &TestBroker, seed: Seed) -> RawClient {
    let mut c = match seed.before {
        Before::Nothing => broker.raw().await,
        Before::ConnectV311 => connected(broker, &Connect::v311(seed.name)).await,
        Before::ConnectV5 => connected(broker, &Connect::v5(seed.name)).await,
    };
    c.send(seed.bytes).await;
    c
}

/// Sends `seed` and asserts the connection ends: after an MQTT 5 CONNECT with
/// DISCONNECT `v5_reason`; after a 3.x CONNECT, or for a 3.x CONNECT itself, with a plain
/// close (no CONNACK: [MQTT-3.1.4-1] lets the server close without one, and 3.x has no
/// code for it). An MQTT 5 CONNECT seed goes to [`assert_connect_refused`].
async fn assert_seed_closes(broker: &TestBroker, seed: Seed, v5_reason: u8) {
    let mut c = send_seed(broker, seed).await;
    match seed.before {
        Before::ConnectV5 => c.expect_disconnect(v5_reason).await,
        Before::ConnectV311 | Before::Nothing => c.expect_closed().await,
    }
}

/// Sends the MQTT 5 CONNECT `seed` and asserts CONNACK `code` with a Reason String, then
/// the close: once the server can tell the client speaks MQTT 5 it says why (§3.1.4,
/// §4.13) rather than just close.
async fn assert_connect_refused(broker: &TestBroker, seed: Seed, code: u8) {
    assert_eq!(seed.before, Before::Nothing, "{}", seed.name);
    let mut c = send_seed(broker, seed).await;
    let ack = c.next_packet().await.connack(V5);
    assert_eq!(ack.code, code, "{}: {ack:?}", seed.name);
    assert!(ack.properties.string(property::REASON_STRING).is_some(), "{}: {ack:?}", seed.name);
    c.expect_closed().await;
}

#[tokio::test]
async fn mqtt_3_1_0_1_first_packet_not_connect_closes_the_connection() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    let firsts: [&[u8]; 3] = [
        &build::pingreq(),
        &[0x30, 0x05, 0x00, 0x01, 0x61, 0x68, 0x69], // PUBLISH "a" "hi"
        &build::subscribe(V3, 1, &[("a", 0)]),
    ];
    for first in firsts {
        let mut bad = broker.raw().await;
        bad.send(first).await;
        // no CONNACK, nothing at all: just closed
        bad.expect_closed().await;
    }
    assert_eq!(broker.stats().snapshot().protocol_errors, 3);
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_4_8_0_1_truncated_connect_then_eof_closes_without_connack() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    let connect = Connect::v311("half").to_bytes();
    let mut bad = broker.raw().await;
    bad.send(&connect[..connect.len() / 2]).await;
    bad.shutdown_write().await;
    bad.expect_closed().await;
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_4_8_0_1_truncated_packet_then_eof_closes_and_publishes_the_will() {
    let broker = TestBroker::start().await;
    let mut by = bystander(&broker).await;
    let mut bad = connected(&broker, &Connect::v311("trunc").will("health/will", b"gone", 0, false)).await;
    // PUBLISH announcing 10 bytes, 6 sent, then end of stream
    bad.send(&[0x30, 0x0a, 0x00, 0x03, b'a', b'/', b'b', b'x']).await;
    bad.shutdown_write().await;
    bad.expect_closed().await;
    // [MQTT-3.1.2-8] the connection closed without DISCONNECT: the will is published,
    // and the partial PUBLISH is not
    let will = by.expect_publish().await;
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("health/will", &b"gone"[..]));
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_4_8_0_1_remaining_length_over_four_bytes_closes() {
    // MQTT 3.1.1 §2.2.3 / 5.0 §1.5.5: a variable byte integer has at most four bytes
    let five_bytes = [0x30, 0xff, 0xff, 0xff, 0xff, 0x01];
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;

    let mut v3 = connected(&broker, &Connect::v311("len3")).await;
    v3.send(&five_bytes).await;
    v3.expect_closed().await;

    let mut v5 = connected(&broker, &Connect::v5("len5")).await;
    v5.send(&five_bytes).await;
    v5.expect_disconnect(0x81).await; // Malformed Packet

    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_1_5_3_1_invalid_utf8_topic_closes() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    let topic = [b'a', 0xff, b'b'];

    let mut v3 = connected(&broker, &Connect::v311("utf3")).await;
    v3.send(&Publish::new(V3, topic, b"x").to_bytes()).await;
    v3.expect_closed().await;

    // [MQTT-1.5.4-1] MQTT 5: ill-formed UTF-8 is a Malformed Packet
    let mut v5 = connected(&broker, &Connect::v5("utf5")).await;
    v5.send(&Publish::new(V5, topic, b"x").qos(1, 1).to_bytes()).await;
    v5.expect_disconnect(0x81).await;

    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_3_3_2_2_wildcard_in_publish_topic_closes() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;

    // PUBLISH "#" "hi" (STYLE.md §8)
    let mut v3 = connected(&broker, &Connect::v311("wild3")).await;
    v3.send(&[0x30, 0x05, 0x00, 0x01, 0x23, 0x68, 0x69]).await;
    v3.expect_closed().await;

    let mut v3_plus = connected(&broker, &Connect::v311("wild3plus")).await;
    v3_plus.send(&Publish::new(V3, "a/+/b", b"hi").qos(1, 3).to_bytes()).await;
    v3_plus.expect_closed().await;

    // MQTT 5: same PUBLISH with an empty property block; DISCONNECT 0x90 Topic Name invalid
    let mut v5 = connected(&broker, &Connect::v5("wild5")).await;
    v5.send(&[0x30, 0x06, 0x00, 0x01, 0x23, 0x00, 0x68, 0x69]).await;
    v5.expect_disconnect(0x90).await;

    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt5_3_2_2_3_6_packet_over_maximum_packet_size_closes() {
    const MAX: u32 = 128;
    let broker = TestBroker::start_with(Config { max_packet_size: MAX, ..TestBroker::config() }).await;
    let mut by = bystander(&broker).await;

    let (mut v5, ack) = broker.client(&Connect::v5("big5")).await;
    // the server announces its limit (Maximum Packet Size)
    assert_eq!(ack.properties.u32(property::MAXIMUM_PACKET_SIZE), Some(MAX));
    // remaining length exactly MAX is accepted: 2+3 topic, 2 id, 1 properties, 120 payload
    let at_limit = Publish::new(V5, "big", [7u8; 120]).qos(1, 1);
    assert_eq!(at_limit.to_bytes().len(), 3 + MAX as usize, "first byte, two-byte length, MAX");
    v5.publish(&at_limit).await;
    // one byte more: DISCONNECT 0x95 Packet too large
    v5.send(&Publish::new(V5, "big", [7u8; 121]).qos(1, 2).to_bytes()).await;
    v5.expect_disconnect(0x95).await;

    let mut v3 = connected(&broker, &Connect::v311("big3")).await;
    v3.send(&Publish::new(V3, "big", [7u8; 500]).to_bytes()).await;
    v3.expect_closed().await;

    // the bystander (subscribed to `#`) got the accepted one only
    let got = by.expect_publish().await;
    assert_eq!((got.topic.as_str(), got.payload.len()), ("big", 120));
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_3_1_0_2_second_connect_closes() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;

    let mut v3 = connected(&broker, &Connect::v311("twice3")).await;
    v3.send(&Connect::v311("twice3").to_bytes()).await;
    v3.expect_closed().await;

    let mut v5 = connected(&broker, &Connect::v5("twice5")).await;
    v5.send(&Connect::v5("twice5").to_bytes()).await;
    v5.expect_disconnect(0x82).await; // Protocol Error

    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_3_8_1_1_subscribe_with_wrong_reserved_flags_closes() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;

    for version in [V3, V5] {
        let connect = match version {
            V3 => Connect::v311("flags3"),
            V5 => Connect::v5("flags5"),
        };
        let mut bad = connected(&broker, &connect).await;
        let mut subscribe = build::subscribe(version, 1, &[("a/b", 0)]);
        assert_eq!(subscribe[0], 0x82);
        subscribe[0] = 0x80; // reserved flags must be 0010
        bad.send(&subscribe).await;
        if version.is_v5() {
            bad.expect_disconnect(0x81).await;
        } else {
            bad.expect_closed().await;
        }
    }

    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_4_8_0_1_connack_from_a_client_closes() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;

    let mut v3 = connected(&broker, &Connect::v311("connack3")).await;
    v3.send(&[0x20, 0x02, 0x00, 0x00]).await;
    v3.expect_closed().await;

    // MQTT 5 CONNACK (with its empty property block): a server-only packet is a
    // Protocol Error
    let mut v5 = connected(&broker, &Connect::v5("connack5")).await;
    v5.send(&[0x20, 0x03, 0x00, 0x00, 0x00]).await;
    v5.expect_disconnect(0x82).await;

    assert_unaffected(&broker, by).await;
}

// The crash classes of the fuzz seed corpus, each against the running broker.

#[tokio::test]
async fn mqtt_4_8_0_1_qos_publish_without_its_packet_id_closes() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    assert_seed_closes(&broker, seeds::PUBLISH_QOS1_WITHOUT_PACKET_ID_V311, 0).await;
    assert_seed_closes(&broker, seeds::PUBLISH_QOS1_TRUNCATED_PACKET_ID_V311, 0).await;
    assert_seed_closes(&broker, seeds::PUBLISH_QOS2_WITHOUT_PACKET_ID_V5, 0x81).await;
    assert_eq!(broker.stats().snapshot().protocol_errors, 3);
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_4_8_0_1_subscribe_without_its_options_byte_closes() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    assert_seed_closes(&broker, seeds::SUBSCRIBE_WITHOUT_OPTIONS_V311, 0).await;
    assert_seed_closes(&broker, seeds::SUBSCRIBE_WITHOUT_OPTIONS_V5, 0x81).await;
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_1_5_5_bad_variable_byte_integers_close_without_waiting() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    // four continuation bytes: refused at once, no wait for a fifth byte
    assert_seed_closes(&broker, seeds::REMAINING_LENGTH_FOUR_CONTINUATIONS_V311, 0).await;
    assert_seed_closes(&broker, seeds::CONNECT_REMAINING_LENGTH_FIVE_BYTES, 0).await;
    // a property length of five bytes
    assert_seed_closes(&broker, seeds::PROPERTY_LENGTH_FIVE_BYTES_V5, 0x81).await;
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_1_5_5_remaining_length_cut_after_a_continuation_byte_waits_then_closes_at_eof() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    for seed in [
        seeds::REMAINING_LENGTH_CONTINUATION_AT_END_V311,
        seeds::CONNECT_REMAINING_LENGTH_CONTINUATION_AT_END,
    ] {
        let mut c = send_seed(&broker, seed).await;
        // the rest may still come: the connection stays open
        c.expect_nothing().await;
        c.shutdown_write().await;
        c.expect_closed().await;
    }
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_1_5_3_1_invalid_utf8_in_connect_is_refused_with_connack_0x81_on_mqtt5_closed_on_3x() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    let v3 = [
        seeds::CONNECT_INVALID_UTF8_CLIENT_ID_V311,
        seeds::CONNECT_INVALID_UTF8_USERNAME_V311,
        seeds::CONNECT_INVALID_UTF8_WILL_TOPIC_V311,
    ];
    for seed in v3 {
        assert_seed_closes(&broker, seed, 0).await;
    }
    let v5 = [
        seeds::CONNECT_INVALID_UTF8_CLIENT_ID_V5,
        seeds::CONNECT_SURROGATE_USERNAME_V5,
        seeds::CONNECT_INVALID_UTF8_WILL_TOPIC_V5,
    ];
    for seed in v5 {
        assert_connect_refused(&broker, seed, 0x81).await; // Malformed Packet
    }
    assert_eq!(broker.stats().snapshot().protocol_errors, (v3.len() + v5.len()) as u64);
    // no will of theirs was published (the bystander subscribes to `#`)
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_4_7_3_1_empty_topic_or_filter_closes() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    assert_seed_closes(&broker, seeds::PUBLISH_EMPTY_TOPIC_V311, 0).await;
    assert_seed_closes(&broker, seeds::SUBSCRIBE_EMPTY_FILTER_V311, 0).await;
    assert_seed_closes(&broker, seeds::SUBSCRIBE_EMPTY_FILTER_V5, 0x81).await;
    assert_seed_closes(&broker, seeds::UNSUBSCRIBE_EMPTY_FILTER_V5, 0x81).await;
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt5_3_3_2_3_4_empty_topic_without_topic_alias_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    assert_seed_closes(&broker, seeds::PUBLISH_EMPTY_TOPIC_WITHOUT_ALIAS_V5, 0x82).await;
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt5_property_included_twice_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    // [MQTT-3.3.2.3.2] two Payload Format Indicators
    assert_seed_closes(&broker, seeds::PUBLISH_TWO_PAYLOAD_FORMAT_INDICATORS_V5, 0x82).await;
    // [MQTT-3.8.2.1.2] two Subscription Identifiers
    assert_seed_closes(&broker, seeds::SUBSCRIBE_TWO_SUBSCRIPTION_IDS_V5, 0x82).await;
    // [MQTT-3.1.2.11.2] two Session Expiry Intervals: CONNECT, refused with CONNACK
    assert_connect_refused(&broker, seeds::CONNECT_TWO_SESSION_EXPIRY_INTERVALS_V5, 0x82).await;
    assert_eq!(broker.stats().snapshot().protocol_errors, 3);
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_1_5_4_2_null_character_in_strings_is_a_malformed_packet() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    // 3.1.1 ([MQTT-1.5.3-2]): closed, the CONNECT without CONNACK
    assert_seed_closes(&broker, seeds::CONNECT_NULL_CLIENT_ID_V311, 0).await;
    assert_seed_closes(&broker, seeds::PUBLISH_NULL_TOPIC_V311, 0).await;
    assert_seed_closes(&broker, seeds::UNSUBSCRIBE_NULL_FILTER_V311, 0).await;
    // MQTT 5: CONNACK or DISCONNECT 0x81 Malformed Packet (not 0x90 Topic Name invalid,
    // nor a SUBACK refusing the filter)
    for seed in
        [seeds::CONNECT_NULL_CLIENT_ID_V5, seeds::CONNECT_NULL_USERNAME_V5, seeds::CONNECT_NULL_WILL_TOPIC_V5]
    {
        assert_connect_refused(&broker, seed, 0x81).await;
    }
    assert_seed_closes(&broker, seeds::PUBLISH_NULL_TOPIC_V5, 0x81).await;
    assert_seed_closes(&broker, seeds::SUBSCRIBE_NULL_FILTER_V5, 0x81).await;
    assert_eq!(broker.stats().snapshot().protocol_errors, 8);
    // nothing was routed, no will published (the bystander subscribes to `#`)
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_3_3_4_6_subscription_identifier_in_a_client_publish_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let by = bystander(&broker).await;
    assert_seed_closes(&broker, seeds::PUBLISH_SUBSCRIPTION_ID_V5, 0x82).await;
    assert_unaffected(&broker, by).await;
}

#[tokio::test]
async fn mqtt_3_1_4_1_malformed_mqtt5_connect_gets_a_connack_within_the_client_maximum_packet_size() {
    let broker = TestBroker::start().await;
    // Maximum Packet Size 10, then two Session Expiry Intervals: the CONNACK 0x82
    // comes without its Reason String, which would not fit ([MQTT-3.2.2-19])
    let mut c = broker.raw().await;
    c.send(b"\x10\x1f\x00\x04MQTT\x05\x02\x00\x3c\x0f\x27\x00\x00\x00\x0a\x11\x00\x00\x00\x0a\x11\x00\x00\x00\x0a\x00\x03abc").await;
    let ack = c.next_packet().await.connack(V5);
    assert_eq!(ack.code, 0x82, "{ack:?}");
    assert_eq!(ack.properties.string(property::REASON_STRING), None, "{ack:?}");
    c.expect_closed().await;
    broker.assert_serving().await;
}
