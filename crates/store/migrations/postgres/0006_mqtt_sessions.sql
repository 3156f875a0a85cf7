-- The MQTT broker's durable state. Bodies are encoded by the hub; the store knows
-- the keys, the order of deliveries and their in-flight mark.
CREATE TABLE mqtt_retained (
    topic text COLLATE "C" PRIMARY KEY,
    body  bytea NOT NULL
);

CREATE TABLE mqtt_sessions (
    client_id text COLLATE "C" PRIMARY KEY,
    body      bytea NOT NULL
);

-- deliveries of each session, in `seq` order (unique and increasing across sessions)
CREATE TABLE mqtt_messages (
    client_id text COLLATE "C" NOT NULL,
    seq       bigint NOT NULL,
    body      bytea NOT NULL,
    packet_id integer,                 -- in flight with this packet id
    stage     smallint NOT NULL DEFAULT 0,  -- 1: PUBLISH sent, 2: PUBREL sent
    PRIMARY KEY (client_id, seq)
);

-- QoS 2 packet ids received from each session's client and not yet released
CREATE TABLE mqtt_incoming_qos2 (
    client_id text COLLATE "C" NOT NULL,
    packet_id integer NOT NULL,
    PRIMARY KEY (client_id, packet_id)
);
