"""Raspberry Pi tutorial: publish one sensor reading as JSON to sensor/data.

The tutorial's code, unchanged except that the broker host and port come from the
command line instead of a public broker. Run by crates/telehub/tests/e2e_paho.rs.

Usage: raspi_publisher.py HOST PORT
"""
import json
import sys

import paho.mqtt.client as mqtt

broker = sys.argv[1]
port = int(sys.argv[2])
topic = "sensor/data"

client = mqtt.Client()
client.connect(broker, port)

data = {"device_id": "raspi-01", "temperature": 25.5, "humidity": 60.3}
client.publish(topic, json.dumps(data))
print("Data sent:", data)
