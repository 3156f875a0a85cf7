//! The HTTP API against a real SQLite store in a temp dir, through the router as axum
//! serves it (`tower::ServiceExt::oneshot`): the tutorial's `POST /data`, ingest in all
//! three body shapes, every malformed body's 400/413 answer, 404/429/503, raw paging,
//! aggregates with known values and CSV. Requests carry an admin token (scope `admin`)
//! made with the registry's API; `security_api.rs` covers who may do what.

mod common;

use common::Answer;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use telehub_api::Config;
use telehub_hub::ingest::{self, Ingest};
use telehub_hub::registry::{Actor, AuthConfig, Registry, Scope};
use telehub_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// A router over a fresh SQLite store, with its ingest writer running.
struct Api {
    router: Router,
    ingest: Ingest,
    /// `Authorization` of every request: an admin token.
    auth: String,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Kept, not run, when the test wants a queue that never drains.
    _idle_writer: Option<ingest::Writer<Store>>,
    _dir: tempfile::TempDir,
}

impl Answer {
    /// The tutorial's `{"error": "..."}` with `status`, the message containing `needle`.
    #[track_caller]
    fn assert_tutorial_error(&self, status: StatusCode, needle: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.content_type(), "application/json");
        let body = self.json();
        let object = body.as_object().unwrap();
        assert_eq!(object.len(), 1, "only `error`: {body}");
        let error = object["error"].as_str().unwrap();
        assert!(error.contains(needle), "error {error:?} does not contain {needle:?}");
    }
}

impl Api {
    async fn start() -> Self {
        Self::start_with(Config::default(), ingest::Config::default(), true).await
    }

    async fn start_with(config: Config, ingest_config: ingest::Config, run_writer: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&telehub_store::Config::default(), dir.path()).await.unwrap());
        let mappings = ingest_config.mappings.clone();
        let (ingest, writer) = Ingest::new(ingest_config, store.clone());
        let registry = Registry::open(store.clone(), AuthConfig::default(), mappings).await.unwrap();
        let (_, token) =
            registry.create_token(&Actor::system(), "tests".into(), vec![Scope::Admin], None).await.unwrap();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(registry.clone().run(stop.clone()));
        let idle_writer = if run_writer {
            tasks.spawn(writer.run(stop.clone()));
            None
        } else {
            Some(writer)
        };
        let router = telehub_api::router(config, store, ingest.clone(), registry);
        let auth = format!("Bearer {token}");
        Self { router, ingest, auth, stop, tasks, _idle_writer: idle_writer, _dir: dir }
    }

    async fn call(&self, method: Method, uri: &str, content_type: Option<&str>, body: Body) -> Answer {
        let mut request =
            Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, self.auth.as_str());
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let response = self.router.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Answer { status, headers, body }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, None, Body::empty()).await
    }

    async fn post(&self, uri: &str, content_type: &str, body: impl Into<Body>) -> Answer {
        self.call(Method::POST, uri, Some(content_type), body.into()).await
    }

    async fn post_json(&self, uri: &str, body: &Value) -> Answer {
        self.post(uri, "application/json", body.to_string()).await
    }

    /// `POST /api/v1/devices/{device}/telemetry` that must succeed.
    async fn ingest(&self, device: &str, body: &Value) -> Value {
        let a = self.post_json(&format!("/api/v1/devices/{device}/telemetry"), body).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        a.json()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

const T0: i64 = 1_714_564_800_000; // 2024-05-01T12:00:00Z

// ---- POST /data, the tutorial's endpoint ----------------------------------------------

#[tokio::test]
async fn post_data_as_the_flask_tutorial_then_the_query_api_returns_those_values() {
    let api = Api::start().await;
    let sent = json!({"device_id": "raspi-01", "temperature": 25.5, "humidity": 60.3});
    let a = api.post_json("/data", &sent).await;
    assert_eq!((a.status, a.json()), (StatusCode::OK, json!({"status": "success"})));

    let devices = api.get("/api/v1/devices").await.json();
    let list = devices["devices"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{devices}");
    assert_eq!(list[0]["id"], "raspi-01");
    assert_eq!(list[0]["metrics"], json!(["humidity", "temperature"]));
    assert!(list[0]["first_seen"].as_str().unwrap().ends_with('Z'), "RFC 3339 UTC: {devices}");

    let latest = api.get("/api/v1/devices/raspi-01/latest").await.json();
    assert_eq!(latest["values"]["temperature"]["value"], 25.5);
    assert_eq!(latest["values"]["humidity"]["value"], 60.3);
    assert_eq!(latest["document"], sent, "the whole document is kept");
    api.stop().await;
}

#[tokio::test]
async fn post_data_bad_bodies_get_400_saying_what_was_wrong() {
    let api = Api::start().await;
    let cases: &[(&str, &str)] = &[
        ("hello", "invalid JSON"),
        ("{\"device_id\": \"a\",}", "line 1 column"),
        ("", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, found array"),
        ("\"raspi-01\"", "expected a JSON object, found string"),
        ("{\"temperature\": 25.5}", "missing `device_id`"),
        ("{\"device_id\": 7, \"temperature\": 25.5}", "`device_id` must be a string, found number"),
        ("{\"device_id\": null}", "`device_id` must be a string, found null"),
        ("{\"device_id\": \"\"}", "device id is empty"),
        ("{\"device_id\": \"a/b\"}", "invalid device id \"a/b\""),
        ("{\"device_id\": \"a\", \"ts\": \"noon\"}", "`ts`"),
        ("{\"device_id\": \"a\", \"msg_id\": [1]}", "`msg_id` must be a string or an integer"),
    ];
    for (body, needle) in cases {
        let a = api.post("/data", "application/json", *body).await;
        a.assert_tutorial_error(StatusCode::BAD_REQUEST, needle);
    }
    // nothing of it was stored
    assert_eq!(api.get("/api/v1/devices").await.json(), json!({"devices": []}));
    api.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_declared_or_streamed() {
    let config = Config { max_body_bytes: 1024, ..Config::default() };
    let api = Api::start_with(config, ingest::Config::default(), true).await;
    let big = json!({"device_id": "a", "blob": "x".repeat(2000)}).to_string();

    // declared with Content-Length: refused before reading
    let request = |uri: &str| {
        Request::post(uri)
            .header(header::AUTHORIZATION, api.auth.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, big.len())
            .body(Body::from(big.clone()))
            .unwrap()
    };
    let a = Answer::of(api.router.clone().oneshot(request("/data")).await.unwrap()).await;
    a.assert_tutorial_error(StatusCode::PAYLOAD_TOO_LARGE, "larger than 1024 bytes");
    let a =
        Answer::of(api.router.clone().oneshot(request("/api/v1/devices/a/telemetry")).await.unwrap()).await;
    a.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "larger than 1024 bytes");

    // streamed without a length: cut off at the limit
    let stream =
        || Body::from_stream(tokio_stream::iter([Ok::<_, std::io::Error>(Bytes::from(big.clone()))]));
    let a = api.call(Method::POST, "/api/v1/devices/a/telemetry", Some("application/json"), stream()).await;
    a.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "larger than 1024 bytes");
    let a = api.call(Method::POST, "/data", Some("application/json"), stream()).await;
    a.assert_tutorial_error(StatusCode::PAYLOAD_TOO_LARGE, "larger than 1024 bytes");

    // just under the limit is fine
    let ok = json!({"device_id": "a", "v": 1, "pad": "x".repeat(900)});
    assert_eq!(api.post_json("/data", &ok).await.status, StatusCode::OK);
    api.stop().await;
}

// ---- POST /api/v1/devices/{id}/telemetry -----------------------------------------------

#[tokio::test]
async fn post_telemetry_takes_an_object_an_array_or_ndjson_and_answers_the_counts() {
    let api = Api::start().await;
    let one = api.ingest("pump-1", &json!({"ts": T0, "pressure": 2.5, "on": true})).await;
    assert_eq!(one, json!({"records": 1, "points": 2}));
    let many = api
        .ingest(
            "pump-1",
            &json!([
                {"ts": "2024-05-01T12:00:01Z", "pressure": 2.6},
                {"ts": T0 + 2000, "pressure": 2.7, "env": {"temp": 30}}
            ]),
        )
        .await;
    assert_eq!(many, json!({"records": 2, "points": 3}));
    let ndjson = format!(
        "{{\"ts\": {}, \"pressure\": 2.8}}\n\n{{\"ts\": {}, \"pressure\": 2.9}}\n",
        T0 + 3000,
        T0 + 4000
    );
    let a = api.post("/api/v1/devices/pump-1/telemetry", "application/x-ndjson", ndjson).await;
    assert_eq!((a.status, a.json()), (StatusCode::OK, json!({"records": 2, "points": 2})));

    let page = api.get("/api/v1/devices/pump-1/telemetry?metric=pressure").await.json();
    let values: Vec<f64> =
        page["points"].as_array().unwrap().iter().map(|p| p["value"].as_f64().unwrap()).collect();
    assert_eq!(values, [2.5, 2.6, 2.7, 2.8, 2.9]);
    assert_eq!(page["points"][1]["ts"], "2024-05-01T12:00:01Z");
    assert_eq!(page["resolution"], "raw");
    let latest = api.get("/api/v1/devices/pump-1/latest").await.json();
    assert_eq!(latest["values"]["env.temp"]["value"], 30.0, "nested objects flatten with `.`");
    assert_eq!(latest["values"]["on"]["value"], 1.0, "booleans are 0/1");
    api.stop().await;
}

#[tokio::test]
async fn post_telemetry_malformed_bodies_get_400_problems_naming_what_and_where() {
    let api = Api::start().await;
    let uri = "/api/v1/devices/d1/telemetry";
    let cases: &[(&str, &str, &str)] = &[
        ("application/json", "{\"v\": 1,,}", "invalid JSON: key must be a string at line 1 column 9"),
        ("application/json", "", "the body is empty"),
        ("application/json", "42", "expected a JSON object or an array of objects, found a number"),
        ("application/json", "[{\"v\": 1}, 5]", "item 2 of 2: expected a JSON object, found number"),
        (
            "application/json",
            "[{\"v\": 1}, {\"ts\": \"later\"}]",
            "item 2 of 2: `ts`: \"later\" is neither RFC 3339",
        ),
        ("application/json", "{\"ts\": true}", "`ts`: expected an RFC 3339 string or Unix milliseconds"),
        ("application/json", "{\"msg_id\": {}}", "`msg_id` must be a string or an integer, found object"),
        ("application/x-ndjson", "{\"v\": 1}\n{\"v\": \n", "line 2: invalid JSON"),
        ("application/x-ndjson", "{\"v\": 1}\n[1]\n", "line 2: expected a JSON object, found array"),
    ];
    for (ct, body, needle) in cases {
        api.post(uri, ct, *body).await.assert_problem(StatusCode::BAD_REQUEST, needle);
    }
    let a = api.post_json("/api/v1/devices/bad%2Fid/telemetry", &json!({"v": 1})).await;
    a.assert_problem(StatusCode::BAD_REQUEST, "invalid device id \"bad/id\"");
    assert_eq!(api.get("/api/v1/devices").await.json(), json!({"devices": []}), "nothing stored");
    api.stop().await;
}

#[tokio::test]
async fn replayed_msg_ids_are_stored_once() {
    let api = Api::start().await;
    let batch = json!([{"msg_id": "m1", "ts": T0, "v": 1}, {"msg_id": 2, "ts": T0 + 1, "v": 2}]);
    api.ingest("d", &batch).await;
    api.ingest("d", &batch).await;
    api.ingest("d", &json!({"msg_id": "m1", "ts": T0 + 5, "v": 99})).await;
    let page = api.get("/api/v1/devices/d/telemetry").await.json();
    assert_eq!(page["points"].as_array().unwrap().len(), 2, "{page}");
    api.stop().await;
}

// ---- GET: raw pages, aggregates, CSV ----------------------------------------------------

#[tokio::test]
async fn raw_points_page_with_a_cursor_until_the_end() {
    let api = Api::start().await;
    let items: Vec<Value> = (0..25).map(|i| json!({"ts": T0 + i * 1000, "a": i, "b": -i})).collect();
    api.ingest("d", &Value::Array(items)).await;

    let mut seen = Vec::new();
    let mut uri = "/api/v1/devices/d/telemetry?metric=a,b&limit=20".to_owned();
    let mut pages = 0;
    loop {
        let a = api.get(&uri).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        let page = a.json();
        pages += 1;
        for p in page["points"].as_array().unwrap() {
            seen.push((p["ts"].as_str().unwrap().to_owned(), p["metric"].as_str().unwrap().to_owned()));
        }
        let Some(next) = page["next"].as_str() else { break };
        assert_eq!(a.headers.get("x-next-cursor").unwrap(), next);
        uri = format!("/api/v1/devices/d/telemetry?metric=a,b&limit=20&after={next}");
    }
    assert_eq!(pages, 3, "20 + 20 + 10");
    assert_eq!(seen.len(), 50);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "ordered by (ts, metric), no repeats");

    // from inclusive, to exclusive, in RFC 3339 or Unix ms
    let uri = format!("/api/v1/devices/d/telemetry?metric=a&from={}&to=2024-05-01T12:00:05Z", T0 + 2000);
    let page = api.get(&uri).await.json();
    let values: Vec<f64> =
        page["points"].as_array().unwrap().iter().map(|p| p["value"].as_f64().unwrap()).collect();
    assert_eq!(values, [2.0, 3.0, 4.0]);
    api.stop().await;
}

#[tokio::test]
async fn aggregates_per_step_have_the_known_values() {
    let api = Api::start().await;
    // minute 0: 1, 2, 3 (last at +50 s); minute 1: 10, 20 (arriving out of order)
    let items = json!([
        {"ts": T0 + 50_000, "t": 3},
        {"ts": T0, "t": 1},
        {"ts": T0 + 10_000, "t": 2},
        {"ts": T0 + 90_000, "t": 20},
        {"ts": T0 + 60_000, "t": 10},
    ]);
    api.ingest("d", &items).await;
    let a = api.get("/api/v1/devices/d/telemetry?metric=t&step=1m&agg=mean,min,max,sum,count,last").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let body = a.json();
    assert_eq!(body["step"], "1m");
    assert!(["raw", "1m"].contains(&body["resolution"].as_str().unwrap()), "{body}");
    assert_eq!(
        body["buckets"],
        json!([
            {"metric": "t", "start": "2024-05-01T12:00:00Z", "mean": 2.0, "min": 1.0, "max": 3.0, "sum": 6.0, "count": 3, "last": 3.0},
            {"metric": "t", "start": "2024-05-01T12:01:00Z", "mean": 15.0, "min": 10.0, "max": 20.0, "sum": 30.0, "count": 2, "last": 20.0},
        ])
    );
    // one bucket of everything; the default function is the mean
    let body = api.get("/api/v1/devices/d/telemetry?step=1h").await.json();
    assert_eq!(body["buckets"], json!([{"metric": "t", "start": "2024-05-01T12:00:00Z", "mean": 7.2}]));
    api.stop().await;
}

#[tokio::test]
async fn csv_format_for_raw_points_and_aggregates() {
    let api = Api::start().await;
    api.ingest("d", &json!([{"ts": T0, "t": 1.5, "h": 40}, {"ts": T0 + 61_000, "t": 2.5}])).await;
    let a = api.get("/api/v1/devices/d/telemetry?metric=t,h&format=csv").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.content_type(), "text/csv; charset=utf-8");
    assert_eq!(
        a.text(),
        "ts,metric,value\n\
         2024-05-01T12:00:00Z,h,40\n\
         2024-05-01T12:00:00Z,t,1.5\n\
         2024-05-01T12:01:01Z,t,2.5\n"
    );
    let a = api.get("/api/v1/devices/d/telemetry?metric=t&step=1m&agg=count,max&format=csv").await;
    assert_eq!(a.content_type(), "text/csv; charset=utf-8");
    assert_eq!(
        a.text(),
        "start,metric,count,max\n2024-05-01T12:00:00Z,t,1,1.5\n2024-05-01T12:01:00Z,t,1,2.5\n"
    );
    assert!(a.headers.contains_key("x-resolution"));
    api.stop().await;
}

#[tokio::test]
async fn unknown_devices_and_routes_get_404_problems() {
    let api = Api::start().await;
    api.get("/api/v1/devices/ghost/latest").await.assert_problem(StatusCode::NOT_FOUND, "no device ghost");
    api.get("/api/v1/devices/ghost/telemetry").await.assert_problem(StatusCode::NOT_FOUND, "no device ghost");
    api.get("/api/v1/nothing-here").await.assert_problem(StatusCode::NOT_FOUND, "no such resource");
    api.stop().await;
}

#[tokio::test]
async fn bad_query_parameters_get_400_naming_the_parameter() {
    let api = Api::start().await;
    api.ingest("d", &json!({"ts": T0, "t": 1})).await;
    let cases: &[(&str, &str)] = &[
        ("from=yesterday", "`from`: \"yesterday\" is neither RFC 3339"),
        ("to=2024-13-01T00:00:00Z", "`to`"),
        ("from=2000&to=1000", "`from` is after `to`"),
        ("limit=0", "`limit`: expected a whole number from 1 to 10000"),
        ("limit=ten", "`limit`"),
        ("limit=10001", "`limit`"),
        ("after=nonsense", "`after`"),
        ("step=fast", "`step`"),
        ("step=500ms", "`step`: at least 1s"),
        ("step=1m&agg=avg", "`agg`: unknown function \"avg\""),
        ("agg=mean", "`agg` needs a `step`"),
        ("step=1m&limit=5", "do not go with `step`"),
        ("format=xml", "`format`: expected json or csv"),
        ("metric=", "`metric`: name at least one metric"),
        ("metrics=t", "unknown field `metrics`"),
    ];
    for (query, needle) in cases {
        let a = api.get(&format!("/api/v1/devices/d/telemetry?{query}")).await;
        a.assert_problem(StatusCode::BAD_REQUEST, needle);
    }
    let config = Config { max_buckets: 1, ..Config::default() };
    let small = Api::start_with(config, ingest::Config::default(), true).await;
    small.ingest("d", &json!([{"ts": T0, "t": 1}, {"ts": T0 + 60_000, "t": 1}])).await;
    let a = small.get("/api/v1/devices/d/telemetry?step=1m").await;
    a.assert_problem(StatusCode::BAD_REQUEST, "more than the 1 allowed");
    small.stop().await;
    api.stop().await;
}

// ---- backpressure and health ------------------------------------------------------------

#[tokio::test]
async fn full_ingest_queue_gets_429_with_retry_after_on_both_endpoints() {
    // the writer never runs: the first record takes the only slot and waits forever
    let ingest_config = ingest::Config { queue_capacity: 1, ..ingest::Config::default() };
    let api = Api::start_with(Config::default(), ingest_config, false).await;
    let first = api.router.clone().oneshot(
        Request::post("/data")
            .header(header::AUTHORIZATION, api.auth.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"device_id": "a", "v": 1}).to_string()))
            .unwrap(),
    );
    let waiting = api.tasks.spawn(first);
    for _ in 0..500 {
        if api.ingest.stats().queued == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(api.ingest.stats().queued, 1);

    let a = api.post_json("/api/v1/devices/b/telemetry", &json!({"v": 2})).await;
    a.assert_problem(StatusCode::TOO_MANY_REQUESTS, "retry after 1 s");
    assert_eq!(a.headers.get(header::RETRY_AFTER).unwrap(), "1");
    let a = api.post_json("/data", &json!({"device_id": "b", "v": 2})).await;
    a.assert_tutorial_error(StatusCode::TOO_MANY_REQUESTS, "faster than it can be stored");
    assert_eq!(a.headers.get(header::RETRY_AFTER).unwrap(), "1");
    // more records at once than the queue holds can never fit: 400, not 429
    let a = api.post_json("/api/v1/devices/b/telemetry", &json!([{"v": 1}, {"v": 2}])).await;
    a.assert_problem(StatusCode::BAD_REQUEST, "more than the ingest queue holds");
    assert_eq!(api.ingest.stats().refused_full, 2);
    waiting.abort();
}

#[tokio::test]
async fn healthz_always_readyz_while_ingest_runs() {
    let api = Api::start().await;
    let a = api.get("/healthz").await;
    assert_eq!((a.status, a.json()), (StatusCode::OK, json!({"status": "ok"})));
    let a = api.get("/readyz").await;
    assert_eq!((a.status, a.json()), (StatusCode::OK, json!({"status": "ready"})));
    // once ingest has shut down, the hub is not ready and ingest answers 503
    api.stop.cancel();
    api.tasks.close();
    api.tasks.wait().await;
    api.get("/readyz").await.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let a = api.post_json("/api/v1/devices/d/telemetry", &json!({"v": 1})).await;
    a.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(a.headers.contains_key(header::RETRY_AFTER));
}

// ---- GET /metrics --------------------------------------------------------------------

#[tokio::test]
async fn metrics_export_ingest_counters_and_the_queue_limit_in_prometheus_text() {
    let api = Api::start().await;
    api.ingest("m1", &json!([{"ts": T0, "t": 1}, {"ts": T0 + 1, "t": 2, "h": 3}])).await;
    let a = api.get("/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
    let text = a.text();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("telehub_ingest_records_total"), 2);
    assert_eq!(value("telehub_ingest_points_total"), 3);
    assert_eq!(value("telehub_ingest_refused_full_total"), 0);
    assert!(value("telehub_ingest_queue_capacity") > 0);
    assert!(text.contains("# TYPE telehub_ingest_points_total counter"));
    api.stop().await;
}
