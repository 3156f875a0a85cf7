//! [`Authenticator`]: who may connect, publish and subscribe. The broker asks; the hub's
//! device registry answers (the broker never names the registry). Without one the broker
//! lets everybody in ([`AllowAll`]), which only tests and `telehub --allow-anonymous`
//! style setups want.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use telehub_core::{ClientId, DeviceId, Message, TopicName};
use telehub_mqtt::ReasonString;

/// The transport a client connected over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over secure WebSocket.
    Wss,
}

impl TransportKind {
    /// `tcp`, `tls`, `ws` or `wss`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client presented in CONNECT, and how it reached us.
#[derive(Debug, Clone, Copy)]
pub struct ConnectInfo<'a> {
    /// The Client Identifier (assigned by the broker when the client sent none).
    pub client_id: &'a ClientId,
    /// User Name.
    pub username: Option<&'a str>,
    /// Password (a token, a password or a device-signed JWT).
    pub password: Option<&'a [u8]>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The transport.
    pub transport: TransportKind,
    /// SHA-256 of the DER of the client certificate the TLS handshake verified (TLS and
    /// WSS listeners with a client CA), if the client sent one.
    pub cert_sha256: Option<[u8; 32]>,
}

/// Who a connection is, once authenticated. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The device the credentials belong to; `None` for an anonymous client.
    pub device: Option<DeviceId>,
    /// The id of the credential it proved itself with (so revoking a credential can
    /// drop exactly the connections that used it).
    pub credential: Option<Arc<str>>,
}

impl Principal {
    /// A client that presented no credentials (`allow_anonymous`).
    pub fn anonymous() -> Self {
        Self { device: None, credential: None }
    }

    /// A registered device, authenticated with `credential`.
    pub fn device(id: DeviceId, credential: impl Into<Arc<str>>) -> Self {
        Self { device: Some(id), credential: Some(credential.into()) }
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No credentials, unknown device, wrong or expired credential (5.0: 0x86 Bad User
    /// Name or Password; 3.x: 0x04).
    BadCredentials,
    /// Valid credentials but not allowed to connect now, e.g. an address outside the
    /// device's allowlist (5.0: 0x87 Not authorized; 3.x: 0x05).
    NotAuthorized,
    /// Too many connections from this address (5.0: 0x9F Connection rate exceeded;
    /// 3.x: 0x05, which has no better code).
    ConnectionRate,
    /// The registry cannot answer (5.0: 0x88 Server unavailable; 3.x: 0x03).
    Unavailable,
}

impl Refusal {
    /// The CONNACK reason code for `v5`, else the 3.x return code.
    pub fn connack_code(self, v5: bool) -> u8 {
        match (self, v5) {
            (Self::BadCredentials, true) => 0x86,
            (Self::BadCredentials, false) => 0x04,
            (Self::NotAuthorized, true) => 0x87,
            (Self::ConnectionRate, true) => 0x9F,
            (Self::NotAuthorized | Self::ConnectionRate, false) => 0x05,
            (Self::Unavailable, true) => 0x88,
            (Self::Unavailable, false) => 0x03,
        }
    }

    /// The MQTT 5 Reason String of the refusing CONNACK. It never says which of user
    /// name or password was wrong.
    pub fn reason_string(self) -> ReasonString {
        ReasonString::new(match self {
            Self::BadCredentials => "bad user name or password",
            Self::NotAuthorized => "not authorized to connect",
            Self::ConnectionRate => "connection rate exceeded",
            Self::Unavailable => "authentication unavailable, try again later",
        })
    }
}

/// Why a PUBLISH is refused. A refused message is counted, never routed, retained or
/// offered to the ingest hook. MQTT 5 QoS 1/2 publishers get [`PublishRefusal::reason_code`]
/// in PUBACK / PUBREC (which ends a QoS 2 flow). MQTT 3.x has no way to say it: a
/// [`PublishRefusal::NotAuthorized`] message is acknowledged as usual and dropped; a QoS
/// 1/2 message [`PublishRefusal::RateTooHigh`] closes the connection unacknowledged, so
/// the client slows down and resends. QoS 0 messages are just dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublishRefusal {
    /// The topic is not the publisher's (0x87 Not authorized).
    NotAuthorized,
    /// The device sends faster than its limit (0x97 Quota exceeded: MQTT 5 defines 0x96
    /// Message rate too high for DISCONNECT only, and PUBACK / PUBREC cannot carry it).
    RateTooHigh,
}

impl PublishRefusal {
    /// The MQTT 5 PUBACK/PUBREC reason code: one of those the specification allows
    /// there (3.4.2.1), which a client's decoder accepts.
    pub fn reason_code(self) -> u8 {
        match self {
            Self::NotAuthorized => 0x87,
            Self::RateTooHigh => 0x97,
        }
    }

    /// The MQTT 5 Reason String of the PUBACK / PUBREC refusing a message to `topic`.
    pub fn reason_string(self, topic: &TopicName) -> ReasonString {
        ReasonString::new(match self {
            Self::NotAuthorized => format!("not authorized to publish to {}", topic.as_str()),
            Self::RateTooHigh => "message rate above this client's limit".to_owned(),
        })
    }
}

/// Resolves to the connecting client's identity or the reason it is refused.
pub type AuthFuture = Pin<Box<dyn Future<Output = Result<Principal, Refusal>> + Send + 'static>>;

/// Decides who may connect, publish and subscribe.
///
/// `accept`, `authorize_publish` and `authorize_subscribe` run on connection tasks for
/// every new socket, PUBLISH and SUBSCRIBE: they must be quick (in-memory lookups).
/// `authenticate` may do slow work (a password hash) inside its future.
pub trait Authenticator: Send + Sync + 'static {
    /// A new socket from `peer`, before any handshake: `false` closes it at once (the
    /// IP allowlist).
    fn accept(&self, peer: SocketAddr) -> bool;

    /// Checks a CONNECT's credentials.
    fn authenticate(&self, info: ConnectInfo<'_>) -> AuthFuture;

    /// May `who` publish `message`? Called for every PUBLISH (not for wills, which were
    /// checked as a PUBLISH of their topic at CONNECT).
    ///
    /// # Errors
    ///
    /// The reason the message is refused.
    fn authorize_publish(&self, who: &Principal, message: &Message) -> Result<(), PublishRefusal>;

    /// May `who` subscribe to `filter` (as sent, a `$share/{group}/` prefix included)?
    fn authorize_subscribe(&self, who: &Principal, filter: &str) -> bool;

    /// `who` is connected as `client` from `peer` (after CONNACK).
    fn connected(&self, who: &Principal, client: &ClientId, peer: SocketAddr) {
        let _ = (who, client, peer);
    }

    /// A connection of `who` ended.
    fn disconnected(&self, who: &Principal, client: &ClientId) {
        let _ = (who, client);
    }
}

/// Lets everybody connect, publish and subscribe as [`Principal::anonymous`]: the
/// broker's behaviour without an [`Authenticator`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn accept(&self, _peer: SocketAddr) -> bool {
        true
    }

    fn authenticate(&self, _info: ConnectInfo<'_>) -> AuthFuture {
        Box::pin(std::future::ready(Ok(Principal::anonymous())))
    }

    fn authorize_publish(&self, _who: &Principal, _message: &Message) -> Result<(), PublishRefusal> {
        Ok(())
    }

    fn authorize_subscribe(&self, _who: &Principal, _filter: &str) -> bool {
        true
    }
}

/// The authenticator a broker uses.
pub(crate) type SharedAuthenticator = Arc<dyn Authenticator>;
