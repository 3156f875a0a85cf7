//! Commands end to end with the built binary, secure by default: queued and latest-wins
//! commands for an offline device survive `kill -9`; after the restart the device
//! (`mosquitto_sub` with its own token) receives the queued ones in order and only the
//! newest latest-wins value; a short-lived one is reported `expired`; the device's ack on
//! `devices/{id}/commands/ack` moves a command to `succeeded` with its result. And a
//! device without MQTT: the HTTP long-poll and ack with its own token.

mod common;

use std::process::Command;

use common::{Telehub, curl, eventually};
use serde_json::{Value, json};

fn post(hub: &Telehub, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let r = curl(&hub.http_url(path), &["-X", "POST", "-H", "content-type: application/json", "-d", &body]);
    assert!((200..300).contains(&r.status), "POST {path} {body}: {} {}", r.status, r.body);
    r.json()
}

fn get(hub: &Telehub, path: &str) -> Value {
    let r = curl(&hub.http_url(path), &[]);
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.json()
}

/// Registers `device` and returns a new token of it.
fn device_with_token(hub: &Telehub, device: &str) -> String {
    post(hub, "/api/v1/devices", &json!({"id": device}));
    let created = post(hub, &format!("/api/v1/devices/{device}/credentials"), &json!({"kind": "token"}));
    created["token"].as_str().expect("the token is shown on creation").to_owned()
}

fn command(hub: &Telehub, device: &str, body: &Value) -> Value {
    let created = post(hub, &format!("/api/v1/devices/{device}/commands"), body);
    assert_eq!(created["state"], json!("queued"), "{created}");
    created
}

fn state_of(hub: &Telehub, device: &str, id: &str) -> Value {
    get(hub, &format!("/api/v1/devices/{device}/commands/{id}"))
}

fn id_of(cmd: &Value) -> String {
    cmd["id"].as_str().expect("a command id").to_owned()
}

/// `mosquitto_sub`/`mosquitto_pub` (MQTT 3.1.1) as `device` with `token`.
fn mosquitto(program: &str, hub: &Telehub, device: &str, token: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(["-V", "mqttv311", "-h", "127.0.0.1", "-p"]).arg(hub.port().to_string()).args([
        "-u",
        device,
        "-P",
        token,
        "-i",
        &format!("{device}-{program}"),
    ]);
    cmd
}

#[test]
fn queued_commands_survive_kill9_and_reach_the_device_in_order() {
    let hub = Telehub::start_secure_in(tempfile::tempdir().expect("temp dir"), |_| {});
    let token = device_with_token(&hub, "pump-1");
    // the device is offline: three queued, two latest-wins of one key, one short-lived
    let queued: Vec<Value> =
        (1..=3).map(|n| command(&hub, "pump-1", &json!({"payload": {"n": n}, "mode": "queued"}))).collect();
    let valve = |open: bool| json!({"payload": {"open": open}, "mode": "latest_wins", "key": "valve"});
    let old = command(&hub, "pump-1", &valve(true));
    let new = command(&hub, "pump-1", &valve(false));
    let short = command(&hub, "pump-1", &json!({"payload": {"n": 99}, "ttl": "1s"}));

    // "queued" was answered: the commands must survive a crash right after
    let data = hub.kill9();
    let hub = Telehub::start_secure_in(data, |_| {});
    let short_id = id_of(&short);
    eventually("the short-lived command is expired", || {
        state_of(&hub, "pump-1", &short_id)["state"] == json!("expired")
    });
    assert_eq!(state_of(&hub, "pump-1", &id_of(&old))["reason"], json!("superseded"));

    // the device connects: the three in order, then only the newest valve command
    let sub = common::run(mosquitto("mosquitto_sub", &hub, "pump-1", &token).args([
        "-t",
        "devices/pump-1/commands",
        "-q",
        "1",
        "-C",
        "5",
        "-W",
        "4",
    ]));
    let got: Vec<Value> = sub
        .stdout_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let mut want: Vec<Value> =
        queued.iter().map(|c| json!({"id": c["id"], "payload": c["payload"]})).collect();
    want.push(json!({"id": new["id"], "payload": {"open": false}, "key": "valve"}));
    assert_eq!(got, want, "stderr: {}", sub.stderr_text());
    for cmd in queued.iter().chain([&new]) {
        assert_eq!(state_of(&hub, "pump-1", &id_of(cmd))["state"], json!("sent"));
    }

    // the device reports the outcome of the first
    let first = id_of(&queued[0]);
    let ack = json!({"id": first, "status": "succeeded", "result": {"pumped_l": 12}}).to_string();
    let published = common::run(mosquitto("mosquitto_pub", &hub, "pump-1", &token).args([
        "-t",
        "devices/pump-1/commands/ack",
        "-q",
        "1",
        "-m",
        &ack,
    ]));
    assert!(published.status.success(), "{}", published.stderr_text());
    eventually("the ack moves the command to succeeded", || {
        state_of(&hub, "pump-1", &first)["state"] == json!("succeeded")
    });
    let done = state_of(&hub, "pump-1", &first);
    assert_eq!(done["result"], json!({"pumped_l": 12}));
    for stamp in ["queued", "sent", "succeeded"] {
        assert!(done["timestamps"][stamp].is_string(), "{done}");
    }
    let list = get(&hub, "/api/v1/devices/pump-1/commands?state=expired,cancelled");
    let mut ids: Vec<String> = list["commands"].as_array().unwrap().iter().map(id_of).collect();
    ids.sort();
    let mut want_ids = vec![id_of(&old), short_id];
    want_ids.sort();
    assert_eq!(ids, want_ids);
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn an_http_device_long_polls_and_acknowledges_with_its_own_token() {
    let hub = Telehub::start_secure_in(tempfile::tempdir().expect("temp dir"), |_| {});
    let token = device_with_token(&hub, "http-1");
    let auth = format!("Authorization: Bearer {token}");
    let next = hub.http_url("/api/v1/devices/http-1/commands/next?wait=200ms");
    assert_eq!(curl(&next, &["-H", &auth]).status, 204);
    let cmd = command(&hub, "http-1", &json!({"payload": "reboot"}));
    let got = curl(&next, &["-H", &auth]);
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!((&got.json()["id"], &got.json()["state"]), (&cmd["id"], &json!("sent")));
    let ack = hub.http_url(&format!("/api/v1/devices/http-1/commands/{}/ack", id_of(&cmd)));
    let r = curl(
        &ack,
        &[
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"status":"rejected","result":"busy"}"#,
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((&r.json()["state"], &r.json()["result"]), (&json!("rejected"), &json!("busy")));
    // without credentials: 401
    assert_eq!(curl(&next, &["-H", "Authorization:"]).status, 401);
    assert_eq!(hub.stop().status.code(), Some(0));
}
