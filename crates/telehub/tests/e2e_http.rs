//! End-to-end tests of the HTTP API of the built `telehub`, driven by clients we did not
//! write: the Flask tutorial's device code (Python `requests`, `tests/python/`) and `curl`
//! (ingest in JSON and NDJSON, the query API, CSV export, 400/404/413 answers, health
//! checks), plus MQTT telemetry from `mosquitto_pub` read back over HTTP.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Reply, Telehub, curl};
use serde_json::json;

fn post(hub: &Telehub, path: &str, content_type: &str, body: &str) -> Reply {
    let header = format!("Content-Type: {content_type}");
    curl(&hub.http_url(path), &["-X", "POST", "-H", &header, "--data-binary", body])
}

/// `python3 tests/python/http_post_data.py 127.0.0.1 <http port> [body]`: the tutorial's
/// `requests.post`. Returns the status code and the JSON answer as Python printed them.
fn tutorial_post(hub: &Telehub, body: Option<&str>) -> (String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/http_post_data.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script).arg("127.0.0.1").arg(hub.http_port().to_string()).args(body);
    let f = common::run(&mut cmd);
    assert!(
        f.status.success(),
        "the tutorial script failed (is python3-requests installed?): {:?}\n{}\n{}",
        f.status,
        f.stdout_text(),
        f.stderr_text()
    );
    (f.stdout[0].clone(), f.stdout[1].clone())
}

#[test]
fn tutorial_requests_post_is_stored_and_the_query_api_returns_the_exact_values() {
    let hub = Telehub::start();
    let (status, answer) = tutorial_post(&hub, None);
    assert_eq!((status.as_str(), answer.as_str()), ("200", "{'status': 'success'}"));

    let devices = curl(&hub.http_url("/api/v1/devices"), &[]).json();
    assert_eq!(devices["devices"][0]["id"], "raspi-01");
    assert_eq!(devices["devices"][0]["metrics"], json!(["humidity", "temperature"]));

    let latest = curl(&hub.http_url("/api/v1/devices/raspi-01/latest"), &[]).json();
    assert_eq!(latest["values"]["temperature"]["value"], 25.5);
    assert_eq!(latest["values"]["humidity"]["value"], 60.3);
    assert_eq!(latest["document"], json!({"device_id": "raspi-01", "temperature": 25.5, "humidity": 60.3}));

    let csv =
        curl(&hub.http_url("/api/v1/devices/raspi-01/telemetry?metric=temperature,humidity&format=csv"), &[]);
    assert_eq!((csv.status, csv.content_type.as_str()), (200, "text/csv; charset=utf-8"));
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines[0], "ts,metric,value");
    assert_eq!(lines.len(), 3, "{}", csv.body);
    assert!(lines[1].ends_with(",humidity,60.3") && lines[2].ends_with(",temperature,25.5"), "{}", csv.body);
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn tutorial_bad_bodies_get_400_with_the_error() {
    let hub = Telehub::start();
    let (status, answer) = tutorial_post(&hub, Some("temperature=25.5"));
    assert_eq!(status, "400");
    assert!(answer.starts_with("{'error': 'invalid JSON"), "{answer}");
    let (status, answer) = tutorial_post(&hub, Some(r#"{"temperature": 25.5}"#));
    assert_eq!((status.as_str(), answer.as_str()), ("400", "{'error': 'missing `device_id`'}"));
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn curl_ndjson_ingest_then_raw_and_aggregate_csv_export() {
    let hub = Telehub::start();
    // 2024-05-01T12:00:00Z + 0 s, 30 s, 60 s, 90 s
    let ndjson = "{\"ts\": 1714564800000, \"t\": 1, \"msg_id\": \"a\"}\n\
                  {\"ts\": \"2024-05-01T12:00:30Z\", \"t\": 3, \"msg_id\": \"b\"}\n\
                  {\"ts\": 1714564860000, \"t\": 10, \"msg_id\": \"c\"}\n\
                  {\"ts\": 1714564890000, \"t\": 20, \"msg_id\": \"d\"}\n";
    let r = post(&hub, "/api/v1/devices/line-3/telemetry", "application/x-ndjson", ndjson);
    assert_eq!((r.status, r.json()), (200, json!({"records": 4, "points": 4})));
    // a replay of the same messages is stored once
    let r = post(&hub, "/api/v1/devices/line-3/telemetry", "application/x-ndjson", ndjson);
    assert_eq!(r.status, 200, "{}", r.body);

    let raw = curl(&hub.http_url("/api/v1/devices/line-3/telemetry?metric=t&format=csv"), &[]);
    assert_eq!(
        raw.body,
        "ts,metric,value\n2024-05-01T12:00:00Z,t,1\n2024-05-01T12:00:30Z,t,3\n\
         2024-05-01T12:01:00Z,t,10\n2024-05-01T12:01:30Z,t,20\n"
    );
    let agg = curl(
        &hub.http_url(
            "/api/v1/devices/line-3/telemetry?metric=t&step=1m&agg=mean,min,max,sum,count,last&format=csv\
             &from=2024-05-01T12:00:00Z&to=1714564920000",
        ),
        &[],
    );
    assert_eq!(
        agg.body,
        "start,metric,mean,min,max,sum,count,last\n\
         2024-05-01T12:00:00Z,t,2,1,3,4,2,3\n\
         2024-05-01T12:01:00Z,t,15,10,20,30,2,20\n"
    );
    let json = curl(&hub.http_url("/api/v1/devices/line-3/telemetry?metric=t&step=1m&agg=max"), &[]).json();
    assert!(json["resolution"].is_string(), "the answer says its resolution: {json}");
    assert_eq!(json["buckets"][1]["max"], 20.0);
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn curl_gets_problem_answers_for_bad_json_unknown_devices_and_oversized_bodies() {
    let hub = Telehub::start_with(|cmd| {
        cmd.env("TELEHUB_HTTP__MAX_BODY_BYTES", "1024");
    });
    let r = post(&hub, "/api/v1/devices/d/telemetry", "application/json", "{\"t\": 1,}");
    assert_eq!((r.status, r.content_type.as_str()), (400, "application/problem+json"));
    assert_eq!(r.json()["detail"], "invalid JSON: trailing comma at line 1 column 9");

    let r = curl(&hub.http_url("/api/v1/devices/nobody/latest"), &[]);
    assert_eq!((r.status, r.content_type.as_str()), (404, "application/problem+json"));

    let big = format!("{{\"device_id\": \"d\", \"pad\": \"{}\"}}", "x".repeat(4096));
    let r = post(&hub, "/api/v1/devices/d/telemetry", "application/json", &big);
    assert_eq!((r.status, r.content_type.as_str()), (413, "application/problem+json"), "{}", r.body);
    let r = post(&hub, "/data", "application/json", &big);
    assert_eq!(r.status, 413);
    assert_eq!(r.json(), json!({"error": "the body is larger than 1024 bytes"}));

    let r = curl(&hub.http_url("/healthz"), &[]);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let r = curl(&hub.http_url("/readyz"), &[]);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ready"})));
    assert_eq!(hub.stop().status.code(), Some(0));
}

/// The broker acknowledges a mapped QoS 1 message only after its points are committed,
/// so they are readable over HTTP as soon as `mosquitto_pub` has its PUBACK.
#[test]
fn mqtt_telemetry_acknowledged_by_the_broker_is_readable_over_http() {
    let hub = Telehub::start();
    let publish = |topic: &str, payload: &str| {
        let f = common::run(
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p"])
                .arg(hub.port().to_string())
                .args(["-q", "1", "-t", topic, "-m", payload]),
        );
        assert!(f.status.success(), "mosquitto_pub failed: {}", f.stderr_text());
    };
    publish("sensor/data", r#"{"device_id": "raspi-01", "temperature": 25.5, "humidity": 60.3}"#);
    publish("nightlight-1/telemetry", r#"{"light": 400}"#);
    publish("devices/pump-9/telemetry", r#"{"ts": "2024-05-01T12:00:00Z", "pressure": 2.5, "on": true}"#);
    publish("nightlight-1/telemetry", "not json"); // counted, not stored, no disconnect

    let latest = curl(&hub.http_url("/api/v1/devices/raspi-01/latest"), &[]).json();
    assert_eq!(latest["values"]["temperature"]["value"], 25.5);
    let latest = curl(&hub.http_url("/api/v1/devices/nightlight-1/latest"), &[]).json();
    assert_eq!(latest["values"]["light"]["value"], 400.0);
    let page = curl(&hub.http_url("/api/v1/devices/pump-9/telemetry"), &[]).json();
    assert_eq!(
        page["points"],
        json!([
            {"metric": "on", "ts": "2024-05-01T12:00:00Z", "value": 1.0},
            {"metric": "pressure", "ts": "2024-05-01T12:00:00Z", "value": 2.5},
        ])
    );
    assert_eq!(hub.stop().status.code(), Some(0));
}
