-- The registry (devices, credentials, ACL rules, admin tokens) and the audit log.

-- One registry entry: a JSON document under (kind, id). `owner` is the device it
-- belongs to, if any (deleting a device deletes what it owns).
CREATE TABLE registry_entries (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL CHECK (id <> ''),
    owner      TEXT,
    body       TEXT NOT NULL CHECK (json_valid(body)),   -- JSON
    updated_at INTEGER NOT NULL,                          -- ms since the epoch
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;

CREATE INDEX registry_entries_owner ON registry_entries (owner);

-- Audit events. AUTOINCREMENT: an id is never reused, even after pruning every row,
-- so ids keep increasing with insertion order and `before_id` paging stays valid.
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,   -- ms since the epoch
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    outcome TEXT NOT NULL,
    remote  TEXT,
    detail  TEXT NOT NULL CHECK (json_valid(detail))   -- JSON
);

-- pruning and time ranges
CREATE INDEX audit_log_ts ON audit_log (ts);
-- the filters of a query, each in id order (newest first)
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
CREATE INDEX audit_log_target ON audit_log (target, id);
