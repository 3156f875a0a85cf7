//! Commands and device state over HTTP, against a real SQLite store, registry and
//! in-process broker: create in every mode, list with filters and pages, get, cancel,
//! the device's long-poll and ack with its own token, the shadow with `If-Match`, and
//! the refusals (unknown device 404, bad bodies 400 naming the field, a full queue 429,
//! no token 401, another device's token 403, a stale version 409).

mod common;

use common::Answer;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use telehub_api::Config;
use telehub_hub::commands::{self, Commands};
use telehub_hub::events::Events;
use telehub_hub::ingest::{self, Ingest};
use telehub_hub::registry::{Actor, AuthConfig, Registry, Scope};
use telehub_store::Store;
use telehub_testkit::TestBroker;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

struct Hub {
    router: Router,
    admin: String,
    stop: CancellationToken,
    tasks: TaskTracker,
    _broker: TestBroker,
    _dir: tempfile::TempDir,
}

impl Hub {
    async fn start(config: commands::Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&telehub_store::Config::default(), dir.path()).await.unwrap());
        let ingest_config = ingest::Config::default();
        let mappings = ingest_config.mappings.clone();
        let (ingest, writer) = Ingest::new(ingest_config, store.clone());
        let registry = Registry::open(store.clone(), AuthConfig::default(), mappings).await.unwrap();
        let (_, admin) =
            registry.create_token(&Actor::system(), "root".into(), vec![Scope::Admin], None).await.unwrap();
        let broker = TestBroker::start_with_auth(TestBroker::config(), Arc::new(registry.clone())).await;
        let events = Events::new(64);
        let commands = Commands::new(config, store.clone(), registry.clone(), broker.control(), events);
        let (feed_tx, feed) = tokio::sync::mpsc::channel(1);
        drop(feed_tx);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(writer.run(stop.clone()));
        tasks.spawn(registry.clone().run(stop.clone()));
        tasks.spawn(commands.clone().run(feed, stop.clone()));
        let router = telehub_api::router_with_commands(Config::default(), store, ingest, registry, commands);
        Self { router, admin, stop, tasks, _broker: broker, _dir: dir }
    }

    async fn call(&self, method: Method, uri: &str, token: Option<&str>, body: Option<&Value>) -> Answer {
        self.call_with(method, uri, token, body, &[]).await
    }

    async fn call_with(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let body = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).unwrap();
        request.extensions_mut().insert(ConnectInfo("127.0.0.1:40000".parse::<SocketAddr>().unwrap()));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Answer { status, headers, body }
    }

    async fn admin(&self, method: Method, uri: &str, body: Option<&Value>) -> Answer {
        self.call(method, uri, Some(&self.admin.clone()), body).await
    }

    /// A registered device with a token credential; returns the token.
    async fn device(&self, id: &str) -> String {
        self.admin(Method::POST, "/api/v1/devices", Some(&json!({"id": id})))
            .await
            .assert_status(StatusCode::CREATED);
        let uri = format!("/api/v1/devices/{id}/credentials");
        let a = self.admin(Method::POST, &uri, Some(&json!({"kind": "token"}))).await;
        a.assert_status(StatusCode::CREATED)["token"].as_str().unwrap().to_owned()
    }

    async fn create(&self, device: &str, body: Value) -> Answer {
        self.admin(Method::POST, &format!("/api/v1/devices/{device}/commands"), Some(&body)).await
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[tokio::test]
async fn create_get_list_and_cancel() {
    let hub = Hub::start(commands::Config::default()).await;
    hub.device("d1").await;
    let a = hub.create("d1", json!({"payload": {"on": true}, "mode": "queued", "ttl": "10m"})).await;
    let first = a.assert_status(StatusCode::CREATED);
    let id = first["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("cmd_"), "{id}");
    assert_eq!(a.headers[header::LOCATION], format!("/api/v1/devices/d1/commands/{id}"));
    assert_eq!(
        (&first["state"], &first["mode"], &first["seq"]),
        (&json!("queued"), &json!("queued"), &json!(1))
    );
    assert_eq!(first["payload"], json!({"on": true}));
    assert!(first["timestamps"]["queued"].is_string() && first["expires_at"].is_string());
    // mode defaults to queued; a number ttl is seconds
    let second = hub.create("d1", json!({"payload": 2, "ttl": 60})).await.assert_status(StatusCode::CREATED);
    assert_eq!(second["mode"], json!("queued"));
    let lw = json!({"payload": {"heater": true}, "mode": "latest_wins", "key": "heater"});
    let old = hub.create("d1", lw.clone()).await.assert_status(StatusCode::CREATED);
    let new = hub.create("d1", lw).await.assert_status(StatusCode::CREATED);
    let f = hub
        .create("d1", json!({"payload": 1, "mode": "fire_and_forget"}))
        .await
        .assert_status(StatusCode::CREATED);
    assert_eq!((&f["state"], &f["reason"]), (&json!("failed"), &json!("device not connected")));

    let uri = format!("/api/v1/devices/d1/commands/{}", old["id"].as_str().unwrap());
    let one = hub.admin(Method::GET, &uri, None).await.assert_status(StatusCode::OK);
    assert_eq!((&one["state"], &one["reason"]), (&json!("cancelled"), &json!("superseded")));
    let list =
        hub.admin(Method::GET, "/api/v1/devices/d1/commands", None).await.assert_status(StatusCode::OK);
    let seqs: Vec<i64> =
        list["commands"].as_array().unwrap().iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [5, 4, 3, 2, 1], "newest first");
    let open = hub
        .admin(Method::GET, "/api/v1/devices/d1/commands?state=queued", None)
        .await
        .assert_status(StatusCode::OK);
    let ids: Vec<&str> =
        open["commands"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [new["id"].as_str().unwrap(), second["id"].as_str().unwrap(), id.as_str()]);
    let page = hub
        .admin(Method::GET, "/api/v1/devices/d1/commands?limit=2", None)
        .await
        .assert_status(StatusCode::OK);
    assert_eq!(page["next_before"], json!(4));
    let rest = hub.admin(Method::GET, "/api/v1/devices/d1/commands?limit=2&before=4", None).await;
    assert_eq!(rest.assert_status(StatusCode::OK)["commands"][0]["seq"], json!(3));
    let failed_or_cancelled =
        hub.admin(Method::GET, "/api/v1/devices/d1/commands?state=failed,cancelled", None);
    assert_eq!(
        failed_or_cancelled.await.assert_status(StatusCode::OK)["commands"].as_array().unwrap().len(),
        2
    );

    let uri = format!("/api/v1/devices/d1/commands/{id}");
    let cancelled = hub.admin(Method::DELETE, &uri, None).await.assert_status(StatusCode::OK);
    assert_eq!(cancelled["state"], json!("cancelled"));
    hub.admin(Method::DELETE, &uri, None).await.assert_problem(StatusCode::CONFLICT, "is cancelled");
    hub.admin(Method::GET, "/api/v1/devices/d1/commands/cmd_nope", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "cmd_nope");
    hub.stop().await;
}

#[tokio::test]
async fn refusals() {
    let hub = Hub::start(commands::Config { max_queued_per_device: 2, ..commands::Config::default() }).await;
    hub.device("d1").await;
    hub.create("ghost", json!({"payload": 1})).await.assert_problem(StatusCode::NOT_FOUND, "no device ghost");
    hub.admin(Method::GET, "/api/v1/devices/ghost/commands", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "ghost");
    hub.admin(Method::GET, "/api/v1/devices/ghost/state", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "ghost");
    for (body, field) in [
        (json!({}), "payload"),
        (json!({"payload": 1, "mode": "sometimes"}), "`mode`"),
        (json!({"payload": 1, "mode": "latest_wins"}), "`key`"),
        (json!({"payload": 1, "key": "k"}), "`key`"),
        (json!({"payload": 1, "ttl": "soon"}), "`ttl`"),
        (json!({"payload": 1, "ttl": "0s"}), "`ttl`"),
        (json!({"payload": 1, "topic": "a/#"}), "`topic`"),
        (json!({"payload": 1, "colour": "red"}), "colour"),
    ] {
        hub.create("d1", body).await.assert_problem(StatusCode::BAD_REQUEST, field);
    }
    let bad = hub.admin(Method::GET, "/api/v1/devices/d1/commands?state=done", None).await;
    bad.assert_problem(StatusCode::BAD_REQUEST, "`state`");
    hub.create("d1", json!({"payload": 1})).await.assert_status(StatusCode::CREATED);
    hub.create("d1", json!({"payload": 2})).await.assert_status(StatusCode::CREATED);
    hub.create("d1", json!({"payload": 3}))
        .await
        .assert_problem(StatusCode::TOO_MANY_REQUESTS, "2 open commands");
    // the admin API needs a token, and write for changes
    let none =
        hub.call(Method::POST, "/api/v1/devices/d1/commands", None, Some(&json!({"payload": 1}))).await;
    none.assert_status(StatusCode::UNAUTHORIZED);
    let read =
        hub.admin(Method::POST, "/api/v1/tokens", Some(&json!({"name": "r", "scopes": ["read"]}))).await;
    let read = read.assert_status(StatusCode::CREATED)["token"].as_str().unwrap().to_owned();
    let one = json!({"payload": 1});
    let denied = hub.call(Method::POST, "/api/v1/devices/d1/commands", Some(&read), Some(&one)).await;
    denied.assert_status(StatusCode::FORBIDDEN);
    hub.call(Method::GET, "/api/v1/devices/d1/commands", Some(&read), None)
        .await
        .assert_status(StatusCode::OK);
    hub.stop().await;
}

#[tokio::test]
async fn the_device_long_polls_and_acknowledges_with_its_own_token() {
    let hub = Hub::start(commands::Config::default()).await;
    let token = hub.device("h1").await;
    let other = hub.device("h2").await;
    let next = "/api/v1/devices/h1/commands/next?wait=100ms";
    hub.call(Method::GET, next, Some(&token), None).await.assert_status(StatusCode::NO_CONTENT);
    let cmd = hub.create("h1", json!({"payload": {"open": true}})).await.assert_status(StatusCode::CREATED);
    let id = cmd["id"].as_str().unwrap();
    hub.call(Method::GET, next, None, None).await.assert_status(StatusCode::UNAUTHORIZED);
    hub.call(Method::GET, next, Some(&other), None).await.assert_problem(StatusCode::FORBIDDEN, "device:h2");
    let got = hub.call(Method::GET, next, Some(&token), None).await.assert_status(StatusCode::OK);
    assert_eq!(
        (got["id"].as_str(), &got["state"], &got["payload"]),
        (Some(id), &json!("sent"), &json!({"open": true}))
    );
    hub.call(Method::GET, next, Some(&token), None).await.assert_status(StatusCode::NO_CONTENT);
    let bad_wait = hub.call(Method::GET, "/api/v1/devices/h1/commands/next?wait=later", Some(&token), None);
    bad_wait.await.assert_problem(StatusCode::BAD_REQUEST, "`wait`");

    let ack = format!("/api/v1/devices/h1/commands/{id}/ack");
    let body = json!({"status": "succeeded", "result": {"opened_at": 12}});
    hub.call(Method::POST, &ack, Some(&other), Some(&body)).await.assert_status(StatusCode::FORBIDDEN);
    let bad = hub.call(Method::POST, &ack, Some(&token), Some(&json!({"status": "done"}))).await;
    bad.assert_problem(StatusCode::BAD_REQUEST, "`status`");
    let done = hub.call(Method::POST, &ack, Some(&token), Some(&body)).await.assert_status(StatusCode::OK);
    assert_eq!((&done["state"], &done["result"]), (&json!("succeeded"), &json!({"opened_at": 12})));
    assert!(done["timestamps"]["sent"].is_string() && done["timestamps"]["succeeded"].is_string());
    let late = hub.call(Method::POST, &ack, Some(&token), Some(&json!({"status": "delivered"}))).await;
    late.assert_problem(StatusCode::CONFLICT, "succeeded");
    // an admin token with write may poll for a device too
    hub.admin(Method::GET, next, None).await.assert_status(StatusCode::NO_CONTENT);
    hub.stop().await;
}

#[tokio::test]
async fn device_state_with_versions() {
    let hub = Hub::start(commands::Config::default()).await;
    hub.device("s1").await;
    let a = hub.admin(Method::GET, "/api/v1/devices/s1/state", None).await;
    assert_eq!(
        a.assert_status(StatusCode::OK),
        json!({"desired": {}, "reported": {}, "delta": {}, "version": 0,
               "timestamps": {"desired": null, "reported": null}})
    );
    assert_eq!(a.headers[header::ETAG], "\"0\"");
    let admin = hub.admin.clone();
    let patch = |body: Value, if_match: Option<&'static str>| {
        let hub = &hub;
        let admin = admin.clone();
        async move {
            let headers: Vec<(&str, &str)> = if_match.map(|v| ("if-match", v)).into_iter().collect();
            hub.call_with(
                Method::PATCH,
                "/api/v1/devices/s1/state/desired",
                Some(&admin),
                Some(&body),
                &headers,
            )
            .await
        }
    };
    let set = patch(json!({"heater": true, "target": 21}), Some("\"0\"")).await;
    let state = set.assert_status(StatusCode::OK);
    assert_eq!(set.headers[header::ETAG], "\"1\"");
    assert_eq!((&state["version"], &state["delta"]), (&json!(1), &json!({"heater": true, "target": 21})));
    let command = &state["command"];
    assert_eq!((&command["mode"], &command["key"]), (&json!("latest_wins"), &json!("$state")));
    assert_eq!(command["topic"], json!("devices/s1/state/desired"));
    patch(json!({"target": 22}), Some("0")).await.assert_problem(StatusCode::CONFLICT, "version 1");
    patch(json!({"target": 22}), Some("one")).await.assert_problem(StatusCode::BAD_REQUEST, "If-Match");
    let unconditional =
        patch(json!({"target": null, "mode": "eco"}), None).await.assert_status(StatusCode::OK);
    assert_eq!(unconditional["desired"], json!({"heater": true, "mode": "eco"}));
    let via_state = hub
        .call_with(
            Method::PATCH,
            "/api/v1/devices/s1/state",
            Some(&admin),
            Some(&json!({"desired": {"heater": false}})),
            &[("if-match", "W/\"2\"")],
        )
        .await
        .assert_status(StatusCode::OK);
    assert_eq!(via_state["version"], json!(3));
    let wrong = hub.admin(Method::PATCH, "/api/v1/devices/s1/state", Some(&json!({"reported": {}}))).await;
    wrong.assert_problem(StatusCode::BAD_REQUEST, "`desired`");
    let desired =
        hub.admin(Method::GET, "/api/v1/devices/s1/state/desired", None).await.assert_status(StatusCode::OK);
    assert_eq!(desired, json!({"desired": {"heater": false, "mode": "eco"}, "version": 3}));
    // only the newest $state command is open
    let open = hub
        .admin(Method::GET, "/api/v1/devices/s1/commands?state=queued", None)
        .await
        .assert_status(StatusCode::OK);
    let open = open["commands"].as_array().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["payload"], json!({"heater": false, "mode": "eco"}));
    hub.stop().await;
}

#[tokio::test]
async fn without_the_service_the_routes_answer_503() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&telehub_store::Config::default(), dir.path()).await.unwrap());
    let ingest_config = ingest::Config::default();
    let mappings = ingest_config.mappings.clone();
    let (ingest, _writer) = Ingest::new(ingest_config, store.clone());
    let registry = Registry::open(store.clone(), AuthConfig::default(), mappings).await.unwrap();
    let (_, admin) =
        registry.create_token(&Actor::system(), "root".into(), vec![Scope::Admin], None).await.unwrap();
    let router = telehub_api::router(Config::default(), store, ingest, registry);
    let mut request = Request::get("/api/v1/devices/d1/commands")
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .body(Body::empty())
        .unwrap();
    request.extensions_mut().insert(ConnectInfo("127.0.0.1:40000".parse::<SocketAddr>().unwrap()));
    assert_eq!(router.oneshot(request).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
}
