//! Codec tests on raw bytes, so our own encoder cannot hide a decoder bug.

use super::*;
use crate::ReasonString;
use crate::fuzz::seeds::{self, Before, Seed};

const CONNECT_V311: &[u8] = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc";
const CONNECT_V31: &[u8] = b"\x10\x11\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x03abc";
const CONNECT_V5: &[u8] = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc";

fn decode_all(bytes: &[u8]) -> Result<Vec<Inbound>, ProtocolError> {
    let mut d = Decoder::new(1024);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(p) = d.decode(&mut buf)? {
        out.push(p);
    }
    Ok(out)
}

fn connected(connect: &[u8], rest: &[u8]) -> Result<Vec<Inbound>, ProtocolError> {
    let mut bytes = connect.to_vec();
    bytes.extend_from_slice(rest);
    decode_all(&bytes).map(|mut v| v.split_off(1))
}

/// Decodes a seed's bytes after what precedes them; the packets are the seed's own.
fn after(seed: Seed) -> Result<Vec<Inbound>, ProtocolError> {
    match seed.before {
        Before::Nothing => decode_all(seed.bytes),
        Before::ConnectV311 => connected(CONNECT_V311, seed.bytes),
        Before::ConnectV5 => connected(CONNECT_V5, seed.bytes),
    }
}

#[test]
fn protocol_level_picks_the_version() {
    for (bytes, version) in [
        (CONNECT_V31, ProtocolVersion::V3_1),
        (CONNECT_V311, ProtocolVersion::V3_1_1),
        (CONNECT_V5, ProtocolVersion::V5),
    ] {
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::from(bytes);
        let Some(Inbound::Connect(c)) = d.decode(&mut buf).unwrap() else { panic!("no CONNECT") };
        assert_eq!(c.version, version);
        assert_eq!(c.client_id.as_str(), "abc");
        assert_eq!(c.keep_alive, 60);
        assert!(c.clean_start);
        assert_eq!(d.version(), Some(version));
    }
}

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    // PINGREQ first
    assert_eq!(decode_all(b"\xc0\x00"), Err(ProtocolError::FirstPacketNotConnect));
    // PUBLISH first
    assert_eq!(decode_all(b"\x30\x05\x00\x01a\x68\x69"), Err(ProtocolError::FirstPacketNotConnect));
}

#[test]
fn mqtt_3_1_3_8_empty_client_id_without_clean_session_is_its_own_error() {
    // kept apart from MalformedPacket so the broker can answer CONNACK 0x02 / 0x85
    let v311 = decode_all(b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x3c\x00\x00");
    assert_eq!(v311, Err(ProtocolError::ClientIdRejected));
    let v5 = decode_all(b"\x10\x0d\x00\x04MQTT\x05\x00\x00\x3c\x00\x00\x00");
    assert_eq!(v5, Err(ProtocolError::ClientIdRejected));
    // with clean session it is accepted (the server assigns an id)
    let clean = decode_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00").unwrap();
    assert!(matches!(&clean[..], [Inbound::Connect(c)] if c.client_id.is_empty() && c.clean_start));
}

#[test]
fn mqtt_2_2_2_2_connect_with_reserved_flags_is_malformed() {
    let mut bytes = CONNECT_V311.to_vec();
    bytes[0] = 0x11;
    assert_eq!(decode_all(&bytes), Err(ProtocolError::MalformedPacket));
}

#[test]
fn unknown_protocol_name_or_level_is_refused() {
    assert_eq!(
        decode_all(b"\x10\x0f\x00\x04MQTX\x04\x02\x00\x3c\x00\x03abc"),
        Err(ProtocolError::UnsupportedProtocol)
    );
    assert_eq!(
        decode_all(b"\x10\x0f\x00\x04MQTT\x07\x02\x00\x3c\x00\x03abc"),
        Err(ProtocolError::UnsupportedProtocol)
    );
}

#[test]
fn mqtt_1_5_5_remaining_length_over_four_bytes_is_malformed() {
    for seed in [seeds::REMAINING_LENGTH_FIVE_BYTES_V311, seeds::REMAINING_LENGTH_FIVE_BYTES_V5] {
        let r = after(seed);
        assert!(
            matches!(r, Err(ProtocolError::MalformedPacket | ProtocolError::PacketTooLarge { .. })),
            "{r:?}"
        );
    }
    // four continuation bytes are already too many: no waiting for a fifth
    let r = after(seeds::REMAINING_LENGTH_FOUR_CONTINUATIONS_V311);
    assert!(matches!(r, Err(ProtocolError::MalformedPacket | ProtocolError::PacketTooLarge { .. })), "{r:?}");
    // in CONNECT, before the version is known
    assert_eq!(after(seeds::CONNECT_REMAINING_LENGTH_FIVE_BYTES), Err(ProtocolError::MalformedPacket));
}

#[test]
fn mqtt_1_5_5_continuation_byte_at_the_end_of_input_waits_for_more() {
    assert_eq!(after(seeds::REMAINING_LENGTH_CONTINUATION_AT_END_V311), Ok(vec![]));
    assert_eq!(after(seeds::CONNECT_REMAINING_LENGTH_CONTINUATION_AT_END), Ok(vec![]));
}

#[test]
fn mqtt_1_5_5_1_non_minimal_remaining_length_frames_the_same_packet() {
    // the rule binds the sender; the frame is unambiguous, so it decodes as what it frames
    let r = after(seeds::REMAINING_LENGTH_NON_MINIMAL_V311).unwrap();
    let [Inbound::Publish(p)] = r.as_slice() else { panic!("{r:?}") };
    assert_eq!((&*p.topic, &p.payload[..]), ("a", &b"x"[..]));
}

#[test]
fn mqtt5_1_5_5_property_length_over_four_bytes_is_malformed() {
    assert_eq!(after(seeds::PROPERTY_LENGTH_FIVE_BYTES_V5), Err(ProtocolError::MalformedPacket));
}

#[test]
fn packet_over_the_maximum_size_is_refused_before_it_is_read() {
    // remaining length 2000 > max 1024; only the header has arrived
    let r = connected(CONNECT_V311, b"\x30\xd0\x0f");
    assert_eq!(r, Err(ProtocolError::PacketTooLarge { size: 2000, max: 1024 }));
}

#[test]
fn truncated_packet_waits_for_more_bytes() {
    // QoS 1 PUBLISH announcing 10 bytes, 4 present
    assert_eq!(connected(CONNECT_V311, b"\x32\x0a\x00\x01a\x00"), Ok(vec![]));
}

#[test]
fn truncated_qos1_publish_inside_its_length_is_malformed() {
    // remaining length 4: topic "a" then only one byte where the packet id needs two
    let r = after(seeds::PUBLISH_QOS1_TRUNCATED_PACKET_ID_V311);
    assert_eq!(r, Err(ProtocolError::MalformedPacket));
    // remaining length 3: no packet id at all
    assert_eq!(after(seeds::PUBLISH_QOS1_WITHOUT_PACKET_ID_V311), Err(ProtocolError::MalformedPacket));
    assert_eq!(after(seeds::PUBLISH_QOS2_WITHOUT_PACKET_ID_V5), Err(ProtocolError::MalformedPacket));
}

#[test]
fn mqtt_1_5_3_1_invalid_utf8_in_topic_is_refused() {
    let r = connected(CONNECT_V311, b"\x30\x05\x00\x02\xff\xfe\x00");
    assert!(matches!(r, Err(ProtocolError::InvalidUtf8 | ProtocolError::MalformedPacket)), "{r:?}");
}

#[test]
fn mqtt_3_8_1_1_subscribe_with_wrong_reserved_flags_is_malformed() {
    let r = connected(CONNECT_V311, b"\x80\x06\x00\x01\x00\x01a\x00");
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn subscribe_without_its_options_byte_is_malformed() {
    for seed in [seeds::SUBSCRIBE_WITHOUT_OPTIONS_V311, seeds::SUBSCRIBE_WITHOUT_OPTIONS_V5] {
        assert_eq!(after(seed), Err(ProtocolError::MalformedPacket), "{}", seed.name);
    }
}

#[test]
fn mqtt_1_5_3_1_invalid_utf8_in_connect_strings_is_refused() {
    for seed in [
        seeds::CONNECT_INVALID_UTF8_CLIENT_ID_V311,
        seeds::CONNECT_INVALID_UTF8_USERNAME_V311,
        seeds::CONNECT_INVALID_UTF8_WILL_TOPIC_V311,
        seeds::CONNECT_INVALID_UTF8_CLIENT_ID_V5,
        seeds::CONNECT_SURROGATE_USERNAME_V5,
        seeds::CONNECT_INVALID_UTF8_WILL_TOPIC_V5,
    ] {
        assert_eq!(after(seed), Err(ProtocolError::InvalidUtf8), "{}", seed.name);
    }
}

#[test]
fn mqtt_1_5_4_2_null_character_in_strings_is_malformed() {
    for seed in [
        seeds::CONNECT_NULL_CLIENT_ID_V311,
        seeds::CONNECT_NULL_CLIENT_ID_V5,
        seeds::CONNECT_NULL_USERNAME_V5,
        seeds::CONNECT_NULL_WILL_TOPIC_V5,
        seeds::PUBLISH_NULL_TOPIC_V311,
        seeds::PUBLISH_NULL_TOPIC_V5,
        seeds::SUBSCRIBE_NULL_FILTER_V5,
        seeds::UNSUBSCRIBE_NULL_FILTER_V311,
    ] {
        assert_eq!(after(seed), Err(ProtocolError::NullCharacter), "{}", seed.name);
    }
    assert_eq!(ProtocolError::NullCharacter.reason_code() as u8, 0x81);
    assert_eq!(ProtocolError::NullCharacter.connack_code(), ConnAckCode::MalformedPacket);
    // the payload is not a string: U+0000 there is data
    let r = connected(CONNECT_V311, b"\x30\x05\x00\x01a\x00\x00").unwrap();
    assert!(matches!(r.as_slice(), [Inbound::Publish(p)] if p.payload[..] == b"\0\0"[..]));
}

#[test]
fn mqtt_3_3_4_6_subscription_identifier_in_a_client_publish_is_a_protocol_error() {
    let r = after(seeds::PUBLISH_SUBSCRIPTION_ID_V5);
    assert_eq!(r, Err(ProtocolError::SubscriptionIdFromClient));
    assert_eq!(ProtocolError::SubscriptionIdFromClient.reason_code() as u8, 0x82);
}

#[test]
fn version_and_maximum_packet_size_are_known_when_an_mqtt5_connect_fails_to_decode() {
    // Maximum Packet Size 200, then two Session Expiry Intervals
    let bytes = b"\x10\x1f\x00\x04MQTT\x05\x02\x00\x3c\x0f\x27\x00\x00\x00\xc8\x11\x00\x00\x00\x0a\x11\x00\x00\x00\x0a\x00\x03abc";
    let mut d = Decoder::new(1024);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(d.decode(&mut buf), Err(ProtocolError::DuplicateProperty));
    assert_eq!(d.version(), Some(ProtocolVersion::V5));
    assert_eq!(d.connect_maximum_packet_size(), Some(200));
    assert_eq!(ProtocolError::DuplicateProperty.connack_code(), ConnAckCode::ProtocolError);
    // no Maximum Packet Size: Some(0), no limit
    let mut d = Decoder::new(1024);
    assert_eq!(
        d.decode(&mut BytesMut::from(seeds::CONNECT_NULL_CLIENT_ID_V5.bytes)),
        Err(ProtocolError::NullCharacter)
    );
    assert_eq!((d.version(), d.connect_maximum_packet_size()), (Some(ProtocolVersion::V5), Some(0)));
    // a property block that cannot be read: unknown
    let mut d = Decoder::new(1024);
    assert!(d.decode(&mut BytesMut::from(seeds::PROPERTY_LENGTH_FIVE_BYTES_V5.bytes)).is_err());
    let mut d = Decoder::new(1024);
    let bad_block = b"\x10\x11\x00\x04MQTT\x05\x02\x00\x3c\x01\x7f\x00\x03abc";
    assert!(d.decode(&mut BytesMut::from(&bad_block[..])).is_err());
    assert_eq!((d.version(), d.connect_maximum_packet_size()), (Some(ProtocolVersion::V5), None));
    // 3.x: no CONNACK code for a malformed CONNECT
    let mut d = Decoder::new(1024);
    assert!(d.decode(&mut BytesMut::from(seeds::CONNECT_NULL_CLIENT_ID_V311.bytes)).is_err());
    assert_eq!((d.version(), d.connect_maximum_packet_size()), (Some(ProtocolVersion::V3_1_1), None));
}

#[test]
fn mqtt_4_7_3_1_empty_topic_name_is_refused() {
    assert_eq!(after(seeds::PUBLISH_EMPTY_TOPIC_V311), Err(ProtocolError::InvalidTopicName));
}

#[test]
fn mqtt5_3_3_2_3_4_empty_topic_without_topic_alias_is_a_protocol_error() {
    let r = after(seeds::PUBLISH_EMPTY_TOPIC_WITHOUT_ALIAS_V5);
    assert_eq!(r, Err(ProtocolError::EmptyTopicWithoutAlias));
    assert_eq!(ProtocolError::EmptyTopicWithoutAlias.reason_code() as u8, 0x82);
    // with an alias (Topic Alias 1) the empty topic decodes: it uses the alias
    let r = connected(CONNECT_V5, b"\x30\x07\x00\x00\x03\x23\x00\x01x").unwrap();
    assert!(matches!(r.as_slice(), [Inbound::Publish(p)] if p.topic.is_empty() && p.topic_alias == Some(1)));
}

#[test]
fn mqtt_4_7_3_1_empty_topic_filter_is_malformed() {
    for seed in [
        seeds::SUBSCRIBE_EMPTY_FILTER_V311,
        seeds::SUBSCRIBE_EMPTY_FILTER_V5,
        seeds::UNSUBSCRIBE_EMPTY_FILTER_V5,
    ] {
        assert_eq!(after(seed), Err(ProtocolError::MalformedPacket), "{}", seed.name);
    }
}

#[test]
fn mqtt5_2_2_2_2_property_included_twice_is_refused() {
    for seed in [
        seeds::PUBLISH_TWO_PAYLOAD_FORMAT_INDICATORS_V5,
        seeds::CONNECT_TWO_SESSION_EXPIRY_INTERVALS_V5,
        seeds::SUBSCRIBE_TWO_SUBSCRIPTION_IDS_V5,
    ] {
        assert_eq!(after(seed), Err(ProtocolError::DuplicateProperty), "{}", seed.name);
    }
    assert_eq!(ProtocolError::DuplicateProperty.reason_code() as u8, 0x82);
    // User Property may repeat
    let r =
        connected(CONNECT_V5, b"\x30\x13\x00\x01a\x0e\x26\x00\x01k\x00\x01v\x26\x00\x01k\x00\x01wx").unwrap();
    assert!(matches!(r.as_slice(), [Inbound::Publish(p)] if p.properties.user_properties.len() == 2));
}

#[test]
fn property_included_twice_is_found_in_a_packet_that_arrives_byte_by_byte() {
    for seed in
        [seeds::PUBLISH_TWO_PAYLOAD_FORMAT_INDICATORS_V5, seeds::CONNECT_TWO_SESSION_EXPIRY_INTERVALS_V5]
    {
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::new();
        if seed.before == Before::ConnectV5 {
            buf.extend_from_slice(CONNECT_V5);
            assert!(matches!(d.decode(&mut buf), Ok(Some(Inbound::Connect(_)))));
        }
        let (last, first) = seed.bytes.split_last().unwrap();
        for &b in first {
            buf.extend_from_slice(&[b]);
            assert_eq!(d.decode(&mut buf), Ok(None), "{}", seed.name);
        }
        buf.extend_from_slice(&[*last]);
        assert_eq!(d.decode(&mut buf), Err(ProtocolError::DuplicateProperty), "{}", seed.name);
        if seed.before == Before::Nothing {
            // and the CONNECT's (absent) Maximum Packet Size was read
            assert_eq!(d.connect_maximum_packet_size(), Some(0));
        }
    }
}

#[test]
fn mqtt_3_3_1_4_publish_with_qos_3_is_malformed() {
    let r = connected(CONNECT_V311, b"\x36\x05\x00\x01a\x00\x01");
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn publish_decodes_topic_payload_qos_and_flags() {
    let r = connected(CONNECT_V311, b"\x3b\x07\x00\x01a\x00\x05hi").unwrap();
    let [Inbound::Publish(p)] = r.as_slice() else { panic!("{r:?}") };
    assert_eq!(
        (&*p.topic, p.qos, p.packet_id, p.retain, p.dup),
        ("a", QoS::AtLeastOnce, Some(5), true, true)
    );
    assert_eq!(&p.payload[..], b"hi");
}

#[test]
fn second_connect_decodes_so_the_broker_can_refuse_it() {
    let r = connected(CONNECT_V311, CONNECT_V311).unwrap();
    assert!(matches!(r.as_slice(), [Inbound::Connect(_)]));
}

#[test]
fn server_only_packets_from_a_client_are_flagged() {
    let r = connected(CONNECT_V311, b"\x20\x02\x00\x00\xd0\x00").unwrap();
    assert_eq!(r, vec![Inbound::ServerOnly, Inbound::ServerOnly]);
}

#[test]
fn v5_disconnect_carries_its_reason_code() {
    let r = connected(CONNECT_V5, b"\xe0\x02\x04\x00").unwrap();
    assert_eq!(r, vec![Inbound::Disconnect { reason: 0x04, session_expiry: None }]);
}

#[test]
fn encoder_writes_v311_connack_and_suback_bytes() {
    let mut e = Encoder::new(ProtocolVersion::V3_1_1, 0);
    let mut buf = BytesMut::new();
    e.encode(
        Outbound::ConnAck {
            session_present: true,
            code: ConnAckCode::Success,
            assigned_client_id: None,
            server_keep_alive: None,
            receive_maximum: 10,
            maximum_packet_size: 1024,
            topic_alias_maximum: 0,
            reason_string: None,
        },
        &mut buf,
    )
    .unwrap();
    assert_eq!(&buf[..], b"\x20\x02\x01\x00");
    buf.clear();
    e.encode(
        Outbound::SubAck(
            7,
            vec![SubAckCode::Granted(QoS::ExactlyOnce), SubAckCode::TopicFilterInvalid],
            None,
        ),
        &mut buf,
    )
    .unwrap();
    assert_eq!(&buf[..], b"\x90\x04\x00\x07\x02\x80");
    buf.clear();
    e.encode(Outbound::Disconnect(0x8b, None), &mut buf).unwrap();
    assert!(buf.is_empty(), "3.x has no server DISCONNECT");
}

#[test]
fn mqtt_3_2_2_4_refused_connack_never_says_session_present() {
    let mut e = Encoder::new(ProtocolVersion::V3_1_1, 0);
    let mut buf = BytesMut::new();
    e.encode(
        Outbound::ConnAck {
            session_present: true,
            code: ConnAckCode::ClientIdRejected,
            assigned_client_id: None,
            server_keep_alive: None,
            receive_maximum: 10,
            maximum_packet_size: 1024,
            topic_alias_maximum: 0,
            reason_string: None,
        },
        &mut buf,
    )
    .unwrap();
    assert_eq!(&buf[..], b"\x20\x02\x00\x02");
}

#[test]
fn refused_connack_codes_per_version() {
    let cases = [
        (ConnAckCode::BadCredentials, 0x04, 0x86),
        (ConnAckCode::NotAuthorized, 0x05, 0x87),
        (ConnAckCode::ServerUnavailable, 0x03, 0x88),
        // 3.x has no connection-rate code
        (ConnAckCode::ConnectionRate, 0x05, 0x9f),
    ];
    // 3.x has no code for a malformed CONNECT: its CONNACK encodes to nothing
    for (code, v5) in [
        (ConnAckCode::MalformedPacket, 0x81),
        (ConnAckCode::ProtocolError, 0x82),
        (ConnAckCode::TopicNameInvalid, 0x90),
        (ConnAckCode::PacketTooLarge, 0x95),
    ] {
        let connack = |code| Outbound::ConnAck {
            session_present: false,
            code,
            assigned_client_id: None,
            server_keep_alive: None,
            receive_maximum: 1,
            maximum_packet_size: 0,
            topic_alias_maximum: 0,
            reason_string: None,
        };
        let mut buf = BytesMut::new();
        Encoder::new(ProtocolVersion::V3_1_1, 0).encode(connack(code), &mut buf).unwrap();
        assert!(buf.is_empty(), "{code:?} over 3.1.1: {buf:?}");
        Encoder::new(ProtocolVersion::V5, 0).encode(connack(code), &mut buf).unwrap();
        assert_eq!((buf[0], buf[3]), (0x20, v5), "{code:?} over 5.0");
    }
    for (code, v3, v5) in cases {
        for (version, want) in [(ProtocolVersion::V3_1_1, v3), (ProtocolVersion::V5, v5)] {
            let mut buf = BytesMut::new();
            let connack = Outbound::ConnAck {
                session_present: false,
                code,
                assigned_client_id: None,
                server_keep_alive: None,
                receive_maximum: 1,
                maximum_packet_size: 0,
                topic_alias_maximum: 0,
                reason_string: None,
            };
            Encoder::new(version, 0).encode(connack, &mut buf).unwrap();
            // fixed header, one-byte remaining length, flags, then the code
            assert_eq!((buf[0], buf[3]), (0x20, want), "{code:?} over {version:?}");
        }
    }
}

#[test]
fn v5_connack_never_carries_a_zero_maximum_packet_size() {
    // [MQTT-3.2.2.3.6] a zero Maximum Packet Size is a protocol error (Mosquitto's clients
    // drop the connection on it): "no limit" is sent as no property
    for (limit, property) in [(0u32, None), (1024, Some([0x27, 0, 0, 4, 0]))] {
        let mut buf = BytesMut::new();
        let connack = Outbound::ConnAck {
            session_present: false,
            code: ConnAckCode::BadCredentials,
            assigned_client_id: None,
            server_keep_alive: None,
            receive_maximum: 1,
            maximum_packet_size: limit,
            topic_alias_maximum: 0,
            reason_string: None,
        };
        Encoder::new(ProtocolVersion::V5, 0).encode(connack, &mut buf).unwrap();
        let has = |p: &[u8]| buf.windows(p.len()).any(|w| w == p);
        assert!(!has(&[0x27, 0, 0, 0, 0]), "zero maximum packet size sent: {buf:02x?}");
        if let Some(p) = property {
            assert!(has(&p), "maximum packet size {limit} missing: {buf:02x?}");
        }
    }
}

#[test]
fn encoder_writes_v5_disconnect_with_reason() {
    let mut e = Encoder::new(ProtocolVersion::V5, 0);
    let mut buf = BytesMut::new();
    e.encode(Outbound::Disconnect(0x8e, None), &mut buf).unwrap();
    assert_eq!(buf[0], 0xe0, "DISCONNECT");
    assert_eq!(buf[2], 0x8e, "reason code follows the remaining length");
}

/// A small deterministic PRNG (xorshift64*), so the no-panic sweep is repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_bytes_after_connect_never_panic_and_always_terminate() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for round in 0..20_000 {
        let connect = [CONNECT_V311, CONNECT_V5, CONNECT_V31][round % 3];
        let mut bytes = connect.to_vec();
        let len = (rng.next() % 64) as usize;
        // bias the first byte towards valid packet types so decoding goes deep
        bytes.push((((rng.next() % 15) + 1) << 4) as u8 | (rng.next() % 16) as u8);
        bytes.extend((0..len).map(|_| rng.next() as u8));
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::from(&bytes[..]);
        // each call either consumes a packet, needs more bytes, or fails: bounded loop
        for _ in 0..bytes.len() + 2 {
            match d.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[test]
fn random_bytes_as_first_packet_never_panic() {
    let mut rng = Rng(0x0bad_cafe_dead_beef);
    for _ in 0..20_000 {
        let len = (rng.next() % 48) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if let Some(b) = bytes.first_mut() {
            *b = 0x10; // make it look like CONNECT so the version detection runs
        }
        let mut d = Decoder::new(1024);
        let _ = d.decode(&mut BytesMut::from(&bytes[..]));
    }
}

fn publish_to(topic: &str) -> Outbound {
    Outbound::Publish {
        message: std::sync::Arc::new(Message {
            topic: TopicName::new(topic.to_owned()).unwrap(),
            payload: bytes::Bytes::from_static(b"p"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: MessageProperties::default(),
        }),
        qos: QoS::AtMostOnce,
        packet_id: None,
        retain: false,
        dup: false,
        subscription_ids: Vec::new(),
        message_expiry: None,
    }
}

/// Decodes what the encoder wrote with rmqtt-codec's v5 decoder: (topic, alias).
fn sent_topics(buf: &mut BytesMut) -> Vec<(String, Option<u16>)> {
    let mut codec = v5::Codec::new(0, 0);
    let mut out = Vec::new();
    while let Some((packet, _)) = codec.decode(buf).unwrap() {
        let v5::Packet::Publish(p) = packet else { panic!("not a PUBLISH: {packet:?}") };
        let alias = p.properties.and_then(|props| props.topic_alias).map(NonZeroU16::get);
        out.push((p.topic.to_string(), alias));
    }
    out
}

#[test]
fn mqtt_3_3_2_12_server_assigns_topic_aliases_up_to_the_client_maximum() {
    let mut e = Encoder::new(ProtocolVersion::V5, 0).with_topic_aliases(1);
    let mut buf = BytesMut::new();
    for topic in ["plant/7/temp", "plant/7/temp", "plant/8/temp", "plant/7/temp"] {
        e.encode(publish_to(topic), &mut buf).unwrap();
    }
    assert_eq!(
        sent_topics(&mut buf),
        vec![
            ("plant/7/temp".to_owned(), Some(1)), // defined with its topic
            (String::new(), Some(1)),             // then the alias alone
            ("plant/8/temp".to_owned(), None),    // no room for a second alias
            (String::new(), Some(1)),
        ]
    );
}

#[test]
fn no_topic_aliases_without_a_client_maximum_or_for_3x() {
    for mut e in
        [Encoder::new(ProtocolVersion::V5, 0), Encoder::new(ProtocolVersion::V5, 0).with_topic_aliases(0)]
    {
        let mut buf = BytesMut::new();
        e.encode(publish_to("a/b"), &mut buf).unwrap();
        e.encode(publish_to("a/b"), &mut buf).unwrap();
        assert_eq!(sent_topics(&mut buf), vec![("a/b".to_owned(), None), ("a/b".to_owned(), None)]);
    }
    // a 3.x encoder ignores the request entirely
    let mut e = Encoder::new(ProtocolVersion::V3_1_1, 0).with_topic_aliases(5);
    let mut buf = BytesMut::new();
    e.encode(publish_to("a/b"), &mut buf).unwrap();
    assert_eq!(&buf[..], b"\x30\x06\x00\x03a/bp");
}

#[test]
fn an_alias_whose_packet_could_not_be_sent_is_not_used_later() {
    // maximum packet size 20: a long topic does not fit, so its alias must not be kept
    let mut e = Encoder::new(ProtocolVersion::V5, 20).with_topic_aliases(2);
    let mut buf = BytesMut::new();
    assert!(e.encode(publish_to("a/very/long/topic/that/does/not/fit"), &mut buf).is_err());
    buf.clear();
    e.encode(publish_to("s/t"), &mut buf).unwrap();
    e.encode(publish_to("s/t"), &mut buf).unwrap();
    assert_eq!(sent_topics(&mut buf), vec![("s/t".to_owned(), Some(1)), (String::new(), Some(1))]);
}

#[test]
fn fuzz_entry_points_survive_a_deterministic_sweep() {
    let mut rng = Rng(0x5eed_f00d_1234_4321);
    for _ in 0..5_000 {
        let len = (rng.next() % 96) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        crate::fuzz::decode(&data);
        crate::fuzz::session(&data);
    }
}

fn reason(text: &str) -> Option<ReasonString> {
    Some(ReasonString::new(text))
}

/// The error packets that can say why, each with `text` as its reason string.
fn refusals(text: &str) -> Vec<(&'static str, Outbound)> {
    vec![
        (
            "CONNACK",
            Outbound::ConnAck {
                session_present: false,
                code: ConnAckCode::NotAuthorized,
                assigned_client_id: None,
                server_keep_alive: None,
                receive_maximum: 1,
                maximum_packet_size: 0,
                topic_alias_maximum: 0,
                reason_string: reason(text),
            },
        ),
        ("PUBACK", Outbound::PubAck(1, 0x87, reason(text))),
        ("PUBREC", Outbound::PubRec(1, 0x97, reason(text))),
        ("PUBCOMP", Outbound::PubComp(1, 0x92, reason(text))),
        ("SUBACK", Outbound::SubAck(1, vec![SubAckCode::NotAuthorized], reason(text))),
        ("UNSUBACK", Outbound::UnsubAck(1, vec![0x8f], reason(text))),
        ("DISCONNECT", Outbound::Disconnect(0x8e, reason(text))),
    ]
}

/// Property 0x1F with `text`, as it appears on the wire.
fn reason_property(text: &str) -> Vec<u8> {
    let mut p = vec![0x1f, 0, u8::try_from(text.len()).unwrap()];
    p.extend_from_slice(text.as_bytes());
    p
}

fn contains(buf: &[u8], part: &[u8]) -> bool {
    buf.windows(part.len()).any(|w| w == part)
}

#[test]
fn v5_error_packets_carry_their_reason_string() {
    let text = "not authorized to publish to a/b";
    for (name, packet) in refusals(text) {
        let mut buf = BytesMut::new();
        Encoder::new(ProtocolVersion::V5, 0).encode(packet, &mut buf).unwrap();
        assert!(contains(&buf, &reason_property(text)), "{name} without its reason string: {buf:02x?}");
    }
}

#[test]
fn v5_puback_with_reason_string_is_exact() {
    let mut buf = BytesMut::new();
    Encoder::new(ProtocolVersion::V5, 0).encode(Outbound::PubAck(1, 0x87, reason("no")), &mut buf).unwrap();
    // id, reason code, property length 5, Reason String "no"
    assert_eq!(&buf[..], b"\x40\x09\x00\x01\x87\x05\x1f\x00\x02no");
}

#[test]
fn v5_reason_strings_decode_in_a_client_codec() {
    // the bytes decode as the same packet in a client's codec (here: rmqtt-codec's own)
    let mut buf = BytesMut::new();
    let mut e = Encoder::new(ProtocolVersion::V5, 0);
    e.encode(Outbound::SubAck(3, vec![SubAckCode::TopicFilterInvalid], reason("bad filter")), &mut buf)
        .unwrap();
    let (packet, _) = v5::Codec::new(0, 0).decode(&mut buf).unwrap().unwrap();
    let v5::Packet::SubscribeAck(ack) = packet else { panic!("not a SUBACK: {packet:?}") };
    assert_eq!(ack.reason_string.as_deref(), Some("bad filter"));
    assert_eq!(ack.status, vec![v5::SubscribeAckReason::TopicFilterInvalid]);
}

#[test]
fn v3_packets_never_carry_reason_strings() {
    let mut e = Encoder::new(ProtocolVersion::V3_1_1, 0);
    let mut buf = BytesMut::new();
    e.encode(Outbound::PubAck(1, 0x87, reason("no")), &mut buf).unwrap();
    assert_eq!(&buf[..], b"\x40\x02\x00\x01");
}

#[test]
fn mqtt_3_1_2_29_without_problem_information_only_connack_and_disconnect_say_why() {
    let text = "refused";
    for (name, packet) in refusals(text) {
        let mut buf = BytesMut::new();
        let mut e = Encoder::new(ProtocolVersion::V5, 0).with_problem_information(false);
        e.encode(packet, &mut buf).unwrap();
        let kept = contains(&buf, &reason_property(text));
        let may_keep = matches!(name, "CONNACK" | "DISCONNECT");
        assert_eq!(kept, may_keep, "{name}: reason string kept = {kept}: {buf:02x?}");
        assert!(!contains(&buf, &[0x1f]) || may_keep, "{name} still has a Reason String: {buf:02x?}");
    }
}

#[test]
fn reason_string_is_dropped_when_it_would_exceed_the_client_maximum_packet_size() {
    // [MQTT-3.2.2-19], [MQTT-3.4.2-2], [MQTT-3.5.2-2], [MQTT-3.7.2-2], [MQTT-3.9.2-1],
    // [MQTT-3.11.2-1], [MQTT-3.14.2-3]
    let text = "a reason string far too long for the client";
    for (name, packet) in refusals(text) {
        let mut full = BytesMut::new();
        Encoder::new(ProtocolVersion::V5, 0).encode(packet.clone(), &mut full).unwrap();
        let fits = u32::try_from(full.len()).unwrap();
        // exactly the size with the string: kept
        let mut buf = BytesMut::new();
        Encoder::new(ProtocolVersion::V5, fits).encode(packet.clone(), &mut buf).unwrap();
        assert_eq!(buf, full, "{name} at exactly its size");
        // one byte less: sent without it, and within the limit
        buf.clear();
        Encoder::new(ProtocolVersion::V5, fits - 1).encode(packet, &mut buf).unwrap();
        assert!(!contains(&buf, &reason_property(text)), "{name} kept its reason string: {buf:02x?}");
        assert!(buf.len() < full.len() && buf[0] == full[0], "{name} sent as {buf:02x?}");
    }
}

#[test]
fn mqtt_3_1_2_24_packet_over_the_client_maximum_counts_its_fixed_header() {
    // remaining length 7 fits a maximum of 8, the whole packet (9 bytes) does not
    let mut buf = BytesMut::from(&b"keep"[..]);
    let err = Encoder::new(ProtocolVersion::V5, 8).encode(publish_to("a/b"), &mut buf).unwrap_err();
    assert!(matches!(err, EncodeError::OverMaxPacketSize { size: 9, max: 8 }), "{err:?}");
    assert_eq!(&buf[..], b"keep", "nothing of the refused packet is left in the buffer");
    Encoder::new(ProtocolVersion::V5, 9).encode(publish_to("a/b"), &mut buf).unwrap();
    assert_eq!(buf.len(), 4 + 9);
}

#[test]
fn v5_connect_carries_the_problem_and_response_information_requests() {
    // properties: Request Problem Information 0, Request Response Information 1
    let connect = b"\x10\x14\x00\x04MQTT\x05\x02\x00\x3c\x04\x17\x00\x19\x01\x00\x03abc";
    let [Inbound::Connect(c)] = &decode_all(connect).unwrap()[..] else { panic!("no CONNECT") };
    assert!(!c.request_problem_information);
    assert!(c.request_response_information);
    // absent: problem information is requested, response information is not
    let [Inbound::Connect(c)] = &decode_all(CONNECT_V5).unwrap()[..] else { panic!("no CONNECT") };
    assert!(c.request_problem_information);
    assert!(!c.request_response_information);
}

#[test]
fn mqtt_3_1_2_28_request_information_other_than_0_or_1_is_a_protocol_error() {
    for property in [0x17, 0x19] {
        let connect =
            [&b"\x10\x12\x00\x04MQTT\x05\x02\x00\x3c\x02"[..], &[property, 0x02], b"\x00\x03abc"].concat();
        assert_eq!(
            decode_all(&connect),
            Err(ProtocolError::BadRequestFlag { id: property, value: 2 }),
            "property {property:#04x}"
        );
        assert_eq!(
            ProtocolError::BadRequestFlag { id: property, value: 2 }.connack_code(),
            ConnAckCode::ProtocolError
        );
    }
}

#[test]
fn mqtt_3_3_4_6_a_client_subscription_identifier_of_0_is_a_protocol_error_too() {
    // QoS 0 PUBLISH to "a": properties 0x0b 0x00 (Subscription Identifier 0)
    let publish = b"\x30\x06\x00\x01a\x02\x0b\x00";
    assert_eq!(connected(CONNECT_V5, publish), Err(ProtocolError::SubscriptionIdFromClient));
}
