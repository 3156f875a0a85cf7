//! End-to-end tests driving the built `telehub` with the Eclipse Mosquitto command-line
//! clients (`mosquitto_sub`/`mosquitto_pub`): QoS 0/1/2 delivery over MQTT 3.1, 3.1.1 and
//! 5, retained messages (late subscriber, clearing), wills (sent when a client dies, not on
//! a clean disconnect) and an MQTT 3.1.1 persistent session.

mod common;

use std::process::Command;

use common::{Finished, Proc, Telehub};

/// How mosquitto_sub prints each message: a prefix debug lines never start with.
const FORMAT: &str = "MSG|%t|%q|%r|%p";

/// `mosquitto_sub` against `hub`, line-buffered (`stdbuf -oL`) so that its `-d` debug
/// output can be followed while it runs; bounded by `-W 10`.
fn sub_command(hub: &Telehub, args: &[&str]) -> Command {
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p"])
        .arg(hub.port().to_string())
        .args(["-W", "10", "-F", FORMAT])
        .args(args);
    cmd
}

/// Starts `mosquitto_sub` and waits until the broker acknowledged its subscription.
/// Returns the process and the QoS the broker granted to each `-t` filter.
fn subscribe(hub: &Telehub, args: &[&str]) -> (Proc, Vec<u8>) {
    let sub = Proc::spawn(&mut sub_command(hub, args));
    // e.g. "Subscribed (mid: 1): 1, 1"
    let line = sub.expect_stdout("SUBACK", |l| l.starts_with("Subscribed (mid"));
    let granted: Option<Vec<u8>> = line
        .rsplit("): ")
        .next()
        .map(|list| list.split(", ").filter_map(|q| q.trim().parse().ok()).collect());
    (sub, granted.unwrap_or_else(|| panic!("cannot read the granted QoS from {line:?}")))
}

/// The messages a finished mosquitto_sub printed, as `topic|qos|retain|payload`.
fn messages(f: &Finished) -> Vec<String> {
    f.stdout.iter().filter_map(|l| l.strip_prefix("MSG|")).map(str::to_owned).collect()
}

/// Waits for mosquitto_sub to exit by itself and checks that it exited 0 (it received its
/// `-C` count, or saw the first non-retained message with `--retained-only`).
fn finish_ok(sub: Proc) -> Finished {
    let f = sub.finish();
    assert!(
        f.status.success(),
        "mosquitto_sub failed: {:?}\n{}\n{}",
        f.status,
        f.stdout_text(),
        f.stderr_text()
    );
    f
}

/// Runs `mosquitto_pub -d` against `hub` and checks that it succeeded; returns its debug
/// output.
fn publish(hub: &Telehub, args: &[&str]) -> Finished {
    let f = common::run(
        Command::new("mosquitto_pub")
            .args(["-d", "-h", "127.0.0.1", "-p"])
            .arg(hub.port().to_string())
            .args(args),
    );
    assert!(
        f.status.success(),
        "mosquitto_pub {args:?} failed: {:?}\n{}\n{}",
        f.status,
        f.stdout_text(),
        f.stderr_text()
    );
    f
}

fn received(f: &Finished, packet: &str) -> bool {
    f.stdout.iter().any(|l| l.contains(&format!("received {packet}")))
}

/// For each QoS: subscribe at that QoS, publish at that QoS, check the granted QoS, the
/// message (topic, QoS, retain flag, payload) and the publisher's acknowledgement flow.
fn each_qos_is_delivered(version: &str) {
    let hub = Telehub::start();
    for qos in 0..=2u8 {
        let topic = format!("e2e/{version}/qos{qos}");
        let q = qos.to_string();
        let (sub, granted) = subscribe(&hub, &["-V", version, "-q", &q, "-C", "1", "-t", &topic]);
        assert_eq!(granted, [qos], "{version}: granted QoS");
        let payload = format!("hello at qos {qos} over {version}");
        let publisher = publish(&hub, &["-V", version, "-q", &q, "-t", &topic, "-m", &payload]);
        assert_eq!(
            received(&publisher, "PUBACK"),
            qos == 1,
            "{version} QoS {qos}: PUBACK\n{}",
            publisher.stdout_text()
        );
        assert_eq!(
            received(&publisher, "PUBREC"),
            qos == 2,
            "{version} QoS {qos}: PUBREC\n{}",
            publisher.stdout_text()
        );
        assert_eq!(
            received(&publisher, "PUBCOMP"),
            qos == 2,
            "{version} QoS {qos}: PUBCOMP\n{}",
            publisher.stdout_text()
        );
        let f = finish_ok(sub);
        assert_eq!(messages(&f), [format!("{topic}|{qos}|0|{payload}")], "{version} QoS {qos}");
    }
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn mqtt5_delivers_qos_0_1_and_2() {
    each_qos_is_delivered("mqttv5");
}

#[test]
fn mqtt311_delivers_qos_0_1_and_2() {
    each_qos_is_delivered("mqttv311");
}

#[test]
fn mqtt31_delivers_qos_0_1_and_2() {
    each_qos_is_delivered("mqttv31");
}

#[test]
fn delivery_qos_is_the_lower_of_publish_and_subscription_qos() {
    let hub = Telehub::start();
    for (sub_qos, pub_qos, expected) in [(1, 2, 1), (2, 0, 0), (0, 1, 0), (2, 1, 1)] {
        let topic = format!("e2e/downgrade/s{sub_qos}p{pub_qos}");
        let (sub, _) =
            subscribe(&hub, &["-V", "mqttv5", "-q", &sub_qos.to_string(), "-C", "1", "-t", &topic]);
        publish(&hub, &["-V", "mqttv311", "-q", &pub_qos.to_string(), "-t", &topic, "-m", "x"]);
        let f = finish_ok(sub);
        assert_eq!(
            messages(&f),
            [format!("{topic}|{expected}|0|x")],
            "subscribed {sub_qos}, published {pub_qos}"
        );
    }
}

#[test]
fn wildcard_subscriptions_match_as_the_spec_says() {
    let hub = Telehub::start();
    let (sub, granted) =
        subscribe(&hub, &["-q", "1", "-C", "3", "-t", "e2e/wild/+/temp", "-t", "e2e/tree/#"]);
    assert_eq!(granted, [1, 1]);
    for topic in ["e2e/wild/a/temp", "e2e/wild/a/b/temp", "e2e/wild/a/hum", "e2e/tree", "e2e/tree/x/y"] {
        publish(&hub, &["-q", "1", "-t", topic, "-m", topic]);
    }
    let f = finish_ok(sub);
    let mut topics: Vec<String> =
        messages(&f).iter().map(|m| m.split('|').next().unwrap().to_owned()).collect();
    // separate publishers: the spec orders messages per publisher only
    topics.sort();
    assert_eq!(topics, ["e2e/tree", "e2e/tree/x/y", "e2e/wild/a/temp"]);
}

/// A retained message reaches a subscriber that arrives later, with the retain flag set;
/// `-r -n` (empty retained message) clears it so the next subscriber gets nothing.
fn retained_message_is_kept_then_cleared(version: &str) {
    let hub = Telehub::start();
    let topic = format!("e2e/{version}/retained/temperature");
    publish(&hub, &["-V", version, "-q", "1", "-r", "-t", &topic, "-m", "21.5"]);

    let (late, _) = subscribe(&hub, &["-V", version, "-q", "1", "-C", "1", "-t", &topic]);
    assert_eq!(messages(&finish_ok(late)), [format!("{topic}|1|1|21.5")]);

    // a second late subscriber still gets it: delivering it does not consume it
    let (late, _) = subscribe(&hub, &["-V", version, "-q", "0", "-C", "1", "-t", &topic]);
    assert_eq!(messages(&finish_ok(late)), [format!("{topic}|0|1|21.5")]);

    publish(&hub, &["-V", version, "-r", "-n", "-t", &topic]);

    // --retained-only prints retained messages and exits at the first live one: after
    // clearing, the live message is the first thing it sees and nothing is printed.
    let (after, _) = subscribe(&hub, &["-V", version, "-q", "1", "--retained-only", "-t", &topic]);
    publish(&hub, &["-V", version, "-q", "1", "-t", &topic, "-m", "live, not retained"]);
    let f = finish_ok(after);
    assert_eq!(messages(&f), Vec::<String>::new(), "the cleared retained message was delivered");
}

#[test]
fn mqtt5_retained_message_reaches_late_subscriber_and_is_cleared() {
    retained_message_is_kept_then_cleared("mqttv5");
}

#[test]
fn mqtt311_retained_message_reaches_late_subscriber_and_is_cleared() {
    retained_message_is_kept_then_cleared("mqttv311");
}

/// One client disconnects cleanly with a will (must not be sent), then another is killed
/// with SIGKILL (its will must be sent). A watcher sees the second will, then a marker
/// published afterwards, and nothing else.
fn will_is_sent_on_kill_not_on_clean_disconnect(version: &str) {
    let hub = Telehub::start();
    let wills = format!("e2e/{version}/will");
    let (watcher, _) = subscribe(&hub, &["-V", version, "-q", "1", "-C", "2", "-t", &format!("{wills}/#")]);

    // a clean exit: mosquitto_pub connects, publishes, sends DISCONNECT
    let clean = publish(
        &hub,
        &[
            "-V",
            version,
            "-t",
            "e2e/elsewhere",
            "-m",
            "bye",
            "--will-topic",
            &format!("{wills}/clean"),
            "--will-payload",
            "the clean client died",
        ],
    );
    assert!(clean.stdout.iter().any(|l| l.contains("sending DISCONNECT")), "{}", clean.stdout_text());

    // an unclean exit: kill -9 a connected mosquitto_sub that has a will
    let (mut victim, _) = subscribe(
        &hub,
        &[
            "-V",
            version,
            "-t",
            "e2e/nothing-here",
            "--will-topic",
            &format!("{wills}/killed"),
            "--will-payload",
            "the killed client died",
            "--will-qos",
            "1",
        ],
    );
    victim.signal("KILL");
    let victim = victim.finish();
    assert!(!victim.status.success(), "the victim was killed: {:?}", victim.status);

    watcher
        .stdout()
        .wait_for(common::TIMEOUT, |l| l.contains("the killed client died"))
        .unwrap_or_else(|| panic!("{}", watcher.report("the will of the killed client")));
    publish(&hub, &["-V", version, "-q", "1", "-t", &format!("{wills}/end"), "-m", "end"]);
    let f = finish_ok(watcher);
    assert_eq!(
        messages(&f),
        [format!("{wills}/killed|1|0|the killed client died"), format!("{wills}/end|1|0|end")],
        "exactly the killed client's will, then the marker"
    );
}

#[test]
fn mqtt5_will_is_sent_on_kill_not_on_clean_disconnect() {
    will_is_sent_on_kill_not_on_clean_disconnect("mqttv5");
}

#[test]
fn mqtt311_will_is_sent_on_kill_not_on_clean_disconnect() {
    will_is_sent_on_kill_not_on_clean_disconnect("mqttv311");
}

/// `mosquitto_sub -c -i ID` (clean session off): subscribe, leave (`-E`), messages
/// published meanwhile at QoS 1 are delivered when the same client id comes back.
#[test]
fn mqtt311_persistent_session_receives_messages_queued_while_offline() {
    let hub = Telehub::start();
    let topic = "e2e/persistent/311";
    let id = "e2e-mosquitto-persistent";
    let (first, _) = subscribe(&hub, &["-V", "mqttv311", "-c", "-i", id, "-q", "1", "-E", "-t", topic]);
    assert_eq!(messages(&finish_ok(first)), Vec::<String>::new());

    for n in 1..=3 {
        publish(&hub, &["-V", "mqttv311", "-q", "1", "-t", topic, "-m", &format!("offline {n}")]);
    }

    // come back without subscribing again: the session still has the subscription
    let back = Proc::spawn(&mut sub_command(
        &hub,
        &["-V", "mqttv311", "-c", "-i", id, "-C", "3", "-t", "e2e/unrelated"],
    ));
    let f = finish_ok(back);
    assert_eq!(
        messages(&f),
        (1..=3).map(|n| format!("{topic}|1|0|offline {n}")).collect::<Vec<_>>(),
        "messages queued while offline, in order"
    );
}
