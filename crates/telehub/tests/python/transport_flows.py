"""The same MQTT flows over any transport paho-mqtt speaks: TCP, TLS, WebSocket, secure
WebSocket. Run by crates/telehub/tests/e2e_transports.rs.

Modes:

* `flows`: a subscriber on PREFIX/#, then a QoS 1 publish it must receive, a retained
  message a late subscriber must receive with the retain flag, and the will of a client
  that dies abruptly (the `linger` mode run as a child process and killed with SIGKILL).
  Prints one "ok <step>" line per step and exits 0; exits 1 at the first failure.
* `linger`: connects with a will on PREFIX/will, prints "connected", then waits to be
  killed.

Usage: transport_flows.py MODE PORT PREFIX [--websockets] [--cafile CA]
       [--cert CERT --key KEY]
"""
import argparse
import os
import queue
import signal
import subprocess
import sys
import time

import paho.mqtt.client as mqtt

TIMEOUT = 10.0

parser = argparse.ArgumentParser()
parser.add_argument("mode", choices=["flows", "linger"])
parser.add_argument("port", type=int)
parser.add_argument("prefix")
parser.add_argument("--websockets", action="store_true")
parser.add_argument("--cafile")
parser.add_argument("--cert")
parser.add_argument("--key")
args = parser.parse_args()


def fail(why):
    print("FAILED " + why, flush=True)
    sys.exit(1)


def client(client_id, will=None):
    """A connected client with a started network loop and a queue of its messages."""
    c = mqtt.Client(client_id=client_id, transport="websockets" if args.websockets else "tcp")
    if args.websockets:
        c.ws_set_options(path="/mqtt")
    if args.cafile:
        c.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key)
    if will:
        c.will_set(will, b"gone", qos=1)
    c.messages = queue.Queue()
    c.acks = queue.Queue()
    connected = queue.Queue()
    c.on_connect = lambda cl, u, f, rc: connected.put(rc)
    c.on_message = lambda cl, u, m: c.messages.put(m)
    c.on_subscribe = lambda cl, u, mid, granted: c.acks.put(("suback", mid, granted))
    c.on_publish = lambda cl, u, mid: c.acks.put(("puback", mid))
    c.connect("127.0.0.1", args.port, keepalive=30)
    c.loop_start()
    try:
        rc = connected.get(timeout=TIMEOUT)
    except queue.Empty:
        fail("no CONNACK for " + client_id)
    if rc != 0:
        fail("CONNECT of %s refused: %d" % (client_id, rc))
    return c


def subscribe(c, topic):
    _, mid = c.subscribe(topic, qos=1)
    kind, got, granted = c.acks.get(timeout=TIMEOUT)
    if (kind, got, tuple(granted)) != ("suback", mid, (1,)):
        fail("SUBACK for %s: %r" % (topic, (kind, got, granted)))


def publish(c, topic, payload, retain=False):
    info = c.publish(topic, payload, qos=1, retain=retain)
    kind, mid = c.acks.get(timeout=TIMEOUT)
    if (kind, mid) != ("puback", info.mid):
        fail("PUBACK for %s: %r" % (topic, (kind, mid)))


def expect(c, topic, payload, retain):
    try:
        m = c.messages.get(timeout=TIMEOUT)
    except queue.Empty:
        fail("nothing on %s within %ss" % (topic, TIMEOUT))
    got = (m.topic, m.payload, m.qos, bool(m.retain))
    if got != (topic, payload, 1, retain):
        fail("expected %r, got %r" % ((topic, payload, 1, retain), got))


if args.mode == "linger":
    client(args.prefix.replace("/", "-") + "-dying", will=args.prefix + "/will")
    print("connected", flush=True)
    time.sleep(60)
    sys.exit(0)

p = args.prefix
sub = client(p.replace("/", "-") + "-sub")
subscribe(sub, p + "/#")
print("ok subscribe", flush=True)

pub = client(p.replace("/", "-") + "-pub")
publish(pub, p + "/data", b"21.5")
expect(sub, p + "/data", b"21.5", False)
print("ok qos1", flush=True)

publish(pub, p + "/retained", b"kept", retain=True)
expect(sub, p + "/retained", b"kept", False)
late = client(p.replace("/", "-") + "-late")
subscribe(late, p + "/retained")
expect(late, p + "/retained", b"kept", True)
print("ok retained", flush=True)

linger_args = [sys.executable, "-u", os.path.abspath(__file__), "linger", str(args.port), p]
linger_args += sys.argv[4:]
dying = subprocess.Popen(linger_args, stdout=subprocess.PIPE, text=True)
line = dying.stdout.readline().strip()
if line != "connected":
    dying.kill()
    fail("the dying client did not connect: %r" % line)
os.kill(dying.pid, signal.SIGKILL)
dying.wait()
expect(sub, p + "/will", b"gone", False)
print("ok will", flush=True)

for c in (sub, pub, late):
    c.disconnect()
    c.loop_stop()
print("done", flush=True)
