//! [`IngestHook`]: how the hub sees every PUBLISH the broker accepts, and how it holds
//! the publisher's acknowledgement until the message is safely stored.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use telehub_core::{ClientId, Message};

/// Why the hub could not take a message. Answered to MQTT 5 publishers as a PUBACK /
/// PUBREC reason code; MQTT 3.x has no way to say it, so the connection is closed
/// without acknowledging and the client sends the message again after reconnecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The hub is over its limits (reason 0x97, Quota exceeded).
    #[error("ingest quota exceeded")]
    QuotaExceeded,
    /// The store failed (reason 0x80, Unspecified error).
    #[error("ingest unavailable")]
    Unavailable,
}

impl IngestError {
    /// The MQTT 5 PUBACK/PUBREC reason code.
    pub fn reason_code(self) -> u8 {
        match self {
            Self::QuotaExceeded => 0x97,
            Self::Unavailable => 0x80,
        }
    }

    /// The MQTT 5 Reason String with [`IngestError::reason_code`]: the error's message,
    /// which names no internal cause.
    pub fn reason_string(self) -> telehub_mqtt::ReasonString {
        telehub_mqtt::ReasonString::new(self.to_string())
    }
}

/// Resolves when the hub has durably taken the message (or failed to).
pub type IngestAck = Pin<Box<dyn Future<Output = Result<(), IngestError>> + Send + 'static>>;

/// Receives every accepted PUBLISH (and every will that is published), after validation
/// and before routing. Implemented by the hub (telemetry ingest).
///
/// Called on the publishing client's connection task, so it must not block: hand the
/// message on and return. Returning `Some(ack)` makes the broker hold the QoS 1/2
/// acknowledgement until `ack` resolves; acknowledgements still go out in the order the
/// PUBLISHes arrived ([MQTT-4.6.0-2]), and at most Receive Maximum of them wait at once,
/// after which the broker stops reading from that client (backpressure). The future
/// only observes: the hub must store the message whether or not it is polled (wills
/// and QoS 0 messages drop it).
pub trait IngestHook: Send + Sync + 'static {
    /// Offers one message. `publisher` is `None` for wills published by the broker.
    fn offer(&self, publisher: Option<&ClientId>, message: &Arc<Message>) -> Option<IngestAck>;
}
