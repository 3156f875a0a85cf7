//! The sender and dispatcher against a small HTTP receiver on loopback, over SQLite.

use std::sync::atomic::AtomicUsize;

use telehub_core::{QoS, TopicName};
use telehub_store::SqliteStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::*;

/// A receiver answering 500 to the first `fail_first` requests, then 200; it records the
/// `(webhook-id, body)` of the requests it accepted, after checking their signatures.
struct Receiver {
    url: String,
    accepted: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    requests: Arc<AtomicUsize>,
    _stop: tokio_util::sync::DropGuard,
}

async fn receiver(secret: &str, fail_first: usize, tasks: &TaskTracker) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let accepted: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let requests = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let secret = Secret::parse(secret).unwrap();
    let (acc, req, st, tr) = (accepted.clone(), requests.clone(), stop.clone(), tasks.clone());
    tasks.spawn(async move {
        loop {
            let (sock, _) = tokio::select! {
                s = listener.accept() => s.unwrap(),
                () = st.cancelled() => return,
            };
            let (acc, req, secret, st) = (acc.clone(), req.clone(), secret.clone(), st.clone());
            tr.spawn(st.run_until_cancelled_owned(async move {
                let mut r = BufReader::new(sock);
                loop {
                    let mut headers = HashMap::new();
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        r.read_line(&mut line).await.unwrap();
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        let (k, v) = l.split_once(':').unwrap();
                        headers.insert(k.to_ascii_lowercase(), v.trim().to_owned());
                    }
                    let len: usize = headers["content-length"].parse().unwrap();
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).await.unwrap();
                    let n = req.fetch_add(1, Ordering::SeqCst);
                    let id = headers["webhook-id"].clone();
                    let ts: i64 = headers["webhook-timestamp"].parse().unwrap();
                    let good = secret.verifies(&id, ts, &body, &headers["webhook-signature"]);
                    let status = if !good {
                        "401 Unauthorized"
                    } else if n < fail_first {
                        "500 Internal Server Error"
                    } else {
                        acc.lock().unwrap().push((id, serde_json::from_slice(&body).unwrap()));
                        "200 OK"
                    };
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    r.get_mut().write_all(answer.as_bytes()).await.unwrap();
                }
            }));
        }
    });
    Receiver { url, accepted, requests, _stop: stop.drop_guard() }
}

fn config() -> Config {
    Config {
        timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        poll_interval: Duration::from_millis(20),
        breaker_failures: 0,
        ..Config::default()
    }
}

fn message(topic: &str, payload: &str) -> Arc<Message> {
    Arc::new(Message {
        topic: TopicName::new(topic).unwrap(),
        payload: bytes::Bytes::from(payload.to_owned()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    })
}

async fn eventually(what: &str, mut pred: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if pred().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: still not so after 10 s");
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    hooks: Webhooks<SqliteStore>,
}

async fn setup(config: Config) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(SqliteStore::open(&telehub_store::Config::default(), &dir.path().join("t.db")).unwrap());
    let hooks = Webhooks::open(store.clone(), config).await.unwrap();
    Setup { _dir: dir, store, hooks }
}

#[tokio::test]
async fn matching_messages_and_events_are_delivered_signed_despite_failures() {
    let tasks = TaskTracker::new();
    let secret = Secret::generate();
    let rx = receiver(&secret, 3, &tasks).await;
    let s = setup(config()).await;
    let made = s
        .hooks
        .create(NewEndpoint {
            url: rx.url.clone(),
            topics: vec!["sensors/+/temp".into()],
            events: vec!["device.connected".into()],
            secret: Some(secret.clone()),
            ..NewEndpoint::default()
        })
        .await
        .unwrap();
    assert_eq!(made.new_secrets, std::slice::from_ref(&secret));
    assert_eq!(made.secrets, [secret_hint(&secret)]);
    let (tx, msgs) = mpsc::channel(16);
    let events = crate::events::Events::new(16);
    let stop = CancellationToken::new();
    tasks.spawn(s.hooks.clone().dispatch(msgs, events.subscribe(), stop.clone()));
    tasks.spawn(s.hooks.clone().send(stop.clone()));
    for i in 0..5 {
        tx.send(message("sensors/a/temp", &format!("{{\"v\":{i}}}"))).await.unwrap();
    }
    tx.send(message("other/topic", "x")).await.unwrap();
    events.emit(HubEvent::DeviceConnected { device: "a".into(), at: 1 });
    events.emit(HubEvent::DeviceDisconnected { device: "a".into(), at: 2 });
    eventually("6 deliveries accepted", async || rx.accepted.lock().unwrap().len() == 6).await;
    let got = rx.accepted.lock().unwrap().clone();
    let mut values: Vec<i64> = got
        .iter()
        .filter(|(_, b)| b["type"] == "message")
        .map(|(_, b)| b["data"]["payload"]["v"].as_i64().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, [0, 1, 2, 3, 4]);
    let event = got.iter().find(|(_, b)| b["type"] == "device.connected").unwrap();
    assert_eq!(event.1["data"]["device"], "a");
    let ids: HashSet<&String> = got.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 6, "one webhook-id per delivery");
    assert_eq!(rx.requests.load(Ordering::SeqCst), 9, "3 failed attempts, retried");
    let id = &made.id;
    eventually("all delivered in the outbox", async || {
        s.hooks.deliveries(id, Some(OutboxStatus::Delivered), None, 100).await.unwrap().len() == 6
    })
    .await;
    assert!(s.hooks.deliveries(id, Some(OutboxStatus::Pending), None, 100).await.unwrap().is_empty());
    stop.cancel();
    tasks.close();
    drop(rx);
    drop(tx);
    tasks.wait().await;
}

#[tokio::test]
async fn in_order_while_healthy() {
    let tasks = TaskTracker::new();
    let secret = Secret::generate();
    let rx = receiver(&secret, 0, &tasks).await;
    let s = setup(config()).await;
    s.hooks
        .create(NewEndpoint {
            url: rx.url.clone(),
            topics: vec!["#".into()],
            secret: Some(secret),
            ..Default::default()
        })
        .await
        .unwrap();
    let (tx, msgs) = mpsc::channel(1000);
    let stop = CancellationToken::new();
    tasks.spawn(s.hooks.clone().dispatch(msgs, crate::events::Events::new(1).subscribe(), stop.clone()));
    for i in 0..200 {
        tx.send(message("t", &i.to_string())).await.unwrap();
    }
    tasks.spawn(s.hooks.clone().send(stop.clone()));
    eventually("200 delivered", async || rx.accepted.lock().unwrap().len() == 200).await;
    let order: Vec<i64> =
        rx.accepted.lock().unwrap().iter().map(|(_, b)| b["data"]["payload"].as_i64().unwrap()).collect();
    assert_eq!(order, (0..200).collect::<Vec<_>>());
    stop.cancel();
    tasks.close();
    drop(rx);
    tasks.wait().await;
}

#[tokio::test]
async fn dead_after_the_maximum_age_then_replayed() {
    let tasks = TaskTracker::new();
    let secret = Secret::generate();
    // fails every attempt of the first phase
    let rx = receiver(&secret, usize::MAX, &tasks).await;
    let s = setup(Config { max_age: Duration::from_millis(300), ..config() }).await;
    let ep = s
        .hooks
        .create(NewEndpoint {
            url: rx.url.clone(),
            topics: vec!["t".into()],
            secret: Some(secret.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let (tx, msgs) = mpsc::channel(16);
    let stop = CancellationToken::new();
    tasks.spawn(s.hooks.clone().dispatch(msgs, crate::events::Events::new(1).subscribe(), stop.clone()));
    tasks.spawn(s.hooks.clone().send(stop.clone()));
    tx.send(message("t", "1")).await.unwrap();
    tx.send(message("t", "2")).await.unwrap();
    let id = ep.id.clone();
    eventually("both dead", async || {
        s.hooks.deliveries(&id, Some(OutboxStatus::Dead), None, 10).await.unwrap().len() == 2
    })
    .await;
    let dead = s.hooks.deliveries(&id, Some(OutboxStatus::Dead), None, 10).await.unwrap();
    assert!(dead.iter().all(|d| d.attempts >= 2 && d.last_error.as_deref() == Some("HTTP 500")), "{dead:?}");
    // a receiver that works, at a new URL
    let ok = receiver(&secret, 0, &tasks).await;
    s.hooks.update(&id, EndpointPatch { url: Some(ok.url.clone()), ..Default::default() }).await.unwrap();
    assert_eq!(s.hooks.replay(&id, Replay::Ids(vec![dead[0].delivery.id.clone()])).await.unwrap(), 1);
    eventually("the replayed one delivered", async || ok.accepted.lock().unwrap().len() == 1).await;
    assert_eq!(ok.accepted.lock().unwrap()[0].0, dead[0].delivery.id, "the same webhook-id");
    assert_eq!(s.hooks.replay(&id, Replay::AllDead).await.unwrap(), 1);
    eventually("the other delivered", async || ok.accepted.lock().unwrap().len() == 2).await;
    assert_eq!(
        s.store
            .outbox_list(OutboxQuery {
                endpoint: id.clone(),
                status: Some(OutboxStatus::Dead),
                before_seq: None,
                limit: 10
            })
            .await
            .unwrap()
            .len(),
        0
    );
    stop.cancel();
    tasks.close();
    drop((rx, ok));
    tasks.wait().await;
}

#[tokio::test]
async fn the_breaker_stops_attempts_to_a_failing_endpoint() {
    let tasks = TaskTracker::new();
    let secret = Secret::generate();
    let rx = receiver(&secret, usize::MAX, &tasks).await;
    let s =
        setup(Config { breaker_failures: 2, breaker_cooldown: Duration::from_secs(60), ..config() }).await;
    let ep = s
        .hooks
        .create(NewEndpoint {
            url: rx.url.clone(),
            topics: vec!["t".into()],
            secret: Some(secret),
            ..Default::default()
        })
        .await
        .unwrap();
    let (tx, msgs) = mpsc::channel(16);
    let stop = CancellationToken::new();
    tasks.spawn(s.hooks.clone().dispatch(msgs, crate::events::Events::new(1).subscribe(), stop.clone()));
    tasks.spawn(s.hooks.clone().send(stop.clone()));
    for i in 0..5 {
        tx.send(message("t", &i.to_string())).await.unwrap();
    }
    eventually("the breaker open", async || s.hooks.get(&ep.id).unwrap().breaker == BreakerState::Open).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.requests.load(Ordering::SeqCst), 2, "no attempt while open");
    assert_eq!(s.hooks.deliveries(&ep.id, Some(OutboxStatus::Pending), None, 10).await.unwrap().len(), 5);
    stop.cancel();
    tasks.close();
    drop(rx);
    tasks.wait().await;
}

#[tokio::test]
async fn endpoints_are_validated_persisted_and_rotated() {
    let s = setup(config()).await;
    let bad = |n: NewEndpoint| {
        let h = s.hooks.clone();
        async move { h.create(n).await.unwrap_err().to_string() }
    };
    assert!(
        bad(NewEndpoint { url: "ftp://x".into(), topics: vec!["t".into()], ..Default::default() })
            .await
            .contains("http")
    );
    assert!(
        bad(NewEndpoint { url: "http://x".into(), ..Default::default() }).await.contains("events or topics")
    );
    assert!(
        bad(NewEndpoint { url: "http://x".into(), events: vec!["nope".into()], ..Default::default() })
            .await
            .contains("unknown event")
    );
    assert!(
        bad(NewEndpoint { url: "http://x".into(), topics: vec!["a/#/b".into()], ..Default::default() })
            .await
            .contains("topic filter")
    );
    let made = s
        .hooks
        .create(NewEndpoint {
            url: "http://127.0.0.1:9/x".into(),
            events: vec!["*".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let first = made.new_secrets[0].clone();
    let rotated =
        s.hooks.update(&made.id, EndpointPatch { rotate: true, ..Default::default() }).await.unwrap();
    assert_eq!(rotated.secrets.len(), 2);
    let second = rotated.new_secrets[0].clone();
    let third = s.hooks.update(&made.id, EndpointPatch { rotate: true, ..Default::default() }).await;
    assert!(matches!(third, Err(WebhookError::Conflict(_))));
    // both sign meanwhile
    let c = s.hooks.get_compiled(&made.id).unwrap();
    let header = signature::header(&c.secrets, "msg_x", 1, b"{}");
    for secret in [&first, &second] {
        assert!(Secret::parse(secret).unwrap().verifies("msg_x", 1, b"{}", &header));
    }
    let done = s
        .hooks
        .update(&made.id, EndpointPatch { remove_secret: Some(secret_hint(&first)), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(done.secrets, [secret_hint(&second)]);
    let only = s
        .hooks
        .update(&made.id, EndpointPatch { remove_secret: Some(second.clone()), ..Default::default() })
        .await;
    assert!(matches!(only, Err(WebhookError::Conflict(_))));
    // reopened from the store
    let again = Webhooks::open(s.store.clone(), config()).await.unwrap();
    let c = again.get_compiled(&made.id).unwrap();
    assert_eq!(c.endpoint.secrets, [second]);
    again.delete(&made.id).await.unwrap();
    assert!(matches!(again.get(&made.id), Err(WebhookError::NotFound(_))));
    assert!(Webhooks::open(s.store.clone(), config()).await.unwrap().list().is_empty());
}

#[test]
fn message_data_shows_json_text_and_binary() {
    let ts = Timestamp(0);
    let d = message_data(&message("a/b", r#"{"x":1}"#), ts);
    assert_eq!(d["payload"]["x"], 1);
    assert_eq!(d["topic"], "a/b");
    assert_eq!(d["qos"], 1);
    assert_eq!(d["ts"], "1970-01-01T00:00:00Z");
    assert_eq!(message_data(&message("a", "hello"), ts)["payload"], "hello");
    let bin =
        Arc::new(Message { payload: bytes::Bytes::from_static(&[0xff, 0]), ..(*message("a", "")).clone() });
    let d = message_data(&bin, ts);
    assert_eq!(d["payload"], serde_json::Value::Null);
    assert_eq!(d["payload_base64"], "/wA=");
}
