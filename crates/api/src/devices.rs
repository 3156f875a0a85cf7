//! `GET /api/v1/devices` (every device that has sent something) and
//! `GET /api/v1/devices/{id}/latest` (its latest value per metric and latest document).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use telehub_hub::timestamp::to_rfc3339;
use telehub_store::TelemetryStore;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::DevicePath;

#[derive(Serialize)]
pub(crate) struct DeviceList {
    devices: Vec<DeviceItem>,
}

#[derive(Serialize)]
struct DeviceItem {
    id: String,
    first_seen: String,
    last_seen: String,
    metrics: Vec<String>,
}

pub(crate) async fn list<S: TelemetryStore>(
    State(state): State<AppState<S>>,
) -> Result<Json<DeviceList>, ApiError> {
    let devices = state.store.devices().await?;
    let devices = devices
        .into_iter()
        .map(|d| DeviceItem {
            id: d.id.as_str().to_owned(),
            first_seen: to_rfc3339(d.first_seen),
            last_seen: to_rfc3339(d.last_seen),
            metrics: d.metrics.into_iter().map(|m| m.0).collect(),
        })
        .collect();
    Ok(Json(DeviceList { devices }))
}

#[derive(Serialize)]
pub(crate) struct LatestBody {
    device: String,
    /// metric → its latest value
    values: BTreeMap<String, LatestItem>,
    /// The latest document as sent, and when it arrived.
    document: Option<serde_json::Value>,
    document_received_at: Option<String>,
}

#[derive(Serialize)]
struct LatestItem {
    ts: String,
    value: f64,
}

pub(crate) async fn latest<S: TelemetryStore>(
    State(state): State<AppState<S>>,
    DevicePath(device): DevicePath,
) -> Result<Json<LatestBody>, ApiError> {
    let Some(latest) = state.store.latest(&device).await? else {
        return Err(ApiError::UnknownDevice(device));
    };
    let values = latest
        .values
        .into_iter()
        .map(|v| (v.metric.0, LatestItem { ts: to_rfc3339(v.ts), value: v.value }))
        .collect();
    let (document_received_at, document) = match latest.document {
        Some((at, doc)) => (Some(to_rfc3339(at)), Some(doc)),
        None => (None, None),
    };
    Ok(Json(LatestBody { device: device.as_str().to_owned(), values, document, document_received_at }))
}
