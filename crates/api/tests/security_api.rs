//! Who may do what over HTTP, against a real SQLite store and registry: admin tokens and
//! their scopes, device CRUD and its refusals, device credentials, device ingest with
//! tokens, `X-API-Key` and device-signed JWTs (RS256, ES256), ACL rules, the IP
//! allowlists, rate limits, the audit log, and HTTPS (a real server, real TLS client) with
//! its redirect and its config refusals; with the `acme` feature, an ACME server whose CA
//! cannot be reached (no CA is reachable from the tests, so no certificate is obtained).
//!
//! Most tests call the router in-process with the client address set as axum's
//! `ConnectInfo`; the HTTPS tests and one allowlist test go through real sockets.

mod common;

use common::Answer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use jsonwebtoken::{EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{Value, json};
use telehub_api::{AcmeConfig, BindError, Config, Server};
use telehub_hub::ingest::{self, Ingest};
use telehub_hub::registry::{Actor, AuthConfig, RateConfig, Registry, Scope};
use telehub_store::Store;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// The address in-process requests come from unless a test says otherwise.
const PEER: &str = "127.0.0.1:40000";

/// A store, its ingest writer and registry running, and the router over them.
struct Hub {
    router: Router,
    store: Arc<Store>,
    ingest: Ingest,
    registry: Registry<Store>,
    /// A token with the `admin` scope.
    admin: String,
    stop: CancellationToken,
    tasks: TaskTracker,
    dir: tempfile::TempDir,
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    ApiKey(&'a str),
}

impl Hub {
    async fn start() -> Self {
        Self::start_with(AuthConfig::default()).await
    }

    async fn start_with(auth: AuthConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&telehub_store::Config::default(), dir.path()).await.unwrap());
        let ingest_config = ingest::Config::default();
        let mappings = ingest_config.mappings.clone();
        let (ingest, writer) = Ingest::new(ingest_config, store.clone());
        let registry = Registry::open(store.clone(), auth, mappings).await.unwrap();
        let (_, admin) =
            registry.create_token(&Actor::system(), "root".into(), vec![Scope::Admin], None).await.unwrap();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(writer.run(stop.clone()));
        tasks.spawn(registry.clone().run(stop.clone()));
        let router = telehub_api::router(Config::default(), store.clone(), ingest.clone(), registry.clone());
        Self { router, store, ingest, registry, admin, stop, tasks, dir }
    }

    async fn call_from(
        &self,
        peer: &str,
        method: Method,
        uri: &str,
        auth: Auth<'_>,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        request = match auth {
            Auth::None => request,
            Auth::Bearer(token) => request.header(header::AUTHORIZATION, format!("Bearer {token}")),
            Auth::ApiKey(token) => request.header("x-api-key", token),
        };
        let body = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Answer { status, headers, body }
    }

    async fn call(&self, method: Method, uri: &str, auth: Auth<'_>, body: Option<&Value>) -> Answer {
        self.call_from(PEER, method, uri, auth, body).await
    }

    /// An admin-scope request.
    async fn admin(&self, method: Method, uri: &str, body: Option<&Value>) -> Answer {
        self.call(method, uri, Auth::Bearer(&self.admin), body).await
    }

    /// A token with `scopes`, made through the API.
    async fn token(&self, scopes: &[&str]) -> String {
        let a =
            self.admin(Method::POST, "/api/v1/tokens", Some(&json!({"name": "t", "scopes": scopes}))).await;
        a.assert_status(StatusCode::CREATED)["token"].as_str().unwrap().to_owned()
    }

    async fn device(&self, id: &str) {
        let a = self.admin(Method::POST, "/api/v1/devices", Some(&json!({"id": id}))).await;
        a.assert_status(StatusCode::CREATED);
    }

    /// A registered device with a token credential; returns the token.
    async fn device_with_token(&self, id: &str) -> String {
        self.device(id).await;
        let uri = format!("/api/v1/devices/{id}/credentials");
        let a = self.admin(Method::POST, &uri, Some(&json!({"kind": "token"}))).await;
        a.assert_status(StatusCode::CREATED)["token"].as_str().unwrap().to_owned()
    }

    /// `{"v": 1}` to `device`'s telemetry, from `peer`.
    async fn send(&self, peer: &str, device: &str, auth: Auth<'_>) -> Answer {
        self.call_from(peer, Method::POST, &telemetry(device), auth, Some(&json!({"v": 1}))).await
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let a = self.admin(Method::GET, &format!("/api/v1/audit?{query}"), None).await;
        a.assert_status(StatusCode::OK)["events"].as_array().unwrap().clone()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn telemetry(device: &str) -> String {
    format!("/api/v1/devices/{device}/telemetry")
}

fn now_s() -> i64 {
    telehub_hub::timestamp::now().0 / 1000
}

// ---- admin tokens and scopes ----------------------------------------------------------

#[tokio::test]
async fn admin_routes_need_a_token_with_the_right_scope() {
    let hub = Hub::start().await;
    let read = hub.token(&["read"]).await;
    let write = hub.token(&["write"]).await;

    for (method, uri) in [
        (Method::GET, "/api/v1/devices"),
        (Method::POST, "/api/v1/devices"),
        (Method::GET, "/api/v1/audit"),
        (Method::GET, "/api/v1/tokens"),
        (Method::GET, "/api/v1/devices/d/telemetry"),
        (Method::GET, "/api/v1/no-such-route"),
    ] {
        let a = hub.call(method.clone(), uri, Auth::None, None).await;
        a.assert_problem(StatusCode::UNAUTHORIZED, "an admin token is required");
        let a = hub.call(method, uri, Auth::Bearer("tha_not-a-token"), None).await;
        a.assert_problem(StatusCode::UNAUTHORIZED, "not valid");
    }
    // a device's token is no admin token
    let device_token = hub.device_with_token("d1").await;
    let a = hub.call(Method::GET, "/api/v1/devices", Auth::Bearer(&device_token), None).await;
    a.assert_problem(StatusCode::UNAUTHORIZED, "not valid");

    // read: GETs only
    let a = hub.call(Method::GET, "/api/v1/devices", Auth::Bearer(&read), None).await;
    assert_eq!(a.assert_status(StatusCode::OK)["devices"][0]["id"], "d1");
    let a = hub.call(Method::POST, "/api/v1/devices", Auth::Bearer(&read), Some(&json!({"id": "x"}))).await;
    a.assert_problem(StatusCode::FORBIDDEN, "lacks the write scope");
    let a = hub.call(Method::DELETE, "/api/v1/devices/d1", Auth::Bearer(&read), None).await;
    a.assert_problem(StatusCode::FORBIDDEN, "lacks the write scope");
    // write: changes, but not tokens
    let a = hub.call(Method::POST, "/api/v1/devices", Auth::Bearer(&write), Some(&json!({"id": "x"}))).await;
    a.assert_status(StatusCode::CREATED);
    let a = hub.call(Method::GET, "/api/v1/tokens", Auth::Bearer(&write), None).await;
    a.assert_problem(StatusCode::FORBIDDEN, "lacks the admin scope");
    let a = hub.call(Method::GET, "/api/v1/tokens", Auth::Bearer(&read), None).await;
    a.assert_problem(StatusCode::FORBIDDEN, "lacks the admin scope");

    // health and metrics stay open
    for uri in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(hub.call(Method::GET, uri, Auth::None, None).await.status, StatusCode::OK, "{uri}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn tokens_are_made_listed_without_secrets_and_revoked() {
    let hub = Hub::start().await;
    let body = json!({"name": "grafana", "scopes": ["read"], "expires_at": "2999-01-01T00:00:00Z"});
    let a = hub.admin(Method::POST, "/api/v1/tokens", Some(&body)).await;
    let made = a.assert_status(StatusCode::CREATED);
    let (id, secret) = (made["id"].as_str().unwrap(), made["token"].as_str().unwrap());
    assert_eq!(a.header(header::LOCATION), format!("/api/v1/tokens/{id}"));
    assert_eq!(made["scopes"], json!(["read"]));
    assert_eq!(made["expires_at"], "2999-01-01T00:00:00Z");
    assert!(made["created_at"].as_str().unwrap().ends_with('Z'));

    let list = hub.admin(Method::GET, "/api/v1/tokens", None).await;
    let listed = list.assert_status(StatusCode::OK);
    assert!(listed["tokens"].as_array().unwrap().iter().any(|t| t["id"] == id), "{listed}");
    assert!(!list.text().contains(secret), "the secret is shown once only");

    let a = hub.call(Method::GET, "/api/v1/devices", Auth::Bearer(secret), None).await;
    a.assert_status(StatusCode::OK);
    let a = hub.admin(Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await;
    a.assert_status(StatusCode::NO_CONTENT);
    let a = hub.call(Method::GET, "/api/v1/devices", Auth::Bearer(secret), None).await;
    a.assert_problem(StatusCode::UNAUTHORIZED, "not valid");
    let a = hub.admin(Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await;
    a.assert_problem(StatusCode::NOT_FOUND, "no token");

    // refused bodies
    for (body, needle) in [
        (json!({"name": "x", "scopes": []}), "at least one scope"),
        (json!({"name": "x", "scopes": ["root"]}), "unknown variant `root`"),
        (json!({"scopes": ["read"]}), "missing field `name`"),
        (json!({"name": "x", "scopes": ["read"], "expires_at": "soon"}), "`expires_at`"),
    ] {
        let a = hub.admin(Method::POST, "/api/v1/tokens", Some(&body)).await;
        a.assert_problem(StatusCode::BAD_REQUEST, needle);
    }
    hub.stop().await;
}

// ---- devices ----------------------------------------------------------------------------

#[tokio::test]
async fn device_crud_with_201_404_409_and_400() {
    let hub = Hub::start().await;
    let body =
        json!({"id": "pump 1", "name": "Pump", "tags": {"site": "plant-7"}, "allowed_ips": ["10.0.0.0/8"]});
    let a = hub.admin(Method::POST, "/api/v1/devices", Some(&body)).await;
    let made = a.assert_status(StatusCode::CREATED);
    assert_eq!(a.header(header::LOCATION), "/api/v1/devices/pump%201");
    assert_eq!(made["id"], "pump 1");
    assert_eq!(made["name"], "Pump");
    assert_eq!(made["tags"], json!({"site": "plant-7"}));
    assert_eq!(made["allowed_ips"], json!(["10.0.0.0/8"]));
    assert_eq!((made["registered"].clone(), made["connected"].clone()), (json!(true), json!(false)));
    assert!(made["created_at"].as_str().unwrap().ends_with('Z'), "{made}");

    let got = hub.admin(Method::GET, "/api/v1/devices/pump%201", None).await.assert_status(StatusCode::OK);
    assert_eq!(got["name"], "Pump");
    // taken, bad ids, bad bodies
    let a = hub.admin(Method::POST, "/api/v1/devices", Some(&json!({"id": "pump 1"}))).await;
    a.assert_problem(StatusCode::CONFLICT, "exists already");
    for (body, needle) in [
        (json!({"id": "a/b"}), "device id \"a/b\""),
        (json!({"id": ""}), "device id is empty"),
        (json!({"id": "x", "colour": "red"}), "unknown field `colour`"),
        (json!({"name": "no id"}), "missing field `id`"),
        (json!({"id": "x", "allowed_ips": ["10.0.0.300/8"]}), "invalid"),
        (json!(["x"]), "expected a JSON object, found an array"),
    ] {
        let a = hub.admin(Method::POST, "/api/v1/devices", Some(&body)).await;
        a.assert_problem(StatusCode::BAD_REQUEST, needle);
    }
    let a = hub.call(Method::POST, "/api/v1/devices", Auth::Bearer(&hub.admin), None).await;
    a.assert_problem(StatusCode::BAD_REQUEST, "the body is empty");
    hub.admin(Method::GET, "/api/v1/devices/ghost", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no device ghost");
    hub.admin(Method::GET, "/api/v1/devices/a%2Fb", None)
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid device id");

    // PATCH: present fields replace, null clears the name
    let patch = json!({"name": null, "tags": {"site": "plant-8", "line": "2"}});
    let a = hub.admin(Method::PATCH, "/api/v1/devices/pump%201", Some(&patch)).await;
    let patched = a.assert_status(StatusCode::OK);
    assert!(patched.get("name").is_none(), "{patched}");
    assert_eq!(patched["tags"], json!({"site": "plant-8", "line": "2"}));
    assert_eq!(patched["allowed_ips"], json!(["10.0.0.0/8"]), "absent fields stay");
    let a = hub.admin(Method::PATCH, "/api/v1/devices/ghost", Some(&json!({"name": "x"}))).await;
    a.assert_problem(StatusCode::NOT_FOUND, "no device ghost");
    let a = hub.admin(Method::PATCH, "/api/v1/devices/pump%201", Some(&json!({"id": "other"}))).await;
    a.assert_problem(StatusCode::BAD_REQUEST, "unknown field `id`");

    // DELETE: 204, then gone
    let a = hub.admin(Method::DELETE, "/api/v1/devices/pump%201", None).await;
    a.assert_status(StatusCode::NO_CONTENT);
    hub.admin(Method::GET, "/api/v1/devices/pump%201", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no device");
    hub.admin(Method::DELETE, "/api/v1/devices/pump%201", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no device");
    hub.stop().await;
}

#[tokio::test]
async fn device_list_merges_registry_and_telemetry_and_filters() {
    let hub = Hub::start().await;
    for (id, site) in [("a", "north"), ("b", "south"), ("c", "north")] {
        let body = json!({"id": id, "tags": {"site": site}});
        hub.admin(Method::POST, "/api/v1/devices", Some(&body)).await.assert_status(StatusCode::CREATED);
    }
    // `a` and an unregistered `z` send telemetry (the admin token may ingest for any)
    for device in ["a", "z"] {
        let a = hub.admin(Method::POST, &telemetry(device), Some(&json!({"t": 1}))).await;
        a.assert_status(StatusCode::OK);
    }
    let ids = |v: Value| -> Vec<String> {
        v["devices"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect()
    };
    let all = hub.admin(Method::GET, "/api/v1/devices", None).await.assert_status(StatusCode::OK);
    assert_eq!(ids(all.clone()), ["a", "b", "c", "z"]);
    let a = &all["devices"][0];
    assert_eq!(a["metrics"], json!(["t"]), "store fields kept for registered devices: {a}");
    assert!(a["first_seen"].as_str().unwrap().ends_with('Z'));
    let z = &all["devices"][3];
    assert_eq!((z["registered"].clone(), z["metrics"].clone()), (json!(false), json!(["t"])));

    let get = async |q: &str| hub.admin(Method::GET, &format!("/api/v1/devices?{q}"), None).await;
    assert_eq!(ids(get("tag=site:north").await.assert_status(StatusCode::OK)), ["a", "c"]);
    assert_eq!(ids(get("tag=site:north&tag=site:north").await.json()), ["a", "c"]);
    assert_eq!(ids(get("connected=true").await.json()), Vec::<String>::new());
    assert_eq!(ids(get("connected=false&tag=site:south").await.json()), ["b"]);
    assert_eq!(ids(get("seen_since=2000-01-01T00:00:00Z").await.json()), ["a", "z"]);
    assert_eq!(ids(get("seen_since=2999-01-01T00:00:00Z").await.json()), Vec::<String>::new());
    for (q, needle) in [
        ("tag=site", "`tag`: expected key:value"),
        ("tag=site:a&tag=site:b", "two different values"),
        ("connected=yes", "`connected`: expected true or false"),
        ("seen_since=yesterday", "`seen_since`"),
        ("colour=red", "unknown parameter `colour`"),
    ] {
        get(q).await.assert_problem(StatusCode::BAD_REQUEST, needle);
    }
    // a single device: registered or only known from its telemetry
    let z = hub.admin(Method::GET, "/api/v1/devices/z", None).await.assert_status(StatusCode::OK);
    assert_eq!((z["registered"].clone(), z["metrics"].clone()), (json!(false), json!(["t"])));
    assert!(z["last_seen"].as_str().unwrap().ends_with('Z'));
    hub.stop().await;
}

#[tokio::test]
async fn export_then_import_restores_devices_credentials_and_rules() {
    let source = Hub::start().await;
    let token = source.device_with_token("exp-1").await;
    let rule = json!({"effect": "allow", "action": "publish", "filter": "shared/#", "device": "exp-1"});
    source.admin(Method::POST, "/api/v1/acl", Some(&rule)).await.assert_status(StatusCode::CREATED);
    let export =
        source.admin(Method::GET, "/api/v1/devices/export", None).await.assert_status(StatusCode::OK);
    assert_eq!(export["devices"][0]["id"], "exp-1");
    assert!(!export.to_string().contains(&token), "an export holds verifiers, never secrets");

    let target = Hub::start().await;
    let a = target.admin(Method::POST, "/api/v1/devices/import", Some(&export)).await;
    assert_eq!(a.assert_status(StatusCode::OK), json!({"devices": 1, "credentials": 1, "acl": 1}));
    // the same token works on the other hub
    let a =
        target.call(Method::POST, &telemetry("exp-1"), Auth::Bearer(&token), Some(&json!({"v": 1}))).await;
    a.assert_status(StatusCode::OK);
    let a = target.admin(Method::POST, "/api/v1/devices/import", Some(&json!({"devices": 5}))).await;
    a.assert_problem(StatusCode::BAD_REQUEST, "invalid body");
    let bad = json!({"credentials": [export["credentials"][0].clone()], "devices": []});
    let fresh = Hub::start().await;
    let a = fresh.admin(Method::POST, "/api/v1/devices/import", Some(&bad)).await;
    a.assert_problem(StatusCode::BAD_REQUEST, "neither imported nor registered");
    source.stop().await;
    target.stop().await;
    fresh.stop().await;
}

// ---- credentials ------------------------------------------------------------------------

#[tokio::test]
async fn credentials_are_shown_once_listed_without_secrets_and_revoked() {
    let hub = Hub::start().await;
    hub.device("d").await;
    let a = hub
        .admin(Method::POST, "/api/v1/devices/d/credentials", Some(&json!({"kind": "token", "name": "main"})))
        .await;
    let made = a.assert_status(StatusCode::CREATED);
    let (id, token) = (made["id"].as_str().unwrap(), made["token"].as_str().unwrap().to_owned());
    assert_eq!(a.header(header::LOCATION), format!("/api/v1/devices/d/credentials/{id}"));
    assert_eq!((made["kind"].clone(), made["device"].clone()), (json!("token"), json!("d")));

    let pw =
        json!({"kind": "password", "secret": "correct horse battery", "expires_at": 32_503_680_000_000_i64});
    let a = hub.admin(Method::POST, "/api/v1/devices/d/credentials", Some(&pw)).await;
    let made_pw = a.assert_status(StatusCode::CREATED);
    assert!(made_pw.get("token").is_none(), "nothing generated: {made_pw}");
    assert_eq!(made_pw["expires_at"], "3000-01-01T00:00:00Z");

    let list = hub.admin(Method::GET, "/api/v1/devices/d/credentials", None).await;
    let listed = list.assert_status(StatusCode::OK);
    assert_eq!(listed["credentials"].as_array().unwrap().len(), 2);
    assert!(!list.text().contains(&token), "the token is never listed");
    assert!(!list.text().contains("correct horse"), "nor the password");

    // the token works until it is deleted
    let send = |t: String| {
        let hub = &hub;
        async move { hub.call(Method::POST, &telemetry("d"), Auth::Bearer(&t), Some(&json!({"v": 1}))).await }
    };
    send(token.clone()).await.assert_status(StatusCode::OK);
    let a = hub.admin(Method::DELETE, &format!("/api/v1/devices/d/credentials/{id}"), None).await;
    a.assert_status(StatusCode::NO_CONTENT);
    send(token).await.assert_problem(StatusCode::UNAUTHORIZED, "not valid");
    let a = hub.admin(Method::DELETE, &format!("/api/v1/devices/d/credentials/{id}"), None).await;
    a.assert_problem(StatusCode::NOT_FOUND, "no credential");

    for (body, needle) in [
        (json!({"kind": "password", "secret": "short"}), "at least 8 characters"),
        (json!({"kind": "token", "secret": "chosen"}), "a token is generated by telehub"),
        (json!({"kind": "jwt_rs256"}), "public_key"),
        (json!({"kind": "jwt_rs256", "public_key": "not a key"}), ""),
        (json!({"kind": "x509", "fingerprint": "abc"}), "64 hex digits"),
        (json!({"kind": "kerberos"}), "unknown variant `kerberos`"),
    ] {
        let a = hub.admin(Method::POST, "/api/v1/devices/d/credentials", Some(&body)).await;
        a.assert_problem(StatusCode::BAD_REQUEST, needle);
    }
    let a =
        hub.admin(Method::POST, "/api/v1/devices/ghost/credentials", Some(&json!({"kind": "token"}))).await;
    a.assert_problem(StatusCode::NOT_FOUND, "no device ghost");
    hub.admin(Method::GET, "/api/v1/devices/ghost/credentials", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no device ghost");
    hub.stop().await;
}

// ---- device ingest ----------------------------------------------------------------------

#[tokio::test]
async fn device_ingest_with_its_token_bearer_or_api_key_and_the_refusals() {
    let hub = Hub::start().await;
    let a_token = hub.device_with_token("a").await;
    let b_token = hub.device_with_token("b").await;
    let body = json!({"t": 21.5});

    // its own token, as Bearer or X-API-Key, on both endpoints
    let a = hub.call(Method::POST, &telemetry("a"), Auth::Bearer(&a_token), Some(&body)).await;
    assert_eq!(a.assert_status(StatusCode::OK), json!({"records": 1, "points": 1}));
    let a = hub.call(Method::POST, &telemetry("a"), Auth::ApiKey(&a_token), Some(&body)).await;
    a.assert_status(StatusCode::OK);
    let data = json!({"device_id": "a", "t": 22});
    let a = hub.call(Method::POST, "/data", Auth::ApiKey(&a_token), Some(&data)).await;
    assert_eq!(a.assert_status(StatusCode::OK), json!({"status": "success"}));
    // last seen by HTTP ingest
    let got = hub.admin(Method::GET, "/api/v1/devices/a", None).await.assert_status(StatusCode::OK);
    assert!(got["last_seen"].as_str().unwrap().ends_with('Z'), "{got}");

    // no credentials, wrong ones: 401
    let a = hub.call(Method::POST, &telemetry("a"), Auth::None, Some(&body)).await;
    a.assert_problem(StatusCode::UNAUTHORIZED, "device credentials are required");
    let a = hub.call(Method::POST, &telemetry("a"), Auth::Bearer("thd_wrong"), Some(&body)).await;
    a.assert_problem(StatusCode::UNAUTHORIZED, "not valid");
    let a = hub.call(Method::POST, &telemetry("a"), Auth::ApiKey("wrong"), Some(&body)).await;
    a.assert_problem(StatusCode::UNAUTHORIZED, "not valid");
    // /data answers in its own shape, with the same statuses
    let a = hub.call(Method::POST, "/data", Auth::None, Some(&data)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.json()["error"].as_str().unwrap().contains("device credentials are required"));
    assert!(a.header(header::WWW_AUTHENTICATE).starts_with("Bearer"));

    // another device's token: 403, on the URL's device and on the body's
    let a = hub.call(Method::POST, &telemetry("a"), Auth::Bearer(&b_token), Some(&body)).await;
    a.assert_problem(StatusCode::FORBIDDEN, "device:b may not send telemetry for device a");
    let a = hub.call(Method::POST, "/data", Auth::Bearer(&b_token), Some(&data)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text());
    assert_eq!(a.json(), json!({"error": "device:b may not send telemetry for device a"}));
    // an admin token: `write` may ingest for any device, `read` may not
    let a = hub.call(Method::POST, &telemetry("a"), Auth::Bearer(&hub.admin), Some(&body)).await;
    a.assert_status(StatusCode::OK);
    let read = hub.token(&["read"]).await;
    let a = hub.call(Method::POST, &telemetry("a"), Auth::Bearer(&read), Some(&body)).await;
    a.assert_problem(StatusCode::FORBIDDEN, "lacks the write scope");
    // a device token does not read
    let a = hub.call(Method::GET, &telemetry("a"), Auth::Bearer(&a_token), None).await;
    a.assert_problem(StatusCode::UNAUTHORIZED, "not valid");

    // what was refused was not stored: 2 + 1 from `a` itself, 1 from the admin
    let page = hub.admin(Method::GET, &telemetry("a"), None).await.assert_status(StatusCode::OK);
    assert_eq!(page["points"].as_array().unwrap().len(), 4, "{page}");

    // a deleted device's token stops working
    hub.admin(Method::DELETE, "/api/v1/devices/a", None).await.assert_status(StatusCode::NO_CONTENT);
    let a = hub.call(Method::POST, &telemetry("a"), Auth::Bearer(&a_token), Some(&body)).await;
    a.assert_problem(StatusCode::UNAUTHORIZED, "not valid");
    hub.stop().await;
}

/// A JWT signed with `key` (PKCS #8 PEM from rcgen) for `alg`.
fn sign(alg: jsonwebtoken::Algorithm, key: &KeyPair, claims: &Value) -> String {
    let pem = key.serialize_pem();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

#[tokio::test]
async fn device_signed_jwts_rs256_and_es256_as_bearer() {
    let hub = Hub::start().await;
    let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    for (device, kind, key) in [("rs", "jwt_rs256", &rsa), ("es", "jwt_es256", &ec)] {
        hub.device(device).await;
        let body = json!({"kind": kind, "public_key": key.public_key_pem()});
        let uri = format!("/api/v1/devices/{device}/credentials");
        let made = hub.admin(Method::POST, &uri, Some(&body)).await.assert_status(StatusCode::CREATED);
        assert!(made.get("token").is_none());
        assert!(made["public"].as_str().unwrap().contains("PUBLIC KEY"), "{made}");
    }
    hub.device("other").await;
    let now = now_s();
    let claims = |sub: Option<&str>, aud: &str, iat: i64, exp: i64| {
        let mut c = json!({"aud": aud, "iat": iat, "exp": exp});
        if let Some(sub) = sub {
            c["sub"] = json!(sub);
        }
        c
    };
    let rs = |c: &Value| sign(jsonwebtoken::Algorithm::RS256, &rsa, c);
    let es = |c: &Value| sign(jsonwebtoken::Algorithm::ES256, &ec, c);
    let post = |device: &'static str, jwt: String| {
        let hub = &hub;
        async move { hub.call(Method::POST, &telemetry(device), Auth::Bearer(&jwt), Some(&json!({"v": 1}))).await }
    };
    // right key, `sub` or the URL's device
    post("rs", rs(&claims(Some("rs"), "telehub", now, now + 600))).await.assert_status(StatusCode::OK);
    post("rs", rs(&claims(None, "telehub", now, now + 600))).await.assert_status(StatusCode::OK);
    post("es", es(&claims(Some("es"), "telehub", now, now + 600))).await.assert_status(StatusCode::OK);
    // refused: wrong audience, expired, not yet valid, too long-lived, wrong key
    for jwt in [
        rs(&claims(Some("rs"), "someone-else", now, now + 600)),
        rs(&claims(Some("rs"), "telehub", now - 7200, now - 3600)),
        rs(&claims(Some("rs"), "telehub", now + 3600, now + 7200)),
        rs(&claims(Some("rs"), "telehub", now, now + 3 * 86_400)),
        es(&claims(Some("rs"), "telehub", now, now + 600)),
    ] {
        post("rs", jwt).await.assert_problem(StatusCode::UNAUTHORIZED, "not valid");
    }
    // a valid JWT of `rs` does not ingest for `other`
    let a = post("other", rs(&claims(Some("rs"), "telehub", now, now + 600))).await;
    a.assert_problem(StatusCode::FORBIDDEN, "device:rs may not send telemetry for device other");
    hub.stop().await;
}

#[tokio::test]
async fn acl_rules_let_a_device_ingest_for_another_until_deleted() {
    let hub = Hub::start().await;
    let gw = hub.device_with_token("gateway").await;
    hub.device("leaf").await;
    let send = || hub.send(PEER, "leaf", Auth::Bearer(&gw));
    send().await.assert_problem(StatusCode::FORBIDDEN, "may not send telemetry for device leaf");

    let rule = json!({"effect": "allow", "action": "publish", "filter": "devices/leaf/telemetry", "device": "gateway"});
    let a = hub.admin(Method::POST, "/api/v1/acl", Some(&rule)).await;
    let made = a.assert_status(StatusCode::CREATED);
    let id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(a.header(header::LOCATION), format!("/api/v1/acl/{id}"));
    assert_eq!(made["filter"], "devices/leaf/telemetry");
    send().await.assert_status(StatusCode::OK);
    let rules = hub.admin(Method::GET, "/api/v1/acl", None).await.assert_status(StatusCode::OK);
    assert_eq!(rules["rules"][0]["id"], id.as_str());

    hub.admin(Method::DELETE, &format!("/api/v1/acl/{id}"), None).await.assert_status(StatusCode::NO_CONTENT);
    send().await.assert_problem(StatusCode::FORBIDDEN, "may not send telemetry");
    hub.admin(Method::DELETE, &format!("/api/v1/acl/{id}"), None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no rule");
    for body in [
        json!({"effect": "allow", "action": "publish", "filter": "a/#/b"}),
        json!({"effect": "maybe", "action": "publish", "filter": "a"}),
        json!({"effect": "allow", "action": "publish"}),
    ] {
        let a = hub.admin(Method::POST, "/api/v1/acl", Some(&body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text());
    }
    hub.stop().await;
}

#[tokio::test]
async fn anonymous_ingest_only_when_allowed_and_never_for_the_admin_api() {
    let hub = Hub::start_with(AuthConfig { allow_anonymous: true, ..AuthConfig::default() }).await;
    let a = hub.call(Method::POST, "/data", Auth::None, Some(&json!({"device_id": "anon-1", "t": 1}))).await;
    assert_eq!(a.assert_status(StatusCode::OK), json!({"status": "success"}));
    let a = hub.call(Method::POST, &telemetry("anon-2"), Auth::None, Some(&json!({"t": 1}))).await;
    a.assert_status(StatusCode::OK);
    let a = hub.call(Method::GET, "/api/v1/devices", Auth::None, None).await;
    a.assert_problem(StatusCode::UNAUTHORIZED, "an admin token is required");
    hub.stop().await;
}

// ---- allowlists and rate limits ---------------------------------------------------------

#[tokio::test]
async fn off_list_addresses_get_403_globally_and_per_device() {
    let auth = AuthConfig { ip_allowlist: vec!["10.0.0.0/8".parse().unwrap()], ..AuthConfig::default() };
    let hub = Hub::start_with(auth).await;
    let (inside, outside) = ("10.1.2.3:5000", "192.168.1.9:5000");
    let a = hub.call_from(outside, Method::GET, "/api/v1/devices", Auth::Bearer(&hub.admin), None).await;
    a.assert_problem(StatusCode::FORBIDDEN, "192.168.1.9 is not allowed");
    let a = hub.call_from(outside, Method::GET, "/healthz", Auth::None, None).await;
    a.assert_problem(StatusCode::FORBIDDEN, "not allowed");
    let a = hub.call_from(outside, Method::POST, "/data", Auth::None, Some(&json!({"device_id": "x"}))).await;
    assert_eq!((a.status, a.json()["error"].is_string()), (StatusCode::FORBIDDEN, true));
    let a = hub.call_from(inside, Method::GET, "/api/v1/devices", Auth::Bearer(&hub.admin), None).await;
    a.assert_status(StatusCode::OK);

    // a device's own allowlist
    let body = json!({"id": "fixed", "allowed_ips": ["10.9.0.0/16"]});
    hub.call_from(inside, Method::POST, "/api/v1/devices", Auth::Bearer(&hub.admin), Some(&body))
        .await
        .assert_status(StatusCode::CREATED);
    let made = hub
        .call_from(
            inside,
            Method::POST,
            "/api/v1/devices/fixed/credentials",
            Auth::Bearer(&hub.admin),
            Some(&json!({"kind": "token"})),
        )
        .await
        .assert_status(StatusCode::CREATED);
    let token = made["token"].as_str().unwrap();
    let send = |from| hub.send(from, "fixed", Auth::Bearer(token));
    send("10.9.1.1:1").await.assert_status(StatusCode::OK);
    send(inside).await.assert_problem(StatusCode::FORBIDDEN, "the device may not connect from 10.1.2.3");

    // both refusals are in the audit log with the address
    let a = hub
        .call_from(inside, Method::GET, "/api/v1/audit?action=auth.http", Auth::Bearer(&hub.admin), None)
        .await;
    let events = a.assert_status(StatusCode::OK)["events"].as_array().unwrap().clone();
    let reasons: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["detail"]["reason"].as_str().unwrap(), e["remote"].as_str().unwrap()))
        .collect();
    assert!(reasons.contains(&("address not in the allowlist", "192.168.1.9")), "{events:?}");
    assert!(reasons.iter().any(|(r, ip)| r.contains("allowlist") && *ip == "10.1.2.3"), "{events:?}");
    hub.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_then_recover() {
    let rate = RateConfig {
        http_requests: 1,
        http_burst: 2,
        messages_per_device: 1,
        messages_burst: 2,
        ..RateConfig::default()
    };
    let hub = Hub::start_with(AuthConfig { rate, ..AuthConfig::default() }).await;
    // creating the device and its token spends the admin token's burst
    let token = hub.device_with_token("d").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // per admin token
    hub.admin(Method::GET, "/api/v1/devices", None).await.assert_status(StatusCode::OK);
    hub.admin(Method::GET, "/api/v1/devices", None).await.assert_status(StatusCode::OK);
    let a = hub.admin(Method::GET, "/api/v1/devices", None).await;
    a.assert_problem(StatusCode::TOO_MANY_REQUESTS, "retry after");
    let wait: u64 = a.header(header::RETRY_AFTER).parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    // other callers are not affected: per device (its messages), per address
    let send = || hub.send(PEER, "d", Auth::Bearer(&token));
    send().await.assert_status(StatusCode::OK);
    send().await.assert_status(StatusCode::OK);
    let a = send().await;
    a.assert_problem(StatusCode::TOO_MANY_REQUESTS, "retry after");
    assert!(!a.header(header::RETRY_AFTER).is_empty());
    hub.call(Method::GET, "/healthz", Auth::None, None).await.assert_status(StatusCode::OK);

    tokio::time::sleep(Duration::from_secs(wait)).await;
    hub.admin(Method::GET, "/api/v1/devices", None).await.assert_status(StatusCode::OK);
    send().await.assert_status(StatusCode::OK);

    // failed logins count against the address
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let a =
            hub.call_from("10.0.0.7:1", Method::GET, "/api/v1/devices", Auth::Bearer("guess"), None).await;
        statuses.push(a.status.as_u16());
    }
    assert_eq!(statuses, [401, 401, 429, 429]);
    hub.stop().await;
}

// ---- audit -------------------------------------------------------------------------------

#[tokio::test]
async fn changes_and_refusals_are_audited_newest_first_without_secrets() {
    let hub = Hub::start().await;
    let token = hub.device_with_token("aud").await;
    hub.admin(Method::PATCH, "/api/v1/devices/aud", Some(&json!({"name": "Audited"})))
        .await
        .assert_status(StatusCode::OK);
    hub.call(Method::GET, "/api/v1/devices", Auth::Bearer("tha_guessed-secret"), None).await;
    hub.call(Method::POST, &telemetry("aud"), Auth::Bearer("thd_guessed-secret"), Some(&json!({"v": 1})))
        .await;
    hub.admin(Method::DELETE, "/api/v1/devices/aud", None).await.assert_status(StatusCode::NO_CONTENT);

    let all = hub.audit("").await;
    let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    let pos = |a: &str| actions.iter().position(|x| *x == a).unwrap_or_else(|| panic!("{a} in {actions:?}"));
    assert!(pos("device.delete") < pos("device.update"), "newest first: {actions:?}");
    assert!(pos("device.update") < pos("credential.create"));
    assert!(pos("credential.create") < pos("device.create"));
    let admin_id = hub.registry.tokens().into_iter().find(|t| t.name == "root").unwrap().id;
    let create = &all[pos("device.create")];
    assert_eq!(create["actor"], format!("token:{admin_id}"));
    assert_eq!(create["target"], "device:aud");
    assert_eq!(create["outcome"], "ok");
    assert!(create["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(create["remote"], "127.0.0.1", "the client's address");

    let denied = hub.audit("action=auth.http").await;
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(denied.iter().all(|e| e["outcome"] == "denied" && e["remote"] == "127.0.0.1"), "{denied:?}");
    let reasons: Vec<&str> = denied.iter().map(|e| e["detail"]["reason"].as_str().unwrap()).collect();
    assert!(reasons.contains(&"the admin token is not valid"), "{reasons:?}");
    assert!(reasons.contains(&"unknown token"), "{reasons:?}");
    let everything = serde_json::to_string(&all).unwrap();
    for secret in ["guessed-secret", &token, &hub.admin] {
        assert!(!everything.contains(secret), "a secret in the audit log");
    }

    // filters and pages
    let creates = hub.audit(&format!("action=device&actor=token:{admin_id}")).await;
    assert!(creates.iter().all(|e| e["action"].as_str().unwrap().starts_with("device.")));
    let page = hub.admin(Method::GET, "/api/v1/audit?limit=2", None).await.assert_status(StatusCode::OK);
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    let page2 = hub.admin(Method::GET, &format!("/api/v1/audit?limit=2&before={next}"), None).await.json();
    assert!(page2["events"][0]["id"].as_i64().unwrap() < page["events"][1]["id"].as_i64().unwrap());
    let a = hub.audit("target=device:aud").await;
    assert!(!a.is_empty() && a.iter().all(|e| e["target"] == "device:aud"));
    for (q, needle) in [
        ("limit=0", "`limit`"),
        ("before=x", "`before`"),
        ("from=never", "`from`"),
        ("who=me", "unknown field `who`"),
    ] {
        hub.admin(Method::GET, &format!("/api/v1/audit?{q}"), None)
            .await
            .assert_problem(StatusCode::BAD_REQUEST, needle);
    }
    hub.stop().await;
}

// ---- HTTPS, redirect, real sockets -----------------------------------------------------

/// A self-signed certificate for `localhost`, written as PEM files in `dir`.
fn certificate(dir: &std::path::Path) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.der().clone())
}

/// One HTTP/1.1 GET over `io` (closed after the answer): status, headers, body.
async fn get_over(
    mut io: impl AsyncRead + AsyncWrite + Unpin,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // a peer that closes without close_notify still sent the whole answer
    let _ = io.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn tls_connector(cert: rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

impl Hub {
    /// A real server over this hub's store, registry and ingest.
    async fn serve(&self, config: Config, tls: Option<(PathBuf, PathBuf)>) -> Result<Server, BindError> {
        Server::bind(config, self.store.clone(), self.ingest.clone(), self.registry.clone(), tls).await
    }
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn https_serves_the_api_and_skips_failed_handshakes() {
    let hub = Hub::start().await;
    let (cert, key, der) = certificate(hub.dir.path());
    let config = Config { listen: local(), https_listen: Some(local()), ..Config::default() };
    let server = hub.serve(config, Some((cert, key))).await.unwrap();
    let (http_addr, https_addr) = (server.local_addr(), server.https_addr().unwrap());
    hub.tasks.spawn(server.run(hub.stop.clone()));

    // a client that is not speaking TLS, and one that stalls, hold up nobody
    let mut garbage = TcpStream::connect(https_addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _stalled = TcpStream::connect(https_addr).await.unwrap();

    let connector = tls_connector(der);
    let tls = || async {
        let tcp = TcpStream::connect(https_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.unwrap()
    };
    let (status, _, body) = get_over(tls().await, "localhost", "/api/v1/devices", Some(&hub.admin)).await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"devices": []})));
    let (status, headers, _) = get_over(tls().await, "localhost", "/api/v1/devices", None).await;
    assert_eq!(status, 401);
    assert!(headers.iter().any(|(k, v)| k == "www-authenticate" && v.starts_with("Bearer")));
    // the plain listener serves too when there is no redirect
    let (status, _, _) =
        get_over(TcpStream::connect(http_addr).await.unwrap(), "localhost", "/healthz", None).await;
    assert_eq!(status, 200);
    // the audit log has the real client address
    let (status, _, _) = get_over(tls().await, "localhost", "/api/v1/tokens", Some("nope")).await;
    assert_eq!(status, 401);
    let denied = hub.audit("action=auth.http").await;
    assert!(
        denied.iter().any(|e| e["remote"] == "127.0.0.1" && e["target"] == "/api/v1/tokens"),
        "{denied:?}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn plain_http_redirects_to_https_with_308_when_asked() {
    let hub = Hub::start().await;
    let (cert, key, _) = certificate(hub.dir.path());
    let config =
        Config { listen: local(), https_listen: Some(local()), redirect_to_https: true, ..Config::default() };
    let server = hub.serve(config, Some((cert, key))).await.unwrap();
    let (http_addr, https_port) = (server.local_addr(), server.https_addr().unwrap().port());
    hub.tasks.spawn(server.run(hub.stop.clone()));
    let location = |headers: &[(String, String)]| {
        headers.iter().find(|(k, _)| k == "location").map(|(_, v)| v.clone()).unwrap_or_default()
    };
    for (host, path, expected) in [
        (
            "hub.example.com:8080",
            "/api/v1/devices?tag=a:b",
            format!("https://hub.example.com:{https_port}/api/v1/devices?tag=a:b"),
        ),
        ("hub.example.com", "/healthz", format!("https://hub.example.com:{https_port}/healthz")),
        ("[::1]:80", "/data", format!("https://[::1]:{https_port}/data")),
    ] {
        let (status, headers, _) =
            get_over(TcpStream::connect(http_addr).await.unwrap(), host, path, None).await;
        assert_eq!((status, location(&headers)), (308, expected));
    }
    let (status, _, _) = get_over(TcpStream::connect(http_addr).await.unwrap(), "bad host", "/", None).await;
    assert_eq!(status, 400);
    hub.stop().await;
}

#[tokio::test]
async fn the_ip_allowlist_sees_the_real_peer_address() {
    let auth = AuthConfig { ip_allowlist: vec!["10.0.0.0/8".parse().unwrap()], ..AuthConfig::default() };
    let hub = Hub::start_with(auth).await;
    let server = hub.serve(Config { listen: local(), ..Config::default() }, None).await.unwrap();
    let addr = server.local_addr();
    hub.tasks.spawn(server.run(hub.stop.clone()));
    let (status, _, body) =
        get_over(TcpStream::connect(addr).await.unwrap(), "localhost", "/healthz", None).await;
    assert_eq!(status, 403);
    assert!(body.contains("127.0.0.1 is not allowed"), "{body}");
    hub.stop().await;
}

#[tokio::test]
async fn https_and_acme_settings_are_checked_at_bind() {
    let hub = Hub::start().await;
    let https = Config { listen: local(), https_listen: Some(local()), ..Config::default() };
    let e = hub.serve(https.clone(), None).await.err().unwrap();
    assert!(e.to_string().contains("`http.https_listen` needs a certificate"), "{e}");
    let missing = (hub.dir.path().join("none.pem"), hub.dir.path().join("none.key"));
    let e = hub.serve(https, Some(missing)).await.err().unwrap();
    assert!(
        e.to_string().contains("cannot read the HTTPS certificate") && e.to_string().contains("none.pem"),
        "{e}"
    );

    // [http.acme] parses from TOML and is validated in every build
    let toml = r#"
        listen = "127.0.0.1:0"
        https_listen = "127.0.0.1:0"
        [acme]
        domains = ["hub.example.com"]
        contact = "ops@example.com"
        cache_dir = "acme-cache"
        staging = true
    "#;
    let config: Config = toml::from_str(toml).unwrap();
    assert_eq!(
        config.acme,
        Some(AcmeConfig {
            domains: vec!["hub.example.com".into()],
            contact: "ops@example.com".into(),
            cache_dir: "acme-cache".into(),
            staging: true,
            directory: None,
            directory_ca: None,
        })
    );
    let cache_dir = hub.dir.path().join("acme-cache");
    let acme = AcmeConfig { cache_dir: cache_dir.clone(), ..config.acme.clone().unwrap() };
    let bound = hub.serve(Config { acme: Some(acme), ..config.clone() }, None).await;
    if cfg!(feature = "acme") {
        // bound (nothing is ordered until it runs), with its cache directory made
        assert!(bound.unwrap().acme_status().is_some());
        assert!(cache_dir.is_dir());
    } else {
        let e = bound.err().unwrap();
        assert!(
            e.to_string().contains("built without the acme feature: rebuild with --features acme"),
            "{e}"
        );
    }
    let bad = Config {
        acme: Some(AcmeConfig { domains: vec![], ..config.acme.clone().unwrap() }),
        ..config.clone()
    };
    let e = hub.serve(bad, None).await.err().unwrap();
    assert!(e.to_string().contains("`http.acme.domains`"), "{e}");
    let no_https = Config { https_listen: None, ..config };
    let e = hub.serve(no_https, None).await.err().unwrap();
    assert!(e.to_string().contains("`http.acme` needs `http.https_listen`"), "{e}");
    let e = toml::from_str::<Config>(
        "[acme]\ndomains = [\"a.example.com\"]\ncontact = \"a@b.example\"\ncache_dir = \"x\"\nemail = \"x\"\n",
    );
    assert!(e.unwrap_err().to_string().contains("unknown field `email`"));
    hub.stop().await;
}

/// `[http.acme]` pointed at a directory URL where nothing listens: the server starts,
/// serves plain HTTP, refuses HTTPS handshakes cleanly while it has no certificate
/// (challenge handshakes too: none is pending), caches the account key, reports the
/// failed order, and its renewal stops with the server.
#[cfg(feature = "acme")]
#[tokio::test]
async fn acme_with_an_unreachable_ca_serves_http_and_reports_the_failed_order() {
    let hub = Hub::start().await;
    let closed = std::net::TcpListener::bind(local()).unwrap().local_addr().unwrap();
    let cache_dir = hub.dir.path().join("acme");
    let acme = AcmeConfig {
        domains: vec!["hub.example.com".into()],
        contact: "ops@example.com".into(),
        cache_dir: cache_dir.clone(),
        staging: false,
        directory: Some(format!("https://{closed}/directory")),
        directory_ca: None,
    };
    let config =
        Config { listen: local(), https_listen: Some(local()), acme: Some(acme), ..Config::default() };
    let server = hub.serve(config, None).await.unwrap();
    let mut status = server.acme_status().unwrap();
    let (http_addr, https_addr) = (server.local_addr(), server.https_addr().unwrap());
    hub.tasks.spawn(server.run(hub.stop.clone()));

    let failed = tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.failures >= 1))
        .await
        .expect("no ACME order failure reported within 30 s")
        .unwrap()
        .clone();
    assert!(!failed.certificate && failed.ordered == 0, "{failed:?}");
    let error = failed.last_error.unwrap();
    assert!(error.starts_with("order: "), "{error}");
    let cached: Vec<String> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(cached.iter().any(|name| name.starts_with("cached_account_")), "{cached:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777, 0o700);
    }

    let healthz =
        async || get_over(TcpStream::connect(http_addr).await.unwrap(), "localhost", "/healthz", None).await;
    assert_eq!(healthz().await.0, 200);
    for alpn in [&b"http/1.1"[..], b"acme-tls/1"] {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        client.alpn_protocols = vec![alpn.to_vec()];
        let name = rustls::pki_types::ServerName::try_from("hub.example.com").unwrap();
        let tcp = TcpStream::connect(https_addr).await.unwrap();
        let handshake = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp).await;
        assert!(handshake.is_err(), "a handshake offering {alpn:?} succeeded without a certificate");
    }
    assert_eq!(healthz().await.0, 200);
    tokio::time::timeout(Duration::from_secs(10), hub.stop()).await.expect("the server did not stop");
}
