//! End-to-end tests driving the built `telehub` with Eclipse Paho's Python client running
//! tutorial code from `tests/python/`: the Raspberry Pi sensor tutorial (JSON reading on
//! `sensor/data`) and the IoT-for-Beginners night-light lesson (telemetry in, LED command
//! out through a server script); and an MQTT 5 client reading the Reason String of a
//! refused subscription.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Proc, Telehub, python};

/// `python3 -u tests/python/<script> 127.0.0.1 <port> <args...>`.
fn script(hub: &Telehub, name: &str, args: &[&str]) -> Command {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(name);
    let mut cmd = Command::new(python());
    cmd.arg("-u").arg(path).arg("127.0.0.1").arg(hub.port().to_string()).args(args);
    cmd
}

#[test]
fn raspberry_pi_tutorial_json_reading_arrives_intact() {
    let hub = Telehub::start();
    let subscriber = Proc::spawn(&mut script(&hub, "raspi_subscriber.py", &["10"]));
    subscriber.expect_stdout("the subscriber's SUBACK", |l| l.starts_with("subscribed"));
    assert!(subscriber.stdout().snapshot().contains(&"Connected with result code 0".to_owned()));

    let publisher = common::run(&mut script(&hub, "raspi_publisher.py", &[]));
    assert!(
        publisher.status.success(),
        "publisher failed: {:?}\n{}\n{}",
        publisher.status,
        publisher.stdout_text(),
        publisher.stderr_text()
    );

    let f = subscriber.finish();
    assert!(
        f.status.success(),
        "subscriber failed: {:?}\n{}\n{}",
        f.status,
        f.stdout_text(),
        f.stderr_text()
    );
    assert!(f.stdout.contains(&"topic: sensor/data".to_owned()), "{}", f.stdout_text());
    // exactly what json.dumps produced on the Pi, byte for byte
    assert!(
        f.stdout.contains(
            &r#"payload: {"device_id": "raspi-01", "temperature": 25.5, "humidity": 60.3}"#.to_owned()
        ),
        "the JSON reading did not arrive intact:\n{}",
        f.stdout_text()
    );
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn nightlight_lesson_server_turns_the_led_on_in_the_dark() {
    let hub = Telehub::start();
    let server = Proc::spawn(&mut script(&hub, "nightlight_server.py", &["30"]));
    server.expect_stdout("the server to connect", |l| l == "MQTT connected!");

    // a dark room: the device keeps reporting until the LED is commanded on, then exits 0
    let dark = Proc::spawn(&mut script(&hub, "nightlight_device.py", &["e2e-dark", "250", "10"]));
    // a bright room: the server answers led_on false; the device keeps its LED off
    let bright = Proc::spawn(&mut script(&hub, "nightlight_device.py", &["e2e-bright", "500", "10"]));

    let f = dark.finish_within(common::TIMEOUT * 2);
    assert!(
        f.status.success(),
        "the dark device's LED never came on: {:?}\n{}\n{}",
        f.status,
        f.stdout_text(),
        f.stderr_text()
    );
    assert!(f.stdout.contains(&r#"Raw command: {"led_on": true}"#.to_owned()), "{}", f.stdout_text());
    assert!(f.stdout.contains(&"LED on".to_owned()), "{}", f.stdout_text());

    bright.expect_stdout("led_on false for the bright device", |l| l == r#"Raw command: {"led_on": false}"#);
    drop(bright);

    server.expect_stdout("the server to see the dark device", |l| l == "Message received: {'light': 250}");
    server.expect_stdout("the server to see the bright device", |l| l == "Message received: {'light': 500}");
    drop(server);
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn mqtt_3_9_2_1_paho_v5_sees_the_reason_string_of_a_refused_subscription() {
    let hub = Telehub::start();
    for (args, reason) in [
        (&[][..], "reason: topic filter 2: invalid shared subscription: expected $share/{group}/{filter}"),
        // [MQTT-3.1.2-29] Request Problem Information 0: no reason string on SUBACK
        (&["quiet"][..], "reason: none"),
    ] {
        let out = common::run(&mut script(&hub, "mqtt5_reason_strings.py", args));
        assert!(
            out.status.success(),
            "paho failed: {:?}\n{}\n{}",
            out.status,
            out.stdout_text(),
            out.stderr_text()
        );
        assert!(
            out.stdout.contains(&"codes: Granted QoS 0, Topic filter invalid".to_owned()),
            "{}",
            out.stdout_text()
        );
        assert!(out.stdout.contains(&reason.to_owned()), "{args:?}:\n{}", out.stdout_text());
    }
    assert_eq!(hub.stop().status.code(), Some(0));
}
