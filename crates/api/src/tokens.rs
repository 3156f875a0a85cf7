//! `/api/v1/tokens`: admin API tokens; every route needs the `admin` scope.
//!
//! * `POST` `{"name", "scopes": ["read"|"write"|"admin", …], "expires_at"? (RFC 3339 or
//!   Unix ms)}` → 201 with `Location`; the answer's `token` is the secret, shown this
//!   once and stored only as a digest;
//! * `GET`: the tokens, never their secrets;
//! * `DELETE /api/v1/tokens/{id}` → 204; the token stops working at once.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use telehub_hub::registry::{Scope, TokenInfo};
use telehub_hub::timestamp::to_rfc3339;
use telehub_store::{RegistryStore, TelemetryStore, Timestamp};

use crate::AppState;
use crate::auth::AdminCall;
use crate::devices::created;
use crate::error::ApiError;
use crate::extract::{Body, PathParams, json, path_segment};

/// `POST /api/v1/tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    expires_at: Option<i64>,
}

/// A token as the API answers it.
#[derive(Serialize)]
pub(crate) struct TokenBody {
    id: String,
    name: String,
    scopes: Vec<Scope>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

impl From<TokenInfo> for TokenBody {
    fn from(t: TokenInfo) -> Self {
        let ts = |ms: i64| to_rfc3339(Timestamp(ms));
        Self {
            id: t.id,
            name: t.name,
            scopes: t.scopes,
            created_at: ts(t.created_at),
            expires_at: t.expires_at.map(ts),
        }
    }
}

#[derive(Serialize)]
struct Created {
    #[serde(flatten)]
    info: TokenBody,
    /// The secret, shown once.
    token: String,
}

#[derive(Serialize)]
pub(crate) struct TokenList {
    tokens: Vec<TokenBody>,
}

pub(crate) async fn create<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: AdminCall,
    body: Body,
) -> Result<Response, ApiError> {
    let new: NewToken = json(&body)?;
    let (info, token) =
        state.registry.create_token(&caller.actor, new.name, new.scopes, new.expires_at).await?;
    let location = format!("/api/v1/tokens/{}", path_segment(&info.id));
    Ok(created(&location, Created { info: info.into(), token }))
}

pub(crate) async fn list<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
) -> Json<TokenList> {
    Json(TokenList { tokens: state.registry.tokens().into_iter().map(Into::into).collect() })
}

pub(crate) async fn delete<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: AdminCall,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.delete_token(&caller.actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
