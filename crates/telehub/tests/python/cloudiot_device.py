"""A Google Cloud IoT Core device, as Google's MQTT sample wrote it
(cloudiot_mqtt_example.py): it signs a JWT with its own RSA private key (PyJWT +
cryptography) and sends it as the MQTT password over TLS, with the Cloud IoT client id
and the user name "unused"; it subscribes to its config and commands topics and
publishes a telemetry event. Only the host, the port and the CA file differ from the
sample. Run by crates/telehub/tests/e2e_security.rs.

Usage: cloudiot_device.py HOST PORT CA_FILE PRIVATE_KEY_FILE PROJECT DEVICE_ID [LIFETIME_MIN [IAT_OFFSET_S]]

Prints "connected", "subscribed <granted qos list>", "published" or "refused <rc>".
"""
import datetime
import json
import ssl
import sys
import threading

import jwt
import paho.mqtt.client as mqtt

host, port, ca_file, key_file, project_id, device_id = sys.argv[1:7]
lifetime = int(sys.argv[7]) if len(sys.argv) > 7 else 20
iat_offset = int(sys.argv[8]) if len(sys.argv) > 8 else 0


def create_jwt(project_id, private_key_file, algorithm):
    """The sample's create_jwt."""
    now = datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(seconds=iat_offset)
    token = {
        "iat": now,
        "exp": now + datetime.timedelta(minutes=lifetime),
        "aud": project_id,
    }
    with open(private_key_file, "r") as f:
        private_key = f.read()
    return jwt.encode(token, private_key, algorithm=algorithm)


client_id = "projects/{}/locations/{}/registries/{}/devices/{}".format(
    project_id, "europe-west1", "telehub-registry", device_id
)
client = mqtt.Client(client_id=client_id)
client.username_pw_set(username="unused", password=create_jwt(project_id, key_file, "RS256"))
client.tls_set(ca_certs=ca_file, tls_version=ssl.PROTOCOL_TLSv1_2)

connected = threading.Event()
subscribed = threading.Event()
result = {}


def on_connect(unused_client, unused_userdata, unused_flags, rc):
    result["rc"] = rc
    connected.set()


def on_subscribe(unused_client, unused_userdata, mid, granted_qos):
    result["granted"] = list(granted_qos)
    subscribed.set()


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.connect(host, int(port))
client.loop_start()
if not connected.wait(10):
    print("no CONNACK")
    sys.exit(1)
if result["rc"] != 0:
    print("refused", result["rc"])
    sys.exit(0)
print("connected")

mqtt_config_topic = "/devices/{}/config".format(device_id)
mqtt_command_topic = "/devices/{}/commands/#".format(device_id)
client.subscribe([(mqtt_config_topic, 1), (mqtt_command_topic, 0)])
if not subscribed.wait(10):
    print("no SUBACK")
    sys.exit(1)
print("subscribed", result["granted"])

mqtt_topic = "/devices/{}/{}".format(device_id, "events")
payload = json.dumps({"temperature": 21.5, "humidity": 40})
info = client.publish(mqtt_topic, payload, qos=1)
info.wait_for_publish(timeout=10)
if not info.is_published():
    print("no PUBACK")
    sys.exit(1)
print("published")
client.disconnect()
client.loop_stop()
