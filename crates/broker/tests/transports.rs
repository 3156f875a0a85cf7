//! The same MQTT flows over every transport (TCP, TLS, WebSocket, secure WebSocket),
//! then what is particular to each: WebSocket framing and upgrade rules
//! ([MQTT-6.0.0-x]), client certificates, certificate reload, start-up errors naming
//! the file at fault.

use std::net::SocketAddr;
use std::time::Duration;

use telehub_broker::config::TlsConfig;
use telehub_broker::{BindError, Broker, Config};
use telehub_testkit::transport::{peer_certificates, ws_handshake_status};
use telehub_testkit::{
    ARRIVAL_TIMEOUT, Connect, Publish, RawClient, TestBroker, TestPki, Transport, Version, WsMessage, build,
};

const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A broker listening on every transport, with TLS as `tls` says.
async fn broker_with_every_transport(tls: TlsConfig) -> TestBroker {
    let mut config = TestBroker::config();
    config.tls = tls;
    config.ws.listen = Some(LOOPBACK);
    config.ws.tls_listen = Some(LOOPBACK);
    TestBroker::start_with(config).await
}

fn every_transport(pki: &TestPki) -> [Transport; 4] {
    [Transport::Tcp, Transport::Tls(pki.client_config()), Transport::Ws, Transport::Wss(pki.client_config())]
}

/// Connect (3.1.1 and 5), subscribe, QoS 1 both ways, a retained message for a late
/// subscriber and a will on an abrupt close: every client on `transport`.
async fn flows(broker: &TestBroker, transport: &Transport) {
    let addr = transport.addr(&broker.addrs());
    let name = transport.name();
    let (v3, v5) = (Version::V311, Version::V5);
    let topic = format!("flows/{name}/data");

    let (mut sub, ack) = RawClient::open_via(addr, transport, &Connect::v5(&format!("{name}-sub"))).await;
    assert!(!ack.session_present, "{name}");
    assert_eq!(sub.subscribe(1, &[(&format!("flows/{name}/#"), 1)]).await, [1], "{name}: SUBACK");

    let (mut publisher, _) =
        RawClient::open_via(addr, transport, &Connect::v311(&format!("{name}-pub"))).await;
    publisher.publish(&Publish::new(v3, &topic, b"21.5").qos(1, 7)).await; // PUBACK checked
    let got = sub.expect_publish().await;
    assert_eq!((got.topic.as_str(), &got.payload[..], got.qos), (topic.as_str(), &b"21.5"[..], 1), "{name}");
    sub.send(&build::puback(got.id())).await;

    // a payload many reads long, both ways
    let big: Vec<u8> = (0..300_000u32).map(|i| i.to_le_bytes()[0] ^ 0x5a).collect();
    publisher.publish(&Publish::new(v3, &topic, &big).qos(1, 9)).await;
    let got = sub.expect_publish().await;
    assert!(
        got.payload == big,
        "{name}: a {} byte payload arrived as {} bytes",
        big.len(),
        got.payload.len()
    );
    sub.send(&build::puback(got.id())).await;

    // MQTT 5 publisher, QoS 2, to the same subscriber (granted QoS 1)
    let (mut publisher5, _) =
        RawClient::open_via(addr, transport, &Connect::v5(&format!("{name}-pub5"))).await;
    publisher5.publish(&Publish::new(v5, &topic, b"v5").qos(2, 1)).await;
    let got = sub.expect_publish().await;
    assert_eq!((&got.payload[..], got.qos), (&b"v5"[..], 1), "{name}");
    sub.send(&build::puback(got.id())).await;

    // retained, for a subscriber that comes later
    let retained = format!("flows/{name}/retained");
    publisher.publish(&Publish::new(v3, &retained, b"kept").qos(1, 8).retain()).await;
    let got = sub.expect_publish().await;
    sub.send(&build::puback(got.id())).await;
    let (mut late, _) = RawClient::open_via(addr, transport, &Connect::v311(&format!("{name}-late"))).await;
    assert_eq!(late.subscribe(1, &[(retained.as_str(), 1)]).await, [1]);
    let got = late.expect_publish().await;
    assert_eq!((got.retain, &got.payload[..]), (true, &b"kept"[..]), "{name}: retained");
    late.send(&build::puback(got.id())).await;

    // will on an abrupt close (no DISCONNECT, no TLS close_notify, no WebSocket close)
    let will = format!("flows/{name}/will");
    let (dying, _) = RawClient::open_via(
        addr,
        transport,
        &Connect::v311(&format!("{name}-dying")).will(&will, b"gone", 1, false),
    )
    .await;
    drop(dying);
    let got = sub.expect_publish().await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), (will.as_str(), &b"gone"[..]), "{name}: will");
    sub.send(&build::puback(got.id())).await;

    sub.ping().await;
    publisher.disconnect().await;
    publisher5.send(&build::disconnect_v5(0)).await;
    late.disconnect().await;
    sub.send(&build::disconnect_v5(0)).await;
    sub.expect_closed().await;
}

#[tokio::test]
async fn the_same_flows_pass_over_tcp_tls_ws_and_wss() {
    let pki = TestPki::new();
    let broker = broker_with_every_transport(pki.tls_config()).await;
    for transport in every_transport(&pki) {
        flows(&broker, &transport).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn messages_cross_transports() {
    let pki = TestPki::new();
    let broker = broker_with_every_transport(pki.tls_config()).await;
    let addrs = broker.addrs();
    let transports = every_transport(&pki);
    let mut subs = Vec::new();
    for t in &transports {
        let (mut sub, _) =
            RawClient::open_via(t.addr(&addrs), t, &Connect::v311(&format!("x-{}", t.name()))).await;
        assert_eq!(sub.subscribe(1, &[("cross/#", 1)]).await, [1]);
        subs.push(sub);
    }
    for (i, t) in transports.iter().enumerate() {
        let (mut p, _) =
            RawClient::open_via(t.addr(&addrs), t, &Connect::v311(&format!("xp-{}", t.name()))).await;
        let id = u16::try_from(i + 1).unwrap();
        p.publish(&Publish::new(Version::V311, format!("cross/{}", t.name()), b"hi").qos(1, id)).await;
        for sub in &mut subs {
            let got = sub.expect_publish().await;
            assert_eq!(got.topic, format!("cross/{}", t.name()));
            sub.send(&build::puback(got.id())).await;
        }
        p.disconnect().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn mqtt_6_0_0_2_a_packet_may_span_websocket_messages_and_a_message_may_hold_several() {
    let pki = TestPki::new();
    let broker = broker_with_every_transport(pki.tls_config()).await;
    for transport in [Transport::Ws, Transport::Wss(pki.client_config())] {
        let mut c = RawClient::connect_via(transport.addr(&broker.addrs()), &transport).await;
        let connect = Connect::v311(&format!("split-{}", transport.name())).to_bytes();
        // CONNECT in three messages, cut inside the fixed header and inside the body
        c.send(&connect[..1]).await;
        c.send(&connect[1..5]).await;
        c.send(&connect[5..]).await;
        assert_eq!(c.next_packet().await.connack(Version::V311).code, 0);
        // SUBSCRIBE, PINGREQ and half a PUBLISH in one message, the rest in the next
        let publish = Publish::new(Version::V311, "split/t", b"whole").to_bytes();
        let mut batch = build::subscribe(Version::V311, 1, &[("split/#", 0)]);
        batch.extend(build::pingreq());
        batch.extend(&publish[..4]);
        c.send(&batch).await;
        assert_eq!(c.next_packet().await.suback(Version::V311), (1, vec![0]));
        c.expect_bytes(&[0xd0, 0x00]).await;
        c.send(&publish[4..]).await;
        assert_eq!(&c.expect_publish().await.payload[..], b"whole");
        c.disconnect().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn mqtt_6_0_0_1_a_text_message_closes_the_connection() {
    let pki = TestPki::new();
    let broker = broker_with_every_transport(pki.tls_config()).await;
    let addr = broker.addrs().ws.unwrap();
    let (mut c, _) = RawClient::open_via(addr, &Transport::Ws, &Connect::v311("texter")).await;
    c.send_ws(WsMessage::Text("hello".into())).await;
    c.expect_gone().await;
    // a WebSocket ping is not MQTT: answered by the WebSocket layer, the session goes on
    let (mut c, _) = RawClient::open_via(addr, &Transport::Ws, &Connect::v311("pinger")).await;
    c.send_ws(WsMessage::Ping(b"p".to_vec().into())).await;
    c.ping().await;
    c.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn mqtt_6_0_0_4_the_upgrade_needs_path_mqtt_and_subprotocol_mqtt() {
    let pki = TestPki::new();
    let broker = broker_with_every_transport(pki.tls_config()).await;
    let (ws, wss) = (broker.addrs().ws.unwrap(), broker.addrs().wss.unwrap());
    let tls = pki.client_config();
    assert_eq!(ws_handshake_status(ws, "/mqtt", Some("mqtt"), None).await, 101);
    assert_eq!(ws_handshake_status(wss, "/mqtt", Some("mqtt"), Some(&tls)).await, 101);
    // several offered, "mqtt" among them; MQTT 3.1 clients offer "mqttv3.1"
    assert_eq!(ws_handshake_status(ws, "/mqtt", Some("wamp, mqtt"), None).await, 101);
    assert_eq!(ws_handshake_status(ws, "/mqtt", Some("mqttv3.1"), None).await, 101);
    assert_eq!(ws_handshake_status(ws, "/", Some("mqtt"), None).await, 404);
    assert_eq!(ws_handshake_status(ws, "/other", Some("mqtt"), None).await, 404);
    assert_eq!(ws_handshake_status(ws, "/mqtt", None, None).await, 400);
    assert_eq!(ws_handshake_status(ws, "/mqtt", Some("wamp"), None).await, 400);
    assert_eq!(ws_handshake_status(wss, "/mqtt", None, Some(&tls)).await, 400);
    broker.assert_serving().await;
    broker.stop().await;
}

#[tokio::test]
async fn client_ca_refuses_clients_without_a_certificate_from_it() {
    let pki = TestPki::new();
    let stranger = TestPki::new(); // another CA, with a client certificate of its own
    let tls = TlsConfig { client_ca: Some(pki.ca_path()), ..pki.tls_config() };
    let broker = broker_with_every_transport(tls).await;
    let addrs = broker.addrs();
    for (name, config, accepted) in [
        ("our client certificate", pki.client_config_as(Some(&pki)), true),
        ("no client certificate", pki.client_config(), false),
        ("a certificate from another CA", pki.client_config_as(Some(&stranger)), false),
    ] {
        for transport in [Transport::Tls(config.clone()), Transport::Wss(config.clone())] {
            let addr = transport.addr(&addrs);
            let what = format!("{name} over {}", transport.name());
            if accepted {
                let (c, _) = RawClient::open_via(addr, &transport, &Connect::v311("device-1")).await;
                c.disconnect().await;
                continue;
            }
            // with TLS 1.3 the client may finish its side of the handshake before the
            // server has checked its certificate: the refusal then ends the connection
            match RawClient::try_connect_via(addr, &transport).await {
                Err(e) => eprintln!("{what}: refused during the handshake: {e}"),
                Ok(mut c) => {
                    let _ = c.try_send(&Connect::v311("intruder").to_bytes()).await;
                    let e = c.expect_gone().await;
                    eprintln!("{what}: refused after the handshake: {e:?}");
                }
            }
        }
    }
    // plain TCP and WebSocket do not ask for certificates
    let (c, _) = RawClient::open_via(addrs.mqtt, &Transport::Tcp, &Connect::v311("plain")).await;
    c.disconnect().await;
    broker.stop().await;
}

/// Waits until a new TLS connection to `addr` is shown `want` as the server certificate.
async fn eventually_presents(addr: SocketAddr, pki: &TestPki, want: &[u8]) {
    let deadline = tokio::time::Instant::now() + ARRIVAL_TIMEOUT;
    loop {
        let chain = peer_certificates(addr, &pki.client_config()).await;
        if chain.first().map(|c| c.as_ref()) == Some(want) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{addr} still presents the old certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_certificate_is_reloaded_when_its_files_change() {
    let pki = TestPki::new();
    let tls = TlsConfig { reload_interval: Duration::from_millis(100), ..pki.tls_config() };
    let broker = broker_with_every_transport(tls).await;
    let addrs = broker.addrs();
    let first = std::fs::read(pki.server_cert_path()).unwrap();
    let first = rustls_pem_to_der(&first);
    eventually_presents(addrs.mqtts.unwrap(), &pki, &first).await;
    let transport = Transport::Tls(pki.client_config());
    let (mut open, _) = RawClient::open_via(addrs.mqtts.unwrap(), &transport, &Connect::v311("before")).await;

    let renewed = pki.issue_server("telehub test server, renewed");
    assert_ne!(renewed.as_ref(), &first[..]);
    eventually_presents(addrs.mqtts.unwrap(), &pki, renewed.as_ref()).await;
    eventually_presents(addrs.wss.unwrap(), &pki, renewed.as_ref()).await;
    // the connection made before the reload goes on
    open.ping().await;
    open.disconnect().await;

    // a broken key is not loaded: the renewed certificate stays in use
    std::fs::write(pki.server_key_path(), b"not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    eventually_presents(addrs.mqtts.unwrap(), &pki, renewed.as_ref()).await;
    let (c, _) = RawClient::open_via(addrs.mqtts.unwrap(), &transport, &Connect::v311("after")).await;
    c.disconnect().await;
    broker.stop().await;
}

fn rustls_pem_to_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem).unwrap().to_vec()
}

#[tokio::test]
async fn connect_timeout_covers_the_tls_and_websocket_handshakes() {
    let pki = TestPki::new();
    let mut config = TestBroker::config();
    config.tls = pki.tls_config();
    config.ws.listen = Some(LOOPBACK);
    config.connect_timeout = Duration::from_millis(200);
    let broker = TestBroker::start_with(config).await;
    for addr in [broker.addrs().mqtts.unwrap(), broker.addrs().ws.unwrap()] {
        // a TCP connection that never starts its handshake
        let mut c = RawClient::connect_via(addr, &Transport::Tcp).await;
        c.expect_gone().await;
    }
    broker.stop().await;
}

/// The error message (with its cause) of binding with `tls`.
async fn bind_error(tls: TlsConfig) -> String {
    let config = Config { listen: LOOPBACK, tls, ..Config::default() };
    match Broker::bind(config, None).await {
        Ok(_) => panic!("bind succeeded"),
        Err(e @ (BindError::Tls(_) | BindError::WssWithoutTls)) => {
            let source = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
            format!("{e}: {source}")
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn start_up_errors_name_the_file_at_fault() {
    let pki = TestPki::new();
    let missing = pki.dir().join("missing.crt");
    let m = bind_error(TlsConfig { cert: Some(missing.clone()), ..pki.tls_config() }).await;
    assert!(m.contains(&missing.display().to_string()) && m.contains("certificate"), "{m}");

    let m = bind_error(TlsConfig { key: Some(missing.clone()), ..pki.tls_config() }).await;
    assert!(m.contains(&missing.display().to_string()) && m.contains("private key"), "{m}");

    // a file that holds no PEM certificate
    let m = bind_error(TlsConfig { cert: Some(pki.server_key_path()), ..pki.tls_config() }).await;
    assert!(m.contains(&pki.server_key_path().display().to_string()), "{m}");

    // the client's key with the server's certificate
    let m = bind_error(TlsConfig { key: Some(pki.client_key_path()), ..pki.tls_config() }).await;
    assert!(m.contains(&pki.client_key_path().display().to_string()) && m.contains("not usable"), "{m}");

    let m = bind_error(TlsConfig { client_ca: Some(missing.clone()), ..pki.tls_config() }).await;
    assert!(m.contains(&missing.display().to_string()) && m.contains("client CA"), "{m}");

    let m = bind_error(TlsConfig { key: None, ..pki.tls_config() }).await;
    assert!(m.contains("mqtt.tls.key"), "{m}");

    let mut config = Config { listen: LOOPBACK, ..Config::default() };
    config.ws.tls_listen = Some(LOOPBACK);
    let Err(e) = Broker::bind(config, None).await else { panic!("bind succeeded") };
    assert!(matches!(e, BindError::WssWithoutTls), "{e}");
}
