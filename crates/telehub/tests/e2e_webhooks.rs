//! Webhooks and live streams with the built binary, against programs that share no code
//! with telehub (`tests/python/webhook_tools.py`: its own HMAC and WebSocket framing,
//! paho-mqtt; curl; mosquitto_sub):
//!
//! * outbound: a receiver that verifies signatures and fails the first deliveries, then
//!   goes down while messages keep coming and telehub is `kill -9`ed with deliveries
//!   pending: every message is delivered once the receiver is back (zero loss);
//! * dead letters after the maximum age, and replay delivers them with their ids;
//! * inbound: good, bad, replayed and stale signatures, an unknown hook; only the good
//!   one is published;
//! * live streams over SSE (curl -N) and WebSocket;
//! * a rule's `webhook` action goes through the outbox (signed like the rest) and its
//!   `command` action through the command service (stored, queued for an offline device).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{Proc, Telehub, curl, eventually, python_script};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A config file in the test's temp dir with fast retries.
fn config_file(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("telehub-test.toml");
    let text = format!(
        "[webhooks]\ntimeout = \"2s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n\
         breaker_failures = 3\nbreaker_cooldown = \"1s\"\npoll_interval = \"100ms\"\n{extra}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start(data: tempfile::TempDir, config: &Path) -> Telehub {
    let config = config.to_owned();
    Telehub::start_in(data, move |cmd: &mut Command| {
        cmd.arg("--config").arg(config);
    })
}

/// The Python receiver on `port` (0: any); returns it and its port.
fn receiver(port: u16, fail_first: u32) -> (Proc, u16) {
    let proc = Proc::spawn(python_script("webhook_tools.py").args([
        "receive",
        "--port",
        &port.to_string(),
        "--secret",
        SECRET,
        "--fail-first",
        &fail_first.to_string(),
    ]));
    let line = proc.expect_stdout("the receiver listening", |l| l.starts_with("PORT "));
    (proc, line[5..].trim().parse().unwrap())
}

/// The distinct `seq`s a receiver accepted; panics on a bad signature.
fn accepted(rx: &Proc) -> BTreeSet<u64> {
    let lines = rx.stdout().snapshot();
    assert!(!lines.iter().any(|l| l.starts_with("BAD")), "bad signatures: {lines:?}");
    lines.iter().filter_map(|l| l.strip_prefix("OK ")?.split(' ').nth(1)?.parse().ok()).collect()
}

fn publish(hub: &Telehub, topic: &str, from: u32, to: u32) {
    let f = common::run(python_script("webhook_tools.py").args([
        "publish",
        "--port",
        &hub.port().to_string(),
        "--topic",
        topic,
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
    ]));
    assert!(f.stdout_text().contains("DONE"), "{}\n{}", f.stdout_text(), f.stderr_text());
}

fn create_webhook(hub: &Telehub, body: &str) -> String {
    let r = curl(
        &hub.http_url("/api/v1/webhooks"),
        &["-X", "POST", "-H", "content-type: application/json", "-d", body],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_str().unwrap().to_owned()
}

fn deliveries(hub: &Telehub, id: &str, status: &str) -> Vec<serde_json::Value> {
    let r = curl(&hub.http_url(&format!("/api/v1/webhooks/{id}/deliveries?status={status}&limit=1000")), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["deliveries"].as_array().unwrap().clone()
}

#[test]
fn zero_loss_across_failures_a_receiver_outage_and_kill9() {
    let data = tempfile::tempdir().unwrap();
    let config = config_file(data.path(), "max_age = \"10m\"");
    let hub = start(data, &config);
    let (rx, port) = receiver(0, 3);
    let body =
        format!(r#"{{"url":"http://127.0.0.1:{port}/in","topics":["sensors/#"],"secret":"{SECRET}"}}"#);
    let id = create_webhook(&hub, &body);
    // the first 3 attempts fail (500): retried
    publish(&hub, "sensors/a/temp", 0, 50);
    eventually("50 delivered", || accepted(&rx).len() == 50);
    assert_eq!(accepted(&rx), (0..50).collect());
    // the receiver goes away; 50 more wait in the outbox
    drop(rx);
    publish(&hub, "sensors/a/temp", 50, 100);
    eventually("50 pending", || deliveries(&hub, &id, "pending").len() == 50);
    let data = hub.kill9();
    let hub = start(data, &config);
    assert_eq!(deliveries(&hub, &id, "pending").len(), 50, "pending deliveries survive kill -9");
    let (rx, _) = receiver(port, 0);
    eventually("the other 50 delivered after the restart", || accepted(&rx).len() == 50);
    assert_eq!(accepted(&rx), (50..100).collect(), "nothing lost");
    eventually("all 100 recorded delivered", || deliveries(&hub, &id, "delivered").len() == 100);
    assert!(deliveries(&hub, &id, "dead").is_empty());
    let view = curl(&hub.http_url(&format!("/api/v1/webhooks/{id}")), &[]).json();
    assert_eq!(view["breaker"], "closed");
    assert!(!view.to_string().contains(SECRET), "secrets are shown as hints");
}

#[test]
fn dead_letters_after_the_maximum_age_and_replay() {
    let data = tempfile::tempdir().unwrap();
    let config = config_file(data.path(), "max_age = \"2s\"");
    let hub = start(data, &config);
    // a port with nobody listening (taken, then freed)
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let body = format!(r#"{{"url":"http://127.0.0.1:{port}/in","topic":"alerts/#","secret":"{SECRET}"}}"#);
    let id = create_webhook(&hub, &body);
    publish(&hub, "alerts/x", 0, 3);
    eventually("3 dead", || deliveries(&hub, &id, "dead").len() == 3);
    let dead = deliveries(&hub, &id, "dead");
    // refused connections, then held by the open breaker until the maximum age
    let errors: Vec<&str> = dead.iter().map(|d| d["last_error"].as_str().unwrap()).collect();
    assert!(errors.iter().any(|e| e.contains("connection")), "{errors:?}");
    assert!(errors.iter().all(|e| e.contains("connection") || e.contains("circuit open")), "{errors:?}");
    let (rx, _) = receiver(port, 0);
    let r = curl(&hub.http_url(&format!("/api/v1/webhooks/{id}/deliveries/replay")), &["-X", "POST"]);
    assert_eq!((r.status, r.json()["replayed"].as_u64()), (200, Some(3)), "{}", r.body);
    eventually("the replayed 3 delivered", || accepted(&rx).len() == 3);
    let ids: BTreeSet<String> = dead.iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
    let got: BTreeSet<String> = rx
        .stdout()
        .snapshot()
        .iter()
        .filter_map(|l| Some(l.strip_prefix("OK ")?.split(' ').next()?.to_owned()))
        .collect();
    assert_eq!(got, ids, "delivered with their webhook-ids");
    eventually("none dead", || deliveries(&hub, &id, "dead").is_empty());
}

#[test]
fn inbound_hooks_publish_only_well_signed_fresh_requests() {
    let data = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[webhooks.inbound]]\nname = \"ext\"\nsecret = \"{SECRET}\"\ntopic = \"devices/{{device}}/commands\"\ntolerance = \"5m\"\n"
    );
    let config = config_file(data.path(), &extra);
    let hub = start(data, &config);
    let sub = Proc::spawn(Command::new("mosquitto_sub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &hub.port().to_string(),
        "-V",
        "mqttv5",
        "-t",
        "devices/+/commands",
        "-v",
    ]));
    // the subscription is in place once a retained-free probe arrives
    eventually("the subscriber receives", || {
        common::run(Command::new("mosquitto_pub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &hub.port().to_string(),
            "-t",
            "devices/probe/commands",
            "-m",
            "probe",
        ]));
        sub.stdout().snapshot().iter().any(|l| l.contains("probe"))
    });
    let f = common::run(python_script("webhook_tools.py").args([
        "inbound",
        "--url",
        &hub.http_url("/hooks/ext"),
        "--secret",
        SECRET,
    ]));
    let out = f.stdout_text();
    for expected in ["good 200", "bad 401", "replayed 400", "stale 400", "unknown 404"] {
        assert!(out.lines().any(|l| l == expected), "{expected}: {out}\n{}", f.stderr_text());
    }
    eventually("the good one published", || {
        sub.stdout()
            .snapshot()
            .iter()
            .any(|l| l.starts_with("devices/pump-1/commands ") && l.contains("\"on\": true"))
    });
    let published: Vec<String> =
        sub.stdout().snapshot().into_iter().filter(|l| l.starts_with("devices/pump-1/")).collect();
    assert_eq!(published.len(), 1, "only the good request was published: {published:?}");
}

#[test]
fn live_streams_over_sse_and_websocket() {
    let hub = Telehub::start();
    let bad = curl(&hub.http_url("/api/v1/stream?topic=a/%23/b"), &[]);
    assert_eq!(bad.status, 400, "{}", bad.body);
    let token = format!("Authorization: Bearer {}", common::ADMIN_TOKEN);
    let sse = Proc::spawn(Command::new("curl").args([
        "-sN",
        "--max-time",
        "20",
        "-H",
        &token,
        &hub.http_url("/api/v1/stream?topic=sensors/%2B/temp"),
    ]));
    let ws = Proc::spawn(python_script("webhook_tools.py").args([
        "ws",
        "--port",
        &hub.http_port().to_string(),
        "--path",
        "/api/v1/stream?topic=sensors/%2B/temp",
        "--token",
        common::ADMIN_TOKEN,
        "--count",
        "2",
    ]));
    ws.expect_stdout("the WebSocket open", |l| l == "OPEN");
    // until both streams are subscribed, messages may pass them by: publish until seen
    let mut n = 0;
    eventually("a message on both streams", || {
        n += 1;
        publish(&hub, "sensors/s1/temp", n, n + 1);
        let sse_seen =
            sse.stdout().snapshot().iter().any(|l| l.starts_with("data:") && l.contains("\"seq\""));
        let ws_seen = ws.stdout().snapshot().iter().any(|l| l.starts_with("TEXT "));
        sse_seen && ws_seen
    });
    publish(&hub, "other/topic", 0, 1);
    publish(&hub, "sensors/s1/temp", 1000, 1001);
    ws.expect_stdout("the second WebSocket frame", |l| l.contains("\"seq\":1000"));
    sse.expect_stdout("the SSE event of seq 1000", |l| l.contains("\"seq\":1000"));
    let lines = sse.stdout().snapshot();
    assert!(lines.iter().any(|l| l == "event: message"), "{lines:?}");
    let data: serde_json::Value = serde_json::from_str(
        lines.iter().find(|l| l.contains("\"seq\":1000")).unwrap().strip_prefix("data: ").unwrap(),
    )
    .unwrap();
    assert_eq!(data["topic"], "sensors/s1/temp");
    assert_eq!(data["payload"]["seq"], 1000);
    assert_eq!(data["qos"], 1);
    assert!(!lines.iter().any(|l| l.contains("other/topic")));
    let frame = ws.stdout().snapshot().into_iter().find(|l| l.contains("\"seq\":1000")).unwrap();
    let frame: serde_json::Value = serde_json::from_str(frame.strip_prefix("TEXT ").unwrap()).unwrap();
    assert_eq!(frame["topic"], "sensors/s1/temp");
    let stats = curl(&hub.http_url("/api/v1/webhooks/stats"), &[]).json();
    assert!(stats["streams_open"].as_u64().unwrap() >= 1, "{stats}");
    // streams end at shutdown: telehub stops within its grace period
    let finished = hub.stop();
    assert!(finished.status.success(), "{}", finished.stderr_text());
}

#[test]
fn a_rules_webhook_and_command_actions_use_the_outbox_and_the_command_service() {
    let data = tempfile::tempdir().unwrap();
    let config = config_file(data.path(), "");
    let hub = start(data, &config);
    let (rx, port) = receiver(0, 1);
    // no topics of its own: only the rule sends to it
    let hook = create_webhook(
        &hub,
        &format!(r#"{{"url":"http://127.0.0.1:{port}/in","events":["alert.raised"],"secret":"{SECRET}"}}"#),
    );
    let r = curl(&hub.http_url("/api/v1/devices"), &["-X", "POST", "-d", r#"{"id":"pump-1"}"#]);
    assert_eq!(r.status, 201, "{}", r.body);
    let rule = serde_json::json!({
        "name": "forward",
        "filter": "sensors/+/temp",
        "condition": "msg.seq >= 0",
        "actions": [
            {"type": "webhook", "webhook": hook, "payload": {"payload": {"seq": "${msg.seq}"}}},
            {"type": "command", "device": "pump-1", "mode": "queued", "ttl": "10m",
             "payload": {"seq": "${msg.seq}"}}
        ]
    });
    let r = curl(&hub.http_url("/api/v1/rules"), &["-X", "POST", "-d", &rule.to_string()]);
    assert_eq!(r.status, 201, "{}", r.body);
    publish(&hub, "sensors/a/temp", 0, 5);
    // the first attempt fails (500) and is retried from the outbox
    eventually("5 rule deliveries", || accepted(&rx).len() == 5);
    assert_eq!(accepted(&rx), (0..5).collect());
    eventually("5 delivered", || deliveries(&hub, &hook, "delivered").len() == 5);
    let types: BTreeSet<String> = deliveries(&hub, &hook, "delivered")
        .iter()
        .map(|d| d["event_type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(types, BTreeSet::from(["rule.fired".to_owned()]), "typed as rule firings");
    // pump-1 is offline: five queued commands, in the order of the readings
    let r = curl(&hub.http_url("/api/v1/devices/pump-1/commands"), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json();
    let cmds = list["commands"].as_array().unwrap_or_else(|| panic!("{list}"));
    let mut seqs: Vec<(i64, String)> = cmds
        .iter()
        .map(|c| {
            assert_eq!(c["state"], "queued", "{c}");
            assert_eq!(c["mode"], "queued", "{c}");
            (c["seq"].as_i64().unwrap(), c["payload"]["seq"].to_string())
        })
        .collect();
    seqs.sort();
    let payloads: Vec<&str> = seqs.iter().map(|(_, p)| p.trim_matches('"')).collect();
    assert_eq!(payloads, ["0", "1", "2", "3", "4"]);
    let stats = curl(&hub.http_url("/api/v1/rules/forward"), &[]).json();
    assert_eq!(stats["stats"]["firings"], 5, "{stats}");
    assert_eq!(stats["stats"]["errors"], 0, "{stats}");
}
