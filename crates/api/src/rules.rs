//! `/api/v1/rules` and `/api/v1/alerts` (`telehub_hub::rules::Rules`):
//!
//! * `POST /api/v1/rules` with a rule as JSON (the fields of a `[[rules]]` table) → 201
//!   with the rule and `Location`; 409 when the name is taken;
//! * `GET /api/v1/rules` → `{"rules": [...], "service": {counters}}`; `GET …/{name}`: each
//!   rule with `source` (`config` or `api`) and `stats` (evaluations, firings, errors,
//!   skipped, last firing, last error, recent firings);
//! * `PUT /api/v1/rules/{name}` replaces the rule, or creates it (201); the body's `name`
//!   may be left out; `DELETE` → 204;
//! * a rule from the config file is read-only here: `PUT` and `DELETE` answer 409;
//! * a rule that does not compile is a 400 problem whose `field` names the field
//!   (`condition`, `actions[0].topic`, …) and, for a CEL expression, `line` and `column`;
//! * `GET /api/v1/alerts` → `{"active": [...], "recently_cleared": [...]}`.
//!
//! Changes are written to the audit log (`rule.create`, `rule.update`, `rule.delete`).

use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use telehub_hub::registry::Actor;
use telehub_hub::rules::{RuleError, RuleSpec, Rules, RulesError};
use telehub_store::registry::AuditEvent;
use telehub_store::{RegistryStore, Store, TelemetryStore};

use crate::AppState;
use crate::auth::AdminCall;
use crate::devices::created;
use crate::error::ApiError;
use crate::extract::{Body, PathParams, json, path_segment};

/// Where the routes find the rules service: set once by
/// [`Server::rules`](crate::Server::rules) (503 until then).
pub(crate) type RulesSlot = Arc<OnceLock<Rules<Store>>>;

/// The rules service, from the request's extensions.
pub(crate) struct Service(Rules<Store>);

impl<S: Send + Sync> FromRequestParts<S> for Service {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<RulesSlot>()
            .and_then(|slot| slot.get())
            .map(|r| Self(r.clone()))
            .ok_or(ApiError::Unavailable(None))
    }
}

impl From<RulesError> for ApiError {
    fn from(e: RulesError) -> Self {
        match e {
            RulesError::Invalid(e) => invalid(&e),
            RulesError::NameMismatch { .. } => Self::BadBody(e.to_string()),
            RulesError::NotFound(_) => Self::NotFound(e.to_string()),
            RulesError::Exists(_) | RulesError::ReadOnly(_) => Self::Conflict(e.to_string()),
            RulesError::Config { .. } => Self::BadBody(e.to_string()),
            RulesError::Store(e) => Self::from(e),
        }
    }
}

/// A rule refused by the compiler: 400 naming the field, and the position of a CEL error.
fn invalid(e: &RuleError) -> ApiError {
    let field = match e {
        RuleError::InvalidName(_) | RuleError::Duplicate(_) | RuleError::NotFound(_) => "name".to_owned(),
        RuleError::Filter { .. } => "filter".to_owned(),
        RuleError::Expression { field, .. } => (*field).to_owned(),
        RuleError::Template { at, .. } => at.clone(),
        RuleError::Invalid { field, .. } => field.clone(),
    };
    ApiError::BadRule { detail: format!("invalid rule: {e}"), field, position: e.position() }
}

fn audit<S: RegistryStore>(state: &AppState<S>, actor: &Actor, action: &str, name: &str) {
    state.registry.audit(AuditEvent {
        ts: telehub_hub::timestamp::now(),
        actor: actor.id.clone(),
        action: action.to_owned(),
        target: format!("rule:{name}"),
        outcome: "ok".into(),
        remote: actor.remote.map(|r| r.to_string()),
        detail: Value::Null,
    });
}

fn location(name: &str) -> String {
    format!("/api/v1/rules/{}", path_segment(name))
}

pub(crate) async fn list(Service(rules): Service) -> Json<Value> {
    Json(json!({ "rules": rules.list(), "service": rules.stats() }))
}

pub(crate) async fn create<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    Service(rules): Service,
    caller: AdminCall,
    body: Body,
) -> Result<Response, ApiError> {
    let spec: RuleSpec = json(&body)?;
    let name = spec.name.clone();
    let view = rules.create(spec).await?;
    audit(&state, &caller.actor, "rule.create", &name);
    Ok(created(&location(&name), view))
}

pub(crate) async fn get(
    Service(rules): Service,
    PathParams(name): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    rules.get(&name).map(Json).ok_or_else(|| RulesError::NotFound(name).into())
}

pub(crate) async fn put<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    Service(rules): Service,
    caller: AdminCall,
    PathParams(name): PathParams<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let mut value: Value = json(&body)?;
    if let Value::Object(map) = &mut value {
        map.entry("name").or_insert_with(|| Value::String(name.clone()));
    }
    let spec: RuleSpec =
        serde_json::from_value(value).map_err(|e| ApiError::BadBody(format!("invalid body: {e}")))?;
    let (view, is_new) = rules.put(&name, spec).await?;
    audit(&state, &caller.actor, if is_new { "rule.create" } else { "rule.update" }, &name);
    Ok(if is_new { created(&location(&name), view) } else { Json(view).into_response() })
}

pub(crate) async fn delete<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    Service(rules): Service,
    caller: AdminCall,
    PathParams(name): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    rules.delete(&name).await?;
    audit(&state, &caller.actor, "rule.delete", &name);
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn alerts(Service(rules): Service) -> Json<Value> {
    Json(rules.alerts())
}
