//! [`RegistryStore`]: how the device registry (devices, credentials, ACL rules, admin
//! tokens) and the audit log are kept. The registry holds every entry in memory and
//! writes through to the store; the store keeps each entry as a JSON document under
//! `(kind, id)`, so adding a field never needs a migration.

use std::future::Future;

use crate::{StoreError, Timestamp};

/// What a registry entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A device (`id` is its device id).
    Device,
    /// A device credential (`owner` is its device).
    Credential,
    /// An ACL rule.
    AclRule,
    /// An admin API token.
    AdminToken,
}

impl Kind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Credential => "credential",
            Self::AclRule => "acl_rule",
            Self::AdminToken => "admin_token",
        }
    }

    /// The kind stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "device" => Self::Device,
            "credential" => Self::Credential,
            "acl_rule" => Self::AclRule,
            "admin_token" => Self::AdminToken,
            _ => return None,
        })
    }
}

/// One registry entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its kind.
    pub kind: Kind,
    /// Its id, unique within its kind.
    pub id: String,
    /// The device it belongs to (credentials, device-specific rules), if any.
    pub owner: Option<String>,
    /// The entry itself.
    pub body: serde_json::Value,
}

/// One change to the registry.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert or replace the entry with this `(kind, id)`.
    Put(Entry),
    /// Delete the entry with this `(kind, id)` (nothing happens if there is none).
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its id.
        id: String,
    },
    /// Delete every entry owned by this device.
    DeleteOwned {
        /// The device.
        owner: String,
    },
}

/// One audit log event: a change to the registry or the config, or a refused
/// authentication.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// When it happened.
    pub ts: Timestamp,
    /// Who: `token:{id}`, `device:{id}`, `anonymous`, `system`.
    pub actor: String,
    /// What, dotted: `device.create`, `credential.delete`, `auth.mqtt`, `auth.http`…
    pub action: String,
    /// On what: `device:{id}`, `credential:{id}`, `token:{id}`, a client id…
    pub target: String,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    /// The client's address, when it came over the network.
    pub remote: Option<String>,
    /// Anything else worth keeping (never a secret).
    pub detail: serde_json::Value,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    /// Increasing with insertion order.
    pub id: i64,
    /// The event.
    pub event: AuditEvent,
}

/// Audit events, newest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditQuery {
    /// Only events at or after this time.
    pub from: Option<Timestamp>,
    /// Only events before this time.
    pub to: Option<Timestamp>,
    /// Only events whose action is this or starts with this followed by `.`
    /// (`device` matches `device.create`).
    pub action: Option<String>,
    /// Only events of this actor.
    pub actor: Option<String>,
    /// Only events on this target.
    pub target: Option<String>,
    /// Only events with a smaller id (the next page).
    pub before_id: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// The registry's entries and the audit log.
///
/// Every method is safe to call from many tasks at once, and durable when its future
/// resolves `Ok`.
pub trait RegistryStore: Send + Sync + 'static {
    /// Every entry, ordered by `(kind, id)`.
    fn registry_load(&self) -> impl Future<Output = Result<Vec<Entry>, StoreError>> + Send;

    /// Applies `changes` in order, in one transaction: all or none.
    fn registry_apply(&self, changes: Vec<Change>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Appends events to the audit log.
    fn audit_append(&self, events: Vec<AuditEvent>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A page of the audit log, newest first.
    fn audit_query(&self, query: AuditQuery) -> impl Future<Output = Result<Vec<AuditRow>, StoreError>> + Send;

    /// Deletes audit events older than `before`; returns how many.
    fn audit_prune(&self, before: Timestamp) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
