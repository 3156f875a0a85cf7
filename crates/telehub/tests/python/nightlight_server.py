"""IoT for Beginners, "nightlight" lesson: the server.

Listens to every device's telemetry on +/telemetry and answers each reading on
<id>/commands with {"led_on": light < 300}. The lesson's code, except: the broker host
and port come from the command line, the device id is taken from the topic (so one
server serves every device), and `while True` ends after TIMEOUT_SECONDS.
Run by crates/telehub/tests/e2e_paho.rs, which stops it when the device is done.

Usage: nightlight_server.py HOST PORT [TIMEOUT_SECONDS]
"""
import json
import sys
import time

import paho.mqtt.client as mqtt

host = sys.argv[1]
port = int(sys.argv[2])
timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0

client_telemetry_topic = '+/telemetry'
client_name = 'nightlight_server'

mqtt_client = mqtt.Client(client_name)
mqtt_client.connect(host, port)

mqtt_client.loop_start()

print("MQTT connected!")


def handle_telemetry(client, userdata, message):
    payload = json.loads(message.payload.decode())
    print("Message received:", payload)

    id = message.topic.split('/')[0]
    server_command_topic = id + '/commands'
    command = {'led_on': payload['light'] < 300}
    print("Sending message:", command)

    client.publish(server_command_topic, json.dumps(command))


mqtt_client.subscribe(client_telemetry_topic)
mqtt_client.on_message = handle_telemetry

deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    time.sleep(0.5)
