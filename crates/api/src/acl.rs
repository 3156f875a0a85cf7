//! `/api/v1/acl`: ACL rules beyond each device's own topics.
//!
//! * `POST` `{"effect": "allow"|"deny", "action": "publish"|"subscribe"|"all", "filter":
//!   "sensors/{device}/#", "device"?, "tags"?, "anonymous"?}` → 201 with `Location`;
//! * `GET`: the API's rules, then the config file's (ids `config-{n}`);
//! * `DELETE /api/v1/acl/{id}` → 204 (config-file rules change with the file: 400).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use telehub_hub::registry::{AclRule, AclRuleSpec};
use telehub_hub::timestamp::to_rfc3339;
use telehub_store::{RegistryStore, TelemetryStore, Timestamp};

use crate::AppState;
use crate::auth::AdminCall;
use crate::devices::created;
use crate::error::ApiError;
use crate::extract::{Body, PathParams, json, path_segment};

/// A rule as the API answers it.
#[derive(Serialize)]
pub(crate) struct RuleBody {
    id: String,
    #[serde(flatten)]
    spec: AclRuleSpec,
    /// Absent for the config file's rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
}

impl From<AclRule> for RuleBody {
    fn from(r: AclRule) -> Self {
        let created_at = (!r.id.starts_with("config-")).then(|| to_rfc3339(Timestamp(r.created_at)));
        Self { id: r.id, spec: r.spec, created_at }
    }
}

#[derive(Serialize)]
pub(crate) struct RuleList {
    rules: Vec<RuleBody>,
}

pub(crate) async fn create<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: AdminCall,
    body: Body,
) -> Result<Response, ApiError> {
    let spec: AclRuleSpec = json(&body)?;
    let rule = state.registry.create_rule(&caller.actor, spec).await?;
    let location = format!("/api/v1/acl/{}", path_segment(&rule.id));
    Ok(created(&location, RuleBody::from(rule)))
}

pub(crate) async fn list<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
) -> Json<RuleList> {
    Json(RuleList { rules: state.registry.rules().into_iter().map(Into::into).collect() })
}

pub(crate) async fn delete<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: AdminCall,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.delete_rule(&caller.actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
