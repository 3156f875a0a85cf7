"""An independent QoS 1 telemetry publisher for the kill -9 tests (Eclipse Paho 1.6).

Publishes {"msg_id": "m-<n>", "seq": <n>, "temperature": <n>} to devices/<DEVICE>/telemetry
at QoS 1 for n = 0, 1, 2, ... (at most COUNT messages; with TS_BASE other than 0 also
"ts": TS_BASE + n, Unix ms), keeping at most WINDOW unacknowledged, and prints one line
per PUBACK received, flushed at once:

    acked <n>

The PUBACK is matched to its message through the packet id (mid) that publish()
returned, so a line is printed only for a message the broker really acknowledged.

Mode `all`: once all COUNT messages are acknowledged, prints `sent <COUNT>` and exits 0.

Modes `stop` and `resend` expect the broker to be killed mid-stream. When the
connection is lost:

* `stop`: prints `disconnected`, then `sent <k>` (messages 0..k-1 were published,
  acknowledged or not) and exits 0;
* `resend`: prints `disconnected`, publishes nothing new, waits for PORT_FILE to hold the
  port of the restarted broker and connects there with a new client. It publishes again,
  with the same msg_id, every message that was published but not acknowledged, and the
  last REPLAYED acknowledged ones too (a device replaying its backlog from a checkpoint
  that lags its acknowledgements), so the dedupe certainly meets stored messages. With
  TS_BASE, the copies carry a "ts" RESEND_SHIFT ms later (a device that stamps messages
  when it sends them): only the (device, msg_id) dedupe can then keep a message stored
  before the kill from being stored twice. Prints `resent <count>` (unacknowledged) and
  `replayed <count>` (acknowledged), an `acked <n>` line for each copy, then `sent <k>`,
  and exits 0 once every copy is acknowledged.

Exits 1 if DEADLINE seconds pass first, or, in `stop` and `resend`, if all COUNT
messages are acknowledged before the connection is lost.

Usage: qos1_stream.py HOST PORT DEVICE COUNT WINDOW DEADLINE TS_BASE stop|resend|all [PORT_FILE]
"""
import json
import sys
import time

import paho.mqtt.client as mqtt

host = sys.argv[1]
port = int(sys.argv[2])
device = sys.argv[3]
count = int(sys.argv[4])
window = int(sys.argv[5])
deadline = time.monotonic() + float(sys.argv[6])
ts_base = int(sys.argv[7])
mode = sys.argv[8]
port_file = sys.argv[9] if mode == "resend" else None
topic = "devices/%s/telemetry" % device


def say(line):
    print(line, flush=True)


RESEND_SHIFT = 600000
REPLAYED = 20


def payload(n, shift):
    doc = {"msg_id": "m-%d" % n, "seq": n, "temperature": n}
    if ts_base:
        doc["ts"] = ts_base + shift + n
    return json.dumps(doc)


class Link:
    """One connection: its client and the messages waiting for their PUBACK (mid -> seq)."""

    def __init__(self, port, client_id, shift):
        self.shift = shift
        self.waiting = {}
        self.connected = False
        self.lost = False
        self.client = mqtt.Client(client_id=client_id, clean_session=True)
        self.client.max_inflight_messages_set(window)
        self.client.on_connect = self.on_connect
        self.client.on_publish = self.on_publish
        self.client.on_disconnect = self.on_disconnect
        self.client.connect(host, port, keepalive=30)

    def on_connect(self, client, userdata, flags, rc):
        if rc != 0:
            say("connect refused %d" % rc)
            sys.exit(1)
        self.connected = True

    def on_publish(self, client, userdata, mid):
        # callbacks run inside loop(), on this thread: the mid was recorded by publish()
        seq = self.waiting.pop(mid, None)
        if seq is None:
            say("PUBACK for unknown mid %d" % mid)
            sys.exit(1)
        acked.add(seq)
        say("acked %d" % seq)

    def on_disconnect(self, client, userdata, rc):
        self.lost = True

    def publish(self, n):
        info = self.client.publish(topic, payload(n, self.shift), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # the connection is gone: no PUBACK will come for this message
            self.lost = True
            return
        self.waiting[info.mid] = n

    def step(self, timeout):
        if self.client.loop(timeout=timeout) != mqtt.MQTT_ERR_SUCCESS:
            self.lost = True

    def wait_connected(self):
        while not self.connected:
            if self.lost or time.monotonic() > deadline:
                say("no CONNACK")
                sys.exit(1)
            self.step(0.05)


def check_deadline(what):
    if time.monotonic() > deadline:
        say("deadline passed while %s" % what)
        sys.exit(1)


acked = set()
link = Link(port, "k9-%s" % device, 0)
link.wait_connected()
sent = 0
while not link.lost:
    check_deadline("publishing")
    if sent < count and len(link.waiting) < window:
        # counted as sent even when publish() failed: part of it may have left
        link.publish(sent)
        sent += 1
        link.step(0)
    elif sent == count and not link.waiting:
        break
    else:
        link.step(0.05)

if not link.lost:
    say("sent %d" % sent)
    if mode == "all":
        link.client.disconnect()
        sys.exit(0)
    say("every message was acknowledged before the connection was lost")
    sys.exit(1)

say("disconnected")
if mode == "stop":
    say("sent %d" % sent)
    sys.exit(0)

# resend mode: wait for the restarted broker's port
while True:
    check_deadline("waiting for %s" % port_file)
    try:
        with open(port_file) as f:
            text = f.read()
        if text.endswith("\n"):
            new_port = int(text)
            break
    except FileNotFoundError:
        pass
    time.sleep(0.05)

unacked = [n for n in range(sent) if n not in acked]
replayed = sorted(acked)[-REPLAYED:]
say("resent %d" % len(unacked))
say("replayed %d" % len(replayed))
link = Link(new_port, "k9-%s-again" % device, RESEND_SHIFT)
link.wait_connected()
queue = sorted(replayed + unacked)
while queue or link.waiting:
    check_deadline("resending")
    if link.lost:
        say("connection lost while resending")
        sys.exit(1)
    if queue and len(link.waiting) < window:
        link.publish(queue.pop(0))
        link.step(0)
    else:
        link.step(0.05)
link.client.disconnect()
say("sent %d" % sent)
