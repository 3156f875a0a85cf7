"""Raspberry Pi tutorial publisher (raspi_publisher.py), for a shared database.

The tutorial's code with two changes: the device id comes from the command line (a
PostgreSQL database outlives the test, so each run names its own device), and the
reading is published at QoS 1 and the script waits for its PUBACK (telehub sends it only
once the reading is committed, so the test can read it back at once). Run by
crates/telehub/tests/e2e_postgres.rs.

Usage: raspi_publisher_qos1.py HOST PORT DEVICE_ID
"""
import json
import sys

import paho.mqtt.client as mqtt

broker = sys.argv[1]
port = int(sys.argv[2])
topic = "sensor/data"

client = mqtt.Client()
client.connect(broker, port)
client.loop_start()

data = {"device_id": sys.argv[3], "temperature": 25.5, "humidity": 60.3}
info = client.publish(topic, json.dumps(data), qos=1)
info.wait_for_publish(timeout=10)
if not info.is_published():
    print("no PUBACK within 10 s")
    sys.exit(1)
print("Data sent:", data)
client.disconnect()
client.loop_stop()
