"""IoT for Beginners, "nightlight" lesson: the device.

Sends {"light": <level>} to <id>/telemetry and obeys {"led_on": ...} commands on
<id>/commands. The lesson's code, except: the broker host and port come from the command
line, the light sensor is replaced by a fixed level (default 250, a dark room), the LED by
a flag, and `while True` by a bounded loop that ends when the LED is turned on (exit 0)
or after TIMEOUT_SECONDS (exit 1). Run by crates/telehub/tests/e2e_paho.rs.

Usage: nightlight_device.py HOST PORT ID [LIGHT] [TIMEOUT_SECONDS]
"""
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

host = sys.argv[1]
port = int(sys.argv[2])
id = sys.argv[3]
light = int(sys.argv[4]) if len(sys.argv) > 4 else 250
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0

client_telemetry_topic = id + '/telemetry'
server_command_topic = id + '/commands'
client_name = id + 'nightlight_client'

led_on = threading.Event()

mqtt_client = mqtt.Client(client_name)
mqtt_client.connect(host, port)

mqtt_client.loop_start()

print("MQTT connected!")


def handle_command(client, userdata, message):
    print("Raw command:", message.payload.decode())
    payload = json.loads(message.payload.decode())
    print("Message received:", payload)

    if payload['led_on']:
        led_on.set()  # the lesson: led.on()


mqtt_client.subscribe(server_command_topic)
mqtt_client.on_message = handle_command

deadline = time.monotonic() + timeout
while not led_on.is_set() and time.monotonic() < deadline:
    telemetry = json.dumps({'light': light})

    print("Sending telemetry ", telemetry)

    mqtt_client.publish(client_telemetry_topic, telemetry)

    led_on.wait(1)  # the lesson: time.sleep(5)

mqtt_client.disconnect()
mqtt_client.loop_stop()

if not led_on.is_set():
    print("the LED was not turned on within " + str(timeout) + "s", file=sys.stderr)
    sys.exit(1)
print("LED on")
