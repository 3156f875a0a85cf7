//! [`Ingest`] as the broker's [`IngestHook`]: telemetry topics are queued for the store
//! and the publisher's QoS 1/2 acknowledgement waits for the commit.

use std::sync::Arc;

use telehub_broker::{IngestAck, IngestHook};
use telehub_core::{ClientId, Message};

use super::{Ingest, IngestError};

impl IngestHook for Ingest {
    fn offer(&self, _publisher: Option<&ClientId>, message: &Arc<Message>) -> Option<IngestAck> {
        let pending = self.offer_message(message)?;
        Some(Box::pin(async move {
            pending.await.map(|_| ()).map_err(|e| match e {
                // MQTT 5: PUBACK/PUBREC 0x97 (quota exceeded)
                IngestError::QueueFull { .. } | IngestError::TooLarge { .. } => {
                    telehub_broker::IngestError::QuotaExceeded
                }
                // MQTT 5: 0x80; MQTT 3.x: not acknowledged, so the client sends it again
                IngestError::Closed | IngestError::Store(_) => telehub_broker::IngestError::Unavailable,
            })
        }))
    }
}
