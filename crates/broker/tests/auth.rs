//! Authentication and authorization over real sockets, with a table-driven
//! [`Authenticator`]: refused sockets, refused CONNECTs (CONNACK codes per version),
//! refused PUBLISHes (MQTT 5 reason codes; 3.x acknowledged and dropped, or closed for
//! the rate), refused SUBSCRIBE filters, refused wills, [`Control::disconnect_where`],
//! and the TLS client certificate's fingerprint reaching `authenticate`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use telehub_broker::auth::AuthFuture;
use telehub_broker::config::TlsConfig;
use telehub_broker::{Authenticator, Config, ConnectInfo, Principal, PublishRefusal, Refusal, TransportKind};
use telehub_core::{ClientId, DeviceId, Message};
use telehub_testkit::parse::kind;
use telehub_testkit::{Connect, Publish, RawClient, TestBroker, TestPki, Transport, Version, build};

const V3: Version = Version::V311;
const V5: Version = Version::V5;
const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// User name, password, the device and credential they prove.
const ACCOUNTS: &[(&str, &[u8], &str, &str)] = &[
    ("alice", b"alice-pw", "dev-a", "cred-a"),
    ("bob", b"bob-pw", "dev-b", "cred-b"),
    ("carol", b"carol-pw", "dev-c", "cred-c"),
    // may subscribe to anything: sees what the others' refused messages would reach
    ("observer", b"observer-pw", "observer", "cred-o"),
];

/// User names refused whatever the password, and why.
const REFUSED_USERS: &[(&str, Refusal)] = &[
    ("flood", Refusal::ConnectionRate),
    ("down", Refusal::Unavailable),
    ("elsewhere", Refusal::NotAuthorized),
];

/// Never answers: the connect timeout must.
const HANGING_USER: &str = "hang";

/// The device a client certificate proves (no user name, certificate as in `certs`).
const CERT_DEVICE: &str = "dev-cert";

/// A device may publish under `devices/{id}/`, except `devices/{id}/rate` (too fast),
/// and subscribe there (shared or not); `observer` may subscribe to anything.
#[derive(Default)]
struct TableAuth {
    /// `accept` says no to every socket.
    refuse_sockets: bool,
    /// Client certificate fingerprints that prove [`CERT_DEVICE`].
    certs: Vec<[u8; 32]>,
    /// What `authenticate` was shown: transport and certificate fingerprint.
    seen: Mutex<Vec<(TransportKind, Option<[u8; 32]>)>>,
    /// Filters `authorize_subscribe` was asked about.
    filters: Mutex<Vec<String>>,
    /// `connected` / `disconnected` calls: "+client" / "-client".
    events: Mutex<Vec<String>>,
}

impl TableAuth {
    fn refusing_sockets() -> Self {
        Self { refuse_sockets: true, ..Self::default() }
    }

    fn own_prefix(who: &Principal) -> Option<String> {
        who.device.as_ref().map(|d| format!("devices/{d}/"))
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

impl Authenticator for TableAuth {
    fn accept(&self, _peer: SocketAddr) -> bool {
        !self.refuse_sockets
    }

    fn authenticate(&self, info: ConnectInfo<'_>) -> AuthFuture {
        self.seen.lock().unwrap().push((info.transport, info.cert_sha256));
        if info.username == Some(HANGING_USER) {
            return Box::pin(std::future::pending());
        }
        let verdict = match (info.username, info.cert_sha256) {
            (None, Some(cert)) if self.certs.contains(&cert) => {
                Ok(Principal::device(DeviceId::new(CERT_DEVICE).unwrap(), "cert"))
            }
            (None, _) => Err(Refusal::BadCredentials),
            (Some(user), _) => match REFUSED_USERS.iter().find(|(u, _)| *u == user) {
                Some((_, refusal)) => Err(*refusal),
                None => ACCOUNTS
                    .iter()
                    .find(|(u, pw, _, _)| *u == user && Some(*pw) == info.password)
                    .map(|(_, _, device, credential)| {
                        Principal::device(DeviceId::new(*device).unwrap(), *credential)
                    })
                    .ok_or(Refusal::BadCredentials),
            },
        };
        Box::pin(std::future::ready(verdict))
    }

    fn authorize_publish(&self, who: &Principal, message: &Message) -> Result<(), PublishRefusal> {
        let Some(prefix) = Self::own_prefix(who) else { return Err(PublishRefusal::NotAuthorized) };
        match message.topic.as_str().strip_prefix(&prefix) {
            Some("rate") => Err(PublishRefusal::RateTooHigh),
            Some(_) => Ok(()),
            None => Err(PublishRefusal::NotAuthorized),
        }
    }

    fn authorize_subscribe(&self, who: &Principal, filter: &str) -> bool {
        self.filters.lock().unwrap().push(filter.to_owned());
        if who.device.as_ref().is_some_and(|d| d.as_str() == "observer") {
            return true;
        }
        let unshared = match filter.strip_prefix("$share/") {
            Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
            None => filter,
        };
        Self::own_prefix(who).is_some_and(|prefix| unshared.starts_with(&prefix))
    }

    fn connected(&self, who: &Principal, client: &ClientId, _peer: SocketAddr) {
        assert!(who.device.is_some(), "only devices get in");
        self.events.lock().unwrap().push(format!("+{client}"));
    }

    fn disconnected(&self, _who: &Principal, client: &ClientId) {
        self.events.lock().unwrap().push(format!("-{client}"));
    }
}

async fn start(auth: TableAuth) -> (TestBroker, Arc<TableAuth>) {
    start_with(TestBroker::config(), auth).await
}

async fn start_with(config: Config, auth: TableAuth) -> (TestBroker, Arc<TableAuth>) {
    let auth = Arc::new(auth);
    let broker = TestBroker::start_with_auth(config, Arc::clone(&auth) as Arc<dyn Authenticator>).await;
    (broker, auth)
}

/// A CONNECT as `user` of [`ACCOUNTS`], with its password.
fn login(version: Version, client_id: &str, user: &str) -> Connect {
    let (_, password, _, _) = ACCOUNTS.iter().find(|(u, ..)| *u == user).expect("an account");
    let connect = match version {
        Version::V5 => Connect::v5(client_id),
        _ => Connect::v311(client_id),
    };
    connect.username(user).password(password)
}

/// Connects `connect` and returns the refusing CONNACK's code, asserting the connection
/// is closed after it.
async fn refused_code(broker: &TestBroker, connect: &Connect) -> u8 {
    let mut c = broker.raw().await;
    let ack = c.handshake(connect).await;
    assert!(!ack.session_present, "{ack:?}");
    c.expect_closed().await;
    ack.code
}

/// The observer, subscribed to `#`.
async fn observer(broker: &TestBroker) -> RawClient {
    let (mut c, _) = broker.client(&login(V3, "observer", "observer")).await;
    assert_eq!(c.subscribe(1, &[("#", 2)]).await, [2]);
    c
}

/// Asserts the next PUBLISH `c` receives is on `topic` with `payload`.
async fn expect_message(c: &mut RawClient, topic: &str, payload: &[u8]) {
    let got = c.expect_publish().await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), (topic, payload), "{got:?}");
    if got.qos == 1 {
        c.send(&build::puback(got.id())).await;
    }
}

/// Sends `publish` and asserts the one answer is `kind` with `reason` (MQTT 5).
async fn expect_ack(c: &mut RawClient, publish: &Publish, kind: u8, reason: u8) {
    c.send(&publish.to_bytes()).await;
    let ack = c.next_packet().await;
    assert_eq!(
        (ack.kind(), ack.packet_id(), ack.reason_code()),
        (kind, publish.packet_id(), reason),
        "{ack:?}"
    );
}

#[tokio::test]
async fn bad_credentials_are_refused_with_0x86_and_0x04() {
    let (broker, _) = start(TableAuth::default()).await;
    for (version, code) in [(V5, 0x86), (V3, 0x04)] {
        let connect = |id| match version {
            Version::V5 => Connect::v5(id),
            _ => Connect::v311(id),
        };
        let cases = [
            ("wrong password", connect("c").username("alice").password(b"nope")),
            ("unknown user", connect("c").username("mallory").password(b"alice-pw")),
            ("no password", connect("c").username("alice")),
            ("no credentials", connect("c")),
        ];
        for (what, c) in cases {
            assert_eq!(refused_code(&broker, &c).await, code, "{what} over {version:?}");
        }
    }
    assert_eq!(broker.stats().snapshot().auth_failures, 8);
    let (c, _) = broker.client(&login(V5, "alice", "alice")).await;
    c.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn each_refusal_has_its_connack_code_per_version() {
    let (broker, _) = start(TableAuth::default()).await;
    // (user, 5.0 code, 3.1.1 code)
    let table = [("flood", 0x9f, 0x05), ("down", 0x88, 0x03), ("elsewhere", 0x87, 0x05)];
    for (user, v5, v3) in table {
        let c5 = Connect::v5("c").username(user).password(b"x");
        assert_eq!(refused_code(&broker, &c5).await, v5, "{user} over 5.0");
        let c3 = Connect::v311("c").username(user).password(b"x");
        assert_eq!(refused_code(&broker, &c3).await, v3, "{user} over 3.1.1");
    }
    broker.stop().await;
}

#[tokio::test]
async fn authentication_that_outlasts_the_connect_timeout_is_refused_as_unavailable() {
    let config = Config { connect_timeout: Duration::from_millis(300), ..TestBroker::config() };
    let (broker, _) = start_with(config, TableAuth::default()).await;
    let c5 = Connect::v5("c").username(HANGING_USER).password(b"x");
    assert_eq!(refused_code(&broker, &c5).await, 0x88);
    let c3 = Connect::v311("c").username(HANGING_USER).password(b"x");
    assert_eq!(refused_code(&broker, &c3).await, 0x03);
    broker.stop().await;
}

#[tokio::test]
async fn a_socket_accept_refuses_is_closed_before_any_handshake_on_every_transport() {
    let pki = TestPki::new();
    let mut config = TestBroker::config();
    config.tls = pki.tls_config();
    config.ws.listen = Some(LOOPBACK);
    config.ws.tls_listen = Some(LOOPBACK);
    let (broker, auth) = start_with(config, TableAuth::refusing_sockets()).await;
    let transports = [
        Transport::Tcp,
        Transport::Ws,
        Transport::Tls(pki.client_config()),
        Transport::Wss(pki.client_config()),
    ];
    for transport in &transports {
        let addr = transport.addr(&broker.addrs());
        // TCP connects (the kernel accepts) and is closed unanswered; the others fail
        // their TLS or WebSocket handshake, which the broker never starts
        match RawClient::try_connect_via(addr, transport).await {
            Err(e) => assert_ne!(transport.name(), "tcp", "{e}"),
            Ok(mut c) => {
                assert_eq!(transport.name(), "tcp", "the {} handshake succeeded", transport.name());
                let _ = c.try_send(&login(V5, "alice", "alice").to_bytes()).await;
                c.expect_gone().await;
            }
        }
    }
    let stats = broker.stats().snapshot();
    assert_eq!((stats.connections_refused, stats.connections_total), (4, 0), "{stats:?}");
    assert!(auth.seen.lock().unwrap().is_empty(), "never authenticated");
    broker.stop().await;
}

#[tokio::test]
async fn v5_refused_publishes_get_their_reason_codes_and_are_not_routed() {
    let (broker, _) = start(TableAuth::default()).await;
    let mut obs = observer(&broker).await;
    let (mut alice, _) = broker.client(&login(V5, "alice", "alice")).await;

    let not_hers = "devices/dev-b/temp";
    expect_ack(&mut alice, &Publish::new(V5, not_hers, b"q1").qos(1, 1), kind::PUBACK, 0x87).await;
    expect_ack(&mut alice, &Publish::new(V5, not_hers, b"q2").qos(2, 2), kind::PUBREC, 0x87).await;
    // the QoS 2 flow ended at the PUBREC: its PUBREL finds no packet id
    alice.send(&build::pubrel(2)).await;
    let comp = alice.next_packet().await;
    assert_eq!((comp.kind(), comp.packet_id(), comp.reason_code()), (kind::PUBCOMP, 2, 0x92), "{comp:?}");
    let rate = "devices/dev-a/rate";
    expect_ack(&mut alice, &Publish::new(V5, rate, b"q1").qos(1, 3), kind::PUBACK, 0x97).await;
    expect_ack(&mut alice, &Publish::new(V5, rate, b"q2").qos(2, 4), kind::PUBREC, 0x97).await;
    // QoS 0: nothing to answer, dropped
    alice.send(&Publish::new(V5, not_hers, b"q0").to_bytes()).await;
    alice.send(&Publish::new(V5, rate, b"q0").to_bytes()).await;
    // retained and refused: not stored either
    expect_ack(&mut alice, &Publish::new(V5, not_hers, b"r").qos(1, 5).retain(), kind::PUBACK, 0x87).await;
    // the packet ids of refused QoS 2 messages are free again
    alice.publish(&Publish::new(V5, "devices/dev-a/temp", b"ok").qos(2, 2)).await;
    alice.ping().await;

    expect_message(&mut obs, "devices/dev-a/temp", b"ok").await;
    obs.expect_nothing().await;
    let (mut late, _) = broker.client(&login(V3, "late", "observer")).await;
    assert_eq!(late.subscribe(1, &[(not_hers, 1)]).await, [1]);
    late.expect_nothing().await;
    let stats = broker.stats().snapshot();
    assert_eq!((stats.messages_refused, stats.messages_received), (7, 1), "{stats:?}");
    broker.stop().await;
}

#[tokio::test]
async fn v3_refused_publishes_are_acknowledged_but_never_delivered() {
    let (broker, _) = start(TableAuth::default()).await;
    let mut obs = observer(&broker).await;
    let (mut alice, _) = broker.client(&login(V3, "alice", "alice")).await;
    let not_hers = "devices/dev-b/temp";
    alice.send(&Publish::new(V3, not_hers, b"q0").to_bytes()).await;
    // PUBACK, and PUBREC / PUBREL / PUBCOMP, as if accepted
    alice.publish(&Publish::new(V3, not_hers, b"q1").qos(1, 1)).await;
    alice.publish(&Publish::new(V3, not_hers, b"q2").qos(2, 2).retain()).await;
    // QoS 0 over the rate: dropped, the connection stays
    alice.send(&Publish::new(V3, "devices/dev-a/rate", b"q0").to_bytes()).await;
    alice.publish(&Publish::new(V3, "devices/dev-a/temp", b"next").qos(1, 3)).await;

    // the subscriber gets the allowed message, and it is the first it gets
    expect_message(&mut obs, "devices/dev-a/temp", b"next").await;
    obs.expect_nothing().await;
    let (mut late, _) = broker.client(&login(V3, "late", "observer")).await;
    assert_eq!(late.subscribe(1, &[(not_hers, 1)]).await, [1]);
    late.expect_nothing().await;
    assert_eq!(broker.stats().snapshot().messages_refused, 4);
    alice.ping().await;
    broker.stop().await;
}

#[tokio::test]
async fn v3_publishing_over_the_rate_closes_the_connection_unacknowledged() {
    let (broker, _) = start(TableAuth::default()).await;
    let mut obs = observer(&broker).await;
    for qos in [1, 2] {
        let (mut alice, _) = broker.client(&login(V3, "alice", "alice")).await;
        alice.send(&Publish::new(V3, "devices/dev-a/rate", b"fast").qos(qos, 7).to_bytes()).await;
        alice.expect_closed().await;
    }
    obs.expect_nothing().await;
    // a QoS 2 PUBLISH refused this way is asked about again when resent, not taken as
    // a duplicate of something accepted
    let (mut alice, _) = broker.client(&login(V3, "alice", "alice").clean(false)).await;
    alice.send(&Publish::new(V3, "devices/dev-a/rate", b"fast").qos(2, 8).to_bytes()).await;
    alice.expect_closed().await;
    let (mut alice, _) = broker.client(&login(V3, "alice", "alice").clean(false)).await;
    alice.send(&Publish::new(V3, "devices/dev-a/rate", b"fast").qos(2, 8).dup().to_bytes()).await;
    alice.expect_closed().await;
    assert_eq!(broker.stats().snapshot().messages_refused, 4);
    broker.stop().await;
}

#[tokio::test]
async fn refused_subscribe_filters_get_their_failure_code_and_no_retained_messages() {
    let (broker, auth) = start(TableAuth::default()).await;
    let (mut bob, _) = broker.client(&login(V3, "bob", "bob")).await;
    bob.publish(&Publish::new(V3, "devices/dev-b/state", b"b").qos(1, 1).retain()).await;
    let (mut alice, _) = broker.client(&login(V3, "alice-writer", "alice")).await;
    alice.publish(&Publish::new(V3, "devices/dev-a/state", b"a").qos(1, 1).retain()).await;
    alice.disconnect().await;

    for (version, refused) in [(V5, 0x87), (V3, 0x80)] {
        let (mut alice, _) = broker.client(&login(version, "alice", "alice")).await;
        let filters = [
            ("devices/dev-b/#", 1),
            ("devices/dev-a/#", 1),
            ("$share/g/devices/dev-b/state", 0),
            ("$share/g/devices/dev-a/state", 0),
            ("#", 0),
        ];
        let codes = alice.subscribe(1, &filters).await;
        assert_eq!(codes, [refused, 1, refused, 0, refused], "{version:?}");
        // the granted filter's retained message, not the refused ones'
        let got = alice.expect_publish().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..], got.retain),
            ("devices/dev-a/state", &b"a"[..], true)
        );
        alice.send(&build::puback(got.id())).await;
        alice.expect_nothing().await;
        // nor live messages on them
        bob.publish(&Publish::new(V3, "devices/dev-b/live", b"b").qos(1, 2)).await;
        alice.expect_nothing().await;
        alice.disconnect().await;
    }
    let filters = auth.filters.lock().unwrap().clone();
    assert!(filters.iter().any(|f| f == "$share/g/devices/dev-b/state"), "asked as sent: {filters:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_will_the_client_may_not_publish_refuses_the_connect_with_not_authorized() {
    let (broker, _) = start(TableAuth::default()).await;
    for (version, code) in [(V5, 0x87), (V3, 0x05)] {
        let theirs = login(version, "alice", "alice").will("devices/dev-b/status", b"gone", 1, false);
        assert_eq!(refused_code(&broker, &theirs).await, code, "{version:?}");
        let too_fast = login(version, "alice", "alice").will("devices/dev-a/rate", b"gone", 1, false);
        assert_eq!(refused_code(&broker, &too_fast).await, code, "{version:?}");
    }
    // a will on her own topic is fine, and published when she goes away
    let mut obs = observer(&broker).await;
    let own = login(V3, "alice", "alice").will("devices/dev-a/status", b"gone", 0, false);
    let (mut alice, _) = broker.client(&own).await;
    alice.shutdown_write().await;
    expect_message(&mut obs, "devices/dev-a/status", b"gone").await;
    assert_eq!(broker.stats().snapshot().auth_failures, 4);
    broker.stop().await;
}

#[tokio::test]
async fn disconnect_where_closes_exactly_the_matching_connections() {
    let (broker, auth) = start(TableAuth::default()).await;
    let control = broker.control();
    let (mut alice, _) = broker.client(&login(V5, "alice", "alice")).await;
    let (mut bob, _) = broker.client(&login(V5, "bob", "bob")).await;
    let (mut carol, _) = broker.client(&login(V3, "carol", "carol")).await;
    let dev = |id: &str| DeviceId::new(id).unwrap();
    let mut devices = control.connected_devices();
    devices.sort();
    assert_eq!(devices, [dev("dev-a"), dev("dev-b"), dev("dev-c")]);

    assert_eq!(control.disconnect_where(|p| p.device == Some(dev("nobody"))), 0);
    assert_eq!(control.disconnect_where(|p| p.device == Some(dev("dev-a"))), 1);
    alice.expect_disconnect(0x98).await;
    assert!(!control.is_connected(&dev("dev-a")));
    bob.ping().await;
    carol.ping().await;

    // a revoked credential, over 3.1.1: closed without DISCONNECT
    assert_eq!(control.disconnect_where(|p| p.credential.as_deref() == Some("cred-c")), 1);
    carol.expect_closed().await;
    assert!(!control.is_connected(&dev("dev-c")));
    bob.ping().await;
    assert!(control.is_connected(&dev("dev-b")));
    assert_eq!(control.connected_devices(), [dev("dev-b")]);
    assert_eq!(control.connection_count(), 1);
    // they may come back (the authenticator decides that)
    let (alice, _) = broker.client(&login(V5, "alice", "alice")).await;
    assert!(control.is_connected(&dev("dev-a")));
    alice.disconnect().await;
    assert!(!control.is_connected(&dev("dev-a")));
    assert_eq!(auth.events(), ["+alice", "+bob", "+carol", "-alice", "-carol", "+alice", "-alice"]);
    bob.disconnect().await;
    assert_eq!(control.connection_count(), 0);
    broker.stop().await;
}

#[tokio::test]
async fn the_tls_client_certificate_fingerprint_reaches_authenticate() {
    let pki = TestPki::new();
    let der = CertificateDer::from_pem_file(pki.client_cert_path()).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    let fingerprint: [u8; 32] = digest.as_ref().try_into().unwrap();
    let mut config = TestBroker::config();
    config.tls = TlsConfig { client_ca: Some(pki.ca_path()), ..pki.tls_config() };
    config.ws.listen = Some(LOOPBACK);
    config.ws.tls_listen = Some(LOOPBACK);
    let (broker, auth) =
        start_with(config, TableAuth { certs: vec![fingerprint], ..TableAuth::default() }).await;

    let with_cert = pki.client_config_as(Some(&pki));
    for transport in [Transport::Tls(with_cert.clone()), Transport::Wss(with_cert)] {
        let addr = transport.addr(&broker.addrs());
        // no user name: the certificate alone proves the device
        let (c, _) = RawClient::open_via(addr, &transport, &Connect::v5("by-cert")).await;
        assert!(broker.control().is_connected(&DeviceId::new(CERT_DEVICE).unwrap()));
        c.disconnect().await;
    }
    // plain transports have no certificate to show
    for transport in [Transport::Tcp, Transport::Ws] {
        let mut c = RawClient::connect_via(transport.addr(&broker.addrs()), &transport).await;
        assert_eq!(c.handshake(&Connect::v5("by-cert")).await.code, 0x86, "{}", transport.name());
        c.expect_closed().await;
    }
    let seen = auth.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (TransportKind::Tls, Some(fingerprint)),
            (TransportKind::Wss, Some(fingerprint)),
            (TransportKind::Tcp, None),
            (TransportKind::Ws, None),
        ]
    );
    broker.stop().await;
}
