//! [`ProtocolError`]: every way a client can break the protocol, and the one place that
//! maps each to its MQTT 5 reason code and Reason String.

use rmqtt_codec::error::DecodeError;
use rmqtt_codec::v5::DisconnectReasonCode;

use crate::{ConnAckCode, ReasonString};

/// A packet or a sequence of packets that breaks the MQTT spec. The connection is closed
/// (after a DISCONNECT with [`ProtocolError::reason_code`] on MQTT 5, where the spec has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// [MQTT-3.1.0-1] the first packet on a connection must be CONNECT.
    #[error("first packet was not CONNECT")]
    FirstPacketNotConnect,
    /// [MQTT-3.1.0-2] a second CONNECT is a protocol violation.
    #[error("second CONNECT on one connection")]
    SecondConnect,
    /// The bytes do not form a valid packet (bad length, truncated, bad flags).
    #[error("malformed packet")]
    MalformedPacket,
    /// [MQTT-3.1.3-8] CONNECT with a zero-byte client id and no clean session/start; the
    /// codec refuses it, and the broker must answer with a CONNACK (3.x: 0x02 Identifier
    /// rejected, 5.0: 0x85) before closing rather than just close.
    #[error("zero-length client id without clean session")]
    ClientIdRejected,
    /// The protocol name or level in CONNECT is not MQTT 3.1, 3.1.1 or 5.0.
    #[error("unsupported protocol name or level")]
    UnsupportedProtocol,
    /// A packet is larger than the configured maximum.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Remaining length announced by the packet.
        size: u32,
        /// The configured maximum.
        max: u32,
    },
    /// [MQTT-1.5.3-1] strings must be well-formed UTF-8.
    #[error("invalid UTF-8 in a string field")]
    InvalidUtf8,
    /// [MQTT-1.5.4-2] (3.1.1: [MQTT-1.5.3-2]) a client id, user name, will topic, topic
    /// name or topic filter holds U+0000.
    #[error("U+0000 in a string field")]
    NullCharacter,
    /// [MQTT-3.3.4-6] a client's PUBLISH must not carry a Subscription Identifier.
    #[error("subscription identifier in a PUBLISH from a client")]
    SubscriptionIdFromClient,
    /// [MQTT-3.3.2-2] / [MQTT-4.7.3-1] the PUBLISH topic is empty or has wildcards.
    #[error("invalid topic name in PUBLISH")]
    InvalidTopicName,
    /// [MQTT-3.3.2.3.4] an MQTT 5 PUBLISH with a zero-length topic and no Topic Alias.
    #[error("empty topic without a topic alias")]
    EmptyTopicWithoutAlias,
    /// An MQTT 5 property other than User Property included twice in one packet or
    /// property block (e.g. [MQTT-3.3.2.3.2] Payload Format Indicator, [MQTT-3.1.2.11.2]
    /// Session Expiry Interval).
    #[error("property included twice")]
    DuplicateProperty,
    /// [MQTT-3.1.2-28] / §3.1.2.11.6: Request Problem Information or Request Response
    /// Information other than 0 or 1.
    #[error("request information property {id:#04x} must be 0 or 1, not {value}")]
    BadRequestFlag {
        /// The property identifier (0x17 or 0x19).
        id: u8,
        /// The value sent.
        value: u8,
    },
    /// A packet type a server never receives (CONNACK, SUBACK, ...).
    #[error("packet type not allowed from a client")]
    UnexpectedPacket,
    /// A PUBACK/PUBREC/PUBCOMP for a packet id we never sent, or in the wrong state.
    #[error("acknowledgement for unknown packet id")]
    UnknownPacketId,
    /// [MQTT-3.3.4-9] the client sent more unacknowledged QoS 1/2 PUBLISHes than our
    /// Receive Maximum allows.
    #[error("receive maximum exceeded")]
    ReceiveMaximumExceeded,
    /// [MQTT-3.3.2-9] an MQTT 5 topic alias that is 0 or above the Topic Alias Maximum
    /// we announced.
    #[error("topic alias {alias} is not in 1..={max}")]
    TopicAliasOutOfRange {
        /// The alias sent.
        alias: u16,
        /// Our Topic Alias Maximum.
        max: u16,
    },
    /// An MQTT 5 topic alias used with an empty topic before a PUBLISH defined it on
    /// this connection.
    #[error("topic alias {alias} is not defined")]
    TopicAliasUndefined {
        /// The alias sent.
        alias: u16,
    },
    /// [MQTT-3.8.3-4] No Local on a shared subscription.
    #[error("no local set on a shared subscription")]
    SharedNoLocal,
    /// No packet within 1.5 × the keep-alive interval ([MQTT-3.1.2-24]).
    #[error("keep-alive timeout")]
    KeepAliveTimeout,
}

impl ProtocolError {
    /// The MQTT 5 DISCONNECT reason code for this error.
    pub fn reason_code(self) -> DisconnectReasonCode {
        match self {
            Self::FirstPacketNotConnect | Self::SecondConnect | Self::UnexpectedPacket => {
                DisconnectReasonCode::ProtocolError
            }
            Self::UnknownPacketId
            | Self::SharedNoLocal
            | Self::DuplicateProperty
            | Self::BadRequestFlag { .. }
            | Self::EmptyTopicWithoutAlias
            | Self::SubscriptionIdFromClient => DisconnectReasonCode::ProtocolError,
            Self::MalformedPacket | Self::InvalidUtf8 | Self::NullCharacter => {
                DisconnectReasonCode::MalformedPacket
            }
            Self::UnsupportedProtocol => DisconnectReasonCode::ProtocolError,
            // raised by CONNECT: the first is answered with CONNACK, a second one is a
            // protocol error in any case
            Self::ClientIdRejected => DisconnectReasonCode::ProtocolError,
            Self::PacketTooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
            Self::InvalidTopicName => DisconnectReasonCode::TopicNameInvalid,
            Self::ReceiveMaximumExceeded => DisconnectReasonCode::ReceiveMaximumExceeded,
            Self::TopicAliasOutOfRange { .. } | Self::TopicAliasUndefined { .. } => {
                DisconnectReasonCode::TopicAliasInvalid
            }
            Self::KeepAliveTimeout => DisconnectReasonCode::KeepAliveTimeout,
        }
    }

    /// The CONNACK code refusing an MQTT 5 CONNECT that failed to decode this way: §3.1.4
    /// and §4.13 let the server send a CONNACK with a reason code of 0x80 or above before
    /// closing, once it knows the client speaks MQTT 5 ([MQTT-3.1.4-1]). The codes are
    /// those of [`ProtocolError::reason_code`] where CONNACK has them.
    pub fn connack_code(self) -> ConnAckCode {
        match self {
            Self::ClientIdRejected => ConnAckCode::ClientIdRejected,
            Self::UnsupportedProtocol => ConnAckCode::UnsupportedProtocol,
            Self::PacketTooLarge { .. } => ConnAckCode::PacketTooLarge,
            Self::InvalidTopicName => ConnAckCode::TopicNameInvalid,
            Self::MalformedPacket | Self::InvalidUtf8 | Self::NullCharacter => ConnAckCode::MalformedPacket,
            // the rest cannot come from a CONNECT (or from a first packet) but for
            // DuplicateProperty; all are Protocol Errors there
            Self::FirstPacketNotConnect
            | Self::SecondConnect
            | Self::DuplicateProperty
            | Self::BadRequestFlag { .. }
            | Self::EmptyTopicWithoutAlias
            | Self::SubscriptionIdFromClient
            | Self::UnexpectedPacket
            | Self::UnknownPacketId
            | Self::ReceiveMaximumExceeded
            | Self::TopicAliasOutOfRange { .. }
            | Self::TopicAliasUndefined { .. }
            | Self::SharedNoLocal
            | Self::KeepAliveTimeout => ConnAckCode::ProtocolError,
        }
    }

    /// The MQTT 5 Reason String sent with the DISCONNECT: the error's message, which
    /// names only what the client itself sent (sizes, aliases), never server state.
    pub fn reason_string(self) -> ReasonString {
        ReasonString::new(self.to_string())
    }
}

impl From<DecodeError> for ProtocolError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::InvalidProtocol | DecodeError::UnsupportedProtocolLevel => Self::UnsupportedProtocol,
            DecodeError::MaxSizeExceeded { size, max } => Self::PacketTooLarge { size, max },
            DecodeError::Utf8Error => Self::InvalidUtf8,
            DecodeError::InvalidTopicName => Self::InvalidTopicName,
            DecodeError::UnsupportedPacketType => Self::MalformedPacket,
            // kept apart from MalformedPacket: the broker answers it with a CONNACK
            DecodeError::InvalidClientId => Self::ClientIdRejected,
            DecodeError::InvalidLength
            | DecodeError::MalformedPacket
            | DecodeError::ConnectReservedFlagSet
            | DecodeError::InvalidConnectFlags
            | DecodeError::ConnAckReservedFlagSet
            | DecodeError::PacketIdRequired
            | DecodeError::InvalidTopicFilter
            | DecodeError::Io(_) => Self::MalformedPacket,
        }
    }
}
