//! `POST /data`: the Flask tutorial's endpoint, unchanged for the devices that use it.
//! `{"device_id": "raspi-01", "temperature": 25.5, "humidity": 60.3}` → after the commit,
//! `200 {"status": "success"}`; a bad body → `400 {"error": "<what was wrong>"}` (and the
//! other errors in the same shape). The body is mapped like an MQTT `sensor/data` message:
//! `device_id` names the device, `ts` and `msg_id` are optional.
//!
//! The caller is a device (its token or JWT, `X-API-Key`), an admin token with `write`,
//! or anonymous when `allow_anonymous`: see `auth`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use telehub_hub::ingest::FieldRules;
use telehub_hub::ingest::mapping::{self, MapError};
use telehub_store::{RegistryStore, TelemetryStore};

use crate::AppState;
use crate::auth::{IngestCall, count_by_device};
use crate::error::{ApiError, Tutorial};
use crate::extract::Body;

/// The payload field naming the device.
const DEVICE_FIELD: &str = "device_id";

pub(crate) async fn post<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: Result<IngestCall, ApiError>,
    body: Result<Body, ApiError>,
) -> Result<Json<Value>, Tutorial> {
    let caller = caller.map_err(Tutorial)?;
    let body = body.map_err(Tutorial)?;
    let bad = |e: MapError| Tutorial(ApiError::BadBody(e.to_string()));
    let object = mapping::parse_object(&body.bytes).map_err(bad)?;
    let device = mapping::device_from_field(&object, DEVICE_FIELD).map_err(bad)?;
    let record = mapping::record_from_object(
        device,
        object,
        &FieldRules::standard(),
        Some(DEVICE_FIELD),
        state.ingest.arrival(),
    )
    .map_err(bad)?;
    let records = vec![record];
    let devices = count_by_device(&records);
    caller.authorize(&state.registry, &devices).map_err(Tutorial)?;
    state.ingest.try_ingest(records).await.map_err(|e| Tutorial(e.into()))?;
    caller.seen(&state.registry, &devices);
    Ok(Json(json!({ "status": "success" })))
}
