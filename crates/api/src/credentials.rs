//! `/api/v1/devices/{id}/credentials`: a device's credentials, several per device so keys
//! can be rotated without downtime.
//!
//! * `POST` `{"kind": "token"|"password"|"jwt_rs256"|"jwt_es256"|"x509", "name"?,
//!   "secret"? (password), "public_key"? (JWT kinds, PEM), "fingerprint"? (x509, SHA-256
//!   hex), "expires_at"? (RFC 3339 or Unix ms)}` → 201 with `Location`; for a `token`
//!   the answer's `token` is the generated secret, shown this once and never again;
//! * `GET`: the credentials, without secrets (a public key or fingerprint is shown);
//! * `DELETE …/credentials/{cid}` → 204; connections that used it are dropped.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use telehub_hub::registry::{CredentialInfo, CredentialKind, NewCredential};
use telehub_hub::timestamp::to_rfc3339;
use telehub_store::{RegistryStore, TelemetryStore, Timestamp};

use crate::AppState;
use crate::auth::AdminCall;
use crate::devices::created;
use crate::error::ApiError;
use crate::extract::{Body, DevicePath, PathParams, device_id, json, path_segment};

/// A credential as the API answers it.
#[derive(Serialize)]
pub(crate) struct CredentialBody {
    id: String,
    device: String,
    kind: CredentialKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// The public key (JWT kinds) or the fingerprint (x509).
    #[serde(skip_serializing_if = "Option::is_none")]
    public: Option<String>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_used_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

impl From<CredentialInfo> for CredentialBody {
    fn from(c: CredentialInfo) -> Self {
        let ts = |ms: i64| to_rfc3339(Timestamp(ms));
        Self {
            id: c.id,
            device: c.device.as_str().to_owned(),
            kind: c.kind,
            name: c.name,
            public: c.public,
            created_at: ts(c.created_at),
            last_used_at: c.last_used_at.map(ts),
            expires_at: c.expires_at.map(ts),
        }
    }
}

/// A new credential, with its generated token when it is one.
#[derive(Serialize)]
struct Created {
    #[serde(flatten)]
    credential: CredentialBody,
    /// The token, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct CredentialList {
    credentials: Vec<CredentialBody>,
}

pub(crate) async fn create<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: AdminCall,
    DevicePath(device): DevicePath,
    body: Body,
) -> Result<Response, ApiError> {
    let new: NewCredential = json(&body)?;
    let (info, token) = state.registry.create_credential(&caller.actor, &device, new).await?;
    let location =
        format!("/api/v1/devices/{}/credentials/{}", path_segment(device.as_str()), path_segment(&info.id));
    Ok(created(&location, Created { credential: info.into(), token }))
}

pub(crate) async fn list<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    DevicePath(device): DevicePath,
) -> Result<Json<CredentialList>, ApiError> {
    let credentials = state.registry.credentials(&device)?.into_iter().map(Into::into).collect();
    Ok(Json(CredentialList { credentials }))
}

pub(crate) async fn delete<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: AdminCall,
    PathParams((device, id)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let device = device_id(&device)?;
    state.registry.delete_credential(&caller.actor, &device, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
