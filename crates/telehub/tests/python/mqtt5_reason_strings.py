"""MQTT 5 Reason Strings as Eclipse Paho sees them.

Connects with protocol=MQTTv5 and subscribes to one valid and one invalid filter
(`$share/g`: a shared subscription without its filter, which Paho does not check). Prints "codes: <reason codes>" and "reason: <Reason String>"
(or "reason: none") from the SUBACK's properties in on_subscribe, then exits 0; exits 1
when the connection is refused or no SUBACK arrives in time. With "quiet" as the third
argument the CONNECT sets Request Problem Information 0, so the SUBACK may carry none.
Run by crates/telehub/tests/e2e_paho.rs.

Usage: mqtt5_reason_strings.py HOST PORT [quiet]
"""
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

broker = sys.argv[1]
port = int(sys.argv[2])
quiet = len(sys.argv) > 3 and sys.argv[3] == "quiet"

done = threading.Event()
failed = threading.Event()


def on_connect(client, userdata, flags, rc, properties=None):
    print("connected", rc)
    if rc != 0:
        failed.set()
        done.set()
        return
    client.subscribe([("ok/x", 0), ("$share/g", 0)])


def on_subscribe(client, userdata, mid, reason_codes, properties=None):
    print("codes:", ", ".join(str(c) for c in reason_codes))
    reason = getattr(properties, "ReasonString", None) if properties is not None else None
    print("reason:", reason if reason else "none")
    done.set()


client = mqtt.Client(client_id="paho-reasons", protocol=mqtt.MQTTv5)
client.on_connect = on_connect
client.on_subscribe = on_subscribe

connect_properties = Properties(PacketTypes.CONNECT)
if quiet:
    connect_properties.RequestProblemInformation = 0
client.connect(broker, port, properties=connect_properties)
client.loop_start()
done.wait(10)
client.loop_stop()
sys.exit(0 if done.is_set() and not failed.is_set() else 1)
