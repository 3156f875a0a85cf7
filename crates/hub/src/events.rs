//! What happens in the hub, for whoever listens (webhooks, live streams, rules):
//! [`Events`], a broadcast of [`HubEvent`]s, and [`Tap`], the broker's ingest hook that
//! also hands every accepted message to bounded feeds.
//!
//! Both are lossy for slow listeners by design, and count what they lose: a listener
//! that falls behind must not slow the broker down. Listeners that must not lose
//! anything (the webhook outbox) write what they take to the store before doing more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use telehub_broker::{IngestAck, IngestHook};
use telehub_core::{ClientId, Message};
use tokio::sync::{broadcast, mpsc};

/// One thing that happened, as webhooks and streams send it (`{"type": …, …}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HubEvent {
    /// A device's first connection opened.
    DeviceConnected {
        /// The device.
        device: String,
        /// When, Unix ms.
        at: i64,
    },
    /// A device's last connection closed.
    DeviceDisconnected {
        /// The device.
        device: String,
        /// When, Unix ms.
        at: i64,
    },
    /// A command changed state.
    CommandStateChanged {
        /// The command as the API shows it.
        command: serde_json::Value,
    },
    /// An alert was raised.
    AlertRaised {
        /// The alert as the API shows it.
        alert: serde_json::Value,
    },
    /// An alert was cleared.
    AlertCleared {
        /// The alert as the API shows it.
        alert: serde_json::Value,
    },
}

impl HubEvent {
    /// `device.connected`, `command.state_changed`, … (webhook event names).
    pub fn name(&self) -> &'static str {
        match self {
            Self::DeviceConnected { .. } => "device.connected",
            Self::DeviceDisconnected { .. } => "device.disconnected",
            Self::CommandStateChanged { .. } => "command.state_changed",
            Self::AlertRaised { .. } => "alert.raised",
            Self::AlertCleared { .. } => "alert.cleared",
        }
    }
}

/// The broadcast of hub events. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<HubEvent>>,
}

impl Events {
    /// A broadcast keeping up to `capacity` events for its slowest listener (one that
    /// falls further behind skips the oldest and is told how many it missed).
    pub fn new(capacity: usize) -> Self {
        Self { tx: broadcast::channel(capacity.max(1)).0 }
    }

    /// Sends `event` to every listener (nobody listening is fine).
    pub fn emit(&self, event: HubEvent) {
        let _ = self.tx.send(Arc::new(event));
    }

    /// A new listener, receiving the events emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HubEvent>> {
        self.tx.subscribe()
    }
}

/// One bounded feed of accepted messages.
struct Feed {
    name: &'static str,
    tx: mpsc::Sender<Arc<Message>>,
    dropped: AtomicU64,
}

/// The broker's ingest hook: telemetry ingest first (its acknowledgement is the one the
/// publisher waits for), then every feed, without waiting: a full feed drops the message
/// for that feed and counts it ([`Tap::dropped`]).
pub struct Tap<H> {
    ingest: H,
    feeds: Vec<Feed>,
    /// Broadcasts of every message (live streams): each listener keeps its own bounded
    /// backlog and learns how many it missed.
    broadcasts: Vec<broadcast::Sender<Arc<Message>>>,
}

impl<H: IngestHook> Tap<H> {
    /// A tap in front of `ingest`, with no feeds yet.
    pub fn new(ingest: H) -> Self {
        Self { ingest, feeds: Vec::new(), broadcasts: Vec::new() }
    }

    /// Adds a feed named `name` holding up to `capacity` messages; returns its receiver.
    pub fn feed(&mut self, name: &'static str, capacity: usize) -> mpsc::Receiver<Arc<Message>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.feeds.push(Feed { name, tx, dropped: AtomicU64::new(0) });
        rx
    }

    /// Adds a broadcast of every message, keeping up to `capacity` for its slowest
    /// listener (live streams subscribe to it; one that falls further behind is told how
    /// many it missed). Sending never waits.
    pub fn broadcast(&mut self, capacity: usize) -> broadcast::Sender<Arc<Message>> {
        let tx = broadcast::channel(capacity.max(1)).0;
        self.broadcasts.push(tx.clone());
        tx
    }

    /// Messages each feed dropped because it was full, by feed name.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        self.feeds.iter().map(|f| (f.name, f.dropped.load(Ordering::Relaxed))).collect()
    }
}

impl<H: IngestHook> IngestHook for Tap<H> {
    fn offer(&self, publisher: Option<&ClientId>, message: &Arc<Message>) -> Option<IngestAck> {
        let ack = self.ingest.offer(publisher, message);
        for feed in &self.feeds {
            if feed.tx.try_send(Arc::clone(message)).is_err()
                && feed.dropped.fetch_add(1, Ordering::Relaxed) == 0
            {
                tracing::warn!(
                    feed = feed.name,
                    "a message feed is full: messages are dropped for it (counted)"
                );
            }
        }
        for tx in &self.broadcasts {
            // nobody listening is fine
            let _ = tx.send(Arc::clone(message));
        }
        ack
    }
}

#[cfg(test)]
mod tests {
    use telehub_core::{QoS, TopicName};

    use super::*;

    struct Nothing;

    impl IngestHook for Nothing {
        fn offer(&self, _: Option<&ClientId>, _: &Arc<Message>) -> Option<IngestAck> {
            None
        }
    }

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic).unwrap(),
            payload: bytes::Bytes::from_static(b"{}"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        })
    }

    #[tokio::test]
    async fn every_feed_gets_every_message_until_it_is_full() {
        let mut tap = Tap::new(Nothing);
        let mut rules = tap.feed("rules", 2);
        let mut hooks = tap.feed("webhooks", 10);
        for t in ["a", "b", "c"] {
            assert!(tap.offer(None, &message(t)).is_none());
        }
        assert_eq!(rules.recv().await.unwrap().topic.as_str(), "a");
        assert_eq!(rules.recv().await.unwrap().topic.as_str(), "b");
        assert!(rules.try_recv().is_err(), "c was dropped for the full feed");
        for t in ["a", "b", "c"] {
            assert_eq!(hooks.recv().await.unwrap().topic.as_str(), t);
        }
        assert_eq!(tap.dropped(), [("rules", 1), ("webhooks", 0)]);
    }

    #[tokio::test]
    async fn a_broadcast_reaches_every_listener_and_tells_a_slow_one_what_it_missed() {
        let mut tap = Tap::new(Nothing);
        let tx = tap.broadcast(2);
        assert!(tap.offer(None, &message("nobody")).is_none(), "no listener yet: fine");
        let (mut fast, mut slow) = (tx.subscribe(), tx.subscribe());
        tap.offer(None, &message("a"));
        assert_eq!(fast.recv().await.unwrap().topic.as_str(), "a");
        tap.offer(None, &message("b"));
        tap.offer(None, &message("c"));
        assert_eq!(fast.recv().await.unwrap().topic.as_str(), "b");
        assert!(matches!(slow.recv().await, Err(broadcast::error::RecvError::Lagged(1))));
        assert_eq!(slow.recv().await.unwrap().topic.as_str(), "b");
    }

    #[tokio::test]
    async fn events_reach_every_listener() {
        let events = Events::new(8);
        let (mut a, mut b) = (events.subscribe(), events.subscribe());
        events.emit(HubEvent::DeviceConnected { device: "d".into(), at: 1 });
        for rx in [&mut a, &mut b] {
            let e = rx.recv().await.unwrap();
            assert_eq!(e.name(), "device.connected");
            assert_eq!(
                serde_json::to_value(&*e).unwrap(),
                serde_json::json!({"type":"device_connected","device":"d","at":1})
            );
        }
    }
}
