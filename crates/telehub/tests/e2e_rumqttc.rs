//! End-to-end tests driving the built `telehub` with the upstream `rumqttc` client: MQTT 5
//! persistent sessions (session present, messages queued while offline), MQTT 5 publish
//! properties passed through unchanged (request/response with correlation data), MQTT
//! 3.1.1 QoS 2 exactly once, and the DISCONNECT 0x8B clients get when telehub stops.

mod common;

use std::time::Duration;

use common::{TIMEOUT, Telehub};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, DisconnectReasonCode, Packet, PubAckReason, Publish, PublishProperties,
    SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};

fn options(hub: &Telehub, id: &str) -> MqttOptions {
    let mut opts = MqttOptions::new(id, "127.0.0.1", hub.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts
}

/// Polls `el` until `pick` accepts an incoming packet; panics on a connection error or
/// after [`TIMEOUT`].
async fn next<T>(el: &mut EventLoop, what: &str, mut pick: impl FnMut(Packet) -> Option<T>) -> T {
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(packet)) => {
                    if let Some(t) = pick(packet) {
                        return t;
                    }
                }
                Ok(Event::Outgoing(_)) => {}
                Err(e) => panic!("waiting for {what}: connection error: {e:?}"),
            }
        }
    };
    tokio::time::timeout(TIMEOUT, wait).await.unwrap_or_else(|_| panic!("no {what} within {TIMEOUT:?}"))
}

async fn connack(el: &mut EventLoop) -> ConnAck {
    let ack = next(el, "CONNACK", |p| match p {
        Packet::ConnAck(a) => Some(a),
        _ => None,
    })
    .await;
    assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}");
    ack
}

async fn subscribe(client: &AsyncClient, el: &mut EventLoop, filter: &str, qos: QoS) {
    client.subscribe(filter, qos).await.unwrap();
    let suback = next(el, "SUBACK", |p| match p {
        Packet::SubAck(s) => Some(s),
        _ => None,
    })
    .await;
    assert_eq!(suback.return_codes, [SubscribeReasonCode::Success(qos)], "{suback:?}");
}

async fn publication(el: &mut EventLoop, what: &str) -> Publish {
    next(el, what, |p| match p {
        Packet::Publish(p) => Some(p),
        _ => None,
    })
    .await
}

/// Drives `el` (which sends what its client queued) until the broker acknowledges a QoS 1
/// publish, and checks that it accepted it.
async fn puback(el: &mut EventLoop, what: &str) {
    let ack = next(el, &format!("PUBACK for {what}"), |p| match p {
        Packet::PubAck(a) => Some(a),
        _ => None,
    })
    .await;
    assert_eq!(ack.reason, PubAckReason::Success, "{what}: {ack:?}");
}

/// Sends DISCONNECT and polls until it has been written, so the broker sees a clean leave.
async fn disconnect(client: &AsyncClient, el: &mut EventLoop) {
    client.disconnect().await.unwrap();
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => panic!("before our DISCONNECT went out: {e:?}"),
            }
        }
    };
    tokio::time::timeout(TIMEOUT, wait).await.expect("DISCONNECT written");
}

#[tokio::test]
async fn mqtt5_persistent_session_resumes_with_messages_queued_while_offline() {
    let hub = Telehub::start();
    let mut opts = options(&hub, "e2e-rumqttc-persistent");
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(300));

    let (client, mut el) = AsyncClient::new(opts.clone(), 10);
    let ack = connack(&mut el).await;
    assert!(!ack.session_present, "a fresh broker has no session for us: {ack:?}");
    subscribe(&client, &mut el, "e2e/persistent/#", QoS::AtLeastOnce).await;
    disconnect(&client, &mut el).await;
    drop((client, el));

    // while the subscriber is away
    let (publisher, mut pel) = AsyncClient::new(options(&hub, "e2e-rumqttc-publisher"), 10);
    connack(&mut pel).await;
    for n in 1..=3 {
        publisher
            .publish(format!("e2e/persistent/{n}"), QoS::AtLeastOnce, false, format!("offline {n}"))
            .await
            .unwrap();
        puback(&mut pel, "an offline message").await;
    }

    // back, without subscribing again
    let (_client, mut el) = AsyncClient::new(opts, 10);
    let ack = connack(&mut el).await;
    assert!(ack.session_present, "the session must be resumed: {ack:?}");
    for n in 1..=3 {
        let p = publication(&mut el, &format!("queued message {n}")).await;
        assert_eq!(p.topic, format!("e2e/persistent/{n}").as_bytes());
        assert_eq!(p.payload, format!("offline {n}").as_bytes());
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
}

#[tokio::test]
async fn mqtt5_clean_start_discards_the_previous_session() {
    let hub = Telehub::start();
    let mut opts = options(&hub, "e2e-rumqttc-clean");
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(300));
    let (client, mut el) = AsyncClient::new(opts.clone(), 10);
    connack(&mut el).await;
    subscribe(&client, &mut el, "e2e/clean/#", QoS::AtLeastOnce).await;
    disconnect(&client, &mut el).await;
    drop((client, el));

    opts.set_clean_start(true);
    let (client, mut el) = AsyncClient::new(opts, 10);
    let ack = connack(&mut el).await;
    assert!(!ack.session_present, "clean start must not resume the session: {ack:?}");
    // the old subscription is gone: only what we subscribe to now arrives
    subscribe(&client, &mut el, "e2e/clean/now", QoS::AtLeastOnce).await;
    client.publish("e2e/clean/old", QoS::AtLeastOnce, false, "old").await.unwrap();
    client.publish("e2e/clean/now", QoS::AtLeastOnce, false, "now").await.unwrap();
    let p = publication(&mut el, "the message on the new subscription").await;
    assert_eq!((&p.topic[..], &p.payload[..]), (&b"e2e/clean/now"[..], &b"now"[..]));
}

#[tokio::test]
async fn mqtt5_properties_pass_through_unchanged_for_request_response() {
    let hub = Telehub::start();
    let (responder, mut rel) = AsyncClient::new(options(&hub, "e2e-rumqttc-responder"), 10);
    connack(&mut rel).await;
    subscribe(&responder, &mut rel, "e2e/request", QoS::AtLeastOnce).await;

    let (requester, mut qel) = AsyncClient::new(options(&hub, "e2e-rumqttc-requester"), 10);
    connack(&mut qel).await;
    subscribe(&requester, &mut qel, "e2e/reply/requester", QoS::AtLeastOnce).await;

    let correlation: &[u8] = b"\x00\xffreq-42\x80";
    let user_properties: Vec<(String, String)> =
        [("device", "raspi-01"), ("unit", "celsius"), ("device", "again")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        response_topic: Some("e2e/reply/requester".to_owned()),
        correlation_data: Some(correlation.to_vec().into()),
        user_properties: user_properties.clone(),
        content_type: Some("application/json".to_owned()),
        ..PublishProperties::default()
    };
    let body = r#"{"temperature":25.5}"#;
    requester.publish_with_properties("e2e/request", QoS::AtLeastOnce, false, body, sent).await.unwrap();
    puback(&mut qel, "the request").await;

    let request = publication(&mut rel, "the request").await;
    assert_eq!(&request.payload[..], body.as_bytes());
    let got = request.properties.clone().expect("the request lost its properties");
    // user properties keep their order, duplicates included (MQTT 5 §3.3.2.3.7)
    assert_eq!(got.user_properties, user_properties);
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(got.response_topic.as_deref(), Some("e2e/reply/requester"));
    assert_eq!(got.correlation_data.as_deref(), Some(correlation));
    assert_eq!(got.payload_format_indicator, Some(1));
    // forwarded with the time it waited subtracted, never more (§3.3.2.3.3)
    let expiry = got.message_expiry_interval.expect("message expiry interval dropped");
    assert!(0 < expiry && expiry <= 3600, "message expiry interval {expiry}");

    // the responder answers on the response topic with the correlation data it was given
    let reply = PublishProperties {
        correlation_data: got.correlation_data.clone(),
        content_type: Some("text/plain".to_owned()),
        ..PublishProperties::default()
    };
    let topic = got.response_topic.clone().expect("checked above");
    responder.publish_with_properties(topic, QoS::AtLeastOnce, false, "ack", reply).await.unwrap();
    puback(&mut rel, "the reply").await;

    let answer = publication(&mut qel, "the reply").await;
    assert_eq!(&answer.topic[..], b"e2e/reply/requester");
    assert_eq!(&answer.payload[..], b"ack");
    let props = answer.properties.expect("the reply lost its properties");
    assert_eq!(props.correlation_data.as_deref(), Some(correlation));
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert!(props.user_properties.is_empty(), "{:?}", props.user_properties);
    assert_eq!(props.response_topic, None);
}

#[tokio::test]
async fn mqtt311_qos2_publish_is_received_exactly_once() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};

    async fn next3<T>(
        el: &mut rumqttc::EventLoop,
        what: &str,
        mut pick: impl FnMut(Packet) -> Option<T>,
    ) -> T {
        let wait = async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if let Some(t) = pick(packet) {
                            return t;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => panic!("waiting for {what}: connection error: {e:?}"),
                }
            }
        };
        tokio::time::timeout(TIMEOUT, wait).await.unwrap_or_else(|_| panic!("no {what} within {TIMEOUT:?}"))
    }

    let hub = Telehub::start();
    let connect = |id: &str| {
        let mut opts = MqttOptions::new(id, "127.0.0.1", hub.port());
        opts.set_keep_alive(Duration::from_secs(30));
        AsyncClient::new(opts, 10)
    };
    let (subscriber, mut sel) = connect("e2e-rumqttc-v311-sub");
    next3(&mut sel, "CONNACK", |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
    subscriber.subscribe("e2e/v311/qos2", QoS::ExactlyOnce).await.unwrap();
    let suback = next3(&mut sel, "SUBACK", |p| match p {
        Packet::SubAck(s) => Some(s),
        _ => None,
    })
    .await;
    assert_eq!(suback.return_codes, [SubscribeReasonCode::Success(QoS::ExactlyOnce)]);

    let (publisher, mut pel) = connect("e2e-rumqttc-v311-pub");
    next3(&mut pel, "CONNACK", |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
    for payload in ["exactly once", "marker"] {
        publisher.publish("e2e/v311/qos2", QoS::ExactlyOnce, false, payload).await.unwrap();
        next3(&mut pel, "PUBREC", |p| matches!(p, Packet::PubRec(_)).then_some(())).await;
        next3(&mut pel, "PUBCOMP", |p| matches!(p, Packet::PubComp(_)).then_some(())).await;
    }

    // a duplicate of the first message would arrive before the marker
    let mut got = Vec::new();
    while got.last().is_none_or(|(payload, _, _)| payload != "marker") {
        let p = next3(&mut sel, "a publication", |p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await;
        got.push((String::from_utf8_lossy(&p.payload).into_owned(), p.qos, p.dup));
    }
    assert_eq!(
        got,
        [
            ("exactly once".to_owned(), QoS::ExactlyOnce, false),
            ("marker".to_owned(), QoS::ExactlyOnce, false)
        ]
    );
}

#[tokio::test]
async fn mqtt5_clients_get_server_shutting_down_when_telehub_stops() {
    let hub = Telehub::start();
    let (_client, mut el) = AsyncClient::new(options(&hub, "e2e-rumqttc-shutdown"), 10);
    connack(&mut el).await;

    let stopped = tokio::task::spawn_blocking(move || hub.stop());
    let reason = tokio::time::timeout(TIMEOUT, async {
        loop {
            match el.poll().await {
                Ok(_) => {}
                Err(ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. })) => {
                    return Some(reason_code);
                }
                Err(e) => panic!("expected DISCONNECT 0x8B, got {e:?}"),
            }
        }
    })
    .await
    .expect("no DISCONNECT from telehub");
    assert_eq!(reason, Some(DisconnectReasonCode::ServerShuttingDown));

    let f = stopped.await.unwrap();
    assert_eq!(f.status.code(), Some(0), "{}", f.stderr_text());
    assert!(f.stderr.iter().any(|l| l.contains("\"message\":\"stopped\"")), "{}", f.stderr_text());
}
