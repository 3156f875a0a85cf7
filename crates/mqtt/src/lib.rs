//! The MQTT protocol for telehub, sans I/O: bytes in, packets out, and the per-client
//! session state that QoS 1/2 needs. Sockets live in `telehub-broker`.
//!
//! # Layout
//!
//! * [`packet`]: version-neutral packets ([`Inbound`] from clients, [`Outbound`] to them).
//! * [`codec`]: framing over `rmqtt-codec`: version detection from CONNECT, size limits,
//!   and the spec rules the codec leaves to us (tagged `[MQTT-x.y.z-n]`).
//! * [`reason`]: [`ProtocolError`] and its mapping to MQTT 5 reason codes, in one place.
//! * [`fuzz`]: entry points for the `fuzz/` targets and the unit-test sweeps, and
//!   [`fuzz::seeds`], the seed corpus of known crash classes.
//! * [`session`]: one client's session: packet ids, in-flight QoS 1/2 windows,
//!   the bounded queue of pending deliveries, redelivery on reconnect.
#![warn(missing_docs)]

pub mod codec;
pub mod fuzz;
pub mod packet;
pub mod reason;
pub mod session;

pub use codec::{Decoder, Encoder};
pub use packet::{
    ConnAckCode, Connect, Inbound, Outbound, ProtocolVersion, PublishIn, ReasonString, SubAckCode,
    SubOptions, Will,
};
pub use reason::ProtocolError;
pub use session::{
    BrokerTime, Delivery, EnqueueError, InflightStage, OverflowPolicy, PersistChange, QueueBudget, Session,
    SessionLimits,
};
