//! The rules service against a real SQLite store (the `Store` enum) and broker (testkit):
//! a publish action reaches a subscriber (marked, and not evaluated again), the night-light
//! commands once per crossing, an alert raised and cleared (list and events), webhooks not
//! wired counted, API-made rules surviving a restart, config rules read-only.

use std::future::Future;
use std::time::Duration;

use telehub_broker::{IngestAck, IngestHook};
use telehub_core::ClientId;
use telehub_store::Store;
use telehub_testkit::{Connect, PropertyValue, Publish, RawClient, TestBroker, Version};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::*;
use crate::events::Tap;

struct Nothing;

impl IngestHook for Nothing {
    fn offer(&self, _: Option<&ClientId>, _: &Arc<Message>) -> Option<IngestAck> {
        None
    }
}

fn spec(toml_text: &str) -> RuleSpec {
    toml::from_str(toml_text).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    broker: TestBroker,
    rules: Rules<Store>,
    events: Events,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn fixture(from_file: Vec<RuleSpec>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    fixture_in(dir, from_file).await
}

async fn fixture_in(dir: tempfile::TempDir, from_file: Vec<RuleSpec>) -> Fixture {
    let store = Arc::new(Store::open(&telehub_store::Config::default(), dir.path()).await.unwrap());
    let events = Events::new(64);
    let rules = Rules::open(store.clone(), EngineConfig::default(), from_file, events.clone()).await.unwrap();
    let mut tap = Tap::new(Nothing);
    let feed = tap.feed("rules", 64);
    let broker = TestBroker::start_with_hook(TestBroker::config(), Arc::new(tap)).await;
    let wiring = Wiring {
        control: broker.control(),
        sink: Arc::new(ControlSink::new(broker.control())),
        mappings: crate::ingest::Config::default().mappings,
        tags: Arc::new(|d: &DeviceId| BTreeMap::from([("room".to_owned(), format!("room-of-{d}"))])),
    };
    let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
    tasks.spawn(rules.clone().run(feed, wiring, stop.clone()));
    tasks.close();
    Fixture { dir, store, broker, rules, events, stop, tasks }
}

impl Fixture {
    async fn subscriber(&self, id: &str, filter: &str) -> RawClient {
        let (mut client, _) = self.broker.client(&Connect::v5(id)).await;
        assert_eq!(client.subscribe(1, &[(filter, 0)]).await, [0]);
        client
    }

    async fn publisher(&self) -> RawClient {
        self.broker.client(&Connect::v311("device")).await.0
    }

    async fn stop(mut self) -> tempfile::TempDir {
        self.stop.cancel();
        self.tasks.wait().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        self.store.close().await;
        dir
    }
}

async fn publish(client: &mut RawClient, topic: &str, payload: &str) {
    client.publish(&Publish::new(Version::V311, topic, payload)).await;
}

/// Polls `check` until it is true, failing after 10 s.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_publish_action_reaches_a_subscriber_marked_and_is_not_evaluated_again() {
    let f = fixture(Vec::new()).await;
    f.rules
        .create(spec(
            r#"
            name = "too-hot"
            filter = "+/telemetry"
            condition = "msg.t > 30 && device_tags.room == 'room-of-' + device"
            actions = [{ type = "publish", topic = "alerts/{device}", payload = { temp = "${msg.t}", text = "hot: ${msg.t}" } }]
            "#,
        ))
        .await
        .unwrap();
    // a rule that would feed itself forever without the loop guard
    f.rules
        .create(spec(
            r#"
            name = "echo"
            filter = "loop/#"
            actions = [{ type = "publish", topic = "loop/again", payload = "${payload}" }]
            "#,
        ))
        .await
        .unwrap();
    let mut sub = f.subscriber("watcher", "alerts/#").await;
    let mut looped = f.subscriber("loop-watcher", "loop/again").await;
    let mut device = f.publisher().await;
    publish(&mut device, "d1/telemetry", r#"{"t": 25}"#).await;
    publish(&mut device, "d1/telemetry", r#"{"t": 35}"#).await;
    let p = sub.expect_publish().await;
    assert_eq!(p.topic, "alerts/d1");
    assert_eq!(serde_json::from_slice::<Value>(&p.payload).unwrap(), json!({"temp": 35, "text": "hot: 35"}));
    assert!(
        p.properties.0.iter().any(|(_, v)| *v == PropertyValue::Pair(RULE_PROPERTY.into(), "too-hot".into())),
        "{:?}",
        p.properties
    );

    publish(&mut device, "loop/start", "ping").await;
    let p = looped.expect_publish().await;
    assert_eq!(p.payload, b"ping");
    eventually("the echo's own message seen and skipped", || async { f.rules.stats().own_messages >= 2 })
        .await;
    assert!(looped.next_packet_within(Duration::from_millis(300)).await.is_none(), "echoed once only");
    let echo = f.rules.get("echo").unwrap();
    assert_eq!(echo["stats"]["firings"], 1, "{echo}");
    let hot = f.rules.get("too-hot").unwrap();
    assert_eq!(hot["stats"]["evaluations"], 2, "{hot}");
    assert_eq!(hot["stats"]["firings"], 1, "{hot}");
    assert_eq!(hot["stats"]["recent_firings"][0]["device"], "d1", "{hot}");
    assert_eq!(hot["source"], "api");
    f.stop().await;
}

#[tokio::test]
async fn night_light_commands_once_per_crossing() {
    let rules = [
        r#"
        name = "night-light-on"
        filter = "+/telemetry"
        condition = "msg.light < 300"
        once_per_crossing = true
        actions = [{ type = "command", topic = "{device}/commands", payload = { led_on = true } }]
        "#,
        r#"
        name = "night-light-off"
        filter = "+/telemetry"
        condition = "msg.light >= 300"
        once_per_crossing = true
        actions = [{ type = "command", topic = "{device}/commands", payload = { led_on = false } }]
        "#,
    ];
    let f = fixture(rules.iter().map(|r| spec(r)).collect()).await;
    let mut led = f.subscriber("nl-1-led", "nl-1/commands").await;
    let mut device = f.publisher().await;
    for light in [250, 260, 400, 450] {
        publish(&mut device, "nl-1/telemetry", &format!(r#"{{"light": {light}}}"#)).await;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = led.expect_publish().await;
        got.push(serde_json::from_slice::<Value>(&p.payload).unwrap());
    }
    assert_eq!(got, [json!({"led_on": true}), json!({"led_on": false})]);
    eventually("all four readings evaluated", || async { f.rules.stats().messages >= 4 }).await;
    assert!(led.next_packet_within(Duration::from_millis(300)).await.is_none(), "one command per crossing");
    assert_eq!(f.rules.get("night-light-on").unwrap()["source"], "config");
    f.stop().await;
}

#[tokio::test]
async fn an_alert_is_raised_listed_and_cleared_with_events() {
    let f = fixture(Vec::new()).await;
    let mut events = f.events.subscribe();
    for r in [
        r#"
        name = "hot"
        filter = "devices/+/telemetry"
        condition = "msg.t > 30"
        once_per_crossing = true
        actions = [{ type = "alert", name = "overheat", severity = "critical", message = "too hot: ${msg.t}" }]
        "#,
        r#"
        name = "cool"
        filter = "devices/+/telemetry"
        condition = "msg.t <= 30"
        once_per_crossing = true
        actions = [{ type = "clear_alert", name = "overheat" }]
        "#,
    ] {
        f.rules.create(spec(r)).await.unwrap();
    }
    let mut device = f.publisher().await;
    publish(&mut device, "devices/oven/telemetry", r#"{"t": 35}"#).await;
    let raised = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
    let HubEvent::AlertRaised { alert } = &*raised else { panic!("{raised:?}") };
    assert_eq!(alert["name"], "overheat");
    assert_eq!(alert["device"], "oven");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["message"], "too hot: 35");
    assert_eq!(alert["state"], "active");
    let list = f.rules.alerts();
    assert_eq!(list["active"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["recently_cleared"], json!([]));

    publish(&mut device, "devices/oven/telemetry", r#"{"t": 20}"#).await;
    let cleared = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
    let HubEvent::AlertCleared { alert } = &*cleared else { panic!("{cleared:?}") };
    assert_eq!(alert["state"], "cleared");
    assert!(alert["cleared_at"].is_string(), "{alert}");
    let list = f.rules.alerts();
    assert_eq!(list["active"], json!([]), "{list}");
    assert_eq!(list["recently_cleared"][0]["name"], "overheat", "{list}");
    f.stop().await;
}

#[tokio::test]
async fn a_webhook_action_without_webhooks_is_counted_and_recorded() {
    let f = fixture(Vec::new()).await;
    f.rules
        .create(spec(
            r#"
            name = "hook"
            filter = "devices/+/telemetry"
            actions = [{ type = "webhook", webhook = "wh_1" }]
            "#,
        ))
        .await
        .unwrap();
    let mut device = f.publisher().await;
    publish(&mut device, "devices/d/telemetry", "{}").await;
    eventually("the webhook counted as not wired", || async { f.rules.stats().webhooks_not_wired == 1 })
        .await;
    let hook = f.rules.get("hook").unwrap();
    assert_eq!(hook["stats"]["errors"], 1, "{hook}");
    assert_eq!(hook["stats"]["last_error"]["message"], "webhooks are not wired in", "{hook}");
    f.stop().await;
}

#[tokio::test]
async fn a_rule_saved_through_the_api_survives_a_restart_and_config_rules_are_read_only() {
    let from_file = || {
        vec![spec(
            r##"
            name = "from-file"
            filter = "#"
            "##,
        )]
    };
    let f = fixture(from_file()).await;
    let saved = spec(
        r#"
        name = "kept"
        filter = "+/telemetry"
        condition = "msg.light < 300"
        once_per_crossing = true
        cooldown = "5m"
        actions = [{ type = "command", topic = "{device}/commands", payload = { led_on = true } }]
        "#,
    );
    f.rules.create(saved.clone()).await.unwrap();
    assert!(matches!(f.rules.create(saved.clone()).await, Err(RulesError::Exists(_))));
    let bad = RuleSpec { condition: Some("msg.light <".into()), ..saved.clone() };
    let Err(RulesError::Invalid(e)) = f.rules.put("kept", bad).await else { panic!("a bad condition saved") };
    assert_eq!(e.position(), Some((1, 12)), "{e}");
    assert!(matches!(f.rules.put("from-file", from_file().remove(0)).await, Err(RulesError::ReadOnly(_))));
    assert!(matches!(f.rules.delete("from-file").await, Err(RulesError::ReadOnly(_))));
    let gone = RuleSpec { name: "gone".into(), ..saved.clone() };
    assert!(f.rules.put("gone", gone).await.unwrap().1, "PUT of a new name creates it");
    f.rules.delete("gone").await.unwrap();
    assert!(matches!(f.rules.delete("gone").await, Err(RulesError::NotFound(_))));

    let dir = f.stop().await;
    let f = fixture_in(dir, from_file()).await;
    let names: Vec<Value> = f.rules.list().iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, [json!("from-file"), json!("kept")]);
    let kept = f.rules.get("kept").unwrap();
    assert_eq!(kept["cooldown"], "300s", "{kept}");
    assert_eq!(kept["source"], "api");
    // and it works
    let mut led = f.subscriber("led", "nl-2/commands").await;
    let mut device = f.publisher().await;
    publish(&mut device, "nl-2/telemetry", r#"{"light": 10}"#).await;
    assert_eq!(led.expect_publish().await.payload, br#"{"led_on":true}"#);
    f.stop().await;
}

#[test]
fn the_device_of_a_topic_comes_from_the_ingest_mappings() {
    let mappings = crate::ingest::Config::default().mappings;
    let of = |topic: &str, payload: &str| {
        device_of(&mappings, &TopicName::new(topic).unwrap(), payload.as_bytes()).map(|d| d.to_string())
    };
    assert_eq!(of("nl-1/telemetry", "{}").as_deref(), Some("nl-1"));
    assert_eq!(of("devices/a/telemetry", "{}").as_deref(), Some("a"));
    assert_eq!(of("devices/a/state", "{}").as_deref(), Some("a"));
    assert_eq!(of("sensor/data", r#"{"device_id": "raspi-01"}"#).as_deref(), Some("raspi-01"));
    assert_eq!(of("sensor/data", "not json"), None);
    assert_eq!(of("other/topic", "{}"), None);
}
