//! telehub's shared vocabulary: the names every other crate speaks, with no I/O.
//!
//! # Layout
//!
//! * [`duration`]: human durations (`"30s"`) for config files.
//! * [`id`]: identifiers ([`ClientId`], [`DeviceId`]).
//! * [`topic`]: [`TopicName`] (where a message is published) and [`TopicFilter`]
//!   (what a subscription matches), each validated once at the edge.
//! * [`message`]: [`Message`], what was published, with its [`QoS`] and properties.
#![warn(missing_docs)]

pub mod duration;
pub mod id;
pub mod message;
pub mod topic;

pub use id::{ClientId, DeviceId, DeviceIdError};
pub use message::{Message, MessageProperties, QoS};
pub use topic::{TopicError, TopicFilter, TopicName};
