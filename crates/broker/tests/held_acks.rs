//! Acknowledgements held by the ingest hook (the hub's ack-after-commit): a QoS 1 PUBACK
//! waits for the hook's future, acks leave in PUBLISH order whatever order the futures
//! finish in ([MQTT-4.6.0-2]), a failed ingest is a reason code for MQTT 5 and an
//! unacknowledged close for 3.1.1, and a v5 client that exceeds our Receive Maximum is
//! disconnected with 0x93.

use std::sync::{Arc, Mutex};

use telehub_broker::{IngestAck, IngestError, IngestHook};
use telehub_core::{ClientId, Message};
use telehub_testkit::{Connect, Publish, TestBroker, Version};
use tokio::sync::oneshot;

/// Holds the acknowledgement of every message under `held/` until the test releases it
/// (others, like `assert_serving`'s, are acknowledged at once).
#[derive(Default)]
struct HoldingHook(Mutex<Vec<oneshot::Sender<Result<(), IngestError>>>>);

impl IngestHook for HoldingHook {
    fn offer(&self, _publisher: Option<&ClientId>, message: &Arc<Message>) -> Option<IngestAck> {
        if !message.topic.as_str().starts_with("held/") {
            return None;
        }
        let (release, held) = oneshot::channel();
        self.0.lock().unwrap().push(release);
        Some(Box::pin(async move { held.await.unwrap_or(Err(IngestError::Unavailable)) }))
    }
}

impl HoldingHook {
    /// Releases the `n`th held acknowledgement (0-based, in offer order) with `result`.
    fn release(&self, n: usize, result: Result<(), IngestError>) {
        let (done, _) = oneshot::channel();
        let sender = std::mem::replace(&mut self.0.lock().unwrap()[n], done);
        sender.send(result).unwrap();
    }

    fn held(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

async fn start(receive_maximum: u16) -> (TestBroker, Arc<HoldingHook>) {
    let hook = Arc::new(HoldingHook::default());
    let mut config = TestBroker::config();
    config.receive_maximum = receive_maximum;
    let hook_dyn: Arc<dyn IngestHook> = hook.clone();
    (TestBroker::start_with_hook(config, hook_dyn).await, hook)
}

async fn wait_held(hook: &HoldingHook, n: usize) {
    for _ in 0..500 {
        if hook.held() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the hook holds {} acknowledgements, expected {n}", hook.held());
}

#[tokio::test]
async fn mqtt_4_6_0_2_held_pubacks_wait_for_the_hook_and_leave_in_publish_order() {
    for version in [Version::V311, Version::V5] {
        let (broker, hook) = start(16).await;
        let connect = if version.is_v5() { Connect::v5("dev") } else { Connect::v311("dev") };
        let (mut dev, _) = broker.client(&connect).await;
        for id in 1..=3u16 {
            dev.send(&Publish::new(version, "held/d/telemetry", "{}").qos(1, id).to_bytes()).await;
        }
        wait_held(&hook, 3).await;
        dev.expect_nothing().await; // nothing acknowledged before the hook says so
        hook.release(1, Ok(()));
        hook.release(2, Ok(()));
        dev.expect_nothing().await; // the second and third wait for the first
        hook.release(0, Ok(()));
        for id in 1..=3u16 {
            let ack = dev.next_packet().await;
            assert_eq!((ack.kind(), ack.packet_id()), (4, id), "{ack:?}");
        }
    }
}

#[tokio::test]
async fn failed_ingest_is_reason_0x97_for_v5_and_an_unacknowledged_close_for_v311() {
    let (broker, hook) = start(16).await;
    let (mut v5, _) = broker.client(&Connect::v5("v5")).await;
    v5.send(&Publish::new(Version::V5, "held/t", "x").qos(1, 7).to_bytes()).await;
    wait_held(&hook, 1).await;
    hook.release(0, Err(IngestError::QuotaExceeded));
    let ack = v5.next_packet().await;
    assert_eq!((ack.kind(), ack.packet_id(), ack.reason_code()), (4, 7, 0x97), "{ack:?}");

    let (mut v3, _) = broker.client(&Connect::v311("v3")).await;
    v3.send(&Publish::new(Version::V311, "held/t", "x").qos(1, 8).to_bytes()).await;
    wait_held(&hook, 2).await;
    hook.release(1, Err(IngestError::Unavailable));
    v3.expect_closed().await; // no PUBACK: the client sends it again after reconnecting
    broker.assert_serving().await;
}

#[tokio::test]
async fn mqtt_3_3_4_9_v5_client_over_our_receive_maximum_is_disconnected_with_0x93() {
    let (broker, hook) = start(2).await;
    let (mut dev, ack) = broker.client(&Connect::v5("dev")).await;
    assert_eq!(ack.properties.u16(0x21), Some(2), "Receive Maximum announced in CONNACK");
    for id in 1..=4u16 {
        dev.send(&Publish::new(Version::V5, "held/t", "x").qos(1, id).to_bytes()).await;
    }
    dev.expect_disconnect(0x93).await;
    assert!(hook.held() >= 3);
    broker.assert_serving().await;
}

#[tokio::test]
async fn v311_client_is_slowed_not_disconnected_when_acks_are_held() {
    let (broker, hook) = start(2).await;
    let (mut dev, _) = broker.client(&Connect::v311("dev")).await;
    for id in 1..=5u16 {
        dev.send(&Publish::new(Version::V311, "held/t", "x").qos(1, id).to_bytes()).await;
    }
    wait_held(&hook, 3).await;
    dev.expect_nothing().await;
    for n in 0..5 {
        wait_held(&hook, n + 1).await;
        hook.release(n, Ok(()));
    }
    for id in 1..=5u16 {
        assert_eq!(dev.next_packet().await.packet_id(), id);
    }
}
