//! Durable broker state with the built binary and `kill -9`: what the broker
//! acknowledged survives the crash.
//!
//! * A persistent Mosquitto subscriber (`mosquitto_sub -c -i … -q 1`) goes offline, N
//!   QoS 1 messages are published and acknowledged, telehub is killed with SIGKILL and
//!   started again on the same data; the subscriber reconnects and receives all N, once,
//!   in order.
//! * A retained message survives SIGKILL.
//! * A QoS 2 PUBLISH acknowledged with PUBREC before the crash, resent with DUP and
//!   released (PUBREL) only after the restart, is routed exactly once.
//! * Session expiry keeps running across the restart: a short-lived restored session
//!   expires, a long-lived one is still there.
//! * With `persistence = false` nothing survives.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Proc, Telehub};
use telehub_testkit::{Connect, Publish, RawClient, Version, build};

const FORMAT: &str = "MSG|%t|%q|%r|%p";

/// `mosquitto_sub` against `hub` with `args`, line-buffered, bounded by `-W`.
fn mosquitto_sub(hub: &Telehub, wait_secs: u32, args: &[&str]) -> Proc {
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p"])
        .arg(hub.port().to_string())
        .args(["-W", &wait_secs.to_string(), "-F", FORMAT])
        .args(args);
    Proc::spawn(&mut cmd)
}

/// The messages a finished mosquitto_sub printed, as `topic|qos|retain|payload`.
fn messages(sub: Proc) -> Vec<String> {
    let f = sub.finish();
    f.stdout.iter().filter_map(|l| l.strip_prefix("MSG|")).map(str::to_owned).collect()
}

#[tokio::test]
async fn acknowledged_qos1_messages_for_an_offline_persistent_session_survive_kill_9() {
    const N: usize = 200;
    let hub = Telehub::start();
    // subscribe with a persistent session, then go offline
    let sub = mosquitto_sub(&hub, 10, &["-c", "-i", "sub1", "-q", "1", "-t", "durable/q1", "-E"]);
    let f = sub.finish();
    assert!(f.status.success(), "mosquitto_sub -E: {:?}\n{}", f.status, f.stderr_text());

    let (mut publisher, _) = RawClient::open(hub.addr(), &Connect::v311("pub1")).await;
    for i in 0..N {
        let id = u16::try_from(i % 60_000 + 1).unwrap();
        // returns once the PUBACK came
        publisher.publish(&Publish::new(Version::V311, "durable/q1", format!("m{i:04}")).qos(1, id)).await;
    }
    let data = hub.kill9();
    drop(publisher);

    let hub = Telehub::start_in(data, |_| {});
    hub.expect_log("the restore line", |l| l.contains("restored the broker's durable state"));
    let n = N.to_string();
    let got =
        messages(mosquitto_sub(&hub, 20, &["-c", "-i", "sub1", "-q", "1", "-t", "durable/q1", "-C", &n]));
    let want: Vec<String> = (0..N).map(|i| format!("durable/q1|1|0|m{i:04}")).collect();
    assert_eq!(got.len(), N, "{got:?}");
    assert_eq!(got, want, "all N, once, in order");
    // and nothing new is left queued for it. mosquitto_sub -C may close before the
    // PUBACKs of its last messages were sent or read, and QoS 1 then resends exactly
    // those ([MQTT-4.4.0-1]): only copies of the N, flagged DUP, may come again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut sub, ack) = RawClient::open(hub.addr(), &Connect::v311("sub1").clean(false)).await;
    assert!(ack.session_present);
    while let Some(p) = sub.next_packet_within(Duration::from_secs(1)).await {
        let p = p.publish(Version::V311);
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        assert!(
            p.dup && p.topic == "durable/q1" && want.contains(&format!("durable/q1|1|0|{payload}")),
            "left queued after the N were received: {p:?}"
        );
        sub.send(&build::puback(p.id())).await;
    }
    sub.disconnect().await;
    hub.stop();
}

#[tokio::test]
async fn a_retained_message_survives_kill_9() {
    let hub = Telehub::start();
    let (mut publisher, _) = RawClient::open(hub.addr(), &Connect::v311("pub2")).await;
    publisher.publish(&Publish::new(Version::V311, "durable/retained", b"kept").qos(1, 1).retain()).await;
    publisher.publish(&Publish::new(Version::V311, "durable/cleared", b"x").qos(1, 2).retain()).await;
    publisher.publish(&Publish::new(Version::V311, "durable/cleared", b"").qos(1, 3).retain()).await;
    let data = hub.kill9();
    drop(publisher);

    let hub = Telehub::start_in(data, |_| {});
    let got = messages(mosquitto_sub(&hub, 3, &["-t", "durable/#", "--retained-only"]));
    assert_eq!(got, ["durable/retained|0|1|kept"]);
    hub.stop();
}

#[tokio::test]
async fn a_qos2_publish_released_after_the_restart_is_routed_exactly_once() {
    let hub = Telehub::start();
    let (mut sub, _) = RawClient::open(hub.addr(), &Connect::v311("qsub").clean(false)).await;
    assert_eq!(sub.subscribe(1, &[("durable/q2", 2)]).await, [2]);
    sub.disconnect().await;
    let (mut publisher, _) = RawClient::open(hub.addr(), &Connect::v311("qpub").clean(false)).await;
    let publish = Publish::new(Version::V311, "durable/q2", b"exactly-once").qos(2, 7);
    publisher.send(&publish.to_bytes()).await;
    let rec = publisher.next_packet().await;
    assert_eq!((rec.kind(), rec.packet_id()), (5, 7), "PUBREC");
    let data = hub.kill9();
    drop(publisher);

    let hub = Telehub::start_in(data, |_| {});
    let (mut publisher, ack) = RawClient::open(hub.addr(), &Connect::v311("qpub").clean(false)).await;
    assert!(ack.session_present);
    // as if the PUBREC had been lost: the PUBLISH again, with DUP, then PUBREL
    publisher.send(&publish.clone().dup().to_bytes()).await;
    let rec = publisher.next_packet().await;
    assert_eq!((rec.kind(), rec.packet_id(), rec.reason_code()), (5, 7, 0));
    publisher.send(&build::pubrel(7)).await;
    let comp = publisher.next_packet().await;
    assert_eq!((comp.kind(), comp.packet_id(), comp.reason_code()), (7, 7, 0), "PUBCOMP");
    publisher.disconnect().await;

    let (mut sub, ack) = RawClient::open(hub.addr(), &Connect::v311("qsub").clean(false)).await;
    assert!(ack.session_present);
    let p = sub.expect_publish().await;
    assert_eq!((p.topic.as_str(), p.payload.as_slice(), p.qos), ("durable/q2", &b"exactly-once"[..], 2));
    sub.send(&build::pubrec(p.id())).await;
    let rel = sub.next_packet().await;
    assert_eq!(rel.kind(), 6, "PUBREL");
    sub.send(&build::pubcomp(p.id())).await;
    sub.expect_nothing().await;
    sub.disconnect().await;
    hub.stop();
}

#[tokio::test]
async fn restored_sessions_still_expire() {
    let hub = Telehub::start();
    for (id, expiry) in [("short", 2), ("long", 3600)] {
        let (mut c, _) =
            RawClient::open(hub.addr(), &Connect::v5(id).clean(false).session_expiry(expiry)).await;
        c.subscribe(1, &[("durable/expiry", 1)]).await;
        c.disconnect().await;
    }
    let data = hub.kill9();
    let hub = Telehub::start_in(data, |_| {});
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (c, ack) = RawClient::open(hub.addr(), &Connect::v5("short").clean(false).session_expiry(2)).await;
    assert!(!ack.session_present, "2 s expiry, disconnected more than 3 s ago");
    c.disconnect().await;
    let (c, ack) = RawClient::open(hub.addr(), &Connect::v5("long").clean(false).session_expiry(3600)).await;
    assert!(ack.session_present, "restored");
    c.disconnect().await;
    hub.stop();
}

#[tokio::test]
async fn with_persistence_off_nothing_survives() {
    let off = |cmd: &mut Command| {
        cmd.env("TELEHUB_MQTT__PERSISTENCE", "false");
    };
    let hub = Telehub::start_with(off);
    let (mut c, _) = RawClient::open(hub.addr(), &Connect::v311("mem").clean(false)).await;
    c.subscribe(1, &[("durable/off", 1)]).await;
    c.publish(&Publish::new(Version::V311, "durable/off/r", b"r").qos(1, 2).retain()).await;
    c.disconnect().await;
    let data = hub.kill9();
    let hub = Telehub::start_in(data, off);
    let (c, ack) = RawClient::open(hub.addr(), &Connect::v311("mem").clean(false)).await;
    assert!(!ack.session_present);
    c.disconnect().await;
    let got = messages(mosquitto_sub(&hub, 2, &["-t", "durable/#", "--retained-only"]));
    assert!(got.is_empty(), "{got:?}");
    hub.stop();
}
