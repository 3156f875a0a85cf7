//! `GET /healthz` (the process answers), `GET /readyz` (the store answers and the
//! ingest writer is not stalled), `GET /metrics` (Prometheus text format), and the
//! request log.

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use telehub_core::DeviceId;
use telehub_store::{RegistryStore, TelemetryStore};

use crate::AppState;
use crate::auth::Who;
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

/// `GET /metrics`: ingest and broker counters and limits in the Prometheus text format
/// (version 0.0.4). Every limit that can refuse or delay work is exported beside the
/// counter of what it refused.
pub(crate) async fn metrics<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
) -> impl IntoResponse {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    let i = state.ingest.stats();
    metric("telehub_ingest_records_total", "counter", "Telemetry records committed.", i.records);
    metric("telehub_ingest_points_total", "counter", "Telemetry points committed.", i.points);
    metric(
        "telehub_ingest_duplicates_total",
        "counter",
        "Records skipped as already stored (msg_id).",
        i.duplicates,
    );
    metric("telehub_ingest_batches_total", "counter", "Store writes committed.", i.batches);
    metric("telehub_ingest_write_errors_total", "counter", "Store writes that failed.", i.write_errors);
    metric(
        "telehub_ingest_refused_full_total",
        "counter",
        "Records refused: ingest queue full.",
        i.refused_full,
    );
    metric(
        "telehub_ingest_rejected_payloads_total",
        "counter",
        "Mapped messages with unusable payloads.",
        i.rejected_payloads,
    );
    metric("telehub_ingest_queued", "gauge", "Records waiting or being written.", i.queued);
    metric(
        "telehub_ingest_queue_capacity",
        "gauge",
        "Ingest queue limit, in records.",
        state.ingest.capacity() as u64,
    );
    metric(
        "telehub_audit_dropped_total",
        "counter",
        "Audit events dropped: audit queue full.",
        state.registry.audit_dropped(),
    );
    if let Some(b) = state.broker.get() {
        let b = b.snapshot();
        metric("telehub_mqtt_connections", "gauge", "MQTT clients connected.", b.connections_current);
        metric(
            "telehub_mqtt_connections_total",
            "counter",
            "MQTT connections accepted.",
            b.connections_total,
        );
        metric(
            "telehub_mqtt_messages_received_total",
            "counter",
            "PUBLISH packets accepted.",
            b.messages_received,
        );
        metric("telehub_mqtt_messages_sent_total", "counter", "PUBLISH packets sent.", b.messages_sent);
        metric(
            "telehub_mqtt_bytes_received_total",
            "counter",
            "Bytes read from MQTT clients.",
            b.bytes_received,
        );
        metric("telehub_mqtt_bytes_sent_total", "counter", "Bytes written to MQTT clients.", b.bytes_sent);
        metric(
            "telehub_mqtt_messages_dropped_total",
            "counter",
            "Deliveries dropped: session queue full.",
            b.messages_dropped,
        );
        metric(
            "telehub_mqtt_messages_quota_exceeded_total",
            "counter",
            "PUBLISH packets not routed: a queue limit was reached (0x97 Quota exceeded).",
            b.messages_quota_exceeded,
        );
        metric(
            "telehub_mqtt_queued_bytes",
            "gauge",
            "Payload bytes queued in every MQTT session together.",
            b.queued_bytes,
        );
        metric(
            "telehub_mqtt_messages_expired_total",
            "counter",
            "Queued deliveries expired.",
            b.messages_expired,
        );
        metric(
            "telehub_mqtt_protocol_errors_total",
            "counter",
            "Connections closed for protocol errors.",
            b.protocol_errors,
        );
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// The request log: one `debug` line per request (per-request events are not `info`),
/// naming the authenticated principal (`token:{id}`, `device:{id}`, `anonymous`, or `-`
/// on open routes) that `auth::guard` put in the response.
pub(crate) async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    let who = response.extensions().get::<Who>().map_or("-", |w| w.0.as_str());
    tracing::debug!(
        %method,
        path,
        who,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "http request"
    );
    response
}
