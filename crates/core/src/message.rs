//! What was published: a [`Message`] with its [`QoS`], retain flag and MQTT 5 properties.

use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;

use crate::TopicName;

/// MQTT quality of service. Ordered: `AtMostOnce < AtLeastOnce < ExactlyOnce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// QoS 0: fire and forget.
    AtMostOnce = 0,
    /// QoS 1: acknowledged with PUBACK, may be delivered more than once.
    AtLeastOnce = 1,
    /// QoS 2: four-step handshake, delivered exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value, `None` for 3 and above.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// MQTT 5 publish properties that travel with a message from publisher to subscribers
/// unchanged ([MQTT-3.3.2-*]). Empty for MQTT 3.x publishers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Payload Format Indicator: the payload is UTF-8 text.
    pub is_utf8_payload: bool,
    /// Message Expiry Interval as set by the publisher.
    pub message_expiry: Option<Duration>,
    /// Content Type.
    pub content_type: Option<ByteString>,
    /// Response Topic for request/response.
    pub response_topic: Option<ByteString>,
    /// Correlation Data for request/response.
    pub correlation_data: Option<Bytes>,
    /// User Properties, in the order the publisher sent them.
    pub user_properties: Vec<(ByteString, ByteString)>,
}

impl MessageProperties {
    /// True when no property is set, so a delivery needs no property block.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// An application message as accepted from a publisher (or a will). Shared by every
/// delivery: the payload is one [`Bytes`] whatever the number of subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it was published.
    pub topic: TopicName,
    /// The application payload.
    pub payload: Bytes,
    /// The QoS the publisher used.
    pub qos: QoS,
    /// The publisher's RETAIN flag.
    pub retain: bool,
    /// MQTT 5 properties passed through to subscribers.
    pub properties: MessageProperties,
}
