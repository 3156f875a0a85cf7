//! `$SYS` topics: the broker's own counters, published as retained messages every
//! `sys_interval`, so `mosquitto_sub -t '$SYS/#'` shows them. Never matched by a
//! subscription to `#` ([MQTT-4.7.2-1]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use telehub_core::{Message, MessageProperties, QoS, TopicName};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Shared, sessions};

/// Publishes the `$SYS` tree every `interval` until `stop`.
pub(crate) async fn publish_loop(shared: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (topic, value) in snapshot(&shared, started.elapsed()) {
            let Ok(topic) = TopicName::new(format!("$SYS/broker/{topic}")) else { continue };
            let message = Arc::new(Message {
                topic,
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: MessageProperties::default(),
            });
            sessions::publish_internal(&shared, message).await;
        }
    }
}

fn snapshot(shared: &Shared, uptime: Duration) -> Vec<(&'static str, String)> {
    let s = shared.stats.snapshot();
    vec![
        ("version", format!("telehub {}", env!("CARGO_PKG_VERSION"))),
        ("uptime", format!("{} seconds", uptime.as_secs())),
        ("clients/connected", s.connections_current.to_string()),
        ("clients/total", shared.sessions.count().to_string()),
        ("connections/total", s.connections_total.to_string()),
        ("connections/refused", s.connections_refused.to_string()),
        ("connections/auth failures", s.auth_failures.to_string()),
        ("messages/received", s.messages_received.to_string()),
        ("messages/sent", s.messages_sent.to_string()),
        ("messages/dropped", s.messages_dropped.to_string()),
        ("messages/refused", s.messages_refused.to_string()),
        ("messages/expired", s.messages_expired.to_string()),
        ("messages/quota exceeded", s.messages_quota_exceeded.to_string()),
        ("messages/queued bytes", s.queued_bytes.to_string()),
        ("bytes/received", s.bytes_received.to_string()),
        ("bytes/sent", s.bytes_sent.to_string()),
        ("subscriptions/count", shared.router.subscription_count().to_string()),
        ("retained messages/count", shared.router.retained_count().to_string()),
    ]
}
