//! `/api/v1/rules` and `/api/v1/alerts` in process, against a real SQLite store, registry
//! and rules service: create, list with stats, get, replace, delete; a bad expression is
//! a 400 problem naming the field, line and column; config rules are read-only (409);
//! scopes; the audit log; 503 without the service.

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
use telehub_hub::events::Events;
use telehub_hub::ingest::{self, Ingest};
use telehub_hub::registry::{Actor, AuthConfig, Registry, Scope};
use telehub_hub::rules::{EngineConfig, RuleSpec, Rules};
use telehub_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

struct Hub {
    router: Router,
    rules: Rules<Store>,
    admin: String,
    reader: String,
    stop: CancellationToken,
    tasks: TaskTracker,
    _dir: tempfile::TempDir,
}

const FROM_FILE: &str = r#"
name = "from-file"
filter = "+/telemetry"
condition = "msg.light < 300"
once_per_crossing = true
actions = [{ type = "command", topic = "{device}/commands", payload = { led_on = true } }]
"#;

impl Hub {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&telehub_store::Config::default(), dir.path()).await.unwrap());
        let ingest_config = ingest::Config::default();
        let mappings = ingest_config.mappings.clone();
        let (ingest, writer) = Ingest::new(ingest_config, store.clone());
        let registry = Registry::open(store.clone(), AuthConfig::default(), mappings).await.unwrap();
        let (_, admin) =
            registry.create_token(&Actor::system(), "root".into(), vec![Scope::Admin], None).await.unwrap();
        let (_, reader) =
            registry.create_token(&Actor::system(), "reader".into(), vec![Scope::Read], None).await.unwrap();
        let from_file: RuleSpec = toml::from_str(FROM_FILE).unwrap();
        let rules = Rules::open(store.clone(), EngineConfig::default(), vec![from_file], Events::new(8))
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(writer.run(stop.clone()));
        tasks.spawn(registry.clone().run(stop.clone()));
        let router = telehub_api::router(Config::default(), store, ingest, registry);
        let router = telehub_api::with_rules(router, rules.clone());
        Self { router, rules, admin, reader, stop, tasks, _dir: dir }
    }

    async fn call_as(&self, token: &str, method: Method, uri: &str, body: Option<&Value>) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
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

    async fn call(&self, method: Method, uri: &str, body: Option<&Value>) -> Answer {
        self.call_as(&self.admin.clone(), method, uri, body).await
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn night_light_on() -> Value {
    json!({
        "name": "night-light-on",
        "filter": "+/telemetry",
        "condition": "msg.light < 300",
        "once_per_crossing": true,
        "actions": [{"type": "command", "topic": "{device}/commands", "payload": {"led_on": true}}]
    })
}

#[tokio::test]
async fn rules_are_created_listed_replaced_and_deleted() {
    let hub = Hub::start().await;
    let a = hub.call(Method::POST, "/api/v1/rules", Some(&night_light_on())).await;
    let created = a.assert_status(StatusCode::CREATED);
    assert_eq!(a.headers[header::LOCATION], "/api/v1/rules/night-light-on");
    assert_eq!(created["source"], "api");
    assert_eq!(created["stats"]["firings"], 0);
    assert_eq!(created["stats"]["last_firing"], Value::Null);
    assert_eq!(created["stats"]["recent_firings"], json!([]));
    assert_eq!(created["actions"][0]["payload"], json!({"led_on": true}));

    let again = hub.call(Method::POST, "/api/v1/rules", Some(&night_light_on())).await;
    assert!(
        again.assert_problem(StatusCode::CONFLICT, "")["detail"].as_str().unwrap().contains("already exists")
    );

    let list =
        hub.call_as(&hub.reader, Method::GET, "/api/v1/rules", None).await.assert_status(StatusCode::OK);
    let names: Vec<&str> =
        list["rules"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["from-file", "night-light-on"]);
    assert_eq!(list["rules"][0]["source"], "config");
    assert_eq!(list["service"]["messages"], 0);

    // PUT without a name in the body: the URL's
    let mut changed = night_light_on();
    changed.as_object_mut().unwrap().remove("name");
    changed["condition"] = json!("msg.light < 200");
    let put = hub.call(Method::PUT, "/api/v1/rules/night-light-on", Some(&changed)).await;
    assert_eq!(put.assert_status(StatusCode::OK)["condition"], "msg.light < 200");
    let got = hub.call(Method::GET, "/api/v1/rules/night-light-on", None).await.assert_status(StatusCode::OK);
    assert_eq!(got["condition"], "msg.light < 200");
    let renamed = json!({"name": "other", "filter": "#"});
    hub.call(Method::PUT, "/api/v1/rules/night-light-on", Some(&renamed))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "");
    let new = hub.call(Method::PUT, "/api/v1/rules/made-by-put", Some(&json!({"filter": "#"}))).await;
    new.assert_status(StatusCode::CREATED);

    hub.call(Method::DELETE, "/api/v1/rules/night-light-on", None)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    hub.call(Method::GET, "/api/v1/rules/night-light-on", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "");
    hub.call(Method::DELETE, "/api/v1/rules/night-light-on", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "");
    assert!(hub.rules.get("made-by-put").is_some());

    // a read token may look, not change
    hub.call_as(&hub.reader, Method::POST, "/api/v1/rules", Some(&night_light_on()))
        .await
        .assert_problem(StatusCode::FORBIDDEN, "");
    let alerts =
        hub.call_as(&hub.reader, Method::GET, "/api/v1/alerts", None).await.assert_status(StatusCode::OK);
    assert_eq!(alerts, json!({"active": [], "recently_cleared": []}));
    hub.stop().await;
}

#[tokio::test]
async fn a_bad_rule_is_a_400_naming_the_field_and_the_position() {
    let hub = Hub::start().await;
    let mut bad = night_light_on();
    bad["condition"] = json!("msg.light <\n  && 300");
    let a = hub.call(Method::POST, "/api/v1/rules", Some(&bad)).await;
    let problem = a.assert_problem(StatusCode::BAD_REQUEST, "");
    assert_eq!(problem["field"], "condition", "{problem}");
    assert_eq!(problem["line"], 2, "{problem}");
    assert!(problem["column"].as_u64().unwrap() >= 1, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("condition: line 2, column"), "{detail}");

    let mut clear = night_light_on();
    clear["clear_condition"] = json!("msg.light >= = 320");
    let problem = hub
        .call(Method::POST, "/api/v1/rules", Some(&clear))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "");
    assert_eq!(problem["field"], "clear_condition", "{problem}");
    assert_eq!(problem["line"], 1, "{problem}");

    let mut template = night_light_on();
    template["actions"][0]["topic"] = json!("${msg.light");
    let problem = hub
        .call(Method::POST, "/api/v1/rules", Some(&template))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "");
    assert_eq!(problem["field"], "actions[0].topic", "{problem}");
    assert_eq!(problem.get("line"), None, "{problem}");

    let mut filter = night_light_on();
    filter["filter"] = json!("a/#/b");
    let problem = hub
        .call(Method::POST, "/api/v1/rules", Some(&filter))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "");
    assert_eq!(problem["field"], "filter", "{problem}");

    let mut unknown = night_light_on();
    unknown["conditon"] = json!("true");
    let problem = hub
        .call(Method::POST, "/api/v1/rules", Some(&unknown))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "");
    assert!(problem["detail"].as_str().unwrap().contains("conditon"), "{problem}");

    // nothing was saved, and a refused PUT leaves the rule as it was
    assert!(hub.rules.get("night-light-on").is_none());
    hub.call(Method::POST, "/api/v1/rules", Some(&night_light_on())).await.assert_status(StatusCode::CREATED);
    hub.call(Method::PUT, "/api/v1/rules/night-light-on", Some(&bad))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "");
    assert_eq!(hub.rules.get("night-light-on").unwrap()["condition"], "msg.light < 300");
    hub.stop().await;
}

#[tokio::test]
async fn config_rules_are_read_only_through_the_api() {
    let hub = Hub::start().await;
    let got = hub.call(Method::GET, "/api/v1/rules/from-file", None).await.assert_status(StatusCode::OK);
    assert_eq!(got["source"], "config");
    let body = json!({"filter": "#"});
    let put = hub.call(Method::PUT, "/api/v1/rules/from-file", Some(&body)).await;
    assert!(put.assert_problem(StatusCode::CONFLICT, "")["detail"].as_str().unwrap().contains("config file"));
    hub.call(Method::DELETE, "/api/v1/rules/from-file", None).await.assert_problem(StatusCode::CONFLICT, "");
    let post = json!({"name": "from-file", "filter": "#"});
    hub.call(Method::POST, "/api/v1/rules", Some(&post)).await.assert_problem(StatusCode::CONFLICT, "");
    hub.stop().await;
}

#[tokio::test]
async fn without_the_rules_service_the_routes_answer_503() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&telehub_store::Config::default(), dir.path()).await.unwrap());
    let ingest_config = ingest::Config::default();
    let mappings = ingest_config.mappings.clone();
    let (ingest, _writer) = Ingest::new(ingest_config, store.clone());
    let registry = Registry::open(store.clone(), AuthConfig::default(), mappings).await.unwrap();
    let (_, admin) =
        registry.create_token(&Actor::system(), "root".into(), vec![Scope::Admin], None).await.unwrap();
    let router = telehub_api::router(Config::default(), store, ingest, registry);
    let request = Request::builder()
        .uri("/api/v1/rules")
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .body(Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}
