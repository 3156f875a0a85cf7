//! Rule evaluation cost per message: building the [`MessageContext`] from a ~130-byte JSON
//! telemetry payload, then evaluating 1, 100 and 1 000 rules, most of which filter on other
//! topics (as in a hub with many devices and sites), a few match.
//!
//! `cargo bench -p telehub-hub --bench rules -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use telehub_core::{DeviceId, TopicFilter, TopicName};
use telehub_hub::rules::{CompiledRule, Engine, EngineConfig, MessageContext, RuleSpec};
use telehub_store::Timestamp;

/// 130 bytes, the shape of the tutorials' telemetry.
const PAYLOAD: &[u8] =
    br#"{"device_id":"raspi-01","ts":"2026-11-23T04:00:00Z","temperature":25.5,"humidity":60.3,"light":412,"battery":3.71,"rssi":-67}"#;

/// The rules that match `devices/raspi-01/telemetry`: one fires on every message (and
/// renders a templated payload), the others are latched or false, as most rules are on
/// most messages.
const MATCHING: [&str; 5] = [
    r#"condition = "msg.temperature > 20.0"
       actions = [{ type = "publish", topic = "derived/{device}", payload = { f = "${msg.temperature * 1.8 + 32.0}", at = "${ts}" } }]"#,
    r#"condition = "msg.light < 300"
       once_per_crossing = true
       actions = [{ type = "command", topic = "{device}/commands", payload = { led_on = true } }]"#,
    r#"condition = "msg.humidity > 80.0 && device_tags.site == 'plant-7'"
       actions = [{ type = "alert", name = "humid", message = "humidity ${msg.humidity}" }]"#,
    r#"condition = "has(msg.battery) && msg.battery < 3.3"
       cooldown = "10m"
       actions = [{ type = "alert", name = "battery" }]"#,
    r#"condition = "msg.rssi < -90.0"
       for = "1m"
       actions = [{ type = "webhook", webhook = "ops" }]"#,
];

/// `n` rules of which `matching` match the benchmark message's topic.
fn engine(n: usize, matching: usize) -> Engine {
    let mut e = Engine::new(EngineConfig::default());
    for i in 0..n {
        let text = if i < matching {
            format!("name = \"m{i}\"\nfilter = \"devices/+/telemetry\"\n{}", MATCHING[i % MATCHING.len()])
        } else {
            // Other sites' and devices' topics, with the same kinds of conditions.
            let filter = match i % 3 {
                0 => format!("sites/s{i}/+/telemetry"),
                1 => format!("devices/dev-{i}/telemetry"),
                _ => format!("s{i}/#"),
            };
            format!("name = \"o{i}\"\nfilter = \"{filter}\"\n{}", MATCHING[i % MATCHING.len()])
        };
        let spec: RuleSpec = toml::from_str(&text).unwrap();
        e.add(CompiledRule::compile(spec).unwrap()).unwrap();
    }
    e
}

fn benches(c: &mut Criterion) {
    let topic = TopicName::new("devices/raspi-01/telemetry").unwrap();
    let device = DeviceId::new("raspi-01").unwrap();
    let tags = BTreeMap::from([("site".to_owned(), "plant-7".to_owned())]);
    let now = Timestamp(1_700_000_000_000);
    assert!((120..=140).contains(&PAYLOAD.len()), "{}", PAYLOAD.len());

    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(1));
    g.bench_function("message_context", |b| {
        b.iter(|| MessageContext::new(&topic, Some(&device), &tags, black_box(PAYLOAD), now));
    });
    // What the context replaces: a serde_json::Value converted with cel's serde serializer.
    g.bench_function("serde_json_then_cel_to_value", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(PAYLOAD)).unwrap();
            cel::to_value(v).unwrap()
        });
    });
    for (n, matching) in [(1, 1), (100, 5), (1000, 5)] {
        let mut e = engine(n, matching);
        g.bench_with_input(
            BenchmarkId::new("per_message", format!("{n}_rules_{matching}_matching")),
            &n,
            |b, _| {
                b.iter(|| {
                    let ctx = MessageContext::new(&topic, Some(&device), &tags, black_box(PAYLOAD), now);
                    e.evaluate(&ctx, now)
                });
            },
        );
    }
    // Every one of 100 rules matching: the cost of one CEL condition, times 100.
    let mut e = engine(100, 100);
    let ctx = MessageContext::new(&topic, Some(&device), &tags, PAYLOAD, now);
    g.bench_function("evaluate_only/100_rules_100_matching", |b| b.iter(|| e.evaluate(black_box(&ctx), now)));
    // The alternative to the topic index: TopicFilter::matches on each of 1 000 filters.
    let filters: Vec<TopicFilter> =
        (0..1000).map(|i| TopicFilter::new(format!("devices/dev-{i}/telemetry")).unwrap()).collect();
    g.bench_function("linear_filter_scan/1000_filters", |b| {
        b.iter(|| filters.iter().filter(|f| f.matches(black_box(&topic))).count());
    });
    g.finish();
}

criterion_group!(rules, benches);
criterion_main!(rules);
