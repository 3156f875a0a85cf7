//! The night-light lesson with telehub's rules as the server, end to end with the built
//! binary: a Python paho-mqtt device publishes `{"light": …}` to `nl-1/telemetry` and
//! receives `{"led_on": true}` / `{"led_on": false}` on `nl-1/commands` from two rules,
//! once per crossing. The rules are POSTed through the API in one test and read from a
//! config file in the other.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Telehub, curl, python};
use serde_json::{Value, json};

const NIGHT_LIGHT_TOML: &str = r#"
[[rules]]
name = "night-light-on"
filter = "+/telemetry"
condition = "msg.light < 300"
once_per_crossing = true
actions = [{ type = "command", topic = "{device}/commands", payload = { led_on = true } }]

[[rules]]
name = "night-light-off"
filter = "+/telemetry"
condition = "msg.light >= 300"
once_per_crossing = true
actions = [{ type = "command", topic = "{device}/commands", payload = { led_on = false } }]
"#;

/// Runs the device: readings 250 (dark: LED on), 260 (still dark: nothing new), 400
/// (bright: LED off); returns the commands it received, in order.
fn night_light_device(hub: &Telehub, id: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/nightlight_rules_device.py");
    let mut cmd = Command::new(python());
    cmd.arg("-u")
        .arg(path)
        .arg("127.0.0.1")
        .arg(hub.port().to_string())
        .args([id, "1.0", "250", "260", "400"]);
    let f = common::run(&mut cmd);
    assert!(
        f.status.success(),
        "the device failed: {:?}\n{}\n{}",
        f.status,
        f.stdout_text(),
        f.stderr_text()
    );
    let line = f
        .stdout
        .iter()
        .find_map(|l| l.strip_prefix("COMMANDS "))
        .unwrap_or_else(|| panic!("no COMMANDS line:\n{}", f.stdout_text()));
    serde_json::from_str(line).unwrap()
}

fn assert_night_light(hub: &Telehub) {
    let got = night_light_device(hub, "nl-1");
    assert_eq!(got, [json!({"led_on": true}), json!({"led_on": false})], "one command per crossing");
    for name in ["night-light-on", "night-light-off"] {
        let rule = curl(&hub.http_url(&format!("/api/v1/rules/{name}")), &[]);
        assert_eq!(rule.status, 200, "{}", rule.body);
        let rule = rule.json();
        assert_eq!(rule["stats"]["firings"], 1, "{rule}");
        assert_eq!(rule["stats"]["recent_firings"][0]["device"], "nl-1", "{rule}");
    }
}

#[test]
fn night_light_rules_posted_through_the_api_command_the_led_once_per_crossing() {
    let hub = Telehub::start();
    let toml_rules: toml::Value = toml::from_str(NIGHT_LIGHT_TOML).unwrap();
    for rule in toml_rules["rules"].as_array().unwrap() {
        let body = serde_json::to_string(rule).unwrap();
        let a = curl(
            &hub.http_url("/api/v1/rules"),
            &["-X", "POST", "-H", "Content-Type: application/json", "-d", &body],
        );
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.json()["source"], "api");
    }
    // a bad condition is refused with its position
    let bad = r##"{"name": "bad", "filter": "#", "condition": "msg.light <"}"##;
    let a = curl(
        &hub.http_url("/api/v1/rules"),
        &["-X", "POST", "-H", "Content-Type: application/json", "-d", bad],
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.content_type, "application/problem+json");
    assert_eq!(a.json()["field"], "condition");
    assert_eq!(a.json()["line"], 1);

    assert_night_light(&hub);
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn night_light_rules_from_the_config_file_command_the_led_once_per_crossing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("telehub.toml");
    std::fs::write(&config, NIGHT_LIGHT_TOML).unwrap();
    let hub = Telehub::start_with(|cmd| {
        cmd.arg("--config").arg(&config);
    });
    let list = curl(&hub.http_url("/api/v1/rules"), &[]).json();
    let sources: Vec<&Value> = list["rules"].as_array().unwrap().iter().map(|r| &r["source"]).collect();
    assert_eq!(sources, [&json!("config"), &json!("config")], "{list}");
    assert_night_light(&hub);
    // read-only through the API
    let a = curl(&hub.http_url("/api/v1/rules/night-light-on"), &["-X", "DELETE"]);
    assert_eq!(a.status, 409, "{}", a.body);
    assert_eq!(hub.stop().status.code(), Some(0));
}
