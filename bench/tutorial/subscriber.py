"""The tutorial's MQTT → SQLite bridge, as a baseline for bench/ingest.sh: a paho-mqtt
subscriber that INSERTs and commits each message as it arrives (one transaction per
message, SQLite defaults). Not part of telehub.

    python subscriber.py --port 1883 --db readings.db

On SIGTERM it prints one line: rows, seconds from the first to the last message, rate.
"""

import argparse
import json
import signal
import sqlite3
import sys
import time

import paho.mqtt.client as mqtt

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, default=1883)
p.add_argument("--db", default="readings.db")
p.add_argument("--topic", default="devices/+/telemetry")
args = p.parse_args()

conn = sqlite3.connect(args.db)
conn.execute(
    "CREATE TABLE IF NOT EXISTS readings (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT, "
    "ts INTEGER, msg_id TEXT, data TEXT)"
)
conn.commit()
first = last = None
rows = 0


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe(args.topic, qos=1)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    print("subscribed", flush=True)


def on_message(client, userdata, msg):
    global first, last, rows
    data = json.loads(msg.payload)
    device_id = msg.topic.split("/")[1]
    conn.execute(
        "INSERT INTO readings (device_id, ts, msg_id, data) VALUES (?, ?, ?, ?)",
        (device_id, data.get("ts"), data.get("msg_id"), json.dumps(data)),
    )
    conn.commit()
    now = time.monotonic()
    first = first or now
    last = now
    rows += 1


def stop(signum, frame):
    span = (last - first) if rows > 1 else 0.0
    rate = rows / span if span > 0 else 0.0
    print(f"rows={rows} span_s={span:.2f} rows_rate={rate:.0f}", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tutorial-subscriber")
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect("127.0.0.1", args.port)
client.loop_forever()
