//! `/api/v1/devices/{id}/commands`: commands to a registered device
//! (`telehub_hub::commands`).
//!
//! * `POST` `{"payload": …, "mode": "fire_and_forget"|"queued"|"latest_wins" (default
//!   queued), "key"? (latest_wins), "ttl"? ("10m" or seconds), "topic"?}` → 201 with the
//!   command (`id`, `state`, …) and `Location`, answered after the command is committed;
//!   429 when the device's queue is full, 404 for an unknown device, 400 naming the field;
//! * `GET ?state=queued,sent&before=<seq>&limit=50`: newest first, `next_before` pages on;
//! * `GET …/commands/{cid}`; `DELETE …/commands/{cid}`: cancels an open command (409
//!   when it is past that);
//! * `GET …/commands/next?wait=30s`: the device's HTTP long-poll, with its own
//!   credentials: the oldest queued command, marked sent; 204 when none came within the
//!   wait;
//! * `POST …/commands/{cid}/ack` `{"status": "delivered"|"succeeded"|"failed"|"rejected",
//!   "result"?}`: the device's outcome, with its own credentials.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use telehub_core::DeviceId;
use telehub_hub::commands::{CommandMode, CommandQuery, CommandState, Commands, Request, view, wire};
use telehub_store::Store;

use crate::auth::IngestCall;
use crate::devices::created;
use crate::error::ApiError;
use crate::extract::{Body, DevicePath, Params, PathParams, device_id, json, path_segment};

/// Where the routes find the command service: set once by
/// [`Server::commands`](crate::Server::commands) (503 until then).
pub(crate) type CommandsSlot = Arc<OnceLock<Commands<Store>>>;

/// The command service, from the request's extensions.
pub(crate) struct Service(pub(crate) Commands<Store>);

impl<S: Send + Sync> FromRequestParts<S> for Service {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<CommandsSlot>()
            .and_then(|slot| slot.get())
            .map(|c| Self(c.clone()))
            .ok_or(ApiError::Unavailable(None))
    }
}

/// The body of `POST …/commands`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBody {
    payload: Value,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    ttl: Option<Value>,
    #[serde(default)]
    topic: Option<String>,
}

/// A duration as `"10m"` or a number of seconds.
fn duration(field: &str, value: &Value) -> Result<Duration, ApiError> {
    match value {
        Value::String(text) => {
            telehub_core::duration::parse(text).map_err(|e| ApiError::BadBody(format!("`{field}`: {e}")))
        }
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e12)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| ApiError::BadBody(format!("`{field}`: a number of seconds, at least 0"))),
        _ => Err(ApiError::BadBody(format!("`{field}`: a duration such as \"10m\" or a number of seconds"))),
    }
}

fn location(device: &DeviceId, id: &str) -> String {
    format!("/api/v1/devices/{}/commands/{}", path_segment(device.as_str()), path_segment(id))
}

pub(crate) async fn create(
    Service(commands): Service,
    DevicePath(device): DevicePath,
    body: Body,
) -> Result<Response, ApiError> {
    let new: NewBody = json(&body)?;
    let mode = match new.mode.as_deref() {
        None => CommandMode::Queued,
        Some(name) => CommandMode::parse(name).ok_or_else(|| {
            ApiError::BadBody(format!("`mode`: {name:?} is not one of fire_and_forget, queued, latest_wins"))
        })?,
    };
    let ttl = new.ttl.as_ref().filter(|v| !v.is_null()).map(|v| duration("ttl", v)).transpose()?;
    let req = Request { payload: new.payload, mode, key: new.key, ttl, topic: new.topic };
    let cmd = commands.create(&device, req).await?;
    Ok(created(&location(&device, &cmd.id), view(&cmd)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    limit: Option<usize>,
}

/// Page size of a command list without `limit`, and the most it may ask for.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

pub(crate) async fn list(
    Service(commands): Service,
    DevicePath(device): DevicePath,
    Params(params): Params<ListParams>,
) -> Result<Json<Value>, ApiError> {
    commands.check_device(&device)?;
    let mut states = Vec::new();
    for name in params.state.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        let state = CommandState::parse(name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`state`: {name:?} is not one of queued, sent, delivered, succeeded, failed, rejected, expired, \
                 cancelled"
            ))
        })?;
        states.push(state);
    }
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!("`limit`: from 1 to {MAX_LIMIT}")));
    }
    let page = commands.list(CommandQuery { device, states, before_seq: params.before, limit }).await?;
    let next = (page.len() == limit).then(|| page.last().map(|c| c.seq)).flatten();
    let items: Vec<Value> = page.iter().map(view).collect();
    Ok(Json(serde_json::json!({ "commands": items, "next_before": next })))
}

pub(crate) async fn get(
    Service(commands): Service,
    PathParams((device, id)): PathParams<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let device = device_id(&device)?;
    commands.check_device(&device)?;
    Ok(Json(view(&commands.get(&device, &id).await?)))
}

pub(crate) async fn cancel(
    Service(commands): Service,
    PathParams((device, id)): PathParams<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let device = device_id(&device)?;
    commands.check_device(&device)?;
    Ok(Json(view(&commands.cancel(&device, &id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NextParams {
    #[serde(default)]
    wait: Option<String>,
}

/// The wait of a long-poll without `wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

pub(crate) async fn next(
    Service(commands): Service,
    call: IngestCall,
    DevicePath(device): DevicePath,
    Params(params): Params<NextParams>,
) -> Result<Response, ApiError> {
    call.permit_device(&device)?;
    let wait = match &params.wait {
        None => DEFAULT_WAIT,
        Some(text) => {
            telehub_core::duration::parse(text).map_err(|e| ApiError::BadRequest(format!("`wait`: {e}")))?
        }
    };
    Ok(match commands.next(&device, wait).await? {
        Some(cmd) => Json(view(&cmd)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    status: String,
    #[serde(default)]
    result: Option<Value>,
}

pub(crate) async fn ack(
    Service(commands): Service,
    call: IngestCall,
    PathParams((device, id)): PathParams<(String, String)>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let device = device_id(&device)?;
    call.permit_device(&device)?;
    commands.check_device(&device)?;
    let ack: AckBody = json(&body)?;
    let status = wire::ack_state(&ack.status).ok_or_else(|| {
        ApiError::BadBody(format!(
            "`status`: {:?} is not one of delivered, succeeded, failed, rejected",
            ack.status
        ))
    })?;
    Ok(Json(view(&commands.ack(&device, &id, status, ack.result).await?)))
}
