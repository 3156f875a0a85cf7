//! `GET /api/v1/stream?topic=<filter>&topic=…&events=<name>,…`: live messages and hub
//! events, as Server-Sent Events, or over WebSocket when the request asks to upgrade
//! (`Upgrade: websocket`; JSON text frames).
//!
//! * A message is `{"topic", "payload" (JSON if it is JSON, else a string), "qos",
//!   "retain", "ts"}` (SSE event `message`); a hub event is its JSON with `"event":
//!   "device.connected"` etc. (SSE event named so). `events=*` is every hub event.
//! * Who may watch what: an admin token with `read` anything; a device (its token or
//!   JWT, as for HTTP ingest) only the topic filters it may subscribe to over MQTT (403
//!   naming the first it may not), and no hub events. `+` in a filter must be sent as
//!   `%2B`.
//! * Each stream has a bounded buffer (`webhooks.stream_buffer`): a client that falls
//!   further behind is disconnected and counted (`streams_dropped` in
//!   `GET /api/v1/webhooks/stats`); it may reconnect. Streams end at shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use telehub_broker::Authenticator as _;
use telehub_core::TopicFilter;
use telehub_hub::webhooks::{EVENT_NAMES, message_data};
use telehub_store::RegistryStore;
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::webhooks::{Hooks, HooksSlot, hooks};

/// What the client asked for.
struct Wanted {
    topics: Vec<TopicFilter>,
    events: Vec<String>,
}

impl Wanted {
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut topics = Vec::new();
        let mut events = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v =
                decode(v).ok_or_else(|| ApiError::BadRequest(format!("query parameter {k}: bad escape")))?;
            match k {
                "topic" => topics.push(
                    TopicFilter::new(v.as_str())
                        .map_err(|e| ApiError::BadRequest(format!("topic filter {v:?}: {e}")))?,
                ),
                "events" => {
                    for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        if name != "*" && !EVENT_NAMES.contains(&name) {
                            return Err(ApiError::BadRequest(format!(
                                "unknown event {name:?}: expected {} or *",
                                EVENT_NAMES.join(", ")
                            )));
                        }
                        events.push(name.to_owned());
                    }
                }
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown query parameter {k:?}: expected topic, events"
                    )));
                }
            }
        }
        if topics.is_empty() && events.is_empty() {
            return Err(ApiError::BadRequest("ask for at least one topic=<filter> or events=<names>".into()));
        }
        Ok(Self { topics, events })
    }

    fn wants_event(&self, name: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == name)
    }
}

/// `%XX` decoded (a `+` stays a `+`: it is MQTT's wildcard).
fn decode(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One item for the client: the SSE event name and the JSON text.
type Item = (&'static str, String);

pub(crate) async fn stream<S: RegistryStore>(
    State(state): State<AppState<S>>,
    Extension(slot): Extension<HooksSlot>,
    Extension(caller): Extension<Caller>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let h = hooks(&slot)?;
    let wanted = Wanted::parse(request.uri().query().unwrap_or_default())?;
    match &caller {
        Caller::Admin(_) => {}
        Caller::Device(principal) => {
            if !wanted.events.is_empty() {
                return Err(ApiError::Forbidden("hub events are for admin tokens".into()));
            }
            if let Some(f) =
                wanted.topics.iter().find(|f| !state.registry.authorize_subscribe(principal, f.as_str()))
            {
                return Err(ApiError::Forbidden(format!("may not subscribe to {}", f.as_str())));
            }
        }
        Caller::Open => return Err(ApiError::Unauthorized("credentials are required".into())),
    }
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let rx = pump(h, wanted);
    if !upgrade {
        let events = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|(kind, json)| Ok::<_, Infallible>(Event::default().event(kind).data(json)));
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response());
    }
    let key = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::BadRequest("a WebSocket upgrade needs Sec-WebSocket-Key".into()))?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);
    let stop = h.stop.clone();
    h.tasks.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        websocket(ws, rx, stop).await;
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(response)
}

async fn websocket<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut ws: tokio_tungstenite::WebSocketStream<T>,
    mut rx: mpsc::Receiver<Item>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some((_, json)) => {
                    if ws.send(tungstenite::Message::text(json)).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            incoming = ws.next() => match incoming {
                Some(Ok(tungstenite::Message::Close(_)) | Err(_)) | None => return,
                // pings are answered by the library on the next write
                Some(Ok(_)) => {
                    let _ = ws.flush().await;
                }
            },
            () = stop.cancelled() => break,
        }
    }
    let _ = ws.close(None).await;
}

/// Starts the task feeding one stream: it filters the broadcasts into a bounded channel
/// and ends the stream (counted) when the client falls behind, at shutdown, or when the
/// client goes away.
fn pump(h: &Hooks, wanted: Wanted) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel::<Item>(h.stream_buffer);
    let mut messages = (!wanted.topics.is_empty()).then(|| h.messages.subscribe());
    let mut events = (!wanted.events.is_empty()).then(|| h.events.subscribe());
    let stats = Arc::clone(&h.stats);
    let stop = h.stop.clone();
    stats.streams_open.fetch_add(1, Ordering::Relaxed);
    h.tasks.spawn(async move {
        let slow = loop {
            let item: Item = tokio::select! {
                m = recv(&mut messages) => match m {
                    Ok(m) if wanted.topics.iter().any(|f| f.matches(&m.topic)) => {
                        ("message", message_data(&m, telehub_hub::timestamp::now()).to_string())
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => break true,
                    Err(broadcast::error::RecvError::Closed) => break false,
                },
                e = recv(&mut events) => match e {
                    Ok(e) if wanted.wants_event(e.name()) => {
                        let mut v = serde_json::to_value(&*e).unwrap_or_default();
                        v["event"] = e.name().into();
                        (e.name(), v.to_string())
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => break true,
                    Err(broadcast::error::RecvError::Closed) => break false,
                },
                () = tx.closed() => break false,
                () = stop.cancelled() => break false,
            };
            match tx.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => break true,
                Err(mpsc::error::TrySendError::Closed(_)) => break false,
            }
        };
        if slow && stats.streams_dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!("a live stream fell behind and was disconnected (counted in streams_dropped)");
        }
        stats.streams_open.fetch_sub(1, Ordering::Relaxed);
    });
    rx
}

/// The next item of an optional broadcast; never, when there is none.
async fn recv<T: Clone>(rx: &mut Option<broadcast::Receiver<T>>) -> Result<T, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_parsed_and_checked() {
        let w = Wanted::parse("topic=devices/%2B/telemetry&topic=a/+/b&events=device.connected,alert.raised")
            .unwrap();
        let t: Vec<&str> = w.topics.iter().map(TopicFilter::as_str).collect();
        assert_eq!(t, ["devices/+/telemetry", "a/+/b"]);
        assert!(w.wants_event("alert.raised") && !w.wants_event("alert.cleared"));
        assert!(Wanted::parse("events=*").unwrap().wants_event("alert.cleared"));
        for bad in ["", "topic=a/%23/b", "events=nope", "other=1", "topic=%zz"] {
            assert!(matches!(Wanted::parse(bad), Err(ApiError::BadRequest(_))), "{bad}");
        }
    }
}
