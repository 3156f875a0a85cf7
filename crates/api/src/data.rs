//! `POST /data`: the Flask tutorial's endpoint, unchanged for the devices that use it.
//! `{"device_id": "raspi-01", "temperature": 25.5, "humidity": 60.3}` → after the commit,
//! `200 {"status": "success"}`; a bad body → `400 {"error": "<what was wrong>"}` (and the
//! other errors in the same shape). The body is mapped like an MQTT `sensor/data` message:
//! `device_id` names the device, `ts` and `msg_id` are optional.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use telehub_hub::ingest::FieldRules;
use telehub_hub::ingest::mapping::{self, MapError};
use telehub_store::TelemetryStore;

use crate::AppState;
use crate::error::{ApiError, Tutorial};
use crate::extract::Body;

/// The payload field naming the device.
const DEVICE_FIELD: &str = "device_id";

pub(crate) async fn post<S: TelemetryStore>(
    State(state): State<AppState<S>>,
    body: Result<Body, ApiError>,
) -> Result<Json<Value>, Tutorial> {
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
    state.ingest.try_ingest(vec![record]).await.map_err(|e| Tutorial(e.into()))?;
    Ok(Json(json!({ "status": "success" })))
}
