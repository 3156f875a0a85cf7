//! The fuzz seed corpus as named byte strings: the crash classes other MQTT brokers
//! shipped (NanoMQ's among them, STYLE.md §8), a few valid packets of each type, and
//! session operation sequences. `fuzz/seeds/<target>/<name>` holds each
//! one as a file; a unit test checks that those files equal these bytes, and the decoder
//! and broker tests send the same constants.

use Before::{ConnectV5, ConnectV311, Nothing};
use Outcome::{Decodes, Refused, Waits};

/// What the decoder has already accepted when a seed's bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// Nothing: the bytes open the connection (they hold the CONNECT).
    Nothing,
    /// A valid MQTT 3.1.1 CONNECT (client id `abc`).
    ConnectV311,
    /// A valid MQTT 5.0 CONNECT (client id `abc`, no properties).
    ConnectV5,
}

/// What decoding a seed's bytes, after [`Before`], must end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one packet decodes, and every byte is consumed.
    Decodes,
    /// The decoder fails: the connection must be closed.
    Refused,
    /// No packet and no error: the decoder waits for more bytes.
    Waits,
}

/// One `mqtt_decode` seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    /// Its file name under `fuzz/seeds/mqtt_decode/`.
    pub name: &'static str,
    /// What precedes the bytes on the connection.
    pub before: Before,
    /// What the client sends.
    pub bytes: &'static [u8],
    /// What the decoder must make of them.
    pub outcome: Outcome,
}

impl Seed {
    /// The `mqtt_decode` fuzz input: the selector byte [`super::decode`] reads (even:
    /// raw, odd: after a CONNECT, bit 1: MQTT 5), then the bytes.
    pub fn fuzz_input(&self) -> Vec<u8> {
        let selector = match self.before {
            Before::Nothing => 0x00,
            Before::ConnectV311 => 0x01,
            Before::ConnectV5 => 0x03,
        };
        let mut input = Vec::with_capacity(self.bytes.len() + 1);
        input.push(selector);
        input.extend_from_slice(self.bytes);
        input
    }
}

const fn seed(name: &'static str, before: Before, bytes: &'static [u8], outcome: Outcome) -> Seed {
    Seed { name, before, bytes, outcome }
}

// Truncated QoS > 0 PUBLISH: the packet id is missing or cut short inside the packet's
// own remaining length (a decoder that trusts the QoS bits reads past the packet).

/// QoS 1 PUBLISH whose remaining length ends after the topic: no packet id.
pub const PUBLISH_QOS1_WITHOUT_PACKET_ID_V311: Seed =
    seed("publish-qos1-without-packet-id-v311", ConnectV311, b"\x32\x03\x00\x01a", Refused);
/// QoS 1 PUBLISH with one byte of its two-byte packet id.
pub const PUBLISH_QOS1_TRUNCATED_PACKET_ID_V311: Seed =
    seed("publish-qos1-truncated-packet-id-v311", ConnectV311, b"\x32\x04\x00\x01a\x00", Refused);
/// MQTT 5 QoS 2 PUBLISH with no packet id and no property length.
pub const PUBLISH_QOS2_WITHOUT_PACKET_ID_V5: Seed =
    seed("publish-qos2-without-packet-id-v5", ConnectV5, b"\x34\x03\x00\x01a", Refused);

// SUBSCRIBE whose last topic filter has no options byte.

/// MQTT 3.1.1 SUBSCRIBE `a` without its requested QoS byte.
pub const SUBSCRIBE_WITHOUT_OPTIONS_V311: Seed =
    seed("subscribe-without-options-v311", ConnectV311, b"\x82\x05\x00\x01\x00\x01a", Refused);
/// MQTT 5 SUBSCRIBE `a` without its subscription options byte.
pub const SUBSCRIBE_WITHOUT_OPTIONS_V5: Seed =
    seed("subscribe-without-options-v5", ConnectV5, b"\x82\x06\x00\x01\x00\x00\x01a", Refused);

// Variable byte integers: at most four bytes ([MQTT-1.5.5]); a decoder must neither read
// past its input nor wait for a fifth byte.

/// A remaining length of five bytes.
pub const REMAINING_LENGTH_FIVE_BYTES_V311: Seed =
    seed("remaining-length-five-bytes-v311", ConnectV311, b"\x30\xff\xff\xff\xff\x7f", Refused);
/// A remaining length of five bytes, MQTT 5.
pub const REMAINING_LENGTH_FIVE_BYTES_V5: Seed =
    seed("remaining-length-five-bytes-v5", ConnectV5, b"\x30\xff\xff\xff\xff\x7f", Refused);
/// Four continuation bytes and the end of input: already more than four bytes.
pub const REMAINING_LENGTH_FOUR_CONTINUATIONS_V311: Seed =
    seed("remaining-length-four-continuations-v311", ConnectV311, b"\x30\xff\xff\xff\xff", Refused);
/// A CONNECT whose remaining length has five bytes.
pub const CONNECT_REMAINING_LENGTH_FIVE_BYTES: Seed =
    seed("connect-remaining-length-five-bytes", Nothing, b"\x10\xff\xff\xff\xff\x7f", Refused);
/// A continuation byte (0xFF) at the end of input: wait for the rest.
pub const REMAINING_LENGTH_CONTINUATION_AT_END_V311: Seed =
    seed("remaining-length-continuation-at-end-v311", ConnectV311, b"\x30\xff", Waits);
/// A CONNECT cut after a continuation byte: wait for the rest.
pub const CONNECT_REMAINING_LENGTH_CONTINUATION_AT_END: Seed =
    seed("connect-remaining-length-continuation-at-end", Nothing, b"\x10\xff", Waits);
/// A remaining length of 4 in two bytes (0x84 0x00). [MQTT-1.5.5-1] binds the sender;
/// the frame is still unambiguous, so it decodes as the PUBLISH it frames.
pub const REMAINING_LENGTH_NON_MINIMAL_V311: Seed =
    seed("remaining-length-non-minimal-v311", ConnectV311, b"\x30\x84\x00\x00\x01ax", Decodes);
/// An MQTT 5 property length of five bytes inside a PUBLISH.
pub const PROPERTY_LENGTH_FIVE_BYTES_V5: Seed =
    seed("property-length-five-bytes-v5", ConnectV5, b"\x30\x09\x00\x01a\xff\xff\xff\xff\x01x", Refused);

// Ill-formed UTF-8 in CONNECT strings ([MQTT-1.5.3-1]).

/// Client id `a\xffc`.
pub const CONNECT_INVALID_UTF8_CLIENT_ID_V311: Seed = seed(
    "connect-invalid-utf8-client-id-v311",
    Nothing,
    b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03a\xffc",
    Refused,
);
/// User name `u\xffs`.
pub const CONNECT_INVALID_UTF8_USERNAME_V311: Seed = seed(
    "connect-invalid-utf8-username-v311",
    Nothing,
    b"\x10\x14\x00\x04MQTT\x04\x82\x00\x3c\x00\x03abc\x00\x03u\xffs",
    Refused,
);
/// Will topic `w\xfft`.
pub const CONNECT_INVALID_UTF8_WILL_TOPIC_V311: Seed = seed(
    "connect-invalid-utf8-will-topic-v311",
    Nothing,
    b"\x10\x17\x00\x04MQTT\x04\x06\x00\x3c\x00\x03abc\x00\x03w\xfft\x00\x01m",
    Refused,
);
/// MQTT 5 client id `a\xffc`.
pub const CONNECT_INVALID_UTF8_CLIENT_ID_V5: Seed = seed(
    "connect-invalid-utf8-client-id-v5",
    Nothing,
    b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03a\xffc",
    Refused,
);
/// MQTT 5 user name holding a UTF-16 surrogate (U+D800 as ED A0 80, [MQTT-1.5.4-1]).
pub const CONNECT_SURROGATE_USERNAME_V5: Seed = seed(
    "connect-surrogate-username-v5",
    Nothing,
    b"\x10\x15\x00\x04MQTT\x05\x82\x00\x3c\x00\x00\x03abc\x00\x03\xed\xa0\x80",
    Refused,
);
/// MQTT 5 will topic `w\xfft` (after an empty will property block).
pub const CONNECT_INVALID_UTF8_WILL_TOPIC_V5: Seed = seed(
    "connect-invalid-utf8-will-topic-v5",
    Nothing,
    b"\x10\x19\x00\x04MQTT\x05\x06\x00\x3c\x00\x00\x03abc\x00\x00\x03w\xfft\x00\x01m",
    Refused,
);

// U+0000 in the strings the broker acts on ([MQTT-1.5.4-2]; 3.1.1: [MQTT-1.5.3-2]):
// well-formed UTF-8, so the codec lets it through, but a Malformed Packet all the same.

/// Client id `a\0c`.
pub const CONNECT_NULL_CLIENT_ID_V311: Seed = seed(
    "connect-null-client-id-v311",
    Nothing,
    b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03a\x00c",
    Refused,
);
/// MQTT 5 client id `a\0c`.
pub const CONNECT_NULL_CLIENT_ID_V5: Seed = seed(
    "connect-null-client-id-v5",
    Nothing,
    b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03a\x00c",
    Refused,
);
/// MQTT 5 user name `u\0s`.
pub const CONNECT_NULL_USERNAME_V5: Seed = seed(
    "connect-null-username-v5",
    Nothing,
    b"\x10\x15\x00\x04MQTT\x05\x82\x00\x3c\x00\x00\x03abc\x00\x03u\x00s",
    Refused,
);
/// MQTT 5 will topic `w\0t` (after an empty will property block).
pub const CONNECT_NULL_WILL_TOPIC_V5: Seed = seed(
    "connect-null-will-topic-v5",
    Nothing,
    b"\x10\x19\x00\x04MQTT\x05\x06\x00\x3c\x00\x00\x03abc\x00\x00\x03w\x00t\x00\x01m",
    Refused,
);
/// PUBLISH to `a\0b`.
pub const PUBLISH_NULL_TOPIC_V311: Seed =
    seed("publish-null-topic-v311", ConnectV311, b"\x30\x06\x00\x03a\x00bx", Refused);
/// MQTT 5 PUBLISH to `a\0b`.
pub const PUBLISH_NULL_TOPIC_V5: Seed =
    seed("publish-null-topic-v5", ConnectV5, b"\x30\x07\x00\x03a\x00b\x00x", Refused);
/// MQTT 5 SUBSCRIBE to `a\0b`.
pub const SUBSCRIBE_NULL_FILTER_V5: Seed =
    seed("subscribe-null-filter-v5", ConnectV5, b"\x82\x09\x00\x01\x00\x00\x03a\x00b\x00", Refused);
/// UNSUBSCRIBE from `a\0b`.
pub const UNSUBSCRIBE_NULL_FILTER_V311: Seed =
    seed("unsubscribe-null-filter-v311", ConnectV311, b"\xa2\x07\x00\x01\x00\x03a\x00b", Refused);

// Zero-length topics and filters ([MQTT-4.7.3-1]).

/// PUBLISH with an empty topic.
pub const PUBLISH_EMPTY_TOPIC_V311: Seed =
    seed("publish-empty-topic-v311", ConnectV311, b"\x30\x03\x00\x00x", Refused);
/// MQTT 5 PUBLISH with an empty topic and no Topic Alias (an empty topic is how an
/// alias is used; without one it is a Protocol Error, [MQTT-3.3.2.3.4]).
pub const PUBLISH_EMPTY_TOPIC_WITHOUT_ALIAS_V5: Seed =
    seed("publish-empty-topic-without-alias-v5", ConnectV5, b"\x30\x04\x00\x00\x00x", Refused);
/// SUBSCRIBE to an empty filter.
pub const SUBSCRIBE_EMPTY_FILTER_V311: Seed =
    seed("subscribe-empty-filter-v311", ConnectV311, b"\x82\x05\x00\x01\x00\x00\x00", Refused);
/// MQTT 5 SUBSCRIBE to an empty filter.
pub const SUBSCRIBE_EMPTY_FILTER_V5: Seed =
    seed("subscribe-empty-filter-v5", ConnectV5, b"\x82\x06\x00\x01\x00\x00\x00\x00", Refused);
/// MQTT 5 UNSUBSCRIBE from an empty filter.
pub const UNSUBSCRIBE_EMPTY_FILTER_V5: Seed =
    seed("unsubscribe-empty-filter-v5", ConnectV5, b"\xa2\x05\x00\x01\x00\x00\x00", Refused);

// MQTT 5 properties that may appear once, twice.

/// PUBLISH with two Payload Format Indicators ([MQTT-3.3.2.3.2]: a Protocol Error).
pub const PUBLISH_TWO_PAYLOAD_FORMAT_INDICATORS_V5: Seed = seed(
    "publish-two-payload-format-indicators-v5",
    ConnectV5,
    b"\x30\x09\x00\x01a\x04\x01\x01\x01\x01x",
    Refused,
);
/// CONNECT with two Session Expiry Intervals ([MQTT-3.1.2.11.2]: a Protocol Error).
pub const CONNECT_TWO_SESSION_EXPIRY_INTERVALS_V5: Seed = seed(
    "connect-two-session-expiry-intervals-v5",
    Nothing,
    b"\x10\x1a\x00\x04MQTT\x05\x02\x00\x3c\x0a\x11\x00\x00\x00\x0a\x11\x00\x00\x00\x0a\x00\x03abc",
    Refused,
);
/// SUBSCRIBE with two Subscription Identifiers ([MQTT-3.8.2.1.2]: a Protocol Error).
pub const SUBSCRIBE_TWO_SUBSCRIPTION_IDS_V5: Seed = seed(
    "subscribe-two-subscription-ids-v5",
    ConnectV5,
    b"\x82\x0b\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00",
    Refused,
);
/// PUBLISH with a Subscription Identifier (1): only a server may send one
/// ([MQTT-3.3.4-6]: a Protocol Error).
pub const PUBLISH_SUBSCRIPTION_ID_V5: Seed =
    seed("publish-subscription-id-v5", ConnectV5, b"\x30\x08\x00\x01a\x02\x0b\x01hi", Refused);

/// The shapes that broke other brokers: each must be refused (or waited on) without a
/// panic, and each has a decoder test and, where it can reach one, a broker test.
pub const CRASH_CLASSES: &[Seed] = &[
    PUBLISH_QOS1_WITHOUT_PACKET_ID_V311,
    PUBLISH_QOS1_TRUNCATED_PACKET_ID_V311,
    PUBLISH_QOS2_WITHOUT_PACKET_ID_V5,
    SUBSCRIBE_WITHOUT_OPTIONS_V311,
    SUBSCRIBE_WITHOUT_OPTIONS_V5,
    REMAINING_LENGTH_FIVE_BYTES_V311,
    REMAINING_LENGTH_FIVE_BYTES_V5,
    REMAINING_LENGTH_FOUR_CONTINUATIONS_V311,
    CONNECT_REMAINING_LENGTH_FIVE_BYTES,
    REMAINING_LENGTH_CONTINUATION_AT_END_V311,
    CONNECT_REMAINING_LENGTH_CONTINUATION_AT_END,
    REMAINING_LENGTH_NON_MINIMAL_V311,
    PROPERTY_LENGTH_FIVE_BYTES_V5,
    CONNECT_INVALID_UTF8_CLIENT_ID_V311,
    CONNECT_INVALID_UTF8_USERNAME_V311,
    CONNECT_INVALID_UTF8_WILL_TOPIC_V311,
    CONNECT_INVALID_UTF8_CLIENT_ID_V5,
    CONNECT_SURROGATE_USERNAME_V5,
    CONNECT_INVALID_UTF8_WILL_TOPIC_V5,
    CONNECT_NULL_CLIENT_ID_V311,
    CONNECT_NULL_CLIENT_ID_V5,
    CONNECT_NULL_USERNAME_V5,
    CONNECT_NULL_WILL_TOPIC_V5,
    PUBLISH_NULL_TOPIC_V311,
    PUBLISH_NULL_TOPIC_V5,
    SUBSCRIBE_NULL_FILTER_V5,
    UNSUBSCRIBE_NULL_FILTER_V311,
    PUBLISH_EMPTY_TOPIC_V311,
    PUBLISH_EMPTY_TOPIC_WITHOUT_ALIAS_V5,
    SUBSCRIBE_EMPTY_FILTER_V311,
    SUBSCRIBE_EMPTY_FILTER_V5,
    UNSUBSCRIBE_EMPTY_FILTER_V5,
    PUBLISH_TWO_PAYLOAD_FORMAT_INDICATORS_V5,
    CONNECT_TWO_SESSION_EXPIRY_INTERVALS_V5,
    SUBSCRIBE_TWO_SUBSCRIPTION_IDS_V5,
    PUBLISH_SUBSCRIPTION_ID_V5,
];

/// Valid packets of each type, as starting points for the fuzzer's mutations.
pub const VALID: &[Seed] = &[
    seed("valid-connect-v31", Nothing, b"\x10\x11\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x03abc", Decodes),
    seed("valid-connect-v311", Nothing, b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc", Decodes),
    seed(
        // user name, password, QoS 1 retained will
        "valid-connect-v311-will-credentials",
        Nothing,
        b"\x10\x21\x00\x04MQTT\x04\xee\x00\x3c\x00\x03abc\x00\x03w/t\x00\x04gone\x00\x01u\x00\x02pw",
        Decodes,
    ),
    seed(
        // Session Expiry 10, Receive Maximum 5, Topic Alias Maximum 4
        "valid-connect-v5-properties",
        Nothing,
        b"\x10\x1b\x00\x04MQTT\x05\x02\x00\x3c\x0b\x11\x00\x00\x00\x0a\x21\x00\x05\x22\x00\x04\x00\x03abc",
        Decodes,
    ),
    seed("valid-publish-qos0-v311", ConnectV311, b"\x30\x05\x00\x01ahi", Decodes),
    seed("valid-publish-qos1-retain-dup-v311", ConnectV311, b"\x3b\x07\x00\x01a\x00\x05hi", Decodes),
    seed("valid-publish-qos2-v311", ConnectV311, b"\x34\x07\x00\x01a\x00\x06hi", Decodes),
    seed(
        // Payload Format Indicator 1, Message Expiry 60, Topic Alias 1, a user property
        "valid-publish-qos1-properties-v5",
        ConnectV5,
        b"\x32\x1b\x00\x03a/b\x00\x07\x11\x01\x01\x02\x00\x00\x00\x3c\x23\x00\x01\x26\x00\x01k\x00\x01vhi",
        Decodes,
    ),
    seed(
        "valid-puback-pubrec-pubrel-pubcomp-v311",
        ConnectV311,
        b"\x40\x02\x00\x01\x50\x02\x00\x02\x62\x02\x00\x03\x70\x02\x00\x04",
        Decodes,
    ),
    seed(
        // each ack with a reason code, PUBREL with an empty property block
        "valid-acks-with-reasons-v5",
        ConnectV5,
        b"\x40\x03\x00\x01\x10\x50\x03\x00\x02\x00\x62\x04\x00\x03\x00\x00\x70\x03\x00\x04\x92",
        Decodes,
    ),
    seed("valid-subscribe-v311", ConnectV311, b"\x82\x0c\x00\x01\x00\x03a/+\x01\x00\x01#\x02", Decodes),
    seed(
        // Subscription Identifier 7; no local, retain as published, retain handling 2
        "valid-subscribe-options-v5",
        ConnectV5,
        b"\x82\x0f\x00\x01\x02\x0b\x07\x00\x03a/#\x2d\x00\x01b\x00",
        Decodes,
    ),
    seed("valid-unsubscribe-v311", ConnectV311, b"\xa2\x0a\x00\x01\x00\x03a/+\x00\x01#", Decodes),
    seed("valid-unsubscribe-v5", ConnectV5, b"\xa2\x07\x00\x01\x00\x00\x02a/", Decodes),
    seed("valid-pingreq-disconnect-v311", ConnectV311, b"\xc0\x00\xe0\x00", Decodes),
    seed(
        // DISCONNECT 0x04 (with will) and Session Expiry 0
        "valid-disconnect-with-will-v5",
        ConnectV5,
        b"\xe0\x07\x04\x05\x11\x00\x00\x00\x00",
        Decodes,
    ),
    seed("valid-auth-v5", ConnectV5, b"\xf0\x02\x18\x00", Decodes),
];

/// One `mqtt_session` seed: a sequence of operations for [`super::session`], one byte
/// each (`op % 6`: 0-1 enqueue at QoS `op / 6 % 3`, expiring when bit 7 is set; 2 send;
/// 3 acknowledge a sent id; 4 incoming QoS 2 id and PUBREL; 5 resume with a receive
/// maximum of `op % 5 + 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSeed {
    /// Its file name under `fuzz/seeds/mqtt_session/`.
    pub name: &'static str,
    /// The operations.
    pub ops: &'static [u8],
}

/// Session operation sequences that reach the window, queue and resume edges.
pub const SESSION: &[SessionSeed] = &[
    SessionSeed {
        // six QoS 1 enqueued, five sends against a window of four, acks out of order
        name: "qos1-window-full-acks-out-of-order",
        ops: &[6, 6, 6, 6, 6, 6, 2, 2, 2, 2, 2, 9, 3, 21, 15, 2, 2],
    },
    SessionSeed {
        // QoS 2 in flight, resumed with a receive maximum of 1 then 2
        name: "qos2-resume-small-receive-maximum",
        ops: &[12, 12, 12, 2, 2, 5, 3, 9, 2, 11, 3],
    },
    SessionSeed {
        // twelve QoS 1 into a queue of eight (drop oldest), then sends and an ack
        name: "queue-overflow-drops-oldest",
        ops: &[6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 2, 2, 2, 2, 2, 3],
    },
    SessionSeed {
        // expiring QoS 1, 2 and 0 messages, sent and resumed later
        name: "expiring-messages-resumed-later",
        ops: &[132, 138, 144, 2, 29, 2, 2, 5],
    },
    SessionSeed {
        // incoming QoS 2 ids reused before and after their PUBREL
        name: "incoming-qos2-reused-ids",
        ops: &[4, 4, 10, 16, 4, 10],
    },
    SessionSeed { name: "every-operation", ops: &[0, 6, 12, 2, 2, 2, 3, 9, 15, 4, 5, 1, 7, 13, 2, 29] },
];

/// Every seed file: its path under `fuzz/seeds/` (`<target>/<name>`) and its bytes.
pub fn files() -> Vec<(String, Vec<u8>)> {
    let decode =
        CRASH_CLASSES.iter().chain(VALID).map(|s| (format!("mqtt_decode/{}", s.name), s.fuzz_input()));
    let session = SESSION.iter().map(|s| (format!("mqtt_session/{}", s.name), s.ops.to_vec()));
    decode.chain(session).collect()
}
