-- The MQTT broker's durable state. Bodies are encoded by the hub; the store knows
-- the keys, the order of deliveries and their in-flight mark.
CREATE TABLE mqtt_retained (
    topic TEXT PRIMARY KEY,
    body  BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE mqtt_sessions (
    client_id TEXT PRIMARY KEY,
    body      BLOB NOT NULL
) WITHOUT ROWID;

-- deliveries of each session, in `seq` order (unique and increasing across sessions)
CREATE TABLE mqtt_messages (
    client_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    body      BLOB NOT NULL,
    packet_id INTEGER,                 -- in flight with this packet id
    stage     INTEGER NOT NULL DEFAULT 0,  -- 1: PUBLISH sent, 2: PUBREL sent
    PRIMARY KEY (client_id, seq)
) WITHOUT ROWID;

-- QoS 2 packet ids received from each session's client and not yet released
CREATE TABLE mqtt_incoming_qos2 (
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;
