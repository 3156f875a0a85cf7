//! Retention: deletes raw telemetry beyond `[store.retention]` (age, size) every
//! `interval`, until stopped. Rollups are kept.

use std::sync::Arc;

use telehub_store::{RetentionConfig, TelemetryStore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::timestamp;

/// Enforces `config` every `config.interval` until `stop`. Does nothing when neither a
/// maximum age nor a maximum size is set.
pub async fn run<S: TelemetryStore>(store: Arc<S>, config: RetentionConfig, stop: CancellationToken) {
    let policy = config.policy();
    if policy.max_age.is_none() && policy.max_bytes.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(config.interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.enforce_retention(policy, timestamp::now()).await {
            Ok(report) => debug!(points_deleted = report.points_deleted, "retention enforced"),
            Err(e) => warn!(error = %e, "retention failed; retrying at the next interval"),
        }
    }
}
