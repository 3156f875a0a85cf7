-- The outbound webhook outbox. `status` is pending, delivered or dead. AUTOINCREMENT:
-- `seq` is never reused, so it keeps increasing with enqueue order (paging cursor).
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE CHECK (id <> ''),
    endpoint        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL CHECK (json_valid(payload)),   -- JSON
    created_at      INTEGER NOT NULL,                            -- ms since the epoch
    next_attempt_at INTEGER NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    pending_since   INTEGER NOT NULL,
    finished_at     INTEGER
);

-- what is due
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
-- an endpoint's deliveries by status, newest first; replay
CREATE INDEX outbox_endpoint ON outbox (endpoint, status, seq);
-- pruning delivered ones
CREATE INDEX outbox_finished ON outbox (status, finished_at);
