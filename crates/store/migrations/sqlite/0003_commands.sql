-- Commands to devices and each device's command sequence.

-- The last sequence number given to a command of each device. Kept apart from the
-- commands so a number is never reused, even after old commands are pruned.
CREATE TABLE command_seqs (
    device   TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;

-- One command. `state` is one of queued, sent, delivered, succeeded, failed, rejected,
-- expired, cancelled; `timestamps` maps each state entered to when (ms since the epoch).
CREATE TABLE commands (
    id         TEXT PRIMARY KEY CHECK (id <> ''),
    device     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    mode       TEXT NOT NULL,
    key        TEXT,
    payload    TEXT NOT NULL CHECK (json_valid(payload)),        -- JSON
    topic      TEXT,
    state      TEXT NOT NULL,
    created_at INTEGER NOT NULL,                                 -- ms since the epoch
    expires_at INTEGER,
    updated_at INTEGER NOT NULL,
    timestamps TEXT NOT NULL CHECK (json_valid(timestamps)),     -- JSON object
    result     TEXT CHECK (result IS NULL OR json_valid(result)),-- JSON
    reason     TEXT
);

-- a device's commands in order: pending, listing, the open count
CREATE UNIQUE INDEX commands_device_seq ON commands (device, seq);
-- latest-wins: the open commands of a key
CREATE INDEX commands_device_key ON commands (device, key) WHERE key IS NOT NULL;
-- expiry and pruning
CREATE INDEX commands_state_expires ON commands (state, expires_at);
