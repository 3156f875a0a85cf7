//! Keep-alive: silence for 1.5 × keep-alive closes the connection, PINGREQ keeps it
//! open, and `max_keep_alive` (MQTT 5: Server Keep Alive in CONNACK; 3.1.1: refused).
//!
//! Real time over real TCP, keep-alive 1 s: only upper bounds are asserted ("closed
//! within 5 s"), except that a pinging client is not closed over several limits.

use std::time::Duration;

use telehub_broker::Config;
use telehub_testkit::parse::property;
use telehub_testkit::{Connect, TestBroker};

fn max_keep_alive(secs: u64) -> Config {
    Config { max_keep_alive: Duration::from_secs(secs), ..TestBroker::config() }
}

#[tokio::test]
async fn mqtt_3_1_2_24_silence_for_one_and_a_half_keep_alives_closes() {
    let broker = TestBroker::start().await;
    let (mut v3, _) = broker.client(&Connect::v311("quiet3").keep_alive(1)).await;
    let (mut v5, _) = broker.client(&Connect::v5("quiet5").keep_alive(1)).await;
    v3.expect_closed().await;
    // MQTT 5: DISCONNECT 0x8D Keep Alive timeout, then closed
    v5.expect_disconnect(0x8d).await;
    broker.assert_serving().await;
}

#[tokio::test]
async fn mqtt_3_1_2_23_pingreq_keeps_the_connection_open() {
    let broker = TestBroker::start().await;
    let (mut client, _) = broker.client(&Connect::v311("pinger").keep_alive(1)).await;
    // 8 × 400 ms = 3.2 s, more than twice the 1.5 s limit; each PINGREQ is answered
    // with PINGRESP [MQTT-3.12.4-1]
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        client.ping().await;
    }
    // still connected: it can subscribe, and closes only when it stops pinging
    assert_eq!(client.subscribe(1, &[("still/here", 0)]).await, [0]);
    client.expect_closed().await;
}

#[tokio::test]
async fn mqtt5_3_2_2_3_14_server_keep_alive_caps_a_v5_client() {
    let broker = TestBroker::start_with(max_keep_alive(10)).await;
    let (_over, ack) = broker.client(&Connect::v5("over").keep_alive(60)).await;
    assert_eq!(ack.properties.u16(property::SERVER_KEEP_ALIVE), Some(10));

    // keep-alive 0 (off) is more than any maximum, too
    let (_off, ack) = broker.client(&Connect::v5("off").keep_alive(0)).await;
    assert_eq!(ack.properties.u16(property::SERVER_KEEP_ALIVE), Some(10));

    // within the maximum: no Server Keep Alive, the client's value stands
    let (_under, ack) = broker.client(&Connect::v5("under").keep_alive(5)).await;
    assert_eq!(ack.properties.get(property::SERVER_KEEP_ALIVE), None, "{ack:?}");
}

#[tokio::test]
async fn mqtt5_3_1_2_21_server_keep_alive_is_enforced() {
    let broker = TestBroker::start_with(max_keep_alive(1)).await;
    let (mut client, ack) = broker.client(&Connect::v5("capped").keep_alive(600)).await;
    assert_eq!(ack.properties.u16(property::SERVER_KEEP_ALIVE), Some(1));
    // the broker applies the value it announced: silence closes after 1.5 s, not 900 s
    client.expect_disconnect(0x8d).await;
}

#[tokio::test]
async fn mqtt_3_1_2_24_v311_keep_alive_over_the_maximum_is_refused() {
    let broker = TestBroker::start_with(max_keep_alive(10)).await;
    let mut client = broker.raw().await;
    client.send(&Connect::v311("over").keep_alive(60).to_bytes()).await;
    // a 3.1.1 client cannot be told another value: CONNACK 0x02 (as Mosquitto), closed
    client.expect_bytes(&[0x20, 0x02, 0x00, 0x02]).await;
    client.expect_closed().await;

    // at the maximum it is accepted
    let (_ok, ack) = broker.client(&Connect::v311("at-max").keep_alive(10)).await;
    assert!(!ack.session_present);
}
