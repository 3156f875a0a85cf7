-- Telemetry: devices, one series per (device, metric), raw points, rollups, and the
-- message ids seen (for idempotent replay).

-- A device that has sent at least one record, with its latest reported document.
CREATE TABLE devices (
    device      TEXT PRIMARY KEY,
    first_seen  INTEGER NOT NULL,   -- ms since the epoch, arrival time
    last_seen   INTEGER NOT NULL,
    document    TEXT,               -- JSON
    document_at INTEGER             -- arrival time of `document`
);

-- One metric of one device. `latest_*` is the point with the greatest timestamp;
-- `point_count` counts its raw points (kept in step by every insert and delete).
CREATE TABLE series (
    id           INTEGER PRIMARY KEY,
    device       TEXT NOT NULL,
    metric       TEXT NOT NULL,
    latest_ts    INTEGER NOT NULL,
    latest_value REAL NOT NULL,
    point_count  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (device, metric)
);

-- Raw points; one per (series, ts): a second point at the same time is ignored.
CREATE TABLE points (
    series_id INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    value     REAL NOT NULL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;

-- Rollups: count, sum, min, max and the value at the greatest timestamp of each
-- series per minute and per hour, updated in the transaction that inserts the points.
CREATE TABLE rollup_1m (
    series_id  INTEGER NOT NULL,
    bucket     INTEGER NOT NULL,
    n          INTEGER NOT NULL,
    total      REAL NOT NULL,
    lo         REAL NOT NULL,
    hi         REAL NOT NULL,
    last_value REAL NOT NULL,
    last_ts    INTEGER NOT NULL,
    PRIMARY KEY (series_id, bucket)
) WITHOUT ROWID;

CREATE TABLE rollup_1h (
    series_id  INTEGER NOT NULL,
    bucket     INTEGER NOT NULL,
    n          INTEGER NOT NULL,
    total      REAL NOT NULL,
    lo         REAL NOT NULL,
    hi         REAL NOT NULL,
    last_value REAL NOT NULL,
    last_ts    INTEGER NOT NULL,
    PRIMARY KEY (series_id, bucket)
) WITHOUT ROWID;

-- (device, msg_id) of every stored record that had one: the dedupe key.
CREATE TABLE messages (
    device      TEXT NOT NULL,
    msg_id      TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (device, msg_id)
) WITHOUT ROWID;

-- age retention forgets message ids with the points they came with
CREATE INDEX messages_received_at ON messages (received_at);
