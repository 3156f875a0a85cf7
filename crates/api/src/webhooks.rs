//! `/api/v1/webhooks`: outbound webhook endpoints and their deliveries, and [`Hooks`],
//! what the webhook and live-stream routes share (given to the server by
//! `Server::hooks` once the broker is bound).
//!
//! * `POST` `{"url", "events"?: [names], "topics"?: [MQTT filters], "topic"?, "secret"?,
//!   "enabled"?}` → 201; `new_secrets` holds the secret (given or generated), shown once;
//! * `GET` (list), `GET /{id}`: secrets as hints (`whsec_abcd…`), the breaker's state;
//! * `PATCH /{id}` `{"url"?, "events"?, "topics"?, "enabled"?, "rotate"?: true,
//!   "add_secret"?, "remove_secret"?: secret or hint}`: rotation adds a second secret
//!   (both sign every delivery), then removes the old one;
//! * `DELETE /{id}` → 204;
//! * `GET /{id}/deliveries?status=pending|delivered|dead&before=<seq>&limit=<n>`, newest
//!   first;
//! * `POST /{id}/deliveries/replay` `{"ids"?: [...]}` (none: every dead delivery) →
//!   `{"replayed": n}`;
//! * `GET /api/v1/webhooks/stats`: the counters.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use telehub_core::Message;
use telehub_hub::events::Events;
use telehub_hub::timestamp::to_rfc3339;
use telehub_hub::webhooks::{
    EndpointPatch, EndpointView, Inbound, NewEndpoint, Stats, WebhookError, Webhooks,
};
use telehub_store::outbox::{OutboxEntry, OutboxStatus, Replay};
use telehub_store::{OutboxStore, RegistryStore};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::AppState;
use crate::auth::AdminCall;
use crate::devices::created;
use crate::error::ApiError;
use crate::extract::{Body, Params, PathParams, json, path_segment};

type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, WebhookError>> + Send + 'a>>;

/// The endpoint operations, whatever the store.
pub(crate) trait Admin: Send + Sync {
    fn create(&self, new: NewEndpoint) -> Fut<'_, EndpointView>;
    fn list(&self) -> Vec<EndpointView>;
    fn get(&self, id: &str) -> Result<EndpointView, WebhookError>;
    fn update<'a>(&'a self, id: &'a str, patch: EndpointPatch) -> Fut<'a, EndpointView>;
    fn delete<'a>(&'a self, id: &'a str) -> Fut<'a, ()>;
    fn deliveries<'a>(
        &'a self,
        id: &'a str,
        status: Option<OutboxStatus>,
        before: Option<i64>,
        limit: usize,
    ) -> Fut<'a, Vec<OutboxEntry>>;
    fn replay<'a>(&'a self, id: &'a str, which: Replay) -> Fut<'a, u64>;
}

impl<S: RegistryStore + OutboxStore> Admin for Webhooks<S> {
    fn create(&self, new: NewEndpoint) -> Fut<'_, EndpointView> {
        Box::pin(Webhooks::create(self, new))
    }
    fn list(&self) -> Vec<EndpointView> {
        Webhooks::list(self)
    }
    fn get(&self, id: &str) -> Result<EndpointView, WebhookError> {
        Webhooks::get(self, id)
    }
    fn update<'a>(&'a self, id: &'a str, patch: EndpointPatch) -> Fut<'a, EndpointView> {
        Box::pin(Webhooks::update(self, id, patch))
    }
    fn delete<'a>(&'a self, id: &'a str) -> Fut<'a, ()> {
        Box::pin(Webhooks::delete(self, id))
    }
    fn deliveries<'a>(
        &'a self,
        id: &'a str,
        status: Option<OutboxStatus>,
        before: Option<i64>,
        limit: usize,
    ) -> Fut<'a, Vec<OutboxEntry>> {
        Box::pin(Webhooks::deliveries(self, id, status, before, limit))
    }
    fn replay<'a>(&'a self, id: &'a str, which: Replay) -> Fut<'a, u64> {
        Box::pin(Webhooks::replay(self, id, which))
    }
}

/// What the webhook, inbound-hook and stream routes use.
pub struct Hooks {
    pub(crate) admin: Arc<dyn Admin>,
    pub(crate) inbound: Arc<Inbound>,
    pub(crate) control: telehub_broker::Control,
    pub(crate) messages: broadcast::Sender<Arc<Message>>,
    pub(crate) events: Events,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stream_buffer: usize,
    /// Cancelled at shutdown: open streams end.
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

impl Hooks {
    /// The routes' dependencies: the endpoints, the inbound hooks, the broker's control
    /// (to publish what inbound hooks receive), the broadcast of accepted messages and
    /// hub events (for streams), and `stop`, which ends open streams.
    pub fn new<S: RegistryStore + OutboxStore>(
        webhooks: Webhooks<S>,
        inbound: Inbound,
        control: telehub_broker::Control,
        messages: broadcast::Sender<Arc<Message>>,
        events: Events,
        stop: CancellationToken,
    ) -> Self {
        let stats = webhooks.stats();
        let stream_buffer = webhooks.config().stream_buffer.max(1);
        Self {
            admin: Arc::new(webhooks),
            inbound: Arc::new(inbound),
            control,
            messages,
            events,
            stats,
            stream_buffer,
            stop,
            tasks: TaskTracker::new(),
        }
    }
}

/// The shared slot the server fills with [`Hooks`].
pub(crate) type HooksSlot = Arc<OnceLock<Hooks>>;

/// The hooks, or 503 until the server has them.
pub(crate) fn hooks(slot: &HooksSlot) -> Result<&Hooks, ApiError> {
    slot.get().ok_or(ApiError::Unavailable(None))
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::NotFound(id) => Self::NotFound(format!("no webhook {id}")),
            WebhookError::Invalid(m) => Self::BadBody(m),
            WebhookError::Conflict(m) => Self::Conflict(m),
            WebhookError::Store(e) => e.into(),
        }
    }
}

pub(crate) async fn create<S: Send + Sync>(
    State(_): State<AppState<S>>,
    Extension(slot): Extension<HooksSlot>,
    caller: AdminCall,
    body: Body,
) -> Result<Response, ApiError> {
    let h = hooks(&slot)?;
    let view = h.admin.create(json(&body)?).await?;
    tracing::info!(actor = caller.actor.id, id = view.id, "webhook created");
    Ok(created(&format!("/api/v1/webhooks/{}", path_segment(&view.id)), view))
}

pub(crate) async fn list(Extension(slot): Extension<HooksSlot>) -> Result<Json<Vec<EndpointView>>, ApiError> {
    Ok(Json(hooks(&slot)?.admin.list()))
}

pub(crate) async fn get(
    Extension(slot): Extension<HooksSlot>,
    PathParams(id): PathParams<String>,
) -> Result<Json<EndpointView>, ApiError> {
    Ok(Json(hooks(&slot)?.admin.get(&id)?))
}

pub(crate) async fn update<S: Send + Sync>(
    State(_): State<AppState<S>>,
    Extension(slot): Extension<HooksSlot>,
    PathParams(id): PathParams<String>,
    body: Body,
) -> Result<Json<EndpointView>, ApiError> {
    let h = hooks(&slot)?;
    Ok(Json(h.admin.update(&id, json(&body)?).await?))
}

pub(crate) async fn delete(
    Extension(slot): Extension<HooksSlot>,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    hooks(&slot)?.admin.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveryQuery {
    status: Option<String>,
    before: Option<i64>,
    limit: Option<usize>,
}

pub(crate) async fn deliveries(
    Extension(slot): Extension<HooksSlot>,
    PathParams(id): PathParams<String>,
    Params(q): Params<DeliveryQuery>,
) -> Result<Response, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("all") => None,
        Some(s) => Some(OutboxStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!("status {s:?}: expected pending, delivered, dead or all"))
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = hooks(&slot)?.admin.deliveries(&id, status, q.before, limit).await?;
    let next = (rows.len() == limit).then(|| rows.last().map(|r| r.seq)).flatten();
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "id": r.delivery.id,
                "seq": r.seq,
                "event_type": r.delivery.event_type,
                "status": r.status.as_str(),
                "attempts": r.attempts,
                "last_error": r.last_error,
                "created_at": to_rfc3339(r.delivery.created_at),
                "pending_since": to_rfc3339(r.pending_since),
                "next_attempt_at": (r.status == OutboxStatus::Pending).then(|| to_rfc3339(r.delivery.next_attempt_at)),
                "finished_at": r.finished_at.map(to_rfc3339),
                "payload": r.delivery.payload,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "deliveries": items, "next_before": next })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    ids: Option<Vec<String>>,
}

pub(crate) async fn replay<S: Send + Sync>(
    State(_): State<AppState<S>>,
    Extension(slot): Extension<HooksSlot>,
    PathParams(id): PathParams<String>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let which: ReplayBody =
        if body.bytes.iter().all(u8::is_ascii_whitespace) { ReplayBody::default() } else { json(&body)? };
    let which = match which.ids {
        Some(ids) => Replay::Ids(ids),
        None => Replay::AllDead,
    };
    let n = hooks(&slot)?.admin.replay(&id, which).await?;
    Ok(Json(serde_json::json!({ "replayed": n })))
}

pub(crate) async fn stats(
    Extension(slot): Extension<HooksSlot>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(hooks(&slot)?.stats.to_json()))
}
