//! `/api/v1/devices/{id}/state`: a registered device's state shadow
//! (`telehub_hub::shadow`).
//!
//! * `GET …/state` → `{"desired", "reported", "delta", "version", "timestamps":
//!   {"desired", "reported"}}` with `ETag: "<version>"`;
//! * `GET …/state/desired` → `{"desired", "version"}`;
//! * `PATCH …/state/desired` with a JSON merge patch of the desired document (`null`
//!   removes a key), or `PATCH …/state` with `{"desired": <patch>}`; `If-Match:
//!   <version>` makes it a compare-and-set (409 with the current version when stale);
//!   without `If-Match` the patch applies to whatever version is current. Answers the
//!   new state and `command`, the latest-wins `$state` command carrying the delta (none
//!   when the delta is empty).

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use telehub_hub::shadow;

use crate::commands::Service;
use crate::error::ApiError;
use crate::extract::{Body, DevicePath, json};

fn with_etag(body: Value, version: i64) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

pub(crate) async fn get(
    Service(commands): Service,
    DevicePath(device): DevicePath,
) -> Result<Response, ApiError> {
    let state = shadow::get(&commands, &device).await?;
    Ok(with_etag(state.to_json(), state.version))
}

pub(crate) async fn get_desired(
    Service(commands): Service,
    DevicePath(device): DevicePath,
) -> Result<Response, ApiError> {
    let state = shadow::get(&commands, &device).await?;
    Ok(with_etag(serde_json::json!({ "desired": state.desired, "version": state.version }), state.version))
}

/// `If-Match: 3`, `"3"` or `W/"3"`; `*` and no header: any version.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse::<i64>().map(Some).map_err(|_| {
        ApiError::BadRequest(format!(
            "`If-Match`: {text:?} is not a state version (a number, as in the ETag)"
        ))
    })
}

async fn patch(
    commands: &telehub_hub::commands::Commands<telehub_store::Store>,
    device: &telehub_core::DeviceId,
    patch: &Value,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let expected = if_match(headers)?;
    match shadow::set_desired(commands, device, patch, expected).await? {
        Ok(set) => {
            let mut body = set.state.to_json();
            body["command"] = set.command.unwrap_or(Value::Null);
            Ok(with_etag(body, set.state.version))
        }
        Err(conflict) => Err(ApiError::Conflict(format!(
            "the state is at version {}, not {}: read it again and retry",
            conflict.current_version,
            expected.unwrap_or_default()
        ))),
    }
}

pub(crate) async fn patch_desired(
    Service(commands): Service,
    DevicePath(device): DevicePath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let doc: Value = json(&body)?;
    patch(&commands, &device, &doc, &headers).await
}

pub(crate) async fn patch_state(
    Service(commands): Service,
    DevicePath(device): DevicePath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut doc: serde_json::Map<String, Value> = json(&body)?;
    let desired = doc.remove("desired").ok_or_else(|| {
        ApiError::BadBody("`desired` is required: {\"desired\": {…}} (reported comes from the device)".into())
    })?;
    if let Some(other) = doc.keys().next() {
        return Err(ApiError::BadBody(format!("`{other}`: only `desired` can be changed")));
    }
    if !desired.is_object() {
        return Err(ApiError::BadBody("`desired` must be a JSON object".into()));
    }
    patch(&commands, &device, &desired, &headers).await
}
