//! The registry against a real SQLite store: every way a device proves who it is and
//! every way it is refused, admin tokens and scopes, revocation, persistence, audit.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::json;
use telehub_broker::{Authenticator as _, ConnectInfo, Principal, PublishRefusal, Refusal, TransportKind};
use telehub_core::{ClientId, DeviceId, Message, QoS, TopicName};
use telehub_store::SqliteStore;
use telehub_store::registry::AuditQuery;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    registry: Registry<SqliteStore>,
    admin: Actor,
}

async fn fixture_with(config: AuthConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(SqliteStore::open(&telehub_store::Config::default(), &dir.path().join("t.db")).unwrap());
    let mappings = crate::ingest::Config::default().mappings;
    let registry = Registry::open(store.clone(), config, mappings).await.unwrap();
    Fixture { _dir: dir, store, registry, admin: Actor { id: "token:test".into(), remote: None } }
}

async fn fixture() -> Fixture {
    fixture_with(AuthConfig::default()).await
}

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn peer() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

async fn device(f: &Fixture, name: &str) {
    let new = NewDevice { id: id(name), name: None, tags: Default::default(), allowed_ips: Vec::new() };
    f.registry.create_device(&f.admin, new).await.unwrap();
}

fn cred(kind: CredentialKind) -> NewCredential {
    NewCredential { kind, name: None, secret: None, public_key: None, fingerprint: None, expires_at: None }
}

async fn token(f: &Fixture, device: &str) -> (CredentialInfo, String) {
    let (info, secret) =
        f.registry.create_credential(&f.admin, &id(device), cred(CredentialKind::Token)).await.unwrap();
    (info, secret.expect("a token is shown once"))
}

async fn connect(
    f: &Fixture,
    client: &str,
    username: Option<&str>,
    password: Option<&[u8]>,
) -> Result<Principal, Refusal> {
    let client = ClientId::new(client);
    f.registry
        .authenticate(ConnectInfo {
            client_id: &client,
            username,
            password,
            peer: peer(),
            transport: TransportKind::Tcp,
            cert_sha256: None,
        })
        .await
}

fn now_s() -> i64 {
    now_ms() / 1000
}

fn sign(alg: jsonwebtoken::Algorithm, key: &KeyPair, claims: &serde_json::Value) -> String {
    let pem = key.serialize_pem();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

fn rsa_key() -> KeyPair {
    KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap()
}

fn ec_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

async fn jwt_credential(f: &Fixture, device: &str, kind: CredentialKind, key: &KeyPair) -> CredentialInfo {
    let new = NewCredential { public_key: Some(key.public_key_pem()), ..cred(kind) };
    f.registry.create_credential(&f.admin, &id(device), new).await.unwrap().0
}

fn claims(aud: &str, iat: i64, exp: i64) -> serde_json::Value {
    json!({ "aud": aud, "iat": iat, "exp": exp })
}

#[tokio::test]
async fn a_device_token_authenticates_its_device_only() {
    let f = fixture().await;
    device(&f, "pi-1").await;
    device(&f, "pi-2").await;
    let (info, secret) = token(&f, "pi-1").await;
    let p = connect(&f, "c1", Some("pi-1"), Some(secret.as_bytes())).await.unwrap();
    assert_eq!(p, Principal::device(id("pi-1"), info.id.as_str()));
    assert_eq!(connect(&f, "c1", Some("pi-2"), Some(secret.as_bytes())).await, Err(Refusal::BadCredentials));
    assert_eq!(connect(&f, "c1", Some("pi-1"), Some(b"wrong")).await, Err(Refusal::BadCredentials));
    assert_eq!(
        connect(&f, "c1", Some("nobody"), Some(secret.as_bytes())).await,
        Err(Refusal::BadCredentials)
    );
    assert_eq!(
        connect(&f, "c1", None, None).await,
        Err(Refusal::BadCredentials),
        "anonymous is off by default"
    );
    // HTTP: the token alone names the device
    let p = f.registry.authenticate_http(Some(&secret), None, peer().ip()).await.unwrap();
    assert_eq!(p.device, Some(id("pi-1")));
    assert_eq!(
        f.registry.authenticate_http(Some("thd_nope"), None, peer().ip()).await,
        Err(Refusal::BadCredentials)
    );
    assert_eq!(f.registry.authenticate_http(None, None, peer().ip()).await, Err(Refusal::BadCredentials));
    // the token is never listed
    let listed = serde_json::to_string(&f.registry.credentials(&id("pi-1")).unwrap()).unwrap();
    assert!(!listed.contains(&secret) && !listed.contains("verifier"), "{listed}");
}

#[tokio::test]
async fn anonymous_access_only_when_allowed() {
    let f = fixture_with(AuthConfig { allow_anonymous: true, ..AuthConfig::default() }).await;
    assert_eq!(connect(&f, "c", None, None).await, Ok(Principal::anonymous()));
    assert_eq!(f.registry.authenticate_http(None, None, peer().ip()).await, Ok(Principal::anonymous()));
    // credentials that are presented are still checked
    assert_eq!(connect(&f, "c", Some("x"), Some(b"bad")).await, Err(Refusal::BadCredentials));
    assert!(f.registry.may_ingest(&Principal::anonymous(), &id("any")));
}

#[tokio::test]
async fn passwords_are_checked_with_argon2() {
    let f = fixture().await;
    device(&f, "pi-1").await;
    let short = NewCredential { secret: Some("short".into()), ..cred(CredentialKind::Password) };
    assert!(matches!(
        f.registry.create_credential(&f.admin, &id("pi-1"), short).await,
        Err(RegistryError::Invalid(m)) if m.contains("8 characters")
    ));
    let new =
        NewCredential { secret: Some("correct horse battery".into()), ..cred(CredentialKind::Password) };
    let (info, shown) = f.registry.create_credential(&f.admin, &id("pi-1"), new).await.unwrap();
    assert_eq!(shown, None);
    let p = connect(&f, "c", Some("pi-1"), Some(b"correct horse battery")).await.unwrap();
    assert_eq!(p.credential.as_deref(), Some(info.id.as_str()));
    assert_eq!(connect(&f, "c", Some("pi-1"), Some(b"correct horse")).await, Err(Refusal::BadCredentials));
}

#[tokio::test]
async fn device_signed_jwts_rs256_and_es256() {
    let f = fixture().await;
    device(&f, "iot-1").await;
    let (rsa, ec) = (rsa_key(), ec_key());
    jwt_credential(&f, "iot-1", CredentialKind::JwtRs256, &rsa).await;
    jwt_credential(&f, "iot-1", CredentialKind::JwtEs256, &ec).await;
    let now = now_s();
    let google_client = "projects/p/locations/eu/registries/r/devices/iot-1";
    for (alg, key) in [(jsonwebtoken::Algorithm::RS256, &rsa), (jsonwebtoken::Algorithm::ES256, &ec)] {
        let good = sign(alg, key, &claims("telehub", now, now + 3600));
        // Google style: device from the client id, user name ignored
        let p = connect(&f, google_client, Some("unused"), Some(good.as_bytes())).await;
        assert_eq!(p.map(|p| p.device), Ok(Some(id("iot-1"))), "{alg:?}");
        // HTTP bearer: device from the URL
        let p = f.registry.authenticate_http(Some(&good), Some(&id("iot-1")), peer().ip()).await;
        assert_eq!(p.map(|p| p.device), Ok(Some(id("iot-1"))), "{alg:?}");
    }
    let rs = |c: serde_json::Value| sign(jsonwebtoken::Algorithm::RS256, &rsa, &c);
    let refused = [
        ("expired", rs(claims("telehub", now - 7200, now - 3600))),
        ("not yet valid", rs(claims("telehub", now + 3600, now + 7200))),
        ("wrong aud", rs(claims("other", now, now + 3600))),
        ("no aud", rs(json!({ "iat": now, "exp": now + 3600 }))),
        ("too long", rs(claims("telehub", now, now + 25 * 3600))),
        ("no exp", rs(json!({ "aud": "telehub", "iat": now }))),
        ("wrong key", sign(jsonwebtoken::Algorithm::RS256, &rsa_key(), &claims("telehub", now, now + 60))),
        ("other device", rs(json!({ "aud": "telehub", "iat": now, "exp": now + 60, "sub": "iot-2" }))),
    ];
    for (why, token) in refused {
        assert_eq!(
            connect(&f, google_client, None, Some(token.as_bytes())).await,
            Err(Refusal::BadCredentials),
            "{why}"
        );
    }
    // alg confusion: HS256 "signed" with the public key is refused
    let hs = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("telehub", now, now + 60),
        &EncodingKey::from_secret(rsa.public_key_pem().as_bytes()),
    )
    .unwrap();
    assert_eq!(connect(&f, google_client, None, Some(hs.as_bytes())).await, Err(Refusal::BadCredentials));
    // small clock skew is fine
    let skewed = rs(claims("telehub", now + 30, now + 600));
    assert!(connect(&f, google_client, None, Some(skewed.as_bytes())).await.is_ok());
    // a bad PEM is refused when the credential is made
    let bad = NewCredential { public_key: Some("not a key".into()), ..cred(CredentialKind::JwtEs256) };
    assert!(matches!(
        f.registry.create_credential(&f.admin, &id("iot-1"), bad).await,
        Err(RegistryError::Invalid(_))
    ));
}

#[tokio::test]
async fn client_certificates_by_fingerprint() {
    let f = fixture().await;
    device(&f, "gw-1").await;
    let fp = secret::sha256(b"the DER of a certificate");
    let new =
        NewCredential { fingerprint: Some(secret::hex(&fp).to_uppercase()), ..cred(CredentialKind::X509) };
    f.registry.create_credential(&f.admin, &id("gw-1"), new).await.unwrap();
    let client = ClientId::new("gw");
    let info = |cert, username| ConnectInfo {
        client_id: &client,
        username,
        password: None,
        peer: peer(),
        transport: TransportKind::Tls,
        cert_sha256: cert,
    };
    assert_eq!(f.registry.authenticate(info(Some(fp), None)).await.map(|p| p.device), Ok(Some(id("gw-1"))));
    assert_eq!(f.registry.authenticate(info(Some(fp), Some("gw-2"))).await, Err(Refusal::BadCredentials));
    let other = secret::sha256(b"another certificate");
    assert_eq!(f.registry.authenticate(info(Some(other), None)).await, Err(Refusal::BadCredentials));
}

#[tokio::test]
async fn expired_and_revoked_credentials_and_deleted_devices_are_refused() {
    let f = fixture().await;
    let revoked = Arc::new(Mutex::new(Vec::new()));
    let seen = revoked.clone();
    f.registry.on_revoke(move |r| seen.lock().unwrap().push(r.clone()));
    device(&f, "pi-1").await;
    let new = NewCredential { expires_at: Some(now_ms() - 1), ..cred(CredentialKind::Token) };
    let (_, old) = f.registry.create_credential(&f.admin, &id("pi-1"), new).await.unwrap();
    assert_eq!(
        connect(&f, "c", Some("pi-1"), Some(old.unwrap().as_bytes())).await,
        Err(Refusal::BadCredentials)
    );

    let (info, secret) = token(&f, "pi-1").await;
    assert!(connect(&f, "c", Some("pi-1"), Some(secret.as_bytes())).await.is_ok());
    f.registry.delete_credential(&f.admin, &id("pi-1"), &info.id).await.unwrap();
    assert_eq!(connect(&f, "c", Some("pi-1"), Some(secret.as_bytes())).await, Err(Refusal::BadCredentials));
    assert_eq!(revoked.lock().unwrap().as_slice(), [Revoked::Credential(info.id.clone())]);

    let (_, secret) = token(&f, "pi-1").await;
    f.registry.delete_device(&f.admin, &id("pi-1")).await.unwrap();
    assert_eq!(connect(&f, "c", Some("pi-1"), Some(secret.as_bytes())).await, Err(Refusal::BadCredentials));
    assert_eq!(revoked.lock().unwrap().last(), Some(&Revoked::Device(id("pi-1"))));
    assert!(f.registry.device(&id("pi-1")).is_none());
    assert!(matches!(
        f.registry.delete_device(&f.admin, &id("pi-1")).await,
        Err(RegistryError::NotFound { .. })
    ));
}

#[tokio::test]
async fn device_allowlists_and_connection_rates() {
    let config = AuthConfig {
        rate: RateConfig { connections_per_ip: 1, connections_burst: 1, ..RateConfig::default() },
        ..AuthConfig::default()
    };
    let f = fixture_with(config).await;
    let new = NewDevice {
        id: id("fenced"),
        name: None,
        tags: Default::default(),
        allowed_ips: vec!["10.0.0.0/8".parse().unwrap()],
    };
    f.registry.create_device(&f.admin, new).await.unwrap();
    let (_, secret) = token(&f, "fenced").await;
    assert_eq!(connect(&f, "c", Some("fenced"), Some(secret.as_bytes())).await, Err(Refusal::NotAuthorized));
    assert_eq!(connect(&f, "c", Some("fenced"), Some(secret.as_bytes())).await, Err(Refusal::ConnectionRate));
    assert!(f.registry.authenticate_http(Some(&secret), None, "10.1.1.1".parse().unwrap()).await.is_ok());
    assert_eq!(
        f.registry.authenticate_http(Some(&secret), None, peer().ip()).await,
        Err(Refusal::NotAuthorized)
    );
}

#[tokio::test]
async fn publish_and_subscribe_stay_in_the_devices_lane() {
    let config = AuthConfig {
        rate: RateConfig { messages_per_device: 1, messages_burst: 3, ..RateConfig::default() },
        ..AuthConfig::default()
    };
    let f = fixture_with(config).await;
    device(&f, "nl-1").await;
    let me = Principal::device(id("nl-1"), "cr");
    let msg = |topic: &str, payload: &'static str| Message {
        topic: TopicName::new(topic).unwrap(),
        payload: bytes::Bytes::from_static(payload.as_bytes()),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    };
    assert_eq!(f.registry.authorize_publish(&me, &msg("nl-1/telemetry", "{}")), Ok(()));
    assert_eq!(
        f.registry.authorize_publish(&me, &msg("nl-2/telemetry", "{}")),
        Err(PublishRefusal::NotAuthorized)
    );
    assert_eq!(f.registry.authorize_publish(&me, &msg("sensor/data", r#"{"device_id":"nl-1"}"#)), Ok(()));
    // the fourth message within a second exceeds the burst of 3
    assert_eq!(
        f.registry.authorize_publish(&me, &msg("nl-1/telemetry", "{}")),
        Err(PublishRefusal::RateTooHigh)
    );
    assert!(f.registry.authorize_subscribe(&me, "nl-1/commands"));
    assert!(f.registry.authorize_subscribe(&me, "$share/g/devices/nl-1/#"));
    assert!(!f.registry.authorize_subscribe(&me, "$share/g/#"));
    assert!(!f.registry.authorize_subscribe(&me, "nl-2/commands"));
    // a rule extends the lane
    let spec = AclRuleSpec {
        effect: Effect::Allow,
        action: Action::Subscribe,
        filter: "+/commands".into(),
        device: Some(id("nl-1")),
        tags: Default::default(),
        anonymous: false,
    };
    let rule = f.registry.create_rule(&f.admin, spec).await.unwrap();
    assert!(f.registry.authorize_subscribe(&me, "nl-2/commands"));
    f.registry.delete_rule(&f.admin, &rule.id).await.unwrap();
    assert!(!f.registry.authorize_subscribe(&me, "nl-2/commands"));
    // HTTP ingest for another device is refused
    assert!(f.registry.may_ingest(&me, &id("nl-1")));
    assert!(!f.registry.may_ingest(&me, &id("nl-2")));
    // a deleted device's live principal gets nothing
    f.registry.delete_device(&f.admin, &id("nl-1")).await.unwrap();
    assert!(!f.registry.authorize_subscribe(&me, "nl-1/commands"));
}

#[tokio::test]
async fn admin_tokens_scopes_and_bootstrap() {
    let f = fixture().await;
    let first = f.registry.bootstrap_admin(None).await.unwrap().expect("the first start makes a token");
    assert!(f.registry.bootstrap_admin(None).await.unwrap().is_none(), "only once");
    assert_eq!(f.registry.check_admin(Some(&first), Scope::Admin).map(|a| a.scopes), Ok(vec![Scope::Admin]));
    let (_, read) = f.registry.create_token(&f.admin, "dash".into(), vec![Scope::Read], None).await.unwrap();
    assert!(f.registry.check_admin(Some(&read), Scope::Read).is_ok());
    assert_eq!(
        f.registry.check_admin(Some(&read), Scope::Write),
        Err(AdminRefusal::Forbidden { needed: Scope::Write })
    );
    assert_eq!(f.registry.check_admin(None, Scope::Read), Err(AdminRefusal::Missing));
    assert_eq!(f.registry.check_admin(Some("tha_wrong"), Scope::Read), Err(AdminRefusal::Invalid));
    let (info, expired) =
        f.registry.create_token(&f.admin, "old".into(), vec![Scope::Read], Some(now_ms() - 1)).await.unwrap();
    assert_eq!(f.registry.check_admin(Some(&expired), Scope::Read), Err(AdminRefusal::Invalid));
    f.registry.delete_token(&f.admin, &info.id).await.unwrap();
    assert!(!f.registry.tokens().iter().any(|t| t.id == info.id));
    // the environment's token becomes valid, and a short one is refused
    let env = "an-operator-chosen-admin-token";
    assert!(f.registry.bootstrap_admin(Some(env)).await.unwrap().is_none());
    assert!(f.registry.check_admin(Some(env), Scope::Admin).is_ok());
    assert!(matches!(f.registry.bootstrap_admin(Some("short")).await, Err(RegistryError::Invalid(_))));
}

#[tokio::test]
async fn everything_survives_a_reopen_and_changes_are_audited() {
    let f = fixture().await;
    device(&f, "pi-1").await;
    let (_, secret) = token(&f, "pi-1").await;
    let (_, admin) = f.registry.create_token(&f.admin, "ops".into(), vec![Scope::Write], None).await.unwrap();
    assert_eq!(connect(&f, "c", Some("pi-1"), Some(b"nope")).await, Err(Refusal::BadCredentials));
    let patch =
        DevicePatch { tags: Some([("site".to_owned(), "a".to_owned())].into()), ..DevicePatch::default() };
    f.registry.update_device(&f.admin, &id("pi-1"), patch).await.unwrap();
    assert!(matches!(
        f.registry
            .create_device(
                &f.admin,
                NewDevice { id: id("pi-1"), name: None, tags: Default::default(), allowed_ips: vec![] }
            )
            .await,
        Err(RegistryError::Conflict(_))
    ));

    let rows = f.registry.audit_query(AuditQuery { limit: 100, ..AuditQuery::default() }).await.unwrap();
    let actions: Vec<(&str, &str)> =
        rows.iter().map(|r| (r.event.action.as_str(), r.event.outcome.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("device.update", "ok"),
            ("auth.mqtt", "denied"),
            ("token.create", "ok"),
            ("credential.create", "ok"),
            ("device.create", "ok")
        ]
    );
    let failure = &rows[1].event;
    assert_eq!(
        (failure.actor.as_str(), failure.detail["reason"].as_str()),
        ("device:pi-1", Some("wrong token"))
    );
    assert!(!format!("{rows:?}").contains(&secret), "no secret in the audit log");

    let reopened =
        Registry::open(f.store.clone(), AuthConfig::default(), crate::ingest::Config::default().mappings)
            .await
            .unwrap();
    assert_eq!(reopened.device(&id("pi-1")).unwrap().device.tags.get("site").map(String::as_str), Some("a"));
    let client = ClientId::new("c");
    let info = ConnectInfo {
        client_id: &client,
        username: Some("pi-1"),
        password: Some(secret.as_bytes()),
        peer: peer(),
        transport: TransportKind::Tcp,
        cert_sha256: None,
    };
    assert!(reopened.authenticate(info).await.is_ok());
    assert!(reopened.check_admin(Some(&admin), Scope::Write).is_ok());
    let export = reopened.export();
    assert_eq!((export.devices.len(), export.credentials.len()), (1, 1));
    f.store.close().await;
}

#[tokio::test]
async fn import_restores_an_export_into_an_empty_registry() {
    let f = fixture().await;
    device(&f, "pi-1").await;
    let (_, secret) = token(&f, "pi-1").await;
    let export = f.registry.export();
    let g = fixture().await;
    let summary = g.registry.import(&g.admin, export.clone()).await.unwrap();
    assert_eq!((summary.devices, summary.credentials), (1, 1));
    assert_eq!(g.registry.export(), export);
    assert!(
        connect(&g, "c", Some("pi-1"), Some(secret.as_bytes())).await.is_ok(),
        "hashes travel, secrets work"
    );
    // a credential of an unknown device refuses the whole import
    let mut bad = export;
    bad.devices.clear();
    bad.credentials[0].device = id("ghost");
    assert!(matches!(g.registry.import(&g.admin, bad).await, Err(RegistryError::Invalid(_))));
}
