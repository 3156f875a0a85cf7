"""Command round-trip latency, one command at a time (bench/commands.sh runs it).

  hub    --mqtt-port P --http-port H --token ADMIN --count N
      telehub's command service: an app POSTs a command for a registered device
      (paho-mqtt, MQTT 3.1.1, its own token, subscribed to devices/{id}/commands);
      the device answers {"id", "status": "succeeded"} on devices/{id}/commands/ack;
      the app learns the outcome from the live stream (SSE, command.state_changed).
      Measures POST -> device has it ("deliver") and POST -> app sees succeeded
      ("round trip").
  broker --mqtt-port P --count N [--username U --password W]
      The same exchange over a bare broker (Mosquitto, or telehub as a broker): the
      app publishes the command at QoS 1, the device publishes its answer at QoS 1,
      the app receives it. Measures publish -> device has it and publish -> answer.

Prints one line: `deliver p50 … p90 … p99 … max … ms; round trip p50 … p90 … p99 … max … ms`.
"""

import argparse
import json
import queue
import socket
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt


def new_client(name):
    # paho-mqtt 1.x (Debian) and 2.x; every callback here takes *args either way
    if hasattr(mqtt, "CallbackAPIVersion"):
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=name, protocol=mqtt.MQTTv311)
    return mqtt.Client(client_id=name, protocol=mqtt.MQTTv311)


def client(name, args=None):
    c = new_client(name)
    if args is not None and args.username:
        c.username_pw_set(args.username, args.password)
    return c


def connect(c, port):
    ready = threading.Event()
    c.on_connect = lambda *a: ready.set()
    c.connect("127.0.0.1", port)
    # small packets each way: without this, Nagle + delayed ACKs add ~40 ms per hop
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.loop_start()
    if not ready.wait(10):
        raise SystemExit("no CONNACK")


def subscribe(c, topic):
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe(topic, qos=1)
    if not done.wait(10):
        raise SystemExit(f"no SUBACK for {topic}")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(name, xs):
    ms = [x * 1000 for x in xs]
    return f"{name} p50 {pct(ms, 50):.2f} p90 {pct(ms, 90):.2f} p99 {pct(ms, 99):.2f} max {max(ms):.2f} ms"


def api(http_port, token, method, path, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def run_hub(args):
    device = "rtt-1"
    api(args.http_port, args.token, "POST", "/api/v1/devices", {"id": device})
    cred = api(args.http_port, args.token, "POST", f"/api/v1/devices/{device}/credentials", {"kind": "token"})
    delivered = {}
    dev = new_client(device)
    dev.username_pw_set(device, cred["token"])

    def on_command(c, _u, msg):
        cmd = json.loads(msg.payload)
        delivered[cmd["id"]] = time.perf_counter()
        c.publish(f"devices/{device}/commands/ack", json.dumps({"id": cmd["id"], "status": "succeeded"}), qos=1)

    connect(dev, args.mqtt_port)
    dev.on_message = on_command
    subscribe(dev, f"devices/{device}/commands")

    # the app's view: command.state_changed events on the live stream
    outcomes = queue.Queue()
    stream = urllib.request.urlopen(
        urllib.request.Request(
            f"http://127.0.0.1:{args.http_port}/api/v1/stream?events=command.state_changed",
            headers={"Authorization": f"Bearer {args.token}", "Accept": "text/event-stream"},
        ),
        timeout=30,
    )

    def read_stream():
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data:"):
                event = json.loads(line[5:])
                command = event.get("command", {})
                if command.get("state") == "succeeded":
                    outcomes.put((command["id"], time.perf_counter()))

    threading.Thread(target=read_stream, daemon=True).start()
    deliver, round_trip = [], []
    for i in range(args.warmup + args.count):
        t0 = time.perf_counter()
        cmd = api(args.http_port, args.token, "POST", f"/api/v1/devices/{device}/commands",
                  {"payload": {"n": i}, "mode": "queued"})
        while True:
            cid, t2 = outcomes.get(timeout=10)
            if cid == cmd["id"]:
                break
        if i >= args.warmup:
            deliver.append(delivered[cmd["id"]] - t0)
            round_trip.append(t2 - t0)
    print(summary("deliver", deliver) + "; " + summary("round trip", round_trip), flush=True)


def run_broker(args):
    device, app = client("rtt-device", args), client("rtt-app", args)
    delivered = {}
    answers = queue.Queue()

    def on_device(c, _u, msg):
        delivered[msg.payload] = time.perf_counter()
        c.publish("rtt/answers", msg.payload, qos=1)

    connect(device, args.mqtt_port)
    device.on_message = on_device
    subscribe(device, "rtt/commands")
    connect(app, args.mqtt_port)
    app.on_message = lambda _c, _u, msg: answers.put((msg.payload, time.perf_counter()))
    subscribe(app, "rtt/answers")
    deliver, round_trip = [], []
    for i in range(args.warmup + args.count):
        body = json.dumps({"id": i, "payload": {"n": i}}).encode()
        t0 = time.perf_counter()
        app.publish("rtt/commands", body, qos=1)
        while True:
            got, t2 = answers.get(timeout=10)
            if got == body:
                break
        if i >= args.warmup:
            deliver.append(delivered[body] - t0)
            round_trip.append(t2 - t0)
    print(summary("deliver", deliver) + "; " + summary("round trip", round_trip), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["hub", "broker"])
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--http-port", type=int)
    p.add_argument("--token")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    args = p.parse_args()
    (run_hub if args.mode == "hub" else run_broker)(args)


if __name__ == "__main__":
    main()
