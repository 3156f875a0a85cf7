//! Version-neutral packets: what a client can send us ([`Inbound`]) and what we send
//! ([`Outbound`]). The codec converts between these and MQTT 3.x / 5.0 wire packets, so
//! the broker handles one shape whatever the protocol level.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use telehub_core::{ClientId, Message, MessageProperties, QoS};

/// The protocol level a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3).
    V3_1,
    /// MQTT 3.1.1 (level 4).
    V3_1_1,
    /// MQTT 5.0 (level 5).
    V5,
}

impl ProtocolVersion {
    /// True for MQTT 5.0.
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }
}

/// A will message with its MQTT 5 delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// The message published when the client goes away without DISCONNECT.
    pub message: Message,
    /// MQTT 5 Will Delay Interval (zero for 3.x).
    pub delay: Duration,
}

/// CONNECT, with what every version has in common.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level from the CONNECT variable header.
    pub version: ProtocolVersion,
    /// Clean Session (3.x) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep Alive in seconds; zero switches keep-alive off.
    pub keep_alive: u16,
    /// Client Identifier; may be empty.
    pub client_id: ClientId,
    /// User Name, if present.
    pub username: Option<ByteString>,
    /// Password, if present.
    pub password: Option<Bytes>,
    /// Will, if the will flag was set.
    pub will: Option<Will>,
    /// MQTT 5 Session Expiry Interval in seconds (0 for 3.x; `u32::MAX` is never).
    pub session_expiry: u32,
    /// MQTT 5 Receive Maximum of the client (65535 when absent).
    pub receive_maximum: u16,
    /// MQTT 5 Maximum Packet Size the client accepts.
    pub maximum_packet_size: Option<u32>,
    /// MQTT 5 Topic Alias Maximum of the client.
    pub topic_alias_maximum: u16,
    /// MQTT 5 Request Problem Information (true when absent, and for 3.x): false forbids
    /// Reason Strings and User Properties on everything but PUBLISH, CONNACK and
    /// DISCONNECT ([MQTT-3.1.2-29]).
    pub request_problem_information: bool,
    /// MQTT 5 Request Response Information. The broker returns no Response
    /// Information, which the spec allows whatever the client asks.
    pub request_response_information: bool,
}

/// MQTT 5 subscription options (3.x subscriptions carry only the QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS granted.
    pub qos: QoS,
    /// No Local: do not send the client its own messages.
    pub no_local: bool,
    /// Retain As Published: keep the RETAIN flag of live messages.
    pub retain_as_published: bool,
    /// Retain Handling: 0 send retained at subscribe, 1 only for a new subscription, 2 never.
    pub retain_handling: u8,
}

impl SubOptions {
    /// Options of a 3.x subscription at `qos`.
    pub fn with_qos(qos: QoS) -> Self {
        Self { qos, no_local: false, retain_as_published: false, retain_handling: 0 }
    }
}

/// PUBLISH as received: the topic is not validated yet (it may be empty when an MQTT 5
/// topic alias stands for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishIn {
    /// Topic name as sent.
    pub topic: ByteString,
    /// Packet identifier, present for QoS 1 and 2.
    pub packet_id: Option<u16>,
    /// QoS of the PUBLISH.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// DUP flag.
    pub dup: bool,
    /// Application payload.
    pub payload: Bytes,
    /// MQTT 5 properties to pass through.
    pub properties: MessageProperties,
    /// MQTT 5 Topic Alias.
    pub topic_alias: Option<u16>,
}

/// A packet from a client, of any protocol level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// CONNECT.
    Connect(Box<Connect>),
    /// PUBLISH.
    Publish(Box<PublishIn>),
    /// PUBACK for a QoS 1 delivery.
    PubAck(u16),
    /// PUBREC for a QoS 2 delivery.
    PubRec(u16),
    /// PUBREL for a QoS 2 publish we received.
    PubRel(u16),
    /// PUBCOMP for a QoS 2 delivery.
    PubComp(u16),
    /// SUBSCRIBE with its (unvalidated) filters.
    Subscribe {
        /// Packet identifier.
        packet_id: u16,
        /// Filters with their options.
        filters: Vec<(ByteString, SubOptions)>,
        /// MQTT 5 Subscription Identifier.
        subscription_id: Option<u32>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Packet identifier.
        packet_id: u16,
        /// Filters to remove.
        filters: Vec<ByteString>,
    },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT, with the MQTT 5 reason code (0 for 3.x) and session expiry update.
    Disconnect {
        /// Reason code; 0x04 asks for the will to be sent.
        reason: u8,
        /// MQTT 5 Session Expiry Interval update.
        session_expiry: Option<u32>,
    },
    /// MQTT 5 AUTH (enhanced authentication).
    Auth,
    /// A packet only a server sends (CONNACK, SUBACK, ...).
    ServerOnly,
}

/// CONNACK result, version-neutral; the codec picks the 3.x return code or 5.0 reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnAckCode {
    /// Accepted.
    Success,
    /// The client id is not acceptable (3.x: 0x02, 5.0: 0x85).
    ClientIdRejected,
    /// Unsupported protocol level (3.x: 0x01, 5.0: 0x84).
    UnsupportedProtocol,
    /// Bad user name or password (3.x: 0x04, 5.0: 0x86).
    BadCredentials,
    /// Not authorized (3.x: 0x05, 5.0: 0x87).
    NotAuthorized,
    /// Server unavailable (3.x: 0x03, 5.0: 0x88).
    ServerUnavailable,
    /// Connection rate exceeded (5.0: 0x9F; 3.x has no such code: 0x05 not authorized).
    ConnectionRate,
    /// Keep alive above the server's maximum, for 3.x clients that cannot be told
    /// (3.x: 0x02 identifier rejected, as Mosquitto does).
    KeepAliveTooLong,
    /// The CONNECT is a Malformed Packet (5.0: 0x81; 3.x has no such code, and the
    /// CONNACK encodes to nothing).
    MalformedPacket,
    /// The CONNECT breaks a protocol rule (5.0: 0x82; none in 3.x, as above).
    ProtocolError,
    /// The will topic is not a valid topic name (5.0: 0x90; none in 3.x, as above).
    TopicNameInvalid,
    /// The CONNECT is larger than the server accepts (5.0: 0x95; none in 3.x, as above).
    PacketTooLarge,
}

/// SUBACK result for one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubAckCode {
    /// Granted at this QoS.
    Granted(QoS),
    /// The filter is malformed (3.x: 0x80, 5.0: 0x8F).
    TopicFilterInvalid,
    /// Shared subscriptions are not offered (3.x: 0x80, 5.0: 0x9E).
    SharedNotSupported,
    /// Refused by policy (3.x: 0x80, 5.0: 0x87).
    NotAuthorized,
    /// Unspecified failure (0x80).
    Failure,
}

/// An MQTT 5 Reason String (property 0x1F): a short, human-readable explanation sent
/// with an error reason code. It is built only when something is refused, never on the
/// success path, and never holds secrets (no passwords, tokens or internal errors).
///
/// The encoder drops it when the client asked for no problem information, or when it
/// would take the packet over the client's Maximum Packet Size; 3.x clients never see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonString(Box<str>);

impl ReasonString {
    /// The longest text kept, in bytes; longer ones are cut (a long topic, say).
    pub const MAX_LEN: usize = 160;

    /// A reason string saying `text`, cut to [`ReasonString::MAX_LEN`] bytes (at a
    /// character boundary, ending in `...`).
    pub fn new(text: impl Into<String>) -> Self {
        let mut text = text.into();
        if text.len() > Self::MAX_LEN {
            let mut end = Self::MAX_LEN - 3;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
        Self(text.into_boxed_str())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<ReasonString> for ByteString {
    fn from(r: ReasonString) -> Self {
        Self::from(String::from(r.0))
    }
}

/// A packet we send to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// CONNACK.
    ConnAck {
        /// Session Present flag.
        session_present: bool,
        /// Result.
        code: ConnAckCode,
        /// MQTT 5 Assigned Client Identifier.
        assigned_client_id: Option<ClientId>,
        /// MQTT 5 Server Keep Alive, when it differs from what the client asked.
        server_keep_alive: Option<u16>,
        /// MQTT 5 Receive Maximum the server accepts.
        receive_maximum: u16,
        /// MQTT 5 Maximum Packet Size the server accepts.
        maximum_packet_size: u32,
        /// MQTT 5 Topic Alias Maximum: aliases the client may use towards us.
        topic_alias_maximum: u16,
        /// MQTT 5 Reason String, for a refusal.
        reason_string: Option<ReasonString>,
    },
    /// A delivery.
    Publish {
        /// The shared message.
        message: Arc<Message>,
        /// Delivery QoS (the lower of message and subscription QoS).
        qos: QoS,
        /// Packet identifier for QoS 1/2.
        packet_id: Option<u16>,
        /// RETAIN flag on this delivery.
        retain: bool,
        /// DUP flag (redelivery).
        dup: bool,
        /// MQTT 5 Subscription Identifiers (never sent to 3.x clients).
        subscription_ids: Vec<u32>,
        /// What is left of the Message Expiry Interval, sent instead of the
        /// publisher's value.
        message_expiry: Option<Duration>,
    },
    /// PUBACK (with an MQTT 5 reason code, and a reason string for an error).
    PubAck(u16, u8, Option<ReasonString>),
    /// PUBREC (with an MQTT 5 reason code, and a reason string for an error).
    PubRec(u16, u8, Option<ReasonString>),
    /// PUBREL.
    PubRel(u16),
    /// PUBCOMP (reason 0x92 when the id is unknown, with a reason string).
    PubComp(u16, u8, Option<ReasonString>),
    /// SUBACK, with one reason string for the filters refused.
    SubAck(u16, Vec<SubAckCode>, Option<ReasonString>),
    /// UNSUBACK with MQTT 5 per-filter results (0x00 success, 0x11 no subscription
    /// existed, 0x8F invalid filter) and a reason string for the errors.
    UnsubAck(u16, Vec<u8>, Option<ReasonString>),
    /// PINGRESP.
    PingResp,
    /// MQTT 5 DISCONNECT with a reason code and reason string (never sent to 3.x
    /// clients).
    Disconnect(u8, Option<ReasonString>),
}
