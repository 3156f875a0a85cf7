//! `POST /hooks/{name}`: inbound webhooks from other systems (`[[webhooks.inbound]]`). No
//! token: the Standard Webhooks signature with the hook's secret is the credential.
//! The body is published to the hook's topic (QoS 1) as the hub, so devices subscribed
//! to it receive it, and telemetry ingest sees it as any message.
//!
//! Answers: 200 `{"topic", "subscribers"}`; 404 unknown hook; 401 missing or bad
//! signature; 400 timestamp outside the window, a `webhook-id` already received within
//! it, or a topic template the body cannot fill. A refused request publishes nothing.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use telehub_hub::webhooks::InboundError;
use telehub_hub::webhooks::inbound::Headers;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Body, PathParams};
use crate::webhooks::{HooksSlot, hooks};

pub(crate) async fn post<S: Send + Sync>(
    State(_): State<AppState<S>>,
    Extension(slot): Extension<HooksSlot>,
    PathParams(name): PathParams<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let h = hooks(&slot)?;
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let signed = Headers {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
    };
    let now = telehub_hub::timestamp::now().0.div_euclid(1000);
    let message = h.inbound.accept(&name, signed, body.bytes, now).map_err(|e| {
        tracing::debug!(hook = name, error = %e, "inbound webhook refused");
        match e {
            InboundError::Unknown(_) => ApiError::NotFound(e.to_string()),
            InboundError::Unauthorized(_) => ApiError::Unauthorized(e.to_string()),
            InboundError::Stale(_) | InboundError::Replayed(_) | InboundError::BadTopic(_) => {
                ApiError::BadRequest(e.to_string())
            }
            InboundError::Busy => ApiError::RateLimited { retry_after: std::time::Duration::from_secs(1) },
        }
    })?;
    let topic = message.topic.as_str().to_owned();
    let subscribers = h.control.publish(message).await;
    tracing::debug!(hook = name, topic, subscribers, "inbound webhook published");
    Ok(Json(serde_json::json!({ "topic": topic, "subscribers": subscribers })))
}
