-- The registry (devices, credentials, ACL rules, admin tokens) and the audit log. Text
-- keys use the "C" collation so they sort and compare like Rust strings (bytewise).

-- One registry entry: a JSON document under (kind, id). `owner` is the device it
-- belongs to, if any (deleting a device deletes what it owns).
CREATE TABLE registry_entries (
    kind       text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL CHECK (id <> ''),
    owner      text COLLATE "C",
    body       jsonb NOT NULL,
    updated_at bigint NOT NULL,    -- ms since the epoch
    PRIMARY KEY (kind, id)
);

CREATE INDEX registry_entries_owner ON registry_entries (owner);

-- Audit events; `id` increases with insertion order.
CREATE TABLE audit_log (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts      bigint NOT NULL,       -- ms since the epoch
    actor   text COLLATE "C" NOT NULL,
    action  text COLLATE "C" NOT NULL,
    target  text COLLATE "C" NOT NULL,
    outcome text COLLATE "C" NOT NULL,
    remote  text COLLATE "C",
    detail  jsonb NOT NULL
);

-- pruning and time ranges
CREATE INDEX audit_log_ts ON audit_log (ts);
-- the filters of a query, each in id order (newest first)
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
CREATE INDEX audit_log_target ON audit_log (target, id);
