//! [`IngestHook`]: how the hub sees every PUBLISH the broker accepts.

use std::sync::Arc;

use telehub_core::{ClientId, Message};

/// Receives every accepted PUBLISH (and every will that is published), after validation
/// and before routing. Implemented by the hub (telemetry ingest).
///
/// Called on the publishing client's connection task, so it must not block: hand the
/// message to a bounded queue and return.
pub trait IngestHook: Send + Sync + 'static {
    /// Offers one message. `publisher` is `None` for wills published by the broker.
    fn offer(&self, publisher: Option<&ClientId>, message: &Arc<Message>);
}
