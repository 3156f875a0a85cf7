//! [`RegistryStore`]: how the device registry (devices, credentials, ACL rules, admin
//! tokens, automation rules, webhook endpoints) and the audit log are kept. The registry holds every entry in memory and
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
    /// An automation rule (topic filter, condition, actions).
    Rule,
    /// An outbound webhook endpoint (URL, events or topic filter, secrets).
    Webhook,
}

impl Kind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Credential => "credential",
            Self::AclRule => "acl_rule",
            Self::AdminToken => "admin_token",
            Self::Rule => "rule",
            Self::Webhook => "webhook",
        }
    }

    /// The kind stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "device" => Self::Device,
            "credential" => Self::Credential,
            "acl_rule" => Self::AclRule,
            "admin_token" => Self::AdminToken,
            "rule" => Self::Rule,
            "webhook" => Self::Webhook,
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
    fn audit_query(
        &self,
        query: AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditRow>, StoreError>> + Send;

    /// Deletes audit events older than `before`; returns how many.
    fn audit_prune(&self, before: Timestamp) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Refuses a batch that holds U+0000 anywhere. PostgreSQL cannot store it in `text` or
/// `jsonb`, so both backends refuse it, before the transaction, to behave alike.
pub(crate) fn refuse_nul_in_changes(changes: &[Change]) -> Result<(), StoreError> {
    let bad = changes.iter().any(|c| match c {
        Change::Put(e) => has_nul(&e.id) || e.owner.as_deref().is_some_and(has_nul) || json_has_nul(&e.body),
        Change::Delete { id, .. } => has_nul(id),
        Change::DeleteOwned { owner } => has_nul(owner),
    });
    if bad {
        return Err(StoreError::Backend("a registry change contains a NUL character".into()));
    }
    Ok(())
}

/// [`refuse_nul_in_changes`] for audit events.
pub(crate) fn refuse_nul_in_events(events: &[AuditEvent]) -> Result<(), StoreError> {
    let bad = events.iter().any(|e| {
        [&e.actor, &e.action, &e.target, &e.outcome].into_iter().any(|s| has_nul(s))
            || e.remote.as_deref().is_some_and(has_nul)
            || json_has_nul(&e.detail)
    });
    if bad {
        return Err(StoreError::Backend("an audit event contains a NUL character".into()));
    }
    Ok(())
}

pub(crate) fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

pub(crate) fn json_has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => has_nul(s),
        serde_json::Value::Array(items) => items.iter().any(json_has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| has_nul(k) || json_has_nul(v)),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => false,
    }
}

/// A stored entry's kind, or an error naming it: an entry of a kind this build does not
/// know is not skipped (it may be an ACL rule that denies something).
pub(crate) fn stored_kind(s: &str) -> Result<Kind, StoreError> {
    Kind::parse(s).ok_or_else(|| StoreError::Backend(format!("unknown registry kind {s:?} in the store")))
}

/// Sorts entries the way [`RegistryStore::registry_load`] returns them: by [`Kind`]'s
/// order, then by id bytewise (the same on both backends, whatever their collation).
pub(crate) fn sort_entries(entries: &mut [Entry]) {
    entries.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
}

/// A bound parameter of [`audit_select`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Int(i64),
    Text(String),
}

/// The `SELECT` of an [`AuditQuery`] (columns `id, ts, actor, action, target, outcome,
/// remote, detail`) and its parameters, numbered `{mark}1`, `{mark}2`… (`?` for SQLite,
/// `$` for PostgreSQL). The action prefix is the bytewise range `[action + ".",
/// action + "/")` (`/` follows `.`), exact on both backends (no `LIKE`, so no
/// wildcards and no case folding) and served by the `(action, id)` index.
pub(crate) fn audit_select(query: &AuditQuery, mark: char) -> (String, Vec<Arg>) {
    let mut sql = String::from(
        "SELECT id, ts, actor, action, target, outcome, remote, detail FROM audit_log WHERE TRUE",
    );
    let mut args = Vec::new();
    let mut bind = |sql: &mut String, clause: &str, arg: Arg| {
        args.push(arg);
        sql.push_str(&clause.replace('#', &format!("{mark}{}", args.len())));
    };
    if let Some(from) = query.from {
        bind(&mut sql, " AND ts >= #", Arg::Int(from.0));
    }
    if let Some(to) = query.to {
        bind(&mut sql, " AND ts < #", Arg::Int(to.0));
    }
    if let Some(action) = &query.action {
        bind(&mut sql, " AND (action = #", Arg::Text(action.clone()));
        bind(&mut sql, " OR (action >= #", Arg::Text(format!("{action}.")));
        bind(&mut sql, " AND action < #))", Arg::Text(format!("{action}/")));
    }
    if let Some(actor) = &query.actor {
        bind(&mut sql, " AND actor = #", Arg::Text(actor.clone()));
    }
    if let Some(target) = &query.target {
        bind(&mut sql, " AND target = #", Arg::Text(target.clone()));
    }
    if let Some(before) = query.before_id {
        bind(&mut sql, " AND id < #", Arg::Int(before));
    }
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    bind(&mut sql, " ORDER BY id DESC LIMIT #", Arg::Int(limit));
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_select_numbers_its_parameters_in_order() {
        let q = AuditQuery {
            from: Some(Timestamp(1)),
            action: Some("device".into()),
            target: Some("device:a".into()),
            before_id: Some(9),
            limit: 5,
            ..AuditQuery::default()
        };
        let (sql, args) = audit_select(&q, '$');
        assert!(
            sql.ends_with(
                "WHERE TRUE AND ts >= $1 AND (action = $2 OR (action >= $3 AND action < $4)) \
                 AND target = $5 AND id < $6 ORDER BY id DESC LIMIT $7"
            ),
            "{sql}"
        );
        let text = |s: &str| Arg::Text(s.into());
        assert_eq!(
            args,
            vec![
                Arg::Int(1),
                text("device"),
                text("device."),
                text("device/"),
                text("device:a"),
                Arg::Int(9),
                Arg::Int(5)
            ]
        );
        let (sql, args) = audit_select(&AuditQuery { limit: 3, ..AuditQuery::default() }, '?');
        assert!(sql.ends_with("WHERE TRUE ORDER BY id DESC LIMIT ?1"), "{sql}");
        assert_eq!(args, vec![Arg::Int(3)]);
    }

    #[test]
    fn nul_is_found_anywhere() {
        let entry = |body| Change::Put(Entry { kind: Kind::Device, id: "d".into(), owner: None, body });
        assert!(refuse_nul_in_changes(&[entry(serde_json::json!({"a": ["x", {"b": "ok"}]}))]).is_ok());
        assert!(refuse_nul_in_changes(&[entry(serde_json::json!({"a": ["x", {"b": "o\0k"}]}))]).is_err());
        assert!(refuse_nul_in_changes(&[entry(serde_json::json!({"a\0": 1}))]).is_err());
        assert!(refuse_nul_in_changes(&[Change::DeleteOwned { owner: "\0".into() }]).is_err());
    }
}
