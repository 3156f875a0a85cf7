-- Commands to devices and each device's command sequence. Text keys use the "C"
-- collation so they sort and compare like Rust strings (bytewise).

-- The last sequence number given to a command of each device. Kept apart from the
-- commands so a number is never reused, even after old commands are pruned; its row
-- lock also serializes the inserts of one device (the queue limit check).
CREATE TABLE command_seqs (
    device   text COLLATE "C" PRIMARY KEY,
    last_seq bigint NOT NULL
);

-- One command. `state` is one of queued, sent, delivered, succeeded, failed, rejected,
-- expired, cancelled; `timestamps` maps each state entered to when (ms since the epoch).
CREATE TABLE commands (
    id         text COLLATE "C" PRIMARY KEY CHECK (id <> ''),
    device     text COLLATE "C" NOT NULL,
    seq        bigint NOT NULL,
    mode       text NOT NULL,
    key        text COLLATE "C",
    payload    jsonb NOT NULL,
    topic      text,
    state      text NOT NULL,
    created_at bigint NOT NULL,    -- ms since the epoch
    expires_at bigint,
    updated_at bigint NOT NULL,
    timestamps jsonb NOT NULL,
    result     jsonb,
    reason     text
);

-- a device's commands in order: pending, listing, the open count
CREATE UNIQUE INDEX commands_device_seq ON commands (device, seq);
-- latest-wins: the open commands of a key
CREATE INDEX commands_device_key ON commands (device, key) WHERE key IS NOT NULL;
-- expiry and pruning
CREATE INDEX commands_state_expires ON commands (state, expires_at);
