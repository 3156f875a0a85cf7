//! telehub's domain logic between the broker and the store.
//!
//! # Layout
//!
//! * [`commands`]: [`commands::Commands`], commands to devices (fire-and-forget, queued
//!   with a time to live, latest-wins): stored, delivered through the broker or an HTTP
//!   long-poll, acknowledged by the device, expired; [`commands::wire`] has the formats.
//! * [`events`]: [`events::Events`], the broadcast of hub events (device connected, command
//!   state, alerts), and [`events::Tap`], the broker hook feeding accepted messages to
//!   bounded feeds beside telemetry ingest.
//! * [`ingest`]: published messages and HTTP bodies → [`telehub_store::Record`]s (ingest
//!   mappings: topic → device, payload → points), and the bounded queue whose writer
//!   groups many callers' records into one store write. [`ingest::Ingest`] is the
//!   broker's `IngestHook`: MQTT acknowledgements wait for the commit.
//! * [`persist`]: the broker's durable state (retained messages, persistent sessions,
//!   their QoS 1/2 deliveries, QoS 2 packet ids) on the store: [`persist::Journal`] is
//!   the broker's `Persistence`, its writer group-commits, [`persist::load`] at start.
//! * [`registry`]: devices, credentials, ACL rules, admin tokens, rate limits and the
//!   audit log; the broker's `Authenticator` and the API's gatekeeper.
//! * [`rules`]: the rules engine (topic filter + CEL condition → actions, with
//!   once-per-crossing, hysteresis, `for`, cooldown and no-data options), pure: messages
//!   and the current time in, firings with rendered actions out.
//! * [`shadow`]: device state (desired, reported, delta, version); a desired change is a
//!   latest-wins command.
//! * [`retention`]: the periodic task that deletes telemetry beyond the retention limits.
//! * [`webhooks`]: outbound webhooks (endpoints, the durable outbox's dispatcher and
//!   sender: Standard Webhooks signatures, back-off, dead letters, circuit breaker) and
//!   inbound ones (`POST /hooks/{name}`: signature, window, replay check).
//! * [`timestamp`]: timestamps as devices send them (RFC 3339 or Unix milliseconds) and
//!   as the API answers them (RFC 3339).

pub mod commands;
pub mod events;
pub mod ingest;
pub mod persist;
pub mod registry;
pub mod retention;
pub mod rules;
pub mod shadow;
pub mod timestamp;
pub mod webhooks;
