"""IoT for Beginners, "nightlight" lesson: the device, with telehub's rules as the server.

Publishes {"light": <level>} to <id>/telemetry for each LEVEL given, in order, and
records every command received on <id>/commands. After each reading it waits SETTLE
seconds for commands (the rules answer a crossing within milliseconds); at the end it
prints one line `COMMANDS <json list of the payloads received>` and exits 0. Run by
crates/telehub/tests/e2e_rules.rs.

Usage: nightlight_rules_device.py HOST PORT ID SETTLE LEVEL...
"""
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

host = sys.argv[1]
port = int(sys.argv[2])
id = sys.argv[3]
settle = float(sys.argv[4])
levels = [int(level) for level in sys.argv[5:]]

client_telemetry_topic = id + '/telemetry'
server_command_topic = id + '/commands'
client_name = id + 'nightlight_client'

commands = []
lock = threading.Lock()
subscribed = threading.Event()


def handle_command(client, userdata, message):
    payload = json.loads(message.payload.decode())
    print("Message received:", payload)
    with lock:
        commands.append(payload)


def on_subscribe(client, userdata, mid, granted_qos, properties=None):
    subscribed.set()


mqtt_client = mqtt.Client(client_name)
mqtt_client.on_message = handle_command
mqtt_client.on_subscribe = on_subscribe
mqtt_client.connect(host, port)
mqtt_client.loop_start()
print("MQTT connected!")

mqtt_client.subscribe(server_command_topic, qos=1)
if not subscribed.wait(10):
    print("no SUBACK", file=sys.stderr)
    sys.exit(1)

for level in levels:
    telemetry = json.dumps({'light': level})
    print("Sending telemetry ", telemetry)
    mqtt_client.publish(client_telemetry_topic, telemetry, qos=1).wait_for_publish()
    time.sleep(settle)

mqtt_client.disconnect()
mqtt_client.loop_stop()
with lock:
    print("COMMANDS " + json.dumps(commands))
