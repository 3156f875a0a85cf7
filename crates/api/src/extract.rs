//! Request parts as telehub values, each refusing what is malformed with an [`ApiError`]
//! that names the problem: the body (within `max_body_bytes`), the device id in the path,
//! the query string.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use telehub_core::DeviceId;

use crate::AppState;
use crate::error::ApiError;

/// A request body no larger than `[http] max_body_bytes`.
pub(crate) struct Body {
    /// The bytes.
    pub(crate) bytes: Bytes,
    /// Sent as `application/x-ndjson` (or `application/ndjson`): one JSON value per line.
    pub(crate) is_ndjson: bool,
}

impl<S: Send + Sync> FromRequest<AppState<S>> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState<S>) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        let headers = req.headers();
        // refuse a declared oversize body before reading any of it
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::TooLarge { limit });
        }
        let is_ndjson = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
            let mime = ct.split(';').next().unwrap_or_default().trim();
            mime.eq_ignore_ascii_case("application/x-ndjson")
                || mime.eq_ignore_ascii_case("application/ndjson")
        });
        // the router's DefaultBodyLimit is the same limit, for bodies without a length
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge { limit }
            } else {
                ApiError::BadBody(format!("cannot read the body: {}", rejection.body_text()))
            }
        })?;
        Ok(Self { bytes, is_ndjson })
    }
}

/// The `{id}` of a device route, validated.
pub(crate) struct DevicePath(pub(crate) DeviceId);

impl<S: Send + Sync> FromRequestParts<S> for DevicePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("device id in the path: {}", e.body_text())))?;
        DeviceId::new(id.as_str())
            .map(Self)
            .map_err(|e| ApiError::BadRequest(format!("invalid device id {id:?}: {e}")))
    }
}

/// Query parameters as `T`; unknown or malformed ones are a 400 naming them.
pub(crate) struct Params<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Self(t))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// Path parameters as `T` (e.g. `(String, String)` for a device and a credential id).
pub(crate) struct PathParams<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| Self(t))
            .map_err(|e| ApiError::BadRequest(format!("in the path: {}", e.body_text())))
    }
}

/// A device id from a path parameter, validated.
pub(crate) fn device_id(id: &str) -> Result<DeviceId, ApiError> {
    DeviceId::new(id).map_err(|e| ApiError::BadRequest(format!("invalid device id {id:?}: {e}")))
}

/// The body as JSON of type `T`; a 400 saying what is wrong and where otherwise.
///
/// An `expires_at` field may be an RFC 3339 string or Unix milliseconds; it reaches `T`
/// as Unix milliseconds.
pub(crate) fn json<T: DeserializeOwned>(body: &Body) -> Result<T, ApiError> {
    if body.bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadBody("the body is empty: send a JSON object".into()));
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(&body.bytes).map_err(|e| ApiError::BadBody(format!("invalid JSON: {e}")))?;
    // serde would take a struct from an array of its fields too
    let found = match &value {
        serde_json::Value::Object(_) => None,
        serde_json::Value::Array(_) => Some("an array"),
        serde_json::Value::String(_) => Some("a string"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::Bool(_) => Some("a boolean"),
        serde_json::Value::Null => Some("null"),
    };
    if let Some(found) = found {
        return Err(ApiError::BadBody(format!("expected a JSON object, found {found}")));
    }
    if let Some(expires) = value.get_mut("expires_at").filter(|v| !v.is_null()) {
        let ts = telehub_hub::timestamp::from_json(expires)
            .map_err(|e| ApiError::BadBody(format!("`expires_at`: {e}")))?;
        *expires = serde_json::Value::from(ts.0);
    }
    serde_json::from_value(value).map_err(|e| ApiError::BadBody(format!("invalid body: {e}")))
}

/// `text` as one URL path segment: everything but unreserved characters
/// (RFC 3986) percent-encoded.
pub(crate) fn path_segment(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
