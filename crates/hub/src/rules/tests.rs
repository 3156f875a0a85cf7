//! Tests of the rules engine: the night-light example of the module docs, every stateful
//! option with a clock passed in, templates, compile errors with positions, filter
//! matching, the state bound and runtime errors.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use telehub_core::{DeviceId, QoS, TopicFilter, TopicName};
use telehub_store::Timestamp;

use super::index::TopicIndex;
use super::*;

/// `n` seconds after an arbitrary origin.
fn t(n: i64) -> Timestamp {
    Timestamp(1_700_000_000_000 + n * 1000)
}

fn spec(toml_text: &str) -> RuleSpec {
    toml::from_str(toml_text).unwrap()
}

fn compile(toml_text: &str) -> CompiledRule {
    CompiledRule::compile(spec(toml_text)).unwrap()
}

fn compile_err(toml_text: &str) -> RuleError {
    CompiledRule::compile(spec(toml_text)).unwrap_err()
}

fn engine(rules: &[&str]) -> Engine {
    let mut e = Engine::new(EngineConfig::default());
    for r in rules {
        e.add(compile(r)).unwrap();
    }
    e
}

fn msg_tags(topic: &str, device: Option<&str>, tags: &[(&str, &str)], payload: &str) -> MessageContext {
    let tags: BTreeMap<String, String> =
        tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let device = device.map(|d| DeviceId::new(d.to_owned()).unwrap());
    MessageContext::new(
        &TopicName::new(topic.to_owned()).unwrap(),
        device.as_ref(),
        &tags,
        payload.as_bytes(),
        t(0),
    )
}

fn msg(topic: &str, device: &str, payload: &str) -> MessageContext {
    msg_tags(topic, Some(device), &[], payload)
}

/// Sends `payload` from `device` on `{device}/telemetry` at `now`.
fn send(e: &mut Engine, device: &str, payload: &serde_json::Value, now: Timestamp) -> Vec<Firing> {
    e.evaluate(&msg(&format!("{device}/telemetry"), device, &payload.to_string()), now)
}

fn payloads(firings: &[Firing]) -> Vec<serde_json::Value> {
    firings
        .iter()
        .flat_map(|f| f.actions.as_ref().unwrap())
        .map(|a| match a {
            RenderedAction::Command { payload, .. } | RenderedAction::Publish { payload, .. } => {
                payload.clone()
            }
            other => panic!("unexpected action {other:?}"),
        })
        .collect()
}

fn only_action(firings: &[Firing]) -> &RenderedAction {
    assert_eq!(firings.len(), 1, "{firings:?}");
    let actions = firings[0].actions.as_ref().unwrap();
    assert_eq!(actions.len(), 1);
    &actions[0]
}

const ALERT: &str = r##"actions = [{ type = "alert", name = "a" }]"##;

// ---------------------------------------------------------------- the night-light

/// The module docs' example, read from the docs themselves so the two cannot drift apart.
fn night_light_toml() -> String {
    let docs: String = include_str!("mod.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let start = docs.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + docs[start..].find("```").unwrap();
    docs[start..end].to_owned()
}

#[derive(serde::Deserialize)]
struct RulesFile {
    rules: Vec<RuleSpec>,
}

#[test]
fn night_light_fires_once_per_crossing() {
    let file: RulesFile = toml::from_str(&night_light_toml()).unwrap();
    assert_eq!(file.rules.len(), 2);
    let mut e = Engine::new(EngineConfig::default());
    for r in file.rules {
        e.add(CompiledRule::compile(r).unwrap()).unwrap();
    }
    let mut sent = Vec::new();
    for (i, light) in [250, 260, 400, 450, 200].into_iter().enumerate() {
        let firings = send(&mut e, "nl-1", &json!({ "light": light }), t(i as i64));
        sent.push(payloads(&firings));
        for f in &firings {
            let RenderedAction::Command { device, topic, mode, .. } = &f.actions.as_ref().unwrap()[0] else {
                panic!("expected a command");
            };
            assert_eq!(device.as_str(), "nl-1");
            assert_eq!(topic.as_ref().unwrap().as_str(), "nl-1/commands");
            assert_eq!(*mode, CommandMode::FireAndForget);
        }
    }
    assert_eq!(
        sent,
        [
            vec![json!({ "led_on": true })],
            vec![],
            vec![json!({ "led_on": false })],
            vec![],
            vec![json!({ "led_on": true })],
        ]
    );
    // A message without `light` is ignored quietly, and devices are independent.
    assert!(send(&mut e, "nl-1", &json!({ "battery": 3.1 }), t(10)).is_empty());
    assert_eq!(e.stats("night-light-on").unwrap().errors, 0);
    assert_eq!(e.stats("night-light-on").unwrap().skipped, 1);
    assert_eq!(payloads(&send(&mut e, "nl-2", &json!({ "light": 100 }), t(11))), [json!({ "led_on": true })]);
}

// ---------------------------------------------------------------- options

#[test]
fn without_once_per_crossing_every_true_message_fires() {
    let mut e =
        engine(&[&format!("name = \"hot\"\nfilter = \"+/telemetry\"\ncondition = \"msg.t > 30\"\n{ALERT}")]);
    let fired: Vec<usize> = [31, 32, 20, 33]
        .iter()
        .enumerate()
        .map(|(i, v)| send(&mut e, "d", &json!({ "t": v }), t(i as i64)).len())
        .collect();
    assert_eq!(fired, [1, 1, 0, 1]);
    assert_eq!(e.stats("hot").unwrap().firings, 3);
}

#[test]
fn clear_condition_gives_hysteresis() {
    let mut e = engine(&[&format!(
        "name = \"dark\"\nfilter = \"+/telemetry\"\ncondition = \"msg.light < 300\"\n\
         clear_condition = \"msg.light >= 320\"\nonce_per_crossing = true\n{ALERT}"
    )]);
    let fired: Vec<usize> = [290, 310, 290, 305, 330, 290]
        .iter()
        .enumerate()
        .map(|(i, v)| send(&mut e, "d", &json!({ "light": v }), t(i as i64)).len())
        .collect();
    // 290 fires; 310 is in the band (no re-arm), so 290 again does not fire; 330 re-arms.
    assert_eq!(fired, [1, 0, 0, 0, 0, 1]);
}

#[test]
fn for_requires_the_condition_to_hold_that_long() {
    let mut e = engine(&[
        "name = \"hot\"\nfilter = \"+/telemetry\"\ncondition = \"msg.t > 30\"\nfor = \"30s\"\n\
         once_per_crossing = true\nactions = [{ type = \"alert\", name = \"hot\", message = \"t=${msg.t}\" }]",
    ]);
    assert!(send(&mut e, "d", &json!({ "t": 31 }), t(0)).is_empty());
    assert!(send(&mut e, "d", &json!({ "t": 35 }), t(10)).is_empty());
    assert!(e.tick(t(29)).is_empty());
    // The tick fires without a new message, with the last message that held the condition.
    let firings = e.tick(t(30));
    assert_eq!(firings[0].cause, Cause::Held);
    let RenderedAction::Alert { message, device, .. } = only_action(&firings) else { panic!() };
    assert_eq!(message.as_deref(), Some("t=35"));
    assert_eq!(device.as_ref().unwrap().as_str(), "d");
    assert!(e.tick(t(31)).is_empty());
    assert!(send(&mut e, "d", &json!({ "t": 36 }), t(32)).is_empty());

    // Falling false restarts the clock; a message after the hold fires by itself.
    assert!(send(&mut e, "d", &json!({ "t": 20 }), t(40)).is_empty());
    assert!(send(&mut e, "d", &json!({ "t": 31 }), t(50)).is_empty());
    assert!(send(&mut e, "d", &json!({ "t": 20 }), t(70)).is_empty());
    assert!(e.tick(t(90)).is_empty());
    assert!(send(&mut e, "d", &json!({ "t": 31 }), t(100)).is_empty());
    let firings = send(&mut e, "d", &json!({ "t": 32 }), t(130));
    assert_eq!(firings.len(), 1);
    assert_eq!(firings[0].cause, Cause::Message);
    assert!(e.tick(t(200)).is_empty());
}

#[test]
fn cooldown_limits_firings_per_device() {
    let mut e = engine(&[&format!(
        "name = \"hot\"\nfilter = \"+/telemetry\"\ncondition = \"msg.t > 30\"\ncooldown = \"1m\"\n{ALERT}"
    )]);
    assert_eq!(send(&mut e, "a", &json!({ "t": 31 }), t(0)).len(), 1);
    assert_eq!(send(&mut e, "a", &json!({ "t": 31 }), t(30)).len(), 0);
    assert_eq!(send(&mut e, "b", &json!({ "t": 31 }), t(30)).len(), 1, "per device");
    assert_eq!(send(&mut e, "a", &json!({ "t": 31 }), t(59)).len(), 0);
    assert_eq!(send(&mut e, "a", &json!({ "t": 31 }), t(60)).len(), 1);
}

#[test]
fn cooldown_defers_a_crossing_to_the_next_message() {
    let mut e = engine(&[&format!(
        "name = \"dark\"\nfilter = \"+/telemetry\"\ncondition = \"msg.light < 300\"\n\
         once_per_crossing = true\ncooldown = \"1m\"\n{ALERT}"
    )]);
    assert_eq!(send(&mut e, "d", &json!({ "light": 200 }), t(0)).len(), 1);
    assert_eq!(send(&mut e, "d", &json!({ "light": 400 }), t(10)).len(), 0);
    assert_eq!(send(&mut e, "d", &json!({ "light": 200 }), t(20)).len(), 0, "in the cooldown");
    assert_eq!(send(&mut e, "d", &json!({ "light": 200 }), t(61)).len(), 1, "still latched after it");
    assert_eq!(send(&mut e, "d", &json!({ "light": 200 }), t(200)).len(), 0);
}

#[test]
fn no_data_fires_from_tick_once_per_silence() {
    let mut e = engine(&["name = \"silent\"\nfilter = \"+/telemetry\"\nno_data = \"10m\"\n\
         actions = [{ type = \"alert\", name = \"silent\", severity = \"critical\", message = \"${device} is silent\" }]"]);
    assert!(send(&mut e, "a", &json!({ "x": 1 }), t(0)).is_empty());
    assert!(send(&mut e, "b", &json!({ "x": 1 }), t(300)).is_empty());
    assert!(e.tick(t(599)).is_empty());
    let firings = e.tick(t(600));
    assert_eq!(firings[0].cause, Cause::NoData);
    let RenderedAction::Alert { name, device, severity, message } = only_action(&firings) else { panic!() };
    assert_eq!((name.as_str(), device.as_ref().unwrap().as_str()), ("silent", "a"));
    assert_eq!(*severity, Severity::Critical);
    assert_eq!(message.as_deref(), Some("a is silent"));
    assert!(e.tick(t(700)).is_empty(), "once per silence");
    assert_eq!(e.tick(t(900)).len(), 1, "b's turn");
    // A message re-arms it.
    send(&mut e, "a", &json!({ "x": 2 }), t(1000));
    assert!(e.tick(t(1500)).is_empty());
    assert_eq!(e.tick(t(1600)).len(), 1);
}

#[test]
fn no_data_counts_only_messages_matching_the_condition() {
    let mut e = engine(&[&format!(
        "name = \"no-temp\"\nfilter = \"+/telemetry\"\ncondition = \"has(msg.temp)\"\nno_data = \"1m\"\n{ALERT}"
    )]);
    send(&mut e, "a", &json!({ "temp": 1 }), t(0));
    send(&mut e, "a", &json!({ "battery": 1 }), t(50));
    assert_eq!(e.tick(t(60)).len(), 1);
}

#[test]
fn disabled_rules_are_kept_but_not_evaluated() {
    let mut e = engine(&[&format!("name = \"r\"\nfilter = \"#\"\nenabled = false\n{ALERT}")]);
    assert!(send(&mut e, "d", &json!({}), t(0)).is_empty());
    assert_eq!(e.stats("r").unwrap().evaluations, 0);
    assert!(!e.get("r").unwrap().enabled);
}

// ---------------------------------------------------------------- templates

#[test]
fn templates_render_typed_values_and_interpolate_strings() {
    let mut e = engine(&[r##"
        name = "t"
        filter = "sensors/#"
        [[actions]]
        type = "publish"
        topic = "out/{device}/${msg.kind}"
        qos = 1
        retain = true
        [actions.payload]
        light = "${msg.light}"
        half = "${msg.light / 2.0}"
        third = "${msg.light / 3.0}"
        ok = "${msg.light < 300}"
        nested = "${ {'a': [1, msg.kind]} }"
        text = "light is ${msg.light} on ${topic} (${device_tags.site})"
        fixed = [1, "two", { three = 3 }]
        literal = "$${not a template}"
        missing_device = "${device == null}"
        year = "${ts.getFullYear() > 2000}"
    "##]);
    let m =
        msg_tags("sensors/x", Some("dev-1"), &[("site", "plant-7")], r##"{"light": 250, "kind": "lux"}"##);
    let firings = e.evaluate(&m, t(0));
    let RenderedAction::Publish { topic, payload, qos, retain } = only_action(&firings) else { panic!() };
    assert_eq!(topic.as_str(), "out/dev-1/lux");
    assert_eq!((*qos, *retain), (QoS::AtLeastOnce, true));
    assert_eq!(
        *payload,
        json!({
            "light": 250,
            "half": 125,
            "third": 250.0 / 3.0,
            "ok": true,
            "nested": { "a": [1, "lux"] },
            "text": "light is 250 on sensors/x (plant-7)",
            "fixed": [1, "two", { "three": 3 }],
            "literal": "${not a template}",
            "missing_device": false,
            "year": true,
        })
    );
}

#[test]
fn a_lone_template_of_msg_gives_back_the_payload() {
    let mut e = engine(&[r##"name = "echo"
        filter = "#"
        actions = [{ type = "webhook", webhook = "w", payload = "${msg}" }]"##]);
    let doc = json!({
        "i": -3, "big": 9_007_199_254_740_992_u64, "f": 0.5, "g": -1.5e-10, "h": 0.1, "s": "é", "b": false, "n": null,
        "list": [1, [2, {"x": "y"}]], "obj": {}
    });
    let firings = e.evaluate(&msg("a/b", "d", &doc.to_string()), t(0));
    let RenderedAction::Webhook { webhook, payload } = only_action(&firings) else { panic!() };
    assert_eq!(webhook, "w");
    assert_eq!(payload.as_ref().unwrap(), &doc);
}

#[test]
fn command_defaults_and_templates() {
    let mut e = engine(&[r##"
        name = "c"
        filter = "+/telemetry"
        actions = [
          { type = "command", payload = "on" },
          { type = "command", device = "${msg.target}", payload = { v = "${msg.v}" }, mode = "latest_wins", key = "heater-${msg.v}", ttl = "10m" },
          { type = "command", mode = "queued", topic = "cmd/{device}", payload = 1 },
        ]
    "##]);
    let firings = send(&mut e, "src", &json!({ "target": "other", "v": 2 }), t(0));
    let actions = firings[0].actions.as_ref().unwrap();
    assert_eq!(
        actions[0],
        RenderedAction::Command {
            device: DeviceId::new("src").unwrap(),
            topic: None,
            payload: json!("on"),
            mode: CommandMode::FireAndForget,
            key: None,
            ttl: None,
        }
    );
    assert_eq!(
        actions[1],
        RenderedAction::Command {
            device: DeviceId::new("other").unwrap(),
            topic: None,
            payload: json!({ "v": 2 }),
            mode: CommandMode::LatestWins,
            key: Some("heater-2".to_owned()),
            ttl: Some(Duration::from_secs(600)),
        }
    );
    let RenderedAction::Command { topic, mode, .. } = &actions[2] else { panic!() };
    assert_eq!((topic.as_ref().unwrap().as_str(), *mode), ("cmd/src", CommandMode::Queued));
}

#[test]
fn alert_and_clear_alert_carry_the_device() {
    let mut e = engine(&[r##"
        name = "a"
        filter = "#"
        actions = [{ type = "alert", name = "hot" }, { type = "clear_alert", name = "cold" }]
    "##]);
    let firings = send(&mut e, "d", &json!({}), t(0));
    let d = Some(DeviceId::new("d").unwrap());
    assert_eq!(
        firings[0].actions.as_ref().unwrap(),
        &[
            RenderedAction::Alert {
                name: "hot".into(),
                device: d.clone(),
                severity: Severity::Warning,
                message: None
            },
            RenderedAction::ClearAlert { name: "cold".into(), device: d },
        ]
    );
}

#[test]
fn template_errors_name_the_place_and_offset() {
    let err = compile_err(
        r##"name = "r"
        filter = "#"
        actions = [{ type = "alert", name = "x" }, { type = "publish", topic = "t", payload = { a = { b = "x ${msg.light <} y" } } }]"##,
    );
    let RuleError::Template { at, offset, message } = &err else { panic!("{err:?}") };
    assert_eq!(at, "actions[1].payload.a.b");
    // `x ${msg.light <} y`: the expression starts at byte 4 and ends (unexpectedly) at 15.
    assert_eq!(*offset, 15, "{message}");
    assert!(err.to_string().starts_with("actions[1].payload.a.b: at offset 15: "), "{err}");

    let err = compile_err(
        "name = \"r\"\nfilter = \"#\"\nactions = [{ type = \"publish\", topic = \"a/${msg.x\", payload = 1 }]",
    );
    assert!(
        matches!(&err, RuleError::Template { at, offset: 2, message } if at == "actions[0].topic" && message.contains("unterminated")),
        "{err:?}"
    );

    let err = compile_err(
        "name = \"r\"\nfilter = \"#\"\nactions = [{ type = \"alert\", name = \"a\", message = \"${ }\" }]",
    );
    assert!(matches!(&err, RuleError::Template { at, .. } if at == "actions[0].message"), "{err:?}");
}

#[test]
fn template_failures_at_runtime_are_recorded_on_the_firing() {
    let mut e = engine(&[r##"
        name = "r"
        filter = "#"
        once_per_crossing = true
        actions = [{ type = "publish", topic = "out", payload = "${msg.missing}" }]
    "##]);
    let firings = send(&mut e, "d", &json!({ "x": 1 }), t(5));
    assert_eq!(firings.len(), 1);
    let error = firings[0].actions.as_ref().unwrap_err();
    assert!(error.starts_with("actions[0]: ") && error.contains("missing"), "{error}");
    let stats = e.stats("r").unwrap();
    assert_eq!((stats.firings, stats.errors, stats.last_fired), (1, 1, Some(t(5))));
    assert!(!stats.recent.back().unwrap().2);
    // It counted as the crossing's firing.
    assert!(send(&mut e, "d", &json!({ "x": 1 }), t(6)).is_empty());

    // A topic that renders to something invalid, and `{device}` without a device.
    let mut e = engine(&[
        "name = \"r\"\nfilter = \"#\"\nactions = [{ type = \"publish\", topic = \"${msg.t}\", payload = 1 }]",
    ]);
    let firings = send(&mut e, "d", &json!({ "t": "a/+" }), t(0));
    assert!(firings[0].actions.as_ref().unwrap_err().contains("wildcard"));
    let mut e = engine(&["name = \"r\"\nfilter = \"#\"\nactions = [{ type = \"command\", payload = 1 }]"]);
    let firings = e.evaluate(&msg_tags("x", None, &[], "{}"), t(0));
    assert!(firings[0].actions.as_ref().unwrap_err().contains("no device"));
    assert_eq!(firings[0].device, None);
}

// ---------------------------------------------------------------- compile errors

#[test]
fn condition_parse_errors_name_line_and_column() {
    let err = compile_err("name = \"r\"\nfilter = \"#\"\ncondition = \"msg.light <\"");
    assert_eq!(err.position(), Some((1, 12)));
    assert!(err.to_string().starts_with("condition: line 1, column 12: "), "{err}");

    let err =
        compile_err("name = \"r\"\nfilter = \"#\"\ncondition = \"\"\"\nmsg.a > 1 &&\n  msg.b <<< 2\"\"\"");
    let RuleError::Expression { field, line, .. } = &err else { panic!("{err:?}") };
    assert_eq!((*field, *line), ("condition", 2));

    let err = compile_err("name = \"r\"\nfilter = \"#\"\ncondition = \"true\"\nclear_condition = \"(\"");
    assert!(
        matches!(err, RuleError::Expression { field: "clear_condition", line: 1, column: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn invalid_specs_are_refused_with_the_field() {
    let cases = [
        ("name = \"a b\"\nfilter = \"#\"", "invalid rule name"),
        ("name = \"\"\nfilter = \"#\"", "invalid rule name"),
        ("name = \"r\"\nfilter = \"a/#/b\"", "filter \"a/#/b\""),
        ("name = \"r\"\nfilter = \"a+\"", "filter"),
        ("name = \"r\"\nfilter = \"$share/g/a\"", "shared subscription"),
        ("name = \"r\"\nfilter = \"#\"\nno_data = \"1m\"\nfor = \"1s\"", "no_data: "),
        ("name = \"r\"\nfilter = \"#\"\nno_data = \"1m\"\nonce_per_crossing = true", "once_per_crossing"),
        (
            "name = \"r\"\nfilter = \"#\"\nactions = [{ type = \"publish\", topic = \"t\", payload = 1, qos = 3 }]",
            "actions[0].qos: expected 0, 1 or 2",
        ),
        ("name = \"r\"\nfilter = \"#\"\nactions = [{ type = \"alert\", name = \"\" }]", "actions[0].name"),
    ];
    for (text, expected) in cases {
        let err = compile_err(text).to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn specs_deny_unknown_fields_and_bad_durations() {
    let cases = [
        ("name = \"r\"\nfilter = \"#\"\nconditon = \"true\"", "unknown field `conditon`"),
        ("name = \"r\"\nfilter = \"#\"\ncooldown = \"5 minutes\"", "invalid duration"),
        ("name = \"r\"\nfilter = \"#\"\nfor = \"30\"", "invalid duration"),
        (
            "name = \"r\"\nfilter = \"#\"\nactions = [{ type = \"alert\", name = \"a\", sev = 1 }]",
            "unknown field `sev`",
        ),
        ("name = \"r\"\nfilter = \"#\"\nactions = [{ type = \"explode\" }]", "unknown variant `explode`"),
        (
            "name = \"r\"\nfilter = \"#\"\nactions = [{ type = \"command\", payload = 1, mode = \"x\" }]",
            "unknown variant `x`",
        ),
    ];
    for (text, expected) in cases {
        let err = toml::from_str::<RuleSpec>(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn specs_round_trip_through_json() {
    let s = spec(
        r##"name = "r"
        filter = "+/telemetry"
        condition = "msg.light < 300"
        clear_condition = "msg.light >= 320"
        once_per_crossing = true
        for = "30s"
        cooldown = "500ms"
        actions = [{ type = "command", topic = "{device}/commands", payload = { led_on = true }, ttl = "1h" }]"##,
    );
    let text = serde_json::to_value(&s).unwrap();
    assert_eq!(text["for"], "30s");
    assert_eq!(text["cooldown"], "500ms");
    assert_eq!(text["actions"][0]["type"], "command");
    assert!(text.get("enabled").is_none() && text.get("no_data").is_none());
    assert_eq!(serde_json::from_value::<RuleSpec>(text).unwrap(), s);
}

// ---------------------------------------------------------------- filters

#[test]
fn only_rules_whose_filter_matches_are_evaluated() {
    let mut e = engine(&[
        &format!("name = \"tele\"\nfilter = \"+/telemetry\"\n{ALERT}"),
        &format!("name = \"dev\"\nfilter = \"devices/+/telemetry\"\n{ALERT}"),
        &format!("name = \"all\"\nfilter = \"#\"\n{ALERT}"),
        &format!("name = \"sys\"\nfilter = \"$SYS/#\"\n{ALERT}"),
    ]);
    let names = |f: Vec<Firing>| f.iter().map(|f| f.rule.to_string()).collect::<Vec<_>>();
    assert_eq!(names(e.evaluate(&msg("nl-1/telemetry", "nl-1", "{}"), t(0))), ["tele", "all"]);
    assert_eq!(names(e.evaluate(&msg("devices/d/telemetry", "d", "{}"), t(0))), ["dev", "all"]);
    assert_eq!(names(e.evaluate(&msg("$SYS/broker/load", "d", "{}"), t(0))), ["sys"]);
    assert_eq!(e.stats("tele").unwrap().evaluations, 1);
    assert_eq!(e.stats("all").unwrap().evaluations, 2);
}

#[test]
fn the_topic_index_agrees_with_topic_filter_matches() {
    let filters = [
        "#", "+", "a", "a/#", "a/+", "a/b", "a/b/c", "+/b", "+/+/c", "a/+/#", "/a", "+/", "a//b", "$SYS/#",
        "$SYS/+", "+/#", "b/#", "a/b/#",
    ];
    let topics =
        ["a", "a/b", "a/b/c", "a/b/c/d", "b", "b/b", "/a", "a/", "a//b", "$SYS/x", "$SYS", "x/b", "q/w/c"];
    let filters: Vec<TopicFilter> = filters.iter().map(|f| TopicFilter::new(*f).unwrap()).collect();
    let index = TopicIndex::build(filters.iter().enumerate());
    for topic in topics {
        let topic = TopicName::new(topic).unwrap();
        let mut got = Vec::new();
        index.matches(&topic, &mut got);
        let want: Vec<usize> = (0..filters.len()).filter(|&i| filters[i].matches(&topic)).collect();
        assert_eq!(got, want, "topic {topic}");
    }
}

// ---------------------------------------------------------------- variables and errors

#[test]
fn variables_topic_device_tags_and_non_json_payloads() {
    let mut e = engine(&[
        &format!(
            "name = \"v\"\nfilter = \"#\"\n\
             condition = \"topic.endsWith('/raw') && device == 'd1' && device_tags.site == 'p7' && msg == null && payload == 'ON'\"\n{ALERT}"
        ),
        &format!("name = \"nodev\"\nfilter = \"#\"\ncondition = \"device == null\"\n{ALERT}"),
    ]);
    assert_eq!(e.evaluate(&msg_tags("x/raw", Some("d1"), &[("site", "p7")], "ON"), t(0)).len(), 1);
    assert_eq!(e.evaluate(&msg_tags("x/raw", None, &[], "{}"), t(0)).len(), 1);
    assert!(e.evaluate(&msg_tags("x/raw", Some("d1"), &[], "ON"), t(0)).is_empty());
    assert_eq!(e.stats("v").unwrap().skipped, 1, "a missing tag is a missing field");
    assert_eq!(e.stats("v").unwrap().errors, 0);
}

#[test]
fn json_numbers_are_doubles_whether_or_not_they_have_a_fraction() {
    let mut e = engine(&[r##"name = "f"
        filter = "#"
        condition = "msg.n == 3 && msg.t * 1.8 + 32.0 > 70.0"
        actions = [{ type = "publish", topic = "out", payload = { f = "${msg.t * 1.8 + 32.0}", n = "${msg.n}" } }]"##]);
    assert_eq!(payloads(&send(&mut e, "d", &json!({ "n": 3, "t": 25 }), t(0))), [json!({ "f": 77, "n": 3 })]);
    assert_eq!(
        payloads(&send(&mut e, "d", &json!({ "n": 3.0, "t": 25.5 }), t(1))),
        [json!({ "f": 77.9, "n": 3 })]
    );
    assert_eq!(e.stats("f").unwrap().errors, 0);
}

#[test]
fn a_missing_field_skips_quietly_and_keeps_the_state() {
    let mut e = engine(&[&format!(
        "name = \"dark\"\nfilter = \"+/telemetry\"\ncondition = \"msg.light < 300\"\nonce_per_crossing = true\n{ALERT}"
    )]);
    assert_eq!(send(&mut e, "d", &json!({ "light": 100 }), t(0)).len(), 1);
    // Neither a message without `light` nor a non-JSON one re-arms the rule.
    assert!(send(&mut e, "d", &json!({ "battery": 3 }), t(1)).is_empty());
    assert!(e.evaluate(&msg("d/telemetry", "d", "not json"), t(2)).is_empty());
    assert!(send(&mut e, "d", &json!({ "light": 100 }), t(3)).is_empty());
    let stats = e.stats("dark").unwrap();
    assert_eq!((stats.skipped, stats.errors, stats.firings, stats.evaluations), (2, 0, 1, 4));
}

#[test]
fn runtime_errors_count_as_false_and_are_recorded() {
    let mut e = engine(&[&format!(
        "name = \"dark\"\nfilter = \"+/telemetry\"\ncondition = \"msg.light < 300\"\nonce_per_crossing = true\n{ALERT}"
    )]);
    assert_eq!(send(&mut e, "d", &json!({ "light": 100 }), t(0)).len(), 1);
    assert!(send(&mut e, "d", &json!({ "light": "dark" }), t(1)).is_empty());
    let stats = e.stats("dark").unwrap();
    assert_eq!(stats.errors, 1);
    let (at, device, error) = stats.last_error.unwrap();
    assert_eq!((at, device.unwrap().as_str()), (t(1), "d"));
    assert!(error.starts_with("condition: ") && error.contains("string"), "{error}");
    // The error counted as false, so the rule re-armed.
    assert_eq!(send(&mut e, "d", &json!({ "light": 100 }), t(2)).len(), 1);

    let mut e = engine(&[&format!("name = \"int\"\nfilter = \"#\"\ncondition = \"msg.light\"\n{ALERT}")]);
    assert!(send(&mut e, "d", &json!({ "light": 1 }), t(0)).is_empty());
    assert!(e.stats("int").unwrap().last_error.unwrap().2.contains("expected a bool"));
    let mut e = engine(&[&format!("name = \"div\"\nfilter = \"#\"\ncondition = \"1 / msg.z > 0\"\n{ALERT}")]);
    assert!(send(&mut e, "d", &json!({ "z": 0 }), t(0)).is_empty());
    assert_eq!(e.stats("div").unwrap().errors, 1);
}

// ---------------------------------------------------------------- state bound, rule set

#[test]
fn device_state_is_bounded_and_forgotten_when_idle() {
    let config = EngineConfig { max_devices_per_rule: 32, state_ttl: Duration::from_secs(3600) };
    let mut e = Engine::new(config);
    e.add(compile(&format!("name = \"r\"\nfilter = \"+/telemetry\"\ncondition = \"msg.x > 0\"\n{ALERT}")))
        .unwrap();
    for i in 0..10 {
        send(&mut e, &format!("quiet{i}"), &json!({ "x": 0 }), t(0));
    }
    assert_eq!(e.stats("r").unwrap().devices, 0, "no state until the condition holds");
    for i in 0..100 {
        send(&mut e, &format!("d{i}"), &json!({ "x": 1 }), t(i));
        assert!(e.stats("r").unwrap().devices <= 32);
    }
    let stats = e.stats("r").unwrap();
    assert_eq!(stats.evicted, 100 - stats.devices as u64);
    // The most recent device survived; the oldest went first.
    assert_eq!(send(&mut e, "d99", &json!({ "x": 1 }), t(100)).len(), 1);

    e.tick(t(100 + 3599));
    assert!(e.stats("r").unwrap().devices > 0);
    e.tick(t(200 + 3600));
    assert_eq!(e.stats("r").unwrap().devices, 0);
    assert_eq!(e.stats("r").unwrap().evicted, 100);
}

#[test]
fn rules_are_added_replaced_and_removed_by_name() {
    let on = format!(
        "name = \"r\"\nfilter = \"+/telemetry\"\ncondition = \"msg.v < 3\"\nonce_per_crossing = true\n{ALERT}"
    );
    let mut e = engine(&[&on]);
    assert!(matches!(e.add(compile(&on)), Err(RuleError::Duplicate(n)) if n == "r"));
    assert!(matches!(e.replace(compile(&on.replace("\"r\"", "\"q\""))), Err(RuleError::NotFound(_))));
    assert_eq!(send(&mut e, "d", &json!({ "v": 1 }), t(0)).len(), 1);

    // Editing only the actions keeps the latch; editing the condition resets it.
    let old = e.replace(compile(&on.replace("name = \"a\"", "name = \"b\""))).unwrap();
    assert_eq!(old.actions, spec(&on).actions);
    assert!(send(&mut e, "d", &json!({ "v": 1 }), t(1)).is_empty());
    let on4 = on.replace("msg.v < 3", "msg.v < 4");
    e.replace(compile(&on4)).unwrap();
    assert_eq!(send(&mut e, "d", &json!({ "v": 1 }), t(2)).len(), 1);
    assert_eq!(e.stats("r").unwrap().firings, 2, "counters survive a replace");

    e.set_all(vec![compile(&on4), compile(&on4.replace("\"r\"", "\"s\""))]).unwrap();
    assert_eq!(e.specs().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["r", "s"]);
    assert_eq!(send(&mut e, "d", &json!({ "v": 1 }), t(3)).len(), 1, "only s fires: r kept its latch");
    assert!(matches!(e.set_all(vec![compile(&on), compile(&on)]), Err(RuleError::Duplicate(_))));
    assert_eq!(e.len(), 2);

    assert_eq!(e.remove("r").unwrap().name, "r");
    assert!(e.remove("r").is_none());
    assert!(e.stats("r").is_none());
    assert_eq!(send(&mut e, "d", &json!({ "v": 5 }), t(4)).len(), 0);
    assert_eq!(send(&mut e, "d", &json!({ "v": 1 }), t(5)).len(), 1, "s still indexed after the removal");
}

#[test]
fn the_engine_and_messages_can_cross_threads() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Engine>();
    is_send_sync::<MessageContext>();
    is_send_sync::<CompiledRule>();
    is_send_sync::<Firing>();
}
