//! The tutorial flows against the built `telehub` storing telemetry in PostgreSQL
//! (`--database-url $TELEHUB_TEST_POSTGRES_URL`), driven by clients we did not write:
//! Eclipse Paho publishing the Raspberry Pi reading on `sensor/data`, `curl` posting the
//! Flask tutorial's `/data` body and batches of points with explicit times, then the
//! query API (latest, raw points, aggregates, CSV) answering from PostgreSQL.
//!
//! Without `TELEHUB_TEST_POSTGRES_URL` each test prints a SKIPPED line and passes, unless
//! `CI` is set (then it fails: CI always starts `scripts/postgres.sh`). The database
//! outlives the tests, so every device id carries a per-run suffix.

mod common;

use common::{Reply, Telehub, curl};
use serde_json::json;

/// telehub on PostgreSQL, or `None` after printing why not.
fn start(test: &str) -> Option<Telehub> {
    let url = common::postgres_url(test)?;
    let hub = Telehub::start_with(|cmd| {
        cmd.arg("--database-url").arg(&url);
    });
    hub.expect_log("the start-up line naming PostgreSQL", |l| {
        l.contains("telehub started") && l.contains("\"store\":\"postgres\"")
    });
    Some(hub)
}

fn post(hub: &Telehub, path: &str, content_type: &str, body: &str) -> Reply {
    let header = format!("Content-Type: {content_type}");
    curl(&hub.http_url(path), &["-X", "POST", "-H", &header, "--data-binary", body])
}

fn get(hub: &Telehub, path: &str) -> Reply {
    let reply = curl(&hub.http_url(path), &[]);
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    reply
}

/// The entry for `device` in `GET /api/v1/devices` (the database holds other runs' too).
fn device_entry(hub: &Telehub, device: &str) -> serde_json::Value {
    let devices = get(hub, "/api/v1/devices").json();
    devices["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["id"] == device)
        .unwrap_or_else(|| panic!("{device} is not listed: {devices}"))
        .clone()
}

#[test]
fn paho_tutorial_reading_on_sensor_data_is_stored_in_postgres_with_the_exact_values() {
    let Some(hub) = start("paho_tutorial_reading_on_sensor_data_is_stored_in_postgres_with_the_exact_values")
    else {
        return;
    };
    let device = format!("raspi-01-{}", common::unique_suffix());
    let mut cmd = common::python_script("raspi_publisher_qos1.py");
    cmd.args(["127.0.0.1", &hub.port().to_string(), &device]);
    let f = common::run(&mut cmd);
    assert!(f.status.success(), "publisher: {:?}\n{}\n{}", f.status, f.stdout_text(), f.stderr_text());

    // acknowledged, so committed: readable at once
    let latest = get(&hub, &format!("/api/v1/devices/{device}/latest")).json();
    assert_eq!(latest["values"]["temperature"]["value"], 25.5);
    assert_eq!(latest["values"]["humidity"]["value"], 60.3);
    assert_eq!(latest["document"], json!({"device_id": device, "temperature": 25.5, "humidity": 60.3}));

    let page = get(&hub, &format!("/api/v1/devices/{device}/telemetry?metric=temperature,humidity")).json();
    let points = page["points"].as_array().expect("points");
    assert_eq!(points.len(), 2, "{page}");
    assert_eq!((&points[0]["metric"], &points[0]["value"]), (&json!("humidity"), &json!(60.3)));
    assert_eq!((&points[1]["metric"], &points[1]["value"]), (&json!("temperature"), &json!(25.5)));
    assert_eq!(points[0]["ts"], points[1]["ts"], "one reading, one time");
    assert_eq!(page["next"], json!(null));

    let entry = device_entry(&hub, &device);
    assert_eq!(entry["metrics"], json!(["humidity", "temperature"]));
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn curl_post_data_is_answered_success_and_queryable_from_postgres() {
    let Some(hub) = start("curl_post_data_is_answered_success_and_queryable_from_postgres") else {
        return;
    };
    let device = format!("raspi-02-{}", common::unique_suffix());
    let body = json!({"device_id": device, "temperature": 25.5, "humidity": 60.3}).to_string();
    let r = post(&hub, "/data", "application/json", &body);
    assert_eq!((r.status, r.json()), (200, json!({"status": "success"})));

    let latest = get(&hub, &format!("/api/v1/devices/{device}/latest")).json();
    assert_eq!(latest["values"]["temperature"]["value"], 25.5);
    assert_eq!(latest["values"]["humidity"]["value"], 60.3);
    assert_eq!(latest["document"], json!({"device_id": device, "temperature": 25.5, "humidity": 60.3}));

    let csv =
        get(&hub, &format!("/api/v1/devices/{device}/telemetry?metric=temperature,humidity&format=csv"));
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines.len(), 3, "{}", csv.body);
    assert_eq!(lines[0], "ts,metric,value");
    assert!(lines[1].ends_with(",humidity,60.3") && lines[2].ends_with(",temperature,25.5"), "{}", csv.body);

    let entry = device_entry(&hub, &device);
    assert_eq!(entry["metrics"], json!(["humidity", "temperature"]));

    // a bad body: the tutorial's error shape, nothing stored
    let r = post(&hub, "/data", "application/json", r#"{"temperature": 25.5}"#);
    assert_eq!((r.status, r.json()), (400, json!({"error": "missing `device_id`"})));
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn curl_points_with_explicit_times_aggregate_exactly_in_postgres() {
    let Some(hub) = start("curl_points_with_explicit_times_aggregate_exactly_in_postgres") else {
        return;
    };
    let device = format!("line-3-{}", common::unique_suffix());
    let path = format!("/api/v1/devices/{device}/telemetry");
    // 2024-05-01T12:00:00Z + 0 s, 30 s, 60 s, 90 s, and 13:00:00Z; out of order
    let batch = json!([
        {"ts": 1_714_564_860_000_i64, "t": 10, "msg_id": "c"},
        {"ts": "2024-05-01T12:00:00Z", "t": 1, "msg_id": "a"},
        {"ts": 1_714_564_830_000_i64, "t": 3, "msg_id": "b"},
        {"ts": "2024-05-01T12:01:30.000Z", "t": 20, "msg_id": "d"},
        {"ts": "2024-05-01T13:00:00Z", "t": -4.5, "msg_id": "e"},
    ])
    .to_string();
    let r = post(&hub, &path, "application/json", &batch);
    assert_eq!((r.status, r.json()), (200, json!({"records": 5, "points": 5})));
    // the same messages again (a replayed backlog) are stored once
    let r = post(&hub, &path, "application/json", &batch);
    assert_eq!(r.status, 200, "{}", r.body);

    let raw = get(&hub, &format!("{path}?metric=t&format=csv"));
    assert_eq!(
        raw.body,
        "ts,metric,value\n2024-05-01T12:00:00Z,t,1\n2024-05-01T12:00:30Z,t,3\n\
         2024-05-01T12:01:00Z,t,10\n2024-05-01T12:01:30Z,t,20\n2024-05-01T13:00:00Z,t,-4.5\n"
    );

    let minutes = get(
        &hub,
        &format!(
            "{path}?metric=t&step=1m&agg=mean,min,max,sum,count,last\
             &from=2024-05-01T12:00:00Z&to=2024-05-01T14:00:00Z"
        ),
    )
    .json();
    assert_eq!(minutes["step"], "1m");
    assert!(minutes["resolution"].is_string(), "the answer says its resolution: {minutes}");
    assert_eq!(
        minutes["buckets"],
        json!([
            {"metric": "t", "start": "2024-05-01T12:00:00Z", "mean": 2.0, "min": 1.0, "max": 3.0, "sum": 4.0, "count": 2, "last": 3.0},
            {"metric": "t", "start": "2024-05-01T12:01:00Z", "mean": 15.0, "min": 10.0, "max": 20.0, "sum": 30.0, "count": 2, "last": 20.0},
            {"metric": "t", "start": "2024-05-01T13:00:00Z", "mean": -4.5, "min": -4.5, "max": -4.5, "sum": -4.5, "count": 1, "last": -4.5},
        ])
    );

    // whole hours: the hourly buckets agree with the points (whichever resolution answers)
    let hours = get(&hub, &format!("{path}?metric=t&step=1h&agg=mean,min,max,sum,count,last&format=csv"));
    assert_eq!(
        hours.body,
        "start,metric,mean,min,max,sum,count,last\n\
         2024-05-01T12:00:00Z,t,8.5,1,20,34,4,20\n\
         2024-05-01T13:00:00Z,t,-4.5,-4.5,-4.5,-4.5,1,-4.5\n"
    );

    // `from` is inclusive, `to` exclusive (both as Unix ms here)
    let part =
        get(&hub, &format!("{path}?metric=t&step=1m&agg=count,sum&from=1714564800000&to=1714564860000"))
            .json();
    assert_eq!(
        part["buckets"],
        json!([{"metric": "t", "start": "2024-05-01T12:00:00Z", "count": 2, "sum": 4.0}])
    );

    let latest = get(&hub, &format!("/api/v1/devices/{device}/latest")).json();
    assert_eq!(latest["values"]["t"]["value"], -4.5);
    assert_eq!(latest["values"]["t"]["ts"], "2024-05-01T13:00:00Z");
    assert_eq!(hub.stop().status.code(), Some(0));
}
