//! `GET /healthz` (the process answers), `GET /readyz` (the store answers and the
//! ingest writer is not stalled), and the request log.

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};
use telehub_core::DeviceId;
use telehub_store::TelemetryStore;

use crate::AppState;
use crate::error::ApiError;

/// How long the store has to answer the readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(crate) async fn readyz<S: TelemetryStore>(
    State(state): State<AppState<S>>,
) -> Result<Json<Value>, ApiError> {
    if !state.ingest.is_healthy() {
        return Err(ApiError::Unavailable(None));
    }
    // the cheapest read of the trait: one indexed lookup of a device that need not exist
    let probe = DeviceId::new("telehub-readyz-probe").expect("a valid device id");
    match tokio::time::timeout(PROBE_TIMEOUT, state.store.latest(&probe)).await {
        Ok(Ok(_)) => Ok(Json(json!({ "status": "ready" }))),
        Ok(Err(e)) => Err(ApiError::Unavailable(Some(e.into()))),
        Err(_) => Err(ApiError::Unavailable(None)),
    }
}

/// The request log: one `debug` line per request (per-request events are not `info`).
pub(crate) async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        path,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "http request"
    );
    response
}
