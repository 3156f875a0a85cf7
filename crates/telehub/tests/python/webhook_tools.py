"""Webhook test tools, independent of telehub's code (own HMAC, own WebSocket framing).

  receive --port P --secret whsec_... [--fail-first N]
      A Standard Webhooks receiver: checks webhook-signature (HMAC-SHA256 over
      "{id}.{timestamp}.{body}", any of the space-separated v1 signatures) and
      answers 401 on a bad one, 500 to the first N good ones, else 200. Prints
      "PORT p" once listening, then "OK <webhook-id> <seq>" per accepted
      delivery (seq: data.payload.seq), "BAD <id>" per bad signature.
  publish --port P --topic T --from A --to B
      paho-mqtt: publishes {"seq": i} for i in [A, B) at QoS 1, waits for every
      PUBACK, prints "DONE".
  inbound --url U --secret whsec_...
      POSTs to an inbound hook: good, bad signature, replayed id, stale
      timestamp, and to an unknown hook; prints "<case> <status>".
  ws --port P --path /api/v1/stream?... --token T --count N
      A WebSocket client over a plain socket: prints each text frame's payload,
      exits after N frames.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def key_of(secret):
    return base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret)


def sign(key, msg_id, ts, body):
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def receive(args):
    key = key_of(args.secret)
    lock = threading.Lock()
    state = {"good": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            msg_id = self.headers.get("webhook-id", "")
            ts = self.headers.get("webhook-timestamp", "")
            sigs = self.headers.get("webhook-signature", "").split(" ")
            expected = sign(key, msg_id, ts, body)
            ok = any(hmac.compare_digest(s, expected) for s in sigs)
            if ok and abs(time.time() - int(ts)) > 300:
                ok = False
            with lock:
                if not ok:
                    status = 401
                    print(f"BAD {msg_id}", flush=True)
                else:
                    state["good"] += 1
                    if state["good"] <= args.fail_first:
                        status = 500
                    else:
                        status = 200
                        seq = json.loads(body).get("data", {}).get("payload", {})
                        seq = seq.get("seq") if isinstance(seq, dict) else None
                        print(f"OK {msg_id} {seq}", flush=True)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


def publish(args):
    import paho.mqtt.client as mqtt

    try:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"wh-pub-{os.getpid()}")
    except AttributeError:
        client = mqtt.Client(client_id=f"wh-pub-{os.getpid()}")
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    infos = [client.publish(args.topic, json.dumps({"seq": i}), qos=1) for i in range(args.start, args.to)]
    for info in infos:
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    client.loop_stop()
    client.disconnect()
    print("DONE", flush=True)


def inbound(args):
    key = key_of(args.secret)
    now = int(time.time())
    body = json.dumps({"device": "pump-1", "on": True}).encode()

    def post(case, url, msg_id, ts, sig):
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sig,
        })
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        print(f"{case} {status}", flush=True)

    post("good", args.url, "msg_in_1", now, sign(key, "msg_in_1", now, body))
    post("bad", args.url, "msg_in_2", now, sign(b"another key, not the hook's", "msg_in_2", now, body))
    post("replayed", args.url, "msg_in_1", now, sign(key, "msg_in_1", now, body))
    post("stale", args.url, "msg_in_3", now - 3600, sign(key, "msg_in_3", now - 3600, body))
    unknown = args.url.rsplit("/", 1)[0] + "/nope"
    post("unknown", unknown, "msg_in_4", now, sign(key, "msg_in_4", now, body))


def ws(args):
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {args.token}\r\n\r\n"
    )
    sock.sendall(request.encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit("closed during the handshake")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    print(lines[0], flush=True)
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    if not any(l.lower() == f"sec-websocket-accept: {accept}".lower() for l in lines):
        sys.exit("bad Sec-WebSocket-Accept")
    print("OPEN", flush=True)

    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(4096)
            if not chunk:
                sys.exit("closed")
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out

    got = 0
    while got < args.count:
        b0, b1 = need(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", need(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", need(8))[0]
        payload = need(n)
        op = b0 & 0x0F
        if op == 1:
            print("TEXT " + payload.decode(), flush=True)
            got += 1
        elif op == 8:
            print("CLOSE", flush=True)
            return
    # a masked close frame, as a client must send
    mask = os.urandom(4)
    sock.sendall(bytes([0x88, 0x80]) + mask)
    print("DONE", flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("receive")
    r.add_argument("--port", type=int, default=0)
    r.add_argument("--secret", required=True)
    r.add_argument("--fail-first", type=int, default=0)
    pb = sub.add_parser("publish")
    pb.add_argument("--port", type=int, required=True)
    pb.add_argument("--topic", required=True)
    pb.add_argument("--from", dest="start", type=int, default=0)
    pb.add_argument("--to", type=int, required=True)
    i = sub.add_parser("inbound")
    i.add_argument("--url", required=True)
    i.add_argument("--secret", required=True)
    w = sub.add_parser("ws")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--path", required=True)
    w.add_argument("--token", required=True)
    w.add_argument("--count", type=int, default=1)
    args = p.parse_args()
    {"receive": receive, "publish": publish, "inbound": inbound, "ws": ws}[args.cmd](args)


if __name__ == "__main__":
    main()
