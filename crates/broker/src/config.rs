//! [`Config`]: the `[mqtt]` section of telehub's config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use telehub_mqtt::OverflowPolicy;

/// What the broker does when a session's queue is full, in deliveries
/// (`max_queued_messages`) or bytes (`max_queued_bytes`), and when every queue together
/// holds `max_queued_bytes_total` (see `telehub.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFull {
    /// Keep the queue, drop the new delivery (after waiting up to
    /// `publish_backpressure` for an online subscriber). At the global cap the PUBLISH
    /// is refused, as with [`QueueFull::Refuse`].
    #[default]
    DropNew,
    /// Drop the oldest queued deliveries of the session, also to stay under the global
    /// cap.
    DropOldest,
    /// Refuse the PUBLISH, before it is routed to anyone, when a matching session's
    /// queue is full or the global cap is reached: MQTT 5 QoS 1/2 publishers get reason
    /// 0x97 (Quota exceeded); MQTT 3.x publishers are acknowledged and the message is
    /// dropped (3.x has no negative acknowledgement); QoS 0 messages are dropped.
    Refuse,
}

impl From<QueueFull> for OverflowPolicy {
    fn from(q: QueueFull) -> Self {
        match q {
            QueueFull::DropNew => OverflowPolicy::DropNew,
            QueueFull::DropOldest => OverflowPolicy::DropOldest,
            QueueFull::Refuse => OverflowPolicy::Refuse,
        }
    }
}

/// Broker settings. Defaults match the embedded `telehub.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the MQTT/TCP listener.
    pub listen: SocketAddr,
    /// Largest packet accepted from a client, in bytes (remaining length).
    pub max_packet_size: u32,
    /// Largest keep-alive a client may ask for; MQTT 5 clients are told this value in
    /// CONNACK (Server Keep Alive), MQTT 3.x clients asking for more are refused.
    #[serde(with = "telehub_core::duration")]
    pub max_keep_alive: Duration,
    /// How long a new connection may take to send CONNECT.
    #[serde(with = "telehub_core::duration")]
    pub connect_timeout: Duration,
    /// Receive Maximum: QoS 1/2 PUBLISHes a client may have unacknowledged towards us.
    pub receive_maximum: u16,
    /// MQTT 5 Topic Alias Maximum: how many topic aliases a client may define towards
    /// us (0: none).
    pub topic_alias_maximum: u16,
    /// QoS 1/2 deliveries in flight to one client at once (lowered by the client's
    /// MQTT 5 Receive Maximum).
    pub max_inflight: u16,
    /// Deliveries queued per session beyond the in-flight window, online or offline.
    pub max_queued_messages: usize,
    /// Payload bytes queued per session beyond the in-flight window, online or offline.
    pub max_queued_bytes: usize,
    /// Payload bytes queued in every session together (a payload queued for several
    /// sessions counts in each; deliveries in flight are bounded by `max_inflight`
    /// instead). At this cap `drop_new` and `refuse` refuse a PUBLISH before routing
    /// it; `drop_oldest` drops the oldest of each session it goes to.
    pub max_queued_bytes_total: usize,
    /// Policy when a session queue is full or the global cap is reached.
    pub queue_full: QueueFull,
    /// With `drop_new`: how long a publisher waits for room in an online subscriber's
    /// queue before the QoS 1/2 delivery is dropped (and counted). This is the
    /// backpressure that keeps a fast publisher from overrunning a slow subscriber.
    #[serde(with = "telehub_core::duration")]
    pub publish_backpressure: Duration,
    /// Upper bound on the MQTT 5 Session Expiry Interval a client may ask for.
    #[serde(with = "telehub_core::duration")]
    pub max_session_expiry: Duration,
    /// How often the `$SYS/broker/...` topics are published; `"0s"` turns them off.
    #[serde(with = "telehub_core::duration")]
    pub sys_interval: Duration,
    /// Keep retained messages and sessions that outlive their connection (with their
    /// subscriptions and queued QoS 1/2 messages) on disk, restored at start. Off: all
    /// of it is lost when telehub stops.
    pub persistence: bool,
    /// `[mqtt.tls]`: MQTT over TLS, and the certificate `wss` uses.
    pub tls: TlsConfig,
    /// `[mqtt.ws]`: MQTT over WebSocket (and secure WebSocket).
    pub ws: WsConfig,
}

/// `[mqtt.tls]`: MQTT over TLS, on when `cert` and `key` are both set.
///
/// The files are read at start-up (a bad path or content stops telehub) and again on
/// SIGHUP or when their modification time or size changes; a reload that fails keeps
/// the certificate in use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Address of the MQTT/TLS listener.
    pub listen: SocketAddr,
    /// The server's certificate chain (PEM, leaf first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// CA certificates (PEM). When set, every TLS client must present a certificate
    /// issued by one of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes; `"0s"`: only on SIGHUP.
    #[serde(with = "telehub_core::duration")]
    pub reload_interval: Duration,
}

impl TlsConfig {
    /// True when TLS is configured (`cert` and `key` set).
    pub fn is_enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
            cert: None,
            key: None,
            client_ca: None,
            reload_interval: Duration::from_secs(5),
        }
    }
}

/// `[mqtt.ws]`: MQTT over WebSocket at path `/mqtt`, subprotocol `mqtt`. Each listener
/// is off unless its address is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// Address of the plain WebSocket (`ws://`) listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Address of the secure WebSocket (`wss://`) listener; needs `[mqtt.tls]` `cert`
    /// and `key`, whose certificate (and `client_ca`) it shares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            max_packet_size: 1024 * 1024,
            max_keep_alive: Duration::from_secs(65_535),
            connect_timeout: Duration::from_secs(10),
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            max_inflight: 1024,
            max_queued_messages: 10_000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_queued_bytes_total: 256 * 1024 * 1024,
            queue_full: QueueFull::DropNew,
            publish_backpressure: Duration::from_secs(5),
            max_session_expiry: Duration::from_secs(7 * 86_400),
            sys_interval: Duration::from_secs(10),
            persistence: true,
            tls: TlsConfig::default(),
            ws: WsConfig::default(),
        }
    }
}
