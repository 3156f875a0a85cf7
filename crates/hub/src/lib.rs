//! telehub's domain logic between the broker and the store.
//!
//! # Layout
//!
//! * [`ingest`]: published messages and HTTP bodies → [`telehub_store::Record`]s (ingest
//!   mappings: topic → device, payload → points), and the bounded queue whose writer
//!   groups many callers' records into one store write. [`ingest::Ingest`] is the
//!   broker's `IngestHook`: MQTT acknowledgements wait for the commit.
//! * [`registry`]: devices, credentials, ACL rules, admin tokens, rate limits and the
//!   audit log; the broker's `Authenticator` and the API's gatekeeper.
//! * [`retention`]: the periodic task that deletes telemetry beyond the retention limits.
//! * [`timestamp`]: timestamps as devices send them (RFC 3339 or Unix milliseconds) and
//!   as the API answers them (RFC 3339).

pub mod ingest;
pub mod registry;
pub mod retention;
pub mod timestamp;
