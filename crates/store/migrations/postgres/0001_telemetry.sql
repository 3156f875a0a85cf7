-- Telemetry: devices, one series per (device, metric), raw points partitioned by day,
-- rollups, and the message ids seen (for idempotent replay). Plain PostgreSQL 14+, no
-- extensions. Text keys use the "C" collation so they sort like Rust strings.

-- A device that has sent at least one record, with its latest reported document.
CREATE TABLE devices (
    device      text COLLATE "C" PRIMARY KEY,
    first_seen  bigint NOT NULL,    -- ms since the epoch, arrival time
    last_seen   bigint NOT NULL,
    document    jsonb,
    document_at bigint              -- arrival time of `document`
);

-- One metric of one device; `latest_*` is the point with the greatest timestamp.
CREATE TABLE series (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device       text COLLATE "C" NOT NULL,
    metric       text COLLATE "C" NOT NULL,
    latest_ts    bigint NOT NULL,
    latest_value double precision NOT NULL,
    UNIQUE (device, metric)
);

-- Raw points, one per (series, ts), range-partitioned by day on ts (ms since the
-- epoch, UTC). The writer creates a day's partition, "points_dYYYYMMDD", before the
-- first point of that day; retention drops whole partitions.
CREATE TABLE points (
    series_id bigint NOT NULL,
    ts        bigint NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (series_id, ts)
) PARTITION BY RANGE (ts);

-- Rollups: count, sum, min, max and the value at the greatest timestamp of each
-- series per minute and per hour, updated in the transaction that inserts the points.
CREATE TABLE rollup_1m (
    series_id  bigint NOT NULL,
    bucket     bigint NOT NULL,
    n          bigint NOT NULL,
    total      double precision NOT NULL,
    lo         double precision NOT NULL,
    hi         double precision NOT NULL,
    last_value double precision NOT NULL,
    last_ts    bigint NOT NULL,
    PRIMARY KEY (series_id, bucket)
);

CREATE TABLE rollup_1h (
    series_id  bigint NOT NULL,
    bucket     bigint NOT NULL,
    n          bigint NOT NULL,
    total      double precision NOT NULL,
    lo         double precision NOT NULL,
    hi         double precision NOT NULL,
    last_value double precision NOT NULL,
    last_ts    bigint NOT NULL,
    PRIMARY KEY (series_id, bucket)
);

-- (device, msg_id) of every stored record that had one: the dedupe key.
CREATE TABLE messages (
    device      text COLLATE "C" NOT NULL,
    msg_id      text COLLATE "C" NOT NULL,
    received_at bigint NOT NULL,
    PRIMARY KEY (device, msg_id)
);

-- age retention forgets message ids with the points they came with
CREATE INDEX messages_received_at ON messages (received_at);
