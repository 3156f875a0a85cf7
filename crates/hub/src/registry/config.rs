//! [`AuthConfig`]: the `[auth]` section: anonymous access, device JWTs, ACL rules from
//! the config file, IP allowlists, rate limits, audit retention.

use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::model::AclRuleSpec;

/// The `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept devices without credentials (MQTT and HTTP device ingest, never the admin
    /// API); they may publish and subscribe anywhere the ACL rules allow, and
    /// everywhere when there are none.
    pub allow_anonymous: bool,
    /// The `aud` claim a device-signed JWT must carry.
    pub jwt_audience: String,
    /// Longest `exp - iat` accepted for a device JWT.
    #[serde(with = "telehub_core::duration")]
    pub jwt_max_lifetime: Duration,
    /// Clock skew allowed on `iat` and `exp`.
    #[serde(with = "telehub_core::duration")]
    pub jwt_clock_skew: Duration,
    /// Client addresses allowed on every listener (MQTT, HTTP, WebSocket); empty: all.
    pub ip_allowlist: Vec<IpNet>,
    /// Extra ACL rules (`[[auth.acl]]`), after the ones made by the API.
    pub acl: Vec<AclRuleSpec>,
    /// `[auth.rate]`: rate limits.
    pub rate: RateConfig,
    /// How long audit events are kept.
    #[serde(with = "telehub_core::duration")]
    pub audit_retention: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: false,
            jwt_audience: "telehub".to_owned(),
            jwt_max_lifetime: Duration::from_secs(24 * 3600),
            jwt_clock_skew: Duration::from_secs(60),
            ip_allowlist: Vec::new(),
            acl: Vec::new(),
            rate: RateConfig::default(),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// `[auth.rate]`: each limit is a rate per second with a burst; `0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    /// New MQTT connections per client IP per second (MQTT 5: CONNACK 0x9F).
    pub connections_per_ip: u32,
    /// Burst of `connections_per_ip`.
    pub connections_burst: u32,
    /// Messages one device may publish per second, MQTT and HTTP ingest together
    /// (MQTT 5: PUBACK/PUBREC 0x97 Quota exceeded, as PUBACK cannot carry 0x96; 3.1.1: disconnect; HTTP: 429).
    pub messages_per_device: u32,
    /// Burst of `messages_per_device`.
    pub messages_burst: u32,
    /// HTTP requests per second per admin token, device or client IP (429 with
    /// `Retry-After`).
    pub http_requests: u32,
    /// Burst of `http_requests`.
    pub http_burst: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            connections_per_ip: 50,
            connections_burst: 200,
            messages_per_device: 1_000,
            messages_burst: 5_000,
            http_requests: 1_000,
            http_burst: 2_000,
        }
    }
}
