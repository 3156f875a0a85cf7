"""Raspberry Pi tutorial: subscribe to sensor/data and print what arrives.

The tutorial's subscriber, with the broker host and port from the command line and
`loop_forever()` replaced by a bounded wait: prints "subscribed" once the broker has
acknowledged the subscription, then "payload: <text>" for the first message and exits 0;
exits 1 when the connection is refused or nothing arrives in time.
Run by crates/telehub/tests/e2e_paho.rs.

Usage: raspi_subscriber.py HOST PORT [TIMEOUT_SECONDS]
"""
import sys
import threading

import paho.mqtt.client as mqtt

broker = sys.argv[1]
port = int(sys.argv[2])
timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
topic = "sensor/data"

received = threading.Event()
failed = threading.Event()


def on_connect(client, userdata, flags, rc):
    print("Connected with result code " + str(rc))
    if rc != 0:
        failed.set()
        return
    client.subscribe(topic)


def on_subscribe(client, userdata, mid, granted_qos):
    print("subscribed", granted_qos)


def on_message(client, userdata, msg):
    print("topic: " + msg.topic)
    print("payload: " + msg.payload.decode())
    received.set()


client = mqtt.Client()
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message

client.connect(broker, port)
client.loop_start()
received.wait(timeout)
client.disconnect()
client.loop_stop()

if failed.is_set() or not received.is_set():
    print("no message on " + topic + " within " + str(timeout) + "s", file=sys.stderr)
    sys.exit(1)
