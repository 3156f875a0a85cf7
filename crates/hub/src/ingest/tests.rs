//! Unit tests of ingest: mapping tests (topic → device, payload → points, defaults, config
//! validation) are pure; queue tests run the writer against `MemoryStore`, a test-only
//! in-memory `TelemetryStore` that implements just `write` (the real backends have their
//! own conformance suite).

use std::sync::Mutex;

use telehub_core::{DeviceId, QoS, TopicName};
use telehub_store::{
    AggregateQuery, Aggregated, DeviceSummary, Latest, Metric, PointRow, PointsQuery, RetentionPolicy,
    RetentionReport, Timestamp, WriteSummary,
};
use tokio::sync::Notify;

use super::*;

const ARRIVAL: Timestamp = Timestamp(1_700_000_000_000);

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

/// Maps `payload` on `topic` with the default mappings.
fn map_default(topic_name: &str, payload: &str) -> Option<Result<Record, MapError>> {
    let mappings = Mapping::defaults();
    let t = topic(topic_name);
    mapping::find(&mappings, &t).map(|m| m.map(&t, payload.as_bytes(), &ARRIVAL))
}

fn points(record: &Record) -> Vec<(&str, i64, f64)> {
    record.points.iter().map(|p| (p.metric.0.as_str(), p.ts.0, p.value)).collect()
}

fn device(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

// ---- mapping: topic → device ----------------------------------------------------------

#[test]
fn mapping_canonical_topic_takes_the_device_from_level_1() {
    let r = map_default("devices/pump-7/telemetry", r#"{"pressure": 2.5}"#).unwrap().unwrap();
    assert_eq!(r.device, device("pump-7"));
    assert_eq!(points(&r), [("pressure", ARRIVAL.0, 2.5)]);
}

#[test]
fn mapping_sensor_data_takes_the_device_from_the_payload_like_the_paho_tutorial() {
    let payload = r#"{"device_id":"raspi-01","temperature":25.5,"humidity":60.3}"#;
    let r = map_default("sensor/data", payload).unwrap().unwrap();
    assert_eq!(r.device, device("raspi-01"));
    // device_id is the id, not a metric (points come in field-name order)
    assert_eq!(points(&r), [("humidity", ARRIVAL.0, 60.3), ("temperature", ARRIVAL.0, 25.5)]);
    assert_eq!(r.document, Some(serde_json::from_str(payload).unwrap()), "the whole document is kept");
    assert_eq!(r.received_at, ARRIVAL);
}

#[test]
fn mapping_night_light_topic_takes_the_device_from_level_0() {
    let r = map_default("esp32-lamp/telemetry", r#"{"light": 400}"#).unwrap().unwrap();
    assert_eq!(r.device, device("esp32-lamp"));
    assert_eq!(points(&r), [("light", ARRIVAL.0, 400.0)]);
}

#[test]
fn mapping_sensors_hash_takes_the_device_from_level_1() {
    let r = map_default("sensors/kitchen/climate", r#"{"temperature": 21}"#).unwrap().unwrap();
    assert_eq!(r.device, device("kitchen"));
    let r = map_default("sensors/kitchen", r#"{"temperature": 21}"#).unwrap().unwrap();
    assert_eq!(r.device, device("kitchen"));
    // `sensors` alone matches `sensors/#` but names no device
    assert_eq!(map_default("sensors", "{}").unwrap(), Err(MapError::NoTopicLevel(1)));
}

#[test]
fn mapping_first_match_wins_and_other_topics_are_not_telemetry() {
    // `devices/x/telemetry` is not `+/telemetry` (three levels, not two)
    let r = map_default("devices/a/telemetry", "{}").unwrap().unwrap();
    assert_eq!(r.device, device("a"));
    assert!(map_default("devices/a/commands", "{}").is_none());
    assert!(map_default("sensor/other", "{}").is_none());
    // [MQTT-4.7.2-1] `+/telemetry` does not match a `$` topic
    assert!(map_default("$SYS/telemetry", "{}").is_none());
}

#[test]
fn mapping_device_id_rules_apply_to_topics_and_fields() {
    let e = map_default("sensor/data", r#"{"temperature": 1}"#).unwrap().unwrap_err();
    assert_eq!(e, MapError::MissingDeviceField("device_id".into()));
    assert_eq!(e.to_string(), "missing `device_id`");
    let e = map_default("sensor/data", r#"{"device_id": 42}"#).unwrap().unwrap_err();
    assert_eq!(e.to_string(), "`device_id` must be a string, found number");
    let e = map_default("sensor/data", r#"{"device_id": ""}"#).unwrap().unwrap_err();
    assert!(matches!(e, MapError::InvalidDeviceId { .. }), "{e}");
    let e = map_default("sensor/data", r#"{"device_id": "a\u0001"}"#).unwrap().unwrap_err();
    assert!(e.to_string().contains("control character"), "{e}");
    // an empty topic level is an empty id
    let e = map_default("devices//telemetry", "{}").unwrap().unwrap_err();
    assert!(matches!(e, MapError::InvalidDeviceId { .. }), "{e}");
}

// ---- mapping: payload → points --------------------------------------------------------

#[test]
fn mapping_payload_numbers_and_booleans_become_points_others_stay_in_the_document() {
    let payload = r#"{"t": -1.5, "n": 3, "big": 18446744073709551615, "on": true, "off": false,
        "name": "lamp", "none": null, "list": [1, 2]}"#;
    let r = map_default("devices/d/telemetry", payload).unwrap().unwrap();
    let mut got = points(&r);
    got.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        got,
        [
            ("big", ARRIVAL.0, 18_446_744_073_709_551_615.0),
            ("n", ARRIVAL.0, 3.0),
            ("off", ARRIVAL.0, 0.0),
            ("on", ARRIVAL.0, 1.0),
            ("t", ARRIVAL.0, -1.5)
        ]
    );
    assert_eq!(r.document.unwrap()["name"], "lamp");
}

#[test]
fn mapping_payload_nested_objects_are_flattened_with_dots() {
    let r = map_default("devices/d/telemetry", r#"{"env": {"temp": 21, "air": {"co2": 400}}, "x": {}}"#)
        .unwrap()
        .unwrap();
    assert_eq!(points(&r), [("env.air.co2", ARRIVAL.0, 400.0), ("env.temp", ARRIVAL.0, 21.0)]);
}

#[test]
fn mapping_payload_timestamp_field_in_rfc3339_or_unix_ms_else_arrival_time() {
    let r = map_default("devices/d/telemetry", r#"{"ts": "2024-05-01T12:00:00Z", "v": 1}"#).unwrap().unwrap();
    assert_eq!(points(&r), [("v", 1_714_564_800_000, 1.0)], "ts is not a metric");
    assert_eq!(r.received_at, ARRIVAL);
    let r = map_default("devices/d/telemetry", r#"{"ts": 1714564800123, "v": 1}"#).unwrap().unwrap();
    assert_eq!(points(&r), [("v", 1_714_564_800_123, 1.0)]);
    let e = map_default("devices/d/telemetry", r#"{"ts": "soon", "v": 1}"#).unwrap().unwrap_err();
    assert!(matches!(e, MapError::BadTimestamp { .. }));
    assert!(e.to_string().starts_with("`ts`: \"soon\" is neither RFC 3339"), "{e}");
}

#[test]
fn mapping_payload_msg_id_is_a_string_or_an_integer_and_not_a_metric() {
    let r = map_default("devices/d/telemetry", r#"{"msg_id": "m-1", "v": 1}"#).unwrap().unwrap();
    assert_eq!((r.msg_id.as_deref(), r.points.len()), (Some("m-1"), 1));
    let r = map_default("devices/d/telemetry", r#"{"msg_id": 17, "v": 1}"#).unwrap().unwrap();
    assert_eq!((r.msg_id.as_deref(), r.points.len()), (Some("17"), 1));
    let e = map_default("devices/d/telemetry", r#"{"msg_id": 1.5}"#).unwrap().unwrap_err();
    assert_eq!(e.to_string(), "`msg_id` must be a string or an integer, found number");
}

#[test]
fn mapping_payload_that_is_not_a_json_object_is_refused_with_what_was_wrong() {
    let e = map_default("devices/d/telemetry", "21.5").unwrap().unwrap_err();
    assert_eq!(e, MapError::NotObject("number"));
    let e = map_default("devices/d/telemetry", "[1]").unwrap().unwrap_err();
    assert_eq!(e.to_string(), "expected a JSON object, found array");
    let e = map_default("devices/d/telemetry", "{\"v\": 1,}").unwrap().unwrap_err();
    assert!(e.to_string().contains("line 1 column 9"), "{e}");
    let e = map_default("devices/d/telemetry", "\u{fffd}garbage").unwrap().unwrap_err();
    assert!(matches!(e, MapError::NotJson(_)));
}

#[test]
fn mapping_include_and_exclude_select_metrics_by_name_or_dotted_prefix() {
    let mut rules = FieldRules::standard();
    rules.include = Some(vec!["env".into(), "v".into()]);
    rules.exclude = vec!["env.secret".into()];
    let object =
        mapping::parse_object(br#"{"v": 1, "vv": 2, "env": {"t": 3, "secret": 4}, "other": 5}"#).unwrap();
    let r = mapping::record_from_object(device("d"), object, &rules, None, &ARRIVAL).unwrap();
    assert_eq!(points(&r), [("env.t", ARRIVAL.0, 3.0), ("v", ARRIVAL.0, 1.0)]);
}

// ---- mapping: config ------------------------------------------------------------------

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Section {
    mappings: Vec<Mapping>,
}

#[test]
fn mapping_config_round_trips_through_toml() {
    let text = r#"
        [[mappings]]
        filter = "plant/+/line/+/metrics"
        device_level = 3
        timestamp = "time"
        metrics = ["rpm", "temp"]

        [[mappings]]
        filter = "gw/#"
        device_field = "serial"
        msg_id = "seq"
        exclude = ["rssi"]
    "#;
    let section: Section = toml::from_str(text).unwrap();
    assert_eq!(toml::from_str::<Section>(&toml::to_string(&section).unwrap()).unwrap(), section);
    let m = &section.mappings;
    assert_eq!(m[0].device, DeviceSource::TopicLevel(3));
    assert_eq!(m[0].fields.timestamp.as_deref(), Some("time"));
    assert_eq!(m[0].fields.include, Some(vec!["rpm".to_owned(), "temp".to_owned()]));
    assert_eq!(m[1].device, DeviceSource::Field("serial".into()));
    assert_eq!((m[1].fields.msg_id.as_deref(), m[1].fields.timestamp.as_deref()), (Some("seq"), None));
    let r = m[1].map(&topic("gw/a/b"), br#"{"serial": "s-1", "rssi": -70, "v": 2}"#, &ARRIVAL).unwrap();
    assert_eq!((r.device.as_str(), points(&r)), ("s-1", vec![("v", ARRIVAL.0, 2.0)]));
}

#[test]
fn mapping_config_errors_name_the_filter_and_the_problem() {
    let err = |text: &str| serde_json::from_str::<Mapping>(text).unwrap_err().to_string();
    let e = err(r#"{"filter": "a/+/b"}"#);
    assert!(e.contains("exactly one of device_level and device_field"), "{e}");
    let e = err(r#"{"filter": "a/+/b", "device_level": 1, "device_field": "id"}"#);
    assert!(e.contains("exactly one"), "{e}");
    let e = err(r#"{"filter": "a/+", "device_level": 2}"#);
    assert!(e.contains("device_level 2 is not a level of the filter"), "{e}");
    assert!(serde_json::from_str::<Mapping>(r#"{"filter": "a/#", "device_level": 3}"#).is_ok(), "below `#`");
    let e = err(r#"{"filter": "a/#/b", "device_level": 0}"#);
    assert!(e.contains("\"a/#/b\""), "{e}");
    let e = err(r#"{"filter": "a", "device_field": "id", "colour": 1}"#);
    assert!(e.contains("colour"), "{e}");
}

/// The default config: defaults section equals what `Mapping::defaults` says, and
/// `Config` serializes to something that parses back to itself.
#[test]
fn mapping_defaults_serialize_and_parse_back() {
    let config = Config::default();
    let text = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&text).unwrap(), config);
    assert_eq!(serde_json::from_str::<Config>("{}").unwrap(), config, "every key has a default");
}

// ---- queue and writer -----------------------------------------------------------------

/// Test-only store: keeps written records, dedupes `(device, msg_id)`, and can hold every
/// write until released (to fill the queue).
#[derive(Default)]
struct MemoryStore {
    written: Mutex<Vec<Vec<Record>>>,
    gate: Option<Notify>,
    fail: bool,
}

impl MemoryStore {
    fn gated() -> Self {
        Self { gate: Some(Notify::new()), ..Self::default() }
    }

    fn batches(&self) -> Vec<usize> {
        self.written.lock().unwrap().iter().map(Vec::len).collect()
    }
}

impl TelemetryStore for MemoryStore {
    async fn write(&self, records: Vec<Record>) -> Result<WriteSummary, StoreError> {
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        if self.fail {
            return Err(StoreError::Backend("disk on fire".into()));
        }
        let mut written = self.written.lock().unwrap();
        let mut summary = WriteSummary::default();
        for record in &records {
            let dup = record.msg_id.is_some()
                && written.iter().flatten().any(|r| r.device == record.device && r.msg_id == record.msg_id);
            if dup {
                summary.duplicates += 1;
            } else {
                summary.records += 1;
                summary.points += record.points.len();
            }
        }
        written.push(records);
        Ok(summary)
    }

    async fn devices(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        Ok(Vec::new())
    }

    async fn latest(&self, _device: &DeviceId) -> Result<Option<Latest>, StoreError> {
        Ok(None)
    }

    async fn points(&self, _query: PointsQuery) -> Result<Vec<PointRow>, StoreError> {
        Ok(Vec::new())
    }

    async fn aggregate(&self, _query: AggregateQuery) -> Result<Aggregated, StoreError> {
        Err(StoreError::Backend("not in the test store".into()))
    }

    async fn enforce_retention(
        &self,
        _policy: RetentionPolicy,
        _now: Timestamp,
    ) -> Result<RetentionReport, StoreError> {
        Ok(RetentionReport::default())
    }
}

fn record(dev: &str, msg_id: Option<&str>, n_points: usize) -> Record {
    let points = (0..n_points)
        .map(|i| telehub_store::Point { metric: Metric(format!("m{i}")), ts: ARRIVAL, value: i as f64 })
        .collect();
    Record {
        device: device(dev),
        msg_id: msg_id.map(Into::into),
        received_at: ARRIVAL,
        points,
        document: None,
    }
}

fn config(capacity: usize) -> Config {
    Config { queue_capacity: capacity, ..Config::default() }
}

#[tokio::test]
async fn ingest_resolves_after_the_write_with_the_callers_counts() {
    let store = Arc::new(MemoryStore::default());
    let (ingest, writer) = Ingest::new(config(100), store.clone());
    let stop = CancellationToken::new();
    let task = spawn(writer.run(stop.clone()));
    let receipt = ingest.ingest(vec![record("a", None, 2), record("a", None, 3)]).await.unwrap();
    assert_eq!(receipt, Receipt { records: 2, points: 5 });
    assert_eq!(store.batches(), [2], "committed before the future resolved");
    assert_eq!(ingest.try_ingest(Vec::new()).await.unwrap(), Receipt::default());
    let s = ingest.stats();
    assert_eq!((s.records, s.points, s.batches, s.queued), (2, 5, 1, 0));
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn writer_groups_many_callers_into_one_store_write() {
    let store = Arc::new(MemoryStore::gated());
    let (ingest, writer) = Ingest::new(config(100), store.clone());
    let stop = CancellationToken::new();
    let task = spawn(writer.run(stop.clone()));
    // the first write is held at the gate while ten more callers queue behind it
    let first = spawn({
        let ingest = ingest.clone();
        async move { ingest.ingest(vec![record("a", None, 1)]).await }
    });
    wait_until(|| ingest.stats().queued == 1).await;
    let mut rest = Vec::new();
    for i in 0..10 {
        let ingest = ingest.clone();
        rest.push(spawn(async move { ingest.try_ingest(vec![record(&format!("d{i}"), None, 1)]).await }));
    }
    wait_until(|| ingest.stats().queued == 11).await;
    store.gate.as_ref().unwrap().notify_one();
    first.await.unwrap().unwrap();
    store.gate.as_ref().unwrap().notify_one();
    for r in rest {
        assert_eq!(r.await.unwrap().unwrap(), Receipt { records: 1, points: 1 });
    }
    assert_eq!(store.batches(), [1, 10]);
    assert_eq!(ingest.stats().batches, 2);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn full_queue_refuses_try_ingest_with_retry_after_and_counts_it() {
    let store = Arc::new(MemoryStore::gated());
    let (ingest, writer) = Ingest::new(config(3), store.clone());
    let stop = CancellationToken::new();
    let task = spawn(writer.run(stop.clone()));
    let held = spawn({
        let ingest = ingest.clone();
        async move { ingest.ingest(vec![record("a", None, 1), record("a", None, 1)]).await }
    });
    wait_until(|| ingest.stats().queued == 2).await;
    match ingest.try_ingest(vec![record("b", None, 1), record("b", None, 1)]).await {
        Err(IngestError::QueueFull { capacity: 3, retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(1))
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert_eq!(ingest.stats().refused_full, 2);
    match ingest.try_ingest(vec![record("c", None, 1); 4]).await {
        Err(IngestError::TooLarge { records: 4, capacity: 3 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // `ingest` waits for room instead (the MQTT path): it completes once the gate opens
    let waiting = spawn({
        let ingest = ingest.clone();
        async move { ingest.ingest(vec![record("b", None, 1), record("b", None, 1)]).await }
    });
    store.gate.as_ref().unwrap().notify_one();
    held.await.unwrap().unwrap();
    wait_until(|| ingest.stats().queued == 2).await;
    store.gate.as_ref().unwrap().notify_one();
    assert_eq!(waiting.await.unwrap().unwrap().records, 2);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn store_failure_reaches_every_caller_of_the_batch_and_frees_the_queue() {
    let store = Arc::new(MemoryStore { fail: true, ..MemoryStore::default() });
    let (ingest, writer) = Ingest::new(config(10), store);
    let stop = CancellationToken::new();
    let task = spawn(writer.run(stop.clone()));
    let e = ingest.ingest(vec![record("a", None, 1)]).await.unwrap_err();
    assert!(matches!(e, IngestError::Store(_)), "{e}");
    assert!(e.to_string().contains("disk on fire"), "{e}");
    let s = ingest.stats();
    assert_eq!((s.write_errors, s.queued, s.records), (1, 0, 0));
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued_then_refuses() {
    let store = Arc::new(MemoryStore::gated());
    let (ingest, writer) = Ingest::new(config(10), store.clone());
    let stop = CancellationToken::new();
    let task = spawn(writer.run(stop.clone()));
    let a = spawn({
        let ingest = ingest.clone();
        async move { ingest.ingest(vec![record("a", None, 1)]).await }
    });
    wait_until(|| ingest.stats().queued == 1).await;
    let b = spawn({
        let ingest = ingest.clone();
        async move { ingest.ingest(vec![record("b", None, 1)]).await }
    });
    wait_until(|| ingest.stats().queued == 2).await;
    stop.cancel();
    store.gate.as_ref().unwrap().notify_one();
    store.gate.as_ref().unwrap().notify_one();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    task.await.unwrap();
    assert_eq!(store.batches(), [1, 1], "queued records are written before the writer stops");
    assert!(matches!(ingest.try_ingest(vec![record("c", None, 1)]).await, Err(IngestError::Closed)));
    assert!(matches!(ingest.ingest(vec![record("c", None, 1)]).await, Err(IngestError::Closed)));
    assert!(!ingest.is_healthy());
}

fn message(t: &str, payload: &'static str, qos: QoS) -> Message {
    Message {
        topic: topic(t),
        payload: bytes_of(payload),
        qos,
        retain: false,
        properties: Default::default(),
    }
}

#[tokio::test]
async fn offer_maps_mqtt_messages_and_counts_unusable_payloads() {
    let store = Arc::new(MemoryStore::default());
    let (ingest, writer) = Ingest::new(config(10), store.clone());
    let stop = CancellationToken::new();
    let task = spawn(writer.run(stop.clone()));
    let qos1 = QoS::AtLeastOnce;
    let commit =
        ingest.offer_message(&message("sensor/data", r#"{"device_id":"raspi-01","temperature":25.5}"#, qos1));
    assert_eq!(commit.expect("mapped").await.unwrap(), Receipt { records: 1, points: 1 });
    assert!(
        ingest.offer_message(&message("chat/room", "hello", qos1)).is_none(),
        "not telemetry, not counted"
    );
    assert_eq!(ingest.stats().rejected_payloads, 0);
    assert!(ingest.offer_message(&message("devices/x/telemetry", "21.5", qos1)).is_none());
    assert!(ingest.offer_message(&message("sensor/data", "{\"temperature\": 1}", qos1)).is_none());
    assert_eq!(ingest.stats().rejected_payloads, 2);
    assert_eq!(store.batches(), [1]);
    assert!(ingest.is_healthy());
    stop.cancel();
    task.await.unwrap();
}

/// The broker drops the future of a QoS 0 message (and of a will): the record must be
/// queued by `offer_message` itself, not when the future is first polled.
#[tokio::test]
async fn offer_queues_at_once_even_when_the_future_is_dropped() {
    let store = Arc::new(MemoryStore::default());
    let (ingest, writer) = Ingest::new(config(10), store.clone());
    let stop = CancellationToken::new();
    let task = spawn(writer.run(stop.clone()));
    drop(ingest.offer_message(&message("a/telemetry", r#"{"v": 1}"#, QoS::AtMostOnce)));
    wait_until(|| ingest.stats().records == 1).await;
    assert_eq!(store.batches(), [1]);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn offer_when_full_holds_qos1_until_room_and_refuses_qos0() {
    let store = Arc::new(MemoryStore::gated());
    let (ingest, writer) = Ingest::new(config(1), store.clone());
    let stop = CancellationToken::new();
    let task = spawn(writer.run(stop.clone()));
    let first = ingest.offer_message(&message("a/telemetry", r#"{"v": 1}"#, QoS::AtLeastOnce)).unwrap();
    wait_until(|| ingest.stats().queued == 1).await;
    let qos0 = ingest.offer_message(&message("b/telemetry", r#"{"v": 2}"#, QoS::AtMostOnce)).unwrap();
    assert!(matches!(qos0.await, Err(IngestError::QueueFull { .. })));
    assert_eq!(ingest.stats().refused_full, 1);
    // QoS 1: waits for room (dropping its future does not lose it), then is written
    drop(ingest.offer_message(&message("c/telemetry", r#"{"v": 3}"#, QoS::AtLeastOnce)).unwrap());
    let gate = store.gate.as_ref().unwrap();
    gate.notify_one();
    first.await.unwrap();
    wait_until(|| ingest.stats().queued == 1).await;
    gate.notify_one();
    wait_until(|| ingest.stats().records == 2).await;
    let devices: Vec<String> =
        store.written.lock().unwrap().iter().flatten().map(|r| r.device.as_str().to_owned()).collect();
    assert_eq!(devices, ["a", "c"]);
    stop.cancel();
    task.await.unwrap();
}

/// Regression: shutdown used to wait for the QoS 1/2 messages waiting for queue room
/// before flushing the queue, while such a waiter, once it had got room, waited for the
/// flush: the writer never stopped.
#[tokio::test]
async fn shutdown_with_a_message_waiting_for_room_still_stops() {
    let store = Arc::new(MemoryStore::gated());
    let (ingest, writer) = Ingest::new(config(1), store.clone());
    let stop = CancellationToken::new();
    let task = spawn(writer.run(stop.clone()));
    let first = ingest.offer_message(&message("a/telemetry", r#"{"v": 1}"#, QoS::AtLeastOnce)).unwrap();
    wait_until(|| ingest.stats().queued == 1).await;
    let second = ingest.offer_message(&message("b/telemetry", r#"{"v": 2}"#, QoS::AtLeastOnce)).unwrap();
    stop.cancel();
    let gate = store.gate.as_ref().unwrap();
    gate.notify_one();
    first.await.unwrap();
    // the second message either got room before the queue closed (and is written) or
    // was refused; either way the writer stops
    gate.notify_one();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("the writer stops").unwrap();
    match second.await {
        Ok(_) => assert_eq!(ingest.stats().records, 2),
        Err(e) => assert!(matches!(e, IngestError::Closed), "{e}"),
    }
}

#[tokio::test]
async fn as_the_broker_hook_errors_become_mqtt_reasons() {
    use telehub_broker::IngestHook;
    let store = Arc::new(MemoryStore { fail: true, ..MemoryStore::default() });
    let (ingest, writer) = Ingest::new(config(10), store);
    let stop = CancellationToken::new();
    let task = spawn(writer.run(stop.clone()));
    let m = Arc::new(message("a/telemetry", r#"{"v": 1}"#, QoS::AtLeastOnce));
    let ack = IngestHook::offer(&ingest, None, &m).expect("telemetry");
    assert_eq!(ack.await, Err(telehub_broker::IngestError::Unavailable));
    assert!(IngestHook::offer(&ingest, None, &Arc::new(message("x/y", "{}", QoS::AtLeastOnce))).is_none());
    stop.cancel();
    task.await.unwrap();
}

/// Tests spawn through a tracker too (clippy bans bare `tokio::spawn`).
fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio_util::task::TaskTracker::new().spawn(task)
}

fn bytes_of(s: &'static str) -> bytes::Bytes {
    bytes::Bytes::from_static(s.as_bytes())
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached within 5 s");
}
