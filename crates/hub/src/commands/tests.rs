//! The command service against a real SQLite store (the `Store` enum), registry and broker (testkit), with
//! devices connecting as raw MQTT 3.1.1 and 5.0 clients with their own tokens: every
//! mode, every state, the queue limit, expiry, cancel, acks by topic and by Response
//! Topic, the HTTP long-poll, and the shadow's `$state` commands.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use telehub_broker::{IngestAck, IngestHook};
use telehub_core::{ClientId, DeviceId, Message};
use telehub_store::Store;
use telehub_testkit::{Connect, Publish, RawClient, TestBroker, Version, build};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::events::{Events, HubEvent, Tap};
use crate::registry::{Actor, AuthConfig, CredentialKind, NewCredential, NewDevice, Registry};

struct Nothing;

impl IngestHook for Nothing {
    fn offer(&self, _: Option<&ClientId>, _: &Arc<Message>) -> Option<IngestAck> {
        None
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    broker: TestBroker,
    registry: Registry<Store>,
    commands: Commands<Store>,
    events: Events,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

async fn fixture_with(config: Config) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&telehub_store::Config::default(), dir.path()).await.unwrap());
    let mappings = crate::ingest::Config::default().mappings;
    let registry = Registry::open(store.clone(), AuthConfig::default(), mappings).await.unwrap();
    let events = Events::new(1024);
    registry.on_presence({
        let events = events.clone();
        move |device, online| {
            let (device, at) = (device.to_string(), 0);
            events.emit(if online {
                HubEvent::DeviceConnected { device, at }
            } else {
                HubEvent::DeviceDisconnected { device, at }
            });
        }
    });
    let mut tap = Tap::new(Nothing);
    let feed = tap.feed("commands", 64);
    let broker =
        TestBroker::start_with_hook_and_auth(TestBroker::config(), Arc::new(tap), Arc::new(registry.clone()))
            .await;
    let commands = Commands::new(config, store, registry.clone(), broker.control(), events.clone());
    let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
    tasks.spawn(commands.clone().run(feed, stop.clone()));
    tasks.close();
    Fixture { _dir: dir, broker, registry, commands, events, stop, tasks }
}

async fn fixture() -> Fixture {
    fixture_with(Config::default()).await
}

impl Fixture {
    /// Registers `name` and returns its token.
    async fn device(&self, name: &str) -> String {
        let admin = Actor { id: "token:test".into(), remote: None };
        let new = NewDevice { id: id(name), name: None, tags: Default::default(), allowed_ips: Vec::new() };
        self.registry.create_device(&admin, new).await.unwrap();
        let cred = NewCredential {
            kind: CredentialKind::Token,
            name: None,
            secret: None,
            public_key: None,
            fingerprint: None,
            expires_at: None,
        };
        self.registry.create_credential(&admin, &id(name), cred).await.unwrap().1.unwrap()
    }

    /// `name` connected with its token, subscribed to `filter`.
    async fn connect(&self, name: &str, token: &str, v5: bool, filter: &str) -> RawClient {
        let connect = if v5 { Connect::v5(name) } else { Connect::v311(name) };
        let (mut client, _) = self.broker.client(&connect.username(name).password(token.as_bytes())).await;
        assert_eq!(client.subscribe(1, &[(filter, 1)]).await, [1], "SUBACK for {filter}");
        client
    }

    async fn create(&self, device: &str, payload: Value, mode: CommandMode, key: Option<&str>) -> Command {
        let req = Request { payload, mode, key: key.map(Into::into), ttl: None, topic: None };
        self.commands.create(&id(device), req).await.unwrap()
    }

    async fn state(&self, cmd: &str) -> CommandState {
        self.commands.inner.store.command_get(cmd).await.unwrap().unwrap().state
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// Polls `check` until it is true, failing after 10 s.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next command delivered to `client`, acknowledged (PUBACK), as JSON.
async fn receive(client: &mut RawClient) -> (String, Value) {
    let p = client.expect_publish().await;
    assert_eq!(p.qos, 1);
    client.send(&build::puback(p.id())).await;
    (p.topic, serde_json::from_slice(&p.payload).unwrap())
}

#[tokio::test]
async fn fire_and_forget_is_sent_when_connected_else_failed() {
    let f = fixture().await;
    let token = f.device("d1").await;
    let offline = f.create("d1", json!({"blink": 1}), CommandMode::FireAndForget, None).await;
    assert_eq!(offline.state, CommandState::Failed);
    assert_eq!(offline.reason.as_deref(), Some("device not connected"));
    let mut dev = f.connect("d1", &token, false, "devices/d1/commands").await;
    let sent = f.create("d1", json!({"blink": 2}), CommandMode::FireAndForget, None).await;
    assert_eq!(sent.state, CommandState::Sent);
    let (topic, body) = receive(&mut dev).await;
    assert_eq!(topic, "devices/d1/commands");
    assert_eq!(body, json!({"id": sent.id, "payload": {"blink": 2}}));
    // MQTT 3.1.1 ack topic
    let ack = json!({"id": sent.id, "status": "succeeded", "result": {"blinked": true}}).to_string();
    dev.publish(&Publish::new(Version::V311, "devices/d1/commands/ack", ack).qos(1, 7)).await;
    eventually("succeeded", || async { f.state(&sent.id).await == CommandState::Succeeded }).await;
    let done = f.commands.get(&id("d1"), &sent.id).await.unwrap();
    assert_eq!(done.result, Some(json!({"blinked": true})));
    assert!(done.timestamps.contains_key(&CommandState::Sent));
    f.stop().await;
}

#[tokio::test]
async fn queued_and_latest_wins_wait_for_the_device_and_arrive_in_order() {
    let f = fixture().await;
    let token = f.device("d1").await;
    let mut created = Vec::new();
    for n in 1..=3 {
        created.push(f.create("d1", json!({"n": n}), CommandMode::Queued, None).await);
    }
    let old = f.create("d1", json!({"heater": true}), CommandMode::LatestWins, Some("heater")).await;
    let new = f.create("d1", json!({"heater": false}), CommandMode::LatestWins, Some("heater")).await;
    assert!(created.iter().all(|c| c.state == CommandState::Queued));
    assert_eq!(f.state(&old.id).await, CommandState::Cancelled);
    let superseded = f.commands.get(&id("d1"), &old.id).await.unwrap();
    assert_eq!(superseded.reason.as_deref(), Some("superseded"));
    // the device connects (and subscribes a moment later): all of them, in order
    let mut dev = f.connect("d1", &token, false, "devices/d1/commands").await;
    for (n, cmd) in created.iter().enumerate() {
        let (_, body) = receive(&mut dev).await;
        assert_eq!(body, json!({"id": cmd.id, "payload": {"n": n + 1}}));
    }
    let (_, body) = receive(&mut dev).await;
    assert_eq!(body, json!({"id": new.id, "payload": {"heater": false}, "key": "heater"}));
    dev.expect_nothing().await;
    for cmd in created.iter().chain([&new]) {
        let cmd = cmd.id.clone();
        eventually("sent", || async { f.state(&cmd).await == CommandState::Sent }).await;
    }
    // delivered, then succeeded
    let first = &created[0].id;
    let ack = |status: &str| json!({"id": first, "status": status}).to_string();
    dev.publish(&Publish::new(Version::V311, "devices/d1/commands/ack", ack("delivered"))).await;
    eventually("delivered", || async { f.state(first).await == CommandState::Delivered }).await;
    dev.publish(&Publish::new(Version::V311, "devices/d1/commands/ack", ack("failed"))).await;
    eventually("failed", || async { f.state(first).await == CommandState::Failed }).await;
    // a queued command for a connected device goes out at once
    let now = f.create("d1", json!({"n": 4}), CommandMode::Queued, None).await;
    assert_eq!(now.state, CommandState::Sent);
    assert_eq!(receive(&mut dev).await.1["id"], json!(now.id));
    f.stop().await;
}

#[tokio::test]
async fn unacknowledged_commands_are_sent_again_on_reconnect_with_the_same_id() {
    let f = fixture().await;
    let token = f.device("d1").await;
    let mut dev = f.connect("d1", &token, false, "devices/d1/commands").await;
    let cmd = f.create("d1", json!("x"), CommandMode::Queued, None).await;
    assert_eq!(receive(&mut dev).await.1["id"], json!(cmd.id));
    dev.disconnect().await;
    let mut again = f.connect("d1", &token, false, "devices/d1/commands").await;
    assert_eq!(receive(&mut again).await.1["id"], json!(cmd.id));
    f.stop().await;
}

#[tokio::test]
async fn mqtt5_devices_get_properties_and_answer_on_the_response_topic() {
    let f = fixture().await;
    let token = f.device("d5").await;
    let mut dev = f.connect("d5", &token, true, "devices/d5/commands").await;
    let cmd = f.create("d5", json!({"reboot": true}), CommandMode::Queued, None).await;
    let p = dev.expect_publish().await;
    dev.send(&build::puback(p.id())).await;
    assert_eq!(p.properties.string(0x08), Some("devices/d5/commands/response"));
    assert_eq!(
        p.properties.get(0x09),
        Some(&telehub_testkit::PropertyValue::Binary(cmd.id.clone().into_bytes()))
    );
    assert_eq!(
        p.properties.get(0x26),
        Some(&telehub_testkit::PropertyValue::Pair("command-id".into(), cmd.id.clone()))
    );
    let reply =
        Publish::new(Version::V5, "devices/d5/commands/response", r#"{"status":"rejected","result":"busy"}"#)
            .response("unused/reply", cmd.id.as_bytes());
    dev.publish(&reply).await;
    eventually("rejected", || async { f.state(&cmd.id).await == CommandState::Rejected }).await;
    assert_eq!(f.commands.get(&id("d5"), &cmd.id).await.unwrap().result, Some(json!("busy")));
    f.stop().await;
}

#[tokio::test]
async fn an_explicit_topic_carries_the_bare_payload() {
    let f = fixture().await;
    let token = f.device("nl-1").await;
    let mut dev = f.connect("nl-1", &token, false, "nl-1/commands").await;
    let req = Request {
        payload: json!({"led_on": true}),
        mode: CommandMode::Queued,
        key: None,
        ttl: None,
        topic: Some("nl-1/commands".into()),
    };
    let cmd = f.commands.create(&id("nl-1"), req).await.unwrap();
    assert_eq!(cmd.state, CommandState::Sent);
    assert_eq!(receive(&mut dev).await, ("nl-1/commands".to_owned(), json!({"led_on": true})));
    f.stop().await;
}

#[tokio::test]
async fn refusals_queue_limit_expiry_and_cancel() {
    let f = fixture_with(Config { max_queued_per_device: 2, ..Config::default() }).await;
    f.device("d1").await;
    let d1 = id("d1");
    let ghost = Request { payload: json!(1), mode: CommandMode::Queued, key: None, ttl: None, topic: None };
    let unknown = f.commands.create(&id("ghost"), ghost).await;
    assert!(matches!(unknown, Err(CommandError::UnknownDevice(_))));
    let bad = |mode, key: Option<&str>, topic: Option<&str>, ttl| Request {
        payload: json!(1),
        mode,
        key: key.map(Into::into),
        ttl,
        topic: topic.map(Into::into),
    };
    for (req, field) in [
        (bad(CommandMode::LatestWins, None, None, None), "`key`"),
        (bad(CommandMode::Queued, Some("k"), None, None), "`key`"),
        (bad(CommandMode::LatestWins, Some("$state"), None, None), "`key`"),
        (bad(CommandMode::Queued, None, Some("a/+/b"), None), "`topic`"),
        (bad(CommandMode::Queued, None, None, Some(Duration::ZERO)), "`ttl`"),
        (bad(CommandMode::Queued, None, None, Some(Duration::from_secs(365 * 86_400))), "`ttl`"),
    ] {
        match f.commands.create(&d1, req).await {
            Err(CommandError::Invalid(m)) => assert!(m.contains(field), "{m}"),
            other => panic!("expected a refusal naming {field}: {other:?}"),
        }
    }
    let short =
        Request { ttl: Some(Duration::from_millis(300)), ..bad(CommandMode::Queued, None, None, None) };
    let expiring = f.commands.create(&d1, short).await.unwrap();
    let cancelled = f.create("d1", json!(2), CommandMode::Queued, None).await;
    let full = f.commands.create(&d1, bad(CommandMode::Queued, None, None, None)).await;
    assert!(matches!(full, Err(CommandError::QueueFull { open: 2, limit: 2, .. })), "{full:?}");
    let mut events = f.events.subscribe();
    assert_eq!(f.commands.cancel(&d1, &cancelled.id).await.unwrap().state, CommandState::Cancelled);
    match &*events.recv().await.unwrap() {
        HubEvent::CommandStateChanged { command } => assert_eq!(command["state"], json!("cancelled")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.commands.cancel(&d1, &cancelled.id).await, Err(CommandError::WrongState { .. })));
    assert!(matches!(f.commands.get(&id("d2"), &cancelled.id).await, Err(CommandError::NotFound(_))));
    eventually("expired", || async { f.state(&expiring.id).await == CommandState::Expired }).await;
    match &*events.recv().await.unwrap() {
        HubEvent::CommandStateChanged { command } => {
            assert_eq!((&command["id"], &command["state"]), (&json!(expiring.id), &json!("expired")));
        }
        other => panic!("{other:?}"),
    }
    // acks: only device states, never backwards
    let ack = f.commands.ack(&d1, &expiring.id, CommandState::Succeeded, None).await;
    assert!(matches!(ack, Err(CommandError::WrongState { state: CommandState::Expired, .. })), "{ack:?}");
    let ack = f.commands.ack(&d1, &expiring.id, CommandState::Cancelled, None).await;
    assert!(matches!(ack, Err(CommandError::Invalid(_))), "{ack:?}");
    f.stop().await;
}

#[tokio::test]
async fn a_long_polled_command_not_acknowledged_is_handed_out_again_after_poll_resend_after() {
    let f = fixture_with(Config { poll_resend_after: Duration::from_millis(300), ..Config::default() }).await;
    f.device("h2").await;
    let h2 = id("h2");
    let a = f.create("h2", json!("a"), CommandMode::Queued, None).await;
    let first = f.commands.next(&h2, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!((first.id.as_str(), first.state), (a.id.as_str(), CommandState::Sent));
    // the answer was lost: right away nothing more is due, the command stays sent
    assert_eq!(f.commands.next(&h2, Duration::ZERO).await.unwrap(), None);
    // a poll after poll_resend_after gets the same command (same id) again, stamped anew
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = f.commands.next(&h2, Duration::ZERO).await.unwrap().expect("handed out again");
    assert_eq!((again.id.as_str(), again.state), (a.id.as_str(), CommandState::Sent));
    assert!(again.timestamps[&CommandState::Sent] > first.timestamps[&CommandState::Sent]);
    // once acknowledged it is never handed out again
    f.commands.ack(&h2, &a.id, CommandState::Succeeded, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(f.commands.next(&h2, Duration::ZERO).await.unwrap(), None);
    f.stop().await;
}

#[tokio::test]
async fn long_poll_hands_out_the_oldest_queued_command_or_nothing() {
    let f = fixture().await;
    f.device("h1").await;
    let h1 = id("h1");
    assert_eq!(f.commands.next(&h1, Duration::from_millis(100)).await.unwrap(), None);
    let a = f.create("h1", json!("a"), CommandMode::Queued, None).await;
    let b = f.create("h1", json!("b"), CommandMode::Queued, None).await;
    let got = f.commands.next(&h1, Duration::from_secs(1)).await.unwrap().unwrap();
    assert_eq!((got.id.as_str(), got.state), (a.id.as_str(), CommandState::Sent));
    assert_eq!(f.commands.next(&h1, Duration::ZERO).await.unwrap().unwrap().id, b.id);
    // a waiting poll is woken by a new command
    let waiting = {
        let commands = f.commands.clone();
        let h1 = h1.clone();
        async move { commands.next(&h1, Duration::from_secs(10)).await }
    };
    let create = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.create("h1", json!("c"), CommandMode::Queued, None).await
    };
    let (got, c) = tokio::join!(waiting, create);
    assert_eq!(got.unwrap().unwrap().id, c.id);
    let done = f.commands.ack(&h1, &a.id, CommandState::Succeeded, Some(json!(42))).await.unwrap();
    assert_eq!((done.state, done.result), (CommandState::Succeeded, Some(json!(42))));
    // the same ack again is fine
    assert_eq!(
        f.commands.ack(&h1, &a.id, CommandState::Succeeded, None).await.unwrap().state,
        CommandState::Succeeded
    );
    assert!(matches!(
        f.commands.next(&id("nobody"), Duration::ZERO).await,
        Err(CommandError::UnknownDevice(_))
    ));
    f.stop().await;
}

#[tokio::test]
async fn desired_state_is_a_latest_wins_command_and_a_matching_report_completes_it() {
    let f = fixture().await;
    let token = f.device("s1").await;
    let s1 = id("s1");
    let set = crate::shadow::set_desired(&f.commands, &s1, &json!({"heater": true, "target": 21}), Some(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.state.version, 1);
    assert_eq!(set.state.delta, json!({"heater": true, "target": 21}));
    let first = set.command.unwrap();
    let stale = crate::shadow::set_desired(&f.commands, &s1, &json!({"target": 22}), Some(0)).await.unwrap();
    assert_eq!(stale.unwrap_err().current_version, 1);
    let set =
        crate::shadow::set_desired(&f.commands, &s1, &json!({"target": 22}), None).await.unwrap().unwrap();
    let second = set.command.unwrap();
    assert_eq!(f.state(first["id"].as_str().unwrap()).await, CommandState::Cancelled);
    // the device connects: only the newest delta
    let mut dev = f.connect("s1", &token, false, "devices/s1/state/desired").await;
    let (topic, body) = receive(&mut dev).await;
    assert_eq!((topic.as_str(), body), ("devices/s1/state/desired", json!({"heater": true, "target": 22})));
    dev.expect_nothing().await;
    // a partial report keeps the delta, a full one clears it and completes the command
    dev.publish(&Publish::new(Version::V311, "devices/s1/state", r#"{"heater": true}"#)).await;
    eventually("partial report", || async {
        crate::shadow::get(&f.commands, &s1).await.unwrap().delta == json!({"target": 22})
    })
    .await;
    dev.publish(&Publish::new(Version::V311, "devices/s1/state", r#"{"target": 22, "fw": "1.2"}"#)).await;
    let second = second["id"].as_str().unwrap().to_owned();
    eventually("$state succeeded", || async { f.state(&second).await == CommandState::Succeeded }).await;
    let state = crate::shadow::get(&f.commands, &s1).await.unwrap();
    assert_eq!(state.reported, json!({"heater": true, "target": 22, "fw": "1.2"}));
    assert_eq!(state.delta, json!({}));
    assert_eq!(state.version, 4);
    assert!(state.reported_at.is_some() && state.desired_at.is_some());
    assert!(matches!(
        crate::shadow::get(&f.commands, &id("ghost")).await,
        Err(CommandError::UnknownDevice(_))
    ));
    f.stop().await;
}
