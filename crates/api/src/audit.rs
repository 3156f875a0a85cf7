//! `GET /api/v1/audit`: who changed what and which requests were refused, newest first.
//!
//! Parameters, all optional: `from`, `to` (RFC 3339 or Unix ms; `from` inclusive, `to`
//! exclusive), `action` (`device` matches `device.create`, `device.delete`…), `actor`
//! (`token:tk_…`, `device:{id}`, `anonymous`), `target` (`device:{id}`…), `limit`
//! (default 100, at most 1000), `before` (the `next` cursor of the previous page).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use telehub_hub::timestamp::{self, to_rfc3339};
use telehub_store::registry::{AuditQuery, AuditRow};
use telehub_store::{RegistryStore, TelemetryStore};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Params;

/// Events per page when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;
/// Most events per page.
const MAX_LIMIT: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryParams {
    from: Option<String>,
    to: Option<String>,
    action: Option<String>,
    actor: Option<String>,
    target: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct AuditPage {
    events: Vec<EventBody>,
    /// Pass as `before` for the next page; `null` on the last page.
    next: Option<String>,
}

#[derive(Serialize)]
struct EventBody {
    id: i64,
    ts: String,
    actor: String,
    action: String,
    target: String,
    outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote: Option<String>,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    detail: serde_json::Value,
}

impl From<AuditRow> for EventBody {
    fn from(row: AuditRow) -> Self {
        let e = row.event;
        Self {
            id: row.id,
            ts: to_rfc3339(e.ts),
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            remote: e.remote,
            detail: e.detail,
        }
    }
}

pub(crate) async fn query<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    Params(params): Params<QueryParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    let time = |name: &str, text: Option<&str>| {
        text.map(|t| timestamp::parse(t).map_err(|e| bad(format!("`{name}`: {e}")))).transpose()
    };
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad(format!(
                    "`limit`: expected a whole number from 1 to {MAX_LIMIT}, not {text:?}"
                )));
            }
        },
    };
    let before_id = params
        .before
        .as_deref()
        .map(|b| {
            b.parse::<i64>().map_err(|_| bad(format!("`before`: {b:?} is not a cursor this API returned")))
        })
        .transpose()?;
    let query = AuditQuery {
        from: time("from", params.from.as_deref())?,
        to: time("to", params.to.as_deref())?,
        action: params.action,
        actor: params.actor,
        target: params.target,
        before_id,
        limit,
    };
    let rows = state.registry.audit_query(query).await?;
    let next = (rows.len() == limit).then(|| rows.last().map(|r| r.id.to_string())).flatten();
    Ok(Json(AuditPage { events: rows.into_iter().map(Into::into).collect(), next }))
}
