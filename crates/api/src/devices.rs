//! `/api/v1/devices`: the device registry, merged with what the store knows of every
//! device that has sent telemetry.
//!
//! * `POST /api/v1/devices` (`{"id", "name"?, "tags"?, "allowed_ips"?}`) → 201 with
//!   `Location`;
//! * `GET /api/v1/devices`: registered devices and devices that sent telemetry, by id;
//!   filters `tag=k:v` (repeatable: all must match), `connected=true|false`,
//!   `seen_since=<RFC 3339 or Unix ms>`;
//! * `GET`, `PATCH` (`{"name"?, "tags"?, "allowed_ips"?}`), `DELETE` (204)
//!   `/api/v1/devices/{id}`; deleting also revokes its credentials and drops its
//!   connections, and its telemetry stays until retention;
//! * `GET /api/v1/devices/export`, `POST /api/v1/devices/import`: the registry's own
//!   document (devices, credential verifiers, ACL rules; times in Unix ms, so an export
//!   imports unchanged);
//! * `GET /api/v1/devices/{id}/latest`: its latest value per metric and latest document.
//!
//! A device answers as `id`, `name`, `tags`, `allowed_ips`, `registered` (in the
//! registry, or only known from its telemetry), `connected`, `created_at`,
//! `updated_at`, `first_seen`, `last_seen` (RFC 3339) and `metrics`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use telehub_core::DeviceId;
use telehub_hub::registry::{DeviceFilter, DevicePatch, DeviceView, Export, ImportSummary, NewDevice};
use telehub_hub::timestamp::{self, to_rfc3339};
use telehub_store::{DeviceSummary, RegistryStore, TelemetryStore, Timestamp};

use crate::AppState;
use crate::auth::AdminCall;
use crate::error::ApiError;
use crate::extract::{Body, DevicePath, Params, json, path_segment};

#[derive(Serialize)]
pub(crate) struct DeviceList {
    devices: Vec<DeviceBody>,
}

/// A device as the API answers it.
#[derive(Serialize)]
pub(crate) struct DeviceBody {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    tags: BTreeMap<String, String>,
    allowed_ips: Vec<String>,
    /// In the registry (else only known from its telemetry).
    registered: bool,
    connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
    /// Arrival of its first telemetry.
    #[serde(skip_serializing_if = "Option::is_none")]
    first_seen: Option<String>,
    /// The later of its last telemetry and its last connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<String>,
    /// Every metric it has sent, sorted.
    metrics: Vec<String>,
    /// For filtering; not answered.
    #[serde(skip)]
    last_seen_ms: Option<i64>,
}

/// What the store knows of a device.
struct Stored {
    id: DeviceId,
    /// Unknown when only its latest values were read.
    first_seen: Option<Timestamp>,
    last_seen: Timestamp,
    metrics: Vec<String>,
}

impl From<DeviceSummary> for Stored {
    fn from(s: DeviceSummary) -> Self {
        Self {
            id: s.id,
            first_seen: Some(s.first_seen),
            last_seen: s.last_seen,
            metrics: s.metrics.into_iter().map(|m| m.0).collect(),
        }
    }
}

impl DeviceBody {
    /// The registry's view and the store's knowledge of one device; `None` when neither
    /// knows it.
    fn new(view: Option<DeviceView>, stored: Option<Stored>) -> Option<Self> {
        let id = match (&view, &stored) {
            (Some(v), _) => v.device.id.as_str().to_owned(),
            (None, Some(s)) => s.id.as_str().to_owned(),
            (None, None) => return None,
        };
        let last_seen_ms =
            view.as_ref().and_then(|v| v.last_seen).max(stored.as_ref().map(|s| s.last_seen.0));
        let (first_seen, metrics) = match stored {
            Some(s) => (s.first_seen.map(to_rfc3339), s.metrics),
            None => (None, Vec::new()),
        };
        let ts = |ms: i64| to_rfc3339(Timestamp(ms));
        Some(match view {
            Some(v) => Self {
                id,
                name: v.device.name,
                tags: v.device.tags,
                allowed_ips: v.device.allowed_ips.iter().map(ToString::to_string).collect(),
                registered: true,
                connected: v.connected,
                created_at: Some(ts(v.device.created_at)),
                updated_at: Some(ts(v.device.updated_at)),
                first_seen,
                last_seen: last_seen_ms.map(ts),
                metrics,
                last_seen_ms,
            },
            None => Self {
                id,
                name: None,
                tags: BTreeMap::new(),
                allowed_ips: Vec::new(),
                registered: false,
                connected: false,
                created_at: None,
                updated_at: None,
                first_seen,
                last_seen: last_seen_ms.map(ts),
                metrics,
                last_seen_ms,
            },
        })
    }
}

pub(crate) async fn list<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    Params(params): Params<Vec<(String, String)>>,
) -> Result<Json<DeviceList>, ApiError> {
    let filter = list_filter(&params)?;
    let seen_since = filter.seen_since;
    // the registry filters by tags and connection; `seen_since` applies to the merged
    // last-seen time below
    let registered = state.registry.devices(&DeviceFilter { seen_since: None, ..filter.clone() });
    let mut stored: BTreeMap<String, DeviceSummary> =
        state.store.devices().await?.into_iter().map(|d| (d.id.as_str().to_owned(), d)).collect();
    let mut devices: BTreeMap<String, DeviceBody> = BTreeMap::new();
    for view in registered {
        let summary = stored.remove(view.device.id.as_str()).map(Stored::from);
        if let Some(body) = DeviceBody::new(Some(view), summary) {
            devices.insert(body.id.clone(), body);
        }
    }
    // devices known only from their telemetry have no tags and no connection here
    if filter.tags.is_empty() && filter.connected != Some(true) {
        for summary in stored.into_values() {
            if let Some(body) = DeviceBody::new(None, Some(summary.into())) {
                devices.insert(body.id.clone(), body);
            }
        }
    }
    let devices = devices
        .into_values()
        .filter(|d| seen_since.is_none_or(|since| d.last_seen_ms.is_some_and(|seen| seen >= since)))
        .collect();
    Ok(Json(DeviceList { devices }))
}

/// `tag=k:v` (repeatable), `connected`, `seen_since`.
fn list_filter(params: &[(String, String)]) -> Result<DeviceFilter, ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    let mut filter = DeviceFilter::default();
    for (key, value) in params {
        match key.as_str() {
            "tag" => {
                let Some((k, v)) = value.split_once(':') else {
                    return Err(bad(format!("`tag`: expected key:value, not {value:?}")));
                };
                if filter.tags.insert(k.to_owned(), v.to_owned()).is_some_and(|old| old != v) {
                    return Err(bad(format!("`tag`: {k} is given two different values")));
                }
            }
            "connected" => {
                filter.connected = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad(format!("`connected`: expected true or false, not {value:?}"))),
                });
            }
            "seen_since" => {
                let ts = timestamp::parse(value).map_err(|e| bad(format!("`seen_since`: {e}")))?;
                filter.seen_since = Some(ts.0);
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter `{other}` (expected tag, connected, seen_since)"
                )));
            }
        }
    }
    Ok(filter)
}

/// `201 Created` with `Location` and `body`.
pub(crate) fn created(location: &str, body: impl Serialize) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

pub(crate) async fn create<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: AdminCall,
    body: Body,
) -> Result<Response, ApiError> {
    let new: NewDevice = json(&body)?;
    let view = state.registry.create_device(&caller.actor, new).await?;
    let location = format!("/api/v1/devices/{}", path_segment(view.device.id.as_str()));
    let body = DeviceBody::new(Some(view), None).expect("a registered device");
    Ok(created(&location, body))
}

pub(crate) async fn get<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    DevicePath(id): DevicePath,
) -> Result<Json<DeviceBody>, ApiError> {
    let view = state.registry.device(&id);
    // what the store knows of it without listing every device: its latest values and
    // document (so no first_seen here)
    let stored = state.store.latest(&id).await?.and_then(|latest| {
        let last_value = latest.values.iter().map(|v| v.ts).max();
        let last_seen = latest.document.as_ref().map(|(at, _)| *at).or(last_value)?;
        let metrics = latest.values.into_iter().map(|v| v.metric.0).collect();
        Some(Stored { id: id.clone(), first_seen: None, last_seen, metrics })
    });
    DeviceBody::new(view, stored).map(Json).ok_or_else(|| ApiError::NotFound(format!("no device {id}")))
}

pub(crate) async fn update<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: AdminCall,
    DevicePath(id): DevicePath,
    body: Body,
) -> Result<Json<DeviceBody>, ApiError> {
    let patch: DevicePatch = json(&body)?;
    let view = state.registry.update_device(&caller.actor, &id, patch).await?;
    Ok(Json(DeviceBody::new(Some(view), None).expect("a registered device")))
}

pub(crate) async fn delete<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: AdminCall,
    DevicePath(id): DevicePath,
) -> Result<StatusCode, ApiError> {
    state.registry.delete_device(&caller.actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn export<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
) -> Json<Export> {
    Json(state.registry.export())
}

pub(crate) async fn import<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: AdminCall,
    body: Body,
) -> Result<Json<ImportSummary>, ApiError> {
    let export: Export = json(&body)?;
    Ok(Json(state.registry.import(&caller.actor, export).await?))
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
