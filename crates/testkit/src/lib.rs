//! Dev-only harness for telehub's integration tests: an in-process broker on port 0 and
//! a raw-bytes MQTT client whose packet builders and parsers share no code with
//! `telehub-mqtt`, so our own encoder cannot hide a decoder bug (STYLE.md §8).
//!
//! # Layout
//!
//! * `broker`: [`TestBroker`], a [`telehub_broker::Broker`] on `127.0.0.1:0`, stopped on
//!   drop or with [`TestBroker::stop`].
//! * [`build`]: byte builders for what a client sends (CONNECT, PUBLISH, SUBSCRIBE, acks...).
//! * `raw`: [`RawClient`], a client that sends raw bytes and reads raw packets
//!   (fixed header + remaining length framing) with bounded waits.
//! * [`transport`]: [`Transport`], how a client reaches the broker (TCP, TLS,
//!   WebSocket, secure WebSocket), with the client side of each handshake.
//! * [`pki`]: [`TestPki`], a throw-away CA with server and client certificates in PEM
//!   files.
//! * [`parse`]: [`Packet`] and decoders for what the server sends (CONNACK, PUBLISH,
//!   SUBACK, acks, DISCONNECT, MQTT 5 properties).
//!
//! Everything panics with a message on failure: this crate only runs inside tests.

mod broker;
pub mod build;
pub mod parse;
pub mod pki;
mod raw;
pub mod transport;

use std::time::Duration;

pub use broker::TestBroker;
pub use build::{Connect, Publish, Version};
pub use parse::{ConnAck, Packet, Properties, PropertyValue, PublishPacket};
pub use pki::TestPki;
pub use raw::RawClient;
pub use transport::{Transport, WsMessage};

/// Upper bound for something that should arrive (a packet, a close). Generous on purpose:
/// tests never assert on speed, only that things happen at all.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to watch before concluding that something did NOT arrive. Only ever used to
/// assert absence, never to wait for presence.
pub const QUIET_WINDOW: Duration = Duration::from_millis(300);
