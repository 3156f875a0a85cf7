"""The tutorial's Flask API, as a baseline for bench/ingest.sh: POST /data stores the
JSON body as one row (a connection, an INSERT and a commit per request, SQLite
defaults) and answers {"status": "success"}. Not part of telehub.

    TUTORIAL_DB=readings.db gunicorn -w 2 -b 127.0.0.1:8080 app:app
"""

import json
import os
import sqlite3

from flask import Flask, jsonify, request

DB = os.environ.get("TUTORIAL_DB", "readings.db")
app = Flask(__name__)

with sqlite3.connect(DB) as c:
    c.execute(
        "CREATE TABLE IF NOT EXISTS readings (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT, "
        "temperature REAL, humidity REAL, data TEXT)"
    )


@app.route("/data", methods=["POST"])
def data():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "device_id" not in body:
        return jsonify({"error": "expected a JSON object with device_id"}), 400
    conn = sqlite3.connect(DB)
    try:
        conn.execute(
            "INSERT INTO readings (device_id, temperature, humidity, data) VALUES (?, ?, ?, ?)",
            (body["device_id"], body.get("temperature"), body.get("humidity"), json.dumps(body)),
        )
        conn.commit()
    finally:
        conn.close()
    return jsonify({"status": "success"})
